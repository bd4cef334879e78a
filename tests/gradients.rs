//! The gradient machinery: lowering + reference backend + plan, against the reference formulas of
//! `shared/reference/unigrad.md` written out by hand, against central finite differences for every
//! builtin, and exact checks of the state rules. All in f64; tolerances are stated per test.

use candle_core::{Tensor, Var};
use rand::rngs::StdRng;
use rand::SeedableRng;
use ssl_lang::check::typed::Objective;
use ssl_lang::plan::{view, Features, Plan};
use ssl_lang::verify::{random_features, relative_error, verify};

fn objective(source: &str) -> Objective {
    let (program, diagnostics) = ssl_lang::compile(source);
    assert!(!ssl_lang::diagnostic::has_errors(&diagnostics), "{diagnostics:#?}");
    program.objectives.into_iter().next().expect("one objective")
}

fn standard(name: &str) -> Objective {
    let path = format!("{}/objectives/{name}.ssl", env!("CARGO_MANIFEST_DIR"));
    objective(&std::fs::read_to_string(path).expect("standard objective"))
}

fn features(seed: u64, n: usize, d: usize) -> Features {
    random_features(&mut StdRng::seed_from_u64(seed), n, d).expect("features")
}

/// Hand formula vs plan: 1e-10 relative in f64 (the two differ only by summation order).
const HAND_TOLERANCE: f64 = 1e-10;

#[test]
fn unigrad_matches_the_paper_formula_including_the_ema() {
    let plan = Plan::new(&standard("unigrad"));
    let (n, d) = (12, 6);
    let (lambda, rho) = (100.0, 0.99);
    let mut state = plan.initial_state();
    let first = features(1, n, d);
    let second = features(2, n, d);
    let corr = |f: &Features| -> Tensor {
        let t = Tensor::cat(&[&f.t1, &f.t2], 0).unwrap();
        (t.t().unwrap().matmul(&t).unwrap() / (2 * n) as f64).unwrap()
    };
    plan.update_emas(&first, &mut state).unwrap();
    plan.update_emas(&second, &mut state).unwrap();
    let f = ((corr(&first) * rho).unwrap() + (corr(&second) * (1.0 - rho)).unwrap()).unwrap();
    let [g, _, _] = plan.view_gradient(view(&second, false), &state).unwrap();
    let push = (second.u1.matmul(&f).unwrap() * (lambda * d as f64 / 2048.0)).unwrap();
    let hand = (push - &second.t2).unwrap();
    assert!(relative_error(&g, &hand).unwrap() < HAND_TOLERANCE);
}

#[test]
fn simclr_matches_infonce_by_hand() {
    let plan = Plan::new(&standard("simclr"));
    let (n, d, tau) = (9, 5, 0.2);
    let f = features(3, n, d);
    let [g, _, _] = plan.view_gradient(view(&f, false), &plan.initial_state()).unwrap();
    let v = Tensor::cat(&[&f.t1, &f.t2], 0).unwrap();
    let logits = (f.u1.matmul(&v.t().unwrap()).unwrap() / tau).unwrap();
    let e = logits.exp().unwrap();
    let s = e.broadcast_div(&e.sum_keepdim(1).unwrap()).unwrap();
    let hand = ((s.matmul(&v).unwrap() - &f.t2).unwrap() / tau).unwrap();
    assert!(relative_error(&g, &hand).unwrap() < HAND_TOLERANCE);
}

#[test]
fn barlow_twins_matches_the_official_gradient_by_hand() {
    let plan = Plan::new(&standard("barlow_twins"));
    let (n, d, lambda) = (10, 7, 50.0);
    let f = features(4, n, d);
    let [g, _, _] = plan.view_gradient(view(&f, false), &plan.initial_state()).unwrap();
    // g = -t2 + lambda' (t2 · T2ᵀ) U1 / N, lambda' = lambda D / 2048.
    let w = f.t2.matmul(&f.t2.t().unwrap()).unwrap();
    let push = (w.matmul(&f.u1).unwrap() * (lambda * d as f64 / 2048.0 / n as f64)).unwrap();
    let hand = (push - &f.t2).unwrap();
    assert!(relative_error(&g, &hand).unwrap() < HAND_TOLERANCE);
}

/// Each builtin inside a loss: candle autodiff through our lowering vs central finite differences
/// of the same evaluated loss (step 1e-6, tolerance 1e-6 relative).
#[test]
fn every_builtin_differentiates_like_finite_differences() {
    let losses = [
        "exp(dot(u1, t2))",
        "log(2 + dot(u1, t2))",
        "sqrt(2 + dot(u1, t2))",
        "sum(relu(u1 - t2))",
        "norm(u1 + 2 * t2)",
        "dot(normalize(u1 + t2), t1)",
        "sum(min(u1, t2)) + mean(max(u1, t1))",
        "dot(u1, outer(t1, t2) @ u1)",
        "dot(u1, (outer(t1, t1) @ outer(t2, t2)) @ u1)",
        "logsumexp(dot(u1, v) / 0.3 for v in targets)",
        "sum(softmax(dot(u1, v)) * dot(u1, v) for v in [t2, t1] ++ targets)",
        "mean(dot(u1, v) for v in [t2] ++ targets)",
        "dot(u1, eye() @ t2) - dot(u1, u1) / 2",
        // (b.u1 is detached by design, so finite differences of U1 would also move it: use b.t1.)
        "sum(dot(t2, b.t2) * dot(u1, b.t1) for b in batch) / N",
        "dot(u1, u2) / D",
        "sum(abs(u1 - t2)) + sum(tanh(2 * u1)) + sum(sigmoid(3 * u1))",
        "sum(clamp(u1, -0.2, 0.3)) + sum(pow(u1 - t2, 2)) + sum(pow(2 + u1, 1.5))",
        "dot(diag(outer(u1, t2)), t1) + trace(outer(u1, t1) @ outer(t2, u1))",
        "dot(t1, transpose(outer(u1, t2)) @ u1) + sum(outer(u1, t1) * outer(t2, t2)) + mean(outer(u1, u1))",
    ];
    for loss in losses {
        let o = objective(&format!("objective probe {{ positive = -t2\n negative = u1\n loss = {loss} }}"));
        let plan = Plan::new(&o);
        let f = features(5, 3, 4);
        let state = plan.initial_state();
        let node = plan.lowered.loss.expect("loss lowered");
        let u1 = Var::from_tensor(&f.u1).unwrap();
        let total = plan.view_loss(node, [u1.as_tensor(), &f.u2, &f.t1, &f.t2], &state).unwrap().sum_all().unwrap();
        let grads = total.backward().unwrap();
        let autodiff = grads.get(u1.as_tensor()).expect("u1 gets a gradient").clone();

        let base: Vec<Vec<f64>> = f.u1.to_vec2().unwrap();
        let eval = |rows: &Vec<Vec<f64>>| -> f64 {
            let u = Tensor::new(rows.clone(), &candle_core::Device::Cpu).unwrap();
            let t = plan.view_loss(node, [&u, &f.u2, &f.t1, &f.t2], &state).unwrap();
            t.sum_all().unwrap().to_scalar::<f64>().unwrap()
        };
        let h = 1e-6;
        let mut fd = base.clone();
        for i in 0..base.len() {
            for j in 0..base[0].len() {
                let (mut plus, mut minus) = (base.clone(), base.clone());
                plus[i][j] += h;
                minus[i][j] -= h;
                fd[i][j] = (eval(&plus) - eval(&minus)) / (2.0 * h);
            }
        }
        let fd = Tensor::new(fd, &candle_core::Device::Cpu).unwrap();
        let err = relative_error(&autodiff, &fd).unwrap();
        assert!(err < 1e-6, "loss `{loss}`: autodiff vs finite differences, relative error {err:e}");
    }
}

/// The matrix and elementwise builtins compute what their definitions say: each against the same value written with
/// the first edition's builtins (f64, 1e-12). Finite differences alone would pass a wrong transpose.
#[test]
fn new_builtins_equal_their_definitions() {
    let pairs = [
        ("dot(t1, transpose(outer(u1, t2)) @ t2)", "dot(t1, t2) * dot(u1, t2)"),
        ("sum(diag(outer(u1, t2)))", "dot(u1, t2)"),
        ("trace(outer(u1, t2) @ outer(t1, t1))", "dot(u1, t1) * dot(t2, t1)"),
        ("sum(outer(u1, t2))", "sum(u1) * sum(t2)"),
        ("mean(outer(u1, t2))", "sum(u1) * sum(t2) / (D * D)"),
        ("sum(pow(u1, 2)) + sum(pow(u1, 0))", "dot(u1, u1) + D"),
        ("sum(pow(2 + u1, 0.5))", "sum(sqrt(2 + u1))"),
        ("sum(sigmoid(u1))", "sum(1 / (1 + exp(-u1)))"),
        ("sum(clamp(u1, -0.1, 0.1))", "sum(min(max(u1, -0.1), 0.1))"),
        ("sum(abs(u1))", "sum(max(u1, -u1))"),
        ("sum(tanh(u1))", "sum((exp(u1) - exp(-u1)) / (exp(u1) + exp(-u1)))"),
    ];
    let f = features(9, 6, 5);
    let value = |loss: &str| {
        let plan = Plan::new(&objective(&format!("objective probe {{ positive = -t2\n loss = {loss} }}")));
        let node = plan.lowered.loss.expect("loss lowered");
        plan.view_loss(node, view(&f, false), &plan.initial_state()).unwrap()
    };
    for (new, old) in pairs {
        let err = relative_error(&value(new), &value(old)).unwrap();
        assert!(err < 1e-12, "`{new}` vs `{old}`: {err:e}");
    }
}

#[test]
fn ema_takes_the_first_value_then_blends_exactly() {
    let o = objective("objective e { param rho = 0.75 in [0, 1)\n state M = ema(rho, mean(t for t in targets))\n positive = -t2\n negative = M * dot(u1, M) }");
    let plan = Plan::new(&o);
    let mut state = plan.initial_state();
    let (a, b) = (features(6, 4, 3), features(7, 4, 3));
    let mean = |f: &Features| Tensor::cat(&[&f.t1, &f.t2], 0).unwrap().mean(0).unwrap();
    plan.update_emas(&a, &mut state).unwrap();
    let first = state.ema[0].clone().unwrap();
    assert_eq!(first.to_vec1::<f64>().unwrap(), mean(&a).to_vec1::<f64>().unwrap());
    plan.update_emas(&b, &mut state).unwrap();
    let blended = ((mean(&a) * 0.75).unwrap() + (mean(&b) * 0.25).unwrap()).unwrap();
    assert!(relative_error(state.ema[0].as_ref().unwrap(), &blended).unwrap() < 1e-15);
}

#[test]
fn fifo_is_read_before_and_pushed_after_and_wraps_around() {
    let o =
        objective("objective q { state Q = fifo(5, targets)\n positive = -t2\n negative = sum(v for v in [t2] ++ Q) }");
    let plan = Plan::new(&o);
    let mut state = plan.initial_state();
    let (a, b) = (features(8, 2, 3), features(9, 2, 3));
    // Step 1 reads an empty queue: the negative is t2 alone, for each view.
    let g = plan.step(&a, &mut state).unwrap();
    assert!(relative_error(&g.g1, &a.u1.zeros_like().unwrap()).unwrap() < 1e-15);
    let pushed_a = Tensor::cat(&[&a.t1, &a.t2], 0).unwrap();
    assert_eq!(state.fifo[0].as_ref().unwrap().to_vec2::<f64>().unwrap(), pushed_a.to_vec2::<f64>().unwrap());
    // Step 2 reads the four rows of step 1, then keeps the newest five: b's four and a's first.
    let g = plan.step(&b, &mut state).unwrap();
    let queued = pushed_a.sum(0).unwrap().unsqueeze(0).unwrap();
    let hand = (queued.broadcast_as((2, 3)).unwrap() * 0.5).unwrap();
    assert!(relative_error(&g.g1, &hand).unwrap() < 1e-12);
    let expected = Tensor::cat(&[&b.t1, &b.t2, &a.t1.narrow(0, 0, 1).unwrap()], 0).unwrap();
    assert_eq!(state.fifo[0].as_ref().unwrap().to_vec2::<f64>().unwrap(), expected.to_vec2::<f64>().unwrap());
}

#[test]
fn verify_passes_for_the_standard_and_extra_objectives() {
    let mut sources: Vec<String> = ["simclr", "moco", "byol", "simsiam", "barlow_twins", "vicreg", "unigrad"]
        .iter()
        .map(|n| std::fs::read_to_string(format!("{}/objectives/{n}.ssl", env!("CARGO_MANIFEST_DIR"))).unwrap())
        .collect();
    // The README's worked example (a decorrelation form with a per-sample balance) and the published objectives of
    // `examples/`.
    for example in ["hard_positive_decorrelation", "dcl", "nnclr", "wmse"] {
        sources
            .push(std::fs::read_to_string(format!("{}/examples/{example}.ssl", env!("CARGO_MANIFEST_DIR"))).unwrap());
    }
    sources.extend(
        [
            // Alignment + uniformity (Wang & Isola): the uniformity push as a logsumexp over targets.
            "objective align_uniform { param t = 2.0 in (0, inf)\n weight w(v in targets) = softmax(-t * dot(u1 - v, u1 - v))\n positive = -2 * t2\n negative = sum(w(v) * 2 * t * (v - u1) for v in targets)\n loss = dot(u1 - t2, u1 - t2) + logsumexp(-t * dot(u1 - v, u1 - v) for v in targets) - dot(u1, u1) }",
            // Contrastive against a queue and the other view's online feature, with a per-sample balance.
            "objective mixed { param tau = 0.5 in (0, inf)\n state Q = fifo(64, targets)\n weight s(v in [t2, u2] ++ Q) = softmax(dot(u1, v) / tau)\n positive = -t2 / tau\n negative = sum(s(v) * v for v in [t2, u2] ++ Q) / tau\n balance = 1\n loss = -dot(u1, t2) / tau + logsumexp(dot(u1, v) / tau for v in [t2, u2] ++ Q) }",
            // UniGrad with a centred correlation matrix and a global ema mean.
            "objective centred { param rho = 0.9 in [0, 1)\n state m = ema(rho, mean(t for t in targets))\n state F = ema(rho, mean(outer(t - m, t - m) for t in targets))\n positive = -t2\n negative = F @ u1\n balance = 3\n loss = -dot(u1, t2) + 1.5 * dot(u1, F @ u1) }",
        ]
        .map(String::from),
    );
    for source in sources {
        let o = objective(&source);
        for row in verify(&o, &candle_core::Device::Cpu).unwrap() {
            assert!(row.pass, "{}: {} failed with error {:?}", row.objective, row.check, row.max_error);
            if o.loss.is_some() && row.check != "forms compared" {
                assert!(row.max_error.is_some_and(|e| e < ssl_lang::verify::LOSS_TOLERANCE));
            }
        }
    }
}

/// Every standard objective carries its original loss, and where the paper says the two forms agree (targets
/// detached: MoCo, SimSiam, UniGrad; BYOL up to its factor 4 of 2 − 2cos over both view orders) verify measures the
/// same gradient direction; SimCLR's NT-Xent, with online negatives, differs by its anchor-as-negative terms.
#[test]
fn the_forms_agree_where_the_paper_says_so() {
    for (name, cosine, scale) in [
        ("moco", "1.0000", Some("1.000")),
        ("simsiam", "1.0000", Some("1.000")),
        ("unigrad", "1.0000", Some("1.000")),
        ("byol", "1.0000", Some("4.000")),
        ("simclr", "0.9", None),
    ] {
        let o = standard(name);
        assert!(o.total.is_some(), "{name} has no original loss");
        let rows = verify(&o, &candle_core::Device::Cpu).unwrap();
        let row = rows.iter().find(|r| r.check == "forms compared").expect("forms compared");
        assert!(row.note.contains(&format!("cosine at least {cosine}")), "{name}: {}", row.note);
        if let Some(scale) = scale {
            assert!(row.note.contains(&format!("scale {scale}")), "{name}: {}", row.note);
        }
    }
    for name in ["barlow_twins", "vicreg"] {
        assert!(standard(name).total.is_some(), "{name} has no original loss");
    }
}

#[test]
fn a_wrong_gradient_fails_verification() {
    // The loss says -u1·t2 + u1·u1, so the gradient is -t2 + 2 u1; the objective claims -t2 + u1.
    let o = objective("objective wrong { positive = -t2\n negative = u1\n loss = -dot(u1, t2) + dot(u1, u1) }");
    let rows = verify(&o, &candle_core::Device::Cpu).unwrap();
    let loss_row = rows.iter().find(|r| r.check == "loss gradient").expect("a loss-gradient row");
    assert!(!loss_row.pass);
}

/// The fused plan really uses its kernels where the patterns occur (a silent fall-back to the
/// reference ops would pass every equality check, so this is checked on its own).
#[test]
fn fused_plans_pick_their_kernels() {
    use ssl_lang::backend::Backend;
    use ssl_lang::ir::cost::Sizes;
    let expect = [
        ("simclr", vec!["softmax-sum"]),
        ("moco", vec!["softmax-sum"]),
        ("unigrad", vec!["gemm-accumulate"]),
        ("barlow_twins", vec!["gemm-accumulate"]),
        ("byol", vec![]),
    ];
    for (name, kernels) in expect {
        let plan = Plan::with_backend(&standard(name), Backend::Fused, &Sizes { n: 256, d: 128, fifo: vec![4096] });
        let mut used: Vec<&str> = plan.kernels.values().map(|k| k.name()).collect();
        used.sort();
        used.dedup();
        for k in kernels {
            assert!(used.contains(&k), "{name}: expected kernel {k}, got {used:?}");
        }
    }
}

/// The contrastive kernel against the reference on a queue far longer than one tile and than the
/// batch (K = 5,000 rows, tiles of 512): 1e-12 relative in f64.
#[test]
fn contrastive_kernel_handles_long_queues() {
    use ssl_lang::backend::Backend;
    use ssl_lang::ir::cost::Sizes;
    let o = standard("moco");
    let (n, d, k) = (8, 16, 5_000);
    let fused = Plan::with_backend(&o, Backend::Fused, &Sizes { n, d, fifo: vec![k] });
    let reference = Plan::new(&o);
    let mut rng = StdRng::seed_from_u64(11);
    let f = random_features(&mut rng, n, d).unwrap();
    let mut state = reference.initial_state();
    state.fifo[0] = Some(ssl_lang::verify::unit_rows(&mut rng, k, d).unwrap());
    let a = reference.step(&f, &mut state.clone()).unwrap();
    let b = fused.step(&f, &mut state.clone()).unwrap();
    assert!(relative_error(&b.g1, &a.g1).unwrap() < 1e-12);
    assert!(relative_error(&b.g2, &a.g2).unwrap() < 1e-12);
}

/// Known gradients of batch-level losses: `total` is differentiated through every online feature (u and z), targets
/// stay constants, `stopgrad` blocks exactly its argument. f64, 1e-12.
#[test]
fn total_gradients_match_known_derivatives() {
    let (n, d) = (7, 5);
    let f = features(11, n, d);
    let z1 = (&f.u1 * 3.0).unwrap();
    let z2 = (&f.u2 * 0.5).unwrap();
    let grads = |source: &str| {
        let plan = Plan::new(&objective(source));
        let state = plan.initial_state();
        plan.total_gradient(&f, [&z1, &z2], &state).unwrap()
    };
    let close = |a: &Tensor, b: &Tensor| assert!(relative_error(a, b).unwrap() < 1e-12, "{a} vs {b}");
    let zero = f.u1.zeros_like().unwrap();
    let per_n = |t: &Tensor| (t / n as f64).unwrap();

    // Alignment to the target: ∂/∂u1 = t2 / N, nothing reaches u2, z or the targets.
    let (value, [g1, g2, gz1, gz2]) = grads("objective a { total = mean(dot(b.u1, b.t2) for b in batch) }");
    let expected = (&f.u1 * &f.t2).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap() / n as f64;
    assert!((value.to_scalar::<f64>().unwrap() - expected).abs() < 1e-12);
    close(&g1, &per_n(&f.t2));
    for g in [&g2, &gz1, &gz2] {
        close(g, &zero);
    }

    // Online against online: both views receive the other's feature; stopgrad on u2 leaves u1's share only.
    let (_, [g1, g2, ..]) = grads("objective a { total = mean(dot(b.u1, b.u2) for b in batch) }");
    close(&g1, &per_n(&f.u2));
    close(&g2, &per_n(&f.u1));
    let (_, [g1, g2, ..]) = grads("objective a { total = mean(dot(b.u1, stopgrad(b.u2)) for b in batch) }");
    close(&g1, &per_n(&f.u2));
    close(&g2, &zero);

    // A set over the online features: Σ_b Σ_v ⟨u_b, v⟩ over v in online gives every feature 2·Σ(U1 + U2) / N.
    let (_, [g1, g2, ..]) = grads("objective a { total = mean(sum(dot(b.u1, v) for v in online) for b in batch) }");
    let total_u = (f.u1.sum_keepdim(0).unwrap() + f.u2.sum_keepdim(0).unwrap()).unwrap();
    let own = per_n(&total_u.broadcast_as((n, d)).unwrap().contiguous().unwrap());
    let partner = per_n(&f.u1.sum_keepdim(0).unwrap().broadcast_as((n, d)).unwrap().contiguous().unwrap());
    close(&g1, &(&own + &partner).unwrap());
    close(&g2, &partner);

    // Before normalisation: ∂ mean ‖z1‖² / ∂z1 = 2·z1 / N.
    let (_, [_, _, gz1, gz2]) = grads("objective a { total = mean(dot(b.z1, b.z1) for b in batch) }");
    close(&gz1, &per_n(&(&z1 * 2.0).unwrap()));
    close(&gz2, &zero);
}

/// `for v in SET if v != x` leaves out exactly the sample's own element: written with the exclusion, NT-Xent and the
/// gradient form's InfoNCE equal the same sums with the own term subtracted by hand (f64, 1e-12), gradients included.
#[test]
fn exclusion_leaves_out_the_own_element() {
    let (n, d) = (6, 4);
    let f = features(21, n, d);
    let z = [f.u1.clone(), f.u2.clone()];
    let total = |body: &str| {
        let plan = Plan::new(&objective(&format!("objective x {{ param tau = 0.3 in (0, inf)\n total = {body} }}")));
        plan.total_gradient(&f, [&z[0], &z[1]], &plan.initial_state()).unwrap()
    };
    let (a, ga) = total(
        "mean(logsumexp(dot(b.u1, v) / tau for v in online if v != b.u1) - dot(b.u1, b.u2) / tau for b in batch)",
    );
    let (b, gb) = total("mean(log(sum(exp(dot(b.u1, v) / tau) for v in online) - exp(dot(b.u1, b.u1) / tau)) - dot(b.u1, b.u2) / tau for b in batch)");
    assert!(relative_error(&a, &b).unwrap() < 1e-12);
    for (x, y) in ga.iter().zip(&gb) {
        assert!(relative_error(x, y).unwrap() < 1e-12);
    }
    let (c, _) = total("mean(sum(dot(c.u1, b.u2) for c in batch if c != b) for b in batch)");
    let (e, _) = total("mean(sum(dot(c.u1, b.u2) for c in batch) - dot(b.u1, b.u2) for b in batch)");
    assert!(relative_error(&c, &e).unwrap() < 1e-12);

    let per_sample = |loss: &str| {
        let plan = Plan::new(&objective(&format!("objective x {{ positive = -t2\n loss = {loss} }}")));
        plan.view_loss(plan.lowered.loss.unwrap(), view(&f, false), &plan.initial_state()).unwrap()
    };
    let excluded = per_sample("logsumexp(dot(u1, v) for v in targets if v != t2)");
    let by_hand = per_sample("log(sum(exp(dot(u1, v)) for v in targets) - exp(dot(u1, t2)))");
    assert!(relative_error(&excluded, &by_hand).unwrap() < 1e-12);
}

/// `verify` proves batch-level losses against finite differences of the loss, and a NaN is never a pass.
#[test]
fn verify_checks_total_and_fails_on_nan() {
    let rows = verify(&standard("simclr"), &candle_core::Device::Cpu).unwrap();
    let total = rows.iter().find(|r| r.check == "total gradient").expect("a total row");
    assert!(total.pass && total.max_error.unwrap() < 1e-6, "{total:?}");

    let uniformity = objective(
        "objective au { param t = 2.0 in (0, inf)
           total = mean(dot(b.u1 - b.u2, b.u1 - b.u2) for b in batch)
             + log(mean(mean(exp(-t * dot(stopgrad(b.u1) - v, b.u1 - v)) for v in online) for b in batch)) }",
    );
    let rows = verify(&uniformity, &candle_core::Device::Cpu).unwrap();
    assert!(rows.iter().all(|r| r.pass), "{rows:#?}");

    // log of a negative number: NaN everywhere, so nothing can be checked — a failure, never a vacuous pass.
    let nan_total = objective("objective n { total = mean(log(dot(b.u1, b.t2) - 5) for b in batch) }");
    let rows = verify(&nan_total, &candle_core::Device::Cpu).unwrap();
    let total = rows.iter().find(|r| r.check == "total gradient").unwrap();
    assert!(!total.pass && total.note.contains("nothing was checked"), "{total:?}");
    let nan_gradient = objective("objective n { positive = -t2 * log(dot(u1, t2) - 5) }");
    let rows = verify(&nan_gradient, &candle_core::Device::Cpu).unwrap();
    assert!(rows.iter().any(|r| !r.pass), "a NaN gradient passed: {rows:#?}");
}

/// Lowering shares and contracts: two identical comprehensions are one node, and a weighted sum written with the
/// weight's denominator last (`exp(s) * v / (1 + exp(s))`) is one contraction, never an [N, K, D] product; its
/// value is that of the same sum written the other way (f64, 1e-12).
#[test]
fn lowering_shares_comprehensions_and_never_materialises_n_k_d() {
    let o = objective(
        "objective x { positive = -t2\n loss = logsumexp(dot(u1, v) for v in targets) + logsumexp(dot(u1, w) for w in targets) }",
    );
    let plan = Plan::new(&o);
    let lse = plan.lowered.graph.ops.iter().filter(|op| matches!(op, ssl_lang::ir::Op::Reduce(..))).count();
    assert_eq!(lse, 1, "{}", plan.lowered.dump(None));

    // A comprehension nested in another but reading none of its variables is hoisted out and shared: `nearest`'s
    // max over the queue and its comparison use one product of the query with the queue, not two.
    let o = objective("objective x { state Q = fifo(64, targets)\n positive = -nearest(t2, Q)\n negative = 0 * u1 }");
    let plan = Plan::new(&o);
    let logits = plan
        .lowered
        .graph
        .ops
        .iter()
        .filter(|op| matches!(op, ssl_lang::ir::Op::Contract(_, _, over) if over == &[ssl_lang::ir::Axis::D]))
        .count();
    assert_eq!(logits, 1, "{}", plan.lowered.dump(None));

    let quotient = "sum(exp(dot(u1, v) / 0.5) * v / (1 + exp(dot(u1, v))) for v in targets)";
    let product = "sum(exp(dot(u1, v) / 0.5) / (1 + exp(dot(u1, v))) * v for v in targets)";
    let f = features(31, 8, 4);
    let gradient = |negative: &str| {
        let plan = Plan::new(&objective(&format!("objective x {{ positive = -t2\n negative = {negative} }}")));
        let g = &plan.lowered.graph;
        for (i, axes) in g.axes.iter().enumerate() {
            let has = |f: fn(&ssl_lang::ir::Axis) -> bool| axes.iter().any(f);
            assert!(
                !(has(|a| *a == ssl_lang::ir::Axis::N)
                    && has(|a| matches!(a, ssl_lang::ir::Axis::K(_)))
                    && has(|a| *a == ssl_lang::ir::Axis::D)),
                "node %{i} is [N, K, D]: {}",
                plan.lowered.dump(None)
            );
        }
        plan.view_gradient(view(&f, false), &plan.initial_state()).unwrap()[0].clone()
    };
    assert!(relative_error(&gradient(quotient), &gradient(product)).unwrap() < 1e-12);
}

/// At τ = 0.01 the logits reach 100 and f32 itself loses digits (the op-by-op f32 reference is 7e-5 off the exact
/// step there): `verify` measures the fused step against the f64 step, so the contrastive kernels pass on merit.
#[test]
fn verify_is_sound_at_low_temperature() {
    for name in ["simclr", "moco"] {
        let source = std::fs::read_to_string(format!("{}/objectives/{name}.ssl", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let cold = source.replace("param tau = 0.2", "param tau = 0.01");
        assert_ne!(cold, source, "{name} has tau = 0.2");
        let o = objective(&cold);
        let rows = verify(&o, &candle_core::Device::Cpu).unwrap();
        let step = rows.iter().find(|r| r.check == "fused = reference").unwrap();
        assert!(step.pass && step.max_error.is_some_and(|e| e < ssl_lang::verify::FUSED_TOLERANCE), "{name}: {step:?}");
        assert!(rows.iter().all(|r| r.pass), "{name}: {rows:?}");
    }
}

/// `nearest`, `max`/`min` over a set (with an exclusion), comparisons and `where` compute what they say, against
/// the same values picked out by hand from the features (f64, 1e-12); `nearest` of an empty queue is the zero vector.
#[test]
fn nearest_max_min_and_where_compute_what_they_say() {
    let (n, d, k) = (5, 4, 7);
    let mut rng = StdRng::seed_from_u64(31);
    let f = random_features(&mut rng, n, d).unwrap();
    let queue = ssl_lang::verify::unit_rows(&mut rng, k, d).unwrap();
    let gradient = |body: &str, queued: bool| -> Tensor {
        let plan = Plan::new(&objective(&format!(
            "objective x {{ state Q = fifo({k}, targets)\n positive = {body}\n negative = 0 * nearest(u1, Q) }}"
        )));
        let mut state = plan.initial_state();
        if queued {
            state.fifo[0] = Some(queue.clone());
        }
        let [g, _, _] = plan.view_gradient(view(&f, false), &state).unwrap();
        g
    };
    let rows = |t: &Tensor| t.to_vec2::<f64>().unwrap();
    let (u1, t1, t2, q) = (rows(&f.u1), rows(&f.t1), rows(&f.t2), rows(&queue));
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let targets: Vec<&Vec<f64>> = t1.iter().chain(&t2).collect();
    let expect = |per_row: &dyn Fn(usize) -> Vec<f64>| {
        let data: Vec<f64> = (0..n).flat_map(per_row).collect();
        Tensor::from_vec(data, (n, d), &candle_core::Device::Cpu).unwrap()
    };
    let close = |a: &Tensor, b: &Tensor| assert!(relative_error(a, b).unwrap() < 1e-12, "{a} vs {b}");

    // nearest(t2, Q): the queue row with the largest inner product with each sample's t2.
    let nearest = expect(&|i| {
        let best = (0..k).max_by(|&a, &b| dot(&t2[i], &q[a]).total_cmp(&dot(&t2[i], &q[b]))).unwrap();
        q[best].clone()
    });
    close(&gradient("nearest(t2, Q)", true), &nearest);
    close(&gradient("nearest(t2, Q)", false), &f.u1.zeros_like().unwrap());

    // max over the 2N targets, and min over them less the sample's own t2.
    let max = expect(&|i| {
        let m = targets.iter().map(|v| dot(&u1[i], v)).fold(f64::NEG_INFINITY, f64::max);
        t1[i].iter().map(|x| m * x).collect()
    });
    close(&gradient("max(dot(u1, v) for v in targets) * t1", true), &max);
    let min = expect(&|i| {
        let own = n + i; // t2 of sample i in `targets` (t1 rows, then t2 rows)
        let m = targets
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != own)
            .map(|(_, v)| dot(&u1[i], v))
            .fold(f64::INFINITY, f64::min);
        t1[i].iter().map(|x| m * x).collect()
    });
    close(&gradient("min(dot(u1, v) for v in targets if v != t2) * t1", true), &min);

    // where with a comparison, and a comparison as a 0/1 mask; `where` never evaluates into the branch not taken.
    let chosen =
        expect(&|i| if dot(&u1[i], &t2[i]) > 0.0 { t2[i].clone() } else { t1[i].iter().map(|x| -x).collect() });
    close(&gradient("where(dot(u1, t2) > 0, t2, -t1)", true), &chosen);
    close(&gradient("(dot(u1, t2) <= 0) * -t1 + (dot(u1, t2) > 0) * t2", true), &chosen);
    let guarded = gradient("where(dot(u1, t2) > 0, log(dot(u1, t2)) * t1, t1)", true);
    assert!(
        guarded.abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().is_finite(),
        "a NaN leaked from the branch not taken"
    );
}

/// The batch-level loss through `where`, comparisons, `max` and `nearest` over live online features: its autodiff
/// equals central differences of `total` along random directions (f64, h = 1e-5, 1e-6 of |∇|·|δ|) at D = 5, where
/// no choice is tied (at D = 1 unit features tie and the loss has a kink there).
#[test]
fn totals_through_where_max_and_nearest_match_finite_differences() {
    let plan = Plan::new(&objective(
        "objective x { param tau = 0.5 in (0, inf)\n total = mean(where(dot(b.u1, b.u2) > 0, -dot(b.u1, b.u2), 0.5 * dot(b.u1, b.u2)) \
         + max(dot(b.u1, v) / tau for v in online if v != b.u1) - dot(b.u1, nearest(b.t2, online)) for b in batch) }",
    ));
    let (n, d, h) = (6, 5, 1e-5);
    let mut rng = StdRng::seed_from_u64(41);
    let f = random_features(&mut rng, n, d).unwrap();
    let state = plan.initial_state();
    let z = [f.u1.clone(), f.u2.clone()];
    let (_, grads) = plan.total_gradient(&f, [&z[0], &z[1]], &state).unwrap();
    for _ in 0..4 {
        let dir: Vec<Tensor> = (0..4).map(|_| ssl_lang::verify::unit_rows(&mut rng, n, d).unwrap()).collect();
        let at = |sign: f64| {
            let x: Vec<Tensor> = [&f.u1, &f.u2, &z[0], &z[1]]
                .iter()
                .zip(&dir)
                .map(|(b, v)| (*b + (v * (sign * h)).unwrap()).unwrap())
                .collect();
            plan.eval_total([&x[0], &x[1], &f.t1, &f.t2], [&x[2], &x[3]], &state, None)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let numeric = (at(1.0) - at(-1.0)) / (2.0 * h);
        let sum = |t: Tensor| t.sum_all().unwrap().to_scalar::<f64>().unwrap();
        let analytic: f64 = grads.iter().zip(&dir).map(|(g, v)| sum((g * v).unwrap())).sum();
        let scale: f64 =
            grads.iter().zip(&dir).map(|(g, v)| sum(g.sqr().unwrap()) * sum(v.sqr().unwrap())).sum::<f64>().sqrt();
        assert!((numeric - analytic).abs() < 1e-6 * scale.max(1.0), "{numeric} vs {analytic}");
    }
}

/// `let f(x) = ...` is expanded where it is called: NT-Xent written with two functions is SimCLR's `total` — the
/// same value and gradients (f64, 1e-12) — and a chain of calls that would double at each level is refused.
#[test]
fn functions_expand_to_what_they_stand_for() {
    let with_functions = objective(
        "objective f { param tau = 0.2 in (0, inf)\n let sim(b) = dot(b.u1, b.u2) / tau\n \
         let nce(x) = logsumexp(dot(x, v) / tau for v in online if v != x)\n \
         total = mean(nce(b.u1) - sim(b) + nce(b.u2) - sim(b) for b in batch) / 2 }",
    );
    let f = features(51, 7, 5);
    let z = [(&f.u1 * 2.0).unwrap(), (&f.u2 * 3.0).unwrap()];
    let total = |o: &Objective| {
        let plan = Plan::new(o);
        plan.total_gradient(&f, [&z[0], &z[1]], &plan.initial_state()).unwrap()
    };
    let (a, ga) = total(&with_functions);
    let (b, gb) = total(&standard("simclr"));
    assert!(relative_error(&a, &b).unwrap() < 1e-12);
    for (x, y) in ga.iter().zip(&gb) {
        assert!(relative_error(x, y).unwrap() < 1e-12);
    }

    let mut nested = "x".to_string();
    for _ in 0..40 {
        nested = format!("twice({nested})");
    }
    let source =
        format!("objective d {{ let twice(y) = y + y\n positive = -t2 * {}\n }}", nested.replace('x', "dot(u1, t2)"));
    let (_, diagnostics) = ssl_lang::compile(&source);
    assert!(diagnostics.iter().any(|d| d.code == ssl_lang::diagnostic::Code::TooDeep), "{diagnostics:#?}");
}
