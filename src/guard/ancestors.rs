//! The guard's ancestor rule: the caller's ancestors above its parent, read from the
//! process table (/proc on Linux), cached for [`ANCESTOR_REFRESH`], their groups asked
//! afresh on every call.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Refusal;
use crate::sys;

/// The caller's ancestors above its parent, with their groups, as read from /proc.
struct AncestorCache {
    /// The caller's parent when the cache was built: a forked child, or an orphan that was
    /// re-parented, has another one, and walks its own chain.
    for_parent: i32,
    built: Instant,
    /// Each ancestor above the parent, nearest first.
    ancestors: Vec<Ancestor>,
}

/// One ancestor as read from /proc. Only its pid, and whether it led its session, are
/// trusted between readings; its group is asked afresh.
#[derive(Debug, Clone, Copy)]
struct Ancestor {
    pid: i32,
    pgid: i32,
    /// It led its session: a session leader can neither `setpgid` (EPERM) nor `setsid` (it
    /// leads a group), so its group is its pid for the rest of its life.
    session_leader: bool,
}

static ANCESTORS: Mutex<Option<AncestorCache>> = Mutex::new(None);

/// The deepest ancestor chain the guard follows before it gives up (and refuses).
const MAX_DEPTH: usize = 4096;

/// How long the guard trusts its reading of the chain of ancestors' pids before it reads
/// /proc again. Walking the chain costs a /proc read per ancestor (tens of microseconds for
/// a chain of shells, editors and multiplexers), far more than the syscalls of the other
/// rules; reading it at most this often keeps the allowed path near one microsecond plus a
/// `getpgid` per ancestor. The ancestors' groups are not cached: each call reads them anew.
///
/// # Examples
///
/// ```
/// assert_eq!(pgroup::ANCESTOR_REFRESH.as_millis(), 100);
/// ```
pub const ANCESTOR_REFRESH: Duration = Duration::from_millis(100);

pub(super) fn check_ancestors(pgid: i32, parent: i32) -> Result<(), Refusal> {
    let mut cache = ANCESTORS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(cached) = cache
        .as_ref()
        .filter(|c| c.for_parent == parent && c.built.elapsed() < ANCESTOR_REFRESH)
    {
        if live_groups_clear(&cached.ancestors, pgid) {
            return Ok(());
        }
        // A hit, or an ancestor gone: read the chain again before deciding, in case a dead
        // ancestor's number was recycled or the chain changed.
    }
    let fresh = AncestorCache {
        for_parent: parent,
        built: Instant::now(),
        ancestors: walk_ancestors(sys::getpid(), parent)?,
    };
    let hit = first_in_group(&fresh.ancestors, pgid);
    *cache = Some(fresh);
    match hit {
        Some(ancestor) => Err(Refusal::AncestorPgroup { ancestor }),
        None => Ok(()),
    }
}

/// Whether no cached ancestor is in group `pgid` *now*. An ancestor may have joined any
/// existing group of its session with `setpgid(0, G)` since the chain was read, so the
/// group of each is asked afresh with `getpgid` (one syscall each, no /proc), except for
/// session leaders, whose group is their pid for life. `false` also when an ancestor cannot
/// be asked (it died: the chain must be read again).
fn live_groups_clear(ancestors: &[Ancestor], pgid: i32) -> bool {
    ancestors.iter().all(|a| {
        a.pid != pgid && (a.session_leader || sys::getpgid(a.pid).is_ok_and(|group| group != pgid))
    })
}

/// The first ancestor whose group is `pgid`, or whose pid is `pgid`: a live process's pid
/// can name only the group that process leads, so refusing it covers an ancestor that has
/// become a group leader since the chain was read.
fn first_in_group(ancestors: &[Ancestor], pgid: i32) -> Option<i32> {
    ancestors
        .iter()
        .find(|a| a.pgid == pgid || a.pid == pgid)
        .map(|a| a.pid)
}

/// Reads the chain of ancestors above the parent with the backend's reader, checking first
/// that the reader's pids are the caller's (a /proc of another PID namespace names other
/// processes). Any process it cannot read makes the guard refuse (fail closed).
///
/// The loop is the same on every backend; only the reader differs: /proc through procfs on
/// Linux, and the portable backend's (`proc_pidinfo` on macOS, `sysctl(KERN_PROC_PID)` on
/// FreeBSD, /proc on Linux under `--cfg pgroup_portable`).
fn walk_ancestors(me: i32, parent: i32) -> Result<Vec<Ancestor>, Refusal> {
    sys::check_reader(me)?;
    let mut ancestors = Vec::new();
    // The parent's own group is the parent rule's; the chain starts above it.
    let mut next = if parent > 1 {
        sys::read_ancestor(parent)?.ppid
    } else {
        0
    };
    while next > 0 {
        if ancestors.len() >= MAX_DEPTH {
            return Err(Refusal::Unverifiable {
                what: "ancestors: the chain is deeper than the guard follows",
                errno: 0,
            });
        }
        let info = sys::read_ancestor(next)?;
        ancestors.push(Ancestor {
            pid: next,
            pgid: info.pgid,
            session_leader: info.session_leader,
        });
        next = info.ppid;
    }
    Ok(ancestors)
}
