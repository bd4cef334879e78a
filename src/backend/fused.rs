//! Fused CPU kernels for the patterns `ir::fuse` finds, as candle custom ops: the contrastive
//! softmax-weighted sum without the [N, K] matrix, and GEMMs with an accumulating epilogue (which
//! also serve the ema update).

use super::reference::{align, Inputs};
use crate::ir::fuse::{scalar_chain, Candidates, Kernel, Scale};
use crate::ir::{Axis, Graph, Node, Op};
use crate::kernels::gemm::{gemm_accumulate, GemmAccumulate};
use crate::kernels::softmax_sum::{self, PartKind};
use candle_core::{DType, Result, Tensor};

fn value(values: &[Option<Tensor>], n: Node) -> &Tensor {
    values[n.0 as usize].as_ref().expect("kernel operands are evaluated first")
}

fn scale_value(s: &Scale, values: &[Option<Tensor>]) -> Result<f64> {
    let read = |n: &Node| value(values, *n).to_dtype(DType::F64)?.to_scalar::<f64>();
    let mut x = 1.0;
    for n in &s.mul {
        x *= read(n)?;
    }
    for n in &s.div {
        x /= read(n)?;
    }
    Ok(x)
}

/// How the kernels read each part of a softmax-sum's candidate set: an item with a batch axis is one row per sample,
/// one without is shared by all. The CPU and CUDA kernels both take this, and the CUDA source is generated for it.
pub fn part_kinds(g: &Graph, parts: &[Candidates]) -> Vec<PartKind> {
    parts
        .iter()
        .map(|p| match p {
            Candidates::Rows(_) => PartKind::Rows,
            Candidates::Item(i) if g.axes_of(*i).contains(&Axis::N) => PartKind::PerSample,
            Candidates::Item(_) => PartKind::Shared,
        })
        .collect()
}

/// Runs one kernel, producing the value of node `n`.
pub fn run(g: &Graph, kernel: &Kernel, n: Node, values: &[Option<Tensor>], x: &Inputs) -> Result<Tensor> {
    match kernel {
        Kernel::SoftmaxSum { u, scale, parts } => {
            let parts = part_kinds(g, parts)
                .into_iter()
                .zip(parts)
                .map(|(kind, Candidates::Rows(n) | Candidates::Item(n))| softmax_sum::Part {
                    kind,
                    values: value(values, *n).clone(),
                })
                .collect();
            softmax_sum::softmax_sum(value(values, *u), scale_value(scale, values)?, parts)
        }
        Kernel::GemmAccumulate { addend, negate, scale, a, b, over } => {
            let out = g.axes_of(n);
            let shape: Vec<usize> = out.iter().map(|ax| x.size(g, *ax)).collect::<Result<_>>()?;
            let addend = align(value(values, *addend), g.axes_of(*addend), out)?.broadcast_as(shape)?;
            let beta = scale_value(scale, values)? * if *negate { -1.0 } else { 1.0 };
            product(g, out, (*a, *b, *over), &addend, 1.0, beta, values)
        }
    }
}

/// `alpha·addend + beta·(a ⊗ b)` laid out over `out`, choosing operand order and transposes from
/// the axes so that no operand is copied.
fn product(
    g: &Graph,
    out: &[Axis],
    (a, b, over): (Node, Node, Axis),
    addend: &Tensor,
    alpha: f64,
    beta: f64,
    values: &[Option<Tensor>],
) -> Result<Tensor> {
    let free = |m: Node| g.axes_of(m).iter().copied().find(|ax| *ax != over);
    let (fa, fb) = (free(a), free(b));
    // The first output axis must come from the left operand.
    let (left, right) = if fa == Some(out[0]) && fb == Some(out[1]) {
        (a, b)
    } else if fb == Some(out[0]) && fa == Some(out[1]) {
        (b, a)
    } else {
        candle_core::bail!("fused gemm: operand axes do not form the output {out:?}")
    };
    let ta = g.axes_of(left)[0] == over;
    let tb = g.axes_of(right)[1] == over;
    gemm_accumulate(addend, value(values, left), value(values, right), GemmAccumulate { beta, alpha, ta, tb })
}

/// The fused ema update `rate·old + (1 − rate)·value` when the value is a scaled matrix product
/// (`mean(outer(t, t) for t in targets)` is `TᵀT / 2N`): one GEMM accumulating into the old value.
/// `None` when the value has another form.
pub fn ema_update(g: &Graph, value_node: Node, old: &Tensor, rate: f64, x: &Inputs) -> Option<Result<Tensor>> {
    let (scale, core) = scalar_chain(g, value_node);
    let Op::Contract(a, b, over) = g.op(core) else { return None };
    let out = g.axes_of(value_node);
    if out.len() != 2 || over.len() != 1 || g.axes_of(*a).len() != 2 || g.axes_of(*b).len() != 2 {
        return None;
    }
    let mut roots = vec![*a, *b];
    roots.extend(scale.mul.iter().chain(&scale.div));
    let result = (|| {
        let computed = super::execute(g, &Default::default(), &roots, x)?;
        let mut values: Vec<Option<Tensor>> = vec![None; g.ops.len()];
        for (n, v) in roots.iter().zip(computed) {
            values[n.0 as usize] = Some(v);
        }
        let beta = (1.0 - rate) * scale_value(&scale, &values)?;
        product(g, out, (*a, *b, over[0]), old, rate, beta, &values)
    })();
    Some(result)
}
