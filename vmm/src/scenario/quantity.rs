//! Values with units (durations, probabilities, bandwidths, sizes), written as numbers,
//! strings with a unit, or both, as scenario files allow.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::units::{self, parse_scaled, BANDWIDTH_UNITS};

use super::*;

/// A value written as a number, a string with a unit, or both, as scenario files allow.
pub(super) trait Quantity: Sized {
    /// What the file should have said, for errors.
    const EXPECTING: &'static str;

    fn from_text(text: &str) -> Result<Self, String>;

    fn from_integer(value: i64) -> Result<Self, String> {
        Err(format!(
            "expected {}, found the number {value}",
            Self::EXPECTING
        ))
    }

    fn from_float(value: f64) -> Result<Self, String> {
        Err(format!(
            "expected {}, found the number {value}",
            Self::EXPECTING
        ))
    }
}

pub(super) struct QuantityVisitor<T>(PhantomData<T>);

impl<T: Quantity> Visitor<'_> for QuantityVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        T::from_text(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::from_integer(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        i64::try_from(v)
            .map_err(|_| E::custom(format!("{v} is too large")))
            .and_then(|v| self.visit_i64(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        T::from_float(v).map_err(E::custom)
    }
}

macro_rules! deserialize_quantity {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(QuantityVisitor(PhantomData))
            }
        }
    )*};
}

deserialize_quantity!(Nanos, Probability, Bandwidth, ByteSize, Expect);

/// A virtual duration in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub(super) struct Nanos(pub(super) u64);

impl Quantity for Nanos {
    const EXPECTING: &'static str = units::DURATION_EXPECTING;

    fn from_text(text: &str) -> Result<Self, String> {
        units::parse_duration_ns(text).map(Nanos)
    }

    fn from_integer(value: i64) -> Result<Self, String> {
        match value {
            0 => Ok(Nanos(0)),
            _ => Err(format!(
                "a duration needs a unit: write \"{value}s\" or \"{value}ms\""
            )),
        }
    }
}

/// A probability in `[0, 1]` in thousandths, rounded (the guest kernel's `simvm_chaos=`).
// A whole number in [0, 1000] (`as` turns NaN into 0): nothing to truncate.
#[allow(clippy::cast_possible_truncation)]
pub fn per_mille(probability: f64) -> u32 {
    (probability.clamp(0.0, 1.0) * 1000.0).round() as u32
}

/// Thousandths as the percentage [`per_mille`] reads back: `"2.5%"`.
pub fn format_per_mille(per_mille: u32) -> String {
    format!("{}%", f64::from(per_mille) / 10.0)
}

/// A probability in `[0, 1]`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Probability(pub(super) f64);

impl Quantity for Probability {
    const EXPECTING: &'static str = "a probability like 0.01 or \"1%\"";

    fn from_text(text: &str) -> Result<Self, String> {
        let percent = text
            .trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
            .ok_or_else(|| format!("expected {}, found {text:?}", Self::EXPECTING))?;
        Self::from_float(percent / 100.0)
    }

    fn from_integer(value: i64) -> Result<Self, String> {
        // Exact for every integer that passes the range check.
        Self::from_float(value as f64)
    }

    fn from_float(value: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&value) {
            Ok(Probability(value))
        } else {
            Err(format!(
                "a probability must be between 0 and 1 (or \"0%\" and \"100%\"), found {value}"
            ))
        }
    }
}

/// Bits per second; 0 is unlimited.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bandwidth(pub(super) u64);

impl Quantity for Bandwidth {
    const EXPECTING: &'static str =
        "a bandwidth like \"100Mbit\" (units bit, kbit, Mbit, Gbit per second) or \"unlimited\"";

    fn from_text(text: &str) -> Result<Self, String> {
        if text.trim() == "unlimited" {
            return Ok(Bandwidth(0));
        }
        match parse_scaled(text, BANDWIDTH_UNITS) {
            Ok(0) => Err("a bandwidth of 0 carries nothing: use \"unlimited\" for no limit or `up = false` for a dead link".to_owned()),
            Ok(bps) => Ok(Bandwidth(bps)),
            Err(e) => Err(e.describe(text, Self::EXPECTING, "a bandwidth")),
        }
    }
}

/// A memory size in bytes.
#[derive(Clone, Copy, Debug)]
pub(super) struct ByteSize(pub(super) u64);

impl Quantity for ByteSize {
    const EXPECTING: &'static str = units::SIZE_EXPECTING;

    fn from_text(text: &str) -> Result<Self, String> {
        units::parse_size(text).map(ByteSize)
    }

    fn from_integer(value: i64) -> Result<Self, String> {
        u64::try_from(value)
            .map(ByteSize)
            .map_err(|_| "a size cannot be negative".to_owned())
    }
}

impl Quantity for Expect {
    const EXPECTING: &'static str = "an exit status (0 to 255), \"running\" or \"any\"";

    fn from_text(text: &str) -> Result<Self, String> {
        match text {
            "running" => Ok(Expect::Running),
            "any" => Ok(Expect::Any),
            _ => Err(format!("expected {}, found {text:?}", Self::EXPECTING)),
        }
    }

    fn from_integer(value: i64) -> Result<Self, String> {
        u8::try_from(value)
            .map(Expect::Exit)
            .map_err(|_| format!("expected {}, found {value}", Self::EXPECTING))
    }
}

/// The guest receives its argument list NUL-separated.
pub(super) const NUL_IN_COMMAND: &str =
    "the command contains a NUL character, which no argument can hold";

/// A command: a shell line (run with `sh -c`) or an argument list.
#[derive(Clone, Debug)]
pub(super) struct Command(pub(super) Vec<String>);

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CommandVisitor)
    }
}

pub(super) struct CommandVisitor;

impl<'de> Visitor<'de> for CommandVisitor {
    type Value = Command;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a shell command line or a list of arguments, like [\"httpd\", \"-f\"]")
    }

    fn visit_str<E: de::Error>(self, line: &str) -> Result<Command, E> {
        if line.trim().is_empty() {
            return Err(E::custom("the command is empty"));
        }
        if line.contains('\0') {
            return Err(E::custom(NUL_IN_COMMAND));
        }
        Ok(Command(vec!["sh".into(), "-c".into(), line.into()]))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Command, A::Error> {
        let mut argv = Vec::new();
        while let Some(arg) = seq.next_element::<String>()? {
            argv.push(arg);
        }
        if argv.iter().any(|arg| arg.contains('\0')) {
            return Err(de::Error::custom(NUL_IN_COMMAND));
        }
        match argv.first() {
            Some(program) if !program.is_empty() => Ok(Command(argv)),
            _ => Err(de::Error::custom(
                "the command needs a program as its first element",
            )),
        }
    }
}
