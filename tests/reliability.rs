//! A run directory that cannot be corrupted: each way a hostile but realistic user broke ssl-lang (a resume with
//! another command, a poisoned step, two writers, signals, a full disk, swapped or damaged files, devices and FIFOs
//! as input, degenerate tensors), through the binary, with what must happen instead.

use ssl_lang::check::recipe::Data;
use ssl_lang::runtime::run::RunDir;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ssl-lang");

/// A tiny network on the bundled subset: a step takes well under a second even in a debug build.
const TINY: &[&str] = &[
    "--data",
    ssl_lang::data::BUNDLED_DIR,
    "--set",
    "batch=8",
    "--set",
    "encoder=resnet_mini(widths = [4, 8, 8])",
    "--set",
    "projector=mlp(hidden = 16, out = 16)",
    "--set",
    "epochs=1",
    "--set",
    "eval=none",
    "--log-every",
    "1",
];

struct Root(PathBuf);

impl Root {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ssl-reliability-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Root(dir)
    }

    fn run(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn objective(name: &str) -> String {
    format!("{}/objectives/{name}.ssl", env!("CARGO_MANIFEST_DIR"))
}

fn train_args<'a>(file: &'a str, root: &'a Root, name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", file, "--runs", root.0.to_str().unwrap(), "--name", name];
    args.extend_from_slice(TINY);
    if !extra.contains(&"--limit") {
        args.extend_from_slice(&["--limit", "256"]);
    }
    args.extend_from_slice(extra);
    args
}

fn train_file(file: &str, root: &Root, name: &str, extra: &[&str]) -> Output {
    Command::new(BIN).args(train_args(file, root, name, extra)).output().unwrap()
}

fn train(root: &Root, name: &str, extra: &[&str]) -> Output {
    train_file(&objective("unigrad"), root, name, extra)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "{}", text(o));
}

#[track_caller]
fn assert_fails(o: &Output, code: i32, error: &str) -> String {
    let all = text(o);
    assert_eq!(o.status.code(), Some(code), "{all}");
    assert!(all.contains(&format!("[{error}]")), "expected {error}: {all}");
    all
}

/// Waits for a child with a deadline, so a hang fails the test instead of blocking the suite.
fn wait(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("the command did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn resume_refuses_another_command_and_override_allows_only_epochs_and_eval() {
    let root = Root::new("resume");
    assert_ok(&train(&root, "r", &["--max-steps", "2"]));
    let config = std::fs::read(root.run("r").join("config.json")).unwrap();

    let refused = |extra: &[&str], says: &str| {
        let mut args = vec!["--resume", "--max-steps", "3"];
        args.extend_from_slice(extra);
        let all = assert_fails(&train(&root, "r", &args), 1, "ssl::run::mismatch");
        assert!(all.contains(says), "expected `{says}` in: {all}");
    };
    refused(&["--set", "batch=16"], "batch: 8 in the run, 16 now");
    refused(&["--set", "momentum=none"], "momentum");
    refused(&["--set", "seed=1"], "seed: 0 in the run, 1 now");
    refused(&["--set", "unigrad.lambda=3"], "unigrad.lambda");
    refused(&["--limit", "128"], "--limit: 256 in the run, 128 now");
    refused(&["--set", "epochs=2"], "allowed with --override");
    let edited = root.0.join("edited.ssl");
    std::fs::write(&edited, std::fs::read_to_string(objective("unigrad")).unwrap() + "\n# edited\n").unwrap();
    let all = assert_fails(
        &train_file(edited.to_str().unwrap(), &root, "r", &["--resume", "--max-steps", "3"]),
        1,
        "ssl::run::mismatch",
    );
    assert!(all.contains("objective file"), "{all}");
    assert_eq!(std::fs::read(root.run("r").join("config.json")).unwrap(), config, "a refused resume wrote config.json");
    assert!(
        train(&root, "r", &["--resume", "--override", "--set", "batch=16", "--max-steps", "3"]).status.code()
            == Some(1),
        "--override must not allow a batch change"
    );

    // Epochs may change with --override, and config.json then says so.
    let longer = train(&root, "r", &["--resume", "--override", "--set", "epochs=2", "--max-steps", "3"]);
    assert_ok(&longer);
    assert!(text(&longer).contains("at step 2 of 64"), "{}", text(&longer));
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.run("r").join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["recipe"]["epochs"], 2);

    // A checkpoint copied from a run of other settings is refused even when every shape fits.
    assert_ok(&train(&root, "other", &["--max-steps", "1", "--set", "unigrad.lambda=3"]));
    for f in ["checkpoint.json", "checkpoint.safetensors"] {
        std::fs::copy(root.run("other").join(f), root.run("r").join(f)).unwrap();
    }
    let all = assert_fails(
        &train(&root, "r", &["--resume", "--override", "--set", "epochs=2", "--max-steps", "4"]),
        1,
        "ssl::run::mismatch",
    );
    assert!(all.contains("does not belong"), "{all}");
}

#[test]
fn a_poisoned_step_stops_the_run_and_is_never_checkpointed() {
    let root = Root::new("poison");
    let all = assert_fails(
        &train(&root, "p", &["--max-steps", "1", "--set", "unigrad.lambda=1e30"]),
        1,
        "ssl::train::nonfinite",
    );
    assert!(all.contains("in step 1;"), "steps are counted from 1, as the logs count: {all}");
    assert!(!root.run("p").join("checkpoint.safetensors").exists(), "a poisoned state was checkpointed");
    for line in std::fs::read_to_string(root.run("p").join("metrics.jsonl")).unwrap_or_default().lines() {
        assert!(!line.contains("null"), "a non-finite value was logged: {line}");
    }
}

#[test]
fn one_writer_per_run_directory() {
    let root = Root::new("lock");
    // Held by this process: a fresh run and a resume of it are both refused while it is held.
    let (held, lock) = RunDir::create(&root.0, "held").unwrap();
    assert_fails(&train(&root, "held", &["--max-steps", "1"]), 2, "ssl::run::busy");
    drop(lock);
    std::fs::remove_dir_all(&held.path).unwrap();

    // Two fresh runs under one name, started together: exactly one trains.
    let start = || {
        Command::new(BIN)
            .args(train_args(&objective("unigrad"), &root, "twin", &["--max-steps", "2"]))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start(), start());
    let (a, b) = (wait(a, Duration::from_secs(120)), wait(b, Duration::from_secs(120)));
    let codes = [a.status.code(), b.status.code()];
    assert!(codes.contains(&Some(0)) && codes.contains(&Some(2)), "{}\n---\n{}", text(&a), text(&b));
    let loser = if a.status.success() { &b } else { &a };
    assert!(text(loser).contains("ssl::run::busy") || text(loser).contains("ssl::run::exists"), "{}", text(loser));
    let metrics = std::fs::read_to_string(root.run("twin").join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.matches("\"kind\":\"end\"").count(), 1, "{metrics}");

    // A lock its holder never released (kill -9) is reported by the next training, which goes on.
    std::fs::write(root.run("twin").join(".lock"), "pid 4242\n").unwrap();
    let resumed = train(&root, "twin", &["--resume", "--max-steps", "3"]);
    assert_ok(&resumed);
    assert!(text(&resumed).contains("[ssl::run::unclean]"), "{}", text(&resumed));
    assert_eq!(std::fs::read_to_string(root.run("twin").join(".lock")).unwrap(), "", "a clean end empties the lock");
}

#[test]
fn sigint_sigterm_and_sighup_checkpoint_and_exit_130() {
    let root = Root::new("signals");
    for signal in ["INT", "TERM", "HUP"] {
        let name = format!("s{signal}");
        let child = Command::new(BIN)
            .args(train_args(&objective("unigrad"), &root, &name, &[]))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let metrics = root.run(&name).join("metrics.jsonl");
        let start = Instant::now();
        while !std::fs::read_to_string(&metrics).is_ok_and(|m| m.contains("\"kind\":\"step\"")) {
            assert!(start.elapsed() < Duration::from_secs(120), "no step was logged");
            std::thread::sleep(Duration::from_millis(50));
        }
        let killed = Command::new("kill").args([format!("-{signal}"), child.id().to_string()]).status().unwrap();
        assert!(killed.success());
        let out = wait(child, Duration::from_secs(120));
        assert_eq!(out.status.code(), Some(130), "SIG{signal}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("interrupted: checkpoint saved") && !stdout.contains("done:"), "SIG{signal}: {stdout}");
        let resumed = train(&root, &name, &["--resume", "--max-steps", "40"]);
        assert_ok(&resumed);
        assert!(text(&resumed).contains(&format!("resumed {}", root.run(&name).display())), "{}", text(&resumed));
    }
}

#[test]
fn the_memory_guard_refuses_a_step_that_cannot_fit() {
    use ssl_lang::check::recipe::Recipe;
    use ssl_lang::runtime::memory;
    let recipe = Recipe { batch: 10_000, ..Recipe::default() };
    let net = ssl_lang::nn::SiameseNet::from_recipe(
        &recipe,
        ssl_lang::data::idx::SHAPE,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let need = memory::step_bytes(&net, &recipe);
    assert_eq!(need, 10_000 * memory::step_bytes(&net, &Recipe { batch: 1, ..Recipe::default() }));
    let e = memory::check(&net, &recipe, Some(need / 2)).unwrap_err();
    assert_eq!(e.code, ssl_lang::error::ErrorCode::TrainMemory);
    assert!(e.help.as_deref().unwrap().contains("--set batch=5000` or less"), "{e:?}");
    memory::check(&net, &recipe, Some(need)).unwrap();
    memory::check(&net, &recipe, None).unwrap();
    // Multi-crop views are counted.
    let multicrop = Recipe {
        augment: vec![ssl_lang::check::recipe::Augment::Multicrop { local: 2, scale: [0.1, 0.4], size: 14 }],
        ..recipe.clone()
    };
    assert!(memory::step_bytes(&net, &multicrop) > need);
}

#[test]
fn eval_caches_features_per_checkpoint_and_data() {
    let root = Root::new("cache");
    assert_ok(&train(&root, "e", &["--max-steps", "2"]));
    let run = root.run("e");
    let eval = |data: &Path| {
        Command::new(BIN).args(["eval", run.to_str().unwrap(), "--data", data.to_str().unwrap()]).output().unwrap()
    };
    let bundled = Path::new(ssl_lang::data::BUNDLED_DIR);
    let first = eval(bundled);
    assert_ok(&first);
    let knn =
        |o: &Output| String::from_utf8_lossy(&o.stdout).lines().find(|l| l.starts_with("kNN")).unwrap().to_string();
    let caches = || {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&run)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("features-"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(caches().len(), 1);

    // Other data: its own cache, never the first one's numbers.
    let other = root.0.join("other-data");
    std::fs::create_dir_all(&other).unwrap();
    let mut data = ssl_lang::data::load(&Data::FashionMnistDir(bundled.display().to_string()), None).unwrap();
    data.limit(256);
    let inverted = |v: &[u8]| v.iter().map(|x| 255 - x).collect::<Vec<u8>>();
    use ssl_lang::data::idx;
    idx::write_images(&other.join("train-images-idx3-ubyte"), &inverted(&data.train_images), false).unwrap();
    idx::write_labels(&other.join("train-labels-idx1-ubyte"), data.train_labels.as_ref().unwrap(), false).unwrap();
    idx::write_images(&other.join("t10k-images-idx3-ubyte"), &inverted(&data.test_images), false).unwrap();
    idx::write_labels(&other.join("t10k-labels-idx1-ubyte"), data.test_labels.as_ref().unwrap(), false).unwrap();
    assert_ok(&eval(&other));
    assert_eq!(caches().len(), 2, "other data must not reuse the first data's features");

    // A damaged cache (its features zeroed, header intact) is recomputed, not believed.
    let cache = &caches()[0..2];
    for path in cache {
        let mut bytes = std::fs::read(path).unwrap();
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        bytes[header..].iter_mut().for_each(|b| *b = 0);
        std::fs::write(path, bytes).unwrap();
    }
    assert_eq!(knn(&eval(bundled)), knn(&first));

    // A cache that cannot be written is a warning; the evaluation still reports.
    for path in caches() {
        std::fs::remove_file(path).unwrap();
    }
    let checkpoint: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("checkpoint.json")).unwrap()).unwrap();
    let dir = RunDir::open(&run).unwrap();
    let path = ssl_lang::commands::eval::cache_path(
        &dir,
        checkpoint["tensors"]["sha256"].as_str().unwrap(),
        &data.fingerprint(),
        1,
    );
    std::fs::create_dir_all(path.with_extension("safetensors.tmp")).unwrap();
    let unwritable = eval(bundled);
    assert_ok(&unwritable);
    assert!(text(&unwritable).contains("[ssl::eval::cache]"), "{}", text(&unwritable));
    assert_eq!(knn(&unwritable), knn(&first));
}

#[test]
fn grad_and_bench_refuse_degenerate_inputs() {
    use candle_core::{Device, Tensor};
    let root = Root::new("grad");
    let grad = |tensors: &[(&str, Tensor)]| {
        let inputs = root.0.join("in.safetensors");
        let map: std::collections::HashMap<String, Tensor> =
            tensors.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        candle_core::safetensors::save(&map, &inputs).unwrap();
        let out = root.0.join("out.safetensors");
        Command::new(BIN)
            .args(["grad", &objective("unigrad"), "--inputs", inputs.to_str().unwrap(), "--out", out.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let ok = Tensor::ones((4, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    let empty = Tensor::zeros((4, 0), candle_core::DType::F32, &Device::Cpu).unwrap();
    let feats =
        |u1: &Tensor, t2: &Tensor| [("u1", u1.clone()), ("u2", ok.clone()), ("t1", ok.clone()), ("t2", t2.clone())];
    assert_fails(&grad(&feats(&empty, &empty)), 1, "ssl::grad::shape");
    let nan =
        Tensor::from_vec([vec![0.5f32; 29], vec![f32::NAN], vec![0.5; 2]].concat(), (4, 8), &Device::Cpu).unwrap();
    let all = assert_fails(&grad(&feats(&ok, &nan)), 1, "ssl::grad::nonfinite");
    assert!(all.contains("`t2`") && all.contains("index 29"), "{all}");
    assert_ok(&grad(&feats(&ok, &ok)));

    for zero in ["--steps", "--rounds"] {
        let bench = Command::new(BIN).args(["bench", "train", &objective("unigrad"), zero, "0"]).output().unwrap();
        assert_eq!(bench.status.code(), Some(2), "{zero} 0: {}", text(&bench));
        assert!(!text(&bench).contains("pairs/s"));
    }
}

#[test]
fn a_full_disk_leaves_no_partial_files_and_resume_recovers() {
    let root = Root::new("disk");
    assert_ok(&train(&root, "d", &["--max-steps", "2"]));
    let before = std::fs::read(root.run("d").join("checkpoint.safetensors")).unwrap();
    assert!(before.len() > 41_000, "the checkpoint must exceed the file-size limit below ({} bytes)", before.len());
    // A file-size limit of 40 blocks (20 or 41 KB, as the shell counts them) stands in for a full disk: writes
    // beyond it fail with EFBIG (SIGXFSZ ignored), as they fail with ENOSPC on a full one.
    let file = objective("unigrad");
    let args = train_args(&file, &root, "d", &["--resume", "--max-steps", "4"]);
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!("trap '' XFSZ; ulimit -f 40; exec '{BIN}' {}", quoted.join(" "));
    let full = Command::new("sh").args(["-c", &script]).output().unwrap();
    let all = assert_fails(&full, 2, "ssl::run::io");
    assert!(all.contains("the disk is full"), "{all}");
    let left: Vec<String> = std::fs::read_dir(root.run("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "partial files left behind: {left:?}");
    assert_eq!(std::fs::read(root.run("d").join("checkpoint.safetensors")).unwrap(), before);
    let resumed = train(&root, "d", &["--resume", "--max-steps", "4"]);
    assert_ok(&resumed);
    assert!(text(&resumed).contains("at step 2 of"), "{}", text(&resumed));
}

#[test]
fn input_files_must_be_regular_and_overrides_single() {
    let root = Root::new("inputs");
    let check = |path: &Path| {
        let child = Command::new(BIN)
            .args(["check", path.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait(child, Duration::from_secs(20))
    };
    assert!(assert_fails(&check(Path::new("/dev/zero")), 2, "ssl::cli::read").contains("a device"));
    let fifo = root.0.join("fifo.ssl");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    assert!(assert_fails(&check(&fifo), 2, "ssl::cli::read").contains("a FIFO"));
    assert!(assert_fails(&check(&root.0), 2, "ssl::cli::read").contains("a directory"));

    let injected = train(&root, "i", &["--set", "batch=64 } train y { batch = 1", "--max-steps", "1"]);
    assert_eq!(injected.status.code(), Some(2), "{}", text(&injected));
    assert!(text(&injected).contains("not one `field=value` override"), "{}", text(&injected));
    assert!(!root.run("i").exists());
}

#[test]
fn resume_keeps_the_log_byte_for_byte_and_reports_every_fallback() {
    let root = Root::new("log");
    assert_ok(&train(&root, "l", &["--max-steps", "2"]));
    let run = root.run("l");
    let log = std::fs::read(run.join("metrics.jsonl")).unwrap();
    assert_ok(&train(&root, "l", &["--resume", "--max-steps", "4"]));
    assert!(std::fs::read(run.join("metrics.jsonl")).unwrap().starts_with(&log), "the kept lines were rewritten");

    // checkpoint.json's meta is a copy for people: the step that counts is the one under the hash.
    let json = run.join("checkpoint.json");
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    doc["meta"]["step"] = serde_json::json!("not a step");
    std::fs::write(&json, doc.to_string()).unwrap();
    let resumed = train(&root, "l", &["--resume", "--max-steps", "5"]);
    assert_ok(&resumed);
    assert!(text(&resumed).contains("at step 4 of"), "{}", text(&resumed));

    // A damaged latest checkpoint: the previous one is used, and the user is told.
    let st = run.join("checkpoint.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&st, bytes).unwrap();
    let fallback = train(&root, "l", &["--resume", "--max-steps", "6"]);
    assert_ok(&fallback);
    assert!(text(&fallback).contains("[ssl::run::fallback]"), "{}", text(&fallback));
    assert!(text(&fallback).contains("at step 4 of"), "{}", text(&fallback));

    // The only checkpoint torn (kill -9 during the first one): the help leads somewhere, not in a circle.
    assert_ok(&train(&root, "torn", &["--max-steps", "1"]));
    let st = root.run("torn").join("checkpoint.safetensors");
    std::fs::write(&st, &std::fs::read(&st).unwrap()[..100]).unwrap();
    let all = assert_fails(&train(&root, "torn", &["--resume", "--max-steps", "2"]), 1, "ssl::run::corrupt");
    assert!(all.contains("rm "), "{all}");
    for f in ["checkpoint.safetensors", "checkpoint.json"] {
        std::fs::remove_file(root.run("torn").join(f)).unwrap();
    }
    let again = train(&root, "torn", &["--resume", "--max-steps", "2"]);
    assert_ok(&again);
    assert!(text(&again).contains("starts again from step 0"), "{}", text(&again));
}
