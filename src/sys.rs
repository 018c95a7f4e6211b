//! The crate's only door to the kernel.
//!
//! Every raw syscall and every `unsafe` block of `pgroup` lives in this module, each with a
//! `// SAFETY:` comment. The rest of the crate sees small, typed, safe functions. Keeping them
//! here makes the part of the crate that can do harm small enough to read in one sitting.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
#[cfg(pgroup_linux)]
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
#[cfg(pgroup_linux)]
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use nix::errno::Errno;
#[cfg(pgroup_linux)]
use nix::libc;
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{self, Signal};
#[cfg(pgroup_linux)]
use nix::sys::wait::Id;
#[cfg(pgroup_linux)]
use nix::sys::wait::{self, WaitPidFlag, WaitStatus};
use nix::unistd::{self, Pid};

use crate::Pgid;

pub(crate) mod lifeline;
// The Linux backend: pidfds and /proc, and (on x86_64 and aarch64) the supervised tiers.
// Everywhere else, and on Linux under `--cfg pgroup_portable`, the portable backend
// (`sys/portable.rs`) stands in for them. `build.rs` chooses, once.
#[cfg(not(pgroup_linux))]
mod portable;
#[cfg(pgroup_supervised)]
mod spawn;
pub(crate) mod supervisor;

#[cfg(not(pgroup_linux))]
pub(crate) use portable::group_members;
#[cfg(not(pgroup_linux))]
pub(crate) use portable::{check_reader, read_ancestor};
#[cfg(not(pgroup_linux))]
pub(crate) use portable::{
    kick as exit_watch_kick, peek_exit, pidfd_open, pidfd_send_signal, Pidfd,
};
#[cfg(pgroup_supervised)]
pub(crate) use spawn::{forks as supervisor_forks, spawn as spawn_supervised};

/// A handle on one process that becomes readable once it has exited: a pidfd on Linux, the
/// portable backend's exit notification elsewhere (see `sys/portable.rs`).
#[cfg(pgroup_linux)]
pub(crate) type Pidfd = OwnedFd;

/// Whether this build uses the portable backend (not Linux, or `--cfg pgroup_portable`).
pub(crate) const PORTABLE: bool = cfg!(not(pgroup_linux));

/// A pidfd moved above stdio (see [`above_stdio`]).
#[cfg(pgroup_linux)]
pub(crate) use above_stdio as pidfd_above_stdio;

/// The portable backend's exit notifications are not moved (the supervised tiers, which
/// ask for it, do not exist there).
#[cfg(not(pgroup_linux))]
pub(crate) fn pidfd_above_stdio(pidfd: Pidfd) -> io::Result<Pidfd> {
    Ok(pidfd)
}

/// `fd`, moved to a descriptor above 2 if it is one of 0, 1 and 2 (free in the test binary
/// when it closed its stdio, where std would take a write to, say, a pidfd for an error
/// instead of a closed stdout).
#[cfg(pgroup_linux)]
pub(crate) fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let raw = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) has just returned this new descriptor, which
    // nothing else owns; the original is closed when `fd` drops.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Whether this build has the supervised tiers (the Linux backend on x86_64 or aarch64).
pub(crate) const SUPERVISED: bool = cfg!(pgroup_supervised);

/// A supervised leader, as the test binary holds it (see `sys/spawn.rs`).
pub(crate) struct Started {
    /// The supervisor (in `Namespace`, the namespace's init, or the process whose child it
    /// is): our child, reaped at the end of teardown.
    pub supervisor: u32,
    /// The leader's pid in the test binary's PID namespace.
    pub leader: u32,
    /// A handle on the leader (not our child).
    pub leader_pidfd: Pidfd,
    /// The socket to the supervisor, non-blocking.
    pub channel: OwnedFd,
    /// `Namespace`: the namespace's init, by its pid here.
    pub namespace_init: Option<u32>,
    pub stdin: Option<std::process::ChildStdin>,
    pub stdout: Option<std::process::ChildStdout>,
    pub stderr: Option<std::process::ChildStderr>,
}

/// The supervised tiers do not exist in this build: `Leader::spawn` refuses them before it
/// gets here.
#[cfg(not(pgroup_supervised))]
pub(crate) fn spawn_supervised(
    _cmd: &mut Command,
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
#[cfg(not(pgroup_supervised))]
pub(crate) fn supervisor_forks() -> bool {
    false
}

/// The error of a tier the backend cannot offer (the supervised tiers in the portable
/// backend): spawning fails with it, and never falls back to a weaker tier.
pub(crate) fn unsupported_tier(tier: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "pgroup: Containment::{tier} is not available on {}{}: it needs Linux (a \
             subreaper and pidfds{}); use Containment::Group",
            std::env::consts::OS,
            if cfg!(pgroup_portable) {
                " with the portable backend (--cfg pgroup_portable)"
            } else {
                ""
            },
            if tier == "Namespace" {
                ", and PID namespaces"
            } else {
                ""
            },
        ),
    )
}

/// `__WALL`: also children whose exit signal is not SIGCHLD.
#[cfg(pgroup_linux)]
const WALL: WaitPidFlag = WaitPidFlag::__WALL;

/// Reaps our child `pid`, waiting for it (a child that is known to have exited, or to be
/// about to). Errors (someone else reaped it) are ignored.
#[cfg(pgroup_linux)]
pub(crate) fn reap_pid(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    loop {
        match wait::waitpid(Pid::from_raw(pid), Some(WALL)) {
            Err(Errno::EINTR) => {}
            _ => return,
        }
    }
}

/// Whether our child `pid` has exited (or was reaped by someone else), without reaping it.
#[cfg(pgroup_linux)]
pub(crate) fn has_exited(pid: i32) -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
    loop {
        return match wait::waitid(wait::Id::Pid(Pid::from_raw(pid)), flags) {
            Ok(WaitStatus::StillAlive) => false,
            Ok(_) => true,
            Err(Errno::EINTR) => continue,
            Err(_) => true,
        };
    }
}

/// Only supervisors are asked about, and the portable backend has none.
#[cfg(not(pgroup_linux))]
pub(crate) fn has_exited(_pid: i32) -> bool {
    true
}

/// Waits for our child `pid` and reaps it: `Some(code)` if it exited, `None` if a signal
/// ended it (or someone else reaped it).
#[cfg(pgroup_linux)]
pub(crate) fn reap_pid_status(pid: i32) -> Option<i32> {
    loop {
        return match wait::waitpid(Pid::from_raw(pid), Some(WALL)) {
            Ok(WaitStatus::Exited(_, code)) => Some(code),
            Err(Errno::EINTR) => continue,
            _ => None,
        };
    }
}

/// The wait status of `pid` if it is a zombie, from its `/proc/<pid>/stat` (`exit_code`,
/// the 52nd field, in `waitpid`'s form): of a process that is not our child, which only its
/// parent could otherwise read. The caller makes sure the number is still that process's.
/// One open, one read into a buffer on the stack, one close.
#[cfg(pgroup_linux)]
pub(crate) fn zombie_status(pid: u32) -> Option<ExitStatus> {
    use std::io::Read;
    let mut buf = [0_u8; 1024];
    let mut file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let n = file.read(&mut buf).ok()?;
    let stat = std::str::from_utf8(buf.get(..n)?).ok()?;
    // The fields after the command name, which ends with the last `)`: the state is the
    // 3rd field, so the 52nd is the 50th of these.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_ascii_whitespace();
    if fields.next()? != "Z" {
        return None;
    }
    fields.nth(48)?.parse().ok().map(ExitStatus::from_raw)
}

/// Without /proc there is no other way to read it: the supervised tiers, which ask, do not
/// exist in the portable backend.
#[cfg(not(pgroup_linux))]
pub(crate) fn zombie_status(_pid: u32) -> Option<ExitStatus> {
    None
}

/// Reaps our child `pid`, which holds the other end of `peer` (a socket or a pipe, whose
/// end it closes only by exiting: a supervisor's socket, the probe's pipe), now if it has
/// exited and on a thread of its own otherwise: `Ok(Some)` with its status, `Ok(None)`
/// while it runs, an error (`ECHILD`) where someone else reaped it.
///
/// Its number names it while it runs (`peer` is open) or is our zombie, but no longer once
/// the kernel has reaped it (SIGCHLD ignored): then it may name another process, which is
/// left alone. `pidfd`, opened while it ran, names it in any case.
#[cfg(pgroup_linux)]
pub(crate) fn reap_now_or_later(
    pid: u32,
    peer: BorrowedFd<'_>,
    pidfd: Option<&Pidfd>,
) -> io::Result<Option<ExitStatus>> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WALL;
    let status = match pidfd {
        Some(pidfd) => wait_status(|| wait::waitid(Id::PIDFd(pidfd.as_fd()), flags))?,
        None => {
            let running = !hung_up(peer);
            let pid =
                libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
            let flags = WaitPidFlag::WNOHANG | WALL;
            match wait_status(|| wait::waitpid(Pid::from_raw(pid), Some(flags)))? {
                Some(status) => Some(status),
                None if running => None,
                // Another process with its number.
                None => return Err(Errno::ECHILD.into()),
            }
        }
    };
    if status.is_none() {
        let owned = pidfd.and_then(|p| p.try_clone().ok());
        let _ = std::thread::Builder::new()
            .name("pgroup-reap-supervisor".into())
            .spawn(move || match owned {
                Some(pidfd) => {
                    let flags = WaitPidFlag::WEXITED | WALL;
                    let _ = wait_status(|| wait::waitid(Id::PIDFd(pidfd.as_fd()), flags));
                }
                None => reap_pid(pid),
            });
    }
    Ok(status)
}

/// The supervised tiers, which have supervisors, do not exist in the portable backend.
#[cfg(not(pgroup_linux))]
pub(crate) fn reap_now_or_later(
    _pid: u32,
    _peer: BorrowedFd<'_>,
    _pidfd: Option<&Pidfd>,
) -> io::Result<Option<ExitStatus>> {
    Err(io::ErrorKind::Unsupported.into())
}

/// The status a `waitid`/`waitpid` call returns (`None`: still running), `EINTR` retried.
#[cfg(pgroup_linux)]
fn wait_status(
    mut call: impl FnMut() -> nix::Result<WaitStatus>,
) -> io::Result<Option<ExitStatus>> {
    loop {
        return match call() {
            Ok(WaitStatus::Exited(_, code)) => Ok(Some(ExitStatus::from_raw((code & 0xff) << 8))),
            Ok(WaitStatus::Signaled(_, sig, core)) => {
                let core_bit = if core { 0x80 } else { 0 };
                Ok(Some(ExitStatus::from_raw((sig as i32) | core_bit)))
            }
            Ok(_) => Ok(None),
            Err(Errno::EINTR) => continue,
            Err(e) => Err(e.into()),
        };
    }
}

/// The parent of `pid`, from /proc.
#[cfg(pgroup_linux)]
pub(crate) fn parent_of(pid: u32) -> io::Result<u32> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    let stat = procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .map_err(|e| io::Error::other(format!("cannot read the parent of pid {pid}: {e}")))?;
    u32::try_from(stat.ppid).map_err(|_| io::Error::other("no parent"))
}

/// Reads every record waiting on the non-blocking `SOCK_SEQPACKET` socket `fd`, calling
/// `each` with each. Returns whether the other end has been closed.
pub(crate) fn read_records(fd: BorrowedFd<'_>, mut each: impl FnMut(&[u8])) -> io::Result<bool> {
    let mut record = [0_u8; 512];
    loop {
        match nix::unistd::read(fd, &mut record) {
            Ok(0) => return Ok(true),
            Ok(n) => each(&record[..n]),
            Err(Errno::EAGAIN) => return Ok(false),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Makes `fd` non-blocking (`O_NONBLOCK`), keeping its other status flags.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// `pipe2(O_CLOEXEC)`: the read end, then the write end.
#[cfg(not(target_vendor = "apple"))]
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// `pipe(2)`, then `FD_CLOEXEC` on each end (macOS has no `pipe2`; std makes its own pipes
/// the same way there).
#[cfg(target_vendor = "apple")]
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe()?;
    for fd in [&read, &write] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
    }
    Ok((read, write))
}

/// Writes one byte (a command to the supervisor).
pub(crate) fn write_byte(fd: BorrowedFd<'_>, byte: u8) -> io::Result<()> {
    loop {
        match nix::unistd::write(fd, &[byte]) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// `killpg(2)` of a group whose id is already known to be greater than 1.
///
/// Only the guard calls this: [`crate::safe_killpg`] is the one public way to signal a group.
pub(crate) fn killpg(pgid: Pgid, signal: Signal) -> Result<(), Errno> {
    let raw = pgid.as_raw();
    // `Pgid` cannot hold these; checked again at the syscall itself, so that no bug between
    // the guard and here can ever turn into `kill(0)` or `kill(-1)`.
    if raw <= 1 {
        return Err(Errno::EINVAL);
    }
    #[cfg(not(pgroup_linux))]
    exit_watch_kick();
    signal::killpg(Pid::from_raw(raw), signal)
}

/// `getpid(2)`.
pub(crate) fn getpid() -> i32 {
    unistd::getpid().as_raw()
}

/// `getppid(2)`; 0 when the parent is outside the caller's PID namespace.
pub(crate) fn getppid() -> i32 {
    unistd::getppid().as_raw()
}

/// `getpgrp(2)`: the caller's own process group (0 when it lies outside the PID namespace).
pub(crate) fn getpgrp() -> i32 {
    unistd::getpgrp().as_raw()
}

/// `getsid(0)`: the caller's session id, which is the pid and pgid of the session leader.
pub(crate) fn getsid() -> Result<i32, Errno> {
    unistd::getsid(None).map(Pid::as_raw)
}

/// `getpgid(pid)` of any process in the caller's PID namespace.
pub(crate) fn getpgid(pid: i32) -> Result<i32, Errno> {
    unistd::getpgid(Some(Pid::from_raw(pid))).map(Pid::as_raw)
}

#[cfg(pgroup_linux)]
/// `pidfd_open(2)` (Linux 5.3): a file descriptor that refers to this process and no other,
/// even after its number is recycled. It becomes readable when the process exits.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<Pidfd> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid above i32::MAX"))?;
    let flags: libc::c_uint = 0;
    // SAFETY: pidfd_open takes a pid and a flags word by value and returns a new descriptor
    // or -1 with errno set. No memory is shared with the kernel.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOSYS) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "pidfd_open(2) is not available: pgroup needs Linux 5.3 or later (valgrind \
                 before 3.21 does not know the call either)",
            ));
        }
        return Err(e);
    }
    let fd = RawFd::try_from(ret)
        .map_err(|_| io::Error::other("pidfd_open returned a descriptor out of range"))?;
    // SAFETY: the kernel has just handed us this descriptor; nothing else in the process owns
    // it, so OwnedFd may take ownership and close it exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the peer of the socket `fd` has closed its end (`POLLHUP`), records unread or
/// not: for a supervisor's channel, that it has exited (its descriptors close before it
/// becomes a zombie) and that its last records are in the socket.
pub(crate) fn hung_up(fd: BorrowedFd<'_>) -> bool {
    let mut pollfds = [PollFd::new(fd, PollFlags::empty())];
    loop {
        return match nix::poll::poll(&mut pollfds, nix::poll::PollTimeout::ZERO) {
            Ok(_) => pollfds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
            Err(Errno::EINTR) => continue,
            Err(_) => false,
        };
    }
}

/// Waits until at least one of `fds` is readable or `timeout` passes (`None`: no bound).
/// Returns, for each descriptor, whether it is readable. EINTR is retried with the time left
/// by the caller, which loops on its own deadline.
pub(crate) fn poll_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let mut pollfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
        .collect();
    #[cfg(any(target_os = "linux", target_os = "freebsd"))]
    let polled = nix::poll::ppoll(
        &mut pollfds,
        timeout.map(nix::sys::time::TimeSpec::from_duration),
        None,
    );
    // No ppoll (macOS): poll's milliseconds, rounded up so that a wait never ends early.
    #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
    let polled = nix::poll::poll(
        &mut pollfds,
        timeout.map_or(nix::poll::PollTimeout::NONE, |t| {
            let ms = t.as_nanos().div_ceil(1_000_000);
            nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX)
        }),
    );
    match polled {
        Ok(_) | Err(Errno::EINTR) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(pollfds
        .iter()
        .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
        .collect())
}

#[cfg(pgroup_linux)]
/// The exit status of the process behind `pidfd`, without reaping it (`waitid` with
/// `WEXITED | WNOWAIT | WNOHANG`). The zombie stays, and so its pid and group id stay reserved.
/// `Ok(None)` while it runs. Only valid for the caller's own children.
pub(crate) fn peek_exit(pidfd: &Pidfd) -> io::Result<Option<ExitStatus>> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
    wait_status(|| wait::waitid(Id::PIDFd(pidfd.as_fd()), flags))
}

/// Makes `cmd` call `setsid(2)` in the child before exec: a new session whose leader is the
/// child, and so also a new process group with the child as leader.
///
/// std keeps a `pre_exec` hook for every later spawn of the same `Command`, so a `Command`
/// spawned again carries this hook twice: the hook does nothing in a child that already
/// leads its own session (an earlier copy of it ran), where `setsid` would fail with `EPERM`.
pub(crate) fn set_new_session(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child between fork and exec. It calls only
    // getpid(2), getsid(2) and setsid(2), which are async-signal-safe, and builds the error
    // from a raw errno without allocating; it takes no lock and touches no state shared with
    // the parent.
    unsafe {
        cmd.pre_exec(|| {
            if unistd::getsid(None) == Ok(unistd::getpid()) {
                return Ok(());
            }
            match unistd::setsid() {
                Ok(_) => Ok(()),
                Err(e) => Err(io::Error::from_raw_os_error(e as i32)),
            }
        });
    }
}

#[cfg(pgroup_linux)]
/// `PIDFD_SIGNAL_PROCESS_GROUP` (Linux 6.9): `pidfd_send_signal` signals the process group
/// whose id is the pidfd's process, i.e. the group that process created, rather than the
/// process itself.
const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 4;

#[cfg(pgroup_linux)]
/// `pidfd_send_signal(2)` (Linux 5.1). With `group`, the flag `PIDFD_SIGNAL_PROCESS_GROUP`
/// (Linux 6.9; `EINVAL` before): the signal goes to every member of the process group that
/// the pidfd's process created, found through the kernel's `struct pid` and not through a
/// number. That group is reached also after its leader was reaped (while members remain),
/// and a recycled number is never reached: it gets a new `struct pid`, so the call fails with
/// `ESRCH` once the group is empty. Without `group`, only the pidfd's process is signalled,
/// wherever it is (`ESRCH` once it has exited). `None` sends no signal (signal 0): the
/// existence and permission check alone.
pub(crate) fn pidfd_send_signal(
    pidfd: &Pidfd,
    signal: Option<Signal>,
    group: bool,
) -> Result<(), Errno> {
    let sig: libc::c_int = signal.map_or(0, |s| s as libc::c_int);
    let flags: libc::c_uint = if group { PIDFD_SIGNAL_PROCESS_GROUP } else { 0 };
    let fd: libc::c_int = pidfd.as_raw_fd();
    let info: *const libc::siginfo_t = std::ptr::null();
    // SAFETY: pidfd_send_signal takes a descriptor, a signal number, a siginfo pointer and a
    // flags word. The descriptor is borrowed and so open for the duration of the call; a null
    // siginfo pointer is documented to mean "as kill(2) would fill it", so the kernel reads no
    // memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd, sig, info, flags) };
    if ret < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Registers `fd` with the current tokio runtime's reactor, for readability: the leader's
/// pidfd (readable once it exits).
///
/// # Panics
///
/// Outside a tokio runtime, or in one whose I/O driver is not enabled.
#[cfg(feature = "tokio")]
pub(crate) fn async_fd(fd: OwnedFd) -> io::Result<::tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `register` asks that the descriptor stay open, naming the same file
    // description, for as long as the `AsyncFd` owns it, and that `as_raw_fd` always return
    // it. The `AsyncFd` takes the `OwnedFd` by value: nothing else can close it, and an
    // `OwnedFd`'s raw descriptor never changes.
    unsafe {
        ::tokio::io::unix::AsyncFd::register_with_interest(fd, ::tokio::io::Interest::READABLE)
            .map_err(io::Error::from)
    }
}
