//! What the guest kernel's speed options save: one guest runs the same workload three times in
//! one run, each phase's wall time printed with the ratios:
//!
//! - the compact kernel (`build.sh --compact-kernel`: without `guest-images/kernel/speed.config`,
//!   tinyconfig's size-first choices) entering the kernel on the entry stack
//!   (`--no-task-stack-entry`): the kernel as it was before either;
//! - the default kernel on the entry stack: what `speed.config` saves;
//! - the default kernel with every tuning: what entering on the task stack adds (patch 0018).
//!
//! The phases, between console lines stamped as the library hands them over: a cold boot to the
//! command (no template), 20 000 `getppid()` system calls (`simvm-clock calls`), 16 MiB read
//! from `/dev/zero` in 64 KiB blocks, 4 MiB through a pipe, 2 MiB over a loopback TCP connection
//! (busybox `nc`), and ten fork+exec+wait of `/bin/true`. Run: `cargo bench -p simvm-tests
//! --bench kernel`.

use std::time::{Duration, Instant};

use simvm_tests::{image, ConsoleLine};
use simvm_vmm::image::{compact_kernel, GuestImage};
use simvm_vmm::scenario::Scenario;
use simvm_vmm::simulation::Simulation;
use simvm_vmm::tuning::GuestTuning;

/// The workload: each phase ends with a `phase NAME` line.
const WORKLOAD: &str = "echo phase boot; \
    simvm-clock calls 20000 >/dev/null; echo phase getppid; \
    dd if=/dev/zero of=/dev/null bs=64k count=256 2>/dev/null; echo phase read; \
    dd if=/dev/zero bs=1M count=4 2>/dev/null | cat >/dev/null; echo phase pipe; \
    nc -l -p 5000 >/dev/null & sleep 1; echo phase listen; \
    dd if=/dev/zero bs=64k count=32 2>/dev/null | nc 127.0.0.1 5000; echo phase tcp; \
    for i in 1 2 3 4 5 6 7 8 9 10; do /bin/true; done; echo phase exec";

/// The phases whose wall time is printed, in order; `listen` only waits (virtual) time.
const PHASES: [(&str, &str); 6] = [
    ("boot", "cold boot to the command"),
    ("getppid", "20 000 getppid()"),
    ("read", "16 MiB from /dev/zero"),
    ("pipe", "4 MiB through a pipe"),
    ("tcp", "2 MiB over loopback TCP"),
    ("exec", "10 fork+exec+wait"),
];

/// Wall time of each phase of `PHASES`.
fn run(kernel: &std::path::Path, tuning: GuestTuning) -> Vec<Duration> {
    let built = image(None);
    let command = vec!["sh".into(), "-c".into(), WORKLOAD.into()];
    let simulation = Simulation {
        cold: true,
        tuning,
        ..Simulation::new(Scenario::from_cli(1, command), 1).with_image(GuestImage {
            kernel: kernel.to_path_buf(),
            initramfs: built.initramfs,
        })
    };
    let started = Instant::now();
    let mut marks: Vec<(String, Instant)> = vec![("start".into(), started)];
    let outcome = simulation
        .run(&mut |raw| {
            let line = ConsoleLine::parse(raw, Duration::ZERO);
            if let Some(phase) = line.as_ref().and_then(|l| l.text.strip_prefix("phase ")) {
                marks.push((phase.to_string(), Instant::now()));
            }
        })
        .unwrap_or_else(|e| panic!("the run failed: {e}"));
    assert!(simulation.passed(&outcome), "the workload failed");
    let at = |phase: &str| {
        marks
            .iter()
            .position(|(m, _)| m == phase)
            .unwrap_or_else(|| panic!("no \"phase {phase}\" line"))
    };
    PHASES
        .iter()
        .map(|(phase, _)| {
            let end = at(phase);
            marks[end].1 - marks[end - 1].1
        })
        .collect()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("kernel: benchmark");
        return;
    }
    let compact = compact_kernel().unwrap_or_else(|e| panic!("building the compact kernel: {e}"));
    let default = image(None).kernel;
    let entry_stack = GuestTuning {
        task_stack_entry: false,
        ..GuestTuning::default()
    };
    // The compact kernel has no transparent huge pages: the run leaves their parameters out.
    let sides = [
        run(&compact, entry_stack),
        run(&default, entry_stack),
        run(&default, GuestTuning::default()),
    ];
    println!("one guest, wall time per phase (A: compact kernel, entry stack; B: default kernel,");
    println!("entry stack; C: default kernel, task stack = the default):");
    println!(
        "{:<26} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "", "A", "B", "C", "A / B", "B / C", "A / C"
    );
    let total = |d: &[Duration]| d.iter().map(Duration::as_secs_f64).sum::<f64>();
    let mut rows: Vec<(&str, [f64; 3])> = PHASES
        .iter()
        .enumerate()
        .map(|(i, (_, name))| (*name, sides.each_ref().map(|s| s[i].as_secs_f64())))
        .collect();
    rows.push(("all phases", sides.each_ref().map(|s| total(s))));
    for (name, [a, b, c]) in rows {
        println!(
            "{name:<26} {a:>7.2} s {b:>7.2} s {c:>7.2} s {:>7.2}x {:>7.2}x {:>7.2}x",
            a / b,
            b / c,
            a / c
        );
    }
}
