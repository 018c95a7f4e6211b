//! The `Supervised` tier without a fork of the test binary: an exec'd supervisor.
//!
//! # Why
//!
//! The forked supervisor (see `supervise.rs`) costs two copies of the test binary's page
//! tables per spawn: std forks (a `pre_exec` hook takes it off `posix_spawn`), and the hook
//! forks the leader again. That cost grows with the test binary's resident memory (about
//! 50 ms per spawn at 256 MiB). This path copies no page table at all.
//!
//! # How
//!
//! 1. The calling thread blocks every signal and creates the *spawner* with
//!    `clone(CLONE_VM | CLONE_VFORK | CLONE_FILES)` on a stack of its own: a process that
//!    shares the test binary's memory and descriptor table, while the calling thread is
//!    suspended by the kernel until the spawner execs or exits (exactly `vfork`, but with
//!    a separate stack, as glibc's `posix_spawn` does it).
//! 2. The spawner makes itself a child subreaper in a process group of its own, opens a
//!    pidfd on the test binary, and runs std's `Command::spawn` on the user's `Command`,
//!    unchanged but for `process_group(0)`: std applies every setting (stdio, env,
//!    `env_clear`, cwd, `arg0`, uid/gid, `pre_exec` hooks) as it would for the `Group`
//!    tier, with `posix_spawn` where it can. The leader is therefore the spawner's child.
//!    The spawner runs that code in place of the suspended thread (same memory, same
//!    thread-local storage; the thread cannot run until the spawner is gone), with every
//!    signal blocked, so that no handler of the test binary runs in it.
//! 3. The spawner takes a private copy of the descriptor table (`unshare(CLONE_FILES)`),
//!    keeps the supervisor's three descriptors open across exec, and execs the test binary
//!    (`/proc/self/exe`) with `PGROUP_SUPERVISOR` in its environment. The library's
//!    `.init_array` entry ([`supervisor_entry`]) sees it before `main` and runs the
//!    supervisor loop there: the same async-signal-safe loop as the forked supervisor, in a
//!    fresh, small, single-threaded image that is still the leader's parent and a subreaper
//!    (both survive exec). The exec releases the suspended thread.
//!
//! Nothing here copies the test binary's memory: `clone(CLONE_VM)` shares it, `posix_spawn`
//! shares it until the leader execs, and the spawner's exec drops its reference.
//!
//! # Differences from the forked supervisor
//!
//! - `pre_exec` hooks of the `Command` run in the leader (before its exec), as in the
//!   `Group` tier, not in the supervisor; a hook (or uid/gid, or a new session) makes std
//!   fork, so one copy of the test binary's page tables comes back with it.
//! - The leader starts with SIGCHLD at its default action even when the test binary
//!   ignores it (std's `posix_spawn` passes an ignored SIGCHLD on, and the supervisor must
//!   not ignore it while the leader lives, or the kernel would reap the leader).
//! - It needs the library's `.init_array` entry in the executable, which is there whenever
//!   the executable links `pgroup` (not when the library is loaded with `dlopen` into
//!   another program: unsupported). Where the entry did not run at all, and with
//!   `PGROUP_EXEC_SUPERVISOR=off`, the forked supervisor is used.
//! - The spawner does more than a `vfork` child should: std's `spawn` allocates and takes
//!   std's environment lock. It does so in place of the suspended calling thread, with
//!   every signal blocked and no handler installed, and holds no lock when it execs; only a
//!   SIGKILL aimed at the spawner's own pid during those microseconds could leave a lock
//!   of the test binary held.
//! - The supervisor process is named `pgroup-superv` (its argv\[0\] is `pgroup-supervisor`)
//!   and carries the test binary's environment, as the forked one did.

use std::ffi::{CStr, CString};
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::process::{Child, Command};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::libc::{self, c_char, c_int, c_void};

use super::supervise::{self, Plan};

/// The environment variable that turns an exec of the test binary into a supervisor; its
/// value starts with [`MAGIC`].
const VAR: &[u8] = b"PGROUP_SUPERVISOR";
/// A value no one sets by accident.
const MAGIC: &str = "pgroup-supervisor-v1";

/// The spawner's stack: std's `spawn` and `posix_spawn` (which maps a stack of its own for
/// the leader) run on it.
const STACK_LEN: usize = 512 * 1024;

/// Whether the `.init_array` entry ran in this process, i.e. whether an exec of
/// `/proc/self/exe` reaches [`supervisor_entry`] before `main`.
static ENTRY_RAN: AtomicBool = AtomicBool::new(false);

/// glibc calls `.init_array` entries with `argc`, `argv` and `envp`; musl with none. The
/// entry uses none of them: it reads [`VAR`] with `getenv`.
type InitFn = extern "C" fn();

#[used]
#[link_section = ".init_array"]
static SUPERVISOR_ENTRY: InitFn = supervisor_entry;

/// Runs before `main` in every process that links the library. In an exec'd supervisor
/// (the environment holds [`VAR`] with [`MAGIC`]) it never returns: it supervises the
/// leader it was handed, then exits. Elsewhere it only records that it ran.
extern "C" fn supervisor_entry() {
    ENTRY_RAN.store(true, Ordering::Relaxed);
    let mut name = [0_u8; 32];
    name[..VAR.len()].copy_from_slice(VAR);
    // SAFETY: `name` is NUL-terminated; getenv returns a pointer into the environment or
    // null; nothing else runs in this process yet (before `main`).
    let value = unsafe { libc::getenv(name.as_ptr().cast()) };
    if value.is_null() {
        return;
    }
    // SAFETY: getenv returned a NUL-terminated string that lives as long as the process.
    let value = unsafe { CStr::from_ptr(value) }.to_bytes();
    let Some(plan) = parse(value) else {
        return;
    };
    // Named for `ps` (the kernel named it `exe`, after `/proc/self/exe`).
    let name = b"pgroup-superv\0";
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
    supervise::supervise(plan.0, plan.1, plan.2);
}

/// `MAGIC:control_read:status_write:test_binary:leader`.
fn parse(value: &[u8]) -> Option<(Plan, libc::pid_t, RawFd)> {
    let mut fields = value.split(|b| *b == b':');
    if fields.next()? != MAGIC.as_bytes() {
        return None;
    }
    let mut next = || -> Option<i32> {
        let field = fields.next()?;
        std::str::from_utf8(field).ok()?.parse().ok()
    };
    let control_read = next()?;
    let status_write = next()?;
    let test_binary = next()?;
    let leader = next()?;
    let plan = Plan {
        control_read,
        status_write,
        control_write: -1,
        status_read: -1,
        namespace: false,
        new_session: false,
    };
    Some((plan, leader, test_binary))
}

/// Whether the exec'd supervisor can be used in this process.
pub(crate) fn available() -> bool {
    ENTRY_RAN.load(Ordering::Relaxed)
        && std::env::var_os("PGROUP_EXEC_SUPERVISOR").is_none_or(|v| v != "off")
}

/// What the spawner hands back.
struct Context<'a> {
    cmd: &'a mut Command,
    plan: Plan,
    /// The buffer the spawner writes `PGROUP_SUPERVISOR=...` into (NUL-terminated).
    plan_var: Vec<u8>,
    /// `env`'s pointers, then `plan_var`'s, then null: the supervisor's `envp`. Built
    /// here, by the calling thread, because whatever the spawner allocated before its exec
    /// would never be freed (it is the test binary's heap, and exec runs no destructor).
    /// Set by the spawner: std's answer, or why it did not get that far.
    spawned: Option<io::Result<Child>>,
    envp: Vec<*const c_char>,
    /// The calling thread's signal mask, which std passes on to the leader (as in `Group`).
    mask: libc::sigset_t,
    /// Set by the spawner when the leader was spawned but the supervisor could not be
    /// exec'd (the leader was then killed and reaped).
    exec_failed: Option<io::Error>,
}

/// A supervised leader and its exec'd supervisor.
pub(crate) struct Respawned {
    /// std's handle on the leader, for its stdio pipes only: the leader is the supervisor's
    /// child, never to be waited for here.
    pub leader: Child,
    /// The supervisor: our child, to be reaped by pid.
    pub supervisor: u32,
}

/// Spawns `cmd` (already set to `process_group(0)` or a new session) as the child of an
/// exec'd supervisor that talks through `plan`'s pipes. See the module documentation.
pub(crate) fn spawn(cmd: &mut Command, plan: Plan) -> io::Result<Respawned> {
    let env: Vec<CString> = std::env::vars_os()
        .filter(|(key, _)| key.as_bytes() != VAR)
        .filter_map(|(key, value)| {
            let mut entry = key.as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            CString::new(entry).ok()
        })
        .collect();
    let plan_var = vec![0_u8; 160];
    let mut envp: Vec<*const c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(plan_var.as_ptr().cast());
    envp.push(ptr::null());
    // `env` holds the strings `envp` points to; it lives until this function returns.
    let mut ctx = Context {
        cmd,
        plan,
        plan_var,
        envp,
        spawned: None,
        exec_failed: None,
        // SAFETY: sigset_t is plain data; filled in below, before the spawner runs.
        mask: unsafe { std::mem::zeroed() },
    };
    // SAFETY: an anonymous private mapping, checked against MAP_FAILED, unmapped below once
    // the spawner is gone (CLONE_VFORK: `clone` returns only after it exec'd or exited).
    let stack = unsafe {
        libc::mmap(
            ptr::null_mut(),
            STACK_LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the lowest page of our own mapping becomes a guard page (an overflow faults
    // instead of writing below the stack).
    unsafe { libc::mprotect(stack, 4096, libc::PROT_NONE) };
    // SAFETY: sigset_t is plain data; sigfillset and pthread_sigmask fill and apply it. All
    // signals are blocked in this thread for the spawner's life (it inherits the mask), so
    // no handler of the test binary runs in the spawner, and none in this thread while
    // the spawner uses its thread-local storage.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut ctx.mask);
    }
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::SIGCHLD;
    // SAFETY: `spawner` runs on the new stack (its top, 16-byte aligned) with `ctx`, which
    // outlives it: with CLONE_VFORK this thread is suspended until the spawner has exec'd or
    // exited, so `ctx` and this frame are not touched by two parties at once. The spawner
    // shares memory and thread-local storage with this suspended thread and uses them as
    // it would (see the module documentation).
    let pid = unsafe {
        let top = stack.cast::<u8>().add(STACK_LEN).cast::<c_void>();
        libc::clone(
            spawner,
            top,
            flags,
            ptr::from_mut(&mut ctx).cast::<c_void>(),
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: restores the mask saved above; the spawner is gone (exec'd or exited), so the
    // stack is no longer in use.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &ctx.mask, ptr::null_mut());
        libc::munmap(stack, STACK_LEN);
    }
    if pid < 0 {
        return Err(clone_error);
    }
    let spawner = u32::try_from(pid).map_err(|_| io::Error::other("negative pid"))?;
    let failed = |e: io::Error| {
        super::reap_pid(spawner);
        Err(e)
    };
    match (ctx.spawned.take(), ctx.exec_failed.take()) {
        (Some(Ok(leader)), None) => Ok(Respawned {
            leader,
            supervisor: spawner,
        }),
        (Some(Ok(_)), Some(e)) => failed(io::Error::new(
            e.kind(),
            format!("cannot exec the supervisor (/proc/self/exe): {e}"),
        )),
        (Some(Err(e)), _) => failed(e),
        (None, _) => failed(io::Error::other("the supervisor's spawner died")),
    }
}

/// The spawner (see the module documentation). Never returns: it execs the supervisor, or
/// `_exit`s with its findings in the context.
extern "C" fn spawner(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Context` that `spawn` passed, alive while its thread is
    // suspended (CLONE_VFORK); no one else touches it meanwhile.
    let ctx = unsafe { &mut *arg.cast::<Context<'_>>() };
    if let Err(e) = prepare() {
        ctx.spawned = Some(Err(e));
    } else {
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
        match spawned {
            Err(e) => ctx.spawned = Some(Err(e)),
            Ok(child) => {
                let leader = child.id();
                ctx.spawned = Some(Ok(child));
                let e = become_supervisor(ctx, leader);
                ctx.exec_failed = Some(e);
                // SAFETY: the leader is our own unreaped child, so its pid is ours to kill.
                unsafe {
                    if let Ok(pid) = libc::pid_t::try_from(leader) {
                        libc::kill(pid, libc::SIGKILL);
                        let mut status = 0;
                        libc::waitpid(pid, &mut status, 0);
                    }
                }
            }
        }
    }
    // SAFETY: ends this process only; the context has its answer.
    unsafe { libc::_exit(0) }
}

/// The spawner's set-up before std spawns the leader: a process group of its own (a SIGKILL
/// to the test binary's group must not take it), child subreaper, and SIGCHLD at its
/// default (an ignored SIGCHLD would make the kernel reap the leader).
fn prepare() -> io::Result<()> {
    // SAFETY: plain syscalls on this process's own attributes; the sigaction is on our stack
    // and changes the spawner's own copy of the handler table (no CLONE_SIGHAND).
    unsafe {
        if libc::setpgid(0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        if libc::sigaction(libc::SIGCHLD, &dfl, ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        // No handler of the test binary may run here (this process shares its memory):
        // each becomes the default action, which exec would make of it for the leader
        // anyway. Ignored signals stay ignored, as std passes them on.
        for sig in 1..=64 {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_DFL
                && old.sa_sigaction != libc::SIG_IGN
            {
                libc::sigaction(sig, &dfl, ptr::null_mut());
            }
        }
    }
    Ok(())
}

/// Takes a private descriptor table, keeps the supervisor's descriptors across exec, and
/// execs the supervisor. Returns only on failure.
fn become_supervisor(ctx: &mut Context<'_>, leader: u32) -> io::Error {
    let plan = ctx.plan;
    // SAFETY: unshare, close, fcntl and execve on this process's own descriptor table and
    // on the strings `spawn` built, alive until execve. Nothing here allocates: whatever
    // it would allocate would leak in the test binary's heap.
    unsafe {
        if libc::unshare(libc::CLONE_FILES) != 0 {
            return io::Error::last_os_error();
        }
        libc::close(plan.control_write);
        libc::close(plan.status_read);
        let test_binary = match supervise::watch_parent() {
            Ok(fd) => fd,
            Err(e) => return e,
        };
        for fd in [plan.control_read, plan.status_write, test_binary] {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return io::Error::last_os_error();
            }
        }
        // Formatting into a slice allocates nothing; the last byte stays NUL.
        let len = ctx.plan_var.len() - 1;
        let mut out = &mut ctx.plan_var[..len];
        if write!(
            out,
            "PGROUP_SUPERVISOR={MAGIC}:{}:{}:{test_binary}:{leader}",
            plan.control_read, plan.status_write,
        )
        .is_err()
        {
            return io::Error::from_raw_os_error(libc::E2BIG);
        }
        // The slot before the final null (taken afresh after the write above).
        let slot = ctx.envp.len() - 2;
        ctx.envp[slot] = ctx.plan_var.as_ptr().cast();
        let argv: [*const c_char; 2] = [c"pgroup-supervisor".as_ptr(), ptr::null()];
        libc::execve(c"/proc/self/exe".as_ptr(), argv.as_ptr(), ctx.envp.as_ptr());
        io::Error::last_os_error()
    }
}
