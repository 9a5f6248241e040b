//! What a soak says at its end: the failures with their reproduce lines, the closing
//! `N passed, N failed` line, and the JUnit file.

use std::path::PathBuf;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use simvm_vmm::assertions::Assertions;
use simvm_vmm::units::format_rounded;

use super::assertions::Coverage;
use super::child::Verdict;

/// One finished seed.
#[derive(Clone, Debug)]
pub struct SeedResult {
    pub seed: u64,
    pub verdict: Verdict,
    /// Ran with the determinism spot check.
    pub checked: bool,
    pub wall: Duration,
    /// The command that reproduces it.
    pub reproduce: String,
    /// Where its outputs were kept (failures only).
    pub kept: Option<PathBuf>,
    /// The last lines it printed, for the JUnit failure text.
    pub tail: Vec<String>,
    /// What its guests asserted (`simvm-assert`), read from the console lines it printed.
    pub assertions: Assertions,
}

/// The counts so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

impl Tally {
    pub fn of(results: &[SeedResult]) -> Self {
        let passed = results.iter().filter(|r| r.verdict.passed()).count() as u64;
        Tally {
            passed,
            failed: results.len() as u64 - passed,
        }
    }

    pub fn done(&self) -> u64 {
        self.passed + self.failed
    }

    /// The closing line, alone on its line: `N passed, N failed`.
    pub fn line(&self) -> String {
        format!("{} passed, {} failed", self.passed, self.failed)
    }
}

/// How the soak went, for the summary.
pub struct Summary<'a> {
    pub results: &'a [SeedResult],
    /// Seeds this soak (this shard) was to run.
    pub planned: usize,
    pub wall: Duration,
    /// Set when a signal stopped the soak: its name.
    pub interrupted: Option<&'a str>,
}

impl Summary<'_> {
    /// The report printed on stdout at the end: one block per failed seed, then the counts.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for result in self.results.iter().filter(|r| !r.verdict.passed()) {
            out.push_str(&format!(
                "{} seed {}: {}\n    reproduce: {}\n",
                result.verdict.label(),
                result.seed,
                result.verdict.reason(),
                result.reproduce
            ));
            if let Some(dir) = &result.kept {
                out.push_str(&format!("    output:    {}\n", dir.display()));
            }
        }
        out.push_str(&Coverage::of(self.results).text(self.results.len()));
        let tally = Tally::of(self.results);
        let checked = self.results.iter().filter(|r| r.checked).count();
        let simvm = self
            .results
            .iter()
            .filter(|r| r.verdict.simvm_failure())
            .count();
        out.push_str(&format!(
            "soak: {} of {} seeds in {} ({}), {} determinism-checked, {} simvm failures\n",
            tally.done(),
            self.planned,
            format_rounded(self.wall),
            per_hour(tally.done(), self.wall),
            checked,
            simvm
        ));
        if let Some(signal) = self.interrupted {
            out.push_str(&format!(
                "soak: stopped by {signal}: {} seeds not run or not finished\n",
                self.planned as u64 - tally.done()
            ));
        }
        out.push_str(&tally.line());
        out.push('\n');
        out
    }
}

/// The JUnit report: one test case per finished seed.
pub fn junit(suite_name: &str, results: &[SeedResult], wall: Duration) -> Report {
    let mut suite = TestSuite::new(suite_name);
    suite.set_time(wall);
    for result in results {
        let status = match &result.verdict {
            Verdict::Passed => TestCaseStatus::success(),
            verdict => {
                // A simvm failure is an error of the harness, not a failure of the system
                // under test.
                let kind = if verdict.simvm_failure() {
                    NonSuccessKind::Error
                } else {
                    NonSuccessKind::Failure
                };
                let mut status = TestCaseStatus::non_success(kind);
                status.set_message(verdict.reason());
                status.set_type(verdict.label());
                let mut text = format!("reproduce: {}\n", result.reproduce);
                if let Some(dir) = &result.kept {
                    text.push_str(&format!("output: {}\n", dir.display()));
                }
                if !result.tail.is_empty() {
                    text.push_str("\nlast lines:\n");
                    for line in &result.tail {
                        text.push_str(line);
                        text.push('\n');
                    }
                }
                status.set_description(text);
                status
            }
        };
        let mut case = TestCase::new(format!("seed {}", result.seed), status);
        case.set_classname(suite_name);
        case.set_time(result.wall);
        if result.checked {
            case.add_property(("determinism-check", "true"));
        }
        suite.add_test_case(case);
    }
    // The assertions no seed exercised, as properties; the whole assertion block as output.
    let coverage = Coverage::of(results);
    for (kind, name, _) in coverage.never_exercised() {
        suite.add_property(("never-exercised", format!("{kind}:{name}").as_str()));
    }
    for (kind, name, _) in coverage.failed() {
        suite.add_property(("assertion-failed", format!("{kind}:{name}").as_str()));
    }
    if !coverage.is_empty() {
        suite.set_system_out(coverage.text(results.len()));
    }
    let mut report = Report::new("simvm soak");
    report.set_time(wall);
    report.add_test_suite(suite);
    report
}

/// Seeds per hour of wall time.
pub fn per_hour(done: u64, wall: Duration) -> String {
    if done == 0 || wall.is_zero() {
        return "- seeds/hour".into();
    }
    format!(
        "{:.0} seeds/hour",
        done as f64 * 3600.0 / wall.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(seed: u64, verdict: Verdict) -> SeedResult {
        SeedResult {
            seed,
            checked: seed == 3,
            wall: Duration::from_millis(1500),
            reproduce: format!("simvm run t.toml --seed {seed}"),
            kept: (!verdict.passed()).then(|| PathBuf::from(format!("out/seed-{seed}"))),
            tail: vec!["1 m1 00:00:00.000001 > x=1".into()],
            assertions: Assertions::default(),
            verdict,
        }
    }

    fn results() -> Vec<SeedResult> {
        vec![
            result(1, Verdict::Passed),
            result(
                2,
                Verdict::Failed {
                    reason: "m1=exit(1)".into(),
                },
            ),
            result(3, Verdict::Passed),
            result(
                4,
                Verdict::Nondeterministic {
                    verdict: "NOT deterministic: digests a and b differ, first at step 9".into(),
                },
            ),
            result(
                5,
                Verdict::TimedOut {
                    after: Duration::from_secs(3600),
                },
            ),
        ]
    }

    #[test]
    fn the_summary_lists_failures_and_ends_with_the_counts() {
        let results = results();
        let text = Summary {
            results: &results,
            planned: 6,
            wall: Duration::from_secs(90),
            interrupted: Some("SIGINT"),
        }
        .text();
        assert_eq!(
            text,
            "FAIL seed 2: m1=exit(1)\n    reproduce: simvm run t.toml --seed 2\n    output:    out/seed-2\n\
             NONDETERMINISTIC seed 4: simvm failure: NOT deterministic: digests a and b differ, first at step 9\n    \
             reproduce: simvm run t.toml --seed 4\n    output:    out/seed-4\n\
             TIMEOUT seed 5: timed out after 1h00m (killed)\n    reproduce: simvm run t.toml --seed 5\n    output:    out/seed-5\n\
             soak: 5 of 6 seeds in 1m30s (200 seeds/hour), 1 determinism-checked, 1 simvm failures\n\
             soak: stopped by SIGINT: 1 seeds not run or not finished\n\
             2 passed, 3 failed\n"
        );
        assert_eq!(Tally::of(&[]).line(), "0 passed, 0 failed");
    }

    #[test]
    fn junit_has_a_case_per_seed_with_the_reproduce_line_in_failures() {
        let xml = junit("t.toml", &results(), Duration::from_secs(90))
            .to_string()
            .unwrap();
        assert_eq!(xml.matches("<testcase ").count(), 5, "{xml}");
        assert!(
            xml.contains(
                r#"<testsuite name="t.toml" tests="5" skipped="0" errors="1" failures="2""#
            ),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<testcase name="seed 2" classname="t.toml" time="1.500">"#),
            "{xml}"
        );
        assert!(
            xml.contains(
                r#"<failure message="m1=exit(1)" type="FAIL">reproduce: simvm run t.toml --seed 2"#
            ),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<error message="simvm failure: NOT deterministic"#),
            "{xml}"
        );
        assert!(
            xml.contains("last lines:\n1 m1 00:00:00.000001 &gt; x=1"),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<property name="determinism-check" value="true"/>"#),
            "{xml}"
        );
    }

    #[test]
    fn junit_names_the_assertions_no_seed_exercised() {
        let mut results = results();
        results[0]
            .assertions
            .note(7, "m1", 1_000, "simvm-assert: sometimes seen-two fail");
        results[1]
            .assertions
            .note(8, "m1", 2_000, "simvm-assert: unreachable bad");
        let xml = junit("t.toml", &results, Duration::from_secs(90))
            .to_string()
            .unwrap();
        for needle in [
            r#"<property name="never-exercised" value="sometimes:seen-two"/>"#,
            r#"<property name="assertion-failed" value="unreachable:bad"/>"#,
            "<system-out>assertions: 2 seen in 5 seeds, 1 failed, 1 never exercised\n",
        ] {
            assert!(xml.contains(needle), "{needle}\n{xml}");
        }
        let text = Summary {
            results: &results,
            planned: 5,
            wall: Duration::from_secs(1),
            interrupted: None,
        }
        .text();
        assert!(
            text.contains("    NEVER  sometimes \"seen-two\": never true (printed by 1 seed)\n"),
            "{text}"
        );
        // No assertions, no block.
        let plain = junit("t.toml", &self::results(), Duration::from_secs(1))
            .to_string()
            .unwrap();
        assert!(!plain.contains("never-exercised") && !plain.contains("<system-out>"));
    }

    #[test]
    fn rates_read_well() {
        assert_eq!(per_hour(0, Duration::from_secs(5)), "- seeds/hour");
        assert_eq!(per_hour(10, Duration::from_secs(60)), "600 seeds/hour");
    }
}
