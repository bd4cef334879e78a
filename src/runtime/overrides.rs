//! `--set key=value`: a recipe field (`batch=128`, `optimizer=sgd(lr = 0.1)`) or an objective
//! param (`unigrad.lambda=50`), written in the language's own syntax and checked by the same
//! decoder as the `train` block, so a wrong override gets the same coded diagnostic.

use crate::check::recipe::{set_field, Recipe};
use crate::check::typed::Objective;
use crate::diagnostic::{did_you_mean, Code, Diagnostic, Span};
use crate::error::{Error, ErrorCode};

/// Why an override was refused.
#[derive(Clone, Debug)]
pub enum SetError {
    /// A recipe field that does not check: its diagnostics, against the override written as a train block.
    Diagnostics {
        /// The text the diagnostics' spans point into (`train _ { key = value }`).
        text: String,
        /// What is wrong with it.
        diagnostics: Vec<Diagnostic>,
    },
    /// A malformed override or a bad objective param.
    Error(Error),
}

/// Applies every override in order; returns them as `key = value`, for the run's record.
pub fn apply(recipe: &mut Recipe, objective: &mut Objective, sets: &[String]) -> Result<Vec<String>, SetError> {
    let mut applied = Vec::new();
    for set in sets {
        let Some((key, value)) = set.split_once('=') else {
            return Err(SetError::Error(
                Error::new(ErrorCode::SetForm, format!("`--set {set}` has no `=`"))
                    .help("write `--set field=value` or `--set objective.param=value`"),
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        if let Some((scope, param)) = key.split_once('.') {
            set_param(objective, scope, param, value).map_err(SetError::Error)?;
        } else {
            let text = format!("train _ {{ {key} = {value} }}");
            let (file, mut diagnostics) = crate::syntax::parse(&text);
            // Exactly one field of one block: a value that closes the block and opens another is not one value.
            let single = match (file.trains.as_slice(), file.objectives.is_empty() && file.unparsed.is_empty()) {
                ([train], true) if train.fields.len() == 1 => Some(&train.fields[0]),
                _ => None,
            };
            if let Some(field) = single.filter(|_| diagnostics.is_empty()) {
                set_field(recipe, field, &mut diagnostics);
            } else if diagnostics.is_empty() {
                diagnostics.push(Diagnostic::new(
                    Code::Syntax,
                    "not one `field=value` override",
                    Span::new(0, text.len()),
                    "this must be a single recipe field and its value",
                ));
            }
            if !diagnostics.is_empty() {
                return Err(SetError::Diagnostics { text, diagnostics });
            }
        }
        applied.push(format!("{key} = {value}"));
    }
    Ok(applied)
}

fn set_param(objective: &mut Objective, scope: &str, name: &str, value: &str) -> Result<(), Error> {
    let bad = |message: String, help: String| Error::new(ErrorCode::SetParam, message).help(help);
    if scope != objective.name {
        return Err(bad(
            format!("`{scope}.{name}`: the objective is `{}`", objective.name),
            format!("write `--set {}.{name}={value}`", objective.name),
        ));
    }
    let names: Vec<String> = objective.params.iter().map(|p| p.name.clone()).collect();
    let Some(param) = objective.params.iter_mut().find(|p| p.name == name) else {
        let hint = did_you_mean(name, names.iter().map(String::as_str))
            .map_or_else(|| format!("its params are: {}", names.join(", ")), |s| format!("did you mean `{s}`?"));
        return Err(bad(format!("objective `{scope}` has no param `{name}`"), hint));
    };
    let x: f64 = value
        .parse()
        .map_err(|_| bad(format!("`{value}` is not a number"), format!("write e.g. `--set {scope}.{name}=0.5`")))?;
    if !x.is_finite() {
        return Err(bad(format!("`{value}` is not a finite number"), format!("write e.g. `--set {scope}.{name}=0.5`")));
    }
    if let Some(range) = &param.range {
        if !range.contains(x) {
            return Err(bad(format!("{scope}.{name} = {x} lies outside {range}"), format!("pick a value in {range}")));
        }
    }
    param.value = x;
    Ok(())
}
