//! Lowering: typed objective → IR. Per-sample math becomes batched math: the current sample is the
//! axis N; a comprehension's variable becomes a set axis K; `Σ over K of a·b` becomes a
//! contraction. A set built with `++` or `[a, b]` is lowered part by part: each reduction (and each
//! softmax's normaliser) is computed per part and combined, so `[t2] ++ Q` never materialises an
//! [N, K, D] tensor.

use super::fold;
use super::{Axis, Binary, Feature, Graph, Lowered, Node, Op, Reduction, SetSource, Unary};
use crate::check::typed::{Builtin, Func, Objective, Reduce, StateKind, TExpr, TKind, VarId};
use crate::check::types::Type;
use crate::syntax::ast::BinOp;
use std::collections::HashMap;

/// Lowers a checked objective.
pub fn lower(o: &Objective) -> Lowered {
    let mut cx = Lowering { o, g: Graph::default() };
    let env = Env::default();
    let positive = cx.expr(&o.positive, &env);
    let push = match &o.negative {
        Some(neg) => {
            let neg = cx.expr(neg, &env);
            match &o.balance {
                Some(b) => {
                    let b = cx.expr(b, &env);
                    cx.binary(Binary::Mul, b, neg)
                }
                None => neg,
            }
        }
        None => cx.constant(0.0),
    };
    let gradient = cx.binary(Binary::Add, positive, push);
    let loss = o.loss.as_ref().map(|l| cx.expr(l, &env));
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
                    let axis = Axis::K(1_000_000 + (i as u32) * 64 + p as u32);
                    let rows = match part {
                        Part::Rows(src) => cx.rows(*src, axis),
                        Part::Item(e) => cx.expr(e, &env),
                        Part::Samples => unreachable!("checker: fifos hold vectors"),
                    };
                    fifo_pushes.push((i, rows));
                }
            }
        }
    }
    super::prune::prune(Lowered { graph: cx.g, gradient, positive, push, loss, ema_values, fifo_pushes })
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
}

/// The canonical union of two axis lists.
fn union(a: &[Axis], b: &[Axis]) -> Vec<Axis> {
    let mut out: Vec<Axis> = a.iter().chain(b).copied().collect();
    out.sort();
    out.dedup();
    out
}

impl<'a> Lowering<'a> {
    fn axes(&self, n: Node) -> Vec<Axis> {
        self.g.axes_of(n).to_vec()
    }

    fn constant(&mut self, x: f64) -> Node {
        self.g.add(Op::Const(x), vec![])
    }

    fn unary(&mut self, op: Unary, x: Node) -> Node {
        match fold::unary(&self.g, op, x) {
            Some(Ok(v)) => self.constant(v),
            Some(Err(n)) => n,
            None => {
                let axes = self.axes(x);
                self.g.add(Op::Unary(op, x), axes)
            }
        }
    }

    fn binary(&mut self, op: Binary, a: Node, b: Node) -> Node {
        match fold::binary(&self.g, op, a, b) {
            Some(Ok(v)) => self.constant(v),
            Some(Err(n)) => n,
            None => {
                let axes = union(self.g.axes_of(a), self.g.axes_of(b));
                self.g.add(Op::Binary(op, a, b), axes)
            }
        }
    }

    fn contract(&mut self, a: Node, b: Node, over: Vec<Axis>) -> Node {
        let axes: Vec<Axis> =
            union(self.g.axes_of(a), self.g.axes_of(b)).into_iter().filter(|x| !over.contains(x)).collect();
        self.g.add(Op::Contract(a, b, over), axes)
    }

    fn rename(&mut self, x: Node, from: Axis, to: Axis) -> Node {
        let axes = self.axes(x);
        if !axes.contains(&from) {
            return x;
        }
        let mut renamed: Vec<Axis> = axes.iter().map(|&a| if a == from { to } else { a }).collect();
        renamed.sort();
        self.g.add(Op::Rename(x, from, to), renamed)
    }

    fn rows(&mut self, source: SetSource, axis: Axis) -> Node {
        if !self.g.set_axes.iter().any(|(a, _)| *a == axis) {
            self.g.set_axes.push((axis, source));
        }
        self.g.add(Op::SetRows(source, axis), vec![axis, Axis::D])
    }

    /// Σ over `axis`, pushed into products so that sums of products become contractions.
    fn sum_over(&mut self, x: Node, axis: Axis) -> Node {
        let has = |s: &Self, n: Node| s.g.axes_of(n).contains(&axis);
        if !has(self, x) {
            let size = self.g.add(Op::AxisSize(axis), vec![]);
            return self.binary(Binary::Mul, x, size);
        }
        match self.g.op(x).clone() {
            Op::Binary(Binary::Mul, a, b) => match (has(self, a), has(self, b)) {
                (true, true) => self.contract(a, b, vec![axis]),
                (true, false) => {
                    let s = self.sum_over(a, axis);
                    self.binary(Binary::Mul, s, b)
                }
                _ => {
                    let s = self.sum_over(b, axis);
                    self.binary(Binary::Mul, a, s)
                }
            },
            Op::Binary(Binary::Div, a, b) if !has(self, b) => {
                let s = self.sum_over(a, axis);
                self.binary(Binary::Div, s, b)
            }
            Op::Binary(op @ (Binary::Add | Binary::Sub), a, b) => {
                let (sa, sb) = (self.sum_over(a, axis), self.sum_over(b, axis));
                self.binary(op, sa, sb)
            }
            Op::Unary(Unary::Neg, a) => {
                let s = self.sum_over(a, axis);
                self.unary(Unary::Neg, s)
            }
            Op::Contract(a, b, mut over) if has(self, a) && has(self, b) => {
                over.push(axis);
                self.contract(a, b, over)
            }
            _ => {
                let axes: Vec<Axis> = self.axes(x).into_iter().filter(|a| *a != axis).collect();
                self.g.add(Op::Reduce(Reduction::Sum, x, axis), axes)
            }
        }
    }

    fn lse_over(&mut self, x: Node, axis: Axis) -> Node {
        if !self.g.axes_of(x).contains(&axis) {
            let size = self.g.add(Op::AxisSize(axis), vec![]);
            let log = self.unary(Unary::Log, size);
            return self.binary(Binary::Add, x, log);
        }
        let axes: Vec<Axis> = self.axes(x).into_iter().filter(|a| *a != axis).collect();
        self.g.add(Op::Reduce(Reduction::LogSumExp, x, axis), axes)
    }

    /// The parts of a set expression, in order.
    fn parts(&self, set: &'a TExpr) -> Vec<Part<'a>> {
        match &set.kind {
            TKind::Targets => vec![Part::Rows(SetSource::Targets)],
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

    /// Binds `var` to part `p` of `set`.
    fn bind(&mut self, var: VarId, set: &'a TExpr, p: usize, env: &Env<'a>) -> Binding<'a> {
        let axis = Axis::K(var.0 as u32 * 64 + p as u32);
        let value = match self.parts(set)[p] {
            Part::Rows(src) => Bound::Axis(axis, Some(src)),
            Part::Samples => Bound::Axis(axis, None),
            Part::Item(e) => Bound::Node(self.expr(e, env)),
        };
        Binding { set, value }
    }

    /// Lowers `body` once per part of `set` and reduces each part over its axis.
    fn reduce_parts(&mut self, op: Reduce, var: VarId, set: &'a TExpr, body: &'a TExpr, env: &Env<'a>) -> Node {
        let n_parts = self.parts(set).len();
        let mut total: Option<Node> = None;
        let mut count: Option<Node> = None;
        for p in 0..n_parts {
            let binding = self.bind(var, set, p, env);
            let mut inner = env.clone();
            inner.vars.insert(var, binding.clone());
            let value = self.expr(body, &inner);
            let (reduced, size) = match binding.value {
                Bound::Axis(axis, src) => {
                    if let Some(src) = src {
                        self.rows(src, axis);
                    } else if !self.g.set_axes.iter().any(|(a, _)| *a == axis) {
                        self.g.set_axes.push((axis, SetSource::Batch(Feature::U1)));
                    }
                    let r = match op {
                        Reduce::LogSumExp => self.lse_over(value, axis),
                        _ => self.sum_over(value, axis),
                    };
                    (r, self.g.add(Op::AxisSize(axis), vec![]))
                }
                Bound::Node(_) => (value, self.constant(1.0)),
            };
            let combine = if op == Reduce::LogSumExp { Binary::LogAddExp } else { Binary::Add };
            total = Some(match total {
                Some(t) => self.binary(combine, t, reduced),
                None => reduced,
            });
            count = Some(match count {
                Some(c) => self.binary(Binary::Add, c, size),
                None => size,
            });
        }
        let total = total.expect("checker: sets have at least one part");
        match op {
            Reduce::Mean => self.binary(Binary::Div, total, count.expect("counted with total")),
            _ => total,
        }
    }

    fn expr(&mut self, e: &'a TExpr, env: &Env<'a>) -> Node {
        match &e.kind {
            TKind::Const(x) => self.constant(*x),
            TKind::Bool(_) | TKind::Targets | TKind::Batch | TKind::List(_) | TKind::Error => {
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
                Bound::Axis(axis, Some(src)) => self.rows(src, axis),
                Bound::Axis(_, None) => unreachable!("checker: samples are only used through fields"),
            },
            TKind::Field(base, field) => {
                let TKind::Index(var, _) = &base.kind else { unreachable!("checker: fields of index variables") };
                let Bound::Axis(axis, _) = env.vars[var].value else { unreachable!("samples bind to an axis") };
                self.rows(SetSource::Batch(feature(*field)), axis)
            }
            TKind::Neg(a) => {
                let a = self.expr(a, env);
                self.unary(Unary::Neg, a)
            }
            TKind::Binary(op, a, b) => {
                let (x, y) = (self.expr(a, env), self.expr(b, env));
                match op {
                    BinOp::Add => self.binary(Binary::Add, x, y),
                    BinOp::Sub => self.binary(Binary::Sub, x, y),
                    BinOp::Mul => self.binary(Binary::Mul, x, y),
                    BinOp::Div => self.binary(Binary::Div, x, y),
                    BinOp::MatMul if b.ty == Type::Vec => {
                        let y = self.rename(y, Axis::D, Axis::E);
                        self.contract(x, y, vec![Axis::E])
                    }
                    BinOp::MatMul => {
                        let x = self.rename(x, Axis::E, Axis::J);
                        let y = self.rename(y, Axis::D, Axis::J);
                        self.contract(x, y, vec![Axis::J])
                    }
                    BinOp::Concat => unreachable!("checker: sets are not values"),
                }
            }
            TKind::Call(func, args) => self.call(*func, args, env),
            TKind::Reduce { op, var, set, body, .. } => self.reduce_parts(*op, *var, set, body, env),
            TKind::Softmax { var, arg } => {
                let binding = env.vars[var].clone();
                let x = self.expr(arg, env);
                let lse = self.reduce_parts(Reduce::LogSumExp, *var, binding.set, arg, env);
                let centred = self.binary(Binary::Sub, x, lse);
                self.unary(Unary::Exp, centred)
            }
            TKind::WeightAt { weight, var, .. } => {
                let w = &self.o.weights[*weight];
                let mut inner = env.clone();
                let mut binding = env.vars[var].clone();
                binding.set = &w.set;
                inner.vars.insert(w.var, binding);
                self.expr(&w.body, &inner)
            }
        }
    }

    fn call(&mut self, func: Func, args: &'a [TExpr], env: &Env<'a>) -> Node {
        let lowered: Vec<Node> = args.iter().map(|a| self.expr(a, env)).collect();
        let arg = |i: usize| lowered[i];
        match func {
            Func::Dot => self.contract(arg(0), arg(1), vec![Axis::D]),
            Func::Outer => {
                let b = self.rename(arg(1), Axis::D, Axis::E);
                self.binary(Binary::Mul, arg(0), b)
            }
            Func::Exp => self.unary(Unary::Exp, arg(0)),
            Func::Log => self.unary(Unary::Log, arg(0)),
            Func::Sqrt => self.unary(Unary::Sqrt, arg(0)),
            Func::Relu => self.unary(Unary::Relu, arg(0)),
            Func::Norm | Func::Normalize => {
                let x = arg(0);
                let sq = self.contract(x, x, vec![Axis::D]);
                let norm = self.unary(Unary::Sqrt, sq);
                if func == Func::Norm {
                    norm
                } else {
                    self.binary(Binary::Div, x, norm)
                }
            }
            Func::Min => self.binary(Binary::Min, arg(0), arg(1)),
            Func::Max => self.binary(Binary::Max, arg(0), arg(1)),
            Func::SumEntries | Func::MeanEntries => {
                let s = self.sum_over(arg(0), Axis::D);
                if func == Func::SumEntries {
                    s
                } else {
                    let d = self.g.add(Op::Dim, vec![]);
                    self.binary(Binary::Div, s, d)
                }
            }
            Func::Eye => self.g.add(Op::Eye, vec![Axis::D, Axis::E]),
        }
    }
}

fn feature(b: Builtin) -> Feature {
    match b {
        Builtin::U1 => Feature::U1,
        Builtin::U2 => Feature::U2,
        Builtin::T1 => Feature::T1,
        Builtin::T2 => Feature::T2,
        Builtin::N | Builtin::D => unreachable!("scalars are not features"),
    }
}
