//! Diagnostics as plain data. Every phase returns these; only the edge (`crate::render`) turns them
//! into reports, so the core never depends on how errors are drawn.

use crate::code_table::code_table;
use serde::Serialize;

/// A byte range in the source file; every diagnostic points at one or more of these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// A span from `start` to `end` (bytes).
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// Whether a diagnostic stops compilation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The file is rejected.
    Error,
    /// The file is accepted, but something is probably wrong.
    Warning,
}

code_table! {
    /// Every diagnostic ssl-lang can emit. Codes are stable: tools and users may match on them.
    Code, severity: Severity, {
    Encoding        = "ssl::syntax::encoding",      Error,   "the file is not valid UTF-8";
    Syntax          = "ssl::syntax::unexpected",    Error,   "the text does not follow the grammar";
    TooDeep         = "ssl::syntax::too_deep",      Error,   "brackets or operators nest deeper than the documented limit";
    BadNumber       = "ssl::syntax::number",        Error,   "a number literal that is not a finite f64";
    UnknownName     = "ssl::name::unknown",         Error,   "a name that is not declared and not built in";
    UnknownFunction = "ssl::name::unknown_function",Error,   "a call to a function that does not exist";
    UnknownField    = "ssl::name::unknown_field",   Error,   "a field that batch samples do not have";
    UnknownKeyword  = "ssl::name::unknown_keyword", Error,   "a keyword argument the function does not take";
    UnknownKey      = "ssl::name::unknown_key",     Error,   "an objective entry other than positive, negative, balance, loss, total, symmetric";
    Duplicate       = "ssl::name::duplicate",       Error,   "a name or entry declared twice, or one that shadows a builtin";
    OutOfScope      = "ssl::name::out_of_scope",    Error,   "a comprehension or weight variable used outside it";
    Cycle           = "ssl::name::cycle",           Error,   "lets or states that depend on themselves";
    TotalOnly       = "ssl::name::total_only",      Error,   "a pre-normalisation field (.z1, .z2) used outside `total`";
    Arity           = "ssl::type::arity",           Error,   "a call with the wrong number of arguments";
    Mismatch        = "ssl::type::mismatch",        Error,   "operand or argument types that do not fit together";
    RoleType        = "ssl::type::role",            Error,   "positive/negative not a vector, or balance/loss not a scalar";
    MissingPositive = "ssl::type::missing_positive",Error,   "an objective with neither a positive term, a per-sample loss to derive it from, nor a `total`";
    BatchLevel      = "ssl::type::batch_level",     Error,   "a `total` that depends on the current sample instead of the batch";
    SoftmaxContext  = "ssl::type::softmax_context", Error,   "softmax outside a weight or a comprehension";
    Exclusion       = "ssl::type::exclusion",       Error,   "an `if v != ...` that does not name one of the set's own elements";
    Underivable     = "ssl::derive::unsupported",   Error,   "a loss whose gradient form cannot be derived: a construct without a symbolic derivative";
    StateContext    = "ssl::state::context",        Error,   "ema or fifo used anywhere but as the value of a state";
    StateSample     = "ssl::state::per_sample",     Error,   "a state whose value depends on the current sample";
    StateForm       = "ssl::state::form",           Error,   "a state that is not ema(RATE, EXPR) or fifo(SIZE, SET) with valid arguments";
    ParamRange      = "ssl::param::range",          Error,   "a param default outside its range, or an empty range";
    RecipeField     = "ssl::recipe::unknown_field", Error,   "a recipe field that does not exist";
    RecipeValue     = "ssl::recipe::value",         Error,   "a recipe value of the wrong type or out of range";
    RecipeTarget    = "ssl::recipe::objective",     Error,   "a train block naming no objective of the file, or a second train block";
    NoObjective     = "ssl::file::empty",           Error,   "a file with no objective";
    CollapseRisk    = "ssl::warn::collapse_risk",   Warning, "no negative term and no predictor: the encoder may collapse";
    Unused          = "ssl::warn::unused",          Warning, "a param, let, weight or state that nothing uses";
    }
}

/// A labelled span: what is wrong at this place.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    /// Where.
    pub span: Span,
    /// What about it.
    pub text: String,
}

/// One finding about a file: its code, a message, where, and how to fix it.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// Stable code; also decides the severity.
    pub code: Code,
    /// One sentence saying what is wrong.
    pub message: String,
    /// The places involved; the first is the primary one.
    pub labels: Vec<Label>,
    /// How to fix it.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic with one primary label.
    pub fn new(code: Code, message: impl Into<String>, span: Span, label: impl Into<String>) -> Self {
        Diagnostic { code, message: message.into(), labels: vec![Label { span, text: label.into() }], help: None }
    }

    /// Adds a help line.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds a secondary label.
    pub fn label(mut self, span: Span, text: impl Into<String>) -> Self {
        self.labels.push(Label { span, text: text.into() });
        self
    }

    /// Error or warning, from the code.
    pub fn severity(&self) -> Severity {
        self.code.severity()
    }

    /// The primary span.
    pub fn span(&self) -> Span {
        self.labels.first().map(|l| l.span).unwrap_or_default()
    }
}

/// True when any diagnostic is an error.
pub fn has_errors(diagnostics: &[Diagnostic]) -> bool {
    diagnostics.iter().any(|d| d.severity() == Severity::Error)
}

/// The closest candidate to a misspelt name, if one is close enough to be a plausible typo.
/// A candidate that differs only in case wins; otherwise the nearest within a third of the name's
/// length, and never one that shares no character with a one-letter name (`Q` is not a typo of `N`).
/// When several candidates are equally near (`t3`: `t1` or `t2`?), none is suggested.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let len = name.chars().count();
    let limit = (len / 3).max(1);
    let mut near: Vec<(usize, &str)> = candidates
        .into_iter()
        .filter(|&c| c != name)
        .map(|c| (if c.eq_ignore_ascii_case(name) { 0 } else { strsim::osa_distance(name, c) }, c))
        .filter(|&(d, _)| d <= limit && d < len)
        .collect();
    near.sort();
    near.dedup();
    match near.as_slice() {
        [(best, c), rest @ ..] if rest.first().is_none_or(|(d, _)| d > best) => Some(c),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(did_you_mean("lamda", ["lambda", "rho"]), Some("lambda"));
        assert_eq!(did_you_mean("rh", ["lambda", "rho"]), Some("rho"));
        assert_eq!(did_you_mean("tua", ["tau"]), Some("tau"));
        assert_eq!(did_you_mean("banana", ["lambda", "rho"]), None);
        assert_eq!(did_you_mean("n", ["b", "N", "D"]), Some("N"));
        assert_eq!(did_you_mean("T2", ["u2", "t2"]), Some("t2"));
        assert_eq!(did_you_mean("Q", ["N", "D"]), None);
        assert_eq!(did_you_mean("t3", ["u1", "t1", "t2"]), None);
    }

    #[test]
    fn codes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.as_str()), "duplicate code {code}");
        }
    }
}
