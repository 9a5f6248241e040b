//! `simvm run`: boot the machines, stream their consoles, print the summary.

use std::path::PathBuf;
use std::time::Duration;

use simvm_devices::abi;
use simvm_devices::net::MachineId;
use simvm_vmm::boot_data::BootData;
use simvm_vmm::clock::{ExitCosts, DEFAULT_STALL_LIMIT, DEFAULT_WALL_BASE_NS};
use simvm_vmm::cmdline::kernel_cmdline;
use simvm_vmm::console::format_vtime;
use simvm_vmm::machine::{MachineConfig, Stop};
use simvm_vmm::network::NetworkConfig;
use simvm_vmm::seed::Seed;
use simvm_vmm::trace::first_divergence;
use simvm_vmm::world::{Ending, Outcome, World, WorldConfig};

use crate::image::GuestImage;

/// Everything `simvm run` was asked to do.
pub struct RunPlan {
    pub seed: u64,
    pub machines: usize,
    pub mem: u64,
    pub image: GuestImage,
    pub strict: bool,
    pub trace: Option<PathBuf>,
    pub pcap: Option<PathBuf>,
    pub watchdog: Duration,
    pub until: Option<Duration>,
    pub cmdline_extra: String,
    pub command: Vec<String>,
    /// The command line that reproduces this run, for failure reports.
    pub reproduce: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot read the initramfs {}: {source}", path.display())]
    Initramfs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Vmm(#[from] simvm_vmm::Error),
}

impl RunPlan {
    fn world_config(
        &self,
        base_initramfs: &[u8],
        fingerprints: bool,
        trace: Option<PathBuf>,
    ) -> WorldConfig {
        let seed = Seed(self.seed);
        let networked = self.machines > 1;
        let hosts: Vec<(String, String)> = (1..=self.machines)
            .map(|index| (format!("m{index}"), format!("10.0.0.{index}")))
            .collect();
        let virtio = if networked {
            vec![(abi::VIRTIO_MMIO_BASE, abi::IRQ_VIRTIO_BASE)]
        } else {
            vec![]
        };
        let machines = (1..=self.machines)
            .map(|index| {
                let name = format!("m{index}");
                let mac = networked.then(|| MachineId(index as u16 - 1).mac());
                let boot = BootData {
                    name: name.clone(),
                    index,
                    machines: self.machines,
                    seed: self.seed,
                    ip: networked.then(|| format!("10.0.0.{index}/24")),
                    mac: mac.map(|m| m.to_string()),
                    argv: self.command.clone(),
                    hosts: if networked { hosts.clone() } else { vec![] },
                    ..Default::default()
                };
                MachineConfig {
                    index: index - 1,
                    mem_size: self.mem,
                    kernel: self.image.kernel.clone(),
                    initramfs: vec![base_initramfs.to_vec(), boot.archive()],
                    cmdline: kernel_cmdline(&virtio, &self.cmdline_extra),
                    rng_seed: seed.key(&format!("machine/{name}/kernel-rng")),
                    wall_base_ns: DEFAULT_WALL_BASE_NS,
                    stall_limit: DEFAULT_STALL_LIMIT,
                    costs: ExitCosts::default(),
                    mac,
                    name,
                }
            })
            .collect();
        WorldConfig {
            seed,
            machines,
            until_ns: self
                .until
                .map(|d| d.as_nanos().min(u128::from(u64::MAX)) as u64),
            watchdog: Some(self.watchdog),
            trace_json: trace,
            fingerprints,
            kvm_device: std::env::var_os("SIMVM_KVM_DEVICE")
                .map_or_else(|| PathBuf::from("/dev/kvm"), PathBuf::from),
            network: networked.then(NetworkConfig::default),
            pcap: self.pcap.clone(),
        }
    }

    fn base_initramfs(&self) -> Result<Vec<u8>, RunError> {
        std::fs::read(&self.image.initramfs).map_err(|source| RunError::Initramfs {
            path: self.image.initramfs.clone(),
            source,
        })
    }

    /// Runs once, printing the console and the summary; returns the process exit code.
    pub fn run(&self) -> Result<i32, RunError> {
        let initramfs = self.base_initramfs()?;
        let world = World::new(self.world_config(&initramfs, false, self.trace.clone()))?;
        let outcome = world.run(&mut |line| println!("{line}"))?;
        Ok(self.report(&outcome, None))
    }

    /// Runs twice and compares the digests.
    pub fn check_determinism(&self) -> Result<i32, RunError> {
        let initramfs = self.base_initramfs()?;
        let first = World::new(self.world_config(&initramfs, true, self.trace.clone()))?
            .run(&mut |line| println!("{line}"))?;
        eprintln!(
            "simvm: second run of seed {} to check determinism",
            self.seed
        );
        let second = World::new(self.world_config(&initramfs, true, None))?.run(&mut |_| {})?;
        let divergence = match (&first.fingerprints, &second.fingerprints) {
            (Some(a), Some(b)) => first_divergence(a, b),
            _ => None,
        };
        let same = first.digest == second.digest;
        let verdict = if same {
            format!("deterministic: both runs have digest {}", first.digest)
        } else {
            format!(
                "NOT deterministic: digests {} and {} differ, first at step {}",
                first.digest,
                second.digest,
                divergence.map_or("?".to_string(), |s| s.to_string())
            )
        };
        let code = self.report(&first, Some(&verdict));
        Ok(if same { code } else { 1 })
    }

    fn report(&self, outcome: &Outcome, extra: Option<&str>) -> i32 {
        if let Some(report) = outcome.crash() {
            eprintln!("{report}");
        }
        if outcome.ending == Ending::Idle {
            eprintln!(
                "simvm: every running machine is halted with nothing pending (at virtual time {}): \
                 the system under test is idle or deadlocked",
                format_vtime(outcome.vtime_ns)
            );
        }
        let success = outcome.success(self.strict);
        let machines: Vec<String> = outcome
            .machines
            .iter()
            .map(|m| {
                format!(
                    "{}={}",
                    m.name,
                    machine_result(m.stop.as_ref(), m.exit_status)
                )
            })
            .collect();
        println!(
            "seed={} steps={} vtime={} wall={:.2}s digest={} result={} {}{}",
            outcome.seed.0,
            outcome.steps,
            format_vtime(outcome.vtime_ns),
            outcome.wall.as_secs_f64(),
            outcome.digest,
            if success { "ok" } else { "FAIL" },
            machines.join(" "),
            if outcome.watchdog_kicks.is_empty() {
                String::new()
            } else {
                format!(
                    " nondeterministic({} watchdog kicks)",
                    outcome.watchdog_kicks.len()
                )
            }
        );
        if let Some(extra) = extra {
            println!("{extra}");
        }
        if !success {
            eprintln!("reproduce: {}", self.reproduce);
        }
        match (success, outcome.machines.as_slice()) {
            (true, _) => 0,
            // One machine: its command's status is simvm's.
            (false, [only]) => match only.exit_status {
                Some(status) if status != 0 => i32::from(status),
                _ => 1,
            },
            (false, _) => 1,
        }
    }
}

fn machine_result(stop: Option<&Stop>, exit_status: Option<u8>) -> String {
    match stop {
        Some(Stop::PowerOff {
            exit_status: Some(s),
        }) => format!("exit({s})"),
        Some(Stop::PowerOff { exit_status: None }) => "poweroff".into(),
        Some(Stop::Restart { .. }) => "restart".into(),
        Some(Stop::HaltedForever) => "halted".into(),
        Some(Stop::Crashed(report)) => format!("crashed({})", report.kind),
        None => match exit_status {
            Some(s) => format!("running(exit {s})"),
            None => "running".into(),
        },
    }
}
