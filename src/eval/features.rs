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
    Ok(pooled_features(net, images, shape, norm, &[1])?.remove(0))
}

/// [`backbone_features`] with the last feature map pooled to each of `grids` (1: the global average; g: a g×g grid,
/// `backbone_dim`·g² numbers per image), from one pass over the images.
pub fn pooled_features(
    net: &SiameseNet,
    images: &[u8],
    shape: Shape,
    norm: &Norm,
    grids: &[usize],
) -> Result<Vec<Tensor>, Error> {
    let n = shape.images_in(images.len())?;
    let pixels = shape.pixels();
    let mut chunks: Vec<Vec<Tensor>> = vec![Vec::new(); grids.len()];
    for start in (0..n).step_by(512) {
        let end = (start + 512).min(n);
        let x = data::to_tensor(&images[start * pixels..end * pixels], shape, norm, net.device())?;
        for (pooled, chunk) in net.pooled_features(&x, grids)?.into_iter().zip(&mut chunks) {
            chunk.push(pooled);
        }
    }
    grids
        .iter()
        .zip(chunks)
        .map(|(&g, chunk)| {
            Ok(if chunk.is_empty() {
                Tensor::zeros((0, net.backbone_dim() * g * g), net.dtype(), net.device())?
            } else {
                Tensor::cat(&chunk, 0)?
            })
        })
        .collect()
}

/// [`pooled_features`] of every image, each rank extracting one block of them: rank r of P takes images
/// r·⌈n/P⌉.. (the last block padded with zero features), and the blocks are all-gathered, so every rank returns
/// the features of all n images in order. The ranks' networks must hold the same weights and running statistics.
pub fn pooled_features_over(
    comm: &dyn Collective,
    net: &SiameseNet,
    images: &[u8],
    shape: Shape,
    norm: &Norm,
    grids: &[usize],
) -> Result<Vec<Tensor>, Error> {
    if comm.ranks() == 1 {
        return pooled_features(net, images, shape, norm, grids);
    }
    let n = shape.images_in(images.len())?;
    let block = n.div_ceil(comm.ranks());
    let start = (comm.rank() * block).min(n);
    let end = (start + block).min(n);
    let mine = pooled_features(net, &images[start * shape.pixels()..end * shape.pixels()], shape, norm, grids)?;
    mine.iter()
        .map(|m| {
            let padding = Tensor::zeros((block - (end - start), m.dim(1)?), net.dtype(), net.device())?;
            let all = gather_rows(comm, &Tensor::cat(&[m, &padding], 0)?, 1)?;
            Ok(all.narrow(0, 0, n)?)
        })
        .collect()
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
