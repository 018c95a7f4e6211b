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
//! 3. runs std's `Command::spawn` with the calling thread's signal mask, which std passes
//!    on to the leader: every setting of the `Command` (stdio, environment, `env_clear`,
//!    working directory, `arg0`, uid and gid, `pre_exec` hooks, which run in the leader)
//!    is applied by std, with `posix_spawn` where it can, as in the `Group` tier;
//! 4. sends the leader's pid, a pidfd on it and the parent ends of its stdio pipes to the
//!    test binary ([`TAG_SPAWNED`], `SCM_RIGHTS` on a `SOCK_SEQPACKET` socket pair), and
//!    execs the supervisor program (`supervisor/main.rs`, built by `build.rs`, a few KiB
//!    with no C library and no dynamic loader) from a sealed `memfd`: from then on the
//!    supervisor has memory, descriptors and signal handlers of its own, and the calling
//!    thread resumes.
//!
//! Nothing is written into the test binary's memory that the calling thread reads: every
//! answer comes through the socket, so that the same code also works where the kernel (or
//! valgrind, which turns `CLONE_VM | CLONE_VFORK` into a plain fork) gives the spawner a copy.
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

use std::ffi::{CString, OsString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use nix::libc::{self, c_int, c_void};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketFlags, SocketType,
};

use super::supervisor::protocol::{
    ARGV0, CMD_TEARDOWN, TAG_SETUP_FAILED, TAG_SPAWNED, TAG_SPAWN_FAILED,
};
use super::supervisor::raw;
use super::supervisor::run::{self, write_decimal, Args, EXEC_MARKER};
use super::Started;

/// The signal the spawner asks for when the calling thread dies (`PR_SET_PDEATHSIG`).
/// glibc's and musl's `sigprocmask` refuse to block it (it is their internal `SIGSETXID`),
/// so that the calling thread's mask, which std passes on to the leader, is left exactly as
/// it is; where it is blocked anyway, the spawner asks for SIGKILL instead (then a leader
/// spawned in the moment the test binary dies is not killed with it).
const PARENT_DEATH_SIGNAL: c_int = 33;

/// The spawner's stack: std's `spawn` runs on it, and so do `pre_exec` hooks (std forks the
/// leader from the spawner when there are any). Mapped without reserve: only the pages
/// touched cost memory.
const STACK_LEN: usize = 8 << 20;
/// Below the stack: a guard band that a deep frame cannot jump over unnoticed.
const GUARD_LEN: usize = 64 << 10;

/// What went wrong in the spawner, for [`TAG_SETUP_FAILED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    ProcessGroup = 1,
    Subreaper,
    Signals,
    ParentDied,
    Namespace,
    MountProc,
    Pidfd,
    Report,
    Exec,
}

impl Step {
    fn from_byte(byte: u8) -> Option<Step> {
        [
            Step::ProcessGroup,
            Step::Subreaper,
            Step::Signals,
            Step::ParentDied,
            Step::Namespace,
            Step::MountProc,
            Step::Pidfd,
            Step::Report,
            Step::Exec,
        ]
        .into_iter()
        .find(|s| *s as u8 == byte)
    }

    fn describe(self) -> &'static str {
        match self {
            Step::ProcessGroup => "cannot leave the test binary's process group (setpgid)",
            Step::Subreaper => "cannot become a child subreaper (prctl)",
            Step::Signals => "cannot set its signal dispositions (sigaction, prctl)",
            Step::ParentDied => "the test binary died while it spawned",
            Step::Namespace => "cannot set up the user namespace's id maps",
            Step::MountProc => "cannot mount /proc in the new PID namespace",
            Step::Pidfd => "cannot open a pidfd on the leader",
            Step::Report => "cannot send the leader's descriptors to the test binary",
            Step::Exec => "cannot execute the supervisor program",
        }
    }
}

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

/// The environment variable that turns the supervisor program off (the supervisor is then
/// forked): `off`, `0` or `false` in any case; `on`, `1`, `true` or unset keep it on.
pub(crate) const PROGRAM_VAR: &str = "PGROUP_SUPERVISOR_PROGRAM";

/// [`PROGRAM_VAR`], read once.
fn program_switch() -> io::Result<bool> {
    static SWITCH: OnceLock<Result<bool, String>> = OnceLock::new();
    SWITCH
        .get_or_init(|| crate::containment::switch(PROGRAM_VAR))
        .clone()
        .map_err(|message| io::Error::new(io::ErrorKind::InvalidInput, message))
}

/// The supervisor program, loaded into a sealed `memfd` and probed once per process; `Err`
/// says why it cannot be used here.
fn program() -> Result<&'static OwnedFd, &'static str> {
    static PROGRAM: OnceLock<Result<OwnedFd, String>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            let loaded = load_program();
            if let Err(why) = &loaded {
                tracing::warn!(
                    name: "supervisor_program_unavailable",
                    reason = %why,
                    "supervisor_program_unavailable"
                );
            }
            loaded
        })
        .as_ref()
        .map_err(String::as_str)
}

#[cfg(pgroup_image)]
const PROGRAM_IMAGE: Option<&[u8]> = Some(include_bytes!(concat!(
    env!("OUT_DIR"),
    "/pgroup-supervisor"
)));
#[cfg(not(pgroup_image))]
const PROGRAM_IMAGE: Option<&[u8]> = None;

fn load_program() -> Result<OwnedFd, String> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let image = PROGRAM_IMAGE.ok_or_else(|| {
        "the supervisor program was not built with the crate (see the build script's \
         warning)"
            .to_owned()
    })?;
    let base = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    // MFD_EXEC (Linux 6.3) asks for an executable memfd explicitly; older kernels refuse
    // the flag, and every memfd is executable there.
    let memfd = rustix::fs::memfd_create("pgroup-supervisor", base | MemfdFlags::EXEC)
        .or_else(|_| rustix::fs::memfd_create("pgroup-supervisor", base))
        .map_err(|e| format!("memfd_create: {e}"))?;
    let mut file = std::fs::File::from(memfd);
    std::io::Write::write_all(&mut file, image).map_err(|e| format!("write: {e}"))?;
    let memfd = super::above_stdio(OwnedFd::from(file)).map_err(|e| format!("fcntl: {e}"))?;
    rustix::fs::fcntl_add_seals(
        &memfd,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )
    .map_err(|e| format!("sealing the memfd: {e}"))?;
    probe(&memfd)?;
    Ok(memfd)
}

/// Runs the program once with `--probe` (a `vfork` and an exec, about 60 µs), so that a
/// system that refuses to execute it is known before any leader is spawned.
fn probe(program: &OwnedFd) -> Result<(), String> {
    let argv: [*const u8; 3] = [
        ARGV0.as_ptr(),
        super::supervisor::protocol::PROBE.as_ptr(),
        ptr::null(),
    ];
    let envp: [*const u8; 1] = [ptr::null()];
    let fd = program.as_raw_fd();
    let mut stack = Stack::take().map_err(|e| format!("mmap: {e}"))?;
    let mut job = ProbeJob {
        fd,
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
    };
    // SAFETY: `probe_main` runs on the new stack with `job`, which outlives it: with
    // CLONE_VFORK this thread is suspended until the child has exec'd or exited, and the
    // child only reads `job` (and under valgrind, which forks instead, reads its copy).
    let pid = unsafe {
        libc::clone(
            probe_main,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            ptr::from_mut(&mut job).cast(),
        )
    };
    stack.release();
    if pid <= 0 {
        return Err(format!("clone: {}", io::Error::last_os_error()));
    }
    let status = super::reap_pid_status(pid);
    match status {
        Some(0) => Ok(()),
        Some(code) => Err(format!(
            "executing it from a memfd failed: {}",
            io::Error::from_raw_os_error(code)
        )),
        None => Err("the probe was killed".to_owned()),
    }
}

struct ProbeJob {
    fd: RawFd,
    argv: *const *const u8,
    envp: *const *const u8,
}

extern "C" fn probe_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ProbeJob` that `probe` passed, alive while we run.
    let job = unsafe { &*arg.cast::<ProbeJob>() };
    // SAFETY: the job's arrays are null-terminated arrays of NUL-terminated strings.
    let errno = unsafe { raw::execveat_fd(job.fd, job.argv, job.envp) };
    raw::exit_group(errno)
}

/// A stack for the spawner: `[guard | stack]`, reused from a pool once the spawner has
/// exec'd or exited (the calling thread is suspended until then, so it is free at once).
struct Stack {
    base: *mut u8,
}

// SAFETY: plain memory, owned by whoever holds the handle.
unsafe impl Send for Stack {}

static STACKS: Mutex<Vec<Stack>> = Mutex::new(Vec::new());
const STACKS_KEPT: usize = 4;

impl Stack {
    fn take() -> io::Result<Stack> {
        if let Some(stack) = STACKS.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            return Ok(stack);
        }
        // SAFETY: a new anonymous private mapping, placed by the kernel, checked against
        // MAP_FAILED; its lowest part becomes the guard band.
        unsafe {
            let base = libc::mmap(
                ptr::null_mut(),
                GUARD_LEN + STACK_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            libc::mprotect(base, GUARD_LEN, libc::PROT_NONE);
            Ok(Stack { base: base.cast() })
        }
    }

    /// The top of the stack, 16-byte aligned (the mapping is page-aligned).
    fn top(&mut self) -> *mut c_void {
        // SAFETY: one past the end of our own mapping.
        unsafe { self.base.add(GUARD_LEN + STACK_LEN).cast() }
    }

    /// Back to the pool, or unmapped. Only once nothing runs on it any more.
    fn release(self) {
        let mut pool = STACKS.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < STACKS_KEPT {
            pool.push(self);
            return;
        }
        drop(pool);
        // SAFETY: our own mapping, which nothing uses any more (the caller vouches).
        unsafe { libc::munmap(self.base.cast(), GUARD_LEN + STACK_LEN) };
    }
}

/// A pidfd on the test binary itself, which the supervisor polls to learn that it has
/// exited: one per process, kept open (a process forked from it gets one of its own).
fn self_pidfd() -> io::Result<RawFd> {
    static SELF: Mutex<Option<(u32, OwnedFd)>> = Mutex::new(None);
    let me = std::process::id();
    let mut slot = SELF.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((pid, fd)) = slot.as_ref() {
        if *pid == me {
            return Ok(fd.as_raw_fd());
        }
    }
    let fd = super::above_stdio(super::pidfd_open(me)?)?;
    let raw = fd.as_raw_fd();
    if let Some((_, stale)) = slot.replace((me, fd)) {
        // The parent's, inherited across a fork without exec.
        drop(stale);
    }
    Ok(raw)
}

/// The test binary's environment as `KEY=value` strings, for the supervisor program (so
/// that it carries what every child of the test binary carries).
struct Environment {
    _strings: Vec<CString>,
    pointers: Vec<*const u8>,
}

impl Environment {
    fn capture() -> Environment {
        let strings: Vec<CString> = std::env::vars_os()
            .filter_map(|(key, value)| {
                let mut entry = OsString::with_capacity(key.len() + value.len() + 1);
                entry.push(&key);
                entry.push("=");
                entry.push(&value);
                CString::new(entry.into_vec()).ok()
            })
            .collect();
        let mut pointers: Vec<*const u8> = strings.iter().map(|s| s.as_ptr().cast()).collect();
        pointers.push(ptr::null());
        Environment {
            _strings: strings,
            pointers,
        }
    }
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
    program: RawFd,
    envp: *const *const u8,
    /// The calling thread's signal mask, which std passes on to the leader.
    mask: libc::sigset_t,
    /// Whether the handlers of the test binary are still to be reset (no `clone3`).
    reset_handlers: bool,
    /// The parent-death signal: [`PARENT_DEATH_SIGNAL`], or SIGKILL where the calling
    /// thread blocks it.
    death_signal: c_int,
    namespace: Option<Ids>,
}

/// The caller's ids, for a user namespace's maps (`None` as root: no user namespace).
#[derive(Clone, Copy)]
struct Ids {
    user: Option<(u32, u32)>,
}

/// `clone3`'s arguments (Linux 5.3; `CLONE_CLEAR_SIGHAND` 5.5).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;

// `pgroup_clone3(args, size, f, arg)`: `clone3`, after which the child calls `f(arg)` on its
// new stack (it never returns); the parent gets the child's pid or `-errno`.
#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".pushsection .text.pgroup_clone3,\"ax\",@progbits",
    ".globl pgroup_clone3",
    ".hidden pgroup_clone3",
    ".type pgroup_clone3,@function",
    "pgroup_clone3:",
    "mov r8, rdx",
    "mov r9, rcx",
    "mov eax, 435",
    "syscall",
    "test rax, rax",
    "jnz 2f",
    "xor ebp, ebp",
    "mov rdi, r9",
    "call r8",
    "ud2",
    "2:",
    "ret",
    ".size pgroup_clone3, . - pgroup_clone3",
    ".popsection",
);

#[cfg(target_arch = "aarch64")]
std::arch::global_asm!(
    ".pushsection .text.pgroup_clone3,\"ax\",@progbits",
    ".globl pgroup_clone3",
    ".hidden pgroup_clone3",
    ".type pgroup_clone3,@function",
    "pgroup_clone3:",
    "mov x8, #435",
    "svc #0",
    "cbnz x0, 2f",
    "mov x29, xzr",
    "mov x30, xzr",
    "mov x0, x3",
    "blr x2",
    "brk #0",
    "2:",
    "ret",
    ".size pgroup_clone3, . - pgroup_clone3",
    ".popsection",
);

extern "C" {
    fn pgroup_clone3(
        args: *mut CloneArgs,
        size: usize,
        f: extern "C" fn(*mut c_void) -> c_int,
        arg: *mut c_void,
    ) -> isize;
}

/// Whether `clone3` with `CLONE_CLEAR_SIGHAND` works here: unknown, yes, no (seccomp
/// profiles that answer `ENOSYS`, as Docker's does, valgrind, kernels before 5.5).
static CLONE3: AtomicU8 = AtomicU8::new(0);

/// Creates the spawner on `stack` with `flags` (`CLONE_VM | CLONE_VFORK` and namespace
/// flags), running [`spawner_main`] with `ctx`; returns its pid. Where `clone3` cannot reset
/// the spawner's signal handlers, `ctx.reset_handlers` tells the spawner to.
///
/// # Safety
///
/// `ctx` must stay valid until the spawner has exec'd or exited.
unsafe fn clone_spawner(stack: &mut Stack, flags: c_int, ctx: &mut Context<'_>) -> io::Result<i32> {
    let f: extern "C" fn(*mut c_void) -> c_int = spawner_main;
    if CLONE3.load(Ordering::Relaxed) != 2 {
        ctx.reset_handlers = false;
        let arg: *mut c_void = ptr::from_mut(ctx).cast();
        let mut args = CloneArgs {
            flags: u64::from(flags.unsigned_abs()) | CLONE_CLEAR_SIGHAND,
            exit_signal: u64::from(libc::SIGCHLD.unsigned_abs()),
            stack: stack.base as u64 + GUARD_LEN as u64,
            stack_size: STACK_LEN as u64,
            ..CloneArgs::default()
        };
        // SAFETY: `args` is a valid `clone_args` of the size given; the stack is ours and
        // unused, and the caller vouches for `ctx`.
        let ret = unsafe { pgroup_clone3(&mut args, std::mem::size_of::<CloneArgs>(), f, arg) };
        if ret > 0 {
            CLONE3.store(1, Ordering::Relaxed);
            return Ok(i32::try_from(ret).unwrap_or(-1));
        }
        let errno = i32::try_from(-ret).unwrap_or(libc::EINVAL);
        if errno != libc::ENOSYS && errno != libc::EINVAL && errno != libc::EPERM {
            return Err(io::Error::from_raw_os_error(errno));
        }
        if errno != libc::EPERM {
            CLONE3.store(2, Ordering::Relaxed);
        }
    }
    ctx.reset_handlers = true;
    let arg: *mut c_void = ptr::from_mut(ctx).cast();
    // SAFETY: as above, with glibc's clone, which switches to the stack and calls `f`.
    let pid = unsafe { libc::clone(f, stack.top(), flags | libc::SIGCHLD, arg) };
    if pid <= 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// The supervisor program's path: see the module documentation.
fn spawn_exec(cmd: &mut Command, program: &OwnedFd, namespace: bool) -> io::Result<Started> {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let ours = super::above_stdio(ours)?;
    let theirs = super::above_stdio(theirs)?;
    let parent = self_pidfd()?;
    let environment = Environment::capture();
    let ids = namespace.then(|| {
        // SAFETY: getuid and getgid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Ids {
            user: (uid != 0).then_some((uid, gid)),
        }
    });
    let mut stack = Stack::take()?;
    let mut ctx = Context {
        cmd,
        channel: theirs.as_raw_fd(),
        parent,
        parent_pid: super::getpid(),
        program: program.as_raw_fd(),
        envp: environment.pointers.as_ptr(),
        // SAFETY: sigset_t is plain data; filled in below, before the spawner runs.
        mask: unsafe { std::mem::zeroed() },
        reset_handlers: false,
        death_signal: PARENT_DEATH_SIGNAL,
        namespace: ids,
    };
    let mut flags = libc::CLONE_VM | libc::CLONE_VFORK;
    if let Some(ids) = ids {
        flags |= libc::CLONE_NEWPID | libc::CLONE_NEWNS;
        if ids.user.is_some() {
            flags |= libc::CLONE_NEWUSER;
        }
    }
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
    let old = raw::set_sigmask(u64::MAX);
    // SAFETY: `spawner_main` runs on its own stack with `ctx`, which outlives it: this
    // thread is suspended until the spawner has exec'd or exited, and the spawner reads
    // `ctx` and the `Command` only (see the module documentation).
    let cloned = unsafe { clone_spawner(&mut stack, flags, &mut ctx) };
    raw::set_sigmask(old);
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
    let report = match read_report(&ours, pid) {
        Ok(report) => report,
        Err(e) => {
            abandon(&ours, supervisor);
            return Err(e);
        }
    };
    let leader = if namespace {
        outer_pid(&report.pidfd)?
    } else {
        u32::try_from(report.pid).map_err(|_| io::Error::other("negative leader pid"))?
    };
    super::set_nonblocking(ours.as_fd())?;
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

/// Ends a supervisor (or spawner) whose start failed: if it still runs, it is told to kill
/// and reap everything (the leader is its child), and it is reaped whenever it exits.
fn abandon(channel: &OwnedFd, supervisor: u32) {
    let _ = super::write_byte(channel.as_fd(), CMD_TEARDOWN);
    super::reap_in_background(supervisor);
}

/// What the spawner reported.
struct Report {
    pid: i32,
    pidfd: OwnedFd,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

/// Reads the spawner's records: [`TAG_SPAWNED`] with its descriptors, then, if it exited
/// because the exec of the supervisor failed, [`TAG_SETUP_FAILED`]; or a failure alone.
/// The records are there when the spawner has exec'd or exited, which the kernel waited
/// for; where the spawner is a copy (valgrind), this waits for the first while it lives.
/// Records after [`TAG_SPAWNED`] from a spawner that became the supervisor are the
/// supervisor's: they stay in the socket.
fn read_report(channel: &OwnedFd, spawner: i32) -> io::Result<Report> {
    let mut spawned: Option<Report> = None;
    loop {
        if spawned.is_some() && !super::has_exited(spawner) {
            return spawned.ok_or_else(|| io::Error::other("no report"));
        }
        match recv_record(channel)? {
            Some((record, fds)) => {
                let tag = record.first().copied();
                let value = record
                    .get(1..5)
                    .map_or(0, |v| i32::from_le_bytes([v[0], v[1], v[2], v[3]]));
                match tag {
                    Some(TAG_SPAWNED) => {
                        let mask = record.get(5).copied().unwrap_or(0);
                        let mut fds = fds.into_iter();
                        let pidfd = fds
                            .next()
                            .ok_or_else(|| io::Error::other("the spawner sent no pidfd"))?;
                        let mut next = |bit: u8| {
                            if mask & bit != 0 {
                                fds.next()
                            } else {
                                None
                            }
                        };
                        spawned = Some(Report {
                            pid: value,
                            pidfd,
                            stdin: next(1),
                            stdout: next(2),
                            stderr: next(4),
                        });
                    }
                    Some(TAG_SPAWN_FAILED) => return Err(decode_spawn_error(&record, value)),
                    Some(TAG_SETUP_FAILED) => {
                        let step = record.get(5).copied().and_then(Step::from_byte);
                        let e = io::Error::from_raw_os_error(value);
                        return Err(io::Error::new(
                            e.kind(),
                            format!(
                                "the supervisor's start failed: {}: {e}",
                                step.map_or("unknown step", Step::describe)
                            ),
                        ));
                    }
                    _ => return Err(io::Error::other("unexpected record from the spawner")),
                }
            }
            None => {
                if let Some(report) = spawned {
                    return Ok(report);
                }
                // Nothing, and nothing more can come while it is alive but has not written
                // yet (a copy under valgrind): wait while it lives.
                if super::has_exited(spawner) {
                    // Its last words may have arrived after the look above.
                    if let Some((record, _)) = recv_record(channel)? {
                        if record.first() == Some(&TAG_SPAWN_FAILED) {
                            let value = record
                                .get(1..5)
                                .map_or(0, |v| i32::from_le_bytes([v[0], v[1], v[2], v[3]]));
                            return Err(decode_spawn_error(&record, value));
                        }
                    }
                    return Err(io::Error::other(
                        "the supervisor's spawner died before it reported",
                    ));
                }
                super::poll_readable(&[channel.as_fd()], Some(Duration::from_millis(100)))?;
            }
        }
    }
}

/// One record and its descriptors; `None` when none is waiting.
fn recv_record(channel: &OwnedFd) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut data = [0_u8; 512];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(raw::MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = loop {
        match rustix::net::recvmsg(
            channel,
            &mut [io::IoSliceMut::new(&mut data)],
            &mut control,
            RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(received) => break received,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    };
    if received.bytes == 0 {
        return Ok(None);
    }
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    let fds = fds
        .into_iter()
        .map(super::above_stdio)
        .collect::<io::Result<Vec<_>>>()?;
    Ok(Some((data[..received.bytes.min(data.len())].to_vec(), fds)))
}

/// The kinds of error a spawn reports, by the byte the spawner sends.
const KINDS: [io::ErrorKind; 8] = [
    io::ErrorKind::Other,
    io::ErrorKind::NotFound,
    io::ErrorKind::PermissionDenied,
    io::ErrorKind::InvalidInput,
    io::ErrorKind::InvalidData,
    io::ErrorKind::Unsupported,
    io::ErrorKind::OutOfMemory,
    io::ErrorKind::Interrupted,
];

fn decode_spawn_error(record: &[u8], errno: i32) -> io::Error {
    if errno != 0 {
        return io::Error::from_raw_os_error(errno);
    }
    let kind = record
        .get(5)
        .and_then(|k| KINDS.get(usize::from(*k)))
        .copied()
        .unwrap_or(io::ErrorKind::Other);
    let message = String::from_utf8_lossy(record.get(6..).unwrap_or(&[])).into_owned();
    io::Error::new(kind, message)
}

/// The pid, in the test binary's PID namespace, of the process behind `pidfd` (its
/// `fdinfo`'s `Pid:` line, which the kernel writes in the reader's namespace).
fn outer_pid(pidfd: &OwnedFd) -> io::Result<u32> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|pid| *pid > 0)
        .ok_or_else(|| io::Error::other("cannot read the leader's pid from its pidfd"))
}

/// Sends a [`TAG_SETUP_FAILED`] record (raw calls only).
fn setup_failed(channel: RawFd, step: Step, errno: i32) {
    let e = errno.to_le_bytes();
    let record = [TAG_SETUP_FAILED, e[0], e[1], e[2], e[3], step as u8];
    let _ = raw::send_with_fds(channel, &record, &[]);
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
        raw::set_sigmask(u64::MAX);
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
    if parent_died(ctx) {
        abandon(Step::ParentDied, raw::ESRCH);
    }
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
    let errno = unsafe { raw::execveat_fd(ctx.program, argv.as_ptr(), ctx.envp) };
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
    let action = raw::KernelSigaction {
        handler: on_parent_death as extern "C" fn(c_int) as usize,
        flags: SA_RESTORER,
        restorer: never_returned_to as extern "C" fn() as usize,
        mask: u64::MAX,
    };
    raw::sigaction(PARENT_DEATH_SIGNAL, Some(&action), None).map_err(|e| (Step::Signals, e))?;
    let death = usize::try_from(ctx.death_signal).unwrap_or(0);
    raw::prctl(raw::PR_SET_PDEATHSIG, death).map_err(|e| (Step::Signals, e))?;
    if parent_died(ctx) {
        return Err((Step::ParentDied, raw::ESRCH));
    }
    if let Some(ids) = ctx.namespace {
        enter_namespace(ids)?;
    }
    Ok(())
}

/// `SA_RESTORER`: the handler's return address is the given restorer.
const SA_RESTORER: u64 = 0x0400_0000;

/// The restorer of [`on_parent_death`], which never returns.
extern "C" fn never_returned_to() {
    raw::exit_group(1);
}

/// Every handler of the test binary back to its default action (ignored signals stay
/// ignored, as std and exec keep them), where `clone3` could not do it.
fn reset_handlers() {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut old = raw::KernelSigaction::DFL;
        if raw::sigaction(sig, None, Some(&mut old)).is_ok()
            && old.handler != raw::SIG_DFL
            && old.handler != raw::SIG_IGN
        {
            let _ = raw::sigaction(sig, Some(&raw::KernelSigaction::DFL), None);
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

/// In a new PID (and mount, and for a caller that is not root, user) namespace: the id maps,
/// private mounts, and a `/proc` of the namespace's own.
fn enter_namespace(ids: Ids) -> Result<(), (Step, i32)> {
    let errno = || nix::errno::Errno::last_raw();
    if let Some((uid, gid)) = ids.user {
        write_file(b"/proc/self/setgroups\0", b"deny").map_err(|e| (Step::Namespace, e))?;
        let mut line = [0_u8; 32];
        let len = id_map_line(&mut line, uid);
        write_file(b"/proc/self/uid_map\0", &line[..len]).map_err(|e| (Step::Namespace, e))?;
        let len = id_map_line(&mut line, gid);
        write_file(b"/proc/self/gid_map\0", &line[..len]).map_err(|e| (Step::Namespace, e))?;
    }
    let root = b"/\0";
    let proc_ = b"proc\0";
    let target = b"/proc\0";
    // SAFETY: mount(2) with static NUL-terminated strings.
    unsafe {
        if libc::mount(
            ptr::null(),
            root.as_ptr().cast(),
            ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            ptr::null(),
        ) != 0
        {
            return Err((Step::MountProc, errno()));
        }
        if libc::mount(
            proc_.as_ptr().cast(),
            target.as_ptr().cast(),
            proc_.as_ptr().cast(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            ptr::null(),
        ) != 0
        {
            return Err((Step::MountProc, errno()));
        }
    }
    Ok(())
}

/// `0 <id> 1`: root inside maps to the caller's id outside.
fn id_map_line(buf: &mut [u8; 32], id: u32) -> usize {
    buf[0] = b'0';
    buf[1] = b' ';
    let mut len = 2 + write_decimal(&mut buf[2..], u64::from(id));
    for b in b" 1\n" {
        buf[len] = *b;
        len += 1;
    }
    len
}

fn write_file(path: &[u8], data: &[u8]) -> Result<(), i32> {
    const O_WRONLY: u32 = 1;
    let fd = raw::open(path, O_WRONLY | raw::O_CLOEXEC)?;
    let written = raw::write(fd, data);
    raw::close(fd);
    written.map(|_| ())
}

/// Sends std's spawn error as a [`TAG_SPAWN_FAILED`] record.
fn send_spawn_error(channel: RawFd, e: &io::Error) {
    let errno = e.raw_os_error().unwrap_or(0).to_le_bytes();
    let kind = KINDS
        .iter()
        .position(|k| *k == e.kind())
        .and_then(|k| u8::try_from(k).ok())
        .unwrap_or(0);
    let mut record = Vec::with_capacity(256);
    record.push(TAG_SPAWN_FAILED);
    record.extend_from_slice(&errno);
    record.push(kind);
    if e.raw_os_error().is_none() {
        let text = e.to_string();
        let mut end = text.len().min(400);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        record.extend_from_slice(&text.as_bytes()[..end]);
    }
    let _ = raw::send_with_fds(channel, &record, &[]);
}

/// The forked supervisor: see the module documentation.
fn spawn_forked(cmd: &mut Command, namespace: bool, new_session: bool) -> io::Result<Started> {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let ours = super::above_stdio(ours)?;
    let theirs = super::above_stdio(theirs)?;
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
    let report = match read_report(&ours, i32::try_from(supervisor).unwrap_or(-1)) {
        Ok(report) => report,
        Err(e) => {
            abandon(&ours, supervisor);
            return Err(e);
        }
    };
    let leader = if namespace {
        outer_pid(&report.pidfd)?
    } else {
        u32::try_from(report.pid).map_err(|_| io::Error::other("negative leader pid"))?
    };
    let namespace_init = if namespace {
        Some(super::parent_of(leader)?)
    } else {
        None
    };
    super::set_nonblocking(ours.as_fd())?;
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
struct Plan {
    channel: RawFd,
    ours: RawFd,
    parent: RawFd,
    namespace: bool,
    new_session: bool,
}

/// The `pre_exec` hook of the forked supervisor. Runs in the child std forked; returns
/// `Ok(())` only in the leader, which std then execs. An `Err` before the second fork makes
/// std's `spawn` fail with it. Raw calls only (a fork of a multi-threaded process).
fn hook(plan: Plan) -> io::Result<()> {
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
fn supervise_forked(plan: Plan, leader: i32) -> ! {
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
fn forked_leader(plan: Plan, inherited: libc::sigaction) -> io::Result<()> {
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

/// New PID and mount namespaces (and a user namespace first, when not root), with mount
/// propagation made private so that the new /proc stays inside. This process is
/// single-threaded (a fresh fork), as `CLONE_NEWUSER` requires.
fn forked_namespace() -> io::Result<()> {
    // SAFETY: geteuid/getegid cannot fail; unshare takes flags.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS;
    if uid != 0 {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: unshare(2) takes flags.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let ids = Ids {
        user: (uid != 0).then_some((uid, gid)),
    };
    if let Some((uid, gid)) = ids.user {
        let os = io::Error::from_raw_os_error;
        write_file(b"/proc/self/setgroups\0", b"deny").map_err(os)?;
        let mut line = [0_u8; 32];
        let len = id_map_line(&mut line, uid);
        write_file(b"/proc/self/uid_map\0", &line[..len]).map_err(os)?;
        let len = id_map_line(&mut line, gid);
        write_file(b"/proc/self/gid_map\0", &line[..len]).map_err(os)?;
    }
    let root = b"/\0";
    // SAFETY: mount(2) with a static NUL-terminated string.
    if unsafe {
        libc::mount(
            ptr::null(),
            root.as_ptr().cast(),
            ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            ptr::null(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mount_proc() -> Result<(), i32> {
    let proc_ = b"proc\0";
    let target = b"/proc\0";
    // SAFETY: static NUL-terminated strings; mount(2) is a plain syscall.
    let rc = unsafe {
        libc::mount(
            proc_.as_ptr().cast(),
            target.as_ptr().cast(),
            proc_.as_ptr().cast(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(nix::errno::Errno::last_raw())
    }
}
