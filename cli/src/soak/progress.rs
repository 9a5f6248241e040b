//! How far a soak has got, on stderr: an indicatif bar on a terminal, otherwise a plain line
//! every [`PLAIN_EVERY`] (CI logs, `kubectl logs`), and at the end.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use simvm_vmm::units::format_rounded;

use super::report::{per_hour, Tally};

/// How often the plain line is printed off a terminal.
pub const PLAIN_EVERY: Duration = Duration::from_secs(10);

enum Display {
    Bar(ProgressBar),
    Plain {
        last: Instant,
        line: String,
    },
    /// `simvm run --seeds`: the consoles stream, and each seed's verdict is printed instead.
    Off,
}

pub struct Progress {
    display: Display,
    started: Instant,
    total: u64,
}

impl Progress {
    /// A bar if stderr is a terminal, else plain lines; nothing at all if `quiet`.
    pub fn new(total: u64, quiet: bool) -> Self {
        let started = Instant::now();
        let display = if quiet {
            Display::Off
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            // Short enough for an 80-column terminal: a wrapped bar redraws as a new line.
            if let Ok(style) = ProgressStyle::with_template("{bar:20} {pos}/{len} seeds: {msg}") {
                bar.set_style(style);
            }
            Display::Bar(bar)
        } else {
            Display::Plain {
                last: started,
                line: String::new(),
            }
        };
        Progress {
            display,
            started,
            total,
        }
    }

    /// The timer ticked (every second): redraw, or print the plain line when it is due.
    pub fn tick(&mut self, tally: Tally) {
        let line = status(tally, self.total, self.started.elapsed());
        match &mut self.display {
            Display::Bar(bar) => {
                bar.set_position(tally.done());
                bar.set_message(line.replace(" seeds/hour", "/h"));
            }
            Display::Plain { last, .. } if last.elapsed() >= PLAIN_EVERY => {
                *last = Instant::now();
                self.plain(tally, line);
            }
            Display::Plain { .. } | Display::Off => {}
        }
    }

    /// A seed finished: the bar moves at once (the plain line waits for its time).
    pub fn seed_done(&mut self, tally: Tally) {
        if let Display::Bar(bar) = &self.display {
            bar.set_position(tally.done());
            let line = status(tally, self.total, self.started.elapsed());
            bar.set_message(line.replace(" seeds/hour", "/h"));
        }
    }

    /// The plain line, unless it would repeat the last one.
    fn plain(&mut self, tally: Tally, status: String) {
        let text = format!(
            "simvm soak: {}/{} seeds, {status}",
            tally.done(),
            self.total
        );
        if let Display::Plain { line, .. } = &mut self.display {
            if *line != text {
                eprintln!("{text}");
                *line = text;
            }
        }
    }

    /// A line for the log (a failed seed), above the bar if there is one.
    pub fn note(&self, text: &str) {
        match &self.display {
            Display::Bar(bar) => bar.println(text),
            Display::Plain { .. } | Display::Off => eprintln!("{text}"),
        }
    }

    /// The soak is over: clear the bar, print the last status line.
    pub fn finish(&mut self, tally: Tally) {
        let line = status(tally, self.total, self.started.elapsed());
        match &self.display {
            Display::Bar(bar) => {
                bar.finish_and_clear();
                eprintln!("simvm soak: {}/{} seeds, {line}", tally.done(), self.total);
            }
            Display::Plain { .. } => self.plain(tally, line),
            Display::Off => {}
        }
    }
}

/// `11 passed, 1 failed, 95 seeds/hour, ETA 10h23m`.
pub fn status(tally: Tally, total: u64, elapsed: Duration) -> String {
    let done = tally.done();
    let eta = match done {
        0 => ", ETA -".to_string(),
        done if done >= total => String::new(),
        done => {
            let left = (total - done) as f64;
            let eta = Duration::from_secs_f64(elapsed.as_secs_f64() / done as f64 * left);
            format!(", ETA {}", format_rounded(eta))
        }
    };
    format!(
        "{} passed, {} failed, {}{eta}",
        tally.passed,
        tally.failed,
        per_hour(done, elapsed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_has_counts_rate_and_eta() {
        let tally = Tally {
            passed: 11,
            failed: 1,
        };
        assert_eq!(
            status(tally, 100, Duration::from_secs(120)),
            "11 passed, 1 failed, 360 seeds/hour, ETA 14m40s"
        );
        assert_eq!(
            status(Tally::default(), 100, Duration::from_secs(3)),
            "0 passed, 0 failed, - seeds/hour, ETA -"
        );
        assert_eq!(
            status(tally, 12, Duration::from_secs(120)),
            "11 passed, 1 failed, 360 seeds/hour"
        );
    }
}
