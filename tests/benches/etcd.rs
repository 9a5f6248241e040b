//! A real service's speed under simvm: `examples/etcd-cluster.toml` (three etcd 3.4 members and
//! an etcdctl client putting a key a second), the same seed with the guest tunings off (as guests
//! ran before any existed: the run-time tunings off, the compact kernel, `build.sh
//! --compact-kernel`, and the guests clearing their own pages) and on, in one run.
//!
//! Figures per side: wall time of a cold boot of one etcd machine (no template); wall time to the
//! client's "cluster up" (starting four machines from their templates, etcd's start and the first
//! election; a short run before it builds the templates not cached yet, so they are not in the
//! figure); then the steady state from "cluster up" to the end: virtual seconds per wall minute,
//! and puts that succeeded. Ratios on/off.
//!
//! Run: `cargo bench -p simvm-tests --bench etcd`. Environment: `SIMVM_BENCH_SEED` (default 1),
//! `SIMVM_BENCH_UNTIL` (virtual seconds per run, default 40), `SIMVM_BENCH_ONLY` (`on` or `off`:
//! one side only).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use simvm_tests::{env_u64, ConsoleLine};
use simvm_vmm::image;
use simvm_vmm::page_work::PageWork;
use simvm_vmm::scenario::Scenario;
use simvm_vmm::simulation::Simulation;
use simvm_vmm::tuning::GuestTuning;

/// What one side of the benchmark runs with.
struct Side {
    tuning: GuestTuning,
    /// Replaces the images' kernel if given (the compact kernel).
    kernel: Option<PathBuf>,
    page_work: PageWork,
}

/// Wall time of a cold boot (no template) of one etcd machine to its command, `true`.
fn cold_boot(side: &Side, seed: u64) -> Duration {
    let scenario = Scenario::parse(
        "[[machine]]\nname = \"m1\"\nrecipe = \"etcd\"\nmemory = \"384M\"\ncommand = \"true\"\n",
        "cold boot",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let simulation = with_images(
        Simulation {
            cold: true,
            ..Simulation::new(scenario, seed)
        },
        side,
    );
    let started = Instant::now();
    let outcome = simulation
        .run(&mut |_| {})
        .unwrap_or_else(|e| panic!("the cold boot failed: {e}"));
    assert!(
        simulation.passed(&outcome),
        "the cold boot's command failed"
    );
    started.elapsed()
}

/// `simulation` with `side`'s settings and its machines' images built, their kernel replaced by
/// `side`'s if it has one.
fn with_images(simulation: Simulation, side: &Side) -> Simulation {
    let mut simulation = Simulation {
        tuning: side.tuning,
        page_work: side.page_work,
        ..simulation
    }
    .with_built_images()
    .unwrap_or_else(|e| panic!("building the etcd image: {e}"));
    if let Some(kernel) = &side.kernel {
        for image in &mut simulation.images {
            image.kernel = kernel.to_path_buf();
        }
    }
    simulation
}

/// How long the run that builds the templates goes on after its last machine's seeded start.
const WARM_UP_NS: u64 = 100_000_000;

/// Starts `scenario`'s machines once, briefly, so that templates not cached yet are built here
/// and the timed run starts its machines from them.
fn warm_templates(side: &Side, scenario: &Scenario, seed: u64) {
    let simulation = with_images(
        Simulation {
            until_ns: Some(scenario.start_spread_ns + WARM_UP_NS),
            ..Simulation::new(scenario.clone(), seed)
        },
        side,
    );
    simulation
        .run(&mut |_| {})
        .unwrap_or_else(|e| panic!("starting the machines to build their templates: {e}"));
}

struct Figures {
    /// A cold boot of one etcd machine.
    boot: Duration,
    /// Wall time from the start of the run to "cluster up", and its virtual time.
    up_wall: Duration,
    up_virtual: Duration,
    /// Wall and virtual time from "cluster up" to the end of the run.
    steady_wall: Duration,
    steady_virtual: Duration,
    puts_ok: usize,
    puts_failed: usize,
}

impl Figures {
    fn virtual_per_wall_minute(&self) -> f64 {
        self.steady_virtual.as_secs_f64() / self.steady_wall.as_secs_f64() * 60.0
    }
}

/// One side's cold boot and run.
fn run(side: &Side, seed: u64, until_s: u64) -> Figures {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/etcd-cluster.toml");
    let scenario = Scenario::load_with_until(&path, Some(until_s * 1_000_000_000))
        .unwrap_or_else(|e| panic!("{e}"));
    let boot = cold_boot(side, seed);
    warm_templates(side, &scenario, seed);
    // The run ends at `until_s` whatever the scenario's own `until` says.
    let simulation = with_images(
        Simulation {
            until_ns: Some(until_s * 1_000_000_000),
            ..Simulation::new(scenario, seed)
        },
        side,
    );
    let started = Instant::now();
    let mut up: Option<(Instant, Duration)> = None;
    let (mut ok, mut failed) = (0, 0);
    let outcome = simulation
        .run(&mut |raw| {
            let Some(line) = ConsoleLine::parse(raw, started.elapsed()) else {
                return;
            };
            if line.text == "cluster up" && up.is_none() {
                up = Some((Instant::now(), line.vtime));
            } else if line.text.starts_with("put ") {
                if line.text.ends_with(" ok") {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
        })
        .unwrap_or_else(|e| panic!("the run failed: {e}"));
    let end = Instant::now();
    assert!(simulation.passed(&outcome), "the etcd scenario failed");
    let (up_at, up_virtual) = up.expect("the client never saw the cluster up");
    Figures {
        boot,
        up_wall: up_at - started,
        up_virtual,
        steady_wall: end - up_at,
        steady_virtual: Duration::from_secs(until_s).saturating_sub(up_virtual),
        puts_ok: ok,
        puts_failed: failed,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("etcd: benchmark");
        return;
    }
    let seed = env_u64("SIMVM_BENCH_SEED", 1);
    let until = env_u64("SIMVM_BENCH_UNTIL", 40);
    let only = std::env::var("SIMVM_BENCH_ONLY").unwrap_or_default();
    let mut sides = Vec::new();
    for (name, tuning, compact, page_work) in [
        ("off", GuestTuning::NONE, true, PageWork::Guest),
        (
            "on",
            GuestTuning::default(),
            false,
            PageWork::for_this_host(),
        ),
    ] {
        if only.is_empty() || only == name {
            let kernel = compact.then(|| {
                image::compact_kernel()
                    .unwrap_or_else(|e| panic!("building the compact kernel: {e}"))
            });
            let side = Side {
                tuning,
                kernel,
                page_work,
            };
            let figures = run(&side, seed, until);
            print_side(name, &figures);
            sides.push(figures);
        }
    }
    if let [off, on] = &sides[..] {
        println!(
            "on / off: cold boot {:.2}x faster; to cluster up {:.2}x faster; steady state {:.2}x \
             the virtual seconds per wall minute",
            off.boot.as_secs_f64() / on.boot.as_secs_f64(),
            off.up_wall.as_secs_f64() / on.up_wall.as_secs_f64(),
            on.virtual_per_wall_minute() / off.virtual_per_wall_minute()
        );
    }
}

fn print_side(name: &str, f: &Figures) {
    println!(
        "tuning {name}: cold boot of an etcd machine {:.1} s wall; cluster up after {:.1} s wall \
         ({:.2} s virtual); steady state {:.2} virtual s in {:.1} s wall = {:.2} virtual s per \
         wall minute; puts {} ok, {} failed",
        f.boot.as_secs_f64(),
        f.up_wall.as_secs_f64(),
        f.up_virtual.as_secs_f64(),
        f.steady_virtual.as_secs_f64(),
        f.steady_wall.as_secs_f64(),
        f.virtual_per_wall_minute(),
        f.puts_ok,
        f.puts_failed
    );
}
