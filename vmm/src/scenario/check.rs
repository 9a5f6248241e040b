//! Checks: from the file as written ([`super::raw`]) to the model, each finding with its span.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::PathBuf;

use simvm_devices::disk::{CrashPolicy, Fault, Latency, UnknownCrashPolicy};
use toml::Spanned;

use crate::nemesis::{self, FaultKind, Nemesis};
use crate::units::{self, format_ns};

use super::*;

impl RawScenario {
    /// `until_given`: the command line ends the run if the file does not.
    pub(super) fn check(self, until_given: bool) -> Result<Scenario, Problem> {
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
pub(super) fn check_nemesis(
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
pub(super) fn resolve_disk(
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
pub(super) fn check_nemesis_machines(
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
pub(super) fn reject_misplaced(
    owner: &str,
    options: &[(&str, Option<Range<usize>>)],
) -> Result<(), Problem> {
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
pub(super) fn exactly_one(
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
pub(super) struct Names(Vec<String>);

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

pub(super) fn check_machines(raw: Vec<Spanned<RawMachine>>) -> Result<Vec<Machine>, Problem> {
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
pub(super) fn machine_count(raw: &RawMachine) -> Result<usize, Problem> {
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
        for (later, raw) in self.disks.iter().enumerate() {
            let Some(mount) = &raw.get_ref().mount else {
                continue;
            };
            if disks[..later]
                .iter()
                .any(|d| d.mount.as_ref() == Some(mount.get_ref()))
            {
                return Err(Problem::at(
                    mount.span(),
                    format!("two disks are mounted at {}", mount.get_ref()),
                ));
            }
        }
        assign_mounts(&mut disks);
        Ok(disks)
    }
}

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
pub(super) fn check_mount_point(mount: &Spanned<String>) -> Result<String, Problem> {
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

pub(super) fn check_crash_policy(policy: &Spanned<String>) -> Result<CrashPolicy, Problem> {
    policy
        .get_ref()
        .parse()
        .map_err(|e: UnknownCrashPolicy| Problem::at(policy.span(), e.to_string()))
}

/// Guest RAM is mapped in whole pages.
pub(super) fn check_memory(memory: &Spanned<ByteSize>) -> Result<u64, Problem> {
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
pub(super) fn check_host_name(name: &Spanned<String>) -> Result<String, Problem> {
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
    if [crate::world::NET_SOURCE, crate::world::FAULT_SOURCE].contains(&text.as_str()) {
        return Err(Problem::at(
            name.span(),
            format!("`{text}` labels simvm's own console lines (the network's and the faults' events): name the machine otherwise"),
        ));
    }
    Ok(text.clone())
}

pub(super) fn check_env(key: &str, value: &Spanned<String>) -> Result<(), Problem> {
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

pub(super) fn check_timeline(
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

pub(super) fn check_event_time(
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
            let ns = units::parse_signed_duration_ns(value.get_ref())
                .map_err(|e| Problem::at(value.span(), e))?;
            if ns.unsigned_abs() > crate::skew::MAX_STEP_NS.unsigned_abs() {
                return Err(Problem::at(
                    value.span(),
                    format!(
                        "a clock step or offset within ±{}d (50 years; Linux keeps no wall \
                         clock before 1970 or past 2232), found {}",
                        crate::skew::MAX_STEP_NS / 86_400_000_000_000,
                        value.get_ref()
                    ),
                ));
            }
            Ok(ns)
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
pub(super) fn check_groups(
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
pub(super) fn check_sector_range(range: &Spanned<String>) -> Result<(u64, u64), Problem> {
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

pub(super) fn check_heal(
    heal: &Spanned<String>,
    partitions: &BTreeSet<String>,
) -> Result<Heal, Problem> {
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
