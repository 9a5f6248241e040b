//! The device bus: address ranges of one address space (port I/O or MMIO) mapped to devices.
//!
//! A machine has one bus per address space. An exit's address is looked up here and the access
//! is handed to the device that claims it, with the offset into the range it claimed, so a
//! machine grows a NIC, several disks or a new legacy device without new fields or new match
//! arms. Devices are owned by the bus as `dyn BusDevice`; the machine keeps the [`DeviceId`] of
//! the ones it must reach by type (a NIC to deliver a frame to, a disk to complete a request
//! of) and borrows them back with [`Bus::get_mut`].

use std::any::Any;

use thiserror::Error;
use vm_memory::GuestMemoryMmap;

/// Where an access landed: its absolute address and its offset into the claimed range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusAccess {
    pub addr: u64,
    pub offset: u64,
}

/// A device reachable through port I/O or MMIO exits.
pub trait BusDevice: Any {
    /// A guest read of `data.len()` bytes; the device fills `data`.
    fn read(&mut self, access: BusAccess, data: &mut [u8]);

    /// A guest write of `data`. `mem` is there for devices that act on guest memory when
    /// written to (a virtio queue notification runs the device synchronously).
    fn write(&mut self, mem: &GuestMemoryMmap, access: BusAccess, data: &[u8]);
}

/// A device's handle on its bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(usize);

/// Why a range could not be mapped.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    #[error("range {base:#x}+{len:#x} is empty or wraps around the address space")]
    BadRange { base: u64, len: u64 },
    #[error("range {base:#x}+{len:#x} overlaps a range already on the bus")]
    Overlap { base: u64, len: u64 },
    #[error("no device {0:?} on this bus")]
    NoDevice(DeviceId),
}

#[derive(Clone, Copy, Debug)]
struct Range {
    base: u64,
    /// Exclusive; `base < end`.
    end: u64,
    device: DeviceId,
}

/// One address space's devices, found by address.
#[derive(Default)]
pub struct Bus {
    devices: Vec<Box<dyn BusDevice>>,
    /// Sorted by `base`, never overlapping.
    ranges: Vec<Range>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` and maps `[base, base + len)` to it.
    pub fn insert(
        &mut self,
        device: Box<dyn BusDevice>,
        base: u64,
        len: u64,
    ) -> Result<DeviceId, BusError> {
        let id = self.add(device);
        match self.map(id, base, len) {
            Ok(()) => Ok(id),
            Err(e) => {
                self.devices.pop();
                Err(e)
            }
        }
    }

    /// Adds `device` without an address; [`Bus::map`] gives it one or more ranges.
    pub fn add(&mut self, device: Box<dyn BusDevice>) -> DeviceId {
        self.devices.push(device);
        DeviceId(self.devices.len() - 1)
    }

    /// Maps `[base, base + len)` to `device` (a device may claim several ranges, like the
    /// 8259 pair's three port pairs).
    pub fn map(&mut self, device: DeviceId, base: u64, len: u64) -> Result<(), BusError> {
        if device.0 >= self.devices.len() {
            return Err(BusError::NoDevice(device));
        }
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        let at = self.ranges.partition_point(|r| r.base < base);
        let overlaps_previous = at > 0 && self.ranges[at - 1].end > base;
        let overlaps_next = self.ranges.get(at).is_some_and(|r| r.base < end);
        if overlaps_previous || overlaps_next {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(at, Range { base, end, device });
        Ok(())
    }

    /// The range holding `addr`, if any.
    fn lookup(&self, addr: u64) -> Option<(DeviceId, BusAccess)> {
        let at = self.ranges.partition_point(|r| r.base <= addr);
        let range = self.ranges.get(at.checked_sub(1)?)?;
        (addr < range.end).then_some((
            range.device,
            BusAccess {
                addr,
                offset: addr - range.base,
            },
        ))
    }

    /// Hands a read to the device at `addr`; `false` if no device claims it.
    pub fn read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        let Some((device, access)) = self.lookup(addr) else {
            return false;
        };
        self.devices[device.0].read(access, data);
        true
    }

    /// Hands a write to the device at `addr`; `false` if no device claims it.
    pub fn write(&mut self, mem: &GuestMemoryMmap, addr: u64, data: &[u8]) -> bool {
        let Some((device, access)) = self.lookup(addr) else {
            return false;
        };
        self.devices[device.0].write(mem, access, data);
        true
    }

    /// The device `id`, if it is a `T`.
    pub fn get<T: BusDevice>(&self, id: DeviceId) -> Option<&T> {
        let device: &dyn Any = self.devices.get(id.0)?.as_ref();
        device.downcast_ref()
    }

    /// The device `id`, if it is a `T`.
    pub fn get_mut<T: BusDevice>(&mut self, id: DeviceId) -> Option<&mut T> {
        let device: &mut dyn Any = self.devices.get_mut(id.0)?.as_mut();
        device.downcast_mut()
    }
}

#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    /// Remembers the last access; reads return the offset's low byte.
    #[derive(Default)]
    struct Probe {
        last: Option<BusAccess>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, access: BusAccess, data: &mut [u8]) {
            self.last = Some(access);
            data.fill(access.offset as u8);
        }

        fn write(&mut self, _mem: &GuestMemoryMmap, access: BusAccess, _data: &[u8]) {
            self.last = Some(access);
        }
    }

    #[test]
    fn accesses_reach_the_claiming_device_with_its_offset() {
        let mut bus = Bus::new();
        let a = bus.insert(Box::new(Probe::default()), 0x20, 2).unwrap();
        let b = bus.insert(Box::new(Probe::default()), 0x3f8, 8).unwrap();
        bus.map(a, 0xa0, 2).unwrap();
        let mut byte = [0u8];
        assert!(bus.read(0x3fd, &mut byte));
        assert_eq!(byte, [5]);
        assert_eq!(bus.get::<Probe>(b).unwrap().last.unwrap().addr, 0x3fd);
        assert!(bus.read(0xa1, &mut byte));
        assert_eq!(
            bus.get::<Probe>(a).unwrap().last,
            Some(BusAccess {
                addr: 0xa1,
                offset: 1
            })
        );
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        for unclaimed in [0, 0x1f, 0x22, 0x9f, 0x3f7, 0x400, u64::MAX] {
            assert!(!bus.read(unclaimed, &mut byte), "{unclaimed:#x}");
            assert!(!bus.write(&mem, unclaimed, &byte), "{unclaimed:#x}");
        }
    }

    #[test]
    fn overlapping_empty_and_wrapping_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(Box::new(Probe::default()), 0x1000, 0x1000)
            .unwrap();
        for (base, len) in [(0x1fff, 1), (0xfff, 2), (0x800, 0x2000), (0x1800, 1)] {
            assert_eq!(
                bus.insert(Box::new(Probe::default()), base, len).err(),
                Some(BusError::Overlap { base, len })
            );
        }
        assert!(matches!(
            bus.insert(Box::new(Probe::default()), 5, 0),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(Box::new(Probe::default()), u64::MAX, 2),
            Err(BusError::BadRange { .. })
        ));
        // Refused devices are not kept; adjacent ranges are fine.
        let next = bus.insert(Box::new(Probe::default()), 0x2000, 1).unwrap();
        assert_eq!(next, DeviceId(1));
        assert_eq!(
            bus.map(DeviceId(9), 0, 1),
            Err(BusError::NoDevice(DeviceId(9)))
        );
    }

    #[test]
    fn typed_access_checks_the_type() {
        struct Other;
        impl BusDevice for Other {
            fn read(&mut self, _: BusAccess, _: &mut [u8]) {}
            fn write(&mut self, _: &GuestMemoryMmap, _: BusAccess, _: &[u8]) {}
        }
        let mut bus = Bus::new();
        let id = bus.insert(Box::new(Other), 0, 1).unwrap();
        assert!(bus.get_mut::<Probe>(id).is_none());
        assert!(bus.get_mut::<Other>(id).is_some());
    }
}
