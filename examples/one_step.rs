//! The library API in one page: compile an objective from a string, check it, lower it to a fused
//! plan, and run one training step's gradient computation on random unit features.
//!
//! `cargo run --release --example one_step`

use rand::SeedableRng;
use ssl_lang::backend::Backend;
use ssl_lang::ir::cost::Sizes;
use ssl_lang::plan::Plan;

const SOURCE: &str = r#"
objective unigrad {
    param lambda = 100.0 in (0, inf)
    param rho    = 0.99  in [0, 1)
    state F = ema(rho, mean(outer(t, t) for t in targets))
    positive = -t2
    negative = F @ u1
    balance  = lambda * D / 2048
}
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Parse and check: diagnostics are plain data; render them however you like.
    let (program, diagnostics) = ssl_lang::compile(SOURCE);
    for d in &diagnostics {
        eprint!("{}", ssl_lang::render::human(d, "inline.ssl", SOURCE, false, 100));
    }
    if ssl_lang::diagnostic::has_errors(&diagnostics) {
        return Err("the objective has errors".into());
    }
    let objective = program.objective(Some("unigrad")).ok_or("no objective `unigrad`")?;

    // Lower to a plan for the sizes it will run at, on the fused CPU backend.
    let (n, d) = (256, 128);
    let plan = Plan::with_backend(objective, Backend::Fused, &Sizes { n, d, fifo: vec![0] });
    println!("kernels: {:?}", plan.kernels.values().map(|k| k.name()).collect::<Vec<_>>());

    // One step on random unit features: the ema F is set from this batch, then the gradient is taken.
    let features = ssl_lang::verify::random_features(&mut rand::rngs::StdRng::seed_from_u64(0), n, d)?;
    let mut state = plan.initial_state();
    let g = plan.step(&features, &mut state)?;
    println!("g1: {:?}, g2: {:?}", g.g1.dims(), g.g2.dims());
    println!("mean positive similarity {:.4}", g.stats.positive_similarity);
    println!(
        "mean |positive| {:.4} and |balance * negative| {:.4} (view 1)",
        g.stats.positive_norm[0], g.stats.push_norm[0]
    );
    // F is the mean of t·tᵀ over unit vectors, so its trace is 1.
    let f = state.ema[0].as_ref().ok_or("F is set after the first step")?;
    let trace = (f * candle_core::Tensor::eye(d, f.dtype(), f.device())?)?.sum_all()?.to_scalar::<f64>()?;
    println!("trace of F after one step: {trace:.6}");
    Ok(())
}
