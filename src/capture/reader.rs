//! The reader thread of a group's captured pipes.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::tail::Tail;
use super::{Capture, Stream, PIPE_MAX, READ_CHUNK};
use crate::sys;

/// The thread that reads a group's captured pipes into its [`Capture`].
pub(crate) struct Reader {
    capture: Arc<Capture>,
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    /// Starts the reader on the pipes given (made non-blocking here). `leader` is a pidfd on
    /// the leader, whose readiness marks its exit.
    pub(crate) fn start(
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
        leader: Option<Arc<crate::sys::Pidfd>>,
        name: String,
    ) -> io::Result<Reader> {
        let capture = Arc::new(Capture::default());
        {
            let mut state = capture.lock();
            if stdout.is_some() {
                state.stdout = Tail::captured();
            }
            if stderr.is_some() {
                state.stderr = Tail::captured();
            }
        }
        for fd in stdout.iter().chain(stderr.iter()) {
            sys::set_nonblocking(fd.as_fd())?;
        }
        let (stop_read, stop_write) = sys::pipe()?;
        let shared = Arc::clone(&capture);
        let pipes = [stdout.map(File::from), stderr.map(File::from)];
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || read_loop(&shared, pipes, leader, &stop_read))?;
        Ok(Reader {
            capture,
            stop: Some(stop_write),
            thread: Some(thread),
        })
    }

    pub(crate) fn capture(&self) -> &Capture {
        &self.capture
    }

    /// Waits until every captured stream reaches end of file or `deadline` passes, then
    /// stops the thread (which reads what the pipes hold first, up to [`PIPE_MAX`]) and
    /// joins it. Idempotent.
    pub(crate) fn finish(&mut self, deadline: Instant) {
        if self.thread.is_none() {
            return;
        }
        drop(self.capture.lock_when(Some(deadline), Capture::all_ended));
        // Closing the write end wakes the thread.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.finish(Instant::now());
    }
}

const STREAMS: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

/// The reader thread: polls the pipes, the leader's pidfd and the stop pipe.
fn read_loop(
    capture: &Capture,
    mut pipes: [Option<File>; 2],
    mut leader: Option<Arc<crate::sys::Pidfd>>,
    stop: &OwnedFd,
) {
    let mut buf = vec![0_u8; READ_CHUNK];
    loop {
        let mut fds = vec![stop.as_fd()];
        fds.extend(pipes.iter().flatten().map(AsFd::as_fd));
        if let Some(leader) = &leader {
            fds.push(leader.as_fd());
        }
        let Ok(ready) = sys::poll_readable(&fds, None) else {
            break;
        };
        let stopping = ready[0];
        let leader_exited = leader.is_some() && ready.last() == Some(&true);
        let mut readable = ready[1..].iter();
        for (pipe, stream) in pipes.iter_mut().zip(STREAMS) {
            if pipe.is_some() && readable.next() == Some(&true) {
                read_into(capture, pipe, stream, &mut buf, READ_CHUNK);
            }
        }
        if leader_exited || stopping {
            // Everything the leader wrote before it exited is in the pipes now (or was read
            // already); a pipe holds at most PIPE_MAX bytes, so reading that much more is
            // enough, and a process that goes on writing cannot keep the thread here.
            for (pipe, stream) in pipes.iter_mut().zip(STREAMS) {
                read_into(capture, pipe, stream, &mut buf, PIPE_MAX);
            }
        }
        if leader_exited {
            leader = None;
            let mut state = capture.lock();
            state.leader_exited = true;
            capture.notify(state);
        }
        if stopping || pipes.iter().all(Option::is_none) {
            break;
        }
    }
    let mut state = capture.lock();
    for stream in STREAMS {
        let tail = state.tail_mut(stream);
        if tail.captured {
            tail.ended = true;
        }
    }
    capture.notify(state);
}

/// Reads from `pipe` into the tail of `stream`, a chunk at a time (the lock is held for one
/// chunk's copy), as [`read_pipe`]; a pipe closed there ends the tail.
fn read_into(
    capture: &Capture,
    pipe: &mut Option<File>,
    stream: Stream,
    buf: &mut [u8],
    budget: usize,
) {
    read_pipe(pipe, buf, budget, |chunk| {
        let mut state = capture.lock();
        let tail = state.tail_mut(stream);
        match chunk {
            Some(chunk) => tail.push(chunk),
            None => tail.ended = true,
        }
        capture.notify(state);
    });
}

/// Reads from a non-blocking `pipe` into `buf`, handing each chunk to `sink`, until the pipe
/// is empty or `budget` bytes were read; at end of file, or when reading fails, the pipe is
/// closed (set to `None`) and `sink` gets `None`.
pub(crate) fn read_pipe(
    pipe: &mut Option<File>,
    buf: &mut [u8],
    budget: usize,
    mut sink: impl FnMut(Option<&[u8]>),
) {
    let mut read = 0;
    while let Some(file) = pipe {
        if read >= budget {
            return;
        }
        match file.read(buf) {
            Ok(n) if n > 0 => {
                read += n;
                sink(Some(&buf[..n]));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            // End of file, or a pipe that cannot be read.
            _ => {
                *pipe = None;
                sink(None);
            }
        }
    }
}
