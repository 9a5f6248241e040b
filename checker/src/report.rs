//! Verdicts, per key and overall, and the plain-text report.

use crate::explain::{fmt_time, short};
use crate::history::{History, Op, Outcome};
use crate::model::Model;
use std::fmt;
use std::fmt::Write as _;
use std::time::Duration;

/// Up to this many keys are listed one per line even when they linearize.
const KEYS_LISTED: usize = 32;

/// Why a key's history cannot be linearized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    /// The operation that could not be placed (index into [`History::ops`]).
    pub op: usize,
    /// The operations that explain it, `op` included, by invocation (indices into
    /// [`History::ops`]).
    pub window: Vec<usize>,
    /// One order of the longest prefix that does linearize (indices into [`History::ops`]).
    pub prefix: Vec<usize>,
    /// Every value the key could hold when `op` had to take effect (`None`: missing).
    pub possible_values: Vec<Option<i64>>,
    /// Plain sentences, one per line.
    pub explanation: String,
}

/// The answer for one key or for the whole history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable(Box<Violation>),
    /// The search ran out of its budget (see [`crate::Limits`]).
    Unknown(String),
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => f.write_str("linearizable"),
            Verdict::NotLinearizable(v) => write!(f, "not linearizable ({})", v.key),
            Verdict::Unknown(reason) => write!(f, "unknown: {reason}"),
        }
    }
}

/// One key's result and what it cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyReport {
    pub key: String,
    pub verdict: Verdict,
    /// Operations on the key in the history.
    pub ops: usize,
    /// Operations the search had to order (after dropping failed and unobservable ones).
    pub searched: usize,
    /// Configurations the search explored.
    pub states: usize,
    pub elapsed: Duration,
}

/// The result of [`crate::check`].
#[derive(Clone, Debug)]
pub struct Report {
    pub(crate) history: History,
    pub(crate) model: Model,
    /// Sorted by key.
    pub keys: Vec<KeyReport>,
    pub elapsed: Duration,
}

impl Report {
    /// Not linearizable if any key is not (the first such key's violation), else unknown if any
    /// key is unknown, else linearizable.
    pub fn verdict(&self) -> Verdict {
        let bad = self
            .keys
            .iter()
            .find(|k| matches!(k.verdict, Verdict::NotLinearizable(_)));
        let unknown = self
            .keys
            .iter()
            .find(|k| matches!(k.verdict, Verdict::Unknown(_)));
        match (bad, unknown) {
            (Some(k), _) => k.verdict.clone(),
            (None, Some(k)) => match &k.verdict {
                Verdict::Unknown(reason) => Verdict::Unknown(format!("{}: {reason}", k.key)),
                other => other.clone(),
            },
            (None, None) => Verdict::Linearizable,
        }
    }

    pub fn is_linearizable(&self) -> bool {
        self.keys.iter().all(|k| k.verdict.is_linearizable())
    }

    /// Every key's violation, by key.
    pub fn violations(&self) -> impl Iterator<Item = &Violation> {
        self.keys.iter().filter_map(|k| match &k.verdict {
            Verdict::NotLinearizable(v) => Some(&**v),
            _ => None,
        })
    }

    /// The history that was checked.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// A human-readable report: a line per key (or per failing key when there are many), the
    /// explanation and window of every violation, and the overall verdict last.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} model: {} keys, {} operations, checked in {:.3} s",
            self.model,
            self.keys.len(),
            self.history.len(),
            self.elapsed.as_secs_f64()
        );
        for k in &self.keys {
            match &k.verdict {
                Verdict::Linearizable if self.keys.len() <= KEYS_LISTED => {
                    let _ = writeln!(
                        out,
                        "{}: linearizable ({} ops, {} searched, {} states, {:.3} s)",
                        k.key,
                        k.ops,
                        k.searched,
                        k.states,
                        k.elapsed.as_secs_f64()
                    );
                }
                Verdict::Linearizable => {}
                Verdict::Unknown(reason) => {
                    let _ = writeln!(out, "{}: UNKNOWN: {reason}", k.key);
                }
                Verdict::NotLinearizable(v) => {
                    let _ = writeln!(out, "{}: NOT LINEARIZABLE", k.key);
                    for line in v.explanation.lines() {
                        let _ = writeln!(out, "  {line}");
                    }
                    let _ = writeln!(
                        out,
                        "  window (> marks the operation that cannot be placed):"
                    );
                    for &i in &v.window {
                        let marker = if i == v.op { '>' } else { ' ' };
                        let _ = writeln!(out, "  {marker} {}", window_line(&self.history.ops()[i]));
                    }
                }
            }
        }
        let count = |f: fn(&Verdict) -> bool| self.keys.iter().filter(|k| f(&k.verdict)).count();
        let bad = count(|v| matches!(v, Verdict::NotLinearizable(_)));
        let unknown = count(|v| matches!(v, Verdict::Unknown(_)));
        let overall = match self.verdict() {
            Verdict::Linearizable => "LINEARIZABLE",
            Verdict::NotLinearizable(_) => "NOT LINEARIZABLE",
            Verdict::Unknown(_) => "UNKNOWN",
        };
        let _ = writeln!(
            out,
            "verdict: {overall} ({} linearizable, {bad} not, {unknown} unknown)",
            self.keys.len() - bad - unknown
        );
        out
    }
}

/// `line 12  process 3  write 7  1.000 s .. 1.100 s  ok`
fn window_line(op: &Op) -> String {
    let end = match (op.outcome, op.complete_ns) {
        (Outcome::Info, _) | (_, None) => "?".to_string(),
        (_, Some(t)) => fmt_time(t),
    };
    let outcome = match op.outcome {
        Outcome::Ok => "ok",
        Outcome::Fail => "fail",
        Outcome::Info => "unknown",
    };
    format!(
        "line {:<6} process {:<4} {:<22} {} .. {}  {outcome}{}",
        op.invoke_line,
        op.process,
        short(op),
        fmt_time(op.invoke_ns),
        end,
        if op.serializable {
            " (serializable)"
        } else {
            ""
        }
    )
}
