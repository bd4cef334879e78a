//! `ssl-lang sweep`: a grid of trainings — files × `--grid` values × seeds — run one after another (or `--parallel
//! P` at once, the cores split between them), each a normal run directory under `RUNS/NAME/`, then a table of what
//! they reached. Each cell is `ssl-lang train` in a child process of its own, so that a cell that fails leaves the
//! others running and its log (`RUNS/NAME/logs/CELL.log`) says why. `sweep.json` records every cell's state:
//! a rerun skips the finished cells and resumes the interrupted ones; `--report NAME` rebuilds the table alone.

pub mod grid;
pub mod table;

use super::eval::{evaluate, Protocols};
use super::{Edge, Failure, REJECTED};
use crate::error::{Error, ErrorCode};
use crate::runtime::run::{validate_name, write_atomic, RunDir};
use grid::Cell;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use table::Measured;

/// Everything `sweep` is given on the command line.
#[derive(Clone, Debug)]
pub struct SweepArgs {
    /// The .ssl files.
    pub files: Vec<PathBuf>,
    /// `--grid KEY=V1,V2,...`, in order.
    pub grid: Vec<String>,
    /// `--set KEY=VALUE` for every cell.
    pub set: Vec<String>,
    /// `--seeds`.
    pub seeds: Vec<u64>,
    /// The sweep's directory name under `runs`.
    pub name: String,
    /// `--runs`.
    pub runs: PathBuf,
    /// Cells trained at once.
    pub parallel: usize,
    /// `--max-steps` for every cell.
    pub max_steps: Option<usize>,
    /// `--limit` for every cell.
    pub limit: Option<usize>,
    /// `--data` for every cell.
    pub data: Option<PathBuf>,
    /// `--report`: only rebuild the table from what is on disk.
    pub report_only: bool,
}

/// Where a cell stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    /// Not trained to its end yet.
    Pending,
    /// Trained and evaluated.
    Done,
    /// `train` exited with this status (see the cell's log).
    Failed(Option<i32>),
}

/// One cell and what the sweep knows of it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    cell: Cell,
    status: Status,
    /// Seconds spent training and probing it, over every sweep that worked on it.
    wall_s: f64,
    /// Linear-probe top-1 on its final checkpoint, where the sweep probed it (its run's records have none).
    linear: Option<f64>,
}

/// `sweep.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    /// The `--set` arguments every cell trains with.
    set: Vec<String>,
    cells: Vec<Entry>,
}

const MANIFEST: &str = "sweep.json";

/// Runs the sweep (or, with `report_only`, rebuilds its table); `stop` is the flag the signal handler raises.
pub fn run(args: &SweepArgs, stop: Arc<AtomicBool>, edge: &Edge) -> Result<(), Failure> {
    validate_name(&args.name)?;
    let dir = args.runs.join(&args.name);
    let mut manifest = if args.report_only {
        read_manifest(&dir)?.ok_or_else(|| {
            Error::new(ErrorCode::RunMissing, format!("no sweep in `{}` (no {MANIFEST})", dir.display()))
                .help("run the sweep first: `ssl-lang sweep FILE... --name NAME`; `--runs` says where runs are")
        })?
    } else {
        let axes = args.grid.iter().map(|g| grid::axis(g)).collect::<Result<Vec<_>, _>>()?;
        let cells = grid::cells(&args.files, &axes, &args.seeds);
        let previous = read_manifest(&dir)?;
        let known =
            |c: &Cell| previous.as_ref().and_then(|m| m.cells.iter().find(|e| e.cell == *c && m.set == args.set));
        let cells = cells
            .into_iter()
            .map(|cell| {
                known(&cell).cloned().unwrap_or(Entry { cell, status: Status::Pending, wall_s: 0.0, linear: None })
            })
            .collect();
        Manifest { set: args.set.clone(), cells }
    };
    let mut interrupted = false;
    if !args.report_only {
        std::fs::create_dir_all(dir.join("logs")).map_err(|e| {
            Error::new(ErrorCode::RunIo, format!("cannot create `{}`: {e}", dir.display()))
                .help("give `--runs` a directory you can write to")
        })?;
        write_manifest(&dir, &manifest)?;
        interrupted = train_cells(args, &dir, &mut manifest, &stop, edge)?;
    }
    let measured: Vec<(Cell, Measured)> = manifest
        .cells
        .iter()
        .filter(|e| e.status != Status::Pending)
        .map(|e| (e.cell.clone(), measure(&dir, e)))
        .collect();
    let rows = table::rows(&measured);
    let outputs = [
        ("sweep.md", table::markdown(&rows)),
        ("sweep.csv", table::csv(&rows)),
        ("sweep.svg", table::svg(&rows)),
        ("report.html", table::html(&args.name, &manifest.set, &rows)),
    ];
    for (file, text) in &outputs {
        write_atomic(&dir.join(file), text.as_bytes())?;
    }
    print!("{}", outputs[0].1);
    let pending = manifest.cells.iter().filter(|e| e.status == Status::Pending).count();
    if pending > 0 {
        println!("{pending} cell(s) not finished: run the same command again to resume them");
    }
    println!("table: {0}/sweep.md, {0}/sweep.csv, chart: {0}/sweep.svg, page: {0}/report.html", dir.display());
    let failed: Vec<&Entry> = manifest.cells.iter().filter(|e| matches!(e.status, Status::Failed(_))).collect();
    for e in &failed {
        edge.report(&Error::new(ErrorCode::SweepCell, format!("cell `{}` failed", e.cell.name)).help(format!(
            "its log says why: {}; fix it and run the sweep again (finished cells are kept)",
            log_path(&dir, &e.cell).display()
        )));
    }
    if interrupted {
        Err(Failure::Reported(super::train::INTERRUPTED))
    } else if !failed.is_empty() {
        Err(Failure::Reported(REJECTED))
    } else {
        Ok(())
    }
}

/// Trains every cell not done yet, `args.parallel` at a time; true if a signal stopped the sweep.
fn train_cells(
    args: &SweepArgs,
    dir: &Path,
    manifest: &mut Manifest,
    stop: &AtomicBool,
    edge: &Edge,
) -> Result<bool, Failure> {
    let todo: Vec<usize> = (0..manifest.cells.len()).filter(|&i| manifest.cells[i].status != Status::Done).collect();
    let total = manifest.cells.len();
    let parallel = args.parallel.max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (parallel > 1).then(|| (cores / parallel).max(1));
    let mut queue = todo.into_iter();
    let mut running: Vec<(usize, Child, Instant)> = Vec::new();
    let mut finished = total - queue.len();
    let mut interrupted = false;
    let mut passed_on = false;
    loop {
        if stop.load(Ordering::SeqCst) && !passed_on {
            passed_on = true;
            for (_, child, _) in &running {
                ask_to_stop(child);
            }
        }
        while running.len() < parallel && !stop.load(Ordering::SeqCst) {
            let Some(i) = queue.next() else { break };
            let child = spawn(args, dir, &manifest.cells[i].cell, threads)?;
            println!("{}: training (cell {} of {total})", manifest.cells[i].cell.name, i + 1);
            running.push((i, child, Instant::now()));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut k = 0;
        while k < running.len() {
            let Some(status) = running[k].1.try_wait().map_err(|e| cell_io(running[k].0, e))? else {
                k += 1;
                continue;
            };
            let (i, _, started) = running.swap_remove(k);
            let entry = &mut manifest.cells[i];
            let code = status.code();
            entry.status = match code {
                Some(0) => Status::Done,
                Some(c) if c == i32::from(super::train::INTERRUPTED) => {
                    interrupted = true;
                    Status::Pending
                }
                _ if stop.load(Ordering::SeqCst) => {
                    interrupted = true;
                    Status::Pending
                }
                other => Status::Failed(other),
            };
            // A run that trained to its end probed itself; a `--max-steps` stretch did not, so the sweep does.
            if entry.status == Status::Done && measure(dir, entry).linear.is_none() {
                let probe = evaluate(
                    &dir.join(&entry.cell.name),
                    Protocols { knn: false, linear: true },
                    args.data.as_deref(),
                    "cpu",
                    edge,
                );
                entry.linear = match probe {
                    Ok(e) => e.linear.map(|(r, _)| r.test_accuracy),
                    Err(Failure::Error(e)) => {
                        edge.report(&e);
                        None
                    }
                    Err(Failure::Reported(_)) => None,
                };
            }
            entry.wall_s += started.elapsed().as_secs_f64();
            finished += usize::from(entry.status != Status::Pending);
            let figures = measure(dir, entry);
            let knn = figures.knn.map_or("-".into(), |k| format!("{:.2} %", k * 100.0));
            let linear = figures.linear.map_or("-".into(), |k| format!("{:.2} %", k * 100.0));
            let state = match &entry.status {
                Status::Done => format!("done in {:.0} s, kNN {knn}, linear probe {linear}", entry.wall_s),
                Status::Pending => "stopped; run the sweep again to resume it".into(),
                Status::Failed(code) => format!("failed (exit {code:?}); see {}", log_path(dir, &entry.cell).display()),
            };
            println!("[{finished}/{total} finished] {}: {state}", entry.cell.name);
            write_manifest(dir, manifest)?;
        }
    }
    Ok(interrupted || stop.load(Ordering::SeqCst))
}

fn cell_io(i: usize, e: std::io::Error) -> Error {
    Error::new(ErrorCode::RunIo, format!("cannot wait for cell {i}'s training: {e}"))
        .help("the sweep's own process lost its child; run the sweep again to resume")
}

/// `ssl-lang train` for one cell in a child process, its output appended to the cell's log; `--resume` when its run
/// directory already holds a run. `threads` splits the cores between cells trained at once.
fn spawn(args: &SweepArgs, dir: &Path, cell: &Cell, threads: Option<usize>) -> Result<Child, Error> {
    let exe = own_executable().map_err(|e| {
        Error::new(ErrorCode::RunIo, format!("cannot find the ssl-lang executable: {e}"))
            .help("run the sweep with the ssl-lang binary itself, from a path that still exists")
    })?;
    let log_file = log_path(dir, cell);
    let open = || {
        std::fs::OpenOptions::new().create(true).append(true).open(&log_file).map_err(|e| {
            Error::new(ErrorCode::RunIo, format!("cannot open `{}`: {e}", log_file.display()))
                .help("check that the sweep's directory is writable")
        })
    };
    let mut cmd = Command::new(exe);
    cmd.arg("train").arg(&cell.file).arg("--runs").arg(dir).arg("--name").arg(&cell.name);
    for s in cell.sets(&args.set) {
        cmd.arg("--set").arg(s);
    }
    // A run there already: resume it, unless it stopped before its first checkpoint (nothing to resume from; its
    // directory is kept, moved aside).
    if let Ok(run) = RunDir::open(&dir.join(&cell.name)) {
        match run.load_checkpoint() {
            Ok(None) => set_aside(dir, cell)?,
            _ => {
                cmd.arg("--resume");
            }
        }
    }
    if let Some(n) = args.max_steps {
        cmd.arg("--max-steps").arg(n.to_string());
    }
    if let Some(n) = args.limit {
        cmd.arg("--limit").arg(n.to_string());
    }
    if let Some(d) = &args.data {
        cmd.arg("--data").arg(d);
    }
    if let Some(t) = threads {
        cmd.env("RAYON_NUM_THREADS", t.to_string());
    }
    cmd.stdin(Stdio::null()).stdout(open()?).stderr(open()?);
    #[cfg(unix)]
    std::os::unix::process::CommandExt::arg0(&mut cmd, "ssl-lang");
    own_process_group(&mut cmd);
    cmd.spawn().map_err(|e| {
        Error::new(ErrorCode::RunIo, format!("cannot start training cell `{}`: {e}", cell.name))
            .help("the system refused a new process (too many, or out of memory): try a smaller --parallel")
    })
}

/// The binary this sweep runs, for its cells: on Linux `/proc/self/exe`, which the child execs before it is anything
/// else, so every cell trains with the sweep's own code even when the file was rebuilt or deleted meanwhile (a path
/// would then name another binary, or none: `current_exe` reads "ssl-lang (deleted)"); elsewhere the path.
fn own_executable() -> std::io::Result<PathBuf> {
    let proc_exe = Path::new("/proc/self/exe");
    if cfg!(target_os = "linux") && proc_exe.exists() {
        return Ok(proc_exe.to_path_buf());
    }
    std::env::current_exe()
}

/// Puts a cell in a process group of its own, so that a terminal's Ctrl-C reaches the sweep alone, which passes it
/// on once ([`ask_to_stop`]): a cell that got the signal twice would end at once instead of checkpointing. On Linux
/// the cell is also asked to stop (SIGTERM) when the sweep dies, so no training outlives it: a second Ctrl-C ends
/// the sweep at once and, being the cell's second signal too, the cell with it.
#[cfg(unix)]
fn own_process_group(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    // SAFETY: the closure runs in the forked child before exec and calls only prctl, which is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Elsewhere than Unix the cell shares the sweep's console and gets its signals directly.
#[cfg(not(unix))]
fn own_process_group(_: &mut Command) {}

/// Asks a cell's training to checkpoint and stop, as a signal to the sweep asked it: SIGTERM, which `train` handles.
#[cfg(unix)]
fn ask_to_stop(child: &Child) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else { return };
    // SAFETY: kill only sends a signal; the pid is a child not yet waited for, so it cannot name another process.
    #[allow(unsafe_code)]
    let _ = unsafe { libc::kill(pid, libc::SIGTERM) };
}

/// Elsewhere than Unix the cell got the console's signal itself.
#[cfg(not(unix))]
fn ask_to_stop(_: &Child) {}

/// Moves a cell's run directory that holds no checkpoint to `abandoned/CELL-N`, so that the cell starts afresh
/// without losing what its earlier start wrote.
fn set_aside(dir: &Path, cell: &Cell) -> Result<(), Error> {
    let io = |e: std::io::Error| {
        Error::new(ErrorCode::RunIo, format!("cannot set aside `{}`: {e}", cell.name))
            .help("check that the sweep's directory is writable, or move the cell's directory away yourself")
    };
    let aside = dir.join("abandoned");
    std::fs::create_dir_all(&aside).map_err(io)?;
    let target = (0..).map(|n| aside.join(format!("{}-{n}", cell.name))).find(|p| !p.exists()).expect("a free name");
    std::fs::rename(dir.join(&cell.name), target).map_err(io)
}

fn log_path(dir: &Path, cell: &Cell) -> PathBuf {
    dir.join("logs").join(format!("{}.log", cell.name))
}

/// A cell's figures: its run's records (the sweep's probe where they have none) and the wall time.
fn measure(dir: &Path, e: &Entry) -> Measured {
    let records = RunDir::open(&dir.join(&e.cell.name)).and_then(|r| r.read_metrics()).unwrap_or_default();
    let own = table::from_records(&records);
    Measured { linear: own.linear.or(e.linear), wall_s: e.wall_s, failed: matches!(e.status, Status::Failed(_)), ..own }
}

fn read_manifest(dir: &Path) -> Result<Option<Manifest>, Error> {
    let path = dir.join(MANIFEST);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = crate::files::read_bounded(&path, crate::files::SOURCE_LIMIT).map_err(|e| {
        Error::new(ErrorCode::RunIo, format!("cannot read `{}`: it {e}", path.display()))
            .help("check the permissions of the sweep's directory")
    })?;
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        Error::new(ErrorCode::RunCorrupt, format!("`{}` is not a sweep manifest: {e}", path.display()))
            .help("move it away to start the sweep afresh; the cells' run directories stay usable")
    })
}

fn write_manifest(dir: &Path, m: &Manifest) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(m).expect("a manifest serialises");
    Ok(write_atomic(&dir.join(MANIFEST), text.as_bytes())?)
}
