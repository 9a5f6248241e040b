//! Splits a history into independent per-key problems and drops what cannot matter.
//!
//! Registers are P-compositional: a history of many keys is linearizable exactly when each key's
//! sub-history is, so each key is searched alone (and keys in parallel). Within a key, failed
//! operations never happened and reads of unknown outcome observed nothing, so neither enters the
//! search. Serializable reads do: etcd documents them as possibly stale, and a stale one is
//! exactly what a test of that mode wants the check to find.

use crate::history::{Action, History, Outcome};
use std::collections::{BTreeMap, HashSet};

/// One operation as the search sees it.
#[derive(Clone, Debug)]
pub(crate) struct SearchOp {
    /// Index into `History::ops`.
    pub op: usize,
    pub action: Action,
    /// Event-order rank of the invocation.
    pub call: usize,
    /// Event-order rank of the completion; `None` for an operation of unknown outcome, which
    /// never has to be linearized (it may not have happened).
    pub ret: Option<usize>,
}

/// Everything about one key.
#[derive(Clone, Debug)]
pub(crate) struct KeyProblem<'h> {
    pub key: &'h str,
    /// Every operation on the key, in invocation order (indices into `History::ops`).
    pub all: Vec<usize>,
    /// The operations the search must order, by invocation.
    pub search: Vec<SearchOp>,
}

/// One problem per key, sorted by key.
pub(crate) fn partition(history: &History) -> Vec<KeyProblem<'_>> {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.ops().iter().enumerate() {
        by_key.entry(op.key.as_str()).or_default().push(i);
    }
    by_key
        .into_iter()
        .map(|(key, all)| problem(history, key, all))
        .collect()
}

fn problem<'h>(history: &'h History, key: &'h str, all: Vec<usize>) -> KeyProblem<'h> {
    let ops = history.ops();
    let mut required = Vec::new();
    let mut unknown = Vec::new();
    for &i in &all {
        let op = &ops[i];
        match (op.outcome, op.action) {
            (Outcome::Fail, _) => {}
            (Outcome::Info, Action::Read { .. }) => {}
            (Outcome::Ok, _) => required.push(i),
            (Outcome::Info, _) => unknown.push(i),
        }
    }
    // An unknown write whose value no kept operation observes can always be left out: nothing
    // between it and the next write could tell it happened. Dropping it keeps the search from
    // trying it at every point. Kept unknown cas operations observe their expected value, so
    // iterate to a fixed point.
    let mut observed: HashSet<Option<i64>> = required
        .iter()
        .filter_map(|&i| observes(&ops[i].action))
        .collect();
    let mut kept = vec![false; unknown.len()];
    loop {
        let mut changed = false;
        for (j, &i) in unknown.iter().enumerate() {
            let action = &ops[i].action;
            if !kept[j] && observed.contains(&action.written()) {
                kept[j] = true;
                changed = true;
                if let Some(seen) = observes(action) {
                    observed.insert(seen);
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut search: Vec<SearchOp> = required
        .iter()
        .chain(
            unknown
                .iter()
                .zip(&kept)
                .filter(|(_, &k)| k)
                .map(|(i, _)| i),
        )
        .map(|&i| {
            let op = &ops[i];
            SearchOp {
                op: i,
                action: op.action,
                call: op.invoke_seq,
                ret: match op.outcome {
                    Outcome::Ok => op.complete_seq,
                    _ => None,
                },
            }
        })
        .collect();
    search.sort_by_key(|s| s.call);
    KeyProblem { key, all, search }
}

/// The value an action requires the register to hold, if it requires one.
fn observes(action: &Action) -> Option<Option<i64>> {
    match *action {
        Action::Read { value } => Some(value),
        Action::Write { .. } => None,
        Action::Cas { expected, .. } => Some(expected),
    }
}
