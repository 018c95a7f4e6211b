//! [`Run`]: a command run to completion in a group of its own, with its complete output, as
//! std's `Command::output` but bounded: a grandchild that keeps the pipes open neither hangs
//! the call nor survives it.
//!
//! # Design
//!
//! The leader's stdout and stderr are pipes that the calling thread reads (the sync form:
//! `ppoll` over both pipes and the leader's exit descriptors; the async form: tokio's pipes
//! and the leader's pidfd, in one future), keeping each stream's first
//! [`output_limit`](Run::output_limit) bytes and counting the rest. Input, if any, is written
//! by a thread of its own (sync) or by the same future (async), and the pipe closed after it.
//!
//! The call ends with the leader, not with the pipes: once the leader has exited, the pipes
//! are read until every writer has closed them or for [`wait_delay`](Run::wait_delay) at
//! most (Go's `Cmd.WaitDelay`), whichever comes first. Then the group is torn down (SIGTERM,
//! the grace period, SIGKILL, the reap of the leader), which ends what the leader left
//! behind, and what the pipes still hold is read: until end of file, which comes at once now
//! that every writer in the group is gone, or for [`CAPTURE_DRAIN_BOUND`] at most (a process
//! that left the group may hold them). A timeout tears the group down the same way, and the
//! error carries what was read.
//!
//! Both forms keep what they read, and decide when the reading ends, with the one
//! `Reading` of this module, and build their outcome with `Run::finish`; `tokio` holds
//! what only the async form does (the future that drives tokio's pipes), and `incomplete`
//! the error type.

mod incomplete;
#[cfg(feature = "tokio")]
mod tokio;

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::capture::{read_pipe, Stream, CAPTURE_DRAIN_BOUND, PIPE_MAX, READ_CHUNK};
use crate::deadline::time_left;
use crate::{sys, Builder};

pub use incomplete::{Incomplete, IncompleteReason};

/// How many bytes of each stream [`Run::output`] keeps unless told otherwise: 16 MiB.
///
/// # Examples
///
/// ```
/// assert_eq!(pgroup::DEFAULT_OUTPUT_LIMIT, 16 * 1024 * 1024);
/// ```
pub const DEFAULT_OUTPUT_LIMIT: usize = 16 * 1024 * 1024;

/// How long [`Run::output`] goes on reading the pipes after the leader exited, unless told
/// otherwise: 100 ms.
///
/// Output the leader wrote before it exited is in the pipes already and is read at once; the
/// delay is for what its other processes still write, and it ends early when they close the
/// pipes (when they exit). Only a process that outlives the leader and keeps the pipes open
/// (a daemon started with `&`) makes the call wait the whole delay, and is then torn down
/// with the group.
///
/// # Examples
///
/// ```
/// assert_eq!(pgroup::DEFAULT_WAIT_DELAY, std::time::Duration::from_millis(100));
/// ```
pub const DEFAULT_WAIT_DELAY: Duration = Duration::from_millis(100);

/// Runs a command to completion in a process group of its own and returns its exit status
/// and its complete output: [`Command::output`] for tests, with input, a timeout, a bound
/// on memory, and no hang on a pipe held by a grandchild.
///
/// std's `Command::output` reads stdout and stderr until every process holding the pipes
/// has closed them, so a CLI that starts a background process (`sh -c 'daemon & echo
/// started'`) hangs it for as long as that process lives, and leaves it running. `Run`
/// returns when the leader exits: it reads what the pipes still hold for a short delay
/// ([`wait_delay`](Run::wait_delay), 100 ms by default, as Go's `Cmd.WaitDelay`), then tears
/// the group down, so nothing the command started survives the call. Everything else is as
/// `Command::output`: the status is returned, not judged (a failing command is `Ok`), and
/// stdin is null unless [`input`](Run::input) gives it bytes.
///
/// The spawn options come from a [`Builder`] (`Run::from(builder)`): the containment tier,
/// the grace period of the teardown, a new session. [`Builder::output`] is the shorthand for
/// a `Run` with its defaults.
///
/// # Examples
///
/// ```
/// use std::process::Command;
/// use std::time::Duration;
/// use pgroup::Run;
///
/// let output = Run::new()
///     .input("b\na\n")
///     .timeout(Duration::from_secs(30))
///     .output(&mut Command::new("sort"))?;
/// assert!(output.status.success());
/// assert_eq!(output.stdout, b"a\nb\n");
///
/// // A background process holding the pipes ends the call (after the wait delay) and is
/// // torn down with the group; std's `output()` would wait for it for 300 seconds.
/// let output = Run::new().output(Command::new("sh").args(["-c", "sleep 300 & echo started"]))?;
/// assert_eq!(output.stdout, b"started\n");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Run {
    builder: Builder,
    input: Option<Vec<u8>>,
    timeout: Option<Duration>,
    limit: usize,
    wait_delay: Duration,
}

impl Default for Run {
    fn default() -> Self {
        Run::new()
    }
}

impl From<Builder> for Run {
    /// A `Run` that spawns with `builder`'s options (its `capture_output` setting does not
    /// apply: the output is read in full).
    fn from(builder: Builder) -> Self {
        Run {
            builder,
            input: None,
            timeout: None,
            limit: DEFAULT_OUTPUT_LIMIT,
            wait_delay: DEFAULT_WAIT_DELAY,
        }
    }
}

impl Run {
    /// The defaults: the spawn options of [`Builder::new`], no input (stdin is null), no
    /// timeout, [`DEFAULT_OUTPUT_LIMIT`] and [`DEFAULT_WAIT_DELAY`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    ///
    /// let output = pgroup::Run::new().output(Command::new("sh").args(["-c", "exit 3"]))?;
    /// assert_eq!(output.status.code(), Some(3));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Run::from(Builder::new())
    }

    /// Bytes written to the command's stdin, which is then closed. Without it, stdin is
    /// null (reads see end of file), as with std's `Command::output`. A command that exits
    /// without reading all of it is not an error.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    ///
    /// let output = pgroup::Run::new().input("hello").output(Command::new("wc").arg("-c"))?;
    /// assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "5");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn input(&mut self, bytes: impl Into<Vec<u8>>) -> &mut Self {
        self.input = Some(bytes.into());
        self
    }

    /// How long the leader may run. When it passes, the group is torn down and
    /// [`output`](Run::output) fails with kind `TimedOut` and an [`Incomplete`] that holds
    /// what was read. Once the leader has exited, only the [`wait_delay`](Run::wait_delay)
    /// applies. No timeout by default, as std's.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use std::time::Duration;
    /// use pgroup::Incomplete;
    ///
    /// let err = pgroup::Run::new()
    ///     .timeout(Duration::from_millis(200))
    ///     .output(Command::new("sh").args(["-c", "echo working; sleep 300"]))
    ///     .unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    /// let incomplete = err.get_ref().and_then(|e| e.downcast_ref::<Incomplete>()).unwrap();
    /// assert_eq!(incomplete.output.stdout, b"working\n");
    /// ```
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = Some(timeout);
        self
    }

    /// How many bytes of each stream are kept (the first ones; the rest is read and
    /// counted, so the command never blocks on a full pipe). A stream that exceeds it makes
    /// [`output`](Run::output) fail with an [`Incomplete`] once the command is done.
    /// [`DEFAULT_OUTPUT_LIMIT`] by default.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use pgroup::{Incomplete, IncompleteReason, Stream};
    ///
    /// let err = pgroup::Run::new()
    ///     .output_limit(4)
    ///     .output(Command::new("echo").arg("too long"))
    ///     .unwrap_err();
    /// let incomplete = err.get_ref().and_then(|e| e.downcast_ref::<Incomplete>()).unwrap();
    /// assert_eq!(incomplete.reason, IncompleteReason::LimitExceeded { stream: Stream::Stdout, limit: 4 });
    /// assert_eq!(incomplete.output.stdout, b"too ");
    /// assert_eq!(incomplete.stdout_written, 9);
    /// ```
    pub fn output_limit(&mut self, bytes: usize) -> &mut Self {
        self.limit = bytes;
        self
    }

    /// How long the pipes are read after the leader exited, at most: see
    /// [`DEFAULT_WAIT_DELAY`]. Zero stops at the leader's exit. Either way, once the group is
    /// torn down, what the pipes still hold is read (what the leader wrote before it exited
    /// is never lost).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use std::time::Duration;
    ///
    /// // The background job prints within the delay, then closes the pipes: its line counts.
    /// let output = pgroup::Run::new()
    ///     .wait_delay(Duration::from_secs(10))
    ///     .output(Command::new("sh").args(["-c", "(sleep 0.1; echo late) & echo early"]))?;
    /// assert_eq!(output.stdout, b"early\nlate\n");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_delay(&mut self, delay: Duration) -> &mut Self {
        self.wait_delay = delay;
        self
    }

    /// Runs `cmd` in a new process group and returns its exit status and output, once the
    /// leader has exited and the group is torn down (see [`Run`]).
    ///
    /// The `Command`'s stdin, stdout and stderr settings are replaced: stdout and stderr are
    /// piped and read here, stdin is null or gets the [`input`](Run::input).
    ///
    /// # Errors
    ///
    /// - As [`Builder::spawn`]: the program cannot be started. Nothing is left running.
    /// - The [`timeout`](Run::timeout) passed: kind `TimedOut`, with an [`Incomplete`]
    ///   payload that holds what was read and the status the leader ended with.
    /// - A stream wrote more than the [`output_limit`](Run::output_limit): kind `Other`,
    ///   with an [`Incomplete`] payload (the status is the command's own).
    /// - Reading the pipes or waiting failed (`ppoll`, `waitid`), or teardown failed (as
    ///   [`SpawnedGroup::shutdown`](crate::SpawnedGroup::shutdown)). The group is torn down (in Drop) either way.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use pgroup::Run;
    ///
    /// let output = Run::new().output(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 2"]))?;
    /// assert_eq!(output.status.code(), Some(2));
    /// assert_eq!(output.stdout, b"out\n");
    /// assert_eq!(output.stderr, b"err\n");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn output(&self, cmd: &mut Command) -> io::Result<Output> {
        let mut group = self.prepare(cmd).spawn(cmd)?;
        let mut reading = self.reading(cmd, group.id());
        if let (Some(stdin), Some(input)) = (group.stdin.take(), &self.input) {
            if let Some(mut pipe) = stdin.into_inner() {
                let input = input.clone();
                // Not joined: a process outside the group that holds the pipe without
                // reading it could block it for as long as it lives. A reader gone is
                // EPIPE (the test binary ignores SIGPIPE, as every Rust program does).
                std::thread::Builder::new()
                    .name(format!("pgroup-input-{}", group.id()))
                    .spawn(move || {
                        let _ = pipe.write_all(&input);
                    })?;
            }
        }
        let mut pipes = [
            group.stdout.take().map(|p| File::from(OwnedFd::from(p))),
            group.stderr.take().map(|p| File::from(OwnedFd::from(p))),
        ];
        for pipe in pipes.iter().flatten() {
            sys::set_nonblocking(pipe.as_fd())?;
        }
        let timed_out = loop {
            if reading.leader_running() && group.try_wait()?.is_some() {
                reading.leader_exited();
            }
            let open = pipes.iter().any(Option::is_some);
            let Some(left) = reading.until(open).and_then(time_left) else {
                break reading.timed_out();
            };
            let exit = if reading.leader_running() {
                group.exit_watch().fds()
            } else {
                Vec::new()
            };
            reading.read_ready(&mut pipes, &exit, left, CHUNKS_PER_TURN * READ_CHUNK)?;
        };
        let report = group.shutdown();
        // Every writer in the group is gone: the pipes reach end of file at once, unless a
        // process outside the group holds them.
        let until = Instant::now().checked_add(CAPTURE_DRAIN_BOUND);
        while pipes.iter().any(Option::is_some) {
            let Some(left) = time_left(until) else { break };
            reading.read_ready(&mut pipes, &[], left, PIPE_MAX)?;
        }
        self.finish(&report?.status, timed_out, reading)
    }

    /// The `Command` with its stdio set, and the builder to spawn it with.
    fn prepare(&self, cmd: &mut Command) -> Builder {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if self.input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut builder = self.builder.clone();
        builder.capture_output(false);
        builder
    }

    /// The reading of a run whose leader was just spawned from `cmd`.
    fn reading(&self, cmd: &Command, pid: u32) -> Reading {
        Reading {
            group: format!("{:?} (leader pid {pid})", cmd.get_program()),
            streams: [Collected::new(self.limit), Collected::new(self.limit)],
            buf: vec![0_u8; READ_CHUNK],
            deadline: self.timeout.and_then(|t| Instant::now().checked_add(t)),
            wait_delay: self.wait_delay,
            exited_at: None,
        }
    }

    /// The outcome: the output, or the error that carries it.
    fn finish(&self, status: &ExitStatus, timed_out: bool, reading: Reading) -> io::Result<Output> {
        let [stdout, stderr] = reading.streams;
        let reason = if timed_out {
            IncompleteReason::TimedOut(self.timeout.unwrap_or_default())
        } else if stdout.exceeded() {
            IncompleteReason::LimitExceeded {
                stream: Stream::Stdout,
                limit: self.limit,
            }
        } else if stderr.exceeded() {
            IncompleteReason::LimitExceeded {
                stream: Stream::Stderr,
                limit: self.limit,
            }
        } else {
            return Ok(Output {
                status: *status,
                stdout: stdout.bytes,
                stderr: stderr.bytes,
            });
        };
        Err(Incomplete {
            group: reading.group,
            reason,
            stdout_written: stdout.written,
            stderr_written: stderr.written,
            output: Output {
                status: *status,
                stdout: stdout.bytes,
                stderr: stderr.bytes,
            },
        }
        .into_io())
    }
}

impl Builder {
    /// Runs `cmd` to completion in a new process group, with this builder's options, and
    /// returns its exit status and complete output: the shorthand for
    /// [`Run::from(builder).output(cmd)`](Run::output), with no input, no timeout, and the
    /// default limit and wait delay. See [`Run`].
    ///
    /// # Errors
    ///
    /// As [`Run::output`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    ///
    /// let output = pgroup::Builder::new().output(Command::new("echo").arg("hello"))?;
    /// assert!(output.status.success());
    /// assert_eq!(output.stdout, b"hello\n");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn output(&self, cmd: &mut Command) -> io::Result<Output> {
        Run::from(self.clone()).output(cmd)
    }
}

/// How many chunks a turn of the reading takes from each pipe before it looks at the leader
/// and the clock again.
const CHUNKS_PER_TURN: usize = 16;

/// What a run has read before its teardown, and when that reading ends: at the timeout
/// while the leader runs; once it has exited, when every pipe is closed or the wait delay
/// has passed, whichever comes first. The blocking and the async form share it.
struct Reading {
    /// The group, as its errors name it.
    group: String,
    /// What stdout and stderr wrote.
    streams: [Collected; 2],
    /// The one read buffer.
    buf: Vec<u8>,
    /// When the timeout passes (`None`: never).
    deadline: Option<Instant>,
    wait_delay: Duration,
    /// When the leader's exit was seen.
    exited_at: Option<Instant>,
}

impl Reading {
    fn leader_running(&self) -> bool {
        self.exited_at.is_none()
    }

    /// Records that the leader has exited: from now on the wait delay applies, not the
    /// timeout.
    fn leader_exited(&mut self) {
        self.exited_at.get_or_insert_with(Instant::now);
    }

    /// Until when to read (`Some(None)`: without bound), or `None` once the reading is over
    /// because the leader exited and `pipes_open` says no pipe is left.
    fn until(&self, pipes_open: bool) -> Option<Option<Instant>> {
        match self.exited_at {
            Some(_) if !pipes_open => None,
            Some(at) => Some(at.checked_add(self.wait_delay)),
            None => Some(self.deadline),
        }
    }

    /// Whether a reading that is over ended at the timeout: the leader still ran.
    fn timed_out(&self) -> bool {
        self.leader_running()
    }

    /// Waits up to `left` for one of the open `pipes` (or of `also`) to become readable, then
    /// reads what each pipe holds, up to `budget` bytes each; a pipe at end of file is closed.
    fn read_ready(
        &mut self,
        pipes: &mut [Option<File>; 2],
        also: &[BorrowedFd<'_>],
        left: Option<Duration>,
        budget: usize,
    ) -> io::Result<()> {
        let mut fds: Vec<BorrowedFd<'_>> = pipes.iter().flatten().map(AsFd::as_fd).collect();
        fds.extend_from_slice(also);
        sys::poll_readable(&fds, left)?;
        for (pipe, stream) in pipes.iter_mut().zip(&mut self.streams) {
            read_pipe(pipe, &mut self.buf, budget, |chunk| {
                if let Some(chunk) = chunk {
                    stream.push(chunk);
                }
            });
        }
        Ok(())
    }
}

/// One stream's output: its first `limit` bytes, and how many it wrote.
struct Collected {
    bytes: Vec<u8>,
    written: u64,
    limit: usize,
}

impl Collected {
    fn new(limit: usize) -> Collected {
        Collected {
            bytes: Vec::new(),
            written: 0,
            limit,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        let room = self.limit.saturating_sub(self.bytes.len());
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
        self.written = self
            .written
            .saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
    }

    fn exceeded(&self) -> bool {
        self.written > u64::try_from(self.limit).unwrap_or(u64::MAX)
    }
}
