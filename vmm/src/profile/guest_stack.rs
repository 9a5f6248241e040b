//! What the guest was doing at a sample, read from its memory while the vCPU is stopped: the
//! guest kernel's call stack (frame pointers) and the name of the running process.

use std::path::Path;

use kvm_bindings::kvm_sregs;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::symbols::{map_beside, map_entries};

/// Kernel addresses start here (the upper half of the 48-bit address space).
const KERNEL_SPACE: u64 = 0xffff_8000_0000_0000;
/// Deeper stacks are cut: a corrupt frame chain must not run on.
const MAX_DEPTH: usize = 64;
/// The guest kernel's stacks: 16 KiB, aligned to their size (x86-64 `THREAD_SIZE`).
const KERNEL_STACK_SIZE: u64 = 16 << 10;

/// The guest kernel's call stack at a sample: `rip`, then the return addresses found by
/// following the frame pointers from `rbp` (the guest kernel is built with them), innermost
/// first. The chain ends at the first frame outside kernel space, guest memory or the stack it
/// started on: the entry code below the first frame has no frame pointer, and what lies there
/// would read as stale frames.
pub fn kernel_stack(mem: &GuestMemoryMmap, sregs: &kvm_sregs, rip: u64, rbp: u64) -> Vec<u64> {
    let read = |vaddr: u64| -> Option<u64> {
        let phys = crate::crash::translate(mem, sregs, vaddr)?;
        mem.read_obj(GuestAddress(phys)).ok()
    };
    let mut stack = vec![rip];
    let mut frame = rbp;
    let on_stack = |addr: u64| addr & !(KERNEL_STACK_SIZE - 1) == rbp & !(KERNEL_STACK_SIZE - 1);
    while stack.len() < MAX_DEPTH
        && frame >= KERNEL_SPACE
        && frame.is_multiple_of(8)
        && on_stack(frame)
    {
        let (Some(next), Some(ret)) = (read(frame), read(frame.wrapping_add(8))) else {
            break;
        };
        if ret < KERNEL_SPACE {
            break;
        }
        stack.push(ret);
        if next == frame {
            break;
        }
        frame = next;
    }
    stack
}

/// Where the guest kernel keeps the running task, to name the process a user sample is in:
/// `pcpu_hot.current_task` (at offset 0; the guest kernel has one CPU, so per-CPU data is plain
/// data) and the task's `comm`, whose offset is found once by looking for the idle task's
/// name in `init_task`.
#[derive(Clone, Debug)]
pub struct ProcessProbe {
    pcpu_hot: u64,
    init_task: u64,
    /// Offset of `comm` in `struct task_struct`: unknown until found, `None` inside if absent.
    comm_offset: Option<Option<u64>>,
}

/// `struct task_struct` is a few KiB; `comm` lies well within this.
const TASK_SEARCH_BYTES: usize = 8192;
const COMM_LEN: usize = 16;

impl ProcessProbe {
    /// The probe for the kernel whose `System.map` lies beside `kernel`, if it has the symbols.
    pub fn beside(kernel: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(map_beside(kernel)).ok()?;
        let find = |wanted: &str| {
            map_entries(&text).find_map(|(addr, _, name)| (name == wanted).then_some(addr))
        };
        Some(Self {
            pcpu_hot: find("pcpu_hot")?,
            init_task: find("init_task")?,
            comm_offset: None,
        })
    }

    /// The name of the process the guest is running, read from guest memory.
    pub fn current_comm(&mut self, mem: &GuestMemoryMmap, sregs: &kvm_sregs) -> Option<String> {
        let read = |vaddr: u64, out: &mut [u8]| -> Option<()> {
            // Kernel data does not cross pages here (a 16-byte name, a pointer); check anyway.
            let phys = crate::crash::translate(mem, sregs, vaddr)?;
            let end = crate::crash::translate(mem, sregs, vaddr + out.len() as u64 - 1)?;
            (end == phys + out.len() as u64 - 1).then_some(())?;
            mem.read_slice(out, GuestAddress(phys)).ok()
        };
        let offset = match self.comm_offset {
            Some(offset) => offset?,
            None => {
                let mut task = vec![0u8; TASK_SEARCH_BYTES];
                let found = (0..task.len() / 4096).all(|page| {
                    let at = page * 4096;
                    read(self.init_task + at as u64, &mut task[at..at + 4096]).is_some()
                });
                let offset = found
                    .then(|| task.windows(8).position(|w| w == b"swapper\0"))
                    .flatten()
                    .map(|o| o as u64);
                self.comm_offset = Some(offset);
                offset?
            }
        };
        let mut pointer = [0u8; 8];
        read(self.pcpu_hot, &mut pointer)?;
        let task = u64::from_le_bytes(pointer);
        let mut comm = [0u8; COMM_LEN];
        read(task.checked_add(offset)?, &mut comm)?;
        let len = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        let name: String = String::from_utf8_lossy(&comm[..len])
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || "-_./:".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        (!name.is_empty()).then_some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4 MiB of guest memory whose page tables (at 0x1000) map virtual 0xffff_ffff_c000_0000
    /// to physical 0x20_0000 with one 2 MiB page: PML4[511] -> PDPT[511] -> PD[0].
    fn kernel_mapped_memory() -> (GuestMemoryMmap, kvm_sregs) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        mem.write_obj(0x2003u64, GuestAddress(0x1000 + 511 * 8))
            .unwrap();
        mem.write_obj(0x3003u64, GuestAddress(0x2000 + 511 * 8))
            .unwrap();
        mem.write_obj(0x20_0083u64, GuestAddress(0x3000)).unwrap();
        let sregs = kvm_sregs {
            cr0: 1 << 31 | 1,
            cr3: 0x1000,
            efer: 1 << 10 | 1 << 8,
            ..Default::default()
        };
        (mem, sregs)
    }

    #[test]
    fn kernel_stacks_follow_frame_pointers_until_they_leave_the_kernel() {
        let (mem, sregs) = kernel_mapped_memory();
        let base = 0xffff_ffff_c000_0000u64;
        let frame = |offset: u64, next: u64, ret: u64| {
            mem.write_obj(next, GuestAddress(0x20_0000 + offset))
                .unwrap();
            mem.write_obj(ret, GuestAddress(0x20_0000 + offset + 8))
                .unwrap();
        };
        frame(0x100, base + 0x200, 0xffff_ffff_8100_1000);
        frame(0x200, base + 0x300, 0xffff_ffff_8100_2000);
        frame(0x300, 0x7fff_0000, 0x40_1000); // returns to user space: the chain ends
        frame(0x400, base + 0x8000, 0xffff_ffff_8100_4000);
        frame(0x8000, base + 0x8100, 0xffff_ffff_8100_8000); // another stack: not followed
        let stack = kernel_stack(&mem, &sregs, 0xffff_ffff_8100_0005, base + 0x100);
        assert_eq!(
            stack,
            vec![
                0xffff_ffff_8100_0005,
                0xffff_ffff_8100_1000,
                0xffff_ffff_8100_2000
            ]
        );
        let stack = kernel_stack(&mem, &sregs, 0xffff_ffff_8100_0005, base + 0x400);
        assert_eq!(stack, vec![0xffff_ffff_8100_0005, 0xffff_ffff_8100_4000]);
        // An unmapped frame pointer ends the stack at the instruction pointer.
        assert_eq!(kernel_stack(&mem, &sregs, 7, base + 0x40_0000), vec![7]);
    }

    #[test]
    fn the_process_of_a_user_sample_is_read_from_the_running_task() {
        let (mem, sregs) = kernel_mapped_memory();
        let base = 0xffff_ffff_c000_0000u64;
        let (init_task, pcpu_hot, task, comm) = (0x1_0000u64, 0x3_0000u64, 0x5_0000u64, 0x7a8u64);
        mem.write_slice(b"swapper\0", GuestAddress(0x20_0000 + init_task + comm))
            .unwrap();
        mem.write_slice(b"etcd\0", GuestAddress(0x20_0000 + task + comm))
            .unwrap();
        mem.write_obj(base + task, GuestAddress(0x20_0000 + pcpu_hot))
            .unwrap();
        let mut probe = ProcessProbe {
            pcpu_hot: base + pcpu_hot,
            init_task: base + init_task,
            comm_offset: None,
        };
        assert_eq!(probe.current_comm(&mem, &sregs).as_deref(), Some("etcd"));
        assert_eq!(probe.comm_offset, Some(Some(comm)));
        // A task pointer into nowhere names no process.
        mem.write_obj(0x1234u64, GuestAddress(0x20_0000 + pcpu_hot))
            .unwrap();
        assert_eq!(probe.current_comm(&mem, &sregs), None);
    }
}
