//! The simulated disk: a block device with a volatile write cache, virtual-time latency, injected
//! faults and power loss.
//!
//! The disk is a plain state machine, like every device here: the VMM submits requests with the
//! current virtual time, asks when the next one completes, and collects completions when its clock
//! gets there. A request's effect happens at its completion: a write becomes visible then, a read
//! returns what is visible then. Written data lives in memory over a read-only [`BaseImage`];
//! nothing is written to the host unless [`Disk::write_image`] is asked to.
//!
//! Durability follows the FLUSH contract of a drive with a write cache: a completed write is
//! visible at once but durable only after a FLUSH completes. [`Disk::crash`] models power loss,
//! deciding by a [`CrashPolicy`] which unflushed writes reach the media, so a guest's crash
//! consistency (fsync, journals) can be tested.
//!
//! Everything random comes from the disk's own ChaCha20 stream (latency) or the caller's (crash
//! decisions), and the arithmetic avoids libm, so a seed gives the same disk on every host.

mod base;
mod cache;
mod crash;
mod error;
mod faults;
mod image;
mod latency;
#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
mod proptests;
mod state;
#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
mod tests;

use std::collections::VecDeque;
use std::fmt;

use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;

pub use base::BaseImage;
pub use crash::{CrashOutcome, CrashPolicy, UnknownCrashPolicy};
pub use error::{DiskError, IoError};
pub use faults::Fault;
pub use latency::Latency;
pub use state::{DiskState, SectorRun, SectorSpan};

use cache::SectorStore;
use faults::FaultState;

/// Bytes in a sector, the unit of every request.
pub const SECTOR_SIZE: usize = 512;

/// [`SECTOR_SIZE`] for arithmetic on sector numbers.
const SECTOR_BYTES: u64 = SECTOR_SIZE as u64;

/// The largest read or write one request may move. Larger requests fail with
/// [`IoError::Invalid`], so a guest-chosen sector count cannot make the disk allocate without
/// bound. The VMM should advertise a limit within it (virtio-blk `size_max` and `seg_max`).
pub const MAX_REQUEST_BYTES: usize = 8 << 20;

/// [`MAX_REQUEST_BYTES`] in sectors.
pub const MAX_REQUEST_SECTORS: u32 = 16 << 10;
const _: () = assert!(MAX_REQUEST_SECTORS as usize * SECTOR_SIZE == MAX_REQUEST_BYTES);

/// Default bound on unflushed data held in the write cache before the oldest is written back.
pub const DEFAULT_WRITE_CACHE_BYTES: u64 = 64 << 20;

/// A request's identity, unique over the disk's lifetime (crashes included) and increasing in
/// submission order, which is also completion order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What the guest asks of the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Read `sectors` sectors from `sector`.
    Read {
        /// First sector.
        sector: u64,
        /// Number of sectors, at least 1 and at most [`MAX_REQUEST_SECTORS`].
        sectors: u32,
    },
    /// Write `data`, a whole, non-zero number of sectors, from `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// The data, at most [`MAX_REQUEST_BYTES`].
        data: Vec<u8>,
    },
    /// Make every write that completed before this request durable.
    Flush,
}

/// The disk's answer to [`Disk::submit`]: the request's id and when it will complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Submitted {
    /// The id its completion will carry.
    pub id: RequestId,
    /// Virtual time (ns) it completes, unless the disk crashes first or a stall holds it back.
    pub completes_at_ns: u64,
}

/// What a successful request returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The sectors read.
    Read(Vec<u8>),
    /// The write is visible (not yet durable).
    Written,
    /// Every earlier write is durable.
    Flushed,
}

/// A finished request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The request.
    pub id: RequestId,
    /// Virtual time (ns) it completed.
    pub at_ns: u64,
    /// What it returned.
    pub result: Result<Response, IoError>,
}

/// Counters over the disk's lifetime, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DiskStats {
    /// Requests submitted.
    pub submitted: u64,
    /// Requests completed, successfully or not.
    pub completed: u64,
    /// Reads completed successfully.
    pub reads: u64,
    /// Writes completed successfully.
    pub writes: u64,
    /// Flushes completed.
    pub flushes: u64,
    /// Sectors returned by successful reads.
    pub sectors_read: u64,
    /// Sectors stored by successful writes.
    pub sectors_written: u64,
    /// Requests completed with an error.
    pub errors: u64,
    /// Requests dropped in flight by crashes.
    pub dropped: u64,
    /// Crashes.
    pub crashes: u64,
}

/// A request waiting in the disk's queue.
#[derive(Debug)]
struct InFlight {
    id: RequestId,
    completes_at_ns: u64,
    work: Work,
}

/// What a queued request will do when it completes.
#[derive(Debug)]
enum Work {
    Read {
        sector: u64,
        sectors: u32,
    },
    Write {
        sector: u64,
        data: Vec<u8>,
    },
    Flush,
    /// Failed validation at submission; completes with this error and no effect.
    Rejected(IoError),
}

/// A simulated disk. See the [module documentation](self).
#[derive(Debug)]
pub struct Disk {
    base: BaseImage,
    store: SectorStore,
    faults: FaultState,
    latency: Latency,
    rng: ChaCha20Rng,
    /// Requests in flight, in submission order, which is also completion order.
    queue: VecDeque<InFlight>,
    next_id: u64,
    stats: DiskStats,
}

impl Disk {
    /// A disk starting from `base` whose latencies come from `rng`, the disk's own stream (so
    /// its traffic shifts no other device's randomness).
    pub fn new(base: BaseImage, latency: Latency, rng: ChaCha20Rng) -> Self {
        Self {
            base,
            store: SectorStore::new(DEFAULT_WRITE_CACHE_BYTES),
            faults: FaultState::default(),
            latency,
            rng,
            queue: VecDeque::new(),
            next_id: 0,
            stats: DiskStats::default(),
        }
    }

    /// Bounds the unflushed data in the write cache (default [`DEFAULT_WRITE_CACHE_BYTES`]);
    /// beyond it the oldest writes are written back and become durable without a FLUSH. 0 makes
    /// the cache write-through: every completed write is durable.
    pub fn with_write_cache_limit(mut self, bytes: u64) -> Self {
        self.store.set_cache_limit(bytes);
        self
    }

    /// Size of the disk in sectors.
    pub fn sectors(&self) -> u64 {
        self.base.sectors()
    }

    /// The latency requests are drawn with.
    pub fn latency(&self) -> Latency {
        self.latency
    }

    /// Counters so far.
    pub fn stats(&self) -> DiskStats {
        self.stats
    }

    /// Requests submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Whether any request is in flight, which rules out [`Disk::save`].
    pub fn has_in_flight(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Completed writes that no FLUSH has made durable yet.
    pub fn unflushed_writes(&self) -> usize {
        self.store.unflushed_writes()
    }

    /// Queues `request` at virtual time `now_ns` and says when it completes.
    ///
    /// The disk has a single queue and serves it in order (a virtio-blk device with one
    /// virtqueue): a request completes at `now + latency`, but never before the request
    /// submitted before it. Completion order is therefore submission order, so a FLUSH covers
    /// exactly the writes submitted before it and crash analysis needs no reordering rules.
    ///
    /// A malformed request (out of range, empty, partial sectors, too large) is queued like any
    /// other, takes its place and latency draw, and completes with an [`IoError`]: each request
    /// takes exactly one draw, so a rejected request does not shift later timings.
    pub fn submit(&mut self, now_ns: u64, request: Request) -> Submitted {
        let id = RequestId(self.next_id);
        self.next_id = self.next_id.saturating_add(1);
        let work = self.validate(request);
        let latency_ns = self
            .latency
            .draw(&mut self.rng)
            .saturating_add(self.faults.slow_extra_ns);
        let completes_at_ns = now_ns
            .saturating_add(latency_ns)
            .max(self.fifo_tail_ns())
            .max(self.faults.stall_until_ns);
        self.queue.push_back(InFlight {
            id,
            completes_at_ns,
            work,
        });
        self.stats.submitted += 1;
        Submitted {
            id,
            completes_at_ns,
        }
    }

    /// When the next request completes, if any is in flight.
    pub fn next_completion(&self) -> Option<u64> {
        self.queue.front().map(|request| request.completes_at_ns)
    }

    /// Completes every request due by `now_ns`, in completion order (ties by id), applying each
    /// one's effect at its moment.
    pub fn complete_due(&mut self, now_ns: u64) -> Vec<Completion> {
        let mut completions = Vec::new();
        while let Some(request) = self.pop_due(now_ns) {
            completions.push(self.complete(request));
        }
        completions
    }

    /// Injects `fault` now. A stall also holds back the requests already in flight.
    pub fn apply_fault(&mut self, fault: Fault) {
        self.faults.apply(fault, self.sectors());
        if let Fault::Stall { until_ns } = fault {
            // The queue stays sorted: every time is raised to at least the same bound.
            for request in &mut self.queue {
                request.completes_at_ns = request.completes_at_ns.max(until_ns);
            }
        }
    }

    /// Power loss. Every request in flight is dropped, the volatile cache is gone, and `policy`
    /// (drawing from `rng`) decides which unflushed and in-flight writes reached the media; the
    /// survivors are applied in order onto the durable contents. Afterwards the disk holds no
    /// requests and serves the next incarnation; request ids keep increasing. Injected faults
    /// stay: power loss does not repair a drive.
    pub fn crash(&mut self, policy: CrashPolicy, rng: &mut impl RngCore) -> CrashOutcome {
        let in_flight = std::mem::take(&mut self.queue);
        let unflushed = self.store.lose_power();
        let mut outcome = CrashOutcome::new(policy, in_flight.len() as u64);
        for write in &unflushed {
            self.settle_crashed_write(policy, write.sector, &write.data, false, rng, &mut outcome);
        }
        for request in &in_flight {
            if let Work::Write { sector, data } = &request.work {
                self.settle_crashed_write(policy, *sector, data, true, rng, &mut outcome);
            }
        }
        self.stats.dropped += outcome.dropped_requests;
        self.stats.crashes += 1;
        outcome
    }

    /// Copies what is visible now at `sector` into `buf` (a whole number of sectors): what a
    /// read would return, ignoring injected medium errors. For tests and images.
    pub fn read_visible(&self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        if !buf.len().is_multiple_of(SECTOR_SIZE) {
            return Err(IoError::Invalid);
        }
        self.check_range(sector, (buf.len() / SECTOR_SIZE) as u64)?;
        self.visible_into(sector, buf)
    }

    /// The request as it will run, or the error it will complete with.
    fn validate(&self, request: Request) -> Work {
        let checked = match &request {
            Request::Read { sector, sectors } => self.check_read(*sector, *sectors),
            Request::Write { sector, data } => self.check_write(*sector, data.len()),
            Request::Flush => Ok(()),
        };
        match (checked, request) {
            (Err(error), _) => Work::Rejected(error),
            (Ok(()), Request::Read { sector, sectors }) => Work::Read { sector, sectors },
            (Ok(()), Request::Write { sector, data }) => Work::Write { sector, data },
            (Ok(()), Request::Flush) => Work::Flush,
        }
    }

    fn check_read(&self, sector: u64, sectors: u32) -> Result<(), IoError> {
        if sectors == 0 || sectors > MAX_REQUEST_SECTORS {
            return Err(IoError::Invalid);
        }
        self.check_range(sector, u64::from(sectors))
    }

    fn check_write(&self, sector: u64, len: usize) -> Result<(), IoError> {
        if len == 0 || !len.is_multiple_of(SECTOR_SIZE) || len > MAX_REQUEST_BYTES {
            return Err(IoError::Invalid);
        }
        self.check_range(sector, (len / SECTOR_SIZE) as u64)
    }

    /// `[sector, sector + count)` lies on the disk.
    fn check_range(&self, sector: u64, count: u64) -> Result<(), IoError> {
        match sector.checked_add(count) {
            Some(end) if end <= self.sectors() => Ok(()),
            _ => Err(IoError::OutOfRange),
        }
    }

    /// Completion time of the last request in the queue, which a new one may not precede.
    fn fifo_tail_ns(&self) -> u64 {
        self.queue
            .back()
            .map_or(0, |request| request.completes_at_ns)
    }

    fn pop_due(&mut self, now_ns: u64) -> Option<InFlight> {
        let due = self.queue.front()?.completes_at_ns <= now_ns;
        if due {
            self.queue.pop_front()
        } else {
            None
        }
    }

    /// Applies a request's effect at its completion.
    fn complete(&mut self, request: InFlight) -> Completion {
        let result = match request.work {
            Work::Read { sector, sectors } => self.read_now(sector, sectors),
            Work::Write { sector, data } => self.write_now(sector, data),
            Work::Flush => self.flush_now(),
            Work::Rejected(error) => Err(error),
        };
        self.stats.completed += 1;
        if result.is_err() {
            self.stats.errors += 1;
        }
        Completion {
            id: request.id,
            at_ns: request.completes_at_ns,
            result,
        }
    }

    fn read_now(&mut self, sector: u64, sectors: u32) -> Result<Response, IoError> {
        let end = sector.saturating_add(u64::from(sectors));
        if self.faults.latent.intersects(sector, end) {
            return Err(IoError::Medium);
        }
        // Validated at submission: at most MAX_REQUEST_BYTES.
        let mut data = vec![0; sectors as usize * SECTOR_SIZE];
        self.visible_into(sector, &mut data)?;
        self.stats.reads += 1;
        self.stats.sectors_read += u64::from(sectors);
        Ok(Response::Read(data))
    }

    fn write_now(&mut self, sector: u64, data: Vec<u8>) -> Result<Response, IoError> {
        let sectors = (data.len() / SECTOR_SIZE) as u64;
        let end = sector.saturating_add(sectors);
        if self.faults.write_errors.intersects(sector, end) {
            return Err(IoError::Medium);
        }
        self.store.write(sector, data);
        self.faults.latent.remove(sector, end);
        self.stats.writes += 1;
        self.stats.sectors_written += sectors;
        Ok(Response::Written)
    }

    fn flush_now(&mut self) -> Result<Response, IoError> {
        self.store.flush();
        self.stats.flushes += 1;
        Ok(Response::Flushed)
    }

    /// The base contents with the overlay on top, for a range already checked.
    fn visible_into(&self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.base
            .read_into(sector, buf)
            .map_err(|_| IoError::BaseUnreadable)?;
        self.store.overlay_into(sector, buf);
        Ok(())
    }

    /// Decides one crash candidate and writes what survives of it to the durable contents. An
    /// in-flight write that a write fault would have failed never reaches the media.
    fn settle_crashed_write(
        &mut self,
        policy: CrashPolicy,
        sector: u64,
        data: &[u8],
        in_flight: bool,
        rng: &mut impl RngCore,
        outcome: &mut CrashOutcome,
    ) {
        let sectors = (data.len() / SECTOR_SIZE) as u64;
        let blocked = in_flight
            && self
                .faults
                .write_errors
                .intersects(sector, sector.saturating_add(sectors));
        let kept = if blocked {
            0
        } else {
            policy.surviving_sectors(sectors, in_flight, rng)
        };
        outcome.record(in_flight, sectors, kept);
        let kept_bytes = usize::try_from(kept).map_or(data.len(), |kept| {
            kept.saturating_mul(SECTOR_SIZE).min(data.len())
        });
        self.store.write_durable(sector, &data[..kept_bytes]);
    }
}
