//! The only check serializable reads get: they may be stale, but they must return a value that
//! some write could have produced by the time they returned.

use crate::explain::{describe, in_event_order, writer_of};
use crate::history::{Action, History, Outcome};
use crate::partition::KeyProblem;
use crate::report::Violation;

/// The first serializable read on the key that returned a value nothing could have written.
pub(crate) fn phantom_read(history: &History, problem: &KeyProblem) -> Option<Violation> {
    let ops = history.ops();
    problem.serializable_reads.iter().find_map(|&ri| {
        let read = &ops[ri];
        let Action::Read { value: Some(v) } = read.action else {
            return None; // missing is the initial state: always a possible stale answer
        };
        let key = problem.key;
        let (reason, window) = match writer_of(history, &problem.all, v) {
            None => (format!("no operation ever wrote {v} to {key}"), vec![ri]),
            Some(w) if ops[w].outcome == Outcome::Fail => (
                format!(
                    "the only attempt to write {v} failed: {}",
                    describe(&ops[w])
                ),
                vec![ri, w],
            ),
            Some(w) if read.precedes(&ops[w]) => (
                format!("{v} was only written afterwards: {}", describe(&ops[w])),
                vec![ri, w],
            ),
            Some(_) => return None,
        };
        Some(Violation {
            key: key.to_string(),
            op: ri,
            window: in_event_order(history, window),
            prefix: Vec::new(),
            possible_values: Vec::new(),
            explanation: format!(
                "{}, but {reason}.\nSerializable reads may be stale, but must return a value \
                 that was written at some point.",
                describe(read)
            ),
        })
    })
}
