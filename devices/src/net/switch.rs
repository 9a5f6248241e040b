//! An L2 switch on virtual time.
//!
//! The switch has no clock of its own: [`Switch::send`] takes the sender's virtual time and
//! answers with the deliveries it schedules (destination and arrival time). The world queues them
//! and hands each to the destination's NIC when that machine reaches the arrival time.
//!
//! Every machine pair has a directed link `(from, to)` with its own configuration, its own
//! transmitter and its own ChaCha20 stream, so a decision on one link never depends on traffic on
//! another. Per frame and link the stream yields exactly four numbers (loss, duplication, jitter of
//! the frame, jitter of its duplicate), whether or not they are used, so changing one parameter or
//! partitioning a link does not shift the link's later decisions.
//!
//! Timing on a link: the frame waits for the link's transmitter (frames queue behind each other),
//! takes `wire bytes * 8 / bandwidth` to serialise, then `latency + jitter` to arrive, with jitter
//! uniform in `[0, jitter_ns]`. Unless `reorder` is set, a link is FIFO like a cable: an arrival is
//! never earlier than the previous arrival on the same link, so jitter only stretches gaps. Every
//! delivery therefore arrives at least [`Switch::min_latency_ns`] after it was sent, which is the
//! lookahead the world steps machines by.

use std::collections::BTreeMap;
use std::ops::AddAssign;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use thiserror::Error;

use super::{Frame, MacAddr, MachineId, RxDrop, ETH_HEADER_LEN};

/// Preamble and start delimiter (8), FCS (4) and inter-frame gap (12): wire bytes per frame
/// beyond the frame itself.
const WIRE_OVERHEAD: u64 = 24;
/// Frames shorter than this are padded on the wire.
const MIN_WIRE_FRAME: u64 = 60;

/// Configuration of one directed link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConfig {
    /// Propagation delay every frame takes.
    pub latency_ns: u64,
    /// Extra delay, uniform in `[0, jitter_ns]`, drawn per frame.
    pub jitter_ns: u64,
    /// Probability that a frame is lost, in `[0, 1]`.
    pub loss: f64,
    /// Probability that a frame arrives twice, in `[0, 1]`.
    pub duplicate: f64,
    /// Bits per second; 0 means unlimited (no serialisation delay).
    pub bandwidth_bps: u64,
    /// Whether jitter may let a frame overtake an earlier one on the same link.
    pub reorder: bool,
    /// A link that is down drops every frame.
    pub up: bool,
}

impl Default for LinkConfig {
    /// A quiet data-centre link: 50 µs, 1 Gbit/s, no jitter, loss or duplication.
    fn default() -> Self {
        Self {
            latency_ns: 50_000,
            jitter_ns: 0,
            loss: 0.0,
            duplicate: 0.0,
            bandwidth_bps: 1_000_000_000,
            reorder: false,
            up: true,
        }
    }
}

/// Which directions a partition cuts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Neither side hears the other.
    Both,
    /// Frames from the first group to the second are dropped; the reverse direction works.
    OneWay,
}

/// Why the switch (or the receiving NIC) dropped a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum DropReason {
    #[error("lost")]
    Loss,
    #[error("partitioned")]
    Partition,
    #[error("link down")]
    LinkDown,
    /// The receiving NIC had no buffer posted ([`RxDrop::NoBuffers`]).
    #[error("receive queue full")]
    QueueFull,
    /// The receiving NIC was not running ([`RxDrop::NotRunning`]).
    #[error("receiver not running")]
    NotRunning,
    /// The receiving NIC's next buffer was too small ([`RxDrop::TooBig`]).
    #[error("too big for the receive buffer")]
    TooBig,
}

impl From<RxDrop> for DropReason {
    fn from(drop: RxDrop) -> Self {
        match drop {
            RxDrop::NotRunning => Self::NotRunning,
            RxDrop::NoBuffers => Self::QueueFull,
            RxDrop::TooBig { .. } => Self::TooBig,
        }
    }
}

/// A frame the switch will hand to `to` at `at_ns`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub from: MachineId,
    pub to: MachineId,
    pub at_ns: u64,
    pub frame: Frame,
    /// This is the extra copy of a duplicated frame.
    pub duplicate: bool,
}

/// A frame that did not leave the switch for `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub to: MachineId,
    pub reason: DropReason,
}

/// What became of one sent frame, per destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendOutcome {
    pub deliveries: Vec<Delivery>,
    pub drops: Vec<Dropped>,
}

/// Frame counters of a link, or summed over a machine's links.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Frames offered to the link.
    pub sent: u64,
    /// Deliveries scheduled (duplicates included).
    pub forwarded: u64,
    /// Extra copies scheduled by duplication.
    pub duplicated: u64,
    pub dropped_loss: u64,
    pub dropped_partition: u64,
    pub dropped_link_down: u64,
    /// Deliveries the receiving NIC accepted (reported by the world).
    pub delivered: u64,
    /// Deliveries the receiving NIC had no buffer for (reported by the world).
    pub dropped_queue_full: u64,
    /// Deliveries to a NIC that was not running, or to no NIC (reported by the world).
    pub dropped_not_running: u64,
    /// Deliveries too big for the receiving NIC's next buffer (reported by the world).
    pub dropped_too_big: u64,
}

impl AddAssign for LinkCounters {
    fn add_assign(&mut self, o: Self) {
        self.sent += o.sent;
        self.forwarded += o.forwarded;
        self.duplicated += o.duplicated;
        self.dropped_loss += o.dropped_loss;
        self.dropped_partition += o.dropped_partition;
        self.dropped_link_down += o.dropped_link_down;
        self.delivered += o.delivered;
        self.dropped_queue_full += o.dropped_queue_full;
        self.dropped_not_running += o.dropped_not_running;
        self.dropped_too_big += o.dropped_too_big;
    }
}

/// Counters of one machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineCounters {
    /// Frames the machine handed to the switch (a broadcast counts once).
    pub frames_sent: u64,
    /// Frames too short to carry an Ethernet header, discarded.
    pub runts: u64,
    /// Its outgoing links, summed: what became of the frames it sent.
    pub tx: LinkCounters,
    /// Its incoming links, summed: what became of the frames sent to it.
    pub rx: LinkCounters,
}

#[derive(Debug, Error, PartialEq)]
pub enum SwitchError {
    #[error("machine {0} is not on this switch")]
    UnknownMachine(MachineId),
    #[error("link {from} -> {to} does not exist")]
    NoLink { from: MachineId, to: MachineId },
    #[error("probability {0} is outside [0, 1]")]
    BadProbability(f64),
}

#[derive(Debug)]
struct Link {
    config: LinkConfig,
    rng: ChaCha20Rng,
    /// When the link's transmitter is free again.
    busy_until_ns: u64,
    /// Latest arrival scheduled so far (FIFO links never deliver earlier).
    last_arrival_ns: u64,
    counters: LinkCounters,
}

#[derive(Debug)]
struct Partition {
    a: Vec<MachineId>,
    b: Vec<MachineId>,
    cut: Cut,
}

impl Partition {
    fn blocks(&self, from: MachineId, to: MachineId) -> bool {
        let forward = self.a.contains(&from) && self.b.contains(&to);
        let backward = self.b.contains(&from) && self.a.contains(&to);
        forward || (self.cut == Cut::Both && backward)
    }
}

/// The switch connecting all machines of a world.
#[derive(Debug)]
pub struct Switch {
    machines: u16,
    /// Indexed `from * machines + to`; the diagonal is unused.
    links: Vec<Link>,
    partitions: BTreeMap<String, Partition>,
    /// Learned source addresses, seeded with each machine's derived MAC.
    mac_table: BTreeMap<MacAddr, MachineId>,
    frames_sent: Vec<u64>,
    runts: Vec<u64>,
}

impl Switch {
    /// A switch for `machines` machines, every link configured as `defaults`. `link_seed` gives
    /// the seed of each directed link's random stream (see [`link_seed_from_master`]).
    pub fn new(
        machines: u16,
        defaults: LinkConfig,
        mut link_seed: impl FnMut(MachineId, MachineId) -> [u8; 32],
    ) -> Result<Self, SwitchError> {
        check_config(&defaults)?;
        let n = usize::from(machines);
        let mut links = Vec::with_capacity(n * n);
        for from in 0..machines {
            for to in 0..machines {
                links.push(Link {
                    config: defaults,
                    rng: ChaCha20Rng::from_seed(link_seed(MachineId(from), MachineId(to))),
                    busy_until_ns: 0,
                    last_arrival_ns: 0,
                    counters: LinkCounters::default(),
                });
            }
        }
        Ok(Self {
            machines,
            links,
            partitions: BTreeMap::new(),
            mac_table: (0..machines)
                .map(|i| (MachineId(i).mac(), MachineId(i)))
                .collect(),
            frames_sent: vec![0; n],
            runts: vec![0; n],
        })
    }

    pub fn machines(&self) -> u16 {
        self.machines
    }

    /// Smallest delay between a send and any resulting delivery: the lowest base latency of all
    /// links, up or down (a link can come up later). Re-query after reconfiguring links.
    pub fn min_latency_ns(&self) -> u64 {
        self.link_ids()
            .map(|(from, to)| self.links[self.index(from, to)].config.latency_ns)
            .min()
            .unwrap_or(u64::MAX)
    }

    pub fn link_config(&self, from: MachineId, to: MachineId) -> Result<LinkConfig, SwitchError> {
        Ok(self.links[self.link_index(from, to)?].config)
    }

    pub fn set_link(
        &mut self,
        from: MachineId,
        to: MachineId,
        config: LinkConfig,
    ) -> Result<(), SwitchError> {
        check_config(&config)?;
        let i = self.link_index(from, to)?;
        self.links[i].config = config;
        Ok(())
    }

    /// Reconfigures every link.
    pub fn set_all_links(&mut self, config: LinkConfig) -> Result<(), SwitchError> {
        check_config(&config)?;
        for link in &mut self.links {
            link.config = config;
        }
        Ok(())
    }

    pub fn set_link_up(
        &mut self,
        from: MachineId,
        to: MachineId,
        up: bool,
    ) -> Result<(), SwitchError> {
        let i = self.link_index(from, to)?;
        self.links[i].config.up = up;
        Ok(())
    }

    /// Cuts the links between groups `a` and `b` (only `a` to `b` for [`Cut::OneWay`]) until
    /// [`Switch::heal`]`(name)`. A partition with an existing name replaces it.
    pub fn partition(
        &mut self,
        name: &str,
        a: &[MachineId],
        b: &[MachineId],
        cut: Cut,
    ) -> Result<(), SwitchError> {
        if let Some(&m) = a.iter().chain(b).find(|m| m.0 >= self.machines) {
            return Err(SwitchError::UnknownMachine(m));
        }
        let partition = Partition {
            a: a.to_vec(),
            b: b.to_vec(),
            cut,
        };
        self.partitions.insert(name.to_owned(), partition);
        Ok(())
    }

    /// Removes the partition `name`; returns whether it existed.
    pub fn heal(&mut self, name: &str) -> bool {
        self.partitions.remove(name).is_some()
    }

    pub fn heal_all(&mut self) {
        self.partitions.clear();
    }

    /// Whether an active partition cuts `from -> to`.
    pub fn is_partitioned(&self, from: MachineId, to: MachineId) -> bool {
        self.partitions.values().any(|p| p.blocks(from, to))
    }

    /// Switches `frame`, sent by `from` at its virtual time `now_ns`.
    ///
    /// Group destinations go to every other machine; a known unicast destination to its port;
    /// an unknown one to every other machine (flooding, as a learning switch does). Deliveries
    /// come out in destination order, each destination's original before its duplicate.
    pub fn send(
        &mut self,
        from: MachineId,
        frame: Frame,
        now_ns: u64,
    ) -> Result<SendOutcome, SwitchError> {
        if from.0 >= self.machines {
            return Err(SwitchError::UnknownMachine(from));
        }
        self.frames_sent[from.index()] += 1;
        let (Some(dst), Some(src)) = (frame.dst(), frame.src()) else {
            self.runts[from.index()] += 1;
            return Ok(SendOutcome::default());
        };
        if frame.data.len() < ETH_HEADER_LEN {
            self.runts[from.index()] += 1;
            return Ok(SendOutcome::default());
        }
        if !src.is_group() {
            self.mac_table.insert(src, from);
        }
        let destinations: Vec<MachineId> = match self.mac_table.get(&dst) {
            Some(&to) if !dst.is_group() => vec![to],
            _ => (0..self.machines).map(MachineId).collect(),
        };
        let mut outcome = SendOutcome::default();
        for to in destinations.into_iter().filter(|&to| to != from) {
            self.send_on_link(from, to, &frame, now_ns, &mut outcome);
        }
        Ok(outcome)
    }

    fn send_on_link(
        &mut self,
        from: MachineId,
        to: MachineId,
        frame: &Frame,
        now_ns: u64,
        outcome: &mut SendOutcome,
    ) {
        let partitioned = self.is_partitioned(from, to);
        let i = self.index(from, to);
        let link = &mut self.links[i];
        let draws = [(); 4].map(|()| link.rng.next_u64());
        let config = link.config;
        link.counters.sent += 1;
        let drop = if !config.up {
            link.counters.dropped_link_down += 1;
            Some(DropReason::LinkDown)
        } else if partitioned {
            link.counters.dropped_partition += 1;
            Some(DropReason::Partition)
        } else {
            None
        };
        if let Some(reason) = drop {
            outcome.drops.push(Dropped { to, reason });
            return;
        }
        // The frame occupies the transmitter even if it is then lost in transit.
        let start = now_ns.max(link.busy_until_ns);
        let sent_at =
            start.saturating_add(serialisation_ns(frame.data.len(), config.bandwidth_bps));
        link.busy_until_ns = sent_at;
        if chance(draws[0], config.loss) {
            link.counters.dropped_loss += 1;
            outcome.drops.push(Dropped {
                to,
                reason: DropReason::Loss,
            });
            return;
        }
        let copies = if chance(draws[1], config.duplicate) {
            2
        } else {
            1
        };
        for (copy, draw) in draws[2..2 + copies].iter().enumerate() {
            let mut at_ns = sent_at
                .saturating_add(config.latency_ns)
                .saturating_add(uniform(*draw, config.jitter_ns));
            if !config.reorder {
                at_ns = at_ns.max(link.last_arrival_ns);
            }
            link.last_arrival_ns = link.last_arrival_ns.max(at_ns);
            link.counters.forwarded += 1;
            link.counters.duplicated += copy as u64;
            outcome.deliveries.push(Delivery {
                from,
                to,
                at_ns,
                frame: frame.clone(),
                duplicate: copy > 0,
            });
        }
    }

    /// The world handed `delivery` to the destination NIC, which accepted it.
    pub fn report_delivered(&mut self, delivery: &Delivery) -> Result<(), SwitchError> {
        let i = self.link_index(delivery.from, delivery.to)?;
        self.links[i].counters.delivered += 1;
        Ok(())
    }

    /// The destination NIC had no receive buffer for `delivery`; it was dropped. The same as
    /// [`Switch::report_dropped`] with [`RxDrop::NoBuffers`].
    pub fn report_queue_full(&mut self, delivery: &Delivery) -> Result<(), SwitchError> {
        self.report_dropped(delivery, RxDrop::NoBuffers)
    }

    /// The world handed `delivery` to the destination, whose NIC refused it for `why` (or which
    /// has no NIC: [`RxDrop::NotRunning`]); each reason has its own counter.
    pub fn report_dropped(&mut self, delivery: &Delivery, why: RxDrop) -> Result<(), SwitchError> {
        let i = self.link_index(delivery.from, delivery.to)?;
        let counters = &mut self.links[i].counters;
        match why {
            RxDrop::NotRunning => counters.dropped_not_running += 1,
            RxDrop::NoBuffers => counters.dropped_queue_full += 1,
            RxDrop::TooBig { .. } => counters.dropped_too_big += 1,
        }
        Ok(())
    }

    pub fn link_counters(
        &self,
        from: MachineId,
        to: MachineId,
    ) -> Result<LinkCounters, SwitchError> {
        Ok(self.links[self.link_index(from, to)?].counters)
    }

    pub fn machine_counters(&self, machine: MachineId) -> Result<MachineCounters, SwitchError> {
        if machine.0 >= self.machines {
            return Err(SwitchError::UnknownMachine(machine));
        }
        let mut counters = MachineCounters {
            frames_sent: self.frames_sent[machine.index()],
            runts: self.runts[machine.index()],
            ..Default::default()
        };
        for (from, to) in self.link_ids() {
            let link = self.links[self.index(from, to)].counters;
            if from == machine {
                counters.tx += link;
            }
            if to == machine {
                counters.rx += link;
            }
        }
        Ok(counters)
    }

    fn link_ids(&self) -> impl Iterator<Item = (MachineId, MachineId)> + '_ {
        (0..self.machines)
            .flat_map(move |f| (0..self.machines).map(move |t| (MachineId(f), MachineId(t))))
            .filter(|(f, t)| f != t)
    }

    fn index(&self, from: MachineId, to: MachineId) -> usize {
        from.index() * usize::from(self.machines) + to.index()
    }

    fn link_index(&self, from: MachineId, to: MachineId) -> Result<usize, SwitchError> {
        if from.0 >= self.machines || to.0 >= self.machines || from == to {
            return Err(SwitchError::NoLink { from, to });
        }
        Ok(self.index(from, to))
    }
}

/// Derives the seed of link `from -> to` from a network seed: ChaCha20 keyed by `network_seed`,
/// on stream `from << 16 | to`, first 32 bytes. Distinct links get independent streams.
pub fn link_seed_from_master(network_seed: [u8; 32], from: MachineId, to: MachineId) -> [u8; 32] {
    let mut rng = ChaCha20Rng::from_seed(network_seed);
    rng.set_stream(u64::from(from.0) << 16 | u64::from(to.0));
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    seed
}

fn check_config(config: &LinkConfig) -> Result<(), SwitchError> {
    for p in [config.loss, config.duplicate] {
        if !(0.0..=1.0).contains(&p) {
            return Err(SwitchError::BadProbability(p));
        }
    }
    Ok(())
}

/// Time to put a frame of `len` bytes on a wire of `bps` bits per second, rounded up.
fn serialisation_ns(len: usize, bps: u64) -> u64 {
    if bps == 0 {
        return 0;
    }
    let bits = u128::from((len as u64).max(MIN_WIRE_FRAME) + WIRE_OVERHEAD) * 8;
    let ns = (bits * 1_000_000_000).div_ceil(u128::from(bps));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// `true` with probability `p`, from a uniform 64-bit draw.
fn chance(draw: u64, p: f64) -> bool {
    // 53 random bits give a uniform f64 in [0, 1); p = 1 is always true, p = 0 never.
    ((draw >> 11) as f64) * (1.0 / (1u64 << 53) as f64) < p
}

/// Uniform in `[0, max]` from a 64-bit draw (multiply-shift, no modulo bias worth the name).
fn uniform(draw: u64, max: u64) -> u64 {
    ((u128::from(draw) * (u128::from(max) + 1)) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const M1: MachineId = MachineId(0);
    const M2: MachineId = MachineId(1);
    const M3: MachineId = MachineId(2);

    fn seeded(master: u8) -> impl FnMut(MachineId, MachineId) -> [u8; 32] {
        move |from, to| link_seed_from_master([master; 32], from, to)
    }

    fn switch(config: LinkConfig, master: u8) -> Switch {
        Switch::new(3, config, seeded(master)).unwrap()
    }

    fn frame(from: MachineId, to: MacAddr, len: usize) -> Frame {
        let mut data = vec![0u8; len];
        data[..6].copy_from_slice(&to.0);
        data[6..12].copy_from_slice(&from.mac().0);
        Frame::new(data)
    }

    fn quiet() -> LinkConfig {
        LinkConfig {
            latency_ns: 10_000,
            bandwidth_bps: 0,
            ..LinkConfig::default()
        }
    }

    /// Arrival times (None for drops) of `n` frames m1 -> m2, one every 100 µs.
    fn arrivals(sw: &mut Switch, n: u64) -> Vec<Option<u64>> {
        (0..n)
            .map(|i| {
                let out = sw.send(M1, frame(M1, M2.mac(), 100), i * 100_000).unwrap();
                out.deliveries.first().map(|d| d.at_ns)
            })
            .collect()
    }

    #[test]
    fn unicast_arrives_after_the_link_latency() {
        let mut sw = switch(quiet(), 1);
        let out = sw.send(M1, frame(M1, M2.mac(), 100), 1_000).unwrap();
        assert_eq!(
            out.deliveries,
            vec![Delivery {
                from: M1,
                to: M2,
                at_ns: 11_000,
                frame: frame(M1, M2.mac(), 100),
                duplicate: false,
            }]
        );
        assert!(out.drops.is_empty());
        assert_eq!(sw.min_latency_ns(), 10_000);
    }

    #[test]
    fn broadcast_and_unknown_unicast_reach_every_other_machine() {
        let mut sw = switch(quiet(), 1);
        let to = |out: SendOutcome| out.deliveries.iter().map(|d| d.to).collect::<Vec<_>>();
        assert_eq!(
            to(sw.send(M2, frame(M2, MacAddr::BROADCAST, 60), 0).unwrap()),
            [M1, M3]
        );
        let stranger = MacAddr([2, 0, 0, 0, 0, 9]);
        assert_eq!(
            to(sw.send(M1, frame(M1, stranger, 60), 0).unwrap()),
            [M2, M3]
        );
        // m3 starts using the stranger's address: the switch learns it.
        let mut f = frame(M3, M1.mac(), 60);
        f.data[6..12].copy_from_slice(&stranger.0);
        sw.send(M3, f, 0).unwrap();
        assert_eq!(to(sw.send(M1, frame(M1, stranger, 60), 0).unwrap()), [M3]);
        // Frames to oneself go nowhere; runts are counted and dropped.
        assert!(to(sw.send(M1, frame(M1, M1.mac(), 60), 0).unwrap()).is_empty());
        assert_eq!(
            sw.send(M1, Frame::new(vec![0xff; 13]), 0).unwrap(),
            SendOutcome::default()
        );
        assert_eq!(sw.machine_counters(M1).unwrap().runts, 1);
    }

    #[test]
    fn bandwidth_serialises_frames_in_order() {
        let config = LinkConfig {
            bandwidth_bps: 1_000_000,
            ..quiet()
        };
        let mut sw = switch(config, 1);
        // (1000 + 24) bytes at 1 Mbit/s take 8192 µs; 14 bytes pad to 60: 672 µs.
        let times: Vec<u64> = [1000, 1000, 14]
            .iter()
            .map(|&len| sw.send(M1, frame(M1, M2.mac(), len), 0).unwrap().deliveries[0].at_ns)
            .collect();
        assert_eq!(times, [8_202_000, 16_394_000, 17_066_000]);
        // Another link has its own transmitter.
        let other = sw.send(M1, frame(M1, M3.mac(), 1000), 0).unwrap();
        assert_eq!(other.deliveries[0].at_ns, 8_202_000);
        // An idle link starts transmitting at the send time.
        let later = sw.send(M1, frame(M1, M2.mac(), 14), 50_000_000).unwrap();
        assert_eq!(later.deliveries[0].at_ns, 50_682_000);
    }

    #[test]
    fn jitter_is_bounded_fifo_and_determined_by_the_seed() {
        let config = LinkConfig {
            jitter_ns: 500_000,
            ..quiet()
        };
        let a = arrivals(&mut switch(config, 7), 200);
        assert_eq!(a, arrivals(&mut switch(config, 7), 200));
        assert_ne!(a, arrivals(&mut switch(config, 8), 200));
        let a: Vec<u64> = a.into_iter().map(Option::unwrap).collect();
        assert!(a.windows(2).all(|w| w[0] <= w[1]), "FIFO link reordered");
        let mut extra = Vec::new();
        for (i, at) in a.iter().enumerate() {
            let base = i as u64 * 100_000 + 10_000;
            assert!(*at >= base);
            extra.push(at - base);
        }
        // The first frame has nothing to queue behind: its jitter is the raw draw.
        assert!(extra[0] <= 500_000);
        assert!(extra.iter().any(|&e| e > 250_000) && extra.iter().any(|&e| e < 250_000));

        let reordering = LinkConfig {
            reorder: true,
            ..config
        };
        let r: Vec<u64> = arrivals(&mut switch(reordering, 7), 200)
            .into_iter()
            .map(Option::unwrap)
            .collect();
        assert!(r.windows(2).any(|w| w[0] > w[1]), "jitter never reordered");
        for (i, at) in r.iter().enumerate() {
            let base = i as u64 * 100_000 + 10_000;
            assert!((base..=base + 500_000).contains(at));
        }
    }

    #[test]
    fn loss_follows_the_probability_and_the_seed() {
        let config = LinkConfig {
            loss: 0.25,
            ..quiet()
        };
        let lost = |v: &[Option<u64>]| v.iter().map(|a| a.is_none()).collect::<Vec<_>>();
        let a = lost(&arrivals(&mut switch(config, 3), 4000));
        assert_eq!(a, lost(&arrivals(&mut switch(config, 3), 4000)));
        assert_ne!(a, lost(&arrivals(&mut switch(config, 4), 4000)));
        let count = a.iter().filter(|&&l| l).count();
        assert!(
            (850..1150).contains(&count),
            "{count} of 4000 lost at p = 0.25"
        );

        let mut sw = switch(config, 3);
        arrivals(&mut sw, 4000);
        let c = sw.link_counters(M1, M2).unwrap();
        assert_eq!(
            (c.sent, c.dropped_loss, c.forwarded),
            (4000, count as u64, 4000 - count as u64)
        );
        let all = LinkConfig {
            loss: 1.0,
            ..quiet()
        };
        assert!(arrivals(&mut switch(all, 3), 100)
            .iter()
            .all(Option::is_none));
    }

    #[test]
    fn links_have_independent_streams() {
        let config = LinkConfig {
            loss: 0.5,
            jitter_ns: 1_000_000,
            reorder: true,
            ..quiet()
        };
        let alone = arrivals(&mut switch(config, 5), 300);
        // Traffic on m1 -> m3 and m2 -> m1 in between changes nothing on m1 -> m2.
        let mut sw = switch(config, 5);
        let mixed: Vec<Option<u64>> = (0..300)
            .map(|i| {
                sw.send(M1, frame(M1, M3.mac(), 100), i * 100_000).unwrap();
                sw.send(M2, frame(M2, M1.mac(), 100), i * 100_000).unwrap();
                let out = sw.send(M1, frame(M1, M2.mac(), 100), i * 100_000).unwrap();
                out.deliveries.first().map(|d| d.at_ns)
            })
            .collect();
        assert_eq!(alone, mixed);
    }

    #[test]
    fn a_partition_does_not_shift_later_random_decisions() {
        let config = LinkConfig {
            loss: 0.3,
            jitter_ns: 1_000_000,
            reorder: true,
            ..quiet()
        };
        let plain = arrivals(&mut switch(config, 9), 100);
        let mut sw = switch(config, 9);
        sw.partition("p", &[M1], &[M2], Cut::Both).unwrap();
        let cut = arrivals(&mut sw, 50);
        assert!(cut.iter().all(Option::is_none));
        sw.heal("p");
        let healed: Vec<Option<u64>> = (50..100)
            .map(|i| {
                let out = sw.send(M1, frame(M1, M2.mac(), 100), i * 100_000).unwrap();
                out.deliveries.first().map(|d| d.at_ns)
            })
            .collect();
        assert_eq!(healed, plain[50..]);
    }

    #[test]
    fn duplication_delivers_a_second_copy() {
        let config = LinkConfig {
            duplicate: 1.0,
            jitter_ns: 1000,
            ..quiet()
        };
        let mut sw = switch(config, 1);
        let out = sw.send(M1, frame(M1, M2.mac(), 100), 0).unwrap();
        assert_eq!(out.deliveries.len(), 2);
        assert!(!out.deliveries[0].duplicate && out.deliveries[1].duplicate);
        assert!(out.deliveries[0].at_ns <= out.deliveries[1].at_ns);
        let c = sw.link_counters(M1, M2).unwrap();
        assert_eq!((c.sent, c.forwarded, c.duplicated), (1, 2, 1));
    }

    #[test]
    fn symmetric_and_one_way_partitions() {
        let mut sw = switch(quiet(), 1);
        let reaches = |sw: &mut Switch, from: MachineId, to: MachineId| {
            let out = sw.send(from, frame(from, to.mac(), 60), 0).unwrap();
            match (&out.deliveries[..], &out.drops[..]) {
                ([d], []) if d.to == to => true,
                (
                    [],
                    [Dropped {
                        to: t,
                        reason: DropReason::Partition,
                    }],
                ) if *t == to => false,
                other => panic!("unexpected outcome {other:?}"),
            }
        };
        sw.partition("split", &[M1], &[M2, M3], Cut::Both).unwrap();
        assert!(!reaches(&mut sw, M1, M2) && !reaches(&mut sw, M3, M1));
        assert!(reaches(&mut sw, M2, M3) && reaches(&mut sw, M3, M2));
        assert!(sw.heal("split") && !sw.heal("split"));
        assert!(reaches(&mut sw, M1, M2) && reaches(&mut sw, M3, M1));

        sw.partition("oneway", &[M1], &[M2], Cut::OneWay).unwrap();
        assert!(!reaches(&mut sw, M1, M2));
        assert!(reaches(&mut sw, M2, M1));
        assert!(reaches(&mut sw, M1, M3));
        sw.heal_all();
        assert!(reaches(&mut sw, M1, M2));

        // Broadcast reports the cut destinations as drops.
        sw.partition("p", &[M1], &[M3], Cut::Both).unwrap();
        let out = sw.send(M1, frame(M1, MacAddr::BROADCAST, 60), 0).unwrap();
        assert_eq!(
            out.deliveries.iter().map(|d| d.to).collect::<Vec<_>>(),
            [M2]
        );
        assert_eq!(
            out.drops,
            [Dropped {
                to: M3,
                reason: DropReason::Partition
            }]
        );
        assert_eq!(
            sw.partition("bad", &[M1], &[MachineId(3)], Cut::Both),
            Err(SwitchError::UnknownMachine(MachineId(3)))
        );
    }

    #[test]
    fn link_down_and_reconfiguration() {
        let mut sw = switch(quiet(), 1);
        sw.set_link_up(M1, M2, false).unwrap();
        let out = sw.send(M1, frame(M1, M2.mac(), 60), 0).unwrap();
        assert_eq!(
            out.drops,
            [Dropped {
                to: M2,
                reason: DropReason::LinkDown
            }]
        );
        assert_eq!(
            sw.send(M2, frame(M2, M1.mac(), 60), 0)
                .unwrap()
                .deliveries
                .len(),
            1
        );
        let fast = LinkConfig {
            latency_ns: 2_000,
            ..quiet()
        };
        sw.set_link(M3, M1, fast).unwrap();
        assert_eq!(sw.min_latency_ns(), 2_000);
        assert_eq!(sw.link_config(M3, M1).unwrap(), fast);
        sw.set_all_links(quiet()).unwrap();
        assert_eq!(sw.min_latency_ns(), 10_000);
        let bad = LinkConfig {
            loss: 1.5,
            ..quiet()
        };
        assert_eq!(
            sw.set_link(M1, M2, bad),
            Err(SwitchError::BadProbability(1.5))
        );
        assert!(Switch::new(2, bad, seeded(0)).is_err());
        assert!(sw.set_link(M1, M1, quiet()).is_err());
        assert!(sw.send(MachineId(3), frame(M1, M2.mac(), 60), 0).is_err());
    }

    #[test]
    fn counters_per_link_and_machine() {
        let mut sw = switch(quiet(), 1);
        let d = sw
            .send(M1, frame(M1, M2.mac(), 60), 0)
            .unwrap()
            .deliveries
            .remove(0);
        sw.report_delivered(&d).unwrap();
        let d = sw
            .send(M1, frame(M1, M2.mac(), 60), 0)
            .unwrap()
            .deliveries
            .remove(0);
        sw.report_queue_full(&d).unwrap();
        sw.send(M3, frame(M3, MacAddr::BROADCAST, 60), 0).unwrap();
        sw.partition("p", &[M1], &[M3], Cut::OneWay).unwrap();
        sw.send(M1, frame(M1, M3.mac(), 60), 0).unwrap();

        let m1 = sw.machine_counters(M1).unwrap();
        assert_eq!(m1.frames_sent, 3);
        assert_eq!(
            m1.tx,
            LinkCounters {
                sent: 3,
                forwarded: 2,
                dropped_partition: 1,
                delivered: 1,
                dropped_queue_full: 1,
                ..Default::default()
            }
        );
        assert_eq!(m1.rx.forwarded, 1);
        let m2 = sw.machine_counters(M2).unwrap();
        assert_eq!(
            (
                m2.frames_sent,
                m2.rx.sent,
                m2.rx.delivered,
                m2.rx.dropped_queue_full
            ),
            (0, 3, 1, 1)
        );
        assert_eq!(sw.link_counters(M3, M2).unwrap().forwarded, 1);
        assert!(sw.machine_counters(MachineId(9)).is_err());
    }

    /// Every receive drop used to be counted and captured as "receive queue full".
    #[test]
    fn receive_drops_are_counted_by_reason() {
        let mut sw = switch(quiet(), 1);
        let reasons = [
            RxDrop::NotRunning,
            RxDrop::NoBuffers,
            RxDrop::TooBig {
                len: 1514,
                room: 100,
            },
            RxDrop::TooBig {
                len: 9000,
                room: 1514,
            },
        ];
        for why in reasons {
            let d = sw
                .send(M1, frame(M1, M2.mac(), 60), 0)
                .unwrap()
                .deliveries
                .remove(0);
            sw.report_dropped(&d, why).unwrap();
        }
        let c = sw.link_counters(M1, M2).unwrap();
        assert_eq!(
            (
                c.dropped_not_running,
                c.dropped_queue_full,
                c.dropped_too_big
            ),
            (1, 1, 2)
        );
        assert_eq!(sw.machine_counters(M2).unwrap().rx.dropped_too_big, 2);
        let named: Vec<String> = reasons[..3]
            .iter()
            .map(|&why| DropReason::from(why).to_string())
            .collect();
        assert_eq!(
            named,
            [
                "receiver not running",
                "receive queue full",
                "too big for the receive buffer"
            ]
        );
        let stray = Delivery {
            from: M1,
            to: M1,
            at_ns: 0,
            frame: frame(M1, M1.mac(), 60),
            duplicate: false,
        };
        assert!(sw.report_dropped(&stray, RxDrop::NoBuffers).is_err());
    }

    #[test]
    fn serialisation_and_draw_helpers() {
        assert_eq!(serialisation_ns(1500, 0), 0);
        assert_eq!(serialisation_ns(1500, 1_000_000_000), 12_192);
        assert_eq!(serialisation_ns(1, 1), 672_000_000_000);
        assert!(
            !chance(0, 0.0) && chance(0, 1e-9) && chance(u64::MAX, 1.0) && !chance(u64::MAX, 0.999)
        );
        assert_eq!(uniform(u64::MAX, 0), 0);
        assert_eq!(uniform(u64::MAX, 9), 9);
        assert_eq!(uniform(0, u64::MAX), 0);
        assert_ne!(
            link_seed_from_master([1; 32], M1, M2),
            link_seed_from_master([1; 32], M2, M1)
        );
    }
}
