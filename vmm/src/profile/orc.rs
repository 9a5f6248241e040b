//! The guest kernel's ORC tables (`CONFIG_UNWINDER_ORC`): for every kernel instruction, where
//! its caller's stack frame starts, so a sampled stack can be walked without frame pointers.
//!
//! The speed kernel is built without frame pointers (they cost every call a push, a move and a
//! pop, each an emulated instruction on a PVM host), and objtool writes these tables instead.
//! simvm reads them once from the vmlinux file and walks a sample's stack the way the guest
//! kernel's own unwinder does (`arch/x86/kernel/unwind_orc.c`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How the caller's stack pointer (or frame pointer) is found: which register it is relative to
/// (`ORC_REG_*` in `arch/x86/include/asm/orc_types.h`).
pub mod reg {
    pub const UNDEFINED: u8 = 0;
    pub const PREV_SP: u8 = 1;
    pub const DX: u8 = 2;
    pub const DI: u8 = 3;
    pub const BP: u8 = 4;
    pub const SP: u8 = 5;
    pub const R10: u8 = 6;
    pub const R13: u8 = 7;
    pub const BP_INDIRECT: u8 = 8;
    pub const SP_INDIRECT: u8 = 9;
}

/// What kind of frame an instruction is in (`ORC_TYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// No unwind information: the walk stops.
    Undefined,
    /// The outermost frame of a kernel stack.
    EndOfStack,
    /// An ordinary call: the return address lies just below the caller's stack pointer.
    Call,
    /// An entry from an exception or interrupt: a whole `struct pt_regs` at the stack pointer.
    Regs,
    /// The hardware's interrupt frame only (`ip`, `cs`, `flags`, `sp`, `ss`).
    RegsPartial,
}

/// One `struct orc_entry` (6 bytes: two offsets and a 16-bit word of bit fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrcEntry {
    pub sp_offset: i16,
    pub bp_offset: i16,
    pub sp_reg: u8,
    pub bp_reg: u8,
    pub kind: FrameKind,
    /// The instruction address is exact (not a return address) in the caller's frame.
    pub signal: bool,
}

impl OrcEntry {
    const SIZE: usize = 6;

    fn parse(bytes: &[u8]) -> Self {
        let word = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let bits = word(4);
        Self {
            sp_offset: word(0) as i16,
            bp_offset: word(2) as i16,
            sp_reg: (bits & 0xf) as u8,
            bp_reg: (bits >> 4 & 0xf) as u8,
            kind: match bits >> 8 & 0x7 {
                1 => FrameKind::EndOfStack,
                2 => FrameKind::Call,
                3 => FrameKind::Regs,
                4 => FrameKind::RegsPartial,
                _ => FrameKind::Undefined,
            },
            signal: bits >> 11 & 1 == 1,
        }
    }
}

/// The kernel's ORC tables: instruction addresses in ascending order, each with the entry that
/// holds from it up to the next.
#[derive(Debug)]
pub struct OrcTable {
    ips: Vec<u64>,
    entries: Vec<OrcEntry>,
}

impl OrcTable {
    /// The tables of the vmlinux at `path`, or `None` for a kernel without them (built with
    /// frame pointers) or a file that is not a readable 64-bit ELF.
    pub fn from_vmlinux(path: &Path) -> Option<Self> {
        let mut file = File::open(path).ok()?;
        let sections = elf_sections(&mut file)?;
        let find = |wanted: &str| sections.iter().find(|s| s.name == wanted);
        let ip_section = find(".orc_unwind_ip")?;
        let entry_section = find(".orc_unwind")?;
        let ip_bytes = read_at(&mut file, ip_section.offset, ip_section.size)?;
        let entry_bytes = read_at(&mut file, entry_section.offset, entry_section.size)?;
        Self::from_sections(ip_section.addr, &ip_bytes, &entry_bytes)
    }

    /// The tables from their sections' contents: `.orc_unwind_ip` (loaded at `ip_addr`) holds
    /// each entry's instruction as a 32-bit offset from the offset's own address.
    pub fn from_sections(ip_addr: u64, ip_bytes: &[u8], entry_bytes: &[u8]) -> Option<Self> {
        let count = ip_bytes.len() / 4;
        if count == 0
            || !ip_bytes.len().is_multiple_of(4)
            || entry_bytes.len() != count * OrcEntry::SIZE
        {
            return None;
        }
        let ips: Vec<u64> = ip_bytes
            .chunks_exact(4)
            .enumerate()
            .map(|(i, offset)| {
                let offset = i32::from_le_bytes([offset[0], offset[1], offset[2], offset[3]]);
                (ip_addr + i as u64 * 4).wrapping_add_signed(offset.into())
            })
            .collect();
        // The build sorts the tables (scripts/sorttable); a binary search needs them sorted.
        if !ips.is_sorted() {
            return None;
        }
        let entries = entry_bytes
            .chunks_exact(OrcEntry::SIZE)
            .map(OrcEntry::parse)
            .collect();
        Some(Self { ips, entries })
    }

    /// How many entries the tables have.
    pub fn len(&self) -> usize {
        self.ips.len()
    }

    /// Whether the tables are empty (never, once loaded).
    pub fn is_empty(&self) -> bool {
        self.ips.is_empty()
    }

    /// The entry that holds at `ip`: the last one starting at or before it (of several starting
    /// there, the last, as the kernel's `__orc_find()` picks), `None` below the first.
    pub fn find(&self, ip: u64) -> Option<&OrcEntry> {
        let after = self.ips.partition_point(|&start| start <= ip);
        after.checked_sub(1).map(|i| &self.entries[i])
    }
}

/// A section of an ELF file: its name, load address and where its bytes are in the file.
struct Section {
    name: String,
    addr: u64,
    offset: u64,
    size: u64,
}

/// The section headers of a little-endian 64-bit ELF file, with their names.
fn elf_sections(file: &mut File) -> Option<Vec<Section>> {
    let header = read_at(file, 0, 64)?;
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let u16_at =
        |bytes: &[u8], at: usize| u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap());
    let u32_at =
        |bytes: &[u8], at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u64_at =
        |bytes: &[u8], at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let (table, entry_size, count, names_index) = (
        u64_at(&header, 0x28),
        usize::from(u16_at(&header, 0x3a)),
        usize::from(u16_at(&header, 0x3c)),
        usize::from(u16_at(&header, 0x3e)),
    );
    if entry_size < 64 || names_index >= count {
        return None;
    }
    let headers = read_at(file, table, (entry_size * count) as u64)?;
    let raw: Vec<(u32, u64, u64, u64)> = headers
        .chunks_exact(entry_size)
        .map(|h| (u32_at(h, 0), u64_at(h, 16), u64_at(h, 24), u64_at(h, 32)))
        .collect();
    let (_, _, names_offset, names_size) = raw[names_index];
    let names = read_at(file, names_offset, names_size)?;
    raw.into_iter()
        .map(|(name, addr, offset, size)| {
            let name = names.get(name as usize..)?;
            let end = name.iter().position(|&b| b == 0)?;
            Some(Section {
                name: String::from_utf8_lossy(&name[..end]).into_owned(),
                addr,
                offset,
                size,
            })
        })
        .collect()
}

/// `len` bytes of `file` at `offset`; `None` past its end. Sections are at most a few MiB.
fn read_at(file: &mut File, offset: u64, len: u64) -> Option<Vec<u8>> {
    const MAX_SECTION: u64 = 64 << 20;
    if len > MAX_SECTION {
        return None;
    }
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut bytes = vec![0u8; len as usize];
    file.read_exact(&mut bytes).ok()?;
    Some(bytes)
}

/// The two sections' bytes for entries at the given instruction addresses, `.orc_unwind_ip`
/// loaded at `ip_addr`.
#[cfg(test)]
pub(crate) fn table_bytes(ip_addr: u64, entries: &[(u64, [u8; 6])]) -> (Vec<u8>, Vec<u8>) {
    let mut ips = Vec::new();
    let mut orcs = Vec::new();
    for (i, (ip, entry)) in entries.iter().enumerate() {
        let offset = ip.wrapping_sub(ip_addr + i as u64 * 4) as i64;
        ips.extend_from_slice(&(offset as i32).to_le_bytes());
        orcs.extend_from_slice(entry);
    }
    (ips, orcs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode_their_bit_fields() {
        // sp_offset 16, bp_offset -16, sp_reg SP (5), bp_reg PREV_SP (1), type CALL (2).
        let entry = OrcEntry::parse(&[16, 0, 0xf0, 0xff, 0x15, 0x02]);
        assert_eq!(
            entry,
            OrcEntry {
                sp_offset: 16,
                bp_offset: -16,
                sp_reg: reg::SP,
                bp_reg: reg::PREV_SP,
                kind: FrameKind::Call,
                signal: false,
            }
        );
        // type REGS (3) with the signal bit.
        let entry = OrcEntry::parse(&[0, 0, 0, 0, 0x05, 0x0b]);
        assert_eq!((entry.kind, entry.signal), (FrameKind::Regs, true));
    }

    #[test]
    fn the_entry_at_an_address_is_the_last_starting_at_or_before_it() {
        let base = 0xffff_ffff_8200_0000;
        let call = |sp_offset: u8| [sp_offset, 0, 0, 0, 0x05, 0x02];
        let (ips, orcs) = table_bytes(
            base,
            &[
                (0xffff_ffff_8100_0000, call(8)),
                (0xffff_ffff_8100_0010, call(16)),
                (0xffff_ffff_8100_0010, call(24)),
                (0xffff_ffff_8100_0040, call(32)),
            ],
        );
        let table = OrcTable::from_sections(base, &ips, &orcs).unwrap();
        let sp_offset = |ip| table.find(ip).map(|e| e.sp_offset);
        assert_eq!(sp_offset(0xffff_ffff_80ff_ffff), None);
        assert_eq!(sp_offset(0xffff_ffff_8100_0000), Some(8));
        assert_eq!(sp_offset(0xffff_ffff_8100_000f), Some(8));
        assert_eq!(sp_offset(0xffff_ffff_8100_0010), Some(24));
        assert_eq!(sp_offset(0xffff_ffff_8100_0040), Some(32));
        assert_eq!(sp_offset(0xffff_ffff_8fff_0000), Some(32));
        // Unsorted or mismatched tables are refused.
        let (ips, orcs) = table_bytes(
            base,
            &[
                (0xffff_ffff_8100_0040, call(8)),
                (0xffff_ffff_8100_0000, call(8)),
            ],
        );
        assert!(OrcTable::from_sections(base, &ips, &orcs).is_none());
        assert!(OrcTable::from_sections(base, &ips, &orcs[..6]).is_none());
    }

    #[test]
    fn a_file_that_is_not_an_elf_kernel_has_no_tables() {
        let dir = std::env::temp_dir().join(format!("simvm-orc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vmlinux");
        std::fs::write(
            &path,
            b"not an ELF file at all, but long enough to hold a header .....",
        )
        .unwrap();
        assert!(OrcTable::from_vmlinux(&path).is_none());
        assert!(OrcTable::from_vmlinux(&dir.join("missing")).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
