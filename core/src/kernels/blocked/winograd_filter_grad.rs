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
//! Where one `W` outgrows the L2 (ResNet-50's layers from 128 channels at F(4x4) and 256
//! at F(2x2): 2.4 to 38 MB), every group would add its products to a `W` streamed from
//! the L3 or memory. Such a call runs by positions instead: every tile's `V` and `E` into
//! whole-call tensors, then each (position, output block) row block of a single `W`
//! summed over all the call's tiles in registers, stored once (threads over row blocks,
//! so a thread's positions' `V` stays in its L2 across their output blocks). Its sums
//! do not depend on the thread count. Two Zen 4 cores, ResNet-50 b16, ms: the 256-channel
//! layers' F(4x4) 8.3-11.3 (grouped F(2x2) 9.2-9.7 was the plan's best), the
//! 512-channel layers' F(4x4) 10.8 (direct 14.7-17.1 was).
//!
//! # API
//! - [`winograd_filter_grad`]`::<V>(g, tile, input, dy, dw)`: `dw += dL/dW`, `input` and
//!   `dy` in blocks of `V::LANES`, `dw` OIHW; its twin is the direct definition,
//!   [`super::filter_grad::filter_grad_naive_with_block`], which the tests compare it with.
//! - [`partial_floats`] and [`tiles_per_sum`]: the partial sums a call needs and the
//!   tiles each sums, by which the plan decides where the kernel applies.

use crate::kernels::blocked::winograd::{
    input_transform, input_transform_into, position_stride, prefetch_tile, streamed, Span, Tiling, PREFETCH_AHEAD,
};
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::scratch::{with_partials, with_scratch, with_staging};
use crate::kernels::shared_out::SharedOut;
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
fn tasks(tiles: usize) -> usize {
    split::parts(tiles.div_ceil(MIN_GROUP_TILES))
}

/// The tiles of `g` for `tile`.
fn tile_count(g: &ConvGeometry, tile: WinogradTile) -> usize {
    g.batch * g.out_h.div_ceil(tile.m()) * g.out_w.div_ceil(tile.m())
}

/// Floats of the whole-call `V` and `E` of the schedule by positions, laid out as
/// [`grad_by_positions`] lays them out.
fn staging_floats(g: &ConvGeometry, tile: WinogradTile, lanes: usize) -> usize {
    let tiles = tile_count(g, tile);
    let span = |channels: usize| Span::group(channels.div_ceil(lanes), tiles, lanes);
    tile.positions() * (span(g.in_channels).xi + span(g.out_channels).xi)
}

/// Whether a call runs by positions (see the module doc): where one task's partial sums
/// would not stay in the L2 ([`BY_POSITIONS_W_BYTES`]) and the whole call's transformed
/// tensors stay within [`BY_POSITIONS_STAGING_BYTES`].
fn by_positions(g: &ConvGeometry, tile: WinogradTile, lanes: usize) -> bool {
    let bytes = |floats: usize| floats * std::mem::size_of::<f32>();
    bytes(task_floats(g, tile, lanes)) >= BY_POSITIONS_W_BYTES
        && bytes(staging_floats(g, tile, lanes)) <= BY_POSITIONS_STAGING_BYTES
}

/// Bytes of one task's partial sums `W` from which a call runs by positions: the grouped
/// schedule then adds every group's products to a `W` streamed from the L3 or memory.
/// ResNet-50's 3x3 layers from 128 channels with F(4x4) (2.4 MB) and from 256 with F(2x2).
const BY_POSITIONS_W_BYTES: usize = 2 << 20;

/// The most bytes of the whole call's `V` and `E` for which a call runs by positions.
const BY_POSITIONS_STAGING_BYTES: usize = 64 << 20;

/// Floats of partial sums a call of [`winograd_filter_grad`] on `g` uses with vectors of
/// `lanes`: the plan keeps the kernel to layers where this stays small.
pub fn partial_floats(g: &ConvGeometry, tile: WinogradTile, lanes: usize) -> usize {
    if by_positions(g, tile, lanes) {
        task_floats(g, tile, lanes)
    } else {
        tasks(tile_count(g, tile)) * task_floats(g, tile, lanes)
    }
}

/// Tiles whose products one partial sum adds up before it is stored (a task's tiles, or
/// the call's when it runs by positions): the plan wants enough of them that its
/// accumulators' loads and stores are few.
pub fn tiles_per_sum(g: &ConvGeometry, tile: WinogradTile, lanes: usize) -> usize {
    let tiles = tile_count(g, tile);
    if by_positions(g, tile, lanes) {
        tiles
    } else {
        tiles / tasks(tiles)
    }
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
    checked_grad::<V>(g, tile, input, dy, dw, None);
}

/// [`winograd_filter_grad`]'s checks, then the call, by positions as `positions` says
/// (`None`: as [`by_positions`] says; the tests force either schedule).
fn checked_grad<V: Vector>(
    g: &ConvGeometry,
    tile: WinogradTile,
    input: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    positions: Option<bool>,
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
    let positions = positions.unwrap_or_else(|| by_positions(g, tile, l));
    match tile {
        WinogradTile::F2 => grad_impl::<V, 2, 4>(g, tile, xs, ys, input, dy, dw, positions),
        WinogradTile::F4 => grad_impl::<V, 4, 6>(g, tile, xs, ys, input, dy, dw, positions),
    }
}

#[allow(clippy::too_many_arguments)]
fn grad_impl<V: Vector, const M: usize, const A: usize>(
    g: &ConvGeometry,
    tile: WinogradTile,
    xs: Blocked,
    ys: Blocked,
    input: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    positions: bool,
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
    if positions {
        return grad_by_positions::<V, M, A>(g, tile, xs, ys, &tiling, input, dy, dw);
    }
    let per_task = task_floats(g, tile, l);
    let parts = tasks(tiles);
    let group = (GROUP_FLOATS / (A * A * (icb + ocb) * l)).clamp(MIN_GROUP_TILES, MAX_GROUP_TILES);
    with_partials(parts * per_task, |partials| {
        partials.par_chunks_mut(per_task).enumerate().for_each(|(p, w)| {
            w.fill(0.0);
            let range = split::range(tiles, parts, p).unwrap_or(0..0);
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

/// [`grad_impl`] by positions: every tile's `V` and `E` transformed into whole-call
/// tensors (threads over tile ranges), then each `(position, output block)` row block of
/// `W` summed over all the tiles at once (threads over those row blocks, so that a
/// thread's positions' `V` stays in its L2 across their output blocks), then the
/// filter transform.
#[allow(clippy::too_many_arguments)]
fn grad_by_positions<V: Vector, const M: usize, const A: usize>(
    g: &ConvGeometry,
    tile: WinogradTile,
    xs: Blocked,
    ys: Blocked,
    tiling: &Tiling,
    input: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) {
    let l = V::LANES;
    let tiles = xs.n * tiling.per_image;
    let (icb, ocb) = (xs.blocks(), ys.blocks());
    let (vs, es) = (Span::group(icb, tiles, l), Span::group(ocb, tiles, l));
    let v_len = A * A * vs.xi;
    with_staging(v_len + A * A * es.xi, |buf| {
        let (v, e) = buf.split_at_mut(v_len);
        {
            let (v, e) = (SharedOut::new(v), SharedOut::new(e));
            split::for_each_range(tiles, |tr| {
                let (t0, tn) = (tr.start, tr.len());
                input_transform_into::<V, M, A>(xs, tiling, input, t0, tn, &v, vs.shifted(0, t0, l));
                dy_transform_into::<V, M, A>(ys, tiling, dy, t0, tn, &e, es.shifted(0, t0, l));
            });
        }
        let (v, e) = (&*v, &*e);
        let per_call = task_floats(g, tile, l);
        with_partials(per_call, |w| {
            {
                let w = SharedOut::new(w);
                split::for_each_range(A * A * ocb, |units| {
                    let (cp, kp) = (icb * l, ocb * l);
                    for unit in units {
                        let (xi, kb) = (unit / ocb, unit % ocb);
                        let rows = (xi * kp + kb * l) * cp;
                        // SAFETY: rows `kb * l..(kb + 1) * l` of `W[xi]`, inside `w`
                        // (`a^2 x Kp x Cp` floats) and this unit's alone.
                        unsafe { std::ptr::write_bytes(w.ptr_at(rows), 0, l * cp) };
                        products_span::<V>(icb, ocb, tiles, (v, vs), (e, es), &w, (xi..xi + 1, kb..kb + 1));
                    }
                });
            }
            let w = &*w;
            dw.par_chunks_mut(g.in_channels * 9).enumerate().for_each(|(k, dwk)| {
                filter_transform::<V, A>(tile, icb, ocb, k, w, per_call, dwk);
            });
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
    let span = Span::group(ys.blocks(), tn, V::LANES);
    dy_transform_into::<V, M, A>(ys, tl, dy, t0, tn, &SharedOut::new(e), span);
}

/// [`dy_transform`] into the span `span` of `e` (tasks fill disjoint tile columns of one
/// whole `E`).
#[inline(never)]
fn dy_transform_into<V: Vector, const M: usize, const A: usize>(
    ys: Blocked,
    tl: &Tiling,
    dy: &[f32],
    t0: usize,
    tn: usize,
    e: &SharedOut,
    span: Span,
) {
    let l = V::LANES;
    let ocb = ys.blocks();
    let row = ys.w * l;
    assert_eq!(dy.len(), ys.len());
    assert!(
        span.end(A * A, ocb, tn, l) <= e.len(),
        "winograd filter gradient: E span out of bounds"
    );
    // Only this task writes the span's tiles (the caller's guarantee, as `SharedOut`'s).
    let (dp, ep) = (dy.as_ptr(), e.ptr_at(0));
    let prefetch = streamed(dy.len());
    for t in 0..tn {
        if prefetch {
            prefetch_tile::<M>(ys, tl, dp, t0 + t + PREFETCH_AHEAD, 0..ocb, 0..M, 0..M, 0, false);
        }
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
                    // SAFETY: `xi < A * A`, `ob < ocb`, `t < tn`: inside the span of `e`
                    // (checked above), which only this task writes.
                    unsafe { rq.store_at(ep, (p * A + q) * span.xi + ob * span.block + span.at + t * l) };
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
    let (vs, es) = (Span::group(icb, tn, l), Span::group(ocb, tn, l));
    products_span::<V>(icb, ocb, tn, (v, vs), (e, es), &SharedOut::new(w), (0..A * A, 0..ocb));
}

/// [`products`] of the positions `xis` and output blocks `kbs` only, reading `V` and `E`
/// (`icb` and `ocb` blocks of `tn` tiles) from their spans `vs` and `es`, and adding to
/// the rows of `W` (`a^2 x Kp x Cp`) of those positions and blocks, which no other task
/// touches meanwhile.
#[inline(never)]
fn products_span<V: Vector>(
    icb: usize,
    ocb: usize,
    tn: usize,
    (v, vs): (&[f32], Span),
    (e, es): (&[f32], Span),
    w: &SharedOut,
    (xis, kbs): (std::ops::Range<usize>, std::ops::Range<usize>),
) {
    let l = V::LANES;
    let (cp, kp) = (icb * l, ocb * l);
    assert!(kbs.end <= ocb);
    assert!(vs.end(xis.end, icb, tn, l) <= v.len() && es.end(xis.end, ocb, tn, l) <= e.len());
    assert!(w.len() >= xis.end * kp * cp);
    // Output channels per call: every lane of a block with 16 lanes and one input block,
    // else 8; narrow vectors (16 registers) take one block of their lanes at a time.
    let (r, nc_most) = match (l, icb) {
        (16, 1) => (16, 1),
        (16, _) => (8, NC_WIDE),
        _ => (l, 1),
    };
    let wp = w.ptr_at(0);
    for xi in xis {
        let (v_xi, e_xi) = (&v[xi * vs.xi + vs.at..], &e[xi * es.xi + es.at..]);
        for kb in kbs.clone() {
            for k0 in (0..l).step_by(r) {
                let mut cb = 0;
                while cb < icb {
                    let nc = nc_most.min(icb - cb);
                    // SAFETY: `E` values `kb * es.block + t * l + k0 + r'` for `t < tn`,
                    // `r' < r <= l - k0` and `V` blocks `cb..cb + nc <= icb` of `tn * l`
                    // lie in their spans; `W` rows `kb * l + k0 + r' < kp` of `cp`
                    // floats, columns `cb * l .. (cb + nc) * l <= cp` of position `xi`,
                    // lie inside `w` (all asserted above), and only this task adds to them.
                    unsafe {
                        micro_dispatch::<V>(
                            r,
                            nc,
                            e_xi.as_ptr().add(kb * es.block + k0),
                            v_xi.as_ptr().add(cb * vs.block),
                            vs.block,
                            tn,
                            wp.add((xi * kp + kb * l + k0) * cp + cb * l),
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
        let mut worst = 0f32;
        // The rule's schedule, then each one forced.
        for positions in [None, Some(false), Some(true)] {
            let mut got = dw0.clone();
            checked_grad::<V>(g, tile, &xb, &dyb, &mut got, positions);
            let e = max_rel_err(&got, &want);
            assert!(
                e < tolerance(tile),
                "{tile:?} {g:?} at {l} lanes, by positions {positions:?}: {e:e}"
            );
            worst = worst.max(e);
        }
        worst
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

    /// Activations too large for L2, whose input and `dy` transforms prefetch tile by
    /// tile, with ragged edge tiles.
    #[test]
    fn winograd_filter_grad_matches_the_definition_on_streamed_activations() {
        let g = square_conv(9, 32, 31, 30, 32, 3, 1, 1);
        let len = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, 16).len();
        assert_eq!(streamed(len), crate::simd::HAS_PREFETCH);
        for tile in TILES {
            check::<f32x16>(&g, tile, 60);
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
        let mut by_positions_results = Vec::new();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a pool");
            for positions in [false, true] {
                let run = || {
                    let mut dw = vec![0.0; want.len()];
                    let tile = WinogradTile::F4;
                    pool.install(|| checked_grad::<f32x16>(&g, tile, &xb, &dyb, &mut dw, Some(positions)));
                    dw
                };
                let (a, b) = (run(), run());
                assert!(
                    a == b,
                    "two runs on {threads} threads differ (by positions: {positions})"
                );
                assert!(max_rel_err(&a, &want) < tolerance(WinogradTile::F4));
                if positions {
                    // Each sum runs over all the tiles in one task: the same on any thread count.
                    by_positions_results.push(a);
                }
            }
        }
        assert!(
            by_positions_results.windows(2).all(|w| w[0] == w[1]),
            "by positions, 1, 2 and 3 threads differ"
        );
    }

    /// The rule: by positions where a task's partial sums outgrow the L2 (ResNet-50's 3x3
    /// layers from 128 channels with F(4x4), from 256 with F(2x2), at batch 16), else by
    /// tile groups; the partial sums then shrink to one `W`.
    #[test]
    fn big_partial_sums_run_by_positions() {
        let r50 = |c: usize, hw: usize| square_conv(16, c, hw, hw, c, 3, 1, 1);
        for (g, tile, want) in [
            (r50(64, 56), WinogradTile::F4, false),
            (r50(128, 28), WinogradTile::F2, false),
            (r50(128, 28), WinogradTile::F4, true),
            (r50(256, 14), WinogradTile::F2, true),
            (r50(512, 7), WinogradTile::F2, true),
        ] {
            assert_eq!(by_positions(&g, tile, 16), want, "{g:?} {tile:?}");
            let one = task_floats(&g, tile, 16);
            assert_eq!(partial_floats(&g, tile, 16) == one, want, "{g:?} {tile:?}");
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
            for positions in [false, true] {
                let mut dw = vec![0.0; 4 * 5 * 9];
                checked_grad::<f32x8>(&g, tile, &xb, &dyb, &mut dw, Some(positions));
                for (i, v) in dw.iter().enumerate() {
                    assert_eq!(
                        v.is_nan(),
                        i / 45 == 2,
                        "{tile:?} by positions {positions}: dw[{i}] = {v}"
                    );
                }
            }
        }
    }
}
