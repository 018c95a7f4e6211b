//! What the benches (`benches/pgroup.rs`) and the report (`benches/examples/report.rs`)
//! share: the conditions of issue 6 and the measured cycles, so that both measure the same
//! thing.
//!
//! The conditions:
//!
//! - the binary runs under at least [`MIN_DEPTH`] nested shells ([`reexec_under_nested_shells`]),
//!   so that anything that walks the ancestors on every call pays for a realistic chain;
//! - [`IDLE_PROCESSES`] unrelated idle processes are alive ([`IdleProcesses`]), so that
//!   anything that scans `/proc` on every call pays for a realistic machine.
//!
//! Every process started here carries `PGROUP_LEAK_MARKER`, and the only raw signals sent
//! go to processes this code spawned itself and has not reaped.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use pgroup::{Builder, Containment, SpawnedGroup, Teardown};
use process_wrap::std::{CommandWrap, ProcessGroup};

/// The variable every process started by the benches carries, as in the test suite.
pub const MARKER: &str = "PGROUP_LEAK_MARKER";
/// Set in the re-executed binary: it is already under the nested shells.
const DEPTH_VAR: &str = "PGROUP_BENCH_DEPTH";
/// How many nested shells the binary runs under.
pub const MIN_DEPTH: usize = 5;
/// How many idle processes are kept alive while measuring.
pub const IDLE_PROCESSES: usize = 300;
/// How long the `sleep` children would live if everything else failed.
const SLEEP_SECS: &str = "300";

/// A `Command` that carries the leak marker.
pub fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env(MARKER, marker_value());
    cmd
}

/// The marker's value: set by [`reexec_under_nested_shells`] for this run, so that the leak
/// check finds this run's processes and no one else's.
pub fn marker_value() -> OsString {
    env::var_os(MARKER).unwrap_or_else(fresh_marker)
}

fn fresh_marker() -> OsString {
    format!("pgroup-bench-{}", std::process::id()).into()
}

/// Unless this process already runs under the nested shells, runs the same binary with the
/// same arguments under [`MIN_DEPTH`] nested `sh` processes, waits for it and exits with its
/// status. Each shell runs `"$0" "$@"; exit $?`: the command is not its last, so the shell
/// forks instead of exec'ing, and stays in the chain.
pub fn reexec_under_nested_shells() {
    if env::var_os(DEPTH_VAR).is_some() {
        return;
    }
    let exe = env::current_exe().expect("the path of the running binary");
    let mut argv: Vec<OsString> = vec![exe.into_os_string()];
    argv.extend(env::args_os().skip(1));
    for _ in 0..MIN_DEPTH {
        let mut outer: Vec<OsString> =
            vec!["sh".into(), "-c".into(), "\"$0\" \"$@\"; exit $?".into()];
        outer.append(&mut argv);
        argv = outer;
    }
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .env(DEPTH_VAR, MIN_DEPTH.to_string())
        .env(MARKER, fresh_marker())
        .status()
        .expect("run the binary under nested shells");
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    std::process::exit(code);
}

/// The fields of `/proc/<pid>/stat` after the command name: state is `[0]`, ppid `[1]`.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(str::to_owned).collect())
}

fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_default()
}

/// The caller's ancestors, nearest first, up to and excluding PID 1: `(pid, command name)`.
pub fn ancestors() -> Vec<(u32, String)> {
    let mut chain = Vec::new();
    let mut pid = std::process::id();
    while let Some(ppid) = stat_fields(pid)
        .and_then(|f| f.get(1).cloned())
        .and_then(|p| p.parse::<u32>().ok())
    {
        if ppid <= 1 {
            break;
        }
        chain.push((ppid, comm(ppid)));
        pid = ppid;
    }
    chain
}

/// Checks that the first [`MIN_DEPTH`] ancestors are the nested shells; returns the whole
/// chain's length.
pub fn verify_depth() -> usize {
    let chain = ancestors();
    let shells = chain.iter().take_while(|(_, name)| name == "sh").count();
    assert!(
        shells >= MIN_DEPTH,
        "expected at least {MIN_DEPTH} nested shells above the bench, found {chain:?}"
    );
    chain.len()
}

/// How many processes are alive on the machine (numeric entries of `/proc`).
pub fn processes_alive() -> usize {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .count()
        })
        .unwrap_or(0)
}

/// [`IDLE_PROCESSES`] `cat` processes, started by one `sh` and all blocked reading that
/// shell's stdin, a pipe whose only writer is this process. This process holds one
/// descriptor for all of them (a descriptor per process would make every spawn of the
/// benches slower: the spawning process's descriptor table is copied and then closed in
/// the child). Drop closes the pipe: every `cat` exits on end of file, the shell's `wait`
/// returns, and the shell is reaped. If this process dies without unwinding, the pipe closes
/// just the same. No signal is needed.
pub struct IdleProcesses {
    shell: Child,
    count: usize,
}

impl IdleProcesses {
    /// Starts them, and returns once all are running.
    pub fn start() -> io::Result<IdleProcesses> {
        // Without job control, sh gives an asynchronous command /dev/null as its stdin,
        // unless it is redirected explicitly: hence the copy on descriptor 3.
        let script = format!(
            "exec 3<&0; i=0; while [ $i -lt {IDLE_PROCESSES} ]; do cat <&3 >/dev/null & \
             i=$((i + 1)); done; exec 3<&-; wait"
        );
        let shell = command("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .spawn()?;
        let mut idle = IdleProcesses { shell, count: 0 };
        // On error, Drop closes the pipe and reaps the shell.
        wait_for_children(idle.shell.id(), IDLE_PROCESSES, "cat")?;
        idle.count = children_of(idle.shell.id()).len();
        Ok(idle)
    }

    /// How many are running.
    pub fn len(&self) -> usize {
        self.count
    }
}

impl Drop for IdleProcesses {
    fn drop(&mut self) {
        drop(self.shell.stdin.take());
        let _ = self.shell.wait();
    }
}

/// The machine, for the table's caption.
pub fn machine_line() -> String {
    let cores = thread::available_parallelism().map_or(0, usize::from);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!(
        "{cores} cores (nproc), Linux {}, {cpu}, {}",
        kernel.trim(),
        utc_now()
    )
}

/// The current date and time in UTC, `YYYY-MM-DD HH:MM UTC` (civil date from the Unix day
/// count, after Howard Hinnant's algorithm; no date crate needed).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (hour, minute) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02} UTC")
}

/// The 1-minute load average.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

/// The children of `pid` (of its main thread, which is all a shell has).
pub fn children_of(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `pid` has `count` children that have all exec'd `name`.
pub fn wait_for_children(pid: u32, count: usize, name: &str) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let children = children_of(pid);
        if children.len() >= count && children.iter().all(|&c| comm(c) == name) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "pid {pid} has {} children, expected {count} {name}",
                    children.len()
                ),
            ));
        }
        thread::sleep(Duration::from_micros(200));
    }
}

/// A `sleep` in a group of its own, for the guard's benchmark: the only group the bare
/// `killpg` comparison ever signals, and only with SIGCONT. Drop kills and reaps it.
pub struct SignalTarget {
    child: Child,
    /// Its group id (its pid).
    pub pgid: i32,
}

impl SignalTarget {
    /// Spawns it.
    pub fn spawn() -> io::Result<SignalTarget> {
        let child = command("sleep").arg(SLEEP_SECS).process_group(0).spawn()?;
        let pgid = i32::try_from(child.id()).map_err(io::Error::other)?;
        Ok(SignalTarget { child, pgid })
    }

    /// The comparison: a bare `killpg(SIGCONT)` of the group this value spawned and has not
    /// reaped.
    pub fn bare_killpg_cont(&self) -> nix::Result<()> {
        killpg(Pid::from_raw(self.pgid), Signal::SIGCONT)
    }
}

impl Drop for SignalTarget {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sleep_command() -> Command {
    let mut cmd = command("sleep");
    cmd.arg(SLEEP_SECS);
    cmd
}

/// The raw cycle: std `Command` with `process_group(0)`, spawn, `killpg(SIGKILL)`, wait.
pub fn raw_cycle() -> io::Result<()> {
    let mut child = sleep_command().process_group(0).spawn()?;
    let pgid = i32::try_from(child.id()).map_err(io::Error::other)?;
    // Our own child, not reaped yet: its group id is still its group.
    killpg(Pid::from_raw(pgid), Signal::SIGKILL)?;
    child.wait()?;
    Ok(())
}

/// process-wrap's std `ProcessGroup`: spawn, kill (SIGKILL to the group, then wait).
pub fn process_wrap_cycle() -> io::Result<()> {
    let mut child = CommandWrap::from(sleep_command())
        .wrap(ProcessGroup::leader())
        .spawn()?;
    child.kill()
}

/// Ours with a grace period of zero: spawn `sleep` in a `SpawnedGroup` of the `Group` tier
/// (the plain process group, which is what the raw cycle and process-wrap compare with; the
/// default tier is measured against it in the tier rows), `shutdown`.
pub fn ours_grace_zero() -> io::Result<Teardown> {
    Builder::new()
        .containment(Containment::Group)
        .grace_period(Duration::ZERO)
        .spawn(&mut sleep_command())?
        .shutdown()
}

/// Ours (the `Group` tier) with the default grace period, for a child that exits on SIGTERM.
pub fn ours_default_grace() -> io::Result<Teardown> {
    let report = Builder::new()
        .containment(Containment::Group)
        .spawn(&mut sleep_command())?
        .shutdown()?;
    assert!(!report.sigkill_needed, "sleep exits on SIGTERM: {report:?}");
    Ok(report)
}

/// The containment tiers, weakest first, with their names: the tier row of issue 6
/// ("spawn and teardown in each containment tier, compared against the Group tier").
pub const TIERS: [(Containment, &str); 3] = [
    (Containment::Group, "Group"),
    (Containment::Supervised, "Supervised"),
    (Containment::Namespace, "Namespace"),
];

/// One cycle of the tier row: spawn `sleep 1000` under `tier`, then `shutdown`. With
/// `default_grace` false the grace period is zero (straight to SIGKILL); with it true it is
/// the default, which `sleep` cuts short by exiting on SIGTERM.
/// Lets the supervised tiers run the supervisor program (`on`), or makes them fork the
/// test binary for it (`PGROUP_SUPERVISOR_PROGRAM=off`). Only while no other thread runs.
#[allow(dead_code)] // the report's, not the criterion bench's
pub fn set_supervisor_program(on: bool) {
    if on {
        std::env::remove_var("PGROUP_SUPERVISOR_PROGRAM");
    } else {
        std::env::set_var("PGROUP_SUPERVISOR_PROGRAM", "off");
    }
}

pub fn tier_cycle(tier: Containment, default_grace: bool) -> io::Result<Teardown> {
    let mut cmd = command("sleep");
    cmd.arg("1000");
    let report = if default_grace {
        Builder::new()
            .containment(tier)
            .spawn(&mut cmd)?
            .shutdown()?
    } else {
        Builder::new()
            .containment(tier)
            .grace_period(Duration::ZERO)
            .spawn(&mut cmd)?
            .shutdown()?
    };
    assert_eq!(report.containment, tier, "{report:?}");
    // Grace 0 always ends in SIGKILL; `sleep` exits on SIGTERM, well within the default.
    assert_eq!(report.sigkill_needed, !default_grace, "{report:?}");
    assert!(report.escapees.is_empty(), "{report:?}");
    Ok(report)
}

/// Spawns a shell that ignores SIGTERM (and so does its `sleep`) with the given grace
/// period, waits until the trap is in place (the `sleep` after it exists), then returns how
/// long `shutdown` took.
pub fn ignored_term_teardown(grace: Duration) -> io::Result<Duration> {
    let group = Builder::new()
        .containment(Containment::Group)
        .grace_period(grace)
        .spawn(command("sh").args(["-c", "trap '' TERM; sleep 1000; :"]))?;
    wait_for_children(group.id(), 1, "sleep")?;
    let started = Instant::now();
    let report = group.shutdown()?;
    let elapsed = started.elapsed();
    assert!(
        report.sigkill_needed,
        "the shell ignores SIGTERM: {report:?}"
    );
    Ok(elapsed)
}

/// How many `sleep` children the wide tree's shell starts.
pub const TREE_CHILDREN: usize = 99;

/// Spawns `fixtures/wide_tree.sh` (a shell and 99 `sleep`s, all exit on SIGTERM) with the
/// default grace period, waits until all 99 `sleep`s run, then returns how long `shutdown`
/// took.
pub fn tree_teardown() -> io::Result<Duration> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/wide_tree.sh");
    let group = Builder::new().containment(Containment::Group).spawn(
        command("sh")
            .arg(script)
            .arg(TREE_CHILDREN.to_string())
            .stdin(Stdio::null()),
    )?;
    wait_for_children(group.id(), TREE_CHILDREN, "sleep")?;
    let started = Instant::now();
    let report = group.shutdown()?;
    let elapsed = started.elapsed();
    assert!(
        !report.sigkill_needed,
        "the tree exits on SIGTERM: {report:?}"
    );
    assert_eq!(report.descendants_seen, TREE_CHILDREN, "{report:?}");
    Ok(elapsed)
}

/// The floor for the tree row, with no library: spawn the same tree in a group of its own,
/// wait until all 99 `sleep`s run, then time `killpg(SIGTERM)` until the leader is reaped
/// and every `sleep` is gone (or a zombie), checked in `/proc` one pid at a time.
pub fn tree_raw_floor() -> io::Result<Duration> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/wide_tree.sh");
    let mut leader = command("sh")
        .arg(script)
        .arg(TREE_CHILDREN.to_string())
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()?;
    let pgid = Pid::from_raw(i32::try_from(leader.id()).map_err(io::Error::other)?);
    // Until the leader is reaped, its pid is this group's id: signalling it is safe.
    let ready = wait_for_children(leader.id(), TREE_CHILDREN, "sleep");
    let sleeps = children_of(leader.id());
    let started = Instant::now();
    let signal = if ready.is_ok() {
        Signal::SIGTERM
    } else {
        Signal::SIGKILL
    };
    let signalled = killpg(pgid, signal);
    if signalled.is_err() {
        let _ = leader.kill();
    }
    leader.wait()?;
    ready?;
    signalled?;
    let deadline = started + Duration::from_secs(10);
    for pid in sleeps {
        // Gone, a zombie, or (should the number be recycled at once) no longer a `sleep`.
        while stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z"))
            && comm(pid) == "sleep"
        {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("sleep {pid} outlived SIGTERM"),
                ));
            }
            thread::sleep(Duration::from_micros(50));
        }
    }
    Ok(started.elapsed())
}

/// One cycle of many groups alive at once. (The benches time the whole cycle themselves;
/// the report reads the fields.)
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)]
pub struct ManyGroups {
    /// Spawning them all, across the threads, until every one is alive.
    pub spawn: Duration,
    /// Tearing them all down (dropping them), across the threads.
    pub teardown: Duration,
    /// VmRSS growth of this process from before the spawns to when all were alive, in KiB.
    pub rss_growth_kib: i64,
    /// This process's thread count while all were alive (the spawning threads have ended).
    pub threads_alive: usize,
    /// This process's thread count before.
    pub threads_before: usize,
    /// Open descriptors while all were alive, minus before.
    pub fds_growth: i64,
}

fn status_field(name: &str) -> i64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(-1)
}

/// This process's resident set size, in KiB. The supervised tiers fork the calling process
/// (a `pre_exec` hook makes std fork instead of `posix_spawn`), so their cost grows with it.
pub fn rss_kib() -> i64 {
    status_field("VmRSS:")
}

fn open_fds() -> i64 {
    fs::read_dir("/proc/self/fd").map_or(-1, |d| i64::try_from(d.count()).unwrap_or(-1))
}

/// Spawns `groups` sleeping groups (default grace) across `threads` threads, keeps them all
/// alive at once, measures, then drops them all across the same number of threads.
pub fn many_groups(groups: usize, threads: usize) -> io::Result<ManyGroups> {
    let rss_before = status_field("VmRSS:");
    let threads_before = usize::try_from(status_field("Threads:")).unwrap_or(0);
    let fds_before = open_fds();
    let started = Instant::now();
    let per_thread = groups.div_ceil(threads);
    let alive: Vec<Vec<SpawnedGroup>> = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let count = per_thread.min(groups.saturating_sub(t * per_thread));
                s.spawn(move || {
                    (0..count)
                        .map(|_| SpawnedGroup::spawn(&mut sleep_command()))
                        .collect::<io::Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("spawning thread panicked"))
            .collect::<io::Result<Vec<_>>>()
    })?;
    let spawn = started.elapsed();
    let rss_growth_kib = status_field("VmRSS:") - rss_before;
    // The spawning threads have been joined, but the kernel may still count a thread that
    // has returned and not yet finished exiting: read again (for up to 50 ms) until the count
    // is back to where it was, and keep the lowest reading.
    let threads = || usize::try_from(status_field("Threads:")).unwrap_or(0);
    let mut threads_alive = threads();
    for _ in 0..50 {
        if threads_alive <= threads_before {
            break;
        }
        thread::sleep(Duration::from_millis(1));
        threads_alive = threads_alive.min(threads());
    }
    let fds_growth = open_fds() - fds_before;
    assert_eq!(alive.iter().map(Vec::len).sum::<usize>(), groups);
    let started = Instant::now();
    thread::scope(|s| {
        for batch in alive {
            s.spawn(move || drop(batch));
        }
    });
    let teardown = started.elapsed();
    Ok(ManyGroups {
        spawn,
        teardown,
        rss_growth_kib,
        threads_alive,
        threads_before,
        fds_growth,
    })
}

/// The group sizes of the many-groups row, and the threads that spawn them.
pub const MANY_GROUPS: [usize; 4] = [32, 64, 128, 256];
/// How many threads spawn (and drop) the groups.
pub const MANY_THREADS: usize = 4;

/// Live processes (not zombies) other than this one and its ancestors that carry this run's
/// marker value: anything the run leaked.
pub fn leaked_processes() -> Vec<(u32, String)> {
    let marker = marker_value();
    let needle = format!("{MARKER}={}", marker.to_string_lossy()).into_bytes();
    let me = std::process::id();
    let chain: Vec<u32> = ancestors().into_iter().map(|(p, _)| p).collect();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|&pid| pid != me && !chain.contains(&pid))
        .filter(|&pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|&b| b == 0).any(|var| var == needle.as_slice()))
                .unwrap_or(false)
        })
        .filter(|&pid| stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z")))
        .map(|pid| (pid, comm(pid)))
        .collect()
}
