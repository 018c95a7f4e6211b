//! The errors' text: [`NotReady`], the error of a readiness wait, and what every error and
//! failure report of the crate shows of a group (its exit status, its captured tails).

use std::fmt::{self, Write as _};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use super::{Capture, Ended, Stream};

/// How much of each tail an error message or a failing test's report shows: the last 4 KiB
/// (the whole tail is in [`NotReady`] and [`Teardown`](crate::Teardown)).
const SHOWN_TAIL: usize = 4 * 1024;

/// Why a group did not become ready: the payload of the `io::Error` that
/// [`SpawnedGroup::wait_for_line`](crate::SpawnedGroup::wait_for_line) and
/// [`SpawnedGroup::wait_for_tcp`](crate::SpawnedGroup::wait_for_tcp) return, reachable with
/// [`io::Error::get_ref`] and `downcast_ref`.
///
/// Its `Display` and its `Debug` are the same text, since `Debug` is what `unwrap`,
/// `expect` and a test returning `Result` print: what was awaited, why the wait ended, the
/// leader's exit status if it exited (`exit status 2`, `signal 15 (SIGTERM)`), and the last
/// 4 KiB of each captured stream, each line on a line of its own. The alternate `Debug`
/// (`{:#?}`) shows the fields.
///
/// # Examples
///
/// ```
/// use std::process::Command;
/// use std::time::Duration;
/// use pgroup::{Builder, NotReady, Stream};
///
/// let server = Builder::new()
///     .capture_output(true)
///     .spawn(Command::new("sh").args(["-c", "echo 'no config' >&2; exit 2"]))?;
/// let err = server
///     .wait_for_line(Stream::Stdout, Duration::from_secs(10), |l| l.contains("listening"))
///     .unwrap_err();
/// let why = err.get_ref().and_then(|e| e.downcast_ref::<NotReady>()).expect("NotReady");
/// assert_eq!(why.status.and_then(|s| s.code()), Some(2));
/// assert_eq!(why.stderr.as_deref(), Some("no config\n"));
/// // What `.expect("ready")` would print: readable, the output on lines of its own.
/// let printed = format!("{err:?}");
/// assert!(printed.contains("the leader exited (exit status 2)"), "{printed}");
/// assert!(printed.contains("\nno config\n"), "{printed}");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct NotReady {
    /// The group, as in every error of the crate: program and leader pid.
    pub group: String,
    /// What was awaited, such as `a matching line on stdout`.
    pub awaited: String,
    /// Why the wait ended.
    pub reason: NotReadyReason,
    /// The leader's exit status, if it had exited.
    pub status: Option<ExitStatus>,
    /// The captured tail of stdout (`None` if not captured).
    pub stdout: Option<String>,
    /// The captured tail of stderr (`None` if not captured).
    pub stderr: Option<String>,
}

/// Why a wait for readiness ended without it.
///
/// # Examples
///
/// ```
/// use std::io::ErrorKind;
/// use pgroup::NotReadyReason;
///
/// assert_eq!(NotReadyReason::TimedOut.kind(), ErrorKind::TimedOut);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotReadyReason {
    /// The timeout passed.
    TimedOut,
    /// The leader exited first.
    LeaderExited,
    /// The stream reached end of file (every process holding it closed it) first.
    StreamClosed,
    /// The stream was not captured: see [`Builder::capture_output`](crate::Builder::capture_output).
    NotCaptured,
}

impl NotReadyReason {
    /// The `io::ErrorKind` of the error that carries it: `TimedOut`, `UnexpectedEof` (the
    /// leader exited, the stream closed) or `InvalidInput` (not captured).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::ErrorKind;
    /// use pgroup::NotReadyReason;
    ///
    /// assert_eq!(NotReadyReason::LeaderExited.kind(), ErrorKind::UnexpectedEof);
    /// ```
    #[must_use]
    pub fn kind(self) -> io::ErrorKind {
        match self {
            NotReadyReason::TimedOut => io::ErrorKind::TimedOut,
            NotReadyReason::LeaderExited | NotReadyReason::StreamClosed => {
                io::ErrorKind::UnexpectedEof
            }
            NotReadyReason::NotCaptured => io::ErrorKind::InvalidInput,
        }
    }
}

impl From<Ended> for NotReadyReason {
    fn from(ended: Ended) -> Self {
        match ended {
            Ended::StreamClosed => NotReadyReason::StreamClosed,
            Ended::LeaderExited => NotReadyReason::LeaderExited,
            Ended::NotCaptured => NotReadyReason::NotCaptured,
        }
    }
}

impl NotReady {
    /// Wraps this in an `io::Error` of the reason's kind.
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::new(self.reason.kind(), self)
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: not ready: ", self.group)?;
        let status = self.status.map(StatusText);
        match (self.reason, status) {
            (NotReadyReason::TimedOut, _) => {
                write!(f, "the timeout passed before {}", self.awaited)?;
            }
            (NotReadyReason::LeaderExited, Some(status)) => {
                write!(f, "the leader exited ({status}) before {}", self.awaited)?;
            }
            (NotReadyReason::LeaderExited, None) => {
                write!(f, "the leader exited before {}", self.awaited)?;
            }
            (NotReadyReason::StreamClosed, _) => {
                write!(f, "the stream was closed before {}", self.awaited)?;
            }
            (NotReadyReason::NotCaptured, _) => {
                write!(
                    f,
                    "the output is not captured, so there is no line to wait for; spawn the \
                     group with Builder::capture_output(true) to wait for {}",
                    self.awaited
                )?;
            }
        }
        write_tails(f, self.stdout.as_deref(), self.stderr.as_deref())
    }
}

impl fmt::Debug for NotReady {
    /// The same text as `Display` (see the type's documentation); `{:#?}` shows the fields.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            return fmt::Display::fmt(self, f);
        }
        f.debug_struct("NotReady")
            .field("group", &self.group)
            .field("awaited", &self.awaited)
            .field("reason", &self.reason)
            .field("status", &self.status.map(StatusText))
            .field("stdout", &self.stdout)
            .field("stderr", &self.stderr)
            .finish()
    }
}

impl std::error::Error for NotReady {}

/// An exit status as people read it: `exit status 2`, `signal 15 (SIGTERM)`, with
/// ` (core dumped)` when it did. (std's `Display` says `exit status: 2`, its `Debug`
/// `ExitStatus(unix_wait_status(512))`.) Its `Debug` is the same text.
#[derive(Clone, Copy)]
pub(crate) struct StatusText(pub(crate) ExitStatus);

impl fmt::Display for StatusText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.0;
        if let Some(code) = status.code() {
            return write!(f, "exit status {code}");
        }
        let Some(signal) = status.signal() else {
            return write!(f, "{status}");
        };
        match crate::Signal::try_from(signal) {
            Ok(name) => write!(f, "signal {signal} ({name})")?,
            Err(_) => write!(f, "signal {signal}")?,
        }
        if status.core_dumped() {
            f.write_str(" (core dumped)")?;
        }
        Ok(())
    }
}

impl fmt::Debug for StatusText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The captured tails, for messages: the last [`SHOWN_TAIL`] bytes of each, from the start
/// of a line, each between a header and a footer of its own.
pub(crate) fn write_tails(
    f: &mut dyn fmt::Write,
    stdout: Option<&str>,
    stderr: Option<&str>,
) -> fmt::Result {
    for (name, text) in [("stdout", stdout), ("stderr", stderr)] {
        let Some(text) = text else { continue };
        if text.is_empty() {
            write!(f, "\n--- {name}: (empty) ---")?;
            continue;
        }
        let shown = last_lines(text, SHOWN_TAIL);
        let cut = if shown.len() < text.len() {
            ", last 4 KiB"
        } else {
            ""
        };
        write!(f, "\n--- {name}{cut} ---\n{shown}")?;
        if !shown.ends_with('\n') {
            f.write_char('\n')?;
        }
        write!(f, "--- end of {name} ---")?;
    }
    Ok(())
}

/// The end of `text`, at most `limit` bytes, beginning with a line where one begins in
/// them (otherwise at a character).
fn last_lines(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let shown = &text[start..];
    match shown.find('\n') {
        Some(at) if at + 1 < shown.len() => &shown[at + 1..],
        _ => shown,
    }
}

/// What a failing test shows of a group: its captured tails, and the leader's status if it
/// is known (`None`: it has not exited, or teardown failed).
pub(crate) fn failure_report(
    context: &str,
    status: Option<ExitStatus>,
    capture: &Capture,
) -> String {
    let mut report = format!("\n---- {context}: captured output");
    match status {
        Some(status) => {
            let _ = write!(report, " (leader: {})", StatusText(status));
        }
        None => report.push_str(" (leader still running)"),
    }
    report.push_str(" ----");
    let _ = write_tails(
        &mut report,
        capture.text(Stream::Stdout).as_deref(),
        capture.text(Stream::Stderr).as_deref(),
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_people_write_them() {
        assert_eq!(
            StatusText(ExitStatus::from_raw(2 << 8)).to_string(),
            "exit status 2"
        );
        assert_eq!(
            StatusText(ExitStatus::from_raw(15)).to_string(),
            "signal 15 (SIGTERM)"
        );
        assert_eq!(
            StatusText(ExitStatus::from_raw(6 | 0x80)).to_string(),
            "signal 6 (SIGABRT) (core dumped)"
        );
    }

    #[test]
    fn the_shown_tail_begins_with_a_line() {
        let text = format!("{}\nsecond\n", "a".repeat(SHOWN_TAIL));
        assert_eq!(last_lines(&text, SHOWN_TAIL), "second\n");
        assert_eq!(last_lines("short\n", SHOWN_TAIL), "short\n");
    }
}
