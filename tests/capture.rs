//! The captured output under pressure: floods (with and without line ends) cost the test
//! binary no memory and do not slow the child; waits end at their timeout however fast the
//! child writes; Drop keeps its bound with a flooding escapee; long lines keep their end,
//! marked as cut, and do not hide the lines after them (nor do `\r` progress updates);
//! streams do not hold each other up; readiness errors read well in `Debug`, which is what
//! `expect` and `?` print; a failing `#[tokio::test]` shows what its group wrote; and `wait`
//! closes the stdin the group holds, as `Child::wait` does.

// The suite's support reads /proc (leak markers, VmHWM): Linux only.
#![cfg(target_os = "linux")]

mod support;

use std::io::{ErrorKind, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgroup::{Builder, Containment, NotReady, NotReadyReason, SpawnedGroup, Stream, CAPTURE_LIMIT};
use rstest::rstest;

/// Long enough never to end a correct wait on a loaded machine.
const READY: Duration = Duration::from_secs(60);

/// The timeout of the waits under a flood, as in the issue that measured them.
const TIMEOUT: Duration = Duration::from_secs(1);

/// How far past its timeout a wait may return under a flood before this suite calls it a
/// failure: the waits look at their deadline every 256 lines and between two copies of the
/// tail (a few milliseconds); the rest is margin for a loaded 2-core machine.
const OVERSHOOT: Duration = Duration::from_millis(500);

#[test]
#[ignore = "entry point of the helper processes the other tests re-execute this binary as"]
fn role_entry() {
    support::role_main(
        &|_| false,
        &[("flood", flood_role), ("unbounded", unbounded_role)],
    );
}

fn not_ready(err: &std::io::Error) -> &NotReady {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<NotReady>())
        .unwrap_or_else(|| panic!("not a NotReady: {err:?}"))
}

/// `sh -c script`, carrying the marker.
fn sh(marker: &str, script: &str) -> Command {
    support::marked(marker, "sh", &["-c", script])
}

fn captured(marker: &str, script: &str) -> SpawnedGroup {
    Builder::new()
        .capture_output(true)
        .spawn(&mut sh(marker, script))
        .expect("spawn")
}

// ---- memory and speed under a flood -------------------------------------------------------

/// A field of /proc/self/status in KiB (`VmHWM`: the peak resident set; `VmRSS`).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// The shell pipeline that writes `bytes` bytes to stdout: `y\n` lines, or one line of
/// `x` without a line end.
fn flood_script(kind: &str, bytes: u64) -> String {
    match kind {
        "lines" => format!("yes | head -c {bytes}"),
        "bytes" => format!("head -c {bytes} /dev/zero | tr '\\0' x"),
        _ => panic!("unknown flood {kind}"),
    }
}

/// Runs a flood of `bytes` into a captured group, with a wait for a line that never comes
/// looking at every change on another thread, until the leader exits; checks that every
/// byte was read (the tail holds the last 64 KiB, and the report counts the rest).
fn capture_flood(marker: &str, kind: &str, bytes: u64) {
    let group = captured(marker, &flood_script(kind, bytes));
    let waited = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| group.wait_for_line(Stream::Stdout, READY, |l| l == "never"));
        let status = group.wait().expect("wait");
        assert!(status.success(), "{status}");
        waiter.join().expect("the waiter")
    });
    let err = waited.expect_err("no line matches");
    assert_ne!(
        not_ready(&err).reason,
        NotReadyReason::TimedOut,
        "the wait ends with the flood: {err}"
    );
    let report = group.shutdown().expect("shutdown");
    let tail = report.stdout.as_deref().expect("captured");
    assert_eq!(
        tail.len(),
        CAPTURE_LIMIT,
        "the last 64 KiB, marker included"
    );
    let (cut, kept) = split_marker(tail);
    assert_eq!(u64::try_from(cut).expect("fits"), report.stdout_dropped);
    assert_eq!(
        cut + kept.len(),
        usize::try_from(bytes).expect("fits"),
        "every byte was read"
    );
    match kind {
        "lines" => assert!(kept.ends_with("y\ny\n"), "{}", &kept[kept.len() - 10..]),
        _ => assert!(kept.bytes().all(|b| b == b'x')),
    }
}

/// The number of bytes a marked text (a tail, a line) says were cut, and the rest of it.
fn split_marker(text: &str) -> (usize, &str) {
    let rest = text
        .strip_prefix("[… ")
        .unwrap_or_else(|| panic!("not marked: {}", &text[..40.min(text.len())]));
    let (cut, kept) = rest.split_once(" bytes cut]").expect("the marker's end");
    (cut.parse().expect("a number"), kept)
}

/// Measures, in this process (a copy of the test binary), what a flood costs: the growth of
/// its peak resident set (`VmHWM`) over a flood of `PGROUP_FLOOD_BYTES`, after a small flood
/// of the same kind (so that what is allocated once, such as the lifeline, the supervisor and
/// the reader thread's malloc arena, is in the baseline); and how long the flood takes, into
/// the capture and into /dev/null.
fn flood_role(_logs: support::Logs<'_>) -> i32 {
    let marker = std::env::var(support::MARKER_VAR).expect("marker");
    let kind = std::env::var("PGROUP_FLOOD").expect("kind");
    let bytes: u64 = std::env::var("PGROUP_FLOOD_BYTES")
        .expect("bytes")
        .parse()
        .expect("a number");
    capture_flood(&marker, &kind, 2_000_000);
    let (hwm, rss) = (status_kib("VmHWM"), status_kib("VmRSS"));
    let started = Instant::now();
    capture_flood(&marker, &kind, bytes);
    let with_waiter = started.elapsed();
    println!("HWM_GROWTH_KIB {}", status_kib("VmHWM").saturating_sub(hwm));
    println!("RSS_GROWTH_KIB {}", status_kib("VmRSS").saturating_sub(rss));
    println!("WITH_WAITER_MS {}", with_waiter.as_millis());
    // The time of the flood alone (spawn to exit, no wait looking at it), captured and
    // into /dev/null, and through one more pipe into /dev/null (`cat`: what any reader of
    // a pipe costs the writer).
    let started = Instant::now();
    let group = captured(&marker, &flood_script(&kind, bytes));
    let status = group.wait().expect("wait");
    println!("CAPTURED_MS {}", started.elapsed().as_millis());
    assert!(status.success());
    drop(group);
    for (key, sink) in [
        ("DEVNULL_MS", "> /dev/null"),
        ("CAT_MS", "| cat > /dev/null"),
    ] {
        let started = Instant::now();
        let status = sh(&marker, &format!("{} {sink}", flood_script(&kind, bytes)))
            .status()
            .expect("run the flood");
        assert!(status.success());
        println!("{key} {}", started.elapsed().as_millis());
    }
    0
}

/// The negative control of the measure: reading the same flood with std's `output()`,
/// which keeps it all, does show in `VmHWM`.
fn unbounded_role(_logs: support::Logs<'_>) -> i32 {
    let marker = std::env::var(support::MARKER_VAR).expect("marker");
    let hwm = status_kib("VmHWM");
    let output = sh(&marker, &flood_script("lines", 20_000_000))
        .output()
        .expect("output");
    assert_eq!(output.stdout.len(), 20_000_000);
    println!("HWM_GROWTH_KIB {}", status_kib("VmHWM").saturating_sub(hwm));
    0
}

fn run_role(role: &str, marker: &str, vars: &[(&str, &str)]) -> support::RoleOutput {
    let mut cmd = support::role_command(role);
    cmd.env(support::MARKER_VAR, marker).stdout(Stdio::piped());
    for (key, value) in vars {
        cmd.env(key, value);
    }
    let out = support::run_collecting(cmd, Duration::from_secs(300));
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(0),
        "the role failed:\n{}",
        out.lines.join("\n")
    );
    out
}

/// A 200 MB flood, of `y\n` lines or of one line without an end, grows the test binary's
/// peak memory by at most 1 MiB: the capture holds the tails and one read buffer, whatever
/// the child writes (a buffer that grew with the flood would take 22 to 58 MiB, and up to
/// 1.86 GB). And the reader keeps pace with the child: the flood takes about as
/// long captured as through `cat` into /dev/null, which is what any reader of a pipe costs
/// the writer (measured and printed, with the time into /dev/null; the bound asserted is
/// generous, a check that the child is not held up, not a benchmark).
#[rstest]
fn a_flood_costs_the_test_binary_no_memory(#[values("lines", "bytes")] kind: &str) {
    let marker = support::marker("flood");
    let out = run_role(
        "flood",
        &marker,
        &[("PGROUP_FLOOD", kind), ("PGROUP_FLOOD_BYTES", "200000000")],
    );
    let growth: u64 = out.one("HWM_GROWTH_KIB").parse().expect("KiB");
    let captured: u64 = out.one("CAPTURED_MS").parse().expect("ms");
    let devnull: u64 = out.one("DEVNULL_MS").parse().expect("ms");
    eprintln!(
        "{kind}: VmHWM +{growth} KiB (VmRSS +{} KiB); 200 MB captured in {captured} ms ({} ms \
         with a wait looking at every change), into /dev/null in {devnull} ms, through `cat` \
         into /dev/null in {} ms",
        out.one("RSS_GROWTH_KIB"),
        out.one("WITH_WAITER_MS"),
        out.one("CAT_MS"),
    );
    assert!(growth <= 1024, "the test binary grew by {growth} KiB");
    let cat: u64 = out.one("CAT_MS").parse().expect("ms");
    assert!(
        captured <= 2 * cat + 1000,
        "the flood took {captured} ms captured, {cat} ms through cat"
    );
    support::assert_no_leaks(&marker);
}

/// Negative control: the measure sees a buffer that keeps what it reads (std's `output()`
/// of a 20 MB flood).
#[test]
fn negative_control_an_unbounded_read_shows_in_the_peak_memory() {
    let marker = support::marker("unbounded");
    let out = run_role("unbounded", &marker, &[]);
    let growth: u64 = out.one("HWM_GROWTH_KIB").parse().expect("KiB");
    assert!(growth >= 10 * 1024, "only {growth} KiB");
    support::assert_no_leaks(&marker);
}

// ---- timeouts and Drop under a flood ------------------------------------------------------

/// `wait_for_line` (on the flooded stream and on the quiet one) and `wait_for_tcp` return at
/// their timeout while the child floods its stdout with `yes` (a reader that drains before
/// it looks at the clock blocks for seconds past it), and Drop is prompt afterwards.
#[rstest]
fn waits_end_at_their_timeout_under_a_flood(
    #[values("line on stdout", "line on stderr", "tcp")] wait: &str,
) {
    let marker = support::marker("flood_timeout");
    let group = captured(&marker, "yes");
    group
        .wait_for_line(Stream::Stdout, READY, |l| l == "y")
        .expect("the flood has begun");
    let started = Instant::now();
    let err = match wait {
        "line on stdout" => group
            .wait_for_line(Stream::Stdout, TIMEOUT, |l| l == "never")
            .map(drop),
        "line on stderr" => group
            .wait_for_line(Stream::Stderr, TIMEOUT, |l| l == "never")
            .map(drop),
        _ => group.wait_for_tcp(("127.0.0.1", free_port()), TIMEOUT),
    }
    .expect_err("nothing comes");
    let took = started.elapsed();
    eprintln!("{wait}: returned {:?} after its timeout", took - TIMEOUT);
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert_eq!(not_ready(&err).reason, NotReadyReason::TimedOut);
    assert!(took >= TIMEOUT, "{took:?}");
    assert!(took < TIMEOUT + OVERSHOOT, "{wait} took {took:?}");
    // The error carries the tail: the flood's last lines.
    assert!(not_ready(&err)
        .stdout
        .as_deref()
        .is_some_and(|t| t.ends_with("y\n")));
    let started = Instant::now();
    drop(group);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "Drop took {:?}",
        started.elapsed()
    );
    support::assert_no_leaks(&marker);
}

/// A port that nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

/// Drop keeps its documented bound (grace period + `KILL_WAIT_BOUND`, and the half second
/// it gives the pipes) when a process that left the group (which the `Group` tier cannot
/// see, by design) keeps flooding the captured pipe: the reader does not read until the pipe
/// is empty, which it never is.
#[test]
fn drop_keeps_its_bound_with_a_flooding_escapee() {
    let marker = support::marker("flooding_escapee");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let grace = Duration::from_millis(200);
    let group = Builder::new()
        .containment(Containment::Group)
        .grace_period(grace)
        .capture_output(true)
        .spawn(&mut sh(&marker, "setsid yes & exec sleep 1000"))
        .expect("spawn");
    group
        .wait_for_line(Stream::Stdout, READY, |l| l == "y")
        .expect("the escapee floods");
    support::wait_until("the escapee leads a session of its own", || {
        support::marked_session_leaders(&marker).len() == 1
    });
    let started = Instant::now();
    drop(group);
    let took = started.elapsed();
    let bound = grace + pgroup::KILL_WAIT_BOUND + Duration::from_millis(500);
    eprintln!("Drop took {took:?} (bound {bound:?})");
    assert!(took < bound, "Drop took {took:?}");
    // The escapee was never signalled; it dies of the closed pipe (EPIPE, SIGPIPE), and
    // this test's clean-up would end it by its pid otherwise.
    support::kill_marked(&marker);
    support::assert_no_leaks(&marker);
}

// ---- long lines, progress updates, streams apart ------------------------------------------

/// A line longer than the tail keeps its last bytes, marked as cut, and the line after it is
/// found; the report says how much was dropped (the tail is not left empty).
#[test]
fn a_long_line_keeps_its_end_marked_as_cut_and_the_next_line_is_found() {
    let marker = support::marker("long_line");
    let group = captured(
        &marker,
        "head -c 70000 /dev/zero | tr '\\0' x; echo; echo READY; exec sleep 1000",
    );
    // The long line itself, as a wait sees it: its last bytes, after the marker (how many
    // were cut depends on whether READY was read before the wait looked).
    let line = group
        .wait_for_line(Stream::Stdout, READY, |l| l.starts_with("[…"))
        .expect("the long line");
    let (cut, kept) = split_marker(&line);
    assert_eq!(cut + kept.len(), 70_000, "{}", &line[..40]);
    assert!(kept.bytes().all(|b| b == b'x'));
    assert!(line.len() <= CAPTURE_LIMIT);
    assert_eq!(
        group
            .wait_for_line(Stream::Stdout, READY, |l| l == "READY")
            .expect("the line after it"),
        "READY"
    );
    // The tail: the last 64 KiB, marker included; the marker counts what it does not show,
    // as the report does.
    let tail = group.captured(Stream::Stdout).expect("captured");
    assert_eq!(tail.len(), CAPTURE_LIMIT);
    let (cut, kept) = split_marker(&tail);
    assert_eq!(cut + kept.len(), 70_000 + 1 + 6);
    assert!(kept.ends_with("xxx\nREADY\n"));
    let report = group.shutdown().expect("shutdown");
    assert_eq!(report.stdout_dropped, u64::try_from(cut).expect("fits"));
    assert_eq!(report.stderr_dropped, 0);
    assert_eq!(report.stdout.as_deref(), Some(tail.as_str()));
    support::assert_no_leaks(&marker);
}

/// A long line alone (`print('x' * 70000)`), and a 110 KB JSON line: each keeps its last
/// 64 KiB, marked.
#[rstest]
fn a_long_line_alone_keeps_its_last_64_kib(#[values("x", "json")] what: &str) {
    let marker = support::marker("long_alone");
    let program = match what {
        "x" => "print('x' * 70000)",
        _ => "import json; print(json.dumps({'items': list(range(20000))}))",
    };
    let group = Builder::new()
        .capture_output(true)
        .spawn(&mut support::marked(&marker, "python3", &["-c", program]))
        .expect("spawn");
    let line = group
        .wait_for_line(Stream::Stdout, READY, |_| true)
        .expect("the line");
    assert_eq!(
        line.len(),
        CAPTURE_LIMIT,
        "its last 64 KiB, marker included"
    );
    let (cut, kept) = split_marker(&line);
    let total = cut + kept.len();
    match what {
        "x" => assert_eq!(total, 70_000),
        _ => assert!(
            kept.ends_with("19998, 19999]}") && total > 100_000,
            "{total}"
        ),
    }
    // The tail holds the same end of the line, and its line end.
    let report = group.shutdown().expect("shutdown");
    let tail = report.stdout.expect("captured");
    let (tail_cut, tail_kept) = split_marker(&tail);
    assert_eq!(tail_cut + tail_kept.len(), total + 1);
    assert!(kept.ends_with(tail_kept.strip_suffix('\n').expect("the line end")));
    support::assert_no_leaks(&marker);
}

/// 120 KB of `\r`-separated progress updates, then the real error: the error is a line of
/// its own, found by its beginning (not the end of a 64 KiB "line" that is dropped).
#[test]
fn progress_updates_do_not_hide_the_next_line() {
    let marker = support::marker("progress");
    let group = Builder::new()
        .capture_output(true)
        .spawn(&mut support::marked(
            &marker,
            "python3",
            &[
                "-c",
                "import sys\nfor i in range(8000): sys.stderr.write('progress %d%%\\r' % i)\n\
                 sys.stderr.write('FATAL: the real error\\n'); sys.stderr.flush()\n\
                 import time; time.sleep(1000)",
            ],
        ))
        .expect("spawn");
    let line = group
        .wait_for_line(Stream::Stderr, READY, |l| l.starts_with("FATAL"))
        .expect("the error line");
    assert_eq!(line, "FATAL: the real error");
    assert_eq!(
        group
            .wait_for_line(Stream::Stderr, READY, |l| l.ends_with("7999%"))
            .expect("the last update"),
        "progress 7999%"
    );
    drop(group);
    support::assert_no_leaks(&marker);
}

/// One stream floods, the other says it is ready: the ready line is found at once, and each
/// stream holds only its own output.
#[test]
fn a_flooded_stream_does_not_hold_up_the_other() {
    let marker = support::marker("streams_apart");
    let group = captured(&marker, "yes & sleep 0.2; echo ready >&2; wait");
    group
        .wait_for_line(Stream::Stderr, READY, |l| l == "ready")
        .expect("ready on stderr");
    group
        .wait_for_line(Stream::Stdout, READY, |l| l == "y")
        .expect("the flood on stdout");
    assert_eq!(group.captured(Stream::Stderr).as_deref(), Some("ready\n"));
    assert!(group
        .captured(Stream::Stdout)
        .is_some_and(|t| !t.contains("ready")));
    drop(group);
    support::assert_no_leaks(&marker);
}

// ---- readable errors -----------------------------------------------------------------------

/// What `expect`, `unwrap` and a test returning `Result` print is the `Debug` form of the
/// `io::Error`, and so of its `NotReady`: it reads as the `Display` does, the status in
/// words and each line of the output on a line of its own (no raw wait status, no escaped
/// newlines).
#[test]
fn a_readiness_error_prints_readably_in_debug() {
    let marker = support::marker("readable");
    let server = captured(
        &marker,
        "echo 'usage: server [--port N]' >&2; \
         echo 'server: error: unrecognized arguments: --bogus' >&2; exit 2",
    );
    let err = server
        .wait_for_line(Stream::Stdout, READY, |l| l.starts_with("listening"))
        .expect_err("the server exits");
    let debug = format!("{err:?}");
    for text in [&debug, &err.to_string()] {
        assert!(
            text.contains(
                "not ready: the leader exited (exit status 2) before a matching line on stdout"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "\n--- stderr ---\nusage: server [--port N]\nserver: error: unrecognized \
                 arguments: --bogus\n--- end of stderr ---"
            ),
            "{text}"
        );
        assert!(text.contains("\n--- stdout: (empty) ---"), "{text}");
        assert!(
            !text.contains("\\n") && !text.contains("unix_wait_status"),
            "{text}"
        );
    }
    assert!(
        debug.starts_with("Custom { kind: UnexpectedEof, error: pgroup::SpawnedGroup of \"sh\""),
        "{debug}"
    );
    // `{:#?}` shows the fields, the status still in words.
    let pretty = format!("{:#?}", not_ready(&err));
    assert!(
        pretty.contains("status: Some(\n        exit status 2,\n    )"),
        "{pretty}"
    );
    drop(server);

    let killed = captured(&marker, "kill -TERM $$");
    let err = killed
        .wait_for_line(Stream::Stdout, READY, |_| true)
        .expect_err("killed");
    assert!(
        format!("{err:?}").contains("the leader exited (signal 15 (SIGTERM))"),
        "{err:?}"
    );
    drop(killed);

    let uncaptured =
        SpawnedGroup::spawn(&mut support::marked(&marker, "sleep", &["1000"])).expect("spawn");
    let err = uncaptured
        .wait_for_line(Stream::Stdout, READY, |_| true)
        .expect_err("not captured");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        format!("{err:?}").contains("Builder::capture_output(true)"),
        "{err:?}"
    );
    drop(uncaptured);
    support::assert_no_leaks(&marker);
}

/// Run by `a_test_returning_the_error_prints_it_readably` in a libtest of its own: the
/// README's fixture style, `?` on a readiness wait in a test returning `io::Result`.
#[test]
#[ignore = "fails on purpose; run by a_test_returning_the_error_prints_it_readably"]
fn failing_with_a_readiness_error() -> std::io::Result<()> {
    let Ok(marker) = std::env::var("PGROUP_CAPTURE_FAIL") else {
        return Ok(());
    };
    let server = Builder::new().capture_output(true).spawn(&mut sh(
        &marker,
        "echo 'Traceback (most recent call last):' >&2; \
         echo '  File \"server.py\", line 3, in <module>' >&2; \
         echo 'KeyError: PORT' >&2; exit 1",
    ))?;
    server.wait_for_line(Stream::Stdout, READY, |l| l.starts_with("listening"))?;
    Ok(())
}

#[test]
fn a_test_returning_the_error_prints_it_readably() {
    let marker = support::marker("failing_question_mark");
    let out = run_failing_test(&marker, "failing_with_a_readiness_error", false);
    assert!(
        out.contains(
            "the leader exited (exit status 1) before a matching line on stdout\n--- stdout: \
             (empty) ---\n--- stderr ---\nTraceback (most recent call last):\n  File \
             \"server.py\", line 3, in <module>\nKeyError: PORT\n--- end of stderr ---"
        ),
        "{out}"
    );
    support::assert_no_leaks(&marker);
}

/// Runs the ignored test `name` of this binary in a libtest of its own (libtest's failure
/// code asserted), and returns what it printed (stdout, then stderr).
fn run_failing_test(marker: &str, name: &str, nocapture: bool) -> String {
    let mut cmd = support::marked(
        marker,
        std::env::current_exe()
            .expect("own path")
            .to_str()
            .expect("utf-8 path"),
        &["--exact", name, "--ignored", "--test-threads=1"],
    );
    if nocapture {
        cmd.arg("--nocapture");
    }
    cmd.env("PGROUP_CAPTURE_FAIL", marker)
        .env("RUST_BACKTRACE", "0");
    let run = Builder::new()
        .capture_output(true)
        .spawn(&mut cmd)
        .expect("spawn the failing test");
    assert_eq!(
        run.wait_timeout(READY)
            .expect("wait")
            .and_then(|s| s.code()),
        Some(101)
    );
    let report = run.shutdown().expect("shutdown");
    format!(
        "{}\n{}",
        report.stdout.expect("captured"),
        report.stderr.expect("captured")
    )
}

// ---- wait closes stdin ---------------------------------------------------------------------

/// Runs `wait` on another thread and ends the marked processes (by pid) if it has not
/// returned within `limit`, so that a wait that hangs fails the test instead of hanging it.
fn within<T: Send>(marker: &str, limit: Duration, wait: impl FnOnce() -> T + Send) -> Option<T> {
    std::thread::scope(|scope| {
        let waiting = scope.spawn(wait);
        let deadline = Instant::now() + limit;
        while !waiting.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let finished = waiting.is_finished();
        if !finished {
            support::kill_marked(marker);
        }
        let value = waiting.join().expect("the waiting thread");
        finished.then_some(value)
    })
}

/// `wait` closes the stdin the group still holds before it waits, as `Child::wait` does: a
/// `cat` fed through it exits instead of waiting for more input forever. The negative
/// control: with the stdin still held, `cat` does not exit (`wait_timeout` leaves it open).
#[rstest]
fn wait_closes_the_stdin_the_group_holds(
    #[values(Containment::Group, Containment::Supervised)] tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("wait_stdin");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let mut group = Builder::new()
        .containment(tier)
        .capture_output(true)
        .spawn(support::marked(&marker, "cat", &[]).stdin(Stdio::piped()))
        .expect("spawn");
    let stdin = group.stdin.as_mut().expect("piped");
    stdin.write_all(b"hello\n").expect("write");
    group
        .wait_for_line(Stream::Stdout, READY, |l| l == "hello")
        .expect("cat echoes");
    assert_eq!(
        group
            .wait_timeout(Duration::from_millis(300))
            .expect("wait_timeout"),
        None,
        "cat waits for more while its stdin is open"
    );
    let status = within(&marker, Duration::from_secs(10), || group.wait())
        .expect("wait returned: it closed stdin")
        .expect("wait");
    assert!(status.success(), "{status}");
    let stdin = group.stdin.as_mut().expect("still held, closed");
    assert!(stdin.is_closed());
    assert_eq!(
        stdin.write_all(b"more").expect_err("closed").kind(),
        ErrorKind::BrokenPipe
    );
    assert_eq!(
        group.shutdown().expect("shutdown").stdout.as_deref(),
        Some("hello\n")
    );
    support::assert_no_leaks(&marker);
}

// ---- tokio ----------------------------------------------------------------------------------

#[cfg(feature = "tokio")]
mod tokio_capture {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::process::Command as TokioCommand;

    fn sh(marker: &str, script: &str) -> TokioCommand {
        TokioCommand::from(super::sh(marker, script))
    }

    /// The async waits return at their timeout while the child floods (not seconds after
    /// it), and they do not starve the runtime: a task on it keeps ticking.
    async fn async_waits_end_at_their_timeout_under_a_flood(flavor: &str) {
        let marker = support::marker("tokio_flood_timeout");
        let group = Builder::new()
            .capture_output(true)
            .spawn_tokio(&mut sh(&marker, "yes"))
            .expect("spawn");
        group
            .wait_for_line(Stream::Stdout, READY, |l| l == "y")
            .await
            .expect("the flood has begun");
        let ticks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ticker = {
            let ticks = std::sync::Arc::clone(&ticks);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        };
        for wait in ["line on stdout", "line on stderr", "tcp"] {
            let before = ticks.load(std::sync::atomic::Ordering::Relaxed);
            let started = Instant::now();
            let err = match wait {
                "line on stdout" => group
                    .wait_for_line(Stream::Stdout, TIMEOUT, |l| l == "never")
                    .await
                    .map(drop),
                "line on stderr" => group
                    .wait_for_line(Stream::Stderr, TIMEOUT, |l| l == "never")
                    .await
                    .map(drop),
                _ => {
                    group
                        .wait_for_tcp(("127.0.0.1", free_port()), TIMEOUT)
                        .await
                }
            }
            .expect_err("nothing comes");
            let took = started.elapsed();
            eprintln!(
                "{flavor}, {wait}: returned {:?} after its timeout",
                took - TIMEOUT
            );
            assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
            assert!(
                took >= TIMEOUT && took < TIMEOUT + OVERSHOOT,
                "{wait} took {took:?}"
            );
            let ticked = ticks.load(std::sync::atomic::Ordering::Relaxed) - before;
            assert!(
                ticked >= 10,
                "{flavor}, {wait}: the runtime ticked {ticked} times in {took:?}"
            );
        }
        ticker.abort();
        drop(group);
        all_dead(&marker).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn waits_end_at_their_timeout_under_a_flood_current_thread() {
        async_waits_end_at_their_timeout_under_a_flood("current_thread").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waits_end_at_their_timeout_under_a_flood_multi_thread() {
        async_waits_end_at_their_timeout_under_a_flood("multi_thread").await;
    }

    /// Waits, off the runtime's threads, until no process carrying `marker` is alive.
    async fn all_dead(marker: &str) {
        let marker = marker.to_owned();
        tokio::task::spawn_blocking(move || support::assert_no_leaks(&marker))
            .await
            .expect("the check");
    }

    /// The async `wait_for_line` finds the line after a long one, and a line after
    /// progress updates.
    #[tokio::test(flavor = "current_thread")]
    async fn async_waits_find_lines_after_long_ones() {
        let marker = support::marker("tokio_long");
        let group = Builder::new()
            .capture_output(true)
            .spawn_tokio(&mut sh(
                &marker,
                "head -c 70000 /dev/zero | tr '\\0' x; echo; printf 'a\\rb\\rFATAL: x\\n' >&2; \
                 echo READY; exec sleep 1000",
            ))
            .expect("spawn");
        let line = group
            .wait_for_line(Stream::Stdout, READY, |l| l.ends_with("xxx"))
            .await
            .expect("the long line");
        assert!(line.starts_with("[… "), "{}", &line[..30]);
        assert_eq!(
            group
                .wait_for_line(Stream::Stdout, READY, |l| l == "READY")
                .await
                .expect("the next one"),
            "READY"
        );
        assert_eq!(
            group
                .wait_for_line(Stream::Stderr, READY, |l| l.starts_with("FATAL"))
                .await
                .expect("after progress"),
            "FATAL: x"
        );
        drop(group);
        all_dead(&marker).await;
    }

    /// Run by `a_failing_tokio_test_shows_the_captured_output`: a `#[tokio::test]` that
    /// fails with a captured group in scope.
    async fn failing_with_a_captured_group() {
        let Ok(marker) = std::env::var("PGROUP_CAPTURE_FAIL") else {
            return;
        };
        let server = Builder::new()
            .capture_output(true)
            .spawn_tokio(&mut sh(
                &marker,
                "echo 'listening'; echo 'the last words of the server' >&2; sleep 1000",
            ))
            .expect("spawn");
        server
            .wait_for_line(Stream::Stderr, READY, |l| l.contains("last words"))
            .await
            .expect("stderr");
        assert_eq!(1 + 1, 3, "the test's own assertion fails");
        drop(server);
    }

    #[tokio::test(flavor = "current_thread")]
    #[ignore = "fails on purpose; run by a_failing_tokio_test_shows_the_captured_output"]
    async fn failing_tokio_test_current_thread() {
        failing_with_a_captured_group().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "fails on purpose; run by a_failing_tokio_test_shows_the_captured_output"]
    async fn failing_tokio_test_multi_thread() {
        failing_with_a_captured_group().await;
    }

    /// A failing `#[tokio::test]` shows what its group wrote, as a sync test does (it used
    /// to show nothing: the drop handed the group to the background thread, which is not
    /// panicking), captured by libtest or, with `--nocapture` (as nextest runs), on stderr.
    #[rstest]
    fn a_failing_tokio_test_shows_the_captured_output(
        #[values("failing_tokio_test_current_thread", "failing_tokio_test_multi_thread")]
        name: &str,
        #[values(false, true)] nocapture: bool,
    ) {
        let marker = support::marker("failing_tokio");
        let out = run_failing_test(&marker, &format!("tokio_capture::{name}"), nocapture);
        assert!(out.contains("the test's own assertion fails"), "{out}");
        assert!(
            out.contains("captured output")
                && out.contains("\n--- stderr ---\nthe last words of the server\n"),
            "{out}"
        );
        assert!(out.contains("\n--- stdout ---\nlistening\n"), "{out}");
        support::assert_no_leaks(&marker);
    }

    /// The async `wait` closes the stdin the group holds, as tokio's `Child::wait` does;
    /// `wait_timeout` leaves it open (the negative control).
    #[tokio::test(flavor = "current_thread")]
    async fn async_wait_closes_the_stdin_the_group_holds() {
        let marker = support::marker("tokio_wait_stdin");
        let _cleanup = support::KillMarkedOnDrop(marker.clone());
        let mut group = Builder::new()
            .capture_output(true)
            .spawn_tokio(
                TokioCommand::from(support::marked(&marker, "cat", &[])).stdin(Stdio::piped()),
            )
            .expect("spawn");
        group
            .stdin
            .as_mut()
            .expect("piped")
            .write_all(b"hello\n")
            .await
            .expect("write");
        assert_eq!(
            group
                .wait_timeout(Duration::from_millis(300))
                .await
                .expect("wait_timeout"),
            None,
            "cat waits for more while its stdin is open"
        );
        let status = tokio::time::timeout(Duration::from_secs(10), group.wait())
            .await
            .expect("wait returned: it closed stdin")
            .expect("wait");
        assert!(status.success(), "{status}");
        assert!(group.stdin.as_ref().expect("held").is_closed());
        assert_eq!(
            group.shutdown().await.expect("shutdown").stdout.as_deref(),
            Some("hello\n")
        );
        all_dead(&marker).await;
    }
}
