//! The lifeline: no group outlives the test binary, however the test binary dies.
//!
//! A [`SpawnedGroup`](crate::SpawnedGroup) moves its command into a process group of its
//! own. That is what makes teardown reach the whole group, and it is also why the signals
//! that end a test run do not reach it: Ctrl-C goes to the terminal's foreground group and a
//! nextest timeout to the test's process group, and both contain the test binary, not the
//! groups it started. Drop does not run on those deaths, nor on `std::process::exit`, nor for
//! a group kept in a `static`. Without help the groups would be left running, which is worse
//! than a plain `std::process::Child` in the test's own group.
//!
//! The lifeline is that help. It is on by default, for every group of every
//! [`Containment`](crate::Containment) tier, and is installed lazily by the first spawn:
//!
//! - **Signals.** For each of [`SIGNALS`] (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGABRT) whose
//!   action is still the default one, it installs a handler. When the signal arrives, the
//!   handler sends SIGKILL to every live group of the process, whichever thread owns it (also
//!   a thread that has ended, a `static`, a value passed to `mem::forget`), then restores the
//!   default action and raises the signal again: the test binary dies of the same signal, with
//!   the same wait status, as it would have without the lifeline. `abort()` and
//!   `panic = "abort"` raise SIGABRT and are covered the same way.
//! - **Exit.** An `atexit` hook sends SIGKILL to every group still alive when the process
//!   calls `exit(3)`: `std::process::exit`, or returning from `main` (the end of a libtest or
//!   nextest run with a group in a `static` or an rstest `#[once]` fixture). The exit code is
//!   unchanged.
//!
//! It kills with SIGKILL and does not wait: there is no grace period for a process whose test
//! binary is going away. Groups torn down normally (Drop, [`shutdown`]) are out of the
//! registry before their leader is reaped, so the lifeline never signals an id that may have
//! been recycled, even when teardown runs on another thread at the same moment.
//!
//! [`shutdown`]: crate::SpawnedGroup::shutdown
//!
//! # When another handler is there
//!
//! A process has one handler per signal. The lifeline takes a signal only if nothing else has:
//!
//! - If a handler (`tokio::signal`, `ctrlc`, signal-hook, your own `sigaction`) or `SIG_IGN`
//!   was installed *before* the first spawn, the lifeline leaves that signal alone.
//! - If one is installed *after* it, the newer handler decides. A handler that replaces ours
//!   outright (`ctrlc`, a plain `sigaction`) simply runs instead of it; one that calls the
//!   previous handler first (signal-hook's registry, and so `tokio::signal`) finds the
//!   lifeline stepping aside: it neither kills nor re-raises when it is not the installed
//!   handler.
//!
//! So a user handler that means "do not exit" is obeyed: the process lives on and its groups
//! with it, to be torn down by Drop as usual. If that handler then ends the process with
//! `std::process::exit`, the `atexit` hook kills what is left. A handler that ends it with
//! `_exit` or by re-raising the signal with the default action bypasses both: nothing in the
//! process can run after that, and only [`Containment::Supervised`] still cleans up.
//!
//! [`Containment::Supervised`]: crate::Containment::Supervised
//!
//! # Opting out
//!
//! Set `PGROUP_LIFELINE=off` (or `0`, `false`) in the environment of the test binary, or call
//! [`disable`] before the first spawn: no handler is installed, and the `atexit` hook does
//! nothing. [`disable`] after the first spawn makes the installed handlers behave as the
//! default action (they only re-raise) and the `atexit` hook do nothing. Use it in a test
//! binary that tests its own signal handling and needs the default dispositions untouched.
//!
//! # What it cannot do
//!
//! - SIGKILL of the test binary runs nothing in it: that is the
//!   [`Containment::Supervised`] tier's job, whose supervisor watches the test binary from the
//!   outside.
//! - A process that left its group (`setsid`, a double fork) is not a member and is not
//!   reached, as in teardown: the supervised tiers catch those.
//! - A process forked from the test binary *without* exec has the handlers and the registry
//!   of its parent, but its groups are not its parent's: the lifeline does nothing in it (its
//!   handlers only re-raise).
//! - PID 1 of a PID namespace (a test binary run directly as a container's entry point)
//!   ignores these signals by default; a handler would change that, so there the lifeline
//!   installs only the `atexit` hook.
//!
//! # Cost
//!
//! Installing costs a few syscalls, once. Each spawn takes a slot in a lock-free registry
//! and each teardown gives it back: a few atomic operations, no syscall, no thread. See the
//! benchmarks for the measured per-spawn cost.
//!
//! # Examples
//!
//! ```
//! use std::process::Command;
//!
//! let group = pgroup::SpawnedGroup::spawn(&mut Command::new("sleep").arg("30"))?;
//! // Had this test binary received Ctrl-C here, `sleep` would have been killed with it.
//! assert!(pgroup::lifeline::live_groups() >= 1);
//! drop(group);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::OnceLock;

use crate::sys::lifeline::{self as raw, Disposition};
use crate::{Pgid, Signal};

pub(crate) use crate::sys::lifeline::{Slot, SpawnWindow};

/// The environment variable that turns the lifeline off: `off`, `0` or `false` (any case).
/// `on`, `1`, `true` or an unset variable keep it on; any other value makes spawning fail
/// with an error of kind [`InvalidInput`](std::io::ErrorKind::InvalidInput) that names it.
///
/// # Examples
///
/// ```
/// assert_eq!(pgroup::lifeline::ENV_VAR, "PGROUP_LIFELINE");
/// ```
pub const ENV_VAR: &str = "PGROUP_LIFELINE";

/// The signals the lifeline handles, when their action is the default one at the first
/// spawn. Each of them ends the process by default; SIGKILL and SIGSTOP cannot be handled,
/// and SIGSEGV, SIGBUS and the like mean memory is corrupt, where killing from a handler is
/// not safe to attempt.
///
/// # Examples
///
/// ```
/// use pgroup::Signal;
///
/// assert!(pgroup::lifeline::SIGNALS.contains(&Signal::SIGINT));
/// assert!(!pgroup::lifeline::SIGNALS.contains(&Signal::SIGKILL));
/// ```
pub const SIGNALS: [Signal; 5] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGABRT,
];

/// What the first spawn decided: `Err` holds the bad value of [`ENV_VAR`].
static INSTALLED: OnceLock<Result<Option<Vec<Signal>>, String>> = OnceLock::new();

/// Reads [`ENV_VAR`]: `Ok(true)` for on.
fn from_env() -> Result<bool, String> {
    crate::sys::switch(ENV_VAR)
}

/// Installs the lifeline once per process (the first spawn calls this, before it starts
/// anything). Fails only for a bad value of [`ENV_VAR`], and then on every spawn.
pub(crate) fn ensure_installed() -> io::Result<()> {
    let state = INSTALLED.get_or_init(|| {
        let on = from_env()?;
        if !on || !raw::enabled() {
            raw::set_enabled(false);
            return Ok(None);
        }
        let dispositions = raw::install();
        let handled: Vec<Signal> = SIGNALS
            .iter()
            .zip(dispositions)
            .filter(|(_, d)| *d == Disposition::Handled)
            .map(|(s, _)| *s)
            .collect();
        tracing::debug!(
            name: "lifeline_installed",
            handled = ?handled,
            pid1 = dispositions.contains(&Disposition::Pid1),
            "lifeline_installed"
        );
        Ok(Some(handled))
    });
    match state {
        Ok(_) => Ok(()),
        Err(message) => Err(io::Error::new(io::ErrorKind::InvalidInput, message.clone())),
    }
}

/// Registers a pinned group; `None` when the lifeline is off.
pub(crate) fn register(pgid: Pgid, pidfd: Option<BorrowedFd<'_>>) -> Option<Slot> {
    raw::enabled().then(|| raw::register(pgid, pidfd))
}

/// Turns the lifeline off for the rest of the process.
///
/// Called before the first spawn, nothing is installed: no handler, no `atexit` hook. Called
/// later, the handlers already installed only re-raise their signal with the default action
/// (the process dies as it would have without them), the `atexit` hook does nothing, and no
/// group spawned afterwards is registered. There is no way back on: a test binary that
/// tests its own signal handling turns it off for good.
///
/// # Examples
///
/// ```
/// // In a test binary that checks its own SIGTERM handling:
/// pgroup::lifeline::disable();
/// assert!(!pgroup::lifeline::is_enabled());
/// ```
pub fn disable() {
    raw::set_enabled(false);
}

/// Whether the lifeline is on: not turned off by [`disable`] or by [`ENV_VAR`].
///
/// # Examples
///
/// ```
/// if std::env::var_os(pgroup::lifeline::ENV_VAR).is_none() {
///     assert!(pgroup::lifeline::is_enabled());
/// }
/// ```
#[must_use]
pub fn is_enabled() -> bool {
    match INSTALLED.get() {
        Some(Ok(Some(_))) => raw::enabled(),
        Some(_) => false,
        None => raw::enabled() && from_env() == Ok(true),
    }
}

/// The signals whose handler the lifeline installed in this process: empty before the first
/// spawn, when it is off, and in PID 1 of a PID namespace; without those that already had a
/// handler or were ignored at the first spawn.
///
/// # Examples
///
/// ```
/// use std::process::Command;
/// use pgroup::Signal;
///
/// drop(pgroup::SpawnedGroup::spawn(&mut Command::new("true"))?);
/// for signal in pgroup::lifeline::handled_signals() {
///     assert!(pgroup::lifeline::SIGNALS.contains(&signal));
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use]
pub fn handled_signals() -> Vec<Signal> {
    match INSTALLED.get() {
        Some(Ok(Some(handled))) => handled.clone(),
        _ => Vec::new(),
    }
}

/// How many groups the lifeline would kill if the process died now: the groups spawned and
/// not yet torn down, in every thread.
///
/// # Examples
///
/// ```
/// use std::process::Command;
///
/// let group = pgroup::SpawnedGroup::spawn(&mut Command::new("sleep").arg("30"))?;
/// assert!(pgroup::lifeline::live_groups() >= 1);
/// drop(group);
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use]
pub fn live_groups() -> usize {
    raw::registered()
}
