//! Constants of the simvm guest ABI (`docs/guest-abi.md`). The guest kernel patches and init use
//! the same numbers; change that page first.

/// First port of the simvm port block.
pub const PORT_BASE: u16 = 0x0e00;
/// Number of ports in the block.
pub const PORT_COUNT: u16 = 0x24;
/// `inl`: probe; `outl pfn`: register the clock page.
pub const PORT_CLOCK_PAGE: u16 = 0x0e00;
/// `outl 1`: arm the one-shot timer at the page's deadline; `outl 0`: disarm.
pub const PORT_TIMER: u16 = 0x0e04;
/// `outl n`: the last `n` clock reads saw no change.
pub const PORT_CLOCK_KICK: u16 = 0x0e08;
/// `outl event | arg << 8`: control channel.
pub const PORT_CONTROL: u16 = 0x0e0c;
/// `outl 0`: an exit at which the VMM can inject the interrupt the clock page says is pending.
pub const PORT_IRQ_POLL: u16 = 0x0e10;
/// `outl pfn`: zero that page of guest RAM, where the host page asks for it
/// ([`host_page::PAGES_BY_VMM`]). No virtual time, no trace event: the guest runs the same whoever
/// clears its pages.
pub const PORT_CLEAR_PAGE: u16 = 0x0e14;
/// `outl pfn`: copy the page the host page's [`host_page::COPY_FROM`] names to that page of guest
/// RAM, where the host page asks for it. No virtual time, no trace event, as [`PORT_CLEAR_PAGE`].
pub const PORT_COPY_PAGE: u16 = 0x0e18;
/// `outl len`: copy `len` bytes of guest RAM from the host page's [`host_page::BYTES_FROM`] to
/// its [`host_page::BYTES_TO`] (guest-physical addresses), where the host page asks for page
/// work. No virtual time, no trace event, as [`PORT_CLEAR_PAGE`].
pub const PORT_COPY_BYTES: u16 = 0x0e1c;
/// `outl count | words << 16 | self << 24`: repeat the record of `words` 8-byte words at the host
/// page's [`host_page::RECORD_AT`] `count` times right after it, adding to each word that bit i
/// of `self` marks (an address within the record) the copy's offset from the record, where the
/// host page asks for page work. No virtual time, no trace event, as [`PORT_CLEAR_PAGE`].
pub const PORT_FILL_RECORDS: u16 = 0x0e20;
/// Value read from [`PORT_CLOCK_PAGE`] when simvm is the VMM.
pub const PROBE_MAGIC: u32 = 0x5349_4d56;
/// Version written to the clock page.
pub const ABI_VERSION: u32 = 10;
/// The user kick page: guest-physical, outside RAM. A 32-bit write of `n` at its start is a clock
/// kick of `n` reads, as `outl n` to [`PORT_CLOCK_KICK`], but one user mode can make: the guest's
/// vDSO clock kicks through it.
pub const USER_KICK_GPA: u64 = 0xcfff_f000;

/// Clock page field offsets.
pub mod clock_page {
    pub const NOW_NS: u64 = 0x00;
    pub const WALL_BASE_NS: u64 = 0x08;
    pub const TIMER_DEADLINE_NS: u64 = 0x10;
    pub const ABI_VERSION: u64 = 0x18;
    pub const STALL_LIMIT: u64 = 0x1c;
    pub const TSC_KHZ: u64 = 0x20;
    pub const IRQ_PENDING: u64 = 0x28;
    /// u32: bumped by the VMM with each reseed; the guest mixes in [`ENTROPY`] when it changes.
    pub const ENTROPY_GEN: u64 = 0x30;
    /// u32: bumped by the VMM with each wall clock step; the guest steps `CLOCK_REALTIME` to
    /// `WALL_BASE_NS + NOW_NS` when it changes.
    pub const WALL_GEN: u64 = 0x34;
    /// [`ENTROPY_SIZE`] bytes of entropy for the guest's RNG.
    pub const ENTROPY: u64 = 0x38;
    pub const ENTROPY_SIZE: usize = 32;
    /// u64, written by the guest: system calls since boot (for the profile).
    pub const SYSCALLS: u64 = 0x58;
    /// u64, written by the guest: page faults since boot (for the profile).
    pub const PAGE_FAULTS: u64 = 0x60;
}

/// The host page: the page after the clock page, written by the VMM before every entry and,
/// unlike the clock page, never mapped into guest user space. It says how the guest kernel runs
/// fastest on this host, which must not change what any program observes.
pub mod host_page {
    /// Its offset from the clock page.
    pub const OFFSET: u64 = 0x1000;
    /// u32: 1 if [`super::PORT_CLEAR_PAGE`], [`super::PORT_COPY_PAGE`],
    /// [`super::PORT_COPY_BYTES`] and [`super::PORT_FILL_RECORDS`] are cheaper than clearing,
    /// copying and filling in the guest.
    pub const PAGES_BY_VMM: u64 = 0x00;
    /// u32, written by the guest: the frame [`super::PORT_COPY_PAGE`] copies from.
    pub const COPY_FROM: u64 = 0x04;
    /// u64, written by the guest: where [`super::PORT_COPY_BYTES`] copies from.
    pub const BYTES_FROM: u64 = 0x08;
    /// u64, written by the guest: where [`super::PORT_COPY_BYTES`] copies to.
    pub const BYTES_TO: u64 = 0x10;
    /// u64, written by the guest: the record [`super::PORT_FILL_RECORDS`] repeats.
    pub const RECORD_AT: u64 = 0x18;
}

/// Frequency of the virtual TSC: it counts nanoseconds.
pub const VIRTUAL_TSC_KHZ: u64 = 1_000_000;

/// Control channel events (low byte of the value written to [`PORT_CONTROL`]).
pub mod control {
    pub const READY: u8 = 1;
    pub const EXIT: u8 = 2;
    pub const PANIC: u8 = 3;
    pub const POWEROFF: u8 = 4;
    pub const RESTART: u8 = 5;
    /// Init asks for its identity; the argument is the frame of the kernel's identity buffer.
    pub const IDENTITY: u8 = 6;
}

/// The identity buffer the guest kernel hands over with [`control::IDENTITY`].
pub mod identity {
    /// Its size: 64 KiB, page aligned and contiguous in guest memory.
    pub const BUFFER_SIZE: u64 = 0x1_0000;
    /// "SID1" as little-endian bytes, at offset 0.
    pub const MAGIC: u32 = 0x3144_4953;
    /// Header size; the archive follows it.
    pub const HEADER_SIZE: u64 = 64;
    /// Offset of the archive's length (u32).
    pub const LENGTH: u64 = 4;
    /// Offset of the 32-byte RNG seed.
    pub const SEED: u64 = 8;
    /// The largest archive that fits.
    pub const MAX_ARCHIVE: u64 = BUFFER_SIZE - HEADER_SIZE;
}

/// Interrupt lines.
pub const IRQ_TIMER: u8 = 0;
pub const IRQ_SERIAL: u8 = 4;
/// IRQ of the first virtio-mmio device; device `i` uses `IRQ_VIRTIO_BASE + i`.
pub const IRQ_VIRTIO_BASE: u8 = 5;
/// Guest-physical address of the first virtio-mmio device window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
