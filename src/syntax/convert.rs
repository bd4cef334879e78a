//! pest's parse tree → our syntax tree. Operator precedence is resolved here with an explicit
//! operand/operator stack (shunting-yard), so no input can make this recursion deeper than the
//! bracket nesting the scanner already bounded; every node's depth is tracked and trees deeper than
//! [`MAX_EXPR_DEPTH`](super::MAX_EXPR_DEPTH) become one diagnostic instead of a stack overflow later.

use super::ast::*;
use super::{Rule, MAX_EXPR_DEPTH};
use crate::diagnostic::{Code, Diagnostic, Span};
use pest::iterators::{Pair, Pairs};

/// Converts one parsed block and appends it to `file`.
pub fn block(mut pairs: Pairs<Rule>, offset: usize, file: &mut File, diagnostics: &mut Vec<Diagnostic>) {
    let mut cx = Converter { offset, diagnostics, too_deep_reported: false };
    let Some(pair) = pairs.next() else { return };
    match pair.as_rule() {
        Rule::objective => {
            let span = cx.span(&pair);
            let mut inner = pair.into_inner();
            let name = cx.ident(inner.next().expect("grammar: objective name"));
            let decls = inner.map(|p| cx.decl(p)).collect();
            file.objectives.push(Objective { name, decls, span });
        }
        Rule::train => {
            let span = cx.span(&pair);
            let mut inner = pair.into_inner();
            let name = cx.ident(inner.next().expect("grammar: train name"));
            let fields = inner
                .map(|p| {
                    let mut f = p.into_inner();
                    let name = cx.ident(f.next().expect("grammar: field name"));
                    let value = cx.expr(f.next().expect("grammar: field value"));
                    Field { name, value }
                })
                .collect();
            file.trains.push(Train { name, fields, span });
        }
        _ => {}
    }
}

struct Converter<'d> {
    offset: usize,
    diagnostics: &'d mut Vec<Diagnostic>,
    too_deep_reported: bool,
}

/// An expression with the depth of its tree.
type Deep = (Expr, usize);

impl Converter<'_> {
    fn span(&self, pair: &Pair<Rule>) -> Span {
        let s = pair.as_span();
        Span::new(self.offset + s.start(), self.offset + s.end())
    }

    fn ident(&self, pair: Pair<Rule>) -> Ident {
        Ident { name: pair.as_str().to_string(), span: self.span(&pair) }
    }

    /// The literal's value; `None` (reported) when it does not fit in an f64.
    fn number(&mut self, pair: &Pair<Rule>) -> Option<f64> {
        let text: String = pair.as_str().chars().filter(|c| !c.is_whitespace()).collect();
        match text.parse::<f64>() {
            Ok(x) if x.is_finite() || text.ends_with("inf") => Some(x),
            _ => {
                self.diagnostics.push(
                    Diagnostic::new(
                        Code::BadNumber,
                        format!("the number `{}` does not fit in a 64-bit float", pair.as_str()),
                        self.span(pair),
                        "larger than 1.8e308",
                    )
                    .help("write a smaller number; every value in ssl-lang is an f64"),
                );
                None
            }
        }
    }

    fn decl(&mut self, pair: Pair<Rule>) -> Decl {
        let rule = pair.as_rule();
        let mut inner = pair.into_inner();
        let mut next = || inner.next().expect("grammar: declaration part");
        match rule {
            Rule::param => {
                let name = self.ident(next());
                let default_pair = next();
                let default_span = self.span(&default_pair);
                let default = self.number(&default_pair);
                let range = inner.next().and_then(|r| self.range(r));
                // An unreadable default or bound is reported once; the range is not checked too.
                let range = if default.is_some() { range } else { None };
                Decl::Param { name, default: default.unwrap_or(0.0), default_span, range }
            }
            Rule::let_decl => {
                let name = self.ident(next());
                let mut rest = next();
                let param = if rest.as_rule() == Rule::let_param {
                    let p = self.ident(rest.into_inner().next().expect("grammar: a parameter name"));
                    rest = next();
                    Some(p)
                } else {
                    None
                };
                Decl::Let { name, param, value: self.expr(rest) }
            }
            Rule::weight => {
                let name = self.ident(next());
                let var = self.ident(next());
                let set = self.expr(next());
                let body = self.expr(next());
                Decl::Weight { name, var, set, body }
            }
            Rule::state => {
                let name = self.ident(next());
                Decl::State { name, value: self.expr(next()) }
            }
            _ => {
                let key = self.ident(next());
                Decl::Assign { key, value: self.expr(next()) }
            }
        }
    }

    /// The range, or `None` when a bound is unreadable (already reported).
    fn range(&mut self, pair: Pair<Rule>) -> Option<Range> {
        let span = self.span(&pair);
        let parts: Vec<Pair<Rule>> = pair.into_inner().collect();
        let [open, lo, hi, close] = parts.as_slice() else { unreachable!("grammar: range has four parts") };
        let (lo, hi) = (self.number(lo), self.number(hi));
        Some(Range { lo: lo?, lo_closed: open.as_str() == "[", hi: hi?, hi_closed: close.as_str() == "]", span })
    }

    /// Builds a node, or an error node when it would be deeper than the limit.
    fn node(&mut self, kind: ExprKind, span: Span, child_depth: usize) -> Deep {
        let depth = child_depth + 1;
        if depth <= MAX_EXPR_DEPTH {
            return (Expr { kind, span }, depth);
        }
        if !self.too_deep_reported {
            self.too_deep_reported = true;
            // A flat chain `a + b + c ...` is a tree as deep as it is long: say so, rather than "nests".
            let chain = matches!(&kind, ExprKind::Binary(op, a, _)
                if matches!(&a.kind, ExprKind::Binary(inner, ..) if inner.precedence() == op.precedence()));
            let d = if chain {
                Diagnostic::new(
                    Code::TooDeep,
                    format!("this chain of operators is longer than {MAX_EXPR_DEPTH}, the limit on operations in one expression"),
                    span,
                    "too long",
                )
                .help("split the chain into `let` declarations, e.g. `let first = a + b + c`, then `first + d + e`")
            } else {
                Diagnostic::new(
                    Code::TooDeep,
                    format!("this expression nests more than {MAX_EXPR_DEPTH} operations deep"),
                    span,
                    "too deep",
                )
                .help("split it into `let` declarations")
            };
            self.diagnostics.push(d);
        }
        (Expr { kind: ExprKind::Error, span }, 1)
    }

    fn expr(&mut self, pair: Pair<Rule>) -> Expr {
        self.deep_expr(pair).0
    }

    /// `operand (infix operand)*`, resolved by precedence with two stacks. An operand is
    /// `-`* primary `.field`*; field access binds tighter than negation.
    fn deep_expr(&mut self, pair: Pair<Rule>) -> Deep {
        let mut operands: Vec<Deep> = Vec::new();
        let mut operators: Vec<BinOp> = Vec::new();
        let mut negations: Vec<Span> = Vec::new();
        let mut current: Option<Deep> = None;
        for part in pair.into_inner() {
            match part.as_rule() {
                Rule::neg => negations.push(self.span(&part)),
                Rule::field_access => {
                    let (base, depth) = current.take().expect("grammar: field after primary");
                    let field = self.ident(part.into_inner().next().expect("grammar: field name"));
                    let span = base.span.to(field.span);
                    current = Some(self.node(ExprKind::Field(Box::new(base), field), span, depth));
                }
                rule if super::is_operator(rule) => {
                    let operand = current.take().expect("grammar: operand before operator");
                    let operand = self.wrap_negations(operand, &negations);
                    negations.clear();
                    operands.push(operand);
                    let op = binop(part.as_rule());
                    while operators.last().is_some_and(|top| top.precedence() >= op.precedence()) {
                        self.reduce(&mut operands, &mut operators);
                    }
                    operators.push(op);
                }
                _ => current = Some(self.primary(part)),
            }
        }
        let last = current.expect("grammar: expression ends with an operand");
        let last = self.wrap_negations(last, &negations);
        operands.push(last);
        while !operators.is_empty() {
            self.reduce(&mut operands, &mut operators);
        }
        operands.pop().expect("one operand remains")
    }

    fn wrap_negations(&mut self, (mut expr, mut depth): Deep, negations: &[Span]) -> Deep {
        for &at in negations.iter().rev() {
            let span = at.to(expr.span);
            (expr, depth) = self.node(ExprKind::Neg(Box::new(expr)), span, depth);
        }
        (expr, depth)
    }

    fn reduce(&mut self, operands: &mut Vec<Deep>, operators: &mut Vec<BinOp>) {
        let op = operators.pop().expect("an operator to reduce");
        let (b, db) = operands.pop().expect("right operand");
        let (a, da) = operands.pop().expect("left operand");
        let span = a.span.to(b.span);
        let node = self.node(ExprKind::Binary(op, Box::new(a), Box::new(b)), span, da.max(db));
        operands.push(node);
    }

    fn primary(&mut self, pair: Pair<Rule>) -> Deep {
        let span = self.span(&pair);
        match pair.as_rule() {
            Rule::number => {
                let kind = self.number(&pair).map_or(ExprKind::Error, ExprKind::Number);
                (Expr { kind, span }, 1)
            }
            Rule::string => {
                let s = pair.as_str();
                (Expr { kind: ExprKind::Str(s[1..s.len() - 1].to_string()), span }, 1)
            }
            Rule::boolean => (Expr { kind: ExprKind::Bool(pair.as_str() == "true"), span }, 1),
            Rule::ident => (Expr { kind: ExprKind::Name(pair.as_str().to_string()), span }, 1),
            Rule::paren => {
                let (inner, depth) = self.deep_expr(pair.into_inner().next().expect("grammar: paren"));
                // Parentheses keep their span so diagnostics point at what the user wrote.
                (Expr { kind: inner.kind, span }, depth)
            }
            Rule::list => {
                let mut depth = 0;
                let items = pair
                    .into_inner()
                    .map(|p| {
                        let (e, d) = self.deep_expr(p);
                        depth = depth.max(d);
                        e
                    })
                    .collect();
                self.node(ExprKind::List(items), span, depth)
            }
            Rule::call => self.call(pair, span),
            other => unreachable!("grammar: unexpected primary {other:?}"),
        }
    }

    fn call(&mut self, pair: Pair<Rule>, span: Span) -> Deep {
        let mut inner = pair.into_inner();
        let func = self.ident(inner.next().expect("grammar: callee"));
        let mut args: Vec<Arg> = Vec::new();
        let mut depth = 0;
        let mut comprehension: Option<(Ident, Expr, Option<Expr>)> = None;
        for part in inner {
            match part.as_rule() {
                Rule::kwarg => {
                    let mut kv = part.into_inner();
                    let name = self.ident(kv.next().expect("grammar: kwarg name"));
                    let (value, d) = self.deep_expr(kv.next().expect("grammar: kwarg value"));
                    depth = depth.max(d);
                    args.push(Arg { name: Some(name), value });
                }
                Rule::for_clause => {
                    let mut fc = part.into_inner();
                    let var = self.ident(fc.next().expect("grammar: for variable"));
                    let (set, d) = self.deep_expr(fc.next().expect("grammar: for set"));
                    depth = depth.max(d);
                    let mut exclude = None;
                    if let Some(ex) = fc.next() {
                        let mut ex = ex.into_inner();
                        let compared = self.ident(ex.next().expect("grammar: exclusion variable"));
                        let (value, d) = self.deep_expr(ex.next().expect("grammar: excluded element"));
                        depth = depth.max(d);
                        if compared.name != var.name {
                            self.diagnostics.push(
                                Diagnostic::new(
                                    Code::Syntax,
                                    format!("the exclusion must compare the comprehension's variable `{}`", var.name),
                                    compared.span,
                                    format!("not `{}`", var.name),
                                )
                                .help(format!("write `for {0} in SET if {0} != ELEMENT`", var.name)),
                            );
                        }
                        exclude = Some(value);
                    }
                    comprehension = Some((var, set, exclude));
                }
                _ => {
                    let (value, d) = self.deep_expr(part);
                    depth = depth.max(d);
                    args.push(Arg { name: None, value });
                }
            }
        }
        let Some((var, set, exclude)) = comprehension else {
            return self.node(ExprKind::Call(func, args), span, depth);
        };
        let body = match args.pop() {
            Some(Arg { name: None, value }) => value,
            popped => {
                let at = popped.as_ref().and_then(|a| a.name.as_ref()).map_or(span, |n| n.span);
                self.diagnostics.push(
                    Diagnostic::new(
                        Code::Syntax,
                        "a comprehension's body cannot be a keyword argument",
                        at,
                        "keyword argument here",
                    )
                    .help(format!("write `{}(EXPR for {} in SET)`", func.name, var.name)),
                );
                return (Expr { kind: ExprKind::Error, span }, 1);
            }
        };
        let kind = ExprKind::Comprehension {
            func,
            body: Box::new(body),
            var,
            set: Box::new(set),
            exclude: exclude.map(Box::new),
        };
        self.node(kind, span, depth)
    }
}

fn binop(rule: Rule) -> BinOp {
    match rule {
        Rule::concat => BinOp::Concat,
        Rule::add => BinOp::Add,
        Rule::sub => BinOp::Sub,
        Rule::mul => BinOp::Mul,
        Rule::div => BinOp::Div,
        Rule::lt => BinOp::Lt,
        Rule::le => BinOp::Le,
        Rule::gt => BinOp::Gt,
        Rule::ge => BinOp::Ge,
        _ => BinOp::MatMul,
    }
}
