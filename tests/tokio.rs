//! `pgroup::tokio::SpawnedGroup` (the `tokio` feature) on real processes, under both the
//! current-thread and the multi-thread runtime.
//!
//! Each scenario is an async function, run by [`both_runtimes!`] as two `#[tokio::test]`s.
//! Every process carries this test's `PGROUP_LEAK_MARKER`, and every scenario ends with
//! `assert_no_leaks`.

// The suite's support reads /proc (leak markers in each process's environ, process states,
// the PID-namespace sandbox): it runs on Linux, with the Linux backend and, in CI, again
// with the portable one (`--cfg pgroup_portable`). Elsewhere it compiles to nothing.
#![cfg(target_os = "linux")]
#![cfg(feature = "tokio")]

mod support;

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgroup::{Builder, Containment, Signal};
use procfs::process::Process;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tracing_test::traced_test;

/// Runs `scenario` as two tests, `current_thread` and `multi_thread`, in a module `name`.
macro_rules! both_runtimes {
    ($name:ident, $scenario:ident) => {
        mod $name {
            #[tokio::test(flavor = "current_thread")]
            async fn current_thread() {
                super::$scenario("current_thread").await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn multi_thread() {
                super::$scenario("multi_thread").await;
            }
        }
    };
}

#[test]
#[ignore = "entry point of the helper processes the other tests re-execute this binary as"]
#[traced_test]
fn role_entry() {
    support::role_main(
        &|s| logs_contain(s),
        &[
            ("exit-during-teardown", exit_during_teardown_role),
            ("reaper-retry", reaper_retry_role),
        ],
    );
}

/// A tokio `Command` carrying the marker.
fn marked(marker: &str, program: &str, args: &[&str]) -> Command {
    Command::from(support::marked(marker, program, args))
}

/// A group of two processes that ignore SIGTERM (the shell and its `sleep`), which prints
/// `ready` once its trap is set; teardown costs it the whole grace period, then SIGKILL.
async fn stubborn(marker: &str, grace: Duration) -> pgroup::tokio::SpawnedGroup {
    let mut group = Builder::new()
        .containment(Containment::Group)
        .grace_period(grace)
        .spawn_tokio(
            marked(
                marker,
                "sh",
                &["-c", "trap '' TERM; sleep 60 & echo ready; wait; :"],
            )
            .stdout(Stdio::piped()),
        )
        .expect("spawn the stubborn group");
    let mut lines = BufReader::new(group.stdout.take().expect("piped")).lines();
    assert_eq!(
        lines.next_line().await.expect("read").as_deref(),
        Some("ready")
    );
    group
}

/// A task on the test's runtime that ticks every millisecond, counting its ticks and
/// keeping the longest gap between two of them.
struct Ticker {
    ticks: Arc<AtomicUsize>,
    max_gap_us: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Ticker {
    async fn start() -> Ticker {
        let ticks = Arc::new(AtomicUsize::new(0));
        let max_gap_us = Arc::new(AtomicU64::new(0));
        let (t, m) = (Arc::clone(&ticks), Arc::clone(&max_gap_us));
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(1));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = Instant::now();
            loop {
                interval.tick().await;
                let now = Instant::now();
                let gap = u64::try_from((now - last).as_micros()).unwrap_or(u64::MAX);
                m.fetch_max(gap, Ordering::Relaxed);
                last = now;
                t.fetch_add(1, Ordering::Relaxed);
            }
        });
        let ticker = Ticker {
            ticks,
            max_gap_us,
            task,
        };
        // Running: it has ticked a few times.
        while ticker.ticks() < 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        ticker
    }

    fn ticks(&self) -> usize {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Forgets the longest gap so far, and returns the count of ticks.
    fn reset(&self) -> usize {
        self.max_gap_us.store(0, Ordering::Relaxed);
        self.ticks()
    }

    fn max_gap(&self) -> Duration {
        Duration::from_micros(self.max_gap_us.load(Ordering::Relaxed))
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits, off the runtime's threads, until no process carrying `marker` is alive.
async fn all_dead(marker: &str) {
    let marker = marker.to_owned();
    tokio::task::spawn_blocking(move || {
        support::wait_until("every marked process is dead", || {
            support::marked_alive(&marker).is_empty()
        });
    })
    .await
    .expect("the waiting thread");
}

const GRACE: Duration = Duration::from_millis(400);

/// Drop returns at once, and the runtime goes on (a 1 ms ticker on it keeps ticking) for as
/// long as a group that ignores SIGTERM is torn down in the background: the whole grace
/// period, then SIGKILL. Printed: how long the drop took, and the longest gap between two
/// ticks from the drop to the group's death.
async fn drop_keeps_the_runtime_running(flavor: &str) {
    let marker = support::marker("tokio-drop-ticker");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let ticker = Ticker::start().await;
    let group = stubborn(&marker, GRACE).await;
    let pid = group.id();
    let before = ticker.reset();
    let dropped = Instant::now();
    drop(group);
    let drop_took = dropped.elapsed();
    // Still there right after the drop: the teardown has its grace period to go.
    assert!(
        !support::is_dead_or_dying(i32::try_from(pid).expect("pid")),
        "the leader died at once: was SIGKILL sent without the grace period?"
    );
    all_dead(&marker).await;
    let ticks = ticker.ticks() - before;
    eprintln!(
        "{flavor}: drop took {drop_took:?}; the teardown took {:?}; the ticker ticked {ticks} \
         times meanwhile, its longest gap {:?}",
        dropped.elapsed(),
        ticker.max_gap()
    );
    assert!(
        ticks >= 10,
        "the runtime stalled during the teardown: {ticks} ticks in {:?}",
        dropped.elapsed()
    );
    support::assert_no_leaks(&marker);
}
both_runtimes!(
    drop_never_blocks_the_runtime,
    drop_keeps_the_runtime_running
);

/// `shutdown().await` lets the runtime run during the grace period, and reports the same as
/// the sync type: SIGKILL was needed, and the leader died of it.
async fn shutdown_keeps_the_runtime_running(flavor: &str) {
    let marker = support::marker("tokio-shutdown-ticker");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let ticker = Ticker::start().await;
    let group = stubborn(&marker, GRACE).await;
    let before = ticker.reset();
    let report = group.shutdown().await.expect("shutdown");
    let ticks = ticker.ticks() - before;
    eprintln!(
        "{flavor}: shutdown took {:?}; the ticker ticked {ticks} times meanwhile, its \
         longest gap {:?}",
        report.elapsed,
        ticker.max_gap()
    );
    assert!(report.sigkill_needed, "{report:?}");
    assert!(report.elapsed >= GRACE, "{report:?}");
    assert_eq!(report.status.signal(), Some(9), "{report:?}");
    assert!(
        ticks >= 10,
        "the runtime stalled during the teardown: {ticks} ticks in {:?}",
        report.elapsed
    );
    support::assert_no_leaks(&marker);
}
both_runtimes!(
    shutdown_never_blocks_the_runtime,
    shutdown_keeps_the_runtime_running
);

/// The negative control of the two above: the sync type's Drop on a current-thread runtime
/// blocks it for the whole teardown, and the ticker does not tick once.
#[tokio::test(flavor = "current_thread")]
async fn negative_control_the_sync_drop_stalls_a_current_thread_runtime() {
    let marker = support::marker("tokio-sync-drop");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let ticker = Ticker::start().await;
    let mut group = Builder::new()
        .containment(Containment::Group)
        .grace_period(Duration::from_millis(200))
        .spawn(
            support::marked(
                &marker,
                "sh",
                &["-c", "trap '' TERM; sleep 60 & echo ready; wait; :"],
            )
            .stdout(Stdio::piped()),
        )
        .expect("spawn");
    let mut stdout = group.stdout.take().expect("piped");
    let mut ready = [0_u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut ready).expect("ready");
    let before = ticker.reset();
    drop(group);
    assert_eq!(ticker.ticks() - before, 0, "no task runs while Drop blocks");
    support::assert_no_leaks(&marker);
}

/// The background thread tears groups down side by side: a group dropped after one whose
/// grace period is a minute (its leader ignores SIGTERM) is torn down at once, in every
/// tier, while the first is still in its grace period.
async fn teardowns_run_side_by_side(flavor: &str) {
    let slow_marker = support::marker("tokio-slow");
    let _cleanup_slow = support::KillMarkedOnDrop(slow_marker.clone());
    let slow = stubborn(&slow_marker, Duration::from_secs(60)).await;
    let slow_leader = i32::try_from(slow.id()).expect("pid");
    drop(slow);
    for tier in [
        Containment::Group,
        Containment::Supervised,
        Containment::Namespace,
    ] {
        if support::tier_unavailable(tier) {
            continue;
        }
        let marker = support::marker("tokio-quick");
        let _cleanup = support::KillMarkedOnDrop(marker.clone());
        let mut quick = Builder::new()
            .containment(tier)
            .grace_period(Duration::from_millis(100))
            .spawn_tokio(
                marked(
                    &marker,
                    "sh",
                    &["-c", "trap '' TERM; sleep 60 & echo ready; wait; :"],
                )
                .stdout(Stdio::piped()),
            )
            .expect("spawn");
        let mut lines = BufReader::new(quick.stdout.take().expect("piped")).lines();
        assert_eq!(
            lines.next_line().await.expect("read").as_deref(),
            Some("ready")
        );
        drop(quick);
        all_dead(&marker).await;
        assert!(
            !support::is_dead_or_dying(slow_leader),
            "{flavor} {tier:?}: the first group's grace period has a minute to go"
        );
        support::assert_no_leaks(&marker);
    }
}
both_runtimes!(side_by_side_teardowns, teardowns_run_side_by_side);

/// `wait` wakes when the leader exits, in every tier (the leader's pidfd), and not before:
/// `wait_timeout` says "running" while the leader blocks on its stdin.
async fn waits_wake_on_exit(flavor: &str) {
    for tier in [
        Containment::Group,
        Containment::Supervised,
        Containment::Namespace,
    ] {
        if support::tier_unavailable(tier) {
            continue;
        }
        let marker = support::marker("tokio-wait");
        let _cleanup = support::KillMarkedOnDrop(marker.clone());
        let mut group = Builder::new()
            .containment(tier)
            .spawn_tokio(marked(&marker, "sh", &["-c", "read line; exit 7"]).stdin(Stdio::piped()))
            .expect("spawn");
        assert_eq!(group.try_wait().expect("try_wait"), None);
        assert_eq!(
            group
                .wait_timeout(Duration::from_millis(20))
                .await
                .expect("wait_timeout"),
            None,
            "{flavor} {tier:?}: the leader is blocked on its stdin"
        );
        let group = Arc::new({
            let mut stdin = group.stdin.take().expect("piped");
            stdin.write_all(b"go\n").await.expect("write");
            drop(stdin);
            group
        });
        // Two waiters at once, one on another task.
        let other = tokio::spawn({
            let group = Arc::clone(&group);
            async move { group.wait().await }
        });
        let status = group.wait().await.expect("wait");
        assert_eq!(status.code(), Some(7), "{flavor} {tier:?}");
        assert_eq!(
            other.await.expect("task").expect("wait").code(),
            Some(7),
            "{flavor} {tier:?}"
        );
        assert_eq!(group.try_wait().expect("try_wait"), Some(status));
        let group = Arc::into_inner(group).expect("the only owner");
        let report = group.shutdown().await.expect("shutdown");
        assert!(report.exited_before_teardown, "{report:?}");
        assert_eq!(report.status.code(), Some(7));
        support::assert_no_leaks(&marker);
    }
}
both_runtimes!(waits, waits_wake_on_exit);

/// The async readiness waits. `wait_for_line` waits for a line that only another task on
/// the same runtime can cause (it writes the leader's stdin): a wait that blocked the
/// thread would starve that task on the current-thread runtime, and time out. Then the
/// errors: the leader exits first (`UnexpectedEof`, with its status and its tail), the
/// timeout passes (`TimedOut`), and the output is not captured (`InvalidInput`); and
/// `wait_for_tcp` against a listener of this test, and against a leader that exits.
async fn readiness_waits_are_async(flavor: &str) {
    use pgroup::Stream;
    use std::io::ErrorKind;

    let marker = support::marker("tokio-ready");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let mut server = Builder::new()
        .capture_output(true)
        .spawn_tokio(
            marked(
                &marker,
                "sh",
                &[
                    "-c",
                    "echo starting; read port; echo \"listening on 127.0.0.1:$port\"; sleep 30",
                ],
            )
            .stdin(Stdio::piped()),
        )
        .expect("spawn");
    let mut stdin = server.stdin.take().expect("piped");
    let (line, written) = tokio::join!(
        server.wait_for_line(Stream::Stdout, Duration::from_secs(30), |l| {
            l.starts_with("listening on")
        }),
        async move {
            tokio::task::yield_now().await;
            stdin.write_all(b"8123\n").await
        }
    );
    written.expect("write the port");
    assert_eq!(
        line.expect("the ready line"),
        "listening on 127.0.0.1:8123",
        "{flavor}"
    );
    assert_eq!(
        server.captured(Stream::Stdout).as_deref(),
        Some("starting\nlistening on 127.0.0.1:8123\n")
    );
    // The same predicate finds the same line again; a line that never comes times out.
    let again = server.wait_for_line(Stream::Stdout, Duration::from_secs(30), |l| l.contains(':'));
    assert_eq!(again.await.expect("again"), "listening on 127.0.0.1:8123");
    let err = server
        .wait_for_line(Stream::Stderr, Duration::from_millis(50), |_| true)
        .await
        .expect_err("nothing on stderr");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    // wait_for_tcp: a port of this test's own listener is accepted at once.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    server
        .wait_for_tcp(addr, Duration::from_secs(30))
        .await
        .expect("the listener accepts");
    drop(listener);
    server.shutdown().await.expect("shutdown");

    let quitter = Builder::new()
        .capture_output(true)
        .spawn_tokio(&mut marked(&marker, "sh", &["-c", "echo bye; exit 3"]))
        .expect("spawn");
    let err = quitter
        .wait_for_line(Stream::Stdout, Duration::from_secs(30), |l| l == "ready")
        .await
        .expect_err("the leader exits first");
    assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("exit status 3") && text.contains("bye"),
        "{text}"
    );
    let err = quitter
        .wait_for_tcp(addr, Duration::from_secs(30))
        .await
        .expect_err("the leader has exited");
    assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "{err}");
    assert!(err.to_string().contains("exit status 3"), "{err}");
    quitter.shutdown().await.expect("shutdown");

    let uncaptured =
        pgroup::tokio::SpawnedGroup::spawn(&mut marked(&marker, "sleep", &["30"])).expect("spawn");
    assert_eq!(uncaptured.captured(Stream::Stdout), None);
    let err = uncaptured
        .wait_for_line(Stream::Stdout, Duration::from_secs(30), |_| true)
        .await
        .expect_err("not captured");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    uncaptured.shutdown().await.expect("shutdown");
    support::assert_no_leaks(&marker);
}
both_runtimes!(readiness, readiness_waits_are_async);

/// `signal` goes through the guard to the whole group, and `wait` sees the leader die of it.
async fn signal_reaches_the_group(flavor: &str) {
    let marker = support::marker("tokio-signal");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let mut group = pgroup::tokio::SpawnedGroup::spawn(
        marked(&marker, "sh", &["-c", "sleep 60 & echo ready; wait"]).stdout(Stdio::piped()),
    )
    .expect("spawn");
    let mut lines = BufReader::new(group.stdout.take().expect("piped")).lines();
    assert_eq!(
        lines.next_line().await.expect("read").as_deref(),
        Some("ready")
    );
    assert!(group.signal(Signal::SIGKILL).expect("signal").is_sent());
    let status = group.wait().await.expect("wait");
    assert_eq!(status.signal(), Some(9), "{flavor}");
    all_dead(&marker).await; // the sleep got the signal too
    drop(group);
    support::assert_no_leaks(&marker);
}
both_runtimes!(signal, signal_reaches_the_group);

/// Groups and plain `tokio::process` children at once, while the background thread tears
/// other groups down: each gets its own exit status. Neither the crate nor tokio steals
/// the other's (the crate reaps only its leaders, by pid; tokio only its children).
async fn groups_and_tokio_children_side_by_side(flavor: &str) {
    let marker = support::marker("tokio-side-by-side");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    // Keep the background thread busy with stubborn groups while everything else exits.
    let mut busy = Vec::new();
    for _ in 0..2 {
        busy.push(stubborn(&marker, Duration::from_millis(300)).await);
    }
    let mut group_waits = Vec::new();
    let mut child_waits = Vec::new();
    for i in 0..6_i32 {
        let script = format!("sleep 0.0{i}; exit {}", 10 + i);
        let group =
            pgroup::tokio::SpawnedGroup::spawn(&mut marked(&marker, "sh", &["-c", &script]))
                .expect("spawn a group");
        let script = format!("sleep 0.0{i}; exit {}", 20 + i);
        let mut child = marked(&marker, "sh", &["-c", &script])
            .spawn()
            .expect("spawn a tokio child");
        if i == 0 {
            drop(std::mem::take(&mut busy));
        }
        group_waits.push(tokio::spawn(async move {
            let status = group.wait().await.expect("wait for a group");
            let report = group.shutdown().await.expect("shutdown");
            assert_eq!(report.status, status);
            (i, status)
        }));
        child_waits.push(tokio::spawn(async move {
            (i, child.wait().await.expect("wait for a tokio child"))
        }));
    }
    for task in group_waits {
        let (i, status) = task.await.expect("task");
        assert_eq!(status.code(), Some(10 + i), "{flavor}: group {i}");
    }
    for task in child_waits {
        let (i, status) = task.await.expect("task");
        assert_eq!(status.code(), Some(20 + i), "{flavor}: tokio child {i}");
    }
    all_dead(&marker).await;
    support::assert_no_leaks(&marker);
}
both_runtimes!(side_by_side, groups_and_tokio_children_side_by_side);

/// `Builder::spawn_tokio` honours the builder: the supervised tiers catch a process that
/// left the group with `setsid`, and `new_session` makes the leader a session leader.
async fn spawn_tokio_honours_the_builder(flavor: &str) {
    for tier in [Containment::Supervised, Containment::Namespace] {
        if support::tier_unavailable(tier) {
            continue;
        }
        let marker = support::marker("tokio-builder");
        let _cleanup = support::KillMarkedOnDrop(marker.clone());
        let mut group = Builder::new()
            .containment(tier)
            .new_session(true)
            .spawn_tokio(
                marked(
                    &marker,
                    "sh",
                    &["-c", "setsid sleep 60 & echo ready; sleep 60"],
                )
                .stdout(Stdio::piped()),
            )
            .expect("spawn");
        let mut lines = BufReader::new(group.stdout.take().expect("piped")).lines();
        assert_eq!(
            lines.next_line().await.expect("read").as_deref(),
            Some("ready")
        );
        let pid = i32::try_from(group.id()).expect("pid");
        let stat = Process::new(pid).and_then(|p| p.stat()).expect("stat");
        assert_eq!(
            (stat.session, stat.pgrp),
            (pid, pid),
            "{flavor} {tier:?}: leader of its session"
        );
        let report = group.shutdown().await.expect("shutdown");
        assert_eq!(report.containment, tier);
        // The escaper is dead, whether the supervisor found it outside the group or it had
        // not left yet.
        support::assert_no_leaks(&marker);
    }
}
both_runtimes!(builder, spawn_tokio_honours_the_builder);

/// A panic inside a `#[tokio::test]` (here the same runtime and `block_on` the macro
/// expands to, with the panic caught so that this test can look afterwards) drops the
/// group, as a task owning a group is dropped when its runtime goes: both are torn down,
/// with the grace period, and nothing is left.
#[test]
fn a_panic_in_an_async_test_leaves_nothing() {
    for current_thread in [true, false] {
        let marker = support::marker("tokio-panic");
        let _cleanup = support::KillMarkedOnDrop(marker.clone());
        let m = marker.clone();
        let outcome = std::panic::catch_unwind(move || {
            let mut runtime = if current_thread {
                tokio::runtime::Builder::new_current_thread()
            } else {
                tokio::runtime::Builder::new_multi_thread()
            };
            let runtime = runtime.enable_all().build().expect("runtime");
            runtime.block_on(async {
                let in_a_task = stubborn(&m, Duration::from_millis(200)).await;
                tokio::spawn(async move {
                    let _owned = in_a_task;
                    std::future::pending::<()>().await;
                });
                let _group = stubborn(&m, Duration::from_millis(200)).await;
                assert_eq!(support::marked_alive(&m).len(), 4);
                panic!("a failed assertion");
            });
        });
        assert!(outcome.is_err(), "the test body panicked");
        support::assert_no_leaks(&marker);
    }
}

/// The real thing, run by [`a_panic_in_a_tokio_test_leaves_nothing`] in a copy of this test
/// binary: a `#[tokio::test]` that panics while it owns a group.
#[tokio::test]
#[ignore = "run by a_panic_in_a_tokio_test_leaves_nothing in a copy of this binary"]
async fn panicking_tokio_test() {
    let marker = std::env::var(support::MARKER_VAR).expect("marker");
    let _group = stubborn(&marker, Duration::from_millis(200)).await;
    println!("SPAWNED");
    panic!("a failed assertion in a #[tokio::test]");
}

/// A `#[tokio::test]` that panics while it owns a group fails, and leaves nothing running,
/// under libtest (the copy of this binary runs only that test, and then exits: the lifeline
/// kills whatever the background thread has not finished).
#[test]
fn a_panic_in_a_tokio_test_leaves_nothing() {
    let marker = support::marker("tokio-test-panic");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let exe = std::env::current_exe().expect("own path");
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "--exact",
        "panicking_tokio_test",
        "--ignored",
        "--nocapture",
    ])
    .env(support::MARKER_VAR, &marker)
    .env("RUST_BACKTRACE", "0")
    .env_remove(pgroup::lifeline::ENV_VAR)
    .stdout(Stdio::piped());
    let out = support::run_collecting(cmd, Duration::from_secs(60));
    assert!(
        out.lines.iter().any(|l| l == "SPAWNED"),
        "the test did not get to spawn: {:?}",
        out.lines
    );
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(101),
        "{:?}",
        out.lines
    );
    support::assert_no_leaks(&marker);
}

/// Drops a stubborn group with a long grace period and exits at once, while the background
/// thread is in that grace period.
fn exit_during_teardown_role(_logs: support::Logs<'_>) -> i32 {
    let marker = std::env::var(support::MARKER_VAR).expect("marker");
    let runtime = current_thread_runtime();
    runtime.block_on(async {
        let group = stubborn(&marker, Duration::from_secs(60)).await;
        println!("LEADER {}", group.id());
        drop(group);
    });
    println!("LIVE_GROUPS {}", pgroup::lifeline::live_groups());
    0
}

fn exit_during_teardown(lifeline: &str) -> (support::RoleOutput, String) {
    let marker = support::marker("tokio-exit");
    let mut cmd = support::role_command("exit-during-teardown");
    cmd.env(support::MARKER_VAR, &marker)
        .env(pgroup::lifeline::ENV_VAR, lifeline)
        .stdout(Stdio::piped());
    (
        support::run_collecting(cmd, Duration::from_secs(60)),
        marker,
    )
}

/// A group dropped just before the process exits stays registered in the lifeline until the
/// background thread reaps it, so the exit kills it.
#[test]
fn a_process_that_exits_during_a_background_teardown_kills_the_group() {
    let (out, marker) = exit_during_teardown("on");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(0),
        "{:?}",
        out.lines
    );
    assert_eq!(
        out.one("LIVE_GROUPS"),
        "1",
        "still registered while torn down"
    );
    support::assert_no_leaks(&marker);
}

/// Its negative control: with the lifeline off, the group outlives the process.
#[test]
fn negative_control_without_the_lifeline_the_exit_leaks_the_group() {
    let (out, marker) = exit_during_teardown("off");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(0),
        "{:?}",
        out.lines
    );
    let leader: i32 = out.one("LEADER").parse().expect("pid");
    assert!(
        support::marked_alive(&marker).contains(&leader),
        "the leader should have survived the exit"
    );
}

/// Drop needs no runtime: a group moved out of its runtime, which is then shut down, is
/// still torn down.
#[test]
fn dropped_outside_its_runtime() {
    let marker = support::marker("tokio-outside");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let runtime = current_thread_runtime();
    let group = runtime.block_on(stubborn(&marker, Duration::from_millis(100)));
    drop(runtime);
    drop(group);
    support::assert_no_leaks(&marker);
}

/// The type can be shared between tasks of a multi-thread runtime (`Arc`, `&self` waits).
#[test]
fn send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<pgroup::tokio::SpawnedGroup>();
}

/// Whether a thread of this process is named `pgroup-reaper`.
fn reaper_thread_runs() -> bool {
    std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
        .any(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == "pgroup-reaper")
        })
}

/// `RLIMIT_NOFILE`: sets the soft limit to `soft` (the hard one unchanged) and returns the
/// soft limit it had.
fn set_nofile_soft(soft: u64) -> u64 {
    let mut limit = nix::libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own; setrlimit reads it.
    unsafe {
        assert_eq!(
            nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut limit),
            0
        );
        let old = limit.rlim_cur;
        limit.rlim_cur = soft;
        assert_eq!(nix::libc::setrlimit(nix::libc::RLIMIT_NOFILE, &limit), 0);
        old
    }
}

/// Spawns two groups, then drops the first while no descriptor is free (the reaper thread
/// cannot be started: its socket pair fails with `EMFILE`; the teardown runs in the Drop
/// instead), then frees descriptors and drops the second. Prints whether the reaper thread
/// runs after each drop (`AFTER_FAILURE`, `AFTER_RETRY`).
fn reaper_retry_role(_logs: support::Logs<'_>) -> i32 {
    let marker = std::env::var(support::MARKER_VAR).expect("marker");
    let runtime = current_thread_runtime();
    runtime.block_on(async {
        let spawn = || {
            Builder::new()
                .containment(Containment::Group)
                .grace_period(Duration::ZERO)
                .spawn_tokio(&mut marked(&marker, "sleep", &["1000"]))
                .expect("spawn")
        };
        let (first, second) = (spawn(), spawn());
        let lowest_free = std::fs::read_dir("/proc/self/fd")
            .expect("fds")
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap_or(2)
            + 1;
        let threads = || std::fs::read_dir("/proc/self/task").expect("tasks").count();
        let before = threads();
        let old = set_nofile_soft(lowest_free);
        // Every descriptor below the limit taken: none is free.
        let mut fillers = Vec::new();
        while let Ok(file) = std::fs::File::open("/dev/null") {
            fillers.push(file);
        }
        drop(first);
        // No thread was started (the socket pair came first, and failed).
        println!(
            "AFTER_FAILURE {}",
            threads() != before || reaper_thread_runs()
        );
        drop(fillers);
        set_nofile_soft(old);
        drop(second);
        // The thread names itself once it runs.
        support::wait_until("the reaper thread runs", reaper_thread_runs);
        println!("AFTER_RETRY {}", reaper_thread_runs());
    });
    0
}

/// A reaper thread that could not be started (no descriptor free) is started by a later
/// hand-over: the failure is not kept (kept, it would make every later async drop block its
/// runtime for the whole teardown).
#[test]
fn the_reaper_thread_start_is_retried() {
    let marker = support::marker("reaper-retry");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let mut cmd = support::role_command("reaper-retry");
    cmd.env(support::MARKER_VAR, &marker).stdout(Stdio::piped());
    let out = support::run_collecting(cmd, Duration::from_secs(60));
    assert_eq!(out.one("AFTER_FAILURE"), "false", "{:#?}", out.lines);
    assert_eq!(out.one("AFTER_RETRY"), "true", "{:#?}", out.lines);
    support::assert_no_leaks(&marker);
}

/// A current-thread runtime with every driver, for the roles and the tests that drive one by
/// hand.
fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}
