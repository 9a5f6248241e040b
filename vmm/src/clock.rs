//! Virtual time: what each kind of guest exit costs.
//!
//! A machine's clock moves only at VM exits: by a fixed cost per guest-initiated exit, by the
//! charge for stalled clock reads, and by jumps to the next deadline when the guest halts. The
//! costs are inputs of the run (same costs, same run), not measurements of the host.

/// Virtual nanoseconds charged per exit class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitCosts {
    /// A port I/O access.
    pub pio_ns: u64,
    /// An MMIO access (virtio registers).
    pub mmio_ns: u64,
    /// A trapped MSR access.
    pub msr_ns: u64,
    /// An injected interrupt.
    pub irq_ns: u64,
    /// Each stalled clock read reported by a clock kick.
    pub clock_read_ns: u64,
    /// A watchdog kick: the guest ran for a long stretch without exiting; this much virtual
    /// time is charged so its timers can fire.
    pub watchdog_kick_ns: u64,
}

impl Default for ExitCosts {
    /// Round numbers of the order of a real exit on current hardware: the exact values only
    /// need to be fixed, not true.
    fn default() -> Self {
        Self {
            pio_ns: 1_000,
            mmio_ns: 1_000,
            msr_ns: 500,
            irq_ns: 200,
            clock_read_ns: 1_000,
            watchdog_kick_ns: 10_000_000,
        }
    }
}

/// How many unchanged clock reads the guest makes before it kicks (written to the clock page).
pub const DEFAULT_STALL_LIMIT: u32 = 64;

/// Unix time at virtual time zero, by default: 2026-01-01T00:00:00Z. Fixed, so guests see the
/// same dates on every run.
pub const DEFAULT_WALL_BASE_NS: u64 = 1_767_225_600 * 1_000_000_000;
