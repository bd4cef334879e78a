//! The training runtime: the Siamese model and its EMA target, optimisers and schedules (DESIGN §5).

pub mod model;
pub mod optim;
pub mod schedule;
