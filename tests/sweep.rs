//! `ssl-lang sweep` through the binary on a tiny grid (64 images, a narrow network, two steps per cell): every cell
//! is a run directory, the table groups seeds into mean ± std, the page links every cell's report, a rerun trains
//! nothing, `--report` rebuilds the same table from disk, and a failing cell is reported with its log while the
//! others finish.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn temp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ssl-sweep-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A sweep of the standard BYOL file with the tiny settings (two steps per cell), plus `extra`.
fn sweep(runs: &Path, extra: &[&str]) -> Output {
    let mut args = tiny_args(runs, None, &["--max-steps", "2"]);
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new(env!("CARGO_BIN_EXE_ssl-lang")).args(&args).output().unwrap()
}

/// The arguments of a sweep of the standard BYOL file on 64 images with a narrow network, named `name` when given,
/// plus `extra`.
fn tiny_args<'a>(runs: &Path, name: impl Into<Option<&'a str>>, extra: &[&str]) -> Vec<String> {
    let file = format!("{}/objectives/byol.ssl", env!("CARGO_MANIFEST_DIR"));
    let mut args: Vec<String> =
        ["sweep", file.as_str(), "--runs", runs.to_str().unwrap(), "--limit", "64"].map(String::from).into();
    if let Some(name) = name.into() {
        args.extend(["--name".into(), name.into()]);
    }
    for set in [
        "batch=8",
        "encoder=resnet_mini(widths = [4, 8, 8])",
        "projector=mlp(hidden = 16, out = 16)",
        "predictor=mlp(hidden = 16)",
        "eval=knn(k = 10, t = 0.1, every = 1)",
    ] {
        args.extend(["--set".into(), set.into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn table(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("sweep.md")).unwrap()
}

#[test]
fn a_grid_trains_every_cell_once_and_tabulates_it() {
    let runs = temp("grid");
    let first = sweep(&runs, &["--grid", "form=gradient,loss", "--seeds", "0,1", "--name", "g", "--parallel", "2"]);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&first.stderr));
    let dir = runs.join("g");
    for cell in ["byol-form=gradient-s0", "byol-form=gradient-s1", "byol-form=loss-s0", "byol-form=loss-s1"] {
        assert!(dir.join(cell).join("config.json").exists(), "{cell} is a run directory");
        assert!(dir.join("logs").join(format!("{cell}.log")).exists(), "{cell} has a log");
    }
    let md = table(&dir);
    let rows: Vec<&str> = md.lines().skip(2).collect();
    assert_eq!(rows.len(), 2, "{md}");
    assert!(
        rows[0].starts_with("| byol | `form=gradient` | 2 | ") && rows[1].starts_with("| byol | `form=loss` | 2 | "),
        "{md}"
    );
    // kNN and linear probe as mean ± std over the two seeds.
    assert_eq!(rows[0].matches(" ± ").count(), 5, "{md}");
    assert!(std::fs::read_to_string(dir.join("sweep.csv")).unwrap().lines().count() == 3);
    assert!(std::fs::read_to_string(dir.join("sweep.svg")).unwrap().starts_with("<svg"));
    // The page: the chart inline, a row per group, every cell linked to its run's own report, which is there.
    let page = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(page.contains("<h1>ssl-lang sweep g</h1>") && page.matches("<svg").count() == 1, "{page}");
    assert!(page.contains("<td>byol</td><td>form=gradient</td>") && page.contains("<td>form=loss</td>"), "{page}");
    for cell in ["byol-form=gradient-s0", "byol-form=gradient-s1", "byol-form=loss-s0", "byol-form=loss-s1"] {
        assert!(page.contains(&format!("<a href=\"{cell}/report.html\">seed ")), "{cell} is linked: {page}");
        assert!(dir.join(cell).join("report.html").exists(), "{cell} has its report");
    }

    // A rerun finds every cell finished: nothing trains, the table is the same.
    let again = sweep(&runs, &["--grid", "form=gradient,loss", "--seeds", "0,1", "--name", "g"]);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success() && !stdout.contains("training"), "{stdout}");
    let report = Command::new(env!("CARGO_BIN_EXE_ssl-lang"))
        .args(["sweep", "--report", "g", "--runs", runs.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(report.status.success());
    let rebuilt = table(&dir);
    let without_wall =
        |t: &str| t.lines().map(|l| l.rsplitn(3, '|').nth(2).unwrap_or(l).to_string()).collect::<Vec<_>>();
    assert_eq!(without_wall(&rebuilt), without_wall(&md));
    let _ = std::fs::remove_dir_all(&runs);
}

#[test]
fn a_failing_cell_is_reported_and_the_others_finish() {
    let runs = temp("fail");
    let out = sweep(&runs, &["--grid", "form=gradient,bogus", "--name", "f"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ssl::sweep::cell") && stderr.contains("byol-form=bogus.log"), "{stderr}");
    let log = std::fs::read_to_string(runs.join("f/logs/byol-form=bogus.log")).unwrap();
    assert!(log.contains("bogus"), "the cell's log says what is wrong: {log}");
    let md = table(&runs.join("f"));
    assert!(
        md.contains("| byol | `form=gradient` | 1 |") && md.contains("| byol | `form=bogus` | 1 (1 failed) |"),
        "{md}"
    );

    let bad = Command::new(env!("CARGO_BIN_EXE_ssl-lang")).args(["sweep", "x.ssl", "--grid", "form"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ssl::sweep::grid"));
    let _ = std::fs::remove_dir_all(&runs);
}

/// A cell stopped before its first checkpoint cannot be resumed: the sweep moves its directory aside (nothing is
/// deleted) and trains it afresh.
#[test]
fn a_cell_without_a_checkpoint_starts_afresh_and_keeps_the_old_directory() {
    let runs = temp("aside");
    assert!(sweep(&runs, &["--name", "a"]).status.success());
    let cell = runs.join("a/byol");
    for f in ["checkpoint.json", "checkpoint.safetensors"] {
        std::fs::remove_file(cell.join(f)).unwrap();
    }
    let manifest = runs.join("a/sweep.json");
    let text = std::fs::read_to_string(&manifest).unwrap().replace("\"done\"", "\"pending\"");
    std::fs::write(&manifest, text).unwrap();
    let again = sweep(&runs, &["--name", "a"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stdout).contains("byol: training"));
    assert!(cell.join("checkpoint.safetensors").exists(), "trained afresh");
    assert!(runs.join("a/abandoned/byol-0/config.json").exists(), "the old start is kept aside");
    let _ = std::fs::remove_dir_all(&runs);
}

/// A cell that trains to its end probes itself (`train`'s final linear probe): the sweep takes that figure and does
/// not extract the features a second time (its probe would leave a feature cache in the cell's directory).
#[test]
fn a_finished_cell_keeps_its_own_linear_probe() {
    let runs = temp("own-probe");
    let out = Command::new(env!("CARGO_BIN_EXE_ssl-lang"))
        .args(tiny_args(&runs, "p", &["--set", "epochs=1"]))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cell = runs.join("p/byol");
    let log = std::fs::read_to_string(runs.join("p/logs/byol.log")).unwrap();
    let own = log.lines().find_map(|l| l.strip_prefix("final linear probe ")).expect("train probed the cell");
    let md = table(&runs.join("p"));
    assert!(md.contains(&format!("| {} |", own.trim_end_matches(" %"))), "the table shows the run's probe {own}: {md}");
    let cached: Vec<_> = std::fs::read_dir(&cell)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("features-"))
        .collect();
    assert!(cached.is_empty(), "the sweep probed again: {cached:?}");
    let _ = std::fs::remove_dir_all(&runs);
}

/// SIGTERM to the sweep alone (a job scheduler, `kill PID`) reaches the cell it is training: the cell checkpoints
/// and stops, the sweep exits as interrupted with the cell pending, instead of waiting for it to train to its end.
#[cfg(unix)]
#[test]
fn a_signal_to_the_sweep_stops_its_cell_at_a_checkpoint() {
    let runs = temp("signal");
    // 64 images in batches of 8 for 5,000 epochs: far more steps than the test waits for.
    let extra = ["--set", "epochs=5000", "--set", "eval=none", "--set", "checkpoint=1000"];
    let mut child = Command::new(env!("CARGO_BIN_EXE_ssl-lang"))
        .args(tiny_args(&runs, "s", &extra))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let log = runs.join("s/logs/byol.log");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains(" step ")) {
        assert!(started.elapsed().as_secs() < 120, "the cell never started training");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: sends a signal to our own child, not yet waited for.
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(sent, 0);
    let stopped = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if stopped.elapsed().as_secs() > 60 {
            let _ = child.kill();
            panic!("the sweep did not stop its cell within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130), "interrupted");
    let manifest = std::fs::read_to_string(runs.join("s/sweep.json")).unwrap();
    assert!(manifest.contains("\"pending\""), "{manifest}");
    let checkpoint: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(runs.join("s/byol/checkpoint.json")).unwrap()).unwrap();
    let step = checkpoint["meta"]["step"].as_u64().unwrap();
    assert!(step > 0 && step < 40_000, "checkpointed where it stopped, not at its end: step {step}");
    let _ = std::fs::remove_dir_all(&runs);
}

/// The cells train with the sweep's own binary: deleting (or rebuilding) the file the sweep was started from while
/// it runs does not stop the next cell from starting.
#[cfg(target_os = "linux")]
#[test]
fn the_cells_run_the_sweeps_own_binary_when_its_file_goes() {
    let runs = temp("exe");
    let exe = runs.join("ssl-lang-copy");
    std::fs::copy(env!("CARGO_BIN_EXE_ssl-lang"), &exe).unwrap();
    let args = tiny_args(&runs, "x", &["--max-steps", "2", "--grid", "form=gradient,loss"]);
    let child = Command::new(&exe).args(&args).stdout(std::process::Stdio::piped()).spawn().unwrap();
    // The first cell has started (its log exists): the sweep is running from the file, which now goes.
    let first = runs.join("x/logs/byol-form=gradient.log");
    let started = std::time::Instant::now();
    while !first.exists() && started.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::remove_file(&exe).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(table(&runs.join("x")).contains("| byol | `form=loss` | 1 | "), "the second cell trained: {stdout}");
    assert!(!stdout.contains("failed"), "{stdout}");
    let _ = std::fs::remove_dir_all(&runs);
}
