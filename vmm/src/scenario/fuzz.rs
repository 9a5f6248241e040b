//! Fuzz targets of the scenario parser and the unit parser it shares with the command line.
//!
//! Inputs: arbitrary text and bytes, text built from TOML's punctuation, structured but wrong
//! TOML (every key the format knows and some it does not, in every table, with values of every
//! type, some almost right), and the example files with random edits. Properties:
//!
//! - nothing panics (proptest fails a case that does);
//! - every error names the file and a line and column inside the text, and is displayed as
//!   `FILE:LINE:COLUMN: message` with the offending line under it;
//! - every scenario accepted writes back as TOML that parses to the same scenario;
//! - durations and sizes: any text parses or errs without panicking, and every value formats to
//!   text that parses back to it exactly.
//!
//! The budget is `SIMVM_FUZZ_CASES` cases per target (default 256): the ordinary test run is a
//! smoke test, and a long run is, for example,
//! `SIMVM_FUZZ_CASES=1000000 cargo test --release -p simvm-vmm scenario::fuzz`.

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

use super::*;
use crate::units::{format_ns, format_size, parse_duration_ns, parse_size};
use toml::Value;

const FILE: &str = "fuzz.toml";
const DEFAULT_CASES: u32 = 256;

fn config() -> Config {
    let cases = std::env::var("SIMVM_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        // Failures are reported with their input; no regression files in the source tree.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

/// The properties every input must have.
fn check(text: &str) -> Result<(), TestCaseError> {
    match Scenario::parse(text, FILE) {
        Ok(scenario) => {
            let written = scenario.to_string();
            match Scenario::parse_with_until(
                &written,
                "written.toml",
                scenario.until_ns.or(Some(1)),
            ) {
                Ok(again) => prop_assert_eq!(again, scenario, "written back as:\n{}", written),
                Err(e) => prop_assert!(false, "written back as:\n{written}\nwhich fails: {e}"),
            }
        }
        Err(error) => check_located(text, &error)?,
    }
    Ok(())
}

fn check_located(text: &str, error: &ScenarioError) -> Result<(), TestCaseError> {
    let ScenarioError::Invalid {
        file,
        line,
        column,
        message,
        excerpt,
    } = error
    else {
        return Err(TestCaseError::fail(format!("not located: {error}")));
    };
    prop_assert_eq!(file, FILE);
    let lines: Vec<&str> = text.split('\n').collect();
    prop_assert!(
        (1..=lines.len()).contains(line),
        "line {line} of {}: {error}",
        lines.len()
    );
    let width = lines[line - 1].chars().count();
    prop_assert!(
        (1..=width + 1).contains(column),
        "column {column} of a line of {width} characters: {error}"
    );
    prop_assert!(!message.trim().is_empty(), "no message: {error:?}");
    let shown = error.to_string();
    let prefix = format!("{FILE}:{line}:{column}: ");
    prop_assert!(shown.starts_with(&prefix), "{}", shown);
    prop_assert!(excerpt.ends_with('^'), "no caret: {}", shown);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Inputs

const KEYS: &[&str] = &[
    "description",
    "until",
    "crash_policy",
    "network",
    "machine",
    "timeline",
    "latency",
    "jitter",
    "loss",
    "duplicate",
    "bandwidth",
    "reorder",
    "link",
    "from",
    "to",
    "both",
    "up",
    "name",
    "count",
    "command",
    "recipe",
    "memory",
    "env",
    "expect",
    "disks",
    "size",
    "dir",
    "image",
    "fs",
    "mount",
    "latency_mean",
    "at",
    "partition",
    "one_way",
    "heal",
    "kill",
    "policy",
    "pause",
    "for",
    "resume",
    "clock",
    "rate",
    "step",
    "offset",
    "start_spread",
    "chaos",
    "aslr",
    "nemesis",
    "faults",
    "interval",
    "duration",
    "quiet",
    "start",
    "clock_spread",
    "restart",
    "disk",
    "latent_errors",
    "write_errors",
    "stall",
    "slow",
    "clear",
    "bogus",
    "SIMVM_INDEX",
    "PATH",
    "\"quoted key\"",
    "a.b",
];

const STRINGS: &[&str] = &[
    "5s",
    "0s",
    "1.5ms",
    "1500us",
    "-1s",
    "1.5ns",
    "99999999999h",
    "18446744073709551615ns",
    "10",
    "",
    " ",
    "m1",
    "m2",
    "m3",
    "m9",
    "db",
    "1st",
    "all",
    "running",
    "any",
    "100%",
    "1%",
    "150%",
    "-5%",
    "unlimited",
    "100Mbit",
    "0Mbit",
    "1.5gbit",
    "256M",
    "100000K",
    "1000001",
    "0.1k",
    "4K",
    "keep-all",
    "lose-all",
    "subset",
    "torn",
    "ext4",
    "raw",
    "etcd",
    "xfs",
    "/data",
    "/proc",
    "relative",
    "m1/vda",
    "m1/vdb",
    "m2/vdz",
    "0+8",
    "8+0",
    "x+y",
    "18446744073709551615+1",
    "true",
    "é",
    "\u{0}",
    "a\nb",
    "sh -c 'exit 3'",
    "partition-1",
];

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "-1",
    "63",
    "64",
    "65",
    "255",
    "256",
    "4096",
    "9223372036854775807",
    "-9223372036854775808",
    "1.5",
    "0.25",
    "-0.0",
    "1e999",
    "nan",
    "inf",
    "-inf",
    "0x10",
    "1979-05-27T07:32:00Z",
];

const HEADERS: &[&str] = &[
    "[network]",
    "[[network.link]]",
    "[[network.link]]",
    "[[machine]]",
    "[[machine]]",
    "[[machine]]",
    "[[timeline]]",
    "[[timeline]]",
    "[[timeline]]",
    "[[machine.disks]]",
    "[[machine.disks]]",
    "[machine]",
    "[network.link]",
    "[timeline.link]",
    "[[bogus]]",
    "[env]",
];

fn toml_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

fn leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(STRINGS).prop_map(toml_string),
        1 => any::<String>().prop_map(|s| toml_string(&s)),
        2 => prop::sample::select(NUMBERS).prop_map(str::to_owned),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| Value::Float(f).to_string()),
        1 => any::<bool>().prop_map(|b| b.to_string()),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => "[a-z_]{1,8}",
    ]
}

/// A TOML value: a leaf, or arrays and inline tables of values, a few levels deep.
fn value() -> impl Strategy<Value = String> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((key(), inner), 0..4).prop_map(|kv| {
                let pairs: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", pairs.join(", "))
            }),
        ]
    })
}

fn pairs() -> impl Strategy<Value = String> {
    prop::collection::vec((key(), value()), 0..6).prop_map(|kv| {
        kv.iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect::<String>()
    })
}

/// A document of known (and unknown) tables with known (and unknown) keys and values of every
/// type; often after three good machines, so that the checks past the machines are reached.
fn structured() -> impl Strategy<Value = String> {
    let section = (prop::sample::select(HEADERS), pairs());
    (any::<bool>(), pairs(), prop::collection::vec(section, 0..8)).prop_map(
        |(good_machines, root, sections)| {
            let mut text = root;
            if good_machines {
                text.push_str("[[machine]]\ncount = 3\ncommand = \"x\"\n");
            }
            for (header, pairs) in sections {
                text.push_str(header);
                text.push('\n');
                text.push_str(&pairs);
            }
            text
        },
    )
}

fn machine_name() -> impl Strategy<Value = String> {
    prop::sample::select(&["m1", "m2", "m3", "m4", "all", "", "M1"][..]).prop_map(toml_string)
}

/// A value of the right type for `key`, or most of the time a plausible one, sometimes any.
fn value_for(key: &'static str) -> BoxedStrategy<String> {
    let names =
        || prop::collection::vec(machine_name(), 0..4).prop_map(|v| format!("[{}]", v.join(", ")));
    let plausible: BoxedStrategy<String> = match key {
        "partition" => prop::collection::vec(names(), 0..4)
            .prop_map(|v| format!("[{}]", v.join(", ")))
            .boxed(),
        "heal" | "name" => prop::sample::select(&["all", "partition-1", "p", "x"][..])
            .prop_map(toml_string)
            .boxed(),
        "link" => (
            prop::option::of(machine_name()),
            prop::option::of(machine_name()),
            prop::option::of(prop::sample::select(
                &["\"1ms\"", "0.5", "\"50%\"", "2"][..],
            )),
            prop::option::of(any::<bool>()),
        )
            .prop_map(|(from, to, loss, up)| {
                let mut fields = Vec::new();
                fields.extend(from.map(|f| format!("from = {f}")));
                fields.extend(to.map(|t| format!("to = {t}")));
                fields.extend(loss.map(|l| format!("loss = {l}")));
                fields.extend(up.map(|u| format!("up = {u}")));
                format!("{{ {} }}", fields.join(", "))
            })
            .boxed(),
        "kill" | "restart" | "pause" | "resume" | "clock" => machine_name().boxed(),
        "rate" => {
            prop::sample::select(&["+200ppm", "-50ppm", "500001ppm", "1.5ppm", "200", ""][..])
                .prop_map(toml_string)
                .boxed()
        }
        "step" | "offset" => {
            prop::sample::select(&["-1.5s", "+250ms", "2s", "--1s", "-9223372036854775808ns"][..])
                .prop_map(toml_string)
                .boxed()
        }
        "disk" => prop::sample::select(&["m1/vda", "m1/vdb", "m2/vdc", "m3", "m9/vda", "/"][..])
            .prop_map(toml_string)
            .boxed(),
        "one_way" | "clear" => any::<bool>().prop_map(|b| b.to_string()).boxed(),
        "policy" => prop::sample::select(&["keep-all", "lose-all", "subset", "torn", "x"][..])
            .prop_map(toml_string)
            .boxed(),
        "latent_errors" | "write_errors" => {
            prop::sample::select(&["0+8", "2048+64", "8+0", "+", "18446744073709551615+1"][..])
                .prop_map(toml_string)
                .boxed()
        }
        _ => prop::sample::select(
            &[
                "\"1s\"",
                "\"5ms\"",
                "\"0s\"",
                "\"18446744073709551615ns\"",
                "5",
            ][..],
        )
        .prop_map(str::to_owned)
        .boxed(),
    };
    prop_oneof![9 => plausible, 1 => value()].boxed()
}

/// A timeline after three good machines with disks: reaches the event checks.
fn timeline() -> impl Strategy<Value = String> {
    const ACTIONS: &[&str] = &[
        "partition",
        "heal",
        "link",
        "kill",
        "restart",
        "disk",
        "pause",
        "resume",
        "clock",
    ];
    const OPTIONS: &[&str] = &[
        "one_way",
        "name",
        "policy",
        "latent_errors",
        "write_errors",
        "stall",
        "slow",
        "clear",
        "for",
        "rate",
        "step",
        "offset",
    ];
    let event = (
        prop::sample::select(ACTIONS).prop_flat_map(|a| (Just(a), value_for(a))),
        prop::option::of(prop::sample::select(OPTIONS).prop_flat_map(|o| (Just(o), value_for(o)))),
        prop::sample::select(
            &[
                "\"1s\"",
                "\"2s\"",
                "\"500ms\"",
                "0",
                "\"90s\"",
                "\"18446744073709551615ns\"",
            ][..],
        ),
    );
    (
        prop::option::of(prop::sample::select(&["\"1m\"", "\"1s\"", "\"100ms\"", "\"18446744073709551615ns\""][..])),
        prop::collection::vec(event, 0..6),
    )
        .prop_map(|(until, events)| {
            let mut text = until.map_or(String::new(), |u| format!("until = {u}\n"));
            text.push_str(
                "[[machine]]\ncount = 3\ncommand = \"x\"\ndisks = [{ size = \"8M\" }, { fs = \"raw\" }]\n",
            );
            for ((action, value), option, at) in events {
                text.push_str(&format!("[[timeline]]\nat = {at}\n{action} = {value}\n"));
                if let Some((key, value)) = option {
                    text.push_str(&format!("{key} = {value}\n"));
                }
            }
            text
        })
}

/// The example files: documented scenarios to break.
fn examples() -> &'static [String] {
    static EXAMPLES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    EXAMPLES.get_or_init(read_examples)
}

fn read_examples() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut texts: Vec<String> = std::fs::read_dir(&dir)
        .expect("examples directory")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "toml").then(|| std::fs::read_to_string(path).ok())?
        })
        .collect();
    texts.sort();
    texts
}

#[derive(Clone, Debug)]
enum Edit {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    Duplicate { at: usize, len: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1..40usize).prop_map(|(at, len)| Edit::Delete { at, len }),
        (
            any::<usize>(),
            prop_oneof![
                "[\\[\\]{}=\"'.,#\n a-z0-9-]{1,6}",
                value(),
                prop::sample::select(STRINGS).prop_map(str::to_owned),
            ]
        )
            .prop_map(|(at, text)| Edit::Insert { at, text }),
        (any::<usize>(), 1..200usize).prop_map(|(at, len)| Edit::Duplicate { at, len }),
    ]
}

/// `text` with `edits` applied at character boundaries.
fn apply(text: &str, edits: &[Edit]) -> String {
    let mut text = text.to_owned();
    let boundary = |text: &str, at: usize| {
        let mut at = at % (text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    };
    for edit in edits {
        match edit {
            Edit::Delete { at, len } => {
                let start = boundary(&text, *at);
                let end = boundary(&text, start.saturating_add(*len).min(text.len()));
                text.replace_range(start..end, "");
            }
            Edit::Insert { at, text: insert } => {
                let at = boundary(&text, *at);
                text.insert_str(at, insert);
            }
            Edit::Duplicate { at, len } => {
                let start = boundary(&text, *at);
                let end = boundary(&text, start.saturating_add(*len).min(text.len()));
                let piece = text[start..end].to_owned();
                text.insert_str(end, &piece);
            }
        }
    }
    text
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_text(text in any::<String>()) {
        check(&text)?;
    }

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn toml_punctuation(text in "[\\[\\]{}=\"'.,#\n\t a-z0-9_+:-]{0,200}") {
        check(&text)?;
    }

    #[test]
    fn structured_but_wrong_toml(text in structured()) {
        check(&text)?;
    }

    #[test]
    fn timelines(text in timeline()) {
        check(&text)?;
    }

    #[test]
    fn edited_examples(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let example: &String = which.get(examples());
        check(&apply(example, &edits))?;
    }

    #[test]
    fn durations_and_sizes(text in "[0-9. ]{0,24}(ns|us|µs|ms|s|m|min|h|k|K|M|G|GiB|x|)", ns in any::<u64>()) {
        // Any text: a value or an error, never a panic.
        let _ = parse_duration_ns(&text);
        let _ = parse_size(&text);
        prop_assert_eq!(parse_duration_ns(&format_ns(ns)), Ok(ns));
        prop_assert_eq!(parse_size(&format_size(ns)), Ok(ns));
    }
}
