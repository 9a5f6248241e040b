//! Which seeds a soak runs: the `--seeds` list, this machine's shard of it, and which of them
//! get the determinism spot check.

use std::collections::HashSet;
use std::fmt;

/// The most seeds one `--seeds` list may name (a soak of that many takes years of CPU time; a
/// larger list is a typo, and expanding it would only exhaust memory).
pub const MAX_SEEDS: u64 = 10_000_000;

/// The Kubernetes Indexed Job's variable: the index of this pod's completion, 0-based.
pub const JOB_COMPLETION_INDEX: &str = "JOB_COMPLETION_INDEX";

/// A `--seeds` list: `N`, `A-B` (both included) or a comma list of those, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedSet {
    text: String,
    seeds: Vec<u64>,
}

impl SeedSet {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        let mut total: u64 = 0;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!(
                    "{text:?}: an empty item in the seed list (write N, A-B or a comma list such as 1-10,20,30-35)"
                ));
            }
            let (first, last) = match part.split_once('-') {
                Some((a, b)) => (number(a, part)?, number(b, part)?),
                None => {
                    let n = number(part, part)?;
                    (n, n)
                }
            };
            if first > last {
                return Err(format!(
                    "{part:?}: the range goes backwards (write {last}-{first})"
                ));
            }
            total = total.saturating_add((last - first).saturating_add(1));
            if total > MAX_SEEDS {
                return Err(format!("{text:?}: more than {MAX_SEEDS} seeds"));
            }
            ranges.push((first, last));
        }
        let mut seen = HashSet::new();
        let mut seeds = Vec::new();
        for (first, last) in ranges {
            for seed in first..=last {
                if !seen.insert(seed) {
                    return Err(format!("{text:?}: seed {seed} is listed twice"));
                }
                seeds.push(seed);
            }
        }
        Ok(SeedSet {
            text: text.to_string(),
            seeds,
        })
    }

    pub fn seeds(&self) -> &[u64] {
        &self.seeds
    }
}

impl fmt::Display for SeedSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn number(text: &str, part: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{part:?} is not a seed: expected a number, A-B or a comma list such as 1-10,20,30-35"
        ));
    }
    text.parse()
        .map_err(|_| format!("{text}: too large for a seed (at most {})", u64::MAX))
}

/// `--shard I/N`: the seeds at positions `p` of the list with `p % N == I` (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?}: expected I/N, a shard index from 0 to N-1 and a count");
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let index: u64 = i.trim().parse().map_err(|_| bad())?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        Shard::new(index, count).map_err(|e| format!("{text:?}: {e}"))
    }

    fn new(index: u64, count: u64) -> Result<Self, String> {
        if count == 0 {
            return Err("there must be at least one shard".into());
        }
        if index >= count {
            return Err(format!(
                "shard index {index} is out of range: shards are numbered 0 to {}",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }

    /// This shard's seeds, in list order.
    pub fn select(&self, seeds: &[u64]) -> Vec<u64> {
        seeds
            .iter()
            .enumerate()
            .filter(|(position, _)| *position as u64 % self.count == self.index)
            .map(|(_, &seed)| seed)
            .collect()
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The shard to run: `--shard I/N`, or with `--shards N` the index from
/// `JOB_COMPLETION_INDEX` (`job_index`, the variable's value if set), or none.
pub fn resolve_shard(
    shard: Option<Shard>,
    shards: Option<u64>,
    job_index: Option<&str>,
) -> Result<Option<Shard>, String> {
    match (shard, shards) {
        (Some(_), Some(_)) => Err("give --shard I/N or --shards N, not both".into()),
        (Some(shard), None) => Ok(Some(shard)),
        (None, None) => Ok(None),
        (None, Some(count)) => {
            let text = job_index.ok_or_else(|| {
                format!(
                    "--shards {count} takes this shard's index from {JOB_COMPLETION_INDEX} \
                     (set by a Kubernetes Indexed Job), which is not set: set it, or give --shard I/{count}"
                )
            })?;
            let index: u64 = text.trim().parse().map_err(|_| {
                format!("{JOB_COMPLETION_INDEX}={text:?} is not a shard index (a number from 0)")
            })?;
            Shard::new(index, count)
                .map(Some)
                .map_err(|e| format!("{JOB_COMPLETION_INDEX}={text}: {e}"))
        }
    }
}

/// `--determinism-check PERCENT`: 0 to 100, to a hundredth of a percent; returned in
/// hundredths of a percent (basis points).
pub fn parse_percent(text: &str) -> Result<u32, String> {
    let number = text.trim().trim_end_matches('%');
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a percentage from 0 to 100, such as 5 or 0.5"))?;
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("{text:?}: a percentage must be from 0 to 100"));
    }
    Ok((value * 100.0).round() as u32)
}

/// Whether `seed` gets the determinism spot check at `basis_points` (hundredths of a percent).
/// A function of the seed alone, so a seed is checked in every soak and every shard that runs
/// it: splitmix64's finalizer spreads neighbouring seeds, and the low digits of the result in
/// base 10 000 pick about `basis_points` of every 10 000 seeds.
pub fn spot_checked(seed: u64, basis_points: u32) -> bool {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    z % 10_000 < u64::from(basis_points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_lists_expand_in_order() {
        assert_eq!(SeedSet::parse("7").unwrap().seeds(), [7]);
        assert_eq!(SeedSet::parse("1-3").unwrap().seeds(), [1, 2, 3]);
        assert_eq!(
            SeedSet::parse("1-3,20, 30-32").unwrap().seeds(),
            [1, 2, 3, 20, 30, 31, 32]
        );
        assert_eq!(SeedSet::parse("5,1").unwrap().seeds(), [5, 1]);
        assert_eq!(SeedSet::parse("0-0").unwrap().seeds(), [0]);
        let max = u64::MAX.to_string();
        assert_eq!(SeedSet::parse(&max).unwrap().seeds(), [u64::MAX]);
        assert_eq!(SeedSet::parse("1-1000").unwrap().seeds().len(), 1000);
        assert_eq!(SeedSet::parse("1-3,20").unwrap().to_string(), "1-3,20");
    }

    #[test]
    fn bad_seed_lists_say_why() {
        for (text, needle) in [
            ("", "empty item"),
            ("1,,2", "empty item"),
            ("1,", "empty item"),
            ("x", "is not a seed"),
            ("-5", "is not a seed"),
            ("1-", "is not a seed"),
            ("1-2-3", "is not a seed"),
            ("+5", "is not a seed"),
            ("1.5", "is not a seed"),
            ("10-1", "goes backwards (write 1-10)"),
            ("99999999999999999999", "too large"),
            ("0-18446744073709551615", "more than 10000000 seeds"),
            ("1-6000000,7000000-12000000", "more than"),
            ("1-10,5", "seed 5 is listed twice"),
        ] {
            let err = SeedSet::parse(text).expect_err(text);
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn shards_take_every_nth_position() {
        let seeds: Vec<u64> = (1..=10).collect();
        let shard = |i, n| Shard::new(i, n).unwrap().select(&seeds);
        assert_eq!(shard(0, 3), [1, 4, 7, 10]);
        assert_eq!(shard(1, 3), [2, 5, 8]);
        assert_eq!(shard(2, 3), [3, 6, 9]);
        assert_eq!(shard(0, 1), seeds);
        assert_eq!(shard(11, 12), Vec::<u64>::new());
        // Positions, not seed numbers.
        assert_eq!(Shard::new(0, 2).unwrap().select(&[5, 6, 100]), [5, 100]);
        // Every seed in exactly one shard.
        let mut all: Vec<u64> = (0..4).flat_map(|i| shard(i, 4)).collect();
        all.sort();
        assert_eq!(all, seeds);
        assert_eq!(Shard::parse("2/4").unwrap(), Shard::new(2, 4).unwrap());
        assert_eq!(Shard::parse("2/4").unwrap().to_string(), "2/4");
        for bad in ["4/4", "1/0", "1", "a/4", "-1/4", "1/4/5"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_job_completion_index_picks_the_shard_with_shards() {
        let shard = |i, n| Some(Shard::new(i, n).unwrap());
        assert_eq!(resolve_shard(None, Some(4), Some("3")), Ok(shard(3, 4)));
        assert_eq!(resolve_shard(None, Some(4), Some("0")), Ok(shard(0, 4)));
        assert_eq!(resolve_shard(shard(1, 2), None, Some("3")), Ok(shard(1, 2)));
        // Without --shards the variable alone changes nothing.
        assert_eq!(resolve_shard(None, None, Some("3")), Ok(None));
        for (shards, index, needle) in [
            (
                4,
                None,
                "JOB_COMPLETION_INDEX (set by a Kubernetes Indexed Job), which is not set",
            ),
            (
                4,
                Some("4"),
                "JOB_COMPLETION_INDEX=4: shard index 4 is out of range",
            ),
            (4, Some("x"), "is not a shard index"),
            (0, Some("0"), "at least one shard"),
        ] {
            let err = resolve_shard(None, Some(shards), index).expect_err(needle);
            assert!(err.contains(needle), "{err}");
        }
        assert!(resolve_shard(shard(0, 2), Some(2), None).is_err());
    }

    #[test]
    fn the_spot_check_is_a_function_of_the_seed_near_its_rate() {
        let five = parse_percent("5").unwrap();
        assert_eq!(five, 500);
        let checked: Vec<u64> = (1..=10_000).filter(|&s| spot_checked(s, five)).collect();
        let again: Vec<u64> = (1..=10_000).filter(|&s| spot_checked(s, five)).collect();
        assert_eq!(checked, again);
        assert!(
            (430..=570).contains(&checked.len()),
            "{} of 10000 checked at 5%",
            checked.len()
        );
        // Not a block of neighbours: spread over the range.
        assert!(checked.first() < Some(&500) && checked.last() > Some(&9500));
        assert!((1..=1000).all(|s| !spot_checked(s, 0)));
        assert!((1..=1000).all(|s| spot_checked(s, 10_000)));
        // A higher rate checks a superset.
        assert!(checked.iter().all(|&s| spot_checked(s, 1000)));
        assert_eq!(parse_percent("0.5%"), Ok(50));
        assert_eq!(parse_percent("100"), Ok(10_000));
        for bad in ["101", "-1", "lots", "NaN"] {
            assert!(parse_percent(bad).is_err(), "{bad}");
        }
    }
}
