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
//!
//! What the guest's port writes do (the PIC, the console, simvm's port block and control
//! channel) is in `ports`; saving and restoring a machine in `snapshot`.

// Values from guests (exit data, frames, requests) must not be truncated silently.
#![warn(clippy::cast_possible_truncation)]

mod ports;
mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kvm_bindings::{kvm_enable_cap, KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_FILTER};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use simvm_devices::abi;
use simvm_devices::bus::{Bus, DeviceId};
use simvm_devices::irq::IrqLines;
use simvm_devices::net::{Frame, MacAddr};
use simvm_devices::pic::{self, Pic};
use simvm_devices::pvclock::{GuestCounts, HostWork, SimvmPorts};
use simvm_devices::serial::Console;
use simvm_devices::virtio::block::{BlockRequest, BlockResult, RequestToken, VirtioBlock};
use simvm_devices::virtio::mmio::VirtioMmio;
use simvm_devices::virtio::net::{Offloads, RxDrop, VirtioNet};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::boot::{self, BootImage};
use crate::boot_data::{self, BootData};
use crate::clock::ExitCosts;
use crate::cmdline::kernel_cmdline;
use crate::console::LineBuffer;
use crate::crash::{CrashKind, CrashReport};
use crate::error::{Error, Result};
use crate::layout::{MAX_RAM, MIN_RAM};
use crate::msr;
use crate::page_work::PageWork;
use crate::profile::{ExitReason, KernelProbes, MachineProfile, ProcessProbe, StackWalker};
use crate::skew::{ClockSkew, GuestClock};
use crate::state::{self, StateFingerprint};
use crate::template::Template;
use crate::trace::{Event, Note, Stable, Trace};
use crate::watchdog::Watchdog;

pub use snapshot::{MachineClock, MachineState};

const COM1: u16 = 0x3f8;
/// Virtio-mmio windows a machine can have: IRQs 5 to 15.
pub const MAX_VIRTIO_DEVICES: usize = 11;

/// How a machine is built.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    pub name: String,
    /// 0-based position in the world; also the machine's trace id.
    pub index: usize,
    pub mem_size: u64,
    pub kernel: PathBuf,
    /// Initramfs archives in order (shared between machines and incarnations); the archive of
    /// `boot` follows them.
    pub initramfs: Vec<Arc<[u8]>>,
    /// Who the machine is and what it runs, as the per-machine boot archive tells init.
    pub boot: Option<BootData>,
    /// Kernel parameters after the fixed ones and the virtio devices.
    pub cmdline_extra: String,
    pub rng_seed: [u8; 32],
    pub wall_base_ns: u64,
    pub stall_limit: u32,
    pub costs: ExitCosts,
    /// The MAC of the machine's virtio-net interface; `None` for a machine without a network.
    pub mac: Option<MacAddr>,
    /// The offloads virtio-net offers (all by default; fewer only to measure what they save).
    pub offloads: Offloads,
    /// The capacity in sectors of each virtio-blk disk, in order (`vda`, `vdb`, ...). The disks
    /// themselves belong to the world; the machine only has their devices.
    pub disks: Vec<u64>,
    /// 1 for a machine's first boot, then one more for each restart.
    pub incarnation: u32,
    /// World virtual time at which this incarnation powers on: its guest's monotonic clock
    /// starts at zero there (at the template's clock, when started from one), its wall clock
    /// goes on from the world's.
    pub epoch_ns: u64,
    /// Parts per million the guest's clock gains against world time from power-on (a clock
    /// rate fault outlives the incarnation: it is the machine's oscillator).
    pub clock_ppm: i64,
    /// Start from this template instead of booting (`None`: boot).
    pub template: Option<Arc<Template>>,
    /// Who clears and copies the guest kernel's pages (invisible to the guest either way).
    pub page_work: PageWork,
}

impl MachineConfig {
    /// Machine 0, `name`, booting `kernel` with `initramfs` in `mem_size` bytes: no boot data,
    /// network or disks, a zero RNG seed, the default clock and costs, first incarnation. Set
    /// the rest with struct update syntax.
    pub fn new(name: &str, kernel: PathBuf, initramfs: Vec<Arc<[u8]>>, mem_size: u64) -> Self {
        Self {
            name: name.to_string(),
            index: 0,
            mem_size,
            kernel,
            initramfs,
            boot: None,
            cmdline_extra: String::new(),
            rng_seed: [0; 32],
            wall_base_ns: crate::clock::DEFAULT_WALL_BASE_NS,
            stall_limit: crate::clock::DEFAULT_STALL_LIMIT,
            costs: ExitCosts::default(),
            mac: None,
            offloads: Offloads::default(),
            disks: Vec::new(),
            incarnation: 1,
            epoch_ns: 0,
            clock_ppm: 0,
            template: None,
            page_work: PageWork::for_this_host(),
        }
    }
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
    /// Init asked for its identity on a machine that has none to give: the point a template
    /// is saved at. The identity buffer is at this guest frame.
    TemplatePoint { identity_frame: u32 },
}

/// Why a machine stopped.
#[derive(Debug, Clone)]
pub enum Stop {
    /// Orderly power-off; `exit_status` is the command's, if init reported it.
    PowerOff { exit_status: Option<u8> },
    /// The world cut the power (a `kill` in the scenario).
    Killed,
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
    /// The guest had simvm clear, copy or fill memory for it; nothing else happened.
    HostWork(HostWork),
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
    /// Signals from elsewhere that interrupted `KVM_RUN`; the guest was resumed invisibly.
    pub foreign_signals: u64,
    /// Memory work the guest had simvm do ([`PageWork::Host`]), by [`HostWork`] kind in
    /// [`HostWork::ALL`]'s order; resumed invisibly.
    pub host_work: [u64; HostWork::ALL.len()],
}

impl ExitStats {
    pub fn total(&self) -> u64 {
        self.pio + self.mmio + self.msr + self.hlt + self.watchdog_kicks
    }

    /// Adds `other`'s counts (another incarnation's) to these.
    pub fn add(&mut self, other: &ExitStats) {
        self.pio += other.pio;
        self.mmio += other.mmio;
        self.msr += other.msr;
        self.hlt += other.hlt;
        self.interrupts += other.interrupts;
        self.clock_kicks += other.clock_kicks;
        self.watchdog_kicks += other.watchdog_kicks;
        self.benign_kicks += other.benign_kicks;
        self.foreign_signals += other.foreign_signals;
        for (mine, theirs) in self.host_work.iter_mut().zip(other.host_work) {
            *mine += theirs;
        }
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
    ports: SimvmPorts,
    /// Port devices (the console); the PIC and the simvm port block are the machine's own.
    pio: Bus,
    /// The virtio-mmio windows.
    mmio: Bus,
    console: DeviceId,
    net: Option<DeviceId>,
    disks: Vec<DeviceId>,
    /// Frames the guest sent during the last step, for the world to switch.
    outbox: Vec<Frame>,
    /// Disk requests the guest made during the last step: disk index and request.
    block_requests: Vec<(usize, BlockRequest)>,
    irq: IrqLines,
    costs: ExitCosts,
    incarnation: u32,
    /// Hash of the CPUID the guest sees (`cpuid::template_hash`).
    cpu_template: String,
    /// Since when (host real time) every watchdog kick of the current stretch without an exit
    /// has found the guest in user code.
    user_mode_since: Option<std::time::Duration>,
    /// World time at power-on; the guest's clock counts from here.
    epoch: u64,
    /// The guest's clock at power-on: zero after a boot, the template's clock after a restore.
    clock_offset: u64,
    /// How fast the guest's clock runs against world time since power-on (clock faults).
    skew: ClockSkew,
    /// World virtual time.
    now: u64,
    console_lines: LineBuffer,
    pending_lines: Vec<(u64, String)>,
    exit_status: Option<u8>,
    ready_at: Option<u64>,
    saw_panic_line: bool,
    stats: ExitStats,
    device_errors: u64,
    device_error_lines: u32,
    /// What the machine was built from; its boot data answers the guest's identity request.
    config: MachineConfig,
    /// Exits by reason and samples, when profiling.
    profile: Option<MachineProfile>,
    /// Names the process of a user sample.
    process_probe: Option<ProcessProbe>,
    /// How a sample's kernel stack is walked (`--profile`).
    stack_walker: StackWalker,
    /// The guest's own counts and the virtual time when profiling began (a template's boot
    /// is not this run's).
    counts_at_profile_start: GuestCounts,
    now_at_profile_start: u64,
    /// The guest's system call count at its last halt, and the halt's virtual time when the
    /// count had moved since the one before: when its programs last did anything.
    syscalls_seen: u64,
    last_syscall_by: Option<u64>,
}

/// Device errors printed per machine; the rest are only counted (and all are traced).
const MAX_DEVICE_ERROR_LINES: u32 = 10;

impl Machine {
    /// Powers on the machine `config` describes: from its template if it has one, else by
    /// booting.
    pub fn power_on(kvm: &Kvm, config: MachineConfig) -> Result<Self> {
        match config.template.clone() {
            Some(template) => template.start(kvm, config),
            None => Self::new(kvm, config),
        }
    }

    /// Creates the VM, loads the guest and puts the vCPU at the kernel's entry point.
    pub fn new(kvm: &Kvm, config: MachineConfig) -> Result<Self> {
        check_memory_size(config.mem_size)?;
        let mem = anonymous_memory(config.mem_size)?;
        let (machine, windows) = Self::assemble(kvm, config, mem)?;
        let cmdline = kernel_cmdline(&windows, &machine.config.cmdline_extra);
        let image = BootImage {
            kernel: &machine.config.kernel,
            initramfs: &machine.config.initramfs,
            cmdline: &cmdline,
            rng_seed: machine.config.rng_seed,
        };
        let entry = boot::load(&machine.mem, machine.config.mem_size, &image)?;
        boot::setup_vcpu(&machine.vcpu, entry)?;
        Ok(machine)
    }

    /// Creates the VM with `mem` as its RAM, the vCPU with simvm's CPU model, and the devices;
    /// returns the machine and its virtio windows (`(address, irq)`). Nothing is loaded yet.
    fn assemble(
        kvm: &Kvm,
        config: MachineConfig,
        mem: GuestMemoryMmap,
    ) -> Result<(Self, Vec<(u64, u8)>)> {
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
        if let Some(boot) = &config.boot {
            boot_data::check_size(boot)?;
        }
        let vm = kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
        // SAFETY: the machine keeps `mem` until after the VM is dropped (field order).
        unsafe { register_memory(&vm, &mem) }?;

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
        let cpuid = crate::cpuid::guest_cpuid(&supported)?;
        vcpu.set_cpuid2(&cpuid)
            .map_err(Error::kvm("KVM_SET_CPUID2"))?;
        let cpu_template = crate::cpuid::template_hash(&cpuid);

        let irq = IrqLines::default();
        let mut devices = VirtioDevices::new(&irq);
        if let Some(mac) = config.mac {
            let net = VirtioNet::with_offloads(mac, config.offloads);
            devices.add(net)?;
        }
        for (i, &sectors) in config.disks.iter().enumerate() {
            let serial = format!("simvm-{}-{}", config.name, disk_name(i));
            devices.add(VirtioBlock::new(sectors, &serial))?;
        }
        let VirtioDevices {
            bus: mmio,
            ids,
            windows,
            ..
        } = devices;
        let (net, disks) = match config.mac {
            Some(_) => (ids.first().copied(), ids[1..].to_vec()),
            None => (None, ids),
        };

        let mut pio = Bus::new();
        let console = pio
            .insert(Box::new(Console::new(irq.clone())), COM1.into(), 8)
            .map_err(|e| Error::Devices(e.to_string()))?;
        // The guest's wall clock goes on across incarnations: it reads base + epoch + its own time.
        let wall_base_ns = config.wall_base_ns.saturating_add(config.epoch_ns);
        let machine = Self {
            name: config.name.clone(),
            index: config.index,
            vcpu,
            _vm: vm,
            mem,
            pic: Pic::new(),
            ports: SimvmPorts::new(wall_base_ns, config.stall_limit)
                .with_pages_by_vmm(config.page_work == PageWork::Host),
            pio,
            mmio,
            console,
            net,
            disks,
            outbox: Vec::new(),
            block_requests: Vec::new(),
            irq,
            costs: config.costs,
            incarnation: config.incarnation,
            cpu_template,
            user_mode_since: None,
            epoch: config.epoch_ns,
            clock_offset: 0,
            skew: ClockSkew::with_rate(config.clock_ppm),
            now: config.epoch_ns,
            console_lines: LineBuffer::default(),
            pending_lines: Vec::new(),
            exit_status: None,
            ready_at: None,
            saw_panic_line: false,
            stats: ExitStats::default(),
            device_errors: 0,
            device_error_lines: 0,
            config,
            profile: None,
            process_probe: None,
            stack_walker: StackWalker::frame_pointers(),
            counts_at_profile_start: GuestCounts::default(),
            syscalls_seen: 0,
            last_syscall_by: None,
            now_at_profile_start: 0,
        };
        Ok((machine, windows))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Hash of the CPU model the guest sees.
    pub fn cpu_template(&self) -> &str {
        &self.cpu_template
    }

    /// 1 for the machine's first boot, then one more for each restart.
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    /// The guest's own clock: virtual time since this incarnation powered on, at the clock's
    /// rate, plus the template's time for a restored machine.
    fn guest_now(&self) -> u64 {
        self.guest_time_at(self.now)
    }

    /// The guest's clock at world time `world`.
    fn guest_time_at(&self, world: u64) -> u64 {
        self.guest_clock().guest(world)
    }

    /// This incarnation's clock against world time (to read back times the guest recorded).
    pub fn guest_clock(&self) -> GuestClock {
        GuestClock {
            epoch: self.epoch,
            offset: self.clock_offset,
            skew: self.skew,
        }
    }

    /// The armed timer's deadline in world time (a deadline from before power-on is due now).
    pub fn timer_deadline(&self) -> Option<u64> {
        let clock = self.guest_clock();
        self.ports.deadline().map(|d| clock.world(d))
    }

    /// From world time `at` on, the guest's clocks (monotonic, wall, TSC) gain `ppm` parts per
    /// million against world time; they stay continuous.
    pub fn set_clock_rate(&mut self, at: u64, ppm: i64) {
        self.skew.set_rate(at.saturating_sub(self.epoch), ppm);
    }

    /// How far the guest's wall clock is ahead of the world's wall time at world time `at`
    /// (negative: behind): its seeded offset, clock steps and what its rate has gained. A
    /// halted machine's clock reads its halt time, but its rate runs on to `at`.
    pub fn wall_clock_error_ns(&self, at: u64) -> i64 {
        let at = at.max(self.now);
        let guest = i128::from(self.ports.wall_base_ns()) + i128::from(self.guest_time_at(at));
        let world = i128::from(crate::clock::DEFAULT_WALL_BASE_NS) + i128::from(at);
        i64::try_from(guest - world).unwrap_or(if guest > world { i64::MAX } else { i64::MIN })
    }

    /// The guest's clock rate, in parts per million gained.
    pub fn clock_rate(&self) -> i64 {
        self.skew.ppm()
    }

    /// Steps the guest's wall clock (`CLOCK_REALTIME`) by `delta_ns`, as a settimeofday would;
    /// its monotonic clock does not move. The guest kernel applies it at its next timer
    /// interrupt (docs/guest-abi.md, "Wall clock steps").
    pub fn step_wall_clock(&mut self, delta_ns: i64) {
        self.ports.step_wall(delta_ns);
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
            if let Some(profile) = self.profile.as_mut() {
                profile.idle_ns = profile.idle_ns.saturating_add(t - self.now);
            }
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
                // The guest had memory cleared, copied or filled: no virtual time, no event, no
                // interrupt here, so the run is the same as where the guest does its own.
                Exit::HostWork(work) => self.stats.host_work[work as usize] += 1,
                // A profiling sample: note where the guest was and resume it, invisibly.
                Exit::Interrupted if watchdog.is_some_and(Watchdog::take_sample) => {
                    self.take_sample();
                    if watchdog.is_some_and(Watchdog::take_kick) {
                        // A kick came with it: look again at the next one.
                        self.stats.benign_kicks += 1;
                    }
                }
                // Somebody else's signal (a debugger, a profiler, the user's shell): nothing
                // about the guest changed, so resuming it is invisible.
                Exit::Interrupted if !watchdog.is_some_and(Watchdog::take_kick) => {
                    self.stats.foreign_signals += 1
                }
                // The watchdog interrupted the guest. Resuming it is invisible, so the run stays
                // deterministic, unless the guest is spinning in user code, which only more
                // virtual time (a timer interrupt) can end.
                Exit::Interrupted if !self.spinning_in_user_mode(watchdog) => {
                    self.stats.benign_kicks += 1
                }
                exit => break exit,
            }
        };
        self.user_mode_since = None;
        let (index, now) = (self.index, self.now);
        let event = match exit {
            Exit::PioIn { port, size, value } => {
                self.stats.pio += 1;
                self.advance(self.costs.pio_ns);
                Event::PioIn { port, size, value }
            }
            Exit::PioOut { port, size, data } => {
                self.stats.pio += 1;
                self.advance(self.costs.pio_ns);
                let bytes = &data[..usize::from(size)];
                let value = le_u32(bytes);
                trace.record(step, index, now, &Event::PioOut { port, size, value })?;
                return self.io_out(step, port, bytes, trace);
            }
            Exit::MmioRead { addr, size, value } => {
                self.stats.mmio += 1;
                self.advance(self.costs.mmio_ns);
                Event::MmioRead { addr, size, value }
            }
            Exit::MmioWrite { addr, size, value } => {
                self.stats.mmio += 1;
                self.advance(self.costs.mmio_ns);
                trace.record(step, index, now, &Event::MmioWrite { addr, size, value })?;
                if let Some(kick) = self.ports.mmio_write(addr, size, value) {
                    return self.port_event(step, kick, trace);
                }
                self.collect_device_output(step, trace)?;
                return Ok(Status::Running);
            }
            Exit::MsrRead { index, value } => {
                self.stats.msr += 1;
                self.advance(self.costs.msr_ns);
                Event::MsrRead { index, value }
            }
            Exit::MsrWrite { index, value } => {
                self.stats.msr += 1;
                self.advance(self.costs.msr_ns);
                Event::MsrWrite { index, value }
            }
            Exit::Hlt => {
                self.stats.hlt += 1;
                self.note_syscalls(now);
                trace.record(step, index, now, &Event::Halt)?;
                return Ok(self.halted());
            }
            Exit::Interrupted => return self.kicked(step, trace),
            Exit::Crash(kind) => return self.crashed(step, kind),
            Exit::HostWork(_) => unreachable!("host work is resumed above"),
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
        // MSR reads answer from the guest's clock, which only moves between runs.
        let guest_now = self.guest_now();
        let started = self.profile.is_some().then(crate::host_tsc::monotonic);
        let result = self.vcpu.run();
        if let Some(w) = watchdog {
            w.leave();
        }
        if let (Some(profile), Some(started)) = (self.profile.as_mut(), started) {
            let wall = crate::host_tsc::monotonic().saturating_sub(started);
            profile.exit(exit_reason(&result), wall);
        }
        let exit = match result {
            Ok(VcpuExit::IoIn(port, data)) => {
                io_in(&mut self.pic, &self.ports, &mut self.pio, port, data);
                Exit::PioIn {
                    port,
                    size: access_size(data),
                    value: le_u32(data),
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => match HostWork::of_port(port) {
                // A frame or range outside RAM stays as it is: the guest's own memory is the
                // loser.
                Some(work) => {
                    self.ports.do_host_work(work, &self.mem, data);
                    Exit::HostWork(work)
                }
                None => {
                    let mut bytes = [0u8; 4];
                    let size = data.len().min(4);
                    bytes[..size].copy_from_slice(&data[..size]);
                    Exit::PioOut {
                        port,
                        size: access_size(&bytes[..size]),
                        data: bytes,
                    }
                }
            },
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio.read(addr, data) {
                    data.fill(0xff);
                }
                Exit::MmioRead {
                    addr,
                    size: access_size(data),
                    value: le_value(data),
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                // A queue notification runs the device here, synchronously.
                self.mmio.write(&self.mem, addr, data);
                Exit::MmioWrite {
                    addr,
                    size: access_size(data),
                    value: le_value(data),
                }
            }
            Ok(VcpuExit::X86Rdmsr(exit)) => {
                let value = msr::read(exit.index, guest_now);
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

    /// Moves what the guest handed its virtio devices (frames to send, disk requests) out for
    /// the world, and records the errors the devices found.
    fn collect_device_output(&mut self, step: u64, trace: &mut Trace) -> Result<()> {
        // (device, layer, message): the digest takes the device and layer, never the text.
        let mut errors: Vec<(String, DeviceLayer, String)> = Vec::new();
        if let Some(net) = self
            .net
            .and_then(|id| self.mmio.get_mut::<VirtioMmio<VirtioNet>>(id))
        {
            self.outbox.extend(net.device_mut().take_tx_frames());
            for e in net.take_errors() {
                errors.push(("net".into(), DeviceLayer::Transport, e.to_string()));
            }
            for e in net.device_mut().take_errors() {
                errors.push(("net".into(), DeviceLayer::Device, e.to_string()));
            }
        }
        for (disk, &id) in self.disks.iter().enumerate() {
            let Some(blk) = self.mmio.get_mut::<VirtioMmio<VirtioBlock>>(id) else {
                continue;
            };
            let requests = blk.device_mut().take_requests();
            self.block_requests
                .extend(requests.into_iter().map(|request| (disk, request)));
            for e in blk.take_errors() {
                errors.push((disk_name(disk), DeviceLayer::Transport, e.to_string()));
            }
            for e in blk.device_mut().take_errors() {
                errors.push((disk_name(disk), DeviceLayer::Device, e.to_string()));
            }
        }
        for (device, layer, message) in errors {
            self.guest_error(step, &device, layer, &message, trace)?;
        }
        Ok(())
    }

    /// Reports an error `device` found in what the guest did, at `layer`; the digest takes
    /// the device and the layer, never the message.
    fn guest_error(
        &mut self,
        step: u64,
        device: &str,
        layer: DeviceLayer,
        message: &dyn std::fmt::Display,
        trace: &mut Trace,
    ) -> Result<()> {
        let stable = Stable::new(1).str(device).u64(layer as u64);
        let note = Note::new(format!("{device}: {message}"), stable);
        self.device_error(step, note, trace)
    }

    /// Counts, traces and (up to a limit) prints an error a device found in what the guest did.
    fn device_error(&mut self, step: u64, message: Note, trace: &mut Trace) -> Result<()> {
        self.device_errors += 1;
        let line = format!("simvm: {}: {}", self.name, message.text);
        trace.record(step, self.index, self.now, &Event::DeviceError { message })?;
        if self.device_error_lines < MAX_DEVICE_ERROR_LINES {
            self.device_error_lines += 1;
            self.pending_lines.push((self.now, line));
        }
        Ok(())
    }

    /// Disk requests made since the last call: the disk's index and the request.
    pub fn take_block_requests(&mut self) -> Vec<(usize, BlockRequest)> {
        std::mem::take(&mut self.block_requests)
    }

    /// Whether the guest's driver of disk `disk` accepted `VIRTIO_BLK_F_FLUSH` (and so flushes
    /// what must be durable); without it Linux treats the disk as write-through.
    pub fn disk_write_cache(&self, disk: usize) -> bool {
        self.disks
            .get(disk)
            .and_then(|&id| self.mmio.get::<VirtioMmio<VirtioBlock>>(id))
            .is_some_and(|blk| blk.device().write_cache())
    }

    /// Completes a disk request into guest memory; the interrupt reaches the guest at its next
    /// entry. A request from before a device reset is ignored by the device.
    pub fn complete_block(&mut self, disk: usize, token: RequestToken, result: BlockResult) {
        let id = self.disks.get(disk).copied();
        if let Some(blk) = id.and_then(|id| self.mmio.get_mut::<VirtioMmio<VirtioBlock>>(id)) {
            blk.device_mut().complete(&self.mem, token, result);
        }
    }

    /// Frames sent since the last call.
    pub fn take_outbox(&mut self) -> Vec<Frame> {
        std::mem::take(&mut self.outbox)
    }

    /// Hands a frame to the machine's NIC; the interrupt reaches the guest at its next entry.
    /// A malformed receive chain the NIC found on the way is reported now, at this step.
    pub fn deliver_frame(
        &mut self,
        step: u64,
        frame: &Frame,
        trace: &mut Trace,
    ) -> Result<std::result::Result<(), RxDrop>> {
        let net = self
            .net
            .and_then(|id| self.mmio.get_mut::<VirtioMmio<VirtioNet>>(id));
        let Some(net) = net else {
            return Ok(Err(RxDrop::NotRunning));
        };
        let result = net.device_mut().deliver(&self.mem, frame);
        let errors = net.device_mut().take_errors();
        for e in errors {
            self.guest_error(step, "net", DeviceLayer::Device, &e, trace)?;
        }
        Ok(result)
    }

    /// Device errors the guest caused (malformed virtio chains and the like).
    pub fn device_errors(&self) -> u64 {
        self.device_errors
    }

    /// Collects exits by reason and samples from now on (`--profile`); samples are named by
    /// process and their kernel stacks walked with `probes`, read from this machine's kernel
    /// (`KernelProbes::for_kernel`).
    pub fn enable_profile(&mut self, probes: KernelProbes) {
        if self.profile.is_none() {
            self.profile = Some(MachineProfile::default());
            self.counts_at_profile_start = self.guest_counts();
            self.now_at_profile_start = self.now;
        }
        self.process_probe = probes.process;
        self.stack_walker = probes.stacks;
    }

    /// The guest kernel this machine boots.
    pub fn kernel(&self) -> &Path {
        &self.config.kernel
    }

    /// The profile collected so far, if profiling, with the guest's counts since it began;
    /// taken, so that a retiring incarnation hands over its samples without a copy.
    pub fn take_profile(&mut self) -> Option<MachineProfile> {
        let mut profile = self.profile.take()?;
        profile.guest = self.guest_counts().since(&self.counts_at_profile_start);
        profile.vtime_ns = self.now.saturating_sub(self.now_at_profile_start);
        Some(profile)
    }

    /// Notes, at a halt at `now`, whether the guest made system calls since the last one.
    fn note_syscalls(&mut self, now: u64) {
        let syscalls = self.guest_counts().syscalls;
        if syscalls != self.syscalls_seen {
            self.syscalls_seen = syscalls;
            self.last_syscall_by = Some(now);
        }
    }

    /// The virtual time of the first halt after the guest's last system call (`None` if it
    /// has made none yet): a machine whose programs are blocked for good stops moving it.
    pub fn last_syscall_by(&self) -> Option<u64> {
        self.last_syscall_by
    }

    /// What the guest kernel counted in its clock page; zero before it registered one.
    fn guest_counts(&self) -> GuestCounts {
        self.ports.guest_counts(&self.mem).unwrap_or_default()
    }

    /// Records where the guest was when a profiling sample interrupted it.
    fn take_sample(&mut self) {
        if self.profile.is_none() {
            return;
        }
        let (Ok(regs), Ok(sregs)) = (self.vcpu.get_regs(), self.vcpu.get_sregs()) else {
            return;
        };
        let user = sregs.cs.selector & 3 == 3;
        let stack = (!user).then(|| self.stack_walker.kernel_stack(&self.mem, &sregs, &regs));
        // The running task names the process for user and kernel samples alike.
        let comm = self
            .process_probe
            .as_mut()
            .map(|probe| probe.current_comm(&self.mem, &sregs));
        if let Some(profile) = self.profile.as_mut() {
            let name = comm.as_ref().and_then(|c| c.as_deref()).unwrap_or("?");
            if comm.is_some() {
                profile.process_sample(name);
            }
            match stack {
                Some(stack) => profile.kernel_sample(stack),
                None => profile.user_sample(name),
            }
        }
    }

    /// Whether the guest is executing user code (CPL 3).
    fn in_user_mode(&self) -> bool {
        self.vcpu.get_sregs().is_ok_and(|s| s.cs.selector & 3 == 3)
    }

    /// Whether a watchdog kick found a guest spinning in user code: in user mode at every kick
    /// for at least the watchdog's limit (kicks come every quarter limit while the guest does
    /// not exit). One kick in user code is not enough: on a PVM host, emulated kernel work
    /// (page faults, system calls) can go seconds without an exit on a loaded host, and a kick
    /// may land in the user code between.
    fn spinning_in_user_mode(&mut self, watchdog: Option<&Watchdog>) -> bool {
        if !self.in_user_mode() {
            self.user_mode_since = None;
            return false;
        }
        let now = crate::host_tsc::monotonic();
        let since = *self.user_mode_since.get_or_insert(now);
        watchdog.is_some_and(|w| now.saturating_sub(since) >= w.limit())
    }

    /// Delivers what is due before the guest runs again: the timer, device interrupts, the
    /// clock page.
    fn prepare_entry(&mut self, step: u64, trace: &mut Trace) -> Result<()> {
        if let Some(deadline) = self.ports.deadline().filter(|&d| d <= self.guest_now()) {
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
            self.advance(self.costs.irq_ns);
            trace.record(step, self.index, self.now, &Event::Interrupt { vector })?;
        }
        // A request still pending now waits for the guest to enable interrupts; the flag lets a
        // busy guest make the exit that delivers it (docs/guest-abi.md).
        self.ports
            .publish(&self.mem, self.guest_now(), self.pic.has_pending());
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
            wake_at: self.timer_deadline(),
        }
    }

    /// Moves the clock forward by `ns`. Virtual time saturates rather than wraps: no guest
    /// can turn its clock back by asking for too much (the port block bounds what it may ask).
    fn advance(&mut self, ns: u64) {
        self.now = self.now.saturating_add(ns);
    }

    /// Guest RIP, for reports.
    pub fn rip(&self) -> Option<u64> {
        self.vcpu.get_regs().ok().map(|r| r.rip)
    }

    /// Fingerprints the guest's registers and memory (`--trace-state`).
    pub fn state_fingerprint(&self) -> Result<StateFingerprint> {
        let regs = self.vcpu.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?;
        let sregs = self.vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        let fpu = self.vcpu.get_fpu().map_err(Error::kvm("KVM_GET_FPU"))?;
        let entries: Vec<kvm_bindings::kvm_msr_entry> = state::STATE_MSRS
            .iter()
            .map(|&index| kvm_bindings::kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = kvm_bindings::Msrs::from_entries(&entries)
            .map_err(|e| Error::Devices(format!("MSR list: {e:?}")))?;
        // KVM reads the MSRs in order and stops at the first it cannot read; those read count.
        let read = self
            .vcpu
            .get_msrs(&mut msrs)
            .map_err(Error::kvm("KVM_GET_MSRS"))?;
        let read = &msrs.as_slice()[..read.min(entries.len())];
        Ok(StateFingerprint {
            rip: regs.rip,
            registers: state::registers(&regs, &sregs),
            fpu_msrs: state::fpu_msrs(&fpu, read),
            memory: state::memory(&self.mem),
        })
    }
}

/// Refuses memory sizes simvm machines cannot have.
fn check_memory_size(mem_size: u64) -> Result<()> {
    if mem_size > MAX_RAM {
        return Err(Error::MemoryTooLarge {
            mem_size,
            max: MAX_RAM,
        });
    }
    if mem_size < MIN_RAM {
        return Err(Error::MemoryTooSmall {
            mem_size,
            needed: MIN_RAM,
        });
    }
    Ok(())
}

/// Allocates `mem_size` bytes of guest RAM at guest-physical 0 and registers it with `vm`.
///
/// # Safety
///
/// The returned memory must outlive `vm`: KVM keeps using the mapping until the VM is gone.
pub unsafe fn guest_memory(vm: &VmFd, mem_size: u64) -> Result<GuestMemoryMmap> {
    let mem = anonymous_memory(mem_size)?;
    // SAFETY: the caller keeps the memory alive as long as the VM (this function's contract).
    unsafe { register_memory(vm, &mem) }?;
    Ok(mem)
}

/// `mem_size` bytes of zeroed guest RAM at guest-physical 0.
fn anonymous_memory(mem_size: u64) -> Result<GuestMemoryMmap> {
    let bytes = usize::try_from(mem_size).map_err(|_| Error::MemoryTooLarge {
        mem_size,
        max: MAX_RAM,
    })?;
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes)]).map_err(|e| Error::MemoryAlloc {
        mem_size,
        reason: e.to_string(),
    })
}

/// Registers every region of `mem` with `vm` as guest RAM.
///
/// # Safety
///
/// `mem` must outlive `vm`: KVM keeps using the mappings until the VM is gone.
pub unsafe fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_bindings::kvm_userspace_memory_region {
            slot: u32::try_from(slot)
                .map_err(|_| Error::Devices("too many memory slots".into()))?,
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
    Ok(())
}

/// Where a device error was found: in the virtio transport or in the device behind it.
#[derive(Clone, Copy)]
enum DeviceLayer {
    Transport = 1,
    Device = 2,
}

/// The virtio-mmio windows of a machine being built: device `i` at `VIRTIO_MMIO_BASE + i * 4K`
/// with IRQ `IRQ_VIRTIO_BASE + i`, as the kernel command line announces them.
struct VirtioDevices {
    bus: Bus,
    ids: Vec<DeviceId>,
    /// `(address, irq)` of each window, for the command line.
    windows: Vec<(u64, u8)>,
    irq: IrqLines,
}

impl VirtioDevices {
    fn new(irq: &IrqLines) -> Self {
        Self {
            bus: Bus::new(),
            ids: Vec::new(),
            windows: Vec::new(),
            irq: irq.clone(),
        }
    }

    fn add<D: simvm_devices::virtio::VirtioDevice + 'static>(&mut self, device: D) -> Result<()> {
        let slot = self.ids.len();
        if slot >= MAX_VIRTIO_DEVICES {
            return Err(Error::Devices(format!(
                "a machine has at most {MAX_VIRTIO_DEVICES} virtio devices (a NIC and disks)"
            )));
        }
        // Both fit: slot < MAX_VIRTIO_DEVICES keeps the IRQ at most 15.
        let irq = u8::try_from(slot)
            .ok()
            .and_then(|slot| abi::IRQ_VIRTIO_BASE.checked_add(slot))
            .ok_or_else(|| Error::Devices(format!("no interrupt line for virtio slot {slot}")))?;
        let addr = abi::VIRTIO_MMIO_BASE + slot as u64 * abi::VIRTIO_MMIO_SIZE;
        let transport = VirtioMmio::new(device, self.irq.clone(), irq);
        let id = self
            .bus
            .insert(Box::new(transport), addr, abi::VIRTIO_MMIO_SIZE)
            .map_err(|e| Error::Devices(e.to_string()))?;
        self.ids.push(id);
        self.windows.push((addr, irq));
        Ok(())
    }
}

/// The guest's name of disk `index`: `vda`, `vdb`, ... (Linux's virtio-blk naming).
pub fn disk_name(index: usize) -> String {
    let mut name = String::from("vd");
    // Linux continues with vdaa after vdz; simvm machines have far fewer disks.
    let letter = |n: usize| char::from(b'a' + u8::try_from(n % 26).unwrap_or(0));
    if index >= 26 {
        name.push(letter(index / 26 - 1));
    }
    name.push(letter(index));
    name
}

/// Answers a port read: the PIC, the simvm port block, then the port bus; all ones for a port
/// nothing claims.
fn io_in(pic: &mut Pic, ports: &SimvmPorts, pio: &mut Bus, port: u16, data: &mut [u8]) {
    if pic::PORTS.contains(&port) {
        data.fill(pic.read(port));
    } else if SimvmPorts::contains(port) {
        ports.read(port, data);
    } else if !pio.read(port.into(), data) {
        data.fill(0xff);
    }
}

/// How the profile groups the end of a `KVM_RUN`.
fn exit_reason(result: &std::result::Result<VcpuExit, vmm_sys_util::errno::Error>) -> ExitReason {
    let window = |addr: u64| addr.saturating_sub(abi::VIRTIO_MMIO_BASE) / abi::VIRTIO_MMIO_SIZE;
    match result {
        Ok(VcpuExit::IoOut(port, _)) => {
            HostWork::of_port(*port).map_or(ExitReason::Pio(*port), ExitReason::HostWork)
        }
        Ok(VcpuExit::IoIn(port, _)) => ExitReason::Pio(*port),
        Ok(VcpuExit::MmioWrite(abi::USER_KICK_GPA, _)) => ExitReason::UserClockKick,
        Ok(VcpuExit::MmioRead(addr, _) | VcpuExit::MmioWrite(addr, _)) => {
            ExitReason::Mmio(window(*addr))
        }
        Ok(VcpuExit::X86Rdmsr(exit)) => ExitReason::Msr(exit.index),
        Ok(VcpuExit::X86Wrmsr(exit)) => ExitReason::Msr(exit.index),
        Ok(VcpuExit::Hlt) => ExitReason::Hlt,
        Ok(VcpuExit::Intr) => ExitReason::Signal,
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => ExitReason::Signal,
        _ => ExitReason::Other,
    }
}

/// The low four bytes of a port or MMIO value (port accesses are at most four bytes).
fn le_u32(data: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    let n = data.len().min(4);
    bytes[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(bytes)
}

/// The size of an access, as the trace records it (KVM's are 1 to 8 bytes).
fn access_size(data: &[u8]) -> u8 {
    u8::try_from(data.len()).unwrap_or(u8::MAX)
}

fn le_value(data: &[u8]) -> u64 {
    data.iter()
        .take(8)
        .rev()
        .fold(0, |v, &b| v << 8 | u64::from(b))
}
