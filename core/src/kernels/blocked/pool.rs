//! Max pooling, global average pooling and the option-A shortcut on the blocked layout,
//! each a whole vector of channels at a time, each beside its scalar twin.

use crate::kernels::pool::PoolGeometry;
use crate::kernels::shared_out::SharedOut;
use crate::kernels::split;
use crate::layout::Blocked;
use crate::simd::Vector;
use rayon::prelude::*;

/// Max pooling of `x` (layout `input`, `V::LANES` channels a block) into `y` (the same
/// layout at the output size of `g`). Padding never wins (PyTorch pads with -inf); NaN
/// propagates. Output rows (of every channel block) are split among tasks, as the
/// convolutions around it split a single image (see `split::team`).
pub fn max_pool<V: Vector>(g: &PoolGeometry, input: Blocked, x: &[f32], y: &mut [f32]) {
    let out = input.with_hw(g.out_h, g.out_w);
    assert_eq!(input.block, V::LANES, "max_pool: block");
    assert_eq!(x.len(), input.len(), "max_pool: input length");
    assert_eq!(y.len(), out.len(), "max_pool: output length");
    let b = V::LANES;
    if input.plane_len() == 0 {
        return;
    }
    let y = SharedOut::new(y);
    let row_len = input.w * b;
    split::for_each_range(input.n * g.out_h, |out_rows| {
        for row in out_rows {
            let (n, oy) = (row / g.out_h, row % g.out_h);
            let (y0, y1) = window(oy, g.stride, g.pad, g.kernel, g.in_h);
            for cb in 0..input.blocks() {
                let src = &x[input.at(n, cb, 0, 0)..][..input.plane_len()];
                let rows = &src[y0 * row_len..y1 * row_len];
                let dst = out.at(n, cb, oy, 0);
                for ox in 0..g.out_w {
                    let (x0, x1) = window(ox, g.stride, g.pad, g.kernel, g.in_w);
                    let mut m = V::splat(f32::NEG_INFINITY);
                    if g.kernel == 3 && x1 - x0 == 3 && y1 - y0 == 3 {
                        let at = x0 * b;
                        for r in 0..3 {
                            let row = &rows[r * row_len + at..][..3 * b];
                            m = m
                                .max_nan(V::load(row))
                                .max_nan(V::load(&row[b..]))
                                .max_nan(V::load(&row[2 * b..]));
                        }
                        y.store(dst + ox * b, m);
                        continue;
                    }
                    for row in rows.chunks_exact(row_len) {
                        for px in row[x0 * b..x1 * b].chunks_exact(b) {
                            m = m.max_nan(V::load(px));
                        }
                    }
                    y.store(dst + ox * b, m);
                }
            }
        }
    });
}

/// The input rows (or columns) `start..end` that output position `o` of a window of
/// `kernel` at `stride` with `pad` covers, clipped to `0..size`.
fn window(o: usize, stride: usize, pad: usize, kernel: usize, size: usize) -> (usize, usize) {
    let start = (o * stride).saturating_sub(pad);
    let end = (o * stride + kernel).saturating_sub(pad).min(size);
    (start, end)
}

/// The scalar twin of [`max_pool`], any block size.
pub fn max_pool_naive(g: &PoolGeometry, input: Blocked, x: &[f32], y: &mut [f32]) {
    let out = input.with_hw(g.out_h, g.out_w);
    for n in 0..input.n {
        for c in 0..input.padded_channels() {
            for oy in 0..g.out_h {
                for ox in 0..g.out_w {
                    let mut m = f32::NEG_INFINITY;
                    for ky in 0..g.kernel {
                        for kx in 0..g.kernel {
                            let (iy, ix) = (
                                (oy * g.stride + ky) as isize - g.pad as isize,
                                (ox * g.stride + kx) as isize - g.pad as isize,
                            );
                            if iy >= 0 && ix >= 0 && (iy as usize) < g.in_h && (ix as usize) < g.in_w {
                                let v = x[input.index(n, c, iy as usize, ix as usize)];
                                if !m.is_nan() && (v.is_nan() || v > m) {
                                    m = v;
                                }
                            }
                        }
                    }
                    y[out.index(n, c, oy, ox)] = m;
                }
            }
        }
    }
}

/// Global average pooling: `y[n][c]` (plain `n x c`, the classifier's input) is the mean
/// of channel `c` of image `n` of `x` (layout `input`). Sums run in f32 vectors per
/// pixel in order, so the result does not depend on the thread count.
pub fn global_avg_pool<V: Vector>(input: Blocked, x: &[f32], y: &mut [f32]) {
    assert_eq!(input.block, V::LANES, "global_avg_pool: block");
    assert_eq!(x.len(), input.len(), "global_avg_pool: input length");
    assert_eq!(y.len(), input.n * input.c, "global_avg_pool: output length");
    let inv = 1.0 / (input.h * input.w).max(1) as f32;
    let b = V::LANES;
    y.par_chunks_mut(input.c.max(1)).enumerate().for_each(|(n, row)| {
        for cb in 0..input.blocks() {
            let plane = &x[input.at(n, cb, 0, 0)..][..input.plane_len()];
            let mut s = V::ZERO;
            for px in plane.chunks_exact(b) {
                s = s + V::load(px);
            }
            let lanes = (s * V::splat(inv)).to_lanes();
            let c0 = cb * b;
            let take = b.min(input.c - c0);
            row[c0..c0 + take].copy_from_slice(&lanes[..take]);
        }
    });
}

/// The scalar twin of [`global_avg_pool`], in f64.
pub fn global_avg_pool_naive(input: Blocked, x: &[f32], y: &mut [f32]) {
    for n in 0..input.n {
        for c in 0..input.c {
            let mut s = 0f64;
            for yy in 0..input.h {
                for xx in 0..input.w {
                    s += x[input.index(n, c, yy, xx)] as f64;
                }
            }
            y[n * input.c + c] = (s / (input.h * input.w).max(1) as f64) as f32;
        }
    }
}

/// The option-A shortcut (He et al. 2015, section 4.2, as the CIFAR re-implementations
/// do it): `y[n, c + pad] = x[n, c, ::stride, ::stride]` with `pad = (out - in) / 2`
/// channels of zeros before and after. The channel offset need not be a whole block:
/// each input block moves as at most two runs of lanes (see [`shortcut_runs`]).
pub fn zero_pad_shortcut(input: Blocked, x: &[f32], output: Blocked, stride: usize, y: &mut [f32]) {
    assert_eq!(x.len(), input.len(), "zero_pad_shortcut: input length");
    assert_eq!(y.len(), output.len(), "zero_pad_shortcut: output length");
    assert_eq!(input.block, output.block, "zero_pad_shortcut: block");
    let pad = (output.c - input.c) / 2;
    let image = output.image_len();
    if image == 0 {
        return;
    }
    y.par_chunks_mut(image).enumerate().for_each(|(n, y_img)| {
        y_img.fill(0.0);
        shortcut_runs(input, pad, |cb, src, ob, dst, len| {
            for oy in 0..output.h {
                for ox in 0..output.w {
                    let from = input.at(n, cb, oy * stride, ox * stride) + src;
                    let to = output.at(0, ob, oy, ox) + dst;
                    move_lanes(&mut y_img[to..to + len], &x[from..from + len], false);
                }
            }
        });
    });
}

/// The runs of consecutive lanes that the option-A shortcut moves, in order: `f(cb,
/// src, ob, dst, len)` for input channels `cb * L + src ..+ len`, which are output
/// channels `ob * L + dst ..+ len` (`L` the block).
fn shortcut_runs(input: Blocked, pad: usize, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
    let l = input.block;
    let mut c = 0;
    while c < input.c {
        let (src, dst) = (c % l, (c + pad) % l);
        let len = (l - src).min(l - dst).min(input.c - c);
        f(c / l, src, (c + pad) / l, dst, len);
        c += len;
    }
}

/// `d = s` (or `d += s` with `add`), with fixed-length loops for the usual runs so that
/// they compile to a few vector moves rather than a `memcpy` call per pixel.
#[inline(always)]
fn move_lanes(d: &mut [f32], s: &[f32], add: bool) {
    #[inline(always)]
    fn fixed<const N: usize>(d: &mut [f32], s: &[f32], add: bool) {
        let (d, s) = (&mut d[..N], &s[..N]);
        for i in 0..N {
            d[i] = if add { d[i] + s[i] } else { s[i] };
        }
    }
    match d.len() {
        16 => fixed::<16>(d, s, add),
        8 => fixed::<8>(d, s, add),
        4 => fixed::<4>(d, s, add),
        _ => {
            for (d, s) in d.iter_mut().zip(s) {
                *d = if add { *d + s } else { *s };
            }
        }
    }
}

/// Training max pooling: [`max_pool`] that also records, per output value, the index
/// (`iy * in_w + ix`) of the input pixel that won, for [`max_pool_backward`]. The first
/// maximum wins and NaN propagates, as in PyTorch; one lane at a time (it runs once per
/// network, on the stem).
pub fn max_pool_with_argmax(g: &PoolGeometry, input: Blocked, x: &[f32], y: &mut [f32], argmax: &mut [u32]) {
    let out = input.with_hw(g.out_h, g.out_w);
    assert_eq!(x.len(), input.len(), "max_pool_with_argmax: input length");
    assert_eq!(y.len(), out.len(), "max_pool_with_argmax: output length");
    assert_eq!(argmax.len(), out.len(), "max_pool_with_argmax: argmax length");
    let b = input.block;
    let (ip, op) = (input.plane_len(), out.plane_len());
    if op == 0 {
        return;
    }
    y.par_chunks_mut(op)
        .zip(argmax.par_chunks_mut(op))
        .zip(x.par_chunks(ip.max(1)))
        .for_each(|((y, am), x)| {
            for oy in 0..g.out_h {
                let (y0, y1) = window(oy, g.stride, g.pad, g.kernel, g.in_h);
                for ox in 0..g.out_w {
                    let (x0, x1) = window(ox, g.stride, g.pad, g.kernel, g.in_w);
                    for lane in 0..b {
                        let (mut best, mut best_i) = (f32::NEG_INFINITY, 0u32);
                        for iy in y0..y1 {
                            for ix in x0..x1 {
                                let v = x[(iy * g.in_w + ix) * b + lane];
                                if v > best || v.is_nan() {
                                    best = v;
                                    best_i = (iy * g.in_w + ix) as u32;
                                }
                            }
                        }
                        let o = (oy * g.out_w + ox) * b + lane;
                        y[o] = best;
                        am[o] = best_i;
                    }
                }
            }
        });
}

/// `dx` (overwritten): each output gradient of `dy` added to the input pixel that won
/// ([`max_pool_with_argmax`]'s `argmax`). Planes are independent tasks.
pub fn max_pool_backward(input: Blocked, out: Blocked, dy: &[f32], argmax: &[u32], dx: &mut [f32]) {
    assert_eq!(dy.len(), out.len(), "max_pool_backward: gradient length");
    assert_eq!(argmax.len(), out.len(), "max_pool_backward: argmax length");
    assert_eq!(dx.len(), input.len(), "max_pool_backward: input gradient length");
    let b = input.block;
    let (ip, op) = (input.plane_len(), out.plane_len());
    if ip == 0 {
        return;
    }
    dx.par_chunks_mut(ip)
        .zip(dy.par_chunks(op.max(1)))
        .zip(argmax.par_chunks(op.max(1)))
        .for_each(|((dx, dy), am)| {
            dx.fill(0.0);
            for (o, (&d, &i)) in dy.iter().zip(am).enumerate() {
                dx[i as usize * b + o % b] += d;
            }
        });
}

/// The adjoint of [`global_avg_pool`]: `dx[n, c, y, x] = dy[n, c] / (h * w)` (plain
/// `n x c` gradients in, the blocked layout `input` out, padding channels zero).
pub fn global_avg_pool_backward(input: Blocked, dy: &[f32], dx: &mut [f32]) {
    assert_eq!(dy.len(), input.n * input.c, "global_avg_pool_backward: gradient length");
    assert_eq!(dx.len(), input.len(), "global_avg_pool_backward: output length");
    let inv = 1.0 / (input.h * input.w).max(1) as f32;
    let b = input.block;
    assert!(b <= 16, "global_avg_pool_backward: blocks of at most 16 channels");
    let image = input.image_len();
    if image == 0 {
        return;
    }
    dx.par_chunks_mut(image).enumerate().for_each(|(n, img)| {
        let mut block = [0.0f32; 16];
        let lanes = &mut block[..b];
        for cb in 0..input.blocks() {
            for (lane, v) in lanes.iter_mut().enumerate() {
                let c = cb * b + lane;
                *v = if c < input.c { dy[n * input.c + c] * inv } else { 0.0 };
            }
            let plane = &mut img[cb * input.plane_len()..][..input.plane_len()];
            for px in plane.chunks_exact_mut(b) {
                px.copy_from_slice(lanes);
            }
        }
    });
}

/// The adjoint of [`zero_pad_shortcut`]: `dx[n, c, y * s, x * s] += dy[n, c + pad, y, x]`.
pub fn zero_pad_shortcut_backward_add(input: Blocked, dx: &mut [f32], output: Blocked, stride: usize, dy: &[f32]) {
    assert_eq!(dx.len(), input.len(), "zero_pad_shortcut_backward_add: input length");
    assert_eq!(dy.len(), output.len(), "zero_pad_shortcut_backward_add: output length");
    assert_eq!(input.block, output.block, "zero_pad_shortcut_backward_add: block");
    let pad = (output.c - input.c) / 2;
    let image = input.image_len();
    if image == 0 {
        return;
    }
    dx.par_chunks_mut(image).enumerate().for_each(|(n, dx_img)| {
        shortcut_runs(input, pad, |cb, src, ob, dst, len| {
            for oy in 0..output.h {
                for ox in 0..output.w {
                    let to = input.at(0, cb, oy * stride, ox * stride) + src;
                    let from = output.at(n, ob, oy, ox) + dst;
                    move_lanes(&mut dx_img[to..to + len], &dy[from..from + len], true);
                }
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{max_rel_err, random};
    use crate::layout::{from_blocked, to_blocked};
    use crate::rng::Rng;

    fn check_pool<V: Vector>() {
        let mut rng = Rng::new(4);
        for (n, c, h, w) in [(1, 3, 7, 9), (2, 19, 8, 8), (1, 64, 5, 5)] {
            let g = PoolGeometry::new(n, c, h, w, 3, 2, 1).unwrap();
            let mut plain = random(&mut rng, n * c * h * w);
            plain[5] = f32::NAN;
            let input = Blocked::new(n, c, h, w, V::LANES);
            let mut x = vec![0.0; input.len()];
            to_blocked(&plain, input, &mut x);
            let out = input.with_hw(g.out_h, g.out_w);
            let (mut fast, mut slow) = (vec![1.0; out.len()], vec![2.0; out.len()]);
            max_pool::<V>(&g, input, &x, &mut fast);
            max_pool_naive(&g, input, &x, &mut slow);
            let nans = fast.iter().filter(|v| v.is_nan()).count();
            assert!(nans >= 1 && nans == slow.iter().filter(|v| v.is_nan()).count());
            for (a, b) in fast.iter().zip(&slow) {
                assert!(a == b || (a.is_nan() && b.is_nan()), "{a} vs {b}");
            }
            // Against the NCHW pooling of the first design.
            let mut y_ref = vec![0.0; n * c * g.out_h * g.out_w];
            let mut arg = vec![0u32; y_ref.len()];
            crate::kernels::pool::max_pool_forward(&g, &plain, &mut y_ref, &mut arg);
            let mut y_plain = vec![0.0; y_ref.len()];
            from_blocked(&fast, out, &mut y_plain);
            for (a, b) in y_plain.iter().zip(&y_ref) {
                assert!(a == b || (a.is_nan() && b.is_nan()), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn max_pool_matches_its_twin_and_the_nchw_pooling_at_every_block() {
        check_pool::<wide::f32x4>();
        check_pool::<wide::f32x8>();
        check_pool::<wide::f32x16>();
    }

    fn check_gap<V: Vector>() {
        let mut rng = Rng::new(5);
        for (n, c, h, w) in [(2, 19, 3, 5), (1, 64, 8, 8), (3, 2048, 1, 1)] {
            let plain = random(&mut rng, n * c * h * w);
            let input = Blocked::new(n, c, h, w, V::LANES);
            let mut x = vec![0.0; input.len()];
            to_blocked(&plain, input, &mut x);
            let (mut fast, mut slow) = (vec![0.0; n * c], vec![0.0; n * c]);
            global_avg_pool::<V>(input, &x, &mut fast);
            global_avg_pool_naive(input, &x, &mut slow);
            let err = crate::kernels::test_util::max_rel_err(&fast, &slow);
            assert!(err < 1e-6, "{err}");
        }
    }

    #[test]
    fn global_avg_pool_matches_its_f64_twin_at_every_block() {
        check_gap::<wide::f32x4>();
        check_gap::<wide::f32x8>();
        check_gap::<wide::f32x16>();
    }

    #[test]
    fn zero_pad_shortcut_matches_the_nchw_option_a() {
        use crate::layers::Dims;
        let mut rng = Rng::new(6);
        for (block, c, k) in [
            (4, 16, 32),
            (8, 16, 32),
            (16, 16, 32),
            (16, 19, 40),
            (8, 5, 16),
            (4, 7, 9),
        ] {
            let (n, h, w) = (2, 8, 6);
            let plain = random(&mut rng, n * c * h * w);
            let input = Blocked::new(n, c, h, w, block);
            let output = Blocked::new(n, k, 4, 3, block);
            let mut x = vec![0.0; input.len()];
            to_blocked(&plain, input, &mut x);
            let mut y = vec![f32::NAN; output.len()];
            zero_pad_shortcut(input, &x, output, 2, &mut y);
            let mut want = vec![0.0; n * k * 4 * 3];
            crate::layers::shortcut::option_a_forward(
                &plain,
                Dims::new(n, c, h, w),
                Dims::new(n, k, 4, 3),
                2,
                &mut want,
            );
            let mut got = vec![0.0; want.len()];
            from_blocked(&y, output, &mut got);
            assert_eq!(got, want, "block {block}");
            assert!(y.iter().all(|v| !v.is_nan()));
        }
    }

    #[test]
    fn training_pool_and_shortcut_passes_match_the_nchw_layers() {
        use crate::layers::Dims;
        let mut rng = Rng::new(8);
        for block in [4, 8, 16] {
            // Max pooling with argmax and its backward, against the NCHW kernels.
            let (n, c, h, w) = (2, 19, 9, 7);
            let g = PoolGeometry::new(n, c, h, w, 3, 2, 1).unwrap();
            let mut plain = random(&mut rng, n * c * h * w);
            plain[3] = f32::NAN;
            let input = Blocked::new(n, c, h, w, block);
            let out = input.with_hw(g.out_h, g.out_w);
            let mut x = vec![0.0; input.len()];
            to_blocked(&plain, input, &mut x);
            let (mut y, mut am) = (vec![0.0; out.len()], vec![0u32; out.len()]);
            max_pool_with_argmax(&g, input, &x, &mut y, &mut am);
            let op = n * c * g.out_h * g.out_w;
            let (mut y_ref, mut am_ref) = (vec![0.0; op], vec![0u32; op]);
            crate::kernels::pool::max_pool_forward(&g, &plain, &mut y_ref, &mut am_ref);
            let mut y_plain = vec![0.0; op];
            from_blocked(&y, out, &mut y_plain);
            for (a, b) in y_plain.iter().zip(&y_ref) {
                assert!(a == b || (a.is_nan() && b.is_nan()), "{a} vs {b}");
            }
            let dy_plain = random(&mut rng, op);
            let mut dy = vec![0.0; out.len()];
            to_blocked(&dy_plain, out, &mut dy);
            let mut dx = vec![f32::NAN; input.len()];
            max_pool_backward(input, out, &dy, &am, &mut dx);
            let mut dx_ref = vec![0.0; plain.len()];
            crate::kernels::pool::max_pool_backward(&g, &dy_plain, &am_ref, &mut dx_ref);
            let mut dx_plain = vec![0.0; plain.len()];
            from_blocked(&dx, input, &mut dx_plain);
            assert!(max_rel_err(&dx_plain, &dx_ref) < 1e-6, "block {block}");
            // Global average pooling's backward.
            let feats = random(&mut rng, n * c);
            let mut dx = vec![f32::NAN; input.len()];
            global_avg_pool_backward(input, &feats, &mut dx);
            let mut want = vec![0.0; plain.len()];
            crate::kernels::pool::avg_pool_backward(h * w, &feats, &mut want);
            from_blocked(&dx, input, &mut dx_plain);
            assert!(max_rel_err(&dx_plain, &want) < 1e-6);
            assert!(dx.iter().all(|v| v.is_finite()), "padding channels are zero");
            // The option-A shortcut's adjoint, channel offsets on and off the block.
            for (c, k) in [(16, 32), (19, 40), (5, 16)] {
                let (input, output) = (Blocked::new(n, c, 8, 6, block), Blocked::new(n, k, 4, 3, block));
                let dy_plain = random(&mut rng, n * k * 4 * 3);
                let mut dy = vec![0.0; output.len()];
                to_blocked(&dy_plain, output, &mut dy);
                let base = random(&mut rng, n * c * 8 * 6);
                let mut dx = vec![0.0; input.len()];
                to_blocked(&base, input, &mut dx);
                zero_pad_shortcut_backward_add(input, &mut dx, output, 2, &dy);
                let mut want = base.clone();
                crate::layers::shortcut::option_a_backward_add(
                    &dy_plain,
                    Dims::new(n, c, 8, 6),
                    Dims::new(n, k, 4, 3),
                    2,
                    &mut want,
                );
                let mut got = vec![0.0; want.len()];
                from_blocked(&dx, input, &mut got);
                assert_eq!(got, want, "block {block}, {c} -> {k}");
            }
        }
    }
}
