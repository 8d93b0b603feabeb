//! The backward-data convolution on the channel-blocked layout (NCHWc):
//! `dx = conv^T(dy, w)`, the gradient of `y = conv(x, w)` with respect to `x`, for any
//! kernel, stride and padding.
//!
//! # The transposed convolution
//! `dx[c, iy, ix] = sum over k, ky, kx of dy[k, oy, ox] * w[k, c, ky, kx]` where
//! `iy = oy * s + ky - p` and `ix = ox * s + kx - p`. With the kernel flipped
//! (`ky' = kh - 1 - ky`) this is a convolution of `dy` whose input channels are the
//! forward outputs `k` and whose outputs are the forward inputs `c`, with weights
//! `w'[c, k, ky', kx'] = w[k, c, kh - 1 - ky', kw - 1 - kx']`. The weights are packed
//! once per step in exactly the layout [`direct::pack_weights`] gives `w'` (see
//! [`pack_data_grad_weights`]), so that:
//! - **stride 1** (a square kernel, `p <= k - 1`) is the forward convolution of `dy` with
//!   `w'` and padding `k - 1 - p`: [`direct::direct_conv`] runs it as it is (register
//!   tiles of 4 channel blocks x 6 pixels at 16 lanes, MLAS's tile);
//! - **stride > 1** (and any other case) runs the register-blocked kernel of this file.
//!
//! # The strided kernel
//! Along a row, the input pixels `ix = r + s * j` of one parity class `r` (`0 <= r < s`)
//! share their taps: `kx` contributes iff `kx = r + p (mod s)`, and then pixel `j` reads
//! output column `ox = j + (r + p - kx) / s`, so the `dy` pixels one tap reads for
//! consecutive `j` are consecutive. A tile holds `NOC` channel blocks of `dx` x `NPX`
//! pixels `j0 .. j0 + NPX` of one parity class of one row (the tile shapes of
//! [`direct`], 4 x 6 at 16 lanes), and sums over every block of `dy`, every `ky` of the
//! row's parity (`ky = iy + p (mod s)`) and every `kx` of the class: per `dy` channel
//! `NOC` weight loads, `NPX` broadcasts, `NOC * NPX` FMAs, as in the forward kernel.
//! Each `dx` vector is stored once, complete; pixels that no output reads (rows or
//! classes with no tap, e.g. the odd pixels of a 1x1 stride-2 convolution) are stored
//! as zeros without a tile. Polyphase in effect (s * s stride-1 sub-convolutions, one
//! per class of `(iy, ix)`), without copying `dy` or the weights per phase.
//!
//! Tiles whose every tap reads inside `dy` address it as one base plus constant offsets;
//! the others (the ends of a class, the ragged last tile) point each pixel at a block of
//! zeros where it falls outside. Threads split (image, channel-block group, `dx` row)
//! with [`split`], so batch 1 fills every core, and every `dx` vector is computed by one
//! task in a fixed order: results do not depend on the thread count.
//!
//! Padding channels of `dx` are written as zeros (also when `dy` holds NaN); padding
//! channels of `dy` must be zero (or finite), as everywhere in the blocked layout.
//!
//! # Large weights
//! A group whose packed weights exceed [`SLAB_BYTES`] (ResNet-50's 512-channel 3x3 and
//! 2048-channel 1x1 stride-2 layers) runs its reduction in chunks of `dy` blocks, as the
//! forward kernel does: every row of a task's segment runs one chunk (its weights in L2)
//! before any row runs the next, the partial sums kept in `dx` (added at the store).
//!
//! # Measured (`examples/dgrad_bench.rs`, 2 threads of a shared 2-core Zen 5, FMA peak
//! about 525 GFLOP/s)
//! On a quiet machine: ResNet-20 batch 128, the stride-2 layers 16->32 at 32x32 about 300
//! GFLOP/s (one 16-channel dx block: one broadcast per FMA, as the forward kernel's
//! 16-channel stage) and 32->64 at 16x16 about 470 (the NCHW kernels: 160-180); its
//! stride-1 layers run at the forward kernel's speed (340 / 480 / 525). ResNet-50 batch 1
//! 430-530 on the stride-1 layers, 310-415 on the stride-2 ones, 437 over every layer but
//! the stem. Under load, against the forward direct convolution of the same layer timed
//! beside it: stride 2 at 0.8-0.98 of the forward speed (fewer taps per tile, and classes
//! half as wide leave more ragged tiles), the 1024->2048 1x1 one at 0.7.

use crate::kernels::blocked::direct::{self, group, group_count, per_block, tap, tile_pixels, SLAB_BYTES, ZEROS};
use crate::kernels::blocked::moments::Gather;
use crate::kernels::blocked::resample;
use crate::kernels::blocked::BlockedEpilogue;
use crate::kernels::conv::split_regions;
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::shared_out::SharedOut;
use crate::kernels::split;
use crate::layout::Blocked;
use crate::simd::Vector;
use rayon::prelude::*;

/// The transposed convolution of `g` as a forward geometry: input `dy` (`g.out_channels`
/// channels of `g.out_h x g.out_w`), output `dx` (`g.in_channels` of `g.in_h x g.in_w`),
/// the same kernel size, stride 1 and padding `k - 1 - p` (clamped at 0: it is only read
/// where [`as_forward`] says the stride-1 forward convolution applies).
fn transposed(g: &ConvGeometry) -> ConvGeometry {
    ConvGeometry {
        batch: g.batch,
        in_channels: g.out_channels,
        in_h: g.out_h,
        in_w: g.out_w,
        out_channels: g.in_channels,
        kernel_h: g.kernel_h,
        kernel_w: g.kernel_w,
        stride: 1,
        pad: (g.kernel_h - 1).saturating_sub(g.pad),
        out_h: g.in_h,
        out_w: g.in_w,
    }
}

/// The forward geometry whose convolution of `dy` with the packed weights is `dx`, when
/// there is one: stride 1, a square kernel (one padding for both axes), `p <= k - 1`.
pub fn as_forward(g: &ConvGeometry) -> Option<ConvGeometry> {
    if g.stride != 1 || g.kernel_h != g.kernel_w || g.pad >= g.kernel_h {
        return None;
    }
    let t = transposed(g);
    let f = ConvGeometry::new(
        t.batch,
        t.in_channels,
        t.in_h,
        t.in_w,
        t.out_channels,
        (t.kernel_h, t.kernel_w),
        1,
        t.pad,
    )
    .ok()?;
    // Stride 1: out + 2 (k - 1 - p) - k + 1 = in, so the forward output is dx's size.
    assert_eq!(f, t, "data_grad: the transposed geometry");
    Some(f)
}

/// Packed length of the weights `data_grad` reads for geometry `g` (forward geometry) at
/// `block` (= `V::LANES`) channel blocks.
pub fn data_grad_packed_len(g: &ConvGeometry, block: usize) -> usize {
    direct::packed_len(&transposed(g), block, block)
}

/// Packs OIHW forward weights (PyTorch's, `out x in x kh x kw`) into what [`data_grad`]
/// reads: the layout [`direct::pack_weights`] gives the flipped, transposed weights
/// `w'[c][k][ky'][kx'] = w[k][c][kh - 1 - ky'][kw - 1 - kx']`, that is
/// `[group of dx blocks][dy block][ky'][kx'][k in block][dx block in group][c in block]`,
/// zero-padded. One pass, written in order, the groups split over threads (the weights
/// change every training step).
pub fn pack_data_grad_weights(weight: &[f32], g: &ConvGeometry, block: usize, out: &mut [f32]) {
    let t = transposed(g);
    let (c, k, kh, kw) = (g.in_channels, g.out_channels, g.kernel_h, g.kernel_w);
    assert!(block > 0, "pack_data_grad_weights: block must be positive");
    assert_eq!(weight.len(), k * c * kh * kw, "pack_data_grad_weights: weight length");
    assert_eq!(
        out.len(),
        data_grad_packed_len(g, block),
        "pack_data_grad_weights: packed length"
    );
    let cbs = c.div_ceil(block);
    let per = per_block(&t, block, block);
    let (groups, taps) = (group_count(cbs, block), kh * kw);
    let sizes: Vec<usize> = (0..groups).map(|gi| group(gi, cbs, block).len() * per).collect();
    split_regions(out, sizes)
        .into_par_iter()
        .enumerate()
        .for_each(|(gi, slab)| {
            // The group's runs of `blocks.len() * block` channels c, one per (dy block,
            // tap, k in block) in that order: a strided gather from the OIHW weights
            // (consecutive c are `kh * kw` apart), then the padding channels' zeros.
            let blocks = group(gi, cbs, block);
            let (run, c0) = (blocks.len() * block, blocks.start * block);
            let real = c.saturating_sub(c0).min(run);
            for (i, dst) in slab.chunks_exact_mut(run).enumerate() {
                let (kl, tap, kb) = (i % block, i / block % taps, i / block / taps);
                let kk = kb * block + kl;
                let (head, tail) = dst.split_at_mut(if kk < k { real } else { 0 });
                if !head.is_empty() {
                    // The flipped tap: (kh - 1 - ty) * kw + kw - 1 - tx = taps - 1 - tap.
                    let src = &weight[(kk * c + c0) * taps + taps - 1 - tap..];
                    for (d, &v) in head.iter_mut().zip(src.iter().step_by(taps)) {
                        *d = v;
                    }
                }
                tail.fill(0.0);
            }
        });
}

/// `dx = dL/dx` of `y = conv(x, w)`, `g` the FORWARD geometry: `dy` in
/// `Blocked { g.batch, g.out_channels, g.out_h, g.out_w, V::LANES }`, `packed` by
/// [`pack_data_grad_weights`] at `V::LANES`, `dx` in
/// `Blocked { g.batch, g.in_channels, g.in_h, g.in_w, V::LANES }`. `dx` is overwritten,
/// its padding channels with zeros; input pixels that no output reads get zero.
pub fn data_grad<V: Vector>(g: &ConvGeometry, dy: &[f32], packed: &[f32], dx: &mut [f32]) {
    data_grad_budget::<V>(g, dy, packed, &BlockedEpilogue::default(), dx, SLAB_BYTES, None, None);
}

/// [`data_grad`] finished by the epilogue `ep` (in `dx`'s layout) as each `dx` vector is
/// stored: the training plan adds an identity shortcut's gradient and applies the
/// previous block's ReLU there instead of in passes of their own. Only the stride-1 form
/// (a forward convolution, see [`as_forward`]) takes an epilogue; other shapes need the
/// default one.
pub fn data_grad_with<V: Vector>(g: &ConvGeometry, dy: &[f32], packed: &[f32], ep: &BlockedEpilogue, dx: &mut [f32]) {
    data_grad_budget::<V>(g, dy, packed, ep, dx, SLAB_BYTES, None, None);
}

/// [`data_grad_with`] of a stride-1 form (see [`as_forward`]), also gathering the
/// gradient sums of the batch norm whose output gradient `dx` is
/// ([`direct::direct_conv_gather`]), so that its backward does not read `dx` again.
pub fn data_grad_gather<V: Vector>(
    g: &ConvGeometry,
    dy: &[f32],
    packed: &[f32],
    ep: &BlockedEpilogue,
    dx: &mut [f32],
    gather: Gather,
) {
    data_grad_budget::<V>(g, dy, packed, ep, dx, SLAB_BYTES, Some(gather), None);
}

/// [`data_grad_with`] with the weight-slab budget `slab_bytes` of the strided kernel in
/// place of [`SLAB_BYTES`] (the tests pass tiny budgets to run the chunks on small shapes),
/// the sums of [`data_grad_gather`] when given, and a strided 1x1 convolution run as a
/// pointwise one then spread as `subsample` says (`None`: as the rule of
/// [`resample::strided_as_pointwise`] says).
#[allow(clippy::too_many_arguments)]
fn data_grad_budget<V: Vector>(
    g: &ConvGeometry,
    dy: &[f32],
    packed: &[f32],
    ep: &BlockedEpilogue,
    dx: &mut [f32],
    slab_bytes: usize,
    gather: Option<Gather>,
    subsample: Option<bool>,
) {
    let l = V::LANES;
    assert!(l <= ZEROS.len(), "data_grad: vectors of at most 16 lanes");
    let dy_l = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, l);
    let dx_l = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, l);
    assert_eq!(dy.len(), dy_l.len(), "data_grad: dy length");
    assert_eq!(dx.len(), dx_l.len(), "data_grad: dx length");
    assert_eq!(
        packed.len(),
        data_grad_packed_len(g, l),
        "data_grad: packed weights length"
    );
    if let Some(pointwise) = resample::strided_as_pointwise(g, l, l, subsample) {
        assert!(
            gather.is_none() && ep.is_identity(),
            "data_grad: a strided convolution takes no epilogue and gathers no sums"
        );
        return resample::spread_into::<V>(g, dx_l, dx, |sub| {
            data_grad_budget::<V>(&pointwise, dy, packed, ep, sub, slab_bytes, None, None)
        });
    }
    if let Some(f) = as_forward(g) {
        match gather {
            Some(gather) => direct::direct_conv_gather::<V>(&f, dy, l, packed, ep, dx, gather),
            None => direct::direct_conv::<V>(&f, dy, l, packed, ep, dx),
        }
        zero_padding_lanes(dx_l, dx);
        return;
    }
    assert!(gather.is_none(), "data_grad: only the stride-1 form gathers sums");
    if dx.is_empty() {
        return;
    }
    assert!(ep.is_identity(), "data_grad: only the stride-1 form takes an epilogue");
    let shared = SharedOut::new(dx);
    let ctx = Ctx {
        g: *g,
        dy,
        packed,
        dy_l,
        dx_l,
        out: &shared,
        per_block: per_block(&transposed(g), l, l),
        real_lanes: match g.in_channels % l {
            0 => l,
            r => r,
        },
    };
    let (groups, kbs) = (group_count(dx_l.blocks(), l), dy_l.blocks());
    let units = g.batch * groups * g.in_h;
    // Units are (image, group, dx row), rows fastest: one (image, group) segment of
    // consecutive rows at a time, which read the same weight slab; a slab over the budget
    // runs in chunks of dy blocks, every row of the segment one chunk before any row the
    // next (see `SLAB_BYTES`).
    split::for_each_segment(units, g.in_h, true, |_, rows| {
        let (iy, rest) = (rows.start % g.in_h, rows.start / g.in_h);
        let (gi, n) = (rest % groups, rest / groups);
        let blocks = group(gi, dx_l.blocks(), l);
        let slab = blocks.len() * ctx.per_block * std::mem::size_of::<f32>();
        let chunks = slab.div_ceil(slab_bytes.max(1)).clamp(1, kbs.max(1));
        for i in 0..chunks {
            let pass = Pass {
                kb: i * kbs / chunks..(i + 1) * kbs / chunks,
                first: i == 0,
                last: i + 1 == chunks,
            };
            for y in iy..iy + rows.len() {
                row_any::<V>(&ctx, n, blocks.clone(), y, &pass);
            }
        }
    });
}

/// Sets the padding lanes of the last channel block of `dx` to zero: the stride-1 path
/// multiplies them by zero weights, which leaves NaN where `dy` holds one.
fn zero_padding_lanes(l: Blocked, dx: &mut [f32]) {
    let real = l.c % l.block;
    if real == 0 || l.c == 0 {
        return;
    }
    let last = l.blocks() - 1;
    for n in 0..l.n {
        let at = l.at(n, last, 0, 0);
        for px in dx[at..at + l.plane_len()].chunks_exact_mut(l.block) {
            px[real..].fill(0.0);
        }
    }
}

/// Everything a tile of the strided kernel needs, computed once per call.
struct Ctx<'a> {
    g: ConvGeometry,
    dy: &'a [f32],
    packed: &'a [f32],
    dy_l: Blocked,
    dx_l: Blocked,
    out: &'a SharedOut<'a>,
    /// Packed floats per `dx` channel block (every `dy` block and tap).
    per_block: usize,
    /// Real channels of the last `dx` block (`V::LANES` when none is padding).
    real_lanes: usize,
}

/// One pass over the rows of a segment: the `dy` blocks `kb` of the reduction, whether it
/// is the first (it stores its sums, and the zeros of pixels no output reads) and the
/// last (it zeroes the padding channels); a pass after the first adds its sums to the
/// partial sums in `dx`. One pass of all blocks unless the weight slab exceeds the budget.
struct Pass {
    kb: std::ops::Range<usize>,
    first: bool,
    last: bool,
}

/// The kernel taps along one axis that reach input position `i`: those `t = i + p (mod s)`
/// whose output position `(i + p - t) / s` lies in `0..out`, as `lo..hi` stepped by `s`
/// (empty when `lo >= hi`).
fn taps(i: usize, p: usize, s: usize, k: usize, out: usize) -> (usize, usize) {
    let t = i + p;
    // t - tap <= s * out - 1, i.e. the output position is at most out - 1.
    let min = (t + 1).saturating_sub(s * out);
    let first = t % s;
    let lo = if min <= first {
        first
    } else {
        first + (min - first).div_ceil(s) * s
    };
    let hi = k.min(t + 1);
    (lo, hi.max(lo))
}

/// Runs `dx` row `iy` of image `n` for the channel blocks `blocks` on the tile of
/// `blocks.len()` blocks (the forward kernel's shapes, [`tile_pixels`]).
fn row_any<V: Vector>(c: &Ctx, n: usize, blocks: std::ops::Range<usize>, iy: usize, pass: &Pass) {
    let wide = V::LANES >= 16;
    let b0 = blocks.start;
    match blocks.len() {
        4 if wide => row::<V, 4, 6>(c, n, b0, iy, pass),
        3 if wide => row::<V, 3, 8>(c, n, b0, iy, pass),
        2 if wide => row::<V, 2, 12>(c, n, b0, iy, pass),
        2 => row::<V, 2, 6>(c, n, b0, iy, pass),
        1 if wide => row::<V, 1, 8>(c, n, b0, iy, pass),
        1 => row::<V, 1, 12>(c, n, b0, iy, pass),
        b => unreachable!("a group of {b} blocks"),
    }
}

/// One tile's place: pixels `j0 .. j0 + count` of parity class `r` of row `iy` of image
/// `n` (`ix = r + s * j`), channel blocks from `ocb0`, and the taps that reach them:
/// `ky` in `ky.0 .. ky.1` and `kx` in `kx.0 .. kx.1`, both stepped by the stride.
#[derive(Clone, Copy)]
struct Place {
    n: usize,
    ocb0: usize,
    iy: usize,
    r: usize,
    j0: usize,
    count: usize,
    ky: (usize, usize),
    kx: (usize, usize),
}

/// Tiles row `iy` of image `n`, blocks `ocb0 .. ocb0 + NOC`, one parity class at a time,
/// with tiles of `NPX` pixels and the ragged end of each class on the smallest of a few
/// narrower widths that holds it.
fn row<V: Vector, const NOC: usize, const NPX: usize>(c: &Ctx, n: usize, ocb0: usize, iy: usize, pass: &Pass) {
    debug_assert_eq!(NPX, tile_pixels(NOC, V::LANES));
    let g = &c.g;
    let (s, p) = (g.stride, g.pad);
    let ky = taps(iy, p, s, g.kernel_h, g.out_h);
    for r in 0..s.min(g.in_w) {
        let cnt = (g.in_w - r).div_ceil(s);
        let kx0 = (r + p) % s;
        let mut at = Place {
            n,
            ocb0,
            iy,
            r,
            j0: 0,
            count: cnt,
            ky,
            kx: (kx0, g.kernel_w.max(kx0)),
        };
        if ky.0 >= ky.1 || kx0 >= g.kernel_w {
            if pass.first {
                store_zeros::<V, NOC>(c, &at);
            }
            continue;
        }
        // The first and last output column pixel 0 of the class reads (smallest kx:
        // largest column).
        let kx_last = kx0 + (g.kernel_w - 1 - kx0) / s * s;
        let col = |kx: usize| ((r + p) as isize - kx as isize) / s as isize;
        let (col_max, col_min) = (col(kx0), col(kx_last));
        let interior =
            |j0: usize, w: usize| col_min + j0 as isize >= 0 && col_max + (j0 + w) as isize <= g.out_w as isize;
        let mut j0 = 0;
        while j0 + NPX <= cnt {
            at.j0 = j0;
            at.count = NPX;
            if interior(j0, NPX) {
                tile::<V, NOC, NPX, true>(c, &at, pass);
            } else {
                tile::<V, NOC, NPX, false>(c, &at, pass);
            }
            j0 += NPX;
        }
        at.j0 = j0;
        at.count = cnt - j0;
        let full = |w: usize| at.count == w && interior(j0, w);
        match at.count {
            0 => {}
            1 if full(1) => tile::<V, NOC, 1, true>(c, &at, pass),
            1 => tile::<V, NOC, 1, false>(c, &at, pass),
            2 if full(2) => tile::<V, NOC, 2, true>(c, &at, pass),
            2 => tile::<V, NOC, 2, false>(c, &at, pass),
            4 if full(4) => tile::<V, NOC, 4, true>(c, &at, pass),
            3 | 4 => tile::<V, NOC, 4, false>(c, &at, pass),
            6 if full(6) => tile::<V, NOC, 6, true>(c, &at, pass),
            5 | 6 => tile::<V, NOC, 6, false>(c, &at, pass),
            8 if full(8) => tile::<V, NOC, 8, true>(c, &at, pass),
            7 | 8 => tile::<V, NOC, 8, false>(c, &at, pass),
            _ => tile::<V, NOC, NPX, false>(c, &at, pass),
        }
    }
}

/// Offset in `dx` of pixel `q` of the place's tile in channel block `cb`.
#[inline(always)]
fn dx_at(c: &Ctx, at: &Place, cb: usize, q: usize) -> usize {
    c.dx_l.at(at.n, cb, at.iy, at.r + (at.j0 + q) * c.g.stride)
}

/// Stores zeros at the place's pixels: no output reads them.
fn store_zeros<V: Vector, const NOC: usize>(c: &Ctx, at: &Place) {
    for cb in at.ocb0..at.ocb0 + NOC {
        for q in 0..at.count {
            c.out.store(dx_at(c, at, cb, q), V::ZERO);
        }
    }
}

/// One tile: `NOC` channel blocks x `at.count <= NPX` pixels, summed over every `dy`
/// block and the place's taps, stored once. `INTERIOR`: `count == NPX` and every tap
/// reads `NPX` consecutive columns inside `dy` (one base plus constant offsets);
/// otherwise each pixel's pointer is computed per tap, the zero block where it falls
/// outside `dy` or past `count`.
#[inline(never)]
fn tile<V: Vector, const NOC: usize, const NPX: usize, const INTERIOR: bool>(c: &Ctx, at: &Place, pass: &Pass) {
    let g = &c.g;
    let l = V::LANES;
    let (s, p, kh, kw) = (g.stride, g.pad, g.kernel_h, g.kernel_w);
    let (ow, count) = (g.out_w as isize, at.count);
    let tap_len = l * NOC * l;
    let wgroup = at.ocb0 * c.per_block;
    let kbs = c.dy_l.blocks();
    // Weights: the group's slab, `kbs * kh * kw` taps of `tap_len`.
    assert!(wgroup + NOC * c.per_block <= c.packed.len() && c.per_block == kbs * kh * kw * l * l);
    assert!(pass.kb.end <= kbs);
    // Rows: every ky of the range reads output row (iy + p - ky) / s in 0..out_h.
    assert!(at.ky.0 < at.ky.1 && at.ky.1 <= kh && at.ky.1 <= at.iy + p + 1);
    assert!((at.iy + p - at.ky.0) / s < g.out_h && at.n < g.batch);
    assert!(at.kx.1 <= kw && count <= NPX && l <= ZEROS.len());
    // The output column of pixel 0 of the tile at tap kx (exact: kx = r + p mod s).
    let col0 = |kx: usize| ((at.j0 * s + at.r + p) as isize - kx as isize) / s as isize;
    if INTERIOR {
        let kx_last = at.kx.0 + (at.kx.1 - 1 - at.kx.0) / s * s;
        assert!(count == NPX && col0(kx_last) >= 0 && col0(at.kx.0) + NPX as isize <= ow);
    }
    let dy = c.dy.as_ptr();
    let mut acc = [[V::ZERO; NPX]; NOC];
    for kb in pass.kb.clone() {
        let plane = c.dy_l.at(at.n, kb, 0, 0);
        for ky in (at.ky.0..at.ky.1).step_by(s) {
            let row = plane + (at.iy + p - ky) / s * g.out_w * l;
            let wrow = wgroup + (kb * kh + kh - 1 - ky) * kw * tap_len;
            for kx in (at.kx.0..at.kx.1).step_by(s) {
                let ox0 = col0(kx);
                let src: [*const f32; NPX] = if INTERIOR {
                    // SAFETY: columns ox0 .. ox0 + NPX lie inside the output row `row`
                    // of block kb of image n (asserted above for the extreme taps).
                    let base = unsafe { dy.add(row + ox0 as usize * l) };
                    // SAFETY: as above, q < NPX.
                    core::array::from_fn(|q| unsafe { base.add(q * l) })
                } else {
                    if ox0 + count as isize <= 0 || ox0 >= ow {
                        continue;
                    }
                    core::array::from_fn(|q| {
                        let ox = ox0 + q as isize;
                        if q < count && (0..ow).contains(&ox) {
                            // SAFETY: (oy, ox) is a pixel of block kb of image n.
                            unsafe { dy.add(row + ox as usize * l) }
                        } else {
                            ZEROS.as_ptr()
                        }
                    })
                };
                // SAFETY: every `src[q]` has `l` readable floats (a dy pixel or the zero
                // block); the tap's `l * NOC * l` weights lie in the group's slab.
                unsafe { tap::<V, NOC, NPX>(&mut acc, c.packed.as_ptr().add(wrow + (kw - 1 - kx) * tap_len), &src, l) };
            }
        }
    }
    let last = c.dx_l.blocks() - 1;
    for (j, row) in acc.iter().enumerate() {
        let cb = at.ocb0 + j;
        for (q, &v) in row.iter().enumerate().take(count) {
            let o = dx_at(c, at, cb, q);
            c.out.store(o, if pass.first { v } else { v + c.out.load::<V>(o) });
            if pass.last && cb == last {
                // Padding channels: zero even where dy holds NaN (0 * NaN).
                for lane in c.real_lanes..l {
                    c.out.write(o + lane, 0.0);
                }
            }
        }
    }
}

/// The scalar twin of [`data_grad`] from the unpacked OIHW `weight`: `dy` and `dx` in
/// blocks of `block`, each `dx` value gathered from its taps in f64, plain loops, one
/// thread; padding channels zero.
pub fn data_grad_naive(g: &ConvGeometry, dy: &[f32], weight: &[f32], block: usize, dx: &mut [f32]) {
    let dy_l = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, block);
    let dx_l = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, block);
    assert_eq!(dy.len(), dy_l.len(), "data_grad_naive: dy length");
    assert_eq!(dx.len(), dx_l.len(), "data_grad_naive: dx length");
    assert_eq!(
        weight.len(),
        g.out_channels * g.col_rows(),
        "data_grad_naive: weight length"
    );
    let (s, p) = (g.stride, g.pad);
    for n in 0..g.batch {
        for c in 0..dx_l.padded_channels() {
            for iy in 0..g.in_h {
                for ix in 0..g.in_w {
                    let mut acc = 0f64;
                    for k in 0..if c < g.in_channels { g.out_channels } else { 0 } {
                        for ky in 0..g.kernel_h {
                            let ty = iy + p;
                            if ty < ky || (ty - ky) % s != 0 || (ty - ky) / s >= g.out_h {
                                continue;
                            }
                            for kx in 0..g.kernel_w {
                                let tx = ix + p;
                                if tx < kx || (tx - kx) % s != 0 || (tx - kx) / s >= g.out_w {
                                    continue;
                                }
                                let d = dy[dy_l.index(n, k, (ty - ky) / s, (tx - kx) / s)];
                                let w = weight[((k * g.in_channels + c) * g.kernel_h + ky) * g.kernel_w + kx];
                                acc += d as f64 * w as f64;
                            }
                        }
                    }
                    dx[dx_l.index(n, c, iy, ix)] = acc as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::blocked::Residual;
    use crate::kernels::conv::conv_backward_data_naive;
    use crate::kernels::test_util::{max_rel_err, random, square_conv, strided_1x1_shapes, zoo_convs};
    use crate::layout::{from_blocked, to_blocked};
    use crate::rng::Rng;
    use crate::simd::F32xBlock;
    use wide::{f32x16, f32x4, f32x8};

    /// A random problem: NCHW `dy` and OIHW weights scaled by the fan-in.
    struct Problem {
        dy: Vec<f32>,
        w: Vec<f32>,
    }

    impl Problem {
        fn new(g: &ConvGeometry, seed: u64) -> Self {
            let mut rng = Rng::new(seed);
            let dy = random(&mut rng, g.batch * g.out_image());
            let fan = ((g.out_channels * g.kernel_h * g.kernel_w) as f32).sqrt();
            let w = random(&mut rng, g.out_channels * g.col_rows())
                .iter()
                .map(|v| v / fan)
                .collect();
            Problem { dy, w }
        }

        fn dy_layout(g: &ConvGeometry, block: usize) -> Blocked {
            Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, block)
        }

        fn dx_layout(g: &ConvGeometry, block: usize) -> Blocked {
            Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, block)
        }

        fn blocked_dy(&self, g: &ConvGeometry, block: usize) -> Vec<f32> {
            let l = Self::dy_layout(g, block);
            let mut b = vec![0.0; l.len()];
            to_blocked(&self.dy, l, &mut b);
            b
        }

        /// The fast kernel's dx (blocked), written over NaN so that a value never
        /// written fails the comparison.
        fn fast<V: Vector>(&self, g: &ConvGeometry) -> Vec<f32> {
            self.fast_tuned::<V>(g, SLAB_BYTES, None)
        }

        /// The fast kernel with weight slabs over `budget` bytes cut into chunks, a strided
        /// 1x1 convolution subsampled as `subsample` says.
        fn fast_tuned<V: Vector>(&self, g: &ConvGeometry, budget: usize, subsample: Option<bool>) -> Vec<f32> {
            let mut packed = vec![f32::NAN; data_grad_packed_len(g, V::LANES)];
            pack_data_grad_weights(&self.w, g, V::LANES, &mut packed);
            let mut dx = vec![f32::NAN; Self::dx_layout(g, V::LANES).len()];
            data_grad_budget::<V>(
                g,
                &self.blocked_dy(g, V::LANES),
                &packed,
                &BlockedEpilogue::default(),
                &mut dx,
                budget,
                None,
                subsample,
            );
            dx
        }

        fn naive(&self, g: &ConvGeometry, block: usize) -> Vec<f32> {
            let mut dx = vec![f32::NAN; Self::dx_layout(g, block).len()];
            data_grad_naive(g, &self.blocked_dy(g, block), &self.w, block, &mut dx);
            dx
        }

        /// The f64 reference of the NCHW kernels.
        fn reference(&self, g: &ConvGeometry) -> Vec<f32> {
            let mut dx = vec![f32::NAN; g.batch * g.in_image()];
            conv_backward_data_naive(g, &self.w, &self.dy, &mut dx);
            dx
        }
    }

    fn nchw(dx: &[f32], l: Blocked) -> Vec<f32> {
        let mut out = vec![0.0; l.n * l.c * l.h * l.w];
        from_blocked(dx, l, &mut out);
        out
    }

    /// Fails unless every padding channel of the blocked `dx` is exactly zero.
    fn assert_padding_zero(dx: &[f32], l: Blocked, what: &str) {
        for n in 0..l.n {
            for c in l.c..l.padded_channels() {
                for y in 0..l.h {
                    for x in 0..l.w {
                        let v = dx[l.index(n, c, y, x)];
                        assert!(v == 0.0, "{what}: padding channel {c} at ({n}, {y}, {x}) is {v}");
                    }
                }
            }
        }
    }

    /// The fast kernel at `V` and the naive twin against the f64 reference; returns the
    /// larger relative error.
    fn check<V: Vector>(g: &ConvGeometry, seed: u64) -> f32 {
        let p = Problem::new(g, seed);
        let want = p.reference(g);
        let l = Problem::dx_layout(g, V::LANES);
        let (fast, naive) = (p.fast::<V>(g), p.naive(g, V::LANES));
        let what = format!("{g:?} lanes {}", V::LANES);
        let (ef, en) = (
            max_rel_err(&nchw(&fast, l), &want),
            max_rel_err(&nchw(&naive, l), &want),
        );
        assert!(ef < 1e-5 && en < 1e-5, "{what}: fast {ef:e}, naive {en:e}");
        assert_padding_zero(&fast, l, &what);
        assert_padding_zero(&naive, l, &what);
        ef.max(en)
    }

    /// Odd shapes: channels off the block, strides 1 to 4, sizes that leave input pixels
    /// no output reads, pads past the kernel, tall and wide kernels, tiny and wide rows.
    fn odd_shapes() -> Vec<ConvGeometry> {
        vec![
            square_conv(1, 3, 7, 9, 5, 3, 1, 1),
            square_conv(2, 19, 7, 9, 33, 3, 2, 1),
            square_conv(3, 33, 7, 7, 19, 3, 2, 1),
            square_conv(2, 19, 9, 7, 5, 1, 2, 0),
            square_conv(1, 33, 5, 11, 3, 1, 2, 0),
            square_conv(1, 33, 6, 41, 20, 3, 2, 1),
            square_conv(1, 16, 4, 30, 64, 1, 2, 0),
            square_conv(2, 7, 6, 29, 70, 3, 3, 2),
            square_conv(1, 5, 13, 11, 19, 7, 2, 3),
            square_conv(1, 19, 5, 40, 33, 3, 1, 1),
            square_conv(1, 19, 5, 5, 5, 3, 1, 0),
            square_conv(1, 5, 4, 5, 7, 3, 1, 3),
            square_conv(2, 33, 7, 9, 19, 1, 1, 0),
            square_conv(1, 40, 3, 50, 36, 5, 2, 2),
            square_conv(1, 3, 2, 3, 4, 3, 2, 1),
            square_conv(1, 6, 9, 10, 5, 2, 4, 0),
            square_conv(3, 19, 1, 1, 33, 1, 2, 0),
            ConvGeometry::new(1, 9, 6, 8, 17, (1, 3), 1, 1).expect("a valid geometry"),
            ConvGeometry::new(2, 9, 7, 8, 17, (3, 1), 2, 1).expect("a valid geometry"),
            ConvGeometry::new(1, 20, 5, 27, 40, (3, 5), 2, 2).expect("a valid geometry"),
        ]
    }

    fn odd_shapes_at<V: Vector>() {
        let mut worst = 0f32;
        for (i, g) in odd_shapes().iter().enumerate() {
            worst = worst.max(check::<V>(g, 100 + i as u64));
        }
        println!("odd shapes, {} lanes: max relative error {worst:e}", V::LANES);
    }

    #[test]
    fn data_grad_odd_shapes_match_the_reference_at_4_lanes() {
        odd_shapes_at::<f32x4>();
    }

    #[test]
    fn data_grad_odd_shapes_match_the_reference_at_8_lanes() {
        odd_shapes_at::<f32x8>();
    }

    #[test]
    fn data_grad_odd_shapes_match_the_reference_at_16_lanes() {
        odd_shapes_at::<f32x16>();
    }

    fn zoo_at<V: Vector>(model: &str, batch: usize, size: usize) {
        let mut worst = 0f32;
        for (i, (g, names)) in zoo_convs(model, batch, size).iter().enumerate() {
            let e = check::<V>(g, 20 + i as u64);
            println!("{model} {} lanes {names:?}: {e:e}", V::LANES);
            worst = worst.max(e);
        }
        println!("{model}, {} lanes: max relative error {worst:e}", V::LANES);
    }

    #[test]
    fn data_grad_resnet20_convs_match_the_reference() {
        zoo_at::<f32x4>("resnet20", 2, 16);
        zoo_at::<f32x8>("resnet20", 2, 16);
        zoo_at::<f32x16>("resnet20", 2, 16);
    }

    #[test]
    fn data_grad_resnet50_convs_match_the_reference() {
        zoo_at::<f32x4>("resnet50", 1, 32);
        zoo_at::<f32x8>("resnet50", 1, 32);
        zoo_at::<f32x16>("resnet50", 1, 32);
    }

    /// A NaN in `dy` reaches exactly the `dx` values the reference says, in every real
    /// channel, and no padding channel.
    #[test]
    fn data_grad_nan_in_dy_propagates() {
        fn at<V: Vector>() {
            for g in [
                square_conv(1, 19, 9, 11, 21, 3, 2, 1),
                square_conv(1, 19, 6, 9, 21, 3, 1, 1),
                square_conv(1, 19, 9, 11, 21, 1, 2, 0),
            ] {
                let mut p = Problem::new(&g, 5);
                p.dy[(3 * g.out_h + 2) * g.out_w + 1] = f32::NAN;
                let want = p.reference(&g);
                let l = Problem::dx_layout(&g, V::LANES);
                for (got, what) in [(p.fast::<V>(&g), "fast"), (p.naive(&g, V::LANES), "naive")] {
                    assert_padding_zero(&got, l, what);
                    let got = nchw(&got, l);
                    let nans = want.iter().filter(|v| v.is_nan()).count();
                    assert!(nans >= g.in_channels, "{g:?}: {nans} NaN in the reference");
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(a.is_nan(), b.is_nan(), "{what} {g:?} at {i}: {a} vs {b}");
                        if !b.is_nan() {
                            assert!(
                                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                                "{what} {g:?} at {i}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
        at::<f32x4>();
        at::<f32x8>();
        at::<f32x16>();
    }

    /// The chunks of dy blocks (forced by small slab budgets: one block per chunk, and
    /// chunks of about two blocks with a ragged split) against the reference, with a NaN
    /// in dy kept out of the padding channels, at every width.
    #[test]
    fn data_grad_chunked_reductions_match_the_reference() {
        fn at<V: Vector>() {
            let shapes = [
                square_conv(2, 19, 7, 9, 40, 3, 2, 1),
                square_conv(1, 70, 6, 13, 70, 3, 2, 1),
                square_conv(1, 53, 5, 5, 53, 1, 2, 0),
                square_conv(1, 5, 4, 5, 37, 3, 1, 3),
            ];
            for (i, g) in shapes.iter().enumerate() {
                let kbs = g.out_channels.div_ceil(V::LANES);
                let slab = per_block(&transposed(g), V::LANES, V::LANES) * 4 * 4;
                for budget in [1, slab * 2 / kbs] {
                    let mut p = Problem::new(g, 40 + i as u64);
                    let want = p.reference(g);
                    let l = Problem::dx_layout(g, V::LANES);
                    let fast = p.fast_tuned::<V>(g, budget, None);
                    let what = format!("{g:?} lanes {} budget {budget}", V::LANES);
                    let e = max_rel_err(&nchw(&fast, l), &want);
                    assert!(e < 1e-5, "{what}: {e:e}");
                    assert_padding_zero(&fast, l, &what);
                    p.dy[g.out_plane() + 1] = f32::NAN;
                    assert_padding_zero(&p.fast_tuned::<V>(g, budget, None), l, &what);
                }
            }
        }
        at::<f32x4>();
        at::<f32x8>();
        at::<f32x16>();
    }

    /// Strided 1x1 convolutions run as a pointwise one then spread, and on the strided
    /// tiles: bit for bit the same, within 1e-5 of the f64 reference, padding channels
    /// zero (also with a NaN in `dy`).
    #[test]
    fn subsampled_strided_1x1_matches_the_strided_tiles() {
        fn at<V: Vector>() {
            let shapes = strided_1x1_shapes();
            for (i, g) in shapes.iter().enumerate() {
                {
                    let budget = SLAB_BYTES;
                    let mut p = Problem::new(g, 60 + i as u64);
                    let l = Problem::dx_layout(g, V::LANES);
                    let (sub, strided) = (
                        p.fast_tuned::<V>(g, budget, Some(true)),
                        p.fast_tuned::<V>(g, budget, Some(false)),
                    );
                    let what = format!("{g:?} lanes {} budget {budget}", V::LANES);
                    let e = max_rel_err(&nchw(&sub, l), &p.reference(g));
                    assert!(e < 1e-5, "{what}: {e:e}");
                    assert!(sub == strided, "{what}: subsampled and strided differ");
                    p.dy[g.out_plane() + 1] = f32::NAN;
                    assert_padding_zero(&p.fast_tuned::<V>(g, budget, Some(true)), l, &what);
                }
            }
        }
        at::<f32x4>();
        at::<f32x8>();
        at::<f32x16>();
    }

    /// The training plan's fused epilogue on the stride-1 form (a shortcut's gradient
    /// added, then zero where the previous ReLU's output was not positive), whole and in
    /// chunks of `dy` blocks (1040 channels: two weight slabs), against the plain
    /// kernel's result finished in scalar code.
    #[test]
    fn data_grad_with_its_epilogue_matches_the_plain_kernel_then_the_epilogue() {
        fn at<V: Vector>() {
            for g in [
                square_conv(2, 40, 24, 9, 11, 1, 1, 0),
                square_conv(1, 20, 33, 7, 13, 3, 1, 1),
                square_conv(1, 64, 4, 5, 1040, 1, 1, 0),
            ] {
                let p = Problem::new(&g, 31);
                let l = Problem::dx_layout(&g, V::LANES);
                let mut rng = Rng::new(32);
                let (mut resid, mut relu_y) = (vec![0.0; l.len()], vec![0.0; l.len()]);
                let plain_r = random(&mut rng, g.batch * g.in_image());
                let plain_y: Vec<f32> = random(&mut rng, g.batch * g.in_image())
                    .iter()
                    .map(|v| v.max(0.0))
                    .collect();
                to_blocked(&plain_r, l, &mut resid);
                to_blocked(&plain_y, l, &mut relu_y);
                let plain = p.fast::<V>(&g);
                let want: Vec<f32> = (0..l.len())
                    .map(|i| if relu_y[i] > 0.0 { plain[i] + resid[i] } else { 0.0 })
                    .collect();
                let mut packed = vec![f32::NAN; data_grad_packed_len(&g, V::LANES)];
                pack_data_grad_weights(&p.w, &g, V::LANES, &mut packed);
                let ep = BlockedEpilogue {
                    residual: Residual::From(&resid),
                    relu_output: Some(&relu_y),
                    ..BlockedEpilogue::default()
                };
                let mut dx = vec![f32::NAN; l.len()];
                data_grad_with::<V>(&g, &p.blocked_dy(&g, V::LANES), &packed, &ep, &mut dx);
                let err = max_rel_err(&dx, &want);
                assert!(err < 1e-6, "{g:?} at {} lanes: {err:e}", V::LANES);
                assert!(
                    dx.iter().zip(&relu_y).all(|(d, y)| *y > 0.0 || *d == 0.0),
                    "{g:?}: a masked value is not zero"
                );
            }
        }
        at::<f32x4>();
        at::<f32x8>();
        at::<f32x16>();
    }

    #[test]
    #[should_panic(expected = "only the stride-1 form takes an epilogue")]
    fn a_strided_data_grad_refuses_an_epilogue() {
        let g = square_conv(1, 16, 16, 8, 8, 3, 2, 1);
        let p = Problem::new(&g, 5);
        let l = Problem::dx_layout(&g, F32xBlock::LANES);
        let mut packed = vec![0.0; data_grad_packed_len(&g, F32xBlock::LANES)];
        pack_data_grad_weights(&p.w, &g, F32xBlock::LANES, &mut packed);
        let ep = BlockedEpilogue {
            relu: true,
            ..BlockedEpilogue::default()
        };
        let mut dx = vec![0.0; l.len()];
        data_grad_with::<F32xBlock>(&g, &p.blocked_dy(&g, F32xBlock::LANES), &packed, &ep, &mut dx);
    }

    #[test]
    fn data_grad_is_deterministic_for_any_thread_count() {
        for g in [
            square_conv(1, 48, 9, 23, 80, 3, 2, 1),
            square_conv(1, 80, 9, 23, 48, 3, 1, 1),
        ] {
            let p = Problem::new(&g, 11);
            let runs: Vec<Vec<f32>> = [1, 2, 2, 3]
                .iter()
                .map(|&t| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("a pool");
                    pool.install(|| p.fast::<F32xBlock>(&g))
                })
                .collect();
            assert!(runs.windows(2).all(|r| r[0] == r[1]), "{g:?}");
        }
    }

    /// The packed weights are the forward kernel's packing of the flipped, transposed
    /// weights (the stride-1 path relies on it).
    #[test]
    fn data_grad_packing_is_the_forward_packing_of_the_flipped_weights() {
        for (g, block) in [
            (square_conv(1, 19, 5, 5, 37, 3, 2, 1), 8),
            (square_conv(1, 70, 4, 4, 9, 1, 1, 0), 16),
        ] {
            let p = Problem::new(&g, 3);
            let (c, k, kh, kw) = (g.in_channels, g.out_channels, g.kernel_h, g.kernel_w);
            let mut flipped = vec![0.0; p.w.len()];
            for cc in 0..c {
                for kk in 0..k {
                    for y in 0..kh {
                        for x in 0..kw {
                            flipped[((cc * k + kk) * kh + y) * kw + x] =
                                p.w[((kk * c + cc) * kh + kh - 1 - y) * kw + kw - 1 - x];
                        }
                    }
                }
            }
            let t = transposed(&g);
            let mut want = vec![f32::NAN; direct::packed_len(&t, block, block)];
            direct::pack_weights(&flipped, None, &t, block, block, &mut want);
            let mut got = vec![f32::NAN; data_grad_packed_len(&g, block)];
            pack_data_grad_weights(&p.w, &g, block, &mut got);
            assert_eq!(got, want);
        }
    }
}
