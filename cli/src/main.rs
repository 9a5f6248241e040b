//! The `simvm` command.

mod check;
mod interrupt;
mod progress;
mod prune;
mod run;
mod soak;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use simvm_devices::disk::CrashPolicy;
use simvm_devices::virtio::net::Offloads;
use simvm_vmm::image;
use simvm_vmm::nemesis::{FaultKind, Nemesis};
use simvm_vmm::page_work::PageWork;
use simvm_vmm::scenario::format_per_mille;
use simvm_vmm::scenario::{assign_mounts, DiskSpec, Scenario, MAX_DISKS};
use simvm_vmm::simulation::{Simulation, DEFAULT_MEM};
use simvm_vmm::tuning::GuestTuning;
use simvm_vmm::units::{format_ns, format_size, parse_duration_ns, parse_size};
use simvm_vmm::world::{SnapshotCondition, SnapshotRequest};

use crate::run::RunPlan;

/// Deterministic simulation testing for clusters of Linux micro-VMs.
#[derive(Parser)]
#[command(name = "simvm", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot machines from a seed, run a command in each, and report.
    Run(Box<RunArgs>),
    /// Run many seeds of a scenario, each in its own `simvm run` process, and report the
    /// failures with their reproduce lines (docs/soak.md).
    Soak(Box<soak::SoakArgs>),
    /// Decide whether a history of key-value operations is linearizable (exit 0), is not
    /// (exit 1, with the operations that cannot be ordered), or could not be decided (exit 3).
    Check(check::CheckArgs),
    /// Build or locate guest images, and prune the cache of machine templates.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Read profiles that `simvm run --profile DIR` wrote.
    #[command(subcommand)]
    Profile(ProfileCommand),
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// Put two profiles side by side: the run's wall time, and per machine (and for all
    /// machines together) the time inside KVM_RUN and its largest activities, in wall seconds
    /// and as the speed-up (docs/profiling.md).
    Compare {
        /// The profile to compare against: a --profile directory or its profile.json.
        before: PathBuf,
        /// The profile to compare.
        after: PathBuf,
        /// Activities shown per machine; the rest are summed in one row.
        #[arg(long, default_value_t = 8)]
        top: usize,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build the guest image (cached by content: returns at once when nothing changed).
    Build {
        /// A recipe from guest-images/recipes (e.g. etcd) adding real Debian software.
        #[arg(long)]
        recipe: Option<String>,
    },
    /// Remove cached machine templates that will not be used again.
    ///
    /// Without options: those of other simvm builds, damaged ones and unfinished builds.
    /// --unused-for and --all remove more; templates another simvm is building or loading
    /// stay (docs/templates.md).
    Prune(prune::PruneArgs),
}

/// `simvm profile compare`: prints the comparison of two profiles.
fn compare_profiles(before: &Path, after: &Path, top: usize) -> Result<i32, String> {
    use simvm_vmm::profile::figures;
    let before = figures::load(before).map_err(|e| e.to_string())?;
    let after = figures::load(after).map_err(|e| e.to_string())?;
    print!("{}", figures::compare(&before, &after, top));
    Ok(0)
}

/// The watchdog limit when `--watchdog` is not given (keep in step with its default).
const DEFAULT_WATCHDOG: Duration = Duration::from_secs(5);

#[derive(Args, Clone)]
struct RunArgs {
    /// A scenario file (TOML; see examples/README.md). Without one, the command after `--`
    /// runs on every machine; with neither, the built-in demo scenario runs.
    scenario: Option<PathBuf>,
    /// The run's master seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run these seeds one after another instead (N, A-B or a comma list such as 1-10,20),
    /// each in its own `simvm run`, and sum up (docs/soak.md).
    #[arg(long, conflicts_with = "seed", value_parser = soak::SeedSet::parse)]
    seeds: Option<soak::SeedSet>,
    /// Number of machines (m1..mN) running the command.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    machines: Option<u16>,
    /// Guest RAM per machine, e.g. 128M (K, M, G; a multiple of 4K).
    #[arg(long, default_value = "128M", value_parser = parse_mem)]
    mem: u64,
    /// Guest kernel (ELF vmlinux). Default: the image built by `simvm image build`.
    #[arg(long, requires = "initramfs")]
    kernel: Option<PathBuf>,
    /// Base initramfs (uncompressed cpio).
    #[arg(long, requires = "kernel")]
    initramfs: Option<PathBuf>,
    /// Use the image of this recipe (built on first use).
    #[arg(long, conflicts_with = "kernel")]
    recipe: Option<String>,
    /// Fail the run if anything made it nondeterministic (a watchdog kick).
    #[arg(long)]
    strict: bool,
    /// Write every guest-visible event as JSON lines to this file.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Write every frame the network switch handles to this pcapng file (Wireshark, tshark).
    #[arg(long)]
    pcap: Option<PathBuf>,
    /// Run twice and compare the digests.
    #[arg(long)]
    check_determinism: bool,
    /// After every exit, also fingerprint each guest's registers and memory (slow: for finding
    /// where two runs part). Written to --trace and compared by --check-determinism; the digest
    /// is the same with or without it.
    #[arg(long)]
    trace_state: bool,
    /// Run the simulation on this host CPU only (on PVM hosts, guest user-mode CPUID reports
    /// the host CPU's APIC ID; see docs/determinism.md).
    #[arg(long)]
    cpu: Option<usize>,
    /// Real time a vCPU may run without any exit before the watchdog kicks it; a guest still
    /// in user code after as long again is a spinning program (docs/design.md "The watchdog").
    #[arg(long, default_value = "5s", value_parser = parse_watchdog)]
    watchdog: Duration,
    /// Stop at this virtual time (ns, us, ms, s, m, h, d; "1.5ms" works).
    #[arg(long, value_name = "DURATION", value_parser = parse_until)]
    until: Option<u64>,
    /// Extra guest kernel parameters (for example `loglevel=7` to see boot messages).
    #[arg(long, default_value = "")]
    kernel_args: String,
    /// Guests read the clock with system calls instead of the vDSO (for measuring what the vDSO
    /// clock saves; docs/performance.md "Guest tunings").
    #[arg(long)]
    no_vdso_clock: bool,
    /// Guests fill the whole 256 KiB source port perturbation table at their first connect()
    /// (seconds of emulated ChaCha20 on a PVM host) instead of 1 KiB of it.
    #[arg(long)]
    no_small_port_table: bool,
    /// Guests enter the kernel from user mode on the per-CPU entry stack and copy the registers
    /// to the task stack, instead of entering on the task stack (for measuring what that saves;
    /// docs/performance.md "Guest tunings").
    #[arg(long)]
    no_task_stack_entry: bool,
    /// Guest tasks start with Linux's 50 µs timer slack instead of 10 ms, so timers that fall
    /// close together each wake the guest (for measuring what the slack saves; docs/performance.md
    /// "Guest tunings").
    #[arg(long)]
    no_timer_slack: bool,
    /// Guests keep tmpfs files, their root filesystem's among them, in 4 KiB pages instead of
    /// 2 MiB huge pages and large folios, so each exec maps its binary a page at a time (for
    /// measuring what the larger pages save; docs/performance.md "Guest tunings").
    #[arg(long)]
    no_huge_page_cache: bool,
    /// Guests fault anonymous memory in 4 KiB at a time instead of up to 256 KiB (for measuring
    /// what the larger folios save; docs/performance.md "Guest tunings").
    #[arg(long)]
    no_large_anon_folios: bool,
    /// Guests take an interrupt for each completed batch of sent frames instead of reclaiming
    /// their buffers at the next send (for measuring what that saves; docs/performance.md
    /// "Guest tunings").
    #[arg(long)]
    no_tx_reclaim_on_send: bool,
    /// Guests leave a TCP timer armed when TCP clears it, so it fires later and finds nothing
    /// to do (Linux's way), instead of stopping it (for measuring the wake-ups that saves;
    /// docs/performance.md "Guest tunings").
    #[arg(long)]
    no_stop_cleared_timers: bool,
    /// Guests' kernels check memory fragmentation every 500 ms for proactive compaction
    /// (Linux's way), instead of compacting only when an allocation asks (for measuring the
    /// wake-ups that saves; docs/performance.md "Guest tunings").
    #[arg(long)]
    no_lazy_compaction: bool,
    /// A guest's read fault on a file maps 64 KiB around it (Linux's default) instead of
    /// 256 KiB (for measuring the faults that saves; docs/performance.md "Guest tunings").
    #[arg(long)]
    no_wide_fault_around: bool,
    /// The guest's scheduler clock is marked unstable (`tsc=unstable`), as before simvm marked
    /// its virtual clock stable (for measuring what that saves; docs/performance.md "Guest
    /// tunings").
    #[arg(long)]
    no_stable_sched_clock: bool,
    /// Who clears and copies the guest kernel's pages and large kernel buffers and fills its
    /// memory map at boot: `host` (simvm, one exit a page, copy or fill; the default where the
    /// host's KVM emulates guest kernel code, as PVM does) or `guest` (the default elsewhere).
    /// The run is the same either way; only its speed differs.
    #[arg(long, value_name = "host|guest", value_parser = parse_page_work)]
    page_work: Option<PageWork>,
    /// Chaos scheduling: each guest system call yields the CPU with this seeded probability
    /// (e.g. 2% or 0.02; 0.1% steps), so another seed explores other interleavings of each
    /// machine's threads and processes. Overrides the scenario's `chaos`; default off.
    #[arg(long, value_name = "PROBABILITY", value_parser = parse_chaos)]
    chaos: Option<u32>,
    /// User address-space randomisation from each guest's seeded RNG (another layout for
    /// every seed, the same for a seed), instead of one layout for all. Also `aslr = true`.
    #[arg(long)]
    aslr: bool,
    /// Seeded faults of these kinds (a comma list of partition, kill, pause, clock, disk) at
    /// the default interval (5s), duration (2s) and quiet tail (10s), instead of the
    /// scenario's `[nemesis]`. Needs the run's end (`until` or --until).
    #[arg(long, value_name = "KINDS", value_parser = parse_nemesis)]
    nemesis: Option<NemesisArg>,
    /// Do not offer checksum offload on virtio-net: every guest computes and verifies its own
    /// checksums (for measuring what the offload saves).
    #[arg(long)]
    no_checksum_offload: bool,
    /// Do not offer TCP segmentation offload on virtio-net: guests cut their own TCP segments
    /// (for measuring what the offload saves). Implied by --no-checksum-offload.
    #[arg(long)]
    no_tso: bool,
    /// Give every machine a disk: an ext4 filesystem of SIZE (e.g. 64M), empty or holding the
    /// host directory DIR, mounted at /data (then /data2, ...). Repeat for more disks.
    #[arg(long = "disk", value_name = "SIZE[:DIR]", value_parser = parse_disk)]
    disks: Vec<DiskArg>,
    /// What a crash (a `kill`) keeps of unflushed disk writes: keep-all, lose-all, subset
    /// (default: each write kept or lost by the seed) or torn (subset, and writes in flight
    /// keep a seeded prefix of their sectors).
    #[arg(long)]
    crash_policy: Option<CrashPolicy>,
    /// Write each disk's final contents to DIR/MACHINE-DISK.img.
    #[arg(long, value_name = "DIR")]
    keep_disks: Option<PathBuf>,
    /// Boot every machine from scratch instead of starting it from the machine template
    /// (which is built on first use and cached; see docs/templates.md).
    #[arg(long)]
    cold: bool,
    /// Save the whole world (every machine, its disks, the network's state, virtual time)
    /// once CONDITION holds: `time=DURATION` or `console=TEXT` (every machine has printed a
    /// line containing TEXT). The run goes on to its end. Needs --snapshot DIR.
    #[arg(long, value_name = "CONDITION", requires = "snapshot", value_parser = SnapshotCondition::parse)]
    snapshot_at: Option<SnapshotCondition>,
    /// Where --snapshot-at saves the world: a new directory.
    #[arg(long, value_name = "DIR", requires = "snapshot_at")]
    snapshot: Option<PathBuf>,
    /// Continue the world saved in DIR (by a run of the same scenario and options) with this
    /// run's --seed for everything after the snapshot.
    #[arg(long, value_name = "DIR", conflicts_with = "snapshot_at")]
    from: Option<PathBuf>,
    /// Profile the run into DIR: exits by reason with their wall time, and samples of where
    /// each guest was (kernel functions, user code, by process) as folded stacks and flame
    /// graphs, plus a summary on stderr that also estimates what stepping machines in
    /// parallel would gain (docs/profiling.md). The digest is the same as without.
    #[arg(long, value_name = "DIR")]
    profile: Option<PathBuf>,
    /// Write the workload's history (the scenario's `[check]`) to FILE as JSON lines, times in
    /// virtual time, and its timeline to FILE with `.html` (open it in a browser).
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
    /// Samples per second of real time for --profile.
    #[arg(long, value_name = "HZ", default_value_t = 250, requires = "profile",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    profile_rate: u32,
    /// The command each machine runs.
    #[arg(last = true)]
    command: Vec<String>,
}

/// `--disk SIZE[:DIR]`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DiskArg {
    text: String,
    spec: DiskSpec,
}

/// `--mem`: a size in whole pages. (The machine checks the range.)
fn parse_mem(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if !bytes.is_multiple_of(4096) {
        return Err(format!(
            "guest memory of {bytes} bytes: it must be a multiple of 4K"
        ));
    }
    Ok(bytes)
}

/// `--nemesis KINDS`, as given and as parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NemesisArg {
    text: String,
    kinds: Vec<FaultKind>,
}

fn parse_nemesis(text: &str) -> Result<NemesisArg, String> {
    let mut kinds = Vec::new();
    for name in text.split(',').map(str::trim) {
        let kind = FaultKind::parse(name).ok_or_else(|| {
            let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown fault `{name}`; the kinds are {}", known.join(", "))
        })?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(NemesisArg {
        text: text.to_string(),
        kinds,
    })
}

/// `--chaos`: a probability (`0.02`, `2%`) in thousandths.
fn parse_chaos(text: &str) -> Result<u32, String> {
    let probability = match text.trim().strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().map(|p| p / 100.0),
        None => text.trim().parse::<f64>(),
    }
    .map_err(|_| format!("expected a probability like 0.02 or 2%, found {text:?}"))?;
    if !(0.0..=1.0).contains(&probability) {
        return Err(format!("a probability is between 0 and 1, found {text}"));
    }
    Ok(simvm_vmm::scenario::per_mille(probability))
}

fn parse_page_work(text: &str) -> Result<PageWork, String> {
    match text {
        "host" => Ok(PageWork::Host),
        "guest" => Ok(PageWork::Guest),
        _ => Err(format!("expected host or guest, found {text:?}")),
    }
}

/// A duration, with the scenario files' exact parser.
fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_duration_ns(text).map(Duration::from_nanos)
}

/// `--watchdog`: at least 100 ms, since kernel code under PVM's emulator goes that long
/// between exits often, and each kick that finds it there is wasted.
fn parse_watchdog(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        limit if limit < Duration::from_millis(100) => {
            Err("the watchdog's limit must be at least 100ms".to_owned())
        }
        limit => Ok(limit),
    }
}

/// `--until`: virtual nanoseconds, after 0.
fn parse_until(text: &str) -> Result<u64, String> {
    match parse_duration_ns(text)? {
        0 => Err("the run must stop after 0s".to_owned()),
        ns => Ok(ns),
    }
}

fn parse_disk(text: &str) -> Result<DiskArg, String> {
    let (size, dir) = match text.split_once(':') {
        Some((size, dir)) => (size, Some(PathBuf::from(dir))),
        None => (text, None),
    };
    let size_text = size;
    let size = parse_size(size)?;
    if size < (1 << 20) || size % 4096 != 0 {
        return Err(format!(
            "a disk of {size} bytes: the size must be a multiple of 4K and at least 1M"
        ));
    }
    match &dir {
        Some(dir) if dir.as_os_str().is_empty() => {
            return Err(format!(
                "no directory after the colon: give one, or write --disk {size_text} for an \
                 empty filesystem"
            ))
        }
        Some(dir) if !dir.is_dir() => {
            return Err(format!("{} is not a directory", dir.display()));
        }
        _ => {}
    }
    Ok(DiskArg {
        text: text.to_string(),
        spec: DiskSpec::ext4(size, dir),
    })
}

/// The arguments of the run that took a snapshot, kept in the snapshot so that
/// `simvm run --from DIR --seed N` needs nothing else.
const SNAPSHOT_ARGS: &str = "args.json";

/// Options that do not shape the world (outputs, the seed, the snapshot itself): left out of
/// the arguments a snapshot keeps. `true`: the option takes a value.
const NOT_KEPT: [(&str, bool); 10] = [
    ("--seed", true),
    ("--snapshot-at", true),
    ("--snapshot", true),
    ("--check-determinism", false),
    ("--trace", true),
    ("--trace-state", false),
    ("--pcap", true),
    ("--keep-disks", true),
    ("--profile", true),
    ("--profile-rate", true),
];

/// `simvm run` arguments without those in [`NOT_KEPT`].
fn world_args(args: &[String]) -> Vec<String> {
    without(args, &NOT_KEPT)
}

/// `args` without the options named in `drop` (`true`: it takes a value), up to a `--`.
fn without(args: &[String], drop: &[(&str, bool)]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            kept.push(arg.clone());
            kept.extend(iter.by_ref().cloned());
            break;
        }
        let name = arg.split_once('=').map_or(arg.as_str(), |(n, _)| n);
        match drop.iter().find(|(n, _)| *n == name) {
            Some((_, true)) if !arg.contains('=') => {
                iter.next();
            }
            Some(_) => {}
            None => kept.push(arg.clone()),
        }
    }
    kept
}

/// For `simvm run --from DIR` without a scenario or a command: the arguments kept in the
/// snapshot, then the ones given now.
fn with_snapshot_args(argv: Vec<String>, cli: Cli) -> Result<Cli, String> {
    let Command::Run(args) = &cli.command else {
        return Ok(cli);
    };
    let Some(dir) = args
        .from
        .as_ref()
        .filter(|_| args.scenario.is_none() && args.command.is_empty())
    else {
        return Ok(cli);
    };
    let path = dir.join(SNAPSHOT_ARGS);
    let Ok(text) = std::fs::read(&path) else {
        return Ok(cli);
    };
    let saved: Vec<String> =
        serde_json::from_slice(&text).map_err(|e| format!("{}: damaged: {e}", path.display()))?;
    let run_at = argv.iter().position(|a| a == "run").unwrap_or(1);
    let mut all: Vec<String> = argv[..=run_at].to_vec();
    let given = &argv[run_at + 1..];
    // An option given now replaces the saved one: `--from DIR --until 20s` runs a snapshot
    // taken by a run with `--until 10s` on to 20 s.
    let saved = without(&saved, &run_options_in(given));
    // The saved `-- command` must stay last.
    let split = saved.iter().position(|a| a == "--").unwrap_or(saved.len());
    all.extend_from_slice(&saved[..split]);
    all.extend_from_slice(given);
    all.extend_from_slice(&saved[split..]);
    // clap's message starts with the "error: " that main prints before every message.
    Cli::try_parse_from(all).map_err(|e| {
        let message = e.to_string();
        message
            .strip_prefix("error: ")
            .unwrap_or(&message)
            .to_owned()
    })
}

/// The `simvm run` options named in `args` (up to a `--`), each with whether it takes a value.
fn run_options_in(args: &[String]) -> Vec<(&str, bool)> {
    let cli = Cli::command();
    let Some(run) = cli.find_subcommand("run") else {
        return Vec::new();
    };
    args.iter()
        .take_while(|a| *a != "--")
        .filter_map(|arg| {
            let name = arg.split_once('=').map_or(arg.as_str(), |(n, _)| n);
            let long = name.strip_prefix("--")?;
            let option = run.get_arguments().find(|a| a.get_long() == Some(long))?;
            Some((name, option.get_action().takes_values()))
        })
        .collect()
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let cli = match with_snapshot_args(argv.clone(), Cli::parse()) {
        Ok(cli) => cli,
        Err(message) => {
            eprintln!("simvm: error: {message}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Run(args) if args.seeds.is_some() => soak::run_seeds(&args, &argv),
        Command::Run(args) => run(*args, &argv),
        Command::Soak(args) => soak::soak(*args),
        Command::Check(args) => check::run(args),
        Command::Image(ImageCommand::Build { recipe }) => image::build(recipe.as_deref())
            .map(|image| {
                println!("kernel={}", image.kernel.display());
                println!("initramfs={}", image.initramfs.display());
                0
            })
            .map_err(|e| e.to_string()),
        Command::Image(ImageCommand::Prune(args)) => prune::run(args),
        Command::Profile(ProfileCommand::Compare { before, after, top }) => {
            compare_profiles(&before, &after, top)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(message) => {
            eprintln!("simvm: error: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: RunArgs, argv: &[String]) -> Result<i32, String> {
    check_late_outputs(&args)?;
    let mut scenario = scenario_of(&args)?;
    if !args.disks.is_empty() {
        if args.disks.len() > MAX_DISKS {
            return Err(format!("at most {MAX_DISKS} disks per machine"));
        }
        for machine in &mut scenario.machines {
            machine
                .disks
                .extend(args.disks.iter().map(|d| d.spec.clone()));
            assign_mounts(&mut machine.disks);
        }
    }
    let simulation =
        Simulation {
            default_mem: args.mem,
            strict: args.strict,
            trace: args.trace.clone(),
            trace_state: args.trace_state,
            cpu: args.cpu,
            pcap: args.pcap.clone(),
            watchdog: args.watchdog,
            until_ns: args.until,
            kernel_args: args.kernel_args.clone(),
            tuning: GuestTuning {
                vdso_clock: !args.no_vdso_clock,
                small_port_table: !args.no_small_port_table,
                task_stack_entry: !args.no_task_stack_entry,
                timer_slack: !args.no_timer_slack,
                huge_page_cache: !args.no_huge_page_cache,
                large_anon_folios: !args.no_large_anon_folios,
                tx_reclaim_on_send: !args.no_tx_reclaim_on_send,
                stop_cleared_timers: !args.no_stop_cleared_timers,
                lazy_compaction: !args.no_lazy_compaction,
                wide_fault_around: !args.no_wide_fault_around,
                stable_sched_clock: !args.no_stable_sched_clock,
            },
            page_work: args.page_work.unwrap_or_else(PageWork::for_this_host),
            offloads: Offloads {
                checksum: !args.no_checksum_offload,
                segmentation: !args.no_checksum_offload && !args.no_tso,
            },
            crash_policy: args.crash_policy,
            keep_disks: args.keep_disks.clone(),
            cold: args.cold,
            snapshot: args.snapshot_at.clone().zip(args.snapshot.clone()).map(
                |(condition, dir)| SnapshotRequest {
                    condition,
                    dir,
                    extra_files: vec![(SNAPSHOT_ARGS.into(), snapshot_args(argv))],
                },
            ),
            from: args.from.clone(),
            chaos_per_mille: args.chaos,
            aslr: args.aslr,
            // The command line picks the kinds; the scenario's `machines` and `start`, if any,
            // still hold.
            nemesis: args.nemesis.as_ref().map(|n| Nemesis {
                machines: (scenario.nemesis.as_ref()).and_then(|s| s.machines.clone()),
                start_ns: scenario.nemesis.as_ref().map_or(0, |s| s.start_ns),
                ..Nemesis::with_faults(n.kinds.clone())
            }),
            sample_every: args
                .profile
                .as_ref()
                .map(|_| Duration::from_secs(1) / args.profile_rate),
            ..Simulation::new(scenario, args.seed)
        };
    let simulation = match (&args.kernel, &args.initramfs) {
        (Some(kernel), Some(initramfs)) => {
            let image =
                image::given(kernel.clone(), initramfs.clone()).map_err(|e| e.to_string())?;
            simulation.with_image(image)
        }
        _ => simulation
            .with_recipe_images(args.recipe.as_deref())
            .map_err(|e| e.to_string())?,
    };
    if args.nemesis.is_some()
        && simulation
            .until_ns
            .or(simulation.scenario.until_ns)
            .is_none()
    {
        return Err("--nemesis needs the run's end, to keep its quiet tail: give --until".into());
    }
    let schedule = simulation.nemesis_schedule();
    if !schedule.is_empty() {
        eprintln!(
            "simvm: the nemesis's faults for seed {}:\n{}",
            args.seed,
            simulation.scenario.timeline_toml(&schedule).trim_end()
        );
    } else if let Some(nemesis) = simulation.nemesis() {
        // Said, not refused: another seed may draw faults in the same window.
        eprintln!(
            "simvm: the nemesis drew no fault for seed {}: none fell between its start ({}) and \
             the run's end less its quiet tail ({}), or no machine can take its kinds",
            args.seed,
            format_ns(nemesis.start_ns),
            format_ns(nemesis.quiet_ns)
        );
    }
    // Two runs compared step by step cannot stop halfway: Ctrl-C ends those at once.
    let stop = if args.check_determinism {
        None
    } else {
        Some(interrupt::stop_on_signal()?)
    };
    let simulation = Simulation { stop, ..simulation };
    let replay_args = args.clone();
    let plan = RunPlan {
        reproduce: reproduce_command(&args),
        reproduce_with_snapshot: reproduce_line(&args, true),
        replay_to: Box::new(move |until| {
            let mut args = replay_args.clone();
            args.until = Some(until);
            reproduce_command(&args)
        }),
        simulation,
        profile: args.profile.clone(),
        history: args.history.clone(),
    };
    let result = if args.check_determinism {
        plan.check_determinism()
    } else {
        plan.run()
    };
    result.map_err(|e| e.to_string())
}

/// The scenario `simvm run` runs: the file, the command after `--` on `--machines` machines,
/// or the demo; with the checks made before anything starts (`simvm soak` makes them once for
/// all its seeds).
pub(crate) fn scenario_of(args: &RunArgs) -> Result<Scenario, String> {
    let scenario = match (&args.scenario, args.command.is_empty()) {
        (Some(_), false) => {
            return Err("give either a scenario file or a command after `--`, not both".into())
        }
        (Some(path), true) => {
            Scenario::load_with_until(path, args.until).map_err(|e| e.to_string())?
        }
        (None, false) => {
            check_command(&args.command)?;
            Scenario::from_cli(
                usize::from(args.machines.unwrap_or(1)),
                args.command.clone(),
            )
        }
        (None, true) => Scenario::demo(),
    };
    let count = scenario.machines.len();
    if let Some(n) = args
        .machines
        .filter(|&n| args.command.is_empty() && usize::from(n) != count)
    {
        let machines = if count == 1 { "machine" } else { "machines" };
        return Err(format!(
            "--machines {n} does not match the scenario, which has {count} {machines}"
        ));
    }
    Ok(scenario)
}

/// The outputs written only once the run is over (`--profile`, `--history`, `--keep-disks`):
/// a path that cannot take them is found before the run, not after minutes of it.
fn check_late_outputs(args: &RunArgs) -> Result<(), String> {
    for (flag, dir) in [
        ("--profile", &args.profile),
        ("--keep-disks", &args.keep_disks),
    ] {
        if let Some(dir) = dir.as_ref().filter(|d| d.exists() && !d.is_dir()) {
            return Err(format!(
                "{flag} {}: exists and is not a directory",
                dir.display()
            ));
        }
    }
    if let Some(file) = &args.history {
        if file.is_dir() {
            return Err(format!("--history {}: is a directory", file.display()));
        }
        check_parent_dir("--history", file)?;
    }
    Ok(())
}

/// The directory an output `file` given as `flag` goes into must exist.
pub(crate) fn check_parent_dir(flag: &str, file: &Path) -> Result<(), String> {
    let parent = file.parent().filter(|p| !p.as_os_str().is_empty());
    match parent.filter(|p| !p.is_dir()) {
        Some(parent) => Err(format!(
            "{flag} {}: the directory {} does not exist",
            file.display(),
            parent.display()
        )),
        None => Ok(()),
    }
}

/// The command after `--` must name a program: an empty one would leave the guest's init
/// at an interactive shell that nothing ever answers, as a scenario's empty `command` is refused.
fn check_command(command: &[String]) -> Result<(), String> {
    match command.first() {
        Some(program) if !program.trim().is_empty() => Ok(()),
        _ => Err("the command after `--` is empty: give a program to run".into()),
    }
}

/// The arguments a snapshot keeps: this run's, less the seed, outputs and snapshot options.
fn snapshot_args(argv: &[String]) -> Vec<u8> {
    let run_at = argv.iter().position(|a| a == "run").unwrap_or(1);
    let args = argv.get(run_at + 1..).unwrap_or(&[]);
    serde_json::to_vec(&world_args(args)).unwrap_or_default()
}

/// The shortest `simvm run` line that repeats this run.
fn reproduce_command(args: &RunArgs) -> String {
    reproduce_line(args, false)
}

/// [`reproduce_command`], with `--snapshot-at` and `--snapshot` if `with_snapshot`.
fn reproduce_line(args: &RunArgs, with_snapshot: bool) -> String {
    let mut line = String::from("simvm run");
    if let Some(path) = &args.scenario {
        line.push_str(&format!(" {}", shell_quote(&path.to_string_lossy())));
    }
    line.push_str(&format!(" --seed {}", args.seed));
    if let Some(machines) = args.machines.filter(|&m| m != 1) {
        line.push_str(&format!(" --machines {machines}"));
    }
    // Everything else that changes what the guests see or how the run is judged.
    let mut option = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            line.push_str(&format!(" --{name} {}", shell_quote(&value)));
        }
    };
    // Values exactly as the run used them, in the largest unit that represents them exactly.
    option(
        "mem",
        (args.mem != DEFAULT_MEM).then(|| format_size(args.mem)),
    );
    option(
        "kernel",
        args.kernel
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
    );
    option(
        "initramfs",
        args.initramfs
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
    );
    option("recipe", args.recipe.clone());
    option("cpu", args.cpu.map(|cpu| cpu.to_string()));
    option("until", args.until.map(format_ns));
    option(
        "watchdog",
        (args.watchdog != DEFAULT_WATCHDOG)
            .then(|| format_ns(u64::try_from(args.watchdog.as_nanos()).unwrap_or(u64::MAX))),
    );
    option("nemesis", args.nemesis.as_ref().map(|n| n.text.clone()));
    option("chaos", args.chaos.map(format_per_mille));
    option(
        "kernel-args",
        (!args.kernel_args.is_empty()).then(|| args.kernel_args.clone()),
    );
    let flags = [
        (args.strict, "--strict"),
        (args.no_checksum_offload, "--no-checksum-offload"),
        (args.no_tso, "--no-tso"),
        (args.no_vdso_clock, "--no-vdso-clock"),
        (args.no_small_port_table, "--no-small-port-table"),
        (args.no_task_stack_entry, "--no-task-stack-entry"),
        (args.no_timer_slack, "--no-timer-slack"),
        (args.no_huge_page_cache, "--no-huge-page-cache"),
        (args.no_large_anon_folios, "--no-large-anon-folios"),
        (args.no_tx_reclaim_on_send, "--no-tx-reclaim-on-send"),
        (args.no_stop_cleared_timers, "--no-stop-cleared-timers"),
        (args.no_lazy_compaction, "--no-lazy-compaction"),
        (args.no_wide_fault_around, "--no-wide-fault-around"),
        (args.no_stable_sched_clock, "--no-stable-sched-clock"),
        (args.cold, "--cold"),
        (args.aslr, "--aslr"),
    ];
    for (_, flag) in flags.iter().filter(|(set, _)| *set) {
        line.push(' ');
        line.push_str(flag);
    }
    if let Some(dir) = &args.from {
        line.push_str(&format!(" --from {}", shell_quote(&dir.to_string_lossy())));
    }
    if let Some((condition, dir)) = args
        .snapshot_at
        .as_ref()
        .zip(args.snapshot.as_ref())
        .filter(|_| with_snapshot)
    {
        line.push_str(&format!(
            " --snapshot-at {} --snapshot {}",
            shell_quote(&condition.to_string()),
            shell_quote(&dir.to_string_lossy())
        ));
    }
    for disk in &args.disks {
        line.push_str(&format!(" --disk {}", shell_quote(&disk.text)));
    }
    if let Some(policy) = args.crash_policy {
        line.push_str(&format!(" --crash-policy {policy}"));
    }
    if !args.command.is_empty() {
        line.push_str(" --");
        for arg in &args.command {
            line.push(' ');
            line.push_str(&shell_quote(arg));
        }
    }
    line
}

/// `text` as one shell word.
fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:".contains(c))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn a_snapshot_keeps_what_shapes_the_world_and_not_the_seed_or_outputs() {
        let args = strings(&[
            "--machines",
            "2",
            "--seed",
            "5",
            "--snapshot-at",
            "console=ready",
            "--snapshot=dir",
            "--trace",
            "t.jsonl",
            "--check-determinism",
            "--mem",
            "256M",
            "--",
            "sh",
            "-c",
            "echo --seed 9",
        ]);
        assert_eq!(
            world_args(&args),
            strings(&[
                "--machines",
                "2",
                "--mem",
                "256M",
                "--",
                "sh",
                "-c",
                "echo --seed 9"
            ])
        );
    }

    #[test]
    fn from_alone_takes_the_snapshots_arguments() {
        let dir = std::env::temp_dir().join(format!("simvm-cli-from-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let saved = strings(&["--machines", "2", "--", "sh", "-c", "echo hi"]);
        std::fs::write(dir.join(SNAPSHOT_ARGS), serde_json::to_vec(&saved).unwrap()).unwrap();
        let dir_s = dir.to_string_lossy().into_owned();
        let argv = strings(&["simvm", "run", "--from", &dir_s, "--seed", "7"]);
        let Ok(Cli {
            command: Command::Run(args),
        }) = with_snapshot_args(argv.clone(), Cli::parse_from(&argv))
        else {
            panic!("not a run");
        };
        assert_eq!((args.machines, args.seed), (Some(2), 7));
        assert_eq!(args.command, strings(&["sh", "-c", "echo hi"]));
        assert_eq!(args.from.as_deref(), Some(dir.as_path()));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn outputs_written_after_the_run_are_checked_before_it() {
        let file = std::env::temp_dir().join(format!("simvm-cli-late-{}", std::process::id()));
        std::fs::write(&file, "").unwrap();
        let file_s = file.to_string_lossy().into_owned();
        let missing = format!("{file_s}.d/h.jsonl");
        for (given, expected) in [
            (
                ["--profile", file_s.as_str()],
                "exists and is not a directory",
            ),
            (
                ["--keep-disks", file_s.as_str()],
                "exists and is not a directory",
            ),
            (["--history", missing.as_str()], "does not exist"),
            (["--history", "/"], "is a directory"),
        ] {
            let mut argv = strings(&["simvm", "run"]);
            argv.extend(strings(&given));
            argv.extend(strings(&["--", "true"]));
            let Cli {
                command: Command::Run(args),
            } = Cli::parse_from(&argv)
            else {
                panic!("not a run");
            };
            let refused = check_late_outputs(&args).unwrap_err();
            assert!(refused.contains(expected), "{given:?}: {refused}");
        }
        let _ = std::fs::remove_file(file);
    }

    #[test]
    fn a_run_missing_its_snapshot_reproduces_with_the_snapshot_options() {
        let argv = [
            "simvm",
            "run",
            "--seed",
            "1",
            "--snapshot-at",
            "console=up now",
        ];
        let argv = [&argv[..], &["--snapshot", "s d", "--", "sleep", "1"]].concat();
        let Cli {
            command: Command::Run(args),
        } = Cli::parse_from(argv)
        else {
            panic!("not a run");
        };
        assert_eq!(reproduce_command(&args), "simvm run --seed 1 -- sleep 1");
        assert_eq!(
            reproduce_line(&args, true),
            "simvm run --seed 1 --snapshot-at 'console=up now' --snapshot 's d' -- sleep 1"
        );
        let condition = SnapshotCondition::parse("time=1500ms").unwrap();
        assert_eq!(condition.to_string(), "time=1500ms");
    }

    #[test]
    fn machines_that_do_not_match_the_scenario_are_refused_before_any_run() {
        let file = std::env::temp_dir().join(format!("simvm-cli-one-{}.toml", std::process::id()));
        std::fs::write(&file, "until = \"1s\"\n[[machine]]\ncommand = \"true\"\n").unwrap();
        let file_s = file.to_string_lossy().into_owned();
        let parse = |extra: &[&str]| {
            let argv = [&["simvm", "run", file_s.as_str()][..], extra].concat();
            match Cli::parse_from(argv) {
                Cli {
                    command: Command::Run(args),
                } => args,
                _ => panic!("not a run"),
            }
        };
        let refused = scenario_of(&parse(&["--machines", "2"])).unwrap_err();
        assert_eq!(
            refused,
            "--machines 2 does not match the scenario, which has 1 machine"
        );
        assert_eq!(scenario_of(&parse(&[])).unwrap().machines.len(), 1);
        let _ = std::fs::remove_file(file);
    }

    #[test]
    fn a_command_must_name_a_program() {
        assert!(check_command(&strings(&["", "foo"])).is_err());
        assert!(check_command(&strings(&[" "])).is_err());
        assert_eq!(check_command(&strings(&["true", ""])), Ok(()));
    }

    #[test]
    fn options_given_with_from_replace_the_snapshots() {
        let dir = std::env::temp_dir().join(format!("simvm-cli-from-over-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let saved = strings(&["s.toml", "--until", "10.5s", "--mem=256M", "--strict"]);
        std::fs::write(dir.join(SNAPSHOT_ARGS), serde_json::to_vec(&saved).unwrap()).unwrap();
        let dir_s = dir.to_string_lossy().into_owned();
        for given in [
            &["--until", "20s", "--mem", "512M"][..],
            &["--until=20s", "--mem=512M"],
        ] {
            let mut argv = strings(&["simvm", "run", "--from", &dir_s]);
            argv.extend(strings(given));
            let Ok(Cli {
                command: Command::Run(args),
            }) = with_snapshot_args(argv.clone(), Cli::parse_from(&argv))
            else {
                panic!("{given:?} did not parse");
            };
            assert_eq!(args.until, Some(20_000_000_000), "{given:?}");
            assert_eq!(args.mem, 512 << 20, "{given:?}");
            assert!(
                args.strict,
                "{given:?}: a saved option not given again stays"
            );
            assert_eq!(
                args.scenario.as_deref(),
                Some(std::path::Path::new("s.toml"))
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn default_constants_match_the_flag_defaults() {
        let Cli {
            command: Command::Run(args),
        } = Cli::parse_from(["simvm", "run", "--", "true"])
        else {
            panic!("parsed as another command");
        };
        assert_eq!(args.mem, DEFAULT_MEM);
        assert_eq!(args.watchdog, DEFAULT_WATCHDOG);
        assert_eq!(reproduce_command(&args), "simvm run --seed 1 -- true");
        let Cli {
            command: Command::Run(args),
        } = Cli::parse_from([
            "simvm", "run", "--seed", "3", "--strict", "--mem", "256M", "--", "sh", "-c", "echo hi",
        ])
        else {
            panic!("parsed as another command");
        };
        assert_eq!(
            reproduce_command(&args),
            "simvm run --seed 3 --mem 256M --strict -- sh -c 'echo hi'"
        );
    }

    fn parse_run(args: &[&str]) -> RunArgs {
        let argv = ["simvm", "run"].iter().chain(args).copied();
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Run(args),
            }) => *args,
            Ok(_) => panic!("parsed as another command"),
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    /// The reproduce line carries every value exactly: parsing it again gives the same run.
    #[test]
    fn the_reproduce_line_repeats_odd_values_exactly() {
        let args = parse_run(&[
            "--until",
            "1500us",
            "--mem",
            "100000K",
            "--watchdog",
            "7.0005s",
            "--",
            "true",
        ]);
        assert_eq!(args.until, Some(1_500_000));
        assert_eq!(args.mem, 100_000 << 10);
        assert_eq!(args.watchdog, Duration::from_micros(7_000_500));
        let line = reproduce_command(&args);
        assert_eq!(
            line,
            "simvm run --seed 1 --mem 100000K --until 1500us --watchdog 7000500us -- true"
        );
        for values in [
            ["1.5ms", "0.5G", "1h"],
            ["1500500us", "4100K", "250ms"],
            ["18446744073709551615ns", "3G", "100000001ns"],
            ["7ns", "128M", "5s"],
            ["2m", "33558528", "0.100001s"],
        ] {
            let [until, mem, watchdog] = values;
            let args = parse_run(&[
                "--until",
                until,
                "--mem",
                mem,
                "--watchdog",
                watchdog,
                "--",
                "true",
            ]);
            let line = reproduce_command(&args);
            let words: Vec<&str> = line.split(' ').skip(2).collect();
            let again = parse_run(&words);
            assert_eq!(
                (again.until, again.mem, again.watchdog),
                (args.until, args.mem, args.watchdog),
                "{values:?}: {line}"
            );
            assert_eq!(reproduce_command(&again), line);
        }
    }

    #[test]
    fn bad_durations_and_sizes_are_refused_with_a_reason() {
        for (args, needle) in [
            (&["--until", "10"][..], "needs a unit: write \"10s\""),
            (&["--until", "0s"], "after 0s"),
            (&["--until", "1.5ns"], "finer than the smallest unit"),
            (&["--until", "99999999999h"], "too large"),
            (&["--watchdog", "soon"], "expected a duration"),
            (&["--watchdog", "0s"], "at least 100ms"),
            (&["--mem", "1000001"], "multiple of 4K"),
            (&["--mem", "lots"], "expected a size"),
            (&["--mem", "99999999999G"], "too large"),
        ] {
            let argv = ["simvm", "run"].iter().chain(args).copied();
            let err = Cli::try_parse_from(argv)
                .err()
                .expect("refused")
                .to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn disks_and_the_crash_policy_are_in_the_reproduce_line() {
        let dir = std::env::temp_dir();
        let disk = format!("64M:{}", dir.display());
        let Cli {
            command: Command::Run(args),
        } = Cli::parse_from([
            "simvm",
            "run",
            "--disk",
            "16M",
            "--disk",
            &disk,
            "--crash-policy",
            "torn",
            "--",
            "true",
        ])
        else {
            panic!("parsed as another command");
        };
        assert_eq!(args.disks.len(), 2);
        assert_eq!(args.crash_policy, Some(CrashPolicy::Torn));
        assert_eq!(
            reproduce_command(&args),
            format!(
                "simvm run --seed 1 --disk 16M --disk {} --crash-policy torn -- true",
                shell_quote(&disk)
            )
        );
        for bad in ["100K", "1048577", "64M:/no/such/dir", "lots"] {
            assert!(parse_disk(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_disk("64M:").err().as_deref(),
            Some("no directory after the colon: give one, or write --disk 64M for an empty filesystem")
        );
    }

    #[test]
    fn shell_quoting_round_trips_through_sh() {
        for text in ["plain", "with space", "it's", "", "$HOME;rm"] {
            let out = std::process::Command::new("sh")
                .args(["-c", &format!("printf %s {}", shell_quote(text))])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), text);
        }
    }
}
