//! The encoder's backward with our kernels, from a recorded forward pass (channels-last maps): the forward of [`super::forward`] in
//! reverse, adding every parameter gradient to candle's store (no graph, no zero-filled activation gradients).

use super::arch::{Bn, Conv, STEM_POOL};
use super::forward::{NormSaved, Recorded};
use super::layers::{max_pool2d_backward, BN_EPS};
use super::{Outputs, SiameseNet};
use crate::kernels::{avg_pool, conv, norm};
use candle_core::backprop::GradStore;
use candle_core::{bail, Result, Tensor};

impl SiameseNet {
    /// The gradient of `loss` with respect to every parameter, through the forward passes `outputs` it was computed
    /// from: candle differentiates the heads (and any pass run on candle's kernels); each recorded encoder pass is
    /// then differentiated here from the gradient at its backbone features, and its parameter gradients added in.
    /// The passes are taken by value: each recorded activation is freed as soon as the backward has read it for the
    /// last time (held to the end, they were a fifth of the peak memory at batch 1024).
    pub fn backward(&self, loss: &Tensor, outputs: Vec<Outputs>) -> Result<GradStore> {
        let mut store = loss.backward()?;
        for o in outputs {
            let Some(tape) = o.tape else { continue };
            if let Some(df) = store.remove(tape.leaf.as_tensor()) {
                self.encoder_backward(tape.recorded, &df, &mut store)?;
            }
        }
        Ok(store)
    }

    /// The encoder's backward, mirroring [`Ctx::resnet`] in reverse with our kernels, popping the tape as it goes.
    fn encoder_backward(&self, recorded: Recorded, df: &Tensor, store: &mut GradStore) -> Result<()> {
        let r = &self.arch.encoder;
        let Recorded { images, mut norms, mut joins, pooled } = recorded;
        let expected = 1 + r.blocks.iter().map(|b| b.main.len() + usize::from(b.shortcut.is_some())).sum::<usize>();
        if norms.len() != expected || joins.len() != r.blocks.len() || r.pool != pooled.is_some() {
            bail!("internal: encoder tape does not match the architecture");
        }
        let (Some(images), Some(last)) = (images, joins.pop()) else { bail!("internal: empty encoder tape") };
        let (_, h, w, _) = last.dims4()?;
        // The gradient at the last join's output, through its ReLU.
        let mut dz = norm::relu_backward(&avg_pool::global_avg_pool_backward(df, (h, w))?, &last)?;
        drop(last);
        for (i, block) in r.blocks.iter().enumerate().rev() {
            // The block's input: the previous join's output, or the stem's (pooled) output.
            let input = match (joins.pop(), &pooled) {
                (Some(join), _) => join,
                (None, Some(pooled)) => pooled.clone(),
                (None, None) => relu_output(norms.first().ok_or_else(tape_short)?)?.clone(),
            };
            let dshort = match &block.shortcut {
                Some((conv, bn)) => {
                    let dzs = self.norm_backward(&dz, &pop(&mut norms)?, bn, store)?;
                    self.conv_backward(&dzs, &input, conv, store)?
                }
                None => dz.clone(),
            };
            let mut d = dz;
            for (k, (conv, bn)) in block.main.iter().enumerate().rev() {
                d = self.norm_backward(&d, &pop(&mut norms)?, bn, store)?;
                let x = if k == 0 { &input } else { relu_output(norms.last().ok_or_else(tape_short)?)? };
                d = self.conv_backward(&d, x, conv, store)?;
            }
            // The two paths' sum at the block's input: through the previous join's ReLU in the same pass.
            dz = if i > 0 { norm::masked_sum(&d, &dshort, &input)? } else { norm::add(&d, &dshort)? };
        }
        drop(pooled);
        let stem = pop(&mut norms)?;
        if r.pool {
            let (k, s, p) = STEM_POOL;
            dz = max_pool2d_backward(relu_output(&stem)?, &dz, k, s, p)?;
        }
        let dz0 = self.norm_backward(&dz, &stem, &r.stem_bn, store)?;
        drop(stem);
        let w = &self.tensors[r.stem.w];
        let (_, _, kh, kw) = w.dims4()?;
        accumulate(store, w, conv::conv2d_weight_grad(&images, &dz0, (kh, kw), r.stem.stride, r.stem.pad, &self.work)?)
    }

    /// One BatchNorm's backward: adds dγ and dβ to the store, returns the gradient at its input.
    fn norm_backward(&self, dy: &Tensor, saved: &NormSaved, bn: &Bn, store: &mut GradStore) -> Result<Tensor> {
        let gamma = &self.tensors[bn.gamma];
        let (dx, dgamma, dbeta) = norm::batch_norm_backward(
            dy,
            &saved.input,
            saved.output.as_ref(),
            &gamma.detach(),
            &saved.stats,
            BN_EPS,
            saved.batch,
            saved.relu,
        )?;
        accumulate(store, gamma, dgamma)?;
        accumulate(store, &self.tensors[bn.beta], dbeta)?;
        Ok(dx)
    }

    /// One convolution's backward: adds the weight gradient to the store, returns the gradient at its input `x`.
    fn conv_backward(&self, dy: &Tensor, x: &Tensor, c: &Conv, store: &mut GradStore) -> Result<Tensor> {
        let w = &self.tensors[c.w];
        let ((_, h, wd, _), (_, _, kh, kw)) = (x.dims4()?, w.dims4()?);
        accumulate(store, w, conv::conv2d_weight_grad(x, dy, (kh, kw), c.stride, c.pad, &self.work)?)?;
        conv::conv2d_input_grad(dy, &w.detach(), (h, wd), c.stride, c.pad, &self.work)
    }
}

/// The last BatchNorm left on a tape, which the backward reads for the last time.
fn pop(norms: &mut Vec<NormSaved>) -> Result<NormSaved> {
    norms.pop().ok_or_else(tape_short)
}

/// The error of a tape with fewer BatchNorms than the architecture (an internal error: they are checked first).
fn tape_short() -> candle_core::Error {
    candle_core::Error::Msg("internal: the encoder tape ran out of BatchNorms".into())
}

/// The output of a BatchNorm followed by a ReLU (the recorded forward keeps only those).
fn relu_output(saved: &NormSaved) -> Result<&Tensor> {
    saved
        .output
        .as_ref()
        .ok_or_else(|| candle_core::Error::Msg("internal: a BatchNorm output the tape did not keep".into()))
}

/// Adds `grad` to the gradient stored for `param` (several passes share parameters).
fn accumulate(store: &mut GradStore, param: &Tensor, grad: Tensor) -> Result<()> {
    let total = match store.remove(param) {
        Some(g) => (g + grad)?,
        None => grad,
    };
    store.insert(param, total);
    Ok(())
}
