//! Evaluation: weighted kNN on hand-made cases with known answers, its edge cases, agreement with a
//! brute-force reference across chunk boundaries, the linear probe, and the raw-pixel baselines.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssl_lang::data;
use ssl_lang::eval::{knn_accuracy, knn_predict, linear_probe, raw_pixel_knn, EvalError, LinearProbe};
use std::path::Path;

fn code(e: EvalError) -> &'static str {
    ssl_lang::error::Error::from(e).code.as_str()
}

/// Points on the unit circle at the given angles (degrees), scaled by `norms` (kNN must not care).
fn circle(angles: &[f64], norms: &[f32]) -> Tensor {
    let v: Vec<f32> = angles
        .iter()
        .zip(norms.iter().cycle())
        .flat_map(|(a, n)| {
            let r = a.to_radians();
            [r.cos() as f32 * n, r.sin() as f32 * n]
        })
        .collect();
    Tensor::from_vec(v, (angles.len(), 2), &Device::Cpu).unwrap()
}

/// Three classes in 2-D: class 1 has one point at 8° and one at 100°, class 0 two points at ±37°,
/// class 2 three points around 180°.
fn bank() -> (Tensor, Vec<u8>) {
    (circle(&[8.0, 37.0, -37.0, 100.0, 170.0, 180.0, 190.0], &[1.0, 3.0, 0.5, 2.0]), vec![1, 0, 0, 1, 2, 2, 2])
}

#[test]
fn weighted_knn_matches_the_hand_computed_answer() {
    let (bank, labels) = bank();
    let queries = circle(&[0.0, 180.0, 95.0], &[1.0]);
    // Query at 0°: its 3 neighbours are 8° (class 1, cos 0.990) and ±37° (class 0, cos 0.799 each).
    // With t = 0.1 the weights are e^9.90 = 19,930 against 2·e^7.99 = 5,876: the single close point wins.
    assert_eq!(knn_predict(&bank, &labels, &queries, 3, 0.1).unwrap(), vec![1, 2, 1]);
    // With t = 1 the weights are e^0.99 = 2.69 against 2·e^0.80 = 4.44: the majority wins.
    assert_eq!(knn_predict(&bank, &labels, &queries, 3, 1.0).unwrap(), vec![0, 2, 1]);
    let acc = knn_accuracy(&bank, &labels, &queries, &[1, 2, 0], 3, 0.1).unwrap();
    assert!((acc - 2.0 / 3.0).abs() < 1e-12);
    // k = 1 is nearest-neighbour.
    assert_eq!(knn_predict(&bank, &labels, &queries, 1, 0.1).unwrap(), vec![1, 2, 1]);
}

#[test]
fn k_beyond_the_bank_and_ties_do_not_panic_and_are_deterministic() {
    let (bank, labels) = bank();
    let queries = circle(&[0.0, 180.0], &[1.0]);
    // k = 100 > 7 uses the whole bank.
    assert_eq!(knn_predict(&bank, &labels, &queries, 100, 0.1).unwrap(), vec![1, 2]);
    // Two identical bank points of different classes: the lower index wins a k = 1 tie, the lower class a
    // score tie.
    let twins = circle(&[0.0, 0.0], &[1.0]);
    let q = circle(&[0.0], &[1.0]);
    assert_eq!(knn_predict(&twins, &[3, 1], &q, 1, 0.1).unwrap(), vec![3]);
    assert_eq!(knn_predict(&twins, &[1, 3], &q, 1, 0.1).unwrap(), vec![1]);
    assert_eq!(knn_predict(&twins, &[3, 1], &q, 2, 0.1).unwrap(), vec![1]);
    // A zero query (all similarities 0) and a tiny temperature still give an answer.
    let zero = Tensor::zeros((1, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert_eq!(knn_predict(&bank, &labels, &zero, 7, 0.1).unwrap(), vec![2]);
    assert_eq!(knn_predict(&bank, &labels, &q, 3, 1e-6).unwrap(), vec![1]);
    // f64 features work too.
    let b64 = bank.to_dtype(candle_core::DType::F64).unwrap();
    assert_eq!(knn_predict(&b64, &labels, &q, 3, 0.1).unwrap(), vec![1]);
}

#[test]
fn bad_inputs_are_coded() {
    let (bank, labels) = bank();
    let q = circle(&[0.0], &[1.0]);
    assert_eq!(code(knn_predict(&bank, &labels, &q, 0, 0.1).unwrap_err()), "ssl::eval::empty");
    assert_eq!(code(knn_predict(&bank, &labels, &q, 3, 0.0).unwrap_err()), "ssl::eval::empty");
    assert_eq!(code(knn_predict(&bank, &labels[..3], &q, 3, 0.1).unwrap_err()), "ssl::eval::shape");
    let q3 = Tensor::zeros((1, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert_eq!(code(knn_predict(&bank, &labels, &q3, 3, 0.1).unwrap_err()), "ssl::eval::shape");
    let empty = Tensor::zeros((0, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert_eq!(code(knn_predict(&empty, &[], &q, 3, 0.1).unwrap_err()), "ssl::eval::empty");
    assert_eq!(code(knn_accuracy(&bank, &labels, &q, &[1, 2], 3, 0.1).unwrap_err()), "ssl::eval::shape");
    let flat = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
    assert_eq!(code(knn_predict(&flat, &labels[..4], &q, 3, 0.1).unwrap_err()), "ssl::eval::shape");
}

/// The same computation, written the obvious way: every similarity, a full sort, a weighted vote.
fn brute_force(bank: &[Vec<f32>], labels: &[u8], query: &[f32], k: usize, t: f64) -> u8 {
    let unit = |v: &[f32]| {
        let n = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt().max(1e-12);
        v.iter().map(|x| *x as f64 / n).collect::<Vec<f64>>()
    };
    let q = unit(query);
    let mut sims: Vec<(f64, usize)> =
        bank.iter().enumerate().map(|(i, b)| (unit(b).iter().zip(&q).map(|(a, b)| a * b).sum(), i)).collect();
    sims.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut scores = [0.0f64; 10];
    for &(s, i) in &sims[..k.min(sims.len())] {
        scores[labels[i] as usize] += (s / t).exp();
    }
    (0..10).fold(0, |best, c| if scores[c] > scores[best] { c } else { best }) as u8
}

#[test]
fn chunked_knn_agrees_with_brute_force() {
    let mut rng = StdRng::seed_from_u64(11);
    let (n, m, d, k) = (300, 1234, 8, 20);
    let rows = |count: usize, rng: &mut StdRng| -> Vec<Vec<f32>> {
        (0..count).map(|_| (0..d).map(|_| rng.gen_range(-1.0f32..1.0)).collect()).collect()
    };
    let bank_rows = rows(n, &mut rng);
    let query_rows = rows(m, &mut rng);
    let labels: Vec<u8> = (0..n).map(|_| rng.gen_range(0..10)).collect();
    let tensor = |r: &[Vec<f32>]| Tensor::from_vec(r.concat(), (r.len(), d), &Device::Cpu).unwrap();
    let predicted = knn_predict(&tensor(&bank_rows), &labels, &tensor(&query_rows), k, 0.1).unwrap();
    let expected: Vec<u8> = query_rows.iter().map(|q| brute_force(&bank_rows, &labels, q, k, 0.1)).collect();
    let agree = predicted.iter().zip(&expected).filter(|(a, b)| a == b).count();
    // f32 similarities may reorder near-ties against the f64 reference; nearly all must agree.
    assert!(agree >= m - 3, "{agree} of {m} agree");
}

#[test]
fn linear_probe_separates_a_separable_set() {
    // Four well-separated Gaussian blobs in 5-D, on different scales per feature.
    let mut rng = StdRng::seed_from_u64(2);
    let centres =
        [[3.0, 0.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0, 0.0], [0.0, 0.0, -3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0, 3.0]];
    let make = |count: usize, rng: &mut StdRng| {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..count {
            let c = i % 4;
            x.extend((0..5).map(|j| (centres[c][j] + rng.gen_range(-0.5..0.5)) * (1.0 + 10.0 * j as f32)));
            y.push(c as u8);
        }
        (Tensor::from_vec(x, (count, 5), &Device::Cpu).unwrap(), y)
    };
    let (train, ytrain) = make(400, &mut rng);
    let (test, ytest) = make(100, &mut rng);
    let r = linear_probe(&train, &ytrain, &test, &ytest, &LinearProbe { epochs: 20, ..Default::default() }).unwrap();
    assert_eq!((r.train_accuracy, r.test_accuracy), (1.0, 1.0));
    assert!(r.loss < 0.05, "loss {}", r.loss);
    // Deterministic for a seed.
    let again =
        linear_probe(&train, &ytrain, &test, &ytest, &LinearProbe { epochs: 20, ..Default::default() }).unwrap();
    assert_eq!(r, again);
    let e = linear_probe(&train, &ytrain[..10], &test, &ytest, &LinearProbe::default()).unwrap_err();
    assert_eq!(code(e), "ssl::eval::shape");
}

#[test]
fn raw_pixel_baselines_on_the_bundled_subset() {
    let d = data::load_bundled().unwrap();
    let knn = raw_pixel_knn(&d, 200, 0.1).unwrap();
    println!("raw-pixel kNN (k = 200, t = 0.1), bundled subset 10,000 / 2,000: {:.2} %", 100.0 * knn);
    assert!((0.70..0.76).contains(&knn), "{knn}");
    let flat = |x: &[u8]| {
        let v: Vec<f32> = x.iter().map(|&p| p as f32 / 255.0).collect();
        Tensor::from_vec(v, (x.len() / 784, 784), &Device::Cpu).unwrap()
    };
    let r = linear_probe(
        &flat(&d.train_images),
        d.train_labels.as_ref().unwrap(),
        &flat(&d.test_images),
        d.test_labels.as_ref().unwrap(),
        &LinearProbe::default(),
    )
    .unwrap();
    println!(
        "raw-pixel linear probe, bundled subset: test {:.2} %, train {:.2} %, loss {:.4}",
        100.0 * r.test_accuracy,
        100.0 * r.train_accuracy,
        r.loss
    );
    assert!((0.78..0.88).contains(&r.test_accuracy), "{}", r.test_accuracy);
}

/// `cargo test --release --test knn -- --ignored --nocapture` with the Debian package installed.
#[test]
#[ignore = "needs dataset-fashion-mnist; slow in debug"]
fn raw_pixel_baselines_on_the_full_set() {
    if !Path::new(data::DEBIAN_DIR).is_dir() {
        println!("skipped: {} is absent (apt-get install dataset-fashion-mnist)", data::DEBIAN_DIR);
        return;
    }
    let d = data::load(&ssl_lang::check::recipe::Data::FashionMnist, None).unwrap();
    assert_eq!((d.train_len(), d.test_len()), (60_000, 10_000));
    let start = std::time::Instant::now();
    let knn = raw_pixel_knn(&d, 200, 0.1).unwrap();
    println!("raw-pixel kNN, full set 60,000 / 10,000: {:.2} % ({:.1} s)", 100.0 * knn, start.elapsed().as_secs_f64());
    let flat = |x: &[u8]| {
        let v: Vec<f32> = x.iter().map(|&p| p as f32 / 255.0).collect();
        Tensor::from_vec(v, (x.len() / 784, 784), &Device::Cpu).unwrap()
    };
    let start = std::time::Instant::now();
    let r = linear_probe(
        &flat(&d.train_images),
        d.train_labels.as_ref().unwrap(),
        &flat(&d.test_images),
        d.test_labels.as_ref().unwrap(),
        &LinearProbe::default(),
    )
    .unwrap();
    println!(
        "raw-pixel linear probe, full set: test {:.2} %, train {:.2} % ({:.1} s)",
        100.0 * r.test_accuracy,
        100.0 * r.train_accuracy,
        start.elapsed().as_secs_f64()
    );
}
