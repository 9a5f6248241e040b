//! A guest spinning in user space never exits; the watchdog must report it loudly instead of
//! hanging, and `--strict` must turn the report into a failure.

use simvm_tests::{kvm_or_skip, run_guest};

#[test]
fn user_space_spin_is_kicked_and_reported() {
    if !kvm_or_skip("user_space_spin_is_kicked_and_reported") {
        return;
    }
    let run = run_guest(&["--watchdog", "1s", "--strict"], &["simvm-userspin", "3"]);
    assert!(
        run.stdout
            .contains("NONDETERMINISTIC: the watchdog kicked machine m1"),
        "no watchdog report:\n{}",
        run.all()
    );
    assert!(run.summary().contains("nondeterministic("), "{}", run.all());
    assert_eq!(
        run.field("result"),
        "FAIL",
        "--strict must fail a kicked run:\n{}",
        run.all()
    );
    assert_ne!(run.code, Some(0));
    assert!(
        run.console("m1")
            .iter()
            .any(|l| l.starts_with("done 3 s of user work")),
        "the spinner never finished:\n{}",
        run.all()
    );
}
