//! Writing a run's profile: folded stacks, flame graphs (the `inferno` crate), samples by
//! instruction and the text summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use simvm_devices::pvclock::HostWork;

use super::symbols::{frame_names, Symbols};
use super::{activity, figures, lookahead, ExitReason, MachineProfile};
use crate::error::{Error, Result};

/// A machine's kernel samples by the function they landed in.
fn functions(symbols: &Symbols, profile: &MachineProfile) -> BTreeMap<String, u64> {
    let mut functions: BTreeMap<String, u64> = BTreeMap::new();
    for (frames, count) in &profile.kernel_samples {
        let leaf = frames.first().copied().unwrap_or(0);
        *functions.entry(symbols.name(leaf)).or_default() += count;
    }
    functions
}

/// The activity of samples in guest user code.
const USER_CODE: &str = "user code";

/// A machine's samples by activity (`activity.rs`), user code included.
fn activities(symbols: &Symbols, profile: &MachineProfile) -> BTreeMap<String, u64> {
    let mut by_activity: BTreeMap<String, u64> = BTreeMap::new();
    for (frames, count) in &profile.kernel_samples {
        let names = frame_names(symbols, frames);
        let activity = activity::kernel_activity(names.iter().map(String::as_str));
        *by_activity.entry(activity).or_default() += count;
    }
    let user = profile.user_sample_count();
    if user > 0 {
        by_activity.insert(USER_CODE.to_string(), user);
    }
    by_activity
}

/// A run's profile, ready to write.
pub struct RunProfile<'a> {
    /// Name, kernel file and profile of each machine.
    pub machines: Vec<(&'a str, &'a Path, &'a MachineProfile)>,
    /// Samples that found simvm's own code running (not inside `KVM_RUN`).
    pub simvm_samples: u64,
    /// The run's wall time, for the rates.
    pub wall: Duration,
    /// Each machine's exit counters (interrupts injected, clock kicks), for their rates.
    pub stats: Vec<crate::machine::ExitStats>,
    /// What conservative parallel stepping could make of the run's steps.
    pub parallel: Option<&'a lookahead::ParallelEstimate>,
}

impl RunProfile<'_> {
    /// Folded stacks (`machine;kernel;function count`) of every machine, or of `only`.
    fn folded(&self, symbols: &[&Symbols], only: Option<usize>) -> Vec<String> {
        let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
        for (i, (name, _, profile)) in self.machines.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            for (frames, count) in &profile.kernel_samples {
                let mut stack = format!("{name};kernel");
                for function in frame_names(symbols[i], frames).iter().rev() {
                    stack.push(';');
                    stack.push_str(function);
                }
                *stacks.entry(stack).or_default() += count;
            }
            for (comm, count) in &profile.user_samples {
                *stacks.entry(format!("{name};user;{comm}")).or_default() += count;
            }
        }
        if only.is_none() && self.simvm_samples > 0 {
            stacks.insert("simvm".into(), self.simvm_samples);
        }
        stacks
            .into_iter()
            .map(|(stack, count)| format!("{stack} {count}"))
            .collect()
    }

    /// Samples per guest kernel instruction of machine `i`, most sampled first: `ADDRESS
    /// function+OFFSET COUNT` lines. On a host that emulates kernel code, an instruction the
    /// emulator handles slowly stands out here where a function's total does not show it.
    fn instructions(&self, symbols: &[&Symbols], i: usize) -> Vec<String> {
        let mut by_address: BTreeMap<u64, u64> = BTreeMap::new();
        for (frames, count) in &self.machines[i].2.kernel_samples {
            if let Some(&rip) = frames.first() {
                *by_address.entry(rip).or_default() += count;
            }
        }
        let mut by_address: Vec<_> = by_address.into_iter().collect();
        by_address.sort_by_key(|&(address, count)| (std::cmp::Reverse(count), address));
        by_address
            .into_iter()
            .map(|(address, count)| {
                let at = symbols[i].name_and_offset(address);
                format!("{address:#x} {at} {count}")
            })
            .collect()
    }

    /// Writes `DIR/profile.txt` (the summary), `DIR/run.folded`, `DIR/run.svg` and per machine
    /// `NAME.folded`, `NAME.svg` and `NAME.instructions`; returns the summary.
    pub fn write(&self, dir: &Path) -> Result<String> {
        let io = |path: &Path, e: std::io::Error| Error::Profile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        // One parse per kernel: the machines of a run mostly share one.
        let mut parsed: BTreeMap<&Path, Symbols> = BTreeMap::new();
        for (_, kernel, _) in &self.machines {
            parsed
                .entry(kernel)
                .or_insert_with(|| Symbols::beside(kernel));
        }
        let symbols: Vec<&Symbols> = self
            .machines
            .iter()
            .map(|(_, kernel, _)| &parsed[kernel])
            .collect();
        let mut outputs: Vec<(PathBuf, Vec<String>, String)> = vec![(
            dir.join("run"),
            self.folded(&symbols, None),
            "simvm run".to_string(),
        )];
        for (i, (name, _, _)) in self.machines.iter().enumerate() {
            outputs.push((
                dir.join(name),
                self.folded(&symbols, Some(i)),
                name.to_string(),
            ));
        }
        for (i, (name, _, _)) in self.machines.iter().enumerate() {
            let path = dir.join(format!("{name}.instructions"));
            let lines = self.instructions(&symbols, i);
            std::fs::write(&path, lines.join("\n") + "\n").map_err(|e| io(&path, e))?;
        }
        for (base, lines, title) in &outputs {
            let folded = base.with_extension("folded");
            std::fs::write(&folded, lines.join("\n") + "\n").map_err(|e| io(&folded, e))?;
            if lines.is_empty() {
                continue;
            }
            let svg = base.with_extension("svg");
            let file = std::fs::File::create(&svg).map_err(|e| io(&svg, e))?;
            let mut options = inferno::flamegraph::Options::default();
            options.title = title.clone();
            inferno::flamegraph::from_lines(
                &mut options,
                lines.iter().map(String::as_str),
                std::io::BufWriter::new(file),
            )
            .map_err(|e| io(&svg, e))?;
        }
        // One pass over the samples serves both the summary and the file.
        let figures = self.figures(&symbols);
        let summary = self.summary(&figures);
        let text = dir.join("profile.txt");
        std::fs::write(&text, &summary).map_err(|e| io(&text, e))?;
        let json = dir.join(figures::FILE_NAME);
        let figures = serde_json::to_string_pretty(&figures).map_err(|e| io(&json, e.into()))?;
        std::fs::write(&json, figures + "\n").map_err(|e| io(&json, e))?;
        Ok(summary)
    }

    /// The summary's figures, every activity, function and process included, for programs
    /// (`profile.json`, which `simvm profile compare` reads).
    fn figures(&self, symbols: &[&Symbols]) -> figures::ProfileFigures {
        let machines = self
            .machines
            .iter()
            .enumerate()
            .map(|(i, (name, _, profile))| {
                let functions = functions(symbols[i], profile);
                let stats = self.stats.get(i).copied().unwrap_or_default();
                figures::MachineFigures {
                    name: name.to_string(),
                    vtime_s: profile.vtime_ns as f64 / 1e9,
                    kvm_run_s: profile.run_wall_ns as f64 / 1e9,
                    samples: profile.user_sample_count() + functions.values().sum::<u64>(),
                    activities: activities(symbols[i], profile),
                    functions,
                    processes: profile.process_samples.clone(),
                    exits: profile
                        .exits
                        .iter()
                        .map(|(reason, &(count, ns))| {
                            let wall_s = ns as f64 / 1e9;
                            (reason.to_string(), figures::ExitFigures { count, wall_s })
                        })
                        .collect(),
                    syscalls: profile.guest.syscalls,
                    page_faults: profile.guest.page_faults,
                    interrupts: stats.interrupts,
                    halts: stats.hlt,
                }
            })
            .collect();
        figures::ProfileFigures {
            format: figures::FORMAT,
            wall_s: self.wall.as_secs_f64(),
            machines,
        }
    }

    /// The text summary: per machine, virtual seconds per wall second, time in `KVM_RUN`, exits
    /// by reason, and the samples by activity, function and process.
    fn summary(&self, figures: &figures::ProfileFigures) -> String {
        let mut out = String::new();
        let wall = self.wall.as_secs_f64().max(1e-9);
        let samples: u64 =
            self.simvm_samples + figures.machines.iter().map(|m| m.samples).sum::<u64>();
        let _ = writeln!(
            out,
            "profile: {wall:.2} s of wall time, {samples} samples ({} in simvm itself)",
            self.simvm_samples
        );
        if let Some(parallel) = self.parallel {
            let _ = writeln!(out, "{}", parallel.summary());
        }
        for (i, machine) in figures.machines.iter().enumerate() {
            self.write_machine(&mut out, i, machine, wall);
        }
        out
    }

    /// Machine `i`'s part of the summary: its rates and exits, then its samples.
    fn write_machine(
        &self,
        out: &mut String,
        i: usize,
        figures: &figures::MachineFigures,
        wall: f64,
    ) {
        let (name, _, profile) = self.machines[i];
        let vtime = profile.vtime_ns as f64 / 1e9;
        let count = |reason| profile.exits.get(&reason).map_or(0, |(c, _)| *c);
        let _ = writeln!(
            out,
            "\n{name}: {:.3} virtual s per wall s; {:.2} s inside KVM_RUN; {} exits ({} of \
             them signals, {} page clears, {} page copies, {} byte copies, {} record fills)",
            vtime / wall,
            profile.run_wall_ns as f64 / 1e9,
            profile.exit_count(),
            count(ExitReason::Signal),
            count(ExitReason::HostWork(HostWork::PageClear)),
            count(ExitReason::HostWork(HostWork::PageCopy)),
            count(ExitReason::HostWork(HostWork::ByteCopy)),
            count(ExitReason::HostWork(HostWork::RecordFill))
        );
        let _ = writeln!(
            out,
            "  virtual time {vtime:.3} s: {:.3} s skipped while idle, {:.3} s charged for work",
            profile.idle_ns as f64 / 1e9,
            (vtime - profile.idle_ns as f64 / 1e9).max(0.0)
        );
        if let Some(stats) = self.stats.get(i) {
            let per_virtual_second = |n: u64| n as f64 / vtime.max(1e-9);
            let _ = writeln!(
                out,
                "  {} interrupts injected ({:.1} per virtual s), {} halts, {} clock kicks",
                stats.interrupts,
                per_virtual_second(stats.interrupts),
                stats.hlt,
                stats.clock_kicks
            );
            let guest = &profile.guest;
            let _ = writeln!(
                out,
                "  {} system calls ({:.1} per virtual s), {} page faults ({:.1} per virtual s), \
                 as the guest kernel counted them",
                guest.syscalls,
                per_virtual_second(guest.syscalls),
                guest.page_faults,
                per_virtual_second(guest.page_faults),
            );
        }
        let mut exits: Vec<_> = profile.exits.iter().collect();
        exits.sort_by_key(|(_, (_, ns))| std::cmp::Reverse(*ns));
        for (reason, (count, ns)) in exits.iter().take(10) {
            let _ = writeln!(
                out,
                "  {:>10} exits {:>9.3} s  {reason}",
                count,
                *ns as f64 / 1e9
            );
        }
        write_samples(out, figures);
    }
}

/// A machine's samples in the summary: by activity, by the function they landed in, and by
/// process.
fn write_samples(out: &mut String, machine: &figures::MachineFigures) {
    let total = machine.samples;
    if total == 0 {
        return;
    }
    let user = machine.activities.get(USER_CODE).copied().unwrap_or(0);
    let _ = writeln!(out, "  samples: {total}, user code {user}");
    let _ = writeln!(out, "  by activity (the innermost context of each sample):");
    write_shares(out, &machine.activities, total, 10);
    let _ = writeln!(out, "  by function:");
    write_shares(out, &machine.functions, total, 10);
    if !machine.processes.is_empty() {
        let _ = writeln!(
            out,
            "  by process (the task running: its system calls and faults, and the interrupts \
             that came while it ran):"
        );
        write_shares(out, &machine.processes, total, 5);
    }
}

/// The `take` largest of `counts` as shares of `total`, largest first.
fn write_shares(out: &mut String, counts: &BTreeMap<String, u64>, total: u64, take: usize) {
    let mut counts: Vec<(&String, u64)> = counts.iter().map(|(k, &v)| (k, v)).collect();
    counts.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
    for (name, count) in counts.iter().take(take) {
        let _ = writeln!(
            out,
            "  {:>9.1}%  {name}",
            100.0 * *count as f64 / total as f64
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simvm_devices::pvclock::GuestCounts;

    #[test]
    fn a_profile_writes_folded_stacks_flame_graphs_and_a_summary() {
        let dir = std::env::temp_dir().join(format!("simvm-profile-{}", std::process::id()));
        let kernel = dir.join("vmlinux");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("System.map"),
            "ffffffff81000100 T do_idle\nffffffff81000200 T cpu_idle\n",
        )
        .unwrap();
        let mut profile = MachineProfile::default();
        profile.exit(ExitReason::Hlt, Duration::from_millis(5));
        // do_idle called from cpu_idle: the return address is just past the call.
        profile.kernel_sample(vec![0xffff_ffff_8100_0110, 0xffff_ffff_8100_0210]);
        profile.kernel_sample(vec![0xffff_ffff_8100_0120, 0xffff_ffff_8100_0210]);
        profile.kernel_sample(vec![0xffff_ffff_8100_0120, 0xffff_ffff_8100_0210]);
        profile.user_sample("etcd");
        for comm in ["swapper", "swapper", "etcd", "etcd"] {
            profile.process_sample(comm);
        }
        profile.vtime_ns = 2_000_000_000;
        profile.guest = GuestCounts {
            syscalls: 5000,
            page_faults: 300,
        };
        let parallel = lookahead::ParallelEstimate {
            min_lookahead_ns: 50_000,
            sequential: Duration::from_secs(4),
            parallel: vec![
                (Some(2), Duration::from_secs(2)),
                (Some(4), Duration::from_secs(2)),
                (None, Duration::from_secs(2)),
            ],
        };
        let run = RunProfile {
            machines: vec![("m1", &kernel, &profile)],
            simvm_samples: 1,
            wall: Duration::from_secs(1),
            stats: vec![crate::machine::ExitStats {
                interrupts: 300,
                hlt: 7,
                ..Default::default()
            }],
            parallel: Some(&parallel),
        };
        let out = dir.join("out");
        let summary = run.write(&out).unwrap();
        let folded = std::fs::read_to_string(out.join("run.folded")).unwrap();
        assert_eq!(
            folded,
            "m1;kernel;cpu_idle;do_idle 3\nm1;user;etcd 1\nsimvm 1\n"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("m1.instructions")).unwrap(),
            "0xffffffff81000120 do_idle+0x20 2\n0xffffffff81000110 do_idle+0x10 1\n"
        );
        assert!(std::fs::read_to_string(out.join("m1.svg"))
            .unwrap()
            .contains("do_idle"));
        assert!(
            summary.contains("m1: 2.000 virtual s per wall s"),
            "{summary}"
        );
        assert!(summary.contains("75.0%  do_idle"), "{summary}");
        assert!(
            summary.contains(
                "lookahead, they could take 2.00 s on 2 threads (2.00x), 2.00 s on 4 threads \
                 (2.00x), 2.00 s with a thread per machine (2.00x)"
            ),
            "{summary}"
        );
        assert!(summary.contains("75.0%  idle loop"), "{summary}");
        assert!(summary.contains("25.0%  user code"), "{summary}");
        let by_process = summary
            .split_once("  by process")
            .map(|(_, rest)| rest)
            .unwrap_or_default();
        assert!(
            by_process.contains("50.0%  swapper\n") && by_process.contains("50.0%  etcd\n"),
            "{summary}"
        );
        assert!(
            summary.contains("300 interrupts injected (150.0 per virtual s), 7 halts"),
            "{summary}"
        );
        assert!(
            summary.contains(
                "5000 system calls (2500.0 per virtual s), 300 page faults (150.0 per virtual s)"
            ),
            "{summary}"
        );
        // The same figures for programs, every activity and function included.
        let figures = figures::load(&out).unwrap();
        let m1 = &figures.machines[0];
        assert_eq!(
            (m1.name.as_str(), m1.samples, m1.syscalls, m1.page_faults),
            ("m1", 4, 5000, 300)
        );
        assert_eq!((m1.interrupts, m1.halts), (300, 7));
        assert_eq!(m1.activities.get("idle loop"), Some(&3));
        assert_eq!(m1.activities.get("user code"), Some(&1));
        assert_eq!(m1.functions.get("do_idle"), Some(&3));
        assert_eq!(m1.processes.get("swapper"), Some(&2));
        assert_eq!(m1.exits["hlt"].count, 1);
        assert!((m1.kvm_run_s - 0.005).abs() < 1e-12, "{}", m1.kvm_run_s);
        assert!((m1.vtime_s - 2.0).abs() < 1e-12 && (figures.wall_s - 1.0).abs() < 1e-12);
        let _ = std::fs::remove_dir_all(dir);
    }
}
