//! Writing a scenario back as TOML: parsing the result gives the same scenario.

use std::fmt;

use simvm_devices::disk::{CrashPolicy, Fault};
use toml::{Table, Value};

use crate::units::{self, format_bandwidth, format_ns};

use super::*;

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

pub(super) fn machine_table(machine: &Machine) -> Table {
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

pub(super) fn disk_table(disk: &DiskSpec) -> Table {
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

pub(super) fn settings_table(s: &LinkSettings) -> Table {
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
