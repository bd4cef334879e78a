//! End-to-end training on a tiny network and a slice of the data (fast enough for CI): a run writes
//! its directory, resuming continues bit for bit, a NaN stops the run with a coded error, `eval`
//! reads the checkpoint, and bad overrides are coded errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ssl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ssl-lang")).args(args).output().expect("binary runs")
}

fn runs_root(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ssl-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

const TINY: &[&str] = &[
    "--set",
    "batch=32",
    "--set",
    "encoder=resnet_mini(widths = [8, 16, 16])",
    "--set",
    "projector=mlp(hidden = 64, out = 32)",
    "--set",
    "epochs=1",
    "--limit",
    "512",
    "--log-every",
    "1",
];

fn train(objective: &str, root: &Path, name: &str, extra: &[&str]) -> Output {
    let file = format!("{}/objectives/{objective}.ssl", env!("CARGO_MANIFEST_DIR"));
    let mut args = vec!["train", file.as_str(), "--runs", root.to_str().unwrap(), "--name", name];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    ssl(&args)
}

fn records(root: &Path, name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(root.join(name).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn resume_continues_exactly_and_eval_reads_the_checkpoint() {
    let root = runs_root("resume");
    let whole = train("moco", &root, "whole", &["--max-steps", "4"]);
    assert!(whole.status.success(), "{}", String::from_utf8_lossy(&whole.stderr));
    let first = train("moco", &root, "split", &["--max-steps", "2"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let rest = train("moco", &root, "split", &["--max-steps", "4", "--resume"]);
    assert!(rest.status.success(), "{}", String::from_utf8_lossy(&rest.stderr));

    let steps = |name: &str| -> Vec<(u64, f64)> {
        records(&root, name)
            .iter()
            .filter(|r| r["kind"] == "step")
            .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
            .collect()
    };
    let (a, b) = (steps("whole"), steps("split"));
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "a resumed run reproduces the uninterrupted one exactly");
    assert!(a.iter().all(|(_, l)| l.is_finite()));
    let last_eval = |name: &str| records(&root, name).into_iter().rfind(|r| r["kind"] == "eval").unwrap();
    assert_eq!(last_eval("whole")["knn_top1"], last_eval("split")["knn_top1"]);

    for file in ["config.json", "metrics.jsonl", "checkpoint.safetensors", "checkpoint.json", "zstd.svg", "knn.svg"] {
        assert!(root.join("whole").join(file).exists(), "{file} written");
    }
    let step = records(&root, "whole").into_iter().find(|r| r["kind"] == "step").unwrap();
    for field in [
        "lr",
        "momentum",
        "pos_sim",
        "z_std_online",
        "z_std_target",
        "effective_rank",
        "positive_norm",
        "push_norm",
        "rss_mb",
        "conv_ms",
        "conv_gflop",
    ] {
        assert!(!step[field].is_null(), "metrics carry {field}");
    }
    assert!(step["conv_gflop"].as_f64().unwrap() > 0.0, "the step's convolutions are counted");
    let baseline = records(&root, "whole").into_iter().find(|r| r["kind"] == "baseline").unwrap();
    assert!(baseline["raw_pixel_knn"].as_f64().unwrap() > 0.3, "raw pixels beat chance on 10 classes");

    let eval = ssl(&["eval", root.join("whole").to_str().unwrap(), "--knn"]);
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    let report = String::from_utf8_lossy(&eval.stdout);
    let expected = format!("{:.2} %", last_eval("whole")["knn_top1"].as_f64().unwrap() * 100.0);
    assert!(report.contains(&expected), "eval of the final checkpoint gives the run's last kNN {expected}:\n{report}");
    // The backbone's features' effective rank, of their width (the last stage's channels).
    let rank_line = report.lines().find_map(|l| l.strip_prefix("backbone features: effective rank ")).expect("a rank");
    let (rank, width) = rank_line.split_once(" of ").unwrap();
    let (rank, width): (f64, usize) = (rank.parse().unwrap(), width.split(' ').next().unwrap().parse().unwrap());
    assert!(rank > 1.0 && rank <= width as f64, "{report}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_nan_stops_the_run_with_a_coded_error() {
    let root = runs_root("nan");
    let out = train("unigrad", &root, "nan", &["--max-steps", "4", "--set", "unigrad.lambda=1e30"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ssl::train::nonfinite"), "{err}");
    assert!(err.contains("step"), "{err}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn bad_overrides_are_coded_errors() {
    let root = runs_root("set");
    let out = train("unigrad", &root, "x", &["--set", "unigrad.lamda=3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `lambda`?"));
    let out = train("unigrad", &root, "y", &["--set", "batch=0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ssl::recipe::value"));
    let out = train("unigrad", &root, "z", &["--set", "unigrad.rho=1.5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside"));
    std::fs::remove_dir_all(&root).ok();
}

/// Every standard objective trains a few steps on the bundled subset without a NaN, in both forms, and the
/// weights move away from their (seeded) initial values.
#[test]
fn every_standard_objective_trains_and_changes_the_weights() {
    let root = runs_root("all");
    let bundled = format!("{}/data/fashion-mnist-subset", env!("CARGO_MANIFEST_DIR"));
    for name in ["simclr", "moco", "byol", "simsiam", "barlow_twins", "vicreg", "unigrad"] {
        // The original loss trains too (its logged loss is `total`).
        let out = train(
            name,
            &root,
            "loss",
            &["--max-steps", "2", "--data", &bundled, "--set", "eval=none", "--set", "form=loss"],
        );
        assert!(out.status.success(), "{name}, form = loss: {}", String::from_utf8_lossy(&out.stderr));
        let totals: Vec<f64> = records(&root, "loss")
            .iter()
            .filter(|r| r["kind"] == "step")
            .map(|r| r["loss"].as_f64().unwrap())
            .collect();
        assert!(totals.len() == 2 && totals.iter().all(|l| l.is_finite()), "{name}, form = loss: {totals:?}");
        std::fs::remove_dir_all(root.join("loss")).unwrap();

        let out = train(name, &root, name, &["--max-steps", "2", "--data", &bundled, "--set", "eval=none"]);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let losses: Vec<f64> = records(&root, name)
            .iter()
            .filter(|r| r["kind"] == "step")
            .map(|r| r["loss"].as_f64().or(r["pos_sim"].as_f64()).unwrap())
            .collect();
        assert_eq!(losses.len(), 2, "{name}");
        assert!(losses.iter().all(|l| l.is_finite()), "{name}: {losses:?}");

        let ckpt =
            candle_core::safetensors::load(root.join(name).join("checkpoint.safetensors"), &candle_core::Device::Cpu)
                .unwrap();
        let (program, _) = ssl_lang::compile(
            &std::fs::read_to_string(format!("{}/objectives/{name}.ssl", env!("CARGO_MANIFEST_DIR"))).unwrap(),
        );
        let mut recipe = program.recipe.clone();
        let mut objective = program.objectives[0].clone();
        let sets: Vec<String> = TINY.chunks(2).filter(|p| p[0] == "--set").map(|p| p[1].to_string()).collect();
        ssl_lang::runtime::overrides::apply(&mut recipe, &mut objective, &sets).unwrap();
        let init = ssl_lang::nn::SiameseNet::from_recipe(
            &recipe,
            ssl_lang::data::idx::SHAPE,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let moved = init.params().to_map().unwrap().iter().any(|(k, v)| {
            let trained = &ckpt[&format!("online.{k}")];
            (trained - v).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0
        });
        assert!(moved, "{name}: training changed no weight");
    }
    std::fs::remove_dir_all(&root).ok();
}

/// A short UniGrad run (32 steps of 64 on 2,048 bundled images, a small resnet_mini) lowers its
/// loss and beats the random-init encoder's kNN (measured: 51.6 % → 56.3 %, loss −0.35 → −0.46).
#[test]
fn a_short_unigrad_run_learns() {
    let root = runs_root("learn");
    let file = format!("{}/objectives/unigrad.ssl", env!("CARGO_MANIFEST_DIR"));
    let bundled = format!("{}/data/fashion-mnist-subset", env!("CARGO_MANIFEST_DIR"));
    let out = ssl(&[
        "train",
        &file,
        "--runs",
        root.to_str().unwrap(),
        "--name",
        "learn",
        "--data",
        &bundled,
        "--set",
        "batch=64",
        "--set",
        "encoder=resnet_mini(widths = [8, 16, 16])",
        "--set",
        "projector=mlp(hidden = 64, out = 32)",
        "--set",
        "epochs=1",
        "--set",
        "optimizer=sgd(lr = 0.1)",
        "--limit",
        "2048",
        "--log-every",
        "8",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let all = records(&root, "learn");
    let losses: Vec<f64> = all.iter().filter(|r| r["kind"] == "step").map(|r| r["loss"].as_f64().unwrap()).collect();
    assert!(losses.last().unwrap() < losses.first().unwrap(), "loss went down: {losses:?}");
    let init = all.iter().find(|r| r["kind"] == "baseline").unwrap()["random_init_knn"].as_f64().unwrap();
    let last = all.iter().rfind(|r| r["kind"] == "eval").unwrap()["knn_top1"].as_f64().unwrap();
    assert!(last > init, "kNN {last} beats the random-init encoder's {init}");
    // The linear probe: both baselines before the first step, the finished encoder's at the end, all in [0, 1] and
    // printed on the last line.
    let baseline = all.iter().find(|r| r["kind"] == "baseline").unwrap();
    let end = all.iter().rfind(|r| r["kind"] == "end").unwrap();
    for probe in [&baseline["raw_pixel_linear"], &baseline["random_init_linear"], &end["linear_top1"]] {
        assert!(probe.as_f64().is_some_and(|p| (0.1..=1.0).contains(&p)), "a linear probe above chance: {probe}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("baseline: raw-pixel linear probe") && stdout.contains(", linear probe "), "{stdout}");
    std::fs::remove_dir_all(&root).ok();
}

/// SimCLR's original loss (NT-Xent over the online features, `form = loss`) trains by autodiff: its logged loss is
/// the batch's NT-Xent and falls over 12 steps (measured 3.64 → 3.16; ln 63 = 4.14).
#[test]
fn the_loss_form_trains_the_original_loss() {
    let root = runs_root("form");
    let bundled = format!("{}/data/fashion-mnist-subset", env!("CARGO_MANIFEST_DIR"));
    let extra = ["--max-steps", "12", "--data", &bundled, "--set", "eval=none", "--set", "form=loss"];
    let out = train("simclr", &root, "loss", &extra);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let losses: Vec<f64> =
        records(&root, "loss").iter().filter(|r| r["kind"] == "step").map(|r| r["loss"].as_f64().unwrap()).collect();
    assert_eq!(losses.len(), 12);
    // NT-Xent over 2N = 64 online features starts near ln(63) − 1/τ·(positive similarity) and must fall.
    assert!(losses[0] > 2.0 && losses[0] < 63f64.ln(), "{losses:?}");
    assert!(losses[11] < losses[0] - 0.1, "NT-Xent did not fall: {losses:?}");
    std::fs::remove_dir_all(&root).ok();
}

/// A queue is empty at step 1: a logsumexp over a queue-only set is −inf there (defined, the loss of an empty
/// set), so the step logs no loss instead of stopping the run as non-finite; the queue fills and later steps log it.
#[test]
fn an_empty_queue_at_step_one_does_not_stop_training() {
    let root = runs_root("queue");
    std::fs::create_dir_all(&root).unwrap();
    let file = root.join("queue_only.ssl");
    std::fs::write(
        &file,
        "objective queue_only { param tau = 0.2 in (0, inf)\n state Q = fifo(64, targets)\n \
         weight s(v in Q) = softmax(dot(u1, v) / tau)\n positive = -t2 / tau\n negative = sum(s(v) * v for v in Q) / tau\n \
         loss = -dot(u1, t2) / tau + logsumexp(dot(u1, v) / tau for v in Q) }",
    )
    .unwrap();
    let bundled = format!("{}/data/fashion-mnist-subset", env!("CARGO_MANIFEST_DIR"));
    let mut args = vec!["train", file.to_str().unwrap(), "--runs", root.to_str().unwrap(), "--name", "q"];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&["--max-steps", "3", "--data", &bundled, "--set", "eval=none"]);
    let out = ssl(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let losses: Vec<Option<f64>> =
        records(&root, "q").iter().filter(|r| r["kind"] == "step").map(|r| r["loss"].as_f64()).collect();
    assert_eq!(losses.len(), 3);
    assert!(losses[0].is_none() && losses[1..].iter().all(|l| l.is_some_and(f64::is_finite)), "{losses:?}");
    std::fs::remove_dir_all(&root).ok();
}

/// The linear probe reads the features the recipe's `probe` names: SimCLR's file probes the last map averaged over
/// a 2×2 grid (4 × 16 numbers with this encoder), `train`'s final probe and `eval --linear` of its checkpoint agree,
/// and eval caches the grid's features apart from kNN's global average (16 numbers).
#[test]
fn the_probe_reads_the_grid_its_recipe_names() {
    let root = runs_root("probe-grid");
    let out = train("simclr", &root, "grid", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("backbone's last map averaged over a 2×2 grid"), "the protocol says so: {stdout}");
    let trained =
        stdout.lines().find_map(|l| l.strip_prefix("final linear probe ")).expect("a final probe").to_string();
    let run = root.join("grid");
    let eval = ssl(&["eval", run.to_str().unwrap(), "--knn", "--linear"]);
    let report = String::from_utf8_lossy(&eval.stdout);
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    assert!(report.contains(&format!("linear probe top-1 {trained}")), "eval's probe is train's {trained}: {report}");
    let mut widths: Vec<usize> = std::fs::read_dir(&run)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("features-")))
        .map(|p| {
            let cached = candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap();
            assert_eq!(cached["bank"].dim(0).unwrap(), 512, "one row per training image");
            cached["bank"].dim(1).unwrap()
        })
        .collect();
    widths.sort();
    assert_eq!(widths, vec![16, 64], "kNN's global average and the probe's 2×2 grid, cached apart");
    std::fs::remove_dir_all(&root).ok();
}

/// The baselines of a run with the same images, protocols and initial encoder are read, not measured again (a
/// sweep's cells share them); another seed draws another encoder and measures its own; a damaged file is measured
/// again.
#[test]
fn runs_with_the_same_initial_encoder_share_their_baselines() {
    let root = runs_root("baselines");
    let run = |name: &str, extra: &[&str]| {
        let out = train("simclr", &root, name, &[&["--max-steps", "1"], extra].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let baseline = records(&root, name).into_iter().find(|r| r["kind"] == "baseline").unwrap();
        (stdout.contains("baseline: as an earlier run"), baseline)
    };
    let (kept, first) = run("a", &[]);
    assert!(!kept, "the first run measures its baselines");
    let files = || std::fs::read_dir(root.join(".baselines")).map_or(0, |d| d.count());
    assert_eq!(files(), 1);
    // Another objective file with the same encoder and seed: the same random-init features.
    let file = format!("{}/objectives/moco.ssl", env!("CARGO_MANIFEST_DIR"));
    let mut args = vec!["train", file.as_str(), "--runs", root.to_str().unwrap(), "--name", "b", "--max-steps", "1"];
    args.extend_from_slice(TINY);
    let out = ssl(&args);
    assert!(String::from_utf8_lossy(&out.stdout).contains("baseline: as an earlier run"), "moco shares the encoder");
    assert_eq!(records(&root, "b").into_iter().find(|r| r["kind"] == "baseline").unwrap(), first);

    let (kept, other) = run("c", &["--set", "seed=1"]);
    assert!(!kept, "another seed is another encoder");
    assert_ne!(other["random_init_knn"], serde_json::Value::Null);
    assert_eq!(other["raw_pixel_knn"], first["raw_pixel_knn"], "the raw pixels do not depend on the seed");
    assert_eq!(files(), 2);

    for entry in std::fs::read_dir(root.join(".baselines")).unwrap() {
        std::fs::write(entry.unwrap().path(), "{ not json").unwrap();
    }
    let (kept, again) = run("d", &[]);
    assert!(!kept, "a damaged file is measured again");
    assert_eq!(again, first, "measured again, the baselines are the same");
    std::fs::remove_dir_all(&root).ok();
}
