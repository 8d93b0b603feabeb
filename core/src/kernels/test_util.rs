//! Helpers shared by the kernels' tests.

use crate::rng::Rng;

/// `n` standard normal values.
pub(crate) fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// `max |a - b| / max |b|`, the error measure of the accuracy tests; NaN (an output
/// never written) counts as an infinite error, not as no error.
pub(crate) fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let err = |(x, y): (&f32, &f32)| {
        let d = (x - y).abs();
        if d.is_nan() {
            f32::INFINITY
        } else {
            d
        }
    };
    a.iter().zip(b).map(err).fold(0f32, f32::max) / scale
}
