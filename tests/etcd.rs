//! etcd: the recipe's real Debian binaries (etcd-server, etcd-client) in a guest, and the etcd
//! examples end to end: a cluster under faults, a workload's history, the linearizability check.

use std::path::Path;

use simvm_tests::{
    assert_same_run, browser_dom, image, kvm_or_skip, require_chromium, side_by_side, simvm,
    simvm_on, temp_dir,
};

#[test]
fn etcd_and_etcdctl_run_in_the_etcd_image() {
    if !kvm_or_skip("etcd_and_etcdctl_run_in_the_etcd_image") {
        return;
    }
    let image = image(Some("etcd"));
    let run = simvm_on(
        &image,
        &[
            "run",
            "--seed",
            "1",
            "--mem",
            "256M",
            "--",
            "sh",
            "-c",
            "etcd --version && etcdctl version",
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.all());
    let console = run.console("m1").join("\n");
    assert!(console.contains("etcd Version: 3.4"), "{}", run.all());
    assert!(console.contains("etcdctl version: 3.4"), "{}", run.all());
}

/// `examples/etcd.toml` and `examples/etcd-serializable.toml` end to end, as much as one CI slot
/// affords (docs/etcd.md has the ten-seed figures): seed 1 of the nemesis example twice, side by
/// side with seed 1 of the serializable one. The first is linearizable and replays byte for
/// byte; the second's stale read on the isolated member is caught and explained; both timelines
/// open in a real browser with their operations and the faults shaded.
#[test]
fn etcd_histories_are_checked_replayed_and_drawn() {
    if !kvm_or_skip("etcd_histories_are_checked_replayed_and_drawn") {
        return;
    }
    require_chromium();
    let dir = temp_dir("etcd-check");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let jobs = [
        ("etcd.toml", "first"),
        ("etcd.toml", "again"),
        ("etcd-serializable.toml", "stale"),
    ];
    let history = |name: &str| dir.join(format!("{name}.jsonl"));
    let runs = side_by_side(jobs.len(), |i| {
        let (example, name) = jobs[i];
        let scenario = examples.join(example);
        let out = history(name);
        simvm(
            &[
                "run",
                &scenario.to_string_lossy(),
                "--seed",
                "1",
                "--history",
                &out.to_string_lossy(),
            ],
            &[],
        )
    });
    let [first, again, stale] = &runs[..] else {
        unreachable!()
    };

    // Seed 1 under its nemesis: the check ran and passed.
    assert_eq!(first.code, Some(0), "{}", first.all());
    assert!(
        first.summary().ends_with(" linearizable"),
        "{}",
        first.summary()
    );
    let ops = operations(&history("first"));
    let count = |f: &str, outcome: &str| {
        (ops.iter())
            .filter(|(e, o)| e["f"] == f && o["type"] == outcome)
            .count()
    };
    for f in ["read", "write", "cas"] {
        assert!(count(f, "ok") >= 10, "few {f} ok: {ops:?}");
    }
    assert!(count("cas", "fail") >= 1, "no cas ever found another value");
    // The final reads (processes 1000001..) read every key after the faults.
    let finals: Vec<&str> = (ops.iter())
        .filter(|(e, o)| e["process"].as_u64() > Some(1_000_000) && o["type"] == "ok")
        .map(|(e, _)| e["key"].as_str().expect("a key"))
        .collect();
    assert_eq!(finals, ["k1", "k2", "k3"], "final reads");
    // Same seed, same run: digest and history byte for byte.
    assert_same_run(first, again, &["m1", "m2", "m3", "m4"]);
    assert_eq!(
        std::fs::read(history("again")).expect("second history"),
        std::fs::read(history("first")).expect("first history"),
        "the replay wrote another history"
    );

    // Serializable reads while m3 is cut off: a stale read, named as such.
    assert_eq!(stale.code, Some(1), "{}", stale.all());
    assert!(
        stale.summary().ends_with(" NOT-LINEARIZABLE"),
        "{}",
        stale.summary()
    );
    assert!(
        stale.stderr.contains("(a serializable read)")
            && stale
                .stderr
                .contains("which etcd documents as possibly stale"),
        "the explanation does not name the stale read:\n{}",
        stale.stderr
    );

    // Both timelines in a browser: every operation a bar, the faults shaded.
    let dom = browser_dom(&history("first").with_extension("html"));
    let bars = dom.matches("<title>line ").count();
    assert_eq!(bars, ops.len(), "one bar per operation");
    assert!(dom.contains("class=\"fault\""), "no fault shaded");
    let dom = browser_dom(&history("stale").with_extension("html"));
    assert!(
        dom.contains("partition m3 | m1 m2"),
        "the partition is not shaded"
    );
    assert!(
        dom.contains("class=\"band\""),
        "the offending window is not marked"
    );
}

/// The history's operations: each invocation with its completion.
fn operations(path: &Path) -> Vec<(serde_json::Value, serde_json::Value)> {
    let text = std::fs::read_to_string(path).expect("the history was written");
    let mut open = std::collections::HashMap::new();
    let mut ops = Vec::new();
    for line in text.lines() {
        let event: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let process = event["process"].as_u64().expect("a process");
        if event["type"] == "invoke" {
            open.insert(process, event);
        } else {
            let invoke = open
                .remove(&process)
                .expect("a completion follows its invocation");
            ops.push((invoke, event));
        }
    }
    assert!(open.is_empty(), "operations left open: {open:?}");
    ops
}
