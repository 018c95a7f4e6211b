//! The `Supervised` tier without a copy of the test binary and without an exec: a
//! supervisor that shares the test binary's memory.
//!
//! # Why
//!
//! A forked supervisor (see `supervise.rs`) costs two copies of the test binary's page
//! tables per spawn, which grows with the test binary's resident memory (about 50 ms per
//! spawn at 256 MiB). The exec'd supervisor that replaced it (the test binary exec'd again
//! from a `vfork`-style helper, caught by an `.init_array` entry) copied nothing, but every
//! spawn paid a full start of a dynamically linked program: the exec, the loader's
//! relocations and its CPU feature probing (`cpuid`, which traps to the hypervisor on a
//! virtual machine), about 1 ms of CPU per spawn on the 2-core machine of the benchmarks,
//! 3–8× a whole `Group` cycle. This one copies nothing and execs nothing.
//!
//! # How
//!
//! 1. The calling thread maps the supervisor's memory (a stack with a guard page, a small
//!    thread-local area, the teardown's pid bitmap), blocks every signal, and creates the
//!    supervisor with `clone(CLONE_VM | CLONE_FILES)`: a process (its own
//!    pid, its own thread group, its own signal handlers) that shares the test binary's
//!    memory and, for now, its descriptor table. The calling thread then waits for the
//!    supervisor's first message with raw calls only (no `errno`, no libc state): it yields
//!    the CPU for up to 1 ms, then sleeps in `ppoll` on the status pipe. (A thread that goes
//!    to sleep at once is often woken onto the CPU where the new leader runs its dynamic
//!    loader, and waits there for a scheduler tick while the other CPU idles.)
//! 2. The supervisor makes itself a child subreaper in a process group of its own, sets
//!    SIGCHLD to its default and every handled signal to its default (no handler of the test
//!    binary may ever run in it), and runs std's `Command::spawn` on the user's `Command`,
//!    unchanged but for `process_group(0)`: std applies every setting (stdio, env,
//!    `env_clear`, cwd, `arg0`, uid/gid, `pre_exec` hooks) as it would for the `Group` tier,
//!    with `posix_spawn` where it can. The leader is the supervisor's child. The spawn runs in
//!    place of the blocked calling thread (its thread-local storage, its heap, its locks; the
//!    thread cannot run until the supervisor says so), with the thread's signal mask, which
//!    std passes on to the leader; handlers are reset first, so nothing of the test binary
//!    runs in the supervisor when a signal arrives. Pipes std makes for the leader's stdio
//!    land in the shared descriptor table, i.e. in the test binary's.
//! 3. The supervisor takes a private copy of the descriptor table (`unshare(CLONE_FILES)`),
//!    opens a pidfd on the test binary, writes nothing more into the caller's memory, points
//!    its thread pointer at its own thread-local area (so that even a stray thread-local
//!    access could not land in the calling thread's storage, which is freed when that thread
//!    ends), and enters the supervisor loop, which runs on raw syscalls only (`raw.rs`). Its
//!    first message (the leader's pid) releases the calling thread.
//!
//! # Why it is sound
//!
//! - *The memory it uses stays mapped.* The supervisor touches only its own mapping (stack,
//!   thread-local area, bitmap) and the code and read-only data of the executable and of
//!   libc (`memcpy`), which are never unmapped. The mapping belongs to the supervisor's
//!   handle ([`SharedSupervisor`]) and is unmapped only after the supervisor is reaped (or
//!   found reaped by someone else, `ECHILD`): a reaped process has left the address space.
//!   A handle dropped without that reap leaks the mapping rather than unmap it under a live
//!   supervisor.
//! - *The address space outlives the test binary.* A process holds a reference on the
//!   address space it runs in; `exit_group` and SIGKILL end the test binary's threads, not
//!   the supervisor (another thread group), so the memory stays mapped until the supervisor
//!   exits too. An `execve` in the test binary gives it a new address space and leaves the
//!   old one to the supervisor.
//! - *No thread-local storage of a test thread after the spawn.* During the spawn the
//!   calling thread is blocked (all signals blocked, in a raw `ppoll`), exactly as a
//!   `vfork` parent is suspended; the supervisor moves its thread pointer away before it
//!   releases the thread. `CLONE_VM` without `CLONE_SETTLS` gives the supervisor no `rseq`
//!   registration (the kernel drops it for `CLONE_VM` children) and no robust futex list.
//! - *Nothing the kernel writes on its exit.* No `CLONE_CHILD_CLEARTID`, no `CLONE_VFORK`.
//! - *Forks of the test binary* copy the mapping (harmless: the copy is never used).
//!
//! # Costs and limits
//!
//! - Two things kill every process that shares an address space: the OOM killer (any
//!   kernel), and a core dump on kernels before 5.16. An OOM kill or, there, a core dump of
//!   the test binary therefore takes the supervisor with it, and the leader is re-parented
//!   (to the next subreaper or init) rather than killed: the one death of the test binary
//!   that the forked supervisor survived and this one does not. SIGKILL, `abort` without a
//!   core dump, and every exit are survived as before.
//! - If the supervisor were SIGKILLed by someone else during std's spawn, a lock of the test
//!   binary (std's environment lock, malloc's) could stay held, as with any `vfork` child.
//! - The supervisor shows the test binary's memory in `/proc/<pid>/status` (it is the same
//!   memory), and is named `pgroup-superv`.
//! - The leader starts with SIGCHLD at its default action even when the test binary ignores
//!   it (std's `posix_spawn` passes an ignored SIGCHLD on, and the supervisor must not
//!   ignore it while the leader lives, or the kernel would reap the leader).
//! - `pre_exec` hooks of the `Command` run in the leader (before its exec), as in the
//!   `Group` tier; a hook (or uid/gid, or a new session) makes std fork, so one copy of the
//!   test binary's page tables comes back with it.
//! - x86_64 and aarch64 only (the raw calls and the thread pointer); elsewhere, and with
//!   `PGROUP_EXEC_SUPERVISOR=off`, the forked supervisor is used.

use std::io;
use std::os::fd::RawFd;
use std::process::{Child, Command};
use std::ptr;
use std::sync::Mutex;

use nix::libc::{self, c_int, c_void, pid_t};

use super::raw;
use super::supervise::{self, Plan};

/// The supervisor's stack: std's `spawn` (and `posix_spawn`, which maps a stack of its own
/// for the leader) and then the supervisor loop run on it. Mapped without reserve: only the
/// pages touched cost memory.
const STACK_LEN: usize = 512 * 1024;
/// The supervisor's thread-local area; its thread pointer is the middle of it, so that
/// accesses at negative (x86_64) and positive (aarch64) offsets stay inside.
const TLS_LEN: usize = 16 * 1024;
const GUARD_LEN: usize = 4096;
const BITS_LEN: usize = supervise::PID_BITS / 8;
const MAP_LEN: usize = GUARD_LEN + STACK_LEN + TLS_LEN + BITS_LEN;

/// Mappings of reaped supervisors kept for the next spawns: their stack pages are already
/// faulted in, and no `munmap` (with its TLB shootdown across the test binary's threads)
/// runs per spawn.
static POOL: Mutex<Vec<Mapping>> = Mutex::new(Vec::new());
const POOL_MAX: usize = 8;

/// Whether the shared-memory supervisor can be used here.
pub(crate) fn available() -> bool {
    raw::SUPPORTED && std::env::var_os("PGROUP_EXEC_SUPERVISOR").is_none_or(|v| v != "off")
}

/// The supervisor's memory: `[guard | stack | thread-local area | pid bitmap]`.
struct Mapping {
    addr: *mut c_void,
}

// SAFETY: the mapping is plain memory; the handle only carries its address to whoever reaps
// the supervisor (possibly a background thread), which then unmaps it.
unsafe impl Send for Mapping {}

impl Mapping {
    /// A mapping from the pool, its bitmap cleared, or a new one.
    fn take() -> io::Result<Mapping> {
        let pooled = POOL.lock().ok().and_then(|mut pool| pool.pop());
        match pooled {
            Some(mapping) => {
                // SAFETY: the bitmap is inside our own mapping, which no process uses (it
                // came back from a reaped supervisor); MADV_DONTNEED makes it read as zeros.
                unsafe {
                    libc::madvise(
                        mapping.at(GUARD_LEN + STACK_LEN + TLS_LEN).cast(),
                        BITS_LEN,
                        libc::MADV_DONTNEED,
                    );
                }
                Ok(mapping)
            }
            None => Mapping::new(),
        }
    }

    /// # Safety
    ///
    /// As for [`Mapping::unmap`].
    unsafe fn release(self) {
        if let Ok(mut pool) = POOL.lock() {
            if pool.len() < POOL_MAX {
                pool.push(self);
                return;
            }
        }
        // SAFETY: the caller vouches that nothing uses it.
        unsafe { self.unmap() };
    }

    fn new() -> io::Result<Mapping> {
        // SAFETY: a new anonymous private mapping, placed by the kernel, checked against
        // MAP_FAILED; the lowest page becomes a guard page (an overflow faults instead of
        // writing below the stack).
        unsafe {
            let addr = libc::mmap(
                ptr::null_mut(),
                MAP_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                -1,
                0,
            );
            if addr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            libc::mprotect(addr, GUARD_LEN, libc::PROT_NONE);
            Ok(Mapping { addr })
        }
    }

    fn at(&self, offset: usize) -> *mut u8 {
        // SAFETY: every offset used is within the mapping (see the constants).
        unsafe { self.addr.cast::<u8>().add(offset) }
    }

    /// The top of the stack, 16-byte aligned (the mapping is page-aligned).
    fn stack_top(&self) -> *mut c_void {
        self.at(GUARD_LEN + STACK_LEN).cast()
    }

    /// The supervisor's thread pointer, with the self-pointers a thread control block
    /// starts with on x86_64 (`tcb` and `self`).
    fn thread_pointer(&self) -> *mut c_void {
        let tp = self.at(GUARD_LEN + STACK_LEN + TLS_LEN / 2);
        // SAFETY: `tp` and the two words after it are inside the thread-local area, which
        // nothing else uses yet.
        unsafe {
            let words = tp.cast::<usize>();
            words.write(tp as usize);
            words.add(2).write(tp as usize);
        }
        tp.cast()
    }

    fn pid_bits(&self) -> usize {
        self.at(GUARD_LEN + STACK_LEN + TLS_LEN) as usize
    }

    /// # Safety
    ///
    /// Only once no process uses the mapping any more: the supervisor has been reaped.
    unsafe fn unmap(self) {
        // SAFETY: our own mapping, no longer used (the caller vouches).
        unsafe { libc::munmap(self.addr, MAP_LEN) };
    }
}

/// The test binary's handle on a shared-memory supervisor, our child: its pid and its
/// memory, unmapped once it is reaped.
pub(crate) struct SharedSupervisor {
    pid: u32,
    /// `None` once unmapped. Never unmapped without the reap: a handle dropped before it
    /// leaks the mapping (the supervisor may still run on it).
    mapping: Option<Mapping>,
}

impl SharedSupervisor {
    pub(crate) fn id(&self) -> u32 {
        self.pid
    }

    /// Whether it has exited; reaps it and unmaps its memory if so.
    pub(crate) fn try_reap(&mut self) -> io::Result<bool> {
        let reaped = super::try_reap_pid(self.pid)?;
        if reaped {
            if let Some(mapping) = self.mapping.take() {
                // SAFETY: reaped (or reaped by someone else: ECHILD), so it has left the
                // address space.
                unsafe { mapping.release() };
            }
        }
        Ok(reaped)
    }

    /// Waits for it to exit, reaps it and unmaps its memory.
    pub(crate) fn reap(mut self) {
        super::reap_pid(self.pid);
        if let Ok(true) = self.try_reap() {
            return;
        }
        // `reap_pid` returned, so it is no longer our unreaped child: reaped here or
        // elsewhere, it has exited.
        if let Some(mapping) = self.mapping.take() {
            // SAFETY: as in `try_reap`.
            unsafe { mapping.release() };
        }
    }
}

/// A supervised leader and its shared-memory supervisor.
pub(crate) struct Respawned {
    /// std's handle on the leader, for its stdio pipes only: the leader is the supervisor's
    /// child, never to be waited for here.
    pub leader: Child,
    pub supervisor: SharedSupervisor,
}

/// What the calling thread and the supervisor share during the spawn. Written by the
/// supervisor only while the calling thread is blocked, and never after its first message.
struct Context<'a> {
    cmd: &'a mut Command,
    plan: Plan,
    /// The calling thread's signal mask, which std passes on to the leader (as in `Group`).
    mask: libc::sigset_t,
    /// The supervisor's thread pointer.
    tls: *mut c_void,
    /// std's answer, or why the supervisor did not get that far.
    spawned: Option<io::Result<Child>>,
    /// Set when the leader was spawned but the supervisor could not be set up (the leader
    /// was then killed and reaped).
    setup_errno: c_int,
}

/// Spawns `cmd` (already set to `process_group(0)` or a new session) as the child of a
/// shared-memory supervisor that talks through `plan`'s pipes (`status_read` must be
/// non-blocking). See the module documentation.
pub(crate) fn spawn(cmd: &mut Command, mut plan: Plan) -> io::Result<Respawned> {
    let mapping = Mapping::take()?;
    plan.pid_bits = mapping.pid_bits();
    let mut ctx = Context {
        cmd,
        plan,
        // SAFETY: sigset_t is plain data; filled in below, before the supervisor runs.
        mask: unsafe { std::mem::zeroed() },
        tls: mapping.thread_pointer(),
        spawned: None,
        setup_errno: 0,
    };
    // SAFETY: sigset_t is plain data; sigfillset and pthread_sigmask fill and apply it. All
    // signals are blocked in this thread until the supervisor has released it, so no handler
    // runs on this thread's storage while the supervisor uses it.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut ctx.mask);
    }
    // Also the two signals glibc keeps for itself (thread cancellation, and `setuid` from
    // another thread, whose handler would write this thread's descriptor): until the
    // supervisor releases this thread, nothing at all runs on it. Restored with the mask.
    raw::set_sigmask(u64::MAX);
    let flags = libc::CLONE_VM | libc::CLONE_FILES | libc::SIGCHLD;
    // SAFETY: `supervisor_main` runs on the new stack with `ctx`, which outlives its use
    // there: this thread does not return (nor touch `ctx`) until the supervisor has sent its
    // first message or exited, and the supervisor writes nothing into `ctx` after that
    // message (see the module documentation).
    let pid = unsafe {
        libc::clone(
            supervisor_main,
            mapping.stack_top(),
            flags,
            ptr::from_mut(&mut ctx).cast::<c_void>(),
        )
    };
    if pid <= 0 {
        // No supervisor: `errno` is this thread's alone.
        let clone_error = io::Error::last_os_error();
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &ctx.mask, ptr::null_mut()) };
        // SAFETY: no supervisor was made: nothing uses the mapping.
        unsafe { mapping.release() };
        return Err(clone_error);
    }
    wait_for_release(plan.status_read, pid);
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &ctx.mask, ptr::null_mut()) };
    let supervisor = SharedSupervisor {
        pid: u32::try_from(pid).map_err(|_| io::Error::other("negative pid"))?,
        mapping: Some(mapping),
    };
    let error = match (ctx.spawned.take(), ctx.setup_errno) {
        (Some(Ok(leader)), 0) => return Ok(Respawned { leader, supervisor }),
        (Some(Ok(_)), errno) => {
            let e = io::Error::from_raw_os_error(errno);
            io::Error::new(e.kind(), format!("cannot set up the supervisor: {e}"))
        }
        (Some(Err(e)), _) => e,
        (None, _) => io::Error::other("the supervisor died while spawning"),
    };
    // It has exited, or exits at once: it has nothing left to do.
    supervisor.reap();
    Err(error)
}

/// How long the calling thread yields rather than sleeps while it waits for the supervisor's
/// first message (see [`wait_for_release`]).
const SPIN_US: i64 = 1_000;

/// Blocks until the supervisor's first message is readable (the leader's pid, or the
/// failure it sends before it exits) or it has exited without one (killed by someone else
/// while it spawned: looked for every 100 ms), with raw calls only: while it runs std's
/// spawn it uses this thread's storage, `errno` included.
fn wait_for_release(status_read: RawFd, supervisor: pid_t) {
    let Ok(id) = libc::id_t::try_from(supervisor) else {
        return;
    };
    let spin_until = raw::monotonic_us().saturating_add(SPIN_US);
    loop {
        let mut fds = [libc::pollfd {
            fd: status_read,
            events: libc::POLLIN,
            revents: 0,
        }];
        if raw::poll(&mut fds, 0).is_ok() && fds[0].revents != 0 {
            return;
        }
        if raw::monotonic_us() >= spin_until {
            break;
        }
        raw::sched_yield();
    }
    loop {
        let mut fds = [libc::pollfd {
            fd: status_read,
            events: libc::POLLIN,
            revents: 0,
        }];
        match raw::poll(&mut fds, 100) {
            Ok(_) if fds[0].revents != 0 => return,
            Ok(_) | Err(libc::EINTR) => {}
            // Cannot wait (EBADF, EFAULT: cannot happen): waiting for the exit is all that
            // is left, which the reap does.
            Err(_) => return,
        }
        // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid(2).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOWAIT | libc::WNOHANG | libc::__WALL;
        // SAFETY: waitid filled in the pid of the child if it exited (or left it zero).
        if raw::waitid(libc::P_PID, id, &mut info, flags).is_err() || unsafe { info.si_pid() } != 0
        {
            return;
        }
    }
}

/// The supervisor (see the module documentation). Never returns.
extern "C" fn supervisor_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Context` that `spawn` passed, alive and untouched by the
    // blocked calling thread until this process sends its first message or exits.
    let ctx = unsafe { &mut *arg.cast::<Context<'_>>() };
    let plan = ctx.plan;
    let tls = ctx.tls;
    if let Err(errno) = prepare() {
        ctx.spawned = Some(Err(io::Error::from_raw_os_error(errno)));
        release_and_exit(&plan);
    }
    // std passes the signal mask on to the leader: the test thread's, as in `Group`.
    // Unblocked only around std's `spawn` (with no handler of the test binary left).
    // SAFETY: sets this process's own mask from a sigset_t that `spawn` filled.
    let spawned = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &ctx.mask, ptr::null_mut());
        let spawned = ctx.cmd.spawn();
        libc::sigprocmask(libc::SIG_SETMASK, &all, ptr::null_mut());
        spawned
    };
    let leader = match spawned {
        Err(e) => {
            ctx.spawned = Some(Err(e));
            release_and_exit(&plan);
        }
        Ok(child) => {
            let leader = pid_t::try_from(child.id()).unwrap_or(0);
            ctx.spawned = Some(Ok(child));
            leader
        }
    };
    let test_binary = match private_state() {
        Ok(fd) => fd,
        Err(errno) => {
            ctx.setup_errno = errno;
            if leader > 0 {
                // Our own unreaped child: its pid is ours to kill.
                let _ = raw::kill(leader, libc::SIGKILL);
                let mut status = 0;
                let _ = raw::waitpid(leader, &mut status, libc::__WALL);
            }
            release_and_exit(&plan);
        }
    };
    // From here on nothing of the calling thread is used: not `ctx`, not its storage.
    // SAFETY: `tls` is inside this process's own mapping, which stays mapped until it is
    // reaped; only raw calls follow, which use no thread-local storage.
    let _ = unsafe { raw::set_thread_pointer(tls) };
    let name = b"pgroup-superv\0";
    let _ = raw::prctl(libc::PR_SET_NAME, name.as_ptr() as usize);
    supervise::supervise(plan, leader, test_binary)
}

/// On failure, once the answer is in the context: releases the calling thread with a
/// message of its own (it then reads the context and reaps us) and exits.
fn release_and_exit(plan: &Plan) -> ! {
    let _ = raw::write(plan.status_write, &[supervise::TAG_FAILED, 0, 0, 0, 0]);
    raw::exit_group(0)
}

/// Before std spawns the leader: a process group of its own (a SIGKILL to the test binary's
/// group must not take it), child subreaper, SIGCHLD at its default (an ignored SIGCHLD
/// would make the kernel reap the leader), and no handler of the test binary left (this
/// process shares its memory, so a handler would run the test binary's code here); ignored
/// signals stay ignored, as std passes them on to the leader.
fn prepare() -> Result<(), c_int> {
    raw::setpgid(0, 0)?;
    raw::prctl(libc::PR_SET_CHILD_SUBREAPER, 1)?;
    raw::sigaction(libc::SIGCHLD, Some(&raw::KernelSigaction::DFL), None)?;
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || sig == libc::SIGCHLD {
            continue;
        }
        let mut old = raw::KernelSigaction::DFL;
        if raw::sigaction(sig, None, Some(&mut old)).is_ok()
            && old.handler != libc::SIG_DFL
            && old.handler != libc::SIG_IGN
        {
            let _ = raw::sigaction(sig, Some(&raw::KernelSigaction::DFL), None);
        }
    }
    Ok(())
}

/// After the spawn: a private descriptor table (the shared one is the test binary's), and a
/// pidfd on the test binary, our parent. `getppid` is read again after `pidfd_open`: if it
/// changed, the test binary died in between and the descriptor may name whoever inherited
/// us.
fn private_state() -> Result<RawFd, c_int> {
    raw::unshare(libc::CLONE_FILES)?;
    let parent = raw::getppid();
    let fd = raw::pidfd_open(parent)?;
    if raw::getppid() != parent {
        raw::close(fd);
        return Err(libc::ESRCH);
    }
    Ok(fd)
}
