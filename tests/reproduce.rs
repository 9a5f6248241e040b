//! A failing run prints the one command that reproduces it; that command, run through a shell,
//! replays the same run: the same digest, the same consoles, the same verdict.

use std::process::Command;

use simvm_tests::{kvm_or_skip, run_guest, simvm_bin, Run};

/// The run is cut by `--until` while the guest prints a line every millisecond, so an `--until`
/// replayed even half a millisecond short or long changes the digest; the guest prints its
/// memory size, so a `--mem` replayed in whole MiB does too. The values are ones the reproduce
/// line once rounded: `12500us` (printed as `12ms`) and `100000K` (printed as `97M`). Linux's own
/// 50 us timer slack (`--no-timer-slack`) keeps the 1 ms sleeps 1 ms apart, and the line must
/// carry that switch: with simvm's 10 ms slack the guest would wake at other times.
#[test]
fn the_reproduce_line_of_a_failing_run_replays_it() {
    if !kvm_or_skip("the_reproduce_line_of_a_failing_run_replays_it") {
        return;
    }
    let first = run_guest(
        &[
            "--seed",
            "4",
            "--until",
            "12500us",
            "--mem",
            "100000K",
            "--watchdog",
            "7000500us",
            "--no-timer-slack",
        ],
        &[
            "sh",
            "-c",
            "grep MemTotal /proc/meminfo; while usleep 1000; do echo \"tick $(cat /proc/uptime)\"; done",
        ],
    );
    // Still running at `until`, where it was expected to exit 0: a failure.
    assert_eq!(first.code, Some(1), "{}", first.all());
    assert!(
        first.field("result") == "FAIL" && first.summary().contains("m1=running"),
        "{}",
        first.all()
    );
    let console = first.console("m1");
    assert!(
        console.iter().any(|l| l.starts_with("MemTotal:"))
            && console.iter().filter(|l| l.starts_with("tick")).count() >= 2,
        "the guest did not print its memory and ticks before `until`:\n{}",
        first.all()
    );
    let line = reproduce_line(&first);
    for exact in [
        "--until 12500us",
        "--mem 100000K",
        "--watchdog 7000500us",
        "--no-timer-slack",
    ] {
        assert!(line.contains(exact), "{exact} is not in: {line}");
    }

    // The line as a user would paste it, with `simvm` standing for the binary under test.
    let command = line
        .strip_prefix("simvm ")
        .unwrap_or_else(|| panic!("the reproduce line does not start with `simvm `: {line}"));
    let bin = simvm_bin();
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!("'{}' {command}", bin.display()))
        .output()
        .expect("run sh");
    let again = Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert_eq!(
        again.field("digest"),
        first.field("digest"),
        "the reproduce line ran something else:\n{line}\n--- first\n{}\n--- replay\n{}",
        first.all(),
        again.all()
    );
    assert_eq!(again.console("m1"), console);
    assert_eq!(again.code, first.code, "{}", again.all());
    assert_eq!(reproduce_line(&again), line, "the replay reproduces itself");
}

/// The `reproduce: simvm run ...` line on stderr.
fn reproduce_line(run: &Run) -> String {
    run.stderr
        .lines()
        .find_map(|l| l.strip_prefix("reproduce: "))
        .unwrap_or_else(|| panic!("no reproduce line:\n{}", run.all()))
        .to_string()
}
