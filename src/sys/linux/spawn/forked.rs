//! The forked supervisor (see the module documentation of `spawn`): where the supervisor
//! program cannot be executed, a `pre_exec` hook makes the child std forks the supervisor
//! and forks the leader from it.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::libc;

use super::namespace::{self, mount_proc, Ids};
use super::program::self_pidfd;
use super::report::{read_started, setup_failed, Step};
use crate::sys::supervisor::protocol::TAG_SPAWNED;
use crate::sys::supervisor::raw;
use crate::sys::supervisor::run::{self, Args, EXEC_MARKER};
use crate::sys::Started;

/// The forked supervisor: see the module documentation.
pub(super) fn spawn_forked(
    cmd: &mut Command,
    namespace: bool,
    new_session: bool,
) -> io::Result<Started> {
    let (ours, theirs) = super::channel()?;
    let plan = Plan {
        channel: theirs.as_raw_fd(),
        ours: ours.as_raw_fd(),
        parent: self_pidfd()?,
        namespace,
        new_session,
    };
    let armed = Arc::new(AtomicBool::new(true));
    let hook_armed = Arc::clone(&armed);
    // SAFETY: the hook runs in the forked child between fork and exec. It is written for
    // that context: only raw syscalls on stack data, no allocation, no locks (see `hook`);
    // the atomic load is lock-free. The descriptors it names stay open in the parent until
    // `spawn` has returned; after that the hook is disarmed and does nothing.
    unsafe {
        cmd.pre_exec(move || {
            if hook_armed.load(Ordering::SeqCst) {
                hook(plan)
            } else {
                Ok(())
            }
        });
    }
    let spawned = cmd.spawn();
    // The hook stays in `cmd`; from here on it does nothing, so the `Command` can be
    // spawned again (each supervised spawn adds a hook with its own descriptors).
    armed.store(false, Ordering::SeqCst);
    drop(theirs);
    let mut child = spawned.map_err(|e| {
        if namespace && e.raw_os_error() == Some(libc::EPERM) {
            io::Error::new(
                e.kind(),
                format!(
                    "{e} (creating a PID namespace needs root or unprivileged user \
                     namespaces, which this system forbids; Containment::Supervised needs \
                     neither)"
                ),
            )
        } else {
            e
        }
    })?;
    let supervisor = child.id();
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    // Waited on by pid from here on (std's handle owns nothing else).
    drop(child);
    let (report, leader) = read_started(&ours, supervisor, namespace)?;
    let namespace_init = if namespace {
        Some(crate::sys::parent_of(leader)?)
    } else {
        None
    };
    Ok(Started {
        supervisor,
        leader,
        leader_pidfd: report.pidfd,
        channel: ours,
        namespace_init,
        stdin,
        stdout,
        stderr,
    })
}

/// The forked supervisor's descriptors and choices: plain data, copied into the hook.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    channel: RawFd,
    ours: RawFd,
    parent: RawFd,
    namespace: bool,
    new_session: bool,
}

/// The `pre_exec` hook of the forked supervisor. Runs in the child std forked; returns
/// `Ok(())` only in the leader, which std then execs. An `Err` before the second fork makes
/// std's `spawn` fail with it. Raw calls only (a fork of a multi-threaded process).
pub(super) fn hook(plan: Plan) -> io::Result<()> {
    let os_error = io::Error::from_raw_os_error;
    raw::close(plan.ours);
    // Before any fork: with SIGCHLD ignored (or SA_NOCLDWAIT) the kernel would reap the
    // leader the moment it exits, and its id would no longer be pinned. The leader gets the
    // inherited action back before its exec, as in `Group`.
    // SAFETY: sigaction(2) through libc (async-signal-safe; it supplies the restorer) with
    // structures on this stack; an all-zero sigaction is the default action.
    let inherited = unsafe {
        let mut inherited: libc::sigaction = std::mem::zeroed();
        let dfl: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGCHLD, &dfl, &mut inherited) != 0 {
            return Err(io::Error::last_os_error());
        }
        inherited
    };
    // Own group, so that a SIGKILL to the test binary's group (nextest, a CI runner) does
    // not also take the supervisor, whose job is to outlive exactly that.
    raw::setpgid(0, 0).map_err(os_error)?;
    if plan.namespace {
        forked_namespace()?;
    } else {
        raw::prctl(raw::PR_SET_CHILD_SUBREAPER, 1).map_err(os_error)?;
    }
    // SAFETY: fork(2) in a single-threaded copy; both sides go on with raw calls only.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        if !plan.namespace {
            return forked_leader(plan, inherited);
        }
        // PID 1 of the new namespace: a /proc of its own, then the leader as PID 2.
        let mount_failed = mount_proc().err();
        // SAFETY: as above.
        let leader = if mount_failed.is_none() {
            unsafe { libc::fork() }
        } else {
            -1
        };
        if leader == 0 {
            return forked_leader(plan, inherited);
        }
        if leader < 0 {
            let errno = mount_failed.unwrap_or_else(nix::errno::Errno::last_raw);
            setup_failed(plan.channel, Step::MountProc, errno);
            raw::exit_group(1);
        }
        supervise_forked(plan, leader);
    }
    if plan.namespace {
        // Outside the namespace: only wait for its init, holding nothing open.
        run::close_all_but(&[]);
        let mut status = 0;
        while raw::waitpid(pid, &mut status, 0) == Err(raw::EINTR) {}
        raw::exit_group(0);
    }
    supervise_forked(plan, pid)
}

/// Reports the forked leader and becomes its supervisor.
pub(super) fn supervise_forked(plan: Plan, leader: i32) -> ! {
    let Ok(pidfd) = raw::pidfd_open(leader) else {
        let _ = raw::kill(leader, raw::SIGKILL);
        let mut status = 0;
        let _ = raw::waitpid(leader, &mut status, raw::WALL);
        setup_failed(plan.channel, Step::Pidfd, raw::ESRCH);
        raw::exit_group(1);
    };
    let l = leader.to_le_bytes();
    let record = [TAG_SPAWNED, l[0], l[1], l[2], l[3], 0];
    let _ = raw::send_with_fds(plan.channel, &record, &[pidfd]);
    raw::close(pidfd);
    run::run(Args {
        channel: plan.channel,
        parent: plan.parent,
        leader,
        check_exec: true,
    })
}

/// In the forked leader, before std execs it: its own group (or session), the marker name,
/// the inherited SIGCHLD action back, and none of the supervisor's descriptors.
pub(super) fn forked_leader(plan: Plan, inherited: libc::sigaction) -> io::Result<()> {
    // SAFETY: async-signal-safe calls; the name is a NUL-padded buffer on this stack, and
    // `inherited` is the action the kernel returned in this process (restored with libc's
    // sigaction, which supplies the restorer).
    unsafe {
        let ok = if plan.new_session {
            libc::setsid() >= 0
        } else {
            libc::setpgid(0, 0) == 0
        };
        if !ok {
            return Err(io::Error::last_os_error());
        }
        let mut name = [0_u8; 16];
        name[..EXEC_MARKER.len()].copy_from_slice(EXEC_MARKER);
        libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0);
        libc::sigaction(libc::SIGCHLD, &inherited, ptr::null_mut());
    }
    raw::close(plan.channel);
    raw::close(plan.parent);
    Ok(())
}

/// New PID and mount namespaces (and a user namespace first, when not root), set up (see
/// `namespace::set_up`). This process is single-threaded (a fresh fork), as
/// `CLONE_NEWUSER` requires of `unshare`.
fn forked_namespace() -> io::Result<()> {
    let ids = Ids::of_caller();
    // SAFETY: unshare(2) takes flags.
    if unsafe { libc::unshare(ids.clone_flags()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    namespace::set_up(ids).map_err(|(_, errno)| io::Error::from_raw_os_error(errno))
}
