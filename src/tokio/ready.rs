//! Readiness and captured output of the async [`SpawnedGroup`]: the waits for a line and a
//! port as futures.

use std::future::poll_fn;
use std::io;
use std::time::Duration;

use ::tokio::net::{lookup_host, TcpStream, ToSocketAddrs};
use ::tokio::time::timeout_at;

use super::SpawnedGroup;
use crate::capture::{LineCursor, Stream};
use crate::group::{LineWait, TcpWait};

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
        let wait = LineWait::new(self.group(), stream, timeout)?;
        let mut cursor = LineCursor::new(stream);
        // `poll_line` yields between two looks, so the timer runs, and it looks at the
        // deadline itself too: a stream that never pauses cannot outlast the timeout.
        let search = poll_fn(|cx| {
            let passed = || wait.passed();
            wait.capture()
                .poll_line(&mut cursor, cx.waker(), &mut predicate, &passed)
        });
        let found = match wait.deadline() {
            Some(deadline) => timeout_at(deadline.into(), search)
                .await
                .unwrap_or(Err(None)),
            None => search.await,
        };
        let ended = match found {
            Ok(line) => return Ok(line),
            Err(ended) => ended,
        };
        let status = match wait.status_wait(ended) {
            Some(limit) => self.wait_timeout(limit).await?,
            None => None,
        };
        Err(wait.not_ready(ended, status))
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
        addr: impl ToSocketAddrs,
        timeout: Duration,
    ) -> io::Result<()> {
        let mut wait = TcpWait::new(self.group(), timeout);
        wait.resolved(lookup_host(addr).await?);
        let mut exited = self.try_wait()?;
        while exited.is_none() {
            for (addr, limit) in wait.attempts() {
                if let Ok(Ok(_connected)) =
                    ::tokio::time::timeout(limit, TcpStream::connect(addr)).await
                {
                    return Ok(());
                }
            }
            exited = self.wait_timeout(wait.pause()?).await?;
        }
        Err(wait.not_ready(exited))
    }
}
