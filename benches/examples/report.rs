//! The figures of issue 6 as a markdown table for the README:
//! `cargo run --release -p pgroup-benches --example report`.
//!
//! It measures under the same conditions as `cargo bench -p pgroup-benches` (at least 300
//! unrelated idle processes alive, 5 nested shells above it) and with the same cycles, which
//! live in `benches/support`. Each comparison is measured interleaved with ours, pair by
//! pair and in alternating order, so that a burst of load on the machine hits both sides
//! alike.
//! Every figure is a median.

use std::io;
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use pgroup::{safe_killpg, Signal};

#[path = "../support/mod.rs"]
mod support;

/// Signals per sample of the guard row: one sample is the mean of this many calls.
const GUARD_BATCH: u32 = 64;
const GUARD_SAMPLES: usize = 201;
const SPAWN_PAIRS: usize = 301;
const GRACE_RUNS: usize = 11;
const TREE_RUNS: usize = 21;
const MANY_RUNS: usize = 5;
/// Rounds of the tier rows: each round runs one cycle of every tier, in rotated order.
const TIER_ROUNDS: usize = 101;
/// The rule for the crate's default tier: the strongest tier whose spawn plus teardown costs
/// at most this many times the Group tier's, with grace 0 and with the default grace.
const DEFAULT_TIER_MAX_RATIO: f64 = 2.0;
/// The target for the `Supervised` tier: at most this many times the Group tier's wall time
/// and CPU time per spawn plus teardown, in both grace settings.
const SUPERVISED_TARGET: f64 = 1.5;
/// The resident sizes of the sweep, in MiB (the first is the report as it is, about 2 MiB).
const SWEEP_MIB: [i64; 3] = [2, 64, 256];
/// Rounds per size of the sweep: each round runs one cycle of every variant, rotated.
const SWEEP_ROUNDS: usize = 41;
/// Processes per setting of the lifeline row, and cycles measured in each.
const LIFELINE_PROCESSES: usize = 3;
const LIFELINE_CYCLES: usize = 301;
/// The environment variable that makes the report measure only the lifeline row's cycle
/// and print its median in nanoseconds.
const LIFELINE_MODE: &str = "PGROUP_REPORT_LIFELINE_ONLY";

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{:.2} µs", d.as_secs_f64() * 1e6)
    } else if ns < 10_000_000 {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**no**"
    }
}

/// Medians of `ours` and `theirs`, run in `pairs` interleaved pairs whose order alternates,
/// and the median of the per-pair ratios (robust to the load drifting during the run).
fn paired(
    pairs: usize,
    mut ours: impl FnMut() -> io::Result<()>,
    mut theirs: impl FnMut() -> io::Result<()>,
) -> io::Result<Paired> {
    // One of each first, unmeasured: page cache, lazy symbol binding.
    ours()?;
    theirs()?;
    let mut a = Vec::with_capacity(pairs);
    let mut b = Vec::with_capacity(pairs);
    for i in 0..pairs {
        for side in [i % 2, 1 - i % 2] {
            let started = Instant::now();
            if side == 0 {
                ours()?;
                a.push(started.elapsed());
            } else {
                theirs()?;
                b.push(started.elapsed());
            }
        }
    }
    let mut ratios: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| x.as_secs_f64() / y.as_secs_f64())
        .collect();
    ratios.sort_unstable_by(f64::total_cmp);
    Ok(Paired {
        ours: median(a),
        theirs: median(b),
        ratio: ratios[ratios.len() / 2],
    })
}

struct Paired {
    ours: Duration,
    theirs: Duration,
    ratio: f64,
}

struct Row {
    name: &'static str,
    ours: String,
    comparison: String,
    ratio: String,
    met: &'static str,
}

fn ratio_row(name: &'static str, comparison: &str, measured: &Paired, target: f64) -> Row {
    Row {
        name,
        ours: fmt(measured.ours),
        comparison: format!("{}: {}", comparison, fmt(measured.theirs)),
        ratio: format!("{:.3} (target ≤ {target:.2})", measured.ratio),
        met: met(measured.ratio <= target),
    }
}

fn guard_row() -> io::Result<Row> {
    let target = support::SignalTarget::spawn()?;
    let pgid = target.pgid;
    let batch = |f: &mut dyn FnMut() -> io::Result<()>| -> io::Result<Duration> {
        let started = Instant::now();
        for _ in 0..GUARD_BATCH {
            f()?;
        }
        Ok(started.elapsed() / GUARD_BATCH)
    };
    let mut ours = || -> io::Result<()> {
        let delivery = safe_killpg(pgid, Signal::SIGCONT, "report")?;
        assert!(delivery.is_sent(), "{delivery:?}");
        Ok(())
    };
    let mut bare = || -> io::Result<()> { Ok(target.bare_killpg_cont()?) };
    // The guard's floor: the very syscalls its allowed path makes (getpgrp, getsid, getppid,
    // getpgid of the parent, getpgid of each ancestor above the parent that does not lead
    // its session), issued bare, then the signal. What the guard adds beyond this is its
    // own logic; this much is the price of reading every rule live.
    let asked = ancestors_asked();
    let mut floor = || -> io::Result<()> {
        std::hint::black_box(nix::unistd::getpgrp());
        std::hint::black_box(nix::unistd::getsid(None)?);
        let parent = nix::unistd::getppid();
        std::hint::black_box(nix::unistd::getpgid(Some(parent))?);
        for &pid in &asked {
            std::hint::black_box(nix::unistd::getpgid(Some(Pid::from_raw(pid)))?);
        }
        Ok(target.bare_killpg_cont()?)
    };
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    batch(&mut ours)?;
    batch(&mut bare)?;
    batch(&mut floor)?;
    for i in 0..GUARD_SAMPLES {
        if i % 2 == 0 {
            a.push(batch(&mut ours)?);
            b.push(batch(&mut bare)?);
            c.push(batch(&mut floor)?);
        } else {
            c.push(batch(&mut floor)?);
            b.push(batch(&mut bare)?);
            a.push(batch(&mut ours)?);
        }
    }
    drop(target);
    let (ours, bare, floor) = (median(a), median(b), median(c));
    let syscalls = 4 + asked.len();
    Ok(Row {
        name: "guard decision (allowed) + signal",
        ours: fmt(ours),
        comparison: format!(
            "bare killpg: {}; its {syscalls} live reads bare + killpg: {}",
            fmt(bare),
            fmt(floor)
        ),
        ratio: format!(
            "{:.1}× bare; guard adds {} (target ≤ 2 µs in all), of which its {syscalls} \
             syscalls {} ({} each) and the rest {}",
            ours.as_secs_f64() / bare.as_secs_f64(),
            fmt(ours.saturating_sub(bare)),
            fmt(floor.saturating_sub(bare)),
            fmt(floor.saturating_sub(bare) / u32::try_from(syscalls).unwrap_or(u32::MAX)),
            fmt(ours.saturating_sub(floor))
        ),
        met: met(ours <= Duration::from_micros(2)),
    })
}

/// The ancestors above the parent whose group the guard asks with `getpgid` on every call:
/// those that do not lead their session (a session leader's group is its pid for life).
fn ancestors_asked() -> Vec<i32> {
    let read = |pid: i32| {
        procfs::process::Process::new(pid)
            .and_then(|p| p.stat())
            .ok()
    };
    let mut asked = Vec::new();
    let parent = nix::unistd::getppid().as_raw();
    let mut next = if parent > 1 {
        read(parent).map_or(0, |s| s.ppid)
    } else {
        0
    };
    while next > 0 {
        let Some(stat) = read(next) else { break };
        if stat.session != stat.pid {
            asked.push(stat.pid);
        }
        next = stat.ppid;
    }
    asked
}

fn grace_row() -> io::Result<Row> {
    let grace = Duration::from_millis(200);
    support::ignored_term_teardown(grace)?;
    let runs: Vec<Duration> = (0..GRACE_RUNS)
        .map(|_| support::ignored_term_teardown(grace))
        .collect::<io::Result<_>>()?;
    let worst = runs.iter().max().copied().unwrap_or_default();
    let ours = median(runs);
    let bound = grace + Duration::from_millis(1);
    Ok(Row {
        name: "`Group` tier: teardown, child ignores SIGTERM, grace 200 ms",
        ours: fmt(ours),
        comparison: "grace: 200.0 ms".to_owned(),
        ratio: format!(
            "overshoot {} (worst of {GRACE_RUNS}: {}; target ≤ 1 ms)",
            fmt(ours.saturating_sub(grace)),
            fmt(worst.saturating_sub(grace))
        ),
        met: met(ours <= bound),
    })
}

fn tree_row() -> io::Result<Row> {
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    support::tree_teardown()?;
    support::tree_raw_floor()?;
    for i in 0..TREE_RUNS {
        if i % 2 == 0 {
            ours.push(support::tree_teardown()?);
            floor.push(support::tree_raw_floor()?);
        } else {
            floor.push(support::tree_raw_floor()?);
            ours.push(support::tree_teardown()?);
        }
    }
    let worst = ours.iter().max().copied().unwrap_or_default();
    let (ours, floor) = (median(ours), median(floor));
    Ok(Row {
        name: "`Group` tier: teardown, 100-process tree, exits on SIGTERM",
        ours: fmt(ours),
        comparison: format!("floor, raw killpg(TERM) until all gone: {}", fmt(floor)),
        ratio: format!(
            "{:.2}× floor; worst of {TREE_RUNS}: {} (target ≤ 10 ms)",
            ours.as_secs_f64() / floor.as_secs_f64(),
            fmt(worst)
        ),
        met: met(ours <= Duration::from_millis(10)),
    })
}

/// What the tier rows measured for one tier.
struct TierFigures {
    name: &'static str,
    /// The median of the tier's cycles.
    median: Duration,
    /// The median of the per-round ratios to the Group tier's cycle of the same round.
    ratio: f64,
    /// The tier's median over the Group tier's median.
    ratio_of_medians: f64,
    /// A 95% confidence interval of `ratio`, from order statistics (no assumption about
    /// the distribution): the rounds' own scatter, not the drift between runs.
    ratio_ci: (f64, f64),
    /// The median CPU time of a cycle: this process's and that of every descendant it
    /// reaped (the leader, the supervisor and what they reaped). Unlike wall time, it does
    /// not include waiting for a CPU, so it moves less with the machine's load.
    cpu: Duration,
}

/// CPU time (user and system) of this process and of its reaped descendants so far.
fn cpu_time() -> Duration {
    use nix::libc;
    let mut total = Duration::ZERO;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage(2) only writes the `rusage` it is given, a zeroed plain struct.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            if libc::getrusage(who, &mut usage) != 0 {
                return total;
            }
            usage
        };
        for tv in [usage.ru_utime, usage.ru_stime] {
            let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
            let micros = u64::try_from(tv.tv_usec).unwrap_or(0);
            total += Duration::from_secs(secs) + Duration::from_micros(micros);
        }
    }
    total
}

/// The median of `sorted` and a 95% confidence interval for it: the order statistics at
/// ranks n/2 ± 0.98·√n (the binomial's normal approximation).
fn median_ci(sorted: &[f64]) -> (f64, f64, f64) {
    let n = sorted.len();
    let half_width = 0.98 * f64::sqrt(n as f64);
    let mid = n as f64 / 2.0;
    let rank = |r: f64| -> usize { (r.round().max(0.0) as usize).min(n - 1) };
    (
        sorted[n / 2],
        sorted[rank(mid - half_width - 1.0)],
        sorted[rank(mid + half_width)],
    )
}

/// The tier rows of one variant (grace 0, or the default grace): every tier of
/// `support::TIERS` that can run here, measured in [`TIER_ROUNDS`] rounds. Each round runs
/// one cycle of each tier, in an order rotated from round to round, so that every tier
/// takes every position equally often and a burst of load hits all alike. A tier that
/// cannot run here (`Namespace` without root or user namespaces) is reported and left out;
/// the Group tier must run.
fn tier_rows(default_grace: bool) -> io::Result<(Vec<TierFigures>, Vec<String>)> {
    let mut tiers = Vec::new();
    let mut unavailable = Vec::new();
    for (tier, name) in support::TIERS {
        // One cycle first, unmeasured: page cache, lazy symbol binding; and the probe.
        match support::tier_cycle(tier, default_grace) {
            Ok(_) => tiers.push((tier, name)),
            Err(e) if tier != pgroup::Containment::Group => {
                unavailable.push(format!("{name}: {e}"));
            }
            Err(e) => return Err(e),
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(TIER_ROUNDS); tiers.len()];
    let mut cpu: Vec<Vec<Duration>> = vec![Vec::with_capacity(TIER_ROUNDS); tiers.len()];
    for round in 0..TIER_ROUNDS {
        for k in 0..tiers.len() {
            let i = (round + k) % tiers.len();
            let cpu_before = cpu_time();
            let started = Instant::now();
            support::tier_cycle(tiers[i].0, default_grace)?;
            samples[i].push(started.elapsed());
            cpu[i].push(cpu_time().saturating_sub(cpu_before));
        }
    }
    let group = samples[0].clone();
    let group_median = median(group.clone());
    let figures = tiers
        .iter()
        .zip(samples)
        .zip(cpu)
        .map(|((&(_, name), cycles), cpu)| {
            let mut ratios: Vec<f64> = cycles
                .iter()
                .zip(&group)
                .map(|(x, y)| x.as_secs_f64() / y.as_secs_f64())
                .collect();
            ratios.sort_unstable_by(f64::total_cmp);
            let (ratio, low, high) = median_ci(&ratios);
            let tier_median = median(cycles);
            TierFigures {
                name,
                median: tier_median,
                ratio,
                ratio_of_medians: tier_median.as_secs_f64() / group_median.as_secs_f64(),
                ratio_ci: (low, high),
                cpu: median(cpu),
            }
        })
        .collect();
    Ok((figures, unavailable))
}

fn tier_table_rows(variant: &'static str, figures: &[TierFigures]) -> Vec<Row> {
    let group = figures[0].median;
    let group_cpu = figures[0].cpu.as_secs_f64();
    figures
        .iter()
        .map(|t| {
            let cpu = t.cpu.as_secs_f64() / group_cpu;
            let supervised = t.name == "Supervised";
            let target = if supervised {
                format!("; target ≤ {SUPERVISED_TARGET:.1} in wall and CPU")
            } else {
                String::new()
            };
            Row {
                name: variant,
                ours: format!("{}: {}", t.name, fmt(t.median)),
                comparison: format!("Group: {}", fmt(group)),
                ratio: format!(
                    "{:.2}× Group (ratio of medians {:.2}), CPU {cpu:.2}×; 2× rule: ≤ \
                     {DEFAULT_TIER_MAX_RATIO:.2}{target}",
                    t.ratio, t.ratio_of_medians
                ),
                met: match (supervised, t.ratio <= DEFAULT_TIER_MAX_RATIO) {
                    (true, _) if t.ratio <= SUPERVISED_TARGET && cpu <= SUPERVISED_TARGET => "yes",
                    (true, _) => "**no** (1.5× target)",
                    (false, true) => "within 2×",
                    (false, false) => "**over 2×**",
                },
            }
        })
        .collect()
}

/// The strongest tier whose ratio to the Group tier is at most [`DEFAULT_TIER_MAX_RATIO`]
/// with grace 0 and with the default grace (the figures are weakest first, in the same
/// order in both, and the Group tier, ratio 1, always qualifies), as "Name (ratios r0, r1)",
/// followed by the first stronger tier the rule turned down, if any.
fn default_tier(zero: &[TierFigures], default: &[TierFigures]) -> (&'static str, String) {
    let within = |i: usize| {
        zero[i].ratio <= DEFAULT_TIER_MAX_RATIO
            && default
                .iter()
                .find(|t| t.name == zero[i].name)
                .is_some_and(|t| t.ratio <= DEFAULT_TIER_MAX_RATIO)
    };
    let chosen = (0..zero.len()).rev().find(|&i| within(i)).unwrap_or(0);
    let ratio_in = |name: &str| {
        default
            .iter()
            .find(|t| t.name == name)
            .map_or(f64::NAN, |t| t.ratio)
    };
    let t = &zero[chosen];
    let mut text = format!(
        "{} (ratios {:.2} at grace 0, {:.2} at the default grace",
        t.name,
        t.ratio,
        ratio_in(t.name)
    );
    if let Some(next) = zero.get(chosen + 1) {
        text.push_str(&format!(
            "; the next stronger tier, {}, costs {:.2}× and {:.2}×, over {DEFAULT_TIER_MAX_RATIO:.1}",
            next.name,
            next.ratio,
            ratio_in(next.name)
        ));
    }
    text.push(')');
    (t.name, text)
}

fn ratios_line(figures: &[TierFigures]) -> String {
    figures
        .iter()
        .skip(1)
        .map(|t| {
            format!(
                "{} {:.2} [{:.2}–{:.2}]",
                t.name, t.ratio, t.ratio_ci.0, t.ratio_ci.1
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn cpu_line(figures: &[TierFigures]) -> String {
    let group = figures[0].cpu.as_secs_f64();
    figures
        .iter()
        .map(|t| {
            format!(
                "{} {} ({:.2}×)",
                t.name,
                fmt(t.cpu),
                t.cpu.as_secs_f64() / group
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tiers whose confidence interval straddles the rule's line: with those, another run
/// may choose differently.
fn close_calls(figures: &[TierFigures]) -> Vec<&'static str> {
    figures
        .iter()
        .filter(|t| t.ratio_ci.0 <= DEFAULT_TIER_MAX_RATIO && DEFAULT_TIER_MAX_RATIO < t.ratio_ci.1)
        .map(|t| t.name)
        .collect()
}

/// The many-groups row and its own table, one line per group count.
fn many_rows() -> io::Result<(Row, Vec<String>)> {
    support::many_groups(8, support::MANY_THREADS)?;
    let mut lines = Vec::new();
    let mut per_group = Vec::new();
    let mut threads_ok = true;
    let mut rss_per_group = Vec::new();
    for n in support::MANY_GROUPS {
        let runs: Vec<support::ManyGroups> = (0..MANY_RUNS)
            .map(|_| support::many_groups(n, support::MANY_THREADS))
            .collect::<io::Result<_>>()?;
        let spawn = median(runs.iter().map(|r| r.spawn).collect());
        let teardown = median(runs.iter().map(|r| r.teardown).collect());
        let count = u32::try_from(n).map_err(io::Error::other)?;
        let mut rss: Vec<i64> = runs.iter().map(|r| r.rss_growth_kib).collect();
        rss.sort_unstable();
        let rss = rss[rss.len() / 2];
        let last = runs[runs.len() - 1];
        threads_ok &= runs.iter().all(|r| r.threads_alive <= r.threads_before);
        per_group.push((spawn + teardown) / count);
        rss_per_group.push(rss);
        lines.push(format!(
            "| {n} | {} | {} | {} | {} KiB | {} | {} → {} |",
            fmt(spawn),
            fmt(spawn / count),
            fmt(teardown / count),
            rss,
            last.fds_growth,
            last.threads_before,
            last.threads_alive,
        ));
    }
    let first = per_group[0].as_secs_f64();
    let last = per_group[per_group.len() - 1].as_secs_f64();
    let growth = last / first;
    // Linear in time: the cost per group at 256 is within 1.5× of that at 32. No thread per
    // group: with every group alive, the process has no more threads than before (the
    // spawning threads of the previous run may still be counted before).
    let ok = growth <= 1.5 && threads_ok;
    let row = Row {
        name: "256 groups alive at once, 4 threads, default tier",
        ours: format!("{} per group", fmt(per_group[per_group.len() - 1])),
        comparison: format!("32 groups: {} per group", fmt(per_group[0])),
        ratio: format!(
            "per-group time ×{growth:.2} from 32 to 256; threads while alive {} \
             (target: linear, no thread per group)",
            if threads_ok { "unchanged" } else { "grew" }
        ),
        met: met(ok),
    };
    Ok((row, lines))
}

/// The variants of the resident-size sweep: the tier, whether the supervised tiers may run
/// the supervisor program (`PGROUP_SUPERVISOR_PROGRAM=off` forces the forked supervisor),
/// and a name.
const SWEEP_VARIANTS: [(pgroup::Containment, bool, &str); 4] = [
    (pgroup::Containment::Group, true, "Group"),
    (pgroup::Containment::Supervised, true, "Supervised"),
    (
        pgroup::Containment::Supervised,
        false,
        "Supervised, forked supervisor (PGROUP_SUPERVISOR_PROGRAM=off)",
    ),
    (pgroup::Containment::Namespace, true, "Namespace"),
];

/// Grows this process to `mib` MiB resident (pages written, so that a fork must copy their
/// page-table entries) by adding to `ballast`.
fn grow_to(mib: i64, ballast: &mut Vec<Vec<u8>>) {
    let now = support::rss_kib() / 1024;
    if mib <= now {
        return;
    }
    let len = usize::try_from(mib - now).unwrap_or(0) << 20;
    let mut block = vec![0_u8; len];
    for i in (0..len).step_by(4096) {
        block[i] = 1;
    }
    std::hint::black_box(&block);
    ballast.push(block);
}

/// The resident-size sweep: spawn `sleep 1000` + teardown (grace 0) per variant, at each
/// size of [`SWEEP_MIB`], as table rows; the ratio is the median of per-round ratios to
/// the Group cycle of the same round.
fn sweep_rows() -> io::Result<Vec<Row>> {
    let mut ballast = Vec::new();
    let mut rows = Vec::new();
    let set_exec = |on: bool| support::set_supervisor_program(on);
    for mib in SWEEP_MIB {
        grow_to(mib, &mut ballast);
        let rss = support::rss_kib() / 1024;
        let mut available = Vec::new();
        for (i, (tier, exec, _)) in SWEEP_VARIANTS.iter().enumerate() {
            set_exec(*exec);
            if support::tier_cycle(*tier, false).is_ok() {
                available.push(i);
            }
        }
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); SWEEP_VARIANTS.len()];
        for round in 0..SWEEP_ROUNDS {
            for k in 0..available.len() {
                let i = available[(round + k) % available.len()];
                let (tier, exec, _) = SWEEP_VARIANTS[i];
                set_exec(exec);
                let started = Instant::now();
                support::tier_cycle(tier, false)?;
                samples[i].push(started.elapsed());
            }
        }
        set_exec(true);
        let group = samples[0].clone();
        for &i in available.iter().skip(1) {
            let mut ratios: Vec<f64> = samples[i]
                .iter()
                .zip(&group)
                .map(|(x, y)| x.as_secs_f64() / y.as_secs_f64())
                .collect();
            ratios.sort_unstable_by(f64::total_cmp);
            let (ratio, low, high) = median_ci(&ratios);
            rows.push(Row {
                name: "resident-size sweep: spawn `sleep 1000` + teardown, grace 0",
                ours: format!(
                    "{rss} MiB resident, {}: {}",
                    SWEEP_VARIANTS[i].2,
                    fmt(median(samples[i].clone()))
                ),
                comparison: format!("Group: {}", fmt(median(group.clone()))),
                ratio: format!(
                    "{ratio:.2}× Group (95%: {low:.2}–{high:.2}); target ≤ {SUPERVISED_TARGET}"
                ),
                met: if ratio <= SUPERVISED_TARGET {
                    "yes"
                } else {
                    "**no**"
                },
            });
        }
    }
    drop(ballast);
    Ok(rows)
}

/// In the lifeline mode: the median of [`LIFELINE_CYCLES`] Group grace-0 cycles, in ns.
fn lifeline_only() -> io::Result<()> {
    let mut samples = Vec::with_capacity(LIFELINE_CYCLES);
    support::ours_grace_zero()?;
    for _ in 0..LIFELINE_CYCLES {
        let started = Instant::now();
        support::ours_grace_zero()?;
        samples.push(started.elapsed());
    }
    println!("{}", median(samples).as_nanos());
    Ok(())
}

/// The lifeline's cost per spawn: this report re-run in [`LIFELINE_MODE`], alternately with
/// `PGROUP_LIFELINE=off` and on, [`LIFELINE_PROCESSES`] times each.
fn lifeline_row() -> io::Result<Row> {
    let exe = std::env::current_exe()?;
    let run = |setting: &str| -> io::Result<Duration> {
        let out = std::process::Command::new(&exe)
            .env(LIFELINE_MODE, "1")
            .env(pgroup::lifeline::ENV_VAR, setting)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let ns: u64 = text
            .trim()
            .parse()
            .map_err(|_| io::Error::other(format!("lifeline run said {text:?}")))?;
        Ok(Duration::from_nanos(ns))
    };
    let mut on = Vec::new();
    let mut off = Vec::new();
    for _ in 0..LIFELINE_PROCESSES {
        off.push(run("off")?);
        on.push(run("on")?);
    }
    let (on, off) = (median(on), median(off));
    let extra = on.as_secs_f64() - off.as_secs_f64();
    Ok(Row {
        name: "lifeline cost: `Group` tier, spawn `sleep` + teardown, grace 0, PGROUP_LIFELINE on vs off",
        ours: format!("on: {}", fmt(on)),
        comparison: format!("off: {}", fmt(off)),
        ratio: format!(
            "{:.3}× ({:+.1} µs per spawn; medians of {LIFELINE_PROCESSES} processes × \
             {LIFELINE_CYCLES} cycles)",
            on.as_secs_f64() / off.as_secs_f64(),
            extra * 1e6
        ),
        met: "(informative)",
    })
}

fn main() -> io::Result<()> {
    if std::env::var_os(LIFELINE_MODE).is_some() {
        return lifeline_only();
    }
    if std::env::var_os("PGROUP_REPORT_SWEEP_ONLY").is_some() {
        // Only the rows of issue 14: the resident-size sweep and the lifeline's cost.
        println!(
            "Machine: {}. Load average {} before.",
            support::machine_line(),
            support::load_average()
        );
        let mut rows = sweep_rows()?;
        rows.push(lifeline_row()?);
        println!("| what | ours (median) | comparison (median) | ratio / target | met? |");
        println!("| --- | --- | --- | --- | --- |");
        for row in &rows {
            println!(
                "| {} | {} | {} | {} | {} |",
                row.name, row.ours, row.comparison, row.ratio, row.met
            );
        }
        println!("Load average {} after.", support::load_average());
        return Ok(());
    }
    support::reexec_under_nested_shells();
    let depth = support::verify_depth();
    let idle = support::IdleProcesses::start()?;
    let alive = support::processes_alive();
    let load = support::load_average();
    eprintln!("measuring (about fifteen seconds)...");

    let mut rows = vec![guard_row()?];
    if std::env::var_os("PGROUP_REPORT_GUARD_ONLY").is_some() {
        // Only the guard's row, under the same 5 nested shells and idle processes.
        let row = &rows[0];
        println!(
            "{}: {} | {} | {}",
            row.name, row.ours, row.comparison, row.ratio
        );
        return Ok(());
    }
    let raw = support::raw_cycle;
    let pairs = paired(SPAWN_PAIRS, || support::ours_grace_zero().map(drop), raw)?;
    rows.push(ratio_row(
        "`Group` tier: spawn `sleep` + teardown, grace 0",
        "std process_group(0), killpg(KILL), wait",
        &pairs,
        1.05,
    ));
    let pairs = paired(SPAWN_PAIRS, || support::ours_default_grace().map(drop), raw)?;
    rows.push(ratio_row(
        "`Group` tier: spawn `sleep` + teardown, default grace, exits on TERM",
        "the same raw cycle",
        &pairs,
        1.2,
    ));
    let pairs = paired(
        SPAWN_PAIRS,
        || support::ours_grace_zero().map(drop),
        support::process_wrap_cycle,
    )?;
    rows.push(ratio_row(
        "`Group` tier: spawn `sleep` + teardown, grace 0",
        "process-wrap ProcessGroup, kill, wait",
        &pairs,
        1.0,
    ));
    let rss_kib = support::rss_kib();
    let (tiers_zero, mut unavailable) = tier_rows(false)?;
    rows.extend(tier_table_rows(
        "spawn `sleep 1000` + teardown, grace 0, per containment tier",
        &tiers_zero,
    ));
    let (tiers_default, unavailable_default) = tier_rows(true)?;
    unavailable.extend(unavailable_default);
    rows.extend(tier_table_rows(
        "spawn `sleep 1000` + teardown, default grace, exits on TERM, per containment tier",
        &tiers_default,
    ));
    rows.push(grace_row()?);
    rows.push(tree_row()?);
    rows.push(lifeline_row()?);
    rows.extend(sweep_rows()?);
    let (many, many_lines) = many_rows()?;
    rows.push(many);
    let load_after = support::load_average();

    let idle_count = idle.len();
    drop(idle);
    let leaked = support::leaked_processes();

    println!(
        "Machine: {}. {alive} processes alive ({} idle ones started by the report), \
         {depth} ancestors ({} nested `sh`). Load average {load} before, {load_after} after.",
        support::machine_line(),
        idle_count,
        support::MIN_DEPTH,
    );
    println!();
    println!("| what | ours (median) | comparison (median) | ratio / target | met? |");
    println!("| --- | --- | --- | --- | --- |");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            row.name, row.ours, row.comparison, row.ratio, row.met
        );
    }
    println!();
    let (_, chosen_text) = default_tier(&tiers_zero, &tiers_default);
    println!(
        "default tier by the 2x rule (within 2× of Group at grace 0 and at the default grace, \
         the child exiting on SIGTERM): {chosen_text}."
    );
    let close = close_calls(&tiers_zero);
    if !close.is_empty() {
        println!(
            "Close call: the 95% interval of the grace-0 ratio straddles 2.0 for {}, so \
             another run may choose differently.",
            close.join(", ")
        );
    }
    println!(
        "Wall-time ratios to the Group tier, medians of {TIER_ROUNDS} per-round ratios with \
         a 95% interval: grace 0: {}; default grace: {}.",
        ratios_line(&tiers_zero),
        ratios_line(&tiers_default),
    );
    println!(
        "CPU time per cycle (the report and every descendant it reaped; does not count \
         waiting for a CPU): grace 0: {}; default grace: {}.",
        cpu_line(&tiers_zero),
        cpu_line(&tiers_default),
    );
    println!(
        "Tier rows measured from the report's process, {} MiB resident. The supervised tiers \
         start their supervisor from a `vfork`-style spawner that runs std's spawn and then \
         execs the supervisor program (no copy of the test binary's page tables), so their \
         cost does not grow with the test binary's memory; with \
         PGROUP_SUPERVISOR_PROGRAM=off the supervisor is a fork of the test binary, whose \
         cost does: see the resident-size sweep rows.",
        rss_kib / 1024
    );
    for line in &unavailable {
        println!("Not measured, cannot run here: {line}.");
    }
    println!();
    println!(
        "Many groups, spawned and dropped by {} threads (median of {MANY_RUNS} runs; spawn \
         is until all are alive, teardown is dropping all with the default grace):",
        support::MANY_THREADS
    );
    println!();
    println!(
        "| groups | spawn all | spawn, wall time per group | teardown, wall time per group \
         | RSS growth | fds growth | threads before → all alive |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for line in many_lines {
        println!("{line}");
    }
    println!();
    println!(
        "pgroup {}. Medians of {GUARD_SAMPLES} samples of {GUARD_BATCH} signals (guard), \
         {SPAWN_PAIRS} interleaved pairs (spawn rows; the ratio is the median of the \
         per-pair ratios), {TIER_ROUNDS} rounds of all tiers in rotated order (tier rows; \
         the ratio is the median of the per-round ratios), {GRACE_RUNS} runs (grace), \
         {TREE_RUNS} interleaved pairs (tree).",
        env!("CARGO_PKG_VERSION")
    );
    if leaked.is_empty() {
        println!("Leak check: no process carrying this run's PGROUP_LEAK_MARKER is left alive.");
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "processes leaked by the report: {leaked:?}"
        )))
    }
}
