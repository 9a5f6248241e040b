//! The recorded history: JSON-lines events, and the operations they pair into.
//!
//! A workload client appends one [`Event`] per line: an `invoke` when it sends a request, then an
//! `ok`, `fail` or `info` once it knows (or gives up knowing) the outcome. [`History`] pairs each
//! invocation with its completion and rejects, with the line at fault, anything a well-behaved
//! client cannot have written, so the search never has to guess what a line meant.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::BufRead;

/// What a line reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The client sent the request.
    Invoke,
    /// The operation took effect (for a read: `value` is what it read).
    Ok,
    /// The operation definitely did not take effect.
    Fail,
    /// The outcome is unknown: it may take effect at any time after the invocation, or never.
    Info,
}

/// The operation a line is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    Read,
    Write,
    Cas,
}

/// A value on the wire: an integer, or `[expected, new]` for a compare-and-set. A missing key
/// (`null`) is the `None` of the `Option<Value>` around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub enum Value {
    Int(i64),
    /// `[expected, new]`; either may be `null` on the wire, and the history rejects a null `new`.
    Pair(Option<i64>, Option<i64>),
}

impl TryFrom<serde_json::Value> for Value {
    type Error = String;

    fn try_from(json: serde_json::Value) -> Result<Self, String> {
        let int = |v: &serde_json::Value| match v {
            serde_json::Value::Null => Ok(None),
            v => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| format!("{v} is not a 64-bit integer")),
        };
        match &json {
            serde_json::Value::Array(pair) if pair.len() == 2 => {
                Ok(Value::Pair(int(&pair[0])?, int(&pair[1])?))
            }
            serde_json::Value::Number(_) => match int(&json)? {
                Some(v) => Ok(Value::Int(v)),
                None => Err(format!("{json} is not a 64-bit integer")),
            },
            _ => Err(format!(
                "value {json} is neither an integer nor [expected, new]"
            )),
        }
    }
}

impl From<Value> for serde_json::Value {
    fn from(value: Value) -> Self {
        match value {
            Value::Int(v) => v.into(),
            Value::Pair(expected, new) => serde_json::json!([expected, new]),
        }
    }
}

/// One line of a history file, as the workload client writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The logical client; it has at most one operation outstanding.
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub f: Function,
    pub key: String,
    /// Written value, `[expected, new]` for a cas, the value read on a read's `ok`; `null` or
    /// absent for a missing key or where nothing is known.
    #[serde(default)]
    pub value: Option<Value>,
    /// Virtual time in nanoseconds.
    pub time_ns: u64,
    /// etcd's revision of the response, when there was one; kept for the report only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// A possibly-stale read (etcd's serializable consistency): not held to linearizability.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub serializable: bool,
}

/// What an operation did, with the values it carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `value` is what an `ok` read returned (`None`: the key was missing), `None` otherwise.
    Read {
        value: Option<i64>,
    },
    Write {
        value: i64,
    },
    /// Set the key to `new` if it holds `expected` (`None`: if it is missing).
    Cas {
        expected: Option<i64>,
        new: i64,
    },
}

impl Action {
    /// The value this action puts in the register if it takes effect.
    pub fn written(&self) -> Option<i64> {
        match *self {
            Action::Read { .. } => None,
            Action::Write { value } => Some(value),
            Action::Cas { new, .. } => Some(new),
        }
    }

    fn function(&self) -> Function {
        match self {
            Action::Read { .. } => Function::Read,
            Action::Write { .. } => Function::Write,
            Action::Cas { .. } => Function::Cas,
        }
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    Fail,
    /// Unknown, including an operation still outstanding when the history ends.
    Info,
}

/// An invocation paired with its completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub process: u64,
    pub key: String,
    pub action: Action,
    pub outcome: Outcome,
    /// A serializable (possibly stale) read.
    pub serializable: bool,
    pub invoke_ns: u64,
    /// When the completion was recorded; `None` if the history ends first. For an `info`
    /// operation this is only when the client gave up: the operation itself never ends.
    pub complete_ns: Option<u64>,
    /// 1-based line numbers in the history file.
    pub invoke_line: usize,
    pub complete_line: Option<usize>,
    pub revision: Option<u64>,
    /// Ranks of the invocation and completion in the history's event order (time, then line),
    /// which decides real-time precedence even between events with equal timestamps.
    pub(crate) invoke_seq: usize,
    pub(crate) complete_seq: Option<usize>,
}

impl Op {
    /// Whether `self` ended before `other` began, so every linearization orders it first.
    /// An operation of unknown outcome never ends, so it precedes nothing.
    pub fn precedes(&self, other: &Op) -> bool {
        match (self.outcome, self.complete_seq) {
            (Outcome::Info, _) | (_, None) => false,
            (_, Some(end)) => end < other.invoke_seq,
        }
    }

    /// Whether the two operations' intervals overlap.
    pub fn concurrent_with(&self, other: &Op) -> bool {
        !self.precedes(other) && !other.precedes(self)
    }
}

/// A malformed history: the line at fault and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct HistoryError {
    pub line: usize,
    pub message: String,
}

impl HistoryError {
    fn new(line: usize, message: impl Into<String>) -> Self {
        HistoryError {
            line,
            message: message.into(),
        }
    }
}

/// A validated history: operations in invocation order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<Op>,
}

impl History {
    /// Parses JSON lines; blank lines are skipped. Operations still outstanding at the end are
    /// treated as `info` (their outcome is unknown).
    pub fn read_jsonl<R: BufRead>(reader: R) -> Result<History, HistoryError> {
        let mut builder = Builder::default();
        for (i, line) in reader.lines().enumerate() {
            let number = i + 1;
            let line = line.map_err(|e| HistoryError::new(number, format!("cannot read: {e}")))?;
            if line.trim().is_empty() {
                continue;
            }
            let event: Event = serde_json::from_str(&line)
                .map_err(|e| HistoryError::new(number, json_message(&e)))?;
            builder.push(number, event)?;
        }
        Ok(builder.finish())
    }

    /// Builds a history from events already in memory; the n-th event counts as line n.
    pub fn from_events(events: impl IntoIterator<Item = Event>) -> Result<History, HistoryError> {
        let mut builder = Builder::default();
        for (i, event) in events.into_iter().enumerate() {
            builder.push(i + 1, event)?;
        }
        Ok(builder.finish())
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The keys, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.ops.iter().map(|op| op.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

/// serde_json's message without its "at line 1 column N" (every line is line 1 to it).
fn json_message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => format!("invalid event: {} (column {})", &text[..at], error.column()),
        None => format!("invalid event: {text}"),
    }
}

/// Pairs events into operations, checking the client's protocol as it goes.
#[derive(Default)]
struct Builder {
    ops: Vec<Op>,
    /// Process -> index of its outstanding operation.
    outstanding: HashMap<u64, usize>,
    /// Process -> line of the `info` that retired it.
    retired: HashMap<u64, usize>,
    /// Process -> time its last operation completed.
    last_completion: HashMap<u64, u64>,
    /// (key, written value) -> line of the invocation that writes it.
    written: HashMap<(String, i64), usize>,
}

impl Builder {
    fn push(&mut self, line: usize, event: Event) -> Result<(), HistoryError> {
        match event.kind {
            EventType::Invoke => self.invoke(line, event),
            _ => self.complete(line, event),
        }
    }

    fn invoke(&mut self, line: usize, e: Event) -> Result<(), HistoryError> {
        let p = e.process;
        let err = |m: String| Err(HistoryError::new(line, m));
        if let Some(info_line) = self.retired.get(&p) {
            return err(format!(
                "process {p} invokes again after its outcome became unknown (info at line \
                 {info_line}); a client must continue under a fresh process id"
            ));
        }
        if let Some(&i) = self.outstanding.get(&p) {
            let op = &self.ops[i];
            return err(format!(
                "process {p} invokes a {} on {} while its {} on {} (line {}) is still outstanding",
                name(e.f),
                e.key,
                name(op.action.function()),
                op.key,
                op.invoke_line
            ));
        }
        if let Some(&t) = self.last_completion.get(&p) {
            if e.time_ns < t {
                return err(format!(
                    "process {p} invokes at {} ns, before its previous operation completed at {t} ns",
                    e.time_ns
                ));
            }
        }
        if e.serializable && e.f != Function::Read {
            return err(format!(
                "only reads can be serializable, not a {}",
                name(e.f)
            ));
        }
        let action = match (e.f, e.value) {
            // A read's invocation carries nothing worth checking; whatever is there is ignored.
            (Function::Read, _) => Action::Read { value: None },
            (Function::Write, Some(Value::Int(value))) => Action::Write { value },
            (Function::Write, other) => {
                return err(format!(
                    "a write must carry the integer it writes, not {}",
                    show(other)
                ))
            }
            (Function::Cas, Some(Value::Pair(expected, Some(new)))) => {
                Action::Cas { expected, new }
            }
            (Function::Cas, other) => {
                return err(format!(
                    "a cas must carry [expected, new] with an integer new value, not {}",
                    show(other)
                ))
            }
        };
        if let Some(value) = action.written() {
            if let Some(first) = self.written.insert((e.key.clone(), value), line) {
                return err(format!(
                    "{value} is written to {} a second time (first at line {first}); written values \
                     must be unique",
                    e.key
                ));
            }
        }
        self.outstanding.insert(p, self.ops.len());
        self.ops.push(Op {
            process: p,
            key: e.key,
            action,
            outcome: Outcome::Info,
            serializable: e.serializable,
            invoke_ns: e.time_ns,
            complete_ns: None,
            invoke_line: line,
            complete_line: None,
            revision: None,
            invoke_seq: 0,
            complete_seq: None,
        });
        Ok(())
    }

    fn complete(&mut self, line: usize, e: Event) -> Result<(), HistoryError> {
        let p = e.process;
        let err = |m: String| Err(HistoryError::new(line, m));
        let kind = match e.kind {
            EventType::Ok => "ok",
            EventType::Fail => "fail",
            _ => "info",
        };
        let Some(&i) = self.outstanding.get(&p) else {
            return err(match self.retired.get(&p) {
                Some(info_line) => format!(
                    "process {p} reports {kind} for a {} after its info at line {info_line}",
                    name(e.f)
                ),
                None => format!(
                    "process {p} reports {kind} for a {} it never invoked",
                    name(e.f)
                ),
            });
        };
        let op = &self.ops[i];
        if op.action.function() != e.f || op.key != e.key {
            return err(format!(
                "process {p} reports {kind} for a {} on {}, but it invoked a {} on {} (line {})",
                name(e.f),
                e.key,
                name(op.action.function()),
                op.key,
                op.invoke_line
            ));
        }
        if e.time_ns < op.invoke_ns {
            return err(format!(
                "process {p} completes at {} ns, before it invoked at {} ns (line {})",
                e.time_ns, op.invoke_ns, op.invoke_line
            ));
        }
        if e.serializable && e.f != Function::Read {
            return err(format!(
                "only reads can be serializable, not a {}",
                name(e.f)
            ));
        }
        let action = match (op.action, e.value) {
            (Action::Read { .. }, value) if e.kind == EventType::Ok => match value {
                None => Action::Read { value: None },
                Some(Value::Int(v)) => Action::Read { value: Some(v) },
                Some(pair) => {
                    return err(format!(
                        "a read returns an integer or null, not {}",
                        show(Some(pair))
                    ))
                }
            },
            // A failed or unknown read returned nothing usable.
            (read @ Action::Read { .. }, _) => read,
            (action, None) => action,
            (action @ Action::Write { value }, Some(Value::Int(v))) if v == value => action,
            (action @ Action::Cas { expected, new }, Some(Value::Pair(x, Some(n))))
                if x == expected && n == new =>
            {
                action
            }
            (invoked, Some(other)) => {
                return err(format!(
                    "process {p} reports {kind} with value {}, but invoked with {} (line {})",
                    show(Some(other)),
                    show(wire(invoked)),
                    op.invoke_line
                ))
            }
        };
        let outcome = match e.kind {
            EventType::Ok => Outcome::Ok,
            EventType::Fail => Outcome::Fail,
            _ => Outcome::Info,
        };
        let op = &mut self.ops[i];
        op.action = action;
        op.outcome = outcome;
        op.serializable |= e.serializable;
        op.complete_ns = Some(e.time_ns);
        op.complete_line = Some(line);
        op.revision = e.revision;
        self.outstanding.remove(&p);
        if outcome == Outcome::Info {
            self.retired.insert(p, line);
        } else {
            self.last_completion.insert(p, e.time_ns);
        }
        Ok(())
    }

    /// Ranks every event by (time, line): the order real-time precedence is decided in.
    fn finish(mut self) -> History {
        let mut events: Vec<(u64, usize, usize, bool)> = Vec::with_capacity(2 * self.ops.len());
        for (i, op) in self.ops.iter().enumerate() {
            events.push((op.invoke_ns, op.invoke_line, i, false));
            if let (Some(t), Some(line)) = (op.complete_ns, op.complete_line) {
                events.push((t, line, i, true));
            }
        }
        events.sort_unstable();
        for (seq, &(_, _, i, completion)) in events.iter().enumerate() {
            if completion {
                self.ops[i].complete_seq = Some(seq);
            } else {
                self.ops[i].invoke_seq = seq;
            }
        }
        History { ops: self.ops }
    }
}

fn name(f: Function) -> &'static str {
    match f {
        Function::Read => "read",
        Function::Write => "write",
        Function::Cas => "cas",
    }
}

fn wire(action: Action) -> Option<Value> {
    match action {
        Action::Read { value } => value.map(Value::Int),
        Action::Write { value } => Some(Value::Int(value)),
        Action::Cas { expected, new } => Some(Value::Pair(expected, Some(new))),
    }
}

fn show(value: Option<Value>) -> String {
    match value {
        None => "null".to_string(),
        Some(v) => serde_json::Value::from(v).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<History, HistoryError> {
        History::read_jsonl(text.as_bytes())
    }

    fn error(text: &str) -> HistoryError {
        match parse(text) {
            Ok(h) => panic!("accepted a malformed history: {h:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn pairs_events_into_operations() {
        let h = parse(concat!(
            r#"{"process":3,"type":"invoke","f":"write","key":"k1","value":17,"time_ns":100}"#,
            "\n\n",
            r#"{"process":4,"type":"invoke","f":"read","key":"k1","time_ns":110,"serializable":true}"#,
            "\n",
            r#"{"process":3,"type":"ok","f":"write","key":"k1","value":17,"time_ns":130,"revision":42}"#,
            "\n",
            r#"{"process":4,"type":"ok","f":"read","key":"k1","value":17,"time_ns":140,"serializable":true}"#,
            "\n",
            r#"{"process":5,"type":"invoke","f":"cas","key":"k2","value":[null,3],"time_ns":150}"#,
            "\n",
        ))
        .unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h.keys(), vec!["k1", "k2"]);
        let w = &h.ops()[0];
        assert_eq!(
            (w.process, w.action, w.outcome),
            (3, Action::Write { value: 17 }, Outcome::Ok)
        );
        assert_eq!(
            (w.invoke_line, w.complete_line, w.revision),
            (1, Some(4), Some(42))
        );
        assert_eq!((w.invoke_ns, w.complete_ns), (100, Some(130)));
        let r = &h.ops()[1];
        assert_eq!(r.action, Action::Read { value: Some(17) });
        assert!(r.serializable);
        assert!(w.concurrent_with(r));
        let c = &h.ops()[2];
        assert_eq!(
            c.action,
            Action::Cas {
                expected: None,
                new: 3
            }
        );
        assert_eq!(c.outcome, Outcome::Info, "still outstanding at the end");
        assert!(w.precedes(c));
        assert!(!c.precedes(w));
    }

    #[test]
    fn equal_timestamps_are_ordered_by_line() {
        let h = parse(concat!(
            r#"{"process":1,"type":"invoke","f":"write","key":"k","value":1,"time_ns":5}"#,
            "\n",
            r#"{"process":1,"type":"ok","f":"write","key":"k","time_ns":10}"#,
            "\n",
            r#"{"process":2,"type":"invoke","f":"read","key":"k","time_ns":10}"#,
            "\n",
        ))
        .unwrap();
        assert!(h.ops()[0].precedes(&h.ops()[1]));
        assert_eq!(
            h.ops()[0].action,
            Action::Write { value: 1 },
            "value taken from the invoke"
        );
    }

    #[test]
    fn events_round_trip_through_json() {
        let e = Event {
            process: 2,
            kind: EventType::Ok,
            f: Function::Cas,
            key: "k1".into(),
            value: Some(Value::Pair(None, Some(4))),
            time_ns: 9,
            revision: Some(3),
            serializable: false,
        };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(
            text,
            r#"{"process":2,"type":"ok","f":"cas","key":"k1","value":[null,4],"time_ns":9,"revision":3}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), e);
    }

    #[test]
    fn rejects_bad_json_with_its_line() {
        let e = error(concat!(
            r#"{"process":1,"type":"invoke","f":"read","key":"k","time_ns":1}"#,
            "\n",
            r#"{"process":1,"type":"ok","f":"read","key":"k","time_ns":"soon"}"#,
            "\n"
        ));
        assert_eq!(e.line, 2);
        assert!(e.message.contains("invalid type"), "{e}");
        assert!(e.message.contains("column"), "{e}");
        let e = error(r#"{"process":1,"type":"invoke","f":"delete","key":"k","time_ns":1}"#);
        assert_eq!(e.line, 1);
        assert!(e.message.contains("unknown variant `delete`"), "{e}");
        let e =
            error(r#"{"process":1,"type":"invoke","f":"write","key":"k","value":"x","time_ns":1}"#);
        assert!(
            e.message.contains("neither an integer nor [expected, new]"),
            "{e}"
        );
        let e = error("{not json");
        assert_eq!(e.line, 1);
        assert!(e.to_string().starts_with("line 1: invalid event"), "{e}");
    }

    #[test]
    fn rejects_protocol_violations() {
        let inv = r#"{"process":1,"type":"invoke","f":"write","key":"k","value":1,"time_ns":10}"#;
        let cases: &[(String, usize, &str)] = &[
            (
                format!("{inv}\n{}", r#"{"process":1,"type":"invoke","f":"read","key":"k","time_ns":11}"#),
                2,
                "while its write on k (line 1) is still outstanding",
            ),
            (
                r#"{"process":7,"type":"ok","f":"read","key":"k","time_ns":11}"#.to_string(),
                1,
                "process 7 reports ok for a read it never invoked",
            ),
            (
                format!(
                    "{inv}\n{}\n{}",
                    r#"{"process":1,"type":"info","f":"write","key":"k","time_ns":12}"#,
                    r#"{"process":1,"type":"invoke","f":"read","key":"k","time_ns":13}"#
                ),
                3,
                "invokes again after its outcome became unknown (info at line 2)",
            ),
            (
                format!("{inv}\n{}", r#"{"process":1,"type":"ok","f":"read","key":"k","time_ns":12}"#),
                2,
                "reports ok for a read on k, but it invoked a write on k (line 1)",
            ),
            (
                format!("{inv}\n{}", r#"{"process":1,"type":"ok","f":"write","key":"j","time_ns":12}"#),
                2,
                "but it invoked a write on k",
            ),
            (
                format!("{inv}\n{}", r#"{"process":1,"type":"ok","f":"write","key":"k","value":2,"time_ns":12}"#),
                2,
                "reports ok with value 2, but invoked with 1 (line 1)",
            ),
            (
                format!("{inv}\n{}", r#"{"process":1,"type":"ok","f":"write","key":"k","time_ns":9}"#),
                2,
                "completes at 9 ns, before it invoked at 10 ns",
            ),
            (
                format!(
                    "{inv}\n{}\n{}",
                    r#"{"process":1,"type":"ok","f":"write","key":"k","time_ns":20}"#,
                    r#"{"process":1,"type":"invoke","f":"read","key":"k","time_ns":19}"#
                ),
                3,
                "invokes at 19 ns, before its previous operation completed at 20 ns",
            ),
            (
                format!("{inv}\n{}", r#"{"process":2,"type":"invoke","f":"write","key":"k","value":1,"time_ns":12}"#),
                2,
                "1 is written to k a second time (first at line 1)",
            ),
            (
                r#"{"process":1,"type":"invoke","f":"write","key":"k","time_ns":1}"#.to_string(),
                1,
                "a write must carry the integer it writes, not null",
            ),
            (
                r#"{"process":1,"type":"invoke","f":"cas","key":"k","value":[1,null],"time_ns":1}"#
                    .to_string(),
                1,
                "a cas must carry [expected, new] with an integer new value, not [1,null]",
            ),
            (
                r#"{"process":1,"type":"invoke","f":"write","key":"k","value":1,"time_ns":1,"serializable":true}"#
                    .to_string(),
                1,
                "only reads can be serializable, not a write",
            ),
            (
                format!(
                    "{}\n{}",
                    r#"{"process":1,"type":"invoke","f":"read","key":"k","time_ns":1}"#,
                    r#"{"process":1,"type":"ok","f":"read","key":"k","value":[1,2],"time_ns":2}"#
                ),
                2,
                "a read returns an integer or null, not [1,2]",
            ),
        ];
        for (text, line, message) in cases {
            let e = error(text);
            assert_eq!(e.line, *line, "{text}: {e}");
            assert!(
                e.message.contains(message),
                "{text}: got {e}, want {message}"
            );
        }
    }

    #[test]
    fn an_info_cas_keeps_its_values() {
        let h = parse(concat!(
            r#"{"process":1,"type":"invoke","f":"cas","key":"k","value":[1,2],"time_ns":1}"#,
            "\n",
            r#"{"process":1,"type":"info","f":"cas","key":"k","time_ns":2}"#,
            "\n",
        ))
        .unwrap();
        let op = &h.ops()[0];
        assert_eq!(
            op.action,
            Action::Cas {
                expected: Some(1),
                new: 2
            }
        );
        assert_eq!((op.outcome, op.complete_ns), (Outcome::Info, Some(2)));
    }
}
