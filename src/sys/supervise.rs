//! The supervisor of the `Supervised` and `Namespace` containment tiers.
//!
//! # Why it is forked, not exec'd
//!
//! A library cannot count on an executable of its own being installed, and the test binary
//! that links it is a libtest binary whose `main` we do not control, so re-executing it as a
//! supervisor is not possible either. The supervisor is therefore forked from the test
//! binary: std forks the child for the `Command` as usual, and a `pre_exec` hook, which runs
//! in that child between fork and exec, forks once more. The grandchild returns from the
//! hook and std execs the user's program in it: it becomes the group's leader. The child
//! never returns from the hook: it becomes the supervisor. Because it was forked from a
//! multi-threaded process, everything in this file that runs in a forked process is
//! async-signal-safe: raw syscalls on stack buffers, no allocation, no locks, no panics,
//! and `_exit` at the end.
//!
//! # The protocol
//!
//! Two pipes connect the test binary and the supervisor. Through the *control* pipe the test
//! binary sends [`CMD_TEARDOWN`] once it has sent the group its final SIGKILL; its end of the
//! pipe is close-on-exec and is closed by no one else, so when the test binary dies for any
//! reason the supervisor reads end of file and tears everything down on its own. Through
//! the *status* pipe the supervisor sends 5-byte messages (a tag and an `i32`, little
//! endian): [`TAG_PID`], the leader's pid as the supervisor sees it; [`TAG_STATUS`], the
//! leader's raw wait status when it exits; [`TAG_ESCAPEE`], each process that had left the
//! group and was killed at teardown; [`TAG_FAILED`], an errno when set-up failed; and
//! [`TAG_DONE`].
//!
//! The supervisor is the leader's parent and never reaps it before [`CMD_TEARDOWN`], so the
//! leader's zombie keeps the group id pinned for the test binary's signals, exactly as in
//! the plain tier.

use std::io;
use std::os::fd::RawFd;
use std::ptr;

use nix::errno::Errno;
use nix::libc::{self, c_int, pid_t};

/// Length of one status message: a tag byte and an `i32`.
pub(crate) const MSG_LEN: usize = 5;
/// Status message: the leader's pid, as the supervisor sees it.
pub(crate) const TAG_PID: u8 = b'P';
/// Status message: the leader's raw wait status.
pub(crate) const TAG_STATUS: u8 = b'S';
/// Status message: the pid of a process that had left the group and was killed.
pub(crate) const TAG_ESCAPEE: u8 = b'E';
/// Status message: set-up failed with this errno.
pub(crate) const TAG_FAILED: u8 = b'F';
/// Status message: teardown is complete; the supervisor exits.
pub(crate) const TAG_DONE: u8 = b'D';
/// Control byte: the test binary has sent its final SIGKILL; kill the rest, reap, exit.
pub(crate) const CMD_TEARDOWN: u8 = b'K';

/// The leader's command name until it execs. A name set after exec is a file name and can
/// never contain `/`, so a leader that still has this name when it exits never exec'd.
const EXEC_MARKER: &[u8] = b"pgroup/preexec";

/// How long the supervisor's own teardown may take before `alarm` ends it.
const TEARDOWN_BOUND_SECS: u32 = 10;

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
}

fn errno() -> c_int {
    Errno::last_raw()
}

fn os_error() -> io::Error {
    io::Error::from_raw_os_error(errno())
}

/// The `pre_exec` hook. Runs in the child std forked; returns `Ok(())` only in the leader,
/// which std then execs. An `Err` before the second fork makes std's `spawn` fail with it.
pub(crate) fn hook(plan: Plan) -> io::Result<()> {
    // SAFETY (whole function): only async-signal-safe syscalls on plain values and stack
    // buffers; the descriptors in `plan` are open in this process, inherited from the parent.
    unsafe {
        libc::close(plan.control_write);
        libc::close(plan.status_read);
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
                return leader(plan);
            }
            // PID 1 of the new namespace: a /proc of its own, then the leader as PID 2.
            if mount_proc().is_err() {
                send(plan.status_write, TAG_FAILED, errno());
                libc::_exit(1);
            }
            let leader_pid = libc::fork();
            if leader_pid == 0 {
                return leader(plan);
            }
            if leader_pid < 0 {
                send(plan.status_write, TAG_FAILED, errno());
                libc::_exit(1);
            }
            supervise(plan, leader_pid);
        }
        if plan.namespace {
            // Outside the namespace: only wait for its init, holding nothing open.
            close_all_but(&[]);
            let mut status: c_int = 0;
            while libc::waitpid(pid, &mut status, 0) < 0 && errno() == libc::EINTR {}
            libc::_exit(0);
        }
        supervise(plan, pid);
    }
}

/// In the leader, before std execs it: its own group (or session), and the marker name.
fn leader(plan: Plan) -> io::Result<()> {
    // SAFETY: async-signal-safe syscalls; the name is a static, NUL-padded buffer.
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
        libc::close(plan.control_read);
        libc::close(plan.status_write);
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

/// Closes every descriptor except those in `keep`.
fn close_all_but(keep: &[RawFd]) {
    let mut sorted = [-1_i32; 2];
    for (slot, fd) in sorted.iter_mut().zip(keep) {
        *slot = *fd;
    }
    sorted[..keep.len()].sort_unstable();
    let mut first: u32 = 0;
    for fd in &sorted[..keep.len()] {
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
    let flags: libc::c_uint = 0;
    // SAFETY: close_range(2) takes plain integers; closing descriptors this process holds
    // is what the supervisor wants (nothing else runs in it).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) };
    if rc != 0 {
        // Kernels before 5.9: close one by one, up to a generous limit.
        for fd in first..last.min(65_536) {
            if let Ok(fd) = c_int::try_from(fd) {
                // SAFETY: as above.
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// Sends one status message; errors (the test binary is gone) are ignored.
fn send(fd: RawFd, tag: u8, value: i32) {
    let v = value.to_le_bytes();
    let msg: [u8; MSG_LEN] = [tag, v[0], v[1], v[2], v[3]];
    loop {
        // SAFETY: writes a stack buffer to a descriptor we own; 5 bytes are below PIPE_BUF,
        // so the write is atomic.
        let n = unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
        if n >= 0 || errno() != libc::EINTR {
            return;
        }
    }
}

/// The supervisor's life: report the leader's pid, report its exit, and on the teardown
/// command or the test binary's death, kill and reap everything. Never returns.
fn supervise(plan: Plan, leader: pid_t) -> ! {
    // SAFETY (whole function): async-signal-safe syscalls on stack data. `leader` and every
    // pid we signal are our own unreaped children at the moment we signal them, so their
    // numbers (and the group ids equal to them) cannot have been recycled.
    unsafe {
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        close_all_but(&[plan.control_read, plan.status_write]);
        send(plan.status_write, TAG_PID, leader);
        let flags: libc::c_uint = 0;
        let pidfd = libc::syscall(libc::SYS_pidfd_open, leader, flags);
        let Ok(pidfd) = c_int::try_from(pidfd) else {
            send(plan.status_write, TAG_FAILED, errno());
            teardown(plan, leader, true);
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
            ];
            if libc::poll(fds.as_mut_ptr(), 2, -1) < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                teardown(plan, leader, true);
            }
            if !leader_exited && fds[1].revents != 0 {
                leader_exited = true;
                let status = peek_status(leader);
                if never_execd(leader) {
                    // std reports the exec error to the test binary and waits for us.
                    let mut raw: c_int = 0;
                    libc::waitpid(leader, &mut raw, 0);
                    libc::_exit(0);
                }
                send(plan.status_write, TAG_STATUS, status);
            }
            if fds[0].revents != 0 {
                let mut byte = [0_u8; 1];
                let n = libc::read(plan.control_read, byte.as_mut_ptr().cast(), 1);
                if n < 0 && errno() == libc::EINTR {
                    continue;
                }
                let parent_died = !(n == 1 && byte[0] == CMD_TEARDOWN);
                teardown(plan, leader, parent_died);
            }
        }
    }
}

/// The leader's raw wait status, without reaping it.
fn peek_status(leader: pid_t) -> i32 {
    let Ok(id) = libc::id_t::try_from(leader) else {
        return 0;
    };
    // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid(2).
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        while libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT) != 0 {
            if errno() != libc::EINTR {
                return 0;
            }
        }
        let status = info.si_status();
        match info.si_code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            libc::CLD_DUMPED => status | 0x80,
            _ => status,
        }
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
    path[..prefix.len()].copy_from_slice(prefix);
    let mut len = prefix.len();
    len += write_decimal(&mut path[len..], u64::try_from(pid).ok()?);
    path.get_mut(len..len + file.len())?.copy_from_slice(file);
    // SAFETY: `path` is NUL-terminated (`file` ends with NUL) and on the stack; `buf` is a
    // valid buffer of its length; the descriptor is closed before returning.
    let n = unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    let n = usize::try_from(n).ok()?;
    buf.get(..n)
}

/// Kills what is left and reaps everything, then exits. With `parent_died` the test binary
/// could not send the final SIGKILL to the group, so the supervisor does.
fn teardown(plan: Plan, leader: pid_t, parent_died: bool) -> ! {
    // SAFETY (whole function): async-signal-safe syscalls; every pid signalled is one of our
    // own unreaped children when it is signalled, so neither it nor the group id equal to it
    // can have been recycled. `alarm` bounds the whole teardown.
    unsafe {
        libc::alarm(TEARDOWN_BOUND_SECS);
        if parent_died && leader > 1 {
            libc::kill(-leader, libc::SIGKILL);
        }
        let mut children: [pid_t; 512] = [0; 512];
        // Escapees already reported: a killed process stays in the list until it is reaped.
        let mut reported: [pid_t; 1024] = [0; 1024];
        let mut reported_len = 0;
        loop {
            let n = read_children(&mut children);
            if n == 0 {
                break;
            }
            for &child in &children[..n] {
                if child <= 1 {
                    continue; // never: our children have pids above 1; but never kill(-1)
                }
                if child != leader {
                    let group = libc::getpgid(child);
                    let known = reported[..reported_len].contains(&child);
                    if group != leader && !known && !is_zombie(child) {
                        send(plan.status_write, TAG_ESCAPEE, child);
                        if reported_len < reported.len() {
                            reported[reported_len] = child;
                            reported_len += 1;
                        }
                    }
                    if group == child {
                        // It leads a group of its own (setsid, setpgid): take the group.
                        libc::kill(-child, libc::SIGKILL);
                    }
                }
                libc::kill(child, libc::SIGKILL);
            }
            // Reap one; SIGKILLed children die promptly, and the loop reads the list again.
            let mut status: c_int = 0;
            if libc::waitpid(-1, &mut status, 0) < 0 && errno() == libc::ECHILD {
                break;
            }
        }
        send(plan.status_write, TAG_DONE, 0);
        libc::_exit(0);
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

/// This process's children, from `/proc/thread-self/children` (the supervisor has one
/// thread). Returns how many were stored.
fn read_children(out: &mut [pid_t]) -> usize {
    let path = b"/proc/thread-self/children\0";
    let mut buf = [0_u8; 4096];
    // SAFETY: NUL-terminated static path; the descriptor is closed before returning.
    let n = unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return 0;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    let Ok(n) = usize::try_from(n) else {
        return 0;
    };
    let mut count = 0;
    let mut current: Option<pid_t> = None;
    for &b in &buf[..n] {
        if b.is_ascii_digit() {
            let digit = pid_t::from(b - b'0');
            current = Some(
                current
                    .unwrap_or(0)
                    .saturating_mul(10)
                    .saturating_add(digit),
            );
        } else if let Some(pid) = current.take() {
            if count < out.len() {
                out[count] = pid;
                count += 1;
            }
        }
    }
    if let Some(pid) = current {
        if count < out.len() {
            out[count] = pid;
            count += 1;
        }
    }
    count
}
