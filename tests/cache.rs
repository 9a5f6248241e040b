//! `simvm image prune` on a scratch cache: it removes other simvm builds' templates and keeps
//! this one's. No guest boots, so no KVM is needed.

use std::path::{Path, PathBuf};

use simvm_tests::{simvm, temp_dir, Run};
use simvm_vmm::template::{SIMVM_BUILD, TEMPLATE_FORMAT};

/// `templates/KEY/` with the version fields the simvm `made_by` writes, and 2.5 MB of memory
/// (data, not holes, so that it takes that much disk).
fn template(cache: &Path, key: &str, made_by: &str) -> PathBuf {
    let dir = cache.join("templates").join(key);
    std::fs::create_dir_all(&dir).unwrap();
    let json = format!(r#"{{"format":{TEMPLATE_FORMAT},"simvm":"{made_by}","key":"{key}"}}"#);
    std::fs::write(dir.join("template.json"), json).unwrap();
    // Bytes that no file system compresses away.
    let mut x: u32 = 0x9e37_79b9;
    let memory: Vec<u8> = (0..2_500_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    std::fs::write(dir.join("memory"), memory).unwrap();
    dir
}

fn prune(cache: &Path, args: &[&str]) -> Run {
    let mut all = vec!["image", "prune"];
    all.extend_from_slice(args);
    simvm(&all, &[("SIMVM_CACHE_DIR", cache.to_str().unwrap())])
}

#[test]
fn prune_removes_other_builds_templates_and_keeps_this_ones() {
    let cache = temp_dir("prune");
    let current = template(&cache, &"a".repeat(32), SIMVM_BUILD);
    let other = template(&cache, &"b".repeat(32), "0.0.1+0123456789abcdef");

    let run = prune(&cache, &[]);

    assert_eq!(run.code, Some(0), "{}", run.all());
    assert!(!other.exists(), "{}", run.all());
    assert!(current.join("memory").is_file(), "{}", run.all());
    let why = format!("made by simvm 0.0.1+0123456789abcdef (template format {TEMPLATE_FORMAT})");
    let line = format!("removed {}: {why}, 2.5 MB", other.display());
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines, [line.as_str(), "removed 1 template, 2.5 MB"]);

    // Now nothing is another build's; --all takes this one's too.
    let again = prune(&cache, &[]);
    assert_eq!(
        again.stdout,
        "removed 0 templates, 0 B\n",
        "{}",
        again.all()
    );
    let all = prune(&cache, &["--all"]);
    assert_eq!(all.code, Some(0), "{}", all.all());
    assert!(!current.exists(), "{}", all.all());
    assert!(all.stdout.ends_with("removed 1 template, 2.5 MB\n"));
}

#[test]
fn a_bad_duration_is_refused_with_a_clear_error() {
    let cache = temp_dir("prune-bad");
    let run = prune(&cache, &["--unused-for", "nonsense"]);
    assert_eq!(run.code, Some(2), "{}", run.all());
    assert!(
        run.stderr
            .contains("expected a duration like \"500ms\" (units ns, us, ms, s, m, h, d)"),
        "{}",
        run.all()
    );
    assert!(run.stdout.is_empty(), "{}", run.all());
    let run = prune(&cache, &["--unused-for", "30"]);
    assert_eq!(run.code, Some(2), "{}", run.all());
    assert!(run.stderr.contains("needs a unit"), "{}", run.all());
}

#[test]
fn an_unusable_cache_is_a_clear_error() {
    let cache = temp_dir("prune-unusable");
    std::fs::write(cache.join("templates"), "not a directory").unwrap();
    let run = prune(&cache, &["--unused-for", "7d"]);
    assert_eq!(run.code, Some(2), "{}", run.all());
    assert!(
        run.stderr
            .contains("templates: cannot list the cached templates: Not a directory"),
        "{}",
        run.all()
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.all());
}
