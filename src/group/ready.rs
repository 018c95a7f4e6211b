//! Readiness and captured output: the waits for a line and a port, and the failure report.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::capture::{self, NotReady, NotReadyReason, Reader, Stream};
use crate::leader::ExitWatch;

use super::SpawnedGroup;
use crate::deadline::time_left;

/// How long teardown waits, after the reap, for the captured pipes to reach end of file: only
/// a process that left the group and still holds them makes it wait that long.
pub(crate) const CAPTURE_DRAIN_BOUND: Duration = Duration::from_millis(500);

impl SpawnedGroup {
    /// The captured tail of `stream` so far (its last [`CAPTURE_LIMIT`](crate::CAPTURE_LIMIT)
    /// bytes, lossily decoded as UTF-8, beginning with `[… N bytes cut]` if the stream was
    /// longer), or `None` without [`Builder::capture_output`](crate::Builder::capture_output). It takes the capture's lock for
    /// the copy of one tail: a child that floods its output does not hold it up.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use pgroup::Stream;
    ///
    /// let group = pgroup::Builder::new()
    ///     .capture_output(true)
    ///     .spawn(Command::new("sh").args(["-c", "echo hello; sleep 30"]))?;
    /// group.wait_for_line(Stream::Stdout, std::time::Duration::from_secs(10), |_| true)?;
    /// assert_eq!(group.captured(Stream::Stdout).as_deref(), Some("hello\n"));
    /// assert_eq!(group.captured(Stream::Stderr).as_deref(), Some(""));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn captured(&self, stream: Stream) -> Option<String> {
        self.capture.as_ref()?.capture().text(stream)
    }

    /// Waits until a line of the captured `stream` matches `predicate`, and returns it
    /// (without its line end), so that a port can be read from it.
    ///
    /// Every line still in the captured tail is looked at first, then each new one as it
    /// arrives, so a line printed before the call counts and two calls with the same
    /// predicate return the same line. A line ends at `\n`, `\r\n` or a lone `\r` (so a
    /// progress bar's updates are lines of their own, and do not hide the line after them).
    /// A line longer than the tail is handed over as its last bytes, behind the marker
    /// `[… N bytes cut]` (at most [`CAPTURE_LIMIT`](crate::CAPTURE_LIMIT) in all); lines a
    /// flood pushes out of the tail before the wait looks at them are not seen. The wait is
    /// driven by the reader thread, which wakes it for each new chunk: no polling. It ends
    /// early, with an error, when the leader exits (after the lines it wrote before its exit
    /// were looked at) or the stream is closed, and at its timeout however fast the child
    /// writes. The predicate runs on the calling thread, with no lock held.
    ///
    /// A program that buffers its output when it is not a terminal writes the line only
    /// when its buffer fills or it exits, which usually means never: run Python with `-u`,
    /// and see [`Builder::capture_output`](crate::Builder::capture_output).
    ///
    /// # Errors
    ///
    /// An [`io::Error`] whose payload is a [`NotReady`] (with the reason, the leader's exit
    /// status and the captured tails, all in its message too, and in its `Debug`, which is
    /// what `expect` and a test returning `Result` print), of kind `TimedOut` when
    /// `timeout` passed, `UnexpectedEof` when the leader exited or the stream was closed
    /// first, `InvalidInput` when the output is not captured. Or as
    /// [`try_wait`](SpawnedGroup::try_wait), for the exit status.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use std::time::Duration;
    /// use pgroup::{Builder, Stream};
    ///
    /// let server = Builder::new().capture_output(true).spawn(
    ///     Command::new("sh").args(["-c", "echo 'listening on 127.0.0.1:8123'; sleep 30"]),
    /// )?;
    /// let line = server.wait_for_line(Stream::Stdout, Duration::from_secs(10), |l| {
    ///     l.starts_with("listening on")
    /// })?;
    /// let port: u16 = line.rsplit(':').next().unwrap().parse().unwrap();
    /// assert_eq!(port, 8123);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_for_line(
        &self,
        stream: Stream,
        timeout: Duration,
        mut predicate: impl FnMut(&str) -> bool,
    ) -> io::Result<String> {
        let awaited = format!("a matching line on {stream}");
        let Some(reader) = &self.capture else {
            return Err(self.not_ready(awaited, NotReadyReason::NotCaptured, None));
        };
        let deadline = Instant::now().checked_add(timeout);
        match reader
            .capture()
            .wait_for_line(stream, deadline, &mut predicate)
        {
            Ok(line) => Ok(line),
            Err(ended) => {
                let mut reason = ended.map_or(NotReadyReason::TimedOut, NotReadyReason::from);
                let status = match reason {
                    NotReadyReason::TimedOut | NotReadyReason::NotCaptured => None,
                    NotReadyReason::LeaderExited => self.try_wait()?,
                    // An exiting leader closes its pipes a moment before the kernel reports
                    // its exit: say which it was (within the timeout).
                    _ => {
                        let bound = Instant::now() + CAPTURE_DRAIN_BOUND;
                        self.wait_until(Some(deadline.map_or(bound, |d| d.min(bound))))?
                    }
                };
                if status.is_some() {
                    reason = NotReadyReason::LeaderExited;
                }
                Err(self.not_ready(awaited, reason, status))
            }
        }
    }

    /// Waits until `addr` accepts TCP connections (a connection is made and closed at
    /// once), or `timeout` passes, or the leader exits.
    ///
    /// Connecting is a poll by nature: attempts are spaced by a backoff from 5 ms, doubling
    /// up to 100 ms, and between attempts the wait watches the leader's exit, so a server
    /// that dies ends the wait at once. `addr` is resolved once, before the first attempt;
    /// each of its addresses is tried. The server sees each attempt as a connection that
    /// closes without a request. Output capture is not needed, but with it the error
    /// carries the tails.
    ///
    /// # Errors
    ///
    /// `addr` cannot be resolved; or an [`io::Error`] with a [`NotReady`] payload (kind
    /// `TimedOut`, or `UnexpectedEof` when the leader exited first, with its status);
    /// or as [`try_wait`](SpawnedGroup::try_wait).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use std::time::Duration;
    ///
    /// // Nothing listens on port 1 of localhost, and this "server" exits at once.
    /// let server = pgroup::SpawnedGroup::spawn(Command::new("sh").args(["-c", "exit 7"]))?;
    /// let err = server.wait_for_tcp("127.0.0.1:1", Duration::from_secs(10)).unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    /// assert!(err.to_string().contains("the leader exited (exit status 7)"), "{err}");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_for_tcp(&self, addr: impl ToSocketAddrs, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now().checked_add(timeout);
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        let awaited = match addrs.as_slice() {
            [one] => format!("{one} accepted a connection"),
            many => format!("one of {many:?} accepted a connection"),
        };
        let mut backoff = capture::TCP_BACKOFF_MIN;
        loop {
            if let Some(status) = self.try_wait()? {
                return Err(self.not_ready(awaited, NotReadyReason::LeaderExited, Some(status)));
            }
            for addr in &addrs {
                let Some(left) = time_left(deadline) else {
                    break;
                };
                let attempt =
                    left.map_or(Duration::from_secs(1), |l| l.min(Duration::from_secs(1)));
                if TcpStream::connect_timeout(addr, attempt).is_ok() {
                    return Ok(());
                }
            }
            let Some(left) = time_left(deadline) else {
                return Err(self.not_ready(awaited, NotReadyReason::TimedOut, None));
            };
            let pause = left.map_or(backoff, |l| l.min(backoff));
            if let Some(status) = self.wait_timeout(pause)? {
                return Err(self.not_ready(awaited, NotReadyReason::LeaderExited, Some(status)));
            }
            backoff = (backoff * 2).min(capture::TCP_BACKOFF_MAX);
        }
    }

    /// The leader's exit watch, for the waits that poll it with other descriptors
    /// ([`Run`](crate::Run)): `leader_pidfd()` is readable once the leader has exited
    /// (level-triggered, in every tier); then [`try_wait`](SpawnedGroup::try_wait) has the
    /// status (in the supervised tiers it waits for the supervisor's report, which follows
    /// at once).
    pub(crate) fn exit_watch(&self) -> &ExitWatch {
        &self.watch
    }

    /// The captured output, for the async front end (`Capture::next_lines`).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // the async front end's
    pub(crate) fn capture(&self) -> Option<&capture::Capture> {
        self.capture.as_ref().map(Reader::capture)
    }

    /// The error of a readiness wait, with the captured tails.
    pub(crate) fn not_ready(
        &self,
        awaited: String,
        reason: NotReadyReason,
        status: Option<ExitStatus>,
    ) -> io::Error {
        if let (Some(_), Some(reader)) = (status, &self.capture) {
            // The leader's last words may still be in the pipes.
            reader
                .capture()
                .await_leader_exit(Instant::now() + CAPTURE_DRAIN_BOUND);
        }
        NotReady {
            group: self.context.clone(),
            awaited,
            reason,
            status,
            stdout: self.captured(Stream::Stdout),
            stderr: self.captured(Stream::Stderr),
        }
        .into_io()
    }

    /// Ends the capture (bounded by `deadline` and [`CAPTURE_DRAIN_BOUND`]) and returns the
    /// tails, and how many bytes of each stream were dropped before them.
    pub(super) fn finish_capture(
        &mut self,
        deadline: Instant,
    ) -> (Option<String>, Option<String>, [u64; 2]) {
        let Some(reader) = &mut self.capture else {
            return (None, None, [0, 0]);
        };
        reader.finish(deadline.min(Instant::now() + CAPTURE_DRAIN_BOUND));
        let capture = reader.capture();
        (
            capture.text(Stream::Stdout),
            capture.text(Stream::Stderr),
            [
                capture.dropped(Stream::Stdout),
                capture.dropped(Stream::Stderr),
            ],
        )
    }

    /// Prints the captured tails to stderr, with `eprintln!` (which libtest captures and
    /// shows with a failed test, as nextest does), for a Drop during a panic: see
    /// [`Builder::capture_output`](crate::Builder::capture_output). Nothing without capture.
    pub(crate) fn print_captured_output(&self, status: Option<ExitStatus>) {
        if let Some(reader) = &self.capture {
            eprintln!(
                "{}",
                capture::failure_report(&self.context, status, reader.capture())
            );
        }
    }
}
