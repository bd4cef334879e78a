//! Lowering: typed objective → IR. Per-sample math becomes batched math: the current sample is the
//! axis N; a comprehension's variable becomes a set axis K; `Σ over K of a·b` becomes a
//! contraction. A set built with `++` or `[a, b]` is lowered part by part: each reduction (and each
//! softmax's normaliser) is computed per part and combined, so `[t2] ++ Q` never materialises an
//! [N, K, D] tensor.
//!
//! The batch-level `total` has no current sample: it is lowered with every online feature live (the rows of `batch`
//! and `online` are the feature matrices themselves, relabelled to the set's axis), so that autodiff of it reaches
//! each online feature; everywhere else the other samples are constants, as the unified form treats them.

use super::{Axis, Binary, Feature, Graph, Lowered, MatrixPower, Node, Op, SetAxis, SetSource, Unary};
use crate::check::typed::{Builtin, Exclusion, Func, Objective, Reduce, StateKind, TExpr, TKind, VarId};
use crate::check::types::Type;
use crate::syntax::ast::BinOp;
use std::collections::HashMap;

/// Lowers a checked objective.
pub fn lower(o: &Objective) -> Lowered {
    let mut cx = Lowering { o, g: Graph::default(), live: false };
    let env = Env::default();
    let positive = match &o.positive {
        Some(p) => cx.expr(p, &env),
        None => cx.g.constant(0.0),
    };
    let push = match &o.negative {
        Some(neg) => {
            let neg = cx.expr(neg, &env);
            match &o.balance {
                Some(b) => {
                    let b = cx.expr(b, &env);
                    cx.g.binary(Binary::Mul, b, neg)
                }
                None => neg,
            }
        }
        None => cx.g.constant(0.0),
    };
    let gradient = cx.g.binary(Binary::Add, positive, push);
    let loss = o.loss.as_ref().map(|l| cx.expr(l, &env));
    cx.live = true;
    let total = o.total.as_ref().map(|t| cx.expr(t, &env));
    cx.live = false;
    let mut ema_values = Vec::new();
    let mut fifo_pushes = Vec::new();
    for (i, s) in o.states.iter().enumerate() {
        match &s.kind {
            StateKind::Ema { rate, value } => {
                let (value, rate) = (cx.expr(value, &env), cx.expr(rate, &env));
                ema_values.push((i, value, rate));
            }
            StateKind::Fifo { set, .. } => {
                // The pushed rows, one node per part, laid along a dedicated axis.
                let parts = cx.parts(set);
                for (p, part) in parts.iter().enumerate() {
                    let axis = Axis::K(SetAxis::Push { state: i as u32, part: p as u32 });
                    let rows = match part {
                        Part::Rows(src) => cx.g.rows(*src, axis),
                        Part::Item(e) => cx.expr(e, &env),
                        Part::Samples => unreachable!("checker: fifos hold vectors"),
                    };
                    fifo_pushes.push((i, rows));
                }
            }
        }
    }
    super::prune::prune(Lowered { graph: cx.g, gradient, positive, push, loss, total, ema_values, fifo_pushes })
}

/// One part of a set: rows of a matrix, a single vector, or the samples of the batch.
#[derive(Clone, Copy)]
enum Part<'a> {
    Rows(SetSource),
    Item(&'a TExpr),
    Samples,
}

/// What an index variable stands for while its comprehension's body is lowered.
#[derive(Clone)]
struct Binding<'a> {
    /// The set it ranges over (to find the other parts, for softmax).
    set: &'a TExpr,
    /// The element its comprehension leaves out (softmax normalises over the same elements).
    exclude: Option<Exclusion>,
    /// How many variables enclosed it when it was bound: its axis's key.
    depth: u32,
    /// The part's axis, or the item's node.
    value: Bound,
}

#[derive(Clone, Copy)]
enum Bound {
    Axis(Axis, Option<SetSource>),
    Node(Node),
}

#[derive(Clone, Default)]
struct Env<'a> {
    vars: HashMap<VarId, Binding<'a>>,
}

struct Lowering<'a> {
    o: &'a Objective,
    g: Graph,
    /// Lowering `total`: the batch's online features are live, not constants.
    live: bool,
}

impl<'a> Lowering<'a> {
    /// The parts of a set expression, in order.
    fn parts(&self, set: &'a TExpr) -> Vec<Part<'a>> {
        match &set.kind {
            TKind::Targets => vec![Part::Rows(SetSource::Targets)],
            TKind::Online => vec![Part::Rows(SetSource::Batch(Feature::U1)), Part::Rows(SetSource::Batch(Feature::U2))],
            TKind::Batch => vec![Part::Samples],
            TKind::State(i) => vec![Part::Rows(SetSource::Fifo(*i))],
            TKind::List(items) => items.iter().map(Part::Item).collect(),
            TKind::Binary(BinOp::Concat, a, b) => {
                let mut p = self.parts(a);
                p.extend(self.parts(b));
                p
            }
            TKind::Let(i) => self.parts(&self.o.lets[*i].value),
            _ => unreachable!("checker: only sets are iterated"),
        }
    }

    /// Binds `var` to part `p` of `set`, on the axis of its depth (a softmax re-binding its comprehension's
    /// variable keeps that variable's depth).
    fn bind(&mut self, var: VarId, set: &'a TExpr, p: usize, env: &Env<'a>) -> Binding<'a> {
        let depth = env.vars.get(&var).map_or(env.vars.len() as u32, |b| b.depth);
        let axis = |source| Axis::K(SetAxis::Var { depth, part: p as u32, source });
        let value = match self.parts(set)[p] {
            Part::Rows(src) => Bound::Axis(axis(src), Some(src)),
            Part::Samples => Bound::Axis(axis(SetSource::Batch(Feature::U1)), None),
            Part::Item(e) => Bound::Node(self.expr(e, env)),
        };
        Binding { set, exclude: None, depth, value }
    }

    /// Lowers `body` once per part of `set` and reduces each part over its axis.
    fn reduce_parts(
        &mut self,
        op: Reduce,
        var: VarId,
        set: &'a TExpr,
        body: &'a TExpr,
        exclude: Option<Exclusion>,
        env: &Env<'a>,
    ) -> Node {
        let n_parts = self.parts(set).len();
        let mut total: Option<Node> = None;
        let mut count: Option<Node> = None;
        for p in 0..n_parts {
            let mut binding = self.bind(var, set, p, env);
            binding.exclude = exclude;
            let mut inner = env.clone();
            inner.vars.insert(var, binding.clone());
            let mut value = self.expr(body, &inner);
            if op == Reduce::Min {
                // min = −max(−x)
                value = self.g.unary(Unary::Neg, value);
            }
            let extreme = matches!(op, Reduce::LogSumExp | Reduce::Max | Reduce::Min);
            let (reduced, size) = match binding.value {
                Bound::Axis(axis, src) => {
                    if let Some(src) = src {
                        self.g.rows(src, axis);
                    } else if !self.g.set_axes.iter().any(|(a, _)| *a == axis) {
                        self.g.set_axes.push((axis, SetSource::Batch(Feature::U1)));
                    }
                    let mut size = self.g.add(Op::AxisSize(axis), vec![]);
                    if let Some(keep) = self.keep_mask(exclude, set, p, axis, env) {
                        value = if extreme {
                            // −inf at the element left out
                            let log_keep = self.g.unary(Unary::Log, keep);
                            self.g.binary(Binary::Add, value, log_keep)
                        } else {
                            self.masked(value, keep)
                        };
                        let one = self.g.constant(1.0);
                        size = self.g.binary(Binary::Sub, size, one);
                    }
                    let r = match op {
                        Reduce::LogSumExp => self.g.lse_over(value, axis),
                        Reduce::Max | Reduce::Min => self.g.max_over(value, axis),
                        Reduce::Sum | Reduce::Mean => self.g.sum_over(value, axis),
                    };
                    (r, size)
                }
                Bound::Node(_) => (value, self.g.constant(1.0)),
            };
            let combine = match op {
                Reduce::LogSumExp => Binary::LogAddExp,
                Reduce::Max | Reduce::Min => Binary::Max,
                Reduce::Sum | Reduce::Mean => Binary::Add,
            };
            total = Some(match total {
                Some(t) => self.g.binary(combine, t, reduced),
                None => reduced,
            });
            count = Some(match count {
                Some(c) => self.g.binary(Binary::Add, c, size),
                None => size,
            });
        }
        let total = total.expect("checker: sets have at least one part");
        match op {
            Reduce::Mean => self.g.binary(Binary::Div, total, count.expect("counted with total")),
            Reduce::Min => self.g.unary(Unary::Neg, total),
            _ => total,
        }
    }

    fn expr(&mut self, e: &'a TExpr, env: &Env<'a>) -> Node {
        match &e.kind {
            TKind::Const(x) => self.g.constant(*x),
            TKind::Bool(_) | TKind::Targets | TKind::Batch | TKind::Online | TKind::List(_) | TKind::Error => {
                unreachable!("checker: not a tensor value")
            }
            TKind::Param(i) => self.g.add(Op::Param(*i), vec![]),
            TKind::Let(i) => self.expr(&self.o.lets[*i].value, env),
            TKind::State(i) => {
                let axes = match self.o.states[*i].ty {
                    Type::Vec => vec![Axis::D],
                    Type::Mat => vec![Axis::D, Axis::E],
                    _ => vec![],
                };
                self.g.add(Op::Ema(*i), axes)
            }
            TKind::Builtin(b) => match b {
                Builtin::N => self.g.add(Op::BatchSize, vec![]),
                Builtin::D => self.g.add(Op::Dim, vec![]),
                _ => self.g.add(Op::Feature(feature(*b)), vec![Axis::N, Axis::D]),
            },
            TKind::Index(var, _) => match env.vars[var].value {
                Bound::Node(n) => n,
                Bound::Axis(axis, Some(src)) => self.set_rows(src, axis),
                Bound::Axis(_, None) => unreachable!("checker: samples are only used through fields"),
            },
            TKind::Field(base, field) => {
                let TKind::Index(var, _) = &base.kind else { unreachable!("checker: fields of index variables") };
                let Bound::Axis(axis, _) = env.vars[var].value else { unreachable!("samples bind to an axis") };
                self.set_rows(SetSource::Batch(feature(*field)), axis)
            }
            TKind::Neg(a) => {
                let a = self.expr(a, env);
                self.g.unary(Unary::Neg, a)
            }
            TKind::Binary(op, a, b) => {
                let (x, y) = (self.expr(a, env), self.expr(b, env));
                match op {
                    BinOp::Add => self.g.binary(Binary::Add, x, y),
                    BinOp::Sub => self.g.binary(Binary::Sub, x, y),
                    BinOp::Mul => self.g.binary(Binary::Mul, x, y),
                    BinOp::Div => self.g.binary(Binary::Div, x, y),
                    BinOp::MatMul if b.ty == Type::Vec => {
                        let y = self.g.rename(y, Axis::D, Axis::E);
                        self.g.contract(x, y, vec![Axis::E])
                    }
                    BinOp::MatMul => {
                        let x = self.g.rename(x, Axis::E, Axis::J);
                        let y = self.g.rename(y, Axis::D, Axis::J);
                        self.g.contract(x, y, vec![Axis::J])
                    }
                    BinOp::Lt => self.g.binary(Binary::Lt, x, y),
                    BinOp::Le => self.g.binary(Binary::Le, x, y),
                    BinOp::Gt => self.g.binary(Binary::Lt, y, x),
                    BinOp::Ge => self.g.binary(Binary::Le, y, x),
                    BinOp::Concat => unreachable!("checker: sets are not values"),
                }
            }
            TKind::Call(func, args) => self.call(*func, args, env),
            TKind::Reduce { op, var, set, body, exclude, .. } => {
                // A comprehension that reads no enclosing variable is the same at every element of the enclosing
                // ones: lowered outside them, it shares its axes (and nodes) with the same comprehension elsewhere.
                let hoisted = Env::default();
                let env = if self.reads_any(e, env) { env } else { &hoisted };
                self.reduce_parts(*op, *var, set, body, exclude.as_ref().map(|(e, _)| *e), env)
            }
            TKind::Softmax { var, arg } => {
                let binding = env.vars[var].clone();
                let x = self.expr(arg, env);
                let lse = self.reduce_parts(Reduce::LogSumExp, *var, binding.set, arg, binding.exclude, env);
                let centred = self.g.binary(Binary::Sub, x, lse);
                self.g.unary(Unary::Exp, centred)
            }
            TKind::Nearest { expanded, .. } => self.expr(expanded, env),
            TKind::WeightAt { weight, var, .. } => {
                let w = &self.o.weights[*weight];
                let mut inner = env.clone();
                let mut binding = env.vars[var].clone();
                binding.set = &w.set;
                binding.exclude = None;
                inner.vars.insert(w.var, binding);
                self.expr(&w.body, &inner)
            }
        }
    }

    /// Whether `e` reads a variable bound in `env` (as an index, a field's sample, a softmax's or a weight's set
    /// element, or an exclusion's anchor).
    fn reads_any(&self, e: &TExpr, env: &Env<'a>) -> bool {
        e.any(&|s| match &s.kind {
            TKind::Index(v, _) | TKind::Softmax { var: v, .. } | TKind::WeightAt { var: v, .. } => {
                env.vars.contains_key(v)
            }
            TKind::Reduce { exclude: Some((Exclusion { anchor: Some(v), .. }, _)), .. } => env.vars.contains_key(v),
            TKind::Let(i) => self.reads_any(&self.o.lets[*i].value, env),
            _ => false,
        })
    }

    /// The mask over [anchor, `axis`] that leaves the anchor's own element out of part `part` of `set`, when the
    /// exclusion falls in that part: `targets` holds t1 then t2 in one part of 2N rows, `online` u1 and u2 as two
    /// parts, `batch` the samples.
    fn keep_mask(
        &mut self,
        exclude: Option<Exclusion>,
        set: &TExpr,
        part: usize,
        axis: Axis,
        env: &Env<'a>,
    ) -> Option<Node> {
        let e = exclude?;
        let offset = match &set.kind {
            TKind::Targets => e.second_view,
            TKind::Online if part == usize::from(e.second_view) => false,
            TKind::Batch => false,
            _ => return None,
        };
        let rows = match e.anchor {
            None => Axis::N,
            Some(v) => match env.vars[&v].value {
                Bound::Axis(a, _) => a,
                Bound::Node(_) => unreachable!("checker: an exclusion's anchor is a batch sample"),
            },
        };
        let mut axes = vec![rows, axis];
        axes.sort();
        Some(self.g.add(Op::Keep(rows, axis, offset), axes))
    }

    /// `value · keep`, the mask multiplied into a factor without feature axes where there is one, so that a sum of
    /// `weight · v` over the set stays one contraction instead of a masked [N, K, D] product.
    fn masked(&mut self, value: Node, keep: Node) -> Node {
        let featureless = |g: &Graph, n: Node| !g.axes_of(n).iter().any(|a| matches!(a, Axis::D | Axis::E));
        match *self.g.op(value) {
            Op::Binary(Binary::Mul, a, b) if featureless(&self.g, a) && !featureless(&self.g, b) => {
                let a = self.g.binary(Binary::Mul, a, keep);
                self.g.binary(Binary::Mul, a, b)
            }
            Op::Binary(Binary::Mul, a, b) if featureless(&self.g, b) && !featureless(&self.g, a) => {
                let b = self.g.binary(Binary::Mul, b, keep);
                self.g.binary(Binary::Mul, a, b)
            }
            Op::Binary(Binary::Div, a, b) if featureless(&self.g, b) => {
                let a = self.masked(a, keep);
                self.g.binary(Binary::Div, a, b)
            }
            _ => self.g.binary(Binary::Mul, value, keep),
        }
    }

    /// The rows of a set along `axis`: in `total` a batch feature is the live feature matrix relabelled to the
    /// set's axis, elsewhere (and for every other source) the set's rows as constants.
    fn set_rows(&mut self, src: SetSource, axis: Axis) -> Node {
        match src {
            SetSource::Batch(f) if self.live => {
                if !self.g.set_axes.iter().any(|(a, _)| *a == axis) {
                    self.g.set_axes.push((axis, src));
                }
                let x = self.g.add(Op::Feature(f), vec![Axis::N, Axis::D]);
                self.g.rename(x, Axis::N, axis)
            }
            _ => self.g.rows(src, axis),
        }
    }

    fn call(&mut self, func: Func, args: &'a [TExpr], env: &Env<'a>) -> Node {
        let lowered: Vec<Node> = args.iter().map(|a| self.expr(a, env)).collect();
        let arg = |i: usize| lowered[i];
        match func {
            Func::Dot => self.g.contract(arg(0), arg(1), vec![Axis::D]),
            Func::Outer => {
                let b = self.g.rename(arg(1), Axis::D, Axis::E);
                self.g.binary(Binary::Mul, arg(0), b)
            }
            Func::Exp => self.g.unary(Unary::Exp, arg(0)),
            Func::Log => self.g.unary(Unary::Log, arg(0)),
            Func::Sqrt => self.g.unary(Unary::Sqrt, arg(0)),
            Func::Relu => self.g.unary(Unary::Relu, arg(0)),
            Func::Norm | Func::Normalize => {
                let x = arg(0);
                let sq = self.g.contract(x, x, vec![Axis::D]);
                let norm = self.g.unary(Unary::Sqrt, sq);
                if func == Func::Norm {
                    norm
                } else {
                    self.g.binary(Binary::Div, x, norm)
                }
            }
            Func::Min => self.g.binary(Binary::Min, arg(0), arg(1)),
            Func::Max => self.g.binary(Binary::Max, arg(0), arg(1)),
            Func::SumEntries | Func::MeanEntries => {
                let x = arg(0);
                let matrix = self.g.axes_of(x).contains(&Axis::E);
                let mut s = self.g.sum_over(x, Axis::D);
                let d = self.g.add(Op::Dim, vec![]);
                let mut count = d;
                if matrix {
                    s = self.g.sum_over(s, Axis::E);
                    count = self.g.binary(Binary::Mul, d, d);
                }
                if func == Func::SumEntries {
                    s
                } else {
                    self.g.binary(Binary::Div, s, count)
                }
            }
            Func::Abs => self.g.unary(Unary::Abs, arg(0)),
            Func::Tanh => self.g.unary(Unary::Tanh, arg(0)),
            Func::Sigmoid => {
                let neg = self.g.unary(Unary::Neg, arg(0));
                let e = self.g.unary(Unary::Exp, neg);
                let one = self.g.constant(1.0);
                let denominator = self.g.binary(Binary::Add, one, e);
                self.g.binary(Binary::Div, one, denominator)
            }
            Func::Pow => {
                let (x, p) = (arg(0), arg(1));
                match crate::ir::fold::literal(&self.g, p) {
                    Some(k) if k.fract() == 0.0 && (0.0..=4.0).contains(&k) => {
                        let mut out = self.g.constant(1.0);
                        for _ in 0..k as usize {
                            out = self.g.binary(Binary::Mul, out, x);
                        }
                        out
                    }
                    _ => {
                        let log = self.g.unary(Unary::Log, x);
                        let scaled = self.g.binary(Binary::Mul, p, log);
                        self.g.unary(Unary::Exp, scaled)
                    }
                }
            }
            Func::Clamp => {
                let low = self.g.binary(Binary::Max, arg(0), arg(1));
                self.g.binary(Binary::Min, low, arg(2))
            }
            Func::Diag | Func::Trace => {
                let eye = self.g.add(Op::Eye, vec![Axis::D, Axis::E]);
                let masked = self.g.binary(Binary::Mul, arg(0), eye);
                let diag = self.g.sum_over(masked, Axis::E);
                if func == Func::Diag {
                    diag
                } else {
                    self.g.sum_over(diag, Axis::D)
                }
            }
            Func::Transpose => {
                let x = self.g.rename(arg(0), Axis::D, Axis::J);
                let x = self.g.rename(x, Axis::E, Axis::D);
                self.g.rename(x, Axis::J, Axis::E)
            }
            Func::Eye => self.g.add(Op::Eye, vec![Axis::D, Axis::E]),
            Func::StopGrad => self.g.unary(Unary::StopGrad, arg(0)),
            Func::LogSumExpEntries => self.g.lse_over(arg(0), Axis::D),
            Func::SqrtM => self.g.add(Op::MatrixPower(MatrixPower::Sqrt, arg(0)), vec![Axis::D, Axis::E]),
            Func::InvSqrtM => self.g.add(Op::MatrixPower(MatrixPower::InvSqrt, arg(0)), vec![Axis::D, Axis::E]),
            Func::SoftmaxEntries => {
                let x = arg(0);
                let lse = self.g.lse_over(x, Axis::D);
                let centred = self.g.binary(Binary::Sub, x, lse);
                self.g.unary(Unary::Exp, centred)
            }
            Func::Where => {
                let (c, a, b) = (arg(0), arg(1), arg(2));
                // c ≠ 0 ⇔ c < 0 or 0 < c (never both).
                let zero = self.g.constant(0.0);
                let (below, above) = (self.g.binary(Binary::Lt, c, zero), self.g.binary(Binary::Lt, zero, c));
                let taken = self.g.binary(Binary::Add, below, above);
                let one = self.g.constant(1.0);
                let skipped = self.g.binary(Binary::Sub, one, taken);
                let first = self.g.binary(Binary::Pick, taken, a);
                let second = self.g.binary(Binary::Pick, skipped, b);
                self.g.binary(Binary::Add, first, second)
            }
        }
    }
}

fn feature(b: Builtin) -> Feature {
    match b {
        Builtin::U1 => Feature::U1,
        Builtin::U2 => Feature::U2,
        Builtin::T1 => Feature::T1,
        Builtin::T2 => Feature::T2,
        Builtin::Z1 => Feature::Z1,
        Builtin::Z2 => Feature::Z2,
        Builtin::N | Builtin::D => unreachable!("scalars are not features"),
    }
}
