//! The world's disks: the disk model of each machine disk, and the requests in flight on it.
//!
//! Disks belong to the world, not to a machine: a machine that is killed leaves its disks in
//! whatever state the crash policy says, and its next incarnation boots on them. A request is
//! submitted when the guest notifies the queue and completes at a virtual time the disk model
//! decides; the completion goes to the incarnation that made the request, or nowhere if that
//! incarnation is gone (its device was reset or its machine died).

// Values from guests (exit data, frames, requests) must not be truncated silently.
#![warn(clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use simvm_devices::disk::{
    BaseImage, Completion, CrashOutcome, CrashPolicy, Disk, DiskState, Fault, IoError, Latency,
    Request, RequestId, Response, SECTOR_SIZE,
};
use simvm_devices::virtio::block::{BlockOp, BlockRequest, BlockResult, RequestToken};

use crate::error::{Error, Result};
use crate::network::fingerprint;
use crate::seed::Seed;
use crate::trace::Event;

/// What a disk starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskBase {
    /// All zeros.
    Zeros,
    /// A host image file, never written (the disk's changes live in memory).
    File(PathBuf),
}

/// How one disk of a machine is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSetup {
    pub base: DiskBase,
    /// Capacity in bytes (a multiple of 512); `None`: the base file's size.
    pub size: Option<u64>,
    pub latency: Latency,
}

/// One machine disk in the world.
pub struct WorldDisk {
    /// `vda`, `vdb`, ...
    pub name: String,
    disk: Disk,
    /// Requests submitted and not completed: the incarnation that made each and its token.
    in_flight: BTreeMap<RequestId, (u32, RequestToken)>,
    crashes: Vec<CrashOutcome>,
}

/// A completion for the machine: which request, and what the device writes back.
pub struct Delivery {
    pub token: RequestToken,
    pub result: BlockResult,
    pub event: Event,
}

impl WorldDisk {
    /// Opens the disk `name` of `machine`; its latency draws come from the seed's stream for
    /// this disk, so adding a disk perturbs nothing else.
    pub fn open(seed: Seed, machine: &str, name: String, setup: &DiskSetup) -> Result<Self> {
        let error = |reason: String| Error::Disk {
            machine: machine.to_string(),
            disk: name.clone(),
            reason,
        };
        let sectors = setup
            .size
            .map(|size| {
                if size == 0 || size % 512 != 0 {
                    Err(error(format!(
                        "size {size} bytes is not a positive multiple of 512"
                    )))
                } else {
                    Ok(size / 512)
                }
            })
            .transpose()?;
        let base = match &setup.base {
            DiskBase::Zeros => BaseImage::zeros(sectors.unwrap_or(0)),
            DiskBase::File(path) => {
                let base = BaseImage::open(path).map_err(|e| error(e.to_string()))?;
                match sectors {
                    Some(sectors) => base
                        .with_sectors(sectors)
                        .map_err(|e| error(e.to_string()))?,
                    None => base,
                }
            }
        };
        let rng = seed.stream(&format!("disk/{machine}/{name}"));
        let disk = Disk::new(base, setup.latency, rng);
        if disk.sectors() == 0 {
            return Err(error("the disk is empty".into()));
        }
        Ok(Self {
            name,
            disk,
            in_flight: BTreeMap::new(),
            crashes: Vec::new(),
        })
    }

    pub fn sectors(&self) -> u64 {
        self.disk.sectors()
    }

    /// Whether any request is in flight (a world snapshot waits until none is).
    pub fn has_in_flight(&self) -> bool {
        !self.in_flight.is_empty() || self.disk.has_in_flight()
    }

    /// The disk's contents beyond its base image (durable, cached, unflushed) and its faults.
    pub fn save(&self) -> Result<DiskState> {
        self.disk
            .save()
            .map_err(|e| Error::Snapshot(format!("disk {}: {e}", self.name)))
    }

    /// Puts saved contents into this freshly opened disk; its latencies come from the stream
    /// of `seed` for `machine`, as for a disk opened under that seed.
    pub fn restore(&mut self, seed: Seed, machine: &str, state: &DiskState) -> Result<()> {
        let rng = seed.stream(&format!("disk/{machine}/{}", self.name));
        self.disk
            .restore(state, rng)
            .map_err(|e| Error::Snapshot(format!("disk {}: {e}", self.name)))
    }

    /// When the next request in flight completes.
    pub fn next_completion(&self) -> Option<u64> {
        self.disk.next_completion()
    }

    /// Submits a request of `incarnation` at virtual time `now`; returns its trace event.
    pub fn submit(&mut self, now: u64, incarnation: u32, request: BlockRequest) -> Event {
        // What the trace records of the request, and the request as the disk model takes it.
        let (kind, sector, len, data_print, op) = match request.op {
            BlockOp::Read { sector, sectors } => (
                "read",
                sector,
                u64::from(sectors) * 512,
                0,
                Request::Read { sector, sectors },
            ),
            BlockOp::Write { sector, data } => (
                "write",
                sector,
                data.len() as u64,
                fingerprint(&data),
                Request::Write { sector, data },
            ),
            BlockOp::Flush => ("flush", 0, 0, 0, Request::Flush),
        };
        let submitted = self.disk.submit(now, op);
        self.in_flight
            .insert(submitted.id, (incarnation, request.token));
        Event::DiskRequest {
            disk: self.name.clone(),
            kind: kind.to_string(),
            sector,
            len,
            fingerprint: data_print,
            completes_at_ns: submitted.completes_at_ns,
        }
    }

    /// Makes every write submitted so far durable once it completes: for a driver that did
    /// not negotiate `VIRTIO_BLK_F_FLUSH`, which treats the disk as write-through. Nobody
    /// waits for this flush; its completion is dropped. (The write's own completion reaches the
    /// guest one request latency before the flush: a crash in between can still lose it. Linux
    /// always negotiates FLUSH, which simvm always offers, so this is for other drivers.)
    pub fn write_through(&mut self, now: u64) {
        self.disk.submit(now, Request::Flush);
    }

    /// Completes every request due by `now`. Those of `incarnation` come back as deliveries;
    /// the others (from an earlier incarnation) took effect on the disk and are dropped.
    pub fn complete_due(&mut self, now: u64, incarnation: u32) -> Vec<Delivery> {
        let mut deliveries = Vec::new();
        for Completion { id, at_ns, result } in self.disk.complete_due(now) {
            let Some((owner, token)) = self.in_flight.remove(&id) else {
                continue;
            };
            if owner != incarnation {
                continue;
            }
            let (status, data_print, result) = match result {
                Ok(Response::Read(data)) => (
                    "ok",
                    fingerprint(&data),
                    BlockResult::Ok { data: Some(data) },
                ),
                Ok(Response::Written | Response::Flushed) => {
                    ("ok", 0, BlockResult::Ok { data: None })
                }
                Err(IoError::Medium) => ("medium-error", 0, BlockResult::IoError),
                Err(_) => ("error", 0, BlockResult::IoError),
            };
            let event = Event::DiskCompleted {
                disk: self.name.clone(),
                status: status.to_string(),
                at_ns,
                fingerprint: data_print,
            };
            deliveries.push(Delivery {
                token,
                result,
                event,
            });
        }
        deliveries
    }

    /// Power loss: in-flight requests are gone and the unflushed writes fare as `policy` says,
    /// decided by the seed's stream for this crash.
    pub fn crash(
        &mut self,
        seed: Seed,
        machine: &str,
        incarnation: u32,
        policy: CrashPolicy,
    ) -> CrashOutcome {
        let mut rng = seed.stream(&format!("disk/{machine}/{}/crash/{incarnation}", self.name));
        let outcome = self.disk.crash(policy, &mut rng);
        self.in_flight.clear();
        self.crashes.push(outcome);
        outcome
    }

    pub fn apply_fault(&mut self, fault: Fault) {
        self.disk.apply_fault(fault);
    }

    /// Every crash this disk went through, in order.
    pub fn crashes(&self) -> &[CrashOutcome] {
        &self.crashes
    }

    /// The disk's contents as the guest would read them now, up to the first zero byte: the
    /// text a workload wrote from sector 0 on (a history, docs/etcd.md).
    pub fn text(&self) -> Vec<u8> {
        const CHUNK: usize = 64 << 10;
        let sector_bytes = SECTOR_SIZE as u64;
        let end = self.sectors() * sector_bytes;
        let mut text = Vec::new();
        let mut chunk = vec![0u8; CHUNK];
        let mut offset = 0u64;
        while offset < end {
            // At most CHUNK bytes: the conversion cannot fail.
            let len = usize::try_from((end - offset).min(CHUNK as u64)).unwrap_or(CHUNK);
            let buf = &mut chunk[..len];
            if self.disk.read_visible(offset / sector_bytes, buf).is_err() {
                break;
            }
            match buf.iter().position(|&b| b == 0) {
                Some(zero) => {
                    text.extend_from_slice(&buf[..zero]);
                    break;
                }
                None => text.extend_from_slice(buf),
            }
            offset += len as u64;
        }
        text
    }

    /// Writes the disk's contents as the guest would read them now.
    pub fn keep(&self, path: &Path) -> Result<()> {
        self.disk
            .write_image(path)
            .map_err(|source| Error::KeepDisk {
                path: path.to_owned(),
                source,
            })
    }
}
