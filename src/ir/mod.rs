//! The gradient IR: a DAG of tensor operations over **named axes**. A per-sample vector is a
//! tensor over `[N, D]`; a quantity inside a comprehension gains the comprehension's set axis `K`;
//! a matrix has axes `[D, E]`. Sums of products become contractions (einsum), which the backends
//! run as (batched) matrix products — so `dot(u1, v) for v in V` is one GEMM `U1·Vᵀ`, and
//! `mean(outer(t, t) for t in targets)` is `TᵀT / 2N`. Nodes are hash-consed on insertion, which
//! shares every common subexpression.

mod build;
pub mod cost;
pub mod distribute;
pub mod fold;
pub mod fuse;
mod lower;
pub mod prune;
pub mod reassociate;

pub use lower::lower;

/// The passes after lowering, for a step at `sizes`: matrix chains reassociated by cost, then pruned (constants fold
/// and common subexpressions are shared as nodes are inserted). `fuse::fuse` then picks the fused backend's kernels.
pub fn optimize(lowered: &Lowered, sizes: &cost::Sizes) -> Lowered {
    reassociate::reassociate(lowered, sizes)
}

use std::collections::HashMap;
use std::fmt;

/// A named tensor axis. Canonical order inside a tensor is the order of this enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Axis {
    /// The batch: one row per sample of the current view.
    N,
    /// The elements of one part of a set: what a comprehension or weight ranges over, or what a fifo pushes.
    K(SetAxis),
    /// Feature dimension.
    D,
    /// Second matrix axis.
    E,
    /// Scratch axis for matrix–matrix products.
    J,
}

/// Which elements a `K` axis runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetAxis {
    /// Part `part` of a set a comprehension or weight variable ranges over, `depth` comprehensions deep. Keyed by
    /// position and rows, not by the variable, so that two identical comprehensions lower to the same nodes (and
    /// are computed once); a nested one is deeper, so never shares its parent's axis.
    Var {
        /// How many variables enclose it.
        depth: u32,
        /// The part of its set (sets concatenated with `++` have several).
        part: u32,
        /// Where the part's rows come from.
        source: SetSource,
    },
    /// Part `part` of the rows that fifo state `state` pushes after the step.
    Push {
        /// The state's index.
        state: u32,
        /// The part of the pushed set.
        part: u32,
    },
}

impl fmt::Display for Axis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Axis::N => f.write_str("N"),
            Axis::K(SetAxis::Var { depth, part, source }) => {
                let rows = match source {
                    SetSource::Targets => "targets".to_string(),
                    SetSource::Batch(_) => "batch".to_string(),
                    SetSource::Fifo(i) => format!("fifo{i}"),
                };
                write!(f, "K{depth}.{part}:{rows}")
            }
            Axis::K(SetAxis::Push { state, part }) => write!(f, "Kpush{state}.{part}"),
            Axis::D => f.write_str("D"),
            Axis::E => f.write_str("E"),
            Axis::J => f.write_str("J"),
        }
    }
}

/// A feature matrix of the step, [N, D].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feature {
    /// Online, this view (receives the gradient).
    U1,
    /// Online, other view.
    U2,
    /// Target, this view.
    T1,
    /// Target, other view.
    T2,
    /// Online, this view, before L2 normalisation (read by `total` only).
    Z1,
    /// Online, other view, before L2 normalisation.
    Z2,
}

/// Where a set axis gets its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetSource {
    /// `targets`: T1 stacked on T2 (2N rows).
    Targets,
    /// A field of `batch` (N rows, detached).
    Batch(Feature),
    /// A fifo state's current rows.
    Fifo(usize),
}

/// Elementwise unary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unary {
    /// −x.
    Neg,
    /// eˣ.
    Exp,
    /// ln x.
    Log,
    /// √x.
    Sqrt,
    /// max(x, 0).
    Relu,
    /// x, through which no gradient flows.
    StopGrad,
    /// |x|.
    Abs,
    /// tanh x.
    Tanh,
}

/// Elementwise binary operations (broadcasting over missing axes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binary {
    /// a + b.
    Add,
    /// a − b.
    Sub,
    /// a · b.
    Mul,
    /// a / b.
    Div,
    /// min(a, b).
    Min,
    /// max(a, b).
    Max,
    /// log(eᵃ + eᵇ), computed stably: combines logsumexps of the parts of a set.
    LogAddExp,
    /// 1 where a < b, else 0 (no gradient).
    Lt,
    /// 1 where a ≤ b, else 0.
    Le,
    /// `b` where `a` is not 0, else 0: one branch of `where(c, x, y)`, which never multiplies the branch not taken
    /// (so a `log` of a negative number there cannot leak a NaN).
    Pick,
}

/// Reductions over one axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// Σ.
    Sum,
    /// log Σ exp, computed stably.
    LogSumExp,
    /// The largest entry (−inf along an empty axis).
    Max,
}

/// The operands of an operation.
pub fn operands(op: &Op) -> Vec<Node> {
    match op {
        Op::Rename(n, ..)
        | Op::Unary(_, n)
        | Op::Reduce(_, n, _)
        | Op::MatrixPower(_, n)
        | Op::Gather(n, ..)
        | Op::AllReduce(_, n) => vec![*n],
        Op::Binary(_, a, b) | Op::Contract(a, b, _) => vec![*a, *b],
        _ => vec![],
    }
}

/// The same operation with its operands replaced through `f`.
pub fn map_operands(op: &Op, f: impl Fn(Node) -> Node) -> Op {
    match op {
        Op::Rename(n, a, b) => Op::Rename(f(*n), *a, *b),
        Op::Unary(u, n) => Op::Unary(*u, f(*n)),
        Op::Binary(b, x, y) => Op::Binary(*b, f(*x), f(*y)),
        Op::Contract(x, y, over) => Op::Contract(f(*x), f(*y), over.clone()),
        Op::Reduce(r, n, a) => Op::Reduce(*r, f(*n), *a),
        Op::MatrixPower(p, n) => Op::MatrixPower(*p, f(*n)),
        Op::Gather(n, from, to, parts) => Op::Gather(f(*n), *from, *to, *parts),
        Op::AllReduce(r, n) => Op::AllReduce(*r, f(*n)),
        other => other.clone(),
    }
}

/// A node index into a [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node(pub u32);

/// One operation.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A literal.
    Const(f64),
    /// A param, read at run time so overrides need no re-lowering.
    Param(usize),
    /// The batch size N of the step.
    BatchSize,
    /// The feature dimension D.
    Dim,
    /// The number of rows of a set axis at run time (fifo fill level, 2N for targets, ...).
    AxisSize(Axis),
    /// A feature matrix [N, D].
    Feature(Feature),
    /// Rows of a set, laid along a set axis: [K, D].
    SetRows(SetSource, Axis),
    /// An ema state's value (after this step's update), with the axes of its type.
    Ema(usize),
    /// The D × D identity, [D, E].
    Eye,
    /// 1 everywhere but where the column index is the row index (plus N when the flag is set): the mask that leaves
    /// a sample's own element out of a set, over [rows axis, set axis].
    Keep(Axis, Axis, bool),
    /// Relabels an axis (no data movement).
    Rename(Node, Axis, Axis),
    /// Elementwise unary.
    Unary(Unary, Node),
    /// Elementwise binary.
    Binary(Binary, Node, Node),
    /// Σ over `axes` of a · b: an einsum run as a matrix product.
    Contract(Node, Node, Vec<Axis>),
    /// A reduction over one axis.
    Reduce(Reduction, Node, Axis),
    /// A power of a global symmetric matrix [D, E] (through its eigendecomposition).
    MatrixPower(MatrixPower, Node),
    /// Data-parallel only: every rank's rows of the operand along its first axis `from` (a sharded one), laid along
    /// `to` in the single-process order. The operand's rows are `parts` equal blocks (targets: t1 then t2); block
    /// `p` of every rank comes before block `p + 1`. This rank's rows stay live for autodiff.
    Gather(Node, Axis, Axis, u32),
    /// Data-parallel only: the reduction of every rank's partial value (a sum, max or log-sum-exp over a sharded
    /// axis, taken locally) into the global one, identical on every rank.
    AllReduce(Reduction, Node),
}

/// The powers of a symmetric matrix the language has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatrixPower {
    /// S^½.
    Sqrt,
    /// S^−½.
    InvSqrt,
}

impl MatrixPower {
    /// The exponent.
    pub fn exponent(self) -> f64 {
        match self {
            MatrixPower::Sqrt => 0.5,
            MatrixPower::InvSqrt => -0.5,
        }
    }
}

impl Eq for Op {}

impl std::hash::Hash for Op {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Op::Const(x) => x.to_bits().hash(state),
            Op::Param(i) | Op::Ema(i) => i.hash(state),
            Op::AxisSize(a) => a.hash(state),
            Op::Feature(f) => f.hash(state),
            Op::SetRows(s, a) => (s, a).hash(state),
            Op::Rename(n, a, b) => (n, a, b).hash(state),
            Op::Unary(u, n) => (u, n).hash(state),
            Op::Binary(b, x, y) => (b, x, y).hash(state),
            Op::Contract(x, y, axes) => (x, y, axes).hash(state),
            Op::Reduce(r, n, a) => (r, n, a).hash(state),
            Op::MatrixPower(p, n) => (p, n).hash(state),
            Op::Gather(n, from, to, parts) => (n, from, to, parts).hash(state),
            Op::AllReduce(r, n) => (r, n).hash(state),
            Op::Keep(r, c, o) => (r, c, o).hash(state),
            Op::BatchSize | Op::Dim | Op::Eye => {}
        }
    }
}

/// The IR of one objective: nodes in topological order, each with its axes, and the roots.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// Operations; every operand precedes its user.
    pub ops: Vec<Op>,
    /// Axes of each node's value, in canonical order.
    pub axes: Vec<Vec<Axis>>,
    index: HashMap<Op, Node>,
    /// Set axes and where their rows come from, for sizing.
    pub set_axes: Vec<(Axis, SetSource)>,
    /// A per-rank graph (see [`distribute`]): the set axes whose rows stay split over the ranks, as the batch axis
    /// N always is there. Empty in a single-process graph.
    pub sharded: Vec<Axis>,
    /// The ranks a per-rank graph runs on (0 for a single-process graph).
    pub ranks: usize,
}

impl Graph {
    /// Adds an operation (or returns the identical one already present) with its axes.
    pub fn add(&mut self, op: Op, axes: Vec<Axis>) -> Node {
        if let Some(&n) = self.index.get(&op) {
            return n;
        }
        let n = Node(self.ops.len() as u32);
        self.ops.push(op.clone());
        self.axes.push(axes);
        self.index.insert(op, n);
        n
    }

    /// The operation of a node.
    pub fn op(&self, n: Node) -> &Op {
        &self.ops[n.0 as usize]
    }

    /// The axes of a node.
    pub fn axes_of(&self, n: Node) -> &[Axis] {
        &self.axes[n.0 as usize]
    }

    /// An empty graph with this one's axis information (set sources, sharding), for a pass that rebuilds it.
    pub fn empty_like(&self) -> Graph {
        Graph { set_axes: self.set_axes.clone(), sharded: self.sharded.clone(), ranks: self.ranks, ..Graph::default() }
    }

    /// Whether `axis` holds only this rank's rows in a per-rank graph (N and the sharded set axes).
    pub fn is_sharded(&self, axis: Axis) -> bool {
        self.ranks > 0 && (axis == Axis::N || self.sharded.contains(&axis))
    }

    /// The source of a set axis.
    pub fn source_of(&self, axis: Axis) -> Option<SetSource> {
        self.set_axes.iter().find(|(a, _)| *a == axis).map(|(_, s)| *s)
    }
}

/// The lowered objective: one graph, and the roots the plan evaluates.
#[derive(Clone, Debug)]
pub struct Lowered {
    /// All nodes.
    pub graph: Graph,
    /// positive + balance · negative, [N, D].
    pub gradient: Node,
    /// The positive term, [N, D].
    pub positive: Node,
    /// balance · negative, [N, D] (or a zero constant when there is no negative).
    pub push: Node,
    /// The per-sample loss [N], when the objective has one.
    pub loss: Option<Node>,
    /// The batch-level loss (a scalar), when the objective has one: online features are live in it.
    pub total: Option<Node>,
    /// Each ema state's batch value and rate, by state index, in declaration order.
    pub ema_values: Vec<(usize, Node, Node)>,
    /// Each fifo state's pushed rows [K, D], by state index.
    pub fifo_pushes: Vec<(usize, Node)>,
}

impl Lowered {
    /// Every root, for passes that must keep them.
    pub fn roots(&self) -> Vec<Node> {
        let mut roots = vec![self.gradient, self.positive, self.push];
        roots.extend(self.loss);
        roots.extend(self.total);
        roots.extend(self.ema_values.iter().flat_map(|&(_, v, r)| [v, r]));
        roots.extend(self.fifo_pushes.iter().map(|&(_, n)| n));
        roots
    }

    /// The same roots through a node map (after a pass rebuilt the graph).
    pub fn with_graph(&self, graph: Graph, map: impl Fn(Node) -> Node) -> Lowered {
        Lowered {
            gradient: map(self.gradient),
            positive: map(self.positive),
            push: map(self.push),
            loss: self.loss.map(&map),
            total: self.total.map(&map),
            ema_values: self.ema_values.iter().map(|&(i, v, r)| (i, map(v), map(r))).collect(),
            fifo_pushes: self.fifo_pushes.iter().map(|&(i, n)| (i, map(n))).collect(),
            graph,
        }
    }

    /// A readable dump, one node per line; with sizes, each line carries its FLOPs and bytes and
    /// the dump ends with the totals.
    pub fn dump(&self, sizes: Option<&cost::Sizes>) -> String {
        use std::fmt::Write;
        let g = &self.graph;
        let mut out = String::new();
        let (mut total_flops, mut total_bytes) = (0u64, 0u64);
        for (i, op) in g.ops.iter().enumerate() {
            let axes: Vec<String> = g.axes[i].iter().map(|a| a.to_string()).collect();
            let text = match op {
                Op::Const(x) => format!("const {x}"),
                Op::Param(p) => format!("param #{p}"),
                Op::BatchSize => "N".into(),
                Op::Dim => "D".into(),
                Op::AxisSize(a) => format!("size({a})"),
                Op::Feature(x) => format!("{x:?}"),
                Op::SetRows(s, a) => format!("rows {s:?} along {a}"),
                Op::Ema(s) => format!("ema state #{s}"),
                Op::Eye => "eye".into(),
                Op::Keep(r, c, o) => format!("keep all but {c} = {r}{}", if *o { " + N" } else { "" }),
                Op::Rename(n, a, b) => format!("%{} with {a} as {b}", n.0),
                Op::Unary(u, n) => format!("{u:?} %{}", n.0).to_lowercase(),
                Op::Binary(b, x, y) => format!("{} %{} %{}", format!("{b:?}").to_lowercase(), x.0, y.0),
                Op::Contract(x, y, axes) => {
                    let over: Vec<String> = axes.iter().map(|a| a.to_string()).collect();
                    format!("contract %{} %{} over {}", x.0, y.0, over.join(","))
                }
                Op::Reduce(r, n, a) => format!("{} %{} over {a}", format!("{r:?}").to_lowercase(), n.0),
                Op::MatrixPower(p, n) => format!("power {} of %{}", p.exponent(), n.0),
                Op::Gather(n, from, to, parts) => {
                    let blocks = if *parts > 1 { format!(" in {parts} blocks") } else { String::new() };
                    format!("all-gather %{} along {from}{blocks} as {to}", n.0)
                }
                Op::AllReduce(r, n) => format!("all-reduce {} %{}", format!("{r:?}").to_lowercase(), n.0),
            };
            let line = format!("%{i:<4} [{}] = {text}", axes.join(", "));
            match sizes {
                Some(s) => {
                    let (flops, bytes) = cost::node_cost(g, Node(i as u32), s);
                    total_flops += flops;
                    total_bytes += bytes;
                    let _ = writeln!(out, "{line:<56} {:>12} flop {:>12} B", flops, bytes);
                }
                None => {
                    let _ = writeln!(out, "{line}");
                }
            }
        }
        let _ = writeln!(out, "gradient = %{}", self.gradient.0);
        if let Some(l) = self.loss {
            let _ = writeln!(out, "loss     = %{}", l.0);
        }
        if let Some(t) = self.total {
            let _ = writeln!(out, "total    = %{}", t.0);
        }
        if sizes.is_some() {
            let _ =
                writeln!(out, "total: {:.3} MFLOP, {:.3} MB moved", total_flops as f64 / 1e6, total_bytes as f64 / 1e6);
        }
        out
    }
}
