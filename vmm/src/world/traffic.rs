//! Frames and disk requests between the machines and what the world owns: the switch, with
//! its timeline, and each machine's disks.

use simvm_devices::virtio::block::BlockOp;

use crate::console::format_line;
use crate::error::Result;
use crate::network::NetEvent;
use crate::trace::{Event, Note, Stable};

use super::*;

impl World {
    /// Applies network timeline actions due by `now`.
    pub(super) fn apply_network_timeline(
        &mut self,
        now: u64,
        print: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let Some(network) = &mut self.network else {
            return Ok(());
        };
        let net_id = self.nodes.len();
        for event in network.apply_timeline(now)? {
            if let NetEvent::Applied(action) = event {
                print(&format_line(self.step, NET_SOURCE, now, &action.text));
                self.trace
                    .record(self.step, net_id, now, &Event::Network { action })?;
            }
        }
        Ok(())
    }

    /// Hands `index` the frames that have arrived for it by its current time.
    pub(super) fn deliver_frames(&mut self, index: usize) -> Result<()> {
        let (Some(network), Some(machine)) =
            (&mut self.network, self.nodes[index].machine.as_mut())
        else {
            return Ok(());
        };
        for delivery in network.take_due(index, machine.now()) {
            let result = machine.deliver_frame(self.step, &delivery.frame, &mut self.trace)?;
            let accepted = result.is_ok();
            network.delivered(&delivery, result)?;
            let event = Event::FrameDelivered {
                from: delivery.from.0,
                len: u32::try_from(delivery.frame.data.len()).unwrap_or(u32::MAX),
                fingerprint: crate::network::fingerprint(&delivery.frame.data),
                accepted,
            };
            self.trace.record(self.step, index, machine.now(), &event)?;
        }
        Ok(())
    }

    /// Switches the frames `index` sent during its last step.
    pub(super) fn send_frames(&mut self, index: usize) -> Result<()> {
        let node = &mut self.nodes[index];
        let Some(machine) = node.machine.as_mut() else {
            return Ok(());
        };
        let Some(network) = &mut self.network else {
            // A NIC with no network attached: its frames go nowhere, as on an unplugged cable,
            // instead of piling up.
            node.frames_unplugged += machine.take_outbox().len() as u64;
            return Ok(());
        };
        let now = machine.now();
        for frame in machine.take_outbox() {
            for event in network.send(index, frame, now)? {
                let event = match event {
                    NetEvent::Sent {
                        len, fingerprint, ..
                    } => Event::FrameSent {
                        len: u32::try_from(len).unwrap_or(u32::MAX),
                        fingerprint,
                    },
                    NetEvent::Dropped { to, reason, .. } => Event::FrameDropped {
                        to: u16::try_from(to).unwrap_or(u16::MAX),
                        reason: Note::new(
                            reason.to_string(),
                            Stable::new(1).u64(drop_code(reason)),
                        ),
                    },
                    NetEvent::Applied(action) => Event::Network { action },
                };
                self.trace.record(self.step, index, now, &event)?;
            }
        }
        Ok(())
    }

    /// Hands the disks the requests `index` made during its last step.
    pub(super) fn submit_disk_requests(&mut self, index: usize) -> Result<()> {
        let node = &mut self.nodes[index];
        let incarnation = node.config.incarnation;
        let Some(machine) = node.machine.as_mut() else {
            return Ok(());
        };
        let now = machine.now();
        for (d, request) in machine.take_block_requests() {
            let Some(disk) = node.disks.get_mut(d) else {
                continue;
            };
            let write = matches!(request.op, BlockOp::Write { .. });
            let event = disk.submit(now, incarnation, request);
            self.trace.record(self.step, index, now, &event)?;
            if write && !machine.disk_write_cache(d) {
                disk.write_through(now);
            }
        }
        Ok(())
    }

    /// Completes into `index` the disk requests done by its current time.
    pub(super) fn complete_disk_requests(&mut self, index: usize) -> Result<()> {
        let node = &mut self.nodes[index];
        let incarnation = node.config.incarnation;
        let Some(machine) = node.machine.as_mut() else {
            return Ok(());
        };
        let now = machine.now();
        for (d, disk) in node.disks.iter_mut().enumerate() {
            for delivery in disk.complete_due(now, incarnation) {
                machine.complete_block(d, delivery.token, delivery.result);
                self.trace.record(self.step, index, now, &delivery.event)?;
            }
        }
        Ok(())
    }
}

/// The digest's code of a switch drop reason.
fn drop_code(reason: simvm_devices::net::switch::DropReason) -> u64 {
    use simvm_devices::net::switch::DropReason;
    match reason {
        DropReason::Loss => 1,
        DropReason::Partition => 2,
        DropReason::LinkDown => 3,
        DropReason::QueueFull => 4,
        DropReason::NotRunning => 5,
        DropReason::TooBig => 6,
    }
}
