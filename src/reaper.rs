//! The reaper: one background OS thread per process that tears groups down for callers that
//! must not block (the Drop and the `shutdown` of [`crate::tokio::SpawnedGroup`]).
//!
//! It is started lazily by the first hand-over and lives as long as the process. It drives
//! any number of teardowns at once, each with the same steps as the sync teardown
//! ([`SpawnedGroup::teardown_advance`]): one `ppoll` over the descriptors every teardown
//! waits on (the leaders' and the supervisors' pidfds) and a wake-up socket, with the nearest
//! deadline as its timeout. No polling loop: with nothing to do it sleeps in `ppoll` without
//! a timeout.
//!
//! It is an OS thread, not a task: a `#[tokio::test]` runtime is dropped when the test ends,
//! and its tasks with it, while a group dropped at the end of that test still has its grace
//! period to go. A group stays registered in the [`lifeline`](crate::lifeline) until the
//! reaper reaps it, so a process that exits (or dies of a signal) first still kills it.
//!
//! The reaper reaps only the leaders handed to it, each by its own pid, as teardown does:
//! never `waitpid(-1)`, so tokio's own child handling (its SIGCHLD driver, `tokio::process`)
//! keeps every status it waits for.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

use crate::deadline::time_left;
use crate::group::TeardownSteps;
use crate::{sys, SpawnedGroup, Teardown};

/// What to do with the outcome of a teardown, called on the reaper thread.
pub(crate) type OnDone = Box<dyn FnOnce(io::Result<Teardown>) + Send>;

struct Job {
    group: SpawnedGroup,
    steps: Option<TeardownSteps>,
    on_done: Option<OnDone>,
}

struct Reaper {
    queue: Mutex<Vec<Job>>,
    wake: UnixStream,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();
/// Held while a thread tries to start the reaper, so that two hand-overs never start two.
static STARTING: Mutex<()> = Mutex::new(());

/// Hands `group` to the reaper, which tears it down (SIGTERM, grace period, SIGKILL, reap)
/// and then calls `on_done` with the outcome. Returns at once: a lock taken for a push, and
/// one byte written to a socket.
///
/// If the reaper thread cannot be started (no thread or descriptor left), the teardown runs
/// here, blocking, as the sync type's would: better late than leaked. The next hand-over
/// tries to start it again.
pub(crate) fn hand_over(group: SpawnedGroup, on_done: OnDone) {
    let job = Job {
        group,
        steps: None,
        on_done: Some(on_done),
    };
    match reaper() {
        Some(reaper) => {
            reaper
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(job);
            // A full socket buffer already holds a wake-up: the byte is not needed.
            let _ = (&reaper.wake).write(&[1]);
        }
        None => run_here(job),
    }
}

/// The reaper, started now if it is not running yet; `None` if it cannot be started.
fn reaper() -> Option<&'static Reaper> {
    if let Some(reaper) = REAPER.get() {
        return Some(reaper);
    }
    let _starting = STARTING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(reaper) = REAPER.get() {
        return Some(reaper);
    }
    let reaper = start().ok()?;
    Some(REAPER.get_or_init(|| reaper))
}

fn run_here(mut job: Job) {
    let outcome = job.group.teardown();
    if let Some(on_done) = job.on_done.take() {
        on_done(outcome);
    }
}

fn start() -> io::Result<Reaper> {
    let (wake, wakened) = UnixStream::pair()?;
    wake.set_nonblocking(true)?;
    wakened.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("pgroup-reaper".into())
        .spawn(move || run(&wakened))?;
    Ok(Reaper {
        queue: Mutex::new(Vec::new()),
        wake,
    })
}

/// The reaper thread's loop; it never returns.
fn run(wakened: &UnixStream) {
    let mut jobs: Vec<Job> = Vec::new();
    loop {
        // Drain the wake-ups, then take what was handed over.
        let mut sink = [0_u8; 64];
        while matches!((&*wakened).read(&mut sink), Ok(n) if n > 0) {}
        if let Some(reaper) = REAPER.get() {
            jobs.append(&mut reaper.queue.lock().unwrap_or_else(PoisonError::into_inner));
        }
        // Every teardown as far as it goes without waiting.
        let mut index = 0;
        while index < jobs.len() {
            if let Some(outcome) = advance(&mut jobs[index]) {
                let mut job = jobs.swap_remove(index);
                if let Some(on_done) = job.on_done.take() {
                    on_done(outcome);
                }
                // Torn down (or given up on, unreaped): its Drop does nothing more.
                drop(job);
            } else {
                index += 1;
            }
        }
        // One wait over all of them.
        let mut watched: Vec<BorrowedFd<'_>> = vec![wakened.as_fd()];
        let mut counts = Vec::with_capacity(jobs.len());
        let mut deadline: Option<Instant> = None;
        for job in &jobs {
            let Some(steps) = &job.steps else {
                counts.push(0);
                continue;
            };
            let (fds, until) = job.group.teardown_watch(steps);
            counts.push(fds.len());
            watched.extend(fds);
            if let Some(until) = until {
                deadline = Some(deadline.map_or(until, |d| d.min(until)));
            }
        }
        let readable = match time_left(deadline) {
            Some(left) => {
                sys::poll_readable(&watched, left).unwrap_or_else(|_| vec![false; watched.len()])
            }
            None => vec![false; watched.len()],
        };
        drop(watched);
        let mut rest = readable.get(1..).unwrap_or_default();
        for (job, count) in jobs.iter_mut().zip(counts) {
            let (mine, others) = rest.split_at(count.min(rest.len()));
            if let Some(steps) = &mut job.steps {
                steps.mark_readable(mine);
            }
            rest = others;
        }
    }
}

/// One job's steps that need no wait; `Some` with the outcome once it is over.
fn advance(job: &mut Job) -> Option<io::Result<Teardown>> {
    let steps = match &mut job.steps {
        Some(steps) => steps,
        None => match job.group.teardown_begin() {
            Ok(steps) => job.steps.insert(steps),
            Err(e) => return Some(Err(e)),
        },
    };
    job.group.teardown_advance(steps).transpose()
}
