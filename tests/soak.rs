//! `simvm soak` runs each seed in its own `simvm run`: it must fail exactly the seeds `simvm run`
//! fails, keep what a failed seed left, and print a reproduce line that fails the same way.
//! `simvm run --seeds` runs a few seeds in the foreground; a timeout and a SIGINT stop seeds
//! cleanly.
//!
//! The scenario, tests/scenarios/coin.toml, fails when the guest's first byte of /dev/urandom
//! (seeded by simvm from the seed) is odd. Which of seeds 1-6 those are depends on
//! the guest image, so the test asks `simvm run --seeds 1-6` first.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use simvm_tests::{image, kvm_or_skip, run_line, simvm, simvm_bin, temp_dir, Run};

fn scenario() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios/coin.toml")
        .to_string_lossy()
        .into_owned()
}

/// `--kernel K --initramfs I` for the test image, as every seed's `simvm run` gets them.
fn image_args() -> Vec<String> {
    let image = image(None);
    vec![
        "--kernel".into(),
        image.kernel.to_string_lossy().into_owned(),
        "--initramfs".into(),
        image.initramfs.to_string_lossy().into_owned(),
    ]
}

fn simvm_with(args: &[String]) -> Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    simvm(&args, &[])
}

/// The seeds the summary lists as `FAIL seed N: ...`.
fn failed_seeds(run: &Run) -> Vec<u64> {
    run.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("FAIL seed "))
        .filter_map(|l| l.split(':').next()?.parse().ok())
        .collect()
}

/// The reproduce line the summary prints for `seed`.
fn reproduce_line(run: &Run, seed: u64) -> String {
    let mut lines = run.stdout.lines();
    lines
        .find(|l| l.contains(&format!(" seed {seed}: ")))
        .and_then(|_| lines.next())
        .and_then(|l| l.trim().strip_prefix("reproduce: "))
        .unwrap_or_else(|| panic!("no reproduce line for seed {seed}:\n{}", run.all()))
        .to_string()
}

fn last_line(run: &Run) -> &str {
    run.stdout.lines().last().unwrap_or_default()
}

fn failing_line(console: &str) -> String {
    console
        .lines()
        .find_map(|l| {
            l.split_once(" > ")
                .map(|(_, t)| t)
                .filter(|t| t.starts_with("FAILED:"))
        })
        .unwrap_or_else(|| panic!("no FAILED line in:\n{console}"))
        .to_string()
}

#[test]
fn a_soak_fails_the_seeds_simvm_run_fails_and_reproduces_them() {
    if !kvm_or_skip("a_soak_fails_the_seeds_simvm_run_fails_and_reproduces_them") {
        return;
    }
    let dir = temp_dir("soak");
    let out = dir.join("out");
    let junit = dir.join("junit.xml");
    let mut args: Vec<String> = ["soak", &scenario(), "--seeds", "1-6", "--jobs", "2"]
        .map(String::from)
        .to_vec();
    args.extend(["--junit".into(), junit.to_string_lossy().into_owned()]);
    args.extend(["--out".into(), out.to_string_lossy().into_owned()]);
    // Half the seeds run twice and compare digests; all must agree. The coin is about the
    // guest's randomness: no chaos scheduling, which draws from the same RNG.
    args.extend(["--determinism-check".into(), "50".into()]);
    args.extend(["--chaos".into(), "0".into()]);
    args.extend(image_args());
    let started = Instant::now();
    let soak = simvm_with(&args);
    eprintln!("soak of 6 seeds: {:.1}s", started.elapsed().as_secs_f64());

    // The seeds `simvm run` fails, one after another in the foreground (which seeds they are
    // depends on the guest image: each seed's random bytes come from its kernel's RNG).
    let mut each: Vec<String> = ["run", &scenario(), "--seeds", "1-6"]
        .map(String::from)
        .to_vec();
    each.extend(image_args());
    let each = simvm_with(&each);
    let expected: Vec<u64> = (1..=6)
        .filter(|seed| {
            each.stdout
                .contains(&format!("simvm: seed {seed}: FAIL m1=exit(3)"))
        })
        .collect();
    assert!(
        !expected.is_empty() && expected.len() < 6,
        "the coin should fail some of six seeds and pass others:\n{}",
        each.all()
    );
    let passed: Vec<u64> = (1..=6).filter(|s| !expected.contains(s)).collect();

    assert_eq!(soak.code, Some(1), "{}", soak.all());
    assert_eq!(
        last_line(&soak),
        format!("{} passed, {} failed", passed.len(), expected.len()),
        "{}",
        soak.all()
    );
    assert_eq!(failed_seeds(&soak), expected, "{}", soak.all());
    assert!(
        soak.stdout.contains("0 simvm failures") && !soak.stdout.contains("NONDETERMINISTIC"),
        "{}",
        soak.all()
    );

    // Passing seeds leave nothing; a failing seed keeps its console, simvm's log, the trace
    // and its repro.sh.
    for &seed in &passed {
        assert!(
            !out.join(format!("seed-{seed}")).exists(),
            "seed {seed} kept"
        );
    }
    let (first, last) = (expected[0], expected[expected.len() - 1]);
    let kept = out.join(format!("seed-{first}"));
    for file in ["console.log", "simvm.log", "trace.jsonl", "repro.sh"] {
        let len = std::fs::metadata(kept.join(file)).map_or(0, |m| m.len());
        assert!(len > 0, "{file} missing or empty in {}", kept.display());
    }
    let console = std::fs::read_to_string(kept.join("console.log")).unwrap();
    let failing = failing_line(&console);
    assert!(console.contains("result=FAIL m1=exit(3)"), "{console}");

    // The printed reproduce line fails the same way, with the same exit status and line.
    let line = reproduce_line(&soak, first);
    assert!(
        line.contains(&format!("--seed {first}")) && !line.contains("--trace"),
        "{line}"
    );
    let replay = run_line(&line);
    assert_eq!(replay.code, Some(3), "{}", replay.all());
    assert_eq!(failing_line(&replay.stdout), failing);
    // So does repro.sh, run from elsewhere.
    let script = Command::new("sh")
        .arg(out.join(format!("seed-{last}/repro.sh")))
        .current_dir("/")
        .env("SIMVM", simvm_bin())
        .stdin(Stdio::null())
        .output()
        .expect("run repro.sh");
    assert_eq!(script.status.code(), Some(3), "{script:?}");

    // JUnit: six cases, the failures carrying their reproduce lines.
    let xml = std::fs::read_to_string(&junit).expect("the JUnit file");
    assert_eq!(xml.matches("<testcase ").count(), 6, "{xml}");
    assert_eq!(xml.matches("<failure ").count(), expected.len(), "{xml}");
    assert!(!xml.contains("<error "), "{xml}");
    for &seed in &expected {
        let case = xml
            .split("<testcase ")
            .find(|c| c.starts_with(&format!("name=\"seed {seed}\"")))
            .unwrap_or_else(|| panic!("no case for seed {seed}: {xml}"));
        assert!(
            case.contains(r#"<failure message="m1=exit(3)""#)
                && case.contains(&format!(
                    "reproduce: simvm run {} --seed {seed}",
                    scenario()
                )),
            "{case}"
        );
    }
    let checked = xml
        .matches(r#"name="determinism-check" value="true""#)
        .count();
    assert!(
        checked > 0
            && soak
                .stdout
                .contains(&format!("{checked} determinism-checked")),
        "{}\n{xml}",
        soak.all()
    );
}

#[test]
fn run_seeds_streams_each_seed_and_sums_up() {
    if !kvm_or_skip("run_seeds_streams_each_seed_and_sums_up") {
        return;
    }
    let mut args: Vec<String> = ["run", &scenario(), "--seeds", "1-6"]
        .map(String::from)
        .to_vec();
    args.extend(image_args());
    let run = simvm_with(&args);
    assert_eq!(run.stdout.matches(" > drew ").count(), 6, "{}", run.all());
    // Each seed's verdict, as `simvm run --seed N` would give it (which seeds the coin fails
    // depends on the guest image).
    let failed: Vec<u64> = (1..=6)
        .filter(|seed| {
            let ok = run.stdout.contains(&format!("simvm: seed {seed}: ok"));
            let failed = run
                .stdout
                .contains(&format!("simvm: seed {seed}: FAIL m1=exit(3)"));
            assert!(ok != failed, "seed {seed}: one verdict\n{}", run.all());
            failed
        })
        .collect();
    assert!(!failed.is_empty() && failed.len() < 6, "{}", run.all());
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert_eq!(
        last_line(&run),
        format!("{} passed, {} failed", 6 - failed.len(), failed.len()),
        "{}",
        run.all()
    );
}

/// Children of this soak, found by their output directory in their command lines.
fn children_of(out: &Path) -> String {
    let found = Command::new("pgrep")
        .args(["-f", &out.to_string_lossy()])
        .output()
        .expect("run pgrep");
    String::from_utf8_lossy(&found.stdout).into_owned()
}

/// A guest that never ends in virtual time, only in real time.
fn endless(out: &Path, seeds: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["soak", "--seeds", seeds, "--jobs", "1", "--out"]
        .map(String::from)
        .to_vec();
    args.push(out.to_string_lossy().into_owned());
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(image_args());
    args.extend(["--", "--until", "1h", "--", "sh", "-c", "yes > /dev/null"].map(String::from));
    args
}

#[test]
fn a_seed_past_its_timeout_is_killed_and_fails() {
    if !kvm_or_skip("a_seed_past_its_timeout_is_killed_and_fails") {
        return;
    }
    let dir = temp_dir("soak-timeout");
    let out = dir.join("out");
    let run = simvm_with(&endless(&out, "1", &["--timeout", "3s"]));
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(
        run.stdout
            .contains("TIMEOUT seed 1: timed out after 3.0s (killed)"),
        "{}",
        run.all()
    );
    assert_eq!(last_line(&run), "0 passed, 1 failed");
    assert!(out.join("seed-1/repro.sh").is_file());
    assert_eq!(children_of(&out), "", "a child outlived the soak");
}

#[test]
fn sigint_stops_the_soak_and_it_still_reports() {
    if !kvm_or_skip("sigint_stops_the_soak_and_it_still_reports") {
        return;
    }
    let dir = temp_dir("soak-sigint");
    let out = dir.join("out");
    let junit = dir.join("junit.xml");
    let junit_s = junit.to_string_lossy().into_owned();
    let args = endless(&out, "1-3", &["--junit", &junit_s]);
    let child = Command::new(simvm_bin())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the soak");
    // Wait for the first seed's child, then interrupt the soak.
    let deadline = Instant::now() + Duration::from_secs(60);
    while children_of(&out).is_empty() {
        assert!(Instant::now() < deadline, "no child started");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let run = Run::from(child.wait_with_output().expect("wait for the soak"));
    assert_eq!(run.code, Some(130), "{}", run.all());
    assert!(
        run.stdout
            .contains("soak: stopped by SIGINT: 3 seeds not run or not finished"),
        "{}",
        run.all()
    );
    assert_eq!(last_line(&run), "0 passed, 0 failed");
    assert_eq!(children_of(&out), "", "a child outlived the soak");
    let xml = std::fs::read_to_string(&junit).expect("the JUnit file, written anyway");
    assert!(xml.contains(r#"tests="0""#), "{xml}");
    // The interrupted seed is not a failure: nothing is kept.
    assert!(!out.exists() || std::fs::read_dir(&out).map_or(0, |d| d.count()) == 0);
}
