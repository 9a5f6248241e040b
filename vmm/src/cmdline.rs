//! The guest kernel command line (`docs/guest-abi.md`, "Kernel command line").

/// Parameters every simvm guest boots with, and why:
const FIXED: &[&str] = &[
    // The console is COM1; simvm's paravirtual clock and control channel are switched on.
    "console=ttyS0",
    "simvm=1",
    // No local APIC or IO-APIC: interrupts come from simvm's userspace 8259 pair. (The kernel
    // is built without ACPI and PCI, so it needs no switch for those.)
    "nolapic",
    "noapic",
    // No user address-space randomisation beyond what the seeded RNG decides.
    "norandmaps",
    // No port-0x80 delays: each would be an exit.
    "io_delay=none",
    // Only FXSAVE state: XSAVE fails emulation on PVM hosts, and one fixed state layout
    // everywhere.
    "noxsave",
    // Features the guest must not use whatever CPUID says (on PVM hosts CPUID shows the host):
    // host time sources, hardware randomness, and instructions PVM's emulator lacks in ring 0.
    // `tsc` is cleared here, not only by `simvm=1`, because the kernel credits the boot seed
    // (and reads an entropy timestamp) before it parses `simvm=1`. `cx16`: SLUB's per-CPU
    // freelists use CMPXCHG16B, which PVM's ring-0 emulator cannot run; without it SLUB takes
    // its interrupts-off emulation.
    // Without the TSC feature Linux registers no TSC clocksource, so `tsc=unstable` is not
    // needed; it would also mark the scheduler's clock unstable, which simvm's is not
    // (GuestTuning::stable_sched_clock).
    "clearcpuid=tsc,rdtscp,tsc_deadline_timer,rdrand,rdseed,smap,popcnt,erms,fsrm,x2apic,cx16",
    // Delay loops calibrated to a fixed value instead of measured against host time.
    "lpj=1000",
    // The RNG is seeded from the run's seed (SETUP_RNG_SEED) and never from the CPU.
    "random.trust_bootloader=on",
    "random.trust_cpu=off",
    // A panic stops the machine at once; simvm reports it.
    "panic=-1",
    "reboot=t",
    "quiet",
];

/// The full command line: the fixed parameters, the virtio devices, then `extra`.
pub fn kernel_cmdline(virtio_devices: &[(u64, u8)], extra: &str) -> String {
    let mut parts: Vec<String> = FIXED.iter().map(|s| s.to_string()).collect();
    for (addr, irq) in virtio_devices {
        parts.push(format!("virtio_mmio.device=4K@{addr:#x}:{irq}"));
    }
    if !extra.trim().is_empty() {
        parts.push(extra.trim().to_string());
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_extra_are_appended() {
        let line = kernel_cmdline(&[(0xd000_0000, 5)], "loglevel=8");
        assert!(line.starts_with("console=ttyS0 simvm=1 "));
        assert!(line.ends_with(" virtio_mmio.device=4K@0xd0000000:5 loglevel=8"));
        assert!(line.len() < crate::layout::CMDLINE_MAX);
    }
}
