//! Fusion: finds the IR patterns that a fused kernel computes in one go, and says which nodes each
//! kernel replaces. The reference evaluator runs everything else.
//!
//! - **Softmax-weighted sum** (the contrastive negative): `Σ_parts Σ_k exp(x_k − L)·v_k` where
//!   `x_k = s·u·v_k` and `L` is the log-sum-exp of the same logits over every part. Run as a tiled
//!   online softmax that never builds the [N, K] logits.
//! - **GEMM with an accumulating epilogue**: `P ± s·(A·B)` for a plain matrix product, e.g. UniGrad's
//!   `−T2 + λ·U1·F` and the decorrelation form's last product: one GEMM writing into `P`.

use super::{Axis, Binary, Graph, Lowered, Node, Op, Reduction, SetSource, Unary};
use std::collections::HashMap;

/// A product of scalar nodes divided by others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scale {
    /// Multiplied.
    pub mul: Vec<Node>,
    /// Divided by.
    pub div: Vec<Node>,
}

/// One part of a softmax's candidate set.
#[derive(Clone, Debug, PartialEq)]
pub enum Candidates {
    /// Rows shared by all samples, [K, D].
    Rows(Node),
    /// One vector per sample [N, D], or one shared vector [D].
    Item(Node),
}

/// A fused kernel and the nodes it reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Kernel {
    /// Σ_v softmax_v(scale·u·v)·v over the parts; value [N, D].
    SoftmaxSum {
        /// The features being compared, [N, D].
        u: Node,
        /// The logit scale.
        scale: Scale,
        /// The candidate set.
        parts: Vec<Candidates>,
    },
    /// addend ± scale·(a ⊗ b) as one GEMM; `a`, `b` rank 2 sharing only `over`.
    GemmAccumulate {
        /// Added to (broadcast to the result's axes).
        addend: Node,
        /// Subtract the product instead.
        negate: bool,
        /// The product's scalar factor.
        scale: Scale,
        /// Left operand.
        a: Node,
        /// Right operand.
        b: Node,
        /// The contracted axis.
        over: Axis,
    },
}

impl Kernel {
    /// A short name, for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Kernel::SoftmaxSum { .. } => "softmax-sum",
            Kernel::GemmAccumulate { .. } => "gemm-accumulate",
        }
    }

    /// The nodes the kernel reads.
    pub fn operands(&self) -> Vec<Node> {
        match self {
            Kernel::SoftmaxSum { u, scale, parts } => {
                let mut out = vec![*u];
                out.extend(scale.mul.iter().chain(&scale.div));
                out.extend(parts.iter().map(|p| match p {
                    Candidates::Rows(n) | Candidates::Item(n) => *n,
                }));
                out
            }
            Kernel::GemmAccumulate { addend, scale, a, b, .. } => {
                let mut out = vec![*addend, *a, *b];
                out.extend(scale.mul.iter().chain(&scale.div));
                out
            }
        }
    }
}

/// The kernels of a lowered objective, by the node each one computes.
pub fn fuse(l: &Lowered) -> HashMap<Node, Kernel> {
    let g = &l.graph;
    let mut kernels = HashMap::new();
    for i in 0..g.ops.len() {
        let n = Node(i as u32);
        if let Some(k) = softmax_sum(g, n) {
            kernels.insert(n, k);
        }
    }
    // A GEMM epilogue must not recompute a product another kernel already computes.
    for i in 0..g.ops.len() {
        let n = Node(i as u32);
        if kernels.contains_key(&n) {
            continue;
        }
        if let Some(k @ Kernel::GemmAccumulate { a, b, .. }) = gemm_accumulate(g, n) {
            let product_is_fused =
                kernels.keys().any(|m| matches!(g.op(*m), Op::Contract(x, y, _) if (*x, *y) == (a, b)));
            if !product_is_fused {
                kernels.insert(n, k);
            }
        }
    }
    kernels
}

/// Peels scalar factors: `s·x`, `x·s`, `x/s` (repeatedly) → (scale, x).
pub fn scalar_chain(g: &Graph, mut n: Node) -> (Scale, Node) {
    let mut scale = Scale::default();
    let scalar = |m: Node| g.axes_of(m).is_empty();
    for _ in 0..64 {
        match *g.op(n) {
            Op::Binary(Binary::Mul, x, s) if scalar(s) && !scalar(x) => {
                scale.mul.push(s);
                n = x;
            }
            Op::Binary(Binary::Mul, s, x) if scalar(s) && !scalar(x) => {
                scale.mul.push(s);
                n = x;
            }
            Op::Binary(Binary::Div, x, s) if scalar(s) && !scalar(x) => {
                scale.div.push(s);
                n = x;
            }
            _ => break,
        }
    }
    scale.mul.sort();
    scale.div.sort();
    (scale, n)
}

fn leaves(g: &Graph, n: Node, op: Binary, out: &mut Vec<Node>) {
    match *g.op(n) {
        Op::Binary(b, x, y) if b == op && out.len() < 64 => {
            leaves(g, x, op, out);
            leaves(g, y, op, out);
        }
        _ => out.push(n),
    }
}

/// `scale · (u · target)` over D, with `u` an [N, D] matrix: (u, scale).
fn logit(g: &Graph, x: Node, target: Node) -> Option<(Node, Scale)> {
    let (scale, core) = scalar_chain(g, x);
    let Op::Contract(p, q, over) = g.op(core) else { return None };
    if over.as_slice() != [Axis::D] {
        return None;
    }
    let u = if *q == target {
        *p
    } else if *p == target {
        *q
    } else {
        return None;
    };
    (g.axes_of(u) == [Axis::N, Axis::D]).then_some((u, scale))
}

/// What identifies a candidate part across the different axes a softmax and its sum may use.
#[derive(PartialEq)]
enum Key {
    Rows(SetSource),
    /// Rows gathered from every rank (a per-rank graph): the gather node, whichever axis relabels it.
    Gathered(Node),
    Item(Node),
}

/// The key of a node holding a set's rows [K, D], if it is one.
fn rows_key(g: &Graph, r: Node) -> Option<Key> {
    match g.op(r) {
        Op::SetRows(src, _) => Some(Key::Rows(*src)),
        Op::Gather(..) => Some(Key::Gathered(r)),
        Op::Rename(x, a, _) if matches!(g.op(*x), Op::Gather(..)) && g.axes_of(*x).first() == Some(a) => {
            Some(Key::Gathered(*x))
        }
        _ => None,
    }
}

/// The node holding `key`'s rows along axis `k`.
fn rows_along(g: &Graph, key: &Key, k: Axis) -> Option<Node> {
    (0..g.ops.len() as u32).map(Node).find(|&n| g.axes_of(n) == [k, Axis::D] && rows_key(g, n).as_ref() == Some(key))
}

fn softmax_sum(g: &Graph, n: Node) -> Option<Kernel> {
    if g.axes_of(n) != [Axis::N, Axis::D] {
        return None;
    }
    let mut terms = Vec::new();
    leaves(g, n, Binary::Add, &mut terms);
    let mut normaliser = None;
    let mut parts = Vec::new();
    let mut logits = Vec::new();
    let mut keys = Vec::new();
    for t in terms {
        let (weights, candidates, part) = match g.op(t) {
            Op::Contract(a, b, over) if over.len() == 1 => {
                let k = over[0];
                let (w, r) = if g.axes_of(*b) == [k, Axis::D] { (*a, *b) } else { (*b, *a) };
                keys.push(rows_key(g, r)?);
                (w, r, Candidates::Rows(r))
            }
            Op::Binary(Binary::Mul, a, b) => {
                let (w, v) = if matches!(g.op(*a), Op::Unary(Unary::Exp, _)) { (*a, *b) } else { (*b, *a) };
                if !g.axes_of(w).iter().all(|x| *x == Axis::N) {
                    return None;
                }
                keys.push(Key::Item(v));
                (w, v, Candidates::Item(v))
            }
            _ => return None,
        };
        let Op::Unary(Unary::Exp, centred) = g.op(weights) else { return None };
        let Op::Binary(Binary::Sub, x, lse) = g.op(*centred) else { return None };
        if *normaliser.get_or_insert(*lse) != *lse {
            return None;
        }
        logits.push(logit(g, *x, candidates)?);
        parts.push(part);
    }
    let (u, scale) = logits.first().cloned()?;
    if logits.iter().any(|l| *l != (u, scale.clone())) {
        return None;
    }
    // The normaliser must be the log-sum-exp of the same logits over the same parts, in order.
    let mut pieces = Vec::new();
    leaves(g, normaliser?, Binary::LogAddExp, &mut pieces);
    if pieces.len() != keys.len() {
        return None;
    }
    for (piece, key) in pieces.iter().zip(&keys) {
        let ok = match (g.op(*piece), key) {
            (Op::Reduce(Reduction::LogSumExp, y, k), Key::Rows(_) | Key::Gathered(_)) => {
                rows_along(g, key, *k).and_then(|r| logit(g, *y, r)) == Some((u, scale.clone()))
            }
            (_, Key::Item(v)) => logit(g, *piece, *v) == Some((u, scale.clone())),
            _ => false,
        };
        if !ok {
            return None;
        }
    }
    Some(Kernel::SoftmaxSum { u, scale, parts })
}

fn gemm_accumulate(g: &Graph, n: Node) -> Option<Kernel> {
    let out = g.axes_of(n);
    if out.len() != 2 {
        return None;
    }
    let (addend, product, negate) = match *g.op(n) {
        Op::Binary(Binary::Add, p, q) if is_product(g, q) => (p, q, false),
        Op::Binary(Binary::Add, q, p) if is_product(g, q) => (p, q, false),
        Op::Binary(Binary::Sub, p, q) if is_product(g, q) => (p, q, true),
        _ => return None,
    };
    if !g.axes_of(addend).iter().all(|a| out.contains(a)) {
        return None;
    }
    let (scale, core) = scalar_chain(g, product);
    let Op::Contract(a, b, over) = g.op(core) else { return None };
    Some(Kernel::GemmAccumulate { addend, negate, scale, a: *a, b: *b, over: over[0] })
}

/// A plain matrix product (two rank-2 operands sharing exactly the contracted axis), maybe scaled.
fn is_product(g: &Graph, q: Node) -> bool {
    let (_, core) = scalar_chain(g, q);
    let Op::Contract(a, b, over) = g.op(core) else { return false };
    let (xa, xb) = (g.axes_of(*a), g.axes_of(*b));
    over.len() == 1
        && xa.len() == 2
        && xb.len() == 2
        && xa.iter().filter(|x| xb.contains(x)).count() == 1
        && xa.contains(&over[0])
        && xb.contains(&over[0])
}
