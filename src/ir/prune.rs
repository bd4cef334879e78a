//! Dead-node elimination: lowering's smart constructors leave behind nodes that a later rewrite
//! replaced (a product that became a contraction). This pass keeps only what the roots reach and
//! renumbers, so dumps and cost counts show the real work.

use super::{map_operands, operands, Lowered, Node};

/// The lowered objective without unreachable nodes.
pub fn prune(l: Lowered) -> Lowered {
    let g = &l.graph;
    let mut live = vec![false; g.ops.len()];
    let mut stack = l.roots();
    while let Some(n) = stack.pop() {
        if !std::mem::replace(&mut live[n.0 as usize], true) {
            stack.extend(operands(g.op(n)));
        }
    }
    let mut map = vec![Node(u32::MAX); g.ops.len()];
    let mut out = g.empty_like();
    for (i, op) in g.ops.iter().enumerate() {
        if live[i] {
            let op = map_operands(op, |n| map[n.0 as usize]);
            map[i] = out.add(op, g.axes[i].clone());
        }
    }
    l.with_graph(out, |n| map[n.0 as usize])
}
