//! A workload's history, read back from its disk after the run and judged for linearizability
//! (scenario `[check]`, docs/etcd.md).
//!
//! The client records its own clock; the times are turned into world virtual time here, so
//! that the history lines up with the faults of the timeline and with every other machine.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use simvm_checker::{check, Event, History, Limits, Model, Report, Verdict};
use simvm_devices::disk::Fault;

use crate::scenario::{Action, Event as TimelineEvent, Heal};
use crate::skew::ClockChange;
use crate::world::RecordedHistory;

/// A fault as the history's timeline shades it: world time from, to, and a label.
pub type FaultInterval = (u64, u64, String);

/// What the checker made of a run's history.
#[derive(Debug)]
pub struct HistoryVerdict {
    /// Where the history was read from, e.g. `m4/vdb`.
    pub source: String,
    /// The history as read, one JSON line per event, times in world virtual time.
    pub jsonl: String,
    /// The checker's report, or why there was nothing to check.
    pub report: Result<Report, String>,
    /// The run's faults, for the timeline.
    pub faults: Vec<FaultInterval>,
}

impl HistoryVerdict {
    /// Only a linearizable history passes: "unknown" does not.
    pub fn passed(&self) -> bool {
        matches!(&self.report, Ok(r) if r.is_linearizable())
    }

    /// The checker's report (or the problem), for the end of a run.
    pub fn to_text(&self) -> String {
        match &self.report {
            Ok(report) => format!("simvm: history {}: {}", self.source, report.to_text()),
            Err(problem) => format!("simvm: history {}: {problem}\n", self.source),
        }
    }

    /// One word for the run's summary line: `linearizable`, `NOT-LINEARIZABLE`, `UNKNOWN` or
    /// `NO-HISTORY`.
    pub fn token(&self) -> &'static str {
        match &self.report {
            Ok(report) => match report.verdict() {
                Verdict::Linearizable => "linearizable",
                Verdict::NotLinearizable(_) => "NOT-LINEARIZABLE",
                Verdict::Unknown(_) => "UNKNOWN",
            },
            Err(_) => "NO-HISTORY",
        }
    }

    /// Writes the history to `path` and its timeline to the same path with `.html`; returns
    /// the timeline's path (`None` when there was no history to draw).
    pub fn write(&self, path: &Path) -> std::io::Result<Option<PathBuf>> {
        std::fs::write(path, &self.jsonl)?;
        let Ok(report) = &self.report else {
            return Ok(None);
        };
        let html = path.with_extension("html");
        report.write_html(&html, &self.faults)?;
        Ok(Some(html))
    }
}

/// Reads and checks `recorded`, written by the client on `source`.
pub fn judge(
    recorded: &RecordedHistory,
    source: &str,
    model: Model,
    timeout: Duration,
    faults: Vec<FaultInterval>,
) -> HistoryVerdict {
    let (jsonl, report) = match in_world_time(recorded) {
        Ok(jsonl) => {
            let report = History::read_jsonl(jsonl.as_bytes())
                .map_err(|e| format!("unreadable history: {e}"))
                .and_then(|history| match history.len() {
                    0 => Err("the history is empty: the client recorded no operation".into()),
                    _ => Ok(history),
                })
                .map(|history| {
                    let limits = Limits {
                        time_budget: Some(timeout),
                        ..Limits::default()
                    };
                    check(&history, model, limits)
                });
            (jsonl, report)
        }
        Err(problem) => (String::new(), Err(problem)),
    };
    HistoryVerdict {
        source: source.to_string(),
        jsonl,
        report,
        faults,
    }
}

/// The recorded lines with each `time_ns` moved from the client's clock to world time. A last
/// line cut short (the client stopped while writing it) is left out.
fn in_world_time(recorded: &RecordedHistory) -> Result<String, String> {
    let Some(clock) = recorded.clock else {
        return Err("the client machine never ran".into());
    };
    let text = std::str::from_utf8(&recorded.text)
        .map_err(|e| format!("the history is not UTF-8 text: {e}"))?;
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    let mut out = String::with_capacity(complete.len());
    for (n, line) in complete.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut event: Event =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        event.time_ns = clock.world(event.time_ns);
        let json = serde_json::to_string(&event).map_err(|e| format!("line {}: {e}", n + 1))?;
        let _ = writeln!(out, "{json}");
    }
    Ok(out)
}

/// The faults of `timeline` as intervals: each from its event to the one that ends it (a heal,
/// a restart, a resume, a clock reset, a clear), or to `end_ns` if none does. `names` are the
/// machines' names by index.
pub fn fault_intervals(
    timeline: &[TimelineEvent],
    names: &[String],
    end_ns: u64,
) -> Vec<FaultInterval> {
    let name = |m: usize| names.get(m).map_or("?", String::as_str);
    let mut intervals = Vec::new();
    for (i, event) in timeline.iter().enumerate() {
        let later = &timeline[i + 1..];
        let ends = |is_end: &dyn Fn(&Action) -> bool| {
            (later.iter().find(|e| is_end(&e.action))).map_or(end_ns, |e| e.at_ns)
        };
        let (end, label) = match &event.action {
            Action::Partition(p) => {
                let groups: Vec<String> = (p.groups.iter())
                    .map(|g| g.iter().map(|&m| name(m)).collect::<Vec<_>>().join(" "))
                    .collect();
                let healed = ends(&|a| match a {
                    Action::Heal(Heal::All) => true,
                    Action::Heal(Heal::Named(n)) => *n == p.name,
                    _ => false,
                });
                let arrow = if p.one_way { " -/-> " } else { " | " };
                (healed, format!("partition {}", groups.join(arrow)))
            }
            Action::Link(link) if link.settings.up == Some(false) => {
                let pair = link.links;
                let up = ends(
                    &|a| matches!(a, Action::Link(l) if l.links == pair && l.settings.up == Some(true)),
                );
                let end_name = |m: Option<usize>| m.map_or("*", name);
                let label = format!("link {}-{} down", end_name(pair.from), end_name(pair.to));
                (up, label)
            }
            &Action::Kill { machine, .. } => (
                ends(&|a| matches!(a, Action::Restart { machine: m } if *m == machine)),
                format!("kill {}", name(machine)),
            ),
            &Action::Pause { machine, for_ns } => {
                let resumed = match for_ns {
                    Some(length) => event.at_ns.saturating_add(length),
                    None => ends(&|a| matches!(a, Action::Resume { machine: m } if *m == machine)),
                };
                (resumed, format!("pause {}", name(machine)))
            }
            Action::Clock { machine, change } if !is_clock_reset(change) => {
                let machine = *machine;
                let reset = ends(
                    &|a| matches!(a, Action::Clock { machine: m, change } if *m == machine && is_clock_reset(change)),
                );
                (reset, format!("clock {} {change}", name(machine)))
            }
            &Action::DiskFault {
                machine,
                disk,
                fault,
            } => {
                let disk_name = format!("{}/{}", name(machine), crate::machine::disk_name(disk));
                let end = match fault {
                    Fault::Stall { until_ns } => until_ns,
                    Fault::Clear | Fault::LatentErrors { .. } => continue,
                    _ => ends(&|a| {
                        matches!(a, Action::DiskFault { machine: m, disk: d, fault: Fault::Clear }
                            if *m == machine && *d == disk)
                    }),
                };
                (end, format!("disk {disk_name} {}", fault_word(&fault)))
            }
            _ => continue,
        };
        intervals.push((event.at_ns, end.max(event.at_ns), label));
    }
    intervals
}

/// A clock change that puts the clock back on world time.
fn is_clock_reset(change: &ClockChange) -> bool {
    matches!(
        change,
        ClockChange::Rate { ppm: 0 } | ClockChange::Offset { offset_ns: 0 }
    )
}

fn fault_word(fault: &Fault) -> &'static str {
    match fault {
        Fault::Stall { .. } => "stall",
        Fault::Slow { .. } => "slow",
        Fault::WriteErrors { .. } => "write errors",
        Fault::LatentErrors { .. } => "latent errors",
        Fault::Clear => "clear",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;
    use crate::skew::{ClockSkew, GuestClock};

    fn recorded(text: &str, offset: u64, epoch: u64) -> RecordedHistory {
        RecordedHistory {
            text: text.as_bytes().to_vec(),
            clock: Some(GuestClock {
                epoch,
                offset,
                skew: ClockSkew::default(),
            }),
        }
    }

    fn judged(history: &RecordedHistory) -> HistoryVerdict {
        judge(
            history,
            "m4/vdb",
            Model::Register,
            Duration::from_secs(5),
            vec![],
        )
    }

    const LINES: &str = "\
{\"process\":0,\"type\":\"invoke\",\"f\":\"write\",\"key\":\"k1\",\"value\":5,\"time_ns\":1000}
{\"process\":0,\"type\":\"ok\",\"f\":\"write\",\"key\":\"k1\",\"value\":5,\"time_ns\":3000,\"revision\":7}
{\"process\":1,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"k1\",\"time_ns\":4000}
{\"process\":1,\"type\":\"ok\",\"f\":\"read\",\"key\":\"k1\",\"value\":";

    #[test]
    fn times_move_to_world_time_and_a_cut_last_line_is_left_out() {
        // The guest's clock read 500 at world time 100 (a template's clock, say).
        let history = recorded(LINES, 500, 100);
        let verdict = judged(&history);
        let times: Vec<u64> = (verdict.jsonl.lines())
            .map(|l| serde_json::from_str::<Event>(l).expect("json").time_ns)
            .collect();
        assert_eq!(times, [600, 2600, 3600]);
        assert!(verdict.passed(), "{}", verdict.to_text());
        assert_eq!(verdict.token(), "linearizable");
    }

    #[test]
    fn a_stale_read_fails_and_bad_histories_are_problems_not_passes() {
        let stale = format!("{LINES}null,\"time_ns\":5000}}\n");
        let verdict = judge(
            &recorded(&stale, 0, 0),
            "m4/vdb",
            Model::Register,
            Duration::from_secs(5),
            vec![],
        );
        assert!(!verdict.passed());
        assert_eq!(verdict.token(), "NOT-LINEARIZABLE");
        let problem = |text: &str| {
            let v = judge(
                &recorded(text, 0, 0),
                "m4/vdb",
                Model::Register,
                Duration::from_secs(5),
                vec![],
            );
            assert!(!v.passed());
            assert_eq!(v.token(), "NO-HISTORY");
            v.report.expect_err("a problem")
        };
        assert!(problem("").contains("the history is empty"), "empty");
        assert!(
            problem("{\"process\":1}\n").starts_with("line 1:"),
            "bad line"
        );
        let never = RecordedHistory {
            text: Vec::new(),
            clock: None,
        };
        let v = judged(&never);
        assert_eq!(
            v.report.err().as_deref(),
            Some("the client machine never ran")
        );
    }

    #[test]
    fn faults_become_intervals_until_what_ends_them() {
        let text = "until = \"60s\"\n[[machine]]\ncount = 3\ncommand = \"x\"\n\
                    disks = [{ size = \"8M\" }]\n\
                    [[timeline]]\nat = \"1s\"\npartition = [[\"m1\"], [\"m2\", \"m3\"]]\n\
                    [[timeline]]\nat = \"2s\"\nkill = \"m2\"\n\
                    [[timeline]]\nat = \"3s\"\nheal = \"partition-1\"\n\
                    [[timeline]]\nat = \"4s\"\npause = \"m3\"\nfor = \"500ms\"\n\
                    [[timeline]]\nat = \"5s\"\nrestart = \"m2\"\n\
                    [[timeline]]\nat = \"6s\"\nclock = \"m1\"\nrate = \"+100ppm\"\n\
                    [[timeline]]\nat = \"7s\"\ndisk = \"m1/vda\"\nstall = \"1s\"\n\
                    [[timeline]]\nat = \"9s\"\nclock = \"m1\"\nrate = \"0ppm\"\n";
        let scenario = Scenario::parse(text, "t.toml").expect("parses");
        let names: Vec<String> = scenario.machines.iter().map(|m| m.name.clone()).collect();
        let s = 1_000_000_000;
        assert_eq!(
            fault_intervals(&scenario.timeline, &names, 60 * s),
            vec![
                (s, 3 * s, "partition m1 | m2 m3".to_string()),
                (2 * s, 5 * s, "kill m2".to_string()),
                (4 * s, 4 * s + s / 2, "pause m3".to_string()),
                (6 * s, 9 * s, "clock m1 rate +100ppm".to_string()),
                (7 * s, 8 * s, "disk m1/vda stall".to_string()),
            ]
        );
    }
}
