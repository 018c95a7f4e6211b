//! The protocol between the test binary and a supervisor (`supervise.rs`): the messages on
//! the status pipe and the control byte. Compiled on every backend, so that the supervised
//! tiers' code in `leader.rs` builds where the tiers are refused at spawn (the portable
//! backend).

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
/// Status message: teardown gave up at its bound; this many children were still alive.
pub(crate) const TAG_STUCK: u8 = b'T';
/// Status message: teardown is complete; the supervisor exits.
pub(crate) const TAG_DONE: u8 = b'D';
/// Control byte: the test binary has sent its final SIGKILL; kill the rest, reap, exit.
pub(crate) const CMD_TEARDOWN: u8 = b'K';

/// How long the supervisor's own teardown may take, in milliseconds: a little less than
/// [`crate::KILL_WAIT_BOUND`], within which the test binary waits for it, so that the test
/// binary hears why teardown is incomplete before it stops waiting.
pub(crate) const TEARDOWN_BOUND_MS: i64 = 4_500;
const _: () = assert!((TEARDOWN_BOUND_MS as u128) < crate::KILL_WAIT_BOUND.as_millis());
