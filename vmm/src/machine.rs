//! One simvm machine: a KVM VM with one vCPU, its memory and devices, and its virtual clock.
//!
//! [`Machine::step`] runs the vCPU to its next exit and hands the exit to the devices. Between
//! two steps nothing happens to the guest, so its execution is a function of its state and of
//! what simvm does at exits: interrupts are injected only at exits the guest itself caused, and
//! the clock page is rewritten only there.
//!
//! No interrupt-window exits are requested: under PVM, KVM notices an open window only when its
//! emulation loop next yields to the host, which host scheduling decides (measured: the same
//! step exited at different instructions, mid-`rep stos`, when two runs shared a CPU). A pending
//! interrupt therefore waits for the guest's next port, MMIO, MSR or `HLT` exit with IF set.

use std::path::PathBuf;

use kvm_bindings::{kvm_enable_cap, KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_FILTER};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use simvm_devices::abi;
use simvm_devices::irq::IrqLines;
use simvm_devices::net::{Frame, MacAddr};
use simvm_devices::pic::Pic;
use simvm_devices::pvclock::{ControlEvent, PortEvent, SimvmPorts};
use simvm_devices::serial::Console;
use simvm_devices::virtio::mmio::VirtioMmio;
use simvm_devices::virtio::net::{Offloads, RxDrop, VirtioNet};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::boot::{self, BootImage};
use crate::clock::ExitCosts;
use crate::console::LineBuffer;
use crate::crash::{self, CrashKind, CrashReport};
use crate::error::{Error, Result};
use crate::layout::{MAX_RAM, MIN_RAM};
use crate::msr;
use crate::state::{self, StateFingerprint};
use crate::trace::{Event, Trace};
use crate::watchdog::Watchdog;

const PIC_PORTS: [u16; 6] = [0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1];
const COM1: u16 = 0x3f8;

/// How a machine is built.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    pub name: String,
    /// 0-based position in the world; also the machine's trace id.
    pub index: usize,
    pub mem_size: u64,
    pub kernel: PathBuf,
    /// Initramfs archives in order: the base image, then the per-machine archive.
    pub initramfs: Vec<Vec<u8>>,
    pub cmdline: String,
    pub rng_seed: [u8; 32],
    pub wall_base_ns: u64,
    pub stall_limit: u32,
    pub costs: ExitCosts,
    /// The MAC of the machine's virtio-net interface; `None` for a machine without a network.
    pub mac: Option<MacAddr>,
    /// The offloads virtio-net offers (all by default; fewer only to measure what they save).
    pub offloads: Offloads,
}

/// Where a machine stands after a step.
#[derive(Debug)]
pub enum Status {
    /// Ready to run again.
    Running,
    /// Halted, waiting for an interrupt; its timer fires at `wake_at` if armed.
    Halted { wake_at: Option<u64> },
    /// Done for good.
    Stopped(Stop),
}

/// Why a machine stopped.
#[derive(Debug, Clone)]
pub enum Stop {
    /// Orderly power-off; `exit_status` is the command's, if init reported it.
    PowerOff { exit_status: Option<u8> },
    /// The guest asked to reboot.
    Restart { exit_status: Option<u8> },
    /// The guest halted with interrupts disabled: nothing can ever wake it.
    HaltedForever,
    /// The guest died.
    Crashed(Box<CrashReport>),
}

/// A VM exit, owned: the thin boundary between KVM's `kvm_run` and simvm's handling.
#[derive(Debug)]
enum Exit {
    PioIn {
        port: u16,
        size: u8,
        value: u32,
    },
    PioOut {
        port: u16,
        size: u8,
        data: [u8; 4],
    },
    MmioRead {
        addr: u64,
        size: u8,
        value: u64,
    },
    MmioWrite {
        addr: u64,
        size: u8,
        value: u64,
    },
    MsrRead {
        index: u32,
        value: u64,
    },
    MsrWrite {
        index: u32,
        value: u64,
    },
    Hlt,
    /// `KVM_RUN` returned because the watchdog signalled the thread.
    Interrupted,
    Crash(CrashKind),
}

/// Exit counters, for the run summary and benchmarks.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitStats {
    pub pio: u64,
    pub mmio: u64,
    pub msr: u64,
    pub hlt: u64,
    pub interrupts: u64,
    pub clock_kicks: u64,
    pub watchdog_kicks: u64,
    /// Watchdog signals that found the guest in kernel code and were resumed invisibly.
    pub benign_kicks: u64,
}

impl ExitStats {
    pub fn total(&self) -> u64 {
        self.pio + self.mmio + self.msr + self.hlt + self.watchdog_kicks
    }
}

pub struct Machine {
    name: String,
    index: usize,
    // Field order is drop order: the vCPU goes before the VM, the VM before its memory.
    vcpu: VcpuFd,
    _vm: VmFd,
    mem: GuestMemoryMmap,
    pic: Pic,
    console: Console,
    ports: SimvmPorts,
    net: Option<VirtioMmio<VirtioNet>>,
    /// Frames the guest sent during the last step, for the world to switch.
    outbox: Vec<Frame>,
    irq: IrqLines,
    costs: ExitCosts,
    now: u64,
    console_lines: LineBuffer,
    pending_lines: Vec<(u64, String)>,
    exit_status: Option<u8>,
    ready_at: Option<u64>,
    saw_panic_line: bool,
    stats: ExitStats,
    device_errors: u64,
    device_error_lines: u32,
}

/// Device errors printed per machine; the rest are only counted (and all are traced).
const MAX_DEVICE_ERROR_LINES: u32 = 10;

impl Machine {
    /// Creates the VM, loads the guest and puts the vCPU at the kernel's entry point.
    pub fn new(kvm: &Kvm, config: MachineConfig) -> Result<Self> {
        if config.mem_size > MAX_RAM {
            return Err(Error::MemoryTooLarge {
                mem_size: config.mem_size,
                max: MAX_RAM,
            });
        }
        if config.mem_size < MIN_RAM {
            return Err(Error::MemoryTooSmall {
                mem_size: config.mem_size,
                needed: MIN_RAM,
            });
        }
        for (cap, name) in [
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
            (Cap::X86UserSpaceMsr, "KVM_CAP_X86_USER_SPACE_MSR"),
            (Cap::X86MsrFilter, "KVM_CAP_X86_MSR_FILTER"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(Error::KvmCapability(name));
            }
        }
        let vm = kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
        // SAFETY: the machine keeps `mem` until after the VM is dropped (field order).
        let mem = unsafe { guest_memory(&vm, config.mem_size) }?;

        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_X86_USER_SPACE_MSR,
            ..Default::default()
        };
        cap.args[0] = u64::from(KVM_MSR_EXIT_REASON_FILTER);
        vm.enable_cap(&cap)
            .map_err(Error::kvm("KVM_ENABLE_CAP(X86_USER_SPACE_MSR)"))?;
        msr::install_filter(&vm)?;

        let vcpu = vm.create_vcpu(0).map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&crate::cpuid::guest_cpuid(&supported)?)
            .map_err(Error::kvm("KVM_SET_CPUID2"))?;

        let image = BootImage {
            kernel: &config.kernel,
            initramfs: &config.initramfs,
            cmdline: &config.cmdline,
            rng_seed: config.rng_seed,
        };
        let entry = boot::load(&mem, config.mem_size, &image)?;
        boot::setup_vcpu(&vcpu, entry)?;

        let irq = IrqLines::default();
        Ok(Self {
            name: config.name,
            index: config.index,
            vcpu,
            _vm: vm,
            mem,
            pic: Pic::new(),
            console: Console::new(irq.clone()),
            ports: SimvmPorts::new(config.wall_base_ns, config.stall_limit),
            net: config
                .mac
                .map(|mac| VirtioNet::with_offloads(mac, config.offloads))
                .map(|net| VirtioMmio::new(net, irq.clone(), abi::IRQ_VIRTIO_BASE)),
            outbox: Vec::new(),
            irq,
            costs: config.costs,
            now: 0,
            console_lines: LineBuffer::default(),
            pending_lines: Vec::new(),
            exit_status: None,
            ready_at: None,
            saw_panic_line: false,
            stats: ExitStats::default(),
            device_errors: 0,
            device_error_lines: 0,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Virtual time of this machine.
    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn stats(&self) -> &ExitStats {
        &self.stats
    }

    /// Virtual time at which init reported READY.
    pub fn ready_at(&self) -> Option<u64> {
        self.ready_at
    }

    pub fn exit_status(&self) -> Option<u8> {
        self.exit_status
    }

    /// Console lines completed since the last call, with the virtual time they completed at.
    pub fn take_console_lines(&mut self) -> Vec<(u64, String)> {
        std::mem::take(&mut self.pending_lines)
    }

    /// The unterminated console line and the last lines, for reports.
    pub fn console_tail(&self) -> Vec<String> {
        self.console_lines.tail()
    }

    /// Moves a halted machine's clock forward to `t` (its timer deadline or another event).
    pub fn wake(&mut self, step: u64, t: u64, trace: &mut Trace) -> Result<()> {
        if t > self.now {
            self.now = t;
            trace.record(step, self.index, self.now, &Event::TimeJump { to_ns: t })?;
        }
        Ok(())
    }

    /// Runs the vCPU to its next exit and handles it.
    pub fn step(
        &mut self,
        step: u64,
        trace: &mut Trace,
        watchdog: Option<&Watchdog>,
    ) -> Result<Status> {
        self.prepare_entry(step, trace)?;
        let exit = loop {
            match self.run_to_exit(watchdog)? {
                // The watchdog interrupted kernel code. Nothing about the guest changed, so
                // resuming it is invisible: the run stays deterministic. (On a PVM host, kernel
                // code runs emulated and can take seconds between exits.)
                Exit::Interrupted if !self.in_user_mode() => self.stats.benign_kicks += 1,
                exit => break exit,
            }
        };
        let (index, now) = (self.index, self.now);
        let event = match exit {
            Exit::PioIn { port, size, value } => {
                self.stats.pio += 1;
                self.now += self.costs.pio_ns;
                Event::PioIn { port, size, value }
            }
            Exit::PioOut { port, size, data } => {
                self.stats.pio += 1;
                self.now += self.costs.pio_ns;
                let bytes = &data[..usize::from(size)];
                let value = le_value(bytes) as u32;
                trace.record(step, index, now, &Event::PioOut { port, size, value })?;
                return self.io_out(step, port, bytes, trace);
            }
            Exit::MmioRead { addr, size, value } => {
                self.stats.mmio += 1;
                self.now += self.costs.mmio_ns;
                Event::MmioRead { addr, size, value }
            }
            Exit::MmioWrite { addr, size, value } => {
                self.stats.mmio += 1;
                self.now += self.costs.mmio_ns;
                trace.record(step, index, now, &Event::MmioWrite { addr, size, value })?;
                self.collect_net_output(step, trace)?;
                return Ok(Status::Running);
            }
            Exit::MsrRead { index, value } => {
                self.stats.msr += 1;
                self.now += self.costs.msr_ns;
                Event::MsrRead { index, value }
            }
            Exit::MsrWrite { index, value } => {
                self.stats.msr += 1;
                self.now += self.costs.msr_ns;
                Event::MsrWrite { index, value }
            }
            Exit::Hlt => {
                self.stats.hlt += 1;
                trace.record(step, index, now, &Event::Halt)?;
                return Ok(self.halted());
            }
            Exit::Interrupted => return self.kicked(step, trace),
            Exit::Crash(kind) => return self.crashed(step, kind),
        };
        trace.record(step, index, now, &event)?;
        Ok(Status::Running)
    }

    /// Enters the guest and turns its exit into an owned [`Exit`], answering the exits that
    /// carry data back into the guest (port and MMIO reads, MSR reads) on the way.
    fn run_to_exit(&mut self, watchdog: Option<&Watchdog>) -> Result<Exit> {
        if let Some(w) = watchdog {
            w.enter();
        }
        let result = self.vcpu.run();
        if let Some(w) = watchdog {
            w.leave();
        }
        let exit = match result {
            Ok(VcpuExit::IoIn(port, data)) => {
                io_in(&mut self.pic, &mut self.console, &self.ports, port, data);
                Exit::PioIn {
                    port,
                    size: data.len() as u8,
                    value: le_value(data) as u32,
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                let mut bytes = [0u8; 4];
                let size = data.len().min(4);
                bytes[..size].copy_from_slice(&data[..size]);
                Exit::PioOut {
                    port,
                    size: size as u8,
                    data: bytes,
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                match (self.net.as_mut(), net_offset(addr)) {
                    (Some(net), Some(offset)) => net.read(offset, data),
                    _ => data.fill(0xff),
                }
                Exit::MmioRead {
                    addr,
                    size: data.len() as u8,
                    value: le_value(data),
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if let (Some(net), Some(offset)) = (self.net.as_mut(), net_offset(addr)) {
                    // A queue notification runs the device here, synchronously.
                    net.write(&self.mem, offset, data);
                }
                Exit::MmioWrite {
                    addr,
                    size: data.len() as u8,
                    value: le_value(data),
                }
            }
            Ok(VcpuExit::X86Rdmsr(exit)) => {
                let value = msr::read(exit.index, self.now);
                *exit.data = value;
                *exit.error = 0;
                Exit::MsrRead {
                    index: exit.index,
                    value,
                }
            }
            Ok(VcpuExit::X86Wrmsr(exit)) => {
                // Writes to time MSRs are accepted and ignored: the guest cannot move virtual time.
                *exit.error = 0;
                Exit::MsrWrite {
                    index: exit.index,
                    value: exit.data,
                }
            }
            Ok(VcpuExit::Hlt) => Exit::Hlt,
            Ok(VcpuExit::Intr) => Exit::Interrupted,
            Ok(VcpuExit::Shutdown) => Exit::Crash(CrashKind::TripleFault),
            Ok(VcpuExit::InternalError) => {
                let run = self.vcpu.get_kvm_run();
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                // union member KVM filled in.
                let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                Exit::Crash(CrashKind::InternalError { suberror })
            }
            Ok(VcpuExit::FailEntry(reason, _)) => Exit::Crash(CrashKind::FailEntry { reason }),
            Ok(other) => Exit::Crash(CrashKind::UnexpectedExit(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
            Err(e) => {
                return Err(Error::Kvm {
                    op: "KVM_RUN",
                    source: e,
                })
            }
        };
        Ok(exit)
    }

    /// Moves frames the guest transmitted to the outbox and records device errors.
    fn collect_net_output(&mut self, step: u64, trace: &mut Trace) -> Result<()> {
        let Some(net) = self.net.as_mut() else {
            return Ok(());
        };
        self.outbox.extend(net.device_mut().take_tx_frames());
        let errors: Vec<String> = net
            .take_errors()
            .iter()
            .map(ToString::to_string)
            .chain(
                net.device_mut()
                    .take_errors()
                    .iter()
                    .map(ToString::to_string),
            )
            .collect();
        for message in errors {
            self.device_errors += 1;
            trace.record(
                step,
                self.index,
                self.now,
                &Event::DeviceError {
                    message: message.clone(),
                },
            )?;
            if self.device_error_lines < MAX_DEVICE_ERROR_LINES {
                self.device_error_lines += 1;
                self.pending_lines
                    .push((self.now, format!("simvm: {}: {message}", self.name)));
            }
        }
        Ok(())
    }

    /// Frames sent since the last call.
    pub fn take_outbox(&mut self) -> Vec<Frame> {
        std::mem::take(&mut self.outbox)
    }

    /// Hands a frame to the machine's NIC; the interrupt reaches the guest at its next entry.
    pub fn deliver_frame(&mut self, frame: &Frame) -> std::result::Result<(), RxDrop> {
        match self.net.as_mut() {
            Some(net) => net.device_mut().deliver(&self.mem, frame),
            None => Err(RxDrop::NotRunning),
        }
    }

    /// Device errors the guest caused (malformed virtio chains and the like).
    pub fn device_errors(&self) -> u64 {
        self.device_errors
    }

    /// Whether the guest is executing user code (CPL 3).
    fn in_user_mode(&self) -> bool {
        self.vcpu.get_sregs().is_ok_and(|s| s.cs.selector & 3 == 3)
    }

    /// Delivers what is due before the guest runs again: the timer, device interrupts, the
    /// clock page.
    fn prepare_entry(&mut self, step: u64, trace: &mut Trace) -> Result<()> {
        if let Some(deadline) = self.ports.deadline().filter(|&d| d <= self.now) {
            self.ports.timer_fired();
            self.pic.raise_edge(abi::IRQ_TIMER);
            trace.record(
                step,
                self.index,
                self.now,
                &Event::TimerFired {
                    deadline_ns: deadline,
                },
            )?;
        }
        self.drain_irq_lines();
        let mut injected = None;
        let run = self.vcpu.get_kvm_run();
        if self.pic.has_pending() && run.ready_for_interrupt_injection != 0 && run.if_flag != 0 {
            injected = self.pic.acknowledge();
        }
        if let Some(vector) = injected {
            crate::kvm_ext::inject_interrupt(&self.vcpu, vector)
                .map_err(Error::kvm("KVM_INTERRUPT"))?;
            self.stats.interrupts += 1;
            self.now += self.costs.irq_ns;
            trace.record(step, self.index, self.now, &Event::Interrupt { vector })?;
        }
        // A request still pending now waits for the guest to enable interrupts; the flag lets a
        // busy guest make the exit that delivers it (docs/guest-abi.md).
        self.ports
            .publish(&self.mem, self.now, self.pic.has_pending());
        Ok(())
    }

    fn drain_irq_lines(&mut self) {
        self.pic.raise_edges(self.irq.take());
    }

    fn halted(&mut self) -> Status {
        self.drain_irq_lines();
        if self.vcpu.get_kvm_run().if_flag == 0 {
            if self.saw_panic_line {
                let report = self.crash_report(0, CrashKind::KernelPanic);
                return Status::Stopped(Stop::Crashed(Box::new(report)));
            }
            return Status::Stopped(Stop::HaltedForever);
        }
        if self.pic.has_pending() {
            return Status::Running;
        }
        Status::Halted {
            wake_at: self.ports.deadline(),
        }
    }

    fn io_out(&mut self, step: u64, port: u16, data: &[u8], trace: &mut Trace) -> Result<Status> {
        let byte = data.first().copied().unwrap_or(0);
        if PIC_PORTS.contains(&port) {
            self.pic.write(port, byte);
        } else if (COM1..COM1 + 8).contains(&port) {
            self.console.write((port - COM1) as u8, byte);
            let output = self.console.take_output();
            self.console_output(&output, step, trace)?;
        } else if SimvmPorts::contains(port) {
            let event = self.ports.write(&self.mem, port, data, self.now);
            return self.port_event(step, event, trace);
        }
        Ok(Status::Running)
    }

    fn console_output(&mut self, bytes: &[u8], step: u64, trace: &mut Trace) -> Result<()> {
        for line in self.console_lines.push(bytes) {
            if line.contains("Kernel panic - not syncing") {
                self.saw_panic_line = true;
            }
            trace.record(
                step,
                self.index,
                self.now,
                &Event::Console { line: line.clone() },
            )?;
            self.pending_lines.push((self.now, line));
        }
        Ok(())
    }

    fn port_event(&mut self, step: u64, event: PortEvent, trace: &mut Trace) -> Result<Status> {
        let message = match event {
            PortEvent::ClockKick(reads) => {
                self.stats.clock_kicks += 1;
                self.now += u64::from(reads) * self.costs.clock_read_ns;
                trace.record(step, self.index, self.now, &Event::ClockKick { reads })?;
                return Ok(Status::Running);
            }
            PortEvent::Control(control) => {
                let message = format!("{control:?}");
                trace.record(step, self.index, self.now, &Event::Control { message })?;
                return Ok(self.control(step, control));
            }
            PortEvent::ClockPageRegistered(gpa) => format!("clock page at {gpa:#x}"),
            PortEvent::ClockPageRejected(gpa) => {
                format!("clock page at {gpa:#x} rejected: not in RAM")
            }
            PortEvent::TimerArmed(_)
            | PortEvent::TimerDisarmed
            | PortEvent::IrqPoll
            | PortEvent::Ignored { .. } => return Ok(Status::Running),
        };
        trace.record(step, self.index, self.now, &Event::Control { message })?;
        Ok(Status::Running)
    }

    fn control(&mut self, step: u64, event: ControlEvent) -> Status {
        match event {
            ControlEvent::Ready => {
                self.ready_at.get_or_insert(self.now);
                Status::Running
            }
            ControlEvent::Exit(status) => {
                self.exit_status = Some(status);
                Status::Running
            }
            ControlEvent::PowerOff => Status::Stopped(Stop::PowerOff {
                exit_status: self.exit_status,
            }),
            ControlEvent::Restart => Status::Stopped(Stop::Restart {
                exit_status: self.exit_status,
            }),
            ControlEvent::Panic => {
                let report = self.crash_report(step, CrashKind::KernelPanic);
                Status::Stopped(Stop::Crashed(Box::new(report)))
            }
            ControlEvent::Unknown(_) => Status::Running,
        }
    }

    fn kicked(&mut self, step: u64, trace: &mut Trace) -> Result<Status> {
        self.stats.watchdog_kicks += 1;
        let rip = self.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
        self.now += self.costs.watchdog_kick_ns;
        trace.record(step, self.index, self.now, &Event::WatchdogKick { rip })?;
        Ok(Status::Running)
    }

    fn crashed(&mut self, step: u64, kind: CrashKind) -> Result<Status> {
        let report = self.crash_report(step, kind);
        Ok(Status::Stopped(Stop::Crashed(Box::new(report))))
    }

    fn crash_report(&mut self, step: u64, kind: CrashKind) -> CrashReport {
        if let Some(line) = self.console_lines.flush() {
            self.pending_lines.push((self.now, line));
        }
        let regs = match (self.vcpu.get_regs(), self.vcpu.get_sregs()) {
            (Ok(r), Ok(s)) => Some((r, s)),
            _ => None,
        };
        let code = regs
            .as_ref()
            .and_then(|(r, s)| crash::code_at(&self.mem, s, r.rip));
        CrashReport {
            machine: self.name.clone(),
            step,
            vtime_ns: self.now,
            kind,
            regs,
            code,
            console_tail: self.console_lines.tail(),
        }
    }

    /// Guest RIP, for reports.
    pub fn rip(&self) -> Option<u64> {
        self.vcpu.get_regs().ok().map(|r| r.rip)
    }

    /// Fingerprints the guest's registers and memory (`--trace-state`).
    pub fn state_fingerprint(&self) -> Result<StateFingerprint> {
        let regs = self.vcpu.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?;
        let sregs = self.vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        Ok(StateFingerprint {
            rip: regs.rip,
            registers: state::registers(&regs, &sregs),
            memory: state::memory(&self.mem),
        })
    }
}

/// Allocates `mem_size` bytes of guest RAM at guest-physical 0 and registers it with `vm`.
///
/// # Safety
///
/// The returned memory must outlive `vm`: KVM keeps using the mapping until the VM is gone.
pub unsafe fn guest_memory(vm: &VmFd, mem_size: u64) -> Result<GuestMemoryMmap> {
    let mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size as usize)]).map_err(|e| {
            Error::MemoryAlloc {
                mem_size,
                reason: e.to_string(),
            }
        })?;
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_bindings::kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which the caller keeps alive as
        // long as the VM (this function's contract), so the guest never sees freed memory.
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(mem)
}

fn io_in(pic: &mut Pic, console: &mut Console, ports: &SimvmPorts, port: u16, data: &mut [u8]) {
    if PIC_PORTS.contains(&port) {
        data.fill(pic.read(port));
    } else if (COM1..COM1 + 8).contains(&port) {
        data.fill(console.read((port - COM1) as u8));
    } else if SimvmPorts::contains(port) {
        ports.read(port, data);
    } else {
        data.fill(0xff);
    }
}

/// Offset of `addr` in the virtio-net window, if it lies there.
fn net_offset(addr: u64) -> Option<u64> {
    let offset = addr.checked_sub(abi::VIRTIO_MMIO_BASE)?;
    (offset < abi::VIRTIO_MMIO_SIZE).then_some(offset)
}

fn le_value(data: &[u8]) -> u64 {
    data.iter()
        .take(8)
        .rev()
        .fold(0, |v, &b| v << 8 | u64::from(b))
}
