//! Signal dispositions and masks, and a `signalfd` for SIGCHLD.

use core::ptr;

use super::{fd_of, int, nr, syscall6, Ret, SFD_NONBLOCK_CLOEXEC, SIG_SETMASK};

/// The kernel's `struct sigaction` (x86_64 and aarch64 alike: both have `sa_restorer`).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct KernelSigaction {
    pub handler: usize,
    pub flags: u64,
    pub restorer: usize,
    pub mask: u64,
}

/// `SIG_DFL`, `SIG_IGN`.
pub(crate) const SIG_DFL: usize = 0;
pub(crate) const SIG_IGN: usize = 1;

impl KernelSigaction {
    pub(crate) const DFL: KernelSigaction = KernelSigaction {
        handler: SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
}

/// `rt_sigaction`; `new` and `old` optional.
pub(crate) fn sigaction(
    sig: i32,
    new: Option<&KernelSigaction>,
    old: Option<&mut KernelSigaction>,
) -> Ret {
    let new = new.map_or(0, |n| ptr::from_ref(n) as usize);
    let old = old.map_or(0, |o| ptr::from_mut(o) as usize);
    // SAFETY: both pointers are null or point to a kernel sigaction of the right size.
    unsafe { syscall6(nr::RT_SIGACTION, int(sig), new, old, 8, 0, 0) }
}

/// A kernel signal set: bit `n - 1` for signal `n`.
pub(crate) fn sigbit(sig: i32) -> u64 {
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
            nr::RT_SIGPROCMASK,
            SIG_SETMASK,
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
pub(crate) fn signalfd(mask: u64) -> Result<i32, i32> {
    // SAFETY: an 8-byte kernel set on our stack.
    unsafe {
        syscall6(
            nr::SIGNALFD4,
            int(-1),
            ptr::from_ref(&mask) as usize,
            8,
            SFD_NONBLOCK_CLOEXEC,
            0,
            0,
        )
    }
    .map(fd_of)
}
