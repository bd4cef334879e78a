//! The command line: clap definitions and one function per command. Exit codes: 0 clean, 1 when
//! a file has errors (or warnings under `--deny-warnings`), 2 for usage and I/O errors.

use crate::diagnostic::{Code, Diagnostic, Severity, Span};
use crate::{compile, explain, render};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// ssl-lang: write a Siamese self-supervised objective as a positive term, a negative term and a
/// balance (UniGrad's unified gradient form); check it, explain it, and train with it.
#[derive(Parser)]
#[command(name = "ssl-lang", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check .ssl files and report every error and warning (exit 0 clean, 1 errors, 2 I/O).
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Treat warnings as errors.
        #[arg(long)]
        deny_warnings: bool,
        /// `human` reports, or `json`: one JSON object per diagnostic on stdout.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Show an objective's typed unified form: terms, shapes, params, states, family and recipe.
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
    },
    /// Evaluate one step of an objective on given features: reads `u1 u2 t1 t2` ([N, D] f32 or
    /// f64) and optional initial states (by state name) from a safetensors file; writes `g1`, `g2`,
    /// the updated states and, where the objective has one, the per-sample `loss`.
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
        #[arg(long, value_enum, default_value_t = crate::backend::Backend::Fused)]
        backend: crate::backend::Backend,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Train a Siamese encoder with an objective and its recipe on Fashion-MNIST, writing
    /// runs/NAME/ (metrics.jsonl, config.json, checkpoints, SVG plots).
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
        /// Stop after this many steps (the schedules still span the recipe's epochs).
        #[arg(long)]
        max_steps: Option<usize>,
        /// Use only the first N training and test images.
        #[arg(long)]
        limit: Option<usize>,
        /// Gradient backend.
        #[arg(long, value_enum, default_value_t = crate::backend::Backend::Fused)]
        backend: crate::backend::Backend,
        /// Log metrics every this many steps.
        #[arg(long, default_value_t = 10)]
        log_every: usize,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Evaluate a run's latest checkpoint: weighted kNN and/or a linear probe on frozen features.
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
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Prove each objective's gradient: autodiff of its `loss` (f64) against positive + balance *
    /// negative on fresh random inputs, and check one whole step of the fused kernels against the reference
    /// (with `--device cuda[:N]`: a step on that GPU against the CPU reference, 1e-4). Prints a table; exit 1 on
    /// any failure.
    Verify {
        /// The .ssl files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        device: DeviceArg,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Training throughput (pairs/s) per objective, with the share of each phase of the step and peak memory.
    Train {
        /// Objective files (default: every file in objectives/).
        files: Vec<PathBuf>,
        /// Batch size.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Steps measured per objective (after one warm-up step).
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Data directory (default: the bundled subset).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Extra recipe overrides for every objective.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Also run every objective with candle's own conv2d, BatchNorm and ReLU, and report the ratio.
        #[arg(long)]
        baseline: bool,
        #[command(flatten)]
        device: DeviceArg,
    },
}

/// `--device`, shared by the commands that compute.
#[derive(clap::Args)]
struct DeviceArg {
    /// Where to run: `cpu`, or `cuda[:N]` with a build that has the `cuda` feature.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    device: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check { files, deny_warnings, format } => check(&files, deny_warnings, format),
        Command::Explain { file, objective, ir, n, d } => explain_cmd(&file, objective.as_deref(), ir, n, d),
        Command::Verify { files, device } => verify_cmd(&files, &device.device),
        Command::Train {
            file,
            objective,
            data,
            set,
            name,
            runs,
            resume,
            max_steps,
            limit,
            backend,
            log_every,
            device,
        } => {
            let device = match open_device(&device.device) {
                Ok(d) => d,
                Err(code) => return code,
            };
            let (source, program) = match compile_file(&file) {
                Ok(x) => x,
                Err(code) => return code,
            };
            let name_wanted = objective.or_else(|| program.recipe_target.clone());
            let Some(o) = program.objective(name_wanted.as_deref()) else {
                eprintln!("error: no objective `{}` in `{}`", name_wanted.as_deref().unwrap_or("?"), file.display());
                return ExitCode::from(2);
            };
            let mut objective = o.clone();
            let mut recipe = if program.recipe_target.as_deref() == Some(o.name.as_str()) {
                program.recipe.clone()
            } else {
                Default::default()
            };
            let overrides = match crate::runtime::overrides::apply(&mut recipe, &mut objective, &set) {
                Ok(applied) => applied,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(2);
                }
            };
            let opts = crate::runtime::train::TrainOptions {
                data_dir: data,
                runs_root: runs,
                name,
                resume,
                max_steps,
                limit,
                backend,
                log_every,
                overrides,
                device,
            };
            match crate::runtime::train::train(&source.text, &objective, &recipe, &opts) {
                Ok(summary) => {
                    let knn = summary.knn.map_or("-".to_string(), |k| format!("{:.2} %", k * 100.0));
                    println!(
                        "done: {} steps, final kNN top-1 {knn}; run in {}",
                        summary.steps,
                        summary.run_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Bench { what: BenchCommand::Train { files, batch, steps, data, set, baseline, device } } => {
            if let Err(code) = open_device(&device.device) {
                return code;
            }
            let files = if files.is_empty() {
                let mut all: Vec<PathBuf> = std::fs::read_dir("objectives")
                    .map(|d| {
                        d.filter_map(|e| e.ok().map(|e| e.path()))
                            .filter(|p| p.extension().is_some_and(|x| x == "ssl"))
                            .collect()
                    })
                    .unwrap_or_default();
                all.sort();
                all
            } else {
                files
            };
            let data = data.unwrap_or_else(|| PathBuf::from(crate::data::BUNDLED_DIR));
            match crate::runtime::bench::bench_train(
                &files,
                &crate::runtime::bench::Setup {
                    batch,
                    steps,
                    data: &data,
                    overrides: &set,
                    device: &device.device,
                    baseline,
                },
            ) {
                Ok(table) => {
                    print!("{table}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Eval { run, knn, linear, data, device } => {
            let device = match open_device(&device.device) {
                Ok(d) => d,
                Err(code) => return code,
            };
            match crate::runtime::evaluate::evaluate(&run, knn, linear, data.as_deref(), &device) {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Grad { file, objective, inputs, out, normalize, backend, device } => {
            let device = match open_device(&device.device) {
                Ok(d) => d,
                Err(code) => return code,
            };
            let (_, program) = match compile_file(&file) {
                Ok(x) => x,
                Err(code) => return code,
            };
            let Some(o) = program.objective(objective.as_deref()) else {
                eprintln!("error: no objective `{}` in `{}`", objective.as_deref().unwrap_or("?"), file.display());
                return ExitCode::from(2);
            };
            match crate::grad::run(o, &inputs, &out, normalize, backend, &device) {
                Ok(summary) => {
                    println!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// The device `--device` names, or exit code 2 with the reason.
fn open_device(name: &str) -> Result<candle_core::Device, ExitCode> {
    crate::device::open(name).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// A source file, read and decoded; or the exit code for why it could not be.
struct Source {
    name: String,
    text: String,
}

fn read(path: &Path) -> Result<Source, ExitCode> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        eprintln!("error: cannot read `{name}`: {e}");
        ExitCode::from(2)
    })?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Source { name, text }),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let d = Diagnostic::new(
                Code::Encoding,
                "the file is not valid UTF-8",
                Span::new(at, at + 1),
                "invalid byte here",
            )
            .help("save the file as UTF-8");
            eprint!("{}", render::human(&d, &name, &text, use_color(), 100));
            Err(ExitCode::from(1))
        }
    }
}

fn use_color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn check(files: &[PathBuf], deny_warnings: bool, format: Format) -> ExitCode {
    let mut worst = 0u8;
    for path in files {
        let source = match read(path) {
            Ok(s) => s,
            Err(code) => {
                worst = worst.max(if code == ExitCode::from(2) { 2 } else { 1 });
                continue;
            }
        };
        let (program, diagnostics) = compile(&source.text);
        for d in &diagnostics {
            match format {
                Format::Human => eprint!("{}", render::human(d, &source.name, &source.text, use_color(), 100)),
                Format::Json => println!("{}", render::json(d, &source.name, &source.text)),
            }
        }
        let errors = diagnostics.iter().filter(|d| d.severity() == Severity::Error).count();
        let warnings = diagnostics.len() - errors;
        let failed = errors > 0 || (deny_warnings && warnings > 0);
        if failed {
            worst = worst.max(1);
        }
        if let Format::Human = format {
            let names: Vec<&str> = program.objectives.iter().map(|o| o.name.as_str()).collect();
            let status = if failed { "FAILED" } else { "ok" };
            println!(
                "{}: {status} ({} error{}, {} warning{}; objectives: {})",
                source.name,
                errors,
                if errors == 1 { "" } else { "s" },
                warnings,
                if warnings == 1 { "" } else { "s" },
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            );
        }
    }
    ExitCode::from(worst)
}

/// Reads and compiles a file, printing its diagnostics; the program if it has no errors.
fn compile_file(path: &Path) -> Result<(Source, crate::check::typed::Program), ExitCode> {
    let source = read(path)?;
    let (program, diagnostics) = compile(&source.text);
    for d in &diagnostics {
        eprint!("{}", render::human(d, &source.name, &source.text, use_color(), 100));
    }
    if crate::diagnostic::has_errors(&diagnostics) {
        return Err(ExitCode::from(1));
    }
    Ok((source, program))
}

fn explain_cmd(path: &Path, objective: Option<&str>, ir: bool, n: Option<usize>, d: Option<usize>) -> ExitCode {
    let (source, program) = match compile_file(path) {
        Ok(x) => x,
        Err(code) => return code,
    };
    match program.objective(objective) {
        Some(o) => {
            print!("{}", explain::explain(&program, o));
            if ir {
                let sizes = crate::ir::cost::Sizes {
                    n: n.unwrap_or(program.recipe.batch),
                    d: d.unwrap_or(program.recipe.projector.out),
                    fifo: o
                        .states
                        .iter()
                        .map(|s| match s.kind {
                            crate::check::typed::StateKind::Fifo { size, .. } => size,
                            _ => 0,
                        })
                        .collect(),
                };
                let lowered = crate::ir::lower(o);
                println!("\ngradient IR (axes: N batch, K set elements, D E J feature dimensions); costs at N = {}, D = {}, fifos full", sizes.n, sizes.d);
                println!("\nlowered:");
                print!("{}", lowered.dump(Some(&sizes)));
                println!("\noptimised (matrix chains reassociated at these sizes):");
                print!("{}", crate::ir::reassociate::reassociate(&lowered, &sizes).dump(Some(&sizes)));
            }
            ExitCode::SUCCESS
        }
        None => {
            let names: Vec<&str> = program.objectives.iter().map(|o| o.name.as_str()).collect();
            eprintln!(
                "error: no objective `{}` in `{}`; it has: {}",
                objective.unwrap_or("?"),
                source.name,
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            );
            ExitCode::from(2)
        }
    }
}

fn verify_cmd(files: &[PathBuf], device: &str) -> ExitCode {
    let device = match open_device(device) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let mut rows = Vec::new();
    let mut worst = 0u8;
    for path in files {
        let program = match compile_file(path) {
            Ok((_, p)) => p,
            Err(code) => {
                worst = worst.max(if code == ExitCode::from(2) { 2 } else { 1 });
                continue;
            }
        };
        for o in &program.objectives {
            match crate::verify::verify(o, &device) {
                Ok(r) => rows.extend(r),
                Err(e) => {
                    eprintln!("error: verifying `{}` failed to run: {e}", o.name);
                    worst = worst.max(1);
                }
            }
        }
    }
    let w = rows.iter().map(|r| r.objective.len()).max().unwrap_or(0).max(9);
    println!("{:<w$} {:<17} {:>12}  {:<6} note", "objective", "check", "max rel err", "result");
    for r in &rows {
        let err = r.max_error.map_or("-".to_string(), |e| format!("{e:.2e}"));
        let result = match (r.pass, r.max_error) {
            (true, Some(_)) => "pass",
            (true, None) => "n/a",
            (false, _) => "FAIL",
        };
        println!("{:<w$} {:<17} {:>12}  {:<6} {}", r.objective, r.check, err, result, r.note);
        if !r.pass {
            worst = worst.max(1);
        }
    }
    ExitCode::from(worst)
}
