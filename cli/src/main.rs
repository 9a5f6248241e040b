//! The `simvm` command.

mod image;
mod run;
mod scenario;
mod units;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::image::GuestImage;
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
    Run(RunArgs),
    /// Build or locate guest images.
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build the guest image (cached by content: returns at once when nothing changed).
    Build {
        /// A recipe from guest-images/recipes (e.g. etcd) adding real Debian software.
        #[arg(long)]
        recipe: Option<String>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The run's master seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of machines (m1..mN).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    machines: u16,
    /// Guest RAM per machine, e.g. 128M.
    #[arg(long, default_value = "128M", value_parser = units::parse_size)]
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
    /// Real time a vCPU may run without any exit before the watchdog kicks it.
    #[arg(long, default_value = "5s", value_parser = units::parse_duration)]
    watchdog: Duration,
    /// Stop at this virtual time.
    #[arg(long, value_parser = units::parse_duration)]
    until: Option<Duration>,
    /// Extra guest kernel parameters (for example `loglevel=7` to see boot messages).
    #[arg(long, default_value = "")]
    kernel_args: String,
    /// The command each machine runs (default: /bin/sh with no input, which exits at once).
    #[arg(last = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Image(ImageCommand::Build { recipe }) => image::build(recipe.as_deref())
            .map(|image| {
                println!("kernel={}", image.kernel.display());
                println!("initramfs={}", image.initramfs.display());
                0
            })
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(message) => {
            eprintln!("simvm: error: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: RunArgs) -> Result<i32, String> {
    let image: GuestImage = match (args.kernel, args.initramfs) {
        (Some(kernel), Some(initramfs)) => image::given(kernel, initramfs),
        _ => image::build(args.recipe.as_deref()),
    }
    .map_err(|e| e.to_string())?;
    let reproduce = reproduce_command(args.seed, args.machines, &args.command);
    let plan = RunPlan {
        seed: args.seed,
        machines: usize::from(args.machines),
        mem: args.mem,
        image,
        strict: args.strict,
        trace: args.trace,
        pcap: args.pcap,
        watchdog: args.watchdog,
        until: args.until,
        cmdline_extra: args.kernel_args,
        command: args.command,
        reproduce,
    };
    let result = if args.check_determinism {
        plan.check_determinism()
    } else {
        plan.run()
    };
    result.map_err(|e| e.to_string())
}

/// The shortest `simvm run` line that repeats this run.
fn reproduce_command(seed: u64, machines: u16, command: &[String]) -> String {
    let mut line = format!("simvm run --seed {seed}");
    if machines != 1 {
        line.push_str(&format!(" --machines {machines}"));
    }
    if !command.is_empty() {
        line.push_str(" --");
        for arg in command {
            if arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:".contains(c))
            {
                line.push(' ');
                line.push_str(arg);
            } else {
                line.push_str(&format!(" '{}'", arg.replace('\'', r"'\''")));
            }
        }
    }
    line
}
