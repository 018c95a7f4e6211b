//! The protocol between the test binary and a supervisor: records on one `SOCK_SEQPACKET`
//! socket pair (one record per message, never split or merged). Shared by the library and
//! the supervisor program.
//!
//! - From the process that spawns the leader, before it becomes the supervisor:
//!   [`TAG_SPAWNED`] with the leader's pidfd (and, when the spawn made them, its stdio pipes)
//!   passed along; or [`TAG_SPAWN_FAILED`] / [`TAG_SETUP_FAILED`] and nothing more.
//! - From the supervisor, 5-byte records (a tag and an `i32`, little endian):
//!   [`TAG_STATUS`], the leader's raw wait status when it exits; [`TAG_ESCAPEE`], each
//!   process that had left the group and was killed at teardown; [`TAG_STUCK`], the number
//!   of processes that did not die within the teardown bound; [`TAG_FAILED`], an errno when
//!   its own set-up failed (it has then killed and reaped the leader); [`TAG_DONE`] once
//!   everything is reaped. Then it exits, with [`EXIT_DONE`], [`EXIT_STUCK`] or
//!   [`EXIT_FAILED`]: the records tell the same where its exit status is lost (someone
//!   else reaped it).
//! - From the test binary: [`CMD_TEARDOWN`], one byte, once it has sent the group its final
//!   SIGKILL.

/// Length of one supervisor record: a tag byte and an `i32`.
pub(crate) const MSG_LEN: usize = 5;

/// The `i32` after a record's tag (0 in a record too short to have one).
pub(crate) fn value_of(record: &[u8]) -> i32 {
    match record.get(1..MSG_LEN) {
        Some(&[a, b, c, d]) => i32::from_le_bytes([a, b, c, d]),
        _ => 0,
    }
}
/// The leader was spawned: its pid as the spawner sees it (`i32`), then a byte whose bits
/// 0, 1 and 2 say which of stdin, stdout and stderr were piped; the descriptors passed are
/// the leader's pidfd, then those pipes in that order.
pub(crate) const TAG_SPAWNED: u8 = b'P';
/// std's spawn failed: the OS error number (`i32`, 0 for none), a byte for the error's
/// kind (see `spawn.rs`), then its message.
pub(crate) const TAG_SPAWN_FAILED: u8 = b'X';
/// The spawner's own set-up failed: the OS error number (`i32`), then a byte naming the
/// step (see `spawn.rs`).
pub(crate) const TAG_SETUP_FAILED: u8 = b'U';
/// The leader's raw wait status.
pub(crate) const TAG_STATUS: u8 = b'S';
/// The pid of a process that had left the group and was killed.
pub(crate) const TAG_ESCAPEE: u8 = b'E';
/// The supervisor's set-up failed with this errno; it killed and reaped the leader.
pub(crate) const TAG_FAILED: u8 = b'F';
/// Teardown gave up at its bound; this many children were still alive.
pub(crate) const TAG_STUCK: u8 = b'T';
/// Teardown is complete: everything the supervisor had is reaped (the `i32` is 0). Its exit
/// status, [`EXIT_DONE`], says the same.
pub(crate) const TAG_DONE: u8 = b'D';
/// The supervisor's exit code when its teardown is complete: everything it had is reaped.
pub(crate) const EXIT_DONE: i32 = 0;
/// The supervisor's exit code when its teardown gave up at its bound ([`TAG_STUCK`]).
pub(crate) const EXIT_STUCK: i32 = 1;
/// The supervisor's exit code when its own set-up failed ([`TAG_FAILED`]).
pub(crate) const EXIT_FAILED: i32 = 3;
/// From the test binary: it has sent its final SIGKILL; kill the rest, reap, exit.
pub(crate) const CMD_TEARDOWN: u8 = b'K';

/// How long the supervisor's own teardown may take, in milliseconds: a little less than
/// the library's `KILL_WAIT_BOUND` (5 s), within which the test binary waits for it, so
/// that the test binary hears why teardown is incomplete before it stops waiting.
pub(crate) const TEARDOWN_BOUND_MS: i64 = 4_500;

/// The supervisor's command name (`/proc/<pid>/comm`, what `ps` and `top` show; at most 15
/// bytes).
pub(crate) const COMM: &[u8] = b"pgroup-supervis\0";

/// `argv[0]` of the supervisor program (`ps -f` shows it, with the arguments).
pub(crate) const ARGV0: &[u8] = b"pgroup-supervisor\0";

/// The argument that makes the supervisor program write [`PROBE_OK`] to the descriptor
/// given as `channel=<fd>` and exit at once with status 0: the library runs it once to
/// learn that it can be executed here.
pub(crate) const PROBE: &[u8] = b"--probe\0";
/// What the probe writes.
pub(crate) const PROBE_OK: &[u8] = b"ok";
