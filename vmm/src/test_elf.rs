//! Minimal x86-64 ELF "kernels" built from raw machine code, for tests and benchmarks.
//!
//! simvm boots an ELF `vmlinux` by entering its entry point in 64-bit long mode with an identity
//! map of the first 1 GiB (see [`crate::boot`]). A file with one `PT_LOAD` segment at
//! [`LOAD_ADDR`] whose entry is the first byte of the code goes through exactly the same loader,
//! so a few bytes of machine code become a guest that exercises one path of the VMM (a port-I/O
//! loop for benchmarks, a triple fault for error tests) without a Linux kernel.
//!
//! The guest starts in ring 0 with `RSP` on the boot stack, the boot GDT loaded and an empty IDT:
//! any exception therefore escalates to a triple fault.

/// Guest-physical address of the code, and the entry point: where Linux's `vmlinux` loads too.
pub const LOAD_ADDR: u64 = 0x100_0000;

/// File offset of the code: page-aligned, so that `p_offset` and `p_vaddr` agree modulo
/// `p_align` as the ELF specification requires.
const CODE_OFFSET: u64 = 0x1000;

const EHDR_SIZE: u16 = 64;
const PHDR_SIZE: u16 = 56;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;

/// `mov dx, 0x3ff; l: out dx, al; jmp l`: writes COM1's scratch register forever, one port-I/O
/// exit per iteration, with no guest-visible side effect besides the exit itself.
pub const COM1_SCRATCH_LOOP: &[u8] = &[
    0x66, 0xba, 0xff, 0x03, // mov dx, 0x3ff
    0xee, // l: out dx, al
    0xeb, 0xfd, // jmp l
];

/// `ud2`: an invalid-opcode exception with an empty IDT, which escalates to a triple fault.
pub const TRIPLE_FAULT: &[u8] = &[0x0f, 0x0b];

/// `l: sti; hlt; jmp l`: sleeps with interrupts enabled and no timer armed, so only something
/// from outside (a frame, a disk completion, a timeline action) can make anything happen.
pub const SLEEP_FOREVER: &[u8] = &[0xfb, 0xf4, 0xeb, 0xfc];

/// `cli; hlt`: halts with interrupts disabled, so nothing can ever wake the guest.
pub const HALT_FOREVER: &[u8] = &[0xfa, 0xf4];

/// Where [`mmio_writer`] puts its data: the page after the code, at `LOAD_ADDR + DATA_OFFSET`.
pub const DATA_OFFSET: u64 = 0x1000;

/// Code for a guest that stores each `(address, value)` as a 32-bit write, in order (device
/// registers: the boot page tables map the virtio-mmio windows), then sleeps like
/// [`SLEEP_FOREVER`]. `data` follows at [`DATA_OFFSET`]: virtqueues and buffers a test lays out
/// in advance, so that no guest code has to build them. `None` if the code would not fit below
/// the data.
pub fn mmio_writer(writes: &[(u64, u32)], data: &[u8]) -> Option<Vec<u8>> {
    let mut code = Vec::new();
    for &(addr, value) in writes {
        code.push(0xb8); // mov eax, imm32
        code.extend_from_slice(&value.to_le_bytes());
        code.push(0xa3); // mov [moffs64], eax
        code.extend_from_slice(&addr.to_le_bytes());
    }
    code.extend_from_slice(SLEEP_FOREVER);
    if code.len() as u64 > DATA_OFFSET {
        return None;
    }
    code.resize(DATA_OFFSET as usize, 0);
    code.extend_from_slice(data);
    Some(code)
}

/// Builds an ELF64 executable whose single `PT_LOAD` segment holds `code` at [`LOAD_ADDR`]
/// (physical and virtual), with the entry point at its first byte.
pub fn kernel(code: &[u8]) -> Vec<u8> {
    let code_len = code.len() as u64;
    let mut elf = Vec::with_capacity(CODE_OFFSET as usize + code.len());

    // ELF header.
    elf.extend_from_slice(b"\x7fELF");
    elf.push(2); // EI_CLASS: ELFCLASS64
    elf.push(1); // EI_DATA: little-endian
    elf.push(1); // EI_VERSION: EV_CURRENT
    elf.resize(16, 0); // EI_OSABI (System V), EI_ABIVERSION, padding
    elf.extend_from_slice(&ET_EXEC.to_le_bytes());
    elf.extend_from_slice(&EM_X86_64.to_le_bytes());
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    elf.extend_from_slice(&u64::from(EHDR_SIZE).to_le_bytes()); // e_phoff: right after this header
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no section headers
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&EHDR_SIZE.to_le_bytes());
    elf.extend_from_slice(&PHDR_SIZE.to_le_bytes());
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    debug_assert_eq!(elf.len(), usize::from(EHDR_SIZE));

    // The one program header.
    elf.extend_from_slice(&PT_LOAD.to_le_bytes());
    elf.extend_from_slice(&(PF_R | PF_W | PF_X).to_le_bytes());
    elf.extend_from_slice(&CODE_OFFSET.to_le_bytes()); // p_offset
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&code_len.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&code_len.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&CODE_OFFSET.to_le_bytes()); // p_align

    elf.resize(CODE_OFFSET as usize, 0);
    elf.extend_from_slice(code);
    elf
}

#[cfg(test)]
mod tests {
    use super::*;
    use linux_loader::loader::{Elf, KernelLoader};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn mmio_writer_stores_in_order_then_sleeps_with_its_data_a_page_later() {
        let code = mmio_writer(&[(0xd000_0070, 0x0f), (0x1234, 7)], b"data").unwrap();
        assert_eq!(&code[..5], &[0xb8, 0x0f, 0, 0, 0]);
        assert_eq!(code[5], 0xa3);
        assert_eq!(u64_at(&code, 6), 0xd000_0070);
        assert_eq!(&code[14..19], &[0xb8, 7, 0, 0, 0]);
        assert_eq!(u64_at(&code, 20), 0x1234);
        assert_eq!(&code[28..32], SLEEP_FOREVER);
        assert_eq!(&code[DATA_OFFSET as usize..], b"data");
        let too_many = vec![(0u64, 0u32); 300];
        assert!(mmio_writer(&too_many, &[]).is_none());
    }

    #[test]
    fn header_parses_back() {
        let elf = kernel(COM1_SCRATCH_LOOP);
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!((elf[4], elf[5], elf[6]), (2, 1, 1));
        assert_eq!(u16_at(&elf, 16), ET_EXEC);
        assert_eq!(u16_at(&elf, 18), EM_X86_64);
        assert_eq!(u64_at(&elf, 24), LOAD_ADDR, "e_entry");
        let phoff = u64_at(&elf, 32) as usize;
        assert_eq!(u16_at(&elf, 54), PHDR_SIZE);
        assert_eq!(u16_at(&elf, 56), 1, "e_phnum");

        let ph = &elf[phoff..phoff + usize::from(PHDR_SIZE)];
        assert_eq!(u32_at(ph, 0), PT_LOAD);
        let offset = u64_at(ph, 8);
        assert_eq!(u64_at(ph, 16), LOAD_ADDR, "p_vaddr");
        assert_eq!(u64_at(ph, 24), LOAD_ADDR, "p_paddr");
        let filesz = u64_at(ph, 32) as usize;
        assert_eq!(u64_at(ph, 40), filesz as u64, "p_memsz");
        assert_eq!(offset % u64_at(ph, 48), LOAD_ADDR % u64_at(ph, 48));
        assert_eq!(
            &elf[offset as usize..offset as usize + filesz],
            COM1_SCRATCH_LOOP
        );
    }

    #[test]
    fn loads_through_the_kernel_loader() {
        let elf = kernel(TRIPLE_FAULT);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        let loaded = Elf::load(
            &mem,
            None,
            &mut std::io::Cursor::new(elf),
            Some(GuestAddress(0x10_0000)),
        )
        .unwrap();
        assert_eq!(loaded.kernel_load, GuestAddress(LOAD_ADDR));
        let mut code = [0u8; 2];
        mem.read_slice(&mut code, GuestAddress(LOAD_ADDR)).unwrap();
        assert_eq!(code, TRIPLE_FAULT);
    }
}
