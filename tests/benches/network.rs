//! Many machines on the simulated network: how fast virtual time goes when machines idle, and a
//! TCP bulk transfer between two machines.
//!
//! Everything runs through the real `simvm` binary with the real guest image, from scenario files
//! written to a temporary directory, exactly as a user runs them. Figures come from the console
//! lines, which carry each line's virtual time, stamped with the wall time at which the benchmark
//! read them (simvm's stdout is line-buffered):
//!
//! 1. **Idle**: one machine, then three, each running `echo IDLE-BEGIN; sleep 60; echo IDLE-END`.
//!    The window runs from the last `IDLE-BEGIN` (every machine is past READY and in its command)
//!    to the last `IDLE-END`; the figure is virtual seconds per wall second over it, and the
//!    ratio of three machines to one.
//! 2. **Transfer**: m1 listens with busybox `nc -l`, m2 sends `head -c SIZE /dev/zero | nc`.
//!    A small warm-up transfer goes first, so the guest's one-off cost of its first TCP connect
//!    (filling its random port table) is not counted. Each measured transfer runs from m2's
//!    `XFER-BEGIN` to m1's `RECV-DONE` (all bytes read): virtual and wall time, throughput in
//!    both, and frames per wall second from the switch counters in simvm's summary line.
//! 0. **Offloads** (runs first): the same transfer (`SIMVM_BENCH_CSUM_BYTES`, 2 MiB) with
//!    virtio-net's checksum and segmentation offload, with `--no-tso` and with
//!    `--no-checksum-offload`; the ratios of wall time per MiB are what the offloads save where
//!    the guest kernel runs emulated.
//!    `SIMVM_BENCH_ONLY=offload` stops after it.
//!
//! Run: `cargo build --release -p simvm && cargo bench -p simvm-tests --bench network`.
//! The image comes from `guest-images/build.sh`. Environment: `SIMVM_BENCH_XFER_BYTES` (bytes per
//! transfer, default 10 MiB), `SIMVM_BENCH_ROUNDS` (measured transfers, default 1; the median is
//! reported), `SIMVM_BENCH_SLEEP` (guest idle sleep in seconds, default 60),
//! `SIMVM_BENCH_TIMEOUT` (wall seconds allowed per simvm run, default 1200), `SIMVM_BIN` (the
//! simvm binary; default `target/release/simvm` next to this benchmark).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use simvm_tests::{
    env_u64, image, release_simvm_bin as simvm_bin, stamped_lines, temp_dir, ConsoleLine as Line,
    Image,
};

const MIB: f64 = 1024.0 * 1024.0;
/// Bytes of the warm-up transfer: enough to open a connection, small enough to cost little.
const WARMUP_BYTES: u64 = 64 * 1024;
/// First TCP port; the warm-up uses it, measured transfer `i` uses `PORT + i`.
const PORT: u16 = 5000;

/// A finished `simvm run`.
struct Run {
    lines: Vec<Line>,
    summary: String,
    wall: Duration,
    stderr: String,
}

impl Run {
    /// Console lines whose text starts with `marker`.
    fn marked(&self, marker: &str) -> impl Iterator<Item = &Line> + '_ {
        let marker = marker.to_string();
        self.lines
            .iter()
            .filter(move |l| l.text.starts_with(&marker))
    }

    /// The line of the last machine to print `marker`.
    fn last(&self, marker: &str) -> &Line {
        self.marked(marker)
            .max_by_key(|l| l.wall)
            .unwrap_or_else(|| panic!("no {marker} line:\n{}", self.dump()))
    }

    /// Sum of one switch counter (`tx=`, `rx=`) over the machines in the summary line.
    fn frames(&self, counter: &str) -> u64 {
        self.summary
            .split(['[', ' '])
            .filter_map(|f| f.strip_prefix(counter))
            .map(|n| n.parse::<u64>().expect("a frame counter is a number"))
            .sum()
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

/// Writes `scenario` to `dir/name.toml`, runs it and checks that it succeeded.
fn run_scenario(
    dir: &Path,
    name: &str,
    scenario: &str,
    image: &Image,
    timeout: Duration,
    extra_args: &[&str],
) -> Run {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, scenario).expect("write the scenario file");
    eprintln!("network: running {name} ...");
    let started = Instant::now();
    let mut child = Command::new(simvm_bin())
        .arg("run")
        .arg(&path)
        .arg("--kernel")
        .arg(&image.kernel)
        .arg("--initramfs")
        .arg(&image.initramfs)
        .args(extra_args)
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

    let (mut lines, mut summary) = (Vec::new(), String::new());
    loop {
        match rx.recv_timeout(timeout.saturating_sub(started.elapsed())) {
            Ok((wall, raw)) => match Line::parse(&raw, wall) {
                Some(line) => lines.push(line),
                None if raw.starts_with("seed=") => summary = raw,
                None => {}
            },
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait().expect("wait for simvm");
    let run = Run {
        lines,
        summary,
        wall: started.elapsed(),
        stderr: stderr.join().unwrap_or_default(),
    };
    assert!(
        status.success() && run.summary.contains("result=ok"),
        "{name}: simvm run failed ({status}; limit {timeout:?}):\n{}",
        run.dump()
    );
    run
}

/// Idle figures of one run.
struct Idle {
    /// Wall time until the last machine started its command.
    all_ready_wall: Duration,
    vsecs: f64,
    wsecs: f64,
}

impl Idle {
    fn rate(&self) -> f64 {
        self.vsecs / self.wsecs
    }
}

fn idle(dir: &Path, image: &Image, machines: usize, sleep: u64, timeout: Duration) -> Idle {
    // `echo` is a shell builtin: the markers cost no fork.
    let scenario = format!(
        "description = \"{machines} idle machines\"\n\
         [[machine]]\n\
         count = {machines}\n\
         command = \"echo IDLE-BEGIN; sleep {sleep}; echo IDLE-END\"\n"
    );
    let run = run_scenario(
        dir,
        &format!("idle-{machines}"),
        &scenario,
        image,
        timeout,
        &[],
    );
    assert_eq!(run.marked("IDLE-BEGIN").count(), machines, "{}", run.dump());
    let (begin, end) = (run.last("IDLE-BEGIN"), run.last("IDLE-END"));
    // Virtual time at the window's edges: the latest clock of any machine at that point (the
    // world steps the lowest clock first, so all machines are within a step of each other).
    let vtime_at = |line: &Line, marker: &str| {
        run.marked(marker)
            .filter(|l| l.wall <= line.wall)
            .map(|l| l.vtime)
            .max()
            .expect("at least the line itself")
    };
    Idle {
        all_ready_wall: begin.wall,
        vsecs: (vtime_at(end, "IDLE-END") - vtime_at(begin, "IDLE-BEGIN")).as_secs_f64(),
        wsecs: (end.wall - begin.wall).as_secs_f64(),
    }
}

/// One measured transfer.
struct Transfer {
    vsecs: f64,
    wsecs: f64,
}

struct Transfers {
    rounds: Vec<Transfer>,
    /// Frames sent by both machines over the whole run (boot and warm-up included: < 1%).
    frames: u64,
    run_wall: Duration,
}

fn transfers(
    dir: &Path,
    image: &Image,
    bytes: u64,
    rounds: u16,
    timeout: Duration,
    extra_args: &[&str],
) -> Transfers {
    let ports: Vec<String> = (0..=rounds).map(|i| (PORT + i).to_string()).collect();
    let ports = ports.join(" ");
    // m1 listens on every port at once, so m2 never connects before a listener is back up.
    // Busybox nc half-closes its socket when its stdin ends, which would end the transfer at
    // once: its stdin is a FIFO that the shell holds open for writing and never writes to.
    let server = format!(
        "mkfifo /tmp/hold; exec 3<>/tmp/hold; \
         for p in {ports}; do (n=$(nc -l -p $p <&3 | wc -c); echo RECV-DONE $p $n) & done; wait"
    );
    // The sleep lets m1's listeners start (virtual time: it costs no wall time to speak of).
    let client = format!(
        "sleep 2; for p in {ports}; do \
         if [ $p = {PORT} ]; then n={WARMUP_BYTES}; else n={bytes}; fi; \
         echo XFER-BEGIN $p; head -c $n /dev/zero | nc 10.0.0.1 $p; echo XFER-END $p $?; done"
    );
    let scenario = format!(
        "description = \"TCP bulk transfer m2 -> m1\"\n\
         until = \"3600s\"\n\
         [[machine]]\n\
         command = {server:?}\n\
         [[machine]]\n\
         command = {client:?}\n"
    );
    let run = run_scenario(dir, "transfer", &scenario, image, timeout, extra_args);
    let find = |marker: &str, port: u16| {
        let prefix = format!("{marker} {port}");
        run.marked(&prefix)
            .next()
            .unwrap_or_else(|| panic!("no {prefix} line:\n{}", run.dump()))
            .clone()
    };
    let rounds = (1..=rounds)
        .map(|i| {
            let (begin, done) = (find("XFER-BEGIN", PORT + i), find("RECV-DONE", PORT + i));
            let received: u64 = done
                .text
                .split_whitespace()
                .nth(2)
                .and_then(|n| n.parse().ok())
                .expect("RECV-DONE <port> <bytes>");
            assert_eq!(
                received,
                bytes,
                "m1 received a short stream:\n{}",
                run.dump()
            );
            Transfer {
                vsecs: (done.vtime - begin.vtime).as_secs_f64(),
                wsecs: (done.wall - begin.wall).as_secs_f64(),
            }
        })
        .collect();
    Transfers {
        rounds,
        frames: run.frames("tx="),
        run_wall: run.wall,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn main() {
    let bytes = env_u64("SIMVM_BENCH_XFER_BYTES", 10 << 20);
    let rounds = u16::try_from(env_u64("SIMVM_BENCH_ROUNDS", 1).max(1))
        .expect("SIMVM_BENCH_ROUNDS fits a port range");
    let sleep = env_u64("SIMVM_BENCH_SLEEP", 60);
    let timeout = Duration::from_secs(env_u64("SIMVM_BENCH_TIMEOUT", 1200));
    let image = image(None);
    let dir = temp_dir("bench-network");
    println!(
        "network: simvm {}, kernel {}, initramfs {}",
        simvm_bin().display(),
        image.kernel.display(),
        image.initramfs.display()
    );
    println!(
        "network: idle sleep {sleep} s; transfer {bytes} bytes x {rounds} (after a {WARMUP_BYTES}-byte warm-up)"
    );

    // What the offloads save: the same transfer with both, without segmentation offload, and
    // without either, in this run.
    let csum_bytes = env_u64("SIMVM_BENCH_CSUM_BYTES", 2 << 20);
    let offloads = |args: &[&str]| transfers(&dir, &image, csum_bytes, 1, timeout, args);
    let per_mib = |t: &Transfers| t.rounds[0].wsecs / (csum_bytes as f64 / MIB);
    let both = per_mib(&offloads(&[]));
    let no_tso = per_mib(&offloads(&["--no-tso"]));
    let neither = per_mib(&offloads(&["--no-checksum-offload"]));
    println!();
    println!(
        "offloads, {} MiB m2 -> m1, wall seconds per MiB: {both:.1} with checksum and \
         segmentation offload; {no_tso:.1} without segmentation ({:.2}x); {neither:.1} with \
         neither ({:.2}x)",
        csum_bytes as f64 / MIB,
        no_tso / both,
        neither / both,
    );
    if std::env::var("SIMVM_BENCH_ONLY").is_ok_and(|v| v == "offload") {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }

    let one = idle(&dir, &image, 1, sleep, timeout);
    let three = idle(&dir, &image, 3, sleep, timeout);
    let xfer = transfers(&dir, &image, bytes, rounds, timeout, &[]);
    let _ = std::fs::remove_dir_all(&dir);

    let v = median(xfer.rounds.iter().map(|r| r.vsecs).collect());
    let w = median(xfer.rounds.iter().map(|r| r.wsecs).collect());
    let wall_total: f64 = xfer.rounds.iter().map(|r| r.wsecs).sum();
    let size = bytes as f64 / MIB;

    println!();
    println!("{:<46} {:>14} {:>14} {:>10}", "", "virtual", "wall", "v/w");
    for (label, r) in [("idle, 1 machine", &one), ("idle, 3 machines", &three)] {
        println!(
            "{:<46} {:>12.2} s {:>12.2} s {:>9.1}x",
            format!("{label}: window"),
            r.vsecs,
            r.wsecs,
            r.rate()
        );
    }
    println!(
        "{:<46} {:>14} {:>14} {:>9.2}x",
        "idle rate, 3 machines / 1 machine",
        "",
        "",
        three.rate() / one.rate()
    );
    println!(
        "{:<46} {:>12.4} s {:>12.2} s {:>9.5}x",
        format!("transfer {size:.1} MiB m2 -> m1 (median of {rounds})"),
        v,
        w,
        v / w
    );
    println!(
        "{:<46} {:>8.1} MiB/s {:>8.3} MiB/s {:>9}",
        "transfer throughput",
        size / v,
        size / w,
        "-"
    );
    println!(
        "{:<46} {:>14} {:>14.0} {:>9}",
        "frames per wall second (both directions)",
        "-",
        xfer.frames as f64 / wall_total,
        "-"
    );
    println!();
    println!(
        "boot to every machine in its command (wall): 1 machine {:.1} s, 3 machines {:.1} s; \
         transfer run {:.1} s wall, {} frames",
        one.all_ready_wall.as_secs_f64(),
        three.all_ready_wall.as_secs_f64(),
        xfer.run_wall.as_secs_f64(),
        xfer.frames
    );
    for (i, r) in xfer.rounds.iter().enumerate() {
        println!(
            "transfer {}: {:.4} s virtual, {:.2} s wall",
            i + 1,
            r.vsecs,
            r.wsecs
        );
    }
}
