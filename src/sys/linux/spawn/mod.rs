//! How a supervised group starts (Linux): a leader spawned by std exactly as in the `Group`
//! tier, as the child of a supervisor process that shares nothing with the test binary.
//!
//! # The spawner
//!
//! The calling thread blocks every signal and creates the *spawner* with
//! `clone(CLONE_VM | CLONE_VFORK)`, the way `posix_spawn` creates its child: a process that
//! runs on a stack of its own in the test binary's memory while the calling thread is
//! suspended by the kernel, until the spawner execs or exits. Debuggers, valgrind and
//! seccomp profiles know this shape (it is `vfork`). In place of the suspended thread (its
//! thread-local storage, its `errno`), the spawner:
//!
//! 1. leaves the test binary's process group (a SIGKILL to that group, as nextest sends at
//!    its timeout, must not take the supervisor), becomes a child subreaper (or, for
//!    `Namespace`, is init of a new PID namespace, with a `/proc` of its own), sets SIGCHLD
//!    to its default action (ignored, the kernel would reap the leader at once), and sets
//!    the handlers of the test binary to their default actions (`CLONE_CLEAR_SIGHAND`, or
//!    one by one where `clone3` is refused);
//! 2. asks for [`PARENT_DEATH_SIGNAL`] when the calling thread dies. The calling thread
//!    cannot end while it is suspended, unless the whole test binary dies: then the handler
//!    kills and reaps what the spawner started, and exits. So the spawner never outlives
//!    the test binary while it runs std's code, whose locks (the environment lock, the
//!    allocator's) a thread of the dead test binary may still hold;
//! 3. asks the scheduler for short slices (`sched_setattr`, reset in its children) and
//!    runs on the calling thread's CPU, so that the suspended caller does not wait behind
//!    the leader it is starting;
//! 4. runs std's `Command::spawn` with the calling thread's signal mask, which std passes
//!    on to the leader: every setting of the `Command` (stdio, environment, `env_clear`,
//!    working directory, `arg0`, uid and gid, `pre_exec` hooks, which run in the leader)
//!    is applied by std, with `posix_spawn` where it can, as in the `Group` tier;
//! 5. sends the leader's pid, a pidfd on it and the parent ends of its stdio pipes to the
//!    test binary ([`TAG_SPAWNED`], `SCM_RIGHTS` on a `SOCK_SEQPACKET` socket pair), and
//!    execs the supervisor program (`supervisor/main.rs`, built by `build.rs`, a few KiB
//!    with no C library and no dynamic loader) from a sealed `memfd` (`execveat`, or its
//!    `/proc/self/fd` path where that is refused): from then on the supervisor has memory,
//!    descriptors and signal handlers of its own, and the calling thread resumes.
//!
//! Nothing is written into the test binary's memory that the calling thread reads: every
//! answer comes through the socket, so that the same code also works where the kernel (or
//! valgrind, which turns `CLONE_VM | CLONE_VFORK` into a plain fork) gives the spawner a copy.
//!
//! A test binary that ignores SIGCHLD has the supervisor reaped by the kernel when it
//! exits, and its exit status with it: its last record ([`TAG_DONE`], or the ones for a
//! failure) says the same. (Creating it with no exit signal would not help: an exec gives
//! it SIGCHLD again.)
//!
//! # The forked supervisor
//!
//! Where the supervisor program cannot be executed (not built: see `build.rs`; a system
//! that refuses executable `memfd`s, `vm.memfd_noexec = 2`; a seccomp profile that denies
//! `memfd_create` or `execveat`; `PGROUP_SUPERVISOR_PROGRAM=off`), the supervisor is a fork
//! of the test binary instead: std forks the child for the `Command` with a `pre_exec` hook
//! that forks once more; the grandchild is the leader, which std execs, and the child runs
//! the same supervisor loop (`supervisor/run.rs`) in its copy of the test binary. The
//! guarantees are the same; the fork copies the test binary's page tables, so its cost
//! grows with the test binary's memory, and `pre_exec` hooks of the `Command` run in the
//! supervisor's copy before the leader is forked.

mod clone;
mod forked;
mod namespace;
mod program;
mod report;

use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command};
use std::ptr;

use nix::libc::{self, c_int, c_void};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

#[cfg(doc)]
use crate::sys::supervisor::protocol::TAG_DONE;
use crate::sys::supervisor::protocol::{ARGV0, TAG_SPAWNED};
use crate::sys::supervisor::raw;
use crate::sys::supervisor::run::{self, write_decimal};
use crate::sys::Started;
use clone::clone_spawner;
use forked::spawn_forked;
use namespace::Ids;
use program::{program, program_switch, self_pidfd, Environment, Program, Stack};
use report::{read_started, send_spawn_error, setup_failed, Step};

/// The signal the spawner asks for when the calling thread dies (`PR_SET_PDEATHSIG`).
/// glibc's and musl's `sigprocmask` refuse to block it (it is their internal `SIGSETXID`),
/// so that the calling thread's mask, which std passes on to the leader, is left exactly as
/// it is; where it is blocked anyway, the spawner asks for SIGKILL instead (then a leader
/// spawned in the moment the test binary dies is not killed with it).
const PARENT_DEATH_SIGNAL: c_int = 33;

/// Spawns `cmd` (already given `process_group(0)`, or a new session) as the leader of a
/// supervised group; `namespace` makes the supervisor init of a new PID namespace.
pub(crate) fn spawn(cmd: &mut Command, namespace: bool, new_session: bool) -> io::Result<Started> {
    let forced_fork = !program_switch()?;
    match program() {
        Ok(image) if !forced_fork => spawn_exec(cmd, image, namespace),
        _ => spawn_forked(cmd, namespace, new_session),
    }
}

/// Whether the forked supervisor is in use: the supervisor program is not available here,
/// or turned off.
pub(crate) fn forks() -> bool {
    !matches!(program_switch(), Ok(true)) || program().is_err()
}

/// What the spawner is given. It only reads this (under valgrind it has a copy).
struct Context<'a> {
    cmd: &'a mut Command,
    /// The spawner's end of the socket.
    channel: RawFd,
    /// The pidfd on the test binary.
    parent: RawFd,
    /// The test binary's pid, to see that it is still the spawner's parent.
    parent_pid: i32,
    program: &'a Program,
    envp: *const *const u8,
    /// The calling thread's signal mask, which std passes on to the leader.
    mask: libc::sigset_t,
    /// The CPU the calling thread ran on when it made the spawner (see [`move_to_cpu`]).
    cpu: c_int,
    /// Whether the handlers of the test binary are still to be reset (no `clone3`).
    reset_handlers: bool,
    /// The parent-death signal: [`PARENT_DEATH_SIGNAL`], or SIGKILL where the calling
    /// thread blocks it.
    death_signal: c_int,
    namespace: Option<Ids>,
}

/// The socket pair between the test binary and a supervisor (`SOCK_SEQPACKET`, both ends
/// close-on-exec and non-blocking, above stdio): the test binary's end, then the other.
fn channel() -> io::Result<(OwnedFd, OwnedFd)> {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    Ok((super::above_stdio(ours)?, super::above_stdio(theirs)?))
}

/// The supervisor program's path: see the module documentation.
fn spawn_exec(cmd: &mut Command, program: &Program, namespace: bool) -> io::Result<Started> {
    let (ours, theirs) = channel()?;
    let parent = self_pidfd()?;
    let environment = Environment::capture();
    let ids = namespace.then(Ids::of_caller);
    let mut stack = Stack::take()?;
    let mut ctx = Context {
        cmd,
        channel: theirs.as_raw_fd(),
        parent,
        parent_pid: crate::sys::getpid(),
        program,
        envp: environment.pointers.as_ptr(),
        // SAFETY: sigset_t is plain data; filled in below, before the spawner runs.
        mask: unsafe { std::mem::zeroed() },
        reset_handlers: false,
        // SAFETY: sched_getcpu(3) takes nothing and returns a number (-1 on failure).
        cpu: unsafe { libc::sched_getcpu() },
        death_signal: PARENT_DEATH_SIGNAL,
        namespace: ids,
    };
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | ids.map_or(0, Ids::clone_flags);
    // Every signal blocked in this thread while the spawner starts (it inherits the mask):
    // no handler of the test binary may run in the spawner before it has reset them. Also
    // the two signals glibc keeps for itself. Restored at once: with CLONE_VFORK the
    // kernel holds this thread until the spawner has exec'd or exited.
    // SAFETY: sigset_t is plain data; sigfillset and pthread_sigmask fill and apply it.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut ctx.mask);
        if libc::sigismember(&ctx.mask, PARENT_DEATH_SIGNAL) == 1 {
            ctx.death_signal = libc::SIGKILL;
        }
    }
    let old = raw::signal::set_sigmask(u64::MAX);
    // SAFETY: `spawner_main` runs on its own stack with `ctx`, which outlives it: this
    // thread is suspended until the spawner has exec'd or exited, and the spawner reads
    // `ctx` and the `Command` only (see the module documentation).
    let cloned = unsafe { clone_spawner(&mut stack, flags, &mut ctx) };
    raw::signal::set_sigmask(old);
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &ctx.mask, ptr::null_mut()) };
    stack.release();
    drop(theirs);
    drop(environment);
    let pid = cloned.map_err(|e| {
        if namespace
            && matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::EINVAL | libc::ENOSPC)
            )
        {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create the PID namespace (clone: {e}): it needs root or \
                     unprivileged user namespaces, which this system or its seccomp profile \
                     forbids; Containment::Supervised needs neither"
                ),
            )
        } else {
            io::Error::new(
                e.kind(),
                format!("cannot start the supervisor (clone: {e})"),
            )
        }
    })?;
    let supervisor = u32::try_from(pid).map_err(|_| io::Error::other("negative pid"))?;
    let (report, leader) = read_started(&ours, supervisor, namespace)?;
    Ok(Started {
        supervisor,
        leader,
        leader_pidfd: report.pidfd,
        channel: ours,
        namespace_init: namespace.then_some(supervisor),
        stdin: report.stdin.map(ChildStdin::from),
        stdout: report.stdout.map(ChildStdout::from),
        stderr: report.stderr.map(ChildStderr::from),
    })
}

/// The spawner (see the module documentation). Never returns.
extern "C" fn spawner_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Context` that `spawn_exec` passed, alive and untouched by the
    // suspended calling thread until this process execs or exits.
    let ctx = unsafe { &mut *arg.cast::<Context<'_>>() };
    let channel = ctx.channel;
    if let Err((step, errno)) = prepare(ctx) {
        setup_failed(channel, step, errno);
        raw::exit_group(1);
    }
    // std passes the signal mask on to the leader: the calling thread's, as in `Group`. The
    // parent-death signal stays deliverable (its handler is this process's own).
    // SAFETY: sets this process's own mask from the sigset_t the caller saved.
    let spawned = unsafe {
        let mut mask = ctx.mask;
        libc::sigdelset(&mut mask, PARENT_DEATH_SIGNAL);
        libc::sigprocmask(libc::SIG_SETMASK, &mask, ptr::null_mut());
        let spawned = ctx.cmd.spawn();
        raw::signal::set_sigmask(u64::MAX);
        spawned
    };
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            send_spawn_error(channel, &e);
            raw::exit_group(1);
        }
    };
    let leader = i32::try_from(child.id()).unwrap_or(0);
    let stdio = [
        child.stdin.take().map(IntoRawFd::into_raw_fd),
        child.stdout.take().map(IntoRawFd::into_raw_fd),
        child.stderr.take().map(IntoRawFd::into_raw_fd),
    ];
    // The `Child` owns nothing else (no pidfd was asked for); it is never waited on here.
    std::mem::forget(child);
    let abandon = |step: Step, errno: i32| -> ! {
        // Our own unreaped child: its pid is ours to kill.
        let _ = raw::kill(leader, raw::SIGKILL);
        let mut status = 0;
        let _ = raw::waitpid(leader, &mut status, raw::WALL);
        setup_failed(channel, step, errno);
        raw::exit_group(1)
    };
    let pidfd = match raw::pidfd_open(leader) {
        Ok(fd) => fd,
        Err(errno) => abandon(Step::Pidfd, errno),
    };
    let mut fds = [pidfd, -1, -1, -1];
    let mut count = 1;
    let mut mask = 0_u8;
    for (bit, fd) in stdio.iter().enumerate() {
        if let Some(fd) = fd {
            fds[count] = *fd;
            count += 1;
            mask |= 1 << bit;
        }
    }
    let l = leader.to_le_bytes();
    let record = [TAG_SPAWNED, l[0], l[1], l[2], l[3], mask];
    if let Err(errno) = raw::send_with_fds(channel, &record, &fds[..count]) {
        abandon(Step::Report, errno);
    }
    // The supervisor starts with these two descriptors only: none of the test binary's (its
    // stdout, where `cargo test | tee` waits for end of file) outlives the exec. Before
    // Linux 5.11 the supervisor closes the others itself, first thing.
    let _ = raw::cloexec_all();
    // A test binary that died since is seen by the supervisor at once (its pidfd).
    for fd in [channel, ctx.parent] {
        if let Err(errno) = raw::keep_on_exec(fd) {
            abandon(Step::Exec, errno);
        }
    }
    // `leader=<pid> channel=<fd> parent=<fd>`, on the stack.
    let mut leader_arg = [0_u8; 24];
    let mut channel_arg = [0_u8; 24];
    let mut parent_arg = [0_u8; 24];
    let leader_arg = numbered(&mut leader_arg, b"leader=", leader);
    let channel_arg = numbered(&mut channel_arg, b"channel=", channel);
    let parent_arg = numbered(&mut parent_arg, b"parent=", ctx.parent);
    let argv: [*const u8; 5] = [
        ARGV0.as_ptr(),
        leader_arg,
        channel_arg,
        parent_arg,
        ptr::null(),
    ];
    // SAFETY: `argv` is a null-terminated array of NUL-terminated strings on this stack;
    // `envp` is the caller's, alive until this process has exec'd.
    let errno = unsafe { ctx.program.exec(argv.as_ptr(), ctx.envp) };
    abandon(Step::Exec, errno)
}

/// Writes `prefix` and `value` in decimal, NUL-terminated, into `buf`; returns its start.
fn numbered(buf: &mut [u8; 24], prefix: &[u8], value: i32) -> *const u8 {
    let len = prefix.len().min(12);
    buf[..len].copy_from_slice(&prefix[..len]);
    let digits = write_decimal(&mut buf[len..23], u64::try_from(value).unwrap_or(0));
    buf[len + digits] = 0;
    buf.as_ptr()
}

/// Whether the test binary died since the spawner was made: it is no longer our parent, or
/// (in a new PID namespace, where the parent is out of sight) its pidfd says it exited.
fn parent_died(ctx: &Context<'_>) -> bool {
    if ctx.namespace.is_none() {
        return raw::getppid() != ctx.parent_pid;
    }
    let mut fds = [raw::PollFd::new(ctx.parent, raw::POLLIN)];
    raw::poll(&mut fds, 0).is_ok_and(|n| n > 0)
}

/// The spawner's set-up before std's spawn (see the module documentation).
fn prepare(ctx: &Context<'_>) -> Result<(), (Step, i32)> {
    let errno = || nix::errno::Errno::last_raw();
    raw::setpgid(0, 0).map_err(|e| (Step::ProcessGroup, e))?;
    if ctx.namespace.is_none() {
        raw::prctl(raw::PR_SET_CHILD_SUBREAPER, 1).map_err(|e| (Step::Subreaper, e))?;
    }
    if ctx.reset_handlers {
        reset_handlers();
    }
    ask_for_short_slices();
    move_to_cpu(ctx.cpu);
    // SAFETY: sigaction through libc with a zeroed (default) action on this stack.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        if libc::sigaction(libc::SIGCHLD, &dfl, ptr::null_mut()) != 0 {
            return Err((Step::Signals, errno()));
        }
    }
    // The parent-death handler, with the kernel's call: libc refuses the signal, which it
    // keeps for itself. The handler never returns, so the restorer (which x86_64 requires)
    // never runs; it ends the process should it ever be reached.
    let action = raw::signal::KernelSigaction {
        handler: on_parent_death as extern "C" fn(c_int) as usize,
        flags: SA_RESTORER,
        restorer: never_returned_to as extern "C" fn() as usize,
        mask: u64::MAX,
    };
    raw::signal::sigaction(PARENT_DEATH_SIGNAL, Some(&action), None)
        .map_err(|e| (Step::Signals, e))?;
    let death = usize::try_from(ctx.death_signal).unwrap_or(0);
    raw::prctl(raw::PR_SET_PDEATHSIG, death).map_err(|e| (Step::Signals, e))?;
    if parent_died(ctx) {
        return Err((Step::ParentDied, raw::ESRCH));
    }
    if let Some(ids) = ctx.namespace {
        namespace::set_up(ids)?;
        namespace::mount_proc().map_err(|e| (Step::MountProc, e))?;
    }
    Ok(())
}

/// `SA_RESTORER`: the handler's return address is the given restorer.
const SA_RESTORER: u64 = 0x0400_0000;

/// The restorer of [`on_parent_death`], which never returns.
extern "C" fn never_returned_to() {
    raw::exit_group(1);
}

/// Moves the spawner to `cpu`, the one the suspended calling thread last ran on, and gives
/// it its CPU mask back at once (the leader, spawned next, inherits the calling thread's
/// mask unchanged). New processes start on the idlest CPU, which is the calling thread's own
/// once it sleeps; there the starting leader would then run, and the calling thread, woken
/// on its own CPU when the spawner execs, would wait behind it for as long as a dynamic
/// loader runs (most of a millisecond here). On the calling thread's CPU the spawner, and
/// then the supervisor, which soon sleeps, hold it instead. Nothing is moved when `cpu` is
/// unknown; failures change nothing.
fn move_to_cpu(cpu: c_int) {
    let Ok(cpu) = usize::try_from(cpu) else {
        return;
    };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: sched_getaffinity(2) and sched_setaffinity(2) with cpu_set_t values on our
    // stack, of the size given; CPU_SET writes one bit inside the set (`cpu` is below
    // CPU_SETSIZE, checked).
    unsafe {
        let mut mask: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize
            || libc::sched_getaffinity(0, size, &mut mask) != 0
            || !libc::CPU_ISSET(cpu, &mask)
        {
            return;
        }
        let mut only: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut only);
        if libc::sched_setaffinity(0, size, &only) == 0 {
            libc::sched_setaffinity(0, size, &mask);
        }
    }
}

/// `struct sched_attr` (Linux 3.14), its first version.
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// Asks the scheduler to let the spawner (and, after its exec, the supervisor) run as soon
/// as it wakes, with a short slice (`sched_runtime` of `SCHED_OTHER`, Linux 6.12; ignored
/// before): when the leader's exec wakes the spawner, the leader (a new program starting,
/// often on the same CPU) would otherwise run on until its own slice ends, up to a
/// millisecond, while the calling thread waits for the spawner. `SCHED_FLAG_RESET_ON_FORK`
/// gives the leader the default slice again; only a plain `SCHED_OTHER` spawner with a
/// nice value of 0 or more asks (so that the reset changes nothing else for the leader).
fn ask_for_short_slices() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_FLAG_RESET_ON_FORK: u64 = 1;
    const SLICE_NS: u64 = 100_000;
    let size = u32::try_from(std::mem::size_of::<SchedAttr>()).unwrap_or(48);
    let mut current = SchedAttr::default();
    // SAFETY: sched_getattr(2) fills at most `size` bytes of `current`, on our stack.
    let got = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            ptr::from_mut(&mut current),
            size,
            0,
        )
    };
    if got != 0 || current.policy != SCHED_OTHER || current.nice < 0 || current.flags != 0 {
        return;
    }
    let wanted = SchedAttr {
        size,
        policy: SCHED_OTHER,
        flags: SCHED_FLAG_RESET_ON_FORK,
        nice: current.nice,
        runtime: SLICE_NS,
        ..SchedAttr::default()
    };
    // SAFETY: sched_setattr(2) reads `wanted`, of the size it says, on our stack.
    let _ = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, ptr::from_ref(&wanted), 0) };
}

/// Every handler of the test binary back to its default action (ignored signals stay
/// ignored, as std and exec keep them), where `clone3` could not do it.
fn reset_handlers() {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut old = raw::signal::KernelSigaction::DFL;
        if raw::signal::sigaction(sig, None, Some(&mut old)).is_ok()
            && old.handler != raw::signal::SIG_DFL
            && old.handler != raw::signal::SIG_IGN
        {
            let _ = raw::signal::sigaction(sig, Some(&raw::signal::KernelSigaction::DFL), None);
        }
    }
}

/// The parent-death signal's handler: the test binary died while the spawner ran std's
/// code. Kills and reaps what it started (our own unreaped children), and exits; in a PID
/// namespace, exiting is enough (the kernel kills the rest of it). Raw calls only.
extern "C" fn on_parent_death(_: c_int) {
    if raw::getppid() != 0 {
        run::for_each_child(|child| {
            if child > 1 {
                let _ = raw::kill(child, raw::SIGKILL);
                let mut status = 0;
                let _ = raw::waitpid(child, &mut status, raw::WALL);
            }
        });
    }
    raw::exit_group(1);
}
