//! Dead-node elimination: lowering's smart constructors leave behind nodes that a later rewrite
//! replaced (a product that became a contraction). This pass keeps only what the roots reach and
//! renumbers, so dumps and cost counts show the real work.

use super::{Graph, Lowered, Node, Op};
use crate::backend::reference::operands;

/// The lowered objective without unreachable nodes.
pub fn prune(l: Lowered) -> Lowered {
    let g = &l.graph;
    let mut roots: Vec<Node> = vec![l.gradient, l.positive, l.push];
    roots.extend(l.loss);
    roots.extend(l.ema_values.iter().flat_map(|&(_, v, r)| [v, r]));
    roots.extend(l.fifo_pushes.iter().map(|&(_, n)| n));
    let mut live = vec![false; g.ops.len()];
    let mut stack = roots;
    while let Some(n) = stack.pop() {
        if !std::mem::replace(&mut live[n.0 as usize], true) {
            stack.extend(operands(g.op(n)));
        }
    }
    let mut map = vec![Node(u32::MAX); g.ops.len()];
    let mut out = Graph { set_axes: g.set_axes.clone(), ..Graph::default() };
    for (i, op) in g.ops.iter().enumerate() {
        if live[i] {
            let m = |n: &Node| map[n.0 as usize];
            let op = match op {
                Op::Rename(n, a, b) => Op::Rename(m(n), *a, *b),
                Op::Unary(u, n) => Op::Unary(*u, m(n)),
                Op::Binary(b, x, y) => Op::Binary(*b, m(x), m(y)),
                Op::Contract(x, y, over) => Op::Contract(m(x), m(y), over.clone()),
                Op::Reduce(r, n, a) => Op::Reduce(*r, m(n), *a),
                other => other.clone(),
            };
            map[i] = out.add(op, g.axes[i].clone());
        }
    }
    let m = |n: Node| map[n.0 as usize];
    Lowered {
        gradient: m(l.gradient),
        positive: m(l.positive),
        push: m(l.push),
        loss: l.loss.map(m),
        ema_values: l.ema_values.iter().map(|&(i, v, r)| (i, m(v), m(r))).collect(),
        fifo_pushes: l.fifo_pushes.iter().map(|&(i, n)| (i, m(n))).collect(),
        graph: out,
    }
}
