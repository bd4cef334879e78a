//! The training runtime: the loop, the run directory with its typed records and checkpoints, optimisers,
//! schedules, `--set` overrides, plots, the HTML report, progress and the memory guard.

pub mod baseline;
pub mod checkpoint;
pub mod memory;
pub mod optim;
pub mod overrides;
pub mod plot;
pub mod progress;
pub mod ranks;
pub mod records;
pub mod report;
pub mod run;
pub mod schedule;
pub mod train;
