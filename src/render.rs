//! The edge where diagnostics and runtime errors become text: miette reports and `error[code]:` lines for people,
//! JSON lines for tools, and the [`Edge`] that writes them to stderr in the format the user chose (the commands make
//! it; the training loop reports its warnings through it). Nothing else in the crate touches miette or decides how
//! an error looks.

use crate::diagnostic::{Diagnostic, Severity};
use crate::error::{Class, Error};
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceCode};
use serde::Serialize;
use std::fmt;

/// How failures and diagnostics are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Reports for people, on stderr.
    Human,
    /// One JSON object per error on stderr (diagnostics of `check` on stdout).
    Json,
}

/// Where the commands report: the output format and whether stderr takes colour.
#[derive(Clone, Copy, Debug)]
pub struct Edge {
    /// Human or JSON.
    pub format: Format,
    /// Colour on stderr (a terminal, and `NO_COLOR` unset).
    pub color: bool,
}

impl Edge {
    /// Writes a runtime error (or warning) to stderr.
    pub fn report(&self, e: &Error) {
        match self.format {
            Format::Human => eprint!("{}", error_human(e, self.color)),
            Format::Json => eprintln!("{}", error_json(e)),
        }
    }

    /// Writes a source's diagnostics to stderr.
    pub fn diagnostics(&self, name: &str, text: &str, diagnostics: &[Diagnostic]) {
        for d in diagnostics {
            match self.format {
                Format::Human => eprint!("{}", human(d, name, text, self.color, 100)),
                Format::Json => eprintln!("{}", json(d, name, text)),
            }
        }
    }
}

/// Renders one diagnostic as a report with the source excerpt, at a fixed width.
pub fn human(d: &Diagnostic, file: &str, source: &str, color: bool, width: usize) -> String {
    let theme = if color { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
    let handler = GraphicalReportHandler::new_themed(theme).with_width(width).with_links(false);
    let report = Report { d, source: NamedSource::new(file, source.to_string()) };
    let mut out = String::new();
    handler.render_report(&mut out, &report).expect("rendering into a String cannot fail");
    out
}

/// One diagnostic as a JSON object, for editors and scripts.
pub fn json(d: &Diagnostic, file: &str, source: &str) -> String {
    let span = d.span();
    let (line, column) = line_column(source, span.start);
    let record = Json {
        code: d.code.as_str(),
        severity: d.severity(),
        message: &d.message,
        file,
        line,
        column,
        span: JsonSpan { offset: span.start, length: span.end - span.start },
        help: d.help.as_deref(),
    };
    serde_json::to_string(&record).expect("diagnostics serialise")
}

/// Renders a runtime error for people: `error[code]: message`, then its help line.
pub fn error_human(e: &Error, color: bool) -> String {
    let (word, paint) = match e.code.class() {
        Class::Warning => ("warning", "\x1b[33m"),
        Class::Input | Class::Usage => ("error", "\x1b[31m"),
    };
    let head = if color { format!("{paint}{word}\x1b[0m[{}]", e.code) } else { format!("{word}[{}]", e.code) };
    let mut out = format!("{head}: {}\n", e.message);
    if let Some(help) = &e.help {
        out.push_str(&format!("  help: {help}\n"));
    }
    out
}

/// One runtime error as a JSON object, for scripts: `{"severity", "code", "message", "help"}`.
pub fn error_json(e: &Error) -> String {
    let severity = if e.code.class() == Class::Warning { Severity::Warning } else { Severity::Error };
    serde_json::json!({
        "severity": severity,
        "code": e.code.as_str(),
        "message": e.message,
        "help": e.help,
    })
    .to_string()
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let mut cut = offset;
    while !source.is_char_boundary(cut) {
        cut -= 1;
    }
    let before = &source[..cut];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[derive(Serialize)]
struct Json<'a> {
    code: &'a str,
    severity: Severity,
    message: &'a str,
    file: &'a str,
    line: usize,
    column: usize,
    span: JsonSpan,
    help: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonSpan {
    offset: usize,
    length: usize,
}

struct Report<'a> {
    d: &'a Diagnostic,
    source: NamedSource<String>,
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.d.message)
    }
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.d.message)
    }
}

impl std::error::Error for Report<'_> {}

impl miette::Diagnostic for Report<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(self.d.code.as_str()))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.d.severity() {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.d.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(&self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let len = self.source.inner().len();
        Some(Box::new(self.d.labels.iter().map(move |l| {
            let start = l.span.start.min(len);
            let end = l.span.end.clamp(start, len);
            LabeledSpan::new(Some(l.text.clone()), start, end - start)
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let src = "ab\ncé d\n";
        assert_eq!(line_column(src, 0), (1, 1));
        assert_eq!(line_column(src, 3), (2, 1));
        // 'é' is two bytes; 'd' is the fourth character of line 2.
        assert_eq!(line_column(src, 7), (2, 4));
    }
}
