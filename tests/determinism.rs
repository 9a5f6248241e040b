//! One machine, one seed, one run: the same seed replays the guest bit for bit, even with other
//! simvm processes sharing the host's CPUs, and another seed changes what the guest's randomness
//! decides. One command checks several sources at once,
//! because every boot costs seconds of emulated kernel time on a PVM host.

use simvm_tests::{kvm_or_skip, run_guest, side_by_side, temp_dir, Run};

/// Reads every source of nondeterminism a guest program commonly uses: the kernel RNG (uuid,
/// urandom), wall-clock and monotonic time, RDTSC executed by a user program, and a busy-wait
/// on clock_gettime that can only end if virtual time advances.
const PROBE: &str = "cat /proc/sys/kernel/random/uuid; head -c 16 /dev/urandom | od -An -tx1; \
                     date +%s.%N; cat /proc/uptime; simvm-rdtsc; simvm-spin 20";

fn probe(seed: u64) -> Run {
    let seed = seed.to_string();
    let run = run_guest(&["--seed", &seed], &["sh", "-c", PROBE]);
    assert_eq!(run.code, Some(0), "the probe failed:\n{}", run.all());
    run
}

#[test]
fn same_seed_replays_exactly_and_another_seed_differs() {
    if !kvm_or_skip("same_seed_replays_exactly_and_another_seed_differs") {
        return;
    }
    // Five runs of seed 7 and one of seed 8, all at once: they share the host's CPUs.
    let mut runs = side_by_side(6, |i| probe(if i < 5 { 7 } else { 8 }));
    let other = runs.pop().expect("six runs");
    let first = runs.remove(0);
    let console = first.console("m1");
    let uuid = console
        .iter()
        .find(|l| l.len() == 36 && l.matches('-').count() == 4)
        .unwrap_or_else(|| panic!("no uuid in the console:\n{}", first.all()));
    assert!(
        console.iter().any(|l| l.starts_with("rdtsc ")),
        "simvm-rdtsc printed nothing:\n{}",
        first.all()
    );
    assert!(
        console.iter().any(|l| l.starts_with("done 20 ms")),
        "the clock busy-wait did not finish:\n{}",
        first.all()
    );

    for again in &runs {
        assert_eq!(
            again.field("digest"),
            first.field("digest"),
            "digests differ:\n{}\n{}",
            first.all(),
            again.all()
        );
        assert_eq!(again.field("steps"), first.field("steps"));
        assert_eq!(
            again.console("m1"),
            console,
            "console output differs between runs of one seed"
        );
    }

    assert_ne!(other.field("digest"), first.field("digest"));
    let other_console = other.console("m1");
    assert!(
        !other_console.contains(uuid),
        "seed 8 produced seed 7's uuid {uuid}"
    );
    let random_bytes = |c: &[String]| {
        c.iter()
            .find(|l| l.trim().split(' ').count() == 16)
            .cloned()
    };
    assert_ne!(
        random_bytes(&other_console),
        random_bytes(&console),
        "urandom bytes did not change with the seed"
    );
}

/// `--check-determinism --trace-state` compares the guests' registers and memory after every exit
/// as well as the digest, writes the fingerprints to the trace, and leaves the digest as it is
/// without them. Pinned with `--cpu`: on PVM hosts guest user-mode CPUID reports the host CPU's
/// APIC ID, which glibc keeps in every process's memory (docs/determinism.md).
#[test]
fn check_determinism_compares_guest_state_and_leaves_the_digest_alone() {
    if !kvm_or_skip("check_determinism_compares_guest_state_and_leaves_the_digest_alone") {
        return;
    }
    let cpu = first_allowed_cpu();
    let dir = temp_dir("trace-state");
    let trace = dir.join("trace.jsonl");
    let trace = trace.to_str().expect("utf-8 path");
    let checked = [
        "--seed",
        "7",
        "--cpu",
        &cpu,
        "--check-determinism",
        "--trace-state",
        "--trace",
        trace,
    ];
    let mut runs = side_by_side(2, |i| {
        let args: &[&str] = if i == 0 { &checked } else { &["--seed", "7"] };
        run_guest(args, &["true"])
    });
    let plain = runs.pop().expect("two runs");
    let checked = runs.pop().expect("two runs");
    assert_eq!(checked.code, Some(0), "{}", checked.all());
    assert_eq!(plain.code, Some(0), "{}", plain.all());
    let digest = checked.field("digest");
    assert!(
        checked
            .stdout
            .contains(&format!("deterministic: both runs have digest {digest}")),
        "{}",
        checked.all()
    );
    assert_eq!(
        plain.field("digest"),
        digest,
        "--trace-state changed the digest"
    );

    let text = std::fs::read_to_string(trace).expect("the trace file");
    let states: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(r#""event":"state""#))
        .collect();
    let steps: usize = checked.field("steps").parse().expect("steps is a number");
    assert_eq!(states.len(), steps, "one state per step:\n{text}");
    assert!(
        states
            .iter()
            .all(|l| l.contains(r#""rip":"#) && l.contains(r#""memory":"#)),
        "{}",
        states[0]
    );
}

/// The first host CPU this process may run on (CI runners may not offer CPU 0).
fn first_allowed_cpu() -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|list| {
            list.trim()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .map(str::to_string)
        })
        .expect("Cpus_allowed_list in /proc/self/status")
}
