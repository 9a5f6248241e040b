//! Strict walking of split-ring descriptor chains.
//!
//! `virtio_queue::DescriptorChain` ends iteration silently on a bad descriptor, which would let
//! a malformed chain pass as a short one. simvm must count and report every malformed chain, so
//! it walks the descriptor table itself and names what is wrong.

use thiserror::Error;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// Whether the device reads (driver-to-device) or writes (device-to-driver) a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    DeviceReads,
    DeviceWrites,
}

/// One guest buffer of a chain, already checked to lie inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
}

/// What is wrong with a descriptor chain.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ChainError {
    #[error("descriptor index {index} is outside the queue of size {size}")]
    IndexOutOfRange { index: u16, size: u16 },
    #[error("descriptor {index} cannot be read from the descriptor table")]
    TableUnreadable { index: u16 },
    #[error("descriptor {index} is indirect, which was not negotiated")]
    Indirect { index: u16 },
    #[error("the chain has more descriptors than the queue (a loop)")]
    Loop,
    #[error("descriptor {index} has length zero")]
    ZeroLength { index: u16 },
    #[error("descriptor {index} buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfMemory { index: u16, addr: u64, len: u32 },
    #[error("descriptor {index} is {found:?}, expected {expected:?}")]
    WrongDirection {
        index: u16,
        expected: Direction,
        found: Direction,
    },
    #[error("the chain holds more than {max} bytes")]
    TooLong { max: u32 },
    #[error("guest memory access failed inside a checked buffer")]
    Memory,
}

/// Walks the chain starting at `head` in the descriptor table at `table` (of `size` entries).
///
/// Every descriptor must have direction `expected`, a nonzero length and a buffer inside guest
/// memory; the chain must end within `size` descriptors and hold at most `max_bytes`.
pub fn walk<M: GuestMemory>(
    mem: &M,
    table: GuestAddress,
    size: u16,
    head: u16,
    expected: Direction,
    max_bytes: u32,
) -> Result<Vec<Buffer>, ChainError> {
    let chain = walk_chain(mem, table, size, head, Some(expected), max_bytes)?;
    Ok(match expected {
        Direction::DeviceReads => chain.readable,
        Direction::DeviceWrites => chain.writable,
    })
}

/// A chain of device-readable buffers followed by device-writable ones; either part may be
/// empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub readable: Vec<Buffer>,
    pub writable: Vec<Buffer>,
}

/// Walks a chain that carries a request and room for its answer: device-readable descriptors,
/// then device-writable ones (virtio 1.x 2.7.4.2: the driver places every device-writable
/// descriptor after every device-readable one). A readable descriptor after a writable one is a
/// [`ChainError::WrongDirection`]; every other check is [`walk`]'s.
pub fn walk_split<M: GuestMemory>(
    mem: &M,
    table: GuestAddress,
    size: u16,
    head: u16,
    max_bytes: u32,
) -> Result<Chain, ChainError> {
    walk_chain(mem, table, size, head, None, max_bytes)
}

/// The walk behind [`walk`] (every descriptor in direction `only`) and [`walk_split`] (`only`
/// is `None`: readable descriptors, then writable ones).
fn walk_chain<M: GuestMemory>(
    mem: &M,
    table: GuestAddress,
    size: u16,
    head: u16,
    only: Option<Direction>,
    max_bytes: u32,
) -> Result<Chain, ChainError> {
    let mut chain = Chain::default();
    let mut total: u32 = 0;
    let mut index = head;
    loop {
        if index >= size {
            return Err(ChainError::IndexOutOfRange { index, size });
        }
        // A chain can visit each descriptor at most once; one more means a cycle.
        if chain.readable.len() + chain.writable.len() >= usize::from(size) {
            return Err(ChainError::Loop);
        }
        let desc: Descriptor = table
            .checked_add(u64::from(index) * 16)
            .and_then(|addr| mem.read_obj(addr).ok())
            .ok_or(ChainError::TableUnreadable { index })?;
        let flags = u32::from(desc.flags());
        if flags & VRING_DESC_F_INDIRECT != 0 {
            return Err(ChainError::Indirect { index });
        }
        let found = if flags & VRING_DESC_F_WRITE != 0 {
            Direction::DeviceWrites
        } else {
            Direction::DeviceReads
        };
        let expected = match only {
            Some(direction) => direction,
            None if !chain.writable.is_empty() => Direction::DeviceWrites,
            None => found,
        };
        if found != expected {
            return Err(ChainError::WrongDirection {
                index,
                expected,
                found,
            });
        }
        if desc.len() == 0 {
            return Err(ChainError::ZeroLength { index });
        }
        total = total
            .checked_add(desc.len())
            .filter(|&t| t <= max_bytes)
            .ok_or(ChainError::TooLong { max: max_bytes })?;
        let access = match found {
            Direction::DeviceReads => Permissions::Read,
            Direction::DeviceWrites => Permissions::Write,
        };
        let len = desc.len();
        if !mem.check_range(desc.addr(), len as usize, access) {
            return Err(ChainError::OutOfMemory {
                index,
                addr: desc.addr().raw_value(),
                len,
            });
        }
        let buffer = Buffer {
            addr: desc.addr(),
            len,
        };
        match found {
            Direction::DeviceReads => chain.readable.push(buffer),
            Direction::DeviceWrites => chain.writable.push(buffer),
        }
        if flags & VRING_DESC_F_NEXT == 0 {
            return Ok(chain);
        }
        index = desc.next();
    }
}

/// Splits `buffers` after their first `at` bytes; a buffer across the cut is cut in two. With
/// `at` past the end, the second part is empty.
pub fn split_at(buffers: &[Buffer], at: usize) -> (Vec<Buffer>, Vec<Buffer>) {
    let mut first = Vec::new();
    let mut second = Vec::new();
    let mut left = at;
    for &b in buffers {
        match u32::try_from(left) {
            Ok(0) => second.push(b),
            // The buffer lies inside guest memory, so the address of its tail cannot overflow.
            Ok(cut) if cut < b.len => {
                first.push(Buffer {
                    addr: b.addr,
                    len: cut,
                });
                second.push(Buffer {
                    addr: b.addr.unchecked_add(u64::from(cut)),
                    len: b.len - cut,
                });
                left = 0;
            }
            // The cut lies at or past the end of this buffer.
            _ => {
                first.push(b);
                left -= b.len as usize;
            }
        }
    }
    (first, second)
}

/// Total length of `buffers`.
pub fn total_len(buffers: &[Buffer]) -> usize {
    buffers.iter().map(|b| b.len as usize).sum()
}

/// Copies the contents of `buffers` out of guest memory.
pub fn gather<M: GuestMemory>(mem: &M, buffers: &[Buffer]) -> Result<Vec<u8>, ChainError> {
    let mut out = vec![0u8; total_len(buffers)];
    let mut at = 0;
    for b in buffers {
        let end = at + b.len as usize;
        mem.read_slice(&mut out[at..end], b.addr)
            .map_err(|_| ChainError::Memory)?;
        at = end;
    }
    Ok(out)
}

/// Copies `data` into `buffers` in order; returns the number of bytes written, which is less
/// than `data.len()` only if the buffers are too small.
pub fn scatter<M: GuestMemory>(
    mem: &M,
    buffers: &[Buffer],
    mut data: &[u8],
) -> Result<usize, ChainError> {
    let mut written = 0;
    for b in buffers {
        if data.is_empty() {
            break;
        }
        let n = data.len().min(b.len as usize);
        mem.write_slice(&data[..n], b.addr)
            .map_err(|_| ChainError::Memory)?;
        written += n;
        data = &data[n..];
    }
    Ok(written)
}

#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::{memory, Desc, DriverQueue, BUFFERS_BASE};

    const B: u64 = BUFFERS_BASE;
    const SIZE: u16 = 16;

    fn buf(addr: u64, len: u32) -> Buffer {
        Buffer {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn walk_split_takes_readable_then_writable_buffers() {
        let mem = memory();
        let mut q = DriverQueue::new(0, SIZE);
        let both = q.add_chain(
            &mem,
            &[
                Desc::read(B, 16),
                Desc::read(B + 0x100, 8),
                Desc::write(B + 0x200, 4),
                Desc::write(B + 0x300, 1),
            ],
        );
        let writes = q.add_chain(&mem, &[Desc::write(B, 2)]);
        let reads = q.add_chain(&mem, &[Desc::read(B, 3)]);
        let mixed = q.add_chain(
            &mem,
            &[
                Desc::read(B, 16),
                Desc::write(B + 0x100, 8),
                Desc::read(B + 0x200, 4),
            ],
        );
        let split = |head| walk_split(&mem, q.desc, SIZE, head, u32::MAX);
        assert_eq!(
            split(both),
            Ok(Chain {
                readable: vec![buf(B, 16), buf(B + 0x100, 8)],
                writable: vec![buf(B + 0x200, 4), buf(B + 0x300, 1)],
            })
        );
        assert_eq!(
            split(writes),
            Ok(Chain {
                readable: vec![],
                writable: vec![buf(B, 2)],
            })
        );
        assert_eq!(
            split(reads),
            Ok(Chain {
                readable: vec![buf(B, 3)],
                writable: vec![],
            })
        );
        assert_eq!(
            split(mixed),
            Err(ChainError::WrongDirection {
                index: mixed + 2,
                expected: Direction::DeviceWrites,
                found: Direction::DeviceReads,
            })
        );
        // The total cap counts both parts.
        assert_eq!(
            walk_split(&mem, q.desc, SIZE, both, 28),
            Err(ChainError::TooLong { max: 28 })
        );
        // `walk` still takes one direction only.
        assert_eq!(
            walk(&mem, q.desc, SIZE, both, Direction::DeviceReads, u32::MAX),
            Err(ChainError::WrongDirection {
                index: both + 2,
                expected: Direction::DeviceReads,
                found: Direction::DeviceWrites,
            })
        );
        assert_eq!(
            walk(
                &mem,
                q.desc,
                SIZE,
                writes,
                Direction::DeviceWrites,
                u32::MAX
            ),
            Ok(vec![buf(B, 2)])
        );
    }

    #[test]
    fn split_at_cuts_inside_a_buffer() {
        let bufs = [buf(0x1000, 10), buf(0x2000, 6)];
        assert_eq!(split_at(&bufs, 0), (vec![], bufs.to_vec()));
        assert_eq!(
            split_at(&bufs, 4),
            (vec![buf(0x1000, 4)], vec![buf(0x1004, 6), buf(0x2000, 6)])
        );
        assert_eq!(
            split_at(&bufs, 10),
            (vec![buf(0x1000, 10)], vec![buf(0x2000, 6)])
        );
        assert_eq!(
            split_at(&bufs, 15),
            (vec![buf(0x1000, 10), buf(0x2000, 5)], vec![buf(0x2005, 1)])
        );
        assert_eq!(split_at(&bufs, 100), (bufs.to_vec(), vec![]));
    }
}
