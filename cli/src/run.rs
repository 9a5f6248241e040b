//! `simvm run`: run a simulation, stream the consoles, print the summary and the verdict.

use simvm_vmm::console::format_vtime;
use simvm_vmm::machine::Stop;
use simvm_vmm::simulation::{Simulation, SimulationError};
use simvm_vmm::template::Origin;
use simvm_vmm::world::{Ending, MachineOutcome, Outcome};

use crate::progress::Progress;

/// How long a machine the run waited for must have made no system call before the end for the
/// report to say so: a second of virtual time, where a working program makes one far more often.
const QUIET_NOTICE_NS: u64 = 1_000_000_000;

/// The exit status of a run stopped by SIGINT or SIGTERM, as a shell reports a command
/// killed by SIGINT.
const INTERRUPTED_STATUS: i32 = 130;

/// A simulation and the command line that reproduces it.
pub struct RunPlan {
    pub simulation: Simulation,
    /// The command line that reproduces this run, for failure reports.
    pub reproduce: String,
    /// The same with the snapshot options: the line for a run that failed for want of its
    /// snapshot (without them the run passes).
    pub reproduce_with_snapshot: String,
    /// The command line that replays this run up to a virtual time (ns): for a run stopped
    /// by a signal.
    pub replay_to: Box<dyn Fn(u64) -> String>,
    /// Write the run's profile here (`--profile`).
    pub profile: Option<std::path::PathBuf>,
    /// Write the workload's history here, and its timeline beside it (`--history`).
    pub history: Option<std::path::PathBuf>,
}

impl RunPlan {
    /// Runs once, printing the console and the summary; returns the process exit code.
    pub fn run(&self) -> Result<i32, SimulationError> {
        let progress = self.progress();
        let outcome = self.simulation.run(&mut |line| {
            progress.console_line();
            println!("{line}");
        });
        drop(progress);
        Ok(self.report(&outcome?, None))
    }

    /// Runs twice and compares the digests.
    pub fn check_determinism(&self) -> Result<i32, SimulationError> {
        let seed = self.simulation.seed;
        let progress = self.progress();
        let check = self.simulation.check_determinism(&mut |line| {
            progress.console_line();
            println!("{line}");
        });
        drop(progress);
        eprintln!("simvm: ran seed {seed} twice to check determinism");
        let check = check?;
        let code = self.report(&check.first, Some(&check.verdict()));
        Ok(if check.deterministic() { code } else { 1 })
    }

    /// The boot status on stderr, on a terminal.
    fn progress(&self) -> Progress {
        let names = self.simulation.scenario.machines.iter();
        Progress::on_terminal(names.map(|m| m.name.clone()).collect())
    }

    fn report(&self, outcome: &Outcome, extra: Option<&str>) -> i32 {
        if let Some(dir) = &self.profile {
            match self.simulation.write_profile(outcome, dir) {
                Ok(summary) => {
                    eprint!("{summary}");
                    eprintln!("simvm: profile written to {}", dir.display());
                }
                Err(e) => eprintln!("simvm: error: {e}"),
            }
        }
        for template in &outcome.templates {
            match &template.origin {
                Ok(Origin::Built { wall, replaced }) => {
                    if let Some(why) = replaced {
                        eprintln!("simvm: the cached machine template was unusable: {why}");
                    }
                    eprintln!(
                        "simvm: built machine template {} in {:.1}s (cached in {})",
                        template.key,
                        wall.as_secs_f64(),
                        template.dir.display()
                    );
                }
                Ok(Origin::Cached) => {}
                Err(reason) => eprintln!(
                    "simvm: no machine template for these machines, so they booted: {reason}"
                ),
            }
        }
        if let Some(from) = &outcome.resumed_from {
            eprintln!(
                "simvm: continued snapshot {} (taken by seed {} at step {}, virtual time {}) with seed {}",
                from.id,
                from.seed,
                from.step,
                format_vtime(from.vtime_ns),
                outcome.seed.0
            );
        }
        let mut snapshot_missing = false;
        if let Some(request) = &self.simulation.snapshot {
            match &outcome.snapshot {
                Some(taken) => eprintln!(
                    "simvm: saved the world as snapshot {} in {} at step {}, virtual time {}; \
                     continue it with: simvm run ... --from {} --seed N",
                    taken.id,
                    taken.dir.display(),
                    taken.step,
                    format_vtime(taken.vtime_ns),
                    taken.dir.display()
                ),
                None => {
                    snapshot_missing = true;
                    eprintln!(
                        "simvm: no snapshot: the condition {} never held at a quiet moment \
                         (no frame or disk request on its way) before the run ended",
                        request.condition
                    );
                }
            }
        }
        if let Some(report) = outcome.crash() {
            eprintln!("{report}");
        }
        if outcome.ending == Ending::Interrupted {
            eprintln!(
                "simvm: stopped by a signal at step {}, virtual time {}; replay to here with: {}",
                outcome.steps,
                format_vtime(outcome.vtime_ns),
                (self.replay_to)(outcome.vtime_ns)
            );
        }
        if outcome.ending == Ending::Idle {
            eprintln!(
                "simvm: every running machine is halted with nothing pending (at virtual time {}): \
                 the system under test is idle or deadlocked",
                format_vtime(outcome.vtime_ns)
            );
        }
        self.report_still_running(outcome);
        eprint!("{}", outcome.assertions.report());
        for failed in outcome.assertions.failures() {
            if let Some(at) = &failed.first_failure {
                eprintln!("simvm: assertion failed: {} {at}", failed.title());
            }
        }
        self.report_history(outcome);
        let success = self.simulation.passed(outcome) && !snapshot_missing;
        let mut machines: Vec<String> = outcome.machines.iter().map(machine_summary).collect();
        machines.extend(outcome.assertions.failed_token());
        machines.extend(outcome.verdict.as_ref().map(|v| v.token().to_string()));
        println!(
            "seed={} steps={} vtime={} wall={:.2}s digest={} cpu={} start={} result={} {}{}",
            outcome.seed.0,
            outcome.steps,
            format_vtime(outcome.vtime_ns),
            outcome.wall.as_secs_f64(),
            outcome.digest,
            outcome.cpu_template,
            start_summary(outcome),
            match (success, &outcome.ending) {
                (_, Ending::Interrupted) => "INTERRUPTED",
                (true, _) => "ok",
                (false, _) => "FAIL",
            },
            machines.join(" "),
            if outcome.watchdog_kicks.is_empty() {
                String::new()
            } else {
                format!(
                    " nondeterministic({} watchdog kicks)",
                    outcome.watchdog_kicks.len()
                )
            }
        );
        if let Some(extra) = extra {
            println!("{extra}");
        }
        if outcome.ending == Ending::Interrupted {
            return INTERRUPTED_STATUS;
        }
        if !success {
            let line = if snapshot_missing {
                &self.reproduce_with_snapshot
            } else {
                &self.reproduce
            };
            eprintln!("reproduce: {line}");
        }
        match (success, outcome.machines.as_slice()) {
            (true, _) => 0,
            // One machine: its command's status is simvm's.
            (false, [only]) => match only.exit_status {
                Some(status) if status != 0 => i32::from(status),
                _ => 1,
            },
            (false, _) => 1,
        }
    }
}

impl RunPlan {
    /// A machine the run waited for that was still running at its end: when its programs
    /// last made a system call, which tells a machine blocked for good (a deadlock, input that
    /// never comes) from a busy one.
    fn report_still_running(&self, outcome: &Outcome) {
        let expected = self.simulation.scenario.machines.iter().map(|m| m.expect);
        for (machine, expect) in outcome.machines.iter().zip(expected) {
            if !expect.waits() || machine.stop.is_some() {
                continue;
            }
            let Some(by) = machine.last_syscall_by else {
                continue;
            };
            let quiet = outcome.vtime_ns.saturating_sub(by);
            if quiet >= QUIET_NOTICE_NS {
                eprintln!(
                    "simvm: {} was still running at the end and had made no system call since \
                     {} ({}): blocked (a deadlock, input that never comes) or computing \
                     without system calls",
                    machine.name,
                    format_vtime(by),
                    simvm_vmm::units::format_rounded(std::time::Duration::from_nanos(quiet))
                );
            }
        }
    }

    /// The checker's verdict on stderr, and the history and its timeline saved if asked.
    fn report_history(&self, outcome: &Outcome) {
        let Some(verdict) = &outcome.verdict else {
            if let Some(path) = &self.history {
                eprintln!(
                    "simvm: no history written to {}: the scenario has no [check]",
                    path.display()
                );
            }
            return;
        };
        eprint!("{}", verdict.to_text());
        match &self.history {
            Some(path) => match verdict.write(path) {
                Ok(html) => eprintln!(
                    "simvm: history written to {}{}",
                    path.display(),
                    html.map(|h| format!(", its timeline to {}", h.display()))
                        .unwrap_or_default()
                ),
                Err(e) => eprintln!("simvm: error: cannot write {}: {e}", path.display()),
            },
            None if !verdict.passed() => {
                eprintln!("simvm: save the history and its timeline with --history FILE")
            }
            None => {}
        }
    }
}

/// How the machines started: `cold` (booted) or `template-KEY8` (the first 8 digits of each
/// template's key).
fn start_summary(outcome: &Outcome) -> String {
    let keys: Vec<String> = outcome
        .templates
        .iter()
        .filter(|t| t.origin.is_ok())
        .map(|t| format!("template-{}", &t.key[..t.key.len().min(8)]))
        .collect();
    if keys.is_empty() {
        return "cold".into();
    }
    keys.join(",")
}

fn machine_summary(m: &MachineOutcome) -> String {
    let state = match &m.stop {
        Some(Stop::PowerOff {
            exit_status: Some(s),
        }) => format!("exit({s})"),
        Some(Stop::PowerOff { exit_status: None }) => "poweroff".into(),
        Some(Stop::Restart { .. }) => "restart".into(),
        Some(Stop::Killed) => "killed".into(),
        Some(Stop::HaltedForever) => "halted".into(),
        Some(Stop::Crashed(report)) => format!("crashed({})", report.kind),
        None => "running".into(),
    };
    let mut out = format!("{}={state}", m.name);
    if m.incarnations > 1 {
        out.push_str(&format!("[incarnations={}]", m.incarnations));
    }
    if let Some(net) = &m.net {
        out.push_str(&format!(
            "[tx={} rx={} lost={} partitioned={} down={} full={} off={} big={}]",
            net.frames_sent,
            net.rx.delivered,
            net.tx.dropped_loss,
            net.tx.dropped_partition,
            net.tx.dropped_link_down,
            net.rx.dropped_queue_full,
            net.rx.dropped_not_running,
            net.rx.dropped_too_big
        ));
    }
    if m.device_errors > 0 {
        out.push_str(&format!("[device-errors={}]", m.device_errors));
    }
    out
}
