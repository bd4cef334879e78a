//! Checking: syntax tree → typed program. Reports every error of the file, not just the first.

mod args;
mod derive;
mod expr;
mod objective;
pub mod recipe;
pub mod typed;
pub mod types;

use crate::diagnostic::{did_you_mean, Code, Diagnostic, Span};
use crate::syntax::ast;
use typed::{Objective, Program, StateKind};

pub use expr::{BUILTIN_NAMES, FUNCTIONS};

/// Checks a parsed file. The program holds every objective that checked clean; the diagnostics
/// hold every error and warning, in source order.
pub fn check(file: &ast::File) -> (Program, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let mut objectives = Vec::new();
    let mut seen: Vec<&ast::Ident> = Vec::new();
    for o in &file.objectives {
        if let Some(first) = seen.iter().find(|n| n.name == o.name.name) {
            diagnostics.push(
                Diagnostic::new(
                    Code::Duplicate,
                    format!("objective `{}` is declared twice", o.name.name),
                    o.name.span,
                    "declared again here",
                )
                .label(first.span, "first declared here")
                .help("rename one of them"),
            );
        }
        seen.push(&o.name);
        objectives.extend(objective::check_objective(o, &mut diagnostics));
    }

    let mut recipe = recipe::Recipe::default();
    let mut recipe_target = None;
    for (i, train) in file.trains.iter().enumerate() {
        if i > 0 {
            diagnostics.push(
                Diagnostic::new(
                    Code::RecipeTarget,
                    "a file holds at most one train block",
                    train.name.span,
                    "second train block",
                )
                .label(file.trains[0].name.span, "first train block")
                .help("keep one recipe per file; put another objective and its recipe in a file of their own"),
            );
            continue;
        }
        let (decoded, fields) = recipe::decode(train, &mut diagnostics);
        recipe = decoded;
        let no_objective_at_all = file.objectives.is_empty() && !file.unparsed.iter().any(|u| u.keyword == "objective");
        let named = file.objectives.iter().any(|o| o.name.name == train.name.name)
            || file.may_have_unparsed_objective(&train.name.name);
        if !named && !no_objective_at_all {
            let names = file.objectives.iter().map(|o| o.name.name.as_str());
            let help = match did_you_mean(&train.name.name, names) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "name the objective this recipe trains: `train NAME { ... }`".into(),
            };
            diagnostics.push(
                Diagnostic::new(
                    Code::RecipeTarget,
                    format!("no objective `{}` in this file", train.name.name),
                    train.name.span,
                    "no such objective",
                )
                .help(help),
            );
        }
        recipe_target = Some(train.name.name.clone());
        let batch_span = fields.iter().find(|(n, _)| n == "batch").map(|(_, s)| *s);
        if let Some(o) = objectives.iter().find(|o| o.name == train.name.name) {
            check_queues(o, &recipe, batch_span, &mut diagnostics);
            if let Some((message, help)) = recipe::form_problem(o, &recipe) {
                let span = fields.iter().find(|(n, _)| n == "form").map_or(train.name.span, |(_, s)| *s);
                diagnostics.push(Diagnostic::new(Code::RecipeValue, message, span, "cannot train").help(help));
            }
        }
    }

    if file.objectives.is_empty() && !file.unparsed.iter().any(|u| u.keyword == "objective") {
        let d = match file.trains.first() {
            Some(train) => Diagnostic::new(
                Code::NoObjective,
                "this file has no objective",
                train.name.span,
                format!("a recipe for `{}`, which is not here", train.name.name),
            )
            .help(format!(
                "a recipe lives in the file of its objective: add `objective {} {{ positive = ... }}` above it",
                train.name.name
            )),
            None => Diagnostic::new(
                Code::NoObjective,
                "this file has no objective",
                Span::new(0, 0),
                "no `objective` block in this file",
            )
            .help("write one: `objective NAME { positive = -t2 }`"),
        };
        diagnostics.push(d);
    }

    for o in &objectives {
        let trains_with_predictor = recipe_target.as_deref() == Some(o.name.as_str()) && recipe.predictor.is_some();
        // When its train block failed to parse, whether it has a predictor is unknown.
        let recipe_unknown = file.may_have_unparsed_train(&o.name);
        // A pull through a batch-level statistic (W-MSE's whitening) carries its own force against collapse.
        let pull_reads_the_batch = o.positive.as_ref().is_some_and(|p| reads_the_batch(o, p));
        if o.negative.is_none()
            && o.positive.is_some()
            && !trains_with_predictor
            && !recipe_unknown
            && !pull_reads_the_batch
        {
            let span = file.objectives.iter().find(|a| a.name.name == o.name).map_or(Span::default(), |a| a.name.span);
            diagnostics.push(
                Diagnostic::new(
                    Code::CollapseRisk,
                    format!("objective `{}` has no negative term and its recipe no predictor", o.name),
                    span,
                    "may collapse",
                )
                .help(match recipe_target.as_deref() {
                    Some(t) if t == o.name => {
                        "add a negative term, or a predictor to the train block: `predictor = mlp(hidden = 512)`".into()
                    }
                    Some(t) => format!(
                        "add a negative term: the train block trains `{t}`, so `{}` gets the default recipe, which has no predictor",
                        o.name
                    ),
                    None => format!(
                        "add a negative term, or a train block with a predictor: `train {} {{ predictor = mlp(hidden = 512) }}`",
                        o.name
                    ),
                }),
            );
        }
    }
    diagnostics.sort_by_key(|d| d.span().start);
    (Program { objectives, recipe_target, recipe }, diagnostics)
}

/// Whether `e` reads a statistic of the batch: a comprehension or a state, directly or through lets.
fn reads_the_batch(o: &Objective, e: &typed::TExpr) -> bool {
    e.any(&|s| match s.kind {
        typed::TKind::Reduce { .. } | typed::TKind::State(_) => true,
        typed::TKind::Let(i) => reads_the_batch(o, &o.lets[i].value),
        _ => false,
    })
}

/// A fifo must hold at least what one step pushes, or the step's own features fall out at once.
fn check_queues(o: &Objective, recipe: &recipe::Recipe, batch_span: Option<Span>, diagnostics: &mut Vec<Diagnostic>) {
    for state in &o.states {
        if let StateKind::Fifo { size, set } = &state.kind {
            let types::Type::Set(_, pushed) = set.ty else { continue };
            let per_step = pushed.at(recipe.batch);
            if *size < per_step {
                let mut d = Diagnostic::new(
                    Code::RecipeValue,
                    format!(
                        "fifo `{}` holds {size} vectors, but each step pushes {per_step} (`{}` at batch {})",
                        state.name, pushed, recipe.batch
                    ),
                    set.span,
                    format!("{per_step} vectors per step"),
                )
                .help(format!("make the queue at least {per_step} long, or the batch smaller"));
                if let Some(b) = batch_span {
                    d = d.label(b, "batch set here");
                }
                diagnostics.push(d);
            }
        }
    }
}
