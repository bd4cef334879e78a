//! Checking one objective: the declaration table, lazy resolution of lets, weights and states
//! (so they may be declared in any order, and cycles are found), the roles, and the warnings.

use super::derive;
use super::expr::{poisoned, Bound, BUILTIN_NAMES};
use super::typed::*;
use super::types::{Elem, Size, Type};
use crate::diagnostic::{did_you_mean, Code, Diagnostic, Span};
use crate::syntax::ast::{self, Decl, ExprKind, Ident};
use std::collections::{HashMap, HashSet};

/// How deeply lets, weights and states may refer to later ones before we stop following.
const MAX_RESOLUTION_DEPTH: usize = 64;

/// The objective entries and their required types.
const KEYS: &[&str] = &["positive", "negative", "balance", "loss", "total", "symmetric"];

/// A declared name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sym {
    /// Index into params.
    Param(usize),
    /// Index into lets.
    Let(usize),
    /// Index into weights.
    Weight(usize),
    /// Index into states.
    State(usize),
    /// Index into the functions (`let f(x) = ...`).
    Function(usize),
}

enum Status<T> {
    Pending,
    InProgress,
    Done(Option<T>),
}

/// The state of checking one objective.
pub struct Checker<'a> {
    pub(super) diagnostics: &'a mut Vec<Diagnostic>,
    pub(super) scope: Vec<Bound>,
    pub(super) softmax_var: Option<VarId>,
    pub(super) index_names: HashSet<String>,
    symbols: HashMap<String, (Sym, Span)>,
    params: Vec<Param>,
    let_decls: Vec<(&'a Ident, &'a ast::Expr)>,
    lets: Vec<Status<TExpr>>,
    weight_decls: Vec<(&'a Ident, &'a Ident, &'a ast::Expr, &'a ast::Expr)>,
    weights: Vec<Status<Weight>>,
    state_decls: Vec<(&'a Ident, &'a ast::Expr)>,
    states: Vec<Status<State>>,
    /// `let f(x) = body`: name, parameter, body.
    pub(super) function_decls: Vec<(&'a Ident, &'a Ident, &'a ast::Expr)>,
    /// The functions being expanded now, innermost last (a call to one of them is a cycle).
    pub(super) expanding: Vec<usize>,
    /// The parameters of the functions being expanded, bound to their arguments' typed values.
    pub(super) arguments: Vec<(String, TExpr)>,
    referenced: HashSet<String>,
    bad_params: HashSet<usize>,
    misspelt_positive: bool,
    depth: usize,
    next_var: usize,
}

/// The most operations one function call may expand to.
const MAX_EXPANDED_NODES: usize = 20_000;

/// Checks an objective; `None` when it has errors (they are in `diagnostics`).
pub fn check_objective(o: &ast::Objective, diagnostics: &mut Vec<Diagnostic>) -> Option<Objective> {
    let before = diagnostics.len();
    let mut cx = Checker {
        diagnostics,
        scope: Vec::new(),
        softmax_var: None,
        index_names: index_names(o),
        symbols: HashMap::new(),
        params: Vec::new(),
        let_decls: Vec::new(),
        lets: Vec::new(),
        weight_decls: Vec::new(),
        weights: Vec::new(),
        state_decls: Vec::new(),
        states: Vec::new(),
        function_decls: Vec::new(),
        expanding: Vec::new(),
        arguments: Vec::new(),
        referenced: referenced_names(o),
        bad_params: HashSet::new(),
        misspelt_positive: false,
        depth: 0,
        next_var: 0,
    };
    let mut assigns: HashMap<&str, (&Ident, &ast::Expr)> = HashMap::new();
    for decl in &o.decls {
        match decl {
            Decl::Param { name, default, default_span, range } => {
                if cx.declare(name, Sym::Param(cx.params.len())) {
                    if !cx.check_param(name, *default, *default_span, range.as_ref()) {
                        cx.bad_params.insert(cx.params.len());
                    }
                    cx.params.push(Param { name: name.name.clone(), value: *default, range: range.clone() });
                }
            }
            Decl::Let { name, param: Some(param), value } => {
                if cx.declare(name, Sym::Function(cx.function_decls.len())) {
                    cx.function_decls.push((name, param, value));
                }
            }
            Decl::Let { name, param: None, value } => {
                if cx.declare(name, Sym::Let(cx.let_decls.len())) {
                    cx.let_decls.push((name, value));
                    cx.lets.push(Status::Pending);
                }
            }
            Decl::Weight { name, var, set, body } => {
                if cx.declare(name, Sym::Weight(cx.weight_decls.len())) {
                    cx.weight_decls.push((name, var, set, body));
                    cx.weights.push(Status::Pending);
                }
            }
            Decl::State { name, value } => {
                if cx.declare(name, Sym::State(cx.state_decls.len())) {
                    cx.state_decls.push((name, value));
                    cx.states.push(Status::Pending);
                }
            }
            Decl::Assign { key, value } => cx.assign(key, value, &mut assigns),
        }
    }

    for i in 0..cx.let_decls.len() {
        cx.resolve_let(i, None);
    }
    for i in 0..cx.weight_decls.len() {
        cx.resolve_weight(i, None);
    }
    for i in 0..cx.state_decls.len() {
        cx.resolve_state(i, None);
    }

    let role = |cx: &mut Checker, key: &str, want: Type| -> Option<TExpr> {
        let (ident, value) = assigns.get(key)?;
        let e = cx.expr(value);
        if e.ty != want && e.ty != Type::Error {
            let help = match want {
                Type::Vec => format!(
                    "`{key}` is the per-sample {key} gradient term: it must be a vector, like `-t2` or `F @ u1`"
                ),
                Type::Bool => "write `symmetric = true` or `symmetric = false`".into(),
                _ => format!("`{key}` must be a scalar; reduce vectors with `dot`, `norm` or `sum`"),
            };
            cx.error(
                Diagnostic::new(
                    Code::RoleType,
                    format!("`{key}` must be a {want}, but it is a {}", e.ty),
                    e.span,
                    e.ty.to_string(),
                )
                .label(ident.span, format!("{key} declared here"))
                .help(help),
            );
        }
        Some(e)
    };
    let positive = role(&mut cx, "positive", Type::Vec);
    let negative = role(&mut cx, "negative", Type::Vec);
    let balance = role(&mut cx, "balance", Type::Scalar);
    let loss = role(&mut cx, "loss", Type::Scalar);
    let total = role(&mut cx, "total", Type::Scalar);
    if let Some(t) = total.as_ref().filter(|t| t.per_sample) {
        // Point at the first per-sample name (through lets, the whole expression).
        let mut first = None;
        t.walk(&mut |e| {
            if first.is_none() && e.per_sample && matches!(e.kind, TKind::Builtin(_)) {
                first = Some(e);
            }
        });
        let (span, label) = match first {
            Some(e) => (e.span, format!("the current sample's `{}`", cx.show(e))),
            None => (t.span, "per sample".to_string()),
        };
        cx.error(
            Diagnostic::new(
                Code::BatchLevel,
                "`total` is one number for the whole batch, but this depends on the current sample",
                span,
                label,
            )
            .help("`u1 u2 t1 t2` are the current sample's features; over the batch write `mean(... b.u1 ... for b in batch)`"),
        );
    }
    let symmetric = match role(&mut cx, "symmetric", Type::Bool) {
        Some(TExpr { kind: TKind::Bool(b), .. }) => b,
        Some(other) if other.ty == Type::Bool => {
            cx.error(
                Diagnostic::new(
                    Code::RoleType,
                    "`symmetric` must be written as `true` or `false`",
                    other.span,
                    "not a literal",
                )
                .help("write `symmetric = true` or `symmetric = false`"),
            );
            true
        }
        _ => true,
    };
    // With only a per-sample loss, the form is derived from it; a misspelt `positive = ...` is already reported as
    // an unknown entry with a suggestion.
    let derives = positive.is_none() && negative.is_none() && balance.is_none() && loss.is_some();
    if positive.is_none() && total.is_none() && !derives && !cx.misspelt_positive {
        let help = if loss.is_some() {
            "write the positive term beside the negative and balance, or leave all three out to derive them from `loss`"
        } else {
            "every objective pulls the two views together: add `positive = -t2`, give a per-sample `loss = ...` to derive the form from, or the loss over the batch as `total = ...`"
        };
        cx.error(
            Diagnostic::new(
                Code::MissingPositive,
                format!("objective `{}` has no positive term", o.name.name),
                o.name.span,
                "no `positive = ...`",
            )
            .help(help),
        );
    }
    cx.warn_unused();

    let failed = has_errors_since(cx.diagnostics, before);
    let lets = done(cx.lets)?;
    let weights = done(cx.weights)?;
    let states = done(cx.states)?;
    if failed {
        return None;
    }
    let lets: Vec<Let> =
        lets.into_iter().zip(&cx.let_decls).map(|(value, (name, _))| Let { name: name.name.clone(), value }).collect();
    let mut objective = Objective {
        name: o.name.name.clone(),
        params: cx.params,
        lets,
        weights,
        states,
        positive,
        negative,
        balance,
        loss,
        total,
        symmetric,
        derived: false,
        family: Family::PositiveOnly,
    };
    if derives {
        let loss = objective.loss.as_ref().expect("derives only from a loss");
        match derive::derive(&objective, loss) {
            Ok(form) => {
                objective.positive = Some(form.positive);
                objective.negative = form.negative;
                objective.balance = form.balance;
                objective.derived = true;
            }
            Err(d) => {
                cx.diagnostics.push(d);
                return None;
            }
        }
    }
    objective.family = family(&objective);
    if let Some(z) = pre_normalisation_outside_total(&objective) {
        cx.diagnostics.push(
            Diagnostic::new(
                Code::TotalOnly,
                format!("`{}` is only defined in `total`", Show { expr: z, objective: &objective }),
                z.span,
                "outside `total`",
            )
            .help("the gradient form works on the normalised features: use `.u1` / `.u2` here, or move this into `total = ...`"),
        );
        return None;
    }
    Some(objective)
}

/// The resolved values, or `None` if any failed.
fn done<T>(statuses: Vec<Status<T>>) -> Option<Vec<T>> {
    statuses
        .into_iter()
        .map(|s| match s {
            Status::Done(v) => v,
            _ => None,
        })
        .collect()
}

fn has_errors_since(diagnostics: &[Diagnostic], before: usize) -> bool {
    crate::diagnostic::has_errors(&diagnostics[before..])
}

/// What a builtin name stands for, for messages.
fn builtin_meaning(name: &str) -> &'static str {
    match name {
        "u1" => "the online feature of this view",
        "u2" => "the online feature of the other view",
        "t1" => "the target feature of this view",
        "t2" => "the target feature of the other view",
        "N" => "the batch size",
        "D" => "the feature dimension",
        "targets" => "the target features of the batch",
        _ => "the batch's samples",
    }
}

/// Names referenced anywhere in the objective's expressions (as names or as called weights).
fn referenced_names(o: &ast::Objective) -> HashSet<String> {
    let mut out = HashSet::new();
    o.walk_exprs(&mut |e| match &e.kind {
        ExprKind::Name(n) => {
            out.insert(n.clone());
        }
        ExprKind::Call(f, _) => {
            out.insert(f.name.clone());
        }
        _ => {}
    });
    out
}

/// Names bound by comprehensions and weights anywhere in the objective, to explain out-of-scope uses.
fn index_names(o: &ast::Objective) -> HashSet<String> {
    let mut out = HashSet::new();
    o.walk_exprs(&mut |e| {
        if let ExprKind::Comprehension { var, .. } = &e.kind {
            out.insert(var.name.clone());
        }
    });
    for d in &o.decls {
        if let Decl::Weight { var, .. } = d {
            out.insert(var.name.clone());
        }
    }
    out
}

impl<'a> Checker<'a> {
    pub(super) fn error(&mut self, d: Diagnostic) {
        self.diagnostics.push(d);
    }

    pub(super) fn lookup(&self, name: &str) -> Option<Sym> {
        self.symbols.get(name).map(|(s, _)| *s)
    }

    /// Declared names in declaration order (so suggestions do not depend on hashing).
    pub(super) fn declared_names(&self) -> Vec<String> {
        let mut names: Vec<(&String, Span)> = self.symbols.iter().map(|(n, (_, span))| (n, *span)).collect();
        names.sort_by_key(|(_, span)| span.start);
        names.into_iter().map(|(n, _)| n.clone()).collect()
    }

    pub(super) fn weight_names(&self) -> Vec<String> {
        self.weight_decls.iter().map(|(n, ..)| n.name.clone()).collect()
    }

    pub(super) fn fresh_var(&mut self) -> VarId {
        self.next_var += 1;
        VarId(self.next_var)
    }

    /// Text of a typed expression, for messages and set matching.
    pub(super) fn show(&self, e: &TExpr) -> String {
        let names = Objective {
            name: String::new(),
            params: self.params.clone(),
            lets: self
                .let_decls
                .iter()
                .map(|(n, _)| Let { name: n.name.clone(), value: poisoned(Span::default()) })
                .collect(),
            weights: Vec::new(),
            states: self
                .state_decls
                .iter()
                .map(|(n, _)| State {
                    name: n.name.clone(),
                    kind: StateKind::Fifo { size: 0, set: poisoned(Span::default()) },
                    ty: Type::Error,
                })
                .collect(),
            positive: None,
            negative: None,
            balance: None,
            loss: None,
            total: None,
            symmetric: true,
            derived: false,
            family: Family::PositiveOnly,
        };
        Show { expr: e, objective: &names }.to_string()
    }

    pub(super) fn show_weight_set(&self, w: &Weight) -> String {
        self.show(&w.set)
    }

    fn declare(&mut self, name: &Ident, sym: Sym) -> bool {
        if BUILTIN_NAMES.contains(&name.name.as_str()) {
            self.error(
                Diagnostic::new(
                    Code::Duplicate,
                    format!("`{}` is a builtin name and cannot be redeclared", name.name),
                    name.span,
                    "builtin",
                )
                .help(format!("`{}` is {}; pick another name", name.name, builtin_meaning(&name.name))),
            );
            return false;
        }
        if let Some((_, first)) = self.symbols.get(&name.name) {
            let first = *first;
            self.error(
                Diagnostic::new(
                    Code::Duplicate,
                    format!("`{}` is declared twice", name.name),
                    name.span,
                    "declared again here",
                )
                .label(first, "first declared here")
                .help("rename or remove one of them"),
            );
            return false;
        }
        self.symbols.insert(name.name.clone(), (sym, name.span));
        true
    }

    /// Reports an empty range or a default outside it; false when the default is not usable.
    fn check_param(&mut self, name: &Ident, default: f64, default_span: Span, range: Option<&ast::Range>) -> bool {
        let Some(range) = range else { return true };
        let empty = range.lo > range.hi || (range.lo == range.hi && !(range.lo_closed && range.hi_closed));
        if empty {
            self.error(
                Diagnostic::new(
                    Code::ParamRange,
                    format!("the range of `{}` is empty", name.name),
                    range.span,
                    format!("{range} holds no number"),
                )
                .help("write the smaller bound first"),
            );
            false
        } else if !range.contains(default) {
            self.error(
                Diagnostic::new(
                    Code::ParamRange,
                    format!("the default of `{}` lies outside its range", name.name),
                    default_span,
                    format!("{default} is not in {range}"),
                )
                .label(range.span, "allowed range")
                .help("change the default or widen the range"),
            );
            false
        } else {
            true
        }
    }

    fn assign<'d>(
        &mut self,
        key: &'d Ident,
        value: &'d ast::Expr,
        assigns: &mut HashMap<&'d str, (&'d Ident, &'d ast::Expr)>,
    ) {
        let Some(&k) = KEYS.iter().find(|k| **k == key.name) else {
            let suggestion = did_you_mean(&key.name, KEYS.iter().copied());
            if suggestion == Some("positive") {
                self.misspelt_positive = true;
            }
            let help = match suggestion {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("an objective sets positive, negative, balance, loss, total and symmetric; to name a value, write `let {} = ...`", key.name),
            };
            self.error(
                Diagnostic::new(
                    Code::UnknownKey,
                    format!("`{}` is not an objective entry", key.name),
                    key.span,
                    "unknown entry",
                )
                .help(help),
            );
            return;
        };
        if let Some((first, _)) = assigns.get(k) {
            let first = first.span;
            self.error(
                Diagnostic::new(Code::Duplicate, format!("`{k}` is set twice"), key.span, "set again here")
                    .label(first, "first set here")
                    .help(
                        "an objective has one positive, one negative, one balance and one loss; combine them with `+`",
                    ),
            );
            return;
        }
        assigns.insert(k, (key, value));
    }

    /// A reference to a declared name, resolving it first if needed.
    pub(super) fn reference(&mut self, sym: Sym, span: Span) -> TExpr {
        let at = Some(span);
        let (kind, ty, per_sample) = match sym {
            Sym::Param(i) => (TKind::Param(i), Type::Scalar, false),
            Sym::Let(i) => match self.resolve_let(i, at) {
                Some(e) => (TKind::Let(i), e.ty, e.per_sample),
                None => return poisoned(span),
            },
            Sym::State(i) => match self.resolve_state(i, at) {
                Some(s) => (TKind::State(i), s.ty, false),
                None => return poisoned(span),
            },
            Sym::Weight(i) => {
                let name = self.weight_decls[i].0.name.clone();
                self.error(
                    Diagnostic::new(
                        Code::Arity,
                        format!("weight `{name}` is a family of numbers: call it with an index variable"),
                        span,
                        "not called",
                    )
                    .help(format!("write `{name}(v)` inside `sum(... for v in SET)`")),
                );
                return poisoned(span);
            }
            Sym::Function(i) => {
                let (name, param, _) = self.function_decls[i];
                self.error(
                    Diagnostic::new(
                        Code::Arity,
                        format!("`{}` is a function of one value: call it", name.name),
                        span,
                        "not called",
                    )
                    .help(format!("call it with one value for its parameter `{}`: `{}(...)`", param.name, name.name)),
                );
                return poisoned(span);
            }
        };
        TExpr { kind, ty, per_sample, span }
    }

    /// `f(arg)` for `let f(x) = body`: the body checked with `x` bound to the argument's typed value, in a scope of
    /// its own (it sees its parameter and the objective's declarations, not the caller's index variables).
    pub(super) fn call_function(&mut self, i: usize, func: &Ident, args: &[ast::Arg], span: Span) -> TExpr {
        let (name, param, body) = self.function_decls[i];
        let [ast::Arg { name: None, value }] = args else {
            self.error(
                Diagnostic::new(
                    Code::Arity,
                    format!("`{}` takes one value, but was given {}", name.name, args.len()),
                    span,
                    format!("`{}` is its one parameter", param.name),
                )
                .label(name.span, "declared here")
                .help(format!("call it as `{}(x)`", name.name)),
            );
            return poisoned(span);
        };
        if self.expanding.contains(&i) {
            self.error(
                Diagnostic::new(Code::Cycle, format!("`{}` calls itself", name.name), func.span, "called again here")
                    .label(name.span, "declared here")
                    .help("a function is expanded where it is called, so it cannot call itself, directly or through others"),
            );
            return poisoned(span);
        }
        let argument = self.expr(value);
        if argument.ty == Type::Error {
            return poisoned(span);
        }
        self.expanding.push(i);
        let scope = std::mem::take(&mut self.scope);
        let softmax = self.softmax_var.take();
        let outer = std::mem::replace(&mut self.arguments, vec![(param.name.clone(), argument)]);
        let result = self.expr(body);
        self.arguments = outer;
        self.scope = scope;
        self.softmax_var = softmax;
        self.expanding.pop();
        // Nested calls of a function that uses its parameter twice double at each level: bound the expansion.
        let mut nodes = 0usize;
        result.walk(&mut |_| nodes += 1);
        if nodes > MAX_EXPANDED_NODES {
            self.error(
                Diagnostic::new(
                    Code::TooDeep,
                    format!("this call of `{}` expands to more than {MAX_EXPANDED_NODES} operations", name.name),
                    span,
                    "too large once expanded",
                )
                .help("name the repeated part with a `let` (computed once) instead of passing it through functions"),
            );
            return poisoned(span);
        }
        result
    }

    /// Runs `f` in an empty scope (declarations never see the caller's index variables), guarding
    /// against cycles and over-deep chains. `key` identifies the declaration; `site` is the use.
    fn resolving<T: Clone>(
        &mut self,
        key: (u8, usize),
        name: &Ident,
        site: Option<Span>,
        status: fn(&mut Self) -> &mut Vec<Status<T>>,
        f: impl FnOnce(&mut Self) -> Option<T>,
    ) -> Option<T> {
        match &status(self)[key.1] {
            Status::Done(v) => return v.clone(),
            Status::InProgress => {
                self.error(
                    Diagnostic::new(
                        Code::Cycle,
                        format!("`{}` depends on itself", name.name),
                        site.unwrap_or(name.span),
                        "used here while it is being defined",
                    )
                    .label(name.span, "declared here")
                    .help("break the cycle: a let or state cannot refer to itself, directly or through others"),
                );
                status(self)[key.1] = Status::Done(None);
                return None;
            }
            Status::Pending => {}
        }
        if self.depth >= MAX_RESOLUTION_DEPTH {
            self.error(
                Diagnostic::new(
                    Code::TooDeep,
                    format!("declarations refer to later ones more than {MAX_RESOLUTION_DEPTH} levels deep"),
                    name.span,
                    "too deep",
                )
                .help("declare names before the declarations that use them"),
            );
            return None;
        }
        status(self)[key.1] = Status::InProgress;
        let scope = std::mem::take(&mut self.scope);
        let softmax = self.softmax_var.take();
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        self.scope = scope;
        self.softmax_var = softmax;
        if let Status::InProgress = status(self)[key.1] {
            status(self)[key.1] = Status::Done(result.clone());
        }
        match &status(self)[key.1] {
            Status::Done(v) => v.clone(),
            _ => None,
        }
    }

    pub(super) fn resolve_let(&mut self, i: usize, site: Option<Span>) -> Option<TExpr> {
        let (name, value) = self.let_decls[i];
        self.resolving(
            (1, i),
            name,
            site,
            |c| &mut c.lets,
            |c| {
                let e = c.expr(value);
                (e.ty != Type::Error).then_some(e)
            },
        )
    }

    pub(super) fn resolve_weight(&mut self, i: usize, site: Option<Span>) -> Option<Weight> {
        let (name, var, set, body) = self.weight_decls[i];
        self.resolving(
            (2, i),
            name,
            site,
            |c| &mut c.weights,
            |c| {
                let set = c.expr(set);
                let (_, bound) = c.bind_index(var, &set)?;
                let id = bound.var;
                let body = c.with_index(bound, |c| c.expr(body));
                match body.ty {
                    Type::Scalar => Some(Weight { name: name.name.clone(), var: id, set, body }),
                    Type::Error => None,
                    ty => {
                        c.error(
                            Diagnostic::new(
                                Code::Mismatch,
                                format!("weight `{}` must be a scalar per element, but it is a {ty}", name.name),
                                body.span,
                                ty.to_string(),
                            )
                            .help("a weight is one number per element of the set, e.g. `softmax(dot(u1, v) / tau)`"),
                        );
                        None
                    }
                }
            },
        )
    }

    pub(super) fn resolve_state(&mut self, i: usize, site: Option<Span>) -> Option<State> {
        let (name, value) = self.state_decls[i];
        self.resolving((3, i), name, site, |c| &mut c.states, |c| c.state(name, value))
    }

    fn state(&mut self, name: &Ident, value: &ast::Expr) -> Option<State> {
        let form_help = "write `state S = ema(RATE, EXPR)` (a running mean) or `state Q = fifo(SIZE, SET)` (a queue)";
        let ExprKind::Call(func, args) = &value.kind else {
            self.error(
                Diagnostic::new(
                    Code::StateForm,
                    format!("state `{}` must be an ema or a fifo", name.name),
                    value.span,
                    "not ema(...) or fifo(...)",
                )
                .help(form_help),
            );
            return None;
        };
        let params: &[&str] = match func.name.as_str() {
            "ema" => &["rate", "value"],
            "fifo" => &["size", "set"],
            _ => {
                self.error(
                    Diagnostic::new(
                        Code::StateForm,
                        format!("state `{}` must be an ema or a fifo", name.name),
                        func.span,
                        "not ema or fifo",
                    )
                    .help(form_help),
                );
                return None;
            }
        };
        let bound = super::args::bind(&func.name, func.span, params, args, self.diagnostics)?;
        let [Some(first), Some(second)] = bound[..] else {
            self.error(
                Diagnostic::new(
                    Code::Arity,
                    format!("`{}` takes 2 arguments", func.name),
                    value.span,
                    "missing argument",
                )
                .help(format!("call it as {}", super::args::signature(&func.name, params))),
            );
            return None;
        };
        if func.name == "ema" {
            let rate = self.expr(first);
            let value = self.expr(second);
            if rate.ty != Type::Scalar || rate.per_sample {
                if rate.ty != Type::Error {
                    self.error(
                        Diagnostic::new(
                            Code::StateForm,
                            "an ema rate must be a global scalar",
                            rate.span,
                            rate.ty.to_string(),
                        )
                        .help("use a param, e.g. `param rho = 0.99 in [0, 1)`"),
                    );
                }
                return None;
            }
            if let Some(r) = self.constant(&rate) {
                if !(0.0..1.0).contains(&r) {
                    self.error(
                        Diagnostic::new(
                            Code::StateForm,
                            format!("an ema rate must lie in [0, 1), but it is {r}"),
                            rate.span,
                            "rate out of range",
                        )
                        .help("the rate is the weight of the old value: 0.99 keeps a long memory, 0 none"),
                    );
                    return None;
                }
            }
            if !matches!(value.ty, Type::Scalar | Type::Vec | Type::Mat) {
                if value.ty != Type::Error {
                    self.error(
                        Diagnostic::new(
                            Code::StateForm,
                            format!("an ema averages a scalar, vector or matrix, not a {}", value.ty),
                            value.span,
                            value.ty.to_string(),
                        )
                        .help("for a queue of vectors use `fifo(SIZE, SET)`"),
                    );
                }
                return None;
            }
            self.reject_per_sample(name, &value)?;
            let ty = value.ty;
            Some(State { name: name.name.clone(), kind: StateKind::Ema { rate, value }, ty })
        } else {
            let size = match &first.kind {
                ExprKind::Number(x) if x.fract() == 0.0 && *x >= 1.0 && *x <= (1u64 << 24) as f64 => *x as usize,
                _ => {
                    self.error(
                        Diagnostic::new(
                            Code::StateForm,
                            "a fifo size must be a whole number between 1 and 16777216",
                            first.span,
                            "not a valid size",
                        )
                        .help("write the capacity as a literal, e.g. `fifo(4096, targets)`"),
                    );
                    return None;
                }
            };
            let set = self.expr(second);
            match set.ty {
                Type::Set(Elem::Vec, _) => {}
                Type::Error => return None,
                ty => {
                    self.error(
                        Diagnostic::new(
                            Code::StateForm,
                            format!("a fifo holds vectors from a set, not a {ty}"),
                            set.span,
                            ty.to_string(),
                        )
                        .help("push a set of vectors, e.g. `targets`"),
                    );
                    return None;
                }
            }
            self.reject_per_sample(name, &set)?;
            let ty = Type::Set(Elem::Vec, Size { per_n: 0, fixed: size });
            Some(State { name: name.name.clone(), kind: StateKind::Fifo { size, set }, ty })
        }
    }

    /// A state is shared by every sample of the batch, so its value may not use the current one.
    fn reject_per_sample(&mut self, name: &Ident, value: &TExpr) -> Option<()> {
        if !value.per_sample {
            return Some(());
        }
        let mut culprit = value.span;
        let mut found = false;
        value.walk(&mut |e| {
            if !found && e.per_sample && matches!(e.kind, TKind::Builtin(_) | TKind::Let(_) | TKind::WeightAt { .. }) {
                culprit = e.span;
                found = true;
            }
        });
        self.error(
            Diagnostic::new(Code::StateSample, format!("state `{}` depends on the current sample", name.name), culprit, "per-sample value")
                .label(name.span, "state declared here")
                .help("a state is shared by the whole batch: build it from `targets`, `batch` or comprehensions over them, e.g. `mean(outer(t, t) for t in targets)`"),
        );
        None
    }

    /// The value of a scalar built from literals and params, if it is one.
    pub(super) fn constant(&self, e: &TExpr) -> Option<f64> {
        use crate::syntax::ast::BinOp::*;
        match &e.kind {
            TKind::Const(x) => Some(*x),
            // A default already reported as invalid says nothing about the expressions using it.
            TKind::Param(i) if self.bad_params.contains(i) => None,
            TKind::Param(i) => Some(self.params[*i].value),
            TKind::Neg(a) => Some(-self.constant(a)?),
            TKind::Binary(op, a, b) => {
                let (a, b) = (self.constant(a)?, self.constant(b)?);
                match op {
                    Add => Some(a + b),
                    Sub => Some(a - b),
                    Mul => Some(a * b),
                    Div => Some(a / b),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn warn_unused(&mut self) {
        // Unused means never referenced in the source, not merely never reached: a name used only
        // inside an erroneous expression is not reported again.
        let mut unused: Vec<(Span, String, &str)> = Vec::new();
        for (name, (sym, span)) in &self.symbols {
            let what = match sym {
                Sym::Param(_) => "param",
                Sym::Let(_) => "let",
                Sym::Weight(_) => "weight",
                Sym::State(_) => "state",
                Sym::Function(_) => "function",
            };
            if !self.referenced.contains(name) {
                unused.push((*span, name.clone(), what));
            }
        }
        unused.sort_by_key(|(span, ..)| span.start);
        for (span, name, what) in unused {
            self.error(
                Diagnostic::new(Code::Unused, format!("{what} `{name}` is never used"), span, "unused")
                    .help("remove it, or use it in the positive, negative, balance, loss or total"),
            );
        }
    }
}

/// The first sub-expression satisfying `pred` that `roots` reach, looking through lets and weights.
fn reachable<'o>(o: &'o Objective, roots: Vec<&'o TExpr>, pred: &dyn Fn(&TExpr) -> bool) -> Option<&'o TExpr> {
    let mut stack = roots;
    let mut seen = 0;
    while let Some(e) = stack.pop() {
        seen += 1;
        if seen > 10_000 {
            break;
        }
        let mut hit = None;
        e.walk(&mut |s| {
            if hit.is_none() && pred(s) {
                hit = Some(s);
            }
            match &s.kind {
                TKind::Let(i) => stack.push(&o.lets[*i].value),
                TKind::WeightAt { weight, .. } => stack.push(&o.weights[*weight].body),
                _ => {}
            }
        });
        if hit.is_some() {
            return hit;
        }
    }
    None
}

/// A `.z1` / `.z2` field (the online outputs before normalisation) reached from anything but `total`: the gradient
/// form is injected at the normalised features, so only the batch-level loss may read them.
fn pre_normalisation_outside_total(o: &Objective) -> Option<&TExpr> {
    let mut roots: Vec<&TExpr> = [&o.positive, &o.negative, &o.balance, &o.loss].into_iter().flatten().collect();
    for s in &o.states {
        match &s.kind {
            StateKind::Ema { rate, value } => roots.extend([rate, value]),
            StateKind::Fifo { set, .. } => roots.push(set),
        }
    }
    reachable(o, roots, &|e| matches!(e.kind, TKind::Field(_, Builtin::Z1 | Builtin::Z2)))
}

/// Reads the family off the negative term, looking through lets and weights.
fn family(o: &Objective) -> Family {
    let Some(negative) = &o.negative else { return Family::PositiveOnly };
    let reaches = |pred: &dyn Fn(&TExpr) -> bool| reachable(o, vec![negative], pred).is_some();
    // Similarity weights through an exponential — a softmax, or one written out with `exp` or `logsumexp` — are
    // the contrastive family; polynomial weights (dot products) are decorrelation.
    let exponential = |e: &TExpr| {
        matches!(
            e.kind,
            TKind::Softmax { .. } | TKind::Call(Func::Exp, _) | TKind::Reduce { op: Reduce::LogSumExp, .. }
        )
    };
    if reaches(&exponential) {
        Family::Contrastive
    } else if reaches(&|e| matches!(e.kind, TKind::State(i) if o.states[i].ty == Type::Mat)) {
        Family::CorrelationMatrix
    } else {
        Family::Decorrelation
    }
}
