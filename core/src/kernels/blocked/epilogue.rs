//! What a blocked convolution does to each output vector as it stores it, while the value
//! is still in a register: add the folded batch norm's bias, add the residual, ReLU, or
//! in a backward pass zero it where a ReLU's output was not positive. This replaces
//! separate bias, residual-add and ReLU passes over memory.

use crate::kernels::shared_out::SharedOut;
use crate::simd::Vector;

/// Where the residual of a fused add comes from.
#[derive(Clone, Copy, Debug, Default)]
pub enum Residual<'a> {
    /// No residual add.
    #[default]
    None,
    /// A separate activation in the output's blocked layout.
    From(&'a [f32]),
    /// The output buffer's own contents before the store: the plan writes a block's last
    /// convolution over its identity shortcut. Each output vector is read and then written
    /// by the same task, so this is safe for any split of the output.
    InPlace,
}

impl<'a> Residual<'a> {
    /// The separate activation of [`Residual::From`], if that is where it comes from.
    pub fn separate(&self) -> Option<&'a [f32]> {
        match *self {
            Residual::From(r) => Some(r),
            _ => None,
        }
    }
}

/// The per-vector work after a blocked convolution: `relu?(y + bias + residual)`, then
/// zero where `relu_output` is not positive.
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockedEpilogue<'a> {
    /// One value per padded output channel (`Blocked::padded_channels`), added to every
    /// pixel of that channel.
    pub bias: Option<&'a [f32]>,
    pub residual: Residual<'a>,
    /// Clamp negatives to zero; NaN stays NaN.
    pub relu: bool,
    /// The output of a ReLU, in the output's layout: the stored value becomes zero where
    /// it is not positive (or NaN) (that ReLU's backward, fused into the backward-data convolution
    /// whose result flows into it). Applied last.
    pub relu_output: Option<&'a [f32]>,
}

impl BlockedEpilogue<'_> {
    /// Whether it stores the sums unchanged (no bias, residual, ReLU or mask).
    pub fn is_identity(&self) -> bool {
        self.bias.is_none() && matches!(self.residual, Residual::None) && !self.relu && self.relu_output.is_none()
    }

    /// The bias vector of output channel block `cb` (zero without a bias): kernels load it
    /// once per block and pass it to `BlockedEpilogue::store`.
    #[inline(always)]
    pub fn bias_of<V: Vector>(&self, cb: usize) -> V {
        match self.bias {
            Some(b) => V::load(&b[cb * V::LANES..]),
            None => V::ZERO,
        }
    }

    /// Finishes the accumulator `acc` of the output vector at offset `at` (whose channel
    /// block's bias is `bias`), stores it and returns what it stored.
    #[inline(always)]
    pub(crate) fn store<V: Vector>(&self, acc: V, bias: V, at: usize, out: &SharedOut) -> V {
        let mut v = acc + bias;
        match self.residual {
            Residual::None => {}
            Residual::From(r) => v = v + V::load(&r[at..]),
            Residual::InPlace => v = v + out.load::<V>(at),
        }
        if self.relu {
            v = v.relu();
        }
        let v = self.mask(v, at);
        out.store(at, v);
        v
    }

    /// `v`, zero in the lanes where [`BlockedEpilogue::relu_output`] is not positive
    /// (NaN included, as PyTorch's `threshold_backward`).
    #[inline(always)]
    fn mask<V: Vector>(&self, v: V, at: usize) -> V {
        match self.relu_output {
            Some(y) => v.relu_mask(V::load(&y[at..])),
            None => v,
        }
    }

    /// The first pass of a reduction cut into chunks: stores the partial sum `acc` plus
    /// the bias and the residual (for `Residual::InPlace`, the output's value before this
    /// store: the one read of it), without the ReLU. [`BlockedEpilogue::store_final`]
    /// finishes it after the later passes add to it.
    #[inline(always)]
    pub(crate) fn store_partial<V: Vector>(&self, acc: V, bias: V, at: usize, out: &SharedOut) {
        let mut v = acc + bias;
        match self.residual {
            Residual::None => {}
            Residual::From(r) => v = v + V::load(&r[at..]),
            Residual::InPlace => v = v + out.load::<V>(at),
        }
        out.store(at, v);
    }

    /// The last pass of a chunked reduction: `acc` already holds the bias and residual
    /// (see [`BlockedEpilogue::store_partial`]); applies the ReLU and stores.
    #[inline(always)]
    pub(crate) fn store_final<V: Vector>(&self, acc: V, at: usize, out: &SharedOut) {
        out.store(at, self.mask(if self.relu { acc.relu() } else { acc }, at));
    }

    /// The scalar twin of `BlockedEpilogue::store` for the naive kernels: the finished
    /// value of padded channel `c` at offset `at`, given the output's current value `old`.
    pub fn apply_scalar(&self, acc: f32, c: usize, at: usize, old: f32) -> f32 {
        let mut v = acc + self.bias.map_or(0.0, |b| b[c]);
        match self.residual {
            Residual::None => {}
            Residual::From(r) => v += r[at],
            Residual::InPlace => v += old,
        }
        if self.relu && v < 0.0 {
            v = 0.0;
        }
        match self.relu_output {
            Some(y) if y[at].is_nan() || y[at] <= 0.0 => 0.0,
            _ => v,
        }
    }
}
