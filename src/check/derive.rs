//! The unified form derived from a per-sample loss: differentiate `loss` at `u1` with every other sample detached,
//! simplify, and split — terms without a set or a state are the pull (`positive`), terms over sets or states the
//! push (`negative`), and the scalar factor every push term shares, and the pull does not, the `balance`.
//!
//! The derivative is built as a sum of [`Term`]s, each a number times a product of scalar factors (with integer
//! powers) times a vector, so that like terms combine (`F @ u1 + F @ u1` is `2 F @ u1`) and a common factor can be
//! read off. Differentiation is reverse mode over the typed tree: [`Deriver::grad`] takes an expression and the
//! cotangent flowing into it and returns its contribution to ∂loss/∂u1.

use super::expr::texpr;
use super::typed::{Builtin, Func, Objective, Reduce, Show, StateKind, TExpr, TKind};
use super::types::Type;
use crate::diagnostic::{Code, Diagnostic, Span};
use crate::syntax::ast::BinOp;

/// The derived gradient form.
pub(super) struct DerivedForm {
    /// The pull term.
    pub positive: TExpr,
    /// The push term, if the loss has one.
    pub negative: Option<TExpr>,
    /// The push term's own scalar factor, if it has one the pull does not share.
    pub balance: Option<TExpr>,
}

/// More terms than this and the derivation stops: a form this long is not one a researcher reads.
const MAX_TERMS: usize = 256;

const SUPPORTED: &str = "derivation goes through + - * / @, dot, exp, log, sqrt, norm, normalize, pow, tanh, \
     sigmoid, where, comparisons, nearest, stopgrad, lets, logsumexp and softmax of a vector, and sum, mean and logsumexp over sets; write `positive`, \
     `negative` and `balance` yourself for anything else";

/// Derives the unified form of `o` from its `loss`.
pub(super) fn derive(o: &Objective, loss: &TExpr) -> Result<DerivedForm, Diagnostic> {
    let let_depends = let_depends(o);
    let weight_depends = o.weights.iter().map(|w| mentions_u1(&w.body, &let_depends, &[])).collect();
    let d = Deriver { o, span: loss.span, let_depends, weight_depends };
    let one = vec![Term { coef: 1.0, factors: vec![], vector: None }];
    let gradient = d.combine(d.grad(loss, one)?);
    if gradient.is_empty() {
        return Err(Diagnostic::new(
            Code::Underivable,
            "this loss does not depend on `u1`",
            loss.span,
            "constant in u1",
        )
        .help("the gradient form is the loss's derivative at the online feature `u1`: use `u1` in the loss"));
    }
    let (push, pull): (Vec<Term>, Vec<Term>) = gradient.into_iter().partition(|t| d.pushes(t));
    if pull.is_empty() {
        return Err(Diagnostic::new(
            Code::MissingPositive,
            "the derivative of this loss has no pull term (every term ranges over a set or a state)",
            loss.span,
            "no term in the other view's features alone",
        )
        .help("pull the views together, e.g. add `- dot(u1, t2)` to the loss"));
    }
    let balance = d.balance(&push, &pull);
    let push = push.into_iter().map(|t| t.without(&balance)).collect::<Vec<_>>();
    Ok(DerivedForm {
        positive: d.sum_expr(&pull),
        negative: (!push.is_empty()).then(|| d.sum_expr(&push)),
        balance: (balance.coef != 1.0 || !balance.factors.is_empty()).then(|| d.term_expr(&balance)),
    })
}

/// A scalar expression raised to an integer power, with its structural key.
#[derive(Clone, Debug)]
struct Factor {
    expr: TExpr,
    power: i32,
    key: String,
}

/// `coef · Π factors · vector`; `vector` is `None` for a scalar term (a cotangent of a scalar).
#[derive(Clone, Debug)]
struct Term {
    coef: f64,
    factors: Vec<Factor>,
    vector: Option<TExpr>,
}

impl Term {
    /// The term divided by `common`'s coefficient and factors (which it holds).
    fn without(mut self, common: &Term) -> Term {
        self.coef /= common.coef;
        for c in &common.factors {
            let f = self.factors.iter_mut().find(|f| f.key == c.key).expect("a common factor is in every term");
            f.power -= c.power;
        }
        self.factors.retain(|f| f.power != 0);
        self
    }
}

struct Deriver<'o> {
    o: &'o Objective,
    /// Where derived expressions point: the loss.
    span: Span,
    /// Whether each let depends on `u1`.
    let_depends: Vec<bool>,
    /// Whether each weight family's body depends on `u1` (a softmax of `dot(u1, v)`, say).
    weight_depends: Vec<bool>,
}

/// Which lets depend on `u1`, directly or through other lets (a fixpoint: lets may refer to each other in any order).
fn let_depends(o: &Objective) -> Vec<bool> {
    let mut depends = vec![false; o.lets.len()];
    loop {
        let mut changed = false;
        for (i, l) in o.lets.iter().enumerate() {
            if !depends[i] && mentions_u1(&l.value, &depends, &[]) {
                depends[i] = true;
                changed = true;
            }
        }
        if !changed {
            return depends;
        }
    }
}

/// Whether `e` reads `u1`, given which lets and weights do (weights not yet known: none).
fn mentions_u1(e: &TExpr, let_depends: &[bool], weight_depends: &[bool]) -> bool {
    e.any(&|s| match s.kind {
        TKind::Builtin(Builtin::U1) => true,
        TKind::Let(i) => let_depends[i],
        TKind::WeightAt { weight, .. } => weight_depends.get(weight).copied().unwrap_or(false),
        _ => false,
    })
}

impl Deriver<'_> {
    fn depends(&self, e: &TExpr) -> bool {
        mentions_u1(e, &self.let_depends, &self.weight_depends)
    }

    fn key(&self, e: &TExpr) -> String {
        Show { expr: e, objective: self.o }.to_string()
    }

    /// The contribution of `e` to ∂loss/∂u1 when `g` (a sum of terms of `e`'s type) flows into it.
    fn grad(&self, e: &TExpr, g: Vec<Term>) -> Result<Vec<Term>, Diagnostic> {
        if g.is_empty() || !self.depends(e) {
            return Ok(vec![]);
        }
        let terms = self.grad_of(e, g)?;
        if terms.len() > MAX_TERMS {
            return Err(Diagnostic::new(
                Code::Underivable,
                format!("the derivative of this loss has more than {MAX_TERMS} terms"),
                self.span,
                "too long to derive",
            )
            .help("write `positive`, `negative` and `balance` yourself, or simplify the loss"));
        }
        Ok(terms)
    }

    fn grad_of(&self, e: &TExpr, g: Vec<Term>) -> Result<Vec<Term>, Diagnostic> {
        if matches!(e.ty, Type::Mat | Type::Set(..) | Type::Sample) {
            return Err(self.unsupported(e, "a matrix or set that depends on `u1`"));
        }
        let scalar = |x: &TExpr| x.ty == Type::Scalar;
        match &e.kind {
            TKind::Builtin(Builtin::U1) => Ok(g),
            // Piecewise constant: a comparison, or the choice of a nearest neighbour (its elements are constants).
            TKind::Binary(op, ..) if op.compares() => Ok(vec![]),
            TKind::Nearest { .. } => Ok(vec![]),
            TKind::Reduce { op: Reduce::Max | Reduce::Min, .. } => {
                Err(self.unsupported(e, "a maximum over a set has no symbolic derivative here"))
            }
            TKind::Let(i) => self.grad(&self.o.lets[*i].value, g),
            TKind::Neg(a) => self.grad(a, scale(g, -1.0)),
            TKind::Binary(op @ (BinOp::Add | BinOp::Sub), a, b) => {
                let sign = if *op == BinOp::Sub { -1.0 } else { 1.0 };
                let ga = self.grad(a, self.broadcast_back(g.clone(), a))?;
                let gb = self.grad(b, scale(self.broadcast_back(g, b), sign))?;
                Ok([ga, gb].concat())
            }
            TKind::Binary(BinOp::Mul, a, b) => {
                let ga = if self.depends(a) { self.grad(a, self.product_back(g.clone(), a, b))? } else { vec![] };
                let gb = if self.depends(b) { self.grad(b, self.product_back(g, b, a))? } else { vec![] };
                Ok([ga, gb].concat())
            }
            TKind::Binary(BinOp::Div, a, b) if scalar(b) => {
                let ga = self.grad(a, self.times(g.clone(), b, -1))?;
                let gb = if self.depends(b) {
                    // ∂(a/b)/∂b = −a/b²
                    let through = if scalar(a) { self.times(g, a, 1) } else { self.dot(g, a) };
                    self.grad(b, scale(self.times(through, b, -2), -1.0))?
                } else {
                    vec![]
                };
                Ok([ga, gb].concat())
            }
            TKind::Binary(BinOp::MatMul, m, x) if !self.depends(m) => self.grad(x, self.apply_transpose(g, m)),
            TKind::Call(func, args) => self.call(e, *func, args, g),
            TKind::Reduce { op, var, var_name, set, body, exclude } => {
                let inner = self.grad(body, g)?;
                let mut out = Vec::with_capacity(inner.len());
                for t in inner {
                    let (outside, inside): (Vec<Factor>, Vec<Factor>) =
                        t.factors.into_iter().partition(|f| !mentions_var(&f.expr, *var));
                    let vector = t.vector.expect("a gradient is a vector");
                    let varies = !inside.is_empty() || mentions_var(&vector, *var);
                    if !varies && *op != Reduce::Sum {
                        // The mean of a constant, or a softmax-weighted sum of one, is the constant.
                        out.push(Term { coef: t.coef, factors: outside, vector: Some(vector) });
                        continue;
                    }
                    let mut summand = self.term_expr(&Term { coef: 1.0, factors: inside, vector: Some(vector) });
                    if *op == Reduce::LogSumExp {
                        let weight = texpr(
                            TKind::Softmax { var: *var, arg: body.clone() },
                            Type::Scalar,
                            body.per_sample,
                            body.span,
                        );
                        summand = self.binary(BinOp::Mul, weight, summand);
                    }
                    let reduced = TKind::Reduce {
                        op: if *op == Reduce::Mean { Reduce::Mean } else { Reduce::Sum },
                        var: *var,
                        var_name: var_name.clone(),
                        set: set.clone(),
                        body: Box::new(summand.clone()),
                        exclude: exclude.clone(),
                    };
                    let vector = texpr(reduced, Type::Vec, summand.per_sample || set.per_sample, self.span);
                    out.push(Term { coef: t.coef, factors: outside, vector: Some(vector) });
                }
                Ok(out)
            }
            _ => Err(self.unsupported(e, "no symbolic derivative here")),
        }
    }

    fn call(&self, e: &TExpr, func: Func, args: &[TExpr], g: Vec<Term>) -> Result<Vec<Term>, Diagnostic> {
        let a = &args[0];
        match func {
            Func::Dot => {
                let b = &args[1];
                let ga = self.grad(a, self.times(g.clone(), b, 1))?;
                let gb = self.grad(b, self.times(g, a, 1))?;
                Ok([ga, gb].concat())
            }
            Func::StopGrad => Ok(vec![]),
            Func::LogSumExpEntries => {
                let softmax = self.call_expr(Func::SoftmaxEntries, vec![a.clone()], Type::Vec);
                self.grad(a, self.times(g, &softmax, 1))
            }
            Func::SoftmaxEntries => {
                // J g = s ⊙ (g − ⟨g, s⟩)
                let along = self.times(self.dot(g.clone(), e), e, 1);
                let across = [self.times(g, e, 1), scale(along, -1.0)].concat();
                self.grad(a, across)
            }
            Func::Where => {
                // where(c, a, b) = m·a + (1 − m)·b with the mask m = where(c, 1, 0), constant a.e.
                let constant = |x: f64| texpr(TKind::Const(x), Type::Scalar, false, self.span);
                let mask = |on: f64, off: f64| {
                    self.call_expr(Func::Where, vec![args[0].clone(), constant(on), constant(off)], args[0].ty)
                };
                let ga = self.grad(&args[1], self.times(g.clone(), &mask(1.0, 0.0), 1))?;
                let gb = self.grad(&args[2], self.times(g, &mask(0.0, 1.0), 1))?;
                Ok([ga, gb].concat())
            }
            Func::Exp => self.grad(a, self.times(g, e, 1)),
            Func::Log => self.grad(a, self.times(g, a, -1)),
            Func::Sqrt => self.grad(a, scale(self.times(g, e, -1), 0.5)),
            Func::Norm => self.grad(a, self.times(self.times(g, a, 1), e, -1)),
            Func::Normalize => {
                // ∂(x/‖x‖) applied to g: (g − (g·n) n) / ‖x‖
                let norm = self.call_expr(Func::Norm, vec![a.clone()], Type::Scalar);
                let along = self.times(self.dot(g.clone(), e), e, 1);
                let across = [g, scale(along, -1.0)].concat();
                self.grad(a, self.times(across, &norm, -1))
            }
            Func::Tanh => {
                // 1 − tanh²
                let one = texpr(TKind::Const(1.0), Type::Scalar, false, self.span);
                let square = self.binary(BinOp::Mul, e.clone(), e.clone());
                self.grad(a, self.times(g, &self.binary(BinOp::Sub, one, square), 1))
            }
            Func::Sigmoid => {
                let one = texpr(TKind::Const(1.0), Type::Scalar, false, self.span);
                let rest = self.binary(BinOp::Sub, one, e.clone());
                self.grad(a, self.times(self.times(g, e, 1), &rest, 1))
            }
            Func::Pow if !self.depends(&args[1]) => {
                let p = &args[1];
                match p.kind {
                    TKind::Const(k) if k.fract() == 0.0 && k.abs() <= 64.0 => {
                        self.grad(a, scale(self.times(g, a, k as i32 - 1), k))
                    }
                    _ => {
                        let less_one = match p.kind {
                            TKind::Const(k) => texpr(TKind::Const(k - 1.0), Type::Scalar, false, self.span),
                            _ => self.binary(
                                BinOp::Sub,
                                p.clone(),
                                texpr(TKind::Const(1.0), Type::Scalar, false, self.span),
                            ),
                        };
                        let lower = self.call_expr(Func::Pow, vec![a.clone(), less_one], a.ty);
                        self.grad(a, self.times(self.times(g, p, 1), &lower, 1))
                    }
                }
            }
            _ => Err(self.unsupported(e, "no symbolic derivative here")),
        }
    }

    fn unsupported(&self, e: &TExpr, label: &str) -> Diagnostic {
        Diagnostic::new(
            Code::Underivable,
            format!("cannot derive the gradient form of this loss through `{}`", self.key(e)),
            e.span,
            label,
        )
        .help(SUPPORTED)
    }

    /// `g · x^power`: a scalar `x` joins the factors; a vector `x` multiplies elementwise.
    fn times(&self, g: Vec<Term>, x: &TExpr, power: i32) -> Vec<Term> {
        if power == 0 {
            return g;
        }
        if x.ty == Type::Scalar {
            return g
                .into_iter()
                .map(|mut t| {
                    self.absorb(&mut t, x, power);
                    t
                })
                .collect();
        }
        let constant = |c: f64| texpr(TKind::Const(c), Type::Scalar, false, self.span);
        let (op, x) = match power {
            1 => (BinOp::Mul, x.clone()),
            -1 => (BinOp::Div, x.clone()),
            p => (BinOp::Mul, self.call_expr(Func::Pow, vec![x.clone(), constant(f64::from(p))], Type::Vec)),
        };
        g.into_iter()
            .map(|mut t| {
                t.vector = Some(match t.vector.take() {
                    None if op == BinOp::Mul => x.clone(),
                    None => self.binary(BinOp::Div, constant(1.0), x.clone()),
                    Some(v) => self.binary(op, v, x.clone()),
                });
                t
            })
            .collect()
    }

    /// Multiplies `t` by `x^power`, folding numbers into the coefficient and products into factors.
    fn absorb(&self, t: &mut Term, x: &TExpr, power: i32) {
        match &x.kind {
            TKind::Const(c) => t.coef *= c.powi(power),
            TKind::Neg(a) => {
                t.coef *= (-1f64).powi(power);
                self.absorb(t, a, power);
            }
            TKind::Binary(BinOp::Mul, a, b) if a.ty == Type::Scalar && b.ty == Type::Scalar => {
                self.absorb(t, a, power);
                self.absorb(t, b, power);
            }
            TKind::Binary(BinOp::Div, a, b) if a.ty == Type::Scalar && b.ty == Type::Scalar => {
                self.absorb(t, a, power);
                self.absorb(t, b, -power);
            }
            _ => {
                let key = self.key(x);
                match t.factors.iter_mut().find(|f| f.key == key) {
                    Some(f) => f.power += power,
                    None => t.factors.push(Factor { expr: x.clone(), power, key }),
                }
                t.factors.retain(|f| f.power != 0);
            }
        }
    }

    /// The scalar cotangents `g · v` of vector terms `g`.
    fn dot(&self, g: Vec<Term>, v: &TExpr) -> Vec<Term> {
        g.into_iter()
            .map(|mut t| {
                let w = t.vector.take().expect("a vector cotangent");
                let d = self.call_expr(Func::Dot, vec![w, v.clone()], Type::Scalar);
                self.absorb(&mut t, &d, 1);
                t
            })
            .collect()
    }

    /// The cotangent of `operand` in `operand * other`, given the product's cotangent `g`.
    fn product_back(&self, g: Vec<Term>, operand: &TExpr, other: &TExpr) -> Vec<Term> {
        if operand.ty == Type::Scalar && other.ty == Type::Vec {
            self.dot(g, other)
        } else {
            self.times(g, other, 1)
        }
    }

    /// The cotangent of `operand` in a sum whose other side may broadcast it: a scalar added to a vector receives
    /// the sum of the vector cotangent's entries.
    fn broadcast_back(&self, g: Vec<Term>, operand: &TExpr) -> Vec<Term> {
        if operand.ty != Type::Scalar {
            return g;
        }
        g.into_iter()
            .map(|mut t| {
                if let Some(w) = t.vector.take() {
                    let s = self.call_expr(Func::SumEntries, vec![w], Type::Scalar);
                    self.absorb(&mut t, &s, 1);
                }
                t
            })
            .collect()
    }

    /// `Mᵀ g` for vector terms `g`: `M g` when `M` is symmetric by construction.
    fn apply_transpose(&self, g: Vec<Term>, m: &TExpr) -> Vec<Term> {
        let mt =
            if self.symmetric(m) { m.clone() } else { self.call_expr(Func::Transpose, vec![m.clone()], Type::Mat) };
        g.into_iter()
            .map(|mut t| {
                let w = t.vector.take().expect("a vector cotangent");
                t.vector = Some(self.binary(BinOp::MatMul, mt.clone(), w));
                t
            })
            .collect()
    }

    /// Whether a matrix is symmetric by how it is built (an ema of outer products of a vector with itself, say).
    fn symmetric(&self, m: &TExpr) -> bool {
        match &m.kind {
            _ if m.ty == Type::Scalar => true,
            TKind::State(i) => match &self.o.states[*i].kind {
                StateKind::Ema { value, .. } => self.symmetric(value),
                StateKind::Fifo { .. } => false,
            },
            TKind::Let(i) => self.symmetric(&self.o.lets[*i].value),
            TKind::Neg(a) | TKind::Reduce { body: a, .. } => self.symmetric(a),
            TKind::Call(Func::Eye | Func::SqrtM | Func::InvSqrtM, _) => true,
            TKind::Call(Func::Outer, args) => self.key(&args[0]) == self.key(&args[1]),
            TKind::Call(Func::Transpose | Func::Exp | Func::Abs | Func::Relu | Func::StopGrad, args) => {
                self.symmetric(&args[0])
            }
            TKind::Binary(BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div, a, b) => {
                self.symmetric(a) && self.symmetric(b)
            }
            _ => false,
        }
    }

    /// Like terms added: equal factors and vector, coefficients summed, zeros dropped.
    fn combine(&self, terms: Vec<Term>) -> Vec<Term> {
        let mut out: Vec<(String, Term)> = Vec::new();
        for t in terms {
            let mut keys: Vec<String> = t.factors.iter().map(|f| format!("{}^{}", f.key, f.power)).collect();
            keys.sort();
            let key = format!("{} | {}", keys.join(" "), t.vector.as_ref().map(|v| self.key(v)).unwrap_or_default());
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some((_, same)) => same.coef += t.coef,
                None => out.push((key, t)),
            }
        }
        out.into_iter().map(|(_, t)| t).filter(|t| t.coef != 0.0).collect()
    }

    /// Whether a term pushes: it ranges over a set or reads a state.
    fn pushes(&self, t: &Term) -> bool {
        t.vector.iter().chain(t.factors.iter().map(|f| &f.expr)).any(|e| self.over_set(e))
    }

    /// Whether `e` ranges over a set or reads a state; a nearest neighbour is one element (NNCLR's pull target),
    /// not a range.
    fn over_set(&self, e: &TExpr) -> bool {
        match e.kind {
            TKind::Reduce { .. } | TKind::State(_) | TKind::Softmax { .. } | TKind::WeightAt { .. } => true,
            TKind::Let(i) => self.over_set(&self.o.lets[i].value),
            TKind::Nearest { ref x, .. } => self.over_set(x),
            _ => e.children().into_iter().any(|c| self.over_set(c)),
        }
    }

    /// The balance: the coefficient and the global factors every push term shares, less those every pull term shares.
    fn balance(&self, push: &[Term], pull: &[Term]) -> Term {
        let shared = |terms: &[Term]| -> Term {
            let first = &terms[0];
            let coef = if terms.iter().all(|t| t.coef == first.coef) { first.coef } else { 1.0 };
            let mut factors = Vec::new();
            for f in first.factors.iter().filter(|f| !f.expr.per_sample) {
                let powers: Vec<i32> =
                    terms.iter().map(|t| t.factors.iter().find(|g| g.key == f.key).map_or(0, |g| g.power)).collect();
                let common = if f.power > 0 {
                    *powers.iter().min().expect("terms")
                } else {
                    *powers.iter().max().expect("terms")
                };
                if common.signum() == f.power.signum() && common != 0 {
                    factors.push(Factor { power: common, ..f.clone() });
                }
            }
            Term { coef, factors, vector: None }
        };
        if push.is_empty() {
            return Term { coef: 1.0, factors: vec![], vector: None };
        }
        let mut balance = shared(push);
        let pulled = shared(pull);
        if balance.coef.abs() == pulled.coef.abs() || balance.coef < 0.0 {
            balance.coef = 1.0;
        }
        // What the pull shares too stays in the push (`-t2 / tau` and `sum(...) / tau`: no balance).
        for p in &pulled.factors {
            if let Some(f) = balance.factors.iter_mut().find(|f| f.key == p.key && f.power.signum() == p.power.signum())
            {
                f.power -= p.power.signum() * p.power.abs().min(f.power.abs());
            }
        }
        balance.factors.retain(|f| f.power != 0);
        balance
    }

    /// `a + b - c ...` of vector terms.
    fn sum_expr(&self, terms: &[Term]) -> TExpr {
        let mut out: Option<TExpr> = None;
        for t in terms {
            out = Some(match out {
                None => self.term_expr(t),
                Some(acc) if t.coef < 0.0 => {
                    let positive = self.term_expr(&Term { coef: -t.coef, ..t.clone() });
                    self.binary(BinOp::Sub, acc, positive)
                }
                Some(acc) => self.binary(BinOp::Add, acc, self.term_expr(t)),
            });
        }
        out.expect("at least one term")
    }

    /// One term as an expression, written as a researcher would: `-t2 / tau`, `lambda * D / 2048`.
    fn term_expr(&self, t: &Term) -> TExpr {
        let c = t.coef.abs();
        let integer = |x: f64| x.fract() == 0.0 && x < 1e9;
        let (lead, tail) = if c == 1.0 {
            (None, None)
        } else if integer(c) {
            (Some(c), None)
        } else if integer(1.0 / c) {
            (None, Some(1.0 / c))
        } else {
            (Some(c), None)
        };
        let constant = |x: f64| texpr(TKind::Const(x), Type::Scalar, false, self.span);
        let mut parts: Vec<TExpr> = lead.map(constant).into_iter().collect();
        for f in t.factors.iter().filter(|f| f.power > 0) {
            parts.extend(std::iter::repeat_n(f.expr.clone(), f.power as usize));
        }
        parts.extend(t.vector.clone());
        let mut e = parts.into_iter().reduce(|a, b| self.binary(BinOp::Mul, a, b)).unwrap_or_else(|| constant(1.0));
        if t.coef < 0.0 {
            e = negate_first(e);
        }
        for f in t.factors.iter().filter(|f| f.power < 0) {
            for _ in 0..f.power.unsigned_abs() {
                e = self.binary(BinOp::Div, e, f.expr.clone());
            }
        }
        if let Some(k) = tail {
            e = self.binary(BinOp::Div, e, constant(k));
        }
        e
    }

    fn binary(&self, op: BinOp, a: TExpr, b: TExpr) -> TExpr {
        let ty = match (op, a.ty, b.ty) {
            (BinOp::MatMul, _, y) => y,
            (_, Type::Scalar, y) => y,
            (_, x, _) => x,
        };
        let per_sample = a.per_sample || b.per_sample;
        texpr(TKind::Binary(op, Box::new(a), Box::new(b)), ty, per_sample, self.span)
    }

    fn call_expr(&self, func: Func, args: Vec<TExpr>, ty: Type) -> TExpr {
        let per_sample = args.iter().any(|a| a.per_sample);
        texpr(TKind::Call(func, args), ty, per_sample, self.span)
    }
}

/// Minus applied to the leading factor (`-t2 / tau`, not `-(t2 / tau)`).
fn negate_first(e: TExpr) -> TExpr {
    match e.kind {
        TKind::Const(c) => TExpr { kind: TKind::Const(-c), ..e },
        TKind::Binary(BinOp::Mul, a, b) => TExpr {
            kind: TKind::Binary(BinOp::Mul, Box::new(negate_first(*a)), b),
            ty: e.ty,
            per_sample: e.per_sample,
            span: e.span,
        },
        _ => {
            let (ty, per_sample, span) = (e.ty, e.per_sample, e.span);
            texpr(TKind::Neg(Box::new(e)), ty, per_sample, span)
        }
    }
}

fn scale(g: Vec<Term>, c: f64) -> Vec<Term> {
    g.into_iter().map(|t| Term { coef: t.coef * c, ..t }).collect()
}

fn mentions_var(e: &TExpr, var: super::typed::VarId) -> bool {
    e.any(&|s| {
        matches!(&s.kind, TKind::Index(v, _) if *v == var)
            || matches!(&s.kind, TKind::Softmax { var: v, .. } if *v == var)
    })
}
