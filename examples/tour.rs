//! A narrated tour of `pgroup`: `cargo run --example tour`.
//!
//! It shows the guard refusing the ids that turn `killpg` into a disaster, each with its
//! reason, then a real process group being signalled and torn down.
//!
//! The guard's questions are asked by a probe, a copy of the tour two re-executions down,
//! each copy in a process group of its own, so that its own group, its parent's, an
//! ancestor's and the session leader's are four different groups and each rule fires for
//! the reason its row shows. Where two of them coincide, or an id is 0 or 1 (a container,
//! a PID namespace), the row says which rule refused it instead, and why.
//!
//! The tour is the package `pgroup-examples` (examples/Cargo.toml), so that building it
//! does not build the test suite's dev-dependencies.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use pgroup::{check_pgid, safe_killpg, Builder, Refusal, Signal, SpawnedGroup, GUARD_RULES};

fn why(refusal: &Refusal) -> &'static str {
    GUARD_RULES
        .iter()
        .find(|rule| rule.reason == refusal.reason())
        .map_or("", |rule| rule.why)
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let last = lines.last_mut().expect("never empty");
        if !last.is_empty() && last.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

/// Names the part a re-executed copy of the tour plays: `middle` (a process in a group of
/// its own, which only starts the probe) or `probe` (which asks the guard and prints).
const ROLE_VAR: &str = "PGROUP_TOUR_ROLE";
/// The tour's own process group, handed down to the probe, to which it is an ancestor's.
const TOUR_GROUP_VAR: &str = "PGROUP_TOUR_GROUP";

/// Starts this example again as `role`, as the leader of a process group of its own, and
/// waits for it. Its output goes straight to ours.
fn run_copy(role: &str, tour_group: i32) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let status = Command::new(std::env::current_exe()?)
        .env(ROLE_VAR, role)
        .env(TOUR_GROUP_VAR, tour_group.to_string())
        .process_group(0)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "the tour's {role} failed: {status}"
        )))
    }
}

/// Why a row was refused by another rule than the one it shows: only where the id is 0 or 1
/// (a container, a PID namespace) or where two of the groups are the same one.
fn other_rule_note(pgid: i32, shown: &str, fired: &str) -> String {
    match (pgid, fired) {
        (0, _) => "its id reads 0 here: that group lies outside this PID namespace (its \
                   leader is not visible from in here), and 0 is the first rule's"
            .to_owned(),
        (1, _) => "its id is 1 here: the group of PID 1, as when the tour runs as a child of \
                   a container's first process, and 1 is the first rule's"
            .to_owned(),
        (_, "session_pgroup") => "it is the session leader's group too here (without job \
                                  control, as in a script or CI, everything stays in one \
                                  group), and the session rule is checked first"
            .to_owned(),
        _ => format!("an earlier rule than {shown} matched first"),
    }
}

/// The guard's rows, asked by the probe: a process two re-executions below the tour, in a
/// process group of its own, whose parent (the middle copy) and grandparent (the tour) lead
/// other groups. That is the shape of a test binary under a runner, and it lets each rule
/// fire for the reason it shows.
fn probe() -> std::io::Result<()> {
    let own = nix::unistd::getpgrp().as_raw();
    let session = nix::unistd::getsid(None).map_or(0, |s| s.as_raw());
    let parent = nix::unistd::getpgid(Some(nix::unistd::getppid())).map_or(0, |g| g.as_raw());
    let tour_group: i32 = std::env::var(TOUR_GROUP_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let probes: [(&str, i32, &str); 8] = [
        ("0, a default or unset field", 0, "pgid_le_1"),
        ("1, a mock or sentinel pid", 1, "pgid_le_1"),
        ("-1, a u32 that wrapped", -1, "pgid_le_1"),
        ("i32::MAX, garbage", i32::MAX, "pgid_out_of_range"),
        ("the probe's own group", own, "own_pgroup"),
        ("the session leader's group", session, "session_pgroup"),
        (
            "the parent's group (the middle copy)",
            parent,
            "parent_pgroup",
        ),
        (
            "an ancestor's group (the tour's)",
            tour_group,
            "ancestor_pgroup",
        ),
    ];
    let mut explained: Vec<&str> = Vec::new();
    for (what, pgid, shown) in probes {
        match check_pgid(pgid) {
            Err(refusal) => {
                println!(
                    "  pgid {pgid:>10} ({what}): REFUSED, reason {}",
                    refusal.reason()
                );
                let mut text = if explained.contains(&refusal.reason()) {
                    "(see above)".to_owned()
                } else {
                    explained.push(refusal.reason());
                    format!("because {}", why(&refusal))
                };
                if refusal.reason() != shown {
                    text.push_str(&format!(
                        ". This row is meant to show {shown}, but {}.",
                        other_rule_note(pgid, shown, refusal.reason())
                    ));
                }
                for line in wrap(&text, 72) {
                    println!("  {:>16} {line}", "");
                }
            }
            Ok(_) => println!("  pgid {pgid:>10} ({what}): allowed (the guard missed {shown}!)"),
        }
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    match std::env::var(ROLE_VAR).as_deref() {
        Ok("middle") => {
            let tour_group = std::env::var(TOUR_GROUP_VAR)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            return run_copy("probe", tour_group);
        }
        Ok("probe") => return probe(),
        _ => {}
    }
    println!("== 1. The guard ==");
    println!(
        "killpg(pgid, sig) gives small and familiar numbers a meaning no test wants. The tour\n\
         asks the guard with check_pgid, which applies exactly the rules of safe_killpg but\n\
         signals nothing: a demo should not hand 1 and SIGKILL to anything in your terminal\n\
         (the test suite does that, inside a PID-namespace sandbox).\n\
         \n\
         `cargo run` leaves the tour in cargo's process group, where its own group and its\n\
         parent's are the same one. So the questions are asked by a probe: a copy of the\n\
         tour started in a group of its own by another copy in a group of its own, as a test\n\
         binary sits below its runner. Its parent (that copy) and an ancestor (the tour, in\n\
         cargo's group) lead other groups than the probe's own.\n"
    );
    run_copy("middle", nix::unistd::getpgrp().as_raw())?;

    println!("\n== 2. A real group ==");
    let mut server = Builder::new().grace_period(Duration::from_secs(2)).spawn(
        Command::new("sh")
            .args(["-c", "sleep 60 & sleep 60 & echo up; wait"])
            .stdout(Stdio::piped()),
    )?;
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().expect("piped")).read_line(&mut line)?;
    println!(
        "  spawned `sh` with two `sleep` children as group {} (leader pid {}): it says {:?}",
        server.pgid(),
        server.id(),
        line.trim()
    );
    let delivery = safe_killpg(server.pgid().as_raw(), Signal::SIGSTOP, "tour")?;
    println!(
        "  safe_killpg({}, SIGSTOP) -> {delivery:?}: all three stopped",
        server.pgid()
    );
    let delivery = server.signal(Signal::SIGCONT)?;
    println!("  server.signal(SIGCONT)      -> {delivery:?}: all three running again");
    let report = server.shutdown()?;
    println!("  server.shutdown() (SIGTERM, wait, SIGKILL sweep, reap):\n    {report:?}");

    println!("\n== 3. A child that ignores SIGTERM ==");
    let stubborn = Builder::new()
        .grace_period(Duration::from_millis(300))
        .spawn(
            Command::new("sh")
                .args(["-c", "trap '' TERM; echo up; sleep 60; :"])
                .stdout(Stdio::piped()),
        )
        .map(|mut g| {
            let mut line = String::new();
            let out = g.stdout.take().expect("piped");
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            g
        })?;
    let report = stubborn.shutdown()?;
    println!(
        "  grace 300 ms, then SIGKILL: sigkill_needed = {}, took {:?}",
        report.sigkill_needed, report.elapsed
    );

    println!("\n== 4. Drop ==");
    {
        let _group = SpawnedGroup::spawn(Command::new("sleep").arg("60"))?;
        println!("  a SpawnedGroup goes out of scope here, also during a panic ...");
    }
    println!("  ... and its whole group is gone, its leader reaped. That's the tour.");
    Ok(())
}
