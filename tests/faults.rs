//! Machine faults beyond kills (examples/README.md "The timeline", docs/determinism.md): clock
//! rate, step and offset faults, pauses, seeded start delays and wall clock offsets, chaos
//! scheduling, and the seeded nemesis, each replayed exactly by its seed.

use std::path::{Path, PathBuf};

use simvm_tests::{
    image, kvm_or_skip, parse_vtime, run_guest, run_scenario, side_by_side, simvm_on, temp_dir, Run,
};
use simvm_vmm::scenario::Scenario;
use simvm_vmm::simulation::Simulation;

/// `CLOCK_REALTIME` at virtual time zero (2026-01-01T00:00:00Z).
const WORLD_WALL_NS: i128 = 1_767_225_600_000_000_000;
const MS: i128 = 1_000_000;

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name)
}

/// One `simvm-clock now` line of a machine: world virtual time, guest wall and monotonic.
#[derive(Clone, Copy, Debug)]
struct Sample {
    world: i128,
    wall: i128,
    mono: i128,
}

fn samples(run: &Run, machine: &str) -> Vec<Sample> {
    run.stdout
        .lines()
        .filter_map(|line| {
            let (head, text) = line.split_once(" > ")?;
            let mut words = head.split_whitespace();
            let _step = words.next()?;
            (words.next()? == machine).then_some(())?;
            let world = parse_vtime(words.next()?)?.as_nanos() as i128;
            let rest = text.strip_prefix("realtime_ns ")?;
            let (wall, mono) = rest.split_once(" monotonic_ns ")?;
            Some(Sample {
                world,
                wall: wall.parse().ok()?,
                mono: mono.parse().ok()?,
            })
        })
        .collect()
}

/// How far a guest's wall clock is from the world's at a sample.
fn wall_error(s: &Sample) -> i128 {
    s.wall - (WORLD_WALL_NS + s.world)
}

#[test]
fn clock_faults_pauses_and_start_delays_show_in_the_guest_and_replay() {
    if !kvm_or_skip("clock_faults_pauses_and_start_delays_show_in_the_guest_and_replay") {
        return;
    }
    let path = scenario("clock_faults.toml");
    let runs = side_by_side(3, |i| run_scenario(&path, [4, 4, 5][i], &[]));
    for run in &runs {
        assert_eq!(run.code, Some(0), "{}", run.all());
    }
    let (first, again, other) = (&runs[0], &runs[1], &runs[2]);
    simvm_tests::assert_same_run(first, again, &["m1", "m2", "m3"]);

    let m1 = samples(first, "m1");
    assert_eq!(m1.len(), 11, "{}", first.all());
    // The monotonic clock never goes back, whatever the faults.
    for pair in m1.windows(2) {
        assert!(pair[1].mono > pair[0].mono, "monotonic went back: {pair:?}");
    }
    let at = |t_ms: i128| move |s: &&Sample| s.world > t_ms * MS;
    let before = |t_ms: i128| move |s: &&Sample| s.world < t_ms * MS;
    let ratio = |a: &Sample, b: &Sample| (b.mono - a.mono) as f64 / (b.world - a.world) as f64;

    // Before 1 s the clock runs at world speed; from 1 s at +100000 ppm (10% fast).
    let early: Vec<&Sample> = m1.iter().filter(before(1000)).collect();
    assert!(early.len() >= 2, "{m1:?}");
    let r = ratio(early[0], early[early.len() - 1]);
    assert!((r - 1.0).abs() < 1e-4, "rate before the fault: {r}");
    let fast: Vec<&Sample> = m1.iter().filter(at(1000)).filter(before(2500)).collect();
    assert!(fast.len() >= 2, "{m1:?}");
    let r = ratio(fast[0], fast[fast.len() - 1]);
    assert!((r - 1.1).abs() < 1e-4, "rate after +100000ppm: {r}");

    // The wall clock stepped back 100 s at 2 s: (wall - monotonic) drops by 100 s, within
    // the stepping's granularity.
    let last_before_step = m1.iter().rfind(before(2000)).expect("a sample before 2s");
    let first_after_step = m1.iter().find(at(2000)).expect("a sample after 2s");
    let drop = (first_after_step.wall - first_after_step.mono)
        - (last_before_step.wall - last_before_step.mono);
    assert!(
        (drop + 100_000 * MS).abs() < MS,
        "the wall clock moved {drop} ns against the monotonic clock, not -100 s"
    );

    // Paused from 2.5 s to 3.2 s: no line in between, and the clock shows the gap (at its
    // rate, which a pause does not change).
    assert!(
        !m1.iter()
            .any(|s| s.world > 2500 * MS && s.world < 3200 * MS),
        "m1 printed while paused: {m1:?}"
    );
    let across: Vec<&Sample> = m1.iter().filter(at(2000)).filter(before(3400)).collect();
    let r = ratio(across[0], across[across.len() - 1]);
    assert!(
        (r - 1.1).abs() < 1e-4,
        "the pause did not show in the clock: {r}"
    );

    // At 3.5 s its wall clock is set to world time (offset 0; the kernel steps it at its next
    // timer interrupt, to the value it should have by then); running 10% fast, it is ahead by
    // a tenth of the world time since.
    let last = m1.last().expect("samples");
    assert!(last.world > 3600 * MS, "{m1:?}");
    let error = wall_error(last);
    let gained = (last.world - 3500 * MS) / 10;
    assert!(
        (error - gained).abs() < MS,
        "m1's wall clock is {error} ns ahead of the world's after `offset = 0s`, not {gained}"
    );

    // Three machines started together: each boot a seeded few ms late, each wall clock a
    // seeded few ms off (within the 10 ms start spread and 5 ms clock spread), all different;
    // and another seed draws other ones.
    let starts = |run: &Run| -> Vec<(i128, i128)> {
        ["m1", "m2", "m3"]
            .iter()
            .map(|m| {
                let s = samples(run, m)[0];
                (s.world, wall_error(&s))
            })
            .collect()
    };
    let (these, others) = (starts(first), starts(other));
    for (world, error) in these.iter().chain(&others) {
        assert!(
            *world < 11 * MS,
            "a start later than the spread: {these:?} {others:?}"
        );
        // The line's time is when the console took it, a little after the clock read.
        assert!(
            error.abs() <= 6 * MS,
            "a wall clock beyond the spread: {these:?}"
        );
    }
    for i in 0..3 {
        for j in i + 1..3 {
            assert_ne!(
                these[i].0, these[j].0,
                "two machines started together: {these:?}"
            );
            assert_ne!(
                these[i].1, these[j].1,
                "two machines share a clock: {these:?}"
            );
        }
    }
    assert_ne!(
        these, others,
        "seeds 4 and 5 drew the same delays and offsets"
    );
}

/// Two processes appending to one file, ten times each; then four threads of one process
/// appending to one buffer, ten times each (`simvm-threads`, which prints `order ...`).
const RACE: &str = "(for i in 1 2 3 4 5 6 7 8 9 10; do echo -n a >> /tmp/f; done) & \
                    (for i in 1 2 3 4 5 6 7 8 9 10; do echo -n b >> /tmp/f; done); \
                    wait; echo; echo \"processes $(cat /tmp/f)\"; simvm-threads 4 10; \
                    echo \"stack $(grep -F '[stack]' /proc/self/maps | cut -d' ' -f1)\"";

/// The processes' and the threads' orders, and where the shell's stack was.
fn race_order(run: &Run) -> (String, String, String) {
    assert_eq!(run.code, Some(0), "{}", run.all());
    let line = |prefix: &str| run.console_after("m1", prefix);
    (line("processes "), line("order "), line("stack "))
}

#[test]
fn chaos_scheduling_and_aslr_explore_per_seed_and_replay_each() {
    if !kvm_or_skip("chaos_scheduling_and_aslr_explore_per_seed_and_replay_each") {
        return;
    }
    // Seeds 1, 2 and 1 again with chaos scheduling and ASLR, then seeds 1 and 2 without.
    let cases: [(&str, bool); 5] = [
        ("1", true),
        ("2", true),
        ("1", true),
        ("1", false),
        ("2", false),
    ];
    let runs = side_by_side(cases.len(), |i| {
        let (seed, explore) = cases[i];
        let mut args = vec!["--seed", seed];
        if explore {
            args.extend(["--chaos", "30%", "--aslr"]);
        }
        run_guest(&args, &["sh", "-c", RACE])
    });
    let orders: Vec<(String, String, String)> = runs.iter().map(race_order).collect();
    let letters = |order: &str| {
        let mut sorted: Vec<char> = order.chars().collect();
        sorted.sort_unstable();
        sorted.into_iter().collect::<String>()
    };
    for (processes, threads, _) in &orders {
        assert_eq!(letters(processes), "a".repeat(10) + &"b".repeat(10));
        assert_eq!(
            letters(threads),
            ["a", "b", "c", "d"].map(|l| l.repeat(10)).concat()
        );
    }
    let switches = |o: &str| o.as_bytes().windows(2).filter(|w| w[0] != w[1]).count();
    let processes: Vec<&str> = orders.iter().map(|o| o.0.as_str()).collect();
    let threads: Vec<&str> = orders.iter().map(|o| o.1.as_str()).collect();
    for (what, order, racers) in [("processes", processes, 2), ("threads", threads, 4)] {
        // Chaos: the seeds differ, and each replays.
        assert_ne!(order[0], order[1], "{what}: two seeds, one interleaving");
        assert_eq!(
            order[0], order[2],
            "{what}: seed 1 did not replay its interleaving"
        );
        // Chaos interleaves the appends; without it every seed runs each racer to its end in
        // turn (one CPU and no exit in the loop, so no timer tick in between).
        assert!(
            switches(order[0]) > racers,
            "{what}, seed 1 with chaos: {}",
            order[0]
        );
        assert_eq!(
            order[3], order[4],
            "{what}: without chaos, two seeds differ"
        );
        assert_eq!(
            switches(order[3]),
            racers - 1,
            "{what} without chaos: {}",
            order[3]
        );
    }
    assert_eq!(runs[0].field("digest"), runs[2].field("digest"));
    // ASLR from the seeded RNG: another stack for another seed, the same for the same seed;
    // without it, one layout for every seed.
    let stacks: Vec<&str> = orders.iter().map(|o| o.2.as_str()).collect();
    assert_ne!(stacks[0], stacks[1], "two seeds, one stack with --aslr");
    assert_eq!(stacks[0], stacks[2], "seed 1 moved its stack");
    assert_eq!(
        stacks[3], stacks[4],
        "without --aslr the layout depends on the seed"
    );
    assert_ne!(
        stacks[0], stacks[3],
        "--aslr left the stack where it always is"
    );
}

#[test]
fn nemesis_schedules_differ_by_seed_and_each_replays_exactly() {
    if !kvm_or_skip("nemesis_schedules_differ_by_seed_and_each_replays_exactly") {
        return;
    }
    let path = scenario("nemesis.toml");
    // The schedules, from the library: ten seeds, ten schedules, each with several kinds.
    let loaded = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let schedules: Vec<String> = (1..=10)
        .map(|seed| {
            let simulation = Simulation::new(loaded.clone(), seed);
            let events = simulation.nemesis_schedule();
            assert!(events.len() >= 4, "seed {seed}: {events:?}");
            loaded.timeline_toml(&events)
        })
        .collect();
    let distinct: std::collections::BTreeSet<&String> = schedules.iter().collect();
    assert_eq!(distinct.len(), 10, "two seeds drew the same fault schedule");

    // Every seed run twice, side by side, by the soak's determinism check.
    let out = temp_dir("nemesis-soak");
    let junit = out.join("junit.xml");
    let run = simvm_on(
        &image(None),
        &[
            "soak",
            path.to_str().expect("UTF-8"),
            "--seeds",
            "1-10",
            "--jobs",
            "2",
            "--determinism-check",
            "100",
            "--out",
            out.to_str().expect("UTF-8"),
            "--junit",
            junit.to_str().expect("UTF-8"),
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.all());
    assert!(
        run.stdout.lines().any(|l| l == "10 passed, 0 failed"),
        "{}",
        run.all()
    );
    let report = std::fs::read_to_string(&junit).expect("the JUnit report");
    assert_eq!(report.matches("<testcase").count(), 10, "{report}");

    // A nemesis whose quiet tail (10 s by default) covers the whole run draws nothing, and
    // says so instead of passing as if it had been at work.
    let idle = run_guest(&["--nemesis", "kill,pause", "--until", "2s"], &["true"]);
    assert_eq!(idle.code, Some(0), "{}", idle.all());
    assert!(
        idle.stderr.contains("the nemesis drew no fault for seed 1"),
        "{}",
        idle.all()
    );
}

#[test]
fn a_soak_finds_a_bug_that_one_fault_at_one_phase_triggers_and_its_repro_fails_alike() {
    if !kvm_or_skip(
        "a_soak_finds_a_bug_that_one_fault_at_one_phase_triggers_and_its_repro_fails_alike",
    ) {
        return;
    }
    let path = scenario("lease.toml");
    let out = temp_dir("lease-soak");
    let soak = simvm_on(
        &image(None),
        &[
            "soak",
            path.to_str().expect("UTF-8"),
            "--seeds",
            "1-10",
            "--jobs",
            "2",
            "--out",
            out.to_str().expect("UTF-8"),
        ],
    );
    assert_eq!(
        soak.code,
        Some(1),
        "the soak found nothing:\n{}",
        soak.all()
    );
    let failed: Vec<u64> = soak
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("FAIL seed "))
        .filter_map(|l| l.split(':').next()?.parse().ok())
        .collect();
    assert!(!failed.is_empty() && failed.len() < 10, "{}", soak.all());
    // Every failure is the planted bug, found by a pause that covered round 4.
    let bug = |console: &str| -> String {
        console
            .lines()
            .find_map(|l| {
                l.split_once(" > ")
                    .map(|(_, t)| t)
                    .filter(|t| t.starts_with("BUG: "))
            })
            .unwrap_or_else(|| panic!("no BUG line in:\n{console}"))
            .to_string()
    };
    let seed = failed[0];
    let console = std::fs::read_to_string(out.join(format!("seed-{seed}/console.log")))
        .expect("the failing seed's console");
    let found = bug(&console);
    assert!(
        found.starts_with("BUG: lease expired in round 4 after "),
        "{found}"
    );
    assert!(
        console.contains("> pause m1") && console.contains("> resume m1"),
        "{console}"
    );

    // The printed reproduce line fails the same way.
    let mut lines = soak.stdout.lines();
    let line = lines
        .find(|l| l.starts_with(&format!("FAIL seed {seed}: ")))
        .and_then(|_| lines.next())
        .and_then(|l| l.trim().strip_prefix("reproduce: "))
        .unwrap_or_else(|| panic!("no reproduce line:\n{}", soak.all()))
        .to_string();
    let replay = std::process::Command::new("sh")
        .args(["-c", &line.replacen("simvm ", "\"$SIMVM\" ", 1)])
        .env("SIMVM", simvm_tests::simvm_bin())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the reproduce line");
    let stdout = String::from_utf8_lossy(&replay.stdout);
    assert_eq!(replay.status.code(), Some(1), "{line}\n{stdout}");
    assert_eq!(bug(&stdout), found, "{line}");
}
