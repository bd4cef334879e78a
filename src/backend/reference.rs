//! The reference backend: evaluates IR nodes in topological order with plain candle operations.
//! Tensors are laid out with their node's axes in canonical order; broadcasting inserts unit axes;
//! contractions are permuted and reshaped into one batched matrix product. Works in f32 and f64,
//! and keeps candle's autodiff graph (so `verify` can differentiate a loss through it).

use crate::collective::{tensor, Collective};
use crate::ir::{Axis, Binary, Feature, Graph, Node, Op, Reduction, SetSource, Unary};
use candle_core::{DType, Device, Result, Tensor};
use std::collections::HashMap;

/// Everything a step's evaluation reads besides the graph.
pub struct Inputs<'a> {
    /// Features of the current view order: u1, u2, t1, t2, each [N, D].
    pub features: [&'a Tensor; 4],
    /// Param values by index.
    pub params: &'a [f64],
    /// Ema state values by state index (`None` for fifos or not yet set).
    pub ema: &'a [Option<Tensor>],
    /// Fifo contents by state index, [fill, D] (`None` for emas).
    pub fifo: &'a [Option<Tensor>],
    /// The online outputs before L2 normalisation, z1 and z2 [N, D], where the caller has them (`total` reads them).
    pub z: Option<[&'a Tensor; 2]>,
    /// Values that `stopgrad` nodes take instead of their operand's (a finite-difference check holds them fixed).
    pub frozen: Option<&'a HashMap<Node, Tensor>>,
    /// The ranks a per-rank graph runs on (`None` for a single-process graph): the features are this rank's rows.
    pub comm: Option<&'a dyn Collective>,
}

impl Inputs<'_> {
    fn feature(&self, f: Feature) -> Result<&Tensor> {
        Ok(match f {
            Feature::U1 | Feature::U2 | Feature::T1 | Feature::T2 => self.features[f as usize],
            Feature::Z1 | Feature::Z2 => match self.z {
                Some(z) => z[f as usize - Feature::Z1 as usize],
                None => candle_core::bail!(
                    "`.z1`/`.z2` are read, but this evaluation was given no pre-normalisation features"
                ),
            },
        })
    }

    /// This rank's rows of the batch.
    fn n(&self) -> usize {
        self.features[0].dims()[0]
    }

    /// The ranks' rows of the batch together: the batch size the objective means by `N`.
    fn global_n(&self) -> usize {
        self.n() * self.ranks()
    }

    fn ranks(&self) -> usize {
        self.comm.map_or(1, |c| c.ranks())
    }

    fn comm(&self, g: &Graph) -> Result<&dyn Collective> {
        match self.comm {
            Some(c) if c.ranks() == g.ranks => Ok(c),
            Some(c) => candle_core::bail!("a graph for {} ranks run on {}", g.ranks, c.ranks()),
            None => candle_core::bail!("a graph for {} ranks run without a collective", g.ranks),
        }
    }

    fn d(&self) -> usize {
        self.features[0].dims()[1]
    }

    fn dtype(&self) -> DType {
        self.features[0].dtype()
    }

    fn device(&self) -> &Device {
        self.features[0].device()
    }

    /// The run-time length of an axis in this rank's values: a sharded axis holds this rank's rows only.
    pub fn size(&self, g: &Graph, axis: Axis) -> Result<usize> {
        let rows = if g.is_sharded(axis) { self.n() } else { self.global_n() };
        Ok(match axis {
            Axis::N => self.n(),
            Axis::D | Axis::E | Axis::J => self.d(),
            Axis::K(_) => match g.source_of(axis) {
                Some(SetSource::Targets) => 2 * rows,
                Some(SetSource::Batch(_)) => rows,
                Some(SetSource::Fifo(i)) => self.fifo.get(i).and_then(|f| f.as_ref()).map_or(0, |f| f.dims()[0]),
                None => candle_core::bail!("set axis {axis} has no source"),
            },
        })
    }

    /// A rank-0 tensor of the inputs' dtype.
    pub fn scalar(&self, x: f64) -> Result<Tensor> {
        Tensor::new(x, self.device())?.to_dtype(self.dtype())
    }
}

/// Reshapes `t` (laid out over `from`) to the rank of `to`, with unit axes where `from` lacks one.
pub fn align(t: &Tensor, from: &[Axis], to: &[Axis]) -> Result<Tensor> {
    if from == to {
        return Ok(t.clone());
    }
    let dims = t.dims();
    let shape: Vec<usize> = to.iter().map(|a| from.iter().position(|x| x == a).map_or(1, |i| dims[i])).collect();
    t.reshape(shape)
}

/// Evaluates one node from its operands' values.
pub fn eval_node(g: &Graph, n: Node, values: &[Option<Tensor>], x: &Inputs) -> Result<Tensor> {
    let get = |m: &Node| values[m.0 as usize].as_ref().expect("operands precede users");
    let axes = g.axes_of(n);
    Ok(match g.op(n) {
        Op::Const(v) => x.scalar(*v)?,
        Op::Param(i) => x.scalar(x.params[*i])?,
        Op::BatchSize => x.scalar(x.global_n() as f64)?,
        Op::Dim => x.scalar(x.d() as f64)?,
        Op::AxisSize(a) => {
            let ranks = if g.is_sharded(*a) { x.ranks() } else { 1 };
            x.scalar((x.size(g, *a)? * ranks) as f64)?
        }
        Op::Feature(f) => x.feature(*f)?.clone(),
        Op::SetRows(src, _) => match src {
            SetSource::Targets => Tensor::cat(&[x.feature(Feature::T1)?, x.feature(Feature::T2)?], 0)?.detach(),
            SetSource::Batch(f) => x.feature(*f)?.detach(),
            SetSource::Fifo(i) => match x.fifo.get(*i).and_then(|f| f.as_ref()) {
                Some(t) => t.detach(),
                None => Tensor::zeros((0, x.d()), x.dtype(), x.device())?,
            },
        },
        Op::Ema(i) => match x.ema.get(*i).and_then(|e| e.as_ref()) {
            Some(t) => t.detach(),
            None => candle_core::bail!("ema state #{i} is read before it was set"),
        },
        Op::Eye => Tensor::eye(x.d(), x.dtype(), x.device())?,
        Op::Keep(rows, cols, offset) => {
            let (r, c) = (x.size(g, *rows)?, x.size(g, *cols)?);
            // The own element of this rank's row i is row i of this rank's block of the gathered set.
            let first_row = if g.is_sharded(*rows) { x.comm(g)?.rank() * r } else { 0 };
            let shift = first_row + if *offset { x.global_n() } else { 0 };
            let data: Vec<f64> = (0..r * c).map(|k| if k % c == k / c + shift { 0.0 } else { 1.0 }).collect();
            let mask = Tensor::from_vec(data, (r, c), x.device())?.to_dtype(x.dtype())?;
            if axes == [*rows, *cols] {
                mask
            } else {
                mask.t()?.contiguous()?
            }
        }
        Op::Rename(m, from, to) => {
            let src_axes = g.axes_of(*m);
            let renamed: Vec<Axis> = src_axes.iter().map(|a| if a == from { *to } else { *a }).collect();
            let perm: Vec<usize> =
                axes.iter().map(|a| renamed.iter().position(|r| r == a).expect("same axes")).collect();
            if perm.iter().enumerate().all(|(i, p)| i == *p) {
                get(m).clone()
            } else {
                get(m).permute(perm)?
            }
        }
        Op::Unary(u, m) => {
            let t = get(m);
            match u {
                Unary::Neg => t.neg()?,
                Unary::Exp => t.exp()?,
                Unary::Log => t.log()?,
                Unary::Sqrt => t.sqrt()?,
                Unary::Relu => t.relu()?,
                Unary::Abs => t.abs()?,
                Unary::Tanh => t.tanh()?,
                Unary::StopGrad => match x.frozen.and_then(|f| f.get(&n)) {
                    Some(v) => v.clone(),
                    None => t.detach(),
                },
            }
        }
        Op::Binary(b, l, r) => {
            let a = align(get(l), g.axes_of(*l), axes)?;
            let c = align(get(r), g.axes_of(*r), axes)?;
            match b {
                Binary::Add => a.broadcast_add(&c)?,
                Binary::Sub => a.broadcast_sub(&c)?,
                Binary::Mul => a.broadcast_mul(&c)?,
                Binary::Div => a.broadcast_div(&c)?,
                Binary::Min => a.broadcast_minimum(&c)?,
                Binary::Lt => a.broadcast_lt(&c)?.to_dtype(x.dtype())?,
                Binary::Le => a.broadcast_le(&c)?.to_dtype(x.dtype())?,
                Binary::Pick => {
                    let shape = a.shape().broadcast_shape_binary_op(c.shape(), "pick")?;
                    let (mask, value) = (a.broadcast_as(&shape)?, c.broadcast_as(&shape)?);
                    mask.ne(0.0)?.where_cond(&value, &value.zeros_like()?)?
                }
                Binary::Max => a.broadcast_maximum(&c)?,
                Binary::LogAddExp => {
                    let m = a.broadcast_maximum(&c)?.detach();
                    let sum = (a.broadcast_sub(&m)?.exp()? + c.broadcast_sub(&m)?.exp()?)?;
                    (sum.log()? + m)?
                }
            }
        }
        Op::Contract(l, r, over) => contract(g, x, (get(l), g.axes_of(*l)), (get(r), g.axes_of(*r)), over, axes)?,
        Op::MatrixPower(p, m) => crate::kernels::matfn::symmetric_power(get(m), p.exponent())?,
        Op::Gather(m, _, _, parts) => tensor::gather_rows(x.comm(g)?, get(m), *parts as usize)?,
        Op::AllReduce(Reduction::Sum, m) => tensor::all_reduce_sum(x.comm(g)?, get(m))?,
        Op::AllReduce(red, m) => reduce(g, x, *red, &tensor::stack_ranks(x.comm(g)?, get(m))?, 0, axes)?,
        Op::Reduce(red, m, axis) => {
            let src_axes = g.axes_of(*m);
            let dim = src_axes.iter().position(|a| a == axis).expect("reduced axis present");
            reduce(g, x, *red, get(m), dim, axes)?
        }
    })
}

/// `t` reduced over `dim`, into a value over `axes`.
fn reduce(g: &Graph, x: &Inputs, red: Reduction, t: &Tensor, dim: usize, axes: &[Axis]) -> Result<Tensor> {
    Ok(match red {
        Reduction::Sum => t.sum(dim)?,
        Reduction::Max if t.dims()[dim] == 0 => {
            let shape: Vec<usize> = axes.iter().map(|a| x.size(g, *a)).collect::<Result<_>>()?;
            (Tensor::ones(shape, x.dtype(), x.device())? * f64::NEG_INFINITY)?
        }
        Reduction::Max => t.max(dim)?,
        Reduction::LogSumExp if t.dims()[dim] == 0 => {
            let shape: Vec<usize> = axes.iter().map(|a| x.size(g, *a)).collect::<Result<_>>()?;
            (Tensor::ones(shape, x.dtype(), x.device())? * f64::NEG_INFINITY)?
        }
        Reduction::LogSumExp => {
            // A row whose every entry is −inf (a part left empty by an exclusion, `online if v != u1` at
            // N = 1) is −inf with a zero gradient, not the NaN of −inf − (−inf): its maximum is taken as 0,
            // 1 is added under the log, and −inf added back as a constant.
            let m = t.max_keepdim(dim)?.detach();
            let empty = m.broadcast_eq(&x.scalar(f64::NEG_INFINITY)?)?;
            let zeros = m.zeros_like()?;
            let m = empty.where_cond(&zeros, &m)?;
            let filler = empty.to_dtype(x.dtype())?;
            let penalty = empty.where_cond(&(zeros.ones_like()? * f64::NEG_INFINITY)?, &zeros)?;
            let sum = (t.broadcast_sub(&m)?.exp()?.sum_keepdim(dim)? + filler)?;
            ((sum.log()? + m)? + penalty)?.squeeze(dim)?
        }
    })
}

/// Σ over `over` of a·b, as one batched matrix product: shared axes batch, the others are rows
/// (from a) and columns (from b).
fn contract(
    g: &Graph,
    x: &Inputs,
    (a, a_axes): (&Tensor, &[Axis]),
    (b, b_axes): (&Tensor, &[Axis]),
    over: &[Axis],
    out_axes: &[Axis],
) -> Result<Tensor> {
    let size = |axis: &Axis| x.size(g, *axis);
    let batch: Vec<Axis> = a_axes.iter().filter(|ax| b_axes.contains(ax) && !over.contains(ax)).copied().collect();
    let rows: Vec<Axis> = a_axes.iter().filter(|ax| !b_axes.contains(ax)).copied().collect();
    let cols: Vec<Axis> = b_axes.iter().filter(|ax| !a_axes.contains(ax)).copied().collect();
    let order = |axes: &[Axis], first: &[Axis], second: &[Axis], third: &[Axis]| -> Vec<usize> {
        first
            .iter()
            .chain(second)
            .chain(third)
            .map(|ax| axes.iter().position(|a| a == ax).expect("axis present"))
            .collect()
    };
    let product = |axes: &[Axis]| -> Result<usize> { axes.iter().map(size).product() };
    let (bn, rn, cn, kn) = (product(&batch)?, product(&rows)?, product(&cols)?, product(over)?);
    let result_axes: Vec<Axis> = batch.iter().chain(&rows).chain(&cols).copied().collect();
    let result_dims: Vec<usize> = result_axes.iter().map(size).collect::<Result<_>>()?;
    let result = if bn * rn * cn * kn == 0 {
        Tensor::zeros(result_dims, x.dtype(), x.device())?
    } else {
        let a = a.permute(order(a_axes, &batch, &rows, over))?.reshape((bn, rn, kn))?;
        let b = b.permute(order(b_axes, &batch, over, &cols))?.reshape((bn, kn, cn))?;
        let m = if bn == 1 { a.squeeze(0)?.matmul(&b.squeeze(0)?)? } else { a.matmul(&b)? };
        m.reshape(result_dims)?
    };
    let perm: Vec<usize> =
        out_axes.iter().map(|ax| result_axes.iter().position(|a| a == ax).expect("axis present")).collect();
    if perm.iter().enumerate().all(|(i, p)| i == *p) {
        Ok(result)
    } else {
        result.permute(perm)?.contiguous()
    }
}
