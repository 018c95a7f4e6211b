//! Teardown: the steps that end a group, which the sync teardown and the reaper thread drive.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::{sys, Containment, Delivery, Escapee, Signal};

use super::members::{live_members, visible_descendants};
use super::{SpawnedGroup, KILL_WAIT_BOUND};
use crate::deadline::time_left;

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
    /// The captured tail of the leader's stdout ([`Builder::capture_output`](crate::Builder::capture_output); `None`
    /// without it): its last [`CAPTURE_LIMIT`](crate::CAPTURE_LIMIT) bytes, read until
    /// every process holding the pipe was gone (or, if one that left the group still holds
    /// it, for at most half a second after the reap). If the stream was longer, it begins
    /// with `[… N bytes cut]`, `N` being `stdout_dropped`.
    pub stdout: Option<String>,
    /// The captured tail of the leader's stderr, as `stdout`.
    pub stderr: Option<String>,
    /// How many bytes of the captured stdout are not in `stdout`: those written before its
    /// tail (0 when it holds everything, and without [`Builder::capture_output`](crate::Builder::capture_output)).
    pub stdout_dropped: u64,
    /// How many bytes of the captured stderr are not in `stderr`, as `stdout_dropped`.
    pub stderr_dropped: u64,
}

impl SpawnedGroup {
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
            if let Some(report) = self.teardown_advance(&mut steps)? {
                return Ok(report);
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
            let descendants = visible_descendants(self.id());
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

    /// Takes every step of teardown that needs no wait: `Some` with the report once it is
    /// over (an error ends it too), `None` while it waits for [`SpawnedGroup::teardown_watch`]'s descriptors or
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
    ) -> io::Result<Option<Teardown>> {
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
                match live_members(self.pgid, self.id()) {
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
            return self.teardown_report(steps, status, deadline).map(Some);
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
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{}: the leader did not die within {KILL_WAIT_BOUND:?} of SIGKILL \
                     (uninterruptible sleep?); it was left unreaped",
                    self.context
                ),
            ));
        }
        self.teardown_reap(steps, deadline)?;
        self.teardown_advance(steps)
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
