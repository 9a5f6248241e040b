//! The virtio-mmio transport, version 2 ("modern", virtio 1.x section 4.2.2).
//!
//! Register accesses arrive as MMIO exits with an offset into the device's 4 KiB window. Anything
//! the guest gets wrong (access size, alignment, unknown register, a write out of sequence) is
//! ignored and counted; nothing the guest does can panic or touch memory outside guest RAM.

use thiserror::Error;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FAILED as FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET as NEEDS_RESET,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap};

use super::{halves, has_feature, DeviceError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::bus::{BusAccess, BusDevice};
use crate::irq::IrqLines;

/// `MagicValue`: "virt".
const MAGIC: u32 = 0x7472_6976;
/// Transport version 2 is the virtio 1.x register layout.
const VERSION: u32 = 2;
/// `VendorID`: "SIMV", the same value the simvm port block answers to.
const VENDOR_ID: u32 = 0x5349_4d56;
/// Size of one device window.
pub const WINDOW_SIZE: u64 = 0x1000;

/// Why the transport refused a driver action; kept for the machine's report.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("driver accepted features {acked:#x} outside the offered {offered:#x}")]
    UnofferedFeatures { acked: u64, offered: u64 },
    #[error("driver did not accept VIRTIO_F_VERSION_1")]
    NoVersion1,
    #[error("queue {queue}: {source}")]
    QueueSetup {
        queue: u16,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("queue {0} enabled with rings outside guest memory")]
    QueueOutsideMemory(u16),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// Counters of guest mistakes seen by the transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Accesses with a wrong size or alignment, or to no register.
    pub bad_accesses: u64,
    /// Well-formed writes the protocol does not allow at this point (ignored).
    pub refused_writes: u64,
    /// Times an activation or a queue notification put the device in `DEVICE_NEEDS_RESET`
    /// (failures found while receiving are in the device's own error report).
    pub needs_reset: u64,
}

/// A virtio device behind a virtio-mmio register window.
#[derive(Debug)]
pub struct VirtioMmio<D> {
    device: D,
    interrupt: Interrupt,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    // A queue whose size or ring address the transport refused cannot be enabled.
    queue_bad: Vec<bool>,
    config_generation: u32,
    stats: TransportStats,
    errors: Vec<TransportError>,
}

/// Most errors kept between two [`VirtioMmio::take_errors`] calls; the rest are only counted.
const MAX_KEPT_ERRORS: usize = 64;

impl<D: VirtioDevice> VirtioMmio<D> {
    /// Wraps `device`, interrupting on `irq` of `lines`.
    pub fn new(device: D, lines: IrqLines, irq: u8) -> Self {
        let queues = device.queues().len();
        Self {
            device,
            interrupt: Interrupt::new(lines, irq),
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queue_bad: vec![false; queues],
            config_generation: 0,
            stats: TransportStats::default(),
            errors: Vec::new(),
        }
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device status register as the driver sees it.
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | NEEDS_RESET
        } else {
            self.status
        }
    }

    /// Features both offered and accepted (valid once `FEATURES_OK` is set).
    pub fn negotiated_features(&self) -> u64 {
        self.driver_features
    }

    pub fn stats(&self) -> TransportStats {
        self.stats
    }

    /// Errors since the last call, oldest first.
    pub fn take_errors(&mut self) -> Vec<TransportError> {
        std::mem::take(&mut self.errors)
    }

    /// Tells the driver that the device configuration changed.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt.signal_config();
    }

    /// What an access of `len` bytes at `offset` into the window addresses; `None` (counted as a
    /// bad access) for a size or alignment the transport does not take.
    fn target(&mut self, offset: u64, len: usize) -> Option<Target> {
        let config = u64::from(reg::VIRTIO_MMIO_CONFIG);
        let target = if offset >= config {
            config_access_ok(offset, len).then(|| Target::Config(offset - config))
        } else {
            register_offset(offset, len).map(Target::Register)
        };
        if target.is_none() {
            self.stats.bad_accesses += 1;
        }
        target
    }

    /// Handles a guest read of `data.len()` bytes at `offset` into the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let offset = match self.target(offset, data.len()) {
            Some(Target::Config(offset)) => return self.device.read_config(offset, data),
            Some(Target::Register(offset)) => offset,
            None => return,
        };
        let value = match offset {
            reg::VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            reg::VIRTIO_MMIO_VERSION => VERSION,
            reg::VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            reg::VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            reg::VIRTIO_MMIO_DEVICE_FEATURES => {
                let sel = usize::try_from(self.device_features_sel).unwrap_or(usize::MAX);
                halves(self.device.features())
                    .get(sel)
                    .copied()
                    .unwrap_or(0)
            }
            reg::VIRTIO_MMIO_QUEUE_NUM_MAX => {
                self.selected_queue().map_or(0, |q| q.max_size().into())
            }
            reg::VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            reg::VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            reg::VIRTIO_MMIO_STATUS => self.status(),
            // No shared memory regions: a length of all ones means "absent".
            reg::VIRTIO_MMIO_SHM_LEN_LOW
            | reg::VIRTIO_MMIO_SHM_LEN_HIGH
            | reg::VIRTIO_MMIO_SHM_BASE_LOW
            | reg::VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            reg::VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => {
                self.stats.bad_accesses += 1;
                0
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// Handles a guest write of `data` at `offset` into the window. Queue notifications run the
    /// device here, synchronously.
    pub fn write<M: GuestMemory>(&mut self, mem: &M, offset: u64, data: &[u8]) {
        let offset = match self.target(offset, data.len()) {
            Some(Target::Config(offset)) => return self.device.write_config(offset, data),
            Some(Target::Register(offset)) => offset,
            None => return,
        };
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(data);
        let value = u32::from_le_bytes(bytes);
        match offset {
            reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            reg::VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            reg::VIRTIO_MMIO_QUEUE_NUM
            | reg::VIRTIO_MMIO_QUEUE_DESC_LOW
            | reg::VIRTIO_MMIO_QUEUE_DESC_HIGH
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | reg::VIRTIO_MMIO_QUEUE_USED_LOW
            | reg::VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_config(offset, value),
            reg::VIRTIO_MMIO_QUEUE_READY => self.write_queue_ready(mem, value),
            reg::VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(mem, value),
            reg::VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            reg::VIRTIO_MMIO_STATUS => self.write_status(mem, value),
            reg::VIRTIO_MMIO_SHM_SEL => {}
            _ => self.stats.bad_accesses += 1,
        }
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.device.queues().get(self.queue_sel as usize)
    }

    fn write_driver_features(&mut self, value: u32) {
        // Features are accepted only between DRIVER and FEATURES_OK (spec 3.1.1).
        if self.status & (DRIVER | FEATURES_OK | FAILED) != DRIVER {
            self.stats.refused_writes += 1;
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            _ => self.stats.refused_writes += 1,
        }
    }

    fn write_queue_config(&mut self, offset: u32, value: u32) {
        // Queues are configured after FEATURES_OK and before DRIVER_OK, while disabled.
        let index = self.queue_sel as usize;
        let configurable = self.status & (FEATURES_OK | DRIVER_OK | FAILED) == FEATURES_OK;
        let Some(queue) = self.device.queues_mut().get_mut(index) else {
            self.stats.refused_writes += 1;
            return;
        };
        if !configurable || queue.ready() {
            self.stats.refused_writes += 1;
            return;
        }
        let high = |old: u64| GuestAddress((old & 0xffff_ffff) | (u64::from(value) << 32));
        let low = |old: u64| GuestAddress((old & !0xffff_ffff) | u64::from(value));
        let result = match offset {
            reg::VIRTIO_MMIO_QUEUE_NUM => u16::try_from(value)
                .map_err(|_| virtio_queue::Error::InvalidSize)
                .and_then(|size| queue.try_set_size(size)),
            reg::VIRTIO_MMIO_QUEUE_DESC_LOW => {
                queue.try_set_desc_table_address(low(queue.desc_table()))
            }
            reg::VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                queue.try_set_desc_table_address(high(queue.desc_table()))
            }
            reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                queue.try_set_avail_ring_address(low(queue.avail_ring()))
            }
            reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                queue.try_set_avail_ring_address(high(queue.avail_ring()))
            }
            reg::VIRTIO_MMIO_QUEUE_USED_LOW => {
                queue.try_set_used_ring_address(low(queue.used_ring()))
            }
            reg::VIRTIO_MMIO_QUEUE_USED_HIGH => {
                queue.try_set_used_ring_address(high(queue.used_ring()))
            }
            _ => Ok(()),
        };
        match result {
            Ok(()) => {
                if offset == reg::VIRTIO_MMIO_QUEUE_NUM {
                    self.queue_bad[index] = false;
                }
            }
            Err(source) => {
                self.queue_bad[index] = true;
                self.record(TransportError::QueueSetup {
                    queue: queue_number(index),
                    source,
                });
            }
        }
    }

    fn write_queue_ready(&mut self, mem: &impl GuestMemory, value: u32) {
        let index = self.queue_sel as usize;
        let configurable = self.status & (FEATURES_OK | DRIVER_OK | FAILED) == FEATURES_OK;
        let bad = self.queue_bad.get(index).copied().unwrap_or(true);
        let Some(queue) = self.device.queues_mut().get_mut(index) else {
            self.stats.refused_writes += 1;
            return;
        };
        if !configurable {
            self.stats.refused_writes += 1;
            return;
        }
        if value == 0 {
            queue.set_ready(false);
            return;
        }
        // Check the rings against guest memory now, so that a bad address shows up as a queue
        // that stays disabled (and a failed DRIVER_OK) instead of a fault while running.
        queue.set_ready(true);
        if bad || !queue.is_valid(mem) {
            queue.set_ready(false);
            self.record(TransportError::QueueOutsideMemory(queue_number(index)));
        }
    }

    fn notify(&mut self, mem: &impl GuestMemory, value: u32) {
        let running = self.status & (DRIVER_OK | FAILED) == DRIVER_OK;
        let queue = (value & 0xffff) as u16;
        if !running || self.interrupt.needs_reset() || usize::from(queue) >= self.queue_bad.len() {
            self.stats.refused_writes += 1;
            return;
        }
        if let Err(e) = self.device.queue_notify(mem, queue) {
            self.fail(e.into());
        }
    }

    fn write_status(&mut self, mem: &impl GuestMemory, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // NEEDS_RESET belongs to the device; the driver cannot set or clear it.
        let value = value & !NEEDS_RESET;
        let old = self.status;
        let added = value & !old;
        // The driver only ever adds bits, in order, until it resets (spec 3.1.1).
        let in_order = value & old == old
            && (added & DRIVER == 0 || value & ACKNOWLEDGE != 0)
            && (added & FEATURES_OK == 0 || value & DRIVER != 0)
            && (added & DRIVER_OK == 0 || value & FEATURES_OK != 0);
        if !in_order {
            self.stats.refused_writes += 1;
            return;
        }
        if added & FEATURES_OK != 0 {
            if let Err(e) = self.check_features() {
                // Leaving FEATURES_OK clear is how the device refuses (the driver reads it back).
                self.record(e);
                self.status = value & !(FEATURES_OK | DRIVER_OK);
                return;
            }
        }
        self.status = value;
        if added & DRIVER_OK != 0 && value & FAILED == 0 {
            if let Err(e) = self.activate(mem) {
                self.fail(e);
            }
        }
    }

    fn check_features(&self) -> Result<(), TransportError> {
        let offered = self.device.features();
        let acked = self.driver_features;
        if acked & !offered != 0 {
            return Err(TransportError::UnofferedFeatures { acked, offered });
        }
        if !has_feature(acked, VIRTIO_F_VERSION_1) {
            return Err(TransportError::NoVersion1);
        }
        Ok(())
    }

    fn activate(&mut self, mem: &impl GuestMemory) -> Result<(), TransportError> {
        for (index, queue) in self.device.queues().iter().enumerate() {
            if !queue.ready() || !queue.is_valid(mem) {
                return Err(TransportError::QueueOutsideMemory(queue_number(index)));
            }
        }
        self.device
            .activate(mem, self.driver_features, self.interrupt.clone())?;
        Ok(())
    }

    fn reset(&mut self) {
        self.device.reset();
        for queue in self.device.queues_mut() {
            queue.reset();
        }
        self.queue_bad.fill(false);
        self.interrupt.clear();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
    }

    fn fail(&mut self, error: TransportError) {
        self.record(error);
        self.stats.needs_reset += 1;
        self.interrupt.signal_needs_reset();
    }

    fn record(&mut self, error: TransportError) {
        if self.errors.len() < MAX_KEPT_ERRORS {
            self.errors.push(error);
        }
    }
}

/// Registers are 32 bits wide and naturally aligned; returns the register offset if the access
/// is well formed.
/// Where a valid access lands: the device's configuration space (offset into it) or a transport
/// register.
/// On a machine's MMIO bus, the window's offset is the register offset.
impl<D: VirtioDevice + 'static> BusDevice for VirtioMmio<D> {
    fn read(&mut self, access: BusAccess, data: &mut [u8]) {
        VirtioMmio::read(self, access.offset, data);
    }

    fn write(&mut self, mem: &GuestMemoryMmap, access: BusAccess, data: &[u8]) {
        VirtioMmio::write(self, mem, access.offset, data);
    }
}

enum Target {
    Config(u64),
    Register(u32),
}

/// A queue index for an error report. Indexes come from the device's queue list (two at
/// most), so this never saturates.
fn queue_number(index: usize) -> u16 {
    u16::try_from(index).unwrap_or(u16::MAX)
}

fn register_offset(offset: u64, len: usize) -> Option<u32> {
    (len == 4 && offset & 3 == 0)
        .then(|| u32::try_from(offset).ok())
        .flatten()
}

/// Configuration space takes naturally aligned 1, 2, 4 or 8 byte accesses inside the window.
fn config_access_ok(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4 | 8)
        && offset & (len as u64 - 1) == 0
        && offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= WINDOW_SIZE)
}

#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
mod fuzz;

mod state;
pub use state::MmioState;

#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::net::MachineId;
    use crate::virtio::net::{VirtioNet, QUEUE_SIZE, TX_QUEUE};
    use crate::virtio::testing::{Desc, Driver, BUFFERS_BASE, IRQ, MEM_SIZE};

    fn driver() -> Driver<VirtioNet> {
        Driver::new(VirtioNet::new(MachineId(0).mac()))
    }

    #[test]
    fn linux_probe_sequence_reaches_driver_ok() {
        let mut d = driver();
        assert_eq!(d.read32(reg::VIRTIO_MMIO_DEVICE_ID), 1);
        assert_eq!(d.read32(reg::VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
        let offered = d.device_features();
        assert!(has_feature(offered, VIRTIO_F_VERSION_1));
        d.start(offered, 2, QUEUE_SIZE);
        assert_eq!(
            d.read32(reg::VIRTIO_MMIO_STATUS),
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
        );
        assert_eq!(d.dev.negotiated_features(), offered);
        assert!(d.dev.take_errors().is_empty());
        assert_eq!(d.dev.stats(), TransportStats::default());
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let mut d = driver();
        let offered = d.device_features();
        assert!(!d.negotiate(offered & !(1 << VIRTIO_F_VERSION_1)));
        assert!(matches!(
            d.dev.take_errors()[..],
            [TransportError::NoVersion1]
        ));
        // DRIVER_OK without FEATURES_OK is out of order and ignored.
        d.write32(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
        assert_eq!(d.read32(reg::VIRTIO_MMIO_STATUS), ACKNOWLEDGE | DRIVER);
    }

    #[test]
    fn unoffered_features_are_refused() {
        let mut d = driver();
        assert!(d.negotiate(1 << VIRTIO_F_VERSION_1));
        d.write32(reg::VIRTIO_MMIO_STATUS, 0);
        d.write32(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
        d.write32(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
        d.write32(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        d.write32(reg::VIRTIO_MMIO_DRIVER_FEATURES, 1 | 1 << 30);
        d.write32(reg::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(d.read32(reg::VIRTIO_MMIO_STATUS) & FEATURES_OK, 0);
        assert!(matches!(
            d.dev.take_errors()[..],
            [TransportError::UnofferedFeatures { .. }]
        ));
    }

    #[test]
    fn wrong_size_or_alignment_is_ignored_and_counted() {
        let mut d = driver();
        let mut two = [0xaau8; 2];
        d.dev
            .read(u64::from(reg::VIRTIO_MMIO_MAGIC_VALUE), &mut two);
        assert_eq!(two, [0, 0]);
        let mut four = [0xaau8; 4];
        d.dev.read(1, &mut four);
        assert_eq!(four, [0; 4]);
        d.dev.read(0xf0, &mut four); // no register there
        let mut eight = [0u8; 8];
        d.dev.read(u64::from(reg::VIRTIO_MMIO_STATUS), &mut eight);
        d.dev
            .write(&d.mem, u64::from(reg::VIRTIO_MMIO_STATUS), &[1]);
        d.dev.write(&d.mem, 0x71, &[1, 0, 0, 0]);
        // Config space: misaligned, oversized and past the window.
        d.dev.read(0x101, &mut four);
        d.dev.read(0x100, &mut [0u8; 3]);
        d.dev.read(0xffe, &mut four);
        d.dev.read(u64::MAX - 1, &mut two);
        d.dev.write(&d.mem, u64::MAX - 3, &[0; 4]);
        d.dev.read(0x100, &mut []);
        assert_eq!(d.dev.stats().bad_accesses, 12);
        assert_eq!(d.read32(reg::VIRTIO_MMIO_STATUS), 0);
    }

    #[test]
    fn config_space_holds_the_mac_and_link_up() {
        let mut d = driver();
        let mut mac = [0u8; 6];
        for (i, byte) in mac.iter_mut().enumerate() {
            let mut b = [0u8];
            d.dev.read(0x100 + i as u64, &mut b);
            *byte = b[0];
        }
        assert_eq!(mac, MachineId(0).mac().0);
        let mut status = [0u8; 2];
        d.dev.read(0x106, &mut status);
        assert_eq!(u16::from_le_bytes(status), 1);
        let generation = d.read32(reg::VIRTIO_MMIO_CONFIG_GENERATION);
        d.dev.config_changed();
        assert_eq!(d.read32(reg::VIRTIO_MMIO_CONFIG_GENERATION), generation + 1);
        assert_eq!(d.ack_interrupt(), crate::virtio::INT_CONFIG);
        assert_eq!(d.read32(reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert_eq!(d.lines.take(), 1 << IRQ);
    }

    #[test]
    fn bad_queue_setup_leaves_the_queue_disabled_and_driver_ok_fails() {
        for bad in ["size", "desc-align", "outside-memory", "high-half"] {
            let mut d = driver();
            let features = d.device_features();
            assert!(d.negotiate(features));
            d.setup_queue(0, QUEUE_SIZE);
            d.write32(reg::VIRTIO_MMIO_QUEUE_SEL, 1);
            d.write32(reg::VIRTIO_MMIO_QUEUE_NUM, u32::from(QUEUE_SIZE));
            d.write32(reg::VIRTIO_MMIO_QUEUE_DESC_LOW, 0x18_0000);
            d.write32(reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x18_2000);
            d.write32(reg::VIRTIO_MMIO_QUEUE_USED_LOW, 0x18_4000);
            match bad {
                "size" => d.write32(reg::VIRTIO_MMIO_QUEUE_NUM, 100),
                "desc-align" => d.write32(reg::VIRTIO_MMIO_QUEUE_DESC_LOW, 0x18_0008),
                "outside-memory" => {
                    d.write32(reg::VIRTIO_MMIO_QUEUE_USED_LOW, MEM_SIZE as u32 - 0x100)
                }
                _ => d.write32(reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 1),
            }
            d.write32(reg::VIRTIO_MMIO_QUEUE_READY, 1);
            assert_eq!(d.read32(reg::VIRTIO_MMIO_QUEUE_READY), 0, "{bad}");
            let status = d.read32(reg::VIRTIO_MMIO_STATUS);
            d.write32(reg::VIRTIO_MMIO_STATUS, status | DRIVER_OK);
            assert_ne!(d.read32(reg::VIRTIO_MMIO_STATUS) & NEEDS_RESET, 0, "{bad}");
            assert_eq!(d.ack_interrupt(), crate::virtio::INT_CONFIG);
            assert!(!d.dev.take_errors().is_empty());
            // A reset recovers the device.
            d.start(features, 2, QUEUE_SIZE);
            assert_eq!(d.read32(reg::VIRTIO_MMIO_STATUS) & NEEDS_RESET, 0);
        }
    }

    #[test]
    fn queue_registers_are_frozen_after_driver_ok() {
        let mut d = driver();
        let features = d.device_features();
        d.start(features, 2, QUEUE_SIZE);
        d.write32(reg::VIRTIO_MMIO_QUEUE_SEL, 0);
        d.write32(reg::VIRTIO_MMIO_QUEUE_NUM, 16);
        d.write32(reg::VIRTIO_MMIO_QUEUE_DESC_LOW, 0);
        d.write32(reg::VIRTIO_MMIO_QUEUE_READY, 0);
        d.write32(reg::VIRTIO_MMIO_DRIVER_FEATURES, 0);
        d.write32(reg::VIRTIO_MMIO_QUEUE_SEL, 7);
        d.write32(reg::VIRTIO_MMIO_QUEUE_NUM, 16);
        assert_eq!(d.read32(reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
        d.notify(9);
        assert_eq!(d.dev.stats().refused_writes, 6);
        assert_eq!(d.dev.device().queues()[0].size(), QUEUE_SIZE);
        assert_eq!(d.dev.negotiated_features(), features);
    }

    #[test]
    fn reset_returns_to_the_initial_state() {
        let mut d = driver();
        let features = d.device_features();
        d.start(features, 2, QUEUE_SIZE);
        d.dev.config_changed();
        d.write32(reg::VIRTIO_MMIO_STATUS, 0);
        assert_eq!(d.read32(reg::VIRTIO_MMIO_STATUS), 0);
        assert_eq!(d.read32(reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        for q in 0..2 {
            d.write32(reg::VIRTIO_MMIO_QUEUE_SEL, q);
            assert_eq!(d.read32(reg::VIRTIO_MMIO_QUEUE_READY), 0);
        }
        assert_eq!(d.dev.negotiated_features(), 0);
        // Notifications before DRIVER_OK do nothing.
        d.notify(TX_QUEUE);
        assert_eq!(d.dev.stats().refused_writes, 1);
    }

    #[test]
    fn a_corrupt_avail_index_makes_the_device_need_a_reset() {
        let mut d = driver();
        let features = d.device_features();
        d.start(features, 2, QUEUE_SIZE);
        d.lines.take();
        // More chains "available" than the queue holds.
        let mem = d.mem.clone();
        d.queues[1].set_avail_idx(&mem, QUEUE_SIZE + 5);
        d.notify(TX_QUEUE);
        assert_ne!(d.read32(reg::VIRTIO_MMIO_STATUS) & NEEDS_RESET, 0);
        assert_eq!(d.dev.stats().needs_reset, 1);
        assert_eq!(d.lines.take(), 1 << IRQ);
        assert!(matches!(
            d.dev.take_errors()[..],
            [TransportError::Device(DeviceError::Queue { queue: 1, .. })]
        ));
        // Further notifications are refused until reset.
        let head = d.queues[1].add_chain(&mem, &[Desc::read(BUFFERS_BASE, 64)]);
        d.notify(TX_QUEUE);
        assert!(d.queues[1].take_used(&mem).iter().all(|&(h, _)| h != head));
        d.start(features, 2, QUEUE_SIZE);
        assert_eq!(d.read32(reg::VIRTIO_MMIO_STATUS) & NEEDS_RESET, 0);
    }
}
