//! A guest spinning in user space never exits; the watchdog must report it loudly instead of
//! hanging, and `--strict` must turn the report into a failure.

use simvm_tests::{kvm_or_skip, run_guest};

#[test]
fn user_space_spin_is_kicked_and_reported() {
    if !kvm_or_skip("user_space_spin_is_kicked_and_reported") {
        return;
    }
    // The watchdog reports a spin at its second kick, so the spin must outlast two watchdog
    // periods on any host: "8" is 8 s of work on the machine the helper was calibrated on, and
    // over 4 s on hosts twice as fast ("3" ended between the two kicks on one).
    let run = run_guest(&["--watchdog", "1s", "--strict"], &["simvm-userspin", "8"]);
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
            .any(|l| l.starts_with("done 8 s of user work")),
        "the spinner never finished:\n{}",
        run.all()
    );
}

/// Somebody else's signal interrupting `KVM_RUN` (here the very signal the watchdog uses, sent
/// from outside) is not a watchdog kick: the guest is resumed unchanged, the run stays
/// deterministic, and `--strict` does not fail it.
#[test]
fn foreign_signals_are_not_watchdog_kicks() {
    if !kvm_or_skip("foreign_signals_are_not_watchdog_kicks") {
        return;
    }
    let image = simvm_tests::image(None);
    let child = std::process::Command::new(simvm_tests::simvm_bin())
        .args(["run", "--watchdog", "120s", "--strict", "--kernel"])
        .arg(&image.kernel)
        .arg("--initramfs")
        .arg(&image.initramfs)
        .args(["--", "simvm-userspin", "8"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn simvm");
    let pid = child.id() as libc::pid_t;
    let done = std::sync::atomic::AtomicBool::new(false);
    let sent = std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            // Before simvm installs its handler (when it builds the world), the signal's
            // default action would end it.
            while !catches(pid, libc::SIGRTMIN() + 1) {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    return 0;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let mut sent = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: kill has no memory effects; the pid is our live child (or, once it
                // has exited and before it is reaped, a zombie that ignores the signal).
                if unsafe { libc::kill(pid, libc::SIGRTMIN() + 1) } == 0 {
                    sent += 1;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            sent
        });
        let run = simvm_tests::Run::from(child.wait_with_output().expect("wait for simvm"));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(
            !run.stdout.contains("NONDETERMINISTIC"),
            "a foreign signal was taken for a watchdog kick:\n{}",
            run.all()
        );
        assert_eq!(run.field("result"), "ok", "{}", run.all());
        assert_eq!(run.code, Some(0), "{}", run.all());
        sender.join().expect("the signal sender")
    });
    // The spin lasts seconds: a signal every 20 ms lands many times inside KVM_RUN.
    assert!(sent > 100, "only {sent} signals were sent");
}

/// Whether process `pid` has a handler for `signal` (its `SigCgt` mask in /proc).
fn catches(pid: libc::pid_t, signal: libc::c_int) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}
