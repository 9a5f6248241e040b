//! What the guest was doing at a sample, read from its memory while the vCPU is stopped: the
//! guest kernel's call stack (with its ORC tables, or its frame pointers) and the name of the
//! running process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::orc::{reg, FrameKind, OrcTable};
use super::symbols::{frame_address, map_beside, map_entries, Symbols};

/// Kernel addresses start here (the upper half of the 48-bit address space).
const KERNEL_SPACE: u64 = 0xffff_8000_0000_0000;
/// Deeper stacks are cut: a corrupt frame chain must not run on.
const MAX_DEPTH: usize = 64;
/// The guest kernel's stacks: 16 KiB, aligned to their size (x86-64 `THREAD_SIZE`).
const KERNEL_STACK_SIZE: u64 = 16 << 10;

/// How the guest kernel's call stack is walked at a sample.
#[derive(Clone, Debug)]
pub struct StackWalker {
    /// How a frame leads to its caller's.
    pub unwinder: Unwinder,
    /// The kernel's system call handlers, to name the call a stack is in and root it at its
    /// entry; `None` where `System.map` lacks them.
    syscalls: Option<Arc<SyscallHandlers>>,
}

/// How a frame of the guest kernel's stack leads to its caller's.
#[derive(Clone, Debug)]
pub enum Unwinder {
    /// Along the chain of saved frame pointers (a kernel built with `CONFIG_FRAME_POINTER`).
    FramePointers,
    /// With the kernel's ORC tables (`CONFIG_UNWINDER_ORC`), read from its vmlinux.
    Orc(Arc<OrcTable>),
}

/// What sampling needs from one guest kernel's files: read once per kernel and shared by the
/// machines that boot it (a clone shares the ORC tables).
#[derive(Clone, Debug)]
pub struct KernelProbes {
    /// Names the process of a user sample; `None` where `System.map` lacks its symbols.
    pub process: Option<ProcessProbe>,
    /// Walks the kernel stack of a kernel sample.
    pub stacks: StackWalker,
}

impl KernelProbes {
    /// The probes for the kernel at `kernel`, from its vmlinux and the `System.map` beside it.
    pub fn for_kernel(kernel: &Path) -> Self {
        let map = std::fs::read_to_string(map_beside(kernel)).ok();
        Self {
            process: map.as_deref().and_then(ProcessProbe::from_map),
            stacks: StackWalker::with_map(kernel, map.as_deref()),
        }
    }
}

/// The probes of every guest kernel a run profiles, each read once.
#[derive(Debug, Default)]
pub struct KernelProbeCache(BTreeMap<PathBuf, KernelProbes>);

impl KernelProbeCache {
    /// The probes for the kernel at `kernel`, read on first use.
    pub fn get(&mut self, kernel: &Path) -> KernelProbes {
        self.0
            .entry(kernel.to_path_buf())
            .or_insert_with(|| KernelProbes::for_kernel(kernel))
            .clone()
    }
}

impl StackWalker {
    /// Along frame pointers, with nothing known about the kernel's functions: a machine's
    /// walker until its profile is enabled.
    pub fn frame_pointers() -> Self {
        Self {
            unwinder: Unwinder::FramePointers,
            syscalls: None,
        }
    }

    /// The walker for the kernel at `kernel`, whose `System.map` is `map`: its ORC tables where
    /// it has them, else its frame pointers.
    fn with_map(kernel: &Path, map: Option<&str>) -> Self {
        let unwinder = match OrcTable::from_vmlinux(kernel) {
            Some(table) => Unwinder::Orc(Arc::new(table)),
            None => Unwinder::FramePointers,
        };
        let syscalls = map.and_then(SyscallHandlers::from_map).map(Arc::new);
        Self { unwinder, syscalls }
    }

    /// The guest kernel's call stack at a sample taken in kernel mode, innermost first: the
    /// instruction pointer, then the return addresses of its callers.
    pub fn kernel_stack(
        &self,
        mem: &GuestMemoryMmap,
        sregs: &kvm_sregs,
        regs: &kvm_regs,
    ) -> Vec<u64> {
        let read = |vaddr: u64| -> Option<u64> {
            let phys = crate::crash::translate(mem, sregs, vaddr)?;
            mem.read_obj(GuestAddress(phys)).ok()
        };
        let (mut stack, user_entry) = match &self.unwinder {
            Unwinder::FramePointers => frame_pointer_stack(read, regs.rip, regs.rbp),
            Unwinder::Orc(table) => orc_stack(table, read, regs),
        };
        if let Some(syscalls) = &self.syscalls {
            // The entry code from user mode runs with the user's frame pointer until it has
            // saved the registers: where a frame-pointer walk stops at once on such a value,
            // the sample is in an entry from user mode (an ORC walk finds its pt_regs).
            let entering_from_user = matches!(self.unwinder, Unwinder::FramePointers)
                && stack.len() == 1
                && regs.rbp < KERNEL_SPACE;
            syscalls.name_the_call(&mut stack, user_entry, read);
            syscalls.root_at_the_syscall_entry(
                &mut stack,
                user_entry.is_some() || entering_from_user,
                sregs.cr2,
            );
        }
        stack
    }
}

/// The guest kernel's system call handlers and the functions around them, from its
/// `System.map`.
///
/// `do_syscall_64()` calls `x64_sys_call()`, whose switch jumps to the call's handler
/// (`__x64_sys_read`), and without frame pointers GCC turns a handler's call of its worker
/// into a jump too (`__x64_sys_mmap` to `ksys_mmap_pgoff()`): a stack then goes from
/// `do_syscall_64` straight into the worker's callees, and the call's name is nowhere in it.
/// The call's number is: the entry saved it as `orig_ax` in the `pt_regs` at the base of the
/// stack, and `sys_call_table` maps it to its handler.
#[derive(Debug)]
struct SyscallHandlers {
    /// Where `do_syscall_64` starts.
    dispatcher: u64,
    /// Where `x64_sys_call` starts.
    switch: u64,
    /// The address of `sys_call_table`.
    table: u64,
    /// Where each handler (`__x64_sys_*`) starts, sorted.
    handlers: Vec<u64>,
    /// Where a system call arrives as a page fault (guest patch 0002), if the kernel has the
    /// functions: `entry_SYSCALL_64` and the page fault's entry and handler.
    fault_entry: Option<SyscallFault>,
    /// The kernel's functions.
    symbols: Symbols,
}

/// The functions of a system call that arrives as a page fault: on a PVM host a `SYSCALL` from
/// user mode faults fetching the first instruction of `entry_SYSCALL_64` (CR2 holds its
/// address), and `exc_page_fault()` runs the call (guest patch 0002).
#[derive(Debug)]
struct SyscallFault {
    /// Where `entry_SYSCALL_64` starts: the faulting address.
    syscall_entry: u64,
    /// Where `asm_exc_page_fault`, the fault's entry stub, starts.
    stub: u64,
    /// Where `exc_page_fault` starts.
    handler: u64,
}

impl SyscallFault {
    fn from_symbols(symbols: &Symbols) -> Option<Self> {
        Some(Self {
            syscall_entry: symbols.address_of("entry_SYSCALL_64")?,
            stub: symbols.address_of("asm_exc_page_fault")?,
            handler: symbols.address_of("exc_page_fault")?,
        })
    }
}

/// The opcode of a direct near call (`call rel32`), five bytes with its operand.
const CALL_REL32: u8 = 0xe8;
/// Linux x86-64 has about 460 system calls; a larger number is not one.
const MAX_SYSCALLS: u64 = 1024;

impl SyscallHandlers {
    fn from_map(map: &str) -> Option<Self> {
        let symbols = Symbols::parse(map);
        let table =
            map_entries(map).find_map(|(addr, _, name)| (name == "sys_call_table").then_some(addr));
        let handlers = symbols
            .functions()
            .filter(|(_, name)| name.starts_with("__x64_sys_"))
            .map(|(addr, _)| addr)
            .collect();
        let fault_entry = SyscallFault::from_symbols(&symbols);
        Some(Self {
            dispatcher: symbols.address_of("do_syscall_64")?,
            switch: symbols.address_of("x64_sys_call")?,
            table: table?,
            handlers,
            fault_entry,
            symbols,
        })
    }

    /// Puts a system call that arrived as a page fault under `entry_SYSCALL_64`, as the
    /// outermost frame, so that the fault's entry work counts for the call and not as a page
    /// fault: a stack that ends (at the `pt_regs` of an entry from user mode) in the page
    /// fault's stub, when the fault handler called `do_syscall_64`, or, in the fault's own
    /// entry and handler before and after the call, when CR2 (`cr2`, the sample's) holds the
    /// address of `entry_SYSCALL_64`. A real page fault's stack stays as it is. `from_user`
    /// says the walk reached the entry from user mode.
    ///
    /// With the handler's frame: `entry_SYSCALL_64`, `asm_exc_page_fault`, `exc_page_fault`,
    /// `do_syscall_64`; where the handler jumps to `do_syscall_64` (the speed kernel's), its
    /// frame is not on the stack.
    fn root_at_the_syscall_entry(&self, stack: &mut Vec<u64>, from_user: bool, cr2: u64) {
        let Some(fault) = &self.fault_entry else {
            return;
        };
        let functions: Vec<Option<u64>> = stack
            .iter()
            .enumerate()
            .map(|(depth, &addr)| self.function_of(depth, addr))
            .collect();
        if !from_user || functions.last() != Some(&Some(fault.stub)) {
            return;
        }
        // The handler calls do_syscall_64, or jumps to it (then the stub is its caller).
        let dispatched_by_the_fault = functions.windows(2).any(|pair| {
            pair[0] == Some(self.dispatcher)
                && (pair[1] == Some(fault.handler) || pair[1] == Some(fault.stub))
        });
        let in_the_fault_entry = functions
            .iter()
            .all(|&f| f == Some(fault.stub) || f == Some(fault.handler));
        if dispatched_by_the_fault || (in_the_fault_entry && cr2 == fault.syscall_entry) {
            // A return address names the function of the byte before it.
            stack.push(fault.syscall_entry.wrapping_add(1));
        }
    }

    /// Where the function the stack frame at `depth` lies in starts.
    fn function_of(&self, depth: usize, addr: u64) -> Option<u64> {
        self.symbols.start_of(frame_address(depth, addr))
    }

    fn is_handler(&self, addr: u64) -> bool {
        self.handlers.binary_search(&addr).is_ok()
    }

    /// Puts the handler of the call a stack is in between `do_syscall_64` and its callee's
    /// frame where the stack lacks it, as a return address just inside the handler (so that
    /// it names the handler). Only a stack inside the handler's call is named: the entry and
    /// exit work around it (`do_syscall_64` itself, `syscall_exit_to_user_mode()`) and the
    /// switch stay as they are. `user_entry` is the `pt_regs` the call entered with.
    fn name_the_call(
        &self,
        stack: &mut Vec<u64>,
        user_entry: Option<u64>,
        read: impl Fn(u64) -> Option<u64>,
    ) {
        let in_dispatcher = |(depth, &addr): (usize, &u64)| {
            depth > 0 && self.function_of(depth, addr) == Some(self.dispatcher)
        };
        let Some(depth) = stack.iter().enumerate().position(in_dispatcher) else {
            return;
        };
        // What do_syscall_64 called: the five bytes before the return address.
        let ret = stack[depth];
        let Some(before) = read(ret.wrapping_sub(8)).map(u64::to_le_bytes) else {
            return;
        };
        if before[3] != CALL_REL32 {
            return;
        }
        let offset = i32::from_le_bytes([before[4], before[5], before[6], before[7]]);
        let called = ret.wrapping_add_signed(offset.into());
        let handler = if self.is_handler(called) {
            called
        } else if called == self.switch {
            let nr = user_entry.and_then(|at| read(at.wrapping_add(pt_regs::ORIG_AX)));
            match nr.filter(|&nr| nr < MAX_SYSCALLS) {
                Some(nr) => match read(self.table.wrapping_add(nr * 8)) {
                    Some(handler) if self.is_handler(handler) => handler,
                    _ => return,
                },
                None => return,
            }
        } else {
            return;
        };
        let callee = self.function_of(depth - 1, stack[depth - 1]);
        if callee != Some(handler) && callee != Some(called) {
            stack.insert(depth, handler.wrapping_add(1));
        }
    }
}

/// The stack by frame pointers: `rip`, then the return addresses found by following the chain
/// from `rbp`, through the registers an entry from kernel mode saved; and the `pt_regs` of the
/// entry from user mode where the chain reaches one. The chain ends at the first frame outside
/// kernel space, guest memory or the stack it started on: what lies beyond would read as stale
/// frames.
fn frame_pointer_stack(
    read: impl Fn(u64) -> Option<u64>,
    rip: u64,
    rbp: u64,
) -> (Vec<u64>, Option<u64>) {
    let mut stack = vec![rip];
    let mut frame = rbp;
    let on_stack = |addr: u64| addr & !(KERNEL_STACK_SIZE - 1) == rbp & !(KERNEL_STACK_SIZE - 1);
    while stack.len() < MAX_DEPTH && frame >= KERNEL_SPACE && on_stack(frame) {
        // An entry saved the registers and pointed the frame pointer one byte past them
        // (`ENCODE_FRAME_POINTER`): the interrupted kernel code's frame goes on from them, and
        // an entry from user mode is where the kernel stack ends.
        let next_frame = if frame % 8 == 1 {
            let regs = frame - 1;
            let Some(cs) = read(regs.wrapping_add(pt_regs::CS)) else {
                break;
            };
            if cs & 3 == 3 {
                return (stack, Some(regs));
            }
            let (Some(ip), Some(bp)) = (
                read(regs.wrapping_add(pt_regs::IP)),
                read(regs.wrapping_add(pt_regs::BP)),
            ) else {
                break;
            };
            if ip < KERNEL_SPACE {
                break;
            }
            stack.push(ip);
            bp
        } else if frame.is_multiple_of(8) {
            let (Some(next), Some(ret)) = (read(frame), read(frame.wrapping_add(8))) else {
                break;
            };
            if ret < KERNEL_SPACE {
                break;
            }
            stack.push(ret);
            next
        } else {
            break;
        };
        // A caller's frame lies above its callee's: a chain that does not climb is corrupt.
        if next_frame <= frame {
            break;
        }
        frame = next_frame;
    }
    (stack, None)
}

/// Offsets in `struct pt_regs` (x86-64) of the registers an ORC walk reads.
mod pt_regs {
    pub const R13: u64 = 16;
    pub const BP: u64 = 32;
    pub const R10: u64 = 56;
    pub const DX: u64 = 96;
    pub const DI: u64 = 112;
    pub const ORIG_AX: u64 = 120;
    pub const IP: u64 = 128;
    pub const CS: u64 = 136;
    pub const SP: u64 = 152;
}

/// The saved registers a frame can find its caller with: the sample's own for the innermost
/// frame, a `struct pt_regs` in guest memory after an entry from an interrupt or exception.
#[derive(Clone, Copy)]
enum SavedRegs<'a> {
    None,
    Sampled(&'a kvm_regs),
    InMemory(u64),
}

impl SavedRegs<'_> {
    /// The register at `offset` in `struct pt_regs`.
    fn get(self, offset: u64, read: &impl Fn(u64) -> Option<u64>) -> Option<u64> {
        match self {
            Self::None => None,
            Self::InMemory(at) => read(at.checked_add(offset)?),
            Self::Sampled(regs) => match offset {
                pt_regs::R13 => Some(regs.r13),
                pt_regs::BP => Some(regs.rbp),
                pt_regs::R10 => Some(regs.r10),
                pt_regs::DX => Some(regs.rdx),
                pt_regs::DI => Some(regs.rdi),
                _ => None,
            },
        }
    }
}

/// The stack by the kernel's ORC tables, as `unwind_next_frame()` walks it: each instruction's
/// entry says where its caller's stack pointer is (relative to a register), what lies there (a
/// return address or the registers an entry saved) and where the caller's frame pointer was
/// saved. The walk goes on through interrupt and exception frames and ends in user mode (then
/// with the address of the `pt_regs` the kernel was entered with), at the end of a stack, or
/// where the tables or guest memory give out.
fn orc_stack(
    table: &OrcTable,
    read: impl Fn(u64) -> Option<u64>,
    regs: &kvm_regs,
) -> (Vec<u64>, Option<u64>) {
    let mut stack = vec![regs.rip];
    let (mut ip, mut sp, mut bp) = (regs.rip, regs.rsp, regs.rbp);
    let mut saved = SavedRegs::Sampled(regs);
    // The innermost instruction pointer is exact; a caller's is a return address, which
    // belongs to the call before it.
    let mut exact = true;
    let mut user_entry = None;
    while stack.len() < MAX_DEPTH {
        let Some(orc) = table.find(if exact { ip } else { ip.wrapping_sub(1) }) else {
            break;
        };
        if !matches!(
            orc.kind,
            FrameKind::Call | FrameKind::Regs | FrameKind::RegsPartial
        ) {
            break;
        }
        let offset = i64::from(orc.sp_offset);
        let caller_sp = match orc.sp_reg {
            reg::SP => sp.checked_add_signed(offset),
            reg::BP => bp.checked_add_signed(offset),
            reg::SP_INDIRECT => read(sp).and_then(|at| at.checked_add_signed(offset)),
            reg::BP_INDIRECT => bp.checked_add_signed(offset).and_then(&read),
            reg::R10 => saved.get(pt_regs::R10, &read),
            reg::R13 => saved.get(pt_regs::R13, &read),
            reg::DI => saved.get(pt_regs::DI, &read),
            reg::DX => saved.get(pt_regs::DX, &read),
            _ => None,
        };
        let Some(caller_sp) = caller_sp.filter(|&at| at >= KERNEL_SPACE) else {
            break;
        };
        // The ip and sp a pt_regs (whole, or the hardware's part of it) at `frame` saved, if
        // it interrupted kernel code: an entry from user mode is where the kernel stack ends.
        let interrupted = |frame: u64| -> Option<(u64, u64)> {
            let cs = read(frame.wrapping_add(pt_regs::CS))?;
            (cs & 3 != 3).then_some(())?;
            Some((
                read(frame.wrapping_add(pt_regs::IP))?,
                read(frame.wrapping_add(pt_regs::SP))?,
            ))
        };
        let caller = match orc.kind {
            FrameKind::Call => {
                read(caller_sp.wrapping_sub(8)).map(|ret| (ret, caller_sp, SavedRegs::None))
            }
            FrameKind::Regs => {
                interrupted(caller_sp).map(|(ip, sp)| (ip, sp, SavedRegs::InMemory(caller_sp)))
            }
            // The hardware's part sits at the end of where a whole pt_regs would be; the
            // registers saved before it stay the ones to read.
            _ => interrupted(caller_sp.wrapping_sub(pt_regs::IP)).map(|(ip, sp)| (ip, sp, saved)),
        };
        let Some((caller_ip, next_sp, next_saved)) = caller else {
            let from_user = read(caller_sp.wrapping_add(pt_regs::CS)).is_some_and(|cs| cs & 3 == 3);
            if orc.kind == FrameKind::Regs && from_user {
                user_entry = Some(caller_sp);
            }
            break;
        };
        let offset = i64::from(orc.bp_offset);
        let caller_bp = match orc.bp_reg {
            reg::UNDEFINED => Some(next_saved.get(pt_regs::BP, &read).unwrap_or(bp)),
            reg::PREV_SP => caller_sp.checked_add_signed(offset).and_then(&read),
            reg::BP => bp.checked_add_signed(offset).and_then(&read),
            _ => None,
        };
        let Some(caller_bp) = caller_bp else {
            break;
        };
        // On one stack a caller's frame lies above its callee's (a walk that does not climb
        // is corrupt and must not loop); interrupts and `call_on_irqstack()` switch stacks.
        let same_stack = next_sp & !(KERNEL_STACK_SIZE - 1) == sp & !(KERNEL_STACK_SIZE - 1);
        if caller_ip < KERNEL_SPACE || (same_stack && next_sp <= sp) {
            break;
        }
        stack.push(caller_ip);
        (ip, sp, bp, saved) = (caller_ip, next_sp, caller_bp, next_saved);
        exact = orc.signal;
    }
    (stack, user_entry)
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
    /// The probe for the kernel whose `System.map` is `map`, if it has the symbols.
    fn from_map(map: &str) -> Option<Self> {
        let find = |wanted: &str| {
            map_entries(map).find_map(|(addr, _, name)| (name == wanted).then_some(addr))
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
                let readable = (0..task.len() / 4096).all(|page| {
                    let at = page * 4096;
                    read(self.init_task + at as u64, &mut task[at..at + 4096]).is_some()
                });
                // Early in a cold boot the kernel's addresses are not mapped yet (PVH starts
                // with paging off): look again at the next sample.
                if !readable {
                    return None;
                }
                let offset = task
                    .windows(8)
                    .position(|w| w == b"swapper\0")
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
        let walk = |rip: u64, rbp: u64| {
            let regs = kvm_regs {
                rip,
                rbp,
                ..Default::default()
            };
            StackWalker::frame_pointers().kernel_stack(&mem, &sregs, &regs)
        };
        let stack = walk(0xffff_ffff_8100_0005, base + 0x100);
        assert_eq!(
            stack,
            vec![
                0xffff_ffff_8100_0005,
                0xffff_ffff_8100_1000,
                0xffff_ffff_8100_2000
            ]
        );
        let stack = walk(0xffff_ffff_8100_0005, base + 0x400);
        assert_eq!(stack, vec![0xffff_ffff_8100_0005, 0xffff_ffff_8100_4000]);
        // An unmapped frame pointer ends the stack at the instruction pointer.
        assert_eq!(walk(7, base + 0x40_0000), vec![7]);
        // A frame that does not climb ends the chain.
        frame(0x500, base + 0x500, 0xffff_ffff_8100_5000);
        let stack = walk(0xffff_ffff_8100_0005, base + 0x500);
        assert_eq!(stack, vec![0xffff_ffff_8100_0005, 0xffff_ffff_8100_5000]);

        // Entries: a pt_regs at 0x1000 saved by an entry from kernel mode, the handler's
        // frame pointing one byte past it; the interrupted code's frame at 0x1200 returns into
        // an entry from user mode, whose pt_regs at 0x1400 ends the stack.
        let put = |offset: u64, value: u64| {
            mem.write_obj(value, GuestAddress(0x20_0000 + offset))
                .unwrap();
        };
        frame(0x0f00, base + 0x1001, 0xffff_ffff_8100_1100);
        put(0x1000 + pt_regs::CS, 0x10);
        put(0x1000 + pt_regs::IP, 0xffff_ffff_8100_1200);
        put(0x1000 + pt_regs::BP, base + 0x1200);
        frame(0x1200, base + 0x1401, 0xffff_ffff_8100_1300);
        put(0x1400 + pt_regs::CS, 0x33);
        put(0x1400 + pt_regs::IP, 0x40_1000);
        let read = |vaddr: u64| -> Option<u64> {
            let phys = crate::crash::translate(&mem, &sregs, vaddr)?;
            mem.read_obj(GuestAddress(phys)).ok()
        };
        assert_eq!(
            frame_pointer_stack(read, 0xffff_ffff_8100_0005, base + 0xf00),
            (
                vec![
                    0xffff_ffff_8100_0005,
                    0xffff_ffff_8100_1100,
                    0xffff_ffff_8100_1200,
                    0xffff_ffff_8100_1300
                ],
                Some(base + 0x1400)
            )
        );
        // In the handler before its own frame: the encoded pointer is the frame pointer.
        assert_eq!(
            frame_pointer_stack(read, 0xffff_ffff_8100_1105, base + 0x1401),
            (vec![0xffff_ffff_8100_1105], Some(base + 0x1400))
        );
        // Saved registers of an entry from kernel mode with a user instruction pointer, or
        // a pointer misaligned otherwise: the chain ends there.
        put(0x1800 + pt_regs::CS, 0x10);
        put(0x1800 + pt_regs::IP, 0x40_1000);
        assert_eq!(
            frame_pointer_stack(read, 0xffff_ffff_8100_0005, base + 0x1801),
            (vec![0xffff_ffff_8100_0005], None)
        );
        assert_eq!(
            frame_pointer_stack(read, 0xffff_ffff_8100_0005, base + 0x1803),
            (vec![0xffff_ffff_8100_0005], None)
        );
    }

    /// One ORC entry's bytes: the caller's stack pointer at `sp_reg + sp_offset`, its frame
    /// pointer at `bp_reg + bp_offset`, the frame's type and signal bit.
    fn orc(
        sp_reg: u8,
        sp_offset: i16,
        bp_reg: u8,
        bp_offset: i16,
        kind: u8,
        signal: bool,
    ) -> [u8; 6] {
        let [s0, s1] = sp_offset.to_le_bytes();
        let [b0, b1] = bp_offset.to_le_bytes();
        [
            s0,
            s1,
            b0,
            b1,
            sp_reg | bp_reg << 4,
            kind | u8::from(signal) << 3,
        ]
    }

    const CALL: u8 = 2;
    const REGS: u8 = 3;

    #[test]
    fn kernel_stacks_follow_the_orc_tables_through_entries_until_user_mode() {
        let (mem, sregs) = kernel_mapped_memory();
        let base = 0xffff_ffff_c000_0000u64;
        let put = |offset: u64, value: u64| {
            mem.write_obj(value, GuestAddress(0x20_0000 + offset))
                .unwrap();
        };
        let text = 0xffff_ffff_8100_0000u64;
        let (a, b, entry, d, e) = (text, text + 0x100, text + 0x200, text + 0x300, text + 0x400);
        let (ips, orcs) = crate::profile::orc::table_bytes(
            base,
            &[
                // a: one push deep, no frame pointer of its own.
                (a, orc(reg::SP, 16, reg::UNDEFINED, 0, CALL, false)),
                // b: a frame-pointer function (push rbp; mov rsp, rbp).
                (b, orc(reg::BP, 16, reg::PREV_SP, -16, CALL, false)),
                // entry code: a pt_regs at the stack pointer.
                (entry, orc(reg::SP, 0, reg::UNDEFINED, 0, REGS, true)),
                (d, orc(reg::SP, 8, reg::UNDEFINED, 0, CALL, false)),
                (e, orc(reg::SP, 0, reg::UNDEFINED, 0, REGS, true)),
            ],
        );
        let orc_walker = |ips: &[u8], orcs: &[u8]| {
            let table = OrcTable::from_sections(base, ips, orcs).unwrap();
            StackWalker {
                unwinder: Unwinder::Orc(Arc::new(table)),
                syscalls: None,
            }
        };
        let walker = orc_walker(&ips, &orcs);
        // a's return address into b; b's saved frame pointer and return into the entry code.
        put(0x1008, b + 0x20);
        put(0x1800, base + 0x1900);
        put(0x1808, entry + 0x10);
        // The entry's pt_regs at 0x1810: kernel mode, interrupted in d.
        put(0x1810 + pt_regs::IP, d + 0x30);
        put(0x1810 + pt_regs::CS, 0x10);
        put(0x1810 + pt_regs::SP, base + 0x1a00);
        put(0x1810 + pt_regs::BP, base + 0x1b00);
        // d returns into e, whose pt_regs says user mode: the kernel stack ends there.
        put(0x1a00, e + 1);
        put(0x1a08 + pt_regs::CS, 0x33);
        put(0x1a08 + pt_regs::IP, 0x40_1000);
        let regs = kvm_regs {
            rip: a + 5,
            rsp: base + 0x1000,
            rbp: base + 0x1800,
            ..Default::default()
        };
        assert_eq!(
            walker.kernel_stack(&mem, &sregs, &regs),
            vec![a + 5, b + 0x20, entry + 0x10, d + 0x30, e + 1]
        );
        // Below the tables, or with the stack pointer in unmapped memory, only the sample.
        let below = kvm_regs {
            rip: text - 1,
            ..regs
        };
        assert_eq!(walker.kernel_stack(&mem, &sregs, &below), vec![text - 1]);
        let unmapped = kvm_regs {
            rsp: base + 0x40_0000,
            ..regs
        };
        assert_eq!(walker.kernel_stack(&mem, &sregs, &unmapped), vec![a + 5]);
        // A stack pointer at the top of the address space (the guest's to choose) ends the
        // walk without overflowing.
        let at_the_top = kvm_regs {
            rip: entry + 1,
            rsp: u64::MAX - 8,
            ..regs
        };
        assert_eq!(
            walker.kernel_stack(&mem, &sregs, &at_the_top),
            vec![entry + 1]
        );
        // A frame that returns into itself: one that does not climb stops at once, one that
        // climbs is cut at the depth limit.
        let (ips, orcs) = crate::profile::orc::table_bytes(
            base,
            &[(a, orc(reg::SP, 0, reg::UNDEFINED, 0, CALL, false))],
        );
        let flat = orc_walker(&ips, &orcs);
        put(0x0ff8, a + 5);
        assert_eq!(flat.kernel_stack(&mem, &sregs, &regs), vec![a + 5]);
        let (ips, orcs) = crate::profile::orc::table_bytes(
            base,
            &[(a, orc(reg::SP, 8, reg::UNDEFINED, 0, CALL, false))],
        );
        let climbing = orc_walker(&ips, &orcs);
        for slot in 0..MAX_DEPTH as u64 {
            put(0x1000 + slot * 8, a + 5);
        }
        assert_eq!(climbing.kernel_stack(&mem, &sregs, &regs).len(), MAX_DEPTH);
    }

    #[test]
    fn a_system_call_is_named_from_its_number_where_jumps_left_no_frame_of_its_handler() {
        let text = 0xffff_ffff_8100_0000u64;
        let (dispatcher, switch, exit, handler, worker) =
            (text, text + 0x100, text + 0x200, text + 0x300, text + 0x400);
        let (table, entry) = (0xffff_ffff_8200_0000u64, 0xffff_c900_0000_3f58u64);
        let handlers = SyscallHandlers {
            dispatcher,
            switch,
            table,
            handlers: vec![handler],
            fault_entry: None,
            symbols: Symbols::parse(&format!(
                "{dispatcher:x} T do_syscall_64\n{switch:x} T x64_sys_call\n\
                 {exit:x} T syscall_exit_to_user_mode\n{handler:x} T __x64_sys_getppid\n\
                 {worker:x} t worker\n{:x} t after\n",
                text + 0x500
            )),
        };
        // do_syscall_64 calls the switch at +0x1b (returning to +0x20), the exit work at
        // +0x3b (returning to +0x40), and at +0x5b the handler itself (a kernel that inlined
        // the switch); the eight bytes before each return address hold the call.
        let call_before = |ret: u64, target: u64| {
            let offset = (target.wrapping_sub(ret) as i64 as i32).to_le_bytes();
            let [a, b, c, d] = offset;
            u64::from_le_bytes([0x90, 0x90, 0x90, CALL_REL32, a, b, c, d])
        };
        let read = |addr: u64| match addr {
            a if a == dispatcher + 0x18 => Some(call_before(dispatcher + 0x20, switch)),
            a if a == dispatcher + 0x38 => Some(call_before(dispatcher + 0x40, exit)),
            a if a == dispatcher + 0x58 => Some(call_before(dispatcher + 0x60, handler)),
            // The entry's pt_regs says call 39; the table maps 39 to the handler.
            a if a == entry + pt_regs::ORIG_AX => Some(39),
            a if a == table + 39 * 8 => Some(handler),
            _ => None,
        };
        let name = |mut stack: Vec<u64>, entry: Option<u64>| {
            handlers.name_the_call(&mut stack, entry, read);
            stack
        };
        // In the worker the handler jumped to: the handler goes in between.
        let in_worker = vec![worker + 5, dispatcher + 0x20];
        assert_eq!(
            name(in_worker.clone(), Some(entry)),
            vec![worker + 5, handler + 1, dispatcher + 0x20]
        );
        assert_eq!(
            name(vec![worker + 5, dispatcher + 0x60], None),
            vec![worker + 5, handler + 1, dispatcher + 0x60]
        );
        // In the handler or the switch, in the exit work, in do_syscall_64's own code, with
        // no entry to read the number from, or where the bytes hold no direct call: as it was.
        for stack in [
            vec![handler + 5, dispatcher + 0x20],
            vec![switch + 5, dispatcher + 0x20],
            vec![exit + 5, dispatcher + 0x40],
            vec![dispatcher + 0x20],
            vec![worker + 5, dispatcher + 0x30],
        ] {
            assert_eq!(name(stack.clone(), Some(entry)), stack);
        }
        assert_eq!(name(in_worker.clone(), None), in_worker);
    }

    #[test]
    fn a_system_call_that_arrived_as_a_page_fault_is_rooted_at_its_entry() {
        let (handlers, [syscall_entry, stub, fault, dispatcher, handle_mm_fault, read]) =
            syscall_fault_kernel();
        let user_entry = true;
        let root = |mut stack: Vec<u64>, from_user: bool, cr2: u64| {
            handlers.root_at_the_syscall_entry(&mut stack, from_user, cr2);
            stack
        };
        let rooted = |stack: &[u64]| [stack, &[syscall_entry + 1]].concat();
        let user_address = 0x7f00_0000_1000u64;
        // Dispatched by the fault handler, whatever CR2 holds by now (a fault inside the call
        // changes it), a page fault inside the call included.
        let in_read = vec![read + 9, dispatcher + 0x20, fault + 0x40, stub + 0x10];
        assert_eq!(
            root(in_read.clone(), user_entry, user_address),
            rooted(&in_read)
        );
        // The handler jumped to do_syscall_64: no frame of its own.
        let jumped = vec![read + 9, dispatcher + 0x20, stub + 0x10];
        assert_eq!(
            root(jumped.clone(), user_entry, user_address),
            rooted(&jumped)
        );
        let fault_in_read = [
            &[handle_mm_fault + 3, fault + 0x80, stub + 0x10][..],
            &in_read,
        ]
        .concat();
        assert_eq!(
            root(fault_in_read.clone(), user_entry, 0),
            rooted(&fault_in_read)
        );
        // In the fault's entry or handler around the call: by CR2.
        let in_entry = vec![fault + 0x8, stub + 0x10];
        assert_eq!(
            root(in_entry.clone(), user_entry, syscall_entry),
            rooted(&in_entry)
        );
        assert_eq!(
            root(vec![stub + 0x4], user_entry, syscall_entry),
            rooted(&[stub + 0x4])
        );
        // A real page fault, a stack whose walk did not reach the entry from user mode, one
        // that ends elsewhere: as they were.
        let real_fault = vec![handle_mm_fault + 3, fault + 0x80, stub + 0x10];
        for (stack, entry, cr2) in [
            (real_fault.clone(), user_entry, user_address),
            (real_fault, user_entry, syscall_entry),
            (in_entry.clone(), user_entry, user_address),
            (in_read.clone(), false, syscall_entry),
            (vec![read + 9, dispatcher + 0x20], user_entry, syscall_entry),
        ] {
            assert_eq!(root(stack.clone(), entry, cr2), stack);
        }
    }

    /// The system call handlers of a kernel whose system calls arrive as page faults, and
    /// where its functions start: `entry_SYSCALL_64`, `asm_exc_page_fault`, `exc_page_fault`,
    /// `do_syscall_64`, `handle_mm_fault`, `__x64_sys_read`.
    fn syscall_fault_kernel() -> (SyscallHandlers, [u64; 6]) {
        let text = 0xffff_ffff_8100_0000u64;
        let functions @ [syscall_entry, stub, fault, dispatcher, handle_mm_fault, read] =
            [0, 0x100, 0x200, 0x300, 0x400, 0x500].map(|offset| text + offset);
        let handlers = SyscallHandlers {
            dispatcher,
            switch: text + 0x600,
            table: 0xffff_ffff_8200_0000,
            handlers: vec![read],
            fault_entry: Some(SyscallFault {
                syscall_entry,
                stub,
                handler: fault,
            }),
            symbols: Symbols::parse(&format!(
                "{syscall_entry:x} T entry_SYSCALL_64\n{stub:x} T asm_exc_page_fault\n\
                 {fault:x} T exc_page_fault\n{dispatcher:x} T do_syscall_64\n\
                 {handle_mm_fault:x} T handle_mm_fault\n{read:x} T __x64_sys_read\n\
                 {:x} t after\n",
                text + 0x700
            )),
        };
        (handlers, functions)
    }

    #[test]
    fn a_frame_pointer_walk_roots_a_system_call_at_its_entry() {
        let (mem, sregs) = kernel_mapped_memory();
        let base = 0xffff_ffff_c000_0000u64;
        let (handlers, [syscall_entry, stub, fault, dispatcher, handle_mm_fault, read]) =
            syscall_fault_kernel();
        let walker = StackWalker {
            unwinder: Unwinder::FramePointers,
            syscalls: Some(Arc::new(handlers)),
        };
        let frame = |offset: u64, next: u64, ret: u64| {
            mem.write_obj(next, GuestAddress(0x20_0000 + offset))
                .unwrap();
            mem.write_obj(ret, GuestAddress(0x20_0000 + offset + 8))
                .unwrap();
        };
        // read() called from do_syscall_64, called from the fault handler, whose frame
        // pointer was the entry's: one byte past the pt_regs of an entry from user mode.
        frame(0x100, base + 0x200, dispatcher + 0x20);
        frame(0x200, base + 0x300, fault + 0x40);
        frame(0x300, base + 0x401, stub + 0x10);
        mem.write_obj(0x33u64, GuestAddress(0x20_0400 + pt_regs::CS))
            .unwrap();
        let user_address = 0x7f00_0000_1000u64;
        let walk = |rip: u64, rbp: u64, cr2: u64| {
            let regs = kvm_regs {
                rip,
                rbp,
                ..Default::default()
            };
            let sregs = kvm_sregs { cr2, ..sregs };
            walker.kernel_stack(&mem, &sregs, &regs)
        };
        assert_eq!(
            walk(read + 9, base + 0x100, user_address),
            vec![
                read + 9,
                dispatcher + 0x20,
                fault + 0x40,
                stub + 0x10,
                syscall_entry + 1
            ]
        );
        // In the entry before it saved the registers (the user's frame pointer still in
        // place): by CR2.
        assert_eq!(
            walk(stub + 3, 0x7ffd_0000_1000, syscall_entry),
            vec![stub + 3, syscall_entry + 1]
        );
        assert_eq!(
            walk(stub + 3, 0x7ffd_0000_1000, user_address),
            vec![stub + 3]
        );
        // A real page fault from user mode stays one.
        frame(0x80, base + 0x300, fault + 0x80);
        assert_eq!(
            walk(handle_mm_fault + 3, base + 0x80, user_address),
            vec![handle_mm_fault + 3, fault + 0x80, stub + 0x10]
        );
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
        // Paging still off (a cold boot's first moments): nothing to read yet, nothing decided.
        let paging_off = kvm_sregs { cr0: 1, ..sregs };
        assert_eq!(probe.current_comm(&mem, &paging_off), None);
        assert_eq!(probe.comm_offset, None);
        assert_eq!(probe.current_comm(&mem, &sregs).as_deref(), Some("etcd"));
        assert_eq!(probe.comm_offset, Some(Some(comm)));
        // A task pointer into nowhere names no process.
        mem.write_obj(0x1234u64, GuestAddress(0x20_0000 + pcpu_hot))
            .unwrap();
        assert_eq!(probe.current_comm(&mem, &sregs), None);
    }
}
