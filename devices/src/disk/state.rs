//! Saving a disk's contents and faults, and restoring them into a disk opened again over the same
//! base image, for world snapshots.
//!
//! Saved: the written sectors (durable and cached), the unflushed log in order (so a later crash
//! decides exactly as it would have), the injected faults and the next request id. Not saved: the
//! base image (the restoring disk opens it again), the latency configuration (the restoring
//! disk's own), the random stream (the caller supplies one, so a run continued with another seed
//! draws other latencies), and the statistics, which describe a run: a restored disk keeps its
//! own counters, zero when freshly opened. Only an idle disk is saved, so there is no queue.

use std::collections::{BTreeMap, VecDeque};

use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use super::cache::{write_sectors, SectorData, SectorStore, UnflushedWrite};
use super::faults::{FaultState, SectorRanges};
use super::{Disk, MAX_REQUEST_BYTES, SECTOR_SIZE};
use crate::snapshot::SnapshotError;

/// Everything a guest can observe of a [`Disk`] beyond its base image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskState {
    /// In sectors; fixed at construction, so it must match the restoring disk's.
    pub capacity: u64,
    /// Bound of the unflushed log in bytes; fixed at construction, so it must match too.
    pub write_cache_limit: u64,
    /// Sectors written and made durable, as runs in sector order.
    pub durable: Vec<SectorRun>,
    /// The volatile cache, as runs in sector order; it shadows `durable`.
    pub volatile: Vec<SectorRun>,
    /// Completed writes no FLUSH has covered, oldest first, one entry per write.
    pub unflushed: Vec<SectorRun>,
    /// Sectors whose reads fail until rewritten, in order.
    pub latent_errors: Vec<SectorSpan>,
    /// Sectors whose writes fail, in order.
    pub write_errors: Vec<SectorSpan>,
    /// No request completes before this virtual time (0: no stall).
    pub stall_until_ns: u64,
    /// Added to every new request's latency.
    pub slow_extra_ns: u64,
    /// Id of the next request, so ids keep increasing across the snapshot.
    pub next_id: u64,
}

/// Contiguous sectors from `sector`: one byte blob, not one entry per sector, so a binary
/// format stores it as raw bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectorRun {
    pub sector: u64,
    /// A whole, non-zero number of sectors.
    #[serde(with = "blob")]
    pub data: Vec<u8>,
}

impl std::fmt::Debug for SectorRun {
    /// The extent, not megabytes of bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SectorRun({} + {} bytes)", self.sector, self.data.len())
    }
}

/// The sectors `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectorSpan {
    pub start: u64,
    pub end: u64,
}

impl Disk {
    /// The disk's contents and faults. Refuses while requests are in flight: their effects are
    /// not state yet, and the queue is not saved.
    pub fn save(&self) -> Result<DiskState, SnapshotError> {
        if self.has_in_flight() {
            return Err(SnapshotError::Invalid(format!(
                "disk has {} requests in flight; save it when idle",
                self.in_flight()
            )));
        }
        let [durable, volatile] = self.store.layers();
        Ok(DiskState {
            capacity: self.sectors(),
            write_cache_limit: self.store.cache_limit_bytes(),
            durable: runs(durable),
            volatile: runs(volatile),
            unflushed: self
                .store
                .unflushed()
                .map(|write| SectorRun {
                    sector: write.sector,
                    data: write.data.clone(),
                })
                .collect(),
            latent_errors: spans(&self.faults.latent),
            write_errors: spans(&self.faults.write_errors),
            stall_until_ns: self.faults.stall_until_ns,
            slow_extra_ns: self.faults.slow_extra_ns,
            next_id: self.next_id,
        })
    }

    /// Restores `state` into this disk, opened again over the same base with the same capacity
    /// and write cache limit, and makes `rng` its stream. On error the disk is left as it was.
    pub fn restore(&mut self, state: &DiskState, rng: ChaCha20Rng) -> Result<(), SnapshotError> {
        if self.has_in_flight() {
            return Err(SnapshotError::Invalid(format!(
                "restoring disk has {} requests in flight",
                self.in_flight()
            )));
        }
        let capacity = self.sectors();
        if state.capacity != capacity {
            return Err(SnapshotError::mismatch(
                "disk capacity (sectors)",
                state.capacity,
                capacity,
            ));
        }
        let cache_limit = self.store.cache_limit_bytes();
        if state.write_cache_limit != cache_limit {
            return Err(SnapshotError::mismatch(
                "disk write cache limit (bytes)",
                state.write_cache_limit,
                cache_limit,
            ));
        }
        let durable = layer("durable", &state.durable, capacity)?;
        let volatile = layer("volatile", &state.volatile, capacity)?;
        let unflushed = log(&state.unflushed, capacity, cache_limit)?;
        let faults = FaultState {
            latent: ranges("latent error", &state.latent_errors, capacity)?,
            write_errors: ranges("write error", &state.write_errors, capacity)?,
            stall_until_ns: state.stall_until_ns,
            slow_extra_ns: state.slow_extra_ns,
        };
        self.store = SectorStore::from_parts(durable, volatile, unflushed, cache_limit);
        self.faults = faults;
        self.next_id = state.next_id;
        self.rng = rng;
        Ok(())
    }
}

/// The sectors of `layer` gathered into runs of contiguous sectors.
fn runs(layer: &BTreeMap<u64, SectorData>) -> Vec<SectorRun> {
    let mut runs: Vec<SectorRun> = Vec::new();
    for (&sector, data) in layer {
        match runs.last_mut() {
            Some(run) if run.sector + (run.data.len() / SECTOR_SIZE) as u64 == sector => {
                run.data.extend_from_slice(&data[..]);
            }
            _ => runs.push(SectorRun {
                sector,
                data: data.to_vec(),
            }),
        }
    }
    runs
}

fn spans(ranges: &SectorRanges) -> Vec<SectorSpan> {
    ranges
        .intervals()
        .into_iter()
        .map(|(start, end)| SectorSpan { start, end })
        .collect()
}

/// The sectors `run` covers, if it is whole sectors, not empty, and on a disk of `capacity`.
fn extent(what: &str, run: &SectorRun, capacity: u64) -> Result<SectorSpan, SnapshotError> {
    let len = run.data.len();
    if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
        return Err(SnapshotError::Invalid(format!(
            "{what} data at sector {} is {len} bytes, not whole sectors",
            run.sector
        )));
    }
    checked_span(
        what,
        run.sector,
        run.sector.checked_add((len / SECTOR_SIZE) as u64),
        capacity,
    )
}

/// `[start, end)` if it is non-empty and on a disk of `capacity`.
fn checked_span(
    what: &str,
    start: u64,
    end: Option<u64>,
    capacity: u64,
) -> Result<SectorSpan, SnapshotError> {
    match end {
        Some(end) if start < end && end <= capacity => Ok(SectorSpan { start, end }),
        _ => Err(SnapshotError::Invalid(format!(
            "{what} sectors from {start} are empty or beyond the disk's {capacity}"
        ))),
    }
}

/// Refuses `span` unless it starts at or after `previous`: saved layers and ranges are sorted
/// and disjoint, so overlap means the state was not saved from a disk.
fn check_order(what: &str, previous: &mut u64, span: SectorSpan) -> Result<(), SnapshotError> {
    if span.start < *previous {
        return Err(SnapshotError::Invalid(format!(
            "{what} sectors from {} overlap or are out of order",
            span.start
        )));
    }
    *previous = span.end;
    Ok(())
}

fn layer(
    what: &str,
    runs: &[SectorRun],
    capacity: u64,
) -> Result<BTreeMap<u64, SectorData>, SnapshotError> {
    let mut map = BTreeMap::new();
    let mut previous = 0;
    for run in runs {
        check_order(what, &mut previous, extent(what, run, capacity)?)?;
        write_sectors(&mut map, run.sector, &run.data);
    }
    Ok(map)
}

/// The unflushed log: each entry one write the disk could have accepted, all of them within
/// the cache bound (a disk writes back the oldest beyond it).
fn log(
    runs: &[SectorRun],
    capacity: u64,
    cache_limit: u64,
) -> Result<VecDeque<UnflushedWrite>, SnapshotError> {
    let mut total = 0u64;
    let mut log = VecDeque::with_capacity(runs.len());
    for run in runs {
        extent("unflushed write", run, capacity)?;
        if run.data.len() > MAX_REQUEST_BYTES {
            return Err(SnapshotError::Invalid(format!(
                "unflushed write at sector {} is larger than any request",
                run.sector
            )));
        }
        total = total.saturating_add(run.data.len() as u64);
        log.push_back(UnflushedWrite {
            sector: run.sector,
            data: run.data.clone(),
        });
    }
    if total > cache_limit {
        return Err(SnapshotError::Invalid(format!(
            "{total} unflushed bytes exceed the write cache limit of {cache_limit}"
        )));
    }
    Ok(log)
}

fn ranges(what: &str, spans: &[SectorSpan], capacity: u64) -> Result<SectorRanges, SnapshotError> {
    let mut ranges = SectorRanges::default();
    let mut previous = 0;
    for span in spans {
        let span = checked_span(what, span.start, Some(span.end), capacity)?;
        check_order(what, &mut previous, span)?;
        ranges.insert(span.start, span.end);
    }
    Ok(ranges)
}

/// Sector data as a serde byte string: raw bytes in binary formats. Also accepts a sequence of
/// bytes, which is how text formats such as JSON write it.
mod blob {
    use std::fmt;

    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(data: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(data)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(BlobVisitor)
    }

    struct BlobVisitor;

    impl<'de> Visitor<'de> for BlobVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("sector data as bytes")
        }

        fn visit_bytes<E>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
            Ok(bytes.to_vec())
        }

        fn visit_byte_buf<E>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(bytes)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // The hint comes from the input; cap what it may reserve up front.
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(byte) = seq.next_element()? {
                bytes.push(byte);
            }
            Ok(bytes)
        }
    }
}

#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
mod tests;
