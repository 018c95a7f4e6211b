//! A narrated tour of `pgroup`: `cargo run --example tour`.
//!
//! It shows the guard refusing the ids that turn `killpg` into a disaster, each with its
//! reason, then a real process group being signalled and torn down.

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

fn main() -> std::io::Result<()> {
    println!("== 1. The guard ==");
    println!(
        "killpg(pgid, sig) gives small and familiar numbers a meaning no test wants. The tour\n\
         asks the guard with check_pgid, which applies exactly the rules of safe_killpg but\n\
         signals nothing: a demo should not hand 1 and SIGKILL to anything in your terminal\n\
         (the test suite does that, inside a PID-namespace sandbox).\n"
    );
    let own = nix::unistd::getpgrp().as_raw();
    let session = nix::unistd::getsid(None).map_or(0, |s| s.as_raw());
    let parent = nix::unistd::getpgid(Some(nix::unistd::getppid())).map_or(0, |g| g.as_raw());
    let probes: [(&str, i32); 6] = [
        ("0, a default or unset field", 0),
        ("1, a mock or sentinel pid", 1),
        ("-1, a u32 that wrapped", -1),
        ("this process's own group", own),
        ("the session leader's group (your shell)", session),
        ("the parent's group (cargo)", parent),
    ];
    for (what, pgid) in probes {
        match check_pgid(pgid) {
            Err(refusal) => {
                println!(
                    "  pgid {pgid:>8} ({what}): REFUSED, reason {}",
                    refusal.reason()
                );
                for line in wrap(&format!("because {}", why(&refusal)), 72) {
                    println!("  {:>14} {line}", "");
                }
            }
            Ok(_) => println!("  pgid {pgid:>8} ({what}): allowed"),
        }
    }

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
