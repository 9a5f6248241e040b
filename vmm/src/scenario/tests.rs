use crate::nemesis::{self, FaultKind};

use super::*;

fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    Scenario::parse(text, "s.toml")
}

#[test]
fn demo_parses_into_the_documented_cluster() {
    let demo = Scenario::demo();
    let names: Vec<&str> = demo.machines.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["m1", "m2", "m3"]);
    assert_eq!(demo.machines[0].expect, Expect::Running);
    assert_eq!(demo.machines[1].argv, demo.machines[2].argv);
    assert_eq!(demo.machines[1].argv[..2], ["sh", "-c"]);
    assert_eq!(demo.until_ns, Some(60_000_000_000));
    assert_eq!(demo.network.defaults.latency_ns, Some(1_000_000));
    let [partition, heal] = &demo.timeline[..] else {
        panic!("the demo has a partition and a heal: {:?}", demo.timeline);
    };
    let Action::Partition(p) = &partition.action else {
        panic!("first event is not a partition");
    };
    assert_eq!(p.groups, vec![vec![0], vec![1, 2]]);
    assert_eq!(p.cuts(), vec![(vec![0], vec![1, 2])]);
    assert!(partition.at_ns < heal.at_ns);
    assert_eq!(heal.action, Action::Heal(Heal::All));
}

#[test]
fn every_example_parses_and_round_trips() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples directory") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
            let again = parse(&scenario.to_string()).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(again, scenario, "{}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 3, "expected at least three examples, found {seen}");
}

#[test]
fn pauses_and_clock_faults_parse_and_round_trip() {
    let text = "start_spread = \"0s\"\n[[machine]]\ncount = 2\ncommand = \"x\"\n\
                [[timeline]]\nat = \"1s\"\npause = \"m2\"\nfor = \"2s\"\n\
                [[timeline]]\nat = \"2s\"\npause = \"m1\"\n\
                [[timeline]]\nat = \"4s\"\nresume = \"m1\"\n\
                [[timeline]]\nat = \"5s\"\nclock = \"m1\"\nrate = \"+200ppm\"\n\
                [[timeline]]\nat = \"6s\"\nclock = \"m2\"\nstep = \"-1.5s\"\n\
                [[timeline]]\nat = \"7s\"\nclock = \"m2\"\noffset = \"250ms\"\n";
    let s = parse(&format!("chaos = \"2.5%\"\naslr = true\n{text}")).expect("parses");
    assert_eq!(s.start_spread_ns, 0);
    assert_eq!(s.chaos_per_mille, 25);
    assert!(s.aslr);
    let actions: Vec<&Action> = s.timeline.iter().map(|e| &e.action).collect();
    assert_eq!(
        actions,
        [
            &Action::Pause {
                machine: 1,
                for_ns: Some(2_000_000_000)
            },
            &Action::Pause {
                machine: 0,
                for_ns: None
            },
            &Action::Resume { machine: 0 },
            &Action::Clock {
                machine: 0,
                change: ClockChange::Rate { ppm: 200 }
            },
            &Action::Clock {
                machine: 1,
                change: ClockChange::Step {
                    delta_ns: -1_500_000_000
                }
            },
            &Action::Clock {
                machine: 1,
                change: ClockChange::Offset {
                    offset_ns: 250_000_000
                }
            },
        ]
    );
    assert_eq!(parse(&s.to_string()).expect("round trip"), s);
    let nemesis = parse(&format!(
        "until = \"1m\"\n{text}[nemesis]\nfaults = [\"pause\", \"clock\"]\nquiet = \"5s\"\nstart = \"1500ms\"\n"
    ))
    .expect("parses");
    assert_eq!(
        nemesis.nemesis,
        Some(Nemesis {
            faults: vec![FaultKind::Pause, FaultKind::Clock],
            interval_ns: nemesis::DEFAULT_INTERVAL_NS,
            duration_ns: nemesis::DEFAULT_DURATION_NS,
            quiet_ns: 5_000_000_000,
            start_ns: 1_500_000_000,
            machines: None,
        })
    );
    assert_eq!(parse(&nemesis.to_string()).expect("round trip"), nemesis);
    let targeted = parse(&format!(
        "until = \"1m\"\n{text}[nemesis]\nfaults = [\"kill\"]\nmachines = [\"m2\", \"m1\"]\n"
    ))
    .expect("parses");
    let targets = targeted.nemesis.as_ref().and_then(|n| n.machines.clone());
    assert_eq!(targets, Some(vec![0, 1]));
    assert_eq!(parse(&targeted.to_string()).expect("round trip"), targeted);
}

#[test]
fn a_check_names_a_raw_disk_and_round_trips() {
    let text = "until = \"1m\"\n[[machine]]\ncount = 2\ncommand = \"x\"\n\
                disks = [{ size = \"8M\" }, { size = \"1M\", fs = \"raw\" }]\n\
                [check]\nhistory = \"m2/vdb\"\ntimeout = \"5s\"\n";
    let s = parse(text).expect("parses");
    assert_eq!(
        s.check,
        Some(HistoryCheck {
            machine: 1,
            disk: 1,
            model: simvm_checker::Model::Register,
            timeout_ns: 5_000_000_000,
        })
    );
    assert_eq!(parse(&s.to_string()).expect("round trip"), s);
}

#[test]
fn disks_get_default_mount_points_and_faults_resolve_their_disk() {
    let text = "crash_policy = \"torn\"\n[[machine]]\ncommand = \"x\"\n\
                disks = [{ size = \"8M\" }, { size = \"8M\", fs = \"raw\" }, { size = \"8M\", latency = \"1ms\", latency_mean = \"0s\" }]\n\
                [[timeline]]\nat = \"1s\"\ndisk = \"m1/vdb\"\nlatent_errors = \"8+16\"\n\
                [[timeline]]\nat = \"2s\"\ndisk = \"m1/vdc\"\nstall = \"500ms\"\n\
                [[timeline]]\nat = \"3s\"\nkill = \"m1\"\n";
    let s = parse(text).expect("parses");
    assert_eq!(s.crash_policy, CrashPolicy::Torn);
    let disks = &s.machines[0].disks;
    let mounts: Vec<Option<&str>> = disks.iter().map(|d| d.mount.as_deref()).collect();
    assert_eq!(mounts, [Some("/data"), None, Some("/data2")]);
    assert_eq!(disks[1].contents, DiskContents::Raw);
    assert_eq!(disks[2].latency, Latency::fixed(1_000_000));
    assert_eq!(disks[0].size, Some(8 << 20));
    assert_eq!(
        s.timeline[0].action,
        Action::DiskFault {
            machine: 0,
            disk: 1,
            fault: Fault::LatentErrors {
                start: 8,
                count: 16
            }
        }
    );
    assert_eq!(
        s.timeline[1].action,
        Action::DiskFault {
            machine: 0,
            disk: 2,
            fault: Fault::Stall {
                until_ns: 2_500_000_000
            }
        }
    );
    assert_eq!(
        s.timeline[2].action,
        Action::Kill {
            machine: 0,
            policy: None
        }
    );
    assert_eq!(parse(&s.to_string()).expect("reparse"), s);
}

/// A default mount point skips those other disks have: the scenario's own, or the ones
/// given before `--disk` appended more.
#[test]
fn default_mount_points_skip_the_ones_taken() {
    let text = "[[machine]]\ncommand = \"x\"\n\
                disks = [{ size = \"8M\" }, { size = \"8M\", mount = \"/data\" }]\n";
    let mut s = parse(text).expect("parses");
    let disks = &mut s.machines[0].disks;
    let mounts = |disks: &[DiskSpec]| -> Vec<Option<String>> {
        disks.iter().map(|d| d.mount.clone()).collect()
    };
    assert_eq!(mounts(disks), [Some("/data2".into()), Some("/data".into())]);
    disks.push(DiskSpec::ext4(8 << 20, None));
    assign_mounts(disks);
    assert_eq!(
        mounts(disks),
        [
            Some("/data2".into()),
            Some("/data".into()),
            Some("/data3".into())
        ]
    );
}

#[test]
fn recipe_disks_take_their_size_from_the_tree_unless_given_and_round_trip() {
    let text = "[[machine]]\ncommand = \"x\"\n\
                disks = [{ recipe = \"etcd\", mount = \"/opt/etcd\" }, { recipe = \"sqlite\", size = \"32M\", fs = \"ext4\" }, { size = \"8M\" }]\n";
    let s = parse(text).expect("parses");
    let disks = &s.machines[0].disks;
    assert_eq!(disks[0].contents, DiskContents::Recipe("etcd".into()));
    assert_eq!(disks[0].size, None, "sized from the tree when it is built");
    assert_eq!(disks[0].mount.as_deref(), Some("/opt/etcd"));
    assert_eq!(disks[1].contents, DiskContents::Recipe("sqlite".into()));
    assert_eq!(disks[1].size, Some(32 << 20));
    let mounts: Vec<Option<&str>> = disks.iter().map(|d| d.mount.as_deref()).collect();
    assert_eq!(mounts, [Some("/opt/etcd"), Some("/data"), Some("/data2")]);
    let written = s.to_string();
    assert!(written.contains("recipe = \"etcd\""), "{written}");
    assert_eq!(parse(&written).expect("reparse"), s);
}

#[test]
fn demo_round_trips_through_text() {
    let demo = Scenario::demo();
    assert_eq!(parse(&demo.to_string()).expect("reparse"), demo);
}

#[test]
fn from_cli_names_machines_and_expects_success() {
    let s = Scenario::from_cli(3, vec!["true".into()]);
    assert_eq!(s.machines.len(), 3);
    assert_eq!(s.machines[2].name, "m3");
    assert!(s
        .machines
        .iter()
        .all(|m| m.argv == ["true"] && m.expect == Expect::Exit(0)));
    assert_eq!(parse(&s.to_string()).expect("reparse"), s);
}

#[test]
fn expectations() {
    assert!(Expect::Exit(0).is_met(Some(0)));
    assert!(!Expect::Exit(0).is_met(Some(1)) && !Expect::Exit(0).is_met(None));
    assert!(Expect::Running.is_met(None) && !Expect::Running.is_met(Some(0)));
    assert!(Expect::Any.is_met(Some(3)) && Expect::Any.is_met(None));
    assert!(Expect::Exit(2).waits() && !Expect::Running.waits() && !Expect::Any.waits());
    let demo = Scenario::demo();
    let names: Vec<&str> = demo.machines.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["m1", "m2", "m3"]);
}

/// Durations and sizes go through `units`, the parser `simvm run` also uses: exact.
#[test]
fn durations_and_sizes_are_exact() {
    let s = parse(
        "until = \"1500500us\"\n[network]\nlatency = \"0.3s\"\njitter = \"1.5ms\"\n\
         [[machine]]\ncommand = \"x\"\nmemory = \"100000K\"\n",
    )
    .expect("parses");
    assert_eq!(s.until_ns, Some(1_500_500_000));
    assert_eq!(s.network.defaults.latency_ns, Some(300_000_000));
    assert_eq!(s.network.defaults.jitter_ns, Some(1_500_000));
    assert_eq!(s.machines[0].memory, Some(100_000 << 10));
    assert_eq!(parse(&s.to_string()).expect("reparse"), s);
    for (value, needle) in [
        ("\"1.5ns\"", "finer than the smallest unit"),
        ("\"5\"", "needs a unit: write \"5s\""),
        ("\"99999999999h\"", "too large"),
    ] {
        let err = parse(&format!("until = {value}\n[[machine]]\ncommand = \"x\"\n"))
            .expect_err(value)
            .to_string();
        assert!(err.contains(needle), "{value}: {err}");
    }
}

#[test]
fn probabilities() {
    for (text, expected) in [
        ("\"1%\"", 0.01),
        ("0.25", 0.25),
        ("1", 1.0),
        ("\"0.5 %\"", 0.005),
    ] {
        let s = parse(&format!(
            "[network]\nloss = {text}\n[[machine]]\ncommand = \"true\"\n"
        ))
        .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(s.network.defaults.loss, Some(expected), "{text}");
    }
}

#[test]
fn bandwidths() {
    let cases = [
        ("100Mbit", Ok(100_000_000)),
        ("1Gbit", Ok(1_000_000_000)),
        ("1.5gbit", Ok(1_500_000_000)),
        ("64 kbps", Ok(64_000)),
        ("unlimited", Ok(0)),
    ];
    for (text, expected) in cases {
        assert_eq!(Bandwidth::from_text(text).map(|b| b.0), expected, "{text}");
    }
    assert!(Bandwidth::from_text("0Mbit")
        .unwrap_err()
        .contains("unlimited"));
    assert!(Bandwidth::from_text("100MB")
        .unwrap_err()
        .contains("expected a bandwidth"));
}

#[test]
fn sizes() {
    assert_eq!(ByteSize::from_text("256M").map(|s| s.0), Ok(256 << 20));
    assert_eq!(ByteSize::from_text("1GiB").map(|s| s.0), Ok(1 << 30));
    assert_eq!(ByteSize::from_text("0.5k").map(|s| s.0), Ok(512));
    assert!(ByteSize::from_text("12X").is_err());
}

#[test]
fn link_settings_stack_in_file_order() {
    let s = parse(
        r#"
        [network]
        latency = "1ms"
        loss = 0.1
        [[network.link]]
        from = "m1"
        latency = "5ms"
        [[network.link]]
        from = "m1"
        to = "m2"
        both = true
        loss = 0
        [[machine]]
        count = 3
        command = "true"
        "#,
    )
    .expect("parses");
    let at = |f, t| s.network.settings(f, t);
    assert_eq!(
        (at(0, 1).latency_ns, at(0, 1).loss),
        (Some(5_000_000), Some(0.0))
    );
    assert_eq!(
        (at(1, 0).latency_ns, at(1, 0).loss),
        (Some(1_000_000), Some(0.0))
    );
    assert_eq!(
        (at(0, 2).latency_ns, at(0, 2).loss),
        (Some(5_000_000), Some(0.1))
    );
    assert_eq!(
        (at(2, 1).latency_ns, at(2, 1).loss),
        (Some(1_000_000), Some(0.1))
    );
    assert_eq!(s.network.links[0].links.links(3), [(0, 1), (0, 2)]);
}

#[test]
fn single_group_partitions_against_everyone_else() {
    let s = parse(
        "[[machine]]\ncount = 4\ncommand = \"true\"\n\
         [[timeline]]\nat = \"1s\"\npartition = [[\"m2\"]]\none_way = true\nname = \"x\"\n\
         [[timeline]]\nat = \"2s\"\nheal = \"x\"\n",
    )
    .expect("parses");
    let Action::Partition(p) = &s.timeline[0].action else {
        panic!("not a partition");
    };
    assert_eq!(p.groups, vec![vec![1], vec![0, 2, 3]]);
    assert!(p.one_way);
    assert_eq!(s.timeline[1].action, Action::Heal(Heal::Named("x".into())));
}

#[test]
fn three_groups_cut_each_pair() {
    let p = Partition {
        name: "p".into(),
        groups: vec![vec![0], vec![1], vec![2, 3]],
        one_way: false,
    };
    assert_eq!(
        p.cuts(),
        vec![(vec![0], vec![1, 2, 3]), (vec![1], vec![2, 3])]
    );
}

/// Each malformed file, the position reported and a piece of the message.
#[test]
fn errors_name_line_column_and_what_was_expected() {
    const M: &str = "[[machine]]\ncount = 3\ncommand = \"true\"\n";
    let cases: Vec<(String, (usize, usize), &str)> = vec![
        ("[[machine]]\ncomand = \"x\"\n".into(), (2, 1), "unknown field `comand`"),
        ("[[machine]]\nname = \"m1\"\n".into(), (1, 1), "missing field `command`"),
        ("until = 5\n".into(), (1, 9), "needs a unit"),
        ("until = \"-5s\"\n".into(), (1, 9), "cannot be negative"),
        ("until = \"soon\"\n".into(), (1, 9), "expected a duration"),
        ("x = [\n".into(), (2, 1), ""),
        ("".into(), (1, 1), "no machines"),
        (format!("{M}[network]\nloss = 1.5\n"), (5, 8), "between 0 and 1"),
        (format!("{M}[network]\nloss = \"150%\"\n"), (5, 8), "between 0 and 1"),
        (format!("{M}[network]\nlatncy = \"1ms\"\n"), (5, 1), "unknown field `latncy`"),
        (format!("{M}[network]\nbandwidth = \"fast\"\n"), (5, 13), "expected a bandwidth"),
        (format!("{M}[[network.link]]\nfrom = \"m9\"\nlatency = \"1ms\"\n"), (5, 8), "unknown machine `m9`; the machines are m1, m2, m3"),
        (format!("{M}[[network.link]]\nfrom = \"m1\"\nto = \"m1\"\nup = false\n"), (6, 6), "two different machines"),
        (format!("{M}[[network.link]]\nfrom = \"m1\"\n"), (4, 1), "changes nothing"),
        ("[[machine]]\nname = \"a\"\ncommand = \"x\"\n[[machine]]\nname = \"a\"\ncommand = \"x\"\n".into(), (5, 8), "two machines are named `a`"),
        ("[[machine]]\nname = \"m2\"\ncommand = \"x\"\n[[machine]]\ncommand = \"x\"\n".into(), (4, 1), "two machines are named `m2`"),
        ("[[machine]]\nname = \"1st\"\ncommand = \"x\"\n".into(), (2, 8), "not a host name"),
        ("[[machine]]\nname = \"fault\"\ncommand = \"x\"\n".into(), (2, 8), "labels simvm's own console lines"),
        ("[[machine]]\ncount = 2\nname = \"a\"\ncommand = \"x\"\n".into(), (3, 8), "remove `name`"),
        ("[[machine]]\ncount = 0\ncommand = \"x\"\n".into(), (2, 9), "between 1 and 64"),
        ("[[machine]]\ncommand = []\n".into(), (2, 11), "needs a program"),
        ("[[machine]]\ncommand = 5\n".into(), (2, 11), "a shell command line or a list"),
        ("[[machine]]\ncommand = \"x\"\nexpect = 300\n".into(), (3, 10), "exit status (0 to 255)"),
        ("[[machine]]\ncommand = \"x\"\nenv = { SIMVM_INDEX = \"1\" }\n".into(), (3, 23), "set by simvm"),
        ("[[machine]]\ncommand = \"x\"\nmemory = \"lots\"\n".into(), (3, 10), "expected a size"),
        (format!("{M}[[timeline]]\nat = \"5s\"\npartition = [[\"m1\"], [\"m4\"]]\n"), (6, 23), "unknown machine `m4`"),
        (format!("{M}[[timeline]]\nat = \"5s\"\npartition = [[\"m1\"], [\"m1\"]]\n"), (6, 23), "in two partition groups"),
        (format!("{M}[[timeline]]\nat = \"5s\"\npartition = [[\"m1\", \"m2\", \"m3\"]]\n"), (6, 13), "needs two sides"),
        (format!("{M}[[timeline]]\nat = \"5s\"\npartition = [[], [\"m1\"]]\n"), (6, 13), "cannot be empty"),
        (format!("{M}[[timeline]]\nat = \"5s\"\nheal = \"x\"\n"), (6, 8), "no partition named `x`"),
        (format!("{M}[[timeline]]\nat = \"5s\"\nheal = \"all\"\none_way = true\n"), (7, 11), "belongs to a `partition` event"),
        (format!("{M}[[timeline]]\nat = \"5s\"\nheal = \"all\"\nlink = {{ up = false }}\n"), (7, 8), "has `heal` and `link`"),
        (format!("{M}[[timeline]]\nat = \"5s\"\n"), (4, 1), "needs one of `partition`, `heal`, `link`, `kill`"),
        (format!("{M}[[timeline]]\nat = \"5s\"\nkill = \"m9\"\n"), (6, 8), "unknown machine `m9`"),
        (format!("{M}[[timeline]]\nat = \"5s\"\nkill = \"m1\"\npolicy = \"some\"\n"), (7, 10), "keep-all"),
        (format!("{M}[[timeline]]\nat = \"5s\"\nrestart = \"m1\"\npolicy = \"torn\"\n"), (7, 10), "belongs to a `kill` event"),
        (format!("{M}[[timeline]]\nat = \"5s\"\nkill = \"m1\"\nrestart = \"m1\"\n"), (7, 11), "does one thing"),
        (format!("{M}[[timeline]]\nat = \"5s\"\ndisk = \"m1/vda\"\nstall = \"1s\"\n"), (6, 8), "m1 has no disk `vda`"),
        (format!("{M}[[timeline]]\nat = \"5s\"\ndisk = \"m1\"\n"), (6, 8), "MACHINE/DISK"),
        (format!("{M}[[timeline]]\nat = \"5s\"\nkill = \"m1\"\nstall = \"1s\"\n"), (7, 9), "belongs to a `disk` event"),
        (format!("{M}[[timeline]]\nat = \"5s\"\nkill = \"m1\"\nfor = \"1s\"\n"), (7, 7), "belongs to a `pause` event"),
        (format!("{M}[[timeline]]\nat = \"5s\"\npause = \"m1\"\nrate = \"+1ppm\"\n"), (7, 8), "belongs to a `clock` event"),
        (format!("{M}[[timeline]]\nat = \"5s\"\nclock = \"m1\"\n"), (6, 9), "needs one of `rate`"),
        (format!("{M}[[timeline]]\nat = \"5s\"\nclock = \"m1\"\nrate = \"+1ppm\"\nstep = \"1s\"\n"), (8, 8), "has `rate` and `step`"),
        (format!("{M}[[timeline]]\nat = \"5s\"\nclock = \"m1\"\nrate = \"600000ppm\"\n"), (7, 8), "within ±500000ppm"),
        (format!("{M}[[timeline]]\nat = \"5s\"\nclock = \"m1\"\nrate = \"200\"\n"), (7, 8), "like \"+200ppm\""),
        (format!("{M}[[timeline]]\nat = \"5s\"\nclock = \"m1\"\nstep = \"-1\"\n"), (7, 8), "needs a unit"),
        (format!("{M}[[timeline]]\nat = \"5s\"\nclock = \"m1\"\nstep = \"+106751d\"\n"), (7, 8), "within ±18250d"),
        (format!("{M}[[timeline]]\nat = \"5s\"\nclock = \"m1\"\noffset = \"-18251d\"\n"), (7, 10), "within ±18250d"),
        (format!("{M}[[timeline]]\nat = \"5s\"\nresume = \"m7\"\n"), (6, 10), "unknown machine `m7`"),
        (format!("until = \"1m\"\n{M}[nemesis]\nfaults = [\"kill\", \"flood\"]\n"), (6, 19), "unknown fault `flood`"),
        (format!("until = \"1m\"\n{M}[nemesis]\nfaults = [\"kill\", \"kill\"]\n"), (6, 19), "listed twice"),
        (format!("until = \"1m\"\n{M}[nemesis]\nfaults = []\n"), (6, 10), "list the kinds"),
        (format!("until = \"1m\"\n{M}[nemesis]\nfaults = [\"kill\"]\ninterval = \"0s\"\n"), (7, 12), "longer than 0s"),
        (format!("{M}[nemesis]\nfaults = [\"kill\"]\n"), (4, 1), "a nemesis needs the run's end"),
        (format!("until = \"1m\"\n{M}[nemesis]\nfaults = [\"kill\"]\nmachines = [\"m9\"]\n"), (7, 13), "unknown machine `m9`"),
        (format!("until = \"1m\"\n{M}[nemesis]\nfaults = [\"kill\"]\nmachines = []\n"), (7, 12), "name the machines faults may touch"),
        (format!("{M}disks = [{{ size = \"8M\" }}]\n[check]\nhistory = \"m1/vda\"\n"), (6, 11), "must be raw"),
        (format!("{M}[check]\nhistory = \"m1/vdb\"\n"), (5, 11), "m1 has no disk `vdb` (it has 0)"),
        (format!("{M}[check]\nhistory = \"m1\"\n"), (5, 11), "does not name a disk"),
        (format!("{M}disks = [{{ size = \"8M\", fs = \"raw\" }}]\n[check]\nhistory = \"m1/vda\"\nmodel = \"set\"\n"), (7, 9), "unknown model `set`"),
        ("[[machine]]\ncommand = \"x\"\ndisks = [{ size = \"100K\" }]\n".into(), (3, 10), "at least 1M"),
        ("[[machine]]\ncommand = \"x\"\ndisks = [{ fs = \"xfs\" }]\n".into(), (3, 17), "unknown `fs`"),
        ("[[machine]]\ncommand = \"x\"\ndisks = [{ fs = \"raw\", mount = \"/d\" }]\n".into(), (3, 32), "raw disk"),
        ("[[machine]]\ncommand = \"x\"\ndisks = [{ mount = \"/proc\" }]\n".into(), (3, 20), "cannot be a mount point"),
        ("[[machine]]\ncommand = \"x\"\ndisks = [{ mount = \"/d\" }, { size = \"8M\", mount = \"/d\" }]\n".into(), (3, 51), "two disks are mounted at /d"),
        ("[[machine]]\ncommand = \"x\"\ndisks = [{ dir = \"a\", image = \"b\" }]\n".into(), (3, 10), "not both"),
        ("[[machine]]\ncommand = \"x\"\ndisks = [{ recipe = \"etcd\", dir = \"a\" }]\n".into(), (3, 21), "either `recipe` (a guest image recipe's files) or `dir`, not both"),
        ("[[machine]]\ncommand = \"x\"\ndisks = [{ image = \"b\", recipe = \"etcd\" }]\n".into(), (3, 34), "or `image`, not both"),
        ("[[machine]]\ncommand = \"x\"\ndisks = [{ recipe = \"etcd\", fs = \"raw\" }]\n".into(), (3, 34), "a disk with `recipe` holds an ext4 filesystem"),
        ("[[machine]]\ncommand = \"x\"\ndisks = [{ recipe = \"etcd\", fs = \"xfs\" }]\n".into(), (3, 34), "unknown `fs`"),
        ("[[machine]]\ncommand = \"x\"\ndisks = [{ recipe = \"../etcd\" }]\n".into(), (3, 21), "`../etcd` is not a recipe name"),
        ("[[machine]]\ncommand = \"x\"\ndisks = [{ recipe = \"\" }]\n".into(), (3, 21), "is not a recipe name"),
        ("[[machine]]\ncommand = \"x\"\ndisks = [{ recipe = 5 }]\n".into(), (3, 21), "expected a string"),
        ("crash_policy = \"all\"\n[[machine]]\ncommand = \"x\"\n".into(), (1, 16), "lose-all"),
        (format!("{M}[[timeline]]\nheal = \"all\"\n"), (4, 1), "missing field `at`"),
        (format!("{M}[[timeline]]\nat = \"5s\"\nheal = \"all\"\n[[timeline]]\nat = \"4s\"\nheal = \"all\"\n"), (8, 6), "time order: this one at 4s comes after one at 5s"),
        (format!("until = \"3s\"\n{M}[[timeline]]\nat = \"5s\"\nheal = \"all\"\n"), (6, 6), "after the end of the run (until = 3s)"),
        (format!("{M}[[timeline]]\nat = \"5s\"\nlink = {{ from = \"m1\", to = \"mx\", up = false }}\n"), (6, 28), "unknown machine `mx`"),
        (format!("{M}[[timeline]]\nat = \"5s\"\nlink = {{ lose = 0.5 }}\n"), (6, 10), "unknown field `lose`"),
        (format!("{M}[[timeline]]\nat = \"5s\"\npartition = [[\"m1\"]]\nname = \"all\"\n"), (7, 8), "reserved"),
        ("machines = 3\n".into(), (1, 1), "unknown field `machines`"),
        ("[[machine]]\ncommand = \"x\"\nexpect = \"running\"\n".into(), (3, 10), "nothing ends this run: no machine is awaited"),
        ("[[machine]]\ncount = 2\ncommand = \"x\"\nexpect = \"any\"\n".into(), (4, 10), "\"any\": m1, m2) and there is no `until`"),
        ("[[machine]]\ncommand = \"x\"\nmemory = \"1000001\"\n".into(), (3, 10), "multiple of 4K"),
        ("[[machine]]\ncommand = \"a\\u0000b\"\n".into(), (2, 11), "NUL character"),
        ("[[machine]]\ncommand = [\"a\", \"\\u0000\"]\n".into(), (2, 11), "NUL character"),
        ("[[machine]]\ncommand = \"x\"\nmemory = \"0.5M\"\nexpect = 2\nfoo = [\n".into(), (6, 1), "invalid array: expected `]`"),
    ];
    let mut wrong = Vec::new();
    for (text, position, needle) in cases {
        match parse(&text) {
            Err(ScenarioError::Invalid {
                file,
                line,
                column,
                message,
                ..
            }) if file == "s.toml" && (line, column) == position && message.contains(needle) => {}
            other => wrong.push(format!(
                "{text:?}: expected {position:?} {needle:?}, got {other:?}"
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A run must end: by an awaited machine, the file's `until` or the command line's.
#[test]
fn a_run_that_nothing_ends_is_rejected_unless_the_command_line_bounds_it() {
    let servers = "[[machine]]\ncommand = \"x\"\nexpect = \"running\"\n\
                   [[machine]]\ncommand = \"y\"\nexpect = \"any\"\n";
    let err = parse(servers).expect_err("unbounded").to_string();
    assert!(
        err.starts_with("s.toml:3:10: nothing ends this run") && err.contains("--until"),
        "{err}"
    );
    let s = Scenario::parse_with_until(servers, "s.toml", Some(5_000_000_000))
        .expect("--until bounds it");
    assert_eq!(
        s.until_ns, None,
        "the command line's until stays the command line's"
    );
    parse(&format!("until = \"1s\"\n{servers}")).expect("until bounds it");
    let s = parse(&format!("{servers}[[machine]]\ncommand = \"z\"\n")).expect("m3 is awaited");
    assert!(s.ends_by_itself());
    let mut unbounded = s.clone();
    unbounded.machines[2].expect = Expect::Any;
    assert!(!unbounded.ends_by_itself());
    // Other problems of the file come first.
    let err = parse(&format!(
        "{servers}[[timeline]]\nat = \"1s\"\nkill = \"m9\"\n"
    ))
    .expect_err("m9")
    .to_string();
    assert!(err.contains("unknown machine `m9`"), "{err}");
    // No `expect` at all points at the machine's table.
    let err = parse("[[machine]]\ncommand = \"x\"\nexpect = \"any\"\n[[machine]]\ncommand = \"y\"\nexpect = \"any\"\n")
        .expect_err("unbounded")
        .to_string();
    assert!(err.starts_with("s.toml:3:10: "), "{err}");
}

#[test]
fn a_file_that_is_not_utf8_is_located() {
    let dir = std::env::temp_dir().join(format!("simvm-scenario-utf8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("latin1.toml");
    std::fs::write(&path, b"[[machine]]\ncommand = \"caf\xe9\"\n").expect("write");
    let err = Scenario::load(&path).expect_err("not UTF-8").to_string();
    let _ = std::fs::remove_dir_all(&dir);
    let expected = format!(
        "{}:2:15: this is not UTF-8 text (byte 0xe9)",
        path.display()
    );
    assert!(err.starts_with(&expected), "{err}");
}

#[test]
fn error_display_points_at_the_column() {
    let err = parse("until = \"-5s\"\n").expect_err("negative");
    let shown = err.to_string();
    assert!(
        shown.starts_with("s.toml:1:9: a duration cannot be negative"),
        "{shown}"
    );
    assert!(
        shown.ends_with("1 | until = \"-5s\"\n  |         ^"),
        "{shown}"
    );
}

#[test]
fn toml_errors_without_a_message_get_one_and_excerpts_show_no_control_characters() {
    for (text, expected) in [
        (
            "\r",
            "s.toml:1:1: invalid TOML: a carriage return must be followed by a newline",
        ),
        ("a = 1\r", "s.toml:1:6: "),
    ] {
        let shown = parse(text).expect_err("invalid").to_string();
        assert!(shown.starts_with(expected), "{shown:?}");
        assert!(!shown.contains('\r'), "{shown:?}");
    }
    let shown = parse("until = \"\\u001b[2J\\n\"\t# x\n")
        .expect_err("not a duration")
        .to_string();
    assert!(
        shown.starts_with("s.toml:1:9: expected a duration like \"500ms\" (units ns, us, ms, s, m, h, d), found \"\\u{1b}[2J\\n\"\n")
            && !shown.contains('\u{1b}')
            && !shown.contains('\t'),
        "{shown:?}"
    );
}

#[test]
fn line_column_counts_characters() {
    assert_eq!(line_column("ab\ncd", 0), (1, 1));
    assert_eq!(line_column("ab\ncd", 4), (2, 2));
    assert_eq!(line_column("é\nx", 1), (1, 1));
    assert_eq!(line_column("ab", 99), (1, 3));
}

#[test]
fn garbage_never_panics() {
    let samples = [
        "[[",
        "= 1",
        "\u{0}",
        "[network]\nlink = 5",
        "[[timeline]]\nat = 1e999",
    ];
    for text in samples {
        assert!(parse(text).is_err(), "{text:?}");
    }
}

#[test]
fn an_endless_file_is_refused_after_a_bounded_read() {
    let err = Scenario::load_with_until(Path::new("/dev/zero"), None).unwrap_err();
    assert!(err.to_string().contains("larger than 4 MiB"), "{err}");
}
