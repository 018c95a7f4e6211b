//! Raw system calls that touch neither `errno` nor any other thread-local or libc state.
//!
//! The `Supervised` tier's supervisor runs in the test binary's address space (see
//! `respawn.rs`), where `errno` is the thread-local variable of whichever test thread it was
//! cloned from: a libc wrapper that fails would write into that thread's storage, which may
//! be freed by then. Every call here is a `syscall` (x86_64) or `svc 0` (aarch64)
//! instruction that returns the kernel's answer as it is: a value, or `-errno`.
//!
//! On other architectures the calls go through libc's `syscall`, which does set `errno`;
//! there the shared-memory supervisor is not used (see [`SUPPORTED`]), and these calls only
//! run in forked processes, whose thread-local storage is their own.

use std::ptr;

use nix::libc::{self, c_int, c_long, c_void, pid_t};

/// Whether this architecture has the instruction-level calls below (and a thread pointer
/// the supervisor can move to storage of its own).
pub(crate) const SUPPORTED: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// `arch_prctl` code that sets the `fs` base (asm/prctl.h).
#[cfg(target_arch = "x86_64")]
const ARCH_SET_FS: c_int = 0x1002;

/// A kernel answer: the value, or the error number.
pub(crate) type Ret = Result<usize, c_int>;

/// A syscall argument from a signed C integer (pids, descriptors, `-pgid`): sign-extended,
/// as the kernel reads the register back as an `int`.
#[allow(clippy::cast_sign_loss)] // the register carries the two's complement pattern
fn int(value: c_int) -> usize {
    value as isize as usize
}

fn decode(ret: isize) -> Ret {
    if (-4095..0).contains(&ret) {
        Err(c_int::try_from(-ret).unwrap_or(libc::EINVAL))
    } else {
        Ok(ret.unsigned_abs())
    }
}

/// # Safety
///
/// The arguments must be valid for the call `nr`, as for the C library's `syscall`.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn syscall6(nr: c_long, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> Ret {
    let ret: isize;
    // SAFETY: the Linux x86_64 syscall convention: number in rax, arguments in rdi, rsi,
    // rdx, r10, r8, r9, result in rax; the instruction clobbers rcx and r11 and no stack.
    // The caller vouches for the arguments.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            in("r10") d,
            in("r8") e,
            in("r9") f,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    decode(ret)
}

/// # Safety
///
/// As for the x86_64 version.
#[cfg(target_arch = "aarch64")]
#[inline]
unsafe fn syscall6(nr: c_long, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> Ret {
    let ret: isize;
    // SAFETY: the Linux aarch64 syscall convention: number in x8, arguments in x0–x5,
    // result in x0; `svc 0` clobbers nothing else. The caller vouches for the arguments.
    unsafe {
        core::arch::asm!(
            "svc 0",
            in("x8") nr,
            inlateout("x0") a => ret,
            in("x1") b,
            in("x2") c,
            in("x3") d,
            in("x4") e,
            in("x5") f,
            options(nostack),
        );
    }
    decode(ret)
}

/// # Safety
///
/// As for the x86_64 version. Sets `errno` on failure (see the module documentation).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn syscall6(nr: c_long, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> Ret {
    // SAFETY: as the caller vouches.
    let ret = unsafe { libc::syscall(nr, a, b, c, d, e, f) };
    if ret < 0 {
        Err(nix::errno::Errno::last_raw())
    } else {
        Ok(usize::try_from(ret).unwrap_or(0))
    }
}

fn fd_of(ret: usize) -> c_int {
    c_int::try_from(ret).unwrap_or(-1)
}

pub(crate) fn read(fd: c_int, buf: &mut [u8]) -> Ret {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    unsafe {
        syscall6(
            libc::SYS_read,
            int(fd),
            buf.as_mut_ptr() as usize,
            buf.len(),
            0,
            0,
            0,
        )
    }
}

pub(crate) fn write(fd: c_int, buf: &[u8]) -> Ret {
    // SAFETY: the kernel reads `buf.len()` bytes from `buf`.
    unsafe {
        syscall6(
            libc::SYS_write,
            int(fd),
            buf.as_ptr() as usize,
            buf.len(),
            0,
            0,
            0,
        )
    }
}

pub(crate) fn close(fd: c_int) {
    // SAFETY: closing a descriptor number has no memory effects.
    let _ = unsafe { syscall6(libc::SYS_close, int(fd), 0, 0, 0, 0, 0) };
}

/// `ppoll` with a timeout in milliseconds (negative: none) and no signal mask change.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout_ms: c_int) -> Ret {
    let ts = libc::timespec {
        tv_sec: (timeout_ms / 1000).into(),
        tv_nsec: ((timeout_ms % 1000) * 1_000_000).into(),
    };
    let ts_ptr = if timeout_ms < 0 { ptr::null() } else { &ts };
    // SAFETY: `fds` and `ts` are valid for the call; no signal mask is passed.
    unsafe {
        syscall6(
            libc::SYS_ppoll,
            fds.as_mut_ptr() as usize,
            fds.len(),
            ts_ptr as usize,
            0,
            8,
            0,
        )
    }
}

/// `waitid` without the resource usage.
pub(crate) fn waitid(
    idtype: libc::idtype_t,
    id: libc::id_t,
    info: &mut libc::siginfo_t,
    options: c_int,
) -> Ret {
    // SAFETY: the kernel fills `info`; no rusage is asked for.
    unsafe {
        syscall6(
            libc::SYS_waitid,
            idtype as usize,
            id as usize,
            ptr::from_mut(info) as usize,
            int(options),
            0,
            0,
        )
    }
}

/// `wait4` without the resource usage; returns the pid reaped (0: none yet).
pub(crate) fn waitpid(pid: pid_t, status: &mut c_int, options: c_int) -> Result<pid_t, c_int> {
    // SAFETY: the kernel writes the status into `status`.
    unsafe {
        syscall6(
            libc::SYS_wait4,
            int(pid),
            ptr::from_mut(status) as usize,
            int(options),
            0,
            0,
            0,
        )
    }
    .map(|pid| pid_t::try_from(pid).unwrap_or(0))
}

pub(crate) fn kill(pid: pid_t, sig: c_int) -> Ret {
    // SAFETY: plain integers.
    unsafe { syscall6(libc::SYS_kill, int(pid), int(sig), 0, 0, 0, 0) }
}

pub(crate) fn getpgid(pid: pid_t) -> pid_t {
    // SAFETY: plain integers.
    match unsafe { syscall6(libc::SYS_getpgid, int(pid), 0, 0, 0, 0, 0) } {
        Ok(pgid) => pid_t::try_from(pgid).unwrap_or(-1),
        Err(_) => -1,
    }
}

pub(crate) fn getppid() -> pid_t {
    // SAFETY: no arguments.
    match unsafe { syscall6(libc::SYS_getppid, 0, 0, 0, 0, 0, 0) } {
        Ok(pid) => pid_t::try_from(pid).unwrap_or(-1),
        Err(_) => -1,
    }
}

pub(crate) fn setpgid(pid: pid_t, pgid: pid_t) -> Ret {
    // SAFETY: plain integers.
    unsafe { syscall6(libc::SYS_setpgid, int(pid), int(pgid), 0, 0, 0, 0) }
}

pub(crate) fn prctl(option: c_int, arg: usize) -> Ret {
    // SAFETY: the options used here take plain integers (or a pointer the caller vouches for).
    unsafe { syscall6(libc::SYS_prctl, int(option), arg, 0, 0, 0, 0) }
}

pub(crate) fn unshare(flags: c_int) -> Ret {
    // SAFETY: plain integers.
    unsafe { syscall6(libc::SYS_unshare, int(flags), 0, 0, 0, 0, 0) }
}

/// `openat(AT_FDCWD, path)`; `path` ends with NUL.
pub(crate) fn open(path: &[u8], flags: c_int) -> Result<c_int, c_int> {
    if path.last() != Some(&0) {
        return Err(libc::EINVAL);
    }
    // SAFETY: `path` is NUL-terminated (checked above).
    unsafe {
        syscall6(
            libc::SYS_openat,
            int(libc::AT_FDCWD),
            path.as_ptr() as usize,
            int(flags),
            0,
            0,
            0,
        )
    }
    .map(fd_of)
}

pub(crate) fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> Ret {
    // SAFETY: the commands used here take integers.
    unsafe { syscall6(libc::SYS_fcntl, int(fd), int(cmd), arg, 0, 0, 0) }
}

pub(crate) fn pidfd_open(pid: pid_t) -> Result<c_int, c_int> {
    // SAFETY: plain integers.
    unsafe { syscall6(libc::SYS_pidfd_open, int(pid), 0, 0, 0, 0, 0) }.map(fd_of)
}

pub(crate) fn close_range(first: u32, last: u32) -> Ret {
    // SAFETY: plain integers.
    unsafe {
        syscall6(
            libc::SYS_close_range,
            first as usize,
            last as usize,
            0,
            0,
            0,
            0,
        )
    }
}

/// Gives the CPU to another runnable task, if any.
pub(crate) fn sched_yield() {
    // SAFETY: no arguments.
    let _ = unsafe { syscall6(libc::SYS_sched_yield, 0, 0, 0, 0, 0, 0) };
}

/// Microseconds on `CLOCK_MONOTONIC` (the syscall: no libc state).
pub(crate) fn monotonic_us() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the kernel writes into `ts`.
    let _ = unsafe {
        syscall6(
            libc::SYS_clock_gettime,
            int(libc::CLOCK_MONOTONIC),
            ptr::from_mut(&mut ts) as usize,
            0,
            0,
            0,
            0,
        )
    };
    #[allow(clippy::useless_conversion)] // `time_t` and `c_long` are `i64` only on some targets
    i64::from(ts.tv_sec)
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(ts.tv_nsec) / 1_000)
}

/// Milliseconds on `CLOCK_MONOTONIC` (the syscall, not the vDSO: no libc state).
pub(crate) fn monotonic_ms() -> i64 {
    monotonic_us() / 1000
}

/// The kernel's `struct sigaction` (x86_64 and aarch64 alike: both have `sa_restorer`).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct KernelSigaction {
    pub handler: usize,
    pub flags: u64,
    pub restorer: usize,
    pub mask: u64,
}

impl KernelSigaction {
    pub(crate) const DFL: KernelSigaction = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
}

/// `rt_sigaction`; `new` and `old` optional.
pub(crate) fn sigaction(
    sig: c_int,
    new: Option<&KernelSigaction>,
    old: Option<&mut KernelSigaction>,
) -> Ret {
    let new = new.map_or(0, |n| ptr::from_ref(n) as usize);
    let old = old.map_or(0, |o| ptr::from_mut(o) as usize);
    // SAFETY: both pointers are null or point to a kernel sigaction of the right size.
    unsafe { syscall6(libc::SYS_rt_sigaction, int(sig), new, old, 8, 0, 0) }
}

/// A kernel signal set: bit `n - 1` for signal `n`.
pub(crate) fn sigbit(sig: c_int) -> u64 {
    u32::try_from(sig - 1)
        .ok()
        .filter(|b| *b < 64)
        .map_or(0, |b| 1 << b)
}

/// `rt_sigprocmask(SIG_SETMASK)`; returns the old mask.
pub(crate) fn set_sigmask(mask: u64) -> u64 {
    let mut old: u64 = 0;
    // SAFETY: both sets are 8-byte kernel sets on our stack.
    let _ = unsafe {
        syscall6(
            libc::SYS_rt_sigprocmask,
            int(libc::SIG_SETMASK),
            ptr::from_ref(&mask) as usize,
            ptr::from_mut(&mut old) as usize,
            8,
            0,
            0,
        )
    };
    old
}

/// A non-blocking, close-on-exec `signalfd` for the signals in `mask`.
pub(crate) fn signalfd(mask: u64) -> Result<c_int, c_int> {
    // SAFETY: an 8-byte kernel set on our stack.
    unsafe {
        syscall6(
            libc::SYS_signalfd4,
            int(-1),
            ptr::from_ref(&mask) as usize,
            8,
            int(libc::SFD_NONBLOCK | libc::SFD_CLOEXEC),
            0,
            0,
        )
    }
    .map(fd_of)
}

/// An anonymous private mapping of `len` bytes.
pub(crate) fn mmap_anonymous(len: usize) -> Result<*mut c_void, c_int> {
    // SAFETY: a new anonymous mapping, placed by the kernel: it overlaps nothing.
    unsafe {
        syscall6(
            libc::SYS_mmap,
            0,
            len,
            int(libc::PROT_READ | libc::PROT_WRITE),
            int(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE),
            int(-1),
            0,
        )
    }
    .map(|addr| addr as *mut c_void)
}

/// Ends this process (every thread of it) at once, running nothing.
pub(crate) fn exit_group(code: c_int) -> ! {
    loop {
        // SAFETY: ends the process; nothing runs after it.
        let _ = unsafe { syscall6(libc::SYS_exit_group, int(code), 0, 0, 0, 0, 0) };
    }
}

/// Points this process's thread pointer (`fs` on x86_64, `tpidr_el0` on aarch64) at `tp`,
/// so that any thread-local access from here on lands in storage the caller owns.
///
/// # Safety
///
/// `tp` must point into memory that stays mapped for as long as this process runs, and no
/// code of this process may rely on its previous thread-local storage afterwards.
pub(crate) unsafe fn set_thread_pointer(tp: *mut c_void) -> Ret {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: ARCH_SET_FS takes an address; the caller vouches for it.
        unsafe {
            syscall6(
                libc::SYS_arch_prctl,
                int(ARCH_SET_FS),
                tp as usize,
                0,
                0,
                0,
                0,
            )
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: writes the EL0 thread pointer register; the caller vouches for `tp`.
        unsafe { core::arch::asm!("msr tpidr_el0, {}", in(reg) tp, options(nostack)) };
        Ok(0)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = tp;
        Err(libc::ENOSYS)
    }
}
