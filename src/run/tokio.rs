//! [`Run::output_tokio`] and [`Builder::output_tokio`]: the async form of [`Run::output`], for
//! tokio.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::process::Output;
use std::task::{Context, Poll};

use ::tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use ::tokio::process::{ChildStdin, Command};
use ::tokio::time::{sleep_until, Instant, Sleep};

use super::{Reading, Run, CAPTURE_DRAIN_BOUND, CHUNKS_PER_TURN};
use crate::tokio::LeaderStdin;
use crate::Builder;

type Pipe = Option<Box<dyn AsyncRead + Unpin + Send>>;

impl Run {
    /// Runs `cmd` to completion in a new process group: the async form of
    /// [`Run::output`], with the same rules, for tokio. The pipes are tokio's, the
    /// leader's exit is awaited through the runtime's reactor (see [`crate::tokio`]), and
    /// the teardown runs on the crate's background thread: nothing blocks the runtime.
    /// Dropping the future tears the group down (in the background).
    ///
    /// # Errors
    ///
    /// As [`Run::output`], and as [`Builder::spawn_tokio`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with its I/O driver and its timer (`#[tokio::test]` and
    /// `#[tokio::main]` enable both), as [`Builder::spawn_tokio`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::process::Command;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let output = pgroup::Run::new()
    ///     .input("b\na\n")
    ///     .timeout(Duration::from_secs(30))
    ///     .output_tokio(&mut Command::new("sort"))
    ///     .await?;
    /// assert_eq!(output.stdout, b"a\nb\n");
    /// // A background process that holds the pipes does not hang it, nor survive it.
    /// let output = pgroup::Run::new()
    ///     .output_tokio(Command::new("sh").args(["-c", "sleep 300 & echo started"]))
    ///     .await?;
    /// assert_eq!(output.stdout, b"started\n");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn output_tokio(&self, cmd: &mut Command) -> io::Result<Output> {
        let mut group = self.prepare(cmd.as_std_mut()).spawn_tokio(cmd)?;
        let mut reading = self.reading(cmd.as_std(), group.id());
        let mut input = group
            .stdin
            .take()
            .and_then(LeaderStdin::into_inner)
            .zip(self.input.as_deref());
        let mut pipes: [Pipe; 2] = [
            group.stdout.take().map(|p| Box::new(p) as _),
            group.stderr.take().map(|p| Box::new(p) as _),
        ];
        let timed_out = {
            let mut exit = pin!(group.wait_exit());
            // The timer of the reading's end: the timeout, then the wait delay.
            let mut timer: Option<Pin<Box<Sleep>>> = None;
            poll_fn(|cx| -> Poll<io::Result<bool>> {
                write_input(cx, &mut input);
                let more = read_pipes(cx, &mut pipes, &mut reading);
                if reading.leader_running() {
                    if let Poll::Ready(status) = exit.as_mut().poll(cx) {
                        status?;
                        reading.leader_exited();
                    }
                }
                let Some(until) = reading.until(pipes.iter().any(Option::is_some)) else {
                    return Poll::Ready(Ok(reading.timed_out()));
                };
                if let Some(until) = until.map(Instant::from_std) {
                    if timer.as_ref().is_none_or(|t| t.deadline() != until) {
                        timer = Some(Box::pin(sleep_until(until)));
                    }
                    if timer
                        .as_mut()
                        .is_some_and(|t| t.as_mut().poll(cx).is_ready())
                    {
                        return Poll::Ready(Ok(reading.timed_out()));
                    }
                }
                if more {
                    // A pipe had more: come back after the runtime's other tasks.
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            })
            .await?
        };
        drop(input);
        let report = group.shutdown().await;
        // Every writer in the group is gone: the pipes reach end of file at once, unless
        // a process outside the group holds them.
        let rest = poll_fn(|cx| {
            if read_pipes(cx, &mut pipes, &mut reading) {
                cx.waker().wake_by_ref();
            }
            if pipes.iter().all(Option::is_none) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let _ = ::tokio::time::timeout(CAPTURE_DRAIN_BOUND, rest).await;
        self.finish(&report?.status, timed_out, reading)
    }
}

impl Builder {
    /// Runs `cmd` to completion in a new process group, with this builder's options:
    /// the async form of [`Builder::output`], the shorthand for
    /// [`Run::from(builder).output_tokio(cmd)`](Run::output_tokio).
    ///
    /// # Errors
    ///
    /// As [`Run::output_tokio`].
    ///
    /// # Panics
    ///
    /// As [`Run::output_tokio`]: outside a tokio runtime with its I/O driver and timer.
    ///
    /// # Examples
    ///
    /// ```
    /// use tokio::process::Command;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let output = pgroup::Builder::new()
    ///     .output_tokio(Command::new("sh").args(["-c", "echo out; exit 4"]))
    ///     .await?;
    /// assert_eq!(output.status.code(), Some(4));
    /// assert_eq!(output.stdout, b"out\n");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn output_tokio(&self, cmd: &mut Command) -> io::Result<Output> {
        Run::from(self.clone()).output_tokio(cmd).await
    }
}

/// Writes what is left of the input; closes the pipe once it is all written or the
/// reader is gone.
fn write_input(cx: &mut Context<'_>, input: &mut Option<(ChildStdin, &[u8])>) {
    while let Some((pipe, rest)) = input {
        if rest.is_empty() {
            *input = None;
            return;
        }
        match Pin::new(pipe).poll_write(cx, rest) {
            Poll::Ready(Ok(n)) if n > 0 => *rest = &rest[n..],
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            // EPIPE: the reader is gone, which is not an error of the run.
            Poll::Ready(_) => *input = None,
            Poll::Pending => return,
        }
    }
}

/// Reads up to [`CHUNKS_PER_TURN`] chunks from each open pipe; closes those at end of
/// file. Whether a pipe may hold more (the count was reached).
fn read_pipes(cx: &mut Context<'_>, pipes: &mut [Pipe; 2], reading: &mut Reading) -> bool {
    let mut more = false;
    for (pipe, stream) in pipes.iter_mut().zip(&mut reading.streams) {
        let mut chunks = 0;
        while let Some(open) = pipe {
            if chunks == CHUNKS_PER_TURN {
                more = true;
                break;
            }
            let mut filled = ReadBuf::new(&mut reading.buf);
            match Pin::new(&mut **open).poll_read(cx, &mut filled) {
                Poll::Ready(Ok(())) if filled.filled().is_empty() => *pipe = None,
                Poll::Ready(Ok(())) => {
                    stream.push(filled.filled());
                    chunks += 1;
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(_)) => *pipe = None,
                Poll::Pending => break,
            }
        }
    }
    more
}
