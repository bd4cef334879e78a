//! `ssl-lang bench train`: training throughput per objective, measured side by side in one
//! invocation. Each objective trains a few steps in a child process (so each reports its own peak
//! memory) on the bundled subset with evaluation off; the first step is a warm-up and is dropped.
//! Reports pairs/s, the share of each phase of the step, the convolutions' share and achieved GFLOP/s beside a
//! plain GEMM measured in the same run, peak resident memory, and optionally the same with candle's own layers or,
//! interleaved objective by objective, the PyTorch reference step for the same work ([`torch`]).

pub mod torch;

use super::Failure;
use crate::error::{Error, ErrorCode};
use crate::runtime::records::{Phase, Record};
use crate::runtime::run::RunDir;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One objective's measurement.
struct Measured {
    pairs_per_s: f64,
    step_ms: f64,
    phase_share: Vec<f64>,
    conv_share: f64,
    conv_gflops: f64,
    has_target: bool,
    peak_mb: Option<f64>,
}

/// What `bench train` runs: the same for every objective.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Pairs per step.
    pub batch: usize,
    /// Steps measured after one warm-up step.
    pub steps: usize,
    /// Times each objective (and its reference) is measured, alternately; the medians are reported. One run on
    /// a shared machine moves by up to a tenth either way, and alternating rounds let both sides see the same spells.
    pub rounds: usize,
    /// Recipe overrides (`KEY=VALUE`) for every objective.
    pub overrides: Vec<String>,
    /// `--device` for the training runs.
    pub device: String,
    /// Also run with candle's own layers and report the ratio.
    pub baseline: bool,
    /// Also run the PyTorch reference after each objective and report the ratio.
    pub torch: Option<torch::TorchRef>,
}

/// Trains `steps + 1` steps of `file` in a child process (with `--layers candle` when `candle`) and reads its
/// metrics: medians over the steps after the first.
fn measure(
    file: &Path,
    name: &str,
    data: &Path,
    setup: &Setup,
    candle: bool,
    sets: &[&str],
) -> Result<Measured, Error> {
    let failed = |what: String| Error::new(ErrorCode::BenchRun, format!("{name}: {what}"));
    let exe = std::env::current_exe().map_err(|e| failed(format!("cannot find the ssl-lang executable: {e}")))?;
    let root = std::env::temp_dir().join(format!("ssl-bench-{}", std::process::id()));
    let mut cmd = Command::new(&exe);
    cmd.arg("train").arg(file).args(["--set", &format!("batch={}", setup.batch), "--set", "eval=none"]);
    cmd.args(["--max-steps", &(setup.steps + 1).to_string(), "--log-every", "1", "--name", name]);
    cmd.arg("--runs").arg(&root).arg("--data").arg(data).args(["--device", &setup.device]);
    cmd.args(["--layers", if candle { "candle" } else { "ours" }]);
    for e in setup.overrides.iter().map(String::as_str).chain(sets.iter().copied()) {
        cmd.args(["--set", e]);
    }
    let run = cmd.output().map_err(|e| failed(format!("cannot run {}: {e}", exe.display())))?;
    let records = RunDir { path: root.join(name) }.read_metrics();
    let _ = std::fs::remove_dir_all(&root);
    if !run.status.success() {
        return Err(failed(format!("training failed:\n{}", String::from_utf8_lossy(&run.stderr)))
            .help("run the same `ssl-lang train` by hand to see the whole error"));
    }
    let records = records?;
    let steps: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::Step(s) => Some(s),
            _ => None,
        })
        .skip(1)
        .collect();
    let median = |value: &dyn Fn(&crate::runtime::records::StepRecord) -> Option<f64>| -> f64 {
        let mut v: Vec<f64> = steps.iter().filter_map(|r| value(r)).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let phases: Vec<f64> = Phase::ALL.iter().map(|p| median(&|r| r.phase_ms.get(p).copied())).collect();
    let total: f64 = phases.iter().sum::<f64>().max(1e-9);
    let conv_ms = median(&|r| Some(r.conv_ms));
    Ok(Measured {
        pairs_per_s: setup.batch as f64 / (total / 1e3),
        step_ms: total,
        phase_share: phases.iter().map(|p| 100.0 * p / total).collect(),
        conv_share: 100.0 * conv_ms / total,
        conv_gflops: median(&|r| Some(r.conv_gflop)) / (conv_ms / 1e3).max(1e-12),
        has_target: steps.first().is_some_and(|r| r.momentum.is_some()),
        peak_mb: records.iter().find_map(|r| match r {
            Record::End(e) => e.peak_rss_mb,
            _ => None,
        }),
    })
}

/// The element with the median `key` (the upper one of an even count); `items` is not empty.
fn median_by<T>(mut items: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    items.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let mid = items.len() / 2;
    items.swap_remove(mid)
}

/// One table row: pairs/s, step time, phase shares, convolution share and GFLOP/s, peak memory.
fn row(out: &mut String, name: &str, m: &Measured) {
    let _ = write!(
        out,
        "{:<14} {:>6} {:>8.1} {:>8.0} | {} | {:>5} {:>7} | {:>8}",
        name,
        if m.has_target { "ema" } else { "none" },
        m.pairs_per_s,
        m.step_ms,
        m.phase_share.iter().map(|p| format!("{p:>7.1}%")).collect::<Vec<_>>().join(" "),
        // candle's convolutions are not counted.
        if m.conv_gflops > 0.0 { format!("{:.0}%", m.conv_share) } else { "-".into() },
        if m.conv_gflops > 0.0 { format!("{:.0}", m.conv_gflops) } else { "-".into() },
        m.peak_mb.map_or("-".into(), |p| format!("{p:.0}"))
    );
}

/// GFLOP/s of a plain square f32 GEMM (1024³, all cores): the ceiling the convolutions are compared with.
fn plain_gemm_gflops() -> f64 {
    use crate::kernels::gemm::{gemm_into, Matrix};
    let n = 1024;
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let m = Matrix { data: &a, rows: n, cols: n, row_stride: n as isize, col_stride: 1 };
    let mut c = vec![0f32; n * n];
    let mut times: Vec<f64> = (0..6)
        .map(|_| {
            let t = std::time::Instant::now();
            let _ = gemm_into(&mut c, &m, &m, false, 0.0, 1.0);
            t.elapsed().as_secs_f64()
        })
        .skip(1)
        .collect();
    times.sort_by(f64::total_cmp);
    2.0 * (n * n * n) as f64 / times[times.len() / 2] / 1e9
}

/// `ssl-lang bench train`: prints the table for `files` (default: every file in `objectives/`) on `data` (default:
/// the bundled subset).
pub fn run(files: Vec<PathBuf>, data: Option<PathBuf>, setup: &Setup) -> Result<(), Failure> {
    super::device::open(&setup.device)?;
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
    print!("{}", bench_train(&files, &data, setup)?);
    Ok(())
}

/// Runs the benchmark; returns the table. With `baseline`, each objective is also run with candle's own layers
/// (`--layers candle`) and the ratio is reported.
pub fn bench_train(files: &[PathBuf], data: &Path, setup: &Setup) -> Result<String, Error> {
    let Setup { batch, steps, rounds, baseline, .. } = *setup;
    let device = &setup.device;
    let threads = candle_core::utils::get_num_threads();
    let mut out = String::new();
    let _ = writeln!(out, "{} — {threads} threads\n", torch::cpu_model());
    let _ = writeln!(
        out,
        "{:<14} {:>6} {:>8} {:>8} | {} | {:>5} {:>7} | {:>8}{}",
        "objective",
        "target",
        "pairs/s",
        "step ms",
        Phase::ALL.iter().map(|p| format!("{:>8}", p.short())).collect::<Vec<_>>().join(" "),
        "conv",
        "GFLOP/s",
        "peak MB",
        if baseline { format!(" | {:>14} {:>6}", "candle pairs/s", "ratio") } else { String::new() }
            + &if setup.torch.is_some() {
                format!(" | {:>13} {:>6} {:>10}", "torch pairs/s", "ratio", "torch MB")
            } else {
                String::new()
            }
    );
    for file in files {
        let name = file.file_stem().map_or("objective".into(), |s| s.to_string_lossy().into_owned());
        let pairing = setup.torch.as_ref().map(|_| torch::pairing(&name));
        if let Some(None) = pairing {
            let _ = writeln!(out, "{name:<14} (the PyTorch reference has no such method: skipped)");
            continue;
        }
        let sets = pairing.as_ref().and_then(|p| p.as_ref()).map_or(&[][..], |p| p.ours);
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            ours.push(measure(file, &name, data, setup, false, sets)?);
            if let (Some(r), Some(Some(p))) = (&setup.torch, &pairing) {
                theirs.push(torch::measure(r, p, batch, steps, threads)?);
            }
        }
        let m = median_by(ours, |m| m.pairs_per_s);
        row(&mut out, &name, &m);
        if !theirs.is_empty() {
            let peak = theirs.iter().filter_map(|t| t.peak_mb).reduce(f64::max);
            let t = median_by(theirs, |t| t.pairs_per_s);
            let mb = peak.map_or("-".into(), |p| format!("{p:.0}"));
            let _ = write!(out, " | {:>13.1} {:>5.2}× {:>10}", t.pairs_per_s, m.pairs_per_s / t.pairs_per_s, mb);
        }
        if baseline {
            let c = measure(file, &name, data, setup, true, sets)?;
            let _ = write!(out, " | {:>14.1} {:>5.1}×", c.pairs_per_s, m.pairs_per_s / c.pairs_per_s);
            let _ = writeln!(out);
            row(&mut out, "  with candle", &c);
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "\nbatch {batch}, median of {steps} steps after one warm-up step, the recipe's encoder + projector (+ predictor),"
    );
    if rounds > 1 {
        let _ = writeln!(
            out,
            "each objective {rounds} times alternately with its reference: the round with the median pairs/s (peak MB: the largest);"
        );
    }
    let _ = writeln!(
        out,
        "f32 on {device} ({} CPU threads); phases as shares of the step. conv: share of the step inside our",
        candle_core::utils::get_num_threads()
    );
    let _ = writeln!(
        out,
        "convolution kernels, and their direct-convolution GFLOP/s (Winograd counts as the FLOPs it saves);"
    );
    let _ = writeln!(out, "a plain 1024³ f32 GEMM runs at {:.0} GFLOP/s on this machine now.", plain_gemm_gflops());
    if baseline {
        let _ = writeln!(
            out,
            "with candle: the same steps with candle's own conv2d, BatchNorm and ReLU (--layers candle),"
        );
        let _ = writeln!(out, "the baseline; the ratio is ours over candle's pairs/s.");
    }
    if let Some(r) = &setup.torch {
        let _ = writeln!(
            out,
            "torch: {} run by {} on the same threads, batch and work (median of {steps} steps after 5 warm-up),",
            r.script.display(),
            r.python.display()
        );
        let _ = writeln!(
            out,
            "right after ours; the ratio is ours over its pairs/s; torch MB is its peak resident memory."
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::median_by;

    #[test]
    fn median_by_picks_the_middle_round() {
        assert_eq!(median_by(vec![3.0, 1.0, 2.0], |v| *v), 2.0);
        assert_eq!(median_by(vec![4.0, 1.0, 3.0, 2.0], |v| *v), 3.0, "the upper one of an even count");
        assert_eq!(median_by(vec![7.0], |v| *v), 7.0);
    }
}
