//! How a `SpawnedGroup` holds its leader: as its own child (the `Group` tier), or through a
//! supervisor process that is the leader's parent (`Supervised`, `Namespace`).
//!
//! Either way the leader stays unreaped until [`Leader::finish`], which is what keeps the
//! group id pinned while the crate may still signal it.

use std::io;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

#[cfg(target_os = "linux")]
use procfs::process::Process;

use crate::group::time_left;
use crate::{sys, Containment, Escapee};

/// How long teardown yields rather than sleeps while the shared supervisor finishes (see
/// `Supervised::yield_until_finished`).
const FINISH_YIELD: Duration = Duration::from_millis(1);

/// How long spawning waits for a supervisor to report the leader's pid.
const SUPERVISOR_REPORT_BOUND: Duration = Duration::from_secs(5);

pub(crate) enum Leader {
    /// The leader is our own child, watched through its pidfd.
    Direct {
        child: Option<Child>,
        /// Shared with the group's [`ExitWatch`], which polls it without the group's lock.
        pidfd: Arc<sys::Pidfd>,
        exit: Option<ExitStatus>,
        /// Someone else reaped it (SIGCHLD set to `SIG_IGN`, a `waitpid(-1)` elsewhere in
        /// the process): its number is free, and its exit status is lost.
        reaped_elsewhere: bool,
    },
    /// The leader's parent is a supervisor, our child, which reports through a pipe.
    Supervised(Supervised),
}

/// The supervisor process, our child either way.
enum SupervisorProcess {
    /// Forked by std (with the supervisor's `pre_exec` hook).
    Forked(Child),
    /// Made with `clone(CLONE_VM)`, sharing our memory (see `sys/respawn.rs`).
    Shared(sys::SharedSupervisor),
}

impl SupervisorProcess {
    fn id(&self) -> u32 {
        match self {
            SupervisorProcess::Forked(child) => child.id(),
            SupervisorProcess::Shared(sup) => sup.id(),
        }
    }

    /// Whether it has exited (and is now reaped).
    fn try_wait(&mut self) -> io::Result<bool> {
        match self {
            SupervisorProcess::Forked(child) => child.try_wait().map(|s| s.is_some()),
            SupervisorProcess::Shared(sup) => sup.try_reap(),
        }
    }

    fn wait(self) {
        match self {
            SupervisorProcess::Forked(mut child) => {
                let _ = child.wait();
            }
            SupervisorProcess::Shared(sup) => sup.reap(),
        }
    }
}

pub(crate) struct Supervised {
    supervisor: Option<SupervisorProcess>,
    /// A pidfd on the shared-memory supervisor, opened when it is told to finish (so that a
    /// live group holds no descriptor for it): readable once it has exited, by which time
    /// its status pipe has reached end of file. Shared with the group's [`ExitWatch`].
    exit_pidfd: Arc<OnceLock<sys::Pidfd>>,
    control: Option<OwnedFd>,
    /// Shared with the group's [`ExitWatch`] (its hang-up says the supervisor is gone).
    status: Arc<OwnedFd>,
    /// A pidfd on the leader (not our child), opened once the supervisor reported it: it
    /// becomes readable when the leader exits and stays so, whoever reads the status pipe.
    /// Shared with the group's [`ExitWatch`].
    leader_pidfd: Option<Arc<sys::Pidfd>>,
    buf: Vec<u8>,
    reported_pid: Option<i32>,
    failed: Option<i32>,
    exit: Option<ExitStatus>,
    escapees: Vec<u32>,
    /// `Namespace` tier: the namespace's init, by its pid in the test binary's namespace.
    ns_init: Option<u32>,
    /// `Namespace` tier: `(pid in the namespace, pid here)` of every process in the
    /// namespace, read right before teardown, to translate the escapees' pids.
    ns_pids: Vec<(u32, u32)>,
    /// How many processes the supervisor could not kill within its bound.
    stuck: Option<i32>,
    done: bool,
    eof: bool,
    /// The failure to send the teardown command, reported once the supervisor is reaped.
    command_failed: Option<io::Error>,
}

/// A spawned leader and the stdio pipes std made for it.
pub(crate) struct Spawned {
    pub leader: Leader,
    pub pid: u32,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
}

impl Spawned {
    fn new(leader: Leader, pid: u32, child: &mut Child) -> Spawned {
        Spawned {
            leader,
            pid,
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
        }
    }
}

fn context_err(e: &io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl Leader {
    /// Spawns `cmd` as a group leader with the given containment.
    pub(crate) fn spawn(
        cmd: &mut Command,
        containment: Containment,
        new_session: bool,
        what: &str,
    ) -> io::Result<Spawned> {
        // The paths to exec on which std uses `execvp` (the supervised tiers' hook, the new
        // session's hook, a `PATH` of the `Command`'s own), which would run a file the kernel
        // cannot execute with /bin/sh. `posix_spawnp`, the plain `Group` path, fails by
        // itself, and this check (about 30 µs with a long PATH) is not paid there.
        let saw_path = cmd.get_envs().any(|(key, _)| key == "PATH");
        // The `Supervised` tier's exec'd supervisor spawns the leader as `Group` does.
        let exec_supervisor =
            containment == Containment::Supervised && sys::exec_supervisor_available();
        let forked_supervisor = containment != Containment::Group && !exec_supervisor;
        if forked_supervisor || new_session || saw_path {
            check_exec_format(cmd)
                .map_err(|e| context_err(&e, &format!("pgroup: cannot spawn {what}")))?;
        }
        if sys::PORTABLE && containment != Containment::Group {
            // Never downgraded: the caller asked for what only Linux's backend has.
            return Err(sys::unsupported_tier(&format!("{containment:?}")));
        }
        match containment {
            Containment::Group => Leader::spawn_direct(cmd, new_session, what),
            Containment::Supervised if exec_supervisor => {
                Leader::spawn_exec_supervised(cmd, new_session, what)
            }
            Containment::Supervised => Leader::spawn_supervised(cmd, false, new_session, what),
            Containment::Namespace => Leader::spawn_supervised(cmd, true, new_session, what),
        }
    }

    fn spawn_direct(cmd: &mut Command, new_session: bool, what: &str) -> io::Result<Spawned> {
        if new_session {
            sys::set_new_session(cmd);
        } else {
            cmd.process_group(0);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| context_err(&e, &format!("pgroup: cannot spawn {what}")))?;
        let pid = child.id();
        // With SIGCHLD ignored (or a `waitpid(-1)` elsewhere) the leader may have been
        // reaped before `pidfd_open`, and its number given to another process. A pidfd on a
        // process that is alive and not our child is such a stranger: not ours to signal.
        let pinned = sys::pidfd_open(pid).and_then(|pidfd| {
            let stranger = matches!(
                sys::peek_exit(&pidfd),
                Err(ref e) if e.raw_os_error() == Some(nix::libc::ECHILD)
            ) && !sys::poll_readable(&[pidfd.as_fd()], Some(Duration::ZERO))?[0];
            if stranger {
                return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(pidfd)
        });
        match pinned {
            Ok(pidfd) => {
                let mut spawned = Spawned::new(
                    Leader::Direct {
                        child: None,
                        pidfd: Arc::new(pidfd),
                        exit: None,
                        reaped_elsewhere: false,
                    },
                    pid,
                    &mut child,
                );
                if let Leader::Direct { child: slot, .. } = &mut spawned.leader {
                    *slot = Some(child);
                }
                Ok(spawned)
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => {
                // Gone already, and so reaped by someone else (SIGCHLD ignored, a
                // waitpid(-1) elsewhere): its number may be recycled, so it is not killed.
                drop(child);
                Err(context_err(
                    &e,
                    &format!(
                        "pgroup: {what} (pid {pid}) exited and was reaped by someone else in \
                         this process (SIGCHLD set to SIG_IGN, or a waitpid(-1) elsewhere) \
                         before it could be pinned"
                    ),
                ))
            }
            Err(e) => {
                // Our unreaped child: its pid cannot have been recycled.
                let _ = child.kill();
                let _ = child.wait();
                Err(context_err(
                    &e,
                    &format!("pgroup: {what} (pid {pid}) cannot be pinned with a pidfd, so it was killed"),
                ))
            }
        }
    }

    /// The `Supervised` tier without a fork of the test binary (see `sys/respawn.rs`): std
    /// spawns the leader as in `Group`, from a process that then execs the supervisor.
    fn spawn_exec_supervised(
        cmd: &mut Command,
        new_session: bool,
        what: &str,
    ) -> io::Result<Spawned> {
        if new_session {
            sys::set_new_session(cmd);
        } else {
            cmd.process_group(0);
        }
        let started = sys::spawn_exec_supervised(cmd).map_err(|e| {
            context_err(
                &e,
                &format!("pgroup: cannot spawn {what} with Containment::Supervised"),
            )
        })?;
        let mut leader = started.spawned.leader;
        let mut sup = Supervised::new(
            Some(SupervisorProcess::Shared(started.spawned.supervisor)),
            started.control,
            started.status,
        );
        // The leader's pid is std's; the supervisor's report of it is not waited for, so
        // that its start (an exec of the test binary) overlaps the caller's work. Until it
        // runs, the leader is already its unreaped child (pinned), and if it never runs, its
        // end of the status pipe closes: the group then counts as unpinned and is never
        // signalled by number, and teardown reports the supervisor's failure. A pidfd opened
        // while that end is still open names the leader.
        let pid = leader.id();
        let pidfd = sys::pidfd_open(pid).and_then(|pidfd| {
            if sys::hung_up(sup.status.as_fd()) {
                // No supervisor holds the leader any more: end its group through the pidfd,
                // which names it and never a recycled number.
                let _ =
                    sys::pidfd_send_signal(&pidfd, Some(nix::sys::signal::Signal::SIGKILL), true);
                let _ =
                    sys::pidfd_send_signal(&pidfd, Some(nix::sys::signal::Signal::SIGKILL), false);
                Err(io::Error::other(
                    "the supervisor exited before the leader could be watched",
                ))
            } else {
                Ok(pidfd)
            }
        });
        match pidfd {
            Ok(pidfd) => {
                sup.leader_pidfd = Some(Arc::new(pidfd));
                Ok(Spawned::new(Leader::Supervised(sup), pid, &mut leader))
            }
            Err(e) => {
                // Closing the control pipe makes the supervisor kill and reap everything.
                let _ = sup.finish(true, Instant::now() + crate::KILL_WAIT_BOUND);
                Err(context_err(
                    &e,
                    &format!("pgroup: Containment::Supervised for {what} failed to start"),
                ))
            }
        }
    }

    fn spawn_supervised(
        cmd: &mut Command,
        namespace: bool,
        new_session: bool,
        what: &str,
    ) -> io::Result<Spawned> {
        let tier = if namespace { "Namespace" } else { "Supervised" };
        let pipes = sys::install_supervisor(cmd, namespace, new_session).map_err(|e| {
            context_err(
                &e,
                &format!("pgroup: cannot set up the supervisor for {what}"),
            )
        })?;
        let spawned = cmd.spawn();
        // The hook stays in `cmd`; from here on it does nothing, so the `Command` can be
        // spawned again (each supervised spawn adds a hook with its own descriptors).
        pipes.disarm();
        drop(pipes.child_ends);
        let child = spawned.map_err(|e| {
            let hint = if namespace && e.raw_os_error() == Some(nix::libc::EPERM) {
                " (creating a PID namespace needs root or unprivileged user namespaces, \
                  which this system forbids; Containment::Supervised needs neither)"
            } else {
                ""
            };
            context_err(
                &e,
                &format!("pgroup: cannot spawn {what} with Containment::{tier}{hint}"),
            )
        })?;
        let supervisor_pid = child.id();
        let mut sup = Supervised::new(None, pipes.control, pipes.status);
        let reported = sup.wait_for_report(Instant::now() + SUPERVISOR_REPORT_BOUND);
        let pid = reported.and_then(|inner| {
            if namespace {
                let (init, leader) = outer_leader_pid(supervisor_pid, inner)?;
                sup.ns_init = Some(init);
                Ok(leader)
            } else {
                u32::try_from(inner).map_err(|_| io::Error::other("negative leader pid"))
            }
        });
        // The supervisor never reaps the leader before teardown: while its end of the status
        // pipe is open, the reported pid is the leader's, so a pidfd opened before that check
        // names the leader.
        let pid = pid.and_then(|pid| {
            let pidfd = sys::pidfd_open(pid)?;
            if sys::hung_up(sup.status.as_fd()) {
                return Err(io::Error::other(
                    "the supervisor exited before the leader could be watched",
                ));
            }
            sup.leader_pidfd = Some(Arc::new(pidfd));
            Ok(pid)
        });
        match pid {
            Ok(pid) => {
                let mut child = child;
                let mut spawned = Spawned::new(Leader::Supervised(sup), pid, &mut child);
                if let Leader::Supervised(sup) = &mut spawned.leader {
                    sup.supervisor = Some(SupervisorProcess::Forked(child));
                }
                Ok(spawned)
            }
            Err(e) => {
                sup.supervisor = Some(SupervisorProcess::Forked(child));
                // Closing the control pipe makes the supervisor kill and reap everything.
                let _ = sup.finish(true, Instant::now() + crate::KILL_WAIT_BOUND);
                Err(context_err(
                    &e,
                    &format!("pgroup: Containment::{tier} for {what} failed to start"),
                ))
            }
        }
    }

    /// The descriptors that become readable when the leader exits (or its supervisor goes),
    /// shared so that they can be polled without the lock around the `Leader`.
    pub(crate) fn watch(&self) -> ExitWatch {
        match self {
            Leader::Direct { pidfd, .. } => ExitWatch {
                leader: Some(Arc::clone(pidfd)),
                supervisor: None,
                supervisor_exit: None,
            },
            Leader::Supervised(sup) => ExitWatch {
                leader: sup.leader_pidfd.clone(),
                supervisor: Some(Arc::clone(&sup.status)),
                supervisor_exit: Some(Arc::clone(&sup.exit_pidfd)),
            },
        }
    }

    /// The leader's exit status if it has exited, without blocking or reaping. An error if
    /// someone else reaped it (see [`Leader::reaped_elsewhere`]).
    pub(crate) fn peek_exit(&mut self) -> io::Result<Option<ExitStatus>> {
        match self {
            Leader::Direct {
                pidfd,
                exit,
                reaped_elsewhere,
                ..
            } => {
                if *reaped_elsewhere {
                    return Err(reaped_elsewhere_error());
                }
                if exit.is_none() {
                    match sys::peek_exit(pidfd) {
                        Ok(status) => *exit = status,
                        Err(e) if e.raw_os_error() == Some(nix::libc::ECHILD) => {
                            *reaped_elsewhere = true;
                            return Err(reaped_elsewhere_error());
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(*exit)
            }
            Leader::Supervised(sup) => {
                sup.pump()?;
                if sup.exit.is_none() && !sup.eof && sup.leader_has_exited() {
                    // The kernel says the leader has exited, and the supervisor's report
                    // follows at once: wait for it here (the caller holds the group's lock,
                    // so nobody else reads it away), so that the answer matches the pidfd's
                    // and a waiter polling it never spins.
                    sup.await_status(Instant::now() + SUPERVISOR_REPORT_BOUND)?;
                    if sup.exit.is_none() && !sup.eof {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "pgroup: the leader exited, but its supervisor did not report \
                                 its status within {SUPERVISOR_REPORT_BOUND:?}"
                            ),
                        ));
                    }
                }
                if sup.exit.is_none() && sup.eof {
                    return Err(io::Error::other(
                        "pgroup: the supervisor exited before the leader; the group id is no longer pinned",
                    ));
                }
                Ok(sup.exit)
            }
        }
    }

    /// Whether someone other than this crate reaped the leader, which only a `Direct` leader
    /// can suffer here: its pid and group id are then no longer pinned, and its status is
    /// lost. Checked afresh (one `waitid`) until it is seen once.
    pub(crate) fn reaped_elsewhere(&mut self) -> bool {
        match self {
            Leader::Direct { .. } => match self.peek_exit() {
                Ok(_) => false,
                Err(_) => matches!(
                    self,
                    Leader::Direct {
                        reaped_elsewhere: true,
                        ..
                    }
                ),
            },
            Leader::Supervised(_) => false,
        }
    }

    /// Whether the leader has exited: its status is known, or someone else reaped it.
    pub(crate) fn has_exited(&mut self) -> io::Result<bool> {
        match self.peek_exit() {
            Ok(status) => Ok(status.is_some()),
            Err(_) if self.reaped_elsewhere() => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// The leader's pidfd, for the `Direct` tier only: the handle through which the crate
    /// signals the group (`PIDFD_SIGNAL_PROCESS_GROUP`) and the leader itself. The
    /// supervised tiers signal nothing through theirs (the leader is not our child; they
    /// watch its exit with it, see [`ExitWatch`]).
    pub(crate) fn pidfd(&self) -> Option<&sys::Pidfd> {
        match self {
            Leader::Direct { pidfd, .. } => Some(pidfd),
            Leader::Supervised(_) => None,
        }
    }

    /// Whether the group id is still pinned, so that the group may be signalled by number.
    pub(crate) fn is_pinned(&self) -> bool {
        match self {
            // Our child, and unreaped: `waitid(P_PIDFD, WNOWAIT)` still answers for it
            // (ECHILD once someone else reaped it; any failure counts as unpinned).
            Leader::Direct {
                child,
                pidfd,
                reaped_elsewhere,
                ..
            } => child.is_some() && !*reaped_elsewhere && sys::peek_exit(pidfd).is_ok(),
            // The supervisor holds the leader unreaped for as long as it lives, and its end
            // of the status pipe closes only when it exits.
            Leader::Supervised(sup) => sup.control.is_some() && !sys::hung_up(sup.status.as_fd()),
        }
    }

    /// Kills the leader through its pidfd, which names that process and no other even
    /// after its number is recycled, wherever it is (also when it left its group).
    pub(crate) fn kill_leader(&mut self) {
        if let Leader::Direct { pidfd, .. } = self {
            let _ = sys::pidfd_send_signal(pidfd, Some(nix::sys::signal::Signal::SIGKILL), false);
        }
        // A supervisor kills everything itself on `finish`.
    }

    /// Reaps the leader (after the final SIGKILL): from here on its id may be recycled.
    /// Returns the escapees a supervisor found and killed. A supervisor gets
    /// [`crate::KILL_WAIT_BOUND`] from now to finish; see [`Leader::finish_by`].
    pub(crate) fn finish(&mut self) -> io::Result<Vec<Escapee>> {
        self.finish_by(Instant::now() + crate::KILL_WAIT_BOUND)
    }

    /// As [`Leader::finish`], with the supervisor's teardown bounded by `deadline` (the
    /// deadline of the wait for the leader after the final SIGKILL, so that the whole of
    /// teardown keeps the bound the docs give). A supervisor that is not done by then keeps
    /// working on its own (it has a bound of its own) and is reaped in the background.
    pub(crate) fn finish_by(&mut self, deadline: Instant) -> io::Result<Vec<Escapee>> {
        self.finish_start();
        while let Some(fd) = self.finish_pending()? {
            let Some(left) = time_left(Some(deadline)) else {
                break;
            };
            sys::poll_readable(&[fd], left)?;
        }
        self.finish_complete(deadline)
    }

    /// Whether the leader is held by a supervisor, which can be told to finish as soon as
    /// the final SIGKILL is sent (it reports the leader's status when it reaps it), rather
    /// than once that status is known: one round trip less per teardown.
    pub(crate) fn finishes_by_itself(&self) -> bool {
        matches!(self, Leader::Supervised(_))
    }

    /// The first step of [`Leader::finish_by`], which never blocks: tells a supervisor to
    /// finish (kill and reap what is left, report, exit).
    pub(crate) fn finish_start(&mut self) {
        if let Leader::Supervised(sup) = self {
            sup.finish_start(false);
        }
    }

    /// What [`Leader::finish_by`] still waits for: the supervisor's status pipe, until it
    /// reports and exits (end of file); `None` once there is nothing to wait for.
    pub(crate) fn finish_pending(&mut self) -> io::Result<Option<BorrowedFd<'_>>> {
        match self {
            Leader::Direct { .. } => Ok(None),
            Leader::Supervised(sup) => {
                sup.pump()?;
                // Its exit where it has a pidfd: by then the pipe has reached end of file.
                Ok(
                    (!sup.eof)
                        .then(|| sup.exit_pidfd.get().map_or(sup.status.as_fd(), AsFd::as_fd)),
                )
            }
        }
    }

    /// The last step of [`Leader::finish_by`], once [`Leader::finish_pending`] has nothing
    /// to wait for or `deadline` has passed: the reap.
    pub(crate) fn finish_complete(&mut self, deadline: Instant) -> io::Result<Vec<Escapee>> {
        match self {
            Leader::Direct {
                child,
                reaped_elsewhere,
                ..
            } => {
                if let Some(mut child) = child.take() {
                    // Someone else reaped it: there is nothing left to reap.
                    if !*reaped_elsewhere {
                        child.wait()?;
                    }
                }
                Ok(Vec::new())
            }
            Leader::Supervised(sup) => sup.finish_complete(deadline),
        }
    }
}

/// Descriptors that become readable when a leader exits, polled without the lock around its
/// [`Leader`]: the leader's pidfd (readable once it has exited, and from then on, whoever
/// looks) and, in the supervised tiers, the status pipe (readable when a report arrives,
/// hung up when the supervisor goes). Both are level-triggered by the state that matters,
/// so a waiter cannot miss an exit that another thread observed first.
#[derive(Clone)]
pub(crate) struct ExitWatch {
    leader: Option<Arc<sys::Pidfd>>,
    supervisor: Option<Arc<OwnedFd>>,
    /// A pidfd on the supervisor, once there is one (see `Supervised::exit_pidfd`).
    supervisor_exit: Option<Arc<OnceLock<sys::Pidfd>>>,
}

impl ExitWatch {
    /// The pidfd on the leader (every tier has one once spawned).
    pub(crate) fn leader_pidfd(&self) -> Option<Arc<sys::Pidfd>> {
        self.leader.clone()
    }

    /// The descriptors to poll. Once a supervisor has been told to finish (teardown), its
    /// exit alone: it reports the leader's status, reaps it and exits, so that one wake-up
    /// brings everything.
    pub(crate) fn fds(&self) -> Vec<BorrowedFd<'_>> {
        if let Some(exit) = self.supervisor_exit.as_ref().and_then(|cell| cell.get()) {
            return vec![exit.as_fd()];
        }
        self.leader
            .iter()
            .map(|fd| fd.as_fd())
            .chain(self.supervisor.iter().map(|fd| fd.as_fd()))
            .collect()
    }
    /// What teardown waits on once the leader is dead, while the supervisor finishes
    /// (nothing in the `Group` tier): the supervisor's exit where it has a pidfd (one wake-up
    /// for its last reports, the end of file and the exit together), else its status pipe.
    pub(crate) fn supervisor_fd(&self) -> Vec<BorrowedFd<'_>> {
        let exit = self.supervisor_exit.as_ref().and_then(|cell| cell.get());
        match (exit, &self.supervisor) {
            (Some(fd), _) => vec![fd.as_fd()],
            (None, Some(fd)) => vec![fd.as_fd()],
            (None, None) => Vec::new(),
        }
    }
}

impl Supervised {
    /// A supervisor that has reported nothing yet, with the test binary's pipe ends.
    fn new(supervisor: Option<SupervisorProcess>, control: OwnedFd, status: OwnedFd) -> Self {
        Supervised {
            exit_pidfd: Arc::new(OnceLock::new()),
            supervisor,
            control: Some(control),
            status: Arc::new(status),
            leader_pidfd: None,
            buf: Vec::new(),
            reported_pid: None,
            failed: None,
            exit: None,
            escapees: Vec::new(),
            ns_init: None,
            ns_pids: Vec::new(),
            stuck: None,
            command_failed: None,
            done: false,
            eof: false,
        }
    }

    /// Whether the leader has exited, by its pidfd (no state read from the pipe).
    fn leader_has_exited(&self) -> bool {
        self.leader_pidfd.as_ref().is_some_and(|fd| {
            sys::poll_readable(&[fd.as_fd()], Some(Duration::ZERO))
                .is_ok_and(|ready| ready.first() == Some(&true))
        })
    }

    /// Waits until the supervisor reports the leader's status (or goes), or `deadline`.
    fn await_status(&mut self, deadline: Instant) -> io::Result<()> {
        loop {
            self.pump()?;
            if self.exit.is_some() || self.eof {
                return Ok(());
            }
            let Some(left) = time_left(Some(deadline)) else {
                return Ok(());
            };
            sys::poll_readable(&[self.status.as_fd()], left)?;
        }
    }

    /// Reads and decodes whatever the supervisor has sent.
    fn pump(&mut self) -> io::Result<()> {
        if self.eof {
            return Ok(());
        }
        if sys::read_available(self.status.as_fd(), &mut self.buf)? {
            self.eof = true;
        }
        let complete = self.buf.len() / sys::MSG_LEN * sys::MSG_LEN;
        for msg in self.buf[..complete].chunks_exact(sys::MSG_LEN) {
            let value = i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]);
            match msg[0] {
                sys::TAG_PID => self.reported_pid = Some(value),
                sys::TAG_STATUS => self.exit = Some(ExitStatus::from_raw(value)),
                sys::TAG_ESCAPEE => self.escapees.extend(u32::try_from(value).ok()),
                sys::TAG_FAILED => self.failed = Some(value),
                sys::TAG_STUCK => self.stuck = Some(value),
                sys::TAG_DONE => self.done = true,
                _ => {}
            }
        }
        self.buf.drain(..complete);
        Ok(())
    }

    /// Waits for the supervisor's report of the leader's pid (or of a failure).
    fn wait_for_report(&mut self, deadline: Instant) -> io::Result<i32> {
        loop {
            self.pump()?;
            if let Some(errno) = self.failed {
                return Err(io::Error::from_raw_os_error(errno));
            }
            if let Some(pid) = self.reported_pid {
                return Ok(pid);
            }
            if self.eof {
                return Err(io::Error::other("the supervisor exited without reporting"));
            }
            let Some(left) = time_left(Some(deadline)) else {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the supervisor did not report",
                ));
            };
            sys::poll_readable(&[self.status.as_fd()], left)?;
        }
    }

    /// Tells the supervisor to finish (or, with `abandon`, just closes the control pipe,
    /// which it takes as the test binary's death), waits for it until `deadline`, and reaps
    /// it (in the background if it has not exited by then).
    fn finish(&mut self, abandon: bool, deadline: Instant) -> io::Result<Vec<Escapee>> {
        self.finish_start(abandon);
        while !self.eof {
            self.pump()?;
            if self.eof {
                break;
            }
            let Some(left) = time_left(Some(deadline)) else {
                break;
            };
            sys::poll_readable(&[self.status.as_fd()], left)?;
        }
        self.finish_complete(deadline)
    }

    /// Tells the supervisor to finish (or, with `abandon`, just closes the control pipe,
    /// which it takes as the test binary's death). Never blocks.
    fn finish_start(&mut self, abandon: bool) {
        if let Some(SupervisorProcess::Shared(supervisor)) = &self.supervisor {
            // Our unreaped child: the pidfd names it. Its exit is then the one thing to wait
            // for (see `ExitWatch::supervisor_fd`).
            if self.exit_pidfd.get().is_none() {
                if let Ok(pidfd) = sys::pidfd_open(supervisor.id()).and_then(sys::pidfd_above_stdio)
                {
                    let _ = self.exit_pidfd.set(pidfd);
                }
            }
        }
        if let Some(control) = self.control.take() {
            if !abandon {
                // The escapees are alive until the supervisor kills them: read their pids
                // here while /proc still has them.
                if let Some(init) = self.ns_init {
                    self.ns_pids = namespace_pids(init);
                }
                self.command_failed = sys::write_byte(control.as_fd(), sys::CMD_TEARDOWN).err();
                self.yield_until_finished();
            }
        }
    }

    /// After the teardown command: yields the CPU, for at most [`FINISH_YIELD`], until the
    /// shared supervisor has exited, rather than going to sleep at once. Its teardown
    /// usually takes a fraction of that, and a sleeping caller is often woken onto the CPU
    /// where the leader (killed, but busy in its dynamic loader until the signal lands) or
    /// another task runs, and waits there for a scheduler tick while the other CPU idles.
    fn yield_until_finished(&self) {
        let Some(exit) = self.exit_pidfd.get() else {
            return;
        };
        let until = Instant::now() + FINISH_YIELD;
        while Instant::now() < until {
            if sys::poll_readable(&[exit.as_fd()], Some(Duration::ZERO))
                .map_or(true, |ready| ready.first() == Some(&true))
            {
                return;
            }
            std::thread::yield_now();
        }
    }

    /// Reaps the supervisor once it has reported (or `deadline` has passed), and says how
    /// its teardown went.
    fn finish_complete(&mut self, deadline: Instant) -> io::Result<Vec<Escapee>> {
        // A supervisor that gave up is no longer worth waiting for (the `Namespace` tier's
        // outer process waits for the kernel to finish the namespace).
        self.reap_supervisor(if self.stuck.is_some() {
            Instant::now()
        } else {
            deadline
        });
        if let Some(error) = self.command_failed.take() {
            return Err(error);
        }
        if let Some(stuck) = self.stuck {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the supervisor gave up after {} ms: {stuck} process(es) did not die of \
                     SIGKILL (uninterruptible sleep, or a nested PID namespace whose init \
                     cannot finish?)",
                    sys::TEARDOWN_BOUND_MS
                ),
            ));
        }
        if !self.eof {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the supervisor did not finish its teardown in time",
            ));
        }
        if !self.done {
            return Err(io::Error::other(
                "the supervisor ended without finishing its teardown",
            ));
        }
        let translate = |inner: u32| Escapee {
            pid: if self.ns_init.is_some() {
                self.ns_pids
                    .iter()
                    .find(|(ns, _)| *ns == inner)
                    .map(|(_, here)| *here)
            } else {
                Some(inner)
            },
            pid_in_namespace: self.ns_init.map(|_| inner),
        };
        Ok(self
            .escapees
            .iter()
            .map(|&inner| translate(inner))
            .collect())
    }

    /// Reaps the supervisor if it exits by `deadline`; otherwise a thread waits for it (for
    /// the `Namespace` tier the process std spawned waits for the namespace's init, whose
    /// exit the kernel holds until every process in the namespace is gone).
    fn reap_supervisor(&mut self, deadline: Instant) {
        let Some(mut supervisor) = self.supervisor.take() else {
            return;
        };
        // Our unreaped child: its pid cannot have been recycled. The forked supervisor's is
        // opened only now, so that a live group holds no descriptor for it.
        let opened;
        let pidfd = match self.exit_pidfd.get() {
            Some(pidfd) => Some(pidfd),
            None => {
                opened = sys::pidfd_open(supervisor.id()).ok();
                opened.as_ref()
            }
        };
        if let Some(pidfd) = pidfd {
            while let Some(left) = time_left(Some(deadline)) {
                match sys::poll_readable(&[pidfd.as_fd()], left) {
                    Ok(ready) if ready.first() == Some(&true) => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        match supervisor.try_wait() {
            Ok(true) | Err(_) => {}
            Ok(false) => {
                let _ = std::thread::Builder::new()
                    .name("pgroup-reap-supervisor".into())
                    .spawn(move || supervisor.wait());
            }
        }
    }
}

impl Drop for Supervised {
    /// A value dropped without [`Supervised::finish`] (teardown gave up on a leader that
    /// would not die): closing the control pipe makes the supervisor kill and reap
    /// everything on its own; the supervisor itself is reaped in the background.
    fn drop(&mut self) {
        drop(self.control.take());
        if self.supervisor.is_some() {
            self.reap_supervisor(Instant::now());
        }
    }
}

/// std execs with `posix_spawnp` when it can, and otherwise (a `pre_exec` hook: the
/// supervised tiers, a new session; a `PATH` set on the `Command`) with `execvp`, which runs
/// a file the kernel cannot execute (`ENOEXEC`: no `#!` line, not ELF) with `/bin/sh` where
/// `posix_spawnp` fails. To behave the same every way, this finds the file `execvp`
/// would run, as it would (the `Command`'s `PATH` and directory), and fails with `ENOEXEC`
/// when it is neither ELF nor a `#!` script, unless `binfmt_misc` has formats registered
/// (which the kernel might then run). Any doubt lets the spawn go ahead.
fn check_exec_format(cmd: &Command) -> io::Result<()> {
    use std::ffi::OsStr;
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    let program = cmd.get_program();
    let in_dir = |path: PathBuf| -> PathBuf {
        match cmd.get_current_dir() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path,
        }
    };
    let executable = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let file = if program.as_bytes().contains(&b'/') {
        Some(in_dir(PathBuf::from(program)))
    } else {
        let from_cmd = cmd
            .get_envs()
            .find(|(key, _)| *key == OsStr::new("PATH"))
            .map(|(_, value)| value.map(OsStr::to_owned));
        let path = match from_cmd {
            Some(value) => value,
            None => std::env::var_os("PATH"),
        }
        .unwrap_or_else(|| "/bin:/usr/bin".into());
        path.as_bytes()
            .split(|b| *b == b':')
            .map(|dir| {
                let dir = if dir.is_empty() { b"." } else { dir };
                in_dir(Path::new(OsStr::from_bytes(dir)).join(program))
            })
            .find(|candidate| executable(candidate))
    };
    let Some(file) = file.filter(|f| executable(f)) else {
        return Ok(()); // exec reports what is wrong
    };
    let mut head = Vec::with_capacity(4);
    let Ok(opened) = std::fs::File::open(&file) else {
        return Ok(());
    };
    if opened.take(4).read_to_end(&mut head).is_err() {
        return Ok(());
    }
    if head.starts_with(b"#!") || head.starts_with(b"\x7fELF") || binfmt_misc_in_use() {
        return Ok(());
    }
    Err(io::Error::from_raw_os_error(nix::libc::ENOEXEC))
}

/// Whether `binfmt_misc` is mounted with formats registered (entries besides `register` and
/// `status`), in which case the kernel may run files that are neither ELF nor scripts.
fn binfmt_misc_in_use() -> bool {
    std::fs::read_dir("/proc/sys/fs/binfmt_misc").is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name() != "register" && e.file_name() != "status")
    })
}

/// The error for a leader that someone else reaped.
fn reaped_elsewhere_error() -> io::Error {
    io::Error::other(
        "pgroup: the leader was reaped by someone else in this process (SIGCHLD set to \
         SIG_IGN, or a waitpid(-1) or waitpid(-pgid) elsewhere): its exit status is lost, and \
         its pid is no longer pinned",
    )
}

#[cfg(target_os = "linux")]
/// The children of `pid` (of its main thread), from /proc.
fn children_of(pid: u32) -> io::Result<Vec<u32>> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    Process::new(pid)
        .and_then(|p| p.task_main_thread())
        .and_then(|t| t.children())
        .map_err(|e| io::Error::other(format!("cannot read the children of pid {pid}: {e}")))
}

#[cfg(target_os = "linux")]
/// The innermost pid (`NSpid`'s last) of the process `pid` of this namespace.
fn innermost_pid(pid: u32) -> Option<i32> {
    let pid = i32::try_from(pid).ok()?;
    Process::new(pid)
        .and_then(|p| p.status())
        .ok()
        .and_then(|s| s.nspid)
        .and_then(|ids| ids.last().copied())
}

/// `(pid in the namespace, pid here)` of every process under the namespace's `init` (every
/// process of a PID namespace descends from its init: orphans are re-parented to it). A
/// bounded walk of /proc's `children` lists, so its cost grows with the namespace, not with
/// the machine. Processes that exit meanwhile are skipped.
fn namespace_pids(init: u32) -> Vec<(u32, u32)> {
    const MAX: usize = 65_536;
    let mut found = Vec::new();
    walk_descendants(init, |child| {
        if found.len() >= MAX {
            return ControlFlow::Break(());
        }
        if let Some(inner) = innermost_pid(child).and_then(|p| u32::try_from(p).ok()) {
            found.push((inner, child));
        }
        ControlFlow::Continue(true)
    });
    found
}

#[cfg(target_os = "linux")]
/// Calls `visit` on every process below `root`, found through
/// `/proc/<pid>/task/<tid>/children`, so the cost grows with the tree and never with the
/// number of processes on the machine. `visit` answers whether to go on below that process,
/// or to stop the walk. Processes that exit meanwhile are skipped.
///
/// Teardown runs this before SIGTERM, so it is read directly rather than through procfs's
/// `Process::tasks`/`Task::children` (issue 14: 16 syscalls per process there, 8 here: the
/// task directory's open, two `getdents64` and close, then per thread an open, two reads
/// and a close). The `children` file is a list of decimal pids separated by spaces, which
/// needs no parser.
pub(crate) fn walk_descendants(root: u32, mut visit: impl FnMut(u32) -> ControlFlow<(), bool>) {
    let mut queue = vec![root];
    let mut list = Vec::new();
    while let Some(pid) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if read_children(&task.path().join("children"), &mut list).is_err() {
                continue;
            }
            let children = list
                .split(u8::is_ascii_whitespace)
                .filter_map(|pid| std::str::from_utf8(pid).ok()?.parse::<u32>().ok());
            for child in children {
                match visit(child) {
                    ControlFlow::Break(()) => return,
                    ControlFlow::Continue(true) => queue.push(child),
                    ControlFlow::Continue(false) => {}
                }
            }
        }
    }
}

/// Reads a `children` file of /proc into `list` (cleared first) with plain reads into a
/// buffer on the stack: no `fstat` or `lseek` for a size hint, which /proc cannot give.
#[cfg(target_os = "linux")]
fn read_children(path: &std::path::Path, list: &mut Vec<u8>) -> io::Result<()> {
    use std::io::Read;
    list.clear();
    let mut file = std::fs::File::open(path)?;
    let mut chunk = [0u8; 4096];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => list.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// In the `Namespace` tier the supervisor reports the leader's pid inside the namespace;
/// the test binary needs the one it sees. The leader is the child of the namespace's init
/// (the only child of the process std spawned) whose innermost pid (`NSpid`) is the one
/// reported; init's other children are orphans re-parented to it. Returns init's pid and
/// the leader's, as the test binary sees them.
fn outer_leader_pid(spawned: u32, inner: i32) -> io::Result<(u32, u32)> {
    let init = match children_of(spawned)?.as_slice() {
        [init] => *init,
        other => {
            return Err(io::Error::other(format!(
                "expected the namespace's init as the only child of pid {spawned}, found {other:?}"
            )))
        }
    };
    for child in children_of(init)? {
        if innermost_pid(child) == Some(inner) {
            return Ok((init, child));
        }
    }
    Err(io::Error::other(format!(
        "the leader (pid {inner} in the namespace) is not a child of its init (pid {init})"
    )))
}

/// The descendants' walk needs /proc: elsewhere it finds nothing, and teardown waits for
/// the group's members instead (see `live_members` in `group.rs`).
#[cfg(not(target_os = "linux"))]
pub(crate) fn walk_descendants(_root: u32, _visit: impl FnMut(u32) -> ControlFlow<(), bool>) {}

/// Only the `Namespace` tier (Linux) asks for children.
#[cfg(not(target_os = "linux"))]
fn children_of(pid: u32) -> io::Result<Vec<u32>> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("cannot read the children of pid {pid} without /proc"),
    ))
}

/// Only the `Namespace` tier (Linux) asks for namespaced pids.
#[cfg(not(target_os = "linux"))]
fn innermost_pid(_pid: u32) -> Option<i32> {
    None
}
