//! Booting the real guest image: simvm against QEMU/KVM on the same host, in the same run.
//!
//! One guest, one command:
//!
//! ```text
//! read up idle </proc/uptime; echo SIMVM-BENCH-BEGIN $up; sleep 60; read up idle </proc/uptime; echo SIMVM-BENCH-END $up
//! ```
//!
//! simvm boots it through the library (`World`) as `simvm run` does; QEMU boots the same kernel,
//! the same base initramfs and the same per-machine boot archive. Both are timed by watching the
//! console for the markers. Figures:
//!
//! - boot to the command's first output (wall), and for simvm also to READY;
//! - exits per wall second (simvm), over the whole run;
//! - guest seconds per wall second while the guest sleeps. The guest's `/proc/uptime` is read at
//!   both markers, so this is the guest's own view of time: virtual time under simvm (which jumps
//!   when the guest halts), real time under QEMU.
//!
//! Run: `cargo bench -p simvm-tests --bench boot`. The image comes from
//! `guest-images/build.sh`, else from `SIMVM_KERNEL` and `SIMVM_INITRAMFS`; without one, this
//! benchmark reports that it was skipped. Environment: `SIMVM_BENCH_SLEEP` (guest sleep in
//! seconds, default 60), `SIMVM_BENCH_QEMU_MACHINE` (default `pc`: under `microvm` this
//! command line, with no local APIC, gets no timer interrupt and the guest's `sleep` never ends),
//! `SIMVM_BENCH_QEMU_TIMEOUT` (seconds, default 600), `SIMVM_BENCH_MEM_MIB` (default 128).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use simvm_tests::{env_u64, stamped_lines};
use simvm_vmm::boot_data::BootData;
use simvm_vmm::cmdline::kernel_cmdline;
use simvm_vmm::machine::{MachineConfig, Stop};
use simvm_vmm::seed::Seed;
use simvm_vmm::world::{World, WorldConfig};

const BEGIN: &str = "SIMVM-BENCH-BEGIN";
const END: &str = "SIMVM-BENCH-END";
const SEED: u64 = 1;

struct GuestImage {
    kernel: PathBuf,
    initramfs: PathBuf,
    source: &'static str,
}

/// The image from the build script, else from the environment; `Err` says why there is none.
fn find_image() -> Result<GuestImage, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images/build.sh");
    let built = if script.exists() {
        eprintln!(
            "boot: building (or finding cached) guest image with {}",
            script.display()
        );
        match Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
        {
            Ok(out) if out.status.success() => {
                let stdout = String::from_utf8_lossy(&out.stdout);
                let last = |key: &str| {
                    stdout
                        .lines()
                        .rev()
                        .find_map(|l| l.strip_prefix(key))
                        .map(PathBuf::from)
                };
                match (last("kernel="), last("initramfs=")) {
                    (Some(kernel), Some(initramfs)) => Ok(GuestImage {
                        kernel,
                        initramfs,
                        source: "guest-images/build.sh",
                    }),
                    _ => Err("build.sh printed no kernel=/initramfs= lines".to_string()),
                }
            }
            Ok(out) => Err(format!("build.sh failed ({})", out.status)),
            Err(e) => Err(format!("cannot run build.sh: {e}")),
        }
    } else {
        Err(format!("{} does not exist", script.display()))
    };
    let built_error = match built {
        Ok(image) => return Ok(image),
        Err(e) => e,
    };
    match (
        std::env::var_os("SIMVM_KERNEL"),
        std::env::var_os("SIMVM_INITRAMFS"),
    ) {
        (Some(kernel), Some(initramfs)) => Ok(GuestImage {
            kernel: kernel.into(),
            initramfs: initramfs.into(),
            source: "SIMVM_KERNEL/SIMVM_INITRAMFS",
        }),
        _ => Err(format!(
            "{built_error}, and SIMVM_KERNEL/SIMVM_INITRAMFS are not both set"
        )),
    }
}

/// What the guest runs: two timestamped markers around an idle sleep. `read` and `echo` are
/// shell builtins, so the markers cost no fork.
fn guest_command(sleep_secs: u64) -> Vec<String> {
    let script = format!(
        "read up idle </proc/uptime; echo {BEGIN} $up; sleep {sleep_secs}; \
         read up idle </proc/uptime; echo {END} $up"
    );
    vec!["/bin/sh".into(), "-c".into(), script]
}

fn boot_data(argv: Vec<String>) -> BootData {
    BootData {
        name: "m1".into(),
        index: 1,
        machines: 1,
        seed: SEED,
        argv,
        ..Default::default()
    }
}

/// Wall time and guest uptime (seconds) at which a marker line appeared.
#[derive(Clone, Copy, Debug)]
struct Mark {
    wall: Duration,
    uptime: f64,
}

impl Mark {
    /// Parses `... MARKER <uptime>` from a console line, with the wall time it was seen at.
    fn parse(line: &str, marker: &str, wall: Duration) -> Option<Self> {
        let rest = &line[line.find(marker)? + marker.len()..];
        let uptime = rest.split_whitespace().next()?.parse().ok()?;
        Some(Self { wall, uptime })
    }
}

/// Guest seconds per wall second between two marks.
fn idle_rate(begin: Option<Mark>, end: Option<Mark>) -> Option<f64> {
    let (b, e) = (begin?, end?);
    let wall = (e.wall - b.wall).as_secs_f64();
    (wall > 0.0).then(|| (e.uptime - b.uptime) / wall)
}

struct SimvmFigures {
    setup: Duration,
    ready: Option<Duration>,
    begin: Option<Mark>,
    end: Option<Mark>,
    wall: Duration,
    exits: u64,
    vtime_ns: u64,
    stop: String,
}

fn run_simvm(image: &GuestImage, mem: u64, argv: Vec<String>) -> SimvmFigures {
    let started = Instant::now();
    let base = std::fs::read(&image.initramfs).expect("read the guest initramfs");
    let seed = Seed(SEED);
    let machine = MachineConfig {
        boot: Some(boot_data(argv)),
        rng_seed: seed.key("machine/m1/kernel-rng"),
        ..MachineConfig::new("m1", image.kernel.clone(), vec![base.into()], mem)
    };
    let config = WorldConfig::new(seed, vec![machine]);
    let world = World::new(config).expect("build the simvm world");
    let setup = started.elapsed();
    let (mut begin, mut end) = (None, None);
    let outcome = world
        .run(&mut |line| {
            let now = started.elapsed();
            begin = begin.or_else(|| Mark::parse(line, BEGIN, now));
            end = end.or_else(|| Mark::parse(line, END, now));
        })
        .expect("run the simvm world");
    let m = &outcome.machines[0];
    SimvmFigures {
        setup,
        ready: m.ready_wall.map(|r| r + setup),
        begin,
        end,
        wall: started.elapsed(),
        exits: m.stats.total(),
        vtime_ns: m.vtime_ns,
        stop: match &m.stop {
            Some(Stop::PowerOff { exit_status }) => format!("powered off, status {exit_status:?}"),
            Some(Stop::Crashed(report)) => format!("crashed:\n{report}"),
            Some(other) => format!("{other:?}"),
            None => "still running".into(),
        },
    }
}

struct QemuFigures {
    begin: Option<Mark>,
    end: Option<Mark>,
    /// The last console lines, to show why a marker never came.
    tail: Vec<String>,
}

/// Boots the same kernel and archives under QEMU/KVM and watches its serial console.
fn run_qemu(
    image: &GuestImage,
    mem: u64,
    argv: Vec<String>,
    machine: &str,
    timeout: Duration,
) -> Result<QemuFigures, String> {
    // QEMU takes one initrd: the base image followed by the boot archive, as simvm loads them.
    let mut initrd = std::fs::read(&image.initramfs).map_err(|e| e.to_string())?;
    initrd.extend_from_slice(&boot_data(argv).archive());
    let initrd_path =
        std::env::temp_dir().join(format!("simvm-bench-initrd-{}.cpio", std::process::id()));
    std::fs::write(&initrd_path, initrd).map_err(|e| e.to_string())?;
    // Without simvm's devices the guest must not look for them.
    let append: Vec<&str> = kernel_cmdline(&[], "")
        .leak()
        .split(' ')
        .filter(|p| *p != "simvm=1")
        .collect();

    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "kvm", "-nographic", "-no-reboot", "-M", machine])
        .args(["-smp", "1", "-m", &format!("{}M", mem >> 20)])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&initrd_path)
        .args(["-append", &append.join(" ")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let rx = stamped_lines(stdout, started);

    let (mut begin, mut end, mut tail) = (None, None, Vec::new());
    while end.is_none() {
        let left = timeout.saturating_sub(started.elapsed());
        let Ok((at, line)) = rx.recv_timeout(left) else {
            break; // timed out, or QEMU exited
        };
        begin = begin.or_else(|| Mark::parse(&line, BEGIN, at));
        end = end.or_else(|| Mark::parse(&line, END, at));
        tail.push(line);
        if tail.len() > 20 {
            tail.remove(0);
        }
    }
    // The guest's power-off may not reach QEMU (no ACPI): stop it ourselves.
    let _ = child.kill();
    let status = child.wait();
    if begin.is_none() {
        if let Some(mut err) = child.stderr.take() {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut text);
            tail.extend(text.lines().map(str::to_string));
        }
        tail.push(format!("qemu: {status:?}"));
    }
    let _ = std::fs::remove_file(&initrd_path);
    Ok(QemuFigures { begin, end, tail })
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

fn main() {
    let image = match find_image() {
        Ok(image) => image,
        Err(why) => {
            println!("boot: skipped: no guest image (run simvm image build): {why}");
            return;
        }
    };
    let sleep_secs = env_u64("SIMVM_BENCH_SLEEP", 60);
    let mem = env_u64("SIMVM_BENCH_MEM_MIB", 128) << 20;
    let qemu_machine = std::env::var("SIMVM_BENCH_QEMU_MACHINE").unwrap_or_else(|_| "pc".into());
    let qemu_timeout = Duration::from_secs(env_u64("SIMVM_BENCH_QEMU_TIMEOUT", 600));
    let argv = guest_command(sleep_secs);
    println!(
        "boot: kernel {} initramfs {} (from {}), {} MiB, guest sleeps {sleep_secs} s",
        image.kernel.display(),
        image.initramfs.display(),
        image.source,
        mem >> 20
    );

    let s = run_simvm(&image, mem, argv.clone());
    let q = run_qemu(&image, mem, argv, &qemu_machine, qemu_timeout);

    let s_idle = idle_rate(s.begin, s.end);
    let exits_per_s = s.exits as f64 / s.wall.as_secs_f64();
    println!();
    println!(
        "{:<40} {:>12} {:>16} {:>8}",
        "",
        "simvm",
        format!("qemu -M {qemu_machine}"),
        "ratio"
    );
    let (q_begin, q_idle) = match &q {
        Ok(q) => (q.begin, idle_rate(q.begin, q.end)),
        Err(_) => (None, None),
    };
    println!(
        "{:<40} {:>12} {:>16} {:>8}",
        "setup (VM built, image loaded)",
        secs(Some(s.setup)),
        "-",
        "-"
    );
    println!(
        "{:<40} {:>12} {:>16} {:>8}",
        "boot to READY (init about to exec)",
        secs(s.ready),
        "-",
        "-"
    );
    let wall = |m: Option<Mark>| m.map(|m| m.wall);
    println!(
        "{:<40} {:>12} {:>16} {:>8}",
        "boot to the command's first output",
        secs(wall(s.begin)),
        secs(wall(q_begin)),
        ratio(
            wall(s.begin).map(|d| d.as_secs_f64()),
            wall(q_begin).map(|d| d.as_secs_f64())
        )
    );
    let rate = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.1}"));
    println!(
        "{:<40} {:>12} {:>16} {:>8}",
        "idle: guest seconds per wall second",
        rate(s_idle),
        rate(q_idle),
        ratio(s_idle, q_idle)
    );
    println!(
        "{:<40} {:>12} {:>16} {:>8}",
        "exits per wall second (whole run)",
        format!("{exits_per_s:.0}"),
        "-",
        "-"
    );
    println!();
    println!(
        "simvm: {} exits in {:.2} s wall, {:.2} s virtual; machine {}",
        s.exits,
        s.wall.as_secs_f64(),
        s.vtime_ns as f64 / 1e9,
        s.stop
    );
    match q {
        Ok(q) if q.begin.is_none() => {
            println!("qemu: no {BEGIN} marker within {qemu_timeout:?}; last output:");
            for line in q.tail {
                println!("  {line}");
            }
        }
        Ok(_) => {}
        Err(e) => println!("qemu: baseline not measured: {e}"),
    }
}
