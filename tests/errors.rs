//! Runtime errors as data: every code of `ssl_lang::error::ErrorCode` is produced here by a real failure (a missing
//! file, a torn run directory, a bad override, …), each with a message and a help line, and the edge renders them
//! as `error[code]:` text or as JSON. Like `tests/ui.rs` for the compiler's codes: a new code without a case that
//! produces it fails `every_code_is_produced`.

use candle_core::{DType, Device, Tensor};
use ssl_lang::check::recipe::{Data, Recipe};
use ssl_lang::collective::memory::MemoryRank;
use ssl_lang::collective::{Collective, Comm};
use ssl_lang::commands::{self, device, Edge, Failure, Format};
use ssl_lang::data::{self, idx};
use ssl_lang::error::{Class, Error, ErrorCode};
use ssl_lang::eval::{self, health::CollapseMonitor};
use ssl_lang::runtime::overrides::{self, SetError};
use ssl_lang::runtime::run::{RunConfig, RunDir};
use ssl_lang::runtime::train::{train, TrainOptions};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn temp(tag: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("ssl-errors-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn objective(source: &str) -> ssl_lang::check::typed::Objective {
    let (program, diagnostics) = ssl_lang::compile(source);
    assert!(!ssl_lang::diagnostic::has_errors(&diagnostics), "{diagnostics:?}");
    program.objectives[0].clone()
}

const UNIGRAD: &str = include_str!("../objectives/unigrad.ssl");

fn failure(f: Failure) -> Error {
    match f {
        Failure::Error(e) => e,
        Failure::Reported(code) => panic!("expected an error, got reported problems (exit {code})"),
    }
}

fn set_error(sets: &[&str]) -> Error {
    let (mut recipe, mut o) = (Recipe::default(), objective(UNIGRAD));
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    match overrides::apply(&mut recipe, &mut o, &sets) {
        Err(SetError::Error(e)) => e,
        other => panic!("expected a coded override error, got {other:?}"),
    }
}

fn run_config(source: &str) -> RunConfig {
    RunConfig {
        version: "test".into(),
        objective: "unigrad".into(),
        source: source.into(),
        recipe: serde_json::json!({}),
        recipe_text: String::new(),
        overrides: vec![],
        limit: Some(64),
        params: Default::default(),
        seed: 0,
        backend: "fused".into(),
        data: "bundled".into(),
        train_images: 64,
        test_images: 64,
        threads: 1,
        data_sha256: String::new(),
    }
}

fn eval_error(run: &Path) -> Error {
    let protocols = commands::eval::Protocols { knn: true, linear: false };
    failure(commands::eval::run(run, protocols, None, "cpu", &Edge::new(Format::Human)).unwrap_err())
}

fn train_error(recipe: &Recipe, sets: &[&str], limit: usize, root: &Path) -> Error {
    train_error_in(recipe, sets, limit, root, None)
}

/// [`train_error`] as a rank of `job`.
fn train_error_in(recipe: &Recipe, sets: &[&str], limit: usize, root: &Path, job: Option<Comm>) -> Error {
    let (mut recipe, mut o) = (recipe.clone(), objective(UNIGRAD));
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    overrides::apply(&mut recipe, &mut o, &sets).unwrap();
    let opts = TrainOptions {
        job,
        data_dir: Some(PathBuf::from(data::BUNDLED_DIR)),
        runs_root: root.to_path_buf(),
        name: Some(format!("t{}", sets.len())),
        resume: false,
        allow_changes: false,
        max_steps: Some(2),
        limit: Some(limit),
        backend: ssl_lang::backend::Backend::Fused,
        log_every: 1,
        overrides: vec![],
        device: Device::Cpu,
        layers: Default::default(),
        stop: Arc::new(AtomicBool::new(false)),
        edge: Edge::new(Format::Human),
    };
    train(UNIGRAD, &o, &recipe, &opts).unwrap_err()
}

fn grad_error(root: &Path, tensors: &[(&str, Tensor)], out: &Path) -> Error {
    let inputs = root.join("in.safetensors");
    let map: HashMap<String, Tensor> = tensors.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    candle_core::safetensors::save(&map, &inputs).unwrap();
    let o = objective(UNIGRAD);
    commands::grad::run(&o, &inputs, out, false, ssl_lang::backend::Backend::Fused, &Device::Cpu).unwrap_err().into()
}

fn features(n: usize, d: usize) -> Tensor {
    Tensor::ones((n, d), DType::F32, &Device::Cpu).unwrap()
}

/// One real failure per code, in table order.
fn cases() -> Vec<Error> {
    let root = temp("cases");
    let edge = Edge::new(Format::Human);
    let mut out = Vec::new();

    out.push(failure(commands::read(&root.join("absent.ssl"), &edge).err().unwrap()));
    let (program, _) = ssl_lang::compile(UNIGRAD);
    out.push(commands::select(&program, Some("nope"), "unigrad.ssl").unwrap_err());
    out.push(set_error(&["batch"]));
    out.push(set_error(&["unigrad.lamda=3"]));
    out.push(device::open("tpu").unwrap_err().into());
    out.push(device::open("cuda:0").unwrap_err().into()); // not built (or, in a cuda build here, unavailable)

    let (images, labels): (Vec<u8>, Vec<u8>) = (vec![7; 3 * 784], vec![0, 9, 4]);
    out.push(data::load(&Data::FashionMnistDir(root.join("no-data").display().to_string()), None).unwrap_err().into());
    out.push(idx::read_images(&root).unwrap_err().into()); // a directory, not a file
    let plain = root.join("images");
    idx::write_images(&plain, &images, false).unwrap();
    let bytes = std::fs::read(&plain).unwrap();
    std::fs::write(&plain, &bytes[..bytes.len() - 10]).unwrap();
    out.push(idx::read_images(&plain).unwrap_err().into());
    let mut long = bytes.clone();
    long.push(0);
    std::fs::write(&plain, &long).unwrap();
    out.push(idx::read_images(&plain).unwrap_err().into());
    let label_file = root.join("labels");
    idx::write_labels(&label_file, &labels, false).unwrap();
    out.push(idx::read_images(&label_file).unwrap_err().into());
    idx::write(&plain, idx::IMAGES_MAGIC, &[3, 14, 56], &images, false).unwrap();
    out.push(idx::read_images(&plain).unwrap_err().into());
    idx::write_images(&plain, &images, false).unwrap();
    idx::write_labels(&label_file, &labels[..2], false).unwrap();
    out.push(idx::read_pair(&plain, &label_file).unwrap_err().into());
    idx::write_labels(&label_file, &[0, 10, 1], false).unwrap();
    out.push(idx::read_labels(&label_file).unwrap_err().into());
    out.push(idx::write_images(&root.join("absent-dir").join("x"), &images, false).unwrap_err().into());
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    out.push(data::augment::augment(&[0u8; 785], idx::SHAPE, &[], &mut rng).unwrap_err().into());
    let cifar = root.join("cifar-binary");
    std::fs::create_dir_all(&cifar).unwrap();
    std::fs::write(cifar.join("data_batch_1.bin"), [0u8; 3072]).unwrap(); // one byte short of a record
    out.push(data::load(&Data::Cifar10(cifar.display().to_string()), None).unwrap_err().into());
    let folder = |dir: &Path| Data::ImageFolder { dir: dir.display().to_string(), size: 8, skip_bad: false };
    let images = root.join("image-folder");
    std::fs::create_dir_all(&images).unwrap();
    out.push(data::load(&folder(&images), None).unwrap_err().into()); // no images: layout
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).save(images.join("a.png")).unwrap();
    let flat = data::load(&folder(&images), None).unwrap();
    out.push(flat.eval_splits().unwrap_err().into());
    let mut norm = flat.clone();
    let one = ssl_lang::check::recipe::Normalize::MeanStd { mean: vec![0.5], std: vec![0.2] };
    out.push(norm.set_normalize(&one).unwrap_err().into());
    std::fs::write(images.join("b.png"), b"\x89PNG but no more").unwrap();
    out.push(data::load(&folder(&images), None).unwrap_err().into());

    out.push(eval::knn_predict(&features(4, 2), &[0, 1, 2], &features(2, 2), 3, 0.1).unwrap_err().into());
    out.push(eval::knn_predict(&features(4, 2), &[0, 1, 2, 3], &features(2, 2), 0, 0.1).unwrap_err().into());

    let u = features(4, 8);
    std::fs::write(root.join("not-safetensors"), b"junk").unwrap();
    let o = objective(UNIGRAD);
    let backend = ssl_lang::backend::Backend::Fused;
    let read = commands::grad::run(&o, &root.join("not-safetensors"), &root.join("g"), false, backend, &Device::Cpu);
    out.push(read.unwrap_err().into());
    out.push(grad_error(&root, &[("u1", u.clone())], &root.join("g")));
    let all = |extra: Option<(&'static str, Tensor)>| {
        let mut t = vec![("u1", u.clone()), ("u2", u.clone()), ("t1", u.clone()), ("t2", u.clone())];
        t.extend(extra);
        t
    };
    out.push(grad_error(&root, &all(Some(("t2", features(3, 8)))), &root.join("g")));
    out.push(grad_error(&root, &all(Some(("Q", features(3, 8)))), &root.join("g")));
    let nan = Tensor::new(&[[f32::NAN; 8]; 4], &Device::Cpu).unwrap();
    out.push(grad_error(
        &root,
        &[("u1", u.clone()), ("u2", u.clone()), ("t1", u.clone()), ("t2", nan)],
        &root.join("g"),
    ));
    out.push(grad_error(&root, &all(None), &root.join("absent-dir").join("g")));

    let runs = root.join("runs");
    let run = RunDir::create(&runs, "r").unwrap().0;
    run.write_config(&run_config(UNIGRAD)).unwrap();
    out.push(RunDir::create(&runs, "r").unwrap_err().into());
    let held = run.lock().unwrap();
    out.push(run.lock().unwrap_err().into());
    drop(held);
    out.push(RunDir::open(&runs.join("absent")).unwrap_err().into());
    out.push(RunDir::create(&runs, "a/b").unwrap_err().into());
    out.push(RunDir::create(&plain, "r").unwrap_err().into()); // the runs root is a file
    std::fs::write(run.file("metrics.jsonl"), b"{oops\n").unwrap();
    out.push(run.read_metrics().unwrap_err().into());
    std::fs::write(run.file("metrics.jsonl"), b"{\"kind\": \"step\", \"step\": 1}\n").unwrap();
    out.push(run.read_metrics().unwrap_err().into());
    out.push(eval_error(&run.path));
    run.write_config(&run_config("objective unigrad { positive = -t9 }")).unwrap();
    out.push(eval_error(&run.path));
    // RunPlot: plotters failing to draw into a string; see `every_code_is_produced`.

    out.push(train_error(&Recipe::default(), &[], 64, &root.join("train")));
    // `total` sees the two global views only: the loss form cannot train multi-crop local views.
    out.push(train_error(
        &Recipe::default(),
        &["form=loss", "augment=[multicrop(local = 2, scale = [0.1, 0.4], size = 14)]"],
        64,
        &root.join("train"),
    ));
    out.push(train_error(
        &Recipe { batch: 32, ..Default::default() },
        &["unigrad.lambda=1e30"],
        64,
        &root.join("train"),
    ));
    let net =
        ssl_lang::nn::SiameseNet::from_recipe(&Recipe::default(), ssl_lang::data::idx::SHAPE, DType::F32, &Device::Cpu)
            .unwrap();
    out.push(ssl_lang::runtime::memory::check(&net, &Recipe::default(), Some(1)).unwrap_err());
    let mut monitor = CollapseMonitor::default();
    out.extend((0..5).filter_map(|_| monitor.observe(0.0, 0.1)));

    let bench = Command::new(env!("CARGO_BIN_EXE_ssl-lang"))
        .args(["bench", "train", "absent.ssl", "--steps", "1", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(bench.status.code(), Some(2));
    out.extend(json_errors(&String::from_utf8_lossy(&bench.stderr)));

    // A sweep: a grid that is not KEY=V1,..., and a cell whose training fails (its file is absent).
    let sweep = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_ssl-lang")).args(args).output().unwrap();
        json_errors(&String::from_utf8_lossy(&o.stderr))
    };
    out.extend(sweep(&["sweep", "absent.ssl", "--grid", "form", "--format", "json"]));
    let runs = root.join("sweep");
    out.extend(sweep(&["sweep", "absent.ssl", "--runs", runs.to_str().unwrap(), "--name", "s", "--format", "json"]));

    // Started by an MPI launcher (its environment says so) in a build without MPI.
    let unigrad = format!("{}/objectives/unigrad.ssl", env!("CARGO_MANIFEST_DIR"));
    let launched = Command::new(env!("CARGO_BIN_EXE_ssl-lang"))
        .args(["verify", "--ranks", "2", &unigrad, "--format", "json"])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    if !cfg!(feature = "mpi") {
        assert_eq!(launched.status.code(), Some(2), "{}", String::from_utf8_lossy(&launched.stderr));
        out.extend(json_errors(&String::from_utf8_lossy(&launched.stderr)));
    }

    // Ranks of a job: a batch that does not split over them (checked before any collective, so a lone rank of a
    // 2-rank world returns), one that left while another waits in a collective, replicas whose weights drifted.
    let lone = MemoryRank::world(2).pop().map(Comm::new);
    out.push(train_error_in(&Recipe::default(), &["batch=63"], 640, &root.join("ranks"), lone));
    let mut world = MemoryRank::world(2);
    let waiting = world.pop().unwrap();
    drop(world);
    out.push(ssl_lang::runtime::ranks::agree_to_stop(&waiting, false).unwrap_err());
    let drifted: Vec<Error> = std::thread::scope(|s| {
        let handles: Vec<_> = MemoryRank::world(2)
            .into_iter()
            .map(|r| {
                s.spawn(move || {
                    let mut params = ssl_lang::nn::params::Params::new();
                    let w = candle_core::Var::from_tensor(&features(1, 3)).unwrap();
                    if r.rank() == 1 {
                        w.set(&(w.as_tensor() * 2.0).unwrap()).unwrap();
                    }
                    params.push("w", w, ssl_lang::nn::params::ParamKind::Weight).unwrap();
                    ssl_lang::runtime::ranks::check_replicas(&r, &params, 3).unwrap_err()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    out.extend(drifted);

    out.extend(misused_run(&root.join("cli")));
    out.push(Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap().matmul(&features(2, 3)).unwrap_err().into());
    let _ = std::fs::remove_dir_all(&root);
    out
}

/// A real run through the binary, then each misuse of it that is reported as an error or a warning: a resume
/// with another batch, a lock its holder never released, a damaged latest checkpoint, an unwritable feature cache.
fn misused_run(root: &Path) -> Vec<Error> {
    let file = format!("{}/objectives/unigrad.ssl", env!("CARGO_MANIFEST_DIR"));
    let train = |extra: &[&str]| {
        let mut args = vec!["train", &file, "--runs", root.to_str().unwrap(), "--name", "r", "--format", "json"];
        args.extend([
            "--data",
            data::BUNDLED_DIR,
            "--limit",
            "64",
            "--set",
            "batch=8",
            "--set",
            "encoder=resnet_mini(widths = [4, 8, 8])",
            "--set",
            "projector=mlp(hidden = 16, out = 16)",
            "--set",
            "eval=none",
        ]);
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_ssl-lang")).args(&args).output().unwrap()
    };
    let reported = |o: &std::process::Output| {
        let stderr = String::from_utf8_lossy(&o.stderr);
        json_errors(&stderr.lines().filter(|l| l.starts_with('{')).collect::<Vec<_>>().join("\n"))
    };
    let mut out = Vec::new();
    assert!(train(&["--max-steps", "1"]).status.success());
    out.extend(reported(&train(&["--resume", "--set", "batch=16"])));
    std::fs::write(root.join("r/.lock"), "pid 4242\n").unwrap();
    out.extend(reported(&train(&["--resume", "--max-steps", "2"])));
    let tensors = root.join("r/checkpoint.safetensors");
    let mut bytes = std::fs::read(&tensors).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&tensors, bytes).unwrap();
    out.extend(reported(&train(&["--resume", "--max-steps", "3"])));

    let run = RunDir::open(&root.join("r")).unwrap();
    let loaded = run.load_checkpoint().unwrap().unwrap();
    let mut data = data::load(&Data::FashionMnistDir(data::BUNDLED_DIR.into()), None).unwrap();
    data.limit(64);
    let cache = commands::eval::cache_path(&run, &loaded.sha256, &data.fingerprint(), 1);
    std::fs::create_dir_all(cache.with_extension("safetensors.tmp")).unwrap();
    let eval = Command::new(env!("CARGO_BIN_EXE_ssl-lang"))
        .args(["eval", root.join("r").to_str().unwrap(), "--data", data::BUNDLED_DIR, "--format", "json"])
        .output()
        .unwrap();
    assert!(eval.status.success());
    out.extend(reported(&eval));
    // Other images than the run's: evaluated, with a warning.
    let other = root.join("other-data");
    std::fs::create_dir_all(&other).unwrap();
    for (file, count) in [(idx::TRAIN_IMAGES, 64), (idx::TEST_IMAGES, 64)] {
        idx::write_images(&other.join(file), &vec![99; count * idx::PIXELS], true).unwrap();
    }
    for file in [idx::TRAIN_LABELS, idx::TEST_LABELS] {
        idx::write_labels(&other.join(file), &(0..64).map(|i| (i % 10) as u8).collect::<Vec<_>>(), true).unwrap();
    }
    let eval = Command::new(env!("CARGO_BIN_EXE_ssl-lang"))
        .args(["eval", root.join("r").to_str().unwrap(), "--data", other.to_str().unwrap(), "--format", "json"])
        .output()
        .unwrap();
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    out.extend(reported(&eval));
    let export = |to: &str, file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_ssl-lang"))
            .args(["export", root.join("r").to_str().unwrap(), "--to", to, file.to_str().unwrap(), "--format", "json"])
            .output()
            .unwrap()
    };
    // torchvision has no resnet_mini; a file in a directory that does not exist cannot be written.
    out.extend(reported(&export("torchvision", &root.join("r.safetensors"))));
    out.extend(reported(&export("candle", &root.join("absent/r.safetensors"))));
    assert!(export("candle", &root.join("r.safetensors")).status.success());
    out
}

/// Errors read back from `--format json` stderr lines.
fn json_errors(stderr: &str) -> Vec<Error> {
    stderr
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not JSON: {l} ({e})")))
        .map(|v| {
            let code = ErrorCode::ALL.iter().copied().find(|c| v["code"] == c.as_str()).expect("a known code");
            Error { code, message: v["message"].as_str().unwrap().into(), help: v["help"].as_str().map(Into::into) }
        })
        .collect()
}

/// A new runtime code without a case that produces it fails here; and every error says what is wrong and how to
/// fix it, leaving its code to the renderer.
#[test]
fn every_code_is_produced_with_a_message_and_help() {
    let cases = cases();
    let seen: BTreeSet<&str> = cases.iter().map(|e| e.code.as_str()).collect();
    let missing: Vec<&str> = ErrorCode::ALL
        .iter()
        // Only plotters failing to render into a string (never seen) gives RunPlot; only a CUDA build on a machine
        // without the GPU asked for gives DeviceUnavailable (a build without CUDA gives DeviceNotBuilt instead).
        .filter(|&&c| c != ErrorCode::RunPlot)
        .filter(|&&c| {
            c != if cfg!(feature = "cuda") { ErrorCode::DeviceNotBuilt } else { ErrorCode::DeviceUnavailable }
        })
        // Likewise a launch into a build without MPI can only happen without it.
        .filter(|&&c| !(cfg!(feature = "mpi") && c == ErrorCode::RanksUnavailable))
        .map(|c| c.as_str())
        .filter(|c| !seen.contains(c))
        .collect();
    assert!(missing.is_empty(), "codes no case produces: {missing:?}");
    for e in cases {
        assert!(!e.message.trim().is_empty(), "{:?} has no message", e.code);
        assert!(e.help.as_deref().is_some_and(|h| !h.trim().is_empty()), "{:?} has no help: {}", e.code, e.message);
        // (A failed benchmark quotes its child's report, which carries the child's code.)
        let own = if e.code == ErrorCode::BenchRun { e.message.lines().next().unwrap_or_default() } else { &e.message };
        assert!(!own.contains("ssl::"), "{:?}: the code belongs to the renderer, not the message", e.code);
    }
}

/// Human text: `error[code]: message` and an indented help line; warnings say so; JSON carries the same fields.
#[test]
fn errors_render_as_text_and_json() {
    let e = Error::new(ErrorCode::RunExists, "`runs/x` already holds a run").help("choose another name");
    assert_eq!(
        ssl_lang::render::error_human(&e, false),
        "error[ssl::run::exists]: `runs/x` already holds a run\n  help: choose another name\n"
    );
    let v: serde_json::Value = serde_json::from_str(&ssl_lang::render::error_json(&e)).unwrap();
    assert_eq!(v["code"], "ssl::run::exists");
    assert_eq!(v["severity"], "error");
    assert_eq!(v["help"], "choose another name");
    let w = Error::new(ErrorCode::TrainCollapse, "collapsing").help("add a negative term");
    assert!(ssl_lang::render::error_human(&w, false).starts_with("warning[ssl::train::collapse]: collapsing"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&ssl_lang::render::error_json(&w)).unwrap()["severity"],
        "warning"
    );
}

/// Exit codes come from the code's class, in one place: input 1, usage 2.
#[test]
fn exit_codes_follow_the_class() {
    for &c in ErrorCode::ALL {
        let want = match c.class() {
            Class::Input => 1,
            Class::Usage => 2,
            Class::Warning => 0,
        };
        assert_eq!(Error::new(c, "x").exit_code(), want, "{c}");
    }
    // The binary: a missing file is usage (2), a file with errors is input (1), both reported as JSON when asked.
    let ssl = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_ssl-lang")).args(args).output().unwrap();
    let out = ssl(&["train", "absent.ssl", "--format", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let errors = json_errors(&String::from_utf8_lossy(&out.stderr));
    assert_eq!(errors.iter().map(|e| e.code).collect::<Vec<_>>(), [ErrorCode::SourceRead]);
    let out = ssl(&["eval", "absent-run", "--format", "json"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json_errors(&String::from_utf8_lossy(&out.stderr))[0].code, ErrorCode::RunMissing);
}
