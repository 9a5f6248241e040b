//! Guest console output: bytes in, annotated lines out.

use std::fmt::Write as _;

/// Formats virtual nanoseconds as `HH:MM:SS.uuuuuu`.
pub fn format_vtime(ns: u64) -> String {
    let us = ns / 1_000;
    let s = us / 1_000_000;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        us % 1_000_000
    )
}

/// Splits a machine's console byte stream into lines and keeps the last few for crash reports.
#[derive(Debug, Default)]
pub struct LineBuffer {
    partial: Vec<u8>,
    tail: std::collections::VecDeque<String>,
}

const TAIL_LINES: usize = 40;
const MAX_LINE: usize = 4096;

impl LineBuffer {
    /// Feeds bytes; returns the lines they complete (without line endings).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &b in bytes {
            match b {
                b'\n' => lines.push(self.finish()),
                b'\r' => {}
                _ => {
                    self.partial.push(b);
                    // A guest that never ends its line must not grow simvm's memory.
                    if self.partial.len() >= MAX_LINE {
                        lines.push(self.finish());
                    }
                }
            }
        }
        lines
    }

    /// The unterminated last line, if any (at the end of a run).
    pub fn flush(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| self.finish())
    }

    /// The last lines seen, oldest first, plus the unterminated one.
    pub fn tail(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.tail.iter().cloned().collect();
        if !self.partial.is_empty() {
            lines.push(String::from_utf8_lossy(&self.partial).into_owned());
        }
        lines
    }

    fn finish(&mut self) -> String {
        let line = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.clone());
        line
    }
}

/// One console line in the Gosim layout: step, machine, virtual time, then the guest's text.
pub fn format_line(step: u64, machine: &str, vtime_ns: u64, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 40);
    let _ = write!(
        out,
        "{step:>9} {machine:<4} {} > {text}",
        format_vtime(vtime_ns)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_pushes() {
        let mut buf = LineBuffer::default();
        assert!(buf.push(b"hel").is_empty());
        assert_eq!(buf.push(b"lo\r\nwor"), vec!["hello"]);
        assert_eq!(buf.tail(), vec!["hello", "wor"]);
        assert_eq!(buf.flush().as_deref(), Some("wor"));
        assert_eq!(buf.flush(), None);
    }

    #[test]
    fn vtime_and_line_layout() {
        assert_eq!(format_vtime(3_723_000_456_789), "01:02:03.000456");
        assert_eq!(
            format_line(42, "m1", 1_500_000, "hi"),
            "       42 m1   00:00:00.001500 > hi"
        );
    }
}
