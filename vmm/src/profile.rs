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
use std::time::Duration;

use simvm_devices::pvclock::{GuestCounts, HostWork};

mod activity;
pub mod figures;
mod guest_stack;
pub mod lookahead;
pub mod orc;
mod report;
mod symbols;

pub use guest_stack::{KernelProbeCache, KernelProbes, ProcessProbe, StackWalker, Unwinder};
pub use report::RunProfile;
pub use symbols::Symbols;

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
    /// The guest had simvm clear, copy or fill memory for it (`docs/guest-abi.md`, the host
    /// page): resumed at once, invisibly, like a signal.
    HostWork(HostWork),
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
            Self::HostWork(work) => write!(f, "{} (pio {:#06x})", work.name(), work.port()),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
