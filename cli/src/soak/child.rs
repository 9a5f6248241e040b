//! One seed's `simvm run` child: its command line, the line that reproduces it, and what its
//! exit and output say about the seed.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use simvm_vmm::units::format_rounded;

use crate::shell_quote;

/// How every seed's `simvm run` is put together.
#[derive(Clone, Debug)]
pub struct ChildTemplate {
    /// This very binary: children run the same simvm as the soak.
    pub exe: PathBuf,
    /// The scenario file, as given.
    pub scenario: Option<String>,
    /// `simvm run` options for every seed, then any `-- COMMAND` (which must stay last).
    pub forwarded: Vec<String>,
    /// Each seed's outputs go to `out/seed-N/`; `None`: no files (`simvm run --seeds`).
    pub out: Option<PathBuf>,
}

/// Names of a seed's files in its directory.
pub const CONSOLE_LOG: &str = "console.log";
pub const SIMVM_LOG: &str = "simvm.log";
pub const TRACE: &str = "trace.jsonl";
pub const PCAP: &str = "net.pcapng";
pub const DISKS: &str = "disks";
/// The workload history and its timeline (scenarios with a `[check]`).
pub const HISTORY: &str = "history.jsonl";
/// What `--history` writes beside [`HISTORY`]: its name with `.html`.
pub const HISTORY_TIMELINE: &str = "history.html";
pub const REPRO: &str = "repro.sh";
/// Every name a soak writes into a seed's directory.
pub const SEED_FILES: [&str; 8] = [
    CONSOLE_LOG,
    SIMVM_LOG,
    TRACE,
    PCAP,
    DISKS,
    HISTORY,
    HISTORY_TIMELINE,
    REPRO,
];

impl ChildTemplate {
    pub fn seed_dir(&self, seed: u64) -> Option<PathBuf> {
        self.out
            .as_ref()
            .map(|out| out.join(format!("seed-{seed}")))
    }

    /// The child's arguments: the outputs into the seed's directory, `--check-determinism`
    /// for a spot-checked seed.
    pub fn args(&self, seed: u64, check: bool) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["run".into()];
        args.extend(self.scenario.iter().map(OsString::from));
        args.extend(["--seed".into(), seed.to_string().into()]);
        if check {
            args.push("--check-determinism".into());
        }
        if let Some(dir) = self.seed_dir(seed) {
            for (flag, name) in [
                ("--trace", TRACE),
                ("--pcap", PCAP),
                ("--keep-disks", DISKS),
                ("--history", HISTORY),
            ] {
                args.push(flag.into());
                args.push(dir.join(name).into_os_string());
            }
        }
        args.extend(self.forwarded.iter().map(OsString::from));
        args
    }

    /// The one command that repeats the seed's run (without the soak's output files).
    pub fn reproduce(&self, seed: u64, check: bool) -> String {
        let mut line = String::from("simvm run");
        for word in self.scenario.iter() {
            line.push(' ');
            line.push_str(&shell_quote(word));
        }
        line.push_str(&format!(" --seed {seed}"));
        if check {
            line.push_str(" --check-determinism");
        }
        for word in &self.forwarded {
            line.push(' ');
            line.push_str(&shell_quote(word));
        }
        line
    }
}

/// What became of one seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// The system under test failed: the run's verdict (a machine's exit status, a crash, a
    /// deadlock), `reason` from its summary line.
    Failed {
        reason: String,
    },
    /// Killed by the soak after `--timeout`.
    TimedOut {
        after: Duration,
    },
    /// simvm's own failure: the spot check's two runs of the seed differ.
    Nondeterministic {
        verdict: String,
    },
    /// simvm's own failure: an error, a panic, a death by signal.
    SimvmError {
        reason: String,
    },
}

impl Verdict {
    pub fn passed(&self) -> bool {
        *self == Verdict::Passed
    }

    /// simvm failed, rather than the system under test.
    pub fn simvm_failure(&self) -> bool {
        matches!(
            self,
            Verdict::Nondeterministic { .. } | Verdict::SimvmError { .. }
        )
    }

    /// One word for the summary.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Passed => "ok",
            Verdict::Failed { .. } => "FAIL",
            Verdict::TimedOut { .. } => "TIMEOUT",
            Verdict::Nondeterministic { .. } => "NONDETERMINISTIC",
            Verdict::SimvmError { .. } => "SIMVM-ERROR",
        }
    }

    /// What went wrong, in one line.
    pub fn reason(&self) -> String {
        match self {
            Verdict::Passed => "passed".into(),
            Verdict::Failed { reason } => reason.clone(),
            Verdict::TimedOut { after } => {
                format!("timed out after {} (killed)", format_rounded(*after))
            }
            Verdict::Nondeterministic { verdict } => format!("simvm failure: {verdict}"),
            Verdict::SimvmError { reason } => format!("simvm failure: {reason}"),
        }
    }
}

/// How a child ended.
pub struct Ending<'a> {
    pub status: Option<ExitStatus>,
    /// The soak killed it at its timeout.
    pub timed_out: Option<Duration>,
    /// It ran with `--check-determinism`.
    pub checked: bool,
    pub stdout: &'a Tail,
    pub stderr: &'a Tail,
}

impl Ending<'_> {
    pub fn verdict(&self) -> Verdict {
        if let Some(after) = self.timed_out {
            return Verdict::TimedOut { after };
        }
        // The determinism check's verdict line follows the first run's summary.
        let verdict = self
            .stdout
            .lines()
            .find(|l| l.starts_with("NOT deterministic") || l.starts_with("NOT comparable"));
        if let Some(verdict) = verdict.filter(|_| self.checked) {
            return Verdict::Nondeterministic {
                verdict: verdict.to_string(),
            };
        }
        let Some(status) = self.status else {
            return Verdict::SimvmError {
                reason: "its exit status is unknown".into(),
            };
        };
        if status.success() {
            return Verdict::Passed;
        }
        let summary = self.stdout.lines().rev().find(|l| l.starts_with("seed="));
        if let Some(reason) = summary.and_then(|l| l.split_once(" result=FAIL")) {
            let reason = reason.1.trim();
            return Verdict::Failed {
                reason: if reason.is_empty() {
                    "result=FAIL".into()
                } else {
                    reason.to_string()
                },
            };
        }
        let error = self
            .stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("simvm: error:") || l.contains("panicked at"))
            .or_else(|| self.stderr.lines().next_back());
        let how = match (status.code(), status.signal()) {
            (Some(code), _) => format!("simvm exited with status {code}"),
            (None, Some(signal)) => format!("simvm was killed by signal {signal}"),
            (None, None) => format!("simvm ended: {status}"),
        };
        Verdict::SimvmError {
            reason: match error {
                Some(line) => format!("{how}: {line}"),
                None => how,
            },
        }
    }
}

/// Splits an output stream, fed in chunks as they arrive, into lines of at most `longest`
/// bytes (longer ones are cut: the log file keeps everything).
#[derive(Debug)]
pub struct LineSplitter {
    partial: Vec<u8>,
    longest: usize,
}

impl LineSplitter {
    pub fn new(longest: usize) -> Self {
        LineSplitter {
            partial: Vec::new(),
            longest,
        }
    }

    /// Feeds `bytes`, handing each line they complete to `line`.
    pub fn push(&mut self, mut bytes: &[u8], line: &mut dyn FnMut(&str)) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.extend_partial(&bytes[..end]);
            self.end_line(line);
            bytes = &bytes[end + 1..];
        }
        self.extend_partial(bytes);
    }

    /// The stream ended: a last line without a newline counts.
    pub fn finish(&mut self, line: &mut dyn FnMut(&str)) {
        if !self.partial.is_empty() {
            self.end_line(line);
        }
    }

    fn extend_partial(&mut self, bytes: &[u8]) {
        let room = self.longest.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn end_line(&mut self, line: &mut dyn FnMut(&str)) {
        line(&String::from_utf8_lossy(&self.partial));
        self.partial.clear();
    }
}

/// The last lines of an output stream, fed in chunks as they arrive.
#[derive(Debug)]
pub struct Tail {
    lines: VecDeque<String>,
    splitter: LineSplitter,
    keep: usize,
}

/// A line longer than this is cut: the tail is for reports, the log file keeps everything.
const LONGEST_LINE: usize = 4096;

impl Tail {
    pub fn new(keep: usize) -> Self {
        Tail {
            lines: VecDeque::new(),
            splitter: LineSplitter::new(LONGEST_LINE),
            keep,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        let Tail {
            lines,
            splitter,
            keep,
        } = self;
        splitter.push(bytes, &mut |line| keep_last(lines, *keep, line));
    }

    /// The stream ended: a last line without a newline counts.
    pub fn finish(&mut self) {
        let Tail {
            lines,
            splitter,
            keep,
        } = self;
        splitter.finish(&mut |line| keep_last(lines, *keep, line));
    }

    pub fn lines(&self) -> impl DoubleEndedIterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }
}

fn keep_last(lines: &mut VecDeque<String>, keep: usize, line: &str) {
    if lines.len() == keep {
        lines.pop_front();
    }
    lines.push_back(line.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(forwarded: &[&str], out: Option<&str>) -> ChildTemplate {
        ChildTemplate {
            exe: "/bin/simvm".into(),
            scenario: Some("my scenario.toml".into()),
            forwarded: forwarded.iter().map(|s| s.to_string()).collect(),
            out: out.map(PathBuf::from),
        }
    }

    #[test]
    fn the_child_writes_its_outputs_into_the_seed_directory() {
        let t = template(&["--until", "5s", "--", "sh", "-c", "echo hi"], Some("out"));
        let args: Vec<String> = t
            .args(7, true)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args.join(" "),
            "run my scenario.toml --seed 7 --check-determinism --trace out/seed-7/trace.jsonl \
             --pcap out/seed-7/net.pcapng --keep-disks out/seed-7/disks --history out/seed-7/history.jsonl --until 5s -- sh -c echo hi"
        );
        assert_eq!(
            t.reproduce(7, false),
            "simvm run 'my scenario.toml' --seed 7 --until 5s -- sh -c 'echo hi'"
        );
        assert_eq!(
            t.reproduce(7, true),
            "simvm run 'my scenario.toml' --seed 7 --check-determinism --until 5s -- sh -c 'echo hi'"
        );
        let bare = template(&[], None);
        assert_eq!(bare.args(1, false).len(), 4);
        assert_eq!(bare.seed_dir(1), None);
    }

    fn tail(text: &str) -> Tail {
        let mut tail = Tail::new(3);
        // In awkward chunks, as a pipe delivers them.
        for chunk in text.as_bytes().chunks(5) {
            tail.push(chunk);
        }
        tail.finish();
        tail
    }

    fn verdict(code: i32, checked: bool, stdout: &str, stderr: &str) -> Verdict {
        Ending {
            status: Some(ExitStatus::from_raw(code << 8)),
            timed_out: None,
            checked,
            stdout: &tail(stdout),
            stderr: &tail(stderr),
        }
        .verdict()
    }

    #[test]
    fn tails_keep_the_last_lines() {
        let t = tail("a\nb\nc\nd\nlast without newline");
        assert_eq!(
            t.lines().collect::<Vec<_>>(),
            ["c", "d", "last without newline"]
        );
        let mut long = Tail::new(2);
        long.push(&vec![b'x'; 10_000]);
        long.push(b"\n");
        assert_eq!(long.lines().next().map(str::len), Some(LONGEST_LINE));
    }

    #[test]
    fn the_verdict_comes_from_the_status_and_the_summary() {
        let ok = "seed=1 steps=5 result=ok m1=exit(0)\n";
        assert_eq!(verdict(0, false, ok, ""), Verdict::Passed);
        let fail = "1 m1 00:00:00.1 > boom\nseed=2 steps=5 digest=v2-1 result=FAIL m1=exit(1)\n";
        assert_eq!(
            verdict(1, false, fail, "reproduce: simvm run --seed 2\n"),
            Verdict::Failed {
                reason: "m1=exit(1)".into()
            }
        );
        let nondet =
            format!("{ok}NOT deterministic: digests v2-a and v2-b differ, first at step 42\n");
        assert_eq!(
            verdict(1, true, &nondet, ""),
            Verdict::Nondeterministic {
                verdict: "NOT deterministic: digests v2-a and v2-b differ, first at step 42".into()
            }
        );
        assert_eq!(
            verdict(2, false, "", "simvm: error: cannot open /dev/kvm\n"),
            Verdict::SimvmError {
                reason: "simvm exited with status 2: simvm: error: cannot open /dev/kvm".into()
            }
        );
        let killed = Ending {
            status: Some(ExitStatus::from_raw(9)),
            timed_out: None,
            checked: false,
            stdout: &tail(""),
            stderr: &tail(""),
        };
        assert_eq!(
            killed.verdict(),
            Verdict::SimvmError {
                reason: "simvm was killed by signal 9".into()
            }
        );
        let timed_out = Ending {
            timed_out: Some(Duration::from_secs(60)),
            ..killed
        };
        assert_eq!(
            timed_out.verdict().reason(),
            "timed out after 1m00s (killed)"
        );
        assert!(verdict(2, false, "", "x").simvm_failure());
        assert!(!verdict(1, false, fail, "").simvm_failure());
    }
}
