//! [`SpawnedGroup`]: a process group that lives exactly as long as the value.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;

use crate::guard::deliver_to_own_group;
use crate::leader::{ExitWatch, Leader};
use crate::output::{self, NotReady, NotReadyReason, Reader, Stream};
use crate::stdin::LeaderStdin;
use crate::{lifeline, sys, Containment, Delivery, Pgid, Signal};

/// The grace period [`SpawnedGroup::spawn`] and [`Builder::new`] use: 2 seconds.
///
/// Teardown sends SIGTERM, then waits for the group to exit, and only the wait for a process
/// that does not exit costs the full period: the wait ends the moment every member of the
/// group is gone (orphans whose parent exited early included), so a well-behaved child (one that exits within
/// milliseconds of SIGTERM, as servers and CLIs do) costs no more than its own shutdown.
/// Two seconds lets a server flush logs and remove its socket or pid file, which is what
/// SIGTERM is for; it also bounds what a stubborn child costs a suite of thousands of tests.
/// Set [`Builder::grace_period`] to zero to go straight to SIGKILL.
///
/// # Examples
///
/// ```
/// assert_eq!(pgroup::DEFAULT_GRACE_PERIOD, std::time::Duration::from_secs(2));
/// ```
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(2);

/// How long teardown waits for the leader to die after SIGKILL before it gives up. Only a
/// process stuck in uninterruptible sleep (D state) takes this long; it is then left
/// unreaped, so its group id stays reserved and is never signalled again. In the supervised
/// tiers the same bound covers the supervisor's teardown of the rest of the group; a process
/// that SIGKILL cannot end makes teardown return a `TimedOut` error within it.
///
/// # Examples
///
/// ```
/// // The longest a Drop can block: the grace period plus this bound.
/// let worst = pgroup::DEFAULT_GRACE_PERIOD + pgroup::KILL_WAIT_BOUND;
/// assert_eq!(worst.as_secs(), 7);
/// ```
pub const KILL_WAIT_BOUND: Duration = Duration::from_secs(5);

/// Teardown tracks at most this many descendants of the leader with a pidfd of their own.
const MAX_TRACKED_DESCENDANTS: usize = 1024;

/// Teardown's search for the members left asks each pid handed out since the leader's, one
/// `getpgid` each, up to this many; beyond, listing /proc is cheaper.
#[cfg(pgroup_linux)]
const MAX_PIDS_ASKED: u32 = 1024;

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
    /// - [`Teardown`] carries both tails (in `stdout` and `stderr`), complete once every
    ///   process holding the pipes is gone;
    /// - when the group is dropped while its thread panics (a failed assertion, in a sync
    ///   or a `#[tokio::test]`), the tails are printed to stderr, where libtest and nextest
    ///   show them with the failure;
    /// - readiness errors ([`NotReady`]) include them.
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
    ///   (`setsid` cannot make a group leader a session leader): kind
    ///   [`InvalidInput`](io::ErrorKind::InvalidInput), naming both, before anything starts.
    ///   (Std has no getter for the setting, and this reads it from the alternate `Debug`
    ///   form of the `Command`; should a version of std not show it there, the spawn's
    ///   `EPERM` is returned with a note that names the likely conflict.)
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
        if self.new_session && has_process_group(cmd) {
            return Err(session_conflict(&what));
        }
        if self.capture {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let mut spawned =
            Leader::spawn(cmd, self.containment, self.new_session, &what).map_err(|e| {
                // setsid in a process that std already made a group leader.
                if self.new_session && e.raw_os_error() == Some(nix::libc::EPERM) {
                    // Only where std's `Debug` did not show the group (checked above): say
                    // what may be the cause, keeping the error.
                    io::Error::new(
                        e.kind(),
                        format!(
                            "{e} (if the Command has a process_group of its own: \
                             Builder::new_session(true) cannot be combined with it, since \
                             setsid fails with EPERM in a process that leads a group)"
                        ),
                    )
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
            pid,
            grace: self.grace,
            containment: self.containment,
            program,
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
        tracing::debug!(name: "group_spawned", pgid = pid, program = ?group.program, "group_spawned");
        Ok(group)
    }
}

/// A command running as the leader of its own process group, torn down with its whole group
/// when dropped.
///
/// # Lifecycle
///
/// [`spawn`](SpawnedGroup::spawn) starts the command in a new process group, whose id is the
/// leader's pid, and opens a pidfd on the leader. From then on:
///
/// - [`signal`](SpawnedGroup::signal) signals the whole group: in the `Group` tier through
///   the leader's pidfd with `PIDFD_SIGNAL_PROCESS_GROUP` (Linux 6.9), which names this
///   group and no other, otherwise with `killpg` while the leader is unreaped; either way
///   after the guard's rules that need no /proc (see [`GUARD_RULES`](crate::GUARD_RULES)).
/// - [`try_wait`](SpawnedGroup::try_wait), [`wait`](SpawnedGroup::wait) and
///   [`wait_timeout`](SpawnedGroup::wait_timeout) report the leader's exit status. They look
///   at it with `waitid(WNOWAIT)` and do **not** reap it: the leader's zombie stays until
///   teardown, which keeps the group id reserved (see *Pinning*). Repeated calls return the
///   same status.
/// - [`shutdown`](SpawnedGroup::shutdown), or dropping the value, tears the group down:
///   SIGTERM and SIGCONT to the group (and to the leader through its pidfd if it left the
///   group); a wait of up to the grace period for every member of the group (driven by
///   pidfd events; once the leader and the descendants it saw are gone, a scan of /proc
///   finds the members left, such as orphans); SIGKILL to the group and the leader, whether
///   or not the leader already exited, so that grandchildren still in the group die too;
///   and finally the leader is reaped.
///
/// # Pinning
///
/// The crate never signals a group id after it has reaped that group's leader. The kernel
/// does not reuse a number while any process uses it as a pid, pgid or session id, and that
/// includes an unreaped zombie; so as long as the leader is unreaped, the group id names
/// this group and no other, even if every member has exited. Reaping is the last step of
/// teardown, after the final SIGKILL; a reaped id may be handed to an unrelated process at
/// once, which is why std's `Child::kill` also refuses to signal a reaped child.
///
/// # Waiting
///
/// Waits use the leader's pidfd with `ppoll`, so they wake the moment the leader exits. The
/// crate never calls `waitpid(-1)` or `waitpid(-pgid)`, which in a test binary would steal
/// the exit statuses of other tests' children: the only reap is `waitpid` on the leader's
/// own pid. Teardown's waits are bounded by the grace period and by [`KILL_WAIT_BOUND`].
///
/// # Readiness and captured output
///
/// With [`Builder::capture_output`], a thread of the group reads the leader's stdout and
/// stderr into tails of fixed size (the last [`CAPTURE_LIMIT`](crate::CAPTURE_LIMIT) bytes
/// of each): [`wait_for_line`](SpawnedGroup::wait_for_line) waits for a line that matches (a
/// server's ready line, with its port), [`captured`](SpawnedGroup::captured) reads a tail,
/// [`Teardown`] carries both, and a drop during a panic prints them to stderr, so a failed
/// test shows what its server said. [`wait_for_tcp`](SpawnedGroup::wait_for_tcp) waits for
/// a port, with or without capture. Every readiness wait ends early when the leader exits,
/// with an error ([`NotReady`]) that has its exit status and the tails.
///
/// # Threads
///
/// `SpawnedGroup` is `Send` and `Sync`. Everything that does not end the group takes
/// `&self` and may be called from any thread, at the same time as any other such call:
/// [`try_wait`](SpawnedGroup::try_wait), [`wait`](SpawnedGroup::wait),
/// [`wait_timeout`](SpawnedGroup::wait_timeout), [`signal`](SpawnedGroup::signal),
/// [`id`](SpawnedGroup::id) and [`pgid`](SpawnedGroup::pgid). So an `Arc<SpawnedGroup>`, a
/// `static`, or an rstest `#[once]` fixture (which hands out `&SpawnedGroup`) can check that
/// its server is alive from every test. The leader's state sits behind a lock that is held
/// only to look at it, never across a wait: each waiter polls the leader's pidfd on its own
/// (and, in the supervised tiers, the supervisor's pipe), so every waiter wakes when the
/// leader exits, whichever thread reads the status first. Only the value's owner can end the
/// group ([`shutdown`](SpawnedGroup::shutdown) takes `self`, Drop needs the last reference),
/// so no wait ever races with the reap. The pipes (`stdin`, `stdout`, `stderr`) are plain
/// fields: take them out with `&mut self` before sharing the value.
///
/// A value in a `static` or a `#[once]` fixture is never dropped: the [`lifeline`](crate::lifeline)
/// kills it when the test binary exits, and [`Containment::Supervised`] also when the test
/// binary is killed with SIGKILL.
///
/// # Someone else reaping the leader
///
/// If the test binary sets SIGCHLD to `SIG_IGN`, or a thread runs `waitpid(-1)`, the
/// kernel or that thread reaps the leader, and its number is free. The crate notices
/// (`waitid(P_PIDFD, WNOWAIT)` fails with `ECHILD`) and never signals that number again:
/// [`try_wait`](SpawnedGroup::try_wait) and [`wait`](SpawnedGroup::wait) return an error (the
/// status is lost), and teardown still ends the members left in the group through the
/// leader's pidfd (`PIDFD_SIGNAL_PROCESS_GROUP`; while a group has members, its number is
/// not reused), then returns an error that says so. On kernels before 6.9, which lack that
/// flag, such a group cannot be signalled safely by number: its members are left alone and
/// the error says so.
///
/// # What teardown cannot reach
///
/// A process that leaves the group (`setsid`, `setpgid`, a daemon's double fork) is not a
/// member any more and is not signalled. See the crate documentation for what Drop can and
/// cannot guarantee.
///
/// # Examples
///
/// ```
/// use std::process::{Command, Stdio};
/// use std::io::Read;
/// use pgroup::SpawnedGroup;
///
/// let mut group = SpawnedGroup::spawn(
///     Command::new("sh").args(["-c", "echo ready; sleep 30 & sleep 30"]).stdout(Stdio::piped()),
/// )?;
/// let mut stdout = group.stdout.take().expect("piped");
/// let mut first = [0_u8; 6];
/// stdout.read_exact(&mut first)?;
/// assert_eq!(&first, b"ready\n");
///
/// let report = group.shutdown()?; // both sleeps and the shell are gone
/// assert!(!report.status.success());
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct SpawnedGroup {
    /// The leader's stdin, if the `Command` piped it. Write to it here, or take it out;
    /// [`wait`](SpawnedGroup::wait) and teardown close it if it is still here, as std's
    /// `Child::wait` closes the child's (see [`LeaderStdin`]).
    pub stdin: Option<LeaderStdin>,
    /// The leader's stdout, if the `Command` piped it.
    pub stdout: Option<ChildStdout>,
    /// The leader's stderr, if the `Command` piped it.
    pub stderr: Option<ChildStderr>,
    /// The reader of the captured stdout and stderr ([`Builder::capture_output`]).
    capture: Option<Reader>,
    /// The group's place in the lifeline's registry, released right before the reap. It is
    /// declared before `leader` so that it is also released before the pidfd is closed.
    lifeline: Option<lifeline::Slot>,
    /// The leader, directly or through its supervisor; unreaped until teardown's end. Behind
    /// a lock so that the waits work through `&self`; teardown (`&mut self`) takes it without
    /// locking. Nothing blocks while holding it, except the wait for a supervisor's report
    /// of a leader the kernel already saw exit.
    leader: Mutex<Leader>,
    /// The descriptors a wait polls, without the lock: see [`ExitWatch`].
    watch: ExitWatch,
    pgid: Pgid,
    pid: u32,
    grace: Duration,
    containment: Containment,
    program: OsString,
    context: String,
    /// Set once teardown has run: after that nothing may be signalled.
    torn_down: bool,
}

/// What a teardown did, from [`SpawnedGroup::shutdown`].
///
/// # Examples
///
/// ```
/// use std::process::Command;
///
/// let group = pgroup::SpawnedGroup::spawn(&mut Command::new("sleep").arg("30"))?;
/// let report = group.shutdown()?;
/// println!("{report:?}");
/// assert!(!report.sigkill_needed); // sleep exits on SIGTERM
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Teardown {
    /// The leader's exit status.
    pub status: ExitStatus,
    /// Whether the leader had already exited when teardown began.
    pub exited_before_teardown: bool,
    /// Whether the leader, or another member of the group, was still running when the
    /// grace period ended (always the case for a running leader when the grace period is
    /// zero). The group receives a final SIGKILL either way.
    pub sigkill_needed: bool,
    /// How many of the leader's descendants teardown saw and waited for.
    pub descendants_seen: usize,
    /// How long teardown took, from its start to the reap of the leader.
    pub elapsed: Duration,
    /// The containment tier the group ran under.
    pub containment: Containment,
    /// Processes that had left the group (`setsid`, `setpgid`) and were found and killed by
    /// the supervisor at teardown, with the pids the caller can use (and, for
    /// [`Containment::Namespace`], also their pids inside the namespace). Always empty for
    /// [`Containment::Group`], which cannot see them.
    pub escapees: Vec<Escapee>,
    /// The captured tail of the leader's stdout ([`Builder::capture_output`]; `None`
    /// without it): its last [`CAPTURE_LIMIT`](crate::CAPTURE_LIMIT) bytes, read until
    /// every process holding the pipe was gone (or, if one that left the group still holds
    /// it, for at most half a second after the reap). If the stream was longer, it begins
    /// with `[… N bytes cut]`, `N` being `stdout_dropped`.
    pub stdout: Option<String>,
    /// The captured tail of the leader's stderr, as `stdout`.
    pub stderr: Option<String>,
    /// How many bytes of the captured stdout are not in `stdout`: those written before its
    /// tail (0 when it holds everything, and without [`Builder::capture_output`]).
    pub stdout_dropped: u64,
    /// How many bytes of the captured stderr are not in `stderr`, as `stdout_dropped`.
    pub stderr_dropped: u64,
}

/// A process that had left the group and was killed by the supervisor at teardown: an entry
/// of [`Teardown::escapees`].
///
/// # Examples
///
/// ```
/// use std::process::Command;
/// use pgroup::{Builder, Containment};
///
/// # if !Containment::Supervised.is_available() { return Ok(()); }
/// let group = Builder::new()
///     .containment(Containment::Supervised)
///     .spawn(Command::new("sh").args(["-c", "setsid sleep 30 & sleep 30"]))?;
/// for escapee in group.shutdown()?.escapees {
///     println!("killed {:?} (in the namespace: {:?})", escapee.pid, escapee.pid_in_namespace);
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub struct Escapee {
    /// Its pid in the caller's PID namespace: the one [`SpawnedGroup::id`], /proc and
    /// `kill` use in the test binary. `None` only in the `Namespace` tier, for a process
    /// that was started after teardown began and could not be looked up.
    pub pid: Option<u32>,
    /// Its pid inside the group's PID namespace, as the process saw itself (`getpid`, a pid
    /// file it wrote): [`Containment::Namespace`] only.
    pub pid_in_namespace: Option<u32>,
}

impl SpawnedGroup {
    /// Spawns `cmd` as the leader of a new process group, with the defaults of
    /// [`Builder::new`].
    ///
    /// # Errors
    ///
    /// As [`Builder::spawn`]: the spawn failed, or the kernel cannot pin the group.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    ///
    /// let group = pgroup::SpawnedGroup::spawn(&mut Command::new("sleep").arg("30"))?;
    /// assert_eq!(u32::try_from(group.pgid().as_raw()).unwrap(), group.id());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn(cmd: &mut Command) -> io::Result<SpawnedGroup> {
        Builder::new().spawn(cmd)
    }

    /// The group's id, which is the leader's pid.
    ///
    /// # Examples
    ///
    /// ```
    /// # let group = pgroup::SpawnedGroup::spawn(&mut std::process::Command::new("true"))?;
    /// println!("group {}", group.pgid());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn pgid(&self) -> Pgid {
        self.pgid
    }

    /// The leader's pid, as [`std::process::Child::id`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let group = pgroup::SpawnedGroup::spawn(&mut std::process::Command::new("true"))?;
    /// assert!(group.id() > 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[must_use]
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` to every process in the group, after the rules of
    /// [`GUARD_RULES`](crate::GUARD_RULES) that need no /proc (the group is this value's own:
    /// never the caller's, its session leader's or its parent's). The `Group` tier signals
    /// through the leader's pidfd with `PIDFD_SIGNAL_PROCESS_GROUP` (Linux 6.9), which names
    /// this group and no other; before 6.9, and in the supervised tiers, it is `killpg`
    /// while the leader is unreaped. Events as [`safe_killpg`](crate::safe_killpg)'s.
    ///
    /// The leader is never reaped before teardown, so the group id cannot have been
    /// recycled: this reaches this group even after the leader exited (grandchildren that
    /// are still members get the signal; if none is left, the leader's zombie still counts as
    /// a member and the result is [`Delivery::Sent`]). If someone else reaped the leader,
    /// the `Group` tier still reaches the members left through the leader's pidfd (Linux
    /// 6.9), and [`Delivery::NoSuchGroup`] once there are none: never a group that reuses
    /// the number.
    ///
    /// # Errors
    ///
    /// As [`safe_killpg`](crate::safe_killpg): an OS error other than `ESRCH`, naming the
    /// group and the signal. After teardown, or on a kernel before 6.9 once someone else
    /// reaped the leader, an error says the group is no longer pinned. A refusal of the
    /// guard is not an error but [`Delivery::Refused`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use pgroup::{Signal, SpawnedGroup};
    ///
    /// let mut group = SpawnedGroup::spawn(&mut Command::new("sleep").arg("30"))?;
    /// assert!(group.signal(Signal::SIGKILL)?.is_sent());
    /// assert_eq!(group.wait()?.to_string(), "signal: 9 (SIGKILL)");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn signal(&self, signal: Signal) -> io::Result<Delivery> {
        self.signal_all(&[signal])
    }

    /// Signals the group with each of `signals`, after one decision of the guard's rules
    /// that need no /proc.
    ///
    /// The `Group` tier signals through the leader's pidfd with `PIDFD_SIGNAL_PROCESS_GROUP`
    /// (Linux 6.9): that names this group by the kernel's `struct pid`, never by a number,
    /// so it reaches the members left even after someone else reaped the leader, and never a
    /// group that reuses the number. Before 6.9 (and in the supervised tiers, which hold no
    /// pidfd on the leader) it is `killpg` while the leader is unreaped, and nothing once it
    /// is not.
    fn signal_all(&self, signals: &[Signal]) -> io::Result<Delivery> {
        if self.torn_down {
            return Err(self.not_pinned());
        }
        let leader = self.lock_leader();
        let pidfd = leader.pidfd();
        if pidfd_group_signal_supported(pidfd) {
            return deliver_to_own_group(self.pgid, signals, &self.context, |signal| {
                sys::pidfd_send_signal(pidfd, Some(signal), true)
            });
        }
        // Under the lock: nothing reaps the leader while it is held (teardown needs
        // `&mut self`), so the pin checked here holds for the `killpg` below.
        if !leader.is_pinned() {
            return Err(self.not_pinned());
        }
        deliver_to_own_group(self.pgid, signals, &self.context, |signal| {
            sys::killpg(self.pgid, signal)
        })
    }

    /// The descriptors that become readable when the leader exits (or its supervisor goes),
    /// for a wait that polls them elsewhere: see [`ExitWatch`].
    #[cfg(feature = "tokio")]
    pub(crate) fn exit_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.watch.fds()
    }

    fn not_pinned(&self) -> io::Error {
        let why = if self.torn_down {
            "its leader was reaped by teardown"
        } else {
            "its leader was reaped by someone else, and this kernel (before Linux 6.9) has no \
             PIDFD_SIGNAL_PROCESS_GROUP to reach the group without its number"
        };
        let why = if sys::PORTABLE && !self.torn_down {
            "its leader was reaped by someone else, and the portable backend can reach the \
             group only by its number"
        } else {
            why
        };
        io::Error::other(format!(
            "{}: the group id is no longer pinned ({why}), so it is not signalled",
            self.context
        ))
    }

    /// Signals the leader itself through its pidfd (`Group` tier), but only when it has left
    /// the group, so that it is not signalled twice. The pidfd names this process and no
    /// other, wherever it went; `ESRCH` once it has exited.
    fn signal_leader_if_it_left(&self, signals: &[Signal]) {
        let leader = self.lock_leader();
        let pidfd = leader.pidfd();
        let Ok(pid) = i32::try_from(self.pid) else {
            return;
        };
        // While the leader is unreaped its pid is its own; if it was reaped elsewhere, the
        // pidfd signal below fails with ESRCH whatever this says.
        if sys::getpgid(pid) == Ok(self.pgid.as_raw()) {
            return;
        }
        for &signal in signals {
            let outcome = sys::pidfd_send_signal(pidfd, Some(signal), false);
            tracing::debug!(
                name: "leader_signalled",
                pgid = self.pgid.as_raw(),
                signal = %signal,
                outcome = ?outcome,
                "leader_signalled"
            );
        }
    }

    /// The leader's exit status if it has exited, without reaping it.
    ///
    /// It does not wait for the leader. In the supervised tiers, when the kernel already
    /// reports the leader's exit, it waits for the supervisor's report of the status, which
    /// follows at once (bounded by 5 seconds), so that the answer matches the kernel's.
    ///
    /// Takes `&self`: an `Arc<SpawnedGroup>` or an rstest `#[once]` fixture can ask from any
    /// thread (see *Threads* on [`SpawnedGroup`]).
    ///
    /// # Errors
    ///
    /// The `waitid(2)` call failed, which does not happen for a leader this value owns;
    /// someone else reaped the leader (its status is lost); or the supervisor went, or did
    /// not report an exit it saw.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    ///
    /// let group = pgroup::SpawnedGroup::spawn(&mut Command::new("sleep").arg("30"))?;
    /// assert_eq!(group.try_wait()?, None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        self.lock_leader().peek_exit()
    }

    /// Waits for the leader to exit and returns its status; the group stays pinned until
    /// teardown. Other members of the group may still be running when it returns.
    ///
    /// As std's `Child::wait`, it closes the leader's stdin first if the group still holds
    /// it ([`stdin`](SpawnedGroup::stdin), a [`LeaderStdin`]), so that a leader that reads its
    /// input to the end (`cat`, a CLI reading a request) sees end of file and does not wait
    /// for more while this waits for it. A stdin taken out of the group is left alone.
    /// [`try_wait`](SpawnedGroup::try_wait) and [`wait_timeout`](SpawnedGroup::wait_timeout)
    /// do not close it.
    ///
    /// This wait has no bound, as std's; use [`wait_timeout`](SpawnedGroup::wait_timeout) for
    /// one. Any number of threads may wait at once; each wakes when the leader exits.
    ///
    /// # Errors
    ///
    /// `ppoll(2)` or `waitid(2)` failed, or as [`try_wait`](SpawnedGroup::try_wait).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    ///
    /// let group = pgroup::SpawnedGroup::spawn(Command::new("sh").args(["-c", "exit 3"]))?;
    /// assert_eq!(group.wait()?.code(), Some(3));
    /// assert_eq!(group.wait()?.code(), Some(3)); // the same answer again
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait(&self) -> io::Result<ExitStatus> {
        if let Some(stdin) = &self.stdin {
            stdin.close();
        }
        loop {
            if let Some(status) = self.wait_until(None)? {
                return Ok(status);
            }
        }
    }

    /// Waits up to `timeout` for the leader to exit. `Ok(None)` means it is still running.
    ///
    /// Unlike [`wait`](SpawnedGroup::wait), it leaves the leader's stdin open (a check that
    /// a server is still alive must not close its input): for a leader that reads its input
    /// to the end, drop `group.stdin.take()` first.
    ///
    /// # Errors
    ///
    /// `ppoll(2)` or `waitid(2)` failed, or as [`try_wait`](SpawnedGroup::try_wait).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use std::time::Duration;
    ///
    /// let group = pgroup::SpawnedGroup::spawn(&mut Command::new("sleep").arg("30"))?;
    /// assert_eq!(group.wait_timeout(Duration::from_millis(10))?, None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        self.wait_until(Instant::now().checked_add(timeout))
    }

    /// Waits for the leader's exit until `deadline`. The lock is taken only to look; the
    /// poll runs without it, on descriptors whose readiness is the leader's state (see
    /// [`ExitWatch`]), so no waiter misses an exit another thread saw first.
    pub(crate) fn wait_until(&self, deadline: Option<Instant>) -> io::Result<Option<ExitStatus>> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let Some(left) = time_left(deadline) else {
                return Ok(None);
            };
            sys::poll_readable(&self.watch.fds(), left)?;
        }
    }

    /// The leader, locked. A poisoned lock is taken as is: no code that holds it panics
    /// half-way through a change.
    fn lock_leader(&self) -> MutexGuard<'_, Leader> {
        self.leader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The leader, without locking (teardown owns the value).
    fn leader_mut(&mut self) -> &mut Leader {
        self.leader
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Tears the group down and reports what happened: the checked form of Drop.
    ///
    /// SIGTERM and SIGCONT go to the group; teardown waits up to the grace period for every
    /// member of the group to exit; SIGKILL goes to the group while the leader is still
    /// unreaped; then the leader is reaped. Pipes still in `stdout` and `stderr` are
    /// closed: take them out first to read what is left in them.
    ///
    /// # Errors
    ///
    /// - A signal could not be delivered (`EPERM`, or a guard refusal, which is reported as
    ///   an error here because teardown cannot then do its job; the leader is still killed
    ///   by pid and reaped).
    /// - The leader did not die within [`KILL_WAIT_BOUND`] of SIGKILL (uninterruptible
    ///   sleep). It is left unreaped, so its group id stays reserved.
    /// - Someone else reaped the leader (SIGCHLD ignored, `waitpid(-1)` elsewhere): its
    ///   status is lost. The members left in the group were still torn down (Linux 6.9).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use std::time::Duration;
    ///
    /// // A leader that ignores SIGTERM costs the grace period, then SIGKILL.
    /// let group = pgroup::Builder::new()
    ///     .grace_period(Duration::from_millis(100))
    ///     .spawn(Command::new("sh").args(["-c", "trap '' TERM; sleep 30; :"]))?;
    /// std::thread::sleep(Duration::from_millis(100)); // let the shell install its trap
    /// let report = group.shutdown()?;
    /// assert!(report.sigkill_needed);
    /// assert!(report.elapsed >= Duration::from_millis(100));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn shutdown(mut self) -> io::Result<Teardown> {
        self.teardown()
    }

    /// The whole teardown, here and now: the steps of [`SpawnedGroup::teardown_advance`]
    /// driven with `ppoll`.
    pub(crate) fn teardown(&mut self) -> io::Result<Teardown> {
        let mut steps = self.teardown_begin()?;
        loop {
            if let Some(outcome) = self.teardown_advance(&mut steps)? {
                return outcome;
            }
            let (watched, deadline) = self.teardown_watch(&steps);
            // `None`: the deadline has passed; the next step sees it.
            let readable = match time_left(deadline) {
                Some(left) => sys::poll_readable(&watched, left)?,
                None => vec![false; watched.len()],
            };
            drop(watched);
            steps.mark_readable(&readable);
        }
    }

    /// The first step of teardown: closes stdin and, unless the grace period is zero, looks
    /// at the tree and sends SIGTERM and SIGCONT. Never blocks.
    pub(crate) fn teardown_begin(&mut self) -> io::Result<TeardownSteps> {
        let started = Instant::now();
        drop(self.stdin.take());
        let exited_before_teardown = self.leader_mut().has_exited()?;
        let mut steps = TeardownSteps {
            started,
            errors: Vec::new(),
            exited_before_teardown,
            descendants_seen: 0,
            sigkill_needed: false,
            phase: Phase::Kill { deadline: None },
        };
        if self.grace.is_zero() {
            self.teardown_kill(&mut steps, !exited_before_teardown);
        } else {
            // Look at the tree before SIGTERM: once the leader exits, its children are
            // re-parented and out of sight.
            let descendants = visible_descendants(self.pid);
            steps.descendants_seen = descendants.len();
            self.signal_in_teardown(&[Signal::SIGTERM, Signal::SIGCONT], &mut steps.errors);
            self.signal_leader_if_it_left(&[Signal::SIGTERM, Signal::SIGCONT]);
            steps.phase = Phase::Grace {
                pending: descendants,
                leader_exited: false,
                blind: false,
                deadline: started.checked_add(self.grace),
            };
        }
        Ok(steps)
    }

    /// The final SIGKILL: to the group while the leader is unreaped (or, reaped elsewhere,
    /// while the group is named by its pidfd), so that it is still this group; it catches
    /// the members teardown could not see.
    fn teardown_kill(&mut self, steps: &mut TeardownSteps, sigkill_needed: bool) {
        steps.sigkill_needed = sigkill_needed;
        self.signal_in_teardown(&[Signal::SIGKILL], &mut steps.errors);
        self.signal_leader_if_it_left(&[Signal::SIGKILL]);
        if self.leader_mut().finishes_by_itself() {
            // Nothing is signalled by number from here on: out of the lifeline (see
            // `teardown_reap`), then the supervisor finishes while we wait for the leader.
            drop(self.lifeline.take());
            self.leader_mut().finish_start();
        }
        steps.phase = Phase::Kill {
            deadline: Instant::now().checked_add(KILL_WAIT_BOUND),
        };
    }

    /// Takes every step of teardown that needs no wait: `Some` with the outcome once it is
    /// over, `None` while it waits for [`SpawnedGroup::teardown_watch`]'s descriptors or
    /// deadline.
    ///
    /// The grace period is event-driven: it waits on the pidfds of the leader and of the
    /// descendants seen before SIGTERM; once those have exited, one scan (see
    /// [`live_members`]) finds the members that are still running (orphans whose parent
    /// exited early, such as `sh -c 'server & exit 0'`), and the wait goes on on their
    /// pidfds, then scans again. When all members exit at once, as usual, that is one scan.
    /// If the members cannot be seen (no descriptor free, no /proc), the wait lasts the whole
    /// grace period.
    pub(crate) fn teardown_advance(
        &mut self,
        steps: &mut TeardownSteps,
    ) -> io::Result<Option<io::Result<Teardown>>> {
        if let Phase::Grace {
            pending,
            leader_exited,
            blind,
            deadline,
        } = &mut steps.phase
        {
            if !*leader_exited {
                *leader_exited = self.leader_mut().has_exited()?;
            }
            let mut all_exited = false;
            if *leader_exited && pending.is_empty() && !*blind {
                match live_members(self.pgid, self.pid) {
                    Ok(members) if members.is_empty() => all_exited = true,
                    Ok(members) => *pending = members,
                    // Blind: wait out the grace period (bounded), then SIGKILL.
                    Err(_) => *blind = true,
                }
            }
            if all_exited {
                self.teardown_kill(steps, false);
            } else if time_left(*deadline).is_none() {
                self.teardown_kill(steps, true);
            } else {
                return Ok(None);
            }
        }
        if let Phase::Finishing { deadline, status } = steps.phase {
            if time_left(Some(deadline)).is_some() && self.leader_mut().finish_pending()? {
                return Ok(None);
            }
            return Ok(Some(self.teardown_report(steps, status, deadline)));
        }
        let Phase::Kill { deadline } = steps.phase else {
            return Ok(None);
        };
        if !self.leader_mut().has_exited()? {
            if time_left(deadline).is_some() {
                return Ok(None);
            }
            // Leave the leader unreaped: its id stays reserved, and we never signal again.
            self.torn_down = true;
            return Ok(Some(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{}: the leader did not die within {KILL_WAIT_BOUND:?} of SIGKILL \
                     (uninterruptible sleep?); it was left unreaped",
                    self.context
                ),
            ))));
        }
        match self.teardown_reap(steps, deadline) {
            Ok(()) => self.teardown_advance(steps),
            Err(e) => Ok(Some(Err(e))),
        }
    }

    /// The descriptors the current step of teardown waits on, and until when.
    pub(crate) fn teardown_watch<'a>(
        &'a self,
        steps: &'a TeardownSteps,
    ) -> (Vec<BorrowedFd<'a>>, Option<Instant>) {
        match &steps.phase {
            Phase::Grace {
                pending,
                leader_exited,
                blind,
                deadline,
            } => {
                if *blind {
                    return (Vec::new(), *deadline);
                }
                let mut watched: Vec<BorrowedFd<'a>> = pending.iter().map(AsFd::as_fd).collect();
                if !*leader_exited {
                    watched.extend(self.watch.fds());
                }
                (watched, *deadline)
            }
            Phase::Kill { deadline } => (self.watch.fds(), self.read_records_by(*deadline)),
            // The supervisor's exit, until it has reported and exited.
            Phase::Finishing { deadline, .. } => (
                self.watch.supervisor_fd(),
                self.read_records_by(Some(*deadline)),
            ),
        }
    }

    /// `deadline`, or sooner while a supervisor finishes: its records (one per escapee) are
    /// read at least that often while teardown waits for its exit.
    fn read_records_by(&self, deadline: Option<Instant>) -> Option<Instant> {
        let Some(within) = self.watch.read_records_within() else {
            return deadline;
        };
        let soon = Instant::now() + within;
        Some(deadline.map_or(soon, |d| d.min(soon)))
    }

    /// The reap, once the leader has exited after the final SIGKILL: its status is taken,
    /// the group leaves the lifeline, a supervisor is told to finish, and teardown goes on
    /// in [`Phase::Finishing`].
    fn teardown_reap(
        &mut self,
        steps: &mut TeardownSteps,
        deadline: Option<Instant>,
    ) -> io::Result<()> {
        let mut errors = std::mem::take(&mut steps.errors);
        if let Some(why) = self.leader_mut().status_lost() {
            self.torn_down = true;
            drop(self.lifeline.take());
            let _ = self.leader_mut().finish();
            tracing::debug!(name: "leader_reaped", pgid = self.pgid.as_raw(), "leader_reaped");
            errors.insert(0, why.to_owned());
            return Err(io::Error::other(format!(
                "{}: teardown finished with errors: {}",
                self.context,
                errors.join("; ")
            )));
        }
        let status = self
            .try_wait()?
            .ok_or_else(|| io::Error::other("pgroup: the leader exited without a status"))?;
        // The reap: from here on the id may be recycled, and `torn_down` keeps every method
        // from signalling it again.
        self.torn_down = true;
        // Out of the lifeline's registry first: once the handler cannot claim the slot, it
        // cannot signal this id after the reap.
        drop(self.lifeline.take());
        steps.errors = errors;
        self.leader_mut().finish_start();
        steps.phase = Phase::Finishing {
            deadline: deadline.unwrap_or_else(Instant::now),
            status,
        };
        Ok(())
    }

    /// The end of teardown: the leader (or its supervisor) is reaped, and the report made.
    fn teardown_report(
        &mut self,
        steps: &mut TeardownSteps,
        status: ExitStatus,
        deadline: Instant,
    ) -> io::Result<Teardown> {
        let errors = std::mem::take(&mut steps.errors);
        let escapees = self
            .leader_mut()
            .finish_complete(deadline)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.context)))?;
        tracing::debug!(name: "leader_reaped", pgid = self.pgid.as_raw(), "leader_reaped");
        let (stdout, stderr, [stdout_dropped, stderr_dropped]) = self.finish_capture(deadline);
        let report = Teardown {
            status,
            exited_before_teardown: steps.exited_before_teardown,
            sigkill_needed: steps.sigkill_needed,
            descendants_seen: steps.descendants_seen,
            elapsed: steps.started.elapsed(),
            containment: self.containment,
            escapees,
            stdout,
            stderr,
            stdout_dropped,
            stderr_dropped,
        };
        tracing::debug!(
            name: "group_torn_down",
            pgid = self.pgid.as_raw(),
            report = ?report,
            "group_torn_down"
        );
        if errors.is_empty() {
            Ok(report)
        } else {
            Err(io::Error::other(format!(
                "{}: teardown finished with errors: {}",
                self.context,
                errors.join("; ")
            )))
        }
    }

    /// Signals the group during teardown. If the guard refuses (it should not, for a group
    /// this value created), the leader is still killed by its pid, which is safe because it
    /// is our unreaped child.
    fn signal_in_teardown(&mut self, signals: &[Signal], errors: &mut Vec<String>) {
        match self.signal_all(signals) {
            Ok(Delivery::Sent | Delivery::NoSuchGroup) => {}
            Ok(Delivery::Refused(refusal)) => {
                errors.push(format!("{signals:?} refused by the guard: {refusal}"));
                if signals.contains(&Signal::SIGKILL) {
                    self.leader_mut().kill_leader();
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
}

impl Drop for SpawnedGroup {
    /// Best-effort teardown, as [`SpawnedGroup::shutdown`] but silent: errors go to a WARN
    /// tracing event named `group_teardown_failed`. It does not panic, also not while the
    /// thread unwinds from a failed assertion, and it blocks for at most the grace period
    /// plus [`KILL_WAIT_BOUND`].
    ///
    /// With [`Builder::capture_output`], a drop while the thread panics (a failed assertion
    /// unwinding) prints the captured tails to stderr with `eprint!`, which libtest captures
    /// and shows with the failed test, as nextest does.
    fn drop(&mut self) {
        let status = if self.torn_down {
            None
        } else {
            match self.teardown() {
                Ok(report) => Some(report.status),
                Err(error) => {
                    tracing::warn!(
                        name: "group_teardown_failed",
                        pgid = self.pgid.as_raw(),
                        error = %error,
                        "group_teardown_failed"
                    );
                    None
                }
            }
        };
        if std::thread::panicking() {
            if let Some(reader) = &mut self.capture {
                reader.finish(Instant::now() + CAPTURE_DRAIN_BOUND);
            }
            self.print_captured_output(status);
        }
    }
}

impl fmt::Debug for SpawnedGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpawnedGroup")
            .field("program", &self.program)
            .field("pgid", &self.pgid)
            .field("leader", &self.pid)
            .field("containment", &self.containment)
            .field("grace", &self.grace)
            .field("torn_down", &self.torn_down)
            .finish_non_exhaustive()
    }
}

/// How long teardown waits, after the reap, for the captured pipes to reach end of file: only
/// a process that left the group and still holds them makes it wait that long.
pub(crate) const CAPTURE_DRAIN_BOUND: Duration = Duration::from_millis(500);

/// Whether std's `Debug` of `cmd` (its alternate form, which lists the settings) shows a
/// `process_group`. Std has no getter for it; where the form does not show it, the spawn's
/// `EPERM` is mapped instead.
fn has_process_group(cmd: &Command) -> bool {
    format!("{cmd:#?}")
        .lines()
        .any(|line| line.trim_start().starts_with("pgroup: Some("))
}

fn session_conflict(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "pgroup: cannot spawn {what}: Builder::new_session(true) and a Command with a \
             process_group of its own conflict (setsid fails in a process that already leads \
             a group, with EPERM): drop the process_group, the new session makes a new group \
             anyway"
        ),
    )
}

impl SpawnedGroup {
    /// The captured tail of `stream` so far (its last [`CAPTURE_LIMIT`](crate::CAPTURE_LIMIT)
    /// bytes, lossily decoded as UTF-8, beginning with `[… N bytes cut]` if the stream was
    /// longer), or `None` without [`Builder::capture_output`]. It takes the capture's lock for
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
        self.capture.as_ref()?.capture().text(stream)
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
    /// and see [`Builder::capture_output`].
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
        let awaited = format!("a matching line on {stream}");
        let Some(reader) = &self.capture else {
            return Err(self.not_ready(awaited, NotReadyReason::NotCaptured, None));
        };
        let deadline = Instant::now().checked_add(timeout);
        match reader
            .capture()
            .wait_for_line(stream, deadline, &mut predicate)
        {
            Ok(line) => Ok(line),
            Err(ended) => {
                let mut reason = ended.map_or(NotReadyReason::TimedOut, NotReadyReason::from);
                let status = match reason {
                    NotReadyReason::TimedOut | NotReadyReason::NotCaptured => None,
                    NotReadyReason::LeaderExited => self.try_wait()?,
                    // An exiting leader closes its pipes a moment before the kernel reports
                    // its exit: say which it was (within the timeout).
                    _ => {
                        let bound = Instant::now() + CAPTURE_DRAIN_BOUND;
                        self.wait_until(Some(deadline.map_or(bound, |d| d.min(bound))))?
                    }
                };
                if status.is_some() {
                    reason = NotReadyReason::LeaderExited;
                }
                Err(self.not_ready(awaited, reason, status))
            }
        }
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
        let deadline = Instant::now().checked_add(timeout);
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        let awaited = match addrs.as_slice() {
            [one] => format!("{one} accepted a connection"),
            many => format!("one of {many:?} accepted a connection"),
        };
        let mut backoff = output::TCP_BACKOFF_MIN;
        loop {
            if let Some(status) = self.try_wait()? {
                return Err(self.not_ready(awaited, NotReadyReason::LeaderExited, Some(status)));
            }
            for addr in &addrs {
                let Some(left) = time_left(deadline) else {
                    break;
                };
                let attempt =
                    left.map_or(Duration::from_secs(1), |l| l.min(Duration::from_secs(1)));
                if TcpStream::connect_timeout(addr, attempt).is_ok() {
                    return Ok(());
                }
            }
            let Some(left) = time_left(deadline) else {
                return Err(self.not_ready(awaited, NotReadyReason::TimedOut, None));
            };
            let pause = left.map_or(backoff, |l| l.min(backoff));
            if let Some(status) = self.wait_timeout(pause)? {
                return Err(self.not_ready(awaited, NotReadyReason::LeaderExited, Some(status)));
            }
            backoff = (backoff * 2).min(output::TCP_BACKOFF_MAX);
        }
    }

    /// The leader's exit watch, for the waits that poll it with other descriptors
    /// ([`Run`](crate::Run)): `leader_pidfd()` is readable once the leader has exited
    /// (level-triggered, in every tier); then [`try_wait`](SpawnedGroup::try_wait) has the
    /// status (in the supervised tiers it waits for the supervisor's report, which follows
    /// at once).
    pub(crate) fn exit_watch(&self) -> &ExitWatch {
        &self.watch
    }

    /// The captured output, for the async front end (`Capture::next_lines`).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // the async front end's
    pub(crate) fn capture(&self) -> Option<&output::Capture> {
        self.capture.as_ref().map(Reader::capture)
    }

    /// The error of a readiness wait, with the captured tails.
    pub(crate) fn not_ready(
        &self,
        awaited: String,
        reason: NotReadyReason,
        status: Option<ExitStatus>,
    ) -> io::Error {
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
    fn finish_capture(&mut self, deadline: Instant) -> (Option<String>, Option<String>, [u64; 2]) {
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
    /// [`Builder::capture_output`]. Nothing without capture.
    pub(crate) fn print_captured_output(&self, status: Option<ExitStatus>) {
        if let Some(reader) = &self.capture {
            eprintln!(
                "{}",
                output::failure_report(&self.context, status, reader.capture())
            );
        }
    }
}

/// The time left until `deadline`, for a bounded wait: `Some(None)` waits without bound (no
/// deadline), `None` means the deadline has passed.
pub(crate) fn time_left(deadline: Option<Instant>) -> Option<Option<Duration>> {
    match deadline {
        None => Some(None),
        Some(deadline) => deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .map(Some),
    }
}

/// Where a teardown stands, between the steps of [`SpawnedGroup::teardown_advance`]: the
/// sync teardown drives it with `ppoll`, the background thread of `pgroup::tokio` drives many
/// at once.
pub(crate) struct TeardownSteps {
    started: Instant,
    errors: Vec<String>,
    exited_before_teardown: bool,
    descendants_seen: usize,
    sigkill_needed: bool,
    phase: Phase,
}

enum Phase {
    /// After SIGTERM: waiting, until `deadline`, for the leader and the members in
    /// `pending` (or, `blind`, for the deadline alone).
    Grace {
        pending: Vec<sys::Pidfd>,
        leader_exited: bool,
        blind: bool,
        deadline: Option<Instant>,
    },
    /// After the final SIGKILL: waiting for the leader, until `deadline`.
    Kill { deadline: Option<Instant> },
    /// The leader is dead and its status known; a supervisor finishes its own teardown (kills
    /// and reaps what is left, reports, exits), until `deadline`.
    Finishing {
        deadline: Instant,
        status: ExitStatus,
    },
}

impl TeardownSteps {
    /// Takes note of which of the descriptors of [`SpawnedGroup::teardown_watch`] became
    /// readable: the members among them have exited.
    pub(crate) fn mark_readable(&mut self, readable: &[bool]) {
        if let Phase::Grace { pending, .. } = &mut self.phase {
            let mut readable = readable.iter();
            pending.retain(|_| !readable.next().copied().unwrap_or(false));
        }
    }
}

/// Pidfds on the members of group `pgid` other than its `leader` that have not exited yet,
/// found by a `getpgid` per pid handed out since the leader's (up to [`MAX_PIDS_ASKED`]
/// of them; beyond, from a listing of /proc, for the processes started after the leader).
/// The cost grows with the number of pids handed out since the leader started (or, beyond
/// that bound, with the number of processes on the machine), which is why teardown runs it
/// only once the leader and the descendants it saw have exited. A number whose process exits during the scan is
/// skipped; the group is checked again after `pidfd_open`, so the pidfd is for a process
/// that was a member when it was opened. Only teardown's wait uses this, never a signal: a
/// member it misses gets SIGKILL before the grace period ends, nothing worse.
#[cfg(pgroup_linux)]
fn live_members(pgid: Pgid, leader: u32) -> io::Result<Vec<sys::Pidfd>> {
    // Members are started after the leader, so their pids were handed out after the
    // leader's: above it, or, if the pid counter has wrapped since, at most the last pid
    // handed out. (A process older than the leader that joins its group with `setpgid` is
    // missed.) When few pids were handed out since, each is asked directly; otherwise /proc
    // is listed, and the older processes in it (most of a machine's) are skipped.
    let last = last_pid();
    let mut found = Vec::new();
    let mut consider = |pid: u32| {
        let Ok(raw) = i32::try_from(pid) else {
            return true;
        };
        if sys::getpgid(raw) != Ok(pgid.as_raw()) {
            return true;
        }
        let Ok(fd) = sys::pidfd_open(pid) else {
            return true;
        };
        if sys::getpgid(raw) == Ok(pgid.as_raw()) {
            found.push(fd);
        }
        found.len() < MAX_TRACKED_DESCENDANTS
    };
    match last {
        Some(last) if last >= leader && last - leader <= MAX_PIDS_ASKED => {
            for pid in leader + 1..=last {
                if !consider(pid) {
                    break;
                }
            }
        }
        _ => {
            let started_after_leader = |pid: u32| match last {
                Some(last) if last < leader => pid > leader || pid <= last,
                Some(_) => pid > leader,
                None => pid != leader,
            };
            for entry in std::fs::read_dir("/proc")? {
                let Ok(entry) = entry else { continue };
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                if started_after_leader(pid) && !consider(pid) {
                    break;
                }
            }
        }
    }
    without_exited(found)
}

/// `found` without the members that have exited already: zombies not yet reaped by their
/// new parent are members still, but nothing to wait for.
fn without_exited(mut found: Vec<sys::Pidfd>) -> io::Result<Vec<sys::Pidfd>> {
    if found.is_empty() {
        return Ok(found);
    }
    let exited = sys::poll_readable(
        &found.iter().map(AsFd::as_fd).collect::<Vec<_>>(),
        Some(Duration::ZERO),
    )?;
    let mut exited = exited.into_iter();
    found.retain(|_| !exited.next().unwrap_or(false));
    Ok(found)
}

/// [`live_members`] where there is no /proc: the group's members by the platform's reader
/// (`sys::group_members`), each watched by the portable backend's exit notification.
#[cfg(not(pgroup_linux))]
fn live_members(pgid: Pgid, leader: u32) -> io::Result<Vec<sys::Pidfd>> {
    let mut found = Vec::new();
    for pid in sys::group_members(pgid.as_raw())? {
        if pid == leader || found.len() >= MAX_TRACKED_DESCENDANTS {
            continue;
        }
        let Ok(fd) = sys::pidfd_open(pid) else {
            continue;
        };
        found.push(fd);
    }
    without_exited(found)
}

/// The last pid handed out in this PID namespace (`/proc/sys/kernel/ns_last_pid`), with one
/// open, one read and a close: a number and a newline always fit the buffer, so no second
/// read (nor `std::fs::read_to_string`'s `statx` for a size hint) is needed.
#[cfg(pgroup_linux)]
fn last_pid() -> Option<u32> {
    use std::io::Read;
    let mut buf = [0u8; 32];
    let n = std::fs::File::open("/proc/sys/kernel/ns_last_pid")
        .and_then(|mut f| f.read(&mut buf))
        .ok()?;
    let text = std::str::from_utf8(buf.get(..n)?).ok()?;
    // A complete reading ends with its newline.
    text.strip_suffix('\n')?.parse().ok()
}

/// Pidfds on the leader's descendants, found through `/proc/<pid>/task/<tid>/children`. The
/// cost grows with the size of the tree, never with the number of processes on the machine.
/// Processes that exit while we look are simply missed: the final SIGKILL to the group
/// catches those that are still members.
fn visible_descendants(leader: u32) -> Vec<sys::Pidfd> {
    let mut found = Vec::new();
    crate::leader::walk_descendants(leader, |child| {
        if found.len() >= MAX_TRACKED_DESCENDANTS {
            return ControlFlow::Break(());
        }
        let Ok(fd) = sys::pidfd_open(child) else {
            return ControlFlow::Continue(false);
        };
        found.push(fd);
        ControlFlow::Continue(true)
    });
    found
}

/// Whether this kernel has `PIDFD_SIGNAL_PROCESS_GROUP` (Linux 6.9), asked once with signal 0
/// on `pidfd`: `EINVAL` says the flag is unknown; `ESRCH` and success both say it is known.
fn pidfd_group_signal_supported(pidfd: &sys::Pidfd) -> bool {
    const UNKNOWN: u8 = 0;
    const YES: u8 = 1;
    const NO: u8 = 2;
    static SUPPORT: AtomicU8 = AtomicU8::new(UNKNOWN);
    match SUPPORT.load(Ordering::Relaxed) {
        YES => true,
        NO => false,
        _ => {
            let answer = match sys::pidfd_send_signal(pidfd, None, true) {
                Err(Errno::EINVAL | Errno::ENOSYS) => NO,
                _ => YES,
            };
            SUPPORT.store(answer, Ordering::Relaxed);
            answer == YES
        }
    }
}
