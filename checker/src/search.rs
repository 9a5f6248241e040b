//! The Wing–Gong–Lowe search for one key's linearization.
//!
//! The history becomes a doubly linked list of call and return entries in event order. The
//! search repeatedly takes the first entries up to the first return: any call among them may be
//! linearized next (if the model allows it), which removes its call and return from the list;
//! reaching a return whose operation is not yet linearized means the current order is a dead
//! end, so it undoes the last choice. Configurations (set of linearized operations, model
//! state) already explored are skipped, which is what keeps the search near-linear on real
//! histories. Operations of unknown outcome have no return entry: they may be linearized at any
//! later point or never, and the search succeeds once every completed operation is placed.

use crate::model::{Model, State};
use crate::partition::SearchOp;
use std::collections::{BTreeSet, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

/// How far one search may go before it answers "unknown".
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    /// Explored configurations kept in memory.
    pub max_states: usize,
    pub deadline: Option<Instant>,
}

/// The furthest point any order reached: where the history stops being explainable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Frontier {
    /// The operation (index into the search ops) that no order could place before it returned.
    pub blocked: Option<usize>,
    /// Every state the key could be in when it had to take effect.
    pub states: Vec<State>,
    /// One order of the operations linearized up to there (indices into the search ops).
    pub prefix: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SearchResult {
    Linearizable { states: usize },
    NotLinearizable { frontier: Frontier, states: usize },
    Unknown { reason: String, states: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Head,
    Tail,
    Call(usize),
    Return(usize),
}

/// The event list, with removal and exact undo (dancing links).
struct List {
    entries: Vec<Entry>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Search op -> index of its return entry, if it has one.
    ret: Vec<Option<usize>>,
}

const HEAD: usize = 0;

impl List {
    fn new(ops: &[SearchOp]) -> List {
        let mut events: Vec<(usize, Entry)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, Entry::Call(i)));
            if let Some(r) = op.ret {
                events.push((r, Entry::Return(i)));
            }
        }
        events.sort_unstable_by_key(|&(seq, _)| seq);
        let mut entries = vec![Entry::Head];
        entries.extend(events.into_iter().map(|(_, e)| e));
        entries.push(Entry::Tail);
        let n = entries.len();
        let mut ret = vec![None; ops.len()];
        for (at, e) in entries.iter().enumerate() {
            if let Entry::Return(i) = *e {
                ret[i] = Some(at);
            }
        }
        List {
            entries,
            next: (1..=n).collect(),
            prev: (0..n).map(|i| i.wrapping_sub(1)).collect(),
            ret,
        }
    }

    fn unlink(&mut self, at: usize) {
        let (p, n) = (self.prev[at], self.next[at]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, at: usize) {
        let (p, n) = (self.prev[at], self.next[at]);
        self.next[p] = at;
        self.prev[n] = at;
    }

    /// Removes a call entry and its return; `unlift` undoes it (in LIFO order).
    fn lift(&mut self, call: usize, op: usize) {
        self.unlink(call);
        if let Some(r) = self.ret[op] {
            self.unlink(r);
        }
    }

    fn unlift(&mut self, call: usize, op: usize) {
        if let Some(r) = self.ret[op] {
            self.relink(r);
        }
        self.relink(call);
    }
}

/// A bitset of linearized operations.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Box<[u64]>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)].into_boxed_slice())
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// FxHash: the cache keys are bitsets we built ourselves, so SipHash's flooding resistance buys
/// nothing and costs a good share of the search.
#[derive(Default)]
struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Cache = HashSet<(Bits, State), BuildHasherDefault<FxHasher>>;

/// How often (in loop iterations) the clock is read.
const CLOCK_EVERY: u64 = 1024;

/// Searches for a linearization of `ops` (sorted by call) under `model`.
pub(crate) fn search(model: Model, ops: &[SearchOp], budget: &Budget) -> SearchResult {
    let mut list = List::new(ops);
    let mut linearized = Bits::new(ops.len());
    let mut cache = Cache::default();
    // (call entry, its op, state before it) for every linearized operation, in order.
    let mut stack: Vec<(usize, usize, State)> = Vec::new();
    let mut state = model.init();
    let mut remaining = ops.iter().filter(|op| op.ret.is_some()).count();
    let mut frontier_at = 0;
    let mut frontier = Frontier {
        blocked: None,
        states: Vec::new(),
        prefix: Vec::new(),
    };
    let mut frontier_states = BTreeSet::new();
    // `frontier.prefix` equals the stack up to this depth: copying only what changed since keeps
    // a long linearizable search from copying the whole stack at every new frontier.
    let mut prefix_valid = 0;
    let mut entry = list.next[HEAD];
    let mut steps: u64 = 0;
    loop {
        if remaining == 0 {
            return SearchResult::Linearizable {
                states: cache.len(),
            };
        }
        steps += 1;
        if steps.is_multiple_of(CLOCK_EVERY) && budget.deadline.is_some_and(|d| Instant::now() >= d)
        {
            return SearchResult::Unknown {
                reason: format!("time budget ran out after {} states", cache.len()),
                states: cache.len(),
            };
        }
        match list.entries[entry] {
            Entry::Call(i) => {
                if let Some(after) = model.step(state, &ops[i].action) {
                    linearized.set(i);
                    if cache.insert((linearized.clone(), after)) {
                        if cache.len() > budget.max_states {
                            return SearchResult::Unknown {
                                reason: format!(
                                    "state limit reached: more than {} configurations",
                                    budget.max_states
                                ),
                                states: cache.len(),
                            };
                        }
                        stack.push((entry, i, state));
                        state = after;
                        list.lift(entry, i);
                        if ops[i].ret.is_some() {
                            remaining -= 1;
                        }
                        entry = list.next[HEAD];
                        continue;
                    }
                    linearized.clear(i);
                }
                entry = list.next[entry];
            }
            Entry::Return(_) | Entry::Tail | Entry::Head => {
                // The first return in the list: its operation had to be placed by now and
                // cannot be. Remember the furthest such point for the explanation.
                if entry > frontier_at {
                    frontier_at = entry;
                    frontier_states.clear();
                    frontier.blocked = match list.entries[entry] {
                        Entry::Return(i) => Some(i),
                        _ => None,
                    };
                    frontier.prefix.truncate(prefix_valid);
                    frontier
                        .prefix
                        .extend(stack[prefix_valid..].iter().map(|&(_, i, _)| i));
                    prefix_valid = stack.len();
                }
                if entry == frontier_at {
                    frontier_states.insert(state);
                }
                let Some((call, i, before)) = stack.pop() else {
                    frontier.states = frontier_states.into_iter().collect();
                    return SearchResult::NotLinearizable {
                        frontier,
                        states: cache.len(),
                    };
                };
                prefix_valid = prefix_valid.min(stack.len());
                linearized.clear(i);
                state = before;
                list.unlift(call, i);
                if ops[i].ret.is_some() {
                    remaining += 1;
                }
                entry = list.next[call];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Action;

    fn op(action: Action, call: usize, ret: Option<usize>) -> SearchOp {
        SearchOp {
            op: 0,
            action,
            call,
            ret,
        }
    }

    fn unbounded() -> Budget {
        Budget {
            max_states: usize::MAX,
            deadline: None,
        }
    }

    #[test]
    fn sequential_and_concurrent() {
        let w1 = Action::Write { value: 1 };
        let r1 = Action::Read { value: Some(1) };
        let ops = [op(w1, 0, Some(1)), op(r1, 2, Some(3))];
        assert!(matches!(
            search(Model::Register, &ops, &unbounded()),
            SearchResult::Linearizable { .. }
        ));
        // The read overlaps the write and still sees the initial value.
        let r0 = Action::Read { value: None };
        let ops = [op(w1, 0, Some(3)), op(r0, 1, Some(2))];
        assert!(matches!(
            search(Model::Register, &ops, &unbounded()),
            SearchResult::Linearizable { .. }
        ));
    }

    #[test]
    fn frontier_names_the_stale_read() {
        let ops = [
            op(Action::Write { value: 1 }, 0, Some(1)),
            op(Action::Write { value: 2 }, 2, Some(3)),
            op(Action::Read { value: Some(1) }, 4, Some(5)),
        ];
        let SearchResult::NotLinearizable { frontier, .. } =
            search(Model::Register, &ops, &unbounded())
        else {
            panic!("stale read accepted");
        };
        assert_eq!(frontier.blocked, Some(2));
        assert_eq!(frontier.states, vec![Some(2)]);
        assert_eq!(frontier.prefix, vec![0, 1]);
    }

    #[test]
    fn unknown_operations_may_be_left_out() {
        // An unknown write concurrent with nothing, never read: fine either way.
        let ops = [
            op(Action::Write { value: 1 }, 0, None),
            op(Action::Read { value: None }, 1, Some(2)),
        ];
        assert!(matches!(
            search(Model::Register, &ops, &unbounded()),
            SearchResult::Linearizable { .. }
        ));
    }

    #[test]
    fn lift_and_unlift_restore_the_list() {
        let ops = [
            op(Action::Write { value: 1 }, 0, Some(2)),
            op(Action::Write { value: 2 }, 1, Some(3)),
        ];
        let mut list = List::new(&ops);
        let (next, prev) = (list.next.clone(), list.prev.clone());
        list.lift(1, 0);
        assert_eq!(list.next[HEAD], 2);
        list.lift(2, 1);
        assert_eq!(list.next[HEAD], 5, "only the tail is left");
        list.unlift(2, 1);
        list.unlift(1, 0);
        assert_eq!((list.next, list.prev), (next, prev));
    }
}
