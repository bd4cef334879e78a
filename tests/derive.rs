//! The unified form derived from a per-sample loss: the paper's three named cases come out exactly as written in
//! `objectives/`, every standard objective's loss derives a form whose gradient equals its written one, and a
//! corpus of losses through every supported construct is proved by `verify` (f64 autodiff of the loss at u1 against
//! the derived positive + balance · negative, fresh random inputs, `LOSS_TOLERANCE` relative). Losses the
//! derivation cannot go through are coded errors, never a wrong form.

use rand::rngs::StdRng;
use rand::SeedableRng;
use ssl_lang::check::typed::{Family, Objective, Show};
use ssl_lang::diagnostic::{has_errors, Code};
use ssl_lang::plan::Plan;
use ssl_lang::verify::{random_features, relative_error, unit_rows, verify, LOSS_TOLERANCE};

fn objective(source: &str) -> Objective {
    let (program, diagnostics) = ssl_lang::compile(source);
    assert!(!has_errors(&diagnostics), "{diagnostics:#?}");
    program.objectives.into_iter().next().expect("one objective")
}

fn show(o: &Objective, e: Option<&ssl_lang::check::typed::TExpr>) -> Option<String> {
    e.map(|e| Show { expr: e, objective: o }.to_string())
}

/// The form as text: positive, negative, balance.
fn form(o: &Objective) -> [Option<String>; 3] {
    [show(o, o.positive.as_ref()), show(o, o.negative.as_ref()), show(o, o.balance.as_ref())]
}

fn standard_source(name: &str) -> String {
    std::fs::read_to_string(format!("{}/objectives/{name}.ssl", env!("CARGO_MANIFEST_DIR"))).expect("standard file")
}

/// The standard file with its written form removed, so that the form is derived from its `loss`.
fn loss_only(source: &str) -> String {
    source
        .lines()
        .filter(|l| !["positive", "negative", "balance"].iter().any(|k| l.trim_start().starts_with(k)))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_papers_losses_derive_the_papers_forms() {
    let s = |x: &str| Some(x.to_string());
    let infonce = objective(
        "objective o { param tau = 0.2 in (0, inf)\n loss = -dot(u1, t2) / tau + logsumexp(dot(u1, v) / tau for v in targets) }",
    );
    assert!(infonce.derived);
    assert_eq!(form(&infonce), [s("-t2 / tau"), s("sum(softmax(dot(u1, v) / tau) * v for v in targets) / tau"), None]);
    assert_eq!(infonce.family, Family::Contrastive);

    let unigrad = objective(
        "objective o { param lambda = 100.0 in (0, inf)\n state F = ema(0.99, mean(outer(t, t) for t in targets))\n \
         loss = -dot(u1, t2) + lambda * D / 2048 / 2 * dot(u1, F @ u1) }",
    );
    assert_eq!(form(&unigrad), [s("-t2"), s("F @ u1"), s("lambda * D / 2048")]);
    assert_eq!(unigrad.family, Family::CorrelationMatrix);

    let byol = objective("objective o { loss = 1 - dot(u1, t2) }\ntrain o { predictor = mlp(hidden = 512) }");
    assert_eq!(form(&byol), [s("-t2"), None, None]);
    assert_eq!(byol.family, Family::PositiveOnly);
}

/// Derived from each standard file's `loss` alone, the gradient equals the one of its written form: f64, 1e-10
/// relative (they differ by summation order only), at random features and states (EMAs updated, queues filled).
#[test]
fn every_standard_loss_derives_its_written_form() {
    let mut compared = 0;
    for name in ["simclr", "moco", "byol", "simsiam", "barlow_twins", "vicreg", "unigrad"] {
        let source = standard_source(name);
        let written = objective(&source);
        if written.loss.is_none() {
            continue;
        }
        let derived = objective(&loss_only(&source));
        assert!(derived.derived && !written.derived, "{name}");
        assert_eq!(derived.family, written.family, "{name}");
        let (a, b) = (Plan::new(&written), Plan::new(&derived));
        for seed in 0..3 {
            let mut rng = StdRng::seed_from_u64(seed);
            let (n, d) = (6 + seed as usize, 5);
            let f = random_features(&mut rng, n, d).unwrap();
            let mut state = a.initial_state();
            a.update_emas(&random_features(&mut rng, n, d).unwrap(), &mut state).unwrap();
            for q in state.fifo.iter_mut() {
                *q = Some(unit_rows(&mut rng, 3 * n, d).unwrap());
            }
            let (ga, gb) = (a.step(&f, &mut state.clone()).unwrap(), b.step(&f, &mut state.clone()).unwrap());
            for (x, y) in [(&ga.g1, &gb.g1), (&ga.g2, &gb.g2)] {
                let e = relative_error(y, x).unwrap();
                assert!(e < 1e-10, "{name}, seed {seed}: derived vs written {e:.2e}");
            }
        }
        compared += 1;
    }
    assert_eq!(compared, 5, "simclr, moco, byol, simsiam and unigrad carry a per-sample loss");
}

/// Losses through every construct the derivation supports, each proved by `verify`.
const CORPUS: &[&str] = &[
    // DCL: InfoNCE without the positive among the negatives.
    "objective dcl { param tau = 0.1 in (0, inf)\n loss = -dot(u1, t2) / tau + logsumexp(dot(u1, v) / tau for v in targets if v != t2) }",
    // Smooth scalar functions of similarities.
    "objective smooth { param a = 1.5 in (0, inf)\n loss = log(1 + exp(-a * dot(u1, t2))) + 0.5 * pow(dot(u1, t1) + 2, 3) \
     + sqrt(2 + dot(u1, t2)) + tanh(dot(u1, u2)) - sigmoid(dot(u1, t2)) }\ntrain smooth { predictor = mlp(hidden = 8) }",
    // Real powers, normalisation and norms of vectors built from u1.
    "objective vectors { loss = pow(2 + dot(u1, t2), 1.5) - dot(normalize(u1 + 2 * t1), t2) + norm(u1 + 2 * t2) }\n\
     train vectors { predictor = mlp(hidden = 8) }",
    // Lets, a mean over a set inside a log, a square.
    "objective lets { param tau = 0.3 in (0, inf)\n let s = dot(u1, t2) / tau\n let neg = mean(exp(dot(u1, v) / tau) for v in targets)\n loss = -s + log(neg) + s * s / 10 }",
    // A queue joined to a list.
    "objective queue { param tau = 0.2 in (0, inf)\n state Q = fifo(64, targets)\n loss = -dot(u1, t2) / tau + logsumexp(dot(u1, v) / tau for v in [t2] ++ Q) }",
    // A state matrix that is not symmetric: its transpose appears.
    "objective asym { state C = ema(0.9, mean(outer(b.t1, b.t2) for b in batch))\n loss = -dot(u1, t2) + 0.5 * dot(u1, C @ u1) }",
    // A scalar broadcast over a vector, an elementwise exp of u1.
    "objective broadcast { loss = -dot(dot(u1, t1) + t2, t2) + dot(exp(u1), t1) / D }\ntrain broadcast { predictor = mlp(hidden = 8) }",
    // A comprehension nested in one over the batch.
    "objective nested { param tau = 0.5 in (0, inf)\n loss = -dot(u1, t2) + mean(logsumexp(dot(u1, v) * dot(b.t1, v) / tau for v in targets) for b in batch) }",
    // NNCLR: the pull toward the nearest neighbour in a queue (no gradient through the choice).
    "objective nnclr { param tau = 0.1 in (0, inf)\n state S = fifo(64, targets)\n loss = -dot(u1, nearest(t2, S)) / tau + logsumexp(dot(u1, v) / tau for v in targets) }",
    // A hinge written with `where` and a comparison; a max over a set as a constant factor.
    "objective hinge { loss = -dot(u1, t2) + where(dot(u1, t1) > 0.5, dot(u1, t1) * dot(u1, t1), 0.25) \
     + max(dot(t2, v) for v in targets) * dot(u1, t1) }\ntrain hinge { predictor = mlp(hidden = 8) }",
    // logsumexp and softmax over a vector's entries.
    "objective entries { loss = -dot(u1, t2) + logsumexp(u1 / 0.5) + dot(softmax(2 * u1), t1) }\ntrain entries { predictor = mlp(hidden = 8) }",
    // stopgrad blocks its argument; a vector divided by a scalar that depends on u1.
    "objective blocked { loss = -dot(u1, t2) * stopgrad(dot(u1, t1)) + dot(u1 / (2 + dot(u1, t1)), t2) }\n\
     train blocked { predictor = mlp(hidden = 8) }",
];

#[test]
fn derived_forms_match_autodiff_of_their_losses() {
    for source in CORPUS {
        let o = objective(source);
        assert!(o.derived, "{}", o.name);
        for row in verify(&o, &candle_core::Device::Cpu).unwrap() {
            assert!(row.pass, "{}: {} failed with error {:?}: {}", row.objective, row.check, row.max_error, row.note);
            assert!(row.max_error.is_some_and(|e| e < LOSS_TOLERANCE), "{}: {}", row.objective, row.check);
        }
    }
}

/// What the derivation cannot go through is a coded error at the construct, not a wrong or partial form.
#[test]
fn losses_the_derivation_cannot_go_through_are_coded_errors() {
    let cases = [
        ("objective o { loss = relu(1 - dot(u1, t2)) }", Code::Underivable, "relu("),
        ("objective o { weight w(v in targets) = softmax(dot(u1, v))\n loss = -dot(u1, t2) + sum(w(v) * dot(u1, v) for v in targets) }", Code::Underivable, "w(v)"),
        ("objective o { loss = -dot(u1, t2) + trace(outer(u1, u1)) }", Code::Underivable, "outer(u1, u1)"),
        ("objective o { loss = logsumexp(dot(u1, v) for v in targets) }", Code::MissingPositive, "no pull term"),
        ("objective o { loss = dot(t1, t2) }", Code::Underivable, "does not depend on `u1`"),
        ("objective o { loss = -dot(u1, t2) + max(dot(u1, v) for v in targets) }", Code::Underivable, "max("),
        ("objective o { negative = F @ u1\n state F = ema(0.9, mean(outer(t, t) for t in targets))\n loss = -dot(u1, t2) }", Code::MissingPositive, "positive"),
    ];
    for (source, code, needle) in cases {
        let (_, diagnostics) = ssl_lang::compile(source);
        let d = diagnostics.iter().find(|d| d.code == code).unwrap_or_else(|| panic!("{source}: {diagnostics:#?}"));
        let text = format!("{} {}", d.message, d.labels.iter().map(|l| l.text.as_str()).collect::<String>());
        assert!(
            text.contains(needle) || source[d.labels[0].span.start..d.labels[0].span.end].contains(needle),
            "{source}: {text}"
        );
        assert!(d.help.is_some(), "{source}: a help line");
    }
}

/// A loss whose derivative explodes (each let doubles the previous one's paths) stops at the term limit instead of
/// hanging or exhausting memory.
#[test]
fn a_derivative_too_long_to_read_is_refused() {
    let mut source = String::from("objective o {\n let a0 = dot(u1, t2)\n");
    for i in 1..=40 {
        source.push_str(&format!(" let a{i} = a{p} * a{p} + dot(u1, t1)\n", p = i - 1));
    }
    source.push_str(" loss = a40\n}\ntrain o { predictor = mlp(hidden = 8) }");
    let (_, diagnostics) = ssl_lang::compile(&source);
    assert!(diagnostics.iter().any(|d| d.code == Code::Underivable && d.message.contains("terms")), "{diagnostics:#?}");
}
