//! The world's network: the switch, the frames in flight, the timeline of network faults and
//! the packet capture.
//!
//! Frames in flight wait in a queue ordered by arrival time (ties by the order they were sent).
//! The world delivers a machine's due frames just before it steps that machine; see
//! `docs/design.md` for why the switch's minimum latency makes this causal.

// Values from guests (exit data, frames, requests) must not be truncated silently.
#![warn(clippy::cast_possible_truncation)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use simvm_devices::net::pcapng::{Direction, Packet, PcapngWriter};
use simvm_devices::net::switch::{
    link_seed_from_master, Cut, Delivery, DropReason, LinkConfig, MachineCounters, Switch,
};
use simvm_devices::net::{Frame, MachineId};
use simvm_devices::virtio::net::RxDrop;

use crate::error::{Error, Result};
use crate::seed::Seed;

/// A change to the network at a virtual time.
#[derive(Clone, Debug, PartialEq)]
pub enum NetAction {
    /// Cut `a` from `b` (both ways, or only `a -> b`) under `name`.
    Partition {
        name: String,
        a: Vec<usize>,
        b: Vec<usize>,
        cut: Cut,
    },
    /// Remove the partition `name` (and every partition named `name/...`), or every partition.
    Heal { name: Option<String> },
    /// Change some settings of the directed link `from -> to`, keeping the others as they are.
    PatchLink {
        from: usize,
        to: usize,
        patch: LinkPatch,
    },
}

/// A partial link configuration: the settings to change (`None` keeps the link's own). Loss and
/// duplication are probabilities in `[0, 1]`; a bandwidth of 0 is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkPatch {
    pub latency_ns: Option<u64>,
    pub jitter_ns: Option<u64>,
    pub loss: Option<f64>,
    pub duplicate: Option<f64>,
    pub bandwidth_bps: Option<u64>,
    pub reorder: Option<bool>,
    pub up: Option<bool>,
}

/// `latency=2000000ns loss=0.5 up=false`: the settings the patch gives.
impl std::fmt::Display for LinkPatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        let mut ns = |name: &str, v: Option<u64>| {
            if let Some(v) = v {
                parts.push(format!("{name}={v}ns"));
            }
        };
        ns("latency", self.latency_ns);
        ns("jitter", self.jitter_ns);
        if let Some(p) = self.loss {
            parts.push(format!("loss={p}"));
        }
        if let Some(p) = self.duplicate {
            parts.push(format!("duplicate={p}"));
        }
        if let Some(b) = self.bandwidth_bps {
            parts.push(format!("bandwidth={b}bit/s"));
        }
        if let Some(r) = self.reorder {
            parts.push(format!("reorder={r}"));
        }
        if let Some(u) = self.up {
            parts.push(format!("up={u}"));
        }
        if parts.is_empty() {
            return f.write_str("no change");
        }
        f.write_str(&parts.join(" "))
    }
}

impl LinkPatch {
    /// This patch with `later`'s given settings on top.
    pub fn then(self, later: LinkPatch) -> LinkPatch {
        LinkPatch {
            latency_ns: later.latency_ns.or(self.latency_ns),
            jitter_ns: later.jitter_ns.or(self.jitter_ns),
            loss: later.loss.or(self.loss),
            duplicate: later.duplicate.or(self.duplicate),
            bandwidth_bps: later.bandwidth_bps.or(self.bandwidth_bps),
            reorder: later.reorder.or(self.reorder),
            up: later.up.or(self.up),
        }
    }

    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == LinkPatch::default()
    }

    /// `base` with this patch's settings applied.
    pub fn apply(&self, base: LinkConfig) -> LinkConfig {
        LinkConfig {
            latency_ns: self.latency_ns.unwrap_or(base.latency_ns),
            jitter_ns: self.jitter_ns.unwrap_or(base.jitter_ns),
            loss: self.loss.unwrap_or(base.loss),
            duplicate: self.duplicate.unwrap_or(base.duplicate),
            bandwidth_bps: self.bandwidth_bps.unwrap_or(base.bandwidth_bps),
            reorder: self.reorder.unwrap_or(base.reorder),
            up: self.up.unwrap_or(base.up),
        }
    }
}

/// How the network of a run is set up.
#[derive(Clone, Debug, Default)]
pub struct NetworkConfig {
    pub defaults: LinkConfig,
    /// Directed links that differ from the defaults.
    pub links: Vec<(usize, usize, LinkConfig)>,
    /// Network events, at virtual times in ns, in order.
    pub timeline: Vec<(u64, NetAction)>,
}

/// What happened to a frame, for the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetEvent {
    Sent {
        from: usize,
        len: usize,
        fingerprint: u64,
    },
    Dropped {
        from: usize,
        to: usize,
        reason: DropReason,
    },
    Applied(crate::trace::Note),
}

pub struct Network {
    switch: Switch,
    in_flight: BinaryHeap<Reverse<(u64, u64, usize)>>,
    deliveries: BTreeMap<u64, Delivery>,
    next_seq: u64,
    timeline: Vec<(u64, NetAction)>,
    next_action: usize,
    /// Names of the active partitions, for healing by prefix.
    partitions: Vec<String>,
    /// The machines' names, by index: the timeline's actions are described with them.
    names: Vec<String>,
    pcap: Option<PcapngWriter<BufWriter<File>>>,
}

impl Network {
    pub fn new(
        seed: Seed,
        names: &[String],
        config: &NetworkConfig,
        pcap: Option<&Path>,
    ) -> Result<Self> {
        let machines = names.len();
        let count = u16::try_from(machines)
            .map_err(|_| Error::Network(format!("{machines} machines is too many")))?;
        let network_seed = seed.key("network");
        let mut switch = Switch::new(count, config.defaults, |from, to| {
            link_seed_from_master(network_seed, from, to)
        })
        .map_err(|e| Error::Network(e.to_string()))?;
        for &(from, to, link) in &config.links {
            switch
                .set_link(id(from), id(to), link)
                .map_err(|e| Error::Network(e.to_string()))?;
        }
        let pcap = match pcap {
            Some(path) => {
                let file = File::create(path).map_err(|e| Error::Pcap {
                    path: path.to_owned(),
                    source: e,
                })?;
                Some(
                    PcapngWriter::new(BufWriter::new(file), count).map_err(|e| Error::Pcap {
                        path: path.to_owned(),
                        source: e,
                    })?,
                )
            }
            None => None,
        };
        Ok(Self {
            switch,
            in_flight: BinaryHeap::new(),
            deliveries: BTreeMap::new(),
            next_seq: 0,
            timeline: config.timeline.clone(),
            next_action: 0,
            partitions: Vec::new(),
            names: names.to_vec(),
            pcap,
        })
    }

    /// Whether no frame is on its way: the network holds nothing a snapshot would have to keep.
    pub fn is_quiet(&self) -> bool {
        self.in_flight.is_empty() && self.deliveries.is_empty()
    }

    /// The network's timeline: its events, at virtual times in ns, in order.
    pub fn timeline(&self) -> &[(u64, NetAction)] {
        &self.timeline
    }

    /// How many timeline actions have been applied.
    pub fn actions_applied(&self) -> usize {
        self.next_action
    }

    /// Applies the first `count` timeline actions again, silently: a network continued from a
    /// snapshot gets the links and partitions the saved one had.
    pub fn replay_timeline(&mut self, count: usize) -> Result<()> {
        while self.next_action < count.min(self.timeline.len()) {
            let (_, action) = self.timeline[self.next_action].clone();
            self.apply(action)?;
            self.next_action += 1;
        }
        Ok(())
    }

    /// Applies the timeline's actions due at or before `now`; returns what was applied.
    pub fn apply_timeline(&mut self, now: u64) -> Result<Vec<NetEvent>> {
        let mut applied = Vec::new();
        while let Some((at, action)) = self.timeline.get(self.next_action) {
            if *at > now {
                break;
            }
            let action = action.clone();
            let stable = stable_action(&action);
            let description = self.apply(action)?;
            applied.push(NetEvent::Applied(crate::trace::Note::new(
                description,
                stable,
            )));
            self.next_action += 1;
        }
        Ok(applied)
    }

    fn apply(&mut self, action: NetAction) -> Result<String> {
        let names = &self.names;
        let name = |i: usize| names.get(i).cloned().unwrap_or_else(|| id(i).to_string());
        let describe = |ids: &[usize]| ids.iter().map(|&i| name(i)).collect::<Vec<_>>().join(",");
        let result = match &action {
            NetAction::Partition { name, a, b, cut } => {
                let a_ids: Vec<MachineId> = a.iter().map(|&i| id(i)).collect();
                let b_ids: Vec<MachineId> = b.iter().map(|&i| id(i)).collect();
                let arrow = if *cut == Cut::OneWay { "->" } else { "<->" };
                if !self.partitions.contains(name) {
                    self.partitions.push(name.clone());
                }
                self.switch.partition(name, &a_ids, &b_ids, *cut).map(|()| {
                    format!(
                        "partition {name}: {{{}}} {arrow} {{{}}} cut",
                        describe(a),
                        describe(b)
                    )
                })
            }
            NetAction::Heal { name: Some(name) } => {
                let prefix = format!("{name}/");
                for partition in self
                    .partitions
                    .iter()
                    .filter(|p| *p == name || p.starts_with(&prefix))
                {
                    self.switch.heal(partition);
                }
                self.partitions
                    .retain(|p| p != name && !p.starts_with(&prefix));
                Ok(format!("heal {name}"))
            }
            NetAction::Heal { name: None } => {
                self.switch.heal_all();
                self.partitions.clear();
                Ok("heal all partitions".to_string())
            }
            NetAction::PatchLink { from, to, patch } => self
                .switch
                .link_config(id(*from), id(*to))
                .and_then(|current| {
                    self.switch
                        .set_link(id(*from), id(*to), patch.apply(current))
                })
                .map(|()| format!("link {}->{}: {patch}", name(*from), name(*to))),
        };
        result.map_err(|e| Error::Network(e.to_string()))
    }

    /// The next arrival time for `machine`, if a frame is in flight to it.
    pub fn next_arrival(&self, machine: usize) -> Option<u64> {
        // The heap is ordered by time for all machines; a per-machine minimum needs a scan, but
        // the number of frames in flight is small (bounded by the machines' queues).
        self.in_flight
            .iter()
            .filter(|Reverse((_, _, to))| *to == machine)
            .map(|Reverse((at, _, _))| *at)
            .min()
    }

    /// The earliest timeline action still to come.
    pub fn next_action_at(&self) -> Option<u64> {
        self.timeline.get(self.next_action).map(|(at, _)| *at)
    }

    /// The least virtual time a frame takes between two machines now: the lookahead of
    /// docs/design.md "Many machines".
    pub fn min_latency_ns(&self) -> u64 {
        self.switch.min_latency_ns()
    }

    /// Hands a frame sent by `from` at `now` to the switch.
    pub fn send(&mut self, from: usize, frame: Frame, now: u64) -> Result<Vec<NetEvent>> {
        let mut events = vec![NetEvent::Sent {
            from,
            len: frame.data.len(),
            fingerprint: fingerprint(&frame.data),
        }];
        self.capture(from, now, Direction::Outbound, None, &frame.data)?;
        let outcome = self
            .switch
            .send(id(from), frame.clone(), now)
            .map_err(|e| Error::Network(e.to_string()))?;
        for drop in outcome.drops {
            let to = drop.to.index();
            events.push(NetEvent::Dropped {
                from,
                to,
                reason: drop.reason,
            });
            self.capture(to, now, Direction::Inbound, Some(drop.reason), &frame.data)?;
        }
        for delivery in outcome.deliveries {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.in_flight
                .push(Reverse((delivery.at_ns, seq, delivery.to.index())));
            self.deliveries.insert(seq, delivery);
        }
        Ok(events)
    }

    /// Removes and returns the frames due at `machine` by `now`, in arrival order.
    pub fn take_due(&mut self, machine: usize, now: u64) -> Vec<Delivery> {
        let mut due = Vec::new();
        let mut keep = Vec::new();
        while let Some(Reverse((at, seq, to))) = self.in_flight.peek().copied() {
            if at > now {
                break;
            }
            self.in_flight.pop();
            if to == machine {
                if let Some(delivery) = self.deliveries.remove(&seq) {
                    due.push(delivery);
                }
            } else {
                keep.push(Reverse((at, seq, to)));
            }
        }
        self.in_flight.extend(keep);
        due
    }

    /// Records what the receiving NIC did with a delivery.
    /// Records what the receiving NIC did with a delivery: took it, or dropped it and why.
    pub fn delivered(
        &mut self,
        delivery: &Delivery,
        result: std::result::Result<(), RxDrop>,
    ) -> Result<()> {
        let to = delivery.to.index();
        let dropped = result.err().map(DropReason::from);
        self.capture(
            to,
            delivery.at_ns,
            Direction::Inbound,
            dropped,
            &delivery.frame.data,
        )?;
        let report = match result {
            Ok(()) => self.switch.report_delivered(delivery),
            Err(why) => self.switch.report_dropped(delivery, why),
        };
        report.map_err(|e| Error::Network(e.to_string()))
    }

    pub fn counters(&self, machine: usize) -> Option<MachineCounters> {
        self.switch.machine_counters(id(machine)).ok()
    }

    /// Flushes the capture file.
    pub fn finish(&mut self) -> Result<()> {
        if let Some(pcap) = &mut self.pcap {
            pcap.flush()
                .map_err(|e| Error::Network(format!("writing the packet capture: {e}")))?;
        }
        Ok(())
    }

    fn capture(
        &mut self,
        machine: usize,
        at: u64,
        direction: Direction,
        dropped: Option<DropReason>,
        data: &[u8],
    ) -> Result<()> {
        if let Some(pcap) = &mut self.pcap {
            let packet = Packet {
                machine: id(machine),
                timestamp_ns: at,
                direction,
                dropped,
                data,
            };
            pcap.write_packet(&packet)
                .map_err(|e| Error::Network(format!("writing the packet capture: {e}")))?;
        }
        Ok(())
    }
}

fn id(index: usize) -> MachineId {
    // The world has at most 64 machines (`Network::new` checks the count fits a u16).
    MachineId(u16::try_from(index).unwrap_or(u16::MAX))
}

/// A 64-bit fingerprint of a frame's bytes, folded into the trace instead of the whole frame.
pub fn fingerprint(data: &[u8]) -> u64 {
    let hash = blake3::hash(data);
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

/// The digest's bytes for a network action: its kind and every field, never its text.
fn stable_action(action: &NetAction) -> crate::trace::Stable {
    use crate::trace::Stable;
    let list = |stable: Stable, ids: &[usize]| {
        ids.iter()
            .fold(stable.u64(ids.len() as u64), |s, &i| s.u64(i as u64))
    };
    match action {
        NetAction::Partition { name, a, b, cut } => {
            let stable = Stable::new(1).str(name);
            let stable = list(list(stable, a), b);
            stable.u64(u64::from(*cut == Cut::OneWay))
        }
        NetAction::Heal { name } => Stable::new(2)
            .str(name.as_deref().unwrap_or(""))
            .u64(u64::from(name.is_some())),
        NetAction::PatchLink { from, to, patch } => Stable::new(3)
            .u64(*from as u64)
            .u64(*to as u64)
            .opt_u64(patch.latency_ns)
            .opt_u64(patch.jitter_ns)
            .opt_u64(patch.loss.map(f64::to_bits))
            .opt_u64(patch.duplicate.map(f64::to_bits))
            .opt_u64(patch.bandwidth_bps)
            .opt_u64(patch.reorder.map(u64::from))
            .opt_u64(patch.up.map(u64::from)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_actions_are_described_with_the_machines_names() {
        let names = ["beta".to_string(), "alpha".to_string()];
        let config = NetworkConfig {
            defaults: LinkConfig::default(),
            links: Vec::new(),
            timeline: vec![
                (
                    1,
                    NetAction::Partition {
                        name: "p".into(),
                        a: vec![1],
                        b: vec![0],
                        cut: Cut::OneWay,
                    },
                ),
                (
                    2,
                    NetAction::PatchLink {
                        from: 1,
                        to: 0,
                        patch: LinkPatch {
                            latency_ns: Some(1_000_000),
                            ..LinkPatch::default()
                        },
                    },
                ),
            ],
        };
        let mut network = Network::new(Seed(1), &names, &config, None).unwrap();
        let described: Vec<String> = (network.apply_timeline(2).unwrap().into_iter())
            .map(|event| match event {
                NetEvent::Applied(note) => note.text,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            described,
            [
                "partition p: {alpha} -> {beta} cut",
                "link alpha->beta: latency=1000000ns"
            ]
        );
    }
}
