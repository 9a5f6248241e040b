//! Assertions from inside the guest (docs/guest-abi.md, "Assertions"): the guest's
//! `simvm-assert` helper writes one console line per assertion, and the world collects them.
//!
//! The lines are ordinary console lines, so they are already part of the run's digest and
//! replay with the seed; this module only reads them. A failed `always` or a reached
//! `unreachable` fails the run ([`Assertions::failures`]); a `sometimes` never true or a
//! `reachable` never reached fails nothing in one run, but a soak reports those that no seed
//! exercised.

use std::collections::BTreeMap;
use std::fmt;

use crate::console::format_vtime;

/// Every assertion line starts with this.
pub const PREFIX: &str = "simvm-assert: ";
/// The longest name the helper accepts.
pub const MAX_NAME: usize = 128;
/// Distinct assertions kept per run; more (a guest making up names in a loop) are counted,
/// not kept.
pub const MAX_ASSERTIONS: usize = 10_000;

/// What an assertion claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Holds every time it is evaluated; one failure fails the run.
    Always,
    /// Holds at least once (across a soak: in at least one seed).
    Sometimes,
    /// Is reached (across a soak: in at least one seed).
    Reachable,
    /// Is never reached; reaching it fails the run.
    Unreachable,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Always,
        Kind::Sometimes,
        Kind::Reachable,
        Kind::Unreachable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Always => "always",
            Kind::Sometimes => "sometimes",
            Kind::Reachable => "reachable",
            Kind::Unreachable => "unreachable",
        }
    }

    pub fn parse(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == word)
    }

    /// Evaluated to pass or fail (always, sometimes), rather than reached.
    fn evaluated(self) -> bool {
        matches!(self, Kind::Always | Kind::Sometimes)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one line says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    /// An `always` or `sometimes` held.
    Pass,
    /// An `always` or `sometimes` did not hold.
    Fail,
    /// A `reachable` or `unreachable` point was reached.
    Reached,
    /// The assertion exists; nothing was evaluated.
    Declared,
}

/// One assertion line, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    pub kind: Kind,
    pub name: &'a str,
    pub observation: Observation,
}

/// Whether `name` is an assertion name: 1 to [`MAX_NAME`] characters, each a letter, a digit
/// or one of `_ - . : / @ + = < > % #` (the helper's rule).
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/@+=<>%#".contains(&b))
}

/// Parses the guest's text of one console line: `Ok(None)` when it is not an assertion line
/// (it does not start with [`PREFIX`]), an error when it starts with it but says nothing this
/// protocol knows.
pub fn parse(text: &str) -> Result<Option<Line<'_>>, String> {
    let Some(rest) = text.strip_prefix(PREFIX) else {
        return Ok(None);
    };
    let words: Vec<&str> = rest.split(' ').collect();
    let line = match words.as_slice() {
        ["declare", kind, name] => Kind::parse(kind).map(|kind| Line {
            kind,
            name,
            observation: Observation::Declared,
        }),
        [kind, name, result] => match (Kind::parse(kind), *result) {
            (Some(kind), "pass") if kind.evaluated() => Some(Line {
                kind,
                name,
                observation: Observation::Pass,
            }),
            (Some(kind), "fail") if kind.evaluated() => Some(Line {
                kind,
                name,
                observation: Observation::Fail,
            }),
            _ => None,
        },
        [kind, name] => Kind::parse(kind)
            .filter(|k| !k.evaluated())
            .map(|kind| Line {
                kind,
                name,
                observation: Observation::Reached,
            }),
        _ => None,
    };
    match line {
        Some(line) if valid_name(line.name) => Ok(Some(line)),
        Some(line) => Err(format!("bad assertion name {:?}", line.name)),
        None => Err("not an assertion line of the protocol".into()),
    }
}

/// Where something happened: the world's step, the machine (its console label, `m2#2` for a
/// second incarnation) and its virtual time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Where {
    pub step: u64,
    pub machine: String,
    pub vtime_ns: u64,
}

impl fmt::Display for Where {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "on {} at step {} ({})",
            self.machine,
            self.step,
            format_vtime(self.vtime_ns)
        )
    }
}

/// One assertion over a run: what its lines said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assertion {
    pub kind: Kind,
    pub name: String,
    /// `always`, `sometimes`: evaluations that held.
    pub passes: u64,
    /// `always`, `sometimes`: evaluations that did not hold.
    pub failures: u64,
    /// `reachable`, `unreachable`: times reached.
    pub reached: u64,
    /// The first failure of an `always`, the first reach of an `unreachable`.
    pub first_failure: Option<Where>,
}

impl Assertion {
    fn new(kind: Kind, name: &str) -> Self {
        Self {
            kind,
            name: name.to_string(),
            passes: 0,
            failures: 0,
            reached: 0,
            first_failure: None,
        }
    }

    /// It fails the run: an `always` that failed, an `unreachable` that was reached.
    pub fn failed(&self) -> bool {
        match self.kind {
            Kind::Always => self.failures > 0,
            Kind::Unreachable => self.reached > 0,
            Kind::Sometimes | Kind::Reachable => false,
        }
    }

    /// What it asks for happened: a `sometimes` held, a `reachable` was reached (`always`
    /// and `unreachable`: it did not fail).
    pub fn satisfied(&self) -> bool {
        match self.kind {
            Kind::Sometimes => self.passes > 0,
            Kind::Reachable => self.reached > 0,
            Kind::Always | Kind::Unreachable => !self.failed(),
        }
    }

    /// How often it was seen, for summaries: `3 passed, 1 failed`, `reached 2 times`,
    /// `declared only`.
    pub fn counts(&self) -> String {
        if self.kind.evaluated() {
            if self.passes + self.failures == 0 {
                return "declared only".into();
            }
            return format!("{} passed, {} failed", self.passes, self.failures);
        }
        match self.reached {
            0 => "declared only".into(),
            1 => "reached once".into(),
            n => format!("reached {n} times"),
        }
    }

    /// `always "name"`.
    pub fn title(&self) -> String {
        format!("{} \"{}\"", self.kind, self.name)
    }
}

/// Every assertion of a run, collected from the machines' console lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assertions {
    /// By kind, then name: the same name may be used by two kinds.
    by_key: BTreeMap<(Kind, String), Assertion>,
    /// Lines that started with [`PREFIX`] but were not assertions.
    pub malformed: u64,
    /// The first of them: where, the line, what is wrong with it.
    pub first_malformed: Option<(Where, String, String)>,
    /// Lines of assertions beyond [`MAX_ASSERTIONS`] distinct ones, not kept.
    pub dropped: u64,
}

impl Assertions {
    /// Notes one line of guest console text (without the annotation), printed by `machine`
    /// at `step` and `vtime_ns`. Anything but an assertion line is ignored.
    pub fn note(&mut self, step: u64, machine: &str, vtime_ns: u64, text: &str) {
        let at = || Where {
            step,
            machine: machine.to_string(),
            vtime_ns,
        };
        let line = match parse(text) {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(why) => {
                self.malformed += 1;
                if self.first_malformed.is_none() {
                    self.first_malformed = Some((at(), text.to_string(), why));
                }
                return;
            }
        };
        let key = (line.kind, line.name.to_string());
        if !self.by_key.contains_key(&key) && self.by_key.len() >= MAX_ASSERTIONS {
            self.dropped += 1;
            return;
        }
        let assertion = self
            .by_key
            .entry(key)
            .or_insert_with(|| Assertion::new(line.kind, line.name));
        match line.observation {
            Observation::Declared => {}
            Observation::Pass => assertion.passes += 1,
            Observation::Fail => assertion.failures += 1,
            Observation::Reached => assertion.reached += 1,
        }
        if assertion.first_failure.is_none() && assertion.failed() {
            assertion.first_failure = Some(at());
        }
    }

    /// Notes one line as `simvm run` prints it (`STEP MACHINE HH:MM:SS.uuuuuu > TEXT`);
    /// any other line is ignored. The virtual time is as precise as the line (microseconds).
    pub fn note_printed(&mut self, printed: &str) {
        let Some((head, text)) = printed.split_once(" > ") else {
            return;
        };
        if !text.starts_with(PREFIX) {
            return;
        }
        let mut words = head.split_whitespace();
        let (Some(step), Some(machine), Some(vtime), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return;
        };
        let (Ok(step), Some(vtime_ns)) = (step.parse(), parse_vtime(vtime)) else {
            return;
        };
        self.note(step, machine, vtime_ns, text);
    }

    /// Every assertion, by kind and then name.
    pub fn iter(&self) -> impl Iterator<Item = &Assertion> {
        self.by_key.values()
    }

    pub fn get(&self, kind: Kind, name: &str) -> Option<&Assertion> {
        self.by_key.get(&(kind, name.to_string()))
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty() && self.malformed == 0 && self.dropped == 0
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// The assertions that fail the run, with where each first failed.
    pub fn failures(&self) -> impl Iterator<Item = &Assertion> {
        self.iter().filter(|a| a.failed())
    }

    /// No assertion fails the run.
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }

    /// `sometimes` never true and `reachable` never reached in this run.
    pub fn unsatisfied(&self) -> impl Iterator<Item = &Assertion> {
        self.iter()
            .filter(|a| matches!(a.kind, Kind::Sometimes | Kind::Reachable) && !a.satisfied())
    }

    /// `assertions-failed(always:x,unreachable:y)` for the summary line; `None` when none
    /// failed. At most `MAX_LISTED` names, then `+N`.
    pub fn failed_token(&self) -> Option<String> {
        const MAX_LISTED: usize = 5;
        let failed: Vec<&Assertion> = self.failures().collect();
        if failed.is_empty() {
            return None;
        }
        let mut names: Vec<String> = failed
            .iter()
            .take(MAX_LISTED)
            .map(|a| format!("{}:{}", a.kind, a.name))
            .collect();
        if failed.len() > MAX_LISTED {
            names.push(format!("+{}", failed.len() - MAX_LISTED));
        }
        Some(format!("assertions-failed({})", names.join(",")))
    }

    /// The per-run report for people: one line per assertion, then the lines that were not
    /// understood. Empty when the run saw no assertion line.
    pub fn report(&self) -> String {
        let mut out = String::new();
        if self.is_empty() {
            return out;
        }
        let failed = self.failures().count();
        let unsatisfied = self.unsatisfied().count();
        out.push_str(&format!(
            "simvm: assertions: {} seen, {failed} failed, {unsatisfied} never true or reached\n",
            self.len()
        ));
        let width = self.iter().map(|a| a.name.len()).max().unwrap_or(0);
        for a in self.iter() {
            let verdict = if a.failed() {
                "FAIL"
            } else if a.satisfied() {
                "ok"
            } else {
                "never"
            };
            out.push_str(&format!(
                "    {verdict:<5} {:<11} {:<width$}  {}",
                a.kind.as_str(),
                a.name,
                a.counts()
            ));
            if let Some(at) = &a.first_failure {
                out.push_str(&format!(", first {at}"));
            }
            out.push('\n');
        }
        if let Some((at, line, why)) = &self.first_malformed {
            out.push_str(&format!(
                "simvm: {} console lines start with {PREFIX:?} but are not assertions ({why}); \
                 the first {at}: {line}\n",
                self.malformed
            ));
        }
        if self.dropped > 0 {
            out.push_str(&format!(
                "simvm: more than {MAX_ASSERTIONS} distinct assertions: {} lines of further \
                 ones were not counted\n",
                self.dropped
            ));
        }
        out
    }
}

/// `HH:MM:SS.uuuuuu`, as [`format_vtime`] writes it, in ns.
fn parse_vtime(text: &str) -> Option<u64> {
    let (hms, micros) = text.split_once('.')?;
    let mut parts = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    if parts.next().is_some() || micros.len() != 6 {
        return None;
    }
    let micros: u64 = micros.parse().ok()?;
    let secs = h.checked_mul(3600)?.checked_add(m * 60 + s)?;
    secs.checked_mul(1_000_000_000)?.checked_add(micros * 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::format_line;

    fn collect(lines: &[(u64, &str, u64, &str)]) -> Assertions {
        let mut all = Assertions::default();
        for (step, machine, vtime, text) in lines {
            all.note(*step, machine, *vtime, text);
        }
        all
    }

    #[test]
    fn lines_of_the_protocol_parse() {
        let line = |kind, name, observation| {
            Ok(Some(Line {
                kind,
                name,
                observation,
            }))
        };
        assert_eq!(
            parse("simvm-assert: always balance>=0 pass"),
            line(Kind::Always, "balance>=0", Observation::Pass)
        );
        assert_eq!(
            parse("simvm-assert: sometimes leader fail"),
            line(Kind::Sometimes, "leader", Observation::Fail)
        );
        assert_eq!(
            parse("simvm-assert: reachable here"),
            line(Kind::Reachable, "here", Observation::Reached)
        );
        assert_eq!(
            parse("simvm-assert: unreachable bad"),
            line(Kind::Unreachable, "bad", Observation::Reached)
        );
        assert_eq!(
            parse("simvm-assert: declare sometimes s/1"),
            line(Kind::Sometimes, "s/1", Observation::Declared)
        );
        for other in [
            "hello",
            "",
            "simvm-assert:always x pass",
            " simvm-assert: reachable x",
        ] {
            assert_eq!(parse(other), Ok(None), "{other:?}");
        }
        for bad in [
            "simvm-assert: ",
            "simvm-assert: always x",
            "simvm-assert: always x maybe",
            "simvm-assert: reachable x pass",
            "simvm-assert: unreachable x fail",
            "simvm-assert: sometimes x pass extra",
            "simvm-assert: never x pass",
            "simvm-assert: declare never x",
            "simvm-assert: declare always",
            "simvm-assert: always  x pass",
            "simvm-assert: reachable x ",
            "simvm-assert: reachable \"x\"",
            "simvm-assert: reachable caf\u{e9}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(valid_name(&"x".repeat(MAX_NAME)));
        assert!(!valid_name(&"x".repeat(MAX_NAME + 1)));
        assert!(valid_name("a_b-c.d:e/f@g+h=i<j>k%l#m"));
        for bad in ["", "a b", "a,b", "a'b", "a\\b", "a\tb"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_run_counts_passes_and_failures_and_keeps_the_first_failure() {
        let all = collect(&[
            (10, "m1", 1_000, "simvm-assert: always positive pass"),
            (11, "m1", 2_000, "hello"),
            (12, "m2", 3_000, "simvm-assert: always positive fail"),
            (13, "m1#2", 4_000, "simvm-assert: always positive fail"),
            (14, "m1", 5_000, "simvm-assert: sometimes seen-two fail"),
            (15, "m1", 6_000, "simvm-assert: declare reachable later"),
            (16, "m1", 7_000, "simvm-assert: reachable here"),
            (17, "m1", 8_000, "simvm-assert: reachable here"),
            (18, "m2", 9_000, "simvm-assert: declare unreachable bad"),
            // The same name under another kind is another assertion.
            (19, "m2", 9_500, "simvm-assert: sometimes positive pass"),
        ]);
        assert_eq!(all.len(), 6);
        let positive = all.get(Kind::Always, "positive").unwrap();
        assert_eq!((positive.passes, positive.failures), (1, 2));
        assert_eq!(
            positive.first_failure,
            Some(Where {
                step: 12,
                machine: "m2".into(),
                vtime_ns: 3_000
            })
        );
        assert_eq!(
            positive.first_failure.as_ref().unwrap().to_string(),
            "on m2 at step 12 (00:00:00.000003)"
        );
        assert!(positive.failed() && !all.passed());
        assert_eq!(
            all.failures().map(Assertion::title).collect::<Vec<_>>(),
            [r#"always "positive""#]
        );
        assert_eq!(
            all.unsatisfied().map(Assertion::title).collect::<Vec<_>>(),
            [r#"sometimes "seen-two""#, r#"reachable "later""#]
        );
        let here = all.get(Kind::Reachable, "here").unwrap();
        assert_eq!(
            (here.reached, here.counts().as_str()),
            (2, "reached 2 times")
        );
        let bad = all.get(Kind::Unreachable, "bad").unwrap();
        assert!(!bad.failed() && bad.satisfied());
        assert_eq!(bad.counts(), "declared only");
        assert_eq!(
            all.failed_token().as_deref(),
            Some("assertions-failed(always:positive)")
        );
        assert_eq!(all.malformed, 0);
    }

    #[test]
    fn an_unreachable_point_reached_fails_the_run() {
        let all = collect(&[
            (5, "m1", 100, "simvm-assert: declare unreachable bad"),
            (9, "m3", 200, "simvm-assert: unreachable bad"),
        ]);
        let bad = all.get(Kind::Unreachable, "bad").unwrap();
        assert!(bad.failed());
        assert_eq!(bad.first_failure.as_ref().unwrap().step, 9);
        assert_eq!(
            all.failed_token().as_deref(),
            Some("assertions-failed(unreachable:bad)")
        );
        assert!(collect(&[]).passed() && collect(&[]).failed_token().is_none());
    }

    #[test]
    fn the_report_lists_every_assertion_and_the_malformed_lines() {
        let all = collect(&[
            (1, "m1", 1_000, "simvm-assert: always x pass"),
            (2, "m1", 2_000, "simvm-assert: always x fail"),
            (3, "m1", 3_000, "simvm-assert: sometimes seen-two fail"),
            (4, "m1", 4_000, "simvm-assert: reachable here"),
            (5, "m1", 5_000, "simvm-assert: always y maybe"),
        ]);
        assert_eq!(
            all.report(),
            "simvm: assertions: 3 seen, 1 failed, 1 never true or reached\n\
             \x20   FAIL  always      x         1 passed, 1 failed, first on m1 at step 2 (00:00:00.000002)\n\
             \x20   never sometimes   seen-two  0 passed, 1 failed\n\
             \x20   ok    reachable   here      reached once\n\
             simvm: 1 console lines start with \"simvm-assert: \" but are not assertions (not an \
             assertion line of the protocol); the first on m1 at step 5 (00:00:00.000005): \
             simvm-assert: always y maybe\n"
        );
        assert_eq!(Assertions::default().report(), "");
    }

    #[test]
    fn printed_lines_parse_back() {
        let mut all = Assertions::default();
        let printed = format_line(1234, "m2#2", 3_120_000_000, "simvm-assert: always b fail");
        all.note_printed(&printed);
        all.note_printed("seed=1 steps=5 result=FAIL m1=exit(0)");
        all.note_printed("       12 net  00:00:01.000000 > partition m1 | m2");
        all.note_printed("   12 m1 00:00:01.000000 > simvm-assert: reachable r");
        all.note_printed("   12 m1 bogus > simvm-assert: reachable s");
        let b = all.get(Kind::Always, "b").unwrap();
        assert_eq!(
            b.first_failure,
            Some(Where {
                step: 1234,
                machine: "m2#2".into(),
                vtime_ns: 3_120_000_000
            })
        );
        assert!(all.get(Kind::Reachable, "r").is_some());
        assert!(all.get(Kind::Reachable, "s").is_none());
        assert_eq!(parse_vtime("01:02:03.000456"), Some(3_723_000_456_000));
        assert_eq!(parse_vtime("01:02:03.45"), None);
    }

    #[test]
    fn distinct_assertions_are_bounded() {
        let mut all = Assertions::default();
        for i in 0..MAX_ASSERTIONS + 3 {
            all.note(1, "m1", 1, &format!("simvm-assert: reachable r{i}"));
        }
        all.note(1, "m1", 1, "simvm-assert: reachable r0");
        assert_eq!((all.len(), all.dropped), (MAX_ASSERTIONS, 3));
        assert_eq!(all.get(Kind::Reachable, "r0").unwrap().reached, 2);
    }
}
