//! The crate's only door to the kernel.
//!
//! Every raw syscall and every `unsafe` block of `pgroup` lives in this module, each with a
//! `// SAFETY:` comment. The rest of the crate sees small, typed, safe functions. Keeping them
//! here makes the part of the crate that can do harm small enough to read in one sitting.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
#[cfg(all(target_os = "linux", not(pgroup_portable)))]
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
#[cfg(all(target_os = "linux", not(pgroup_portable)))]
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
#[cfg(all(target_os = "linux", not(pgroup_portable)))]
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{self, Signal};
#[cfg(all(target_os = "linux", not(pgroup_portable)))]
use nix::sys::wait::Id;
use nix::sys::wait::{self, WaitPidFlag, WaitStatus};
use nix::unistd::{self, Pid};

use crate::Pgid;

pub(crate) mod lifeline;
// The Linux backend: pidfds, the supervisor (subreaper, signalfd, PID namespaces) and its
// start in shared memory (raw syscalls). Everywhere else, and on Linux under `--cfg pgroup_portable`, the portable
// backend (`sys/portable.rs`) stands in for them.
#[cfg(not(all(target_os = "linux", not(pgroup_portable))))]
mod portable;
mod protocol;
#[cfg(all(target_os = "linux", not(pgroup_portable)))]
mod raw;
#[cfg(all(target_os = "linux", not(pgroup_portable)))]
mod respawn;
#[cfg(all(target_os = "linux", not(pgroup_portable)))]
mod supervise;

#[cfg(not(all(target_os = "linux", not(pgroup_portable))))]
pub(crate) use portable::{
    exec_supervisor_available, kick as exit_watch_kick, peek_exit, pidfd_open, pidfd_send_signal,
    Pidfd, Respawned, SharedSupervisor,
};
#[cfg(all(target_os = "linux", not(pgroup_portable)))]
pub(crate) use respawn::{available as exec_supervisor_available, Respawned, SharedSupervisor};

pub(crate) use protocol::{
    CMD_TEARDOWN, MSG_LEN, TAG_DONE, TAG_ESCAPEE, TAG_FAILED, TAG_PID, TAG_STATUS, TAG_STUCK,
    TEARDOWN_BOUND_MS,
};

#[cfg(not(all(target_os = "linux", not(pgroup_portable))))]
pub(crate) use portable::group_members;
#[cfg(not(all(target_os = "linux", not(pgroup_portable))))]
pub(crate) use portable::{check_reader, read_ancestor};

/// A handle on one process that becomes readable once it has exited: a pidfd on Linux, the
/// portable backend's exit notification elsewhere (see `sys/portable.rs`).
#[cfg(all(target_os = "linux", not(pgroup_portable)))]
pub(crate) type Pidfd = OwnedFd;

/// Whether this build uses the portable backend (not Linux, or `--cfg pgroup_portable`).
pub(crate) const PORTABLE: bool = cfg!(not(all(target_os = "linux", not(pgroup_portable))));

/// The pipes between the test binary and a supervisor. The test binary keeps `control`
/// (write end) and `status` (read end, non-blocking); the other two ends are closed in the
/// test binary as soon as the supervisor has been forked. `armed` must be cleared with
/// [`SupervisorPipes::disarm`] once `spawn` has returned.
#[derive(Debug)]
pub(crate) struct SupervisorPipes {
    pub control: OwnedFd,
    pub status: OwnedFd,
    pub child_ends: (OwnedFd, OwnedFd),
    armed: Arc<AtomicBool>,
}

impl SupervisorPipes {
    /// Turns this spawn's hook into a no-op for every later spawn of the same `Command`: a
    /// `Command` keeps its `pre_exec` hooks, and this one names descriptors that are closed
    /// once the spawn is over. A later supervised spawn adds a hook of its own.
    pub(crate) fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }
}

#[cfg(all(target_os = "linux", not(pgroup_portable)))]
/// `pipe2(O_CLOEXEC)` with both ends moved to descriptors 3 and above: std's child puts the
/// command's stdio on 0, 1 and 2 with `dup2`, which would replace a pipe end that the
/// kernel placed there because the test binary had closed one of them.
fn pipe_above_stdio() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((above_stdio(read)?, above_stdio(write)?))
}

/// A pidfd moved above stdio (see [`above_stdio`]).
#[cfg(all(target_os = "linux", not(pgroup_portable)))]
pub(crate) use above_stdio as pidfd_above_stdio;

/// The portable backend's exit notifications are not moved (the supervised tiers, which
/// ask for it, do not exist there).
#[cfg(not(all(target_os = "linux", not(pgroup_portable))))]
pub(crate) fn pidfd_above_stdio(pidfd: Pidfd) -> io::Result<Pidfd> {
    Ok(pidfd)
}

/// `fd`, moved to a descriptor above 2 if it is one of 0, 1 and 2 (free in the test binary
/// when it closed its stdio, where std would take a write to, say, a pidfd for an error
/// instead of a closed stdout).
#[cfg(all(target_os = "linux", not(pgroup_portable)))]
pub(crate) fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let raw = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) has just returned this new descriptor, which
    // nothing else owns; the original is closed when `fd` drops.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

#[cfg(all(target_os = "linux", not(pgroup_portable)))]
/// The control pipe and the status pipe of a supervisor, both above stdio, the status
/// pipe's read end (the test binary's) non-blocking: `(control, status)`, each `(read,
/// write)`.
type PipePair = (OwnedFd, OwnedFd);
#[cfg(all(target_os = "linux", not(pgroup_portable)))]
fn supervisor_pipes() -> io::Result<(PipePair, PipePair)> {
    let control = pipe_above_stdio()?;
    let status = pipe_above_stdio()?;
    nix::fcntl::fcntl(
        &status.0,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((control, status))
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

/// Makes the pipes and adds the supervisor hook to `cmd`: when std forks the command's
/// child, that child becomes the supervisor and forks the leader, which std then execs.
/// See `sys/supervise.rs` for the protocol and why this is async-signal-safe.
#[cfg(all(target_os = "linux", not(pgroup_portable)))]
pub(crate) fn install_supervisor(
    cmd: &mut Command,
    namespace: bool,
    new_session: bool,
) -> io::Result<SupervisorPipes> {
    let ((control_read, control_write), (status_read, status_write)) = supervisor_pipes()?;
    let plan = supervise::Plan {
        control_read: control_read.as_raw_fd(),
        status_write: status_write.as_raw_fd(),
        control_write: control_write.as_raw_fd(),
        status_read: status_read.as_raw_fd(),
        namespace,
        new_session,
        check_exec: true,
        pid_bits: 0,
    };
    let armed = Arc::new(AtomicBool::new(true));
    let hook_armed = Arc::clone(&armed);
    // SAFETY: the hook runs in the forked child between fork and exec. It is written for
    // that context: only async-signal-safe syscalls on stack data, no allocation, no locks
    // (see the module documentation of `supervise`); the atomic load is lock-free. The
    // descriptors it names stay open in the parent until after `spawn` returns, so they are
    // open in the child; after that the hook is disarmed and does nothing.
    unsafe {
        cmd.pre_exec(move || {
            if hook_armed.load(Ordering::SeqCst) {
                supervise::hook(plan)
            } else {
                Ok(())
            }
        });
    }
    Ok(SupervisorPipes {
        control: control_write,
        status: status_read,
        child_ends: (control_read, status_write),
        armed,
    })
}

/// The test binary's side of a supervisor that shares its memory rather than a fork (see
/// `sys/respawn.rs`): the same two pipes as [`SupervisorPipes`], std's handle on the leader
/// (for its stdio pipes only: the leader is the supervisor's child) and the supervisor.
pub(crate) struct ExecSupervised {
    pub control: OwnedFd,
    pub status: OwnedFd,
    pub spawned: Respawned,
}

/// The supervised tiers do not exist in the portable backend: `Leader::spawn` refuses them
/// before it gets here.
#[cfg(not(all(target_os = "linux", not(pgroup_portable))))]
pub(crate) fn install_supervisor(
    _cmd: &mut Command,
    namespace: bool,
    _new_session: bool,
) -> io::Result<SupervisorPipes> {
    Err(unsupported_tier(if namespace {
        "Namespace"
    } else {
        "Supervised"
    }))
}

/// See [`install_supervisor`]: never reached in the portable backend.
#[cfg(not(all(target_os = "linux", not(pgroup_portable))))]
pub(crate) fn spawn_exec_supervised(_cmd: &mut Command) -> io::Result<ExecSupervised> {
    Err(unsupported_tier("Supervised"))
}

/// Spawns `cmd` (set to `process_group(0)`, or a new session, by the caller) under a
/// supervisor that shares the test binary's memory: no copy of its page tables, no exec.
#[cfg(all(target_os = "linux", not(pgroup_portable)))]
pub(crate) fn spawn_exec_supervised(cmd: &mut Command) -> io::Result<ExecSupervised> {
    let ((control_read, control_write), (status_read, status_write)) = supervisor_pipes()?;
    let plan = supervise::Plan {
        control_read: control_read.as_raw_fd(),
        status_write: status_write.as_raw_fd(),
        control_write: control_write.as_raw_fd(),
        status_read: status_read.as_raw_fd(),
        namespace: false,
        new_session: false,
        check_exec: false,
        pid_bits: 0,
    };
    let spawned = respawn::spawn(cmd, plan);
    // The supervisor's ends: it has its own copies (or is gone).
    drop(control_read);
    drop(status_write);
    Ok(ExecSupervised {
        control: control_write,
        status: status_read,
        spawned: spawned?,
    })
}

/// `__WALL` where it exists (Linux: also children that are threads' clones).
#[cfg(target_os = "linux")]
const WALL: WaitPidFlag = WaitPidFlag::__WALL;
#[cfg(not(target_os = "linux"))]
const WALL: WaitPidFlag = WaitPidFlag::empty();

/// Reaps our child `pid`, waiting for it (a child that is known to have exited, or to be
/// about to). Errors (someone else reaped it) are ignored.
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

/// Whether our child `pid` has exited; reaps it if so. Someone else having reaped it
/// (`ECHILD`) counts as exited.
pub(crate) fn try_reap_pid(pid: u32) -> io::Result<bool> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    loop {
        return match wait::waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG | WALL)) {
            Ok(WaitStatus::StillAlive) => Ok(false),
            Ok(_) | Err(Errno::ECHILD) => Ok(true),
            Err(Errno::EINTR) => continue,
            Err(e) => Err(e.into()),
        };
    }
}

/// Reads what is available from a non-blocking descriptor into `buf`. Returns whether it
/// reached end of file, also when data came before it in the same call.
pub(crate) fn read_available(fd: BorrowedFd<'_>, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0_u8; 512];
    loop {
        match nix::unistd::read(fd, &mut chunk) {
            Ok(0) => return Ok(true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
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
    #[cfg(not(all(target_os = "linux", not(pgroup_portable))))]
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

#[cfg(all(target_os = "linux", not(pgroup_portable)))]
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
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret)
        .map_err(|_| io::Error::other("pidfd_open returned a descriptor out of range"))?;
    // SAFETY: the kernel has just handed us this descriptor; nothing else in the process owns
    // it, so OwnedFd may take ownership and close it exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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

/// Whether the other end of a pipe has been closed (`POLLHUP`), without reading from it.
pub(crate) fn hung_up(fd: BorrowedFd<'_>) -> bool {
    let mut pollfd = [PollFd::new(fd, PollFlags::POLLIN)];
    match nix::poll::poll(&mut pollfd, nix::poll::PollTimeout::ZERO) {
        Ok(_) => pollfd[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP)),
        // Cannot tell: say it is gone, so that nothing is signalled (fail closed).
        Err(_) => true,
    }
}

#[cfg(all(target_os = "linux", not(pgroup_portable)))]
/// The exit status of the process behind `pidfd`, without reaping it (`waitid` with
/// `WEXITED | WNOWAIT | WNOHANG`). The zombie stays, and so its pid and group id stay reserved.
/// `Ok(None)` while it runs. Only valid for the caller's own children.
pub(crate) fn peek_exit(pidfd: &Pidfd) -> io::Result<Option<ExitStatus>> {
    let pidfd = pidfd.as_fd();
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
    loop {
        return match wait::waitid(Id::PIDFd(pidfd), flags) {
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

#[cfg(all(target_os = "linux", not(pgroup_portable)))]
/// `PIDFD_SIGNAL_PROCESS_GROUP` (Linux 6.9): `pidfd_send_signal` signals the process group
/// whose id is the pidfd's process, i.e. the group that process created, rather than the
/// process itself.
const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 4;

#[cfg(all(target_os = "linux", not(pgroup_portable)))]
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
/// pidfd (readable once it exits) or a supervisor's status pipe.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Data followed by end of file in one call (the supervisor's last messages, then its
    /// exit) is reported as end of file: before, the caller learned of it one call later,
    /// and `try_wait` answered "running" once in between.
    #[test]
    fn read_available_reports_end_of_file_after_data() {
        let (read, write) = pipe().expect("pipe");
        nix::fcntl::fcntl(
            &read,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .expect("non-blocking");
        let mut buf = Vec::new();
        assert!(
            !read_available(read.as_fd(), &mut buf).expect("read"),
            "nothing yet"
        );
        nix::unistd::write(&write, b"S\x03\x00\x00\x00").expect("write");
        assert!(
            !read_available(read.as_fd(), &mut buf).expect("read"),
            "writer open"
        );
        nix::unistd::write(&write, b"D\x00\x00\x00\x00").expect("write");
        drop(write);
        assert!(
            read_available(read.as_fd(), &mut buf).expect("read"),
            "end of file"
        );
        assert_eq!(buf.len(), 10);
    }
}
