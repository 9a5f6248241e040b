//! Saved state shared by the virtio transport and its devices: queues and the device side of a
//! snapshot.
//!
//! The transport ([`super::mmio::VirtioMmio`]) implements [`Snapshot`](crate::snapshot::Snapshot)
//! for any device that implements [`DeviceSnapshot`]: it saves the registers, the interrupt
//! state and the queues, and the device saves what is its own. A device cannot be restored
//! without its transport: its interrupt is the transport's.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{has_feature, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::snapshot::SnapshotError;

/// The device half of a virtio snapshot.
pub trait DeviceSnapshot: VirtioDevice {
    type State: Serialize + DeserializeOwned + Clone + std::fmt::Debug + PartialEq;

    /// The device's own state; its queues are saved by the transport.
    fn save(&self) -> Self::State;

    /// Restores the device's own state and installs `queues` (rebuilt by the transport, as many
    /// as the device has and checked against `mem`). A device saved while running gets
    /// `interrupt`, as activation gives it. Changes nothing on error.
    fn restore(
        &mut self,
        state: &Self::State,
        mem: &GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: &Interrupt,
    ) -> Result<(), SnapshotError>;
}

/// One virtqueue: virtio-queue's `QueueState`, mirrored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueState {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    /// Next available ring entry the device takes.
    pub next_avail: u16,
    /// Next used ring entry the device fills.
    pub next_used: u16,
    pub event_idx_enabled: bool,
}

impl QueueState {
    pub(crate) fn save(queue: &Queue) -> Self {
        let s = queue.state();
        Self {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
        }
    }

    /// Queue `index` as saved, for a device whose fresh queue is `fresh`. A ready queue's rings
    /// must lie in `mem`, as the transport checks when the driver enables it.
    ///
    /// virtio-queue's count of used entries since the last notification check is not saved: the
    /// devices check after every batch, so it is zero between exits.
    pub(crate) fn restore(
        &self,
        index: u16,
        fresh: &Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Queue, SnapshotError> {
        if self.max_size != fresh.max_size() {
            let what = "queue maximum size";
            return Err(SnapshotError::mismatch(
                what,
                self.max_size,
                fresh.max_size(),
            ));
        }
        let state = virtio_queue::QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx_enabled,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        };
        let queue = Queue::try_from(state).map_err(|source| SnapshotError::Queue {
            queue: index,
            source,
        })?;
        if queue.ready() && !queue.is_valid(mem) {
            return Err(SnapshotError::QueueOutsideMemory(index));
        }
        Ok(queue)
    }
}

impl Interrupt {
    /// `InterruptStatus` and the "needs reset" flag, for a snapshot.
    pub(crate) fn saved(&self) -> (u32, bool) {
        (self.state.status.get(), self.state.needs_reset.get())
    }

    /// Sets what [`Interrupt::saved`] returned, raising nothing: the saved machine already did.
    pub(crate) fn restore(&self, status: u32, needs_reset: bool) {
        self.state.status.set(status);
        self.state.needs_reset.set(needs_reset);
    }
}

/// Checks a device's saved feature negotiation against what `offered` (the fresh device's
/// offer): nothing never offered, and a running device speaks VIRTIO 1.
pub(crate) fn check_negotiated(
    offered: u64,
    features: u64,
    running: bool,
) -> Result<(), SnapshotError> {
    let unoffered = features & !offered;
    if unoffered != 0 {
        let why = format!("negotiated features {unoffered:#x} were never offered");
        return Err(SnapshotError::Invalid(why));
    }
    if running && !has_feature(features, VIRTIO_F_VERSION_1) {
        let why = "running without VIRTIO_F_VERSION_1".to_string();
        return Err(SnapshotError::Invalid(why));
    }
    Ok(())
}
