//! IR execution on candle tensors, behind one seam: [`execute`] runs the graph node by node with
//! the `reference` backend (plain candle operations — the oracle), except where a fused kernel
//! (`fused`, custom CPU ops) was chosen for a node. A CUDA backend plugs in at the same place.

pub mod fused;
pub mod reference;

use crate::ir::fuse::Kernel;
use crate::ir::{operands, Graph, Node};
use candle_core::{Result, Tensor};
use reference::Inputs;
use std::collections::HashMap;

/// Which implementation a plan runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Plain candle ops, op by op: the oracle.
    Reference,
    /// Fused custom CPU kernels where a pattern allows, reference ops elsewhere.
    Fused,
}

/// Evaluates `roots`, computing only the nodes they need; a node with a kernel is computed by it.
pub fn execute(g: &Graph, kernels: &HashMap<Node, Kernel>, roots: &[Node], inputs: &Inputs) -> Result<Vec<Tensor>> {
    let deps = |n: Node| kernels.get(&n).map_or_else(|| operands(g.op(n)), Kernel::operands);
    let mut needed = vec![false; g.ops.len()];
    let mut stack: Vec<Node> = roots.to_vec();
    while let Some(n) = stack.pop() {
        if !std::mem::replace(&mut needed[n.0 as usize], true) {
            stack.extend(deps(n));
        }
    }
    let mut values: Vec<Option<Tensor>> = vec![None; g.ops.len()];
    for i in 0..g.ops.len() {
        if needed[i] {
            let n = Node(i as u32);
            let value = match kernels.get(&n) {
                Some(kernel) => fused::run(g, kernel, n, &values, inputs)?,
                None => reference::eval_node(g, n, &values, inputs)?,
            };
            values[i] = Some(value);
        }
    }
    Ok(roots.iter().map(|r| values[r.0 as usize].clone().expect("root evaluated")).collect())
}
