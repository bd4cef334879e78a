//! Typing expressions: name resolution, the operator and builtin rules, comprehensions, weights.

use super::args::{bind, signature};
use super::objective::{Checker, Sym};
use super::typed::{Builtin, Exclusion, Func, Reduce, TExpr, TKind, VarId};
use super::types::{Elem, Size, Type};
use crate::diagnostic::{did_you_mean, Code, Diagnostic, Span};
use crate::syntax::ast::{Arg, BinOp, Expr, ExprKind, Ident};

/// An index variable in scope.
#[derive(Clone)]
pub struct Bound {
    /// As written.
    pub name: String,
    /// Its id.
    pub var: VarId,
    /// What it ranges over (vec or sample).
    pub elem: Elem,
    /// The set, as text, to match weight families with comprehensions.
    pub set_text: String,
}

/// Builtin names every objective sees, with their types.
pub const BUILTIN_NAMES: &[&str] = &["u1", "u2", "t1", "t2", "N", "D", "targets", "batch", "online"];

/// The fields of a batch sample.
pub const SAMPLE_FIELDS: &[&str] = &["u1", "u2", "t1", "t2", "z1", "z2"];

/// Builtin functions, with parameter names.
pub const FUNCTIONS: &[(&str, &[&str])] = &[
    ("dot", &["a", "b"]),
    ("outer", &["a", "b"]),
    ("exp", &["x"]),
    ("log", &["x"]),
    ("sqrt", &["x"]),
    ("relu", &["x"]),
    ("norm", &["x"]),
    ("normalize", &["x"]),
    ("min", &["a", "b"]),
    ("max", &["a", "b"]),
    ("sum", &["x"]),
    ("mean", &["x"]),
    ("logsumexp", &["x"]),
    ("softmax", &["x"]),
    ("eye", &[]),
    ("stopgrad", &["x"]),
    ("abs", &["x"]),
    ("tanh", &["x"]),
    ("sigmoid", &["x"]),
    ("pow", &["x", "p"]),
    ("clamp", &["x", "lo", "hi"]),
    ("diag", &["m"]),
    ("trace", &["m"]),
    ("transpose", &["m"]),
    ("where", &["cond", "a", "b"]),
    ("nearest", &["x", "set"]),
    ("sqrtm", &["m"]),
    ("inv_sqrtm", &["m"]),
    ("ema", &["rate", "value"]),
    ("fifo", &["size", "set"]),
];

pub(super) fn texpr(kind: TKind, ty: Type, per_sample: bool, span: Span) -> TExpr {
    TExpr { kind, ty, per_sample, span }
}

/// The error expression: type `?`, accepted everywhere so one mistake is reported once.
pub fn poisoned(span: Span) -> TExpr {
    texpr(TKind::Error, Type::Error, false, span)
}

impl Checker<'_> {
    /// Types an expression in the current scope.
    pub fn expr(&mut self, e: &Expr) -> TExpr {
        let span = e.span;
        match &e.kind {
            ExprKind::Number(x) => texpr(TKind::Const(*x), Type::Scalar, false, span),
            ExprKind::Bool(b) => texpr(TKind::Bool(*b), Type::Bool, false, span),
            ExprKind::Str(_) => {
                self.error(
                    Diagnostic::new(Code::Mismatch, "strings are only allowed in the train block", span, "string")
                        .help("objectives compute with numbers, vectors, matrices and sets"),
                );
                poisoned(span)
            }
            ExprKind::Name(name) => self.name(name, span),
            ExprKind::Neg(a) => {
                let a = self.expr(a);
                if !a.ty.is_numeric() && a.ty != Type::Error {
                    self.error(
                        Diagnostic::new(Code::Mismatch, format!("cannot negate a {}", a.ty), a.span, a.ty.to_string())
                            .help("only scalars, vectors and matrices can be negated"),
                    );
                    return poisoned(span);
                }
                texpr(TKind::Neg(Box::new(a.clone())), a.ty, a.per_sample, span)
            }
            ExprKind::Binary(op, a, b) => {
                let (a, b) = (self.expr(a), self.expr(b));
                self.binary(*op, a, b, span)
            }
            ExprKind::Field(base, field) => self.field(base, field, span),
            ExprKind::List(items) => self.list(items, span),
            ExprKind::Call(func, args) => self.call(func, args, span),
            ExprKind::Comprehension { func, body, var, set, exclude } => {
                self.comprehension(func, body, var, set, exclude.as_deref(), span)
            }
            ExprKind::Error => poisoned(span),
        }
    }

    fn name(&mut self, name: &str, span: Span) -> TExpr {
        if let Some((_, value)) = self.arguments.iter().find(|(n, _)| n == name) {
            return value.clone();
        }
        if let Some(b) = self.scope.iter().rev().find(|b| b.name == name) {
            let ty = match b.elem {
                Elem::Vec => Type::Vec,
                Elem::Sample => Type::Sample,
            };
            return texpr(TKind::Index(b.var, name.to_string()), ty, false, span);
        }
        if let Some(sym) = self.lookup(name) {
            return self.reference(sym, span);
        }
        let builtin = |b: Builtin, ty| texpr(TKind::Builtin(b), ty, matches!(ty, Type::Vec), span);
        match name {
            "u1" => return builtin(Builtin::U1, Type::Vec),
            "u2" => return builtin(Builtin::U2, Type::Vec),
            "t1" => return builtin(Builtin::T1, Type::Vec),
            "t2" => return builtin(Builtin::T2, Type::Vec),
            "N" => return builtin(Builtin::N, Type::Scalar),
            "D" => return builtin(Builtin::D, Type::Scalar),
            "targets" => return texpr(TKind::Targets, Type::Set(Elem::Vec, Size { per_n: 2, fixed: 0 }), false, span),
            "batch" => return texpr(TKind::Batch, Type::Set(Elem::Sample, Size { per_n: 1, fixed: 0 }), false, span),
            "online" => return texpr(TKind::Online, Type::Set(Elem::Vec, Size { per_n: 2, fixed: 0 }), false, span),
            _ => {}
        }
        if self.index_names.contains(name) {
            self.error(
                Diagnostic::new(
                    Code::OutOfScope,
                    format!("`{name}` is an index variable, but it is used outside the comprehension or weight that binds it"),
                    span,
                    "not bound here",
                )
                .help(format!(
                    "`{name}` only exists inside `sum(... for {name} in SET)`, or in the body of `weight w({name} in SET)`"
                )),
            );
            return poisoned(span);
        }
        let mut visible = self.visible_names();
        visible.extend(["true".to_string(), "false".to_string()]);
        let help = match did_you_mean(name, visible.iter().map(String::as_str)) {
            Some(s) => format!("did you mean `{s}`?"),
            None => "declare it with `param`, `let` or `state`, or use a builtin: u1 u2 t1 t2 targets online batch N D"
                .into(),
        };
        self.error(
            Diagnostic::new(Code::UnknownName, format!("unknown name `{name}`"), span, "not declared").help(help),
        );
        poisoned(span)
    }

    /// Every name an expression could use here, for suggestions.
    fn visible_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.scope.iter().map(|b| b.name.clone()).collect();
        names.extend(self.declared_names());
        names.extend(BUILTIN_NAMES.iter().map(|s| s.to_string()));
        names
    }

    fn binary(&mut self, op: BinOp, a: TExpr, b: TExpr, span: Span) -> TExpr {
        use Type::*;
        let per_sample = a.per_sample || b.per_sample;
        if a.ty == Error || b.ty == Error {
            return poisoned(span);
        }
        let ty = match (op, a.ty, b.ty) {
            (BinOp::Concat, Set(ea, sa), Set(eb, sb)) if ea == eb => Some(Set(ea, sa + sb)),
            (BinOp::Concat, _, _) => None,
            (BinOp::MatMul, Mat, Vec) => Some(Vec),
            (BinOp::MatMul, Mat, Mat) => Some(Mat),
            (BinOp::MatMul, _, _) => None,
            (_, x, y) if !x.is_numeric() || !y.is_numeric() => None,
            (_, Scalar, y) => Some(y),
            (_, x, Scalar) => Some(x),
            (_, x, y) if x == y => Some(x),
            _ => None,
        };
        match ty {
            Some(ty) => texpr(TKind::Binary(op, Box::new(a), Box::new(b)), ty, per_sample, span),
            None => {
                let help = match (op, a.ty) {
                    (BinOp::MatMul, Vec) => {
                        "`@` needs a matrix on the left; for an inner product write `dot(a, b)`".into()
                    }
                    (BinOp::MatMul, _) => "`@` multiplies a matrix with a vector or a matrix; scale with `*`".into(),
                    (BinOp::Mul, Mat) => "`*` is elementwise; for a matrix product write `@`, e.g. `F @ u1`".into(),
                    (BinOp::Concat, _) => "`++` joins two sets of the same kind, e.g. `[t2] ++ Q`".into(),
                    _ => format!(
                        "`{}` works elementwise on two values of one type, or a scalar with anything",
                        op.symbol()
                    ),
                };
                self.error(
                    Diagnostic::new(
                        Code::Mismatch,
                        format!("cannot apply `{}` to {} and {}", op.symbol(), article(a.ty), article(b.ty)),
                        a.span,
                        a.ty.to_string(),
                    )
                    .label(b.span, b.ty.to_string())
                    .help(help),
                );
                poisoned(span)
            }
        }
    }

    fn field(&mut self, base: &Expr, field: &Ident, span: Span) -> TExpr {
        let base = self.expr(base);
        match base.ty {
            Type::Error => poisoned(span),
            Type::Sample => {
                let which = match field.name.as_str() {
                    "u1" => Builtin::U1,
                    "u2" => Builtin::U2,
                    "t1" => Builtin::T1,
                    "t2" => Builtin::T2,
                    "z1" => Builtin::Z1,
                    "z2" => Builtin::Z2,
                    other => {
                        let fields = SAMPLE_FIELDS.join(", ");
                        let help = match did_you_mean(other, SAMPLE_FIELDS.iter().copied()) {
                            Some(s) => format!("did you mean `{s}`? samples have fields {fields}"),
                            None => format!("samples have fields {fields}"),
                        };
                        self.error(
                            Diagnostic::new(
                                Code::UnknownField,
                                format!("samples have no field `{other}`"),
                                field.span,
                                "unknown field",
                            )
                            .help(help),
                        );
                        return poisoned(span);
                    }
                };
                let per_sample = base.per_sample;
                texpr(TKind::Field(Box::new(base), which), Type::Vec, per_sample, span)
            }
            ty => {
                self.error(
                    Diagnostic::new(Code::Mismatch, format!("a {ty} has no fields"), base.span, ty.to_string())
                        .help("only the samples of `batch` have fields: `sum(... b.u1 ... for b in batch)`"),
                );
                poisoned(span)
            }
        }
    }

    fn list(&mut self, items: &[Expr], span: Span) -> TExpr {
        let items: Vec<TExpr> = items.iter().map(|i| self.expr(i)).collect();
        let mut ok = true;
        for item in &items {
            if item.ty != Type::Vec && item.ty != Type::Error {
                ok = false;
                self.error(
                    Diagnostic::new(
                        Code::Mismatch,
                        format!("a set literal holds vectors, not {}", article(item.ty)),
                        item.span,
                        item.ty.to_string(),
                    )
                    .help("write vectors such as `[t2, u2]`"),
                );
            }
        }
        if !ok || items.iter().any(|i| i.ty == Type::Error) {
            return poisoned(span);
        }
        let per_sample = items.iter().any(|i| i.per_sample);
        let size = Size { per_n: 0, fixed: items.len() };
        texpr(TKind::List(items), Type::Set(Elem::Vec, size), per_sample, span)
    }

    fn call(&mut self, func: &Ident, args: &[Arg], span: Span) -> TExpr {
        match self.lookup(&func.name) {
            Some(Sym::Weight(i)) => return self.weight_at(i, func, args, span),
            Some(Sym::Function(i)) => return self.call_function(i, func, args, span),
            _ => {}
        }
        let Some(&(name, params)) = FUNCTIONS.iter().find(|(n, _)| *n == func.name) else {
            let mut candidates: Vec<String> = FUNCTIONS.iter().map(|(n, _)| n.to_string()).collect();
            candidates.extend(self.weight_names());
            let help = match did_you_mean(&func.name, candidates.iter().map(String::as_str)) {
                Some(s) => format!("did you mean `{s}`?"),
                None => {
                    format!("the functions are {}", FUNCTIONS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" "))
                }
            };
            self.error(
                Diagnostic::new(
                    Code::UnknownFunction,
                    format!("unknown function `{}`", func.name),
                    func.span,
                    "no such function",
                )
                .help(help),
            );
            return poisoned(span);
        };
        match name {
            "ema" | "fifo" => {
                self.error(
                    Diagnostic::new(
                        Code::StateContext,
                        format!("`{name}` can only be the value of a state"),
                        func.span,
                        "not a state",
                    )
                    .help(format!("declare it: `state S = {name}(...)`, then use `S`")),
                );
                return poisoned(span);
            }
            _ => {}
        }
        let Some(bound) = bind(name, func.span, params, args, self.diagnostics) else {
            return poisoned(span);
        };
        if let Some(missing) = bound.iter().position(Option::is_none) {
            self.error(
                Diagnostic::new(
                    Code::Arity,
                    format!(
                        "`{name}` takes {} argument{}, but {} {} given",
                        params.len(),
                        plural(params.len()),
                        args.len(),
                        if args.len() == 1 { "was" } else { "were" }
                    ),
                    span,
                    format!("`{}` is missing", params[missing]),
                )
                .help(format!("call it as {}", signature(name, params))),
            );
            return poisoned(span);
        }
        let args: Vec<TExpr> = bound.into_iter().flatten().map(|a| self.expr(a)).collect();
        // Of a vector, softmax normalises over its entries; of a scalar, over the set of the enclosing comprehension.
        let over_entries = args.first().is_some_and(|a| matches!(a.ty, Type::Vec | Type::Error));
        if name == "softmax" && !over_entries && self.softmax_var.is_none() {
            self.error(
                Diagnostic::new(
                    Code::SoftmaxContext,
                    "`softmax` needs a set to normalise over",
                    func.span,
                    "outside any weight or comprehension",
                )
                .help("use it in `weight w(v in SET) = softmax(...)` or inside `sum(softmax(...) * v for v in SET)`; of a vector, `softmax(x)` normalises over its entries"),
            );
            return poisoned(span);
        }
        self.typed_call(name, args, span)
    }

    fn typed_call(&mut self, name: &str, args: Vec<TExpr>, span: Span) -> TExpr {
        use Type::*;
        if args.iter().any(|a| a.ty == Error) {
            return poisoned(span);
        }
        let per_sample = args.iter().any(|a| a.per_sample);
        let types: std::vec::Vec<Type> = args.iter().map(|a| a.ty).collect();
        let (func, ty, wanted) = match name {
            "dot" => (Func::Dot, (types == [Vec, Vec]).then_some(Scalar), "two vectors"),
            "outer" => (Func::Outer, (types == [Vec, Vec]).then_some(Mat), "two vectors"),
            "exp" | "log" | "sqrt" | "relu" | "abs" | "tanh" | "sigmoid" | "stopgrad" => {
                let func = match name {
                    "exp" => Func::Exp,
                    "log" => Func::Log,
                    "sqrt" => Func::Sqrt,
                    "relu" => Func::Relu,
                    "abs" => Func::Abs,
                    "tanh" => Func::Tanh,
                    "sigmoid" => Func::Sigmoid,
                    _ => Func::StopGrad,
                };
                (func, types[0].is_numeric().then_some(types[0]), "a scalar, vector or matrix")
            }
            "norm" => (Func::Norm, (types == [Vec]).then_some(Scalar), "a vector"),
            "normalize" => (Func::Normalize, (types == [Vec]).then_some(Vec), "a vector"),
            "min" | "max" => {
                let func = if name == "min" { Func::Min } else { Func::Max };
                let ty = match (types[0], types[1]) {
                    (x, y) if !x.is_numeric() || !y.is_numeric() => None,
                    (Scalar, y) => Some(y),
                    (x, Scalar) => Some(x),
                    (x, y) => (x == y).then_some(x),
                };
                (func, ty, "two values of one type, or a scalar and anything")
            }
            "logsumexp" if types[0] == Vec => (Func::LogSumExpEntries, Some(Scalar), "a vector"),
            "logsumexp" => {
                self.error(
                    Diagnostic::new(
                        Code::Mismatch,
                        "`logsumexp` reduces over a set or a vector's entries",
                        span,
                        "no set",
                    )
                    .help("write `logsumexp(EXPR for v in SET)`, or `logsumexp(x)` of a vector x"),
                );
                return poisoned(span);
            }
            "softmax" if types[0] == Vec => (Func::SoftmaxEntries, Some(Vec), "a vector"),
            "sum" | "mean" => {
                let func = if name == "sum" { Func::SumEntries } else { Func::MeanEntries };
                (func, matches!(types[0], Vec | Mat).then_some(Scalar), "a vector or a matrix (or a comprehension)")
            }
            "pow" => (
                Func::Pow,
                (types[0].is_numeric() && types[1] == Scalar).then_some(types[0]),
                "a value and a scalar exponent",
            ),
            "clamp" => (
                Func::Clamp,
                (types[0].is_numeric() && types[1] == Scalar && types[2] == Scalar).then_some(types[0]),
                "a value and two scalar bounds",
            ),
            "diag" => (Func::Diag, (types == [Mat]).then_some(Vec), "a matrix"),
            "sqrtm" | "inv_sqrtm" => {
                let func = if name == "sqrtm" { Func::SqrtM } else { Func::InvSqrtM };
                if types == [Mat] && (per_sample || self.reads_index(&args[0])) {
                    let what = if per_sample { "the current sample" } else { "a comprehension's variable" };
                    self.error(
                        Diagnostic::new(
                            Code::Mismatch,
                            format!("`{name}` takes a matrix of the whole batch, but this one depends on {what}"),
                            args[0].span,
                            if per_sample { "a matrix per sample" } else { "a matrix per element" },
                        )
                        .help("a matrix power is one eigendecomposition per step: apply it to a batch-level matrix, e.g. `inv_sqrtm(mean(outer(t, t) for t in targets) + 1e-3 * eye())`"),
                    );
                    return poisoned(span);
                }
                (func, (types == [Mat]).then_some(Mat), "a symmetric matrix")
            }
            "trace" => (Func::Trace, (types == [Mat]).then_some(Scalar), "a matrix"),
            "transpose" => (Func::Transpose, (types == [Mat]).then_some(Mat), "a matrix"),
            "eye" => (Func::Eye, Some(Mat), "no arguments"),
            "where" => {
                let ty = match (types[0], types[1], types[2]) {
                    (c, a, b) if !c.is_numeric() || !a.is_numeric() || !b.is_numeric() => None,
                    (c, a, b) => {
                        let value = if a == Scalar {
                            Some(b)
                        } else if b == Scalar || a == b {
                            Some(a)
                        } else {
                            None
                        };
                        value.filter(|v| c == Scalar || c == *v)
                    }
                };
                (Func::Where, ty, "a condition and two values that broadcast to one type")
            }
            "nearest" => {
                if !(types[0] == Vec && matches!(types[1], Set(Elem::Vec, _))) {
                    return self.arg_mismatch(name, &args, "a vector and a set of vectors", span);
                }
                return self.nearest(args, span);
            }
            _ => {
                // softmax: context checked by the caller.
                let var = self.softmax_var.expect("softmax context checked before");
                if types[0] != Scalar {
                    return self.arg_mismatch("softmax", &args, "a scalar", span);
                }
                let arg = args.into_iter().next().expect("one argument");
                return texpr(TKind::Softmax { var, arg: Box::new(arg) }, Scalar, per_sample, span);
            }
        };
        match ty {
            Some(ty) => texpr(TKind::Call(func, args), ty, per_sample, span),
            None => self.arg_mismatch(name, &args, wanted, span),
        }
    }

    /// Whether `e` reads an index variable it does not bind itself (an element of an enclosing comprehension).
    fn reads_index(&self, e: &TExpr) -> bool {
        let mut bound = std::collections::HashSet::new();
        e.walk(&mut |s| {
            if let TKind::Reduce { var, .. } = &s.kind {
                bound.insert(*var);
            }
        });
        e.any(&|s| matches!(&s.kind, TKind::Index(v, _) if !bound.contains(v)))
    }

    /// `nearest(x, set)` with its meaning spelt out in max and a comparison (see [`TKind::Nearest`]).
    fn nearest(&mut self, args: Vec<TExpr>, span: Span) -> TExpr {
        let mut args = args.into_iter();
        let (x, set) = (args.next().expect("two arguments"), args.next().expect("two arguments"));
        let per_sample = x.per_sample || set.per_sample;
        let index = |var: VarId, name: &str| texpr(TKind::Index(var, name.into()), Type::Vec, false, span);
        let score = |var: VarId, name: &str| {
            texpr(TKind::Call(Func::Dot, vec![x.clone(), index(var, name)]), Type::Scalar, x.per_sample, span)
        };
        let reduce = |op, var: VarId, name: &str, body: TExpr| {
            let ty = body.ty;
            let kind = TKind::Reduce {
                op,
                var,
                var_name: name.into(),
                set: Box::new(set.clone()),
                body: Box::new(body),
                exclude: None,
            };
            texpr(kind, ty, per_sample, span)
        };
        let (v, w) = (self.fresh_var(), self.fresh_var());
        let best = reduce(Reduce::Max, w, "w", score(w, "w"));
        let hit =
            texpr(TKind::Binary(BinOp::Ge, Box::new(score(v, "v")), Box::new(best)), Type::Scalar, per_sample, span);
        let chosen = texpr(
            TKind::Binary(BinOp::Mul, Box::new(hit.clone()), Box::new(index(v, "v"))),
            Type::Vec,
            per_sample,
            span,
        );
        let total = reduce(Reduce::Sum, v, "v", chosen);
        let count = reduce(Reduce::Sum, v, "v", hit);
        // Over an empty set (a queue before its first push) nothing is chosen: 0 / max(0, 1), the zero vector.
        let one = texpr(TKind::Const(1.0), Type::Scalar, false, span);
        let count = texpr(TKind::Call(Func::Max, vec![count, one]), Type::Scalar, per_sample, span);
        let expanded = texpr(TKind::Binary(BinOp::Div, Box::new(total), Box::new(count)), Type::Vec, per_sample, span);
        texpr(
            TKind::Nearest { x: Box::new(x), set: Box::new(set), expanded: Box::new(expanded) },
            Type::Vec,
            per_sample,
            span,
        )
    }

    fn arg_mismatch(&mut self, name: &str, args: &[TExpr], wanted: &str, span: Span) -> TExpr {
        let got: Vec<String> = args.iter().map(|a| a.ty.to_string()).collect();
        // A call's span starts with the function's name: label the name, not the whole call, so
        // that the labels of the arguments stay readable.
        let name_span = Span::new(span.start, (span.start + name.len()).min(span.end));
        let mut d = Diagnostic::new(
            Code::Mismatch,
            format!("`{name}` takes {wanted}, but was given ({})", got.join(", ")),
            name_span,
            format!("takes {wanted}"),
        );
        for a in args {
            d = d.label(a.span, a.ty.to_string());
        }
        let help = match name {
            "dot" => "for a matrix–vector product write `M @ v`".to_string(),
            _ => format!("`{name}` takes {wanted}"),
        };
        self.error(d.help(help));
        poisoned(span)
    }

    fn comprehension(
        &mut self,
        func: &Ident,
        body: &Expr,
        var: &Ident,
        set: &Expr,
        exclude: Option<&Expr>,
        span: Span,
    ) -> TExpr {
        let op = match func.name.as_str() {
            "sum" => Reduce::Sum,
            "mean" => Reduce::Mean,
            "logsumexp" => Reduce::LogSumExp,
            "max" => Reduce::Max,
            "min" => Reduce::Min,
            other => {
                let help = match did_you_mean(other, ["sum", "mean", "logsumexp", "max", "min"]) {
                    Some(s) => {
                        format!("did you mean `{s}`? comprehensions reduce with sum, mean, logsumexp, max or min")
                    }
                    None => "comprehensions reduce with sum, mean, logsumexp (a smooth maximum), max or min".into(),
                };
                self.error(
                    Diagnostic::new(
                        Code::UnknownFunction,
                        format!("`{other}` cannot reduce over a set"),
                        func.span,
                        "not a reduction",
                    )
                    .help(help),
                );
                return poisoned(span);
            }
        };
        let set = self.expr(set);
        let exclude = match exclude {
            Some(x) => {
                let element = self.expr(x);
                match self.exclusion(&set, &element) {
                    Some(e) => Some((e, Box::new(element))),
                    None => return poisoned(span),
                }
            }
            None => None,
        };
        let Some((elem, mut bound)) = self.bind_index(var, &set) else {
            return poisoned(span);
        };
        if let Some((_, element)) = &exclude {
            // A weight family over the whole set does not apply to the set less one element.
            bound.set_text = format!("{} if {} != {}", bound.set_text, var.name, self.show(element));
        }
        let id = bound.var;
        let body = self.with_index(bound, |cx| cx.expr(body));
        let ty = match (op, body.ty) {
            (_, Type::Error) => return poisoned(span),
            (Reduce::LogSumExp | Reduce::Max | Reduce::Min, Type::Scalar) => Type::Scalar,
            (Reduce::Sum | Reduce::Mean, ty) if ty.is_numeric() => ty,
            (_, ty) => {
                let wanted =
                    if matches!(op, Reduce::Sum | Reduce::Mean) { "a scalar, vector or matrix" } else { "a scalar" };
                self.error(
                    Diagnostic::new(
                        Code::Mismatch,
                        format!("`{}` needs {wanted} per element, found {}", op.name(), article(ty)),
                        body.span,
                        ty.to_string(),
                    )
                    .help(if elem == Elem::Sample {
                        "use a field of the sample, e.g. `b.u1`"
                    } else if matches!(op, Reduce::Sum | Reduce::Mean) {
                        "reduce a number, vector or matrix"
                    } else {
                        "it compares numbers: reduce one per element, e.g. `max(dot(u1, v) for v in targets)`"
                    }),
                );
                return poisoned(span);
            }
        };
        let per_sample = body.per_sample || set.per_sample || exclude.as_ref().is_some_and(|(_, e)| e.per_sample);
        let kind = TKind::Reduce {
            op,
            var: id,
            var_name: var.name.clone(),
            set: Box::new(set),
            body: Box::new(body),
            exclude,
        };
        texpr(kind, ty, per_sample, span)
    }

    /// What `if v != element` leaves out of `set`: the current sample's or an outer batch sample's own entry of
    /// `targets` (t1, t2), `online` (u1, u2) or `batch` (the sample itself). Anything else is reported.
    fn exclusion(&mut self, set: &TExpr, element: &TExpr) -> Option<Exclusion> {
        if set.ty == Type::Error || element.ty == Type::Error {
            return None;
        }
        let sample_var = |e: &TExpr| match &e.kind {
            TKind::Index(v, _) if e.ty == Type::Sample => Some(*v),
            _ => None,
        };
        let (anchor, feature) = match &element.kind {
            TKind::Builtin(b) => (None, Some(*b)),
            TKind::Field(base, b) => match sample_var(base) {
                Some(v) => (Some(v), Some(*b)),
                None => (None, None),
            },
            _ => (sample_var(element), None),
        };
        let found = match (&set.kind, feature) {
            (TKind::Targets, Some(Builtin::T1)) => Some(Exclusion { anchor, second_view: false }),
            (TKind::Targets, Some(Builtin::T2)) => Some(Exclusion { anchor, second_view: true }),
            (TKind::Online, Some(Builtin::U1)) => Some(Exclusion { anchor, second_view: false }),
            (TKind::Online, Some(Builtin::U2)) => Some(Exclusion { anchor, second_view: true }),
            (TKind::Batch, None) if anchor.is_some() => Some(Exclusion { anchor, second_view: false }),
            _ => None,
        };
        if found.is_none() {
            self.error(
                Diagnostic::new(
                    Code::Exclusion,
                    format!("`{}` is not one of `{}`'s own elements", self.show(element), self.show(set)),
                    element.span,
                    "not an element this set holds",
                )
                .help(
                    "leave out a sample's own entry: `for v in targets if v != t1` (or t2, b.t1, b.t2), \
                     `for v in online if v != u1` (or u2, b.u1, b.u2), `for c in batch if c != b`",
                ),
            );
        }
        found
    }

    /// Checks that `set` is a set and binds `var` over it.
    pub fn bind_index(&mut self, var: &Ident, set: &TExpr) -> Option<(Elem, Bound)> {
        let elem = match set.ty {
            Type::Set(elem, _) => elem,
            Type::Error => return None,
            ty => {
                self.error(
                    Diagnostic::new(
                        Code::Mismatch,
                        format!("`{}` ranges over a set, but this is {}", var.name, article(ty)),
                        set.span,
                        ty.to_string(),
                    )
                    .help("sets are targets, batch, fifo states, `[a, b]` literals and `S1 ++ S2`"),
                );
                return None;
            }
        };
        if BUILTIN_NAMES.contains(&var.name.as_str()) || self.lookup(&var.name).is_some() {
            self.error(
                Diagnostic::new(
                    Code::Duplicate,
                    format!("index variable `{}` hides a name that already exists", var.name),
                    var.span,
                    "already a name",
                )
                .help("pick another name, e.g. `v`"),
            );
            return None;
        }
        let set_text = self.show(set);
        let bound = Bound { name: var.name.clone(), var: self.fresh_var(), elem, set_text };
        Some((elem, bound))
    }

    /// Runs `f` with `bound` in scope and as the variable softmax normalises over.
    pub fn with_index<T>(&mut self, bound: Bound, f: impl FnOnce(&mut Self) -> T) -> T {
        let outer_softmax = self.softmax_var.replace(bound.var);
        self.scope.push(bound);
        let result = f(self);
        self.scope.pop();
        self.softmax_var = outer_softmax;
        result
    }

    fn weight_at(&mut self, index: usize, func: &Ident, args: &[Arg], span: Span) -> TExpr {
        let weight = self.resolve_weight(index, Some(func.span));
        let var = match args {
            [Arg { name: None, value: Expr { kind: ExprKind::Name(n), .. } }] => {
                self.scope.iter().rev().find(|b| &b.name == n).cloned()
            }
            _ => None,
        };
        let Some(var) = var else {
            self.error(
                Diagnostic::new(
                    Code::Arity,
                    format!("weight `{}` takes one index variable", func.name),
                    span,
                    "not an index variable",
                )
                .help(format!("use it inside a comprehension: `sum({}(v) * v for v in SET)`", func.name)),
            );
            return poisoned(span);
        };
        let Some(weight) = weight else { return poisoned(span) };
        let weight_set = self.show_weight_set(&weight);
        if var.set_text != weight_set {
            self.error(
                Diagnostic::new(
                    Code::Mismatch,
                    format!(
                        "weight `{}` ranges over `{weight_set}`, but `{}` ranges over `{}`",
                        func.name, var.name, var.set_text
                    ),
                    span,
                    "different sets",
                )
                .help(format!("iterate over the weight's own set: `for {} in {weight_set}`", var.name)),
            );
            return poisoned(span);
        }
        let kind = TKind::WeightAt { weight: index, name: func.name.clone(), var: var.var, var_name: var.name.clone() };
        texpr(kind, Type::Scalar, weight.body.per_sample, span)
    }
}

/// "a vec", "an error", for messages.
pub fn article(ty: Type) -> String {
    format!("a {ty}")
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
