//! Backward-filter of a 3x3 stride-1 pad-1 convolution by Winograd F(2x2,3x3) or
//! F(4x4,3x3), the adjoint of the forward pass of [`winograd`](super::winograd).
//!
//! The forward tile is `Y = A^T [ U .* V ] A` with `U = G g G^T` and `V = B^T d B`, linear
//! in `g`, so the gradient of a tile's filter is `G^T [ (A dY A^T) .* V ] G`. Summed over
//! tiles, for each of the `(m+2)^2` positions `xi`:
//!
//! 1. inputs `V = B^T d B` of a block of tiles, packed `[xi][C][T]` (the forward's input
//!    transform, unchanged);
//! 2. output gradients `W = A dY A^T`, packed `[xi][K][T]`, vectorised across tiles;
//! 3. `dU[xi] (K x C) += W[xi] (K x T) * V[xi]^T`: products along the long tile axis by
//!    the register-blocked kernel of [`filter_grad`](super::filter_grad), which reads
//!    both operands contiguously in place;
//! 4. once per call, `dg = G^T dU G` per filter, in f64.
//!
//! It does `(m+2)^2 / (9 m^2)` of the direct kernel's multiply-adds (0.44 for F2, 0.25 for
//! F4) plus the two transforms, so it pays where channels are many enough for the
//! products to outweigh the transforms.
//!
//! Determinism: blocks of tiles are grouped into a fixed number of chunks (one per
//! thread), each summed into its own partial `dU`, and the partials added in chunk order;
//! splitting a chunk's output channels across tasks changes which task computes an
//! element, never the order of its sum. Results depend on the thread count only.

use super::conv::{bias_grad, split_regions, FilterGradWorkspace};
use super::filter_grad::{block, Walk, MR, NR};
use super::im2col::ConvGeometry;
use super::scratch::with_scratch;
use super::winograd::{
    assert_winograd_geometry, input_transform, separable_2d, Tiling, WinogradTile, MIN_BLOCK_TILES, MIN_CHANNEL_BLOCK,
    TASKS_PER_THREAD,
};
use crate::simd::{self, F32x, F32xWide, LANES, WIDE_LANES};
use rayon::prelude::*;

/// Bytes of one position's `V[xi]` and `W[xi]` to aim for: the products of a position
/// re-read both from the L2 cache (`K / MR` and `C / NR` times), while the whole block
/// (all positions) may live in L3. Longer blocks also spend less on the cross-lane
/// reductions that end every register block's sums.
const POSITION_BYTES: usize = 256 << 10;

/// Most tiles in a block, so that a block's transforms (all positions) stay within L3.
const MAX_BLOCK_TILES: usize = 1024;

/// `dw += dL/dw` and `db += sum dY` of the 3x3 stride-1 pad-1 convolution `g` by
/// Winograd `tile`, like [`conv_backward_filter`](super::conv::conv_backward_filter).
///
/// Panics when `g` is not 3x3 stride-1 pad-1 or a slice does not match `g`.
pub fn winograd_backward_filter(
    g: &ConvGeometry,
    tile: WinogradTile,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    ws: &mut FilterGradWorkspace,
) {
    assert_winograd_geometry(g);
    assert_eq!(x.len(), g.batch * g.in_image());
    assert_eq!(dy.len(), g.batch * g.out_image());
    assert_eq!(dw.len(), g.out_channels * g.col_rows());
    if let Some(db) = db {
        bias_grad(g, dy, db);
    }
    match tile {
        WinogradTile::F2 => backward_filter_impl::<2, 4>(g, x, dy, dw, ws),
        WinogradTile::F4 => backward_filter_impl::<4, 6>(g, x, dy, dw, ws),
    }
}

/// How the tiles of one call are cut: `chunks` fixed partial sums of `per_chunk` blocks
/// of `block` tiles each, and each chunk's output channels in `kblocks` tasks.
#[derive(Clone, Copy, Debug)]
struct Plan {
    block: usize,
    blocks: usize,
    per_chunk: usize,
    chunks: usize,
    kblock: usize,
    kblocks: usize,
}

fn plan(tiles: usize, c: usize, k: usize, threads: usize) -> Plan {
    let per_tile = (c + k) * std::mem::size_of::<f32>();
    let cache_block = (POSITION_BYTES / per_tile.max(1)).clamp(MIN_BLOCK_TILES, MAX_BLOCK_TILES);
    // At least one block per thread while blocks keep `MIN_BLOCK_TILES`, and a whole
    // number of blocks per thread, so that chunks are even.
    let mut blocks = tiles
        .div_ceil(cache_block)
        .max(threads.min(tiles / MIN_BLOCK_TILES))
        .max(1);
    if blocks > 1 {
        blocks = blocks.div_ceil(threads) * threads;
    }
    let block = tiles.div_ceil(blocks).next_multiple_of(WIDE_LANES);
    let blocks = tiles.div_ceil(block).max(1);
    let chunks = threads.clamp(1, blocks);
    let per_chunk = blocks.div_ceil(chunks);
    let chunks = blocks.div_ceil(per_chunk);
    let kblocks = if chunks >= threads {
        1
    } else {
        (threads * TASKS_PER_THREAD)
            .div_ceil(chunks)
            .min(k.div_ceil(MIN_CHANNEL_BLOCK))
            .max(1)
    };
    let kblock = k.div_ceil(kblocks).max(1);
    Plan {
        block,
        blocks,
        per_chunk,
        chunks,
        kblock,
        kblocks: k.div_ceil(kblock).max(1),
    }
}

fn backward_filter_impl<const M: usize, const A: usize>(
    g: &ConvGeometry,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    ws: &mut FilterGradWorkspace,
) {
    let (c, k) = (g.in_channels, g.out_channels);
    let tiling = Tiling::of::<M>(g);
    let tiles = g.batch * tiling.per_image;
    if tiles == 0 || k == 0 || c == 0 {
        return;
    }
    let p = plan(tiles, c, k, rayon::current_num_threads());
    let du_len = A * A * k * c;
    // One partial `dU` per chunk, then their sum; task (chunk, kb) owns the
    // `[xi][kn][C]` region of its chunk's partial for its channels.
    ws.partials.resize((p.chunks + 1) * du_len, 0.0);
    let sizes = (0..p.chunks).flat_map(|_| (0..p.kblocks).map(|kb| A * A * p.kblock.min(k - kb * p.kblock) * c));
    let regions = split_regions(&mut ws.partials[..p.chunks * du_len], sizes);
    regions.into_par_iter().enumerate().for_each(|(task, part)| {
        let (chunk, kb) = (task / p.kblocks, task % p.kblocks);
        let k0 = kb * p.kblock;
        let kn = p.kblock.min(k - k0);
        part.fill(0.0);
        let first = chunk * p.per_chunk;
        for blk in first..(first + p.per_chunk).min(p.blocks) {
            let t0 = blk * p.block;
            let tn = p.block.min(tiles - t0);
            // Whole vectors of the products' `F32xWide` (absent tiles are zero).
            let tp = tn.next_multiple_of(WIDE_LANES);
            with_scratch(A * A * (c + kn) * tp, |s| {
                let (v, wt) = s.split_at_mut(A * A * c * tp);
                input_transform::<M, A>(&tiling, c, x, t0, tn, tp, v);
                gradient_transform::<M, A>(&tiling, k, dy, t0, tn, tp, k0, kn, wt);
                products(A * A, c, kn, tp, wt, v, part);
            });
        }
    });
    // The partials in chunk order, into `[xi][K][C]`.
    let (parts, total) = ws.partials.split_at_mut(p.chunks * du_len);
    total.fill(0.0);
    for chunk in parts.chunks_exact(du_len) {
        let mut at = 0;
        for kb in 0..p.kblocks {
            let k0 = kb * p.kblock;
            let kn = p.kblock.min(k - k0);
            for xi in 0..A * A {
                let src = &chunk[at + xi * kn * c..at + (xi + 1) * kn * c];
                let dst = &mut total[(xi * k + k0) * c..(xi * k + k0 + kn) * c];
                dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
            }
            at += A * A * kn * c;
        }
    }
    let total = &ws.partials[p.chunks * du_len..];
    let gm = if M == 2 {
        WinogradTile::F2.g()
    } else {
        WinogradTile::F4.g()
    };
    dw.par_chunks_mut(c * 9).enumerate().for_each(|(kr, row)| {
        for (cr, filt) in row.chunks_exact_mut(9).enumerate() {
            let du = |xi: usize| total[(xi * k + kr) * c + cr] as f64;
            // `G^T dU G`, the adjoint of `U = G g G^T`.
            let mut t = [[0f64; 3]; 6];
            for (i, ti) in t.iter_mut().enumerate().take(A) {
                for (b, tib) in ti.iter_mut().enumerate() {
                    *tib = (0..A).map(|j| du(i * A + j) * gm[j][b]).sum();
                }
            }
            for a in 0..3 {
                for b in 0..3 {
                    let v: f64 = (0..A).map(|i| gm[i][a] * t[i][b]).sum();
                    filt[a * 3 + b] += v as f32;
                }
            }
        }
    });
}

/// `part[xi][kr][ch] += sum_t wt[xi][kr][t] * v[xi][ch][t]` for every position: the
/// register blocks of [`block`], both operands read along the tile axis in place.
fn products(positions: usize, c: usize, kn: usize, tp: usize, wt: &[f32], v: &[f32], part: &mut [f32]) {
    let walk = Walk {
        segs: 1,
        rows: 1,
        wv: tp,
        xseg: 0,
        xrow: 0,
    };
    for xi in 0..positions {
        let (wx, vx) = (xi * kn * tp, xi * c * tp);
        let dst = &mut part[xi * kn * c..(xi + 1) * kn * c];
        for c0 in (0..c).step_by(NR) {
            // A short last block repeats its last row; the extra sums are dropped.
            let xoff: [usize; NR] = std::array::from_fn(|j| vx + (c0 + j).min(c - 1) * tp);
            for k0 in (0..kn).step_by(MR) {
                let yoff: [usize; MR] = std::array::from_fn(|i| wx + (k0 + i).min(kn - 1) * tp);
                let sums = block::<F32xWide, MR, NR>(wt, yoff, v, xoff, &walk);
                for (i, row) in sums.iter().enumerate().take(kn - k0) {
                    let d = &mut dst[(k0 + i) * c + c0..];
                    for (d, &s) in d.iter_mut().zip(row).take(c - c0) {
                        *d += s;
                    }
                }
            }
        }
    }
}

/// `W[xi][kr][t] = (A dY A^T)[xi]` for output channels `k0..k0+kn` of tiles `t0..t0+tn`,
/// `tp` columns per row (a multiple of [`LANES`]; absent tiles zero); `dY` is zero
/// outside the image.
#[allow(clippy::too_many_arguments)]
// Out of line (called once a block): profiles then show the transforms apart.
#[inline(never)]
fn gradient_transform<const M: usize, const A: usize>(
    tl: &Tiling,
    k: usize,
    dy: &[f32],
    t0: usize,
    tn: usize,
    tp: usize,
    k0: usize,
    kn: usize,
    wt: &mut [f32],
) {
    let (h, w) = (tl.h, tl.w);
    // Rows of M values that one vector holds per tile (M divides LANES).
    let rows_per_group = (LANES / M).min(M);
    let groups = M.div_ceil(rows_per_group);
    for tg in (0..tp).step_by(LANES) {
        let refs = tl.lane_tiles::<M>(t0 + tg, tn.saturating_sub(tg).min(LANES));
        for kk in 0..kn {
            // `y[i * M + j]`: value (i, j) of the output-gradient tile of every lane.
            let mut y = [F32x::ZERO; 16];
            for group in 0..groups {
                let mut vals = [F32x::ZERO; LANES];
                for (r, val) in refs.iter().zip(vals.iter_mut()) {
                    if !r.present {
                        continue;
                    }
                    let base = (r.n * k + k0 + kk) * h * w;
                    let cols = M.min(w - r.ox);
                    let mut lanes = [0f32; LANES];
                    for q in 0..rows_per_group {
                        let i = group * rows_per_group + q;
                        if r.oy + i >= h {
                            break;
                        }
                        let start = base + (r.oy + i) * w + r.ox;
                        if cols == M {
                            // A whole row: a fixed-size copy, one load (not a memcpy call).
                            let row: [f32; M] = dy[start..start + M].try_into().expect("M values");
                            lanes[q * M..q * M + M].copy_from_slice(&row);
                        } else {
                            lanes[q * M..q * M + cols].copy_from_slice(&dy[start..start + cols]);
                        }
                    }
                    *val = F32x::new(lanes);
                }
                let per_value = simd::transpose(vals);
                let first = group * rows_per_group * M;
                for (q, &v) in per_value.iter().enumerate().take(rows_per_group * M) {
                    y[first + q] = v;
                }
            }
            // `A Y A^T` (row-major `M x M` in, `A x A` out).
            let out = separable_2d::<M, A>(&y, gradient_1d::<A>);
            for (xi, &val) in out.iter().enumerate().take(A * A) {
                simd::store(val, &mut wt[(xi * kn + kk) * tp + tg..]);
            }
        }
    }
}

/// `o = A y` for one column of `m` values, the transpose of the forward's output
/// transform `A^T`. F(2x2,3x3):
/// ```text
/// A = [ 1  0 ]
///     [ 1  1 ]
///     [ 1 -1 ]
///     [ 0 -1 ]
/// ```
/// F(4x4,3x3):
/// ```text
/// A = [ 1  0  0  0 ]
///     [ 1  1  1  1 ]
///     [ 1 -1  1 -1 ]
///     [ 1  2  4  8 ]
///     [ 1 -2  4 -8 ]
///     [ 0  0  0  1 ]
/// ```
#[inline(always)]
fn gradient_1d<const A: usize>(y: &[F32x], o: &mut [F32x]) {
    if A == 4 {
        o[0] = y[0];
        o[1] = y[0] + y[1];
        o[2] = y[0] - y[1];
        o[3] = -y[1];
    } else {
        let s02 = y[0] + y[2];
        let s13 = y[1] + y[3];
        let e = y[2].mul_add(F32x::splat(4.0), y[0]);
        let f = y[3].mul_add(F32x::splat(8.0), y[1] * 2.0);
        o[0] = y[0];
        o[1] = s02 + s13;
        o[2] = s02 - s13;
        o[3] = e + f;
        o[4] = e - f;
        o[5] = y[3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::conv_backward_filter_naive;
    use crate::kernels::test_util::{max_rel_err, random};
    use crate::rng::Rng;

    /// Worst errors of F2 and F4 against the f64 reference over `shapes`, on 1-3 threads.
    fn check(shapes: &[(usize, usize, usize, usize, usize)], seed: u64) -> [f32; 2] {
        let mut rng = Rng::new(seed);
        let mut worst = [0f32; 2];
        for &(n, c, h, w, k) in shapes {
            let g = ConvGeometry::new(n, c, h, w, k, (3, 3), 1, 1).unwrap();
            let x = random(&mut rng, n * g.in_image());
            let dy = random(&mut rng, n * g.out_image());
            let init = random(&mut rng, k * g.col_rows());
            let (mut want, mut db_want) = (init.clone(), vec![0.5; k]);
            conv_backward_filter_naive(&g, &x, &dy, &mut want, Some(&mut db_want));
            // The gradient alone, so that the initial values do not hide its error.
            let grad: Vec<f32> = want.iter().zip(&init).map(|(a, b)| a - b).collect();
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                for (slot, tile, bound) in [(0, WinogradTile::F2, 1e-4), (1, WinogradTile::F4, 1e-3)] {
                    let (mut got, mut db) = (init.clone(), vec![0.5; k]);
                    pool.install(|| {
                        winograd_backward_filter(&g, tile, &x, &dy, &mut got, Some(&mut db), &mut Default::default())
                    });
                    let got_grad: Vec<f32> = got.iter().zip(&init).map(|(a, b)| a - b).collect();
                    let e = max_rel_err(&got_grad, &grad);
                    assert!(e < bound, "{tile:?} {g:?} on {threads} threads: {e:.2e}");
                    assert!(max_rel_err(&db, &db_want) < 1e-6, "bias gradient");
                    worst[slot] = worst[slot].max(e);
                }
            }
        }
        println!(
            "winograd backward-filter worst max rel err: F2 {:.2e}  F4 {:.2e}",
            worst[0], worst[1]
        );
        worst
    }

    #[test]
    fn matches_naive_on_resnet20_shapes() {
        // (batch, C, H, W, K): ResNet-20's three 3x3 stride-1 shapes, batch 2.
        check(&[(2, 16, 32, 32, 16), (2, 32, 16, 16, 32), (2, 64, 8, 8, 64)], 5);
    }

    #[test]
    fn matches_naive_on_odd_shapes() {
        // Partial tiles on both borders, 1x1 images, K and C off the register block,
        // several blocks and chunks, channel-split tasks at batch 1.
        check(
            &[
                (3, 3, 7, 9, 5),
                (1, 1, 1, 1, 1),
                (2, 5, 1, 6, 7),
                (3, 11, 13, 5, 9),
                (1, 40, 13, 9, 72),
                (5, 7, 30, 17, 3),
                (2, 9, 2, 3, 2),
            ],
            6,
        );
    }

    #[test]
    fn repeated_runs_agree_bit_for_bit() {
        let mut rng = Rng::new(12);
        let g = ConvGeometry::new(3, 12, 21, 19, 20, (3, 3), 1, 1).unwrap();
        let x = random(&mut rng, g.batch * g.in_image());
        let dy = random(&mut rng, g.batch * g.out_image());
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for tile in [WinogradTile::F2, WinogradTile::F4] {
            let run = || {
                let mut dw = vec![0.0; g.out_channels * g.col_rows()];
                pool.install(|| winograd_backward_filter(&g, tile, &x, &dy, &mut dw, None, &mut Default::default()));
                dw
            };
            let first = run();
            assert!(first.iter().any(|&v| v != 0.0));
            for _ in 0..2 {
                assert_eq!(run(), first, "{tile:?}");
            }
        }
    }

    #[test]
    fn gradient_transform_is_the_transpose_of_the_output_transform() {
        // A^T of the forward (rows of `o = A^T m`) against `gradient_1d`'s `o = A y`.
        let at2: [[f64; 4]; 2] = [[1., 1., 1., 0.], [0., 1., -1., -1.]];
        let at4: [[f64; 6]; 4] = [
            [1., 1., 1., 1., 1., 0.],
            [0., 1., -1., 2., -2., 0.],
            [0., 1., 1., 4., 4., 0.],
            [0., 1., -1., 8., -8., 1.],
        ];
        fn check<const A: usize, const M: usize>(at: &[[f64; A]; M]) {
            let mut rng = Rng::new(1);
            let y: Vec<F32x> = (0..M).map(|_| F32x::splat(rng.normal() as f32)).collect();
            let mut o = [F32x::ZERO; 6];
            gradient_1d::<A>(&y, &mut o);
            for (i, oi) in o.iter().enumerate().take(A) {
                let want: f64 = (0..M).map(|p| at[p][i] * y[p].to_array()[0] as f64).sum();
                assert!((oi.to_array()[0] as f64 - want).abs() < 1e-5, "A row {i}");
            }
        }
        check::<4, 2>(&at2);
        check::<6, 4>(&at4);
    }
}
