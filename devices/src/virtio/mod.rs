//! Virtio devices over the virtio-mmio transport.
//!
//! The transport ([`mmio::VirtioMmio`]) speaks the register protocol and owns the device status;
//! a device ([`VirtioDevice`]) owns its queues and does the work when the guest notifies a queue.
//! Both are plain state machines: a queue notification is the MMIO write exit itself, and an
//! interrupt is an edge recorded in [`IrqLines`] that the machine drains after the exit. Work
//! that finishes later (a received frame, a disk request the world completes) reaches the guest
//! through the device's own methods, outside an MMIO exit.

pub mod block;
pub mod chain;
pub mod mmio;
pub mod net;
pub mod state;
#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
pub(crate) mod testing;

use std::cell::Cell;
use std::rc::Rc;

use thiserror::Error;
use virtio_queue::Queue;
use vm_memory::GuestMemory;

use crate::irq::IrqLines;

pub use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
pub use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// `InterruptStatus` bit: the device used a buffer.
pub const INT_VRING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// `InterruptStatus` bit: the configuration (or the device status) changed.
pub const INT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// A device error that leaves the device unusable until the driver resets it (the transport
/// reports it as `DEVICE_NEEDS_RESET`). Per-request problems are not `DeviceError`s: the device
/// counts them and completes the request.
#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("queue {queue}: {source}")]
    Queue {
        queue: u16,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("queue {0} is not ready or lies outside guest memory")]
    QueueInvalid(u16),
    #[error("the driver did not accept VIRTIO_F_VERSION_1")]
    LegacyDriver,
}

/// The transport-side interrupt of one device: the `InterruptStatus` register, the device's
/// "needs reset" flag and its interrupt line. The transport and the device each hold a clone,
/// so a device can interrupt the guest from outside an MMIO exit (a received frame).
#[derive(Clone, Debug)]
pub struct Interrupt {
    state: Rc<InterruptState>,
    lines: IrqLines,
    irq: u8,
}

#[derive(Debug, Default)]
struct InterruptState {
    status: Cell<u32>,
    needs_reset: Cell<bool>,
}

impl Interrupt {
    pub fn new(lines: IrqLines, irq: u8) -> Self {
        Self {
            state: Rc::default(),
            lines,
            irq,
        }
    }

    /// The device placed buffers in a used ring.
    pub fn signal_used(&self) {
        self.signal(INT_VRING);
    }

    /// The configuration space changed.
    pub fn signal_config(&self) {
        self.signal(INT_CONFIG);
    }

    /// The device hit an error it cannot recover from without a reset (spec 2.1.2): it stops
    /// processing queues, and the driver learns through a configuration-change interrupt.
    pub fn signal_needs_reset(&self) {
        self.state.needs_reset.set(true);
        self.signal(INT_CONFIG);
    }

    pub fn needs_reset(&self) -> bool {
        self.state.needs_reset.get()
    }

    /// Value of the `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        self.state.status.get()
    }

    /// `InterruptACK`: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.state.status.set(self.state.status.get() & !bits);
    }

    /// Device reset: forget pending interrupts and the error state.
    pub fn clear(&self) {
        self.state.status.set(0);
        self.state.needs_reset.set(false);
    }

    // Every signal is a fresh edge: the PIC is edge-triggered, and a driver that already read the
    // status register would otherwise miss work added after its read.
    fn signal(&self, bit: u32) {
        self.state.status.set(self.state.status.get() | bit);
        self.lines.raise(self.irq);
    }
}

/// A virtio device behind the transport.
pub trait VirtioDevice {
    /// Virtio device ID (1 = network, 2 = block).
    fn device_type(&self) -> u32;

    /// Feature bits offered to the driver. Must include `VIRTIO_F_VERSION_1`.
    fn features(&self) -> u64;

    /// The device's queues, in queue-index order. The transport configures them from the
    /// driver's register writes.
    fn queues(&self) -> &[Queue];
    fn queues_mut(&mut self) -> &mut [Queue];

    /// Reads device configuration space at `offset`; bytes outside it read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes device configuration space; the default ignores writes (read-only config).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    /// The driver set `DRIVER_OK`: start operating with the negotiated `features`. The queues
    /// are configured and were checked against guest memory.
    fn activate<M: GuestMemory>(
        &mut self,
        mem: &M,
        features: u64,
        interrupt: Interrupt,
    ) -> Result<(), DeviceError>;

    /// The driver notified queue `queue` (already checked to exist).
    fn queue_notify<M: GuestMemory>(&mut self, mem: &M, queue: u16) -> Result<(), DeviceError>;

    /// Device reset: drop all state that the driver set up. The transport resets the queues.
    fn reset(&mut self);
}

/// Returns whether `bit` is set in `features`.
pub(crate) fn has_feature(features: u64, bit: u32) -> bool {
    bit < 64 && features & (1u64 << bit) != 0
}

/// A one-byte constant that virtio-bindings declares as `u32`; a larger one fails to compile.
pub(crate) const fn byte(value: u32) -> u8 {
    let [low, 0, 0, 0] = value.to_le_bytes() else {
        panic!("not a one-byte constant");
    };
    low
}

/// A two-byte constant that virtio-bindings declares as `u32`; a larger one fails to compile.
pub(crate) const fn word(value: u32) -> u16 {
    let [low, high, 0, 0] = value.to_le_bytes() else {
        panic!("not a two-byte constant");
    };
    u16::from_le_bytes([low, high])
}

/// The low and high halves of a 64-bit value, for the transport's 32-bit registers.
pub(crate) fn halves(value: u64) -> [u32; 2] {
    let [a, b, c, d, e, f, g, h] = value.to_le_bytes();
    [
        u32::from_le_bytes([a, b, c, d]),
        u32::from_le_bytes([e, f, g, h]),
    ]
}

/// A used-ring length for `bytes` written into one chain. A chain holds at most `u32::MAX`
/// bytes (the walk checks), so this never saturates; saturating beats a wrapped length.
pub(crate) fn used_len(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}
