//! The watchdog: kicks a vCPU out of `KVM_RUN` when it has not exited for too long.
//!
//! A guest spinning in user space without any exit would otherwise hang simvm. The watchdog is
//! the one place where host time may affect a guest, so every kick is recorded and reported as
//! making the run nondeterministic.
//!
//! The simulation thread bumps a progress counter on every guest entry and exit (odd: inside the
//! guest). A watchdog thread samples it; when the counter is odd and unchanged for longer than the
//! limit, it signals the simulation thread, whose `KVM_RUN` then returns `EINTR`. A signal that
//! lands just before the ioctl is lost, so the kick repeats at every sample until progress
//! resumes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::error::{Error, Result};

struct Shared {
    progress: AtomicU64,
    kicks: AtomicU64,
    /// Set just before a kick is sent, taken by the simulation thread: an `EINTR` with this
    /// unset came from somebody else's signal.
    kick_pending: AtomicBool,
    /// Set just before a profiling sample's signal is sent, taken like `kick_pending`.
    sample_pending: AtomicBool,
    /// Sample ticks that found simvm's own code running (not the guest).
    simvm_samples: AtomicU64,
    stop: AtomicBool,
}

/// A running watchdog for the calling thread.
pub struct Watchdog {
    limit: Duration,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: the signal's only purpose is to make KVM_RUN return EINTR.
}

fn kick_signal() -> libc::c_int {
    SIGRTMIN() + 1
}

impl Watchdog {
    /// Starts watching the calling thread with the given limit of real time without an exit.
    pub fn start(limit: Duration) -> Result<Self> {
        Self::with_sampling(limit, None)
    }

    /// Like [`Watchdog::start`], and every `sample_every` of real time also interrupts a
    /// running guest for a profiling sample ([`Watchdog::take_sample`]), or counts a sample of
    /// simvm's own code if the guest is not running.
    pub fn with_sampling(limit: Duration, sample_every: Option<Duration>) -> Result<Self> {
        register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| Error::Watchdog(e.to_string()))?;
        // SAFETY: pthread_self has no preconditions and always succeeds.
        let target = unsafe { libc::pthread_self() };
        let shared = Arc::new(Shared {
            progress: AtomicU64::new(0),
            kicks: AtomicU64::new(0),
            kick_pending: AtomicBool::new(false),
            sample_pending: AtomicBool::new(false),
            simvm_samples: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let watched = Arc::clone(&shared);
        let kick_period = (limit / 4).max(Duration::from_millis(10));
        let period = sample_every.map_or(kick_period, |s| s.min(kick_period));
        let thread = std::thread::Builder::new()
            .name("simvm-watchdog".into())
            .spawn(move || {
                let mut last = (u64::MAX, Instant::now());
                let mut tick = Instant::now() + period;
                while !watched.stop.load(Ordering::Acquire) {
                    // Parked rather than asleep, so that Drop wakes the thread at once instead
                    // of waiting out the period (a quarter of the limit: 1.25 s by default)
                    // at the end of every run. A wake-up before the tick just parks again.
                    let left = tick.saturating_duration_since(Instant::now());
                    if !left.is_zero() {
                        std::thread::park_timeout(left);
                        continue;
                    }
                    tick = Instant::now() + period;
                    let now = watched.progress.load(Ordering::Relaxed);
                    if sample_every.is_some() {
                        if now % 2 == 1 {
                            watched.sample_pending.store(true, Ordering::SeqCst);
                            // SAFETY: as for the kick below.
                            unsafe { libc::pthread_kill(target, kick_signal()) };
                        } else {
                            watched.simvm_samples.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if now != last.0 {
                        last = (now, Instant::now());
                    } else if now % 2 == 1 && last.1.elapsed() >= limit {
                        watched.kicks.fetch_add(1, Ordering::Relaxed);
                        watched.kick_pending.store(true, Ordering::SeqCst);
                        // SAFETY: `target` is the simulation thread, which outlives this thread
                        // (Drop joins us before the simulation thread can exit), and the signal
                        // has a handler installed above.
                        unsafe { libc::pthread_kill(target, kick_signal()) };
                    }
                }
            })
            .map_err(|e| Error::Watchdog(e.to_string()))?;
        Ok(Self {
            limit,
            shared,
            thread: Some(thread),
        })
    }

    /// Called just before entering the guest.
    #[inline]
    pub fn enter(&self) {
        self.shared.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// Called just after the guest exited.
    #[inline]
    pub fn leave(&self) {
        self.shared.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the watchdog kicked since the last call: an interrupted `KVM_RUN` is the
    /// watchdog's doing only then.
    pub fn take_kick(&self) -> bool {
        self.shared.kick_pending.swap(false, Ordering::SeqCst)
    }

    /// Whether a profiling sample interrupted the guest since the last call.
    pub fn take_sample(&self) -> bool {
        self.shared.sample_pending.swap(false, Ordering::SeqCst)
    }

    /// Sample ticks that found simvm's own code running.
    pub fn simvm_samples(&self) -> u64 {
        self.shared.simvm_samples.load(Ordering::Relaxed)
    }

    /// Real time a guest may go without an exit before it is kicked.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Number of kicks sent so far.
    pub fn kicks(&self) -> u64 {
        self.shared.kicks.load(Ordering::Relaxed)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_the_watchdog_does_not_wait_out_its_period() {
        // A 120 s limit makes the period 30 s; the thread must end when told, not at its tick.
        let watchdog = Watchdog::start(Duration::from_secs(120)).expect("start the watchdog");
        std::thread::sleep(Duration::from_millis(50));
        let dropped = Instant::now();
        drop(watchdog);
        let took = dropped.elapsed();
        assert!(took < Duration::from_secs(10), "drop took {took:?}");
    }
}
