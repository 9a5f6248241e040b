//! Disks and crashes with real guests: what a killed machine's disk keeps under each crash
//! policy, ext4 recovering its journal in the next incarnation, a seed replaying the disk
//! exactly, and a program run from a disk holding a recipe's files. Each world boots several
//! machines at once, because every boot costs seconds of emulated kernel time on a PVM host.

use std::path::Path;

use simvm_tests::{
    image, kvm_or_skip, run_scenario_on, side_by_side, temp_dir, Image, Run, TempDir,
};

const SECTOR: usize = 512;
/// Where the unflushed record of iteration `k` goes: sector `UNSYNCED_BASE + k`.
const UNSYNCED_BASE: usize = 4096;
const POLICIES: [&str; 4] = ["keep-all", "lose-all", "subset", "torn"];

/// Each iteration `k` writes record `u<k>` to sector 4096+k (it reaches the disk's volatile
/// cache when `dd` closes the device, with no flush) and says `wrote k`; 90 ms later it writes
/// `s<k>` to sector k, flushes the disk (`sync -d` is fdatasync on the device, a virtio-blk
/// FLUSH) and says `synced k`. Guest work costs little virtual time, so most kills fall in the
/// 90 ms between a write and its flush.
const WRITER: &str = "i=0; while :; do i=$((i+1)); \
     echo u$i | dd of=/dev/vda bs=512 seek=$((4096+i)) conv=notrunc,sync 2>/dev/null; \
     echo wrote $i; sleep 0.09; \
     echo s$i | dd of=/dev/vda bs=512 seek=$i conv=notrunc,sync 2>/dev/null; \
     sync -d /dev/vda && echo synced $i; sleep 0.01; done";

/// A world of one machine per crash policy, all killed at `kill_at_ms` of virtual time.
fn policy_scenario(kill_at_ms: u64) -> String {
    let mut text = format!("until = \"{}ms\"\n", kill_at_ms + 10);
    for policy in POLICIES {
        let name = policy.replace('-', "");
        text.push_str(&format!(
            "[[machine]]\nname = \"{name}\"\nexpect = \"any\"\ncommand = \"{WRITER}\"\n\
             disks = [{{ size = \"4M\", fs = \"raw\" }}]\n"
        ));
    }
    for policy in POLICIES {
        let name = policy.replace('-', "");
        text.push_str(&format!(
            "[[timeline]]\nat = \"{kill_at_ms}ms\"\nkill = \"{name}\"\npolicy = \"{policy}\"\n"
        ));
    }
    text
}

/// `simvm run SCENARIO --seed SEED` on `image`, keeping the final disk images in `disks`.
fn run_keeping_disks(image: &Image, scenario: &Path, seed: u64, disks: &Path) -> Run {
    run_scenario_on(
        image,
        scenario,
        seed,
        &["--keep-disks", &disks.to_string_lossy()],
    )
}

/// The last `word N` a machine printed.
fn last_number(run: &Run, machine: &str, word: &str) -> usize {
    run.console(machine)
        .iter()
        .filter_map(|l| l.strip_prefix(word)?.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// What sector `sector` of `image` holds: `Some(text)` up to the newline, `None` for zeros.
fn record(image: &[u8], sector: usize) -> Option<String> {
    let bytes = &image[sector * SECTOR..(sector + 1) * SECTOR];
    if bytes.iter().all(|&b| b == 0) {
        return None;
    }
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

fn check_policy(run: &Run, dir: &Path, policy: &str) {
    let machine = policy.replace('-', "");
    let synced = last_number(run, &machine, "synced");
    let wrote = last_number(run, &machine, "wrote");
    assert!(
        synced >= 2,
        "{machine} synced only {synced} records before the kill:\n{}",
        run.all()
    );
    let path = dir.join(format!("{machine}-vda.img"));
    let image = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Nothing that was never written appears, and a sector holds only its own record.
    for k in 1..UNSYNCED_BASE {
        if let Some(text) = record(&image, k) {
            assert_eq!(text, format!("s{k}"), "{machine}: sector {k}");
        }
        if let Some(text) = record(&image, UNSYNCED_BASE + k) {
            assert_eq!(
                text,
                format!("u{k}"),
                "{machine}: sector {}",
                UNSYNCED_BASE + k
            );
        }
    }
    // Every record a completed flush covered survives every policy.
    for k in 1..=synced {
        assert_eq!(record(&image, k), Some(format!("s{k}")), "{machine}: s{k}");
        assert_eq!(
            record(&image, UNSYNCED_BASE + k),
            Some(format!("u{k}")),
            "{machine}: u{k}"
        );
    }
    // The record written after the last flush: kept by keep-all, lost by lose-all.
    if wrote > synced {
        let tail = record(&image, UNSYNCED_BASE + wrote);
        match policy {
            "keep-all" => assert_eq!(tail, Some(format!("u{wrote}")), "{machine}"),
            "lose-all" => assert_eq!(tail, None, "{machine}"),
            _ => {}
        }
    }
}

#[test]
fn killed_disks_keep_what_their_crash_policy_says() {
    if !kvm_or_skip("killed_disks_keep_what_their_crash_policy_says") {
        return;
    }
    let image = image(None);
    // Two seeds by default (eight boots); SIMVM_CRASH_SEEDS=10 checks ten.
    let seeds = simvm_tests::env_u64("SIMVM_CRASH_SEEDS", 2) as usize;
    let dir = temp_dir("crash-policies");
    let mut tails_lost = 0;
    for chunk in (1..=seeds as u64).collect::<Vec<_>>().chunks(2) {
        let runs = side_by_side(chunk.len(), |i| {
            let seed = chunk[i];
            // A kill time of the seed's own, between 0.3 and 0.6 s of virtual time.
            let kill_at_ms = 300 + seed * 137 % 300;
            let scenario = dir.join(format!("seed{seed}.toml"));
            std::fs::write(&scenario, policy_scenario(kill_at_ms)).expect("write the scenario");
            let disks = dir.join(format!("seed{seed}"));
            (run_keeping_disks(&image, &scenario, seed, &disks), disks)
        });
        for (run, disks) in &runs {
            assert_eq!(run.code, Some(0), "the run failed:\n{}", run.all());
            assert_eq!(
                run.stdout.matches("power lost").count(),
                4,
                "every machine is killed once:\n{}",
                run.all()
            );
            for policy in POLICIES {
                check_policy(run, disks, policy);
            }
            let machine = "loseall";
            if last_number(run, machine, "wrote") > last_number(run, machine, "synced") {
                tails_lost += 1;
            }
        }
    }
    // The kills fall at different points of the loop; at least one must land between a write
    // and its flush, or the test checked nothing about losing writes.
    assert!(tails_lost > 0, "no kill fell between a write and its flush");
}

/// An ext4 disk: the first incarnation appends records with fsync, then without, and is killed
/// before ext4's 5 s journal commit; the second mounts the disk (ext4 replays its journal) and
/// counts the intact records. Under lose-all the unsynced file, never committed, is gone.
const JOURNAL_SCENARIO: &str = r#"
until = "5s"
crash_policy = "lose-all"

[[machine]]
disks = [{ size = "32M" }]
command = """
if [ "$SIMVM_INCARNATION" = 1 ]; then
  simvm-records write /data/synced 20 --fsync
  simvm-records write /data/unsynced 20
  sleep 100
else
  simvm-records check /data/synced
  simvm-records check /data/unsynced || echo unsynced file missing
fi
"""

[[timeline]]
at = "1s"
kill = "m1"

[[timeline]]
at = "1500ms"
restart = "m1"
"#;

#[test]
fn ext4_recovers_its_journal_after_a_kill_and_a_seed_replays_the_disk() {
    if !kvm_or_skip("ext4_recovers_its_journal_after_a_kill_and_a_seed_replays_the_disk") {
        return;
    }
    let image = image(None);
    let dir = temp_dir("journal");
    let scenario = dir.join("journal.toml");
    std::fs::write(&scenario, JOURNAL_SCENARIO).expect("write the scenario");
    // Seed 3 twice and seed 4 once, side by side.
    let runs = side_by_side(3, |i| {
        let seed = if i < 2 { 3 } else { 4 };
        let disks = dir.join(format!("run{i}"));
        (run_keeping_disks(&image, &scenario, seed, &disks), disks)
    });
    for (run, disks) in &runs {
        assert_eq!(run.code, Some(0), "the run failed:\n{}", run.all());
        assert!(
            run.stdout.contains("m1=exit(0)[incarnations=2]"),
            "{}",
            run.all()
        );
        let synced = last_number(run, "m1", "synced");
        assert!(
            synced > 0,
            "nothing was synced before the kill:\n{}",
            run.all()
        );
        let checks: Vec<String> = run
            .console("m1#2")
            .into_iter()
            .filter(|l| l.starts_with("records "))
            .collect();
        assert_eq!(checks.len(), 1, "one file to check:\n{}", run.all());
        assert!(
            run.console("m1#2")
                .iter()
                .any(|l| l == "unsynced file missing"),
            "the unsynced file survived a lose-all crash before any journal commit:\n{}",
            run.all()
        );
        let intact = |line: &str| -> usize {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix("intact="))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no intact= in {line}"))
        };
        // Every fsynced record is there; the journal replay leaves no torn record.
        assert_eq!(synced, 20, "{}", run.all());
        assert!(
            intact(&checks[0]) >= synced,
            "{synced} records were synced, {} survived:\n{}",
            checks[0],
            run.all()
        );
        assert!(checks[0].contains("first_bad=-1"), "{}", checks[0]);
        let kept = disks.join("m1-vda.img");
        let e2fsck = simvm_vmm::disk_image::find_program("e2fsck")
            .expect("e2fsck is missing: install Debian's e2fsprogs (test.sh does)");
        let fsck = std::process::Command::new(e2fsck)
            .args(["-fn"])
            .arg(&kept)
            .output()
            .expect("run e2fsck (Debian package e2fsprogs)");
        assert!(
            fsck.status.success(),
            "e2fsck -fn finds the kept image unclean:\n{}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
    }
    let (first, again, other) = (&runs[0], &runs[1], &runs[2]);
    assert_eq!(first.0.field("digest"), again.0.field("digest"));
    let read =
        |(_, dir): &(Run, std::path::PathBuf)| std::fs::read(dir.join("m1-vda.img")).unwrap();
    assert!(
        read(first) == read(again),
        "the same seed kept different disk images"
    );
    assert_ne!(first.0.field("digest"), other.0.field("digest"));
    assert!(
        read(first) != read(other),
        "another seed kept the very same disk image"
    );
}

/// SQLite on ext4, killed one virtual second in with lose-all. Committed transactions survive
/// with `synchronous=FULL` in WAL mode. In the default rollback-journal mode, FULL can lose the
/// last one: the journal's deletion is what commits, and SQLite syncs the directory only with
/// `synchronous=EXTRA` (as its documentation warns), so after the crash a hot journal rolls the
/// last transaction back. With `synchronous=OFF` commits were only in the guest's page cache,
/// and the crash takes them.
const SQLITE_SCENARIO: &str = r#"
until = "5s"
crash_policy = "lose-all"

[[machine]]
recipe = "sqlite"
disks = [{ size = "32M" }]
command = """
if [ "$SIMVM_INCARNATION" = 1 ]; then
  for db in WAL:FULL DELETE:FULL DELETE:OFF; do
    journal=${db%:*}; sync=${db#*:}; i=0
    {
      echo "PRAGMA journal_mode=$journal; PRAGMA synchronous=$sync; CREATE TABLE t(n INTEGER);"
      while [ $i -lt 25 ]; do i=$((i+1)); echo "INSERT INTO t VALUES($i); SELECT '$journal-$sync committed $i';"; done
    } | sqlite3 /data/$journal-$sync.db >/dev/null 2>&1 || true
    sqlite3 /data/$journal-$sync.db "SELECT '$journal-$sync committed ' || max(n) FROM t"
  done
  sleep 100
else
  for db in WAL-FULL DELETE-FULL DELETE-OFF; do
    echo "$db rows $(sqlite3 /data/$db.db 'SELECT count(*) FROM t' 2>/dev/null || echo 0)"
  done
fi
"""

[[timeline]]
at = "1s"
kill = "m1"

[[timeline]]
at = "1500ms"
restart = "m1"
"#;

#[test]
fn sqlite_keeps_synchronous_full_commits_and_loses_synchronous_off_ones() {
    if !kvm_or_skip("sqlite_keeps_synchronous_full_commits_and_loses_synchronous_off_ones") {
        return;
    }
    let (run, _dir) = run_scenario("sqlite", SQLITE_SCENARIO, &image(Some("sqlite")), 5);
    assert_eq!(run.code, Some(0), "the run failed:\n{}", run.all());
    let committed = |db: &str| last_number(&run, "m1", &format!("{db} committed"));
    let rows = |db: &str| last_number(&run, "m1#2", &format!("{db} rows"));
    for db in ["WAL-FULL", "DELETE-FULL", "DELETE-OFF"] {
        assert_eq!(committed(db), 25, "{db}:\n{}", run.all());
    }
    assert_eq!(
        rows("WAL-FULL"),
        25,
        "a WAL FULL commit was lost:\n{}",
        run.all()
    );
    assert!(
        rows("DELETE-FULL") >= 24,
        "more than the last rollback-journal FULL commit was lost:\n{}",
        run.all()
    );
    assert!(
        rows("DELETE-OFF") < 25,
        "no OFF commit was lost, so the crash lost nothing:\n{}",
        run.all()
    );
}

/// The base image with etcd's files on a disk: the guest reads the 37 MiB of binaries from the
/// disk as it runs them, instead of unpacking them from an initramfs at boot. The recipe's tree
/// has the libraries and the loader at their usual paths under the mount point; two links make
/// them the system's.
const RECIPE_DISK_SCENARIO: &str = r#"
[[machine]]
disks = [{ recipe = "etcd", mount = "/opt/etcd" }]
command = '''
ln -s /opt/etcd/lib /lib; ln -s /opt/etcd/lib64 /lib64
exec /opt/etcd/usr/bin/etcdctl version
'''
"#;

#[test]
fn a_recipe_disk_runs_etcdctl_on_the_base_image() {
    if !kvm_or_skip("a_recipe_disk_runs_etcdctl_on_the_base_image") {
        return;
    }
    let (run, _dir) = run_scenario("recipe-disk", RECIPE_DISK_SCENARIO, &image(None), 1);
    assert_eq!(run.code, Some(0), "the run failed:\n{}", run.all());
    assert!(
        run.console("m1")
            .iter()
            .any(|l| l == "etcdctl version: 3.4.23"),
        "etcdctl did not run from the disk:\n{}",
        run.all()
    );
}

/// Runs the scenario `text` (written to a fresh temporary directory named after `name`, which is
/// returned: the test's files stay until it drops it) with `image` and `seed`.
fn run_scenario(name: &str, text: &str, image: &Image, seed: u64) -> (Run, TempDir) {
    let dir = temp_dir(name);
    let scenario = dir.join(format!("{name}.toml"));
    std::fs::write(&scenario, text).expect("write the scenario");
    let run = run_scenario_on(image, &scenario, seed, &[]);
    (run, dir)
}

/// A bad-sector range that starts beyond its disk would do nothing: the run is refused before
/// it starts, naming the disk and its size (a 1 MiB disk has 2048 sectors).
#[test]
fn a_sector_fault_beyond_its_disk_is_refused_before_the_run() {
    if !kvm_or_skip("a_sector_fault_beyond_its_disk_is_refused_before_the_run") {
        return;
    }
    let scenario = "until = \"2s\"\n\
                    [[machine]]\nname = \"m1\"\ncommand = \"true\"\ndisks = [{ size = \"1M\" }]\n\
                    [[timeline]]\nat = \"1s\"\ndisk = \"m1/vda\"\nlatent_errors = \"2048+8\"\n";
    let (run, _dir) = run_scenario("fault-beyond-disk", scenario, &image(None), 1);
    assert_eq!(run.code, Some(2), "{}", run.all());
    assert!(
        run.stderr.contains(
            "the disk fault at 1s on m1/vda starts at sector 2048, beyond the disk's 2048 sectors"
        ),
        "{}",
        run.all()
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.all());
}
