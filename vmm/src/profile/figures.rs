//! A profile's figures as a program reads them (`DIR/profile.json`), and two profiles side by
//! side (`simvm profile compare`): what a change of kernel, tuning or scenario moved, machine by
//! machine and activity by activity.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The layout of `profile.json`; a reader refuses another.
pub const FORMAT: u32 = 1;

/// The file `--profile DIR` writes the figures to.
pub const FILE_NAME: &str = "profile.json";

/// A run's profile in figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileFigures {
    pub format: u32,
    /// Wall time of the profiled run (s).
    pub wall_s: f64,
    pub machines: Vec<MachineFigures>,
}

/// One machine's figures over the virtual time it ran while profiled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineFigures {
    pub name: String,
    pub vtime_s: f64,
    /// Wall time inside `KVM_RUN` (s).
    pub kvm_run_s: f64,
    /// Samples, user and kernel: the denominator of the maps below.
    pub samples: u64,
    /// Samples by activity (docs/profiling.md), user code included.
    pub activities: BTreeMap<String, u64>,
    /// Samples by the kernel function they landed in.
    pub functions: BTreeMap<String, u64>,
    /// Samples by the task running.
    pub processes: BTreeMap<String, u64>,
    /// Exits by reason: count and the wall time of the runs they ended.
    pub exits: BTreeMap<String, ExitFigures>,
    pub syscalls: u64,
    pub page_faults: u64,
    pub interrupts: u64,
    pub halts: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitFigures {
    pub count: u64,
    pub wall_s: f64,
}

impl MachineFigures {
    /// The wall time inside `KVM_RUN` that `samples` of this machine's samples stand for.
    fn seconds(&self, samples: u64) -> f64 {
        if self.samples == 0 {
            return 0.0;
        }
        self.kvm_run_s * samples as f64 / self.samples as f64
    }
}

/// Reads the figures of the profile in `path`: a `--profile` directory or its `profile.json`.
pub fn load(path: &Path) -> Result<ProfileFigures> {
    let file: PathBuf = if path.is_dir() {
        path.join(FILE_NAME)
    } else {
        path.to_path_buf()
    };
    let failed = |reason: String| Error::ProfileRead {
        path: file.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&file).map_err(|e| failed(e.to_string()))?;
    let figures: ProfileFigures =
        serde_json::from_str(&text).map_err(|e| failed(format!("not a simvm profile: {e}")))?;
    if figures.format != FORMAT {
        return Err(failed(format!(
            "written in format {}, this simvm reads format {FORMAT}",
            figures.format
        )));
    }
    Ok(figures)
}

/// One compared quantity: wall seconds before and after.
struct Row {
    label: String,
    before: f64,
    after: f64,
}

impl Row {
    /// The speed-up: before's seconds over after's.
    fn ratio(&self) -> String {
        match (self.before > 0.0, self.after > 0.0) {
            (true, true) => format!("{:.2}x", self.before / self.after),
            (true, false) => "gone".into(),
            (false, true) => "new".into(),
            (false, false) => String::new(),
        }
    }
}

/// Activities' seconds inside `KVM_RUN`, summed over `machines`.
fn activity_seconds(machines: &[&MachineFigures]) -> BTreeMap<String, f64> {
    let mut seconds = BTreeMap::new();
    for machine in machines {
        for (activity, &samples) in &machine.activities {
            *seconds.entry(activity.clone()).or_default() += machine.seconds(samples);
        }
    }
    seconds
}

/// Rows for a group of machines: their time inside `KVM_RUN`, then the `top` activities that
/// cost most on either side, the rest summed in one row.
fn group_rows(
    label: &str,
    before: &[&MachineFigures],
    after: &[&MachineFigures],
    top: usize,
) -> Vec<Row> {
    let total = |machines: &[&MachineFigures]| machines.iter().map(|m| m.kvm_run_s).sum::<f64>();
    let mut rows = vec![Row {
        label: format!("{label} inside KVM_RUN"),
        before: total(before),
        after: total(after),
    }];
    let (b, a) = (activity_seconds(before), activity_seconds(after));
    let mut activities: Vec<Row> = b
        .keys()
        .chain(a.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|activity| Row {
            label: format!("  {activity}"),
            before: b.get(activity).copied().unwrap_or(0.0),
            after: a.get(activity).copied().unwrap_or(0.0),
        })
        .collect();
    activities.sort_by(|x, y| {
        y.before
            .max(y.after)
            .total_cmp(&x.before.max(x.after))
            .then_with(|| x.label.cmp(&y.label))
    });
    let rest: Vec<Row> = activities.split_off(top.min(activities.len()));
    rows.extend(activities);
    if !rest.is_empty() {
        rows.push(Row {
            label: format!("  the other {} activities", rest.len()),
            before: rest.iter().map(|r| r.before).sum(),
            after: rest.iter().map(|r| r.after).sum(),
        });
    }
    rows
}

/// `before` and `after` side by side: the run's wall time, then every machine both profiles
/// have (and all of them together) with their time inside `KVM_RUN` and its `top` activities,
/// in wall seconds and as the speed-up. Profiles of different virtual spans are compared as
/// they are, with a note: whether a span's work grows with it is for the reader to say.
pub fn compare(before: &ProfileFigures, after: &ProfileFigures, top: usize) -> String {
    let mut out = String::new();
    let width = 56;
    let _ = writeln!(
        out,
        "{:width$} {:>10} {:>10} {:>8}",
        "wall seconds (activities: their share of the samples)", "before", "after", "speed-up"
    );
    let mut print = |rows: &[Row]| {
        for row in rows {
            let _ = writeln!(
                out,
                "{:width$} {:>9.2}s {:>9.2}s {:>8}",
                row.label,
                row.before,
                row.after,
                row.ratio()
            );
        }
    };
    print(&[Row {
        label: "the run".into(),
        before: before.wall_s,
        after: after.wall_s,
    }]);
    let mut shared = Vec::new();
    for b in &before.machines {
        if let Some(a) = after.machines.iter().find(|a| a.name == b.name) {
            shared.push((b, a));
            print(&group_rows(&b.name, &[b], &[a], top));
        }
    }
    if shared.len() > 1 {
        let (b, a): (Vec<_>, Vec<_>) = shared.iter().copied().unzip();
        print(&group_rows("all machines", &b, &a, top));
    }
    for (side, this, other) in [("before", before, after), ("after", after, before)] {
        for machine in &this.machines {
            if !other.machines.iter().any(|m| m.name == machine.name) {
                let _ = writeln!(out, "{}: only in the {side} profile", machine.name);
            }
        }
    }
    for (b, a) in shared {
        if (b.vtime_s - a.vtime_s).abs() > 0.01 * b.vtime_s.max(a.vtime_s) {
            let _ = writeln!(
                out,
                "{}: the profiles cover {:.3} and {:.3} virtual s",
                b.name, b.vtime_s, a.vtime_s
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(
        name: &str,
        vtime_s: f64,
        kvm_run_s: f64,
        activities: &[(&str, u64)],
    ) -> MachineFigures {
        let activities: BTreeMap<String, u64> = activities
            .iter()
            .map(|&(k, v)| (k.to_string(), v))
            .collect();
        MachineFigures {
            name: name.into(),
            vtime_s,
            kvm_run_s,
            samples: activities.values().sum(),
            activities,
            functions: BTreeMap::new(),
            processes: BTreeMap::new(),
            exits: BTreeMap::new(),
            syscalls: 0,
            page_faults: 0,
            interrupts: 0,
            halts: 0,
        }
    }

    fn profile(wall_s: f64, machines: Vec<MachineFigures>) -> ProfileFigures {
        ProfileFigures {
            format: FORMAT,
            wall_s,
            machines,
        }
    }

    fn line<'a>(out: &'a str, label: &str) -> &'a str {
        out.lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no line {label:?} in\n{out}"))
    }

    #[test]
    fn compare_gives_seconds_and_speed_ups_per_machine_activity_and_run() {
        let before = profile(
            200.0,
            vec![
                machine(
                    "m1",
                    10.0,
                    120.0,
                    &[("interrupt", 60), ("page fault", 30), ("idle loop", 10)],
                ),
                machine("client", 10.0, 80.0, &[("page fault", 3), ("futex", 1)]),
                machine("old", 10.0, 1.0, &[("interrupt", 1)]),
            ],
        );
        let after = profile(
            50.0,
            vec![
                machine("m1", 10.0, 30.0, &[("interrupt", 1), ("page fault", 2)]),
                machine("client", 10.0, 20.0, &[("page fault", 1), ("futex", 1)]),
            ],
        );
        let out = compare(&before, &after, 2);
        let ends = |label: &str, figures: &str| {
            let row = line(&out, label);
            assert!(
                row.ends_with(figures),
                "{row:?} does not end in {figures:?}:\n{out}"
            );
        };
        ends("the run ", "200.00s     50.00s    4.00x");
        ends("m1 inside KVM_RUN", "120.00s     30.00s    4.00x");
        // 60% of 120 s against 1/3 of 30 s.
        ends("  interrupt", "72.00s     10.00s    7.20x");
        // m1's third activity is folded into the rest with top = 2; idle loop is gone after.
        ends("  the other 1 activities", "12.00s      0.00s     gone");
        // All machines both profiles have: m1 and the client.
        ends("all machines inside KVM_RUN", "200.00s     50.00s    4.00x");
        assert_eq!(line(&out, "old: "), "old: only in the before profile");
    }

    #[test]
    fn compare_says_when_the_profiles_cover_different_virtual_times() {
        let before = profile(100.0, vec![machine("m1", 10.0, 100.0, &[("interrupt", 1)])]);
        let after = profile(100.0, vec![machine("m1", 20.0, 100.0, &[("interrupt", 1)])]);
        let out = compare(&before, &after, 5);
        assert!(line(&out, "m1 inside KVM_RUN").ends_with("1.00x"), "{out}");
        assert!(
            out.contains("m1: the profiles cover 10.000 and 20.000 virtual s"),
            "{out}"
        );
        assert!(!compare(&before, &before, 5).contains("cover"));
    }

    #[test]
    fn load_reads_a_directory_or_its_file_and_refuses_others() {
        let dir = std::env::temp_dir().join(format!("simvm-figures-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let written = profile(3.0, vec![machine("m1", 1.0, 2.0, &[("interrupt", 4)])]);
        std::fs::write(
            dir.join(FILE_NAME),
            serde_json::to_string(&written).unwrap(),
        )
        .unwrap();
        assert_eq!(load(&dir).unwrap(), written);
        assert_eq!(load(&dir.join(FILE_NAME)).unwrap(), written);

        let newer = ProfileFigures {
            format: FORMAT + 1,
            ..written
        };
        std::fs::write(dir.join(FILE_NAME), serde_json::to_string(&newer).unwrap()).unwrap();
        let error = load(&dir).unwrap_err().to_string();
        assert!(
            error.contains("format 2, this simvm reads format 1"),
            "{error}"
        );

        std::fs::write(dir.join(FILE_NAME), "{\"wall_s\": 1}").unwrap();
        let error = load(&dir).unwrap_err().to_string();
        assert!(error.contains("not a simvm profile"), "{error}");

        let missing = dir.join("nothing-here");
        let error = load(&missing).unwrap_err().to_string();
        assert!(
            error.contains("cannot read the profile") && error.contains("nothing-here"),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
