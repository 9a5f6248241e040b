//! Fingerprints of a guest's whole state: its registers and all of its memory.
//!
//! The digest covers what a guest does at its exits. A divergence that stays inside the guest (a
//! byte of memory, a register) shows there only later, if ever, far from its cause. With
//! `--trace-state` the world records a [`StateFingerprint`] after every step: in the JSON trace
//! and in the per-event fingerprints `--check-determinism` compares, not in the digest. Two runs
//! of one seed are then compared on everything the guest holds, and the first step at which they
//! part is named. Hashing all of RAM after every exit costs tens of milliseconds per 128 MiB:
//! this is a tool for chasing a divergence, not for every run.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use serde::Serialize;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

/// What a machine's guest holds after a step, reduced to three numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct StateFingerprint {
    pub rip: u64,
    /// Hash of the general-purpose, control and segment registers.
    pub registers: u64,
    /// Hash of the x87/SSE state (the only FPU state simvm guests have: `noxsave`) and of the
    /// MSRs system calls and segments depend on ([`STATE_MSRS`]).
    pub fpu_msrs: u64,
    /// Hash of every byte of guest RAM.
    pub memory: u64,
}

/// Hashes the registers a guest's execution depends on.
pub fn registers(regs: &kvm_regs, sregs: &kvm_sregs) -> u64 {
    let general = [
        regs.rax,
        regs.rbx,
        regs.rcx,
        regs.rdx,
        regs.rsi,
        regs.rdi,
        regs.rsp,
        regs.rbp,
        regs.r8,
        regs.r9,
        regs.r10,
        regs.r11,
        regs.r12,
        regs.r13,
        regs.r14,
        regs.r15,
        regs.rip,
        regs.rflags,
    ];
    let control = [
        sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.cr8, sregs.efer,
    ];
    let segments = [
        &sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss, &sregs.tr,
    ];
    let mut hasher = blake3::Hasher::new();
    for value in general.iter().chain(&control) {
        hasher.update(&value.to_le_bytes());
    }
    for segment in segments {
        hasher.update(&segment_bytes(segment));
    }
    first_u64(&hasher.finalize())
}

/// The MSRs whose values steer guest execution between exits: system call entry, segment
/// bases, SYSENTER, PAT, EFER. (Time MSRs are answered from virtual time and never stored.)
pub const STATE_MSRS: [u32; 12] = [
    0xc000_0080, // EFER
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0100, // FS_BASE
    0xc000_0101, // GS_BASE
    0xc000_0102, // KERNEL_GS_BASE
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0x277,       // PAT
];

/// Hashes the FPU/SSE registers and the MSR values read (index and value of each).
pub fn fpu_msrs(fpu: &kvm_fpu, msrs: &[kvm_msr_entry]) -> u64 {
    let mut hasher = blake3::Hasher::new();
    for register in &fpu.fpr {
        hasher.update(register);
    }
    for register in &fpu.xmm {
        hasher.update(register);
    }
    hasher.update(&fpu.fcw.to_le_bytes());
    hasher.update(&fpu.fsw.to_le_bytes());
    hasher.update(&[fpu.ftwx]);
    hasher.update(&fpu.last_opcode.to_le_bytes());
    hasher.update(&fpu.last_ip.to_le_bytes());
    hasher.update(&fpu.last_dp.to_le_bytes());
    hasher.update(&fpu.mxcsr.to_le_bytes());
    for msr in msrs {
        hasher.update(&msr.index.to_le_bytes());
        hasher.update(&msr.data.to_le_bytes());
    }
    first_u64(&hasher.finalize())
}

fn segment_bytes(s: &kvm_segment) -> [u8; 18] {
    let mut out = [0u8; 18];
    out[..8].copy_from_slice(&s.base.to_le_bytes());
    out[8..12].copy_from_slice(&s.limit.to_le_bytes());
    out[12..14].copy_from_slice(&s.selector.to_le_bytes());
    out[14] = s.type_;
    out[15] = s.dpl;
    out[16] = s.l;
    out[17] = s.present;
    out
}

/// Hashes every byte of guest RAM, region by region in address order.
pub fn memory(mem: &GuestMemoryMmap) -> u64 {
    let mut hasher = blake3::Hasher::new();
    for region in mem.iter() {
        let Ok(host) = region.get_host_address(MemoryRegionAddress(0)) else {
            continue;
        };
        let len = region.len() as usize;
        // SAFETY: `host` is the start of the region's mapping, which is `len` bytes long and
        // lives as long as `mem`. The vCPU is stopped (this runs between exits, on the thread
        // that runs it) and devices write guest memory only on this thread, so nothing changes
        // the bytes while the slice exists.
        let bytes = unsafe { std::slice::from_raw_parts(host.cast_const(), len) };
        hasher.update(&(region.start_addr().0).to_le_bytes());
        hasher.update(bytes);
    }
    first_u64(&hasher.finalize())
}

fn first_u64(hash: &blake3::Hash) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn one_byte_of_memory_changes_the_memory_hash() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let before = memory(&mem);
        assert_eq!(memory(&mem), before);
        mem.write_obj(1u8, GuestAddress(0x8000)).unwrap();
        assert_ne!(memory(&mem), before);
    }

    #[test]
    fn sse_x87_and_msr_state_count() {
        let fpu = kvm_fpu::default();
        let msrs = [kvm_msr_entry {
            index: 0xc000_0082,
            data: 0xffff_ffff_8100_0000,
            ..Default::default()
        }];
        let base = fpu_msrs(&fpu, &msrs);
        assert_eq!(fpu_msrs(&fpu, &msrs), base);
        let mut xmm = fpu;
        xmm.xmm[7][3] = 1;
        assert_ne!(fpu_msrs(&xmm, &msrs), base);
        let mut x87 = fpu;
        x87.fpr[0][9] = 0x40;
        assert_ne!(fpu_msrs(&x87, &msrs), base);
        let mxcsr = kvm_fpu {
            mxcsr: 0x1f80,
            ..fpu
        };
        assert_ne!(fpu_msrs(&mxcsr, &msrs), base);
        let lstar = [kvm_msr_entry {
            data: 0xffff_ffff_8100_0010,
            ..msrs[0]
        }];
        assert_ne!(fpu_msrs(&fpu, &lstar), base);
    }

    #[test]
    fn each_register_class_counts() {
        let (regs, sregs) = (kvm_regs::default(), kvm_sregs::default());
        let base = registers(&regs, &sregs);
        assert_eq!(registers(&regs, &sregs), base);
        let rip = kvm_regs { rip: 1, ..regs };
        assert_ne!(registers(&rip, &sregs), base);
        let cr3 = kvm_sregs {
            cr3: 0x1000,
            ..sregs
        };
        assert_ne!(registers(&regs, &cr3), base);
        let mut cs = sregs;
        cs.cs.selector = 0x33;
        assert_ne!(registers(&regs, &cs), base);
    }
}
