//! The guard on real processes.
//!
//! Every probe that could do harm if the guard regressed (0, 1, negatives, the caller's own
//! group, its session, parent and ancestors) runs in a re-executed copy of this binary, the
//! "caller", at the bottom of a chain of processes inside a fresh PID namespace: even a
//! `kill(-1, SIGKILL)` there reaches only processes this test made. Canaries in each group
//! of the chain show what a broken guard would have hit.

// The suite's support reads /proc (leak markers in each process's environ, process states,
// the PID-namespace sandbox): it runs on Linux, with the Linux backend and, in CI, again
// with the portable one (`--cfg pgroup_portable`). Elsewhere it compiles to nothing.
#![cfg(target_os = "linux")]

mod support;

use std::env;
use std::time::Duration;

use pgroup::{
    check_pgid, safe_killpg, Delivery, Pgid, Refusal, Signal, GUARD_RULES, PID_MAX_LIMIT,
};
use rstest::rstest;
use support::{Harness, SandboxMode};
use tracing_test::traced_test;

#[test]
#[ignore = "entry point of the helper processes the other tests re-execute this binary as"]
#[traced_test]
fn role_entry() {
    support::role_main(
        &|s| logs_contain(s),
        &[
            ("probe", |logs| support::chain_link(probe_scenario, logs)),
            ("raw-parent", |logs| {
                support::chain_link(raw_parent_scenario, logs)
            }),
            ("unverifiable-root", unverifiable_root),
            ("nl-top", |_| run_link("nl-mid", false)),
            ("nl-mid", |_| run_link("nl-parent", true)),
            ("nl-parent", |_| run_link("nl-caller", true)),
            ("nl-caller", nonleader_caller),
            ("unverifiable-caller", unverifiable_caller),
            ("sandbox-check", sandbox_check),
        ],
    );
}

/// The caller's side of a probe: compute the pgid named by `PGROUP_PROBE`, hand it to the
/// guard with SIGKILL, and report what came back and what died.
fn probe_scenario(harness: &Harness, logs: &dyn Fn(&str) -> bool) -> i32 {
    let probe = env::var("PGROUP_PROBE").expect("PGROUP_PROBE");
    let marker = env::var(support::MARKER_VAR).unwrap_or_default();
    let mut target = None;
    let pgid: i32 = match probe.as_str() {
        "zero" => 0,
        "one" => 1,
        "minus_one" => -1,
        "i32_min" => i32::MIN,
        "i32_max" => i32::MAX,
        "pid_max_limit" => PID_MAX_LIMIT,
        "own" => harness.groups["caller"],
        "session" => nix::unistd::getsid(None).expect("getsid").as_raw(),
        "parent" => harness.groups["parent"],
        "ancestor" => harness.groups["ancestor"],
        "target" => {
            let child = support::raw_target_group(&marker);
            let pgid = i32::try_from(child.id()).expect("pid fits");
            target = Some(child);
            pgid
        }
        "reaped" => {
            let mut child = support::raw_target_group(&marker);
            child.kill().expect("kill the leader by pid");
            child.wait().expect("reap it");
            // Inside the namespace nothing else can have taken the number in between.
            i32::try_from(child.id()).expect("pid fits")
        }
        other => panic!("unknown probe {other}"),
    };
    let delivery = safe_killpg(pgid, Signal::SIGKILL, "probe");
    println!("PGID {pgid}");
    println!("DELIVERY {delivery:?}");
    println!("PARENT_PID {}", std::os::unix::process::parent_id());
    if let Some(mut child) = target {
        let dead = support::is_dead_or_dying(i32::try_from(child.id()).expect("pid fits"));
        println!("TARGET_DEAD {dead}");
        let _ = child.kill();
        let _ = child.wait();
    }
    let dead = harness.dead_canaries();
    println!(
        "DEAD_CANARIES {}",
        if dead.is_empty() {
            "none".to_owned()
        } else {
            dead.join(",")
        }
    );
    let refused_event = match &delivery {
        Ok(Delivery::Refused(refusal)) => logs(&format!(
            "killpg_guard_refused reason=\"{}\" pgid={pgid} signal=SIGKILL context=\"probe\"",
            refusal.reason()
        )),
        _ => false,
    };
    println!("REFUSED_EVENT {refused_event}");
    let delivered_event = logs(&format!(
        "killpg_delivered pgid={pgid} signal=SIGKILL context=\"probe\""
    ));
    println!("DELIVERED_EVENT {delivered_event}");
    0
}

/// The negative control's caller: the unguarded syscall on the parent's group.
fn raw_parent_scenario(harness: &Harness, _logs: &dyn Fn(&str) -> bool) -> i32 {
    let pgid = nix::unistd::Pid::from_raw(harness.groups["parent"]);
    // Deliberately unguarded, and only ever run inside the PID-namespace sandbox.
    support::assert_inside_pid_sandbox();
    let raw = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
    println!("RAW_KILLPG {raw:?}");
    let dead = harness.dead_canaries();
    println!("DEAD_CANARIES {}", dead.join(","));
    0
}

fn run_probe(probe: &str) -> Option<support::RoleOutput> {
    let marker = support::marker(&format!("probe-{probe}"));
    let out = support::run_sandboxed(
        &marker,
        "probe",
        &[("PGROUP_PROBE", probe.to_owned())],
        Duration::from_secs(60),
    );
    support::assert_no_leaks(&marker);
    out
}

/// Each dangerous id is refused with its own reason, a WARN event with the four fields is
/// emitted, no event of a delivery, and nothing in the chain (canaries in the caller's own
/// group, its parent's, an ancestor's and the session leader's) was hit.
#[rstest]
#[case::zero("zero", "PgidLe1")]
#[case::one("one", "PgidLe1")]
#[case::minus_one("minus_one", "PgidLe1")]
#[case::i32_min("i32_min", "PgidLe1")]
#[case::i32_max("i32_max", "PgidOutOfRange")]
#[case::pid_max_limit("pid_max_limit", "PgidOutOfRange")]
#[case::own_group("own", "OwnPgroup")]
#[case::session("session", "SessionPgroup")]
#[case::parent("parent", "ParentPgroup")]
#[case::ancestor("ancestor", "AncestorPgroup")]
fn dangerous_ids_are_refused_with_their_reason(#[case] probe: &str, #[case] refusal: &str) {
    let Some(out) = run_probe(probe) else {
        assert_eq!(support::sandbox_mode(), SandboxMode::Reduced);
        eprintln!("REDUCED MODE: probe {probe} not run; pgid edges are still checked by check_pgid-free conversions");
        return;
    };
    let delivery = out.one("DELIVERY");
    assert!(
        delivery.starts_with(&format!("Ok(Refused({refusal}")),
        "probe {probe}: expected a refusal {refusal}, got {delivery}\n{:#?}",
        out.lines
    );
    if probe == "parent" {
        let parent = out.one("PARENT_PID");
        assert_eq!(
            delivery,
            format!("Ok(Refused(ParentPgroup {{ parent: {parent} }}))")
        );
    }
    assert_eq!(
        out.one("DEAD_CANARIES"),
        "none",
        "probe {probe} hit a canary"
    );
    assert_eq!(
        out.one("REFUSED_EVENT"),
        "true",
        "probe {probe}: no killpg_guard_refused event:\n{:#?}",
        out.lines
    );
    assert_eq!(out.one("DELIVERED_EVENT"), "false");
    assert_eq!(out.status.and_then(|s| s.code()), Some(0));
}

/// The allowed path, in the same chain: a group the caller created dies, with a DEBUG event,
/// and nothing else does.
#[test]
fn a_created_group_is_signalled_and_nothing_else() {
    let Some(out) = run_probe("target") else {
        assert_eq!(support::sandbox_mode(), SandboxMode::Reduced);
        return;
    };
    assert_eq!(out.one("DELIVERY"), "Ok(Sent)");
    assert_eq!(out.one("TARGET_DEAD"), "true");
    assert_eq!(out.one("DEAD_CANARIES"), "none");
    assert_eq!(out.one("DELIVERED_EVENT"), "true");
    assert_eq!(out.one("REFUSED_EVENT"), "false");
}

/// ESRCH: a group whose only member was reaped is `NoSuchGroup`, not an error. (Inside the
/// namespace, because outside it the reaped number could already name someone else's group.)
#[test]
fn an_empty_group_is_no_such_group() {
    let Some(out) = run_probe("reaped") else {
        assert_eq!(support::sandbox_mode(), SandboxMode::Reduced);
        return;
    };
    assert_eq!(out.one("DELIVERY"), "Ok(NoSuchGroup)");
    assert_eq!(out.one("DEAD_CANARIES"), "none");
    assert_eq!(out.one("DELIVERED_EVENT"), "true");
}

/// Negative control for the probes above: the same chain, but the caller calls raw
/// `killpg` on its parent's group, which the guard refused above. The parent's canary dies,
/// so the canaries are able to show a breach, and the refusals above mean something.
#[test]
fn negative_control_raw_killpg_of_the_parent_group_kills_its_canary() {
    let marker = support::marker("negative-control");
    let Some(out) = support::run_sandboxed(&marker, "raw-parent", &[], Duration::from_secs(60))
    else {
        assert_eq!(support::sandbox_mode(), SandboxMode::Reduced);
        return;
    };
    support::assert_no_leaks(&marker);
    assert_eq!(out.one("RAW_KILLPG"), "Ok(())");
    let dead = out.one("DEAD_CANARIES");
    assert!(
        dead.contains("parent:"),
        "the parent's canary survived raw killpg: {dead}"
    );
}

/// The negative controls' unguarded `killpg` runs only behind
/// `support::assert_inside_pid_sandbox`, which must fail closed: a role started outside the
/// sandbox (here as a plain child, told the test process's PID namespace as the sandbox
/// would) sees that it is outside and panics before it could signal, while the same role in
/// the sandbox sees that it is inside.
#[test]
fn the_unguarded_negative_controls_run_only_inside_the_sandbox() {
    let marker = support::marker("sandbox-check");
    let mut outside = support::role_command("sandbox-check");
    outside
        .env(support::MARKER_VAR, &marker)
        .env("PGROUP_OUTER_PID_NS", support::own_pid_namespace())
        .stdin(std::process::Stdio::null())
        // Its expected panic message would only clutter the test's output.
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    let out = support::run_collecting(outside, Duration::from_secs(60));
    assert_eq!(out.one("INSIDE"), "false", "{:#?}", out.lines);
    assert!(
        !out.values.contains_key("ASSERTED"),
        "the check passed outside the sandbox: {:#?}",
        out.lines
    );
    assert!(
        !out.status.expect("finished").success(),
        "the role outside the sandbox should have panicked"
    );
    let Some(inside) =
        support::run_sandboxed(&marker, "sandbox-check", &[], Duration::from_secs(60))
    else {
        assert_eq!(support::sandbox_mode(), SandboxMode::Reduced);
        return;
    };
    assert_eq!(inside.one("INSIDE"), "true", "{:#?}", inside.lines);
    assert_eq!(inside.one("ASSERTED"), "ok", "{:#?}", inside.lines);
    support::assert_no_leaks(&marker);
}

/// Reports whether it is inside the sandbox, then runs the fail-closed check (and nothing
/// else: no signal is sent either way).
fn sandbox_check(_logs: &dyn Fn(&str) -> bool) -> i32 {
    println!("INSIDE {}", support::inside_pid_sandbox());
    let _ = std::io::Write::flush(&mut std::io::stdout());
    support::assert_inside_pid_sandbox();
    println!("ASSERTED ok");
    0
}

/// `/proc` that belongs to another PID namespace: the ancestor rule cannot be checked, so
/// the guard refuses even a group the caller created (it fails closed).
#[test]
fn the_guard_fails_closed_when_proc_belongs_to_another_namespace() {
    let marker = support::marker("unverifiable");
    let Some(out) = support::run_sandboxed_without_own_proc(
        &marker,
        "unverifiable-root",
        Duration::from_secs(60),
    ) else {
        assert_eq!(support::sandbox_mode(), SandboxMode::Reduced);
        return;
    };
    support::assert_no_leaks(&marker);
    let delivery = out.one("DELIVERY");
    assert!(
        delivery.starts_with("Ok(Refused(Unverifiable"),
        "expected a fail-closed refusal, got {delivery}\n{:#?}",
        out.lines
    );
    assert_eq!(out.one("TARGET_DEAD"), "false");
}

/// PID 1 of a namespace whose /proc is the host's: start the caller as PID 2.
fn unverifiable_root(_logs: &dyn Fn(&str) -> bool) -> i32 {
    let mut caller = support::role_command("unverifiable-caller")
        .spawn()
        .expect("spawn the caller");
    caller.wait().expect("wait").code().unwrap_or(3)
}

fn unverifiable_caller(_logs: &dyn Fn(&str) -> bool) -> i32 {
    let marker = env::var(support::MARKER_VAR).unwrap_or_default();
    let mut child = support::raw_target_group(&marker);
    let pgid = i32::try_from(child.id()).expect("pid fits");
    println!(
        "DELIVERY {:?}",
        safe_killpg(pgid, Signal::SIGKILL, "unverifiable")
    );
    // This /proc shows the host's processes, so ask the kernel directly.
    let dead = child.try_wait().map(|s| s.is_some()).unwrap_or(true);
    println!("TARGET_DEAD {dead}");
    let _ = child.kill();
    let _ = child.wait();
    0
}

#[rstest]
#[case::zero(0, false)]
#[case::one(1, false)]
#[case::minus_one(-1, false)]
#[case::i32_min(i32::MIN, false)]
#[case::two(2, true)]
#[case::below_limit(PID_MAX_LIMIT - 1, true)]
#[case::limit(PID_MAX_LIMIT, false)]
#[case::i32_max(i32::MAX, false)]
fn pgid_from_i32(#[case] raw: i32, #[case] valid: bool) {
    let pgid = Pgid::try_from(raw);
    assert_eq!(pgid.is_ok(), valid, "{raw}: {pgid:?}");
    if let Ok(pgid) = pgid {
        assert_eq!(pgid.as_raw(), raw);
        assert_eq!(pgid.to_string(), raw.to_string());
        assert_eq!(i32::from(pgid), raw);
    } else {
        let err = pgid.unwrap_err();
        assert_eq!(err.value(), i64::from(raw));
        assert!(err.to_string().contains(&raw.to_string()), "{err}");
        let io = std::io::Error::from(err);
        assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput);
    }
}

/// `u32` values that a `u32 as i32` would wrap into 0, -1 or another negative number are
/// errors, and keep their real value in the message.
#[rstest]
#[case::zero(0, false)]
#[case::one(1, false)]
#[case::two(2, true)]
#[case::i32_max(2_147_483_647, false)]
#[case::wraps_to_i32_min(2_147_483_648, false)]
#[case::wraps_to_minus_one(u32::MAX, false)]
#[case::wraps_to_minus_two(u32::MAX - 1, false)]
#[case::below_limit(4_194_303, true)]
fn pgid_from_u32(#[case] raw: u32, #[case] valid: bool) {
    let pgid = Pgid::try_from(raw);
    assert_eq!(pgid.is_ok(), valid, "{raw}: {pgid:?}");
    match pgid {
        Ok(pgid) => assert_eq!(i64::from(pgid.as_raw()), i64::from(raw)),
        Err(err) => {
            assert_eq!(err.value(), i64::from(raw));
            assert!(err.to_string().contains(&raw.to_string()), "{err}");
        }
    }
}

/// `check_pgid` (no signal) agrees with `Pgid` on the edges, and out-of-range ids are refused
/// before any syscall. Safe in the test process: `check_pgid` never signals.
#[rstest]
#[case(0, Some(Refusal::PgidLe1))]
#[case(1, Some(Refusal::PgidLe1))]
#[case(-7, Some(Refusal::PgidLe1))]
#[case(PID_MAX_LIMIT, Some(Refusal::PgidOutOfRange))]
fn check_pgid_edges(#[case] raw: i32, #[case] expected: Option<Refusal>) {
    assert_eq!(check_pgid(raw).err(), expected);
}

/// The refusal the rules demand for `pgid` when it is one of the test process's own
/// surroundings (its group, its session, its parent's group): the first rule that matches,
/// in the order of `GUARD_RULES`. Where the test binary runs as a child of PID 1 of a
/// container (group and session 1), or in a PID namespace whose init's group lies outside
/// it (group 0), the first rule, `pgid_le_1`, refuses those ids before the others are asked.
fn first_rule_for(pgid: i32, own: i32, session: i32, parent: i32) -> Refusal {
    if pgid <= 1 {
        Refusal::PgidLe1
    } else if pgid == own {
        Refusal::OwnPgroup
    } else if pgid == session {
        Refusal::SessionPgroup
    } else {
        Refusal::ParentPgroup { parent }
    }
}

/// The test process's own group, session and parent's group are refused by `check_pgid`
/// (which only asks; nothing is signalled), each by the first rule that matches it, also
/// where those ids are 0 or 1 (`.ci/run` runs the suite a second time as in a container).
#[test]
fn check_pgid_refuses_the_test_process_surroundings() {
    let own = nix::unistd::getpgrp().as_raw();
    let session = nix::unistd::getsid(None).expect("getsid").as_raw();
    let parent = nix::unistd::getppid().as_raw();
    assert_eq!(
        check_pgid(own),
        Err(first_rule_for(own, own, session, parent)),
        "own group {own}"
    );
    assert_eq!(
        check_pgid(session),
        Err(first_rule_for(session, own, session, parent)),
        "session {session}"
    );
    // getppid() is 0 only when the parent lies outside this PID namespace; the test binary
    // is always started by cargo or nextest, inside it.
    assert!(parent > 0, "the test runner is outside this PID namespace");
    let parent_group = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(parent)))
        .expect("getpgid")
        .as_raw();
    assert_eq!(
        check_pgid(parent_group),
        Err(first_rule_for(parent_group, own, session, parent)),
        "parent {parent}, its group {parent_group}"
    );
}

/// Allowed path in the test process, on a group this test created: `Sent`, with the DEBUG
/// event and its fields.
#[test]
#[traced_test]
fn delivery_emits_a_debug_event() {
    let marker = support::marker("delivery-event");
    let mut child = support::raw_target_group(&marker);
    let pgid = i32::try_from(child.id()).expect("pid fits");
    let delivery = safe_killpg(pgid, Signal::SIGKILL, "delivery test").expect("killpg");
    assert_eq!(delivery, Delivery::Sent);
    assert!(delivery.is_sent());
    child.wait().expect("reap");
    assert!(logs_contain(&format!(
        "killpg_delivered pgid={pgid} signal=SIGKILL context=\"delivery test\" outcome=\"sent\""
    )));
    support::assert_no_leaks(&marker);
}

/// The published rules and the refusals agree, and each rule says why it exists.
#[test]
fn guard_rules_are_documented() {
    let refusals = [
        Refusal::PgidLe1,
        Refusal::PgidOutOfRange,
        Refusal::OwnPgroup,
        Refusal::SessionPgroup,
        Refusal::ParentPgroup { parent: 2 },
        Refusal::AncestorPgroup { ancestor: 2 },
        Refusal::Unverifiable {
            what: "x",
            errno: 0,
        },
    ];
    assert_eq!(GUARD_RULES.len(), refusals.len());
    for (rule, refusal) in GUARD_RULES.iter().zip(refusals) {
        assert_eq!(rule.reason, refusal.reason());
        assert!(!rule.why.is_empty() && !rule.refuses.is_empty());
        assert!(!refusal.to_string().is_empty());
    }
}

/// Starts the next role of the non-leader chain (in a new group or not) and waits for it.
fn run_link(next: &str, new_group: bool) -> i32 {
    use std::os::unix::process::CommandExt;
    let mut cmd = support::role_command(next);
    if next == "nl-parent" {
        cmd.env("PGROUP_NL_MID", std::process::id().to_string());
    }
    if new_group {
        cmd.process_group(0);
    }
    let status = cmd.status().expect("run the next link");
    status.code().unwrap_or(3)
}

fn nonleader_caller(_logs: support::Logs<'_>) -> i32 {
    let mid: i32 = env::var("PGROUP_NL_MID")
        .expect("mid")
        .parse()
        .expect("pid");
    println!("MID {mid}");
    println!("CHECK {:?}", check_pgid(mid));
    0
}

/// An ancestor that does not lead a group (here the grandparent, which stayed in its
/// parent's group): its pid names no group now, but would name the one it leads if it
/// called `setsid` after the guard read the chain, so the guard refuses it too.
#[test]
fn the_pid_of_a_non_leader_ancestor_is_refused() {
    let marker = support::marker("nonleader");
    let Some(out) = support::run_sandboxed(&marker, "nl-top", &[], Duration::from_secs(60)) else {
        assert_eq!(support::sandbox_mode(), SandboxMode::Reduced);
        return;
    };
    support::assert_no_leaks(&marker);
    let mid = out.one("MID");
    assert_eq!(
        out.one("CHECK"),
        format!("Err(AncestorPgroup {{ ancestor: {mid} }})")
    );
}
