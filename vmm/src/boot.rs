//! Linux x86-64 boot: the kernel ELF, the initramfs, the zero page and the vCPU's entry state.
//!
//! simvm enters the kernel's 64-bit entry point (`startup_64`) directly, as the 64-bit boot
//! protocol allows: long mode with an identity map of the first 1 GiB and `RSI` pointing at the
//! zero page. That skips the real-mode and 32-bit setup code, all of which would run in KVM's
//! instruction emulator on a PVM host.

use std::fs::File;
use std::path::Path;

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{load_cmdline, Cmdline, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::error::{Error, Result};
use crate::layout::*;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const SETUP_RNG_SEED: u32 = 9;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// What the machine needs to boot.
pub struct BootImage<'a> {
    pub kernel: &'a Path,
    /// Initramfs archives, concatenated in order (the kernel unpacks each).
    pub initramfs: &'a [std::sync::Arc<[u8]>],
    pub cmdline: &'a str,
    /// Seed for the guest kernel's RNG, passed as `SETUP_RNG_SEED`.
    pub rng_seed: [u8; 32],
}

/// Loads everything into guest memory and returns the kernel's entry point.
pub fn load(mem: &GuestMemoryMmap, mem_size: u64, image: &BootImage) -> Result<u64> {
    let mut kernel = File::open(image.kernel).map_err(|source| Error::KernelOpen {
        path: image.kernel.to_owned(),
        source,
    })?;
    let loaded = Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIGH_RAM_START))).map_err(
        |source| Error::KernelLoad {
            path: image.kernel.to_owned(),
            reason: source.to_string(),
        },
    )?;
    // `kernel_end` is already an absolute guest-physical address.
    let kernel_end = loaded.kernel_end;

    let (initrd_addr, initrd_size) = load_initramfs(mem, mem_size, kernel_end, image.initramfs)?;

    let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(|e| Error::Cmdline(e.to_string()))?;
    cmdline
        .insert_str(image.cmdline)
        .map_err(|e| Error::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE), &cmdline)
        .map_err(|e| Error::Cmdline(e.to_string()))?;

    write_rng_seed(mem, &image.rng_seed)?;
    write_zero_page(mem, mem_size, image.cmdline.len(), initrd_addr, initrd_size)?;
    write_page_tables(mem)?;
    write_gdt(mem)?;
    Ok(loaded.kernel_load.0)
}

/// Places the concatenated archives page-aligned as high as possible below `INITRD_MAX_END`.
fn load_initramfs(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel_end: u64,
    archives: &[impl AsRef<[u8]>],
) -> Result<(u64, u64)> {
    let size: u64 = archives.iter().map(|a| a.as_ref().len() as u64).sum();
    if size == 0 {
        return Err(Error::EmptyInitramfs);
    }
    let top = mem_size.min(INITRD_MAX_END);
    let addr = top.checked_sub(size).map(|a| a & !0xfff);
    let addr = match addr {
        Some(addr) if addr >= kernel_end => addr,
        Some(_) | None => {
            return Err(Error::MemoryTooSmall {
                mem_size,
                needed: kernel_end + size + (16 << 20),
            })
        }
    };
    let mut at = addr;
    for archive in archives {
        let archive = archive.as_ref();
        mem.write_slice(archive, GuestAddress(at))
            .map_err(|e| Error::GuestMemory(e.to_string()))?;
        at += archive.len() as u64;
    }
    Ok((addr, size))
}

fn write_rng_seed(mem: &GuestMemoryMmap, seed: &[u8; 32]) -> Result<()> {
    // struct setup_data { u64 next; u32 type; u32 len; u8 data[]; }
    let mut entry = Vec::with_capacity(16 + seed.len());
    entry.extend_from_slice(&0u64.to_le_bytes());
    entry.extend_from_slice(&SETUP_RNG_SEED.to_le_bytes());
    entry.extend_from_slice(&(seed.len() as u32).to_le_bytes());
    entry.extend_from_slice(seed);
    mem.write_slice(&entry, GuestAddress(SETUP_DATA))
        .map_err(|e| Error::GuestMemory(e.to_string()))
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cmdline_len: usize,
    initrd_addr: u64,
    initrd_size: u64,
) -> Result<()> {
    let mut params = boot_params::default();
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.kernel_alignment = 0x0100_0000;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.ramdisk_image = initrd_addr as u32;
    params.hdr.ramdisk_size = initrd_size as u32;
    params.hdr.setup_data = SETUP_DATA;

    let e820 = [
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIGH_RAM_START - EBDA_START, E820_RESERVED),
        (HIGH_RAM_START, mem_size - HIGH_RAM_START, E820_RAM),
    ];
    for (slot, (addr, size, kind)) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr,
            size,
            r#type: kind,
        };
    }
    params.e820_entries = e820.len() as u8;

    mem.write_obj(params, GuestAddress(ZERO_PAGE))
        .map_err(|e| Error::GuestMemory(e.to_string()))
}

/// Identity-maps the first 1 GiB with 2 MiB pages, enough for the kernel to reach its own
/// tables, and the fourth GiB, so that code without tables of its own (test guests) can reach
/// the virtio-mmio windows.
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let write = |value: u64, addr: u64| {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(|e| Error::GuestMemory(e.to_string()))
    };
    write(PDPT | 0x03, PML4)?;
    write(PD | 0x03, PDPT)?;
    write(PD_DEVICES | 0x03, PDPT + 3 * 8)?;
    for i in 0..512u64 {
        // Present, writable, 2 MiB page.
        write((i << 21) | 0x83, PD + i * 8)?;
        // The same, uncached (PCD | PWT): device memory.
        write((3 << 30) | (i << 21) | 0x9b, PD_DEVICES + i * 8)?;
    }
    Ok(())
}

/// The flat boot GDT: null, 64-bit code, data, TSS.
const GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

fn segment(index: u16) -> kvm_segment {
    let entry = GDT[index as usize];
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn write_gdt(mem: &GuestMemoryMmap) -> Result<()> {
    for (i, entry) in GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT + i as u64 * 8))
            .map_err(|e| Error::GuestMemory(e.to_string()))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT))
        .map_err(|e| Error::GuestMemory(e.to_string()))
}

/// Puts the vCPU in long mode at `entry` with the zero page in `RSI`.
pub fn setup_vcpu(vcpu: &VcpuFd, entry: u64) -> Result<()> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    let code = segment(1);
    let data = segment(2);
    let mut tss = segment(3);
    tss.s = 0;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.gdt.base = BOOT_GDT;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT;
    sregs.idt.limit = 7;
    sregs.cr3 = PML4;
    sregs.cr4 = X86_CR4_PAE;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)
        .map_err(Error::kvm("KVM_SET_SREGS"))?;

    let regs = kvm_regs {
        rip: entry,
        rsp: BOOT_STACK_TOP,
        rbp: BOOT_STACK_TOP,
        rsi: ZERO_PAGE,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(Error::kvm("KVM_SET_FPU"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_long_mode_segments() {
        let code = segment(1);
        assert_eq!((code.l, code.db, code.present, code.type_), (1, 0, 1, 0xb));
        let data = segment(2);
        assert_eq!((data.l, data.db, data.present, data.type_), (0, 1, 1, 0x3));
        assert_eq!(segment(3).type_, 0xb);
    }

    #[test]
    fn initramfs_goes_high_and_page_aligned() {
        let size = 64 << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
        let archives = vec![vec![1u8; 5000], vec![2u8; 100]];
        let (addr, len) = load_initramfs(&mem, size, 0x200_0000, &archives).unwrap();
        assert_eq!(len, 5100);
        assert_eq!(addr % 4096, 0);
        assert!(addr + len <= size);
        let mut byte = [0u8; 1];
        mem.read_slice(&mut byte, GuestAddress(addr + 5000))
            .unwrap();
        assert_eq!(byte, [2]);
    }

    #[test]
    fn initramfs_that_does_not_fit_is_an_error() {
        let size = 4 << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
        let archives = vec![vec![0u8; 3 << 20]];
        let err = load_initramfs(&mem, size, 0x20_0000, &archives).unwrap_err();
        assert!(matches!(err, Error::MemoryTooSmall { .. }));
    }

    #[test]
    fn an_empty_initramfs_is_its_own_error_not_too_little_memory() {
        let size = 64 << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
        let err = load_initramfs(&mem, size, 0x20_0000, &[Vec::<u8>::new()]).unwrap_err();
        assert!(matches!(err, Error::EmptyInitramfs), "{err}");
    }
}
