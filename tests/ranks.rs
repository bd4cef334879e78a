//! Data-parallel plans (`ir::distribute`): on P in-process ranks every objective computes, per rank, its rows of
//! the single-process gradients, the same states and loss (`verify --ranks`, tolerances 1e-10 f64 / 1e-5 f32 fused
//! and 1e-10 for the loss form), and the communication the compiler derives is the one the objective's types call
//! for.

use ssl_lang::check::typed::Objective;
use ssl_lang::ir::cost::Sizes;
use ssl_lang::ir::distribute::{distribute, runs_per_step, transfers, Sets};
use ssl_lang::ir::{self, Axis, Op};
use ssl_lang::verify::verify_ranks;

fn objectives(path: &str) -> Vec<Objective> {
    let source = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).expect("source");
    let (program, diagnostics) = ssl_lang::compile(&source);
    assert!(!ssl_lang::diagnostic::has_errors(&diagnostics), "{diagnostics:#?}");
    program.objectives
}

const FILES: &[&str] = &[
    "objectives/simclr.ssl",
    "objectives/moco.ssl",
    "objectives/byol.ssl",
    "objectives/simsiam.ssl",
    "objectives/barlow_twins.ssl",
    "objectives/vicreg.ssl",
    "objectives/unigrad.ssl",
    "examples/dcl.ssl",
    "examples/nnclr.ssl",
    "examples/wmse.ssl",
    "examples/hard_positive_decorrelation.ssl",
];

#[test]
fn every_objective_on_two_and_three_ranks_equals_one_process() {
    for file in FILES {
        for o in objectives(file) {
            for ranks in [2, 3] {
                let rows = verify_ranks(&o, ranks).unwrap();
                assert!(rows.len() >= 2, "{}: both precisions are checked", o.name);
                for row in rows {
                    assert!(
                        row.pass,
                        "{} on {ranks} ranks: {} failed ({:?}): {}",
                        o.name, row.check, row.max_error, row.note
                    );
                }
            }
        }
    }
}

/// The per-rank graph of `name` at batch 256, D = 128, 2 ranks, as training builds it (reassociated, by bytes).
fn per_rank(file: &str) -> ir::Lowered {
    let o = objectives(file).remove(0);
    let sizes = Sizes::of(&o, 256, 128);
    distribute(&ir::optimize(&ir::lower(&o), &sizes), &sizes, 2, Sets::ByBytes)
}

/// The collectives of a gradient-form step.
fn kinds(l: &ir::Lowered) -> Vec<(&'static str, Vec<Axis>)> {
    let sizes = Sizes { n: 256, d: 128, fifo: vec![4096; 4] };
    let runs = runs_per_step(l, 2, false);
    transfers(&l.graph, &sizes).into_iter().filter(|t| runs[t.node.0 as usize] > 0).map(|t| (t.kind, t.axes)).collect()
}

#[test]
fn contrastive_negatives_gather_the_targets() {
    // SimCLR's softmax over targets meets the batch axis in its logits: every rank needs every target row.
    let l = per_rank("objectives/simclr.ssl");
    let k = kinds(&l);
    assert!(k.iter().any(|(kind, axes)| *kind == "all-gather" && axes.len() == 2), "{k:?}");
    assert!(!l
        .graph
        .sharded
        .iter()
        .any(|a| matches!(a, Axis::K(_)) && l.graph.axes.iter().any(|x| x.contains(a) && x.contains(&Axis::N))));
}

#[test]
fn a_correlation_matrix_is_reduced_locally_then_all_reduced() {
    // UniGrad's `mean(outer(t, t) for t in targets)`: local TᵀT, then one all-reduce of D × D (64 KiB at D = 128
    // over 2 ranks) instead of gathering 2N × D rows (128 KiB).
    let l = per_rank("objectives/unigrad.ssl");
    let k = kinds(&l);
    assert_eq!(k, vec![("all-reduce", vec![Axis::D, Axis::E])], "{}", l.dump(None));
}

#[test]
fn fifo_pushes_are_gathered_so_every_rank_keeps_the_same_queue() {
    let l = per_rank("objectives/moco.ssl");
    let (_, pushed) = l.fifo_pushes[0];
    assert!(matches!(l.graph.op(pushed), Op::Gather(..)), "{}", l.dump(None));
}

#[test]
fn a_batch_statistic_of_live_features_in_total_is_gathered_not_sharded() {
    // Barlow Twins' `total` normalises z by the batch mean and std: sharding the batch there would cut autodiff
    // paths through those statistics (the other ranks' uses), so its sets are gathered.
    let l = per_rank("objectives/barlow_twins.ssl");
    let g = &l.graph;
    let live_gathers = (0..g.ops.len())
        .filter(|&i| matches!(&g.ops[i], Op::Gather(x, Axis::N, ..) if matches!(g.ops[x.0 as usize], Op::Feature(_))))
        .count();
    assert_eq!(live_gathers, 2, "z1 and z2 gathered: {}", l.dump(None));
}

/// Trains `objective` for `steps(rank)` steps of batch 32 (a small network, the bundled subset) on `ranks`
/// in-memory ranks (threads exchanging through memory) through `train` itself, in a fresh run directory under
/// `root`. Returns each rank's result (its steps, or its error's code and message) and the run directory rank 0 wrote.
fn train_on_ranks(
    ranks: usize,
    objective: &str,
    extra: &[&str],
    steps: fn(usize) -> usize,
    root: &std::path::Path,
) -> (Vec<Result<usize, String>>, std::path::PathBuf) {
    use ssl_lang::collective::{memory::MemoryRank, Comm};
    use ssl_lang::runtime::train::{train, TrainOptions};
    let source = std::fs::read_to_string(format!("{}/objectives/{objective}.ssl", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let (program, _) = ssl_lang::compile(&source);
    let (mut o, mut recipe) = (program.objectives[0].clone(), program.recipe.clone());
    let mut sets: Vec<String> =
        ["batch=32", "encoder=resnet_mini(widths = [8, 16, 16])", "projector=mlp(hidden = 64, out = 32)", "eval=none"]
            .map(String::from)
            .to_vec();
    sets.extend(extra.iter().map(|s| s.to_string()));
    ssl_lang::runtime::overrides::apply(&mut recipe, &mut o, &sets).unwrap();
    let name = format!("{objective}-{ranks}-{}", extra.join("-").replace(['=', ' '], ""));
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = MemoryRank::world(ranks)
            .into_iter()
            .enumerate()
            .map(|(r, rank)| {
                let (o, recipe, source, name) = (&o, &recipe, &source, &name);
                s.spawn(move || {
                    let opts = TrainOptions {
                        job: Some(Comm::new(rank)),
                        data_dir: Some(ssl_lang::data::BUNDLED_DIR.into()),
                        runs_root: root.to_path_buf(),
                        name: Some(name.clone()),
                        resume: false,
                        allow_changes: false,
                        max_steps: Some(steps(r)),
                        limit: Some(512),
                        backend: ssl_lang::backend::Backend::Fused,
                        log_every: 1,
                        overrides: vec![],
                        device: candle_core::Device::Cpu,
                        layers: Default::default(),
                        stop: Default::default(),
                        edge: ssl_lang::commands::Edge::new(ssl_lang::commands::Format::Human),
                    };
                    train(source, o, recipe, &opts).map(|s| s.steps).map_err(|e| format!("{}: {}", e.code, e.message))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (results, root.join(name))
}

/// A metric a run logged, step by step.
fn logged(run: &std::path::Path, metric: &str) -> Vec<f64> {
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "step")
        .map(|r| r[metric].as_f64().unwrap_or(f64::NAN))
        .collect()
}

/// The largest difference between the online weights of two runs' checkpoints, relative to the largest weight.
fn weights_difference(a: &std::path::Path, b: &std::path::Path) -> f64 {
    let load = |run: &std::path::Path| {
        candle_core::safetensors::load(run.join("checkpoint.safetensors"), &candle_core::Device::Cpu).unwrap()
    };
    let (a, b) = (load(a), load(b));
    let (mut diff, mut scale) = (0f64, 0f64);
    let mut compared = 0;
    for (name, x) in a.iter().filter(|(n, _)| n.starts_with("online.")) {
        let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap();
        let (x, y) = (flat(x).to_vec1::<f64>().unwrap(), flat(&b[name]).to_vec1::<f64>().unwrap());
        for (u, v) in x.iter().zip(&y) {
            diff = diff.max((u - v).abs());
            scale = scale.max(u.abs());
        }
        compared += 1;
    }
    assert!(compared > 10, "the checkpoints hold the online weights");
    diff / scale
}

/// Two in-memory ranks train 4 steps of MoCo through `train` itself: both finish — their weights compared after
/// every step (`log_every = 1`), a difference would fail the run — and only rank 0 writes a run directory, with
/// every step logged. (Over MPI processes: tests/mpi.sh.)
#[test]
fn two_in_memory_ranks_train_with_identical_weights_and_one_run_directory() {
    let root = std::env::temp_dir().join(format!("ssl-ranks-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (results, run) = train_on_ranks(2, "moco", &[], |_| 4, &root);
    assert_eq!(results, vec![Ok(4), Ok(4)]);
    let runs: Vec<_> = std::fs::read_dir(&root).unwrap().collect();
    assert_eq!(runs.len(), 1, "rank 0 alone writes a run directory");
    assert_eq!(logged(&run, "loss").len(), 4);
    let _ = std::fs::remove_dir_all(&root);
}

/// A rank that leaves the job (here: it stops after 2 of the 6 steps the other trains) makes the other fail with
/// `ssl::ranks::lost` at its next collective instead of waiting for it forever.
#[test]
fn a_rank_that_leaves_stops_the_others_with_a_coded_error() {
    let root = std::env::temp_dir().join(format!("ssl-ranks-leave-{}", std::process::id()));
    let (results, _) = train_on_ranks(2, "simclr", &[], |rank| if rank == 1 { 2 } else { 6 }, &root);
    assert_eq!(results[1], Ok(2));
    let left = results[0].as_ref().expect_err("rank 0 went on without rank 1");
    assert!(left.starts_with("ssl::ranks::lost: "), "{left}");
    let _ = std::fs::remove_dir_all(&root);
}

/// A small learning rate, at which a last-bit difference between two runs does not grow within 10 steps (measured
/// at 0.001: losses 4e-6 and 1.2e-5 apart after 10 steps of SimCLR and MoCo; at 0.003, with the larger rounding of
/// Winograd F(4×4, 3×3), SimCLR's drifted 1.6e-4 by step 10).
const CALM: &str = "optimizer=sgd(lr = 0.001, momentum = 0.9, weight_decay = 5e-4)";

/// A momentum target (MoCo's own; SimCLR's file trains without one), which damps the growth of a last-bit
/// difference further: without it, SimCLR's losses on two ranks drifted 1.2e-4 (relative) from one process's in 10
/// steps, past the tolerance below.
const TARGET: &str = "momentum=cosine(0.99, 1.0)";

/// With `sync_bn = true`, two ranks train the model one process trains on the global batch: over 10 steps of
/// SimCLR and of MoCo (ema target, queue) the logged losses agree to 1e-4 relative, the health metrics (the global
/// batch's: rank 0 gathers the features' rows) to 1e-3, and the online weights to 1e-3 of the largest weight,
/// while BatchNorm per rank (each normalising its own half: another model) logs losses at least ten times
/// further off. Not bit for bit: f32 sums (convolution gradients over 16 images instead of 32, the gradient
/// all-reduce, the gathered contrastive rows) are added in another order, which changes last bits (~1e-7). Hence
/// the small learning rate: at the recipes' own (0.06 at batch 32), once such a difference flips a ReLU or a
/// max-pool's choice the runs drift apart as two runs of one process would from a 1e-7 perturbation — measured
/// for MoCo: 2e-2 of the weights after 10 steps, with 4 ranks as far from 2 as 2 from 1.
#[test]
fn two_ranks_with_sync_bn_train_what_one_process_trains() {
    let root = std::env::temp_dir().join(format!("ssl-ranks-syncbn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let worst =
        |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs() / x.abs().max(1.0)).fold(0.0, f64::max);
    for objective in ["simclr", "moco"] {
        let (one, alone) = train_on_ranks(1, objective, &[CALM, TARGET], |_| 10, &root);
        let (two, synced) = train_on_ranks(2, objective, &[CALM, TARGET, "sync_bn=true"], |_| 10, &root);
        let (_, per_rank) = train_on_ranks(2, objective, &[CALM, TARGET], |_| 10, &root);
        assert_eq!((one, two), (vec![Ok(10)], vec![Ok(10), Ok(10)]));
        for (metric, tolerance) in [
            ("loss", 1e-4),
            ("z_std_online", 1e-3),
            ("z_std_target", 1e-3),
            ("effective_rank", 1e-3),
            ("pos_sim", 1e-3),
        ] {
            let (a, b) = (logged(&alone, metric), logged(&synced, metric));
            assert_eq!((a.len(), b.len()), (10, 10));
            let error = worst(&a, &b);
            assert!(error <= tolerance, "{objective}: {metric} {a:?} alone, {b:?} on 2 ranks");
        }
        let weights = weights_difference(&alone, &synced);
        assert!(weights <= 1e-3, "{objective}: weights differ by {weights:e} with sync_bn");
        let (synced_loss, per_rank_loss) = (
            worst(&logged(&alone, "loss"), &logged(&synced, "loss")),
            worst(&logged(&alone, "loss"), &logged(&per_rank, "loss")),
        );
        assert!(
            per_rank_loss >= 10.0 * synced_loss.max(1e-6),
            "{objective}: losses off by {per_rank_loss:e} with BatchNorm per rank, {synced_loss:e} with sync_bn"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// The records of one kind (`baseline`, `eval`) a run logged.
fn records(run: &std::path::Path, kind: &str) -> Vec<serde_json::Value> {
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == kind)
        .collect()
}

/// Evaluation over ranks: each rank extracts one block of the bank's and the queries' features, rank 0 gathers and
/// scores them. Two ranks log the baselines one process logs (the random-init encoder's exactly: same weights, same
/// running statistics) and, after 4 steps with `sync_bn`, the same kNN top-1 within half a point (the features
/// agree to f32 rounding, which may move a query across a tie). Without `sync_bn` the ranks first take rank 0's
/// running statistics, and the run evaluates too.
#[test]
fn evaluation_over_ranks_scores_what_one_process_scores() {
    let root = std::env::temp_dir().join(format!("ssl-ranks-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let knn = "eval=knn(k = 20, t = 0.1)";
    let (one, alone) = train_on_ranks(1, "simclr", &[CALM, "sync_bn=true", knn], |_| 4, &root);
    let (two, synced) = train_on_ranks(2, "simclr", &[CALM, "sync_bn=true", knn], |_| 4, &root);
    let (three, per_rank) = train_on_ranks(2, "simclr", &[CALM, knn], |_| 4, &root);
    assert_eq!((one, two, three), (vec![Ok(4)], vec![Ok(4), Ok(4)], vec![Ok(4), Ok(4)]));
    for run in [&synced, &per_rank] {
        assert_eq!(records(run, "baseline"), records(&alone, "baseline"), "{}", run.display());
    }
    let top1 = |run: &std::path::Path| {
        let evals = records(run, "eval");
        assert_eq!(evals.len(), 1, "one evaluation at the last step");
        evals[0]["knn_top1"].as_f64().unwrap()
    };
    let (a, b, c) = (top1(&alone), top1(&synced), top1(&per_rank));
    assert!((a - b).abs() <= 0.005, "kNN top-1 {a} alone, {b} on 2 ranks with sync_bn");
    assert!(c > 0.3, "kNN top-1 {c} on 2 ranks with BatchNorm per rank");
    let _ = std::fs::remove_dir_all(&root);
}
