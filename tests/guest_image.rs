//! The guest image: its kernel configuration holds every required option and none of the
//! forbidden ones, its kernel parses every tuning's parameter, and a second build with nothing
//! changed is a cache hit. (Booting it is what every other integration test does.)

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use simvm_tests::image;
use simvm_vmm::profile::orc::{reg, FrameKind};
use simvm_vmm::profile::{KernelProbes, Symbols, Unwinder};
use simvm_vmm::tuning::GuestTuning;

/// `CONFIG_X` -> value, for every option set in a `.config`.
fn parse_config(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| l.starts_with("CONFIG_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The option lines of a list file: comments and blank lines dropped.
fn list(name: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../guest-images/kernel")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn kernel_config_has_every_required_and_no_forbidden_option() {
    let image = image(None);
    let path = image.config.expect("build.sh prints config=PATH");
    let config = parse_config(&std::fs::read_to_string(&path).expect("read the built .config"));
    let mut problems = Vec::new();
    for line in list("required.txt") {
        let (key, want) = match line.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (line.clone(), None),
        };
        match (config.get(&key), want) {
            (None, _) => problems.push(format!("{key} is required but not set")),
            (Some(v), _) if v == "n" => problems.push(format!("{key} is required but =n")),
            (Some(v), Some(w)) if *v != w => problems.push(format!("{key}={v}, required {w}")),
            _ => {}
        }
    }
    for line in list("forbidden.txt") {
        let key = line.split('=').next().unwrap_or(&line).to_string();
        if config.get(&key).is_some_and(|v| v != "n") {
            problems.push(format!("{key} is forbidden but set"));
        }
    }
    assert!(
        problems.is_empty(),
        "{}:\n{}",
        path.display(),
        problems.join("\n")
    );
    // The lists are not empty by accident.
    assert!(list("required.txt").len() > 20 && list("forbidden.txt").len() > 10);
}

/// A run passes a tuning's parameter only to a kernel with the function that parses it, so a
/// patch that renamed one would turn its tuning off without a word: the default kernel must
/// parse them all, with every tuning on and with every tuning off.
#[test]
fn the_default_kernel_parses_every_tuning_parameter() {
    let kernel = image(None).kernel;
    let symbols = Symbols::beside(&kernel);
    assert!(
        !symbols.is_empty(),
        "no System.map beside {}",
        kernel.display()
    );
    for tuning in [GuestTuning::default(), GuestTuning::NONE] {
        assert_eq!(
            tuning.kernel_args_for(&symbols),
            tuning.kernel_args(),
            "{}",
            kernel.display()
        );
    }
}

/// The default kernel has no frame pointers (docs/performance.md "Frame pointers out, ORC
/// tables in"), so the profiler walks its stacks with its ORC tables: they must be in the
/// vmlinux and describe its functions.
#[test]
fn the_default_kernel_has_orc_tables_for_the_profiler() {
    let kernel = image(None).kernel;
    let Unwinder::Orc(table) = KernelProbes::for_kernel(&kernel).stacks.unwinder else {
        panic!(
            "{} has no ORC tables: the profiler would follow frame pointers it does not have",
            kernel.display()
        );
    };
    assert!(table.len() > 10_000, "{} ORC entries", table.len());
    let symbols = Symbols::beside(&kernel);
    // C functions: an ordinary call frame, the return address just above the stack pointer at
    // the first instruction. do_syscall_64 is called from the entry code; the IPv4 output
    // path is in the object objtool gave up on at -funroll-loops (guest patch 0039), which
    // left every sent segment's stack ending there.
    for function in [
        "do_syscall_64",
        "__ip_queue_xmit",
        "ip_output",
        "ip_finish_output2",
    ] {
        let start = symbols
            .address_of(function)
            .unwrap_or_else(|| panic!("{function} in System.map"));
        let entry = table
            .find(start)
            .unwrap_or_else(|| panic!("an ORC entry for {function}"));
        assert_eq!(
            (entry.kind, entry.sp_reg, entry.sp_offset),
            (FrameKind::Call, reg::SP, 8),
            "the ORC entry at {function}'s first instruction"
        );
    }
}

#[test]
fn rebuilding_an_unchanged_image_is_a_cache_hit() {
    let _ = image(None);
    let started = Instant::now();
    let output = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images/build.sh"))
        .output()
        .expect("run build.sh");
    assert!(output.status.success());
    // Not a timing test of simvm: a rebuild that took minutes would mean the cache missed.
    assert!(
        started.elapsed().as_secs() < 30,
        "an unchanged rebuild took {:?}",
        started.elapsed()
    );
}
