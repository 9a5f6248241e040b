//! virtio-net: one receive and one transmit queue, a fixed MAC, the link always up.
//!
//! Transmit runs synchronously on the guest's queue notification and leaves the frames in an
//! outbox the machine drains ([`VirtioNet::take_tx_frames`]). Receive happens when the world
//! delivers a frame ([`VirtioNet::deliver`]); without a posted buffer the frame is dropped, as a
//! real NIC would.
//!
//! Checksum offload: the device offers `CSUM` and `GUEST_CSUM`. A frame the guest marks
//! `NEEDS_CSUM` is completed here, on the host, before it leaves the machine, so every frame on
//! the switch and in the capture carries a correct checksum and no peer needs to understand
//! partial checksums. Such frames are flagged [`Frame::csum_verified`], and a receiving device
//! whose driver accepted `GUEST_CSUM` marks them `DATA_VALID`, so neither guest kernel touches the
//! payload for checksums. Frames the guest checksummed itself are delivered without the flag and
//! are verified by the receiving guest as usual.
//!
//! Segmentation offload: with checksum offload the device also offers `HOST_TSO4`. A guest then
//! hands over TCP frames of up to 64 KiB, which the device cuts into MSS-sized segments
//! ([`crate::net::tso`]) before they leave the machine: the guest kernel's per-packet work is
//! done once per 64 KiB, and the network still carries ordinary segments.

use thiserror::Error;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemory};

use super::chain::{self, ChainError, Direction};
use super::{
    byte, has_feature, used_len, word, DeviceError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::net::checksum::{complete_partial, PartialChecksumError};
use crate::net::tso::{segment_tcp4, TsoError};
/// Why a frame could not be delivered to the guest (defined with the network, which counts
/// each reason apart).
pub use crate::net::RxDrop;
use crate::net::{Frame, MacAddr, ETH_HEADER_LEN};

pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
/// Entries per queue offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1`: with `VERSION_1` the header always includes `num_buffers`.
pub const NET_HDR_LEN: usize = 12;
/// Largest transmit chain accepted: a 64 KiB frame (Linux's largest MTU) plus the header.
pub const MAX_TX_CHAIN: u32 = 65_536 + 14 + 12;
const _: () = assert!(MAX_TX_CHAIN as usize == 65_536 + ETH_HEADER_LEN + NET_HDR_LEN);
/// Largest frame the device transmits or its guest can have sent: a transmit chain without the
/// header.
pub const MAX_FRAME_LEN: usize = MAX_TX_CHAIN as usize - NET_HDR_LEN;
/// Errors kept between two [`VirtioNet::take_errors`] calls; the rest are only counted.
const MAX_KEPT_ERRORS: usize = 64;

/// What is wrong with a frame the guest transmitted.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum TxError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("chain of {0} bytes is shorter than the virtio-net header")]
    HeaderTooShort(usize),
    #[error("frame of {0} bytes is shorter than an Ethernet header")]
    FrameTooShort(usize),
    #[error("segmentation offload (gso_type {0}) was not negotiated")]
    UnsupportedGso(u8),
    #[error(transparent)]
    Checksum(#[from] PartialChecksumError),
    #[error(transparent)]
    Segmentation(#[from] TsoError),
}

/// A malformed chain, reported for the machine; the chain was returned to the guest unused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum NetError {
    #[error("virtio-net tx chain at descriptor {head}: {source}")]
    Tx { head: u16, source: TxError },
    #[error("virtio-net rx chain at descriptor {head}: {source}")]
    Rx { head: u16, source: ChainError },
    /// The receive ring itself is broken; the device needs a reset. (Transmit ring failures
    /// surface through the transport, which owns the notification.)
    #[error("virtio-net rx ring: {reason}")]
    RxRing { reason: String },
}

/// Device counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames whose checksum the device completed.
    pub tx_csum_completed: u64,
    /// Large TCP frames the device cut into segments (each segment counts in `tx_frames`).
    pub tx_segmented: u64,
    pub tx_malformed: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub rx_malformed: u64,
    pub rx_dropped_no_buffers: u64,
    pub rx_dropped_too_big: u64,
    pub rx_dropped_not_running: u64,
}

/// The virtio-net device model.
#[derive(Debug)]
pub struct VirtioNet {
    mac: MacAddr,
    queues: [Queue; 2],
    features: u64,
    // Present while the driver has the device running.
    interrupt: Option<Interrupt>,
    tx_out: Vec<Frame>,
    stats: NetStats,
    errors: Vec<NetError>,
    offloads: Offloads,
}

/// Which offloads the device offers. All on by default; off only to measure what they save.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offloads {
    /// `CSUM` and `GUEST_CSUM`.
    pub checksum: bool,
    /// `HOST_TSO4`; offered only together with checksum offload, which it needs.
    pub segmentation: bool,
}

impl Default for Offloads {
    fn default() -> Self {
        Self {
            checksum: true,
            segmentation: true,
        }
    }
}

impl VirtioNet {
    pub fn new(mac: MacAddr) -> Self {
        Self::with_offloads(mac, Offloads::default())
    }

    /// A device that offers only the given offloads (for measuring what they save).
    pub fn with_offloads(mac: MacAddr, offloads: Offloads) -> Self {
        Self {
            offloads,
            mac,
            queues: [new_queue(), new_queue()],
            features: 0,
            interrupt: None,
            tx_out: Vec::new(),
            stats: NetStats::default(),
            errors: Vec::new(),
        }
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Malformed chains seen since the last call, oldest first.
    pub fn take_errors(&mut self) -> Vec<NetError> {
        std::mem::take(&mut self.errors)
    }

    /// Frames the guest transmitted since the last call, in transmit order.
    pub fn take_tx_frames(&mut self) -> Vec<Frame> {
        std::mem::take(&mut self.tx_out)
    }

    /// Whether transmitted frames wait in the outbox ([`VirtioNet::take_tx_frames`]); a machine
    /// template should have none.
    pub fn has_pending_tx(&self) -> bool {
        !self.tx_out.is_empty()
    }

    /// Writes `frame` into the next receive buffer and interrupts the guest.
    pub fn deliver<M: GuestMemory>(&mut self, mem: &M, frame: &Frame) -> Result<(), RxDrop> {
        let result = self.try_deliver(mem, frame);
        match result {
            Ok(()) => {
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += frame.data.len() as u64;
            }
            Err(RxDrop::NotRunning) => self.stats.rx_dropped_not_running += 1,
            Err(RxDrop::NoBuffers) => self.stats.rx_dropped_no_buffers += 1,
            Err(RxDrop::TooBig { .. }) => self.stats.rx_dropped_too_big += 1,
        }
        result
    }

    fn running(&self) -> Option<Interrupt> {
        self.interrupt.clone().filter(|i| !i.needs_reset())
    }

    fn try_deliver<M: GuestMemory>(&mut self, mem: &M, frame: &Frame) -> Result<(), RxDrop> {
        let interrupt = self.running().ok_or(RxDrop::NotRunning)?;
        let packet = self.rx_packet(frame);
        let queue = &mut self.queues[usize::from(RX_QUEUE)];
        let table = GuestAddress(queue.desc_table());
        let mut used_any = false;
        let result = loop {
            let head = match next_head(queue, mem) {
                Ok(Some(head)) => head,
                Ok(None) => break Err(RxDrop::NoBuffers),
                Err(source) => break Err(ring_failed(&mut self.errors, &interrupt, source)),
            };
            let written = match chain::walk(
                mem,
                table,
                queue.size(),
                head,
                Direction::DeviceWrites,
                u32::MAX,
            ) {
                Ok(buffers) if chain::total_len(&buffers) < packet.len() => {
                    // Leave the buffer for a smaller frame; this one is dropped.
                    queue.go_to_previous_position();
                    break Err(RxDrop::TooBig {
                        len: frame.data.len(),
                        room: chain::total_len(&buffers).saturating_sub(NET_HDR_LEN),
                    });
                }
                Ok(buffers) => chain::scatter(mem, &buffers, &packet),
                Err(e) => Err(e),
            };
            let used_len = match written {
                Ok(n) => used_len(n),
                Err(source) => {
                    self.stats.rx_malformed += 1;
                    keep(&mut self.errors, NetError::Rx { head, source });
                    0
                }
            };
            if let Err(source) = queue.add_used(mem, head, used_len) {
                break Err(ring_failed(&mut self.errors, &interrupt, source));
            }
            used_any = true;
            if used_len > 0 {
                break Ok(());
            }
        };
        if used_any {
            signal_if_needed(queue, mem, &interrupt);
        }
        result
    }

    /// Header and frame as the guest receives them.
    fn rx_packet(&self, frame: &Frame) -> Vec<u8> {
        let mut packet = vec![0u8; NET_HDR_LEN];
        if frame.csum_verified && has_feature(self.features, VIRTIO_NET_F_GUEST_CSUM) {
            packet[0] = byte(VIRTIO_NET_HDR_F_DATA_VALID);
        }
        packet[1] = byte(VIRTIO_NET_HDR_GSO_NONE);
        // num_buffers: one buffer per frame (no mergeable buffers).
        packet[10..12].copy_from_slice(&1u16.to_le_bytes());
        packet.extend_from_slice(&frame.data);
        packet
    }

    fn process_tx<M: GuestMemory>(&mut self, mem: &M) -> Result<(), DeviceError> {
        let Some(interrupt) = self.running() else {
            return Ok(());
        };
        let queue = &mut self.queues[usize::from(TX_QUEUE)];
        let table = GuestAddress(queue.desc_table());
        let queue_err = |source| DeviceError::Queue {
            queue: TX_QUEUE,
            source,
        };
        let mut used_any = false;
        loop {
            while let Some(head) = next_head(queue, mem).map_err(queue_err)? {
                match read_tx_frames(mem, table, queue.size(), head, self.features) {
                    Ok(frames) => {
                        self.stats.tx_segmented += u64::from(frames.len() > 1);
                        for frame in frames {
                            self.stats.tx_frames += 1;
                            self.stats.tx_bytes += frame.data.len() as u64;
                            self.stats.tx_csum_completed += u64::from(frame.csum_verified);
                            self.tx_out.push(frame);
                        }
                    }
                    Err(source) => {
                        self.stats.tx_malformed += 1;
                        keep(&mut self.errors, NetError::Tx { head, source });
                    }
                }
                // The device writes nothing into transmit buffers.
                queue.add_used(mem, head, 0).map_err(queue_err)?;
                used_any = true;
            }
            // With EVENT_IDX this publishes how far the device got; it reports chains that
            // arrived meanwhile so none is left without a notification.
            if !queue.enable_notification(mem).map_err(queue_err)? {
                break;
            }
        }
        if used_any {
            signal_if_needed(queue, mem, &interrupt);
        }
        Ok(())
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        let base = [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_STATUS,
        ];
        let checksum = [VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM];
        let segmentation = [VIRTIO_NET_F_HOST_TSO4];
        let Offloads {
            checksum: csum,
            segmentation: tso,
        } = self.offloads;
        let offered = base
            .iter()
            .chain(checksum.iter().filter(|_| csum))
            .chain(segmentation.iter().filter(|_| csum && tso));
        offered.fold(0, |acc, bit| acc | 1u64 << bit)
    }

    fn queues(&self) -> &[Queue] {
        &self.queues
    }

    fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.queues
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac[6], status (le16), max_virtqueue_pairs (le16).
        let mut config = [0u8; 10];
        config[..6].copy_from_slice(&self.mac.0);
        config[6..8].copy_from_slice(&word(VIRTIO_NET_S_LINK_UP).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i as u64);
            *byte = usize::try_from(at)
                .ok()
                .and_then(|at| config.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn activate<M: GuestMemory>(
        &mut self,
        _mem: &M,
        features: u64,
        interrupt: Interrupt,
    ) -> Result<(), DeviceError> {
        if !has_feature(features, VIRTIO_F_VERSION_1) {
            return Err(DeviceError::LegacyDriver);
        }
        let event_idx = has_feature(features, VIRTIO_RING_F_EVENT_IDX);
        for queue in &mut self.queues {
            queue.set_event_idx(event_idx);
        }
        self.features = features;
        self.interrupt = Some(interrupt);
        Ok(())
    }

    fn queue_notify<M: GuestMemory>(&mut self, mem: &M, queue: u16) -> Result<(), DeviceError> {
        // New receive buffers need no action: frames are never held back waiting for them.
        match queue {
            TX_QUEUE => self.process_tx(mem),
            _ => Ok(()),
        }
    }

    fn reset(&mut self) {
        self.features = 0;
        self.interrupt = None;
    }
}

fn new_queue() -> Queue {
    // QUEUE_SIZE is a power of two no larger than the ring maximum.
    Queue::new(QUEUE_SIZE).unwrap_or_else(|_| unreachable!("QUEUE_SIZE is a valid queue size"))
}

/// Pops the head of the next available chain, if any.
fn next_head<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
) -> Result<Option<u16>, virtio_queue::Error> {
    Ok(queue.iter(mem)?.next().map(|chain| chain.head_index()))
}

/// Reads, validates and strips one transmit chain: one frame, or the segments of a large TCP
/// frame when the driver negotiated `HOST_TSO4`.
fn read_tx_frames<M: GuestMemory>(
    mem: &M,
    table: GuestAddress,
    size: u16,
    head: u16,
    features: u64,
) -> Result<Vec<Frame>, TxError> {
    let buffers = chain::walk(mem, table, size, head, Direction::DeviceReads, MAX_TX_CHAIN)?;
    let mut data = chain::gather(mem, &buffers)?;
    if data.len() < NET_HDR_LEN {
        return Err(TxError::HeaderTooShort(data.len()));
    }
    let header: Vec<u8> = data.drain(..NET_HDR_LEN).collect();
    if data.len() < ETH_HEADER_LEN {
        return Err(TxError::FrameTooShort(data.len()));
    }
    let gso_type = header[1];
    match gso_type & !byte(VIRTIO_NET_HDR_GSO_ECN) {
        gso if gso == byte(VIRTIO_NET_HDR_GSO_NONE) => {}
        gso if gso == byte(VIRTIO_NET_HDR_GSO_TCPV4)
            && has_feature(features, VIRTIO_NET_F_HOST_TSO4) =>
        {
            // Segmentation completes every checksum, so NEEDS_CSUM has nothing left to do.
            let mss = u16::from_le_bytes([header[4], header[5]]);
            let segments = segment_tcp4(&data, mss)?;
            return Ok(segments
                .into_iter()
                .map(|data| Frame {
                    csum_verified: true,
                    ..Frame::new(data)
                })
                .collect());
        }
        _ => return Err(TxError::UnsupportedGso(gso_type)),
    }
    let mut frame = Frame::new(data);
    if header[0] & byte(VIRTIO_NET_HDR_F_NEEDS_CSUM) != 0 {
        let start = u16::from_le_bytes([header[6], header[7]]);
        let offset = u16::from_le_bytes([header[8], header[9]]);
        complete_partial(&mut frame.data, start.into(), offset.into())?;
        frame.csum_verified = true;
    }
    Ok(vec![frame])
}

/// Interrupts the guest unless its driver suppressed used-buffer notifications.
fn signal_if_needed<M: GuestMemory>(queue: &mut Queue, mem: &M, interrupt: &Interrupt) {
    // If the suppression state cannot be read, interrupting is the safe choice.
    if queue.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_used();
    }
}

/// A broken receive ring (not just a bad chain): the device stops until the driver resets it.
fn ring_failed(
    errors: &mut Vec<NetError>,
    interrupt: &Interrupt,
    source: virtio_queue::Error,
) -> RxDrop {
    keep(
        errors,
        NetError::RxRing {
            reason: source.to_string(),
        },
    );
    interrupt.signal_needs_reset();
    RxDrop::NotRunning
}

fn keep(errors: &mut Vec<NetError>, error: NetError) {
    if errors.len() < MAX_KEPT_ERRORS {
        errors.push(error);
    }
}

#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
mod fuzz;

mod state;
pub use state::NetState;

#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::net::MachineId;
    use crate::virtio::testing::{Desc, Driver, BUFFERS_BASE, IRQ, MEM_SIZE};
    use crate::virtio::INT_VRING;
    use vm_memory::{Bytes, GuestMemoryMmap};

    const TX_BUF: u64 = BUFFERS_BASE;
    const RX_BUF: u64 = BUFFERS_BASE + 0x10_0000;
    const RX_BUF_LEN: u32 = 1526;

    fn started(features: u64) -> Driver<VirtioNet> {
        let mut d = Driver::new(VirtioNet::new(MachineId(0).mac()));
        d.start(features, 2, QUEUE_SIZE);
        d
    }

    fn all_features() -> u64 {
        VirtioNet::new(MachineId(0).mac()).features()
    }

    #[test]
    fn checksum_offload_can_be_withheld() {
        let csum = 1u64 << VIRTIO_NET_F_CSUM | 1u64 << VIRTIO_NET_F_GUEST_CSUM;
        assert_eq!(all_features() & csum, csum);
        let tso = 1u64 << VIRTIO_NET_F_HOST_TSO4;
        assert_eq!(all_features() & tso, tso);
        let mac = MachineId(0).mac();
        let plain = VirtioNet::with_offloads(
            mac,
            Offloads {
                checksum: false,
                segmentation: true,
            },
        )
        .features();
        assert_eq!(plain, all_features() & !csum & !tso, "TSO needs CSUM");
        let no_tso = Offloads {
            segmentation: false,
            ..Offloads::default()
        };
        let csum_only = VirtioNet::with_offloads(mac, no_tso).features();
        assert_eq!(csum_only, all_features() & !tso);
    }

    #[test]
    fn cuts_large_tcp_frames_when_tso_was_negotiated_and_refuses_them_otherwise() {
        use crate::net::tso::tests::{gso_frame, valid_ip_checksum, valid_tcp_checksum};
        let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let frame = gso_frame(&payload, 0x18);
        let mut hdr = header(
            VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            VIRTIO_NET_HDR_GSO_TCPV4 as u8,
            34,
            16,
        );
        hdr[4..6].copy_from_slice(&1448u16.to_le_bytes());

        let mut d = started(all_features());
        transmit(&mut d, 0, &hdr, &frame);
        d.notify(TX_QUEUE);
        let sent = d.dev.device_mut().take_tx_frames();
        assert_eq!(
            sent.iter().map(|f| f.data.len()).collect::<Vec<_>>(),
            vec![66 + 1448, 66 + 1448, 66 + 104]
        );
        assert!(sent
            .iter()
            .all(|f| f.csum_verified && valid_ip_checksum(&f.data) && valid_tcp_checksum(&f.data)));
        let stats = d.dev.device().stats();
        assert_eq!((stats.tx_frames, stats.tx_segmented), (3, 1));
        assert_eq!(d.queues[1].take_used(&d.mem.clone()).len(), 1);

        let mut plain = started(all_features() & !(1 << VIRTIO_NET_F_HOST_TSO4));
        transmit(&mut plain, 0, &hdr, &frame);
        plain.notify(TX_QUEUE);
        let net = plain.dev.device_mut();
        assert!(net.take_tx_frames().is_empty());
        assert!(matches!(
            &net.take_errors()[..],
            [NetError::Tx {
                source: TxError::UnsupportedGso(1),
                ..
            }]
        ));
    }

    /// A guest's MSS of 1 used to cut one 60 KB frame into 60,000 frames in the outbox.
    #[test]
    fn a_tiny_mss_is_a_malformed_frame_not_a_flood() {
        use crate::net::tso::tests::gso_frame;
        let frame = gso_frame(&vec![0x5a; 60_000], 0x18);
        let mut hdr = header(0, VIRTIO_NET_HDR_GSO_TCPV4 as u8, 0, 0);
        hdr[4..6].copy_from_slice(&1u16.to_le_bytes());
        let mut d = started(all_features());
        let head = transmit(&mut d, 0, &hdr, &frame);
        d.notify(TX_QUEUE);
        let net = d.dev.device_mut();
        assert_eq!(net.take_tx_frames().len(), 0);
        assert_eq!(net.stats().tx_malformed, 1);
        let errors = net.take_errors();
        assert!(
            matches!(
                &errors[..],
                [NetError::Tx { head: h, source: TxError::Segmentation(TsoError::MssTooSmall(1)) }]
                    if *h == head
            ),
            "{errors:?}"
        );
        assert_eq!(d.queues[1].take_used(&d.mem.clone()), vec![(head, 0)]);
    }

    fn ethernet(len: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![fill; len];
        f[..6].copy_from_slice(&MachineId(1).mac().0);
        f[6..12].copy_from_slice(&MachineId(0).mac().0);
        f
    }

    fn header(flags: u8, gso: u8, csum_start: u16, csum_offset: u16) -> Vec<u8> {
        let mut h = vec![0u8; NET_HDR_LEN];
        h[0] = flags;
        h[1] = gso;
        h[6..8].copy_from_slice(&csum_start.to_le_bytes());
        h[8..10].copy_from_slice(&csum_offset.to_le_bytes());
        h
    }

    /// Writes header and frame at TX_BUF + `slot` * 0x1_0000 and queues them as a two-descriptor
    /// chain, as Linux does without any_header_sg.
    fn transmit(d: &mut Driver<VirtioNet>, slot: u64, hdr: &[u8], frame: &[u8]) -> u16 {
        let base = TX_BUF + slot * 0x1_0000;
        d.mem.write_slice(hdr, GuestAddress(base)).unwrap();
        d.mem
            .write_slice(frame, GuestAddress(base + 0x100))
            .unwrap();
        let mem = d.mem.clone();
        d.queues[1].add_chain(
            &mem,
            &[
                Desc::read(base, hdr.len() as u32),
                Desc::read(base + 0x100, frame.len() as u32),
            ],
        )
    }

    fn post_rx(d: &mut Driver<VirtioNet>, slot: u64, len: u32) -> u16 {
        let mem = d.mem.clone();
        d.queues[0].add_chain(&mem, &[Desc::write(RX_BUF + slot * 0x1000, len)])
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    #[test]
    fn transmits_frames_without_the_header_and_interrupts() {
        let mut d = started(all_features());
        d.lines.take();
        let a = ethernet(60, 0xa1);
        let b = ethernet(1514, 0xb2);
        let ha = transmit(&mut d, 0, &header(0, 0, 0, 0), &a);
        let hb = transmit(&mut d, 1, &header(0, 0, 0, 0), &b);
        d.notify(TX_QUEUE);
        let frames = d.dev.device_mut().take_tx_frames();
        assert_eq!(frames, vec![Frame::new(a), Frame::new(b)]);
        let mem = d.mem.clone();
        assert_eq!(d.queues[1].take_used(&mem), vec![(ha, 0), (hb, 0)]);
        assert_eq!(d.lines.take(), 1 << IRQ);
        assert_eq!(d.ack_interrupt(), INT_VRING);
        let stats = d.dev.device().stats();
        assert_eq!((stats.tx_frames, stats.tx_bytes), (2, 60 + 1514));
        assert!(d.dev.device_mut().take_errors().is_empty());
    }

    #[test]
    fn event_idx_publishes_the_next_expected_notification() {
        let mut d = started(all_features());
        transmit(&mut d, 0, &header(0, 0, 0, 0), &ethernet(60, 1));
        transmit(&mut d, 1, &header(0, 0, 0, 0), &ethernet(60, 2));
        d.notify(TX_QUEUE);
        // avail_event lives after the used ring entries.
        let used = d.queues[1].used.0;
        let avail_event: u16 = d
            .mem
            .read_obj(GuestAddress(used + 4 + 8 * u64::from(QUEUE_SIZE)))
            .unwrap();
        assert_eq!(avail_event, 2);
    }

    #[test]
    fn completes_partial_checksums_and_marks_them_valid_for_the_peer() {
        let (frame, udp) = crate::net::checksum::tests::partial_udp_frame(b"offloaded payload");
        let mut tx = started(all_features());
        let hdr = header(VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, 0, udp as u16, 6);
        transmit(&mut tx, 0, &hdr, &frame);
        tx.notify(TX_QUEUE);
        let sent = tx.dev.device_mut().take_tx_frames().remove(0);
        assert!(sent.csum_verified);
        assert_ne!(sent.data[40..42], frame[40..42]);
        let mut expected = frame.clone();
        complete_partial(&mut expected, udp, 6).unwrap();
        assert_eq!(sent.data, expected);
        assert_eq!(tx.dev.device().stats().tx_csum_completed, 1);

        // A receiver that accepted GUEST_CSUM is told the checksum is valid...
        let mut rx = started(all_features());
        post_rx(&mut rx, 0, RX_BUF_LEN);
        rx.dev.device_mut().deliver(&rx.mem.clone(), &sent).unwrap();
        assert_eq!(
            read(&rx.mem, RX_BUF, 1)[0],
            VIRTIO_NET_HDR_F_DATA_VALID as u8
        );
        // ...one that did not is not, and a guest-checksummed frame never is.
        let mut plain = started(all_features() & !(1 << VIRTIO_NET_F_GUEST_CSUM));
        post_rx(&mut plain, 0, RX_BUF_LEN);
        post_rx(&mut plain, 1, RX_BUF_LEN);
        let mem = plain.mem.clone();
        plain.dev.device_mut().deliver(&mem, &sent).unwrap();
        plain
            .dev
            .device_mut()
            .deliver(&mem, &Frame::new(frame))
            .unwrap();
        assert_eq!(read(&mem, RX_BUF, 1)[0], 0);
        assert_eq!(read(&mem, RX_BUF + 0x1000, 1)[0], 0);
    }

    #[test]
    fn receives_into_posted_buffers() {
        let mut d = started(all_features());
        let h0 = post_rx(&mut d, 0, RX_BUF_LEN);
        let h1 = post_rx(&mut d, 1, RX_BUF_LEN);
        d.lines.take();
        let mem = d.mem.clone();
        let frame = ethernet(1514, 0x5a);
        d.dev
            .device_mut()
            .deliver(&mem, &Frame::new(frame.clone()))
            .unwrap();
        let small = ethernet(42, 0x77);
        d.dev
            .device_mut()
            .deliver(&mem, &Frame::new(small.clone()))
            .unwrap();
        let len = (NET_HDR_LEN + 1514) as u32;
        assert_eq!(
            d.queues[0].take_used(&mem),
            vec![(h0, len), (h1, (NET_HDR_LEN + 42) as u32)]
        );
        let got = read(&mem, RX_BUF, len as usize);
        assert_eq!(&got[..10], &[0; 10]);
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
        assert_eq!(&got[NET_HDR_LEN..], &frame[..]);
        assert_eq!(read(&mem, RX_BUF + 0x1000 + 12, 42), small);
        assert_eq!(d.lines.take(), 1 << IRQ);
        assert_eq!(d.dev.device().stats().rx_frames, 2);
    }

    #[test]
    fn receive_buffers_split_over_descriptors() {
        let mut d = started(all_features());
        let mem = d.mem.clone();
        // Header alone, then the frame in two pieces.
        let head = d.queues[0].add_chain(
            &mem,
            &[
                Desc::write(RX_BUF, 12),
                Desc::write(RX_BUF + 0x100, 20),
                Desc::write(RX_BUF + 0x200, 100),
            ],
        );
        let frame = ethernet(64, 0x42);
        d.dev
            .device_mut()
            .deliver(&mem, &Frame::new(frame.clone()))
            .unwrap();
        assert_eq!(d.queues[0].take_used(&mem), vec![(head, 76)]);
        let mut got = read(&mem, RX_BUF + 0x100, 20);
        got.extend(read(&mem, RX_BUF + 0x200, 44));
        assert_eq!(got, frame);
    }

    #[test]
    fn receive_drops_are_reported() {
        let mut d = Driver::new(VirtioNet::new(MachineId(0).mac()));
        let mem = d.mem.clone();
        let frame = Frame::new(ethernet(100, 1));
        assert_eq!(
            d.dev.device_mut().deliver(&mem, &frame),
            Err(RxDrop::NotRunning)
        );
        d.start(all_features(), 2, QUEUE_SIZE);
        assert_eq!(
            d.dev.device_mut().deliver(&mem, &frame),
            Err(RxDrop::NoBuffers)
        );
        // Too small a buffer stays posted for the next, smaller frame.
        let head = post_rx(&mut d, 0, 80);
        assert_eq!(
            d.dev.device_mut().deliver(&mem, &frame),
            Err(RxDrop::TooBig { len: 100, room: 68 })
        );
        assert!(d.queues[0].take_used(&mem).is_empty());
        d.dev
            .device_mut()
            .deliver(&mem, &Frame::new(ethernet(60, 2)))
            .unwrap();
        assert_eq!(d.queues[0].take_used(&mem), vec![(head, 72)]);
        let stats = d.dev.device().stats();
        assert_eq!(
            (
                stats.rx_dropped_not_running,
                stats.rx_dropped_no_buffers,
                stats.rx_dropped_too_big,
                stats.rx_frames
            ),
            (1, 1, 1, 1)
        );
    }

    /// Each malformed transmit chain is returned unused and reported; the next good frame
    /// still goes out.
    #[test]
    fn malformed_transmit_chains_are_errors_not_panics() {
        let good = ethernet(60, 9);
        let hdr = header(0, 0, 0, 0);
        let outside = MEM_SIZE as u64 - 8;
        type Check = fn(&TxError) -> bool;
        let cases: Vec<(&str, Vec<Desc>, Check)> = vec![
            (
                "address outside memory",
                vec![Desc::read(TX_BUF, 12), Desc::read(outside, 60)],
                |e| matches!(e, TxError::Chain(ChainError::OutOfMemory { .. })),
            ),
            (
                "address overflows",
                vec![Desc::read(u64::MAX - 4, 72)],
                |e| matches!(e, TxError::Chain(ChainError::OutOfMemory { .. })),
            ),
            (
                "loop",
                vec![
                    Desc::read(TX_BUF, 12),
                    Desc {
                        next: Some(0),
                        ..Desc::read(TX_BUF + 0x100, 60)
                    },
                ],
                |e| {
                    matches!(
                        e,
                        TxError::Chain(ChainError::Loop | ChainError::TooLong { .. })
                    )
                },
            ),
            (
                "next index outside the queue",
                vec![Desc {
                    next: Some(QUEUE_SIZE + 3),
                    ..Desc::read(TX_BUF, 72)
                }],
                |e| matches!(e, TxError::Chain(ChainError::IndexOutOfRange { .. })),
            ),
            (
                "zero length",
                vec![Desc::read(TX_BUF, 12), Desc::read(TX_BUF + 0x100, 0)],
                |e| matches!(e, TxError::Chain(ChainError::ZeroLength { .. })),
            ),
            (
                "device-writable descriptor in a transmit chain",
                vec![Desc::read(TX_BUF, 12), Desc::write(TX_BUF + 0x100, 60)],
                |e| matches!(e, TxError::Chain(ChainError::WrongDirection { .. })),
            ),
            ("huge length", vec![Desc::read(0, u32::MAX)], |e| {
                matches!(e, TxError::Chain(ChainError::TooLong { .. }))
            }),
            (
                "just over the size limit",
                vec![Desc::read(0, MAX_TX_CHAIN), Desc::read(0, 1)],
                |e| matches!(e, TxError::Chain(ChainError::TooLong { .. })),
            ),
            ("header too short", vec![Desc::read(TX_BUF, 10)], |e| {
                matches!(e, TxError::HeaderTooShort(10))
            }),
            (
                "no room for an Ethernet header",
                vec![Desc::read(TX_BUF, 12), Desc::read(TX_BUF + 0x100, 13)],
                |e| matches!(e, TxError::FrameTooShort(13)),
            ),
        ];
        for (name, descs, check) in cases {
            let mut d = started(all_features());
            let mem = d.mem.clone();
            mem.write_slice(&hdr, GuestAddress(TX_BUF)).unwrap();
            mem.write_slice(&good, GuestAddress(TX_BUF + 0x100))
                .unwrap();
            let bad = d.queues[1].add_chain(&mem, &descs);
            let ok = transmit(&mut d, 1, &hdr, &good);
            d.notify(TX_QUEUE);
            let net = d.dev.device_mut();
            assert_eq!(
                net.take_tx_frames(),
                vec![Frame::new(good.clone())],
                "{name}"
            );
            let errors = net.take_errors();
            assert!(
                matches!(&errors[..], [NetError::Tx { head, source }] if *head == bad && check(source)),
                "{name}: {errors:?}"
            );
            assert_eq!(net.stats().tx_malformed, 1, "{name}");
            assert_eq!(
                d.queues[1].take_used(&mem),
                vec![(bad, 0), (ok, 0)],
                "{name}"
            );
            assert_eq!(
                d.dev.status() & 0x40,
                0,
                "{name}: per-chain errors need no reset"
            );
        }
    }

    #[test]
    fn malformed_headers_are_errors() {
        let good = ethernet(60, 9);
        for (name, hdr, expected) in [
            (
                "UDP segmentation is never offered",
                header(0, 3, 0, 0),
                TxError::UnsupportedGso(3),
            ),
            (
                "TCP segmentation with segment size 0",
                header(0, 1, 0, 0),
                TxError::Segmentation(TsoError::ZeroMss),
            ),
            (
                "TCP segmentation of a frame that is not IPv4",
                {
                    let mut h = header(0, 1, 0, 0);
                    h[4..6].copy_from_slice(&1448u16.to_le_bytes());
                    h
                },
                TxError::Segmentation(TsoError::NotIpv4(0x0909)),
            ),
            (
                "checksum field past the frame",
                header(VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, 0, 50, 10),
                TxError::Checksum(PartialChecksumError {
                    start: 50,
                    offset: 10,
                    len: 60,
                }),
            ),
        ] {
            let mut d = started(all_features());
            transmit(&mut d, 0, &hdr, &good);
            d.notify(TX_QUEUE);
            let net = d.dev.device_mut();
            assert!(net.take_tx_frames().is_empty(), "{name}");
            let errors = net.take_errors();
            assert!(
                matches!(&errors[..], [NetError::Tx { source, .. }] if *source == expected),
                "{name}: {errors:?}"
            );
        }
    }

    #[test]
    fn a_device_readable_receive_buffer_is_returned_empty() {
        let mut d = started(all_features());
        let mem = d.mem.clone();
        let bad = d.queues[0].add_chain(&mem, &[Desc::read(RX_BUF, RX_BUF_LEN)]);
        let good = post_rx(&mut d, 1, RX_BUF_LEN);
        d.dev
            .device_mut()
            .deliver(&mem, &Frame::new(ethernet(60, 3)))
            .unwrap();
        assert_eq!(d.queues[0].take_used(&mem), vec![(bad, 0), (good, 72)]);
        assert!(matches!(
            &d.dev.device_mut().take_errors()[..],
            [NetError::Rx {
                source: ChainError::WrongDirection { .. },
                ..
            }]
        ));
    }

    /// Garbage descriptor tables and rings, driver-like chains of every kind, corrupted
    /// indexes, resets and deliveries of every size, from a fixed stream. After every step the
    /// model in `fuzz.rs` asserts that every chain the device popped went back to the guest
    /// exactly once and in ring order (or broke the ring, and the device needs a reset), that the
    /// frames sent and the bytes delivered are exactly what the chains hold, and that the
    /// counters and errors add up. The stream must reach every outcome.
    #[test]
    fn random_garbage_keeps_the_books() {
        use proptest::strategy::{Strategy, ValueTree};
        use proptest::test_runner::TestRunner;
        let strategy = super::fuzz::case(super::fuzz::Mix::Both);
        let mut runner = TestRunner::deterministic();
        let mut tally = crate::fuzz::Tally::default();
        for _ in 0..300 {
            let case = strategy.new_tree(&mut runner).unwrap().current();
            super::fuzz::check(case, &mut tally);
        }
        let (tx, rx) = (super::fuzz::TX_OUTCOMES, super::fuzz::RX_OUTCOMES);
        for outcome in tx.into_iter().chain(rx).chain(["restart"]) {
            assert!(tally.count(outcome) >= 5, "{outcome}: {tally:?}");
        }
    }

    /// Two machines through the switch, as the world wires them: transmit, switch, deliver,
    /// report the outcome.
    #[test]
    fn frames_cross_the_switch_between_two_devices() {
        use crate::net::switch::{link_seed_from_master, LinkConfig, Switch};
        let mut a = started(all_features());
        let mut b = Driver::new(VirtioNet::new(MachineId(1).mac()));
        b.start(all_features(), 2, QUEUE_SIZE);
        let mut sw = Switch::new(2, LinkConfig::default(), |f, t| {
            link_seed_from_master([0; 32], f, t)
        })
        .unwrap();
        let (mut frame, udp) = crate::net::checksum::tests::partial_udp_frame(b"ping");
        frame[..6].copy_from_slice(&MachineId(1).mac().0);
        frame[6..12].copy_from_slice(&MachineId(0).mac().0);
        let hdr = header(VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, 0, udp as u16, 6);
        transmit(&mut a, 0, &hdr, &frame);
        transmit(&mut a, 1, &hdr, &frame);
        a.notify(TX_QUEUE);
        post_rx(&mut b, 0, RX_BUF_LEN);
        let mem_b = b.mem.clone();
        let mut received = 0;
        for sent in a.dev.device_mut().take_tx_frames() {
            for d in sw.send(MachineId(0), sent, 1_000).unwrap().deliveries {
                assert!(d.at_ns > 1_000 + sw.min_latency_ns());
                match b.dev.device_mut().deliver(&mem_b, &d.frame) {
                    Ok(()) => {
                        received += 1;
                        sw.report_delivered(&d).unwrap();
                    }
                    Err(why) => sw.report_dropped(&d, why).unwrap(),
                }
            }
        }
        assert_eq!(received, 1);
        let got = read(&mem_b, RX_BUF, NET_HDR_LEN + frame.len());
        assert_eq!(got[0], VIRTIO_NET_HDR_F_DATA_VALID as u8);
        let mut expected = frame.clone();
        complete_partial(&mut expected, udp, 6).unwrap();
        assert_eq!(&got[NET_HDR_LEN..], &expected[..]);
        let c = sw.link_counters(MachineId(0), MachineId(1)).unwrap();
        assert_eq!((c.sent, c.delivered, c.dropped_queue_full), (2, 1, 1));
        assert_eq!(b.dev.device().stats().rx_dropped_no_buffers, 1);
    }
}
