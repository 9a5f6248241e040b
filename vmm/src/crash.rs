//! What simvm reports when a guest dies: which machine, when, why, its registers, the bytes at
//! its instruction pointer and the end of its console.

use std::fmt;

use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Why the guest stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashKind {
    /// `KVM_EXIT_SHUTDOWN`: a triple fault (or a shutdown the guest asked for the hard way).
    TripleFault,
    /// `KVM_EXIT_INTERNAL_ERROR`, typically an instruction KVM could not emulate.
    InternalError { suberror: u32 },
    /// `KVM_EXIT_FAIL_ENTRY`: the CPU refused the guest state.
    FailEntry { reason: u64 },
    /// The guest kernel reported a panic.
    KernelPanic,
    /// An exit simvm does not handle.
    UnexpectedExit(String),
}

impl fmt::Display for CrashKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TripleFault => write!(f, "triple fault (KVM_EXIT_SHUTDOWN)"),
            Self::InternalError { suberror: 1 } => {
                write!(
                    f,
                    "KVM could not emulate an instruction (KVM_EXIT_INTERNAL_ERROR, suberror 1)"
                )
            }
            Self::InternalError { suberror } => {
                write!(
                    f,
                    "KVM internal error (KVM_EXIT_INTERNAL_ERROR, suberror {suberror})"
                )
            }
            Self::FailEntry { reason } => write!(f, "VM entry failed (reason {reason:#x})"),
            Self::KernelPanic => write!(f, "guest kernel panic"),
            Self::UnexpectedExit(what) => write!(f, "unexpected VM exit: {what}"),
        }
    }
}

/// Everything needed to understand a dead guest without re-running it.
#[derive(Debug, Clone)]
pub struct CrashReport {
    pub machine: String,
    pub step: u64,
    pub vtime_ns: u64,
    pub kind: CrashKind,
    pub regs: Option<(kvm_regs, kvm_sregs)>,
    /// Up to 16 bytes at RIP, when RIP translates to guest RAM.
    pub code: Option<Vec<u8>>,
    pub console_tail: Vec<String>,
}

impl fmt::Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "machine {} died at step {} (virtual time {}): {}",
            self.machine,
            self.step,
            crate::console::format_vtime(self.vtime_ns),
            self.kind
        )?;
        if let Some((r, s)) = &self.regs {
            writeln!(
                f,
                "  rip {:016x} rsp {:016x} rflags {:08x}",
                r.rip, r.rsp, r.rflags
            )?;
            writeln!(
                f,
                "  rax {:016x} rbx {:016x} rcx {:016x} rdx {:016x}",
                r.rax, r.rbx, r.rcx, r.rdx
            )?;
            writeln!(
                f,
                "  rsi {:016x} rdi {:016x} rbp {:016x} r8  {:016x}",
                r.rsi, r.rdi, r.rbp, r.r8
            )?;
            writeln!(
                f,
                "  r9  {:016x} r10 {:016x} r11 {:016x} r12 {:016x}",
                r.r9, r.r10, r.r11, r.r12
            )?;
            writeln!(
                f,
                "  r13 {:016x} r14 {:016x} r15 {:016x}",
                r.r13, r.r14, r.r15
            )?;
            writeln!(
                f,
                "  cr0 {:x} cr2 {:x} cr3 {:x} cr4 {:x} efer {:x} cs {:x} (cpl {})",
                s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.cs.dpl
            )?;
        }
        match &self.code {
            Some(code) => {
                let hex: Vec<String> = code.iter().map(|b| format!("{b:02x}")).collect();
                writeln!(f, "  code at rip: {}", hex.join(" "))?;
            }
            None => writeln!(f, "  code at rip: not in guest RAM")?,
        }
        if self.console_tail.is_empty() {
            write!(f, "  console: (nothing)")?;
        } else {
            write!(f, "  console tail:")?;
            for line in &self.console_tail {
                write!(f, "\n  | {line}")?;
            }
        }
        Ok(())
    }
}

/// Translates a guest-virtual address through the guest's 4-level page tables.
pub fn translate(mem: &GuestMemoryMmap, sregs: &kvm_sregs, vaddr: u64) -> Option<u64> {
    const PRESENT: u64 = 1;
    const HUGE: u64 = 1 << 7;
    const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
    if sregs.cr0 & (1 << 31) == 0 {
        return Some(vaddr);
    }
    if sregs.efer & (1 << 10) == 0 {
        // 32-bit paging is only used by real-mode-era code simvm never boots.
        return None;
    }
    let mut table = sregs.cr3 & ADDR_MASK;
    for level in (0..4).rev() {
        let shift = 12 + 9 * level;
        let index = (vaddr >> shift) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress(table + index * 8)).ok()?;
        if entry & PRESENT == 0 {
            return None;
        }
        let is_leaf = level == 0 || (level <= 2 && entry & HUGE != 0);
        if is_leaf {
            let page_mask = (1u64 << shift) - 1;
            return Some((entry & ADDR_MASK & !page_mask) | (vaddr & page_mask));
        }
        table = entry & ADDR_MASK;
    }
    None
}

/// Reads up to 16 bytes of code at `rip`, stopping at the end of its page's mapping.
pub fn code_at(mem: &GuestMemoryMmap, sregs: &kvm_sregs, rip: u64) -> Option<Vec<u8>> {
    let phys = translate(mem, sregs, rip)?;
    let in_page = (4096 - (phys & 0xfff)).min(16) as usize;
    let mut code = vec![0u8; in_page];
    mem.read_slice(&mut code, GuestAddress(phys)).ok()?;
    Some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_through_a_2mib_mapping() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        // PML4[0] -> PDPT at 0x2000 -> PD at 0x3000, PD[1] maps 2 MiB at 0x20_0000.
        mem.write_obj(0x2003u64, GuestAddress(0x1000)).unwrap();
        mem.write_obj(0x3003u64, GuestAddress(0x2000)).unwrap();
        mem.write_obj(0x20_0083u64, GuestAddress(0x3008)).unwrap();
        mem.write_slice(&[0x0f, 0x0b], GuestAddress(0x20_1234))
            .unwrap();
        let sregs = kvm_sregs {
            cr0: 1 << 31 | 1,
            cr3: 0x1000,
            efer: 1 << 10 | 1 << 8,
            ..Default::default()
        };
        assert_eq!(translate(&mem, &sregs, 0x20_1234), Some(0x20_1234));
        assert_eq!(translate(&mem, &sregs, 0x60_0000), None);
        let code = code_at(&mem, &sregs, 0x20_1234).unwrap();
        assert_eq!(&code[..2], &[0x0f, 0x0b]);
    }
}
