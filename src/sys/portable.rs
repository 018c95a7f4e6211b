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
//! [`proc_info`] (a process's parent, group and whether it is a zombie) and
//! [`group_members`] (the pids in a process group):
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
pub(crate) fn kick() {
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
            w.alive.strong_count() > 0 && !has_exited(w.pid, w.child, &w.ident)
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
fn has_exited(pid: libc::pid_t, child: bool, ident: &Identity) -> bool {
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

/// `waitid(P_PID, pid, WEXITED | WNOWAIT | WNOHANG)`: the exit status of our child `pid`
/// without reaping it, `None` while it runs.
fn waitid_peek(pid: libc::pid_t) -> Result<Option<ExitStatus>, Errno> {
    use std::os::unix::process::ExitStatusExt;
    const CLD_EXITED: libc::c_int = 1;
    const CLD_KILLED: libc::c_int = 2;
    const CLD_DUMPED: libc::c_int = 3;
    let id = libc::id_t::try_from(pid).map_err(|_| Errno::EINVAL)?;
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value (plain integers and pointers that
        // are never dereferenced here).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid(2) writes one siginfo_t into `info`, which lives on our stack for
        // the call; WNOWAIT leaves the child unreaped.
        let ret = unsafe {
            libc::waitid(
                libc::P_PID,
                id,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            )
        };
        if ret != 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(e),
            }
        }
        // SAFETY: the kernel filled `info` for a child's state change (or left it zeroed,
        // still running); si_pid and si_status read the fields of that union member.
        let (si_pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if si_pid == 0 {
            return Ok(None);
        }
        return Ok(Some(match info.si_code {
            CLD_EXITED => ExitStatus::from_raw((status & 0xff) << 8),
            CLD_KILLED => ExitStatus::from_raw(status & 0x7f),
            CLD_DUMPED => ExitStatus::from_raw((status & 0x7f) | 0x80),
            // Stopped or continued: not an exit (WEXITED alone should not report these).
            _ => return Ok(None),
        }));
    }
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
    kick();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pidfd.pid), signal)
}

/// Whether the reader's pids are the caller's: on Linux, /proc may belong to another PID
/// namespace, whose `/proc/self` is then not the caller's pid `me`. Elsewhere there is one
/// namespace of pids.
#[cfg(target_os = "linux")]
pub(crate) fn reader_sees(me: i32) -> Result<bool, Errno> {
    let own = procfs::process::Process::myself().map_err(proc_errno)?;
    Ok(own.pid == me)
}

/// The portable backend's side of the guard's ancestor rule (see `guard::walk_ancestors`,
/// whose loop is shared): the check that the reader's pids are the caller's.
pub(crate) fn check_reader(me: i32) -> Result<(), crate::Refusal> {
    match reader_sees(me) {
        Ok(true) => Ok(()),
        Ok(false) => Err(crate::Refusal::Unverifiable {
            what: "ancestors: the process reader (/proc) belongs to another PID namespace",
            errno: 0,
        }),
        Err(e) => Err(crate::Refusal::Unverifiable {
            what: "the process reader (is /proc mounted?)",
            errno: e as i32,
        }),
    }
}

/// The portable backend's reader for the guard's ancestor rule: the platform's
/// [`proc_info`]. No ancestor counts as a session leader here (the readers do not give the
/// session), so each one's group is asked afresh on every call.
pub(crate) fn read_ancestor(pid: i32) -> Result<crate::guard::AncestorInfo, crate::Refusal> {
    let info = proc_info(pid).map_err(|e| crate::Refusal::Unverifiable {
        what: "an ancestor",
        errno: e as i32,
    })?;
    Ok(crate::guard::AncestorInfo {
        ppid: info.ppid,
        pgid: info.pgid,
        session_leader: false,
    })
}

/// See the Linux version: always true here.
#[cfg(not(target_os = "linux"))]
pub(crate) fn reader_sees(_me: i32) -> Result<bool, Errno> {
    Ok(true)
}

/// The errno a `procfs` error stands for.
#[cfg(target_os = "linux")]
fn proc_errno(e: procfs::ProcError) -> Errno {
    match e {
        procfs::ProcError::NotFound(_) => Errno::ESRCH,
        procfs::ProcError::PermissionDenied(_) => Errno::EACCES,
        _ => Errno::EIO,
    }
}

/// What the per-platform reader tells about a process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcInfo {
    pub ppid: i32,
    pub pgid: i32,
    pub zombie: bool,
    /// When it started, in the platform's unit (ticks since boot, or microseconds since
    /// the epoch): with the pid, it names one process.
    #[cfg_attr(target_os = "linux", allow(dead_code))] // Linux uses the /proc directory
    pub start: u64,
}

/// A process's parent, group and state, from `/proc/<pid>/stat` (Linux under
/// `pgroup_portable`, as the Linux backend reads it). `ESRCH` when it does not exist.
#[cfg(target_os = "linux")]
pub(crate) fn proc_info(pid: i32) -> Result<ProcInfo, Errno> {
    let stat = procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .map_err(proc_errno)?;
    Ok(ProcInfo {
        ppid: stat.ppid,
        pgid: stat.pgrp,
        zombie: stat.state == 'Z',
        start: stat.starttime,
    })
}

/// A process's parent, group and state: `proc_pidinfo(PROC_PIDTBSDINFO)` (macOS; not run by
/// CI). `ESRCH` when it does not exist.
#[cfg(target_os = "macos")]
pub(crate) fn proc_info(pid: i32) -> Result<ProcInfo, Errno> {
    // SAFETY: an all-zero proc_bsdinfo is a valid value (integers and byte arrays).
    let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
    let size = libc::c_int::try_from(std::mem::size_of::<libc::proc_bsdinfo>())
        .map_err(|_| Errno::EINVAL)?;
    // SAFETY: proc_pidinfo writes at most `size` bytes into `info`, which is that large and
    // lives on our stack for the call.
    let written = unsafe {
        libc::proc_pidinfo(
            pid,
            libc::PROC_PIDTBSDINFO,
            0,
            std::ptr::addr_of_mut!(info).cast(),
            size,
        )
    };
    if written != size {
        let errno = Errno::last();
        return Err(if written <= 0 && errno != Errno::UnknownErrno {
            errno
        } else {
            Errno::ESRCH
        });
    }
    Ok(ProcInfo {
        ppid: i32::try_from(info.pbi_ppid).map_err(|_| Errno::EINVAL)?,
        pgid: i32::try_from(info.pbi_pgid).map_err(|_| Errno::EINVAL)?,
        zombie: info.pbi_status == libc::SZOMB,
        start: info
            .pbi_start_tvsec
            .saturating_mul(1_000_000)
            .saturating_add(info.pbi_start_tvusec),
    })
}

/// A process's parent, group and state: `sysctl(KERN_PROC_PID)` (FreeBSD; not run by CI).
/// `ESRCH` when it does not exist.
#[cfg(target_os = "freebsd")]
pub(crate) fn proc_info(pid: i32) -> Result<ProcInfo, Errno> {
    let procs = kinfo_procs(libc::KERN_PROC_PID, pid)?;
    let info = procs.first().ok_or(Errno::ESRCH)?;
    Ok(ProcInfo {
        ppid: info.ki_ppid,
        pgid: info.ki_pgid,
        zombie: info.ki_stat == libc::SZOMB,
        start: u64::try_from(info.ki_start.tv_sec)
            .unwrap_or(0)
            .saturating_mul(1_000_000)
            .saturating_add(u64::try_from(info.ki_start.tv_usec).unwrap_or(0)),
    })
}

/// `sysctl(CTL_KERN, KERN_PROC, what, arg)`: the `kinfo_proc` records it returns.
#[cfg(target_os = "freebsd")]
fn kinfo_procs(what: libc::c_int, arg: i32) -> Result<Vec<libc::kinfo_proc>, Errno> {
    let mib = [libc::CTL_KERN, libc::KERN_PROC, what, arg];
    let record = std::mem::size_of::<libc::kinfo_proc>();
    // Room for a group of this many members; a larger group is a failure (EINVAL below).
    let mut procs: Vec<libc::kinfo_proc> =
        Vec::with_capacity(if what == libc::KERN_PROC_PID { 1 } else { 4096 });
    let mut len: libc::size_t = procs.capacity() * record;
    // SAFETY: sysctl(3) writes at most `len` bytes into the vector's spare capacity, which is
    // that large, and sets `len` to what it wrote; `mib` lives for the call.
    let ret = unsafe {
        libc::sysctl(
            mib.as_ptr(),
            4,
            procs.as_mut_ptr().cast(),
            &mut len,
            std::ptr::null(),
            0,
        )
    };
    if ret != 0 {
        return Err(Errno::last());
    }
    if len % record != 0 {
        return Err(Errno::EINVAL);
    }
    // SAFETY: the kernel wrote `len / record` whole records into the spare capacity.
    unsafe { procs.set_len(len / record) };
    Ok(procs)
}

/// The pids in process group `pgid`, by the per-platform reader.
#[cfg(target_os = "linux")]
pub(crate) fn group_members(pgid: i32) -> io::Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if super::getpgid(pid) == Ok(pgid) {
            found.extend(u32::try_from(pid).ok());
        }
    }
    Ok(found)
}

/// The pids in process group `pgid`: `proc_listpgrppids` (macOS; not run by CI).
#[cfg(target_os = "macos")]
pub(crate) fn group_members(pgid: i32) -> io::Result<Vec<u32>> {
    let mut pids: Vec<libc::pid_t> = vec![0; 4096];
    let size = libc::c_int::try_from(pids.len() * std::mem::size_of::<libc::pid_t>())
        .map_err(|_| io::Error::from(Errno::EINVAL))?;
    // SAFETY: proc_listpgrppids writes at most `size` bytes of pids into the vector, which
    // is that large, and returns how many it wrote.
    let count = unsafe { libc::proc_listpgrppids(pgid, pids.as_mut_ptr().cast(), size) };
    let count = usize::try_from(count).map_err(|_| io::Error::last_os_error())?;
    pids.truncate(count);
    Ok(pids
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .filter(|&p| p != 0)
        .collect())
}

/// The pids in process group `pgid`: `sysctl(KERN_PROC_PGRP)` (FreeBSD; not run by CI).
#[cfg(target_os = "freebsd")]
pub(crate) fn group_members(pgid: i32) -> io::Result<Vec<u32>> {
    Ok(kinfo_procs(libc::KERN_PROC_PGRP, pgid)?
        .iter()
        .filter_map(|p| u32::try_from(p.ki_pid).ok())
        .collect())
}

#[cfg(test)]
mod tests {
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
