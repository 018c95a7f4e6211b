//! The members left in a group once its leader has exited, for teardown's wait.

use std::io;
use std::ops::ControlFlow;
use std::os::fd::AsFd;
use std::time::Duration;

use std::sync::atomic::{AtomicU8, Ordering};

use nix::errno::Errno;

use crate::{sys, Pgid};

/// Teardown tracks at most this many descendants of the leader with a pidfd of their own.
const MAX_TRACKED_DESCENDANTS: usize = 1024;

/// Teardown's search for the members left asks each pid handed out since the leader's, one
/// `getpgid` each, up to this many; beyond, listing /proc is cheaper.
#[cfg(pgroup_linux)]
const MAX_PIDS_ASKED: u32 = 1024;

/// Pidfds on the members of group `pgid` other than its `leader` that have not exited yet,
/// found by a `getpgid` per pid handed out since the leader's (up to [`MAX_PIDS_ASKED`]
/// of them; beyond, from a listing of /proc, for the processes started after the leader).
/// The cost grows with the number of pids handed out since the leader started (or, beyond
/// that bound, with the number of processes on the machine), which is why teardown runs it
/// only once the leader and the descendants it saw have exited. A number whose process exits during the scan is
/// skipped; the group is checked again after `pidfd_open`, so the pidfd is for a process
/// that was a member when it was opened. Only teardown's wait uses this, never a signal: a
/// member it misses gets SIGKILL before the grace period ends, nothing worse.
#[cfg(pgroup_linux)]
pub(super) fn live_members(pgid: Pgid, leader: u32) -> io::Result<Vec<sys::Pidfd>> {
    // Members are started after the leader, so their pids were handed out after the
    // leader's: above it, or, if the pid counter has wrapped since, at most the last pid
    // handed out. (A process older than the leader that joins its group with `setpgid` is
    // missed.) When few pids were handed out since, each is asked directly; otherwise /proc
    // is listed, and the older processes in it (most of a machine's) are skipped.
    let last = last_pid();
    let mut found = Vec::new();
    let mut consider = |pid: u32| {
        let Ok(raw) = i32::try_from(pid) else {
            return true;
        };
        if sys::getpgid(raw) != Ok(pgid.as_raw()) {
            return true;
        }
        let Ok(fd) = sys::pidfd_open(pid) else {
            return true;
        };
        if sys::getpgid(raw) == Ok(pgid.as_raw()) {
            found.push(fd);
        }
        found.len() < MAX_TRACKED_DESCENDANTS
    };
    match last {
        Some(last) if last >= leader && last - leader <= MAX_PIDS_ASKED => {
            for pid in leader + 1..=last {
                if !consider(pid) {
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
                if started_after_leader(pid) && !consider(pid) {
                    break;
                }
            }
        }
    }
    without_exited(found)
}

/// `found` without the members that have exited already: zombies not yet reaped by their
/// new parent are members still, but nothing to wait for.
pub(super) fn without_exited(mut found: Vec<sys::Pidfd>) -> io::Result<Vec<sys::Pidfd>> {
    if found.is_empty() {
        return Ok(found);
    }
    let exited = sys::poll_readable(
        &found.iter().map(AsFd::as_fd).collect::<Vec<_>>(),
        Some(Duration::ZERO),
    )?;
    let mut exited = exited.into_iter();
    found.retain(|_| !exited.next().unwrap_or(false));
    Ok(found)
}

/// [`live_members`] where there is no /proc: the group's members by the platform's reader
/// (`sys::group_members`), each watched by the portable backend's exit notification.
#[cfg(not(pgroup_linux))]
pub(super) fn live_members(pgid: Pgid, leader: u32) -> io::Result<Vec<sys::Pidfd>> {
    let mut found = Vec::new();
    for pid in sys::group_members(pgid.as_raw())? {
        if pid == leader || found.len() >= MAX_TRACKED_DESCENDANTS {
            continue;
        }
        let Ok(fd) = sys::pidfd_open(pid) else {
            continue;
        };
        found.push(fd);
    }
    without_exited(found)
}

/// The last pid handed out in this PID namespace (`/proc/sys/kernel/ns_last_pid`), with one
/// open, one read and a close: a number and a newline always fit the buffer, so no second
/// read (nor `std::fs::read_to_string`'s `statx` for a size hint) is needed.
#[cfg(pgroup_linux)]
pub(super) fn last_pid() -> Option<u32> {
    use std::io::Read;
    let mut buf = [0u8; 32];
    let n = std::fs::File::open("/proc/sys/kernel/ns_last_pid")
        .and_then(|mut f| f.read(&mut buf))
        .ok()?;
    let text = std::str::from_utf8(buf.get(..n)?).ok()?;
    // A complete reading ends with its newline.
    text.strip_suffix('\n')?.parse().ok()
}

/// Pidfds on the leader's descendants, found through `/proc/<pid>/task/<tid>/children`. The
/// cost grows with the size of the tree, never with the number of processes on the machine.
/// Processes that exit while we look are simply missed: the final SIGKILL to the group
/// catches those that are still members.
pub(super) fn visible_descendants(leader: u32) -> Vec<sys::Pidfd> {
    let mut found = Vec::new();
    crate::leader::walk_descendants(leader, |child| {
        if found.len() >= MAX_TRACKED_DESCENDANTS {
            return ControlFlow::Break(());
        }
        let Ok(fd) = sys::pidfd_open(child) else {
            return ControlFlow::Continue(false);
        };
        found.push(fd);
        ControlFlow::Continue(true)
    });
    found
}

/// Whether this kernel has `PIDFD_SIGNAL_PROCESS_GROUP` (Linux 6.9), asked once with signal 0
/// on `pidfd`: `EINVAL` says the flag is unknown; `ESRCH` and success both say it is known.
pub(super) fn pidfd_group_signal_supported(pidfd: &sys::Pidfd) -> bool {
    const UNKNOWN: u8 = 0;
    const YES: u8 = 1;
    const NO: u8 = 2;
    static SUPPORT: AtomicU8 = AtomicU8::new(UNKNOWN);
    match SUPPORT.load(Ordering::Relaxed) {
        YES => true,
        NO => false,
        _ => {
            let answer = match sys::pidfd_send_signal(pidfd, None, true) {
                Err(Errno::EINVAL | Errno::ENOSYS) => NO,
                _ => YES,
            };
            SUPPORT.store(answer, Ordering::Relaxed);
            answer == YES
        }
    }
}
