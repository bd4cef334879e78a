//! Our encoder backward against candle's autodiff, in a test binary of its own because it switches the
//! process-wide kernel choice (a forward pass running while another test switches would mix the two).

use candle_core::{DType, Device, Result, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssl_lang::check::recipe::{Mlp, Recipe};
use ssl_lang::runtime::model::{Outputs, SiameseNet};

fn randn(shape: &[usize], seed: u64) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let data: Vec<f64> = (0..shape.iter().product()).map(|_| rng.gen_range(-1.7..1.7)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// Σ backbone⊙R₁ + Σ projection⊙R₂ + Σ prediction⊙R₃: every output carries a random cotangent.
fn weighted_loss(out: &Outputs, r: &[Tensor; 3]) -> Result<Tensor> {
    let mut l = ((&out.backbone * &r[0])?.sum_all()? + (&out.projection * &r[1])?.sum_all()?)?;
    if let Some(p) = &out.prediction {
        l = (l + (p * &r[2])?.sum_all()?)?;
    }
    Ok(l)
}

/// Our encoder backward (recorded forward, fused kernels) against candle's ops and autodiff on the default
/// architecture with a predictor, f64, two forward passes sharing the parameters (as the two views of a step do):
/// every parameter gradient agrees to 1e-9 relative to its largest entry. It switches the process-wide kernels, so it
/// has this test binary to itself.
#[test]
fn our_backward_matches_candle_autodiff_on_the_default_network() -> Result<()> {
    use ssl_lang::runtime::kernels::{self, Kernels};
    let recipe = Recipe { predictor: Some(Mlp { hidden: 16, out: 128 }), ..Default::default() };
    let net = SiameseNet::from_recipe(&recipe, DType::F64, &Device::Cpu)?;
    let (x1, x2) = (randn(&[3, 1, 28, 28], 81)?, randn(&[3, 1, 28, 28], 82)?);
    let r = [randn(&[3, 128], 83)?, randn(&[3, 128], 84)?, randn(&[3, 128], 85)?];
    let before = kernels::kernels();
    let mut grads = Vec::new();
    for choice in [Kernels::Ours, Kernels::Candle] {
        kernels::set_kernels(choice);
        let (o1, o2) = (net.forward(&x1, true)?, net.forward(&x2, true)?);
        let loss = (weighted_loss(&o1, &r)? + weighted_loss(&o2, &r)?)?;
        let store = net.backward(&loss, &[&o1, &o2])?;
        let mut all = Vec::new();
        for p in net.params() {
            let Some(g) = store.get(&p.var) else { panic!("no gradient for {} with {choice:?}", p.name) };
            all.push((p.name.clone(), g.flatten_all()?.to_vec1::<f64>()?));
        }
        grads.push(all);
    }
    kernels::set_kernels(before);
    for ((name, ours), (_, candle)) in grads[0].iter().zip(&grads[1]) {
        let scale = candle.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        let err = ours.iter().zip(candle).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / scale;
        assert!(err <= 1e-9, "{name}: relative error {err:e}");
    }
    Ok(())
}
