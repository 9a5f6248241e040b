//! Numbers with units, as scenario files and the command line write them: durations (`"1.5ms"`),
//! sizes (`"256M"`) and bandwidths (`"100Mbit"`).
//!
//! There is one parser for both, and it is exact: a value is a decimal number and a unit, turned
//! into an integer count of the smallest unit (nanoseconds, bytes, bits per second) without going
//! through floating point, so `"0.3s"` is 300 000 000 ns and not one short, and a value finer than
//! the smallest unit (`"1.5ns"`) is an error instead of being rounded. The formatting functions
//! write the largest unit that represents a value exactly, so formatting and parsing again gives
//! the same value: the `reproduce:` line of a failing run depends on that.

#![warn(clippy::cast_possible_truncation)]

use std::fmt;

/// Duration units, in nanoseconds (case-insensitive; `m` is minutes).
pub const DURATION_UNITS: &[(&str, u64)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("min", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
];

/// Size units, in bytes (powers of 1024, case-insensitive; no unit is bytes).
pub const SIZE_UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", 1 << 10),
    ("kib", 1 << 10),
    ("m", 1 << 20),
    ("mib", 1 << 20),
    ("g", 1 << 30),
    ("gib", 1 << 30),
];

/// Bandwidth units, in bits per second (powers of 1000, case-insensitive).
pub const BANDWIDTH_UNITS: &[(&str, u64)] = &[
    ("bit", 1),
    ("kbit", 1_000),
    ("mbit", 1_000_000),
    ("gbit", 1_000_000_000),
    ("bps", 1),
    ("kbps", 1_000),
    ("mbps", 1_000_000),
    ("gbps", 1_000_000_000),
];

/// What a duration should look like, for errors.
pub const DURATION_EXPECTING: &str = "a duration like \"500ms\" (units ns, us, ms, s, m, h, d)";
/// What a size should look like, for errors.
pub const SIZE_EXPECTING: &str = "a size like \"256M\" (units K, M, G)";

/// Parses a duration (`"500ms"`, `"1.5s"`, `"2m"`) into nanoseconds, exactly.
pub fn parse_duration_ns(text: &str) -> Result<u64, String> {
    parse_scaled(text, DURATION_UNITS).map_err(|e| match e {
        ScaledError::UnknownUnit if is_plain_number(text) => {
            let n = text.trim();
            format!("a duration needs a unit: write \"{n}s\" or \"{n}ms\", found {text:?}")
        }
        e => e.describe(text, DURATION_EXPECTING, "a duration"),
    })
}

/// Parses a duration with an optional sign (`"-1.5s"`, `"+250ms"`, `"2s"`) into nanoseconds.
pub fn parse_signed_duration_ns(text: &str) -> Result<i64, String> {
    let (negative, magnitude) = split_sign(text);
    let ns = parse_duration_ns(magnitude)?;
    let ns = i64::try_from(ns).map_err(|_| format!("{text:?} is too long a duration"))?;
    Ok(if negative { -ns } else { ns })
}

/// Parses a clock rate in parts per million (`"+200ppm"`, `"-50ppm"`, `"1000 ppm"`).
pub fn parse_ppm(text: &str) -> Result<i64, String> {
    let expecting = || format!("expected a rate like \"+200ppm\" or \"-50ppm\", found {text:?}");
    let (negative, magnitude) = split_sign(text);
    let digits = magnitude
        .trim()
        .strip_suffix("ppm")
        .ok_or_else(expecting)?
        .trim();
    let value: i64 = digits.parse().map_err(|_| expecting())?;
    Ok(if negative { -value } else { value })
}

/// `-x` and `+x` into the sign and `x`.
fn split_sign(text: &str) -> (bool, &str) {
    let text = text.trim();
    match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    }
}

/// A signed duration as [`parse_signed_duration_ns`] reads it, with its sign: `"-1500us"`.
pub fn format_signed_ns(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "+" };
    format!("{sign}{}", format_ns(ns.unsigned_abs()))
}

/// A rate as [`parse_ppm`] reads it: `"+200ppm"`.
pub fn format_ppm(ppm: i64) -> String {
    format!("{ppm:+}ppm")
}

/// Parses a size (`"256M"`, `"100000K"`, `"0.5k"`, `"4096"`) into bytes, exactly.
pub fn parse_size(text: &str) -> Result<u64, String> {
    parse_scaled(text, SIZE_UNITS).map_err(|e| e.describe(text, SIZE_EXPECTING, "a size"))
}

fn is_plain_number(text: &str) -> bool {
    let text = text.trim();
    !text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// The largest unit that writes `ns` exactly, like `"1500us"` or `"2m"`; parses back to `ns`.
pub fn format_ns(ns: u64) -> String {
    format_exact(
        ns,
        &[
            ("h", 3_600_000_000_000),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
            ("ns", 1),
        ],
    )
}

/// The largest unit that writes `bytes` exactly, like `"256M"` or `"100000K"`; parses back to
/// `bytes`.
pub fn format_size(bytes: u64) -> String {
    format_exact(
        bytes,
        &[("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10), ("", 1)],
    )
}

/// A duration rounded for people, not to be parsed back: `"12.3s"`, `"3m05s"`, `"1h02m"`.
pub fn format_rounded(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..=59 => format!("{:.1}s", d.as_secs_f64()),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
    }
}

/// Bits per second as `"100Mbit"`; 0 is `"unlimited"`.
pub fn format_bandwidth(bps: u64) -> String {
    if bps == 0 {
        return "unlimited".to_owned();
    }
    format_exact(
        bps,
        &[
            ("Gbit", 1_000_000_000),
            ("Mbit", 1_000_000),
            ("kbit", 1_000),
            ("bit", 1),
        ],
    )
}

/// `units` from the largest; the last must be 1.
fn format_exact(value: u64, units: &[(&str, u64)]) -> String {
    let (unit, scale) = units
        .iter()
        .find(|&&(_, scale)| value != 0 && value.is_multiple_of(scale))
        .unwrap_or(&units[units.len() - 1]);
    format!("{}{unit}", value / scale)
}

/// Why a number with a unit did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaledError {
    Negative,
    Malformed,
    UnknownUnit,
    TooPrecise,
    TooLarge,
}

impl ScaledError {
    /// A message for `text`, which should have been `expecting`; `what` is "a duration" etc.
    pub fn describe(self, text: &str, expecting: &str, what: &str) -> String {
        match self {
            ScaledError::Negative => format!("{what} cannot be negative, found {text:?}"),
            ScaledError::Malformed | ScaledError::UnknownUnit => {
                format!("expected {expecting}, found {text:?}")
            }
            ScaledError::TooPrecise => format!("{text:?} is finer than the smallest unit"),
            ScaledError::TooLarge => format!("{text:?} is too large"),
        }
    }
}

impl fmt::Display for ScaledError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            ScaledError::Negative => "negative",
            ScaledError::Malformed => "malformed",
            ScaledError::UnknownUnit => "unknown unit",
            ScaledError::TooPrecise => "finer than the smallest unit",
            ScaledError::TooLarge => "too large",
        })
    }
}

/// Parses a decimal number and a unit from `units` (case-insensitive, spaces allowed between)
/// into an exact integer count of the smallest unit: floats would make "0.3s" one nanosecond
/// short.
pub fn parse_scaled(text: &str, units: &[(&str, u64)]) -> Result<u64, ScaledError> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(ScaledError::Negative);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim().to_lowercase();
    let scale = units
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|&(_, scale)| u128::from(scale))
        .ok_or(ScaledError::UnknownUnit)?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(ScaledError::Malformed);
    }
    let fraction = fraction.trim_end_matches('0');
    if fraction.len() > 18 {
        return Err(ScaledError::TooPrecise);
    }
    let whole: u128 = match whole {
        "" => 0,
        digits => digits.parse().map_err(|_| ScaledError::TooLarge)?,
    };
    // At most 18 digits (below 10^18) times a scale below 2^64: fits in a u128.
    let denominator =
        10u128.pow(u32::try_from(fraction.len()).map_err(|_| ScaledError::TooPrecise)?);
    let fraction_scaled = match fraction {
        "" => 0,
        digits => digits.parse::<u128>().map_err(|_| ScaledError::Malformed)? * scale,
    };
    if !fraction_scaled.is_multiple_of(denominator) {
        return Err(ScaledError::TooPrecise);
    }
    whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(fraction_scaled / denominator))
        .and_then(|total| u64::try_from(total).ok())
        .ok_or(ScaledError::TooLarge)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn signed_durations_and_rates_parse_and_format_back() {
        assert_eq!(parse_signed_duration_ns("-1.5s"), Ok(-1_500_000_000));
        assert_eq!(parse_signed_duration_ns("+250ms"), Ok(250_000_000));
        assert_eq!(parse_signed_duration_ns("2s"), Ok(2_000_000_000));
        assert!(parse_signed_duration_ns("--2s").is_err());
        assert_eq!(format_signed_ns(-1_500_000_000), "-1500ms");
        assert_eq!(parse_signed_duration_ns(&format_signed_ns(-7)), Ok(-7));
        assert_eq!(parse_ppm("+200ppm"), Ok(200));
        assert_eq!(parse_ppm("-50 ppm"), Ok(-50));
        assert!(parse_ppm("200").unwrap_err().contains("+200ppm"));
        assert!(parse_ppm("1.5ppm").is_err());
        assert_eq!(format_ppm(-50), "-50ppm");
        assert_eq!(parse_ppm(&format_ppm(200)), Ok(200));
    }

    #[test]
    fn durations_are_exact() {
        let cases: &[(&str, Result<u64, ScaledError>)] = &[
            ("5s", Ok(5_000_000_000)),
            ("100us", Ok(100_000)),
            ("100µs", Ok(100_000)),
            ("100μs", Ok(100_000)),
            ("1500us", Ok(1_500_000)),
            ("1.5ms", Ok(1_500_000)),
            ("1500500us", Ok(1_500_500_000)),
            ("0.3s", Ok(300_000_000)),
            (".5s", Ok(500_000_000)),
            ("2m", Ok(120_000_000_000)),
            ("2MIN", Ok(120_000_000_000)),
            ("1h", Ok(3_600_000_000_000)),
            ("30d", Ok(2_592_000_000_000_000)),
            ("1.5D", Ok(129_600_000_000_000)),
            ("7 ns", Ok(7)),
            (" 7ns ", Ok(7)),
            ("0ns", Ok(0)),
            ("0.000000001s", Ok(1)),
            ("1.0000000000000000000000s", Ok(1_000_000_000)),
            ("18446744073709551615ns", Ok(u64::MAX)),
            ("18446744073.709551615s", Ok(u64::MAX)),
            ("1.5ns", Err(ScaledError::TooPrecise)),
            ("0.0000000001s", Err(ScaledError::TooPrecise)),
            ("1.0000000000000000001s", Err(ScaledError::TooPrecise)),
            ("-5s", Err(ScaledError::Negative)),
            ("5", Err(ScaledError::UnknownUnit)),
            ("5 seconds", Err(ScaledError::UnknownUnit)),
            ("1e3s", Err(ScaledError::UnknownUnit)),
            ("+5s", Err(ScaledError::UnknownUnit)),
            ("", Err(ScaledError::UnknownUnit)),
            ("1.2.3s", Err(ScaledError::Malformed)),
            ("s", Err(ScaledError::Malformed)),
            (".s", Err(ScaledError::Malformed)),
            ("18446744073709551616ns", Err(ScaledError::TooLarge)),
            ("18446744073.709551616s", Err(ScaledError::TooLarge)),
            ("99999999999h", Err(ScaledError::TooLarge)),
            (
                "999999999999999999999999999999999999999999s",
                Err(ScaledError::TooLarge),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(&parse_scaled(text, DURATION_UNITS), expected, "{text}");
        }
    }

    #[test]
    fn sizes_are_exact() {
        let cases: &[(&str, Result<u64, String>)] = &[
            ("256M", Ok(256 << 20)),
            ("100000K", Ok(100_000 << 10)),
            ("1g", Ok(1 << 30)),
            ("1GiB", Ok(1 << 30)),
            ("4096", Ok(4096)),
            ("4096b", Ok(4096)),
            ("0.5k", Ok(512)),
            ("1.5M", Ok(3 << 19)),
            ("17179869183G", Ok(17_179_869_183 << 30)),
        ];
        for (text, expected) in cases {
            assert_eq!(&parse_size(text), expected, "{text}");
        }
        for (text, needle) in [
            ("12X", "expected a size"),
            ("lots", "expected a size"),
            ("", "expected a size"),
            ("-1M", "cannot be negative"),
            ("0.1k", "finer than the smallest unit"),
            ("17179869184G", "too large"),
            ("99999999999999999999999", "too large"),
        ] {
            let err = parse_size(text).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn duration_errors_say_what_to_write() {
        for (text, needle) in [
            ("10", "needs a unit: write \"10s\" or \"10ms\""),
            ("1.5", "needs a unit"),
            ("fast", "expected a duration like \"500ms\""),
            ("-1s", "cannot be negative"),
            ("1.5ns", "finer than the smallest unit"),
            ("99999999999h", "too large"),
        ] {
            let err = parse_duration_ns(text).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn formatting_picks_the_largest_exact_unit() {
        assert_eq!(format_ns(0), "0ns");
        assert_eq!(format_ns(1_500_000), "1500us");
        assert_eq!(format_ns(1_500_500_000), "1500500us");
        assert_eq!(format_ns(120_000_000_000), "2m");
        assert_eq!(format_ns(u64::MAX), "18446744073709551615ns");
        assert_eq!(format_rounded(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(format_rounded(Duration::from_secs(185)), "3m05s");
        assert_eq!(format_rounded(Duration::from_secs(3720)), "1h02m");
        assert_eq!(format_size(0), "0");
        assert_eq!(format_size(256 << 20), "256M");
        assert_eq!(format_size(100_000 << 10), "100000K");
        assert_eq!(format_size(4 << 30), "4G");
        assert_eq!(format_size(4097), "4097");
        assert_eq!(format_bandwidth(100_000_000), "100Mbit");
        assert_eq!(format_bandwidth(0), "unlimited");
    }

    #[test]
    fn formatted_values_parse_back_to_themselves() {
        let mut values: Vec<u64> = vec![0, 1, 999, 1000, 1024, 1_500_000, u64::MAX, u64::MAX - 1];
        // Powers and near-powers of every scale, and a spread of odd values.
        for shift in 0..64 {
            values.extend([1u64 << shift, (1u64 << shift) - 1, (1u64 << shift) + 1]);
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(x >> (x % 64));
        }
        for value in values {
            assert_eq!(parse_duration_ns(&format_ns(value)), Ok(value), "{value}");
            assert_eq!(parse_size(&format_size(value)), Ok(value), "{value}");
        }
    }
}
