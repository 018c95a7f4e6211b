//! The lifeline's kernel-facing half: the registry of live groups, the signal handler and
//! the `atexit` hook. See [`crate::lifeline`] for what it promises.
//!
//! # What may run where
//!
//! [`on_signal`] runs inside a signal handler, on whatever thread the kernel picked, possibly
//! while that thread holds the allocator's lock or is in the middle of a teardown;
//! [`at_exit`] runs inside `exit(3)` while other threads still run. Both touch only:
//!
//! - the registry: fixed blocks of `AtomicU64` slots, linked through `AtomicPtr`s, never
//!   freed once linked, so a reader can walk them without a lock;
//! - async-signal-safe syscalls (`getpid`, `getpgrp`, `kill`, `pidfd_send_signal`,
//!   `sigaction`, `pthread_sigmask`, `raise`, `sched_yield`, `clock_gettime`) on stack
//!   data;
//! - the count of spawns in flight ([`SpawnWindow`]).
//!
//! No allocation, no lock, no `tracing`, no panic (every conversion has a fallback).
//! `tests/lifeline.rs` runs the whole path under an allocator that aborts on any allocation
//! made while the handler runs.
//!
//! # Pinning
//!
//! A slot holds a group's id (and, for a leader that is our own child, its pidfd) from the
//! moment the group is pinned until just before its leader is reaped. Whoever signals from a
//! slot first *claims* it (sets [`CLAIMED`] with a compare-and-swap), signals, and restores it;
//! dropping the [`Slot`], which teardown does before the reap, waits while the slot is claimed.
//! So the handler can never signal an id whose leader has been reaped, whatever thread runs
//! teardown at the same moment. A handler running *on* the thread that is dropping the slot
//! interrupts it, finishes its work, and then lets it go on, so nothing deadlocks.

use std::cell::Cell;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::ptr;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst,
};
use std::time::Duration;

use nix::errno::Errno;
use nix::libc::{self, c_int};

use crate::Pgid;

/// The signals the lifeline handles: those whose default action ends the process and that a
/// terminal, a test runner or `abort()` sends.
pub(crate) const SIGNALS: [c_int; 5] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGABRT,
];

/// A slot's "someone is signalling from me" bit.
const CLAIMED: u64 = 1 << 63;

/// How often the handler yields while another thread holds a slot it wants, before it gives
/// that slot up (the other thread is signalling that very group).
const CLAIM_SPINS: u32 = 10_000;

const BLOCK_LEN: usize = 128;

struct Block {
    slots: [AtomicU64; BLOCK_LEN],
    next: AtomicPtr<Block>,
}

impl Block {
    const fn new() -> Block {
        Block {
            slots: [const { AtomicU64::new(0) }; BLOCK_LEN],
            next: AtomicPtr::new(ptr::null_mut()),
        }
    }

    fn next(&self) -> Option<&'static Block> {
        let next = self.next.load(SeqCst);
        // SAFETY: `next` is null or was made by `Box::into_raw` in `register` and linked
        // with a compare-and-swap; linked blocks are never freed, so the reference is valid
        // for the rest of the process.
        unsafe { next.as_ref() }
    }
}

static FIRST: Block = Block::new();
/// The pid of the process that installed the lifeline: a process forked from it (without
/// exec) inherits the registry and the handlers, but its groups are not its own.
static OWNER: AtomicI32 = AtomicI32::new(0);
static ENABLED: AtomicBool = AtomicBool::new(true);
/// Spawns between the fork and the registration of their group (see [`SpawnWindow`]).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Set by the handler and the `atexit` hook before they wait for the spawns in flight: no
/// new spawn starts after that, so none can slip in between the wait and the kill.
static DYING: AtomicBool = AtomicBool::new(false);

/// How long the handler and the `atexit` hook wait for spawns in flight to register their
/// group before they kill what is registered.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(1);

thread_local! {
    /// Whether this thread is inside a [`SpawnWindow`]. Const-initialised and without a
    /// destructor, so reading it allocates nothing and registers nothing, also in a handler.
    static IN_WINDOW: Cell<bool> = const { Cell::new(false) };
    /// A fatal signal that arrived on this thread inside its window, to act on when the
    /// window closes; 0 for none.
    static DEFERRED: Cell<c_int> = const { Cell::new(0) };
}

/// The stretch of a spawn between the fork and the registration of the new group, when a
/// child exists that the registry does not know yet. A handler running on *another* thread
/// waits for every open window to close (bounded by [`IN_FLIGHT_WAIT`]) before it kills the
/// registered groups, so the new group is killed too. A handler that interrupts the spawning
/// thread itself cannot wait for it (the spawn resumes only after the handler returns), so
/// it notes the signal and returns; when the window closes, a few hundred microseconds
/// later, the new group is registered and the noted signal is acted on: every group is
/// killed and the process dies of that signal. (Blocking the signals on the spawning thread
/// instead would leak the block into the spawned program, which inherits the thread's
/// signal mask.)
pub(crate) struct SpawnWindow(());

impl SpawnWindow {
    /// Opens the window; `None` when the process is dying (a handler or `exit` has begun to
    /// kill the groups), and then nothing may be spawned.
    pub(crate) fn open() -> Option<SpawnWindow> {
        IN_WINDOW.with(|w| w.set(true));
        IN_FLIGHT.fetch_add(1, SeqCst);
        let window = SpawnWindow(());
        // After the increment: a handler that set DYING before this load waits for this
        // window to close; one that sets it after sees the increment.
        if DYING.load(SeqCst) {
            return None;
        }
        Some(window)
    }
}

impl Drop for SpawnWindow {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, SeqCst);
        IN_WINDOW.with(|w| w.set(false));
        let sig = DEFERRED.with(|d| d.replace(0));
        if sig != 0 {
            if is_owner() && enabled() {
                wait_for_spawns_in_flight();
                kill_all();
            }
            die_of(sig);
            DYING.store(false, SeqCst);
        }
    }
}

/// CLOCK_MONOTONIC, async-signal-safe (clock_gettime(2) is on POSIX's list).
fn monotonic() -> Duration {
    // SAFETY: clock_gettime writes one timespec on our stack.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts
    };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
    Duration::new(secs, nanos)
}

/// Waits, bounded, until no spawn on another thread is between its fork and its
/// registration.
fn wait_for_spawns_in_flight() {
    let own = usize::from(IN_WINDOW.try_with(Cell::get).unwrap_or(false));
    let deadline = monotonic() + IN_FLIGHT_WAIT;
    while IN_FLIGHT.load(SeqCst) > own && monotonic() < deadline {
        // SAFETY: sched_yield(2) takes no arguments.
        unsafe {
            libc::sched_yield();
        }
    }
}

fn encode(pgid: Pgid, pidfd: Option<RawFd>) -> u64 {
    let group = u32::try_from(pgid.as_raw()).map_or(0, u64::from);
    let fd = pidfd
        .and_then(|fd| u32::try_from(fd).ok())
        .map_or(0, |fd| u64::from(fd) + 1);
    ((fd << 32) & !CLAIMED) | group
}

fn decode(value: u64) -> (i32, Option<RawFd>) {
    let group = i32::try_from(value & 0xffff_ffff).unwrap_or(0);
    let fd = (value & !CLAIMED) >> 32;
    let fd = fd.checked_sub(1).and_then(|fd| RawFd::try_from(fd).ok());
    (group, fd)
}

/// A group's place in the registry, from [`register`] until it is dropped.
#[derive(Debug)]
pub(crate) struct Slot(&'static AtomicU64);

impl Drop for Slot {
    /// Takes the group out of the registry, waiting while a handler on another thread is
    /// signalling it. Teardown drops the slot right before it reaps the leader. (Only the
    /// drop releases: the slot may be handed to another group at once.)
    fn drop(&mut self) {
        loop {
            let current = self.0.load(SeqCst);
            if current & CLAIMED != 0 {
                std::thread::yield_now();
                continue;
            }
            if self.0.compare_exchange(current, 0, SeqCst, SeqCst).is_ok() {
                return;
            }
        }
    }
}

/// Puts a pinned group in the registry. `pidfd`, if given, must stay open until the slot is
/// released.
///
/// The portable backend keeps no descriptor in the slot (its exit notifications are no
/// pidfds): its handler pins the group by the leader's pid, which is the group's id.
pub(crate) fn register(pgid: Pgid, pidfd: Option<BorrowedFd<'_>>) -> Slot {
    let pidfd = pidfd.filter(|_| super::REGISTERS_PIDFDS);
    let value = encode(pgid, pidfd.map(|fd| fd.as_raw_fd()));
    let mut block: &'static Block = &FIRST;
    loop {
        for slot in &block.slots {
            if slot.load(SeqCst) == 0 && slot.compare_exchange(0, value, SeqCst, SeqCst).is_ok() {
                return Slot(slot);
            }
        }
        if let Some(next) = block.next() {
            block = next;
            continue;
        }
        let fresh = Box::into_raw(Box::new(Block::new()));
        match block
            .next
            .compare_exchange(ptr::null_mut(), fresh, SeqCst, SeqCst)
        {
            Ok(_) => {}
            Err(_) => {
                // SAFETY: `fresh` came from `Box::into_raw` just above and was never linked,
                // so nothing else can see it: this is its only owner.
                drop(unsafe { Box::from_raw(fresh) });
            }
        }
    }
}

/// Whether the lifeline acts (set once at install from `PGROUP_LIFELINE`, and by
/// `lifeline::disable`).
pub(crate) fn enabled() -> bool {
    ENABLED.load(SeqCst)
}

pub(crate) fn set_enabled(on: bool) {
    ENABLED.store(on, SeqCst);
}

/// How many groups are registered now (for the docs' examples and the tests).
pub(crate) fn registered() -> usize {
    let mut count = 0;
    let mut block = Some(&FIRST);
    while let Some(b) = block {
        count += b.slots.iter().filter(|s| s.load(SeqCst) != 0).count();
        block = b.next();
    }
    count
}

/// What `install` did with one signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// The signal had its default action; the lifeline's handler now runs first.
    Handled,
    /// Something else had already claimed the signal (a handler, or `SIG_IGN`): left to it.
    LeftAlone,
    /// This process is PID 1 of its namespace, where the kernel ignores these signals by
    /// default: a handler would change that, so none is installed.
    Pid1,
}

/// Installs the handlers and the `atexit` hook. Called once per process (the caller holds a
/// `Once`), never from a handler.
pub(crate) fn install() -> [Disposition; SIGNALS.len()] {
    // SAFETY: getpid(2) cannot fail and touches no memory.
    let me = unsafe { libc::getpid() };
    OWNER.store(me, SeqCst);
    let mut result = [Disposition::LeftAlone; SIGNALS.len()];
    if me == 1 {
        result = [Disposition::Pid1; SIGNALS.len()];
    } else {
        for (sig, outcome) in SIGNALS.iter().zip(result.iter_mut()) {
            *outcome = install_one(*sig);
        }
    }
    // SAFETY: `at_exit` is an `extern "C" fn()` that lives for the whole program; atexit(3)
    // only records the pointer. It fails only when out of memory, and then the exit path is
    // simply not covered.
    unsafe {
        libc::atexit(at_exit);
    }
    result
}

/// The mask the handler runs with: every lifeline signal, so that two of them never nest on
/// one thread.
fn lifeline_mask() -> libc::sigset_t {
    // SAFETY: sigemptyset and sigaddset initialise and change a sigset_t on our stack; the
    // zeroed value is a valid starting point that sigemptyset overwrites.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

fn handler_address() -> libc::sighandler_t {
    on_signal as extern "C" fn(c_int) as libc::sighandler_t
}

fn install_one(sig: c_int) -> Disposition {
    // SAFETY: sigaction(2) reads `act` and writes `old`, both on our stack and fully
    // initialised (zeroed, then set); `on_signal` is an `extern "C" fn(c_int)` valid for the
    // whole program.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, ptr::null(), &mut old) != 0 || old.sa_sigaction != libc::SIG_DFL {
            return Disposition::LeftAlone;
        }
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = handler_address();
        act.sa_mask = lifeline_mask();
        act.sa_flags = libc::SA_RESTART;
        if libc::sigaction(sig, &act, &mut old) != 0 {
            return Disposition::LeftAlone;
        }
        if old.sa_sigaction != libc::SIG_DFL {
            // Someone installed a handler between our look and our change: theirs wins.
            libc::sigaction(sig, &old, ptr::null_mut());
            return Disposition::LeftAlone;
        }
    }
    Disposition::Handled
}

/// Whether the lifeline's handler is what the kernel runs for `sig` now. It is not when
/// another handler was installed after it and calls it as "the previous handler" (as
/// signal-hook's registry does): that handler owns the decision then.
fn is_installed_for(sig: c_int) -> bool {
    // SAFETY: sigaction(2) with a null `act` only writes the current disposition into `old`,
    // on our stack.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, ptr::null(), &mut old) == 0 && old.sa_sigaction == handler_address()
    }
}

fn is_owner() -> bool {
    // SAFETY: getpid(2) cannot fail and touches no memory.
    let me = unsafe { libc::getpid() };
    me == OWNER.load(SeqCst)
}

/// The signal handler: kill every registered group, then die of the same signal.
extern "C" fn on_signal(sig: c_int) {
    let saved = Errno::last_raw();
    if !is_installed_for(sig) {
        // Called by a handler installed after ours, which decides what the signal means.
        Errno::set_raw(saved);
        return;
    }
    if is_owner() && enabled() {
        if IN_WINDOW.try_with(Cell::get).unwrap_or(false) {
            // This thread is spawning a group that is not registered yet: act when its
            // window closes (see `SpawnWindow`).
            DYING.store(true, SeqCst);
            let _ = DEFERRED.try_with(|d| d.set(sig));
            Errno::set_raw(saved);
            return;
        }
        DYING.store(true, SeqCst);
        wait_for_spawns_in_flight();
        kill_all();
    }
    die_of(sig);
    DYING.store(false, SeqCst);
    Errno::set_raw(saved);
}

/// Restores the default action of `sig` and raises it: the process dies of `sig`, exactly as
/// it would have without the lifeline (same WTERMSIG, same core dump).
fn die_of(sig: c_int) {
    // SAFETY: sigaction, pthread_sigmask and raise are async-signal-safe; the structures are
    // on our stack.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &dfl, ptr::null_mut());
        let mut only: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut only);
        libc::sigaddset(&mut only, sig);
        libc::raise(sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &only, ptr::null_mut());
    }
    // Only returns when the default action does not end the process (a signal blocked by
    // sigprocmask elsewhere; PID 1, where the handler is never installed).
}

/// The `atexit` hook: `exit(3)` (also returning from `main`) runs no destructor of a value
/// in a `static` or leaked with `mem::forget`.
extern "C" fn at_exit() {
    if !is_owner() || !enabled() {
        return;
    }
    let mask = lifeline_mask();
    // SAFETY: pthread_sigmask(3) reads `mask` and writes `old`, both on our stack. Blocking
    // the lifeline's signals on this thread keeps its handler from interrupting us while we
    // hold a claimed slot (it would wait for us).
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &mask, &mut old);
        DYING.store(true, SeqCst);
        wait_for_spawns_in_flight();
        kill_all();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut());
    }
}

/// SIGKILL to every registered group. Async-signal-safe.
fn kill_all() {
    let mut block = Some(&FIRST);
    while let Some(b) = block {
        for slot in &b.slots {
            kill_slot(slot);
        }
        block = b.next();
    }
}

fn kill_slot(slot: &AtomicU64) {
    let mut spins = 0;
    loop {
        let current = slot.load(SeqCst);
        if current == 0 {
            return;
        }
        if current & CLAIMED != 0 {
            // Another thread (a second signal, or the atexit hook) is signalling this group.
            spins += 1;
            if spins > CLAIM_SPINS {
                return;
            }
            // SAFETY: sched_yield(2) takes no arguments and cannot fail in a harmful way.
            unsafe {
                libc::sched_yield();
            }
            continue;
        }
        if slot
            .compare_exchange(current, current | CLAIMED, SeqCst, SeqCst)
            .is_ok()
        {
            let (pgid, pidfd) = decode(current);
            kill_group(pgid, pidfd);
            slot.store(current, SeqCst);
            return;
        }
    }
}

/// SIGKILL to one pinned group: through the leader's pidfd where the backend has one (the
/// group of that very process, never a recycled number), else `kill(-pgid)` while the
/// number is pinned, refusing the ids that the guard's cheap rules refuse.
fn kill_group(pgid: i32, pidfd: Option<RawFd>) {
    if !super::lifeline_kill_by_handle(pgid, pidfd) {
        return;
    }
    // SAFETY: getpgrp(2) cannot fail; kill(2) with a negative id signals that group. The id
    // is greater than 1 (never `kill(0)` or `kill(-1)`) and not the caller's own group, and
    // the slot keeps it pinned (its leader unreaped) while we hold the claim.
    unsafe {
        if pgid > 1 && pgid != libc::getpgrp() {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}
