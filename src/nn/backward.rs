//! The encoder's backward with our kernels, from a recorded forward pass: the forward of [`super::forward`] in
//! reverse, adding every parameter gradient to candle's store (no graph, no zero-filled activation gradients).

use super::arch::{Bn, Conv};
use super::forward::{EncoderTape, NormSaved};
use super::layers::BN_EPS;
use super::{Outputs, SiameseNet};
use crate::kernels::{conv, norm};
use candle_core::backprop::GradStore;
use candle_core::{bail, Result, Tensor};

impl SiameseNet {
    /// The gradient of `loss` with respect to every parameter, through the forward passes `outputs` it was computed
    /// from: candle differentiates the heads (and any pass run on candle's kernels); each recorded encoder pass is
    /// then differentiated here from the gradient at its backbone features, and its parameter gradients added in.
    pub fn backward(&self, loss: &Tensor, outputs: &[&Outputs]) -> Result<GradStore> {
        let mut store = loss.backward()?;
        for o in outputs {
            let Some(tape) = &o.tape else { continue };
            if let Some(df) = store.remove(tape.leaf.as_tensor()) {
                self.encoder_backward(tape, &df, &mut store)?;
            }
        }
        Ok(store)
    }

    /// The encoder's backward, mirroring [`Ctx::resnet`] in reverse with our kernels.
    fn encoder_backward(&self, tape: &EncoderTape, df: &Tensor, store: &mut GradStore) -> Result<()> {
        let (r, norms, joins) = (&self.arch.encoder, &tape.recorded.norms, &tape.recorded.joins);
        let expected = 1 + r.blocks.iter().map(|b| 2 + usize::from(b.shortcut.is_some())).sum::<usize>();
        let (Some(stem), Some(last)) = (norms.first(), joins.last()) else { bail!("internal: empty encoder tape") };
        if norms.len() != expected || joins.len() != r.blocks.len() {
            bail!("internal: encoder tape does not match the architecture");
        }
        // Global average pooling: every pixel receives df / (H·W).
        let (b, c, h, w) = last.dims4()?;
        let mut dh = (df.reshape((b, c, 1, 1))?.broadcast_as((b, c, h, w))? / (h * w) as f64)?.contiguous()?;
        let mut next = norms.len();
        for (i, block) in r.blocks.iter().enumerate().rev() {
            let first = next - 2 - usize::from(block.shortcut.is_some());
            next = first;
            let input = if i == 0 { &stem.output } else { &joins[i - 1] };
            let dz = norm::relu_backward(&dh, &joins[i])?;
            let (bn1, bn2) = (&norms[first], &norms[first + 1]);
            let dz2 = self.norm_backward(&dz, bn2, &block.bn2, store)?;
            let da1 = self.conv_backward(&dz2, &bn1.output, &block.conv2, store)?;
            let dz1 = self.norm_backward(&da1, bn1, &block.bn1, store)?;
            let dh1 = self.conv_backward(&dz1, input, &block.conv1, store)?;
            let dshort = match &block.shortcut {
                Some((conv, bn)) => {
                    let dzs = self.norm_backward(&dz, &norms[first + 2], bn, store)?;
                    self.conv_backward(&dzs, input, conv, store)?
                }
                None => dz,
            };
            dh = norm::add(&dh1, &dshort)?;
        }
        let dz0 = self.norm_backward(&dh, stem, &r.stem_bn, store)?;
        let w = &self.tensors[r.stem.w];
        let (_, _, kh, kw) = w.dims4()?;
        accumulate(
            store,
            w,
            conv::conv2d_weight_grad(&tape.images, &dz0, (kh, kw), r.stem.stride, r.stem.pad, &self.work)?,
        )
    }

    /// One BatchNorm's backward: adds dγ and dβ to the store, returns the gradient at its input.
    fn norm_backward(&self, dy: &Tensor, saved: &NormSaved, bn: &Bn, store: &mut GradStore) -> Result<Tensor> {
        let gamma = &self.tensors[bn.gamma];
        let (dx, dgamma, dbeta) = norm::batch_norm_backward(
            dy,
            &saved.input,
            &saved.output,
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
        let ((_, _, h, wd), (_, _, kh, kw)) = (x.dims4()?, w.dims4()?);
        accumulate(store, w, conv::conv2d_weight_grad(x, dy, (kh, kw), c.stride, c.pad, &self.work)?)?;
        conv::conv2d_input_grad(dy, &w.detach(), (h, wd), c.stride, c.pad, &self.work)
    }
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
