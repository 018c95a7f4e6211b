//! Captured output and readiness: the sync core that the blocking methods of
//! [`SpawnedGroup`](crate::SpawnedGroup) use, and that the async front end uses too.
//!
//! # Design (for the blocking and the async forms alike)
//!
//! With [`Builder::capture_output`](crate::Builder::capture_output), the leader's stdout and
//! stderr are pipes read by one thread per group ([`Reader`]). It polls both pipes, the
//! leader's pidfd and a stop pipe, reads one chunk of at most [`READ_CHUNK`] bytes from each
//! readable pipe into the one buffer it owns, and appends the chunk to that stream's [`Tail`]
//! under the lock: the tail keeps the last [`CAPTURE_LIMIT`] bytes of the stream, in a buffer
//! of that size allocated once, whatever the child writes. The lock is held for one chunk's
//! copy, never across a read, so the reader keeps pace with the pipe and the waits and
//! [`captured`](crate::SpawnedGroup::captured) are never held up by a flood. After each
//! chunk it counts a change and wakes every waiter: the condvar for blocking waits, and every
//! registered [`Waker`] for async ones. When the leader's pidfd becomes readable it reads
//! what the pipes hold (so a line printed right before the exit is seen), but no more than a
//! pipe can hold, so a process that goes on writing cannot keep it there; then it marks the
//! leader as exited.
//!
//! The reader does no work per byte or per line: lines are found by the waits, in a copy.
//! A wait for a line keeps a [`LineCursor`]: the stream offset of the next line it looks at,
//! starting at 0. Each time the tail changed, it copies the bytes from its offset on (at
//! most [`CAPTURE_LIMIT`]) under the lock, then splits and matches them without it: so a
//! line printed before the call is found, and two calls with the same predicate return the
//! same line. Lines end at `\n`, `\r\n` or a lone `\r` (a progress bar's updates), as
//! universal newlines do. A line whose start was dropped from the tail is handed out with
//! the marker `[… N bytes cut]` in front (see [`CAPTURE_LIMIT`]); lines that scrolled out of
//! the tail entirely before the wait looked are not seen. [`Capture::wait_for_line`] (blocking) and
//! [`Capture::poll_line`] (async) share that step. Errors are built by [`NotReady`], which
//! carries the reason, the leader's exit status and both tails.
//!
//! # Layout
//!
//! - this module: the state the reader and the waits share, [`Capture`] (its waits) and
//!   [`LineCursor`];
//! - `tail`: one stream's [`Tail`], its decoding as text, and the search for line breaks;
//! - `reader`: the [`Reader`] thread;
//! - `not_ready`: [`NotReady`], and the text of exit statuses and tails in every error.

mod not_ready;
mod reader;
mod tail;

use std::borrow::Cow;
use std::fmt;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::deadline::time_left;
use tail::{decode, find_line_break, offset, Tail};

pub(crate) use not_ready::{failure_report, write_tails, StatusText};
pub use not_ready::{NotReady, NotReadyReason};
pub(crate) use reader::{read_pipe, Reader};

/// How much of each captured stream is kept: its last 64 KiB.
///
/// Nothing the capture hands out is longer, marker included. A tail that lost its
/// beginning starts with `[… N bytes cut]`, `N` being how many bytes of the stream it does
/// not show (as [`Teardown::stdout_dropped`](crate::Teardown::stdout_dropped) and
/// `stderr_dropped` report); a line that lost its beginning is handed to the waits with the
/// same marker, `N` counting its own bytes. Memory is bounded the same way: the tails and one
/// read buffer per group, whatever the child writes.
///
/// # Examples
///
/// ```
/// assert_eq!(pgroup::CAPTURE_LIMIT, 64 * 1024);
/// ```
pub const CAPTURE_LIMIT: usize = 64 * 1024;

/// The reader's one buffer: what it reads from a pipe at a time.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// What a pipe can hold at most (Linux's default `/proc/sys/fs/pipe-max-size`): when a
/// writer is gone, everything it wrote has been read once this much more was read.
pub(crate) const PIPE_MAX: usize = 1024 * 1024;

/// How long the pipes of a group are read after its leader was reaped, until they reach end
/// of file: only a process that left the group and still holds them makes a teardown or a
/// [`Run`](crate::Run) wait that long.
pub(crate) const CAPTURE_DRAIN_BOUND: Duration = Duration::from_millis(500);

/// One of the leader's output streams.
///
/// # Examples
///
/// ```
/// assert_eq!(pgroup::Stream::Stderr.to_string(), "stderr");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        })
    }
}

#[derive(Default)]
struct State {
    stdout: Tail,
    stderr: Tail,
    leader_exited: bool,
    /// How many changes there were: a wait that has looked at change `n` waits for `n + 1`.
    changes: u64,
    wakers: Vec<Waker>,
}

impl State {
    fn tail(&self, stream: Stream) -> &Tail {
        match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        }
    }

    fn tail_mut(&mut self, stream: Stream) -> &mut Tail {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }
}

/// Why no line can come any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The stream reached end of file (every writer closed it).
    StreamClosed,
    /// The leader exited (its output up to its exit has been read).
    LeaderExited,
    /// The stream is not captured.
    NotCaptured,
}

/// What a wait for a line ends with: the line, or why none came (`None`: the deadline).
pub(crate) type LineResult = Result<String, Option<Ended>>;

/// A wait's place in one stream, and its copy of the bytes from there on.
pub(crate) struct LineCursor {
    stream: Stream,
    /// The stream offset of the next line to look at.
    next: u64,
    /// The change the copy was taken at (`None`: no copy yet).
    seen: Option<u64>,
    /// The stream's bytes from `copy_start` on, as the tail held them.
    copy: Vec<u8>,
    copy_start: u64,
    /// How many bytes of the copy's first line the tail no longer held.
    cut: u64,
    /// Where in `copy` the next line begins.
    at: usize,
    /// The stream had reached end of file when the copy was taken: its last line counts
    /// without a line end.
    ended: bool,
    /// The leader had exited when the copy was taken: everything it wrote is in the copy.
    leader_exited: bool,
}

impl LineCursor {
    pub(crate) fn new(stream: Stream) -> LineCursor {
        LineCursor {
            stream,
            next: 0,
            seen: None,
            copy: Vec::new(),
            copy_start: 0,
            cut: 0,
            at: 0,
            ended: false,
            leader_exited: false,
        }
    }

    /// Copies what the tail holds from the cursor on (called under the lock).
    fn take_copy(&mut self, state: &State) -> Result<(), Ended> {
        let tail = state.tail(self.stream);
        if !tail.captured {
            return Err(Ended::NotCaptured);
        }
        self.seen = Some(state.changes);
        let from = self.next.max(tail.start);
        let skip = usize::try_from(from - tail.start)
            .unwrap_or(usize::MAX)
            .min(tail.bytes.len());
        self.copy.clear();
        self.copy.extend_from_slice(&tail.bytes[skip..]);
        self.copy_start = tail.start + offset(skip);
        self.cut = if skip == 0 { tail.cut() } else { 0 };
        self.at = 0;
        self.ended = tail.ended;
        self.leader_exited = state.leader_exited;
        Ok(())
    }

    /// The next complete line of the copy, without its line end, a cut one marked. A `\r`
    /// at the very end of the copy waits for the next byte (it may be the first half of
    /// `\r\n`), unless the stream has ended.
    fn next_line(&mut self) -> Option<Cow<'_, str>> {
        let begin = self.at;
        let rest = &self.copy[begin..];
        if rest.is_empty() {
            return None;
        }
        let (len, advance) = match find_line_break(rest) {
            Some(at) if rest[at] == b'\n' => (at, at + 1),
            Some(at) => match rest.get(at + 1) {
                Some(b'\n') => (at, at + 2),
                Some(_) => (at, at + 1),
                None if self.ended => (at, at + 1),
                None => return None,
            },
            None if self.ended => (rest.len(), rest.len()),
            None => return None,
        };
        self.at = begin + advance;
        self.next = self.copy_start + offset(self.at);
        let cut = if begin == 0 { self.cut } else { 0 };
        Some(decode(cut, &self.copy[begin..begin + len]).0)
    }

    /// Hands the copy's lines to `predicate`: the line that matches, or why the wait is
    /// over (`Err(None)`: `passed` says the deadline has passed; it is asked every 256
    /// lines and at the end), or `None` to wait for the next change.
    fn search(
        &mut self,
        predicate: &mut dyn FnMut(&str) -> bool,
        passed: &dyn Fn() -> bool,
    ) -> Option<LineResult> {
        let mut looked: u32 = 0;
        while let Some(line) = self.next_line() {
            if predicate(&line) {
                return Some(Ok(line.into_owned()));
            }
            looked = looked.wrapping_add(1);
            if looked % 256 == 0 && passed() {
                return Some(Err(None));
            }
        }
        if self.ended {
            Some(Err(Some(Ended::StreamClosed)))
        } else if self.leader_exited {
            Some(Err(Some(Ended::LeaderExited)))
        } else if passed() {
            Some(Err(None))
        } else {
            None
        }
    }
}

/// The captured output of one group, shared by its reader thread and its waiters.
#[derive(Default)]
pub(crate) struct Capture {
    state: Mutex<State>,
    changed: Condvar,
}

impl Capture {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, locked once `ready` holds of it (woken by each change), or `None` when
    /// `deadline` passes first (`None` deadline: no bound).
    fn lock_when(
        &self,
        deadline: Option<Instant>,
        ready: impl Fn(&State) -> bool,
    ) -> Option<MutexGuard<'_, State>> {
        let mut state = self.lock();
        while !ready(&state) {
            state = match time_left(deadline)? {
                Some(left) => {
                    self.changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
        Some(state)
    }

    /// Counts a change, releases the lock and wakes every waiter.
    fn notify(&self, mut state: MutexGuard<'_, State>) {
        state.changes = state.changes.wrapping_add(1);
        let wakers = std::mem::take(&mut state.wakers);
        drop(state);
        self.changed.notify_all();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Blocks until a line of `stream` matches `predicate` (looking at every line kept, then
    /// at new ones), no line can come any more, or `deadline` passes (`Err(None)`).
    pub(crate) fn wait_for_line(
        &self,
        stream: Stream,
        deadline: Option<Instant>,
        predicate: &mut dyn FnMut(&str) -> bool,
    ) -> LineResult {
        let mut cursor = LineCursor::new(stream);
        let passed = || time_left(deadline).is_none();
        loop {
            {
                let changed = |state: &State| cursor.seen != Some(state.changes);
                let Some(state) = self.lock_when(deadline, changed) else {
                    return Err(None);
                };
                cursor.take_copy(&state).map_err(Some)?;
            }
            // The predicate runs without the lock.
            if let Some(result) = cursor.search(predicate, &passed) {
                return result;
            }
        }
    }

    /// The async form's step, called from `poll`: looks at what changed since the cursor's
    /// last look. `Pending` registers `waker` for the next change; after a look that found
    /// nothing it wakes at once, so that the task yields to the runtime between two copies
    /// (its timers run) and comes back. `passed` says whether the deadline has passed.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // the async front end's
    pub(crate) fn poll_line(
        &self,
        cursor: &mut LineCursor,
        waker: &Waker,
        predicate: &mut dyn FnMut(&str) -> bool,
        passed: &dyn Fn() -> bool,
    ) -> Poll<LineResult> {
        {
            let mut state = self.lock();
            if cursor.seen == Some(state.changes) {
                if !state.wakers.iter().any(|w| w.will_wake(waker)) {
                    state.wakers.push(waker.clone());
                }
                return Poll::Pending;
            }
            if let Err(ended) = cursor.take_copy(&state) {
                return Poll::Ready(Err(Some(ended)));
            }
        }
        match cursor.search(predicate, passed) {
            Some(result) => Poll::Ready(result),
            None => {
                waker.wake_by_ref();
                Poll::Pending
            }
        }
    }

    /// Waits until the reader has seen the leader exit (and so has read what the leader
    /// wrote before), or every stream ended, or `deadline` passes.
    pub(crate) fn await_leader_exit(&self, deadline: Instant) {
        self.lock_when(Some(deadline), |state| {
            state.leader_exited || Self::all_ended(state)
        });
    }

    /// The tail of `stream` (`None` if it is not captured).
    pub(crate) fn text(&self, stream: Stream) -> Option<String> {
        let state = self.lock();
        let tail = state.tail(stream);
        tail.captured.then(|| tail.text())
    }

    /// How many bytes of `stream` its tail ([`Capture::text`]) does not show.
    pub(crate) fn dropped(&self, stream: Stream) -> u64 {
        self.lock().tail(stream).dropped()
    }

    /// Whether every captured stream has reached end of file.
    fn all_ended(state: &State) -> bool {
        [&state.stdout, &state.stderr]
            .iter()
            .all(|t| !t.captured || t.ended)
    }
}

#[cfg(test)]
mod tests {
    use super::tail::tests::split_marker;
    use super::*;

    fn lines_of(capture: &Capture, stream: Stream) -> Vec<String> {
        let mut cursor = LineCursor::new(stream);
        let mut lines = Vec::new();
        let state = capture.lock();
        cursor.take_copy(&state).expect("captured");
        drop(state);
        while let Some(line) = cursor.next_line() {
            lines.push(line.into_owned());
        }
        lines
    }

    fn captured_stdout() -> Capture {
        let capture = Capture::default();
        capture.lock().stdout = Tail::captured();
        capture
    }

    fn push(capture: &Capture, bytes: &[u8]) {
        let mut state = capture.lock();
        state.stdout.push(bytes);
        capture.notify(state);
    }

    #[test]
    fn line_ends_are_lf_crlf_and_a_lone_cr() {
        let capture = captured_stdout();
        push(
            &capture,
            b"progress 1%\rprogress 2%\rFATAL: x\r\nnext\npartial\r",
        );
        assert_eq!(
            lines_of(&capture, Stream::Stdout),
            ["progress 1%", "progress 2%", "FATAL: x", "next"],
            "a \\r at the end may be half of \\r\\n: it waits"
        );
        capture.lock().stdout.ended = true;
        assert_eq!(
            lines_of(&capture, Stream::Stdout)
                .last()
                .map(String::as_str),
            Some("partial")
        );
    }

    #[test]
    fn a_cut_line_is_marked_and_the_next_one_found() {
        let capture = captured_stdout();
        push(&capture, &vec![b'x'; 70_000]);
        push(&capture, b"\nREADY\n");
        let lines = lines_of(&capture, Stream::Stdout);
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0].len(),
            CAPTURE_LIMIT,
            "at most the limit, marker included"
        );
        let (cut, kept) = split_marker(&lines[0]);
        assert_eq!(cut + offset(kept.len()), 70_000);
        assert!(kept.bytes().all(|b| b == b'x'));
        assert_eq!(lines[1], "READY");
        // A character cut in two is not shown as half a character.
        let capture = captured_stdout();
        let mut bytes = "é".repeat(CAPTURE_LIMIT / 2).into_bytes();
        bytes.push(b'\n');
        push(&capture, &bytes);
        let text = capture.text(Stream::Stdout).expect("captured");
        assert!(text.starts_with("[… 20 bytes cut]éé"), "{}", &text[..30]);
        assert_eq!(capture.dropped(Stream::Stdout), 20);
        // Invalid UTF-8 decodes to three bytes a byte: the text still fits the limit, and
        // the marker counts what it leaves out.
        let capture = captured_stdout();
        push(&capture, &vec![0xFF; CAPTURE_LIMIT]);
        let text = capture.text(Stream::Stdout).expect("captured");
        assert!(text.len() <= CAPTURE_LIMIT, "{}", text.len());
        let (cut, kept) = split_marker(&text);
        assert_eq!(cut, capture.dropped(Stream::Stdout));
        assert_eq!(cut + offset(kept.chars().count()), offset(CAPTURE_LIMIT));
        capture.lock().stdout.ended = true;
        let lines = lines_of(&capture, Stream::Stdout);
        assert!(lines.len() == 1 && lines[0].len() <= CAPTURE_LIMIT);
        // Whole, valid, short: as it is.
        assert!(matches!(decode(0, b"ready"), (Cow::Borrowed("ready"), 0)));
    }

    /// A stream that never pauses (a new line arrives while each one is looked at) still
    /// ends the wait at its timeout. Here the predicate writes the next line itself, and
    /// gives in after 100,000 lines: a wait that only checks its deadline when no line is
    /// pending would return that line instead of timing out.
    #[test]
    fn a_chatty_stream_does_not_outlast_the_timeout() {
        let capture = captured_stdout();
        push(&capture, b"line 0\n");
        let mut seen = 0;
        let deadline = Instant::now();
        let waited = capture.wait_for_line(Stream::Stdout, Some(deadline), &mut |_| {
            seen += 1;
            push(&capture, format!("line {seen}\n").as_bytes());
            seen >= 100_000
        });
        assert_eq!(waited, Err(None), "after {seen} lines");
    }

    #[test]
    fn every_wait_looks_at_the_whole_tail_once() {
        let capture = captured_stdout();
        push(&capture, b"a\r\nb\n");
        let mut cursor = LineCursor::new(Stream::Stdout);
        let waker = Waker::noop();
        let mut seen = Vec::new();
        let poll = capture.poll_line(
            &mut cursor,
            waker,
            &mut |l| {
                seen.push(l.to_owned());
                false
            },
            &|| false,
        );
        assert!(poll.is_pending());
        assert_eq!(seen, ["a", "b"]);
        push(&capture, b"c\n");
        let poll = capture.poll_line(&mut cursor, waker, &mut |l| l == "c", &|| false);
        assert_eq!(poll, Poll::Ready(Ok("c".to_owned())));
        assert_eq!(
            capture.wait_for_line(Stream::Stderr, None, &mut |_| true),
            Err(Some(Ended::NotCaptured))
        );
    }
}
