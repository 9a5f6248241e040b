//! Power loss: which unflushed writes reach the media.
//!
//! At a crash the volatile cache is gone. Each completed but unflushed write, and each write still
//! in flight (it may or may not have reached the media), is a candidate; the policy decides how
//! many of its sectors survive, and survivors are applied in log order onto the durable overlay.
//! Flushed data always survives.

use std::fmt;
use std::str::FromStr;

use rand_core::RngCore;
use thiserror::Error;

/// What survives a crash of the unflushed writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CrashPolicy {
    /// Every completed unflushed write survives (the drive wrote its cache back on power loss;
    /// only the guest's own page cache is lost). Writes in flight are lost.
    KeepAll,
    /// Nothing unflushed survives: the strictest reading of the FLUSH contract.
    LoseAll,
    /// Each unflushed or in-flight write independently survives or not, 50/50, so a later
    /// write can survive an earlier lost one: what a reordering drive cache may do.
    #[default]
    Subset,
    /// Like [`CrashPolicy::Subset`], and a surviving write that was in flight keeps only a prefix
    /// of its sectors (possibly none or all): a torn write.
    Torn,
}

impl CrashPolicy {
    /// Every policy, in the order the names are listed.
    pub const ALL: [CrashPolicy; 4] = [
        CrashPolicy::KeepAll,
        CrashPolicy::LoseAll,
        CrashPolicy::Subset,
        CrashPolicy::Torn,
    ];

    /// The name used on the command line and in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            CrashPolicy::KeepAll => "keep-all",
            CrashPolicy::LoseAll => "lose-all",
            CrashPolicy::Subset => "subset",
            CrashPolicy::Torn => "torn",
        }
    }

    /// How many of the `sectors` sectors of one candidate write reach the media. Draws from
    /// `rng` only for the random policies: one `u32` per candidate, plus one `u64` for the tear
    /// point of a surviving in-flight write under [`CrashPolicy::Torn`].
    pub(crate) fn surviving_sectors(
        self,
        sectors: u64,
        in_flight: bool,
        rng: &mut impl RngCore,
    ) -> u64 {
        match self {
            CrashPolicy::KeepAll if in_flight => 0,
            CrashPolicy::KeepAll => sectors,
            CrashPolicy::LoseAll => 0,
            CrashPolicy::Subset => all_or_nothing(sectors, rng),
            CrashPolicy::Torn => match all_or_nothing(sectors, rng) {
                0 => 0,
                _ if in_flight => tear_point(sectors, rng),
                kept => kept,
            },
        }
    }
}

/// `sectors` or 0 with equal chance.
fn all_or_nothing(sectors: u64, rng: &mut impl RngCore) -> u64 {
    if rng.next_u32() & 1 == 1 {
        sectors
    } else {
        0
    }
}

/// A uniform prefix length in `0..=sectors`. The modulo bias is below `2^-49` for any request
/// the disk accepts, which no test could see.
fn tear_point(sectors: u64, rng: &mut impl RngCore) -> u64 {
    match sectors.checked_add(1) {
        Some(choices) => rng.next_u64() % choices,
        None => rng.next_u64(),
    }
}

impl fmt::Display for CrashPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A crash policy name that is not one of [`CrashPolicy::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("unknown crash policy {given:?}: expected keep-all, lose-all, subset or torn")]
pub struct UnknownCrashPolicy {
    /// What was given.
    pub given: String,
}

impl FromStr for CrashPolicy {
    type Err = UnknownCrashPolicy;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        CrashPolicy::ALL
            .into_iter()
            .find(|policy| policy.name() == name)
            .ok_or_else(|| UnknownCrashPolicy {
                given: name.to_owned(),
            })
    }
}

/// What a crash did, for the run's report and trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CrashOutcome {
    /// The policy that decided.
    pub policy: CrashPolicy,
    /// Requests of every kind that were in flight and were dropped.
    pub dropped_requests: u64,
    /// Completed writes no FLUSH had covered.
    pub unflushed_writes: u64,
    /// Well-formed writes in flight (candidates, unless they hit a write fault).
    pub in_flight_writes: u64,
    /// Candidate writes of which nothing survived.
    pub writes_lost: u64,
    /// Sectors that did not survive: those of lost writes and the torn-off tails.
    pub sectors_lost: u64,
    /// Surviving writes of which only a strict, non-empty prefix survived.
    pub writes_torn: u64,
}

impl CrashOutcome {
    /// An outcome before any candidate is decided.
    pub(crate) fn new(policy: CrashPolicy, dropped_requests: u64) -> Self {
        Self {
            policy,
            dropped_requests,
            unflushed_writes: 0,
            in_flight_writes: 0,
            writes_lost: 0,
            sectors_lost: 0,
            writes_torn: 0,
        }
    }

    /// Counts one candidate of `sectors` sectors of which `kept` survived.
    pub(crate) fn record(&mut self, in_flight: bool, sectors: u64, kept: u64) {
        if in_flight {
            self.in_flight_writes += 1;
        } else {
            self.unflushed_writes += 1;
        }
        if kept == 0 {
            self.writes_lost += 1;
        } else if kept < sectors {
            self.writes_torn += 1;
        }
        self.sectors_lost = self
            .sectors_lost
            .saturating_add(sectors.saturating_sub(kept));
    }
}

impl fmt::Display for CrashOutcome {
    /// One line: `crash policy=subset unflushed=12 in-flight=2 lost=5 writes (40 sectors)
    /// torn=0 dropped=3 requests`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "crash policy={} unflushed={} in-flight={} lost={} writes ({} sectors) torn={} \
             dropped={} requests",
            self.policy,
            self.unflushed_writes,
            self.in_flight_writes,
            self.writes_lost,
            self.sectors_lost,
            self.writes_torn,
            self.dropped_requests,
        )
    }
}
