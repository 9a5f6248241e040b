//! The world: every machine of a run, stepped one exit at a time in virtual-time order.
//!
//! The world owns what outlives a machine: the network, the disks, the timeline of faults and
//! the trace. A killed machine's next incarnation boots on the same disks, with the same name
//! and addresses.
//!
//! Here: the machines and the loop that steps them. The timeline's actions on machines and
//! disks are in `actions`, frames and disk requests on their way in `traffic`, saving and
//! continuing a whole world in `snapshot`.

// Values from guests (exit data, frames, requests) must not be truncated silently.
#![warn(clippy::cast_possible_truncation)]

mod actions;
mod snapshot;
mod traffic;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kvm_ioctls::Kvm;
use simvm_devices::disk::{CrashPolicy, Fault};
use simvm_devices::net::switch::MachineCounters;

use crate::assertions::Assertions;
use crate::console::format_line;
use crate::crash::CrashReport;
use crate::disks::{DiskSetup, WorldDisk};
use crate::error::{Error, Result};
use crate::host_cpu;
use crate::host_tsc::{self, TscTrap};
use crate::machine::{disk_name, ExitStats, Machine, MachineConfig, Status, Stop};
use crate::network::{Network, NetworkConfig};
use crate::profile::lookahead::{ParallelBound, ParallelEstimate};
use crate::profile::{KernelProbeCache, MachineProfile};
use crate::seed::Seed;
use crate::skew::{ClockChange, GuestClock};
use crate::template::{TemplateUse, Templates};
use crate::trace::{Event, Trace};
use crate::watchdog::Watchdog;
use snapshot::LoadedSnapshot;

pub use snapshot::{check_snapshot, SnapshotCondition, SnapshotInfo, SnapshotRequest};

/// Something the world does to a machine or a disk at a virtual time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineAction {
    /// Cut the power: the VM is discarded and its disks keep what `policy` (or the run's
    /// crash policy) says of their unflushed writes.
    Kill {
        machine: usize,
        policy: Option<CrashPolicy>,
    },
    /// Boot a new incarnation on the same disks (a running machine is killed first).
    Restart {
        machine: usize,
    },
    /// Inject a fault into one disk of a machine.
    DiskFault {
        machine: usize,
        disk: usize,
        fault: Fault,
    },
    /// Stop stepping the machine until it resumes (SIGSTOP of a VM): frames and disk
    /// completions wait for it, and its clock shows the gap.
    Pause {
        machine: usize,
    },
    Resume {
        machine: usize,
    },
    /// Change the machine's clocks (and those of its later incarnations).
    Clock {
        machine: usize,
        change: ClockChange,
    },
}

/// How a run is set up.
pub struct WorldConfig {
    pub seed: Seed,
    pub machines: Vec<MachineConfig>,
    /// The disks of each machine (by machine index; missing entries: no disks).
    pub disks: Vec<Vec<DiskSetup>>,
    /// Kills, restarts and disk faults at virtual times (ns), in time order.
    pub timeline: Vec<(u64, MachineAction)>,
    /// What a crash keeps of unflushed writes when a kill does not say.
    pub crash_policy: CrashPolicy,
    /// Write each disk's final contents to `DIR/MACHINE-DISK.img`.
    pub keep_disks: Option<PathBuf>,
    /// Stop at this virtual time (ns) even if machines are still running.
    pub until_ns: Option<u64>,
    /// Set (by a signal handler, say) to stop the run at its next virtual instant: it ends as
    /// [`Ending::Interrupted`], with everything written as at any other end.
    pub stop: Option<&'static AtomicBool>,
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
    /// Start machines from templates cached in this directory (built there on first use);
    /// `None` boots every machine (machines whose config names a template still use it).
    pub templates: Option<PathBuf>,
    /// Save the world when a condition holds.
    pub snapshot: Option<SnapshotRequest>,
    /// Continue the world saved in this snapshot directory instead of powering on.
    pub from: Option<PathBuf>,
    /// Profile the run, sampling the guests this often (real time).
    pub sample_every: Option<Duration>,
    /// Each power-on of a machine comes a seeded delay within `[0, this]` (ns) after it is
    /// due, so that machines started together do not run in lockstep.
    pub start_spread_ns: u64,
    /// Read a workload's history from this (machine, disk) at the end ([`RecordedHistory`]).
    pub history: Option<(usize, usize)>,
}

impl WorldConfig {
    /// A run of `machines` from `seed` with the defaults: no disks, no faults, no time limit,
    /// a 5 s watchdog, no network, no trace files, `/dev/kvm`, every machine awaited. Set the
    /// rest with struct update syntax.
    pub fn new(seed: Seed, machines: Vec<MachineConfig>) -> Self {
        Self {
            seed,
            machines,
            disks: Vec::new(),
            timeline: Vec::new(),
            crash_policy: CrashPolicy::default(),
            keep_disks: None,
            until_ns: None,
            stop: None,
            watchdog: Some(Duration::from_secs(5)),
            trace_json: None,
            fingerprints: false,
            trace_state: false,
            cpu: None,
            kvm_device: PathBuf::from("/dev/kvm"),
            network: None,
            pcap: None,
            awaited: Vec::new(),
            templates: None,
            snapshot: None,
            from: None,
            sample_every: None,
            start_spread_ns: 0,
            history: None,
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
    /// How its last incarnation stopped; `None` if it was still running when the run ended.
    pub stop: Option<Stop>,
    pub exit_status: Option<u8>,
    pub ready_at_ns: Option<u64>,
    pub vtime_ns: u64,
    /// Summed over every incarnation.
    pub stats: ExitStats,
    /// Real time from the start of the run to the first READY.
    pub ready_wall: Option<Duration>,
    /// Network counters, when the machine has a network.
    pub net: Option<MachineCounters>,
    /// Errors its devices reported (malformed virtio chains and the like), every incarnation.
    pub device_errors: u64,
    /// How many times it powered on.
    pub incarnations: u32,
    /// What each crash did to each disk, in order: `vda: crash policy=...`.
    pub disk_crashes: Vec<String>,
    /// Frames its NIC sent into a world without a network (dropped, as by an unplugged cable).
    pub frames_unplugged: u64,
    /// Exits by reason and samples, every incarnation (`--profile`).
    pub profile: Option<MachineProfile>,
    /// When its last incarnation's programs last made a system call (the first halt after
    /// it), if they made any.
    pub last_syscall_by: Option<u64>,
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
    /// [`WorldConfig::stop`] was set.
    Interrupted,
}

/// The result of a run.
#[derive(Debug)]
pub struct Outcome {
    pub seed: Seed,
    pub steps: u64,
    pub events: u64,
    /// Where virtual time ended: `until` for a run cut there, the last step's time for one
    /// stopped by [`WorldConfig::stop`] (`until` set to it replays the run to there), else
    /// the last event's time.
    pub vtime_ns: u64,
    pub wall: Duration,
    pub digest: String,
    /// Hash of the CPU model the guests saw: digests of runs on different templates are not
    /// comparable.
    pub cpu_template: String,
    pub ending: Ending,
    pub machines: Vec<MachineOutcome>,
    /// Watchdog kicks: each made the run nondeterministic.
    pub watchdog_kicks: Vec<String>,
    pub fingerprints: Option<Vec<(u64, u64)>>,
    /// The templates machines started from, or could not (none with `--cold`).
    pub templates: Vec<TemplateUse>,
    /// The snapshot this run took, if it was asked to and the condition held.
    pub snapshot: Option<SnapshotInfo>,
    /// The snapshot this run continued from.
    pub resumed_from: Option<SnapshotInfo>,
    /// Profiling samples that found simvm's own code running (`--profile`).
    pub simvm_samples: u64,
    /// What conservative parallel stepping could make of the run (`--profile`).
    pub parallel: Option<ParallelEstimate>,
    /// What the guests asserted (`simvm-assert`, docs/guest-abi.md "Assertions").
    pub assertions: Assertions,
    /// The workload history read back at the end (`WorldConfig::history`).
    pub history: Option<RecordedHistory>,
    /// What the checker made of it (filled in by [`crate::simulation::Simulation`]).
    pub verdict: Option<crate::history::HistoryVerdict>,
}

/// A history as a workload client left it on its disk: the text up to the first zero byte,
/// and the clock its times were read from.
#[derive(Clone, Debug)]
pub struct RecordedHistory {
    pub text: Vec<u8>,
    /// The client's clock (its last incarnation's), `None` if it never ran.
    pub clock: Option<GuestClock>,
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

/// One machine of the world across its incarnations.
struct Node {
    /// The configuration of its next incarnation.
    config: MachineConfig,
    /// The running incarnation; `None` once it is killed or powered off.
    machine: Option<Machine>,
    slot: Slot,
    disks: Vec<WorldDisk>,
    /// Counters of earlier incarnations.
    past_stats: ExitStats,
    past_device_errors: u64,
    /// What the last incarnation left: its clock and its command's status.
    last_now: u64,
    last_exit_status: Option<u8>,
    ready_at: Option<u64>,
    ready_wall: Option<Duration>,
    frames_unplugged: u64,
    /// Profiles of earlier incarnations, when profiling.
    profile: Option<MachineProfile>,
    /// The last incarnation's clock, to read back times it recorded after it stopped.
    last_clock: Option<GuestClock>,
    /// Paused by the timeline since this virtual time: not stepped until it resumes.
    paused: Option<u64>,
    /// The last incarnation's [`Machine::last_syscall_by`].
    last_syscall_by: Option<u64>,
}

impl Node {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn incarnation(&self) -> u32 {
        self.config.incarnation
    }

    /// The console's name for it: `m2`, then `m2#2` after its first restart.
    fn label(&self) -> String {
        match self.incarnation() {
            0 | 1 => self.config.name.clone(),
            n => format!("{}#{n}", self.config.name),
        }
    }

    fn now(&self) -> u64 {
        self.machine.as_ref().map_or(self.last_now, Machine::now)
    }

    /// When its disks next complete a request of the running incarnation, if ever.
    fn next_disk_completion(&self) -> Option<u64> {
        self.disks
            .iter()
            .filter_map(WorldDisk::next_completion)
            .min()
    }

    /// Retires the running incarnation with `stop`, keeping its counters.
    fn retire(&mut self, stop: Stop) {
        self.fold_machine();
        self.slot = Slot::Stopped(stop);
    }

    /// Drops the running incarnation, if any, adding its counters, clock and status to what
    /// the node keeps.
    /// What disk `disk` holds up to its first zero byte, and the clock to read its times with.
    fn recorded_history(&self, disk: usize) -> RecordedHistory {
        RecordedHistory {
            text: (self.disks.get(disk)).map_or_else(Vec::new, WorldDisk::text),
            clock: (self.machine.as_ref().map(Machine::guest_clock)).or(self.last_clock),
        }
    }

    fn fold_machine(&mut self) {
        if let Some(mut machine) = self.machine.take() {
            if let Some(profile) = machine.take_profile() {
                match &mut self.profile {
                    Some(past) => past.add(&profile),
                    None => self.profile = Some(profile),
                }
            }
            self.past_stats.add(machine.stats());
            self.past_device_errors += machine.device_errors();
            self.last_now = machine.now();
            self.last_exit_status = machine.exit_status();
            self.last_clock = Some(machine.guest_clock());
            self.last_syscall_by = machine.last_syscall_by();
        }
    }
}

/// A run in progress.
pub struct World {
    seed: Seed,
    kvm: Kvm,
    nodes: Vec<Node>,
    trace: Trace,
    step: u64,
    until_ns: Option<u64>,
    stop: Option<&'static AtomicBool>,
    /// The virtual time of the last step taken.
    last_at: u64,
    trace_state: bool,
    cpu: Option<usize>,
    watchdog: Option<Watchdog>,
    watchdog_kicks: Vec<String>,
    network: Option<Network>,
    awaited: Vec<bool>,
    timeline: Vec<(u64, MachineAction)>,
    next_action: usize,
    crash_policy: CrashPolicy,
    keep_disks: Option<PathBuf>,
    cpu_template: String,
    templates: Vec<TemplateUse>,
    /// What the world is made of, for snapshots (empty unless one is taken or continued).
    world_key: String,
    snapshot: Option<SnapshotRequest>,
    snapshot_taken: Option<SnapshotInfo>,
    resumed_from: Option<SnapshotInfo>,
    /// Which machines have printed the console condition's text.
    printed: Vec<bool>,
    /// When collecting a profile (`--profile`): what sampling needs from each guest kernel.
    profiling: Option<KernelProbeCache>,
    /// The run's steps replayed onto more threads, when profiling.
    parallel: Option<ParallelBound>,
    start_spread_ns: u64,
    /// The guests' assertion lines so far.
    assertions: Assertions,
    history: Option<(usize, usize)>,
}

/// The trace ids of the two non-machine sources, after the machines.
pub(crate) const NET_SOURCE: &str = "net";
pub(crate) const FAULT_SOURCE: &str = "fault";

impl World {
    /// Opens KVM, the disks and the network, and powers on every machine.
    pub fn new(config: WorldConfig) -> Result<Self> {
        let kvm =
            Kvm::new_with_path(kvm_path(&config.kvm_device)?).map_err(|source| Error::KvmOpen {
                path: config.kvm_device.clone(),
                source,
            })?;
        let mut names: Vec<String> = config.machines.iter().map(|m| m.name.clone()).collect();
        let network = config
            .network
            .as_ref()
            .map(|net| Network::new(config.seed, &names, net, config.pcap.as_deref()))
            .transpose()?;
        // Timeline events that belong to no machine are traced as "net" and "fault".
        names.push(NET_SOURCE.to_string());
        names.push(FAULT_SOURCE.to_string());
        check_timeline(&config.timeline, &config.machines, &config.disks)?;
        let mut trace = Trace::new(names);
        if let Some(path) = &config.trace_json {
            trace = trace.with_json(path)?;
        }
        if config.fingerprints {
            trace = trace.with_fingerprints();
        }
        // Disks first: a machine's shape, and so its template and the world's key, includes
        // their sizes.
        let mut shapes = Vec::with_capacity(config.machines.len());
        for (i, mut machine_config) in config.machines.into_iter().enumerate() {
            let setups = config.disks.get(i).map_or(&[][..], Vec::as_slice);
            let disks = setups
                .iter()
                .enumerate()
                .map(|(d, setup)| {
                    WorldDisk::open(config.seed, &machine_config.name, disk_name(d), setup)
                })
                .collect::<Result<Vec<_>>>()?;
            machine_config.disks = disks.iter().map(WorldDisk::sectors).collect();
            machine_config.incarnation = machine_config.incarnation.max(1);
            shapes.push((machine_config, disks));
        }
        check_fault_ranges(&config.timeline, &shapes)?;
        let awaited = if config.awaited.is_empty() {
            vec![true; shapes.len()]
        } else {
            config.awaited
        };
        let mut templates = Templates::default();
        let world_key = if config.snapshot.is_some() || config.from.is_some() {
            world_key(
                &kvm,
                &mut templates,
                &shapes,
                config.network.as_ref(),
                &awaited,
                config.crash_policy,
            )?
        } else {
            String::new()
        };
        let resume = config
            .from
            .as_deref()
            .map(|dir| LoadedSnapshot::load(dir, &world_key))
            .transpose()?;
        if let Some(resume) = &resume {
            let network = config.network.as_ref().map_or(&[][..], |n| &n.timeline);
            resume.check_past(&config.timeline, network)?;
        }
        let mut nodes = Vec::with_capacity(shapes.len());
        for (i, (mut machine_config, disks)) in shapes.into_iter().enumerate() {
            if let Some(cache) = &config.templates {
                machine_config.template = templates.for_machine(&kvm, &machine_config, cache)?;
            }
            if let Some(resume) = &resume {
                nodes.push(resume_node(
                    &kvm,
                    config.seed,
                    resume,
                    i,
                    machine_config,
                    disks,
                )?);
                continue;
            }
            machine_config.epoch_ns =
                start_delay(config.seed, &machine_config.name, 1, config.start_spread_ns);
            let machine = Machine::power_on(&kvm, machine_config.clone())?;
            if let Some(template) = &machine_config.template {
                trace.record(0, i, machine_config.epoch_ns, &template_event(template))?;
            }
            nodes.push(Node {
                config: machine_config,
                machine: Some(machine),
                slot: Slot::Runnable,
                disks,
                past_stats: ExitStats::default(),
                past_device_errors: 0,
                last_now: 0,
                last_exit_status: None,
                ready_at: None,
                ready_wall: None,
                frames_unplugged: 0,
                profile: None,
                last_clock: None,
                paused: None,
                last_syscall_by: None,
            });
        }
        let mut network = network;
        let (step, next_action) = match &resume {
            Some(resume) => {
                if let Some(network) = &mut network {
                    network.replay_timeline(resume.body.network_actions)?;
                }
                let event = Event::FromSnapshot {
                    id: resume.info.id.clone(),
                };
                let net = nodes.len();
                trace.record(resume.info.step, net, resume.info.vtime_ns, &event)?;
                (resume.info.step, resume.body.next_action)
            }
            None => (0, 0),
        };
        let cpu_template = nodes
            .iter()
            .find_map(|n| n.machine.as_ref().map(|m| m.cpu_template().to_string()))
            .unwrap_or_default();
        let watchdog = match (config.watchdog, config.sample_every) {
            (None, None) => None,
            // Profiling needs the watchdog's thread, if only for sampling.
            (limit, every) => Some(Watchdog::with_sampling(
                limit.unwrap_or(Duration::from_secs(365 * 24 * 3600)),
                every,
            )?),
        };
        let profiling = config.sample_every.map(|_| {
            let mut kernels = KernelProbeCache::default();
            for machine in nodes.iter_mut().filter_map(|node| node.machine.as_mut()) {
                let probes = kernels.get(machine.kernel());
                machine.enable_profile(probes);
            }
            kernels
        });
        let printed = vec![false; nodes.len()];
        Ok(Self {
            seed: config.seed,
            kvm,
            nodes,
            trace,
            step,
            until_ns: config.until_ns,
            stop: config.stop,
            last_at: 0,
            trace_state: config.trace_state,
            cpu: config.cpu,
            watchdog,
            watchdog_kicks: Vec::new(),
            network,
            awaited,
            timeline: config.timeline,
            next_action,
            crash_policy: config.crash_policy,
            keep_disks: config.keep_disks,
            cpu_template,
            templates: templates.uses(),
            world_key,
            snapshot: config.snapshot,
            snapshot_taken: None,
            resumed_from: resume.map(|r| r.info),
            printed,
            profiling,
            parallel: config.sample_every.map(|_| ParallelBound::default()),
            start_spread_ns: config.start_spread_ns,
            history: config.history,
            assertions: Assertions::default(),
        })
    }

    /// Runs to the end, passing every annotated console line to `print`. `print` runs outside
    /// the TSC trap (see `host_tsc`), so it may do anything, including reading the clock.
    pub fn run(mut self, print: &mut dyn FnMut(&str)) -> Result<Outcome> {
        if let Some(cpu) = self.cpu {
            host_cpu::pin_current_thread(cpu)?;
        }
        // Instant would read the TSC through the vDSO, which faults while the trap is armed.
        let tsc_trap = TscTrap::arm()?;
        let mut trap_error = None;
        let print = &mut |line: &str| {
            if let Err(e) = tsc_trap.lifted(|| print(line)) {
                trap_error.get_or_insert(e);
            }
        };
        let started = host_tsc::monotonic();
        self.parallel_barrier();
        let ending = loop {
            if self.done() {
                break Ending::Done;
            }
            let next = self.next_machine();
            let action_at = self.next_action_at();
            // World actions go first at equal times: a machine stepped at t sees what happened
            // to the world at t.
            let (at, machine) = match (next, action_at) {
                (Some((i, at)), Some(t)) if at < t => (at, Some(i)),
                (_, Some(t)) => (t, None),
                (Some((i, at)), None) => (at, Some(i)),
                (None, None) => {
                    let all_stopped = self
                        .nodes
                        .iter()
                        .all(|n| matches!(n.slot, Slot::Stopped(_)));
                    break if all_stopped {
                        Ending::Done
                    } else {
                        Ending::Idle
                    };
                }
            };
            if self.until_ns.is_some_and(|until| at > until) {
                break Ending::Until;
            }
            // A stop finishes the current virtual instant first, so that `until` set to it
            // replays the run to exactly here.
            if at > self.last_at && self.stop.is_some_and(|stop| stop.load(Ordering::Relaxed)) {
                break Ending::Interrupted;
            }
            self.last_at = at;
            self.step += 1;
            match machine {
                None => {
                    self.apply_actions(at, print)?;
                    self.parallel_barrier();
                }
                Some(index) => {
                    let step_started = self.parallel.is_some().then(host_tsc::monotonic);
                    self.step_machine(index, at, started, print)?;
                    if let Some(step_started) = step_started {
                        self.note_step_wall(index, at, step_started);
                    }
                }
            }
            if self.snapshot_taken.is_none()
                && self.snapshot_condition_holds(at)
                && self.quiescent()
            {
                self.snapshot_taken = Some(self.take_snapshot(at)?);
            }
        };
        let wall = host_tsc::monotonic().saturating_sub(started);
        if let Some(error) = trap_error {
            return Err(error);
        }
        self.finish(ending, wall)
    }

    /// Feeds the parallel stepping estimate (`--profile`) the step of machine `index` at `at`
    /// that began at `step_started`.
    fn note_step_wall(&mut self, index: usize, at: u64, step_started: Duration) {
        let wall = host_tsc::monotonic().saturating_sub(step_started);
        if let Some(parallel) = &mut self.parallel {
            parallel.step(index, at, wall);
        }
    }

    /// Tells the parallel stepping estimate (`--profile`) that the world starts running or
    /// applied an action, and the links' least latency from here: only actions change it, so
    /// it is read here rather than at every step.
    fn parallel_barrier(&mut self) {
        let Some(parallel) = &mut self.parallel else {
            return;
        };
        let lookahead = self
            .network
            .as_ref()
            .map_or(u64::MAX, Network::min_latency_ns);
        parallel.barrier(lookahead);
    }

    /// Steps machine `index` at virtual time `at` (its clock, or its wake-up time if halted).
    fn step_machine(
        &mut self,
        index: usize,
        at: u64,
        started: Duration,
        print: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let node = &mut self.nodes[index];
        let Some(machine) = node.machine.as_mut() else {
            return Ok(());
        };
        if let Slot::Halted(_) = node.slot {
            machine.wake(self.step, at, &mut self.trace)?;
        }
        self.deliver_frames(index)?;
        self.complete_disk_requests(index)?;
        let node = &mut self.nodes[index];
        let label = node.label();
        let Some(machine) = node.machine.as_mut() else {
            return Ok(());
        };
        let kicks_before = machine.stats().watchdog_kicks;
        let status = machine.step(self.step, &mut self.trace, self.watchdog.as_ref())?;
        if self.trace_state {
            let state = machine.state_fingerprint()?;
            self.trace
                .record_state(self.step, index, machine.now(), state)?;
        }
        if machine.stats().watchdog_kicks > kicks_before {
            let message = format!(
                "NONDETERMINISTIC: the watchdog kicked machine {label} at step {} (virtual time {}), rip {:#x}: \
                 the guest ran without any VM exit for longer than the watchdog limit",
                self.step,
                crate::console::format_vtime(machine.now()),
                machine.rip().unwrap_or(0),
            );
            print(&message);
            self.watchdog_kicks.push(message);
        }
        let lines = machine.take_console_lines();
        for (vtime, line) in &lines {
            print(&format_line(self.step, &label, *vtime, line));
        }
        for (vtime, line) in &lines {
            self.note_console_line(index, line);
            self.assertions.note(self.step, &label, *vtime, line);
        }
        let node = &mut self.nodes[index];
        let Some(machine) = node.machine.as_mut() else {
            return Ok(());
        };
        if node.ready_at.is_none() {
            if let Some(ready) = machine.ready_at() {
                node.ready_at = Some(ready);
                node.ready_wall = Some(host_tsc::monotonic().saturating_sub(started));
            }
        }
        self.send_frames(index)?;
        self.submit_disk_requests(index)?;
        let node = &mut self.nodes[index];
        node.slot = match status {
            // Only a machine without boot data pauses for its identity; one in a world carries
            // on (its init finds no identity and says so).
            Status::Running | Status::TemplatePoint { .. } => Slot::Runnable,
            Status::Halted { wake_at } => Slot::Halted(wake_at),
            Status::Stopped(Stop::Restart { .. }) => {
                // A reboot is not a power loss: the disks keep their caches.
                let now = node.now();
                node.retire(Stop::Restart { exit_status: None });
                return self.power_on(index, now);
            }
            Status::Stopped(stop) => {
                node.retire(stop.clone());
                Slot::Stopped(stop)
            }
        };
        Ok(())
    }

    /// Powers on the next incarnation of machine `index` at virtual time `at`.
    fn power_on(&mut self, index: usize, at: u64) -> Result<()> {
        let seed = self.seed;
        let node = &mut self.nodes[index];
        let incarnation = node.incarnation() + 1;
        let mut config = node.config.clone();
        config.incarnation = incarnation;
        config.epoch_ns = at.saturating_add(start_delay(
            seed,
            &config.name,
            incarnation,
            self.start_spread_ns,
        ));
        // Each incarnation's guest randomness has its own stream: (seed, machine, incarnation).
        config.rng_seed = seed.key(&format!(
            "machine/{}/incarnation/{incarnation}/kernel-rng",
            config.name
        ));
        if let Some(boot) = &mut config.boot {
            boot.incarnation = incarnation;
        }
        let mut machine = Machine::power_on(&self.kvm, config.clone())?;
        if let Some(kernels) = &mut self.profiling {
            machine.enable_profile(kernels.get(machine.kernel()));
        }
        let at = config.epoch_ns;
        node.config = config;
        node.machine = Some(machine);
        node.slot = Slot::Runnable;
        node.paused = None;
        self.trace
            .record(self.step, index, at, &Event::PowerOn { incarnation })?;
        if let Some(template) = &node.config.template {
            self.trace
                .record(self.step, index, at, &template_event(template))?;
        }
        Ok(())
    }

    /// When the next world action is due: the network's or a machine's.
    fn next_action_at(&self) -> Option<u64> {
        let machine_action = self.timeline.get(self.next_action).map(|(t, _)| *t);
        let net_action = self.network.as_ref().and_then(Network::next_action_at);
        match (machine_action, net_action) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether every awaited machine has stopped for good: no restart of it is still to come.
    /// A run that awaits no machine runs until `until` or until it is idle.
    fn done(&self) -> bool {
        let restart_pending = |index: usize| {
            self.timeline[self.next_action..]
                .iter()
                .any(|(_, a)| matches!(a, MachineAction::Restart { machine } if *machine == index))
        };
        self.awaited.iter().any(|&a| a)
            && self
                .nodes
                .iter()
                .zip(&self.awaited)
                .enumerate()
                .all(|(i, (node, &awaited))| {
                    !awaited || (matches!(node.slot, Slot::Stopped(_)) && !restart_pending(i))
                })
    }

    /// The machine to step next and the virtual time it steps at: the lowest time wins, ties go
    /// to the lowest index. Halted machines count at their wake-up time (timer, the next frame
    /// in flight to them, or their next disk completion); machines halted with nothing pending
    /// and stopped machines do not.
    fn next_machine(&self) -> Option<(usize, u64)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, node)| {
                let machine = node.machine.as_ref().filter(|_| node.paused.is_none())?;
                let wake = match node.slot {
                    Slot::Runnable => return Some((i, machine.now())),
                    Slot::Halted(timer) => {
                        let arrival = self.network.as_ref().and_then(|n| n.next_arrival(i));
                        [timer, arrival, node.next_disk_completion()]
                            .into_iter()
                            .flatten()
                            .min()
                    }
                    Slot::Stopped(_) => None,
                };
                wake.map(|t| (i, t.max(machine.now())))
            })
            .min_by_key(|&(i, t)| (t, i))
    }

    /// Closes the network and the trace, keeps the disks if asked, and sums up.
    fn finish(mut self, ending: Ending, wall: Duration) -> Result<Outcome> {
        if let Some(network) = &mut self.network {
            network.finish()?;
        }
        if let Some(dir) = &self.keep_disks {
            std::fs::create_dir_all(dir).map_err(|source| Error::KeepDisk {
                path: dir.clone(),
                source,
            })?;
            for node in &self.nodes {
                for disk in &node.disks {
                    disk.keep(&dir.join(format!("{}-{}.img", node.name(), disk.name)))?;
                }
            }
        }
        let simvm_samples = self.watchdog.as_ref().map_or(0, Watchdog::simvm_samples);
        let digest = self.trace.digest();
        let events = self.trace.events();
        let fingerprints = self.trace.finish()?;
        // A run cut at `until` ran to it, though each machine's clock stopped at its last
        // event before it.
        let last_event = self.nodes.iter().map(Node::now).max().unwrap_or(0);
        let vtime_ns = match (&ending, self.until_ns) {
            (Ending::Until, Some(until)) => until.max(last_event),
            (Ending::Interrupted, _) => self.last_at,
            _ => last_event,
        };
        let history = self.history.map(|(m, d)| self.nodes[m].recorded_history(d));
        let network = self.network;
        let machines = self
            .nodes
            .into_iter()
            .enumerate()
            .map(|(i, mut node)| {
                // A machine still running ends as running: its counters are folded in, but
                // it has no stop.
                let stop = match (
                    &node.machine,
                    std::mem::replace(&mut node.slot, Slot::Runnable),
                ) {
                    (None, Slot::Stopped(stop)) => Some(stop),
                    _ => None,
                };
                node.fold_machine();
                let (stats, device_errors) = (node.past_stats, node.past_device_errors);
                let (now, exit_status) = (node.last_now, node.last_exit_status);
                let disk_crashes = node
                    .disks
                    .iter()
                    .flat_map(|d| d.crashes().iter().map(move |c| format!("{}: {c}", d.name)))
                    .collect();
                MachineOutcome {
                    name: node.config.name.clone(),
                    stop,
                    exit_status,
                    ready_at_ns: node.ready_at,
                    vtime_ns: now,
                    stats,
                    ready_wall: node.ready_wall,
                    net: network.as_ref().and_then(|n| n.counters(i)),
                    device_errors,
                    incarnations: node.config.incarnation,
                    disk_crashes,
                    frames_unplugged: node.frames_unplugged,
                    profile: node.profile.take(),
                    last_syscall_by: node.last_syscall_by,
                }
            })
            .collect();
        Ok(Outcome {
            seed: self.seed,
            steps: self.step,
            events,
            vtime_ns,
            wall,
            digest,
            cpu_template: self.cpu_template,
            ending,
            machines,
            watchdog_kicks: self.watchdog_kicks,
            fingerprints,
            templates: self.templates,
            snapshot: self.snapshot_taken,
            resumed_from: self.resumed_from,
            simvm_samples,
            parallel: self.parallel.as_ref().map(ParallelBound::estimate),
            assertions: self.assertions,
            history,
            verdict: None,
        })
    }
}

/// What a world is made of, so that a snapshot is only continued by the world that took it:
/// each machine's template key (image and shape), the network's links, which machines are
/// awaited and the crash policy. The timelines are checked apart: a continuation shares what
/// the snapshot has behind it, and its future is its own (`snapshot::timeline_past`).
fn world_key(
    kvm: &Kvm,
    templates: &mut Templates,
    shapes: &[(MachineConfig, Vec<WorldDisk>)],
    network: Option<&NetworkConfig>,
    awaited: &[bool],
    crash_policy: CrashPolicy,
) -> Result<String> {
    let mut h = blake3::Hasher::new();
    h.update(crate::template::SIMVM_BUILD.as_bytes());
    for (config, _) in shapes {
        h.update(config.name.as_bytes());
        h.update(b"\0");
        h.update(templates.key(kvm, config)?.as_bytes());
        h.update(
            format!(
                "{:?}",
                config
                    .boot
                    .as_ref()
                    .map(|b| (&b.argv, &b.environ, &b.mounts))
            )
            .as_bytes(),
        );
    }
    // Debug output is stable within one simvm build, which the key also names.
    let links = network.map(|n| (&n.defaults, &n.links));
    h.update(format!("{links:?}{awaited:?}{crash_policy:?}").as_bytes());
    Ok(h.finalize().to_hex()[..32].to_string())
}

/// A node as a snapshot saved it: its disks' contents, its running machine restored.
fn resume_node(
    kvm: &Kvm,
    seed: Seed,
    resume: &LoadedSnapshot,
    index: usize,
    mut config: MachineConfig,
    mut disks: Vec<WorldDisk>,
) -> Result<Node> {
    let saved =
        resume.body.nodes.get(index).ok_or_else(|| {
            Error::Snapshot(format!("the snapshot has no machine {}", config.name))
        })?;
    if saved.disks.len() != disks.len() {
        return Err(Error::Snapshot(format!(
            "machine {} has {} disks in the snapshot, {} here",
            config.name,
            saved.disks.len(),
            disks.len()
        )));
    }
    for (disk, state) in disks.iter_mut().zip(&saved.disks) {
        disk.restore(seed, &config.name, state)?;
    }
    config.incarnation = saved.incarnation;
    if let Some(boot) = &mut config.boot {
        boot.incarnation = saved.incarnation;
    }
    let machine = match &saved.machine {
        Some(m) => {
            let file = resume.memory(&config.name, config.mem_size, &m.memory_blake3)?;
            let mem = crate::template::map_private(&file, config.mem_size)?;
            let mut machine = Machine::restore(kvm, config.clone(), mem, &m.state, Some(m.clock))?;
            machine.set_reported(m.ready_at, m.exit_status);
            // The saved kernel RNG would repeat itself in every continuation.
            machine.reseed_guest(seed.key(&format!(
                "machine/{}/incarnation/{}/after-snapshot",
                config.name, config.incarnation
            )));
            Some(machine)
        }
        None => None,
    };
    Ok(Node {
        config,
        machine,
        slot: saved.slot.slot(),
        disks,
        past_stats: ExitStats::default(),
        past_device_errors: 0,
        last_now: saved.last_now,
        last_exit_status: saved.last_exit_status,
        ready_at: saved.ready_at,
        ready_wall: None,
        frames_unplugged: 0,
        profile: None,
        last_clock: None,
        paused: None,
        last_syscall_by: None,
    })
}

/// The trace's record of a start from `template`.
fn template_event(template: &crate::template::Template) -> Event {
    Event::Template {
        key: template.key().to_string(),
        guest_now_ns: template.guest_now_ns(),
    }
}

/// The seeded delay of a machine's power-on within `[0, spread]`, from its own stream.
fn start_delay(seed: Seed, name: &str, incarnation: u32, spread: u64) -> u64 {
    use rand_core::RngCore;
    if spread == 0 {
        return 0;
    }
    let component = format!("machine/{name}/incarnation/{incarnation}/start-delay");
    seed.stream(&component).next_u64() % spread.saturating_add(1)
}

/// Refuses sector faults that start beyond their disk's end, which would silently do nothing
/// (a range that only runs past the end is clamped to it). Disk sizes are known only once the
/// disks are open: an image's or a recipe's disk gets its size from the file.
fn check_fault_ranges(
    timeline: &[(u64, MachineAction)],
    shapes: &[(MachineConfig, Vec<WorldDisk>)],
) -> Result<()> {
    for (at, action) in timeline {
        let MachineAction::DiskFault {
            machine,
            disk,
            fault,
        } = action
        else {
            continue;
        };
        let (Fault::LatentErrors { start, .. } | Fault::WriteErrors { start, .. }) = fault else {
            continue;
        };
        let Some((config, disks)) = shapes.get(*machine) else {
            continue;
        };
        let sectors = disks.get(*disk).map_or(0, WorldDisk::sectors);
        if *start >= sectors {
            return Err(Error::Timeline(format!(
                "the disk fault at {} on {}/{} starts at sector {start}, beyond the disk's \
                 {sectors} sectors",
                crate::units::format_ns(*at),
                config.name,
                disk_name(*disk)
            )));
        }
    }
    Ok(())
}

/// Refuses timeline actions that name a machine or disk the world does not have, or come out
/// of time order.
fn check_timeline(
    timeline: &[(u64, MachineAction)],
    machines: &[MachineConfig],
    disks: &[Vec<DiskSetup>],
) -> Result<()> {
    let mut previous = 0;
    for (at, action) in timeline {
        let (machine, disk) = match action {
            MachineAction::Kill { machine, .. }
            | MachineAction::Restart { machine }
            | MachineAction::Pause { machine }
            | MachineAction::Resume { machine }
            | MachineAction::Clock { machine, .. } => (*machine, None),
            MachineAction::DiskFault { machine, disk, .. } => (*machine, Some(*disk)),
        };
        let problem = if *at < previous {
            Some("actions out of time order".to_string())
        } else if machine >= machines.len() {
            Some(format!("no machine {machine}"))
        } else if disk.is_some_and(|d| d >= disks.get(machine).map_or(0, Vec::len)) {
            Some(format!(
                "machine {} has no such disk",
                machines[machine].name
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Error::Timeline(format!("{problem}: {action:?} at {at} ns")));
        }
        previous = *at;
    }
    Ok(())
}
