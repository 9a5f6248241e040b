//! The event loop that runs a soak's children: up to `jobs` `simvm run` processes at once, their
//! output pipes, a per-seed timeout (a timerfd each), SIGCHLD, SIGINT and SIGTERM (one
//! signalfd) and the progress tick (a timerfd), all in one rust-vmm `event-manager` loop on the
//! main thread. The supervisor is the manager's only subscriber: each fd is registered with a
//! tag (`Events::with_data`) saying which slot and stream it is.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use simvm_vmm::units::format_rounded;
use vmm_sys_util::timerfd::TimerFd;

use super::assertions::SeedAssertions;
use super::child::{self, ChildTemplate, Ending, Tail};
use super::progress::Progress;
use super::report::{SeedResult, Tally};
use super::seeds::spot_checked;

/// What to run.
pub struct Plan {
    pub template: ChildTemplate,
    /// The seeds, in order.
    pub seeds: Vec<u64>,
    pub jobs: usize,
    /// Determinism spot check rate, in hundredths of a percent.
    pub check_basis_points: u32,
    pub timeout: Duration,
    /// Copy the children's output to ours and print each seed's verdict (`simvm run --seeds`).
    pub stream: bool,
}

/// How the soak ended.
pub struct Finished {
    /// In the order of the seeds.
    pub results: Vec<SeedResult>,
    /// The signal that stopped the soak.
    pub interrupted: Option<Signal>,
    /// What stopped the soak if something went wrong in the supervisor itself.
    pub fatal: Option<String>,
    pub wall: Duration,
}

/// How long a child that has exited may keep its pipes open (a stray grandchild holding them)
/// before the supervisor stops reading.
const GRACE: Duration = Duration::from_secs(2);
/// Lines of each stream kept for reports.
const TAIL_LINES: usize = 40;
/// Tags of the fds that are not a slot's.
const TAG_SIGNALS: u32 = u32::MAX;
const TAG_TICK: u32 = u32::MAX - 1;
/// A slot's fds: `slot * 4 + kind`.
const STDOUT: u32 = 0;
const STDERR: u32 = 1;
const TIMER: u32 = 2;

/// Runs the plan to its end, or until SIGINT or SIGTERM.
///
/// Blocks SIGINT, SIGTERM and SIGCHLD in the calling thread, which must be the process's only
/// thread (otherwise another thread would take the signals); children start with no signal
/// blocked (std resets the mask) and in their own process group, so a Ctrl-C on the terminal
/// reaches the supervisor alone, which then kills them.
pub fn supervise(plan: Plan, progress: Progress) -> Result<Finished, String> {
    let started = Instant::now();
    let mut mask = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGCHLD] {
        mask.add(signal);
    }
    mask.thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| format!("cannot create a signalfd: {e}"))?;
    let mut tick = TimerFd::new().map_err(|e| format!("cannot create a timerfd: {e}"))?;
    let second = Duration::from_secs(1);
    tick.reset(second, Some(second))
        .map_err(|e| format!("cannot arm a timerfd: {e}"))?;

    let queue = plan
        .seeds
        .iter()
        .copied()
        .enumerate()
        .collect::<VecDeque<_>>();
    let supervisor = Supervisor {
        slots: (0..plan.jobs.max(1)).map(|_| None).collect(),
        plan,
        queue,
        results: Vec::new(),
        signals,
        tick,
        progress,
        interrupted: None,
        fatal: None,
        buf: vec![0; 64 << 10],
    };
    let mut manager: EventManager<Supervisor> =
        EventManager::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
    let id = manager.add_subscriber(supervisor);
    loop {
        let supervisor = manager
            .subscriber_mut(id)
            .map_err(|e| format!("event loop: {e}"))?;
        if supervisor.over() {
            break;
        }
        manager.run().map_err(|e| format!("event loop: {e}"))?;
    }
    let mut supervisor = manager
        .remove_subscriber(id)
        .map_err(|e| format!("event loop: {e}"))?;
    supervisor.results.sort_by_key(|(position, _)| *position);
    let results: Vec<SeedResult> = supervisor.results.into_iter().map(|(_, r)| r).collect();
    supervisor.progress.finish(Tally::of(&results));
    Ok(Finished {
        results,
        interrupted: supervisor.interrupted,
        fatal: supervisor.fatal,
        wall: started.elapsed(),
    })
}

struct Supervisor {
    plan: Plan,
    /// Seeds not started yet, with their positions in the list.
    queue: VecDeque<(usize, u64)>,
    slots: Vec<Option<Running>>,
    results: Vec<(usize, SeedResult)>,
    signals: SignalFd,
    tick: TimerFd,
    progress: Progress,
    interrupted: Option<Signal>,
    fatal: Option<String>,
    buf: Vec<u8>,
}

/// One running child.
struct Running {
    position: usize,
    seed: u64,
    checked: bool,
    child: Child,
    started: Instant,
    streams: [Stream; 2],
    timer: TimerFd,
    status: Option<ExitStatus>,
    timed_out: Option<Duration>,
    /// Killed because the soak was interrupted: no result.
    abandoned: bool,
    /// The guests' assertion lines among the console lines on its stdout.
    assertions: SeedAssertions,
}

struct Stream {
    /// `None` once it has ended.
    pipe: Option<File>,
    /// The seed's log file, if the soak keeps files.
    log: Option<BufWriter<File>>,
    tail: Tail,
}

impl MutEventSubscriber for Supervisor {
    fn init(&mut self, ops: &mut EventOps) {
        let registered = ops
            .add(Events::with_data(&self.signals, TAG_SIGNALS, EventSet::IN))
            .and_then(|_| ops.add(Events::with_data(&self.tick, TAG_TICK, EventSet::IN)));
        if let Err(e) = registered {
            self.fatal = Some(format!("event loop: {e}"));
            return;
        }
        for slot in 0..self.slots.len() {
            self.start_next(slot, ops);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TAG_SIGNALS => self.on_signals(ops),
            TAG_TICK => {
                // A read only to re-arm the level-triggered fd; missed ticks do not matter.
                let _ = self.tick.wait();
                self.progress.tick(self.tally());
            }
            tag => {
                let slot = (tag / 4) as usize;
                match tag % 4 {
                    TIMER => self.on_timer(slot, ops),
                    kind => self.on_output(slot, kind, ops),
                }
            }
        }
    }
}

impl Supervisor {
    /// Nothing left to start and nothing running.
    fn over(&self) -> bool {
        (self.queue.is_empty() || self.interrupted.is_some() || self.fatal.is_some())
            && self.slots.iter().all(Option::is_none)
    }

    fn tally(&self) -> Tally {
        let passed = self
            .results
            .iter()
            .filter(|(_, r)| r.verdict.passed())
            .count() as u64;
        Tally {
            passed,
            failed: self.results.len() as u64 - passed,
        }
    }

    /// Starts the next seed in `slot`, if there is one and the soak goes on.
    fn start_next(&mut self, slot: usize, ops: &mut EventOps) {
        if self.interrupted.is_some() || self.fatal.is_some() {
            return;
        }
        let Some((position, seed)) = self.queue.pop_front() else {
            return;
        };
        match self.spawn(slot, position, seed, ops) {
            Ok(running) => self.slots[slot] = Some(running),
            Err(e) => self.stop_everything(format!("seed {seed}: {e}")),
        }
    }

    fn spawn(
        &mut self,
        slot: usize,
        position: usize,
        seed: u64,
        ops: &mut EventOps,
    ) -> Result<Running, String> {
        let checked = spot_checked(seed, self.plan.check_basis_points);
        let template = &self.plan.template;
        let dir = template.seed_dir(seed);
        let logs = match &dir {
            Some(dir) => {
                // A directory left by an earlier soak would mix its files with this run's.
                if dir.exists() {
                    std::fs::remove_dir_all(dir)
                        .map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
                }
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                [
                    Some(create(&dir.join(child::CONSOLE_LOG))?),
                    Some(create(&dir.join(child::SIMVM_LOG))?),
                ]
            }
            None => [None, None],
        };
        let mut command = Command::new(&template.exe);
        command
            .args(template.args(seed, checked))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Out of the terminal's foreground group: Ctrl-C is the supervisor's to handle.
            .process_group(0);
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: it makes one prctl system call, and neither
        // allocates nor takes a lock.
        unsafe {
            // Outside the supervisor's process group, a child would outlive a supervisor killed
            // with SIGKILL (a CI job's hard timeout) and run its seed to the end.
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", template.exe.display()))?;
        let pipes = [
            child.stdout.take().map(|p| File::from(OwnedFd::from(p))),
            child.stderr.take().map(|p| File::from(OwnedFd::from(p))),
        ];
        let [log_out, log_err] = logs;
        let [pipe_out, pipe_err] = pipes;
        let mut timer = TimerFd::new().map_err(|e| format!("cannot create a timerfd: {e}"))?;
        timer
            .reset(self.plan.timeout, None)
            .map_err(|e| format!("cannot arm a timerfd: {e}"))?;
        let running = Running {
            position,
            seed,
            checked,
            child,
            started: Instant::now(),
            streams: [
                Stream {
                    pipe: pipe_out,
                    log: log_out,
                    tail: Tail::new(TAIL_LINES),
                },
                Stream {
                    pipe: pipe_err,
                    log: log_err,
                    tail: Tail::new(TAIL_LINES),
                },
            ],
            timer,
            status: None,
            timed_out: None,
            abandoned: false,
            assertions: SeedAssertions::default(),
        };
        let tag = slot as u32 * 4;
        let mut register = || -> Result<(), event_manager::Error> {
            for (kind, stream) in [STDOUT, STDERR].into_iter().zip(&running.streams) {
                if let Some(pipe) = &stream.pipe {
                    ops.add(Events::with_data(pipe, tag + kind, EventSet::IN))?;
                }
            }
            ops.add(Events::with_data(&running.timer, tag + TIMER, EventSet::IN))
        };
        if let Err(e) = register() {
            let mut running = running;
            let _ = running.child.kill();
            let _ = running.child.wait();
            return Err(format!("event loop: {e}"));
        }
        Ok(running)
    }

    fn on_output(&mut self, slot: usize, kind: u32, ops: &mut EventOps) {
        let stream_mode = self.plan.stream;
        let Some(running) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let stream = &mut running.streams[kind as usize];
        let Some(pipe) = &mut stream.pipe else {
            return;
        };
        // One read per readiness: the fd is level-triggered, so what is left comes back.
        let n = match pipe.read(&mut self.buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return,
            Err(_) => 0,
        };
        if n == 0 {
            let _ = ops.remove(Events::with_data(
                &*pipe,
                slot as u32 * 4 + kind,
                EventSet::IN,
            ));
            stream.pipe = None;
            stream.tail.finish();
            if let Some(log) = &mut stream.log {
                let _ = log.flush();
            }
            self.maybe_finished(slot, ops);
            return;
        }
        let bytes = &self.buf[..n];
        stream.tail.push(bytes);
        if kind == STDOUT {
            running.assertions.push(bytes);
        }
        if let Some(log) = &mut stream.log {
            // A full disk must not stop the soak; the tail still has the end.
            let _ = log.write_all(bytes);
        }
        if stream_mode {
            let _ = match kind {
                STDERR => std::io::stderr().write_all(bytes),
                _ => std::io::stdout().write_all(bytes),
            };
        }
    }

    fn on_timer(&mut self, slot: usize, ops: &mut EventOps) {
        let timeout = self.plan.timeout;
        let Some(running) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let _ = running.timer.wait();
        if running.status.is_none() {
            // The seed's time is up.
            if !running.abandoned {
                running.timed_out = Some(timeout);
            }
            let _ = running.child.kill();
            let _ = running.timer.reset(GRACE, None);
            return;
        }
        // Exited, and its pipes are still open after the grace period: stop reading.
        let tag = slot as u32 * 4;
        for (kind, stream) in running.streams.iter_mut().enumerate() {
            if let Some(pipe) = stream.pipe.take() {
                let _ = ops.remove(Events::with_data(&pipe, tag + kind as u32, EventSet::IN));
                stream.tail.finish();
            }
        }
        self.maybe_finished(slot, ops);
    }

    fn on_signals(&mut self, ops: &mut EventOps) {
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) => match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => self.reap(ops),
                    Ok(signal @ (Signal::SIGINT | Signal::SIGTERM)) => self.interrupt(signal),
                    _ => {}
                },
                Ok(None) => return,
                Err(e) => {
                    self.stop_everything(format!("cannot read the signalfd: {e}"));
                    return;
                }
            }
        }
    }

    /// SIGCHLD: collect every child that has exited (signals of several exits merge into one).
    fn reap(&mut self, ops: &mut EventOps) {
        for slot in 0..self.slots.len() {
            let Some(running) = self.slots[slot].as_mut() else {
                continue;
            };
            if running.status.is_some() {
                continue;
            }
            if let Ok(Some(status)) = running.child.try_wait() {
                running.status = Some(status);
                if running.streams.iter().any(|s| s.pipe.is_some()) {
                    let _ = running.timer.reset(GRACE, None);
                }
                self.maybe_finished(slot, ops);
            }
        }
    }

    fn interrupt(&mut self, signal: Signal) {
        if self.interrupted.is_some() {
            return;
        }
        self.interrupted = Some(signal);
        let running = self.kill_all();
        self.progress.note(&format!(
            "simvm soak: {signal}: stopping ({running} seeds running were killed and are not counted)"
        ));
    }

    /// Something is wrong with the supervisor itself: stop, keeping what is done.
    fn stop_everything(&mut self, reason: String) {
        self.progress
            .note(&format!("simvm soak: error: {reason}; stopping"));
        self.fatal.get_or_insert(reason);
        self.kill_all();
    }

    fn kill_all(&mut self) -> usize {
        let mut killed = 0;
        for running in self.slots.iter_mut().flatten() {
            if running.status.is_none() {
                running.abandoned = true;
                let _ = running.child.kill();
                killed += 1;
            }
        }
        killed
    }

    /// Once the child has exited and both pipes have ended: its verdict, and the next seed.
    fn maybe_finished(&mut self, slot: usize, ops: &mut EventOps) {
        let done = matches!(&self.slots[slot],
            Some(r) if r.status.is_some() && r.streams.iter().all(|s| s.pipe.is_none()));
        if !done {
            return;
        }
        let Some(running) = self.slots[slot].take() else {
            return;
        };
        let _ = ops.remove(Events::with_data(
            &running.timer,
            slot as u32 * 4 + TIMER,
            EventSet::IN,
        ));
        if let Some(result) = self.conclude(running) {
            self.report(&result.1);
            self.results.push(result);
        }
        self.start_next(slot, ops);
    }

    /// The seed's result; its directory deleted if it passed, else kept with a repro.sh.
    fn conclude(&self, running: Running) -> Option<(usize, SeedResult)> {
        let template = &self.plan.template;
        let dir = template.seed_dir(running.seed);
        let [mut out, mut err] = running.streams;
        for log in [out.log.take(), err.log.take()].into_iter().flatten() {
            let _ = log.into_inner().map(|f| f.sync_all());
        }
        if running.abandoned && running.timed_out.is_none() {
            if let Some(dir) = &dir {
                let _ = std::fs::remove_dir_all(dir);
            }
            return None;
        }
        let verdict = Ending {
            status: running.status,
            timed_out: running.timed_out,
            checked: running.checked,
            stdout: &out.tail,
            stderr: &err.tail,
        }
        .verdict();
        let reproduce = template.reproduce(running.seed, running.checked);
        let kept = match dir {
            Some(dir) if verdict.passed() => {
                let _ = std::fs::remove_dir_all(&dir);
                None
            }
            Some(dir) => {
                // `--keep-disks` makes the directory whether or not there are disks.
                let _ = std::fs::remove_dir(dir.join(child::DISKS));
                if let Err(e) = write_repro(&dir, running.seed, &verdict.reason(), &reproduce) {
                    self.progress.note(&format!("simvm soak: {e}"));
                }
                Some(dir)
            }
            None => None,
        };
        let tail = out
            .tail
            .lines()
            .chain(err.tail.lines())
            .map(str::to_string)
            .collect();
        Some((
            running.position,
            SeedResult {
                seed: running.seed,
                verdict,
                checked: running.checked,
                wall: running.started.elapsed(),
                reproduce,
                kept,
                tail,
                assertions: running.assertions.finish(),
            },
        ))
    }

    fn report(&mut self, result: &SeedResult) {
        if self.plan.stream {
            // Beside the console the child streamed, on the same stdout.
            let _ = writeln!(
                std::io::stdout(),
                "simvm: seed {}: {} ({})",
                result.seed,
                if result.verdict.passed() {
                    "ok".to_string()
                } else {
                    format!("{} {}", result.verdict.label(), result.verdict.reason())
                },
                format_rounded(result.wall)
            );
        } else if !result.verdict.passed() {
            let mut note = format!(
                "{} seed {}: {}\n    reproduce: {}",
                result.verdict.label(),
                result.seed,
                result.verdict.reason(),
                result.reproduce
            );
            if let Some(dir) = &result.kept {
                note.push_str(&format!("\n    output:    {}", dir.display()));
            }
            self.progress.note(&note);
        }
        let tally = self.tally();
        self.progress.seed_done(Tally {
            passed: tally.passed + u64::from(result.verdict.passed()),
            failed: tally.failed + u64::from(!result.verdict.passed()),
        });
    }
}

fn create(path: &Path) -> Result<BufWriter<File>, String> {
    File::create(path)
        .map(BufWriter::new)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// `repro.sh` in a failed seed's directory: the reproduce line, run from the directory the
/// soak ran in (the scenario's path is relative to it). `SIMVM` names the binary.
fn write_repro(dir: &Path, seed: u64, reason: &str, reproduce: &str) -> Result<(), String> {
    let cwd = std::env::current_dir()
        .map(|d| crate::shell_quote(&d.to_string_lossy()))
        .unwrap_or_else(|_| ".".into());
    let command = reproduce
        .strip_prefix("simvm ")
        .map(|rest| format!("exec \"${{SIMVM:-simvm}}\" {rest}"))
        .unwrap_or_else(|| reproduce.to_string());
    let reason = reason.replace('\n', " ");
    let script = format!(
        "#!/bin/sh\n# Seed {seed} of a simvm soak: {reason}\n\
         # Set SIMVM to the simvm binary if it is not on PATH.\ncd {cwd} || exit 2\n{command}\n"
    );
    let path = dir.join(child::REPRO);
    std::fs::write(&path, script).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot make {} executable: {e}", path.display()))
}
