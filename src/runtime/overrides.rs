//! `--set key=value`: a recipe field (`batch=128`, `optimizer=sgd(lr = 0.1)`) or an objective
//! param (`unigrad.lambda=50`), written in the language's own syntax and checked by the same
//! decoder as the `train` block, so a wrong override gets the same coded diagnostic.

use crate::check::recipe::{set_field, Recipe};
use crate::check::typed::Objective;
use crate::diagnostic::{did_you_mean, Code, Diagnostic, Span};

/// Applies every override in order. Errors come back rendered against the override's own text.
pub fn apply(recipe: &mut Recipe, objective: &mut Objective, sets: &[String]) -> Result<Vec<String>, String> {
    let mut applied = Vec::new();
    for set in sets {
        let Some((key, value)) = set.split_once('=') else {
            return Err(format!("error[ssl::set::form]: `--set {set}` has no `=`\n  help: write `--set field=value` or `--set objective.param=value`"));
        };
        let (key, value) = (key.trim(), value.trim());
        if let Some((scope, param)) = key.split_once('.') {
            set_param(objective, scope, param, value).map_err(|e| format!("error[ssl::set::param]: {e}"))?;
        } else {
            let source = format!("train _ {{ {key} = {value} }}");
            let (file, mut diagnostics) = crate::syntax::parse(&source);
            if let Some(field) = file.trains.first().and_then(|t| t.fields.first()) {
                set_field(recipe, field, &mut diagnostics);
            } else if diagnostics.is_empty() {
                diagnostics.push(Diagnostic::new(
                    Code::Syntax,
                    "not a `field=value` override",
                    Span::new(0, source.len()),
                    "here",
                ));
            }
            if !diagnostics.is_empty() {
                let rendered: String =
                    diagnostics.iter().map(|d| crate::render::human(d, "--set", &source, false, 100)).collect();
                return Err(rendered);
            }
        }
        applied.push(format!("{key} = {value}"));
    }
    Ok(applied)
}

fn set_param(objective: &mut Objective, scope: &str, name: &str, value: &str) -> Result<(), String> {
    if scope != objective.name {
        return Err(format!(
            "`{scope}.{name}`: the objective is `{}`\n  help: write `--set {}.{name}={value}`",
            objective.name, objective.name
        ));
    }
    let names: Vec<String> = objective.params.iter().map(|p| p.name.clone()).collect();
    let Some(param) = objective.params.iter_mut().find(|p| p.name == name) else {
        let hint = did_you_mean(name, names.iter().map(String::as_str))
            .map_or_else(|| format!("its params are: {}", names.join(", ")), |s| format!("did you mean `{s}`?"));
        return Err(format!("objective `{scope}` has no param `{name}`\n  help: {hint}"));
    };
    let x: f64 = value
        .parse()
        .map_err(|_| format!("`{value}` is not a number\n  help: write e.g. `--set {scope}.{name}=0.5`"))?;
    if !x.is_finite() {
        return Err(format!("`{value}` is not a finite number"));
    }
    if let Some(range) = &param.range {
        if !range.contains(x) {
            return Err(format!("{scope}.{name} = {x} lies outside {range}\n  help: pick a value in {range}"));
        }
    }
    param.value = x;
    Ok(())
}
