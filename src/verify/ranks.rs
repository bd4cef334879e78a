//! `verify --ranks P`: the per-rank plan (see [`crate::ir::distribute`]) on P in-process ranks against one process
//! on the global batch. Each rank takes its rows of two consecutive steps' features (so that fifos pushed by the
//! first are read by the second, and are longer than the batch) and must produce its rows of the single-process
//! gradients and loss, and the same states, at every step; in the loss form, its rows of ∂total and the same total.

use super::{
    case_rng, check_sizes, error_against, prepared_state, random_features, random_matrix, relative_error, Row, Worst,
};
use crate::backend::Backend;
use crate::check::typed::Objective;
use crate::collective::memory::MemoryRank;
use crate::collective::Comm;
use crate::ir::distribute::Sets;
use crate::plan::{Features, Gradients, ObjectiveState, Plan};
use candle_core::{DType, Result, Tensor};

/// Rows per rank and the dimension of the cases (the global batch is P times the rows).
pub const RANK_SIZES: &[(usize, usize)] = &[(1, 5), (3, 3), (8, 17)];

/// The tolerance of the per-rank plan against one process in f64 (relative to max(|exact|, 1)).
pub const RANKS_TOLERANCE_F64: f64 = 1e-10;

/// The same in f32 on the fused backend (against the exact f64 step; or twice the single-process f32 error).
pub const RANKS_TOLERANCE_F32: f64 = 1e-5;

/// Every layout of the sets is checked, whatever the sizes would choose: all gathered, all sharded that can be,
/// and the choice by bytes.
const LAYOUTS: [Sets; 3] = [Sets::Gathered, Sets::Sharded, Sets::ByBytes];

/// What one step gave: the gradients and the states after it.
type Outcome = (Gradients, ObjectiveState);

/// The checks of one objective on `ranks` in-memory ranks.
pub fn verify_ranks(objective: &Objective, ranks: usize) -> Result<Vec<Row>> {
    verify_world(objective, &World::Memory(ranks))
}

/// The checks of one objective on `world`'s ranks (in a job, of this process's rank).
pub fn verify_world(objective: &Objective, world: &World) -> Result<Vec<Row>> {
    let mut rows = vec![check(objective, world, Backend::Reference)?, check(objective, world, Backend::Fused)?];
    if objective.total.is_some() {
        rows.push(check_total(objective, world)?);
    }
    Ok(rows)
}

fn cast(t: &Tensor, dtype: DType) -> Result<Tensor> {
    t.to_dtype(dtype)
}

fn cast_features(f: &Features, dtype: DType) -> Result<Features> {
    Ok(Features { u1: cast(&f.u1, dtype)?, u2: cast(&f.u2, dtype)?, t1: cast(&f.t1, dtype)?, t2: cast(&f.t2, dtype)? })
}

fn cast_state(s: &ObjectiveState, dtype: DType) -> Result<ObjectiveState> {
    let all = |v: &[Option<Tensor>]| -> Result<Vec<Option<Tensor>>> {
        v.iter().map(|t| t.as_ref().map(|t| cast(t, dtype)).transpose()).collect()
    };
    Ok(ObjectiveState { ema: all(&s.ema)?, fifo: all(&s.fifo)? })
}

/// Rank `r`'s rows of `t` (`rows` per rank).
fn share(t: &Tensor, r: usize, rows: usize) -> Result<Tensor> {
    t.narrow(0, r * rows, rows)
}

fn shares(f: &Features, r: usize, rows: usize) -> Result<Features> {
    Ok(Features {
        u1: share(&f.u1, r, rows)?,
        u2: share(&f.u2, r, rows)?,
        t1: share(&f.t1, r, rows)?,
        t2: share(&f.t2, r, rows)?,
    })
}

/// Where the ranks of a check run.
pub enum World {
    /// P ranks as threads of this process, exchanging through memory.
    Memory(usize),
    /// This process is one rank of a real job (MPI): it checks its own rows only.
    Process(Comm),
}

impl World {
    /// What the note calls the ranks.
    fn place(&self) -> String {
        match self {
            World::Memory(p) => format!("{p} in-process ranks"),
            World::Process(c) => format!("rank {} of {} MPI processes", c.rank(), c.ranks()),
        }
    }

    fn ranks(&self) -> usize {
        match self {
            World::Memory(p) => *p,
            World::Process(c) => c.ranks(),
        }
    }

    /// Runs `body` on every rank this process holds (all of them in memory, one each in threads; its own in a
    /// job) and returns each result with its rank's results.
    fn run<T: Send>(&self, body: impl Fn(Comm) -> Result<T> + Sync) -> Result<Vec<T>> {
        match self {
            World::Process(comm) => Ok(vec![body(comm.clone())?]),
            World::Memory(ranks) => std::thread::scope(|s| {
                let handles: Vec<_> = MemoryRank::world(*ranks)
                    .into_iter()
                    .map(|rank| {
                        let body = &body;
                        s.spawn(move || body(Comm::new(rank)))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| candle_core::bail!("a rank panicked")))
                    .collect()
            }),
        }
    }
}

/// The worst error of rank `r`'s outcome against the single-process one.
fn error_of(mine: &Outcome, exact: &Outcome, r: usize, rows: usize) -> Result<f64> {
    let (g, s) = mine;
    let (eg, es) = exact;
    let unit = |x: &Tensor, y: &Tensor| error_against(x, &share(y, r, rows)?, 1.0);
    let mut error = unit(&g.g1, &eg.g1)?.max(unit(&g.g2, &eg.g2)?);
    if let (Some(l), Some(el)) = (&g.loss, &eg.loss) {
        error = error.max(unit(l, el)?);
    }
    for (x, y) in s.ema.iter().chain(&s.fifo).zip(es.ema.iter().chain(&es.fifo)) {
        match (x, y) {
            (Some(x), Some(y)) => error = error.max(relative_error(x, y)?),
            (None, None) => {}
            _ => return Ok(f64::INFINITY),
        }
    }
    Ok(error)
}

/// Two steps of the gradient form on `world`'s ranks with `backend` (f64 on the reference, f32 on the fused one)
/// against one process on the whole batch in f64.
fn check(objective: &Objective, world: &World, backend: Backend) -> Result<Row> {
    let ranks = world.ranks();
    let dtype = if backend == Backend::Fused { DType::F32 } else { DType::F64 };
    let single = Plan::new(objective);
    let mut worst = Worst::default();
    let mut transfers = 0usize;
    let mut kernels = std::collections::BTreeSet::new();
    for &(rows, d) in RANK_SIZES {
        let n = rows * ranks;
        let sizes = check_sizes(objective, n, d);
        for seed in 0..super::SEEDS {
            let mut rng = case_rng(7727, seed, n, d + ranks);
            // States and features rounded to the checked precision first, so that both sides start equal.
            let state = cast_state(&prepared_state(&single, &mut rng, n, d)?, dtype)?;
            let steps: Vec<Features> =
                (0..2).map(|_| cast_features(&random_features(&mut rng, n, d)?, dtype)).collect::<Result<_>>()?;
            let run = |plan: &Plan, steps: &[Features], state: &ObjectiveState| -> Result<Vec<Outcome>> {
                let mut s = state.clone();
                steps.iter().map(|f| Ok((plan.step_with_loss(f, &mut s)?, s.clone()))).collect()
            };
            let wide: Vec<Features> = steps.iter().map(|f| cast_features(f, DType::F64)).collect::<Result<_>>()?;
            let exact = run(&single, &wide, &cast_state(&state, DType::F64)?)?;
            let mut undefined = false;
            for (g, _) in &exact {
                undefined |= worst.undefined_at(g.loss.as_ref())?;
            }
            if undefined {
                continue;
            }
            // In f32 the single process itself loses digits at low temperatures: the ranks may be twice as far.
            let own = if dtype == DType::F32 {
                let alone = Plan::with_backend(objective, backend, &sizes);
                let got = run(&alone, &steps, &state)?;
                let mut error = 0f64;
                for (mine, exact) in got.iter().zip(&exact) {
                    error = error.max(error_of(mine, exact, 0, n)?);
                }
                error
            } else {
                0.0
            };
            let mut per_rank = Vec::new();
            for sets in LAYOUTS {
                per_rank.extend(world.run(|comm| {
                    let r = comm.rank();
                    let plan = Plan::for_rank(objective, backend, &sizes, sets, comm);
                    let mine: Vec<Features> = steps.iter().map(|f| shares(f, r, rows)).collect::<Result<_>>()?;
                    let count = crate::ir::distribute::transfers(&plan.lowered.graph, &sizes).len();
                    let names: Vec<&'static str> = plan.kernels.values().map(|k| k.name()).collect();
                    Ok((r, (count, names), run(&plan, &mine, &state)?))
                })?);
            }
            for (r, (count, names), outcomes) in &per_rank {
                let r = *r;
                transfers = transfers.max(*count);
                kernels.extend(names.iter().copied());
                let mut error = 0f64;
                for (mine, exact) in outcomes.iter().zip(&exact) {
                    error = error.max(error_of(mine, exact, r, rows)?);
                }
                let tolerance = if dtype == DType::F64 { RANKS_TOLERANCE_F64 } else { RANKS_TOLERANCE_F32 };
                let allowed = if own.is_finite() { tolerance.max(2.0 * own) } else { tolerance };
                worst.see(error, allowed, (n, d, seed));
            }
        }
    }
    let precision = if dtype == DType::F64 { "f64 reference" } else { "f32 fused" };
    Ok(Row {
        objective: objective.name.clone(),
        check: format!("{ranks} ranks = 1 ({})", if dtype == DType::F64 { "f64" } else { "f32" }),
        max_error: Some(worst.error),
        pass: worst.pass(),
        note: format!(
            "two steps on {} ({precision}; sets gathered, sharded, and by bytes; up to \
             {transfers} collectives per graph) vs one process on the global batch (f64): every rank's rows of the \
             gradients and loss vs max(|exact|, 1), every state relative{}{}",
            world.place(),
            if kernels.is_empty() {
                String::new()
            } else {
                format!("; kernels: {}", kernels.into_iter().collect::<Vec<_>>().join(", "))
            },
            worst.note()
        ),
    })
}

/// One step of the loss form on `world`'s ranks (f64): each rank's rows of ∂total at u1, u2, z1, z2, and the total.
fn check_total(objective: &Objective, world: &World) -> Result<Row> {
    let ranks = world.ranks();
    let single = Plan::new(objective);
    let mut worst = Worst::default();
    for &(rows, d) in RANK_SIZES {
        let n = rows * ranks;
        let sizes = crate::ir::cost::Sizes::of(objective, n, d);
        for seed in 0..super::SEEDS {
            let mut rng = case_rng(3301, seed, n, d + ranks);
            let state = prepared_state(&single, &mut rng, n, d)?;
            let f = random_features(&mut rng, n, d)?;
            let z = [random_matrix(&mut rng, n, d, 2.0)?, random_matrix(&mut rng, n, d, 2.0)?];
            let exact = single.total_step(&f, [&z[0], &z[1]], &mut state.clone())?;
            if worst.undefined_at(exact.loss.as_ref())? {
                continue;
            }
            let mut per_rank = Vec::new();
            // The fused backend's graph is the reassociated one, whose sets may shard where the lowered ones cannot
            // (`total` itself runs on reference ops in both).
            for (sets, backend) in LAYOUTS.iter().flat_map(|s| [(*s, Backend::Reference), (*s, Backend::Fused)]) {
                per_rank.extend(world.run(|comm| {
                    let r = comm.rank();
                    let plan = Plan::for_rank(objective, backend, &sizes, sets, comm);
                    let zr = [share(&z[0], r, rows)?, share(&z[1], r, rows)?];
                    Ok((r, plan.total_step(&shares(&f, r, rows)?, [&zr[0], &zr[1]], &mut state.clone())?))
                })?);
            }
            let egz = exact.gz.as_ref().expect("the loss form has z gradients");
            for (r, g) in &per_rank {
                let r = *r;
                let unit = |x: &Tensor, y: &Tensor| error_against(x, &share(y, r, rows)?, 1.0);
                let gz = g.gz.as_ref().expect("the loss form has z gradients");
                let mut error = unit(&g.g1, &exact.g1)?.max(unit(&g.g2, &exact.g2)?);
                error = error.max(unit(&gz[0], &egz[0])?).max(unit(&gz[1], &egz[1])?);
                if let (Some(l), Some(el)) = (&g.loss, &exact.loss) {
                    error = error.max(unit(l, el)?);
                }
                worst.see(error, RANKS_TOLERANCE_F64, (n, d, seed));
            }
        }
    }
    Ok(Row {
        objective: objective.name.clone(),
        check: format!("{ranks} ranks = 1 (total)"),
        max_error: Some(worst.error),
        pass: worst.pass(),
        note: format!(
            "the loss form on {} (f64; lowered and reassociated graphs; sets gathered, sharded, \
             and by bytes): each rank's rows \
             of autodiff ∂total at u1, u2, z1, z2 and the total vs one process on the global batch{}",
            world.place(),
            worst.note()
        ),
    })
}
