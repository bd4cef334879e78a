//! Data-parallel lowering: the graph one rank of P runs, with the communication the objective needs made explicit
//! as [`Op::Gather`] and [`Op::AllReduce`] nodes. The objective's types say what is batch-global, so the user never
//! writes a gather:
//!
//! - every rank holds N/P rows of the batch (axis N); per-sample values stay local;
//! - a set over the batch (`targets`, `batch`, `online`) either has its rows **gathered** from every rank, in the
//!   single-process order, or stays **sharded**: where the set is only ever summed (or maxed, or log-sum-exp'd)
//!   into values without it — `mean(outer(t, t) for t in targets)`, the batch mean, VICReg's covariance — each rank
//!   reduces its own rows and the partial values are all-reduced. A set that meets the batch axis in one value
//!   (`dot(u1, v) for v in targets`) must be gathered; otherwise the fewer bytes decide;
//! - a reduction over N is taken locally and all-reduced; fifo pushes are gathered, so the fifos stay identical on
//!   every rank; `N`, set sizes and means count the global batch.
//!
//! The result is exact: `verify --ranks P` runs it on P in-process ranks against one process on the global batch.

use super::cost::Sizes;
use super::{map_operands, Axis, Graph, Lowered, Node, Op, Reduction, SetAxis, SetSource};
use std::collections::HashMap;

/// How the sets over the batch are laid out across ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sets {
    /// Sharded where that is possible and moves fewer bytes, gathered elsewhere: what training uses.
    ByBytes,
    /// Every set gathered.
    Gathered,
    /// Every set that can be sharded is: `verify --ranks` checks both extremes, whatever the sizes favour.
    Sharded,
}

/// The per-rank graph of `l` for `ranks` ranks, its sets laid out by `sets` at the global `sizes`.
pub fn distribute(l: &Lowered, sizes: &Sizes, ranks: usize, sets: Sets) -> Lowered {
    // Only the live nodes decide what a set needs.
    let l = &super::prune::prune(l.clone());
    let g = &l.graph;
    let candidates = shardable(g);
    // Rows that some value needs gathered anyway cost nothing more to use gathered elsewhere.
    let gathered_anyway: Vec<SetSource> =
        g.set_axes.iter().filter(|(a, _)| !candidates.contains(a)).map(|(_, s)| *s).collect();
    let mut sharded: Vec<Axis> = match sets {
        Sets::Gathered => Vec::new(),
        Sets::Sharded => candidates,
        Sets::ByBytes => candidates
            .into_iter()
            .filter(|&k| g.source_of(k).is_some_and(|s| !gathered_anyway.contains(&s)))
            .filter(|&k| cheaper_sharded(g, k, sizes, ranks))
            .collect(),
    };
    loop {
        let out = rewrite(l, sharded.clone(), ranks);
        let broken = cut_gradient_paths(&out);
        if broken.is_empty() {
            return out;
        }
        sharded.retain(|k| !broken.contains(k));
    }
}

/// The sharded axes of `total` through which autodiff would miss paths: a replicated value computed from live rows
/// (a batch mean in `total`) that flows back into a sharded value depends on every rank's rows, but this rank's
/// autodiff sees only its own share of that value's uses. Such a set is gathered instead (then every rank computes
/// every use).
fn cut_gradient_paths(l: &Lowered) -> Vec<Axis> {
    let g = &l.graph;
    let Some(total) = l.total else { return Vec::new() };
    let mut in_total = vec![false; g.ops.len()];
    let mut stack = vec![total];
    while let Some(n) = stack.pop() {
        if !std::mem::replace(&mut in_total[n.0 as usize], true) {
            stack.extend(super::operands(g.op(n)));
        }
    }
    // Live: depends on an online feature. Replicated: over no sharded axis (the same on every rank).
    let mut live = vec![false; g.ops.len()];
    let replicated = |i: usize| !g.axes[i].iter().any(|a| g.is_sharded(*a));
    let mut broken = Vec::new();
    for (i, op) in g.ops.iter().enumerate() {
        let operands = super::operands(op);
        live[i] = matches!(op, Op::Feature(_)) || operands.iter().any(|o| live[o.0 as usize]);
        let sharded: Vec<Axis> = g.axes[i].iter().copied().filter(|a| *a != Axis::N && g.is_sharded(*a)).collect();
        let reads_replicated_live = operands.iter().any(|o| live[o.0 as usize] && replicated(o.0 as usize));
        if in_total[i] && !sharded.is_empty() && reads_replicated_live {
            broken.extend(sharded);
        }
    }
    broken
}

/// The per-rank graph with the set axes `sharded` split over the ranks and every other set gathered.
fn rewrite(l: &Lowered, sharded: Vec<Axis>, ranks: usize) -> Lowered {
    let g = &l.graph;
    let mut out = Graph { sharded, ranks, ..g.empty_like() };
    // One gather per set source: a second axis over the same rows renames the first gather.
    let mut gathered: HashMap<(SetSource, bool), Node> = HashMap::new();
    let mut map = vec![Node(u32::MAX); g.ops.len()];
    for (i, op) in g.ops.iter().enumerate() {
        let m = |x: Node| map[x.0 as usize];
        let axes = g.axes[i].clone();
        let value = match op {
            Op::SetRows(src @ (SetSource::Targets | SetSource::Batch(_)), k) if !out.is_sharded(*k) => {
                let parts = if *src == SetSource::Targets { 2 } else { 1 };
                gather_once(&mut out, &mut gathered, (*src, false), *k, |out| {
                    let local = out.add(op.clone(), axes.clone());
                    out.add(Op::Gather(local, *k, *k, parts), axes.clone())
                })
            }
            // In `total`, the rows of `batch` are the live feature matrix relabelled.
            Op::Rename(x, Axis::N, k) if !out.is_sharded(*k) => match g.op(*x) {
                Op::Feature(f) => gather_once(&mut out, &mut gathered, (SetSource::Batch(*f), true), *k, |out| {
                    out.add(Op::Gather(m(*x), Axis::N, *k, 1), axes.clone())
                }),
                _ => out.add(map_operands(op, m), axes),
            },
            Op::Reduce(r, x, over) => {
                let local = out.add(Op::Reduce(*r, m(*x), *over), axes.clone());
                if out.is_sharded(*over) {
                    out.add(Op::AllReduce(*r, local), axes)
                } else {
                    local
                }
            }
            Op::Contract(_, _, over) => {
                let local = out.add(map_operands(op, m), axes.clone());
                if over.iter().any(|a| out.is_sharded(*a)) {
                    out.add(Op::AllReduce(Reduction::Sum, local), axes)
                } else {
                    local
                }
            }
            _ => out.add(map_operands(op, m), axes),
        };
        map[i] = value;
    }
    let mut distributed = l.with_graph(out, |n| map[n.0 as usize]);
    // A pushed per-sample value (`[t2]`) is gathered along the push axis, so every rank pushes the same rows.
    let mut part_of: HashMap<usize, u32> = HashMap::new();
    for (state, node) in distributed.fifo_pushes.iter_mut() {
        let part = part_of.entry(*state).or_insert(0);
        let push = Axis::K(SetAxis::Push { state: *state as u32, part: *part });
        *part += 1;
        let g = &mut distributed.graph;
        if g.axes_of(*node).first() == Some(&Axis::N) {
            let mut axes: Vec<Axis> = g.axes_of(*node).iter().map(|&a| if a == Axis::N { push } else { a }).collect();
            axes.sort();
            *node = g.add(Op::Gather(*node, Axis::N, push, 1), axes);
        }
    }
    super::prune::prune(distributed)
}

/// The first gather of `key`'s rows (built by `gather`), or that gather relabelled to `axis`.
fn gather_once(
    out: &mut Graph,
    gathered: &mut HashMap<(SetSource, bool), Node>,
    key: (SetSource, bool),
    axis: Axis,
    gather: impl FnOnce(&mut Graph) -> Node,
) -> Node {
    match gathered.get(&key) {
        Some(&first) => {
            let from = out.axes_of(first)[0];
            let mut axes: Vec<Axis> = out.axes_of(first).iter().map(|&a| if a == from { axis } else { a }).collect();
            axes.sort();
            if from == axis {
                first
            } else {
                out.add(Op::Rename(first, from, axis), axes)
            }
        }
        None => {
            let first = gather(out);
            gathered.insert(key, first);
            first
        }
    }
}

/// The set axes over the batch's rows that could stay sharded: never in one value with the batch axis or with
/// another such set (that value would need rows of other ranks), never pushed, never relabelled to another set.
fn shardable(g: &Graph) -> Vec<Axis> {
    let batch_set =
        |a: &Axis| matches!(g.source_of(*a), Some(SetSource::Targets | SetSource::Batch(_))) && is_var_axis(*a);
    let mut candidates: Vec<Axis> = g.set_axes.iter().map(|(a, _)| *a).filter(batch_set).collect();
    for (i, axes) in g.axes.iter().enumerate() {
        let sets: Vec<Axis> = axes.iter().copied().filter(batch_set).collect();
        let renamed_between_sets = matches!(g.ops[i], Op::Rename(_, a, b) if batch_set(&a) && batch_set(&b));
        if axes.contains(&Axis::N) || sets.len() > 1 || renamed_between_sets {
            candidates.retain(|k| !sets.contains(k));
        }
        if let Op::Rename(_, a, b) = g.ops[i] {
            if renamed_between_sets {
                candidates.retain(|k| *k != a && *k != b);
            }
        }
    }
    candidates
}

fn is_var_axis(a: Axis) -> bool {
    matches!(a, Axis::K(SetAxis::Var { .. }))
}

/// Whether all-reducing every partial value over `k` moves fewer bytes than gathering the rows laid along `k`
/// (one gather per feature matrix read along it).
fn cheaper_sharded(g: &Graph, k: Axis, sizes: &Sizes, ranks: usize) -> bool {
    let reduced: usize = (0..g.ops.len())
        .filter(|&i| match &g.ops[i] {
            Op::Reduce(_, _, over) => *over == k,
            Op::Contract(_, _, over) => over.contains(&k),
            _ => false,
        })
        .map(|i| sizes.elements(g, &g.axes[i]))
        .sum();
    let rows = g.ops.iter().filter(|op| match op {
        Op::SetRows(_, a) => *a == k,
        Op::Rename(x, Axis::N, a) => *a == k && matches!(g.op(*x), Op::Feature(_)),
        _ => false,
    });
    let gathered = rows.count() * sizes.axis(g, k) * sizes.d;
    all_reduce_bytes(reduced, ranks) < all_gather_bytes(gathered, ranks)
}

/// Bytes one rank receives in a ring all-gather of `elements` f32 values in all.
pub fn all_gather_bytes(elements: usize, ranks: usize) -> u64 {
    (4 * elements * ranks.saturating_sub(1) / ranks.max(1)) as u64
}

/// Bytes one rank receives in a ring all-reduce of `elements` f32 values (reduce-scatter, then all-gather).
pub fn all_reduce_bytes(elements: usize, ranks: usize) -> u64 {
    2 * all_gather_bytes(elements, ranks)
}

/// One collective of a per-rank graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Transfer {
    /// The node that performs it.
    pub node: Node,
    /// `all-gather` or `all-reduce`.
    pub kind: &'static str,
    /// Its axes, for the reader.
    pub axes: Vec<Axis>,
    /// Elements of the global value.
    pub elements: usize,
    /// Bytes each rank receives per execution (ring algorithms).
    pub bytes: u64,
}

/// The collectives of a per-rank graph at the global `sizes`, in execution order.
pub fn transfers(g: &Graph, sizes: &Sizes) -> Vec<Transfer> {
    // Sizes are global, so the operand of a gather counts every rank's rows.
    let global = |n: Node| -> usize {
        match g.op(n) {
            Op::Gather(x, ..) => sizes.elements(g, g.axes_of(*x)),
            _ => sizes.elements(g, g.axes_of(n)),
        }
    };
    (0..g.ops.len() as u32)
        .map(Node)
        .filter_map(|n| {
            let (kind, bytes): (_, fn(usize, usize) -> u64) = match g.op(n) {
                Op::Gather(..) => ("all-gather", all_gather_bytes),
                Op::AllReduce(..) => ("all-reduce", all_reduce_bytes),
                _ => return None,
            };
            let elements = global(n);
            Some(Transfer { node: n, kind, axes: g.axes_of(n).to_vec(), elements, bytes: bytes(elements, g.ranks) })
        })
        .collect()
}

/// How often each node runs in one training step of the per-rank plan: the gradient roots once per view order
/// (`views`), or `total` once in the loss form; each ema's rate and value once; each fifo's pushes once. (The loss
/// is evaluated only on logging steps and is not counted.)
pub fn runs_per_step(l: &Lowered, views: u32, loss_form: bool) -> Vec<u32> {
    let g = &l.graph;
    let mut runs = vec![0u32; g.ops.len()];
    let mut add = |roots: &[Node], times: u32| {
        let mut seen = vec![false; g.ops.len()];
        let mut stack = roots.to_vec();
        while let Some(n) = stack.pop() {
            if !std::mem::replace(&mut seen[n.0 as usize], true) {
                runs[n.0 as usize] += times;
                stack.extend(super::operands(g.op(n)));
            }
        }
    };
    match (loss_form, l.total) {
        (true, Some(total)) => add(&[total], 1),
        _ => add(&[l.gradient, l.positive, l.push], views),
    }
    for &(_, value, rate) in &l.ema_values {
        add(&[rate], 1);
        add(&[value], 1);
    }
    let states: std::collections::BTreeSet<usize> = l.fifo_pushes.iter().map(|(s, _)| *s).collect();
    for s in states {
        let roots: Vec<Node> = l.fifo_pushes.iter().filter(|(t, _)| *t == s).map(|(_, n)| *n).collect();
        add(&roots, 1);
    }
    runs
}
