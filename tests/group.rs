//! `SpawnedGroup` against hostile fixtures, on real processes.
//!
//! Each test marks the processes it starts with its own `PGROUP_LEAK_MARKER` value and
//! proves, by scanning /proc, that none of them survives `shutdown()` or Drop. These tests
//! only ever signal groups they created (through the crate), so they run in the test process.

// The suite's support reads /proc (leak markers in each process's environ, process states,
// the PID-namespace sandbox): it runs on Linux, with the Linux backend and, in CI, again
// with the portable one (`--cfg pgroup_portable`). Elsewhere it compiles to nothing.
#![cfg(target_os = "linux")]

mod support;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use pgroup::{Builder, Containment, Delivery, Signal, SpawnedGroup, Teardown};
use procfs::process::Process;
use rstest::rstest;
use tracing_test::traced_test;

const SHORT_GRACE: Duration = Duration::from_millis(300);

#[test]
#[ignore = "entry point of the helper processes the other tests re-execute this binary as"]
#[traced_test]
fn role_entry() {
    support::role_main(&|s| logs_contain(s), &[("fd-count", fd_count_role)]);
}

/// Spawns 16 groups in the tier named by `PGROUP_TIER`, all alive at once, and prints the
/// open descriptors before, while they live, and after their teardown. Runs as its own
/// process, so other tests' descriptors do not blur the count.
fn fd_count_role(_logs: support::Logs<'_>) -> i32 {
    let tier = match std::env::var("PGROUP_TIER").as_deref() {
        Ok("supervised") => Containment::Supervised,
        Ok("namespace") => Containment::Namespace,
        _ => Containment::Group,
    };
    let marker = std::env::var(support::MARKER_VAR).expect("marker");
    // Warm up once: the first spawn opens descriptors that stay (e.g. procfs's caches).
    drop(
        Builder::new()
            .containment(tier)
            .spawn(&mut support::marked(&marker, "true", &[])),
    );
    let before = support::held_fds();
    let groups: Vec<SpawnedGroup> = (0..16)
        .map(|_| {
            Builder::new()
                .containment(tier)
                .grace_period(Duration::ZERO)
                .spawn(&mut support::marked(&marker, "sleep", &["1000"]))
                .expect("spawn")
        })
        .collect();
    let during = support::held_fds();
    for group in groups {
        group.shutdown().expect("shutdown");
    }
    let after = support::held_fds();
    println!("FDS {before} {during} {after}");
    0
}

/// Descriptors per group are few and bounded, and teardown closes every one of them.
#[rstest]
fn descriptors_are_few_and_closed_at_teardown(
    #[values("group", "supervised", "namespace")] tier: &str,
) {
    let named = match tier {
        "supervised" => Containment::Supervised,
        "namespace" => Containment::Namespace,
        _ => Containment::Group,
    };
    if support::tier_unavailable(named) {
        return;
    }
    let marker = support::marker("fds");
    let mut cmd = support::role_command("fd-count");
    cmd.env(support::MARKER_VAR, &marker)
        .env("PGROUP_TIER", tier)
        .stdout(Stdio::piped());
    let out = support::run_collecting(cmd, Duration::from_secs(60));
    let fds: Vec<usize> = out
        .one("FDS")
        .split(' ')
        .map(|n| n.parse().expect("count"))
        .collect();
    let (before, during, after) = (fds[0], fds[1], fds[2]);
    let per_group = (during - before) / 16;
    // One pidfd on the leader (Group); the supervised tiers add the socket to the
    // supervisor (the docs promise at most two). The portable backend's exit notification is
    // a pipe: its two ends (one held by the watcher thread) stand for the pidfd, and the
    // leader's /proc directory tells it from a later process with its number.
    let bound = match tier {
        "group" if cfg!(pgroup_portable) => 3,
        "group" => 1,
        _ => 2,
    };
    assert_eq!(
        during - before,
        16 * bound,
        "{tier}: {fds:?}, {per_group} per group"
    );
    assert_eq!(
        after, before,
        "{tier}: descriptors left open after teardown: {fds:?}"
    );
    support::assert_no_leaks(&marker);
}

/// Marked processes whose command name is `comm`.
fn marked_named(marker: &str, comm: &str) -> usize {
    support::marked_alive(marker)
        .into_iter()
        .filter(|pid| {
            Process::new(*pid)
                .and_then(|p| p.stat())
                .is_ok_and(|s| s.comm == comm)
        })
        .count()
}

fn state_of(pid: u32) -> Option<char> {
    let pid = i32::try_from(pid).ok()?;
    Process::new(pid)
        .and_then(|p| p.stat())
        .ok()
        .map(|s| s.state)
}

fn spawn_fixture(marker: &str, name: &str, grace: Duration) -> SpawnedGroup {
    Builder::new()
        .grace_period(grace)
        .spawn(support::fixture(marker, name, &[]).stdout(Stdio::null()))
        .expect("spawn fixture")
}

/// How a test ends the group: the checked `shutdown()` or a plain drop.
#[derive(Debug, Clone, Copy)]
enum End {
    Shutdown,
    Drop,
}

fn end(group: SpawnedGroup, how: End) -> Option<Teardown> {
    match how {
        End::Shutdown => Some(group.shutdown().expect("shutdown")),
        End::Drop => {
            drop(group);
            None
        }
    }
}

#[rstest]
fn a_tree_of_grandchildren_is_torn_down(#[values(End::Shutdown, End::Drop)] how: End) {
    let marker = support::marker("tree");
    let group = spawn_fixture(&marker, "tree.sh", SHORT_GRACE);
    support::wait_until("6 grandchildren sleep", || {
        marked_named(&marker, "sleep") == 6
    });
    assert_eq!(support::marked_alive(&marker).len(), 10);
    if let Some(report) = end(group, how) {
        assert!(!report.sigkill_needed, "{report:?}");
        // Everything exited within the grace period (no clock: `sigkill_needed` says it).
        assert_eq!(report.descendants_seen, 9, "{report:?}");
    }
    support::assert_no_leaks(&marker);
}

#[rstest]
fn a_leader_that_ignores_sigterm_is_killed(#[values(End::Shutdown, End::Drop)] how: End) {
    let marker = support::marker("leader-ignores-term");
    let group = spawn_fixture(&marker, "leader_ignores_term.sh", SHORT_GRACE);
    support::wait_until("the trap is set and the sleep started", || {
        marked_named(&marker, "sleep") == 1
    });
    if let Some(report) = end(group, how) {
        assert!(report.sigkill_needed, "{report:?}");
        assert!(report.elapsed >= SHORT_GRACE, "{report:?}");
        assert_eq!(report.status.to_string(), "signal: 9 (SIGKILL)");
    }
    support::assert_no_leaks(&marker);
}

#[rstest]
fn a_grandchild_that_ignores_sigterm_is_killed(#[values(End::Shutdown, End::Drop)] how: End) {
    let marker = support::marker("grandchild-ignores-term");
    let group = spawn_fixture(&marker, "grandchild_ignores_term.sh", SHORT_GRACE);
    support::wait_until("both grandchildren sleep", || {
        marked_named(&marker, "sleep") == 2
    });
    if let Some(report) = end(group, how) {
        // The leader exits on SIGTERM, the stubborn grandchild costs the grace period.
        assert!(report.sigkill_needed, "{report:?}");
        assert_eq!(report.status.to_string(), "signal: 15 (SIGTERM)");
        assert_eq!(report.descendants_seen, 2, "{report:?}");
    }
    support::assert_no_leaks(&marker);
}

#[rstest]
fn grandchildren_of_a_leader_that_exited_are_torn_down(
    #[values(End::Shutdown, End::Drop)] how: End,
) {
    let marker = support::marker("leader-exits");
    let group = spawn_fixture(&marker, "leader_exits_at_once.sh", SHORT_GRACE);
    let status = group.wait_timeout(Duration::from_secs(10)).expect("wait");
    assert_eq!(status.map(|s| s.code()), Some(Some(0)));
    support::wait_until("both orphans sleep", || marked_named(&marker, "sleep") == 2);
    if let Some(report) = end(group, how) {
        assert!(report.exited_before_teardown);
        assert_eq!(report.status.code(), Some(0));
    }
    support::assert_no_leaks(&marker);
}

#[rstest]
fn stopped_processes_are_continued_and_torn_down(#[values(End::Shutdown, End::Drop)] how: End) {
    let marker = support::marker("stopped");
    let group = spawn_fixture(&marker, "stopped.sh", Duration::from_secs(5));
    let leader = group.id();
    support::wait_until("the leader has stopped itself", || {
        state_of(leader) == Some('T')
    });
    if let Some(report) = end(group, how) {
        // SIGCONT after SIGTERM: both act on TERM at once, well inside the grace period.
        assert!(!report.sigkill_needed, "{report:?}");
        assert_eq!(report.status.to_string(), "signal: 15 (SIGTERM)");
    }
    support::assert_no_leaks(&marker);
}

/// A grandchild that holds the stdout pipe: waiting for the leader does not block on the
/// pipe, and after teardown the pipe reaches end of file.
#[rstest]
fn a_grandchild_holding_stdout_does_not_block(#[values(End::Shutdown, End::Drop)] how: End) {
    let marker = support::marker("holds-stdout");
    let mut group = Builder::new()
        .grace_period(SHORT_GRACE)
        .spawn(support::fixture(&marker, "holds_stdout.sh", &[]).stdout(Stdio::piped()))
        .expect("spawn");
    let mut stdout = BufReader::new(group.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read");
    assert_eq!(line, "ready\n");
    let status = group.wait_timeout(Duration::from_secs(10)).expect("wait");
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "the leader's exit was not seen"
    );
    // The grandchild still holds the pipe (it may still be between fork and exec).
    support::wait_until("the grandchild sleeps", || {
        marked_named(&marker, "sleep") == 1
    });
    end(group, how);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        let _ = tx.send(rest);
    });
    let rest = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("stdout reaches end of file once the group is gone");
    assert_eq!(rest, "");
    support::assert_no_leaks(&marker);
}

/// A process that exits as soon as it starts, torn down at once, many times: teardown races
/// with its exit and must always succeed.
#[rstest]
fn a_process_that_exits_immediately(#[values(End::Shutdown, End::Drop)] how: End) {
    let marker = support::marker("exits-immediately");
    for _ in 0..50 {
        let group = spawn_fixture(&marker, "exits_immediately.sh", SHORT_GRACE);
        if let Some(report) = end(group, how) {
            assert!(
                report.status.success() || report.status.signal().is_some(),
                "{report:?}"
            );
        }
    }
    support::assert_no_leaks(&marker);
}

/// Drop tears the group down while a failed assertion unwinds.
#[test]
fn drop_cleans_up_during_a_panic() {
    let marker = support::marker("panic");
    let inner = marker.clone();
    let result = thread::spawn(move || {
        let _group = Builder::new()
            .grace_period(SHORT_GRACE)
            .spawn(&mut support::fixture(&inner, "tree.sh", &[]))
            .expect("spawn");
        support::wait_until("the tree is up", || marked_named(&inner, "sleep") == 6);
        assert_eq!(1 + 1, 3, "a failing test");
    })
    .join();
    assert!(result.is_err(), "the thread should have panicked");
    support::assert_no_leaks(&marker);
}

/// The exit status: observed without reaping (the leader stays a zombie, pinning the id),
/// and the same on every call.
#[test]
fn waiting_reports_the_status_and_keeps_the_group_pinned() {
    let marker = support::marker("pinned");
    let group =
        SpawnedGroup::spawn(&mut support::marked(&marker, "sh", &["-c", "exit 7"])).expect("spawn");
    let leader = group.id();
    assert_eq!(group.wait().expect("wait").code(), Some(7));
    assert_eq!(
        group.try_wait().expect("try_wait").and_then(|s| s.code()),
        Some(7)
    );
    assert_eq!(
        group
            .wait_timeout(Duration::ZERO)
            .expect("wait_timeout")
            .and_then(|s| s.code()),
        Some(7)
    );
    // Still unreaped: the zombie keeps the number, so the group can still be named safely.
    assert_eq!(state_of(leader), Some('Z'));
    assert_eq!(
        group.signal(Signal::SIGTERM).expect("signal"),
        Delivery::Sent
    );
    let report = group.shutdown().expect("shutdown");
    assert_eq!(report.status.code(), Some(7));
    assert!(report.exited_before_teardown);
    // Reaped now; whatever has this pid (normally nothing) is not our zombie.
    assert_ne!(state_of(leader), Some('Z'));
}

/// The invariant, from the crate's own events: once a group's leader is reaped, no signal
/// is ever sent to that group id again.
#[test]
#[traced_test]
fn no_signal_after_the_leader_is_reaped() {
    let marker = support::marker("no-signal-after-reap");
    let mut pgids = Vec::new();
    for fixture in ["tree.sh", "leader_exits_at_once.sh", "exits_immediately.sh"] {
        let group = spawn_fixture(&marker, fixture, SHORT_GRACE);
        pgids.push(group.pgid().as_raw());
        thread::sleep(Duration::from_millis(20));
        drop(group);
    }
    support::assert_no_leaks(&marker);
    logs_assert(|lines: &[&str]| {
        for pgid in &pgids {
            let reaped = lines
                .iter()
                .position(|l| l.contains(&format!("leader_reaped pgid={pgid}")))
                .ok_or(format!("no leader_reaped event for {pgid}"))?;
            let signals: Vec<usize> = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.contains(&format!("killpg_delivered pgid={pgid} ")))
                .map(|(i, _)| i)
                .collect();
            if signals.len() != 3 {
                return Err(format!(
                    "expected TERM, CONT and KILL for {pgid}, got {signals:?}"
                ));
            }
            if signals.iter().any(|i| *i > reaped) {
                return Err(format!(
                    "group {pgid} was signalled after its leader was reaped"
                ));
            }
        }
        Ok(())
    });
}

/// A program that does not exist: a clear error naming it, and nothing left behind.
#[test]
fn spawning_a_missing_program_fails_cleanly() {
    let marker = support::marker("missing");
    let err =
        SpawnedGroup::spawn(&mut support::marked(&marker, "/no/such/program", &[])).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("/no/such/program"), "{err}");
    support::assert_no_leaks(&marker);
}

/// Grace zero goes straight to SIGKILL.
#[test]
fn grace_zero_goes_straight_to_sigkill() {
    let marker = support::marker("grace-zero");
    let group = Builder::new()
        .grace_period(Duration::ZERO)
        .spawn(&mut support::marked(&marker, "sleep", &["1000"]))
        .expect("spawn");
    let report = group.shutdown().expect("shutdown");
    assert!(report.sigkill_needed);
    assert_eq!(report.status.to_string(), "signal: 9 (SIGKILL)");
    support::assert_no_leaks(&marker);
}

/// `signal` reaches every member of the group, and only through the guard.
#[test]
#[traced_test]
fn signal_reaches_the_whole_group() {
    let marker = support::marker("signal");
    let group = spawn_fixture(&marker, "tree.sh", SHORT_GRACE);
    support::wait_until("the tree is up", || marked_named(&marker, "sleep") == 6);
    assert_eq!(
        group.signal(Signal::SIGKILL).expect("signal"),
        Delivery::Sent
    );
    assert_eq!(group.wait().expect("wait").signal(), Some(9));
    support::assert_no_leaks(&marker);
    let pgid = group.pgid().as_raw();
    assert!(logs_contain(&format!(
        "killpg_delivered pgid={pgid} signal=SIGKILL"
    )));
    drop(group);
}

/// A new session instead of a new group: same teardown.
#[test]
fn new_session_groups_are_torn_down() {
    let marker = support::marker("session");
    let group = Builder::new()
        .new_session(true)
        .grace_period(SHORT_GRACE)
        .spawn(&mut support::fixture(&marker, "tree.sh", &[]))
        .expect("spawn");
    let pid = i32::try_from(group.id()).expect("pid");
    support::wait_until("the tree is up", || marked_named(&marker, "sleep") == 6);
    let stat = Process::new(pid).and_then(|p| p.stat()).expect("stat");
    assert_eq!((stat.session, stat.pgrp), (pid, pid));
    drop(group);
    support::assert_no_leaks(&marker);
}

/// `SpawnedGroup` can move to another thread and into fixtures.
#[test]
fn spawned_group_is_send_and_debug() {
    fn assert_send<T: Send + std::fmt::Debug>() {}
    assert_send::<SpawnedGroup>();
    assert_send::<Teardown>();
    let marker = support::marker("send");
    let group =
        SpawnedGroup::spawn(&mut support::marked(&marker, "sleep", &["1000"])).expect("spawn");
    let debug = format!("{group:?}");
    assert!(
        debug.contains("SpawnedGroup") && debug.contains("pgid"),
        "{debug}"
    );
    let report = thread::spawn(move || group.shutdown())
        .join()
        .expect("join")
        .expect("shutdown");
    assert!(!report.sigkill_needed);
    support::assert_no_leaks(&marker);
}

/// Many groups spawned and dropped from several threads, while other threads wait on plain
/// std children: no leak, and every std child gets its own exit status (nothing reaped
/// them behind std's back with `waitpid(-1)`).
#[test]
fn stress_groups_and_std_children_side_by_side() {
    let marker = support::marker("stress");
    let mut threads = Vec::new();
    for t in 0..4 {
        let marker = marker.clone();
        threads.push(thread::spawn(move || {
            for i in 0..25 {
                let script = if i % 2 == 0 {
                    "tree.sh"
                } else {
                    "exits_immediately.sh"
                };
                let group = spawn_fixture(&marker, script, Duration::from_millis(100));
                if (t + i) % 3 == 0 {
                    group.shutdown().expect("shutdown");
                } else {
                    drop(group);
                }
            }
        }));
    }
    for t in 0..3 {
        let marker = marker.clone();
        threads.push(thread::spawn(move || {
            for i in 0..40 {
                let code = (t * 40 + i) % 100;
                let status: ExitStatus =
                    support::marked(&marker, "sh", &["-c", &format!("exit {code}")])
                        .status()
                        .expect("std child status (ECHILD would mean it was stolen)");
                assert_eq!(status.code(), Some(code));
            }
        }));
    }
    for thread in threads {
        thread.join().expect("no thread failed");
    }
    support::assert_no_leaks(&marker);
}

/// The leak detector itself: a marked process that is alive is seen, and one that was
/// killed is not. Without this, the leak checks above could pass by seeing nothing.
#[test]
fn the_leak_detector_sees_a_live_marked_process() {
    let marker = support::marker("detector");
    let mut child = support::marked(&marker, "sleep", &["1000"])
        .spawn()
        .expect("spawn");
    let pid = i32::try_from(child.id()).expect("pid");
    // `spawn` returns once the child is past the point of no return of its exec, which is
    // before the kernel has set up the new environment: for a moment /proc/<pid>/environ
    // reads empty (.ci/flaky caught it once in 36 runs). Wait for exactly this pid.
    support::wait_until("the child's environment shows the marker", || {
        support::marked_alive(&marker) == vec![pid]
    });
    // assert_no_leaks waits a few seconds and then fails; check that it does fail.
    let leaked = std::panic::catch_unwind(|| support::assert_no_leaks(&marker));
    assert!(leaked.is_err(), "assert_no_leaks missed a live process");
    child.kill().expect("kill our own child by pid");
    child.wait().expect("reap");
    support::assert_no_leaks(&marker);
}

/// A `Command` spawned again (a loop, a fixture that respawns its server) works in every tier
/// with a new session too: the hook that the first spawn added to it (`setsid` in the child)
/// does not make the second spawn fail with `EPERM`.
#[rstest]
fn a_command_spawned_twice_with_a_new_session_works(
    #[values(Containment::Group, Containment::Supervised, Containment::Namespace)]
    tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("respawn-session");
    let mut cmd = support::marked(&marker, "sleep", &["1000"]);
    for round in 1..=2 {
        let group = Builder::new()
            .containment(tier)
            .new_session(true)
            .spawn(&mut cmd)
            .unwrap_or_else(|e| panic!("{tier:?}, spawn number {round}: {e}"));
        let pid = i32::try_from(group.id()).expect("pid");
        let stat = Process::new(pid).and_then(|p| p.stat()).expect("stat");
        assert_eq!(
            (stat.session, stat.pgrp),
            (pid, pid),
            "{tier:?}, spawn {round}"
        );
        group.shutdown().expect("shutdown");
    }
    support::assert_no_leaks(&marker);
}
