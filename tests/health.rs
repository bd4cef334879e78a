//! Representation-health metrics on batches with known answers, and the collapse monitor's reporting rule.

use candle_core::{Device, Result, Tensor};
use ssl_lang::eval::health::{effective_rank, z_std, CollapseMonitor, COLLAPSE_READINGS};

fn batch(rows: &[[f64; 2]]) -> Result<Tensor> {
    Tensor::from_vec(rows.iter().flatten().copied().collect::<Vec<_>>(), (rows.len(), 2), &Device::Cpu)
}

/// Rows e1, e2, e1, e2 (scaled: z-std normalises first): each dimension holds 1, 0, 1, 0, whose sample std is
/// √(1/3); a batch of one repeated direction has z-std 0 and effective rank 1; the four axis directions ±e1, ±e2
/// use both dimensions equally (rank 2).
#[test]
fn z_std_and_effective_rank_known_values() -> Result<()> {
    let spread = batch(&[[3.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 5.0]])?;
    assert!((z_std(&spread)? - (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
    let collapsed = batch(&[[2.0, 1.0], [4.0, 2.0], [1.0, 0.5]])?;
    assert!(z_std(&collapsed)?.abs() < 1e-12);
    assert!((effective_rank(&batch(&[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])?)? - 1.0).abs() < 1e-9);
    let isotropic = batch(&[[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])?;
    assert!((effective_rank(&isotropic)? - 2.0).abs() < 1e-9);
    Ok(())
}

/// Collapse is reported on the COLLAPSE_READINGS-th low reading in a row, once; a single healthy reading resets the
/// streak, and a new episode is reported again.
#[test]
fn collapse_is_reported_once_per_sustained_episode() {
    let healthy = 0.0884; // 1/√128
    let low = 0.001;
    let mut m = CollapseMonitor::default();
    let mut reports = Vec::new();
    let readings = [low, low, healthy, low, low, low, low, low, healthy, low, low, low];
    for (i, z) in readings.into_iter().enumerate() {
        if let Some(w) = m.observe(z, healthy) {
            assert!(w.code.as_str() == "ssl::train::collapse" && w.help.is_some(), "{w}");
            reports.push(i);
        }
    }
    assert_eq!(COLLAPSE_READINGS, 3);
    assert_eq!(reports, vec![5, 11]);
    // Just above a tenth of the healthy spread is not collapse.
    let mut m = CollapseMonitor::default();
    assert!((0..10).all(|_| m.observe(0.1 * healthy + 1e-9, healthy).is_none()));
}
