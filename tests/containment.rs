//! Containment tiers on real processes: what each tier catches, with negative controls that
//! show the plain `Group` tier leaking where the stronger tiers do not.

// The suite's support reads /proc (leak markers in each process's environ, process states,
// the PID-namespace sandbox): it runs on Linux, with the Linux backend and, in CI, again
// with the portable one (`--cfg pgroup_portable`). Elsewhere it compiles to nothing.
#![cfg(target_os = "linux")]

mod support;

use std::env;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::process::Stdio;
use std::sync::{mpsc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, Flock, FlockArg};
use pgroup::{Builder, Containment, Signal, SpawnedGroup};
use rstest::rstest;
use tracing_test::traced_test;

const GRACE: Duration = Duration::from_millis(300);

#[test]
#[ignore = "entry point of the helper processes the other tests re-execute this binary as"]
#[traced_test]
fn role_entry() {
    support::role_main(&|s| logs_contain(s), &[("hold", hold_role)]);
}

fn tier_named(name: &str) -> Containment {
    match name {
        "group" => Containment::Group,
        "supervised" => Containment::Supervised,
        "namespace" => Containment::Namespace,
        other => panic!("unknown tier {other}"),
    }
}

fn spawn_fixture(marker: &str, tier: Containment, fixture: &str, args: &[&str]) -> SpawnedGroup {
    Builder::new()
        .containment(tier)
        .grace_period(GRACE)
        .spawn(support::fixture(marker, fixture, args).stdout(Stdio::null()))
        .expect("spawn")
}

/// Whether the tier is expected to catch processes that left the group.
fn catches_escapees(tier: Containment) -> bool {
    tier != Containment::Group
}

/// After teardown: nothing left for the strong tiers; for `Group`, the negative control:
/// the escapees are still alive (then this test ends them by pid).
fn check_after_teardown(marker: &str, tier: Containment, escapees: usize) {
    if catches_escapees(tier) {
        support::assert_no_leaks(marker);
    } else {
        thread::sleep(Duration::from_millis(100));
        let alive = support::marked_session_leaders(marker);
        assert_eq!(
            alive.len(),
            escapees,
            "Group tier: the escapees outlive teardown: {alive:?}"
        );
        support::kill_marked(marker);
        support::assert_no_leaks(marker);
    }
}

#[rstest]
fn a_setsid_escaper(
    #[values(Containment::Group, Containment::Supervised, Containment::Namespace)]
    tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("setsid");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let group = spawn_fixture(&marker, tier, "setsid_escaper.sh", &[]);
    support::wait_until("the escaper has its own session", || {
        support::marked_session_leaders(&marker).len() == 1
    });
    let report = group.shutdown().expect("shutdown");
    if catches_escapees(tier) {
        assert_eq!(report.escapees.len(), 1, "{report:?}");
    } else {
        assert!(report.escapees.is_empty());
    }
    check_after_teardown(&marker, tier, 1);
}

/// The daemon's pid once `double_fork_daemon.sh` has settled: two live marked processes,
/// both running `sleep` (the leader, after its `exec`, and the daemon), neither leading a
/// session (the intermediate, which called `setsid`, is gone).
fn daemon_settled(states: &[(i32, String, bool)]) -> Option<i32> {
    let [a, b] = states else {
        return None;
    };
    if [a, b]
        .iter()
        .any(|(_, comm, leads)| comm != "sleep" || *leads)
    {
        return None;
    }
    let session = |pid: i32| {
        procfs::process::Process::new(pid)
            .and_then(|p| p.stat())
            .ok()
            .map(|s| s.session)
    };
    // The leader stays in the test's session; the daemon is in the intermediate's.
    let test_session = nix::unistd::getsid(None).ok().map(|s| s.as_raw());
    match (session(a.0) == test_session, session(b.0) == test_session) {
        (true, false) => Some(b.0),
        (false, true) => Some(a.0),
        _ => None,
    }
}

#[rstest]
fn a_double_fork_daemon(
    #[values(Containment::Group, Containment::Supervised, Containment::Namespace)]
    tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("daemon");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let group = spawn_fixture(&marker, tier, "double_fork_daemon.sh", &[]);
    // The daemon is orphaned inside its own session (not a session leader: it was forked by
    // the one that called setsid, which has exited). Wait for exactly that state: the leader
    // has exec'd `sleep`, which it does only after `wait` reaped the intermediate, and the
    // daemon has exec'd `sleep` too. (Counting two live processes is not enough: the leader
    // and the intermediate, before it forked the daemon, are two as well.)
    support::wait_until("the daemon runs and the leader sleeps", || {
        daemon_settled(&support::marked_states(&marker)).is_some()
    });
    let daemon = daemon_settled(&support::marked_states(&marker)).expect("settled, and stays");
    let before: Vec<String> = support::marked_alive(&marker)
        .iter()
        .map(|pid| {
            format!(
                "{} ppid {:?}",
                support::describe(*pid),
                procfs::process::Process::new(*pid)
                    .and_then(|p| p.stat())
                    .map(|s| s.ppid)
            )
        })
        .collect();
    let report = group.shutdown().expect("shutdown");
    if catches_escapees(tier) {
        assert_eq!(report.escapees.len(), 1, "{report:?} {before:?}");
        support::assert_no_leaks(&marker);
    } else {
        assert_eq!(
            support::marked_alive(&marker),
            vec![daemon],
            "Group tier: the daemon outlives teardown"
        );
        support::kill_marked(&marker);
        support::assert_no_leaks(&marker);
    }
}

#[rstest]
fn a_bounded_fork_bomb(
    #[values(Containment::Group, Containment::Supervised, Containment::Namespace)]
    tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("bomb");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let group = spawn_fixture(&marker, tier, "fork_bomb.sh", &["5"]);
    // 63 shells and 32 setsid sleeps, every sleep in a session of its own: no process of
    // the bomb exits, so 95 is the final count, but a leaf's `setsid` may be counted before
    // it has called setsid(2); until then teardown's killpg still reaches it.
    support::wait_until("the bomb is fully up", || {
        let states = support::marked_states(&marker);
        states.len() == 95
            && states
                .iter()
                .filter(|(_, comm, leads)| comm == "sleep" && *leads)
                .count()
                == 32
    });
    let report = group.shutdown().expect("shutdown");
    if catches_escapees(tier) {
        assert_eq!(report.escapees.len(), 32, "{report:?}");
    }
    check_after_teardown(&marker, tier, 32);
}

/// A group moved out of the thread that spawned it keeps running after that thread ends
/// (`PR_SET_PDEATHSIG` would have killed it: it fires on the parent *thread*'s exit).
#[rstest]
fn a_group_outlives_the_thread_that_spawned_it(
    #[values(Containment::Group, Containment::Supervised, Containment::Namespace)]
    tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("thread");
    let inner = marker.clone();
    let group = thread::spawn(move || {
        Builder::new()
            .containment(tier)
            .spawn(&mut support::marked(&inner, "sleep", &["1000"]))
            .expect("spawn")
    })
    .join()
    .expect("the spawning thread ended");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        group.try_wait().expect("try_wait"),
        None,
        "the group died with its thread"
    );
    assert_eq!(support::marked_alive(&marker).len(), 1);
    assert!(group.signal(Signal::SIGCONT).expect("signal").is_sent());
    drop(group);
    support::assert_no_leaks(&marker);
}

/// The shared fixture of the two tests below: a group in a `static`, never dropped.
fn shared_group() -> MutexGuard<'static, SpawnedGroup> {
    static SHARED: OnceLock<Mutex<SpawnedGroup>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let marker = support::marker("static");
            // These two tests are about a group in a `static`; the portable backend has no
            // `Supervised` tier (`tier_unavailable` asserts that elsewhere), and there the
            // lifeline's exit hook ends the `Group` tier's group instead.
            let tier = if cfg!(pgroup_portable) {
                Containment::Group
            } else {
                Containment::Supervised
            };
            let group = Builder::new()
                .containment(tier)
                .spawn(&mut support::marked(&marker, "sleep", &["1000"]))
                .expect("spawn");
            Mutex::new(group)
        })
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A group held in a `static` across tests is alive and usable in each; it is never
/// dropped, and its supervisor ends it when the test binary exits (`.ci/run`'s final scan
/// for leaked processes, and `statics_and_sigkill_of_the_test_binary` below, check that).
#[test]
fn a_static_group_first_user() {
    let group = shared_group();
    assert_eq!(group.try_wait().expect("try_wait"), None);
    assert!(group.signal(Signal::SIGCONT).expect("signal").is_sent());
}

#[test]
fn a_static_group_second_user() {
    let group = shared_group();
    assert_eq!(group.try_wait().expect("try_wait"), None);
    assert!(group.signal(Signal::SIGCONT).expect("signal").is_sent());
}

/// A helper test binary that spawns groups in the given tier (each holding an inherited,
/// locked file descriptor), keeps one in a `static`, one moved out of an ended thread and
/// one forgotten, prints READY and waits to be killed (or, with `PGROUP_HOLD_EXIT=1`,
/// exits without dropping anything).
fn hold_role(_logs: support::Logs<'_>) -> i32 {
    static HELD: OnceLock<Mutex<Vec<SpawnedGroup>>> = OnceLock::new();
    let tier = tier_named(&env::var("PGROUP_TIER").expect("PGROUP_TIER"));
    let marker = env::var(support::MARKER_VAR).expect("marker");
    let lock = File::options()
        .read(true)
        .write(true)
        .open(env::var("PGROUP_LOCK").expect("PGROUP_LOCK"))
        .expect("open the lock file");
    let lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock).expect("take the lock");
    // Inheritable: every process started from here on holds the lock until it dies.
    fcntl(lock.as_fd(), FcntlArg::F_SETFD(FdFlag::empty())).expect("clear close-on-exec");
    let spawn = |fixture: &str| spawn_fixture(&marker, tier, fixture, &[]);
    let in_static = spawn("setsid_escaper.sh");
    let from_thread = thread::scope(|s| {
        s.spawn(|| spawn("double_fork_daemon.sh"))
            .join()
            .expect("thread")
    });
    let forgotten = spawn("tree.sh");
    HELD.get_or_init(|| Mutex::new(vec![in_static, from_thread]));
    std::mem::forget(forgotten);
    // The fixtures once settled: the escaper (its leader `sh`, which forks its last
    // `sleep`, and the `sleep` in a session of its own), the daemon (its leader, exec'd into
    // `sleep`, and the daemon `sleep`) and the tree (4 `sh`, 6 `sleep`): 5 `sh` and 10
    // `sleep`, one of them leading a session. (This role and the tiers' supervisors, forks
    // of it, carry the marker too.) Nothing here exits, except the daemon's intermediate
    // `sh`, a session leader; all 10 `sleep`s mean every fork and exec is done (the daemon's
    // leader execs only after reaping the intermediate).
    support::wait_until("everything runs", || fixtures_settled(&marker));
    println!("READY");
    if env::var("PGROUP_HOLD_EXIT").as_deref() == Ok("1") {
        std::mem::forget(lock);
        std::process::exit(0); // statics are not dropped, neither is `forgotten`
    }
    thread::sleep(Duration::from_secs(600));
    1
}

/// Whether the fixtures of the `hold` role run in their final state (see there).
fn fixtures_settled(marker: &str) -> bool {
    let states = support::marked_states(marker);
    let count = |name: &str| states.iter().filter(|(_, comm, _)| comm == name).count();
    count("sh") == 5
        && count("sleep") == 10
        && states
            .iter()
            .filter(|(_, comm, leads)| *leads && (comm == "sh" || comm == "sleep"))
            .count()
            == 1
}

/// Runs the `hold` role and ends it: with SIGKILL, or by letting it exit on its own.
/// Returns the lock file, held by everything the role started until all of it is dead.
fn run_hold_role(tier: &str, marker: &str, sigkill: bool) -> (tempfile::NamedTempFile, Duration) {
    let lock = tempfile::NamedTempFile::new().expect("lock file");
    let mut cmd = support::role_command("hold");
    cmd.env(support::MARKER_VAR, marker)
        .env("PGROUP_TIER", tier)
        .env("PGROUP_LOCK", lock.path())
        .env("PGROUP_HOLD_EXIT", if sigkill { "0" } else { "1" })
        .stdout(Stdio::piped());
    let mut role = cmd.spawn().expect("spawn the role");
    let stdout = role.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line == "READY" {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the role got ready");
    let started = Instant::now();
    if sigkill {
        role.kill()
            .expect("SIGKILL our own child, the stand-in for a test binary");
    }
    role.wait().expect("reap the role");
    (lock, started.elapsed())
}

/// Whether the lock can be taken within `within`: only once every process holding the
/// inherited descriptor is dead.
fn lock_freed(lock: &tempfile::NamedTempFile, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let file = File::options()
            .read(true)
            .write(true)
            .open(lock.path())
            .expect("open");
        if Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The test binary itself dies by SIGKILL (a nextest timeout past its grace period, a
/// cancelled CI job), or exits with groups it never dropped: no Drop runs. With a
/// supervisor, everything it started dies anyway, including what was in a `static`, what a
/// finished thread spawned, what was forgotten, and what escaped; the lock that every one of
/// those processes holds proves it. The `Group` tier is the negative control: on SIGKILL
/// everything leaks; on exit the lifeline kills the groups, and only what escaped them
/// leaks.
#[rstest]
fn statics_and_sigkill_of_the_test_binary(
    #[values("group", "supervised", "namespace")] tier: &str,
    #[values(true, false)] sigkill: bool,
) {
    if support::tier_unavailable(tier_named(tier)) {
        return;
    }
    let marker = support::marker(&format!("hold-{tier}"));
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let (lock, _) = run_hold_role(tier, &marker, sigkill);
    if tier == "group" && sigkill {
        assert!(
            !lock_freed(&lock, Duration::from_millis(500)),
            "Group tier: expected the groups to leak"
        );
        // Nothing was torn down: the fixtures are as the role left them.
        assert!(fixtures_settled(&marker));
        support::kill_marked(&marker);
        support::assert_no_leaks(&marker);
    } else if tier == "group" {
        // `exit` runs the lifeline's atexit hook: every group member dies, in the `static`,
        // from the finished thread and forgotten alike. What left its group (the `setsid`
        // sleep and the daemon, each in a session of its own) is out of the Group tier's
        // reach and survives: the negative control of the supervised tiers.
        let ours = nix::unistd::getsid(None).expect("getsid");
        let session_of = |pid: i32| {
            procfs::process::Process::new(pid)
                .and_then(|p| p.stat())
                .map(|s| s.session)
        };
        support::wait_until("every group member is dead", || {
            support::marked_alive(&marker)
                .iter()
                .all(|pid| session_of(*pid).is_ok_and(|s| s != ours.as_raw()))
        });
        assert_eq!(
            support::marked_alive(&marker).len(),
            2,
            "Group tier: the setsid escaper and the daemon outlive the test binary"
        );
        assert!(!lock_freed(&lock, Duration::from_millis(100)));
        support::kill_marked(&marker);
        support::assert_no_leaks(&marker);
    } else {
        assert!(
            lock_freed(&lock, Duration::from_secs(10)),
            "a process of the {tier} tier outlived the test binary"
        );
        support::assert_no_leaks(&marker);
    }
}

/// A program that does not exist: every tier fails with the OS error naming it, and the
/// supervisor (which had already forked the leader when the exec failed) does not hang
/// the spawn: it sees the leader die before exec and exits, so std can reap it.
#[rstest]
fn a_missing_program_fails_cleanly(
    #[values(Containment::Group, Containment::Supervised, Containment::Namespace)]
    tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("missing");
    let err = Builder::new()
        .containment(tier)
        .spawn(&mut support::marked(&marker, "/no/such/program", &[]))
        .unwrap_err();
    // NotFound, not TimedOut: the spawn did not wait out the bound on the supervisor's
    // report (no clock needed to tell).
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("/no/such/program"), "{err}");
    support::assert_no_leaks(&marker);
}

/// A leader that exits on its own is reported with its status by every tier, and its
/// grandchildren are still torn down.
#[rstest]
fn exit_status_through_the_supervisor(
    #[values(Containment::Group, Containment::Supervised, Containment::Namespace)]
    tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("status");
    let group = spawn_fixture(&marker, tier, "leader_exits_at_once.sh", &[]);
    let status = group.wait_timeout(Duration::from_secs(10)).expect("wait");
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let code = Builder::new()
        .containment(tier)
        .spawn(&mut support::marked(&marker, "sh", &["-c", "exit 42"]))
        .expect("spawn");
    assert_eq!(code.wait().expect("wait").code(), Some(42));
    assert_eq!(code.shutdown().expect("shutdown").status.code(), Some(42));
    let report = group.shutdown().expect("shutdown");
    assert!(report.exited_before_teardown);
    support::assert_no_leaks(&marker);
}

/// Which tiers the build offers, and that a missing one is refused at spawn, never
/// downgraded: with the Linux backend every tier exists; with the portable backend (macOS,
/// FreeBSD, and here under `--cfg pgroup_portable`) only `Group` does, and spawning
/// `Supervised` or `Namespace` fails with `ErrorKind::Unsupported`, an error that names the
/// tier and the platform, starting nothing.
#[test]
fn a_tier_the_backend_lacks_fails_at_spawn_and_never_downgrades() {
    let portable = cfg!(pgroup_portable);
    assert!(Containment::Group.is_available());
    for tier in [Containment::Supervised, Containment::Namespace] {
        assert_eq!(tier.is_available(), !portable, "{tier:?}");
        if !portable {
            continue;
        }
        let marker = support::marker("no-downgrade");
        let err = Builder::new()
            .containment(tier)
            .spawn(&mut support::marked(&marker, "sleep", &["1000"]))
            .map(drop)
            .expect_err("spawned a tier the backend lacks");
        assert_eq!(err.kind(), std::io::ErrorKind::Unsupported, "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("Containment::{tier:?}")), "{text}");
        assert!(text.contains(std::env::consts::OS), "{text}");
        support::assert_no_leaks(&marker);
    }
}
