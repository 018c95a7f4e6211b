//! [`Incomplete`]: the error of a [`Run`](crate::Run) whose output is not complete.

use std::fmt;
use std::io;
use std::process::Output;
use std::time::Duration;

use crate::capture::{write_tails, StatusText, Stream};

/// Why [`Run::output`](crate::Run::output) has no complete output: the payload of its `io::Error`, reachable
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

/// Why [`Run::output`](crate::Run::output) returned an [`Incomplete`].
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
        /// The limit ([`Run::output_limit`](crate::Run::output_limit)).
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
    pub(super) fn into_io(self) -> io::Error {
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
