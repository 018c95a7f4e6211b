//! [`Containment`]: how tightly a [`SpawnedGroup`](crate::SpawnedGroup) holds its processes.

/// How a [`SpawnedGroup`](crate::SpawnedGroup) keeps track of what it started, chosen with
/// [`Builder::containment`](crate::Builder::containment).
///
/// A process group is only a convention: a child that calls `setsid()` or double-forks
/// leaves it (every daemon does one or the other), and a group's teardown runs in Drop,
/// which does not run when the test binary is SIGKILLed or the group lives in a `static`
/// (the [`lifeline`](crate::lifeline) covers every death but SIGKILL, in every tier).
/// The stronger tiers add a small supervisor process that is the leader's parent: it holds
/// on to what leaves the group, and it dies with the test binary, taking everything with it.
///
/// | tier | catches | needs | costs (spawn + teardown, grace 0, vs `Group`) |
/// | --- | --- | --- | --- |
/// | `Group` | the group's members, when Drop or `shutdown` runs, and through the [`lifeline`](crate::lifeline) when the test binary dies of a signal it can handle or exits | Linux 5.3 (pidfd), or the portable backend (macOS, FreeBSD) | 1x (230–290 µs) |
/// | `Supervised` (default with the Linux backend; `Group` with the portable one) | also processes that left the group (`setsid`, double fork: re-parented to the supervisor, a child subreaper), and everything when the test binary dies (SIGKILL, abort; not an OOM kill, see below) or the value is never dropped (`static`, `mem::forget`) | Linux 5.3, x86_64 or aarch64 (elsewhere the supervisor is forked) | about 1.2–1.5x `Group` (BENCHMARKS.md), the same at any size of the test binary |
/// | `Namespace` | also every process in the new PID namespace, which nothing can leave | root, or unprivileged user namespaces | 5.0–5.2x at 2 MiB, growing with the test binary's memory |
///
/// The default is `Supervised`, by the rule "the strongest tier whose spawn plus teardown
/// costs at most 2x the `Group` tier", measured with
/// `cargo run --release -p pgroup-benches --example report` on a 2-core machine, at 2, 64
/// and 256 MiB resident (BENCHMARKS.md). `Supervised` runs its supervisor in the test
/// binary's own memory (`clone(CLONE_VM)`): it copies no page table and execs nothing, so
/// its cost stays flat as the test binary grows. `Namespace` forks the test binary twice
/// (std cannot use `posix_spawn` with a `pre_exec` hook), so its cost grows with the
/// resident memory (tens of ms at 64 MiB, hundreds at 256 MiB).
///
/// Every row is backed by a test in `tests/containment.rs`.
///
/// For `Supervised`, the supervisor is a process that shares the test binary's memory
/// (`clone(CLONE_VM)`, on a stack of its own): it runs std's `spawn` for the leader while
/// the calling thread waits, so that the `Command` is applied exactly as in `Group` (stdio,
/// environment and `env_clear`, `arg0`, working directory, uid/gid, `pre_exec` hooks, which
/// run in the leader before its exec), then supervises on raw system calls that touch no
/// libc state. Two kernel mechanisms kill every process that shares memory with the test
/// binary: the OOM killer, and a core dump on kernels before 5.16; when the test binary dies
/// of one of those, the supervisor dies with it and the leader is re-parented instead of
/// killed. `Namespace` forks its supervisor from the test binary, as `Supervised` does with
/// `PGROUP_EXEC_SUPERVISOR=off` and on architectures other than x86_64 and aarch64. Either
/// way the supervisor runs only async-signal-safe code, in a
/// process group of its own, outside every test thread; it does not use
/// `PR_SET_PDEATHSIG`, which fires when the spawning *thread* ends (libtest runs each test
/// on its own thread), but watches the test binary *process* itself through a pidfd, and a
/// pipe whose other end the test binary holds: it tears everything down when either says
/// the test binary is gone (a fork of the test binary that never execs keeps a copy of the
/// pipe, but not the test binary, alive). The test binary gets no subreaper attribute and
/// never calls `waitpid(-1)`: how it waits for its other children does not change.
///
/// The supervisor does not trust the signal state it inherits: with SIGCHLD set to `SIG_IGN`
/// in the test binary (the kernel would reap the leader at once), or SIGALRM ignored, or
/// handlers installed, it behaves the same (the leader still gets the test binary's SIGCHLD
/// action, as in `Group`, except with the shared-memory `Supervised` supervisor: there the
/// leader starts with SIGCHLD at its default action). It reaps every orphan re-parented to it as soon as it exits, by
/// pid, but never the leader before teardown: the leader's zombie pins the group id.
///
/// `Namespace` does not downgrade: where a PID namespace cannot be made (no root, and user
/// namespaces forbidden, as on Ubuntu 23.10+ with AppArmor's restriction), spawning fails
/// with an error that says so, and nothing is left running. Inside the namespace the leader
/// is PID 2 (the supervisor is PID 1 and reaps orphans) with a `/proc` of its own.
///
/// # Bounds
///
/// Teardown keeps the same bound in every tier: the grace period plus
/// [`KILL_WAIT_BOUND`](crate::KILL_WAIT_BOUND), whatever the number of orphans or escapees.
/// The supervisor's own wait is a `poll` on a monotonic deadline, not a signal, so it also
/// holds as PID 1 of a namespace and when the test binary ignores SIGALRM. A process that
/// SIGKILL cannot end (uninterruptible sleep; the init of a nested PID namespace, whose exit
/// the kernel holds until every process of that namespace is reaped) makes teardown return
/// a `TimedOut` error within the bound; the supervisor gives up on it and exits, and in
/// `Namespace` the process std spawned (which waits for the namespace's init, itself held by
/// the kernel until that process ends) is reaped by a background thread whenever it exits.
///
/// With `Namespace` (and the forked `Supervised` supervisor), `pre_exec` hooks already
/// registered on the `Command` run in the supervisor, before the leader is forked, not in
/// the leader; with the shared-memory `Supervised` supervisor they run in the leader, as in
/// `Group` (and a hook, uid/gid or a new session make std fork the test binary once, as in
/// `Group`). The forked supervisor's own hook stays in the `Command` but does nothing once
/// its spawn has returned, so the `Command` can be spawned again, in any tier (each such
/// spawn adds one more such hook).
///
/// A file the kernel cannot execute (no `#!` line, not ELF: `ENOEXEC`) fails to spawn in
/// every tier, with that error naming the program, also where std takes its `execvp` path
/// (the supervised tiers, [`Builder::new_session`](crate::Builder::new_session), a `PATH`
/// set on the `Command`), which would run it with `/bin/sh`. (A `pre_exec` hook of your own
/// on a `Group`-tier `Command` still gets std's `execvp` behaviour.)
///
/// # Examples
///
/// ```
/// use std::process::Command;
/// use pgroup::{Builder, Containment};
///
/// # if !Containment::Supervised.is_available() { return Ok(()); }
/// // `setsid sleep` leaves the group; the supervisor still kills it.
/// let group = Builder::new()
///     .containment(Containment::Supervised)
///     .spawn(Command::new("sh").args(["-c", "setsid sleep 60 & sleep 60"]))?;
/// std::thread::sleep(std::time::Duration::from_millis(100));
/// let report = group.shutdown()?;
/// println!("escapees killed: {:?}", report.escapees);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Containment {
    /// A plain POSIX process group: the leader is the test binary's child. The default with
    /// the portable backend (macOS, FreeBSD), which has no other tier.
    #[cfg_attr(not(pgroup_supervised), default)]
    Group,
    /// A supervisor per group: the leader's parent, a child subreaper that reaps orphans,
    /// and tied to the test binary's life by a pidfd and a pipe. The default with the Linux
    /// backend.
    #[cfg_attr(pgroup_supervised, default)]
    Supervised,
    /// The supervisor is init of a new PID namespace: nothing can escape, and the kernel kills
    /// everything in it when the supervisor goes.
    Namespace,
}

impl Containment {
    /// Whether this build of the crate offers the tier: every tier with the Linux backend;
    /// only [`Containment::Group`] with the portable backend (macOS, FreeBSD, and Linux
    /// under `--cfg pgroup_portable`), where spawning a supervised tier fails with
    /// [`std::io::ErrorKind::Unsupported`] and never falls back to a weaker tier. A cross-platform
    /// test suite can choose its tier with it. (`Namespace` may still fail at spawn where
    /// no PID namespace can be made: see [`Containment::Namespace`].)
    ///
    /// # Examples
    ///
    /// ```
    /// use pgroup::Containment;
    ///
    /// assert!(Containment::Group.is_available());
    /// // The strongest tier this platform has, for a server shared by many tests.
    /// let tier = if Containment::Supervised.is_available() {
    ///     Containment::Supervised
    /// } else {
    ///     Containment::Group
    /// };
    /// # let _ = tier;
    /// ```
    #[must_use]
    pub const fn is_available(self) -> bool {
        matches!(self, Containment::Group) || crate::sys::SUPERVISED
    }
}

/// Reads an on/off environment variable: unset, `on`, `1`, `true` (any case) are on; `off`,
/// `0`, `false` (any case) are off; anything else is an error that names the variable and
/// its value.
pub(crate) fn switch(name: &str) -> Result<bool, String> {
    let Some(value) = std::env::var_os(name) else {
        return Ok(true);
    };
    let text = value.to_string_lossy().to_ascii_lowercase();
    match text.trim() {
        "" | "1" | "on" | "true" => Ok(true),
        "0" | "off" | "false" => Ok(false),
        _ => Err(format!(
            "pgroup: {name}={value:?} is not one of on, off, 1, 0, true, false (in any case)"
        )),
    }
}
