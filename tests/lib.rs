//! Shared helpers for simvm's integration tests, which boot real guests under KVM.
//!
//! The tests drive the `simvm` binary as a user would. Without a usable `/dev/kvm` they fail with
//! a message that says so; `SIMVM_SKIP_KVM_TESTS=1` skips them explicitly, and each skipped test
//! prints `SKIPPED <test>` on stderr (see [`kvm_or_skip`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// Path of the `simvm` binary built alongside the tests.
pub fn simvm_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    // target/<profile>/deps/<test> -> target/<profile>/simvm
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("simvm");
    assert!(
        bin.is_file(),
        "{} does not exist: build it first with `cargo build -p simvm` (./test.sh does)",
        bin.display()
    );
    bin
}

/// Whether KVM tests should run. Panics with a clear message when KVM is unusable, unless the
/// user opted out with `SIMVM_SKIP_KVM_TESTS=1`.
///
/// Stable Rust's test harness cannot mark a test skipped at run time: an opted-out test returns
/// early and the harness reports it `ok`. So that nobody takes that `ok` for a pass, each skipped
/// test prints `SKIPPED <test>` straight to the process's stderr, past the harness's output
/// capture, where it shows in every `cargo test` log next to the harness's own lines.
pub fn kvm_or_skip(test: &str) -> bool {
    let opt_out = std::env::var("SIMVM_SKIP_KVM_TESTS").is_ok_and(|v| v == "1");
    kvm_or_skip_with(test, opt_out, Path::new("/dev/kvm"), &mut std::io::stderr())
}

/// [`kvm_or_skip`] with its inputs given: the opt-out, the KVM device, where to report a skip.
pub fn kvm_or_skip_with(test: &str, opt_out: bool, kvm: &Path, report: &mut dyn Write) -> bool {
    let usable = std::fs::OpenOptions::new().read(true).write(true).open(kvm);
    match usable {
        Ok(_) if !opt_out => true,
        Err(e) if !opt_out => panic!(
            "{test} boots real guests and needs {}, which cannot be opened: {e}.\n\
             Give this user access to {0}, or set SIMVM_SKIP_KVM_TESTS=1 to skip the KVM tests \
             explicitly (each then prints SKIPPED).",
            kvm.display()
        ),
        usable => {
            let kvm_state = match usable {
                Ok(_) => "usable".to_string(),
                Err(e) => format!("unusable: {e}"),
            };
            // One write, so that lines of tests running in parallel do not interleave.
            let _ = report.write_all(
                format!(
                    "SKIPPED {test}: SIMVM_SKIP_KVM_TESTS=1 (KVM {kvm_state}); this test did not \
                     run, and the `ok` the test harness reports for it means nothing\n"
                )
                .as_bytes(),
            );
            false
        }
    }
}

/// The guest image files.
#[derive(Clone, Debug)]
pub struct Image {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub config: Option<PathBuf>,
}

/// Builds (or finds in the cache) the image of `recipe` with the build script, once per test
/// process and recipe.
pub fn image(recipe: Option<&str>) -> Image {
    static BASE: OnceLock<Image> = OnceLock::new();
    static ETCD: OnceLock<Image> = OnceLock::new();
    static SQLITE: OnceLock<Image> = OnceLock::new();
    let cell = match recipe {
        None => &BASE,
        Some("etcd") => &ETCD,
        Some("sqlite") => &SQLITE,
        Some(other) => panic!("no cached slot for recipe {other}"),
    };
    cell.get_or_init(|| build_image(recipe)).clone()
}

fn build_image(recipe: Option<&str>) -> Image {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images/build.sh");
    let mut command = Command::new("bash");
    command
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(recipe) = recipe {
        command.args(["--recipe", recipe]);
    }
    let output = command.output().expect("run guest-images/build.sh");
    assert!(
        output.status.success(),
        "the guest image build failed: {}",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = |key: &str| {
        stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .map(PathBuf::from)
    };
    Image {
        kernel: path("kernel").expect("build.sh prints kernel=PATH"),
        initramfs: path("initramfs").expect("build.sh prints initramfs=PATH"),
        config: path("config"),
    }
}

/// One finished `simvm` invocation.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    /// The summary line (`seed=... digest=... result=...`).
    pub fn summary(&self) -> &str {
        self.stdout
            .lines()
            .rev()
            .find(|l| l.starts_with("seed="))
            .unwrap_or_else(|| {
                panic!(
                    "no summary line in simvm's output:\n{}\n{}",
                    self.stdout, self.stderr
                )
            })
    }

    /// A `key=value` field of the summary line.
    pub fn field(&self, key: &str) -> String {
        self.summary()
            .split_whitespace()
            .find_map(|f| f.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .unwrap_or_else(|| panic!("no {key}= in summary: {}", self.summary()))
            .to_string()
    }

    /// The guest's console text: what follows ` > ` on each annotated line of `machine`.
    pub fn console(&self, machine: &str) -> Vec<String> {
        self.stdout
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let _step = words.next()?;
                (words.next()? == machine).then_some(())?;
                l.split_once(" > ").map(|(_, text)| text.to_string())
            })
            .collect()
    }

    /// The rest of the first console line of `machine` that starts with `prefix`; a panic
    /// naming the prefix if there is none.
    pub fn console_after(&self, machine: &str, prefix: &str) -> String {
        self.console(machine)
            .iter()
            .find_map(|l| l.strip_prefix(prefix).map(str::to_string))
            .unwrap_or_else(|| panic!("{machine} printed no {prefix:?} line:\n{}", self.all()))
    }

    /// Everything simvm printed, for assertion messages.
    pub fn all(&self) -> String {
        format!(
            "exit code {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `simvm` with `args` and the environment changes `env`.
pub fn simvm(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(simvm_bin());
    command.args(args).stdin(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("spawn simvm").into()
}

/// `simvm COMMAND --kernel K --initramfs I REST...` for `args` = `[COMMAND, REST...]`, with
/// `image`'s kernel and initramfs (given right after the subcommand, so before any `--`).
pub fn simvm_on(image: &Image, args: &[&str]) -> Run {
    let kernel = image.kernel.to_string_lossy();
    let initramfs = image.initramfs.to_string_lossy();
    let (command, rest) = args.split_first().expect("a simvm subcommand");
    let mut all = vec![*command, "--kernel", &kernel, "--initramfs", &initramfs];
    all.extend_from_slice(rest);
    simvm(&all, &[])
}

/// A `simvm ...` line run through the shell, `simvm` standing for the binary under test.
pub fn run_line(line: &str) -> Run {
    let rest = line
        .strip_prefix("simvm ")
        .unwrap_or_else(|| panic!("not a simvm command line: {line}"));
    Command::new("sh")
        .arg("-c")
        .arg(format!("'{}' {rest}", simvm_bin().display()))
        .stdin(Stdio::null())
        .output()
        .expect("run sh")
        .into()
}

/// `simvm run` with the default image and `args` before the `--`, then `command`.
pub fn run_guest(args: &[&str], command: &[&str]) -> Run {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all.push("--");
    all.extend_from_slice(command);
    simvm_on(&image(None), &all)
}

/// `simvm run SCENARIO --seed SEED EXTRA...` with `image`'s kernel and initramfs.
pub fn run_scenario_on(image: &Image, scenario: &Path, seed: u64, extra: &[&str]) -> Run {
    let (scenario, seed) = (scenario.to_string_lossy(), seed.to_string());
    let mut args = vec!["run", &scenario, "--seed", &seed];
    args.extend_from_slice(extra);
    simvm_on(image, &args)
}

/// `simvm run SCENARIO --seed SEED EXTRA...` with the base image.
pub fn run_scenario(scenario: &Path, seed: u64, extra: &[&str]) -> Run {
    run_scenario_on(&image(None), scenario, seed, extra)
}

/// Runs `run(0)`, ..., `run(n - 1)` at once, each on its own thread, and returns the results in
/// order.
///
/// Determinism tests repeat their runs side by side on purpose: several simvm processes sharing
/// the host's CPUs is the condition under which host scheduling would leak into a guest if
/// anything let it (it once did, through interrupt-window exits on PVM), and it also makes the
/// tests shorter.
pub fn side_by_side<T: Send>(n: usize, run: impl Fn(usize) -> T + Sync) -> Vec<T> {
    std::thread::scope(|scope| {
        let run = &run;
        let handles: Vec<_> = (0..n).map(|i| scope.spawn(move || run(i))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a side-by-side run panicked"))
            .collect()
    })
}

/// `sh -c command` run twice side by side with `args`: with the guest tunings as they are,
/// then with `switches_off` added. Both runs must succeed.
pub fn with_and_without(args: &[&str], switches_off: &[&str], command: &str) -> [Run; 2] {
    let runs = side_by_side(2, |i| {
        let mut args = args.to_vec();
        if i == 1 {
            args.extend(switches_off);
        }
        run_guest(&args, &["sh", "-c", command])
    });
    for run in &runs {
        assert_eq!(run.code, Some(0), "{}", run.all());
    }
    runs.try_into()
        .unwrap_or_else(|_| panic!("side_by_side(2, ...) gave another number of runs"))
}

/// A number from the environment variable `name`, or `default` when it is unset (benchmarks'
/// knobs); a value that is not a number stops the benchmark with a clear message.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// A fresh temporary directory for one test, removed when the test passes and kept for
/// reading when it fails (the drop runs while the test's panic unwinds).
pub fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("simvm-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    TempDir(dir)
}

/// See [`temp_dir`].
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = PathBuf;

    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for reading: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The lines `output` produces, each stamped with the time since `started` at which it arrived.
/// A reader thread stamps them as they come, so a slow consumer cannot skew the times
/// (benchmarks time a guest's boot by its console).
pub fn stamped_lines(
    output: impl Read + Send + 'static,
    started: Instant,
) -> mpsc::Receiver<(Duration, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            if tx.send((started.elapsed(), line)).is_err() {
                break;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skipped_kvm_test_says_so() {
        for device in ["/dev/null", "/nonexistent/kvm"] {
            let mut report = Vec::new();
            assert!(!kvm_or_skip_with(
                "t1",
                true,
                Path::new(device),
                &mut report
            ));
            let report = String::from_utf8(report).unwrap();
            assert!(
                report.starts_with("SKIPPED t1: SIMVM_SKIP_KVM_TESTS=1 (KVM ")
                    && report.contains("this test did not run")
                    && report.ends_with('\n')
                    && report.lines().count() == 1,
                "{report:?}"
            );
        }
    }

    #[test]
    fn a_usable_device_runs_the_test_silently() {
        let mut report = Vec::new();
        assert!(kvm_or_skip_with(
            "t2",
            false,
            Path::new("/dev/null"),
            &mut report
        ));
        assert!(report.is_empty());
    }

    #[test]
    #[should_panic(expected = "set SIMVM_SKIP_KVM_TESTS=1 to skip the KVM tests explicitly")]
    fn an_unusable_device_fails_the_test_unless_skipped() {
        kvm_or_skip_with("t3", false, Path::new("/nonexistent/kvm"), &mut Vec::new());
    }
}

/// The release `simvm` binary beside a benchmark (`target/release/deps/BENCH-*` ->
/// `target/release/simvm`), or `SIMVM_BIN`.
pub fn release_simvm_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SIMVM_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the benchmark knows its own path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("the benchmark lives in target/<profile>/deps")
        .join("simvm");
    assert!(
        bin.is_file(),
        "{} does not exist: build it first with `cargo build --release -p simvm` \
         (same CARGO_TARGET_DIR), or set SIMVM_BIN",
        bin.display()
    );
    bin
}

/// One annotated console line, `<step> <source> HH:MM:SS.uuuuuu > <text>`, with the wall time
/// at which it was read.
#[derive(Clone, Debug)]
pub struct ConsoleLine {
    /// When it was read, from the start of the simvm process.
    pub wall: Duration,
    /// `m1`, `m1#2` (a second incarnation), `net`, `fault`.
    pub source: String,
    pub vtime: Duration,
    pub text: String,
}

impl ConsoleLine {
    pub fn parse(raw: &str, wall: Duration) -> Option<Self> {
        let (head, text) = raw.split_once(" > ")?;
        let mut words = head.split_whitespace();
        words.next()?.parse::<u64>().ok()?;
        let source = words.next()?.to_string();
        let vtime = parse_vtime(words.next()?)?;
        Some(Self {
            wall,
            source,
            vtime,
            text: text.to_string(),
        })
    }
}

/// `HH:MM:SS.uuuuuu`, as `simvm_vmm::console::format_vtime` writes it.
pub fn parse_vtime(s: &str) -> Option<Duration> {
    let (hms, micros) = s.split_once('.')?;
    let mut parts = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (parts.next()??, parts.next()??, parts.next()??);
    Some(Duration::from_secs(h * 3600 + m * 60 + sec) + Duration::from_micros(micros.parse().ok()?))
}

/// Fails the test at once, before any guest boots, if tshark is missing: the capture tests
/// read their captures with it, and a test that cannot check its capture must not pass.
pub fn require_tshark() {
    run_tshark("tshark", &["--version"]);
}

/// What tshark prints for the capture `pcap` with `args`.
pub fn tshark(pcap: &Path, args: &[&str]) -> String {
    let pcap = pcap.to_str().expect("utf-8 path");
    run_tshark("tshark", &[&["-r", pcap], args].concat())
}

pub fn run_tshark(program: &str, args: &[&str]) -> String {
    let out = match Command::new(program).args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{program} is not installed, and this test reads its packet capture with it: \
             install tshark (`sudo apt-get install tshark`; ./test.sh installs it)"
        ),
        Err(e) => panic!("cannot run {program}: {e}"),
    };
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails the test at once, before any guest boots, if chromium is missing.
pub fn require_chromium() {
    match Command::new("chromium").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "chromium --version failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "chromium cannot run ({e}), and this test opens a page in it: install it \
             (`sudo apt-get install chromium`; ./test.sh installs it)"
        ),
    }
}

/// The DOM of the page `html` after a real browser (Debian's headless chromium) has loaded and
/// laid it out. Panics if chromium is missing: a test that cannot open its page must not pass.
pub fn browser_dom(html: &Path) -> String {
    let url = format!(
        "file://{}",
        html.canonicalize().expect("the page exists").display()
    );
    let out = match Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            &url,
        ])
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "chromium is not installed, and this test opens a page in it: install it \
             (`sudo apt-get install chromium`; ./test.sh installs it)"
        ),
        Err(e) => panic!("cannot run chromium: {e}"),
    };
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that `again` replayed `first`: the same digest and the same consoles of `machines`.
pub fn assert_same_run(first: &Run, again: &Run, machines: &[&str]) {
    assert_eq!(
        again.field("digest"),
        first.field("digest"),
        "{}\n{}",
        first.all(),
        again.all()
    );
    for m in machines {
        assert_eq!(again.console(m), first.console(m), "{m}'s console differs");
    }
}
