//! The `Supervised` tier's supervisor is a program of its own (executed from memory after a
//! `vfork`-style spawner ran std's spawn): it shares no memory, descriptor or signal handler
//! with the test binary, and the leader gets the `Command` exactly as std would give it in the
//! `Group` tier (signal mask, `pre_exec` hooks in the leader, `env_clear`, `arg0`, cwd).

// The suite's support reads /proc (leak markers in each process's environ, process states,
// the PID-namespace sandbox): it runs on Linux, with the Linux backend and, in CI, again
// with the portable one (`--cfg pgroup_portable`). Elsewhere it compiles to nothing.
#![cfg(target_os = "linux")]

mod support;

use std::env;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::signal::{
    kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal as NixSignal,
};
use nix::unistd::Pid;
use pgroup::{Builder, Containment, SpawnedGroup};
use procfs::process::Process;
use rstest::rstest;
use tracing_test::traced_test;

#[test]
#[ignore = "entry point of the helper processes the other tests re-execute this binary as"]
#[traced_test]
fn role_entry() {
    support::role_main(
        &|s| logs_contain(s),
        &[("apart", apart_role), ("handlers", handlers_role)],
    );
}

fn spawn_in(tier: Containment, cmd: &mut Command) -> SpawnedGroup {
    Builder::new()
        .containment(tier)
        .grace_period(Duration::ZERO)
        .spawn(cmd)
        .expect("spawn")
}

fn parent_of(pid: u32) -> i32 {
    let pid = i32::try_from(pid).expect("pid fits");
    Process::new(pid).and_then(|p| p.stat()).expect("stat").ppid
}

/// A `/proc/<pid>/status` field, in its unit (kB for memory).
fn status_field(pid: i32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| u64::from_str_radix(n, if name.starts_with("Sig") { 16 } else { 10 }).ok())
        .unwrap_or_else(|| panic!("no {name} in the status of {pid}"))
}

/// `sleep 1000` in the `Supervised` tier, and its supervisor's pid (the leader's parent,
/// which is not this process).
fn spawn_supervised_sleep(marker: &str) -> (SpawnedGroup, i32) {
    let group = spawn_in(
        Containment::Supervised,
        &mut support::marked(marker, "sleep", &["1000"]),
    );
    let supervisor = parent_of(group.id());
    assert_ne!(
        u32::try_from(supervisor).ok(),
        Some(std::process::id()),
        "the leader's parent is a supervisor"
    );
    (group, supervisor)
}

/// Spawns a supervised `sleep` and describes its supervisor: whether any of its mappings
/// is the test binary's executable (`MAPS_TEST_BINARY`), how many descriptors it holds
/// (`FDS`), whether one of them is this process's stdout (`HOLDS_STDOUT`), its command name
/// (`COMM`) and `argv[0]` (`ARGV_ZERO`).
fn apart_role(_logs: support::Logs<'_>) -> i32 {
    let marker = env::var(support::MARKER_VAR).expect("marker");
    let (group, supervisor) = spawn_supervised_sleep(&marker);
    // The spawn returns once the supervisor has been exec'd; it names itself when it has set
    // itself up (its descriptors closed), which is the state described here.
    let comm_path = format!("/proc/{supervisor}/comm");
    support::wait_until("the supervisor has named itself", || {
        std::fs::read_to_string(&comm_path).is_ok_and(|comm| comm.trim() == "pgroup-supervis")
    });
    let exe = std::fs::read_link("/proc/self/exe").expect("exe");
    let maps = std::fs::read_to_string(format!("/proc/{supervisor}/maps")).expect("maps");
    let mapped = maps.lines().any(|l| l.ends_with(&*exe.to_string_lossy()));
    let stdout = std::fs::read_link("/proc/self/fd/1").expect("stdout");
    let fds: Vec<std::path::PathBuf> = std::fs::read_dir(format!("/proc/{supervisor}/fd"))
        .expect("fds")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect();
    let comm = std::fs::read_to_string(format!("/proc/{supervisor}/comm")).expect("comm");
    let cmdline = std::fs::read(format!("/proc/{supervisor}/cmdline")).expect("cmdline");
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    println!("MAPS_TEST_BINARY {mapped}");
    println!("FDS {}", fds.len());
    println!("HOLDS_STDOUT {}", fds.contains(&stdout));
    println!("COMM {}", comm.trim());
    println!("ARGV_ZERO {}", String::from_utf8_lossy(argv0));
    group.shutdown().expect("shutdown");
    0
}

/// The supervisor shares nothing with the test binary: no mapping of its executable (so no
/// debugger's breakpoint, lock or OOM score of the test binary reaches it), none of its
/// descriptors but its own few (stdout, where `cargo test | tee` waits for end of file, is
/// not among them), and a name of its own that `ps` shows. The negative control: the forked
/// supervisor (`PGROUP_SUPERVISOR_PROGRAM=off`) is a copy of the test binary, with its
/// mappings.
#[rstest]
fn the_supervisor_shares_nothing_with_the_test_binary(#[values(true, false)] program: bool) {
    if support::tier_unavailable(Containment::Supervised) {
        return;
    }
    let marker = support::marker("apart");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let mut cmd = support::role_command("apart");
    cmd.env(support::MARKER_VAR, &marker)
        .stdout(std::process::Stdio::piped());
    if !program {
        cmd.env("PGROUP_SUPERVISOR_PROGRAM", "OFF");
    }
    let out = support::run_collecting(cmd, Duration::from_secs(60));
    assert_eq!(
        out.one("MAPS_TEST_BINARY"),
        if program { "false" } else { "true" },
        "{:?}",
        out.lines
    );
    assert_eq!(out.one("HOLDS_STDOUT"), "false", "{:?}", out.lines);
    let fds: usize = out.one("FDS").parse().expect("count");
    assert!(
        fds <= 4,
        "the supervisor holds {fds} descriptors: {:?}",
        out.lines
    );
    assert_eq!(out.one("COMM"), "pgroup-supervis", "{:?}", out.lines);
    if program {
        assert_eq!(out.one("ARGV_ZERO"), "pgroup-supervisor", "{:?}", out.lines);
    }
    support::assert_no_leaks(&marker);
}

/// How many times the `handlers` role's handler ran, in this process's memory, which the
/// shared supervisor shares: a run of the handler in the supervisor would count here too.
static HANDLED: AtomicU32 = AtomicU32::new(0);

extern "C" fn count_signal(_: nix::libc::c_int) {
    HANDLED.fetch_add(1, Ordering::SeqCst);
}

/// The signals the `handlers` role catches and sends to its supervisor.
const CAUGHT: [NixSignal; 4] = [
    NixSignal::SIGTERM,
    NixSignal::SIGINT,
    NixSignal::SIGHUP,
    NixSignal::SIGUSR1,
];

/// Installs a counting handler for [`CAUGHT`], spawns a supervised `sleep`, sends each of
/// them to the supervisor (its own child, by pid), waits until all four are pending there,
/// then reports the count (`HANDLED_BY_SUPERVISOR`), raises SIGUSR1 in itself (the handler
/// works: `HANDLED_HERE`), and tears down (`SHUTDOWN`).
fn handlers_role(_logs: support::Logs<'_>) -> i32 {
    let marker = env::var(support::MARKER_VAR).expect("marker");
    let action = SigAction::new(
        SigHandler::Handler(count_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in CAUGHT {
        // SAFETY: the handler only increments an atomic; this process is a role of its own.
        unsafe { sigaction(sig, &action) }.expect("install the handler");
    }
    let (group, supervisor) = spawn_supervised_sleep(&marker);
    let wanted: u64 = CAUGHT.iter().map(|s| 1_u64 << (*s as u32 - 1)).sum();
    for sig in CAUGHT {
        // Our own unreaped child, by pid.
        kill(Pid::from_raw(supervisor), sig).expect("signal the supervisor");
    }
    support::wait_until("the four signals are pending in the supervisor", || {
        support::pending_signals(supervisor).is_some_and(|(pending, _)| pending & wanted == wanted)
    });
    println!("HANDLED_BY_SUPERVISOR {}", HANDLED.load(Ordering::SeqCst));
    nix::sys::signal::raise(NixSignal::SIGUSR1).expect("raise");
    println!("HANDLED_HERE {}", HANDLED.load(Ordering::SeqCst));
    match group.shutdown() {
        Ok(report) => println!("SHUTDOWN {:?}", report.status.signal()),
        Err(e) => println!("SHUTDOWN error {e}"),
    }
    0
}

/// No handler of the test binary ever runs in the supervisor, which shares its memory (it
/// would run the test binary's code on the supervisor's stack), and SIGTERM, SIGINT, SIGHUP
/// and SIGUSR1 sent to it neither run one nor end it: it blocks them for good. A run would
/// show: the handler counts in memory the two processes share. The negative control: the
/// same handler, raised in the test binary itself, does run.
#[test]
fn no_handler_of_the_test_binary_runs_in_the_supervisor() {
    if support::tier_unavailable(Containment::Supervised) {
        return;
    }
    let marker = support::marker("handlers");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let mut cmd = support::role_command("handlers");
    cmd.env(support::MARKER_VAR, &marker)
        .stdout(std::process::Stdio::piped());
    let out = support::run_collecting(cmd, Duration::from_secs(60));
    assert_eq!(out.one("HANDLED_BY_SUPERVISOR"), "0", "{:?}", out.lines);
    assert_eq!(out.one("HANDLED_HERE"), "1", "{:?}", out.lines);
    assert_eq!(out.one("SHUTDOWN"), "Some(9)", "{:?}", out.lines);
    support::assert_no_leaks(&marker);
}

/// The leader starts with the spawning thread's signal mask and the process's ignored
/// signals, in `Supervised` as in `Group`: the spawner blocks every signal while it runs,
/// and a leader that inherited that mask (all blocked) would hang in a `sh` that waits for
/// SIGCHLD.
#[test]
fn the_leader_gets_the_callers_signal_mask() {
    if support::tier_unavailable(Containment::Supervised) {
        return;
    }
    let marker = support::marker("mask");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    // This test's own thread only: SIGUSR2 blocked while it spawns.
    let mut set = SigSet::empty();
    set.add(NixSignal::SIGUSR2);
    let mut old = SigSet::empty();
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))
        .expect("block SIGUSR2 in this thread");
    let groups: Vec<SpawnedGroup> = [Containment::Group, Containment::Supervised]
        .into_iter()
        .map(|tier| spawn_in(tier, &mut support::marked(&marker, "sleep", &["1000"])))
        .collect();
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None)
        .expect("restore the mask");
    let usr2 = 1_u64 << (NixSignal::SIGUSR2 as u32 - 1);
    let masks: Vec<(u64, u64)> = groups
        .iter()
        .map(|g| {
            let pid = i32::try_from(g.id()).expect("pid");
            (status_field(pid, "SigBlk:"), status_field(pid, "SigIgn:"))
        })
        .collect();
    assert!(
        old.contains(NixSignal::SIGUSR2) || masks[0].0 & usr2 != 0,
        "{masks:x?}"
    );
    assert_eq!(
        masks[0], masks[1],
        "Group vs Supervised (blocked, ignored): {masks:x?}"
    );
    for group in groups {
        group.shutdown().expect("shutdown");
    }
    support::assert_no_leaks(&marker);
}

/// A `pre_exec` hook of the `Command` runs in the leader, before its exec, in `Supervised`
/// as in `Group` (not in the supervisor, another process).
#[rstest]
fn a_pre_exec_hook_runs_in_the_leader(
    #[values(Containment::Group, Containment::Supervised)] tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("hook");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let (read, write): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let raw = write.as_raw_fd();
    let mut cmd = support::marked(&marker, "sleep", &["1000"]);
    // SAFETY: the hook calls only getpid and write, both async-signal-safe, on a stack
    // buffer and a descriptor that stays open in the parent until spawn has returned.
    unsafe {
        cmd.pre_exec(move || {
            let pid = nix::libc::getpid().to_le_bytes();
            nix::libc::write(raw, pid.as_ptr().cast(), pid.len());
            Ok(())
        });
    }
    let group = spawn_in(tier, &mut cmd);
    drop(write);
    let mut bytes = Vec::new();
    std::fs::File::from(read)
        .read_to_end(&mut bytes)
        .expect("read");
    let hook_pid =
        u32::try_from(i32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"))).expect("pid");
    assert_eq!(hook_pid, group.id(), "{tier:?}: the hook ran in the leader");
    group.shutdown().expect("shutdown");
    support::assert_no_leaks(&marker);
}

/// `env_clear`, `arg0` and the working directory reach the leader as std sets them, in
/// every tier.
#[rstest]
fn env_clear_arg0_and_cwd_reach_the_leader(
    #[values(Containment::Group, Containment::Supervised, Containment::Namespace)]
    tier: Containment,
) {
    if support::tier_unavailable(tier) {
        return;
    }
    let marker = support::marker("cmdcfg");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("/bin/sleep");
    cmd.arg("1000")
        .env_clear()
        .env(support::MARKER_VAR, &marker)
        .env("ONLY", "this")
        .arg0("renamed")
        .current_dir(dir.path());
    let group = match Builder::new()
        .containment(tier)
        .grace_period(Duration::ZERO)
        .spawn(&mut cmd)
    {
        Ok(group) => group,
        Err(e) if tier == Containment::Namespace => {
            println!("Namespace cannot run here: {e}");
            return;
        }
        Err(e) => panic!("spawn: {e}"),
    };
    let pid = group.id();
    // `spawn` returns once the exec is past its point of no return; the new image's
    // arguments and environment are in place a moment later.
    support::wait_until("the leader's exec is complete", || {
        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|e| !e.is_empty())
    });
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let mut vars: Vec<&[u8]> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .collect();
    vars.sort_unstable();
    let wanted = format!("{}={marker}", support::MARKER_VAR);
    assert_eq!(
        vars,
        vec![b"ONLY=this".as_slice(), wanted.as_bytes()],
        "{tier:?}"
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(cmdline.starts_with(b"renamed\0"), "{tier:?}");
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd");
    assert_eq!(
        cwd.canonicalize().expect("cwd"),
        dir.path().canonicalize().expect("dir"),
        "{tier:?}"
    );
    group.shutdown().expect("shutdown");
    support::assert_no_leaks(&marker);
}
