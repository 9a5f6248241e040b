//! How long the checker takes on a realistic history: 10,000 operations over 10 keys from 8
//! concurrent clients, simulated against a real (hence linearizable) register with random
//! overlaps, failures and unknown outcomes; then the same history with one stale read planted.
//!
//!     cargo bench -p simvm-checker --bench check

use simvm_checker::{check, Event, EventType, Function, History, Limits, Model, Value};
use std::time::{Duration, Instant};

/// xorshift64*: tiny, seeded, good enough to shuffle a workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Done {
    Ok,
    Fail,
    Info,
}

struct Sim {
    process: u64,
    key: usize,
    f: Function,
    /// Write value, or cas new value.
    value: i64,
    expected: Option<i64>,
    read: Option<i64>,
    start: u64,
    lin: u64,
    end: u64,
    done: Done,
}

const MS: u64 = 1_000_000;

/// `ops` operations over `keys` keys from `clients` concurrent clients.
fn generate(seed: u64, ops: usize, keys: usize, clients: u64) -> Vec<Sim> {
    let mut rng = Rng(seed);
    let mut free = vec![0u64; clients as usize];
    let mut process: Vec<u64> = (0..clients).collect();
    let mut sims = Vec::with_capacity(ops);
    // Written values are unique: operation n writes n + 1.
    for value in (1..).take(ops) {
        // The client that is free first invokes next.
        let slot = (0..free.len()).min_by_key(|&s| free[s]).unwrap_or(0);
        let start = free[slot] + rng.below(2 * MS);
        let duration = if rng.percent(3) {
            20 * MS + rng.below(80 * MS)
        } else {
            100_000 + rng.below(10 * MS)
        };
        let end = start + duration;
        let f = match rng.below(10) {
            0..=4 => Function::Read,
            5..=7 => Function::Write,
            _ => Function::Cas,
        };
        let done = match f {
            Function::Read if rng.percent(1) => Done::Info,
            Function::Write | Function::Cas if rng.percent(2) => Done::Info,
            Function::Write if rng.percent(1) => Done::Fail,
            _ => Done::Ok,
        };
        sims.push(Sim {
            process: process[slot],
            key: rng.below(keys as u64) as usize,
            f,
            value,
            expected: None,
            read: None,
            start,
            lin: start + rng.below(duration),
            end,
            done,
        });
        free[slot] = end;
        if done == Done::Info {
            // Jepsen convention: a client whose outcome is unknown continues as a new process.
            process[slot] += clients;
        }
    }
    // Apply every operation to a real register at its linearization point.
    let mut order: Vec<usize> = (0..sims.len()).collect();
    order.sort_by_key(|&i| sims[i].lin);
    let mut registers: Vec<Option<i64>> = vec![None; keys];
    let mut history_of: Vec<Vec<Option<i64>>> = vec![vec![None]; keys];
    for i in order {
        let s = &mut sims[i];
        let reg = &mut registers[s.key];
        match s.f {
            Function::Read => s.read = *reg,
            Function::Write => {
                let applies = s.done == Done::Ok || (s.done == Done::Info && rng.percent(50));
                if applies {
                    *reg = Some(s.value);
                }
            }
            Function::Cas => {
                // Usually the current value (a client that read recently), sometimes an old one.
                let past = &history_of[s.key];
                s.expected = if rng.percent(70) {
                    *reg
                } else {
                    past[rng.below(past.len() as u64) as usize]
                };
                let swaps = s.expected == *reg && (s.done == Done::Ok || rng.percent(50));
                if swaps {
                    *reg = Some(s.value);
                } else if s.done == Done::Ok {
                    s.done = Done::Fail;
                }
            }
        }
        if history_of[s.key].last() != Some(reg) {
            history_of[s.key].push(*reg);
        }
    }
    sims
}

/// The simulated operations as JSON lines, in time order (completions before invocations at
/// the same instant, as a client that logs its completion before starting the next op would).
fn to_jsonl(sims: &[Sim]) -> String {
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * sims.len());
    for (i, s) in sims.iter().enumerate() {
        events.push((s.start, 1, i));
        events.push((s.end, 0, i));
    }
    events.sort_unstable();
    let mut out = String::new();
    for (t, completion, i) in events {
        let s = &sims[i];
        let kind = match (completion, s.done) {
            (1, _) => EventType::Invoke,
            (_, Done::Ok) => EventType::Ok,
            (_, Done::Fail) => EventType::Fail,
            (_, Done::Info) => EventType::Info,
        };
        let value = match s.f {
            Function::Read if kind == EventType::Ok => s.read.map(Value::Int),
            Function::Read => None,
            Function::Write => Some(Value::Int(s.value)),
            Function::Cas => Some(Value::Pair(s.expected, Some(s.value))),
        };
        let event = Event {
            process: s.process,
            kind,
            f: s.f,
            key: format!("k{}", s.key),
            value,
            time_ns: t,
            revision: None,
            serializable: false,
        };
        out += &serde_json::to_string(&event).unwrap_or_default();
        out.push('\n');
    }
    out
}

/// Plants a stale read: a read in the second half returns a value that an acknowledged write had
/// overwritten before the read began. Returns the read's process and start.
fn plant_stale_read(sims: &mut [Sim]) -> Option<(u64, u64)> {
    let ok_write = |s: &Sim| s.f == Function::Write && s.done == Done::Ok;
    for r in sims.len() / 2..sims.len() {
        if sims[r].f != Function::Read || sims[r].done != Done::Ok {
            continue;
        }
        let (key, start) = (sims[r].key, sims[r].start);
        let before: Vec<usize> = (0..r)
            .filter(|&w| sims[w].key == key && ok_write(&sims[w]) && sims[w].end < start)
            .collect();
        for &old in &before {
            let overwritten = before.iter().any(|&w| sims[w].start > sims[old].end);
            if overwritten && sims[r].read != Some(sims[old].value) {
                sims[r].read = Some(sims[old].value);
                return Some((sims[r].process, start));
            }
        }
    }
    None
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let out = f();
    (out, started.elapsed())
}

fn run(name: &str, jsonl: &str, limits: Limits) {
    let (history, parse) = time(|| History::read_jsonl(jsonl.as_bytes()));
    let history = match history {
        Ok(h) => h,
        Err(e) => {
            println!("{name}: generated history rejected: {e}");
            std::process::exit(1);
        }
    };
    let (report, took) = time(|| check(&history, Model::Register, limits));
    let states: usize = report.keys.iter().map(|k| k.states).sum();
    let searched: usize = report.keys.iter().map(|k| k.searched).sum();
    println!(
        "{name:<40} {:>6} ops {:>3} keys  parse {:>7.1} ms  check {:>8.1} ms  ({searched} searched, {states} states)  {}",
        history.len(),
        report.keys.len(),
        parse.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e3,
        report.verdict(),
    );
    if let Some(v) = report.violations().next() {
        println!("    {}", v.explanation.lines().next().unwrap_or_default());
    };
}

fn main() {
    let one_thread = Limits {
        threads: 1,
        time_budget: None,
        ..Limits::default()
    };
    let all_threads = Limits {
        threads: 0,
        time_budget: None,
        ..Limits::default()
    };

    let sims = generate(0x5eed_1234, 10_000, 10, 8);
    let good = to_jsonl(&sims);
    run("10k ops, 10 keys, 8 clients, 1 thread", &good, one_thread);
    run("10k ops, 10 keys, 8 clients, all cores", &good, all_threads);

    let mut bad_sims = generate(0x5eed_1234, 10_000, 10, 8);
    let planted = plant_stale_read(&mut bad_sims);
    println!("    (stale read planted: process/start {planted:?})");
    let bad = to_jsonl(&bad_sims);
    run("same, one stale read planted, 1 thread", &bad, one_thread);

    let one_key = to_jsonl(&generate(7, 10_000, 1, 8));
    run("10k ops, 1 key, 8 clients, 1 thread", &one_key, one_thread);
    let wide = to_jsonl(&generate(11, 10_000, 10, 32));
    run("10k ops, 10 keys, 32 clients, 1 thread", &wide, one_thread);
}
