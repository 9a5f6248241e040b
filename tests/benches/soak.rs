//! Seeds per hour of `simvm soak` with one job and with two, and the ratio.
//!
//! Runs the release `simvm soak` on a scenario (default tests/scenarios/coin.toml: one machine,
//! one short command, about half of the seeds failing) over `SIMVM_BENCH_SEEDS` seeds (default
//! 12), with `--jobs 1` and then `--jobs 2`, no determinism spot checks, and times each soak as a
//! user would see it: the whole command, image check and every child's start included. The
//! image comes from the cache as in ordinary use (each child's `simvm run` checks it with
//! guest-images/build.sh). The first soak also warms the machine template if it is not cached.
//!
//! Run: `cargo build --release -p simvm && cargo bench -p simvm-tests --bench soak`.
//! `SIMVM_BENCH_SCENARIO` names another scenario (examples/demo.toml: the three-machine demo,
//! about a minute per seed here), `SIMVM_BENCH_JOBS` the second job count (default 2).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use simvm_tests::{env_u64, release_simvm_bin, temp_dir};

struct Soak {
    wall: Duration,
    /// The closing `N passed, N failed` line.
    tally: String,
}

fn soak(bin: &Path, scenario: &Path, seeds: u64, jobs: u64, out: &Path) -> Soak {
    let started = Instant::now();
    let output = Command::new(bin)
        .arg("soak")
        .arg(scenario)
        .args([
            "--seeds",
            &format!("1-{seeds}"),
            "--jobs",
            &jobs.to_string(),
        ])
        .args(["--determinism-check", "0", "--out"])
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .expect("run simvm soak");
    let wall = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tally = stdout.lines().last().unwrap_or_default().to_string();
    // Failing seeds are the scenario's business; a simvm failure spoils the figures.
    assert!(
        tally.ends_with(" failed")
            && !stdout.contains("SIMVM-ERROR")
            && !stdout.contains("NONDETERMINISTIC"),
        "the soak did not finish cleanly ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Soak { wall, tally }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("soak: benchmark");
        return;
    }
    let bin = release_simvm_bin();
    let scenario = std::env::var_os("SIMVM_BENCH_SCENARIO")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/coin.toml"));
    let seeds = env_u64("SIMVM_BENCH_SEEDS", 12);
    let more = env_u64("SIMVM_BENCH_JOBS", 2);
    let out = temp_dir("soak-bench");

    let per_hour = |s: &Soak| seeds as f64 * 3600.0 / s.wall.as_secs_f64();
    let runs: Vec<(u64, Soak)> = [1, more]
        .into_iter()
        .map(|jobs| (jobs, soak(&bin, &scenario, seeds, jobs, &out)))
        .collect();
    let _ = std::fs::remove_dir_all(&out);

    println!(
        "{} seeds of {}, {} CPUs",
        seeds,
        scenario.display(),
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    println!(
        "{:<8} {:>10} {:>12} {:>14}  result",
        "jobs", "wall s", "s/seed", "seeds/hour"
    );
    for (jobs, s) in &runs {
        println!(
            "{:<8} {:>10.1} {:>12.2} {:>14.0}  {}",
            jobs,
            s.wall.as_secs_f64(),
            s.wall.as_secs_f64() / seeds as f64,
            per_hour(s),
            s.tally
        );
    }
    if let [(_, one), (jobs, many)] = runs.as_slice() {
        println!(
            "--jobs {jobs} gives {:.2}x the seeds per hour of --jobs 1",
            per_hour(many) / per_hour(one)
        );
    }
}
