//! The PyTorch reference step (`ref.py` of the shared reference, run as it is, never copied): which of its methods
//! matches a standard objective, how to run it for the same work, and what it reports — pairs/s from its `TIMING`
//! line and its own peak resident memory.

use crate::error::{Error, ErrorCode};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the reference is: a Python with torch, and the `ref.py` it runs.
#[derive(Clone, Debug)]
pub struct TorchRef {
    /// The interpreter (the reference's `setup.sh` prints it).
    pub python: PathBuf,
    /// The reference script.
    pub script: PathBuf,
}

/// How a standard objective is run beside the reference for the same work: the reference's method and arguments,
/// and our overrides (SimCLR, SimSiam, Barlow Twins and VICReg run without a momentum target there).
pub struct Pairing {
    /// `--method` of the reference.
    pub method: &'static str,
    /// Further arguments of the reference.
    pub args: &'static [&'static str],
    /// `--set` overrides of ours.
    pub ours: &'static [&'static str],
}

/// The pairing of an objective file's stem, if the reference has the method.
pub fn pairing(stem: &str) -> Option<Pairing> {
    let none: &'static [&'static str] = &["momentum=none"];
    Some(match stem {
        "simclr" => Pairing { method: "simclr", args: &[], ours: none },
        "moco" => Pairing { method: "moco", args: &[], ours: &[] },
        "byol" => Pairing { method: "byol", args: &[], ours: &[] },
        "simsiam" => Pairing { method: "simsiam", args: &[], ours: none },
        "barlow_twins" => Pairing { method: "barlow", args: &[], ours: none },
        "vicreg" => Pairing { method: "vicreg", args: &[], ours: none },
        // Our balance is lambda·D/2048: at D = 128 the default lambda 100 pushes as the reference's 6.25.
        "unigrad" => Pairing { method: "unigrad", args: &["--lambd", "6.25"], ours: &[] },
        _ => return None,
    })
}

/// What one reference run reports.
pub struct TorchMeasured {
    /// Median pairs/s over its timed steps.
    pub pairs_per_s: f64,
    /// Peak resident memory of the Python process, in MB.
    pub peak_mb: Option<f64>,
}

/// Runs the reference for `pairing` at `batch` for `steps` timed steps (it warms up 5 more) on `threads` threads.
pub fn measure(
    r: &TorchRef,
    pairing: &Pairing,
    batch: usize,
    steps: usize,
    threads: usize,
) -> Result<TorchMeasured, Error> {
    let failed = |what: String| {
        Error::new(ErrorCode::BenchRun, format!("the PyTorch reference ({}): {what}", pairing.method))
            .help("make its environment with the reference's setup.sh and pass the Python it prints to --against-torch")
    };
    // The script runs in its own directory, so its path must not be relative to ours.
    let script = std::fs::canonicalize(&r.script)
        .map_err(|e| failed(format!("cannot find the reference script `{}`: {e}", r.script.display())))?;
    // Run the script as __main__ and report the process's own peak memory when it is done.
    let wrapper = "import resource, runpy, sys\n\
                   sys.argv = sys.argv[1:]\n\
                   try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n\
                   finally:\n    print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n";
    let out = Command::new(&r.python)
        .arg("-c")
        .arg(wrapper)
        .arg(&script)
        .args(["--method", pairing.method])
        .args(pairing.args)
        .args(["--batch-size", &batch.to_string(), "--steps", &(steps + 5).to_string(), "--log-every", "100000"])
        .args(["--threads", &threads.to_string()])
        .current_dir(script.parent().unwrap_or(Path::new(".")))
        .output()
        .map_err(|e| failed(format!("cannot run {}: {e}", r.python.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(failed(format!("it failed:\n{}", String::from_utf8_lossy(&out.stderr))));
    }
    parse(&stdout).ok_or_else(|| failed("its output has no `TIMING … -> X pairs/s` line".into()))
}

/// The reference's pairs/s (its `TIMING … -> X pairs/s` line) and the wrapper's `PEAK_KB` line.
fn parse(stdout: &str) -> Option<TorchMeasured> {
    let pairs_per_s = stdout
        .lines()
        .find(|l| l.starts_with("TIMING "))
        .and_then(|l| l.split("->").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|x| x.parse::<f64>().ok())?;
    let peak_mb = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PEAK_KB "))
        .and_then(|kb| kb.trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0);
    Some(TorchMeasured { pairs_per_s, peak_mb })
}

/// The CPU, as `/proc/cpuinfo` names it, with its family and widest vector extension.
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    let flags = field("flags");
    let vector = ["avx512f", "avx2", "avx", "sse4_2"]
        .into_iter()
        .find(|f| flags.split_whitespace().any(|x| x == *f))
        .unwrap_or("no AVX");
    format!("{} (family {}, {vector})", field("model name"), field("cpu family"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_timing_and_peak_lines() {
        let out = "ep 0 step 14/15  loss=-0.25 step 2021 ms\n\
                   TIMING method=unigrad bs=256 threads=2 steps=15 median step 2015.4 ms (aug part 9.6 ms) -> 127.0 pairs/s [median over 10 steps after 5 warm-up]\n\
                   TIMING-CLEAN method=unigrad: 10/10 steps -> 128.5 pairs/s\n\
                   PEAK_KB 1710080\n";
        let m = parse(out).expect("parsed");
        assert_eq!(m.pairs_per_s, 127.0);
        assert_eq!(m.peak_mb, Some(1670.0));
        assert!(parse("no timing here\nPEAK_KB 5\n").is_none());
        assert_eq!(parse("TIMING x -> 3.5 pairs/s\n").map(|m| (m.pairs_per_s, m.peak_mb)), Some((3.5, None)));
    }

    #[test]
    fn every_standard_objective_has_a_reference_method() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/objectives");
        let mut stems: Vec<String> = std::fs::read_dir(dir)
            .expect("objectives/")
            .filter_map(|e| e.ok()?.path().file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect();
        stems.sort();
        assert_eq!(stems.len(), 7, "{stems:?}");
        for stem in stems {
            assert!(pairing(&stem).is_some(), "no reference method for {stem}");
        }
        assert!(pairing("hard_positive_decorrelation").is_none());
    }
}
