//! Machine templates: machines start from one saved boot, and still differ as if each had
//! booted on its own; a seed replays exactly from a template; bad template files are refused.
//!
//! Few boots on purpose: one cold run, the rest start from the cached template.

use std::path::Path;

use simvm_tests::{image, kvm_or_skip, run_guest, side_by_side, temp_dir, Run};
use simvm_vmm::template::Template;

/// Everything that must differ between machines and seeds after a start from one template:
/// kernel randomness (a UUID, urandom bytes), the boot id, the NIC's MAC, TCP initial
/// sequence numbers (the kernel's secret is set on first use), and the clocks, which go on.
const PROBE: &str = "echo uuid $(cat /proc/sys/kernel/random/uuid); \
                     echo boot_id $(cat /proc/sys/kernel/random/boot_id); \
                     echo mac $(cat /sys/class/net/eth0/address); \
                     echo random $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' '); \
                     simvm-rdtsc | head -n 1; echo date $(date +%s); \
                     echo hostname $(hostname); echo ready";

fn probe(args: &[&str]) -> Run {
    let mut all = vec!["--machines", "2"];
    all.extend_from_slice(args);
    let run = run_guest(&all, &["sh", "-c", PROBE]);
    assert_eq!(run.code, Some(0), "the probe failed:\n{}", run.all());
    run
}

/// The value after `key ` on machine `m`'s console.
fn value(run: &Run, m: &str, key: &str) -> String {
    run.console(m)
        .iter()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{m} printed no {key}:\n{}", run.all()))
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
    let mut runs = side_by_side(3, |i| match i {
        0 => probe(&["--seed", "7"]),
        1 => probe(&["--seed", "8"]),
        _ => probe(&["--seed", "7", "--cold"]),
    });
    let cold = runs.pop().expect("three runs");
    let other = runs.pop().expect("two runs");
    let again = runs.pop().expect("one run");

    // The same seed from the same template: the same run.
    assert_eq!(
        again.field("digest"),
        first.field("digest"),
        "{}\n{}",
        first.all(),
        again.all()
    );
    assert_eq!(again.field("steps"), first.field("steps"));
    assert_eq!(again.console("m1"), first.console("m1"));
    assert_eq!(again.console("m2"), first.console("m2"));

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

    // The guest's monotonic clock goes on from the template's (it includes the boot, which
    // took this much virtual time), by the little the run took; its wall clock is the
    // world's: 2026-01-01 plus the run's few virtual seconds.
    let template = template_of(&first);
    let monotonic: u64 = value(&first, "m1", "monotonic_ns")
        .parse()
        .expect("monotonic_ns");
    let booted_at = template.guest_now_ns();
    assert!(booted_at > 0, "the template's clock is zero");
    assert!(
        monotonic > booted_at && monotonic - booted_at < 1_000_000_000,
        "monotonic clock {monotonic} ns after a start from a template taken at {booted_at} ns"
    );
    let date: u64 = value(&first, "m1", "date").parse().expect("date");
    assert!(
        (1_767_225_600..1_767_225_660).contains(&date),
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

    let _ = std::fs::remove_dir_all(&scratch);
}
