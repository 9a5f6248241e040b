//! Disks: 4 KiB writes with fsync on ext4 against tmpfs, and the wall cost of a kill + restart.
//!
//! Everything runs through the real `simvm` binary with the real guest image, as a user runs it.
//! Figures come from the console lines, which carry each line's virtual time, stamped with the
//! wall time at which the benchmark read them (simvm's stdout is line-buffered):
//!
//! 1. **Throughput**: one machine with `--disk 64M` (ext4 at `/data`) runs the guest helper
//!    `simvm-fsbench` four times in one boot: COUNT sequential 4 KiB writes with an fsync after
//!    each to `/data`, COUNT writes at pseudo-random (fixed-seed) block offsets with an fsync
//!    after each to `/data`, then the same two on `/tmp` (tmpfs, where fsync does nothing: the
//!    baseline, in the same run, for the guest's cost of the write path without a disk). Each
//!    prints `fsbench begin MODE` and `fsbench end MODE count=N bytes=B vtime_ns=T`, T being the
//!    guest's CLOCK_MONOTONIC difference, i.e. virtual time. Per (target, mode): virtual MB/s
//!    (B / T), wall MB/s (B / wall time between the two lines), and /data's wall time over
//!    /tmp's.
//! 2. **Kill + restart**: one machine with a 32M disk whose first incarnation prints `up` and
//!    sleeps, killed at 1 s and restarted at 1.1 s of virtual time; the second incarnation prints
//!    `back` and exits. Wall time from simvm's start to `up` (a cold boot), from the `kill` fault
//!    line to `back` (power loss, crash of the disk's cache, a new incarnation booting on the
//!    same disk and mounting it), and their ratio.
//!
//! Nothing is asserted about timings; a failed run or a missing marker line stops the benchmark.
//!
//! Run: `cargo build --release -p simvm && cargo bench -p simvm-tests --bench disk`. The image
//! comes from `guest-images/build.sh`. Environment: `SIMVM_BENCH_FS_COUNT` (4 KiB blocks per
//! write run, default 200), `SIMVM_BENCH_TIMEOUT` (wall seconds allowed per simvm run, default
//! 900), `SIMVM_BIN` (the simvm binary; default `target/release/simvm` next to this benchmark).

use std::ffi::OsString;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use simvm_tests::{
    env_u64, image, release_simvm_bin as simvm_bin, stamped_lines, temp_dir, ConsoleLine as Line,
    Image,
};

const MB: f64 = 1e6;
const SEED: &str = "1";
/// The write runs of the one throughput boot, in the order the guest command makes them.
const RUNS: [(&str, &str); 4] = [
    ("/data", "seq"),
    ("/data", "rand"),
    ("/tmp", "seq"),
    ("/tmp", "rand"),
];

/// A finished `simvm run`.
struct Run {
    name: String,
    lines: Vec<Line>,
    summary: String,
    wall: Duration,
    stderr: String,
}

impl Run {
    /// The first console line of `source` whose text satisfies `pred`; panics if there is none.
    fn find(&self, source: &str, what: &str, pred: impl Fn(&str) -> bool) -> &Line {
        self.lines
            .iter()
            .find(|l| l.source == source && pred(&l.text))
            .unwrap_or_else(|| {
                panic!(
                    "disk: {}: no {what} line from {source}:\n{}",
                    self.name,
                    self.dump()
                )
            })
    }

    fn dump(&self) -> String {
        let tail: Vec<String> = self
            .lines
            .iter()
            .rev()
            .take(30)
            .rev()
            .map(|l| format!("{} {:?} {}", l.source, l.vtime, l.text))
            .collect();
        format!(
            "--- console (last lines)\n{}\n--- summary\n{}\n--- stderr\n{}",
            tail.join("\n"),
            self.summary,
            self.stderr
        )
    }
}

/// Runs `simvm run --seed 1 --kernel K --initramfs I ARGS...` and checks that it succeeded.
fn run_simvm(name: &str, args: &[OsString], image: &Image, timeout: Duration) -> Run {
    eprintln!("disk: running {name} ...");
    let started = Instant::now();
    let mut child = Command::new(simvm_bin())
        .args(["run", "--seed", SEED, "--kernel"])
        .arg(&image.kernel)
        .arg("--initramfs")
        .arg(&image.initramfs)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start simvm");
    let stdout = child.stdout.take().expect("stdout is piped");
    let rx = stamped_lines(stdout, started);
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });

    let (mut lines, mut summary, mut timed_out) = (Vec::new(), String::new(), false);
    loop {
        match rx.recv_timeout(timeout.saturating_sub(started.elapsed())) {
            Ok((wall, raw)) => match Line::parse(&raw, wall) {
                Some(line) => lines.push(line),
                None if raw.starts_with("seed=") => summary = raw,
                None => {}
            },
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait().expect("wait for simvm");
    let run = Run {
        name: name.to_string(),
        lines,
        summary,
        wall: started.elapsed(),
        stderr: stderr.join().unwrap_or_default(),
    };
    assert!(
        !timed_out && status.success() && run.summary.contains("result=ok"),
        "disk: {name}: simvm run failed ({status}{}):\n{}",
        if timed_out {
            format!("; killed after the limit of {timeout:?}, SIMVM_BENCH_TIMEOUT")
        } else {
            String::new()
        },
        run.dump()
    );
    run
}

/// One `simvm-fsbench` run, from its begin and end lines.
struct Writes {
    target: &'static str,
    mode: &'static str,
    count: u64,
    bytes: u64,
    vtime_ns: u64,
    wall: Duration,
}

impl Writes {
    fn virtual_mbps(&self) -> f64 {
        self.bytes as f64 / MB / (self.vtime_ns as f64 / 1e9)
    }

    fn wall_mbps(&self) -> f64 {
        self.bytes as f64 / MB / self.wall.as_secs_f64()
    }
}

/// A `key=value` field of an `fsbench end` line.
fn field(text: &str, key: &str) -> Option<u64> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

struct Throughput {
    runs: Vec<Writes>,
    /// Wall time from simvm's start to the first `fsbench begin` (boot and mount).
    boot_wall: Duration,
    run_wall: Duration,
    summary: String,
}

fn throughput(image: &Image, count: u64, timeout: Duration) -> Throughput {
    let command: Vec<String> = RUNS
        .iter()
        .map(|(target, mode)| format!("simvm-fsbench {target}/fsbench-{mode} {count} {mode}"))
        .collect();
    let args: Vec<OsString> = [
        "--disk",
        "64M",
        "--",
        "sh",
        "-c",
        // `&&`: a failed write run fails the command, and so the simvm run.
        &command.join(" && "),
    ]
    .iter()
    .map(OsString::from)
    .collect();
    let run = run_simvm("throughput", &args, image, timeout);

    let marks: Vec<&Line> = run
        .lines
        .iter()
        .filter(|l| l.source == "m1" && l.text.starts_with("fsbench "))
        .collect();
    assert_eq!(
        marks.len(),
        2 * RUNS.len(),
        "disk: throughput: expected {} fsbench begin/end lines:\n{}",
        2 * RUNS.len(),
        run.dump()
    );
    let runs = RUNS
        .iter()
        .zip(marks.chunks(2))
        .map(|(&(target, mode), pair)| {
            let (begin, end) = (pair[0], pair[1]);
            let end_prefix = format!("fsbench end {mode} ");
            assert!(
                begin.text == format!("fsbench begin {mode}") && end.text.starts_with(&end_prefix),
                "disk: throughput: {target} {mode}: out-of-order markers {:?}, {:?}:\n{}",
                begin.text,
                end.text,
                run.dump()
            );
            let get = |key: &str| {
                field(&end.text, key)
                    .unwrap_or_else(|| panic!("disk: throughput: no {key}= in {:?}", end.text))
            };
            let writes = Writes {
                target,
                mode,
                count: get("count"),
                bytes: get("bytes"),
                vtime_ns: get("vtime_ns").max(1),
                wall: end.wall - begin.wall,
            };
            assert_eq!(writes.count, count, "disk: {target} {mode}: short run");
            writes
        })
        .collect();
    Throughput {
        runs,
        boot_wall: marks[0].wall,
        run_wall: run.wall,
        summary: run.summary,
    }
}

struct Restart {
    /// simvm's start to the first incarnation's `up`.
    cold_boot: Duration,
    /// The `kill` fault line to the second incarnation's `back`.
    kill_restart: Duration,
    /// Every `fault` line of the run: the kill (and what the crash dropped), the restart.
    kill_lines: Vec<String>,
    vtime_kill_to_back: Duration,
    summary: String,
}

fn restart(dir: &Path, image: &Image, timeout: Duration) -> Restart {
    let scenario = "description = \"cold boot, then a kill and a restart on the same disk\"\n\
         until = \"5s\"\n\
         [[machine]]\n\
         disks = [{ size = \"32M\" }]\n\
         command = 'if [ \"$SIMVM_INCARNATION\" = 1 ]; then echo up; sleep 100; else echo back; fi'\n\
         [[timeline]]\n\
         at = \"1s\"\n\
         kill = \"m1\"\n\
         [[timeline]]\n\
         at = \"1100ms\"\n\
         restart = \"m1\"\n";
    let path = dir.join("restart.toml");
    std::fs::write(&path, scenario).expect("write the scenario file");
    let run = run_simvm("kill + restart", &[path.into_os_string()], image, timeout);

    let up = run.find("m1", "`up`", |t| t == "up");
    let kill = run.find("fault", "`kill m1`", |t| t.starts_with("kill m1"));
    let back = run.find("m1#2", "`back`", |t| t == "back");
    assert!(
        up.wall <= kill.wall && kill.wall <= back.wall,
        "disk: kill + restart: markers out of order:\n{}",
        run.dump()
    );
    Restart {
        cold_boot: up.wall,
        kill_restart: back.wall - kill.wall,
        kill_lines: run
            .lines
            .iter()
            .filter(|l| l.source == "fault")
            .map(|l| l.text.clone())
            .collect(),
        vtime_kill_to_back: back.vtime.saturating_sub(kill.vtime),
        summary: run.summary,
    }
}

fn main() {
    let count = env_u64("SIMVM_BENCH_FS_COUNT", 200).max(1);
    let timeout = Duration::from_secs(env_u64("SIMVM_BENCH_TIMEOUT", 900));
    let image = image(None);
    let dir = temp_dir("bench-disk");
    println!(
        "disk: simvm {}, kernel {}, initramfs {}",
        simvm_bin().display(),
        image.kernel.display(),
        image.initramfs.display()
    );
    println!(
        "disk: {count} x 4 KiB writes per run, fsync after each; ext4 on a 64M disk at /data \
         (default latency 20 us + Exp(80 us)) against tmpfs at /tmp; seed {SEED}"
    );

    let t = throughput(&image, count, timeout);
    let r = restart(&dir, &image, timeout);
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    println!(
        "{:<14} {:>12} {:>14} {:>10} {:>12} {:>16}",
        "target, mode", "virtual", "virtual MB/s", "wall", "wall MB/s", "wall /data÷/tmp"
    );
    for w in &t.runs {
        let baseline = t
            .runs
            .iter()
            .find(|b| b.target == "/tmp" && b.mode == w.mode)
            .expect("every mode runs on /tmp");
        println!(
            "{:<14} {:>9.3} ms {:>14.1} {:>8.2} s {:>12.4} {:>15.1}x",
            format!("{} {}", w.target, w.mode),
            w.vtime_ns as f64 / 1e6,
            w.virtual_mbps(),
            w.wall.as_secs_f64(),
            w.wall_mbps(),
            w.wall.as_secs_f64() / baseline.wall.as_secs_f64(),
        );
    }
    println!("(MB = 10^6 bytes; {} bytes per run)", count * 4096);
    for w in t.runs.iter().filter(|w| w.target == "/data") {
        println!(
            "{} {}: {:.1} us virtual and {:.1} ms wall per 4 KiB write + fsync",
            w.target,
            w.mode,
            w.vtime_ns as f64 / 1e3 / w.count as f64,
            w.wall.as_secs_f64() * 1e3 / w.count as f64
        );
    }
    println!(
        "throughput run: boot to the first write run {:.1} s wall, whole run {:.1} s wall; {}",
        t.boot_wall.as_secs_f64(),
        t.run_wall.as_secs_f64(),
        t.summary
    );

    println!();
    println!(
        "{:<44} {:>10}",
        "cold boot (simvm start -> `up`)",
        format!("{:.2} s", r.cold_boot.as_secs_f64())
    );
    println!(
        "{:<44} {:>10}",
        "kill + restart (`kill` line -> `back`)",
        format!("{:.2} s", r.kill_restart.as_secs_f64())
    );
    println!(
        "{:<44} {:>10}",
        "ratio restart / cold boot",
        format!(
            "{:.2}x",
            r.kill_restart.as_secs_f64() / r.cold_boot.as_secs_f64()
        )
    );
    println!(
        "kill -> back in virtual time: {:.3} s",
        r.vtime_kill_to_back.as_secs_f64()
    );
    for line in &r.kill_lines {
        println!("fault: {line}");
    }
    println!("restart run: {}", r.summary);
}
