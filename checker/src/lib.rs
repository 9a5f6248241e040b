//! A linearizability checker for histories of a key-value register workload.
//!
//! A workload client records one JSON line per invocation and completion
//! ([`History::read_jsonl`]); [`check`] decides, key by key, whether some total order of the
//! operations respects both real time and a register's semantics (the Wing–Gong–Lowe search,
//! as in Knossos and Porcupine), and the [`Report`] explains a failure in sentences
//! ([`Report::to_text`]) and as a timeline ([`Report::write_html`]).
//!
//! Serializable reads (etcd's possibly-stale reads, `"serializable": true`) are checked like any
//! read: a stale one makes the history not linearizable, and the explanation says it was
//! serializable.
//!
//! ```
//! use simvm_checker::{check, History, Limits, Model, Verdict};
//!
//! let jsonl = r#"
//! {"process":1,"type":"invoke","f":"write","key":"k1","value":7,"time_ns":1000000000}
//! {"process":1,"type":"ok","f":"write","key":"k1","value":7,"time_ns":1100000000}
//! {"process":2,"type":"invoke","f":"read","key":"k1","time_ns":1200000000}
//! {"process":2,"type":"ok","f":"read","key":"k1","value":null,"time_ns":1250000000}
//! "#;
//! let history = History::read_jsonl(jsonl.as_bytes()).unwrap();
//! let report = check(&history, Model::Register, Limits::default());
//! let Verdict::NotLinearizable(violation) = report.verdict() else { panic!() };
//! assert_eq!(violation.key, "k1");
//! assert!(violation.explanation.starts_with(
//!     "process 2 found k1 missing between 1.200 s and 1.250 s, but k1 was no longer missing"
//! ));
//! ```

mod explain;
mod history;
mod html;
mod model;
mod partition;
mod report;
mod search;

pub use history::{Action, Event, EventType, Function, History, HistoryError, Op, Outcome, Value};
pub use model::Model;
pub use report::{KeyReport, Report, Verdict, Violation};

use partition::KeyProblem;
use search::{Budget, SearchResult};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Bounds that turn a runaway search into [`Verdict::Unknown`] instead of a hang.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Configurations one key's search may keep in memory; each costs about 60 bytes plus one bit
    /// per operation the key's search orders. Per key rather than shared, so the verdict does not depend on
    /// which keys happened to run at the same time.
    pub max_states: usize,
    /// Wall-clock budget for the whole check, from the start of [`check`]. `None`: no limit,
    /// which keeps the verdict independent of the host's speed.
    pub time_budget: Option<Duration>,
    /// Keys checked in parallel; 0 means one thread per available core.
    pub threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_states: 2_000_000,
            time_budget: Some(Duration::from_secs(60)),
            threads: 0,
        }
    }
}

/// Checks every key of `history` against `model`.
pub fn check(history: &History, model: Model, limits: Limits) -> Report {
    let started = Instant::now();
    let budget = Budget {
        max_states: limits.max_states,
        deadline: limits.time_budget.map(|d| started + d),
    };
    let problems = partition::partition(history);
    let threads = match limits.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .clamp(1, problems.len().max(1));
    // Largest keys first, so one big key does not start last and run alone.
    let mut order: Vec<usize> = (0..problems.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(problems[i].search.len()));
    let next = AtomicUsize::new(0);
    let worker = || {
        let mut done = Vec::new();
        while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
            done.push((i, check_key(history, &problems[i], model, &budget)));
        }
        done
    };
    let mut results: Vec<Option<KeyReport>> = vec![None; problems.len()];
    let finished: Vec<(usize, KeyReport)> = if threads == 1 {
        worker()
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(worker)).collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    };
    for (i, report) in finished {
        results[i] = Some(report);
    }
    Report {
        history: history.clone(),
        model,
        keys: results.into_iter().flatten().collect(),
        elapsed: started.elapsed(),
    }
}

fn check_key(history: &History, problem: &KeyProblem, model: Model, budget: &Budget) -> KeyReport {
    let started = Instant::now();
    let result = search::search(model, &problem.search, budget);
    let (verdict, states) = match result {
        SearchResult::NotLinearizable { frontier, states } => (
            Verdict::NotLinearizable(Box::new(explain::violation(history, problem, &frontier))),
            states,
        ),
        SearchResult::Linearizable { states } => (Verdict::Linearizable, states),
        SearchResult::Unknown { reason, states } => (Verdict::Unknown(reason), states),
    };
    KeyReport {
        key: problem.key.to_string(),
        verdict,
        ops: problem.all.len(),
        searched: problem.search.len(),
        states,
        elapsed: started.elapsed(),
    }
}

#[cfg(test)]
mod tests;
