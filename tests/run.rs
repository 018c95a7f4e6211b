//! `Run` (and `Builder::output`): a CLI run to completion in a group of its own, with its
//! complete output, input, a timeout and a limit; a grandchild that holds the pipes neither
//! hangs the call nor survives it (std's `Command::output()` on the same command hangs: the
//! negative control).

// The suite's support reads /proc (leak markers): Linux only.
#![cfg(target_os = "linux")]

mod support;

use std::io::ErrorKind;
use std::process::Command;
use std::time::{Duration, Instant};

use pgroup::{Builder, Containment, Incomplete, IncompleteReason, Run, Stream};
use rstest::rstest;

/// What a call that must not hang is given: returning within it is the point.
const PROMPT: Duration = Duration::from_secs(1);

fn sh(marker: &str, script: &str) -> Command {
    support::marked(marker, "sh", &["-c", script])
}

fn incomplete(err: &std::io::Error) -> &Incomplete {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<Incomplete>())
        .unwrap_or_else(|| panic!("not an Incomplete: {err:?}"))
}

/// The whole output, longer than the capture's 64 KiB tail, with the status, in every tier.
#[rstest]
fn the_output_is_complete(
    #[values(Containment::Group, Containment::Supervised, Containment::Namespace)]
    tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("run_complete");
    let mut builder = Builder::new();
    builder.containment(tier);
    let output = builder
        .output(&mut sh(&marker, "seq 1 100000; echo done >&2; exit 3"))
        .expect("output");
    assert_eq!(output.status.code(), Some(3));
    let expected: String = (1..=100_000).map(|n| format!("{n}\n")).collect();
    assert_eq!(output.stdout.len(), expected.len());
    assert!(
        output.stdout == expected.as_bytes(),
        "the whole of seq's output"
    );
    assert_eq!(output.stderr, b"done\n");
    support::assert_no_leaks(&marker);
}

/// The input is written to stdin, which is then closed: 1 MiB through `cat`, more than a
/// pipe holds, so writing and reading must go on at once.
#[test]
fn the_input_goes_to_stdin() {
    let marker = support::marker("run_input");
    let input: Vec<u8> = (0..1024 * 1024).map(|i| b"abcdefghij\n"[i % 11]).collect();
    let output = Run::new()
        .input(input.clone())
        .timeout(Duration::from_secs(60))
        .output(&mut support::marked(&marker, "cat", &[]))
        .expect("output");
    assert!(output.status.success());
    assert!(output.stdout == input, "cat echoed all of it");
    // No input: stdin is null, as with std's output().
    let output = Run::new()
        .output(&mut support::marked(&marker, "cat", &[]))
        .expect("output");
    assert!(output.status.success() && output.stdout.is_empty());
    // A command that does not read its input is not an error.
    let output = Run::new()
        .input(vec![b'x'; 4 * 1024 * 1024])
        .output(&mut sh(&marker, "echo ignored"))
        .expect("output");
    assert_eq!(output.stdout, b"ignored\n");
    support::assert_no_leaks(&marker);
}

/// `sh -c 'sleep 300 & echo started'`: the background `sleep` holds the pipes. The call
/// returns within a second of the start (after the wait delay), with the output, and the
/// `sleep` is torn down with the group, in every tier.
#[rstest]
fn a_grandchild_holding_the_pipes_neither_hangs_the_call_nor_survives_it(
    #[values(Containment::Group, Containment::Supervised, Containment::Namespace)]
    tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("run_grandchild");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let started = Instant::now();
    let mut builder = Builder::new();
    builder.containment(tier);
    let output = builder
        .output(&mut sh(&marker, "sleep 300 & echo started"))
        .expect("output");
    let took = started.elapsed();
    eprintln!("{tier:?}: returned in {took:?}");
    assert!(took < PROMPT, "took {took:?}");
    assert!(output.status.success(), "{:?}", output.status);
    assert_eq!(output.stdout, b"started\n");
    assert!(
        support::marked_alive(&marker).is_empty(),
        "the sleep was torn down before the call returned: {:?}",
        support::marked_alive(&marker)
    );
}

/// The negative control: std's `Command::output()` on the same command blocks for as long
/// as the `sleep` holds the pipes. This test's watchdog ends the `sleep` (by its pid, found
/// by the marker) once std's call has been blocked for a second after the shell exited;
/// only then does std's call return.
#[test]
fn negative_control_std_output_hangs_while_a_grandchild_holds_the_pipes() {
    let marker = support::marker("std_output");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    std::thread::scope(|scope| {
        let std_output = scope.spawn(|| sh(&marker, "sleep 300 & echo started").output());
        // The shell has exited (only the sleep carries the marker and is alive), and std's
        // call still waits for the pipes.
        support::wait_until("the shell exited, the sleep runs", || {
            let alive = support::marked_alive(&marker);
            alive.len() == 1 && support::describe(alive[0]).contains("(sleep)")
        });
        std::thread::sleep(PROMPT);
        assert!(
            !std_output.is_finished(),
            "std's output() returned while the sleep held its pipes"
        );
        support::kill_marked(&marker);
        let output = std_output.join().expect("thread").expect("output");
        assert_eq!(output.stdout, b"started\n");
    });
    support::assert_no_leaks(&marker);
}

/// The wait delay reads what the other processes still write after the leader exited, and
/// ends as soon as they close the pipes; a delay of zero stops at the leader's exit, and
/// still reads what the leader wrote before it.
#[test]
fn the_wait_delay_reads_what_comes_in_time() {
    let marker = support::marker("run_delay");
    let script = "(sleep 0.2; echo late) & echo early";
    let started = Instant::now();
    let output = Run::new()
        .wait_delay(Duration::from_secs(30))
        .output(&mut sh(&marker, script))
        .expect("output");
    assert_eq!(output.stdout, b"early\nlate\n");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "ended with the pipes"
    );
    let output = Run::new()
        .wait_delay(Duration::ZERO)
        .output(&mut sh(&marker, "(sleep 300; echo never) & echo early"))
        .expect("output");
    assert_eq!(output.stdout, b"early\n");
    support::assert_no_leaks(&marker);
}

/// A timeout tears the group down; the error says so, in its `Debug` too, and carries what
/// was read and the status of the teardown.
#[test]
fn a_timeout_tears_the_group_down_and_carries_the_partial_output() {
    let marker = support::marker("run_timeout");
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let err = Run::new()
        .timeout(timeout)
        .output(&mut sh(
            &marker,
            "echo partial; echo 'still working' >&2; sleep 300 & wait",
        ))
        .expect_err("it times out");
    let took = started.elapsed();
    assert!(took >= timeout && took < timeout + PROMPT, "took {took:?}");
    assert_eq!(err.kind(), ErrorKind::TimedOut);
    let incomplete = incomplete(&err);
    assert_eq!(incomplete.reason, IncompleteReason::TimedOut(timeout));
    assert_eq!(incomplete.output.stdout, b"partial\n");
    assert_eq!(incomplete.output.stderr, b"still working\n");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&incomplete.output.status),
        Some(15)
    );
    let debug = format!("{err:?}");
    assert!(debug.contains("pgroup: \"sh\" (leader pid "), "{debug}");
    assert!(
        debug.contains("did not exit within its timeout of 300ms; its group was torn down (leader: signal 15 (SIGTERM))"),
        "{debug}"
    );
    assert!(
        debug.contains("\n--- stdout ---\npartial\n--- end of stdout ---"),
        "{debug}"
    );
    support::assert_no_leaks(&marker);
}

/// More output than the limit: the first bytes are kept, the rest is read (the command is
/// not held up) and counted, and the error says so.
#[test]
fn output_over_the_limit_is_reported() {
    let marker = support::marker("run_limit");
    let err = Run::new()
        .output_limit(1000)
        .output(&mut sh(&marker, "head -c 5000000 /dev/zero; echo fine >&2"))
        .expect_err("over the limit");
    assert_eq!(err.kind(), ErrorKind::Other);
    let incomplete = incomplete(&err);
    assert_eq!(
        incomplete.reason,
        IncompleteReason::LimitExceeded {
            stream: Stream::Stdout,
            limit: 1000
        }
    );
    assert_eq!(incomplete.output.stdout.len(), 1000);
    assert_eq!(incomplete.stdout_written, 5_000_000);
    assert_eq!(incomplete.output.stderr, b"fine\n");
    assert!(incomplete.output.status.success());
    assert!(
        err.to_string()
            .contains("wrote 5000000 bytes to stdout, more than the output limit of 1000"),
        "{err}"
    );
    support::assert_no_leaks(&marker);
}

/// A program that cannot be started fails as std's `output()` does, naming it.
#[test]
fn a_program_that_does_not_exist_is_an_error() {
    let err = Run::new()
        .output(&mut Command::new("/no/such/program"))
        .expect_err("no such program");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("/no/such/program"), "{err}");
}

#[cfg(feature = "tokio")]
mod tokio_run {
    use super::*;
    use tokio::process::Command as TokioCommand;

    fn sh(marker: &str, script: &str) -> TokioCommand {
        TokioCommand::from(super::sh(marker, script))
    }

    async fn all_dead(marker: &str) {
        let marker = marker.to_owned();
        tokio::task::spawn_blocking(move || support::assert_no_leaks(&marker))
            .await
            .expect("the check");
    }

    /// The async form: complete output and input, the grandchild case within a second
    /// and nothing left, and a timeout with the partial output; on both runtimes.
    async fn run_to_completion(flavor: &str) {
        let marker = support::marker("tokio_run");
        let input: Vec<u8> = (0..1024 * 1024).map(|i| b"0123456789\n"[i % 11]).collect();
        let output = Run::new()
            .input(input.clone())
            .output_tokio(&mut TokioCommand::from(support::marked(
                &marker,
                "cat",
                &[],
            )))
            .await
            .expect("output");
        assert!(
            output.status.success() && output.stdout == input,
            "{flavor}"
        );

        let started = Instant::now();
        let output = Builder::new()
            .output_tokio(&mut sh(&marker, "sleep 300 & echo started"))
            .await
            .expect("output");
        let took = started.elapsed();
        eprintln!("{flavor}: returned in {took:?}");
        assert!(took < PROMPT, "{flavor}: took {took:?}");
        assert_eq!(output.stdout, b"started\n");
        // A wait delay of zero still reads what the leader wrote before it exited.
        let output = Run::new()
            .wait_delay(Duration::ZERO)
            .output_tokio(&mut sh(&marker, "(sleep 300; echo never) & echo early"))
            .await
            .expect("output");
        assert_eq!(output.stdout, b"early\n");

        let err = Run::new()
            .timeout(Duration::from_millis(300))
            .output_tokio(&mut sh(&marker, "echo partial; exec sleep 300"))
            .await
            .expect_err("it times out");
        assert_eq!(err.kind(), ErrorKind::TimedOut);
        assert_eq!(incomplete(&err).output.stdout, b"partial\n");
        all_dead(&marker).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn run_to_completion_current_thread() {
        run_to_completion("current_thread").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_to_completion_multi_thread() {
        run_to_completion("multi_thread").await;
    }

    /// Dropping the future (a `tokio::time::timeout` around it) tears the group down.
    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_call_tears_the_group_down() {
        let marker = support::marker("tokio_run_dropped");
        let run = Run::new();
        let mut cmd = sh(&marker, "sleep 300");
        let call = run.output_tokio(&mut cmd);
        assert!(tokio::time::timeout(Duration::from_millis(200), call)
            .await
            .is_err());
        all_dead(&marker).await;
    }
}
