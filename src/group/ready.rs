//! Readiness and captured output: the waits for a line and a port, and the failure report.
//!
//! [`LineWait`] and [`TcpWait`] hold what the blocking waits here and the async ones of
//! `pgroup::tokio` share: the deadline, when to look at the leader's exit status, the
//! backoff between connection attempts, and the [`NotReady`] error. The waits themselves
//! only wait.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::capture::{
    self, Capture, Ended, NotReady, NotReadyReason, Reader, Stream, CAPTURE_DRAIN_BOUND,
};
use crate::deadline::time_left;
use crate::leader::ExitWatch;

use super::SpawnedGroup;

/// The shortest wait of [`SpawnedGroup::wait_for_tcp`] between two rounds of connection
/// attempts; it doubles up to [`TCP_BACKOFF_MAX`].
const TCP_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// The longest wait between two rounds of connection attempts.
const TCP_BACKOFF_MAX: Duration = Duration::from_millis(100);
/// The longest a connection attempt may take.
const TCP_ATTEMPT_MAX: Duration = Duration::from_secs(1);

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
        self.capture()?.text(stream)
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
        let wait = LineWait::new(self, stream, timeout)?;
        let found = wait
            .capture()
            .wait_for_line(stream, wait.deadline(), &mut predicate);
        let ended = match found {
            Ok(line) => return Ok(line),
            Err(ended) => ended,
        };
        let status = match wait.status_wait(ended) {
            Some(limit) => self.wait_timeout(limit)?,
            None => None,
        };
        Err(wait.not_ready(ended, status))
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
        let mut wait = TcpWait::new(self, timeout);
        wait.resolved(addr.to_socket_addrs()?);
        let mut exited = self.try_wait()?;
        while exited.is_none() {
            for (addr, limit) in wait.attempts() {
                if TcpStream::connect_timeout(addr, limit).is_ok() {
                    return Ok(());
                }
            }
            exited = self.wait_timeout(wait.pause()?)?;
        }
        Err(wait.not_ready(exited))
    }

    /// The leader's exit watch, for the waits that poll it with other descriptors
    /// ([`Run`](crate::Run)): its `fds()` become readable once the leader has exited
    /// (level-triggered, in every tier); then [`try_wait`](SpawnedGroup::try_wait) has the
    /// status (in the supervised tiers it waits for the supervisor's report, which follows
    /// at once).
    pub(crate) fn exit_watch(&self) -> &ExitWatch {
        &self.watch
    }

    /// The captured output (`None` without [`Builder::capture_output`](crate::Builder::capture_output)).
    fn capture(&self) -> Option<&Capture> {
        self.capture.as_ref().map(Reader::capture)
    }

    /// The error of a readiness wait, with the captured tails. A known exit `status` means
    /// the leader exited, whatever else ended the wait.
    fn not_ready(
        &self,
        awaited: String,
        reason: NotReadyReason,
        status: Option<ExitStatus>,
    ) -> io::Error {
        let reason = if status.is_some() {
            NotReadyReason::LeaderExited
        } else {
            reason
        };
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

/// A wait for a line of a captured stream, blocking or async.
pub(crate) struct LineWait<'g> {
    group: &'g SpawnedGroup,
    capture: &'g Capture,
    stream: Stream,
    /// `None`: the timeout is too long for an `Instant`, so there is none.
    deadline: Option<Instant>,
}

impl<'g> LineWait<'g> {
    /// A wait of `timeout` from now; the error if the output is not captured.
    pub(crate) fn new(
        group: &'g SpawnedGroup,
        stream: Stream,
        timeout: Duration,
    ) -> io::Result<LineWait<'g>> {
        let deadline = Instant::now().checked_add(timeout);
        let Some(capture) = group.capture() else {
            return Err(group.not_ready(awaited_line(stream), NotReadyReason::NotCaptured, None));
        };
        Ok(LineWait {
            group,
            capture,
            stream,
            deadline,
        })
    }

    pub(crate) fn capture(&self) -> &'g Capture {
        self.capture
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the deadline has passed.
    #[cfg(feature = "tokio")]
    pub(crate) fn passed(&self) -> bool {
        time_left(self.deadline).is_none()
    }

    /// How long to wait for the leader's exit status before the error of a wait that ended
    /// without a line (`ended`; `None`: at its deadline): not at all after the deadline or
    /// for a stream not captured; zero (a look) after the leader's exit; after the stream
    /// closed, up to [`CAPTURE_DRAIN_BOUND`] within the time left, since an exiting leader
    /// closes its pipes a moment before the kernel reports its exit, and the error is to say
    /// which it was.
    pub(crate) fn status_wait(&self, ended: Option<Ended>) -> Option<Duration> {
        match ended? {
            Ended::NotCaptured => None,
            Ended::LeaderExited => Some(Duration::ZERO),
            Ended::StreamClosed => Some(match time_left(self.deadline) {
                Some(Some(left)) => left.min(CAPTURE_DRAIN_BOUND),
                Some(None) => CAPTURE_DRAIN_BOUND,
                None => Duration::ZERO,
            }),
        }
    }

    /// The error of a wait that ended without a line (`ended`, as for
    /// [`status_wait`](LineWait::status_wait)), with the leader's `status` if known.
    pub(crate) fn not_ready(&self, ended: Option<Ended>, status: Option<ExitStatus>) -> io::Error {
        let reason = ended.map_or(NotReadyReason::TimedOut, NotReadyReason::from);
        self.group
            .not_ready(awaited_line(self.stream), reason, status)
    }
}

fn awaited_line(stream: Stream) -> String {
    format!("a matching line on {stream}")
}

/// A wait for a TCP port, blocking or async: rounds of connection attempts, one to each of
/// the port's addresses, with a pause between two rounds that doubles from
/// [`TCP_BACKOFF_MIN`] to [`TCP_BACKOFF_MAX`]. The caller watches the leader's exit during
/// the pause.
pub(crate) struct TcpWait<'g> {
    group: &'g SpawnedGroup,
    deadline: Option<Instant>,
    addrs: Vec<SocketAddr>,
    backoff: Duration,
}

impl<'g> TcpWait<'g> {
    /// A wait of `timeout` from now, which also counts the resolution of the address.
    pub(crate) fn new(group: &'g SpawnedGroup, timeout: Duration) -> TcpWait<'g> {
        TcpWait {
            group,
            deadline: Instant::now().checked_add(timeout),
            addrs: Vec::new(),
            backoff: TCP_BACKOFF_MIN,
        }
    }

    /// The addresses the port's address resolved to.
    pub(crate) fn resolved(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) {
        self.addrs = addrs.into_iter().collect();
    }

    /// The attempts of a round: each address, with how long its attempt may take (at most
    /// [`TCP_ATTEMPT_MAX`], within the time left). The round ends early when the time is up.
    pub(crate) fn attempts(&self) -> impl Iterator<Item = (&SocketAddr, Duration)> + '_ {
        self.addrs.iter().map_while(|addr| {
            let left = time_left(self.deadline)?;
            Some((
                addr,
                left.map_or(TCP_ATTEMPT_MAX, |l| l.min(TCP_ATTEMPT_MAX)),
            ))
        })
    }

    /// The pause after a round (the backoff, within the time left), or the error once the
    /// time is up.
    pub(crate) fn pause(&mut self) -> io::Result<Duration> {
        let Some(left) = time_left(self.deadline) else {
            return Err(self.not_ready(None));
        };
        let pause = left.map_or(self.backoff, |l| l.min(self.backoff));
        self.backoff = (self.backoff * 2).min(TCP_BACKOFF_MAX);
        Ok(pause)
    }

    /// The error: the leader exited with `status`, or (`None`) the time is up.
    pub(crate) fn not_ready(&self, status: Option<ExitStatus>) -> io::Error {
        let awaited = match self.addrs.as_slice() {
            [one] => format!("{one} accepted a connection"),
            many => format!("one of {many:?} accepted a connection"),
        };
        self.group
            .not_ready(awaited, NotReadyReason::TimedOut, status)
    }
}
