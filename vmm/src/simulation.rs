//! A simulation: a scenario, a seed and the options of a run, assembled into a world.
//!
//! This is the one place that decides how a scenario becomes machines: addresses, MACs,
//! `/etc/hosts`, the per-machine boot data, the seed's streams, the disks and their images, the
//! network and the timeline. The `simvm` command, the integration tests, the benchmarks and a
//! Rust user's own `cargo test` all build worlds through it:
//!
//! ```no_run
//! use simvm_vmm::scenario::Scenario;
//! use simvm_vmm::simulation::Simulation;
//!
//! let scenario = Scenario::from_cli(1, vec!["sh".into(), "-c".into(), "echo hello".into()]);
//! let simulation = Simulation::new(scenario, 7).with_built_images().unwrap();
//! let outcome = simulation.run(&mut |line| println!("{line}")).unwrap();
//! assert!(simulation.passed(&outcome));
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use simvm_devices::disk::CrashPolicy;
use simvm_devices::net::switch::{Cut, LinkConfig};
use simvm_devices::net::MachineId;
use simvm_devices::virtio::net::Offloads;

use crate::boot_data::{BootData, Mount};
use crate::clock::DEFAULT_WALL_BASE_NS;
use crate::disk_image::{check_ext4, ext4_image, size_for_tree};
use crate::disks::{DiskBase, DiskSetup};
use crate::history::{self, HistoryVerdict};
use crate::image::{self, GuestImage};
use crate::machine::{disk_name, MachineConfig, Stop};
use crate::nemesis::Nemesis;
use crate::network::{NetAction, NetworkConfig};
use crate::page_work::PageWork;
use crate::scenario::{Action, DiskContents, Event, Expect, Heal, Scenario};
use crate::seed::Seed;
use crate::trace::first_divergence;
use crate::tuning::GuestTuning;
use crate::world::{
    Ending, MachineAction, MachineOutcome, Outcome, SnapshotRequest, World, WorldConfig,
};

/// Guest RAM of a machine whose scenario entry does not say.
pub const DEFAULT_MEM: u64 = 128 << 20;

/// Everything a run is made of.
#[derive(Clone, Debug)]
pub struct Simulation {
    pub scenario: Scenario,
    pub seed: u64,
    /// The image of each machine, in scenario order (see [`Simulation::with_built_images`]).
    pub images: Vec<GuestImage>,
    /// Guest RAM of machines whose scenario entry does not say.
    pub default_mem: u64,
    /// A watchdog kick (nondeterminism) fails the run.
    pub strict: bool,
    /// Write every guest-visible event as JSON lines here.
    pub trace: Option<PathBuf>,
    /// Fingerprint registers and memory after every step (`--trace-state`).
    pub trace_state: bool,
    /// The host CPU to pin the simulation thread to.
    pub cpu: Option<usize>,
    pub pcap: Option<PathBuf>,
    pub watchdog: Duration,
    /// Overrides the scenario's `until` (ns).
    pub until_ns: Option<u64>,
    /// Extra guest kernel parameters.
    pub kernel_args: String,
    /// The guest tunings every machine gets.
    pub tuning: GuestTuning,
    /// The offloads each machine's virtio-net offers.
    pub offloads: Offloads,
    /// Who clears and copies the guest kernels' pages; invisible to the guests.
    pub page_work: PageWork,
    /// Overrides the scenario's crash policy.
    pub crash_policy: Option<CrashPolicy>,
    /// Write every disk's final image to this directory.
    pub keep_disks: Option<PathBuf>,
    /// Where disk images built from host directories are cached.
    pub cache_dir: PathBuf,
    /// The KVM device.
    pub kvm_device: PathBuf,
    /// Boot every machine instead of starting it from its template (`--cold`).
    pub cold: bool,
    /// Save the world when a condition holds (`--snapshot-at`, `--snapshot`).
    pub snapshot: Option<SnapshotRequest>,
    /// Continue the world saved in this directory (`--from`), with this simulation's seed.
    pub from: Option<PathBuf>,
    /// Profile the run, sampling the guests this often in real time (`--profile`).
    pub sample_every: Option<Duration>,
    /// Chaos scheduling in thousandths of system calls, instead of the scenario's `chaos`.
    pub chaos_per_mille: Option<u32>,
    /// Seeded faults instead of the scenario's `[nemesis]`.
    pub nemesis: Option<Nemesis>,
    /// User address-space randomisation from the seeded RNG, whatever the scenario says.
    pub aslr: bool,
    /// Stops the run at its next virtual instant when set ([`crate::world::WorldConfig::stop`]).
    pub stop: Option<&'static std::sync::atomic::AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulationError {
    #[error("cannot read the initramfs {}: {source}", path.display())]
    Initramfs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the snapshot directory {} exists and is not empty: give a new one", .0.display())]
    SnapshotExists(PathBuf),
    #[error("nothing would end this run: no machine is expected to exit and there is no `until`; set `until` (or `--until`)")]
    Endless,
    #[error("the scenario has {machines} machines but {images} images were given")]
    Images { machines: usize, images: usize },
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error("disk {disk} of {machine}: {source}")]
    DiskImage {
        machine: String,
        disk: String,
        source: crate::disk_image::DiskImageError,
    },
    #[error("disk {disk} of {machine}: {source}")]
    DiskRecipe {
        machine: String,
        disk: String,
        source: image::ImageError,
    },
    #[error(transparent)]
    Vmm(#[from] crate::Error),
}

/// What two runs of one seed said about determinism.
#[derive(Debug)]
pub struct DeterminismCheck {
    pub first: Outcome,
    pub second: Outcome,
    /// The first step at which the runs differ, if they do.
    pub divergence: Option<u64>,
}

impl DeterminismCheck {
    pub fn deterministic(&self) -> bool {
        self.comparable() && self.first.digest == self.second.digest && self.divergence.is_none()
    }

    /// Whether both runs saw the same CPU model, without which their digests say nothing.
    pub fn comparable(&self) -> bool {
        self.first.cpu_template == self.second.cpu_template
    }

    /// One line: deterministic, or where the runs parted.
    pub fn verdict(&self) -> String {
        let at = self.divergence.map_or("?".to_string(), |s| s.to_string());
        if !self.comparable() {
            format!(
                "NOT comparable: the runs saw different CPU models ({} and {})",
                self.first.cpu_template, self.second.cpu_template
            )
        } else if self.deterministic() {
            format!("deterministic: both runs have digest {}", self.first.digest)
        } else if self.first.digest == self.second.digest {
            format!(
                "NOT deterministic: the digests agree ({}) but the guests' state differs, first at step {at}",
                self.first.digest,
            )
        } else {
            format!(
                "NOT deterministic: digests {} and {} differ, first at step {at}",
                self.first.digest, self.second.digest,
            )
        }
    }
}

impl Simulation {
    /// `scenario` from `seed` with the defaults and no images yet.
    pub fn new(scenario: Scenario, seed: u64) -> Self {
        Self {
            scenario,
            seed,
            images: Vec::new(),
            default_mem: DEFAULT_MEM,
            strict: false,
            trace: None,
            trace_state: false,
            cpu: None,
            pcap: None,
            watchdog: Duration::from_secs(5),
            until_ns: None,
            kernel_args: String::new(),
            tuning: GuestTuning::default(),
            offloads: Offloads::default(),
            page_work: PageWork::for_this_host(),
            crash_policy: None,
            keep_disks: None,
            cache_dir: image::cache_dir(),
            kvm_device: std::env::var_os("SIMVM_KVM_DEVICE")
                .map_or_else(|| PathBuf::from("/dev/kvm"), PathBuf::from),
            cold: false,
            snapshot: None,
            from: None,
            sample_every: None,
            chaos_per_mille: None,
            nemesis: None,
            aslr: false,
            stop: None,
        }
    }

    /// Builds (or finds in the cache) each machine's image from its recipe, `default_recipe`
    /// for machines that name none.
    pub fn with_built_images(self) -> Result<Self, SimulationError> {
        self.with_recipe_images(None)
    }

    /// Like [`Simulation::with_built_images`], with a recipe for machines that name none.
    pub fn with_recipe_images(
        mut self,
        default_recipe: Option<&str>,
    ) -> Result<Self, SimulationError> {
        let mut built: Vec<(Option<String>, GuestImage)> = Vec::new();
        let mut images = Vec::new();
        for machine in &self.scenario.machines {
            let recipe = machine
                .recipe
                .clone()
                .or_else(|| default_recipe.map(str::to_string));
            let image = match built.iter().find(|(r, _)| *r == recipe) {
                Some((_, image)) => image.clone(),
                None => {
                    let image = image::build(recipe.as_deref())?;
                    built.push((recipe, image.clone()));
                    image
                }
            };
            images.push(image);
        }
        self.images = images;
        Ok(self)
    }

    /// Every machine boots `image`.
    pub fn with_image(mut self, image: GuestImage) -> Self {
        self.images = vec![image; self.scenario.machines.len()];
        self
    }

    /// The nemesis in force: the one given here, else the scenario's.
    pub fn nemesis(&self) -> Option<&Nemesis> {
        self.nemesis.as_ref().or(self.scenario.nemesis.as_ref())
    }

    /// The faults the nemesis schedules for this seed, in time order (none without a nemesis
    /// or an end of the run).
    pub fn nemesis_schedule(&self) -> Vec<Event> {
        match (self.nemesis(), self.until_ns.or(self.scenario.until_ns)) {
            (Some(nemesis), Some(until)) => nemesis.schedule(
                Seed(self.seed),
                &self.scenario.machines,
                self.networked(),
                until,
            ),
            _ => Vec::new(),
        }
    }

    /// The scenario's timeline with the nemesis's faults merged in (the file's first at equal
    /// times).
    pub fn timeline(&self) -> Vec<Event> {
        let mut timeline = self.scenario.timeline.clone();
        timeline.extend(self.nemesis_schedule());
        timeline.sort_by_key(|e| e.at_ns);
        timeline
    }

    fn networked(&self) -> bool {
        self.scenario.machines.len() > 1
    }

    /// The world this simulation runs in: `fingerprints` keeps per-event fingerprints (for
    /// comparing runs), `trace` writes JSON lines.
    pub fn world_config(
        &self,
        fingerprints: bool,
        trace: Option<PathBuf>,
    ) -> Result<WorldConfig, SimulationError> {
        let count = self.scenario.machines.len();
        if let Some(dir) = self.snapshot.as_ref().map(|r| &r.dir) {
            let empty = std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none());
            if !empty || dir.is_file() {
                return Err(SimulationError::SnapshotExists(dir.clone()));
            }
        }
        if self.until_ns.is_none() && !self.scenario.ends_by_itself() {
            return Err(SimulationError::Endless);
        }
        if self.images.len() != count {
            return Err(SimulationError::Images {
                machines: count,
                images: self.images.len(),
            });
        }
        let seed = Seed(self.seed);
        let networked = self.networked();
        let timeline = self.timeline();
        let hosts: Vec<(String, String)> = self
            .scenario
            .machines
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), format!("10.0.0.{}", i + 1)))
            .collect();
        let mut initramfs_cache: BTreeMap<PathBuf, Arc<[u8]>> = BTreeMap::new();
        let mut tuning_args: BTreeMap<PathBuf, String> = BTreeMap::new();
        let mut recipe_trees = RecipeTrees::default();

        let mut machines = Vec::with_capacity(count);
        let mut disks = Vec::with_capacity(count);
        for (i, (machine, image)) in self.scenario.machines.iter().zip(&self.images).enumerate() {
            let mac = networked.then(|| MachineId(i as u16).mac());
            let (setups, mounts) = self.machine_disks(machine, &mut recipe_trees)?;
            let boot = BootData {
                name: machine.name.clone(),
                index: i + 1,
                machines: count,
                seed: self.seed,
                incarnation: 1,
                ip: networked.then(|| format!("10.0.0.{}/24", i + 1)),
                mac: mac.map(|m| m.to_string()),
                argv: machine.argv.clone(),
                environ: machine
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                hosts: if networked { hosts.clone() } else { vec![] },
                mounts,
            };
            let base = match initramfs_cache.get(&image.initramfs) {
                Some(bytes) => bytes.clone(),
                None => {
                    let bytes: Arc<[u8]> = std::fs::read(&image.initramfs)
                        .map_err(|source| SimulationError::Initramfs {
                            path: image.initramfs.clone(),
                            source,
                        })?
                        .into();
                    initramfs_cache.insert(image.initramfs.clone(), bytes.clone());
                    bytes
                }
            };
            let tuning = tuning_args
                .entry(image.kernel.clone())
                .or_insert_with(|| {
                    self.tuning
                        .kernel_args_for(&crate::profile::Symbols::beside(&image.kernel))
                })
                .clone();
            machines.push(MachineConfig {
                index: i,
                boot: Some(boot),
                cmdline_extra: [
                    tuning,
                    chaos_args(
                        self.chaos_per_mille
                            .unwrap_or(self.scenario.chaos_per_mille),
                    ),
                    aslr_args(self.aslr || self.scenario.aslr),
                    self.kernel_args.clone(),
                ]
                .iter()
                .filter(|a| !a.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join(" "),
                rng_seed: seed.key(&format!("machine/{}/kernel-rng", machine.name)),
                wall_base_ns: DEFAULT_WALL_BASE_NS.saturating_add_signed(seed.offset(
                    &format!("machine/{}/wall-offset", machine.name),
                    self.scenario.clock_spread_ns,
                )),
                mac,
                offloads: self.offloads,
                page_work: self.page_work,
                ..MachineConfig::new(
                    &machine.name,
                    image.kernel.clone(),
                    vec![base],
                    machine.memory.unwrap_or(self.default_mem),
                )
            });
            disks.push(setups);
        }
        Ok(WorldConfig {
            disks,
            timeline: machine_timeline(&timeline),
            crash_policy: self.crash_policy.unwrap_or(self.scenario.crash_policy),
            keep_disks: self.keep_disks.clone(),
            until_ns: self.until_ns.or(self.scenario.until_ns),
            stop: self.stop,
            watchdog: Some(self.watchdog),
            trace_json: trace,
            fingerprints,
            trace_state: self.trace_state,
            cpu: self.cpu,
            kvm_device: self.kvm_device.clone(),
            network: networked.then(|| network_config(&self.scenario, &timeline)),
            pcap: self.pcap.clone(),
            templates: (!self.cold).then(|| self.cache_dir.clone()),
            snapshot: self.snapshot.clone(),
            from: self.from.clone(),
            sample_every: self.sample_every,
            start_spread_ns: self.scenario.start_spread_ns,
            history: (self.scenario.check.as_ref()).map(|c| (c.machine, c.disk)),
            awaited: self
                .scenario
                .machines
                .iter()
                .map(|m| m.expect.waits())
                .collect(),
            ..WorldConfig::new(seed, machines)
        })
    }

    /// The disks of one machine and the filesystems init mounts from them; `recipe_trees` holds
    /// the recipe trees staged so far in this run.
    fn machine_disks(
        &self,
        machine: &crate::scenario::Machine,
        recipe_trees: &mut RecipeTrees,
    ) -> Result<(Vec<DiskSetup>, Vec<Mount>), SimulationError> {
        let mut setups = Vec::new();
        let mut mounts = Vec::new();
        for (d, disk) in machine.disks.iter().enumerate() {
            let name = disk_name(d);
            let image_error = |source| SimulationError::DiskImage {
                machine: machine.name.clone(),
                disk: name.clone(),
                source,
            };
            let recipe_error = |source| SimulationError::DiskRecipe {
                machine: machine.name.clone(),
                disk: name.clone(),
                source,
            };
            let (base, size) = match &disk.contents {
                DiskContents::Raw => (DiskBase::Zeros, disk.size),
                DiskContents::Image(path) => {
                    if disk.mount.is_some() {
                        check_ext4(path).map_err(image_error)?;
                    }
                    (DiskBase::File(path.clone()), disk.size)
                }
                DiskContents::Ext4 { dir } => {
                    let size = disk.size.unwrap_or(crate::scenario::DEFAULT_DISK_SIZE);
                    let image =
                        ext4_image(dir.as_deref(), size, &self.cache_dir).map_err(image_error)?;
                    (DiskBase::File(image), Some(size))
                }
                // From here on a recipe disk is a `dir` disk of the recipe's tree.
                DiskContents::Recipe(recipe) => {
                    let tree = recipe_trees.get(recipe).map_err(recipe_error)?;
                    let size = match disk.size {
                        Some(size) => size,
                        None => size_for_tree(&tree).map_err(image_error)?,
                    };
                    let image =
                        ext4_image(Some(&tree), size, &self.cache_dir).map_err(image_error)?;
                    (DiskBase::File(image), Some(size))
                }
            };
            if let Some(path) = &disk.mount {
                mounts.push(Mount {
                    device: name.clone(),
                    path: path.clone(),
                    fstype: "ext4".into(),
                });
            }
            setups.push(DiskSetup {
                base,
                size,
                latency: disk.latency,
            });
        }
        Ok((setups, mounts))
    }

    /// Runs once, passing every console line to `print`.
    pub fn run(&self, print: &mut dyn FnMut(&str)) -> Result<Outcome, SimulationError> {
        let world = World::new(self.world_config(false, self.trace.clone())?)?;
        Ok(self.judged(world.run(print)?))
    }

    /// `outcome` with its workload history checked, if the scenario asks (`[check]`).
    fn judged(&self, mut outcome: Outcome) -> Outcome {
        let (Some(check), Some(recorded)) = (&self.scenario.check, &outcome.history) else {
            return outcome;
        };
        let names: Vec<String> = (self.scenario.machines.iter())
            .map(|m| m.name.clone())
            .collect();
        let source = format!("{}/{}", names[check.machine], disk_name(check.disk));
        let faults = history::fault_intervals(&self.timeline(), &names, outcome.vtime_ns);
        let timeout = Duration::from_nanos(check.timeout_ns);
        outcome.verdict = Some(history::judge(
            recorded,
            &source,
            check.model,
            timeout,
            faults,
        ));
        outcome
    }

    /// Runs twice, the first run printing through `print`, and compares them.
    pub fn check_determinism(
        &self,
        print: &mut dyn FnMut(&str),
    ) -> Result<DeterminismCheck, SimulationError> {
        let first = World::new(self.world_config(true, self.trace.clone())?)?.run(print)?;
        let first = self.judged(first);
        // The second run takes no snapshot (taking one must not change the run either), nor
        // looks for an empty directory to take it into: the first run has just filled it.
        let without_snapshot = Simulation {
            snapshot: None,
            ..self.clone()
        };
        let second = without_snapshot.world_config(true, None)?;
        let second = World::new(second)?.run(&mut |_| {})?;
        let divergence = match (&first.fingerprints, &second.fingerprints) {
            (Some(a), Some(b)) => first_divergence(a, b),
            _ => None,
        };
        Ok(DeterminismCheck {
            first,
            second,
            divergence,
        })
    }

    /// The run's profile (`sample_every`), written into `dir`: folded stacks and flame graphs
    /// per machine and for the run, and the summary, which is returned.
    pub fn write_profile(&self, outcome: &Outcome, dir: &Path) -> Result<String, SimulationError> {
        let empty = crate::profile::MachineProfile::default();
        let machines = outcome
            .machines
            .iter()
            .zip(&self.images)
            .map(|(m, image)| {
                let profile = m.profile.as_ref().unwrap_or(&empty);
                (m.name.as_str(), image.kernel.as_path(), profile)
            })
            .collect();
        let run = crate::profile::RunProfile {
            machines,
            simvm_samples: outcome.simvm_samples,
            wall: outcome.wall,
            stats: outcome.machines.iter().map(|m| m.stats).collect(),
            parallel: outcome.parallel.as_ref(),
        };
        Ok(run.write(dir)?)
    }

    /// Whether every machine met its expectation and the run as a whole succeeded (no guest
    /// assertion failed, among others).
    pub fn passed(&self, outcome: &Outcome) -> bool {
        let machines_ok = outcome
            .machines
            .iter()
            .zip(&self.scenario.machines)
            .all(|(m, spec)| machine_met(m, spec.expect));
        machines_ok
            && !matches!(outcome.ending, Ending::Idle | Ending::Interrupted)
            && (!self.strict || outcome.watchdog_kicks.is_empty())
            && outcome.assertions.passed()
            && outcome.verdict.as_ref().is_none_or(HistoryVerdict::passed)
    }
}

/// User address-space randomisation from the guest's seeded RNG: the sysctl, set at boot,
/// overrides the fixed `norandmaps` (none when off).
fn aslr_args(on: bool) -> String {
    match on {
        true => "sysctl.kernel.randomize_va_space=2".to_string(),
        false => String::new(),
    }
}

/// The guest kernel parameter of chaos scheduling at `per_mille` (none when off).
fn chaos_args(per_mille: u32) -> String {
    match per_mille {
        0 => String::new(),
        n => format!("simvm_chaos={}", n.min(1000)),
    }
}

/// The kills, restarts, pauses, clock and disk faults of a scenario's timeline, in time order
/// (a pause `for` a while brings its resume).
fn machine_timeline(events: &[Event]) -> Vec<(u64, MachineAction)> {
    let mut timeline = Vec::new();
    for event in events {
        let at = event.at_ns;
        let action = match &event.action {
            Action::Pause { machine, for_ns } => {
                let machine = *machine;
                timeline.push((at, MachineAction::Pause { machine }));
                if let Some(d) = for_ns {
                    timeline.push((at.saturating_add(*d), MachineAction::Resume { machine }));
                }
                continue;
            }
            Action::Resume { machine } => MachineAction::Resume { machine: *machine },
            Action::Clock { machine, change } => MachineAction::Clock {
                machine: *machine,
                change: *change,
            },
            Action::Kill { machine, policy } => MachineAction::Kill {
                machine: *machine,
                policy: *policy,
            },
            Action::Restart { machine } => MachineAction::Restart { machine: *machine },
            Action::DiskFault {
                machine,
                disk,
                fault,
            } => MachineAction::DiskFault {
                machine: *machine,
                disk: *disk,
                fault: *fault,
            },
            Action::Partition(_) | Action::Heal(_) | Action::Link(_) => continue,
        };
        timeline.push((at, action));
    }
    // Stable: actions at the same time keep the file's order (a pause before its resume).
    timeline.sort_by_key(|(at, _)| *at);
    timeline
}

/// The network of a scenario: per-link settings, and its timeline as switch actions.
fn network_config(scenario: &Scenario, timeline: &[Event]) -> NetworkConfig {
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
    let events = timeline;
    let mut timeline = Vec::new();
    for event in events {
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
            Action::Kill { .. }
            | Action::Restart { .. }
            | Action::DiskFault { .. }
            | Action::Pause { .. }
            | Action::Resume { .. }
            | Action::Clock { .. } => {}
        }
    }
    NetworkConfig {
        defaults,
        links,
        timeline,
    }
}

/// The staged trees of the recipes a run's disks name, each built (or found in the build
/// script's cache) on first use, once per run.
#[derive(Default)]
struct RecipeTrees(BTreeMap<String, PathBuf>);

impl RecipeTrees {
    fn get(&mut self, recipe: &str) -> Result<PathBuf, image::ImageError> {
        if let Some(tree) = self.0.get(recipe) {
            return Ok(tree.clone());
        }
        let tree = image::recipe_tree(recipe)?;
        self.0.insert(recipe.to_string(), tree.clone());
        Ok(tree)
    }
}

/// Whether one machine's ending meets what the scenario expects of it.
pub fn machine_met(m: &MachineOutcome, expect: Expect) -> bool {
    match &m.stop {
        Some(Stop::PowerOff {
            exit_status: Some(s),
        }) => expect.is_met(Some(i32::from(*s))),
        // Still running when the run ended.
        None => expect.is_met(None),
        // Crashed, killed, halted for good, or powered off without reporting a status.
        Some(_) => expect == Expect::Any,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_for_a_while_brings_its_resume_in_time_order() {
        let event = |at_ns, action| Event { at_ns, action };
        let timeline = machine_timeline(&[
            event(
                1,
                Action::Pause {
                    machine: 0,
                    for_ns: Some(0),
                },
            ),
            event(
                2,
                Action::Pause {
                    machine: 1,
                    for_ns: Some(5),
                },
            ),
            event(
                3,
                Action::Kill {
                    machine: 0,
                    policy: None,
                },
            ),
            event(4, Action::Heal(Heal::All)),
        ]);
        assert_eq!(
            timeline,
            [
                (1, MachineAction::Pause { machine: 0 }),
                (1, MachineAction::Resume { machine: 0 }),
                (2, MachineAction::Pause { machine: 1 }),
                (
                    3,
                    MachineAction::Kill {
                        machine: 0,
                        policy: None
                    }
                ),
                (7, MachineAction::Resume { machine: 1 }),
            ]
        );
    }

    #[test]
    fn an_unknown_disk_recipe_is_named_with_its_machine_and_disk() {
        let scenario = Scenario::parse(
            "[[machine]]\ncommand = \"x\"\n\
             disks = [{ size = \"8M\", fs = \"raw\" }, { recipe = \"no-such-recipe\" }]\n",
            "s.toml",
        )
        .expect("parses");
        let simulation = Simulation::new(scenario, 1).with_image(GuestImage {
            kernel: "vmlinux".into(),
            initramfs: "initramfs.cpio".into(),
        });
        let Err(err) = simulation.world_config(false, None) else {
            panic!("a disk of an unknown recipe was accepted");
        };
        let text = err.to_string();
        assert!(matches!(err, SimulationError::DiskRecipe { .. }), "{text}");
        assert!(
            text.starts_with("disk vdb of m1: no guest image recipe `no-such-recipe` in "),
            "{text}"
        );
    }

    #[test]
    fn a_run_that_nothing_ends_is_refused_and_until_bounds_it() {
        let mut scenario = Scenario::from_cli(2, vec!["sleep".into(), "1000".into()]);
        for machine in &mut scenario.machines {
            machine.expect = Expect::Running;
        }
        let simulation = Simulation::new(scenario, 1);
        assert!(matches!(
            simulation.world_config(false, None),
            Err(SimulationError::Endless)
        ));
        let bounded = Simulation {
            until_ns: Some(1_000_000_000),
            ..simulation
        };
        // Bounded, it gets past the check (and stops at the missing images).
        assert!(matches!(
            bounded.world_config(false, None),
            Err(SimulationError::Images { .. })
        ));
    }
}
