//! The crate's only door to the kernel.
//!
//! Every raw syscall and every `unsafe` block of `pgroup` lives in this module, each with a
//! `// SAFETY:` comment. The rest of the crate sees small, typed, safe functions. Keeping them
//! here makes the part of the crate that can do harm small enough to read in one sitting.

use std::io;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{self, Signal};
use nix::unistd::{self, Pid};

use crate::Pgid;

pub(crate) mod lifeline;
pub(crate) mod supervisor;

// The backend, chosen once (`build.rs` sets `pgroup_linux`): the Linux one (pidfds, /proc,
// and on x86_64 and aarch64 the supervised tiers), or the portable one (macOS, FreeBSD,
// and Linux under `--cfg pgroup_portable`). Both offer the same functions.
#[cfg_attr(pgroup_linux, path = "linux/mod.rs")]
#[cfg_attr(not(pgroup_linux), path = "portable/mod.rs")]
mod os;
pub(crate) use os::*;

/// Whether this build uses the portable backend (not Linux, or `--cfg pgroup_portable`).
pub(crate) const PORTABLE: bool = cfg!(not(pgroup_linux));

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

/// `waitid(idtype, id, WEXITED | WNOWAIT | WNOHANG | flags)`: the exit status of the child
/// it names, without reaping it; `Ok(None)` while it runs; `ECHILD` when it is not our
/// unreaped child (someone else reaped it, or it never was ours). The one `waitid` read of
/// the crate: teardown's pinning checks, the portable backend's exit watch, and the
/// lifeline's handler (it allocates nothing and touches no lock: async-signal-safe).
pub(crate) fn waitid_peek(
    idtype: libc::idtype_t,
    id: libc::id_t,
    flags: libc::c_int,
) -> Result<Option<ExitStatus>, Errno> {
    const CLD_EXITED: libc::c_int = 1;
    const CLD_KILLED: libc::c_int = 2;
    const CLD_DUMPED: libc::c_int = 3;
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value (plain integers and pointers that
        // are never dereferenced here).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid(2) writes one siginfo_t into `info`, which lives on our stack for
        // the call; WNOWAIT leaves the child unreaped.
        let ret = unsafe {
            libc::waitid(
                idtype,
                id,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG | flags,
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
        return Ok(match info.si_code {
            CLD_EXITED => Some(ExitStatus::from_raw((status & 0xff) << 8)),
            CLD_KILLED => Some(ExitStatus::from_raw(status & 0x7f)),
            CLD_DUMPED => Some(ExitStatus::from_raw((status & 0x7f) | 0x80)),
            // Stopped or continued: not an exit (WEXITED alone does not report these).
            _ => None,
        });
    }
}

/// What the guard's ancestor rule reads of one process: its parent, its group, and whether
/// it leads its session (always `false` where the reader cannot tell).
pub(crate) struct AncestorInfo {
    pub(crate) ppid: i32,
    pub(crate) pgid: i32,
    pub(crate) session_leader: bool,
}

/// A read of the process table that failed: what was read, and the errno (0 for none). The
/// guard refuses on it (fails closed).
#[derive(Debug)]
pub(crate) struct Unreadable {
    pub(crate) what: &'static str,
    pub(crate) errno: i32,
}

/// Checks that the pids the backend's reader gives are the caller's: on Linux, /proc may
/// belong to another PID namespace, whose `/proc/self` is then not the caller's pid `me`.
/// Elsewhere there is one namespace of pids.
pub(crate) fn check_reader(me: i32) -> Result<(), Unreadable> {
    #[cfg(target_os = "linux")]
    let sees = procfs::process::Process::myself()
        .map(|own| own.pid == me)
        .map_err(proc_errno);
    #[cfg(not(target_os = "linux"))]
    let sees: Result<bool, Errno> = Ok(me == me);
    match sees {
        Ok(true) => Ok(()),
        Ok(false) => Err(Unreadable {
            what: "ancestors: /proc belongs to another PID namespace",
            errno: 0,
        }),
        Err(e) => Err(Unreadable {
            what: "the process table (is /proc mounted?)",
            errno: e as i32,
        }),
    }
}

/// The errno a `procfs` error stands for.
#[cfg(target_os = "linux")]
pub(crate) fn proc_errno(e: procfs::ProcError) -> Errno {
    match e {
        procfs::ProcError::NotFound(_) => Errno::ESRCH,
        procfs::ProcError::PermissionDenied(_) => Errno::EACCES,
        _ => Errno::EIO,
    }
}

#[cfg(target_os = "linux")]
/// The innermost pid (`NSpid`'s last) of the process `pid` of this namespace.
pub(crate) fn innermost_pid(pid: u32) -> Option<i32> {
    let pid = i32::try_from(pid).ok()?;
    procfs::process::Process::new(pid)
        .and_then(|p| p.status())
        .ok()
        .and_then(|s| s.nspid)
        .and_then(|ids| ids.last().copied())
}

/// `(pid in the namespace, pid here)` of every process under the namespace's `init` (every
/// process of a PID namespace descends from its init: orphans are re-parented to it). A
/// bounded walk of /proc's `children` lists, so its cost grows with the namespace, not with
/// the machine. Processes that exit meanwhile are skipped.
pub(crate) fn namespace_pids(init: u32) -> Vec<(u32, u32)> {
    const MAX: usize = 65_536;
    let mut found = Vec::new();
    walk_descendants(init, |child| {
        if found.len() >= MAX {
            return ControlFlow::Break(());
        }
        if let Some(inner) = innermost_pid(child).and_then(|p| u32::try_from(p).ok()) {
            found.push((inner, child));
        }
        ControlFlow::Continue(true)
    });
    found
}

#[cfg(target_os = "linux")]
/// Calls `visit` on every process below `root`, found through
/// `/proc/<pid>/task/<tid>/children`, so the cost grows with the tree and never with the
/// number of processes on the machine. `visit` answers whether to go on below that process,
/// or to stop the walk. Processes that exit meanwhile are skipped.
///
/// Teardown runs this before SIGTERM, so it is read directly rather than through procfs's
/// `Process::tasks`/`Task::children` (16 syscalls per process there, 8 here: the task
/// directory's open, two `getdents64` and close, then per thread an open, two reads and a
/// close). The `children` file is a list of decimal pids separated by spaces, which
/// needs no parser.
pub(crate) fn walk_descendants(root: u32, mut visit: impl FnMut(u32) -> ControlFlow<(), bool>) {
    let mut queue = vec![root];
    let mut list = Vec::new();
    while let Some(pid) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if read_children(&task.path().join("children"), &mut list).is_err() {
                continue;
            }
            let children = list
                .split(u8::is_ascii_whitespace)
                .filter_map(|pid| std::str::from_utf8(pid).ok()?.parse::<u32>().ok());
            for child in children {
                match visit(child) {
                    ControlFlow::Break(()) => return,
                    ControlFlow::Continue(true) => queue.push(child),
                    ControlFlow::Continue(false) => {}
                }
            }
        }
    }
}

/// Reads a `children` file of /proc into `list` (cleared first) with plain reads into a
/// buffer on the stack: no `fstat` or `lseek` for a size hint, which /proc cannot give.
#[cfg(target_os = "linux")]
fn read_children(path: &std::path::Path, list: &mut Vec<u8>) -> io::Result<()> {
    use std::io::Read;
    list.clear();
    let mut file = std::fs::File::open(path)?;
    let mut chunk = [0u8; 4096];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => list.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The descendants' walk needs /proc: elsewhere it finds nothing, and teardown waits for
/// the group's members instead (see `group/members.rs`).
#[cfg(not(target_os = "linux"))]
pub(crate) fn walk_descendants(_root: u32, _visit: impl FnMut(u32) -> ControlFlow<(), bool>) {}

/// Only the `Namespace` tier (Linux) asks for namespaced pids.
#[cfg(not(target_os = "linux"))]
pub(crate) fn innermost_pid(_pid: u32) -> Option<i32> {
    None
}

/// Reads an on/off environment variable: unset, `on`, `1`, `true` (any case) are on; `off`,
/// `0`, `false` (any case) are off; anything else is an error that names the variable and
/// its value.
pub(crate) fn switch(name: &str) -> Result<bool, String> {
    let Some(value) = std::env::var_os(name) else {
        return Ok(true);
    };
    let text = value.to_string_lossy().to_ascii_lowercase();
    match text.trim() {
        "" | "1" | "on" | "true" => Ok(true),
        "0" | "off" | "false" => Ok(false),
        _ => Err(format!(
            "pgroup: {name}={value:?} is not one of on, off, 1, 0, true, false (in any case)"
        )),
    }
}
