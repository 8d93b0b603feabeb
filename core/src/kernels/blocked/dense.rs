//! The classifier: `y = x W^T + b` for a few feature rows against a wide weight matrix
//! (ResNet-50's is 1000 x 2048, 8 MB). With one to a few rows it is a matrix-vector
//! product whose cost is reading `W` once: a general GEMM would first pack all of `W`
//! on one thread. Here every class's weight row is read once, from both threads, and
//! dotted with every feature row while it is in registers and L1.

use crate::kernels::shared_out::SharedOut;
use crate::kernels::split;
use crate::simd::Vector;

/// Weight rows (classes) of a pass. With 4 feature rows (on 32-register AVX-512; 2 on
/// 16-register targets such as wasm), each loaded feature vector serves 4 classes and
/// each weight vector 4 rows. One class a pass re-read every feature row from L2 once
/// per class: ResNet-50's head at batch 8 (64 KB of features, 1000 classes) took
/// 0.82-0.84 ms, 0.40-0.41 ms this way (`plan_profile`, 2 threads); batch 1 unchanged.
const CLASSES_PER_PASS: usize = 4;

/// `y[r, k] = b[k] + sum_c x[r, c] w[k, c]` for `rows` feature rows of `c` values
/// (`x`, row-major), `classes` weight rows of `c` (`w`, row-major, PyTorch's
/// `fc.weight`), and `y` row-major `rows x classes`. Classes are split among tasks.
/// Each output sums its products in the same order whatever the tiling: vector lanes
/// over `c`, then the lanes, then the tail.
pub fn dense<V: Vector>(rows: usize, c: usize, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    let classes = b.len();
    assert_eq!(x.len(), rows * c, "dense: features");
    assert_eq!(w.len(), classes * c, "dense: weights");
    assert_eq!(y.len(), rows * classes, "dense: output");
    let lanes = V::LANES;
    let body = c - c % lanes;
    let y = SharedOut::new(y);
    split::for_each_range(classes, |range| {
        for k0 in range.clone().step_by(CLASSES_PER_PASS) {
            let kn = CLASSES_PER_PASS.min(range.end - k0);
            // A ragged pass repeats its last class and stores only the real ones.
            let wk: [&[f32]; CLASSES_PER_PASS] = core::array::from_fn(|j| &w[(k0 + j.min(kn - 1)) * c..][..c]);
            // Whole passes of 4 (or 2) rows, then one row at a time (batch 1 included),
            // so that no pass computes rows it throws away.
            let wide = V::LANES >= 16;
            let mut r0 = 0;
            while r0 < rows {
                if wide && rows - r0 >= 4 {
                    pass::<V, 4>(&wk, kn, x, r0, (c, body, classes), b, k0, &y);
                    r0 += 4;
                } else if !wide && rows - r0 >= 2 {
                    pass::<V, 2>(&wk, kn, x, r0, (c, body, classes), b, k0, &y);
                    r0 += 2;
                } else {
                    pass::<V, 1>(&wk, kn, x, r0, (c, body, classes), b, k0, &y);
                    r0 += 1;
                }
            }
        }
    });
}

/// Rows `r0 .. r0 + R` of `x` against the weight rows `wk` (the first `kn` of them real:
/// classes `k0 ..`), stored into `y`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pass<V: Vector, const R: usize>(
    wk: &[&[f32]; CLASSES_PER_PASS],
    kn: usize,
    x: &[f32],
    r0: usize,
    (c, body, classes): (usize, usize, usize),
    b: &[f32],
    k0: usize,
    y: &SharedOut,
) {
    let xr: [&[f32]; R] = core::array::from_fn(|r| &x[(r0 + r) * c..][..c]);
    let mut acc = [[V::ZERO; R]; CLASSES_PER_PASS];
    for i in (0..body).step_by(V::LANES) {
        let wv: [V; CLASSES_PER_PASS] = core::array::from_fn(|j| V::load(&wk[j][i..]));
        for r in 0..R {
            let xv = V::load(&xr[r][i..]);
            for j in 0..CLASSES_PER_PASS {
                acc[j][r] = xv.mul_add(wv[j], acc[j][r]);
            }
        }
    }
    for (j, class_acc) in acc.iter().enumerate().take(kn) {
        for (r, a) in class_acc.iter().enumerate() {
            let tail: f32 = (body..c).map(|i| xr[r][i] * wk[j][i]).sum();
            y.write((r0 + r) * classes + k0 + j, b[k0 + j] + a.reduce_add() + tail);
        }
    }
}

/// The scalar twin of [`dense`], in f64.
pub fn dense_naive(rows: usize, c: usize, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    let classes = b.len();
    for r in 0..rows {
        for k in 0..classes {
            let dot: f64 = (0..c).map(|i| x[r * c + i] as f64 * w[k * c + i] as f64).sum();
            y[r * classes + k] = (b[k] as f64 + dot) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{max_rel_err, random};
    use crate::rng::Rng;

    fn check<V: Vector>() {
        let mut rng = Rng::new(7);
        for (rows, c, classes) in [(1, 2048, 37), (3, 64, 10), (6, 19, 5), (9, 512, 3), (0, 8, 4)] {
            let x = random(&mut rng, rows * c);
            let w = random(&mut rng, classes * c);
            let b = random(&mut rng, classes);
            let (mut fast, mut slow) = (vec![f32::NAN; rows * classes], vec![0.0; rows * classes]);
            dense::<V>(rows, c, &x, &w, &b, &mut fast);
            dense_naive(rows, c, &x, &w, &b, &mut slow);
            let err = max_rel_err(&fast, &slow);
            assert!(err < 1e-5, "rows {rows} c {c} classes {classes}: {err}");
        }
    }

    #[test]
    fn dense_matches_its_f64_twin_at_every_block() {
        check::<wide::f32x4>();
        check::<wide::f32x8>();
        check::<wide::f32x16>();
    }

    #[test]
    fn dense_propagates_nan() {
        let (x, mut w, b) = (vec![1.0; 16], vec![0.5; 32], vec![0.0; 2]);
        w[17] = f32::NAN;
        let mut y = vec![0.0; 2];
        dense::<wide::f32x8>(1, 16, &x, &w, &b, &mut y);
        assert!(!y[0].is_nan() && y[1].is_nan(), "{y:?}");
    }
}
