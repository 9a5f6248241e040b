//! Fuzz targets of virtio-net: a guest that builds transmit and receive chains like a driver, or
//! anything else, corrupts its rings and resets the device, while the world delivers frames of
//! any size.
//!
//! A model predicts exactly what the device must do with every chain: which chains it pops, in
//! what order, what it puts in the used ring, which frames leave the machine, what a delivery
//! writes into guest memory, which counters move and which errors are reported. In a "chaos" case
//! the guest may also write over its own rings while the device works; then only the invariants
//! that hold whatever the guest does are checked: no panic, bounded outputs, counters that add up.

use std::ops::Range;

use proptest::prelude::*;
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::fuzz::{self, Overlay, Tally};
use crate::net::checksum::fold_sum;
use crate::net::tso::MAX_SEGMENTS;
use crate::virtio::testing::{Driver, BUFFERS_BASE, IRQ, MEM_SIZE, RINGS_BASE, RINGS_SIZE};

/// Entries of each fuzzed queue: few, so that random indexes and heads hit.
const SIZE: u16 = 16;
/// The rings of both queues. In an exact case no device-writable buffer may overlap them, or the
/// device would rewrite the rings under the model.
const RINGS: Range<u64> = RINGS_BASE..RINGS_BASE + 2 * RINGS_SIZE as u64;
/// Room for a transmit chain per descriptor index, from [`BUFFERS_BASE`].
const TX_AREA: u64 = 0x1_1000;
/// Where receive chains put their buffers: below the transmit areas.
const RX_AREA: Range<u64> = 0x18_0000..BUFFERS_BASE;
const MEM: u64 = MEM_SIZE as u64;

#[derive(Clone, Debug)]
pub(super) enum Op {
    /// A transmit chain as a driver builds it: `packet` (header and frame) cut at `cuts` (in
    /// thousandths of its length, or right after the header for 0) into descriptors from table
    /// entry `at` on, then published.
    Tx {
        at: u16,
        packet: Vec<u8>,
        cuts: Vec<usize>,
    },
    /// A receive chain as a driver builds it: buffers of `lens` bytes from `base`, descriptors
    /// from table entry `at` on, then published.
    Rx { at: u16, base: u64, lens: Vec<u32> },
    /// One descriptor of queue `q`, anything at all.
    Desc {
        q: usize,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    },
    /// A whole table and available ring of queue `q` of garbage, from a seed.
    Garbage { q: usize, seed: u64 },
    /// `head` in the next available slot of `q`, whatever the table holds.
    Publish { q: usize, head: u16 },
    /// The available index of `q` moved by `delta` without new entries: a corrupted ring.
    AvailIdx { q: usize, delta: u16 },
    /// A queue notification (1 is the transmit queue).
    Notify(u16),
    /// The world delivers a frame.
    Deliver {
        len: usize,
        fill: u8,
        verified: bool,
    },
    /// The driver resets the device and starts it again, accepting `features` of those offered.
    Restart { features: u64 },
    /// Chaos cases only: the guest writes anywhere, its rings included.
    Scribble { addr: u64, bytes: Vec<u8> },
}

#[derive(Clone, Debug)]
pub(super) struct Case {
    features: u64,
    chaos: bool,
    ops: Vec<Op>,
}

/// What a case mostly exercises.
#[derive(Clone, Copy)]
pub(super) enum Mix {
    Tx,
    Rx,
    /// As much of one as of the other (the deterministic garbage test).
    Both,
}

fn tcp_frame() -> impl Strategy<Value = Vec<u8>> {
    let payload = prop_oneof![
        6 => 0..=3000usize,
        2 => 0..=65_600usize,
    ];
    (
        payload,
        any::<u8>(),
        prop_oneof![Just(5u8), Just(8u8), 0..16u8],
    )
        .prop_map(|(len, fill, doff)| {
            let mut f = vec![0u8; 14 + 20 + usize::from(doff.max(5)) * 4];
            f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            f[14] = 0x45;
            f[14 + 8] = 64;
            f[14 + 9] = 6;
            f[14 + 12..14 + 20].copy_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
            f[34 + 12] = doff << 4;
            f[34 + 13] = 0x18;
            f.extend((0..len).map(|i| fill.wrapping_add(i as u8)));
            f
        })
}

fn tx_packet() -> impl Strategy<Value = Vec<u8>> {
    let flags = prop_oneof![3 => Just(0u8), 3 => Just(1u8), 1 => any::<u8>()];
    let gso = prop_oneof![4 => Just(0u8), 3 => Just(1u8), 1 => Just(0x81u8), 1 => any::<u8>()];
    let mss = prop_oneof![
        3 => Just(1448u16),
        1 => prop::sample::select(vec![0u16, 1, 87, 88, 536, 9000, 65_535]),
        1 => any::<u16>(),
    ];
    let csum = prop_oneof![
        3 => Just((34u16, 16u16)),
        2 => (0..100u16, 0..40u16),
        1 => (any::<u16>(), any::<u16>()),
    ];
    let frame = prop_oneof![
        4 => tcp_frame(),
        2 => prop::collection::vec(any::<u8>(), 14..=1514),
        1 => prop::collection::vec(any::<u8>(), 0..=16),
    ];
    let header_len = prop_oneof![8 => Just(NET_HDR_LEN), 1 => 0..=NET_HDR_LEN];
    (flags, gso, mss, csum, frame, header_len).prop_map(
        |(flags, gso, mss, (start, offset), frame, header_len)| {
            let mut p = vec![0u8; NET_HDR_LEN];
            p[0] = flags;
            p[1] = gso;
            p[4..6].copy_from_slice(&mss.to_le_bytes());
            p[6..8].copy_from_slice(&start.to_le_bytes());
            p[8..10].copy_from_slice(&offset.to_le_bytes());
            p.truncate(header_len);
            p.extend(frame);
            p
        },
    )
}

fn rx_len() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => Just(1526u32),
        2 => 1..=100u32,
        1 => Just(12u32),
        1 => prop::sample::select(vec![9012u32, 65_562, 70_000]),
        1 => fuzz::guest_len(),
    ]
}

fn frame_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 14..=1514usize,
        1 => 0..=14usize,
        1 => 1515..=9000usize,
        1 => (MAX_FRAME_LEN - 2)..=(MAX_FRAME_LEN + 2),
    ]
}

fn queue_index() -> impl Strategy<Value = u16> {
    prop_oneof![8 => 0..SIZE, 1 => SIZE..SIZE + 4, 1 => any::<u16>()]
}

fn op(mix: Mix) -> impl Strategy<Value = Op> {
    let (tx, rx) = match mix {
        Mix::Tx => (6, 1),
        Mix::Rx => (1, 6),
        Mix::Both => (4, 4),
    };
    let cuts = prop::collection::vec(0..=1000usize, 0..=3);
    prop_oneof![
        tx => (0..SIZE, tx_packet(), cuts).prop_map(|(at, packet, cuts)| Op::Tx { at, packet, cuts }),
        tx => Just(Op::Notify(TX_QUEUE)),
        rx => (0..SIZE, prop_oneof![4 => RX_AREA, 1 => fuzz::guest_addr(MEM)], prop::collection::vec(rx_len(), 1..=3))
            .prop_map(|(at, base, lens)| Op::Rx { at, base, lens }),
        rx => (frame_len(), any::<u8>(), any::<bool>())
            .prop_map(|(len, fill, verified)| Op::Deliver { len, fill, verified }),
        2 => (0..2usize, queue_index(), fuzz::guest_addr(MEM), fuzz::guest_len(), prop_oneof![0..8u16, any::<u16>()], queue_index())
            .prop_map(|(q, index, addr, len, flags, next)| Op::Desc { q, index, addr, len, flags, next }),
        1 => (0..2usize, any::<u64>()).prop_map(|(q, seed)| Op::Garbage { q, seed }),
        1 => (0..2usize, queue_index()).prop_map(|(q, head)| Op::Publish { q, head }),
        1 => (0..2usize, prop_oneof![1..=3u16, SIZE - 1..=SIZE + 2, any::<u16>()])
            .prop_map(|(q, delta)| Op::AvailIdx { q, delta }),
        1 => prop_oneof![Just(RX_QUEUE), 2..=u16::MAX].prop_map(Op::Notify),
        1 => any::<u64>().prop_map(|features| Op::Restart { features }),
        1 => (fuzz::guest_addr(MEM), prop::collection::vec(any::<u8>(), 1..=64))
            .prop_map(|(addr, bytes)| Op::Scribble { addr, bytes }),
    ]
}

pub(super) fn case(mix: Mix) -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        prop_oneof![9 => Just(false), 1 => Just(true)],
        prop::collection::vec(op(mix), 1..=24),
    )
        .prop_map(|(features, chaos, ops)| Case {
            features,
            chaos,
            ops,
        })
}

/// The device under test, the test driver around it, and what the model knows.
struct Harness {
    d: Driver<VirtioNet>,
    mem: GuestMemoryMmap,
    features: u64,
    chaos: bool,
    /// The device's next available position per queue, as the model has it.
    next: [u16; 2],
    /// The device needs a reset.
    broken: bool,
}

fn offered() -> u64 {
    VirtioNet::new(crate::net::MachineId(0).mac()).features()
}

impl Harness {
    fn new(features: u64, chaos: bool) -> Self {
        let d = Driver::new(VirtioNet::new(crate::net::MachineId(0).mac()));
        let mem = d.mem.clone();
        let mut h = Self {
            d,
            mem,
            features: 0,
            chaos,
            next: [0; 2],
            broken: false,
        };
        h.restart(features);
        h
    }

    fn restart(&mut self, features: u64) {
        self.features = (features | 1 << VIRTIO_F_VERSION_1) & offered();
        self.d.reset();
        self.d.start(self.features, 2, SIZE);
        self.next = [0; 2];
        self.broken = false;
    }

    /// Moves a device-writable receive buffer off the rings in an exact case.
    fn safe(&self, q: usize, addr: u64, len: u32, write: bool) -> u64 {
        let end = addr.saturating_add(u64::from(len));
        if self.chaos
            || q != usize::from(RX_QUEUE)
            || !write
            || end <= RINGS.start
            || addr >= RINGS.end
        {
            addr
        } else {
            RINGS.end
        }
    }

    fn set_desc(&self, q: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let addr = self.safe(q, addr, len, flags & 2 != 0);
        self.d.queues[q].set_desc(&self.mem, index % SIZE, addr, len, flags, next);
    }

    fn avail_idx(&self, q: usize) -> u16 {
        let at = self.d.queues[q].avail.0 + 2;
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }

    fn avail_entry(&self, q: usize, position: u16) -> u16 {
        let at = self.d.queues[q].avail.0 + 4 + 2 * u64::from(position % SIZE);
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }

    fn device_broken(&self) -> bool {
        self.d.dev.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0
    }

    fn apply(&mut self, op: Op, tally: &mut Tally) {
        match op {
            Op::Tx { at, packet, cuts } => {
                let base = BUFFERS_BASE + u64::from(at) * TX_AREA;
                self.mem.write_slice(&packet, GuestAddress(base)).unwrap();
                let mut bounds: Vec<usize> = cuts
                    .into_iter()
                    .map(|c| {
                        if c == 0 {
                            NET_HDR_LEN
                        } else {
                            packet.len() * c / 1000
                        }
                    })
                    .filter(|&c| c < packet.len())
                    .collect();
                bounds.extend([0, packet.len()]);
                bounds.sort_unstable();
                bounds.dedup();
                let pieces: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
                // An empty packet still takes a descriptor, of length zero.
                let pieces = if pieces.is_empty() {
                    vec![(0, 0)]
                } else {
                    pieces
                };
                for (i, &(start, end)) in pieces.iter().enumerate() {
                    let index = (at + i as u16) % SIZE;
                    let last = i + 1 == pieces.len();
                    let len = (end - start) as u32;
                    self.set_desc(
                        1,
                        index,
                        base + start as u64,
                        len,
                        u16::from(!last),
                        (index + 1) % SIZE,
                    );
                }
                self.d.queues[1].publish(&self.mem, at);
            }
            Op::Rx { at, base, lens } => {
                let mut addr = base;
                for (i, &len) in lens.iter().enumerate() {
                    let index = (at + i as u16) % SIZE;
                    let flags = 2 | u16::from(i + 1 < lens.len());
                    let safe = self.safe(0, addr, len, true);
                    self.set_desc(0, index, safe, len, flags, (index + 1) % SIZE);
                    addr = safe.wrapping_add(u64::from(len));
                }
                self.d.queues[0].publish(&self.mem, at);
            }
            Op::Desc {
                q,
                index,
                addr,
                len,
                flags,
                next,
            } => self.set_desc(q, index, addr, len, flags, next),
            Op::Garbage { q, seed } => {
                let mut state = seed | 1;
                let mut next = move || {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state
                };
                for i in 0..SIZE {
                    let raw = next();
                    let len = (raw & 0xfff) as u32;
                    let flags = (raw >> 12) as u16 & 7;
                    let index = (raw >> 16) as u16 % (SIZE + 2);
                    self.set_desc(q, i, next() % (MEM + 0x1000), len, flags, index);
                }
                for slot in 0..u64::from(SIZE) {
                    let at = self.d.queues[q].avail.0 + 4 + 2 * slot;
                    let head = next() as u16 % (SIZE + 2);
                    self.mem.write_obj(head, GuestAddress(at)).unwrap();
                }
                let idx = self.next[q].wrapping_add(next() as u16 % (SIZE + 2));
                self.d.queues[q].set_avail_idx(&self.mem, idx);
            }
            Op::Publish { q, head } => self.d.queues[q].publish(&self.mem, head),
            Op::AvailIdx { q, delta } => {
                let idx = self.avail_idx(q).wrapping_add(delta);
                self.d.queues[q].set_avail_idx(&self.mem, idx);
            }
            Op::Notify(queue) => self.notify(queue, tally),
            Op::Deliver {
                len,
                fill,
                verified,
            } => {
                let data = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                let frame = Frame {
                    data,
                    csum_verified: verified,
                };
                self.deliver(&frame, tally);
            }
            Op::Restart { features } => {
                self.restart(features);
                tally.hit("restart");
            }
            Op::Scribble { addr, bytes } => {
                if self.chaos {
                    let _ = self.mem.write_slice(&bytes, GuestAddress(addr));
                }
            }
        }
        // Whatever happened, the device raises only its own line, keeps at most
        // MAX_KEPT_ERRORS errors and the transport the same.
        assert_eq!(self.d.lines.take() & !(1 << IRQ), 0);
        assert!(self.d.dev.device_mut().take_errors().len() <= MAX_KEPT_ERRORS);
        assert!(self.d.dev.take_errors().len() <= 64);
        assert!(self.d.dev.device_mut().take_tx_frames().is_empty());
    }

    fn notify(&mut self, queue: u16, tally: &mut Tally) {
        let was_broken = self.broken;
        let available = self.avail_idx(1).wrapping_sub(self.next[1]);
        let live = queue == TX_QUEUE && !was_broken && !self.chaos && available <= SIZE;
        // The chains the device will pop, in ring order, and what each must become; it stops at
        // a head outside the table, which cannot go back to the used ring. Predicted before the
        // notification, with the used-ring entries the device writes as it goes (a transmit
        // buffer may overlap the used ring).
        let mut popped = Vec::new();
        if live {
            let table = self.d.queues[1].desc.0;
            let used_ring = self.d.queues[1].used.0;
            let used_idx: u16 = self.mem.read_obj(GuestAddress(used_ring + 2)).unwrap();
            let mut overlay = Overlay::default();
            for k in 0..available {
                let head = self.avail_entry(1, self.next[1].wrapping_add(k));
                if head >= SIZE {
                    popped.push((head, None));
                    break;
                }
                popped.push((head, self.expected_tx(&overlay, table, head)));
                let n = used_idx.wrapping_add(popped.len() as u16);
                let slot = u64::from(n.wrapping_sub(1) % SIZE);
                overlay.write(
                    used_ring + 4 + 8 * slot,
                    &[u32::from(head), 0].map(u32::to_le_bytes).concat(),
                );
                overlay.write(used_ring + 2, &n.to_le_bytes());
            }
        }
        let before = self.d.dev.device().stats();
        self.d.lines.take();
        self.d.notify(queue);
        let used = self.d.queues[1].take_used(&self.mem);
        let net = self.d.dev.device_mut();
        let frames = net.take_tx_frames();
        let errors = net.take_errors();
        let after = net.stats();
        let raised = self.d.lines.take() != 0;
        self.broken = self.device_broken();

        // Invariants that hold whatever the guest did.
        assert!(frames.len() <= usize::from(SIZE) * MAX_SEGMENTS);
        assert!(frames
            .iter()
            .all(|f| (ETH_HEADER_LEN..=MAX_FRAME_LEN).contains(&f.data.len())));
        assert_eq!(after.tx_frames - before.tx_frames, frames.len() as u64);
        let bytes: usize = frames.iter().map(|f| f.data.len()).sum();
        assert_eq!(after.tx_bytes - before.tx_bytes, bytes as u64);
        let verified = frames.iter().filter(|f| f.csum_verified).count();
        assert_eq!(
            after.tx_csum_completed - before.tx_csum_completed,
            verified as u64
        );
        // An interrupt means used buffers or a device that just broke (EVENT_IDX may suppress one
        // for used buffers).
        assert!(!raised || !used.is_empty() || (self.broken && !was_broken));
        if self.chaos {
            return;
        }
        if queue != TX_QUEUE || was_broken {
            assert!(used.is_empty() && frames.is_empty() && errors.is_empty());
            assert_eq!(after, before);
            assert_eq!(self.broken, was_broken);
            tally.hit(if was_broken {
                "tx_refused"
            } else {
                "other_queue"
            });
            return;
        }
        if !live {
            assert!(self.broken && used.is_empty() && frames.is_empty());
            tally.hit("tx_bad_avail_idx");
            return;
        }
        let stopped = popped.last().is_some_and(|&(h, _)| h >= SIZE);
        assert_eq!(self.broken, stopped);
        let returned: Vec<(u16, u32)> = popped
            .iter()
            .filter(|&&(h, _)| h < SIZE)
            .map(|&(h, _)| (h, 0))
            .collect();
        assert_eq!(
            used, returned,
            "every popped chain is returned once, in order"
        );
        self.next[1] = self.next[1].wrapping_add(popped.len() as u16);

        let mut errors = errors.into_iter();
        let mut frames = frames.into_iter();
        let (mut malformed, mut segmented) = (0, 0);
        for (head, expected) in popped {
            match expected {
                None => {
                    let error = errors.next();
                    assert!(
                        matches!(&error, Some(NetError::Tx { head: h, .. }) if *h == head),
                        "chain {head}: expected an error, got {error:?}"
                    );
                    malformed += 1;
                    tally.hit("tx_malformed");
                }
                Some(expected) => {
                    segmented += u64::from(expected.len() > 1);
                    for want in &expected {
                        want.check(&frames.next().expect("a frame of a good chain"));
                    }
                    tally.hit(match &expected[..] {
                        [Expected::Plain(_)] => "tx_plain",
                        [Expected::Checksummed { .. }] => "tx_checksummed",
                        _ => "tx_segmented",
                    });
                }
            }
        }
        assert!(errors.next().is_none() && frames.next().is_none());
        assert_eq!(after.tx_malformed - before.tx_malformed, malformed);
        assert_eq!(after.tx_segmented - before.tx_segmented, segmented);
    }

    /// The frames the chain at `head` must become, or `None` if the device must refuse it.
    fn expected_tx(&self, overlay: &Overlay, table: u64, head: u16) -> Option<Vec<Expected>> {
        let buffers =
            fuzz::reference_chain(&self.mem, table, SIZE, head, Some(false), MAX_TX_CHAIN)?;
        let data = overlay.read(&self.mem, &buffers);
        if data.len() < NET_HDR_LEN || data.len() - NET_HDR_LEN < ETH_HEADER_LEN {
            return None;
        }
        let (header, frame) = data.split_at(NET_HDR_LEN);
        let tso = has_feature(self.features, VIRTIO_NET_F_HOST_TSO4);
        // The ECN bit qualifies a segmentation type; alone it means none.
        match header[1] & 0x7f {
            0 => {}
            1 if tso => {
                let mss = u16::from_le_bytes([header[4], header[5]]);
                let segments = crate::net::tso::segment_tcp4(frame, mss).ok()?;
                return Some(segments.into_iter().map(Expected::Segment).collect());
            }
            _ => return None,
        }
        if header[0] & 1 == 0 {
            return Some(vec![Expected::Plain(frame.to_vec())]);
        }
        let start = usize::from(u16::from_le_bytes([header[6], header[7]]));
        let at = start + usize::from(u16::from_le_bytes([header[8], header[9]]));
        if at + 2 > frame.len() {
            return None;
        }
        Some(vec![Expected::Checksummed {
            frame: frame.to_vec(),
            start,
            at,
        }])
    }

    fn deliver(&mut self, frame: &Frame, tally: &mut Tally) {
        let was_broken = self.broken;
        let avail_idx = self.avail_idx(0);
        let before = self.d.dev.device().stats();
        self.d.lines.take();
        let result = self.d.dev.device_mut().deliver(&self.mem, frame);
        let used = self.d.queues[0].take_used(&self.mem);
        let errors = self.d.dev.device_mut().take_errors();
        let after = self.d.dev.device().stats();
        let raised = self.d.lines.take() != 0;
        self.broken = self.device_broken();

        // Each delivery is counted exactly once, under its outcome.
        let counted = [
            (after.rx_frames - before.rx_frames, result.is_ok()),
            (
                after.rx_dropped_not_running - before.rx_dropped_not_running,
                result == Err(RxDrop::NotRunning),
            ),
            (
                after.rx_dropped_no_buffers - before.rx_dropped_no_buffers,
                result == Err(RxDrop::NoBuffers),
            ),
            (
                after.rx_dropped_too_big - before.rx_dropped_too_big,
                matches!(result, Err(RxDrop::TooBig { .. })),
            ),
        ];
        for (delta, this) in counted {
            assert_eq!(delta, u64::from(this));
        }
        let bytes = if result.is_ok() { frame.data.len() } else { 0 };
        assert_eq!(after.rx_bytes - before.rx_bytes, bytes as u64);
        assert!(!raised || !used.is_empty() || (self.broken && !was_broken));
        if self.chaos {
            return;
        }
        tally.hit(match result {
            Ok(()) => "rx_delivered",
            Err(RxDrop::NotRunning) => "rx_not_running",
            Err(RxDrop::NoBuffers) => "rx_no_buffers",
            Err(RxDrop::TooBig { .. }) => "rx_too_big",
        });
        if was_broken {
            assert_eq!(result, Err(RxDrop::NotRunning));
            assert!(used.is_empty() && errors.is_empty() && self.broken);
            return;
        }
        let available = avail_idx.wrapping_sub(self.next[0]);
        if available > SIZE {
            assert_eq!(result, Err(RxDrop::NotRunning));
            assert!(self.broken && used.is_empty());
            assert!(matches!(&errors[..], [NetError::RxRing { .. }]));
            tally.hit("rx_bad_avail_idx");
            return;
        }
        let table = self.d.queues[0].desc.0;
        let packet_len = NET_HDR_LEN + frame.data.len();
        let mut expected_used = Vec::new();
        let mut expected_errors = 0;
        let mut ring_broke = false;
        let mut outcome = Err(RxDrop::NoBuffers);
        let first = self.next[0];
        for k in 0..available {
            let head = self.avail_entry(0, first.wrapping_add(k));
            if head >= SIZE {
                // Popped, reported as malformed, and it breaks the ring.
                self.next[0] = self.next[0].wrapping_add(1);
                expected_errors += 2;
                ring_broke = true;
                outcome = Err(RxDrop::NotRunning);
                break;
            }
            let Some(buffers) =
                fuzz::reference_chain(&self.mem, table, SIZE, head, Some(true), u32::MAX)
            else {
                self.next[0] = self.next[0].wrapping_add(1);
                expected_used.push((head, 0));
                expected_errors += 1;
                tally.hit("rx_malformed");
                continue;
            };
            let room: usize = buffers.iter().map(|&(_, len, _)| len as usize).sum();
            if room < packet_len {
                // Left in the ring for a smaller frame.
                outcome = Err(RxDrop::TooBig {
                    len: frame.data.len(),
                    room: room.saturating_sub(NET_HDR_LEN),
                });
                break;
            }
            self.next[0] = self.next[0].wrapping_add(1);
            expected_used.push((head, packet_len as u32));
            if fuzz::disjoint(&buffers) {
                let got = fuzz::read_buffers(&self.mem, &buffers);
                let mut header = [0u8; NET_HDR_LEN];
                if frame.csum_verified && has_feature(self.features, VIRTIO_NET_F_GUEST_CSUM) {
                    header[0] = byte(VIRTIO_NET_HDR_F_DATA_VALID);
                }
                header[10] = 1;
                assert_eq!(&got[..NET_HDR_LEN], &header);
                assert!(
                    got[NET_HDR_LEN..packet_len] == frame.data[..],
                    "frame bytes"
                );
            }
            outcome = Ok(());
            break;
        }
        assert_eq!(result, outcome);
        assert_eq!(
            used, expected_used,
            "every popped chain is returned once, in order"
        );
        assert_eq!(errors.len(), expected_errors, "{errors:?}");
        assert_eq!(
            after.rx_malformed - before.rx_malformed,
            expected_used.iter().filter(|&&(_, len)| len == 0).count() as u64
                + u64::from(ring_broke)
        );
        assert_eq!(self.broken, ring_broke);
    }
}

/// A frame the model expects the device to transmit.
#[derive(Debug)]
enum Expected {
    /// Exactly these bytes, without `csum_verified`.
    Plain(Vec<u8>),
    /// These bytes with a checksum over `frame[start..]` completed at `at`.
    Checksummed {
        frame: Vec<u8>,
        start: usize,
        at: usize,
    },
    /// A segment of a large TCP frame (checked on its own by `fuzz_tso`).
    Segment(Vec<u8>),
}

impl Expected {
    fn check(&self, got: &Frame) {
        match self {
            Expected::Plain(frame) => {
                assert!(!got.csum_verified && got.data == *frame, "plain frame");
            }
            Expected::Segment(segment) => {
                assert!(got.csum_verified && got.data == *segment, "segment");
            }
            Expected::Checksummed { frame, start, at } => {
                assert!(got.csum_verified && got.data.len() == frame.len());
                let mut masked = got.data.clone();
                masked[*at..at + 2].copy_from_slice(&frame[*at..at + 2]);
                assert!(masked == *frame, "only the checksum field changes");
                // The field held the pseudo-header's sum, which the checksum covers; at an odd
                // distance from `start` its bytes fall into different words.
                if (at - start) % 2 == 0 {
                    let pseudo = u16::from_be_bytes([frame[*at], frame[at + 1]]);
                    let sum = fold_sum(&got.data[*start..], pseudo.into());
                    assert_eq!(sum, 0xffff, "a correct checksum");
                }
            }
        }
    }
}

pub(super) fn check(case: Case, tally: &mut Tally) {
    let mut h = Harness::new(case.features, case.chaos);
    for op in case.ops {
        h.apply(op, tally);
    }
}

/// What a transmit-side stream must reach (besides restarts).
pub(super) const TX_OUTCOMES: [&str; 6] = [
    "tx_plain",
    "tx_checksummed",
    "tx_segmented",
    "tx_malformed",
    "tx_bad_avail_idx",
    "tx_refused",
];

/// What a receive-side stream must reach (besides restarts).
pub(super) const RX_OUTCOMES: [&str; 6] = [
    "rx_delivered",
    "rx_no_buffers",
    "rx_too_big",
    "rx_not_running",
    "rx_malformed",
    "rx_bad_avail_idx",
];

#[test]
fn fuzz_net_tx() {
    let expected = [&TX_OUTCOMES[..], &["restart"]].concat();
    fuzz::run("net_tx", 400, case(Mix::Tx), &expected, check);
}

#[test]
fn fuzz_net_rx() {
    let expected = [&RX_OUTCOMES[..], &["restart"]].concat();
    fuzz::run("net_rx", 400, case(Mix::Rx), &expected, check);
}
