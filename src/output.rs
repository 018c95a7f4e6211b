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

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::deadline::time_left;
use crate::sys;

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

/// How much of each tail an error message or a failing test's report shows: the last 4 KiB
/// (the whole tail is in [`NotReady`] and [`Teardown`](crate::Teardown)).
const SHOWN_TAIL: usize = 4 * 1024;

/// The reader's one buffer: what it reads from a pipe at a time.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// What a pipe can hold at most (Linux's default `/proc/sys/fs/pipe-max-size`): when a
/// writer is gone, everything it wrote has been read once this much more was read.
pub(crate) const PIPE_MAX: usize = 1024 * 1024;

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

/// The bounded tail of one stream: its last [`CAPTURE_LIMIT`] bytes, and where the line
/// they begin in started.
#[derive(Default)]
struct Tail {
    /// The last bytes of the stream, at most [`CAPTURE_LIMIT`], in a buffer that grows to
    /// that size at most (see [`Tail::reserve`]).
    bytes: Vec<u8>,
    /// The stream offset of `bytes[0]`: how many bytes were dropped before it.
    start: u64,
    /// The stream offset at which the line that `bytes[0]` belongs to began: `start` when
    /// `bytes` begins with a line, less when that line's beginning was dropped.
    line_start: u64,
    /// Whether the stream reached end of file (or capture stopped).
    ended: bool,
    /// Whether this stream is captured at all.
    captured: bool,
}

impl Tail {
    fn captured() -> Tail {
        Tail {
            captured: true,
            ..Tail::default()
        }
    }

    /// Room for `additional` more bytes: the buffer doubles as `Vec` does, but never beyond
    /// [`CAPTURE_LIMIT`] (a quiet stream costs little, a flood no more than the limit).
    fn reserve(&mut self, additional: usize) {
        let needed = self.bytes.len() + additional;
        if needed > self.bytes.capacity() {
            let capacity = CAPTURE_LIMIT.min(needed.max(2 * self.bytes.capacity()));
            self.bytes.reserve_exact(capacity - self.bytes.len());
        }
    }

    /// Appends `chunk`, dropping the oldest bytes beyond [`CAPTURE_LIMIT`]. The only work
    /// that looks at the bytes is the search, among those dropped, for the last line end
    /// (at the speed of `memchr`).
    fn push(&mut self, chunk: &[u8]) {
        let excess = (self.bytes.len() + chunk.len()).saturating_sub(CAPTURE_LIMIT);
        self.reserve(
            chunk
                .len()
                .min(CAPTURE_LIMIT)
                .saturating_sub(excess.min(self.bytes.len())),
        );
        if excess == 0 {
            self.bytes.extend_from_slice(chunk);
            return;
        }
        // Dropped: the first `from_bytes` bytes held, then the first `from_chunk` of the
        // chunk (when the chunk alone fills the tail).
        let from_bytes = excess.min(self.bytes.len());
        let from_chunk = excess - from_bytes;
        if from_bytes > 0 {
            let next = self.bytes.get(from_bytes).or(chunk.first()).copied();
            if let Some(end) = last_line_end(&self.bytes[..from_bytes], next) {
                self.line_start = self.start + offset(end);
            }
        }
        if from_chunk > 0 {
            if let Some(end) = last_line_end(&chunk[..from_chunk], chunk.get(from_chunk).copied()) {
                self.line_start = self.start + offset(from_bytes + end);
            }
            self.bytes.clear();
            self.bytes.extend_from_slice(&chunk[from_chunk..]);
        } else {
            self.bytes.drain(..from_bytes);
            self.bytes.extend_from_slice(chunk);
        }
        self.start += offset(excess);
    }

    /// How many bytes of the line `bytes` begins in were dropped (0: it begins a line).
    fn cut(&self) -> u64 {
        self.start - self.line_start
    }

    /// The tail as text (see [`decode`]), marked if bytes were dropped before it.
    fn text(&self) -> String {
        decode(self.start, &self.bytes).0.into_owned()
    }

    /// How many bytes of the stream [`Tail::text`] does not show.
    fn dropped(&self) -> u64 {
        decode(self.start, &self.bytes).1
    }
}

/// A byte count as a stream offset.
fn offset(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The marker of text that lost its first `cut` bytes.
fn marker(cut: u64) -> String {
    format!("[… {cut} bytes cut]")
}

/// `bytes`, what is left of text whose first `cut` bytes were dropped, as text of at most
/// [`CAPTURE_LIMIT`] bytes: lossily decoded as UTF-8, and with the marker in front when bytes
/// are missing; and how many are (`cut`, and those left out here). Bytes are left out from
/// the front to make room for the marker, or for the `�` that invalid bytes decode to (three
/// bytes each), and so are the pieces of a character cut in two (so that the text does not
/// begin with `�`). Text that is whole, valid and short enough is borrowed as it is.
fn decode(cut: u64, bytes: &[u8]) -> (Cow<'_, str>, u64) {
    let mut skip = 0;
    loop {
        if cut + offset(skip) > 0 {
            while bytes.get(skip).is_some_and(|b| b & 0xC0 == 0x80) {
                skip += 1;
            }
        }
        let missing = cut + offset(skip);
        let body = String::from_utf8_lossy(&bytes[skip..]);
        let marker = if missing > 0 {
            marker(missing)
        } else {
            String::new()
        };
        let excess = (marker.len() + body.len()).saturating_sub(CAPTURE_LIMIT);
        if excess == 0 {
            if missing == 0 {
                return (body, 0);
            }
            let mut text = marker;
            text.push_str(&body);
            return (Cow::Owned(text), missing);
        }
        skip = (skip + excess).min(bytes.len());
    }
}

/// Lines are searched for in blocks of this many bytes: each block is first asked whether
/// it holds a line break with `<[u8]>::contains` (std's `memchr`, fast also in a debug
/// build of this crate), and only a block that does is looked at byte by byte.
const SEARCH_BLOCK: usize = 256;

fn has_line_break(bytes: &[u8]) -> bool {
    bytes.contains(&b'\n') || bytes.contains(&b'\r')
}

fn is_line_break(byte: &u8) -> bool {
    matches!(byte, b'\n' | b'\r')
}

/// The index of the first `\n` or `\r` in `bytes`.
fn find_line_break(bytes: &[u8]) -> Option<usize> {
    let mut start = 0;
    while start < bytes.len() {
        let end = bytes.len().min(start + SEARCH_BLOCK);
        let block = &bytes[start..end];
        if has_line_break(block) {
            return block.iter().position(is_line_break).map(|at| start + at);
        }
        start = end;
    }
    None
}

/// The index of the last `\n` or `\r` in `bytes`.
fn rfind_line_break(bytes: &[u8]) -> Option<usize> {
    if !has_line_break(bytes) {
        return None;
    }
    let mut end = bytes.len();
    while end > 0 {
        let start = end.saturating_sub(SEARCH_BLOCK);
        let block = &bytes[start..end];
        if has_line_break(block) {
            return block.iter().rposition(is_line_break).map(|at| start + at);
        }
        end = start;
    }
    None
}

/// Where the last line that ends within `bytes` ends (the index after its line end), given
/// the byte that follows them (`None`: nothing yet). A `\r` followed by `\n` is not a line
/// end of its own: the line ends after the `\n`.
fn last_line_end(bytes: &[u8], next: Option<u8>) -> Option<usize> {
    let mut end = bytes.len();
    loop {
        let at = rfind_line_break(&bytes[..end])?;
        let following = bytes.get(at + 1).copied().or(next);
        if bytes[at] == b'\r' && following == Some(b'\n') {
            end = at;
            continue;
        }
        return Some(at + 1);
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
                let mut state = self.lock();
                while cursor.seen == Some(state.changes) {
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
            if stdout.is_some() {
                state.stdout = Tail::captured();
            }
            if stderr.is_some() {
                state.stderr = Tail::captured();
            }
        }
        for fd in stdout.iter().chain(stderr.iter()) {
            sys::set_nonblocking(fd.as_fd())?;
        }
        let (stop_read, stop_write) = sys::pipe()?;
        let shared = Arc::clone(&capture);
        let pipes = [stdout.map(File::from), stderr.map(File::from)];
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || read_loop(&shared, pipes, leader, &stop_read))?;
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
    /// stops the thread (which reads what the pipes hold first, up to [`PIPE_MAX`]) and
    /// joins it. Idempotent.
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

const STREAMS: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

/// The reader thread: polls the pipes, the leader's pidfd and the stop pipe.
fn read_loop(
    capture: &Capture,
    mut pipes: [Option<File>; 2],
    mut leader: Option<Arc<crate::sys::Pidfd>>,
    stop: &OwnedFd,
) {
    let mut buf = vec![0_u8; READ_CHUNK];
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
        let mut readable = ready[1..].iter();
        for (pipe, stream) in pipes.iter_mut().zip(STREAMS) {
            if pipe.is_some() && readable.next() == Some(&true) {
                read_into(capture, pipe, stream, &mut buf, READ_CHUNK);
            }
        }
        if leader_exited || stopping {
            // Everything the leader wrote before it exited is in the pipes now (or was read
            // already); a pipe holds at most PIPE_MAX bytes, so reading that much more is
            // enough, and a process that goes on writing cannot keep the thread here.
            for (pipe, stream) in pipes.iter_mut().zip(STREAMS) {
                read_into(capture, pipe, stream, &mut buf, PIPE_MAX);
            }
        }
        if leader_exited {
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
        if tail.captured {
            tail.ended = true;
        }
    }
    capture.notify(state);
}

/// Reads from `pipe` into the tail of `stream`, a chunk at a time (the lock is held for one
/// chunk's copy), until the pipe is empty, reaches end of file (it is then closed and the
/// tail ended), fails (the same), or `budget` bytes were read.
fn read_into(
    capture: &Capture,
    pipe: &mut Option<File>,
    stream: Stream,
    buf: &mut [u8],
    budget: usize,
) {
    let mut read = 0;
    while let Some(file) = pipe {
        if read >= budget {
            return;
        }
        match file.read(buf) {
            Ok(0) => {
                *pipe = None;
                let mut state = capture.lock();
                state.tail_mut(stream).ended = true;
                capture.notify(state);
            }
            Ok(n) => {
                read += n;
                let mut state = capture.lock();
                state.tail_mut(stream).push(&buf[..n]);
                capture.notify(state);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => {
                *pipe = None;
                let mut state = capture.lock();
                state.tail_mut(stream).ended = true;
                capture.notify(state);
            }
        }
    }
}

/// Why a group did not become ready: the payload of the `io::Error` that
/// [`SpawnedGroup::wait_for_line`](crate::SpawnedGroup::wait_for_line) and
/// [`SpawnedGroup::wait_for_tcp`](crate::SpawnedGroup::wait_for_tcp) return, reachable with
/// [`io::Error::get_ref`] and `downcast_ref`.
///
/// Its `Display` and its `Debug` are the same text, since `Debug` is what `unwrap`,
/// `expect` and a test returning `Result` print: what was awaited, why the wait ended, the
/// leader's exit status if it exited (`exit status 2`, `signal 15 (SIGTERM)`), and the last
/// 4 KiB of each captured stream, each line on a line of its own. The alternate `Debug`
/// (`{:#?}`) shows the fields.
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
/// // What `.expect("ready")` would print: readable, the output on lines of its own.
/// let printed = format!("{err:?}");
/// assert!(printed.contains("the leader exited (exit status 2)"), "{printed}");
/// assert!(printed.contains("\nno config\n"), "{printed}");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
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
        write!(f, "{}: not ready: ", self.group)?;
        let status = self.status.map(StatusText);
        match (self.reason, status) {
            (NotReadyReason::TimedOut, _) => {
                write!(f, "the timeout passed before {}", self.awaited)?;
            }
            (NotReadyReason::LeaderExited, Some(status)) => {
                write!(f, "the leader exited ({status}) before {}", self.awaited)?;
            }
            (NotReadyReason::LeaderExited, None) => {
                write!(f, "the leader exited before {}", self.awaited)?;
            }
            (NotReadyReason::StreamClosed, _) => {
                write!(f, "the stream was closed before {}", self.awaited)?;
            }
            (NotReadyReason::NotCaptured, _) => {
                write!(
                    f,
                    "the output is not captured, so there is no line to wait for; spawn the \
                     group with Builder::capture_output(true) to wait for {}",
                    self.awaited
                )?;
            }
        }
        write_tails(f, self.stdout.as_deref(), self.stderr.as_deref())
    }
}

impl fmt::Debug for NotReady {
    /// The same text as `Display` (see the type's documentation); `{:#?}` shows the fields.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            return fmt::Display::fmt(self, f);
        }
        f.debug_struct("NotReady")
            .field("group", &self.group)
            .field("awaited", &self.awaited)
            .field("reason", &self.reason)
            .field("status", &self.status.map(StatusText))
            .field("stdout", &self.stdout)
            .field("stderr", &self.stderr)
            .finish()
    }
}

impl std::error::Error for NotReady {}

/// An exit status as people read it: `exit status 2`, `signal 15 (SIGTERM)`, with
/// ` (core dumped)` when it did. (std's `Display` says `exit status: 2`, its `Debug`
/// `ExitStatus(unix_wait_status(512))`.) Its `Debug` is the same text.
#[derive(Clone, Copy)]
pub(crate) struct StatusText(pub(crate) ExitStatus);

impl fmt::Display for StatusText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.0;
        if let Some(code) = status.code() {
            return write!(f, "exit status {code}");
        }
        let Some(signal) = status.signal() else {
            return write!(f, "{status}");
        };
        match crate::Signal::try_from(signal) {
            Ok(name) => write!(f, "signal {signal} ({name})")?,
            Err(_) => write!(f, "signal {signal}")?,
        }
        if status.core_dumped() {
            f.write_str(" (core dumped)")?;
        }
        Ok(())
    }
}

impl fmt::Debug for StatusText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The captured tails, for messages: the last [`SHOWN_TAIL`] bytes of each, from the start
/// of a line, each between a header and a footer of its own.
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
        let shown = last_lines(text, SHOWN_TAIL);
        let cut = if shown.len() < text.len() {
            ", last 4 KiB"
        } else {
            ""
        };
        write!(f, "\n--- {name}{cut} ---\n{shown}")?;
        if !shown.ends_with('\n') {
            f.write_char('\n')?;
        }
        write!(f, "--- end of {name} ---")?;
    }
    Ok(())
}

/// The end of `text`, at most `limit` bytes, beginning with a line where one begins in
/// them (otherwise at a character).
fn last_lines(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let shown = &text[start..];
    match shown.find('\n') {
        Some(at) if at + 1 < shown.len() => &shown[at + 1..],
        _ => shown,
    }
}

/// What a failing test shows of a group: its captured tails, and the leader's status if it
/// is known (`None`: it has not exited, or teardown failed).
pub(crate) fn failure_report(
    context: &str,
    status: Option<ExitStatus>,
    capture: &Capture,
) -> String {
    let mut report = format!("\n---- {context}: captured output");
    match status {
        Some(status) => {
            let _ = write!(report, " (leader: {})", StatusText(status));
        }
        None => report.push_str(" (leader still running)"),
    }
    report.push_str(" ----");
    let _ = write_tails(
        &mut report,
        capture.text(Stream::Stdout).as_deref(),
        capture.text(Stream::Stderr).as_deref(),
    );
    report
}

/// The shortest wait of [`SpawnedGroup::wait_for_tcp`](crate::SpawnedGroup::wait_for_tcp)
/// between two connection attempts; it doubles up to [`TCP_BACKOFF_MAX`].
pub(crate) const TCP_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// The longest wait between two connection attempts.
pub(crate) const TCP_BACKOFF_MAX: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
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

    /// The number a marked text says was cut, and the rest of it.
    fn split_marker(text: &str) -> (u64, &str) {
        let rest = text.strip_prefix("[… ").expect("marked");
        let (cut, kept) = rest.split_once(" bytes cut]").expect("the marker's end");
        (cut.parse().expect("a number"), kept)
    }

    #[test]
    fn a_tail_keeps_the_last_bytes_and_marks_the_cut() {
        let mut tail = Tail::captured();
        tail.push(b"one\ntw");
        tail.push(b"o\nthree");
        assert_eq!(tail.text(), "one\ntwo\nthree");
        assert_eq!((tail.start, tail.dropped()), (0, 0));
        tail.push(&vec![b'x'; CAPTURE_LIMIT]);
        assert_eq!(tail.bytes.len(), CAPTURE_LIMIT);
        assert_eq!(tail.bytes.capacity(), CAPTURE_LIMIT, "never grows");
        // "one\ntwo\n" dropped, and "three": the line now begins 5 bytes before the tail.
        assert_eq!(tail.start, 13);
        assert_eq!(tail.cut(), 5);
        let text = tail.text();
        assert_eq!(
            text.len(),
            CAPTURE_LIMIT,
            "the marker takes room from the bytes shown"
        );
        let (cut, kept) = split_marker(&text);
        assert_eq!(cut, tail.dropped());
        assert_eq!(cut + offset(kept.len()), 13 + offset(CAPTURE_LIMIT));
        assert!(kept.bytes().all(|b| b == b'x'));
        tail.push(b"\nlast\n");
        assert_eq!(tail.cut(), 11);
        let text = tail.text();
        assert!(text.starts_with("[… ") && text.ends_with("x\nlast\n"));
        // A chunk longer than the tail: the line end inside the dropped part counts.
        let mut big = b"a\n".to_vec();
        big.extend(vec![b'y'; CAPTURE_LIMIT + 10]);
        tail.push(&big);
        assert_eq!(tail.cut(), 10);
    }

    #[test]
    fn line_ends_are_lf_crlf_and_a_lone_cr() {
        assert_eq!(last_line_end(b"ab\r", Some(b'\n')), None);
        assert_eq!(last_line_end(b"a\nb\r", Some(b'\n')), Some(2));
        assert_eq!(last_line_end(b"a\nb\r", Some(b'c')), Some(4));
        assert_eq!(last_line_end(b"a\r\nb", None), Some(3));
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

    #[test]
    fn statuses_read_as_people_write_them() {
        assert_eq!(
            StatusText(ExitStatus::from_raw(2 << 8)).to_string(),
            "exit status 2"
        );
        assert_eq!(
            StatusText(ExitStatus::from_raw(15)).to_string(),
            "signal 15 (SIGTERM)"
        );
        assert_eq!(
            StatusText(ExitStatus::from_raw(6 | 0x80)).to_string(),
            "signal 6 (SIGABRT) (core dumped)"
        );
    }

    #[test]
    fn the_shown_tail_begins_with_a_line() {
        let text = format!("{}\nsecond\n", "a".repeat(SHOWN_TAIL));
        assert_eq!(last_lines(&text, SHOWN_TAIL), "second\n");
        assert_eq!(last_lines("short\n", SHOWN_TAIL), "short\n");
    }
}
