//! The world: every machine of a run, stepped one exit at a time in virtual-time order.

use std::path::PathBuf;
use std::time::Duration;

use kvm_ioctls::Kvm;

use crate::console::format_line;
use crate::crash::CrashReport;
use crate::error::{Error, Result};
use simvm_devices::net::switch::MachineCounters;

use crate::host_cpu;
use crate::host_tsc::{self, TscTrap};
use crate::machine::{ExitStats, Machine, MachineConfig, Status, Stop};
use crate::network::{NetEvent, Network, NetworkConfig};
use crate::seed::Seed;
use crate::trace::Event;
use crate::trace::Trace;
use crate::watchdog::Watchdog;

/// How a run is set up.
pub struct WorldConfig {
    pub seed: Seed,
    pub machines: Vec<MachineConfig>,
    /// Stop at this virtual time (ns) even if machines are still running.
    pub until_ns: Option<u64>,
    /// Kick a vCPU that has not exited for this long (real time).
    pub watchdog: Option<Duration>,
    pub trace_json: Option<PathBuf>,
    /// Keep per-event fingerprints (for `--check-determinism`).
    pub fingerprints: bool,
    /// Record each machine's register and memory fingerprint after every step (slow).
    pub trace_state: bool,
    /// Run the simulation thread on this host CPU only.
    pub cpu: Option<usize>,
    /// The KVM device, normally `/dev/kvm`.
    pub kvm_device: PathBuf,
    /// The network between the machines, if they have one.
    pub network: Option<NetworkConfig>,
    /// Write every frame the switch handles to this pcapng file.
    pub pcap: Option<PathBuf>,
    /// Which machines the run waits for (by index); the run is done when they have all
    /// stopped. Empty: all of them.
    pub awaited: Vec<bool>,
}

impl WorldConfig {
    /// A run of `machines` from `seed` with the defaults: no time limit, a 5 s watchdog, no
    /// network, no trace files, `/dev/kvm`, every machine awaited. Set the rest with struct
    /// update syntax.
    pub fn new(seed: Seed, machines: Vec<MachineConfig>) -> Self {
        Self {
            seed,
            machines,
            until_ns: None,
            watchdog: Some(Duration::from_secs(5)),
            trace_json: None,
            fingerprints: false,
            trace_state: false,
            cpu: None,
            kvm_device: PathBuf::from("/dev/kvm"),
            network: None,
            pcap: None,
            awaited: Vec::new(),
        }
    }
}

/// `Kvm::new_with_path` wants a C string.
fn kvm_path(path: &std::path::Path) -> Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Error::KvmOpen {
        path: path.to_owned(),
        source: vmm_sys_util::errno::Error::new(libc::EINVAL),
    })
}

/// How one machine ended.
#[derive(Debug)]
pub struct MachineOutcome {
    pub name: String,
    /// `None` if the machine was still running when the run ended.
    pub stop: Option<Stop>,
    pub exit_status: Option<u8>,
    pub ready_at_ns: Option<u64>,
    pub vtime_ns: u64,
    pub stats: ExitStats,
    /// Real time from the start of the run to READY.
    pub ready_wall: Option<Duration>,
    /// Network counters, when the machine has a network.
    pub net: Option<MachineCounters>,
    /// Errors its devices reported (malformed virtio chains and the like).
    pub device_errors: u64,
}

/// Why the run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Every machine the run waits for stopped.
    Done,
    /// The `until` time was reached.
    Until,
    /// Every machine that is still up is halted with nothing pending: the system under test
    /// is deadlocked or idle forever.
    Idle,
}

/// The result of a run.
#[derive(Debug)]
pub struct Outcome {
    pub seed: Seed,
    pub steps: u64,
    pub events: u64,
    pub vtime_ns: u64,
    pub wall: Duration,
    pub digest: String,
    pub ending: Ending,
    pub machines: Vec<MachineOutcome>,
    /// Watchdog kicks: each made the run nondeterministic.
    pub watchdog_kicks: Vec<String>,
    pub fingerprints: Option<Vec<(u64, u64)>>,
}

impl Outcome {
    /// The first crash report, if a machine crashed.
    pub fn crash(&self) -> Option<&CrashReport> {
        self.machines.iter().find_map(|m| match &m.stop {
            Some(Stop::Crashed(report)) => Some(report.as_ref()),
            _ => None,
        })
    }
}

enum Slot {
    Runnable,
    Halted(Option<u64>),
    Stopped(Stop),
}

/// A run in progress.
pub struct World {
    seed: Seed,
    machines: Vec<Machine>,
    slots: Vec<Slot>,
    ready_wall: Vec<Option<Duration>>,
    trace: Trace,
    step: u64,
    until_ns: Option<u64>,
    trace_state: bool,
    cpu: Option<usize>,
    watchdog: Option<Watchdog>,
    watchdog_kicks: Vec<String>,
    network: Option<Network>,
    awaited: Vec<bool>,
}

impl World {
    /// Opens KVM and builds every machine.
    pub fn new(config: WorldConfig) -> Result<Self> {
        let kvm =
            Kvm::new_with_path(kvm_path(&config.kvm_device)?).map_err(|source| Error::KvmOpen {
                path: config.kvm_device.clone(),
                source,
            })?;
        let mut names: Vec<String> = config.machines.iter().map(|m| m.name.clone()).collect();
        // Network timeline events belong to no machine: they are traced as "net".
        names.push("net".to_string());
        let network = config
            .network
            .as_ref()
            .map(|net| {
                Network::new(
                    config.seed,
                    config.machines.len(),
                    net,
                    config.pcap.as_deref(),
                )
            })
            .transpose()?;
        let mut trace = Trace::new(names);
        if let Some(path) = &config.trace_json {
            trace = trace.with_json(path)?;
        }
        if config.fingerprints {
            trace = trace.with_fingerprints();
        }
        let machines = config
            .machines
            .into_iter()
            .map(|m| Machine::new(&kvm, m))
            .collect::<Result<Vec<_>>>()?;
        let watchdog = config.watchdog.map(Watchdog::start).transpose()?;
        let awaited = if config.awaited.is_empty() {
            vec![true; machines.len()]
        } else {
            config.awaited
        };
        Ok(Self {
            seed: config.seed,
            slots: machines.iter().map(|_| Slot::Runnable).collect(),
            ready_wall: vec![None; machines.len()],
            machines,
            trace,
            step: 0,
            until_ns: config.until_ns,
            trace_state: config.trace_state,
            cpu: config.cpu,
            watchdog,
            watchdog_kicks: Vec::new(),
            network,
            awaited,
        })
    }

    /// Runs to the end, passing every annotated console line to `print`. `print` runs outside
    /// the TSC trap (see `host_tsc`), so it may do anything, including reading the clock.
    pub fn run(mut self, print: &mut dyn FnMut(&str)) -> Result<Outcome> {
        if let Some(cpu) = self.cpu {
            host_cpu::pin_current_thread(cpu)?;
        }
        // Instant would read the TSC through the vDSO, which faults while the trap is armed.
        let tsc_trap = TscTrap::arm();
        let print = &mut |line: &str| tsc_trap.lifted(|| print(line));
        let started = host_tsc::monotonic();
        let ending = loop {
            if self.done() {
                break Ending::Done;
            }
            let Some((index, at)) = self.next_machine() else {
                let all_stopped = self.slots.iter().all(|s| matches!(s, Slot::Stopped(_)));
                break if all_stopped {
                    Ending::Done
                } else {
                    Ending::Idle
                };
            };
            if self.until_ns.is_some_and(|until| at > until) {
                break Ending::Until;
            }
            self.step += 1;
            self.apply_network_timeline(at, print)?;
            if let Slot::Halted(_) = self.slots[index] {
                self.machines[index].wake(self.step, at, &mut self.trace)?;
            }
            self.deliver_frames(index)?;
            let machine = &mut self.machines[index];
            let kicks_before = machine.stats().watchdog_kicks;
            let status = machine.step(self.step, &mut self.trace, self.watchdog.as_ref())?;
            if self.trace_state {
                let state = machine.state_fingerprint()?;
                self.trace
                    .record_state(self.step, index, machine.now(), state)?;
            }
            if machine.stats().watchdog_kicks > kicks_before {
                let message = format!(
                    "NONDETERMINISTIC: the watchdog kicked machine {} at step {} (virtual time {}), rip {:#x}: \
                     the guest ran without any VM exit for longer than the watchdog limit",
                    machine.name(),
                    self.step,
                    crate::console::format_vtime(machine.now()),
                    machine.rip().unwrap_or(0),
                );
                print(&message);
                self.watchdog_kicks.push(message);
            }
            for (vtime, line) in machine.take_console_lines() {
                print(&format_line(self.step, machine.name(), vtime, &line));
            }
            if self.ready_wall[index].is_none() && machine.ready_at().is_some() {
                self.ready_wall[index] = Some(host_tsc::monotonic().saturating_sub(started));
            }
            self.send_frames(index)?;
            self.slots[index] = match status {
                Status::Running => Slot::Runnable,
                Status::Halted { wake_at } => Slot::Halted(wake_at),
                Status::Stopped(stop) => Slot::Stopped(stop),
            };
        };
        let wall = host_tsc::monotonic().saturating_sub(started);
        if let Some(network) = &mut self.network {
            network.finish()?;
        }
        let digest = self.trace.digest();
        let events = self.trace.events();
        let fingerprints = self.trace.finish()?;
        let vtime_ns = self.machines.iter().map(Machine::now).max().unwrap_or(0);
        let network = self.network;
        let machines = self
            .machines
            .iter()
            .enumerate()
            .zip(self.slots)
            .zip(self.ready_wall)
            .map(|(((i, m), slot), ready_wall)| MachineOutcome {
                name: m.name().to_string(),
                stop: match slot {
                    Slot::Stopped(stop) => Some(stop),
                    _ => None,
                },
                exit_status: m.exit_status(),
                ready_at_ns: m.ready_at(),
                vtime_ns: m.now(),
                stats: *m.stats(),
                ready_wall,
                net: network.as_ref().and_then(|n| n.counters(i)),
                device_errors: m.device_errors(),
            })
            .collect();
        Ok(Outcome {
            seed: self.seed,
            steps: self.step,
            events,
            vtime_ns,
            wall,
            digest,
            ending,
            machines,
            watchdog_kicks: self.watchdog_kicks,
            fingerprints,
        })
    }

    /// Whether every awaited machine has stopped. A run that awaits no machine runs until
    /// `until` or until it is idle.
    fn done(&self) -> bool {
        self.awaited.iter().any(|&a| a)
            && self
                .slots
                .iter()
                .zip(&self.awaited)
                .all(|(slot, awaited)| !awaited || matches!(slot, Slot::Stopped(_)))
    }

    /// The machine to step next and the virtual time it steps at: the lowest time wins, ties go
    /// to the lowest index. Halted machines count at their wake-up time (timer or the next frame
    /// in flight to them); machines halted with nothing pending and stopped machines do not.
    fn next_machine(&self) -> Option<(usize, u64)> {
        self.slots
            .iter()
            .zip(&self.machines)
            .enumerate()
            .filter_map(|(i, (slot, m))| {
                let arrival = || self.network.as_ref().and_then(|n| n.next_arrival(i));
                let wake = match slot {
                    Slot::Runnable => return Some((i, m.now())),
                    Slot::Halted(timer) => match (*timer, arrival()) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    },
                    Slot::Stopped(_) => None,
                };
                wake.map(|t| (i, t.max(m.now())))
            })
            .min_by_key(|&(i, t)| (t, i))
    }

    /// Applies network timeline actions due by `now` (the lowest virtual time of the world).
    fn apply_network_timeline(&mut self, now: u64, print: &mut dyn FnMut(&str)) -> Result<()> {
        let Some(network) = &mut self.network else {
            return Ok(());
        };
        let net_id = self.machines.len();
        for event in network.apply_timeline(now)? {
            if let NetEvent::Applied(action) = event {
                print(&format_line(self.step, "net", now, &action));
                self.trace
                    .record(self.step, net_id, now, &Event::Network { action })?;
            }
        }
        Ok(())
    }

    /// Hands `index` the frames that have arrived for it by its current time.
    fn deliver_frames(&mut self, index: usize) -> Result<()> {
        let Some(network) = &mut self.network else {
            return Ok(());
        };
        let machine = &mut self.machines[index];
        for delivery in network.take_due(index, machine.now()) {
            let accepted = machine.deliver_frame(&delivery.frame).is_ok();
            network.delivered(&delivery, accepted)?;
            let event = Event::FrameDelivered {
                from: delivery.from.0,
                len: delivery.frame.data.len() as u32,
                fingerprint: crate::network::fingerprint(&delivery.frame.data),
                accepted,
            };
            self.trace.record(self.step, index, machine.now(), &event)?;
        }
        Ok(())
    }

    /// Switches the frames `index` sent during its last step.
    fn send_frames(&mut self, index: usize) -> Result<()> {
        let Some(network) = &mut self.network else {
            return Ok(());
        };
        let machine = &mut self.machines[index];
        let now = machine.now();
        for frame in machine.take_outbox() {
            for event in network.send(index, frame, now)? {
                let event = match event {
                    NetEvent::Sent {
                        len, fingerprint, ..
                    } => Event::FrameSent {
                        len: len as u32,
                        fingerprint,
                    },
                    NetEvent::Dropped { to, reason, .. } => Event::FrameDropped {
                        to: to as u16,
                        reason: reason.to_string(),
                    },
                    NetEvent::Applied(action) => Event::Network { action },
                };
                self.trace.record(self.step, index, now, &event)?;
            }
        }
        Ok(())
    }
}
