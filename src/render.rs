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
    let (shown, d) = excerpt(source, d);
    let report = Report { d: &d, source: NamedSource::new(file, shown) };
    let mut out = String::new();
    handler.render_report(&mut out, &report).expect("rendering into a String cannot fail");
    out
}

/// Lines longer than this are cut to windows around the labels in them, so that a report never echoes a
/// megabyte-long line.
const LONG_LINE: usize = 240;
/// Bytes kept on each side of a label, and of a label itself, in a cut line.
const WINDOW: usize = 60;

/// The source as the report shows it — long lines cut to what is around the labels, `…` marking each cut — and the
/// diagnostic with its spans moved to match. Line numbers do not change: only bytes within lines are dropped.
fn excerpt(source: &str, d: &Diagnostic) -> (String, Diagnostic) {
    if source.lines().all(|l| l.len() <= LONG_LINE) {
        return (source.to_string(), d.clone());
    }
    let floor = |mut i: usize| {
        i = i.min(source.len());
        while !source.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    // Byte ranges of the source to keep, in order.
    let mut keep: Vec<(usize, usize)> = Vec::new();
    let mut line_start = 0;
    for line in source.split_inclusive('\n') {
        let line_end = line_start + line.trim_end_matches('\n').len();
        if line_end - line_start <= LONG_LINE {
            keep.push((line_start, line_start + line.len()));
        } else {
            let mut windows: Vec<(usize, usize)> = d
                .labels
                .iter()
                .filter(|l| l.span.start <= line_end && l.span.end >= line_start)
                .map(|l| {
                    let start = l.span.start.max(line_start);
                    let end = l.span.end.min(start + WINDOW).max(start);
                    (floor(start.saturating_sub(WINDOW).max(line_start)), floor((end + WINDOW).min(line_end)))
                })
                .collect();
            if windows.is_empty() {
                windows.push((line_start, floor(line_start + WINDOW)));
            }
            windows.sort();
            for (a, b) in windows {
                match keep.last_mut() {
                    Some(last) if a <= last.1 => last.1 = last.1.max(b),
                    _ => keep.push((a, b)),
                }
            }
            keep.push((line_end, line_start + line.len()));
        }
        line_start += line.len();
    }
    let mut shown = String::new();
    let mut moves: Vec<(usize, usize, usize)> = Vec::new(); // (source start, source end, shown start)
    let mut previous_end = 0;
    for (a, b) in keep {
        if a > previous_end {
            shown.push('…');
        }
        moves.push((a, b, shown.len()));
        shown.push_str(&source[a..b]);
        previous_end = b;
    }
    let place = |x: usize| {
        moves.iter().find(|(a, b, _)| x >= *a && x <= *b).map(|(a, _, at)| at + (x - a)).or_else(|| {
            // A position that was cut: the end of the window before it.
            moves.iter().rev().find(|(_, b, _)| *b <= x).map(|(a, b, at)| at + (b - a))
        })
    };
    let mut moved = d.clone();
    let cut = |at: usize| {
        let start = source[..floor(at)].rfind('\n').map_or(0, |i| i + 1);
        source[start..].split('\n').next().is_some_and(|l| l.len() > LONG_LINE)
    };
    if let Some(first) = moved.labels.first_mut().filter(|l| cut(l.span.start)) {
        let (line, column) = line_column(source, first.span.start);
        first.text = format!("{} (line {line}, column {column}; the line is cut)", first.text);
    }
    for l in &mut moved.labels {
        let start = place(l.span.start).unwrap_or(0);
        let end = place(l.span.end.min(l.span.start.saturating_add(WINDOW))).unwrap_or(start).max(start);
        l.span = crate::diagnostic::Span::new(start, end);
    }
    (shown, moved)
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
    fn long_lines_are_cut_around_their_labels() {
        let long = format!("objective o {{ positive = {}t2 + zz }}", "t2 + ".repeat(100_000));
        let at = long.find("zz").unwrap();
        let d = Diagnostic::new(
            crate::diagnostic::Code::UnknownName,
            "unknown name `zz`",
            crate::diagnostic::Span::new(at, at + 2),
            "not declared",
        );
        let out = human(&d, "long.ssl", &long, false, 100);
        assert!(out.len() < 2_000, "{} bytes", out.len());
        assert!(out.contains("t2 + zz }") && out.contains('…') && out.contains("not declared"), "{out}");
        // The label still points at `zz`: its underline starts below it.
        let source_line = out.lines().find(|l| l.contains("zz }")).unwrap();
        let underline = out.lines().find(|l| l.contains('┬')).unwrap();
        let column = |l: &str, pat: char| l.find(pat).map(|b| l[..b].chars().count());
        assert_eq!(column(source_line, 'z'), column(underline, '─'));
        // The header's column is the excerpt's, so the label names the real place.
        assert!(out.contains(&format!("line 1, column {}", at + 1)), "{out}");
    }

    #[test]
    fn line_and_column_count_characters() {
        let src = "ab\ncé d\n";
        assert_eq!(line_column(src, 0), (1, 1));
        assert_eq!(line_column(src, 3), (2, 1));
        // 'é' is two bytes; 'd' is the fourth character of line 2.
        assert_eq!(line_column(src, 7), (2, 4));
    }
}
