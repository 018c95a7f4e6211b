//! The creation of the spawner: `clone3` (which can reset its signal handlers), or glibc's
//! `clone` where `clone3` is refused.

use std::io;
use std::ptr;
use std::sync::atomic::{AtomicU8, Ordering};

use nix::libc::{self, c_int, c_void};

use super::program::{Stack, GUARD_LEN, STACK_LEN};
use super::{spawner_main, Context};

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
// new stack (it never returns); the parent gets the child's pid or `-errno`. The macro wraps
// an architecture's instructions in the function's section and symbol directives.
macro_rules! clone3_function {
    ($($instruction:literal),* $(,)?) => {
        std::arch::global_asm!(
            ".pushsection .text.pgroup_clone3,\"ax\",@progbits",
            ".globl pgroup_clone3",
            ".hidden pgroup_clone3",
            ".type pgroup_clone3,@function",
            "pgroup_clone3:",
            $($instruction,)*
            ".size pgroup_clone3, . - pgroup_clone3",
            ".popsection",
        );
    };
}

#[cfg(target_arch = "x86_64")]
clone3_function!(
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
);

#[cfg(target_arch = "aarch64")]
clone3_function!(
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
pub(super) unsafe fn clone_spawner(
    stack: &mut Stack,
    flags: c_int,
    ctx: &mut Context<'_>,
) -> io::Result<i32> {
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
