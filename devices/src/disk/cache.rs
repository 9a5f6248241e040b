//! Where written data lives: the durable overlay and the volatile write cache.
//!
//! A completed write goes into the volatile cache (visible to reads at once) and into the log of
//! unflushed writes, which a crash consults to decide what reached the media. A FLUSH moves the
//! cache into the durable overlay and empties the log. Maps are `BTreeMap`s so every iteration
//! (images, crashes) runs in sector order, the same on every run.
//!
//! The log is bounded: past [`SectorStore::cache_limit_bytes`] of unflushed data the oldest writes
//! are written back (made durable), as a real drive destages its cache. Without that a guest that
//! never flushes could grow the log without limit by rewriting the same sectors.

use std::collections::{BTreeMap, VecDeque};

use super::{SECTOR_BYTES, SECTOR_SIZE};

/// One sector's contents.
pub(crate) type SectorData = Box<[u8; SECTOR_SIZE]>;

/// A completed write that no FLUSH has covered yet. Its place in the log is its sequence number:
/// completion order, which is also request id order.
#[derive(Clone, Debug)]
pub(crate) struct UnflushedWrite {
    /// First sector written.
    pub sector: u64,
    /// Whole sectors of data.
    pub data: Vec<u8>,
}

/// The disk's written contents over its base image.
#[derive(Debug)]
pub(crate) struct SectorStore {
    durable: BTreeMap<u64, SectorData>,
    volatile: BTreeMap<u64, SectorData>,
    unflushed: VecDeque<UnflushedWrite>,
    unflushed_bytes: u64,
    cache_limit_bytes: u64,
}

impl SectorStore {
    /// An empty store whose log holds at most `cache_limit_bytes` of unflushed data.
    pub fn new(cache_limit_bytes: u64) -> Self {
        Self {
            durable: BTreeMap::new(),
            volatile: BTreeMap::new(),
            unflushed: VecDeque::new(),
            unflushed_bytes: 0,
            cache_limit_bytes,
        }
    }

    /// A store holding exactly these contents, for restoring saved state. The caller has checked
    /// that the log fits `cache_limit_bytes`, so nothing is written back here.
    pub fn from_parts(
        durable: BTreeMap<u64, SectorData>,
        volatile: BTreeMap<u64, SectorData>,
        unflushed: VecDeque<UnflushedWrite>,
        cache_limit_bytes: u64,
    ) -> Self {
        let unflushed_bytes = unflushed.iter().map(|write| write.data.len() as u64).sum();
        Self {
            durable,
            volatile,
            unflushed,
            unflushed_bytes,
            cache_limit_bytes,
        }
    }

    /// The bound of the unflushed log in bytes.
    pub fn cache_limit_bytes(&self) -> u64 {
        self.cache_limit_bytes
    }

    /// The unflushed log, oldest first.
    pub fn unflushed(&self) -> impl Iterator<Item = &UnflushedWrite> {
        self.unflushed.iter()
    }

    /// Changes the bound of the unflushed log, writing back what no longer fits.
    pub fn set_cache_limit(&mut self, bytes: u64) {
        self.cache_limit_bytes = bytes;
        self.write_back_excess();
    }

    /// Copies written sectors in `[sector, sector + buf.len() / SECTOR_SIZE)` over `buf`, which
    /// holds the base contents: durable first, then the newer volatile cache.
    pub fn overlay_into(&self, sector: u64, buf: &mut [u8]) {
        let end = sector.saturating_add((buf.len() / SECTOR_SIZE) as u64);
        for layer in self.layers() {
            for (&written, data) in layer.range(sector..end) {
                if let Some(slot) = sector_slot(buf, written - sector) {
                    slot.copy_from_slice(&data[..]);
                }
            }
        }
    }

    /// Makes a completed write visible and logs it as unflushed.
    pub fn write(&mut self, sector: u64, data: Vec<u8>) {
        write_sectors(&mut self.volatile, sector, &data);
        self.unflushed_bytes = self.unflushed_bytes.saturating_add(data.len() as u64);
        self.unflushed.push_back(UnflushedWrite { sector, data });
        self.write_back_excess();
    }

    /// Makes everything written so far durable.
    pub fn flush(&mut self) {
        self.durable.append(&mut self.volatile);
        self.unflushed.clear();
        self.unflushed_bytes = 0;
    }

    /// Power loss: discards the volatile cache and hands back the unflushed log, oldest first,
    /// for the crash policy to decide what survives.
    pub fn lose_power(&mut self) -> VecDeque<UnflushedWrite> {
        self.volatile.clear();
        self.unflushed_bytes = 0;
        std::mem::take(&mut self.unflushed)
    }

    /// Writes `data` straight to the durable overlay (a write that reached the media).
    pub fn write_durable(&mut self, sector: u64, data: &[u8]) {
        write_sectors(&mut self.durable, sector, data);
    }

    /// Number of completed writes no FLUSH has covered.
    pub fn unflushed_writes(&self) -> usize {
        self.unflushed.len()
    }

    /// The overlay maps, older first: a sector in the second shadows the first.
    pub fn layers(&self) -> [&BTreeMap<u64, SectorData>; 2] {
        [&self.durable, &self.volatile]
    }

    /// Writes back the oldest unflushed writes until the log fits its bound. Their sectors in
    /// the volatile cache hold the same or newer data, so reads do not change.
    fn write_back_excess(&mut self) {
        while self.unflushed_bytes > self.cache_limit_bytes {
            let Some(oldest) = self.unflushed.pop_front() else {
                self.unflushed_bytes = 0;
                break;
            };
            self.unflushed_bytes = self
                .unflushed_bytes
                .saturating_sub(oldest.data.len() as u64);
            write_sectors(&mut self.durable, oldest.sector, &oldest.data);
        }
    }
}

/// Stores whole sectors of `data` from `sector` on in `map`, reusing existing buffers. A
/// trailing partial sector (never passed by the disk) is ignored.
pub(crate) fn write_sectors(map: &mut BTreeMap<u64, SectorData>, sector: u64, data: &[u8]) {
    for (index, chunk) in data.chunks_exact(SECTOR_SIZE).enumerate() {
        let Some(target) = sector.checked_add(index as u64) else {
            return;
        };
        map.entry(target)
            .or_insert_with(|| Box::new([0; SECTOR_SIZE]))
            .copy_from_slice(chunk);
    }
}

/// The `index`th sector of `buf`, if `buf` is that long.
fn sector_slot(buf: &mut [u8], index: u64) -> Option<&mut [u8]> {
    let start = usize::try_from(index.checked_mul(SECTOR_BYTES)?).ok()?;
    buf.get_mut(start..start.checked_add(SECTOR_SIZE)?)
}
