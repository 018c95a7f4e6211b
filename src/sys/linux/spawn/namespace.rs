//! A new PID namespace for the `Namespace` tier: the user namespace's id maps, private
//! mounts, and a `/proc` of the namespace's own. Raw calls and libc's `mount` only: this
//! runs in the spawner and in a forked copy of the test binary.

use std::ptr;

use nix::libc;

use super::report::Step;
use crate::sys::supervisor::raw;
use crate::sys::supervisor::run::write_decimal;

/// The caller's ids, for a user namespace's maps (`None` as root: no user namespace).
#[derive(Clone, Copy)]
pub(super) struct Ids {
    pub(super) user: Option<(u32, u32)>,
}

impl Ids {
    /// The caller's: a user namespace's maps for a caller that is not root.
    pub(super) fn of_caller() -> Ids {
        // SAFETY: geteuid and getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Ids {
            user: (uid != 0).then_some((uid, gid)),
        }
    }

    /// The namespaces to make: PID and mount, and user for a caller that is not root.
    pub(super) fn clone_flags(self) -> libc::c_int {
        let flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS;
        if self.user.is_some() {
            flags | libc::CLONE_NEWUSER
        } else {
            flags
        }
    }
}

/// Just inside new namespaces (see [`Ids::clone_flags`]): the user namespace's id maps (root
/// inside is the caller outside), and mounts made private so that a new /proc stays inside.
pub(super) fn set_up(ids: Ids) -> Result<(), (Step, i32)> {
    if let Some((uid, gid)) = ids.user {
        let mut line = [0_u8; 32];
        write_file(b"/proc/self/setgroups\0", b"deny").map_err(|e| (Step::Namespace, e))?;
        let len = id_map_line(&mut line, uid);
        write_file(b"/proc/self/uid_map\0", &line[..len]).map_err(|e| (Step::Namespace, e))?;
        let len = id_map_line(&mut line, gid);
        write_file(b"/proc/self/gid_map\0", &line[..len]).map_err(|e| (Step::Namespace, e))?;
    }
    let root = b"/\0";
    // SAFETY: mount(2) with a static NUL-terminated string.
    let rc = unsafe {
        libc::mount(
            ptr::null(),
            root.as_ptr().cast(),
            ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            ptr::null(),
        )
    };
    if rc != 0 {
        return Err((Step::MountProc, nix::errno::Errno::last_raw()));
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

/// A `/proc` of the PID namespace's own (by PID 1 of it, or a process inside it).
pub(super) fn mount_proc() -> Result<(), i32> {
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
