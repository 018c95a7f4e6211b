//! The guard under proptest, with real SIGKILLs to real process groups.
//!
//! Every case that hands an id to `safe_killpg` runs in a re-executed copy of this binary,
//! the "caller" at the bottom of the sandbox chain (see `support::chain_link`): PID 1 ->
//! session leader -> ancestor -> parent -> caller, each in a group of its own with a canary
//! `sleep` in it, inside a fresh PID namespace where even `kill(-1, SIGKILL)` reaches only
//! processes this test made. The caller also keeps several target groups of its own, lets
//! some of them die, and reaps some, so the generated ids name every kind of group there is.
//!
//! For each case, the expected answer is computed from the rules and from /proc, without
//! asking the crate; then the guard is called with the case's signal (mostly SIGKILL), and
//! the case checks: the `Delivery`; that the caller, the chain and every canary are alive;
//! that a target group died if and only if it was the one targeted with SIGKILL; and, at the
//! end of the batch, that each case emitted exactly one tracing event and that it agrees
//! with the `Delivery`.
//!
//! The outer side of these tests never signals anything through the crate (the sandbox runs
//! under `support::run_sandboxed_std`), so mutated copies of the crate can be run against
//! this file safely: that is what `.ci/mutants` does.

// The suite's support reads /proc (leak markers in each process's environ, process states,
// the PID-namespace sandbox): it runs on Linux, with the Linux backend and, in CI, again
// with the portable one (`--cfg pgroup_portable`). Elsewhere it compiles to nothing.
#![cfg(target_os = "linux")]

mod support;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::env;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgroup::{check_pgid, safe_killpg, Delivery, Pgid, Refusal, Signal, PID_MAX_LIMIT};
use procfs::process::Process;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use rstest::rstest;
use support::{Harness, Logs, SandboxMode};
use tracing_test::traced_test;

/// Sandboxed batches of the guard property, each with its own namespace and seed.
const BATCHES: usize = 4;
/// Cases per batch: 4 × 2 500 = 10 000 real `safe_killpg` calls per run. A smaller number
/// can be set with `PGROUP_PROP_GUARD_CASES` (`.ci/mutants` does, to keep each mutant quick).
const CASES_PER_BATCH: u32 = 2_500;
/// How long one sandboxed batch may take before the test fails.
const BATCH_LIMIT: Duration = Duration::from_secs(240);
/// Live target groups the caller keeps: with 1, 2 and 3 members, and one whose leader was
/// reaped while two members live on (its id is still a group, named by no live pid).
const LIVE_TARGETS: usize = 4;
/// Groups that died (leader killed, not reaped: its zombie keeps the id) kept around.
const DEAD_KEPT: usize = 4;
/// Ids of groups whose members were all reaped, kept around.
const REAPED_KEPT: usize = 8;

#[test]
#[ignore = "entry point of the helper processes the other tests re-execute this binary as"]
#[traced_test]
fn role_entry() {
    fn captured_lines() -> Vec<String> {
        let copy = RefCell::new(Vec::new());
        logs_assert(|lines: &[&str]| {
            *copy.borrow_mut() = lines.iter().map(|l| (*l).to_owned()).collect();
            Ok(())
        });
        copy.into_inner()
    }
    support::set_log_lines(captured_lines);
    support::role_main(
        &|s| logs_contain(s),
        &[
            ("guard-prop", |logs| {
                support::chain_link(guard_prop_scenario, logs)
            }),
            ("raw-control", |logs| {
                support::chain_link(raw_control_scenario, logs)
            }),
            ("witness", witness),
            ("forked-cache", |logs| {
                support::chain_link(forked_cache_scenario, logs)
            }),
            ("foreign-proc-root", foreign_proc_root),
            ("foreign-proc-caller", foreign_proc_caller),
            ("no-proc-root", no_proc_root),
            ("hidepid-root", hidepid_root),
            ("hidepid-caller", hidepid_caller),
            ("nonleader-root", nonleader_root),
            ("nonleader-caller", nonleader_caller),
            ("refresh-root", refresh_root),
            ("refresh-middle", refresh_middle),
            ("refresh-caller", refresh_caller),
            ("join-root", join_root),
            ("join-ancestor", join_ancestor),
            ("join-caller", join_caller),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// The oracle: what the guard must answer, from the rules and /proc, without the crate.
// ---------------------------------------------------------------------------------------------

/// The refusal the rules demand for `pgid` in this process right now, or `None` if the id
/// may be signalled. Computed from /proc (own group, session, parent, and the chain of
/// ancestors above the parent, nearest first), not by asking the crate.
fn expected_refusal(pgid: i32) -> Option<Refusal> {
    if pgid <= 1 {
        return Some(Refusal::PgidLe1);
    }
    if pgid >= PID_MAX_LIMIT {
        return Some(Refusal::PgidOutOfRange);
    }
    let me = Process::myself()
        .and_then(|p| p.stat())
        .expect("own /proc stat");
    if pgid == me.pgrp {
        return Some(Refusal::OwnPgroup);
    }
    if pgid == me.session {
        return Some(Refusal::SessionPgroup);
    }
    let parent = me.ppid;
    if parent > 0 && pgrp_of(parent) == Some(pgid) {
        return Some(Refusal::ParentPgroup { parent });
    }
    // The ancestors above the parent, nearest first, up to the namespace's init. An
    // ancestor's group is refused, and so is an id equal to an ancestor's pid (the group it
    // would lead after a `setsid` or `setpgid`).
    let mut current = parent;
    while current > 0 {
        let Some(up) = Process::new(current)
            .and_then(|p| p.stat())
            .ok()
            .map(|s| s.ppid)
        else {
            break;
        };
        if up <= 0 {
            break;
        }
        if up == pgid || pgrp_of(up) == Some(pgid) {
            return Some(Refusal::AncestorPgroup { ancestor: up });
        }
        current = up;
    }
    None
}

fn pgrp_of(pid: i32) -> Option<i32> {
    Process::new(pid)
        .and_then(|p| p.stat())
        .ok()
        .map(|s| s.pgrp)
}

/// The `Delivery` the guard must return for `pgid`: the refusal, or whether any process is
/// in that group now (a zombie counts: it is a member until reaped).
fn expected_delivery(pgid: i32) -> Delivery {
    match expected_refusal(pgid) {
        Some(refusal) => Delivery::Refused(refusal),
        None if support::members_of(pgid).is_empty() => Delivery::NoSuchGroup,
        None => Delivery::Sent,
    }
}

/// The tracing event a call must emit: the level, and the text the event's line contains.
fn expected_event(
    pgid: i32,
    signal: Signal,
    context: &str,
    delivery: &Delivery,
) -> (&'static str, String) {
    match delivery {
        Delivery::Refused(refusal) => (
            " WARN ",
            format!(
                "killpg_guard_refused reason=\"{}\" pgid={pgid} signal={signal} context=\"{context}\"",
                refusal.reason()
            ),
        ),
        Delivery::Sent | Delivery::NoSuchGroup => (
            "DEBUG ",
            format!(
                "killpg_delivered pgid={pgid} signal={signal} context=\"{context}\" outcome=\"{}\"",
                if delivery.is_sent() { "sent" } else { "no_such_group" }
            ),
        ),
    }
}

fn pid_of(child: &Child) -> i32 {
    i32::try_from(child.id()).expect("pids fit in i32")
}

// ---------------------------------------------------------------------------------------------
// The world the caller keeps: live target groups, groups that just died, reaped groups.
// ---------------------------------------------------------------------------------------------

/// A group the caller created: a leader `sleep` and `members.len() - 1` more in its group,
/// all children of the caller (so it reaps them by pid, never with `waitpid(-1)`).
struct Target {
    pgid: i32,
    members: Vec<Child>,
}

impl Target {
    fn spawn(marker: &str, size: usize) -> Target {
        let leader = support::raw_target_group(marker);
        let pgid = pid_of(&leader);
        let mut members = vec![leader];
        for _ in 1..size {
            let member = support::marked(marker, "sleep", &["1000"])
                .process_group(pgid)
                .spawn()
                .expect("spawn a member into the target group");
            members.push(member);
        }
        Target { pgid, members }
    }

    /// The shape of live target `i`: sizes 1, 2, 3, then a leaderless group.
    fn spawn_live(marker: &str, i: usize) -> Target {
        if i < 3 {
            return Target::spawn(marker, i + 1);
        }
        let mut target = Target::spawn(marker, 3);
        let mut leader = target.members.remove(0);
        // By pid, our own unreaped child.
        leader.kill().expect("kill the leader");
        leader.wait().expect("reap the leader");
        target
    }

    fn pids(&self) -> Vec<i32> {
        self.members.iter().map(pid_of).collect()
    }

    /// Kills every member by pid (our own unreaped children) and reaps them.
    fn reap(mut self) -> i32 {
        for member in &mut self.members {
            let _ = member.kill();
            let _ = member.wait();
        }
        self.pgid
    }
}

struct World {
    marker: String,
    live: Vec<Target>,
    dead: VecDeque<Target>,
    reaped: VecDeque<i32>,
    edges: Vec<i32>,
    pid_max: i32,
    /// ("parent", P), ("ancestor", A), ("session", S): must never die.
    links: Vec<(String, i32)>,
    killed: usize,
}

impl World {
    fn new(marker: &str) -> World {
        let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .expect("read pid_max")
            .trim()
            .parse()
            .expect("pid_max is a number");
        let edges = vec![
            i32::MIN,
            i32::MIN + 1,
            -2,
            -1,
            0,
            1,
            2,
            3,
            pid_max - 1,
            pid_max,
            pid_max + 1,
            PID_MAX_LIMIT - 1,
            PID_MAX_LIMIT,
            PID_MAX_LIMIT + 1,
            i32::MAX - 1,
            i32::MAX,
        ];
        let mut world = World {
            marker: marker.to_owned(),
            live: (0..LIVE_TARGETS)
                .map(|i| Target::spawn_live(marker, i))
                .collect(),
            dead: VecDeque::new(),
            reaped: VecDeque::new(),
            edges,
            pid_max,
            links: support::chain_link_pids(),
            killed: 0,
        };
        // Start with groups that just died and groups that were reaped.
        for i in 0..2 {
            let mut died = Target::spawn(marker, i + 1);
            for member in &mut died.members {
                member.kill().expect("kill our own child by pid");
            }
            world.bury(died);
            let reaped = Target::spawn(marker, 1);
            world.reaped.push_back(reaped.reap());
        }
        world
    }

    /// Keeps a dead group (its zombies pin the id); reaps the oldest beyond `DEAD_KEPT`.
    fn bury(&mut self, target: Target) {
        self.dead.push_back(target);
        while self.dead.len() > DEAD_KEPT {
            if let Some(oldest) = self.dead.pop_front() {
                self.reaped.push_back(oldest.reap());
            }
        }
        while self.reaped.len() > REAPED_KEPT {
            self.reaped.pop_front();
        }
    }
}

/// Where a case's pgid comes from. The index-like variants are resolved against the world
/// at the time the case runs.
#[derive(Debug, Clone)]
enum Pick {
    /// MIN, -1, 0, 1, 2, pid_max and around it, PID_MAX_LIMIT and around it, MAX, ...
    Edge(usize),
    /// The caller's own group.
    Own,
    /// The caller's session (the session leader's group).
    Session,
    /// The caller's parent's group.
    Parent,
    /// The group of an ancestor above the parent.
    Ancestor,
    /// A live target group.
    Live(usize),
    /// A group that just died: killed, its leader's zombie not reaped.
    JustDied(usize),
    /// A group whose members were all reaped.
    Reaped(usize),
    /// The small range the sandbox's pids actually use.
    Small(i32),
    /// Anywhere in 2..pid_max.
    InPidRange(usize),
    /// Any i32.
    Any(i32),
}

impl Pick {
    fn kind(&self) -> &'static str {
        match self {
            Pick::Edge(_) => "edge",
            Pick::Own => "own",
            Pick::Session => "session",
            Pick::Parent => "parent",
            Pick::Ancestor => "ancestor",
            Pick::Live(_) => "live_target",
            Pick::JustDied(_) => "just_died",
            Pick::Reaped(_) => "reaped",
            Pick::Small(_) => "small",
            Pick::InPidRange(_) => "in_pid_range",
            Pick::Any(_) => "any_i32",
        }
    }

    fn resolve(&self, world: &World, harness: &Harness) -> i32 {
        let live = |i: usize| world.live[i % world.live.len()].pgid;
        match self {
            Pick::Edge(i) => world.edges[i % world.edges.len()],
            Pick::Own => harness.groups["caller"],
            Pick::Session => harness.groups["session"],
            Pick::Parent => harness.groups["parent"],
            Pick::Ancestor => harness.groups["ancestor"],
            Pick::Live(i) => live(*i),
            Pick::JustDied(i) if world.dead.is_empty() => live(*i),
            Pick::JustDied(i) => world.dead[i % world.dead.len()].pgid,
            Pick::Reaped(i) if world.reaped.is_empty() => live(*i),
            Pick::Reaped(i) => world.reaped[i % world.reaped.len()],
            Pick::Small(v) | Pick::Any(v) => *v,
            Pick::InPidRange(i) => {
                let span = usize::try_from(world.pid_max - 2).expect("pid_max > 2");
                2 + i32::try_from(i % span).expect("below pid_max")
            }
        }
    }
}

fn pick_strategy() -> impl Strategy<Value = Pick> {
    prop_oneof![
        3 => any::<usize>().prop_map(Pick::Edge),
        1 => Just(Pick::Own),
        1 => Just(Pick::Session),
        1 => Just(Pick::Parent),
        1 => Just(Pick::Ancestor),
        4 => any::<usize>().prop_map(Pick::Live),
        2 => any::<usize>().prop_map(Pick::JustDied),
        2 => any::<usize>().prop_map(Pick::Reaped),
        3 => (1..=64_i32).prop_map(Pick::Small),
        1 => any::<usize>().prop_map(Pick::InPidRange),
        1 => any::<i32>().prop_map(Pick::Any),
    ]
}

/// Mostly SIGKILL; sometimes a signal that a `sleep` ignores or survives, so that "dies if
/// and only if targeted with a lethal signal" is tested in both directions.
fn signal_strategy() -> impl Strategy<Value = Signal> {
    prop_oneof![
        6 => Just(Signal::SIGKILL),
        1 => Just(Signal::SIGCONT),
        1 => Just(Signal::SIGWINCH),
        1 => Just(Signal::SIGURG),
    ]
}

/// What one batch learned, beyond pass or fail.
#[derive(Default)]
struct Tally {
    cases: usize,
    kinds: BTreeMap<&'static str, usize>,
    deliveries: BTreeMap<&'static str, usize>,
    /// (context, level, expected line text, case description)
    events: Vec<(String, &'static str, String, String)>,
}

/// One case: resolve the pick, ask the oracle, call the guard, and check what happened.
fn run_case(
    world: &mut World,
    harness: &Harness,
    tally: &mut Tally,
    context: String,
    pick: &Pick,
    signal: Signal,
) -> Result<(), String> {
    let pgid = pick.resolve(world, harness);
    let want = expected_delivery(pgid);
    let got = safe_killpg(pgid, signal, &context);
    let case = format!("{context}: {pick:?} -> pgid {pgid}, {signal}");
    tally.cases += 1;
    *tally.kinds.entry(pick.kind()).or_default() += 1;
    let mut problems = Vec::new();
    match &got {
        Ok(delivery) => {
            *tally
                .deliveries
                .entry(match delivery {
                    Delivery::Sent => "sent",
                    Delivery::NoSuchGroup => "no_such_group",
                    _ => "refused",
                })
                .or_default() += 1;
            let (level, line) = expected_event(pgid, signal, &context, delivery);
            tally
                .events
                .push((context.clone(), level, line, case.clone()));
            if *delivery != want {
                problems.push(format!("expected {want:?}, got {delivery:?}"));
            }
        }
        Err(e) => problems.push(format!("expected {want:?}, got the error {e}")),
    }
    // The caller, its chain and every canary survive every case.
    let dead = harness.dead_canaries();
    if !dead.is_empty() {
        problems.push(format!("canaries hit: {dead:?}"));
    }
    for (name, pid) in &world.links {
        if support::is_dead_or_dying(*pid) {
            problems.push(format!("the chain's {name} (pid {pid}) was hit"));
        }
    }
    // A target group dies if and only if it was targeted, with SIGKILL, and the guard sent it.
    let lethal = signal == Signal::SIGKILL && matches!(got, Ok(Delivery::Sent));
    let mut died = Vec::new();
    for (i, target) in world.live.iter().enumerate() {
        let should_die = lethal && target.pgid == pgid;
        let states: Vec<bool> = target
            .pids()
            .into_iter()
            .map(support::is_dead_or_dying)
            .collect();
        if states.iter().any(|dead| *dead != should_die) {
            problems.push(format!(
                "target group {} (members {:?}) should {}have died; dead: {states:?}",
                target.pgid,
                target.pids(),
                if should_die { "" } else { "not " }
            ));
        }
        if states.iter().any(|dead| *dead) {
            died.push(i);
        }
    }
    for i in died {
        let fresh = Target::spawn_live(&world.marker, i);
        let dead = std::mem::replace(&mut world.live[i], fresh);
        world.killed += 1;
        world.bury(dead);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{case}: {}", problems.join("; ")))
    }
}

/// The picks every batch starts with, whatever the seed: every edge, every group of the
/// chain, every target, and every id in the small range the sandbox uses.
fn sweep_picks(world: &World) -> Vec<Pick> {
    let mut picks: Vec<Pick> = (0..world.edges.len()).map(Pick::Edge).collect();
    picks.extend([Pick::Own, Pick::Session, Pick::Parent, Pick::Ancestor]);
    picks.extend((0..LIVE_TARGETS).map(Pick::Live));
    picks.extend([Pick::JustDied(0), Pick::Reaped(0)]);
    picks.extend((1..=64).map(Pick::Small));
    picks
}

fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut bytes = [0_u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        let word = seed.rotate_left(u32::try_from(i * 16).unwrap_or(0)) ^ 0x9e37_79b9_7f4a_7c15;
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    bytes
}

fn env_number<T: std::str::FromStr>(key: &str) -> Option<T> {
    env::var(key).ok().and_then(|v| v.parse().ok())
}

/// The caller's side of a batch: the sweep, then the proptest cases, then the event check.
fn guard_prop_scenario(harness: &Harness, _logs: Logs<'_>) -> i32 {
    let marker = env::var(support::MARKER_VAR).unwrap_or_default();
    let batch: usize = env_number("PGROUP_PROP_BATCH").unwrap_or(0);
    let cases: u32 = env_number("PGROUP_PROP_GUARD_CASES").unwrap_or(CASES_PER_BATCH);
    let seed: u64 = env_number("PGROUP_PROP_SEED").expect("PGROUP_PROP_SEED");
    println!("SEED {seed}");
    let started = Instant::now();
    let world = RefCell::new(World::new(&marker));
    let tally = RefCell::new(Tally::default());
    let next = RefCell::new(0_usize);
    let first_failure = RefCell::new(None::<String>);
    let mut failures = Vec::new();

    let case = |pick: &Pick, signal: Signal| -> Result<(), String> {
        let n = {
            let mut next = next.borrow_mut();
            *next += 1;
            *next
        };
        let result = run_case(
            &mut world.borrow_mut(),
            harness,
            &mut tally.borrow_mut(),
            format!("case-{batch}-{n}"),
            pick,
            signal,
        );
        if let Err(e) = &result {
            first_failure.borrow_mut().get_or_insert_with(|| e.clone());
        }
        result
    };

    let sweep = sweep_picks(&world.borrow());
    let swept = sweep.len();
    for pick in &sweep {
        if let Err(e) = case(pick, Signal::SIGKILL) {
            failures.push(format!("sweep {e}"));
        }
    }
    println!("SWEEP {swept}");

    let config = Config {
        cases,
        failure_persistence: None,
        // Shrinking re-runs cases on real processes: bounded, and off when
        // PGROUP_PROP_SHRINK_ITERS=0 (.ci/mutants, which only needs the failure).
        max_shrink_iters: env_number("PGROUP_PROP_SHRINK_ITERS").unwrap_or(32),
        max_shrink_time: 20_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes(seed)),
    );
    let before = tally.borrow().cases;
    let result = runner.run(&(pick_strategy(), signal_strategy()), |(pick, signal)| {
        case(&pick, signal).map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, (pick, signal))) => failures.push(format!(
            "property failed; first failure: {}; minimal input {pick:?} {signal}: {reason}",
            first_failure.borrow().clone().unwrap_or_default()
        )),
        Err(TestError::Abort(reason)) => failures.push(format!("proptest aborted: {reason}")),
    }
    let tally = tally.into_inner();
    println!("CASES {}", tally.cases - before);
    for (kind, count) in &tally.kinds {
        println!("KIND {kind} {count}");
    }
    for (outcome, count) in &tally.deliveries {
        println!("OUTCOME {outcome} {count}");
    }
    println!("KILLED {}", world.borrow().killed);

    // Every case emitted exactly one event, and it says what the Delivery said.
    failures.extend(check_events(&tally.events));
    println!("ELAPSED_MS {}", started.elapsed().as_millis());

    let world = world.into_inner();
    for target in world.live.into_iter().chain(world.dead) {
        target.reap();
    }
    for failure in failures.iter().take(20) {
        println!("FAIL {failure}");
    }
    println!("DONE {}", failures.len());
    i32::from(!failures.is_empty())
}

/// Compares the captured log lines with the events the cases expect, in one pass.
fn check_events(expected: &[(String, &'static str, String, String)]) -> Vec<String> {
    check_event_lines(&support::log_lines(), expected)
}

fn check_event_lines(
    lines: &[String],
    expected: &[(String, &'static str, String, String)],
) -> Vec<String> {
    let mut by_context: HashMap<&str, Vec<&str>> = HashMap::new();
    for line in lines {
        if !line.contains("killpg_") {
            continue;
        }
        let Some(start) = line.find("context=\"case-") else {
            continue;
        };
        let rest = &line[start + "context=\"".len()..];
        let context = rest.split('"').next().unwrap_or_default();
        by_context.entry(context).or_default().push(line);
    }
    let mut failures = Vec::new();
    let mut known = BTreeSet::new();
    for (context, level, text, case) in expected {
        known.insert(context.as_str());
        let found = by_context
            .get(context.as_str())
            .cloned()
            .unwrap_or_default();
        match found.as_slice() {
            [line] if line.contains(text.as_str()) && line.contains(level) => {}
            _ => failures.push(format!(
                "event of {case}: expected one line with {level:?} and {text:?}, found {found:?}"
            )),
        }
    }
    for (context, found) in &by_context {
        if !known.contains(context) {
            failures.push(format!("unexpected events for {context}: {found:?}"));
        }
    }
    failures
}

/// Runs one batch of the guard property in a sandbox and checks its report.
#[rstest]
fn guard_property_in_the_sandbox(#[values(0, 1, 2, 3)] batch: usize) {
    assert!(batch < BATCHES);
    let cases: u32 = env_number("PGROUP_PROP_GUARD_CASES").unwrap_or(CASES_PER_BATCH);
    let base: u64 = env_number("PGROUP_PROP_SEED").unwrap_or_else(random_seed);
    let seed = base.wrapping_add(u64::try_from(batch).unwrap_or(0));
    let marker = support::marker(&format!("prop-guard-{batch}"));
    let out = support::run_sandboxed_std(
        &marker,
        "guard-prop",
        &[
            ("PGROUP_PROP_BATCH", batch.to_string()),
            ("PGROUP_PROP_GUARD_CASES", cases.to_string()),
            ("PGROUP_PROP_SEED", seed.to_string()),
        ],
        BATCH_LIMIT,
        true,
    );
    support::assert_no_leaks(&marker);
    let Some(out) = out else {
        reduced_mode("the guard property with real signals");
        return;
    };
    let fails = out.all("FAIL");
    assert!(
        fails.is_empty() && out.one("DONE") == "0",
        "batch {batch} (seed {seed}, rerun with PGROUP_PROP_SEED={base}) failed:\n{}\n--- last lines ---\n{}",
        fails.join("\n"),
        support::tail(&out.lines.join("\n"), 30)
    );
    assert_eq!(out.status.and_then(|s| s.code()), Some(0));
    assert_eq!(out.one("CASES"), cases.to_string());
    let kinds: BTreeMap<&str, usize> = out
        .all("KIND")
        .iter()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, n)| (k, n.parse().unwrap_or(0)))
        .collect();
    for kind in [
        "edge",
        "own",
        "session",
        "parent",
        "ancestor",
        "live_target",
        "just_died",
        "reaped",
        "small",
        "in_pid_range",
        "any_i32",
    ] {
        assert!(
            kinds.get(kind).copied().unwrap_or(0) > 0,
            "no case of kind {kind}: {kinds:?}"
        );
    }
    for outcome in ["sent", "no_such_group", "refused"] {
        assert!(
            out.all("OUTCOME").iter().any(|l| l.starts_with(outcome)),
            "no case ended {outcome}: {:?}",
            out.all("OUTCOME")
        );
    }
    let killed: usize = out.one("KILLED").parse().expect("KILLED n");
    assert!(killed > 0, "no target group was killed");
    eprintln!(
        "guard property batch {batch}: {} cases + {} swept in {} ms, {killed} target groups killed (seed {seed})",
        out.one("CASES"),
        out.one("SWEEP"),
        out.one("ELAPSED_MS")
    );
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    u64::try_from(nanos % u128::from(u64::MAX)).unwrap_or(0) ^ u64::from(std::process::id())
}

/// Reduced mode: said loudly, a failure under `PGROUP_REQUIRE_SANDBOX=1` (inside
/// `sandbox_mode`), and replaced by the harmless in-process checks.
fn reduced_mode(what: &str) {
    assert_eq!(support::sandbox_mode(), SandboxMode::Reduced);
    eprintln!(
        "\n*** REDUCED MODE: {what} NOT RUN (no PID namespace); only check_pgid, which never \
         signals, is exercised in the test process ***\n"
    );
    check_pgid_agrees_with_the_rules(500);
}

// ---------------------------------------------------------------------------------------------
// Harmless in-process properties: check_pgid never signals, Pgid is pure.
// ---------------------------------------------------------------------------------------------

/// `check_pgid` in the test process itself, against the rules computed from /proc: the
/// process's own group, session, parent and ancestors (their groups and their pids) here (under nextest the parent is the
/// runner, in a group of its own), edges, and random ids. Nothing is signalled.
fn check_pgid_agrees_with_the_rules(cases: u32) {
    let me = Process::myself().and_then(|p| p.stat()).expect("own stat");
    let mut around = vec![me.pgrp, me.session];
    let mut current = me.ppid;
    while current > 0 {
        match Process::new(current).and_then(|p| p.stat()) {
            Ok(stat) => {
                around.extend([stat.pid, stat.pgrp]);
                current = stat.ppid;
            }
            Err(_) => break,
        }
    }
    let around = around.clone();
    let strategy = prop_oneof![
        proptest::sample::select(around),
        proptest::sample::select(vec![
            i32::MIN,
            -1,
            0,
            1,
            2,
            PID_MAX_LIMIT - 1,
            PID_MAX_LIMIT,
            i32::MAX
        ]),
        1..=70_000_i32,
        any::<i32>(),
    ];
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy, |pgid| {
            let want = expected_refusal(pgid);
            let got = check_pgid(pgid);
            match (want, got) {
                (None, Ok(checked)) if checked.as_raw() == pgid => Ok(()),
                (Some(want), Err(got)) if want == got => Ok(()),
                (want, got) => Err(TestCaseError::fail(format!(
                    "check_pgid({pgid}): expected {want:?}, got {got:?}; the chain from this \
                     process up: {}",
                    describe_chain()
                ))),
            }
        })
        .expect("check_pgid agrees with the rules");
}

/// `pid ppid pgrp(/proc) pgid(getpgid) comm` for this process and each of its ancestors.
fn describe_chain() -> String {
    let mut out = Vec::new();
    let mut pid = i32::try_from(std::process::id()).expect("pid fits");
    while pid > 0 && out.len() < 64 {
        let Ok(stat) = Process::new(pid).and_then(|p| p.stat()) else {
            out.push(format!("{pid}: unreadable"));
            break;
        };
        let syscall = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)));
        out.push(format!(
            "{pid} ppid {} pgrp {} getpgid {syscall:?} ({})",
            stat.ppid, stat.pgrp, stat.comm
        ));
        pid = stat.ppid;
    }
    out.join(" <- ")
}

#[test]
fn check_pgid_agrees_with_the_rules_in_the_test_process() {
    check_pgid_agrees_with_the_rules(2_000);
}

fn edgy_i32() -> impl Strategy<Value = i32> {
    prop_oneof![
        any::<i32>(),
        -3..=3_i32,
        (PID_MAX_LIMIT - 3)..=(PID_MAX_LIMIT + 3),
        (i32::MAX - 3)..=i32::MAX,
        i32::MIN..=(i32::MIN + 3),
    ]
}

fn edgy_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        0..=3_u32,
        4_194_301..=4_194_307_u32,
        2_147_483_644..=2_147_483_651_u32,
        (u32::MAX - 3)..=u32::MAX,
    ]
}

/// What `Pgid`'s error must say for `value`.
fn check_invalid(value: i64, err: &pgroup::InvalidPgid) -> Result<(), TestCaseError> {
    prop_assert_eq!(err.value(), value);
    prop_assert_eq!(err.is_at_most_one(), value <= 1);
    let text = err.to_string();
    prop_assert!(text.contains(&value.to_string()), "{}", text);
    match value {
        0 => prop_assert!(text.contains("killpg(0)"), "{}", text),
        1 => prop_assert!(text.contains("kill(-1)"), "{}", text),
        v if v < 0 => prop_assert!(text.contains("negative"), "{}", text),
        _ => prop_assert!(text.contains(&PID_MAX_LIMIT.to_string()), "{}", text),
    }
    let io = std::io::Error::from(*err);
    prop_assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput);
    prop_assert_eq!(io.to_string(), text);
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: 2_000, failure_persistence: None, ..Config::default() })]

    /// `Pgid::try_from(i32)` accepts exactly 2..PID_MAX_LIMIT, keeps the value, and says
    /// what was wrong with the rest; `check_pgid` agrees on the range rules.
    #[test]
    fn pgid_from_i32_is_exactly_the_range(raw in edgy_i32()) {
        let valid = raw > 1 && raw < PID_MAX_LIMIT;
        match Pgid::try_from(raw) {
            Ok(pgid) => {
                prop_assert!(valid, "{} accepted", raw);
                prop_assert_eq!(pgid.as_raw(), raw);
                prop_assert_eq!(i32::from(pgid), raw);
                prop_assert_eq!(pgid.to_string(), raw.to_string());
                prop_assert_eq!(format!("{pgid:?}"), format!("Pgid({raw})"));
            }
            Err(err) => {
                prop_assert!(!valid, "{} refused", raw);
                check_invalid(i64::from(raw), &err)?;
            }
        }
        if raw <= 1 {
            prop_assert_eq!(check_pgid(raw).err(), Some(Refusal::PgidLe1));
        } else if raw >= PID_MAX_LIMIT {
            prop_assert_eq!(check_pgid(raw).err(), Some(Refusal::PgidOutOfRange));
        }
    }

    /// `Pgid::try_from(u32)` never wraps: values above i32::MAX are errors that keep their
    /// real value; `u32::from` gives an accepted value back.
    #[test]
    fn pgid_from_u32_never_wraps(raw in edgy_u32()) {
        let valid = raw > 1 && raw < 4_194_304;
        match Pgid::try_from(raw) {
            Ok(pgid) => {
                prop_assert!(valid, "{} accepted", raw);
                prop_assert_eq!(i64::from(pgid.as_raw()), i64::from(raw));
                prop_assert_eq!(u32::from(pgid), raw);
            }
            Err(err) => {
                prop_assert!(!valid, "{} refused", raw);
                check_invalid(i64::from(raw), &err)?;
            }
        }
    }
}

/// Each refusal names its rule and explains itself; `Unverifiable` adds the errno's
/// description only when there is one.
#[test]
fn refusals_describe_themselves() {
    let refusals = [
        (Refusal::PgidLe1, "pgid_le_1"),
        (Refusal::PgidOutOfRange, "pgid_out_of_range"),
        (Refusal::OwnPgroup, "own_pgroup"),
        (Refusal::SessionPgroup, "session_pgroup"),
        (Refusal::ParentPgroup { parent: 4242 }, "parent_pgroup"),
        (
            Refusal::AncestorPgroup { ancestor: 4343 },
            "ancestor_pgroup",
        ),
        (
            Refusal::Unverifiable {
                what: "the thing",
                errno: 0,
            },
            "guard_unverifiable",
        ),
    ];
    let mut texts = BTreeSet::new();
    for (refusal, reason) in refusals {
        assert_eq!(refusal.reason(), reason);
        let text = refusal.to_string();
        assert!(!text.is_empty() && texts.insert(text.clone()), "{text:?}");
    }
    assert!(Refusal::ParentPgroup { parent: 4242 }
        .to_string()
        .contains("4242"));
    assert!(Refusal::AncestorPgroup { ancestor: 4343 }
        .to_string()
        .contains("4343"));
    let without = Refusal::Unverifiable {
        what: "the thing",
        errno: 0,
    }
    .to_string();
    assert!(without.ends_with("the thing"), "{without}");
    let with = Refusal::Unverifiable {
        what: "the thing",
        errno: nix::errno::Errno::ESRCH as i32,
    }
    .to_string();
    assert!(with.ends_with("the thing: No such process"), "{with}");
    assert!(Delivery::Sent.is_sent());
    assert!(!Delivery::NoSuchGroup.is_sent());
    assert!(!Delivery::Refused(Refusal::OwnPgroup).is_sent());
}

// ---------------------------------------------------------------------------------------------
// Negative controls: the raw syscall, given the same ids, does hit the harness.
// ---------------------------------------------------------------------------------------------

/// The watched processes as `name=pid,...`: every canary and every link of the chain,
/// including the caller itself.
fn watched(harness: &Harness) -> Vec<(String, i32)> {
    let mut watched: Vec<(String, i32)> = harness
        .canaries
        .iter()
        .map(|(link, pid)| (format!("canary-{link}"), *pid))
        .collect();
    for (name, pid) in support::chain_link_pids() {
        watched.push((format!("link-{name}"), pid));
    }
    watched.push((
        "link-caller".to_owned(),
        i32::try_from(std::process::id()).expect("pid fits"),
    ));
    watched
}

fn dead_list(watched: &[(String, i32)]) -> String {
    let dead: BTreeSet<&str> = watched
        .iter()
        .filter(|(_, pid)| support::is_dead_or_dying(*pid))
        .map(|(name, _)| name.as_str())
        .collect();
    if dead.is_empty() {
        "none".to_owned()
    } else {
        dead.into_iter().collect::<Vec<_>>().join(",")
    }
}

/// The caller's side of a negative control: the unguarded `killpg` on an id the guard
/// refuses. A witness in a group of its own reports if the caller itself dies.
fn raw_control_scenario(harness: &Harness, _logs: Logs<'_>) -> i32 {
    let probe = env::var("PGROUP_PROBE").expect("PGROUP_PROBE");
    let pgid = match probe.as_str() {
        "zero" => 0,
        "one" => 1,
        "own" => harness.groups["caller"],
        "session" => harness.groups["session"],
        "parent" => harness.groups["parent"],
        "ancestor" => harness.groups["ancestor"],
        other => panic!("unknown probe {other}"),
    };
    let watched = watched(harness);
    let encoded: Vec<String> = watched.iter().map(|(n, p)| format!("{n}={p}")).collect();
    let mut witness = support::role_command("witness")
        .env("PGROUP_WATCH", encoded.join(","))
        .process_group(0)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn the witness");
    // Freeze the links above the one the probe kills (by pid, inside the sandbox), so that
    // none of them reacts to the death below it by tearing that group down and exiting: what
    // is dead when the reports are made is then exactly what the raw killpg killed. Links
    // below it are not stopped: a stopped member of a group that the death orphans would get
    // the kernel's SIGHUP and SIGCONT. The witness thaws them once it has reported.
    let above: &[&str] = match probe.as_str() {
        "zero" | "own" => &["link-parent", "link-ancestor", "link-session"],
        "parent" => &["link-ancestor", "link-session"],
        "ancestor" => &["link-session"],
        _ => &[],
    };
    let frozen: Vec<(String, i32)> = watched
        .iter()
        .filter(|(name, _)| above.contains(&name.as_str()))
        .cloned()
        .collect();
    support::assert_inside_pid_sandbox();
    for (_, pid) in &frozen {
        // By pid, on links of this sandbox's own chain; never run outside the namespace.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGSTOP);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while frozen
        .iter()
        .any(|(_, pid)| pending_state(*pid) != Some('T'))
    {
        assert!(Instant::now() < deadline, "the links did not stop");
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("PGID {pgid}");
    let _ = std::io::stdout().flush();
    // Deliberately unguarded, and only ever run inside the PID-namespace sandbox.
    support::assert_inside_pid_sandbox();
    let raw = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), Signal::SIGKILL);
    println!("RAW {raw:?}");
    println!("REPORT caller {}", dead_list(&watched));
    let _ = std::io::stdout().flush();
    drop(witness.stdin.take());
    let _ = witness.wait();
    0
}

fn pending_state(pid: i32) -> Option<char> {
    support::pending_signals(pid).map(|(_, state)| state)
}

/// Waits until the caller closes its stdin or dies, reports what died, and thaws the links
/// the caller froze.
fn witness(_logs: Logs<'_>) -> i32 {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    let watched: Vec<(String, i32)> = env::var("PGROUP_WATCH")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(n, p)| (n.to_owned(), p.parse().expect("pid")))
        .collect();
    println!("REPORT witness {}", dead_list(&watched));
    let _ = std::io::stdout().flush();
    for (name, pid) in &watched {
        if name.starts_with("link-") && name != "link-caller" {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGCONT);
        }
    }
    0
}

/// Negative control: the same ids the guard refuses, handed to the raw `killpg` inside the
/// sandbox, kill exactly the processes the guard protects. Without this, the surviving
/// canaries of the property above would prove nothing.
///
/// The caller reports what died right after the call (deterministic: the kernel queues
/// SIGKILL before `kill` returns); a witness in a group of its own reports too, once the
/// caller is done or dead. The links above the caller are stopped meanwhile, so the chain
/// cannot unwind and blur the picture.
#[rstest]
#[case::zero("zero", &["canary-caller", "link-caller"])]
#[case::own_group("own", &["canary-caller", "link-caller"])]
#[case::one_is_kill_minus_one(
    "one",
    &["canary-ancestor", "canary-caller", "canary-parent", "canary-session",
      "link-ancestor", "link-parent", "link-session"]
)]
#[case::session("session", &["canary-session", "link-session"])]
#[case::parent("parent", &["canary-parent", "link-parent"])]
#[case::ancestor("ancestor", &["canary-ancestor", "link-ancestor"])]
fn negative_control_raw_killpg_hits_the_harness(#[case] probe: &str, #[case] dead: &[&str]) {
    let marker = support::marker(&format!("raw-{probe}"));
    let out = support::run_sandboxed_std(
        &marker,
        "raw-control",
        &[("PGROUP_PROBE", probe.to_owned())],
        Duration::from_secs(60),
        true,
    );
    support::assert_no_leaks(&marker);
    let Some(out) = out else {
        reduced_mode("the raw killpg negative control");
        return;
    };
    let expected = dead.join(",");
    let reports = out.all("REPORT");
    let who: Vec<&str> = reports
        .iter()
        .filter_map(|r| r.split_once(' ').map(|(w, _)| w))
        .collect();
    // The caller reports unless it killed itself; the witness unless kill(-1) killed it.
    let caller_dies = dead.contains(&"link-caller");
    let expected_reporters: &[&str] = match (caller_dies, probe == "one") {
        (true, _) => &["witness"],
        (false, true) => &["caller"],
        (false, false) => &["caller", "witness"],
    };
    assert_eq!(who, expected_reporters, "{:#?}", out.lines);
    for report in reports {
        let (who, list) = report.split_once(' ').expect("REPORT who list");
        assert_eq!(list, expected, "{who}'s report for raw killpg({probe})");
    }
}

// ---------------------------------------------------------------------------------------------
// Fail-closed paths and the per-pid ancestor cache.
// ---------------------------------------------------------------------------------------------

/// The ancestor cache belongs to one pid: a child forked after the caller filled it walks
/// its own chain, in which the caller's parent is an ancestor.
fn forked_cache_scenario(harness: &Harness, _logs: Logs<'_>) -> i32 {
    let marker = env::var(support::MARKER_VAR).unwrap_or_default();
    let mut target = support::raw_target_group(&marker);
    let target_group = pid_of(&target);
    println!(
        "CALLER_CHECK {:?}",
        check_pgid(target_group).map(Pgid::as_raw)
    );
    let parent_group = harness.groups["parent"];
    let parent_pid = i32::try_from(std::os::unix::process::parent_id()).expect("pid fits");
    let _ = std::io::stdout().flush();
    // SAFETY: the child only calls check_pgid (no signal, no tracing event) and _exit. It
    // allocates and reads /proc, which is safe here: glibc's allocator is fork-safe and the
    // only other thread of this process (libtest's) holds no lock this code takes.
    let code = match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let code = match check_pgid(parent_group) {
                Err(Refusal::AncestorPgroup { ancestor }) if ancestor == parent_pid => 0,
                Ok(_) => 1,
                Err(_) => 2,
            };
            // SAFETY: _exit ends the forked child without running anything of the parent's.
            unsafe { nix::libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            match nix::sys::wait::waitpid(child, None).expect("waitpid on the forked child") {
                nix::sys::wait::WaitStatus::Exited(_, code) => code,
                other => panic!("forked child: {other:?}"),
            }
        }
    };
    println!("FORKED_CHECK {code}");
    let _ = target.kill();
    let _ = target.wait();
    0
}

#[test]
fn a_forked_child_does_not_use_its_parents_ancestor_cache() {
    let marker = support::marker("forked-cache");
    let out =
        support::run_sandboxed_std(&marker, "forked-cache", &[], Duration::from_secs(60), true);
    support::assert_no_leaks(&marker);
    let Some(out) = out else {
        reduced_mode("the forked-cache check");
        return;
    };
    assert!(
        out.one("CALLER_CHECK").starts_with("Ok("),
        "{:#?}",
        out.lines
    );
    assert_eq!(
        out.one("FORKED_CHECK"),
        "0",
        "the forked child did not refuse its grandparent's group as an ancestor's (1: it let it \
         through, 2: another refusal)"
    );
}

/// PID 1 of a namespace whose /proc belongs to the namespace outside it. The caller is
/// given the pid number of a process that exists in that /proc but whose parent is not
/// pid 1 (`ns_last_pid`, as root of this namespace): the guard then finds an entry for its
/// own pid, and only a wrong parent tells it that the entry is not its own. (Without that,
/// whether the entry exists at all would depend on which pids the outer namespace uses.)
fn foreign_proc_root(_logs: Logs<'_>) -> i32 {
    let decoy = procfs::process::all_processes().ok().and_then(|all| {
        all.flatten()
            .filter_map(|p| p.stat().ok())
            .filter(|s| s.pid > 50 && s.ppid != 1)
            .map(|s| s.pid)
            .min()
    });
    if let Some(decoy) = decoy {
        let _ = std::fs::write("/proc/sys/kernel/ns_last_pid", (decoy - 1).to_string());
    }
    let mut caller = support::role_command("foreign-proc-caller")
        .spawn()
        .expect("spawn the caller");
    let pinned = decoy.is_some_and(|d| u32::try_from(d).ok() == Some(caller.id()));
    println!("PINNED {pinned}");
    caller.wait().expect("wait").code().unwrap_or(3)
}

/// Tries to signal a group it created, then reports whether it died (asking the kernel,
/// since /proc may not describe this namespace).
fn report_guarded_kill_of_own_target(context: &str) -> i32 {
    let marker = env::var(support::MARKER_VAR).unwrap_or_default();
    let mut child = support::raw_target_group(&marker);
    let pgid = pid_of(&child);
    println!("DELIVERY {:?}", safe_killpg(pgid, Signal::SIGKILL, context));
    std::thread::sleep(Duration::from_millis(50));
    let dead = child.try_wait().map(|s| s.is_some()).unwrap_or(true);
    println!("TARGET_DEAD {dead}");
    let _ = child.kill();
    let _ = child.wait();
    0
}

fn foreign_proc_caller(_logs: Logs<'_>) -> i32 {
    report_guarded_kill_of_own_target("foreign proc")
}

/// PID 1 of a namespace with its own mounts, where /proc is covered by an empty tmpfs.
fn no_proc_root(_logs: Logs<'_>) -> i32 {
    if !support::in_private_namespaces() {
        println!("ERROR not in a private PID and mount namespace; refusing to mount");
        return 2;
    }
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "pgroup-no-proc", "/proc"])
        .status()
        .is_ok_and(|s| s.success());
    println!("MOUNTED {mounted}");
    report_guarded_kill_of_own_target("no proc")
}

/// PID 1: /proc with `hidepid=1`, then the caller, which drops to nobody: it can read its own
/// /proc entry and no other. With `PGROUP_HIDEPID_VIA=sh` a root `sh` sits between PID 1 and
/// the caller (an ancestor the caller cannot read); otherwise the caller is PID 1's child.
fn hidepid_root(_logs: Logs<'_>) -> i32 {
    if !support::in_private_namespaces() {
        println!("ERROR not in a private PID and mount namespace; refusing to remount");
        return 2;
    }
    let remounted = Command::new("mount")
        .args(["-o", "remount,hidepid=1", "/proc"])
        .status()
        .is_ok_and(|s| s.success());
    println!("REMOUNTED {remounted}");
    let mut caller = support::role_command("hidepid-caller");
    if env::var("PGROUP_HIDEPID_VIA").as_deref() != Ok("sh") {
        return caller.status().expect("run the caller").code().unwrap_or(3);
    }
    let mut middle = Command::new("sh");
    middle
        .args(["-c", "\"$@\"; exit $?", "sh"])
        .arg(caller.get_program())
        .args(caller.get_args())
        .env(support::ROLE_VAR, "hidepid-caller");
    middle.status().expect("run sh").code().unwrap_or(3)
}

/// Drops this process to nobody (65534); false if it cannot (a user-namespace sandbox has
/// no other uid).
fn drop_to_nobody() -> bool {
    // SAFETY: plain syscalls with constant arguments; glibc applies them to every thread.
    unsafe {
        nix::libc::setgroups(0, std::ptr::null()) == 0
            && nix::libc::setgid(65534) == 0
            && nix::libc::setuid(65534) == 0
    }
}

fn hidepid_caller(_logs: Logs<'_>) -> i32 {
    let dropped = drop_to_nobody();
    println!("DROPPED {dropped}");
    if !dropped {
        return 0;
    }
    report_guarded_kill_of_own_target("hidepid")
}

fn assert_fails_closed(out: &support::RoleOutput, errno: Option<i32>) {
    let delivery = out.one("DELIVERY");
    assert!(
        delivery.starts_with("Ok(Refused(Unverifiable"),
        "expected a fail-closed refusal, got {delivery}\n{:#?}",
        out.lines
    );
    if let Some(errno) = errno {
        assert!(
            delivery.contains(&format!("errno: {errno} }}")),
            "{delivery}"
        );
    }
    assert_eq!(out.one("TARGET_DEAD"), "false");
}

/// /proc of another PID namespace: the guard cannot check the ancestors and refuses.
#[test]
fn fails_closed_when_proc_belongs_to_another_namespace() {
    let marker = support::marker("foreign-proc");
    let out = support::run_sandboxed_std(
        &marker,
        "foreign-proc-root",
        &[],
        Duration::from_secs(60),
        false,
    );
    support::assert_no_leaks(&marker);
    let Some(out) = out else {
        reduced_mode("the foreign /proc check");
        return;
    };
    assert_fails_closed(&out, Some(0));
    assert_eq!(
        out.one("PINNED"),
        "true",
        "the caller did not get the decoy's pid"
    );
    assert!(
        out.one("DELIVERY").contains("another PID namespace"),
        "{}",
        out.one("DELIVERY")
    );
}

/// No /proc at all (an empty tmpfs over it): refused, with ESRCH (nothing to read).
#[test]
fn fails_closed_without_proc() {
    let marker = support::marker("no-proc");
    let out =
        support::run_sandboxed_std(&marker, "no-proc-root", &[], Duration::from_secs(60), true);
    support::assert_no_leaks(&marker);
    let Some(out) = out else {
        reduced_mode("the missing /proc check");
        return;
    };
    assert_eq!(out.one("MOUNTED"), "true", "{:#?}", out.lines);
    // /proc/self is not found under the empty tmpfs.
    assert_fails_closed(&out, Some(nix::errno::Errno::ESRCH as i32));
}

fn run_hidepid(via: &str) -> Option<support::RoleOutput> {
    let marker = support::marker(&format!("hidepid-{via}"));
    let out = support::run_sandboxed_std(
        &marker,
        "hidepid-root",
        &[("PGROUP_HIDEPID_VIA", via.to_owned())],
        Duration::from_secs(60),
        true,
    );
    support::assert_no_leaks(&marker);
    let Some(out) = out else {
        reduced_mode("the hidepid checks");
        return None;
    };
    assert_eq!(out.one("REMOUNTED"), "true", "{:#?}", out.lines);
    if out.one("DROPPED") != "true" {
        // A user-namespace sandbox (not root) has no other uid to drop to.
        eprintln!("\n*** REDUCED: hidepid check skipped, no other uid in this sandbox ***\n");
        assert_ne!(env::var(support::REQUIRE_SANDBOX_VAR).as_deref(), Ok("1"));
        return None;
    }
    Some(out)
}

/// An ancestor whose /proc entry may not be read (`hidepid=1`, the caller not root):
/// refused, with EACCES.
#[test]
fn fails_closed_when_an_ancestor_cannot_be_read() {
    let Some(out) = run_hidepid("sh") else { return };
    assert_fails_closed(&out, Some(nix::errno::Errno::EACCES as i32));
}

/// The walk up the ancestors stops at PID 1 without reading init's own entry: a caller that
/// may read no /proc entry but its own, whose parent is init, still signals its own group.
#[test]
fn the_ancestor_walk_stops_at_init() {
    let Some(out) = run_hidepid("direct") else {
        return;
    };
    assert_eq!(out.one("DELIVERY"), "Ok(Sent)", "{:#?}", out.lines);
    assert_eq!(out.one("TARGET_DEAD"), "true");
}

// ---------------------------------------------------------------------------------------------
// The ancestor rule's details: pids of ancestors that lead no group, and the refresh window.
// ---------------------------------------------------------------------------------------------

/// PID 1 -> sh -> sh -> caller, all in PID 1's group (outside the namespace, so 0 here): the
/// upper `sh` is an ancestor above the caller's parent that leads no group of its own.
fn nonleader_root(_logs: Logs<'_>) -> i32 {
    let caller = support::role_command("nonleader-caller");
    let relay = "\"$@\"; exit $?";
    let mut shells = Command::new("sh");
    shells
        .args(["-c", relay, "sh", "sh", "-c", relay, "sh"])
        .arg(caller.get_program())
        .args(caller.get_args())
        .env(support::ROLE_VAR, "nonleader-caller");
    shells.status().expect("run sh").code().unwrap_or(3)
}

fn nonleader_caller(_logs: Logs<'_>) -> i32 {
    let parent = i32::try_from(std::os::unix::process::parent_id()).expect("pid fits");
    let upper = Process::new(parent)
        .and_then(|p| p.stat())
        .expect("the parent's stat")
        .ppid;
    println!("UPPER {upper} {}", pgrp_of(upper).unwrap_or(-1));
    println!("CHECK {:?}", check_pgid(upper));
    0
}

/// An ancestor's pid is refused even though no group has that id (yet): it is the group that
/// ancestor would lead after `setsid`, which the guard might not have re-read.
#[test]
fn an_ancestors_pid_is_refused_even_if_it_leads_no_group() {
    let marker = support::marker("nonleader");
    let out = support::run_sandboxed_std(
        &marker,
        "nonleader-root",
        &[],
        Duration::from_secs(60),
        true,
    );
    support::assert_no_leaks(&marker);
    let Some(out) = out else {
        reduced_mode("the non-leader ancestor check");
        return;
    };
    let (upper, group) = out.one("UPPER").split_once(' ').expect("UPPER pid group");
    assert_ne!(upper, group, "the upper sh should lead no group");
    assert_eq!(
        out.one("CHECK"),
        format!("Err(AncestorPgroup {{ ancestor: {upper} }})")
    );
}

/// PID 1: /proc with `hidepid=1`, then it drops to nobody and stays readable (dumpable), and
/// runs the middle, which runs the caller: all as nobody, so each can read the others'
/// /proc entries until the middle makes itself unreadable (not dumpable).
fn refresh_root(_logs: Logs<'_>) -> i32 {
    if !support::in_private_namespaces() {
        println!("ERROR not in a private PID and mount namespace; refusing to remount");
        return 2;
    }
    let remounted = Command::new("mount")
        .args(["-o", "remount,hidepid=1", "/proc"])
        .status()
        .is_ok_and(|s| s.success());
    println!("REMOUNTED {remounted}");
    // Once this process is nobody, it must still be able to exec the test binary, whose
    // directory may be private to root (a checkout under `mktemp -d`): run a copy from a
    // tmpfs that exists only in this sandbox's mount namespace.
    let exe = match nobody_executable_copy() {
        Ok(exe) => exe,
        Err(e) => {
            println!("ERROR cannot copy the test binary for nobody: {e}");
            return 2;
        }
    };
    let dropped = drop_to_nobody() && nix::sys::prctl::set_dumpable(true).is_ok();
    println!("DROPPED {dropped}");
    if !dropped {
        return 0;
    }
    let role = support::role_command("refresh-middle");
    let mut middle = Command::new(&exe);
    middle.args(role.get_args());
    for (key, value) in role.get_envs() {
        if let Some(value) = value {
            middle.env(key, value);
        }
    }
    middle.status().expect("run the middle").code().unwrap_or(3)
}

/// A copy of the test binary that nobody can execute, on a tmpfs mounted over /mnt inside
/// this sandbox's private mount namespace (it disappears with the namespace).
fn nobody_executable_copy() -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=0755", "pgroup-exe", "/mnt"])
        .status()?;
    if !mounted.success() {
        return Err(std::io::Error::other("mount -t tmpfs on /mnt failed"));
    }
    let exe = std::path::Path::new("/mnt/pgroup-test");
    std::fs::copy(std::env::current_exe()?, exe)?;
    std::fs::set_permissions(exe, std::fs::Permissions::from_mode(0o755))?;
    Ok(exe.to_path_buf())
}

/// Relays the caller's output, and hides or shows its own /proc entry when asked.
fn refresh_middle(_logs: Logs<'_>) -> i32 {
    let mut caller = support::role_command("refresh-caller")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the caller");
    let lines = std::io::BufReader::new(caller.stdout.take().expect("piped"));
    for line in std::io::BufRead::lines(lines) {
        let Ok(line) = line else { break };
        match line.as_str() {
            "HIDE_MIDDLE" => {
                let _ = nix::sys::prctl::set_dumpable(false);
            }
            "SHOW_MIDDLE" => {
                let _ = nix::sys::prctl::set_dumpable(true);
            }
            _ => println!("{line}"),
        }
    }
    caller.wait().expect("wait").code().unwrap_or(3)
}

/// Within `ANCESTOR_REFRESH` of reading the chain the guard trusts what it read (the parent
/// became unreadable, and the guard did not notice); after it, the guard reads again, fails,
/// and refuses.
fn refresh_caller(_logs: Logs<'_>) -> i32 {
    let marker = env::var(support::MARKER_VAR).unwrap_or_default();
    let mut target = support::raw_target_group(&marker);
    let pgid = pid_of(&target);
    let parent = i32::try_from(std::os::unix::process::parent_id()).expect("pid fits");
    let readable = || Process::new(parent).and_then(|p| p.stat()).is_ok();
    let ask = |line: &str, want: bool| {
        println!("{line}");
        let _ = std::io::stdout().flush();
        let deadline = Instant::now() + Duration::from_secs(2);
        while readable() != want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        readable() == want
    };
    let stale = pgroup::ANCESTOR_REFRESH + Duration::from_millis(30);
    let mut within = None;
    for _ in 0..5 {
        if !ask("SHOW_MIDDLE", true) {
            break;
        }
        std::thread::sleep(stale);
        let first = check_pgid(pgid).map(Pgid::as_raw);
        let read_at = Instant::now();
        if !ask("HIDE_MIDDLE", false) {
            break;
        }
        let second = check_pgid(pgid).map(Pgid::as_raw);
        // Only conclusive well inside the window (a loaded machine may be slower).
        if read_at.elapsed() < pgroup::ANCESTOR_REFRESH / 2 {
            within = Some((first, second));
            break;
        }
    }
    match within {
        Some((first, second)) => {
            println!("FIRST {first:?}");
            println!("SECOND {second:?}");
        }
        None => println!("SECOND inconclusive"),
    }
    std::thread::sleep(stale);
    println!("THIRD {:?}", check_pgid(pgid).map(Pgid::as_raw));
    let _ = target.kill();
    let _ = target.wait();
    0
}

#[test]
fn the_ancestor_chain_is_trusted_for_the_refresh_window_then_read_again() {
    let marker = support::marker("refresh");
    let out =
        support::run_sandboxed_std(&marker, "refresh-root", &[], Duration::from_secs(60), true);
    support::assert_no_leaks(&marker);
    let Some(out) = out else {
        reduced_mode("the refresh-window check");
        return;
    };
    assert_eq!(out.one("REMOUNTED"), "true", "{:#?}", out.lines);
    if out.one("DROPPED") != "true" {
        eprintln!(
            "\n*** REDUCED: refresh-window check skipped, no other uid in this sandbox ***\n"
        );
        assert_ne!(env::var(support::REQUIRE_SANDBOX_VAR).as_deref(), Ok("1"));
        return;
    }
    let third = out.one("THIRD");
    assert!(
        third.starts_with("Err(Unverifiable") && third.contains("errno: 13 }"),
        "after the window the guard must read /proc again and refuse: {third}\n{:#?}",
        out.lines
    );
    let second = out.one("SECOND");
    assert_ne!(
        second, "inconclusive",
        "five attempts, none inside half the window"
    );
    let first = out.one("FIRST");
    assert!(first.starts_with("Ok("), "{first}");
    assert_eq!(
        second, first,
        "inside the window the guard uses what it read"
    );
}

// ---------------------------------------------------------------------------------------------
// An ancestor that joins another existing group while the chain is cached.
// ---------------------------------------------------------------------------------------------

/// PID 1 -> ancestor A (a group of its own, with a canary `sleep` in a second group G of the
/// same session) -> parent `sh` -> caller. A joins G with `setpgid(0, G)` when the caller
/// writes a byte to the pipe it inherited.
fn join_root(_logs: Logs<'_>) -> i32 {
    let mut ancestor = support::role_command("join-ancestor");
    ancestor.process_group(0);
    ancestor
        .status()
        .expect("run the ancestor")
        .code()
        .unwrap_or(3)
}

fn join_ancestor(_logs: Logs<'_>) -> i32 {
    use std::os::fd::{AsRawFd, OwnedFd};
    let marker = env::var(support::MARKER_VAR).unwrap_or_default();
    let mut canary = support::raw_target_group(&marker);
    let group = pid_of(&canary);
    let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe().expect("pipe");
    // The caller inherits the write end (no close-on-exec on it: `pipe` sets none).
    let joiner = std::thread::spawn(move || {
        let mut byte = [0_u8; 1];
        if nix::unistd::read(&read, &mut byte) == Ok(1) {
            let joined = nix::unistd::setpgid(
                nix::unistd::Pid::from_raw(0),
                nix::unistd::Pid::from_raw(group),
            );
            println!("JOINED {joined:?}");
        }
    });
    let caller = support::role_command("join-caller");
    let relay = "\"$@\"; exit $?";
    let code = Command::new("sh")
        .args(["-c", relay, "sh"])
        .arg(caller.get_program())
        .args(caller.get_args())
        .env(support::ROLE_VAR, "join-caller")
        .env("PGROUP_JOIN_GROUP", group.to_string())
        .env("PGROUP_JOIN_FD", write.as_raw_fd().to_string())
        .status()
        .expect("run the parent sh")
        .code()
        .unwrap_or(3);
    drop(write);
    let _ = joiner.join();
    // Our own child, by pid, inside the sandbox.
    let _ = canary.kill();
    let _ = canary.wait();
    code
}

/// Fills the guard's ancestor cache with a check of G, has the ancestor join G, then asks
/// again at once (well inside `ANCESTOR_REFRESH`), and only then signals G.
fn join_caller(_logs: Logs<'_>) -> i32 {
    use std::os::fd::{BorrowedFd, RawFd};
    let group: i32 = env::var("PGROUP_JOIN_GROUP")
        .expect("group")
        .parse()
        .expect("a number");
    let fd: RawFd = env::var("PGROUP_JOIN_FD")
        .expect("fd")
        .parse()
        .expect("a number");
    let parent = i32::try_from(std::os::unix::process::parent_id()).expect("pid fits");
    let ancestor = Process::new(parent)
        .and_then(|p| p.stat())
        .expect("the parent's stat")
        .ppid;
    println!("ANCESTOR {ancestor}");
    let first = check_pgid(group).map(Pgid::as_raw);
    let read_at = Instant::now();
    // SAFETY: the descriptor was inherited from the ancestor, which opened it for this, and
    // stays open for the rest of this process's life.
    let pipe = unsafe { BorrowedFd::borrow_raw(fd) };
    nix::unistd::write(pipe, &[1]).expect("ask the ancestor to join");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pgrp_of(ancestor) != Some(group) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(100));
    }
    println!("ANCESTOR_GROUP {:?}", pgrp_of(ancestor));
    let second = check_pgid(group).map(Pgid::as_raw);
    println!(
        "WITHIN_WINDOW {}",
        read_at.elapsed() < pgroup::ANCESTOR_REFRESH
    );
    println!("FIRST {first:?}");
    println!("SECOND {second:?}");
    let _ = std::io::stdout().flush();
    let delivery = safe_killpg(group, Signal::SIGKILL, "join").expect("safe_killpg");
    println!("DELIVERY {delivery:?}");
    println!("ANCESTOR_ALIVE {}", !support::is_dead_or_dying(ancestor));
    0
}

/// An ancestor above the parent joins another existing group G (`setpgid(0, G)`) while the
/// guard's reading of the chain is fresh: the guard asks each ancestor's group afresh, so G
/// is refused at once and the ancestor survives (a guard that trusted the cached groups
/// for `ANCESTOR_REFRESH` would let SIGKILL to G through, and kill the ancestor).
#[test]
fn an_ancestor_joining_another_group_is_seen_at_once() {
    let marker = support::marker("join");
    let out = support::run_sandboxed_std(&marker, "join-root", &[], Duration::from_secs(60), true);
    support::assert_no_leaks(&marker);
    let Some(out) = out else {
        reduced_mode("the ancestor-joins-a-group check");
        return;
    };
    let ancestor = out.one("ANCESTOR");
    assert_eq!(out.one("JOINED"), "Ok(())", "{:#?}", out.lines);
    assert!(out.one("FIRST").starts_with("Ok("), "{:#?}", out.lines);
    assert_eq!(
        out.one("WITHIN_WINDOW"),
        "true",
        "the join took longer than the refresh window, so the check proves nothing: {:#?}",
        out.lines
    );
    assert_eq!(
        out.one("SECOND"),
        format!("Err(AncestorPgroup {{ ancestor: {ancestor} }})"),
        "{:#?}",
        out.lines
    );
    assert_eq!(
        out.one("DELIVERY"),
        format!("Refused(AncestorPgroup {{ ancestor: {ancestor} }})")
    );
    assert_eq!(out.one("ANCESTOR_ALIVE"), "true");
}
