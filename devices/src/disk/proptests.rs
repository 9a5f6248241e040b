//! Property test of crash consistency: random writes, reads, flushes and time, then one crash
//! under any policy, then more traffic.
//!
//! Every write fills each of its sectors with a pattern naming the write and the sector, so the
//! origin of any sector's content can be read back. The oracle, per sector at the crash:
//!
//! - the content is the base or the pattern of a write that covered that sector;
//! - it is the last write to the sector that was durable (completed before the last completed
//!   FLUSH), or a write to it that came later (completed unflushed, or in flight);
//! - `keep-all` shows exactly the last completed write, `lose-all` exactly the durable one;
//! - writes survive in order and whole: if a sector shows write `w`, every other sector of `w`
//!   shows `w` or a later write (under `torn`, only the sectors before it in `w`).
//!
//! Between crashes, reads must return exactly the last completed writes, and completions must come
//! in FIFO order at non-decreasing times. The case count is `PROPTEST_CASES` (default 128).

use std::collections::BTreeMap;

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;

const DISK_SECTORS: u64 = 16;
const DEFAULT_CASES: u32 = 128;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

#[derive(Clone, Debug)]
enum Op {
    Write { sector: u64, sectors: u64 },
    Read { sector: u64, sectors: u32 },
    Flush,
    Advance { ns: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..DISK_SECTORS, 1..=4u64).prop_map(|(sector, sectors)| Op::Write {
            sector,
            sectors: sectors.min(DISK_SECTORS - sector),
        }),
        2 => (0..DISK_SECTORS, 1..=4u32).prop_map(|(sector, sectors)| Op::Read {
            sector,
            sectors: sectors.min((DISK_SECTORS - sector) as u32),
        }),
        1 => Just(Op::Flush),
        3 => (0..300_000u64).prop_map(|ns| Op::Advance { ns }),
    ]
}

fn policy() -> impl Strategy<Value = CrashPolicy> {
    prop::sample::select(CrashPolicy::ALL.to_vec())
}

/// Which write a sector's content came from, by write number; `None` is the base.
type Origin = Option<u64>;

#[derive(Clone, Copy, Debug)]
struct WriteInfo {
    number: u64,
    sector: u64,
    sectors: u64,
}

impl WriteInfo {
    fn covers(&self, sector: u64) -> bool {
        (self.sector..self.sector + self.sectors).contains(&sector)
    }
}

#[derive(Clone, Copy, Debug)]
enum Pending {
    Write(WriteInfo),
    Read { sector: u64, sectors: u32 },
    Flush,
}

/// The pattern of write `number` in `sector`: its number + 1 (never 0, so never the base), the
/// sector, and filler derived from both.
fn pattern(number: u64, sector: u64) -> Vec<u8> {
    let mut data = vec![(number as u8) ^ (sector as u8).rotate_left(3) ^ 0x5a; SECTOR_SIZE];
    data[..8].copy_from_slice(&(number + 1).to_le_bytes());
    data[8..16].copy_from_slice(&sector.to_le_bytes());
    data
}

/// The disk under test and what the oracle knows about it.
struct Harness {
    disk: Disk,
    now: u64,
    writes: Vec<WriteInfo>,
    pending: BTreeMap<RequestId, Pending>,
    last_submitted: Option<RequestId>,
    last_completed: Option<(RequestId, u64)>,
    visible: Vec<Origin>,
    durable: Vec<Origin>,
    since_flush: Vec<Vec<u64>>,
    unflushed: u64,
}

impl Harness {
    fn new(seed: u64) -> Self {
        let disk = Disk::new(
            BaseImage::zeros(DISK_SECTORS),
            Latency::default(),
            ChaCha20Rng::seed_from_u64(seed),
        );
        Self {
            disk,
            now: 0,
            writes: Vec::new(),
            pending: BTreeMap::new(),
            last_submitted: None,
            last_completed: None,
            visible: vec![None; DISK_SECTORS as usize],
            durable: vec![None; DISK_SECTORS as usize],
            since_flush: vec![Vec::new(); DISK_SECTORS as usize],
            unflushed: 0,
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Write { sector, sectors } => {
                let info = WriteInfo {
                    number: self.writes.len() as u64,
                    sector,
                    sectors,
                };
                self.writes.push(info);
                let data = (sector..sector + sectors)
                    .flat_map(|s| pattern(info.number, s))
                    .collect();
                self.submit(Request::Write { sector, data }, Pending::Write(info))?;
            }
            Op::Read { sector, sectors } => {
                self.submit(
                    Request::Read { sector, sectors },
                    Pending::Read { sector, sectors },
                )?;
            }
            Op::Flush => self.submit(Request::Flush, Pending::Flush)?,
            Op::Advance { ns } => self.now += ns,
        }
        self.complete_due()
    }

    fn submit(&mut self, request: Request, pending: Pending) -> Result<(), TestCaseError> {
        let submitted = self.disk.submit(self.now, request);
        prop_assert!(
            self.last_submitted.is_none_or(|last| submitted.id > last),
            "ids increase"
        );
        prop_assert!(submitted.completes_at_ns >= self.now);
        self.last_submitted = Some(submitted.id);
        self.pending.insert(submitted.id, pending);
        Ok(())
    }

    fn complete_due(&mut self) -> Result<(), TestCaseError> {
        for completion in self.disk.complete_due(self.now) {
            self.check_order(&completion)?;
            let pending = self.pending.remove(&completion.id);
            match (pending, completion.result) {
                (Some(Pending::Write(info)), Ok(Response::Written)) => self.written(info),
                (Some(Pending::Read { sector, sectors }), Ok(Response::Read(data))) => {
                    self.check_read(sector, sectors, &data)?;
                }
                (Some(Pending::Flush), Ok(Response::Flushed)) => self.flushed(),
                (pending, result) => {
                    prop_assert!(false, "{pending:?} completed with {result:?}");
                }
            }
        }
        Ok(())
    }

    fn check_order(&mut self, completion: &Completion) -> Result<(), TestCaseError> {
        prop_assert!(completion.at_ns <= self.now);
        if let Some((id, at_ns)) = self.last_completed {
            prop_assert!(completion.id > id && completion.at_ns >= at_ns, "FIFO");
        }
        self.last_completed = Some((completion.id, completion.at_ns));
        Ok(())
    }

    fn written(&mut self, info: WriteInfo) {
        for sector in info.sector..info.sector + info.sectors {
            self.visible[sector as usize] = Some(info.number);
            self.since_flush[sector as usize].push(info.number);
        }
        self.unflushed += 1;
    }

    fn flushed(&mut self) {
        self.durable.clone_from(&self.visible);
        self.since_flush.iter_mut().for_each(Vec::clear);
        self.unflushed = 0;
    }

    fn check_read(&self, sector: u64, sectors: u32, data: &[u8]) -> Result<(), TestCaseError> {
        for (index, chunk) in data.chunks(SECTOR_SIZE).enumerate() {
            let at = sector + index as u64;
            prop_assert_eq!(
                self.origin_of(at, chunk)?,
                self.visible[at as usize],
                "read of {}",
                at
            );
        }
        prop_assert_eq!(data.len(), sectors as usize * SECTOR_SIZE);
        Ok(())
    }

    /// The write whose pattern `content` is, failing on content no write put in `sector`.
    fn origin_of(&self, sector: u64, content: &[u8]) -> Result<Origin, TestCaseError> {
        if content.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let mut number = [0; 8];
        number.copy_from_slice(&content[..8]);
        let number = u64::from_le_bytes(number).wrapping_sub(1);
        let write = self.writes.get(number as usize);
        prop_assert!(
            write.is_some_and(|w| w.covers(sector)),
            "foreign data in {}",
            sector
        );
        prop_assert_eq!(
            content,
            &pattern(number, sector)[..],
            "corrupt data in {}",
            sector
        );
        Ok(Some(number))
    }

    fn shown(&self) -> Result<Vec<Origin>, TestCaseError> {
        (0..DISK_SECTORS)
            .map(|sector| {
                let mut content = vec![0; SECTOR_SIZE];
                self.disk
                    .read_visible(sector, &mut content)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                self.origin_of(sector, &content)
            })
            .collect()
    }

    fn crash_and_check(&mut self, policy: CrashPolicy, seed: u64) -> Result<(), TestCaseError> {
        let in_flight: Vec<WriteInfo> = self
            .pending
            .values()
            .filter_map(|pending| match pending {
                Pending::Write(info) => Some(*info),
                _ => None,
            })
            .collect();
        let outcome = self
            .disk
            .crash(policy, &mut ChaCha20Rng::seed_from_u64(seed));
        prop_assert_eq!(outcome.dropped_requests, self.pending.len() as u64);
        prop_assert_eq!(outcome.in_flight_writes, in_flight.len() as u64);
        prop_assert_eq!(outcome.unflushed_writes, self.unflushed);
        prop_assert_eq!(self.disk.in_flight(), 0);

        let shown = self.shown()?;
        for sector in 0..DISK_SECTORS {
            let index = sector as usize;
            let origin = shown[index];
            let later = |number| {
                self.since_flush[index].contains(&number)
                    || in_flight
                        .iter()
                        .any(|w| w.number == number && w.covers(sector))
            };
            prop_assert!(
                origin == self.durable[index] || origin.is_some_and(later),
                "sector {} shows {:?}: neither durable {:?} nor a later write",
                sector,
                origin,
                self.durable[index]
            );
            match policy {
                CrashPolicy::KeepAll => prop_assert_eq!(origin, self.visible[index]),
                CrashPolicy::LoseAll => prop_assert_eq!(origin, self.durable[index]),
                CrashPolicy::Subset | CrashPolicy::Torn => {}
            }
            if let Some(number) = origin {
                let torn =
                    policy == CrashPolicy::Torn && in_flight.iter().any(|w| w.number == number);
                self.check_whole_and_ordered(&shown, number, sector, torn)?;
            }
        }
        self.start_next_incarnation(shown);
        Ok(())
    }

    /// Write `number`, shown in `sector`, survived in full (or, if it may be torn, up to
    /// `sector`): each of those sectors shows it or a later write.
    fn check_whole_and_ordered(
        &self,
        shown: &[Origin],
        number: u64,
        sector: u64,
        torn: bool,
    ) -> Result<(), TestCaseError> {
        let write = self.writes[number as usize];
        let end = if torn {
            sector + 1
        } else {
            write.sector + write.sectors
        };
        for other in write.sector..end {
            prop_assert!(
                shown[other as usize].is_some_and(|n| n >= number),
                "write {} shows in sector {} but not in {}",
                number,
                sector,
                other
            );
        }
        Ok(())
    }

    fn start_next_incarnation(&mut self, shown: Vec<Origin>) {
        self.pending.clear();
        self.last_completed = None;
        self.durable.clone_from(&shown);
        self.visible = shown;
        self.since_flush.iter_mut().for_each(Vec::clear);
        self.unflushed = 0;
    }

    fn drain(&mut self) -> Result<(), TestCaseError> {
        while let Some(at) = self.disk.next_completion() {
            self.now = self.now.max(at);
            self.complete_due()?;
        }
        prop_assert!(self.pending.is_empty());
        let shown = self.shown()?;
        prop_assert_eq!(shown, self.visible.clone());
        Ok(())
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_crash_keeps_durable_data_and_only_written_data(
        before in prop::collection::vec(op(), 0..48),
        after in prop::collection::vec(op(), 0..12),
        policy in policy(),
        disk_seed in any::<u64>(),
        crash_seed in any::<u64>(),
    ) {
        let mut harness = Harness::new(disk_seed);
        for op in &before {
            harness.apply(op)?;
        }
        harness.crash_and_check(policy, crash_seed)?;
        for op in &after {
            harness.apply(op)?;
        }
        harness.drain()?;
    }
}
