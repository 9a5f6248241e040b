//! Machine templates: machines start from one saved boot, and still differ as if each had
//! booted on its own; a seed replays exactly from a template; bad template files are refused.
//!
//! Few boots on purpose: one cold run, the rest start from the cached template.

use std::path::Path;

use simvm_tests::{
    assert_same_run, image, kvm_or_skip, require_tshark, run_guest, run_scenario, side_by_side,
    simvm_on, temp_dir, tshark, Run,
};
use simvm_vmm::template::Template;

/// Everything that must differ between machines and seeds after a start from one template:
/// kernel randomness (a UUID, urandom bytes), the boot id, the NIC's MAC, TCP initial
/// sequence numbers (the kernel's secret is set on first use), and the clocks, which go on.
/// (Each machine also opens a TCP connection to the other's closed port 7: its SYN carries
/// its initial sequence number, which the packet capture shows.)
const PROBE: &str = "echo uuid $(cat /proc/sys/kernel/random/uuid); \
                     echo boot_id $(cat /proc/sys/kernel/random/boot_id); \
                     echo mac $(cat /sys/class/net/eth0/address); \
                     echo random $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' '); \
                     simvm-rdtsc | head -n 1; echo date $(date +%s); \
                     echo hostname $(hostname); \
                     nc -w 1 10.0.0.$((3 - ${SIMVM_INDEX})) 7 </dev/null 2>/dev/null; echo ready";

fn probe(args: &[&str]) -> Run {
    let mut all = vec!["--machines", "2"];
    all.extend_from_slice(args);
    let run = run_guest(&all, &["sh", "-c", PROBE]);
    assert_eq!(run.code, Some(0), "the probe failed:\n{}", run.all());
    run
}

/// The value after `key ` on machine `m`'s console.
fn value(run: &Run, m: &str, key: &str) -> String {
    run.console_after(m, &format!("{key} "))
}

#[test]
fn template_starts_replay_exactly_and_differ_like_boots() {
    if !kvm_or_skip("template_starts_replay_exactly_and_differ_like_boots") {
        return;
    }
    // The first run builds the template if it is not cached (or finds it); the cold run boots.
    let first = probe(&["--seed", "7"]);
    assert!(
        first.field("start").starts_with("template-"),
        "{}",
        first.all()
    );
    require_tshark();
    let scratch = temp_dir("template-starts");
    let pcap = |seed: &str| scratch.join(format!("seed{seed}.pcapng"));
    let (pcap7, pcap8) = (pcap("7"), pcap("8"));
    let mut runs = side_by_side(3, |i| match i {
        0 => probe(&["--seed", "7", "--pcap", pcap7.to_str().unwrap()]),
        1 => probe(&["--seed", "8", "--pcap", pcap8.to_str().unwrap()]),
        _ => probe(&["--seed", "7", "--cold"]),
    });
    let cold = runs.pop().expect("three runs");
    let other = runs.pop().expect("two runs");
    let again = runs.pop().expect("one run");

    // The same seed from the same template: the same run.
    assert_same_run(&first, &again, &["m1", "m2"]);
    assert_eq!(again.field("steps"), first.field("steps"));

    // Machines of one run differ in everything that identifies them.
    for key in ["uuid", "boot_id", "mac", "random", "hostname"] {
        assert_ne!(
            value(&first, "m1", key),
            value(&first, "m2", key),
            "{key} is the same on both machines:\n{}",
            first.all()
        );
    }
    assert_eq!(value(&first, "m1", "mac"), "52:54:00:00:00:01");
    assert_eq!(value(&first, "m2", "mac"), "52:54:00:00:00:02");
    assert_eq!(value(&first, "m2", "hostname"), "m2");
    // Another seed from the same template: other randomness on every machine.
    assert_ne!(other.field("digest"), first.field("digest"));
    for m in ["m1", "m2"] {
        for key in ["uuid", "boot_id", "random"] {
            assert_ne!(
                value(&other, m, key),
                value(&first, m, key),
                "{m}'s {key} did not change with the seed"
            );
        }
    }

    // TCP's initial sequence numbers: the kernel's secret for them is made on first use, after
    // the reseed, so they differ between machines and between seeds.
    let isns = |pcap: &Path| -> Vec<String> {
        let syns = tshark(
            pcap,
            &[
                "-Y",
                "tcp.flags.syn == 1 && tcp.flags.ack == 0",
                "-T",
                "fields",
                "-e",
                "tcp.seq_raw",
            ],
        );
        // The capture holds each frame twice: leaving one machine, reaching the other.
        let unique: std::collections::BTreeSet<String> = syns.lines().map(str::to_string).collect();
        unique.into_iter().collect()
    };
    let (isn7, isn8) = (isns(&pcap7), isns(&pcap8));
    assert_eq!(isn7.len(), 2, "one SYN per machine: {isn7:?}");
    assert_eq!(isn8.len(), 2, "one SYN per machine: {isn8:?}");
    assert_ne!(isn7[0], isn7[1], "both machines chose one ISN");
    assert!(
        isn7.iter().all(|isn| !isn8.contains(isn)),
        "seeds 7 and 8 chose the same ISNs: {isn7:?} {isn8:?}"
    );

    // The guest's monotonic clock goes on from the template's (it includes the boot, which
    // took this much virtual time): it reads what a cold boot's reads at the same point. It
    // starts with the kernel's timekeeping, a little after the clock page's zero, so it may
    // trail the template's clock page by that much. Its wall clock is the world's: 2026-01-01
    // plus the run's few virtual seconds, give or take the machine's seeded clock offset (at
    // most 5 ms, so a second before it at worst).
    let template = template_of(&first);
    let monotonic_of = |run: &Run| -> u64 {
        value(run, "m1", "monotonic_ns")
            .parse()
            .expect("monotonic_ns")
    };
    let monotonic = monotonic_of(&first);
    let booted_at = template.guest_now_ns();
    assert!(booted_at > 0, "the template's clock is zero");
    assert_eq!(
        monotonic,
        monotonic_of(&cold),
        "the monotonic clock after a start from a template (taken at {booted_at} ns) and after a boot"
    );
    assert!(
        monotonic > booted_at / 2 && monotonic < booted_at + 1_000_000_000,
        "monotonic clock {monotonic} ns after a start from a template taken at {booted_at} ns"
    );
    let date: u64 = value(&first, "m1", "date").parse().expect("date");
    assert!(
        (1_767_225_599..1_767_225_660).contains(&date),
        "the guest's date {date} is not the world's"
    );

    // Booting still works, and is a different (not comparable) run.
    assert_eq!(cold.field("start"), "cold", "{}", cold.all());
    assert_ne!(cold.field("digest"), first.field("digest"));
    assert_ne!(value(&cold, "m1", "uuid"), value(&cold, "m2", "uuid"));
    assert_eq!(value(&cold, "m2", "mac"), "52:54:00:00:00:02");
}

/// The cached template directory a run started from (its summary names the key's start).
fn template_dir_of(run: &Run) -> std::path::PathBuf {
    let start = run.field("start");
    let key8 = start
        .strip_prefix("template-")
        .unwrap_or_else(|| panic!("the run did not start from a template: {start}"));
    let cache = simvm_vmm::image::cache_dir().join("templates");
    std::fs::read_dir(&cache)
        .unwrap_or_else(|e| panic!("no templates in {}: {e}", cache.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.join("template.json").is_file()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(key8))
        })
        .unwrap_or_else(|| panic!("no template {key8}* in {}", cache.display()))
}

fn template_of(run: &Run) -> Template {
    let dir = template_dir_of(run);
    Template::load(&dir, None).unwrap_or_else(|e| panic!("the run's template: {e}"))
}

fn copy_template(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in ["template.json", "memory"] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

fn refusal(dir: &Path, key: Option<&str>) -> String {
    match Template::load(dir, key) {
        Ok(_) => panic!("{} was accepted", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_template_files_are_refused_with_a_clear_error() {
    if !kvm_or_skip("bad_template_files_are_refused_with_a_clear_error") {
        return;
    }
    // A run makes sure a template exists.
    let _ = image(None);
    let good = template_dir_of(&probe(&["--seed", "1"]));
    let key = good.file_name().unwrap().to_string_lossy().into_owned();
    let template = Template::load(&good, Some(&key)).expect("the cached template loads");
    assert_eq!(template.key(), key);
    let scratch = temp_dir("bad-templates");

    let truncated = scratch.join("truncated-memory");
    copy_template(&good, &truncated);
    let memory = std::fs::OpenOptions::new()
        .write(true)
        .open(truncated.join("memory"))
        .unwrap();
    memory.set_len(4096 * 100).unwrap();
    let error = refusal(&truncated, Some(&key));
    assert!(error.contains("truncated"), "{error}");

    let damaged = scratch.join("damaged-memory");
    copy_template(&good, &damaged);
    let mut bytes = std::fs::read(damaged.join("memory")).unwrap();
    bytes[0x10_0000] ^= 1;
    std::fs::write(damaged.join("memory"), bytes).unwrap();
    let error = refusal(&damaged, Some(&key));
    assert!(error.contains("damaged"), "{error}");

    let cut_json = scratch.join("truncated-state");
    copy_template(&good, &cut_json);
    let json = std::fs::read(cut_json.join("template.json")).unwrap();
    std::fs::write(cut_json.join("template.json"), &json[..json.len() / 2]).unwrap();
    let error = refusal(&cut_json, Some(&key));
    assert!(error.contains("truncated"), "{error}");

    let other_version = scratch.join("other-version");
    copy_template(&good, &other_version);
    let json = String::from_utf8(json).unwrap();
    let version = format!("\"simvm\":\"{}\"", simvm_vmm::template::SIMVM_BUILD);
    assert!(json.contains(&version), "no version in template.json");
    std::fs::write(
        other_version.join("template.json"),
        json.replace(&version, "\"simvm\":\"0.0.1\""),
    )
    .unwrap();
    let error = refusal(&other_version, Some(&key));
    assert!(error.contains("made by simvm 0.0.1"), "{error}");

    // Another image's (or machine shape's) template is refused by key.
    let error = refusal(&good, Some("0123456789abcdef0123456789abcdef"));
    assert!(error.contains("another image"), "{error}");
}

/// What the snapshot tests' machines run: "ready" (the snapshot condition), then, after the
/// snapshot, randomness, a ping between the machines and the clocks.
const AFTER_READY: &str = "echo ready $(hostname); sleep 1; \
                           echo uuid $(cat /proc/sys/kernel/random/uuid); \
                           echo pings $(ping -c 2 -i 0.3 m1 | grep -c bytes); \
                           echo date $(date +%s)";

fn world_run(args: &[&str]) -> Run {
    let mut all = vec!["--machines", "2"];
    all.extend_from_slice(args);
    run_guest(&all, &["sh", "-c", AFTER_READY])
}

/// A world saved when every machine is ready, continued with seeds 1 to 5: each seed replays
/// exactly from the snapshot, the seeds differ after it, and the continuation keeps the saved
/// clocks and consoles' history (steps go on from the snapshot's).
#[test]
fn world_snapshot_continues_with_new_seeds() {
    if !kvm_or_skip("world_snapshot_continues_with_new_seeds") {
        return;
    }
    let _ = image(None);
    let scratch = temp_dir("world-snapshot");
    let dir = scratch.join("ready");
    let dir_s = dir.to_string_lossy().into_owned();
    let take = [
        "--seed",
        "5",
        "--snapshot-at",
        "console=ready",
        "--snapshot",
        &dir_s,
        // The second run of the check neither takes the snapshot nor trips over the first's.
        "--check-determinism",
    ];
    let taken = world_run(&take);
    assert_eq!(taken.code, Some(0), "{}", taken.all());
    assert!(
        taken.stderr.contains("saved the world as snapshot"),
        "{}",
        taken.all()
    );
    assert!(
        taken
            .stdout
            .contains("deterministic: both runs have digest"),
        "{}",
        taken.all()
    );
    assert!(dir.join("snapshot.json").is_file() && dir.join("m2.memory").is_file());

    // The same directory again is refused before anything runs.
    let again = world_run(&take);
    assert_eq!(again.code, Some(2), "{}", again.all());
    assert!(
        again.stderr.contains("exists and is not empty"),
        "{}",
        again.all()
    );

    let seeds = [1, 2, 3, 4, 5, 1, 2];
    let runs = side_by_side(seeds.len(), |i| {
        let seed = seeds[i].to_string();
        match i {
            // The snapshot keeps the arguments that shape its world: --from and --seed suffice.
            5 => simvm_tests::simvm(&["run", "--from", &dir_s, "--seed", &seed], &[]),
            _ => world_run(&["--seed", &seed, "--from", &dir_s]),
        }
    });
    for (run, seed) in runs.iter().zip(seeds) {
        assert_eq!(run.code, Some(0), "seed {seed}:\n{}", run.all());
        assert!(run.stderr.contains("continued snapshot"), "{}", run.all());
        // Nothing before the snapshot runs again: "ready" was printed before it.
        assert!(
            !run.console("m1").iter().any(|l| l.starts_with("ready")),
            "{}",
            run.all()
        );
        // The header line and two replies.
        assert_eq!(value(run, "m2", "pings"), "3");
        let date: u64 = value(run, "m1", "date").parse().expect("date");
        assert!((1_767_225_599..1_767_225_660).contains(&date), "{date}");
    }
    // Each seed replays exactly.
    assert_eq!(runs[5].field("digest"), runs[0].field("digest"));
    assert_eq!(runs[5].console("m1"), runs[0].console("m1"));
    assert_eq!(runs[6].field("digest"), runs[1].field("digest"));
    // The seeds diverge after the snapshot, in the guests' randomness too.
    let uuids: std::collections::BTreeSet<String> =
        runs[..5].iter().map(|r| value(r, "m1", "uuid")).collect();
    assert_eq!(
        uuids.len(),
        5,
        "the guests' randomness did not change with the seed"
    );
    let digests: std::collections::BTreeSet<String> =
        runs[..5].iter().map(|r| r.field("digest")).collect();
    assert_eq!(digests.len(), 5);
    // The continuation's steps go on from the snapshot's.
    let first_step = |run: &Run| -> u64 {
        run.stdout
            .lines()
            .find(|l| l.contains(" m1 ") && l.contains(" > "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .expect("a console line")
    };
    assert!(
        first_step(&runs[0]) > first_step(&taken),
        "{}",
        runs[0].all()
    );

    // Another world (another command) and a damaged snapshot are refused.
    let other = run_guest(
        &["--machines", "2", "--seed", "1", "--from", &dir_s],
        &["true"],
    );
    assert_eq!(other.code, Some(2), "{}", other.all());
    assert!(
        other.stderr.contains("belongs to another world"),
        "{}",
        other.all()
    );
    let damaged = scratch.join("damaged");
    std::fs::create_dir_all(&damaged).unwrap();
    for name in ["snapshot.json", "world.bin", "m1.memory", "m2.memory"] {
        std::fs::copy(dir.join(name), damaged.join(name)).unwrap();
    }
    let body = std::fs::read(damaged.join("world.bin")).unwrap();
    std::fs::write(damaged.join("world.bin"), &body[..body.len() / 2]).unwrap();
    let damaged_s = damaged.to_string_lossy().into_owned();
    let run = world_run(&["--seed", "1", "--from", &damaged_s]);
    assert_eq!(run.code, Some(2), "{}", run.all());
    assert!(run.stderr.contains("damaged or truncated"), "{}", run.all());
    std::fs::write(damaged.join("world.bin"), &body).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(damaged.join("m2.memory"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let run = world_run(&["--seed", "1", "--from", &damaged_s]);
    assert_eq!(run.code, Some(2), "{}", run.all());
    assert!(run.stderr.contains("truncated"), "{}", run.all());
}

/// A world saved before its nemesis starts is continued by every seed under that seed's own
/// faults (tests/scenarios/nemesis-after-snapshot.toml: pauses from 1 s on, the snapshot at
/// "ready", a few ms in), and a seed replays exactly from it; a continuation with an event of
/// its own before the snapshot's time is refused.
#[test]
fn a_snapshot_taken_before_the_nemesis_starts_gets_each_seeds_own_faults() {
    if !kvm_or_skip("a_snapshot_taken_before_the_nemesis_starts_gets_each_seeds_own_faults") {
        return;
    }
    let image = image(None);
    let scratch = temp_dir("nemesis-snapshot");
    let scenario =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/nemesis-after-snapshot.toml");
    let dir = scratch.join("ready");
    let dir_s = dir.to_string_lossy().into_owned();
    let taken = run_scenario(
        &scenario,
        1,
        &["--snapshot-at", "console=ready", "--snapshot", &dir_s],
    );
    assert_eq!(taken.code, Some(0), "{}", taken.all());
    assert!(dir.join("snapshot.json").is_file(), "{}", taken.all());

    let seeds = [2, 3, 2];
    let runs = side_by_side(seeds.len(), |i| {
        run_scenario(&scenario, seeds[i], &["--from", &dir_s])
    });
    let faults = |run: &Run| -> Vec<String> {
        run.console("fault")
            .into_iter()
            .filter(|l| l.starts_with("pause "))
            .collect()
    };
    for (run, seed) in runs.iter().zip(seeds) {
        assert_eq!(run.code, Some(0), "seed {seed}:\n{}", run.all());
        assert!(run.stderr.contains("continued snapshot"), "{}", run.all());
        assert!(
            !faults(run).is_empty(),
            "seed {seed} paused nothing:\n{}",
            run.all()
        );
        assert!(
            run.console("m1").iter().any(|l| l == "done m1"),
            "{}",
            run.all()
        );
    }
    // Each seed has its own faults after the snapshot, and replays them exactly.
    assert_ne!(faults(&runs[0]), faults(&runs[1]), "{}", runs[1].all());
    assert_eq!(faults(&runs[2]), faults(&runs[0]));
    assert_eq!(runs[2].field("digest"), runs[0].field("digest"));

    // A soak of seeds continuing the snapshot (the soak adds no chaos of its own to them: it
    // would be another world).
    let out = scratch.join("soak");
    let soak = simvm_on(
        &image,
        &[
            "soak",
            scenario.to_str().expect("utf-8 path"),
            "--seeds",
            "2-3",
            "--jobs",
            "2",
            "--out",
            out.to_str().expect("utf-8 path"),
            "--",
            "--from",
            &dir_s,
        ],
    );
    assert_eq!(soak.code, Some(0), "{}", soak.all());
    assert!(
        soak.stdout.ends_with("2 passed, 0 failed\n"),
        "{}",
        soak.all()
    );

    // An event before the snapshot's time that the snapshot did not have.
    let text = std::fs::read_to_string(&scenario).expect("the scenario");
    let early = scratch.join("early.toml");
    std::fs::write(
        &early,
        text.replace(
            "until = \"4s\"\n",
            "until = \"4s\"\n\n[[timeline]]\nat = \"1ms\"\npause = \"m2\"\nfor = \"1ms\"\n",
        ),
    )
    .expect("writing the variant");
    let refused = run_scenario(&early, 2, &["--from", &dir_s]);
    assert_eq!(refused.code, Some(2), "{}", refused.all());
    assert!(
        refused
            .stderr
            .contains("has an event at 00:00:00.001000 on its timeline, before the snapshot"),
        "{}",
        refused.all()
    );
}
