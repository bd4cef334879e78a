//! The Siamese network of the README: `resnet_mini` encoder, MLP projector, optional MLP predictor, and the
//! momentum (EMA) target network.
//!
//! Why our own layers rather than candle-nn's: every initial value is drawn from one seeded generator in forward order
//! (candle's CPU RNG cannot be seeded), so runs are reproducible; parameters are one named, ordered collection that
//! checkpoints, optimiser state and the EMA target address by name and position; BatchNorm and ReLU are fused with a
//! backward of our own (candle-nn's norms have none, and its composable version is slow); and the optimisers keep
//! resumable state (candle-nn's SGD has no momentum). candle-nn serves where none of that matters: the linear probe.
//!
//! The architecture is a tree of indices into the parameter and buffer lists ([`arch`]), so the online network
//! (Vars) and the target (plain tensors) share one forward pass ([`forward`]); with our kernels the encoder pass is
//! recorded and differentiated by [`backward`] rather than built into candle's graph.

mod arch;
mod backward;
pub mod export;
mod forward;
pub mod layer_impl;
pub mod layers;
pub mod params;
mod siamese;
mod target;

pub use layer_impl::LayerImpl;
pub use params::{Buffers, Param, ParamKind, Params};
pub use siamese::{Outputs, SiameseNet};
pub use target::Target;
