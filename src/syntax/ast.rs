//! The syntax tree: what the user wrote, with spans, before any meaning is given to names.

use crate::diagnostic::Span;

/// A name as written, with where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    /// The name.
    pub name: String,
    /// Where.
    pub span: Span,
}

/// A parsed file: its blocks in source order. Blocks that failed to parse are absent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct File {
    /// `objective` blocks.
    pub objectives: Vec<Objective>,
    /// `train` blocks (the checker accepts at most one).
    pub trains: Vec<Train>,
    /// Blocks left out because they failed to parse (already reported), so that the checker does
    /// not report follow-on errors about them, such as a train block's objective being missing.
    pub unparsed: Vec<Unparsed>,
}

/// What is known of a block that failed to parse.
#[derive(Clone, Debug, PartialEq)]
pub struct Unparsed {
    /// `objective` or `train`; empty for text before the first block.
    pub keyword: String,
    /// The block's name, when one follows the keyword.
    pub name: Option<String>,
}

impl File {
    /// Whether a block that failed to parse may be the objective called `name`.
    pub fn may_have_unparsed_objective(&self, name: &str) -> bool {
        self.unparsed.iter().any(|u| u.keyword == "objective" && u.name.as_deref().is_none_or(|n| n == name))
    }

    /// Whether a block that failed to parse may be the train block of `name`.
    pub fn may_have_unparsed_train(&self, name: &str) -> bool {
        self.unparsed.iter().any(|u| u.keyword == "train" && u.name.as_deref().is_none_or(|n| n == name))
    }
}

/// `objective NAME { ... }`.
#[derive(Clone, Debug, PartialEq)]
pub struct Objective {
    /// Its name.
    pub name: Ident,
    /// Its declarations, in source order.
    pub decls: Vec<Decl>,
    /// The whole block.
    pub span: Span,
}

/// One declaration inside an objective.
#[derive(Clone, Debug, PartialEq)]
pub enum Decl {
    /// `param NAME = LITERAL [in RANGE]`.
    Param {
        /// The name.
        name: Ident,
        /// The literal default.
        default: f64,
        /// Where the default is written.
        default_span: Span,
        /// The optional range.
        range: Option<Range>,
    },
    /// `let NAME = EXPR`, or `let NAME(PARAM) = EXPR`: a function of one value, expanded where it is called.
    Let {
        /// The name.
        name: Ident,
        /// The function's parameter, if it is one.
        param: Option<Ident>,
        /// The value (the function's body).
        value: Expr,
    },
    /// `weight NAME(VAR in SET) = EXPR`.
    Weight {
        /// The family's name.
        name: Ident,
        /// The index variable.
        var: Ident,
        /// The set it ranges over.
        set: Expr,
        /// The weight of one element.
        body: Expr,
    },
    /// `state NAME = ema(...)` or `fifo(...)`; the form is checked later.
    State {
        /// The name.
        name: Ident,
        /// The value.
        value: Expr,
    },
    /// `positive = ...`, `negative = ...`, `balance = ...`, `loss = ...`, `symmetric = ...`.
    Assign {
        /// Which entry.
        key: Ident,
        /// The value.
        value: Expr,
    },
}

impl Objective {
    /// Visits every expression of every declaration, parents before children.
    pub fn walk_exprs(&self, f: &mut impl FnMut(&Expr)) {
        for d in &self.decls {
            match d {
                Decl::Let { value, .. } | Decl::State { value, .. } | Decl::Assign { value, .. } => value.walk(f),
                Decl::Weight { set, body, .. } => {
                    set.walk(f);
                    body.walk(f);
                }
                Decl::Param { .. } => {}
            }
        }
    }
}

impl Expr {
    /// Visits this expression and its sub-expressions, parents first. Depth is bounded by the
    /// parser's nesting limit.
    pub fn walk(&self, f: &mut impl FnMut(&Expr)) {
        f(self);
        match &self.kind {
            ExprKind::Neg(a) | ExprKind::Field(a, _) => a.walk(f),
            ExprKind::Binary(_, a, b) => {
                a.walk(f);
                b.walk(f);
            }
            ExprKind::Call(_, args) => args.iter().for_each(|a| a.value.walk(f)),
            ExprKind::Comprehension { body, set, exclude, .. } => {
                body.walk(f);
                set.walk(f);
                if let Some(x) = exclude {
                    x.walk(f);
                }
            }
            ExprKind::List(items) => items.iter().for_each(|i| i.walk(f)),
            ExprKind::Number(_) | ExprKind::Str(_) | ExprKind::Bool(_) | ExprKind::Name(_) | ExprKind::Error => {}
        }
    }
}

/// `in [lo, hi)` and friends; `inf` is written as an infinite bound.
#[derive(Clone, Debug, PartialEq)]
pub struct Range {
    /// Lower bound.
    pub lo: f64,
    /// Whether the lower bound is included (`[`).
    pub lo_closed: bool,
    /// Upper bound.
    pub hi: f64,
    /// Whether the upper bound is included (`]`).
    pub hi_closed: bool,
    /// The whole range.
    pub span: Span,
}

impl Range {
    /// Whether `x` lies in the range.
    pub fn contains(&self, x: f64) -> bool {
        let above = if self.lo_closed { x >= self.lo } else { x > self.lo };
        let below = if self.hi_closed { x <= self.hi } else { x < self.hi };
        above && below
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bound = |x: f64| {
            if x.is_infinite() {
                if x > 0.0 {
                    "inf".to_string()
                } else {
                    "-inf".to_string()
                }
            } else {
                format!("{x}")
            }
        };
        write!(
            f,
            "{}{}, {}{}",
            if self.lo_closed { '[' } else { '(' },
            bound(self.lo),
            bound(self.hi),
            if self.hi_closed { ']' } else { ')' }
        )
    }
}

/// `train NAME { field = value ... }`.
#[derive(Clone, Debug, PartialEq)]
pub struct Train {
    /// The objective it trains.
    pub name: Ident,
    /// Its fields, in source order.
    pub fields: Vec<Field>,
    /// The whole block.
    pub span: Span,
}

/// One recipe field.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    /// The field name.
    pub name: Ident,
    /// Its value, as an expression; the recipe schema gives it meaning.
    pub value: Expr,
}

/// An expression with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where.
    pub span: Span,
}

/// Binary operators, loosest first: `++`; `+ -`; `* / @`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// Set concatenation.
    Concat,
    /// Addition.
    Add,
    /// Subtraction.
    Sub,
    /// Multiplication (elementwise, scalars broadcast).
    Mul,
    /// Division (elementwise, scalars broadcast).
    Div,
    /// Matrix product.
    MatMul,
    /// `a < b`: 1 where it holds, 0 elsewhere (elementwise).
    Lt,
    /// `a <= b`.
    Le,
    /// `a > b`.
    Gt,
    /// `a >= b`.
    Ge,
}

impl BinOp {
    /// Whether it compares (a 0/1 result through which no gradient flows).
    pub fn compares(self) -> bool {
        matches!(self, BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge)
    }

    /// Binding power: higher binds tighter.
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Concat | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 1,
            BinOp::Add | BinOp::Sub => 2,
            BinOp::Mul | BinOp::Div | BinOp::MatMul => 3,
        }
    }

    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Concat => "++",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::MatMul => "@",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
        }
    }
}

/// A call argument, positional or `name = value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// The keyword, if given.
    pub name: Option<Ident>,
    /// The value.
    pub value: Expr,
}

/// The forms an expression takes.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// A number literal.
    Number(f64),
    /// A string literal (recipe values only).
    Str(String),
    /// `true` / `false`.
    Bool(bool),
    /// A name.
    Name(String),
    /// Unary minus.
    Neg(Box<Expr>),
    /// A binary operation.
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `sample.field`.
    Field(Box<Expr>, Ident),
    /// `f(args)`.
    Call(Ident, Vec<Arg>),
    /// `f(body for var in set)`.
    Comprehension {
        /// `sum`, `mean`, `logsumexp`, ...
        func: Ident,
        /// The summand.
        body: Box<Expr>,
        /// The index variable.
        var: Ident,
        /// The set.
        set: Box<Expr>,
        /// `if var != EXPR`: the element left out of the set.
        exclude: Option<Box<Expr>>,
    },
    /// `[a, b, ...]`.
    List(Vec<Expr>),
    /// A part that failed to convert; its diagnostic has already been reported.
    Error,
}
