//! The Linux backend: pidfds, `waitid` on them, /proc, and (on x86_64 and aarch64) the
//! supervised tiers' spawn.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::Signal;
use nix::sys::wait::{self, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{hung_up, proc_errno, AncestorInfo, Unreadable};

#[cfg(pgroup_supervised)]
mod spawn;
#[cfg(pgroup_supervised)]
pub(crate) use spawn::{forks as supervisor_forks, spawn as spawn_supervised};

/// A handle on one process that becomes readable once it has exited: a pidfd on Linux, the
/// portable backend's exit notification elsewhere (see `sys/portable/mod.rs`).
pub(crate) type Pidfd = OwnedFd;

/// A pidfd moved above stdio (see [`above_stdio`]).
pub(crate) use above_stdio as pidfd_above_stdio;

/// `fd`, moved to a descriptor above 2 if it is one of 0, 1 and 2 (free in the test binary
/// when it closed its stdio, where std would take a write to, say, a pidfd for an error
/// instead of a closed stdout).
pub(crate) fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let raw = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) has just returned this new descriptor, which
    // nothing else owns; the original is closed when `fd` drops.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The supervised tiers do not exist in this build: `Leader::spawn` refuses them before it
/// gets here.
#[cfg(not(pgroup_supervised))]
pub(crate) fn spawn_supervised(
    _cmd: &mut std::process::Command,
    namespace: bool,
    _new_session: bool,
) -> io::Result<super::Started> {
    Err(super::unsupported_tier(if namespace {
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

/// `__WALL`: also children whose exit signal is not SIGCHLD.
const WALL: WaitPidFlag = WaitPidFlag::__WALL;

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

/// Whether our child `pid` has exited (or was reaped by someone else), without reaping it.
pub(crate) fn has_exited(pid: i32) -> bool {
    libc::id_t::try_from(pid).map_or(true, |id| {
        !matches!(super::waitid_peek(libc::P_PID, id, 0), Ok(None))
    })
}

/// Waits for our child `pid` and reaps it: `Some(code)` if it exited, `None` if a signal
/// ended it (or someone else reaped it).
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

/// Reaps our child `pid`, which holds the other end of `peer` (a socket or a pipe, whose
/// end it closes only by exiting: a supervisor's socket, the probe's pipe), now if it has
/// exited and on a thread of its own otherwise: `Ok(Some)` with its status, `Ok(None)`
/// while it runs, an error (`ECHILD`) where someone else reaped it.
///
/// Its number names it while it runs (`peer` is open) or is our zombie, but no longer once
/// the kernel has reaped it (SIGCHLD ignored): then it may name another process, which is
/// left alone. `pidfd`, opened while it ran, names it in any case.
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

/// The status a `waitid`/`waitpid` call returns (`None`: still running), `EINTR` retried.
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
pub(crate) fn parent_of(pid: u32) -> io::Result<u32> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    let stat = procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .map_err(|e| io::Error::other(format!("cannot read the parent of pid {pid}: {e}")))?;
    u32::try_from(stat.ppid).map_err(|_| io::Error::other("no parent"))
}

/// `pidfd_open(2)` (Linux 5.3): a file descriptor that refers to this process and no other,
/// even after its number is recycled. It becomes readable when the process exits.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<Pidfd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).map_err(|e| {
        if e == rustix::io::Errno::NOSYS {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "pidfd_open(2) is not available: pgroup needs Linux 5.3 or later (valgrind \
                 before 3.21 does not know the call either)",
            )
        } else {
            e.into()
        }
    })
}

/// The exit status of the process behind `pidfd`, without reaping it (`waitid` with
/// `WEXITED | WNOWAIT | WNOHANG`). The zombie stays, and so its pid and group id stay reserved.
/// `Ok(None)` while it runs. Only valid for the caller's own children.
pub(crate) fn peek_exit(pidfd: &Pidfd) -> io::Result<Option<ExitStatus>> {
    let id = libc::id_t::try_from(pidfd.as_raw_fd()).map_err(|_| Errno::EBADF)?;
    Ok(super::waitid_peek(libc::P_PIDFD, id, 0)?)
}

/// `PIDFD_SIGNAL_PROCESS_GROUP` (Linux 6.9): `pidfd_send_signal` signals the process group
/// whose id is the pidfd's process, i.e. the group that process created, rather than the
/// process itself.
const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 4;

/// `pidfd_send_signal(2)` (Linux 5.1). With `group`, the flag `PIDFD_SIGNAL_PROCESS_GROUP`
/// (Linux 6.9; `EINVAL` before): the signal goes to every member of the process group that
/// the pidfd's process created, found through the kernel's `struct pid` and not through a
/// number. That group is reached also after its leader was reaped (while members remain),
/// and a recycled number is never reached: it gets a new `struct pid`, so the call fails with
/// `ESRCH` once the group is empty. Without `group`, only the pidfd's process is signalled,
/// wherever it is (`ESRCH` once it has exited). `None` sends no signal (signal 0): the
/// existence and permission check alone. (rustix's `pidfd_send_signal` takes no flags, and
/// the lifeline's handler needs the call on a raw descriptor: hence `libc::syscall`.)
pub(crate) fn pidfd_send_signal(
    pidfd: &Pidfd,
    signal: Option<Signal>,
    group: bool,
) -> Result<(), Errno> {
    let sig: libc::c_int = signal.map_or(0, |s| s as libc::c_int);
    send_signal(pidfd.as_raw_fd(), sig, group)
}

/// [`pidfd_send_signal`] on a raw descriptor, which must stay open for the call: also what
/// the lifeline's signal handler calls (a syscall and `errno`: async-signal-safe).
fn send_signal(fd: RawFd, sig: libc::c_int, group: bool) -> Result<(), Errno> {
    let flags: libc::c_uint = if group { PIDFD_SIGNAL_PROCESS_GROUP } else { 0 };
    let info: *const libc::siginfo_t = std::ptr::null();
    // SAFETY: pidfd_send_signal takes a descriptor, a signal number, a siginfo pointer and a
    // flags word. The caller keeps the descriptor open for the duration of the call; a null
    // siginfo pointer is documented to mean "as kill(2) would fill it", so the kernel reads
    // no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd, sig, info, flags) };
    if ret < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// The lifeline registers the leaders' pidfds (see [`lifeline_kill_by_handle`]).
pub(crate) const REGISTERS_PIDFDS: bool = true;

/// The lifeline's SIGKILL to a pinned group through its leader's pidfd, from the signal
/// handler (async-signal-safe): to the group where the kernel can (Linux 6.9), and to the
/// leader itself, also if it has left its group. Returns whether the group must still be
/// signalled by its number `pgid`: only on a kernel without the group flag, and only while
/// the leader is unreaped (someone else may have reaped it: SIGCHLD ignored, a
/// `waitpid(-1)` elsewhere), so that the number is still the group's.
pub(crate) fn lifeline_kill_by_handle(_pgid: i32, pidfd: Option<RawFd>) -> bool {
    let Some(fd) = pidfd else {
        return true;
    };
    let group = send_signal(fd, libc::SIGKILL, true);
    let _ = send_signal(fd, libc::SIGKILL, false);
    if group != Err(Errno::EINVAL) {
        return false;
    }
    libc::id_t::try_from(fd).is_ok_and(|id| super::waitid_peek(libc::P_PIDFD, id, 0).is_ok())
}

/// The portable backend polls for exits faster after a signal; pidfds need nothing.
pub(crate) fn exit_watch_kick() {}

/// Teardown's search for the members left asks each pid handed out since the leader's, one
/// `getpgid` each, up to this many; beyond, listing /proc is cheaper.
const MAX_PIDS_ASKED: u32 = 1024;

/// Calls `visit` on each process that may have joined group `pgid` after its `leader` was
/// started, until `visit` returns `false`. Members are started after the leader, so their
/// pids were handed out after the leader's: above it, or, if the pid counter has wrapped
/// since, at most the last pid handed out. (A process older than the leader that joins its
/// group with `setpgid` is missed.) When few pids were handed out since (up to
/// [`MAX_PIDS_ASKED`]), each is visited; otherwise /proc is listed, and the processes
/// older than the leader (most of a machine's) are skipped. So the cost grows with the
/// pids handed out since the leader started, or, beyond that bound, with the processes on
/// the machine.
pub(crate) fn each_possible_member(
    _pgid: i32,
    leader: u32,
    mut visit: impl FnMut(u32) -> bool,
) -> io::Result<()> {
    let last = last_pid();
    match last {
        Some(last) if last >= leader && last - leader <= MAX_PIDS_ASKED => {
            for pid in leader + 1..=last {
                if !visit(pid) {
                    break;
                }
            }
        }
        _ => {
            let started_after_leader = |pid: u32| match last {
                Some(last) if last < leader => pid > leader || pid <= last,
                Some(_) => pid > leader,
                None => pid != leader,
            };
            for entry in std::fs::read_dir("/proc")? {
                let Ok(entry) = entry else { continue };
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                if started_after_leader(pid) && !visit(pid) {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// The last pid handed out in this PID namespace (`/proc/sys/kernel/ns_last_pid`), with one
/// open, one read and a close: a number and a newline always fit the buffer, so no second
/// read (nor `std::fs::read_to_string`'s `statx` for a size hint) is needed.
fn last_pid() -> Option<u32> {
    use std::io::Read;
    let mut buf = [0u8; 32];
    let n = std::fs::File::open("/proc/sys/kernel/ns_last_pid")
        .and_then(|mut f| f.read(&mut buf))
        .ok()?;
    let text = std::str::from_utf8(buf.get(..n)?).ok()?;
    // A complete reading ends with its newline.
    text.strip_suffix('\n')?.parse().ok()
}

/// The guard's reader of one ancestor: `/proc/<pid>/stat` through procfs.
pub(crate) fn read_ancestor(pid: i32) -> Result<AncestorInfo, Unreadable> {
    let stat = procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .map_err(|e| Unreadable {
            what: "an ancestor in /proc",
            errno: proc_errno(e) as i32,
        })?;
    Ok(AncestorInfo {
        ppid: stat.ppid,
        pgid: stat.pgrp,
        session_leader: stat.session == stat.pid,
    })
}
