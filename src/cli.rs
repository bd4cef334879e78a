//! The command line: clap definitions and dispatch to `commands`, nothing else. Exit codes are decided by
//! [`commands::Failure::exit_code`]: 0 clean, 1 when the input is wrong, 2 for usage and I/O errors.

use crate::backend::Backend;
use crate::commands::{self, Edge, Failure, Format};
use crate::nn::LayerImpl;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// ssl-lang: write a Siamese self-supervised objective as a positive term, a negative term and a
/// balance (UniGrad's unified gradient form); check it, explain it, and train with it.
#[derive(Parser)]
#[command(name = "ssl-lang", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// `human` reports, or `json`: one JSON object per error (and per diagnostic of `check`, on stdout).
    #[arg(long, global = true, default_value = "human", value_parser = format_parser())]
    format: Format,
}

#[derive(Subcommand)]
enum Command {
    /// Check .ssl files and report every error and warning (exit 0 clean, 1 errors, 2 I/O).
    #[command(after_help = "Example: ssl-lang check objectives/*.ssl --deny-warnings")]
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Treat warnings as errors.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Train a grid — files × `--grid` values × seeds — one cell after another (or `--parallel P` at once), each a
    /// run directory under RUNS/NAME/, resumable; then a table (Markdown, CSV), a chart and a page (report.html) of
    /// kNN and linear-probe top-1, health, speed and wall time, mean ± std over seeds.
    #[command(
        after_help = "Examples:\n  ssl-lang sweep objectives/simclr.ssl objectives/unigrad.ssl --grid form=gradient,loss --grid 'momentum=none,cosine(0.99, 1.0)' --seeds 0,1,2 --name fidelity\n  ssl-lang sweep --report fidelity\nExit status: 0 every cell done, 1 a cell failed (its log is named), 2 usage or I/O, 130 stopped by a signal (run it again to resume)."
    )]
    Sweep {
        /// The .ssl files.
        #[arg(required_unless_present = "report")]
        files: Vec<PathBuf>,
        /// A grid axis: a `--set` key and its values, split at top-level commas (`cosine(0.99, 1.0)` is one value).
        #[arg(long = "grid", value_name = "KEY=V1,V2,...")]
        grid: Vec<String>,
        /// Override a recipe field or an objective param in every cell.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Seeds: each grid cell is trained once per seed (default: the recipe's seed).
        #[arg(long, value_delimiter = ',')]
        seeds: Vec<u64>,
        /// The sweep's name: its directory under --runs (default: `sweep`).
        #[arg(long, default_value = "sweep")]
        name: String,
        /// Rebuild the table of the sweep NAME from its run directories, training nothing.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["files", "grid", "seeds", "name"])]
        report: Option<String>,
        /// Where runs are written.
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// Train this many cells at once, the CPU threads split between them.
        #[arg(long, default_value_t = 1, value_parser = at_least_one)]
        parallel: usize,
        /// Stop every cell after this many steps.
        #[arg(long)]
        max_steps: Option<usize>,
        /// Use only the first N training and test images in every cell.
        #[arg(long)]
        limit: Option<usize>,
        /// A directory of Fashion-MNIST IDX files for every cell.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Show an objective's typed unified form: terms, shapes, params, states, family and recipe.
    #[command(after_help = "Example: ssl-lang explain objectives/unigrad.ssl --ir")]
    Explain {
        /// The .ssl file.
        file: PathBuf,
        /// Which objective, when the file holds several.
        #[arg(long)]
        objective: Option<String>,
        /// Also print the gradient IR the objective lowers to, as lowered and as optimised, with
        /// FLOP and byte counts per step at the sizes below.
        #[arg(long)]
        ir: bool,
        /// Batch size N for the IR's costs (default: the recipe's batch).
        #[arg(long)]
        n: Option<usize>,
        /// Feature dimension D for the IR's costs (default: the recipe's projector output).
        #[arg(long)]
        d: Option<usize>,
        /// With --ir: also the per-rank graph of data-parallel training on this many ranks, and each collective
        /// with its bytes per step.
        #[arg(long, requires = "ir", value_parser = clap::value_parser!(u64).range(1..=4096))]
        ranks: Option<u64>,
    },
    /// Evaluate one step of an objective on given features: reads `u1 u2 t1 t2` ([N, D] f32 or
    /// f64) and optional initial states (by state name) from a safetensors file; writes `g1`, `g2`,
    /// the updated states and, where the objective has one, the per-sample `loss`.
    #[command(
        after_help = "Example: ssl-lang grad objectives/simclr.ssl --inputs feats.safetensors --out grads.safetensors --normalize"
    )]
    Grad {
        /// The .ssl file.
        file: PathBuf,
        /// Which objective, when the file holds several.
        #[arg(long)]
        objective: Option<String>,
        /// Input tensors (safetensors).
        #[arg(long)]
        inputs: PathBuf,
        /// Where to write the results (safetensors).
        #[arg(long)]
        out: PathBuf,
        /// L2-normalise the rows of the inputs first.
        #[arg(long)]
        normalize: bool,
        /// `fused` kernels (default) or the op-by-op `reference`.
        #[arg(long, default_value = "fused", value_parser = backend_parser())]
        backend: Backend,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Train a Siamese encoder with an objective and its recipe on Fashion-MNIST, writing
    /// runs/NAME/ (metrics.jsonl, config.json, checkpoints, SVG plots, report.html).
    #[command(
        after_help = "Examples:\n  ssl-lang train objectives/unigrad.ssl --name u1\n  ssl-lang train objectives/unigrad.ssl --name u1 --resume\n  ssl-lang train objectives/unigrad.ssl --name u1 --resume --override --set epochs=20\nExit status: 0 done, 1 the input is wrong, 2 usage or I/O, 130 stopped by a signal after its checkpoint."
    )]
    Train {
        /// The .ssl file.
        file: PathBuf,
        /// Which objective (default: the one the train block names, else the first).
        #[arg(long)]
        objective: Option<String>,
        /// A directory of Fashion-MNIST IDX files (default: the recipe's, the Debian package's, or the bundled subset).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Override a recipe field or an objective param, e.g. `--set batch=128`, `--set unigrad.lambda=50`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// The run's name (default: objective and timestamp).
        #[arg(long)]
        name: Option<String>,
        /// Where runs are written.
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// Continue the run named by --name from its last checkpoint.
        #[arg(long, requires = "name")]
        resume: bool,
        /// With --resume: allow the epochs and the evaluation (`--set epochs=…`, `--set eval=…`) to differ from the
        /// run's; anything else that differs is still refused.
        #[arg(long = "override", requires = "resume")]
        allow_changes: bool,
        /// Stop after this many steps (the schedules still span the recipe's epochs).
        #[arg(long)]
        max_steps: Option<usize>,
        /// Use only the first N training and test images.
        #[arg(long)]
        limit: Option<usize>,
        /// Gradient backend.
        #[arg(long, default_value = "fused", value_parser = backend_parser())]
        backend: Backend,
        /// The network's layers: `ours` (fused kernels, the default) or `candle` (candle's conv2d, BatchNorm and
        /// ReLU with its autodiff: the baseline of `bench train --baseline`).
        #[arg(long, default_value = "ours", value_parser = layers_parser())]
        layers: LayerImpl,
        /// Log metrics every this many steps.
        #[arg(long, default_value_t = 10, value_parser = at_least_one)]
        log_every: usize,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Evaluate a run's latest checkpoint: weighted kNN and/or a linear probe on frozen features.
    #[command(after_help = "Example: ssl-lang eval runs/u1 --knn --linear")]
    Eval {
        /// A run directory (or a file inside it).
        run: PathBuf,
        /// Weighted kNN (the default when neither is asked for).
        #[arg(long)]
        knn: bool,
        /// A linear probe.
        #[arg(long)]
        linear: bool,
        #[command(flatten)]
        device: DeviceArg,
        /// A directory of Fashion-MNIST IDX files.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Write the HTML report of a run (results, health, curves, unified form, recipe), or compare several runs
    /// on one page.
    #[command(after_help = "Example: ssl-lang report runs/u1 runs/s1 --out compare.html")]
    Report {
        /// Run directories (or files inside them).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Where to write it (default: the run's own report.html for one run, ./report.html for several).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write a run's trained backbone (latest checkpoint) as safetensors: under torchvision's ResNet names
    /// (`--to torchvision`, resnet18/resnet50 only) or ours (`--to candle`).
    #[command(after_help = "Example: ssl-lang export runs/r18 --to torchvision r18.safetensors\n\
        then in Python: torchvision.models.resnet18().load_state_dict(safetensors.torch.load_file(\"r18.safetensors\"), strict=False)")]
    Export {
        /// A run directory (or a file inside it).
        run: PathBuf,
        /// Whose parameter names to write.
        #[arg(long, value_enum)]
        to: commands::export::Names,
        /// The safetensors file to write.
        out: PathBuf,
    },
    /// Print a completion script for a shell.
    #[command(after_help = "Example: ssl-lang completions bash > ~/.local/share/bash-completion/completions/ssl-lang")]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Prove each objective's gradient: autodiff of its `loss` (f64) against positive + balance *
    /// negative on fresh random inputs, and check one whole step of the fused kernels against the reference
    /// (with `--device cuda[:N]`: a step on that GPU against the CPU reference, 1e-4). Prints a table; exit 1 on
    /// any failure.
    #[command(
        after_help = "Examples: ssl-lang verify objectives/*.ssl\n          ssl-lang verify --ranks 2 objectives/*.ssl"
    )]
    Verify {
        /// The .ssl files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        device: DeviceArg,
        /// Instead: prove the data-parallel plan on this many in-process ranks equal to one process on the global
        /// batch (gradient rows, states, loss; 1e-10 in f64, 1e-5 in f32 fused).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
        ranks: Option<u64>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Training throughput (pairs/s) per objective, with the share of each phase of the step and peak memory.
    #[command(
        after_help = "Example: ssl-lang bench train --steps 3 --against-torch \"$(bash ../shared/reference/pytorch/setup.sh)\""
    )]
    Train {
        /// Objective files (default: every file in objectives/).
        files: Vec<PathBuf>,
        /// Batch size.
        #[arg(long, default_value_t = 256, value_parser = at_least_one)]
        batch: usize,
        /// Steps measured per objective (after one warm-up step).
        #[arg(long, default_value_t = 3, value_parser = at_least_one)]
        steps: usize,
        /// Measure each objective (and with --against-torch its reference) this many times, alternately, and
        /// report the medians.
        #[arg(long, default_value_t = 1, value_parser = at_least_one)]
        rounds: usize,
        /// Data directory (default: the bundled subset).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Extra recipe overrides for every objective.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Also run every objective with candle's own conv2d, BatchNorm and ReLU, and report the ratio.
        #[arg(long)]
        baseline: bool,
        /// Also run the PyTorch reference step for the same work with this Python (the one the reference's
        /// setup.sh prints), right after each objective, and report the ratio.
        #[arg(long, value_name = "PYTHON")]
        against_torch: Option<PathBuf>,
        /// The reference script `--against-torch` runs.
        #[arg(long, value_name = "REF_PY", default_value = "../shared/reference/pytorch/ref.py")]
        torch_ref: PathBuf,
        #[command(flatten)]
        device: DeviceArg,
    },
}

/// `--device`, shared by the commands that compute.
#[derive(clap::Args)]
struct DeviceArg {
    /// Where to run: `cpu`, or `cuda[:N]` with a build that has the `cuda` feature (under `mpirun`, `cuda` is each
    /// rank's `cuda:LOCAL_RANK`).
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    device: String,
}

fn format_parser() -> impl TypedValueParser<Value = Format> {
    PossibleValuesParser::new(["human", "json"]).map(|s| if s == "json" { Format::Json } else { Format::Human })
}

fn backend_parser() -> impl TypedValueParser<Value = Backend> {
    PossibleValuesParser::new(["fused", "reference"]).map(|s| {
        if s == "reference" {
            Backend::Reference
        } else {
            Backend::Fused
        }
    })
}

/// A count that must be at least 1 (`--steps 0` would measure nothing and divide by zero).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn layers_parser() -> impl TypedValueParser<Value = LayerImpl> {
    PossibleValuesParser::new(["ours", "candle"])
        .map(|s| if s == "candle" { LayerImpl::Candle } else { LayerImpl::Ours })
}

/// Runs the parsed command line; `stop` is the flag the binary's signal handler sets (training checkpoints and
/// stops when it is raised).
pub fn run(cli: Cli, stop: Arc<AtomicBool>) -> ExitCode {
    let edge = Edge::new(cli.format);
    let result = match cli.command {
        Command::Check { files, deny_warnings } => commands::check::run(&files, deny_warnings, &edge),
        Command::Explain { file, objective, ir, n, d, ranks } => {
            let dump = commands::explain::IrDump { ir, n, d, ranks: ranks.map(|r| r as usize) };
            commands::explain::run(&file, objective.as_deref(), dump, &edge)
        }
        Command::Verify { files, device, ranks } => {
            commands::verify::run(&files, &device.device, ranks.map(|r| r as usize), &edge)
        }
        Command::Train {
            file,
            objective,
            data,
            set,
            name,
            runs,
            resume,
            allow_changes,
            max_steps,
            limit,
            backend,
            layers,
            log_every,
            device,
        } => {
            let args = commands::train::TrainArgs {
                file,
                objective,
                data,
                set,
                name,
                runs,
                resume,
                allow_changes,
                max_steps,
                limit,
                backend,
                log_every,
                device: device.device,
                layers,
            };
            commands::train::run(args, stop, &edge)
        }
        Command::Bench {
            what:
                BenchCommand::Train { files, batch, steps, rounds, data, set, baseline, against_torch, torch_ref, device },
        } => {
            let torch = against_torch.map(|python| commands::bench::torch::TorchRef { python, script: torch_ref });
            let setup =
                commands::bench::Setup { batch, steps, rounds, overrides: set, device: device.device, baseline, torch };
            commands::bench::run(files, data, &setup)
        }
        Command::Sweep { files, grid, set, seeds, name, report, runs, parallel, max_steps, limit, data } => {
            let args = commands::sweep::SweepArgs {
                files,
                grid,
                set,
                seeds,
                report_only: report.is_some(),
                name: report.unwrap_or(name),
                runs,
                parallel,
                max_steps,
                limit,
                data,
            };
            commands::sweep::run(&args, stop, &edge)
        }
        Command::Report { runs, out } => commands::report::run(&runs, out.as_deref()),
        Command::Export { run, to, out } => commands::export::run(&run, to, &out, &edge),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "ssl-lang",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Eval { run, knn, linear, data, device } => {
            let protocols = commands::eval::Protocols { knn, linear };
            commands::eval::run(&run, protocols, data.as_deref(), &device.device, &edge)
        }
        Command::Grad { file, objective, inputs, out, normalize, backend, device } => commands::grad::command(
            &file,
            objective.as_deref(),
            (&inputs, &out),
            normalize,
            backend,
            &device.device,
            &edge,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if let Failure::Error(e) = &failure {
                edge.report(e);
            }
            ExitCode::from(failure.exit_code())
        }
    }
}
