//! How a `SpawnedGroup` holds its leader: as its own child (the `Group` tier), or through a
//! supervisor process that is the leader's parent (`Supervised`, `Namespace`).
//!
//! Either way the leader stays unreaped until [`Leader::finish`], which is what keeps the
//! group id pinned while the crate may still signal it; and either way the crate holds a
//! pidfd on the leader, through which it signals the leader (and, on Linux 6.9, its group)
//! whatever happened to its parent.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

mod supervised;

use crate::deadline::time_left;
use crate::{sys, Containment, Escapee};
use supervised::{Supervised, RECORDS_READ_EVERY};

pub(crate) enum Leader {
    /// The leader is our own child, watched through its pidfd.
    Direct {
        /// `None` once reaped.
        child: Option<Child>,
        /// Shared with the group's [`ExitWatch`], which polls it without the group's lock.
        pidfd: Arc<sys::Pidfd>,
        exit: Option<ExitStatus>,
        /// Someone else reaped it (SIGCHLD set to `SIG_IGN`, a `waitpid(-1)` elsewhere in
        /// the process): its number is free, and its exit status is lost.
        reaped_elsewhere: bool,
    },
    /// The leader's parent is a supervisor, our child, which reports through a socket.
    Supervised(Supervised),
}

/// A spawned leader and the stdio pipes std made for it.
pub(crate) struct Spawned {
    pub leader: Leader,
    pub pid: u32,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
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
        if containment != Containment::Group && !containment.is_available() {
            // Never downgraded: the caller asked for what only Linux's backend has.
            return Err(sys::unsupported_tier(&format!("{containment:?}")));
        }
        // The paths to exec on which std uses `execvp` (a new session's hook, a `PATH` of
        // the `Command`'s own, the forked supervisor's hook), which would run a file the
        // kernel cannot execute with /bin/sh. `posix_spawnp`, the plain path, fails by
        // itself, and this check (about 30 µs with a long PATH) is not paid there.
        let saw_path = cmd.get_envs().any(|(key, _)| key == "PATH");
        let forked = containment != Containment::Group && sys::supervisor_forks();
        if forked || new_session || saw_path {
            check_exec_format(cmd)
                .map_err(|e| context_err(&e, &format!("pgroup: cannot spawn {what}")))?;
        }
        if new_session {
            sys::set_new_session(cmd);
        } else {
            cmd.process_group(0);
        }
        match containment {
            Containment::Group => Leader::spawn_direct(cmd, what),
            Containment::Supervised => Leader::spawn_supervised(cmd, false, new_session, what),
            Containment::Namespace => Leader::spawn_supervised(cmd, true, new_session, what),
        }
    }

    fn spawn_direct(cmd: &mut Command, what: &str) -> io::Result<Spawned> {
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
            Ok(pidfd) => Ok(Spawned {
                pid,
                stdin: child.stdin.take(),
                stdout: child.stdout.take(),
                stderr: child.stderr.take(),
                leader: Leader::Direct {
                    child: Some(child),
                    pidfd: Arc::new(pidfd),
                    exit: None,
                    reaped_elsewhere: false,
                },
            }),
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

    fn spawn_supervised(
        cmd: &mut Command,
        namespace: bool,
        new_session: bool,
        what: &str,
    ) -> io::Result<Spawned> {
        let tier = if namespace { "Namespace" } else { "Supervised" };
        let mut started = sys::spawn_supervised(cmd, namespace, new_session).map_err(|e| {
            context_err(
                &e,
                &format!("pgroup: cannot spawn {what} with Containment::{tier}"),
            )
        })?;
        Ok(Spawned {
            pid: started.leader,
            stdin: started.stdin.take(),
            stdout: started.stdout.take(),
            stderr: started.stderr.take(),
            leader: Leader::Supervised(Supervised::new(started)),
        })
    }

    /// The descriptors that become readable when the leader exits, shared so that they can
    /// be polled without the lock around the `Leader`.
    pub(crate) fn watch(&self) -> ExitWatch {
        match self {
            Leader::Direct { pidfd, .. } => ExitWatch {
                leader: Arc::clone(pidfd),
                supervisor: None,
            },
            Leader::Supervised(sup) => ExitWatch {
                leader: Arc::clone(&sup.leader_pidfd),
                supervisor: Some((Arc::clone(&sup.exit_pidfd), Arc::clone(&sup.channel))),
            },
        }
    }

    /// The leader's exit status if it has exited, without blocking or reaping. An error if
    /// its status is lost (see [`Leader::status_lost`]).
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
            Leader::Supervised(sup) => sup.peek_exit(),
        }
    }

    /// Whether the leader's exit status is lost: someone other than this crate reaped a
    /// `Direct` leader (its pid and group id are then no longer pinned), or a supervised
    /// leader exited after its supervisor died. Checked afresh until it is seen once.
    pub(crate) fn status_lost(&mut self) -> Option<&'static str> {
        match self.peek_exit() {
            Ok(_) => None,
            Err(_) => match self {
                Leader::Direct {
                    reaped_elsewhere: true,
                    ..
                } => Some(
                    "the leader was reaped by someone else in this process (SIGCHLD set to \
                     SIG_IGN, or a waitpid(-1) elsewhere), so its exit status is lost; the \
                     members left in its group were torn down through the leader's pidfd",
                ),
                Leader::Supervised(sup) => sup.lost().then_some(
                    "the supervisor died before the leader (killed by someone, or by the OOM \
                     killer), so the leader's exit status is lost; the group was torn down \
                     through the leader's pidfd, and processes that had left it were not \
                     reached",
                ),
                Leader::Direct { .. } => None,
            },
        }
    }

    /// Whether the leader has exited: its status is known, or it is lost.
    pub(crate) fn has_exited(&mut self) -> io::Result<bool> {
        match self.peek_exit() {
            Ok(status) => Ok(status.is_some()),
            Err(_) if self.status_lost().is_some() => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// The leader's pidfd: the handle through which the crate signals the leader itself and
    /// (`PIDFD_SIGNAL_PROCESS_GROUP`, Linux 6.9) its group, in every tier. It names that
    /// process, never a recycled number, wherever its parent went.
    pub(crate) fn pidfd(&self) -> &sys::Pidfd {
        match self {
            Leader::Direct { pidfd, .. } => pidfd,
            Leader::Supervised(sup) => &sup.leader_pidfd,
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
            // The supervisor holds the leader unreaped for as long as it runs and has not
            // been told to finish.
            Leader::Supervised(sup) => sup.pins_the_leader(),
        }
    }

    /// Kills the leader through its pidfd, which names that process and no other even
    /// after its number is recycled, wherever it is (also when it left its group).
    pub(crate) fn kill_leader(&mut self) {
        let _ =
            sys::pidfd_send_signal(self.pidfd(), Some(nix::sys::signal::Signal::SIGKILL), false);
    }

    /// Reaps the leader (after the final SIGKILL): from here on its id may be recycled.
    /// Returns the escapees a supervisor found and killed. A supervisor gets
    /// [`crate::KILL_WAIT_BOUND`] from now to finish.
    pub(crate) fn finish(&mut self) -> io::Result<Vec<Escapee>> {
        let deadline = Instant::now() + crate::KILL_WAIT_BOUND;
        self.finish_start();
        let watch = self.watch();
        while self.finish_pending()? {
            let Some(left) = time_left(Some(deadline)) else {
                break;
            };
            let slice = left.map_or(RECORDS_READ_EVERY, |l| l.min(RECORDS_READ_EVERY));
            sys::poll_readable(&watch.supervisor_fd(), Some(slice))?;
        }
        self.finish_complete(deadline)
    }

    /// Whether the leader is held by a supervisor, which can be told to finish as soon as
    /// the final SIGKILL is sent (it reports the leader's status when it reaps it), rather
    /// than once that status is known: one round trip less per teardown.
    pub(crate) fn finishes_by_itself(&self) -> bool {
        matches!(self, Leader::Supervised(_))
    }

    /// The first step of [`Leader::finish`], which never blocks: tells a supervisor to
    /// finish (kill and reap what is left, report, exit).
    pub(crate) fn finish_start(&mut self) {
        if let Leader::Supervised(sup) = self {
            sup.finish_start();
        }
    }

    /// Whether [`Leader::finish`] still waits, on [`ExitWatch::supervisor_fd`], for the
    /// supervisor's exit.
    pub(crate) fn finish_pending(&mut self) -> io::Result<bool> {
        match self {
            Leader::Direct { .. } => Ok(false),
            Leader::Supervised(sup) => sup.finish_pending(),
        }
    }

    /// The last step of [`Leader::finish`], once [`Leader::finish_pending`] has nothing to
    /// wait for or `deadline` has passed: the reap.
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
/// looks) and, once a supervisor has been told to finish, its pidfd. Both are
/// level-triggered by the state that matters, so a waiter cannot miss an exit that another
/// thread observed first.
#[derive(Clone)]
pub(crate) struct ExitWatch {
    leader: Arc<sys::Pidfd>,
    /// A pidfd on the supervisor, once there is one (see `Supervised::exit_pidfd`), and its
    /// socket.
    supervisor: Option<(Arc<OnceLock<sys::Pidfd>>, Arc<OwnedFd>)>,
}

impl ExitWatch {
    /// The pidfd on the leader.
    pub(crate) fn leader_pidfd(&self) -> Arc<sys::Pidfd> {
        Arc::clone(&self.leader)
    }

    /// The descriptors to poll for the leader's exit. Once a supervisor has been told to
    /// finish (teardown), its exit alone: it reports the leader's status, reaps it and
    /// exits, so that one wake-up brings everything (its records are read at least every
    /// [`RECORDS_READ_EVERY`] meanwhile: see [`ExitWatch::read_records_within`]).
    pub(crate) fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let finishing = self.supervisor.as_ref().and_then(|(exit, _)| exit.get());
        match finishing {
            Some(exit) => vec![exit.as_fd()],
            None => vec![self.leader.as_fd()],
        }
    }

    /// What teardown waits on once the leader is dead, while the supervisor finishes
    /// (nothing in the `Group` tier): the supervisor's exit.
    pub(crate) fn supervisor_fd(&self) -> Vec<BorrowedFd<'_>> {
        self.supervisor
            .as_ref()
            .and_then(|(exit, _)| exit.get())
            .map(|exit| vec![exit.as_fd()])
            .unwrap_or_default()
    }

    /// How long a wait on [`ExitWatch::fds`] may last before the supervisor's records are
    /// read ([`RECORDS_READ_EVERY`], while it finishes), or `None`.
    pub(crate) fn read_records_within(&self) -> Option<Duration> {
        self.supervisor
            .as_ref()
            .and_then(|(exit, _)| exit.get())
            .map(|_| RECORDS_READ_EVERY)
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
