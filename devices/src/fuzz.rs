//! Shared plumbing of the fuzz targets (test-only; `docs/fuzzing.md`).
//!
//! A fuzz target is an ordinary test named `fuzz_*` that hands a proptest strategy and a check to
//! [`run`]. It runs a small budget by default, so `cargo test` stays fast, and any budget with
//! `SIMVM_FUZZ_CASES=N`. The seed is fixed per target, so a run is reproducible; set
//! `SIMVM_FUZZ_SEED=S` for a different stream. A failure is shrunk to a small input and reported
//! with the seed.
//!
//! Every check asserts what a guest cannot be allowed to cause: a panic, an arithmetic overflow
//! (overflow checks are on in test builds, and in long runs with `-C overflow-checks=on`) or an
//! allocation without bound (the checks bound the size of every output and queue).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Counts how often each outcome of a target was reached, to show (and assert) that its inputs
/// get past the first checks.
#[derive(Debug, Default)]
pub struct Tally(BTreeMap<&'static str, u64>);

impl Tally {
    pub fn hit(&mut self, outcome: &'static str) {
        *self.0.entry(outcome).or_default() += 1;
    }

    pub fn count(&self, outcome: &str) -> u64 {
        self.0.get(outcome).copied().unwrap_or(0)
    }
}

/// Runs `check` on `SIMVM_FUZZ_CASES` inputs from `strategy` (else `default_cases`), prints the
/// count, the time taken and the outcomes (visible with `--nocapture`), and asserts that every
/// outcome in `expected` was reached at least once.
pub fn run<S>(
    name: &str,
    default_cases: u32,
    strategy: S,
    expected: &[&str],
    check: impl Fn(S::Value, &mut Tally),
) where
    S: Strategy,
    S::Value: Debug,
{
    let cases = env_number("SIMVM_FUZZ_CASES")
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(default_cases);
    let seed = env_number("SIMVM_FUZZ_SEED").unwrap_or_else(|| name_seed(name));
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        // Failures are reported with the seed, which replays them; no files in the source tree.
        failure_persistence: None,
        max_shrink_iters: 20_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let tally = RefCell::new(Tally::default());
    let start = Instant::now();
    let result = runner.run(&strategy, |input| {
        check(input, &mut tally.borrow_mut());
        Ok(())
    });
    let seconds = start.elapsed().as_secs_f64();
    let tally = tally.into_inner();
    let outcomes: Vec<String> = tally.0.iter().map(|(k, n)| format!("{k}={n}")).collect();
    eprintln!(
        "fuzz {name}: {cases} inputs in {seconds:.1} s (seed {seed}): {}",
        outcomes.join(" ")
    );
    if let Err(e) = result {
        panic!("fuzz {name} failed (SIMVM_FUZZ_SEED={seed}): {e}");
    }
    let missed: Vec<&str> = expected
        .iter()
        .copied()
        .filter(|outcome| !tally.0.contains_key(outcome))
        .collect();
    assert!(missed.is_empty(), "fuzz {name} never reached {missed:?}");
}

fn env_number(var: &str) -> Option<u64> {
    std::env::var(var).ok()?.trim().parse().ok()
}

/// FNV-1a of the target's name: each target its own fixed stream.
fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A `u64` a guest might write where an address goes: mostly inside `[0, mem_size)`, often near
/// its end, sometimes anywhere (overflowing when a length is added).
pub fn guest_addr(mem_size: u64) -> impl Strategy<Value = u64> + Clone {
    prop_oneof![
        6 => 0..mem_size,
        2 => mem_size.saturating_sub(64)..mem_size.saturating_add(64),
        1 => any::<u64>(),
        1 => (u64::MAX - 64)..=u64::MAX,
    ]
}

/// A `u32` a guest might write where a length goes: small, page-sized, at a power of two, or
/// anything up to `u32::MAX`.
pub fn guest_len() -> impl Strategy<Value = u32> + Clone {
    prop_oneof![
        4 => 0..=80u32,
        3 => 0..=4096u32,
        1 => (0..32u32).prop_map(|shift| 1 << shift),
        1 => (0..32u32).prop_map(|shift| (1u32 << shift).wrapping_sub(1)),
        1 => any::<u32>(),
    ]
}

/// A `u32` register value: zero, small, a single bit, all ones, or anything.
pub fn reg_value() -> impl Strategy<Value = u32> + Clone {
    prop_oneof![
        2 => 0..=16u32,
        1 => (0..32u32).prop_map(|bit| 1 << bit),
        1 => Just(u32::MAX),
        2 => any::<u32>(),
    ]
}

/// One buffer of a descriptor chain: address, length, device-writable.
pub type RefBuffer = (u64, u32, bool);

/// The buffers of the chain at `head`, as an independent reading of the virtio 1.x split-ring
/// rules finds them, or `None` if the chain breaks one: a descriptor index outside the table, a
/// loop, an indirect descriptor, a zero length, a buffer outside `mem`, more than `max_bytes` in
/// all, or a direction other than `only` (with `only` = `None`: a readable buffer after a
/// writable one). `mem` must be one region from address 0. The targets check the device's own
/// walker against it.
pub fn reference_chain(
    mem: &GuestMemoryMmap,
    table: u64,
    size: u16,
    head: u16,
    only: Option<bool>,
    max_bytes: u32,
) -> Option<Vec<RefBuffer>> {
    let mut visited = vec![false; usize::from(size)];
    let mut buffers = Vec::new();
    let mut total = 0u64;
    let mut index = head;
    loop {
        let seen = visited.get_mut(usize::from(index))?;
        if *seen {
            return None;
        }
        *seen = true;
        let mut raw = [0u8; 16];
        let at = table.checked_add(16 * u64::from(index))?;
        mem.read_slice(&mut raw, GuestAddress(at)).ok()?;
        let addr = u64::from_le_bytes(raw[0..8].try_into().ok()?);
        let len = u32::from_le_bytes(raw[8..12].try_into().ok()?);
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        let write = flags & 2 != 0;
        let wrong_direction = match only {
            Some(expected) => write != expected,
            None => !write && buffers.iter().any(|&(_, _, w)| w),
        };
        if flags & 4 != 0 || wrong_direction || len == 0 {
            return None;
        }
        total += u64::from(len);
        // `mem` is one region from address 0, and `len` is not zero.
        let last = addr.checked_add(u64::from(len) - 1)?;
        if total > u64::from(max_bytes) || last > mem.last_addr().0 {
            return None;
        }
        buffers.push((addr, len, write));
        if flags & 1 == 0 {
            return Some(buffers);
        }
        index = next;
    }
}

/// The bytes of `buffers`, in order.
pub fn read_buffers(mem: &GuestMemoryMmap, buffers: &[RefBuffer]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(addr, len, _) in buffers {
        let mut part = vec![0u8; len as usize];
        mem.read_slice(&mut part, GuestAddress(addr))
            .expect("a checked buffer");
        out.extend(part);
    }
    out
}

/// Bytes a device will have written by some point of a notification, so that a model reading
/// guest memory before the notification sees what the device saw at that point.
#[derive(Debug, Default)]
pub struct Overlay(pub BTreeMap<u64, u8>);

impl Overlay {
    pub fn write(&mut self, addr: u64, bytes: &[u8]) {
        self.0.extend((addr..).zip(bytes.iter().copied()));
    }

    /// The bytes of `buffers` in guest memory, with the overlay's on top.
    pub fn read(&self, mem: &GuestMemoryMmap, buffers: &[RefBuffer]) -> Vec<u8> {
        let mut bytes = read_buffers(mem, buffers);
        let mut at = 0;
        for &(addr, len, _) in buffers {
            for (&a, &b) in self.0.range(addr..addr + u64::from(len)) {
                bytes[at + usize::try_from(a - addr).expect("inside the buffer")] = b;
            }
            at += len as usize;
        }
        bytes
    }
}

/// Whether no two of `buffers` share a byte.
pub fn disjoint(buffers: &[RefBuffer]) -> bool {
    let mut spans: Vec<(u64, u64)> = buffers
        .iter()
        .map(|&(addr, len, _)| (addr, addr + u64::from(len)))
        .collect();
    spans.sort_unstable();
    spans.windows(2).all(|w| w[0].1 <= w[1].0)
}
