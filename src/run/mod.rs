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

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::capture::{write_tails, StatusText, Stream, PIPE_MAX, READ_CHUNK};
use crate::deadline::time_left;
use crate::group::CAPTURE_DRAIN_BOUND;
use crate::{sys, Builder};

#[cfg(feature = "tokio")]
mod tokio;

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
        let program = cmd.get_program().to_owned();
        let mut group = self.prepare(cmd).spawn(cmd)?;
        let name = format!("{program:?} (leader pid {})", group.id());
        let deadline = self.timeout.and_then(|t| Instant::now().checked_add(t));
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
        let mut streams = [Collected::new(self.limit), Collected::new(self.limit)];
        let mut buf = vec![0_u8; READ_CHUNK];
        let mut exited_at: Option<Instant> = None;
        let timed_out = loop {
            if exited_at.is_none() && group.try_wait()?.is_some() {
                exited_at = Some(Instant::now());
            }
            let open = pipes.iter().any(Option::is_some);
            let until = match exited_at {
                Some(_) if !open => break false,
                Some(at) => at.checked_add(self.wait_delay),
                None => deadline,
            };
            let Some(left) = time_left(until) else {
                break exited_at.is_none();
            };
            let mut fds: Vec<BorrowedFd<'_>> = pipes.iter().flatten().map(AsFd::as_fd).collect();
            if exited_at.is_none() {
                fds.extend(group.exit_watch().fds());
            }
            sys::poll_readable(&fds, left)?;
            read_pipes(&mut pipes, &mut streams, &mut buf, 16 * READ_CHUNK);
        };
        let report = group.shutdown();
        // Every writer in the group is gone: the pipes reach end of file at once, unless a
        // process outside the group holds them.
        let until = Instant::now().checked_add(CAPTURE_DRAIN_BOUND);
        while pipes.iter().any(Option::is_some) {
            let Some(left) = time_left(until) else { break };
            let fds: Vec<BorrowedFd<'_>> = pipes.iter().flatten().map(AsFd::as_fd).collect();
            sys::poll_readable(&fds, left)?;
            read_pipes(&mut pipes, &mut streams, &mut buf, PIPE_MAX);
        }
        self.finish(name, &report?.status, timed_out, streams)
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

    /// The outcome: the output, or the error that carries it.
    fn finish(
        &self,
        group: String,
        status: &ExitStatus,
        timed_out: bool,
        [stdout, stderr]: [Collected; 2],
    ) -> io::Result<Output> {
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
            group,
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

/// Reads what each open pipe holds, up to `budget` bytes each; closes those at end of file.
fn read_pipes(
    pipes: &mut [Option<File>; 2],
    streams: &mut [Collected; 2],
    buf: &mut [u8],
    budget: usize,
) {
    for (pipe, stream) in pipes.iter_mut().zip(streams.iter_mut()) {
        let mut read = 0;
        while let Some(file) = pipe {
            if read >= budget {
                break;
            }
            match file.read(buf) {
                Ok(0) => *pipe = None,
                Ok(n) => {
                    read += n;
                    stream.push(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => *pipe = None,
            }
        }
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

/// Why [`Run::output`] has no complete output: the payload of its `io::Error`, reachable
/// with [`io::Error::get_ref`] and `downcast_ref`, with what was read.
///
/// Its `Display` and `Debug` (what `unwrap` and `expect` print) are the same text: the
/// command, what happened, the leader's status, and the last 4 KiB of each stream on lines
/// of their own. The alternate `Debug` (`{:#?}`) shows the fields.
///
/// # Examples
///
/// ```
/// use std::process::Command;
/// use std::time::Duration;
/// use pgroup::{Incomplete, IncompleteReason};
///
/// let err = pgroup::Run::new()
///     .timeout(Duration::from_millis(200))
///     .output(Command::new("sh").args(["-c", "echo 'step 1 done'; sleep 300"]))
///     .unwrap_err();
/// let incomplete = err.get_ref().and_then(|e| e.downcast_ref::<Incomplete>()).unwrap();
/// assert_eq!(incomplete.reason, IncompleteReason::TimedOut(Duration::from_millis(200)));
/// assert_eq!(incomplete.output.stdout, b"step 1 done\n");
/// assert!(!incomplete.output.status.success()); // torn down: SIGTERM
/// assert!(format!("{err:?}").contains("\nstep 1 done\n"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct Incomplete {
    /// The group, as in every error of the crate: the program and the leader's pid.
    pub group: String,
    /// What happened.
    pub reason: IncompleteReason,
    /// What was read (each stream's first bytes up to the limit), and the status the leader
    /// ended with: its own, or the signal of the teardown after a timeout.
    pub output: Output,
    /// How many bytes the command wrote to stdout, kept or not.
    pub stdout_written: u64,
    /// How many bytes the command wrote to stderr, kept or not.
    pub stderr_written: u64,
}

/// Why [`Run::output`] returned an [`Incomplete`].
///
/// # Examples
///
/// ```
/// use std::io::ErrorKind;
/// use std::time::Duration;
/// use pgroup::IncompleteReason;
///
/// assert_eq!(IncompleteReason::TimedOut(Duration::from_secs(1)).kind(), ErrorKind::TimedOut);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IncompleteReason {
    /// The timeout passed before the leader exited; the group was torn down.
    TimedOut(Duration),
    /// A stream wrote more than the limit; its first `limit` bytes are kept.
    LimitExceeded {
        /// The stream (stdout first, if both did).
        stream: Stream,
        /// The limit ([`Run::output_limit`]).
        limit: usize,
    },
}

impl IncompleteReason {
    /// The `io::ErrorKind` of the error that carries it: `TimedOut`, or `Other` for a
    /// limit exceeded.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::ErrorKind;
    /// use pgroup::{IncompleteReason, Stream};
    ///
    /// let over = IncompleteReason::LimitExceeded { stream: Stream::Stdout, limit: 10 };
    /// assert_eq!(over.kind(), ErrorKind::Other);
    /// ```
    #[must_use]
    pub fn kind(self) -> io::ErrorKind {
        match self {
            IncompleteReason::TimedOut(_) => io::ErrorKind::TimedOut,
            IncompleteReason::LimitExceeded { .. } => io::ErrorKind::Other,
        }
    }
}

impl Incomplete {
    fn into_io(self) -> io::Error {
        io::Error::new(self.reason.kind(), self)
    }
}

impl fmt::Display for Incomplete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = StatusText(self.output.status);
        match self.reason {
            IncompleteReason::TimedOut(timeout) => write!(
                f,
                "pgroup: {} did not exit within its timeout of {timeout:?}; its group was torn \
                 down (leader: {status})",
                self.group
            )?,
            IncompleteReason::LimitExceeded { stream, limit } => {
                let written = match stream {
                    Stream::Stdout => self.stdout_written,
                    Stream::Stderr => self.stderr_written,
                };
                write!(
                    f,
                    "pgroup: {} wrote {written} bytes to {stream}, more than the output limit of \
                     {limit} (the first {limit} are kept; Run::output_limit raises it) \
                     (leader: {status})",
                    self.group
                )?;
            }
        }
        let stdout = String::from_utf8_lossy(&self.output.stdout);
        let stderr = String::from_utf8_lossy(&self.output.stderr);
        write_tails(f, Some(&stdout), Some(&stderr))
    }
}

impl fmt::Debug for Incomplete {
    /// The same text as `Display`; `{:#?}` shows the fields.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            return fmt::Display::fmt(self, f);
        }
        f.debug_struct("Incomplete")
            .field("group", &self.group)
            .field("reason", &self.reason)
            .field("status", &StatusText(self.output.status))
            .field("stdout", &String::from_utf8_lossy(&self.output.stdout))
            .field("stderr", &String::from_utf8_lossy(&self.output.stderr))
            .field("stdout_written", &self.stdout_written)
            .field("stderr_written", &self.stderr_written)
            .finish()
    }
}

impl std::error::Error for Incomplete {}
