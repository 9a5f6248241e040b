//! A self-contained HTML timeline: one lane per process, operations as bars on the virtual-time
//! axis, the offending windows highlighted, fault intervals shaded. Inline SVG and CSS only, so
//! the file can be attached to a bug report and opened anywhere.

use crate::explain::{describe, fmt_time, short};
use crate::history::{History, Op, Outcome};
use crate::report::{Report, Verdict, Violation};
use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::Path;

const WIDTH: f64 = 1200.0;
const LABEL: f64 = 110.0;
const ROW: f64 = 20.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 26.0;
/// Violations drawn in close-up; the rest are still in the overview and the table.
const CLOSE_UPS: usize = 20;

const STYLE: &str = "body{font:14px sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}\
.bad{color:#b00;font-weight:bold}.unknown{color:#a60;font-weight:bold}.good{color:#380}\
.explain{white-space:pre-wrap;background:#f6f6f6;padding:.6em;border-left:3px solid #b00}\
svg{display:block;margin:.5em 0 1.5em 0}svg text{font:10px sans-serif}\
.ok{fill:#5a9e3a}.fail{fill:#d46a6a}.info{fill:#f0a030;fill-opacity:.6}\
.in-window{stroke:#111;stroke-width:1.5}.culprit{stroke:#e00;stroke-width:3}\
.band{fill:#fff1a0}.fault{fill:#6a7fd0;fill-opacity:.18}.axis{stroke:#999}\
.legend span{display:inline-block;width:1em;height:.8em;margin:0 .3em 0 1em}";

impl Report {
    /// The report as a self-contained HTML page. `faults` are `(start_ns, end_ns, label)`
    /// intervals (partitions, kills, ...) shaded behind the operations.
    pub fn to_html(&self, faults: &[(u64, u64, String)]) -> String {
        let history = &self.history;
        let verdict = self.verdict();
        let (class, title) = match &verdict {
            Verdict::Linearizable => ("good", "linearizable".to_string()),
            Verdict::NotLinearizable(_) => ("bad", "NOT LINEARIZABLE".to_string()),
            Verdict::Unknown(_) => ("unknown", "unknown".to_string()),
        };
        let mut out = String::new();
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>simvm check: {title}</title>\
             <style>{STYLE}</style></head><body>\n<h1>Linearizability: <span class=\"{class}\">{title}</span></h1>\n\
             <p>{} model, {} keys, {} operations, checked in {:.3} s.</p>\n",
            self.model,
            self.keys.len(),
            history.len(),
            self.elapsed.as_secs_f64()
        );
        out += "<table><tr><th>key</th><th>verdict</th><th>operations</th><th>searched</th><th>states</th></tr>\n";
        for k in &self.keys {
            let (class, text) = match &k.verdict {
                Verdict::Linearizable => ("good", "linearizable".to_string()),
                Verdict::NotLinearizable(_) => ("bad", "not linearizable".to_string()),
                Verdict::Unknown(reason) => ("unknown", format!("unknown: {reason}")),
            };
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td class=\"{class}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&k.key),
                escape(&text),
                k.ops,
                k.searched,
                k.states
            );
        }
        out += "</table>\n";
        out += LEGEND;

        let violations: Vec<&Violation> = self.violations().collect();
        for v in violations.iter().take(CLOSE_UPS) {
            let _ = write!(
                out,
                "<h2>{}: not linearizable</h2>\n<div class=\"explain\">{}</div>\n",
                escape(&v.key),
                escape(&v.explanation)
            );
            let (start, end) = span(history, &v.window);
            let margin = ((end - start) / 10).max(1_000);
            let range = (start.saturating_sub(margin), end.saturating_add(margin));
            let on_key: Vec<usize> = (0..history.len())
                .filter(|&i| history.ops()[i].key == v.key && visible(&history.ops()[i], range))
                .collect();
            timeline(&mut out, history, &on_key, range, &[v], faults, false);
        }

        out += "<h2>All operations</h2>\n";
        let all: Vec<usize> = (0..history.len()).collect();
        let range = span(history, &all);
        timeline(&mut out, history, &all, range, &violations, faults, true);
        out += "</body></html>\n";
        out
    }

    /// Writes [`Report::to_html`] to `path`.
    pub fn write_html(
        &self,
        path: impl AsRef<Path>,
        faults: &[(u64, u64, String)],
    ) -> std::io::Result<()> {
        std::fs::write(path, self.to_html(faults))
    }
}

const LEGEND: &str = "<p class=\"legend\">Bars: <span class=\"ok\" style=\"background:#5a9e3a\"></span>ok\
<span style=\"background:#d46a6a\"></span>failed (did not happen)\
<span style=\"background:#f0a030;opacity:.6\"></span>unknown outcome (may happen any time after it began)\
<span style=\"background:#fff1a0\"></span>offending window\
<span style=\"background:#6a7fd0;opacity:.3\"></span>fault. \
The operation that cannot be placed has a red outline; hover a bar for details.</p>\n";

/// First invocation to last recorded event of `ops`, never empty.
fn span(history: &History, ops: &[usize]) -> (u64, u64) {
    let mut start = u64::MAX;
    let mut end = 0;
    for &i in ops {
        let op = &history.ops()[i];
        start = start.min(op.invoke_ns);
        end = end.max(op.complete_ns.unwrap_or(op.invoke_ns));
    }
    if start > end {
        return (0, 1);
    }
    (start, end.max(start.saturating_add(1)))
}

fn visible(op: &Op, (start, end): (u64, u64)) -> bool {
    let ends = match op.outcome {
        Outcome::Info => u64::MAX,
        _ => op.complete_ns.unwrap_or(u64::MAX),
    };
    op.invoke_ns <= end && ends >= start
}

/// One SVG: a lane per process among `ops`, time `range` across.
fn timeline(
    out: &mut String,
    history: &History,
    ops: &[usize],
    (start, end): (u64, u64),
    violations: &[&Violation],
    faults: &[(u64, u64, String)],
    show_keys: bool,
) {
    let lanes: Vec<u64> = ops
        .iter()
        .map(|&i| history.ops()[i].process)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let height = TOP + ROW * lanes.len() as f64 + BOTTOM;
    let plot = WIDTH - LABEL - 10.0;
    let x = |t: u64| LABEL + (t.clamp(start, end) - start) as f64 / (end - start) as f64 * plot;
    let lane_y = |p: u64| TOP + ROW * lanes.binary_search(&p).unwrap_or(0) as f64;
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\">"
    );

    let window: HashSet<usize> = violations
        .iter()
        .flat_map(|v| v.window.iter().copied())
        .collect();
    let culprits: HashSet<usize> = violations.iter().map(|v| v.op).collect();
    for v in violations {
        // From the first operation of the window to the moment the blocked one had to be done.
        let (a, _) = span(history, &v.window);
        let culprit = &history.ops()[v.op];
        let b = culprit.complete_ns.unwrap_or(culprit.invoke_ns).max(a);
        if b >= start && a <= end {
            let _ = writeln!(
                out,
                "<rect class=\"band\" x=\"{:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{:.1}\"><title>offending window on {}</title></rect>",
                x(a),
                (x(b) - x(a)).max(2.0),
                ROW * lanes.len() as f64,
                escape(&v.key)
            );
        }
    }
    for (a, b, label) in faults {
        if *b < start || *a > end {
            continue;
        }
        let _ = writeln!(
            out,
            "<rect class=\"fault\" x=\"{:.1}\" y=\"12\" width=\"{:.1}\" height=\"{:.1}\"><title>{} ({} .. {})</title></rect>\
             <text x=\"{:.1}\" y=\"22\">{}</text>",
            x(*a),
            (x(*b) - x(*a)).max(1.0),
            height - 12.0 - BOTTOM,
            escape(label),
            fmt_time(*a),
            fmt_time(*b),
            x(*a) + 2.0,
            escape(label)
        );
    }
    for (n, p) in lanes.iter().enumerate() {
        let y = TOP + ROW * n as f64;
        let _ = writeln!(
            out,
            "<text x=\"4\" y=\"{:.1}\">process {p}</text><line class=\"axis\" x1=\"{LABEL}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\"/>",
            y + ROW * 0.65,
            WIDTH - 10.0,
            y + ROW,
            y + ROW
        );
    }
    for &i in ops {
        let op = &history.ops()[i];
        let (class, stop) = match op.outcome {
            Outcome::Ok => ("ok", op.complete_ns.unwrap_or(op.invoke_ns)),
            Outcome::Fail => ("fail", op.complete_ns.unwrap_or(op.invoke_ns)),
            Outcome::Info => ("info", end),
        };
        let mut classes = class.to_string();
        if culprits.contains(&i) {
            classes += " culprit";
        } else if window.contains(&i) {
            classes += " in-window";
        }
        let (x1, x2) = (x(op.invoke_ns), x(stop));
        let w = (x2 - x1).max(1.5);
        let y = lane_y(op.process) + 3.0;
        let mut label = short(op);
        if show_keys {
            label = format!("{} {label}", op.key);
        }
        let revision = op
            .revision
            .map(|r| format!(", revision {r}"))
            .unwrap_or_default();
        let _ = write!(
            out,
            "<rect class=\"{classes}\" x=\"{x1:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\"><title>line {}: {}{revision}</title></rect>",
            ROW - 6.0,
            op.invoke_line,
            escape(&describe(op))
        );
        if w > 7.0 * label.len() as f64 {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                x1 + 2.0,
                y + ROW - 10.0,
                escape(&label)
            );
        }
        out.push('\n');
    }
    // Time axis: about ten ticks at round intervals.
    let axis_y = TOP + ROW * lanes.len() as f64;
    let step = tick_step(end - start);
    let mut t = start.div_ceil(step).saturating_mul(step);
    while t <= end {
        let _ = writeln!(
            out,
            "<line class=\"axis\" x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{axis_y:.1}\" y2=\"{1:.1}\"/><text x=\"{0:.1}\" y=\"{2:.1}\" text-anchor=\"middle\">{3}</text>",
            x(t),
            axis_y + 5.0,
            axis_y + 17.0,
            fmt_time(t)
        );
        match t.checked_add(step) {
            Some(next) => t = next,
            None => break,
        }
    }
    out.push_str("</svg>\n");
}

/// The smallest 1, 2 or 5 times a power of ten giving at most ten ticks over `span` ns.
fn tick_step(span: u64) -> u64 {
    let mut unit = 1u64;
    loop {
        for m in [1, 2, 5] {
            let step = unit.saturating_mul(m);
            if span / step <= 10 {
                return step;
            }
        }
        unit = unit.saturating_mul(10);
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(1_000), 100);
        assert_eq!(tick_step(1_500_000_000), 200_000_000);
        assert_eq!(tick_step(45), 5);
        assert_eq!(tick_step(0), 1);
        assert!(tick_step(u64::MAX) > 0);
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<k&\"1'>"), "&lt;k&amp;&quot;1&#39;&gt;");
    }
}
