//! Saved state of a virtio-mmio transport and the device behind it.

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET as NEEDS_RESET;
use vm_memory::GuestMemoryMmap;

use super::{queue_number, VirtioMmio};
use crate::snapshot::{Snapshot, SnapshotError};
use crate::virtio::state::{DeviceSnapshot, QueueState};
use crate::virtio::{INT_CONFIG, INT_VRING};

/// Registers, interrupt state and queues of the transport, and the device's own state `S`.
/// Counters and the error list describe a run, not the machine: a restored transport keeps the
/// fresh one's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmioState<S> {
    /// Device status as the driver wrote it (`DEVICE_NEEDS_RESET` is `needs_reset`).
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    /// Queues whose size or ring address the transport refused.
    pub queue_bad: Vec<bool>,
    pub config_generation: u32,
    /// `InterruptStatus`.
    pub interrupt_status: u32,
    pub needs_reset: bool,
    pub queues: Vec<QueueState>,
    pub device: S,
}

impl<D: DeviceSnapshot> Snapshot for VirtioMmio<D> {
    type State = MmioState<D::State>;

    fn save(&self) -> Self::State {
        let (interrupt_status, needs_reset) = self.interrupt.saved();
        MmioState {
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            queue_bad: self.queue_bad.clone(),
            config_generation: self.config_generation,
            interrupt_status,
            needs_reset,
            queues: self.device.queues().iter().map(QueueState::save).collect(),
            device: self.device.save(),
        }
    }

    fn restore(&mut self, state: &Self::State, mem: &GuestMemoryMmap) -> Result<(), SnapshotError> {
        let fresh = self.device.queues();
        for len in [state.queues.len(), state.queue_bad.len()] {
            if len != fresh.len() {
                return Err(SnapshotError::mismatch("queue count", len, fresh.len()));
            }
        }
        let queues = state
            .queues
            .iter()
            .zip(fresh)
            .enumerate()
            .map(|(index, (saved, fresh))| saved.restore(queue_number(index), fresh, mem))
            .collect::<Result<Vec<_>, _>>()?;
        if state.interrupt_status & !(INT_VRING | INT_CONFIG) != 0 {
            let why = format!("interrupt status {:#x}", state.interrupt_status);
            return Err(SnapshotError::Invalid(why));
        }
        if state.status & NEEDS_RESET != 0 {
            let why = "driver-written status with DEVICE_NEEDS_RESET".to_string();
            return Err(SnapshotError::Invalid(why));
        }
        // The device checks its own state last and changes nothing unless all of it fits.
        self.device
            .restore(&state.device, mem, queues, &self.interrupt)?;
        self.interrupt
            .restore(state.interrupt_status, state.needs_reset);
        self.status = state.status;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.queue_sel = state.queue_sel;
        self.queue_bad.clone_from(&state.queue_bad);
        self.config_generation = state.config_generation;
        Ok(())
    }
}
