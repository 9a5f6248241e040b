//! The guests' assertions across a soak (docs/soak.md, "Assertions"): each seed's are read
//! from the console lines its `simvm run` prints (they stream past the supervisor anyway, for
//! passing seeds too, whose files are deleted), and the soak reports every assertion that
//! failed in some seed and every `sometimes` and `reachable` that no seed exercised.

use std::collections::BTreeMap;

use simvm_vmm::assertions::{Assertions, Kind};

use super::child::LineSplitter;
use super::report::SeedResult;

/// A line longer than this is cut: console lines are at most 4096 bytes plus the annotation.
const LONGEST_LINE: usize = 8192;

/// Collects one seed's assertions from its stdout, fed in chunks as they arrive.
#[derive(Debug)]
pub struct SeedAssertions {
    splitter: LineSplitter,
    assertions: Assertions,
}

impl Default for SeedAssertions {
    fn default() -> Self {
        SeedAssertions {
            splitter: LineSplitter::new(LONGEST_LINE),
            assertions: Assertions::default(),
        }
    }
}

impl SeedAssertions {
    pub fn push(&mut self, bytes: &[u8]) {
        let assertions = &mut self.assertions;
        self.splitter
            .push(bytes, &mut |line| assertions.note_printed(line));
    }

    /// The stream ended: a last line without a newline counts.
    pub fn finish(mut self) -> Assertions {
        let assertions = &mut self.assertions;
        self.splitter
            .finish(&mut |line| assertions.note_printed(line));
        self.assertions
    }
}

/// One assertion over the soak's seeds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Across {
    /// Seeds that printed it at all.
    pub seeds: u64,
    /// Seeds in which it was satisfied (a `sometimes` true, a `reachable` reached).
    pub satisfied: u64,
    /// Seeds it failed (an `always` false, an `unreachable` reached), in order.
    pub failed: Vec<u64>,
}

/// Every assertion of a soak.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    by_key: BTreeMap<(Kind, String), Across>,
}

/// Seeds listed by name for a failed assertion; the rest are counted.
const SEEDS_LISTED: usize = 10;

impl Coverage {
    pub fn of(results: &[SeedResult]) -> Self {
        let mut by_key: BTreeMap<(Kind, String), Across> = BTreeMap::new();
        for result in results {
            for a in result.assertions.iter() {
                let across = by_key.entry((a.kind, a.name.clone())).or_default();
                across.seeds += 1;
                if a.failed() {
                    across.failed.push(result.seed);
                } else if matches!(a.kind, Kind::Sometimes | Kind::Reachable) && a.satisfied() {
                    across.satisfied += 1;
                }
            }
        }
        Self { by_key }
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// `sometimes` true in no seed, `reachable` reached in none.
    pub fn never_exercised(&self) -> impl Iterator<Item = (Kind, &str, &Across)> {
        self.by_key
            .iter()
            .filter(|((kind, _), across)| {
                matches!(kind, Kind::Sometimes | Kind::Reachable) && across.satisfied == 0
            })
            .map(|((kind, name), across)| (*kind, name.as_str(), across))
    }

    /// Assertions that failed in some seed.
    pub fn failed(&self) -> impl Iterator<Item = (Kind, &str, &Across)> {
        self.by_key
            .iter()
            .filter(|(_, across)| !across.failed.is_empty())
            .map(|((kind, name), across)| (*kind, name.as_str(), across))
    }

    /// The block of the soak's summary: a count, then one line per failed and per never
    /// exercised assertion, over `count` seeds. Empty when no seed printed an assertion.
    pub fn text(&self, count: usize) -> String {
        if self.is_empty() {
            return String::new();
        }
        let failed = self.failed().count();
        let never = self.never_exercised().count();
        let mut out = format!(
            "assertions: {} seen in {}, {failed} failed, {never} never exercised\n",
            self.by_key.len(),
            seeds(count as u64)
        );
        for (kind, name, across) in self.failed() {
            let mut listed: Vec<String> = across
                .failed
                .iter()
                .take(SEEDS_LISTED)
                .map(u64::to_string)
                .collect();
            if across.failed.len() > SEEDS_LISTED {
                listed.push(format!("... {} more", across.failed.len() - SEEDS_LISTED));
            }
            out.push_str(&format!(
                "    FAILED {kind} \"{name}\": in {} of {} that printed it ({} {})\n",
                across.failed.len(),
                seeds(across.seeds),
                if across.failed.len() == 1 {
                    "seed"
                } else {
                    "seeds"
                },
                listed.join(", ")
            ));
        }
        for (kind, name, across) in self.never_exercised() {
            let what = match kind {
                Kind::Sometimes => "never true",
                _ => "never reached",
            };
            out.push_str(&format!(
                "    NEVER  {kind} \"{name}\": {what} (printed by {})\n",
                seeds(across.seeds)
            ));
        }
        out
    }
}

/// `1 seed`, `2 seeds`.
fn seeds(n: u64) -> String {
    match n {
        1 => "1 seed".into(),
        n => format!("{n} seeds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::child::Verdict;
    use std::time::Duration;

    fn seed(seed: u64, lines: &[&str]) -> SeedResult {
        let mut collect = SeedAssertions::default();
        let text: String = lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{:>9} m1   00:00:00.{:06} > {l}\n", i + 1, i + 1))
            .collect();
        // In awkward chunks, as a pipe delivers them, the last line unterminated.
        for chunk in text.trim_end().as_bytes().chunks(7) {
            collect.push(chunk);
        }
        SeedResult {
            seed,
            verdict: Verdict::Passed,
            checked: false,
            wall: Duration::from_secs(1),
            reproduce: String::new(),
            kept: None,
            tail: Vec::new(),
            assertions: collect.finish(),
        }
    }

    #[test]
    fn a_soak_lists_what_no_seed_exercised_and_what_failed() {
        let results = [
            seed(
                1,
                &[
                    "simvm-assert: always positive pass",
                    "simvm-assert: sometimes seen-two fail",
                    "simvm-assert: sometimes leader fail",
                    "simvm-assert: declare reachable later",
                    "simvm-assert: reachable here",
                ],
            ),
            seed(
                2,
                &[
                    "simvm-assert: always positive fail",
                    "simvm-assert: sometimes seen-two fail",
                    "simvm-assert: sometimes leader pass",
                    "simvm-assert: declare reachable later",
                ],
            ),
            seed(3, &["no assertions here"]),
        ];
        assert_eq!(results[2].assertions.len(), 0);
        assert_eq!(
            results[0]
                .assertions
                .get(Kind::Reachable, "here")
                .map(|a| a.reached),
            Some(1),
            "the unterminated last line counts"
        );
        let coverage = Coverage::of(&results);
        assert_eq!(
            coverage
                .never_exercised()
                .map(|(k, n, _)| format!("{k} {n}"))
                .collect::<Vec<_>>(),
            ["sometimes seen-two", "reachable later"]
        );
        assert_eq!(
            coverage.text(3),
            "assertions: 5 seen in 3 seeds, 1 failed, 2 never exercised\n\
             \x20   FAILED always \"positive\": in 1 of 2 seeds that printed it (seed 2)\n\
             \x20   NEVER  sometimes \"seen-two\": never true (printed by 2 seeds)\n\
             \x20   NEVER  reachable \"later\": never reached (printed by 2 seeds)\n"
        );
        assert_eq!(Coverage::of(&results[2..]).text(1), "");
    }

    #[test]
    fn many_failing_seeds_are_counted_not_listed() {
        let results: Vec<SeedResult> = (1..=12)
            .map(|s| seed(s, &["simvm-assert: unreachable bad"]))
            .collect();
        let text = Coverage::of(&results).text(12);
        assert!(
            text.contains(
                "FAILED unreachable \"bad\": in 12 of 12 seeds that printed it (seeds 1, 2, 3, 4, \
                 5, 6, 7, 8, 9, 10, ... 2 more)"
            ),
            "{text}"
        );
    }
}
