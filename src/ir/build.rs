//! Smart constructors for IR nodes, shared by lowering and the rewriting passes: each folds
//! constants (see `fold`), and `sum_over` pushes a sum into products so that sums of products
//! become contractions.

use super::fold;
use super::{Axis, Binary, Graph, Node, Op, Reduction, SetSource, Unary};

/// The canonical union of two axis lists.
pub fn union(a: &[Axis], b: &[Axis]) -> Vec<Axis> {
    let mut out: Vec<Axis> = a.iter().chain(b).copied().collect();
    out.sort();
    out.dedup();
    out
}

impl Graph {
    /// The axes of a node, owned.
    pub fn axes_vec(&self, n: Node) -> Vec<Axis> {
        self.axes_of(n).to_vec()
    }

    /// A literal.
    pub fn constant(&mut self, x: f64) -> Node {
        self.add(Op::Const(x), vec![])
    }

    /// `op(x)`, folded when `x` is a literal.
    pub fn unary(&mut self, op: Unary, x: Node) -> Node {
        match fold::unary(self, op, x) {
            Some(Ok(v)) => self.constant(v),
            Some(Err(n)) => n,
            None => {
                let axes = self.axes_vec(x);
                self.add(Op::Unary(op, x), axes)
            }
        }
    }

    /// `a op b`, broadcasting over the union of their axes; folded where an identity applies.
    pub fn binary(&mut self, op: Binary, a: Node, b: Node) -> Node {
        match fold::binary(self, op, a, b) {
            Some(Ok(v)) => self.constant(v),
            Some(Err(n)) => n,
            None => {
                let axes = union(self.axes_of(a), self.axes_of(b));
                self.add(Op::Binary(op, a, b), axes)
            }
        }
    }

    /// Σ over `over` of a·b. Scalar factors of either operand are hoisted out (`Σ (x/τ)·y` becomes
    /// `(Σ x·y)/τ`), so chains of contractions meet directly and can be reassociated.
    pub fn contract(&mut self, a: Node, b: Node, over: Vec<Axis>) -> Node {
        for (side, other, first) in [(a, b, true), (b, a, false)] {
            if let Some((inner, scale, op)) = self.scaled(side) {
                let c = if first { self.contract(inner, other, over) } else { self.contract(other, inner, over) };
                return self.binary(op, c, scale);
            }
        }
        let axes: Vec<Axis> =
            union(self.axes_of(a), self.axes_of(b)).into_iter().filter(|x| !over.contains(x)).collect();
        self.add(Op::Contract(a, b, over), axes)
    }

    /// `x·s`, `s·x` or `x/s` with `s` a scalar: (x, s, the operation).
    fn scaled(&self, n: Node) -> Option<(Node, Node, Binary)> {
        let scalar = |m: Node| self.axes_of(m).is_empty();
        match *self.op(n) {
            Op::Binary(Binary::Mul, x, s) if scalar(s) && !scalar(x) => Some((x, s, Binary::Mul)),
            Op::Binary(Binary::Mul, s, x) if scalar(s) && !scalar(x) => Some((x, s, Binary::Mul)),
            Op::Binary(Binary::Div, x, s) if scalar(s) && !scalar(x) => Some((x, s, Binary::Div)),
            _ => None,
        }
    }

    /// Whether a node has no feature axis (D, E, J): a scalar per sample and set element.
    fn featureless(&self, n: Node) -> bool {
        !self.axes_of(n).iter().any(|a| matches!(a, Axis::D | Axis::E | Axis::J))
    }

    /// Relabels an axis; a no-op when `x` lacks it.
    pub fn rename(&mut self, x: Node, from: Axis, to: Axis) -> Node {
        let axes = self.axes_vec(x);
        if !axes.contains(&from) {
            return x;
        }
        let mut renamed: Vec<Axis> = axes.iter().map(|&a| if a == from { to } else { a }).collect();
        renamed.sort();
        self.add(Op::Rename(x, from, to), renamed)
    }

    /// The rows of a set laid along `axis`, registering the axis's source for sizing.
    pub fn rows(&mut self, source: SetSource, axis: Axis) -> Node {
        if !self.set_axes.iter().any(|(a, _)| *a == axis) {
            self.set_axes.push((axis, source));
        }
        self.add(Op::SetRows(source, axis), vec![axis, Axis::D])
    }

    /// Σ over `axis`, pushed into products so that sums of products become contractions.
    pub fn sum_over(&mut self, x: Node, axis: Axis) -> Node {
        let has = |s: &Self, n: Node| s.axes_of(n).contains(&axis);
        if !has(self, x) {
            let size = self.add(Op::AxisSize(axis), vec![]);
            return self.binary(Binary::Mul, x, size);
        }
        match self.op(x).clone() {
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
            // (w·v) / d with d a weight over the set (no feature axes): divide the weight first, so that the sum
            // stays one contraction of (w / d) with v instead of a materialised [N, K, D] quotient.
            Op::Binary(Binary::Div, a, b) if self.featureless(b) => match *self.op(a) {
                Op::Binary(Binary::Mul, p, q) if self.featureless(p) || self.featureless(q) => {
                    let (w, v) = if self.featureless(p) { (p, q) } else { (q, p) };
                    let w = self.binary(Binary::Div, w, b);
                    let product = self.binary(Binary::Mul, w, v);
                    self.sum_over(product, axis)
                }
                _ => {
                    let axes: Vec<Axis> = self.axes_vec(x).into_iter().filter(|a| *a != axis).collect();
                    self.add(Op::Reduce(Reduction::Sum, x, axis), axes)
                }
            },
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
                let axes: Vec<Axis> = self.axes_vec(x).into_iter().filter(|a| *a != axis).collect();
                self.add(Op::Reduce(Reduction::Sum, x, axis), axes)
            }
        }
    }

    /// The maximum over `axis`; a value constant along it is its own maximum.
    pub fn max_over(&mut self, x: Node, axis: Axis) -> Node {
        if !self.axes_of(x).contains(&axis) {
            return x;
        }
        let axes: Vec<Axis> = self.axes_vec(x).into_iter().filter(|a| *a != axis).collect();
        self.add(Op::Reduce(Reduction::Max, x, axis), axes)
    }

    /// log Σ exp over `axis`; for a value constant along it, x + log|axis|.
    pub fn lse_over(&mut self, x: Node, axis: Axis) -> Node {
        if !self.axes_of(x).contains(&axis) {
            let size = self.add(Op::AxisSize(axis), vec![]);
            let log = self.unary(Unary::Log, size);
            return self.binary(Binary::Add, x, log);
        }
        let axes: Vec<Axis> = self.axes_vec(x).into_iter().filter(|a| *a != axis).collect();
        self.add(Op::Reduce(Reduction::LogSumExp, x, axis), axes)
    }
}
