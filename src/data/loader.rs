//! The training loader: each step's two augmented views, made on a worker thread a bounded number of steps ahead
//! of the step that uses them, so that the step waits for data only when augmenting is slower than training (on a
//! GPU, where the step is fast, it would otherwise wait every time). The views are exactly the ones the step would
//! make itself — the images of step s are fixed by (seed, epoch) and each view's randomness by (seed, s, view, the
//! image's index in the batch) — so results do not depend on the loader, nor on how many ranks share the batch
//! (each makes the views of its own rows only); the time the step waited is reported as the step's `augment` phase.

use super::augment::{self, Views};
use super::{gather, DataError, Dataset};
use crate::check::recipe::Recipe;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::ops::Range;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Steps the loader runs ahead of training: enough to hide a slow batch, little memory (two views per step).
pub const DEPTH: usize = 2;

/// Which rows of every global batch this process trains on: the `rank`-th of `ranks` equal blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    /// This process's rank.
    pub rank: usize,
    /// How many ranks share the batch (they divide it).
    pub ranks: usize,
}

impl Share {
    /// The whole batch: one process.
    pub const WHOLE: Share = Share { rank: 0, ranks: 1 };

    /// This share's rows of a batch of `batch`.
    pub fn rows(&self, batch: usize) -> Range<usize> {
        let len = batch / self.ranks;
        self.rank * len..(self.rank + 1) * len
    }
}

/// One step's two views.
pub struct StepViews {
    /// The step they are for.
    pub step: usize,
    /// The first and second view of each of the step's images (this share's), normalised.
    pub views: [Views; 2],
}

/// The worker making the views of a range of steps, in order.
pub struct Loader {
    batches: Option<Receiver<Result<StepViews, DataError>>>,
    worker: Option<JoinHandle<()>>,
}

/// The order of the training images in epoch `epoch`: a permutation that depends only on (seed, epoch), so a
/// resumed run draws the same one.
pub fn epoch_order(train_len: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..train_len).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    order
}

/// The two views of `share`'s rows of step `step` (batch `recipe.batch`, `steps_per_epoch` steps an epoch); `order`
/// caches the epoch's permutation between calls.
pub fn step_views(
    data: &Dataset,
    recipe: &Recipe,
    steps_per_epoch: usize,
    step: usize,
    share: Share,
    order: &mut (Option<usize>, Vec<usize>),
) -> Result<[Views; 2], DataError> {
    let (batch, epoch) = (recipe.batch, step / steps_per_epoch);
    if order.0 != Some(epoch) {
        *order = (Some(epoch), epoch_order(data.train_len(), recipe.seed, epoch));
    }
    let within = step % steps_per_epoch;
    let rows = share.rows(batch);
    let images = gather(&data.train_images, data.shape, &order.1[within * batch..][rows.clone()])?;
    let view = |v: usize| -> Result<Views, DataError> {
        let ops = recipe.view_augment(v);
        let mut rng = augment::view_rng(recipe.seed, step as u64, v as u64);
        let mut views = augment::augment_rows(&images, data.shape, &ops, &mut rng, rows.start)?;
        views.normalise(&data.norm);
        Ok(views)
    };
    Ok([view(0)?, view(1)?])
}

impl Loader {
    /// Starts a worker making the views of `share`'s rows of `steps`, at most [`DEPTH`] steps ahead of
    /// [`Loader::next_step`].
    pub fn spawn(
        data: Arc<Dataset>,
        recipe: &Recipe,
        steps_per_epoch: usize,
        steps: Range<usize>,
        share: Share,
    ) -> Self {
        let (send, batches) = sync_channel(DEPTH);
        let recipe = recipe.clone();
        let worker = std::thread::spawn(move || {
            let mut order = (None, Vec::new());
            for step in steps {
                let made = step_views(&data, &recipe, steps_per_epoch, step, share, &mut order);
                let failed = made.is_err();
                // The receiver is gone when training stopped early: nothing more is wanted.
                if send.send(made.map(|views| StepViews { step, views })).is_err() || failed {
                    return;
                }
            }
        });
        Loader { batches: Some(batches), worker: Some(worker) }
    }

    /// The next step's views (waiting for them if the worker is behind).
    pub fn next_step(&mut self) -> Result<StepViews, DataError> {
        let received = self.batches.as_ref().and_then(|b| b.recv().ok());
        let Some(made) = received else {
            return Err(DataError::Shape {
                detail: "the data loader stopped before the last step (a bug to report)".into(),
                help: "run the same command again; if it repeats, report it with the run's config.json".into(),
            });
        };
        made
    }
}

impl Drop for Loader {
    /// Stops the worker (its next send fails once the receiver is gone) and waits for it.
    fn drop(&mut self) {
        self.batches = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
