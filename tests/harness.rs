//! The test-harness helpers of issue 13 on real processes: waits through `&self` (shared
//! fixtures, `Arc<SpawnedGroup>`).

mod support;

use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use pgroup::{Builder, Containment, Signal, SpawnedGroup};
use rstest::{fixture, rstest};

const GRACE: Duration = Duration::from_millis(300);

/// Long enough never to end a correct wait; a wait that misses the exit ends with `None`
/// (a failure that says so) instead of hanging the suite.
const NEVER: Duration = Duration::from_secs(60);

#[test]
fn a_group_is_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<SpawnedGroup>();
    shared::<Arc<SpawnedGroup>>();
}

/// Several threads wait at once on one `Arc<SpawnedGroup>`, through `&self`: each sees the
/// exit. In the supervised tiers only one of them can read the supervisor's report from
/// the status pipe; the others must still wake (they watch the leader's pidfd, whose
/// readiness is the leader's state, not a message).
#[rstest]
fn concurrent_waits_through_an_arc_all_see_the_exit(
    #[values(Containment::Group, Containment::Supervised, Containment::Namespace)]
    tier: Containment,
) {
    let marker = support::marker("concurrent_waits");
    let group = Arc::new(
        Builder::new()
            .containment(tier)
            .grace_period(GRACE)
            .spawn(&mut support::marked(&marker, "sleep", &["1000"]))
            .expect("spawn"),
    );
    assert_eq!(group.try_wait().expect("try_wait"), None);
    let started = Arc::new(Barrier::new(5));
    let waiters: Vec<_> = (0..4)
        .map(|i| {
            let group = Arc::clone(&group);
            let started = Arc::clone(&started);
            thread::spawn(move || {
                assert_eq!(group.try_wait().expect("try_wait"), None);
                started.wait();
                match i {
                    0 => Some(group.wait().expect("wait")),
                    _ => group.wait_timeout(NEVER).expect("wait_timeout"),
                }
            })
        })
        .collect();
    started.wait();
    assert!(group.signal(Signal::SIGKILL).expect("signal").is_sent());
    for waiter in waiters {
        let status = waiter.join().expect("waiter");
        assert_eq!(
            status.and_then(|s| s.signal()),
            Some(9),
            "{tier:?}: a waiter missed the exit"
        );
    }
    assert_eq!(
        group.try_wait().expect("try_wait").and_then(|s| s.signal()),
        Some(9)
    );
    let group = Arc::into_inner(group).expect("the waiters are gone");
    let report = group.shutdown().expect("shutdown");
    assert!(report.exited_before_teardown);
    support::assert_no_leaks(&marker);
}

/// An rstest `#[once]` fixture hands out `&SpawnedGroup`, shared by every test that uses
/// it (possibly at the same time, on libtest's threads). The lifeline (`Group` tier) or the
/// supervisor ends it when the test binary exits, since a `static` is never dropped.
#[fixture]
#[once]
fn shared_server() -> SpawnedGroup {
    Builder::new()
        .containment(Containment::Supervised)
        .spawn(&mut support::marked(
            &support::marker("shared_server"),
            "sleep",
            &["1000"],
        ))
        .expect("spawn the shared server")
}

#[rstest]
fn a_once_fixture_checks_liveness_through_shared_references(shared_server: &SpawnedGroup) {
    assert_eq!(shared_server.try_wait().expect("try_wait"), None);
    assert_eq!(
        shared_server
            .wait_timeout(Duration::from_millis(10))
            .expect("wait_timeout"),
        None
    );
}

#[rstest]
fn a_once_fixture_is_shared_by_the_tests_that_use_it(shared_server: &SpawnedGroup) {
    // Signalled and asked from this test's thread, through `&self`.
    assert!(shared_server
        .signal(Signal::SIGCONT)
        .expect("signal")
        .is_sent());
    assert_eq!(shared_server.try_wait().expect("try_wait"), None);
}
