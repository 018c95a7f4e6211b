//! The guard in front of every `killpg(2)` the crate makes.

use std::fmt;
use std::io;

use crate::{sys, Pgid, Signal};

mod ancestors;
use ancestors::check_ancestors;
pub use ancestors::ANCESTOR_REFRESH;
use nix::errno::Errno;

/// One rule of the guard: what it refuses, the `reason` it reports, and why it exists.
///
/// The full list is [`GUARD_RULES`].
///
/// # Examples
///
/// ```
/// for rule in pgroup::GUARD_RULES {
///     println!("{:<20} refuses {}: {}", rule.reason, rule.refuses, rule.why);
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GuardRule {
    /// The `reason` field of the `killpg_guard_refused` event and [`Refusal::reason`].
    pub reason: &'static str,
    /// What the rule refuses.
    pub refuses: &'static str,
    /// Why: the harm the rule prevents.
    pub why: &'static str,
}

/// Every rule [`safe_killpg`] applies, in the order it applies them. The first rule that
/// matches decides the [`Refusal`]; every refusal is a WARN tracing event
/// `killpg_guard_refused` with `reason`, `pgid`, `signal` and `context`.
///
/// | reason | refuses | because |
/// | --- | --- | --- |
/// | `pgid_le_1` | 0, 1, negatives | `killpg(0)` is the caller's own group; `killpg(1)` is `kill(-1)`: everything the caller may signal |
/// | `pgid_out_of_range` | ids at or above [`PID_MAX_LIMIT`](crate::PID_MAX_LIMIT) | no process can have one: the number is garbage |
/// | `own_pgroup` | the caller's group | it would kill the test binary itself |
/// | `session_pgroup` | the session leader's group | in a terminal, that is your login shell |
/// | `parent_pgroup` | the parent's group | the test runner (nextest puts each test in its own group, so its own group alone is not enough) |
/// | `ancestor_pgroup` | any ancestor's group, up to init | shells, multiplexers, editors, terminals |
/// | `guard_unverifiable` | everything, when a rule cannot be checked | fail closed (no `/proc`, a `/proc` of another PID namespace) |
///
/// Like `signal-hook`'s list of forbidden signals, this is public so that a caller can show
/// it, test against it, or check that a newer version of the crate did not drop a rule.
/// Each rule is checked at call time: the caller's own group, its session, its parent and
/// the parent's group are read with a syscall on every call, because any of them can
/// change during a run. The ancestors above the parent are the exception: finding them
/// costs a /proc read each, so the guard reads the chain of their pids at most every
/// [`ANCESTOR_REFRESH`], and again whenever the parent changes (a forked child, an orphan),
/// an ancestor of the chain has died, or the target matches. Their *groups* are never
/// cached: between readings each cached ancestor's group is asked afresh with `getpgid`
/// (one syscall each, no /proc), since an ancestor can call `setsid`, or `setpgid` into
/// any existing group of its session, at any moment; only a session leader, whose group is
/// its pid for life, is not asked. A process never gains an ancestor (an orphan is
/// re-parented to a subreaper or init it already descended from), so the chain of pids
/// only shrinks between readings, and a dead ancestor is noticed by `getpgid`'s `ESRCH`.
///
/// `SpawnedGroup` signals the groups it created and still holds through the first five
/// rules only (no /proc, no descriptor needed), and through the leader's pidfd where the
/// kernel allows (`PIDFD_SIGNAL_PROCESS_GROUP`, Linux 6.9), which names that group and no
/// other: an ancestor's group is never one a test's child created.
///
/// # Examples
///
/// ```
/// let reasons: Vec<&str> = pgroup::GUARD_RULES.iter().map(|r| r.reason).collect();
/// assert_eq!(
///     reasons,
///     [
///         "pgid_le_1",
///         "pgid_out_of_range",
///         "own_pgroup",
///         "session_pgroup",
///         "parent_pgroup",
///         "ancestor_pgroup",
///         "guard_unverifiable",
///     ]
/// );
/// ```
pub const GUARD_RULES: &[GuardRule] = &[
    GuardRule {
        reason: "pgid_le_1",
        refuses: "0, 1 and every negative pgid",
        why: "killpg(0) signals the caller's own group; killpg(1) becomes kill(-1), which \
              signals every process the caller may signal (for root: the whole PID namespace); \
              negative values come from wrapped `u32 as i32` conversions",
    },
    GuardRule {
        reason: "pgid_out_of_range",
        refuses: "pgids at or above PID_MAX_LIMIT (4194304)",
        why: "no process can have such an id, so the number is garbage (an uninitialised \
              field, a wrapped or mixed-up value) and whatever it was meant to name is unknown",
    },
    GuardRule {
        reason: "own_pgroup",
        refuses: "the caller's own process group (getpgrp)",
        why: "signalling it kills the caller itself and every process started with it: under \
              cargo test that is the test binary and, in a terminal, the cargo command line",
    },
    GuardRule {
        reason: "session_pgroup",
        refuses: "the group of the caller's session leader (getsid)",
        why: "in a terminal the session leader is the login shell; killing its group closes \
              the terminal and everything running in it",
    },
    GuardRule {
        reason: "parent_pgroup",
        refuses: "the group of the caller's parent process",
        why: "the parent is the test runner: cargo, or the nextest runner, which puts each test \
              process in a group of its own, so the own-group rule alone would let a test kill \
              its runner",
    },
    GuardRule {
        reason: "ancestor_pgroup",
        refuses: "the group of any ancestor process up to init, as it is at the call (Linux: \
                  the chain of pids through /proc; macOS: proc_pidinfo; FreeBSD: sysctl \
                  KERN_PROC_PID; each one's group with getpgid)",
        why: "ancestors are the shells, multiplexers, editors and terminal emulators the run \
              was started from; none of them is ever a group a test created",
    },
    GuardRule {
        reason: "guard_unverifiable",
        refuses: "every pgid, whenever a rule above cannot be checked",
        why: "the guard fails closed: when /proc is missing or belongs to another PID \
              namespace, the platform's reader cannot read an ancestor, or the parent \
              vanished mid-check, it cannot prove the target is safe, so it does not signal",
    },
];

/// Why [`safe_killpg`] refused to signal a group. Each variant corresponds to one entry of
/// [`GUARD_RULES`], whose `reason` [`Refusal::reason`] returns.
///
/// # Examples
///
/// ```
/// use pgroup::{check_pgid, Refusal};
///
/// // check_pgid applies the rules without signalling; safe_killpg returns the same
/// // refusal inside `Delivery::Refused`.
/// let refusal = check_pgid(1).unwrap_err();
/// assert_eq!(refusal, Refusal::PgidLe1);
/// assert_eq!(refusal.reason(), "pgid_le_1");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The pgid was 0, 1 or negative.
    PgidLe1,
    /// The pgid was at or above [`PID_MAX_LIMIT`](crate::PID_MAX_LIMIT).
    PgidOutOfRange,
    /// The pgid is the caller's own process group.
    OwnPgroup,
    /// The pgid is the group of the caller's session leader.
    SessionPgroup,
    /// The pgid is the group of the caller's parent, whose pid is given.
    ParentPgroup {
        /// The parent's pid.
        parent: i32,
    },
    /// The pgid is the group of one of the caller's ancestors, whose pid is given.
    AncestorPgroup {
        /// The pid of the first ancestor (nearest the caller) found in that group.
        ancestor: i32,
    },
    /// A rule could not be checked, so the guard refused everything.
    Unverifiable {
        /// What could not be read.
        what: &'static str,
        /// The errno of the failure, 0 when there was none.
        errno: i32,
    },
}

impl Refusal {
    /// The rule's name, as in [`GUARD_RULES`] and in the `reason` field of the
    /// `killpg_guard_refused` tracing event.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(pgroup::Refusal::OwnPgroup.reason(), "own_pgroup");
    /// ```
    #[must_use]
    pub const fn reason(&self) -> &'static str {
        match self {
            Refusal::PgidLe1 => "pgid_le_1",
            Refusal::PgidOutOfRange => "pgid_out_of_range",
            Refusal::OwnPgroup => "own_pgroup",
            Refusal::SessionPgroup => "session_pgroup",
            Refusal::ParentPgroup { .. } => "parent_pgroup",
            Refusal::AncestorPgroup { .. } => "ancestor_pgroup",
            Refusal::Unverifiable { .. } => "guard_unverifiable",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::PgidLe1 => f.write_str("the pgid is 1 or less"),
            Refusal::PgidOutOfRange => f.write_str("the pgid is beyond any possible pid"),
            Refusal::OwnPgroup => f.write_str("the pgid is the caller's own process group"),
            Refusal::SessionPgroup => {
                f.write_str("the pgid is the caller's session leader's group")
            }
            Refusal::ParentPgroup { parent } => {
                write!(
                    f,
                    "the pgid is the group of the caller's parent (pid {parent})"
                )
            }
            Refusal::AncestorPgroup { ancestor } => {
                write!(
                    f,
                    "the pgid is the group of the caller's ancestor pid {ancestor}"
                )
            }
            Refusal::Unverifiable { what, errno } => {
                write!(f, "the guard could not check {what}")?;
                if *errno != 0 {
                    write!(f, ": {}", Errno::from_raw(*errno).desc())?;
                }
                Ok(())
            }
        }
    }
}

/// What [`safe_killpg`] did.
///
/// # Examples
///
/// ```
/// use std::os::unix::process::CommandExt;
/// use std::process::Command;
/// use pgroup::{safe_killpg, Delivery, Signal};
///
/// let mut child = Command::new("sleep").arg("30").process_group(0).spawn()?;
/// let pgid = i32::try_from(child.id()).expect("pids fit in i32");
/// match safe_killpg(pgid, Signal::SIGTERM, "doc example")? {
///     Delivery::Sent => println!("signalled"),
///     Delivery::NoSuchGroup => println!("nothing left in that group"),
///     Delivery::Refused(why) => println!("refused: {} ({why})", why.reason()),
/// }
/// child.wait()?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use = "a refused or undelivered signal usually needs handling"]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// The kernel accepted the signal for at least one member of the group.
    Sent,
    /// `ESRCH`: the group has no members left. The usual, benign case during cleanup.
    NoSuchGroup,
    /// The guard refused; nothing was signalled.
    Refused(Refusal),
}

impl Delivery {
    /// Whether the signal was delivered to at least one process.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(pgroup::Delivery::Sent.is_sent());
    /// assert!(!pgroup::Delivery::NoSuchGroup.is_sent());
    /// ```
    #[must_use]
    pub const fn is_sent(&self) -> bool {
        matches!(self, Delivery::Sent)
    }
}

/// Applies every rule of [`GUARD_RULES`] to `pgid`, without signalling anything.
///
/// [`safe_killpg`] calls this first; it is public so that a caller can ask before acting,
/// and for tests.
///
/// # Errors
///
/// The [`Refusal`] of the first rule that matches.
///
/// # Examples
///
/// ```
/// use pgroup::{check_pgid, Refusal};
///
/// assert_eq!(check_pgid(0), Err(Refusal::PgidLe1));
/// assert_eq!(check_pgid(-1), Err(Refusal::PgidLe1));
/// assert_eq!(check_pgid(i32::MAX), Err(Refusal::PgidOutOfRange));
///
/// // The caller's own group is refused, always; which rule refuses it depends on where
/// // the caller runs. As PID 1 of a container, or in a session started there, the group
/// // is 1; in a PID namespace whose init's group lies outside it, getpgrp() reads 0. The
/// // first rule refuses both.
/// let own = nix::unistd::getpgrp().as_raw();
/// let expected = if own > 1 { Refusal::OwnPgroup } else { Refusal::PgidLe1 };
/// assert_eq!(check_pgid(own), Err(expected));
/// ```
pub fn check_pgid(pgid: i32) -> Result<Pgid, Refusal> {
    let checked = Pgid::try_from(pgid).map_err(|e| {
        if e.is_at_most_one() {
            Refusal::PgidLe1
        } else {
            Refusal::PgidOutOfRange
        }
    })?;
    let parent = check_relatives(checked)?;
    check_ancestors(pgid, parent)?;
    Ok(checked)
}

/// The rules that need neither /proc nor a descriptor: the caller's own group, its session
/// leader's group and its parent's group, one syscall each. Returns the parent's pid.
fn check_relatives(pgid: Pgid) -> Result<i32, Refusal> {
    let pgid = pgid.as_raw();
    if sys::getpgrp() == pgid {
        return Err(Refusal::OwnPgroup);
    }
    match sys::getsid() {
        Ok(sid) if sid == pgid => return Err(Refusal::SessionPgroup),
        Ok(_) => {}
        Err(e) => return Err(unverifiable("the caller's session", e)),
    }
    let parent = sys::getppid();
    if parent > 0 {
        match sys::getpgid(parent) {
            Ok(group) if group == pgid => return Err(Refusal::ParentPgroup { parent }),
            Ok(_) => {}
            Err(e) => return Err(unverifiable("the parent's process group", e)),
        }
    }
    Ok(parent)
}

fn unverifiable(what: &'static str, errno: Errno) -> Refusal {
    Refusal::Unverifiable {
        what,
        errno: errno as i32,
    }
}

/// Sends `signal` to the process group `pgid`, unless the guard refuses.
///
/// This is `killpg(2)` ([POSIX]) behind every rule in [`GUARD_RULES`]. The rules are checked
/// on each call, and the guard fails closed: if it cannot tell whether the target is safe,
/// it refuses. `context` says who is asking (a test name, "teardown of server X"); it goes
/// into the tracing events and the error messages.
///
/// Observability: every refusal emits a WARN event named `killpg_guard_refused` with the
/// fields `reason`, `pgid`, `signal` and `context`; every call that reaches the kernel emits a
/// DEBUG event named `killpg_delivered` with `pgid`, `signal`, `context` and `outcome`.
///
/// [POSIX]: https://pubs.opengroup.org/onlinepubs/9799919799/functions/killpg.html
///
/// # Errors
///
/// Refusals and `ESRCH` are not errors: they come back as [`Delivery::Refused`] and
/// [`Delivery::NoSuchGroup`]. Any other failure of `killpg` (`EPERM`: no member may be
/// signalled by the caller) is an [`io::Error`] of the matching kind whose message names the
/// pgid, the signal and `context`.
///
/// # Examples
///
/// ```
/// use std::os::unix::process::CommandExt;
/// use std::process::Command;
/// use pgroup::{safe_killpg, Delivery, Signal};
///
/// // A group this code created is signalled.
/// let mut child = Command::new("sleep").arg("30").process_group(0).spawn()?;
/// let pgid = i32::try_from(child.id()).expect("pids fit in i32");
/// assert_eq!(safe_killpg(pgid, Signal::SIGKILL, "doc")?, Delivery::Sent);
/// child.wait()?;
/// // Once reaped, its id may be recycled at any moment: never signal it again. (This is
/// // why `SpawnedGroup` keeps its leader unreaped until the final SIGKILL.)
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// The dangerous numbers are refused, each with its reason. (This example is not run: a
/// doctest runs in the test process itself, and a test that hands 1 to a broken guard
/// would send SIGKILL to every process the user owns. The crate's own tests probe these
/// values inside a PID-namespace sandbox.)
///
/// ```no_run
/// use pgroup::{safe_killpg, Delivery, Refusal, Signal};
///
/// assert_eq!(safe_killpg(0, Signal::SIGKILL, "doc")?, Delivery::Refused(Refusal::PgidLe1));
/// assert_eq!(safe_killpg(1, Signal::SIGKILL, "doc")?, Delivery::Refused(Refusal::PgidLe1));
/// let own = nix::unistd::getpgrp().as_raw();
/// assert_eq!(safe_killpg(own, Signal::SIGKILL, "doc")?, Delivery::Refused(Refusal::OwnPgroup));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn safe_killpg(pgid: i32, signal: Signal, context: &str) -> io::Result<Delivery> {
    safe_killpg_all(pgid, &[signal], context)
}

/// [`safe_killpg`] for several signals in a row (teardown's SIGTERM and SIGCONT): the guard
/// decides once, then each signal is delivered and reported. Returns the delivery of the
/// last signal; stops at the first that is refused or finds no group.
pub(crate) fn safe_killpg_all(
    pgid: i32,
    signals: &[Signal],
    context: &str,
) -> io::Result<Delivery> {
    let target = match check_pgid(pgid) {
        Ok(target) => target,
        Err(refusal) => return Ok(refused(pgid, signals, context, refusal)),
    };
    deliver(target, signals, context, |signal| {
        sys::killpg(target, signal)
    })
}

/// Signals a group the crate created itself and still holds (a `SpawnedGroup`), with `send`
/// doing the delivery: `pidfd_send_signal` with `PIDFD_SIGNAL_PROCESS_GROUP` on the leader's
/// pidfd, or `killpg` while the leader is unreaped. Such a group cannot be an ancestor's (a
/// group's id is its creator's pid, and our child created it), so only the rules that need
/// no /proc and no descriptor are applied: the id is above 1 (by its type), and is not the
/// caller's own group, its session leader's or its parent's. This is what lets teardown
/// work with no /proc and no free descriptor. Events and errors as [`safe_killpg`].
pub(crate) fn deliver_to_own_group(
    pgid: Pgid,
    signals: &[Signal],
    context: &str,
    send: impl FnMut(Signal) -> Result<(), Errno>,
) -> io::Result<Delivery> {
    if let Err(refusal) = check_relatives(pgid) {
        return Ok(refused(pgid.as_raw(), signals, context, refusal));
    }
    deliver(pgid, signals, context, send)
}

fn refused(pgid: i32, signals: &[Signal], context: &str, refusal: Refusal) -> Delivery {
    for signal in signals {
        tracing::warn!(
            name: "killpg_guard_refused",
            reason = refusal.reason(),
            pgid,
            signal = %signal,
            context,
            detail = %refusal,
            "killpg_guard_refused"
        );
    }
    Delivery::Refused(refusal)
}

/// Delivers each of `signals` with `send`, reporting each; stops at the first that finds no
/// group.
fn deliver(
    target: Pgid,
    signals: &[Signal],
    context: &str,
    mut send: impl FnMut(Signal) -> Result<(), Errno>,
) -> io::Result<Delivery> {
    let pgid = target.as_raw();
    let mut delivery = Delivery::NoSuchGroup;
    for &signal in signals {
        let outcome;
        (delivery, outcome) = match send(signal) {
            Ok(()) => (Delivery::Sent, "sent"),
            Err(Errno::ESRCH) => (Delivery::NoSuchGroup, "no_such_group"),
            Err(errno) => {
                let err = io::Error::from(errno);
                return Err(io::Error::new(
                    err.kind(),
                    format!("killpg(pgid {pgid}, {signal}) for {context:?} failed: {err}"),
                ));
            }
        };
        tracing::debug!(
            name: "killpg_delivered",
            pgid,
            signal = %signal,
            context,
            outcome,
            "killpg_delivered"
        );
        if delivery != Delivery::Sent {
            break;
        }
    }
    Ok(delivery)
}

impl From<sys::Unreadable> for Refusal {
    fn from(e: sys::Unreadable) -> Refusal {
        Refusal::Unverifiable {
            what: e.what,
            errno: e.errno,
        }
    }
}
