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

/// Two ranks in one process (threads exchanging through memory) train 4 steps of MoCo through `train` itself: both
/// finish — their weights compared after every step (`log_every = 1`), a difference would fail the run — and only
/// rank 0 writes a run directory, with every step logged. (Over MPI processes: tests/mpi.sh.)
#[test]
fn two_in_memory_ranks_train_with_identical_weights_and_one_run_directory() {
    use ssl_lang::collective::{memory::MemoryRank, Comm};
    use ssl_lang::runtime::train::{train, TrainOptions};
    let root = std::env::temp_dir().join(format!("ssl-ranks-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let source = std::fs::read_to_string(format!("{}/objectives/moco.ssl", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let (program, _) = ssl_lang::compile(&source);
    let (objective, mut recipe) = (program.objectives[0].clone(), program.recipe.clone());
    let sets: Vec<String> =
        ["batch=32", "encoder=resnet_mini(widths = [8, 16, 16])", "projector=mlp(hidden = 64, out = 32)", "eval=none"]
            .map(String::from)
            .to_vec();
    let mut o = objective.clone();
    ssl_lang::runtime::overrides::apply(&mut recipe, &mut o, &sets).unwrap();
    let results: Vec<Result<usize, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = MemoryRank::world(2)
            .into_iter()
            .map(|rank| {
                let (o, recipe, source, root) = (&o, &recipe, &source, &root);
                s.spawn(move || {
                    let opts = TrainOptions {
                        job: Some(Comm(std::rc::Rc::new(rank))),
                        data_dir: Some(ssl_lang::data::BUNDLED_DIR.into()),
                        runs_root: root.clone(),
                        name: Some("two".into()),
                        resume: false,
                        allow_changes: false,
                        max_steps: Some(4),
                        limit: Some(512),
                        backend: ssl_lang::backend::Backend::Fused,
                        log_every: 1,
                        overrides: vec![],
                        device: candle_core::Device::Cpu,
                        layers: Default::default(),
                        stop: Default::default(),
                        edge: ssl_lang::commands::Edge::new(ssl_lang::commands::Format::Human),
                    };
                    train(source, o, recipe, &opts).map(|s| s.steps).map_err(|e| e.message)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results, vec![Ok(4), Ok(4)]);
    let runs: Vec<_> = std::fs::read_dir(&root).unwrap().collect();
    assert_eq!(runs.len(), 1, "rank 0 alone writes a run directory");
    let metrics = std::fs::read_to_string(root.join("two/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"kind\":\"step\"")).count(), 4);
    let _ = std::fs::remove_dir_all(&root);
}
