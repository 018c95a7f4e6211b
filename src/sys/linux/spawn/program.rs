//! The supervisor program in memory, the spawner's stacks, and what the supervisor is
//! given of the test binary: a pidfd on it, and its environment.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::ptr;
use std::sync::{Mutex, OnceLock, PoisonError};

use nix::libc::{self, c_int, c_void};

use crate::sys::supervisor::protocol::{ARGV0, PROBE, PROBE_OK};
use crate::sys::supervisor::raw;

/// The spawner's stack: std's `spawn` runs on it, and so do `pre_exec` hooks (std forks the
/// leader from the spawner when there are any). Mapped without reserve: only the pages
/// touched cost memory.
pub(super) const STACK_LEN: usize = 8 << 20;

/// Below the stack: a guard band that a deep frame cannot jump over unnoticed.
pub(super) const GUARD_LEN: usize = 64 << 10;

/// The environment variable that turns the supervisor program off (the supervisor is then
/// forked): `off`, `0` or `false` in any case; `on`, `1`, `true` or unset keep it on.
pub(crate) const PROGRAM_VAR: &str = "PGROUP_SUPERVISOR_PROGRAM";

/// [`PROGRAM_VAR`], read at each spawn (a lookup in the environment).
pub(super) fn program_switch() -> io::Result<bool> {
    crate::sys::switch(PROGRAM_VAR)
        .map_err(|message| io::Error::new(io::ErrorKind::InvalidInput, message))
}

/// The supervisor program in a sealed `memfd`, and how to execute it.
pub(super) struct Program {
    memfd: OwnedFd,
    /// `/proc/self/fd/<memfd>`, where `execveat(AT_EMPTY_PATH)` is refused (valgrind) but a
    /// path is not; `None` where `execveat` works.
    path: Option<CString>,
}

impl Program {
    /// Executes the program with `argv` and `envp`; returns only on failure, with the errno.
    ///
    /// # Safety
    ///
    /// As [`raw::execveat_fd`]: `argv` and `envp` are null-terminated arrays of
    /// NUL-terminated strings, valid until the call returns.
    pub(super) unsafe fn exec(&self, argv: *const *const u8, envp: *const *const u8) -> i32 {
        match &self.path {
            // SAFETY: as the caller vouches; the path is NUL-terminated.
            Some(path) => unsafe { raw::execve(path.as_ptr().cast(), argv, envp) },
            // SAFETY: as the caller vouches.
            None => unsafe { raw::execveat_fd(self.memfd.as_raw_fd(), argv, envp) },
        }
    }
}

/// The supervisor program, loaded and probed once per process; `Err` says why it cannot be
/// used here.
pub(super) fn program() -> Result<&'static Program, &'static str> {
    static PROGRAM: OnceLock<Result<Program, String>> = OnceLock::new();
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
pub(super) const PROGRAM_IMAGE: Option<&[u8]> = Some(include_bytes!(concat!(
    env!("OUT_DIR"),
    "/pgroup-supervisor"
)));

#[cfg(not(pgroup_image))]
pub(super) const PROGRAM_IMAGE: Option<&[u8]> = None;

fn load_program() -> Result<Program, String> {
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
    let memfd = crate::sys::above_stdio(OwnedFd::from(file)).map_err(|e| format!("fcntl: {e}"))?;
    rustix::fs::fcntl_add_seals(
        &memfd,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )
    .map_err(|e| format!("sealing the memfd: {e}"))?;
    let mut program = Program { memfd, path: None };
    if let Err(by_fd) = probe(&program) {
        program.path = CString::new(format!("/proc/self/fd/{}", program.memfd.as_raw_fd())).ok();
        probe(&program).map_err(|by_path| {
            format!("executing it from a memfd failed: {by_fd}; by its /proc path: {by_path}")
        })?;
    }
    Ok(program)
}

/// Runs the program once with `--probe` (a `vfork` and an exec, about 60 µs), so that a
/// system that refuses to execute it is known before any leader is spawned. The outcome
/// comes through a pipe, not the probe's exit status, which a test binary that ignores
/// SIGCHLD never sees: the program writes [`PROBE_OK`] to it, or the probe the errno of its
/// failed exec; nothing at all means the program was killed (a seccomp profile, a CPU
/// feature it lacks).
fn probe(program: &Program) -> Result<(), String> {
    let (reader, writer) = crate::sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    let mut channel = *b"channel=\0\0\0\0\0\0\0\0\0\0\0";
    let digits = u64::try_from(writer.as_raw_fd()).unwrap_or(0);
    let len = crate::sys::supervisor::run::write_decimal(&mut channel[8..18], digits);
    channel[8 + len] = 0;
    let argv: [*const u8; 4] = [
        ARGV0.as_ptr(),
        PROBE.as_ptr(),
        channel.as_ptr(),
        ptr::null(),
    ];
    let envp: [*const u8; 1] = [ptr::null()];
    let mut stack = Stack::take().map_err(|e| format!("mmap: {e}"))?;
    let mut job = ProbeJob {
        program,
        writer: writer.as_raw_fd(),
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
    drop(writer);
    if pid <= 0 {
        return Err(format!("clone: {}", io::Error::last_os_error()));
    }
    let said = read_probe(&reader);
    if said == PROBE_OK || said.len() == 4 {
        // It exits right after writing: reaped here (`ECHILD` where the kernel already did,
        // SIGCHLD being ignored).
        let _ = crate::sys::reap_pid_status(pid);
    }
    match said.as_slice() {
        PROBE_OK => Ok(()),
        &[a, b, c, d] => {
            Err(io::Error::from_raw_os_error(i32::from_le_bytes([a, b, c, d])).to_string())
        }
        _ => {
            let pid = u32::try_from(pid).unwrap_or(0);
            Err(
                match crate::sys::reap_now_or_later(pid, reader.as_fd(), None) {
                    Ok(Some(status)) => format!("the probe said nothing and ended ({status})"),
                    Ok(None) => "the probe said nothing within 5 s".to_owned(),
                    Err(e) => format!("the probe said nothing and was reaped elsewhere: {e}"),
                },
            )
        }
    }
}

/// Reads what the probe wrote: [`PROBE_OK`] or an errno, or nothing until it exits (the
/// pipe's end of file, which a copy of the write end in a process forked meanwhile may
/// hold back) or 5 s pass.
fn read_probe(reader: &OwnedFd) -> Vec<u8> {
    let mut said = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match crate::sys::poll_readable(&[reader.as_fd()], Some(left)) {
            Ok(ready) if ready.first() == Some(&true) => {}
            Ok(_) => break,
            Err(_) => break,
        }
        let mut buf = [0_u8; 8];
        match rustix::io::read(reader, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                said.extend_from_slice(&buf[..n]);
                if said == PROBE_OK || said.len() >= 4 {
                    break;
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
    }
    said
}

struct ProbeJob<'a> {
    program: &'a Program,
    /// The pipe's write end, kept open across the exec in the probe (its own descriptor
    /// table: `CLONE_VM` without `CLONE_FILES`).
    writer: RawFd,
    argv: *const *const u8,
    envp: *const *const u8,
}

extern "C" fn probe_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ProbeJob` that `probe` passed, alive while we run.
    let job = unsafe { &*arg.cast::<ProbeJob<'_>>() };
    let errno = match raw::keep_on_exec(job.writer) {
        // SAFETY: the job's arrays are null-terminated arrays of NUL-terminated strings.
        Ok(_) => unsafe { job.program.exec(job.argv, job.envp) },
        Err(errno) => errno,
    };
    let _ = raw::write(job.writer, &errno.to_le_bytes());
    raw::exit_group(errno)
}

/// A stack for the spawner: `[guard | stack]`, reused from a pool once the spawner has
/// exec'd or exited (the calling thread is suspended until then, so it is free at once).
pub(super) struct Stack {
    pub(super) base: *mut u8,
}

// SAFETY: plain memory, owned by whoever holds the handle.
unsafe impl Send for Stack {}

pub(super) static STACKS: Mutex<Vec<Stack>> = Mutex::new(Vec::new());

pub(super) const STACKS_KEPT: usize = 4;

impl Stack {
    pub(super) fn take() -> io::Result<Stack> {
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
    pub(super) fn top(&mut self) -> *mut c_void {
        // SAFETY: one past the end of our own mapping.
        unsafe { self.base.add(GUARD_LEN + STACK_LEN).cast() }
    }

    /// Back to the pool, or unmapped. Only once nothing runs on it any more.
    pub(super) fn release(self) {
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
pub(super) fn self_pidfd() -> io::Result<RawFd> {
    static SELF: Mutex<Option<(u32, OwnedFd)>> = Mutex::new(None);
    let me = std::process::id();
    let mut slot = SELF.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((pid, fd)) = slot.as_ref() {
        if *pid == me {
            return Ok(fd.as_raw_fd());
        }
    }
    let fd = crate::sys::above_stdio(crate::sys::pidfd_open(me)?)?;
    let raw = fd.as_raw_fd();
    if let Some((_, stale)) = slot.replace((me, fd)) {
        // The parent's, inherited across a fork without exec.
        drop(stale);
    }
    Ok(raw)
}

/// The test binary's environment as `KEY=value` strings, for the supervisor program (so
/// that it carries what every child of the test binary carries).
pub(super) struct Environment {
    _strings: Vec<CString>,
    pub(super) pointers: Vec<*const u8>,
}

impl Environment {
    pub(super) fn capture() -> Environment {
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
