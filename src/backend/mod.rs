//! IR execution on candle tensors. `reference` runs the IR op by op with candle's own operations
//! (contractions as batched GEMMs); it is the oracle that faster backends are checked against.

pub mod reference;
