//! `ssl-lang explain`: the typed unified form of an objective, as a researcher reads it, and with `--ir` the
//! gradient IR it lowers to, with costs.

use super::{compile_file, select, Edge, Failure};
use crate::check::typed::{Objective, Program, Show, StateKind, TExpr, TKind};
use crate::check::types::Type;
use crate::ir::{self, cost::Sizes};
use std::fmt::Write;
use std::path::Path;

/// What `explain` shows beyond the unified form.
#[derive(Clone, Copy, Debug, Default)]
pub struct IrDump {
    /// Whether to print the IR.
    pub ir: bool,
    /// Batch size N for its costs (default: the recipe's batch).
    pub n: Option<usize>,
    /// Feature dimension D for its costs (default: the recipe's projector output).
    pub d: Option<usize>,
    /// Also print the per-rank graph for this many data-parallel ranks, with its collectives.
    pub ranks: Option<usize>,
}

/// Prints the explanation of the objective of `path` that `objective` names.
pub fn run(path: &Path, objective: Option<&str>, dump: IrDump, edge: &Edge) -> Result<(), Failure> {
    let (source, program) = compile_file(path, edge)?;
    let (o, recipe) = select(&program, objective, &source.name)?;
    print!("{}", explain(&program, &o));
    if dump.ir {
        let sizes = Sizes::of(&o, dump.n.unwrap_or(recipe.batch), dump.d.unwrap_or(recipe.projector.out));
        let lowered = ir::lower(&o);
        println!(
            "\ngradient IR (axes: N batch, K set elements, D E J feature dimensions); costs at N = {}, D = {}, fifos full",
            sizes.n, sizes.d
        );
        println!("\nlowered:");
        print!("{}", lowered.dump(Some(&sizes)));
        println!("\noptimised (matrix chains reassociated at these sizes):");
        let optimised = ir::optimize(&lowered, &sizes);
        print!("{}", optimised.dump(Some(&sizes)));
        if let Some(ranks) = dump.ranks {
            print!("{}", communication(&o, &optimised, &sizes, ranks));
        }
    }
    Ok(())
}

/// The per-rank graph for `ranks` ranks and a table of its collectives, with the bytes each rank receives per step.
fn communication(o: &Objective, optimised: &ir::Lowered, sizes: &Sizes, ranks: usize) -> String {
    let mut out = String::new();
    let per_rank = ir::distribute::distribute(optimised, sizes, ranks, ir::distribute::Sets::ByBytes);
    let _ =
        writeln!(out, "\nper rank, {ranks} ranks (each holds N/{ranks} rows of the batch; sizes above are global):");
    out.push_str(&per_rank.dump(None));
    let g = &per_rank.graph;
    let views = if o.symmetric { 2 } else { 1 };
    for (form, loss_form) in [("gradient form", false), ("loss form", true)] {
        if loss_form && per_rank.total.is_none() || !loss_form && o.positive.is_none() {
            continue;
        }
        let runs = ir::distribute::runs_per_step(&per_rank, views, loss_form);
        let transfers = ir::distribute::transfers(g, sizes);
        let _ = writeln!(out, "\ncollectives per training step, {form} (ring algorithms; bytes each rank receives):");
        let mut total = 0u64;
        for t in transfers.iter().filter(|t| runs[t.node.0 as usize] > 0) {
            let times = runs[t.node.0 as usize];
            let axes: Vec<String> = t.axes.iter().map(|a| a.to_string()).collect();
            let _ = writeln!(
                out,
                "  %{:<4} {:<10} [{}] {} elements x {times} = {} B",
                t.node.0,
                t.kind,
                axes.join(", "),
                t.elements,
                t.bytes * times as u64
            );
            total += t.bytes * times as u64;
        }
        let _ = writeln!(out, "  total: {total} B per rank per step (besides the network's gradient all-reduce)");
    }
    out
}

/// The explanation of one objective of a checked program.
pub fn explain(program: &Program, objective: &Objective) -> String {
    let mut out = String::new();
    let o = objective;
    let show = |e: &TExpr| Show { expr: e, objective: o }.to_string();
    if o.positive.is_some() {
        let _ = writeln!(out, "objective {}  ({} family)", o.name, o.family);
    } else {
        let _ = writeln!(out, "objective {}  (a batch-level loss, no gradient form)", o.name);
    }
    if o.derived {
        let _ = writeln!(
            out,
            "  dL/du1 = positive + balance * negative, derived from `loss` (at u1, other samples detached)"
        );
    } else if o.positive.is_some() {
        let _ = writeln!(out, "  dL/du1 = positive + balance * negative");
    } else {
        let _ = writeln!(out, "  trained by autodiff of `total` (form = loss) through every online feature");
    }
    if o.positive.is_none() {
    } else if o.symmetric {
        let _ = writeln!(out, "  symmetric: evaluated for both view orders and averaged");
    } else {
        let _ = writeln!(out, "  not symmetric: evaluated for view 1 only");
    }

    let _ = writeln!(out, "\nterms");
    let term = |role: &str, e: Option<&TExpr>, default: &str| match e {
        Some(e) => [role.to_string(), describe(e, o), format!("= {}", show(e))],
        None => [role.to_string(), default.to_string(), String::new()],
    };
    let mut terms = Vec::new();
    if o.positive.is_some() {
        terms.extend([
            term("positive", o.positive.as_ref(), ""),
            term("negative", o.negative.as_ref(), "none (zero)"),
            term("balance", o.balance.as_ref(), "1 (default)"),
            term("loss", o.loss.as_ref(), "none (gradient form only; `verify` checks no closed form)"),
        ]);
    }
    if let Some(total) = &o.total {
        terms.push(term("total", Some(total), ""));
    }
    // Defaults are prose, not a column entry: they do not widen the column.
    let width = terms.iter().filter(|t| !t[2].is_empty()).map(|t| t[1].len()).max().unwrap_or(0);
    for [role, what, value] in &terms {
        if value.is_empty() {
            let _ = writeln!(out, "  {role:<9}{what}");
        } else {
            let _ = writeln!(out, "  {role:<9}{what:<width$}  {value}");
        }
    }

    if !o.params.is_empty() {
        let _ = writeln!(out, "\nparams");
        let rows: Vec<[String; 3]> = o
            .params
            .iter()
            .map(|p| {
                let range = p.range.as_ref().map_or("unbounded".to_string(), |r| format!("in {r}"));
                [p.name.clone(), p.value.to_string(), range]
            })
            .collect();
        table(&mut out, &rows, " = ", "  ");
    }

    if !o.lets.is_empty() || !o.weights.is_empty() {
        let _ = writeln!(out, "\nnames");
        let mut rows: Vec<[String; 3]> = Vec::new();
        for l in &o.lets {
            rows.push([format!("let {}", l.name), describe(&l.value, o), format!("= {}", show(&l.value))]);
        }
        for w in &o.weights {
            let size = match w.set.ty {
                Type::Set(_, s) => s.to_string(),
                _ => "?".into(),
            };
            let up_to = if involves_fifo(&w.set, o) { "up to " } else { "" };
            rows.push([
                format!("weight {}({} in {})", w.name, index_name(w), show(&w.set)),
                format!("{up_to}{size} weights per sample"),
                format!("= {}", show(&w.body)),
            ]);
        }
        table(&mut out, &rows, "  ", "  ");
    }

    if !o.states.is_empty() {
        let _ = writeln!(out, "\nstates");
        for s in &o.states {
            let _ = match &s.kind {
                StateKind::Ema { rate, value } => {
                    let _ = writeln!(out, "  {} : {} {}, ema, updated before the gradient", s.name, s.ty, s.ty.shape());
                    let pad = " ".repeat(s.name.len() + 5);
                    let _ = writeln!(
                        out,
                        "{pad}{0} <- r*{0} + (1 - r)*value, r = {1}; first step {0} <- value",
                        s.name,
                        show(rate)
                    );
                    writeln!(out, "{pad}value = {}", show(value))
                }
                StateKind::Fifo { size, set } => {
                    let pushed = match set.ty {
                        Type::Set(_, p) => p.to_string(),
                        _ => "?".into(),
                    };
                    let _ = writeln!(
                        out,
                        "  {} : set of up to {size} vec [{size}, D], fifo, read before the gradient; starts empty",
                        s.name
                    );
                    let pad = " ".repeat(s.name.len() + 5);
                    writeln!(out, "{pad}then pushed {} ({pushed} vectors per step), oldest dropped", show(set))
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

/// Writes rows of three columns, the first two padded to their widest entry.
fn table(out: &mut String, rows: &[[String; 3]], gap1: &str, gap2: &str) {
    let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0);
    for [a, b, c] in rows {
        let line = format!("  {a:<w0$}{gap1}{b:<w1$}{gap2}{c}");
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// "vec [D] per sample -> [N, D]" / "scalar, global"; sets read from a fifo say "up to".
fn describe(e: &TExpr, o: &Objective) -> String {
    let scope = if e.per_sample { "per sample" } else { "global" };
    match e.ty {
        Type::Scalar => format!("scalar, {scope}"),
        Type::Vec if e.per_sample => "vec [D] per sample -> [N, D]".into(),
        Type::Set(..) if involves_fifo(e, o) => {
            format!("{} {}, {scope}", e.ty, e.ty.shape()).replacen("of ", "of up to ", 1)
        }
        ty => format!("{ty} {}, {scope}", ty.shape()),
    }
}

/// Whether the expression reads a fifo state, directly or through lets: its size is then a
/// capacity, reached only once the queue has filled.
fn involves_fifo(e: &TExpr, o: &Objective) -> bool {
    let mut stack = vec![e];
    let mut seen = 0;
    let mut found = false;
    while let Some(e) = stack.pop() {
        seen += 1;
        if found || seen > 10_000 {
            break;
        }
        e.walk(&mut |s| match &s.kind {
            TKind::State(i) => found |= matches!(o.states[*i].kind, StateKind::Fifo { .. }),
            TKind::Let(i) => stack.push(&o.lets[*i].value),
            _ => {}
        });
    }
    found
}

/// The name the weight's declaration gave its index variable (as its body uses it).
fn index_name(w: &crate::check::typed::Weight) -> String {
    let mut name = None;
    w.body.walk(&mut |e| {
        if let TKind::Index(id, n) = &e.kind {
            if *id == w.var && name.is_none() {
                name = Some(n.clone());
            }
        }
    });
    name.unwrap_or_else(|| "v".to_string())
}
