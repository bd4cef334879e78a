//! Parsing: source text → syntax tree with spans. Pure; reports every block's syntax error.

pub mod ast;
mod convert;
mod scan;

use crate::diagnostic::{Code, Diagnostic, Span};
use pest::Parser as _;

pub use scan::MAX_NESTING;

/// The generated pest parser for `grammar/ssl.pest`.
#[allow(missing_docs)]
mod grammar {
    #[derive(pest_derive::Parser)]
    #[grammar = "../grammar/ssl.pest"]
    pub struct Grammar;
}
use grammar::{Grammar, Rule};

/// The deepest expression tree accepted (operators and calls nested in one another).
pub const MAX_EXPR_DEPTH: usize = 200;

/// Parses a whole file. Blocks that fail to parse are reported and left out of the tree, so the
/// checker can still report the errors of the others.
pub fn parse(source: &str) -> (ast::File, Vec<Diagnostic>) {
    let (blocks, mut diagnostics) = scan::scan(source);
    pest::set_error_detail(true);
    let mut file = ast::File::default();
    for block in blocks {
        let text = &source[block.span.start..block.span.end];
        match Grammar::parse(Rule::block, text) {
            Ok(pairs) => {
                convert::block(pairs, block.span.start, &mut file, &mut diagnostics);
            }
            Err(error) => diagnostics.push(syntax_error(&error, text, block.span.start)),
        }
    }
    (file, diagnostics)
}

/// Turns pest's error into ours: what was expected, what was found, where.
fn syntax_error(error: &pest::error::Error<Rule>, text: &str, offset: usize) -> Diagnostic {
    let at = match error.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let mut expected: Vec<String> = Vec::new();
    if let pest::error::ErrorVariant::ParsingError { positives, .. } = &error.variant {
        expected.extend(positives.iter().filter_map(|r| describe(*r)).map(String::from));
    }
    if let Some(attempts) = error.parse_attempts() {
        // Literal tokens (`=`, `{`, keywords); character ranges and built-ins say nothing useful.
        for token in attempts.expected_tokens().iter().map(|t| t.to_string()) {
            let is_range = token.chars().count() == 4 && token.contains("..");
            if token != "BUILTIN_RULE" && !is_range && token != "E" && token.trim() == token {
                expected.push(format!("`{token}`"));
            }
        }
    }
    expected.sort();
    expected.dedup();
    let found = found_at(text, at);
    let expected_text = match expected.len() {
        0 => "something else".to_string(),
        1 => expected[0].clone(),
        n => format!("{} or {}", expected[..n - 1].join(", "), expected[n - 1]),
    };
    let len = found.len().max(1).min(text.len().saturating_sub(at).max(1));
    let span = Span::new(offset + at, offset + at + if at >= text.len() { 0 } else { len });
    Diagnostic::new(
        Code::Syntax,
        format!("expected {expected_text}, found {}", found_name(&found)),
        span,
        format!("expected {expected_text}"),
    )
    .help(syntax_help(&found))
}

/// The token at `at`: a word, a number, or one character.
fn found_at(text: &str, at: usize) -> String {
    let rest = text.get(at..).unwrap_or("");
    let mut chars = rest.chars();
    match chars.next() {
        None => String::new(),
        Some(c) if c.is_alphanumeric() || c == '_' || c == '.' => {
            rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.').collect()
        }
        Some(c) => c.to_string(),
    }
}

fn found_name(found: &str) -> String {
    if found.is_empty() {
        "the end of the block".to_string()
    } else {
        format!("`{}`", found.escape_debug())
    }
}

fn syntax_help(found: &str) -> String {
    match found {
        "" => "a brace or parenthesis may be missing: each `{`, `(` and `[` needs its closing partner".into(),
        "==" | "=" => "`=` only appears in declarations (`NAME = EXPR`) and keyword arguments".into(),
        _ => "see the language tour in README.md for the forms a file may contain".into(),
    }
}

/// Names for grammar rules in messages; `None` for rules the user never needs to hear about.
fn describe(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::ident => "a name",
        Rule::number | Rule::signed => "a number",
        Rule::bound => "a number or `inf`",
        Rule::expr => "an expression",
        Rule::string => "a string",
        Rule::objective | Rule::train => "`objective` or `train`",
        Rule::range => "`in`",
        Rule::open => "`[` or `(`",
        Rule::close => "`]` or `)`",
        Rule::param | Rule::let_decl | Rule::weight | Rule::state | Rule::assign | Rule::field => "a declaration",
        Rule::concat | Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::matmul => "an operator",
        Rule::for_clause => "`for`",
        Rule::field_access => "`.`",
        _ => return None,
    })
}
