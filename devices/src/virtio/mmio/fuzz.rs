//! Fuzz target of the virtio-mmio transport, in front of virtio-net and virtio-blk: register
//! accesses of any size at any offset with values a driver would write (or any), after Linux's
//! probe or from power-on, with queue notifications on whatever rings the guest configured.
//!
//! The transport must keep the protocol's promises (virtio 1.x 3.1, 4.2.2) whatever the order:
//! malformed accesses read as zero and are counted, status bits only come and go as the driver
//! may set them, `FEATURES_OK` means a valid feature set, `DRIVER_OK` means live queues whose
//! configuration is frozen, and nothing reaches the device before `DRIVER_OK`.

use proptest::prelude::*;
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_FAILED as FAILED;
use vm_memory::GuestMemoryMmap;

use super::*;
use crate::fuzz::{self, Tally};
use crate::net::tso::MAX_SEGMENTS;
use crate::net::MachineId;
use crate::virtio::block::VirtioBlock;
use crate::virtio::net::VirtioNet;
use crate::virtio::testing::{Desc, Driver, IRQ, RINGS_BASE};
use crate::virtio::{INT_CONFIG, INT_VRING};
use vm_memory::Bytes;

#[derive(Clone, Debug)]
enum Op {
    Read {
        offset: u64,
        len: usize,
    },
    Write {
        offset: u64,
        len: usize,
        value: u64,
    },
    /// After the probe: the driver queues a well-formed chain on queue `q` (a frame to send, a
    /// flush), to be found at the next notification.
    Post(usize),
    /// After the probe: the available index of queue `q` runs past the ring.
    Corrupt(usize),
}

/// A value for the register at `offset`, as a driver might write it, or anything.
fn value_for(offset: u32) -> BoxedStrategy<u64> {
    let anything = any::<u64>().boxed();
    let typical = match offset {
        reg::VIRTIO_MMIO_STATUS => prop::sample::select(vec![
            0u64,
            u64::from(ACKNOWLEDGE),
            u64::from(ACKNOWLEDGE | DRIVER),
            u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK),
            u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
            u64::from(ACKNOWLEDGE | DRIVER | FAILED),
            u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK | NEEDS_RESET),
        ])
        .boxed(),
        reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL
        | reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL
        | reg::VIRTIO_MMIO_QUEUE_SEL
        | reg::VIRTIO_MMIO_QUEUE_NOTIFY => (0..3u64).boxed(),
        reg::VIRTIO_MMIO_DRIVER_FEATURES => prop_oneof![
            Just(0xffff_ffffu64),
            Just(1u64), // VERSION_1 in the high word
            any::<u32>().prop_map(u64::from),
        ]
        .boxed(),
        reg::VIRTIO_MMIO_QUEUE_NUM => prop_oneof![
            (0..=8u32).prop_map(|shift| 1u64 << shift),
            Just(0u64),
            Just(300u64),
        ]
        .boxed(),
        reg::VIRTIO_MMIO_QUEUE_DESC_LOW
        | reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW
        | reg::VIRTIO_MMIO_QUEUE_USED_LOW => prop_oneof![
            (0..0x1000u64).prop_map(|i| RINGS_BASE + 16 * i),
            (0..0x40_0000u64),
        ]
        .boxed(),
        reg::VIRTIO_MMIO_QUEUE_DESC_HIGH
        | reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH
        | reg::VIRTIO_MMIO_QUEUE_USED_HIGH => prop_oneof![4 => Just(0u64), 1 => Just(1u64)].boxed(),
        reg::VIRTIO_MMIO_QUEUE_READY | reg::VIRTIO_MMIO_INTERRUPT_ACK => (0..4u64).boxed(),
        _ => anything.clone(),
    };
    prop_oneof![6 => typical, 1 => anything].boxed()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => access(),
        2 => (0..2usize).prop_map(Op::Post),
        2 => (0..2u64).prop_map(|q| Op::Write {
            offset: reg::VIRTIO_MMIO_QUEUE_NOTIFY.into(),
            len: 4,
            value: q,
        }),
        1 => (0..2usize).prop_map(Op::Corrupt),
    ]
}

fn access() -> impl Strategy<Value = Op> {
    let register = prop_oneof![
        8 => prop::sample::select(vec![
            reg::VIRTIO_MMIO_STATUS,
            reg::VIRTIO_MMIO_DRIVER_FEATURES,
            reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL,
            reg::VIRTIO_MMIO_QUEUE_SEL,
            reg::VIRTIO_MMIO_QUEUE_NUM,
            reg::VIRTIO_MMIO_QUEUE_DESC_LOW,
            reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW,
            reg::VIRTIO_MMIO_QUEUE_USED_LOW,
            reg::VIRTIO_MMIO_QUEUE_READY,
            reg::VIRTIO_MMIO_QUEUE_NOTIFY,
            reg::VIRTIO_MMIO_INTERRUPT_ACK,
        ])
        .prop_map(u64::from),
        6 => (0..0x40u64).prop_map(|i| 4 * i),
        2 => 0x100..0x140u64,
        1 => 0..=0x1000u64,
        1 => any::<u64>(),
    ];
    let len = prop_oneof![8 => Just(4usize), 1 => 0..=8usize];
    (register, len, any::<bool>()).prop_flat_map(|(offset, len, read)| {
        if read {
            Just(Op::Read { offset, len }).boxed()
        } else {
            let register = u32::try_from(offset).unwrap_or(u32::MAX);
            value_for(register)
                .prop_map(move |value| Op::Write { offset, len, value })
                .boxed()
        }
    })
}

/// What the target needs of a device beyond `VirtioDevice`.
trait Drain {
    /// Takes the device's output; returns how much there was and its bound.
    fn drain(&mut self) -> (usize, usize);

    /// A well-formed chain for queue `q`: its bytes, then (offset, len, device-writable) per
    /// descriptor.
    fn chain(q: usize) -> (Vec<u8>, Vec<(u64, u32, bool)>);
}

impl Drain for VirtioNet {
    fn chain(_: usize) -> (Vec<u8>, Vec<(u64, u32, bool)>) {
        // A zeroed header and a minimal Ethernet frame.
        (vec![0; 72], vec![(0, 12, false), (12, 60, false)])
    }

    fn drain(&mut self) -> (usize, usize) {
        assert!(self.take_errors().len() <= 64);
        let bound = usize::from(crate::virtio::net::QUEUE_SIZE) * MAX_SEGMENTS;
        (self.take_tx_frames().len(), bound)
    }
}

impl Drain for VirtioBlock {
    fn chain(_: usize) -> (Vec<u8>, Vec<(u64, u32, bool)>) {
        let mut header = vec![0u8; 0x21];
        header[0] = 4; // VIRTIO_BLK_T_FLUSH
        (header, vec![(0, 16, false), (0x20, 1, true)])
    }

    fn drain(&mut self) -> (usize, usize) {
        assert!(self.take_errors().len() <= 64);
        assert!(self.in_flight() <= usize::from(crate::virtio::block::QUEUE_SIZE));
        let bound = usize::from(crate::virtio::block::QUEUE_SIZE);
        (self.take_requests().len(), bound)
    }
}

fn check_with<D: VirtioDevice + Drain>(
    mut d: Driver<D>,
    probe: bool,
    ops: Vec<Op>,
    tally: &mut Tally,
) {
    let mem: GuestMemoryMmap = d.mem.clone();
    let queues = d.dev.device().queues().len();
    if probe {
        let offered = d.device_features();
        d.start(offered, queues as u16, 16);
    }
    let offered = d.dev.device().features();
    // The queue configuration when DRIVER_OK was reached: (size, desc, avail, used).
    let mut frozen: Option<Vec<(u16, u64, u64, u64)>> = None;
    let mut last_status = d.dev.status();
    for op in ops {
        let stats = d.dev.stats();
        match op {
            Op::Read { offset, len } => {
                let mut data = vec![0xa5u8; len];
                d.dev.read(offset, &mut data);
                let well_formed = if offset >= 0x100 {
                    matches!(len, 1 | 2 | 4 | 8)
                        && offset % len as u64 == 0
                        && offset + len as u64 <= WINDOW_SIZE
                } else {
                    len == 4 && offset % 4 == 0
                };
                if !well_formed {
                    assert!(data.iter().all(|&b| b == 0), "malformed read returns zeros");
                    assert_eq!(d.dev.stats().bad_accesses, stats.bad_accesses + 1);
                    tally.hit("bad_access");
                } else if offset < 0x100 {
                    let value = u32::from_le_bytes(data[..4].try_into().unwrap());
                    match offset as u32 {
                        reg::VIRTIO_MMIO_MAGIC_VALUE => assert_eq!(value, MAGIC),
                        reg::VIRTIO_MMIO_VERSION => assert_eq!(value, VERSION),
                        reg::VIRTIO_MMIO_VENDOR_ID => assert_eq!(value, VENDOR_ID),
                        reg::VIRTIO_MMIO_INTERRUPT_STATUS => {
                            assert_eq!(value & !(INT_VRING | INT_CONFIG), 0)
                        }
                        reg::VIRTIO_MMIO_STATUS => assert_eq!(value, d.dev.status()),
                        _ => {}
                    }
                    tally.hit("register_read");
                } else {
                    tally.hit("config_read");
                }
            }
            Op::Post(q) => {
                if let Some(queue) = d.queues.get_mut(q) {
                    let (bytes, layout) = D::chain(q);
                    let base = crate::virtio::testing::BUFFERS_BASE + 0x1000 * q as u64;
                    mem.write_slice(&bytes, vm_memory::GuestAddress(base))
                        .unwrap();
                    let descs: Vec<Desc> = layout
                        .into_iter()
                        .map(|(at, len, write)| Desc {
                            addr: base + at,
                            len,
                            write,
                            next: None,
                        })
                        .collect();
                    queue.add_chain(&mem, &descs);
                    tally.hit("post");
                }
            }
            Op::Corrupt(q) => {
                if let Some(queue) = d.queues.get_mut(q) {
                    queue.set_avail_idx(&mem, 0x8000);
                    tally.hit("corrupt");
                }
            }
            Op::Write { offset, len, value } => {
                let data = &value.to_le_bytes()[..len.min(8)];
                let before = d.dev.status();
                d.dev.write(&mem, offset, data);
                let is_status = offset == u64::from(reg::VIRTIO_MMIO_STATUS) && len == 4;
                if is_status && data == [0; 4] {
                    assert_eq!(d.dev.status(), 0, "a reset clears the status");
                    assert_eq!(d.dev.negotiated_features(), 0);
                    for q in d.dev.device().queues() {
                        assert!(!q.ready());
                    }
                    frozen = None;
                    tally.hit("reset");
                } else if is_status {
                    tally.hit("status_write");
                } else {
                    // Only the status register and a reset take bits away.
                    let kept = before & !NEEDS_RESET;
                    assert_eq!(d.dev.status() & kept, kept, "status bits vanished");
                    tally.hit("write");
                }
            }
        }
        let status = d.dev.status();
        let s = d.dev.stats();
        assert!(s.bad_accesses >= stats.bad_accesses && s.refused_writes >= stats.refused_writes);
        // Bits come only in the driver's order.
        if status & DRIVER != 0 {
            assert_ne!(status & ACKNOWLEDGE, 0);
        }
        if status & FEATURES_OK != 0 {
            assert_ne!(status & DRIVER, 0);
            let acked = d.dev.negotiated_features();
            assert_eq!(acked & !offered, 0, "unoffered features accepted");
            assert!(has_feature(acked, VIRTIO_F_VERSION_1));
        }
        if status & DRIVER_OK != 0 {
            assert_ne!(status & FEATURES_OK, 0);
        }
        // Only a reset clears NEEDS_RESET.
        if last_status & NEEDS_RESET != 0 && status != 0 {
            assert_ne!(status & NEEDS_RESET, 0);
        }
        let live = status & (DRIVER_OK | FAILED | NEEDS_RESET) == DRIVER_OK;
        let config: Vec<(u16, u64, u64, u64)> = d
            .dev
            .device()
            .queues()
            .iter()
            .map(|q| (q.size(), q.desc_table(), q.avail_ring(), q.used_ring()))
            .collect();
        if live {
            assert!(d
                .dev
                .device()
                .queues()
                .iter()
                .all(|q| q.ready() && q.is_valid(&mem)));
            match &frozen {
                Some(f) => assert_eq!(f, &config, "queue configuration changed after DRIVER_OK"),
                None => frozen = Some(config),
            }
            tally.hit("live");
        } else if status & DRIVER_OK == 0 {
            frozen = None;
        }
        let (made, bound) = d.dev.device_mut().drain();
        assert!(made <= bound);
        if made > 0 {
            assert!(
                live || last_status & DRIVER_OK != 0,
                "device ran before DRIVER_OK"
            );
            tally.hit("device_output");
        }
        if status & NEEDS_RESET != 0 {
            tally.hit("needs_reset");
        }
        assert!(d.dev.take_errors().len() <= MAX_KEPT_ERRORS);
        let lines = d.lines.take();
        assert_eq!(lines & !(1 << IRQ), 0);
        assert_eq!(d.dev.interrupt.status() & !(INT_VRING | INT_CONFIG), 0);
        last_status = status;
    }
}

fn check((block, probe, ops): (bool, bool, Vec<Op>), tally: &mut Tally) {
    if block {
        check_with(
            Driver::new(VirtioBlock::new(2048, "fuzz")),
            probe,
            ops,
            tally,
        );
    } else {
        check_with(
            Driver::new(VirtioNet::new(MachineId(0).mac())),
            probe,
            ops,
            tally,
        );
    }
}

#[test]
fn fuzz_mmio_transport() {
    let expected = [
        "bad_access",
        "register_read",
        "config_read",
        "reset",
        "status_write",
        "write",
        "live",
        "needs_reset",
        "device_output",
    ];
    let case = (
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(op(), 1..=40),
    );
    fuzz::run("mmio_transport", 600, case, &expected, check);
}
