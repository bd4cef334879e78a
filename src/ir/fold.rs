//! Constant folding and algebraic identities, applied as each node is built: literal arithmetic is
//! computed, and `x·1`, `x/1`, `x+0`, `x−0`, `−(−x)` disappear. Pure functions of the operands.

use super::{Binary, Graph, Node, Op, Unary};

/// The value of a node if it is a literal.
pub fn literal(g: &Graph, n: Node) -> Option<f64> {
    match g.op(n) {
        Op::Const(x) => Some(*x),
        _ => None,
    }
}

/// A replacement for `op(x)`, if one is simpler.
pub fn unary(g: &Graph, op: Unary, x: Node) -> Option<Result<f64, Node>> {
    if let Some(v) = literal(g, x) {
        return Some(Ok(match op {
            Unary::Neg => -v,
            Unary::Exp => v.exp(),
            Unary::Log => v.ln(),
            Unary::Sqrt => v.sqrt(),
            Unary::Relu => v.max(0.0),
            Unary::StopGrad => v,
            Unary::Abs => v.abs(),
            Unary::Tanh => v.tanh(),
        }));
    }
    match (op, g.op(x)) {
        (Unary::Neg, Op::Unary(Unary::Neg, inner)) => Some(Err(*inner)),
        _ => None,
    }
}

/// A replacement for `a op b`, if one is simpler: a literal, or one of the operands. Identities
/// only fire when the kept operand already has every axis of the result.
pub fn binary(g: &Graph, op: Binary, a: Node, b: Node) -> Option<Result<f64, Node>> {
    let (la, lb) = (literal(g, a), literal(g, b));
    if let (Some(x), Some(y)) = (la, lb) {
        return Some(Ok(match op {
            Binary::Add => x + y,
            Binary::Sub => x - y,
            Binary::Mul => x * y,
            Binary::Div => x / y,
            Binary::Min => x.min(y),
            Binary::Max => x.max(y),
            Binary::Lt => f64::from(u8::from(x < y)),
            Binary::Le => f64::from(u8::from(x <= y)),
            Binary::Pick => {
                if x != 0.0 {
                    y
                } else {
                    0.0
                }
            }
            Binary::LogAddExp => {
                let m = x.max(y);
                if m == f64::NEG_INFINITY {
                    m
                } else {
                    m + ((x - m).exp() + (y - m).exp()).ln()
                }
            }
        }));
    }
    match (op, la, lb) {
        (Binary::Mul, Some(1.0), _) | (Binary::Add, Some(0.0), _) => Some(Err(b)),
        (Binary::Mul | Binary::Div, _, Some(1.0)) | (Binary::Add | Binary::Sub, _, Some(0.0)) => Some(Err(a)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_literals_and_identities() {
        let mut g = Graph::default();
        let two = g.add(Op::Const(2.0), vec![]);
        let one = g.add(Op::Const(1.0), vec![]);
        let x = g.add(Op::Dim, vec![]);
        assert_eq!(binary(&g, Binary::Mul, two, two), Some(Ok(4.0)));
        assert_eq!(binary(&g, Binary::Mul, x, one), Some(Err(x)));
        assert_eq!(binary(&g, Binary::Div, x, one), Some(Err(x)));
        assert_eq!(binary(&g, Binary::Div, one, x), None);
        assert_eq!(unary(&g, Unary::Neg, two), Some(Ok(-2.0)));
        let neg = g.add(Op::Unary(Unary::Neg, x), vec![]);
        assert_eq!(unary(&g, Unary::Neg, neg), Some(Err(x)));
    }
}
