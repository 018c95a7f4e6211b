//! The portable (POSIX) backend: what the crate uses where Linux's pidfds, subreaper and PID
//! namespaces are not available (macOS, FreeBSD), and on Linux under `--cfg
//! pgroup_portable`, which CI uses to run the whole suite on this backend.
//!
//! - **Pinning** is POSIX already: the leader is our unreaped child, observed with
//!   `waitid(P_PID, WEXITED | WNOWAIT | WNOHANG)`, which reaps nothing.
//! - **Exit notification**: a [`Pidfd`] here is the read end of a pipe whose write end a
//!   watcher thread closes once the process has exited, so that every wait of the crate can
//!   keep polling descriptors (the reader thread, the reaper, tokio's reactor) as it does on
//!   Linux. The watcher polls with a backoff from 50 µs to 5 ms, reset by every spawn and
//!   every signal the crate sends: our own children with `waitid(WNOWAIT)`, other processes
//!   (members of a group, descendants) with the per-platform reader below (exited = gone or
//!   a zombie).
//! - **Signals** go by number, only while the leader is pinned: `killpg` of its group, `kill`
//!   of the leader itself. There is no group signal by handle (`pidfd_send_signal` answers
//!   `EINVAL`, as a Linux kernel before 6.9 does).
//! - **The supervised tiers** (`Supervised`, `Namespace`) do not exist here: spawning them
//!   fails with [`io::ErrorKind::Unsupported`].
//!
//! # The per-platform readers (the only code of this backend that CI does not run)
//!
//! `proc_info` (a process's parent, group and whether it is a zombie) and
//! `group_members` (the pids in a process group), in `proc.rs`:
//!
//! - Linux (under `pgroup_portable`): `/proc/<pid>/stat` through `procfs`, as the Linux
//!   backend does (run by CI);
//! - macOS: `proc_pidinfo(PROC_PIDTBSDINFO)` and `proc_listpgrppids` (compile-checked only);
//! - FreeBSD: `sysctl(KERN_PROC_PID)` and `sysctl(KERN_PROC_PGRP)` (compile-checked only).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitStatus;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::Signal;

use super::{unsupported_tier, Started};

mod proc;
use proc::proc_info;
pub(crate) use proc::{each_possible_member, read_ancestor};

/// The exit notification of one process: a descriptor that becomes readable (hung up) once
/// the process has exited, and stays so. See the module documentation.
#[derive(Debug)]
pub(crate) struct Pidfd {
    fd: OwnedFd,
    pid: libc::pid_t,
    /// Whether the process was our child when this was opened: only then does `waitid`
    /// answer for it, and only then may it be signalled by number (while unreaped).
    child: bool,
    /// What tells it from a later process with its number (see [`Identity`]): `waitid`
    /// answers for a *pid*, and a leader reaped behind our back may have left its number to
    /// a new child of ours.
    ident: Arc<Identity>,
    /// The watcher's entry for this process goes when this value drops.
    alive: Arc<()>,
}

impl Drop for Pidfd {
    /// Stops the watch at once, closing the pipe's write end with it: a dropped handle
    /// leaves no descriptor behind.
    fn drop(&mut self) {
        let mut watcher = WATCHER.lock().unwrap_or_else(PoisonError::into_inner);
        let me = Arc::downgrade(&self.alive);
        watcher.watched.retain(|w| !w.alive.ptr_eq(&me));
    }
}

/// What tells a process from a later one that got its number.
///
/// Linux: its `/proc/<pid>` directory, held open. The directory names the process it was
/// opened for (its `struct pid`), not the number: once that process is reaped, nothing can be
/// opened in it any more, whoever has the number now. (Its start time in `/proc/<pid>/stat`
/// counts clock ticks, too coarse: a number reused within 10 ms looked the same.)
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub(crate) struct Identity(Option<OwnedFd>);

/// What tells a process from a later one that got its number: elsewhere, its start time in
/// microseconds, as the platform's reader gives it (when it could be read).
#[cfg(not(target_os = "linux"))]
#[derive(Debug)]
pub(crate) struct Identity(Option<u64>);

#[cfg(target_os = "linux")]
fn identity(pid: libc::pid_t) -> Identity {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    Identity(
        open(
            format!("/proc/{pid}").as_str(),
            OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
            Mode::empty(),
        )
        .ok(),
    )
}

#[cfg(not(target_os = "linux"))]
fn identity(pid: libc::pid_t) -> Identity {
    Identity(proc_info(pid).ok().map(|info| info.start))
}

/// Whether `pid` is still the process `ident` was taken from (`true` when that cannot be
/// told: macOS cannot read a zombie, and `waitid` remains the pin).
#[cfg(target_os = "linux")]
fn same_process(_pid: libc::pid_t, ident: &Identity) -> bool {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    match &ident.0 {
        // Gone from under the directory: reaped. Any other failure (no descriptor free:
        // teardown must work then too) cannot tell, and `waitid` stays the pin.
        Some(dir) => !matches!(
            openat(
                dir,
                "stat",
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty()
            ),
            Err(Errno::ENOENT | Errno::ESRCH)
        ),
        None => true,
    }
}

#[cfg(not(target_os = "linux"))]
fn same_process(pid: libc::pid_t, ident: &Identity) -> bool {
    match (ident.0, proc_info(pid)) {
        (Some(start), Ok(info)) => info.start == start,
        _ => true,
    }
}

/// `waitid_peek` of our child `pid`, `ECHILD` also when the number now names another
/// process than the one `ident` was taken from.
fn peek_child(pid: libc::pid_t, ident: &Identity) -> Result<Option<ExitStatus>, Errno> {
    let status = waitid_peek(pid)?;
    if !same_process(pid, ident) {
        return Err(Errno::ECHILD);
    }
    Ok(status)
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// One process the watcher polls.
struct Watched {
    pid: libc::pid_t,
    child: bool,
    ident: Arc<Identity>,
    /// The pipe's write end, held to be dropped: closing it makes the [`Pidfd`] readable.
    _write: OwnedFd,
    alive: Weak<()>,
}

struct Watcher {
    watched: Vec<Watched>,
    /// Set by a spawn or a signal: poll at the shortest interval again.
    kicked: bool,
    /// The process whose thread polls (0: none yet). A fork of the test binary that uses
    /// the crate starts its own: threads do not survive `fork`, and the entries it
    /// inherited are its parent's.
    started_by: libc::pid_t,
}

static WATCHER: Mutex<Watcher> = Mutex::new(Watcher {
    watched: Vec::new(),
    kicked: false,
    started_by: 0,
});
static WAKE: Condvar = Condvar::new();

/// The watcher's shortest and longest interval between two polls.
const FIRST_INTERVAL: Duration = Duration::from_micros(50);
const LONGEST_INTERVAL: Duration = Duration::from_millis(5);

/// Makes the watcher poll at its shortest interval again: something (a signal, a spawn) is
/// likely to make a watched process exit soon.
pub(crate) fn exit_watch_kick() {
    let mut watcher = WATCHER.lock().unwrap_or_else(PoisonError::into_inner);
    if !watcher.watched.is_empty() {
        watcher.kicked = true;
        WAKE.notify_all();
    }
}

fn watch_loop() {
    let mut interval = FIRST_INTERVAL;
    let mut watcher = WATCHER.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        watcher.watched.retain(|w| {
            // Dropping the entry closes the write end: the `Pidfd` becomes readable.
            w.alive.strong_count() > 0 && !exited(w.pid, w.child, &w.ident)
        });
        if watcher.kicked {
            watcher.kicked = false;
            interval = FIRST_INTERVAL;
        }
        if watcher.watched.is_empty() {
            watcher = WAKE.wait(watcher).unwrap_or_else(PoisonError::into_inner);
            interval = FIRST_INTERVAL;
            continue;
        }
        watcher = WAKE
            .wait_timeout(watcher, interval)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        interval = (interval * 2).min(LONGEST_INTERVAL);
    }
}

/// Whether the process has exited: for our child, `waitid(WNOWAIT)` sees its exit or says
/// it was reaped (`ECHILD`); for another process, it is gone or a zombie.
fn exited(pid: libc::pid_t, child: bool, ident: &Identity) -> bool {
    if child {
        !matches!(peek_child(pid, ident), Ok(None))
    } else {
        proc_info(pid).map_or(true, |info| info.zombie)
    }
}

/// `pidfd_open` of this backend: an exit notification for `pid` (see [`Pidfd`]). `ESRCH` if
/// the process is neither our unreaped child nor a live process.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<Pidfd> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid above i32::MAX"))?;
    let child = match waitid_peek(pid) {
        Ok(_) => true,
        Err(Errno::ECHILD) => false,
        Err(e) => return Err(e.into()),
    };
    if !child && proc_info(pid).is_err() {
        return Err(Errno::ESRCH.into());
    }
    // Only our children are pinned by `waitid`, and only they need telling apart.
    let ident = Arc::new(if child { identity(pid) } else { Identity(None) });
    let (read, write) = super::pipe()?;
    let alive = Arc::new(());
    let mut watcher = WATCHER.lock().unwrap_or_else(PoisonError::into_inner);
    let me = nix::unistd::getpid().as_raw();
    if watcher.started_by != me {
        watcher.watched.clear();
        std::thread::Builder::new()
            .name("pgroup-exit-watcher".into())
            .spawn(watch_loop)?;
        watcher.started_by = me;
    }
    watcher.watched.push(Watched {
        pid,
        child,
        ident: Arc::clone(&ident),
        _write: write,
        alive: Arc::downgrade(&alive),
    });
    watcher.kicked = true;
    WAKE.notify_all();
    Ok(Pidfd {
        fd: read,
        pid,
        child,
        ident,
        alive,
    })
}

/// [`super::waitid_peek`] of our child `pid`.
fn waitid_peek(pid: libc::pid_t) -> Result<Option<ExitStatus>, Errno> {
    let id = libc::id_t::try_from(pid).map_err(|_| Errno::EINVAL)?;
    super::waitid_peek(libc::P_PID, id, 0)
}

/// The exit status of the process behind `pidfd` without reaping it; `ECHILD` when it is
/// not our child or was reaped by someone else.
pub(crate) fn peek_exit(pidfd: &Pidfd) -> io::Result<Option<ExitStatus>> {
    if !pidfd.child {
        return Err(Errno::ECHILD.into());
    }
    Ok(peek_child(pidfd.pid, &pidfd.ident)?)
}

/// `pidfd_send_signal` of this backend. There is no group signal by handle: `group` fails
/// with `EINVAL`, as on a Linux kernel before 6.9, and the callers fall back to `killpg`
/// while the leader is pinned. The process itself is signalled by number, and only while it
/// is our unreaped child (so that the number is its own); `ESRCH` otherwise.
pub(crate) fn pidfd_send_signal(
    pidfd: &Pidfd,
    signal: Option<Signal>,
    group: bool,
) -> Result<(), Errno> {
    if group {
        return Err(Errno::EINVAL);
    }
    if !pidfd.child || peek_child(pidfd.pid, &pidfd.ident).is_err() {
        return Err(Errno::ESRCH);
    }
    exit_watch_kick();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pidfd.pid), signal)
}

/// The portable backend's exit notifications are not moved (the supervised tiers, which
/// ask for it, do not exist there).
pub(crate) fn pidfd_above_stdio(pidfd: Pidfd) -> io::Result<Pidfd> {
    Ok(pidfd)
}

/// Only supervisors are asked about, and the portable backend has none.
pub(crate) fn has_exited(_pid: i32) -> bool {
    true
}

/// Without /proc there is no other way to read it: the supervised tiers, which ask, do not
/// exist in the portable backend.
pub(crate) fn zombie_status(_pid: u32) -> Option<ExitStatus> {
    None
}

/// The supervised tiers, which have supervisors, do not exist in the portable backend.
pub(crate) fn reap_now_or_later(
    _pid: u32,
    _peer: BorrowedFd<'_>,
    _pidfd: Option<&Pidfd>,
) -> io::Result<Option<ExitStatus>> {
    Err(io::ErrorKind::Unsupported.into())
}

/// The lifeline registers no handle here: [`lifeline_kill_by_handle`] decides by number.
pub(crate) const REGISTERS_PIDFDS: bool = false;

/// Whether the lifeline's handler may signal group `pgid` by its number: only while the
/// leader, whose pid is `pgid`, is our unreaped child (async-signal-safe).
pub(crate) fn lifeline_kill_by_handle(pgid: i32, _pidfd: Option<std::os::fd::RawFd>) -> bool {
    libc::id_t::try_from(pgid).is_ok_and(|id| super::waitid_peek(libc::P_PID, id, 0).is_ok())
}

/// The supervised tiers do not exist in this backend: `Leader::spawn` refuses them before
/// it gets here.
pub(crate) fn spawn_supervised(
    _cmd: &mut std::process::Command,
    namespace: bool,
    _new_session: bool,
) -> io::Result<Started> {
    Err(unsupported_tier(if namespace {
        "Namespace"
    } else {
        "Supervised"
    }))
}

/// Without the supervised tiers there is no supervisor to fork.
pub(crate) fn supervisor_forks() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::proc::group_members;
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;
    use std::time::Instant;

    fn readable(fd: &Pidfd, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if super::super::poll_readable(&[fd.as_fd()], Some(left)).expect("poll")[0] {
                return true;
            }
            if left.is_zero() {
                return false;
            }
        }
    }

    /// The exit notification of our own child: not readable while it runs, readable once it
    /// has exited, and the status is read without reaping it (`waitid(WNOWAIT)` answers
    /// again). The child is signalled through the handle, by its pid, only while unreaped.
    #[test]
    fn a_child_is_watched_pinned_and_signalled_by_pid() {
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pidfd = pidfd_open(child.id()).expect("pidfd_open");
        assert!(pidfd.child);
        assert!(!readable(&pidfd, Duration::from_millis(20)), "runs");
        assert_eq!(peek_exit(&pidfd).expect("peek"), None);
        // No group signal by handle: EINVAL, as before Linux 6.9.
        assert_eq!(
            pidfd_send_signal(&pidfd, Some(Signal::SIGKILL), true),
            Err(Errno::EINVAL)
        );
        pidfd_send_signal(&pidfd, Some(Signal::SIGKILL), false).expect("kill by pid");
        assert!(readable(&pidfd, Duration::from_secs(10)), "exit noticed");
        let status = peek_exit(&pidfd).expect("peek").expect("exited");
        assert_eq!(status.signal(), Some(9));
        // Still unreaped: the status is there again, and std reaps it now.
        assert_eq!(peek_exit(&pidfd).expect("peek again"), Some(status));
        assert_eq!(child.wait().expect("reap").signal(), Some(9));
        // Reaped: no longer pinned, so nothing is signalled by its number.
        assert_eq!(
            pidfd_send_signal(&pidfd, Some(Signal::SIGKILL), false),
            Err(Errno::ESRCH)
        );
        assert!(peek_exit(&pidfd).is_err());
    }

    /// A process that is not our child (here: our parent, which outlives the test) is watched
    /// by the platform's reader, and is never signalled through the handle.
    #[test]
    fn another_process_is_watched_but_never_signalled() {
        let parent = u32::try_from(nix::unistd::getppid().as_raw()).expect("pid");
        if parent == 0 {
            // The parent lies outside our PID namespace: nothing to watch by pid here.
            assert!(pidfd_open(parent).is_err());
            return;
        }
        let pidfd = pidfd_open(parent).expect("pidfd_open");
        assert!(!pidfd.child);
        assert!(!readable(&pidfd, Duration::from_millis(20)), "alive");
        assert_eq!(
            pidfd_send_signal(&pidfd, None, false),
            Err(Errno::ESRCH),
            "not our child: never signalled by number"
        );
        assert_eq!(
            peek_exit(&pidfd).map_err(|e| e.raw_os_error()),
            Err(Some(libc::ECHILD))
        );
    }

    /// The reader: our own parent and group, and a pid that does not exist.
    #[test]
    fn the_reader_reads_our_own_process() {
        let me = nix::unistd::getpid().as_raw();
        let info = proc_info(me).expect("proc_info of ourselves");
        assert_eq!(info.ppid, nix::unistd::getppid().as_raw());
        assert_eq!(info.pgid, nix::unistd::getpgrp().as_raw());
        assert!(!info.zombie);
        assert!(group_members(info.pgid)
            .expect("members")
            .contains(&u32::try_from(me).expect("pid")));
        // Above PID_MAX_LIMIT: no such process.
        assert!(proc_info(4_194_305).is_err());
    }
}
