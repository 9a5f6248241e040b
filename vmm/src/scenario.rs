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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use simvm_devices::disk::{CrashPolicy, Fault, Latency, UnknownCrashPolicy};
use thiserror::Error;
use toml::{Spanned, Table, Value};

use crate::nemesis::{self, FaultKind, Nemesis};
pub use crate::skew::ClockChange;
use crate::units::{self, format_bandwidth, format_ns, parse_scaled, BANDWIDTH_UNITS};

/// The most machines one run can have (the CLI's `--machines` limit).
pub const MAX_MACHINES: usize = 64;

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
/// `/data2`, `/data3`, ... for the next ones that hold a filesystem and name no mount point.
pub fn assign_mounts(disks: &mut [DiskSpec]) {
    let mut next = 1;
    for disk in disks {
        if disk.mount.is_some() || disk.contents == DiskContents::Raw {
            continue;
        }
        if matches!(disk.contents, DiskContents::Image(_)) {
            continue;
        }
        disk.mount = Some(match next {
            1 => "/data".to_string(),
            n => format!("/data{n}"),
        });
        next += 1;
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
        let bytes = std::fs::read(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
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

// ---------------------------------------------------------------------------------------------
// Errors with positions

/// A finding in the file, before it is turned into line and column.
#[derive(Debug)]
struct Problem {
    span: Range<usize>,
    message: String,
}

impl Problem {
    fn at(span: Range<usize>, message: impl Into<String>) -> Self {
        Problem {
            span,
            message: message.into(),
        }
    }

    fn locate(self, file: &str, text: &str) -> ScenarioError {
        let (line, column) = line_column(text, self.span.start);
        let source_line = printable(text.split('\n').nth(line - 1).unwrap_or(""));
        let gutter = line.to_string().len();
        let excerpt = format!(
            "{:gutter$} |\n{line} | {source_line}\n{:gutter$} | {:>column$}",
            "", "", "^"
        );
        ScenarioError::Invalid {
            file: file.to_owned(),
            line,
            column,
            // Messages quote values from the file: control characters there show escaped.
            message: self
                .message
                .chars()
                .flat_map(|c| {
                    let escaped = c.is_control().then(|| c.escape_default());
                    escaped
                        .into_iter()
                        .flatten()
                        .chain((!c.is_control()).then_some(c))
                })
                .collect(),
            excerpt,
        }
    }
}

/// What the TOML parser found wrong, on one line (it puts what it expected on a line of its own,
/// and says nothing at all about some characters).
fn toml_message(error: &toml::de::Error, text: &str) -> String {
    let message = (error.message().lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    if !message.is_empty() {
        return message;
    }
    let found = (error.span())
        .and_then(|span| text.get(span.start..))
        .and_then(|rest| rest.chars().next());
    match found {
        Some('\r') => "invalid TOML: a carriage return must be followed by a newline".to_owned(),
        Some(c) if c.is_control() => {
            format!(
                "invalid TOML: unexpected control character U+{:04X}",
                u32::from(c)
            )
        }
        Some(c) => format!("invalid TOML at `{c}`"),
        None => "invalid TOML".to_owned(),
    }
}

/// A source line as an excerpt shows it: one visible character per character, so the caret
/// below stays in its column and no control character reaches the terminal.
fn printable(line: &str) -> String {
    line.chars()
        .map(|c| match c {
            '\t' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// One-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

// ---------------------------------------------------------------------------------------------
// The file as written, before checks

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    description: Option<String>,
    until: Option<Spanned<Nanos>>,
    crash_policy: Option<Spanned<String>>,
    clock_spread: Option<Nanos>,
    start_spread: Option<Nanos>,
    chaos: Option<Probability>,
    #[serde(default)]
    aslr: bool,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    machine: Vec<Spanned<RawMachine>>,
    #[serde(default)]
    timeline: Vec<Spanned<RawEvent>>,
    nemesis: Option<Spanned<RawNemesis>>,
    check: Option<RawCheck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    history: Spanned<String>,
    model: Option<Spanned<String>>,
    timeout: Option<Spanned<Nanos>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNemesis {
    faults: Spanned<Vec<Spanned<String>>>,
    interval: Option<Spanned<Nanos>>,
    duration: Option<Spanned<Nanos>>,
    quiet: Option<Nanos>,
    start: Option<Nanos>,
    machines: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    latency: Option<Nanos>,
    jitter: Option<Nanos>,
    loss: Option<Probability>,
    duplicate: Option<Probability>,
    bandwidth: Option<Bandwidth>,
    reorder: Option<bool>,
    #[serde(default)]
    link: Vec<Spanned<RawLink>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    from: Option<Spanned<String>>,
    to: Option<Spanned<String>>,
    #[serde(default)]
    both: bool,
    latency: Option<Nanos>,
    jitter: Option<Nanos>,
    loss: Option<Probability>,
    duplicate: Option<Probability>,
    bandwidth: Option<Bandwidth>,
    reorder: Option<bool>,
    up: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    name: Option<Spanned<String>>,
    count: Option<Spanned<i64>>,
    command: Spanned<Command>,
    recipe: Option<String>,
    memory: Option<Spanned<ByteSize>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    expect: Option<Spanned<Expect>>,
    #[serde(default)]
    disks: Vec<Spanned<RawDisk>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    size: Option<ByteSize>,
    dir: Option<String>,
    image: Option<String>,
    recipe: Option<Spanned<String>>,
    fs: Option<Spanned<String>>,
    mount: Option<Spanned<String>>,
    latency: Option<Nanos>,
    latency_mean: Option<Nanos>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    at: Spanned<Nanos>,
    partition: Option<Spanned<Vec<Vec<Spanned<String>>>>>,
    one_way: Option<Spanned<bool>>,
    name: Option<Spanned<String>>,
    heal: Option<Spanned<String>>,
    link: Option<Spanned<RawLink>>,
    kill: Option<Spanned<String>>,
    policy: Option<Spanned<String>>,
    restart: Option<Spanned<String>>,
    pause: Option<Spanned<String>>,
    #[serde(rename = "for")]
    pause_for: Option<Spanned<Nanos>>,
    resume: Option<Spanned<String>>,
    clock: Option<Spanned<String>>,
    rate: Option<Spanned<String>>,
    step: Option<Spanned<String>>,
    offset: Option<Spanned<String>>,
    disk: Option<Spanned<String>>,
    latent_errors: Option<Spanned<String>>,
    write_errors: Option<Spanned<String>>,
    stall: Option<Spanned<Nanos>>,
    slow: Option<Spanned<Nanos>>,
    clear: Option<Spanned<bool>>,
}

// ---------------------------------------------------------------------------------------------
// Checks: from the file as written to the model

impl RawScenario {
    /// `until_given`: the command line ends the run if the file does not.
    fn check(self, until_given: bool) -> Result<Scenario, Problem> {
        // Where to point if nothing ends the run: the first machine's `expect`, or its table.
        let first_machine = self
            .machine
            .first()
            .map(|m| m.get_ref().expect.as_ref().map_or(m.span(), Spanned::span));
        let machines = check_machines(self.machine)?;
        let names = Names(machines.iter().map(|m| m.name.clone()).collect());
        if let Some(until) = &self.until {
            if until.get_ref().0 == 0 {
                return Err(Problem::at(until.span(), "`until` must be after 0s"));
            }
        }
        let network = self.network.check(&names)?;
        let disks: Vec<usize> = machines.iter().map(|m| m.disks.len()).collect();
        let timeline = check_timeline(self.timeline, &names, &disks, self.until.as_ref())?;
        let nemesis = (self.nemesis)
            .map(|n| check_nemesis(n, &names))
            .transpose()?;
        if let Some(nemesis) = nemesis
            .as_ref()
            .filter(|_| self.until.is_none() && !until_given)
        {
            return Err(Problem::at(
                nemesis.1.clone(),
                "a nemesis needs the run's end, to keep its quiet tail: add `until` at the top (or run with --until)",
            ));
        }
        let nemesis = nemesis.map(|(n, _)| n);
        let crash_policy = self
            .crash_policy
            .as_ref()
            .map(check_crash_policy)
            .transpose()?
            .unwrap_or_default();
        let scenario = Scenario {
            description: self.description,
            machines,
            network,
            timeline,
            until_ns: self.until.map(|u| u.into_inner().0),
            crash_policy,
            clock_spread_ns: self.clock_spread.map_or(DEFAULT_CLOCK_SPREAD_NS, |s| s.0),
            start_spread_ns: self.start_spread.map_or(DEFAULT_START_SPREAD_NS, |s| s.0),
            chaos_per_mille: self.chaos.map_or(0, |p| per_mille(p.0)),
            nemesis,
            aslr: self.aslr,
            check: None,
        };
        let scenario = Scenario {
            check: self
                .check
                .map(|c| c.check(&names, &scenario.machines))
                .transpose()?,
            ..scenario
        };
        if !until_given && !scenario.ends_by_itself() {
            return Err(Problem::at(
                first_machine.unwrap_or(0..0),
                format!(
                    "nothing ends this run: no machine is awaited (every one expects \"running\" \
                     or \"any\": {}) and there is no `until`. Add `until = \"60s\"` at the top \
                     (or run with --until), or give a machine an exit status to expect",
                    names.0.join(", ")
                ),
            ));
        }
        Ok(scenario)
    }
}

/// The `[nemesis]` table, and where it is (for the check that needs `until`).
fn check_nemesis(
    raw: Spanned<RawNemesis>,
    names: &Names,
) -> Result<(Nemesis, Range<usize>), Problem> {
    let span = raw.span();
    let raw = raw.into_inner();
    let mut faults = Vec::new();
    for name in raw.faults.get_ref() {
        let kind = FaultKind::parse(name.get_ref()).ok_or_else(|| {
            let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
            Problem::at(
                name.span(),
                format!(
                    "unknown fault `{}`; the kinds are {}",
                    name.get_ref(),
                    known.join(", ")
                ),
            )
        })?;
        if faults.contains(&kind) {
            return Err(Problem::at(
                name.span(),
                format!("`{}` is listed twice", kind.name()),
            ));
        }
        faults.push(kind);
    }
    if faults.is_empty() {
        return Err(Problem::at(
            raw.faults.span(),
            "list the kinds of fault, e.g. [\"partition\", \"kill\", \"pause\", \"clock\", \"disk\"]",
        ));
    }
    let positive = |value: Option<Spanned<Nanos>>, default: u64, key: &str| match value {
        Some(v) if v.get_ref().0 == 0 => Err(Problem::at(
            v.span(),
            format!("`{key}` must be longer than 0s"),
        )),
        Some(v) => Ok(v.into_inner().0),
        None => Ok(default),
    };
    let nemesis = Nemesis {
        faults,
        interval_ns: positive(raw.interval, nemesis::DEFAULT_INTERVAL_NS, "interval")?,
        duration_ns: positive(raw.duration, nemesis::DEFAULT_DURATION_NS, "duration")?,
        quiet_ns: raw.quiet.map_or(nemesis::DEFAULT_QUIET_NS, |q| q.0),
        start_ns: raw.start.map_or(0, |s| s.0),
        machines: raw
            .machines
            .map(|m| check_nemesis_machines(m, names))
            .transpose()?,
    };
    Ok((nemesis, span))
}

impl RawCheck {
    fn check(self, names: &Names, machines: &[Machine]) -> Result<HistoryCheck, Problem> {
        let disks: Vec<usize> = machines.iter().map(|m| m.disks.len()).collect();
        let (machine, disk) = resolve_disk(&self.history, names, &disks)?;
        if machines[machine].disks[disk].contents != DiskContents::Raw {
            return Err(Problem::at(
                self.history.span(),
                format!(
                    "the history disk `{}` must be raw (`fs = \"raw\"`): simvm reads its bytes \
                     after the run, up to the first zero byte",
                    self.history.get_ref()
                ),
            ));
        }
        let model = match &self.model {
            Some(name) => name
                .get_ref()
                .parse()
                .map_err(|e: String| Problem::at(name.span(), e))?,
            None => simvm_checker::Model::default(),
        };
        let timeout_ns = match self.timeout {
            Some(t) if t.get_ref().0 == 0 => {
                return Err(Problem::at(t.span(), "`timeout` must be longer than 0s"))
            }
            Some(t) => t.into_inner().0,
            None => DEFAULT_CHECK_TIMEOUT_NS,
        };
        Ok(HistoryCheck {
            machine,
            disk,
            model,
            timeout_ns,
        })
    }
}

/// `MACHINE/DISK` (e.g. "m1/vda") as (machine, disk) indices.
fn resolve_disk(
    disk: &Spanned<String>,
    names: &Names,
    disks: &[usize],
) -> Result<(usize, usize), Problem> {
    let text = disk.get_ref();
    let Some((machine_name, disk_name)) = text.split_once('/') else {
        return Err(Problem::at(
            disk.span(),
            format!("`{text}` does not name a disk: write MACHINE/DISK, like \"m1/vda\""),
        ));
    };
    let machine = names.index(&Spanned::new(disk.span(), machine_name.to_string()))?;
    let count = disks.get(machine).copied().unwrap_or(0);
    let index = (0..count)
        .find(|&d| crate::machine::disk_name(d) == disk_name)
        .ok_or_else(|| {
            Problem::at(
                disk.span(),
                format!("{machine_name} has no disk `{disk_name}` (it has {count})"),
            )
        })?;
    Ok((machine, index))
}

/// `[nemesis] machines`: known, not repeated, not empty; ascending indices.
fn check_nemesis_machines(
    list: Spanned<Vec<Spanned<String>>>,
    names: &Names,
) -> Result<Vec<usize>, Problem> {
    if list.get_ref().is_empty() {
        return Err(Problem::at(
            list.span(),
            "name the machines faults may touch, e.g. [\"m1\", \"m2\", \"m3\"] (or leave              `machines` out for all of them)",
        ));
    }
    let mut targets = BTreeSet::new();
    for name in list.get_ref() {
        if !targets.insert(names.index(name)?) {
            return Err(Problem::at(
                name.span(),
                format!("`{}` is listed twice", name.get_ref()),
            ));
        }
    }
    Ok(targets.into_iter().collect())
}

/// An option given (`Some` span) without the action it belongs to is an error at it.
fn reject_misplaced(owner: &str, options: &[(&str, Option<Range<usize>>)]) -> Result<(), Problem> {
    match options.iter().find_map(|(k, s)| Some((k, s.clone()?))) {
        Some((key, span)) => Err(Problem::at(
            span,
            format!("`{key}` belongs to a `{owner}` event"),
        )),
        None => Ok(()),
    }
}

/// A `what` event takes exactly one of `options`: none is `missing` (at `span`), two are an
/// error at the second.
fn exactly_one(
    what: &str,
    options: &[(&str, Option<Range<usize>>)],
    span: Range<usize>,
    missing: &str,
) -> Result<(), Problem> {
    let given: Vec<(&str, Range<usize>)> = options
        .iter()
        .filter_map(|(k, s)| Some((*k, s.clone()?)))
        .collect();
    match given.as_slice() {
        [] => Err(Problem::at(span, missing)),
        [(first, _), (second, span), ..] => Err(Problem::at(
            span.clone(),
            format!("a {what} event does one thing, this one has `{first}` and `{second}`"),
        )),
        [_] => Ok(()),
    }
}

/// Machine names in order, to resolve references.
struct Names(Vec<String>);

impl Names {
    fn index(&self, name: &Spanned<String>) -> Result<usize, Problem> {
        self.0
            .iter()
            .position(|n| n == name.get_ref())
            .ok_or_else(|| {
                Problem::at(
                    name.span(),
                    format!(
                        "unknown machine `{}`; the machines are {}",
                        name.get_ref(),
                        self.0.join(", ")
                    ),
                )
            })
    }
}

fn check_machines(raw: Vec<Spanned<RawMachine>>) -> Result<Vec<Machine>, Problem> {
    if raw.is_empty() {
        return Err(Problem::at(
            0..0,
            "no machines: add a [[machine]] table with a `command` for each machine",
        ));
    }
    let mut machines: Vec<Machine> = Vec::new();
    for entry in raw {
        let span = entry.span();
        let raw = entry.into_inner();
        for _ in 0..machine_count(&raw)? {
            if machines.len() == MAX_MACHINES {
                return Err(Problem::at(
                    span,
                    format!("too many machines: at most {MAX_MACHINES}"),
                ));
            }
            let machine = raw.to_machine(machines.len())?;
            if machines.iter().any(|m| m.name == machine.name) {
                let span = raw.name.as_ref().map_or(span.clone(), Spanned::span);
                return Err(Problem::at(
                    span,
                    format!(
                        "two machines are named `{}`; give each a different `name`",
                        machine.name
                    ),
                ));
            }
            machines.push(machine);
        }
    }
    Ok(machines)
}

/// How many machines a `[[machine]]` table stands for.
fn machine_count(raw: &RawMachine) -> Result<usize, Problem> {
    let Some(count) = &raw.count else {
        return Ok(1);
    };
    let n = usize::try_from(*count.get_ref())
        .ok()
        .filter(|n| (1..=MAX_MACHINES).contains(n))
        .ok_or_else(|| {
            Problem::at(
                count.span(),
                format!("`count` must be between 1 and {MAX_MACHINES}"),
            )
        })?;
    if let (Some(name), true) = (&raw.name, n > 1) {
        return Err(Problem::at(
            name.span(),
            "a table with `count` above 1 names its machines by position (m1, m2, ...): remove `name`",
        ));
    }
    Ok(n)
}

impl RawMachine {
    fn to_machine(&self, index: usize) -> Result<Machine, Problem> {
        let name = match &self.name {
            Some(name) => check_host_name(name)?,
            None => format!("m{}", index + 1),
        };
        for (key, value) in &self.env {
            check_env(key, value)?;
        }
        Ok(Machine {
            name,
            argv: self.command.get_ref().0.clone(),
            recipe: self.recipe.clone(),
            memory: self.memory.as_ref().map(check_memory).transpose()?,
            env: self
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.get_ref().clone()))
                .collect(),
            expect: self
                .expect
                .as_ref()
                .map_or_else(Expect::default, |e| *e.get_ref()),
            disks: self.check_disks()?,
        })
    }

    fn check_disks(&self) -> Result<Vec<DiskSpec>, Problem> {
        if self.disks.len() > MAX_DISKS {
            return Err(Problem::at(
                self.disks[MAX_DISKS].span(),
                format!("a machine has at most {MAX_DISKS} disks"),
            ));
        }
        let mut disks = self
            .disks
            .iter()
            .map(|d| d.get_ref().check(d.span()))
            .collect::<Result<Vec<_>, _>>()?;
        assign_mounts(&mut disks);
        Ok(disks)
    }
}

/// Disks a machine may have: its virtio windows are IRQs 5 to 15, one taken by the NIC.
pub const MAX_DISKS: usize = 10;

impl RawDisk {
    fn check(&self, span: Range<usize>) -> Result<DiskSpec, Problem> {
        let size = self.size.map(|s| s.0);
        if let Some(size) = size {
            if size < (1 << 20) || size % 4096 != 0 {
                return Err(Problem::at(
                    span,
                    "a disk's `size` must be a multiple of 4K and at least 1M",
                ));
            }
        }
        let contents = match &self.recipe {
            Some(recipe) => self.recipe_contents(recipe)?,
            None => self.other_contents(span)?,
        };
        let mount = match &self.mount {
            Some(mount) if contents == DiskContents::Raw => {
                return Err(Problem::at(
                    mount.span(),
                    "a raw disk holds no filesystem to mount",
                ))
            }
            Some(mount) => Some(check_mount_point(mount)?),
            None => None,
        };
        let defaults = Latency::default();
        Ok(DiskSpec {
            size: size.or(match contents {
                DiskContents::Image(_) | DiskContents::Recipe(_) => None,
                _ => Some(DEFAULT_DISK_SIZE),
            }),
            contents,
            mount,
            latency: Latency {
                min_ns: self.latency.map_or(defaults.min_ns, |n| n.0),
                mean_ns: self.latency_mean.map_or(defaults.mean_ns, |n| n.0),
            },
        })
    }

    /// `fs`, with its position, if the entry gives one; an unknown one is an error.
    fn fs(&self) -> Result<Option<(&str, Range<usize>)>, Problem> {
        match &self.fs {
            Some(fs) if !["ext4", "raw"].contains(&fs.get_ref().as_str()) => Err(Problem::at(
                fs.span(),
                format!("unknown `fs` \"{}\": use \"ext4\" or \"raw\"", fs.get_ref()),
            )),
            Some(fs) => Ok(Some((fs.get_ref().as_str(), fs.span()))),
            None => Ok(None),
        }
    }

    /// A disk with `recipe`: ext4 holding that recipe's files, so no `dir`, `image` or raw `fs`.
    fn recipe_contents(&self, recipe: &Spanned<String>) -> Result<DiskContents, Problem> {
        for (key, given) in [("dir", self.dir.is_some()), ("image", self.image.is_some())] {
            if given {
                return Err(Problem::at(
                    recipe.span(),
                    format!("a disk has either `recipe` (a guest image recipe's files) or `{key}`, not both"),
                ));
            }
        }
        if let Some(("raw", span)) = self.fs()? {
            return Err(Problem::at(
                span,
                "a disk with `recipe` holds an ext4 filesystem",
            ));
        }
        let name = recipe.get_ref();
        if !crate::image::is_recipe_name(name) {
            return Err(Problem::at(
                recipe.span(),
                format!("`{name}` is not a recipe name: give the NAME of a guest-images/recipes/NAME.toml (letters, digits, `_` and `-`), like \"etcd\""),
            ));
        }
        Ok(DiskContents::Recipe(name.clone()))
    }

    /// A disk without `recipe`: a host directory's tree, an image file, empty ext4 or raw.
    fn other_contents(&self, span: Range<usize>) -> Result<DiskContents, Problem> {
        if self.dir.is_some() && self.image.is_some() {
            return Err(Problem::at(
                span,
                "a disk has either `dir` (its files) or `image` (an image file), not both",
            ));
        }
        Ok(match (&self.dir, &self.image, self.fs()?) {
            (Some(_), _, Some(("raw", span))) => {
                return Err(Problem::at(
                    span,
                    "a disk with `dir` holds an ext4 filesystem",
                ))
            }
            (Some(dir), _, _) => DiskContents::Ext4 {
                dir: Some(PathBuf::from(dir)),
            },
            (None, Some(image), _) => DiskContents::Image(PathBuf::from(image)),
            (None, None, Some(("raw", _))) => DiskContents::Raw,
            (None, None, _) => DiskContents::Ext4 { dir: None },
        })
    }
}

/// A mount point: an absolute path of plain components, not a system directory init mounts.
fn check_mount_point(mount: &Spanned<String>) -> Result<String, Problem> {
    let path = mount.get_ref();
    let plain = path.starts_with('/')
        && path.len() > 1
        && path.len() < 200
        && path[1..].split('/').all(|c| {
            !c.is_empty()
                && !c.starts_with('.')
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch))
        });
    let reserved = [
        "/proc", "/sys", "/dev", "/tmp", "/run", "/simvm", "/etc", "/bin",
    ]
    .iter()
    .any(|r| path == r || path.starts_with(&format!("{r}/")));
    if !plain || reserved {
        return Err(Problem::at(
            mount.span(),
            format!("`{path}` cannot be a mount point: give an absolute path of letters, digits, `_`, `.` and `-` like \"/data\", outside /proc, /sys, /dev, /tmp, /run, /etc, /bin and /simvm"),
        ));
    }
    Ok(path.clone())
}

fn check_crash_policy(policy: &Spanned<String>) -> Result<CrashPolicy, Problem> {
    policy
        .get_ref()
        .parse()
        .map_err(|e: UnknownCrashPolicy| Problem::at(policy.span(), e.to_string()))
}

/// Guest RAM is mapped in whole pages.
fn check_memory(memory: &Spanned<ByteSize>) -> Result<u64, Problem> {
    let bytes = memory.get_ref().0;
    if !bytes.is_multiple_of(4096) {
        return Err(Problem::at(
            memory.span(),
            format!("a machine's `memory` must be a multiple of 4K, found {bytes} bytes"),
        ));
    }
    Ok(bytes)
}

/// Machine names are host names in `/etc/hosts`: a letter, then letters, digits or hyphens.
fn check_host_name(name: &Spanned<String>) -> Result<String, Problem> {
    let text = name.get_ref();
    let valid = text.len() <= 63
        && text.starts_with(|c: char| c.is_ascii_alphabetic())
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !valid {
        return Err(Problem::at(
            name.span(),
            format!("`{text}` is not a host name: use a letter, then letters, digits or `-` (at most 63)"),
        ));
    }
    Ok(text.clone())
}

fn check_env(key: &str, value: &Spanned<String>) -> Result<(), Problem> {
    let message = if key.is_empty() || key.contains(['=', '\0']) {
        format!("`{key}` is not an environment variable name")
    } else if key.starts_with("SIMVM_") {
        format!("`{key}` is set by simvm itself")
    } else if value.get_ref().contains('\0') {
        format!("the value of `{key}` contains a NUL character")
    } else {
        return Ok(());
    };
    Err(Problem::at(value.span(), message))
}

impl RawNetwork {
    fn check(self, names: &Names) -> Result<Network, Problem> {
        let defaults = LinkSettings {
            latency_ns: self.latency.map(|n| n.0),
            jitter_ns: self.jitter.map(|n| n.0),
            loss: self.loss.map(|p| p.0),
            duplicate: self.duplicate.map(|p| p.0),
            bandwidth_bps: self.bandwidth.map(|b| b.0),
            reorder: self.reorder,
            up: None,
        };
        let links = self
            .link
            .iter()
            .map(|link| link.get_ref().check(link.span(), names))
            .collect::<Result<_, _>>()?;
        Ok(Network { defaults, links })
    }
}

impl RawLink {
    fn check(&self, span: Range<usize>, names: &Names) -> Result<LinkOverride, Problem> {
        let from = self.from.as_ref().map(|n| names.index(n)).transpose()?;
        let to = self.to.as_ref().map(|n| names.index(n)).transpose()?;
        if let (Some(from), Some(to)) = (from, to) {
            if from == to {
                let span = self.to.as_ref().map_or(span, Spanned::span);
                return Err(Problem::at(span, "a link joins two different machines"));
            }
        }
        let settings = self.settings();
        if settings.is_empty() {
            return Err(Problem::at(
                span,
                "this link changes nothing: give latency, jitter, loss, duplicate, bandwidth, reorder or up",
            ));
        }
        Ok(LinkOverride {
            links: LinkSelector {
                from,
                to,
                both: self.both,
            },
            settings,
        })
    }

    fn settings(&self) -> LinkSettings {
        LinkSettings {
            latency_ns: self.latency.map(|n| n.0),
            jitter_ns: self.jitter.map(|n| n.0),
            loss: self.loss.map(|p| p.0),
            duplicate: self.duplicate.map(|p| p.0),
            bandwidth_bps: self.bandwidth.map(|b| b.0),
            reorder: self.reorder,
            up: self.up,
        }
    }
}

fn check_timeline(
    raw: Vec<Spanned<RawEvent>>,
    names: &Names,
    disks: &[usize],
    until: Option<&Spanned<Nanos>>,
) -> Result<Vec<Event>, Problem> {
    let mut partitions = BTreeSet::new();
    let mut previous: Option<u64> = None;
    let mut events = Vec::with_capacity(raw.len());
    for entry in raw {
        let span = entry.span();
        let raw = entry.into_inner();
        let at_ns = raw.at.get_ref().0;
        check_event_time(&raw.at, previous, until)?;
        previous = Some(at_ns);
        let action = raw.action(span, names, disks, &mut partitions)?;
        events.push(Event { at_ns, action });
    }
    Ok(events)
}

fn check_event_time(
    at: &Spanned<Nanos>,
    previous: Option<u64>,
    until: Option<&Spanned<Nanos>>,
) -> Result<(), Problem> {
    let at_ns = at.get_ref().0;
    if let Some(previous) = previous.filter(|&p| p > at_ns) {
        return Err(Problem::at(
            at.span(),
            format!(
                "events must be in time order: this one at {} comes after one at {}",
                format_ns(at_ns),
                format_ns(previous)
            ),
        ));
    }
    if let Some(until) = until.filter(|u| u.get_ref().0 < at_ns) {
        return Err(Problem::at(
            at.span(),
            format!(
                "this event at {} is after the end of the run (until = {})",
                format_ns(at_ns),
                format_ns(until.get_ref().0)
            ),
        ));
    }
    Ok(())
}

impl RawEvent {
    /// The one thing the event does; `partitions` collects the partition names so far.
    fn action(
        self,
        span: Range<usize>,
        names: &Names,
        disks: &[usize],
        partitions: &mut BTreeSet<String>,
    ) -> Result<Action, Problem> {
        let given: Vec<(&str, Range<usize>)> = [
            ("partition", self.partition.as_ref().map(Spanned::span)),
            ("heal", self.heal.as_ref().map(Spanned::span)),
            ("link", self.link.as_ref().map(Spanned::span)),
            ("kill", self.kill.as_ref().map(Spanned::span)),
            ("restart", self.restart.as_ref().map(Spanned::span)),
            ("pause", self.pause.as_ref().map(Spanned::span)),
            ("resume", self.resume.as_ref().map(Spanned::span)),
            ("clock", self.clock.as_ref().map(Spanned::span)),
            ("disk", self.disk.as_ref().map(Spanned::span)),
        ]
        .into_iter()
        .filter_map(|(key, span)| Some((key, span?)))
        .collect();
        match given.as_slice() {
            [] => {
                return Err(Problem::at(
                    span,
                    "a timeline event needs one of `partition`, `heal`, `link`, `kill`, `restart`, `pause`, `resume`, `clock` or `disk`",
                ))
            }
            [(first, _), (second, span), ..] => {
                return Err(Problem::at(
                    span.clone(),
                    format!("an event does one thing, this one has `{first}` and `{second}`: use one [[timeline]] table for each"),
                ))
            }
            [_] => {}
        }
        // Options that only mean something beside their action.
        let partition_options = [
            ("one_way", self.one_way.as_ref().map(Spanned::span)),
            ("name", self.name.as_ref().map(Spanned::span)),
        ];
        let policy = [("policy", self.policy.as_ref().map(Spanned::span))];
        let pause_for = [("for", self.pause_for.as_ref().map(Spanned::span))];
        for (owner, present, options) in [
            (
                "partition",
                self.partition.is_some(),
                &partition_options[..],
            ),
            ("kill", self.kill.is_some(), &policy[..]),
            ("disk", self.disk.is_some(), &self.disk_fault_options()[..]),
            ("pause", self.pause.is_some(), &pause_for[..]),
            ("clock", self.clock.is_some(), &self.clock_options()[..]),
        ] {
            if !present {
                reject_misplaced(owner, options)?;
            }
        }
        if let Some(machine) = &self.pause {
            return Ok(Action::Pause {
                machine: names.index(machine)?,
                for_ns: self.pause_for.as_ref().map(|f| f.get_ref().0),
            });
        }
        if let Some(machine) = &self.resume {
            return Ok(Action::Resume {
                machine: names.index(machine)?,
            });
        }
        if let Some(machine) = &self.clock {
            return Ok(Action::Clock {
                machine: names.index(machine)?,
                change: self.check_clock_change(machine)?,
            });
        }
        if let Some(machine) = &self.kill {
            let policy = self.policy.as_ref().map(check_crash_policy).transpose()?;
            return Ok(Action::Kill {
                machine: names.index(machine)?,
                policy,
            });
        }
        if let Some(machine) = &self.restart {
            return Ok(Action::Restart {
                machine: names.index(machine)?,
            });
        }
        if let Some(disk) = &self.disk {
            return self.check_disk_fault(disk, names, disks);
        }
        if let Some(groups) = &self.partition {
            let partition = self.check_partition(groups, names, partitions.len())?;
            partitions.insert(partition.name.clone());
            Ok(Action::Partition(partition))
        } else if let Some(heal) = &self.heal {
            check_heal(heal, partitions).map(Action::Heal)
        } else if let Some(link) = &self.link {
            link.get_ref().check(link.span(), names).map(Action::Link)
        } else {
            unreachable!("exactly one action was found above")
        }
    }

    fn clock_options(&self) -> [(&'static str, Option<Range<usize>>); 3] {
        [
            ("rate", self.rate.as_ref().map(Spanned::span)),
            ("step", self.step.as_ref().map(Spanned::span)),
            ("offset", self.offset.as_ref().map(Spanned::span)),
        ]
    }

    /// `clock = "m1"` with exactly one of `rate`, `step` or `offset`.
    fn check_clock_change(&self, clock: &Spanned<String>) -> Result<ClockChange, Problem> {
        exactly_one(
            "clock",
            &self.clock_options(),
            clock.span(),
            "a clock event needs one of `rate` (\"+200ppm\"), `step` (\"-1.5s\") or `offset` (\"250ms\")",
        )?;
        let signed = |value: &Spanned<String>| {
            units::parse_signed_duration_ns(value.get_ref())
                .map_err(|e| Problem::at(value.span(), e))
        };
        if let Some(rate) = &self.rate {
            let ppm = units::parse_ppm(rate.get_ref()).map_err(|e| Problem::at(rate.span(), e))?;
            if ppm.abs() > crate::skew::MAX_RATE_PPM {
                return Err(Problem::at(
                    rate.span(),
                    format!(
                        "a clock rate within ±{}ppm (±50%), found {ppm}ppm",
                        crate::skew::MAX_RATE_PPM
                    ),
                ));
            }
            Ok(ClockChange::Rate { ppm })
        } else if let Some(step) = &self.step {
            Ok(ClockChange::Step {
                delta_ns: signed(step)?,
            })
        } else if let Some(offset) = &self.offset {
            Ok(ClockChange::Offset {
                offset_ns: signed(offset)?,
            })
        } else {
            unreachable!("exactly one option was found above")
        }
    }

    fn disk_fault_options(&self) -> [(&'static str, Option<Range<usize>>); 5] {
        [
            (
                "latent_errors",
                self.latent_errors.as_ref().map(Spanned::span),
            ),
            (
                "write_errors",
                self.write_errors.as_ref().map(Spanned::span),
            ),
            ("stall", self.stall.as_ref().map(Spanned::span)),
            ("slow", self.slow.as_ref().map(Spanned::span)),
            ("clear", self.clear.as_ref().map(Spanned::span)),
        ]
    }

    /// `disk = "m1/vda"` with exactly one fault key.
    fn check_disk_fault(
        &self,
        disk: &Spanned<String>,
        names: &Names,
        disks: &[usize],
    ) -> Result<Action, Problem> {
        let (machine, index) = resolve_disk(disk, names, disks)?;
        exactly_one(
            "disk",
            &self.disk_fault_options(),
            disk.span(),
            "a disk event needs one of `latent_errors`, `write_errors`, `stall`, `slow` or `clear`",
        )?;
        let fault = if let Some(range) = &self.latent_errors {
            let (start, count) = check_sector_range(range)?;
            Fault::LatentErrors { start, count }
        } else if let Some(range) = &self.write_errors {
            let (start, count) = check_sector_range(range)?;
            Fault::WriteErrors { start, count }
        } else if let Some(stall) = &self.stall {
            let at = self.at.get_ref().0;
            Fault::Stall {
                until_ns: at.saturating_add(stall.get_ref().0),
            }
        } else if let Some(slow) = &self.slow {
            Fault::Slow {
                extra_ns: slow.get_ref().0,
            }
        } else {
            match &self.clear {
                Some(clear) if !*clear.get_ref() => {
                    return Err(Problem::at(clear.span(), "`clear` can only be true"))
                }
                _ => Fault::Clear,
            }
        };
        Ok(Action::DiskFault {
            machine,
            disk: index,
            fault,
        })
    }

    fn check_partition(
        &self,
        groups: &Spanned<Vec<Vec<Spanned<String>>>>,
        names: &Names,
        earlier: usize,
    ) -> Result<Partition, Problem> {
        let name = match &self.name {
            Some(name) if name.get_ref() == "all" => {
                return Err(Problem::at(
                    name.span(),
                    "`all` is reserved for `heal = \"all\"`: choose another name",
                ))
            }
            Some(name) => name.get_ref().clone(),
            None => format!("partition-{}", earlier + 1),
        };
        Ok(Partition {
            name,
            groups: check_groups(groups, names)?,
            one_way: self.one_way.as_ref().is_some_and(|o| *o.get_ref()),
        })
    }
}

/// Resolves partition groups: non-empty, disjoint, at least two (one group means "against
/// everyone else").
fn check_groups(
    raw: &Spanned<Vec<Vec<Spanned<String>>>>,
    names: &Names,
) -> Result<Vec<Vec<usize>>, Problem> {
    let mut seen = BTreeSet::new();
    let mut groups = Vec::new();
    for group in raw.get_ref() {
        if group.is_empty() {
            return Err(Problem::at(raw.span(), "a partition group cannot be empty"));
        }
        let mut indices = Vec::new();
        for name in group {
            let index = names.index(name)?;
            if !seen.insert(index) {
                return Err(Problem::at(
                    name.span(),
                    format!("`{}` is in two partition groups", name.get_ref()),
                ));
            }
            indices.push(index);
        }
        groups.push(indices);
    }
    if groups.len() == 1 {
        let rest: Vec<usize> = (0..names.0.len()).filter(|i| !seen.contains(i)).collect();
        groups.push(rest);
    }
    if groups.len() < 2 || groups.iter().any(Vec::is_empty) {
        return Err(Problem::at(
            raw.span(),
            "a partition needs two sides, like [[\"m1\"], [\"m2\", \"m3\"]]",
        ));
    }
    Ok(groups)
}

/// `START+COUNT` sectors.
fn check_sector_range(range: &Spanned<String>) -> Result<(u64, u64), Problem> {
    let text = range.get_ref();
    text.split_once('+')
        .and_then(|(start, count)| Some((start.trim().parse().ok()?, count.trim().parse().ok()?)))
        .filter(|&(_, count): &(u64, u64)| count > 0)
        .ok_or_else(|| {
            Problem::at(
                range.span(),
                format!("`{text}` is not a sector range: write START+COUNT, like \"2048+64\""),
            )
        })
}

fn check_heal(heal: &Spanned<String>, partitions: &BTreeSet<String>) -> Result<Heal, Problem> {
    let name = heal.get_ref();
    if name == "all" {
        return Ok(Heal::All);
    }
    if !partitions.contains(name) {
        let known: Vec<&str> = partitions.iter().map(String::as_str).collect();
        return Err(Problem::at(
            heal.span(),
            format!(
                "no partition named `{name}` before this event: use \"all\" or one of: {}",
                if known.is_empty() {
                    "(none)".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        ));
    }
    Ok(Heal::Named(name.clone()))
}

// ---------------------------------------------------------------------------------------------
// Values with units

/// A value written as a number, a string with a unit, or both, as scenario files allow.
trait Quantity: Sized {
    /// What the file should have said, for errors.
    const EXPECTING: &'static str;

    fn from_text(text: &str) -> Result<Self, String>;

    fn from_integer(value: i64) -> Result<Self, String> {
        Err(format!(
            "expected {}, found the number {value}",
            Self::EXPECTING
        ))
    }

    fn from_float(value: f64) -> Result<Self, String> {
        Err(format!(
            "expected {}, found the number {value}",
            Self::EXPECTING
        ))
    }
}

struct QuantityVisitor<T>(PhantomData<T>);

impl<T: Quantity> Visitor<'_> for QuantityVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        T::from_text(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::from_integer(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        i64::try_from(v)
            .map_err(|_| E::custom(format!("{v} is too large")))
            .and_then(|v| self.visit_i64(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        T::from_float(v).map_err(E::custom)
    }
}

macro_rules! deserialize_quantity {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(QuantityVisitor(PhantomData))
            }
        }
    )*};
}

deserialize_quantity!(Nanos, Probability, Bandwidth, ByteSize, Expect);

/// A virtual duration in nanoseconds.
#[derive(Clone, Copy, Debug)]
struct Nanos(u64);

impl Quantity for Nanos {
    const EXPECTING: &'static str = units::DURATION_EXPECTING;

    fn from_text(text: &str) -> Result<Self, String> {
        units::parse_duration_ns(text).map(Nanos)
    }

    fn from_integer(value: i64) -> Result<Self, String> {
        match value {
            0 => Ok(Nanos(0)),
            _ => Err(format!(
                "a duration needs a unit: write \"{value}s\" or \"{value}ms\""
            )),
        }
    }
}

/// A probability in `[0, 1]` in thousandths, rounded (the guest kernel's `simvm_chaos=`).
// A whole number in [0, 1000] (`as` turns NaN into 0): nothing to truncate.
#[allow(clippy::cast_possible_truncation)]
pub fn per_mille(probability: f64) -> u32 {
    (probability.clamp(0.0, 1.0) * 1000.0).round() as u32
}

/// Thousandths as the percentage [`per_mille`] reads back: `"2.5%"`.
pub fn format_per_mille(per_mille: u32) -> String {
    format!("{}%", f64::from(per_mille) / 10.0)
}

/// A probability in `[0, 1]`.
#[derive(Clone, Copy, Debug)]
struct Probability(f64);

impl Quantity for Probability {
    const EXPECTING: &'static str = "a probability like 0.01 or \"1%\"";

    fn from_text(text: &str) -> Result<Self, String> {
        let percent = text
            .trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
            .ok_or_else(|| format!("expected {}, found {text:?}", Self::EXPECTING))?;
        Self::from_float(percent / 100.0)
    }

    fn from_integer(value: i64) -> Result<Self, String> {
        // Exact for every integer that passes the range check.
        Self::from_float(value as f64)
    }

    fn from_float(value: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&value) {
            Ok(Probability(value))
        } else {
            Err(format!(
                "a probability must be between 0 and 1 (or \"0%\" and \"100%\"), found {value}"
            ))
        }
    }
}

/// Bits per second; 0 is unlimited.
#[derive(Clone, Copy, Debug)]
struct Bandwidth(u64);

impl Quantity for Bandwidth {
    const EXPECTING: &'static str =
        "a bandwidth like \"100Mbit\" (units bit, kbit, Mbit, Gbit per second) or \"unlimited\"";

    fn from_text(text: &str) -> Result<Self, String> {
        if text.trim() == "unlimited" {
            return Ok(Bandwidth(0));
        }
        match parse_scaled(text, BANDWIDTH_UNITS) {
            Ok(0) => Err("a bandwidth of 0 carries nothing: use \"unlimited\" for no limit or `up = false` for a dead link".to_owned()),
            Ok(bps) => Ok(Bandwidth(bps)),
            Err(e) => Err(e.describe(text, Self::EXPECTING, "a bandwidth")),
        }
    }
}

/// A memory size in bytes.
#[derive(Clone, Copy, Debug)]
struct ByteSize(u64);

impl Quantity for ByteSize {
    const EXPECTING: &'static str = units::SIZE_EXPECTING;

    fn from_text(text: &str) -> Result<Self, String> {
        units::parse_size(text).map(ByteSize)
    }

    fn from_integer(value: i64) -> Result<Self, String> {
        u64::try_from(value)
            .map(ByteSize)
            .map_err(|_| "a size cannot be negative".to_owned())
    }
}

impl Quantity for Expect {
    const EXPECTING: &'static str = "an exit status (0 to 255), \"running\" or \"any\"";

    fn from_text(text: &str) -> Result<Self, String> {
        match text {
            "running" => Ok(Expect::Running),
            "any" => Ok(Expect::Any),
            _ => Err(format!("expected {}, found {text:?}", Self::EXPECTING)),
        }
    }

    fn from_integer(value: i64) -> Result<Self, String> {
        u8::try_from(value)
            .map(Expect::Exit)
            .map_err(|_| format!("expected {}, found {value}", Self::EXPECTING))
    }
}

/// The guest receives its argument list NUL-separated.
const NUL_IN_COMMAND: &str = "the command contains a NUL character, which no argument can hold";

/// A command: a shell line (run with `sh -c`) or an argument list.
#[derive(Clone, Debug)]
struct Command(Vec<String>);

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CommandVisitor)
    }
}

struct CommandVisitor;

impl<'de> Visitor<'de> for CommandVisitor {
    type Value = Command;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a shell command line or a list of arguments, like [\"httpd\", \"-f\"]")
    }

    fn visit_str<E: de::Error>(self, line: &str) -> Result<Command, E> {
        if line.trim().is_empty() {
            return Err(E::custom("the command is empty"));
        }
        if line.contains('\0') {
            return Err(E::custom(NUL_IN_COMMAND));
        }
        Ok(Command(vec!["sh".into(), "-c".into(), line.into()]))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Command, A::Error> {
        let mut argv = Vec::new();
        while let Some(arg) = seq.next_element::<String>()? {
            argv.push(arg);
        }
        if argv.iter().any(|arg| arg.contains('\0')) {
            return Err(de::Error::custom(NUL_IN_COMMAND));
        }
        match argv.first() {
            Some(program) if !program.is_empty() => Ok(Command(argv)),
            _ => Err(de::Error::custom(
                "the command needs a program as its first element",
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writing a scenario back as TOML

/// Writes the scenario in the file format; parsing the result gives the same scenario.
impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let text = toml::to_string(&self.to_table()).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

impl Scenario {
    fn to_table(&self) -> Table {
        let mut root = Table::new();
        if let Some(description) = &self.description {
            root.insert("description".into(), description.clone().into());
        }
        if let Some(until) = self.until_ns {
            root.insert("until".into(), format_ns(until).into());
        }
        if self.crash_policy != CrashPolicy::default() {
            root.insert("crash_policy".into(), self.crash_policy.to_string().into());
        }
        if self.clock_spread_ns != DEFAULT_CLOCK_SPREAD_NS {
            root.insert(
                "clock_spread".into(),
                format_ns(self.clock_spread_ns).into(),
            );
        }
        if self.aslr {
            root.insert("aslr".into(), true.into());
        }
        if self.chaos_per_mille != 0 {
            root.insert(
                "chaos".into(),
                format_per_mille(self.chaos_per_mille).into(),
            );
        }
        if self.start_spread_ns != DEFAULT_START_SPREAD_NS {
            root.insert(
                "start_spread".into(),
                format_ns(self.start_spread_ns).into(),
            );
        }
        let mut network = settings_table(&self.network.defaults);
        let links: Vec<Value> = (self.network.links.iter())
            .map(|o| self.link_table(o).into())
            .collect();
        if !links.is_empty() {
            network.insert("link".into(), links.into());
        }
        root.insert("network".into(), network.into());
        let machines: Vec<Value> = self
            .machines
            .iter()
            .map(|m| machine_table(m).into())
            .collect();
        root.insert("machine".into(), machines.into());
        if let Some(nemesis) = &self.nemesis {
            let mut table = Table::new();
            let faults: Vec<Value> = nemesis.faults.iter().map(|k| k.name().into()).collect();
            table.insert("faults".into(), faults.into());
            table.insert("interval".into(), format_ns(nemesis.interval_ns).into());
            table.insert("duration".into(), format_ns(nemesis.duration_ns).into());
            table.insert("quiet".into(), format_ns(nemesis.quiet_ns).into());
            if nemesis.start_ns > 0 {
                table.insert("start".into(), format_ns(nemesis.start_ns).into());
            }
            if let Some(targets) = &nemesis.machines {
                let names: Vec<Value> = (targets.iter())
                    .map(|&m| self.machines[m].name.clone().into())
                    .collect();
                table.insert("machines".into(), names.into());
            }
            root.insert("nemesis".into(), table.into());
        }
        if let Some(check) = &self.check {
            let mut table = Table::new();
            let machine = &self.machines[check.machine].name;
            let disk = crate::machine::disk_name(check.disk);
            table.insert("history".into(), format!("{machine}/{disk}").into());
            table.insert("model".into(), check.model.to_string().into());
            table.insert("timeout".into(), format_ns(check.timeout_ns).into());
            root.insert("check".into(), table.into());
        }
        if !self.timeline.is_empty() {
            let events: Vec<Value> = self
                .timeline
                .iter()
                .map(|e| self.event_table(e).into())
                .collect();
            root.insert("timeline".into(), events.into());
        }
        root
    }

    /// `events` as `[[timeline]]` tables of this scenario's file format (to print a generated
    /// schedule that a person can read, or paste into a scenario).
    pub fn timeline_toml(&self, events: &[Event]) -> String {
        let tables: Vec<Value> = events.iter().map(|e| self.event_table(e).into()).collect();
        let mut root = Table::new();
        root.insert("timeline".into(), tables.into());
        toml::to_string(&root).unwrap_or_default()
    }

    fn name(&self, index: usize) -> Value {
        self.machines
            .get(index)
            .map_or_else(|| format!("#{index}"), |m| m.name.clone())
            .into()
    }

    fn link_table(&self, o: &LinkOverride) -> Table {
        let mut table = settings_table(&o.settings);
        if let Some(from) = o.links.from {
            table.insert("from".into(), self.name(from));
        }
        if let Some(to) = o.links.to {
            table.insert("to".into(), self.name(to));
        }
        if o.links.both {
            table.insert("both".into(), true.into());
        }
        table
    }

    fn event_table(&self, event: &Event) -> Table {
        let mut table = Table::new();
        table.insert("at".into(), format_ns(event.at_ns).into());
        match &event.action {
            Action::Partition(p) => {
                let groups: Vec<Value> = (p.groups.iter())
                    .map(|g| g.iter().map(|&i| self.name(i)).collect::<Vec<_>>().into())
                    .collect();
                table.insert("partition".into(), groups.into());
                table.insert("name".into(), p.name.clone().into());
                if p.one_way {
                    table.insert("one_way".into(), true.into());
                }
            }
            Action::Heal(Heal::All) => {
                table.insert("heal".into(), "all".into());
            }
            Action::Heal(Heal::Named(name)) => {
                table.insert("heal".into(), name.clone().into());
            }
            Action::Link(o) => {
                table.insert("link".into(), self.link_table(o).into());
            }
            Action::Kill { machine, policy } => {
                table.insert("kill".into(), self.name(*machine));
                if let Some(policy) = policy {
                    table.insert("policy".into(), policy.to_string().into());
                }
            }
            Action::Restart { machine } => {
                table.insert("restart".into(), self.name(*machine));
            }
            Action::Pause { machine, for_ns } => {
                table.insert("pause".into(), self.name(*machine));
                if let Some(for_ns) = for_ns {
                    table.insert("for".into(), format_ns(*for_ns).into());
                }
            }
            Action::Resume { machine } => {
                table.insert("resume".into(), self.name(*machine));
            }
            Action::Clock { machine, change } => {
                table.insert("clock".into(), self.name(*machine));
                let (key, value) = match *change {
                    ClockChange::Rate { ppm } => ("rate", units::format_ppm(ppm)),
                    ClockChange::Step { delta_ns } => ("step", units::format_signed_ns(delta_ns)),
                    ClockChange::Offset { offset_ns } => {
                        ("offset", units::format_signed_ns(offset_ns))
                    }
                };
                table.insert(key.into(), value.into());
            }
            Action::DiskFault {
                machine,
                disk,
                fault,
            } => {
                let name = format!(
                    "{}/{}",
                    self.name(*machine).as_str().unwrap_or("?"),
                    crate::machine::disk_name(*disk)
                );
                table.insert("disk".into(), name.into());
                let (key, value): (&str, Value) = match *fault {
                    Fault::LatentErrors { start, count } => {
                        ("latent_errors", format!("{start}+{count}").into())
                    }
                    Fault::WriteErrors { start, count } => {
                        ("write_errors", format!("{start}+{count}").into())
                    }
                    Fault::Stall { until_ns } => (
                        "stall",
                        format_ns(until_ns.saturating_sub(event.at_ns)).into(),
                    ),
                    Fault::Slow { extra_ns } => ("slow", format_ns(extra_ns).into()),
                    Fault::Clear => ("clear", true.into()),
                };
                table.insert(key.into(), value);
            }
        }
        table
    }
}

fn machine_table(machine: &Machine) -> Table {
    let mut table = Table::new();
    table.insert("name".into(), machine.name.clone().into());
    table.insert("command".into(), machine.argv.clone().into());
    if let Some(recipe) = &machine.recipe {
        table.insert("recipe".into(), recipe.clone().into());
    }
    if let Some(memory) = machine.memory.and_then(|m| i64::try_from(m).ok()) {
        table.insert("memory".into(), memory.into());
    }
    if !machine.env.is_empty() {
        let env: Table = (machine.env.iter())
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        table.insert("env".into(), env.into());
    }
    let expect: Value = match machine.expect {
        Expect::Exit(code) => i64::from(code).into(),
        Expect::Running => "running".into(),
        Expect::Any => "any".into(),
    };
    table.insert("expect".into(), expect);
    if !machine.disks.is_empty() {
        let disks: Vec<Value> = machine.disks.iter().map(|d| disk_table(d).into()).collect();
        table.insert("disks".into(), disks.into());
    }
    table
}

fn disk_table(disk: &DiskSpec) -> Table {
    let mut table = Table::new();
    if let Some(size) = disk.size.and_then(|s| i64::try_from(s).ok()) {
        table.insert("size".into(), size.into());
    }
    match &disk.contents {
        DiskContents::Raw => {
            table.insert("fs".into(), "raw".into());
        }
        DiskContents::Ext4 { dir } => {
            if let Some(dir) = dir {
                table.insert("dir".into(), dir.display().to_string().into());
            }
        }
        DiskContents::Image(path) => {
            table.insert("image".into(), path.display().to_string().into());
        }
        DiskContents::Recipe(recipe) => {
            table.insert("recipe".into(), recipe.clone().into());
        }
    }
    if let Some(mount) = &disk.mount {
        table.insert("mount".into(), mount.clone().into());
    }
    table.insert("latency".into(), format_ns(disk.latency.min_ns).into());
    table.insert(
        "latency_mean".into(),
        format_ns(disk.latency.mean_ns).into(),
    );
    table
}

fn settings_table(s: &LinkSettings) -> Table {
    let entries: [(&str, Option<Value>); 7] = [
        ("latency", s.latency_ns.map(|n| format_ns(n).into())),
        ("jitter", s.jitter_ns.map(|n| format_ns(n).into())),
        ("loss", s.loss.map(Value::from)),
        ("duplicate", s.duplicate.map(Value::from)),
        (
            "bandwidth",
            s.bandwidth_bps.map(|b| format_bandwidth(b).into()),
        ),
        ("reorder", s.reorder.map(Value::from)),
        ("up", s.up.map(Value::from)),
    ];
    entries
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_owned(), value?)))
        .collect()
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
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
                }) if file == "s.toml"
                    && (line, column) == position
                    && message.contains(needle) => {}
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
}
