//! The default tier where tests really run: a container's seccomp profile, a debugger, a
//! test binary SIGKILLed while another of its threads holds a lock, a fork that keeps
//! descriptors, a `pre_exec` hook with a big stack frame, a supervisor that dies. Each test
//! reproduces a failure the default tier had, and each has a control that shows the
//! condition bites (the filter refuses, the breakpoint can be lost, the frame can overflow,
//! the recycled number names a stranger).

#![cfg(target_os = "linux")]

mod support;

use std::env;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::libc;
use pgroup::{Builder, Containment, Signal, SpawnedGroup};
use procfs::process::Process;
use tracing_test::traced_test;

#[test]
#[ignore = "entry point of the helper processes the other tests re-execute this binary as"]
#[traced_test]
fn role_entry() {
    support::role_main(
        &|s| logs_contain(s),
        &[
            ("seccomp", seccomp_role),
            ("gdb-target", gdb_target_role),
            ("env-lock", env_lock_role),
            ("forker", forker_role),
            ("lifeline-parent", lifeline_parent_role),
            ("lifeline-victim", lifeline_victim_role),
            ("bad-switch", bad_switch_role),
            ("valgrind-target", valgrind_target_role),
            ("oom", oom_role),
        ],
    );
}

fn supervised_available() -> bool {
    !support::tier_unavailable(Containment::Supervised)
}

/// The parent of `pid`, from /proc.
fn parent_of(pid: u32) -> i32 {
    let pid = i32::try_from(pid).expect("pid fits");
    Process::new(pid).and_then(|p| p.stat()).expect("stat").ppid
}

// ---- a container's seccomp profile ---------------------------------------------------

/// Installs, in this thread (and so in every process it starts), a seccomp filter that
/// refuses what Docker's and containerd's default profiles refuse a process without
/// CAP_SYS_ADMIN, as they refuse it: `unshare` and `setns` with `EPERM`, `clone` with any
/// namespace flag with `EPERM`, and `clone3` with `ENOSYS` (so that libc falls back to
/// `clone`, whose flags the filter can read).
fn install_container_seccomp() {
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64
    const LD_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JSET: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const RET: u16 = 0x06; // BPF_RET | BPF_K
    const ALLOW: u32 = 0x7fff_0000;
    const ERRNO: u32 = 0x0005_0000;
    const NAMESPACE_FLAGS: u32 = 0x7e02_0000; // CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
    let nr = |n: libc::c_long| u32::try_from(n).expect("syscall number");
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let filter = [
        op(LD_ABS, 0, 0, 4),                  // 0: arch
        op(JEQ, 0, 7, ARCH),                  // 1: foreign: allow
        op(LD_ABS, 0, 0, 0),                  // 2: nr
        op(JEQ, 6, 0, nr(libc::SYS_unshare)), // 3: -> 10
        op(JEQ, 5, 0, nr(libc::SYS_setns)),   // 4: -> 10
        op(JEQ, 5, 0, nr(libc::SYS_clone3)),  // 5: -> 11
        op(JEQ, 0, 2, nr(libc::SYS_clone)),   // 6: not clone: -> 9
        op(LD_ABS, 0, 0, 16),                 // 7: clone's flags (low word)
        op(JSET, 1, 0, NAMESPACE_FLAGS),      // 8: -> 10, else 9
        op(RET, 0, 0, ALLOW),                 // 9
        op(
            RET,
            0,
            0,
            ERRNO | u32::from(libc::EPERM.unsigned_abs() as u16),
        ), // 10
        op(
            RET,
            0,
            0,
            ERRNO | u32::from(libc::ENOSYS.unsigned_abs() as u16),
        ), // 11
    ];
    let program = libc::sock_fprog {
        len: u16::try_from(filter.len()).expect("short"),
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prctl(2) with integers, then with a pointer to a filter program on this stack
    // that the kernel copies during the call.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &program as *const libc::sock_fprog,
            ),
            0,
            "install the filter: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Under the container's filter: what `unshare` says (`UNSHARE`), whether the default tier
/// spawns and catches an escapee (`DEFAULT`), and what `Namespace` says (`NAMESPACE`).
fn seccomp_role(_logs: support::Logs<'_>) -> i32 {
    let marker = env::var(support::MARKER_VAR).expect("marker");
    install_container_seccomp();
    // SAFETY: unshare(2) with a flag; the filter answers before the kernel acts.
    let unshare = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    println!(
        "UNSHARE {}",
        if unshare == 0 {
            "allowed".to_owned()
        } else {
            std::io::Error::last_os_error().to_string()
        }
    );
    let spawned = Builder::new()
        .grace_period(Duration::ZERO)
        .spawn(&mut support::marked(
            &marker,
            "sh",
            &["-c", "setsid sleep 1000 & exec sleep 1000"],
        ));
    match spawned {
        Ok(group) => {
            support::wait_until("the escapee leads a session of its own", || {
                support::marked_session_leaders(&marker).len() == 1
            });
            match group.shutdown() {
                Ok(report) => println!(
                    "DEFAULT {:?} escapees {}",
                    report.containment,
                    report.escapees.len()
                ),
                Err(e) => println!("DEFAULT shutdown failed: {e}"),
            }
        }
        Err(e) => println!("DEFAULT spawn failed: {e}"),
    }
    let namespace = Builder::new()
        .containment(Containment::Namespace)
        .spawn(&mut support::marked(&marker, "sleep", &["1000"]));
    println!(
        "NAMESPACE {}",
        match namespace {
            Ok(_) => "spawned".to_owned(),
            Err(e) => format!("{:?}: {e}", e.kind()),
        }
    );
    0
}

/// In a process confined as Docker's default seccomp profile confines a container (no
/// `unshare`, no namespace flags to `clone`, `clone3` refused), the default tier spawns,
/// catches a process that left the group, and tears everything down; `Namespace` fails with
/// an error that names the cause and the way out. The control: the filter does refuse
/// `unshare` (the call the default tier made before, and failed on).
#[test]
fn the_default_tier_works_under_a_containers_seccomp_profile() {
    if !supervised_available() {
        return;
    }
    let marker = support::marker("seccomp");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let mut cmd = support::role_command("seccomp");
    cmd.env(support::MARKER_VAR, &marker).stdout(Stdio::piped());
    let out = support::run_collecting(cmd, Duration::from_secs(60));
    assert!(
        out.one("UNSHARE").contains("Operation not permitted"),
        "the filter must refuse unshare: {:#?}",
        out.lines
    );
    assert_eq!(
        out.one("DEFAULT"),
        "Supervised escapees 1",
        "{:#?}",
        out.lines
    );
    let namespace = out.one("NAMESPACE");
    assert!(
        namespace.contains("PID namespace") && namespace.contains("Containment::Supervised"),
        "the error names the cause and the way out: {namespace}"
    );
    support::assert_no_leaks(&marker);
}

// ---- a debugger ------------------------------------------------------------------------

/// Where the `gdb-target` role stops under the debugger: once per group it spawns.
#[inline(never)]
#[no_mangle]
pub extern "C" fn pgroup_test_breakpoint(round: u32) -> u32 {
    std::hint::black_box(round).wrapping_add(1)
}

/// Ten rounds of: spawn a group in the default tier (or, with `PGROUP_GDB_CONTROL`, start a
/// process that shares this one's memory the way the former supervisor did), pass the
/// breakpoint, tear down.
fn gdb_target_role(_logs: support::Logs<'_>) -> i32 {
    let marker = env::var(support::MARKER_VAR).expect("marker");
    let control = env::var_os("PGROUP_GDB_CONTROL").is_some();
    let mut sum = 0;
    for round in 0..10 {
        if control {
            shared_memory_child();
            sum += pgroup_test_breakpoint(round);
        } else {
            let group = Builder::new()
                .grace_period(Duration::ZERO)
                .spawn(&mut support::marked(&marker, "sleep", &["1000"]))
                .expect("spawn");
            sum += pgroup_test_breakpoint(round);
            group.shutdown().expect("shutdown");
        }
    }
    println!("ROUNDS {sum}");
    0
}

/// A child that shares this process's memory without `CLONE_VFORK` (the shape of the
/// former supervisor), which exits at once; reaped here.
fn shared_memory_child() {
    extern "C" fn exit_at_once(_: *mut libc::c_void) -> libc::c_int {
        // SAFETY: _exit(2) ends this child and touches nothing.
        unsafe { libc::_exit(0) }
    }
    let mut stack = vec![0_u8; 64 * 1024];
    // SAFETY: the child runs `exit_at_once` on `stack`, which stays alive until it has been
    // reaped below; it touches nothing else.
    let pid = unsafe {
        libc::clone(
            exit_at_once,
            stack.as_mut_ptr().add(stack.len()).cast(),
            libc::CLONE_VM | libc::SIGCHLD,
            std::ptr::null_mut(),
        )
    };
    assert!(pid > 0, "clone: {}", std::io::Error::last_os_error());
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    drop(stack);
}

/// Runs the `gdb-target` role under `gdb -batch` with a breakpoint on
/// [`pgroup_test_breakpoint`] that counts its hits; returns `HITS` and the role's `ROUNDS`.
fn hits_under_gdb(marker: &str, control: bool) -> Option<(u32, String)> {
    if !tool_installed("gdb") {
        return None;
    }
    let script = tempfile::NamedTempFile::new().expect("script");
    std::fs::write(
        script.path(),
        "set breakpoint pending on\n\
         set pagination off\n\
         set $hits = 0\n\
         break pgroup_test_breakpoint\n\
         commands\n\
         silent\n\
         set $hits = $hits + 1\n\
         continue\n\
         end\n\
         run\n\
         printf \"HITS %d\\n\", $hits\n",
    )
    .expect("write the script");
    let role = support::role_command("gdb-target");
    let mut cmd = Command::new("gdb");
    cmd.args(["-batch", "-nx", "-x"])
        .arg(script.path())
        .arg("--args")
        .arg(role.get_program())
        .args(role.get_args())
        .env(support::ROLE_VAR, "gdb-target")
        .env(support::MARKER_VAR, marker)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    if control {
        cmd.env("PGROUP_GDB_CONTROL", "1");
    }
    let out = support::run_collecting(cmd, Duration::from_secs(240));
    let hits = out.one("HITS").parse().expect("a count");
    Some((hits, out.one("ROUNDS").to_owned()))
}

/// A breakpoint in the test's own code is hit every time under gdb while the default tier
/// spawns and tears down groups (gdb sees the supervisor's spawner as the `vfork` it is,
/// and puts the breakpoints back once it has exec'd). The control: a child that shares the
/// test binary's memory without `CLONE_VFORK`, which gdb takes for a fork and detaches from,
/// removing the breakpoints from the memory both share: the later hits are lost.
#[test]
fn a_breakpoint_is_hit_under_gdb_every_time() {
    if !supervised_available() {
        return;
    }
    let marker = support::marker("gdb");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let Some((hits, rounds)) = hits_under_gdb(&marker, false) else {
        return;
    };
    assert_eq!(rounds, "55", "the role ran its ten rounds");
    assert_eq!(hits, 10, "every round hit the breakpoint");
    let Some((control_hits, control_rounds)) = hits_under_gdb(&marker, true) else {
        return;
    };
    assert_eq!(control_rounds, "55");
    assert!(
        control_hits < 10,
        "the control loses breakpoints ({control_hits} hits): the count can fail"
    );
    support::assert_no_leaks(&marker);
}

/// Whether `tool` can be run. When it cannot, this says so loudly, and fails under CI
/// (`CI=true`), whose `.ci/run` installs it.
fn tool_installed(tool: &str) -> bool {
    if Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
    {
        return true;
    }
    let msg = format!("{tool} is not installed: the test that runs under it cannot run");
    assert_ne!(
        env::var("CI").as_deref(),
        Ok("true"),
        "{msg} (CI installs it: .ci/run)"
    );
    eprintln!("\n*** SKIPPED: {msg} ***\n");
    false
}

// ---- valgrind --------------------------------------------------------------------------

/// Spawns a group in the default tier and one in `Group`, and prints how each went
/// (`DEFAULT`, `GROUP`: `ok`, or the error's kind and text), then `DONE yes`.
fn valgrind_target_role(_logs: support::Logs<'_>) -> i32 {
    let marker = env::var(support::MARKER_VAR).expect("marker");
    for (key, mut builder) in [
        ("DEFAULT", Builder::new()),
        ("GROUP", {
            let mut b = Builder::new();
            b.containment(Containment::Group);
            b
        }),
    ] {
        let outcome = builder
            .grace_period(Duration::ZERO)
            .spawn(&mut support::marked(&marker, "sleep", &["1000"]))
            .and_then(SpawnedGroup::shutdown);
        match outcome {
            Ok(_) => println!("{key} ok"),
            Err(e) => println!("{key} {:?}: {e}", e.kind()),
        }
    }
    println!("DONE yes");
    0
}

/// Under valgrind (which refuses `clone` with flags it does not know, and ended the whole
/// test binary on the former supervisor's), the default tier does what `Group` does: it
/// works where `Group` works, and otherwise fails with an error of the same kind (valgrind
/// 3.19 lacks `pidfd_open`), and the test binary goes on.
#[test]
fn the_default_tier_under_valgrind_does_what_group_does() {
    if !supervised_available() || !tool_installed("valgrind") {
        return;
    }
    let marker = support::marker("valgrind");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let role = support::role_command("valgrind-target");
    let mut cmd = Command::new("valgrind");
    cmd.arg("-q")
        .arg(role.get_program())
        .args(role.get_args())
        .env(support::ROLE_VAR, "valgrind-target")
        .env(support::MARKER_VAR, &marker)
        .stdout(Stdio::piped());
    let out = support::run_collecting(cmd, Duration::from_secs(240));
    assert_eq!(
        out.one("DONE"),
        "yes",
        "the test binary went on: {:#?}",
        out.lines
    );
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(0),
        "{:#?}",
        out.lines
    );
    let kind = |line: &str| line.split(':').next().unwrap_or_default().to_owned();
    assert_eq!(
        kind(out.one("DEFAULT")),
        kind(out.one("GROUP")),
        "the default tier and Group end alike: {:#?}",
        out.lines
    );
    support::assert_no_leaks(&marker);
}

// ---- the OOM killer ------------------------------------------------------------------

/// A memory cgroup of its own (cgroup v1's memory controller), limited to `limit` bytes,
/// removed on drop; `None` where none can be made (not root, no memory controller).
struct MemoryCgroup(std::path::PathBuf);

impl MemoryCgroup {
    fn new(name: &str, limit: u64) -> Option<MemoryCgroup> {
        let path = std::path::Path::new("/sys/fs/cgroup/memory").join(name);
        std::fs::create_dir(&path).ok()?;
        let cgroup = MemoryCgroup(path);
        std::fs::write(cgroup.0.join("memory.limit_in_bytes"), limit.to_string()).ok()?;
        Some(cgroup)
    }
}

impl Drop for MemoryCgroup {
    /// Removed once its last process is gone (a killed one leaves it a moment later).
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Spawns `sleep 1000` in the tier `PGROUP_TIER` names, prints its pid (`LEADER`), then
/// allocates memory until the OOM killer ends this process.
fn oom_role(_logs: support::Logs<'_>) -> i32 {
    let marker = env::var(support::MARKER_VAR).expect("marker");
    let tier = match env::var("PGROUP_TIER").as_deref() {
        Ok("group") => Containment::Group,
        _ => Containment::Supervised,
    };
    // Its stdio elsewhere: a leader that outlives the role must not keep the role's output
    // open (the control's does).
    let group = Builder::new()
        .containment(tier)
        .spawn(
            support::marked(&marker, "sleep", &["1000"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("spawn");
    println!("LEADER {}", group.id());
    let _ = std::io::stdout().flush();
    let mut hog: Vec<Vec<u8>> = Vec::new();
    loop {
        hog.push(vec![1_u8; 16 << 20]);
        std::hint::black_box(&hog);
    }
}

/// Runs the `oom` role in a memory cgroup of 200 MB until the OOM killer ends it, and
/// returns whether its leader outlived it.
fn leader_outlives_an_oom_kill(tier: &str, marker: &str) -> Option<bool> {
    let cgroup = MemoryCgroup::new(&format!("pgroup-test-{marker}"), 200 << 20)?;
    let role = support::role_command("oom");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
        .arg("sh")
        .arg(&cgroup.0)
        .arg(role.get_program())
        .args(role.get_args())
        .env(support::ROLE_VAR, "oom")
        .env("PGROUP_TIER", tier)
        .env(support::MARKER_VAR, marker)
        .stdout(Stdio::piped());
    let out = support::run_collecting(cmd, Duration::from_secs(120));
    assert_eq!(
        out.status.and_then(|s| s.signal()),
        Some(libc::SIGKILL),
        "the OOM killer ended the role: {:#?}",
        out.lines
    );
    let leader: i32 = out.one("LEADER").parse().expect("pid");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !support::is_dead_or_dying(leader) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let outlived = !support::is_dead_or_dying(leader);
    support::kill_marked(marker);
    drop(cgroup);
    Some(outlived)
}

/// An OOM kill of the test binary takes its groups with it in the default tier: the OOM
/// killer picks the test binary (the supervisor is a few KiB of its own, not a process that
/// reports the test binary's memory as its own, as the former supervisor was), and the
/// supervisor, seeing the test binary gone, kills the group. The control: a `Group`-tier
/// leader outlives the same kill (nothing runs in a SIGKILLed process).
#[test]
fn an_oom_kill_of_the_test_binary_ends_its_groups() {
    if !supervised_available() {
        return;
    }
    let marker = support::marker("oom");
    let Some(outlived) = leader_outlives_an_oom_kill("supervised", &marker) else {
        eprintln!(
            "\n*** SKIPPED: no memory cgroup can be made here (not root, or no cgroup v1 \
             memory controller): the OOM test cannot run ***\n"
        );
        return;
    };
    assert!(
        !outlived,
        "the leader outlived the OOM kill of the test binary"
    );
    support::assert_no_leaks(&marker);
    let control = support::marker("oom-control");
    let outlived = leader_outlives_an_oom_kill("group", &control).expect("a cgroup, as above");
    assert!(outlived, "the control: a Group-tier leader outlives it");
    support::assert_no_leaks(&control);
}

// ---- SIGKILL while another thread holds a lock ---------------------------------------

/// Spawns groups in the default tier from three threads, forever, while three others set
/// environment variables in a loop: std's environment lock, which every spawn takes for
/// reading and which a waiting writer closes to new readers, is held or awaited by a writer
/// nearly all the time, and the allocator's locks change hands all the time. Prints
/// `SPAWNED` once it is going.
fn env_lock_role(_logs: support::Logs<'_>) -> i32 {
    let marker = env::var(support::MARKER_VAR).expect("marker");
    for writer in 0..3 {
        thread::spawn(move || {
            for i in 0_u64.. {
                // SAFETY (of the test, not of this call's contract): every other thread of
                // this role only spawns, and std's spawn takes the same lock.
                unsafe { env::set_var(format!("PGROUP_TEST_CHURN_{writer}"), i.to_string()) };
            }
        });
    }
    let started = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let marker = marker.clone();
        let started = Arc::clone(&started);
        thread::spawn(move || {
            let mut kept: Vec<SpawnedGroup> = Vec::new();
            loop {
                let group = Builder::new()
                    .grace_period(Duration::ZERO)
                    .spawn(&mut support::marked(&marker, "sleep", &["1000"]));
                if let Ok(group) = group {
                    kept.push(group);
                    started.fetch_add(1, Ordering::SeqCst);
                }
                if kept.len() > 8 {
                    drop(kept.remove(0));
                }
            }
        });
    }
    while started.load(Ordering::SeqCst) < 10 {
        thread::sleep(Duration::from_millis(1));
    }
    println!("SPAWNED");
    let _ = std::io::stdout().flush();
    loop {
        thread::park();
    }
}

/// A test binary SIGKILLed (as nextest does after its grace period, to the test's process
/// group) while its threads spawn groups and another holds std's environment lock: nothing
/// it started survives, and nothing keeps its stdout open, so a runner reading it (`cargo
/// test | tee`) sees the end: no supervisor waits forever for that lock, holding the dead
/// binary's stdout. Twelve kills at different moments.
#[test]
fn sigkill_while_another_thread_holds_the_environment_lock() {
    if !supervised_available() {
        return;
    }
    for round in 0..12_u64 {
        let marker = support::marker("env-lock");
        let _cleanup = support::KillMarkedOnDrop(marker.clone());
        let mut cmd = support::role_command("env-lock");
        cmd.env(support::MARKER_VAR, &marker)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut role = Builder::new()
            .containment(Containment::Group)
            .grace_period(Duration::ZERO)
            .spawn(&mut cmd)
            .expect("spawn the role");
        let stdout = role.stdout.take().expect("piped");
        let (lines, eof) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                let _ = lines.send(Some(std::mem::take(&mut line)));
            }
            let _ = lines.send(None);
        });
        loop {
            match eof.recv_timeout(Duration::from_secs(60)) {
                Ok(Some(line)) if line.starts_with("SPAWNED") => break,
                Ok(Some(_)) => {}
                other => panic!("the role did not start spawning: {other:?}"),
            }
        }
        thread::sleep(Duration::from_millis(round * 7 % 40));
        // The test's own child and its group, as a runner's timeout does it.
        assert!(role.signal(Signal::SIGKILL).expect("signal").is_sent());
        let started = Instant::now();
        loop {
            match eof.recv_timeout(Duration::from_secs(20)) {
                Ok(None) => break,
                Ok(Some(_)) => {}
                Err(_) => panic!(
                    "round {round}: the role's stdout is still open {:?} after its SIGKILL: \
                     something it started outlives it: {:?}",
                    started.elapsed(),
                    support::marked_alive(&marker)
                        .into_iter()
                        .map(support::describe)
                        .collect::<Vec<_>>()
                ),
            }
        }
        let status = role.wait().expect("wait");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "round {round}");
        drop(role);
        support::assert_no_leaks(&marker);
    }
}

// ---- a fork that keeps descriptors ---------------------------------------------------

/// Forks without exec from a thread, all the time (each copy sleeps, holding copies of
/// every descriptor open at that moment, until the role kills it at the end), while the
/// main thread spawns and tears down twenty groups of the default tier. Prints each
/// teardown's outcome (`TEARDOWN ok` or the error).
fn forker_role(_logs: support::Logs<'_>) -> i32 {
    let marker = env::var(support::MARKER_VAR).expect("marker");
    let stop = Arc::new(AtomicBool::new(false));
    let forking = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut children = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                // SAFETY: the child calls only nanosleep and _exit, async-signal-safe.
                match unsafe { nix::unistd::fork() } {
                    Ok(nix::unistd::ForkResult::Child) => {
                        let second = libc::timespec {
                            tv_sec: 60,
                            tv_nsec: 0,
                        };
                        // SAFETY: async-signal-safe calls on a stack value.
                        unsafe {
                            libc::nanosleep(&second, std::ptr::null_mut());
                            libc::_exit(0);
                        }
                    }
                    Ok(nix::unistd::ForkResult::Parent { child }) => children.push(child),
                    Err(_) => {}
                }
                thread::sleep(Duration::from_micros(300));
            }
            for child in children {
                // Our own children, by pid.
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(child, None);
            }
        })
    };
    for _ in 0..20 {
        let group = Builder::new()
            .grace_period(Duration::ZERO)
            .spawn(&mut support::marked(&marker, "sleep", &["1000"]))
            .expect("spawn");
        match group.shutdown() {
            Ok(_) => println!("TEARDOWN ok"),
            Err(e) => println!("TEARDOWN {e}"),
        }
    }
    stop.store(true, Ordering::SeqCst);
    forking.join().expect("forking thread");
    0
}

/// Forks of the test binary that never exec (and so keep copies of whatever descriptors
/// were open when they were made, the supervisor's socket ends included) do not hold up
/// teardown: every teardown succeeds (teardown waits for the supervisor's exit, not for
/// the end of its socket).
#[test]
fn forks_that_keep_descriptors_do_not_hold_up_teardown() {
    if !supervised_available() {
        return;
    }
    let marker = support::marker("forker");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let mut cmd = support::role_command("forker");
    cmd.env(support::MARKER_VAR, &marker).stdout(Stdio::piped());
    let out = support::run_collecting(cmd, Duration::from_secs(120));
    let teardowns = out.all("TEARDOWN");
    assert_eq!(teardowns.len(), 20, "{:#?}", out.lines);
    assert!(
        teardowns.iter().all(|t| t == "ok"),
        "every teardown succeeds: {teardowns:#?}"
    );
    support::assert_no_leaks(&marker);
}

// ---- a `pre_exec` hook with a big stack frame ----------------------------------------

/// A frame of `N` bytes of stack, every page touched.
#[inline(never)]
fn use_stack<const N: usize>() -> u8 {
    let mut area = [0_u8; N];
    std::hint::black_box(&mut area);
    area.iter().step_by(4096).fold(0, |a, b| a ^ b)
}

/// Spawns `sh -c 'exit 7'` in `tier` with a `pre_exec` hook whose frame takes 600 KiB (or,
/// with `huge`, 16 MiB) of stack, and returns the leader's exit status.
fn status_with_a_hook_frame(
    tier: Containment,
    huge: bool,
    marker: &str,
) -> std::process::ExitStatus {
    let mut cmd = support::marked(marker, "sh", &["-c", "exit 7"]);
    let hook = move || {
        let byte = if huge {
            use_stack::<{ 16 * 1024 * 1024 }>()
        } else {
            use_stack::<{ 600 * 1024 }>()
        };
        std::hint::black_box(byte);
        Ok(())
    };
    // SAFETY: the hook touches only its own stack: no allocation, no lock.
    unsafe { cmd.pre_exec(hook) };
    let group = Builder::new()
        .containment(tier)
        .grace_period(Duration::ZERO)
        .spawn(&mut cmd)
        .expect("spawn");
    let status = group.wait().expect("wait");
    let _ = group.shutdown();
    status
}

/// A `pre_exec` hook with a 600 KiB stack frame runs in the default tier as in `Group`
/// (before, the leader died of SIGSEGV on the supervisor's 512 KiB stack while `spawn`
/// returned `Ok`). The control: a frame bigger than any stack a spawn gets (16 MiB) does
/// overflow, so the check can fail.
#[test]
fn a_pre_exec_hook_with_a_600_kib_frame_runs() {
    if !supervised_available() {
        return;
    }
    let marker = support::marker("frame");
    for tier in [Containment::Group, Containment::Supervised] {
        let status = status_with_a_hook_frame(tier, false, &marker);
        assert_eq!(status.code(), Some(7), "{tier:?}: {status:?}");
    }
    let status = status_with_a_hook_frame(Containment::Supervised, true, &marker);
    assert_eq!(
        status.signal(),
        Some(libc::SIGSEGV),
        "the control overflows: {status:?}"
    );
    support::assert_no_leaks(&marker);
}

// ---- the supervisor dies ---------------------------------------------------------------

/// `shutdown` after the supervisor was killed still ends the whole group, through the
/// leader's pidfd (which names the leader and its group whatever happened to its parent),
/// and says that the leader's status is lost; it does not fail at once leaving the group
/// running. Also `signal` still reaches the group.
#[test]
fn shutdown_after_the_supervisors_death_ends_the_group() {
    if !supervised_available() {
        return;
    }
    let marker = support::marker("orphaned");
    let _cleanup = support::KillMarkedOnDrop(marker.clone());
    let group = Builder::new()
        .grace_period(Duration::from_millis(200))
        .spawn(&mut support::marked(
            &marker,
            "sh",
            &["-c", "sleep 1000 & sleep 1000 & wait"],
        ))
        .expect("spawn");
    support::wait_until("the two sleeps run", || {
        support::marked_states(&marker)
            .iter()
            .filter(|(_, comm, _)| comm == "sleep")
            .count()
            == 2
    });
    let supervisor = parent_of(group.id());
    assert_ne!(u32::try_from(supervisor).ok(), Some(std::process::id()));
    // Our own child (the supervisor), by pid.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the supervisor");
    support::wait_until("the supervisor is gone", || {
        support::is_dead_or_dying(supervisor)
    });
    assert!(group.signal(Signal::SIGCONT).expect("signal").is_sent());
    let err = group.shutdown().expect_err("the leader's status is lost");
    assert!(
        err.to_string().contains("supervisor died"),
        "the error says why: {err}"
    );
    support::assert_no_leaks(&marker);
}

/// PID 1 of the sandbox: runs the `lifeline-victim` role as its child, answers its request
/// to reap the leader it orphaned (`REAP <pid>`, then `REAPED` on its stdin), and after the
/// victim has exited (its lifeline ran) reports whether the stranger it started is alive
/// (`STRANGER_ALIVE`).
fn lifeline_parent_role(_logs: support::Logs<'_>) -> i32 {
    let marker = env::var(support::MARKER_VAR).expect("marker");
    let mut victim = support::role_command("lifeline-victim")
        .env(support::ROLE_VAR, "lifeline-victim")
        .env(support::MARKER_VAR, &marker)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the victim");
    let mut to_victim = victim.stdin.take().expect("piped");
    let reader = BufReader::new(victim.stdout.take().expect("piped"));
    let mut stranger = None;
    for line in reader.lines() {
        let line = line.expect("read");
        println!("{line}");
        if let Some(pid) = line.strip_prefix("REAP ") {
            let pid: i32 = pid.parse().expect("pid");
            // The orphaned leader, re-parented to us (PID 1 of the sandbox): ours to kill
            // and reap, by pid.
            support::wait_until("the leader is our child", || {
                Process::new(pid)
                    .and_then(|p| p.stat())
                    .is_ok_and(|s| s.ppid == 1)
            });
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            writeln!(to_victim, "REAPED").expect("answer");
        }
        if let Some(pid) = line.strip_prefix("STRANGER ") {
            stranger = Some(pid.parse::<i32>().expect("pid"));
        }
    }
    let status = victim.wait().expect("wait for the victim");
    println!("VICTIM {status:?}");
    if let Some(pid) = stranger {
        println!("STRANGER_ALIVE {}", !support::is_dead_or_dying(pid));
        // The stranger, re-parented to us: ours, by pid.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    0
}

/// Spawns a `Supervised` group, kills its supervisor, has the orphaned leader reaped (by
/// PID 1, the parent role), hands the leader's number to a stranger that leads a group of
/// its own, and exits: the lifeline's `atexit` hook runs with the group still registered.
fn lifeline_victim_role(_logs: support::Logs<'_>) -> i32 {
    let marker = env::var(support::MARKER_VAR).expect("marker");
    let group = Builder::new()
        .containment(Containment::Supervised)
        .spawn(&mut support::marked(&marker, "sleep", &["1000"]))
        .expect("spawn");
    let leader = i32::try_from(group.id()).expect("pid");
    let supervisor = parent_of(group.id());
    // Our own child, by pid; reaped here (the group's value would reap it at teardown,
    // which never comes).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the supervisor");
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(supervisor), None);
    println!("REAP {leader}");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).expect("answer");
    assert_eq!(answer.trim(), "REAPED");
    let spawn_stranger = || {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (leader - 1).to_string())
            .expect("write ns_last_pid");
        support::marked(&marker, "sleep", &["1000"])
            .process_group(0)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn the stranger")
    };
    let mut stranger = spawn_stranger();
    for _ in 0..50 {
        if i32::try_from(stranger.id()).ok() == Some(leader) {
            break;
        }
        // Our own child, by pid.
        let _ = stranger.kill();
        let _ = stranger.wait();
        stranger = spawn_stranger();
    }
    let pid = i32::try_from(stranger.id()).expect("pid");
    println!("STRANGER {pid}");
    println!("REUSED {}", pid == leader);
    // The witness: the number names the stranger's group now, so a bare `kill(-pgid)` of
    // the group's number would reach it (signal 0 only asks).
    println!(
        "WITNESS {}",
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(leader), None).is_ok()
    );
    let _ = std::io::stdout().flush();
    std::mem::forget(group);
    std::mem::forget(stranger);
    // The lifeline's atexit hook: the group is still registered.
    std::process::exit(0);
}

/// The lifeline never signals a group by its number once the leader is no longer pinned:
/// after the supervisor's death, the leader's reap and the reuse of its number by a
/// stranger's group, the test binary's exit (which runs the lifeline's `atexit` hook) leaves
/// the stranger alone. The witness shows the number names the stranger's group, so the
/// bare `kill(-pgid)` the lifeline made before would have killed it.
#[test]
fn the_lifeline_never_signals_a_recycled_number() {
    if !supervised_available() {
        return;
    }
    let marker = support::marker("lifeline-reuse");
    let out = support::run_sandboxed(&marker, "lifeline-parent", &[], Duration::from_secs(60));
    support::assert_no_leaks(&marker);
    let Some(out) = support::ran_in_sandbox(out, "pid-reuse") else {
        return;
    };
    assert_eq!(out.one("REUSED"), "true", "{:#?}", out.lines);
    assert_eq!(out.one("WITNESS"), "true", "{:#?}", out.lines);
    assert_eq!(out.one("STRANGER_ALIVE"), "true", "{:#?}", out.lines);
}

// ---- switches --------------------------------------------------------------------------

/// Spawns a `Supervised` group with whatever `PGROUP_SUPERVISOR_PROGRAM` says and prints
/// the outcome (`OUTCOME`).
fn bad_switch_role(_logs: support::Logs<'_>) -> i32 {
    let marker = env::var(support::MARKER_VAR).expect("marker");
    let spawned = Builder::new()
        .containment(Containment::Supervised)
        .spawn(&mut support::marked(&marker, "sleep", &["1000"]));
    match spawned {
        Ok(group) => {
            println!("OUTCOME spawned");
            drop(group);
        }
        Err(e) => println!("OUTCOME {:?} {e}", e.kind()),
    }
    0
}

/// `PGROUP_SUPERVISOR_PROGRAM` takes `0`, `false` and `off` in any case; any other value is
/// an error that names the variable and the value, and starts nothing.
#[test]
fn a_bad_supervisor_switch_is_a_clear_error() {
    if !supervised_available() {
        return;
    }
    for (value, spawned) in [
        ("False", true),
        ("0", true),
        ("OFF", true),
        ("maybe", false),
    ] {
        let marker = support::marker("switch");
        let mut cmd = support::role_command("bad-switch");
        cmd.env(support::MARKER_VAR, &marker)
            .env("PGROUP_SUPERVISOR_PROGRAM", value)
            .stdout(Stdio::piped());
        let out = support::run_collecting(cmd, Duration::from_secs(60));
        let outcome = out.one("OUTCOME");
        if spawned {
            assert_eq!(outcome, "spawned", "{value}");
        } else {
            assert!(
                outcome.starts_with("InvalidInput")
                    && outcome.contains("PGROUP_SUPERVISOR_PROGRAM")
                    && outcome.contains("maybe"),
                "{value}: {outcome}"
            );
        }
        support::assert_no_leaks(&marker);
    }
}
