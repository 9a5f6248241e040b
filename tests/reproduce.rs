//! A failing run prints the one command that reproduces it; that command, run through a shell,
//! replays the same run: the same digest, the same consoles, the same verdict. A run stopped by
//! Ctrl-C ends as any other, with a line that replays it to where it stopped.

use std::process::Command;

use simvm_tests::{image, kvm_or_skip, run_guest, run_line, simvm_bin, Run};

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

    let again = run_line(&line);
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

/// Ctrl-C on a run whose guest sleeps for longer than anyone waits (no `--until`, and its
/// timer keeps the run from ending as idle):
/// the run stops at its next virtual instant with the summary (`result=INTERRUPTED`, exit
/// status 130), the report of the blocked machine, and a line that replays it to there, which
/// gives the same digest.
#[test]
fn a_run_stopped_by_a_signal_reports_and_replays_to_where_it_stopped() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;

    if !kvm_or_skip("a_run_stopped_by_a_signal_reports_and_replays_to_where_it_stopped") {
        return;
    }
    let image = image(None);
    let mut child = Command::new(simvm_bin())
        .arg("run")
        .arg("--kernel")
        .arg(&image.kernel)
        .arg("--initramfs")
        .arg(&image.initramfs)
        .args(["--", "sh", "-c", "echo waiting; sleep 1000000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn simvm");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut seen = String::new();
    while !seen.ends_with("> waiting\n") {
        seen.clear();
        if stdout.read_line(&mut seen).expect("read the console") == 0 {
            panic!("simvm ended before its guest printed `waiting`");
        }
    }
    // Let virtual time run on into the sleep (hours of it a wall second here), as a user
    // waits before giving up.
    std::thread::sleep(std::time::Duration::from_secs(2));
    // SAFETY: kill has no memory effects; the pid is our live child.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("read the rest");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let first = Run {
        code: child.wait().expect("wait for simvm").code(),
        stdout: rest,
        stderr,
    };
    assert_eq!(first.code, Some(130), "{}", first.all());
    assert_eq!(first.field("result"), "INTERRUPTED", "{}", first.all());
    assert!(
        first.stderr.contains(
            "simvm: m1 was still running at the end and had made no system call since 00:00:00.0"
        ),
        "{}",
        first.all()
    );
    let line = first
        .stderr
        .lines()
        .find_map(|l| l.split_once("; replay to here with: ").map(|(_, c)| c))
        .unwrap_or_else(|| panic!("no replay line:\n{}", first.all()));
    assert!(line.contains(" --until "), "{line}");
    let again = run_line(line);
    assert_eq!(
        again.field("steps"),
        first.field("steps"),
        "{}",
        again.all()
    );
    assert_eq!(
        again.field("digest"),
        first.field("digest"),
        "the replay line ran something else:\n{line}\n--- first\n{}\n--- replay\n{}",
        first.all(),
        again.all()
    );
}
