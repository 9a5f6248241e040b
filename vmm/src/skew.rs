//! A machine's clock rate against world time (clock skew and drift faults).
//!
//! World time is common to every machine; a machine whose clock runs fast or slow sees its
//! own time as a piecewise-linear function of it: from the last rate change on, guest time
//! advances `1 + ppm / 10^6` guest nanoseconds per world nanosecond. The function never
//! decreases, whatever the sequence of rates, so the guest's monotonic clock never goes back;
//! steps of the wall clock are separate (`Machine::step_wall_clock`).

use serde::{Deserialize, Serialize};

/// One million: rates are in parts per million.
const MILLION: i128 = 1_000_000;

/// The fastest and slowest rates a scenario may ask for: ±50%. Real oscillators are within
/// ±100 ppm; the wide bound is for tests that want a drift to show in seconds.
pub const MAX_RATE_PPM: i64 = 500_000;

/// The largest wall clock step or offset a timeline may ask for: 50 years of 365 days. The
/// guest's clock starts in 2026, and Linux refuses to set a wall clock before 1970 or past
/// 2232, so a larger step would be announced and then ignored by the guest.
pub const MAX_STEP_NS: i64 = 18_250 * 86_400 * 1_000_000_000;

/// Guest time as a function of world time (both relative to the machine's power-on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockSkew {
    /// World and guest time at the last rate change.
    anchor_world: u64,
    anchor_guest: u64,
    /// Parts per million the guest's clock gains (negative: loses) from the anchor on.
    ppm: i64,
}

impl ClockSkew {
    /// A clock that gains `ppm` parts per million from the start.
    pub fn with_rate(ppm: i64) -> Self {
        Self {
            ppm: ppm.clamp(-MAX_RATE_PPM, MAX_RATE_PPM),
            ..Self::default()
        }
    }

    pub fn ppm(&self) -> i64 {
        self.ppm
    }

    /// Guest time at world time `world`. Times before the anchor read as the anchor's guest
    /// time, so the function is monotonic over all of `u64`.
    pub fn guest(&self, world: u64) -> u64 {
        let elapsed = i128::from(world.saturating_sub(self.anchor_world));
        let scaled = elapsed * (MILLION + i128::from(self.ppm)) / MILLION;
        clamp_u64(i128::from(self.anchor_guest) + scaled)
    }

    /// The earliest world time at which guest time has reached `guest` (for timer deadlines:
    /// `self.guest(self.world(g)) >= g` whenever guest time can reach `g`).
    pub fn world(&self, guest: u64) -> u64 {
        let Some(ahead) = guest.checked_sub(self.anchor_guest).filter(|&a| a > 0) else {
            return self.anchor_world;
        };
        let rate = MILLION + i128::from(self.ppm);
        // Round up: the deadline must not come before the guest's clock reaches it.
        let elapsed = (i128::from(ahead) * MILLION + rate - 1) / rate;
        clamp_u64(i128::from(self.anchor_world) + elapsed)
    }

    /// From world time `world` on, the clock gains `ppm` parts per million (clamped to
    /// [`MAX_RATE_PPM`]). Guest time is continuous across the change.
    pub fn set_rate(&mut self, world: u64, ppm: i64) {
        let world = world.max(self.anchor_world);
        self.anchor_guest = self.guest(world);
        self.anchor_world = world;
        self.ppm = ppm.clamp(-MAX_RATE_PPM, MAX_RATE_PPM);
    }
}

/// One incarnation's guest clock against world time, to read back times the guest recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestClock {
    /// World time at the incarnation's power-on.
    pub epoch: u64,
    /// Guest time at power-on (the template's clock for a restored machine).
    pub offset: u64,
    pub skew: ClockSkew,
}

impl GuestClock {
    /// The guest's clock at world time `world`.
    pub fn guest(&self, world: u64) -> u64 {
        (self.skew.guest(world.saturating_sub(self.epoch))).saturating_add(self.offset)
    }

    /// The earliest world time at which the guest's clock reads `guest`.
    pub fn world(&self, guest: u64) -> u64 {
        (self.skew.world(guest.saturating_sub(self.offset))).saturating_add(self.epoch)
    }
}

/// A clock fault: what a timeline event does to one machine's clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockChange {
    /// From now on the clocks gain `ppm` parts per million against world time (monotonic and
    /// wall alike; both stay continuous).
    Rate { ppm: i64 },
    /// The wall clock jumps by `delta_ns` (forward or back), as a settimeofday would; the
    /// monotonic clock does not move.
    Step { delta_ns: i64 },
    /// The wall clock is stepped to read world wall time plus `offset_ns`.
    Offset { offset_ns: i64 },
}

impl std::fmt::Display for ClockChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::units::{format_ppm, format_signed_ns};
        match *self {
            Self::Rate { ppm } => write!(f, "rate {}", format_ppm(ppm)),
            Self::Step { delta_ns } => write!(f, "wall clock step {}", format_signed_ns(delta_ns)),
            Self::Offset { offset_ns } => {
                write!(f, "wall clock offset {}", format_signed_ns(offset_ns))
            }
        }
    }
}

fn clamp_u64(value: i128) -> u64 {
    u64::try_from(value.max(0)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn no_skew_is_the_identity() {
        let skew = ClockSkew::default();
        for t in [0, 1, 999, 1_000_000_007, u64::MAX] {
            assert_eq!(skew.guest(t), t);
            assert_eq!(skew.world(t), t);
        }
    }

    #[test]
    fn a_fast_clock_gains_its_rate() {
        let skew = ClockSkew::with_rate(200);
        // 200 ppm of 10 s is 2 ms.
        assert_eq!(skew.guest(10_000_000_000), 10_002_000_000);
        assert_eq!(skew.world(10_002_000_000), 10_000_000_000);
        let slow = ClockSkew::with_rate(-100_000);
        assert_eq!(slow.guest(1_000_000_000), 900_000_000);
        assert_eq!(slow.world(900_000_000), 1_000_000_000);
    }

    #[test]
    fn a_rate_change_keeps_guest_time_continuous() {
        let mut skew = ClockSkew::with_rate(100_000);
        assert_eq!(skew.guest(1_000), 1_100);
        skew.set_rate(1_000, -100_000);
        assert_eq!(skew.guest(1_000), 1_100);
        assert_eq!(skew.guest(2_000), 2_000);
        // Before the anchor: the anchor's guest time, never earlier.
        assert_eq!(skew.guest(500), 1_100);
        assert_eq!(skew.world(1_050), 1_000);
    }

    #[test]
    fn rates_are_bounded() {
        assert_eq!(ClockSkew::with_rate(i64::MIN).ppm(), -MAX_RATE_PPM);
        let mut skew = ClockSkew::default();
        skew.set_rate(0, i64::MAX);
        assert_eq!(skew.ppm(), MAX_RATE_PPM);
        assert_eq!(skew.guest(u64::MAX), u64::MAX);
    }

    proptest! {
        /// Whatever the rate changes, guest time never decreases as world time passes, and a
        /// deadline's world time is the first at which the guest's clock has reached it.
        #[test]
        fn guest_time_is_monotonic_and_deadlines_exact(
            changes in proptest::collection::vec((0u64..1 << 40, -MAX_RATE_PPM..=MAX_RATE_PPM), 0..8),
            probes in proptest::collection::vec(0u64..1 << 42, 1..16),
        ) {
            let mut skew = ClockSkew::default();
            let mut world = 0u64;
            let mut last_guest = 0u64;
            for (gap, ppm) in changes {
                world += gap;
                let before = skew.guest(world);
                prop_assert!(before >= last_guest);
                skew.set_rate(world, ppm);
                prop_assert_eq!(skew.guest(world), before);
                last_guest = before;
            }
            let mut probes = probes;
            probes.sort_unstable();
            for probe in probes {
                let t = world + probe;
                let guest = skew.guest(t);
                prop_assert!(guest >= last_guest);
                last_guest = guest;
                let due = skew.world(guest);
                prop_assert!(due <= t);
                prop_assert!(skew.guest(due) >= guest);
                if due > world {
                    prop_assert!(skew.guest(due - 1) < guest);
                }
            }
        }
    }
}
