//! The checked objective: every name resolved, every expression typed. This is what lowering reads;
//! it holds no syntax, only meaning (spans are kept for later diagnostics).

use super::types::Type;
use crate::diagnostic::Span;
use crate::syntax::ast::{BinOp, Range};
use std::fmt;

/// A checked file: its objectives and the recipe of the one its `train` block names.
#[derive(Clone, Debug)]
pub struct Program {
    /// Objectives in source order.
    pub objectives: Vec<Objective>,
    /// The objective named by the `train` block, if the file has one.
    pub recipe_target: Option<String>,
    /// The resolved recipe (defaults where the file is silent).
    pub recipe: super::recipe::Recipe,
}

impl Program {
    /// The objective called `name`, or the only one when `name` is `None`.
    pub fn objective(&self, name: Option<&str>) -> Option<&Objective> {
        match name {
            Some(name) => self.objectives.iter().find(|o| o.name == name),
            None => self.objectives.first(),
        }
    }
}

/// Which of UniGrad's families an objective belongs to, read off the shape of its negative term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// A softmax-weighted sum over a set of features (MoCo, SimCLR).
    Contrastive,
    /// Weighted sums over the batch with similarity weights (Barlow Twins, VICReg).
    Decorrelation,
    /// A correlation matrix kept as state, applied to u1 (UniGrad, BYOL/SimSiam read through F).
    CorrelationMatrix,
    /// No negative term (BYOL, SimSiam with a predictor).
    PositiveOnly,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Contrastive => "contrastive",
            Family::Decorrelation => "decorrelation",
            Family::CorrelationMatrix => "correlation-matrix",
            Family::PositiveOnly => "positive-only",
        })
    }
}

/// A checked objective.
#[derive(Clone, Debug)]
pub struct Objective {
    /// Its name.
    pub name: String,
    /// Hyper-parameters, in declaration order.
    pub params: Vec<Param>,
    /// Named expressions, in declaration order.
    pub lets: Vec<Let>,
    /// Weight families, in declaration order.
    pub weights: Vec<Weight>,
    /// States, in declaration order.
    pub states: Vec<State>,
    /// The pull term; `None` only when the objective is a batch-level `total` alone.
    pub positive: Option<TExpr>,
    /// The push term; `None` means zero.
    pub negative: Option<TExpr>,
    /// The balance; `None` means 1.
    pub balance: Option<TExpr>,
    /// The closed-form per-sample loss, when given.
    pub loss: Option<TExpr>,
    /// The batch-level loss (`total = ...`), a scalar over the whole batch that `form = loss` differentiates
    /// through every online feature.
    pub total: Option<TExpr>,
    /// Whether the gradient is averaged with the mirrored views.
    pub symmetric: bool,
    /// Whether `positive`, `negative` and `balance` were derived from `loss` rather than written.
    pub derived: bool,
    /// Its family.
    pub family: Family,
}

/// `param NAME = VALUE in RANGE`.
#[derive(Clone, Debug)]
pub struct Param {
    /// Name.
    pub name: String,
    /// Current value (the default, or an override).
    pub value: f64,
    /// Allowed values.
    pub range: Option<Range>,
}

/// `let NAME = EXPR`.
#[derive(Clone, Debug)]
pub struct Let {
    /// Name.
    pub name: String,
    /// Value.
    pub value: TExpr,
}

/// `weight NAME(VAR in SET) = BODY`.
#[derive(Clone, Debug)]
pub struct Weight {
    /// Name.
    pub name: String,
    /// The index variable bound in `body`.
    pub var: VarId,
    /// The set the family ranges over.
    pub set: TExpr,
    /// The weight of one element (scalar).
    pub body: TExpr,
}

/// A value kept across training steps.
#[derive(Clone, Debug)]
pub struct State {
    /// Name.
    pub name: String,
    /// How it is updated.
    pub kind: StateKind,
    /// Its type (mat or vec for ema, a set for fifo).
    pub ty: Type,
}

/// The two kinds of state.
#[derive(Clone, Debug)]
pub enum StateKind {
    /// `S ← rate·S + (1 − rate)·value`, first step `S ← value`; updated before the gradient.
    Ema {
        /// The rate (scalar, global).
        rate: TExpr,
        /// The batch-level value.
        value: TExpr,
    },
    /// A queue of `size` vectors: read before the gradient, the set pushed after.
    Fifo {
        /// Capacity.
        size: usize,
        /// What each step pushes.
        set: TExpr,
    },
}

/// An index variable, unique within an objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VarId(pub usize);

/// Names every objective sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Builtin {
    /// Online feature of this view (normalised).
    U1,
    /// Online feature of the other view.
    U2,
    /// Target feature of this view.
    T1,
    /// Target feature of the other view.
    T2,
    /// Online output of this view before L2 normalisation (a field of batch samples, in `total` only).
    Z1,
    /// Online output of the other view before L2 normalisation.
    Z2,
    /// Batch size.
    N,
    /// Feature dimension.
    D,
}

impl Builtin {
    /// The name as written.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::U1 => "u1",
            Builtin::U2 => "u2",
            Builtin::T1 => "t1",
            Builtin::T2 => "t2",
            Builtin::Z1 => "z1",
            Builtin::Z2 => "z2",
            Builtin::N => "N",
            Builtin::D => "D",
        }
    }
}

/// The elementwise and reducing functions of the language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Func {
    /// Inner product.
    Dot,
    /// Outer product.
    Outer,
    /// e^x.
    Exp,
    /// Natural log.
    Log,
    /// Square root.
    Sqrt,
    /// max(x, 0).
    Relu,
    /// Euclidean norm.
    Norm,
    /// x / ‖x‖.
    Normalize,
    /// Elementwise minimum.
    Min,
    /// Elementwise maximum.
    Max,
    /// Sum of a vector's or a matrix's entries.
    SumEntries,
    /// Mean of a vector's or a matrix's entries.
    MeanEntries,
    /// The D × D identity.
    Eye,
    /// Its argument's value, through which no gradient flows.
    StopGrad,
    /// |x|.
    Abs,
    /// tanh x.
    Tanh,
    /// 1 / (1 + e^−x).
    Sigmoid,
    /// x^p for a scalar p (integer literals 0–4 by multiplication, otherwise e^(p·ln x), so x > 0).
    Pow,
    /// min(max(x, lo), hi).
    Clamp,
    /// The diagonal of a matrix, as a vector.
    Diag,
    /// The sum of a matrix's diagonal.
    Trace,
    /// A matrix's transpose.
    Transpose,
    /// `where(c, a, b)`: `a` where `c` is not 0, `b` elsewhere (elementwise).
    Where,
    /// log Σ exp of a vector's entries.
    LogSumExpEntries,
    /// The softmax of a vector's entries (a vector summing to 1).
    SoftmaxEntries,
    /// The square root of a global symmetric matrix.
    SqrtM,
    /// The inverse square root of a global symmetric matrix (whitening).
    InvSqrtM,
}

impl Func {
    /// The name as written.
    pub fn name(self) -> &'static str {
        match self {
            Func::Dot => "dot",
            Func::Outer => "outer",
            Func::Exp => "exp",
            Func::Log => "log",
            Func::Sqrt => "sqrt",
            Func::Relu => "relu",
            Func::Norm => "norm",
            Func::Normalize => "normalize",
            Func::Min => "min",
            Func::Max => "max",
            Func::SumEntries => "sum",
            Func::MeanEntries => "mean",
            Func::Eye => "eye",
            Func::StopGrad => "stopgrad",
            Func::Abs => "abs",
            Func::Tanh => "tanh",
            Func::Sigmoid => "sigmoid",
            Func::Pow => "pow",
            Func::Clamp => "clamp",
            Func::Diag => "diag",
            Func::Trace => "trace",
            Func::Transpose => "transpose",
            Func::Where => "where",
            Func::LogSumExpEntries => "logsumexp",
            Func::SoftmaxEntries => "softmax",
            Func::SqrtM => "sqrtm",
            Func::InvSqrtM => "inv_sqrtm",
        }
    }
}

/// Reductions over a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduce {
    /// Σ.
    Sum,
    /// Σ / |S|.
    Mean,
    /// log Σ exp.
    LogSumExp,
    /// The largest element (−inf over an empty set).
    Max,
    /// The smallest element (+inf over an empty set).
    Min,
}

impl Reduce {
    /// The name as written.
    pub fn name(self) -> &'static str {
        match self {
            Reduce::Sum => "sum",
            Reduce::Mean => "mean",
            Reduce::LogSumExp => "logsumexp",
            Reduce::Max => "max",
            Reduce::Min => "min",
        }
    }
}

/// The element a comprehension leaves out of its set (`for v in targets if v != t1`): the anchor sample's own entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Exclusion {
    /// Whose entry: the current sample (`None`) or an outer comprehension's sample variable.
    pub anchor: Option<VarId>,
    /// In a two-view set (`targets`, `online`): the second view's rows (`t2`, `u2`) rather than the first's.
    pub second_view: bool,
}

/// A typed expression.
#[derive(Clone, Debug)]
pub struct TExpr {
    /// What it computes.
    pub kind: TKind,
    /// Its type.
    pub ty: Type,
    /// Whether it depends on the current sample (`u1 u2 t1 t2`), directly or through a let.
    pub per_sample: bool,
    /// Where it was written.
    pub span: Span,
}

/// The forms of a typed expression.
#[derive(Clone, Debug)]
pub enum TKind {
    /// A constant.
    Const(f64),
    /// `true` / `false`.
    Bool(bool),
    /// A param, by index into [`Objective::params`].
    Param(usize),
    /// A let, by index into [`Objective::lets`].
    Let(usize),
    /// A state, by index into [`Objective::states`].
    State(usize),
    /// A built-in name.
    Builtin(Builtin),
    /// A comprehension's or weight's index variable.
    Index(VarId, String),
    /// `targets`: both views' target features of the whole batch (2N).
    Targets,
    /// `batch`: the samples of the batch (N).
    Batch,
    /// `online`: both views' online features of the whole batch (2N); live in `total`, constants elsewhere.
    Online,
    /// `[a, b, ...]`.
    List(Vec<TExpr>),
    /// Unary minus.
    Neg(Box<TExpr>),
    /// A binary operation.
    Binary(BinOp, Box<TExpr>, Box<TExpr>),
    /// `sample.u1` etc.
    Field(Box<TExpr>, Builtin),
    /// A function call.
    Call(Func, Vec<TExpr>),
    /// `op(body for var in set)`.
    Reduce {
        /// Which reduction.
        op: Reduce,
        /// The index variable.
        var: VarId,
        /// Its name, for display.
        var_name: String,
        /// The set.
        set: Box<TExpr>,
        /// The summand.
        body: Box<TExpr>,
        /// `if var != ELEMENT`: what is left out, and the element as written.
        exclude: Option<(Exclusion, Box<TExpr>)>,
    },
    /// `softmax(arg)`, normalised over the index variable `var`.
    Softmax {
        /// The variable it normalises over.
        var: VarId,
        /// The logit.
        arg: Box<TExpr>,
    },
    /// `w(v)`: a weight family evaluated at an index variable.
    WeightAt {
        /// Index into [`Objective::weights`].
        weight: usize,
        /// The family's name, for display.
        name: String,
        /// The variable.
        var: VarId,
        /// Its name, for display.
        var_name: String,
    },
    /// `nearest(x, set)`: the element of the set with the largest inner product with `x` (the mean of the tied
    /// ones; the zero vector over an empty set), no gradient through the choice; `expanded` is that, written with
    /// max and a comparison, which is what lowering computes.
    Nearest {
        /// The query.
        x: Box<TExpr>,
        /// The set searched.
        set: Box<TExpr>,
        /// `sum((dot(x, v) >= m) * v for v in set) / max(sum(dot(x, v) >= m for v in set), 1)` with
        /// `m = max(dot(x, w) for w in set)`.
        expanded: Box<TExpr>,
    },
    /// Something already reported as wrong.
    Error,
}

impl TExpr {
    /// The direct sub-expressions (of `nearest`, its expansion: what is computed).
    pub fn children(&self) -> Vec<&TExpr> {
        match &self.kind {
            TKind::List(items) | TKind::Call(_, items) => items.iter().collect(),
            TKind::Neg(a) | TKind::Field(a, _) | TKind::Softmax { arg: a, .. } => vec![a],
            TKind::Binary(_, a, b) => vec![a, b],
            TKind::Reduce { set, body, .. } => vec![set, body],
            TKind::Nearest { expanded, .. } => vec![expanded],
            _ => vec![],
        }
    }

    /// Visits this expression and every sub-expression, parents first.
    pub fn walk<'s>(&'s self, f: &mut impl FnMut(&'s TExpr)) {
        f(self);
        for c in self.children() {
            c.walk(f);
        }
    }

    /// Whether any sub-expression satisfies `pred`.
    pub fn any(&self, pred: &impl Fn(&TExpr) -> bool) -> bool {
        let mut found = false;
        self.walk(&mut |e| found |= pred(e));
        found
    }
}

/// Source-like text of a typed expression with names resolved, e.g. `F @ u1`; used by `explain`
/// and to compare sets structurally.
pub struct Show<'a> {
    /// The expression.
    pub expr: &'a TExpr,
    /// The objective it belongs to, to name params, lets and states.
    pub objective: &'a Objective,
}

impl fmt::Display for Show<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_expr(f, self.expr, self.objective, 0)
    }
}

fn write_expr(f: &mut fmt::Formatter<'_>, e: &TExpr, o: &Objective, outer: u8) -> fmt::Result {
    let show = |f: &mut fmt::Formatter<'_>, e: &TExpr, p: u8| write_expr(f, e, o, p);
    match &e.kind {
        TKind::Const(x) => write!(f, "{x}"),
        TKind::Bool(b) => write!(f, "{b}"),
        TKind::Param(i) => f.write_str(&o.params[*i].name),
        TKind::Let(i) => f.write_str(&o.lets[*i].name),
        TKind::State(i) => f.write_str(&o.states[*i].name),
        TKind::Builtin(b) => f.write_str(b.name()),
        TKind::Index(_, name) => f.write_str(name),
        TKind::Targets => f.write_str("targets"),
        TKind::Batch => f.write_str("batch"),
        TKind::Online => f.write_str("online"),
        TKind::List(items) => {
            f.write_str("[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                show(f, item, 0)?;
            }
            f.write_str("]")
        }
        TKind::Neg(a) => {
            f.write_str("-")?;
            show(f, a, 4)
        }
        TKind::Binary(op, a, b) => {
            let p = op.precedence();
            if p < outer {
                f.write_str("(")?;
            }
            show(f, a, p)?;
            write!(f, " {} ", op.symbol())?;
            show(f, b, p + 1)?;
            if p < outer {
                f.write_str(")")?;
            }
            Ok(())
        }
        TKind::Field(a, field) => {
            show(f, a, 5)?;
            write!(f, ".{}", field.name())
        }
        TKind::Call(func, args) => {
            write!(f, "{}(", func.name())?;
            for (i, a) in args.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                show(f, a, 0)?;
            }
            f.write_str(")")
        }
        TKind::Reduce { op, var_name, set, body, exclude, .. } => {
            write!(f, "{}(", op.name())?;
            show(f, body, 0)?;
            write!(f, " for {var_name} in ")?;
            show(f, set, 0)?;
            if let Some((_, element)) = exclude {
                write!(f, " if {var_name} != ")?;
                show(f, element, 0)?;
            }
            f.write_str(")")
        }
        TKind::Softmax { arg, .. } => {
            f.write_str("softmax(")?;
            show(f, arg, 0)?;
            f.write_str(")")
        }
        TKind::WeightAt { name, var_name, .. } => write!(f, "{name}({var_name})"),
        TKind::Nearest { x, set, .. } => {
            f.write_str("nearest(")?;
            show(f, x, 0)?;
            f.write_str(", ")?;
            show(f, set, 0)?;
            f.write_str(")")
        }
        TKind::Error => f.write_str("?"),
    }
}
