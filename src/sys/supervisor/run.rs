//! The supervisor of the `Supervised` and `Namespace` containment tiers: the leader's
//! parent, a child subreaper (or init of the group's PID namespace), that reaps orphans while
//! the group lives and kills and reaps everything at teardown or when the test binary dies.
//!
//! Shared by the supervisor program (`main.rs`), which the library executes from memory,
//! and the library itself, whose fallback runs this in a forked copy of the test binary.
//! Either way: `core` only, the raw calls of `raw/`, data on the stack and in one mapping
//! of its own, no allocation, no lock, no panic.
//!
//! # What it does not trust
//!
//! It inherits whatever signal state its spawner had: SIGCHLD ignored (the kernel would
//! reap the leader at once: the spawner sets it to its default before the leader exists),
//! SIGALRM ignored, a blocked mask. It blocks every signal for good and reads SIGCHLD
//! through a `signalfd`: SIGTERM, SIGINT, SIGHUP and job control stay pending forever. It
//! uses no signal as a timer: every wait is a `poll` with a timeout computed from a
//! `CLOCK_MONOTONIC` deadline, which works the same in PID 1 of a namespace. It holds none of
//! the test binary's descriptors but its two own (stdout and stderr of a test run among
//! them would keep `cargo test | tee` waiting), and its working directory is `/`.
//!
//! # Pinning
//!
//! The supervisor never reaps the leader before [`CMD_TEARDOWN`] (or the test binary's
//! death), so the leader's zombie keeps the group id pinned for the test binary's signals.
//! Every other child (orphans re-parented to it) is reaped as soon as it exits, by pid. Every
//! pid it signals is one of its own unreaped children at that moment, so neither that number
//! nor the group id equal to it can have been recycled.

use core::ptr;

use super::protocol::{
    CMD_TEARDOWN, COMM, EXIT_DONE, EXIT_FAILED, EXIT_STUCK, MSG_LEN, TAG_DONE, TAG_ESCAPEE,
    TAG_FAILED, TAG_STATUS, TAG_STUCK, TEARDOWN_BOUND_MS,
};
use super::raw::{self, PollFd, SigInfo};

/// The leader's command name until it execs (the forked supervisor only). A name set by
/// exec is a file name and can never contain `/`, so a leader that still has this name when
/// it exits never exec'd.
pub(crate) const EXEC_MARKER: &[u8] = b"pgroup/preexec";

/// How long teardown waits for the leader to die of the test binary's SIGKILL before it
/// looks for what else is left (see [`teardown`]).
const LEADER_FIRST_MS: i64 = 50;

/// Pids below this are tracked in the teardown's bitmap (the kernel's `PID_MAX_LIMIT`).
const PID_BITS: usize = 1 << 22;

/// What the supervisor is given.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Args {
    /// The socket to the test binary: commands in, records out.
    pub channel: i32,
    /// A pidfd on the test binary, which becomes readable when it has exited.
    pub parent: i32,
    /// The leader: our child, not reaped before teardown.
    pub leader: i32,
    /// Whether the leader may exit before its exec (the forked supervisor, whose spawn std
    /// still waits on): then its name is checked (see [`EXEC_MARKER`]).
    pub check_exec: bool,
}

/// The supervisor's life: watch, reap orphans as they exit, report the leader's exit, and on
/// the teardown command or the test binary's death, kill and reap everything. Never returns.
pub(crate) fn run(args: Args) -> ! {
    close_all_but(&[args.channel, args.parent]);
    let _ = raw::chdir(b"/\0");
    // The spawner's parent-death signal was for the spawn only: from here on the test
    // binary's end is watched through `parent`, whatever thread spawned us.
    let _ = raw::prctl(raw::PR_SET_PDEATHSIG, 0);
    let _ = raw::prctl(raw::PR_SET_NAME, COMM.as_ptr() as usize);
    raw::signal::set_sigmask(u64::MAX);
    let sfd = raw::signal::signalfd(raw::signal::sigbit(raw::SIGCHLD)).unwrap_or(-1);
    let _ = raw::set_nonblocking(args.channel);
    let pidfd = match raw::pidfd_open(args.leader) {
        Ok(fd) => fd,
        Err(errno) => {
            send(args.channel, TAG_FAILED, errno, None);
            teardown(args, -1, sfd, true, false, true);
        }
    };
    let mut leader_exited = false;
    loop {
        let mut fds = [
            PollFd::new(args.channel, raw::POLLIN),
            PollFd::new(if leader_exited { -1 } else { pidfd }, raw::POLLIN),
            PollFd::new(args.parent, raw::POLLIN),
            PollFd::new(sfd, raw::POLLIN),
        ];
        match raw::poll(&mut fds, -1) {
            Ok(_) => {}
            Err(raw::EINTR) => continue,
            Err(_) => teardown(args, pidfd, sfd, true, leader_exited, false),
        }
        let mut reap = fds[3].revents != 0;
        if reap {
            drain(sfd);
        }
        if !leader_exited && fds[1].revents != 0 {
            leader_exited = true;
            reap = true;
            let status = peek_status(args.leader);
            if args.check_exec && never_execd(args.leader) {
                // std reports the exec error to the test binary and waits for us.
                let mut raw_status = 0;
                let _ = raw::waitpid(args.leader, &mut raw_status, 0);
                raw::exit_group(0);
            }
            send(args.channel, TAG_STATUS, status, None);
        }
        if reap {
            reap_orphans(args.leader, leader_exited);
        }
        if fds[0].revents != 0 {
            let mut byte = [0_u8; 1];
            let n = raw::read(args.channel, &mut byte);
            if matches!(n, Err(raw::EINTR | raw::EAGAIN)) {
                continue;
            }
            // End of file (every copy of the test binary's end is closed) or anything but
            // the command: the test binary is gone.
            let parent_died = !(n == Ok(1) && byte[0] == CMD_TEARDOWN);
            teardown(args, pidfd, sfd, parent_died, leader_exited, false);
        }
        if fds[2].revents != 0 {
            // The test binary exited, although some fork of it may still hold its end.
            teardown(args, pidfd, sfd, true, leader_exited, false);
        }
    }
}

/// Closes every descriptor except those in `keep` (at most four).
pub(crate) fn close_all_but(keep: &[i32]) {
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
            if let Ok(fd) = i32::try_from(fd) {
                raw::close(fd);
            }
        }
    }
}

/// Writes `value` in decimal at the start of `buf`; returns the length.
pub(crate) fn write_decimal(buf: &mut [u8], mut value: u64) -> usize {
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

/// Milliseconds on `CLOCK_MONOTONIC`, which no signal disposition or clock change affects.
fn now_ms() -> i64 {
    raw::monotonic_ms()
}

/// A `poll` timeout for the time left until `deadline` (`None`: no bound), at least 0.
fn timeout_until(deadline: Option<i64>) -> i32 {
    match deadline {
        None => -1,
        Some(deadline) => {
            i32::try_from(deadline.saturating_sub(now_ms()).clamp(0, 60_000)).unwrap_or(0)
        }
    }
}

/// Sends one record; errors (the test binary is gone) are ignored. When the socket is full,
/// this waits for room until `deadline` at most.
fn send(fd: i32, tag: u8, value: i32, deadline: Option<i64>) {
    let v = value.to_le_bytes();
    let msg: [u8; MSG_LEN] = [tag, v[0], v[1], v[2], v[3]];
    loop {
        match raw::send_with_fds(fd, &msg, &[]) {
            Ok(_) => return,
            Err(raw::EINTR) => {}
            Err(raw::EAGAIN) => {
                let timeout = timeout_until(deadline);
                if timeout == 0 {
                    return;
                }
                let mut pfd = [PollFd::new(fd, raw::POLLOUT)];
                let _ = raw::poll(&mut pfd, timeout);
            }
            Err(_) => return,
        }
    }
}

/// Reads every pending SIGCHLD out of the signalfd.
fn drain(sfd: i32) {
    if sfd < 0 {
        return;
    }
    let mut buf = [0_u8; 1024];
    while raw::read(sfd, &mut buf).is_ok_and(|n| n > 0) {}
}

/// Waits until a child changes state (SIGCHLD) or `deadline` passes.
fn wait_for_children(sfd: i32, deadline: i64) {
    let timeout = timeout_until(Some(deadline));
    let mut pfd = [PollFd::new(sfd, raw::POLLIN)];
    // Without a signalfd, look again every 10 ms.
    let (count, timeout) = if sfd < 0 {
        (0, timeout.min(10))
    } else {
        (1, timeout)
    };
    let _ = raw::poll(pfd.get_mut(..count).unwrap_or(&mut []), timeout);
    drain(sfd);
}

/// Reaps every child that has exited, except the leader, whose zombie pins the group id.
fn reap_orphans(leader: i32, leader_exited: bool) {
    if !leader_exited {
        loop {
            let mut info = SigInfo::zeroed();
            // `__WALL` here and below: also children whose exit signal is not SIGCHLD.
            let flags = raw::WEXITED | raw::WNOWAIT | raw::WNOHANG | raw::WALL;
            match raw::waitid(raw::P_ALL, 0, &mut info, flags) {
                Ok(_) => {}
                Err(raw::EINTR) => continue,
                Err(_) => return,
            }
            let pid = info.pid;
            if pid <= 0 || pid == leader {
                // Nothing (else) has exited; or the leader, which its pidfd reports.
                return;
            }
            let mut status = 0;
            if !raw::waitpid(pid, &mut status, raw::WNOHANG | raw::WALL).is_ok_and(|p| p > 0) {
                return; // cannot happen for an exited child; never spin on it
            }
        }
    }
    // Once the leader is a zombie, every `waitid(P_ALL)` finds it first: go by the list
    // of children instead.
    for_each_child(|child| {
        if child > 1 && child != leader {
            let mut status = 0;
            let _ = raw::waitpid(child, &mut status, raw::WNOHANG | raw::WALL);
        }
    });
}

/// The leader's raw wait status, without reaping it.
fn peek_status(leader: i32) -> i32 {
    let Ok(id) = u32::try_from(leader) else {
        return 0;
    };
    let mut info = SigInfo::zeroed();
    loop {
        match raw::waitid(raw::P_PID, id, &mut info, raw::WEXITED | raw::WNOWAIT) {
            Ok(_) => break,
            Err(raw::EINTR) => {}
            Err(_) => return 0,
        }
    }
    let status = info.status;
    match info.code {
        raw::CLD_EXITED => (status & 0xff) << 8,
        raw::CLD_DUMPED => status | 0x80,
        _ => status,
    }
}

/// Whether the leader exited without ever exec'ing (its name is still the marker). When
/// that cannot be read, it says yes, so that std's spawn never waits on us forever.
fn never_execd(leader: i32) -> bool {
    let mut comm = [0_u8; 32];
    match read_proc_file(leader, b"/comm\0", &mut comm) {
        Some(comm) => comm.starts_with(EXEC_MARKER),
        None => true,
    }
}

/// Reads `/proc/<pid><file>` (`file` starts with `/` and ends with NUL) into `buf`. `None`
/// if it cannot be read.
fn read_proc_file<'b>(pid: i32, file: &[u8], buf: &'b mut [u8]) -> Option<&'b [u8]> {
    let mut path = [0_u8; 64];
    let prefix = b"/proc/";
    path.get_mut(..prefix.len())?.copy_from_slice(prefix);
    let mut len = prefix.len();
    len += write_decimal(path.get_mut(len..)?, u64::try_from(pid).ok()?);
    path.get_mut(len..len + file.len())?.copy_from_slice(file);
    let fd = raw::open(
        path.get(..len + file.len())?,
        raw::O_RDONLY | raw::O_CLOEXEC,
    )
    .ok()?;
    let n = raw::read(fd, buf);
    raw::close(fd);
    buf.get(..n.ok()?)
}

/// One bit per pid, in an anonymous mapping of its own (no allocator): the children already
/// killed, so that each is signalled and reported once. Without the memory every child is
/// killed again on every pass (still correct, only slower).
struct PidSet {
    bits: *mut u8,
}

impl PidSet {
    /// An empty set; its memory is mapped on the first insertion.
    const fn new() -> PidSet {
        PidSet {
            bits: ptr::null_mut(),
        }
    }

    /// The byte and bit of `pid`, if it is tracked.
    fn slot(&self, pid: i32) -> Option<(usize, u8)> {
        let pid = usize::try_from(pid).ok().filter(|p| *p < PID_BITS)?;
        (!self.bits.is_null()).then_some((pid / 8, 1 << (pid % 8)))
    }

    /// Marks `pid`; returns whether it was marked already.
    fn insert(&mut self, pid: i32) -> bool {
        if self.bits.is_null() {
            self.bits = raw::mmap_anonymous(PID_BITS / 8).unwrap_or(ptr::null_mut());
        }
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

    fn remove(&mut self, pid: i32) {
        if let Some((byte, bit)) = self.slot(pid) {
            // SAFETY: as in `insert`.
            unsafe { *self.bits.add(byte) &= !bit };
        }
    }
}

/// Kills what is left and reaps everything, then exits ([`EXIT_DONE`], or [`EXIT_FAILED`]
/// when its set-up `failed`). With `parent_died` the test binary
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
    args: Args,
    leader_pidfd: i32,
    sfd: i32,
    parent_died: bool,
    mut status_sent: bool,
    failed: bool,
) -> ! {
    let leader = args.leader;
    let deadline = now_ms().saturating_add(TEARDOWN_BOUND_MS);
    if parent_died && leader > 1 {
        // Our unreaped child's group: never `kill(-1)`.
        let _ = raw::kill(-leader, raw::SIGKILL);
    }
    if !parent_died && !status_sent && leader_pidfd >= 0 {
        let mut fds = [PollFd::new(leader_pidfd, raw::POLLIN)];
        let until = now_ms().saturating_add(LEADER_FIRST_MS).min(deadline);
        while fds[0].revents == 0 {
            let timeout = timeout_until(Some(until));
            if timeout == 0 || raw::poll(&mut fds, timeout).is_err_and(|e| e != raw::EINTR) {
                break;
            }
        }
    }
    let mut killed = PidSet::new();
    loop {
        // Reap everything that has exited (the leader included: the test binary no
        // longer signals the group).
        loop {
            let mut status = 0;
            match raw::waitpid(-1, &mut status, raw::WNOHANG | raw::WALL) {
                Ok(pid) if pid > 0 => {
                    killed.remove(pid);
                    if pid == leader && !status_sent {
                        send(args.channel, TAG_STATUS, status, Some(deadline));
                        status_sent = true;
                    }
                }
                Err(raw::EINTR) => {}
                Err(raw::ECHILD) if failed => raw::exit_group(EXIT_FAILED),
                Err(raw::ECHILD) => {
                    send(args.channel, TAG_DONE, 0, Some(deadline));
                    raw::exit_group(EXIT_DONE)
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
                    send(args.channel, TAG_ESCAPEE, child, Some(deadline));
                }
                if group == child {
                    // It leads a group of its own (setsid, setpgid): take the group.
                    let _ = raw::kill(-child, raw::SIGKILL);
                }
            }
            let _ = raw::kill(child, raw::SIGKILL);
        });
        if now_ms() >= deadline {
            send(args.channel, TAG_STUCK, alive, None);
            raw::exit_group(EXIT_STUCK);
        }
        wait_for_children(sfd, deadline);
    }
}

/// Whether `pid` is a zombie, from `/proc/<pid>/stat` (the state follows the last `)`).
fn is_zombie(pid: i32) -> bool {
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
pub(crate) fn for_each_child(mut f: impl FnMut(i32)) {
    let Ok(fd) = raw::open(
        b"/proc/thread-self/children\0",
        raw::O_RDONLY | raw::O_CLOEXEC,
    ) else {
        return;
    };
    let mut buf = [0_u8; 4096];
    let mut current: Option<i32> = None;
    loop {
        let n = match raw::read(fd, &mut buf) {
            Err(raw::EINTR) => continue,
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in buf.get(..n).unwrap_or(&[]) {
            if b.is_ascii_digit() {
                let digit = i32::from(b - b'0');
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
