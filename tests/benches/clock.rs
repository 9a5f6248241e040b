//! What a guest's clock read costs: N `clock_gettime(CLOCK_MONOTONIC)` calls through the vDSO
//! against N `getppid()` system calls, in the same guest and run (`simvm-clock calls N`), with
//! the vDSO clock (the default) and without it (`--no-vdso-clock`, every read a system call).
//!
//! Each phase is timed by the wall time between its begin and end console lines, stamped as the
//! library hands them over. Run: `cargo bench -p simvm-tests --bench clock`. Environment:
//! `SIMVM_BENCH_CALLS` (default 20000).

use std::time::{Duration, Instant};

use simvm_tests::{env_u64, image, ConsoleLine};
use simvm_vmm::image::GuestImage;
use simvm_vmm::scenario::Scenario;
use simvm_vmm::simulation::Simulation;
use simvm_vmm::tuning::GuestTuning;

/// Wall time of the `getppid` and the `clock_gettime` phases.
struct Phases {
    getppid: Duration,
    clock: Duration,
}

fn run(tuning: GuestTuning, calls: u64) -> Phases {
    let built = image(None);
    let command = vec!["simvm-clock".into(), "calls".into(), calls.to_string()];
    let simulation = Simulation {
        tuning,
        ..Simulation::new(Scenario::from_cli(1, command), 1).with_image(GuestImage {
            kernel: built.kernel,
            initramfs: built.initramfs,
        })
    };
    let mut marks: Vec<(String, Instant)> = Vec::new();
    let outcome = simulation
        .run(&mut |raw| {
            let line = ConsoleLine::parse(raw, Duration::ZERO);
            if let Some(mark) = line
                .as_ref()
                .and_then(|l| l.text.strip_prefix("clock calls "))
            {
                marks.push((mark.to_string(), Instant::now()));
            }
        })
        .unwrap_or_else(|e| panic!("the run failed: {e}"));
    assert!(simulation.passed(&outcome), "simvm-clock failed");
    let at = |mark: &str| {
        marks
            .iter()
            .find(|(m, _)| m.starts_with(mark))
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("no \"clock calls {mark}\" line"))
    };
    Phases {
        getppid: at("end getppid") - at("begin getppid"),
        clock: at("end clock_gettime") - at("begin clock_gettime"),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("clock: benchmark");
        return;
    }
    let calls = env_u64("SIMVM_BENCH_CALLS", 20_000);
    let off = run(GuestTuning::NONE, calls);
    let on = run(GuestTuning::default(), calls);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("{calls} calls each, one guest, wall time:");
    println!(
        "{:<28} {:>14} {:>20} {:>18}",
        "", "getppid", "clock_gettime", "getppid / clock"
    );
    for (name, p) in [("system call clock (off)", &off), ("vDSO clock (on)", &on)] {
        println!(
            "{name:<28} {:>11.1} ms {:>17.1} ms {:>17.1}x",
            ms(p.getppid),
            ms(p.clock),
            ms(p.getppid) / ms(p.clock)
        );
    }
    println!(
        "clock_gettime, on vs off: {:.1}x faster",
        ms(off.clock) / ms(on.clock)
    );
}
