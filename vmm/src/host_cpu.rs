//! Pinning the simulation thread to one host CPU (`--cpu`).
//!
//! Nothing a guest sees depends on the host CPU on VMX and SVM hosts. On PVM hosts one thing
//! does: guest user-mode `CPUID` executes natively, so leaf 1 reports the initial APIC ID of
//! whichever host CPU the thread is on at that instant (docs/determinism.md). Pinning fixes it
//! for a run; it also keeps one simvm per CPU when several run side by side.

use crate::error::{Error, Result};

/// Restricts the calling thread to host CPU `cpu`.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    // cpu_set_t holds CPU_SETSIZE CPUs; CPU_SET on a larger index would write past it.
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(Error::PinCpu {
            cpu,
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    // SAFETY: cpu_set_t is plain data for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` was checked to be below CPU_SETSIZE, the capacity of `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(Error::PinCpu {
            cpu,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_beyond_the_set_is_an_error_not_a_panic() {
        let err = pin_current_thread(1 << 20).unwrap_err();
        assert!(err.to_string().contains("host CPU 1048576"), "{err}");
    }

    #[test]
    fn an_absent_cpu_is_refused_by_the_kernel() {
        // CPU_SETSIZE - 1 exists on no machine this runs on.
        let cpu = libc::CPU_SETSIZE as usize - 1;
        assert!(pin_current_thread(cpu).is_err());
    }
}
