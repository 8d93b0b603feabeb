//! The classifier: `y = x W^T + b` for a few feature rows against a wide weight matrix
//! (ResNet-50's is 1000 x 2048, 8 MB). With one to a few rows it is a matrix-vector
//! product whose cost is reading `W` once: a general GEMM would first pack all of `W`
//! on one thread. Here every class's weight row is read once, from both threads, and
//! dotted with every feature row while it is in registers and L1.

use crate::kernels::shared_out::SharedOut;
use crate::kernels::split;
use crate::simd::Vector;

/// Feature rows dotted with one weight row in a pass: one accumulator each.
const ROWS_PER_PASS: usize = 4;

/// `y[r, k] = b[k] + sum_c x[r, c] w[k, c]` for `rows` feature rows of `c` values
/// (`x`, row-major), `classes` weight rows of `c` (`w`, row-major, PyTorch's
/// `fc.weight`), and `y` row-major `rows x classes`. Classes are split among tasks.
pub fn dense<V: Vector>(rows: usize, c: usize, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    let classes = b.len();
    assert_eq!(x.len(), rows * c, "dense: features");
    assert_eq!(w.len(), classes * c, "dense: weights");
    assert_eq!(y.len(), rows * classes, "dense: output");
    let lanes = V::LANES;
    let body = c - c % lanes;
    let y = SharedOut::new(y);
    split::for_each_range(classes, |range| {
        for k in range {
            let wk = &w[k * c..][..c];
            for r0 in (0..rows).step_by(ROWS_PER_PASS) {
                let group = ROWS_PER_PASS.min(rows - r0);
                let mut acc = [V::ZERO; ROWS_PER_PASS];
                for i in (0..body).step_by(lanes) {
                    let wv = V::load(&wk[i..]);
                    for (j, a) in acc.iter_mut().enumerate().take(group) {
                        *a = V::load(&x[(r0 + j) * c + i..]).mul_add(wv, *a);
                    }
                }
                for (j, a) in acc.iter().enumerate().take(group) {
                    let xr = &x[(r0 + j) * c..][..c];
                    let tail: f32 = (body..c).map(|i| xr[i] * wk[i]).sum();
                    y.write((r0 + j) * classes + k, b[k] + a.reduce_add() + tail);
                }
            }
        }
    });
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
