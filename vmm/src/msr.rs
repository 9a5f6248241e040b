//! MSRs whose real values come from the host: trapped to userspace and answered from virtual
//! time, so the guest never sees a host TSC, frequency counter or kvmclock.

use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};

use crate::error::{Error, Result};

pub const IA32_TSC: u32 = 0x10;
pub const IA32_TSC_ADJUST: u32 = 0x3b;
pub const IA32_MPERF: u32 = 0xe7;
pub const IA32_APERF: u32 = 0xe8;
pub const IA32_TSC_DEADLINE: u32 = 0x6e0;
pub const IA32_TSC_AUX: u32 = 0xc000_0103;
pub const KVM_WALL_CLOCK: u32 = 0x11;
pub const KVM_SYSTEM_TIME: u32 = 0x12;
pub const KVM_PV_MSR_BASE: u32 = 0x4b56_4d00;
pub const KVM_PV_MSR_COUNT: u32 = 8;

/// The filtered ranges: (first MSR, count).
const FILTERED: &[(u32, u32)] = &[
    (IA32_TSC, 1),
    (KVM_WALL_CLOCK, 2),
    (IA32_TSC_ADJUST, 1),
    (IA32_MPERF, 2),
    (IA32_TSC_DEADLINE, 1),
    (IA32_TSC_AUX, 1),
    (KVM_PV_MSR_BASE, KVM_PV_MSR_COUNT),
];

/// Installs the filter: every access to a [`FILTERED`] MSR exits to userspace.
pub fn install_filter(vm: &VmFd) -> Result<()> {
    let denied = [0u8; 1];
    let ranges: Vec<MsrFilterRange> = FILTERED
        .iter()
        .map(|&(base, msr_count)| MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base,
            msr_count,
            // A clear bit denies the access, which the user-space-MSR capability turns into an exit.
            bitmap: &denied,
        })
        .collect();
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)
        .map_err(Error::kvm("KVM_X86_SET_MSR_FILTER"))
}

/// The value a read of a filtered MSR returns at virtual time `now_ns`. The virtual TSC counts
/// nanoseconds, like the paravirtual clock.
pub fn read(index: u32, now_ns: u64) -> u64 {
    match index {
        IA32_TSC | IA32_MPERF | IA32_APERF => now_ns,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_small_enough_for_one_byte_bitmaps_and_disjoint() {
        let mut sorted = FILTERED.to_vec();
        sorted.sort();
        for pair in sorted.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0);
        }
        assert!(FILTERED.iter().all(|&(_, n)| (1..=8).contains(&n)));
        assert!(FILTERED.len() <= 16);
    }

    #[test]
    fn time_msrs_read_virtual_time() {
        assert_eq!(read(IA32_TSC, 1234), 1234);
        assert_eq!(read(IA32_TSC_AUX, 1234), 0);
        assert_eq!(read(KVM_SYSTEM_TIME, 1234), 0);
    }
}
