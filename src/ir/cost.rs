//! Cost model: floating-point operations and bytes moved per IR node at concrete sizes. Used by
//! `explain --ir` and by the reassociation pass to pick the cheaper order of a matrix chain.

use super::{Axis, Graph, Node, Op, SetSource};
use crate::check::typed::{Objective, StateKind};

/// Concrete sizes of a step.
#[derive(Clone, Debug)]
pub struct Sizes {
    /// Batch size.
    pub n: usize,
    /// Feature dimension.
    pub d: usize,
    /// Rows of each fifo by state index (capacity when full).
    pub fifo: Vec<usize>,
}

impl Sizes {
    /// The sizes of a step of `objective` at batch `n` and dimension `d`, with its fifos full.
    pub fn of(objective: &Objective, n: usize, d: usize) -> Sizes {
        let fifo = objective
            .states
            .iter()
            .map(|s| match s.kind {
                StateKind::Fifo { size, .. } => size,
                StateKind::Ema { .. } => 0,
            })
            .collect();
        Sizes { n, d, fifo }
    }

    /// The length of an axis.
    pub fn axis(&self, g: &Graph, axis: Axis) -> usize {
        match axis {
            Axis::N => self.n,
            Axis::D | Axis::E | Axis::J => self.d,
            Axis::K(_) => match g.source_of(axis) {
                Some(SetSource::Targets) => 2 * self.n,
                Some(SetSource::Batch(_)) => self.n,
                Some(SetSource::Fifo(i)) => self.fifo.get(i).copied().unwrap_or(0),
                None => 1,
            },
        }
    }

    /// Elements of a value over `axes`.
    pub fn elements(&self, g: &Graph, axes: &[Axis]) -> usize {
        axes.iter().map(|a| self.axis(g, *a)).product()
    }
}

/// (FLOPs, bytes at 4 bytes per element) of one node.
pub fn node_cost(g: &Graph, n: Node, s: &Sizes) -> (u64, u64) {
    let out = s.elements(g, g.axes_of(n)) as u64;
    let inputs: u64 = super::operands(g.op(n)).iter().map(|m| s.elements(g, g.axes_of(*m)) as u64).sum();
    let flops = match g.op(n) {
        Op::Contract(a, b, _) => {
            let all = super::build::union(g.axes_of(*a), g.axes_of(*b));
            2 * s.elements(g, &all) as u64
        }
        Op::Unary(..) | Op::Binary(..) => out,
        // A symmetric eigendecomposition, about 9 D³, and the product back.
        Op::MatrixPower(..) => 11 * (out as f64).powf(1.5) as u64,
        Op::Reduce(r, m, _) => {
            let input = s.elements(g, g.axes_of(*m)) as u64;
            if *r == super::Reduction::Sum {
                input
            } else {
                3 * input
            }
        }
        _ => 0,
    };
    let bytes = match g.op(n) {
        Op::Const(_) | Op::Param(_) | Op::BatchSize | Op::Dim | Op::AxisSize(_) | Op::Rename(..) => 0,
        _ => 4 * (inputs + out),
    };
    (flops, bytes)
}
