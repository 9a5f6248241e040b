//! Errors with positions: a finding in a scenario file, and the message that shows its line.

use std::ops::Range;

use super::*;

/// A finding in the file, before it is turned into line and column.
#[derive(Debug)]
pub(super) struct Problem {
    pub(super) span: Range<usize>,
    pub(super) message: String,
}

impl Problem {
    pub(super) fn at(span: Range<usize>, message: impl Into<String>) -> Self {
        Problem {
            span,
            message: message.into(),
        }
    }

    pub(super) fn locate(self, file: &str, text: &str) -> ScenarioError {
        let (line, column) = line_column(text, self.span.start);
        let source_line = printable(text.split('\n').nth(line - 1).unwrap_or(""));
        let gutter = line.to_string().len();
        let excerpt = format!(
            "{:gutter$} |\n{line} | {source_line}\n{:gutter$} | {:>column$}",
            "", "", "^"
        );
        ScenarioError::Invalid {
            file: file.to_owned(),
            line,
            column,
            // Messages quote values from the file: control characters there show escaped.
            message: self
                .message
                .chars()
                .flat_map(|c| {
                    let escaped = c.is_control().then(|| c.escape_default());
                    escaped
                        .into_iter()
                        .flatten()
                        .chain((!c.is_control()).then_some(c))
                })
                .collect(),
            excerpt,
        }
    }
}

/// What the TOML parser found wrong, on one line (it puts what it expected on a line of its own,
/// and says nothing at all about some characters).
pub(super) fn toml_message(error: &toml::de::Error, text: &str) -> String {
    let message = (error.message().lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    if !message.is_empty() {
        return message;
    }
    let found = (error.span())
        .and_then(|span| text.get(span.start..))
        .and_then(|rest| rest.chars().next());
    match found {
        Some('\r') => "invalid TOML: a carriage return must be followed by a newline".to_owned(),
        Some(c) if c.is_control() => {
            format!(
                "invalid TOML: unexpected control character U+{:04X}",
                u32::from(c)
            )
        }
        Some(c) => format!("invalid TOML at `{c}`"),
        None => "invalid TOML".to_owned(),
    }
}

/// A source line as an excerpt shows it: one visible character per character, so the caret
/// below stays in its column and no control character reaches the terminal.
pub(super) fn printable(line: &str) -> String {
    line.chars()
        .map(|c| match c {
            '\t' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// One-based line and column (in characters) of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}
