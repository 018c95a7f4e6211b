//! [`Containment`]: how tightly a [`SpawnedGroup`](crate::SpawnedGroup) holds its processes.

/// How a [`SpawnedGroup`](crate::SpawnedGroup) keeps track of what it started, chosen with
/// [`Builder::containment`](crate::Builder::containment).
///
/// A process group is only a convention: a child that calls `setsid()` or double-forks
/// leaves it (every daemon does one or the other), and a group's teardown runs in Drop,
/// which does not run when the test binary is SIGKILLed or the group lives in a `static`
/// (the [`lifeline`](crate::lifeline) covers every death but SIGKILL, in every tier).
/// The stronger tiers add a small supervisor process that is the leader's parent: it holds
/// on to what leaves the group, and it outlives the test binary just long enough to take
/// everything with it.
///
/// | tier | catches | needs | costs (spawn + teardown, vs `Group`) |
/// | --- | --- | --- | --- |
/// | `Group` | the group's members, when Drop or `shutdown` runs, and through the [`lifeline`](crate::lifeline) when the test binary dies of a signal it can handle or exits | Linux 5.3 (pidfd), or the portable backend (macOS, FreeBSD) | 1× (about 100–250 µs on the 2-core machine of the benchmarks) |
/// | `Supervised` (default with the Linux backend; `Group` with the portable one) | also processes that left the group (`setsid`, double fork: re-parented to the supervisor, a child subreaper), and everything when the test binary dies of SIGKILL, a crash or the OOM killer, or the value is never dropped (`static`, `mem::forget`) | Linux 5.3 on x86_64 or aarch64 | about 1.6–1.8× at grace 0 and 2–2.2× with the default grace (150–220 µs more), the same at any size of the test binary |
/// | `Namespace` | also every process in the new PID namespace, which nothing can leave | as `Supervised`, and root or unprivileged user namespaces, and a seccomp profile that allows them | about 2.5–3×, the same at any size of the test binary |
///
/// Where tests run:
///
/// | condition | `Group` | `Supervised` | `Namespace` |
/// | --- | --- | --- | --- |
/// | a container with Docker's or containerd's default seccomp profile (Kubernetes `RuntimeDefault`: no `unshare`, no namespace flags to `clone`, no `clone3`) | works | works | fails at spawn, with an error that names the cause and `Supervised` |
/// | gdb, with breakpoints in the test's code or in libc | works | works: the supervisor's spawner is a `vfork` child, which debuggers know | works |
/// | valgrind | as the test binary's own children (valgrind 3.19 lacks `pidfd_open`: spawning fails with `ErrorKind::Unsupported`, saying so) | as `Group` | as `Group` |
/// | the test binary killed by the OOM killer | **not cleaned** | cleaned: the supervisor is a program of a few KiB of its own, which the OOM killer does not pick | cleaned |
/// | another thread of the test binary holds a lock (std's environment lock, the allocator's) when it is SIGKILLed | **not cleaned** | cleaned | cleaned |
/// | forks of the test binary that never exec (they hold copies of its descriptors) | works | works | works |
/// | executable `memfd`s refused (`vm.memfd_noexec = 2`, an LSM policy), or `PGROUP_SUPERVISOR_PROGRAM=off` | — | works, with a forked supervisor (a WARN event `supervisor_program_unavailable` says why): the same guarantees, a cost that grows with the test binary's memory | likewise |
///
/// Each row of both tables is backed by a test, in the repository's `tests/containment.rs`
/// and `tests/where_tests_run.rs` (the valgrind and OOM rows too, where valgrind and a
/// memory cgroup are available).
///
/// # The supervisor
///
/// The supervisor is a freestanding program of a few KiB (no C library, no dynamic loader),
/// built with the crate and executed from memory. It starts like this: the calling thread
/// creates a *spawner* with `clone(CLONE_VM | CLONE_VFORK)`, as `posix_spawn` creates its
/// child, and is suspended by the kernel until the spawner has exec'd. The spawner leaves
/// the test binary's process group, becomes a child subreaper (for `Namespace`: init of new
/// PID and mount namespaces, with a `/proc` of its own), and runs std's `Command::spawn` for
/// the leader with the calling thread's signal mask: every setting of the `Command` is
/// applied by std as in `Group` (stdio, environment and `env_clear`, `arg0`, working
/// directory, uid/gid, `pre_exec` hooks, which run in the leader before its exec), with
/// `posix_spawn` where std can. Then it hands the leader's pidfd and stdio pipes to the test
/// binary and execs the supervisor program. From then on the supervisor shares no memory,
/// descriptor or signal handler with the test binary: debuggers, the OOM killer and a lock
/// held by a dead thread of the test binary do not touch it. Should the test binary die
/// while the spawner still runs std's code, the spawner's parent-death signal kills what it
/// started, and the spawner with it.
///
/// The supervisor runs in a process group of its own (a SIGKILL to the test binary's group,
/// as nextest sends at its timeout, does not reach it), blocks every signal, holds none of
/// the test binary's descriptors (its stdout and stderr included: `cargo test | tee` sees
/// the end), and works in `/`. It watches the test binary through a pidfd on it, not
/// `PR_SET_PDEATHSIG`, which fires when the spawning *thread* ends (libtest runs each test
/// on its own thread). When the test binary goes, it kills the group and every process that
/// left it, reaps them and exits. `ps` shows it as `pgroup-supervisor leader=<pid>
/// channel=<fd> parent=<fd>` (command name `pgroup-supervis`), the leader's parent. The test
/// binary gets no subreaper attribute and never calls `waitpid(-1)`: how it waits for its
/// other children does not change.
///
/// The supervisor does not trust the signal state it inherits: with SIGCHLD set to `SIG_IGN`
/// in the test binary (the kernel would reap the leader at once), or SIGALRM ignored, or
/// handlers installed, it behaves the same. The leader starts with SIGCHLD at its default
/// action even when the test binary ignores it (the forked supervisor gives it the test
/// binary's action, as in `Group`). The supervisor reaps every orphan re-parented to it as
/// soon as it exits, by pid, but never the leader before teardown: the leader's zombie pins
/// the group id.
///
/// A supervised group holds two descriptors in the test binary: a pidfd on the leader and a
/// socket to the supervisor (three during its teardown, with a pidfd on the supervisor), and
/// the process holds two more for all groups (the program's `memfd` and a pidfd on itself).
/// `Group` holds one.
///
/// Should the supervisor itself die (killed by someone), teardown still ends the group
/// through the leader's pidfd (Linux 6.9: `PIDFD_SIGNAL_PROCESS_GROUP`), returns an error
/// that says the leader's status is lost, and the processes that had left the group are not
/// reached; the [`lifeline`](crate::lifeline) signals such a group only through that pidfd,
/// never by its number.
///
/// Where the supervisor program cannot be executed (see the table above), the supervisor is
/// a fork of the test binary instead: std forks the child for the `Command` with a
/// `pre_exec` hook that forks the leader and then runs the same supervisor in the copy. The
/// guarantees are the same; the fork copies the test binary's page tables (its cost grows
/// with the test binary's resident memory: milliseconds at 64 MiB, tens of them at 256),
/// and `pre_exec` hooks of the `Command` run in the supervisor's copy before the leader is
/// forked, not in the leader.
///
/// `Namespace` does not downgrade: where a PID namespace cannot be made (no root, and user
/// namespaces forbidden, as on Ubuntu 23.10+ with AppArmor's restriction; a seccomp profile
/// that refuses namespace flags), spawning fails with an error that says so, and nothing is
/// left running. Inside the namespace the leader is PID 2 (the supervisor is PID 1 and reaps
/// orphans) with a `/proc` of its own.
///
/// # Why `Supervised` is the default
///
/// It works wherever `Group` works (the table above), and catches what `Group` cannot: the
/// processes that leave the group, and every death of the test binary. What it costs is the
/// start of one small program and the wake-ups between three processes instead of two: on
/// the 2-core virtual machine of the benchmarks, 100–220 µs more per spawn and teardown
/// than `Group` (1.45–2.2×), the same at 2, 64 and 256 MiB of resident memory (BENCHMARKS.md
/// in the package, made by `cargo run --release -p pgroup-benches --example report` in the
/// repository). A supervisor that shares the test binary's memory instead of executing a
/// program would cost less (1.2–1.5×), and breaks under gdb, valgrind and Docker's seccomp
/// profile, and with the OOM killer: robustness comes first in a crate for test suites.
///
/// # Bounds
///
/// Teardown keeps the same bound in every tier: the grace period plus
/// [`KILL_WAIT_BOUND`](crate::KILL_WAIT_BOUND), whatever the number of orphans or escapees.
/// The supervisor's own wait is a `poll` on a monotonic deadline, not a signal, so it also
/// holds as PID 1 of a namespace and when the test binary ignores SIGALRM. A process that
/// SIGKILL cannot end (uninterruptible sleep; the init of a nested PID namespace, whose exit
/// the kernel holds until every process of that namespace is reaped) makes teardown return
/// a `TimedOut` error within the bound; the supervisor gives up on it and exits, and is
/// reaped by a background thread whenever it can be.
///
/// A file the kernel cannot execute (no `#!` line, not ELF: `ENOEXEC`) fails to spawn in
/// every tier, with that error naming the program, also where std takes its `execvp` path
/// ([`Builder::new_session`](crate::Builder::new_session), a `PATH` set on the `Command`,
/// the forked supervisor), which would run it with `/bin/sh`. (A `pre_exec` hook of your own
/// still gets std's `execvp` behaviour.)
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
    /// tied to the test binary's life by a pidfd on it. The default with the Linux backend on
    /// x86_64 and aarch64.
    #[cfg_attr(pgroup_supervised, default)]
    Supervised,
    /// The supervisor is init of a new PID namespace: nothing can escape, and the kernel kills
    /// everything in it when the supervisor goes.
    Namespace,
}

impl Containment {
    /// Whether this build of the crate offers the tier: every tier with the Linux backend on
    /// x86_64 and aarch64; only [`Containment::Group`] elsewhere (other architectures, and
    /// the portable backend: macOS, FreeBSD, and Linux under `--cfg pgroup_portable`), where
    /// spawning a supervised tier fails with [`std::io::ErrorKind::Unsupported`] and never
    /// falls back to a weaker tier. A cross-platform test suite can choose its tier with it.
    /// (`Namespace` may still fail at spawn where no PID namespace can be made: see
    /// [`Containment::Namespace`].)
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

/// A process that had left the group and was killed by the supervisor at teardown: an entry
/// of [`Teardown::escapees`](crate::Teardown::escapees).
///
/// # Examples
///
/// ```
/// use std::process::Command;
/// use pgroup::{Builder, Containment};
///
/// # if !Containment::Supervised.is_available() { return Ok(()); }
/// let group = Builder::new()
///     .containment(Containment::Supervised)
///     .spawn(Command::new("sh").args(["-c", "setsid sleep 30 & sleep 30"]))?;
/// for escapee in group.shutdown()?.escapees {
///     println!("killed {:?} (in the namespace: {:?})", escapee.pid, escapee.pid_in_namespace);
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub struct Escapee {
    /// Its pid in the caller's PID namespace: the one [`SpawnedGroup::id`](crate::SpawnedGroup::id), /proc and
    /// `kill` use in the test binary. `None` only in the `Namespace` tier, for a process
    /// that was started after teardown began and could not be looked up.
    pub pid: Option<u32>,
    /// Its pid inside the group's PID namespace, as the process saw itself (`getpid`, a pid
    /// file it wrote): [`Containment::Namespace`] only.
    pub pid_in_namespace: Option<u32>,
}
