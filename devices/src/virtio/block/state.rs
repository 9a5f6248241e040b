//! Saved state of virtio-blk. The serial is the machine's identity and stays the fresh
//! device's; the capacity must match.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::{
    check_range, BlockOp, BlockRequest, Buffer, InFlight, Pending, VirtioBlock, REQUEST_QUEUE,
};
use crate::snapshot::SnapshotError;
use crate::virtio::state::check_negotiated;
use crate::virtio::state::DeviceSnapshot;
use crate::virtio::{Interrupt, VirtioDevice};

/// What virtio-blk holds beyond its queue. Requests in flight are guest addresses and lengths,
/// so they restore into the same guest memory; a machine template should have none
/// ([`VirtioBlock::has_in_flight`]). Counters and the error list start fresh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockState {
    /// In sectors; fixed at construction, so it must match the restoring device's.
    pub capacity: u64,
    /// Features the driver negotiated (0 until it activates the device).
    pub features: u64,
    /// The driver has the device running: activated and not reset since.
    pub running: bool,
    /// Number of the next request handed out, so no token is ever issued twice.
    pub next_id: u64,
    /// Requests handed out (or about to be) and not completed, by head index.
    pub in_flight: Vec<InFlightState>,
    /// Requests the machine has not taken yet, in ring order; each is also in flight.
    pub untaken: Vec<BlockRequest>,
}

/// What the device needs to complete one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InFlightState {
    pub head: u16,
    pub id: u64,
    pub kind: PendingState,
    /// Guest-physical address of the status byte.
    pub status: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum PendingState {
    /// The data goes into `into`, which holds exactly `len` bytes.
    Read {
        into: Vec<BufferState>,
        len: u64,
    },
    Write,
    Flush,
}

/// One guest buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferState {
    pub addr: u64,
    pub len: u32,
}

impl DeviceSnapshot for VirtioBlock {
    type State = BlockState;

    fn save(&self) -> BlockState {
        let in_flight = self.in_flight.iter().map(|(&head, request)| InFlightState {
            head,
            id: request.id,
            kind: match &request.kind {
                Pending::Read { into, len } => PendingState::Read {
                    into: into
                        .iter()
                        .map(|b| BufferState {
                            addr: b.addr.0,
                            len: b.len,
                        })
                        .collect(),
                    len: *len as u64,
                },
                Pending::Write => PendingState::Write,
                Pending::Flush => PendingState::Flush,
            },
            status: request.status.0,
        });
        BlockState {
            capacity: self.sectors,
            features: self.features,
            running: self.interrupt.is_some(),
            next_id: self.next_id,
            in_flight: in_flight.collect(),
            untaken: self.requests.clone(),
        }
    }

    fn restore(
        &mut self,
        state: &BlockState,
        mem: &GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: &Interrupt,
    ) -> Result<(), SnapshotError> {
        if state.capacity != self.sectors {
            let what = "capacity (sectors)";
            return Err(SnapshotError::mismatch(what, state.capacity, self.sectors));
        }
        check_negotiated(self.features(), state.features, state.running)?;
        if !state.running && !state.in_flight.is_empty() {
            let why = "requests in flight on a stopped device".to_string();
            return Err(SnapshotError::Invalid(why));
        }
        let size = queues
            .get(usize::from(REQUEST_QUEUE))
            .map_or(0, |queue| queue.size());
        let mut in_flight = BTreeMap::new();
        for saved in &state.in_flight {
            let request = in_flight_request(saved, size, state.next_id, mem)
                .map_err(|why| invalid_request(saved.head, &why))?;
            if in_flight.insert(saved.head, request).is_some() {
                return Err(invalid_request(saved.head, "in flight twice"));
            }
        }
        let mut untaken = BTreeSet::new();
        for request in &state.untaken {
            let head = request.token.head;
            let in_flight = in_flight.get(&head);
            untaken_fits(request, in_flight, self.sectors)
                .map_err(|why| invalid_request(head, &why))?;
            if !untaken.insert(head) {
                return Err(invalid_request(head, "handed out twice"));
            }
        }
        for (slot, queue) in self.queues.iter_mut().zip(queues) {
            *slot = queue;
        }
        self.features = state.features;
        self.interrupt = state.running.then(|| interrupt.clone());
        self.next_id = state.next_id;
        self.in_flight = in_flight;
        self.requests.clone_from(&state.untaken);
        Ok(())
    }
}

fn invalid_request(head: u16, why: &str) -> SnapshotError {
    SnapshotError::Invalid(format!("request at descriptor {head}: {why}"))
}

/// The in-flight request `saved` describes, if it could have come from a queue of `size`
/// entries in `mem` before request number `next_id`.
fn in_flight_request(
    saved: &InFlightState,
    size: u16,
    next_id: u64,
    mem: &GuestMemoryMmap,
) -> Result<InFlight, String> {
    if saved.head >= size {
        return Err(format!("head outside the queue of {size}"));
    }
    if saved.id >= next_id {
        return Err(format!(
            "number {} not issued yet (next {next_id})",
            saved.id
        ));
    }
    let in_memory = |addr: u64, len: u32| {
        usize::try_from(len)
            .is_ok_and(|len| mem.check_range(GuestAddress(addr), len, Permissions::ReadWrite))
    };
    if !in_memory(saved.status, 1) {
        return Err(format!("status byte {:#x} outside memory", saved.status));
    }
    let kind = match &saved.kind {
        PendingState::Read { into, len } => {
            if let Some(b) = into.iter().find(|b| !in_memory(b.addr, b.len)) {
                return Err(format!("buffer {:#x}+{} outside memory", b.addr, b.len));
            }
            let total: u64 = into.iter().map(|b| u64::from(b.len)).sum();
            let len = usize::try_from(*len)
                .ok()
                .filter(|&len| len as u64 == total)
                .ok_or(format!("read of {len} bytes into buffers of {total}"))?;
            let into = into
                .iter()
                .map(|b| Buffer {
                    addr: GuestAddress(b.addr),
                    len: b.len,
                })
                .collect();
            Pending::Read { into, len }
        }
        PendingState::Write => Pending::Write,
        PendingState::Flush => Pending::Flush,
    };
    Ok(InFlight {
        id: saved.id,
        kind,
        status: GuestAddress(saved.status),
    })
}

/// Checks that an untaken request is the one in flight at its head, and within `capacity`.
fn untaken_fits(
    request: &BlockRequest,
    in_flight: Option<&InFlight>,
    capacity: u64,
) -> Result<(), String> {
    let Some(in_flight) = in_flight.filter(|f| f.id == request.token.id) else {
        return Err(format!("number {} is not in flight", request.token.id));
    };
    let range = |len, sector| check_range(len, sector, capacity).map_err(|e| e.to_string());
    match (&request.op, &in_flight.kind) {
        (BlockOp::Read { sector, sectors }, Pending::Read { len, .. }) => {
            if range(*len, *sector)? != *sectors {
                return Err(format!("{sectors} sectors into {len} bytes"));
            }
        }
        (BlockOp::Write { sector, data }, Pending::Write) => {
            range(data.len(), *sector)?;
        }
        (BlockOp::Flush, Pending::Flush) => {}
        _ => return Err("not the kind of request in flight".to_string()),
    }
    Ok(())
}

#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::snapshot::Snapshot;
    use crate::virtio::block::{BlockResult, QUEUE_SIZE};
    use crate::virtio::mmio::MmioState;
    use crate::virtio::testing::{copy_memory, same_memory, Desc, Driver, MEM_SIZE};
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
    use virtio_bindings::virtio_mmio as reg;
    use vm_memory::Bytes;

    const CAPACITY: u64 = 2048;

    // Request slots laid out as the device's own tests lay them out.
    use crate::virtio::block::tests::{data_at, hdr_at, status_at};

    /// Queues a 1 KiB read or write at `sector` in `slot` and notifies.
    fn queue(d: &mut Driver<VirtioBlock>, slot: u64, request_type: u32, sector: u64) {
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&request_type.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        let mem = d.mem.clone();
        mem.write_slice(&header, GuestAddress(hdr_at(slot)))
            .unwrap();
        mem.write_slice(&[0x77; 1024], GuestAddress(data_at(slot)))
            .unwrap();
        let data = if request_type == VIRTIO_BLK_T_IN {
            Desc::write(data_at(slot), 1024)
        } else {
            Desc::read(data_at(slot), 1024)
        };
        let descs = [
            Desc::read(hdr_at(slot), 16),
            data,
            Desc::write(status_at(slot), 1),
        ];
        d.queues[0].add_chain(&mem, &descs);
        d.notify(REQUEST_QUEUE);
    }

    /// Running with a read the world has taken and a write it has not; the raised edges
    /// drained, as the VMM does before saving.
    fn busy_disk() -> (Driver<VirtioBlock>, BlockRequest) {
        let mut d = Driver::new(VirtioBlock::new(CAPACITY, "simvm-m1-vda"));
        let features = d.device_features();
        d.start(features, 1, QUEUE_SIZE);
        queue(&mut d, 0, VIRTIO_BLK_T_IN, 5);
        let mut taken = d.dev.device_mut().take_requests();
        queue(&mut d, 1, VIRTIO_BLK_T_OUT, 9);
        d.lines.take();
        (d, taken.remove(0))
    }

    /// A driver over a fresh device (with another serial) and a copy of `original`'s memory,
    /// its driver-side queue where `original`'s is.
    fn restored(
        original: &Driver<VirtioBlock>,
        state: &MmioState<BlockState>,
    ) -> Driver<VirtioBlock> {
        let mut d = Driver::new(VirtioBlock::new(CAPACITY, "simvm-m2-vda"));
        d.mem = copy_memory(&original.mem);
        d.queues = original.queues.clone();
        d.dev.restore(state, &d.mem).unwrap();
        d
    }

    /// The world completes the taken read and the untaken write, then the guest handles the
    /// interrupt and reads its queue back.
    fn next_steps(
        d: &mut Driver<VirtioBlock>,
        read: &BlockRequest,
    ) -> impl PartialEq + std::fmt::Debug {
        let mem = d.mem.clone();
        let untaken = d.dev.device_mut().take_requests();
        let blk = d.dev.device_mut();
        let data = Some((0..1024u32).map(|i| i as u8).collect());
        blk.complete(&mem, read.token, BlockResult::Ok { data });
        for request in &untaken {
            blk.complete(&mem, request.token, BlockResult::Ok { data: None });
        }
        let in_flight = blk.has_in_flight();
        let interrupt = d.ack_interrupt();
        let used = d.queues[0].take_used(&mem);
        (untaken, in_flight, interrupt, d.lines.take(), used)
    }

    fn saved_json() -> (Driver<VirtioBlock>, BlockRequest, String) {
        let (d, read) = busy_disk();
        let json = serde_json::to_string(&d.dev.save()).unwrap();
        (d, read, json)
    }

    #[test]
    fn block_state_round_trips_and_the_restored_disk_behaves_the_same() {
        let (mut original, read, json) = saved_json();
        let saved: MmioState<BlockState> = serde_json::from_str(&json).unwrap();
        assert!(saved.device.running);
        assert_eq!(saved.device.in_flight.len(), 2);
        assert_eq!(saved.device.untaken.len(), 1);
        assert_eq!(saved.device.next_id, 2);

        let mut copy = restored(&original, &saved);
        assert_eq!(copy.dev.save(), saved);
        assert!(copy.dev.device().has_in_flight());
        assert_eq!(
            &copy.dev.device().serial[..12],
            b"simvm-m2-vda",
            "identity stays"
        );
        assert_eq!(copy.lines.take(), 0, "restoring raises nothing");

        let a = next_steps(&mut original, &read);
        let b = next_steps(&mut copy, &read);
        assert_eq!(a, b);
        assert!(!copy.dev.device().has_in_flight());
        assert!(same_memory(&original.mem, &copy.mem));
        assert_eq!(copy.dev.save(), original.dev.save());
        assert_eq!(copy.dev.device().stats().completed, 2);
        // The next request is numbered on from where the saved device left off.
        queue(&mut copy, 2, VIRTIO_BLK_T_IN, 0);
        let next = copy.dev.device_mut().take_requests();
        assert_eq!(next[0].token.id, 2);
    }

    #[test]
    fn another_capacity_is_refused_and_changes_nothing() {
        let (original, _, _) = saved_json();
        let mut d = Driver::new(VirtioBlock::new(CAPACITY + 1, "simvm-m1-vda"));
        let before = d.dev.save();
        let err = d
            .dev
            .restore(&original.dev.save(), &original.mem)
            .unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotError::Mismatch {
                    what: "capacity (sectors)",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(d.dev.save(), before);
        assert_eq!(d.read32(reg::VIRTIO_MMIO_STATUS), 0);
    }

    #[test]
    fn a_queue_outside_memory_is_refused_and_changes_nothing() {
        let (original, _, _) = saved_json();
        let mut bad = original.dev.save();
        bad.queues[0].used_ring = MEM_SIZE as u64 - 0x100;
        let mut d = Driver::new(VirtioBlock::new(CAPACITY, "simvm-m1-vda"));
        let before = d.dev.save();
        assert!(matches!(
            d.dev.restore(&bad, &original.mem),
            Err(SnapshotError::QueueOutsideMemory(0))
        ));
        let mut misaligned = original.dev.save();
        misaligned.queues[0].desc_table += 8;
        assert!(matches!(
            d.dev.restore(&misaligned, &original.mem),
            Err(SnapshotError::Queue { queue: 0, .. })
        ));
        assert_eq!(d.dev.save(), before);
    }

    #[test]
    fn requests_that_do_not_fit_are_refused_and_change_nothing() {
        let (original, _, _) = saved_json();
        let good = original.dev.save();
        let mut cases = Vec::new();
        let mut outside = good.clone();
        if let PendingState::Read { into, .. } = &mut outside.device.in_flight[0].kind {
            into[0].addr = MEM_SIZE as u64 - 512;
        }
        cases.push(outside);
        let mut unissued = good.clone();
        unissued.device.next_id = 1;
        cases.push(unissued);
        let mut orphan = good.clone();
        orphan.device.in_flight.pop();
        cases.push(orphan);
        let mut head = good.clone();
        head.device.in_flight[0].head = QUEUE_SIZE;
        cases.push(head);
        let mut d = Driver::new(VirtioBlock::new(CAPACITY, "simvm-m1-vda"));
        let before = d.dev.save();
        for bad in cases {
            let err = d.dev.restore(&bad, &original.mem).unwrap_err();
            assert!(matches!(err, SnapshotError::Invalid(_)), "{err}");
            assert_eq!(d.dev.save(), before);
        }
        d.dev.restore(&good, &original.mem).unwrap();
        assert_eq!(d.dev.save(), good);
    }

    #[test]
    fn truncated_or_foreign_json_is_a_decode_error() {
        let (_, _, json) = saved_json();
        let decode = |text: &str| {
            serde_json::from_str::<MmioState<BlockState>>(text).map_err(SnapshotError::decode)
        };
        assert!(decode(&json).is_ok());
        let err = decode(&json[..json.len() / 2]).unwrap_err();
        assert!(matches!(err, SnapshotError::Decode(_)), "{err}");
        let extra = json.replacen("{\"status\"", "{\"extra\":1,\"status\"", 1);
        assert_ne!(extra, json);
        assert!(matches!(decode(&extra), Err(SnapshotError::Decode(_))));
    }
}
