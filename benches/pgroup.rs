//! The benchmarks of issue 6, each with its comparison in the same group, measured under
//! the conditions: at least 300 unrelated idle processes alive, and an ancestor
//! chain at least 5 nested shells deep (see `support`). `cargo bench -p pgroup-benches`
//! runs them; `cargo run --release -p pgroup-benches --example report` prints the same
//! figures as a markdown table. (They are the package `pgroup-benches`, benches/Cargo.toml,
//! so that the library's own tests and examples never build criterion or process-wrap.)

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use pgroup::{check_pgid, safe_killpg, Containment, Signal};

mod support;

/// The guard's allowed path followed by the signal, against a bare `killpg` of the same
/// group (SIGCONT to a `sleep` the bench spawned: harmless).
fn guard(c: &mut Criterion) {
    let target = support::SignalTarget::spawn().expect("spawn the signal target");
    let pgid = target.pgid;
    let mut group = c.benchmark_group("guard");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("safe_killpg(SIGCONT)", |b| {
        b.iter(|| {
            let delivery = safe_killpg(black_box(pgid), Signal::SIGCONT, "bench").unwrap();
            assert!(delivery.is_sent());
        });
    });
    group.bench_function("bare killpg(SIGCONT)", |b| {
        b.iter(|| target.bare_killpg_cont().unwrap());
    });
    group.bench_function("check_pgid (decision only)", |b| {
        b.iter(|| check_pgid(black_box(pgid)).unwrap());
    });
    group.finish();
    drop(target);
}

/// Spawning `sleep` and tearing it down: ours (grace zero, and the default grace for a
/// child that exits on SIGTERM) against the raw std cycle and process-wrap.
fn spawn_teardown(c: &mut Criterion) {
    let mut group = c.benchmark_group("spawn_teardown");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));
    group.bench_function("raw: process_group(0), killpg(KILL), wait", |b| {
        b.iter(|| support::raw_cycle().unwrap());
    });
    group.bench_function("ours: SpawnedGroup, grace 0", |b| {
        b.iter(|| support::ours_grace_zero().unwrap());
    });
    group.bench_function("process-wrap: ProcessGroup, kill", |b| {
        b.iter(|| support::process_wrap_cycle().unwrap());
    });
    group.bench_function("ours: SpawnedGroup, default grace, exits on TERM", |b| {
        b.iter(|| support::ours_default_grace().unwrap());
    });
    group.finish();
}

/// Spawn and teardown of `sleep 1000` in each containment tier, side by side: grace 0, and
/// the default grace for a child that exits on SIGTERM. `examples/report.rs` turns these
/// into ratios to the Group tier and picks the default tier by the 2x rule. A tier that
/// cannot run here (`Namespace` without root or user namespaces) is skipped with a note.
fn containment_tiers(c: &mut Criterion) {
    let mut group = c.benchmark_group("containment_tiers");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for (variant, default_grace) in [("grace 0", false), ("default grace, exits on TERM", true)] {
        for (tier, name) in support::TIERS {
            if let Err(e) = support::tier_cycle(tier, default_grace) {
                assert!(tier != Containment::Group, "the Group tier must run: {e}");
                println!("containment_tiers/{variant}/{name}: skipped, cannot run here: {e}");
                continue;
            }
            group.bench_function(BenchmarkId::new(variant, name), |b| {
                b.iter(|| support::tier_cycle(tier, default_grace).unwrap());
            });
        }
    }
    group.finish();
}

/// Teardown of a child that ignores SIGTERM with a 200 ms grace period, against a plain
/// 200 ms sleep of this thread (the timer's own overshoot).
fn grace_overshoot(c: &mut Criterion) {
    let grace = Duration::from_millis(200);
    let mut group = c.benchmark_group("ignores_term_grace_200ms");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("ours: shutdown", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| support::ignored_term_teardown(grace).unwrap())
                .sum()
        });
    });
    group.bench_function("thread::sleep(200 ms)", |b| {
        b.iter(|| std::thread::sleep(grace));
    });
    group.finish();
}

/// Teardown of `fixtures/wide_tree.sh`: 100 processes that exit on SIGTERM, timed from
/// when all of them run, against the floor: a raw `killpg(SIGTERM)` until all are gone.
fn tree(c: &mut Criterion) {
    let mut group = c.benchmark_group("tree_100");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("ours: shutdown, default grace", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| support::tree_teardown().unwrap()).sum());
    });
    group.bench_function("floor: raw killpg(TERM) until all gone", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| support::tree_raw_floor().unwrap()).sum());
    });
    group.finish();
}

/// Many groups alive at once, spawned and dropped across several threads: the time per
/// group (criterion's throughput) should stay flat as the count grows.
fn many_groups(c: &mut Criterion) {
    let mut group = c.benchmark_group("many_groups_4_threads");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(3));
    for n in support::MANY_GROUPS {
        group.throughput(Throughput::Elements(u64::try_from(n).unwrap()));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let cycle = support::many_groups(n, support::MANY_THREADS).unwrap();
                    total += started.elapsed();
                    assert!(cycle.threads_alive <= cycle.threads_before, "{cycle:?}");
                }
                total
            });
        });
    }
    group.finish();
}

fn main() {
    support::reexec_under_nested_shells();
    let depth = support::verify_depth();
    let idle = support::IdleProcesses::start().expect("start the idle processes");
    println!(
        "pgroup benches on {}: {} processes alive ({} idle ones started here), \
         {depth} ancestors ({} nested sh), load {}, {} MiB resident (the supervised tiers \
         fork this process, so their cost grows with it)",
        support::machine_line(),
        support::processes_alive(),
        idle.len(),
        support::MIN_DEPTH,
        support::load_average(),
        support::rss_kib() / 1024,
    );

    let mut c = Criterion::default().configure_from_args();
    guard(&mut c);
    spawn_teardown(&mut c);
    containment_tiers(&mut c);
    grace_overshoot(&mut c);
    tree(&mut c);
    many_groups(&mut c);
    c.final_summary();

    drop(idle);
    let leaked = support::leaked_processes();
    assert!(
        leaked.is_empty(),
        "processes leaked by the benches: {leaked:?}"
    );
}
