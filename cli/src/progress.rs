//! What a run is doing before its consoles say anything: a guest boot takes tens of seconds of
//! real time, and a cluster boots silently for over a minute.
//!
//! On a terminal, a thread redraws one status line on stderr every second
//! (`simvm: booting m1, m2, m3 (12 s)...`) until the first console line arrives; the line is
//! cleared before that console line is printed, so stdout (the console lines, the summary) and
//! the run itself (the digest) are untouched. Off a terminal nothing is drawn.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Erases the current terminal line: back to column 0, clear to its end.
const CLEAR: &str = "\r\x1b[K";

/// The status line after `elapsed` of booting `machines`.
pub fn status_line(machines: &[String], elapsed: Duration) -> String {
    let what = match machines {
        [] => "booting".to_owned(),
        few if few.len() <= 4 => format!("booting {}", few.join(", ")),
        many => format!("booting {} machines", many.len()),
    };
    format!("simvm: {what} ({} s)...", elapsed.as_secs())
}

/// The status display of one run; stops and clears its line when dropped.
pub struct Progress {
    shared: Arc<Shared>,
    /// Set at the first console line: the print callback then takes no lock.
    quiet: AtomicBool,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    /// Some console line has arrived, or the run is over: draw nothing more.
    stopped: bool,
    /// A status line is on the terminal.
    shown: bool,
    sink: Box<dyn Write + Send>,
}

impl State {
    fn clear(&mut self) {
        if self.shown {
            let _ = self.sink.write_all(CLEAR.as_bytes());
            let _ = self.sink.flush();
            self.shown = false;
        }
        self.stopped = true;
    }
}

impl Progress {
    /// Shows the boot of `machines` on stderr if it is a terminal.
    pub fn on_terminal(machines: Vec<String>) -> Self {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            Self::with_sink(
                machines,
                Box::new(std::io::stderr()),
                Duration::from_secs(1),
            )
        } else {
            Self::off()
        }
    }

    /// Shows nothing.
    pub fn off() -> Self {
        Progress {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    stopped: true,
                    shown: false,
                    sink: Box::new(std::io::sink()),
                }),
                wake: Condvar::new(),
            }),
            quiet: AtomicBool::new(true),
            thread: None,
        }
    }

    /// Draws to `sink` every `tick`, starting one `tick` from now.
    pub fn with_sink(machines: Vec<String>, sink: Box<dyn Write + Send>, tick: Duration) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                stopped: false,
                shown: false,
                sink,
            }),
            wake: Condvar::new(),
        });
        let started = Instant::now();
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("simvm-progress".into())
                .spawn(move || {
                    let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                    // The lock is held from each check to the next wait, so no stop is missed.
                    while !state.stopped {
                        state = shared
                            .wake
                            .wait_timeout(state, tick)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                        if state.stopped {
                            break;
                        }
                        let line = status_line(&machines, started.elapsed());
                        let _ = write!(state.sink, "{CLEAR}{line}");
                        let _ = state.sink.flush();
                        state.shown = true;
                    }
                })
                .ok()
        };
        Progress {
            shared,
            quiet: AtomicBool::new(false),
            thread,
        }
    }

    /// A console line is about to be printed: clear the status line for good.
    pub fn console_line(&self) {
        if !self.quiet.swap(true, Ordering::Relaxed) {
            self.stop();
        }
    }

    fn stop(&self) {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.clear();
        self.shared.wake.notify_all();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("m{i}")).collect()
    }

    #[test]
    fn status_lines_name_the_machines_and_the_time() {
        let secs = Duration::from_millis;
        assert_eq!(
            status_line(&names(1), secs(3_900)),
            "simvm: booting m1 (3 s)..."
        );
        assert_eq!(
            status_line(&names(3), secs(12_000)),
            "simvm: booting m1, m2, m3 (12 s)..."
        );
        assert_eq!(
            status_line(&names(10), secs(61_000)),
            "simvm: booting 10 machines (61 s)..."
        );
    }

    /// A `Write` the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn the_line_updates_until_the_first_console_line_then_is_cleared() {
        let out = Shared::default();
        let progress =
            Progress::with_sink(names(2), Box::new(out.clone()), Duration::from_millis(10));
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.text().matches("booting").count() < 3 {
            assert!(
                Instant::now() < deadline,
                "no status lines: {:?}",
                out.text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        progress.console_line();
        let after_first_line = out.text();
        assert!(
            after_first_line.starts_with("\r\x1b[Ksimvm: booting m1, m2 (")
                && after_first_line.ends_with("...\r\x1b[K"),
            "{after_first_line:?}"
        );
        progress.console_line();
        std::thread::sleep(Duration::from_millis(50));
        drop(progress);
        assert_eq!(out.text(), after_first_line, "drawn after a console line");
    }

    #[test]
    fn a_run_that_ends_before_the_first_tick_draws_nothing() {
        let out = Shared::default();
        drop(Progress::with_sink(
            names(1),
            Box::new(out.clone()),
            Duration::from_secs(60),
        ));
        assert_eq!(out.text(), "");
        Progress::off().console_line();
    }
}
