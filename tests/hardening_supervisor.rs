//! The supervised tiers under hostile conditions. Each test sets up a condition that a
//! supervisor (or the test binary's side of it) must survive, and checks the behaviour that
//! must hold. Conditions that would disturb other tests (SIGCHLD
//! ignored, closed stdio, a fork that never execs, a test binary that dies) are set up in a
//! re-executed copy of this binary (a "role").

// The suite's support reads /proc (leak markers in each process's environ, process states,
// the PID-namespace sandbox): it runs on Linux, with the Linux backend and, in CI, again
// with the portable one (`--cfg pgroup_portable`). Elsewhere it compiles to nothing.
#![cfg(target_os = "linux")]

mod support;

use std::env;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::FromRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::signal::{kill, Signal as NixSignal};
use nix::unistd::Pid;
use pgroup::{Builder, Containment, Signal, SpawnedGroup};
use procfs::process::Process;
use rstest::rstest;
use tracing_test::traced_test;

const GRACE: Duration = Duration::from_millis(200);

#[test]
#[ignore = "entry point of the helper processes the other tests re-execute this binary as"]
#[traced_test]
fn role_entry() {
    support::role_main(
        &|s| logs_contain(s),
        &[
            ("sigchld-ignored", sigchld_ignored_role),
            ("closed-stdio", closed_stdio_role),
            ("fork-and-die", fork_and_die_role),
            ("stuck-member", stuck_member_role),
        ],
    );
}

fn tier_named(name: &str) -> Containment {
    match name {
        "group" => Containment::Group,
        "supervised" => Containment::Supervised,
        "namespace" => Containment::Namespace,
        other => panic!("unknown tier {other}"),
    }
}

fn tier_name(tier: Containment) -> &'static str {
    match tier {
        Containment::Group => "group",
        Containment::Supervised => "supervised",
        _ => "namespace",
    }
}

fn spawn_in(tier: Containment, cmd: &mut Command) -> SpawnedGroup {
    Builder::new()
        .containment(tier)
        .grace_period(GRACE)
        .spawn(cmd)
        .expect("spawn")
}

/// Runs this binary again as `role`, in a `SpawnedGroup` of the `Group` tier, with the
/// marker and the tier in its environment, and returns what it printed.
fn run_role(
    role: &str,
    marker: &str,
    tier: Containment,
    extra: &[(&str, &str)],
) -> support::RoleOutput {
    let mut cmd = support::role_command(role);
    cmd.env(support::MARKER_VAR, marker)
        .env("PGROUP_TIER", tier_name(tier))
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    for (key, value) in extra {
        cmd.env(key, value);
    }
    support::run_collecting(cmd, Duration::from_secs(60))
}

/// The pids of `pid`'s children, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let pid = i32::try_from(pid).expect("pid fits");
    Process::new(pid)
        .and_then(|p| p.task_main_thread())
        .and_then(|t| t.children())
        .unwrap_or_default()
}

/// The parent of `pid`, from /proc.
fn parent_of(pid: u32) -> u32 {
    let pid = i32::try_from(pid).expect("pid fits");
    let ppid = Process::new(pid).and_then(|p| p.stat()).expect("stat").ppid;
    u32::try_from(ppid).expect("a parent in this namespace")
}

// ---- item 1: the test binary ignores SIGCHLD ------------------------------------------------

/// In a role whose SIGCHLD is `SIG_IGN` (the kernel reaps every child of it at once), a
/// supervised group still works: the leader's status arrives, the group is still pinned and
/// signalled after the leader exited, and teardown kills the member left behind.
fn sigchld_ignored_role(_logs: support::Logs<'_>) -> i32 {
    let tier = tier_named(&env::var("PGROUP_TIER").expect("PGROUP_TIER"));
    let marker = env::var(support::MARKER_VAR).expect("marker");
    // SAFETY: sets a disposition, no handler; this process is a role of its own.
    unsafe {
        nix::sys::signal::signal(NixSignal::SIGCHLD, nix::sys::signal::SigHandler::SigIgn)
            .expect("ignore SIGCHLD");
    }
    let mut group = spawn_in(
        tier,
        support::marked(&marker, "sh", &["-c", "sleep 1000 & echo started; exit 3"])
            .stdout(Stdio::piped()),
    );
    let mut line = String::new();
    let mut stdout = BufReader::new(group.stdout.take().expect("piped"));
    stdout.read_line(&mut line).expect("read");
    println!("STARTED {}", line.trim());
    match group.wait() {
        Ok(status) => println!("STATUS {:?}", status.code()),
        Err(e) => println!("STATUS error {e}"),
    }
    match group.signal(Signal::SIGCONT) {
        Ok(delivery) => println!("SIGNAL {}", delivery.is_sent()),
        Err(e) => println!("SIGNAL error {e}"),
    }
    match group.shutdown() {
        Ok(report) => println!("SHUTDOWN {:?}", report.status.code()),
        Err(e) => println!("SHUTDOWN error {e}"),
    }
    0
}

/// With the supervisor program (created with no exit signal, so the kernel does not reap it)
/// and with the forked supervisor (std's child, which the kernel reaps at once: its last
/// record tells how its teardown went).
#[rstest]
fn sigchld_ignored_by_the_test_binary(
    #[values(Containment::Supervised, Containment::Namespace)] tier: Containment,
    #[values("on", "off")] program: &str,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("sigchld-ign");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let out = run_role(
        "sigchld-ignored",
        &marker,
        tier,
        &[("PGROUP_SUPERVISOR_PROGRAM", program)],
    );
    // The probe, too, works with SIGCHLD ignored.
    let unavailable = out
        .lines
        .iter()
        .any(|l| l.contains("supervisor_program_unavailable"));
    assert!(!unavailable, "{:?}", out.lines);
    assert_eq!(out.one("STARTED"), "started", "{:?}", out.lines);
    assert_eq!(out.one("STATUS"), "Some(3)", "{:?}", out.lines);
    assert_eq!(out.one("SIGNAL"), "true", "{:?}", out.lines);
    assert_eq!(out.one("SHUTDOWN"), "Some(3)", "{:?}", out.lines);
    support::assert_no_leaks(&marker);
}

// ---- item 4: orphans are reaped, and teardown is bounded whatever their number ----------

/// Orphans re-parented to the supervisor are reaped as they exit, while the group lives: the
/// supervisor's only child is the leader again once they are gone (none stays a zombie
/// until teardown).
#[rstest]
fn orphans_are_reaped_while_the_group_lives(
    #[values(Containment::Supervised, Containment::Namespace)] tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("orphans");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let script = "i=0; while [ $i -lt 300 ]; do (sleep 0 &); i=$((i+1)); done; \
                  echo spawned; exec sleep 1000";
    let mut group = spawn_in(
        tier,
        support::marked(&marker, "sh", &["-c", script]).stdout(Stdio::piped()),
    );
    let mut line = String::new();
    BufReader::new(group.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line, "spawned\n");
    let leader = group.id();
    let supervisor = parent_of(leader);
    support::wait_until("the supervisor's only child is the leader", || {
        children_of(supervisor) == [leader]
    });
    assert_eq!(group.try_wait().expect("try_wait"), None);
    group.shutdown().expect("shutdown");
    support::assert_no_leaks(&marker);
}

/// Many escapees (more than 1024): each is killed and reported exactly once, and teardown
/// stays within its bound.
#[rstest]
fn many_escapees_are_each_reported_once(
    #[values(Containment::Supervised, Containment::Namespace)] tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    const ESCAPEES: usize = 1100;
    let marker = support::marker("escapees");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let script = format!(
        "i=0; while [ $i -lt {ESCAPEES} ]; do setsid sleep 1000 & i=$((i+1)); done; \
         exec sleep 1000"
    );
    let group = Builder::new()
        .containment(tier)
        .grace_period(Duration::ZERO)
        .spawn(&mut support::marked(&marker, "sh", &["-c", &script]))
        .expect("spawn");
    support::wait_until("every escapee leads a session of its own", || {
        support::marked_session_leaders(&marker).len() == ESCAPEES
    });
    let started = Instant::now();
    let report = group.shutdown().expect("shutdown");
    let elapsed = started.elapsed();
    let mut escapees = report.escapees.clone();
    escapees.sort_unstable();
    escapees.dedup();
    assert_eq!(report.escapees.len(), ESCAPEES, "duplicates or misses");
    assert_eq!(escapees.len(), ESCAPEES, "duplicates");
    assert!(
        elapsed < pgroup::KILL_WAIT_BOUND,
        "teardown took {elapsed:?} (bound {:?})",
        pgroup::KILL_WAIT_BOUND
    );
    support::assert_no_leaks(&marker);
}

// ---- item 6: a member that cannot die --------------------------------------------------

/// Whether this process may make PID namespaces and enter them with `nsenter`: the stuck
/// member below needs root. Otherwise the test says so loudly and fails under
/// `PGROUP_REQUIRE_SANDBOX=1`.
fn can_make_a_stuck_member() -> bool {
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let msg = "a member that cannot die needs root (a nested PID namespace entered with nsenter)";
    assert!(
        env::var(support::REQUIRE_SANDBOX_VAR).as_deref() != Ok("1"),
        "{msg}, and {} = 1",
        support::REQUIRE_SANDBOX_VAR
    );
    eprintln!("\n*** NOT RUN: {msg} ***\n");
    false
}

/// Makes a member of a new group (in `tier`) that SIGKILL cannot finish: the leader is
/// `unshare --pid --fork sleep`, whose child N is init of a nested PID namespace; a stopped
/// `nsenter` outside the group has a child C inside that namespace. When N is killed, the
/// kernel kills C, and N's exit waits until C is reaped, which its stopped parent never
/// does. Returns the group and the `nsenter` child (stopped), which the caller must end.
fn group_with_a_stuck_member(
    marker: &str,
    tier: Containment,
) -> (SpawnedGroup, std::process::Child) {
    let group = spawn_in(
        tier,
        &mut support::marked(marker, "unshare", &["--pid", "--fork", "sleep", "1000"]),
    );
    let leader = group.id();
    let mut init = None;
    support::wait_until("the nested namespace's init runs sleep", || {
        init = match children_of(leader).as_slice() {
            [n] if Process::new(i32::try_from(*n).expect("pid"))
                .and_then(|p| p.stat())
                .is_ok_and(|s| s.comm == "sleep") =>
            {
                Some(*n)
            }
            _ => None,
        };
        init.is_some()
    });
    let init = init.expect("found").to_string();
    let mut nsenter = support::marked(
        marker,
        "nsenter",
        &["--target", &init, "--pid", "--", "sleep", "1000"],
    );
    let nsenter = nsenter
        .process_group(0)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn nsenter");
    support::wait_until("nsenter's child runs sleep in the nested namespace", || {
        children_of(nsenter.id()).iter().any(|c| {
            Process::new(i32::try_from(*c).expect("pid"))
                .and_then(|p| p.stat())
                .is_ok_and(|s| s.comm == "sleep")
        })
    });
    let pid = Pid::from_raw(i32::try_from(nsenter.id()).expect("pid"));
    // By pid, on our own unreaped child.
    kill(pid, NixSignal::SIGSTOP).expect("stop nsenter");
    support::wait_until("nsenter is stopped", || {
        support::pending_signals(pid.as_raw()).is_some_and(|(_, state)| state == 'T')
    });
    (group, nsenter)
}

/// Tears the group down and returns how long it took and what it said; then ends `nsenter`
/// (our own child, by pid) so that everything can finish dying.
fn shutdown_with_stuck_member(
    group: SpawnedGroup,
    mut nsenter: std::process::Child,
) -> (Duration, String) {
    let started = Instant::now();
    let result = group.shutdown();
    let elapsed = started.elapsed();
    let _ = nsenter.kill();
    let _ = nsenter.wait();
    let said = match result {
        Ok(report) => format!("ok {report:?}"),
        Err(e) => format!("error {e}"),
    };
    (elapsed, said)
}

/// The bound the docs give a Drop: the grace period plus `KILL_WAIT_BOUND`, and a little
/// for the machine to schedule us.
fn drop_bound() -> Duration {
    GRACE + pgroup::KILL_WAIT_BOUND + Duration::from_millis(700)
}

/// A member that cannot die does not stretch teardown past its documented bound, in the
/// `Supervised` tier (the supervisor's own wait is bounded) and in `Namespace` (where its
/// `alarm` never fired: PID 1 drops signals it has no handler for). Teardown reports the
/// member it could not kill.
#[rstest]
fn a_member_that_cannot_die_keeps_the_drop_bound(
    #[values(Containment::Supervised, Containment::Namespace)] tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    if !can_make_a_stuck_member() {
        return;
    }
    let marker = support::marker("stuck");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let (group, nsenter) = group_with_a_stuck_member(&marker, tier);
    let (elapsed, said) = shutdown_with_stuck_member(group, nsenter);
    eprintln!("teardown with a member that cannot die, {tier:?}: {elapsed:?}: {said}");
    assert!(
        elapsed < drop_bound(),
        "teardown took {elapsed:?}, beyond {:?}: {said}",
        drop_bound()
    );
    assert!(reports_the_stuck_teardown(&said), "{said}");
    support::assert_no_leaks(&marker);
}

/// The same in a test binary that ignores SIGALRM (the old supervisor's `alarm` was then
/// no timer either).
fn stuck_member_role(_logs: support::Logs<'_>) -> i32 {
    let tier = tier_named(&env::var("PGROUP_TIER").expect("PGROUP_TIER"));
    let marker = env::var(support::MARKER_VAR).expect("marker");
    // SAFETY: sets a disposition, no handler; this process is a role of its own.
    unsafe {
        nix::sys::signal::signal(NixSignal::SIGALRM, nix::sys::signal::SigHandler::SigIgn)
            .expect("ignore SIGALRM");
    }
    let (group, nsenter) = group_with_a_stuck_member(&marker, tier);
    let (elapsed, said) = shutdown_with_stuck_member(group, nsenter);
    println!("ELAPSED_MS {}", elapsed.as_millis());
    println!("SAID {said}");
    0
}

/// The error of a teardown that gave up: the supervisor's own report of the process that did
/// not die, or, when that report comes after the test binary's deadline (a loaded machine:
/// both bounds run at once), the test binary's word that the supervisor did not finish in
/// time. Either way the bound was kept, which the elapsed time checks.
fn reports_the_stuck_teardown(said: &str) -> bool {
    said.contains("did not die") || said.contains("did not finish its teardown in time")
}

#[test]
fn a_member_that_cannot_die_with_sigalrm_ignored() {
    if support::tier_unavailable(Containment::Supervised) {
        return;
    }
    if !can_make_a_stuck_member() {
        return;
    }
    let marker = support::marker("stuck-alrm");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let out = run_role("stuck-member", &marker, Containment::Supervised, &[]);
    let elapsed = Duration::from_millis(out.one("ELAPSED_MS").parse().expect("ms"));
    let said = out.one("SAID");
    assert!(
        elapsed < drop_bound(),
        "teardown took {elapsed:?}, beyond {:?}: {said}",
        drop_bound()
    );
    assert!(reports_the_stuck_teardown(said), "{said}");
    support::assert_no_leaks(&marker);
}

// ---- item 8: closed stdio in the test binary ------------------------------------------------

/// Closes the descriptors named in `PGROUP_CLOSE` (e.g. "0" or "012") after saving stdout
/// as the report channel, then spawns a group with null stdio: std's child puts /dev/null
/// on 0, 1 and 2 with dup2, which must not hit the supervisor's pipes.
fn closed_stdio_role(_logs: support::Logs<'_>) -> i32 {
    let tier = tier_named(&env::var("PGROUP_TIER").expect("PGROUP_TIER"));
    let marker = env::var(support::MARKER_VAR).expect("marker");
    let close = env::var("PGROUP_CLOSE").expect("PGROUP_CLOSE");
    // SAFETY: dup(2) of our own stdout; the new descriptor is owned by `report` below.
    let saved = unsafe { libc::dup(1) };
    assert!(saved > 2, "dup stdout");
    // SAFETY: `saved` is a descriptor we just made and nothing else owns.
    let mut report = unsafe { File::from_raw_fd(saved) };
    for fd in close.chars() {
        let fd: i32 = fd
            .to_digit(10)
            .and_then(|d| i32::try_from(d).ok())
            .expect("0-2");
        // SAFETY: closes one of our own standard descriptors; std treats a closed stdout
        // as a sink (EBADF is ignored), and nothing in this role reads stdin.
        unsafe { libc::close(fd) };
    }
    let group = spawn_in(
        tier,
        support::marked(&marker, "sleep", &["1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let sent = group.signal(Signal::SIGTERM).map(|d| d.is_sent());
    let status = group.wait().map(|s| s.signal());
    let shutdown = group.shutdown().map(|r| r.status.signal());
    writeln!(report, "SIGNAL {sent:?}").expect("report");
    writeln!(report, "STATUS {status:?}").expect("report");
    writeln!(report, "SHUTDOWN {shutdown:?}").expect("report");
    0
}

#[rstest]
fn closed_stdio_in_the_test_binary(
    #[values(Containment::Supervised, Containment::Namespace)] tier: Containment,
    #[values("0", "012")] close: &str,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("closed-stdio");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let out = run_role("closed-stdio", &marker, tier, &[("PGROUP_CLOSE", close)]);
    assert_eq!(out.one("SIGNAL"), "Ok(true)", "{:?}", out.lines);
    assert_eq!(out.one("STATUS"), "Ok(Some(15))", "{:?}", out.lines);
    assert_eq!(out.one("SHUTDOWN"), "Ok(Some(15))", "{:?}", out.lines);
    support::assert_no_leaks(&marker);
}

// ---- item 9: a Command spawned again -------------------------------------------------------

/// One `Command`, spawned twice: the second group works as the first (before, the first
/// spawn's hook ran again with stale descriptors and the program was killed at once).
#[rstest]
fn a_command_spawned_again(
    #[values(Containment::Group, Containment::Supervised, Containment::Namespace)]
    first: Containment,
    #[values(Containment::Group, Containment::Supervised, Containment::Namespace)]
    second: Containment,
) {
    if support::tier_unavailable(first) || support::tier_unavailable(second) {
        return;
    }
    let marker = support::marker("reuse");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let mut cmd = support::marked(&marker, "sleep", &["1000"]);
    for tier in [first, second] {
        let group = spawn_in(tier, &mut cmd);
        assert!(group.signal(Signal::SIGTERM).expect("signal").is_sent());
        assert_eq!(group.wait().expect("wait").signal(), Some(15), "{tier:?}");
        let report = group.shutdown().expect("shutdown");
        assert_eq!(report.status.signal(), Some(15));
        support::assert_no_leaks(&marker);
    }
    // And a plain spawn of it afterwards is a plain child again.
    let mut child = cmd.stdout(Stdio::null()).spawn().expect("plain spawn");
    assert_eq!(child.try_wait().expect("try_wait"), None);
    child.kill().expect("kill our own child");
    child.wait().expect("reap");
    support::assert_no_leaks(&marker);
}

// ---- item 10: a fork of the test binary that never execs -----------------------------------

/// Spawns a group, forks a child that never execs (it holds every descriptor, including the
/// control pipe's write end), prints the pids and waits to be killed.
fn fork_and_die_role(_logs: support::Logs<'_>) -> i32 {
    let tier = tier_named(&env::var("PGROUP_TIER").expect("PGROUP_TIER"));
    let marker = env::var(support::MARKER_VAR).expect("marker");
    let group = spawn_in(tier, &mut support::marked(&marker, "sleep", &["1000"]));
    println!("LEADER {}", group.id());
    std::io::stdout().flush().expect("flush");
    // SAFETY: the child only calls pause(2) and _exit(2), both async-signal-safe: no
    // allocation, no lock, although this process has other threads.
    let fork = unsafe { libc::fork() };
    if fork == 0 {
        loop {
            // SAFETY: as above.
            unsafe { libc::pause() };
        }
    }
    assert!(fork > 0, "fork");
    println!("FORK {fork}");
    println!("READY");
    std::io::stdout().flush().expect("flush");
    std::mem::forget(group);
    thread::sleep(Duration::from_secs(600));
    1
}

#[rstest]
fn a_fork_of_the_test_binary_does_not_keep_the_group_alive(
    #[values(Containment::Supervised, Containment::Namespace)] tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("fork");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let mut role = support::role_command("fork-and-die");
    role.env(support::MARKER_VAR, &marker)
        .env("PGROUP_TIER", tier_name(tier))
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut role = role.spawn().expect("spawn the role");
    let stdout = role.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    // The fork keeps the pipe open: read lines, never to end of file.
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut fork = None;
    let mut leader = None;
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the role reports");
        if let Some(pid) = line.strip_prefix("FORK ") {
            fork = pid.parse::<i32>().ok();
        } else if let Some(pid) = line.strip_prefix("LEADER ") {
            leader = pid.parse::<i32>().ok();
        } else if line == "READY" {
            break;
        }
    }
    let (fork, leader) = (fork.expect("fork pid"), leader.expect("leader pid"));
    role.kill()
        .expect("SIGKILL our own child, the stand-in for a test binary");
    role.wait().expect("reap the role");
    support::wait_until("everything but the fork is dead", || {
        support::marked_alive(&marker) == [fork]
    });
    assert!(support::is_dead_or_dying(leader));
    // The fork was the role's child, not ours; it carries this test's marker.
    kill(Pid::from_raw(fork), NixSignal::SIGKILL).expect("kill the fork");
    support::assert_no_leaks(&marker);
}

// ---- item 12: a file the kernel cannot execute -----------------------------------------------

/// A file without `#!` that is not ELF: `execve` fails with ENOEXEC. Every tier reports that
/// error naming the program, and runs nothing, also where a spawn would take `execvp`'s
/// path, which runs such a file with `/bin/sh` (a new session, a `PATH` of the `Command`'s
/// own). A file with `#!` runs in every tier: the control.
#[rstest]
fn a_file_without_a_shebang_fails_in_every_tier(
    #[values(Containment::Group, Containment::Supervised, Containment::Namespace)]
    tier: Containment,
    #[values("absolute", "relative to the Command's directory", "found in PATH")] how: &str,
    #[values(false, true)] new_session: bool,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("enoexec");
    let dir = tempfile::tempdir().expect("tempdir");
    let ran = dir.path().join("ran");
    let write_script = |name: &str, head: &str| {
        let path = dir.path().join(name);
        let text = format!("{head}touch '{}'\nexec sleep 1000\n", ran.display());
        support::write_executable(&marker, &path, &text);
        path
    };
    let plain = write_script("no-shebang", "");
    let script = write_script("with-shebang", "#!/bin/sh\n");
    let command = |path: &std::path::Path| {
        let name = path.file_name().expect("name").to_str().expect("utf-8");
        let mut cmd = match how {
            "absolute" => support::marked(&marker, path.to_str().expect("utf-8"), &[]),
            "relative to the Command's directory" => {
                let mut cmd = support::marked(&marker, &format!("./{name}"), &[]);
                cmd.current_dir(dir.path());
                cmd
            }
            _ => {
                let mut cmd = support::marked(&marker, name, &[]);
                let path = format!("{}:/usr/bin:/bin", dir.path().display());
                cmd.env("PATH", path);
                cmd
            }
        };
        cmd.stdin(Stdio::null());
        cmd
    };
    let err = Builder::new()
        .containment(tier)
        .new_session(new_session)
        .spawn(&mut command(&plain))
        .expect_err("a file the kernel cannot execute");
    assert_eq!(
        err.kind(),
        std::io::Error::from_raw_os_error(libc::ENOEXEC).kind(),
        "{err}"
    );
    assert!(err.to_string().contains("(os error 8)"), "{err}");
    assert!(err.to_string().contains("no-shebang"), "{err}");
    assert!(!ran.exists(), "the file was run anyway");
    support::assert_no_leaks(&marker);

    let group = Builder::new()
        .containment(tier)
        .new_session(new_session)
        .spawn(&mut command(&script))
        .expect("a script with #! runs");
    support::wait_until("the script ran", || ran.exists());
    group.shutdown().expect("shutdown");
    support::assert_no_leaks(&marker);
}
