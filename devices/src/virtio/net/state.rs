//! Saved state of virtio-net. The MAC is the machine's identity and stays the fresh device's.

use serde::{Deserialize, Serialize};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::{Offloads, VirtioNet, MAX_FRAME_LEN};
use crate::net::Frame;
use crate::snapshot::SnapshotError;
use crate::virtio::state::check_negotiated;
use crate::virtio::state::DeviceSnapshot;
use crate::virtio::{Interrupt, VirtioDevice};

/// What virtio-net holds beyond its queues. Counters and the error list start fresh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetState {
    /// Fixed at construction: must match the restoring device's.
    pub offloads: Offloads,
    /// Features the driver negotiated (0 until it activates the device).
    pub features: u64,
    /// The driver has the device running: activated and not reset since.
    pub running: bool,
    /// Transmitted frames the machine has not taken yet ([`VirtioNet::has_pending_tx`]).
    pub tx_frames: Vec<Frame>,
}

impl DeviceSnapshot for VirtioNet {
    type State = NetState;

    fn save(&self) -> NetState {
        NetState {
            offloads: self.offloads,
            features: self.features,
            running: self.interrupt.is_some(),
            tx_frames: self.tx_out.clone(),
        }
    }

    fn restore(
        &mut self,
        state: &NetState,
        _mem: &GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: &Interrupt,
    ) -> Result<(), SnapshotError> {
        if state.offloads != self.offloads {
            let (saved, built) = (
                format!("{:?}", state.offloads),
                format!("{:?}", self.offloads),
            );
            return Err(SnapshotError::mismatch("offloads", saved, built));
        }
        check_negotiated(self.features(), state.features, state.running)?;
        if let Some(frame) = state
            .tx_frames
            .iter()
            .find(|f| f.data.len() > MAX_FRAME_LEN)
        {
            let why = format!("pending frame of {} bytes", frame.data.len());
            return Err(SnapshotError::Invalid(why));
        }
        for (slot, queue) in self.queues.iter_mut().zip(queues) {
            *slot = queue;
        }
        self.features = state.features;
        self.interrupt = state.running.then(|| interrupt.clone());
        self.tx_out.clone_from(&state.tx_frames);
        Ok(())
    }
}

#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::net::MachineId;
    use crate::snapshot::Snapshot;
    use crate::virtio::mmio::{MmioState, VirtioMmio};
    use crate::virtio::net::{QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
    use crate::virtio::testing::{copy_memory, same_memory, Desc, Driver, BUFFERS_BASE};
    use crate::virtio::{INT_CONFIG, INT_VRING};
    use virtio_bindings::virtio_mmio as reg;
    use vm_memory::{Bytes, GuestAddress};

    const RX_BUF: u64 = BUFFERS_BASE + 0x10_0000;

    fn frame(len: usize, fill: u8) -> Frame {
        let mut data = vec![fill; len];
        data[..6].copy_from_slice(&MachineId(0).mac().0);
        data[6..12].copy_from_slice(&MachineId(1).mac().0);
        Frame::new(data)
    }

    fn post_rx(d: &mut Driver<VirtioNet>, slot: u64) {
        let mem = d.mem.clone();
        d.queues[0].add_chain(&mem, &[Desc::write(RX_BUF + slot * 0x1000, 1526)]);
    }

    fn transmit(d: &mut Driver<VirtioNet>, slot: u64, frame: &Frame) {
        let base = BUFFERS_BASE + slot * 0x1_0000;
        d.mem.write_slice(&[0; 12], GuestAddress(base)).unwrap();
        d.mem
            .write_slice(&frame.data, GuestAddress(base + 0x100))
            .unwrap();
        let mem = d.mem.clone();
        let descs = [
            Desc::read(base, 12),
            Desc::read(base + 0x100, frame.data.len() as u32),
        ];
        d.queues[1].add_chain(&mem, &descs);
        d.notify(TX_QUEUE);
    }

    /// Running, three receive buffers posted and one filled, a transmitted frame not taken yet,
    /// an interrupt not acknowledged; the raised edges drained, as the VMM does before saving.
    fn busy_nic() -> Driver<VirtioNet> {
        let mut d = Driver::new(VirtioNet::new(MachineId(0).mac()));
        let features = d.device_features();
        d.start(features, 2, QUEUE_SIZE);
        for slot in 0..3 {
            post_rx(&mut d, slot);
        }
        let mem = d.mem.clone();
        d.dev.device_mut().deliver(&mem, &frame(100, 1)).unwrap();
        transmit(&mut d, 0, &frame(60, 2));
        d.dev.config_changed();
        d.lines.take();
        d
    }

    /// A driver over a fresh device (with another MAC) and a copy of `original`'s memory, its
    /// driver-side queues where `original`'s are.
    fn restored(original: &Driver<VirtioNet>, state: &MmioState<NetState>) -> Driver<VirtioNet> {
        let mut d = Driver::new(VirtioNet::new(MachineId(7).mac()));
        d.mem = copy_memory(&original.mem);
        d.queues = original.queues.clone();
        d.dev.restore(state, &d.mem).unwrap();
        d
    }

    /// What the guest sees after the same next events: a frame arrives, the guest transmits,
    /// handles the interrupt and reads its queues back.
    fn next_steps(d: &mut Driver<VirtioNet>) -> impl PartialEq + std::fmt::Debug {
        let mem = d.mem.clone();
        let delivered = d.dev.device_mut().deliver(&mem, &frame(1514, 3));
        let pending = d.dev.device_mut().take_tx_frames();
        transmit(d, 1, &frame(80, 4));
        let sent = d.dev.device_mut().take_tx_frames();
        let status = d.read32(reg::VIRTIO_MMIO_STATUS);
        let interrupt = d.ack_interrupt();
        let used: Vec<_> = d.queues.iter_mut().map(|q| q.take_used(&mem)).collect();
        (
            delivered,
            pending,
            sent,
            status,
            interrupt,
            d.lines.take(),
            used,
        )
    }

    #[test]
    fn net_state_round_trips_and_the_restored_nic_behaves_the_same() {
        let mut original = busy_nic();
        let json = serde_json::to_string(&original.dev.save()).unwrap();
        let saved: MmioState<NetState> = serde_json::from_str(&json).unwrap();
        assert!(saved.device.running);
        assert_eq!(saved.device.tx_frames, [frame(60, 2)]);
        assert_eq!(saved.queues[usize::from(RX_QUEUE)].next_avail, 1);
        assert_eq!(saved.interrupt_status, INT_VRING | INT_CONFIG);
        assert_eq!(saved.config_generation, 1);

        let mut copy = restored(&original, &saved);
        assert_eq!(copy.dev.save(), saved);
        assert_eq!(
            copy.dev.device().mac(),
            MachineId(7).mac(),
            "identity stays"
        );
        assert!(copy.dev.device().has_pending_tx());
        assert_eq!(copy.lines.take(), 0, "restoring raises nothing");

        let a = next_steps(&mut original);
        let b = next_steps(&mut copy);
        assert_eq!(a, b);
        assert!(same_memory(&original.mem, &copy.mem));
        assert_eq!(copy.dev.save(), original.dev.save());
        assert!(!copy.dev.device().has_pending_tx());
    }

    #[test]
    fn other_offloads_are_refused_and_change_nothing() {
        let original = busy_nic();
        let saved = original.dev.save();
        let offloads = Offloads {
            segmentation: false,
            ..Offloads::default()
        };
        let mut d = Driver::new(VirtioNet::with_offloads(MachineId(0).mac(), offloads));
        let before = d.dev.save();
        let err = d.dev.restore(&saved, &original.mem).unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotError::Mismatch {
                    what: "offloads",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(d.dev.save(), before);
        assert!(d
            .dev
            .device_mut()
            .deliver(&original.mem, &frame(60, 1))
            .is_err());
    }

    #[test]
    fn a_transport_without_its_device_queues_is_refused() {
        let original = busy_nic();
        let mut saved = original.dev.save();
        saved.queues.pop();
        let mut fresh = VirtioMmio::new(
            VirtioNet::new(MachineId(0).mac()),
            original.lines.clone(),
            5,
        );
        assert!(matches!(
            fresh.restore(&saved, &original.mem),
            Err(SnapshotError::Mismatch {
                what: "queue count",
                ..
            })
        ));
    }
}
