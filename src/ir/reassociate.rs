//! Matrix-chain reassociation by cost: `(A·Bᵀ)·C` and `A·(Bᵀ·C)` compute the same thing, but the
//! decorrelation negative costs O(N²·D) one way and O(N·D²) the other, so the cheaper order
//! depends on the batch and the dimension. At concrete sizes, every contraction of a single-use
//! contraction with a third operand is rebuilt in the cheaper order.

use super::cost::Sizes;
use super::{map_operands, operands, Axis, Graph, Lowered, Node, Op};

/// The objective with each three-operand chain in its cheaper order at `sizes`.
pub fn reassociate(l: &Lowered, sizes: &Sizes) -> Lowered {
    let g = &l.graph;
    let mut uses = vec![0usize; g.ops.len()];
    for op in &g.ops {
        for n in operands(op) {
            uses[n.0 as usize] += 1;
        }
    }
    for r in l.roots() {
        uses[r.0 as usize] += 1;
    }
    let mut out = g.empty_like();
    let mut map = vec![Node(u32::MAX); g.ops.len()];
    for (i, op) in g.ops.iter().enumerate() {
        let m = |n: Node| map[n.0 as usize];
        let rebuilt = match op {
            Op::Contract(x, c, over2) if over2.len() == 1 => {
                let (inner, other) = match (g.op(*x), g.op(*c)) {
                    (Op::Contract(..), _) if uses[x.0 as usize] == 1 => (Some(*x), *c),
                    (_, Op::Contract(..)) if uses[c.0 as usize] == 1 => (Some(*c), *x),
                    _ => (None, *c),
                };
                inner.and_then(|inner| {
                    let Op::Contract(a, b, over1) = g.op(inner) else { return None };
                    chain(&mut out, sizes, (m(*a), m(*b), over1), (m(other), over2[0]))
                })
            }
            _ => None,
        };
        map[i] = match rebuilt {
            Some(n) => n,
            None => out.add(map_operands(op, m), g.axes[i].clone()),
        };
    }
    super::prune::prune(l.with_graph(out, |n| map[n.0 as usize]))
}

/// Σ_k (Σ_j a·b)·c, rebuilt as Σ_j a·(Σ_k b·c) (or with a and b swapped) when that is cheaper.
/// Returns `None` to keep the original order.
fn chain(g: &mut Graph, s: &Sizes, (a, b, over1): (Node, Node, &[Axis]), (c, k): (Node, Axis)) -> Option<Node> {
    let [j] = over1 else { return None };
    let cost = |g: &Graph, x: &[Axis], y: &[Axis]| s.elements(g, &super::build::union(x, y)) as u64;
    let ab = super::build::union(g.axes_of(a), g.axes_of(b)).into_iter().filter(|x| x != j).collect::<Vec<_>>();
    let original = cost(g, g.axes_of(a), g.axes_of(b)) + cost(g, &ab, g.axes_of(c));
    // k must belong to exactly one of a, b: that one pairs with c first.
    let (near, far) = match (g.axes_of(a).contains(&k), g.axes_of(b).contains(&k)) {
        (false, true) => (b, a),
        (true, false) => (a, b),
        _ => return None,
    };
    // The inner contraction axis j must not collide with c's axes; rename it to the scratch J.
    let scratch = if g.axes_of(c).contains(j) {
        if *j == Axis::J || g.axes_of(near).contains(&Axis::J) || g.axes_of(far).contains(&Axis::J) {
            return None;
        }
        Axis::J
    } else {
        *j
    };
    let near_axes: Vec<Axis> = g.axes_of(near).iter().map(|x| if x == j { scratch } else { *x }).collect();
    let y_axes: Vec<Axis> = super::build::union(&near_axes, g.axes_of(c)).into_iter().filter(|x| *x != k).collect();
    let far_axes: Vec<Axis> = g.axes_of(far).iter().map(|x| if x == j { scratch } else { *x }).collect();
    let alternative = cost(g, &near_axes, g.axes_of(c)) + cost(g, &far_axes, &y_axes);
    if alternative >= original {
        return None;
    }
    let near = g.rename(near, *j, scratch);
    let far = g.rename(far, *j, scratch);
    let y = g.contract(near, c, vec![k]);
    Some(g.contract(far, y, vec![scratch]))
}
