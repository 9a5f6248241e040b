//! Booting against starting from a machine template, in one run, on the built-in demo
//! scenario (`simvm run`: three machines, one seed).
//!
//! Three ways to start the same simulation through the library, as `simvm run` does:
//!
//! - cold: every machine boots its kernel (`--cold`);
//! - template, first use: an empty template cache, so the template is built (one boot), saved,
//!   and every machine starts from it;
//! - template, cached: the same cache again.
//!
//! Figures: wall time from the start of the run to every machine's READY (its command about to
//! start), the whole run's wall time, and the seeds per hour one core gets from it; each as a
//! ratio to cold. Run: `cargo bench -p simvm-tests --bench templates`. `SIMVM_BENCH_SEED` picks
//! the seed (default 5).

use std::path::Path;
use std::time::{Duration, Instant};

use simvm_tests::{env_u64, image, temp_dir};
use simvm_vmm::image::GuestImage;
use simvm_vmm::scenario::Scenario;
use simvm_vmm::simulation::Simulation;

struct Figures {
    /// Start of the run to the last machine's READY.
    ready: Duration,
    /// Start of the run to its end.
    total: Duration,
    start: String,
}

fn run(cold: bool, cache: &Path, seed: u64) -> Figures {
    let built = image(None);
    let simulation = Simulation {
        cold,
        cache_dir: cache.to_path_buf(),
        ..Simulation::new(Scenario::demo(), seed).with_image(GuestImage {
            kernel: built.kernel,
            initramfs: built.initramfs,
        })
    };
    let started = Instant::now();
    let outcome = simulation
        .run(&mut |_| {})
        .unwrap_or_else(|e| panic!("the demo run failed: {e}"));
    let total = started.elapsed();
    assert!(simulation.passed(&outcome), "the demo did not pass");
    // Everything before the run loop (building the world, the template) counts.
    let setup = total.saturating_sub(outcome.wall);
    let ready = outcome
        .machines
        .iter()
        .map(|m| m.ready_wall.expect("every machine reports READY"))
        .max()
        .unwrap_or_default();
    let start = match outcome.templates.first() {
        None => "booted".to_string(),
        Some(t) => match &t.origin {
            Ok(origin) => format!("template {} ({origin:?})", t.key),
            Err(reason) => format!("no template: {reason}"),
        },
    };
    Figures {
        ready: setup + ready,
        total,
        start,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("templates: benchmark");
        return;
    }
    let seed = env_u64("SIMVM_BENCH_SEED", 5);
    let cache = temp_dir("template-bench");
    let cold = run(true, &cache, seed);
    let first = run(false, &cache, seed);
    let cached = run(false, &cache, seed);
    let _ = std::fs::remove_dir_all(&cache);

    let per_hour = |f: &Figures| 3600.0 / f.total.as_secs_f64();
    println!("demo scenario (3 machines), seed {seed}, one core");
    println!(
        "{:<26} {:>12} {:>12} {:>14} {:>10}",
        "start", "to READY s", "run s", "seeds/hour", "vs cold"
    );
    for (name, f) in [
        ("cold (boot every machine)", &cold),
        ("template, first use", &first),
        ("template, cached", &cached),
    ] {
        println!(
            "{:<26} {:>12.2} {:>12.2} {:>14.1} {:>9.1}x",
            name,
            f.ready.as_secs_f64(),
            f.total.as_secs_f64(),
            per_hour(f),
            cold.ready.as_secs_f64() / f.ready.as_secs_f64().max(1e-9),
        );
    }
    println!(
        "cached start is {:.1}x faster than cold to READY; {:.1}x the seeds per hour",
        cold.ready.as_secs_f64() / cached.ready.as_secs_f64().max(1e-9),
        per_hour(&cached) / per_hour(&cold)
    );
    println!("first use: {}", first.start);
    println!("cached:    {}", cached.start);
}
