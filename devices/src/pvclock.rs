//! The simvm port block: paravirtual clock page, one-shot timer, clock kicks and the control
//! channel (`docs/guest-abi.md`).
//!
//! The device owns no clock. The machine tells it the virtual time before every guest entry
//! ([`SimvmPorts::publish`]), and the device reports what the guest asked for as a [`PortEvent`];
//! the machine decides what that costs and when the timer fires.

use thiserror::Error;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

use crate::abi::{self, clock_page, host_page};

/// Most clock reads one kick may charge, unless the stall limit is higher: about a second of
/// virtual time at the default 1 µs a read. An honest guest kicks at exactly `stall_limit`
/// reads (64 by default); the bound keeps one `outl` from moving the clock arbitrarily far.
pub const MAX_KICK_READS: u32 = 1 << 20;
/// Furthest past the current virtual time a timer deadline may lie: a year of virtual time. The
/// guest kernel's clockevent never asks for more than an hour ahead (its `max_delta_ns`), and a
/// year is still 500 years short of the end of `u64` nanoseconds.
pub const MAX_TIMER_AHEAD_NS: u64 = 365 * 24 * 3600 * 1_000_000_000;
/// The size of the guest pages the clear and copy ports take by frame number.
const PAGE_SIZE: usize = 4096;

/// Something the guest did through the port block that the machine must act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortEvent {
    /// The guest registered its clock page at this guest-physical address.
    ClockPageRegistered(u64),
    /// The guest asked for a clock page outside guest RAM; the registration was refused.
    ClockPageRejected(u64),
    /// The one-shot timer is armed for this virtual time (ns).
    TimerArmed(u64),
    /// The one-shot timer is disarmed.
    TimerDisarmed,
    /// This many consecutive clock reads saw no change; at most
    /// [`SimvmPorts::max_kick_reads`].
    ClockKick(u32),
    /// The guest saw `irq_pending` with interrupts enabled and exited so it can take it.
    IrqPoll,
    /// A control channel message.
    Control(ControlEvent),
    /// A write to a port of the block that means nothing; recorded, otherwise ignored.
    Ignored { port: u16, value: u32 },
    /// The guest asked for something no correct guest asks for; the device did what [`Absurd`]
    /// says instead. The machine should report it.
    Absurd(Absurd),
}

impl PortEvent {
    /// The clock reads to charge for this event: those of a [`PortEvent::ClockKick`], or of a
    /// kick cut down to the bound ([`Absurd::ClockKick`]).
    pub fn kick_reads(&self) -> Option<u32> {
        match *self {
            Self::ClockKick(reads) | Self::Absurd(Absurd::ClockKick { charged: reads, .. }) => {
                Some(reads)
            }
            _ => None,
        }
    }
}

/// A request outside what simvm's guest ABI allows, and what the device did with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum Absurd {
    /// A clock kick for more reads than [`SimvmPorts::max_kick_reads`]; it counts as `charged`
    /// reads (the bound) instead.
    #[error("clock kick of {reads} reads, cut to {charged}")]
    ClockKick { reads: u32, charged: u32 },
    /// A timer deadline more than [`MAX_TIMER_AHEAD_NS`] past `now`: refused, and the timer is
    /// left disarmed.
    #[error("timer deadline {deadline} ns, more than a year past {now} ns: timer disarmed")]
    TimerDeadline { deadline: u64, now: u64 },
}

/// Messages of the control channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlEvent {
    /// Init is about to start the command.
    Ready,
    /// The command ended with this status.
    Exit(u8),
    /// The guest kernel panicked.
    Panic,
    /// Orderly power-off.
    PowerOff,
    /// The guest asked for a reboot.
    Restart,
    /// Init asks for its identity, to be written into the buffer at this guest frame number.
    Identity(u32),
    /// An event number this VMM does not know.
    Unknown(u32),
}

impl ControlEvent {
    fn decode(value: u32) -> Self {
        // `event | arg << 8`: the event is the low byte, an exit status the next one.
        let [event, arg, ..] = value.to_le_bytes();
        match event {
            abi::control::READY => Self::Ready,
            abi::control::EXIT => Self::Exit(arg),
            abi::control::PANIC => Self::Panic,
            abi::control::POWEROFF => Self::PowerOff,
            abi::control::RESTART => Self::Restart,
            abi::control::IDENTITY => Self::Identity(value >> 8),
            _ => Self::Unknown(value),
        }
    }
}

/// Events the guest kernel counts in its clock page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestCounts {
    pub syscalls: u64,
    pub page_faults: u64,
}

impl GuestCounts {
    /// The counts from `earlier` to `self` (zero where the guest's counter restarted).
    pub fn since(&self, earlier: &GuestCounts) -> GuestCounts {
        GuestCounts {
            syscalls: self.syscalls.saturating_sub(earlier.syscalls),
            page_faults: self.page_faults.saturating_sub(earlier.page_faults),
        }
    }

    pub fn add(&mut self, other: &GuestCounts) {
        self.syscalls = self.syscalls.saturating_add(other.syscalls);
        self.page_faults = self.page_faults.saturating_add(other.page_faults);
    }
}

/// The simvm port block of one machine.
#[derive(Debug)]
pub struct SimvmPorts {
    /// Guest-physical address of the registered clock page.
    page: Option<GuestAddress>,
    /// The armed one-shot deadline, in virtual ns.
    deadline: Option<u64>,
    /// `now_ns` as last written to the page, to skip identical writes.
    published: Option<u64>,
    /// `irq_pending` as last written to the page; `None` after a restore, so the next publish
    /// writes it whatever the page holds.
    published_irq: Option<bool>,
    /// The entropy generation as last written to the page, likewise.
    published_entropy: Option<u32>,
    /// Whether the page holds this device's `wall_base_ns`; not after a restore, whose page
    /// holds the saved machine's.
    published_wall: bool,
    /// Bumped by each [`SimvmPorts::reseed`]; 0 until the first.
    entropy_gen: u32,
    /// Bumped by each [`SimvmPorts::step_wall`]; 0 until the first.
    wall_gen: u32,
    /// The sum of the wall clock steps, which `wall_base_ns` includes.
    wall_steps_ns: i64,
    entropy: [u8; clock_page::ENTROPY_SIZE],
    wall_base_ns: u64,
    stall_limit: u32,
    /// Whether the host page asks the guest to have its pages cleared and copied by the VMM.
    pages_by_vmm: bool,
    /// `pages_by_vmm` as last written to the host page; `None` after a restore, whose page may
    /// have been written on another host.
    published_pages_by_vmm: Option<bool>,
}

/// Memory work the guest kernel hands to simvm, one port each, where the host page asks for it
/// (docs/guest-abi.md "The host page"): no virtual time, no trace event, no interrupt, so the
/// guest runs the same whoever does it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostWork {
    /// [`abi::PORT_CLEAR_PAGE`]: [`SimvmPorts::clear_page`].
    PageClear,
    /// [`abi::PORT_COPY_PAGE`]: [`SimvmPorts::copy_page`].
    PageCopy,
    /// [`abi::PORT_COPY_BYTES`]: [`SimvmPorts::copy_bytes`].
    ByteCopy,
    /// [`abi::PORT_FILL_RECORDS`]: [`SimvmPorts::fill_records`].
    RecordFill,
}

impl HostWork {
    /// Every kind, in port order.
    pub const ALL: [Self; 4] = [
        Self::PageClear,
        Self::PageCopy,
        Self::ByteCopy,
        Self::RecordFill,
    ];

    /// The work a guest write to `port` asks for, if any.
    pub fn of_port(port: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|work| work.port() == port)
    }

    /// The port that asks for it.
    pub fn port(self) -> u16 {
        match self {
            Self::PageClear => abi::PORT_CLEAR_PAGE,
            Self::PageCopy => abi::PORT_COPY_PAGE,
            Self::ByteCopy => abi::PORT_COPY_BYTES,
            Self::RecordFill => abi::PORT_FILL_RECORDS,
        }
    }

    /// What a profile calls it.
    pub fn name(self) -> &'static str {
        match self {
            Self::PageClear => "page clear",
            Self::PageCopy => "page copy",
            Self::ByteCopy => "byte copy",
            Self::RecordFill => "record fill",
        }
    }
}

impl SimvmPorts {
    /// A port block whose guest sees `CLOCK_REALTIME = wall_base_ns + now` and kicks after
    /// `stall_limit` unchanged clock reads.
    pub fn new(wall_base_ns: u64, stall_limit: u32) -> Self {
        Self {
            page: None,
            deadline: None,
            published: None,
            published_irq: None,
            published_entropy: None,
            published_wall: false,
            entropy_gen: 0,
            wall_gen: 0,
            wall_steps_ns: 0,
            entropy: [0; clock_page::ENTROPY_SIZE],
            wall_base_ns,
            stall_limit: stall_limit.max(1),
            pages_by_vmm: false,
            published_pages_by_vmm: None,
        }
    }

    /// This port block, with a host page that asks the guest kernel to hand simvm its memory
    /// work ([`HostWork`]: clearing and copying pages, copying between kernel buffers, filling
    /// its memory map) (`true`) or to do it itself. Invisible to the guest's programs either way.
    pub fn with_pages_by_vmm(mut self, pages_by_vmm: bool) -> Self {
        self.pages_by_vmm = pages_by_vmm;
        self.published_pages_by_vmm = None;
        self
    }

    /// Does `work` for a guest write of `data` to its port. Returns whether it did; each
    /// handler below says when it does nothing.
    pub fn do_host_work<M: GuestMemory>(&self, work: HostWork, mem: &M, data: &[u8]) -> bool {
        match work {
            HostWork::PageClear => Self::clear_page(mem, data),
            HostWork::PageCopy => self.copy_page(mem, data),
            HostWork::ByteCopy => self.copy_bytes(mem, data),
            HostWork::RecordFill => self.fill_records(mem, data),
        }
    }

    /// Handles a guest `outl pfn` to [`abi::PORT_CLEAR_PAGE`]: zeroes that page of guest RAM.
    /// Returns whether it did; a frame outside RAM or a write of another size changes nothing.
    /// The block keeps no state for it: the host page said whether to ask.
    pub fn clear_page<M: GuestMemory>(mem: &M, data: &[u8]) -> bool {
        static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
        let Some(to) = written_page(mem, data) else {
            return false;
        };
        mem.write_slice(&ZERO_PAGE, to).is_ok()
    }

    /// Handles a guest `outl pfn` to [`abi::PORT_COPY_PAGE`]: copies the frame the host page's
    /// [`host_page::COPY_FROM`] names to that page of guest RAM. Returns whether it did; without
    /// a clock page, with either frame outside RAM or a write of another size nothing changes.
    pub fn copy_page<M: GuestMemory>(&self, mem: &M, data: &[u8]) -> bool {
        let Some(host) = self.host_page() else {
            return false;
        };
        let Ok(from_pfn) = mem.read_obj::<u32>(host.unchecked_add(host_page::COPY_FROM)) else {
            return false;
        };
        let (Some(from), Some(to)) = (page_of(mem, from_pfn), written_page(mem, data)) else {
            return false;
        };
        let mut bytes = [0u8; PAGE_SIZE];
        mem.read_slice(&mut bytes, from).is_ok() && mem.write_slice(&bytes, to).is_ok()
    }

    /// Handles a guest `outl len` to [`abi::PORT_COPY_BYTES`]: copies `len` bytes of guest RAM
    /// from the host page's [`host_page::BYTES_FROM`] to its [`host_page::BYTES_TO`], a chunk
    /// at a time (the guest's `memcpy()` between two buffers that do not overlap). Returns
    /// whether it did; without a clock page, with either range not wholly in RAM or a write of
    /// another size nothing changes.
    pub fn copy_bytes<M: GuestMemory>(&self, mem: &M, data: &[u8]) -> bool {
        const CHUNK: usize = 64 * 1024;
        let (Some(host), Some(len)) = (self.host_page(), written_u32(data)) else {
            return false;
        };
        let read = |field| mem.read_obj::<u64>(host.unchecked_add(field)).ok();
        let (Some(from), Some(to)) = (read(host_page::BYTES_FROM), read(host_page::BYTES_TO))
        else {
            return false;
        };
        let len = len as usize;
        let in_ram = |gpa: u64| mem.check_range(GuestAddress(gpa), len, Permissions::ReadWrite);
        if !in_ram(from) || !in_ram(to) {
            return false;
        }
        let mut chunk = vec![0u8; len.min(CHUNK)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            let at = done as u64;
            if mem
                .read_slice(&mut chunk[..n], GuestAddress(from + at))
                .is_err()
                || mem.write_slice(&chunk[..n], GuestAddress(to + at)).is_err()
            {
                return false;
            }
            done += n;
        }
        true
    }

    /// Handles a guest `outl count | words << 16 | self << 24` to [`abi::PORT_FILL_RECORDS`]:
    /// writes `count` copies of the record of `words` 8-byte words at the host page's
    /// [`host_page::RECORD_AT`] right after it, each word that bit i of `self` marks moved by
    /// the copy's offset from the record (a pointer into the record itself: the guest's memory
    /// map at boot, whose list heads point at themselves). Returns whether it did; without a
    /// clock page, with a record of 0 or more than 8 words, no copies, the range not wholly in
    /// RAM or a write of another size nothing changes.
    pub fn fill_records<M: GuestMemory>(&self, mem: &M, data: &[u8]) -> bool {
        let (Some(host), Some(value)) = (self.host_page(), written_u32(data)) else {
            return false;
        };
        let (count, words, relative) = (value & 0xffff, (value >> 16) & 0xff, value >> 24);
        let Ok(at) = mem.read_obj::<u64>(host.unchecked_add(host_page::RECORD_AT)) else {
            return false;
        };
        if count == 0 || !(1..=8).contains(&words) {
            return false;
        }
        let size = words as usize * 8;
        let len = size * (count as usize + 1);
        if !mem.check_range(GuestAddress(at), len, Permissions::ReadWrite) {
            return false;
        }
        let mut record = [0u64; 8];
        for (i, word) in record[..words as usize].iter_mut().enumerate() {
            match mem.read_obj::<u64>(GuestAddress(at + 8 * i as u64)) {
                Ok(value) => *word = value,
                Err(_) => return false,
            }
        }
        let mut copies = Vec::with_capacity(len - size);
        for copy in 1..=u64::from(count) {
            let offset = copy * size as u64;
            for (i, word) in record[..words as usize].iter().enumerate() {
                let moved = if relative & (1 << i) != 0 {
                    word.wrapping_add(offset)
                } else {
                    *word
                };
                copies.extend_from_slice(&moved.to_le_bytes());
            }
        }
        mem.write_slice(&copies, GuestAddress(at + size as u64))
            .is_ok()
    }

    /// The host page, once the guest has registered its clock page.
    fn host_page(&self) -> Option<GuestAddress> {
        self.page.map(|page| page.unchecked_add(host_page::OFFSET))
    }

    /// Whether `port` belongs to the block.
    pub fn contains(port: u16) -> bool {
        (abi::PORT_BASE..abi::PORT_BASE + abi::PORT_COUNT).contains(&port)
    }

    /// The most reads one clock kick charges: [`MAX_KICK_READS`], or the stall limit if higher
    /// (an honest kick is exactly the stall limit).
    pub fn max_kick_reads(&self) -> u32 {
        self.stall_limit.max(MAX_KICK_READS)
    }

    /// The armed timer deadline, if any; never more than [`MAX_TIMER_AHEAD_NS`] past the time
    /// it was armed at.
    pub fn deadline(&self) -> Option<u64> {
        self.deadline
    }

    /// Hands the guest new entropy: the next [`SimvmPorts::publish`] writes it with a new
    /// generation, and the guest kernel mixes it into its RNG at its next timer interrupt. A
    /// reseed the guest has not seen yet is replaced.
    pub fn reseed(&mut self, entropy: [u8; clock_page::ENTROPY_SIZE]) {
        // 0 means "never reseeded" to a guest that just booted; skip it when wrapping.
        self.entropy_gen = self.entropy_gen.checked_add(1).unwrap_or(1);
        self.entropy = entropy;
    }

    /// Steps the guest's wall clock by `delta_ns`: the next [`SimvmPorts::publish`] writes the
    /// new base with a new generation, and the guest kernel steps `CLOCK_REALTIME` to it at its
    /// next timer interrupt. Its monotonic clock does not move.
    pub fn step_wall(&mut self, delta_ns: i64) {
        self.wall_base_ns = self.wall_base_ns.saturating_add_signed(delta_ns);
        self.wall_steps_ns = self.wall_steps_ns.saturating_add(delta_ns);
        self.wall_gen = self.wall_gen.checked_add(1).unwrap_or(1);
        self.published_wall = false;
    }

    /// `CLOCK_REALTIME` minus the guest's clock: what the guest's wall clock reads at its
    /// clock's zero, steps included.
    pub fn wall_base_ns(&self) -> u64 {
        self.wall_base_ns
    }

    /// Disarms the timer because it fired.
    pub fn timer_fired(&mut self) {
        self.deadline = None;
    }

    /// Handles a guest `in` from the block.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        let value = if port == abi::PORT_CLOCK_PAGE && data.len() == 4 {
            abi::PROBE_MAGIC
        } else {
            u32::MAX
        };
        let bytes = value.to_le_bytes();
        for (dst, src) in data.iter_mut().zip(bytes.iter().cycle()) {
            *dst = *src;
        }
    }

    /// Handles a guest `out` to the block. `now` is the current virtual time; `mem` is the guest
    /// memory in which the clock page lives.
    pub fn write<M: GuestMemory>(
        &mut self,
        mem: &M,
        port: u16,
        data: &[u8],
        now: u64,
    ) -> PortEvent {
        let value = match <[u8; 4]>::try_from(data) {
            Ok(bytes) => u32::from_le_bytes(bytes),
            // The ABI only defines 32-bit writes.
            Err(_) => {
                let mut bytes = [0u8; 4];
                bytes[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
                return PortEvent::Ignored {
                    port,
                    value: u32::from_le_bytes(bytes),
                };
            }
        };
        match port {
            abi::PORT_CLOCK_PAGE => self.register_page(mem, u64::from(value) << 12, now),
            abi::PORT_TIMER if value == 0 => {
                self.deadline = None;
                PortEvent::TimerDisarmed
            }
            abi::PORT_TIMER => match self.read_deadline(mem) {
                Some(deadline) if deadline > now.saturating_add(MAX_TIMER_AHEAD_NS) => {
                    // The world would jump there and its clock arithmetic overflow.
                    self.deadline = None;
                    PortEvent::Absurd(Absurd::TimerDeadline { deadline, now })
                }
                Some(deadline) => {
                    self.deadline = Some(deadline);
                    PortEvent::TimerArmed(deadline)
                }
                None => PortEvent::Ignored { port, value },
            },
            abi::PORT_CLOCK_KICK => self.kick(value),
            abi::PORT_CONTROL => PortEvent::Control(ControlEvent::decode(value)),
            abi::PORT_IRQ_POLL => PortEvent::IrqPoll,
            _ => PortEvent::Ignored { port, value },
        }
    }

    /// Handles a guest MMIO write: the clock kick it makes if it is a 32-bit write at the start
    /// of the user kick page ([`abi::USER_KICK_GPA`]), else `None` (nothing happens).
    pub fn mmio_write(&self, gpa: u64, size: u8, value: u64) -> Option<PortEvent> {
        let reads = u32::try_from(value).ok()?;
        (gpa == abi::USER_KICK_GPA && size == 4).then(|| self.kick(reads))
    }

    /// A clock kick of `reads` reads, from the port or the user kick page.
    fn kick(&self, reads: u32) -> PortEvent {
        if reads > self.max_kick_reads() {
            PortEvent::Absurd(Absurd::ClockKick {
                reads,
                charged: self.max_kick_reads(),
            })
        } else {
            PortEvent::ClockKick(reads)
        }
    }

    /// Writes `now`, whether an interrupt waits for the guest to enable interrupts and a new
    /// reseed into the clock page, if one is registered. Called before every guest entry.
    pub fn publish<M: GuestMemory>(&mut self, mem: &M, now: u64, irq_pending: bool) {
        let Some(page) = self.page else {
            return;
        };
        // The page was checked to lie in RAM when it was registered; RAM does not shrink.
        if self.published != Some(now) {
            let _ = mem.write_obj(now, page.unchecked_add(clock_page::NOW_NS));
            self.published = Some(now);
        }
        if self.published_irq != Some(irq_pending) {
            let flag = u32::from(irq_pending);
            let _ = mem.write_obj(flag, page.unchecked_add(clock_page::IRQ_PENDING));
            self.published_irq = Some(irq_pending);
        }
        if !self.published_wall {
            let _ = mem.write_obj(
                self.wall_base_ns,
                page.unchecked_add(clock_page::WALL_BASE_NS),
            );
            // After the base: the guest reads the base once it sees a new generation.
            let _ = mem.write_obj(self.wall_gen, page.unchecked_add(clock_page::WALL_GEN));
            self.published_wall = true;
        }
        if self.published_entropy != Some(self.entropy_gen) {
            let _ = mem.write_slice(&self.entropy, page.unchecked_add(clock_page::ENTROPY));
            let _ = mem.write_obj(
                self.entropy_gen,
                page.unchecked_add(clock_page::ENTROPY_GEN),
            );
            self.published_entropy = Some(self.entropy_gen);
        }
        if self.published_pages_by_vmm != Some(self.pages_by_vmm) {
            let flag = u32::from(self.pages_by_vmm);
            let host = page.unchecked_add(host_page::OFFSET);
            let _ = mem.write_obj(flag, host.unchecked_add(host_page::PAGES_BY_VMM));
            self.published_pages_by_vmm = Some(self.pages_by_vmm);
        }
    }

    fn register_page<M: GuestMemory>(&mut self, mem: &M, gpa: u64, now: u64) -> PortEvent {
        let page = GuestAddress(gpa);
        let fields = [
            (
                clock_page::WALL_BASE_NS,
                self.wall_base_ns.to_le_bytes().to_vec(),
            ),
            (
                clock_page::ABI_VERSION,
                abi::ABI_VERSION.to_le_bytes().to_vec(),
            ),
            (
                clock_page::STALL_LIMIT,
                self.stall_limit.to_le_bytes().to_vec(),
            ),
            (
                clock_page::TSC_KHZ,
                abi::VIRTUAL_TSC_KHZ.to_le_bytes().to_vec(),
            ),
            (clock_page::NOW_NS, now.to_le_bytes().to_vec()),
            (clock_page::IRQ_PENDING, 0u32.to_le_bytes().to_vec()),
            (clock_page::ENTROPY, self.entropy.to_vec()),
            (
                clock_page::ENTROPY_GEN,
                self.entropy_gen.to_le_bytes().to_vec(),
            ),
            (clock_page::WALL_GEN, self.wall_gen.to_le_bytes().to_vec()),
        ];
        // Check the whole page before writing any of it, so a bad address changes nothing.
        if !page_fits(mem, gpa) {
            return PortEvent::ClockPageRejected(gpa);
        }
        for (offset, bytes) in fields {
            if mem.write_slice(&bytes, page.unchecked_add(offset)).is_err() {
                return PortEvent::ClockPageRejected(gpa);
            }
        }
        self.page = Some(page);
        self.published = Some(now);
        self.published_irq = Some(false);
        self.published_entropy = Some(self.entropy_gen);
        self.published_wall = true;
        // The host page follows at the next publish, before the guest next runs.
        self.published_pages_by_vmm = None;
        PortEvent::ClockPageRegistered(gpa)
    }

    /// What the guest kernel counted in its clock page (system calls, page faults), or `None`
    /// before it registered one. The guest writes these; nothing in a run depends on them.
    pub fn guest_counts<M: GuestMemory>(&self, mem: &M) -> Option<GuestCounts> {
        let page = self.page?;
        let read = |offset| mem.read_obj::<u64>(page.unchecked_add(offset)).ok();
        Some(GuestCounts {
            syscalls: read(clock_page::SYSCALLS)?,
            page_faults: read(clock_page::PAGE_FAULTS)?,
        })
    }

    fn read_deadline<M: GuestMemory>(&self, mem: &M) -> Option<u64> {
        let page = self.page?;
        mem.read_obj::<u64>(page.unchecked_add(clock_page::TIMER_DEADLINE_NS))
            .ok()
    }
}

/// The guest page whose frame number a 32-bit port write carries, if it lies wholly in RAM;
/// `None` for a write of another size.
fn written_page<M: GuestMemory>(mem: &M, data: &[u8]) -> Option<GuestAddress> {
    page_of(mem, written_u32(data)?)
}

/// The value of a 32-bit port write; `None` for a write of another size.
fn written_u32(data: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(data).map(u32::from_le_bytes).ok()
}

/// The guest page of frame `pfn`, if it lies wholly in RAM.
fn page_of<M: GuestMemory>(mem: &M, pfn: u32) -> Option<GuestAddress> {
    let gpa = GuestAddress(u64::from(pfn) << 12);
    mem.check_range(gpa, PAGE_SIZE, Permissions::ReadWrite)
        .then_some(gpa)
}

/// Whether a clock page at `gpa` and the host page after it lie wholly in guest RAM.
fn page_fits<M: GuestMemory>(mem: &M, gpa: u64) -> bool {
    const PAGES: usize = 2 * PAGE_SIZE;
    gpa.checked_add(PAGES as u64).is_some()
        && mem.check_range(GuestAddress(gpa), PAGES, Permissions::ReadWrite)
}

#[cfg(test)]
// Tests narrow small values they chose themselves; no guest controls them.
#[allow(clippy::cast_possible_truncation)]
mod fuzz;

mod state;
pub use state::PortsState;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Snapshot;
    use vm_memory::GuestMemoryMmap;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn out(
        ports: &mut SimvmPorts,
        mem: &GuestMemoryMmap,
        port: u16,
        value: u32,
        now: u64,
    ) -> PortEvent {
        ports.write(mem, port, &value.to_le_bytes(), now)
    }

    #[test]
    fn a_32_bit_write_to_the_user_kick_page_is_a_clock_kick_and_nothing_else_is() {
        let ports = SimvmPorts::new(0, 64);
        let kick = abi::USER_KICK_GPA;
        assert_eq!(
            ports.mmio_write(kick, 4, 64),
            Some(PortEvent::ClockKick(64))
        );
        let bound = ports.max_kick_reads();
        assert_eq!(
            ports.mmio_write(kick, 4, u64::from(bound) + 1),
            Some(PortEvent::Absurd(Absurd::ClockKick {
                reads: bound + 1,
                charged: bound
            }))
        );
        // Another size, another offset in the page, a virtio window: not kicks.
        assert_eq!(ports.mmio_write(kick, 8, 64), None);
        assert_eq!(ports.mmio_write(kick, 2, 64), None);
        assert_eq!(ports.mmio_write(kick + 4, 4, 64), None);
        assert_eq!(ports.mmio_write(abi::VIRTIO_MMIO_BASE, 4, 64), None);
    }

    #[test]
    fn probe_answers_magic_only_for_a_32_bit_read() {
        let ports = SimvmPorts::new(0, 64);
        let mut data = [0u8; 4];
        ports.read(abi::PORT_CLOCK_PAGE, &mut data);
        assert_eq!(u32::from_le_bytes(data), abi::PROBE_MAGIC);
        let mut byte = [0u8; 1];
        ports.read(abi::PORT_CLOCK_PAGE, &mut byte);
        assert_eq!(byte, [0xff]);
    }

    #[test]
    fn registration_fills_the_page_and_publish_updates_now() {
        let mem = memory();
        let mut ports = SimvmPorts::new(1_700_000_000_000_000_000, 64);
        let event = out(&mut ports, &mem, abi::PORT_CLOCK_PAGE, 0x42, 1000);
        assert_eq!(event, PortEvent::ClockPageRegistered(0x42000));
        let page = GuestAddress(0x42000);
        let read = |offset| mem.read_obj::<u64>(page.unchecked_add(offset)).unwrap();
        assert_eq!(read(clock_page::NOW_NS), 1000);
        assert_eq!(read(clock_page::WALL_BASE_NS), 1_700_000_000_000_000_000);
        assert_eq!(read(clock_page::TSC_KHZ), abi::VIRTUAL_TSC_KHZ);
        let version: u32 = mem
            .read_obj(page.unchecked_add(clock_page::ABI_VERSION))
            .unwrap();
        let limit: u32 = mem
            .read_obj(page.unchecked_add(clock_page::STALL_LIMIT))
            .unwrap();
        assert_eq!((version, limit), (abi::ABI_VERSION, 64));
        ports.publish(&mem, 5000, false);
        assert_eq!(read(clock_page::NOW_NS), 5000);
    }

    #[test]
    fn the_guests_counts_are_read_from_its_page_and_untouched_by_publishing() {
        let mem = memory();
        let mut ports = SimvmPorts::new(0, 64);
        assert_eq!(ports.guest_counts(&mem), None, "no page yet");
        out(&mut ports, &mem, abi::PORT_CLOCK_PAGE, 0x42, 0);
        let page = GuestAddress(0x42000);
        mem.write_obj(1234u64, page.unchecked_add(clock_page::SYSCALLS))
            .unwrap();
        mem.write_obj(56u64, page.unchecked_add(clock_page::PAGE_FAULTS))
            .unwrap();
        ports.reseed([7; clock_page::ENTROPY_SIZE]);
        ports.step_wall(1_000);
        ports.publish(&mem, 9000, true);
        let counts = ports.guest_counts(&mem).unwrap();
        assert_eq!((counts.syscalls, counts.page_faults), (1234, 56));
        let earlier = GuestCounts {
            syscalls: 1000,
            page_faults: 60,
        };
        assert_eq!(
            counts.since(&earlier),
            GuestCounts {
                syscalls: 234,
                page_faults: 0
            }
        );
    }

    #[test]
    fn publish_sets_and_clears_irq_pending_and_the_poll_port_reports_it() {
        let mem = memory();
        let mut ports = SimvmPorts::new(0, 64);
        // Garbage where the flag goes: registration must clear it.
        mem.write_obj(7u32, GuestAddress(0x42000 + clock_page::IRQ_PENDING))
            .unwrap();
        out(&mut ports, &mem, abi::PORT_CLOCK_PAGE, 0x42, 0);
        let flag = || {
            mem.read_obj::<u32>(GuestAddress(0x42000 + clock_page::IRQ_PENDING))
                .unwrap()
        };
        assert_eq!(flag(), 0);
        ports.publish(&mem, 10, true);
        assert_eq!(flag(), 1);
        ports.publish(&mem, 10, false);
        assert_eq!(flag(), 0);
        assert_eq!(
            out(&mut ports, &mem, abi::PORT_IRQ_POLL, 0, 10),
            PortEvent::IrqPoll
        );
    }

    fn entropy_on_page(mem: &GuestMemoryMmap, page: u64) -> (u32, [u8; 32]) {
        let gen = mem
            .read_obj(GuestAddress(page + clock_page::ENTROPY_GEN))
            .unwrap();
        let entropy = mem
            .read_obj(GuestAddress(page + clock_page::ENTROPY))
            .unwrap();
        (gen, entropy)
    }

    #[test]
    fn a_reseed_reaches_the_page_at_the_next_publish_only() {
        let mem = memory();
        let mut ports = SimvmPorts::new(0, 64);
        // Garbage where the fields go: registration writes "never reseeded".
        mem.write_slice(&[9u8; 40], GuestAddress(0x42000 + clock_page::ENTROPY_GEN))
            .unwrap();
        out(&mut ports, &mem, abi::PORT_CLOCK_PAGE, 0x42, 0);
        assert_eq!(entropy_on_page(&mem, 0x42000), (0, [0; 32]));
        ports.reseed([7; 32]);
        assert_eq!(entropy_on_page(&mem, 0x42000).0, 0, "written at publish");
        ports.publish(&mem, 10, false);
        assert_eq!(entropy_on_page(&mem, 0x42000), (1, [7; 32]));
        // Nothing new: the next publish leaves the fields alone.
        mem.write_obj(5u32, GuestAddress(0x42000 + clock_page::ENTROPY_GEN))
            .unwrap();
        ports.publish(&mem, 20, false);
        assert_eq!(entropy_on_page(&mem, 0x42000).0, 5);
        ports.reseed([8; 32]);
        ports.reseed([9; 32]);
        ports.publish(&mem, 30, false);
        assert_eq!(entropy_on_page(&mem, 0x42000), (3, [9; 32]));
    }

    #[test]
    fn a_wall_step_writes_the_new_base_and_generation_at_the_next_publish() {
        use crate::snapshot::Snapshot;
        let mem = memory();
        let mut ports = SimvmPorts::new(1_000_000, 64);
        out(&mut ports, &mem, abi::PORT_CLOCK_PAGE, 0x42, 0);
        let page = GuestAddress(0x42000);
        let wall = |mem: &GuestMemoryMmap| {
            (
                mem.read_obj::<u64>(page.unchecked_add(clock_page::WALL_BASE_NS))
                    .unwrap(),
                mem.read_obj::<u32>(page.unchecked_add(clock_page::WALL_GEN))
                    .unwrap(),
            )
        };
        assert_eq!(wall(&mem), (1_000_000, 0));
        ports.step_wall(-400_000);
        assert_eq!(wall(&mem), (1_000_000, 0), "written at publish");
        ports.publish(&mem, 10, false);
        assert_eq!(wall(&mem), (600_000, 1));
        ports.step_wall(2_000_000);
        ports.publish(&mem, 20, false);
        assert_eq!(wall(&mem), (2_600_000, 2));
        // A restored machine's own base moves by the saved steps; the generation stays.
        let mut restored = SimvmPorts::new(5_000_000, 64);
        restored.restore(&ports.save(), &mem).unwrap();
        assert_eq!((restored.wall_base_ns(), restored.wall_gen), (6_600_000, 2));
    }

    #[test]
    fn two_reseeds_make_generation_2_and_the_generation_skips_0() {
        let mut ports = SimvmPorts::new(0, 64);
        ports.reseed([1; 32]);
        ports.reseed([2; 32]);
        assert_eq!((ports.entropy_gen, ports.entropy), (2, [2; 32]));
        ports.entropy_gen = u32::MAX;
        ports.reseed([3; 32]);
        assert_eq!(ports.entropy_gen, 1);
    }

    #[test]
    fn a_reseed_before_registration_comes_with_the_page() {
        let mem = memory();
        let mut ports = SimvmPorts::new(0, 64);
        ports.reseed([4; 32]);
        out(&mut ports, &mem, abi::PORT_CLOCK_PAGE, 0x42, 0);
        assert_eq!(entropy_on_page(&mem, 0x42000), (1, [4; 32]));
    }

    #[test]
    fn a_page_outside_ram_is_rejected_and_changes_nothing() {
        let mem = memory();
        let mut ports = SimvmPorts::new(0, 64);
        let event = out(&mut ports, &mem, abi::PORT_CLOCK_PAGE, 0xffff_ffff, 0);
        assert_eq!(event, PortEvent::ClockPageRejected(0xffff_ffff << 12));
        // The host page follows the clock page: the last page of RAM is too late for the clock
        // page, the one before it is fine.
        assert!(matches!(
            out(&mut ports, &mem, abi::PORT_CLOCK_PAGE, 0xff, 0),
            PortEvent::ClockPageRejected(_)
        ));
        assert!(matches!(
            out(&mut ports, &mem, abi::PORT_CLOCK_PAGE, 0xfe, 0),
            PortEvent::ClockPageRegistered(_)
        ));
    }

    #[test]
    fn the_host_page_says_who_does_page_work_and_is_rewritten_after_a_restore() {
        let mem = memory();
        let host = GuestAddress(0x43000 + host_page::PAGES_BY_VMM);
        let flag = || mem.read_obj::<u32>(host).unwrap();
        for pages_by_vmm in [true, false] {
            mem.write_obj(0xdead_u32, host).unwrap();
            let mut ports = SimvmPorts::new(0, 64).with_pages_by_vmm(pages_by_vmm);
            out(&mut ports, &mem, abi::PORT_CLOCK_PAGE, 0x42, 0);
            ports.publish(&mem, 0, false);
            assert_eq!(flag(), u32::from(pages_by_vmm));
            // A restored page may come from another host: the next publish writes it again.
            let state = ports.save();
            mem.write_obj(0xdead_u32, host).unwrap();
            ports.restore(&state, &mem).unwrap();
            ports.publish(&mem, 0, false);
            assert_eq!(flag(), u32::from(pages_by_vmm));
        }
    }

    #[test]
    fn a_page_clear_zeroes_one_page_of_ram_and_nothing_outside_it() {
        let mem = memory();
        mem.write_slice(&[0xaa; 3 * 4096], GuestAddress(0x41000))
            .unwrap();
        assert!(SimvmPorts::clear_page(&mem, &0x42u32.to_le_bytes()));
        let mut bytes = [0u8; 3 * 4096];
        mem.read_slice(&mut bytes, GuestAddress(0x41000)).unwrap();
        assert!(bytes[..4096].iter().all(|b| *b == 0xaa));
        assert!(bytes[4096..8192].iter().all(|b| *b == 0));
        assert!(bytes[8192..].iter().all(|b| *b == 0xaa));
        // A frame past RAM and a write of another size change nothing and do not panic.
        assert!(!SimvmPorts::clear_page(&mem, &0x100u32.to_le_bytes()));
        assert!(!SimvmPorts::clear_page(&mem, &u32::MAX.to_le_bytes()));
        assert!(!SimvmPorts::clear_page(&mem, &[0x41]));
        mem.read_slice(&mut bytes, GuestAddress(0x41000)).unwrap();
        assert!(bytes[..4096].iter().all(|b| *b == 0xaa));
    }

    #[test]
    fn a_page_copy_takes_its_source_from_the_host_page_and_writes_one_page() {
        let mem = memory();
        let copy_from = GuestAddress(0x43000 + host_page::COPY_FROM);
        let source: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        mem.write_slice(&source, GuestAddress(0x30000)).unwrap();
        mem.write_slice(&[0xaa; 3 * 4096], GuestAddress(0x20000))
            .unwrap();
        let mut ports = SimvmPorts::new(0, 64).with_pages_by_vmm(true);
        // Without a clock page there is no host page to name the source.
        mem.write_obj(0x30u32, copy_from).unwrap();
        assert!(!ports.copy_page(&mem, &0x21u32.to_le_bytes()));
        out(&mut ports, &mem, abi::PORT_CLOCK_PAGE, 0x42, 0);
        mem.write_obj(0x30u32, copy_from).unwrap();
        assert!(ports.copy_page(&mem, &0x21u32.to_le_bytes()));
        let mut bytes = [0u8; 3 * 4096];
        mem.read_slice(&mut bytes, GuestAddress(0x20000)).unwrap();
        assert!(bytes[..4096].iter().all(|b| *b == 0xaa));
        assert_eq!(&bytes[4096..8192], &source[..]);
        assert!(bytes[8192..].iter().all(|b| *b == 0xaa));
        // A source or destination past RAM, or a write of another size, changes nothing.
        assert!(!ports.copy_page(&mem, &0x100u32.to_le_bytes()));
        assert!(!ports.copy_page(&mem, &[0x20]));
        mem.write_obj(u32::MAX, copy_from).unwrap();
        assert!(!ports.copy_page(&mem, &0x20u32.to_le_bytes()));
        mem.read_slice(&mut bytes, GuestAddress(0x20000)).unwrap();
        assert!(bytes[..4096].iter().all(|b| *b == 0xaa));
    }

    #[test]
    fn a_byte_copy_takes_both_addresses_from_the_host_page_and_writes_only_its_range() {
        let mem = memory();
        let bytes_from = GuestAddress(0x43000 + host_page::BYTES_FROM);
        let bytes_to = GuestAddress(0x43000 + host_page::BYTES_TO);
        // Longer than one chunk of the copy, at addresses no page boundary aligns.
        let len = 70_000u32;
        let source: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        mem.write_slice(&source, GuestAddress(0x1_0123)).unwrap();
        mem.write_slice(&[0xaa; 80_000], GuestAddress(0x5_0000))
            .unwrap();
        let mut ports = SimvmPorts::new(0, 64).with_pages_by_vmm(true);
        // Without a clock page there is no host page to name the addresses.
        assert!(!ports.copy_bytes(&mem, &len.to_le_bytes()));
        out(&mut ports, &mem, abi::PORT_CLOCK_PAGE, 0x42, 0);
        mem.write_obj(0x1_0123u64, bytes_from).unwrap();
        mem.write_obj(0x5_0007u64, bytes_to).unwrap();
        assert!(ports.copy_bytes(&mem, &len.to_le_bytes()));
        let mut bytes = vec![0u8; 80_000];
        mem.read_slice(&mut bytes, GuestAddress(0x5_0000)).unwrap();
        assert!(bytes[..7].iter().all(|b| *b == 0xaa));
        assert_eq!(&bytes[7..7 + len as usize], &source[..]);
        assert!(bytes[7 + len as usize..].iter().all(|b| *b == 0xaa));
        // A range reaching past RAM, or a write of another size, changes nothing.
        mem.write_slice(&[0xaa; 80_000], GuestAddress(0x5_0000))
            .unwrap();
        mem.write_obj(0xf_f000u64, bytes_to).unwrap();
        assert!(!ports.copy_bytes(&mem, &0x2000u32.to_le_bytes()));
        mem.write_obj(u64::MAX - 10, bytes_to).unwrap();
        assert!(!ports.copy_bytes(&mem, &len.to_le_bytes()));
        mem.write_obj(0x5_0007u64, bytes_to).unwrap();
        mem.write_obj(0xf_f000u64, bytes_from).unwrap();
        assert!(!ports.copy_bytes(&mem, &0x2000u32.to_le_bytes()));
        assert!(!ports.copy_bytes(&mem, &[0x20]));
        mem.read_slice(&mut bytes, GuestAddress(0x5_0000)).unwrap();
        assert!(bytes.iter().all(|b| *b == 0xaa));
    }

    #[test]
    fn each_kind_of_host_work_has_its_own_port_and_all_lists_them_in_order() {
        for (i, work) in HostWork::ALL.into_iter().enumerate() {
            assert_eq!(work as usize, i);
            assert_eq!(HostWork::of_port(work.port()), Some(work));
        }
        assert_eq!(
            HostWork::of_port(abi::PORT_CLEAR_PAGE),
            Some(HostWork::PageClear)
        );
        assert_eq!(
            HostWork::of_port(abi::PORT_FILL_RECORDS),
            Some(HostWork::RecordFill)
        );
        assert_eq!(HostWork::of_port(abi::PORT_TIMER), None);
    }

    #[test]
    fn a_record_fill_repeats_the_record_and_moves_only_the_words_that_point_into_it() {
        let mem = memory();
        let record_at = GuestAddress(0x43000 + host_page::RECORD_AT);
        // A struct page as Linux initialises it: flags, a list head pointing at itself at
        // words 1 and 2 (a vmemmap address), a reference count and a map count.
        let base = 0xffff_ea00_0001_c000u64;
        let record = [7u64, base + 8, base + 8, 0, 0, 0, 0xffff_ffff, 1];
        let fill = |count: u32, words: u32, relative: u32| {
            (count | words << 16 | relative << 24).to_le_bytes()
        };
        mem.write_slice(&[0xaa; 0x2000], GuestAddress(0x7_0000))
            .unwrap();
        for (i, word) in record.iter().enumerate() {
            mem.write_obj(*word, GuestAddress(0x7_0000 + 8 * i as u64))
                .unwrap();
        }
        let mut ports = SimvmPorts::new(0, 64).with_pages_by_vmm(true);
        // Without a clock page there is no host page to name the record.
        assert!(!ports.fill_records(&mem, &fill(63, 8, 0b110)));
        out(&mut ports, &mem, abi::PORT_CLOCK_PAGE, 0x42, 0);
        mem.write_obj(0x7_0000u64, record_at).unwrap();
        assert!(ports.fill_records(&mem, &fill(63, 8, 0b110)));
        for copy in 0..64u64 {
            for (i, word) in record.iter().enumerate() {
                let at = GuestAddress(0x7_0000 + copy * 64 + 8 * i as u64);
                let expected = if i == 1 || i == 2 {
                    word + copy * 64
                } else {
                    *word
                };
                assert_eq!(
                    mem.read_obj::<u64>(at).unwrap(),
                    expected,
                    "copy {copy} word {i}"
                );
            }
        }
        let mut after = [0u8; 0x1000];
        mem.read_slice(&mut after, GuestAddress(0x7_1000)).unwrap();
        assert!(after.iter().all(|b| *b == 0xaa));
        // No copies, records of no or more than eight words, a range reaching past RAM or past
        // the end of the address space, and a write of another size change nothing.
        mem.write_obj(0x7_1000u64, record_at).unwrap();
        assert!(!ports.fill_records(&mem, &fill(0, 8, 0)));
        assert!(!ports.fill_records(&mem, &fill(4, 0, 0)));
        assert!(!ports.fill_records(&mem, &fill(4, 9, 0)));
        assert!(!ports.fill_records(&mem, &4u16.to_le_bytes()));
        mem.write_obj(0xf_ff00u64, record_at).unwrap();
        assert!(!ports.fill_records(&mem, &fill(63, 8, 0)));
        mem.write_obj(u64::MAX - 10, record_at).unwrap();
        assert!(!ports.fill_records(&mem, &fill(1, 1, 0)));
        mem.read_slice(&mut after, GuestAddress(0x7_1000)).unwrap();
        assert!(after.iter().all(|b| *b == 0xaa));
    }

    #[test]
    fn timer_arms_from_the_page_and_disarms() {
        let mem = memory();
        let mut ports = SimvmPorts::new(0, 64);
        // Arming before a page exists means nothing.
        assert!(matches!(
            out(&mut ports, &mem, abi::PORT_TIMER, 1, 0),
            PortEvent::Ignored { .. }
        ));
        out(&mut ports, &mem, abi::PORT_CLOCK_PAGE, 0x10, 0);
        mem.write_obj(
            77_000u64,
            GuestAddress(0x10000 + clock_page::TIMER_DEADLINE_NS),
        )
        .unwrap();
        assert_eq!(
            out(&mut ports, &mem, abi::PORT_TIMER, 1, 0),
            PortEvent::TimerArmed(77_000)
        );
        assert_eq!(ports.deadline(), Some(77_000));
        assert_eq!(
            out(&mut ports, &mem, abi::PORT_TIMER, 0, 0),
            PortEvent::TimerDisarmed
        );
        assert_eq!(ports.deadline(), None);
    }

    /// A kick of 2^32 - 1 reads used to move the clock by over an hour, and a deadline near
    /// `u64::MAX` made the world jump there.
    #[test]
    fn a_guest_cannot_move_its_clock_without_bound() {
        let mem = memory();
        let mut ports = SimvmPorts::new(0, 64);
        let mut kick = |reads| out(&mut ports, &mem, abi::PORT_CLOCK_KICK, reads, 0);
        assert_eq!(kick(64), PortEvent::ClockKick(64));
        assert_eq!(kick(MAX_KICK_READS), PortEvent::ClockKick(MAX_KICK_READS));
        let absurd = kick(u32::MAX);
        assert_eq!(
            absurd,
            PortEvent::Absurd(Absurd::ClockKick {
                reads: u32::MAX,
                charged: MAX_KICK_READS
            })
        );
        assert_eq!(absurd.kick_reads(), Some(MAX_KICK_READS));
        assert_eq!(PortEvent::ClockKick(64).kick_reads(), Some(64));
        assert_eq!(PortEvent::IrqPoll.kick_reads(), None);
        // A stall limit above the bound raises it: an honest kick is never cut.
        let big = SimvmPorts::new(0, u32::MAX);
        assert_eq!(big.max_kick_reads(), u32::MAX);

        out(&mut ports, &mem, abi::PORT_CLOCK_PAGE, 0x10, 0);
        let deadline_at = GuestAddress(0x10000 + clock_page::TIMER_DEADLINE_NS);
        let now = 5_000;
        let limit = now + MAX_TIMER_AHEAD_NS;
        mem.write_obj(limit, deadline_at).unwrap();
        let armed = out(&mut ports, &mem, abi::PORT_TIMER, 1, now);
        assert_eq!(armed, PortEvent::TimerArmed(limit));
        for deadline in [limit + 1, u64::MAX] {
            mem.write_obj(deadline, deadline_at).unwrap();
            let refused = out(&mut ports, &mem, abi::PORT_TIMER, 1, now);
            assert_eq!(
                refused,
                PortEvent::Absurd(Absurd::TimerDeadline { deadline, now })
            );
            assert_eq!(ports.deadline(), None, "an absurd deadline disarms");
        }
        // Near the end of time the bound saturates instead of overflowing.
        let armed = out(&mut ports, &mem, abi::PORT_TIMER, 1, u64::MAX - 1);
        assert_eq!(armed, PortEvent::TimerArmed(u64::MAX));
        assert_eq!(
            Absurd::ClockKick {
                reads: 7,
                charged: 1
            }
            .to_string(),
            "clock kick of 7 reads, cut to 1"
        );
    }

    #[test]
    fn control_events_decode() {
        let mem = memory();
        let mut ports = SimvmPorts::new(0, 64);
        let mut control = |value| out(&mut ports, &mem, abi::PORT_CONTROL, value, 0);
        assert_eq!(control(1), PortEvent::Control(ControlEvent::Ready));
        assert_eq!(
            control(2 | 3 << 8),
            PortEvent::Control(ControlEvent::Exit(3))
        );
        assert_eq!(control(3), PortEvent::Control(ControlEvent::Panic));
        assert_eq!(control(4), PortEvent::Control(ControlEvent::PowerOff));
        assert_eq!(control(5), PortEvent::Control(ControlEvent::Restart));
        assert_eq!(
            control(6 | 0x12345 << 8),
            PortEvent::Control(ControlEvent::Identity(0x12345))
        );
        assert_eq!(
            control(0x99),
            PortEvent::Control(ControlEvent::Unknown(0x99))
        );
    }

    #[test]
    fn odd_sized_writes_are_ignored() {
        let mem = memory();
        let mut ports = SimvmPorts::new(0, 64);
        let event = ports.write(&mem, abi::PORT_CONTROL, &[2], 0);
        assert_eq!(
            event,
            PortEvent::Ignored {
                port: abi::PORT_CONTROL,
                value: 2
            }
        );
    }
}
