//! The training runtime: the Siamese model and its EMA target, optimisers and schedules, `--set`
//! overrides, the run directory, and the training loop (DESIGN §5).

pub mod alloc;
pub mod bench;
pub mod conv;
pub mod evaluate;
pub mod kernels;
pub mod model;
pub mod norm;
pub mod optim;
pub mod overrides;
pub mod plot;
pub mod progress;
pub mod run;
pub mod schedule;
pub mod train;
