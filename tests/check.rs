//! `simvm check`: the command line of the linearizability checker (the checker itself is unit
//! tested in checker/). Needs no KVM.

use simvm_tests::{simvm, temp_dir};

const WRITE_THEN_READ: &str = "\
{\"process\":1,\"type\":\"invoke\",\"f\":\"write\",\"key\":\"k1\",\"value\":7,\"time_ns\":1000000000}
{\"process\":1,\"type\":\"ok\",\"f\":\"write\",\"key\":\"k1\",\"value\":7,\"time_ns\":1100000000}
{\"process\":2,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"k1\",\"time_ns\":1200000000}
";

#[test]
fn check_says_linearizable_or_not_with_exit_status_text_and_timeline() {
    let dir = temp_dir("check");
    let good = dir.join("good.jsonl");
    let stale = dir.join("stale.jsonl");
    let read = |value: &str| {
        format!("{{\"process\":2,\"type\":\"ok\",\"f\":\"read\",\"key\":\"k1\",\"value\":{value},\"time_ns\":1250000000}}\n")
    };
    std::fs::write(&good, format!("{WRITE_THEN_READ}{}", read("7"))).unwrap();
    std::fs::write(&stale, format!("{WRITE_THEN_READ}{}", read("null"))).unwrap();
    let html = dir.join("stale.html");

    let ok = simvm(&["check", good.to_str().unwrap()], &[]);
    assert_eq!(ok.code, Some(0), "{}", ok.all());
    assert!(ok.stdout.contains("k1: linearizable"), "{}", ok.all());

    let bad = simvm(
        &[
            "check",
            stale.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(bad.code, Some(1), "{}", bad.all());
    assert!(bad.stdout.contains("k1: NOT LINEARIZABLE"), "{}", bad.all());
    assert!(
        bad.stdout
            .contains("process 2 found k1 missing between 1.200 s and 1.250 s"),
        "{}",
        bad.all()
    );
    let page = std::fs::read_to_string(&html).expect("the timeline");
    assert!(
        page.starts_with("<!DOCTYPE html>") && page.contains("<svg"),
        "{page}"
    );

    // A malformed history is an error with its line, not a verdict.
    std::fs::write(&good, "{\"process\":1}\n").unwrap();
    let broken = simvm(&["check", good.to_str().unwrap()], &[]);
    assert_eq!(broken.code, Some(2), "{}", broken.all());
    assert!(broken.stderr.contains("line 1"), "{}", broken.all());

    // An empty history proves nothing: an error, as a run's `[check]` says NO-HISTORY.
    std::fs::write(&good, "\n").unwrap();
    let empty = simvm(&["check", good.to_str().unwrap()], &[]);
    assert_eq!(empty.code, Some(2), "{}", empty.all());
    assert!(
        empty.stderr.contains("the history is empty"),
        "{}",
        empty.all()
    );
}
