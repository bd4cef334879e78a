//! What evaluation reads from a network: eval-mode backbone features of a whole image set, and the protocol line
//! printed beside every number.

use crate::check::recipe::Knn;
use crate::data::{self, Dataset};
use crate::error::Error;
use crate::nn::SiameseNet;
use candle_core::Tensor;

/// Backbone features of 28×28 images, in eval mode, in chunks of 512.
pub fn backbone_features(net: &SiameseNet, images: &[u8]) -> Result<Tensor, Error> {
    let n = images.len() / 784;
    let mut chunks = Vec::new();
    for start in (0..n).step_by(512) {
        let end = (start + 512).min(n);
        let x = data::to_tensor(&images[start * 784..end * 784], net.device())?;
        chunks.push(net.features(&x)?);
    }
    Ok(Tensor::cat(&chunks, 0)?)
}

/// The kNN protocol, printed with every number.
pub fn knn_protocol(k: &Knn, data: &Dataset) -> String {
    format!(
        "weighted kNN, k = {}, t = {}, cosine on L2-normalised backbone features, bank = {} un-augmented training images, {} test queries",
        k.k,
        k.t,
        data.train_len(),
        data.test_len()
    )
}
