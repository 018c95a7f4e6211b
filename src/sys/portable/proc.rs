//! The portable backend's per-platform readers of the process table (see the backend's
//! documentation): the only code of this backend that CI does not run on macOS and FreeBSD.

use std::io;

use nix::errno::Errno;
#[cfg(not(target_os = "linux"))]
use nix::libc;

use super::super::{AncestorInfo, Unreadable};

/// The portable backend's reader for the guard's ancestor rule: the platform's
/// [`proc_info`]. No ancestor counts as a session leader here (the readers do not give the
/// session), so each one's group is asked afresh on every call.
pub(crate) fn read_ancestor(pid: i32) -> Result<AncestorInfo, Unreadable> {
    let info = proc_info(pid).map_err(|e| Unreadable {
        what: "an ancestor",
        errno: e as i32,
    })?;
    Ok(AncestorInfo {
        ppid: info.ppid,
        pgid: info.pgid,
        session_leader: false,
    })
}

/// What the per-platform reader tells about a process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcInfo {
    pub ppid: i32,
    pub pgid: i32,
    pub zombie: bool,
    /// When it started, in the platform's unit (ticks since boot, or microseconds since
    /// the epoch): with the pid, it names one process.
    #[cfg_attr(target_os = "linux", allow(dead_code))] // Linux uses the /proc directory
    pub start: u64,
}

/// A process's parent, group and state, from `/proc/<pid>/stat` (Linux under
/// `pgroup_portable`, as the Linux backend reads it). `ESRCH` when it does not exist.
#[cfg(target_os = "linux")]
pub(crate) fn proc_info(pid: i32) -> Result<ProcInfo, Errno> {
    let stat = procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .map_err(super::super::proc_errno)?;
    Ok(ProcInfo {
        ppid: stat.ppid,
        pgid: stat.pgrp,
        zombie: stat.state == 'Z',
        start: stat.starttime,
    })
}

/// A process's parent, group and state: `proc_pidinfo(PROC_PIDTBSDINFO)` (macOS; not run by
/// CI). `ESRCH` when it does not exist.
#[cfg(target_os = "macos")]
pub(crate) fn proc_info(pid: i32) -> Result<ProcInfo, Errno> {
    // SAFETY: an all-zero proc_bsdinfo is a valid value (integers and byte arrays).
    let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
    let size = libc::c_int::try_from(std::mem::size_of::<libc::proc_bsdinfo>())
        .map_err(|_| Errno::EINVAL)?;
    // SAFETY: proc_pidinfo writes at most `size` bytes into `info`, which is that large and
    // lives on our stack for the call.
    let written = unsafe {
        libc::proc_pidinfo(
            pid,
            libc::PROC_PIDTBSDINFO,
            0,
            std::ptr::addr_of_mut!(info).cast(),
            size,
        )
    };
    if written != size {
        let errno = Errno::last();
        return Err(if written <= 0 && errno != Errno::UnknownErrno {
            errno
        } else {
            Errno::ESRCH
        });
    }
    Ok(ProcInfo {
        ppid: i32::try_from(info.pbi_ppid).map_err(|_| Errno::EINVAL)?,
        pgid: i32::try_from(info.pbi_pgid).map_err(|_| Errno::EINVAL)?,
        zombie: info.pbi_status == libc::SZOMB,
        start: info
            .pbi_start_tvsec
            .saturating_mul(1_000_000)
            .saturating_add(info.pbi_start_tvusec),
    })
}

/// A process's parent, group and state: `sysctl(KERN_PROC_PID)` (FreeBSD; not run by CI).
/// `ESRCH` when it does not exist.
#[cfg(target_os = "freebsd")]
pub(crate) fn proc_info(pid: i32) -> Result<ProcInfo, Errno> {
    let procs = kinfo_procs(libc::KERN_PROC_PID, pid)?;
    let info = procs.first().ok_or(Errno::ESRCH)?;
    Ok(ProcInfo {
        ppid: info.ki_ppid,
        pgid: info.ki_pgid,
        zombie: info.ki_stat == libc::SZOMB,
        start: u64::try_from(info.ki_start.tv_sec)
            .unwrap_or(0)
            .saturating_mul(1_000_000)
            .saturating_add(u64::try_from(info.ki_start.tv_usec).unwrap_or(0)),
    })
}

/// `sysctl(CTL_KERN, KERN_PROC, what, arg)`: the `kinfo_proc` records it returns.
#[cfg(target_os = "freebsd")]
fn kinfo_procs(what: libc::c_int, arg: i32) -> Result<Vec<libc::kinfo_proc>, Errno> {
    let mib = [libc::CTL_KERN, libc::KERN_PROC, what, arg];
    let record = std::mem::size_of::<libc::kinfo_proc>();
    // Room for a group of this many members; a larger group is a failure (EINVAL below).
    let mut procs: Vec<libc::kinfo_proc> =
        Vec::with_capacity(if what == libc::KERN_PROC_PID { 1 } else { 4096 });
    let mut len: libc::size_t = procs.capacity() * record;
    // SAFETY: sysctl(3) writes at most `len` bytes into the vector's spare capacity, which is
    // that large, and sets `len` to what it wrote; `mib` lives for the call.
    let ret = unsafe {
        libc::sysctl(
            mib.as_ptr(),
            4,
            procs.as_mut_ptr().cast(),
            &mut len,
            std::ptr::null(),
            0,
        )
    };
    if ret != 0 {
        return Err(Errno::last());
    }
    if len % record != 0 {
        return Err(Errno::EINVAL);
    }
    // SAFETY: the kernel wrote `len / record` whole records into the spare capacity.
    unsafe { procs.set_len(len / record) };
    Ok(procs)
}

/// The pids in process group `pgid`, by the per-platform reader.
#[cfg(target_os = "linux")]
pub(crate) fn group_members(pgid: i32) -> io::Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if crate::sys::getpgid(pid) == Ok(pgid) {
            found.extend(u32::try_from(pid).ok());
        }
    }
    Ok(found)
}

/// The pids in process group `pgid`: `proc_listpgrppids` (macOS; not run by CI).
#[cfg(target_os = "macos")]
pub(crate) fn group_members(pgid: i32) -> io::Result<Vec<u32>> {
    let mut pids: Vec<libc::pid_t> = vec![0; 4096];
    let size = libc::c_int::try_from(pids.len() * std::mem::size_of::<libc::pid_t>())
        .map_err(|_| io::Error::from(Errno::EINVAL))?;
    // SAFETY: proc_listpgrppids writes at most `size` bytes of pids into the vector, which
    // is that large, and returns how many it wrote.
    let count = unsafe { libc::proc_listpgrppids(pgid, pids.as_mut_ptr().cast(), size) };
    let count = usize::try_from(count).map_err(|_| io::Error::last_os_error())?;
    pids.truncate(count);
    Ok(pids
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .filter(|&p| p != 0)
        .collect())
}

/// The pids in process group `pgid`: `sysctl(KERN_PROC_PGRP)` (FreeBSD; not run by CI).
#[cfg(target_os = "freebsd")]
pub(crate) fn group_members(pgid: i32) -> io::Result<Vec<u32>> {
    Ok(kinfo_procs(libc::KERN_PROC_PGRP, pgid)?
        .iter()
        .filter_map(|p| u32::try_from(p.ki_pid).ok())
        .collect())
}

/// Calls `visit` on each member of group `pgid` other than its `leader` (the platform's
/// [`group_members`]), until `visit` returns `false`.
pub(crate) fn each_possible_member(
    pgid: i32,
    leader: u32,
    mut visit: impl FnMut(u32) -> bool,
) -> io::Result<()> {
    for pid in group_members(pgid)? {
        if pid != leader && !visit(pid) {
            break;
        }
    }
    Ok(())
}
