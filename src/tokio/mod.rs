//! A tokio front end (the `tokio` feature): [`SpawnedGroup`], whose waits are futures, whose
//! pipes are tokio's, and whose Drop never blocks the runtime.
//!
//! It is the sync [`crate::SpawnedGroup`] underneath: spawned by the same
//! [`Builder`] path (every option applies: the grace period, a new session,
//! every [`Containment`](crate::Containment) tier, the [`lifeline`](crate::lifeline)), signalled
//! through the same guard, torn down by the same steps. What differs is how it waits:
//!
//! - **Waits** ([`wait`](SpawnedGroup::wait), [`wait_timeout`](SpawnedGroup::wait_timeout))
//!   register the leader's pidfd with the runtime's reactor through [`AsyncFd`]: the task
//!   sleeps until the leader exits. No polling loop, no `spawn_blocking`. Any number of tasks may wait at once.
//! - **Teardown** ([`shutdown`](SpawnedGroup::shutdown), Drop) is handed to one background
//!   OS thread of the crate, shared by the whole process and started by the first hand-over.
//!   It tears down any number of groups at once, each with the sync type's steps (SIGTERM
//!   and SIGCONT, the grace period, SIGKILL, the reap of the leader), waiting on all their
//!   pidfds and deadlines in one `ppoll`. Drop returns at once (a lock for a push, a byte
//!   written to a socket); `shutdown` awaits the thread's answer. The thread is not a tokio
//!   task because a `#[tokio::test]` runtime, and its tasks, end with the test, while a group
//!   dropped at its end still has its grace period to go.
//! - Until that thread reaps the leader, the group stays registered in the
//!   [`lifeline`](crate::lifeline): a test binary that exits (or dies of SIGINT, SIGTERM...)
//!   while a teardown is under way still kills the group. The thread never signals a group
//!   after reaping its leader, and reaps only the leaders handed to it, each by its own pid
//!   (never `waitpid(-1)`): the children of `tokio::process`, and tokio's SIGCHLD handling,
//!   are left alone.
//!
//! # Runtimes
//!
//! Spawning needs a tokio runtime with its I/O driver (`#[tokio::test]` and
//! `#[tokio::main]` enable it), current-thread or multi-thread: the pipes and the leader's
//! descriptor are registered with it. [`wait_timeout`](SpawnedGroup::wait_timeout) also needs
//! its timer. A group must be waited on in the runtime it was spawned in; it may be dropped
//! anywhere, also outside any runtime.
//!
//! # Examples
//!
//! ```
//! use std::process::Stdio;
//! use tokio::io::{AsyncBufReadExt, BufReader};
//! use tokio::process::Command;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let mut group = pgroup::tokio::SpawnedGroup::spawn(
//!     Command::new("sh")
//!         .args(["-c", "echo ready; sleep 30 & sleep 30"])
//!         .stdout(Stdio::piped()),
//! )?;
//! let mut lines = BufReader::new(group.stdout.take().expect("piped")).lines();
//! assert_eq!(lines.next_line().await?.as_deref(), Some("ready"));
//!
//! let report = group.shutdown().await?; // the shell and both sleeps are gone
//! assert!(!report.status.success());
//! # Ok(())
//! # }
//! ```

mod ready;

use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::process::ExitStatus;
use std::task::Poll;
use std::time::Duration;

use ::tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use ::tokio::process::{ChildStderr, ChildStdin, ChildStdout, Command};
use ::tokio::sync::oneshot;

use crate::{reaper, sys, Builder, Delivery, Pgid, Signal, Teardown};

/// The write end of the leader's stdin pipe, in
/// [`pgroup::tokio::SpawnedGroup::stdin`](crate::tokio::SpawnedGroup::stdin) when the
/// `Command` piped it: tokio's [`ChildStdin`] (`AsyncWrite`), which
/// [`wait`](crate::tokio::SpawnedGroup::wait) closes before it waits if the group still
/// holds it, as tokio's `Child::wait` does: [`crate::LeaderStdin`] with tokio's pipe.
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
pub type LeaderStdin = crate::LeaderStdin<ChildStdin>;

impl Builder {
    /// Spawns `cmd` as the leader of a new process group, as [`Builder::spawn`] does (with
    /// every option of this builder: grace period, session, containment, and the lifeline),
    /// and returns the tokio front end: waits are futures, the pipes are tokio's, and Drop
    /// hands the teardown to a background thread (see [`crate::tokio`]).
    ///
    /// The `Command`'s std options (arguments, environment, directory, stdio, `pre_exec`
    /// hooks) apply; tokio's own `kill_on_drop` does not matter: the group is always torn
    /// down when the value is dropped.
    ///
    /// # Errors
    ///
    /// As [`Builder::spawn`]; and registering the pipes or the leader's descriptor with the
    /// runtime failed (the group is then torn down in the background).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or in one whose I/O driver is not enabled, as
    /// `tokio::process::Command::spawn` does. Nothing is started when there is no runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use pgroup::{Builder, Containment};
    /// use tokio::process::Command;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// # if !Containment::Supervised.is_available() { return Ok(()); }
    /// let group = Builder::new()
    ///     .containment(Containment::Supervised)
    ///     .grace_period(Duration::from_millis(500))
    ///     .spawn_tokio(Command::new("sleep").arg("30"))?;
    /// let report = group.shutdown().await?;
    /// assert!(!report.sigkill_needed);
    /// # Ok(())
    /// # }
    /// ```
    pub fn spawn_tokio(&self, cmd: &mut Command) -> io::Result<SpawnedGroup> {
        // Panic now, with tokio's message, rather than with a group running.
        drop(::tokio::runtime::Handle::current());
        SpawnedGroup::from_sync(self.spawn(cmd.as_std_mut())?)
    }
}

/// A command running as the leader of its own process group, for async tests: the tokio
/// front end of [`crate::SpawnedGroup`] (the `tokio` feature).
///
/// The same contract as the sync type (see its documentation for pinning, signalling and
/// teardown), with these differences:
///
/// - [`wait`](SpawnedGroup::wait) and [`wait_timeout`](SpawnedGroup::wait_timeout) are
///   futures, woken by the runtime's reactor when the leader exits (its pidfd, registered
///   with [`AsyncFd`]); several tasks may wait at once (`Arc<SpawnedGroup>`). They take
///   `&self`; `wait` closes the `stdin` the group still holds, as tokio's `Child::wait`
///   does.
/// - [`stdin`](SpawnedGroup::stdin), [`stdout`](SpawnedGroup::stdout) and
///   [`stderr`](SpawnedGroup::stderr) hold tokio's pipe types (stdin in a [`LeaderStdin`],
///   which `wait` can close).
/// - [`shutdown`](SpawnedGroup::shutdown) and Drop hand the teardown to the crate's
///   background thread: Drop returns at once, and the runtime is never blocked by a grace
///   period. The group is still torn down in full (SIGTERM, grace period, SIGKILL, reap),
///   and is killed by the [`lifeline`](crate::lifeline) if the process exits first.
///
/// # Examples
///
/// ```
/// use tokio::process::Command;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let group = pgroup::tokio::SpawnedGroup::spawn(Command::new("sh").args(["-c", "exit 3"]))?;
/// assert_eq!(group.wait().await?.code(), Some(3));
/// # Ok(())
/// # }
/// ```
pub struct SpawnedGroup {
    /// The leader's stdin, if the `Command` piped it; [`wait`](SpawnedGroup::wait) and
    /// teardown close it if it is still here.
    pub stdin: Option<LeaderStdin>,
    /// The leader's stdout, if the `Command` piped it.
    pub stdout: Option<ChildStdout>,
    /// The leader's stderr, if the `Command` piped it.
    pub stderr: Option<ChildStderr>,
    /// The sync group; `None` only once it was handed to the reaper.
    group: Option<crate::SpawnedGroup>,
    /// A copy of the leader's pidfd, readable once it exits (in every tier), registered
    /// with the runtime.
    exit: Vec<AsyncFd<OwnedFd>>,
}

impl SpawnedGroup {
    /// Spawns `cmd` as the leader of a new process group, with the defaults of
    /// [`Builder::new`].
    ///
    /// # Errors
    ///
    /// As [`Builder::spawn_tokio`].
    ///
    /// # Panics
    ///
    /// As [`Builder::spawn_tokio`]: outside a tokio runtime with its I/O driver.
    ///
    /// # Examples
    ///
    /// ```
    /// use tokio::process::Command;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let group = pgroup::tokio::SpawnedGroup::spawn(Command::new("sleep").arg("30"))?;
    /// assert_eq!(u32::try_from(group.pgid().as_raw()).unwrap(), group.id());
    /// drop(group); // returns at once; the group is torn down in the background
    /// # Ok(())
    /// # }
    /// ```
    pub fn spawn(cmd: &mut Command) -> io::Result<SpawnedGroup> {
        Builder::new().spawn_tokio(cmd)
    }

    fn from_sync(mut group: crate::SpawnedGroup) -> io::Result<SpawnedGroup> {
        let stdin = group.stdin.take();
        let stdout = group.stdout.take();
        let stderr = group.stderr.take();
        let converted = (|| {
            let exit = group
                .exit_fds()
                .into_iter()
                .map(|fd| fd.as_fd().try_clone_to_owned().and_then(sys::async_fd))
                .collect::<io::Result<Vec<_>>>()?;
            Ok::<_, io::Error>((
                exit,
                stdin
                    .and_then(crate::LeaderStdin::into_inner)
                    .map(ChildStdin::from_std)
                    .transpose()?
                    .map(LeaderStdin::new),
                stdout.map(ChildStdout::from_std).transpose()?,
                stderr.map(ChildStderr::from_std).transpose()?,
            ))
        })();
        match converted {
            Ok((exit, stdin, stdout, stderr)) => Ok(SpawnedGroup {
                stdin,
                stdout,
                stderr,
                group: Some(group),
                exit,
            }),
            Err(e) => {
                let context = format!("{group:?}");
                reaper::hand_over(group, Box::new(drop));
                Err(io::Error::new(
                    e.kind(),
                    format!("pgroup: cannot register {context} with the tokio runtime: {e}"),
                ))
            }
        }
    }

    fn group(&self) -> &crate::SpawnedGroup {
        match &self.group {
            Some(group) => group,
            // Taken only by `shutdown` and Drop, which consume the value.
            None => unreachable!("pgroup::tokio::SpawnedGroup used after its hand-over"),
        }
    }

    /// The group's id, which is the leader's pid.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let group = pgroup::tokio::SpawnedGroup::spawn(&mut tokio::process::Command::new("true"))?;
    /// println!("group {}", group.pgid());
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn pgid(&self) -> Pgid {
        self.group().pgid()
    }

    /// The leader's pid, as [`tokio::process::Child::id`](::tokio::process::Child::id).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let group = pgroup::tokio::SpawnedGroup::spawn(&mut tokio::process::Command::new("true"))?;
    /// assert!(group.id() > 1);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn id(&self) -> u32 {
        self.group().id()
    }

    /// Sends `signal` to every process in the group, through the guard, as
    /// [`crate::SpawnedGroup::signal`]. It does not block.
    ///
    /// # Errors
    ///
    /// As [`crate::SpawnedGroup::signal`]: an OS error other than `ESRCH`, or the group is
    /// no longer pinned. A refusal of the guard is [`Delivery::Refused`], not an error.
    ///
    /// # Examples
    ///
    /// ```
    /// use pgroup::Signal;
    /// use tokio::process::Command;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let group = pgroup::tokio::SpawnedGroup::spawn(Command::new("sleep").arg("30"))?;
    /// assert!(group.signal(Signal::SIGKILL)?.is_sent());
    /// assert_eq!(group.wait().await?.to_string(), "signal: 9 (SIGKILL)");
    /// # Ok(())
    /// # }
    /// ```
    pub fn signal(&self, signal: Signal) -> io::Result<Delivery> {
        self.group().signal(signal)
    }

    /// The leader's exit status if it has exited, without blocking and without reaping it
    /// (the group stays pinned until teardown).
    ///
    /// # Errors
    ///
    /// As [`crate::SpawnedGroup::try_wait`]: the `waitid(2)` call failed, or someone else
    /// reaped the leader.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let group = pgroup::tokio::SpawnedGroup::spawn(tokio::process::Command::new("sleep").arg("30"))?;
    /// assert_eq!(group.try_wait()?, None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        self.group().try_wait()
    }

    /// Waits for the leader to exit and returns its status; the group stays pinned until
    /// teardown, and other members may still be running. The task sleeps until the
    /// runtime's reactor sees the leader's pidfd become readable (in every tier).
    ///
    /// As tokio's `Child::wait`, it first closes the leader's [`stdin`](SpawnedGroup::stdin)
    /// if the group still holds it, so that a leader that reads its input to the end sees
    /// end of file; [`wait_timeout`](SpawnedGroup::wait_timeout) and
    /// [`try_wait`](SpawnedGroup::try_wait) leave it open. Cancel-safe: dropping the future
    /// changes nothing more.
    ///
    /// # Errors
    ///
    /// As [`try_wait`](SpawnedGroup::try_wait), or the reactor failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let group = pgroup::tokio::SpawnedGroup::spawn(
    ///     tokio::process::Command::new("sh").args(["-c", "sleep 0.1; exit 3"]),
    /// )?;
    /// assert_eq!(group.wait().await?.code(), Some(3));
    /// assert_eq!(group.wait().await?.code(), Some(3)); // the same answer again
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait(&self) -> io::Result<ExitStatus> {
        if let Some(stdin) = &self.stdin {
            stdin.close();
        }
        self.wait_exit().await
    }

    /// The wait for the leader's exit, which leaves stdin alone.
    pub(crate) async fn wait_exit(&self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            // The first of the descriptors the reactor reports readable. (`readable`, not
            // `poll_read_ready`, which wakes only the last of several waiting tasks.)
            let mut readable: Vec<Pin<Box<Readable<'_>>>> = self
                .exit
                .iter()
                .map(|fd| -> Pin<Box<Readable<'_>>> { Box::pin(fd.readable()) })
                .collect();
            let mut ready = poll_fn(|cx| {
                for fd in &mut readable {
                    if let Poll::Ready(ready) = fd.as_mut().poll(cx) {
                        return Poll::Ready(ready);
                    }
                }
                Poll::Pending
            })
            .await?;
            drop(readable);
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            // Readable, but not an exit (a supervisor's other message): wait for the next
            // event. An event that came after the readiness was seen is kept by tokio.
            ready.clear_ready();
        }
    }

    /// Waits up to `timeout` for the leader to exit. `Ok(None)` means it is still running.
    /// Unlike [`wait`](SpawnedGroup::wait), it leaves the leader's stdin open.
    ///
    /// # Errors
    ///
    /// As [`wait`](SpawnedGroup::wait).
    ///
    /// # Panics
    ///
    /// In a runtime whose timer is not enabled (`#[tokio::test]` enables it).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let group = pgroup::tokio::SpawnedGroup::spawn(tokio::process::Command::new("sleep").arg("30"))?;
    /// assert_eq!(group.wait_timeout(Duration::from_millis(10)).await?, None);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_timeout(&self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        match ::tokio::time::timeout(timeout, self.wait_exit()).await {
            Ok(status) => status.map(Some),
            Err(_elapsed) => Ok(None),
        }
    }

    /// Tears the group down and reports what happened: the checked form of Drop, as
    /// [`crate::SpawnedGroup::shutdown`]. The teardown runs on the crate's background thread,
    /// and this future waits for its answer, so the runtime goes on while a grace period
    /// runs. Dropping the future does not stop the teardown, which then reports its errors
    /// as Drop does. `stdin` is closed first; the other pipes when the teardown is over.
    ///
    /// # Errors
    ///
    /// As [`crate::SpawnedGroup::shutdown`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::process::Command;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// // A leader that ignores SIGTERM costs the grace period, then SIGKILL; the runtime
    /// // runs other tasks meanwhile.
    /// let group = pgroup::Builder::new()
    ///     .grace_period(Duration::from_millis(100))
    ///     .spawn_tokio(Command::new("sh").args(["-c", "trap '' TERM; sleep 30; :"]))?;
    /// tokio::time::sleep(Duration::from_millis(100)).await; // let the shell set its trap
    /// let report = group.shutdown().await?;
    /// assert!(report.sigkill_needed);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn shutdown(mut self) -> io::Result<Teardown> {
        drop(self.stdin.take());
        let (answer, answered) = oneshot::channel();
        self.hand_over(Some(answer));
        answered.await.unwrap_or_else(|_| {
            Err(io::Error::other(
                "pgroup: the teardown ended without an answer",
            ))
        })
    }
}

impl SpawnedGroup {
    /// Hands the group to the crate's background thread, which tears it down and sends the
    /// outcome to `answer`; an error no one receives (no `answer`, or its receiver is gone)
    /// goes to a WARN tracing event named `group_teardown_failed`.
    fn hand_over(&mut self, answer: Option<oneshot::Sender<io::Result<Teardown>>>) {
        let Some(group) = self.group.take() else {
            return;
        };
        let pgid = group.pgid();
        reaper::hand_over(
            group,
            Box::new(move |outcome| {
                let unanswered = match answer {
                    Some(answer) => answer.send(outcome).err(),
                    None => Some(outcome),
                };
                if let Some(Err(error)) = unanswered {
                    tracing::warn!(
                        name: "group_teardown_failed",
                        pgid = pgid.as_raw(),
                        error = %error,
                        "group_teardown_failed"
                    );
                }
            }),
        );
    }
}

/// The future of [`AsyncFd::readable`] on one of the exit descriptors.
type Readable<'a> = dyn Future<Output = io::Result<AsyncFdReadyGuard<'a, OwnedFd>>> + Send + 'a;

impl Drop for SpawnedGroup {
    /// Hands the teardown to the crate's background thread and returns at once: it does not
    /// block the runtime, and does not panic. Errors go to a WARN tracing event named
    /// `group_teardown_failed`, as the sync type's do.
    ///
    /// With [`Builder::capture_output`], a drop while the thread panics (a failed assertion
    /// in a `#[tokio::test]`) first prints the captured tails to stderr, on that thread,
    /// where libtest and nextest show them with the failure: what the group wrote up to the
    /// drop (its last words on SIGTERM come after, and are not shown).
    fn drop(&mut self) {
        drop(self.stdin.take());
        if std::thread::panicking() {
            // Here, on the thread that fails, where libtest captures it: the background
            // thread is not panicking. What the leader wrote so far, before teardown.
            if let Some(group) = &self.group {
                group.print_captured_output(group.try_wait().ok().flatten());
            }
        }
        self.hand_over(None);
    }
}

impl fmt::Debug for SpawnedGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("pgroup::tokio::SpawnedGroup");
        if let Some(group) = &self.group {
            debug
                .field("pgid", &group.pgid())
                .field("leader", &group.id());
        }
        debug.finish_non_exhaustive()
    }
}
