//! The `Group` tier and teardown under hostile conditions: a leader reaped by
//! someone else (SIGCHLD ignored, a `waitpid(-1)` thread), pid reuse, an orphaned member
//! that needs its grace period, no free descriptor, and a leader that leaves its group.
//!
//! What would break the test process (SIGCHLD ignored, a reaping thread, a lowered
//! `RLIMIT_NOFILE`) runs in a role, a re-executed copy of this binary; what forces pid
//! reuse runs in the PID-namespace sandbox, where `ns_last_pid` may be written.

// The suite's support reads /proc (leak markers in each process's environ, process states,
// the PID-namespace sandbox): it runs on Linux, with the Linux backend and, in CI, again
// with the portable one (`--cfg pgroup_portable`). Elsewhere it compiles to nothing.
#![cfg(target_os = "linux")]

mod support;

use std::env;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;
use std::thread;
use std::time::Duration;

use nix::sys::signal::{self, SigHandler};
use pgroup::{Builder, Containment, Signal};
use rstest::rstest;
use tracing_test::traced_test;

const SHORT_GRACE: Duration = Duration::from_millis(100);

#[test]
#[ignore = "entry point of the helper processes the other tests re-execute this binary as"]
#[traced_test]
fn role_entry() {
    support::role_main(
        &|s| logs_contain(s),
        &[
            ("reaped-elsewhere", reaped_elsewhere_role),
            ("reuse", reuse_role),
            ("no-fd", no_fd_role),
            ("foreign-proc", foreign_proc_role),
            ("join-group", join_group_role),
        ],
    );
}

/// Makes this process reap its children behind the crate's back, as `how` says.
fn reap_behind_the_crates_back(how: &str) {
    match how {
        "sigchld-ignore" => {
            // SAFETY: setting a disposition to SIG_IGN installs no handler.
            unsafe { signal::signal(signal::Signal::SIGCHLD, SigHandler::SigIgn) }
                .expect("ignore SIGCHLD");
        }
        "waitpid-any" => {
            thread::spawn(|| loop {
                if nix::sys::wait::waitpid(None, None).is_err() {
                    thread::sleep(Duration::from_millis(1));
                }
            });
        }
        other => panic!("unknown way to reap: {other}"),
    }
}

/// Live processes carrying `marker`, other than this role itself.
fn members_alive(marker: &str) -> usize {
    let me = i32::try_from(std::process::id()).expect("pid fits");
    support::marked_alive(marker)
        .into_iter()
        .filter(|pid| *pid != me)
        .count()
}

/// The state letter of `pid` in /proc, `None` once it is gone.
fn state_of(pid: i32) -> Option<char> {
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .ok()
        .map(|s| s.state)
}

/// Item 1: the leader exits at once and is reaped by someone else; two members that
/// ignore SIGTERM live on in its group. `signal` still reaches them (never a number), and
/// teardown kills them and says the leader's status is lost.
fn reaped_elsewhere_role(_logs: support::Logs<'_>) -> i32 {
    let how = env::var("PGROUP_REAPER").expect("PGROUP_REAPER");
    let marker = env::var(support::MARKER_VAR).expect("marker");
    reap_behind_the_crates_back(&how);
    // The leader exits only once its stdin closes, after the spawn has pinned it: a leader
    // reaped before it is pinned is a different case (spawn refuses it).
    let member = "(trap '' TERM; exec sleep 1000) & (trap '' TERM; exec sleep 1000) & \
                  echo ready; read _; exit 0";
    let mut group = Builder::new()
        .containment(Containment::Group)
        .grace_period(SHORT_GRACE)
        .spawn(
            support::marked(&marker, "sh", &["-c", member])
                .stdout(Stdio::piped())
                .stdin(Stdio::piped()),
        )
        .expect("spawn");
    drop(group.stdin.take());
    let leader = i32::try_from(group.id()).expect("pid fits");
    let mut ready = String::new();
    BufReader::new(group.stdout.take().expect("piped"))
        .read_line(&mut ready)
        .expect("read ready");
    support::wait_until("the leader was reaped by someone else", || {
        state_of(leader).is_none()
    });
    support::wait_until("both members run", || {
        support::members_of(leader)
            .iter()
            .filter(|(_, state)| *state != 'Z')
            .count()
            == 2
    });
    println!("TRY_WAIT {:?}", group.try_wait().map_err(|e| e.to_string()));
    println!("SIGNAL {:?}", group.signal(Signal::SIGCONT));
    let shutdown = group.shutdown();
    println!(
        "SHUTDOWN {}",
        match &shutdown {
            Ok(report) => format!("Ok {report:?}"),
            Err(e) => format!("Err {e}"),
        }
    );
    // The portable backend cannot reach them (see the test below): nothing to wait for.
    if !cfg!(pgroup_portable) {
        support::wait_until("every member is dead", || members_alive(&marker) == 0);
    }
    println!("MEMBERS_LEFT {}", members_alive(&marker));
    0
}

/// With the portable backend (macOS, FreeBSD; forced here by `--cfg pgroup_portable`) the
/// same scenario is a negative control: a group whose leader was reaped behind the crate's
/// back can be reached only by its number, which is no longer pinned, so neither `signal`
/// nor teardown touches it (as on a Linux before 6.9), and both say why. The members live
/// on; this test ends them by pid.
#[rstest]
fn a_leader_reaped_elsewhere_still_gets_its_members_torn_down(
    #[values("sigchld-ignore", "waitpid-any")] how: &str,
) {
    let marker = support::marker(&format!("reaped-{how}"));
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let mut cmd = support::role_command("reaped-elsewhere");
    cmd.env(support::MARKER_VAR, &marker)
        .env("PGROUP_REAPER", how)
        .stdout(Stdio::piped());
    let out = support::run_collecting(cmd, Duration::from_secs(60));
    assert!(
        out.one("TRY_WAIT").contains("reaped by someone else"),
        "{:#?}",
        out.lines
    );
    if cfg!(pgroup_portable) {
        let signal = out.one("SIGNAL");
        assert!(
            signal.starts_with("Err") && signal.contains("no longer pinned"),
            "{:#?}",
            out.lines
        );
        let shutdown = out.one("SHUTDOWN");
        assert!(
            shutdown.starts_with("Err") && shutdown.contains("reaped by someone else"),
            "{:#?}",
            out.lines
        );
        assert_eq!(out.one("MEMBERS_LEFT"), "2", "{:#?}", out.lines);
        support::kill_marked(&marker);
        support::assert_no_leaks(&marker);
        return;
    }
    support::assert_no_leaks(&marker);
    assert_eq!(out.one("SIGNAL"), "Ok(Sent)", "{:#?}", out.lines);
    let shutdown = out.one("SHUTDOWN");
    assert!(
        shutdown.starts_with("Err") && shutdown.contains("reaped by someone else"),
        "{:#?}",
        out.lines
    );
    assert_eq!(out.one("MEMBERS_LEFT"), "0");
}

/// Item 1 with pid reuse, as PID 1 of the sandbox: the leader is reaped (SIGCHLD ignored),
/// its group empties, and its number goes to a canary leading a group of its own
/// (`ns_last_pid`). Neither `signal` nor teardown may touch the canary.
fn reuse_role(_logs: support::Logs<'_>) -> i32 {
    let marker = env::var(support::MARKER_VAR).expect("marker");
    if std::process::id() != 1 {
        println!("ERROR not PID 1 of a namespace");
        return 2;
    }
    reap_behind_the_crates_back("sigchld-ignore");
    // The leader waits for a line, so that it is pinned before it exits.
    let mut group = Builder::new()
        .containment(Containment::Group)
        .grace_period(SHORT_GRACE)
        .spawn(support::marked(&marker, "sh", &["-c", "read line; exit 0"]).stdin(Stdio::piped()))
        .expect("spawn");
    let leader = i32::try_from(group.id()).expect("pid fits");
    let mut stdin = group.stdin.take().expect("piped");
    stdin.write_all(b"go\n").expect("write");
    drop(stdin);
    support::wait_until("the leader was reaped", || state_of(leader).is_none());
    // The number is free: hand it to a canary that leads a group of its own. (Retried: the
    // number may be freed a moment after /proc stops showing the process.)
    let spawn_canary = || {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (leader - 1).to_string())
            .expect("write ns_last_pid");
        support::marked(&marker, "sleep", &["1000"])
            .process_group(0)
            .spawn()
            .expect("spawn the canary")
    };
    let mut canary = spawn_canary();
    for _ in 0..50 {
        if canary.id() == group.id() {
            break;
        }
        // Our own child, by pid, inside the sandbox.
        let _ = canary.kill();
        thread::sleep(Duration::from_millis(2));
        canary = spawn_canary();
    }
    let canary_pid = i32::try_from(canary.id()).expect("pid fits");
    println!("REUSED {}", canary_pid == leader);
    println!("PIDS leader {leader} canary {canary_pid}");
    println!("SIGNAL {:?}", group.signal(Signal::SIGKILL));
    let shutdown = group.shutdown();
    println!(
        "SHUTDOWN {}",
        match &shutdown {
            Ok(report) => format!("Ok {report:?}"),
            Err(e) => format!("Err {e}"),
        }
    );
    println!("CANARY_ALIVE {}", !support::is_dead_or_dying(canary_pid));
    let _ = std::io::stdout().flush();
    // Our own unreaped child, by pid (SIGCHLD is ignored: the kernel reaps it).
    let _ = canary.kill();
    0
}

#[test]
fn a_recycled_leader_number_is_never_signalled() {
    let marker = support::marker("reuse");
    let out = support::run_sandboxed(&marker, "reuse", &[], Duration::from_secs(60));
    support::assert_no_leaks(&marker);
    let Some(out) = support::ran_in_sandbox(out, "pid-reuse") else {
        return;
    };
    assert_eq!(
        out.one("REUSED"),
        "true",
        "the canary did not get the number: {:#?}",
        out.lines
    );
    // The Linux backend signals through the leader's pidfd, which finds the group empty;
    // the portable one refuses: the number is no longer pinned (the canary's start time
    // differs from the leader's).
    let signal = out.one("SIGNAL");
    if cfg!(pgroup_portable) {
        assert!(
            signal.starts_with("Err") && signal.contains("no longer pinned"),
            "{:#?}",
            out.lines
        );
    } else {
        assert_eq!(signal, "Ok(NoSuchGroup)", "{:#?}", out.lines);
    }
    assert!(out.one("SHUTDOWN").starts_with("Err"), "{:#?}", out.lines);
    assert_eq!(out.one("CANARY_ALIVE"), "true", "{:#?}", out.lines);
}

/// Item 2: `sh -c 'server & exit 0'`: the server is an orphan in the group when teardown
/// starts, and it needs time after SIGTERM to finish. Teardown waits for it within the
/// grace period, and ends without SIGKILL once it is gone.
#[rstest]
fn an_orphaned_member_gets_its_grace_period(
    #[values(Containment::Group, Containment::Supervised, Containment::Namespace)]
    tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker(&format!("orphan-grace-{tier:?}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("server.log");
    let server = format!(
        "trap 'echo TERM >> {log}; sleep 0.3; echo CLEAN >> {log}; exit 0' TERM; \
         echo up >> {log}; while :; do sleep 0.05; done",
        log = log.display()
    );
    let script = format!("sh -c \"{server}\" & exit 0");
    let group = Builder::new()
        .grace_period(Duration::from_secs(20))
        .containment(tier)
        .spawn(support::marked(&marker, "sh", &["-c", &script]).stdin(Stdio::null()))
        .expect("spawn");
    group.wait().expect("the leader exits at once");
    support::wait_until("the server is up", || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.contains("up"))
    });
    let report = group.shutdown().expect("shutdown");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("TERM") && text.contains("CLEAN"),
        "the server was killed before it finished its SIGTERM handler: {text:?} {report:?}"
    );
    assert!(!report.sigkill_needed, "{report:?}");
    support::assert_no_leaks(&marker);
}

/// Item 3: no descriptor is free when teardown runs (`RLIMIT_NOFILE` lowered to what is
/// open, and every gap filled): the group is still torn down, members that ignore SIGTERM
/// included.
fn no_fd_role(_logs: support::Logs<'_>) -> i32 {
    let marker = env::var(support::MARKER_VAR).expect("marker");
    let group = spawn_stubborn_group(&marker);
    let saved = nofile_limit(None);
    let open = nix::libc::rlim_t::try_from(support::open_fds()).expect("fits");
    nofile_limit(Some(nix::libc::rlimit {
        rlim_cur: open,
        rlim_max: saved.rlim_max,
    }));
    let mut fillers = Vec::new();
    let exhausted = loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => fillers.push(f),
            Err(e) => break e.raw_os_error() == Some(nix::libc::EMFILE),
        }
    };
    let shutdown = group.shutdown();
    drop(fillers);
    nofile_limit(Some(saved));
    println!("EXHAUSTED {exhausted}");
    println!(
        "SHUTDOWN {}",
        match &shutdown {
            Ok(report) => format!("Ok {report:?}"),
            Err(e) => format!("Err {e}"),
        }
    );
    support::wait_until("every member is dead", || members_alive(&marker) == 0);
    println!("MEMBERS_LEFT {}", members_alive(&marker));
    0
}

/// A group whose leader and two members ignore SIGTERM, running when this returns (known
/// from their output, not from /proc).
fn spawn_stubborn_group(marker: &str) -> pgroup::SpawnedGroup {
    let script = "(trap '' TERM; echo member; exec sleep 1000) & \
                  (trap '' TERM; echo member; exec sleep 1000) & \
                  trap '' TERM; echo leader; while :; do sleep 1; done";
    let mut group = Builder::new()
        .containment(Containment::Group)
        .grace_period(SHORT_GRACE)
        .spawn(
            support::marked(marker, "sh", &["-c", script])
                .stdout(Stdio::piped())
                .stdin(Stdio::null()),
        )
        .expect("spawn");
    let lines = BufReader::new(group.stdout.take().expect("piped"));
    let started = lines.lines().map_while(Result::ok).take(3).count();
    assert_eq!(started, 3, "the leader and both members report");
    group
}

/// Marked `sleep` processes still alive (the stubborn members), from whatever /proc shows.
fn marked_sleeps_alive(marker: &str) -> usize {
    support::marked_alive(marker)
        .into_iter()
        .filter(|pid| {
            procfs::process::Process::new(*pid)
                .and_then(|p| p.stat())
                .is_ok_and(|s| s.comm == "sleep")
        })
        .count()
}

/// Item 3 with a /proc of another PID namespace (the sandbox keeps the host's): the guard's
/// ancestor walk cannot run, and the group is torn down anyway.
fn foreign_proc_role(_logs: support::Logs<'_>) -> i32 {
    let marker = env::var(support::MARKER_VAR).expect("marker");
    if std::process::id() != 1 {
        println!("ERROR not PID 1 of a namespace");
        return 2;
    }
    let own_proc = procfs::process::Process::myself().is_ok_and(|p| p.pid == 1);
    println!("FOREIGN_PROC {}", !own_proc);
    let group = spawn_stubborn_group(&marker);
    let shutdown = group.shutdown();
    println!(
        "SHUTDOWN {}",
        match &shutdown {
            Ok(report) => format!("Ok {report:?}"),
            Err(e) => format!("Err {e}"),
        }
    );
    // The host's /proc shows the members under their outer pids. (Everything in the
    // namespace dies with this process, so the check must happen here.)
    support::wait_until("every member is dead", || marked_sleeps_alive(&marker) == 0);
    println!("MEMBERS_LEFT {}", marked_sleeps_alive(&marker));
    0
}

#[test]
fn teardown_needs_no_proc_of_its_own() {
    let marker = support::marker("foreign-proc");
    let out =
        support::run_sandboxed_without_own_proc(&marker, "foreign-proc", Duration::from_secs(60));
    support::assert_no_leaks(&marker);
    let Some(out) = support::ran_in_sandbox(out, "foreign-/proc") else {
        return;
    };
    assert_eq!(out.one("FOREIGN_PROC"), "true", "{:#?}", out.lines);
    assert!(out.one("SHUTDOWN").starts_with("Ok"), "{:#?}", out.lines);
    assert_eq!(out.one("MEMBERS_LEFT"), "0", "{:#?}", out.lines);
}

/// Sets `RLIMIT_NOFILE` to `new` if given; returns the limit as it was.
fn nofile_limit(new: Option<nix::libc::rlimit>) -> nix::libc::rlimit {
    let mut old = nix::libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own; setrlimit reads one.
    unsafe {
        assert_eq!(
            nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut old),
            0,
            "getrlimit"
        );
        if let Some(new) = new {
            assert_eq!(
                nix::libc::setrlimit(nix::libc::RLIMIT_NOFILE, &new),
                0,
                "setrlimit"
            );
        }
    }
    old
}

#[test]
fn teardown_needs_no_free_descriptor() {
    let marker = support::marker("no-fd");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let mut cmd = support::role_command("no-fd");
    cmd.env(support::MARKER_VAR, &marker).stdout(Stdio::piped());
    let out = support::run_collecting(cmd, Duration::from_secs(60));
    support::assert_no_leaks(&marker);
    assert_eq!(out.one("EXHAUSTED"), "true", "{:#?}", out.lines);
    assert!(out.one("SHUTDOWN").starts_with("Ok"), "{:#?}", out.lines);
    assert_eq!(out.one("MEMBERS_LEFT"), "0");
}

/// The leader of item 7: joins the group named by `PGROUP_JOIN` (`setpgid(0, G)`), says so,
/// and waits to be killed.
fn join_group_role(_logs: support::Logs<'_>) -> i32 {
    let group: i32 = env::var("PGROUP_JOIN")
        .expect("PGROUP_JOIN")
        .parse()
        .expect("a number");
    let joined = nix::unistd::setpgid(
        nix::unistd::Pid::from_raw(0),
        nix::unistd::Pid::from_raw(group),
    );
    println!("JOINED {joined:?}");
    let _ = std::io::stdout().flush();
    thread::sleep(Duration::from_secs(1000));
    1
}

/// Item 7: a leader that moves into another existing group is killed through its pidfd, and
/// the group it joined is not touched (the canary that leads it survives).
#[test]
fn a_leader_that_left_its_group_is_killed_through_its_pidfd() {
    let marker = support::marker("leader-left");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let mut canary = support::raw_target_group(&marker);
    let canary_pid = i32::try_from(canary.id()).expect("pid fits");
    let mut cmd = support::role_command("join-group");
    cmd.env(support::MARKER_VAR, &marker)
        .env("PGROUP_JOIN", canary_pid.to_string())
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    let mut group = Builder::new()
        .containment(Containment::Group)
        .grace_period(SHORT_GRACE)
        .spawn(&mut cmd)
        .expect("spawn");
    let line = BufReader::new(group.stdout.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("JOINED"))
        .unwrap_or_default();
    assert_eq!(line, "JOINED Ok(())");
    let leader = i32::try_from(group.id()).expect("pid fits");
    assert_eq!(support::members_of(canary_pid).len(), 2, "{line}");
    let report = group.shutdown().expect("shutdown");
    assert_eq!(report.status.signal(), Some(15), "{report:?}");
    assert!(state_of(leader).is_none());
    assert!(
        !support::is_dead_or_dying(canary_pid),
        "the group the leader joined was signalled"
    );
    // Our own unreaped child, by pid.
    canary.kill().expect("kill the canary");
    canary.wait().expect("reap the canary");
    support::assert_no_leaks(&marker);
}
