//! [`Supervised`]: the test binary's side of a supervised leader (the `Supervised` and
//! `Namespace` tiers): the supervisor's socket, its records, and the end of its teardown.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::deadline::time_left;
use crate::sys::supervisor::protocol::{
    value_of, CMD_TEARDOWN, EXIT_DONE, EXIT_STUCK, TAG_DONE, TAG_ESCAPEE, TAG_FAILED,
    TAG_SETUP_FAILED, TAG_STATUS, TAG_STUCK, TEARDOWN_BOUND_MS,
};
use crate::{sys, Escapee};

/// How long a wait for the supervisor's report of an exit the kernel already saw may take:
/// it follows at once, unless the supervisor is stopped or gone.
const SUPERVISOR_REPORT_BOUND: Duration = Duration::from_secs(5);

/// What the supervisor reported, read from its socket as it comes.
#[derive(Default)]
struct Reports {
    exit: Option<ExitStatus>,
    escapees: Vec<u32>,
    /// How its work ended, once it says so.
    end: Option<End>,
    /// Every copy of its end is closed.
    closed: bool,
}

impl Reports {
    /// Whether its own set-up failed (it killed and reaped the leader).
    fn failed(&self) -> bool {
        matches!(self.end, Some(End::Failed(_)))
    }
}

/// How a supervisor's work ended, by its last record.
#[derive(Clone, Copy)]
enum End {
    /// Its own set-up failed with this errno; it killed and reaped the leader.
    Failed(i32),
    /// Its teardown gave up on this many processes.
    Stuck(i32),
    /// Its teardown is complete: everything it had is reaped.
    Done,
}

/// How often teardown reads the supervisor's records while it waits for its exit: it sends
/// one per escapee, and waits for room in the socket when there are many.
pub(super) const RECORDS_READ_EVERY: Duration = Duration::from_millis(5);

/// Where the conversation with the supervisor stands.
enum Phase {
    Running,
    /// Told to finish; the outcome of sending the command.
    Finishing(io::Result<()>),
    /// Reaped (or left to a background thread).
    Reaped,
}

/// The `Namespace` tier's init, and the pids of its namespace read before teardown.
struct Namespace {
    init: u32,
    /// `(pid in the namespace, pid here)` of every process in the namespace, read right
    /// before teardown, to translate the escapees' pids.
    pids: Vec<(u32, u32)>,
}

pub(crate) struct Supervised {
    /// Our child.
    supervisor: u32,
    /// The leader's pid here.
    leader: u32,
    /// Shared with the group's [`ExitWatch`](super::ExitWatch).
    pub(super) channel: Arc<OwnedFd>,
    /// A pidfd on the leader (not our child). Shared with the group's [`ExitWatch`](super::ExitWatch).
    pub(super) leader_pidfd: Arc<sys::Pidfd>,
    /// A pidfd on the supervisor (our child), opened when it is needed (teardown, a wait
    /// for its report), so that a live group holds two descriptors: this socket and the
    /// leader's pidfd. Shared with the group's [`ExitWatch`](super::ExitWatch).
    pub(super) exit_pidfd: Arc<OnceLock<sys::Pidfd>>,
    reports: Reports,
    namespace: Option<Namespace>,
    phase: Phase,
}

impl Supervised {
    /// The supervisor just started, running.
    pub(super) fn new(started: sys::Started) -> Supervised {
        Supervised {
            supervisor: started.supervisor,
            leader: started.leader,
            channel: Arc::new(started.channel),
            leader_pidfd: Arc::new(started.leader_pidfd),
            exit_pidfd: Arc::new(OnceLock::new()),
            reports: Reports::default(),
            namespace: started.namespace_init.map(|init| Namespace {
                init,
                pids: Vec::new(),
            }),
            phase: Phase::Running,
        }
    }
}

impl Supervised {
    fn supervisor_pid(&self) -> i32 {
        i32::try_from(self.supervisor).unwrap_or(-1)
    }

    /// The pidfd on the supervisor, opened on first use. It names the supervisor if the
    /// supervisor still runs after the open (its socket is open); otherwise there is none
    /// (its number may name another process by now, SIGCHLD being ignored).
    fn exit_fd(&self) -> Option<&sys::Pidfd> {
        if self.exit_pidfd.get().is_none() && !matches!(self.phase, Phase::Reaped) {
            if let Ok(pidfd) = sys::pidfd_open(self.supervisor).and_then(sys::pidfd_above_stdio) {
                if !sys::hung_up(self.channel.as_fd()) {
                    let _ = self.exit_pidfd.set(pidfd);
                }
            }
        }
        self.exit_pidfd.get()
    }

    /// Whether the leader has exited, by its pidfd (no state read from the socket).
    fn leader_has_exited(&self) -> bool {
        sys::poll_readable(&[self.leader_pidfd.as_fd()], Some(Duration::ZERO))
            .is_ok_and(|ready| ready.first() == Some(&true))
    }

    /// Whether the supervisor runs: its end of the socket is open, and it is not a zombie.
    /// The socket tells also where the kernel reaped it at once (SIGCHLD ignored), and its
    /// number may since name another process.
    fn supervisor_alive(&self) -> bool {
        !sys::hung_up(self.channel.as_fd()) && !sys::has_exited(self.supervisor_pid())
    }

    /// Whether the supervisor holds the leader unreaped: it runs, and has not been told to
    /// finish (nor given up at its start).
    pub(super) fn pins_the_leader(&self) -> bool {
        matches!(self.phase, Phase::Running) && !self.reports.failed() && self.supervisor_alive()
    }

    /// Whether the leader exited and its status will never come: the supervisor is gone
    /// (or gave up at its start) without reporting it.
    pub(super) fn lost(&mut self) -> bool {
        let _ = self.pump();
        self.reports.exit.is_none()
            && self.leader_has_exited()
            && (self.reports.failed()
                || (!self.supervisor_alive() && {
                    // Its last records are in the socket once it has exited.
                    let _ = self.pump();
                    self.reports.exit.is_none()
                }))
    }

    pub(super) fn peek_exit(&mut self) -> io::Result<Option<ExitStatus>> {
        self.pump()?;
        if self.reports.exit.is_none() && self.leader_has_exited() {
            if let Some(status) = self.zombie_status() {
                return Ok(Some(status));
            }
            // The kernel says the leader has exited, and the supervisor's report follows at
            // once: wait for it here (the caller holds the group's lock, so nobody else
            // reads it away), so that the answer matches the pidfd's and a waiter polling
            // it never spins.
            self.await_status(Instant::now() + SUPERVISOR_REPORT_BOUND)?;
            if self.reports.exit.is_none() {
                return Err(if self.lost() {
                    io::Error::other(
                        "pgroup: the supervisor died before the leader's exit status could be \
                         reported: it is lost",
                    )
                } else {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "pgroup: the leader exited, but its supervisor did not report its \
                             status within {SUPERVISOR_REPORT_BOUND:?}"
                        ),
                    )
                });
            }
        }
        Ok(self.reports.exit)
    }

    /// The exited leader's status from /proc, without the supervisor's report (which costs
    /// a round trip): valid while the supervisor, which does not reap the leader before it
    /// is told to finish, lives on both sides of the read, so that the number was the
    /// leader's zombie's.
    fn zombie_status(&mut self) -> Option<ExitStatus> {
        if !self.pins_the_leader() {
            return None;
        }
        let status = sys::zombie_status(self.leader)?;
        self.pins_the_leader().then(|| {
            self.reports.exit = Some(status);
            status
        })
    }

    /// Waits until the supervisor reports the leader's status (or has exited), or
    /// `deadline`.
    fn await_status(&mut self, deadline: Instant) -> io::Result<()> {
        loop {
            self.pump()?;
            if self.reports.exit.is_some() || self.reports.failed() {
                return Ok(());
            }
            let Some(exit) = self.exit_fd() else {
                return Ok(());
            };
            if sys::poll_readable(&[exit.as_fd()], Some(Duration::ZERO))?[0] {
                // Exited: whatever it sent is in the socket now.
                return self.pump();
            }
            let Some(left) = time_left(Some(deadline)) else {
                return Ok(());
            };
            let exit = exit.as_fd();
            sys::poll_readable(&[self.channel.as_fd(), exit], left)?;
        }
    }

    /// Reads and decodes whatever the supervisor has sent.
    fn pump(&mut self) -> io::Result<()> {
        if self.reports.closed {
            return Ok(());
        }
        let reports = &mut self.reports;
        let closed = sys::read_records(self.channel.as_fd(), |record| {
            let value = value_of(record);
            match record.first().copied() {
                Some(TAG_STATUS) => reports.exit = Some(ExitStatus::from_raw(value)),
                Some(TAG_ESCAPEE) => reports.escapees.extend(u32::try_from(value).ok()),
                // The supervisor's own start failed (the spawner's exec, or the program's
                // set-up): it killed and reaped the leader.
                Some(TAG_FAILED | TAG_SETUP_FAILED) => reports.end = Some(End::Failed(value)),
                Some(TAG_STUCK) => reports.end = Some(End::Stuck(value)),
                Some(TAG_DONE) => reports.end = Some(End::Done),
                _ => {}
            }
        })?;
        self.reports.closed = closed;
        Ok(())
    }

    /// Tells the supervisor to finish. Never blocks.
    pub(super) fn finish_start(&mut self) {
        if !matches!(self.phase, Phase::Running) {
            return;
        }
        // Its exit is then the one thing to wait for (see `ExitWatch::supervisor_fd`).
        let _ = self.exit_fd();
        if let Some(namespace) = &mut self.namespace {
            // The escapees are alive until the supervisor kills them: read their pids here
            // while /proc still has them.
            namespace.pids = sys::namespace_pids(namespace.init);
        }
        self.phase = Phase::Finishing(sys::write_byte(self.channel.as_fd(), CMD_TEARDOWN));
    }

    pub(super) fn finish_pending(&mut self) -> io::Result<bool> {
        self.pump()?;
        if !matches!(self.phase, Phase::Finishing(_)) {
            return Ok(false);
        }
        let Some(exit) = self.exit_pidfd.get() else {
            return Ok(false);
        };
        Ok(!sys::poll_readable(&[exit.as_fd()], Some(Duration::ZERO))?[0])
    }

    /// Reaps the supervisor once it has exited (or `deadline` has passed: then a thread
    /// waits for it), and says how its teardown went.
    pub(super) fn finish_complete(&mut self, deadline: Instant) -> io::Result<Vec<Escapee>> {
        // A supervisor that gave up is no longer worth waiting for.
        let deadline = if matches!(self.reports.end, Some(End::Stuck(_))) {
            Instant::now()
        } else {
            deadline
        };
        let _ = self.exit_fd();
        let exit = Arc::clone(&self.exit_pidfd);
        if let Some(exit) = exit.get() {
            while let Some(left) = time_left(Some(deadline)) {
                let slice = left.map_or(RECORDS_READ_EVERY, |l| l.min(RECORDS_READ_EVERY));
                match sys::poll_readable(&[exit.as_fd()], Some(slice)) {
                    Ok(ready) if ready.first() == Some(&true) => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
                self.pump()?;
            }
        }
        // Its last records are in the socket once it has exited.
        self.pump()?;
        let phase = std::mem::replace(&mut self.phase, Phase::Reaped);
        let status = sys::reap_now_or_later(self.supervisor, self.channel.as_fd(), exit.get());
        if let Phase::Finishing(Err(error)) = phase {
            return Err(error);
        }
        if let Some(End::Stuck(stuck)) = self.reports.end {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the supervisor gave up after {TEARDOWN_BOUND_MS} ms: {stuck} process(es) \
                     did not die of SIGKILL (uninterruptible sleep, or a nested PID namespace \
                     whose init cannot finish?)"
                ),
            ));
        }
        if let Some(End::Failed(errno)) = self.reports.end {
            return Err(io::Error::other(format!(
                "the supervisor failed to start ({}), and killed the leader",
                io::Error::from_raw_os_error(errno)
            )));
        }
        match status {
            Ok(Some(status)) if status.code() == Some(EXIT_DONE) => {}
            Ok(Some(status)) if status.code() == Some(EXIT_STUCK) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the supervisor gave up on processes that did not die of SIGKILL",
                ))
            }
            Ok(Some(status)) => {
                return Err(io::Error::other(format!(
                    "the supervisor ended without finishing its teardown ({status})"
                )))
            }
            Ok(None) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the supervisor did not finish its teardown in time",
                ))
            }
            // Someone else reaped it (a `waitid(P_ALL, __WALL)` elsewhere, or the forked
            // supervisor with SIGCHLD ignored): its last record tells the same.
            Err(_) if matches!(self.reports.end, Some(End::Done)) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("the supervisor was reaped by someone else: {e}"),
                ))
            }
        }
        let translate = |inner: u32| match &self.namespace {
            Some(namespace) => Escapee {
                pid: namespace
                    .pids
                    .iter()
                    .find(|(ns, _)| *ns == inner)
                    .map(|(_, here)| *here),
                pid_in_namespace: Some(inner),
            },
            None => Escapee {
                pid: Some(inner),
                pid_in_namespace: None,
            },
        };
        Ok(self
            .reports
            .escapees
            .iter()
            .map(|&inner| translate(inner))
            .collect())
    }
}

impl Drop for Supervised {
    /// A value dropped without [`Supervised::finish_complete`] (teardown gave up on a
    /// leader that would not die): the supervisor is told to kill and reap everything on
    /// its own, and is reaped in the background.
    fn drop(&mut self) {
        if matches!(self.phase, Phase::Reaped) {
            return;
        }
        if matches!(self.phase, Phase::Running) {
            let _ = sys::write_byte(self.channel.as_fd(), CMD_TEARDOWN);
        }
        let _ = sys::reap_now_or_later(self.supervisor, self.channel.as_fd(), self.exit_fd());
    }
}
