//! The test-harness helpers on real programs: readiness by a line of output and by a TCP
//! port, captured output (in `Teardown`, in readiness errors, and printed when a test
//! fails), waits through `&self` (shared fixtures, `Arc<SpawnedGroup>`), and clearer errors.

// The suite's support reads /proc (leak markers in each process's environ, process states,
// the PID-namespace sandbox): it runs on Linux, with the Linux backend and, in CI, again
// with the portable one (`--cfg pgroup_portable`). Elsewhere it compiles to nothing.
#![cfg(target_os = "linux")]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use pgroup::{Builder, Containment, NotReady, NotReadyReason, Signal, SpawnedGroup, Stream};
use rstest::{fixture, rstest};

/// Generous: a loaded machine may take seconds to start Python.
const READY: Duration = Duration::from_secs(60);

/// `python3 -m http.server 0 --bind 127.0.0.1` (port 0: the kernel picks a free one), with
/// `-u` (unbuffered) unless `buffered`.
fn http_server(marker: &str, buffered: bool, port: &str) -> Command {
    let mut args = vec!["-m", "http.server", port, "--bind", "127.0.0.1"];
    if !buffered {
        args.insert(0, "-u");
    }
    let mut cmd = support::marked(marker, "python3", &args);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("PYTHONUNBUFFERED");
    cmd
}

/// The port in `Serving HTTP on 127.0.0.1 port 43567 (http://127.0.0.1:43567/) ...`.
fn port_of(line: &str) -> u16 {
    line.split_whitespace()
        .skip_while(|word| *word != "port")
        .nth(1)
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

fn not_ready(err: &std::io::Error) -> &NotReady {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<NotReady>())
        .unwrap_or_else(|| panic!("not a NotReady: {err:?}"))
}

/// The server becomes ready by its line, which gives the port; the port accepts
/// connections; a request is served; teardown carries the server's log (stderr).
#[rstest]
fn an_http_server_becomes_ready_with_its_port_read_from_its_output(
    #[values(Containment::Group, Containment::Supervised, Containment::Namespace)]
    tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("http_ready");
    let server = Builder::new()
        .containment(tier)
        .capture_output(true)
        .spawn(&mut http_server(&marker, false, "0"))
        .expect("spawn");
    let line = server
        .wait_for_line(Stream::Stdout, READY, |l| l.starts_with("Serving HTTP on"))
        .expect("ready line");
    let port = port_of(&line);
    server
        .wait_for_tcp(("127.0.0.1", port), READY)
        .expect("the port accepts connections");
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.write_all(b"GET /Cargo.toml HTTP/1.0\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    conn.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(response.contains("name = \"pgroup\""));
    // The same line again: every call looks at the whole tail.
    assert_eq!(
        server
            .wait_for_line(Stream::Stdout, READY, |l| l.starts_with("Serving HTTP on"))
            .expect("again"),
        line
    );
    // The request's log line is on stderr.
    server
        .wait_for_line(Stream::Stderr, READY, |l| l.contains("GET /Cargo.toml"))
        .expect("access log");
    let report = server.shutdown().expect("shutdown");
    assert!(report.stdout.expect("captured").contains(&line));
    assert!(report
        .stderr
        .expect("captured")
        .contains("\"GET /Cargo.toml HTTP/1.0\" 200"));
    support::assert_no_leaks(&marker);
}

/// Negative control: a program that buffers its output (Python without `-u`, its stdout a
/// pipe) does not write its ready line while it runs, so readiness by a line cannot work;
/// readiness by its port does. The line arrives only when the program exits and flushes
/// (here on SIGINT, which Python turns into a clean exit).
#[test]
fn a_buffered_ready_line_arrives_only_when_the_program_exits() {
    let marker = support::marker("http_buffered");
    let port = free_port();
    let server = Builder::new()
        .capture_output(true)
        .spawn(&mut http_server(&marker, true, &port.to_string()))
        .expect("spawn");
    server
        .wait_for_tcp(("127.0.0.1", port), READY)
        .expect("serving");
    let err = server
        .wait_for_line(Stream::Stdout, Duration::from_millis(500), |l| {
            l.starts_with("Serving HTTP on")
        })
        .expect_err("the line is in Python's buffer");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert_eq!(not_ready(&err).reason, NotReadyReason::TimedOut);
    assert_eq!(
        not_ready(&err).stdout.as_deref(),
        Some(""),
        "nothing written yet"
    );
    assert!(server.signal(Signal::SIGINT).expect("signal").is_sent());
    let line = server
        .wait_for_line(Stream::Stdout, READY, |l| l.starts_with("Serving HTTP on"))
        .expect("flushed at exit");
    assert_eq!(port_of(&line), port);
    assert_eq!(server.wait().expect("wait").code(), Some(0));
    drop(server);
    support::assert_no_leaks(&marker);
}

/// A server that exits before it is ready (its port is taken): both waits end at once with
/// an error that has its exit status and its output.
#[rstest]
fn a_server_that_exits_before_it_is_ready_gives_its_status_and_output(
    #[values(Containment::Group, Containment::Supervised, Containment::Namespace)]
    tier: Containment,
    #[values("line", "tcp")] wait: &str,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("http_dies");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let server = Builder::new()
        .containment(tier)
        .capture_output(true)
        .spawn(&mut http_server(&marker, false, &port.to_string()))
        .expect("spawn");
    let err = match wait {
        "line" => server
            .wait_for_line(Stream::Stdout, READY, |l| l.starts_with("Serving HTTP on"))
            .expect_err("never ready"),
        // A port nobody serves: only the leader's exit ends the wait early.
        _ => server
            .wait_for_tcp(("127.0.0.1", free_port()), READY)
            .expect_err("never ready"),
    };
    assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "{err}");
    let why = not_ready(&err);
    assert_eq!(why.reason, NotReadyReason::LeaderExited);
    assert_eq!(why.status.and_then(|s| s.code()), Some(1), "{err}");
    let stderr = why.stderr.as_deref().expect("captured");
    assert!(stderr.contains("Address already in use"), "{stderr}");
    let message = err.to_string();
    assert!(message.contains("exit status 1"), "{message}");
    assert!(message.contains("Address already in use"), "{message}");
    assert!(message.contains("python3"), "{message}");
    drop(server);
    drop(taken);
    support::assert_no_leaks(&marker);
}

/// A port that nothing listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

/// A CLI's whole output, when it is less than the capture limit, and the last 64 KiB of a
/// longer one, in the teardown report: marked where it begins, with the count of the bytes
/// it does not show (as `stdout_dropped` says).
#[test]
fn a_cli_s_output_is_in_the_teardown_report() {
    let marker = support::marker("cli_output");
    let cli = Builder::new()
        .capture_output(true)
        .spawn(&mut support::marked(
            &marker,
            "sh",
            &["-c", "seq 1 100000; echo done >&2; exit 3"],
        ))
        .expect("spawn");
    assert_eq!(cli.wait().expect("wait").code(), Some(3));
    let report = cli.shutdown().expect("shutdown");
    let stdout = report.stdout.expect("captured");
    assert!(stdout.len() <= pgroup::CAPTURE_LIMIT, "{}", stdout.len());
    assert!(stdout.len() > pgroup::CAPTURE_LIMIT - 8, "{}", stdout.len());
    assert!(stdout.ends_with("99999\n100000\n"));
    let (first, rest) = stdout.split_once('\n').expect("lines");
    let cut = first
        .strip_prefix("[… ")
        .and_then(|f| f.split_once(" bytes cut]"))
        .and_then(|(n, _)| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("marked: {first}"));
    assert_eq!(cut, report.stdout_dropped);
    let written: usize = (1..=100_000).map(|n: u32| n.to_string().len() + 1).sum();
    let shown = stdout.len() - first.find(']').expect("the marker") - 1;
    assert_eq!(
        cut + u64::try_from(shown).expect("fits"),
        u64::try_from(written).expect("fits")
    );
    assert!(
        rest.lines().all(|l| l.parse::<u32>().is_ok()),
        "whole lines after the first"
    );
    assert_eq!(report.stderr.as_deref(), Some("done\n"));
    assert_eq!(report.stderr_dropped, 0);
    support::assert_no_leaks(&marker);
}

/// What a test that fails with a captured group in scope prints: run by
/// `a_failing_test_shows_the_captured_output` in a libtest of its own.
#[test]
#[ignore = "fails on purpose; run by a_failing_test_shows_the_captured_output"]
fn failing_with_a_captured_group() {
    let Ok(marker) = std::env::var("PGROUP_HARNESS_FAIL") else {
        return;
    };
    let server = Builder::new()
        .capture_output(true)
        .spawn(&mut support::marked(
            &marker,
            "sh",
            &[
                "-c",
                "echo 'listening'; echo 'the last words of the server' >&2; sleep 1000",
            ],
        ))
        .expect("spawn");
    server
        .wait_for_line(Stream::Stderr, READY, |l| l.contains("last words"))
        .expect("stderr");
    assert_eq!(1 + 1, 3, "the test's own assertion fails");
    drop(server);
}

/// libtest shows the captured output of a failing test with the failure (with `--nocapture`
/// it goes to stderr as it is printed, which is what nextest collects per test).
#[rstest]
fn a_failing_test_shows_the_captured_output(#[values(false, true)] nocapture: bool) {
    let marker = support::marker("failing");
    let mut cmd = support::marked(
        &marker,
        std::env::current_exe()
            .expect("own path")
            .to_str()
            .expect("utf-8 path"),
        &[
            "--exact",
            "failing_with_a_captured_group",
            "--ignored",
            "--test-threads=1",
        ],
    );
    if nocapture {
        cmd.arg("--nocapture");
    }
    cmd.env("PGROUP_HARNESS_FAIL", &marker);
    let run = Builder::new()
        .capture_output(true)
        .spawn(&mut cmd)
        .expect("spawn the failing test");
    assert_eq!(
        run.wait().expect("wait").code(),
        Some(101),
        "libtest's failure code"
    );
    let report = run.shutdown().expect("shutdown");
    let (stdout, stderr) = (report.stdout.expect("out"), report.stderr.expect("err"));
    let shown = if nocapture { &stderr } else { &stdout };
    assert!(
        shown.contains("the test's own assertion fails"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        shown.contains("captured output") && shown.contains("the last words of the server"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(shown.contains("listening"), "stdout too: {shown}");
    if !nocapture {
        assert!(stdout.contains("---- failing_with_a_captured_group stdout ----"));
    }
    support::assert_no_leaks(&marker);
}

/// `new_session(true)` with a `Command` that has a `process_group` of its own: an error
/// that names the conflict and the program, in every tier the backend has (the portable
/// backend's `Unsupported` for the others is asserted instead), and nothing left running.
#[rstest]
fn new_session_and_a_process_group_are_named_as_a_conflict(
    #[values(Containment::Group, Containment::Supervised, Containment::Namespace)]
    tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("session_conflict");
    let err = Builder::new()
        .containment(tier)
        .new_session(true)
        .spawn(support::marked(&marker, "sleep", &["1000"]).process_group(0))
        .expect_err("setsid cannot work in a group leader");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let message = err.to_string();
    assert!(message.contains("new_session"), "{message}");
    assert!(message.contains("process_group"), "{message}");
    assert!(message.contains("\"sleep\""), "{message}");
    support::assert_no_leaks(&marker);
}

const GRACE: Duration = Duration::from_millis(300);

/// The escapees of a teardown carry the pid the test binary sees (the one `/proc` and
/// `kill` use here, and the one `id()` is), and in the `Namespace` tier also the pid inside
/// the namespace (the one a pid file written by the process holds). The inner pid alone
/// would, in the `Namespace` tier, name another process here.
#[rstest]
fn escapees_are_reported_with_the_pids_the_caller_sees(
    #[values(Containment::Supervised, Containment::Namespace)] tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("escapee_pids");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let group = Builder::new()
        .containment(tier)
        .grace_period(GRACE)
        .spawn(&mut support::fixture(&marker, "setsid_escaper.sh", &[]))
        .expect("spawn");
    let mut escaper = Vec::new();
    support::wait_until("the escaper has its own session", || {
        escaper = support::marked_session_leaders(&marker);
        escaper.len() == 1
    });
    let here = u32::try_from(escaper[0]).expect("pid");
    let inner = procfs::process::Process::new(escaper[0])
        .and_then(|p| p.status())
        .expect("status")
        .nspid
        .and_then(|ids| ids.last().copied())
        .and_then(|pid| u32::try_from(pid).ok())
        .expect("NSpid");
    let report = group.shutdown().expect("shutdown");
    assert_eq!(report.escapees.len(), 1, "{report:?}");
    let escapee = report.escapees[0];
    assert_eq!(escapee.pid, Some(here), "{report:?}");
    if tier == Containment::Namespace {
        assert_ne!(inner, here, "a pid of the namespace differs");
        assert_eq!(escapee.pid_in_namespace, Some(inner), "{report:?}");
    } else {
        assert_eq!(inner, here);
        assert_eq!(escapee.pid_in_namespace, None);
    }
    support::assert_no_leaks(&marker);
}

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
/// its socket; the others must still wake (they watch the leader's pidfd, whose readiness
/// is the leader's state, not a message).
#[rstest]
fn concurrent_waits_through_an_arc_all_see_the_exit(
    #[values(Containment::Group, Containment::Supervised, Containment::Namespace)]
    tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
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
    // The portable backend has no `Supervised` tier (`tier_unavailable` asserts that in the
    // tests about tiers); this fixture is about sharing, so there it holds a `Group`.
    let tier = if cfg!(pgroup_portable) {
        Containment::Group
    } else {
        Containment::Supervised
    };
    Builder::new()
        .containment(tier)
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
