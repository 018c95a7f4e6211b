//! What the spawner reports to the test binary, and how the test binary reads it.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

use crate::sys::supervisor::protocol::{
    value_of, CMD_TEARDOWN, TAG_SETUP_FAILED, TAG_SPAWNED, TAG_SPAWN_FAILED,
};
use crate::sys::supervisor::raw;

/// What went wrong in the spawner, for [`TAG_SETUP_FAILED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Step {
    ProcessGroup = 1,
    Subreaper,
    Signals,
    ParentDied,
    Namespace,
    MountProc,
    Pidfd,
    Report,
    Exec,
}

impl Step {
    pub(super) fn from_byte(byte: u8) -> Option<Step> {
        [
            Step::ProcessGroup,
            Step::Subreaper,
            Step::Signals,
            Step::ParentDied,
            Step::Namespace,
            Step::MountProc,
            Step::Pidfd,
            Step::Report,
            Step::Exec,
        ]
        .into_iter()
        .find(|s| *s as u8 == byte)
    }

    pub(super) fn describe(self) -> &'static str {
        match self {
            Step::ProcessGroup => "cannot leave the test binary's process group (setpgid)",
            Step::Subreaper => "cannot become a child subreaper (prctl)",
            Step::Signals => "cannot set its signal dispositions (sigaction, prctl)",
            Step::ParentDied => "the test binary died while it spawned",
            Step::Namespace => "cannot set up the user namespace's id maps",
            Step::MountProc => "cannot mount /proc in the new PID namespace",
            Step::Pidfd => "cannot open a pidfd on the leader",
            Step::Report => "cannot send the leader's descriptors to the test binary",
            Step::Exec => "cannot execute the supervisor program",
        }
    }
}

/// Ends a supervisor (or spawner) whose start failed: if it still runs, it is told to kill
/// and reap everything (the leader is its child), and it is reaped whenever it exits.
pub(super) fn abandon(channel: &OwnedFd, supervisor: u32) {
    let _ = crate::sys::write_byte(channel.as_fd(), CMD_TEARDOWN);
    let _ = crate::sys::reap_now_or_later(supervisor, channel.as_fd(), None);
}

/// What the spawner reported.
pub(super) struct Report {
    pub(super) pid: i32,
    pub(super) pidfd: OwnedFd,
    pub(super) stdin: Option<OwnedFd>,
    pub(super) stdout: Option<OwnedFd>,
    pub(super) stderr: Option<OwnedFd>,
}

/// The spawner's report ([`read_report`]), and the leader's pid as the test binary sees
/// it; where the report fails, the supervisor is abandoned.
pub(super) fn read_started(
    channel: &OwnedFd,
    supervisor: u32,
    namespace: bool,
) -> io::Result<(Report, u32)> {
    let report = match read_report(channel, i32::try_from(supervisor).unwrap_or(-1)) {
        Ok(report) => report,
        Err(e) => {
            abandon(channel, supervisor);
            return Err(e);
        }
    };
    let leader = if namespace {
        outer_pid(&report.pidfd)?
    } else {
        u32::try_from(report.pid).map_err(|_| io::Error::other("negative leader pid"))?
    };
    Ok((report, leader))
}

/// Reads the spawner's records: [`TAG_SPAWNED`] with its descriptors, then, if it exited
/// because the exec of the supervisor failed, [`TAG_SETUP_FAILED`]; or a failure alone.
/// The records are there when the spawner has exec'd or exited, which the kernel waited
/// for; where the spawner is a copy (valgrind), this waits for the first while it lives.
/// Records after [`TAG_SPAWNED`] from a spawner that became the supervisor are the
/// supervisor's: they stay in the socket.
pub(super) fn read_report(channel: &OwnedFd, spawner: i32) -> io::Result<Report> {
    let mut spawned: Option<Report> = None;
    loop {
        if spawned.is_some() && !crate::sys::has_exited(spawner) {
            return spawned.ok_or_else(|| io::Error::other("no report"));
        }
        match recv_record(channel)? {
            Some((record, fds)) => {
                let tag = record.first().copied();
                let value = value_of(&record);
                match tag {
                    Some(TAG_SPAWNED) => {
                        let mask = record.get(5).copied().unwrap_or(0);
                        let mut fds = fds.into_iter();
                        let pidfd = fds
                            .next()
                            .ok_or_else(|| io::Error::other("the spawner sent no pidfd"))?;
                        let mut next = |bit: u8| {
                            if mask & bit != 0 {
                                fds.next()
                            } else {
                                None
                            }
                        };
                        spawned = Some(Report {
                            pid: value,
                            pidfd,
                            stdin: next(1),
                            stdout: next(2),
                            stderr: next(4),
                        });
                    }
                    Some(TAG_SPAWN_FAILED) => return Err(decode_spawn_error(&record, value)),
                    Some(TAG_SETUP_FAILED) => {
                        let step = record.get(5).copied().and_then(Step::from_byte);
                        let e = io::Error::from_raw_os_error(value);
                        return Err(io::Error::new(
                            e.kind(),
                            format!(
                                "the supervisor's start failed: {}: {e}",
                                step.map_or("unknown step", Step::describe)
                            ),
                        ));
                    }
                    _ => return Err(io::Error::other("unexpected record from the spawner")),
                }
            }
            None => {
                if let Some(report) = spawned {
                    return Ok(report);
                }
                // Nothing, and nothing more can come while it is alive but has not written
                // yet (a copy under valgrind): wait while it lives.
                if crate::sys::has_exited(spawner) {
                    // Its last words may have arrived after the look above.
                    if let Some((record, _)) = recv_record(channel)? {
                        if record.first() == Some(&TAG_SPAWN_FAILED) {
                            let value = value_of(&record);
                            return Err(decode_spawn_error(&record, value));
                        }
                    }
                    return Err(io::Error::other(
                        "the supervisor's spawner died before it reported",
                    ));
                }
                crate::sys::poll_readable(&[channel.as_fd()], Some(Duration::from_millis(100)))?;
            }
        }
    }
}

/// One record and its descriptors; `None` when none is waiting.
pub(super) fn recv_record(channel: &OwnedFd) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut data = [0_u8; 512];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(raw::msg::MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = loop {
        match rustix::net::recvmsg(
            channel,
            &mut [io::IoSliceMut::new(&mut data)],
            &mut control,
            RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(received) => break received,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    };
    if received.bytes == 0 {
        return Ok(None);
    }
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    let fds = fds
        .into_iter()
        .map(crate::sys::above_stdio)
        .collect::<io::Result<Vec<_>>>()?;
    Ok(Some((data[..received.bytes.min(data.len())].to_vec(), fds)))
}

/// The kinds of error a spawn reports, by the byte the spawner sends.
pub(super) const KINDS: [io::ErrorKind; 8] = [
    io::ErrorKind::Other,
    io::ErrorKind::NotFound,
    io::ErrorKind::PermissionDenied,
    io::ErrorKind::InvalidInput,
    io::ErrorKind::InvalidData,
    io::ErrorKind::Unsupported,
    io::ErrorKind::OutOfMemory,
    io::ErrorKind::Interrupted,
];

pub(super) fn decode_spawn_error(record: &[u8], errno: i32) -> io::Error {
    if errno != 0 {
        return io::Error::from_raw_os_error(errno);
    }
    let kind = record
        .get(5)
        .and_then(|k| KINDS.get(usize::from(*k)))
        .copied()
        .unwrap_or(io::ErrorKind::Other);
    let message = String::from_utf8_lossy(record.get(6..).unwrap_or(&[])).into_owned();
    io::Error::new(kind, message)
}

/// The pid, in the test binary's PID namespace, of the process behind `pidfd` (its
/// `fdinfo`'s `Pid:` line, which the kernel writes in the reader's namespace).
pub(super) fn outer_pid(pidfd: &OwnedFd) -> io::Result<u32> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|pid| *pid > 0)
        .ok_or_else(|| io::Error::other("cannot read the leader's pid from its pidfd"))
}

/// Sends a [`TAG_SETUP_FAILED`] record (raw calls only).
pub(super) fn setup_failed(channel: RawFd, step: Step, errno: i32) {
    let e = errno.to_le_bytes();
    let record = [TAG_SETUP_FAILED, e[0], e[1], e[2], e[3], step as u8];
    let _ = raw::send_with_fds(channel, &record, &[]);
}

/// Sends std's spawn error as a [`TAG_SPAWN_FAILED`] record.
pub(super) fn send_spawn_error(channel: RawFd, e: &io::Error) {
    let errno = e.raw_os_error().unwrap_or(0).to_le_bytes();
    let kind = KINDS
        .iter()
        .position(|k| *k == e.kind())
        .and_then(|k| u8::try_from(k).ok())
        .unwrap_or(0);
    let mut record = Vec::with_capacity(256);
    record.push(TAG_SPAWN_FAILED);
    record.extend_from_slice(&errno);
    record.push(kind);
    if e.raw_os_error().is_none() {
        let text = e.to_string();
        let mut end = text.len().min(400);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        record.extend_from_slice(&text.as_bytes()[..end]);
    }
    let _ = raw::send_with_fds(channel, &record, &[]);
}
