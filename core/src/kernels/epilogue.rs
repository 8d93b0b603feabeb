//! What a convolution does to each output value as it stores it: add a per-channel bias
//! and a residual of the output's shape, then ReLU. In inference, with batch norm folded
//! into the weights, this replaces the separate BN, residual-add and ReLU passes over
//! memory with work on values the kernel already holds.

/// The per-value work after a convolution: `relu?(y + bias[k] + residual[i])`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Added to every value of output channel `k`.
    pub bias: Option<&'a [f32]>,
    /// Added elementwise; NCHW, the output's shape.
    pub residual: Option<&'a [f32]>,
    /// Clamp negatives to zero last; NaN stays NaN, as in PyTorch.
    pub relu: bool,
}

impl<'a> Epilogue<'a> {
    /// Only a bias (or nothing): a plain convolution layer.
    pub fn bias(bias: Option<&'a [f32]>) -> Self {
        Epilogue {
            bias,
            ..Epilogue::default()
        }
    }

    /// Panics unless the bias has `channels` values and the residual `len`.
    pub(crate) fn check(&self, channels: usize, len: usize) {
        if let Some(b) = self.bias {
            assert_eq!(b.len(), channels, "epilogue: bias length");
        }
        if let Some(r) = self.residual {
            assert_eq!(r.len(), len, "epilogue: residual length");
        }
    }

    /// True when there is nothing to do.
    pub(crate) fn is_identity(&self) -> bool {
        self.bias.is_none() && self.residual.is_none() && !self.relu
    }

    /// The finished value `v` of output channel `k` at flat output index `index`.
    #[inline(always)]
    pub(crate) fn apply(&self, k: usize, index: usize, v: f32) -> f32 {
        let mut v = v;
        if let Some(b) = self.bias {
            v += b[k];
        }
        if let Some(r) = self.residual {
            v += r[index];
        }
        if self.relu && v < 0.0 {
            v = 0.0;
        }
        v
    }

    /// Applies to a run of channel `k`'s values starting at flat output index `start`.
    #[inline(always)]
    pub(crate) fn apply_run(&self, k: usize, start: usize, values: &mut [f32]) {
        if self.is_identity() {
            return;
        }
        let bias = self.bias.map_or(0.0, |b| b[k]);
        match self.residual {
            Some(r) => {
                let r = &r[start..start + values.len()];
                for (v, &s) in values.iter_mut().zip(r) {
                    *v = self.finish(*v + bias + s);
                }
            }
            None => values.iter_mut().for_each(|v| *v = self.finish(*v + bias)),
        }
    }

    #[inline(always)]
    fn finish(&self, v: f32) -> f32 {
        if self.relu && v < 0.0 {
            0.0
        } else {
            v
        }
    }
}

/// The unfused reference: `y = relu?(y + bias + residual)` over a whole NCHW output with
/// `plane` values per channel and `channels` channels per image.
pub fn epilogue_naive(e: &Epilogue, channels: usize, plane: usize, y: &mut [f32]) {
    for (i, v) in y.iter_mut().enumerate() {
        let k = (i / plane) % channels;
        let mut s = *v + e.bias.map_or(0.0, |b| b[k]);
        if let Some(r) = e.residual {
            s += r[i];
        }
        *v = if e.relu && s < 0.0 { 0.0 } else { s };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_match_the_reference_and_keep_nan() {
        let (channels, plane) = (3, 5);
        let y: Vec<f32> = (0..2 * channels * plane).map(|i| (i as f32 - 14.5) * 0.3).collect();
        let mut y_nan = y.clone();
        y_nan[7] = f32::NAN;
        let bias = [0.5, -1.0, 2.0];
        let residual: Vec<f32> = (0..y.len()).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
        for relu in [false, true] {
            let e = Epilogue {
                bias: Some(&bias),
                residual: Some(&residual),
                relu,
            };
            let mut want = y_nan.clone();
            epilogue_naive(&e, channels, plane, &mut want);
            let mut got = y_nan.clone();
            for (run, chunk) in got.chunks_mut(plane).enumerate() {
                e.apply_run(run % channels, run * plane, chunk);
            }
            let mut single = y_nan.clone();
            for (i, v) in single.iter_mut().enumerate() {
                *v = e.apply((i / plane) % channels, i, *v);
            }
            for ((a, b), c) in got.iter().zip(&want).zip(&single) {
                assert!(a == b || (a.is_nan() && b.is_nan()), "{a} vs {b}");
                assert!(a == c || (a.is_nan() && c.is_nan()), "{a} vs {c}");
            }
            assert!(got[7].is_nan(), "NaN must survive the ReLU");
        }
    }
}
