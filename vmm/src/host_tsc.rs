//! Keeping the host's TSC away from guest user code.
//!
//! The guest kernel sets CR4.TSD, so a user-mode `RDTSC` in the guest faults and the guest
//! kernel emulates it from virtual time. On VMX and SVM hosts the hardware applies the guest's
//! CR4 and that is enough. On PVM hosts guest user code runs in hardware ring 3 under the
//! *host's* CR4: `RDTSC` there executes natively and returns the host TSC, unless the host
//! thread running the vCPU has CR4.TSD set too. Then the instruction faults into KVM, whose
//! emulator applies the guest's CR4.TSD and delivers #GP to the guest kernel (measured; see
//! `docs/determinism.md`). So the simulation thread turns on CR4.TSD for itself with
//! `prctl(PR_SET_TSC, PR_TSC_SIGSEGV)` while it runs guests.
//!
//! While that is on, this thread must not execute `RDTSC` itself: the vDSO's `clock_gettime`
//! does, so host time is read here with the raw system call instead.

use std::time::Duration;

use crate::error::{Error, Result};

/// Turns on CR4.TSD for the calling thread until dropped.
pub struct TscTrap {
    previous: libc::c_int,
}

impl TscTrap {
    /// Arms the trap. A trap that cannot be armed is an error: on a PVM host, guest programs
    /// would read the host TSC and the run would silently stop being determined by its seed.
    pub fn arm() -> Result<Self> {
        let mut previous: libc::c_int = libc::PR_TSC_ENABLE;
        // SAFETY: PR_GET_TSC writes one c_int through the pointer, which is valid for writes.
        let got = unsafe { libc::prctl(libc::PR_GET_TSC, &mut previous as *mut libc::c_int) };
        if got != 0 {
            return Err(trap_error("PR_GET_TSC"));
        }
        set_tsc(libc::PR_TSC_SIGSEGV)?;
        Ok(Self { previous })
    }

    /// Runs `f` with the trap lifted, for code outside simvm's control (callbacks that may
    /// read the clock through the vDSO).
    pub fn lifted<R>(&self, f: impl FnOnce() -> R) -> Result<R> {
        set_tsc(libc::PR_TSC_ENABLE)?;
        let result = f();
        set_tsc(libc::PR_TSC_SIGSEGV)?;
        Ok(result)
    }
}

/// `prctl(PR_SET_TSC, mode)` for the calling thread.
fn set_tsc(mode: libc::c_int) -> Result<()> {
    // SAFETY: PR_SET_TSC takes an integer argument and has no memory effects.
    match unsafe { libc::prctl(libc::PR_SET_TSC, mode) } {
        0 => Ok(()),
        _ => Err(trap_error("PR_SET_TSC")),
    }
}

fn trap_error(op: &str) -> Error {
    Error::TscTrap(format!("{op}: {}", std::io::Error::last_os_error()))
}

impl Drop for TscTrap {
    fn drop(&mut self) {
        // Restoring the thread's earlier mode can only fail as arming would have.
        let _ = set_tsc(self.previous);
    }
}

/// Host monotonic time through the system call, never through the vDSO (see the module docs).
/// Only ever used to report real time, never to decide anything a guest sees.
pub fn monotonic() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer, which is valid for writes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clock_gettime,
            libc::CLOCK_MONOTONIC,
            &mut ts as *mut libc::timespec,
        )
    };
    if ret != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_is_readable_while_the_trap_is_armed_and_the_trap_is_undone() {
        let before = monotonic();
        {
            let _trap = TscTrap::arm().unwrap();
            let mut state: libc::c_int = 0;
            // SAFETY: as in `arm`.
            unsafe { libc::prctl(libc::PR_GET_TSC, &mut state as *mut libc::c_int) };
            assert_eq!(state, libc::PR_TSC_SIGSEGV);
            // Would die of SIGSEGV if it went through the vDSO's RDTSC.
            assert!(monotonic() >= before);
        }
        let mut state: libc::c_int = 0;
        // SAFETY: as in `arm`.
        unsafe { libc::prctl(libc::PR_GET_TSC, &mut state as *mut libc::c_int) };
        assert_eq!(state, libc::PR_TSC_ENABLE);
        let _ = std::time::Instant::now();
    }

    #[test]
    fn callbacks_run_with_the_trap_lifted() {
        let trap = TscTrap::arm().unwrap();
        // Would die of SIGSEGV in the vDSO's RDTSC if the trap were still armed.
        let t = trap.lifted(std::time::Instant::now).unwrap();
        let mut state: libc::c_int = 0;
        // SAFETY: as in `arm`.
        unsafe { libc::prctl(libc::PR_GET_TSC, &mut state as *mut libc::c_int) };
        assert_eq!(state, libc::PR_TSC_SIGSEGV);
        drop(trap);
        assert!(t.elapsed().as_secs() < 60);
    }
}
