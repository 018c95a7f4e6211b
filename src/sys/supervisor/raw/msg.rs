//! Passing descriptors over a socket (`sendmsg` with `SCM_RIGHTS`): the spawner's report of
//! the leader's pidfd and pipes.

use core::ptr;

use super::{int, nr, syscall6, Ret, MSG_DONTWAIT, MSG_NOSIGNAL, SCM_RIGHTS, SOL_SOCKET};

/// `struct iovec`.
#[repr(C)]
struct IoVec {
    base: *const u8,
    len: usize,
}

/// `struct msghdr`.
#[repr(C)]
struct MsgHdr {
    name: *const u8,
    namelen: u32,
    iov: *const IoVec,
    iovlen: usize,
    control: *const u8,
    controllen: usize,
    flags: i32,
}

/// The most descriptors one [`send_with_fds`] passes.
pub(crate) const MAX_FDS: usize = 4;

/// A control message of `SCM_RIGHTS` with room for [`MAX_FDS`] descriptors: `struct
/// cmsghdr` (a `usize` length, then level and type), then the descriptors.
#[repr(C, align(8))]
struct Rights {
    len: usize,
    level: i32,
    kind: i32,
    fds: [i32; MAX_FDS],
}

/// Sends `data` as one record on the socket `fd`, with `fds` (at most [`MAX_FDS`]) passed
/// along, without blocking and without SIGPIPE.
pub(crate) fn send_with_fds(fd: i32, data: &[u8], fds: &[i32]) -> Ret {
    let count = fds.len().min(MAX_FDS);
    let mut rights = Rights {
        len: 16 + 4 * count,
        level: SOL_SOCKET,
        kind: SCM_RIGHTS,
        fds: [-1; MAX_FDS],
    };
    for (slot, fd) in rights.fds.iter_mut().zip(fds) {
        *slot = *fd;
    }
    let iov = IoVec {
        base: data.as_ptr(),
        len: data.len(),
    };
    let msg = MsgHdr {
        name: ptr::null(),
        namelen: 0,
        iov: ptr::from_ref(&iov),
        iovlen: 1,
        control: if count == 0 {
            ptr::null()
        } else {
            ptr::from_ref(&rights).cast()
        },
        // CMSG_SPACE: the header and the descriptors, rounded up to 8 bytes.
        controllen: if count == 0 {
            0
        } else {
            (16 + 4 * count).next_multiple_of(8)
        },
        flags: 0,
    };
    // SAFETY: every pointer in `msg` points to data on this stack frame that outlives the
    // call, with the lengths given; the kernel only reads it.
    unsafe {
        syscall6(
            nr::SENDMSG,
            int(fd),
            ptr::from_ref(&msg) as usize,
            MSG_DONTWAIT | MSG_NOSIGNAL,
            0,
            0,
            0,
        )
    }
}
