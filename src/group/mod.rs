//! [`SpawnedGroup`]: a process group that lives exactly as long as the value.

mod builder;
mod members;
mod ready;
mod teardown;

use std::fmt;
use std::io;
use std::process::{ChildStderr, ChildStdout, Command, ExitStatus};
use std::time::{Duration, Instant};

use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::capture::{Reader, CAPTURE_DRAIN_BOUND};
use crate::guard::deliver_to_own_group;
use crate::leader::{ExitWatch, Leader};
use crate::stdin::LeaderStdin;
use crate::{lifeline, sys, Containment, Delivery, Pgid, Signal};

pub use builder::Builder;
#[cfg(feature = "tokio")]
pub(crate) use ready::{LineWait, TcpWait};
pub use teardown::Teardown;
#[cfg(feature = "tokio")]
pub(crate) use teardown::TeardownSteps;

use crate::deadline::time_left;
use members::pidfd_group_signal_supported;

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
/// with an error ([`NotReady`](crate::NotReady)) that has its exit status and the tails.
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
    /// The group's id, which is the leader's pid.
    pgid: Pgid,
    grace: Duration,
    containment: Containment,
    /// Names the group in errors and events: the program and the leader's pid.
    context: String,
    /// Set once teardown has run: after that nothing may be signalled.
    torn_down: bool,
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
        u32::from(self.pgid)
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
    pub(crate) fn exit_fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
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
        // While the leader is unreaped its pid is its own; if it was reaped elsewhere, the
        // pidfd signal below fails with ESRCH whatever this says.
        if sys::getpgid(self.pgid.as_raw()) == Ok(self.pgid.as_raw()) {
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
            .field("context", &self.context)
            .field("pgid", &self.pgid)
            .field("containment", &self.containment)
            .field("grace", &self.grace)
            .field("torn_down", &self.torn_down)
            .finish_non_exhaustive()
    }
}
