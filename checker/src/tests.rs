//! Whole-check tests on hand-made histories. Times are in milliseconds.

use super::*;
use serde_json::{json, Value as Json};
use std::time::Duration;

/// One operation of a hand-made history.
#[derive(Clone)]
struct Spec {
    process: u64,
    f: &'static str,
    key: &'static str,
    invoke_value: Json,
    result: Json,
    start: u64,
    end: Option<u64>,
    outcome: &'static str,
    serializable: bool,
}

fn w(process: u64, key: &'static str, value: i64, start: u64, end: u64) -> Spec {
    Spec {
        process,
        f: "write",
        key,
        invoke_value: json!(value),
        result: json!(value),
        start,
        end: Some(end),
        outcome: "ok",
        serializable: false,
    }
}

fn r(process: u64, key: &'static str, value: Option<i64>, start: u64, end: u64) -> Spec {
    Spec {
        f: "read",
        invoke_value: Json::Null,
        result: json!(value),
        ..w(process, key, 0, start, end)
    }
}

fn cas(process: u64, key: &'static str, from: Option<i64>, to: i64, start: u64, end: u64) -> Spec {
    Spec {
        f: "cas",
        invoke_value: json!([from, to]),
        result: json!([from, to]),
        ..w(process, key, 0, start, end)
    }
}

impl Spec {
    fn fail(self) -> Spec {
        Spec {
            outcome: "fail",
            ..self
        }
    }

    /// Unknown outcome, reported at `end`.
    fn info(self) -> Spec {
        Spec {
            outcome: "info",
            ..self
        }
    }

    /// Never completes before the history ends.
    fn pending(self) -> Spec {
        Spec { end: None, ..self }
    }

    fn serializable(self) -> Spec {
        Spec {
            serializable: true,
            ..self
        }
    }
}

/// The specs as JSON lines, events in time order (ties in spec order).
fn jsonl(specs: &[Spec]) -> String {
    let mut events: Vec<(u64, usize, Json)> = Vec::new();
    for (n, s) in specs.iter().enumerate() {
        let mut invoke = json!({"process": s.process, "type": "invoke", "f": s.f, "key": s.key,
            "value": s.invoke_value, "time_ns": s.start * 1_000_000});
        if s.serializable {
            invoke["serializable"] = json!(true);
        }
        events.push((s.start, 2 * n, invoke));
        if let Some(end) = s.end {
            let mut done = json!({"process": s.process, "type": s.outcome, "f": s.f, "key": s.key,
                "time_ns": end * 1_000_000});
            if s.outcome == "ok" {
                done["value"] = s.result.clone();
            }
            if s.serializable {
                done["serializable"] = json!(true);
            }
            events.push((end, 2 * n + 1, done));
        }
    }
    events.sort_by_key(|&(t, order, _)| (t, order));
    events
        .into_iter()
        .map(|(_, _, e)| e.to_string() + "\n")
        .collect()
}

fn history(specs: &[Spec]) -> History {
    History::read_jsonl(jsonl(specs).as_bytes()).expect("well-formed test history")
}

fn check_with(specs: &[Spec], limits: Limits) -> Report {
    check(&history(specs), Model::Register, limits)
}

fn run(specs: &[Spec]) -> Report {
    check_with(
        specs,
        Limits {
            threads: 1,
            time_budget: None,
            ..Limits::default()
        },
    )
}

/// Index in the history of the operation `process` invoked at `start`.
fn at(report: &Report, process: u64, start: u64) -> usize {
    report
        .history()
        .ops()
        .iter()
        .position(|op| op.process == process && op.invoke_ns == start * 1_000_000)
        .expect("operation in the history")
}

fn violation(report: &Report) -> Violation {
    match report.verdict() {
        Verdict::NotLinearizable(v) => *v,
        other => panic!("expected a violation, got {other}\n{}", report.to_text()),
    }
}

fn assert_linearizable(specs: &[Spec]) {
    let report = run(specs);
    assert_eq!(
        report.verdict(),
        Verdict::Linearizable,
        "{}",
        report.to_text()
    );
    assert!(report.is_linearizable());
}

#[test]
fn sequential_history_linearizes() {
    let report = run(&[
        r(1, "k1", None, 0, 5),
        w(1, "k1", 1, 10, 20),
        r(2, "k1", Some(1), 30, 40),
        w(2, "k1", 2, 50, 60),
        r(1, "k1", Some(2), 70, 80),
        cas(1, "k1", Some(2), 3, 90, 100),
        r(2, "k1", Some(3), 110, 120),
    ]);
    assert_eq!(report.verdict(), Verdict::Linearizable);
    assert_eq!(report.keys.len(), 1);
    let k = &report.keys[0];
    assert_eq!((k.key.as_str(), k.ops, k.searched), ("k1", 7, 7));
    assert_eq!(k.states, 7, "one configuration per step of the only order");
}

#[test]
fn a_read_overlapping_two_writes_may_see_either() {
    for seen in [None, Some(1), Some(2)] {
        assert_linearizable(&[
            w(1, "k1", 1, 0, 100),
            w(2, "k1", 2, 10, 90),
            r(3, "k1", seen, 20, 30),
        ]);
    }
    // Reads may even see the writes in different orders while both are in flight, but once
    // both have ended everyone agrees on the last one.
    assert_linearizable(&[
        w(1, "k1", 1, 0, 100),
        w(2, "k1", 2, 10, 90),
        r(3, "k1", Some(2), 20, 30),
        r(4, "k1", Some(1), 40, 50),
        r(3, "k1", Some(1), 110, 120),
    ]);
}

#[test]
fn unknown_writes_may_or_may_not_happen() {
    // Read after the client gave up: the write happened.
    assert_linearizable(&[
        w(1, "k1", 1, 0, 10),
        w(2, "k1", 2, 20, 30).info(),
        r(3, "k1", Some(2), 100, 110),
    ]);
    // Never read: it did not happen (or was overwritten unseen) — also fine.
    assert_linearizable(&[
        w(1, "k1", 1, 0, 10),
        w(2, "k1", 2, 20, 30).info(),
        r(3, "k1", Some(1), 100, 110),
    ]);
    // Still outstanding when the history ends, and read long after.
    assert_linearizable(&[
        w(2, "k1", 2, 20, 0).pending(),
        r(3, "k1", None, 30, 40),
        r(3, "k1", Some(2), 1_000, 1_010),
    ]);
    // An unknown write that is never read does not even enter the search.
    let report = run(&[
        w(1, "k1", 1, 0, 10),
        w(2, "k1", 2, 20, 30).info(),
        r(3, "k1", Some(1), 40, 50),
    ]);
    assert_eq!((report.keys[0].ops, report.keys[0].searched), (3, 2));
}

#[test]
fn an_unknown_write_cannot_be_read_before_it_began() {
    let report = run(&[
        w(1, "k1", 1, 0, 10),
        r(3, "k1", Some(2), 12, 15),
        w(2, "k1", 2, 20, 30).info(),
    ]);
    let v = violation(&report);
    assert_eq!(v.op, at(&report, 3, 12));
    assert!(
        v.explanation.starts_with(
            "process 3 read 2 from k1 between 0.012 s and 0.015 s, but 2 was only written \
             afterwards: process 2's write 2 on k1, invoked at 0.020 s, has an unknown outcome."
        ),
        "{}",
        v.explanation
    );
}

#[test]
fn a_cas_chain_linearizes() {
    assert_linearizable(&[
        cas(1, "k1", None, 1, 0, 10),
        cas(2, "k1", None, 2, 5, 15).fail(),
        cas(1, "k1", Some(1), 3, 20, 30),
        cas(2, "k1", Some(1), 4, 25, 35).fail(),
        // Two concurrent swaps from 3: one wins.
        cas(1, "k1", Some(3), 5, 40, 60),
        cas(2, "k1", Some(3), 6, 41, 61).fail(),
        r(3, "k1", Some(5), 70, 80),
        // An unknown swap from 5 that evidently happened.
        cas(3, "k1", Some(5), 7, 90, 100).info(),
        r(4, "k1", Some(7), 110, 120),
    ]);
}

#[test]
fn a_read_of_missing_after_a_completed_write_is_stale() {
    let report = run(&[w(1, "k1", 1, 0, 10), r(2, "k1", None, 20, 30)]);
    let v = violation(&report);
    assert_eq!(v.key, "k1");
    assert_eq!(v.op, at(&report, 2, 20));
    assert_eq!(v.window, vec![at(&report, 1, 0), at(&report, 2, 20)]);
    assert_eq!(v.possible_values, vec![Some(1)]);
    assert_eq!(v.prefix, vec![at(&report, 1, 0)]);
    assert_eq!(
        v.explanation.lines().next(),
        Some(
            "process 2 found k1 missing between 0.020 s and 0.030 s, but k1 was no longer missing: \
             process 1 wrote 1 to k1 between 0.000 s and 0.010 s before the read began, and nothing \
             deletes keys."
        )
    );
}

#[test]
fn equal_timestamps_follow_the_file_order() {
    // The write's completion is logged before the read's invocation, at the same instant.
    let report = run(&[w(1, "k1", 1, 0, 10), r(2, "k1", None, 10, 20)]);
    assert_eq!(violation(&report).op, at(&report, 2, 10));
}

#[test]
fn a_lost_write_is_caught() {
    let specs = [
        w(1, "k1", 1, 0, 10),
        r(3, "k1", Some(1), 12, 14),
        w(2, "k1", 2, 20, 30),
        r(3, "k1", Some(1), 40, 50),
        r(3, "k1", Some(1), 60, 70),
    ];
    let report = run(&specs);
    let v = violation(&report);
    assert_eq!(v.key, "k1");
    assert_eq!(
        v.op,
        at(&report, 3, 40),
        "the first read that misses the write"
    );
    assert_eq!(
        v.window,
        vec![at(&report, 1, 0), at(&report, 2, 20), at(&report, 3, 40)]
    );
    assert_eq!(v.possible_values, vec![Some(2)]);
    assert_eq!(v.prefix.len(), 3);
    let expected = "process 3 read 1 from k1 between 0.040 s and 0.050 s, but 1 had already been \
                    overwritten before the read began: process 2 wrote 2 to k1 between 0.020 s and \
                    0.030 s, after process 1 wrote 1 to k1 between 0.000 s and 0.010 s.\n\
                    The longest prefix that linearizes orders 3 operations on k1, ending with \
                    process 2 wrote 2 to k1 between 0.020 s and 0.030 s; the read cannot be placed \
                    after any order of them.";
    assert_eq!(v.explanation, expected);
    let text = report.to_text();
    assert!(text.contains("k1: NOT LINEARIZABLE\n"), "{text}");
    assert!(
        text.contains("  > line 7      process 3    read -> 1"),
        "{text}"
    );
    assert!(
        text.ends_with("verdict: NOT LINEARIZABLE (0 linearizable, 1 not, 0 unknown)\n"),
        "{text}"
    );
}

#[test]
fn an_impossible_cas_is_caught() {
    // Its expected value had been overwritten.
    let report = run(&[
        w(1, "k1", 1, 0, 10),
        w(2, "k1", 2, 20, 30),
        cas(3, "k1", Some(1), 3, 40, 50),
    ]);
    let v = violation(&report);
    assert_eq!(v.op, at(&report, 3, 40));
    assert!(v.explanation.starts_with(
        "process 3 swapped k1 from 1 to 3 between 0.040 s and 0.050 s, but 1 had already been \
         overwritten before the cas began"
    ));
    // Two concurrent swaps from the same value cannot both succeed.
    let report = run(&[
        w(1, "k1", 1, 0, 10),
        cas(2, "k1", Some(1), 2, 20, 40),
        cas(3, "k1", Some(1), 3, 21, 41),
    ]);
    let v = violation(&report);
    assert_eq!(v.op, at(&report, 3, 21));
    assert_eq!(v.possible_values, vec![Some(2)]);
    assert_eq!(
        v.window,
        vec![at(&report, 1, 0), at(&report, 2, 20), at(&report, 3, 21)]
    );
    assert_eq!(
        v.explanation.lines().next(),
        Some(
            "process 3 swapped k1 from 1 to 3 between 0.021 s and 0.041 s, but no order of the \
             operations on k1 that respects real time lets the cas see 1: every order of what \
             came before leaves k1 holding 2 there."
        )
    );
    assert!(v.explanation.contains(
        "Concurrent with it: process 2 swapped k1 from 1 to 2 between 0.020 s and 0.040 s."
    ));
}

#[test]
fn reads_that_disagree_on_the_order_of_writes() {
    // Both writes ended; one reader saw 2 last, the next saw 1: no single order explains both.
    let report = run(&[
        w(1, "k1", 1, 0, 10),
        w(2, "k1", 2, 0, 10),
        r(3, "k1", Some(2), 20, 30),
        r(4, "k1", Some(1), 40, 50),
    ]);
    let v = violation(&report);
    assert_eq!(v.op, at(&report, 4, 40));
    assert_eq!(v.possible_values, vec![Some(2)]);
    assert_eq!(
        v.window,
        vec![
            at(&report, 1, 0),
            at(&report, 2, 0),
            at(&report, 3, 20),
            at(&report, 4, 40)
        ],
        "both writes and the read that fixed their order"
    );
    assert!(
        v.explanation.contains(
            "\nBy then, process 3 read 2 from k1 between 0.020 s and 0.030 s; 2 was written when \
             process 2 wrote 2 to k1 between 0.000 s and 0.010 s.\n"
        ),
        "{}",
        v.explanation
    );
}

#[test]
fn a_read_of_a_never_written_value_is_caught() {
    let report = run(&[w(1, "k1", 1, 0, 10), r(2, "k1", Some(99), 20, 30)]);
    let v = violation(&report);
    assert_eq!(v.op, at(&report, 2, 20));
    assert_eq!(v.window, vec![at(&report, 2, 20)]);
    assert!(v.explanation.starts_with(
        "process 2 read 99 from k1 between 0.020 s and 0.030 s, but no operation ever wrote 99 to k1."
    ));
    // A failed write definitely did not happen.
    let report = run(&[w(1, "k1", 1, 0, 10).fail(), r(2, "k1", Some(1), 20, 30)]);
    let v = violation(&report);
    assert_eq!(v.window, vec![at(&report, 1, 0), at(&report, 2, 20)]);
    assert!(v
        .explanation
        .contains("but the only attempt to write 1 failed, so it never took effect"));
}

#[test]
fn only_the_bad_key_is_named() {
    let report = run(&[
        w(1, "a", 1, 0, 10),
        w(2, "b", 1, 0, 10),
        w(3, "c", 1, 0, 10),
        w(1, "a", 2, 20, 30),
        w(2, "b", 2, 20, 30),
        w(3, "c", 2, 20, 30),
        r(1, "a", Some(2), 40, 50),
        r(2, "b", Some(1), 40, 50),
        r(3, "c", Some(2), 40, 50),
    ]);
    let v = violation(&report);
    assert_eq!(v.key, "b");
    assert_eq!(v.op, at(&report, 2, 40));
    let verdicts: Vec<(&str, bool)> = report
        .keys
        .iter()
        .map(|k| (k.key.as_str(), k.verdict.is_linearizable()))
        .collect();
    assert_eq!(verdicts, vec![("a", true), ("b", false), ("c", true)]);
    assert_eq!(report.violations().count(), 1);
    // The same answer on several threads.
    let parallel = check(
        report.history(),
        Model::Register,
        Limits {
            threads: 3,
            ..Limits::default()
        },
    );
    assert_eq!(parallel.verdict(), report.verdict());
}

#[test]
fn a_stale_serializable_read_is_not_linearizable_and_says_so() {
    // Process 3 read the old value after the new one was written: stale.
    let report = run(&[
        w(1, "k1", 1, 0, 10),
        w(2, "k1", 2, 20, 30),
        r(3, "k1", Some(1), 40, 50).serializable(),
    ]);
    let v = violation(&report);
    assert_eq!(v.op, at(&report, 3, 40));
    assert!(
        v.explanation.starts_with(
            "process 3 read 1 from k1 (a serializable read) between 0.040 s and 0.050 s"
        ),
        "{}",
        v.explanation
    );
    assert!(v
        .explanation
        .ends_with("which etcd documents as possibly stale."));
    // Serializable reads that happen to be fresh pass like any read.
    assert_linearizable(&[
        w(1, "k1", 1, 0, 10),
        r(3, "k1", Some(1), 15, 18).serializable(),
        w(2, "k1", 2, 20, 30),
        r(4, "k1", Some(2), 40, 50).serializable(),
    ]);
}

/// Twelve concurrent writes and a read nobody could have seen: the search must try every
/// subset of the writes before it can say no.
fn pathological() -> Vec<Spec> {
    let mut specs: Vec<Spec> = (0..12).map(|p| w(p, "k1", p as i64, 0, 100)).collect();
    specs.push(r(99, "k1", None, 200, 210));
    specs
}

#[test]
fn the_state_limit_gives_unknown() {
    let report = check_with(
        &pathological(),
        Limits {
            max_states: 100,
            time_budget: None,
            threads: 1,
        },
    );
    assert_eq!(
        report.verdict(),
        Verdict::Unknown("k1: state limit reached: more than 100 configurations".to_string())
    );
    assert!(report
        .to_text()
        .contains("k1: UNKNOWN: state limit reached"));
    let report = check_with(
        &pathological(),
        Limits {
            max_states: usize::MAX,
            time_budget: Some(Duration::ZERO),
            threads: 1,
        },
    );
    assert!(
        matches!(report.verdict(), Verdict::Unknown(ref r) if r.starts_with("k1: time budget ran out")),
        "{}",
        report.to_text()
    );
    // Unbounded, it is decided.
    let report = run(&pathological());
    let v = violation(&report);
    assert_eq!(v.op, at(&report, 99, 200));
    assert_eq!(
        report.keys[0].states,
        12 * (1 << 11),
        "every (subset, last write) pair"
    );
}

#[test]
fn html_timeline_marks_the_window_and_faults() {
    let report = run(&[
        w(1, "k<1>", 1, 0, 10),
        w(2, "k<1>", 2, 20, 30),
        r(3, "k<1>", Some(1), 40, 50),
        w(4, "k2", 1, 0, 10).info(),
        w(5, "k2", 2, 5, 15).fail(),
    ]);
    let html = report.to_html(&[(15_000_000, 35_000_000, "partition m1 | m2,m3".to_string())]);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(!html.contains("<script"), "no JS");
    assert!(!html.contains("k<1>"), "keys are escaped");
    assert!(html.contains("<h2>k&lt;1&gt;: not linearizable</h2>"));
    assert_eq!(
        html.matches("class=\"ok culprit\"").count(),
        2,
        "close-up and overview"
    );
    assert_eq!(html.matches("class=\"ok in-window\"").count(), 4);
    assert_eq!(html.matches("<rect class=\"band\"").count(), 2);
    assert_eq!(
        html.matches("<text x=\"4\" y=\"").count(),
        3 + 5,
        "lanes: close-up, overview"
    );
    assert!(html.contains("class=\"info\""));
    assert!(html.contains("class=\"fail\""));
    assert!(html.contains(">partition m1 | m2,m3</text>"));
    let path = std::env::temp_dir().join(format!("simvm-checker-test-{}.html", std::process::id()));
    report.write_html(&path, &[]).expect("write the timeline");
    let written = std::fs::read_to_string(&path).expect("read it back");
    std::fs::remove_file(&path).ok();
    assert!(written.contains("<svg"));
    assert!(!written.contains("class=\"fault\""));
}

#[test]
fn an_empty_history_is_linearizable() {
    let report = check(&History::default(), Model::Register, Limits::default());
    assert_eq!(report.verdict(), Verdict::Linearizable);
    assert!(report.keys.is_empty());
    assert!(report.to_text().contains("verdict: LINEARIZABLE"));
    assert!(report.to_html(&[]).contains("</html>"));
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let e = History::read_jsonl(
        "{\"process\":1,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"k\",\"time_ns\":1}\n{\"process\":1,\"type\":\"ok\"\n"
            .as_bytes(),
    )
    .unwrap_err();
    assert_eq!(e.line, 2);
    assert_eq!(
        e.to_string(),
        "line 2: invalid event: EOF while parsing an object (column 24)"
    );
}

/// Tiny xorshift for the randomised comparison below.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A small random single-key history: 3 client slots, 2–3 operations each, results drawn at
/// random (so often impossible), outcomes ok, fail or unknown.
fn random_history(rng: &mut Rng) -> Vec<Spec> {
    let mut specs = Vec::new();
    let mut value = 0;
    let mut next_process = 10;
    for slot in 0..3 {
        let mut process = slot;
        let mut t = rng.below(5);
        for _ in 0..2 + rng.below(2) {
            let start = t + rng.below(5);
            let end = start + 1 + rng.below(15);
            t = end;
            let seen = |rng: &mut Rng| match rng.below(5) {
                0 => None,
                v => Some(v as i64),
            };
            let spec = match rng.below(3) {
                0 => r(process, "k", seen(rng), start, end),
                1 => {
                    value += 1;
                    w(process, "k", value, start, end)
                }
                _ => {
                    value += 1;
                    let from = seen(rng);
                    cas(process, "k", from, value, start, end)
                }
            };
            let spec = match rng.below(6) {
                0 => spec.fail(),
                1 => spec.info(),
                _ => spec,
            };
            if spec.outcome == "info" {
                process = next_process;
                next_process += 1;
            }
            specs.push(spec);
        }
    }
    specs
}

/// Linearizability by brute force: try every order of the operations that respects real time,
/// where failed operations and unknown reads are left out and unknown writes may be.
fn brute_force(history: &History) -> bool {
    let ops: Vec<&Op> = history
        .ops()
        .iter()
        .filter(|op| op.outcome != Outcome::Fail)
        .filter(|op| !(op.outcome == Outcome::Info && matches!(op.action, Action::Read { .. })))
        .collect();
    fn go(ops: &[&Op], done: &mut Vec<bool>, state: Option<i64>) -> bool {
        let required_left = (0..ops.len()).any(|i| !done[i] && ops[i].outcome == Outcome::Ok);
        if !required_left {
            return true;
        }
        for c in 0..ops.len() {
            if done[c] {
                continue;
            }
            let blocked = (0..ops.len()).any(|r| {
                !done[r] && r != c && ops[r].outcome == Outcome::Ok && ops[r].precedes(ops[c])
            });
            if blocked {
                continue;
            }
            if let Some(next) = Model::Register.step(state, &ops[c].action) {
                done[c] = true;
                let found = go(ops, done, next);
                done[c] = false;
                if found {
                    return true;
                }
            }
        }
        false
    }
    go(&ops, &mut vec![false; ops.len()], None)
}

#[test]
fn agrees_with_brute_force_on_random_histories() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut good, mut bad) = (0, 0);
    for _ in 0..3000 {
        let specs = random_history(&mut rng);
        let h = history(&specs);
        let expected = brute_force(&h);
        let report = check(
            &h,
            Model::Register,
            Limits {
                threads: 1,
                ..Limits::default()
            },
        );
        assert_eq!(
            report.is_linearizable(),
            expected,
            "{}\n{}",
            jsonl(&specs),
            report.to_text()
        );
        if let Verdict::NotLinearizable(v) = report.verdict() {
            assert!(v.window.contains(&v.op));
            assert!(!v.explanation.is_empty());
            // The prefix is itself a linearization: legal steps, in an order real time allows.
            let ops = h.ops();
            assert!(!v.prefix.contains(&v.op));
            let mut state = None;
            for (n, &i) in v.prefix.iter().enumerate() {
                state = Model::Register
                    .step(state, &ops[i].action)
                    .expect("a legal step");
                assert!(v.prefix[n + 1..].iter().all(|&j| !ops[j].precedes(&ops[i])));
            }
            assert!(v
                .possible_values
                .iter()
                .all(|&s| Model::Register.step(s, &ops[v.op].action).is_none()));
        }
        if expected {
            good += 1;
        } else {
            bad += 1;
        }
    }
    assert!(
        good > 300 && bad > 300,
        "a useful mix: {good} linearizable, {bad} not"
    );
}

#[test]
fn mangled_histories_never_panic() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let (mut accepted, mut rejected) = (0, 0);
    for _ in 0..2000 {
        let mut lines: Vec<String> = jsonl(&random_history(&mut rng))
            .lines()
            .map(String::from)
            .collect();
        for _ in 0..1 + rng.below(3) {
            let n = rng.below(lines.len() as u64) as usize;
            match rng.below(5) {
                0 => {
                    let m = rng.below(lines.len() as u64) as usize;
                    lines.swap(n, m);
                }
                1 => {
                    lines.remove(n);
                }
                2 => {
                    let line = lines[n].clone();
                    lines.insert(n, line);
                }
                3 => {
                    let cut = rng.below(lines[n].len() as u64) as usize;
                    lines[n].truncate(cut);
                }
                _ => {
                    // Replace one digit: other values, times, processes.
                    let digits: Vec<usize> = lines[n]
                        .char_indices()
                        .filter(|(_, c)| c.is_ascii_digit())
                        .map(|(i, _)| i)
                        .collect();
                    if let Some(&at) = digits.get(rng.below(digits.len().max(1) as u64) as usize) {
                        let d = char::from(b'0' + rng.below(10) as u8).to_string();
                        lines[n].replace_range(at..at + 1, &d);
                    }
                }
            }
            if lines.is_empty() {
                break;
            }
        }
        match History::read_jsonl(lines.join("\n").as_bytes()) {
            Ok(h) => {
                accepted += 1;
                let report = check(
                    &h,
                    Model::Register,
                    Limits {
                        threads: 1,
                        ..Limits::default()
                    },
                );
                assert!(!report.to_text().is_empty());
                assert!(report.to_html(&[(0, 5, "f".into())]).ends_with("</html>\n"));
            }
            Err(e) => {
                rejected += 1;
                assert!(e.line >= 1 && e.line <= lines.len(), "{e}");
            }
        }
    }
    assert!(
        accepted > 100 && rejected > 100,
        "{accepted} accepted, {rejected} rejected"
    );
}
