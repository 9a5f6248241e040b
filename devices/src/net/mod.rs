//! The simulated network: Ethernet frames, machine addresses, the switch and packet capture.

pub mod checksum;
pub mod pcapng;
pub mod switch;
pub mod tso;

use std::fmt;

use thiserror::Error;

/// A machine on the network, by its 0-based index in the world. It is named `m{index + 1}`,
/// matching the 1-based `index` the guest receives in its boot data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MachineId(pub u16);

impl MachineId {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// The 1-based machine number used in names, addresses and MACs.
    pub fn number(self) -> u32 {
        u32::from(self.0) + 1
    }

    /// The machine's MAC address: `52:54:00:00:HH:LL` where `HHLL` is its 1-based number, so
    /// `m1` is `52:54:00:00:00:01`. 52:54:00 is the locally administered prefix QEMU/KVM use.
    pub fn mac(self) -> MacAddr {
        let [hi, lo] = ((self.number() & 0xffff) as u16).to_be_bytes();
        MacAddr([0x52, 0x54, 0x00, 0x00, hi, lo])
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}", self.number())
    }
}

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Broadcast and multicast addresses have the group bit set.
    pub fn is_group(self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Length of an Ethernet header (destination, source, EtherType).
pub const ETH_HEADER_LEN: usize = 14;

/// Why a receiving NIC did not take a frame. Each reason is counted apart, by the NIC
/// (`NetStats`), the switch ([`switch::LinkCounters`]) and in the capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum RxDrop {
    /// No driver has the NIC running: not started yet, needing a reset after a broken ring,
    /// or the machine has no NIC (or no longer exists).
    #[error("the driver has not started the device, or it needs a reset")]
    NotRunning,
    /// The receive queue is full: the driver has posted no buffer.
    #[error("no receive buffers posted")]
    NoBuffers,
    /// The next posted buffer is too small for the frame.
    #[error("frame of {len} bytes does not fit the next receive buffer of {room} bytes")]
    TooBig { len: usize, room: usize },
}

/// An Ethernet frame in flight, without preamble or FCS.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frame {
    pub data: Vec<u8>,
    /// simvm itself computed the frame's TCP/UDP checksum (checksum offload), so a receiving
    /// device may tell its guest the checksum is valid. Anything that alters `data` must clear it.
    pub csum_verified: bool,
}

impl Frame {
    pub fn new(data: Vec<u8>) -> Self {
        Self {
            data,
            csum_verified: false,
        }
    }

    /// Destination MAC, if the frame is long enough to have one.
    pub fn dst(&self) -> Option<MacAddr> {
        self.data.get(0..6)?.try_into().ok().map(MacAddr)
    }

    /// Source MAC, if the frame is long enough to have one.
    pub fn src(&self) -> Option<MacAddr> {
        self.data.get(6..12)?.try_into().ok().map(MacAddr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_macs_are_derived_from_the_one_based_number() {
        assert_eq!(MachineId(0).mac().to_string(), "52:54:00:00:00:01");
        assert_eq!(MachineId(2).mac().to_string(), "52:54:00:00:00:03");
        assert_eq!(MachineId(299).mac().to_string(), "52:54:00:00:01:2c");
        assert_eq!(MachineId(0).to_string(), "m1");
        assert!(!MachineId(0).mac().is_group());
        assert!(MacAddr::BROADCAST.is_group());
    }
}
