//! `simvm run`: turn a scenario into a world, run it, stream the consoles, judge the outcome.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use simvm_devices::abi;
use simvm_devices::net::switch::{Cut, LinkConfig};
use simvm_devices::net::MachineId;
use simvm_devices::virtio::net::Offloads;
use simvm_vmm::boot_data::BootData;
use simvm_vmm::clock::{ExitCosts, DEFAULT_STALL_LIMIT, DEFAULT_WALL_BASE_NS};
use simvm_vmm::cmdline::kernel_cmdline;
use simvm_vmm::console::format_vtime;
use simvm_vmm::machine::{MachineConfig, Stop};
use simvm_vmm::network::{NetAction, NetworkConfig};
use simvm_vmm::seed::Seed;
use simvm_vmm::trace::first_divergence;
use simvm_vmm::world::{Ending, MachineOutcome, Outcome, World, WorldConfig};

use crate::image::GuestImage;
use crate::scenario::{Action, Expect, Heal, Scenario};

/// Everything `simvm run` was asked to do.
pub struct RunPlan {
    pub scenario: Scenario,
    pub seed: u64,
    /// The image of each machine, in scenario order.
    pub images: Vec<GuestImage>,
    /// Guest RAM of machines whose scenario entry does not say.
    pub default_mem: u64,
    pub strict: bool,
    pub trace: Option<PathBuf>,
    /// Fingerprint registers and memory after every step (`--trace-state`).
    pub trace_state: bool,
    /// The host CPU to pin the simulation thread to (`--cpu`).
    pub cpu: Option<usize>,
    pub pcap: Option<PathBuf>,
    pub watchdog: Duration,
    /// Overrides the scenario's `until`.
    pub until: Option<Duration>,
    pub cmdline_extra: String,
    /// The offloads each machine's virtio-net offers.
    pub offloads: Offloads,
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
    fn networked(&self) -> bool {
        self.scenario.machines.len() > 1
    }

    fn world_config(
        &self,
        fingerprints: bool,
        trace: Option<PathBuf>,
    ) -> Result<WorldConfig, RunError> {
        let seed = Seed(self.seed);
        let networked = self.networked();
        let count = self.scenario.machines.len();
        let hosts: Vec<(String, String)> = self
            .scenario
            .machines
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), format!("10.0.0.{}", i + 1)))
            .collect();
        let virtio = if networked {
            vec![(abi::VIRTIO_MMIO_BASE, abi::IRQ_VIRTIO_BASE)]
        } else {
            vec![]
        };
        let cmdline = kernel_cmdline(&virtio, &self.cmdline_extra);
        let mut initramfs_cache: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();

        let mut machines = Vec::with_capacity(count);
        for (i, (machine, image)) in self.scenario.machines.iter().zip(&self.images).enumerate() {
            let mac = networked.then(|| MachineId(i as u16).mac());
            let boot = BootData {
                name: machine.name.clone(),
                index: i + 1,
                machines: count,
                seed: self.seed,
                ip: networked.then(|| format!("10.0.0.{}/24", i + 1)),
                mac: mac.map(|m| m.to_string()),
                argv: machine.argv.clone(),
                environ: machine
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                hosts: if networked { hosts.clone() } else { vec![] },
            };
            let base = match initramfs_cache.get(&image.initramfs) {
                Some(bytes) => bytes.clone(),
                None => {
                    let bytes =
                        std::fs::read(&image.initramfs).map_err(|source| RunError::Initramfs {
                            path: image.initramfs.clone(),
                            source,
                        })?;
                    initramfs_cache.insert(image.initramfs.clone(), bytes.clone());
                    bytes
                }
            };
            machines.push(MachineConfig {
                name: machine.name.clone(),
                index: i,
                mem_size: machine.memory.unwrap_or(self.default_mem),
                kernel: image.kernel.clone(),
                initramfs: vec![base, boot.archive()],
                cmdline: cmdline.clone(),
                rng_seed: seed.key(&format!("machine/{}/kernel-rng", machine.name)),
                wall_base_ns: DEFAULT_WALL_BASE_NS,
                stall_limit: DEFAULT_STALL_LIMIT,
                costs: ExitCosts::default(),
                mac,
                offloads: self.offloads,
            });
        }
        let until = self
            .until
            .map(|d| d.as_nanos().min(u128::from(u64::MAX)) as u64);
        Ok(WorldConfig {
            seed,
            machines,
            until_ns: until.or(self.scenario.until_ns),
            watchdog: Some(self.watchdog),
            trace_json: trace,
            fingerprints,
            trace_state: self.trace_state,
            cpu: self.cpu,
            kvm_device: std::env::var_os("SIMVM_KVM_DEVICE")
                .map_or_else(|| PathBuf::from("/dev/kvm"), PathBuf::from),
            network: networked.then(|| network_config(&self.scenario)),
            pcap: self.pcap.clone(),
            awaited: self
                .scenario
                .machines
                .iter()
                .map(|m| m.expect.waits())
                .collect(),
        })
    }

    /// Runs once, printing the console and the summary; returns the process exit code.
    pub fn run(&self) -> Result<i32, RunError> {
        let world = World::new(self.world_config(false, self.trace.clone())?)?;
        let outcome = world.run(&mut |line| println!("{line}"))?;
        Ok(self.report(&outcome, None))
    }

    /// Runs twice and compares the digests.
    pub fn check_determinism(&self) -> Result<i32, RunError> {
        let first = World::new(self.world_config(true, self.trace.clone())?)?
            .run(&mut |line| println!("{line}"))?;
        eprintln!(
            "simvm: second run of seed {} to check determinism",
            self.seed
        );
        let second = World::new(self.world_config(true, None)?)?.run(&mut |_| {})?;
        let divergence = match (&first.fingerprints, &second.fingerprints) {
            (Some(a), Some(b)) => first_divergence(a, b),
            _ => None,
        };
        let same = first.digest == second.digest && divergence.is_none();
        let at = divergence.map_or("?".to_string(), |s| s.to_string());
        let verdict = if same {
            format!("deterministic: both runs have digest {}", first.digest)
        } else if first.digest == second.digest {
            format!(
                "NOT deterministic: the digests agree ({}) but the guests' state differs, first at step {at}",
                first.digest,
            )
        } else {
            format!(
                "NOT deterministic: digests {} and {} differ, first at step {at}",
                first.digest, second.digest,
            )
        };
        let code = self.report(&first, Some(&verdict));
        Ok(if same { code } else { 1 })
    }

    /// Whether each machine met its expectation, and the run as a whole.
    fn verdict(&self, outcome: &Outcome) -> bool {
        let machines_ok = outcome
            .machines
            .iter()
            .zip(&self.scenario.machines)
            .all(|(m, spec)| machine_met(m, spec.expect));
        machines_ok
            && outcome.ending != Ending::Idle
            && (!self.strict || outcome.watchdog_kicks.is_empty())
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
        let success = self.verdict(outcome);
        let machines: Vec<String> = outcome.machines.iter().map(machine_summary).collect();
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

/// The network of a scenario: per-link settings, and its timeline as switch actions.
fn network_config(scenario: &Scenario) -> NetworkConfig {
    let n = scenario.machines.len();
    let defaults = scenario.network.defaults.apply(LinkConfig::default());
    let mut links = Vec::new();
    for from in 0..n {
        for to in (0..n).filter(|&to| to != from) {
            let config = scenario
                .network
                .settings(from, to)
                .apply(LinkConfig::default());
            if config != defaults {
                links.push((from, to, config));
            }
        }
    }
    let mut timeline = Vec::new();
    for event in &scenario.timeline {
        match &event.action {
            Action::Partition(partition) => {
                let cut = if partition.one_way {
                    Cut::OneWay
                } else {
                    Cut::Both
                };
                for (i, (a, b)) in partition.cuts().into_iter().enumerate() {
                    let name = format!("{}/{i}", partition.name);
                    timeline.push((event.at_ns, NetAction::Partition { name, a, b, cut }));
                }
            }
            Action::Heal(Heal::All) => timeline.push((event.at_ns, NetAction::Heal { name: None })),
            Action::Heal(Heal::Named(name)) => timeline.push((
                event.at_ns,
                NetAction::Heal {
                    name: Some(name.clone()),
                },
            )),
            Action::Link(link) => {
                for (from, to) in link.links.links(n) {
                    let patch = link.settings;
                    timeline.push((event.at_ns, NetAction::PatchLink { from, to, patch }));
                }
            }
        }
    }
    NetworkConfig {
        defaults,
        links,
        timeline,
    }
}

fn machine_met(m: &MachineOutcome, expect: Expect) -> bool {
    match &m.stop {
        Some(Stop::PowerOff {
            exit_status: Some(s),
        }) => expect.is_met(Some(i32::from(*s))),
        // Still running when the run ended.
        None => expect.is_met(None),
        // Crashed, halted for good, rebooted, or powered off without reporting a status.
        Some(_) => expect == Expect::Any,
    }
}

fn machine_summary(m: &MachineOutcome) -> String {
    let state = match &m.stop {
        Some(Stop::PowerOff {
            exit_status: Some(s),
        }) => format!("exit({s})"),
        Some(Stop::PowerOff { exit_status: None }) => "poweroff".into(),
        Some(Stop::Restart { .. }) => "restart".into(),
        Some(Stop::HaltedForever) => "halted".into(),
        Some(Stop::Crashed(report)) => format!("crashed({})", report.kind),
        None => "running".into(),
    };
    let mut out = format!("{}={state}", m.name);
    if let Some(net) = &m.net {
        out.push_str(&format!(
            "[tx={} rx={} lost={} partitioned={} down={} full={}]",
            net.frames_sent,
            net.rx.delivered,
            net.tx.dropped_loss,
            net.tx.dropped_partition,
            net.tx.dropped_link_down,
            net.rx.dropped_queue_full
        ));
    }
    if m.device_errors > 0 {
        out.push_str(&format!("[device-errors={}]", m.device_errors));
    }
    out
}
