//! [`Builder`]: the options of a spawn, and the spawn.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::Duration;

use std::sync::Mutex;

use crate::capture::Reader;
use crate::leader::Leader;
use crate::stdin::LeaderStdin;
use crate::{lifeline, Containment, Pgid};

use super::{SpawnedGroup, DEFAULT_GRACE_PERIOD};

/// Options for spawning a [`SpawnedGroup`].
///
/// # Examples
///
/// ```
/// use std::process::Command;
/// use std::time::Duration;
/// use pgroup::Builder;
///
/// let group = Builder::new()
///     .grace_period(Duration::from_millis(500))
///     .spawn(&mut Command::new("sleep").arg("30"))?;
/// let report = group.shutdown()?;
/// assert!(report.elapsed < Duration::from_secs(1));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    grace: Duration,
    new_session: bool,
    containment: Containment,
    capture: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// The defaults: a grace period of [`DEFAULT_GRACE_PERIOD`], a new process group in the
    /// caller's session, the [`Containment::Supervised`] tier (see [`Containment`] for why;
    /// [`Containment::Group`] with the portable backend, which has no other), and the output
    /// not captured.
    ///
    /// # Examples
    ///
    /// ```
    /// use pgroup::Containment;
    ///
    /// let builder = pgroup::Builder::new();
    /// # let _ = builder;
    /// // The strongest tier the platform offers.
    /// let expected = if Containment::Supervised.is_available() {
    ///     Containment::Supervised
    /// } else {
    ///     Containment::Group
    /// };
    /// assert_eq!(Containment::default(), expected);
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Builder {
            grace: DEFAULT_GRACE_PERIOD,
            new_session: false,
            containment: Containment::default(),
            capture: false,
        }
    }

    /// How long teardown waits, after SIGTERM, for the group to exit before it sends SIGKILL.
    /// Zero skips SIGTERM and goes straight to SIGKILL.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let mut builder = pgroup::Builder::new();
    /// builder.grace_period(Duration::ZERO);
    /// ```
    pub fn grace_period(&mut self, grace: Duration) -> &mut Self {
        self.grace = grace;
        self
    }

    /// Starts the leader in a new session (`setsid(2)`) instead of only a new process group.
    /// It then has no controlling terminal, as a daemon would, and is the leader of both the
    /// session and the group, whose ids equal its pid. Teardown is the same. This uses a
    /// `pre_exec` hook, so the spawn takes std's fork path rather than `posix_spawn`. It
    /// cannot be combined with a [`process_group`] of the `Command`'s own (`setsid` fails in
    /// a group leader): [`spawn`](Builder::spawn) then fails with an error that names both,
    /// in every tier.
    ///
    /// [`process_group`]: std::os::unix::process::CommandExt::process_group
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    ///
    /// let group = pgroup::Builder::new()
    ///     .new_session(true)
    ///     .spawn(&mut Command::new("sleep").arg("30"))?;
    /// drop(group); // TERM, then reaped
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new_session(&mut self, new_session: bool) -> &mut Self {
        self.new_session = new_session;
        self
    }

    /// How tightly the group is held: a plain process group, a supervisor, or a PID
    /// namespace. See [`Containment`] for what each tier catches and costs.
    ///
    /// # Examples
    ///
    /// ```
    /// use pgroup::{Builder, Containment};
    ///
    /// let mut builder = Builder::new();
    /// builder.containment(Containment::Supervised);
    /// ```
    pub fn containment(&mut self, containment: Containment) -> &mut Self {
        self.containment = containment;
        self
    }

    /// Captures the leader's stdout and stderr: each is read into a tail of fixed size (its
    /// last [`CAPTURE_LIMIT`](crate::CAPTURE_LIMIT) bytes, a cut marked `[… N bytes cut]`) by
    /// a thread of the group's, instead of going to the test's terminal. The memory it holds
    /// is the tails and one read buffer, whatever the child writes, and the thread keeps pace
    /// with the pipes, so a child that floods its output is not slowed down. Then:
    ///
    /// - [`SpawnedGroup::wait_for_line`] waits for a line that matches (a server's ready
    ///   line, with its port);
    /// - [`SpawnedGroup::captured`] reads a tail at any time;
    /// - [`Teardown`](crate::Teardown) carries both tails (in `stdout` and `stderr`), complete once every
    ///   process holding the pipes is gone;
    /// - when the group is dropped while its thread panics (a failed assertion, in a sync
    ///   or a `#[tokio::test]`), the tails are printed to stderr, where libtest and nextest
    ///   show them with the failure;
    /// - readiness errors ([`NotReady`](crate::NotReady)) include them.
    ///
    /// To assert a CLI's complete output, use [`Builder::output`] or [`Run`](crate::Run)
    /// instead: they read it all.
    ///
    /// The `Command`'s own stdout and stderr settings are replaced by pipes, so the
    /// `stdout` and `stderr` fields of the group stay `None`. A program that buffers its
    /// output when it is not a terminal (Python without `-u` or `PYTHONUNBUFFERED=1`, C's
    /// stdio) writes its lines only when its buffer fills or it exits: capture cannot see a
    /// line before the program writes it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    ///
    /// let group = pgroup::Builder::new()
    ///     .capture_output(true)
    ///     .spawn(Command::new("sh").args(["-c", "echo out; echo err >&2"]))?;
    /// group.wait()?;
    /// let report = group.shutdown()?;
    /// assert_eq!(report.stdout.as_deref(), Some("out\n"));
    /// assert_eq!(report.stderr.as_deref(), Some("err\n"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn capture_output(&mut self, capture: bool) -> &mut Self {
        self.capture = capture;
        self
    }

    /// Spawns `cmd` as the leader of a new process group.
    ///
    /// The `Command` is changed: it is given [`process_group(0)`] (or, with
    /// [`new_session`](Builder::new_session), a `setsid` hook). Its stdio settings are kept,
    /// and the pipes they create are in the returned group's `stdin`, `stdout` and `stderr`.
    ///
    /// [`process_group(0)`]: std::os::unix::process::CommandExt::process_group
    ///
    /// # Errors
    ///
    /// - The spawn fails (the program does not exist, is not executable, ...): the error has
    ///   the kind of the OS error and names the program. Nothing is left running.
    /// - The kernel lacks `pidfd_open` (Linux before 5.3), so the group cannot be pinned: the
    ///   leader that was just started is killed and reaped before the error is returned.
    /// - The program is a file the kernel cannot execute (no `#!` line, not ELF): `ENOEXEC`,
    ///   naming it, in every tier.
    /// - [`PGROUP_LIFELINE`](crate::lifeline::ENV_VAR) has a value that is not on or off
    ///   (kind [`InvalidInput`](io::ErrorKind::InvalidInput), naming the value), or the test
    ///   binary is already dying of a signal or `exit` and the [`lifeline`](crate::lifeline)
    ///   is killing its groups. Nothing is started.
    /// - [`new_session`](Builder::new_session) was asked for a `Command` that has a
    ///   [`process_group`](std::os::unix::process::CommandExt::process_group) of its own
    ///   (`setsid` fails with `EPERM` in a process that already leads a group): kind
    ///   [`InvalidInput`](io::ErrorKind::InvalidInput), naming both; the child never ran
    ///   the program. (Std has no getter for the setting: an `EPERM` from a spawn with a new
    ///   session is reported so, with the other setting that can cause it, a `uid` or `gid`
    ///   the caller may not take.)
    /// - With [`capture_output`](Builder::capture_output), the reader thread cannot be
    ///   started: the group is torn down and the error returned.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    ///
    /// let err = pgroup::Builder::new()
    ///     .spawn(&mut Command::new("/no/such/program"))
    ///     .unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    /// assert!(err.to_string().contains("/no/such/program"));
    /// ```
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<SpawnedGroup> {
        let program = cmd.get_program().to_owned();
        let what = format!("{program:?}");
        lifeline::ensure_installed()?;
        // From the fork to the registration, the lifeline waits for this spawn.
        let window = if lifeline::is_enabled() {
            Some(lifeline::SpawnWindow::open().ok_or_else(|| {
                io::Error::other(format!(
                    "pgroup: not spawning {what}: the test binary is dying (a fatal signal or \
                     exit), and the lifeline is killing its groups"
                ))
            })?)
        } else {
            None
        };
        if self.capture {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let mut spawned =
            Leader::spawn(cmd, self.containment, self.new_session, &what).map_err(|e| {
                // EPERM (with the spawn's context).
                if self.new_session && e.kind() == io::ErrorKind::PermissionDenied {
                    session_conflict(&e)
                } else {
                    e
                }
            })?;
        let pid = spawned.pid;
        let pgid = match Pgid::try_from(pid) {
            Ok(pgid) => pgid,
            Err(e) => {
                // Cannot happen for a real pid; end it without ever signalling a group.
                spawned.leader.kill_leader();
                let _ = spawned.leader.finish();
                return Err(e.into());
            }
        };
        let lifeline = lifeline::register(pgid, Some(spawned.leader.pidfd().as_fd()));
        drop(window);
        let (stdout, stderr, capture) = if self.capture {
            (
                None,
                None,
                spawned
                    .stdout
                    .take()
                    .map(OwnedFd::from)
                    .zip(spawned.stderr.take().map(OwnedFd::from)),
            )
        } else {
            (spawned.stdout, spawned.stderr, None)
        };
        let mut group = SpawnedGroup {
            lifeline,
            stdin: spawned.stdin.map(LeaderStdin::new),
            stdout,
            stderr,
            capture: None,
            watch: spawned.leader.watch(),
            leader: Mutex::new(spawned.leader),
            pgid,
            grace: self.grace,
            containment: self.containment,
            context: format!("pgroup::SpawnedGroup of {what} (leader pid {pid})"),
            torn_down: false,
        };
        if let Some((out, err)) = capture {
            // On failure, the group is dropped: torn down before the error is returned.
            group.capture = Some(Reader::start(
                Some(out),
                Some(err),
                Some(group.watch.leader_pidfd()),
                format!("pgroup-output-{pid}"),
            )?);
        }
        tracing::debug!(name: "group_spawned", pgid = pid, program = ?program, "group_spawned");
        Ok(group)
    }
}

/// The error of a spawn with a new session that failed with `EPERM`: `setsid` in a child
/// that std already made a group leader, or a `uid`/`gid` setting the caller may not take.
fn session_conflict(e: &io::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{e}: Builder::new_session(true) and a Command with a \
             process_group of its own conflict (setsid fails in a process that already leads \
             a group): drop the process_group, the new session makes a new group anyway (or \
             the Command's uid or gid may not be taken)"
        ),
    )
}
