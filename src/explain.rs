//! `ssl-lang explain`: the typed unified form of an objective, as a researcher reads it.

use crate::check::typed::{Objective, Program, Show, StateKind, TExpr};
use crate::check::types::Type;
use std::fmt::Write;

/// The explanation of one objective of a checked program.
pub fn explain(program: &Program, objective: &Objective) -> String {
    let mut out = String::new();
    let show = |e: &TExpr| Show { expr: e, objective }.to_string();
    let o = objective;
    let _ = writeln!(out, "objective {}  ({} family)", o.name, o.family);
    let _ = writeln!(out, "  dL/du1 = positive + balance * negative");
    if o.symmetric {
        let _ = writeln!(out, "  symmetric: evaluated for both view orders and averaged");
    } else {
        let _ = writeln!(out, "  not symmetric: evaluated for view 1 only");
    }
    let _ = writeln!(out, "\nterms");
    let term = |out: &mut String, role: &str, e: Option<&TExpr>, default: &str| {
        let _ = match e {
            Some(e) => writeln!(out, "  {role:<9}{:<26}= {}", describe(e), show(e)),
            None => writeln!(out, "  {role:<9}{default}"),
        };
    };
    term(&mut out, "positive", Some(&o.positive), "");
    term(&mut out, "negative", o.negative.as_ref(), "none (zero)");
    term(&mut out, "balance", o.balance.as_ref(), "1 (default)");
    term(&mut out, "loss", o.loss.as_ref(), "none (gradient form only; `verify` checks no closed form)");

    if !o.params.is_empty() {
        let _ = writeln!(out, "\nparams");
        for p in &o.params {
            let range = p.range.as_ref().map_or("unbounded".to_string(), |r| format!("in {r}"));
            let _ = writeln!(out, "  {} = {}  {range}", p.name, p.value);
        }
    }
    if !o.lets.is_empty() || !o.weights.is_empty() {
        let _ = writeln!(out, "\nnames");
        for l in &o.lets {
            let _ = writeln!(out, "  let {:<8}{:<26}= {}", l.name, describe(&l.value), show(&l.value));
        }
        for w in &o.weights {
            let size = match w.set.ty {
                Type::Set(_, s) => s.to_string(),
                _ => "?".into(),
            };
            let _ = writeln!(
                out,
                "  weight {}(v in {}): {size} weights per sample, = {}",
                w.name,
                show(&w.set),
                show(&w.body)
            );
        }
    }
    if !o.states.is_empty() {
        let _ = writeln!(out, "\nstates");
        for s in &o.states {
            let _ = match &s.kind {
                StateKind::Ema { rate, value } => writeln!(
                    out,
                    "  {} : {} {}  ema: {0} <- r*{0} + (1 - r)*({}), r = {}; first step {0} <- value; updated before the gradient",
                    s.name,
                    s.ty,
                    s.ty.shape(),
                    show(value),
                    show(rate)
                ),
                StateKind::Fifo { size, set } => {
                    let pushed = match set.ty {
                        Type::Set(_, p) => p.to_string(),
                        _ => "?".into(),
                    };
                    writeln!(
                        out,
                        "  {} : set of {size} vec [{size}, D]  fifo: read before the gradient, then push {} ({pushed} vectors per step), oldest dropped; starts empty",
                        s.name,
                        show(set)
                    )
                }
            };
        }
    }
    let from = match &program.recipe_target {
        Some(t) if *t == o.name => "from the train block",
        _ => "defaults: this file has no train block for it",
    };
    let _ = writeln!(out, "\nrecipe ({from})");
    for line in program.recipe.to_string().lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// "vec [D] per sample" / "scalar, global".
fn describe(e: &TExpr) -> String {
    let scope = if e.per_sample { "per sample" } else { "global" };
    match e.ty {
        Type::Scalar => format!("scalar, {scope}"),
        Type::Vec if e.per_sample => "vec [D] per sample -> [N, D]".into(),
        ty => format!("{ty} {}, {scope}", ty.shape()),
    }
}
