//! Assertions from inside the guest (docs/guest-abi.md, "Assertions"): `simvm-assert` in the
//! base image writes one console line per assertion; a failed `always` or a reached
//! `unreachable` fails the run, naming the assertion, machine and step; a `sometimes` never
//! true or a `reachable` never reached fails nothing, and a soak lists those no seed exercised.

use std::time::Instant;

use simvm_tests::{image, kvm_or_skip, run_guest, side_by_side, simvm, temp_dir, Run};

/// Passes: every property holds, one `sometimes` is never true, one `reachable` is declared
/// and never reached, and a bad name is a usage error that asserts nothing.
const PASSING: &str = "simvm-assert always positive test 1 -lt 2; \
                       simvm-assert sometimes seen-two test 0 = 1; \
                       simvm-assert reachable here; \
                       simvm-assert declare reachable later; \
                       simvm-assert declare unreachable bad; \
                       simvm-assert reachable 'a b'; echo usage=$?";

/// Fails an `always`, with the program's output redirected away from the console; the
/// helper passes the command's status on and the command itself exits 0.
const ALWAYS_FAILS: &str = "simvm-assert always x false >/dev/null 2>&1; echo status=$?; \
                            simvm-assert always x true; true";

/// Reaches an `unreachable` point twice; the first is the one reported.
const UNREACHABLE_REACHED: &str = "simvm-assert reachable before; simvm-assert unreachable bad; \
                                   simvm-assert unreachable bad; true";

/// The step in `simvm: assertion failed: KIND "NAME" on m1 at step N (...)`.
fn failure_step(run: &Run, kind_name: &str) -> u64 {
    let prefix = format!("simvm: assertion failed: {kind_name} on m1 at step ");
    run.stderr
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no `{prefix}` line:\n{}", run.all()))
}

/// The step of the first console line of m1 that is `text`.
fn console_step(run: &Run, text: &str) -> u64 {
    run.stdout
        .lines()
        .find(|l| l.split_once(" > ").is_some_and(|(_, t)| t == text))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no console line {text:?}:\n{}", run.all()))
}

#[test]
fn always_sometimes_reachable_and_unreachable_pass_and_fail_as_they_must() {
    if !kvm_or_skip("always_sometimes_reachable_and_unreachable_pass_and_fail_as_they_must") {
        return;
    }
    let started = Instant::now();
    let scripts = [PASSING, ALWAYS_FAILS, UNREACHABLE_REACHED];
    let runs = side_by_side(3, |i| {
        run_guest(&["--seed", "4"], &["sh", "-c", scripts[i]])
    });
    eprintln!(
        "three assertion runs side by side: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let [passing, always, unreachable] = &runs[..] else {
        unreachable!()
    };

    // Every property held: the run passes, and the report shows what was never true.
    assert_eq!(passing.code, Some(0), "{}", passing.all());
    assert_eq!(passing.field("result"), "ok");
    assert_eq!(
        passing.console("m1")[..5],
        [
            "simvm-assert: always positive pass",
            "simvm-assert: sometimes seen-two fail",
            "simvm-assert: reachable here",
            "simvm-assert: declare reachable later",
            "simvm-assert: declare unreachable bad",
        ],
        "{}",
        passing.all()
    );
    assert!(
        passing.console("m1").iter().any(|l| l == "usage=2"),
        "{}",
        passing.all()
    );
    for line in [
        "simvm: assertions: 5 seen, 0 failed, 2 never true or reached",
        "ok    always      positive  1 passed, 0 failed",
        "never sometimes   seen-two  0 passed, 1 failed",
        "ok    reachable   here      reached once",
        "never reachable   later     declared only",
        "ok    unreachable bad       declared only",
    ] {
        assert!(passing.stderr.contains(line), "{line}:\n{}", passing.all());
    }
    assert!(
        !passing.stderr.contains("not assertions") && !passing.stderr.contains("assertion failed"),
        "{}",
        passing.all()
    );

    // A failed `always` fails the run though the command exited 0, and names itself.
    assert_eq!(always.code, Some(1), "{}", always.all());
    assert!(
        always.console("m1").iter().any(|l| l == "status=1"),
        "{}",
        always.all()
    );
    assert!(
        always
            .summary()
            .contains("result=FAIL m1=exit(0) assertions-failed(always:x)"),
        "{}",
        always.all()
    );
    let step = failure_step(always, "always \"x\"");
    assert_eq!(step, console_step(always, "simvm-assert: always x fail"));
    assert!(
        always
            .stderr
            .contains("FAIL  always      x  1 passed, 1 failed, first on m1 at step"),
        "{}",
        always.all()
    );
    assert!(always.stderr.contains("reproduce: simvm run --seed 4"));

    // A reached `unreachable` fails it too, at the first reach.
    assert_eq!(unreachable.code, Some(1), "{}", unreachable.all());
    assert!(
        unreachable
            .summary()
            .contains("result=FAIL m1=exit(0) assertions-failed(unreachable:bad)"),
        "{}",
        unreachable.all()
    );
    let step = failure_step(unreachable, "unreachable \"bad\"");
    assert_eq!(
        step,
        console_step(unreachable, "simvm-assert: unreachable bad")
    );
    assert!(
        unreachable
            .stderr
            .contains("FAIL  unreachable bad     reached 2 times, first on m1 at step"),
        "{}",
        unreachable.all()
    );
}

#[test]
fn a_soak_lists_the_assertions_no_seed_exercised() {
    if !kvm_or_skip("a_soak_lists_the_assertions_no_seed_exercised") {
        return;
    }
    let dir = temp_dir("assertions-soak");
    let junit = dir.join("junit.xml");
    let out = dir.join("out");
    let image = image(None);
    let (kernel, initramfs) = (
        image.kernel.to_string_lossy().into_owned(),
        image.initramfs.to_string_lossy().into_owned(),
    );
    let (junit_arg, out_arg) = (
        junit.to_string_lossy().into_owned(),
        out.to_string_lossy().into_owned(),
    );
    // `seed-odd` is true in one seed of the two, so it was exercised; `seen-two` in none.
    let script = "simvm-assert sometimes seen-two test 0 = 1; \
                  simvm-assert sometimes seed-odd grep -q '^seed=[13579]$' /simvm/machine; \
                  simvm-assert reachable here; simvm-assert declare reachable later";
    let started = Instant::now();
    let soak = simvm(
        &[
            "soak",
            "--seeds",
            "1-2",
            "--jobs",
            "2",
            "--determinism-check",
            "0",
            "--kernel",
            &kernel,
            "--initramfs",
            &initramfs,
            "--junit",
            &junit_arg,
            "--out",
            &out_arg,
            "--",
            "--",
            "sh",
            "-c",
            script,
        ],
        &[],
    );
    eprintln!("soak of 2 seeds: {:.1}s", started.elapsed().as_secs_f64());
    assert_eq!(soak.code, Some(0), "{}", soak.all());
    assert!(
        soak.stdout.ends_with("2 passed, 0 failed\n"),
        "{}",
        soak.all()
    );
    let block = "assertions: 4 seen in 2 seeds, 0 failed, 2 never exercised\n\
                 \x20   NEVER  sometimes \"seen-two\": never true (printed by 2 seeds)\n\
                 \x20   NEVER  reachable \"later\": never reached (printed by 2 seeds)\n";
    assert!(soak.stdout.contains(block), "{}", soak.all());
    let xml = std::fs::read_to_string(&junit).expect("the JUnit file");
    for needle in [
        r#"<property name="never-exercised" value="sometimes:seen-two"/>"#,
        r#"<property name="never-exercised" value="reachable:later"/>"#,
        "NEVER  sometimes &quot;seen-two&quot;",
    ] {
        assert!(xml.contains(needle), "{needle}:\n{xml}");
    }
    assert!(!xml.contains("seed-odd"), "{xml}");
}
