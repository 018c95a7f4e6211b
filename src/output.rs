//! Captured output and readiness: the sync core that the blocking methods of
//! [`SpawnedGroup`](crate::SpawnedGroup) use, and that an async front end can use too.
//!
//! # Design (for the blocking and the async forms alike)
//!
//! With [`Builder::capture_output`](crate::Builder::capture_output), the leader's stdout and
//! stderr are pipes read by one thread per group ([`Reader`]). It polls both pipes, the
//! leader's pidfd and a stop pipe, and appends what it reads to a [`Capture`]: per stream,
//! the complete lines and the unfinished one, bounded to the last [`CAPTURE_LIMIT`] bytes.
//! After each change it wakes every waiter: the condvar for blocking waits, and every
//! registered [`Waker`] for async ones. When the leader's pidfd becomes readable it first
//! reads what the pipes hold (so a line printed right before the exit is seen), then marks
//! the leader as exited; from then on it watches only the pipes.
//!
//! A wait for a line keeps its own cursor, a line number since the spawn, starting at 0:
//! every call looks at every line still in the tail, then at the new ones, so a line printed
//! before the call is found, and two calls with the same predicate return the same line.
//! [`Capture::next_lines`] is the one step both forms share: it hands out the lines after
//! the cursor, or says why none can come ([`Ended`]), or registers the waker and says
//! `Pending`. The blocking form waits on the condvar; an async form calls it from `poll`
//! with its context's waker. The predicate runs without any lock held. Errors are built by
//! [`NotReady`], which carries the reason, the leader's exit status and both tails.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitStatus;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::group::time_left;
use crate::sys;

/// How much of each captured stream is kept: its last 64 KiB.
///
/// # Examples
///
/// ```
/// assert_eq!(pgroup::CAPTURE_LIMIT, 64 * 1024);
/// ```
pub const CAPTURE_LIMIT: usize = 64 * 1024;

/// How much of each tail an error message or a failing test's report shows: the last 4 KiB
/// (the whole tail is in [`NotReady`] and [`Teardown`](crate::Teardown)).
const SHOWN_TAIL: usize = 4 * 1024;

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

/// The bounded tail of one stream.
#[derive(Default)]
struct Tail {
    /// Complete lines, without their `\n`.
    lines: VecDeque<Vec<u8>>,
    /// The line being written (no `\n` yet).
    partial: Vec<u8>,
    /// Bytes held: each line and its `\n`, and the partial line.
    bytes: usize,
    /// The number of the first line in `lines`, counted from the spawn.
    first_line: u64,
    /// Whether anything was dropped from the front.
    truncated: bool,
    /// Whether the stream reached end of file (or capture stopped).
    ended: bool,
    /// Whether this stream is captured at all.
    captured: bool,
}

impl Tail {
    fn push(&mut self, mut data: &[u8]) {
        while let Some(at) = data.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&data[..at]);
            self.bytes += at + 1;
            self.lines.push_back(std::mem::take(&mut self.partial));
            data = &data[at + 1..];
        }
        self.partial.extend_from_slice(data);
        self.bytes += data.len();
        self.bound();
    }

    fn bound(&mut self) {
        while self.bytes > CAPTURE_LIMIT {
            if let Some(line) = self.lines.pop_front() {
                self.bytes -= line.len() + 1;
                self.first_line += 1;
            } else {
                let excess = self.bytes - CAPTURE_LIMIT;
                self.partial.drain(..excess);
                self.bytes -= excess;
            }
            self.truncated = true;
        }
    }

    /// End of file: an unfinished last line counts as a line, as with `BufRead::lines`.
    fn end(&mut self) {
        if !self.partial.is_empty() {
            self.bytes += 1;
            self.lines.push_back(std::mem::take(&mut self.partial));
            self.bound();
        }
        self.ended = true;
    }

    fn next_line(&self) -> u64 {
        self.first_line + self.lines.len() as u64
    }

    fn text(&self) -> String {
        let mut bytes = Vec::with_capacity(self.bytes);
        for line in &self.lines {
            bytes.extend_from_slice(line);
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(&self.partial);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[derive(Default)]
struct State {
    stdout: Tail,
    stderr: Tail,
    leader_exited: bool,
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

/// What [`Capture::next_lines`] found.
#[derive(Debug)]
pub(crate) enum Next {
    /// Lines after the cursor (the cursor now points past them), without their line end.
    Lines(Vec<String>),
    /// No line can come any more.
    Ended(Ended),
    /// Nothing yet; the waker, if one was given, is woken on the next change.
    Pending,
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

    fn notify(&self, mut state: MutexGuard<'_, State>) {
        let wakers = std::mem::take(&mut state.wakers);
        drop(state);
        self.changed.notify_all();
        for waker in wakers {
            waker.wake();
        }
    }

    /// The step an async front end polls (the blocking wait uses the same logic under the
    /// condvar): the lines of `stream` from line number `*cursor` on (from the oldest one kept, if
    /// that one is later), advancing the cursor; see [`Next`].
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // the async front end's
    pub(crate) fn next_lines(
        &self,
        stream: Stream,
        cursor: &mut u64,
        waker: Option<&Waker>,
    ) -> Next {
        let mut state = self.lock();
        let next = Self::next_locked(&state, stream, cursor);
        if let (Next::Pending, Some(waker)) = (&next, waker) {
            if !state.wakers.iter().any(|w| w.will_wake(waker)) {
                state.wakers.push(waker.clone());
            }
        }
        next
    }

    fn next_locked(state: &State, stream: Stream, cursor: &mut u64) -> Next {
        let tail = state.tail(stream);
        if !tail.captured {
            return Next::Ended(Ended::NotCaptured);
        }
        let from = (*cursor).max(tail.first_line);
        let skip = usize::try_from(from - tail.first_line).unwrap_or(usize::MAX);
        if skip < tail.lines.len() {
            let lines = tail
                .lines
                .iter()
                .skip(skip)
                .map(|line| {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    String::from_utf8_lossy(line).into_owned()
                })
                .collect();
            *cursor = tail.next_line();
            return Next::Lines(lines);
        }
        if tail.ended {
            Next::Ended(Ended::StreamClosed)
        } else if state.leader_exited {
            Next::Ended(Ended::LeaderExited)
        } else {
            Next::Pending
        }
    }

    /// Blocks until a line of `stream` matches `predicate` (looking at every line kept, then
    /// at new ones), no line can come any more, or `deadline` passes (`Err(None)`).
    pub(crate) fn wait_for_line(
        &self,
        stream: Stream,
        deadline: Option<Instant>,
        predicate: &mut dyn FnMut(&str) -> bool,
    ) -> Result<String, Option<Ended>> {
        let mut cursor = 0;
        loop {
            let next = {
                let mut state = self.lock();
                loop {
                    match Self::next_locked(&state, stream, &mut cursor) {
                        Next::Pending => {}
                        next => break next,
                    }
                    let Some(left) = time_left(deadline) else {
                        return Err(None);
                    };
                    state = match left {
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
            };
            match next {
                // The predicate runs without the lock.
                Next::Lines(lines) => {
                    if let Some(line) = lines.into_iter().find(|line| predicate(line)) {
                        return Ok(line);
                    }
                    // A stream that never pauses must not outlast the timeout.
                    if time_left(deadline).is_none() {
                        return Err(None);
                    }
                }
                Next::Ended(ended) => return Err(Some(ended)),
                Next::Pending => unreachable!("the loop above returns only other values"),
            }
        }
    }

    /// Waits until the reader has seen the leader exit (and so has read what the leader
    /// wrote before), or every stream ended, or `deadline` passes.
    pub(crate) fn await_leader_exit(&self, deadline: Instant) {
        let mut state = self.lock();
        while !state.leader_exited && !Self::all_ended(&state) {
            let Some(Some(left)) = time_left(Some(deadline)) else {
                return;
            };
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The tail of `stream` (`None` if it is not captured).
    pub(crate) fn text(&self, stream: Stream) -> Option<String> {
        let state = self.lock();
        let tail = state.tail(stream);
        tail.captured.then(|| tail.text())
    }

    /// Whether every captured stream has reached end of file.
    fn all_ended(state: &State) -> bool {
        [&state.stdout, &state.stderr]
            .iter()
            .all(|t| !t.captured || t.ended)
    }
}

/// The thread that reads a group's captured pipes into its [`Capture`].
pub(crate) struct Reader {
    capture: Arc<Capture>,
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    /// Starts the reader on the pipes given (made non-blocking here). `leader` is a pidfd on
    /// the leader, whose readiness marks its exit.
    pub(crate) fn start(
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
        leader: Option<Arc<crate::sys::Pidfd>>,
        name: String,
    ) -> io::Result<Reader> {
        let capture = Arc::new(Capture::default());
        {
            let mut state = capture.lock();
            state.stdout.captured = stdout.is_some();
            state.stderr.captured = stderr.is_some();
        }
        for fd in stdout.iter().chain(stderr.iter()) {
            sys::set_nonblocking(fd.as_fd())?;
        }
        let (stop_read, stop_write) = sys::pipe()?;
        let shared = Arc::clone(&capture);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || read_loop(&shared, [stdout, stderr], leader, &stop_read))?;
        Ok(Reader {
            capture,
            stop: Some(stop_write),
            thread: Some(thread),
        })
    }

    pub(crate) fn capture(&self) -> &Capture {
        &self.capture
    }

    /// Waits until every captured stream reaches end of file or `deadline` passes, then
    /// stops the thread (which reads what is left first) and joins it. Idempotent.
    pub(crate) fn finish(&mut self, deadline: Instant) {
        if self.thread.is_none() {
            return;
        }
        let mut state = self.capture.lock();
        while !Capture::all_ended(&state) {
            let Some(Some(left)) = time_left(Some(deadline)) else {
                break;
            };
            state = self
                .capture
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(state);
        // Closing the write end wakes the thread.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.finish(Instant::now());
    }
}

/// The reader thread: polls the pipes, the leader's pidfd and the stop pipe.
fn read_loop(
    capture: &Capture,
    mut pipes: [Option<OwnedFd>; 2],
    mut leader: Option<Arc<crate::sys::Pidfd>>,
    stop: &OwnedFd,
) {
    const STREAMS: [Stream; 2] = [Stream::Stdout, Stream::Stderr];
    let mut buf = Vec::new();
    // Reads what each open pipe holds; closes those at end of file.
    let mut drain = |pipes: &mut [Option<OwnedFd>; 2], capture: &Capture| {
        let mut state = capture.lock();
        for (pipe, stream) in pipes.iter_mut().zip(STREAMS) {
            let Some(fd) = pipe else { continue };
            buf.clear();
            let ended = sys::read_available(fd.as_fd(), &mut buf).unwrap_or(true);
            let tail = state.tail_mut(stream);
            tail.push(&buf);
            if ended {
                tail.end();
                *pipe = None;
            }
        }
        capture.notify(state);
    };
    loop {
        let mut fds = vec![stop.as_fd()];
        fds.extend(pipes.iter().flatten().map(AsFd::as_fd));
        if let Some(leader) = &leader {
            fds.push(leader.as_fd());
        }
        let Ok(ready) = sys::poll_readable(&fds, None) else {
            break;
        };
        let stopping = ready[0];
        let leader_exited = leader.is_some() && ready.last() == Some(&true);
        drain(&mut pipes, capture);
        if leader_exited {
            // What the leader wrote before it exited has just been read.
            leader = None;
            let mut state = capture.lock();
            state.leader_exited = true;
            capture.notify(state);
        }
        if stopping || pipes.iter().all(Option::is_none) {
            break;
        }
    }
    let mut state = capture.lock();
    for stream in STREAMS {
        let tail = state.tail_mut(stream);
        if tail.captured && !tail.ended {
            tail.end();
        }
    }
    capture.notify(state);
}

/// Why a group did not become ready: the payload of the `io::Error` that
/// [`SpawnedGroup::wait_for_line`](crate::SpawnedGroup::wait_for_line) and
/// [`SpawnedGroup::wait_for_tcp`](crate::SpawnedGroup::wait_for_tcp) return, reachable with
/// [`io::Error::get_ref`] and `downcast_ref`. Its `Display` says what was awaited, why it
/// failed, the leader's exit status if it exited, and the last 4 KiB of each captured
/// stream.
///
/// # Examples
///
/// ```
/// use std::process::Command;
/// use std::time::Duration;
/// use pgroup::{Builder, NotReady, Stream};
///
/// let server = Builder::new()
///     .capture_output(true)
///     .spawn(Command::new("sh").args(["-c", "echo 'no config' >&2; exit 2"]))?;
/// let err = server
///     .wait_for_line(Stream::Stdout, Duration::from_secs(10), |l| l.contains("listening"))
///     .unwrap_err();
/// let why = err.get_ref().and_then(|e| e.downcast_ref::<NotReady>()).expect("NotReady");
/// assert_eq!(why.status.and_then(|s| s.code()), Some(2));
/// assert_eq!(why.stderr.as_deref(), Some("no config\n"));
/// assert!(err.to_string().contains("no config"));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NotReady {
    /// The group, as in every error of the crate: program and leader pid.
    pub group: String,
    /// What was awaited, such as `a matching line on stdout`.
    pub awaited: String,
    /// Why the wait ended.
    pub reason: NotReadyReason,
    /// The leader's exit status, if it had exited.
    pub status: Option<ExitStatus>,
    /// The captured tail of stdout (`None` if not captured).
    pub stdout: Option<String>,
    /// The captured tail of stderr (`None` if not captured).
    pub stderr: Option<String>,
}

/// Why a wait for readiness ended without it.
///
/// # Examples
///
/// ```
/// use std::io::ErrorKind;
/// use pgroup::NotReadyReason;
///
/// assert_eq!(NotReadyReason::TimedOut.kind(), ErrorKind::TimedOut);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotReadyReason {
    /// The timeout passed.
    TimedOut,
    /// The leader exited first.
    LeaderExited,
    /// The stream reached end of file (every process holding it closed it) first.
    StreamClosed,
    /// The stream was not captured: see [`Builder::capture_output`](crate::Builder::capture_output).
    NotCaptured,
}

impl NotReadyReason {
    /// The `io::ErrorKind` of the error that carries it: `TimedOut`, `UnexpectedEof` (the
    /// leader exited, the stream closed) or `InvalidInput` (not captured).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::ErrorKind;
    /// use pgroup::NotReadyReason;
    ///
    /// assert_eq!(NotReadyReason::LeaderExited.kind(), ErrorKind::UnexpectedEof);
    /// ```
    #[must_use]
    pub fn kind(self) -> io::ErrorKind {
        match self {
            NotReadyReason::TimedOut => io::ErrorKind::TimedOut,
            NotReadyReason::LeaderExited | NotReadyReason::StreamClosed => {
                io::ErrorKind::UnexpectedEof
            }
            NotReadyReason::NotCaptured => io::ErrorKind::InvalidInput,
        }
    }
}

impl From<Ended> for NotReadyReason {
    fn from(ended: Ended) -> Self {
        match ended {
            Ended::StreamClosed => NotReadyReason::StreamClosed,
            Ended::LeaderExited => NotReadyReason::LeaderExited,
            Ended::NotCaptured => NotReadyReason::NotCaptured,
        }
    }
}

impl NotReady {
    /// Wraps this in an `io::Error` of the reason's kind.
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::new(self.reason.kind(), self)
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.reason {
            NotReadyReason::TimedOut => "the timeout passed",
            NotReadyReason::LeaderExited => "the leader exited",
            NotReadyReason::StreamClosed => "the stream was closed",
            NotReadyReason::NotCaptured => {
                "the stream is not captured (Builder::capture_output(true) captures both)"
            }
        };
        write!(
            f,
            "{}: not ready: {why} before {}",
            self.group, self.awaited
        )?;
        if let Some(status) = self.status {
            write!(f, " (leader: {status})")?;
        }
        write_tails(f, self.stdout.as_deref(), self.stderr.as_deref())
    }
}

impl std::error::Error for NotReady {}

/// The captured tails, for messages: the last [`SHOWN_TAIL`] bytes of each.
pub(crate) fn write_tails(
    f: &mut dyn fmt::Write,
    stdout: Option<&str>,
    stderr: Option<&str>,
) -> fmt::Result {
    for (name, text) in [("stdout", stdout), ("stderr", stderr)] {
        let Some(text) = text else { continue };
        if text.is_empty() {
            write!(f, "\n--- {name}: (empty) ---")?;
            continue;
        }
        let mut start = text.len().saturating_sub(SHOWN_TAIL);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        let cut = if start > 0 { ", last 4 KiB" } else { "" };
        write!(f, "\n--- {name}{cut} ---\n{}", &text[start..])?;
        if !text.ends_with('\n') {
            f.write_char('\n')?;
        }
        write!(f, "--- end of {name} ---")?;
    }
    Ok(())
}

/// The shortest wait of [`SpawnedGroup::wait_for_tcp`](crate::SpawnedGroup::wait_for_tcp)
/// between two connection attempts; it doubles up to [`TCP_BACKOFF_MAX`].
pub(crate) const TCP_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// The longest wait between two connection attempts.
pub(crate) const TCP_BACKOFF_MAX: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_keeps_the_last_bytes_and_counts_lines() {
        let mut tail = Tail {
            captured: true,
            ..Tail::default()
        };
        tail.push(b"one\ntw");
        tail.push(b"o\nthree");
        assert_eq!(tail.text(), "one\ntwo\nthree");
        assert_eq!(tail.next_line(), 2);
        tail.end();
        assert_eq!(tail.next_line(), 3);
        let long = vec![b'x'; CAPTURE_LIMIT];
        tail.push(&long);
        tail.push(b"\nlast\n");
        assert!(tail.truncated);
        assert!(tail.bytes <= CAPTURE_LIMIT);
        assert_eq!(tail.text(), "last\n");
        assert_eq!(tail.next_line(), 5);
        assert_eq!(
            tail.first_line, 4,
            "the three short lines and the long one were dropped"
        );
    }

    /// A stream that never pauses (a new line arrives while each one is looked at) still
    /// ends the wait at its timeout. Here the predicate writes the next line itself, and
    /// gives in after 1000 lines: a wait that only checks its deadline when no line is
    /// pending would return that line instead of timing out.
    #[test]
    fn a_chatty_stream_does_not_outlast_the_timeout() {
        let capture = Capture::default();
        {
            let mut state = capture.lock();
            state.stdout.captured = true;
            state.stdout.push(b"line 0\n");
        }
        let mut seen = 0;
        let deadline = Instant::now();
        let waited = capture.wait_for_line(Stream::Stdout, Some(deadline), &mut |_| {
            seen += 1;
            let mut state = capture.lock();
            state.stdout.push(format!("line {seen}\n").as_bytes());
            capture.notify(state);
            seen >= 1000
        });
        assert_eq!(waited, Err(None), "after {seen} lines");
    }

    #[test]
    fn next_lines_hands_out_each_line_once_per_cursor() {
        let capture = Capture::default();
        {
            let mut state = capture.lock();
            state.stdout.captured = true;
            state.stdout.push(b"a\r\nb\n");
        }
        let mut cursor = 0;
        match capture.next_lines(Stream::Stdout, &mut cursor, None) {
            Next::Lines(lines) => assert_eq!(lines, ["a", "b"]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            capture.next_lines(Stream::Stdout, &mut cursor, None),
            Next::Pending
        ));
        assert!(matches!(
            capture.next_lines(Stream::Stderr, &mut 0, None),
            Next::Ended(Ended::NotCaptured)
        ));
    }
}
