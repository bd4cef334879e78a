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
        if block.too_deep {
            file.unparsed.push(unparsed(text));
            continue;
        }
        match Grammar::parse(Rule::block, text) {
            Ok(pairs) => {
                convert::block(pairs, block.span.start, &mut file, &mut diagnostics);
            }
            Err(error) => {
                let last = block.span.end == source.len();
                diagnostics.push(syntax_error(&error, text, block.span.start, last));
                file.unparsed.push(unparsed(text));
            }
        }
    }
    (file, diagnostics)
}

/// The keyword and name of a block that will not be in the tree.
fn unparsed(text: &str) -> ast::Unparsed {
    let word = |t: &str| -> String { t.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
    let keyword = word(text);
    if keyword != "objective" && keyword != "train" {
        return ast::Unparsed { keyword: String::new(), name: None };
    }
    let name = word(text[keyword.len()..].trim_start());
    let name = (!name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit())).then_some(name);
    ast::Unparsed { keyword, name }
}

/// Turns pest's error into ours: what was expected, what was found, where. `at_end_of_file` says
/// whether the block is the last one, to name what an error at its end ran into.
fn syntax_error(error: &pest::error::Error<Rule>, text: &str, offset: usize, at_end_of_file: bool) -> Diagnostic {
    let mut at = match error.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    if let Some(d) = unterminated_string(text, at, offset) {
        return d;
    }
    let mut expected: Vec<&'static str> = Vec::new();
    if let pest::error::ErrorVariant::ParsingError { positives, .. } = &error.variant {
        expected.extend(positives.iter().filter_map(|r| describe(*r)));
    }
    // pest places the error where the last *rule* failed, but a literal (`=`, `)`, `in`) may have
    // been tried further on: `positive -t2` fails at `-`, where `=` was expected, not at `positive`.
    if let Some(attempts) = error.parse_attempts() {
        let tokens: Vec<&'static str> =
            attempts.expected_tokens().iter().filter_map(|t| token_name(&t.to_string())).collect();
        if attempts.max_position > at && !tokens.is_empty() {
            at = attempts.max_position;
            expected.clear();
        }
        if attempts.max_position == at {
            expected.extend(tokens);
        }
    }
    if text.starts_with("train") && expected.contains(&"an operator") {
        // After a field's value, a name can only start the next field.
        expected.iter_mut().filter(|e| **e == "a name").for_each(|e| *e = "a recipe field");
    }
    let expected = tidy(expected);
    let found = found_at(text, at);
    let found_text = found_name(&found, at_end_of_file);
    let expected_text = match expected.len() {
        0 => "something else".to_string(),
        1 => expected[0].to_string(),
        n => format!("{} or {}", expected[..n - 1].join(", "), expected[n - 1]),
    };
    let label =
        if expected.len() <= 3 { format!("expected {expected_text}") } else { format!("unexpected {found_text}") };
    let (span, label) = if found.is_empty() {
        // Nothing to point at: point at the end of what the block does hold.
        let end = text.trim_end().len();
        let last = text[..end].chars().next_back().map_or(0, char::len_utf8);
        let label = if expected.len() <= 3 { format!("expected {expected_text} after this") } else { label };
        (Span::new(offset + end - last, offset + end), label)
    } else {
        (Span::new(offset + at, offset + at + found.len()), label)
    };
    Diagnostic::new(Code::Syntax, format!("expected {expected_text}, found {found_text}"), span, label)
        .help(syntax_help(text, at, &found, &expected))
}

/// A string literal opened at `at` that the line ends before closing.
fn unterminated_string(text: &str, at: usize, offset: usize) -> Option<Diagnostic> {
    let rest = text.get(at..)?;
    let line = rest.strip_prefix('"')?.split('\n').next().unwrap_or("");
    if line.contains('"') {
        return None;
    }
    let end = at + 1 + line.trim_end().len();
    Some(
        Diagnostic::new(
            Code::Syntax,
            "this string is never closed",
            Span::new(offset + at, offset + end),
            "the line ends inside the string",
        )
        .help("close it with `\"` on the same line"),
    )
}

/// The things expected, deduplicated, with ones that a broader entry already covers dropped.
fn tidy(expected: Vec<&'static str>) -> Vec<&'static str> {
    let has = |expected: &[&str], x: &str| expected.contains(&x);
    // A range's brackets are one rule for either bracket: name each, like the tokens do.
    let mut expected: Vec<&'static str> = expected
        .into_iter()
        .flat_map(|e| match e {
            "`[` or `(`" => vec!["`[`", "`(`"],
            "`]` or `)`" => vec!["`]`", "`)`"],
            e => vec![e],
        })
        .collect();
    if has(&expected, "a declaration") || has(&expected, "a recipe field") {
        // A name here starts a declaration, and the block may end instead.
        expected.retain(|e| *e != "a name");
        expected.push("`}`");
    }
    if has(&expected, "an expression") {
        expected.retain(|e| !matches!(*e, "a name" | "a number" | "a string" | "`(`" | "`[`"));
    }
    if has(&expected, "an operator") {
        // `(` after a name would make it a call; `[` never follows an operand.
        expected.retain(|e| !matches!(*e, "`(`" | "`[`"));
    }
    // Punctuation and keywords first, descriptions after, each group in a fixed order.
    expected.sort_by_key(|e| (!e.starts_with('`'), *e));
    expected.dedup();
    expected
}

/// Literal tokens worth naming in a message; `None` for comment and whitespace starts, the first
/// characters of names, numbers and strings, and operators (named together as "an operator").
fn token_name(token: &str) -> Option<&'static str> {
    Some(match token {
        "=" => "`=`",
        "{" => "`{`",
        "}" => "`}`",
        "(" => "`(`",
        ")" => "`)`",
        "[" => "`[`",
        "]" => "`]`",
        "," => "`,`",
        "in" => "`in`",
        "for" => "`for`",
        "inf" => "`inf`",
        "objective" => "`objective`",
        "train" => "`train`",
        "param" | "let" | "weight" | "state" => "a declaration",
        "+" | "++" | "*" | "/" | "@" => "an operator",
        _ => return None,
    })
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

fn found_name(found: &str, at_end_of_file: bool) -> String {
    match found.chars().next() {
        None if at_end_of_file => "the end of the file".to_string(),
        None => "the end of the block".to_string(),
        Some(c) if c.is_control() => format!("`{}`", found.escape_debug()),
        Some(_) => format!("`{found}`"),
    }
}

/// The words that cannot be names.
const KEYWORDS: &[&str] = &["objective", "train", "param", "let", "weight", "state", "in", "for", "true", "false"];

fn syntax_help(text: &str, at: usize, found: &str, expected: &[&str]) -> String {
    let line_start = text[..at.min(text.len())].rsplit('\n').next().is_some_and(|before| before.trim().is_empty());
    match found {
        "" if expected.contains(&"`}`") => "the block is missing its closing `}`".into(),
        "" => "a brace or parenthesis may be missing: each `{`, `(` and `[` needs its closing partner".into(),
        "objective" | "train" if line_start => {
            format!("`{found}` starts a new block: the block before it is missing its closing `}}`")
        }
        "," if expected.contains(&"a declaration") || expected.contains(&"a recipe field") => {
            "declarations are separated by line breaks (or `;`), not commas".into()
        }
        _ if expected == ["`=`"] => "declarations and recipe fields are written `NAME = VALUE`".into(),
        "^" => "there is no `^`: write a power as `pow(x, p)`, e.g. `pow(dot(u1, t2), 2)`".into(),
        "*" if text[..at.min(text.len())].ends_with('*') => {
            "there is no `**`: write a power as `pow(x, p)`, e.g. `pow(dot(u1, t2), 2)`".into()
        }
        "=" => "`=` appears once in a declaration (`NAME = EXPR`) and in keyword arguments; there is no `==`".into(),
        _ if KEYWORDS.contains(&found) && expected.contains(&"a name") => {
            format!("`{found}` is a keyword and cannot be a name; pick another one")
        }
        _ if line_start && (expected.contains(&"`)`") || expected.contains(&"`]`")) => {
            match unclosed_bracket(&text[..at.min(text.len())]) {
                Some(open) => format!("a `{open}` on an earlier line is never closed"),
                None => "a bracket on an earlier line is never closed".into(),
            }
        }
        "{" if expected == ["a name"] => "name the block: `objective NAME { ... }` or `train NAME { ... }`".into(),
        "+" | "-" | "*" | "/" | "@" if expected.contains(&"`in`") => {
            "a param's default is a number literal; compute other values with `let NAME = EXPR`".into()
        }
        _ if expected == ["a number"] => {
            "a param's default is a number literal; compute other values with `let NAME = EXPR`".into()
        }
        _ if expected.contains(&"`objective`") => {
            "a file holds `objective NAME { ... }` blocks and at most one `train NAME { ... }` block".into()
        }
        _ => "see the language tour in README.md for the forms a file may contain".into(),
    }
}

/// The innermost `(` or `[` left open in `text` (comments and strings skipped).
fn unclosed_bracket(text: &str) -> Option<char> {
    let mut open: Vec<char> = Vec::new();
    for line in text.lines() {
        let mut in_string = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' => in_string = !in_string,
                _ if in_string => {}
                '#' => break,
                '/' if chars.peek() == Some(&'/') => break,
                '(' | '[' | '{' => open.push(c),
                ')' | ']' | '}' => {
                    open.pop();
                }
                _ => {}
            }
        }
    }
    open.pop().filter(|c| *c != '{')
}

/// Whether a grammar rule is an infix operator.
pub(crate) fn is_operator(rule: Rule) -> bool {
    matches!(
        rule,
        Rule::concat
            | Rule::add
            | Rule::sub
            | Rule::mul
            | Rule::div
            | Rule::matmul
            | Rule::lt
            | Rule::le
            | Rule::gt
            | Rule::ge
    )
}

/// Names for grammar rules in messages; `None` for rules the user never needs to hear about.
fn describe(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::ident => "a name",
        Rule::number | Rule::signed => "a number",
        Rule::bound => "a number or `inf`",
        Rule::expr | Rule::neg | Rule::paren | Rule::list | Rule::call | Rule::boolean => "an expression",
        Rule::string => "a string",
        Rule::objective => "`objective`",
        Rule::train => "`train`",
        Rule::range => "`in`",
        Rule::open => "`[` or `(`",
        Rule::close => "`]` or `)`",
        Rule::param | Rule::let_decl | Rule::weight | Rule::state | Rule::assign => "a declaration",
        Rule::field => "a recipe field",
        r if is_operator(r) => "an operator",
        Rule::for_clause => "`for`",
        Rule::exclusion => "`if v != ...`",
        _ => return None,
    })
}
