//! Service latency: `min + exponential(mean)`, drawn without libm.
//!
//! The draw uses only IEEE `+ - * /` (exactly rounded, so bit-identical on every x86_64 host) and
//! integer operations: `-ln(u)` for a uniform `u` comes from the leading-zero count of an integer
//! and a fixed number of terms of the `atanh` series. `f64::ln` would call into the platform's
//! libm, whose last bits may differ between hosts and releases.

use std::f64::consts::LN_2;

use rand_core::RngCore;

/// A single draw is capped at this many means, so an unlucky draw cannot stall the disk for an
/// absurd time (the chance of exceeding it uncapped is `e^-20`, about 2e-9).
const MAX_DRAW_IN_MEANS: u64 = 20;

/// Terms of the `atanh` series for `ln(m)`, `m` in `[1, 2)`: the argument is at most 1/3, so 16
/// terms leave an error below `(1/9)^16`, far under the precision of an `f64`.
const ATANH_TERMS: u32 = 16;

/// How long the disk takes to serve one request, in virtual time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Latency {
    /// Every request takes at least this long.
    pub min_ns: u64,
    /// Mean of the exponential part added to `min_ns`; 0 makes the latency exactly `min_ns`.
    pub mean_ns: u64,
}

impl Default for Latency {
    /// A plausible NVMe SSD: at least 20 µs, 100 µs on average.
    fn default() -> Self {
        Self {
            min_ns: 20_000,
            mean_ns: 80_000,
        }
    }
}

impl Latency {
    /// A latency that never varies, for tests and for scenarios that want none.
    pub const fn fixed(ns: u64) -> Self {
        Self {
            min_ns: ns,
            mean_ns: 0,
        }
    }

    /// The largest latency a draw can give, so callers can bound waits.
    pub fn max_ns(&self) -> u64 {
        self.min_ns
            .saturating_add(self.mean_ns.saturating_mul(MAX_DRAW_IN_MEANS))
    }

    /// Draws one latency. It always takes exactly one `u64` from `rng`, whatever the
    /// configuration, so changing the latency does not shift the stream for later draws.
    pub(crate) fn draw(&self, rng: &mut impl RngCore) -> u64 {
        let random = rng.next_u64();
        self.min_ns
            .saturating_add(exponential_ns(self.mean_ns, random))
    }
}

/// An exponential variate of mean `mean_ns` from 64 random bits, capped at
/// [`MAX_DRAW_IN_MEANS`] means.
pub(crate) fn exponential_ns(mean_ns: u64, random: u64) -> u64 {
    if mean_ns == 0 {
        return 0;
    }
    let means = neg_ln_uniform(random).clamp(0.0, MAX_DRAW_IN_MEANS as f64);
    // `as` saturates and truncates: defined, identical everywhere, and meant. The `min` keeps
    // the cap exact where `mean_ns` does not fit an `f64` exactly.
    #[allow(clippy::cast_possible_truncation)]
    let draw = (mean_ns as f64 * means) as u64;
    draw.min(mean_ns.saturating_mul(MAX_DRAW_IN_MEANS))
}

/// `-ln(u)` for `u = k / 2^53`, `k = (random >> 11) + 1` in `[1, 2^53]`: a uniform `u` in
/// `(0, 1]` (never 0, so the logarithm is finite).
fn neg_ln_uniform(random: u64) -> f64 {
    let k = (random >> 11) + 1;
    53.0 * LN_2 - ln_integer(k)
}

/// `ln(k)` for `1 <= k <= 2^53`: `k = 2^e * m` with `m` in `[1, 2)`, so
/// `ln(k) = e * ln 2 + ln(m)`. `k` and the power of two are exact in an `f64`, so is `m`.
pub(crate) fn ln_integer(k: u64) -> f64 {
    let exponent = 63 - k.max(1).leading_zeros();
    let mantissa = k as f64 / (1u64 << exponent) as f64;
    f64::from(exponent) * LN_2 + ln_mantissa(mantissa)
}

/// `ln(m)` for `m` in `[1, 2)` as `2 * atanh((m - 1) / (m + 1))`, summed as a series with a fixed
/// number of terms.
fn ln_mantissa(m: f64) -> f64 {
    let s = (m - 1.0) / (m + 1.0);
    let s_squared = s * s;
    let mut power = s;
    let mut sum = 0.0;
    for n in 0..ATANH_TERMS {
        sum += power / f64::from(2 * n + 1);
        power *= s_squared;
    }
    2.0 * sum
}
