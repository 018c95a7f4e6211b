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

/// Pidfds on the members of group `pgid` other than its `leader` that have not exited yet,
/// among the processes the backend names (see `sys::each_possible_member`). Teardown runs
/// this only once the leader and the descendants it saw have exited. A process that exits
/// during the scan is skipped; the group is checked again after `pidfd_open`, so the pidfd
/// is for a process that was a member when it was opened. Only teardown's wait uses this,
/// never a signal: a member it misses gets SIGKILL before the grace period ends, nothing
/// worse.
pub(super) fn live_members(pgid: Pgid, leader: u32) -> io::Result<Vec<sys::Pidfd>> {
    let mut found = Vec::new();
    sys::each_possible_member(pgid.as_raw(), leader, |pid| {
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
    })?;
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

/// Pidfds on the leader's descendants, found through `/proc/<pid>/task/<tid>/children`. The
/// cost grows with the size of the tree, never with the number of processes on the machine.
/// Processes that exit while we look are simply missed: the final SIGKILL to the group
/// catches those that are still members.
pub(super) fn visible_descendants(leader: u32) -> Vec<sys::Pidfd> {
    let mut found = Vec::new();
    sys::walk_descendants(leader, |child| {
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
