//! `ssl-lang bench train`: training throughput per objective, measured side by side in one
//! invocation. Each objective trains a few steps in a child process (so each reports its own peak
//! memory) on the bundled subset with evaluation off; the first step is a warm-up and is dropped.
//! Reports pairs/s, the share of each phase of the step, and peak resident memory.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The phases a step is timed in, in order.
pub const PHASES: &[&str] =
    &["augment", "online_forward", "target_forward", "plan", "local_crops", "backward", "optimizer", "ema"];

/// Runs the benchmark; returns the table.
pub fn bench_train(
    files: &[PathBuf],
    batch: usize,
    steps: usize,
    data: &Path,
    extra: &[String],
) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the ssl-lang executable: {e}"))?;
    let root = std::env::temp_dir().join(format!("ssl-bench-{}", std::process::id()));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:>8} {:>9} | {} | {:>8}",
        "objective",
        "pairs/s",
        "step ms",
        PHASES.iter().map(|p| format!("{:>8}", short(p))).collect::<Vec<_>>().join(" "),
        "peak MB"
    );
    for file in files {
        let name = file.file_stem().map_or("objective".into(), |s| s.to_string_lossy().into_owned());
        let mut cmd = Command::new(&exe);
        cmd.arg("train").arg(file).args(["--set", &format!("batch={batch}"), "--set", "eval=none"]);
        cmd.args(["--max-steps", &(steps + 1).to_string(), "--log-every", "1", "--name", &name]);
        cmd.arg("--runs").arg(&root).arg("--data").arg(data);
        for e in extra {
            cmd.args(["--set", e]);
        }
        let run = cmd.output().map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        if !run.status.success() {
            return Err(format!("{name}: training failed:\n{}", String::from_utf8_lossy(&run.stderr)));
        }
        let metrics = std::fs::read_to_string(root.join(&name).join("metrics.jsonl")).map_err(|e| e.to_string())?;
        let records: Vec<serde_json::Value> = metrics.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let steps_ms: Vec<&serde_json::Value> =
            records.iter().filter(|r| r["kind"] == "step").skip(1).map(|r| &r["phase_ms"]).collect();
        let median = |phase: &str| -> f64 {
            let mut v: Vec<f64> = steps_ms.iter().filter_map(|p| p[phase].as_f64()).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        let phases: Vec<f64> = PHASES.iter().map(|p| median(p)).collect();
        let total: f64 = phases.iter().sum();
        let peak = records.iter().find(|r| r["kind"] == "end").and_then(|r| r["peak_rss_mb"].as_f64());
        let _ = writeln!(
            out,
            "{:<14} {:>8.1} {:>9.0} | {} | {:>8}",
            name,
            batch as f64 / (total / 1e3),
            total,
            phases.iter().map(|p| format!("{:>7.1}%", 100.0 * p / total.max(1e-9))).collect::<Vec<_>>().join(" "),
            peak.map_or("-".into(), |p| format!("{p:.0}"))
        );
    }
    let _ = std::fs::remove_dir_all(&root);
    let _ = writeln!(
        out,
        "\nbatch {batch}, median of {steps} steps after one warm-up step, resnet_mini + projector (+ predictor),"
    );
    let _ = writeln!(
        out,
        "f32 on this CPU with {} threads; phases as shares of the step.",
        candle_core::utils::get_num_threads()
    );
    Ok(out)
}

fn short(phase: &str) -> &str {
    match phase {
        "online_forward" => "online",
        "target_forward" => "target",
        "local_crops" => "local",
        "optimizer" => "optim",
        "backward" => "backward",
        other => other,
    }
}
