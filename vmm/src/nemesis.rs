//! Seeded fault schedules (a "nemesis", after Jepsen): faults of the kinds a scenario asks for,
//! at seeded times, each healed after a seeded while, none before a start (so the system can
//! form, and a world snapshot taken before it is continued by every seed) and none in a quiet
//! tail before the end (so that the system can recover and be checked).
//!
//! The schedule comes from its own stream of the seed (`nemesis`), so it replays exactly and
//! drawing it perturbs no other stream. It is made of ordinary timeline events, which the run
//! prints, traces and applies like those written in the scenario.

use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;

use crate::network::LinkPatch;
use crate::scenario::{Action, Event, Heal, LinkOverride, LinkSelector, Machine, Partition};
use crate::seed::Seed;
use crate::skew::ClockChange;
use simvm_devices::disk::Fault;

/// The kinds of fault a nemesis injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// A network partition of one of Jepsen's shapes (see [`Shape`]).
    Partition,
    /// Power loss of one machine or a minority; they restart when the fault heals.
    Kill,
    /// One machine is not stepped for a while.
    Pause,
    /// One machine's clock runs fast or slow, or its wall clock jumps; healed by an NTP-like
    /// reset (rate 0, wall clock on world time).
    Clock,
    /// One disk stalls or becomes slow.
    Disk,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        Self::Partition,
        Self::Kill,
        Self::Pause,
        Self::Clock,
        Self::Disk,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Partition => "partition",
            Self::Kill => "kill",
            Self::Pause => "pause",
            Self::Clock => "clock",
            Self::Disk => "disk",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Partition shapes, as Jepsen names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// One machine against the rest.
    IsolateOne,
    /// Two random halves.
    Halves,
    /// Every machine sees a majority, but no two see the same one (4 machines or more).
    MajorityRing,
    /// Two halves joined only through one bridge machine (3 machines or more).
    Bridge,
    /// One machine can send to the rest but hears nothing back.
    OneWay,
}

/// Defaults of the `[nemesis]` table.
pub const DEFAULT_INTERVAL_NS: u64 = 5_000_000_000;
pub const DEFAULT_DURATION_NS: u64 = 2_000_000_000;
pub const DEFAULT_QUIET_NS: u64 = 10_000_000_000;
/// No fault is shorter than this, and no gap between faults.
const MIN_SPAN_NS: u64 = 1_000_000;

/// A scenario's `[nemesis]`: which faults, how often, for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nemesis {
    /// In the order given, without repeats.
    pub faults: Vec<FaultKind>,
    /// Mean time from one fault's heal to the next fault (exponentially distributed).
    pub interval_ns: u64,
    /// Mean length of a fault (exponentially distributed).
    pub duration_ns: u64,
    /// No fault is active in the last `quiet_ns` before the run's end.
    pub quiet_ns: u64,
    /// No fault begins before this virtual time.
    pub start_ns: u64,
    /// The machines faults may touch (indices, ascending); `None`: every machine. The others
    /// (a workload's client, say) keep their links, power, clocks and disks.
    pub machines: Option<Vec<usize>>,
}

impl Nemesis {
    /// Faults of `kinds` with the default interval, duration and quiet tail.
    pub fn with_faults(kinds: Vec<FaultKind>) -> Self {
        Self {
            faults: kinds,
            interval_ns: DEFAULT_INTERVAL_NS,
            duration_ns: DEFAULT_DURATION_NS,
            quiet_ns: DEFAULT_QUIET_NS,
            start_ns: 0,
            machines: None,
        }
    }

    /// The schedule for `seed`, for `machines` (whose network exists when `networked`), in
    /// a run that ends at `until_ns`: timeline events in time order.
    pub fn schedule(
        &self,
        seed: Seed,
        machines: &[Machine],
        networked: bool,
        until_ns: u64,
    ) -> Vec<Event> {
        // Faults are drawn among the targets only, then renumbered into the whole world.
        let targets: Vec<usize> = match &self.machines {
            Some(targets) => targets.clone(),
            None => (0..machines.len()).collect(),
        };
        let machines: Vec<Machine> = targets.iter().map(|&m| machines[m].clone()).collect();
        let machines = machines.as_slice();
        let kinds: Vec<FaultKind> = (self.faults.iter().copied())
            .filter(|kind| match kind {
                FaultKind::Partition => networked && machines.len() >= 2,
                FaultKind::Disk => machines.iter().any(|m| !m.disks.is_empty()),
                _ => true,
            })
            .collect();
        let mut events = Vec::new();
        if kinds.is_empty() {
            return events;
        }
        let mut draw = Draw(seed.stream("nemesis"));
        let end = until_ns.saturating_sub(self.quiet_ns);
        let mut t = self.start_ns;
        let mut count = 0;
        loop {
            t = t.saturating_add(draw.exponential(self.interval_ns));
            if t >= end {
                break;
            }
            let length = draw.exponential(self.duration_ns).min(end - t);
            let healed = t + length;
            count += 1;
            let kind = kinds[draw.below(kinds.len())];
            let name = format!("nemesis-{count}");
            for (at, action) in fault(kind, &name, &mut draw, machines, t, healed) {
                let action = renumbered(action, &targets);
                events.push(Event { at_ns: at, action });
            }
            t = healed;
        }
        // Stable: a fault's start comes before its heal at equal times.
        events.sort_by_key(|e| e.at_ns);
        events
    }
}

/// `action` with each machine index `i` among the targets replaced by `targets[i]`.
fn renumbered(action: Action, targets: &[usize]) -> Action {
    let world = |i: usize| targets[i];
    match action {
        Action::Partition(mut partition) => {
            for group in &mut partition.groups {
                group.iter_mut().for_each(|m| *m = world(*m));
            }
            Action::Partition(partition)
        }
        Action::Link(mut link) => {
            link.links.from = link.links.from.map(world);
            link.links.to = link.links.to.map(world);
            Action::Link(link)
        }
        Action::Kill { machine, policy } => Action::Kill {
            machine: world(machine),
            policy,
        },
        Action::Restart { machine } => Action::Restart {
            machine: world(machine),
        },
        Action::DiskFault {
            machine,
            disk,
            fault,
        } => Action::DiskFault {
            machine: world(machine),
            disk,
            fault,
        },
        Action::Pause { machine, for_ns } => Action::Pause {
            machine: world(machine),
            for_ns,
        },
        Action::Resume { machine } => Action::Resume {
            machine: world(machine),
        },
        Action::Clock { machine, change } => Action::Clock {
            machine: world(machine),
            change,
        },
        heal @ Action::Heal(_) => heal,
    }
}

/// The events of one fault of `kind` from `start` to `healed`.
fn fault(
    kind: FaultKind,
    name: &str,
    draw: &mut Draw,
    machines: &[Machine],
    start: u64,
    healed: u64,
) -> Vec<(u64, Action)> {
    let n = machines.len();
    match kind {
        FaultKind::Partition => partition(name, draw, n, start, healed),
        FaultKind::Kill => {
            // One machine, or a minority of a larger cluster.
            let minority = (n.saturating_sub(1) / 2).max(1);
            let count = 1 + draw.below(minority);
            let victims = &draw.shuffled(n)[..count];
            let kills = victims.iter().map(|&machine| {
                let kill = Action::Kill {
                    machine,
                    policy: None,
                };
                (start, kill)
            });
            let restarts = victims
                .iter()
                .map(|&machine| (healed, Action::Restart { machine }));
            kills.chain(restarts).collect()
        }
        FaultKind::Pause => vec![(
            start,
            Action::Pause {
                machine: draw.below(n),
                for_ns: Some(healed - start),
            },
        )],
        FaultKind::Clock => {
            let machine = draw.below(n);
            let sign = if draw.below(2) == 0 { 1 } else { -1 };
            let (change, reset) = if draw.below(2) == 0 {
                // Within ±5%: fast enough to show in seconds, slow enough for timeouts to work.
                let ppm = sign * (100 + draw.below(50_000) as i64);
                (ClockChange::Rate { ppm }, ClockChange::Rate { ppm: 0 })
            } else {
                let delta_ns = sign * (10 + draw.below(5_000) as i64) * 1_000_000;
                (
                    ClockChange::Step { delta_ns },
                    ClockChange::Offset { offset_ns: 0 },
                )
            };
            vec![
                (start, Action::Clock { machine, change }),
                (
                    healed,
                    Action::Clock {
                        machine,
                        change: reset,
                    },
                ),
            ]
        }
        FaultKind::Disk => {
            let with_disks: Vec<usize> =
                (0..n).filter(|&m| !machines[m].disks.is_empty()).collect();
            let machine = with_disks[draw.below(with_disks.len())];
            let disk = draw.below(machines[machine].disks.len());
            let fault = if draw.below(2) == 0 {
                Fault::Stall { until_ns: healed }
            } else {
                Fault::Slow {
                    extra_ns: 1_000_000 + draw.below(20_000_000) as u64,
                }
            };
            let mut events = vec![(
                start,
                Action::DiskFault {
                    machine,
                    disk,
                    fault,
                },
            )];
            if let Fault::Slow { .. } = fault {
                let clear = Action::DiskFault {
                    machine,
                    disk,
                    fault: Fault::Clear,
                };
                events.push((healed, clear));
            }
            events
        }
    }
}

/// A partition of a random shape among those `n` machines allow, and its heal.
fn partition(name: &str, draw: &mut Draw, n: usize, start: u64, healed: u64) -> Vec<(u64, Action)> {
    let mut shapes = vec![Shape::IsolateOne, Shape::Halves, Shape::OneWay];
    if n >= 3 {
        shapes.push(Shape::Bridge);
    }
    if n >= 4 {
        shapes.push(Shape::MajorityRing);
    }
    let shape = shapes[draw.below(shapes.len())];
    let order = draw.shuffled(n);
    let groups = |split: usize| vec![order[..split].to_vec(), order[split..].to_vec()];
    let named = |groups: Vec<Vec<usize>>, one_way: bool| {
        let partition = Partition {
            name: name.to_string(),
            groups,
            one_way,
        };
        vec![
            (start, Action::Partition(partition)),
            (healed, Action::Heal(Heal::Named(name.to_string()))),
        ]
    };
    match shape {
        Shape::IsolateOne => named(groups(1), false),
        Shape::OneWay => named(groups(1), true),
        Shape::Halves => named(groups(n / 2), false),
        Shape::Bridge => {
            // order[0] bridges the two halves of the rest.
            let rest = &order[1..];
            let (a, b) = rest.split_at(rest.len() / 2);
            let cuts: Vec<(usize, usize)> = a
                .iter()
                .flat_map(|&x| b.iter().map(move |&y| (x, y)))
                .collect();
            links_down(&cuts, start, healed)
        }
        Shape::MajorityRing => {
            // Around the ring, each machine keeps its links to the nearest `reach` on each side:
            // itself and its neighbours make a majority, different for each machine.
            let majority = n / 2 + 1;
            let reach = (majority - 1).div_ceil(2);
            let mut cuts = Vec::new();
            for i in 0..n {
                for j in i + 1..n {
                    let distance = (j - i).min(n - (j - i));
                    if distance > reach {
                        cuts.push((order[i], order[j]));
                    }
                }
            }
            links_down(&cuts, start, healed)
        }
    }
}

/// Links `(a, b)` down both ways from `start`, up again at `healed`.
fn links_down(cuts: &[(usize, usize)], start: u64, healed: u64) -> Vec<(u64, Action)> {
    let link = |(a, b): (usize, usize), up: bool| {
        Action::Link(LinkOverride {
            links: LinkSelector {
                from: Some(a),
                to: Some(b),
                both: true,
            },
            settings: LinkPatch {
                up: Some(up),
                ..LinkPatch::default()
            },
        })
    };
    let downs = cuts.iter().map(|&c| (start, link(c, false)));
    let ups = cuts.iter().map(|&c| (healed, link(c, true)));
    downs.chain(ups).collect()
}

/// Draws from the nemesis stream.
struct Draw(ChaCha20Rng);

impl Draw {
    /// Uniform in `[0, n)` (0 when `n` is 0); the modulo bias is below 2^-40 for the small `n`
    /// used here.
    fn below(&mut self, n: usize) -> usize {
        match n {
            0 => 0,
            n => (self.0.next_u64() % n as u64) as usize,
        }
    }

    /// Exponentially distributed with mean `mean_ns`, in whole milliseconds (a schedule people
    /// read), at least [`MIN_SPAN_NS`].
    fn exponential(&mut self, mean_ns: u64) -> u64 {
        // In (0, 1]: never ln(0).
        let u = ((self.0.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let ns = -u.ln() * mean_ns as f64;
        // `as` saturates for floats beyond u64.
        let ns = ns as u64;
        (ns - ns % MIN_SPAN_NS).max(MIN_SPAN_NS)
    }

    /// `0..n` in a random order.
    fn shuffled(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, self.below(i + 1));
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;
    use std::collections::BTreeSet;

    fn machines(text: &str) -> Vec<Machine> {
        Scenario::parse(text, "t.toml").expect("parses").machines
    }

    const THREE_WITH_DISKS: &str =
        "until = \"1m\"\n[[machine]]\ncount = 3\ncommand = \"x\"\ndisks = [{ size = \"8M\" }]\n";
    const MINUTE: u64 = 60_000_000_000;

    fn every_kind() -> Nemesis {
        Nemesis::with_faults(FaultKind::ALL.to_vec())
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        let m = machines(THREE_WITH_DISKS);
        let a = every_kind().schedule(Seed(7), &m, true, MINUTE);
        assert_eq!(a, every_kind().schedule(Seed(7), &m, true, MINUTE));
        assert_ne!(a, every_kind().schedule(Seed(8), &m, true, MINUTE));
        assert!(
            a.len() >= 4,
            "about 7 faults a minute at the defaults: {a:?}"
        );
    }

    /// The machine indices an action touches.
    fn touched(action: &Action) -> Vec<usize> {
        match action {
            Action::Partition(p) => p.groups.concat(),
            Action::Link(l) => [l.links.from, l.links.to].into_iter().flatten().collect(),
            Action::Kill { machine, .. }
            | Action::Restart { machine }
            | Action::DiskFault { machine, .. }
            | Action::Pause { machine, .. }
            | Action::Resume { machine }
            | Action::Clock { machine, .. } => vec![*machine],
            Action::Heal(_) => vec![],
        }
    }

    #[test]
    fn faults_touch_only_the_target_machines() {
        let four = machines(
            "until = \"1m\"\n[[machine]]\ncount = 4\ncommand = \"x\"\ndisks = [{ size = \"8M\" }]\n",
        );
        let targeted = Nemesis {
            machines: Some(vec![1, 2, 3]),
            ..every_kind()
        };
        let mut seen = BTreeSet::new();
        for seed in 0..50 {
            for event in targeted.schedule(Seed(seed), &four, true, MINUTE) {
                seen.extend(touched(&event.action));
            }
        }
        assert_eq!(
            seen,
            BTreeSet::from([1, 2, 3]),
            "machine 0 is never touched"
        );
        // Naming every machine is the same as naming none.
        let all = Nemesis {
            machines: Some(vec![0, 1, 2, 3]),
            ..every_kind()
        };
        assert_eq!(
            all.schedule(Seed(3), &four, true, MINUTE),
            every_kind().schedule(Seed(3), &four, true, MINUTE)
        );
    }

    #[test]
    fn no_fault_begins_before_the_start() {
        let m = machines(THREE_WITH_DISKS);
        let late = Nemesis {
            start_ns: 20_000_000_000,
            ..every_kind()
        };
        let mut faults = 0;
        for seed in 0..50 {
            let events = late.schedule(Seed(seed), &m, true, MINUTE);
            faults += events.len();
            if let Some(first) = events.first() {
                assert!(first.at_ns > 20_000_000_000, "seed {seed}: {first:?}");
            }
        }
        assert!(faults > 50, "the window after the start still gets faults");
        // A start inside the quiet tail leaves no room for any.
        let too_late = Nemesis {
            start_ns: MINUTE - DEFAULT_QUIET_NS,
            ..every_kind()
        };
        assert!(too_late.schedule(Seed(1), &m, true, MINUTE).is_empty());
    }

    #[test]
    fn the_quiet_tail_stays_quiet_and_events_are_in_time_order() {
        let m = machines(THREE_WITH_DISKS);
        for seed in 0..50 {
            let events = every_kind().schedule(Seed(seed), &m, true, MINUTE);
            let end = MINUTE - DEFAULT_QUIET_NS;
            for pair in events.windows(2) {
                assert!(pair[0].at_ns <= pair[1].at_ns);
            }
            for event in &events {
                assert!(
                    event.at_ns <= end,
                    "seed {seed}: {event:?} in the quiet tail"
                );
                if let Action::Pause {
                    for_ns: Some(d), ..
                } = event.action
                {
                    assert!(
                        event.at_ns + d <= end,
                        "seed {seed}: pause runs into the tail"
                    );
                }
            }
        }
    }

    #[test]
    fn every_fault_is_healed_and_shapes_are_valid() {
        let m = machines(
            "until = \"1m\"\n[[machine]]\ncount = 5\ncommand = \"x\"\ndisks = [{ size = \"8M\" }]\n",
        );
        let mut kinds_seen = std::collections::BTreeSet::new();
        for seed in 0..40 {
            let events = every_kind().schedule(Seed(seed), &m, true, MINUTE);
            let mut open_partitions = std::collections::BTreeSet::new();
            let mut links_down = 0i64;
            let mut killed = Vec::new();
            let mut rate_or_slow = 0i64;
            for event in &events {
                match &event.action {
                    Action::Partition(p) => {
                        kinds_seen.insert("partition");
                        assert!(p.groups.len() == 2 && p.groups.iter().all(|g| !g.is_empty()));
                        let mut all: Vec<usize> = p.groups.concat();
                        all.sort_unstable();
                        assert_eq!(
                            all,
                            (0..5).collect::<Vec<_>>(),
                            "groups cover every machine once"
                        );
                        open_partitions.insert(p.name.clone());
                    }
                    Action::Heal(Heal::Named(name)) => {
                        assert!(
                            open_partitions.remove(name),
                            "heal of {name} without its partition"
                        );
                    }
                    Action::Link(o) => {
                        kinds_seen.insert("links");
                        assert!(o.links.from.is_some() && o.links.to.is_some() && o.links.both);
                        links_down += if o.settings.up == Some(false) { 1 } else { -1 };
                    }
                    Action::Kill { machine, .. } => {
                        kinds_seen.insert("kill");
                        killed.push(*machine);
                        assert!(killed.len() <= 2, "a minority of five is at most two");
                    }
                    Action::Restart { machine } => {
                        let at = killed
                            .iter()
                            .position(|k| k == machine)
                            .expect("restart of a killed machine");
                        killed.remove(at);
                    }
                    Action::Pause { for_ns, .. } => {
                        kinds_seen.insert("pause");
                        assert!(for_ns.is_some_and(|d| d >= MIN_SPAN_NS));
                    }
                    Action::Clock { change, .. } => {
                        kinds_seen.insert("clock");
                        match change {
                            ClockChange::Rate { ppm: 0 } | ClockChange::Offset { offset_ns: 0 } => {
                                rate_or_slow -= 1
                            }
                            ClockChange::Rate { ppm } => {
                                assert!((100..50_100).contains(&ppm.abs()));
                                rate_or_slow += 1
                            }
                            ClockChange::Step { delta_ns } => {
                                assert!(delta_ns.abs() >= 10_000_000);
                                rate_or_slow += 1
                            }
                            ClockChange::Offset { .. } => panic!("only resets set an offset"),
                        }
                    }
                    Action::DiskFault { fault, .. } => {
                        kinds_seen.insert("disk");
                        match fault {
                            Fault::Slow { .. } => rate_or_slow += 1,
                            Fault::Clear => rate_or_slow -= 1,
                            Fault::Stall { until_ns } => assert!(*until_ns > event.at_ns),
                            other => panic!("unexpected disk fault {other:?}"),
                        }
                    }
                    other => panic!("unexpected action {other:?}"),
                }
            }
            assert!(
                open_partitions.is_empty() && killed.is_empty(),
                "seed {seed}: unhealed"
            );
            assert_eq!((links_down, rate_or_slow), (0, 0), "seed {seed}: unhealed");
        }
        assert_eq!(
            kinds_seen.len(),
            6,
            "every kind and link shape appears: {kinds_seen:?}"
        );
    }

    #[test]
    fn inapplicable_kinds_are_skipped() {
        let one = machines("until = \"1m\"\n[[machine]]\ncommand = \"x\"\n");
        let nemesis = Nemesis::with_faults(vec![FaultKind::Partition, FaultKind::Disk]);
        assert!(nemesis.schedule(Seed(1), &one, false, MINUTE).is_empty());
        let pauses =
            Nemesis::with_faults(vec![FaultKind::Pause]).schedule(Seed(1), &one, false, MINUTE);
        assert!(!pauses.is_empty());
        // A run shorter than its quiet tail gets no faults.
        assert!(every_kind()
            .schedule(Seed(1), &one, false, DEFAULT_QUIET_NS)
            .is_empty());
    }
}
