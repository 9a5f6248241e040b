//! Unit tests of the disk model: visibility, durability, timing, validation, faults, base files,
//! images and crashes.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::faults::SectorRanges;
use super::latency::{exponential_ns, ln_integer};
use super::*;

const FIXED_NS: u64 = 1_000;

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// A blank disk whose every request takes exactly [`FIXED_NS`].
fn fixed_disk(sectors: u64) -> Disk {
    Disk::new(BaseImage::zeros(sectors), Latency::fixed(FIXED_NS), rng(1))
}

/// `sectors` sectors, each filled with `byte`.
fn filled(byte: u8, sectors: usize) -> Vec<u8> {
    vec![byte; sectors * SECTOR_SIZE]
}

/// Submits `request` at `now` and completes it, returning its result.
fn run(disk: &mut Disk, now: u64, request: Request) -> Result<Response, IoError> {
    let submitted = disk.submit(now, request);
    let mut completions = disk.complete_due(submitted.completes_at_ns);
    assert_eq!(completions.len(), 1, "exactly the one request completes");
    let completion = completions.remove(0);
    assert_eq!(completion.id, submitted.id);
    completion.result
}

fn write(disk: &mut Disk, sector: u64, data: Vec<u8>) {
    assert_eq!(
        run(disk, 0, Request::Write { sector, data }),
        Ok(Response::Written)
    );
}

fn flush(disk: &mut Disk) {
    assert_eq!(run(disk, 0, Request::Flush), Ok(Response::Flushed));
}

fn read(disk: &mut Disk, sector: u64, sectors: u32) -> Result<Vec<u8>, IoError> {
    match run(disk, 0, Request::Read { sector, sectors })? {
        Response::Read(data) => Ok(data),
        other => panic!("a read answered {other:?}"),
    }
}

fn visible(disk: &Disk, sector: u64, sectors: usize) -> Vec<u8> {
    let mut buf = vec![0; sectors * SECTOR_SIZE];
    disk.read_visible(sector, &mut buf).expect("in range");
    buf
}

/// A fresh path in the temporary directory, removed when dropped.
struct TempPath(PathBuf);

impl TempPath {
    fn new(name: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "simvm-disk-test-{}-{unique}-{name}",
            std::process::id()
        ));
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
        let _ = fs::remove_dir(&self.0);
    }
}

#[test]
fn a_write_is_visible_before_a_flush_but_not_durable() {
    let mut disk = fixed_disk(8);
    write(&mut disk, 2, filled(0xab, 2));
    assert_eq!(read(&mut disk, 2, 2), Ok(filled(0xab, 2)));
    assert_eq!(read(&mut disk, 1, 1), Ok(filled(0, 1)));
    assert_eq!(disk.unflushed_writes(), 1);

    disk.crash(CrashPolicy::LoseAll, &mut rng(0));
    assert_eq!(visible(&disk, 2, 2), filled(0, 2), "unflushed data lost");
}

#[test]
fn a_flush_makes_completed_writes_durable() {
    let mut disk = fixed_disk(8);
    write(&mut disk, 0, filled(1, 1));
    write(&mut disk, 1, filled(2, 1));
    flush(&mut disk);
    write(&mut disk, 1, filled(3, 1));
    assert_eq!(disk.unflushed_writes(), 1);

    let outcome = disk.crash(CrashPolicy::LoseAll, &mut rng(0));
    assert_eq!(outcome.unflushed_writes, 1);
    assert_eq!(visible(&disk, 0, 2), [filled(1, 1), filled(2, 1)].concat());
}

#[test]
fn a_flush_covers_writes_submitted_before_it_even_if_still_in_flight() {
    let mut disk = Disk::new(BaseImage::zeros(8), Latency::default(), rng(3));
    disk.submit(
        0,
        Request::Write {
            sector: 0,
            data: filled(7, 1),
        },
    );
    let flushed = disk.submit(0, Request::Flush);
    let completions = disk.complete_due(flushed.completes_at_ns);
    assert_eq!(completions.len(), 2);
    disk.crash(CrashPolicy::LoseAll, &mut rng(0));
    assert_eq!(visible(&disk, 0, 1), filled(7, 1));
}

#[test]
fn requests_complete_in_fifo_order_at_their_announced_times() {
    let mut disk = Disk::new(BaseImage::zeros(64), Latency::default(), rng(9));
    let latency = disk.latency();
    let mut submitted = Vec::new();
    for index in 0..50u64 {
        let now = index * 30_000;
        let request = if index % 5 == 4 {
            Request::Flush
        } else {
            Request::Write {
                sector: index % 64,
                data: filled(index as u8, 1),
            }
        };
        let answer = disk.submit(now, request);
        assert!(answer.completes_at_ns >= now + latency.min_ns);
        if let Some(previous) = submitted.last().map(|s: &Submitted| s.completes_at_ns) {
            assert!(answer.completes_at_ns >= previous, "never overtakes");
        }
        submitted.push(answer);
    }
    assert_eq!(disk.next_completion(), Some(submitted[0].completes_at_ns));
    assert!(disk
        .complete_due(submitted[0].completes_at_ns - 1)
        .is_empty());

    let mut completions = Vec::new();
    while let Some(at) = disk.next_completion() {
        completions.extend(disk.complete_due(at));
    }
    let got: Vec<_> = completions.iter().map(|c| (c.id, c.at_ns)).collect();
    let announced: Vec<_> = submitted
        .iter()
        .map(|s| (s.id, s.completes_at_ns))
        .collect();
    assert_eq!(got, announced);
    assert_eq!(disk.stats().completed, 50);
    assert_eq!(disk.stats().flushes, 10);
    assert_eq!(disk.stats().writes, 40);
}

#[test]
fn completions_due_together_come_in_id_order() {
    let mut disk = fixed_disk(8);
    let ids: Vec<_> = (0..4).map(|_| disk.submit(0, Request::Flush).id).collect();
    let completions = disk.complete_due(FIXED_NS);
    assert_eq!(completions.iter().map(|c| c.id).collect::<Vec<_>>(), ids);
    assert!(completions.iter().all(|c| c.at_ns == FIXED_NS));
}

fn completion_times(seed: u64, latency: Latency) -> Vec<u64> {
    let mut disk = Disk::new(BaseImage::zeros(8), latency, rng(seed));
    (0..200u64)
        .map(|index| {
            let now = index * 10_000_000;
            disk.submit(now, Request::Flush).completes_at_ns - now
        })
        .collect()
}

#[test]
fn latency_is_determined_by_the_seed_and_bounded() {
    let latency = Latency::default();
    let first = completion_times(5, latency);
    assert_eq!(first, completion_times(5, latency));
    assert_ne!(first, completion_times(6, latency));
    assert!(first
        .iter()
        .all(|&ns| ns >= latency.min_ns && ns <= latency.max_ns()));
    assert!(first.iter().any(|&ns| ns != first[0]), "latency varies");
}

#[test]
fn zero_mean_gives_a_fixed_latency() {
    let times = completion_times(5, Latency::fixed(42_000));
    assert!(times.iter().all(|&ns| ns == 42_000));
}

#[test]
fn exponential_draws_have_the_requested_mean_and_cap() {
    let mut stream = rng(77);
    let mean = 80_000u64;
    let draws = 40_000u64;
    let total: u64 = (0..draws)
        .map(|_| exponential_ns(mean, stream.next_u64()))
        .sum();
    let average = total / draws;
    assert!(average.abs_diff(mean) < mean / 25, "average {average}");
    assert_eq!(
        exponential_ns(mean, 0),
        20 * mean,
        "the smallest uniform is capped"
    );
    assert_eq!(exponential_ns(mean, u64::MAX), 0);
    assert_eq!(exponential_ns(u64::MAX, 0), u64::MAX);
}

#[test]
fn the_integer_logarithm_matches_the_platform_one() {
    // The platform `ln` is only the reference here; the model never calls it.
    for k in [
        1u64,
        2,
        3,
        10,
        1000,
        123_456_789,
        (1 << 40) + 12_345,
        1 << 53,
    ] {
        let ours = ln_integer(k);
        let reference = (k as f64).ln();
        assert!(
            (ours - reference).abs() <= 1e-12 * reference.max(1.0),
            "ln({k})"
        );
    }
}

#[test]
fn malformed_requests_complete_with_errors_in_their_place() {
    let mut disk = fixed_disk(16);
    let cases = [
        (
            Request::Read {
                sector: u64::MAX,
                sectors: 1,
            },
            IoError::OutOfRange,
        ),
        (
            Request::Read {
                sector: 15,
                sectors: 2,
            },
            IoError::OutOfRange,
        ),
        (
            Request::Read {
                sector: 16,
                sectors: 1,
            },
            IoError::OutOfRange,
        ),
        (
            Request::Read {
                sector: 0,
                sectors: 0,
            },
            IoError::Invalid,
        ),
        (
            Request::Read {
                sector: 0,
                sectors: u32::MAX,
            },
            IoError::Invalid,
        ),
        (
            Request::Read {
                sector: u64::MAX,
                sectors: u32::MAX,
            },
            IoError::Invalid,
        ),
        (
            Request::Write {
                sector: 0,
                data: Vec::new(),
            },
            IoError::Invalid,
        ),
        (
            Request::Write {
                sector: 0,
                data: vec![1; 100],
            },
            IoError::Invalid,
        ),
        (
            Request::Write {
                sector: 0,
                data: vec![1; SECTOR_SIZE + 1],
            },
            IoError::Invalid,
        ),
        (
            Request::Write {
                sector: u64::MAX,
                data: filled(1, 1),
            },
            IoError::OutOfRange,
        ),
        (
            Request::Write {
                sector: 15,
                data: filled(1, 2),
            },
            IoError::OutOfRange,
        ),
        (
            Request::Write {
                sector: 0,
                data: vec![0; MAX_REQUEST_BYTES + SECTOR_SIZE],
            },
            IoError::Invalid,
        ),
    ];
    let count = cases.len() as u64;
    for (index, (request, error)) in cases.into_iter().enumerate() {
        let now = index as u64;
        let submitted = disk.submit(now, request);
        assert_eq!(
            submitted.completes_at_ns,
            now + FIXED_NS,
            "queued like any request"
        );
        let completions = disk.complete_due(submitted.completes_at_ns);
        assert_eq!(completions.len(), 1);
        assert_eq!(completions[0].result, Err(error), "case {index}");
    }
    assert_eq!(disk.stats().errors, count);
    assert_eq!(visible(&disk, 0, 16), filled(0, 16), "nothing was written");
}

#[test]
fn the_largest_allowed_request_works() {
    let sectors = u64::from(MAX_REQUEST_SECTORS) + 1;
    let mut disk = fixed_disk(sectors);
    write(&mut disk, 1, vec![9; MAX_REQUEST_BYTES]);
    let data = read(&mut disk, 1, MAX_REQUEST_SECTORS).expect("read");
    assert!(data.len() == MAX_REQUEST_BYTES && data.iter().all(|&b| b == 9));
}

#[test]
fn read_visible_checks_its_arguments() {
    let disk = fixed_disk(4);
    assert_eq!(
        disk.read_visible(u64::MAX, &mut [0; SECTOR_SIZE]),
        Err(IoError::OutOfRange)
    );
    assert_eq!(
        disk.read_visible(3, &mut [0; 2 * SECTOR_SIZE]),
        Err(IoError::OutOfRange)
    );
    assert_eq!(disk.read_visible(0, &mut [0; 10]), Err(IoError::Invalid));
    assert_eq!(disk.read_visible(4, &mut []), Ok(()));
}

#[test]
fn latent_errors_fail_reads_until_each_sector_is_rewritten() {
    let mut disk = fixed_disk(16);
    disk.apply_fault(Fault::LatentErrors { start: 4, count: 4 });
    assert_eq!(read(&mut disk, 3, 2), Err(IoError::Medium));
    assert_eq!(read(&mut disk, 0, 4), Ok(filled(0, 4)));
    assert_eq!(read(&mut disk, 8, 1), Ok(filled(0, 1)));

    write(&mut disk, 5, filled(5, 1));
    assert_eq!(
        read(&mut disk, 5, 1),
        Ok(filled(5, 1)),
        "rewritten sector healed"
    );
    assert_eq!(read(&mut disk, 4, 1), Err(IoError::Medium));
    assert_eq!(read(&mut disk, 6, 2), Err(IoError::Medium));

    disk.apply_fault(Fault::Clear);
    assert_eq!(
        read(&mut disk, 4, 1),
        Err(IoError::Medium),
        "clear does not heal"
    );
    write(&mut disk, 4, filled(4, 1));
    write(&mut disk, 6, filled(6, 2));
    assert_eq!(
        read(&mut disk, 0, 16).map(|data| data.len()),
        Ok(16 * SECTOR_SIZE)
    );
}

#[test]
fn huge_fault_ranges_are_clamped_to_the_disk() {
    let mut disk = fixed_disk(16);
    disk.apply_fault(Fault::LatentErrors {
        start: 10,
        count: u64::MAX,
    });
    disk.apply_fault(Fault::LatentErrors {
        start: u64::MAX,
        count: u64::MAX,
    });
    disk.apply_fault(Fault::WriteErrors {
        start: 100,
        count: 5,
    });
    assert_eq!(disk.faults.latent.intervals(), [(10, 16)]);
    assert!(disk.faults.write_errors.intervals().is_empty());
    assert_eq!(read(&mut disk, 15, 1), Err(IoError::Medium));
}

#[test]
fn write_errors_fail_writes_without_effect_until_cleared() {
    let mut disk = fixed_disk(16);
    disk.apply_fault(Fault::WriteErrors { start: 8, count: 2 });
    assert_eq!(
        run(
            &mut disk,
            0,
            Request::Write {
                sector: 7,
                data: filled(1, 2)
            }
        ),
        Err(IoError::Medium)
    );
    assert_eq!(
        visible(&disk, 7, 2),
        filled(0, 2),
        "a failed write changes nothing"
    );
    write(&mut disk, 6, filled(2, 2));
    assert_eq!(read(&mut disk, 8, 1), Ok(filled(0, 1)), "reads still work");

    disk.apply_fault(Fault::Clear);
    write(&mut disk, 7, filled(3, 2));
    assert_eq!(visible(&disk, 7, 2), filled(3, 2));
    assert_eq!(disk.stats().errors, 1);
}

#[test]
fn a_stall_holds_back_requests_in_flight_and_new_ones() {
    let mut disk = fixed_disk(16);
    let before = disk.submit(0, Request::Flush);
    assert_eq!(before.completes_at_ns, FIXED_NS);
    disk.apply_fault(Fault::Stall { until_ns: 50_000 });
    assert_eq!(disk.next_completion(), Some(50_000));
    assert!(disk.complete_due(49_999).is_empty());
    let during = disk.submit(10_000, Request::Flush);
    assert_eq!(during.completes_at_ns, 50_000);
    let after = disk.submit(60_000, Request::Flush);
    assert_eq!(
        after.completes_at_ns,
        60_000 + FIXED_NS,
        "the stall is over"
    );
    assert_eq!(disk.complete_due(50_000).len(), 2);
    assert_eq!(disk.complete_due(60_000 + FIXED_NS).len(), 1);

    disk.apply_fault(Fault::Stall {
        until_ns: 1_000_000,
    });
    disk.apply_fault(Fault::Clear);
    assert_eq!(
        disk.submit(70_000, Request::Flush).completes_at_ns,
        70_000 + FIXED_NS
    );
}

#[test]
fn slowness_adds_latency_until_it_ends() {
    let mut disk = fixed_disk(16);
    disk.apply_fault(Fault::Slow { extra_ns: 7_000 });
    assert_eq!(
        disk.submit(0, Request::Flush).completes_at_ns,
        FIXED_NS + 7_000
    );
    disk.apply_fault(Fault::Slow { extra_ns: 0 });
    assert_eq!(
        disk.submit(100_000, Request::Flush).completes_at_ns,
        100_000 + FIXED_NS
    );
    disk.apply_fault(Fault::Slow { extra_ns: u64::MAX });
    assert_eq!(
        disk.submit(200_000, Request::Flush).completes_at_ns,
        u64::MAX,
        "saturates"
    );
    disk.apply_fault(Fault::Clear);
    assert_eq!(disk.complete_due(u64::MAX).len(), 3);
    assert_eq!(
        disk.submit(300_000, Request::Flush).completes_at_ns,
        300_000 + FIXED_NS
    );
}

#[test]
fn sector_ranges_merge_split_and_intersect() {
    let mut ranges = SectorRanges::default();
    ranges.insert(10, 20);
    ranges.insert(30, 40);
    ranges.insert(20, 25);
    assert_eq!(
        ranges.intervals(),
        [(10, 25), (30, 40)],
        "touching ranges merge"
    );
    ranges.insert(5, 35);
    assert_eq!(ranges.intervals(), [(5, 40)]);
    ranges.remove(10, 12);
    ranges.remove(38, 100);
    ranges.remove(0, 6);
    assert_eq!(ranges.intervals(), [(6, 10), (12, 38)]);
    assert!(ranges.intersects(9, 11));
    assert!(!ranges.intersects(10, 12));
    assert!(ranges.intersects(0, u64::MAX));
    assert!(!ranges.intersects(38, u64::MAX));
    assert!(!ranges.intersects(7, 7), "an empty range touches nothing");
    ranges.remove(13, 14);
    assert_eq!(ranges.intervals(), [(6, 10), (12, 13), (14, 38)]);
    ranges.insert(0, u64::MAX);
    assert_eq!(ranges.intervals(), [(0, u64::MAX)]);
}

#[test]
fn a_base_file_is_read_with_a_zero_tail() {
    let file = TempPath::new("short-tail.img");
    let contents: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8 + 1).collect();
    fs::write(file.path(), &contents).expect("write base");

    let base = BaseImage::open(file.path()).expect("open");
    assert_eq!(base.sectors(), 2);
    assert_eq!(base.path(), Some(file.path()));
    let mut disk = Disk::new(
        base.with_sectors(4).expect("grow"),
        Latency::fixed(FIXED_NS),
        rng(1),
    );
    assert_eq!(disk.sectors(), 4);
    let data = read(&mut disk, 0, 4).expect("read");
    assert_eq!(&data[..1000], &contents[..]);
    assert!(data[1000..].iter().all(|&b| b == 0));
    assert_eq!(read(&mut disk, 1, 1).expect("read")[..488], contents[512..]);
}

#[test]
fn base_file_errors_name_the_path() {
    let missing = TempPath::new("missing.img");
    let error = BaseImage::open(missing.path()).expect_err("missing");
    assert!(matches!(error, DiskError::Open { .. }));
    assert!(error
        .to_string()
        .contains(&missing.path().display().to_string()));

    let directory = TempPath::new("directory.img");
    fs::create_dir(directory.path()).expect("mkdir");
    let error = BaseImage::open(directory.path()).expect_err("directory");
    assert!(matches!(error, DiskError::NotAFile { .. }));
    assert!(error
        .to_string()
        .contains(&directory.path().display().to_string()));

    let file = TempPath::new("three-sectors.img");
    fs::write(file.path(), filled(1, 3)).expect("write base");
    let error = BaseImage::open(file.path()).and_then(|base| base.with_sectors(2));
    assert!(matches!(
        error,
        Err(DiskError::SmallerThanBase {
            requested: 2,
            file_sectors: 3,
            ..
        })
    ));
    assert!(BaseImage::zeros(5).with_sectors(1).is_ok());
}

#[test]
fn write_image_round_trips_the_visible_contents() {
    let base_file = TempPath::new("image-base.img");
    let mut base_contents = filled(0x11, 3);
    base_contents.extend(filled(0, 2));
    base_contents.extend(vec![0x22; 300]);
    fs::write(base_file.path(), &base_contents).expect("write base");
    let base = BaseImage::open(base_file.path())
        .expect("open")
        .with_sectors(4096)
        .expect("grow");
    let mut disk = Disk::new(base, Latency::fixed(FIXED_NS), rng(1));
    write(&mut disk, 1, filled(0x33, 2));
    write(&mut disk, 4000, filled(0x44, 8));
    flush(&mut disk);
    write(&mut disk, 2, filled(0x55, 1));
    write(&mut disk, 4095, filled(0x66, 1));
    write(&mut disk, 4003, filled(0x77, 1));

    let image = TempPath::new("image-out.img");
    fs::write(image.path(), vec![0xff; 3 * 1024 * 1024]).expect("pre-existing junk");
    disk.write_image(image.path()).expect("write image");
    let written = fs::read(image.path()).expect("read image");
    assert_eq!(written.len(), 4096 * SECTOR_SIZE);
    assert_eq!(written, visible(&disk, 0, 4096));
    assert_eq!(&written[SECTOR_SIZE..2 * SECTOR_SIZE], &filled(0x33, 1)[..]);
    assert_eq!(
        &written[2 * SECTOR_SIZE..3 * SECTOR_SIZE],
        &filled(0x55, 1)[..]
    );

    let reopened = Disk::new(
        BaseImage::open(image.path()).expect("reopen"),
        Latency::default(),
        rng(2),
    );
    assert_eq!(visible(&reopened, 0, 4096), written);
}

#[test]
fn write_image_refuses_to_overwrite_its_base() {
    let base_file = TempPath::new("own-base.img");
    fs::write(base_file.path(), filled(0x11, 2)).expect("write base");
    let disk = Disk::new(
        BaseImage::open(base_file.path()).expect("open"),
        Latency::default(),
        rng(1),
    );
    let error = disk.write_image(base_file.path()).expect_err("refused");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(
        fs::read(base_file.path()).expect("read"),
        filled(0x11, 2),
        "untouched"
    );
}

#[test]
fn crash_policies_parse_and_display_their_names() {
    for policy in CrashPolicy::ALL {
        assert_eq!(policy.to_string().parse::<CrashPolicy>(), Ok(policy));
    }
    assert_eq!("keep-all".parse(), Ok(CrashPolicy::KeepAll));
    assert_eq!("torn".parse(), Ok(CrashPolicy::Torn));
    assert_eq!(CrashPolicy::default(), CrashPolicy::Subset);
    let error = "keepall".parse::<CrashPolicy>().expect_err("unknown");
    let message = error.to_string();
    assert!(message.contains("\"keepall\""), "{message}");
    for name in ["keep-all", "lose-all", "subset", "torn"] {
        assert!(message.contains(name), "{message}");
    }
}

#[test]
fn keep_all_keeps_completed_unflushed_writes_and_loses_in_flight_ones() {
    let mut disk = fixed_disk(8);
    write(&mut disk, 0, filled(1, 1));
    write(&mut disk, 1, filled(2, 2));
    disk.submit(
        0,
        Request::Write {
            sector: 3,
            data: filled(3, 1),
        },
    );
    disk.submit(
        0,
        Request::Read {
            sector: 0,
            sectors: 1,
        },
    );
    let outcome = disk.crash(CrashPolicy::KeepAll, &mut rng(0));
    assert_eq!(
        outcome,
        CrashOutcome {
            policy: CrashPolicy::KeepAll,
            dropped_requests: 2,
            unflushed_writes: 2,
            in_flight_writes: 1,
            writes_lost: 1,
            sectors_lost: 1,
            writes_torn: 0,
        }
    );
    assert_eq!(
        visible(&disk, 0, 4),
        [filled(1, 1), filled(2, 2), filled(0, 1)].concat()
    );
    assert_eq!(
        outcome.to_string(),
        "crash policy=keep-all unflushed=2 in-flight=1 lost=1 writes (1 sectors) torn=0 \
         dropped=2 requests"
    );
}

#[test]
fn lose_all_keeps_only_flushed_data() {
    let mut disk = fixed_disk(8);
    write(&mut disk, 0, filled(1, 2));
    flush(&mut disk);
    write(&mut disk, 1, filled(2, 2));
    disk.submit(
        0,
        Request::Write {
            sector: 0,
            data: filled(3, 1),
        },
    );
    let outcome = disk.crash(CrashPolicy::LoseAll, &mut rng(0));
    assert_eq!((outcome.writes_lost, outcome.sectors_lost), (2, 3));
    assert_eq!(visible(&disk, 0, 3), [filled(1, 2), filled(0, 1)].concat());
}

#[test]
fn subset_keeps_a_mix_where_later_writes_survive_earlier_lost_ones() {
    let mut disk = fixed_disk(64);
    for sector in 0..40u64 {
        write(&mut disk, sector, filled(sector as u8 + 1, 1));
    }
    let outcome = disk.crash(CrashPolicy::Subset, &mut rng(2024));
    let kept: Vec<bool> = (0..40u64)
        .map(|sector| visible(&disk, sector, 1) == filled(sector as u8 + 1, 1))
        .collect();
    let kept_count = kept.iter().filter(|&&k| k).count() as u64;
    assert!(kept_count > 0 && kept_count < 40, "kept {kept_count} of 40");
    assert_eq!(outcome.writes_lost, 40 - kept_count);
    let first_lost = kept.iter().position(|&k| !k).expect("one lost");
    assert!(
        kept[first_lost..].contains(&true),
        "a later write survives an earlier lost one"
    );
    for sector in 0..40u64 {
        let content = visible(&disk, sector, 1);
        assert!(content == filled(0, 1) || content == filled(sector as u8 + 1, 1));
    }
}

#[test]
fn subset_decisions_follow_the_crash_rng() {
    let crashed = |seed| {
        let mut disk = fixed_disk(32);
        for sector in 0..32u64 {
            write(&mut disk, sector, filled(0xee, 1));
        }
        disk.crash(CrashPolicy::Subset, &mut rng(seed));
        visible(&disk, 0, 32)
    };
    assert_eq!(crashed(1), crashed(1));
    assert_ne!(crashed(1), crashed(2));
}

#[test]
fn torn_keeps_a_prefix_of_an_in_flight_write() {
    let sectors = 8usize;
    let mut strictly_torn = 0;
    for seed in 0..32 {
        let mut disk = fixed_disk(16);
        write(&mut disk, 0, filled(1, sectors));
        flush(&mut disk);
        disk.submit(
            0,
            Request::Write {
                sector: 0,
                data: filled(2, sectors),
            },
        );
        let outcome = disk.crash(CrashPolicy::Torn, &mut rng(seed));
        assert_eq!(outcome.in_flight_writes, 1);

        let contents = visible(&disk, 0, sectors);
        let new_sectors = contents
            .chunks(SECTOR_SIZE)
            .take_while(|sector| sector.iter().all(|&b| b == 2))
            .count();
        let expected = [filled(2, new_sectors), filled(1, sectors - new_sectors)].concat();
        assert_eq!(contents, expected, "seed {seed}: a prefix of the new write");
        if (1..sectors).contains(&new_sectors) {
            strictly_torn += 1;
            assert_eq!(outcome.writes_torn, 1);
            assert_eq!(outcome.sectors_lost, (sectors - new_sectors) as u64);
        }
    }
    assert!(strictly_torn > 0, "some seed tears the write");
}

#[test]
fn torn_keeps_completed_unflushed_writes_whole() {
    for seed in 0..16 {
        let mut disk = fixed_disk(16);
        write(&mut disk, 0, filled(1, 8));
        let outcome = disk.crash(CrashPolicy::Torn, &mut rng(seed));
        let contents = visible(&disk, 0, 8);
        assert!(
            contents == filled(1, 8) || contents == filled(0, 8),
            "seed {seed}"
        );
        assert_eq!(outcome.writes_torn, 0);
    }
}

#[test]
fn an_in_flight_write_blocked_by_a_write_fault_never_survives() {
    let mut disk = fixed_disk(16);
    disk.apply_fault(Fault::WriteErrors { start: 0, count: 1 });
    for seed in 0..8 {
        disk.submit(
            0,
            Request::Write {
                sector: 0,
                data: filled(9, 2),
            },
        );
        let outcome = disk.crash(CrashPolicy::Torn, &mut rng(seed));
        assert_eq!((outcome.in_flight_writes, outcome.writes_lost), (1, 1));
        assert_eq!(visible(&disk, 0, 2), filled(0, 2));
    }
}

#[test]
fn after_a_crash_the_disk_is_empty_of_requests_and_ids_keep_increasing() {
    let mut disk = fixed_disk(8);
    let before = disk.submit(0, Request::Flush);
    disk.submit(
        0,
        Request::Read {
            sector: 0,
            sectors: 1,
        },
    );
    disk.crash(CrashPolicy::default(), &mut rng(0));
    assert_eq!(disk.in_flight(), 0);
    assert_eq!(disk.next_completion(), None);
    assert!(disk.complete_due(u64::MAX).is_empty());
    assert_eq!((disk.stats().dropped, disk.stats().crashes), (2, 1));

    let after = disk.submit(5, Request::Flush);
    assert!(after.id > before.id);
    assert_eq!(after.id, RequestId(2));
    assert_eq!(after.completes_at_ns, 5 + FIXED_NS);
}

#[test]
fn a_full_write_cache_writes_back_its_oldest_writes() {
    let mut disk = fixed_disk(8).with_write_cache_limit(2 * SECTOR_SIZE as u64);
    for sector in 0..4u64 {
        write(&mut disk, sector, filled(sector as u8 + 1, 1));
    }
    assert_eq!(disk.unflushed_writes(), 2);
    assert_eq!(
        visible(&disk, 0, 4),
        (1..=4).flat_map(|b| filled(b, 1)).collect::<Vec<_>>()
    );
    disk.crash(CrashPolicy::LoseAll, &mut rng(0));
    assert_eq!(
        visible(&disk, 0, 4),
        [filled(1, 1), filled(2, 1), filled(0, 2)].concat()
    );
}

#[test]
fn a_write_through_cache_makes_every_write_durable() {
    let mut disk = fixed_disk(8).with_write_cache_limit(0);
    write(&mut disk, 0, filled(1, 1));
    write(&mut disk, 0, filled(2, 1));
    assert_eq!(disk.unflushed_writes(), 0);
    disk.crash(CrashPolicy::LoseAll, &mut rng(0));
    assert_eq!(visible(&disk, 0, 1), filled(2, 1));
}

#[test]
fn stats_count_what_completed() {
    let mut disk = fixed_disk(8);
    write(&mut disk, 0, filled(1, 3));
    read(&mut disk, 0, 2).expect("read");
    flush(&mut disk);
    let _ = read(&mut disk, 8, 1);
    assert_eq!(
        disk.stats(),
        DiskStats {
            submitted: 4,
            completed: 4,
            reads: 1,
            writes: 1,
            flushes: 1,
            sectors_read: 2,
            sectors_written: 3,
            errors: 1,
            dropped: 0,
            crashes: 0,
        }
    );
}

#[test]
fn fault_descriptions_are_readable() {
    assert_eq!(
        Fault::LatentErrors { start: 1, count: 2 }.to_string(),
        "latent-errors start=1 count=2"
    );
    assert_eq!(Fault::Stall { until_ns: 5 }.to_string(), "stall until_ns=5");
    assert_eq!(Fault::Clear.to_string(), "clear");
}
