//! Backward-filter (weight gradient) of 3x3 stride-1 pad-1 convolutions by Winograd on the
//! channel-blocked layout: the adjoint of [`super::winograd`]'s forward pass, as oneDNN's
//! `jit_avx512_core_fp32_wino_conv_4x3` computes its weight gradient.
//!
//! Per tile and channel pair the forward pass is `Y = A^T [ (G g G^T) .* (B^T d B) ] A`,
//! so the gradient of the filter is `dg = G^T [ sum over tiles (A dY A^T) .* (B^T d B) ] G`:
//! the input tiles `V = B^T d B` (the forward's transform), the output-gradient tiles
//! `E = A dY A^T` (`m x m` in, `a x a` out, zero beyond the image), and for each of the
//! `a^2` positions `xi` one matrix product `W[xi] (K x C) = E[xi] (K x T) V[xi]^T (T x C)`
//! reducing over all `T` tiles of the batch, then one `G^T W G` per filter at the end.
//! F(4x4) does 36 products per 4x4 tile where the direct kernel does 144 (16 pixels x 9
//! taps), F(2x2) 16 per 2x2 tile against 36.
//!
//! # Schedule
//! The batch's tiles are cut into [`split::parts`] ranges, one rayon task each, each with
//! its own `W` (`a^2 x Kp x Cp` partial sums, from [`with_partials`]). A task walks its
//! range in groups of tiles sized so that the group's `V` and `E` stay in the L2 cache,
//! transforms them into per-thread scratch (vertical SIMD over channel blocks, as the
//! forward), and adds their products into `W` with a register-blocked micro-kernel:
//! `R` output channels x `NC` input-channel blocks of vector accumulators (16 x 1 and
//! 8 x 3 with 16 lanes), one vector load of `V` per block and one broadcast of `E` per
//! output channel for each tile. The partials are then summed in range order and
//! transformed, one task per output channel: deterministic for a given thread count.
//!
//! # API
//! - [`winograd_filter_grad`]`::<V>(g, tile, input, dy, dw)`: `dw += dL/dW`, `input` and
//!   `dy` in blocks of `V::LANES`, `dw` OIHW; its twin is the direct definition,
//!   [`super::filter_grad::filter_grad_naive_with_block`], which the tests compare it with.
//! - [`partial_floats`]: the partial sums a call needs, by which the plan decides where
//!   the kernel applies.

use crate::kernels::blocked::winograd::{input_transform, position_stride, Tiling};
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::scratch::{with_partials, with_scratch};
use crate::kernels::split;
use crate::kernels::winograd::WinogradTile;
use crate::layout::Blocked;
use crate::simd::Vector;
use rayon::prelude::*;

/// Floats of one group's `V` and `E` to aim for: a quarter of the 1 MB L2 per core,
/// leaving room for the partial sums `W` that every group adds to.
const GROUP_FLOATS: usize = 64 << 10;

/// Fewest and most tiles per group: below the first each accumulator load and store of
/// the micro-kernel feeds too few FMAs.
const MIN_GROUP_TILES: usize = 16;
const MAX_GROUP_TILES: usize = 256;

/// Input-channel blocks per micro-kernel call with 16 lanes and more than one block:
/// 8 output channels x 3 blocks = 24 accumulators of the 32 AVX-512 registers.
const NC_WIDE: usize = 3;

/// Partial sums of one task: `a^2 x Kp x Cp` floats.
fn task_floats(g: &ConvGeometry, tile: WinogradTile, lanes: usize) -> usize {
    tile.positions() * g.out_channels.next_multiple_of(lanes) * g.in_channels.next_multiple_of(lanes)
}

/// How many tasks (each with its own partial sums) a call of `tiles` tiles is cut into.
pub fn tasks(tiles: usize) -> usize {
    split::parts(tiles.div_ceil(MIN_GROUP_TILES))
}

/// Floats of partial sums a call of [`winograd_filter_grad`] on `g` uses with vectors of
/// `lanes`: the plan keeps the kernel to layers where this stays small.
pub fn partial_floats(g: &ConvGeometry, tile: WinogradTile, lanes: usize) -> usize {
    let tiles = g.batch * g.out_h.div_ceil(tile.m()) * g.out_w.div_ceil(tile.m());
    tasks(tiles) * task_floats(g, tile, lanes)
}

fn check_geometry(g: &ConvGeometry) {
    assert!(
        g.kernel_h == 3 && g.kernel_w == 3 && g.stride == 1 && g.pad == 1,
        "winograd filter gradient: only 3x3 stride-1 pad-1 convolutions, found {g:?}"
    );
    assert_eq!(
        (g.out_h, g.out_w),
        (g.in_h, g.in_w),
        "winograd filter gradient: output size"
    );
}

/// `dw += dL/dW` of a 3x3 stride-1 pad-1 convolution `g` by Winograd `tile`: `input` is
/// `Blocked { g.batch, g.in_channels, g.in_h, g.in_w, V::LANES }`, `dy` the same with
/// `g.out_channels`, `dw` OIHW. Padding channels of `input` and `dy` are ignored.
pub fn winograd_filter_grad<V: Vector>(
    g: &ConvGeometry,
    tile: WinogradTile,
    input: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) {
    check_geometry(g);
    let l = V::LANES;
    let xs = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, l);
    let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, l);
    assert_eq!(input.len(), xs.len(), "winograd filter gradient: input length");
    assert_eq!(dy.len(), ys.len(), "winograd filter gradient: dy length");
    assert_eq!(
        dw.len(),
        g.out_channels * g.in_channels * 9,
        "winograd filter gradient: dw length"
    );
    match tile {
        WinogradTile::F2 => grad_impl::<V, 2, 4>(g, tile, xs, ys, input, dy, dw),
        WinogradTile::F4 => grad_impl::<V, 4, 6>(g, tile, xs, ys, input, dy, dw),
    }
}

fn grad_impl<V: Vector, const M: usize, const A: usize>(
    g: &ConvGeometry,
    tile: WinogradTile,
    xs: Blocked,
    ys: Blocked,
    input: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) {
    let l = V::LANES;
    let tiling = Tiling {
        cols: xs.w.div_ceil(M),
        per_image: xs.h.div_ceil(M) * xs.w.div_ceil(M),
    };
    let tiles = xs.n * tiling.per_image;
    if tiles == 0 || dw.is_empty() {
        return;
    }
    let (icb, ocb) = (xs.blocks(), ys.blocks());
    let per_task = task_floats(g, tile, l);
    let parts = tasks(tiles);
    let group = (GROUP_FLOATS / (A * A * (icb + ocb) * l)).clamp(MIN_GROUP_TILES, MAX_GROUP_TILES);
    with_partials(parts * per_task, |partials| {
        partials.par_chunks_mut(per_task).enumerate().for_each(|(p, w)| {
            w.fill(0.0);
            let range = split::ranges(tiles, parts).nth(p).unwrap_or(0..0);
            let mut t0 = range.start;
            while t0 < range.end {
                let tn = group.min(range.end - t0);
                let (vs, es) = (position_stride(icb * tn * l), position_stride(ocb * tn * l));
                with_scratch(A * A * (vs + es), |s| {
                    let (v, e) = s.split_at_mut(A * A * vs);
                    input_transform::<V, M, A>(xs, &tiling, input, t0, tn, v);
                    dy_transform::<V, M, A>(ys, &tiling, dy, t0, tn, e);
                    products::<V, A>(icb, ocb, tn, v, e, w);
                });
                t0 += tn;
            }
        });
        let partials = &*partials;
        dw.par_chunks_mut(g.in_channels * 9).enumerate().for_each(|(k, dwk)| {
            filter_transform::<V, A>(tile, icb, ocb, k, partials, per_task, dwk);
        });
    });
}

/// `o = A y` for one column (or row) of `M` output-gradient vectors, `A` values out (the
/// transpose of the forward's output transform; matrices in [`super::winograd`]).
#[inline(always)]
fn dy_1d<V: Vector, const M: usize, const A: usize>(y: &[V; M]) -> [V; A] {
    let mut o = [V::ZERO; A];
    if A == 4 {
        o[0] = y[0];
        o[1] = y[0] + y[1];
        o[2] = y[0] - y[1];
        o[3] = V::ZERO - y[1];
    } else {
        let even = y[0] + y[2];
        let odd = y[1] + y[3];
        let even4 = y[2].mul_add(V::splat(4.0), y[0]);
        let odd4 = y[3].mul_add(V::splat(8.0), y[1] * V::splat(2.0));
        o[0] = y[0];
        o[1] = even + odd;
        o[2] = even - odd;
        o[3] = even4 + odd4;
        o[4] = even4 - odd4;
        o[5] = y[3];
    }
    o
}

/// `E[xi][ocb][t][lane] = (A dY A^T)[xi]` of tiles `t0..t0 + tn` of the batch, every
/// output-channel block; output pixels beyond the image count as zero.
#[inline(never)]
fn dy_transform<V: Vector, const M: usize, const A: usize>(
    ys: Blocked,
    tl: &Tiling,
    dy: &[f32],
    t0: usize,
    tn: usize,
    e: &mut [f32],
) {
    let l = V::LANES;
    let ocb = ys.blocks();
    let row = ys.w * l;
    let xi_stride = position_stride(ocb * tn * l);
    assert_eq!(dy.len(), ys.len());
    assert!(e.len() >= A * A * xi_stride);
    let (dp, ep) = (dy.as_ptr(), e.as_mut_ptr());
    for t in 0..tn {
        let (n, oy, ox) = tl.tile::<M>(t0 + t);
        let (rows, cols) = ((ys.h - oy).min(M), (ys.w - ox).min(M));
        let whole = rows == M && cols == M;
        for ob in 0..ocb {
            let base = ys.at(n, ob, oy, ox);
            let mut d = [[V::ZERO; M]; M];
            // Constant loop bounds so that `d` stays in registers.
            for (i, di) in d.iter_mut().enumerate() {
                for (j, dij) in di.iter_mut().enumerate() {
                    if whole || (i < rows && j < cols) {
                        // SAFETY: pixel (oy + i, ox + j) is inside the image, so its vector
                        // lies inside `dy` (whose length is checked above).
                        *dij = unsafe { V::load_at(dp, base + i * row + j * l) };
                    }
                }
            }
            // Columns, then rows.
            let mut tcol = [[V::ZERO; M]; A];
            for j in 0..M {
                let col: [V; M] = core::array::from_fn(|i| d[i][j]);
                let r = dy_1d::<V, M, A>(&col);
                for (p, tp) in tcol.iter_mut().enumerate() {
                    tp[j] = r[p];
                }
            }
            for (p, tp) in tcol.iter().enumerate() {
                let r = dy_1d::<V, M, A>(tp);
                for (q, rq) in r.iter().enumerate() {
                    // SAFETY: `xi < A * A`, `ob < ocb`, `t < tn`: inside `e` (checked above).
                    unsafe { rq.store_at(ep, (p * A + q) * xi_stride + (ob * tn + t) * l) };
                }
            }
        }
    }
}

/// `W[xi][k][c] += sum_t E[xi][k / L][t][k % L] V[xi][c / L][t][c % L]` over the group's
/// `tn` tiles, every position, output channel and input channel (padding ones included).
#[inline(never)]
fn products<V: Vector, const A: usize>(icb: usize, ocb: usize, tn: usize, v: &[f32], e: &[f32], w: &mut [f32]) {
    let l = V::LANES;
    let (cp, kp) = (icb * l, ocb * l);
    let (vs, es) = (position_stride(icb * tn * l), position_stride(ocb * tn * l));
    assert!(v.len() >= A * A * vs && e.len() >= A * A * es && w.len() >= A * A * kp * cp);
    // Output channels per call: every lane of a block with 16 lanes and one input block,
    // else 8; narrow vectors (16 registers) take one block of their lanes at a time.
    let (r, nc_most) = match (l, icb) {
        (16, 1) => (16, 1),
        (16, _) => (8, NC_WIDE),
        _ => (l, 1),
    };
    for xi in 0..A * A {
        let (v_xi, e_xi) = (&v[xi * vs..], &e[xi * es..]);
        let w_xi = &mut w[xi * kp * cp..(xi + 1) * kp * cp];
        for kb in 0..ocb {
            for k0 in (0..l).step_by(r) {
                let mut cb = 0;
                while cb < icb {
                    let nc = nc_most.min(icb - cb);
                    // SAFETY: `E` rows `kb * tn * l + t * l + k0 + r' < (kb + 1) * tn * l`
                    // for `t < tn`, `r' < r <= l - k0`; `V` blocks `cb..cb + nc <= icb` of
                    // `tn * l`; `W` rows `kb * l + k0 + r' < kp` of `cp` floats, columns
                    // `cb * l .. (cb + nc) * l <= cp`: all inside the slices (asserted above).
                    unsafe {
                        micro_dispatch::<V>(
                            r,
                            nc,
                            e_xi.as_ptr().add(kb * tn * l + k0),
                            v_xi.as_ptr().add(cb * tn * l),
                            tn * l,
                            tn,
                            w_xi.as_mut_ptr().add((kb * l + k0) * cp + cb * l),
                            cp,
                        );
                    }
                    cb += nc;
                }
            }
        }
    }
}

/// Picks the micro-kernel instance for `r` output channels and `nc` input blocks.
///
/// # Safety
/// As [`micro`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn micro_dispatch<V: Vector>(
    r: usize,
    nc: usize,
    e: *const f32,
    v: *const f32,
    v_block: usize,
    tn: usize,
    w: *mut f32,
    w_row: usize,
) {
    // SAFETY (every arm): forwarded from the caller.
    unsafe {
        match (r, nc) {
            (16, 1) => micro::<V, 16, 1>(e, v, v_block, tn, w, w_row),
            (8, 1) => micro::<V, 8, 1>(e, v, v_block, tn, w, w_row),
            (8, 2) => micro::<V, 8, 2>(e, v, v_block, tn, w, w_row),
            (8, 3) => micro::<V, 8, 3>(e, v, v_block, tn, w, w_row),
            (4, 1) => micro::<V, 4, 1>(e, v, v_block, tn, w, w_row),
            _ => unreachable!("no micro-kernel for {r} x {nc}"),
        }
    }
}

/// `R` output channels x `NC` input-channel blocks of the product: for every tile `t`,
/// the `NC` vectors `V[b][t]` times the broadcast values `E[t][r]`, accumulated in
/// registers and added to `W` at the end.
///
/// # Safety
/// `e + t * L + r` for `t < tn`, `r < R`; `v + b * v_block + t * L .. + L` for `b < NC`,
/// `t < tn`; and `w + r * w_row + b * L .. + L` (read and written) must lie inside live
/// allocations, `w` not overlapping the others.
#[inline(always)]
unsafe fn micro<V: Vector, const R: usize, const NC: usize>(
    e: *const f32,
    v: *const f32,
    v_block: usize,
    tn: usize,
    w: *mut f32,
    w_row: usize,
) {
    let l = V::LANES;
    let mut acc = [[V::ZERO; NC]; R];
    for t in 0..tn {
        // SAFETY (whole loop body): in bounds by the function's contract.
        unsafe {
            let vv: [V; NC] = core::array::from_fn(|b| V::load_at(v, b * v_block + t * l));
            let et = e.add(t * l);
            for (r, ar) in acc.iter_mut().enumerate() {
                let x = V::splat(*et.add(r));
                for (a, vb) in ar.iter_mut().zip(&vv) {
                    *a = vb.mul_add(x, *a);
                }
            }
        }
    }
    for (r, ar) in acc.iter().enumerate() {
        for (b, a) in ar.iter().enumerate() {
            let at = r * w_row + b * l;
            // SAFETY: in bounds and unshared by the function's contract.
            unsafe { (*a + V::load_at(w, at)).store_at(w, at) };
        }
    }
}

/// `dw[k] += G^T W[k] G` for output channel `k`: the partial sums of every task added in
/// task order, then transformed vertically over blocks of input channels; padding input
/// channels are dropped.
fn filter_transform<V: Vector, const A: usize>(
    tile: WinogradTile,
    icb: usize,
    ocb: usize,
    k: usize,
    partials: &[f32],
    per_task: usize,
    dwk: &mut [f32],
) {
    let l = V::LANES;
    let (cp, kp) = (icb * l, ocb * l);
    let channels = dwk.len() / 9;
    let gm = tile.g();
    let gv: [[V; 3]; A] = core::array::from_fn(|i| core::array::from_fn(|s| V::splat(gm[i][s] as f32)));
    let mut lanes = [0f32; 16];
    for cb in 0..icb {
        let mut wk = [[V::ZERO; A]; A];
        for task in partials.chunks_exact(per_task) {
            for (i, wi) in wk.iter_mut().enumerate() {
                for (j, wij) in wi.iter_mut().enumerate() {
                    let at = ((i * A + j) * kp + k) * cp + cb * l;
                    *wij = *wij + V::load(&task[at..]);
                }
            }
        }
        // t[i][s] = sum_j W[i][j] G[j][s]; out[r][s] = sum_i G[i][r] t[i][s].
        let mut t = [[V::ZERO; 3]; A];
        for (ti, wi) in t.iter_mut().zip(&wk) {
            for (s, tis) in ti.iter_mut().enumerate() {
                *tis = wi.iter().zip(&gv).fold(V::ZERO, |acc, (w, gj)| w.mul_add(gj[s], acc));
            }
        }
        for r in 0..3 {
            for s in 0..3 {
                let o = t
                    .iter()
                    .zip(&gv)
                    .fold(V::ZERO, |acc, (ti, gi)| ti[s].mul_add(gi[r], acc));
                o.store(&mut lanes[..l]);
                for (lane, &value) in lanes[..l].iter().enumerate() {
                    let c = cb * l + lane;
                    if c < channels {
                        dwk[c * 9 + r * 3 + s] += value;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::blocked::filter_grad::filter_grad_naive_with_block;
    use crate::kernels::test_util::{max_rel_err, random, square_conv, zoo_convs};
    use crate::layout::to_blocked;
    use crate::rng::Rng;
    use wide::{f32x16, f32x4, f32x8};

    const TILES: [WinogradTile; 2] = [WinogradTile::F2, WinogradTile::F4];

    /// Largest relative error accepted against the f64 definition: F(4x4)'s transforms
    /// (factors up to 8 in `A`, 1/24 in `G`) cost about a decimal digit, as in the forward.
    fn tolerance(tile: WinogradTile) -> f32 {
        match tile {
            WinogradTile::F2 => 2e-5,
            WinogradTile::F4 => 2e-4,
        }
    }

    /// `t` in blocks of `lanes`, its padding channels holding finite garbage that the
    /// kernel must ignore.
    fn blocked(t: &[f32], l: Blocked, garbage: f32) -> Vec<f32> {
        let mut b = vec![0.0; l.len()];
        to_blocked(t, l, &mut b);
        for n in 0..l.n {
            for c in l.c..l.padded_channels() {
                for y in 0..l.h {
                    for x in 0..l.w {
                        b[l.index(n, c, y, x)] = garbage + (c + y + x) as f32;
                    }
                }
            }
        }
        b
    }

    /// The kernel and the f64 definition on random data from `seed`, starting from a
    /// random `dw` (so that the check covers the adding); returns the relative error.
    fn check<V: Vector>(g: &ConvGeometry, tile: WinogradTile, seed: u64) -> f32 {
        let l = V::LANES;
        let mut rng = Rng::new(seed);
        let x = random(&mut rng, g.batch * g.in_image());
        let dy = random(&mut rng, g.batch * g.out_image());
        let dw0 = random(&mut rng, g.out_channels * g.in_channels * 9);
        let xb = blocked(&x, Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, l), -1e3);
        let dyb = blocked(&dy, Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, l), 1e3);
        let mut want = dw0.clone();
        filter_grad_naive_with_block(g, &xb, l, &dyb, l, &mut want);
        let mut got = dw0;
        winograd_filter_grad::<V>(g, tile, &xb, &dyb, &mut got);
        let e = max_rel_err(&got, &want);
        assert!(e < tolerance(tile), "{tile:?} {g:?} at {l} lanes: {e:e}");
        e
    }

    #[test]
    fn winograd_filter_grad_matches_the_definition_on_odd_shapes_at_every_block() {
        let shapes = [
            (1, 3, 5, 1, 1),
            (2, 5, 3, 2, 3),
            (3, 19, 33, 5, 7),
            (1, 33, 19, 9, 9),
            (2, 33, 5, 13, 6),
            (1, 19, 3, 6, 13),
            (3, 40, 70, 5, 6),
            (2, 16, 16, 17, 9),
        ];
        for (i, &(n, c, k, h, w)) in shapes.iter().enumerate() {
            let g = square_conv(n, c, h, w, k, 3, 1, 1);
            for tile in TILES {
                let seed = 10 + i as u64;
                let e = check::<f32x4>(&g, tile, seed)
                    .max(check::<f32x8>(&g, tile, seed))
                    .max(check::<f32x16>(&g, tile, seed));
                println!("{g:?} {tile:?}: {e:.2e}");
            }
        }
    }

    #[test]
    fn winograd_filter_grad_matches_the_definition_on_resnet20_convs() {
        for (i, (g, names)) in zoo_convs("resnet20", 3, 32).into_iter().enumerate() {
            if g.kernel_h != 3 || g.stride != 1 {
                continue;
            }
            for tile in TILES {
                let e = check::<f32x16>(&g, tile, 30 + i as u64).max(check::<f32x4>(&g, tile, 30 + i as u64));
                println!("resnet20 {} {tile:?}: {e:.2e}", names[0]);
            }
        }
    }

    #[test]
    fn winograd_filter_grad_matches_the_definition_on_resnet50_convs() {
        // Batch 1 at 64x64 keeps the f64 definition quick; the shapes are ResNet-50's
        // channel counts at 16, 8, 4 and 2 pixels a side, with partial edge tiles.
        for (i, (g, names)) in zoo_convs("resnet50", 1, 64).into_iter().enumerate() {
            if g.kernel_h != 3 || g.stride != 1 {
                continue;
            }
            for tile in TILES {
                let e = check::<f32x16>(&g, tile, 50 + i as u64);
                println!("resnet50 {} {tile:?}: {e:.2e}", names[0]);
            }
        }
    }

    /// On 1 to 3 threads: right each time, and bit-identical when repeated on the same
    /// thread count.
    #[test]
    fn winograd_filter_grad_is_deterministic_on_every_thread_count() {
        let g = square_conv(6, 16, 10, 9, 32, 3, 1, 1);
        let l = 16;
        let mut rng = Rng::new(7);
        let xb = random(&mut rng, Blocked::new(g.batch, 16, 10, 9, l).len());
        let dyb = random(&mut rng, Blocked::new(g.batch, 32, 10, 9, l).len());
        let mut want = vec![0.0; 32 * 16 * 9];
        filter_grad_naive_with_block(&g, &xb, l, &dyb, l, &mut want);
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a pool");
            let run = || {
                let mut dw = vec![0.0; want.len()];
                pool.install(|| winograd_filter_grad::<f32x16>(&g, WinogradTile::F4, &xb, &dyb, &mut dw));
                dw
            };
            let (a, b) = (run(), run());
            assert!(a == b, "two runs on {threads} threads differ");
            assert!(max_rel_err(&a, &want) < tolerance(WinogradTile::F4));
        }
    }

    #[test]
    fn winograd_filter_grad_propagates_nan_in_dy() {
        // A NaN in dY of output channel 2 reaches every filter of that channel (every
        // tile position is summed into every tap) and no other.
        let g = square_conv(1, 5, 6, 7, 4, 3, 1, 1);
        let l = 8;
        let mut rng = Rng::new(9);
        let xb = random(&mut rng, Blocked::new(1, 5, 6, 7, l).len());
        let ys = Blocked::new(1, 4, 6, 7, l);
        let mut dyb = random(&mut rng, ys.len());
        for c in 4..l {
            for y in 0..6 {
                for x in 0..7 {
                    dyb[ys.index(0, c, y, x)] = 0.0;
                }
            }
        }
        dyb[ys.index(0, 2, 3, 4)] = f32::NAN;
        for tile in TILES {
            let mut dw = vec![0.0; 4 * 5 * 9];
            winograd_filter_grad::<f32x8>(&g, tile, &xb, &dyb, &mut dw);
            for (i, v) in dw.iter().enumerate() {
                assert_eq!(v.is_nan(), i / 45 == 2, "{tile:?}: dw[{i}] = {v}");
            }
        }
    }
}
