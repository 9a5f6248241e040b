//! Injected faults: bad sectors, failing writes, stalls and latency spikes.
//!
//! The caller (a scenario's timeline) applies them at virtual times; the disk consults them when a
//! request is submitted (stall, slowness) or completes (sector errors). Sector ranges are kept as
//! merged intervals, so a fault over a billion sectors costs one entry.

use std::collections::BTreeMap;
use std::fmt;

/// A fault the caller injects into a disk at a virtual time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Reads touching these sectors fail with [`IoError::Medium`](super::IoError::Medium) until
    /// each sector is rewritten: a completed write of a sector clears its error, as a drive
    /// remaps a bad sector on write. Clamped to the disk.
    LatentErrors {
        /// First bad sector.
        start: u64,
        /// Number of bad sectors.
        count: u64,
    },
    /// Writes touching these sectors fail with [`IoError::Medium`](super::IoError::Medium) (and
    /// change nothing) until [`Fault::Clear`]. Clamped to the disk.
    WriteErrors {
        /// First sector that rejects writes.
        start: u64,
        /// Number of such sectors.
        count: u64,
    },
    /// No request completes before `until_ns`: those in flight are held back and new ones wait,
    /// like a drive busy with internal recovery. Holding back re-times a request for good: a
    /// later [`Fault::Clear`] does not release requests already held.
    Stall {
        /// Virtual time the stall ends.
        until_ns: u64,
    },
    /// Every request submitted from now on takes `extra_ns` longer (a latency spike); 0 ends it.
    Slow {
        /// Added to each request's latency.
        extra_ns: u64,
    },
    /// Ends write errors, a stall and slowness. Latent errors stay until their sectors are
    /// rewritten: a bad sector does not heal by itself.
    Clear,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::LatentErrors { start, count } => {
                write!(f, "latent-errors start={start} count={count}")
            }
            Fault::WriteErrors { start, count } => {
                write!(f, "write-errors start={start} count={count}")
            }
            Fault::Stall { until_ns } => write!(f, "stall until_ns={until_ns}"),
            Fault::Slow { extra_ns } => write!(f, "slow extra_ns={extra_ns}"),
            Fault::Clear => f.write_str("clear"),
        }
    }
}

/// The faults in force on one disk.
#[derive(Clone, Debug, Default)]
pub(crate) struct FaultState {
    /// Sectors whose reads fail until rewritten.
    pub latent: SectorRanges,
    /// Sectors whose writes fail until cleared.
    pub write_errors: SectorRanges,
    /// No request completes before this time (0: no stall).
    pub stall_until_ns: u64,
    /// Added to every new request's latency.
    pub slow_extra_ns: u64,
}

impl FaultState {
    /// Records `fault` on a disk of `disk_sectors` sectors. Holding back requests already in
    /// flight for a stall is the disk's job, since it owns the queue.
    pub fn apply(&mut self, fault: Fault, disk_sectors: u64) {
        match fault {
            Fault::LatentErrors { start, count } => {
                if let Some((start, end)) = clamp_range(start, count, disk_sectors) {
                    self.latent.insert(start, end);
                }
            }
            Fault::WriteErrors { start, count } => {
                if let Some((start, end)) = clamp_range(start, count, disk_sectors) {
                    self.write_errors.insert(start, end);
                }
            }
            Fault::Stall { until_ns } => self.stall_until_ns = until_ns,
            Fault::Slow { extra_ns } => self.slow_extra_ns = extra_ns,
            Fault::Clear => {
                self.write_errors.clear();
                self.stall_until_ns = 0;
                self.slow_extra_ns = 0;
            }
        }
    }
}

/// `[start, start + count)` cut to `[0, disk_sectors)`, or `None` if nothing is left.
fn clamp_range(start: u64, count: u64, disk_sectors: u64) -> Option<(u64, u64)> {
    if count == 0 || start >= disk_sectors {
        return None;
    }
    Some((start, start.saturating_add(count).min(disk_sectors)))
}

/// A set of sectors as disjoint, non-adjacent half-open intervals `start -> end`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SectorRanges {
    ranges: BTreeMap<u64, u64>,
}

impl SectorRanges {
    /// Adds `[start, end)`, merging with every interval it overlaps or touches.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut merged = (start, end);
        if let Some((&before_start, &before_end)) = self.ranges.range(..start).next_back() {
            if before_end >= start {
                merged = (before_start, merged.1.max(before_end));
                self.ranges.remove(&before_start);
            }
        }
        // Intervals are non-adjacent, so only those starting inside `[start, end]` can merge.
        let absorbed: Vec<u64> = self.ranges.range(start..=end).map(|(&s, _)| s).collect();
        for absorbed_start in absorbed {
            if let Some(absorbed_end) = self.ranges.remove(&absorbed_start) {
                merged.1 = merged.1.max(absorbed_end);
            }
        }
        self.ranges.insert(merged.0, merged.1);
    }

    /// Removes `[start, end)`, splitting intervals that stick out on either side.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        if let Some((&before_start, &before_end)) = self.ranges.range(..start).next_back() {
            if before_end > start {
                self.ranges.insert(before_start, start);
                if before_end > end {
                    self.ranges.insert(end, before_end);
                }
            }
        }
        let inside: Vec<(u64, u64)> = self
            .ranges
            .range(start..end)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (inside_start, inside_end) in inside {
            self.ranges.remove(&inside_start);
            if inside_end > end {
                self.ranges.insert(end, inside_end);
            }
        }
    }

    /// Whether any sector of `[start, end)` is in the set.
    pub fn intersects(&self, start: u64, end: u64) -> bool {
        start < end
            && self
                .ranges
                .range(..end)
                .next_back()
                .is_some_and(|(_, &last_end)| last_end > start)
    }

    /// Empties the set.
    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// The intervals in order.
    pub fn intervals(&self) -> Vec<(u64, u64)> {
        self.ranges.iter().map(|(&s, &e)| (s, e)).collect()
    }
}
