//! What evaluation reads from a network: eval-mode backbone features of a whole image set, and the protocol line
//! printed beside every number.

use crate::check::recipe::Knn;
use crate::collective::{tensor::gather_rows, Collective};
use crate::data::{self, Dataset, Norm, Shape};
use crate::error::Error;
use crate::nn::SiameseNet;
use candle_core::Tensor;

/// Backbone features of u8 images of `shape` normalised by `norm` (as in training), in eval mode, in chunks of 512.
pub fn backbone_features(net: &SiameseNet, images: &[u8], shape: Shape, norm: &Norm) -> Result<Tensor, Error> {
    let n = shape.images_in(images.len())?;
    let pixels = shape.pixels();
    let mut chunks = Vec::new();
    for start in (0..n).step_by(512) {
        let end = (start + 512).min(n);
        let x = data::to_tensor(&images[start * pixels..end * pixels], shape, norm, net.device())?;
        chunks.push(net.features(&x)?);
    }
    if chunks.is_empty() {
        return Ok(Tensor::zeros((0, net.backbone_dim()), net.dtype(), net.device())?);
    }
    Ok(Tensor::cat(&chunks, 0)?)
}

/// [`backbone_features`] of every image, each rank extracting one block of them: rank r of P takes images
/// r·⌈n/P⌉.. (the last block padded with zero features), and the blocks are all-gathered, so every rank returns
/// the features of all n images in order. The ranks' networks must hold the same weights and running statistics.
pub fn backbone_features_over(
    comm: &dyn Collective,
    net: &SiameseNet,
    images: &[u8],
    shape: Shape,
    norm: &Norm,
) -> Result<Tensor, Error> {
    if comm.ranks() == 1 {
        return backbone_features(net, images, shape, norm);
    }
    let n = shape.images_in(images.len())?;
    let block = n.div_ceil(comm.ranks());
    let start = (comm.rank() * block).min(n);
    let end = (start + block).min(n);
    let mine = backbone_features(net, &images[start * shape.pixels()..end * shape.pixels()], shape, norm)?;
    let padding = Tensor::zeros((block - (end - start), net.backbone_dim()), net.dtype(), net.device())?;
    let all = gather_rows(comm, &Tensor::cat(&[&mine, &padding], 0)?, 1)?;
    Ok(all.narrow(0, 0, n)?)
}

/// The kNN protocol, printed with every number.
pub fn knn_protocol(k: &Knn, data: &Dataset) -> String {
    format!(
        "weighted kNN, k = {}, t = {}, cosine on L2-normalised backbone features, bank = {} un-augmented training images, {} test queries",
        k.k,
        k.t,
        data.bank.as_ref().map_or(data.train_len(), |b| b.labels.len()),
        data.test_len()
    )
}
