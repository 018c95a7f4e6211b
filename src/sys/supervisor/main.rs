//! The supervisor program: a freestanding Linux executable (no C library, no dynamic
//! loader, a few KiB) that the library builds with `build.rs`, embeds, and executes from
//! memory (`memfd_create`, `execveat`) as the supervisor of each group of the supervised
//! tiers. See `run.rs` for what it does, and `spawn/mod.rs` in the library for how it starts.
//!
//! Its arguments, after `argv[0]` (`pgroup-supervisor`): `leader=<pid>`,
//! `channel=<fd>`, `parent=<fd>`, as `ps -f` shows them; or `--probe channel=<fd>`, which
//! writes `ok` to that descriptor and exits at once with status 0.

#![no_std]
#![no_main]

mod protocol;
mod raw;
mod run;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    raw::exit_group(127)
}

// The entry point: the kernel starts the program with the stack pointer at `argc`, followed
// by `argv`'s pointers. The stack is aligned for the call to `start`.
#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {start}",
    "ud2",
    start = sym start,
);

#[cfg(target_arch = "aarch64")]
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "mov x29, xzr",
    "mov x30, xzr",
    "mov x0, sp",
    "and sp, x0, #-16",
    "bl {start}",
    "brk #0",
    start = sym start,
);

/// The value of `key=<decimal>` among the arguments.
fn arg(args: &[&[u8]], key: &[u8]) -> Option<i32> {
    let value = args
        .iter()
        .find_map(|a| a.strip_prefix(key).and_then(|rest| rest.strip_prefix(b"=")))?;
    let mut n: i32 = 0;
    if value.is_empty() {
        return None;
    }
    for &b in value {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(i32::from(b - b'0'))?;
    }
    Some(n)
}

/// Reads the arguments and runs the supervisor; exits with 2 on bad arguments.
extern "C" fn start(sp: *const usize) -> ! {
    const MAX_ARGS: usize = 8;
    let mut args: [&[u8]; MAX_ARGS] = [&[]; MAX_ARGS];
    // SAFETY: at entry the stack holds `argc`, then `argc` pointers to NUL-terminated
    // strings and a null pointer: the kernel's layout, which stays in place (only this
    // process's stack) for the whole run.
    let count = unsafe {
        let argc = *sp;
        let argv = sp.add(1).cast::<*const u8>();
        let count = argc.min(MAX_ARGS);
        for (i, slot) in args.iter_mut().enumerate().take(count) {
            let arg = *argv.add(i);
            let mut len = 0;
            while *arg.add(len) != 0 {
                len += 1;
            }
            *slot = core::slice::from_raw_parts(arg, len);
        }
        count
    };
    let given = args.get(1..count).unwrap_or(&[]);
    if given.first() == Some(&&protocol::PROBE[..protocol::PROBE.len() - 1]) {
        if let Some(channel) = arg(given, b"channel") {
            let _ = raw::write(channel, protocol::PROBE_OK);
        }
        raw::exit_group(0);
    }
    match (
        arg(given, b"channel"),
        arg(given, b"parent"),
        arg(given, b"leader"),
    ) {
        (Some(channel), Some(parent), Some(leader)) if leader > 1 => run::run(run::Args {
            channel,
            parent,
            leader,
            check_exec: false,
        }),
        _ => raw::exit_group(2),
    }
}

/// The prebuilt `core` refers to the unwinder's personality routine from its unwind
/// tables; with `panic = "abort"` nothing unwinds, and nothing calls it.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

// The compiler may call these for copies and fills; without a C library they are ours. (LLVM
// never turns the loop of a function named `memcpy` or `memset` into a call to itself.)

/// # Safety
///
/// As C's `memcpy`.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller vouches for `n` bytes at both addresses, not overlapping.
        unsafe { *dest.add(i) = *src.add(i) };
    }
    dest
}

/// # Safety
///
/// As C's `memmove`.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize) < (src as usize) {
        for i in 0..n {
            // SAFETY: the caller vouches for `n` bytes at both addresses; copying upwards
            // from below reads each source byte before it is overwritten.
            unsafe { *dest.add(i) = *src.add(i) };
        }
    } else {
        for i in (0..n).rev() {
            // SAFETY: as above, downwards.
            unsafe { *dest.add(i) = *src.add(i) };
        }
    }
    dest
}

/// # Safety
///
/// As C's `memset`.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // C's `memset` stores the low byte of `c`.
    let byte = c.to_le_bytes()[0];
    for i in 0..n {
        // SAFETY: the caller vouches for `n` bytes at `dest`.
        unsafe { *dest.add(i) = byte };
    }
    dest
}

/// # Safety
///
/// As C's `memcmp`.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller vouches for `n` bytes at both addresses.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
///
/// As C's `bcmp`.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: as the caller vouches.
    unsafe { memcmp(a, b, n) }
}

/// # Safety
///
/// As C's `strlen`.
#[no_mangle]
pub unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut len = 0;
    // SAFETY: the caller vouches for a NUL-terminated string at `s`.
    while unsafe { *s.add(len) } != 0 {
        len += 1;
    }
    len
}
