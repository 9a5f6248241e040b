//! virtio-blk: one request queue in front of a disk that belongs to the world.
//!
//! A disk outlives the machine using it (what reached it survives the machine's crash) and
//! completes requests at future virtual times, so the device owns no storage. On the guest's queue
//! notification it parses and checks every request: reads, writes and flushes are handed out
//! ([`VirtioBlock::take_requests`]) and stay in flight until the world completes them
//! ([`VirtioBlock::complete`]), which writes the data and the status byte into guest memory and
//! interrupts the guest. `GET_ID` is answered at once from the serial. A malformed or unsupported
//! request completes at once with an error status, or, if the chain has no status byte, goes
//! back to the guest with a used length of 0; either way it is counted and reported.
//!
//! The device offers `FLUSH`, which tells the driver the disk has a volatile write cache: a
//! write may be lost in a crash until a flush completes. A driver that does not accept it
//! expects every completed write to be durable ([`VirtioBlock::write_cache`]).
//!
//! Request layout (virtio 1.x 5.2.6): device-readable descriptors with the 16-byte header (`type`
//! le32, reserved le32, `sector` le64) and, for a write, the data; then device-writable
//! descriptors with, for a read or `GET_ID`, the data, and last the one-byte status. Descriptor
//! boundaries carry no meaning: the header may span descriptors and the status byte may share
//! the last descriptor with data.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::chain::{self, Buffer, ChainError};
use super::{
    byte, has_feature, used_len, DeviceError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

pub const REQUEST_QUEUE: u16 = 0;
/// Entries of the request queue offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// The block size the device reports, and the unit of every sector number.
pub const SECTOR_SIZE: u32 = 512;
/// `seg_max`: data descriptors per request. Without indirect descriptors every segment takes a
/// ring entry, and a request takes `seg_max + 2` (header and status): 126 lets two of the
/// largest requests share the 256-entry ring instead of one filling it. (It is also what Linux
/// guests see from QEMU's default 128-entry queue.)
pub const SEG_MAX: u32 = 126;
/// `size_max`: bytes per data descriptor, so that a request the driver builds within `seg_max`
/// and `size_max` always fits [`MAX_DATA_LEN`].
pub const SIZE_MAX: u32 = 32 << 10;
/// Largest data part accepted in one request (a bound on what a guest can make the host
/// allocate); anything larger completes with `IOERR`.
pub const MAX_DATA_LEN: usize = 4 << 20;
/// `struct virtio_blk_outhdr`.
const HEADER_LEN: usize = 16;
/// Errors kept between two [`VirtioBlock::take_errors`] calls; the rest are only counted.
const MAX_KEPT_ERRORS: usize = 64;

const _: () = assert!(SEG_MAX as usize * SIZE_MAX as usize <= MAX_DATA_LEN);
const _: () = assert!(SEG_MAX + 2 <= QUEUE_SIZE as u32);

/// Names one request handed out by [`VirtioBlock::take_requests`], for its completion.
///
/// Every request a device hands out gets a new number, so a token never matches a later request
/// that reuses the same descriptor chain, nor any request after a reset. Tokens are meaningful
/// only to the device that issued them, or to the device its state was restored into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestToken {
    id: u64,
    head: u16,
}

/// A request for the disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockRequest {
    pub token: RequestToken,
    pub op: BlockOp,
}

/// What the guest asks of the disk. Sector ranges are checked against the capacity; a read or
/// write covers at least one sector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum BlockOp {
    /// Read `sectors` sectors starting at `sector`.
    Read { sector: u64, sectors: u32 },
    /// Write `data` (a whole number of sectors) starting at `sector`. The data was copied out of
    /// guest memory when the guest queued the request.
    Write { sector: u64, data: Vec<u8> },
    /// Make every completed write durable.
    Flush,
}

/// How the disk completed a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockResult {
    /// Success. A read carries exactly `sectors * 512` bytes of `data`; for writes and flushes
    /// `data` is ignored.
    Ok { data: Option<Vec<u8>> },
    /// The disk failed the request (`VIRTIO_BLK_S_IOERR`).
    IoError,
    /// The disk does not do this (`VIRTIO_BLK_S_UNSUPP`).
    Unsupported,
}

/// What is wrong with a request the guest queued.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("the chain has no device-writable byte for the status")]
    NoStatus,
    #[error("request header of {0} bytes is shorter than 16")]
    HeaderTooShort(usize),
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    #[error("request type {request_type} has {len} data bytes in the wrong direction")]
    MisplacedData { request_type: u32, len: usize },
    #[error("read or write of zero bytes")]
    NoData,
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(usize),
    #[error("data length {0} exceeds the limit of {MAX_DATA_LEN}")]
    TooLarge(usize),
    #[error("sectors {sector}+{sectors} lie past the capacity of {capacity}")]
    OutOfRange {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
    #[error("the chain was queued again while in flight")]
    InFlight,
}

/// A problem reported for the machine.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum BlockError {
    /// A bad request; it was completed at once (or, if in flight already, left alone).
    #[error("virtio-blk request at descriptor {head}: {source}")]
    Request { head: u16, source: RequestError },
    /// The world completed a read with the wrong amount of data; the guest got `IOERR`.
    #[error(
        "virtio-blk read at descriptor {head} completed with {got} bytes, expected {expected}"
    )]
    ReadLength {
        head: u16,
        expected: usize,
        got: usize,
    },
    /// Guest memory refused a write inside a checked buffer; the guest got `IOERR`.
    #[error("virtio-blk completion at descriptor {head}: {source}")]
    Completion { head: u16, source: ChainError },
    /// The used ring itself is broken; the device needs a reset. (Failures while parsing surface
    /// through the transport, which owns the notification.)
    #[error("virtio-blk ring: {reason}")]
    Ring { reason: String },
}

/// Device counters. Every chain taken off the ring is a request handed out (`reads`, `writes`,
/// `flushes`), answered by the device (`get_ids`), rejected (`malformed`, `unsupported`,
/// `out_of_range`) or `reposted_in_flight`; every request handed out is `completed`,
/// `forgotten` or still in flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    /// Sectors covered by the reads and writes handed out.
    pub sectors_read: u64,
    pub sectors_written: u64,
    pub get_ids: u64,
    /// Requests the world completed and the device returned to the guest.
    pub completed: u64,
    /// Of those, the ones with an error status.
    pub completed_with_error: u64,
    /// Requests dropped without a completion: by a reset, by [`VirtioBlock::forget_in_flight`],
    /// or completed while the device needed a reset.
    pub forgotten: u64,
    /// Chains that break the request layout.
    pub malformed: u64,
    /// Requests of a type the device does not know (answered `UNSUPP`).
    pub unsupported: u64,
    /// Reads and writes past the capacity.
    pub out_of_range: u64,
    /// Chains queued again while in flight (the guest broke the protocol; ignored).
    pub reposted_in_flight: u64,
    /// Completions ignored: a token from before a reset, already completed, or never issued.
    pub stale_completions: u64,
}

/// The virtio-blk device model.
#[derive(Debug)]
pub struct VirtioBlock {
    sectors: u64,
    serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
    queues: [Queue; 1],
    features: u64,
    // Present while the driver has the device running.
    interrupt: Option<Interrupt>,
    next_id: u64,
    // By head index: at most one entry per descriptor, so at most the queue size.
    in_flight: BTreeMap<u16, InFlight>,
    requests: Vec<BlockRequest>,
    stats: BlockStats,
    errors: Vec<BlockError>,
}

/// What the device needs to complete a request handed out.
#[derive(Debug)]
struct InFlight {
    id: u64,
    kind: Pending,
    status: GuestAddress,
}

#[derive(Debug)]
enum Pending {
    /// The data goes into `into`, which holds exactly `len` bytes.
    Read {
        into: Vec<Buffer>,
        len: usize,
    },
    Write,
    Flush,
}

impl VirtioBlock {
    /// A disk of `sectors` 512-byte sectors; `serial` is the `GET_ID` answer (at most 20 bytes,
    /// e.g. "simvm-m1-vda"; longer serials are cut to 20).
    pub fn new(sectors: u64, serial: &str) -> Self {
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let n = serial.len().min(id.len());
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Self {
            sectors,
            serial: id,
            queues: [new_queue()],
            features: 0,
            interrupt: None,
            next_id: 0,
            in_flight: BTreeMap::new(),
            requests: Vec::new(),
            stats: BlockStats::default(),
            errors: Vec::new(),
        }
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.sectors
    }

    /// Whether the running driver relies on a volatile write cache (it accepted `FLUSH`): then a
    /// completed write may be lost in a crash until a flush completes. Without it the driver
    /// expects every completed write to be durable (Linux: "write through").
    pub fn write_cache(&self) -> bool {
        has_feature(self.features, VIRTIO_BLK_F_FLUSH)
    }

    pub fn stats(&self) -> BlockStats {
        self.stats
    }

    /// Problems seen since the last call, oldest first.
    pub fn take_errors(&mut self) -> Vec<BlockError> {
        std::mem::take(&mut self.errors)
    }

    /// Requests the guest queued since the last call, in ring order.
    pub fn take_requests(&mut self) -> Vec<BlockRequest> {
        std::mem::take(&mut self.requests)
    }

    /// Requests handed out (or about to be) and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether requests are in flight, taken or not; a machine template should have none.
    pub fn has_in_flight(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Forgets every request in flight, including those not yet taken, without touching guest
    /// memory: the machine died, or the device was reset. Their completions will be stale.
    pub fn forget_in_flight(&mut self) {
        self.stats.forgotten += self.in_flight.len() as u64;
        self.in_flight.clear();
        self.requests.clear();
    }

    /// Completes the request `token` names: for a successful read the data goes into the
    /// chain's data buffers; then the status byte, the used ring entry (its length counts the
    /// bytes written, status included) and, unless the driver suppressed it, an interrupt.
    ///
    /// A token that names no request in flight (from before a reset, already completed) is
    /// ignored and counted. While the device needs a reset the request is dropped instead.
    pub fn complete<M: GuestMemory>(&mut self, mem: &M, token: RequestToken, result: BlockResult) {
        let request = match self.in_flight.entry(token.head) {
            Entry::Occupied(entry) if entry.get().id == token.id => entry.remove(),
            _ => {
                self.stats.stale_completions += 1;
                return;
            }
        };
        let Some(interrupt) = self.running() else {
            self.stats.forgotten += 1;
            return;
        };
        let head = token.head;
        let (code, written) = match (result, request.kind) {
            (BlockResult::Ok { data }, Pending::Read { into, len }) => match data {
                Some(data) if data.len() == len => match chain::scatter(mem, &into, &data) {
                    Ok(n) => (VIRTIO_BLK_S_OK, used_len(n)),
                    Err(source) => {
                        keep(&mut self.errors, BlockError::Completion { head, source });
                        (VIRTIO_BLK_S_IOERR, 0)
                    }
                },
                other => {
                    let got = other.map_or(0, |d| d.len());
                    let error = BlockError::ReadLength {
                        head,
                        expected: len,
                        got,
                    };
                    keep(&mut self.errors, error);
                    (VIRTIO_BLK_S_IOERR, 0)
                }
            },
            (BlockResult::Ok { .. }, Pending::Write | Pending::Flush) => (VIRTIO_BLK_S_OK, 0),
            (BlockResult::IoError, _) => (VIRTIO_BLK_S_IOERR, 0),
            (BlockResult::Unsupported, _) => (VIRTIO_BLK_S_UNSUPP, 0),
        };
        self.stats.completed += 1;
        self.stats.completed_with_error += u64::from(code != VIRTIO_BLK_S_OK);
        let used_len = written + write_status(mem, request.status, code);
        let queue = &mut self.queues[usize::from(REQUEST_QUEUE)];
        if let Err(source) = queue.add_used(mem, head, used_len) {
            ring_failed(&mut self.errors, &interrupt, source);
            return;
        }
        signal_if_needed(queue, mem, &interrupt);
    }

    fn running(&self) -> Option<Interrupt> {
        self.interrupt.clone().filter(|i| !i.needs_reset())
    }

    fn process_requests<M: GuestMemory>(&mut self, mem: &M) -> Result<(), DeviceError> {
        let Some(interrupt) = self.running() else {
            return Ok(());
        };
        let q = usize::from(REQUEST_QUEUE);
        let queue_err = |source| DeviceError::Queue {
            queue: REQUEST_QUEUE,
            source,
        };
        let mut used_any = false;
        loop {
            while let Some(head) = next_head(&mut self.queues[q], mem).map_err(queue_err)? {
                if let Some(used_len) = self.accept(mem, head) {
                    self.queues[q]
                        .add_used(mem, head, used_len)
                        .map_err(queue_err)?;
                    used_any = true;
                }
            }
            // With EVENT_IDX this publishes how far the device got; it reports chains that
            // arrived meanwhile so none is left without a notification.
            if !self.queues[q].enable_notification(mem).map_err(queue_err)? {
                break;
            }
        }
        if used_any {
            signal_if_needed(&mut self.queues[q], mem, &interrupt);
        }
        Ok(())
    }

    /// Takes the chain at `head` off the ring: hands its request out (`None`), or finishes it
    /// now and returns the used length for the ring. A chain already in flight is left alone
    /// (`None` too): completing it now would return the descriptors twice.
    fn accept<M: GuestMemory>(&mut self, mem: &M, head: u16) -> Option<u32> {
        if self.in_flight.contains_key(&head) {
            self.stats.reposted_in_flight += 1;
            let source = RequestError::InFlight;
            keep(&mut self.errors, BlockError::Request { head, source });
            return None;
        }
        let queue = &self.queues[usize::from(REQUEST_QUEUE)];
        let table = GuestAddress(queue.desc_table());
        match parse(mem, table, queue.size(), head, self.sectors, &self.serial) {
            Ok(Parsed::Request { op, kind, status }) => {
                match &op {
                    BlockOp::Read { sectors, .. } => {
                        self.stats.reads += 1;
                        self.stats.sectors_read += u64::from(*sectors);
                    }
                    BlockOp::Write { data, .. } => {
                        self.stats.writes += 1;
                        self.stats.sectors_written += (data.len() / SECTOR_SIZE as usize) as u64;
                    }
                    BlockOp::Flush => self.stats.flushes += 1,
                }
                let token = RequestToken {
                    id: self.next_id,
                    head,
                };
                self.next_id = self.next_id.wrapping_add(1);
                let request = InFlight {
                    id: token.id,
                    kind,
                    status,
                };
                self.in_flight.insert(head, request);
                self.requests.push(BlockRequest { token, op });
                None
            }
            Ok(Parsed::Answered { status, written }) => {
                self.stats.get_ids += 1;
                Some(written + write_status(mem, status, VIRTIO_BLK_S_OK))
            }
            Err(Rejected { source, status }) => {
                let code = match source {
                    RequestError::Unsupported(_) => {
                        self.stats.unsupported += 1;
                        VIRTIO_BLK_S_UNSUPP
                    }
                    RequestError::OutOfRange { .. } => {
                        self.stats.out_of_range += 1;
                        VIRTIO_BLK_S_IOERR
                    }
                    _ => {
                        self.stats.malformed += 1;
                        VIRTIO_BLK_S_IOERR
                    }
                };
                keep(&mut self.errors, BlockError::Request { head, source });
                Some(status.map_or(0, |status| write_status(mem, status, code)))
            }
        }
    }
}

impl VirtioDevice for VirtioBlock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_BLK_F_SIZE_MAX,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_FLUSH,
        ]
        .iter()
        .fold(0, |acc, bit| acc | 1u64 << bit)
    }

    fn queues(&self) -> &[Queue] {
        &self.queues
    }

    fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.queues
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_blk_config: capacity (le64), size_max (le32), seg_max (le32), geometry
        // (4 bytes, zero), blk_size (le32); the fields after it belong to features not offered.
        let mut config = [0u8; 24];
        config[0..8].copy_from_slice(&self.sectors.to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&SECTOR_SIZE.to_le_bytes());
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i as u64);
            *byte = usize::try_from(at)
                .ok()
                .and_then(|at| config.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn activate<M: GuestMemory>(
        &mut self,
        _mem: &M,
        features: u64,
        interrupt: Interrupt,
    ) -> Result<(), DeviceError> {
        if !has_feature(features, VIRTIO_F_VERSION_1) {
            return Err(DeviceError::LegacyDriver);
        }
        let event_idx = has_feature(features, VIRTIO_RING_F_EVENT_IDX);
        for queue in &mut self.queues {
            queue.set_event_idx(event_idx);
        }
        self.features = features;
        self.interrupt = Some(interrupt);
        Ok(())
    }

    fn queue_notify<M: GuestMemory>(&mut self, mem: &M, queue: u16) -> Result<(), DeviceError> {
        match queue {
            REQUEST_QUEUE => self.process_requests(mem),
            _ => Ok(()),
        }
    }

    fn reset(&mut self) {
        self.features = 0;
        self.interrupt = None;
        self.forget_in_flight();
    }
}

/// A chain taken apart.
enum Parsed {
    /// For the disk; the status byte is at `status`.
    Request {
        op: BlockOp,
        kind: Pending,
        status: GuestAddress,
    },
    /// Answered by the device (`GET_ID`): `written` data bytes are in place, the status is not.
    Answered { status: GuestAddress, written: u32 },
}

/// A request that completes at once with an error, at `status` if the chain has a status byte.
struct Rejected {
    source: RequestError,
    status: Option<GuestAddress>,
}

impl From<ChainError> for Rejected {
    fn from(e: ChainError) -> Self {
        Self {
            source: e.into(),
            status: None,
        }
    }
}

/// Walks, splits and checks the chain at `head` of a disk of `capacity` sectors.
fn parse<M: GuestMemory>(
    mem: &M,
    table: GuestAddress,
    size: u16,
    head: u16,
    capacity: u64,
    serial: &[u8],
) -> Result<Parsed, Rejected> {
    // No byte cap beyond u32: the walk allocates per descriptor, not per byte, and the data
    // length is checked below, where the request can still be answered with IOERR.
    let chain = chain::walk_split(mem, table, size, head, u32::MAX)?;
    let writable = chain::total_len(&chain.writable);
    let (data_in, status) = chain::split_at(&chain.writable, writable.saturating_sub(1));
    let Some(status) = status.first().map(|b| b.addr) else {
        return Err(Rejected {
            source: RequestError::NoStatus,
            status: None,
        });
    };
    let reject = |source| Rejected {
        source,
        status: Some(status),
    };
    let (header, data_out) = chain::split_at(&chain.readable, HEADER_LEN);
    let header = chain::gather(mem, &header).map_err(|e| reject(e.into()))?;
    if header.len() < HEADER_LEN {
        return Err(reject(RequestError::HeaderTooShort(header.len())));
    }
    let request_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector);
    let in_len = chain::total_len(&data_in);
    let out_len = chain::total_len(&data_out);
    let misplaced = |len| reject(RequestError::MisplacedData { request_type, len });
    match request_type {
        VIRTIO_BLK_T_IN => {
            if out_len != 0 {
                return Err(misplaced(out_len));
            }
            let sectors = check_range(in_len, sector, capacity).map_err(reject)?;
            Ok(Parsed::Request {
                op: BlockOp::Read { sector, sectors },
                kind: Pending::Read {
                    into: data_in,
                    len: in_len,
                },
                status,
            })
        }
        VIRTIO_BLK_T_OUT => {
            if in_len != 0 {
                return Err(misplaced(in_len));
            }
            check_range(out_len, sector, capacity).map_err(reject)?;
            let data = chain::gather(mem, &data_out).map_err(|e| reject(e.into()))?;
            Ok(Parsed::Request {
                op: BlockOp::Write { sector, data },
                kind: Pending::Write,
                status,
            })
        }
        // Data and sector of a flush mean nothing; a driver should send none, a device ignores
        // them.
        VIRTIO_BLK_T_FLUSH => Ok(Parsed::Request {
            op: BlockOp::Flush,
            kind: Pending::Flush,
            status,
        }),
        VIRTIO_BLK_T_GET_ID => {
            let n = in_len.min(serial.len());
            let written =
                chain::scatter(mem, &data_in, &serial[..n]).map_err(|e| reject(e.into()))?;
            Ok(Parsed::Answered {
                status,
                written: used_len(written),
            })
        }
        other => Err(reject(RequestError::Unsupported(other))),
    }
}

/// Checks a read or write of `len` bytes at `sector`; returns its length in sectors.
fn check_range(len: usize, sector: u64, capacity: u64) -> Result<u32, RequestError> {
    if len == 0 {
        return Err(RequestError::NoData);
    }
    if !len.is_multiple_of(SECTOR_SIZE as usize) {
        return Err(RequestError::Unaligned(len));
    }
    if len > MAX_DATA_LEN {
        return Err(RequestError::TooLarge(len));
    }
    // At most MAX_DATA_LEN / 512 sectors.
    let sectors =
        u32::try_from(len / SECTOR_SIZE as usize).map_err(|_| RequestError::TooLarge(len))?;
    sector
        .checked_add(u64::from(sectors))
        .filter(|&end| end <= capacity)
        .ok_or(RequestError::OutOfRange {
            sector,
            sectors: u64::from(sectors),
            capacity,
        })?;
    Ok(sectors)
}

/// Writes status `code` at `status`; returns the bytes written (1, or 0 if memory refused).
fn write_status<M: GuestMemory>(mem: &M, status: GuestAddress, code: u32) -> u32 {
    // The status codes are 0 to 2; anything else would be a bug here, reported as IOERR.
    let code = u8::try_from(code).unwrap_or(byte(VIRTIO_BLK_S_IOERR));
    mem.write_obj(code, status).map_or(0, |()| 1)
}

fn new_queue() -> Queue {
    // QUEUE_SIZE is a power of two no larger than the ring maximum.
    Queue::new(QUEUE_SIZE).unwrap_or_else(|_| unreachable!("QUEUE_SIZE is a valid queue size"))
}

/// Pops the head of the next available chain, if any.
fn next_head<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
) -> Result<Option<u16>, virtio_queue::Error> {
    Ok(queue.iter(mem)?.next().map(|chain| chain.head_index()))
}

/// Interrupts the guest unless its driver suppressed used-buffer notifications.
fn signal_if_needed<M: GuestMemory>(queue: &mut Queue, mem: &M, interrupt: &Interrupt) {
    // If the suppression state cannot be read, interrupting is the safe choice.
    if queue.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_used();
    }
}

/// A broken used ring found while completing: the device stops until the driver resets it.
fn ring_failed(errors: &mut Vec<BlockError>, interrupt: &Interrupt, source: virtio_queue::Error) {
    let reason = source.to_string();
    keep(errors, BlockError::Ring { reason });
    interrupt.signal_needs_reset();
}

fn keep(errors: &mut Vec<BlockError>, error: BlockError) {
    if errors.len() < MAX_KEPT_ERRORS {
        errors.push(error);
    }
}

#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
mod fuzz;

mod state;
pub use state::{BlockState, BufferState, InFlightState, PendingState};

#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::virtio::testing::{Desc, Driver, DriverQueue, BUFFERS_BASE, IRQ, MEM_SIZE};
    use crate::virtio::INT_VRING;
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};
    use virtio_bindings::virtio_config::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
        VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    };
    use virtio_bindings::virtio_mmio as reg;
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use vm_memory::GuestMemoryMmap;

    /// 1 MiB.
    const CAPACITY: u64 = 2048;
    const SERIAL: &str = "simvm-m1-vda";
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
    /// Marks a status byte the device has not written.
    const UNWRITTEN: u8 = 0xff;

    fn all_features() -> u64 {
        VirtioBlock::new(1, "").features()
    }

    fn started() -> Driver<VirtioBlock> {
        started_with(all_features())
    }

    fn started_with(features: u64) -> Driver<VirtioBlock> {
        let mut d = Driver::new(VirtioBlock::new(CAPACITY, SERIAL));
        d.start(features, 1, QUEUE_SIZE);
        d
    }

    /// Request `slot`'s header; its status byte follows at +0x20, its data at +0x1000 (60 KiB).
    pub(super) fn hdr_at(slot: u64) -> u64 {
        BUFFERS_BASE + slot * 0x1_0000
    }

    pub(super) fn status_at(slot: u64) -> u64 {
        hdr_at(slot) + 0x20
    }

    pub(super) fn data_at(slot: u64) -> u64 {
        hdr_at(slot) + 0x1000
    }

    fn header(request_type: u32, sector: u64) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&request_type.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        h
    }

    fn put(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) {
        mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn byte(mem: &GuestMemoryMmap, addr: u64) -> u8 {
        read(mem, addr, 1)[0]
    }

    /// Writes slot's header and marks its status byte unwritten.
    fn prepare(d: &Driver<VirtioBlock>, slot: u64, request_type: u32, sector: u64) {
        put(&d.mem, hdr_at(slot), &header(request_type, sector));
        put(&d.mem, status_at(slot), &[UNWRITTEN]);
    }

    fn queue(d: &mut Driver<VirtioBlock>, descs: &[Desc]) -> u16 {
        let mem = d.mem.clone();
        d.queues[0].add_chain(&mem, descs)
    }

    /// A read as Linux queues it: header, data, status.
    fn queue_read(d: &mut Driver<VirtioBlock>, slot: u64, sector: u64, len: u32) -> u16 {
        prepare(d, slot, VIRTIO_BLK_T_IN, sector);
        queue(
            d,
            &[
                Desc::read(hdr_at(slot), 16),
                Desc::write(data_at(slot), len),
                Desc::write(status_at(slot), 1),
            ],
        )
    }

    fn used(d: &mut Driver<VirtioBlock>) -> Vec<(u16, u32)> {
        let mem = d.mem.clone();
        d.queues[0].take_used(&mem)
    }

    /// Plays the disk: completes every request queued so far against `disk`.
    fn serve(d: &mut Driver<VirtioBlock>, disk: &mut [u8]) {
        let mem = d.mem.clone();
        let blk = d.dev.device_mut();
        for request in blk.take_requests() {
            let data = match request.op {
                BlockOp::Read { sector, sectors } => {
                    let at = sector as usize * 512;
                    Some(disk[at..at + sectors as usize * 512].to_vec())
                }
                BlockOp::Write { sector, data } => {
                    let at = sector as usize * 512;
                    disk[at..at + data.len()].copy_from_slice(&data);
                    None
                }
                BlockOp::Flush => None,
            };
            blk.complete(&mem, request.token, BlockResult::Ok { data });
        }
    }

    #[test]
    fn linux_probe_sequence_reaches_driver_ok() {
        let mut d = Driver::new(VirtioBlock::new(CAPACITY, SERIAL));
        assert_eq!(d.read32(reg::VIRTIO_MMIO_DEVICE_ID), 2);
        let offered = d.device_features();
        let expected = [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_BLK_F_SIZE_MAX,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_FLUSH,
        ]
        .iter()
        .fold(0u64, |acc, bit| acc | 1 << bit);
        assert_eq!(offered, expected);
        d.start(offered, 1, QUEUE_SIZE);
        assert_eq!(
            d.read32(reg::VIRTIO_MMIO_STATUS),
            VIRTIO_CONFIG_S_ACKNOWLEDGE
                | VIRTIO_CONFIG_S_DRIVER
                | VIRTIO_CONFIG_S_FEATURES_OK
                | VIRTIO_CONFIG_S_DRIVER_OK
        );
        assert_eq!(d.dev.negotiated_features(), offered);
        assert!(d.dev.take_errors().is_empty());
        d.write32(reg::VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(
            d.read32(reg::VIRTIO_MMIO_QUEUE_NUM_MAX),
            0,
            "one queue only"
        );
        assert!(d.dev.device().write_cache());
        d.reset();
        assert!(!d.dev.device().write_cache());
        // A driver without FLUSH expects write-through.
        let through = started_with(offered & !(1 << VIRTIO_BLK_F_FLUSH));
        assert!(!through.dev.device().write_cache());
    }

    #[test]
    fn config_space_holds_capacity_and_limits_at_byte_offsets() {
        let capacity = 0x0011_2233_4455_6677u64;
        let mut d = Driver::new(VirtioBlock::new(capacity, SERIAL));
        let config = |d: &mut Driver<VirtioBlock>, offset: u64, len: usize| {
            let mut data = vec![0xaau8; len];
            d.dev.read(0x100 + offset, &mut data);
            data
        };
        let bytes: Vec<u8> = (0..32).map(|i| config(&mut d, i, 1)[0]).collect();
        let mut expected = capacity.to_le_bytes().to_vec();
        expected.extend((32u32 << 10).to_le_bytes()); // size_max
        expected.extend(126u32.to_le_bytes()); // seg_max
        expected.extend([0; 4]); // geometry
        expected.extend(512u32.to_le_bytes()); // blk_size
        expected.extend([0; 8]); // topology, absent
        assert_eq!(bytes, expected);
        assert_eq!(config(&mut d, 0, 8), capacity.to_le_bytes());
        assert_eq!(config(&mut d, 4, 4), 0x0011_2233u32.to_le_bytes());
        assert_eq!(config(&mut d, 12, 4), SEG_MAX.to_le_bytes());
        assert_eq!(config(&mut d, 20, 4), 512u32.to_le_bytes());
        assert_eq!(config(&mut d, 0xef8, 8), [0; 8]);
        assert_eq!(d.dev.stats().bad_accesses, 0);
    }

    #[test]
    fn writes_then_reads_back_through_the_world() {
        let mut d = started();
        let mem = d.mem.clone();
        let mut disk = vec![0u8; CAPACITY as usize * 512];
        d.lines.take();
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 251) as u8).collect();

        // Header split in two, data over two descriptors apart, status alone.
        prepare(&d, 0, VIRTIO_BLK_T_OUT, 3);
        put(&mem, data_at(0), &data[..700]);
        put(&mem, data_at(0) + 0x800, &data[700..]);
        let w = queue(
            &mut d,
            &[
                Desc::read(hdr_at(0), 8),
                Desc::read(hdr_at(0) + 8, 8),
                Desc::read(data_at(0), 700),
                Desc::read(data_at(0) + 0x800, 324),
                Desc::write(status_at(0), 1),
            ],
        );
        d.notify(REQUEST_QUEUE);
        let requests = d.dev.device_mut().take_requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(
            requests[0].op,
            BlockOp::Write {
                sector: 3,
                data: data.clone()
            }
        );
        // Nothing reaches the guest until the world completes the request.
        assert_eq!(used(&mut d), vec![]);
        assert_eq!(byte(&mem, status_at(0)), UNWRITTEN);
        assert_eq!(d.lines.take(), 0);
        assert_eq!(d.dev.device().in_flight(), 1);
        disk[3 * 512..5 * 512].copy_from_slice(&data);
        let blk = d.dev.device_mut();
        blk.complete(&mem, requests[0].token, BlockResult::Ok { data: None });
        assert_eq!(used(&mut d), vec![(w, 1)]);
        assert_eq!(byte(&mem, status_at(0)), VIRTIO_BLK_S_OK as u8);
        assert_eq!(d.lines.take(), 1 << IRQ);
        assert_eq!(d.ack_interrupt(), INT_VRING);

        // The status byte shares the last data descriptor.
        prepare(&d, 1, VIRTIO_BLK_T_IN, 3);
        let r = queue(
            &mut d,
            &[
                Desc::read(hdr_at(1), 16),
                Desc::write(data_at(1), 512),
                Desc::write(data_at(1) + 0x400, 513),
            ],
        );
        put(&mem, data_at(1) + 0x400 + 512, &[UNWRITTEN]);
        d.notify(REQUEST_QUEUE);
        serve(&mut d, &mut disk);
        assert_eq!(used(&mut d), vec![(r, 1025)]);
        let mut got = read(&mem, data_at(1), 512);
        got.extend(read(&mem, data_at(1) + 0x400, 512));
        assert_eq!(got, data);
        assert_eq!(byte(&mem, data_at(1) + 0x400 + 512), VIRTIO_BLK_S_OK as u8);

        let stats = d.dev.device().stats();
        assert_eq!(
            (
                stats.reads,
                stats.writes,
                stats.sectors_read,
                stats.sectors_written,
                stats.completed
            ),
            (1, 1, 2, 2, 2)
        );
        assert_eq!(d.dev.device().in_flight(), 0);
        assert!(d.dev.device_mut().take_errors().is_empty());
    }

    #[test]
    fn flushes_go_to_the_world_and_get_id_is_answered_at_once() {
        let mut d = started();
        let mem = d.mem.clone();
        prepare(&d, 0, VIRTIO_BLK_T_FLUSH, 0);
        let flush = queue(
            &mut d,
            &[Desc::read(hdr_at(0), 16), Desc::write(status_at(0), 1)],
        );
        // Data on a flush is ignored.
        prepare(&d, 1, VIRTIO_BLK_T_FLUSH, 77);
        let flush_with_data = queue(
            &mut d,
            &[
                Desc::read(hdr_at(1), 16),
                Desc::read(data_at(1), 100),
                Desc::write(status_at(1), 1),
            ],
        );
        prepare(&d, 2, VIRTIO_BLK_T_GET_ID, 0);
        put(&mem, data_at(2), &[UNWRITTEN; 20]);
        let id = queue(
            &mut d,
            &[
                Desc::read(hdr_at(2), 16),
                Desc::write(data_at(2), 20),
                Desc::write(status_at(2), 1),
            ],
        );
        // A short buffer gets the start of the serial; the status shares its descriptor.
        prepare(&d, 3, VIRTIO_BLK_T_GET_ID, 0);
        let short_id = queue(
            &mut d,
            &[Desc::read(hdr_at(3), 16), Desc::write(data_at(3), 9)],
        );
        d.notify(REQUEST_QUEUE);
        assert_eq!(used(&mut d), vec![(id, 21), (short_id, 9)]);
        assert_eq!(read(&mem, data_at(2), 20), b"simvm-m1-vda\0\0\0\0\0\0\0\0");
        assert_eq!(byte(&mem, status_at(2)), VIRTIO_BLK_S_OK as u8);
        assert_eq!(read(&mem, data_at(3), 9), b"simvm-m1\0");

        let blk = d.dev.device_mut();
        let requests = blk.take_requests();
        let ops: Vec<_> = requests.iter().map(|r| r.op.clone()).collect();
        assert_eq!(ops, vec![BlockOp::Flush, BlockOp::Flush]);
        for r in requests {
            blk.complete(&mem, r.token, BlockResult::Ok { data: None });
        }
        assert_eq!(used(&mut d), vec![(flush, 1), (flush_with_data, 1)]);
        assert_eq!(byte(&mem, status_at(0)), VIRTIO_BLK_S_OK as u8);
        let stats = d.dev.device().stats();
        assert_eq!((stats.flushes, stats.get_ids, stats.malformed), (2, 2, 0));
    }

    #[test]
    fn a_long_serial_is_cut_to_twenty_bytes() {
        let mut d = Driver::new(VirtioBlock::new(8, "a-serial-of-more-than-twenty-bytes"));
        d.start(all_features(), 1, QUEUE_SIZE);
        prepare(&d, 0, VIRTIO_BLK_T_GET_ID, 0);
        let head = queue(
            &mut d,
            &[Desc::read(hdr_at(0), 16), Desc::write(data_at(0), 64)],
        );
        d.notify(REQUEST_QUEUE);
        assert_eq!(used(&mut d), vec![(head, 21)]);
        assert_eq!(read(&d.mem, data_at(0), 20), b"a-serial-of-more-tha");
    }

    #[test]
    fn unknown_request_types_are_unsupported() {
        let mut d = started();
        let mem = d.mem.clone();
        let types = [2, 11, 13, 0xdead_beef];
        let heads: Vec<u16> = (0..types.len() as u64)
            .map(|slot| {
                prepare(&d, slot, types[slot as usize], 0);
                queue(
                    &mut d,
                    &[
                        Desc::read(hdr_at(slot), 16),
                        Desc::write(data_at(slot), 512),
                        Desc::write(status_at(slot), 1),
                    ],
                )
            })
            .collect();
        d.notify(REQUEST_QUEUE);
        assert_eq!(
            used(&mut d),
            heads.iter().map(|&h| (h, 1)).collect::<Vec<_>>()
        );
        for slot in 0..types.len() as u64 {
            assert_eq!(byte(&mem, status_at(slot)), UNSUPP);
        }
        let blk = d.dev.device_mut();
        assert!(blk.take_requests().is_empty());
        assert_eq!(blk.stats().unsupported, 4);
        assert_eq!(blk.stats().malformed, 0);
        let errors = blk.take_errors();
        let reported: Vec<u32> = errors
            .iter()
            .map(|e| match e {
                BlockError::Request {
                    source: RequestError::Unsupported(t),
                    ..
                } => *t,
                other => panic!("{other}"),
            })
            .collect();
        assert_eq!(reported, types);
    }

    /// Each bad request completes at once, with IOERR where it has a status byte and an empty
    /// used entry where it has none, is counted and reported, and the next good request is
    /// still served.
    #[test]
    fn malformed_requests_are_errors_not_panics() {
        use RequestError as E;
        type Check = fn(&RequestError) -> bool;
        /// Name, header type and sector, chain, where the IOERR status goes (None: no status,
        /// used length 0), the error.
        type Case = (&'static str, (u32, u64), Vec<Desc>, Option<u64>, Check);
        let (hdr, status, data) = (hdr_at(0), status_at(0), data_at(0));
        let two_mib = 2 << 20;
        let cases: Vec<Case> = vec![
            (
                "read past the capacity",
                (VIRTIO_BLK_T_IN, CAPACITY - 1),
                vec![
                    Desc::read(hdr, 16),
                    Desc::write(data, 1024),
                    Desc::write(status, 1),
                ],
                Some(status),
                |e| {
                    *e == E::OutOfRange {
                        sector: CAPACITY - 1,
                        sectors: 2,
                        capacity: CAPACITY,
                    }
                },
            ),
            (
                "write at sector u64::MAX",
                (VIRTIO_BLK_T_OUT, u64::MAX),
                vec![
                    Desc::read(hdr, 16),
                    Desc::read(data, 512),
                    Desc::write(status, 1),
                ],
                Some(status),
                |e| {
                    matches!(
                        e,
                        E::OutOfRange {
                            sector: u64::MAX,
                            ..
                        }
                    )
                },
            ),
            (
                "data not a multiple of 512",
                (VIRTIO_BLK_T_IN, 0),
                vec![
                    Desc::read(hdr, 16),
                    Desc::write(data, 100),
                    Desc::write(status, 1),
                ],
                Some(status),
                |e| *e == E::Unaligned(100),
            ),
            (
                "the status byte takes the last byte of a 512-byte buffer",
                (VIRTIO_BLK_T_IN, 0),
                vec![Desc::read(hdr, 16), Desc::write(data, 512)],
                Some(data + 511),
                |e| *e == E::Unaligned(511),
            ),
            (
                "read of nothing",
                (VIRTIO_BLK_T_IN, 0),
                vec![Desc::read(hdr, 16), Desc::write(status, 1)],
                Some(status),
                |e| *e == E::NoData,
            ),
            (
                "write of nothing",
                (VIRTIO_BLK_T_OUT, 0),
                vec![Desc::read(hdr, 16), Desc::write(status, 1)],
                Some(status),
                |e| *e == E::NoData,
            ),
            (
                "data over the limit (buffers may alias)",
                (VIRTIO_BLK_T_IN, 0),
                vec![
                    Desc::read(hdr, 16),
                    Desc::write(BUFFERS_BASE, two_mib),
                    Desc::write(BUFFERS_BASE, two_mib),
                    Desc::write(BUFFERS_BASE, two_mib),
                    Desc::write(status, 1),
                ],
                Some(status),
                |e| *e == E::TooLarge(3 * (2 << 20)),
            ),
            (
                "header too short",
                (VIRTIO_BLK_T_IN, 0),
                vec![Desc::read(hdr, 10), Desc::write(status, 1)],
                Some(status),
                |e| *e == E::HeaderTooShort(10),
            ),
            (
                "no header at all",
                (VIRTIO_BLK_T_IN, 0),
                vec![Desc::write(data, 512), Desc::write(status, 1)],
                Some(status),
                |e| *e == E::HeaderTooShort(0),
            ),
            (
                "read with device-readable data",
                (VIRTIO_BLK_T_IN, 0),
                vec![
                    Desc::read(hdr, 16),
                    Desc::read(data, 512),
                    Desc::write(data + 0x1000, 512),
                    Desc::write(status, 1),
                ],
                Some(status),
                |e| {
                    *e == E::MisplacedData {
                        request_type: VIRTIO_BLK_T_IN,
                        len: 512,
                    }
                },
            ),
            (
                "write with device-writable data",
                (VIRTIO_BLK_T_OUT, 0),
                vec![
                    Desc::read(hdr, 16),
                    Desc::read(data, 512),
                    Desc::write(data + 0x1000, 512),
                    Desc::write(status, 1),
                ],
                Some(status),
                |e| {
                    *e == E::MisplacedData {
                        request_type: VIRTIO_BLK_T_OUT,
                        len: 512,
                    }
                },
            ),
            (
                "no status byte",
                (VIRTIO_BLK_T_OUT, 0),
                vec![Desc::read(hdr, 16), Desc::read(data, 512)],
                None,
                |e| *e == E::NoStatus,
            ),
            (
                "device-readable after device-writable",
                (VIRTIO_BLK_T_IN, 0),
                vec![
                    Desc::read(hdr, 16),
                    Desc::write(data, 512),
                    Desc::read(data + 0x1000, 16),
                    Desc::write(status, 1),
                ],
                None,
                |e| {
                    matches!(
                        e,
                        E::Chain(ChainError::WrongDirection {
                            index: 2,
                            expected: chain::Direction::DeviceWrites,
                            found: chain::Direction::DeviceReads,
                        })
                    )
                },
            ),
            (
                "loop",
                (VIRTIO_BLK_T_IN, 0),
                vec![
                    Desc::read(hdr, 16),
                    Desc {
                        next: Some(0),
                        ..Desc::read(data, 512)
                    },
                ],
                None,
                |e| *e == E::Chain(ChainError::Loop),
            ),
            (
                "next index outside the queue",
                (VIRTIO_BLK_T_IN, 0),
                vec![Desc {
                    next: Some(QUEUE_SIZE + 3),
                    ..Desc::read(hdr, 16)
                }],
                None,
                |e| matches!(e, E::Chain(ChainError::IndexOutOfRange { index: 259, .. })),
            ),
            (
                "data outside memory",
                (VIRTIO_BLK_T_IN, 0),
                vec![
                    Desc::read(hdr, 16),
                    Desc::write(MEM_SIZE as u64 - 8, 512),
                    Desc::write(status, 1),
                ],
                None,
                |e| matches!(e, E::Chain(ChainError::OutOfMemory { .. })),
            ),
            (
                "address overflows",
                (VIRTIO_BLK_T_IN, 0),
                vec![Desc::read(u64::MAX - 4, 16), Desc::write(status, 1)],
                None,
                |e| matches!(e, E::Chain(ChainError::OutOfMemory { .. })),
            ),
            (
                "huge length",
                (VIRTIO_BLK_T_IN, 0),
                vec![
                    Desc::read(hdr, 16),
                    Desc::write(data, u32::MAX),
                    Desc::write(status, 1),
                ],
                None,
                |e| *e == E::Chain(ChainError::TooLong { max: u32::MAX }),
            ),
            (
                "zero-length descriptor",
                (VIRTIO_BLK_T_IN, 0),
                vec![
                    Desc::read(hdr, 16),
                    Desc::write(data, 0),
                    Desc::write(status, 1),
                ],
                None,
                |e| matches!(e, E::Chain(ChainError::ZeroLength { index: 1 })),
            ),
        ];
        for (name, (request_type, sector), descs, status_byte, check) in cases {
            let mut d = started();
            let mem = d.mem.clone();
            prepare(&d, 0, request_type, sector);
            put(&mem, data + 511, &[UNWRITTEN]);
            let bad = queue(&mut d, &descs);
            let good = queue_read(&mut d, 1, 0, 512);
            d.notify(REQUEST_QUEUE);
            let expected_len = match status_byte {
                Some(at) => {
                    assert_eq!(byte(&mem, at), IOERR, "{name}");
                    1
                }
                None => {
                    assert_eq!(byte(&mem, status), UNWRITTEN, "{name}");
                    0
                }
            };
            assert_eq!(used(&mut d), vec![(bad, expected_len)], "{name}");
            serve(&mut d, &mut vec![0; CAPACITY as usize * 512]);
            assert_eq!(used(&mut d), vec![(good, 513)], "{name}");
            let blk = d.dev.device_mut();
            let errors = blk.take_errors();
            assert!(
                matches!(&errors[..], [BlockError::Request { head, source }] if *head == bad && check(source)),
                "{name}: {errors:?}"
            );
            let stats = blk.stats();
            let range = matches!(
                errors[0],
                BlockError::Request {
                    source: E::OutOfRange { .. },
                    ..
                }
            );
            assert_eq!(
                (stats.malformed, stats.out_of_range),
                if range { (0, 1) } else { (1, 0) },
                "{name}"
            );
            assert_eq!(
                d.dev.status() & VIRTIO_CONFIG_S_NEEDS_RESET,
                0,
                "{name}: per-request errors need no reset"
            );
        }
    }

    #[test]
    fn indirect_descriptors_are_refused() {
        let mut d = started();
        let mem = d.mem.clone();
        prepare(&d, 0, VIRTIO_BLK_T_IN, 0);
        let q = &mut d.queues[0];
        q.set_desc(&mem, 0, hdr_at(0), 16, VRING_DESC_F_NEXT as u16, 1);
        let flags = (VRING_DESC_F_INDIRECT | VRING_DESC_F_WRITE) as u16;
        q.set_desc(&mem, 1, data_at(0), 32, flags, 0);
        q.publish(&mem, 0);
        d.notify(REQUEST_QUEUE);
        assert_eq!(used(&mut d), vec![(0, 0)]);
        assert!(matches!(
            &d.dev.device_mut().take_errors()[..],
            [BlockError::Request {
                head: 0,
                source: RequestError::Chain(ChainError::Indirect { index: 1 })
            }]
        ));
    }

    #[test]
    fn completions_after_a_reset_or_twice_are_ignored_and_counted() {
        let mut d = started();
        let mem = d.mem.clone();
        put(&mem, data_at(0), &[0xaa; 512]);
        let head = queue_read(&mut d, 0, 5, 512);
        d.notify(REQUEST_QUEUE);
        let old = d.dev.device_mut().take_requests().remove(0).token;
        d.reset();
        assert_eq!(d.dev.device().stats().forgotten, 1);
        d.start(all_features(), 1, QUEUE_SIZE);
        let fresh = || BlockResult::Ok {
            data: Some(vec![0x55; 512]),
        };
        d.dev.device_mut().complete(&mem, old, fresh());
        assert_eq!(used(&mut d), vec![]);
        assert_eq!(read(&mem, data_at(0), 512), vec![0xaa; 512]);
        assert_eq!(byte(&mem, status_at(0)), UNWRITTEN);
        assert_eq!(d.dev.device().stats().stale_completions, 1);

        // The same chain queued again is a new request: the old token still does not match.
        assert_eq!(queue_read(&mut d, 0, 5, 512), head);
        d.notify(REQUEST_QUEUE);
        let new = d.dev.device_mut().take_requests().remove(0).token;
        assert_ne!(new, old);
        let blk = d.dev.device_mut();
        blk.complete(&mem, old, fresh());
        blk.complete(&mem, new, fresh());
        blk.complete(&mem, new, fresh());
        assert_eq!(used(&mut d), vec![(head, 513)]);
        assert_eq!(read(&mem, data_at(0), 512), vec![0x55; 512]);

        // The machine died: nothing in flight reaches guest memory any more.
        queue_read(&mut d, 1, 0, 512);
        d.notify(REQUEST_QUEUE);
        queue_read(&mut d, 2, 0, 512);
        d.notify(REQUEST_QUEUE);
        let blk = d.dev.device_mut();
        let taken = blk.take_requests();
        queue_read(&mut d, 3, 0, 512);
        d.notify(REQUEST_QUEUE);
        let blk = d.dev.device_mut();
        assert_eq!(blk.in_flight(), 3);
        blk.forget_in_flight();
        assert!(
            blk.take_requests().is_empty(),
            "not yet taken: forgotten too"
        );
        for r in taken {
            blk.complete(&mem, r.token, fresh());
        }
        assert_eq!(used(&mut d), vec![]);
        assert_eq!(byte(&mem, status_at(1)), UNWRITTEN);
        let stats = d.dev.device().stats();
        assert_eq!(
            (stats.stale_completions, stats.forgotten, stats.completed),
            (5, 4, 1)
        );
        assert!(d.dev.device_mut().take_errors().is_empty());
    }

    #[test]
    fn a_chain_queued_again_while_in_flight_completes_once() {
        let mut d = started();
        let mem = d.mem.clone();
        let head = queue_read(&mut d, 0, 0, 512);
        d.notify(REQUEST_QUEUE);
        let request = d.dev.device_mut().take_requests().remove(0);
        d.queues[0].publish(&mem, head);
        d.notify(REQUEST_QUEUE);
        let blk = d.dev.device_mut();
        assert!(blk.take_requests().is_empty());
        assert_eq!(
            blk.take_errors(),
            vec![BlockError::Request {
                head,
                source: RequestError::InFlight
            }]
        );
        assert_eq!(used(&mut d), vec![]);
        let blk = d.dev.device_mut();
        blk.complete(&mem, request.token, BlockResult::IoError);
        assert_eq!(used(&mut d), vec![(head, 1)]);
        assert_eq!(byte(&mem, status_at(0)), IOERR);
        let stats = d.dev.device().stats();
        assert_eq!((stats.reposted_in_flight, stats.completed), (1, 1));
    }

    #[test]
    fn failed_completions_report_the_error_status() {
        let mut d = started();
        let mem = d.mem.clone();
        let heads: Vec<u16> = (0..4)
            .map(|slot| queue_read(&mut d, slot, 0, 1024))
            .collect();
        d.notify(REQUEST_QUEUE);
        let blk = d.dev.device_mut();
        let tokens: Vec<RequestToken> = blk.take_requests().iter().map(|r| r.token).collect();
        blk.complete(&mem, tokens[0], BlockResult::IoError);
        blk.complete(&mem, tokens[1], BlockResult::Unsupported);
        let short = BlockResult::Ok {
            data: Some(vec![1; 512]),
        };
        blk.complete(&mem, tokens[2], short);
        blk.complete(&mem, tokens[3], BlockResult::Ok { data: None });
        let expected: Vec<(u16, u32)> = heads.iter().map(|&h| (h, 1)).collect();
        assert_eq!(used(&mut d), expected);
        let statuses: Vec<u8> = (0..4).map(|slot| byte(&mem, status_at(slot))).collect();
        assert_eq!(statuses, vec![IOERR, UNSUPP, IOERR, IOERR]);
        let blk = d.dev.device_mut();
        assert_eq!(
            blk.take_errors(),
            vec![
                BlockError::ReadLength {
                    head: heads[2],
                    expected: 1024,
                    got: 512
                },
                BlockError::ReadLength {
                    head: heads[3],
                    expected: 1024,
                    got: 0
                }
            ]
        );
        let stats = blk.stats();
        assert_eq!((stats.completed, stats.completed_with_error), (4, 4));
    }

    #[test]
    fn completions_interrupt_as_event_idx_asks() {
        let mut d = started();
        let mem = d.mem.clone();
        for slot in 0..3 {
            queue_read(&mut d, slot, slot, 512);
        }
        d.notify(REQUEST_QUEUE);
        assert_eq!(d.queues[0].avail_event(&mem), 3);
        d.lines.take();
        // Interrupt once the used index passes 1: at the second completion only.
        d.queues[0].set_used_event(&mem, 1);
        let blk = d.dev.device_mut();
        let mut raised = Vec::new();
        for r in blk.take_requests() {
            let data = Some(vec![0; 512]);
            d.dev
                .device_mut()
                .complete(&mem, r.token, BlockResult::Ok { data });
            raised.push(d.lines.take() != 0);
        }
        assert_eq!(raised, vec![false, true, false]);

        // Without EVENT_IDX every completion interrupts.
        let mut d = started_with(all_features() & !(1 << VIRTIO_RING_F_EVENT_IDX));
        for slot in 0..3 {
            queue_read(&mut d, slot, slot, 512);
        }
        d.notify(REQUEST_QUEUE);
        d.lines.take();
        let mut raised = Vec::new();
        for r in d.dev.device_mut().take_requests() {
            let data = Some(vec![0; 512]);
            d.dev
                .device_mut()
                .complete(&mem, r.token, BlockResult::Ok { data });
            raised.push(d.lines.take() != 0);
        }
        assert_eq!(raised, vec![true; 3]);
    }

    #[test]
    fn a_corrupt_ring_needs_a_reset_and_drops_completions() {
        let mut d = started();
        let mem = d.mem.clone();
        queue_read(&mut d, 0, 0, 512);
        d.notify(REQUEST_QUEUE);
        let request = d.dev.device_mut().take_requests().remove(0);
        d.queues[0].set_avail_idx(&mem, QUEUE_SIZE + 5);
        d.notify(REQUEST_QUEUE);
        assert_ne!(d.dev.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert!(matches!(
            d.dev.take_errors()[..],
            [crate::virtio::mmio::TransportError::Device(
                DeviceError::Queue { queue: 0, .. }
            )]
        ));
        let data = Some(vec![0; 512]);
        d.dev
            .device_mut()
            .complete(&mem, request.token, BlockResult::Ok { data });
        assert_eq!(used(&mut d), vec![]);
        assert_eq!(byte(&mem, status_at(0)), UNWRITTEN);
        assert_eq!(d.dev.device().stats().forgotten, 1);
        assert_eq!(d.dev.device().in_flight(), 0);
    }

    /// Guest memory the random test draws buffers from: 64 slots of 32 KiB.
    const SLOTS: u64 = 64;
    const SLOT_SIZE: u64 = 0x8000;

    fn random_below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
        rng.next_u64() % n
    }

    fn one_in(rng: &mut ChaCha8Rng, n: u64) -> bool {
        random_below(rng, n) == 0
    }

    /// A request chain much like a driver's, sometimes spoiled: (addr, len, device-writable).
    fn plausible_chain(rng: &mut ChaCha8Rng, mem: &GuestMemoryMmap) -> Vec<(u64, u32, bool)> {
        let base = BUFFERS_BASE + random_below(rng, SLOTS) * SLOT_SIZE;
        let writes_data = one_in(rng, 2);
        let request_type = match (rng.next_u32() % 8, writes_data) {
            (0, _) => VIRTIO_BLK_T_FLUSH,
            (1, true) => VIRTIO_BLK_T_GET_ID,
            (2, _) => rng.next_u32() % 32,
            (_, true) => VIRTIO_BLK_T_IN,
            (_, false) => VIRTIO_BLK_T_OUT,
        };
        let sector = match rng.next_u32() % 8 {
            0 => u64::MAX - random_below(rng, 4),
            1 => rng.next_u64(),
            _ => random_below(rng, CAPACITY + 16),
        };
        put(mem, base, &header(request_type, sector));
        let mut chain = if one_in(rng, 4) {
            vec![(base, 8, false), (base + 8, 8, false)]
        } else {
            vec![(base, 16, false)]
        };
        let mut at = base + 0x100;
        for _ in 0..random_below(rng, 4) {
            let len = 512 * (1 + random_below(rng, 12)) as u32;
            chain.push((at, len, writes_data));
            at += u64::from(len);
        }
        match chain.last_mut() {
            Some(last) if last.2 && one_in(rng, 3) => last.1 += 1,
            _ => chain.push((base + 0x20, 1, true)),
        }
        if one_in(rng, 3) {
            let i = random_below(rng, chain.len() as u64) as usize;
            let d = &mut chain[i];
            match rng.next_u32() % 6 {
                0 => d.2 = !d.2,
                1 => d.1 = 0,
                2 => d.1 = rng.next_u32() % 2000,
                3 => d.1 = 0x20_0000,
                4 => d.0 = MEM_SIZE as u64 - random_below(rng, 1024),
                _ => d.0 = rng.next_u64(),
            }
        }
        chain
    }

    /// Fills the descriptor table with plausible and spoiled chains and plain garbage; returns
    /// the chains' heads.
    fn garbage_table(rng: &mut ChaCha8Rng, q: &DriverQueue, mem: &GuestMemoryMmap) -> Vec<u16> {
        let mut heads = Vec::new();
        let mut index = 0u16;
        while index < QUEUE_SIZE {
            if one_in(rng, 8) {
                // Garbage.
                let flags = (rng.next_u32() & 7) as u16;
                let len = match rng.next_u32() % 3 {
                    0 => rng.next_u32(),
                    _ => rng.next_u32() % 0x2000,
                };
                let addr = random_below(rng, MEM_SIZE as u64 + 0x1000);
                let next = random_below(rng, u64::from(QUEUE_SIZE) + 4) as u16;
                q.set_desc(mem, index, addr, len, flags, next);
                index += 1;
                continue;
            }
            let chain = plausible_chain(rng, mem);
            if usize::from(index) + chain.len() > usize::from(QUEUE_SIZE) {
                break;
            }
            heads.push(index);
            for (i, &(addr, len, write)) in chain.iter().enumerate() {
                let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
                let mut next = index + 1;
                if i + 1 < chain.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                    if one_in(rng, 64) {
                        next = random_below(rng, u64::from(QUEUE_SIZE) + 4) as u16;
                    }
                }
                q.set_desc(mem, index, addr, len, flags, next);
                index += 1;
            }
        }
        heads
    }

    /// Random descriptor tables, rings and completions from a seeded stream: whatever the guest
    /// writes and in whatever order the world completes, nothing panics, every chain taken off
    /// the ring is returned exactly once (at once, or when its request completes) unless it was
    /// already in flight, and the counters add up.
    #[test]
    fn random_garbage_keeps_the_books() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_b10c);
        let mut reached = BlockStats::default();
        let mut corrupt_rings = 0;
        for _ in 0..2000 {
            let mut d = started();
            let mem = d.mem.clone();
            // By head: the requests handed out and not completed.
            let mut in_flight: BTreeMap<u16, BlockRequest> = BTreeMap::new();
            // Tokens that can no longer complete anything.
            let mut dead: Vec<RequestToken> = Vec::new();
            let mut taken_off_ring = 0u64;
            for _round in 0..4 {
                let chain_heads = garbage_table(&mut rng, &d.queues[0], &mem);
                let mut heads = Vec::new();
                for _ in 0..random_below(&mut rng, 12) {
                    let head = match rng.next_u32() % 100 {
                        0 => QUEUE_SIZE + random_below(&mut rng, 8) as u16,
                        1..=10 if !in_flight.is_empty() => {
                            let i = random_below(&mut rng, in_flight.len() as u64) as usize;
                            *in_flight.keys().nth(i).unwrap()
                        }
                        11..=20 => random_below(&mut rng, u64::from(QUEUE_SIZE)) as u16,
                        _ if !chain_heads.is_empty() => {
                            chain_heads[random_below(&mut rng, chain_heads.len() as u64) as usize]
                        }
                        _ => 0,
                    };
                    heads.push(head);
                }
                let corrupt = one_in(&mut rng, 64);
                if corrupt {
                    let idx = rng.next_u32() as u16 | 0x8000;
                    d.queues[0].set_avail_idx(&mem, idx);
                } else {
                    for &h in &heads {
                        d.queues[0].publish(&mem, h);
                    }
                }
                let before = d.dev.device().stats();
                d.notify(REQUEST_QUEUE);
                let after = d.dev.device().stats();
                let returned = used(&mut d);
                let requests = d.dev.device_mut().take_requests();
                let needs_reset = d.dev.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0;

                // Replay the ring in order: each head was in flight already, handed out, or
                // returned at once. A head outside the queue cannot be returned: the device
                // stops there and needs a reset.
                let mut used_it = returned.iter().peekable();
                let mut requests_it = requests.iter();
                let (mut reposted, mut at_once, mut stopped) = (0, 0, corrupt);
                for &h in heads.iter().filter(|_| !corrupt) {
                    if h >= QUEUE_SIZE {
                        at_once += 1;
                        stopped = true;
                        break;
                    }
                    match in_flight.entry(h) {
                        Entry::Occupied(_) => reposted += 1,
                        Entry::Vacant(_) if used_it.peek().is_some_and(|&&(u, _)| u == h) => {
                            let (_, len) = used_it.next().unwrap();
                            assert!(*len <= 21, "used length {len} of a chain returned at once");
                            at_once += 1;
                        }
                        Entry::Vacant(slot) => {
                            let r = requests_it
                                .next()
                                .expect("head neither returned nor handed out");
                            assert_eq!(r.token.head, h);
                            slot.insert(r.clone());
                        }
                    }
                }
                assert!(used_it.next().is_none() && requests_it.next().is_none());
                assert_eq!(needs_reset, stopped);
                taken_off_ring += at_once + reposted + requests.len() as u64;
                let handed_out = |s: BlockStats| s.reads + s.writes + s.flushes;
                let answered =
                    |s: BlockStats| s.get_ids + s.malformed + s.unsupported + s.out_of_range;
                assert_eq!(
                    handed_out(after) - handed_out(before),
                    requests.len() as u64
                );
                assert_eq!(answered(after) - answered(before), at_once);
                assert_eq!(
                    after.reposted_in_flight - before.reposted_in_flight,
                    reposted
                );
                for r in &requests {
                    match &r.op {
                        BlockOp::Read { sector, sectors } => {
                            assert!(*sectors > 0 && sector + u64::from(*sectors) <= CAPACITY)
                        }
                        BlockOp::Write { sector, data } => {
                            assert!(!data.is_empty() && data.len() % 512 == 0);
                            assert!(sector + (data.len() / 512) as u64 <= CAPACITY);
                        }
                        BlockOp::Flush => {}
                    }
                }
                corrupt_rings += u32::from(needs_reset);
                if needs_reset {
                    // Completions are dropped until the driver resets.
                    for (_, r) in std::mem::take(&mut in_flight) {
                        d.dev
                            .device_mut()
                            .complete(&mem, r.token, BlockResult::IoError);
                        dead.push(r.token);
                    }
                    assert_eq!(used(&mut d), vec![]);
                    break;
                }

                // The world completes some requests, in any order, some of them twice.
                for _ in 0..random_below(&mut rng, in_flight.len() as u64 + 1) {
                    let i = random_below(&mut rng, in_flight.len() as u64) as usize;
                    let head = *in_flight.keys().nth(i).unwrap();
                    let r = in_flight.remove(&head).unwrap();
                    let (result, len) = match (rng.next_u32() % 8, &r.op) {
                        (0, _) => (BlockResult::IoError, 1),
                        (1, _) => (BlockResult::Unsupported, 1),
                        (2, BlockOp::Read { sectors, .. }) => {
                            let wrong = Some(vec![0; *sectors as usize * 512 + 1]);
                            (BlockResult::Ok { data: wrong }, 1)
                        }
                        (_, BlockOp::Read { sectors, .. }) => {
                            let data = Some(vec![0x3c; *sectors as usize * 512]);
                            (BlockResult::Ok { data }, *sectors * 512 + 1)
                        }
                        _ => (BlockResult::Ok { data: None }, 1),
                    };
                    let blk = d.dev.device_mut();
                    blk.complete(&mem, r.token, result);
                    assert_eq!(used(&mut d), vec![(head, len)]);
                    dead.push(r.token);
                    if one_in(&mut rng, 4) {
                        let token = dead[random_below(&mut rng, dead.len() as u64) as usize];
                        let stale = d.dev.device().stats().stale_completions;
                        d.dev
                            .device_mut()
                            .complete(&mem, token, BlockResult::IoError);
                        assert_eq!(used(&mut d), vec![]);
                        assert_eq!(d.dev.device().stats().stale_completions, stale + 1);
                    }
                }
                if one_in(&mut rng, 10) {
                    let forgotten = d.dev.device().stats().forgotten;
                    d.reset();
                    d.start(all_features(), 1, QUEUE_SIZE);
                    let dropped = std::mem::take(&mut in_flight);
                    assert_eq!(
                        d.dev.device().stats().forgotten,
                        forgotten + dropped.len() as u64
                    );
                    dead.extend(dropped.values().map(|r| r.token));
                }
            }
            let blk = d.dev.device_mut();
            blk.forget_in_flight();
            dead.extend(in_flight.values().map(|r| r.token));
            let stale = blk.stats().stale_completions;
            for &token in &dead {
                blk.complete(&mem, token, BlockResult::IoError);
            }
            let s = blk.stats();
            assert_eq!(s.stale_completions, stale + dead.len() as u64);
            assert_eq!(blk.in_flight(), 0);
            assert_eq!(s.reads + s.writes + s.flushes, s.completed + s.forgotten);
            let popped = s.reads
                + s.writes
                + s.flushes
                + s.get_ids
                + s.malformed
                + s.unsupported
                + s.out_of_range
                + s.reposted_in_flight;
            assert_eq!(popped, taken_off_ring);
            assert!(blk.take_errors().len() <= MAX_KEPT_ERRORS);
            for (total, n) in [
                (&mut reached.reads, s.reads),
                (&mut reached.writes, s.writes),
                (&mut reached.flushes, s.flushes),
                (&mut reached.get_ids, s.get_ids),
                (&mut reached.completed, s.completed),
                (&mut reached.forgotten, s.forgotten),
                (&mut reached.malformed, s.malformed),
                (&mut reached.unsupported, s.unsupported),
                (&mut reached.out_of_range, s.out_of_range),
                (&mut reached.reposted_in_flight, s.reposted_in_flight),
                (&mut reached.stale_completions, s.stale_completions),
            ] {
                *total += n;
            }
        }
        // The stream reaches every path.
        let r = reached;
        for (name, n) in [
            ("reads", r.reads),
            ("writes", r.writes),
            ("flushes", r.flushes),
            ("get_ids", r.get_ids),
            ("completed", r.completed),
            ("forgotten", r.forgotten),
            ("malformed", r.malformed),
            ("unsupported", r.unsupported),
            ("out_of_range", r.out_of_range),
            ("reposted_in_flight", r.reposted_in_flight),
            ("stale_completions", r.stale_completions),
        ] {
            assert!(n > 20, "{name}: {n} in {r:?}");
        }
        assert!(corrupt_rings > 20, "{corrupt_rings}");
    }
}
