//! Turns the search's frontier into the operations that matter and plain sentences about them.

use crate::history::{Action, History, Op, Outcome};
use crate::partition::KeyProblem;
use crate::report::Violation;
use crate::search::Frontier;
use std::collections::BTreeSet;

/// At most this many concurrent operations are named in the text (all are in the window).
const CONCURRENT_NAMED: usize = 8;

/// Virtual time as seconds, with at least millisecond and at most nanosecond digits.
pub(crate) fn fmt_time(ns: u64) -> String {
    let mut fraction = format!("{:09}", ns % 1_000_000_000);
    while fraction.len() > 3 && fraction.ends_with('0') {
        fraction.pop();
    }
    format!("{}.{fraction} s", ns / 1_000_000_000)
}

fn fmt_value(value: Option<i64>) -> String {
    value.map_or_else(|| "null".to_string(), |v| v.to_string())
}

/// A few words for the operation itself: `read -> 5`, `write 7`, `cas 5 -> 6`.
pub(crate) fn short(op: &Op) -> String {
    match op.action {
        Action::Read { value } if op.outcome == Outcome::Ok => {
            format!("read -> {}", fmt_value(value))
        }
        Action::Read { .. } => "read".to_string(),
        Action::Write { value } => format!("write {value}"),
        Action::Cas { expected, new } => format!("cas {} -> {new}", fmt_value(expected)),
    }
}

/// The operation as a sentence fragment: who did what to which key, and when.
pub(crate) fn describe(op: &Op) -> String {
    let (p, k) = (op.process, &op.key);
    let span = format!(
        "between {} and {}",
        fmt_time(op.invoke_ns),
        fmt_time(op.complete_ns.unwrap_or(op.invoke_ns))
    );
    let stale = if op.serializable {
        " (a serializable read)"
    } else {
        ""
    };
    match (op.outcome, op.action) {
        (Outcome::Ok, Action::Read { value: Some(v) }) => {
            format!("process {p} read {v} from {k}{stale} {span}")
        }
        (Outcome::Ok, Action::Read { value: None }) => {
            format!("process {p} found {k} missing{stale} {span}")
        }
        (Outcome::Ok, Action::Write { value }) => {
            format!("process {p} wrote {value} to {k} {span}")
        }
        (
            Outcome::Ok,
            Action::Cas {
                expected: Some(e),
                new,
            },
        ) => {
            format!("process {p} swapped {k} from {e} to {new} {span}")
        }
        (
            Outcome::Ok,
            Action::Cas {
                expected: None,
                new,
            },
        ) => {
            format!("process {p} created {k} with {new} {span}")
        }
        (Outcome::Fail, _) => format!("process {p}'s {} on {k} failed {span}", short(op)),
        (Outcome::Info, _) => format!(
            "process {p}'s {} on {k}, invoked at {}, has an unknown outcome",
            short(op),
            fmt_time(op.invoke_ns)
        ),
    }
}

/// "7", "7 or 9", "nothing (missing)".
fn holding(states: &[Option<i64>]) -> String {
    let words: Vec<String> = states
        .iter()
        .map(|s| s.map_or_else(|| "nothing (it was missing)".to_string(), |v| v.to_string()))
        .collect();
    words.join(" or ")
}

/// The operation on the key that writes `value` (written values are unique), failed ones too.
pub(crate) fn writer_of(history: &History, all: &[usize], value: i64) -> Option<usize> {
    all.iter()
        .copied()
        .find(|&i| history.ops()[i].action.written() == Some(value))
}

/// Explains why `frontier.blocked` could not be placed.
pub(crate) fn violation(history: &History, problem: &KeyProblem, frontier: &Frontier) -> Violation {
    let ops = history.ops();
    let key = problem.key;
    let prefix: Vec<usize> = frontier
        .prefix
        .iter()
        .map(|&i| problem.search[i].op)
        .collect();
    let blocked = frontier.blocked.map(|b| problem.search[b].op);
    let Some(xi) = blocked.or_else(|| problem.search.first().map(|s| s.op)) else {
        // Cannot happen (an empty key linearizes), but an answer beats a panic.
        return Violation {
            key: key.to_string(),
            op: problem.all.first().copied().unwrap_or(0),
            window: problem.all.clone(),
            prefix,
            possible_values: frontier.states.clone(),
            explanation: format!("no order of the operations on {key} is consistent"),
        };
    };
    let x = &ops[xi];
    let what = match x.action {
        Action::Read { .. } => "the read",
        Action::Write { .. } => "the write",
        Action::Cas { .. } => "the cas",
    };
    let need = match x.action {
        Action::Read { value } => Some(value),
        Action::Cas { expected, .. } => Some(expected),
        Action::Write { .. } => None,
    };
    // Completed writes that had ended before `x` began, latest first.
    let mut earlier_writes: Vec<usize> = problem
        .all
        .iter()
        .copied()
        .filter(|&i| ops[i].outcome == Outcome::Ok && ops[i].action.written().is_some())
        .filter(|&i| ops[i].precedes(x))
        .collect();
    earlier_writes.sort_by_key(|&i| std::cmp::Reverse(ops[i].complete_seq));

    let mut window = vec![xi];
    let mut sentences = Vec::new();
    let generic = |window: &mut Vec<usize>, sentences: &mut Vec<String>| {
        let seen = match need {
            Some(Some(v)) => format!("see {v}"),
            Some(None) => format!("find {key} missing"),
            None => "take effect".to_string(),
        };
        let mut reason = format!(
            "no order of the operations on {key} that respects real time lets {what} {seen}"
        );
        if !frontier.states.is_empty() {
            reason += &format!(
                ": every order of what came before leaves {key} holding {} there",
                holding(&frontier.states)
            );
        }
        for &state in frontier.states.iter().take(3) {
            let writer = state.and_then(|s| writer_of(history, &problem.all, s));
            let observer = last_observer(history, problem, x, state);
            window.extend(writer.iter().chain(observer.iter()));
            match (observer, writer) {
                (Some(o), Some(w)) if o != w => sentences.push(format!(
                    "By then, {}; {} was written when {}.",
                    describe(&ops[o]),
                    fmt_value(state),
                    describe(&ops[w])
                )),
                (Some(o), _) => sentences.push(format!("By then, {}.", describe(&ops[o]))),
                (None, _) => {}
            }
        }
        reason
    };
    let reason = match need {
        Some(Some(v)) => match writer_of(history, &problem.all, v) {
            None => format!("no operation ever wrote {v} to {key}"),
            Some(w) if ops[w].outcome == Outcome::Fail => {
                window.push(w);
                format!(
                    "the only attempt to write {v} failed, so it never took effect: {}",
                    describe(&ops[w])
                )
            }
            Some(w) if x.precedes(&ops[w]) => {
                window.push(w);
                format!("{v} was only written afterwards: {}", describe(&ops[w]))
            }
            Some(w) => {
                window.push(w);
                let overwriter = earlier_writes
                    .iter()
                    .copied()
                    .find(|&o| o != w && ops[w].precedes(&ops[o]));
                match overwriter {
                    Some(o) => {
                        window.push(o);
                        format!(
                            "{v} had already been overwritten before {what} began: {}, after {}",
                            describe(&ops[o]),
                            describe(&ops[w])
                        )
                    }
                    None => generic(&mut window, &mut sentences),
                }
            }
        },
        Some(None) => match earlier_writes.first() {
            Some(&o) => {
                window.push(o);
                format!(
                    "{key} was no longer missing: {} before {what} began, and nothing deletes keys",
                    describe(&ops[o])
                )
            }
            None => generic(&mut window, &mut sentences),
        },
        None => generic(&mut window, &mut sentences),
    };
    sentences.insert(0, format!("{}, but {reason}.", describe(x)));

    sentences.push(match prefix.last() {
        Some(&last) => format!(
            "The longest prefix that linearizes orders {} operation{} on {key}, ending with {}; \
             {what} cannot be placed after any order of them.",
            prefix.len(),
            if prefix.len() == 1 { "" } else { "s" },
            describe(&ops[last])
        ),
        None => format!(
            "The longest prefix that linearizes is empty: {what} cannot be placed even first."
        ),
    });

    let concurrent: Vec<usize> = problem
        .search
        .iter()
        .map(|s| s.op)
        .filter(|&i| i != xi && ops[i].concurrent_with(x))
        .collect();
    if !concurrent.is_empty() {
        let mut named: Vec<String> = concurrent
            .iter()
            .take(CONCURRENT_NAMED)
            .map(|&i| describe(&ops[i]))
            .collect();
        if concurrent.len() > CONCURRENT_NAMED {
            named.push(format!("and {} more", concurrent.len() - CONCURRENT_NAMED));
        }
        sentences.push(format!("Concurrent with it: {}.", named.join("; ")));
    }
    window.extend(concurrent);
    if x.serializable {
        sentences.push(
            "It was a serializable read: answered from one member's own state, which etcd \
             documents as possibly stale."
                .to_string(),
        );
    }

    Violation {
        key: key.to_string(),
        op: xi,
        window: in_event_order(history, window),
        prefix,
        possible_values: frontier.states.clone(),
        explanation: sentences.join("\n"),
    }
}

/// The last completed operation before `x` that read, wrote or swapped to `state`.
fn last_observer(
    history: &History,
    problem: &KeyProblem,
    x: &Op,
    state: Option<i64>,
) -> Option<usize> {
    let ops = history.ops();
    problem
        .search
        .iter()
        .map(|s| s.op)
        .filter(|&i| ops[i].precedes(x))
        .filter(|&i| match ops[i].action {
            Action::Read { value } => value == state,
            Action::Write { value } => Some(value) == state,
            Action::Cas { new, .. } => Some(new) == state,
        })
        .max_by_key(|&i| ops[i].complete_seq)
}

/// Deduplicated, by invocation.
pub(crate) fn in_event_order(history: &History, ops: Vec<usize>) -> Vec<usize> {
    let unique: BTreeSet<usize> = ops.into_iter().collect();
    let mut ordered: Vec<usize> = unique.into_iter().collect();
    ordered.sort_by_key(|&i| history.ops()[i].invoke_seq);
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(fmt_time(1_200_000_000), "1.200 s");
        assert_eq!(fmt_time(1_200_345_000), "1.200345 s");
        assert_eq!(fmt_time(7), "0.000000007 s");
        assert_eq!(fmt_time(0), "0.000 s");
    }

    #[test]
    fn holdings() {
        assert_eq!(holding(&[Some(7)]), "7");
        assert_eq!(holding(&[None, Some(9)]), "nothing (it was missing) or 9");
    }
}
