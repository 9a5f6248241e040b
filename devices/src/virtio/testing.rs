//! A test driver that plays the guest: Linux's virtio_mmio.c register sequence and the driver
//! side of split virtqueues, over real guest memory.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::mmio::VirtioMmio;
use super::VirtioDevice;
use crate::irq::IrqLines;

pub const MEM_SIZE: usize = 4 << 20;
pub const IRQ: u8 = 5;
/// Where the test driver places queue `q`'s rings.
pub const RINGS_BASE: u64 = 0x10_0000;
/// Bytes of guest memory each queue's rings take (descriptor table, available and used ring).
pub const RINGS_SIZE: usize = 0x8000;
/// Where the test driver allocates buffers.
pub const BUFFERS_BASE: u64 = 0x20_0000;

pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("test memory")
}

/// A copy of test memory that shares nothing with `mem`, for running two devices side by side.
pub fn copy_memory(mem: &GuestMemoryMmap) -> GuestMemoryMmap {
    let mut bytes = vec![0u8; MEM_SIZE];
    mem.read_slice(&mut bytes, GuestAddress(0))
        .expect("test memory");
    let copy = memory();
    copy.write_slice(&bytes, GuestAddress(0))
        .expect("test memory");
    copy
}

/// Whether two test memories hold the same bytes.
pub fn same_memory(a: &GuestMemoryMmap, b: &GuestMemoryMmap) -> bool {
    let read = |mem: &GuestMemoryMmap| {
        let mut bytes = vec![0u8; MEM_SIZE];
        mem.read_slice(&mut bytes, GuestAddress(0))
            .expect("test memory");
        bytes
    };
    read(a) == read(b)
}

/// Driver side of one split virtqueue.
#[derive(Clone)]
pub struct DriverQueue {
    pub size: u16,
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
}

/// One descriptor as the test writes it: buffer address, length, device-writable, and an
/// explicit `next` (None: the following descriptor, or the end for the last one).
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
    pub next: Option<u16>,
}

impl Desc {
    pub fn read(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: false,
            next: None,
        }
    }

    pub fn write(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: true,
            next: None,
        }
    }
}

impl DriverQueue {
    pub fn new(index: u16, size: u16) -> Self {
        let base = RINGS_BASE + u64::from(index) * RINGS_SIZE as u64;
        Self {
            size,
            desc: GuestAddress(base),
            avail: GuestAddress(base + 0x2000),
            used: GuestAddress(base + 0x4000),
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// Writes `descs` as consecutive table entries and makes the chain available; returns the
    /// head index. A `Desc::next` overrides the link (to build loops and bad indices).
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) -> u16 {
        let head = self.next_desc;
        for (i, d) in descs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i + 1 == descs.len();
            let mut flags = 0u16;
            if d.write {
                flags |= VRING_DESC_F_WRITE as u16;
            }
            let next = match d.next {
                Some(n) => {
                    flags |= VRING_DESC_F_NEXT as u16;
                    n
                }
                None if !last => {
                    flags |= VRING_DESC_F_NEXT as u16;
                    (index + 1) % self.size
                }
                None => 0,
            };
            self.set_desc(mem, index, d.addr, d.len, flags, next);
        }
        self.next_desc = (head + descs.len() as u16) % self.size;
        self.publish(mem, head);
        head
    }

    /// Writes descriptor table entry `index` as given, flags and all.
    pub fn set_desc(
        &self,
        mem: &GuestMemoryMmap,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&raw, self.desc.unchecked_add(u64::from(index) * 16))
            .unwrap();
    }

    /// Sets `used_event` (with EVENT_IDX: interrupt me once the used index passes `idx`).
    pub fn set_used_event(&self, mem: &GuestMemoryMmap, idx: u16) {
        let at = 4 + 2 * u64::from(self.size);
        mem.write_obj(idx, self.avail.unchecked_add(at)).unwrap();
    }

    /// `avail_event`: where the device asks to be notified next (EVENT_IDX).
    pub fn avail_event(&self, mem: &GuestMemoryMmap) -> u16 {
        let at = 4 + 8 * u64::from(self.size);
        mem.read_obj(self.used.unchecked_add(at)).unwrap()
    }

    /// Puts `head` in the available ring and bumps the index.
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, self.avail.unchecked_add(4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, self.avail.unchecked_add(2))
            .unwrap();
    }

    /// Sets the available ring's index directly (to model a corrupted ring).
    pub fn set_avail_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        self.avail_idx = idx;
        mem.write_obj(idx, self.avail.unchecked_add(2)).unwrap();
    }

    /// Used elements (head, len) added since the last call.
    pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, u32)> {
        let used_idx: u16 = mem.read_obj(self.used.unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        while self.last_used != used_idx {
            let slot = u64::from(self.last_used % self.size);
            let id: u32 = mem.read_obj(self.used.unchecked_add(4 + 8 * slot)).unwrap();
            let len: u32 = mem.read_obj(self.used.unchecked_add(8 + 8 * slot)).unwrap();
            out.push((id as u16, len));
            self.last_used = self.last_used.wrapping_add(1);
        }
        out
    }
}

trait Unchecked {
    fn unchecked_add(self, n: u64) -> Self;
}

impl Unchecked for GuestAddress {
    fn unchecked_add(self, n: u64) -> Self {
        GuestAddress(self.0 + n)
    }
}

/// The guest's driver for one device.
pub struct Driver<D> {
    pub mem: GuestMemoryMmap,
    pub lines: IrqLines,
    pub dev: VirtioMmio<D>,
    pub queues: Vec<DriverQueue>,
}

impl<D: VirtioDevice> Driver<D> {
    pub fn new(device: D) -> Self {
        let lines = IrqLines::default();
        Self {
            mem: memory(),
            dev: VirtioMmio::new(device, lines.clone(), IRQ),
            lines,
            queues: Vec::new(),
        }
    }

    pub fn read32(&mut self, offset: u32) -> u32 {
        let mut data = [0u8; 4];
        self.dev.read(offset.into(), &mut data);
        u32::from_le_bytes(data)
    }

    pub fn write32(&mut self, offset: u32, value: u32) {
        self.dev
            .write(&self.mem, offset.into(), &value.to_le_bytes());
    }

    pub fn device_features(&mut self) -> u64 {
        self.write32(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let high = self.read32(reg::VIRTIO_MMIO_DEVICE_FEATURES);
        self.write32(reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let low = self.read32(reg::VIRTIO_MMIO_DEVICE_FEATURES);
        u64::from(high) << 32 | u64::from(low)
    }

    /// Reset, ACKNOWLEDGE, DRIVER, feature negotiation and FEATURES_OK, as virtio_dev_probe
    /// does. Returns whether the device accepted the features.
    pub fn negotiate(&mut self, features: u64) -> bool {
        assert_eq!(self.read32(reg::VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(self.read32(reg::VIRTIO_MMIO_VERSION), 2);
        self.write32(reg::VIRTIO_MMIO_STATUS, 0);
        self.write32(reg::VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.write32(
            reg::VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        let offered = self.device_features();
        let accepted = offered & features;
        self.write32(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.write32(reg::VIRTIO_MMIO_DRIVER_FEATURES, (accepted >> 32) as u32);
        self.write32(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.write32(reg::VIRTIO_MMIO_DRIVER_FEATURES, accepted as u32);
        self.write32(
            reg::VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
        );
        self.read32(reg::VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK != 0
    }

    /// Sets up queue `index` with `size` entries as vm_setup_vq does, on freshly zeroed rings.
    pub fn setup_queue(&mut self, index: u16, size: u16) -> DriverQueue {
        let q = DriverQueue::new(index, size);
        self.mem
            .write_slice(&[0u8; RINGS_SIZE], q.desc)
            .expect("rings inside test memory");
        self.write32(reg::VIRTIO_MMIO_QUEUE_SEL, index.into());
        assert_eq!(self.read32(reg::VIRTIO_MMIO_QUEUE_READY), 0);
        assert!(self.read32(reg::VIRTIO_MMIO_QUEUE_NUM_MAX) >= size.into());
        self.write32(reg::VIRTIO_MMIO_QUEUE_NUM, size.into());
        for (low, addr) in [
            (reg::VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc),
            (reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail),
            (reg::VIRTIO_MMIO_QUEUE_USED_LOW, q.used),
        ] {
            self.write32(low, addr.0 as u32);
            self.write32(low + 4, (addr.0 >> 32) as u32);
        }
        self.write32(reg::VIRTIO_MMIO_QUEUE_READY, 1);
        q
    }

    /// The whole probe: negotiate, set up `queues` queues of `size`, DRIVER_OK.
    pub fn start(&mut self, features: u64, queues: u16, size: u16) {
        assert!(self.negotiate(features), "features refused");
        self.queues = (0..queues).map(|i| self.setup_queue(i, size)).collect();
        for i in 0..queues {
            self.write32(reg::VIRTIO_MMIO_QUEUE_SEL, i.into());
            assert_eq!(self.read32(reg::VIRTIO_MMIO_QUEUE_READY), 1, "queue {i}");
        }
        let status = self.read32(reg::VIRTIO_MMIO_STATUS);
        self.write32(reg::VIRTIO_MMIO_STATUS, status | VIRTIO_CONFIG_S_DRIVER_OK);
    }

    /// Device reset, as virtio_reset_device does (the driver then probes again with `start`).
    pub fn reset(&mut self) {
        self.write32(reg::VIRTIO_MMIO_STATUS, 0);
        self.queues.clear();
    }

    pub fn notify(&mut self, queue: u16) {
        self.write32(reg::VIRTIO_MMIO_QUEUE_NOTIFY, queue.into());
    }

    /// The interrupt handler: read and acknowledge InterruptStatus.
    pub fn ack_interrupt(&mut self) -> u32 {
        let status = self.read32(reg::VIRTIO_MMIO_INTERRUPT_STATUS);
        self.write32(reg::VIRTIO_MMIO_INTERRUPT_ACK, status);
        status
    }
}
