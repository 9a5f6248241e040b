//! Saving a disk, restoring it into a disk opened again over the same base, and checking that
//! the two behave alike.

use std::fs;
use std::path::PathBuf;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::super::*;
use super::{SectorRun, SectorSpan};
use crate::snapshot::SnapshotError;

const CAPACITY: u64 = 64;
/// Small enough that the oldest unflushed write has been written back.
const CACHE_LIMIT: u64 = 8 * SECTOR_BYTES;
const LATENCY: Latency = Latency {
    min_ns: 1_000,
    mean_ns: 10_000,
};
const STALL_UNTIL_NS: u64 = 1_000_000_000;
const SLOW_NS: u64 = 7_000;

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// A host file of 32 patterned sectors, removed when dropped.
struct BaseFile(PathBuf);

impl BaseFile {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("simvm-disk-state-{}-{name}", std::process::id()));
        let pattern: Vec<u8> = (0..32 * SECTOR_SIZE).map(|i| (i % 251) as u8).collect();
        fs::write(&path, pattern).unwrap();
        Self(path)
    }

    /// A fresh disk over this base, as the VMM would open it again.
    fn open(&self, seed: u64) -> Disk {
        let base = BaseImage::open(&self.0)
            .unwrap()
            .with_sectors(CAPACITY)
            .unwrap();
        Disk::new(base, LATENCY, rng(seed)).with_write_cache_limit(CACHE_LIMIT)
    }
}

impl Drop for BaseFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Submits `request` at `now` and completes it, returning its result.
fn run(disk: &mut Disk, now: u64, request: Request) -> Result<Response, IoError> {
    let submitted = disk.submit(now, request);
    let mut completions = disk.complete_due(submitted.completes_at_ns);
    assert_eq!(completions.len(), 1);
    completions.remove(0).result
}

fn write(disk: &mut Disk, sector: u64, byte: u8, sectors: usize) {
    let data = vec![byte; sectors * SECTOR_SIZE];
    assert_eq!(
        run(disk, 0, Request::Write { sector, data }),
        Ok(Response::Written)
    );
}

fn whole(disk: &Disk) -> Vec<u8> {
    let mut buf = vec![0; CAPACITY as usize * SECTOR_SIZE];
    disk.read_visible(0, &mut buf).unwrap();
    buf
}

/// Flushed writes, unflushed writes that overlap (so their order matters), one written back by
/// the cache bound, and every kind of fault.
fn busy_disk(base: &BaseFile) -> Disk {
    let mut disk = base.open(1);
    write(&mut disk, 0, 0xa1, 4);
    write(&mut disk, 10, 0xa2, 2);
    assert_eq!(run(&mut disk, 0, Request::Flush), Ok(Response::Flushed));
    write(&mut disk, 2, 0xb1, 4); // written back by the later writes
    write(&mut disk, 20, 0xb2, 1);
    write(&mut disk, 3, 0xb3, 2);
    write(&mut disk, 31, 0xb4, 4); // straddles the end of the base file
    disk.apply_fault(Fault::LatentErrors {
        start: 40,
        count: 2,
    });
    disk.apply_fault(Fault::LatentErrors {
        start: 44,
        count: 1,
    });
    disk.apply_fault(Fault::WriteErrors {
        start: 50,
        count: 3,
    });
    disk.apply_fault(Fault::Slow { extra_ns: SLOW_NS });
    disk.apply_fault(Fault::Stall {
        until_ns: STALL_UNTIL_NS,
    });
    assert_eq!(disk.unflushed_writes(), 3, "the oldest was written back");
    disk
}

/// `busy_disk`, and a disk opened over the same base and restored from its state after a trip
/// through JSON.
fn original_and_restored(base: &BaseFile, seed: u64) -> (Disk, Disk) {
    let original = busy_disk(base);
    let state = original.save().unwrap();
    let json = serde_json::to_string(&state).unwrap();
    let decoded: DiskState = serde_json::from_str(&json).unwrap();
    assert_eq!(decoded, state);
    let mut restored = base.open(99);
    restored.restore(&decoded, rng(seed)).unwrap();
    (original, restored)
}

#[test]
fn saved_state_survives_json_and_restore() {
    let base = BaseFile::new("round-trip");
    let (original, restored) = original_and_restored(&base, 5);
    let state = original.save().unwrap();
    assert_eq!(restored.save().unwrap(), state);
    let extents = |runs: &[SectorRun]| {
        runs.iter()
            .map(|run| (run.sector, run.data.len() / SECTOR_SIZE))
            .collect::<Vec<_>>()
    };
    assert_eq!(extents(&state.durable), [(0, 6), (10, 2)], "runs merged");
    assert_eq!(extents(&state.volatile), [(2, 4), (20, 1), (31, 4)]);
    assert_eq!(extents(&state.unflushed), [(20, 1), (3, 2), (31, 4)]);
    assert_eq!(
        state.latent_errors,
        [
            SectorSpan { start: 40, end: 42 },
            SectorSpan { start: 44, end: 45 }
        ]
    );
    assert_eq!(state.next_id, 7);
    assert_eq!(restored.stats(), DiskStats::default());
}

#[test]
fn restored_disk_reads_and_faults_like_the_original() {
    let base = BaseFile::new("reads");
    let (mut original, mut restored) = original_and_restored(&base, 5);
    assert_eq!(whole(&restored), whole(&original));
    assert_ne!(whole(&restored), whole(&base.open(1)), "writes restored");
    for disk in [&mut original, &mut restored] {
        let read =
            |disk: &mut Disk, sector, sectors| run(disk, 0, Request::Read { sector, sectors });
        assert_eq!(read(disk, 41, 1), Err(IoError::Medium));
        assert_eq!(read(disk, 44, 1), Err(IoError::Medium));
        assert!(read(disk, 42, 2).is_ok());
        let data = vec![0; SECTOR_SIZE];
        assert_eq!(
            run(disk, 0, Request::Write { sector: 52, data }),
            Err(IoError::Medium)
        );
    }
    for (sector, sectors) in [(0, 6), (10, 2), (20, 1), (31, 4)] {
        let read = |disk: &mut Disk| run(disk, 0, Request::Read { sector, sectors });
        assert_eq!(read(&mut restored), read(&mut original));
    }
}

#[test]
fn restored_disk_crashes_like_the_original() {
    let base = BaseFile::new("crash");
    for policy in CrashPolicy::ALL {
        let (mut original, mut restored) = original_and_restored(&base, 5);
        let before = whole(&original);
        let outcome = original.crash(policy, &mut rng(3));
        assert_eq!(restored.crash(policy, &mut rng(3)), outcome, "{policy}");
        assert_eq!(whole(&restored), whole(&original), "{policy}");
        assert_eq!(outcome.unflushed_writes, 3, "{policy}");
        if policy == CrashPolicy::LoseAll {
            assert_ne!(whole(&original), before, "unflushed writes were lost");
        }
    }
}

#[test]
fn restored_disk_draws_from_the_new_stream_under_the_saved_stall_and_slowness() {
    let base = BaseFile::new("stream");
    let (_, mut restored) = original_and_restored(&base, 5);
    let mut expected = rng(5);
    let held = restored.submit(0, Request::Flush);
    LATENCY.draw(&mut expected);
    assert_eq!(held.id, RequestId(7), "ids continue");
    assert_eq!(held.completes_at_ns, STALL_UNTIL_NS, "the stall holds");
    restored.complete_due(STALL_UNTIL_NS);
    let now = 2 * STALL_UNTIL_NS;
    let next = restored.submit(now, Request::Flush);
    assert_eq!(
        next.completes_at_ns,
        now + LATENCY.draw(&mut expected) + SLOW_NS
    );
}

#[test]
fn save_refuses_requests_in_flight() {
    let base = BaseFile::new("in-flight");
    let mut disk = base.open(1);
    disk.submit(0, Request::Flush);
    assert!(disk.has_in_flight());
    assert!(matches!(disk.save(), Err(SnapshotError::Invalid(_))));
    let state = busy_disk(&base).save().unwrap();
    assert!(matches!(
        disk.restore(&state, rng(5)),
        Err(SnapshotError::Invalid(_))
    ));
}

#[test]
fn restore_refuses_what_does_not_fit_and_changes_nothing() {
    let base = BaseFile::new("refusals");
    let good = busy_disk(&base).save().unwrap();
    let mut disk = base.open(1);
    write(&mut disk, 5, 0xcc, 1);
    let before = disk.save().unwrap();

    let mut bigger = Disk::new(BaseImage::zeros(CAPACITY + 1), LATENCY, rng(1))
        .with_write_cache_limit(CACHE_LIMIT);
    assert!(matches!(
        bigger.restore(&good, rng(5)),
        Err(SnapshotError::Mismatch { .. })
    ));
    let mut default_cache = Disk::new(
        BaseImage::open(&base.0)
            .unwrap()
            .with_sectors(CAPACITY)
            .unwrap(),
        LATENCY,
        rng(1),
    );
    assert!(matches!(
        default_cache.restore(&good, rng(5)),
        Err(SnapshotError::Mismatch { .. })
    ));

    let beyond = |state: &mut DiskState| {
        state.volatile.push(SectorRun {
            sector: CAPACITY - 1,
            data: vec![0; 2 * SECTOR_SIZE],
        });
    };
    let partial = |state: &mut DiskState| {
        state.durable[0].data.pop();
    };
    let unflushed_beyond = |state: &mut DiskState| state.unflushed[0].sector = CAPACITY;
    let fault_beyond = |state: &mut DiskState| {
        state.write_errors.push(SectorSpan {
            start: CAPACITY,
            end: CAPACITY + 1,
        });
    };
    let overlap = |state: &mut DiskState| state.durable[1].sector = 1;
    let breaks: [&dyn Fn(&mut DiskState); 5] = [
        &beyond,
        &partial,
        &unflushed_beyond,
        &fault_beyond,
        &overlap,
    ];
    for (index, break_state) in breaks.iter().enumerate() {
        let mut bad = good.clone();
        break_state(&mut bad);
        assert!(
            matches!(disk.restore(&bad, rng(5)), Err(SnapshotError::Invalid(_))),
            "case {index}"
        );
        assert_eq!(disk.save().unwrap(), before, "case {index} changed nothing");
    }
}
