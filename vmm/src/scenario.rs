//! Scenario files: which machines run what, on which network, with which faults and when.
//!
//! `simvm run scenario.toml --seed 5` reads a TOML file like this one (`examples/README.md` has
//! more, and `examples/demo.toml` is the built-in demo):
//!
//! ```toml
//! description = "a server, two clients, a partition"   # optional, shown in reports
//! until = "60s"              # optional: stop the run at this virtual time
//! clock_spread = "5ms"       # optional: each machine's wall clock is off by a seeded amount
//!                            # in [-spread, +spread] (default 5ms, "0s": all agree)
//! start_spread = "10ms"      # optional: each boot starts a seeded delay in [0, spread] late
//!                            # (default 10ms, "0s": machines start together)
//! chaos = "2%"               # optional: each guest system call yields the CPU with this
//!                            # seeded probability (0.1% steps; default 0: off)
//! aslr = true                # optional: user address-space randomisation from the seeded
//!                            # RNG (default false: the same layout for every seed)
//!
//! [network]                  # optional: settings of every link
//! latency = "2ms"            # ns, us, ms, s, m, h, d; fractions allowed ("1.5ms")
//! jitter = "100us"           # extra delay per frame, uniform in [0, jitter]
//! loss = "1%"                # a probability: "1%" or 0.01
//! duplicate = 0.001          # probability that a frame arrives twice
//! bandwidth = "100Mbit"      # bit, kbit, Mbit, Gbit (per second) or "unlimited"
//! reorder = false            # may jitter let a frame overtake an earlier one?
//!
//! [[network.link]]           # optional, any number: overrides for some links
//! from = "m1"                # omitted: any machine
//! to = "m2"                  # omitted: any machine
//! both = true                # also the reverse direction (default: only from -> to)
//! latency = "20ms"           # any of the settings above, and `up = false`
//!
//! [[machine]]                # one table per machine, in order: m1, m2, ...
//! name = "m1"                # optional, default m<position>; also its host name
//! command = "httpd -f -p 80" # a shell line (run with sh -c) or a list: ["httpd", "-f"]
//! recipe = "etcd"            # optional: the guest image recipe
//! memory = "256M"            # optional: guest RAM (K, M, G); default: `simvm run --mem`
//! env = { MODE = "server" }  # optional: extra environment variables
//! expect = "running"         # exit status (default 0), "running" or "any"
//!
//! [[machine]]
//! count = 2                  # this table stands for two machines (m2, m3)
//! command = ["wget", "-q", "http://m1/"]
//!
//! [[timeline]]               # events at virtual times, in time order
//! at = "5s"
//! partition = [["m1"], ["m2", "m3"]]   # groups that cannot reach each other
//! one_way = true             # optional: cut only traffic from the first group to the others
//! name = "split"             # optional: to heal this one partition later
//!
//! [[timeline]]
//! at = "10s"
//! heal = "split"             # or "all"
//!
//! [[timeline]]
//! at = "12s"
//! link = { from = "m2", to = "m1", loss = "50%" }   # change links (same keys as above)
//!
//! [[timeline]]
//! at = "15s"
//! kill = "m2"                # power loss; optional `policy` (else the run's `crash_policy`)
//!
//! [[timeline]]
//! at = "16s"
//! restart = "m2"             # a new incarnation boots on the same disks
//!
//! [[timeline]]
//! at = "20s"
//! disk = "m1/vda"            # a disk fault: one of the keys below
//! latent_errors = "2048+64"  # reads of sectors 2048..2112 fail until rewritten
//! # write_errors = "0+8"     # writes there fail until `clear`
//! # stall = "2s"             # nothing completes for 2 s
//! # slow = "5ms"             # every request takes 5 ms longer ("0s" ends it)
//! # clear = true             # ends write errors, stalls and slowness
//!
//! [[timeline]]
//! at = "25s"
//! pause = "m3"               # m3 is not stepped (SIGSTOP of a VM); its clock shows the gap
//! for = "2s"                 # optional: else until a `resume = "m3"` event
//!
//! [[timeline]]
//! at = "30s"
//! clock = "m2"               # a clock fault: one of the keys below
//! rate = "+200ppm"           # m2's clocks gain 200 µs a second from now ("0ppm" ends it)
//! # step = "-1.5s"           # its wall clock jumps (the monotonic clock does not)
//! # offset = "0s"            # its wall clock is set to world time plus this
//!
//! [nemesis]                  # optional: seeded faults besides the timeline's
//! faults = ["partition", "kill", "pause", "clock", "disk"]
//! interval = "5s"            # mean time between faults (default 5s)
//! duration = "2s"            # mean length of a fault before it heals (default 2s)
//! quiet = "10s"              # no fault in this tail before `until` (default 10s)
//! start = "2s"               # no fault before this (default 0s): let the system form first
//! machines = ["m1", "m2"]    # optional: only these (default: every machine)
//!
//! [check]                    # optional: judge a workload's history after the run
//! history = "m3/vdb"         # the raw disk (`fs = "raw"`) the client writes JSON lines to
//! model = "register"         # the default (the only model)
//! timeout = "60s"            # real time the checker may take before it says "unknown"
//! ```
//!
//! Disks, per machine (`vda`, `vdb`, ... in order), and the crash policy of the run:
//!
//! ```toml
//! crash_policy = "subset"    # keep-all, lose-all, subset (default) or torn
//!
//! [[machine]]
//! command = "..."
//! disks = [
//!   { size = "64M" },                         # an empty ext4 filesystem, mounted at /data
//!   { size = "64M", dir = "files" },          # ext4 holding a host directory, at /data2
//!   { image = "base.img", mount = "/srv" },   # an ext4 image file (never written)
//!   { size = "16M", fs = "raw" },             # zeros, not mounted
//!   { recipe = "etcd", mount = "/opt/etcd" }, # ext4 holding a guest image recipe's files
//! ]
//! # each may also set latency = "20us" (minimum) and latency_mean = "80us"
//! ```
//!
//! Semantics the runner relies on:
//! - Every machine gets `SIMVM_MACHINE`, `SIMVM_INDEX` and `SIMVM_MACHINES` besides `env`.
//! - Link settings not given anywhere keep the switch's defaults. A link's settings are the
//!   `[network]` ones, then every matching `[[network.link]]` in file order. A `link` event
//!   changes only the settings it names, on top of the link's current ones.
//! - A partition with one group cuts that group from every other machine; with more groups,
//!   each group from the others (machines in no group are unaffected). Partitions stack until
//!   healed; a partition reusing a name replaces the earlier one.
//! - The run ends when every machine expected to exit (`expect` is a status) has exited, or at
//!   `until`. A scenario that expects no machine to exit needs `until`, in the file or from the
//!   command line ([`Scenario::parse_with_until`]): nothing else would end it. It succeeds when every machine meets its `expect`: that exit status, `"running"`
//!   (still running at the end) or `"any"` (anything).
//!
//! Errors name the file, line and column and say what was expected; unknown keys are errors.
//! Durations and sizes are parsed exactly by [`crate::units`], which `simvm run` uses too.
//! The model is plain data: times are nanoseconds, probabilities `f64` in `[0, 1]`, bandwidth
//! bits per second, machines indices into [`Scenario::machines`], as the switch takes them.

#![warn(clippy::cast_possible_truncation)]

// The model is this module; reading a file goes through `raw` (the shapes serde fills) and
// `check` (from those to the model), with `problem` for errors that point into the file and
// `quantity` for values with units; `write` turns a scenario back into the file format.
mod check;
#[cfg(test)]
mod fuzz;
mod problem;
mod quantity;
mod raw;
#[cfg(test)]
mod tests;
mod write;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use simvm_devices::disk::{CrashPolicy, Fault, Latency};
use thiserror::Error;

use crate::nemesis::Nemesis;
pub use crate::skew::ClockChange;
pub use quantity::{format_per_mille, per_mille};

use problem::*;
use quantity::*;
use raw::*;

/// The most machines one run can have (the CLI's `--machines` limit).
pub const MAX_MACHINES: usize = 64;

/// Disks a machine may have: its virtio windows are IRQs 5 to 15, one taken by the NIC.
pub const MAX_DISKS: usize = 10;

/// The built-in demo, shipped as an example so the documented file is the one that runs.
const DEMO_TOML: &str = include_str!("../../examples/demo.toml");
const DEMO_FILE: &str = "examples/demo.toml";

/// A whole run: machines, network, timeline of network events, end and verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub description: Option<String>,
    pub machines: Vec<Machine>,
    pub network: Network,
    /// In time order; events at the same time in file order.
    pub timeline: Vec<Event>,
    /// Virtual time at which the run stops, if it has not ended before.
    pub until_ns: Option<u64>,
    /// What a crash keeps of unflushed disk writes when a kill does not say.
    pub crash_policy: CrashPolicy,
    /// Each machine's wall clock starts off by a seeded amount within ± this (ns), as NTP
    /// keeps real machines within milliseconds of each other.
    pub clock_spread_ns: u64,
    /// Each boot of a machine starts a seeded delay within `[0, this]` (ns) after it is due,
    /// so that machines started together are not clones of each other.
    pub start_spread_ns: u64,
    /// Chaos scheduling: per mille of guest system calls at which the calling task yields the
    /// CPU, drawn from the machine's seeded RNG (0: off; docs/determinism.md).
    pub chaos_per_mille: u32,
    /// Seeded faults besides the timeline's.
    pub nemesis: Option<Nemesis>,
    /// User address-space randomisation from the guests' seeded RNG.
    pub aslr: bool,
    /// The history a workload leaves on a disk, judged after the run.
    pub check: Option<HistoryCheck>,
}

/// `[check]`: a workload client writes its history (JSON lines, docs/etcd.md) to a raw disk;
/// after the run simvm reads it back, checks it against `model` and fails the run if it is
/// not linearizable (or the checker cannot decide within `timeout_ns` of real time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryCheck {
    pub machine: usize,
    pub disk: usize,
    pub model: simvm_checker::Model,
    pub timeout_ns: u64,
}

/// The default [`HistoryCheck::timeout_ns`]: 60 s of real time.
pub const DEFAULT_CHECK_TIMEOUT_NS: u64 = 60_000_000_000;

/// The default [`Scenario::clock_spread_ns`]: 5 ms.
pub const DEFAULT_CLOCK_SPREAD_NS: u64 = 5_000_000;

/// The default [`Scenario::start_spread_ns`]: 10 ms.
pub const DEFAULT_START_SPREAD_NS: u64 = 10_000_000;

/// Size of a disk whose scenario entry gives neither `size` nor `image` nor `recipe`.
pub const DEFAULT_DISK_SIZE: u64 = 64 << 20;

/// One disk of a machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// Capacity in bytes; `None`: the image's size, or for a recipe disk a size that holds the
    /// recipe's tree ([`crate::disk_image::size_for_tree`]).
    pub size: Option<u64>,
    pub contents: DiskContents,
    /// Where init mounts its filesystem, if anywhere.
    pub mount: Option<String>,
    pub latency: Latency,
}

/// What a disk holds at the start of the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskContents {
    /// Zeros, no filesystem.
    Raw,
    /// An ext4 filesystem, empty or holding a host directory's tree.
    Ext4 { dir: Option<PathBuf> },
    /// An existing image file, used as it is (and never written).
    Image(PathBuf),
    /// An ext4 filesystem holding the files of a guest image recipe
    /// (`guest-images/recipes/NAME.toml`), with their libraries and the ELF loader, at the paths
    /// the recipe's image has them.
    Recipe(String),
}

impl DiskSpec {
    /// `--disk SIZE[:DIR]`: an ext4 filesystem of `size` bytes, empty or holding `dir`.
    pub fn ext4(size: u64, dir: Option<PathBuf>) -> Self {
        Self {
            size: Some(size),
            contents: DiskContents::Ext4 { dir },
            mount: None,
            latency: Latency::default(),
        }
    }
}

/// Gives the mounted disks of a machine their default mount points: `/data` for the first,
/// `/data2`, `/data3`, ... for the next ones that hold a filesystem and name no mount point,
/// skipping the points other disks already have (a scenario's own, or those given before
/// `--disk` added more).
pub fn assign_mounts(disks: &mut [DiskSpec]) {
    let mut taken: Vec<String> = disks.iter().filter_map(|d| d.mount.clone()).collect();
    let mut next = 1;
    for disk in disks {
        let unmounted = disk.mount.is_none()
            && !matches!(disk.contents, DiskContents::Raw | DiskContents::Image(_));
        if !unmounted {
            continue;
        }
        let mount = loop {
            let candidate = match next {
                1 => "/data".to_string(),
                n => format!("/data{n}"),
            };
            next += 1;
            if !taken.contains(&candidate) {
                break candidate;
            }
        };
        taken.push(mount.clone());
        disk.mount = Some(mount);
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// Also the host name in every machine's `/etc/hosts`.
    pub name: String,
    /// The command; empty means the image's default (only from the command line).
    pub argv: Vec<String>,
    pub recipe: Option<String>,
    /// Guest RAM in bytes; `None` takes the command line's `--mem`.
    pub memory: Option<u64>,
    pub env: BTreeMap<String, String>,
    pub expect: Expect,
    /// `vda`, `vdb`, ... in order.
    pub disks: Vec<DiskSpec>,
}

/// What a machine's command must do for the run to succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Exit with this status. The run waits for it.
    Exit(u8),
    /// Still be running when the run ends (a server). The run does not wait for it.
    Running,
    /// Anything. The run does not wait for it.
    Any,
}

impl Default for Expect {
    fn default() -> Self {
        Expect::Exit(0)
    }
}

impl Expect {
    /// Whether the run must wait for this machine's command to exit.
    pub fn waits(self) -> bool {
        matches!(self, Expect::Exit(_))
    }

    /// Whether `status` (`None`: still running) meets the expectation.
    pub fn is_met(self, status: Option<i32>) -> bool {
        match self {
            Expect::Exit(code) => status == Some(i32::from(code)),
            Expect::Running => status.is_none(),
            Expect::Any => true,
        }
    }
}

/// Network settings: defaults for every link, then overrides.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Network {
    pub defaults: LinkSettings,
    pub links: Vec<LinkOverride>,
}

impl Network {
    /// The settings of the directed link `from -> to` at the start of the run.
    pub fn settings(&self, from: usize, to: usize) -> LinkSettings {
        self.links
            .iter()
            .filter(|o| o.links.matches(from, to))
            .fold(self.defaults, |acc, o| acc.then(o.settings))
    }
}

/// Settings of a link; `None` keeps what the link had (at first, the switch's defaults). The
/// world applies them as they are, so the scenario uses the VMM's type.
pub use crate::network::LinkPatch as LinkSettings;

/// New settings for the links a selector matches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkOverride {
    pub links: LinkSelector,
    pub settings: LinkSettings,
}

/// Which directed links an override or a `link` event applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkSelector {
    /// `None`: any machine.
    pub from: Option<usize>,
    /// `None`: any machine.
    pub to: Option<usize>,
    /// Also the links `to -> from`.
    pub both: bool,
}

impl LinkSelector {
    pub fn matches(&self, from: usize, to: usize) -> bool {
        let one_way =
            |f: usize, t: usize| self.from.is_none_or(|x| x == f) && self.to.is_none_or(|x| x == t);
        from != to && (one_way(from, to) || (self.both && one_way(to, from)))
    }

    /// The matching links among `machines` machines.
    pub fn links(&self, machines: usize) -> Vec<(usize, usize)> {
        (0..machines)
            .flat_map(|from| (0..machines).map(move |to| (from, to)))
            .filter(|&(from, to)| self.matches(from, to))
            .collect()
    }
}

/// Something that happens to the network at a virtual time.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub at_ns: u64,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Partition(Partition),
    Heal(Heal),
    Link(LinkOverride),
    /// Power loss; the crash policy of the kill, or the run's.
    Kill {
        machine: usize,
        policy: Option<CrashPolicy>,
    },
    /// A new incarnation boots (a running machine is killed first).
    Restart {
        machine: usize,
    },
    /// A fault injected into disk `disk` of `machine`.
    DiskFault {
        machine: usize,
        disk: usize,
        fault: Fault,
    },
    /// The machine is not stepped until it resumes, after `for_ns` if given (or at a `Resume`);
    /// its clock then shows the gap, as a VM stopped with SIGSTOP.
    Pause {
        machine: usize,
        for_ns: Option<u64>,
    },
    Resume {
        machine: usize,
    },
    /// A change to the machine's clocks.
    Clock {
        machine: usize,
        change: ClockChange,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Given in the file, or `partition-N` for the N-th partition event.
    pub name: String,
    /// At least two disjoint, non-empty groups of machine indices.
    pub groups: Vec<Vec<usize>>,
    /// Only traffic from the first group to the others is cut (`Cut::OneWay`).
    pub one_way: bool,
}

impl Partition {
    /// The `(a, b)` pairs to cut so that this partition holds: one pair for a one-way
    /// partition (first group to the rest), otherwise each group against all later ones.
    pub fn cuts(&self) -> Vec<(Vec<usize>, Vec<usize>)> {
        let pairs = if self.one_way {
            1
        } else {
            self.groups.len() - 1
        };
        (0..pairs)
            .map(|i| (self.groups[i].clone(), self.groups[i + 1..].concat()))
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heal {
    All,
    Named(String),
}

/// The largest scenario file simvm reads (the largest example is a few KiB).
const MAX_SCENARIO_BYTES: u64 = 4 << 20;

/// Why a scenario could not be loaded.
#[derive(Debug, Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}\n{excerpt}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        message: String,
        /// The offending line with a caret under the column.
        excerpt: String,
    },
}

impl Scenario {
    /// Reads and checks a scenario file. The file must bound the run: some machine is awaited
    /// (expects an exit status) or it sets `until`.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        Self::load_with_until(path, None)
    }

    /// Like [`Scenario::load`], for a run that `until_ns` (the command line's `--until`) ends
    /// if the file does not.
    pub fn load_with_until(path: &Path, until_ns: Option<u64>) -> Result<Self, ScenarioError> {
        let read_error = |source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        };
        // Bounded, so that `/dev/zero` or a disk image given by mistake is an error, not
        // all of the host's memory.
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|file| file.take(MAX_SCENARIO_BYTES + 1).read_to_end(&mut bytes))
            .map_err(read_error)?;
        if bytes.len() as u64 > MAX_SCENARIO_BYTES {
            return Err(read_error(std::io::Error::other(format!(
                "larger than {} MiB: a scenario is a TOML file",
                MAX_SCENARIO_BYTES >> 20
            ))));
        }
        let file = path.display().to_string();
        let text = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(e.as_bytes());
            Problem::at(
                at..at,
                format!(
                    "this is not UTF-8 text (byte 0x{:02x}): a scenario is a TOML file",
                    e.as_bytes()[at]
                ),
            )
            .locate(&file, &text)
        })?;
        let mut scenario = Self::parse_with_until(&text, &file, until_ns)?;
        // Paths in a scenario are relative to the file.
        let base = path.parent().unwrap_or(Path::new("."));
        for disk in scenario.machines.iter_mut().flat_map(|m| &mut m.disks) {
            match &mut disk.contents {
                DiskContents::Ext4 { dir: Some(p) } | DiskContents::Image(p) => {
                    if p.is_relative() {
                        *p = base.join(&*p);
                    }
                }
                DiskContents::Ext4 { dir: None } | DiskContents::Raw | DiskContents::Recipe(_) => {}
            }
        }
        Ok(scenario)
    }

    /// Parses and checks scenario text; `file` names it in errors. Like [`Scenario::load`], the
    /// text must bound the run.
    pub fn parse(text: &str, file: &str) -> Result<Self, ScenarioError> {
        Self::parse_with_until(text, file, None)
    }

    /// Like [`Scenario::parse`], for a run that `until_ns` (the command line's `--until`) ends
    /// if the text does not.
    pub fn parse_with_until(
        text: &str,
        file: &str,
        until_ns: Option<u64>,
    ) -> Result<Self, ScenarioError> {
        toml::from_str::<RawScenario>(text)
            .map_err(|e| Problem {
                span: e.span().unwrap_or(0..0),
                message: toml_message(&e, text),
            })
            .and_then(|raw| raw.check(until_ns.is_some()))
            .map_err(|problem| problem.locate(file, text))
    }

    /// Whether a run of this scenario ends without being told when: some machine is awaited
    /// (expects an exit status), or the scenario has `until`. A run of a scenario that does not
    /// needs an `until` from elsewhere, or it never ends.
    pub fn ends_by_itself(&self) -> bool {
        self.until_ns.is_some() || self.machines.iter().any(|m| m.expect.waits())
    }

    /// The built-in demo (`examples/demo.toml`): an HTTP server, two clients, a partition.
    pub fn demo() -> Self {
        // The embedded file is part of the build and a unit test parses it.
        Self::parse(DEMO_TOML, DEMO_FILE).expect("the built-in demo scenario parses")
    }

    /// `simvm run --machines N -- command`: the same command on m1..mN, each to exit 0.
    pub fn from_cli(machines: usize, command: Vec<String>) -> Self {
        let machines = (1..=machines)
            .map(|i| Machine {
                name: format!("m{i}"),
                argv: command.clone(),
                recipe: None,
                memory: None,
                env: BTreeMap::new(),
                expect: Expect::default(),
                disks: Vec::new(),
            })
            .collect();
        Scenario {
            description: None,
            machines,
            network: Network::default(),
            timeline: Vec::new(),
            until_ns: None,
            crash_policy: CrashPolicy::default(),
            clock_spread_ns: DEFAULT_CLOCK_SPREAD_NS,
            start_spread_ns: DEFAULT_START_SPREAD_NS,
            chaos_per_mille: 0,
            nemesis: None,
            check: None,
            aslr: false,
        }
    }
}
