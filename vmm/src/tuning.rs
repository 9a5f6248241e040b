//! Guest tunings: changes to how a guest runs that make it faster without changing what it
//! computes (docs/performance.md "Guest tunings"). Each is on by default and has a switch, so a
//! benchmark can run the same scenario and seed with and without it.

/// Which guest tunings a world's machines get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestTuning {
    /// Clock reads in user mode through the vDSO (`clock_gettime`, `gettimeofday`) instead of
    /// system calls: docs/guest-abi.md "The vDSO clock". Off: `simvm_vdso=0`.
    pub vdso_clock: bool,
}

impl Default for GuestTuning {
    fn default() -> Self {
        Self { vdso_clock: true }
    }
}

impl GuestTuning {
    /// Every tuning off: guests run as they did before any existed.
    pub const NONE: Self = Self { vdso_clock: false };

    /// The guest kernel parameters that apply the tuning (empty when everything is on).
    pub fn kernel_args(&self) -> String {
        let mut args = Vec::new();
        if !self.vdso_clock {
            args.push("simvm_vdso=0");
        }
        args.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tunings_that_are_off_add_kernel_args() {
        assert_eq!(GuestTuning::default().kernel_args(), "");
        assert_eq!(GuestTuning::NONE.kernel_args(), "simvm_vdso=0");
    }
}
