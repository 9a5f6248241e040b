//! Fuzz target of virtio-blk: a guest that queues requests like a driver, or anything else,
//! re-queues chains in flight, corrupts its ring and resets the device, while the world completes
//! requests in any order, twice, or after they were forgotten.
//!
//! A model parses every popped chain by the virtio 1.x rules and predicts what the device must
//! do with it: hand out exactly this request, answer it at once with this status and used
//! length, ignore it because it is in flight, or stop because the ring is broken. Completions
//! must write the data and status where the chain said and return the chain exactly once.

use std::collections::BTreeMap;
use std::ops::Range;

use proptest::prelude::*;
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::fuzz::{self, Overlay, RefBuffer, Tally};
use crate::virtio::testing::{Driver, BUFFERS_BASE, IRQ, MEM_SIZE, RINGS_BASE, RINGS_SIZE};

const SIZE: u16 = 16;
const CAPACITY: u64 = 2048;
const SERIAL: &str = "simvm-fuzz-vda";
const RINGS: Range<u64> = RINGS_BASE..RINGS_BASE + RINGS_SIZE as u64;
/// Room for a request's header, status and data per descriptor index, from [`BUFFERS_BASE`].
const AREA: u64 = 0x1_0000;
const MEM: u64 = MEM_SIZE as u64;

#[derive(Clone, Debug)]
enum Op {
    /// A request as a driver builds it, from table entry `at` on, then published: the header
    /// (in one or two descriptors), data descriptors of `data` bytes each, device-writable for a
    /// read or `GET_ID` unless `flip`, and the status byte apart or at the end of the last data
    /// descriptor.
    /// `huge` replaces the data with two overlapping buffers of more than `MAX_DATA_LEN`.
    Request {
        at: u16,
        request_type: u32,
        sector: u64,
        data: Vec<u32>,
        flip: bool,
        header_split: bool,
        status_apart: bool,
        huge: bool,
    },
    Desc {
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    },
    Publish(u16),
    /// The available index moved by this much without new entries: a corrupted ring.
    AvailIdx(u16),
    Notify(u16),
    /// The world completes the `pick`-th request in flight.
    Complete {
        pick: usize,
        result: u8,
    },
    /// The world completes a request that is no longer in flight.
    Stale(usize),
    /// The machine forgets every request in flight.
    Forget,
    Restart,
}

fn request_type() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => Just(VIRTIO_BLK_T_IN),
        4 => Just(VIRTIO_BLK_T_OUT),
        1 => Just(VIRTIO_BLK_T_FLUSH),
        1 => Just(VIRTIO_BLK_T_GET_ID),
        1 => any::<u32>(),
    ]
}

fn sector() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0..CAPACITY + 16,
        1 => (u64::MAX - 16)..=u64::MAX,
        1 => any::<u64>(),
    ]
}

fn data_len() -> impl Strategy<Value = u32> {
    prop_oneof![
        6 => (1..=12u32).prop_map(|n| n * 512),
        1 => 1..=2000u32,
        1 => Just(20u32),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let request = (
        0..SIZE,
        request_type(),
        sector(),
        prop_oneof![
            1 => Just(Vec::new()),
            6 => prop::collection::vec(data_len(), 1..=3),
        ],
        prop_oneof![10 => Just(false), 1 => Just(true)],
        prop_oneof![3 => Just(false), 1 => Just(true)],
        any::<bool>(),
        prop_oneof![20 => Just(false), 1 => Just(true)],
    )
        .prop_map(
            |(at, request_type, sector, data, flip, header_split, status_apart, huge)| {
                Op::Request {
                    at,
                    request_type,
                    sector,
                    data,
                    flip,
                    header_split,
                    status_apart,
                    huge,
                }
            },
        );
    let index = prop_oneof![8 => 0..SIZE, 1 => SIZE..SIZE + 4, 1 => any::<u16>()];
    prop_oneof![
        8 => request,
        2 => (index.clone(), fuzz::guest_addr(MEM), fuzz::guest_len(), prop_oneof![0..8u16, any::<u16>()], index.clone())
            .prop_map(|(index, addr, len, flags, next)| Op::Desc { index, addr, len, flags, next }),
        1 => index.prop_map(Op::Publish),
        1 => prop_oneof![1..=3u16, SIZE - 1..=SIZE + 2, any::<u16>()].prop_map(Op::AvailIdx),
        6 => prop_oneof![8 => Just(REQUEST_QUEUE), 1 => any::<u16>()].prop_map(Op::Notify),
        6 => (any::<usize>(), 0..8u8).prop_map(|(pick, result)| Op::Complete { pick, result }),
        1 => any::<usize>().prop_map(Op::Stale),
        1 => Just(Op::Forget),
        1 => Just(Op::Restart),
    ]
}

/// What the device must do with one popped chain.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Hand this request out; its status byte is at `status`, a read's data goes to `into`.
    Handed {
        op: BlockOp,
        status: u64,
        into: Vec<RefBuffer>,
    },
    /// Return it at once with this used length and, if it has one, this status at `status`,
    /// after writing `data` (the serial of `GET_ID`).
    Answered {
        used: u32,
        status: Option<(u64, u8)>,
        data: Vec<(u64, u8)>,
        outcome: &'static str,
    },
}

/// The first `at` bytes of `buffers`, and the rest.
fn split(buffers: &[RefBuffer], mut at: u64) -> (Vec<RefBuffer>, Vec<RefBuffer>) {
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for &(addr, len, w) in buffers {
        let len64 = u64::from(len);
        if at >= len64 {
            first.push((addr, len, w));
            at -= len64;
        } else if at == 0 {
            second.push((addr, len, w));
        } else {
            first.push((addr, at as u32, w));
            second.push((addr + at, len - at as u32, w));
            at = 0;
        }
    }
    (first, second)
}

fn total(buffers: &[RefBuffer]) -> u64 {
    buffers.iter().map(|&(_, len, _)| u64::from(len)).sum()
}

/// What the device must do with the chain at `head`; what it writes at once goes into
/// `overlay`, for the chains after it.
fn fate(mem: &GuestMemoryMmap, overlay: &mut Overlay, table: u64, head: u16) -> Fate {
    let fate = parse(mem, overlay, table, head);
    if let Fate::Answered { status, data, .. } = &fate {
        overlay.0.extend(data.iter().copied().chain(*status));
    }
    fate
}

/// Parses the chain at `head` as the virtio 1.x block layout says (5.2.6).
fn parse(mem: &GuestMemoryMmap, overlay: &Overlay, table: u64, head: u16) -> Fate {
    let malformed = |status: Option<u64>| Fate::Answered {
        used: u32::from(status.is_some()),
        status: status.map(|s| (s, byte(VIRTIO_BLK_S_IOERR))),
        data: Vec::new(),
        outcome: "malformed",
    };
    let Some(chain) = fuzz::reference_chain(mem, table, SIZE, head, None, u32::MAX) else {
        return malformed(None);
    };
    let (readable, writable): (Vec<RefBuffer>, Vec<RefBuffer>) =
        chain.into_iter().partition(|&(_, _, w)| !w);
    let in_total = total(&writable);
    if in_total == 0 {
        return malformed(None);
    }
    let (data_in, status) = split(&writable, in_total - 1);
    let status = status[0].0;
    let reject = |code: u32, outcome| Fate::Answered {
        used: 1,
        status: Some((status, byte(code))),
        data: Vec::new(),
        outcome,
    };
    let (header, data_out) = split(&readable, 16);
    let header = overlay.read(mem, &header);
    if header.len() < 16 {
        return reject(VIRTIO_BLK_S_IOERR, "malformed");
    }
    let request_type = u32::from_le_bytes(header[0..4].try_into().unwrap());
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());
    let (in_len, out_len) = (total(&data_in), total(&data_out));
    // A read or write moves whole sectors, at least one, at most MAX_DATA_LEN, inside the disk.
    let range = |len: u64| -> Result<u32, &'static str> {
        if len == 0 || !len.is_multiple_of(512) || len > MAX_DATA_LEN as u64 {
            return Err("malformed");
        }
        let sectors = len / 512;
        match sector.checked_add(sectors) {
            Some(end) if end <= CAPACITY => Ok(sectors as u32),
            _ => Err("out_of_range"),
        }
    };
    match request_type {
        VIRTIO_BLK_T_IN if out_len != 0 => reject(VIRTIO_BLK_S_IOERR, "malformed"),
        VIRTIO_BLK_T_IN => match range(in_len) {
            Ok(sectors) => Fate::Handed {
                op: BlockOp::Read { sector, sectors },
                status,
                into: data_in,
            },
            Err(outcome) => reject(VIRTIO_BLK_S_IOERR, outcome),
        },
        VIRTIO_BLK_T_OUT if in_len != 0 => reject(VIRTIO_BLK_S_IOERR, "malformed"),
        VIRTIO_BLK_T_OUT => match range(out_len) {
            Ok(_) => Fate::Handed {
                op: BlockOp::Write {
                    sector,
                    data: overlay.read(mem, &data_out),
                },
                status,
                into: Vec::new(),
            },
            Err(outcome) => reject(VIRTIO_BLK_S_IOERR, outcome),
        },
        VIRTIO_BLK_T_FLUSH => Fate::Handed {
            op: BlockOp::Flush,
            status,
            into: Vec::new(),
        },
        VIRTIO_BLK_T_GET_ID => {
            // The 20-byte ID field, zero-padded, cut to the room the driver gave.
            let mut id = SERIAL.as_bytes().to_vec();
            id.resize(20, 0);
            id.truncate(in_len.min(20) as usize);
            let at = data_in
                .iter()
                .flat_map(|&(a, len, _)| a..a + u64::from(len));
            Fate::Answered {
                used: id.len() as u32 + 1,
                status: Some((status, byte(VIRTIO_BLK_S_OK))),
                data: at.zip(id).collect(),
                outcome: "get_id",
            }
        }
        _ => reject(VIRTIO_BLK_S_UNSUPP, "unsupported"),
    }
}

struct Harness {
    d: Driver<VirtioBlock>,
    mem: GuestMemoryMmap,
    next: u16,
    broken: bool,
    /// By head: the request handed out, where its status goes and where a read's data goes.
    in_flight: BTreeMap<u16, (BlockRequest, u64, Vec<RefBuffer>)>,
    /// Tokens that can no longer complete anything.
    dead: Vec<RequestToken>,
}

impl Harness {
    fn new() -> Self {
        let d = Driver::new(VirtioBlock::new(CAPACITY, SERIAL));
        let mem = d.mem.clone();
        let mut h = Self {
            d,
            mem,
            next: 0,
            broken: false,
            in_flight: BTreeMap::new(),
            dead: Vec::new(),
        };
        h.restart();
        h
    }

    fn restart(&mut self) {
        let features = self.d.dev.device().features();
        self.d.reset();
        self.d.start(features, 1, SIZE);
        self.next = 0;
        self.broken = false;
        self.forget();
    }

    fn forget(&mut self) {
        let gone = std::mem::take(&mut self.in_flight);
        self.dead.extend(gone.values().map(|(r, _, _)| r.token));
    }

    /// Keeps device-writable buffers off the rings, where the device's writes would change the
    /// ring under the model.
    fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let end = addr.saturating_add(u64::from(len));
        let on_rings = flags & 2 != 0 && end > RINGS.start && addr < RINGS.end;
        let addr = if on_rings { RINGS.end } else { addr };
        self.d.queues[0].set_desc(&self.mem, index % SIZE, addr, len, flags, next);
    }

    fn apply(&mut self, op: Op, tally: &mut Tally) {
        match op {
            Op::Request {
                at,
                request_type,
                sector,
                data,
                flip,
                header_split,
                status_apart,
                huge,
            } => {
                let reads = matches!(request_type, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID);
                let into_guest = reads != flip;
                let base = BUFFERS_BASE + u64::from(at) * AREA;
                let mut header = [0u8; 16];
                header[0..4].copy_from_slice(&request_type.to_le_bytes());
                header[8..16].copy_from_slice(&sector.to_le_bytes());
                self.mem.write_slice(&header, GuestAddress(base)).unwrap();
                // (addr, len, device-writable)
                let mut descs = if header_split {
                    vec![(base, 8, false), (base + 8, 8, false)]
                } else {
                    vec![(base, 16, false)]
                };
                let mut addr = base + 0x100;
                if huge {
                    let len = (MAX_DATA_LEN / 2 + 512) as u32;
                    descs.extend([(0x1000, len, into_guest), (0x1000, len, into_guest)]);
                } else {
                    for len in data {
                        descs.push((addr, len, into_guest));
                        addr += u64::from(len);
                    }
                }
                match descs.last_mut() {
                    Some(last) if last.2 && !status_apart => last.1 += 1,
                    _ => descs.push((base + 0x20, 1, true)),
                }
                for (i, &(addr, len, write)) in descs.iter().enumerate() {
                    let index = (at + i as u16) % SIZE;
                    let flags = u16::from(i + 1 < descs.len()) | if write { 2 } else { 0 };
                    self.set_desc(index, addr, len, flags, (index + 1) % SIZE);
                }
                self.d.queues[0].publish(&self.mem, at);
            }
            Op::Desc {
                index,
                addr,
                len,
                flags,
                next,
            } => self.set_desc(index, addr, len, flags, next),
            Op::Publish(head) => self.d.queues[0].publish(&self.mem, head),
            Op::AvailIdx(delta) => {
                let at = GuestAddress(self.d.queues[0].avail.0 + 2);
                let idx: u16 = self.mem.read_obj(at).unwrap();
                self.d.queues[0].set_avail_idx(&self.mem, idx.wrapping_add(delta));
            }
            Op::Notify(queue) => self.notify(queue, tally),
            Op::Complete { pick, result } => self.complete(pick, result, tally),
            Op::Stale(pick) => {
                if !self.dead.is_empty() {
                    let token = self.dead[pick % self.dead.len()];
                    let before = self.d.dev.device().stats();
                    let blk = self.d.dev.device_mut();
                    blk.complete(&self.mem, token, BlockResult::IoError);
                    assert_eq!(blk.stats().stale_completions, before.stale_completions + 1);
                    assert!(self.d.queues[0].take_used(&self.mem).is_empty());
                    tally.hit("stale");
                }
            }
            Op::Forget => {
                self.d.dev.device_mut().forget_in_flight();
                assert!(self.d.dev.device_mut().take_requests().is_empty());
                self.forget();
            }
            Op::Restart => {
                self.restart();
                tally.hit("restart");
            }
        }
        let blk = self.d.dev.device_mut();
        let s = blk.stats();
        assert_eq!(blk.in_flight(), self.in_flight.len());
        assert!(blk.in_flight() <= usize::from(SIZE));
        assert_eq!(
            s.reads + s.writes + s.flushes,
            s.completed + s.forgotten + self.in_flight.len() as u64,
            "every request handed out is completed, forgotten or in flight"
        );
        assert!(blk.take_errors().len() <= MAX_KEPT_ERRORS);
        assert!(self.d.dev.take_errors().len() <= 64);
        assert_eq!(self.d.lines.take() & !(1 << IRQ), 0);
    }

    fn notify(&mut self, queue: u16, tally: &mut Tally) {
        let was_broken = self.broken;
        let avail: u16 = self
            .mem
            .read_obj(GuestAddress(self.d.queues[0].avail.0 + 2))
            .unwrap();
        let available = avail.wrapping_sub(self.next);
        let table = self.d.queues[0].desc.0;
        // Predict every popped chain's fate before the device touches memory.
        let mut overlay = Overlay::default();
        let mut fates = Vec::new();
        let live = queue == REQUEST_QUEUE && !was_broken && available <= SIZE;
        for k in 0..if live { available } else { 0 } {
            let slot = u64::from(self.next.wrapping_add(k) % SIZE);
            let at = self.d.queues[0].avail.0 + 4 + 2 * slot;
            let head: u16 = self.mem.read_obj(GuestAddress(at)).unwrap();
            if head >= SIZE {
                fates.push((head, None));
                break;
            }
            let fate = if self.in_flight.contains_key(&head)
                || fates
                    .iter()
                    .any(|(h, f)| *h == head && matches!(f, Some(Fate::Handed { .. })))
            {
                None
            } else {
                Some(fate(&self.mem, &mut overlay, table, head))
            };
            fates.push((head, fate));
        }
        let before = self.d.dev.device().stats();
        self.d.notify(queue);
        let used = self.d.queues[0].take_used(&self.mem);
        let blk = self.d.dev.device_mut();
        let requests = blk.take_requests();
        let after = blk.stats();
        self.broken = self.d.dev.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0;

        if !live {
            assert!(used.is_empty() && requests.is_empty());
            let corrupt = queue == REQUEST_QUEUE && !was_broken;
            assert_eq!(self.broken, was_broken || corrupt);
            tally.hit(if corrupt { "bad_avail_idx" } else { "refused" });
            return;
        }
        let stopped = fates.last().is_some_and(|(h, _)| *h >= SIZE);
        assert_eq!(self.broken, stopped);
        self.next = self.next.wrapping_add(fates.len() as u16);
        let mut used = used.into_iter();
        let mut requests = requests.into_iter();
        let mut reposted = 0;
        let mut counted = BTreeMap::<&str, u64>::new();
        for (head, fate) in fates {
            match fate {
                // A head outside the table: counted malformed, and it stops the device.
                None if head >= SIZE => {
                    *counted.entry("malformed").or_default() += 1;
                    tally.hit("ring_broken");
                }
                None => {
                    reposted += 1;
                    tally.hit("reposted");
                }
                Some(Fate::Answered {
                    used: len, outcome, ..
                }) => {
                    assert_eq!(used.next(), Some((head, len)), "{outcome}");
                    *counted.entry(outcome).or_default() += 1;
                    tally.hit(outcome);
                }
                Some(Fate::Handed { op, status, into }) => {
                    let r = requests.next().expect("a request handed out");
                    assert_eq!(r.token.head, head);
                    assert!(r.op == op, "request {:?} differs from the model", r.token);
                    tally.hit(match op {
                        BlockOp::Read { .. } => "read",
                        BlockOp::Write { .. } => "write",
                        BlockOp::Flush => "flush",
                    });
                    self.in_flight.insert(head, (r, status, into));
                }
            }
        }
        assert!(used.next().is_none() && requests.next().is_none());
        // Status bytes and IDs of the chains answered at once, the last write to a byte winning.
        for (&at, &expected) in &overlay.0 {
            let got: u8 = self.mem.read_obj(GuestAddress(at)).unwrap();
            assert_eq!(
                got, expected,
                "byte {at:#x} written while answering at once"
            );
        }
        assert_eq!(
            after.reposted_in_flight - before.reposted_in_flight,
            reposted
        );
        let count = |outcome| counted.get(outcome).copied().unwrap_or(0);
        assert_eq!(after.malformed - before.malformed, count("malformed"));
        assert_eq!(after.unsupported - before.unsupported, count("unsupported"));
        assert_eq!(
            after.out_of_range - before.out_of_range,
            count("out_of_range")
        );
        assert_eq!(after.get_ids - before.get_ids, count("get_id"));
    }

    fn complete(&mut self, pick: usize, result: u8, tally: &mut Tally) {
        if self.in_flight.is_empty() {
            return;
        }
        let head = *self
            .in_flight
            .keys()
            .nth(pick % self.in_flight.len())
            .unwrap();
        let (request, status, into) = self.in_flight.remove(&head).unwrap();
        self.dead.push(request.token);
        let (result, code, data) = match (result, &request.op) {
            (0, _) => (BlockResult::IoError, VIRTIO_BLK_S_IOERR, None),
            (1, _) => (BlockResult::Unsupported, VIRTIO_BLK_S_UNSUPP, None),
            (2, BlockOp::Read { sectors, .. }) => {
                let wrong = Some(vec![0u8; *sectors as usize * 512 + 1]);
                (BlockResult::Ok { data: wrong }, VIRTIO_BLK_S_IOERR, None)
            }
            (_, BlockOp::Read { sectors, .. }) => {
                let data: Vec<u8> = (0..*sectors as usize * 512)
                    .map(|i| (i % 251) as u8)
                    .collect();
                (
                    BlockResult::Ok {
                        data: Some(data.clone()),
                    },
                    VIRTIO_BLK_S_OK,
                    Some(data),
                )
            }
            _ => (BlockResult::Ok { data: None }, VIRTIO_BLK_S_OK, None),
        };
        let before = self.d.dev.device().stats();
        self.d
            .dev
            .device_mut()
            .complete(&self.mem, request.token, result);
        let after = self.d.dev.device().stats();
        let used = self.d.queues[0].take_used(&self.mem);
        if self.broken {
            assert!(used.is_empty());
            assert_eq!(after.forgotten, before.forgotten + 1);
            tally.hit("completed_while_broken");
            return;
        }
        let written = data.as_ref().map_or(0, Vec::len) as u32;
        assert_eq!(
            used,
            vec![(head, written + 1)],
            "returned once, on completion"
        );
        assert_eq!(after.completed, before.completed + 1);
        let got: u8 = self.mem.read_obj(GuestAddress(status)).unwrap();
        assert_eq!(got, byte(code), "status byte");
        if let Some(data) = data {
            let clear_of_status = into
                .iter()
                .all(|&(a, len, _)| status < a || status >= a + u64::from(len));
            if fuzz::disjoint(&into) && clear_of_status {
                assert!(fuzz::read_buffers(&self.mem, &into) == data, "read data");
            }
        }
        tally.hit(if code == VIRTIO_BLK_S_OK {
            "completed_ok"
        } else {
            "completed_error"
        });
    }
}

fn check(ops: Vec<Op>, tally: &mut Tally) {
    let mut h = Harness::new();
    for op in ops {
        h.apply(op, tally);
    }
}

#[test]
fn fuzz_block() {
    let expected = [
        "read",
        "write",
        "flush",
        "get_id",
        "malformed",
        "unsupported",
        "out_of_range",
        "reposted",
        "ring_broken",
        "bad_avail_idx",
        "refused",
        "completed_ok",
        "completed_error",
        "completed_while_broken",
        "stale",
        "restart",
    ];
    let case = prop::collection::vec(op(), 1..=30);
    fuzz::run("block", 400, case, &expected, check);
}
