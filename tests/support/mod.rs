//! Support code shared by the integration tests: leak markers, the re-exec machinery that
//! runs a test binary again as a helper process (a "role"), and the PID-namespace sandbox.
//!
//! Safety rule of this test suite: the test process itself never hands a computed or
//! dangerous id (0, 1, negatives, its own or its parents' groups) to `killpg`, guarded or
//! not. Such probes run in a re-executed copy of the test binary, inside a fresh PID
//! namespace, where even `kill(-1, SIGKILL)` reaches only processes the test made.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::BTreeMap;
use std::env;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgroup::{Builder, Containment, SpawnedGroup};
use procfs::process::Process;

/// The variable every process the tests start carries, so leaks can be found in /proc.
pub const MARKER_VAR: &str = "PGROUP_LEAK_MARKER";
/// Names the role a re-executed test binary plays.
pub const ROLE_VAR: &str = "PGROUP_TEST_ROLE";
/// Set to 1 to make reduced mode (no PID namespace available) a failure.
pub const REQUIRE_SANDBOX_VAR: &str = "PGROUP_REQUIRE_SANDBOX";

/// A marker value unique to one test in this run: `<name>.<pid>.<n>`.
pub fn marker(name: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{name}.{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether `tier` is one the portable backend lacks, in a build that uses it (`--cfg
/// pgroup_portable`: the backend of macOS and FreeBSD, forced on Linux). For such a tier
/// this first proves, loudly, what the backend does instead: spawning fails at once with
/// `ErrorKind::Unsupported`, an error naming the tier, and starts nothing. The calling test
/// then stops (its subject, the tier, does not exist here). `false` everywhere else.
pub fn tier_unavailable(tier: Containment) -> bool {
    if !cfg!(pgroup_portable) || tier == Containment::Group {
        return false;
    }
    let marker = marker("unsupported-tier");
    let err = Builder::new()
        .containment(tier)
        .spawn(&mut marked(&marker, "sleep", &["1000"]))
        .map(drop)
        .expect_err("the portable backend has no supervised tier");
    assert_eq!(err.kind(), std::io::ErrorKind::Unsupported, "{err}");
    assert!(
        err.to_string().contains(&format!("Containment::{tier:?}")),
        "the error names the tier: {err}"
    );
    assert_no_leaks(&marker);
    eprintln!("UNSUPPORTED under --cfg pgroup_portable (asserted): {err}");
    true
}

/// `program args...`, carrying the marker.
pub fn marked(marker: &str, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).env(MARKER_VAR, marker);
    cmd
}

/// Writes `text` to a new executable file (mode 0755) at `path` through a child process, so
/// that the test binary never holds the file open for writing. A descriptor it held would be
/// inherited by every process another test's spawn forks meanwhile, until that process's
/// exec, and an exec of the file would fail with `ETXTBSY` (Text file busy) for as long.
pub fn write_executable(marker: &str, path: &std::path::Path, text: &str) {
    use std::io::Write;
    let mut writer = marked(
        marker,
        "sh",
        &["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"],
    );
    let mut writer = writer
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn sh to write the file");
    let mut input = writer.stdin.take().expect("piped");
    input
        .write_all(text.as_bytes())
        .expect("write the file's text");
    drop(input);
    let status = writer.wait().expect("wait for sh");
    assert!(
        status.success(),
        "writing {} failed: {status}",
        path.display()
    );
}

/// A shell fixture from fixtures/, carrying the marker.
pub fn fixture(marker: &str, name: &str, args: &[&str]) -> Command {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new("sh");
    cmd.arg(path).args(args).env(MARKER_VAR, marker);
    cmd
}

/// Pids of the processes that carry `PGROUP_LEAK_MARKER=<marker>` and have not exited
/// (zombies are dead: only their parent's reap is missing).
///
/// A process caught in the middle of its `exec` is not seen: its /proc/<pid>/environ reads
/// empty from the moment the old program is gone until the kernel has copied the new
/// environment, and `Command::spawn` may return inside that window. To see a process just
/// spawned, wait for it (`wait_until`) instead of asserting at once.
pub fn marked_alive(marker: &str) -> Vec<i32> {
    let wanted = format!("{MARKER_VAR}={marker}");
    let Ok(all) = procfs::process::all_processes() else {
        panic!("cannot read /proc to look for leaked processes");
    };
    all.flatten()
        .filter(|p| {
            let Ok(environ) = std::fs::read(format!("/proc/{}/environ", p.pid)) else {
                return false;
            };
            environ.split(|b| *b == 0).any(|kv| kv == wanted.as_bytes())
        })
        .filter(|p| !is_dead_or_dying(p.pid))
        .map(|p| p.pid)
        .collect()
}

/// Fails the test if any process carrying `marker` is still alive. SIGKILL is delivered
/// asynchronously and orphans are reaped by init a moment later, so this waits up to five
/// seconds for the last ones to finish dying: a process that is really leaked stays.
pub fn assert_no_leaks(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive = marked_alive(marker);
        if alive.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            let described: Vec<String> = alive.iter().map(|pid| describe(*pid)).collect();
            panic!("leaked processes carrying {MARKER_VAR}={marker}: {described:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `cond` every 5 ms for up to 10 s; panics with `what` if it never holds.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `pid (comm) state pgid` for messages.
pub fn describe(pid: i32) -> String {
    match Process::new(pid).and_then(|p| p.stat()) {
        Ok(s) => format!("{pid} ({}) state {} pgrp {}", s.comm, s.state, s.pgrp),
        Err(_) => format!("{pid} (gone)"),
    }
}

/// Whether `pid` is gone, a zombie, exiting, or has a SIGKILL pending: everything that
/// means a SIGKILL reached it. Deterministic right after `kill(2)` returns, because the
/// kernel queues SIGKILL (or marks the process exiting) before the call returns.
pub fn is_dead_or_dying(pid: i32) -> bool {
    const PF_EXITING: u32 = 0x4;
    const SIGKILL_BIT: u64 = 1 << 8;
    let Ok(process) = Process::new(pid) else {
        return true;
    };
    let Ok(stat) = process.stat() else {
        return true;
    };
    if matches!(stat.state, 'Z' | 'X' | 'x') || stat.flags & PF_EXITING != 0 {
        return true;
    }
    match process.status() {
        Ok(status) => (status.shdpnd | status.sigpnd) & SIGKILL_BIT != 0,
        Err(_) => true,
    }
}

/// A command that runs this test binary again, as `role`, with the output of the role on
/// stdout. The role runs in the ignored test `role_entry` each test binary defines.
pub fn role_command(role: &str) -> Command {
    let exe = env::current_exe().expect("the test binary knows its own path");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "role_entry",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env(ROLE_VAR, role);
    cmd
}

/// What a role printed: lines `KEY value`, collected by key.
#[derive(Debug, Default)]
pub struct RoleOutput {
    pub lines: Vec<String>,
    pub values: BTreeMap<String, Vec<String>>,
    pub status: Option<std::process::ExitStatus>,
}

impl RoleOutput {
    fn parse(text: &str) -> RoleOutput {
        let mut out = RoleOutput::default();
        for line in text.lines() {
            out.lines.push(line.to_owned());
            if let Some((key, value)) = line.split_once(' ') {
                if key.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !key.is_empty() {
                    out.values
                        .entry(key.to_owned())
                        .or_default()
                        .push(value.to_owned());
                }
            }
        }
        out
    }

    /// The single value printed for `key`; panics with the whole output otherwise.
    pub fn one(&self, key: &str) -> &str {
        match self.values.get(key).map(Vec::as_slice) {
            Some([value]) => value,
            _ => panic!(
                "expected exactly one {key} line in the role's output:\n{}",
                self.lines.join("\n")
            ),
        }
    }

    pub fn all(&self, key: &str) -> &[String] {
        self.values.get(key).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// How the sandbox was entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// A new PID namespace (plus a user namespace when not root) with its own /proc.
    Full,
    /// No namespace could be made here; only harmless probes may run.
    Reduced,
}

/// The `unshare(1)` arguments that enter a PID namespace here (without `--mount-proc`), or
/// `None` (reduced mode). As root a PID namespace suffices; otherwise a user namespace comes
/// first.
fn unshare_args() -> Option<&'static [&'static str]> {
    static ARGS: OnceLock<Option<&'static [&'static str]>> = OnceLock::new();
    *ARGS.get_or_init(|| {
        let candidates: [&'static [&'static str]; 2] = [
            &["--pid", "--fork", "--kill-child"],
            &[
                "--user",
                "--map-root-user",
                "--pid",
                "--fork",
                "--kill-child",
            ],
        ];
        candidates.into_iter().find(|args| {
            Command::new("unshare")
                .args(*args)
                .args(["--mount-proc", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    })
}

/// The sandbox this machine supports. Reduced mode is announced on stderr every time, and is
/// a test failure when `PGROUP_REQUIRE_SANDBOX=1` (CI sets it).
pub fn sandbox_mode() -> SandboxMode {
    if unshare_args().is_some() {
        return SandboxMode::Full;
    }
    let msg = "REDUCED MODE: no PID namespace can be created on this machine (unshare --pid \
               failed, also with a user namespace); tests that send real signals to computed \
               pgids run only their harmless probes";
    if env::var(REQUIRE_SANDBOX_VAR).as_deref() == Ok("1") {
        panic!("{msg}, and {REQUIRE_SANDBOX_VAR}=1 makes that a failure");
    }
    eprintln!("\n*** {msg} ***\n");
    SandboxMode::Reduced
}

/// `out`, the output of a sandboxed role; where there was no sandbox (`None`), says on
/// stderr that the check named `what` did not run, which `PGROUP_REQUIRE_SANDBOX=1` (CI)
/// makes a failure.
pub fn ran_in_sandbox(out: Option<RoleOutput>, what: &str) -> Option<RoleOutput> {
    if out.is_none() {
        eprintln!("REDUCED: no sandbox, the {what} check did not run");
        assert_ne!(env::var(REQUIRE_SANDBOX_VAR).as_deref(), Ok("1"));
    }
    out
}

/// Runs this test binary again as `role`, as PID 1 of a fresh PID namespace with its own
/// /proc, and returns what it printed. The sandbox itself is a `SpawnedGroup` (unshare and
/// the namespace's init), so it is torn down even if the test fails, and when its init dies
/// the kernel kills everything left in the namespace. `None` in reduced mode.
pub fn run_sandboxed(
    marker: &str,
    role: &str,
    env_vars: &[(&str, String)],
    limit: Duration,
) -> Option<RoleOutput> {
    sandboxed(marker, role, env_vars, limit, true)
}

/// As [`run_sandboxed`], but the namespace keeps the host's /proc, which then describes
/// processes of another PID namespace.
pub fn run_sandboxed_without_own_proc(
    marker: &str,
    role: &str,
    limit: Duration,
) -> Option<RoleOutput> {
    sandboxed(marker, role, &[], limit, false)
}

fn sandboxed(
    marker: &str,
    role: &str,
    env_vars: &[(&str, String)],
    limit: Duration,
    own_proc: bool,
) -> Option<RoleOutput> {
    let cmd = unshare_command(marker, role, env_vars, own_proc)?;
    Some(run_collecting(cmd, limit))
}

/// `unshare ... <this test binary> <role>`: the command that enters the sandbox, with the
/// marker, the role, `env_vars` and stdout piped. `None` in reduced mode.
fn unshare_command(
    marker: &str,
    role: &str,
    env_vars: &[(&str, String)],
    own_proc: bool,
) -> Option<Command> {
    let args = unshare_args()?;
    let role_cmd = role_command(role);
    let mut cmd = Command::new("unshare");
    cmd.args(args);
    if own_proc {
        cmd.arg("--mount-proc");
    }
    cmd.arg(role_cmd.get_program())
        .args(role_cmd.get_args())
        .env(OUTER_PID_NS_VAR, own_pid_namespace())
        .env(ROLE_VAR, role)
        .env(MARKER_VAR, marker)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    for (key, value) in env_vars {
        cmd.env(key, value);
    }
    Some(cmd)
}

/// Runs `cmd` (which pipes stdout) in a `SpawnedGroup`, collects its stdout, and tears it
/// down. Panics with what it printed if it outlives `limit`.
pub fn run_collecting(mut cmd: Command, limit: Duration) -> RoleOutput {
    // The plain tier: the role is this process's own child, as the tests that read its
    // parent or its place in the process tree expect.
    let mut group = pgroup::Builder::new()
        .containment(pgroup::Containment::Group)
        .grace_period(Duration::from_millis(200))
        .spawn(&mut cmd)
        .expect("spawn the role");
    let mut stdout = group.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let status = group.wait_timeout(limit).expect("wait for the role");
    let teardown = group.shutdown();
    let text = reader.join().expect("reader thread");
    let mut out = RoleOutput::parse(&text);
    out.status = status;
    assert!(
        status.is_some(),
        "the role did not finish within {limit:?}; it printed:\n{text}"
    );
    teardown.expect("teardown of the role");
    out
}

/// The entry point of every role; `role_entry` in each test binary calls it. `logs` is
/// tracing-test's `logs_contain` of that test, so roles can check the events they caused.
/// tracing-test's `logs_contain` of the running role.
pub type Logs<'a> = &'a dyn Fn(&str) -> bool;
/// A role: what a re-executed test binary does, returning its exit code.
pub type Role = fn(Logs<'_>) -> i32;
/// What the caller at the bottom of the chain runs.
pub type Scenario = fn(&Harness, Logs<'_>) -> i32;

pub fn role_main(logs: Logs<'_>, roles: &[(&str, Role)]) {
    let Ok(role) = env::var(ROLE_VAR) else {
        println!("role_entry: not re-executed by a test; nothing to do");
        return;
    };
    let code = match roles.iter().find(|(name, _)| *name == role) {
        Some((_, run)) => run(logs),
        None => {
            println!("ERROR unknown role {role}");
            2
        }
    };
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// The process-tree "harness" roles, from PID 1 of the sandbox down to the caller:
///
/// ```text
/// PID 1 (this binary)  ->  session leader S (setsid)  ->  ancestor A (own group)
///                      ->  parent P (own group)       ->  caller C (own group)
/// ```
///
/// Each link starts a canary (`sleep`) in its own group and passes its pid and group down
/// in `PGROUP_CANARY_<LINK>` and `PGROUP_GROUP_<LINK>`; the caller starts one in its own group
/// too, then runs the scenario named by `PGROUP_SCENARIO`, which prints its results.
pub const CHAIN: [&str; 4] = ["session", "ancestor", "parent", "caller"];

/// A role for the start of the chain (PID 1 of the sandbox) and each link in it.
pub fn chain_link(scenario: Scenario, logs: &dyn Fn(&str) -> bool) -> i32 {
    let level = env::var("PGROUP_CHAIN_LEVEL").unwrap_or_default();
    let next_index = match CHAIN.iter().position(|l| *l == level) {
        Some(i) => i + 1,
        None => 0, // PID 1
    };
    let marker = env::var(MARKER_VAR).unwrap_or_default();
    let mut canary_env: Vec<(String, String)> = Vec::new();
    if !level.is_empty() {
        let canary = marked(&marker, "sleep", &["1000"])
            .spawn()
            .expect("spawn canary");
        canary_env.push((
            format!("PGROUP_CANARY_{}", level.to_uppercase()),
            canary.id().to_string(),
        ));
        canary_env.push((
            format!("PGROUP_GROUP_{}", level.to_uppercase()),
            nix::unistd::getpgrp().to_string(),
        ));
        std::mem::forget(canary); // reaped by PID 1 of the namespace, or killed with it
    }
    if level == "caller" {
        let harness = Harness::from_env(&canary_env);
        return scenario(&harness, logs);
    }
    let next = CHAIN[next_index];
    let mut cmd = role_command(&env::var(ROLE_VAR).unwrap_or_default());
    cmd.env("PGROUP_CHAIN_LEVEL", next).envs(canary_env);
    // The plain tier: each link is the previous one's child (the chain is the tree the
    // guard is tested in), not a supervisor's.
    let group_of_next = if next == "session" {
        pgroup::Builder::new()
            .containment(pgroup::Containment::Group)
            .new_session(true)
            .spawn(&mut cmd)
    } else {
        pgroup::Builder::new()
            .containment(pgroup::Containment::Group)
            .spawn(&mut cmd)
    };
    let next_link = group_of_next.expect("spawn the next link");
    // The caller reports through stdout, which every link inherits.
    let status = next_link.wait().expect("wait for the next link");
    if level.is_empty() {
        wait_for_other_links();
    }
    status.code().unwrap_or(3)
}

/// PID 1 of the sandbox: a link killed by a negative control ends the chain early, while the
/// orphaned caller may still be reporting. Wait until this is the last copy of the test
/// binary alive in the namespace (bounded), since everything dies with PID 1.
fn wait_for_other_links() {
    let me = std::process::id();
    let exe = env::current_exe().expect("own path");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let others = procfs::process::all_processes()
            .map(|all| {
                all.flatten()
                    .filter(|p| u32::try_from(p.pid).ok() != Some(me))
                    .filter(|p| p.exe().is_ok_and(|e| e == exe))
                    .any(|p| !is_dead_or_dying(p.pid))
            })
            .unwrap_or(false);
        if !others {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What the caller knows about the processes around it.
#[derive(Debug)]
pub struct Harness {
    /// Canary pid by link name ("session", "ancestor", "parent", "caller").
    pub canaries: BTreeMap<String, i32>,
    /// Process group by link name.
    pub groups: BTreeMap<String, i32>,
}

impl Harness {
    fn from_env(own: &[(String, String)]) -> Harness {
        let mut canaries = BTreeMap::new();
        let mut groups = BTreeMap::new();
        let vars = env::vars().chain(own.iter().cloned());
        for (key, value) in vars {
            if let Some(link) = key.strip_prefix("PGROUP_CANARY_") {
                canaries.insert(link.to_lowercase(), value.parse().expect("canary pid"));
            } else if let Some(link) = key.strip_prefix("PGROUP_GROUP_") {
                groups.insert(link.to_lowercase(), value.parse().expect("group id"));
            }
        }
        Harness { canaries, groups }
    }

    /// Canaries that a SIGKILL has reached.
    pub fn dead_canaries(&self) -> Vec<String> {
        self.canaries
            .iter()
            .filter(|(_, pid)| is_dead_or_dying(**pid))
            .map(|(link, pid)| format!("{link}:{pid}"))
            .collect()
    }
}

/// Spawns `sleep 1000` as the leader of a new group with std alone (so the test of the guard
/// does not depend on `SpawnedGroup`), returning the child.
pub fn raw_target_group(marker: &str) -> std::process::Child {
    marked(marker, "sleep", &["1000"])
        .process_group(0)
        .spawn()
        .expect("spawn a target group")
}

/// Keeps `SpawnedGroup` in scope for the binaries that only use the support module.
pub fn _uses(_: Option<SpawnedGroup>) {}

// ---- containment support -------------------------------------------------------------

/// Marked processes that lead a session of their own: the ones that left their group with
/// `setsid` (the escapees of the containment tests).
pub fn marked_session_leaders(marker: &str) -> Vec<i32> {
    marked_alive(marker)
        .into_iter()
        .filter(|pid| {
            Process::new(*pid)
                .and_then(|p| p.stat())
                .is_ok_and(|s| s.session == *pid)
        })
        .collect()
}

/// What /proc says of each live marked process: `(pid, comm, leads its own session)`.
/// Waits for an exact state use it: which program each process runs now (a forked shell
/// reads `sh` until it has exec'd) and which of them called `setsid`.
pub fn marked_states(marker: &str) -> Vec<(i32, String, bool)> {
    marked_alive(marker)
        .into_iter()
        .filter_map(|pid| {
            let stat = Process::new(pid).and_then(|p| p.stat()).ok()?;
            Some((pid, stat.comm, stat.session == pid))
        })
        .collect()
}

/// Ends every live process carrying `marker`, by pid, with SIGKILL: the clean-up after a
/// negative control that shows a leak. Only processes this test started carry its marker.
pub fn kill_marked(marker: &str) {
    for pid in marked_alive(marker).into_iter().filter(|pid| *pid > 1) {
        // A pid found alive (not a zombie) a moment ago, carrying this test's own marker.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Added for the property suites (tests/prop_guard.rs, tests/prop_group.rs).
// ---------------------------------------------------------------------------------------------

/// As [`run_sandboxed`] (`own_proc`) or [`run_sandboxed_without_own_proc`], but the test
/// process itself never signals a process group, not even through the crate: `unshare` is a
/// plain std child, awaited with `try_wait`, and killed by its pid (our unreaped child) if it
/// outlives `limit`; `--kill-child` then takes the whole namespace down with it. This is what
/// makes it safe to run mutated copies of the crate (cargo-mutants) against these tests: a
/// mutant can only ever signal from inside the sandbox. `None` in reduced mode.
pub fn run_sandboxed_std(
    marker: &str,
    role: &str,
    env_vars: &[(&str, String)],
    limit: Duration,
    own_proc: bool,
) -> Option<RoleOutput> {
    let mut cmd = unshare_command(marker, role, env_vars, own_proc)?;
    cmd.env("PGROUP_OUTER_MNT_NS", own_mount_namespace())
        // A group of its own: the namespace's init inherits it, and `killpg(0)` there (a
        // mutant can make one) names init's own group, even though that group's id lies
        // outside the namespace. It must not be the test process's group.
        .process_group(0);
    let mut child = cmd.spawn().expect("spawn unshare");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait().expect("try_wait on unshare") {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => break None,
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    if status.is_none() {
        // By pid, on our own unreaped child: never a group, never a computed id.
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = reader.join().expect("reader thread");
    let mut out = RoleOutput::parse(&text);
    out.status = status;
    assert!(
        status.is_some(),
        "the sandboxed role {role} did not finish within {limit:?}; it printed:\n{}",
        tail(&text, 60)
    );
    Some(out)
}

/// The last `n` lines of `text`, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The mount namespace of this process (`mnt:[inode]`), so a role can check that it runs in
/// a namespace of its own before it mounts anything.
pub fn own_mount_namespace() -> String {
    std::fs::read_link("/proc/self/ns/mnt")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Set on every sandbox's command: the PID namespace of the test process outside it.
const OUTER_PID_NS_VAR: &str = "PGROUP_OUTER_PID_NS";

/// This process's PID namespace (`/proc/self/ns/pid`'s link, such as `pid:[4026531836]`),
/// or an empty string if it cannot be read.
pub fn own_pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether this process runs in a PID namespace other than the test process's that entered
/// the sandbox: the only place an unguarded `killpg` (a negative control) may run. `false`
/// when either namespace cannot be read.
pub fn inside_pid_sandbox() -> bool {
    let outer = env::var(OUTER_PID_NS_VAR).unwrap_or_default();
    let own = own_pid_namespace();
    !outer.is_empty() && !own.is_empty() && own != outer
}

/// Fails closed before an unguarded `killpg` of a negative control: panics (the role exits
/// without signalling) unless [`inside_pid_sandbox`] holds, so that a role started by hand
/// outside the sandbox, or a sandbox that silently failed to make its namespace, can never
/// reach the machine's processes.
pub fn assert_inside_pid_sandbox() {
    assert!(
        inside_pid_sandbox(),
        "refusing an unguarded killpg outside the PID-namespace sandbox (this process's PID \
         namespace {:?}, the test process's {:?})",
        own_pid_namespace(),
        env::var(OUTER_PID_NS_VAR).unwrap_or_default()
    );
}

/// Whether this process runs as PID 1 of a PID namespace and in a mount namespace other than
/// the test process's: the only place a role may mount over /proc.
pub fn in_private_namespaces() -> bool {
    let outer = env::var("PGROUP_OUTER_MNT_NS").unwrap_or_default();
    std::process::id() == 1 && !outer.is_empty() && own_mount_namespace() != outer
}

/// Every log line tracing-test captured for the running role (`logs_assert` of the role's
/// `role_entry`), registered by that function with [`set_log_lines`].
static LOG_LINES: OnceLock<fn() -> Vec<String>> = OnceLock::new();

/// Registers the function that copies the captured log lines; `role_entry` calls it.
pub fn set_log_lines(lines: fn() -> Vec<String>) {
    let _ = LOG_LINES.set(lines);
}

/// The log lines captured so far in this role (empty if none was registered).
pub fn log_lines() -> Vec<String> {
    LOG_LINES.get().map(|f| f()).unwrap_or_default()
}

/// Pids of the chain's links as seen from the caller: ("parent", P), ("ancestor", A),
/// ("session", S), read from /proc. (The caller is the process itself.)
pub fn chain_link_pids() -> Vec<(String, i32)> {
    let mut links = Vec::new();
    let mut pid = i32::try_from(std::os::unix::process::parent_id()).expect("pid fits");
    for name in ["parent", "ancestor", "session"] {
        links.push((name.to_owned(), pid));
        pid = match Process::new(pid).and_then(|p| p.stat()) {
            Ok(stat) => stat.ppid,
            Err(_) => break,
        };
    }
    links
}

/// The pending signals of `pid` (thread and shared sets), and its state; `None` if gone.
pub fn pending_signals(pid: i32) -> Option<(u64, char)> {
    let process = Process::new(pid).ok()?;
    let stat = process.stat().ok()?;
    let status = process.status().ok()?;
    Some((status.sigpnd | status.shdpnd, stat.state))
}

/// `sleep 1000` with every signal blocked (the mask survives exec): any signal sent to it
/// stays pending and shows in /proc/<pid>/status, so a stray SIGTERM or SIGCONT, not only a
/// SIGKILL, is seen. SIGKILL and SIGSTOP cannot be blocked: they show as death or state T.
/// `new_group`: the leader of a group of its own; otherwise it stays in the caller's group.
pub fn blocked_sleeper(marker: &str, new_group: bool) -> std::process::Child {
    let mut cmd = marked(marker, "sleep", &["1000"]);
    if new_group {
        cmd.process_group(0);
    }
    // SAFETY: the closure runs between fork and exec; it calls only sigprocmask(2), which is
    // async-signal-safe, on a set built on the stack; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(|| {
            use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
            sigprocmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
        });
    }
    cmd.spawn().expect("spawn a blocked sleeper")
}

/// Processes whose process group is `pgid`, from /proc, with their state.
pub fn members_of(pgid: i32) -> Vec<(i32, char)> {
    procfs::process::all_processes()
        .map(|all| {
            all.flatten()
                .filter_map(|p| p.stat().ok())
                .filter(|s| s.pgrp == pgid)
                .map(|s| (s.pid, s.state))
                .collect()
        })
        .unwrap_or_default()
}

/// Ends this test's marked processes when dropped, also when the test panics first: a
/// failing negative control must not leave its leak behind.
pub struct KillMarkedOnDrop(pub String);

impl Drop for KillMarkedOnDrop {
    fn drop(&mut self) {
        kill_marked(&self.0);
    }
}

/// The descriptors this process holds, other than files inside a process's /proc directory:
/// those are open only for a moment (this count's own listing of /proc/self/fd; the
/// portable backend's exit watcher, a thread, reading a process's stat file while the count
/// runs), never kept by the crate. (A held /proc/<pid> directory itself is counted.)
pub fn held_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path()).is_ok_and(|target| {
                        !(target.starts_with("/proc/") && target.components().count() > 3)
                    })
                })
                .count()
        })
        .unwrap_or(0)
}

/// Open descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}
