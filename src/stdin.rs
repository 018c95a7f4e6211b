//! [`LeaderStdin`]: the leader's stdin, held by the group so that `wait` can close it through
//! `&self`, as std's `Child::wait` closes the child's.

use std::fmt;
use std::io::{self, Write};
use std::process::ChildStdin;
use std::sync::{Mutex, PoisonError};

/// The write end of the leader's stdin pipe, in [`SpawnedGroup::stdin`](crate::SpawnedGroup::stdin)
/// when the `Command` piped it.
///
/// It writes as std's [`ChildStdin`] does ([`Write`]). The difference is that the group can
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
pub struct LeaderStdin {
    pipe: Mutex<Option<ChildStdin>>,
}

impl LeaderStdin {
    pub(crate) fn new(pipe: ChildStdin) -> LeaderStdin {
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

    /// The std pipe, to hand to an API that wants a [`ChildStdin`] (or, through
    /// [`From`], a [`Stdio`](std::process::Stdio)); `None` once a wait has closed it.
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
    pub fn into_inner(self) -> Option<ChildStdin> {
        self.pipe
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn pipe(&mut self) -> io::Result<&mut ChildStdin> {
        self.pipe
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .ok_or_else(closed)
    }
}

/// The error of a write after the wait closed the pipe.
pub(crate) fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "pgroup: the leader's stdin was closed by wait (take it out of the group, \
         `group.stdin.take()`, to keep it open while waiting)",
    )
}

impl Write for LeaderStdin {
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

impl fmt::Debug for LeaderStdin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderStdin")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// The tokio front end's [`LeaderStdin`](async_stdin::LeaderStdin).
#[cfg(feature = "tokio")]
pub(crate) mod async_stdin {
    use std::fmt;
    use std::io;
    use std::pin::Pin;
    use std::sync::{Mutex, PoisonError};
    use std::task::{Context, Poll};

    use ::tokio::io::AsyncWrite;
    use ::tokio::process::ChildStdin;

    /// The write end of the leader's stdin pipe, in
    /// [`pgroup::tokio::SpawnedGroup::stdin`](crate::tokio::SpawnedGroup::stdin) when the
    /// `Command` piped it: tokio's [`ChildStdin`] ([`AsyncWrite`]), which
    /// [`wait`](crate::tokio::SpawnedGroup::wait) closes before it waits if the group still
    /// holds it, as tokio's `Child::wait` does. See [`crate::LeaderStdin`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Stdio;
    /// use tokio::io::AsyncWriteExt;
    /// use tokio::process::Command;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let mut group = pgroup::Builder::new()
    ///     .capture_output(true)
    ///     .spawn_tokio(Command::new("cat").stdin(Stdio::piped()))?;
    /// group.stdin.as_mut().expect("piped").write_all(b"hello\n").await?;
    /// // `wait` closes the stdin still held, so `cat` sees end of file and exits.
    /// assert!(group.wait().await?.success());
    /// assert_eq!(group.shutdown().await?.stdout.as_deref(), Some("hello\n"));
    /// # Ok(())
    /// # }
    /// ```
    pub struct LeaderStdin {
        pipe: Mutex<Option<ChildStdin>>,
    }

    impl LeaderStdin {
        pub(crate) fn new(pipe: ChildStdin) -> LeaderStdin {
            LeaderStdin {
                pipe: Mutex::new(Some(pipe)),
            }
        }

        pub(crate) fn close(&self) {
            let pipe = self
                .pipe
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            drop(pipe);
        }

        /// Whether [`wait`](crate::tokio::SpawnedGroup::wait) has closed the pipe.
        ///
        /// # Examples
        ///
        /// ```
        /// use std::process::Stdio;
        /// use tokio::process::Command;
        ///
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> std::io::Result<()> {
        /// let group = pgroup::tokio::SpawnedGroup::spawn(Command::new("cat").stdin(Stdio::piped()))?;
        /// assert!(!group.stdin.as_ref().expect("piped").is_closed());
        /// group.wait().await?;
        /// assert!(group.stdin.as_ref().expect("still there").is_closed());
        /// # Ok(())
        /// # }
        /// ```
        #[must_use]
        pub fn is_closed(&self) -> bool {
            self.pipe
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_none()
        }

        /// Tokio's pipe; `None` once a wait has closed it.
        ///
        /// # Examples
        ///
        /// ```
        /// use std::process::Stdio;
        /// use tokio::process::Command;
        ///
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> std::io::Result<()> {
        /// let mut group = pgroup::tokio::SpawnedGroup::spawn(Command::new("cat").stdin(Stdio::piped()))?;
        /// let stdin: tokio::process::ChildStdin =
        ///     group.stdin.take().and_then(|s| s.into_inner()).expect("open");
        /// drop(stdin); // cat sees end of file
        /// assert!(group.wait().await?.success());
        /// # Ok(())
        /// # }
        /// ```
        #[must_use]
        pub fn into_inner(self) -> Option<ChildStdin> {
            self.pipe
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner)
        }

        fn pipe(&mut self) -> io::Result<Pin<&mut ChildStdin>> {
            self.pipe
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .as_mut()
                .map(Pin::new)
                .ok_or_else(super::closed)
        }
    }

    impl AsyncWrite for LeaderStdin {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            match self.get_mut().pipe() {
                Ok(pipe) => pipe.poll_write(cx, buf),
                Err(e) => Poll::Ready(Err(e)),
            }
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            match self.get_mut().pipe() {
                Ok(pipe) => pipe.poll_write_vectored(cx, bufs),
                Err(e) => Poll::Ready(Err(e)),
            }
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.get_mut().pipe() {
                Ok(pipe) => pipe.poll_flush(cx),
                Err(e) => Poll::Ready(Err(e)),
            }
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.get_mut().pipe() {
                Ok(pipe) => pipe.poll_shutdown(cx),
                // Closed already.
                Err(_) => Poll::Ready(Ok(())),
            }
        }
    }

    impl fmt::Debug for LeaderStdin {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("pgroup::tokio::LeaderStdin")
                .field("closed", &self.is_closed())
                .finish_non_exhaustive()
        }
    }
}
