//! Readiness and captured output of the async [`SpawnedGroup`]: the waits for a line and a
//! port as futures.

use std::future::poll_fn;
use std::io;
use std::time::Duration;

use super::SpawnedGroup;
use crate::capture::{self, LineCursor, NotReadyReason, Stream};
use crate::group::CAPTURE_DRAIN_BOUND;

impl SpawnedGroup {
    /// The captured tail of `stream`, as [`crate::SpawnedGroup::captured`]: `None` unless
    /// the group was spawned with [`Builder::capture_output`](crate::Builder::capture_output).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use pgroup::Stream;
    /// use tokio::process::Command;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let group = pgroup::Builder::new()
    ///     .capture_output(true)
    ///     .spawn_tokio(Command::new("sh").args(["-c", "echo hello; sleep 30"]))?;
    /// group.wait_for_line(Stream::Stdout, Duration::from_secs(10), |_| true).await?;
    /// assert_eq!(group.captured(Stream::Stdout).as_deref(), Some("hello\n"));
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn captured(&self, stream: Stream) -> Option<String> {
        self.group().captured(stream)
    }

    /// Waits until a line of the captured `stream` matches `predicate`, and returns it: the
    /// async form of [`crate::SpawnedGroup::wait_for_line`], with the same rules (every line
    /// still in the tail first, then each new one; ends early when the leader exits or the
    /// stream closes). The task sleeps until the reader thread sees a new line: it is woken
    /// by it, never polls, and never blocks the runtime while it waits. (Once the leader has
    /// exited, building the error may block for up to half a second while the reader drains
    /// the leader's last output.)
    ///
    /// # Errors
    ///
    /// As [`crate::SpawnedGroup::wait_for_line`]: an [`io::Error`] with a
    /// [`NotReady`](crate::NotReady) payload, of kind `TimedOut`, `UnexpectedEof` or
    /// `InvalidInput` (the output is not captured).
    ///
    /// # Panics
    ///
    /// In a runtime whose timer is not enabled (`#[tokio::test]` enables it).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use pgroup::Stream;
    /// use tokio::process::Command;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let server = pgroup::Builder::new().capture_output(true).spawn_tokio(
    ///     Command::new("sh").args(["-c", "echo 'listening on 127.0.0.1:8123'; sleep 30"]),
    /// )?;
    /// let line = server
    ///     .wait_for_line(Stream::Stdout, Duration::from_secs(10), |l| l.starts_with("listening"))
    ///     .await?;
    /// assert!(line.ends_with(":8123"));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_for_line(
        &self,
        stream: Stream,
        timeout: Duration,
        mut predicate: impl FnMut(&str) -> bool,
    ) -> io::Result<String> {
        let group = self.group();
        let awaited = format!("a matching line on {stream}");
        let Some(capture) = group.capture() else {
            return Err(group.not_ready(awaited, NotReadyReason::NotCaptured, None));
        };
        let deadline = ::tokio::time::Instant::now() + timeout;
        let passed = || ::tokio::time::Instant::now() >= deadline;
        let mut cursor = LineCursor::new(stream);
        // `poll_line` yields between two looks, so the timer runs, and it looks at the
        // deadline itself too: a stream that never pauses cannot outlast the timeout.
        let search =
            poll_fn(|cx| capture.poll_line(&mut cursor, cx.waker(), &mut predicate, &passed));
        let ended = match ::tokio::time::timeout_at(deadline, search).await {
            Ok(Ok(line)) => return Ok(line),
            Ok(Err(ended)) => ended,
            Err(_elapsed) => None,
        };
        let mut reason = ended.map_or(NotReadyReason::TimedOut, NotReadyReason::from);
        let status = match reason {
            NotReadyReason::TimedOut | NotReadyReason::NotCaptured => None,
            NotReadyReason::LeaderExited => self.try_wait()?,
            // An exiting leader closes its pipes a moment before the kernel reports its
            // exit: say which it was (within the timeout).
            _ => {
                let left = deadline.saturating_duration_since(::tokio::time::Instant::now());
                self.wait_timeout(CAPTURE_DRAIN_BOUND.min(left)).await?
            }
        };
        if status.is_some() {
            reason = NotReadyReason::LeaderExited;
        }
        Err(group.not_ready(awaited, reason, status))
    }

    /// Waits until `addr` accepts TCP connections, or `timeout` passes, or the leader
    /// exits: the async form of [`crate::SpawnedGroup::wait_for_tcp`], with tokio's
    /// connect and resolver, the same backoff between attempts (5 ms doubling to 100 ms),
    /// and the leader's exit watched between them, so that a server that dies ends the wait
    /// at once.
    ///
    /// # Errors
    ///
    /// As [`crate::SpawnedGroup::wait_for_tcp`]: `addr` cannot be resolved; or an
    /// [`io::Error`] with a [`NotReady`](crate::NotReady) payload, of kind `TimedOut`, or
    /// `UnexpectedEof` when the leader exited first (with its status).
    ///
    /// # Panics
    ///
    /// In a runtime whose timer is not enabled (`#[tokio::test]` enables it).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::process::Command;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// // Nothing listens on port 1 of localhost, and this "server" exits at once.
    /// let server = pgroup::tokio::SpawnedGroup::spawn(Command::new("sh").args(["-c", "exit 7"]))?;
    /// let err = server.wait_for_tcp("127.0.0.1:1", Duration::from_secs(10)).await.unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    /// assert!(err.to_string().contains("the leader exited (exit status 7)"), "{err}");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_for_tcp(
        &self,
        addr: impl ::tokio::net::ToSocketAddrs,
        timeout: Duration,
    ) -> io::Result<()> {
        let deadline = ::tokio::time::Instant::now() + timeout;
        let addrs: Vec<std::net::SocketAddr> = ::tokio::net::lookup_host(addr).await?.collect();
        let awaited = match addrs.as_slice() {
            [one] => format!("{one} accepted a connection"),
            many => format!("one of {many:?} accepted a connection"),
        };
        let exited = |status| {
            self.group()
                .not_ready(awaited.clone(), NotReadyReason::LeaderExited, Some(status))
        };
        let mut backoff = capture::TCP_BACKOFF_MIN;
        loop {
            if let Some(status) = self.try_wait()? {
                return Err(exited(status));
            }
            for addr in &addrs {
                let attempt = ::tokio::time::timeout_at(
                    deadline.min(::tokio::time::Instant::now() + Duration::from_secs(1)),
                    ::tokio::net::TcpStream::connect(addr),
                );
                if let Ok(Ok(_connected)) = attempt.await {
                    return Ok(());
                }
            }
            let now = ::tokio::time::Instant::now();
            if now >= deadline {
                return Err(self
                    .group()
                    .not_ready(awaited, NotReadyReason::TimedOut, None));
            }
            let pause = backoff.min(deadline - now);
            if let Some(status) = self.wait_timeout(pause).await? {
                return Err(exited(status));
            }
            backoff = (backoff * 2).min(capture::TCP_BACKOFF_MAX);
        }
    }
}
