//! Fuzz target of the chain walker: random descriptor tables, heads, sizes and byte caps, checked
//! against [`fuzz::reference_chain`], with `split_at`, `gather` and `scatter` on what it returns.

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::fuzz::{self, RefBuffer, Tally};

/// Guest memory of the target: small, so random addresses often land inside.
const MEM: u64 = 64 << 10;

#[derive(Clone, Debug)]
struct Case {
    size: u16,
    table: u64,
    /// (addr, len, flags, next), from entry 0; entries past the end stay zero.
    descs: Vec<(u64, u32, u16, u16)>,
    head: u16,
    /// `Some`: [`walk`] in that direction (true: device-writable); `None`: [`walk_split`].
    only: Option<bool>,
    max_bytes: u32,
    cut: usize,
    data: Vec<u8>,
}

/// A change that may spoil a plausible chain: one field of one of its descriptors.
#[derive(Clone, Debug)]
enum Spoil {
    Addr(u64),
    Len(u32),
    Flags(u16),
    Next(u16),
}

fn spoil() -> impl Strategy<Value = Spoil> {
    prop_oneof![
        fuzz::guest_addr(MEM).prop_map(Spoil::Addr),
        fuzz::guest_len().prop_map(Spoil::Len),
        (0..8u16).prop_map(Spoil::Flags),
        any::<u16>().prop_map(Spoil::Flags),
        (0..50u16).prop_map(Spoil::Next),
        any::<u16>().prop_map(Spoil::Next),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let size = prop_oneof![
        4 => prop::sample::select(vec![1u16, 2, 4, 8, 16]),
        1 => 1..=40u16,
        1 => prop::sample::select(vec![0u16, 256, u16::MAX]),
    ];
    size.prop_flat_map(|size| {
        let entries = usize::from(size.min(48));
        let garbage = (
            fuzz::guest_addr(MEM),
            fuzz::guest_len(),
            any::<u16>(),
            any::<u16>(),
        );
        let table = prop_oneof![
            8 => (0..MEM / 16 - 64).prop_map(|i| i * 16),
            1 => fuzz::guest_addr(MEM),
        ];
        let head = prop_oneof![
            8 => 0..size.max(1),
            1 => any::<u16>(),
        ];
        // The plausible chain: (addr, len) per descriptor, the first `readable` of them
        // device-readable.
        let chain = prop::collection::vec((0..MEM - 600, 1..=600u32), 1..=entries.clamp(1, 8));
        (
            Just(size),
            table,
            prop::collection::vec(garbage, entries),
            head,
            chain,
            0..=8usize,
            prop::collection::vec((0..8usize, spoil()), 0..=2),
            prop_oneof![Just(None), Just(Some(false)), Just(Some(true))],
            prop_oneof![3 => Just(u32::MAX), 1 => fuzz::guest_len()],
            (0..=4000usize, prop::collection::vec(any::<u8>(), 0..=600)),
        )
    })
    .prop_map(
        |(size, table, mut descs, head, chain, readable, spoils, only, max_bytes, (cut, data))| {
            if size > 0 && usize::from(size) <= descs.len() {
                let len = chain.len().min(usize::from(size));
                let slot = |i: usize| (usize::from(head % size) + i) % usize::from(size);
                for (i, &(addr, n)) in chain.iter().take(len).enumerate() {
                    let write = match only {
                        Some(write) => write,
                        None => i >= readable,
                    };
                    let next = slot(i + 1);
                    let flags = u16::from(i + 1 < len) | if write { 2 } else { 0 };
                    descs[slot(i)] = (addr, n, flags, next as u16);
                }
                for (i, change) in spoils {
                    let d = &mut descs[slot(i % len)];
                    match change {
                        Spoil::Addr(a) => d.0 = a,
                        Spoil::Len(n) => d.1 = n,
                        Spoil::Flags(f) => d.2 = f,
                        Spoil::Next(n) => d.3 = n,
                    }
                }
            }
            Case {
                size,
                table,
                descs,
                head,
                only,
                max_bytes,
                cut,
                data,
            }
        },
    )
}

fn check(case: Case, tally: &mut Tally) {
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    for (i, &(addr, len, flags, next)) in case.descs.iter().enumerate() {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        // Entries that fall outside memory stay unreadable.
        if let Some(at) = case.table.checked_add(16 * i as u64) {
            let _ = mem.write_slice(&raw, GuestAddress(at));
        }
    }
    let table = GuestAddress(case.table);
    let reference = fuzz::reference_chain(
        &mem,
        case.table,
        case.size,
        case.head,
        case.only,
        case.max_bytes,
    );
    let got: Result<Vec<Buffer>, ChainError> = match case.only {
        Some(write) => {
            let direction = if write {
                Direction::DeviceWrites
            } else {
                Direction::DeviceReads
            };
            walk(&mem, table, case.size, case.head, direction, case.max_bytes)
        }
        None => walk_split(&mem, table, case.size, case.head, case.max_bytes).map(|chain| {
            // Readable buffers come first in a split chain, as in the reference.
            let mut all = chain.readable;
            all.extend(chain.writable);
            all
        }),
    };
    if case.head >= case.size {
        assert_eq!(
            got,
            Err(ChainError::IndexOutOfRange {
                index: case.head,
                size: case.size
            })
        );
    }
    let (buffers, expected) = match (got, reference) {
        (Ok(buffers), Some(expected)) => (buffers, expected),
        (Err(e), None) => {
            tally.hit(match e {
                ChainError::IndexOutOfRange { .. } => "index",
                ChainError::TableUnreadable { .. } => "table",
                ChainError::Indirect { .. } => "indirect",
                ChainError::Loop => "loop",
                ChainError::ZeroLength { .. } => "zero",
                ChainError::OutOfMemory { .. } => "outside",
                ChainError::WrongDirection { .. } => "direction",
                ChainError::TooLong { .. } => "too_long",
                ChainError::Memory => "memory",
            });
            return;
        }
        (got, reference) => panic!("walker {got:?}, reference {reference:?}"),
    };
    let as_ref: Vec<RefBuffer> = buffers
        .iter()
        .zip(&expected)
        .map(|(b, e)| (b.addr.0, b.len, e.2))
        .collect();
    assert_eq!(as_ref, expected);
    tally.hit(if buffers.len() > 1 {
        "ok_chain"
    } else {
        "ok_single"
    });
    assert!(buffers.len() <= usize::from(case.size));
    let total = total_len(&buffers);
    assert!(total <= case.max_bytes as usize);

    let (first, second) = split_at(&buffers, case.cut);
    assert_eq!(total_len(&first), case.cut.min(total));
    assert_eq!(total_len(&first) + total_len(&second), total);
    assert!(first.iter().chain(&second).all(|b| b.len > 0));
    assert!(first.len() + second.len() <= buffers.len() + 1);

    let gathered = gather(&mem, &buffers).unwrap();
    assert_eq!(gathered, fuzz::read_buffers(&mem, &expected));
    let written = scatter(&mem, &buffers, &case.data).unwrap();
    assert_eq!(written, case.data.len().min(total));
    if fuzz::disjoint(&expected) {
        assert_eq!(
            &fuzz::read_buffers(&mem, &expected)[..written],
            &case.data[..written]
        );
    }
}

#[test]
fn fuzz_chain_walk() {
    let expected = [
        "ok_single",
        "ok_chain",
        "index",
        "table",
        "indirect",
        "loop",
        "zero",
        "outside",
        "direction",
        "too_long",
    ];
    fuzz::run("chain_walk", 2000, case(), &expected, check);
}
