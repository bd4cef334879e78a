//! The run directory `runs/NAME/`: `config.json`, `metrics.jsonl`, the checkpoint and the plots.
//!
//! Everything here is written so that a crash or Ctrl-C at any instant leaves a directory that `--resume` can
//! continue from: whole files are replaced atomically (temp file, fsync, rename), the metrics log is append-only and a
//! torn last line is ignored on reading, and the checkpoint keeps its predecessor until the new one is complete. The
//! checkpoint's JSON names the SHA-256 and size of its tensor file, so a torn or mismatched pair is detected on load
//! and the previous checkpoint is used instead (and reported). The checkpoint's own metadata (step, epoch, the
//! hash of the run's identity) lives in the tensor file's header, under that hash. A training holds an OS lock on
//! the directory (`.lock`) for as long as it writes there, so two processes never write one run; a lock left by a
//! process that died is released by the OS and reported by the next one. Bad files are coded errors, never panics.

use super::checkpoint::Checkpoint;
use super::records::Record;
use crate::error::{Error, ErrorCode};
use crate::files::ReadError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The run's configuration (recipe, objective, overrides), written once when the run starts.
pub const CONFIG_FILE: &str = "config.json";
/// One JSON object per line: step records, evaluation records, baselines.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The latest checkpoint's tensors.
pub const CHECKPOINT_TENSORS: &str = "checkpoint.safetensors";
/// The latest checkpoint's metadata, naming its tensor file's size and SHA-256.
pub const CHECKPOINT_META: &str = "checkpoint.json";
/// The previous checkpoint's tensors, kept until the next checkpoint is complete.
pub const PREV_CHECKPOINT_TENSORS: &str = "checkpoint.prev.safetensors";
/// The previous checkpoint's metadata.
pub const PREV_CHECKPOINT_META: &str = "checkpoint.prev.json";
/// The lock a training holds on its run directory; it names the holder's process id while held.
pub const LOCK_FILE: &str = ".lock";
/// The `format` field of `checkpoint.json`, so a future layout change is detected instead of misread.
pub const CHECKPOINT_FORMAT: &str = "ssl-lang checkpoint 2";
/// Recipe fields that `--resume --override` may change: how long the run goes and how it is measured, not what the
/// steps so far computed.
pub const RESUMABLE_FIELDS: &[&str] = &["epochs", "eval"];

/// What `config.json` records: how the run was started, so `--resume` and `eval` rebuild the same recipe and model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The ssl-lang version that started the run.
    pub version: String,
    /// The objective trained.
    pub objective: String,
    /// The whole source file.
    pub source: String,
    /// The recipe after overrides, as data (for reading; the source and overrides rebuild it).
    pub recipe: Value,
    /// The recipe after overrides, in the language's syntax.
    pub recipe_text: String,
    /// The `--set` overrides, as `key = value`.
    pub overrides: Vec<String>,
    /// `--limit`: only the first this-many training and test images.
    pub limit: Option<usize>,
    /// The objective's param values.
    pub params: std::collections::BTreeMap<String, f64>,
    /// The seed.
    pub seed: u64,
    /// The gradient backend.
    pub backend: String,
    /// Where the data came from.
    pub data: String,
    /// Training images used.
    pub train_images: usize,
    /// Test images used.
    pub test_images: usize,
    /// CPU threads.
    pub threads: usize,
    /// SHA-256 of the data's images and labels (`Dataset::fingerprint`); empty in runs of earlier versions.
    #[serde(default)]
    pub data_sha256: String,
}

impl RunConfig {
    /// What identifies the run's computation, field by field: the objective and its source, its params, the data,
    /// the seed, the backend and every recipe field but [`RESUMABLE_FIELDS`] — not the version, the thread count or
    /// the text forms. A resume must match it, and every checkpoint records its hash.
    fn identity(&self, data_hash: bool) -> BTreeMap<String, Value> {
        let mut id = BTreeMap::new();
        id.insert("objective".into(), Value::from(self.objective.clone()));
        id.insert("source".into(), Value::from(self.source.clone()));
        for (name, value) in &self.params {
            id.insert(format!("{}.{name}", self.objective), Value::from(*value));
        }
        if let Value::Object(fields) = &self.recipe {
            for (name, value) in fields.iter().filter(|(name, _)| !RESUMABLE_FIELDS.contains(&name.as_str())) {
                id.insert(name.clone(), value.clone());
            }
        }
        id.insert("--limit".into(), serde_json::to_value(self.limit).expect("an Option<usize> serialises"));
        id.insert("--backend".into(), Value::from(self.backend.clone()));
        // Runs of earlier versions have no data hash: there the data description stands in for it.
        let data = if data_hash { &self.data_sha256 } else { &self.data };
        id.insert(DATA_IDENTITY.into(), Value::from(data.clone()));
        id.insert("training images".into(), Value::from(self.train_images));
        id.insert("test images".into(), Value::from(self.test_images));
        id
    }

    /// SHA-256 of [`RunConfig::identity`], written into every checkpoint so that one from another run is refused.
    pub fn identity_sha256(&self) -> String {
        let text = serde_json::to_string(&self.identity(!self.data_sha256.is_empty())).expect("JSON values serialise");
        crate::files::hex(&Sha256::digest(text.as_bytes()))
    }

    /// How `now` (the configuration a resume would run) differs from this one (the run's): one line per field, with
    /// both values; empty when the resume computes what the run computed. With `allow_resumable`, changes to
    /// [`RESUMABLE_FIELDS`] are allowed (they are not part of the identity); without it they are listed too.
    pub fn differences(&self, now: &RunConfig, allow_resumable: bool) -> Vec<String> {
        let data_hash = !self.data_sha256.is_empty() && !now.data_sha256.is_empty();
        let (was, is) = (self.identity(data_hash), now.identity(data_hash));
        let mut out = Vec::new();
        let names: std::collections::BTreeSet<&String> = was.keys().chain(is.keys()).collect();
        for name in names {
            let (a, b) = (was.get(name), is.get(name));
            if a == b {
                continue;
            }
            out.push(match name.as_str() {
                "source" => "the objective file's text differs from the one the run started with".to_string(),
                DATA_IDENTITY => "the data differs (other files, or another --data)".to_string(),
                _ => format!("{name}: {} in the run, {} now", show(a), show(b)),
            });
        }
        if !allow_resumable {
            for field in RESUMABLE_FIELDS {
                let (a, b) = (self.recipe.get(field), now.recipe.get(field));
                if a != b {
                    out.push(format!("{field}: {} in the run, {} now (allowed with --override)", show(a), show(b)));
                }
            }
        }
        out
    }
}

/// The identity's entry for the data (not a recipe field's name: the recipe's `data` names where it came from).
const DATA_IDENTITY: &str = "data (images and labels)";

fn show(v: Option<&Value>) -> String {
    v.map_or_else(|| "absent".to_string(), Value::to_string)
}

/// Why reading or writing a run directory failed; the message says what and where, and `Error::from` adds its code and help.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `create` found a run already in the directory: reusing it would mix two runs' metrics and checkpoints.
    #[error("`{path}` already holds a run ({found})")]
    Exists {
        /// The run directory.
        path: String,
        /// The file that shows a run is there.
        found: String,
    },
    /// `open` or `read_config` found no run where one was expected.
    #[error("{what}")]
    Missing {
        /// What is missing, with its path.
        what: String,
        /// What to do.
        help: String,
    },
    /// Another process holds the run directory's lock: it is training this run now.
    #[error("`{path}` is being written by another ssl-lang process ({holder})")]
    Busy {
        /// The run directory.
        path: String,
        /// What the lock file says of its holder.
        holder: String,
    },
    /// A run name that is not a single directory name.
    #[error("`{name}` is not a valid run name: {reason}")]
    Name {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The operating system refused a read or write.
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        /// What was being done (`write`, `read`, `rename ... to`).
        action: String,
        /// The file or directory.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A file of the run exists but cannot be understood.
    #[error("`{path}`: {detail}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong, with a line number where there is one.
        detail: String,
        /// What to do.
        help: String,
    },
    /// A file of the run written by another version of ssl-lang.
    #[error("`{path}`: {detail}")]
    Format {
        /// The file.
        path: String,
        /// What does not fit, with a line number where there is one.
        detail: String,
    },
    /// The tensors could not be serialised to safetensors.
    #[error("cannot write the checkpoint tensors to `{path}`: {reason}")]
    Tensor {
        /// The file being written.
        path: String,
        /// The underlying error.
        reason: String,
    },
    /// A plot could not be rendered.
    #[error("cannot render `{path}`: {reason}")]
    Plot {
        /// The plot file.
        path: String,
        /// The underlying error.
        reason: String,
    },
}

impl RunError {
    pub(crate) fn io(action: &str, path: &Path, source: io::Error) -> Self {
        RunError::Io { action: action.into(), path: path.display().to_string(), source }
    }
}

/// A run directory: where one training run's configuration, metrics, checkpoint and plots live.
#[derive(Clone, Debug)]
pub struct RunDir {
    /// The directory, `runs_root/NAME`.
    pub path: PathBuf,
}

impl RunDir {
    /// Creates `runs_root/name` (and `runs_root`) for a new run and locks it. Errs with `ssl::run::busy` if another
    /// process holds it and with `ssl::run::exists` if it already holds a run — a `config.json`, a `metrics.jsonl`
    /// or a checkpoint —, checked under the lock, so two runs started at once under one name never both start; an
    /// empty or unrelated existing directory is reused.
    pub fn create(runs_root: &Path, name: &str) -> Result<(RunDir, RunLock), RunError> {
        validate_name(name)?;
        let run = RunDir { path: runs_root.join(name) };
        fs::create_dir_all(&run.path).map_err(|e| RunError::io("create directory", &run.path, e))?;
        let lock = run.lock()?;
        for file in [CONFIG_FILE, METRICS_FILE, CHECKPOINT_META, CHECKPOINT_TENSORS] {
            if run.file(file).exists() {
                return Err(RunError::Exists { path: run.path.display().to_string(), found: file.into() });
            }
        }
        Ok((run, lock))
    }

    /// Takes the run's write lock (an OS file lock on `.lock`, released when the [`RunLock`] is dropped or the
    /// process dies). `ssl::run::busy` if another process holds it.
    pub fn lock(&self) -> Result<RunLock, RunError> {
        let path = self.file(LOCK_FILE);
        let mut file = open_for_update(&path)?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(RunError::Corrupt {
                path: path.display().to_string(),
                detail: "it is not a regular file".into(),
                help: "ssl-lang keeps its lock in a plain file here: remove what took its place".into(),
            });
        }
        // The lock file holds one short line; a longer one was not written by ssl-lang and is not read whole.
        let mut previous = String::new();
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let _ = (&file).take(256).read_to_string(&mut previous);
                let holder = if previous.trim().is_empty() { "starting".to_string() } else { previous.trim().into() };
                return Err(RunError::Busy { path: self.path.display().to_string(), holder });
            }
            Err(TryLockError::Error(e)) => return Err(RunError::io("lock", &path, e)),
        }
        let _ = (&file).take(256).read_to_string(&mut previous);
        let holder = format!("pid {}", std::process::id());
        file.set_len(0).map_err(|e| RunError::io("truncate", &path, e))?;
        file.seek(SeekFrom::Start(0)).map_err(|e| RunError::io("seek in", &path, e))?;
        file.write_all(format!("{holder}\n").as_bytes()).map_err(|e| RunError::io("write", &path, e))?;
        let unclean = Some(previous.trim().to_string()).filter(|p| !p.is_empty());
        Ok(RunLock { file, unclean })
    }

    /// Opens an existing run directory (one that contains `config.json`), or, if `path` is a file inside one (a
    /// checkpoint, say), its directory — so commands accept whichever the user has at hand.
    pub fn open(path: &Path) -> Result<RunDir, RunError> {
        let meta = fs::metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => RunError::Missing {
                what: format!("there is no run at `{}`", path.display()),
                help: "give the run directory (`runs/NAME`) or a checkpoint inside it; `ls runs/` lists the runs"
                    .into(),
            },
            _ => RunError::io("open", path, e),
        })?;
        let dir = if meta.is_dir() {
            path.to_path_buf()
        } else {
            match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            }
        };
        let run = RunDir { path: dir };
        if !run.file(CONFIG_FILE).is_file() {
            return Err(RunError::Missing {
                what: format!("`{}` is not a run directory (it has no {CONFIG_FILE})", run.path.display()),
                help: "give a directory that `ssl-lang train` wrote (`runs/NAME`), or a checkpoint inside one".into(),
            });
        }
        Ok(run)
    }

    /// The path of a file in the run directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `config.json` atomically (temp file, fsync, rename), so it is either the old or the new one.
    pub fn write_config(&self, config: &RunConfig) -> Result<(), RunError> {
        let mut text = serde_json::to_string_pretty(config).expect("a RunConfig always serialises");
        text.push('\n');
        write_atomic(&self.file(CONFIG_FILE), text.as_bytes())?;
        sync_dir(&self.path);
        Ok(())
    }

    /// Reads `config.json`, so `--resume` and `eval` rebuild the run's recipe and model.
    pub fn read_config(&self) -> Result<RunConfig, RunError> {
        let path = self.file(CONFIG_FILE);
        let bytes = read_run_file(&path)?.ok_or_else(|| RunError::Missing {
            what: format!("`{}` has no {CONFIG_FILE}", self.path.display()),
            help: "the run was never started or its configuration was deleted; start a new run".into(),
        })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| RunError::Corrupt {
            path: path.display().to_string(),
            detail: format!("not valid JSON: {e}"),
            help: "restore the file or start a new run; the recipe is also in the .ssl file it came from".into(),
        })?;
        serde_json::from_value(value).map_err(|e| RunError::Format {
            path: path.display().to_string(),
            detail: format!("not a run configuration: {e}"),
        })
    }

    /// Appends one JSON object as a line to `metrics.jsonl` and flushes it, so the log survives a crash up to the
    /// last record. A torn last line left by an earlier crash is cut off first, so it never becomes a corrupt
    /// middle line.
    pub fn append_metrics(&self, record: &Record) -> Result<(), RunError> {
        let path = self.file(METRICS_FILE);
        let mut file = open_for_update(&path)?;
        repair_tail(&mut file, &path)?;
        let mut line = serde_json::to_string(record).expect("a Record always serialises");
        line.push('\n');
        file.seek(SeekFrom::End(0)).map_err(|e| RunError::io("seek in", &path, e))?;
        file.write_all(line.as_bytes()).map_err(|e| RunError::io("append to", &path, e))?;
        file.flush().map_err(|e| RunError::io("flush", &path, e))?;
        Ok(())
    }

    /// Every record of `metrics.jsonl`, in order (none if the file does not exist yet). A torn last line (no final
    /// newline and not valid JSON: a crash mid-write) is ignored; any other bad line is `ssl::run::corrupt` with
    /// its line number. Blank lines are skipped.
    pub fn read_metrics(&self) -> Result<Vec<Record>, RunError> {
        let path = self.file(METRICS_FILE);
        let Some(bytes) = read_run_file(&path)? else { return Ok(Vec::new()) };
        Ok(parse_metrics(&bytes, &path)?.0)
    }

    /// Rewrites `metrics.jsonl` (atomically) keeping only the records up to `step`, so that after `--resume` from
    /// the checkpoint at `step` the log has no records from the lost steps. The lines kept are kept byte for byte.
    pub fn truncate_metrics(&self, step: usize) -> Result<(), RunError> {
        let path = self.file(METRICS_FILE);
        let Some(bytes) = read_run_file(&path)? else { return Ok(()) };
        let (records, good) = parse_metrics(&bytes, &path)?;
        let mut kept = Vec::with_capacity(good);
        let lines = bytes[..good].split_inclusive(|&b| b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace));
        for (record, line) in records.iter().zip(lines) {
            if record.step() <= step {
                kept.extend_from_slice(line);
                if !line.ends_with(b"\n") {
                    kept.push(b'\n');
                }
            }
        }
        write_atomic(&path, &kept)?;
        sync_dir(&self.path);
        Ok(())
    }

    /// Writes the checkpoint: `checkpoint.safetensors` (all tensors, under the names given, and the meta in its
    /// header) and `checkpoint.json` (`{"format", "tensors": {"bytes", "sha256"}, "meta"}`, the meta a copy for
    /// people), each through a temp file and fsync, tensors first. A good current checkpoint is first renamed to
    /// `checkpoint.prev.*`, and only then replaced, so a crash at any point leaves at least one complete checkpoint
    /// that `load_checkpoint` finds; a failed write (a full disk) removes its temp files.
    pub fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), RunError> {
        let st_tmp = self.file(&format!("{CHECKPOINT_TENSORS}.tmp"));
        let json_tmp = self.file(&format!("{CHECKPOINT_META}.tmp"));
        let bytes =
            checkpoint.to_bytes().map_err(|reason| RunError::Tensor { path: st_tmp.display().to_string(), reason })?;
        let doc = serde_json::json!({
            "format": CHECKPOINT_FORMAT,
            "tensors": {"bytes": bytes.len(), "sha256": sha256_hex(&bytes)},
            "meta": checkpoint.meta,
        });
        let mut text = serde_json::to_string_pretty(&doc).expect("a serde_json::Value always serialises");
        text.push('\n');
        let written = write_file_synced(&st_tmp, &bytes).and_then(|()| write_file_synced(&json_tmp, text.as_bytes()));
        drop(bytes);
        if let Err(e) = written {
            let _ = fs::remove_file(&st_tmp);
            let _ = fs::remove_file(&json_tmp);
            return Err(e);
        }

        // Keep the current checkpoint as the previous one, but only if it is good: a torn current one must not
        // displace a good previous one.
        let (cur_json, cur_st) = (self.file(CHECKPOINT_META), self.file(CHECKPOINT_TENSORS));
        if self.verify_pair(&cur_json, &cur_st) {
            rename(&cur_st, &self.file(PREV_CHECKPOINT_TENSORS))?;
            rename(&cur_json, &self.file(PREV_CHECKPOINT_META))?;
        }
        rename(&st_tmp, &cur_st)?;
        rename(&json_tmp, &cur_json)?;
        sync_dir(&self.path);
        Ok(())
    }

    /// The latest good checkpoint (tensors on the CPU), or `None` if the run has none yet. A checkpoint whose
    /// tensor file is torn, does not match the size and SHA-256 its JSON names, or holds a NaN or infinity is
    /// skipped for the previous one, and [`Loaded::skipped`] says why; if checkpoint files exist but none is good,
    /// the error is `ssl::run::corrupt`.
    pub fn load_checkpoint(&self) -> Result<Option<Loaded>, RunError> {
        let jsons = [self.file(CHECKPOINT_META), self.file(PREV_CHECKPOINT_META)];
        let tensor_files = [self.file(CHECKPOINT_TENSORS), self.file(PREV_CHECKPOINT_TENSORS)];
        if !jsons.iter().chain(&tensor_files).any(|p| p.exists()) {
            return Ok(None);
        }
        let mut problems = Vec::new();
        let mut hashes: HashMap<usize, Option<(usize, String)>> = HashMap::new();
        for (j, json_path) in jsons.iter().enumerate() {
            let doc = match read_checkpoint_json(json_path) {
                Ok(Some(doc)) => doc,
                Ok(None) => continue,
                Err(JsonProblem::Unusable(detail)) => {
                    problems.push(format!("{}: {detail}", file_name(json_path)));
                    continue;
                }
                Err(JsonProblem::OtherVersion(detail)) => {
                    return Err(RunError::Format { path: json_path.display().to_string(), detail })
                }
            };
            let (Some(want_len), Some(want_sha)) = tensor_identity(&doc) else { continue };
            // The same generation's tensor file first; the other covers a crash between the two renames of a save.
            let order = if j == 0 { [0, 1] } else { [1, 0] };
            let matched = order.into_iter().find(|&t| {
                let id = hashes.entry(t).or_insert_with(|| hash_file(&tensor_files[t]));
                id.as_ref().is_some_and(|(len, sha)| *len == want_len && *sha == want_sha)
            });
            let Some(t) = matched else {
                problems.push(format!(
                    "{}: no tensor file matches it ({})",
                    file_name(json_path),
                    describe_tensor_files(&tensor_files, &hashes, want_len)
                ));
                continue;
            };
            let loaded = crate::files::read_bounded(&tensor_files[t], crate::files::TENSOR_LIMIT)
                .map_err(|e| format!("it {e}"))
                .and_then(|bytes| {
                    if sha256_hex(&bytes) != want_sha {
                        return Err("it changed while being read".into());
                    }
                    Checkpoint::from_bytes(&bytes)
                });
            match loaded {
                Ok(checkpoint) => {
                    let file = tensor_files[t].clone();
                    return Ok(Some(Loaded { checkpoint, file, sha256: want_sha, skipped: problems }));
                }
                Err(detail) => problems.push(format!("{}: {detail}", file_name(&tensor_files[t]))),
            }
        }
        if problems.is_empty() {
            problems.push(format!("tensor files without a {CHECKPOINT_META} to describe them"));
        }
        Err(RunError::Corrupt {
            path: self.file(CHECKPOINT_META).display().to_string(),
            detail: format!("no good checkpoint: {}", problems.join("; ")),
            help: format!(
                "the checkpoint was torn (a crash or full disk while writing) and there is no good previous one: \
                 remove the checkpoint files (`rm {}/checkpoint*`) and --resume again to restart this run from step 0",
                self.path.display()
            ),
        })
    }

    /// Renders the plots of `metrics.jsonl` into the run directory (see [`super::plot`]); returns the files written.
    pub fn plot(&self) -> Result<Vec<PathBuf>, RunError> {
        let records = self.read_metrics()?;
        super::plot::plot_metrics(&records, &self.path)
    }

    /// Whether `json` is a readable checkpoint JSON whose size and hash match `tensors`.
    fn verify_pair(&self, json: &Path, tensors: &Path) -> bool {
        let Ok(Some(doc)) = read_checkpoint_json(json) else { return false };
        let (len, sha) = tensor_identity(&doc);
        match hash_file(tensors) {
            Some((l, s)) => Some(l) == len && sha.as_deref() == Some(s.as_str()),
            None => false,
        }
    }
}

/// Exclusive write access to a run directory, held for as long as a training writes it. Dropping it empties the
/// lock file (a clean end) and releases the OS lock; a process that dies releases the OS lock too, but leaves its
/// id in the file, which the next holder reports as [`RunLock::unclean`].
#[derive(Debug)]
pub struct RunLock {
    file: File,
    /// What the lock file said when the lock was taken: the previous holder, if it did not end cleanly.
    pub unclean: Option<String>,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

impl RunLock {
    /// `ssl::run::unclean` when the previous holder of `run`'s lock died without releasing it (killed, crashed).
    pub fn unclean_warning(&self, run: &RunDir) -> Option<Error> {
        let previous = self.unclean.as_ref()?;
        Some(
            Error::new(
                ErrorCode::RunUnclean,
                format!("the last training of {} ({previous}) ended without releasing its lock", run.path.display()),
            )
            .help("it was killed or crashed; its last complete checkpoint is what a resume continues from"),
        )
    }
}

/// A checkpoint read back, and what was skipped on the way to it.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// The tensor file it came from.
    pub file: PathBuf,
    /// That file's SHA-256: the checkpoint's identity (`eval`'s feature cache is keyed by it).
    pub sha256: String,
    /// Why newer checkpoint files were not used (empty when the latest one was good): to be reported.
    pub skipped: Vec<String>,
}

impl Loaded {
    /// `ssl::run::fallback` when a newer checkpoint was damaged and an older one is used instead.
    pub fn fallback_warning(&self) -> Option<Error> {
        if self.skipped.is_empty() {
            return None;
        }
        Some(
            Error::new(
                ErrorCode::RunFallback,
                format!(
                    "the latest checkpoint is damaged ({}); using {} (step {})",
                    self.skipped.join("; "),
                    self.file.display(),
                    self.checkpoint.meta.step
                ),
            )
            .help("a resume trains the steps since that checkpoint again; nothing else is lost"),
        )
    }
}

/// A default run name, `<objective>-<YYYYmmdd-HHMMSS>` in UTC, so runs sort by start time without a date crate.
pub fn default_name(objective: &str) -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{objective}-{}", utc_timestamp(secs))
}

/// Seconds since the Unix epoch as `YYYYmmdd-HHMMSS` in UTC (the proleptic Gregorian calendar), for run names.
pub fn utc_timestamp(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rem / 3_600, rem % 3_600 / 60, rem % 60)
}

/// A run name must be one plain directory name; the sweep checks its own name the same way.
pub fn validate_name(name: &str) -> Result<(), RunError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("it names the current or parent directory")
    } else if name.contains(['/', '\\']) {
        Some("it contains a path separator")
    } else if name.chars().any(char::is_control) {
        Some("it contains a control character")
    } else {
        None
    };
    match reason {
        Some(r) => Err(RunError::Name { name: name.escape_debug().to_string(), reason: r.into() }),
        None => Ok(()),
    }
}

/// Parses metrics bytes; returns the records and the byte length of the good prefix (everything but a torn tail).
fn parse_metrics(bytes: &[u8], path: &Path) -> Result<(Vec<Record>, usize), RunError> {
    let mut records = Vec::new();
    let mut start = 0;
    let mut line_no = 0;
    while start < bytes.len() {
        line_no += 1;
        let (end, terminated) = match bytes[start..].iter().position(|&b| b == b'\n') {
            Some(i) => (start + i, true),
            None => (bytes.len(), false),
        };
        let line = &bytes[start..end];
        if !line.iter().all(u8::is_ascii_whitespace) {
            match serde_json::from_slice::<Value>(line) {
                Ok(v) if v.is_object() => records.push(serde_json::from_value(v).map_err(|e| RunError::Format {
                    path: path.display().to_string(),
                    detail: format!("line {line_no} is not a metrics record of this version: {e}"),
                })?),
                // A last line without its newline that does not parse: a write cut short by a crash.
                _ if !terminated => return Ok((records, start)),
                Ok(_) => return Err(corrupt_line(path, line_no, "is not a JSON object".into())),
                Err(e) => return Err(corrupt_line(path, line_no, format!("is not valid JSON ({e})"))),
            }
        }
        start = if terminated { end + 1 } else { end };
    }
    Ok((records, bytes.len()))
}

fn corrupt_line(path: &Path, line: usize, what: String) -> RunError {
    RunError::Corrupt {
        path: path.display().to_string(),
        detail: format!("line {line} {what}"),
        help: format!("fix or delete line {line} (each line must be one JSON object); the checkpoint is unaffected"),
    }
}

/// Makes the file end at a line boundary before an append: a complete last line without its newline gets one, a
/// torn one is cut off.
fn repair_tail(file: &mut File, path: &Path) -> Result<(), RunError> {
    let len = file.metadata().map_err(|e| RunError::io("stat", path, e))?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8];
    file.seek(SeekFrom::Start(len - 1)).map_err(|e| RunError::io("seek in", path, e))?;
    file.read_exact(&mut last).map_err(|e| RunError::io("read", path, e))?;
    if last[0] == b'\n' {
        return Ok(());
    }
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).map_err(|e| RunError::io("seek in", path, e))?;
    file.read_to_end(&mut bytes).map_err(|e| RunError::io("read", path, e))?;
    let tail_start = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let tail = &bytes[tail_start..];
    let complete =
        tail.iter().all(u8::is_ascii_whitespace) || serde_json::from_slice::<Value>(tail).is_ok_and(|v| v.is_object());
    if complete {
        file.seek(SeekFrom::End(0)).map_err(|e| RunError::io("seek in", path, e))?;
        file.write_all(b"\n").map_err(|e| RunError::io("append to", path, e))?;
    } else {
        file.set_len(tail_start as u64).map_err(|e| RunError::io("truncate", path, e))?;
    }
    Ok(())
}

/// Opens (creating it if absent) a file of the run directory for reading and writing in place.
fn open_for_update(path: &Path) -> Result<File, RunError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| RunError::io("open", path, e))
}

/// Reads a file of the run directory: `None` if absent; a directory, FIFO or device in its place, or a file over
/// the bound, is `ssl::run::corrupt` (never a hang or a read without end).
fn read_run_file(path: &Path) -> Result<Option<Vec<u8>>, RunError> {
    match crate::files::read_bounded(path, crate::files::TENSOR_LIMIT) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(ReadError::NotFound) => Ok(None),
        Err(ReadError::Io(e)) => Err(RunError::io("read", path, e)),
        Err(e) => Err(RunError::Corrupt {
            path: path.display().to_string(),
            detail: format!("it {e}"),
            help: "ssl-lang wrote a regular file here: remove what took its place".into(),
        }),
    }
}

/// Why a checkpoint JSON cannot be used.
enum JsonProblem {
    /// Damaged or not a checkpoint's: the previous checkpoint may do.
    Unusable(String),
    /// Written by another version of ssl-lang (another `format`): nothing of this run can be read.
    OtherVersion(String),
}

/// Reads and checks a checkpoint JSON: `Ok(None)` if absent.
fn read_checkpoint_json(path: &Path) -> Result<Option<Value>, JsonProblem> {
    let unusable = |e: String| JsonProblem::Unusable(e);
    let Some(bytes) = read_run_file(path).map_err(|e| unusable(e.to_string()))? else { return Ok(None) };
    let doc: Value = serde_json::from_slice(&bytes).map_err(|e| unusable(format!("not valid JSON ({e})")))?;
    match doc.get("format").and_then(Value::as_str) {
        Some(CHECKPOINT_FORMAT) => {}
        Some(other) if other.starts_with("ssl-lang checkpoint ") => {
            return Err(JsonProblem::OtherVersion(format!("format `{other}` is not `{CHECKPOINT_FORMAT}`")))
        }
        Some(other) => return Err(unusable(format!("format `{other}` is not `{CHECKPOINT_FORMAT}`"))),
        None => return Err(unusable("no `format` field".into())),
    }
    if tensor_identity(&doc).0.is_none() || tensor_identity(&doc).1.is_none() {
        return Err(unusable("no `tensors.bytes` and `tensors.sha256`".into()));
    }
    Ok(Some(doc))
}

/// The tensor file size and SHA-256 that a checkpoint JSON names.
fn tensor_identity(doc: &Value) -> (Option<usize>, Option<String>) {
    let t = &doc["tensors"];
    (t["bytes"].as_u64().map(|b| b as usize), t["sha256"].as_str().map(str::to_owned))
}

/// Size and SHA-256 of a file, streamed; `None` if it cannot be read.
fn hash_file(path: &Path) -> Option<(usize, String)> {
    let mut file = File::open(path).ok()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0;
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n;
    }
    Some((len, crate::files::hex(&hasher.finalize())))
}

fn describe_tensor_files(
    files: &[PathBuf; 2],
    hashes: &HashMap<usize, Option<(usize, String)>>,
    want: usize,
) -> String {
    files
        .iter()
        .enumerate()
        .map(|(i, f)| match hashes.get(&i).and_then(Option::as_ref) {
            Some((len, _)) if *len != want => format!("{} has {len} bytes, expected {want}", file_name(f)),
            Some(_) => format!("{} has a different SHA-256", file_name(f)),
            None => format!("{} is absent or unreadable", file_name(f)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn sha256_hex(bytes: &[u8]) -> String {
    crate::files::hex(&Sha256::digest(bytes))
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Replaces `path` with `bytes` atomically: a sibling temp file, fsync, rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = write_file_synced(&tmp, bytes).and_then(|()| rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    let mut file = File::create(path).map_err(|e| RunError::io("create", path, e))?;
    file.write_all(bytes).map_err(|e| RunError::io("write", path, e))?;
    file.sync_all().map_err(|e| RunError::io("fsync", path, e))
}

fn rename(from: &Path, to: &Path) -> Result<(), RunError> {
    fs::rename(from, to).map_err(|e| RunError::Io {
        action: format!("rename `{}` to", from.display()),
        path: to.display().to_string(),
        source: e,
    })
}

/// Makes renames in `dir` durable; best effort, since not every platform can open a directory.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

impl From<RunError> for Error {
    fn from(e: RunError) -> Self {
        let (code, help) = match &e {
            RunError::Exists { .. } => (ErrorCode::RunExists, "choose another name with --name, continue this run with --resume, or delete the directory".to_string()),
            RunError::Missing { help, .. } => (ErrorCode::RunMissing, help.clone()),
            RunError::Busy { .. } => (ErrorCode::RunBusy, "wait for it to finish (or stop it with Ctrl-C: it checkpoints), then --resume; or start another run with a new --name".to_string()),
            RunError::Name { .. } => (ErrorCode::RunName, "use a plain directory name such as `simclr-1` (letters, digits, `-`, `_`, `.`)".to_string()),
            RunError::Io { source, .. } if matches!(source.kind(), io::ErrorKind::StorageFull | io::ErrorKind::FileTooLarge | io::ErrorKind::QuotaExceeded) => (ErrorCode::RunIo, "the disk is full (or a file-size or quota limit was reached): free space (`df -h` shows it), then continue with --resume; the last complete checkpoint is intact and the partial files were removed".to_string()),
            RunError::Io { .. } => (ErrorCode::RunIo, "check that the directory exists and is writable and that the disk is not full".to_string()),
            RunError::Corrupt { help, .. } => (ErrorCode::RunCorrupt, help.clone()),
            RunError::Format { .. } => (ErrorCode::RunFormat, "the run was written by another version of ssl-lang; evaluate or resume it with that version, or start a new run".to_string()),
            RunError::Tensor { .. } => (ErrorCode::Tensor, "a checkpoint tensor could not be serialised: a bug to report, with the command".to_string()),
            RunError::Plot { .. } => (ErrorCode::RunPlot, "the metrics are intact in metrics.jsonl; plot them again with the run's plot command or another tool".to_string()),
        };
        Error::new(code, e.to_string()).help(help)
    }
}
