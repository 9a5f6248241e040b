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
    let mut buffers = Vec::new();
    let mut total: u32 = 0;
    let mut index = head;
    loop {
        if index >= size {
            return Err(ChainError::IndexOutOfRange { index, size });
        }
        // A chain can visit each descriptor at most once; one more means a cycle.
        if buffers.len() >= usize::from(size) {
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
        let access = match expected {
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
        buffers.push(Buffer {
            addr: desc.addr(),
            len,
        });
        if flags & VRING_DESC_F_NEXT == 0 {
            return Ok(buffers);
        }
        index = desc.next();
    }
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
