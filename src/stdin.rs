//! [`LeaderStdin`]: the leader's stdin, held by the group so that `wait` can close it through
//! `&self`, as std's `Child::wait` closes the child's.

use std::fmt;
use std::io::{self, Write};
use std::process::ChildStdin;
use std::sync::{Mutex, PoisonError};

/// The write end of the leader's stdin pipe, in [`SpawnedGroup::stdin`](crate::SpawnedGroup::stdin)
/// when the `Command` piped it; with tokio's pipe (`P`), in `pgroup::tokio::SpawnedGroup`'s
/// (the alias `pgroup::tokio::LeaderStdin`, with the `tokio` feature).
///
/// It writes as std's [`ChildStdin`] does ([`Write`]), or tokio's (`AsyncWrite`). The difference is that the group can
/// close it through a shared reference: [`SpawnedGroup::wait`](crate::SpawnedGroup::wait)
/// closes the stdin the group still holds before it waits, as [`Child::wait`] does, so a
/// leader that reads its input to the end (`cat`, `sort`, a CLI reading a request) sees end
/// of file instead of waiting for more while the test waits for it. Once closed, writes fail
/// with [`BrokenPipe`](io::ErrorKind::BrokenPipe). A `LeaderStdin` taken out of the group
/// (`group.stdin.take()`) is the caller's: no wait closes it, dropping it does.
///
/// [`Child::wait`]: std::process::Child::wait
///
/// # Examples
///
/// ```
/// use std::io::Write;
/// use std::process::{Command, Stdio};
///
/// let mut group = pgroup::Builder::new()
///     .capture_output(true)
///     .spawn(Command::new("cat").stdin(Stdio::piped()))?;
/// group.stdin.as_mut().expect("piped").write_all(b"hello\n")?;
/// // `wait` closes the stdin still held, so `cat` sees end of file and exits.
/// assert!(group.wait()?.success());
/// assert_eq!(group.shutdown()?.stdout.as_deref(), Some("hello\n"));
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct LeaderStdin<P = ChildStdin> {
    pipe: Mutex<Option<P>>,
}

impl<P> LeaderStdin<P> {
    pub(crate) fn new(pipe: P) -> LeaderStdin<P> {
        LeaderStdin {
            pipe: Mutex::new(Some(pipe)),
        }
    }

    /// Closes the pipe (the leader reads end of file once every other writer is gone too).
    pub(crate) fn close(&self) {
        let pipe = self
            .pipe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(pipe);
    }

    /// Whether [`SpawnedGroup::wait`](crate::SpawnedGroup::wait) has closed the pipe.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::{Command, Stdio};
    ///
    /// let group = pgroup::SpawnedGroup::spawn(Command::new("cat").stdin(Stdio::piped()))?;
    /// assert!(!group.stdin.as_ref().expect("piped").is_closed());
    /// group.wait()?;
    /// assert!(group.stdin.as_ref().expect("still there").is_closed());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.pipe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    /// The pipe, to hand to an API that wants std's [`ChildStdin`] (or, through [`From`], a
    /// [`Stdio`](std::process::Stdio)), or tokio's; `None` once a wait has closed it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::{Command, Stdio};
    ///
    /// let mut group = pgroup::SpawnedGroup::spawn(Command::new("cat").stdin(Stdio::piped()))?;
    /// let stdin: std::process::ChildStdin =
    ///     group.stdin.take().and_then(|s| s.into_inner()).expect("open");
    /// drop(stdin); // cat sees end of file
    /// assert!(group.wait()?.success());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn into_inner(self) -> Option<P> {
        self.pipe
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The pipe, or the error of a write after the wait closed it.
    fn pipe(&mut self) -> io::Result<&mut P> {
        self.pipe
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "pgroup: the leader's stdin was closed by wait (take it out of the group, \
                     `group.stdin.take()`, to keep it open while waiting)",
                )
            })
    }
}

impl Write for LeaderStdin<ChildStdin> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pipe()?.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.pipe()?.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.pipe()?.flush()
    }
}

impl<P> fmt::Debug for LeaderStdin<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderStdin")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "tokio")]
mod async_write {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use ::tokio::io::AsyncWrite;
    use ::tokio::process::ChildStdin;

    use super::LeaderStdin;

    impl LeaderStdin<ChildStdin> {
        fn pinned(&mut self) -> io::Result<Pin<&mut ChildStdin>> {
            self.pipe().map(Pin::new)
        }
    }

    impl AsyncWrite for LeaderStdin<ChildStdin> {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            match self.get_mut().pinned() {
                Ok(pipe) => pipe.poll_write(cx, buf),
                Err(e) => Poll::Ready(Err(e)),
            }
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            match self.get_mut().pinned() {
                Ok(pipe) => pipe.poll_write_vectored(cx, bufs),
                Err(e) => Poll::Ready(Err(e)),
            }
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.get_mut().pinned() {
                Ok(pipe) => pipe.poll_flush(cx),
                Err(e) => Poll::Ready(Err(e)),
            }
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.get_mut().pinned() {
                Ok(pipe) => pipe.poll_shutdown(cx),
                // Closed already.
                Err(_) => Poll::Ready(Ok(())),
            }
        }
    }
}
