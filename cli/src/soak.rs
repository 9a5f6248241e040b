//! `simvm soak`: many seeds of one scenario, each in its own `simvm run` child process (a crash
//! takes one seed with it, and the child's command line is the reproduce line), `--jobs` at a
//! time; and `simvm run --seeds`, a few seeds one after another in the foreground. docs/soak.md.

mod assertions;
mod child;
mod progress;
mod report;
mod seeds;
mod supervisor;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser};
use simvm_vmm::scenario::Scenario;
use simvm_vmm::simulation::Simulation;
use simvm_vmm::units::{format_ns, format_rounded, format_size};

use crate::{check_parent_dir, scenario_of, without, Cli, Command, RunArgs};
use child::ChildTemplate;
use progress::Progress;
use report::Summary;
use supervisor::{supervise, Finished, Plan};

pub use seeds::SeedSet;
use seeds::{parse_percent, resolve_shard, Shard, JOB_COMPLETION_INDEX};

/// `simvm soak` (the world options are forwarded to every seed's `simvm run`).
#[derive(Args)]
pub struct SoakArgs {
    /// The scenario file. Without one, the `simvm run` arguments after `--` say what runs
    /// (their own `-- COMMAND`, or the built-in demo).
    scenario: Option<PathBuf>,
    /// The seeds: N, A-B (both included) or a comma list such as 1-10,20,30-35.
    #[arg(long, value_parser = SeedSet::parse)]
    seeds: SeedSet,
    /// Seeds running at once, each a `simvm run` process. Default: the number of CPUs.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// Run only shard I of N: the seeds at positions I, I+N, I+2N, ... of the list (0-based).
    #[arg(long, value_name = "I/N", value_parser = Shard::parse, conflicts_with = "shards")]
    shard: Option<Shard>,
    /// Split the seeds into N shards and run the one `JOB_COMPLETION_INDEX` names (set by a
    /// Kubernetes Indexed Job).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    shards: Option<u64>,
    /// Write a JUnit XML report here: one test case per seed.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Each seed writes its console, trace, capture and disks to DIR/seed-N; a passing seed's
    /// directory is deleted, a failing seed's is kept with a repro.sh.
    #[arg(long, value_name = "DIR", default_value = "soak-out")]
    out: PathBuf,
    /// Run this share of the seeds twice and compare their digests (`--check-determinism`);
    /// which seeds is a function of the seed number alone.
    #[arg(long, value_name = "PERCENT", default_value = "5", value_parser = parse_percent)]
    determinism_check: u32,
    /// Kill a seed's run after this much real time and count it failed.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = crate::parse_until)]
    timeout: u64,
    /// Stop each run at this virtual time (as `simvm run --until`).
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_until)]
    until: Option<u64>,
    /// Guest RAM per machine (as `simvm run --mem`).
    #[arg(long, value_parser = crate::parse_mem)]
    mem: Option<u64>,
    /// Use the image of this recipe (as `simvm run --recipe`).
    #[arg(long, conflicts_with = "kernel")]
    recipe: Option<String>,
    /// A watchdog kick (nondeterminism) fails the seed (as `simvm run --strict`).
    #[arg(long)]
    strict: bool,
    /// Boot every machine instead of starting it from its template (as `simvm run --cold`).
    #[arg(long)]
    cold: bool,
    /// Chaos scheduling for every seed (as `simvm run --chaos`; `0` turns it off). Default:
    /// the scenario's `chaos`, or 2% when it sets none, so that seeds explore interleavings.
    #[arg(long, value_name = "PROBABILITY", value_parser = crate::parse_chaos)]
    chaos: Option<u32>,
    /// Guest kernel (as `simvm run --kernel`).
    #[arg(long, requires = "initramfs")]
    kernel: Option<PathBuf>,
    /// Base initramfs (as `simvm run --initramfs`).
    #[arg(long, requires = "kernel")]
    initramfs: Option<PathBuf>,
    /// More `simvm run` arguments for every seed, e.g. `-- --machines 3 --disk 64M`, or
    /// `-- -- sh -c 'CMD'` for a command instead of a scenario.
    #[arg(last = true, value_name = "RUN-ARGS")]
    run_args: Vec<String>,
}

/// A run without a timeout: a timerfd still needs a deadline (a century).
const NO_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `simvm soak`.
pub fn soak(args: SoakArgs) -> Result<i32, String> {
    let job_index = std::env::var(JOB_COMPLETION_INDEX).ok();
    let shard = resolve_shard(args.shard, args.shards, job_index.as_deref())?;
    let seeds = match shard {
        Some(shard) => shard.select(args.seeds.seeds()),
        None => args.seeds.seeds().to_vec(),
    };
    let template = ChildTemplate {
        exe: own_binary()?,
        scenario: args.scenario.as_deref().map(utf8).transpose()?,
        forwarded: forwarded(&args)?,
        out: Some(args.out.clone()),
    };
    let run_args = check_run_args(&template)?;
    // Found out now rather than after the last seed.
    if let Some(junit) = &args.junit {
        check_parent_dir("--junit", junit)?;
    }
    prepare(&run_args)?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    check_out_dir(&args.out)?;

    let jobs = args.jobs.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    let checked = seeds
        .iter()
        .filter(|&&s| seeds::spot_checked(s, args.determinism_check))
        .count();
    let name = args
        .scenario
        .as_deref()
        .map_or_else(|| "simvm run".to_string(), |p| p.display().to_string());
    eprintln!(
        "simvm soak: {name}, seeds {}{}: {} seeds, {jobs} at a time, {checked} determinism-checked, \
         timeout {}, failures kept in {}",
        args.seeds,
        shard.map_or(String::new(), |s| format!(" shard {s}")),
        seeds.len(),
        format_rounded(Duration::from_nanos(args.timeout)),
        args.out.display()
    );
    let planned = seeds.len();
    let finished = supervise(
        Plan {
            template,
            seeds,
            jobs,
            check_basis_points: args.determinism_check,
            timeout: Duration::from_nanos(args.timeout),
            stream: false,
        },
        Progress::new(planned as u64, false),
    )?;
    if let Some(path) = &args.junit {
        let report = report::junit(&name, &finished.results, finished.wall);
        let file = std::fs::File::create(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        report
            .serialize(std::io::BufWriter::new(file))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    // Only failures are kept: an empty output directory goes (after the report, which may be
    // in it).
    let _ = std::fs::remove_dir(&args.out);
    conclude(&finished, planned)
}

/// `simvm run --seeds`: each seed in turn in its own `simvm run`, consoles streamed.
pub fn run_seeds(args: &RunArgs, argv: &[String]) -> Result<i32, String> {
    let Some(seeds) = &args.seeds else {
        return Err("no --seeds".into());
    };
    for (given, flag) in [
        (args.trace.is_some(), "--trace"),
        (args.pcap.is_some(), "--pcap"),
        (args.keep_disks.is_some(), "--keep-disks"),
        (args.profile.is_some(), "--profile"),
        (args.snapshot.is_some(), "--snapshot"),
        (args.history.is_some(), "--history"),
    ] {
        if given {
            return Err(format!(
                "{flag} names one output for one run: with --seeds, use `simvm soak`, which \
                 keeps each failing seed's trace, capture, disks and history (docs/soak.md)"
            ));
        }
    }
    let run_at = argv.iter().position(|a| a == "run").unwrap_or(1);
    let given = argv.get(run_at + 1..).unwrap_or(&[]);
    let template = ChildTemplate {
        exe: own_binary()?,
        scenario: None,
        forwarded: without(given, &[("--seeds", true), ("--check-determinism", false)]),
        out: None,
    };
    prepare(args)?;
    let planned = seeds.seeds().len();
    let finished = supervise(
        Plan {
            template,
            seeds: seeds.seeds().to_vec(),
            jobs: 1,
            check_basis_points: if args.check_determinism { 10_000 } else { 0 },
            timeout: NO_TIMEOUT,
            stream: true,
        },
        Progress::new(planned as u64, true),
    )?;
    conclude(&finished, planned)
}

/// Prints the summary; the exit status: 0 when every seed passed, 1 when one failed,
/// 128 + the signal when one stopped the soak.
fn conclude(finished: &Finished, planned: usize) -> Result<i32, String> {
    let signal_name = finished.interrupted.map(|s| s.as_str());
    print!(
        "{}",
        Summary {
            results: &finished.results,
            planned,
            wall: finished.wall,
            interrupted: signal_name,
        }
        .text()
    );
    if let Some(fatal) = &finished.fatal {
        return Err(fatal.clone());
    }
    if let Some(signal) = finished.interrupted {
        return Ok(128 + signal as i32);
    }
    let failed = finished.results.iter().any(|r| !r.verdict.passed());
    Ok(i32::from(failed))
}

/// The soak's world options as `simvm run` arguments, then the arguments after `--`.
fn forwarded(args: &SoakArgs) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut option = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            out.push(name.to_string());
            out.push(value);
        }
    };
    option("--until", args.until.map(format_ns));
    option("--mem", args.mem.map(format_size));
    option("--recipe", args.recipe.clone());
    option("--kernel", args.kernel.as_deref().map(utf8).transpose()?);
    option(
        "--initramfs",
        args.initramfs.as_deref().map(utf8).transpose()?,
    );
    option(
        "--chaos",
        soak_chaos(args).map(simvm_vmm::scenario::format_per_mille),
    );
    for (set, flag) in [(args.strict, "--strict"), (args.cold, "--cold")] {
        if set {
            out.push(flag.to_string());
        }
    }
    for arg in args.run_args.iter().take_while(|a| *a != "--") {
        let name = arg.split_once('=').map_or(arg.as_str(), |(n, _)| n);
        let why = match name {
            "--seed" | "--seeds" => "give the seeds to `simvm soak --seeds`",
            "--trace" | "--pcap" | "--keep-disks" | "--history" => {
                "simvm soak writes each seed's trace, capture, disks and history into its directory under --out"
            }
            "--check-determinism" => {
                "`simvm soak --determinism-check PERCENT` chooses the seeds checked (100 for all)"
            }
            "--profile" | "--snapshot" | "--snapshot-at" => {
                "it writes one directory for one run: run the seed with `simvm run`"
            }
            _ => continue,
        };
        return Err(format!("{name} after `--` is not for a soak: {why}"));
    }
    out.extend(args.run_args.iter().cloned());
    Ok(out)
}

/// Chaos scheduling in a soak, by default 2% of system calls.
const SOAK_CHAOS_PER_MILLE: u32 = 20;

/// The `--chaos` the children get: the soak's own, else none if the scenario or the `simvm run`
/// arguments say (they win) or the seeds continue a world snapshot (which was taken with its
/// own chaos, part of its world), else the soak's default.
fn soak_chaos(args: &SoakArgs) -> Option<u32> {
    if args.chaos.is_some() {
        return args.chaos;
    }
    let run_option = |name: &str| {
        (args.run_args.iter())
            .take_while(|a| *a != "--")
            .any(|a| a == name || a.starts_with(&format!("{name}=")))
    };
    let given_after = run_option("--chaos") || run_option("--from");
    // A scenario that does not load is reported when the seeds' runs are checked.
    let in_scenario = (args.scenario.as_deref())
        .and_then(|path| Scenario::load(path).ok())
        .is_some_and(|s| s.chaos_per_mille != 0);
    (!given_after && !in_scenario).then_some(SOAK_CHAOS_PER_MILLE)
}

/// The children's `simvm run` arguments, parsed now by `simvm run`'s own parser so that a
/// mistake is reported once instead of by every seed.
fn check_run_args(template: &ChildTemplate) -> Result<RunArgs, String> {
    let argv = std::iter::once("simvm".into()).chain(template.args(0, false));
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Run(args),
        }) => Ok(*args),
        Ok(_) => Err("the arguments for `simvm run` were parsed as another command".into()),
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            Err(format!(
                "the arguments for each seed's `simvm run` are refused: {}",
                first.strip_prefix("error: ").unwrap_or(first)
            ))
        }
    }
}

/// Loads the scenario and builds (or finds) the guest images once, before any child starts:
/// a bad scenario is one error rather than one per seed, and children never build the same
/// image side by side.
fn prepare(args: &RunArgs) -> Result<(), String> {
    let scenario = scenario_of(args)?;
    if let Some(from) = &args.from {
        simvm_vmm::world::check_snapshot(from).map_err(|e| e.to_string())?;
    }
    if args.kernel.is_none() {
        Simulation::new(scenario, 0)
            .with_recipe_images(args.recipe.as_deref())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn own_binary() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find the simvm binary to run seeds: {e}"))
}

fn utf8(path: &Path) -> Result<String, String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{}: only UTF-8 paths are supported", path.display()))
}

/// A seed replaces its directory under `--out` (an earlier soak's files would mix with its
/// own), so a `seed-N` directory holding anything a soak does not write stops the soak before
/// it starts instead of being deleted.
fn check_out_dir(out: &Path) -> Result<(), String> {
    let entries =
        std::fs::read_dir(out).map_err(|e| format!("cannot read {}: {e}", out.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_seed_dir = name.to_str().is_some_and(|n| {
            n.strip_prefix("seed-")
                .is_some_and(|seed| seed.parse::<u64>().is_ok())
        });
        if !is_seed_dir || !entry.path().is_dir() {
            continue;
        }
        let Ok(files) = std::fs::read_dir(entry.path()) else {
            continue;
        };
        for file in files.flatten() {
            let file_name = file.file_name();
            if !child::SEED_FILES.iter().any(|&f| file_name == f) {
                return Err(format!(
                    "--out {}: {} holds {}, which a soak does not write; a soak replaces its \
                     seeds' directories, so give another --out or move the file",
                    out.display(),
                    entry.path().display(),
                    file_name.to_string_lossy()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    fn parse_soak(args: &[&str]) -> Result<SoakArgs, String> {
        let argv = ["simvm", "soak"].iter().chain(args).copied();
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Soak(args),
            }) => Ok(*args),
            Ok(_) => Err("another command".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn the_history_timeline_is_named_as_simvm_run_names_it() {
        let timeline = Path::new(child::HISTORY).with_extension("html");
        assert_eq!(timeline, Path::new(child::HISTORY_TIMELINE));
    }

    #[test]
    fn a_seed_directory_holding_foreign_files_stops_the_soak_before_it_starts() {
        let out = std::env::temp_dir().join(format!("simvm-soak-out-{}", std::process::id()));
        let seed = out.join("seed-3");
        std::fs::create_dir_all(seed.join(child::DISKS)).unwrap();
        std::fs::write(seed.join(child::CONSOLE_LOG), "an earlier soak's").unwrap();
        std::fs::write(out.join("notes.txt"), "beside the seeds").unwrap();
        assert_eq!(check_out_dir(&out), Ok(()));
        std::fs::write(seed.join("important"), "precious").unwrap();
        let refused = check_out_dir(&out).unwrap_err();
        assert!(refused.contains("holds important"), "{refused}");
        assert_eq!(std::fs::read(seed.join("important")).unwrap(), b"precious");
        let _ = std::fs::remove_dir_all(out);
    }

    #[test]
    fn a_from_that_is_no_snapshot_stops_the_soak_before_any_seed() {
        let dir = std::env::temp_dir().join(format!("simvm-soak-from-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let argv = [
            "simvm",
            "run",
            "--from",
            dir.to_str().unwrap(),
            "--",
            "true",
        ];
        let Cli {
            command: Command::Run(args),
        } = Cli::parse_from(argv)
        else {
            panic!("not a run");
        };
        let refused = prepare(&args).unwrap_err();
        assert!(refused.contains("not a simvm snapshot"), "{refused}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn world_options_and_the_tail_reach_every_seed() {
        let args = parse_soak(&[
            "t.toml",
            "--seeds",
            "1-3",
            "--until",
            "1500us",
            "--mem",
            "256M",
            "--cold",
            "--",
            "--machines",
            "2",
            "--",
            "sh",
            "-c",
            "echo --seed",
        ])
        .unwrap();
        assert_eq!(
            forwarded(&args).unwrap(),
            strings(&[
                "--until",
                "1500us",
                "--mem",
                "256M",
                "--chaos",
                "2%",
                "--cold",
                "--machines",
                "2",
                "--",
                "sh",
                "-c",
                "echo --seed"
            ])
        );
        assert_eq!(args.determinism_check, 500);
        assert_eq!(args.timeout, 3600 * 1_000_000_000);
        assert_eq!(args.out, PathBuf::from("soak-out"));
    }

    #[test]
    fn seeds_continuing_a_snapshot_get_no_chaos_of_the_soaks_own() {
        let args = parse_soak(&["t.toml", "--seeds", "1-3", "--", "--from", "up"]).unwrap();
        assert_eq!(forwarded(&args).unwrap(), strings(&["--from", "up"]));
        let asked = parse_soak(&["t.toml", "--seeds", "1", "--chaos", "1%", "--", "--from=up"]);
        assert_eq!(
            forwarded(&asked.unwrap()).unwrap(),
            strings(&["--chaos", "1%", "--from=up"])
        );
    }

    #[test]
    fn per_seed_outputs_and_seeds_after_the_dashes_are_refused() {
        for (tail, needle) in [
            ("--seed=3", "give the seeds to `simvm soak --seeds`"),
            ("--trace", "into its directory under --out"),
            ("--history", "into its directory under --out"),
            ("--check-determinism", "--determinism-check PERCENT"),
            ("--profile", "run the seed with `simvm run`"),
        ] {
            let args = parse_soak(&["--seeds", "1", "--", tail, "x"]).unwrap();
            let err = forwarded(&args).expect_err(tail);
            assert!(err.contains(needle), "{tail}: {err}");
        }
        // ... but not inside the command.
        let args = parse_soak(&["--seeds", "1", "--", "--", "prog", "--trace"]).unwrap();
        assert!(forwarded(&args).is_ok());
    }

    #[test]
    fn the_soak_flags_are_checked() {
        for (args, needle) in [
            (&["--seeds", "3-1"][..], "goes backwards"),
            (&["--seeds", "1", "--jobs", "0"], "--jobs"),
            (&["--seeds", "1", "--shard", "2/2"], "out of range"),
            (
                &["--seeds", "1", "--shard", "0/2", "--shards", "2"],
                "cannot be used with",
            ),
            (
                &["--seeds", "1", "--determinism-check", "150"],
                "from 0 to 100",
            ),
            (&["--seeds", "1", "--timeout", "10"], "needs a unit"),
            (&["t.toml"], "--seeds"),
        ] {
            let err = parse_soak(args).err().expect("refused");
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn the_childs_arguments_are_checked_by_the_run_parser() {
        let template = |forwarded: &[&str]| ChildTemplate {
            exe: "simvm".into(),
            scenario: Some("t.toml".into()),
            forwarded: strings(forwarded),
            out: Some("out".into()),
        };
        let args = check_run_args(&template(&["--machines", "2"])).unwrap();
        assert_eq!(args.machines, Some(2));
        assert_eq!(args.trace, Some(PathBuf::from("out/seed-0/trace.jsonl")));
        let Err(err) = check_run_args(&template(&["--no-such-flag"])) else {
            panic!("accepted");
        };
        assert!(
            err.starts_with("the arguments for each seed's `simvm run` are refused: unexpected argument '--no-such-flag'"),
            "{err}"
        );
    }

    #[test]
    fn run_seeds_and_seed_exclude_each_other() {
        let argv = [
            "simvm", "run", "--seed", "3", "--seeds", "1-2", "--", "true",
        ];
        let err = Cli::try_parse_from(argv)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("cannot be used with"), "{err}");
        let Ok(Cli {
            command: Command::Run(args),
        }) = Cli::try_parse_from(["simvm", "run", "--seeds", "1-2,5", "--", "true"])
        else {
            panic!("--seeds refused");
        };
        assert_eq!(args.seeds.map(|s| s.seeds().to_vec()), Some(vec![1, 2, 5]));
        assert_eq!(
            without(
                &strings(&[
                    "--seeds",
                    "1-2",
                    "--until=5s",
                    "--seeds=3",
                    "--check-determinism",
                    "--",
                    "x",
                    "--seeds",
                    "9"
                ]),
                &[("--seeds", true), ("--check-determinism", false)]
            ),
            strings(&["--until=5s", "--", "x", "--seeds", "9"])
        );
    }
}
