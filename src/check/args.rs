//! Binding call arguments (positional, then `name = value`) to a function's parameter list, shared
//! by the builtins of the objective language and the constructors of the recipe.

use crate::diagnostic::{did_you_mean, Code, Diagnostic, Span};
use crate::syntax::ast::{Arg, Expr};

/// Matches `args` to `params` by position, then by keyword. Unknown keywords, repeated arguments
/// and too many arguments are reported; missing ones are left `None` for the caller to judge.
/// `func_span` is where the function's name is written. Returns `None` when the call is too
/// broken to check further.
pub fn bind<'a>(
    func: &str,
    func_span: Span,
    params: &[&str],
    args: &'a [Arg],
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Vec<Option<&'a Expr>>> {
    let mut bound: Vec<Option<&Expr>> = vec![None; params.len()];
    let mut ok = true;
    let positional = args.iter().take_while(|a| a.name.is_none()).count();
    if positional > params.len() {
        let extra = &args[params.len()].value;
        diagnostics.push(
            Diagnostic::new(
                Code::Arity,
                format!(
                    "`{func}` takes {} argument{}, but {positional} {} given",
                    params.len(),
                    if params.len() == 1 { "" } else { "s" },
                    if positional == 1 { "was" } else { "were" }
                ),
                extra.span.to(args[positional - 1].value.span),
                if positional - params.len() == 1 { "unexpected argument" } else { "unexpected arguments" },
            )
            .label(func_span, format!("takes {}", params.len()))
            .help(format!("call it as {}", signature(func, params))),
        );
        return None;
    }
    for (slot, arg) in bound.iter_mut().zip(&args[..positional]) {
        *slot = Some(&arg.value);
    }
    for arg in &args[positional..] {
        let Some(name) = &arg.name else {
            diagnostics.push(
                Diagnostic::new(
                    Code::Arity,
                    "a positional argument cannot follow keyword arguments",
                    arg.value.span,
                    "positional argument",
                )
                .help(format!("call it as {}", signature(func, params))),
            );
            ok = false;
            continue;
        };
        match params.iter().position(|p| *p == name.name) {
            Some(i) if bound[i].is_some() => {
                diagnostics.push(
                    Diagnostic::new(
                        Code::Duplicate,
                        format!("argument `{}` of `{func}` is given twice", name.name),
                        name.span,
                        "given again here",
                    )
                    .help("remove one of them"),
                );
                ok = false;
            }
            Some(i) => bound[i] = Some(&arg.value),
            None => {
                let hint = match did_you_mean(&name.name, params.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`? `{func}` takes {}", signature(func, params)),
                    None => format!("`{func}` takes {}", signature(func, params)),
                };
                diagnostics.push(
                    Diagnostic::new(
                        Code::UnknownKeyword,
                        format!("`{func}` has no argument `{}`", name.name),
                        name.span,
                        "unknown keyword",
                    )
                    .help(hint),
                );
                ok = false;
            }
        }
    }
    ok.then_some(bound)
}

/// `f(a, b)`, for messages.
pub fn signature(func: &str, params: &[&str]) -> String {
    format!("`{func}({})`", params.join(", "))
}
