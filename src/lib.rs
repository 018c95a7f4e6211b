//! Process groups for tests that spawn subprocesses: a guarded `killpg`, and a group that is
//! torn down and reaped when it goes out of scope.
//!
//! # The goal
//!
//! Integration tests start servers, CLIs and daemons, and those start children of their own.
//! Cleaning up means signalling a whole process group, and `killpg(2)` is one wrong number
//! away from disaster: 0 (a default, an unset field) is the caller's own group, 1 (a mock, a
//! recycled or sentinel pid) turns into `kill(-1)`, every process the user owns, and a
//! `u32 as i32` that wrapped is negative. A test run that gets this wrong kills the terminal,
//! the desktop session and the test runner. And the code that does clean up often reaps the
//! leader first and then signals its group id, which by then may belong to someone else.
//!
//! `pgroup` makes both mistakes hard to make:
//!
//! - [`safe_killpg`] is `killpg` behind a guard that refuses every dangerous target, listed
//!   in [`GUARD_RULES`]: ids at or below 1, the caller's own group, its session, its parent's
//!   group and every ancestor's group. It fails closed: when it cannot tell, it
//!   refuses. [`Pgid`] is an id that is greater than 1 by construction.
//! - [`SpawnedGroup`] spawns a command as the leader of a new process group and, when
//!   dropped (also while a failed assertion unwinds), tears the whole group down: SIGTERM,
//!   a grace period, SIGKILL, and the reap of the leader. It never signals a group id after
//!   reaping its leader.
//!
//! ```
//! use std::process::Command;
//! use pgroup::{check_pgid, Refusal, Signal, SpawnedGroup};
//!
//! // A server and its workers, in a group of their own.
//! let server = SpawnedGroup::spawn(Command::new("sh").args(["-c", "sleep 60 & sleep 60"]))?;
//!
//! // The guard lets the group through, and refuses what would hit the test itself.
//! assert!(server.signal(Signal::SIGCONT)?.is_sent());
//! assert_eq!(check_pgid(1), Err(Refusal::PgidLe1)); // asks, without signalling
//!
//! // Dropping the value (or, checked, `shutdown`) kills the shell and both sleeps.
//! let report = server.shutdown()?;
//! assert!(!report.sigkill_needed);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # What Drop guarantees, and what it cannot
//!
//! Like `tempfile`'s temporary files, a [`SpawnedGroup`] is cleaned up by its destructor, and
//! destructors do not always run. When the value is dropped, normally or while a panic
//! unwinds, every process still in the group is sent SIGTERM and SIGCONT, then SIGKILL after
//! the grace period (sooner if everything exited), and the leader is reaped; Drop does not
//! panic and blocks for at most the grace period plus [`KILL_WAIT_BOUND`]. Its errors are
//! reported as tracing events; [`SpawnedGroup::shutdown`] is the checked form that returns
//! them.
//!
//! Teardown waits up to the grace period for every member of the group, not only the leader:
//! the members left after the leader exited are found with one `getpgid` per pid handed out
//! since the leader started (a /proc listing beyond 1024 of them). If the test binary ignores
//! SIGCHLD, or a thread calls `waitpid(-1)`, the `Group` tier's leader is reaped by someone
//! else: the crate notices and never signals its number again. On Linux 6.9 and later it
//! still tears down the members left in the group, through the leader's pidfd; the leader's
//! exit status is lost, and teardown returns an error saying so. On older kernels the members
//! of such a group are not signalled.
//!
//! Where Drop does not run, the [`lifeline`] takes over, in every tier and with the default
//! settings: when the test binary dies of SIGINT, SIGTERM, SIGHUP, SIGQUIT or SIGABRT, or
//! calls `exit` (also by returning from `main`), every group still alive is killed with
//! SIGKILL, whichever thread owned it, and the test binary still dies of the same signal or
//! with the same exit code. SIGKILL of the test binary runs nothing in it: that, and the
//! processes that leave their group, are what the [`Containment::Supervised`] tier's
//! supervisor is for.
//!
//! | how the test or the test binary ends | `Group` | `Supervised` (default) | `Namespace` | the test that shows it (in the repository's `tests/`) |
//! | --- | --- | --- | --- | --- |
//! | the value is dropped | cleaned | cleaned | cleaned | `drop_and_panic_clean_up_in_every_tier` in lifeline.rs |
//! | a panic unwinds (a failed assertion) | cleaned | cleaned | cleaned | the same |
//! | SIGINT (Ctrl-C in the terminal) | cleaned, by the lifeline | cleaned | cleaned | `a_fatal_signal_kills_every_group_and_the_status_is_kept` in lifeline.rs |
//! | SIGTERM (nextest's timeout, a CI job cancelled) | cleaned, by the lifeline | cleaned | cleaned | the same |
//! | SIGHUP (the terminal closed), SIGQUIT | cleaned, by the lifeline | cleaned | cleaned | the same |
//! | `std::process::exit`, returning from `main` | cleaned, by the lifeline | cleaned | cleaned | `exit_abort_and_return_kill_every_group_and_the_status_is_kept` in lifeline.rs |
//! | `abort()`, `panic = "abort"` (SIGABRT) | cleaned, by the lifeline | cleaned | cleaned | the same |
//! | a `static`, an rstest `#[once]` fixture, `mem::forget` | cleaned at exit, by the lifeline | cleaned | cleaned | the lifeline tests (each holds a group in a `static`, one forgotten, one on its thread); `statics_and_sigkill_of_the_test_binary` in containment.rs |
//! | SIGKILL of the test binary (nextest after its grace period), or a crash the lifeline does not handle (SIGSEGV) | **not cleaned** | cleaned, by the supervisor | cleaned, by the supervisor | `statics_and_sigkill_of_the_test_binary` in containment.rs |
//! | SIGKILL while another thread holds std's environment lock or an allocator's lock | **not cleaned** | cleaned | cleaned | `sigkill_while_another_thread_holds_the_environment_lock` in where_tests_run.rs |
//! | the OOM killer kills the test binary | **not cleaned** | cleaned | cleaned | `an_oom_kill_of_the_test_binary_ends_its_groups` in where_tests_run.rs (where a memory cgroup can be made) |
//! | a process that left the group (`setsid`, a double fork) | **not cleaned** | cleaned | cleaned | `a_setsid_escaper`, `a_double_fork_daemon` in containment.rs |
//! | the supervisor is killed (by someone else) | — | the group is ended at teardown through the leader's pidfd (Linux 6.9), with an error: the leader's status is lost, and processes that left the group are not reached | the same | `shutdown_after_the_supervisors_death_ends_the_group`, `the_lifeline_never_signals_a_recycled_number` in where_tests_run.rs |
//!
//! The supervised tiers also hold where tests run in containers (Docker's default seccomp
//! profile), under gdb and valgrind, and beside forks that keep descriptors: see the
//! second table of [`Containment`].
//!
//! The `Group` tier's cells for the signal and exit rows are also checked with the lifeline
//! off (`without_the_lifeline_the_group_tier_leaks` in lifeline.rs): there the groups survive.
//! The lifeline yields to a signal handler of the program's own (see [`lifeline`] for the
//! rules, and for the opt-out `PGROUP_LIFELINE=off`).
//!
//! # Anatomy
//!
//! - [`Pgid`], [`InvalidPgid`]: the id type; [`TryFrom<i32>`] and [`TryFrom<u32>`] refuse
//!   what is not a possible group (at or below 1, at or above [`PID_MAX_LIMIT`]).
//! - [`check_pgid`], [`safe_killpg`], [`Delivery`], [`Refusal`], [`GUARD_RULES`]: the guard.
//!   Every refusal emits a WARN tracing event `killpg_guard_refused` with the fields
//!   `reason`, `pgid`, `signal` and `context`; every delivery a DEBUG event
//!   `killpg_delivered`. The caller's own group, session, parent and parent's group are
//!   read on every call, and so is the group of each ancestor above the parent (one
//!   `getpgid` each; session leaders are skipped, their group never changes); the chain of
//!   ancestor pids is read from /proc at most every [`ANCESTOR_REFRESH`]. A
//!   [`SpawnedGroup`] signals its own group through the leader's pidfd
//!   (`PIDFD_SIGNAL_PROCESS_GROUP`, Linux 6.9) with the guard's rules that need no /proc, so
//!   teardown works without /proc or a free descriptor.
//! - [`SpawnedGroup`], [`Builder`], [`Teardown`]: the RAII group. Waiting is driven by the
//!   leader's pidfd; the leader is observed with `waitid(WNOWAIT)` and reaped only at the end
//!   of teardown, with `waitpid` on its own pid, never `waitpid(-1)`. Teardown emits DEBUG
//!   events `group_torn_down` and `leader_reaped`; Drop's failures a WARN event
//!   `group_teardown_failed`.
//! - [`Containment`]: how tightly the group is held. `Group` is a plain process group;
//!   `Supervised` (the default) adds a supervisor, the leader's parent: a program of a few
//!   KiB of its own, which shares nothing with the test binary, reaps orphans as a child
//!   subreaper, and watches the test binary through a pidfd, so that it catches what leaves
//!   the group and what outlives the test binary; `Namespace` makes the supervisor init of
//!   a PID namespace.
//! - [`Builder::capture_output`], [`SpawnedGroup::wait_for_line`],
//!   [`SpawnedGroup::wait_for_tcp`], [`NotReady`], [`Stream`]: readiness and captured output
//!   for test harnesses, in memory of fixed size; the waits of a group take `&self`, so a
//!   shared (`Arc`, rstest `#[once]`) group can be asked from every test. The
//!   [`recipes`] show each in a test.
//! - [`Run`], [`Builder::output`], [`Incomplete`]: a CLI run to completion in a group of its
//!   own, with its complete output (std's `Command::output`, with input, a timeout and a
//!   limit), which returns when the leader exits even if a process it started holds the
//!   pipes, and leaves nothing running.
//! - [`LeaderStdin`]: the leader's stdin in the group, which [`SpawnedGroup::wait`] closes
//!   as `Child::wait` does.
//! - [`lifeline`]: what kills the groups when the test binary dies without dropping them
//!   (a fatal signal, `exit`, `abort`, a `static`); on by default.
#![cfg_attr(
    feature = "tokio",
    doc = "- [`tokio`] (feature `tokio`): the same group for async tests, with `tokio::process`'s \
           types, waits that are futures, and a Drop that hands teardown to a thread of its \
           own so that it never blocks the runtime."
)]
#![cfg_attr(
    not(feature = "tokio"),
    doc = "- `pgroup::tokio` (feature `tokio`): the same group for async tests, with \
           `tokio::process`'s types, waits that are futures, and a Drop that hands teardown \
           to a thread of its own so that it never blocks the runtime."
)]
//! - [`recipes`]: the crate in test suites (a server waited for, an rstest fixture, a
//!   `#[once]` server shared by every test, a CLI, an async test), as doctests.
//! - All unsafe code and raw syscalls live in one private module, `sys`: the spawner, the
//!   supervisor (whose files the supervisor program is built from) and the lifeline's
//!   async-signal-safe code in its submodules.
//!
//! # Platform
//!
//! Linux 5.3 or later gets the Linux backend (`pidfd_open`; `close_range` from 5.9 and
//! `clone3` with `CLONE_CLEAR_SIGHAND` from 5.5 are used when present) and every tier on
//! x86_64 and aarch64 (elsewhere only [`Containment::Group`]), with `/proc` mounted for the
//! caller's PID namespace (the ancestor rule reads it; without it the guard refuses
//! everything, failing closed); [`Containment::Namespace`] also needs root or unprivileged
//! user namespaces. The supervisor program is built by the crate's build script with the
//! same `rustc` and linker; where that fails, a cargo warning says why, and the supervised
//! tiers fork their supervisor instead.
//! macOS and FreeBSD get the portable backend: the same guard rules (the ancestors read with
//! `proc_pidinfo` and `sysctl(KERN_PROC_PID)`, failing closed), the leader pinned unreaped
//! with `waitid(WNOWAIT)`, exits noticed by a polling thread (50 µs to 5 ms), and only
//! [`Containment::Group`], which is the default there (the other tiers fail at spawn with
//! `ErrorKind::Unsupported`; see [`Containment::is_available`]). The repository's CI
//! compile-checks them, and runs the whole suite on Linux with the portable backend forced
//! (`RUSTFLAGS="--cfg pgroup_portable"`); only the per-platform readers of macOS and FreeBSD
//! are never run. Windows does not compile (a message points to Job Objects). The minimum
//! supported Rust version of the library and its tests is 1.85.
//!
//! | platform | tested how | tiers | guard rules | exit notification, signals |
//! | --- | --- | --- | --- | --- |
//! | Linux 5.3+, Linux backend (default) | the whole suite on x86_64, with `cargo test` and nextest, also as PID 1 of a container; built for aarch64 (not run) | `Group`, `Supervised` (the default), `Namespace` on x86_64 and aarch64; `Group` elsewhere | all; ancestors from `/proc` (fails closed without it, or with a `/proc` of another PID namespace) | pidfds, `ppoll`; `PIDFD_SIGNAL_PROCESS_GROUP` on 6.9+, else `killpg` while the leader is unreaped |
//! | Linux, portable backend (`--cfg pgroup_portable`) | the whole suite again under nextest | `Group` (the default there); `Supervised` and `Namespace` fail at spawn with `ErrorKind::Unsupported` | all; the portable walk of the ancestors, reading `/proc` (fails closed as above) | the portable path below, run for real |
//! | macOS (aarch64, x86_64) | compile-checked only | `Group` (the default there); the others fail at spawn with `ErrorKind::Unsupported` | all; ancestors with `proc_pidinfo(PROC_PIDTBSDINFO)` (fails closed where it cannot read one) | portable: `waitid(WNOWAIT)` polled with a backoff (50 µs to 5 ms), `killpg`/`kill` only while the leader is unreaped |
//! | FreeBSD (x86_64) | compile-checked only | as macOS | all; ancestors with `sysctl(KERN_PROC_PID)` (fails closed) | as macOS |
//! | Windows | does not compile (the message points to Job Objects) | | | |
//!
//! How the portable backend differs from the Linux one:
//!
//! - the leader is pinned as on Linux, unreaped and observed with `waitid(WNOWAIT)`, by pid;
//!   what tells the leader from a new child that got its number after someone else reaped
//!   it is its start time in microseconds (macOS, FreeBSD) or, on Linux, its `/proc/<pid>`
//!   directory held open (start times there count 10 ms ticks);
//! - a group whose leader was reaped behind the crate's back (SIGCHLD set to `SIG_IGN`, a
//!   `waitpid(-1)` elsewhere) can no longer be signalled: there is no
//!   `PIDFD_SIGNAL_PROCESS_GROUP` to reach it without its number (as on Linux before 6.9);
//! - exit notification is a thread that polls `waitid(WNOWAIT)` (our children) or the
//!   platform's reader (other members) from 50 µs up to every 5 ms, so a teardown may take
//!   up to 5 ms longer;
//! - there is no walk of the leader's descendants before SIGTERM (it needs `/proc`):
//!   teardown waits for the group's members once the leader has exited;
//! - the lifeline's handler signals a group only while `waitid(P_PID, WNOWAIT)` says its
//!   leader is unreaped (it cannot read start times inside a signal handler).
//!
//! # Terminals
//!
//! A group started by this crate is not the terminal's foreground group: a child that reads
//! from the terminal is stopped by SIGTTIN, and Ctrl-C in the terminal does not reach it.
//! The test binary gets the SIGINT, and the [`lifeline`]'s handler kills every group with
//! SIGKILL before the test binary dies of that SIGINT (Drop does not run on a signal). For
//! a test harness that is usually what you want.

#![warn(missing_docs)]
// docs.rs (and CI's docs step) build with `--cfg docsrs` on a nightly rustdoc: the items that
// need a feature carry a badge saying so.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(unix))]
compile_error!(
    "pgroup supports Unix only (Linux, macOS, FreeBSD): process groups, killpg and waitid are \
     POSIX. On Windows, use a Job Object (for example through the process-wrap crate's \
     JobObject wrapper) to tear a tree of processes down."
);

// The layers, each module using only those above it in this list:
// - `sys`: the only door to the kernel and the only `unsafe`; the Linux backend
//   (`sys/linux/`, with the supervisor's spawn) or the portable one (`sys/portable/`), chosen
//   once in `sys/mod.rs`.
// - `pgid`, `deadline`: the validated id; the time left before a deadline.
// - `guard` (`safe_killpg`), `containment` (the tiers, `Escapee`).
// - `lifeline` (kills the live groups when the test binary dies), `leader` (the leader, held
//   directly or through its supervisor), `capture` (the reader thread and its tails), `stdin`.
// - `group`: `SpawnedGroup`, `Builder`, readiness, teardown.
// - `reaper`, `tokio`: the async type, a `SpawnedGroup` and what only async needs.
// - `run`: a command run to completion, sync and async.
mod capture;
mod containment;
mod deadline;
mod group;
mod guard;
mod leader;
pub mod lifeline;
mod pgid;
#[cfg(feature = "tokio")]
mod reaper;
pub mod recipes;
mod run;
mod stdin;
mod sys;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio;

pub use capture::{NotReady, NotReadyReason, Stream, CAPTURE_LIMIT};
pub use containment::{Containment, Escapee};
pub use group::{Builder, SpawnedGroup, Teardown, DEFAULT_GRACE_PERIOD, KILL_WAIT_BOUND};
pub use guard::{
    check_pgid, safe_killpg, Delivery, GuardRule, Refusal, ANCESTOR_REFRESH, GUARD_RULES,
};
pub use pgid::{InvalidPgid, Pgid, PID_MAX_LIMIT};
pub use run::{Incomplete, IncompleteReason, Run, DEFAULT_OUTPUT_LIMIT, DEFAULT_WAIT_DELAY};
pub use stdin::LeaderStdin;

/// The signals the crate sends: nix's [`Signal`], re-exported.
///
/// Every variant exists on the platform it was compiled for, so a signal the platform lacks
/// cannot be named; a raw number converts with [`Signal::try_from`], which fails with
/// `EINVAL` for numbers that are not a signal here.
///
/// # Examples
///
/// ```
/// use pgroup::Signal;
///
/// assert_eq!(Signal::SIGTERM.to_string(), "SIGTERM");
/// assert_eq!(Signal::try_from(9), Ok(Signal::SIGKILL));
/// assert!(Signal::try_from(12345).is_err());
/// ```
pub use nix::sys::signal::Signal;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
