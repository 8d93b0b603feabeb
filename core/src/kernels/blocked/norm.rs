//! Training-mode batch normalisation on the channel-blocked layout. Each vector holds one
//! pixel's block of channels, so every statistic is a plain vertical sum: no gather, no
//! per-channel loop. Sums run in f32 vectors along one row and in f64 across rows, in
//! tasks cut by [`split`] and reduced in task order, so the result depends only on the
//! thread count.
//!
//! The forward pass keeps the convolution's output `z` (not `xhat`): the backward pass
//! recomputes `xhat = (z - mean) * inv_std` as it reads `z`, which saves writing and
//! reading a third activation. The ReLU after a batch norm is fused into the forward
//! pass, and its backward (`dy = 0` where the output is not positive) into the backward
//! pass.

use crate::kernels::shared_out::SharedOut;
use crate::kernels::split;
use crate::layout::Blocked;
use crate::simd::Vector;
use rayon::prelude::*;

/// Rows (one image, one channel block, one output row) of `shape`, the unit of work.
fn rows(shape: Blocked) -> usize {
    shape.n * shape.blocks() * shape.h
}

/// The channel block of row `r` of `shape` and the index of its first value.
fn row_start(shape: Blocked, r: usize) -> (usize, usize) {
    let (y, rest) = (r % shape.h, r / shape.h);
    let (cb, n) = (rest % shape.blocks(), rest / shape.blocks());
    (cb, shape.at(n, cb, y, 0))
}

/// Two per-lane sums over the whole activation of `f(block, at, w)` (a pair of vectors
/// per row: the row of channel block `block` starting at `at`, `w` pixels), in f64:
/// `out.0[c]` and `out.1[c]` for every padded channel `c`, in one pass. `partials` is
/// scratch, grown once.
fn channel_sums<V: Vector>(
    shape: Blocked,
    partials: &mut Vec<f64>,
    out: (&mut [f64], &mut [f64]),
    f: impl Fn(usize, usize, usize) -> (V, V) + Sync,
) {
    let lanes = V::LANES;
    let channels = shape.padded_channels();
    assert_eq!(shape.block, lanes, "batch norm: block");
    assert!(lanes <= 16, "batch norm: blocks of at most 16 channels");
    assert!(
        out.0.len() >= channels && out.1.len() >= channels,
        "batch norm: one sum per padded channel"
    );
    let units = rows(shape);
    let parts = split::parts(units);
    partials.clear();
    partials.resize(parts * 2 * channels, 0.0);
    partials
        .par_chunks_mut((2 * channels).max(1))
        .enumerate()
        .for_each(|(task, acc)| {
            let Some(range) = split::range(units, parts, task) else {
                return;
            };
            let (acc0, acc1) = acc.split_at_mut(channels);
            let mut row = [[0f32; 16]; 2];
            for r in range {
                let (cb, at) = row_start(shape, r);
                let (s0, s1) = f(cb, at, shape.w);
                s0.store(&mut row[0][..lanes]);
                s1.store(&mut row[1][..lanes]);
                let lane = cb * lanes..(cb + 1) * lanes;
                for ((a0, a1), (v0, v1)) in acc0[lane.clone()]
                    .iter_mut()
                    .zip(&mut acc1[lane])
                    .zip(row[0].iter().zip(&row[1]))
                {
                    *a0 += *v0 as f64;
                    *a1 += *v1 as f64;
                }
            }
        });
    out.0[..channels].fill(0.0);
    out.1[..channels].fill(0.0);
    for part in partials.chunks((2 * channels).max(1)) {
        let (p0, p1) = part.split_at(channels);
        out.0.iter_mut().zip(p0).for_each(|(o, p)| *o += p);
        out.1.iter_mut().zip(p1).for_each(|(o, p)| *o += p);
    }
}

/// Per-channel mean and biased variance of `z` (padded channels included), in f64, in
/// one pass: sums of `z - k` and `(z - k)^2` around a shift `k` per channel (the
/// channel's first value), which keeps the variance exact for activations far from zero
/// (the shifted sums are about the spread, not the offset).
pub fn moments<V: Vector>(shape: Blocked, z: &[f32], partials: &mut Vec<f64>, mean: &mut [f64], var: &mut [f64]) {
    assert_eq!(z.len(), shape.len(), "batch norm: input length");
    let b = V::LANES;
    let count = (shape.n * shape.h * shape.w).max(1) as f64;
    if shape.is_empty() {
        mean.fill(0.0);
        var.fill(0.0);
        return;
    }
    let shift = |cb: usize| V::load(&z[shape.at(0, cb, 0, 0)..]);
    channel_sums::<V>(shape, partials, (&mut *mean, &mut *var), |cb, at, w| {
        let k = shift(cb);
        let (mut s, mut q) = (V::ZERO, V::ZERO);
        for px in z[at..at + w * b].chunks_exact(b) {
            let d = V::load(px) - k;
            s = s + d;
            q = d.mul_add(d, q);
        }
        (s, q)
    });
    for cb in 0..shape.blocks() {
        let mut k = [0f32; 16];
        shift(cb).store(&mut k[..b]);
        for (lane, &kv) in k[..b].iter().enumerate() {
            let c = cb * b + lane;
            let d = mean[c] / count;
            mean[c] = kv as f64 + d;
            var[c] = (var[c] / count - d * d).max(0.0);
        }
    }
}

/// `y = scale * z + shift` per channel, plus `residual` when given (a block's shortcut,
/// added before its last ReLU), then `max(0, y)` with `relu` (NaN stays NaN). `scale` and
/// `shift` hold one value per padded channel.
pub fn apply<V: Vector>(
    shape: Blocked,
    z: &[f32],
    scale: &[f32],
    shift: &[f32],
    residual: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    assert_eq!(z.len(), shape.len(), "batch norm: input length");
    assert_eq!(y.len(), shape.len(), "batch norm: output length");
    if let Some(r) = residual {
        assert_eq!(r.len(), shape.len(), "batch norm: residual length");
    }
    let b = V::LANES;
    let units = rows(shape);
    let out = SharedOut::new(y);
    split::for_each_range(units, |range| {
        for r in range {
            let (cb, at) = row_start(shape, r);
            let (s, t) = (V::load(&scale[cb * b..]), V::load(&shift[cb * b..]));
            for (i, px) in z[at..at + shape.w * b].chunks_exact(b).enumerate() {
                let p = at + i * b;
                let mut v = V::load(px).mul_add(s, t);
                if let Some(res) = residual {
                    v = v + V::load(&res[p..]);
                }
                out.store(p, if relu { v.relu() } else { v });
            }
        }
    });
}

/// The fused ReLU of a batch norm, as its backward sees it: the `scale` and `shift` the
/// forward pass applied (one per padded channel), from which the sign of each output is
/// recomputed bit for bit, so the backward never reads the output itself.
#[derive(Clone, Copy, Debug)]
pub struct FusedRelu<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
}

/// The gradient reaching the batch norm's output `dy`, zeroed where the fused ReLU's
/// output (`z * scale + shift`, as [`apply`] computes it) was not positive.
#[inline(always)]
pub(crate) fn masked<V: Vector>(dy: V, z: V, relu: Option<(V, V)>) -> V {
    match relu {
        Some((s, t)) => dy.relu_mask(z.mul_add(s, t)),
        None => dy,
    }
}

/// The fused ReLU's scale and shift vectors of channel block `cb`.
#[inline(always)]
pub(crate) fn relu_block<V: Vector>(relu: Option<FusedRelu>, cb: usize) -> Option<(V, V)> {
    relu.map(|r| (V::load(&r.scale[cb * V::LANES..]), V::load(&r.shift[cb * V::LANES..])))
}

/// Per-channel `sum(dy)` and `sum(dy * (z - mean))` in f64, `dy` masked by the fused
/// ReLU when given: with `inv_std`, the gradients of beta and gamma.
#[allow(clippy::too_many_arguments)]
pub fn grad_sums<V: Vector>(
    shape: Blocked,
    dy: &[f32],
    relu: Option<FusedRelu>,
    z: &[f32],
    mean: &[f32],
    partials: &mut Vec<f64>,
    sum_dy: &mut [f64],
    sum_dy_zc: &mut [f64],
) {
    assert_eq!(dy.len(), shape.len(), "batch norm backward: gradient length");
    assert_eq!(z.len(), shape.len(), "batch norm backward: input length");
    let b = V::LANES;
    channel_sums::<V>(shape, partials, (sum_dy, sum_dy_zc), |cb, at, w| {
        let m = V::load(&mean[cb * b..]);
        let r = relu_block::<V>(relu, cb);
        let (mut s, mut sz) = (V::ZERO, V::ZERO);
        for i in 0..w {
            let p = at + i * b;
            let zv = V::load(&z[p..]);
            let d = masked(V::load(&dy[p..]), zv, r);
            s = s + d;
            sz = d.mul_add(zv - m, sz);
        }
        (s, sz)
    });
}

/// The gradient through the ReLU whose output was `y` into `dx` (`dy` where `y > 0`, else
/// 0, see [`Vector::relu_mask`]), and of `dx` the sums of [`grad_sums`] for the batch norm
/// (without a fused ReLU) whose input was `z`: one pass where the two took two. A block's
/// last batch norm sees the block's final ReLU this way when no backward-data gathers
/// its sums.
#[allow(clippy::too_many_arguments)]
pub fn relu_backward_grad_sums<V: Vector>(
    shape: Blocked,
    y: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    z: &[f32],
    mean: &[f32],
    partials: &mut Vec<f64>,
    sum_dy: &mut [f64],
    sum_dy_zc: &mut [f64],
) {
    for (len, what) in [
        (y.len(), "output"),
        (dy.len(), "gradient"),
        (dx.len(), "input gradient"),
        (z.len(), "batch norm input"),
    ] {
        assert_eq!(len, shape.len(), "ReLU backward: {what} length");
    }
    let b = V::LANES;
    let out = SharedOut::new(dx);
    channel_sums::<V>(shape, partials, (sum_dy, sum_dy_zc), |cb, at, w| {
        let m = V::load(&mean[cb * b..]);
        let (mut s, mut sz) = (V::ZERO, V::ZERO);
        for i in 0..w {
            let p = at + i * b;
            let zv = V::load(&z[p..]);
            let d = V::load(&dy[p..]).relu_mask(V::load(&y[p..]));
            out.store(p, d);
            s = s + d;
            sz = d.mul_add(zv - m, sz);
        }
        (s, sz)
    });
}

/// Input gradient of training-mode batch norm, per channel
/// `dz = k * (dy - mean(dy)) - k2 * (z - mean)`, with `dy` masked by the fused ReLU
/// when given; the caller folds the statistics into `k = gamma * inv_std`,
/// `k2 = gamma * inv_std^3 * mean(dy * (z - mean))` and `mdy = mean(dy)`.
#[allow(clippy::too_many_arguments)]
pub fn input_grad<V: Vector>(
    shape: Blocked,
    dy: &[f32],
    relu: Option<FusedRelu>,
    z: &[f32],
    mean: &[f32],
    k: &[f32],
    k2: &[f32],
    mdy: &[f32],
    dz: &mut [f32],
) {
    assert_eq!(dz.len(), shape.len(), "batch norm backward: output length");
    let b = V::LANES;
    let units = rows(shape);
    let out = SharedOut::new(dz);
    split::for_each_range(units, |range| {
        for r in range {
            let (cb, at) = row_start(shape, r);
            let c = cb * b;
            let (m, kk, kk2, md) = (
                V::load(&mean[c..]),
                V::load(&k[c..]),
                V::load(&k2[c..]),
                V::load(&mdy[c..]),
            );
            let rb = relu_block::<V>(relu, cb);
            for i in 0..shape.w {
                let p = at + i * b;
                let zv = V::load(&z[p..]);
                let d = masked(V::load(&dy[p..]), zv, rb);
                let zc = zv - m;
                out.store(p, kk * (d - md) - kk2 * zc);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::norm::{self as nchw, NormGeometry};
    use crate::kernels::test_util::{max_rel_err, random};
    use crate::layout::{from_blocked, to_blocked};
    use crate::rng::Rng;

    /// Forward and backward against the NCHW batch norm of `kernels::norm` (f64 sums),
    /// with a large common offset that a careless f32 variance would lose.
    fn check<V: Vector>() {
        let mut rng = Rng::new(11);
        for (n, c, h, w) in [(2, 19, 3, 5), (3, 16, 4, 4), (1, 40, 7, 2)] {
            let shape = Blocked::new(n, c, h, w, V::LANES);
            let g = NormGeometry {
                batch: n,
                channels: c,
                plane: h * w,
            };
            let plain: Vec<f32> = random(&mut rng, n * c * h * w).iter().map(|v| v + 50.0).collect();
            let mut z = vec![0.0; shape.len()];
            to_blocked(&plain, shape, &mut z);
            let pc = shape.padded_channels();
            let (mut mean, mut var, mut partials) = (vec![0.0; pc], vec![0.0; pc], Vec::new());
            moments::<V>(shape, &z, &mut partials, &mut mean, &mut var);
            let (mut m_ref, mut v_ref) = (vec![0.0; c], vec![0.0; c]);
            nchw::channel_moments(&g, &plain, &mut m_ref, &mut v_ref);
            for ch in 0..c {
                assert!(
                    (mean[ch] - m_ref[ch]).abs() < 1e-6 * m_ref[ch].abs().max(1.0),
                    "mean {ch}"
                );
                assert!((var[ch] - v_ref[ch]).abs() < 1e-5 * v_ref[ch].max(1e-3), "var {ch}");
            }
            // Apply with ReLU, then the backward with the ReLU mask.
            let gamma = random(&mut rng, c);
            let beta = random(&mut rng, c);
            let inv_std: Vec<f32> = v_ref.iter().map(|v| (1.0 / (v + 1e-5).sqrt()) as f32).collect();
            let mu: Vec<f32> = m_ref.iter().map(|&m| m as f32).collect();
            let mut scale = vec![0.0; pc];
            let mut shift = vec![0.0; pc];
            for ch in 0..c {
                scale[ch] = gamma[ch] * inv_std[ch];
                shift[ch] = beta[ch] - mu[ch] * scale[ch];
            }
            let mut y = vec![f32::NAN; shape.len()];
            apply::<V>(shape, &z, &scale, &shift, None, true, &mut y);
            let (mut xhat_ref, mut y_ref) = (vec![0.0; plain.len()], vec![0.0; plain.len()]);
            nchw::normalize(
                &g,
                &plain,
                &mu,
                &inv_std,
                &gamma,
                &beta,
                true,
                &mut xhat_ref,
                &mut y_ref,
            );
            let mut y_plain = vec![0.0; plain.len()];
            from_blocked(&y, shape, &mut y_plain);
            assert!(max_rel_err(&y_plain, &y_ref) < 1e-5);
            // Backward: dy masked by the ReLU against the NCHW kernels on the masked dy.
            let dy_plain = random(&mut rng, plain.len());
            let mut dy = vec![0.0; shape.len()];
            to_blocked(&dy_plain, shape, &mut dy);
            let masked_plain: Vec<f32> = dy_plain
                .iter()
                .zip(&y_ref)
                .map(|(&d, &y)| if y <= 0.0 { 0.0 } else { d })
                .collect();
            let (mut s1, mut s2) = (vec![0.0; pc], vec![0.0; pc]);
            let mut mean_p = vec![0.0; pc];
            mean_p[..c].copy_from_slice(&mu);
            let relu = Some(FusedRelu {
                scale: &scale,
                shift: &shift,
            });
            grad_sums::<V>(shape, &dy, relu, &z, &mean_p, &mut partials, &mut s1, &mut s2);
            let (mut r1, mut r2) = (vec![0.0; c], vec![0.0; c]);
            nchw::grad_sums(&g, &masked_plain, &xhat_ref, &mut r1, &mut r2);
            let count = (n * h * w) as f64;
            let (mut k, mut k2, mut mdy) = (vec![0.0; pc], vec![0.0; pc], vec![0.0; pc]);
            for ch in 0..c {
                assert!((s1[ch] - r1[ch]).abs() < 1e-4 * r1[ch].abs().max(1.0), "sum dy {ch}");
                let dyx = s2[ch] * inv_std[ch] as f64;
                assert!((dyx - r2[ch]).abs() < 1e-4 * r2[ch].abs().max(1.0), "sum dy xhat {ch}");
                let is = inv_std[ch] as f64;
                k[ch] = gamma[ch] * inv_std[ch];
                k2[ch] = (gamma[ch] as f64 * is * is * is * s2[ch] / count) as f32;
                mdy[ch] = (s1[ch] / count) as f32;
            }
            let mut dz = vec![f32::NAN; shape.len()];
            input_grad::<V>(shape, &dy, relu, &z, &mean_p, &k, &k2, &mdy, &mut dz);
            let mut dx_ref = vec![0.0; plain.len()];
            nchw::input_grad(
                &g,
                &masked_plain,
                &xhat_ref,
                &inv_std,
                &gamma,
                &r1,
                &r2,
                true,
                &mut dx_ref,
            );
            let mut dz_plain = vec![0.0; plain.len()];
            from_blocked(&dz, shape, &mut dz_plain);
            let err = max_rel_err(&dz_plain, &dx_ref);
            assert!(err < 1e-4, "input grad {err}");
        }
    }

    #[test]
    fn blocked_batch_norm_matches_the_nchw_kernels_at_every_block() {
        check::<wide::f32x4>();
        check::<wide::f32x8>();
        check::<wide::f32x16>();
    }

    /// The fused ReLU backward and sums against the ReLU backward pass, then the sums'
    /// own pass (bit for bit: the same products summed in the same order).
    #[test]
    fn fused_relu_backward_and_sums_match_the_two_passes() {
        fn run<V: Vector>(rng: &mut Rng) {
            for (n, c, h, w) in [(2, 19, 3, 5), (3, 16, 4, 4)] {
                let shape = Blocked::new(n, c, h, w, V::LANES);
                let pc = shape.padded_channels();
                let (y, dy, z, mean) = (
                    random(rng, shape.len()),
                    random(rng, shape.len()),
                    random(rng, shape.len()),
                    random(rng, pc),
                );
                let mut want = vec![f32::NAN; shape.len()];
                crate::layers::relu::relu_backward(&y, &dy, &mut want);
                let (mut w1, mut w2) = (vec![f64::NAN; pc], vec![f64::NAN; pc]);
                grad_sums::<V>(shape, &want, None, &z, &mean, &mut Vec::new(), &mut w1, &mut w2);
                let mut dx = vec![f32::NAN; shape.len()];
                let (mut s1, mut s2) = (vec![f64::NAN; pc], vec![f64::NAN; pc]);
                relu_backward_grad_sums::<V>(shape, &y, &dy, &mut dx, &z, &mean, &mut Vec::new(), &mut s1, &mut s2);
                assert_eq!(dx, want, "{n}x{c}x{h}x{w} at {} lanes", V::LANES);
                assert_eq!((s1, s2), (w1, w2), "{n}x{c}x{h}x{w} at {} lanes", V::LANES);
            }
        }
        let mut rng = Rng::new(12);
        run::<wide::f32x4>(&mut rng);
        run::<wide::f32x8>(&mut rng);
        run::<wide::f32x16>(&mut rng);
    }
}
