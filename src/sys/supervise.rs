//! The supervisor of the `Supervised` and `Namespace` containment tiers.
//!
//! # Shared or forked
//!
//! The `Supervised` tier runs this loop in a process that shares the test binary's memory
//! (see `respawn.rs`): made with `clone(CLONE_VM)`, it runs std's `spawn` for the leader in
//! place of the blocked calling thread, then moves its thread pointer to storage of its own
//! and supervises, on a stack of its own. No page table of the test binary is copied, and
//! nothing is exec'd.
//!
//! The `Namespace` tier (and `Supervised` with `PGROUP_EXEC_SUPERVISOR=off`, or on an
//! architecture without the raw calls of `raw.rs`) forks it instead: std forks the child for
//! the `Command` as usual, and a `pre_exec` hook, which runs in that child between fork and
//! exec, forks once more. The grandchild returns from the hook and std execs the user's
//! program in it: it becomes the group's leader. The child never returns from the hook: it
//! becomes the supervisor. (A PID namespace's init must be set up before the leader is
//! forked, and `unshare(CLONE_NEWUSER)` refuses a process that shares its memory, so the
//! shared supervisor cannot do that part.) Because it was forked from a multi-threaded
//! process, everything in this file that runs in a forked process is async-signal-safe:
//! syscalls on stack buffers, no allocation, no locks, no panics, and `_exit` at the end.
//!
//! [`supervise`] and everything it calls go further, for the shared supervisor: only the
//! instruction-level calls of `raw.rs`, which touch neither `errno` nor any libc state (the
//! shared supervisor's thread-local storage is not a libc thread's), and no memory but its
//! stack and the teardown bitmap its spawner mapped (`Plan::pid_bits`).
//!
//! # What it does not trust
//!
//! The supervisor inherits the test binary's signal state, which may be anything: SIGCHLD
//! set to `SIG_IGN` (the kernel would then reap the leader at once), SIGALRM ignored,
//! handlers that make no sense outside the test binary, a blocked mask. Before its first
//! fork (or std's spawn) it sets SIGCHLD to `SIG_DFL` (the forked supervisor gives the
//! leader the inherited action back before exec, as the plain tier's leader would have it);
//! once it supervises, it blocks every signal for good and reads SIGCHLD through a
//! `signalfd`: no handler of the test binary can run in it, and SIGTERM, SIGINT, SIGHUP and
//! job control stay pending forever. It uses no signal as a timer: every wait is a `poll`
//! with a timeout computed from a `CLOCK_MONOTONIC` deadline, which works the same in PID 1
//! of a namespace and whatever the test binary ignores.
//!
//! # The protocol
//!
//! Two pipes connect the test binary and the supervisor. Through the *control* pipe the test
//! binary sends [`CMD_TEARDOWN`] once it has sent the group its final SIGKILL. The
//! supervisor also holds a pidfd on the test binary itself, so that it tears everything down
//! on its own when the test binary dies for any reason: either the control pipe reads end of
//! file or the pidfd reports the exit (a fork of the test binary that never execs keeps a
//! copy of the pipe's write end, but not the test binary alive). Through the *status* pipe
//! the supervisor sends 5-byte messages (a tag and an `i32`, little endian): [`TAG_PID`],
//! the leader's pid as the supervisor sees it; [`TAG_STATUS`], the leader's raw wait status
//! when it exits; [`TAG_ESCAPEE`], each process that had left the group and was killed at
//! teardown (once per process); [`TAG_FAILED`], an errno when set-up failed;
//! [`TAG_STUCK`], the number of processes that did not die within the teardown bound; and
//! [`TAG_DONE`].
//!
//! The supervisor is the leader's parent and never reaps it before [`CMD_TEARDOWN`], so the
//! leader's zombie keeps the group id pinned for the test binary's signals, exactly as in
//! the plain tier. Every other child (orphans re-parented to it, as a child subreaper or as
//! a namespace's init) is reaped as soon as it exits, by pid.

use std::io;
use std::os::fd::RawFd;
use std::ptr;

use nix::errno::Errno;
use nix::libc::{self, c_int, pid_t};

use super::raw;

pub(crate) use super::protocol::{
    CMD_TEARDOWN, MSG_LEN, TAG_DONE, TAG_ESCAPEE, TAG_FAILED, TAG_PID, TAG_STATUS, TAG_STUCK,
    TEARDOWN_BOUND_MS,
};

/// The leader's command name until it execs. A name set after exec is a file name and can
/// never contain `/`, so a leader that still has this name when it exits never exec'd.
const EXEC_MARKER: &[u8] = b"pgroup/preexec";

/// How long teardown waits for the leader to die of the test binary's SIGKILL before it
/// looks for what else is left (see [`teardown`]).
const LEADER_FIRST_MS: i64 = 50;

/// Pids below this are tracked in the teardown's bitmap (the kernel's `PID_MAX_LIMIT`).
pub(super) const PID_BITS: usize = 1 << 22;

/// The descriptors and choices the hook needs; all plain data, copied into the closure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// The supervisor's end of the control pipe.
    pub control_read: RawFd,
    /// The supervisor's end of the status pipe.
    pub status_write: RawFd,
    /// The test binary's ends, closed in the supervisor at once.
    pub control_write: RawFd,
    pub status_read: RawFd,
    /// Make the supervisor init of a new PID namespace.
    pub namespace: bool,
    /// Start the leader in a new session rather than only a new group.
    pub new_session: bool,
    /// Whether the leader may exit before its exec (the forked supervisor forks it, and
    /// std's spawn is still waiting for the exec's outcome): then its name is checked.
    pub check_exec: bool,
    /// The address of [`PID_BITS`] / 8 bytes of zeroed memory for the teardown's bitmap, or
    /// 0 to map it at teardown (see `PidSet::new`).
    pub pid_bits: usize,
}

fn errno() -> c_int {
    Errno::last_raw()
}

fn os_error() -> io::Error {
    io::Error::from_raw_os_error(errno())
}

/// A `sigaction` with the given handler, no flags and an empty mask.
fn action(handler: libc::sighandler_t) -> libc::sigaction {
    // SAFETY: an all-zero sigaction is a valid value (no handler, no flags, empty mask).
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler;
    act
}

/// The `pre_exec` hook. Runs in the child std forked; returns `Ok(())` only in the leader,
/// which std then execs. An `Err` before the second fork makes std's `spawn` fail with it.
pub(crate) fn hook(plan: Plan) -> io::Result<()> {
    // SAFETY (whole function): only async-signal-safe syscalls on plain values and stack
    // buffers; the descriptors in `plan` are open in this process, inherited from the parent.
    unsafe {
        libc::close(plan.control_write);
        libc::close(plan.status_read);
        // Before any fork: with SIGCHLD ignored (or SA_NOCLDWAIT) the kernel would reap the
        // leader the moment it exits, and its id would no longer be pinned.
        let mut inherited_chld = action(libc::SIG_DFL);
        let dfl = action(libc::SIG_DFL);
        if libc::sigaction(libc::SIGCHLD, &dfl, &mut inherited_chld) != 0 {
            return Err(os_error());
        }
        let test_binary = watch_parent()?;
        // Own group, so that a SIGKILL to the test binary's group (nextest, a CI runner)
        // does not also take the supervisor, whose job is to outlive exactly that.
        if libc::setpgid(0, 0) != 0 {
            return Err(os_error());
        }
        if plan.namespace {
            enter_namespaces()?;
        } else if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
            return Err(os_error());
        }
        let pid = libc::fork();
        if pid < 0 {
            return Err(os_error());
        }
        if pid == 0 {
            if !plan.namespace {
                return leader(plan, &inherited_chld, test_binary);
            }
            // PID 1 of the new namespace: a /proc of its own, then the leader as PID 2.
            if mount_proc().is_err() {
                send(plan.status_write, TAG_FAILED, errno(), None);
                libc::_exit(1);
            }
            let leader_pid = libc::fork();
            if leader_pid == 0 {
                return leader(plan, &inherited_chld, test_binary);
            }
            if leader_pid < 0 {
                send(plan.status_write, TAG_FAILED, errno(), None);
                libc::_exit(1);
            }
            supervise(plan, leader_pid, test_binary);
        }
        if plan.namespace {
            // Outside the namespace: only wait for its init, holding nothing open.
            close_all_but(&[]);
            let mut status: c_int = 0;
            while libc::waitpid(pid, &mut status, 0) < 0 && errno() == libc::EINTR {}
            libc::_exit(0);
        }
        supervise(plan, pid, test_binary);
    }
}

/// A pidfd on this process's parent, the test binary. `getppid` is read again after
/// `pidfd_open`: if it changed, the parent died in between and the descriptor may name
/// whoever inherited us, so set-up fails (nobody is left to report to anyway).
pub(super) fn watch_parent() -> io::Result<RawFd> {
    // SAFETY: getppid and pidfd_open take and return plain integers.
    unsafe {
        let parent = libc::getppid();
        let flags: libc::c_uint = 0;
        let fd = libc::syscall(libc::SYS_pidfd_open, parent, flags);
        let Ok(fd) = c_int::try_from(fd) else {
            return Err(os_error());
        };
        if fd < 0 {
            return Err(os_error());
        }
        if libc::getppid() != parent {
            libc::close(fd);
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(fd)
    }
}

/// In the leader, before std execs it: its own group (or session), the marker name, the
/// inherited SIGCHLD action back, and none of the supervisor's descriptors.
fn leader(plan: Plan, inherited_chld: &libc::sigaction, test_binary: RawFd) -> io::Result<()> {
    // SAFETY: async-signal-safe syscalls; the name is a static, NUL-padded buffer, and
    // `inherited_chld` is the action sigaction(2) returned in this process.
    unsafe {
        let ok = if plan.new_session {
            libc::setsid() >= 0
        } else {
            libc::setpgid(0, 0) == 0
        };
        if !ok {
            return Err(os_error());
        }
        let mut name = [0_u8; 16];
        name[..EXEC_MARKER.len()].copy_from_slice(EXEC_MARKER);
        libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0);
        libc::sigaction(libc::SIGCHLD, inherited_chld, ptr::null_mut());
        libc::close(plan.control_read);
        libc::close(plan.status_write);
        libc::close(test_binary);
    }
    Ok(())
}

/// New PID and mount namespaces (and a user namespace first, when not root), with mount
/// propagation made private so that the new /proc stays inside.
fn enter_namespaces() -> io::Result<()> {
    // SAFETY: async-signal-safe syscalls with static, NUL-terminated strings and stack
    // buffers; this process is single-threaded (a fresh fork), as CLONE_NEWUSER requires.
    unsafe {
        let uid = libc::geteuid();
        let gid = libc::getegid();
        let mut flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS;
        if uid != 0 {
            flags |= libc::CLONE_NEWUSER;
        }
        if libc::unshare(flags) != 0 {
            return Err(os_error());
        }
        if uid != 0 {
            write_file(b"/proc/self/setgroups\0", b"deny")?;
            let mut line = [0_u8; 32];
            let len = id_map_line(&mut line, uid);
            write_file(b"/proc/self/uid_map\0", &line[..len])?;
            let len = id_map_line(&mut line, gid);
            write_file(b"/proc/self/gid_map\0", &line[..len])?;
        }
        let root = b"/\0";
        if libc::mount(
            ptr::null(),
            root.as_ptr().cast(),
            ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            ptr::null(),
        ) != 0
        {
            return Err(os_error());
        }
    }
    Ok(())
}

/// `0 <id> 1`: map root inside to the caller's id outside.
fn id_map_line(buf: &mut [u8; 32], id: u32) -> usize {
    buf[0] = b'0';
    buf[1] = b' ';
    let mut len = 2 + write_decimal(&mut buf[2..], u64::from(id));
    for b in b" 1\n" {
        buf[len] = *b;
        len += 1;
    }
    len
}

fn mount_proc() -> io::Result<()> {
    let proc_ = b"proc\0";
    let target = b"/proc\0";
    // SAFETY: static NUL-terminated strings; mount(2) is a plain syscall.
    let rc = unsafe {
        libc::mount(
            proc_.as_ptr().cast(),
            target.as_ptr().cast(),
            proc_.as_ptr().cast(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(os_error())
    }
}

fn write_file(path: &[u8], data: &[u8]) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated; the descriptor is ours and closed before returning.
    unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let result = if n < 0 { Err(os_error()) } else { Ok(()) };
        libc::close(fd);
        result
    }
}

/// Writes `value` in decimal at the start of `buf`; returns the length.
fn write_decimal(buf: &mut [u8], mut value: u64) -> usize {
    let mut digits = [0_u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + u8::try_from(value % 10).unwrap_or(0);
        n += 1;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    let n = n.min(buf.len());
    for i in 0..n {
        buf[i] = digits[n - 1 - i];
    }
    n
}

/// Closes every descriptor except those in `keep` (at most four).
fn close_all_but(keep: &[RawFd]) {
    let mut sorted = [-1_i32; 4];
    let keep = keep.get(..keep.len().min(sorted.len())).unwrap_or(&[]);
    for (slot, fd) in sorted.iter_mut().zip(keep) {
        *slot = *fd;
    }
    let kept = sorted.get_mut(..keep.len()).unwrap_or(&mut []);
    kept.sort_unstable();
    let mut first: u32 = 0;
    for fd in kept.iter() {
        if let Ok(fd) = u32::try_from(*fd) {
            if fd > first {
                close_range(first, fd - 1);
            }
            first = fd.saturating_add(1);
        }
    }
    close_range(first, u32::MAX);
}

fn close_range(first: u32, last: u32) {
    if raw::close_range(first, last).is_err() {
        // Kernels before 5.9: close one by one, up to a generous limit.
        for fd in first..last.min(65_536) {
            if let Ok(fd) = c_int::try_from(fd) {
                raw::close(fd);
            }
        }
    }
}

/// Milliseconds on `CLOCK_MONOTONIC`, which no signal disposition or clock change affects.
fn now_ms() -> i64 {
    raw::monotonic_ms()
}

/// A `poll` timeout for the time left until `deadline` (`None`: no bound), at least 0.
fn timeout_until(deadline: Option<i64>) -> c_int {
    match deadline {
        None => -1,
        Some(deadline) => {
            c_int::try_from(deadline.saturating_sub(now_ms()).clamp(0, 60_000)).unwrap_or(0)
        }
    }
}

/// Sends one status message; errors (the test binary is gone) are ignored. The descriptor is
/// non-blocking: when the pipe is full, this waits for room until `deadline` at most.
fn send(fd: RawFd, tag: u8, value: i32, deadline: Option<i64>) {
    let v = value.to_le_bytes();
    let msg: [u8; MSG_LEN] = [tag, v[0], v[1], v[2], v[3]];
    loop {
        // 5 bytes are below PIPE_BUF, so the write is atomic: all or nothing.
        match raw::write(fd, &msg) {
            Ok(_) => return,
            Err(libc::EINTR) => {}
            Err(libc::EAGAIN) => {
                let timeout = timeout_until(deadline);
                if timeout == 0 {
                    return;
                }
                let mut pfd = [libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                }];
                let _ = raw::poll(&mut pfd, timeout);
            }
            Err(_) => return,
        }
    }
}

/// Takes over the signal state inherited from the test binary: SIGCHLD at its default
/// action (ignored, or with `SA_NOCLDWAIT`, the kernel would reap the leader), and every
/// signal blocked for good, SIGCHLD read through a `signalfd`. No handler of the test binary
/// can then run here (its code would run in this process, on this stack), and the signals
/// that would end the supervisor (SIGTERM, SIGINT, SIGHUP, job control) stay pending
/// forever; SIGKILL and SIGSTOP cannot be blocked, and a fault still kills it. Returns the
/// signalfd, or -1 if none could be made.
fn take_over_signals() -> RawFd {
    let _ = raw::sigaction(libc::SIGCHLD, Some(&raw::KernelSigaction::DFL), None);
    raw::set_sigmask(u64::MAX);
    raw::signalfd(raw::sigbit(libc::SIGCHLD)).unwrap_or(-1)
}

/// Reads every pending SIGCHLD out of the signalfd.
fn drain(sfd: RawFd) {
    if sfd < 0 {
        return;
    }
    let mut buf = [0_u8; 1024];
    while raw::read(sfd, &mut buf).is_ok_and(|n| n > 0) {}
}

/// Waits until a child changes state (SIGCHLD) or `deadline` passes.
fn wait_for_children(sfd: RawFd, deadline: i64) {
    let timeout = timeout_until(Some(deadline));
    let mut pfd = [libc::pollfd {
        fd: sfd,
        events: libc::POLLIN,
        revents: 0,
    }];
    // Without a signalfd, look again every 10 ms.
    let (count, timeout) = if sfd < 0 {
        (0, timeout.min(10))
    } else {
        (1, timeout)
    };
    let _ = raw::poll(pfd.get_mut(..count).unwrap_or(&mut []), timeout);
    drain(sfd);
}

/// The supervisor's life: report the leader's pid, reap orphans as they exit, report the
/// leader's exit, and on the teardown command or the test binary's death, kill and reap
/// everything. Never returns.
///
/// Only raw syscalls (`raw.rs`) on stack data and on `plan.pid_bits`: no `errno`, no libc
/// state, no allocation, no panic, so that it may run in the test binary's address space.
pub(super) fn supervise(plan: Plan, leader: pid_t, test_binary: RawFd) -> ! {
    // Every pid we signal is one of our own unreaped children at the moment we signal it,
    // so its number (and the group id equal to it) cannot have been recycled.
    close_all_but(&[plan.control_read, plan.status_write, test_binary]);
    let sfd = take_over_signals();
    if let Ok(flags) = raw::fcntl(plan.status_write, libc::F_GETFL, 0) {
        let nonblock = usize::try_from(libc::O_NONBLOCK).unwrap_or(0);
        let _ = raw::fcntl(plan.status_write, libc::F_SETFL, flags | nonblock);
    }
    send(plan.status_write, TAG_PID, leader, None);
    let pidfd = match raw::pidfd_open(leader) {
        Ok(fd) => fd,
        Err(errno) => {
            send(plan.status_write, TAG_FAILED, errno, None);
            teardown(plan, leader, -1, sfd, true, false);
        }
    };
    let mut leader_exited = false;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: plan.control_read,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if leader_exited { -1 } else { pidfd },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: test_binary,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sfd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        match raw::poll(&mut fds, -1) {
            Ok(_) => {}
            Err(libc::EINTR) => continue,
            Err(_) => teardown(plan, leader, pidfd, sfd, true, leader_exited),
        }
        let mut reap = fds[3].revents != 0;
        if reap {
            drain(sfd);
        }
        if !leader_exited && fds[1].revents != 0 {
            leader_exited = true;
            reap = true;
            let status = peek_status(leader);
            if plan.check_exec && never_execd(leader) {
                // std reports the exec error to the test binary and waits for us.
                let mut raw_status: c_int = 0;
                let _ = raw::waitpid(leader, &mut raw_status, 0);
                raw::exit_group(0);
            }
            send(plan.status_write, TAG_STATUS, status, None);
        }
        if reap {
            reap_orphans(leader, leader_exited);
        }
        if fds[0].revents != 0 {
            let mut byte = [0_u8; 1];
            let n = raw::read(plan.control_read, &mut byte);
            if n == Err(libc::EINTR) {
                continue;
            }
            let parent_died = !(n == Ok(1) && byte[0] == CMD_TEARDOWN);
            teardown(plan, leader, pidfd, sfd, parent_died, leader_exited);
        }
        if fds[2].revents != 0 {
            // The test binary exited, although some fork of it still holds the pipe.
            teardown(plan, leader, pidfd, sfd, true, leader_exited);
        }
    }
}

/// Reaps every child that has exited, except the leader, whose zombie pins the group id.
fn reap_orphans(leader: pid_t, leader_exited: bool) {
    // Only pids that are our children and not the leader are reaped.
    if !leader_exited {
        loop {
            // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid(2).
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // `__WALL` here and below: also children whose exit signal is not SIGCHLD.
            let flags = libc::WEXITED | libc::WNOWAIT | libc::WNOHANG | libc::__WALL;
            match raw::waitid(libc::P_ALL, 0, &mut info, flags) {
                Ok(_) => {}
                Err(libc::EINTR) => continue,
                Err(_) => return,
            }
            // SAFETY: waitid filled in the pid of a child (or left it zero).
            let pid = unsafe { info.si_pid() };
            if pid <= 0 || pid == leader {
                // Nothing (else) has exited; or the leader, which its pidfd reports.
                return;
            }
            let mut status: c_int = 0;
            if !raw::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL).is_ok_and(|p| p > 0) {
                return; // cannot happen for an exited child; never spin on it
            }
        }
    }
    // Once the leader is a zombie, every `waitid(P_ALL)` finds it first: go by the list
    // of children instead.
    for_each_child(|child| {
        if child > 1 && child != leader {
            let mut status: c_int = 0;
            let _ = raw::waitpid(child, &mut status, libc::WNOHANG | libc::__WALL);
        }
    });
}

/// The leader's raw wait status, without reaping it.
fn peek_status(leader: pid_t) -> i32 {
    let Ok(id) = libc::id_t::try_from(leader) else {
        return 0;
    };
    // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid(2).
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        match raw::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT) {
            Ok(_) => break,
            Err(libc::EINTR) => {}
            Err(_) => return 0,
        }
    }
    // SAFETY: waitid filled in a child's state change.
    let status = unsafe { info.si_status() };
    match info.si_code {
        libc::CLD_EXITED => (status & 0xff) << 8,
        libc::CLD_DUMPED => status | 0x80,
        _ => status,
    }
}

/// Whether the leader exited without ever exec'ing (its name is still the marker). When
/// that cannot be read, it says yes, so that std's spawn never waits on us forever.
fn never_execd(leader: pid_t) -> bool {
    let mut comm = [0_u8; 32];
    match read_proc_file(leader, b"/comm\0", &mut comm) {
        Some(comm) => comm.starts_with(EXEC_MARKER),
        None => true,
    }
}

/// Reads `/proc/<pid><file>` (`file` starts with `/` and ends with NUL) into `buf`, with
/// raw syscalls on the stack. `None` if it cannot be read.
fn read_proc_file<'b>(pid: pid_t, file: &[u8], buf: &'b mut [u8]) -> Option<&'b [u8]> {
    let mut path = [0_u8; 64];
    let prefix = b"/proc/";
    path.get_mut(..prefix.len())?.copy_from_slice(prefix);
    let mut len = prefix.len();
    len += write_decimal(path.get_mut(len..)?, u64::try_from(pid).ok()?);
    path.get_mut(len..len + file.len())?.copy_from_slice(file);
    let fd = raw::open(
        path.get(..len + file.len())?,
        libc::O_RDONLY | libc::O_CLOEXEC,
    )
    .ok()?;
    let n = raw::read(fd, buf);
    raw::close(fd);
    buf.get(..n.ok()?)
}

/// One bit per pid, in anonymous memory (no allocator involved): the children already
/// killed, so that each is signalled and reported once. Without the memory every child is
/// killed again on every pass (still correct, only slower).
struct PidSet {
    bits: *mut u8,
}

impl PidSet {
    /// `plan.pid_bits` if the spawner mapped it (the shared-memory supervisor, which must
    /// not map anything of its own in the test binary's address space), else a mapping of
    /// its own (a forked supervisor: it goes with the process).
    fn new(plan: &Plan) -> PidSet {
        let bits = if plan.pid_bits != 0 {
            plan.pid_bits as *mut u8
        } else {
            raw::mmap_anonymous(PID_BITS / 8).map_or(ptr::null_mut(), |p| p.cast())
        };
        PidSet { bits }
    }

    /// The byte and bit of `pid`, if it is tracked.
    fn slot(&self, pid: pid_t) -> Option<(usize, u8)> {
        let pid = usize::try_from(pid).ok().filter(|p| *p < PID_BITS)?;
        (!self.bits.is_null()).then_some((pid / 8, 1 << (pid % 8)))
    }

    /// Marks `pid`; returns whether it was marked already.
    fn insert(&mut self, pid: pid_t) -> bool {
        let Some((byte, bit)) = self.slot(pid) else {
            return false;
        };
        // SAFETY: `byte < PID_BITS / 8`, inside the mapping, which only this process uses.
        unsafe {
            let p = self.bits.add(byte);
            let was = *p & bit != 0;
            *p |= bit;
            was
        }
    }

    fn remove(&mut self, pid: pid_t) {
        if let Some((byte, bit)) = self.slot(pid) {
            // SAFETY: as in `insert`.
            unsafe { *self.bits.add(byte) &= !bit };
        }
    }
}

/// Kills what is left and reaps everything, then exits. With `parent_died` the test binary
/// could not send the final SIGKILL to the group, so the supervisor does. Bounded by
/// [`TEARDOWN_BOUND_MS`] on the monotonic clock: a child that cannot die (uninterruptible
/// sleep, a nested PID namespace whose init cannot finish) is reported with [`TAG_STUCK`],
/// and the supervisor exits without it. Unless `status_sent`, the leader's status is
/// reported when it is reaped (the test binary may send [`CMD_TEARDOWN`] right after its
/// final SIGKILL, before the leader has died).
///
/// When the test binary sent its final SIGKILL itself, the leader is about to die: the
/// supervisor waits for that first (on `leader_pidfd`, within [`LEADER_FIRST_MS`]), so that
/// in the usual case (nothing but the leader left) teardown is a reap and no scan of /proc.
fn teardown(
    plan: Plan,
    leader: pid_t,
    leader_pidfd: RawFd,
    sfd: RawFd,
    parent_died: bool,
    mut status_sent: bool,
) -> ! {
    // Every pid signalled is one of our own unreaped children when it is signalled (it was
    // listed as our child after the last reap, and only we reap our children: SIGCHLD is not
    // ignored), so neither it nor the group id equal to it can have been recycled.
    let deadline = now_ms().saturating_add(TEARDOWN_BOUND_MS);
    if parent_died && leader > 1 {
        let _ = raw::kill(-leader, libc::SIGKILL);
    }
    if !parent_died && !status_sent && leader_pidfd >= 0 {
        let mut fds = [libc::pollfd {
            fd: leader_pidfd,
            events: libc::POLLIN,
            revents: 0,
        }];
        let until = now_ms().saturating_add(LEADER_FIRST_MS).min(deadline);
        while fds[0].revents == 0 {
            let timeout = timeout_until(Some(until));
            if timeout == 0 || raw::poll(&mut fds, timeout).is_err_and(|e| e != libc::EINTR) {
                break;
            }
        }
    }
    let mut killed = PidSet::new(&plan);
    loop {
        // Reap everything that has exited (the leader included: the test binary no
        // longer signals the group).
        loop {
            let mut status: c_int = 0;
            match raw::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL) {
                Ok(pid) if pid > 0 => {
                    killed.remove(pid);
                    if pid == leader && !status_sent {
                        send(plan.status_write, TAG_STATUS, status, Some(deadline));
                        status_sent = true;
                    }
                }
                Err(libc::EINTR) => {}
                Err(libc::ECHILD) => {
                    send(plan.status_write, TAG_DONE, 0, Some(deadline));
                    raw::exit_group(0);
                }
                _ => break,
            }
        }
        let mut alive = 0_i32;
        for_each_child(|child| {
            if child <= 1 {
                return; // never: our children have pids above 1; but never kill(-1)
            }
            alive = alive.saturating_add(1);
            if killed.insert(child) {
                return; // SIGKILL is on its way
            }
            if child != leader {
                let group = raw::getpgid(child);
                if group > 0 && group != leader && !is_zombie(child) {
                    send(plan.status_write, TAG_ESCAPEE, child, Some(deadline));
                }
                if group == child {
                    // It leads a group of its own (setsid, setpgid): take the group.
                    let _ = raw::kill(-child, libc::SIGKILL);
                }
            }
            let _ = raw::kill(child, libc::SIGKILL);
        });
        if now_ms() >= deadline {
            send(plan.status_write, TAG_STUCK, alive, None);
            raw::exit_group(1);
        }
        wait_for_children(sfd, deadline);
    }
}

/// Whether `pid` is a zombie, from `/proc/<pid>/stat` (the state follows the last `)`).
fn is_zombie(pid: pid_t) -> bool {
    let mut buf = [0_u8; 512];
    let Some(stat) = read_proc_file(pid, b"/stat\0", &mut buf) else {
        return true;
    };
    match stat.iter().rposition(|b| *b == b')') {
        Some(i) => stat.get(i + 2) == Some(&b'Z'),
        None => true,
    }
}

/// Calls `f` with each child of this process, from `/proc/thread-self/children` (the
/// supervisor has one thread), read in pieces so that any number of children fits.
fn for_each_child(mut f: impl FnMut(pid_t)) {
    let Ok(fd) = raw::open(
        b"/proc/thread-self/children\0",
        libc::O_RDONLY | libc::O_CLOEXEC,
    ) else {
        return;
    };
    let mut buf = [0_u8; 4096];
    let mut current: Option<pid_t> = None;
    loop {
        let n = match raw::read(fd, &mut buf) {
            Err(libc::EINTR) => continue,
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in buf.get(..n).unwrap_or(&[]) {
            if b.is_ascii_digit() {
                let digit = pid_t::from(b - b'0');
                current = Some(
                    current
                        .unwrap_or(0)
                        .saturating_mul(10)
                        .saturating_add(digit),
                );
            } else if let Some(pid) = current.take() {
                f(pid);
            }
        }
    }
    if let Some(pid) = current {
        f(pid);
    }
    raw::close(fd);
}
