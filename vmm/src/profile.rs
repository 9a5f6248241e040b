//! Where the wall time goes (`simvm run --profile DIR`).
//!
//! Two views, both collected only when asked for:
//!
//! - **Exits by reason**: every `KVM_RUN` is timed, and its wall time is charged to the reason
//!   it ended (port I/O by port, MMIO by device window, HLT, MSR, a signal). On a PVM host the
//!   time of a run is mostly the guest kernel's emulated code before that exit.
//! - **Samples**: the watchdog's thread also ticks at a fixed wall-clock rate; a tick that finds
//!   the vCPU inside `KVM_RUN` signals it, and the simulation thread records the guest's
//!   instruction pointer (kernel addresses become function names with the guest kernel's
//!   `System.map`) and resumes the guest unchanged; a tick that finds simvm's own code counts
//!   for simvm. Folded stacks and flame graphs (the `inferno` crate) are written per machine and
//!   for the run.
//!
//! Reading registers and resuming is invisible to the guest, so a profiled run has the digest of
//! an unprofiled one. The samples themselves follow host time and differ from run to run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kvm_bindings::kvm_sregs;
use simvm_devices::pvclock::GuestCounts;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::error::{Error, Result};

mod activity;
pub mod lookahead;

/// Why a `KVM_RUN` ended, as the profile groups exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitReason {
    Pio(u16),
    /// An access to virtio-mmio window `n` (the NIC first, then the disks).
    Mmio(u64),
    /// A write to the user kick page: the vDSO clock's stall rule.
    UserClockKick,
    Hlt,
    Msr(u32),
    /// A signal: a sample, a watchdog kick or somebody else's.
    Signal,
    /// The guest had simvm clear a page (`docs/guest-abi.md`, the host page): resumed at once,
    /// invisibly, like a signal.
    PageClear,
    /// The guest had simvm copy a page: resumed at once, invisibly, as a page clear.
    PageCopy,
    /// A crash or an unexpected exit.
    Other,
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pio(port) => write!(f, "pio {port:#06x}{}", port_name(*port)),
            Self::Mmio(window) => write!(f, "mmio virtio window {window}"),
            Self::UserClockKick => f.write_str("mmio user kick page (vDSO clock kick)"),
            Self::Hlt => f.write_str("hlt"),
            Self::Msr(index) => write!(f, "msr {index:#x}"),
            Self::Signal => f.write_str("signal"),
            Self::PageClear => f.write_str("page clear (pio 0x0e14)"),
            Self::PageCopy => f.write_str("page copy (pio 0x0e18)"),
            Self::Other => f.write_str("other"),
        }
    }
}

/// What simvm's ports are, for people reading a profile.
fn port_name(port: u16) -> &'static str {
    match port {
        0x3f8..=0x3ff => " (console)",
        0x20 | 0x21 | 0xa0 | 0xa1 | 0x4d0 | 0x4d1 => " (8259)",
        0x0e00 => " (clock page)",
        0x0e04 => " (timer)",
        0x0e08 => " (clock kick)",
        0x0e0c => " (control)",
        0x0e10 => " (irq poll)",
        _ => "",
    }
}

/// One machine's profile, summed over its incarnations.
#[derive(Clone, Debug, Default)]
pub struct MachineProfile {
    /// Exits by reason: count and the wall time of the runs they ended (ns).
    pub exits: BTreeMap<ExitReason, (u64, u64)>,
    /// Wall time inside `KVM_RUN` (ns).
    pub run_wall_ns: u64,
    /// Samples of guest kernel code, by call stack: the instruction pointer, then return
    /// addresses, innermost first.
    pub kernel_samples: BTreeMap<Vec<u64>, u64>,
    /// Samples of guest user code, by the name of the process running it (`?` if unknown).
    pub user_samples: BTreeMap<String, u64>,
    /// Every sample, user and kernel, by the name of the task the guest was running (`?` if
    /// unknown): a system call or fault counts for the task that made it, an interrupt for the
    /// task it interrupted, the idle loop for `swapper`. Empty without a process probe.
    pub process_samples: BTreeMap<String, u64>,
    /// Virtual time skipped while the guest was halted (the rest of its virtual time was
    /// charged for work: exits, clock reads, interrupts).
    pub idle_ns: u64,
    /// System calls and page faults the guest kernel counted while profiled.
    pub guest: GuestCounts,
    /// Virtual time the machine ran while profiled: not what a template or snapshot it was
    /// started from had already run.
    pub vtime_ns: u64,
}

impl MachineProfile {
    pub fn exit(&mut self, reason: ExitReason, wall: Duration) {
        let ns = u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX);
        let entry = self.exits.entry(reason).or_default();
        entry.0 += 1;
        entry.1 = entry.1.saturating_add(ns);
        self.run_wall_ns = self.run_wall_ns.saturating_add(ns);
    }

    /// A sample of user code in process `comm`.
    pub fn user_sample(&mut self, comm: &str) {
        *self.user_samples.entry(comm.to_string()).or_default() += 1;
    }

    /// A sample, user or kernel, taken while the guest ran task `comm`.
    pub fn process_sample(&mut self, comm: &str) {
        *self.process_samples.entry(comm.to_string()).or_default() += 1;
    }

    pub fn user_sample_count(&self) -> u64 {
        self.user_samples.values().sum()
    }

    /// A sample of kernel code with its call stack, innermost first.
    pub fn kernel_sample(&mut self, stack: Vec<u64>) {
        *self.kernel_samples.entry(stack).or_default() += 1;
    }

    /// Adds another incarnation's profile.
    pub fn add(&mut self, other: &MachineProfile) {
        for (reason, (count, ns)) in &other.exits {
            let entry = self.exits.entry(*reason).or_default();
            entry.0 += count;
            entry.1 = entry.1.saturating_add(*ns);
        }
        self.run_wall_ns = self.run_wall_ns.saturating_add(other.run_wall_ns);
        for (stack, count) in &other.kernel_samples {
            *self.kernel_samples.entry(stack.clone()).or_default() += count;
        }
        for (comm, count) in &other.user_samples {
            *self.user_samples.entry(comm.clone()).or_default() += count;
        }
        for (comm, count) in &other.process_samples {
            *self.process_samples.entry(comm.clone()).or_default() += count;
        }
        self.idle_ns = self.idle_ns.saturating_add(other.idle_ns);
        self.guest.add(&other.guest);
        self.vtime_ns = self.vtime_ns.saturating_add(other.vtime_ns);
    }

    pub fn exit_count(&self) -> u64 {
        self.exits.values().map(|(count, _)| count).sum()
    }
}

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
        let text = std::fs::read_to_string(kernel.with_file_name("System.map")).ok()?;
        let find = |wanted: &str| {
            text.lines().find_map(|line| {
                let mut words = line.split_whitespace();
                let addr = u64::from_str_radix(words.next()?, 16).ok()?;
                let _kind = words.next()?;
                (words.next()? == wanted).then_some(addr)
            })
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

/// Kernel function names from a `System.map`.
#[derive(Default)]
pub struct Symbols {
    /// Text symbols by address, sorted.
    text: Vec<(u64, String)>,
}

impl Symbols {
    /// Reads the `System.map` beside `kernel`; none (every address unnamed) if there is none.
    pub fn beside(kernel: &Path) -> Self {
        let map = kernel.with_file_name("System.map");
        std::fs::read_to_string(map)
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    pub fn parse(text: &str) -> Self {
        let mut text_symbols: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let addr = u64::from_str_radix(words.next()?, 16).ok()?;
                let kind = words.next()?;
                let name = words.next()?;
                matches!(kind, "T" | "t" | "W" | "w").then(|| (addr, name.to_string()))
            })
            .collect();
        text_symbols.sort();
        Self { text: text_symbols }
    }

    /// Whether the map had no functions (or there was no map).
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Whether the kernel has a function called `name`.
    pub fn has_function(&self, name: &str) -> bool {
        self.text.iter().any(|(_, n)| n == name)
    }

    /// The start address and name of the function containing `rip`.
    fn containing(&self, rip: u64) -> Option<&(u64, String)> {
        let at = self.text.partition_point(|(addr, _)| *addr <= rip);
        at.checked_sub(1).map(|i| &self.text[i])
    }

    /// `function+0xOFFSET` of `rip`, or its address.
    pub fn name_and_offset(&self, rip: u64) -> String {
        match self.containing(rip) {
            Some((start, name)) => format!("{name}+{:#x}", rip - start),
            None => format!("{rip:#x}"),
        }
    }

    /// The function containing `rip`, or its address.
    pub fn name(&self, rip: u64) -> String {
        match self.containing(rip) {
            Some((_, name)) => name.clone(),
            None => format!("{rip:#x}"),
        }
    }
}

/// The function names of a kernel stack, innermost first. A return address names its caller
/// (the call instruction precedes it), so it is looked up one byte back.
fn frame_names(symbols: &Symbols, frames: &[u64]) -> Vec<String> {
    frames
        .iter()
        .enumerate()
        .map(|(depth, &addr)| {
            symbols.name(if depth == 0 {
                addr
            } else {
                addr.saturating_sub(1)
            })
        })
        .collect()
}

/// A machine's samples by activity (`activity.rs`), user code included, most sampled first.
fn activities(symbols: &Symbols, profile: &MachineProfile) -> Vec<(String, u64)> {
    let mut by_activity: BTreeMap<String, u64> = BTreeMap::new();
    for (frames, count) in &profile.kernel_samples {
        let names = frame_names(symbols, frames);
        let activity = activity::kernel_activity(names.iter().map(String::as_str));
        *by_activity.entry(activity).or_default() += count;
    }
    let user = profile.user_sample_count();
    if user > 0 {
        by_activity.insert("user code".to_string(), user);
    }
    let mut by_activity: Vec<_> = by_activity.into_iter().collect();
    by_activity.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    by_activity
}

/// A run's profile, ready to write.
pub struct RunProfile<'a> {
    /// Name, kernel file and profile of each machine.
    pub machines: Vec<(&'a str, &'a Path, &'a MachineProfile)>,
    /// Samples that found simvm's own code running (not inside `KVM_RUN`).
    pub simvm_samples: u64,
    /// The run's wall time, for the rates.
    pub wall: Duration,
    /// Each machine's exit counters (interrupts injected, clock kicks), for their rates.
    pub stats: Vec<crate::machine::ExitStats>,
    /// What conservative parallel stepping could make of the run's steps.
    pub parallel: Option<&'a lookahead::ParallelEstimate>,
}

impl RunProfile<'_> {
    /// Folded stacks (`machine;kernel;function count`) of every machine, or of `only`.
    fn folded(&self, symbols: &[&Symbols], only: Option<usize>) -> Vec<String> {
        let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
        for (i, (name, _, profile)) in self.machines.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            for (frames, count) in &profile.kernel_samples {
                let mut stack = format!("{name};kernel");
                for function in frame_names(symbols[i], frames).iter().rev() {
                    stack.push(';');
                    stack.push_str(function);
                }
                *stacks.entry(stack).or_default() += count;
            }
            for (comm, count) in &profile.user_samples {
                *stacks.entry(format!("{name};user;{comm}")).or_default() += count;
            }
        }
        if only.is_none() && self.simvm_samples > 0 {
            stacks.insert("simvm".into(), self.simvm_samples);
        }
        stacks
            .into_iter()
            .map(|(stack, count)| format!("{stack} {count}"))
            .collect()
    }

    /// Samples per guest kernel instruction of machine `i`, most sampled first: `ADDRESS
    /// function+OFFSET COUNT` lines. On a host that emulates kernel code, an instruction the
    /// emulator handles slowly stands out here where a function's total does not show it.
    fn instructions(&self, symbols: &[&Symbols], i: usize) -> Vec<String> {
        let mut by_address: BTreeMap<u64, u64> = BTreeMap::new();
        for (frames, count) in &self.machines[i].2.kernel_samples {
            if let Some(&rip) = frames.first() {
                *by_address.entry(rip).or_default() += count;
            }
        }
        let mut by_address: Vec<_> = by_address.into_iter().collect();
        by_address.sort_by_key(|&(address, count)| (std::cmp::Reverse(count), address));
        by_address
            .into_iter()
            .map(|(address, count)| {
                let at = symbols[i].name_and_offset(address);
                format!("{address:#x} {at} {count}")
            })
            .collect()
    }

    /// Writes `DIR/profile.txt` (the summary), `DIR/run.folded`, `DIR/run.svg` and per machine
    /// `NAME.folded`, `NAME.svg` and `NAME.instructions`; returns the summary.
    pub fn write(&self, dir: &Path) -> Result<String> {
        let io = |path: &Path, e: std::io::Error| Error::Profile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        // One parse per kernel: the machines of a run mostly share one.
        let mut parsed: BTreeMap<&Path, Symbols> = BTreeMap::new();
        for (_, kernel, _) in &self.machines {
            parsed
                .entry(kernel)
                .or_insert_with(|| Symbols::beside(kernel));
        }
        let symbols: Vec<&Symbols> = self
            .machines
            .iter()
            .map(|(_, kernel, _)| &parsed[kernel])
            .collect();
        let mut outputs: Vec<(PathBuf, Vec<String>, String)> = vec![(
            dir.join("run"),
            self.folded(&symbols, None),
            "simvm run".to_string(),
        )];
        for (i, (name, _, _)) in self.machines.iter().enumerate() {
            outputs.push((
                dir.join(name),
                self.folded(&symbols, Some(i)),
                name.to_string(),
            ));
        }
        for (i, (name, _, _)) in self.machines.iter().enumerate() {
            let path = dir.join(format!("{name}.instructions"));
            let lines = self.instructions(&symbols, i);
            std::fs::write(&path, lines.join("\n") + "\n").map_err(|e| io(&path, e))?;
        }
        for (base, lines, title) in &outputs {
            let folded = base.with_extension("folded");
            std::fs::write(&folded, lines.join("\n") + "\n").map_err(|e| io(&folded, e))?;
            if lines.is_empty() {
                continue;
            }
            let svg = base.with_extension("svg");
            let file = std::fs::File::create(&svg).map_err(|e| io(&svg, e))?;
            let mut options = inferno::flamegraph::Options::default();
            options.title = title.clone();
            inferno::flamegraph::from_lines(
                &mut options,
                lines.iter().map(String::as_str),
                std::io::BufWriter::new(file),
            )
            .map_err(|e| io(&svg, e))?;
        }
        let summary = self.summary(&symbols);
        let text = dir.join("profile.txt");
        std::fs::write(&text, &summary).map_err(|e| io(&text, e))?;
        Ok(summary)
    }

    /// The text summary: per machine, virtual seconds per wall second, time in `KVM_RUN`, exits
    /// by reason, and the functions most sampled.
    fn summary(&self, symbols: &[&Symbols]) -> String {
        let mut out = String::new();
        let wall = self.wall.as_secs_f64().max(1e-9);
        let samples: u64 = self.simvm_samples
            + self
                .machines
                .iter()
                .map(|(_, _, p)| p.user_sample_count() + p.kernel_samples.values().sum::<u64>())
                .sum::<u64>();
        let _ = writeln!(
            out,
            "profile: {wall:.2} s of wall time, {samples} samples ({} in simvm itself)",
            self.simvm_samples
        );
        if let Some(parallel) = self.parallel {
            let _ = writeln!(out, "{}", parallel.summary());
        }
        for (i, (name, _, profile)) in self.machines.iter().enumerate() {
            let vtime = profile.vtime_ns as f64 / 1e9;
            let count = |reason| profile.exits.get(&reason).map_or(0, |(c, _)| *c);
            let _ = writeln!(
                out,
                "\n{name}: {:.3} virtual s per wall s; {:.2} s inside KVM_RUN; {} exits ({} of \
                 them signals, {} page clears, {} page copies)",
                vtime / wall,
                profile.run_wall_ns as f64 / 1e9,
                profile.exit_count(),
                count(ExitReason::Signal),
                count(ExitReason::PageClear),
                count(ExitReason::PageCopy)
            );
            let _ = writeln!(
                out,
                "  virtual time {vtime:.3} s: {:.3} s skipped while idle, {:.3} s charged for work",
                profile.idle_ns as f64 / 1e9,
                (vtime - profile.idle_ns as f64 / 1e9).max(0.0)
            );
            if let Some(stats) = self.stats.get(i) {
                let per_virtual_second = |n: u64| n as f64 / vtime.max(1e-9);
                let _ = writeln!(
                    out,
                    "  {} interrupts injected ({:.1} per virtual s), {} halts, {} clock kicks",
                    stats.interrupts,
                    per_virtual_second(stats.interrupts),
                    stats.hlt,
                    stats.clock_kicks
                );
                let guest = &profile.guest;
                let _ = writeln!(
                    out,
                    "  {} system calls ({:.1} per virtual s), {} page faults ({:.1} per virtual s), \
                     as the guest kernel counted them",
                    guest.syscalls,
                    per_virtual_second(guest.syscalls),
                    guest.page_faults,
                    per_virtual_second(guest.page_faults),
                );
            }
            let mut exits: Vec<_> = profile.exits.iter().collect();
            exits.sort_by_key(|(_, (_, ns))| std::cmp::Reverse(*ns));
            for (reason, (count, ns)) in exits.iter().take(10) {
                let _ = writeln!(
                    out,
                    "  {:>10} exits {:>9.3} s  {reason}",
                    count,
                    *ns as f64 / 1e9
                );
            }
            let mut functions: BTreeMap<String, u64> = BTreeMap::new();
            for (frames, count) in &profile.kernel_samples {
                let leaf = frames.first().copied().unwrap_or(0);
                *functions.entry(symbols[i].name(leaf)).or_default() += count;
            }
            let mut functions: Vec<_> = functions.into_iter().collect();
            functions.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
            let user = profile.user_sample_count();
            let total = user + functions.iter().map(|(_, c)| c).sum::<u64>();
            if total == 0 {
                continue;
            }
            let _ = writeln!(out, "  samples: {total}, user code {}", user);
            let _ = writeln!(out, "  by activity (the innermost context of each sample):");
            for (activity, count) in activities(symbols[i], profile).iter().take(10) {
                let _ = writeln!(
                    out,
                    "  {:>9.1}%  {activity}",
                    100.0 * *count as f64 / total as f64
                );
            }
            let _ = writeln!(out, "  by function:");
            for (function, count) in functions.iter().take(10) {
                let _ = writeln!(
                    out,
                    "  {:>9.1}%  {function}",
                    100.0 * *count as f64 / total as f64
                );
            }
            if !profile.process_samples.is_empty() {
                let _ = writeln!(
                    out,
                    "  by process (the task running: its system calls and faults, and the \
                     interrupts that came while it ran):"
                );
                let mut processes: Vec<_> = profile.process_samples.iter().collect();
                processes.sort_by_key(|(_, count)| std::cmp::Reverse(**count));
                for (comm, count) in processes.iter().take(5) {
                    let _ = writeln!(
                        out,
                        "  {:>9.1}%  {comm}",
                        100.0 * **count as f64 / total as f64
                    );
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_name_the_function_containing_an_address() {
        let symbols = Symbols::parse(
            "ffffffff81000000 T _stext\nffffffff81000100 t do_one\nffffffff81000200 D data\n\
             ffffffff81000300 T do_two\n",
        );
        assert_eq!(symbols.name(0xffff_ffff_8100_0150), "do_one");
        assert_eq!(symbols.name(0xffff_ffff_8100_0250), "do_one");
        assert_eq!(symbols.name(0xffff_ffff_8100_0300), "do_two");
        assert_eq!(symbols.name(0x1000), "0x1000");
    }

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

    #[test]
    fn profiles_add_up_across_incarnations() {
        let mut a = MachineProfile::default();
        a.exit(ExitReason::Hlt, Duration::from_millis(2));
        a.exit(ExitReason::Pio(0x3f8), Duration::from_millis(1));
        a.kernel_sample(vec![0x10]);
        let mut b = MachineProfile::default();
        b.exit(ExitReason::Hlt, Duration::from_millis(3));
        b.kernel_sample(vec![0x10]);
        b.user_sample("sh");
        b.process_sample("sh");
        b.process_sample("sh");
        a.process_sample("sh");
        a.add(&b);
        assert_eq!(a.exits[&ExitReason::Hlt], (2, 5_000_000));
        assert_eq!(a.exit_count(), 3);
        assert_eq!(a.run_wall_ns, 6_000_000);
        assert_eq!(a.kernel_samples[&vec![0x10]], 2);
        assert_eq!(a.user_samples["sh"], 1);
        assert_eq!(a.process_samples["sh"], 3);
    }

    #[test]
    fn a_profile_writes_folded_stacks_flame_graphs_and_a_summary() {
        let dir = std::env::temp_dir().join(format!("simvm-profile-{}", std::process::id()));
        let kernel = dir.join("vmlinux");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("System.map"),
            "ffffffff81000100 T do_idle\nffffffff81000200 T cpu_idle\n",
        )
        .unwrap();
        let mut profile = MachineProfile::default();
        profile.exit(ExitReason::Hlt, Duration::from_millis(5));
        // do_idle called from cpu_idle: the return address is just past the call.
        profile.kernel_sample(vec![0xffff_ffff_8100_0110, 0xffff_ffff_8100_0210]);
        profile.kernel_sample(vec![0xffff_ffff_8100_0120, 0xffff_ffff_8100_0210]);
        profile.kernel_sample(vec![0xffff_ffff_8100_0120, 0xffff_ffff_8100_0210]);
        profile.user_sample("etcd");
        for comm in ["swapper", "swapper", "etcd", "etcd"] {
            profile.process_sample(comm);
        }
        profile.vtime_ns = 2_000_000_000;
        profile.guest = GuestCounts {
            syscalls: 5000,
            page_faults: 300,
        };
        let parallel = lookahead::ParallelEstimate {
            min_lookahead_ns: 50_000,
            sequential: Duration::from_secs(4),
            parallel: vec![
                (Some(2), Duration::from_secs(2)),
                (Some(4), Duration::from_secs(2)),
                (None, Duration::from_secs(2)),
            ],
        };
        let run = RunProfile {
            machines: vec![("m1", &kernel, &profile)],
            simvm_samples: 1,
            wall: Duration::from_secs(1),
            stats: vec![crate::machine::ExitStats {
                interrupts: 300,
                hlt: 7,
                ..Default::default()
            }],
            parallel: Some(&parallel),
        };
        let out = dir.join("out");
        let summary = run.write(&out).unwrap();
        let folded = std::fs::read_to_string(out.join("run.folded")).unwrap();
        assert_eq!(
            folded,
            "m1;kernel;cpu_idle;do_idle 3\nm1;user;etcd 1\nsimvm 1\n"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("m1.instructions")).unwrap(),
            "0xffffffff81000120 do_idle+0x20 2\n0xffffffff81000110 do_idle+0x10 1\n"
        );
        assert!(std::fs::read_to_string(out.join("m1.svg"))
            .unwrap()
            .contains("do_idle"));
        assert!(
            summary.contains("m1: 2.000 virtual s per wall s"),
            "{summary}"
        );
        assert!(summary.contains("75.0%  do_idle"), "{summary}");
        assert!(
            summary.contains(
                "lookahead, they could take 2.00 s on 2 threads (2.00x), 2.00 s on 4 threads \
                 (2.00x), 2.00 s with a thread per machine (2.00x)"
            ),
            "{summary}"
        );
        assert!(summary.contains("75.0%  idle loop"), "{summary}");
        assert!(summary.contains("25.0%  user code"), "{summary}");
        let by_process = summary
            .split_once("  by process")
            .map(|(_, rest)| rest)
            .unwrap_or_default();
        assert!(
            by_process.contains("50.0%  swapper\n") && by_process.contains("50.0%  etcd\n"),
            "{summary}"
        );
        assert!(
            summary.contains("300 interrupts injected (150.0 per virtual s), 7 halts"),
            "{summary}"
        );
        assert!(
            summary.contains(
                "5000 system calls (2500.0 per virtual s), 300 page faults (150.0 per virtual s)"
            ),
            "{summary}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
