//! `simvm image prune`: removes cached machine templates that will not be used again
//! (docs/templates.md, "Old templates go").

use std::time::Duration;

use clap::Args;
use simvm_vmm::image;
use simvm_vmm::template::{prune, EntryKind, PruneReport, PruneRules};

#[derive(Args)]
pub struct PruneArgs {
    /// Also remove templates (and notes of machines that have none) unused for this long,
    /// e.g. 30d or 12h (units s, m, h, d).
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration)]
    unused_for: Option<Duration>,
    /// Remove every template no simvm is building or loading right now.
    #[arg(long, conflicts_with = "unused_for")]
    all: bool,
}

impl PruneArgs {
    /// Templates of other simvm builds go at once: the user asked.
    fn rules(&self) -> PruneRules {
        PruneRules {
            other_builds_unused_for: Duration::ZERO,
            unused_for: if self.all {
                Some(Duration::ZERO)
            } else {
                self.unused_for
            },
        }
    }
}

/// Prints each entry removed and the total; an entry that could not be removed is an error.
pub fn run(args: PruneArgs) -> Result<i32, String> {
    let report = prune(&image::cache_dir(), args.rules()).map_err(|e| e.to_string())?;
    for removed in &report.removed {
        let size = format_bytes(removed.bytes);
        println!(
            "removed {}: {}, {size}",
            removed.path.display(),
            removed.why
        );
    }
    for key in &report.busy {
        println!("kept template {key}: another simvm is using it");
    }
    println!("{}", total(&report));
    if report.failed.is_empty() {
        return Ok(0);
    }
    for (path, why) in &report.failed {
        eprintln!("simvm: cannot remove {}: {why}", path.display());
    }
    Err(format!(
        "{} cache entries could not be removed",
        report.failed.len()
    ))
}

/// `removed 12 templates, 214.3 MB`, with notes and unfinished builds counted apart.
fn total(report: &PruneReport) -> String {
    let templates = report.count(EntryKind::Template);
    let others = report.removed.len() - templates;
    let mut line = format!("removed {templates} template{}", plural(templates));
    if others > 0 {
        line.push_str(&format!(" and {others} other entr{}", plural_y(others)));
    }
    format!("{line}, {}", format_bytes(report.bytes()))
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn plural_y(n: usize) -> &'static str {
    if n == 1 {
        "y"
    } else {
        "ies"
    }
}

/// Bytes in decimal units with one decimal: "18.4 MB".
fn format_bytes(bytes: u64) -> String {
    for (unit, scale) in [("GB", 1e9), ("MB", 1e6), ("kB", 1e3)] {
        if bytes as f64 >= scale {
            return format!("{:.1} {unit}", bytes as f64 / scale);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;
    use simvm_vmm::template::Removed;

    fn removed(kind: EntryKind, bytes: u64) -> Removed {
        Removed {
            path: "x".into(),
            kind,
            why: String::new(),
            bytes,
        }
    }

    #[test]
    fn the_total_counts_templates_and_their_space() {
        let mut report = PruneReport::default();
        assert_eq!(total(&report), "removed 0 templates, 0 B");
        report
            .removed
            .push(removed(EntryKind::Template, 18_400_000));
        assert_eq!(total(&report), "removed 1 template, 18.4 MB");
        report
            .removed
            .push(removed(EntryKind::Template, 2_000_000_000));
        report.removed.push(removed(EntryKind::Note, 4096));
        assert_eq!(
            total(&report),
            "removed 2 templates and 1 other entry, 2.0 GB"
        );
        assert_eq!(format_bytes(999), "999 B");
        assert_eq!(format_bytes(4096), "4.1 kB");
    }

    #[test]
    fn all_removes_every_template_and_nothing_keeps_other_builds() {
        let rules = |unused_for, all| PruneArgs { unused_for, all }.rules();
        let week = Duration::from_secs(7 * 86_400);
        assert_eq!(rules(None, false).unused_for, None);
        assert_eq!(rules(Some(week), false).unused_for, Some(week));
        assert_eq!(rules(None, true).unused_for, Some(Duration::ZERO));
        assert_eq!(rules(None, false).other_builds_unused_for, Duration::ZERO);
    }
}
