//! The run directory: creation and opening, config and metrics files (torn and corrupt lines, truncation for
//! `--resume`), atomic checkpoints with fallback to the previous one, and the SVG plots.

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use ssl_lang::error::Error;
use ssl_lang::runtime::checkpoint::{Checkpoint, Meta};
use ssl_lang::runtime::plot::plot_metrics;
use ssl_lang::runtime::records::{Baseline, EvalRecord, Record, StepRecord};
use ssl_lang::runtime::run::{default_name, utc_timestamp, RunConfig, RunDir, RunError};
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory under the system temp dir, removed on drop (also when a test fails).
struct TempRoot(PathBuf);

impl TempRoot {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let path = std::env::temp_dir().join(format!("ssl-lang-run-{tag}-{}-{n}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).unwrap();
        TempRoot(path)
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn config(objective: &str) -> RunConfig {
    RunConfig {
        version: "test".into(),
        objective: objective.into(),
        source: format!("objective {objective} {{ positive = -t2 }}"),
        recipe: json!({"batch": 256, "lr": 0.06}),
        recipe_text: "train {}".into(),
        overrides: vec!["epochs = 2".into()],
        limit: None,
        params: Default::default(),
        seed: 0,
        backend: "fused".into(),
        data: "bundled".into(),
        train_images: 10,
        test_images: 5,
        threads: 2,
        data_sha256: String::new(),
    }
}

fn new_run(root: &TempRoot) -> RunDir {
    let run = RunDir::create(&root.0, "r").unwrap().0;
    run.write_config(&config("simclr")).unwrap();
    run
}

fn assert_code(e: RunError, expected: &str) -> String {
    let e = Error::from(e);
    assert_eq!(e.code.as_str(), expected, "{e}");
    assert!(e.help.as_deref().is_some_and(|h| !h.is_empty()), "no help for: {e}");
    e.message
}

#[test]
fn create_open_and_exists() {
    let root = TempRoot::new("create");
    let runs = root.0.join("runs");
    let run = RunDir::create(&runs, "first").unwrap().0;
    assert_eq!(run.path, runs.join("first"));
    assert!(run.path.is_dir());

    // Without a config.json it is not yet a run: open refuses, create may be repeated.
    assert_code(RunDir::open(&run.path).unwrap_err(), "ssl::run::missing");
    RunDir::create(&runs, "first").unwrap();

    run.write_config(&config("a")).unwrap();
    let err = RunDir::create(&runs, "first").unwrap_err();
    assert!(matches!(err, RunError::Exists { .. }));
    assert_code(err, "ssl::run::exists");

    assert_eq!(RunDir::open(&run.path).unwrap().path, run.path);
    // A file inside the run (a checkpoint, the config) opens its directory.
    assert_eq!(RunDir::open(&run.path.join("config.json")).unwrap().path, run.path);
    let ckpt = run.path.join("checkpoint.safetensors");
    fs::write(&ckpt, b"x").unwrap();
    assert_eq!(RunDir::open(&ckpt).unwrap().path, run.path);

    assert_code(RunDir::open(&runs.join("nope")).unwrap_err(), "ssl::run::missing");
    for bad in ["", "..", "a/b"] {
        assert_code(RunDir::create(&runs, bad).unwrap_err(), "ssl::run::name");
    }
}

#[test]
fn config_round_trip() {
    let root = TempRoot::new("config");
    let run = RunDir::create(&root.0, "c").unwrap().0;
    assert_code(run.read_config().unwrap_err(), "ssl::run::missing");
    let first = config("byol");
    run.write_config(&first).unwrap();
    assert_eq!(run.read_config().unwrap(), first);
    let config2 = config("moco");
    run.write_config(&config2).unwrap();
    assert_eq!(RunDir::open(&run.path).unwrap().read_config().unwrap(), config2);
    assert!(!run.path.join("config.json.tmp").exists());

    fs::write(run.path.join("config.json"), b"{ not json").unwrap();
    assert_code(run.read_config().unwrap_err(), "ssl::run::corrupt");
    // Valid JSON that is not this version's configuration: a format error, not a panic.
    fs::write(run.path.join("config.json"), br#"{"objective": "simclr"}"#).unwrap();
    assert_code(run.read_config().unwrap_err(), "ssl::run::format");
}

fn step_record(i: usize) -> StepRecord {
    StepRecord {
        step: i,
        epoch: i / 10,
        lr: 0.1,
        momentum: None,
        pos_sim: 0.5 + 0.01 * i as f64,
        positive_norm: [1.0, 1.0],
        push_norm: [0.5, 0.5],
        z_std_online: 0.05 + 0.001 * i as f64,
        z_std_target: 0.06,
        z_std_healthy: 1.0 / 128f64.sqrt(),
        effective_rank: 10.0,
        phase_ms: Default::default(),
        rss_mb: None,
        conv_ms: 1.0,
        conv_gflop: 2.0,
        loss: Some(1.0 / (i as f64 + 1.0)),
        pairs_per_s: 100.0,
    }
}

fn step(i: usize) -> Record {
    Record::Step(step_record(i))
}

fn line(r: &Record) -> String {
    serde_json::to_string(r).unwrap()
}

#[test]
fn metrics_append_and_read() {
    let root = TempRoot::new("metrics");
    let run = new_run(&root);
    assert!(run.read_metrics().unwrap().is_empty());
    let records: Vec<Record> = (0..5).map(step).collect();
    for r in &records {
        run.append_metrics(r).unwrap();
    }
    assert_eq!(run.read_metrics().unwrap(), records);
    let text = fs::read_to_string(run.path.join("metrics.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 5);
    assert!(text.ends_with('\n'));
    // A record of another version (a step without its fields) is a format error naming the line.
    fs::write(run.path.join("metrics.jsonl"), format!("{}\n{{\"kind\": \"step\", \"step\": 1}}\n", line(&step(0))))
        .unwrap();
    assert!(assert_code(run.read_metrics().unwrap_err(), "ssl::run::format").contains("line 2"));
}

#[test]
fn torn_last_line_is_ignored_and_repaired_on_append() {
    let root = TempRoot::new("torn");
    let run = new_run(&root);
    for i in 0..3 {
        run.append_metrics(&step(i)).unwrap();
    }
    let path = run.path.join("metrics.jsonl");
    fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(br#"{"kind":"step","st"#).unwrap();
    assert_eq!(run.read_metrics().unwrap(), (0..3).map(step).collect::<Vec<_>>());
    // The next append cuts the torn tail off instead of gluing onto it.
    run.append_metrics(&step(3)).unwrap();
    assert_eq!(run.read_metrics().unwrap(), (0..4).map(step).collect::<Vec<_>>());

    // A complete last record missing only its newline is kept, and the next append starts a new line.
    fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(line(&step(4)).as_bytes()).unwrap();
    assert_eq!(run.read_metrics().unwrap().len(), 5);
    run.append_metrics(&step(5)).unwrap();
    assert_eq!(run.read_metrics().unwrap(), (0..6).map(step).collect::<Vec<_>>());
}

#[test]
fn corrupt_middle_line_reports_its_line_number() {
    let root = TempRoot::new("corrupt");
    let run = new_run(&root);
    let path = run.path.join("metrics.jsonl");
    fs::write(&path, format!("{}\n{}\n{{oops\n{}\n", line(&step(0)), line(&step(1)), line(&step(2)))).unwrap();
    let err = run.read_metrics().unwrap_err();
    assert!(matches!(err, RunError::Corrupt { .. }));
    assert!(assert_code(err, "ssl::run::corrupt").contains("line 3"));
    // A bad last line that does end in a newline was completely written: corrupt, not torn.
    fs::write(&path, format!("{}\n[1]\n", line(&step(0)))).unwrap();
    let err = run.read_metrics().unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
    // Invalid UTF-8 is an error, not a panic.
    fs::write(&path, b"\xff\xfe\n").unwrap();
    assert_code(run.read_metrics().unwrap_err(), "ssl::run::corrupt");
    assert_code(run.truncate_metrics(3).unwrap_err(), "ssl::run::corrupt");
}

#[test]
fn truncate_metrics_keeps_steps_up_to_the_checkpoint() {
    let root = TempRoot::new("truncate");
    let run = new_run(&root);
    run.truncate_metrics(3).unwrap(); // no file yet: nothing to do
    run.append_metrics(&Record::Baseline(Baseline {
        step: 0,
        raw_pixel_knn: 0.7,
        random_init_knn: 0.6,
        raw_pixel_linear: None,
        random_init_linear: None,
    }))
    .unwrap();
    for i in 0..10 {
        run.append_metrics(&step(i)).unwrap();
    }
    run.append_metrics(&Record::Eval(EvalRecord { epoch: 1, step: 5, knn_top1: 0.5 })).unwrap();
    let path = run.path.join("metrics.jsonl");
    fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"kind\":").unwrap();
    run.truncate_metrics(5).unwrap();
    let kept = run.read_metrics().unwrap();
    let steps: Vec<usize> = kept.iter().map(Record::step).collect();
    assert_eq!(steps, [0, 0, 1, 2, 3, 4, 5, 5]);
    assert!(matches!(kept.last(), Some(Record::Eval(_))));
    assert!(fs::read_to_string(&path).unwrap().ends_with('\n'));
    run.append_metrics(&step(6)).unwrap();
    assert_eq!(run.read_metrics().unwrap().len(), kept.len() + 1);
}

fn sample(step: usize) -> Checkpoint {
    let dev = Device::Cpu;
    let a: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin() / 3.0 + f32::EPSILON).collect();
    let b: Vec<f64> = vec![std::f64::consts::PI, -1e-300, 1e300, 0.1 + 0.2, -0.0];
    let one = |name: &str, t: Tensor| HashMap::from([(name.to_string(), t)]);
    Checkpoint {
        meta: Meta { step, epoch: step / 20, knn_top1: Some(0.8125), run_identity: "run".into() },
        online: one("encoder.weight", Tensor::from_vec(a, (3, 4), &dev).unwrap()),
        buffers: one("scalar", Tensor::new(7.25f32, &dev).unwrap()),
        target: HashMap::new(),
        optimizer: one("momentum.0", Tensor::from_vec(b, 5, &dev).unwrap()),
        states: one("F", Tensor::new(&[[1.5f64, 2.5], [3.5, 4.5]], &dev).unwrap().t().unwrap()),
    }
}

/// `c` with its buffer `scalar` set to `v`.
fn with_scalar(mut c: Checkpoint, v: f32, step: usize) -> Checkpoint {
    c.buffers.insert("scalar".into(), Tensor::new(v, &Device::Cpu).unwrap());
    c.meta.step = step;
    c
}

/// The values' bit patterns, so that equality is exact (−0.0 ≠ 0.0, subnormals kept).
fn bits(t: &Tensor) -> Vec<u64> {
    let flat = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => flat.to_vec1::<f32>().unwrap().iter().map(|v| u64::from(v.to_bits())).collect(),
        DType::F64 => flat.to_vec1::<f64>().unwrap().iter().map(|v| v.to_bits()).collect(),
        d => panic!("unexpected dtype {d:?}"),
    }
}

fn assert_same(a: &Checkpoint, b: &Checkpoint) {
    assert_eq!(a.meta, b.meta);
    let (a, b) = (a.to_tensors(), b.to_tensors());
    let mut ka: Vec<_> = a.keys().collect();
    let mut kb: Vec<_> = b.keys().collect();
    ka.sort();
    kb.sort();
    assert_eq!(ka, kb);
    for (k, ta) in &a {
        let tb = &b[k];
        assert_eq!(ta.dtype(), tb.dtype(), "{k}");
        assert_eq!(ta.dims(), tb.dims(), "{k}");
        assert_eq!(bits(ta), bits(tb), "{k} differs");
    }
}

#[test]
fn checkpoint_round_trip_is_exact() {
    let root = TempRoot::new("ckpt");
    let run = new_run(&root);
    assert!(run.load_checkpoint().unwrap().is_none());
    let first = sample(40);
    run.save_checkpoint(&first).unwrap();
    assert_same(&first, &run.load_checkpoint().unwrap().unwrap().checkpoint);
    for f in ["checkpoint.safetensors", "checkpoint.json"] {
        assert!(run.path.join(f).is_file(), "{f}");
    }
    assert!(!run.path.join("checkpoint.safetensors.tmp").exists());
    assert!(!run.path.join("checkpoint.json.tmp").exists());

    // A second save keeps the first as checkpoint.prev.* and loads the second.
    let mut second = sample(80);
    second.target.insert("extra".into(), Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap());
    run.save_checkpoint(&second).unwrap();
    assert!(run.path.join("checkpoint.prev.safetensors").is_file());
    assert!(run.path.join("checkpoint.prev.json").is_file());
    assert_same(&second, &run.load_checkpoint().unwrap().unwrap().checkpoint);
}

fn truncate_file(path: &Path, keep: u64) {
    fs::OpenOptions::new().write(true).open(path).unwrap().set_len(keep).unwrap();
}

#[test]
fn torn_checkpoint_falls_back_to_the_previous_one() {
    let root = TempRoot::new("fallback");
    let run = new_run(&root);
    let first = sample(10);
    run.save_checkpoint(&first).unwrap();
    let second = with_scalar(sample(20), 99.0, 20);
    run.save_checkpoint(&second).unwrap();

    let st = run.path.join("checkpoint.safetensors");
    let len = fs::metadata(&st).unwrap().len();
    truncate_file(&st, len / 2);
    assert_same(&first, &run.load_checkpoint().unwrap().unwrap().checkpoint);

    // The next save must not displace the good previous checkpoint with the torn one.
    run.save_checkpoint(&with_scalar(sample(30), 99.0, 30)).unwrap();
    assert_eq!(run.load_checkpoint().unwrap().unwrap().checkpoint.meta.step, 30);
    truncate_file(&st, 3);
    assert_eq!(run.load_checkpoint().unwrap().unwrap().checkpoint.meta.step, 10);

    // Same size, different bytes: the hash catches it.
    run.save_checkpoint(&with_scalar(sample(40), 99.0, 40)).unwrap(); // the torn current is replaced, prev stays 10
    run.save_checkpoint(&with_scalar(sample(50), -3.0, 50)).unwrap(); // 40 becomes prev
    let mut bytes = fs::read(&st).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    fs::write(&st, &bytes).unwrap();
    assert_eq!(run.load_checkpoint().unwrap().unwrap().checkpoint.meta.step, 40);
}

#[test]
fn crash_between_renames_still_loads() {
    // A save renames the current pair to prev one file at a time; a crash between the two renames leaves
    // checkpoint.json beside checkpoint.prev.safetensors, which must still be found.
    let root = TempRoot::new("renames");
    let run = new_run(&root);
    run.save_checkpoint(&sample(1)).unwrap();
    run.save_checkpoint(&sample(2)).unwrap();
    fs::rename(run.path.join("checkpoint.safetensors"), run.path.join("checkpoint.prev.safetensors")).unwrap();
    assert_same(&sample(2), &run.load_checkpoint().unwrap().unwrap().checkpoint);
}

#[test]
fn torn_checkpoint_without_previous_is_corrupt_not_a_panic() {
    let root = TempRoot::new("noprev");
    let run = new_run(&root);
    run.save_checkpoint(&sample(5)).unwrap();
    let st = run.path.join("checkpoint.safetensors");
    let len = fs::metadata(&st).unwrap().len();
    truncate_file(&st, len - 7);
    let err = run.load_checkpoint().unwrap_err();
    assert!(assert_code(err, "ssl::run::corrupt").contains("bytes"));

    // Garbage in every file: still an error, never a panic.
    fs::write(&st, b"garbage").unwrap();
    fs::write(run.path.join("checkpoint.json"), b"{\"format\": 3").unwrap();
    assert_code(run.load_checkpoint().unwrap_err(), "ssl::run::corrupt");
    fs::write(run.path.join("checkpoint.json"), b"{}").unwrap();
    assert_code(run.load_checkpoint().unwrap_err(), "ssl::run::corrupt");
    fs::remove_file(run.path.join("checkpoint.json")).unwrap();
    assert_code(run.load_checkpoint().unwrap_err(), "ssl::run::corrupt");

    // A json whose hash matches a file that is not safetensors at all.
    run.save_checkpoint(&sample(6)).unwrap();
    let json_path = run.path.join("checkpoint.json");
    let mut doc: Value = serde_json::from_slice(&fs::read(&json_path).unwrap()).unwrap();
    let junk = b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk".to_vec();
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(&junk).iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    doc["tensors"] = json!({"bytes": junk.len(), "sha256": sha});
    fs::write(&json_path, doc.to_string()).unwrap();
    fs::write(&st, &junk).unwrap();
    fs::remove_file(run.path.join("checkpoint.prev.json")).ok();
    fs::remove_file(run.path.join("checkpoint.prev.safetensors")).ok();
    let err = run.load_checkpoint().unwrap_err();
    assert!(assert_code(err, "ssl::run::corrupt").contains("safetensors"));
}

#[test]
fn default_name_is_objective_and_utc_time() {
    assert_eq!(utc_timestamp(0), "19700101-000000");
    assert_eq!(utc_timestamp(951_782_400), "20000229-000000"); // leap day of a leap century
    assert_eq!(utc_timestamp(1_709_251_199), "20240229-235959");
    assert_eq!(utc_timestamp(4_102_444_800), "21000101-000000");
    assert_eq!(utc_timestamp(1_234_567_890), "20090213-233130");
    let name = default_name("simclr");
    let stamp = name.strip_prefix("simclr-").unwrap();
    assert_eq!(stamp.len(), 15);
    assert!(stamp.chars().enumerate().all(|(i, c)| if i == 8 { c == '-' } else { c.is_ascii_digit() }), "{name}");
}

fn synthetic_metrics(with_loss: bool) -> Vec<Record> {
    let mut records = vec![Record::Baseline(Baseline {
        step: 0,
        raw_pixel_knn: 0.62,
        random_init_knn: 0.41,
        raw_pixel_linear: Some(0.8),
        random_init_linear: Some(0.7),
    })];
    for i in 0..30 {
        let mut r = step_record(i);
        r.loss = if !with_loss {
            None
        } else if i == 7 {
            Some(f64::NAN)
        } else {
            Some(5.0 - 0.1 * i as f64)
        };
        records.push(Record::Step(r));
        if i % 10 == 9 {
            records.push(Record::Eval(EvalRecord { epoch: i / 10 + 1, step: i + 1, knn_top1: 0.6 + 0.02 * i as f64 }));
        }
    }
    // Non-finite values are skipped too.
    let mut last = step_record(30);
    last.pos_sim = f64::NAN;
    last.loss = with_loss.then_some(f64::INFINITY);
    records.push(Record::Step(last));
    records
}

#[test]
fn plots_are_written_as_svg() {
    let root = TempRoot::new("plot");
    let written = plot_metrics(&synthetic_metrics(true), &root.0).unwrap();
    let names: Vec<String> = written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["loss.svg", "knn.svg", "zstd.svg", "similarity.svg"]);
    for p in &written {
        let svg = fs::read_to_string(p).unwrap();
        assert!(svg.contains("<svg"), "{}", p.display());
        assert!(svg.contains("<polyline") || svg.contains("<path"), "{}", p.display());
        assert!(svg.contains("<text"), "{}", p.display());
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{}", p.display());
    }
    let zstd = fs::read_to_string(root.0.join("zstd.svg")).unwrap();
    assert!(zstd.contains("healthy"), "the 1/sqrt(D) line is labelled");
}

#[test]
fn absent_fields_produce_no_plot() {
    let root = TempRoot::new("noloss");
    let written = plot_metrics(&synthetic_metrics(false), &root.0).unwrap();
    assert!(!root.0.join("loss.svg").exists());
    assert_eq!(written.len(), 3);
    assert!(plot_metrics(&[], &root.0).unwrap().is_empty());
    // One point is still a plot.
    let mut only = step_record(3);
    (only.pos_sim, only.z_std_online, only.z_std_target, only.z_std_healthy) = (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    let one = plot_metrics(&[Record::Step(only)], &root.0.join("one")).unwrap();
    assert_eq!(one.len(), 1);
    assert!(fs::read_to_string(&one[0]).unwrap().contains("<circle"));
}

#[test]
fn run_dir_plot_reads_its_metrics() {
    let root = TempRoot::new("runplot");
    let run = new_run(&root);
    for r in synthetic_metrics(true) {
        run.append_metrics(&r).unwrap();
    }
    let written = run.plot().unwrap();
    assert_eq!(written.len(), 4);
    assert!(written.iter().all(|p| p.parent() == Some(run.path.as_path()) && p.is_file()));
}

#[test]
fn a_checkpoint_holding_an_infinity_is_skipped_and_the_skip_reported() {
    let root = TempRoot::new("poisoned");
    let run = new_run(&root);
    run.save_checkpoint(&sample(10)).unwrap();
    let mut poisoned = sample(20);
    poisoned.buffers.insert("scalar".into(), Tensor::new(f32::INFINITY, &Device::Cpu).unwrap());
    run.save_checkpoint(&poisoned).unwrap();
    let loaded = run.load_checkpoint().unwrap().unwrap();
    assert_same(&sample(10), &loaded.checkpoint);
    assert!(loaded.skipped.join(" ").contains("`buffer.scalar` holds a NaN or infinity"), "{:?}", loaded.skipped);
    let warning = loaded.fallback_warning().unwrap();
    assert_eq!(warning.code.as_str(), "ssl::run::fallback");
    assert!(warning.message.contains("step 10"), "{}", warning.message);
}

#[test]
fn a_checkpoint_of_another_format_version_is_a_format_error() {
    let root = TempRoot::new("format");
    let run = new_run(&root);
    run.save_checkpoint(&sample(3)).unwrap();
    let json = run.path.join("checkpoint.json");
    let text = fs::read_to_string(&json).unwrap().replace("ssl-lang checkpoint 2", "ssl-lang checkpoint 1");
    fs::write(&json, text).unwrap();
    assert_code(run.load_checkpoint().unwrap_err(), "ssl::run::format");
}

#[test]
fn resume_differences_name_each_field_and_accept_configs_without_a_data_hash() {
    let was = config("simclr");
    assert!(was.differences(&was, false).is_empty());
    let hashed = |sha: &str| RunConfig { data_sha256: sha.into(), ..config("simclr") };
    // A run of an earlier version has no data hash: its data description is compared instead.
    assert!(was.differences(&hashed("ab"), false).is_empty());
    assert_eq!(hashed("ab").differences(&hashed("cd"), false), ["the data differs (other files, or another --data)"]);
    let batch = RunConfig { recipe: json!({"batch": 128, "lr": 0.06}), ..config("simclr") };
    assert_eq!(was.differences(&batch, true), ["batch: 256 in the run, 128 now"]);
    let epochs = RunConfig { recipe: json!({"batch": 256, "lr": 0.06, "epochs": 3}), ..config("simclr") };
    assert!(was.differences(&epochs, true).is_empty());
    assert_eq!(was.differences(&epochs, false), ["epochs: absent in the run, 3 now (allowed with --override)"]);
    assert_eq!(was.identity_sha256(), epochs.identity_sha256(), "epochs are not part of the identity");
    assert_ne!(was.identity_sha256(), batch.identity_sha256());
}

#[test]
fn a_lock_file_replaced_by_a_fifo_is_an_error_not_a_hang() {
    let root = TempRoot::new("lockfifo");
    let run = new_run(&root);
    fs::remove_file(run.path.join(".lock")).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(run.path.join(".lock")).status().unwrap().success());
    assert_code(run.lock().unwrap_err(), "ssl::run::corrupt");
}
