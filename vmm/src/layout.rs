//! Guest-physical layout of a simvm machine (`docs/guest-abi.md`, "Machine layout").

/// Boot GDT.
pub const BOOT_GDT: u64 = 0x500;
/// Boot IDT (empty: the kernel installs its own before enabling interrupts).
pub const BOOT_IDT: u64 = 0x520;
/// The `SETUP_RNG_SEED` setup_data entry.
pub const SETUP_DATA: u64 = 0x6000;
/// The zero page (`boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
/// Top of the boot stack.
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, PDPT, PD.
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
/// Page directory of the fourth GiB, where the virtio-mmio windows are.
pub const PD_DEVICES: u64 = 0xc000;
/// Kernel command line and its capacity.
pub const CMDLINE: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 4096;
/// End of conventional memory and start of the legacy BIOS hole.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of RAM above the legacy hole; the kernel is loaded at or above it.
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// Guest RAM must end below the virtio-mmio window (and the 32-bit boot fields).
pub const MAX_RAM: u64 = 3 << 30;
/// The initramfs must lie below this address (the identity map covers the first 1 GiB).
pub const INITRD_MAX_END: u64 = 1 << 30;
/// Smallest guest RAM simvm accepts: the kernel, the initramfs and early allocations need room.
pub const MIN_RAM: u64 = 32 << 20;
