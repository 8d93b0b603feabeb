//! Winograd minimal-filtering convolution for 3x3, stride-1, pad-1 convolutions over NCHW
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016,
//! arXiv:1509.09308, 2015).
//!
//! Per channel, an `(m+2) x (m+2)` input tile `d` and a 3x3 filter `g` give an `m x m`
//! output tile `Y = A^T [ (G g G^T) .* (B^T d B) ] A`. Summed over channels, the
//! elementwise products become, for each of the `(m+2)^2` positions `xi`, one matrix
//! product `M[xi] (K x T) = U[xi] (K x C) * V[xi] (C x T)` over a block of `T` tiles:
//!
//! 1. filters `U = G g G^T`, packed `[xi][K][C]` ([`transform_filters`], cacheable);
//! 2. inputs `V = B^T d B` of one block of tiles, packed `[xi][C][T]`, vectorised across
//!    tiles with [`F32x`];
//! 3. `(m+2)^2` small products by [`gemm_unpacked`], a register-blocked micro-kernel that
//!    reads `U` and `V` in place (measured faster here than matrixmultiply's `sgemm`,
//!    whose per-call packing costs as much as these small products);
//! 4. outputs `Y = A^T M A` through the epilogue (bias, residual, ReLU), clipped at the image border (partial tiles).
//!
//! Blocks of tiles (across images, so small images still fill a block) are sized so
//! that `V` and `M` of one block stay near the L2 cache; rayon tasks are
//! (tile-block, output-channel-block) pairs, so batch 1 keeps every core busy, and each
//! output element is computed by exactly one task (deterministic).
//!
//! F(2x2,3x3) does 16 multiplies per tile and channel pair instead of 36 and is about as
//! accurate as direct convolution; F(4x4,3x3) does 36 instead of 144 and loses one to two
//! decimal digits in fp32.

use super::epilogue::Epilogue;
use super::im2col::ConvGeometry;
use super::scratch::with_scratch;
use super::shared_out::SharedOut;
use super::small_gemm::gemm_unpacked;
use crate::simd::{self, F32x, LANES};
use rayon::prelude::*;

/// The output tile size of a Winograd convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WinogradTile {
    /// F(2x2,3x3): 4x4 input tiles, 2.25x fewer multiplies than direct convolution.
    F2,
    /// F(4x4,3x3): 6x6 input tiles, 4x fewer multiplies, about 10x larger fp32 error.
    F4,
}

impl WinogradTile {
    /// Output tile side `m`.
    pub fn m(self) -> usize {
        match self {
            WinogradTile::F2 => 2,
            WinogradTile::F4 => 4,
        }
    }

    /// Input tile side `m + 2`.
    pub fn alpha(self) -> usize {
        self.m() + 2
    }

    /// Transform positions `(m+2)^2`: the number of per-position GEMMs.
    pub fn positions(self) -> usize {
        self.alpha() * self.alpha()
    }

    /// `G`, the filter transform, in f64 (Lavin & Gray eq. (7) and sec. 4.2).
    pub(crate) fn g(self) -> &'static [[f64; 3]] {
        match self {
            WinogradTile::F2 => &G2,
            WinogradTile::F4 => &G4,
        }
    }
}

/// `G` of F(2x2,3x3), Lavin & Gray eq. (7).
const G2: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];

/// `G` of F(4x4,3x3), interpolation points 0, +-1, +-2, infinity (Lavin & Gray sec. 4.2).
const G4: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// Bytes of one block's `V` and `M` to aim for: half of the 2 MB per-core L2, leaving the
/// other half for the rows of `U` streaming through.
const BLOCK_BYTES: usize = 1 << 20;

/// Fewest tiles in a block (unless the problem has fewer): below this, each element of
/// `U` read from L2 or memory feeds too few multiply-adds (one per tile).
pub(super) const MIN_BLOCK_TILES: usize = 32;

/// Most tiles in a block: beyond this the GEMMs are no faster, and smaller blocks
/// balance better across threads.
const MAX_BLOCK_TILES: usize = 256;

/// Fewest output channels per task when channels are split for parallelism: every
/// channel-split task repeats the block's input transform, which must stay small next to
/// its `16 x C x T` products.
pub(super) const MIN_CHANNEL_BLOCK: usize = 16;

/// Tasks to aim for per thread, so that uneven tasks still balance.
pub(super) const TASKS_PER_THREAD: usize = 2;

/// Transformed filters `U = G g G^T`, packed `[xi][K][C]` so that `U[xi]` is a row-major
/// `K x C` matrix. Built once per training step, or once per model for inference.
#[derive(Clone, Debug)]
pub struct WinogradFilters {
    /// The tile size these filters were transformed for.
    pub tile: WinogradTile,
    /// Output channels (rows of each `U[xi]`).
    pub k: usize,
    /// Input channels (columns of each `U[xi]`).
    pub c: usize,
    /// `positions * k * c` values.
    pub data: Vec<f32>,
}

/// Transforms `w` (`k x c x 3 x 3`, PyTorch's layout) into Winograd filters for `tile`.
pub fn transform_filters(tile: WinogradTile, w: &[f32], k: usize, c: usize) -> WinogradFilters {
    let mut f = WinogradFilters {
        tile,
        k: 0,
        c: 0,
        data: Vec::new(),
    };
    transform_filters_into(tile, w, k, c, false, &mut f);
    f
}

/// Like [`transform_filters`] but reuses `out`'s memory; with `rotated`, transforms the
/// backward-data filters instead: `w` rotated by 180 degrees with K and C swapped
/// (`out` is then `c x k`).
pub fn transform_filters_into(
    tile: WinogradTile,
    w: &[f32],
    k: usize,
    c: usize,
    rotated: bool,
    out: &mut WinogradFilters,
) {
    assert_eq!(w.len(), k * c * 9, "winograd: filters must be k x c x 3 x 3");
    let (rows, cols) = if rotated { (c, k) } else { (k, c) };
    let a = tile.alpha();
    let g = tile.g();
    out.tile = tile;
    out.k = rows;
    out.c = cols;
    out.data.resize(tile.positions() * rows * cols, 0.0);
    if rows * cols == 0 {
        return;
    }
    let u = SharedOut::new(&mut out.data);
    // One task per block of output rows r (an output channel, or an input channel when
    // rotated); each writes rows U[xi][r] for every xi, so tasks write disjoint elements.
    let rows_per_task = rows
        .div_ceil(rayon::current_num_threads() * TASKS_PER_THREAD * 4)
        .max(1);
    (0..rows.div_ceil(rows_per_task)).into_par_iter().for_each(|task| {
        with_scratch((9 + 3 * a + 1) * cols, |s| {
            let (taps, rest) = s.split_at_mut(9 * cols);
            let (gt, row) = rest.split_at_mut(3 * a * cols);
            for r in task * rows_per_task..((task + 1) * rows_per_task).min(rows) {
                // taps[i*3+j][s] = tap (i, j) of the filter (r, s), rotated if asked.
                for sc in 0..cols {
                    let (kk, cc) = if rotated { (sc, r) } else { (r, sc) };
                    let f = &w[(kk * c + cc) * 9..(kk * c + cc + 1) * 9];
                    for t in 0..9 {
                        taps[t * cols + sc] = if rotated { f[8 - t] } else { f[t] };
                    }
                }
                // Separable: gt[p][j] = sum_i G[p][i] taps[i][j], then
                // U[p*a+q] = sum_j G[q][j] gt[p][j], each a vectorisable sweep over s.
                for (p, gp) in g.iter().enumerate() {
                    for j in 0..3 {
                        let dst = &mut gt[(p * 3 + j) * cols..(p * 3 + j + 1) * cols];
                        dst.fill(0.0);
                        for (i, gpi) in gp.iter().enumerate() {
                            if *gpi != 0.0 {
                                axpy(*gpi as f32, &taps[(i * 3 + j) * cols..(i * 3 + j + 1) * cols], dst);
                            }
                        }
                    }
                }
                for p in 0..a {
                    for (q, gq) in g.iter().enumerate() {
                        row.fill(0.0);
                        for (j, gqj) in gq.iter().enumerate() {
                            if *gqj != 0.0 {
                                axpy(*gqj as f32, &gt[(p * 3 + j) * cols..(p * 3 + j + 1) * cols], row);
                            }
                        }
                        u.write_slice(((p * a + q) * rows + r) * cols, row);
                    }
                }
            }
        });
    });
}

/// `y += alpha * x` (auto-vectorised).
#[inline(always)]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv += alpha * xv;
    }
}

pub(super) fn assert_winograd_geometry(g: &ConvGeometry) {
    assert!(
        g.kernel_h == 3 && g.kernel_w == 3 && g.stride == 1 && g.pad == 1,
        "winograd: only 3x3 stride-1 pad-1 convolutions, found {g:?}"
    );
}

/// `y = conv(x, w) + bias` by Winograd with pre-transformed `filters`; `y` is overwritten.
/// Only 3x3, stride-1, pad-1 convolutions (any batch, channels and image size).
pub fn winograd_forward(
    g: &ConvGeometry,
    tile: WinogradTile,
    x: &[f32],
    filters: &WinogradFilters,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    winograd_forward_fused(g, tile, x, filters, &Epilogue::bias(bias), y);
}

/// `y = epilogue(conv(x, w))` by Winograd: [`winograd_forward`] with bias, residual and
/// ReLU applied in the output transform, as each value is stored.
pub fn winograd_forward_fused(
    g: &ConvGeometry,
    tile: WinogradTile,
    x: &[f32],
    filters: &WinogradFilters,
    epilogue: &Epilogue,
    y: &mut [f32],
) {
    assert_winograd_geometry(g);
    assert_eq!(filters.tile, tile, "winograd: filters transformed for another tile");
    assert_eq!(
        (filters.k, filters.c),
        (g.out_channels, g.in_channels),
        "winograd: filter shape"
    );
    assert_eq!(x.len(), g.batch * g.in_image());
    assert_eq!(y.len(), g.batch * g.out_image());
    epilogue.check(g.out_channels, y.len());
    match tile {
        WinogradTile::F2 => forward_impl::<2, 4>(g, x, &filters.data, epilogue, y),
        WinogradTile::F4 => forward_impl::<4, 6>(g, x, &filters.data, epilogue, y),
    }
}

/// `dx = conv^T(dy, w)` by Winograd: the 3x3 stride-1 pad-1 convolution of `dy` with the
/// filters rotated by 180 degrees and K and C swapped, through the forward path. `dx` is
/// overwritten; the rotated filters are transformed on every call.
pub fn winograd_backward_data(g: &ConvGeometry, tile: WinogradTile, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    assert_winograd_geometry(g);
    let mut f = WinogradFilters {
        tile,
        k: 0,
        c: 0,
        data: Vec::new(),
    };
    winograd_backward_data_with(g, tile, &mut f, w, dy, dx);
}

/// [`winograd_backward_data`] with a caller-owned buffer for the transformed rotated
/// filters (`filters` is overwritten), so training steps do not allocate.
pub fn winograd_backward_data_with(
    g: &ConvGeometry,
    tile: WinogradTile,
    filters: &mut WinogradFilters,
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
) {
    assert_winograd_geometry(g);
    transform_filters_into(tile, w, g.out_channels, g.in_channels, true, filters);
    let gt = ConvGeometry {
        in_channels: g.out_channels,
        out_channels: g.in_channels,
        in_h: g.out_h,
        in_w: g.out_w,
        out_h: g.in_h,
        out_w: g.in_w,
        ..*g
    };
    winograd_forward(&gt, tile, dy, filters, None, dx);
}

/// How the tiles of one call are cut into tasks.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Tiles per block (a multiple of `LANES`, except that blocks hold `tiles` at most).
    block: usize,
    blocks: usize,
    /// Output channels per task.
    kblock: usize,
    kblocks: usize,
}

fn plan(tiles: usize, alpha: usize, c: usize, k: usize, threads: usize) -> Plan {
    let per_tile = alpha * alpha * (c + k) * std::mem::size_of::<f32>();
    let cache_block = (BLOCK_BYTES / per_tile.max(1)).clamp(MIN_BLOCK_TILES, MAX_BLOCK_TILES);
    // Round the number of blocks up to a multiple of the thread count so that threads
    // get equal shares, then even out the blocks.
    let mut blocks = tiles.div_ceil(cache_block).max(1);
    if blocks > 1 {
        blocks = blocks.div_ceil(threads) * threads;
    }
    let block = tiles
        .div_ceil(blocks)
        .next_multiple_of(LANES)
        .min(tiles.next_multiple_of(LANES))
        .max(1);
    let blocks = tiles.div_ceil(block);
    let want = threads * TASKS_PER_THREAD;
    let kblocks = if blocks >= threads {
        1
    } else {
        want.div_ceil(blocks).min(k.div_ceil(MIN_CHANNEL_BLOCK)).max(1)
    };
    let kblock = k.div_ceil(kblocks).max(1);
    Plan {
        block,
        blocks,
        kblock,
        kblocks: k.div_ceil(kblock),
    }
}

/// Where the tiles live: tile `t` of the whole batch is image `t / per_image`, tile row
/// `(t % per_image) / cols`, tile column `(t % per_image) % cols`.
#[derive(Clone, Copy)]
pub(super) struct Tiling {
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) cols: usize,
    pub(super) per_image: usize,
}

/// One lane's tile: its image, top-left corner of the output tile, and whether it is
/// present (blocks are padded to whole vectors with absent tiles).
#[derive(Clone, Copy, Default)]
pub(super) struct TileRef {
    pub(super) present: bool,
    pub(super) n: usize,
    pub(super) oy: usize,
    pub(super) ox: usize,
}

impl Tiling {
    /// The `M x M` output tiles of the 3x3 stride-1 pad-1 convolution `g`.
    pub(super) fn of<const M: usize>(g: &ConvGeometry) -> Tiling {
        let (h, w) = (g.in_h, g.in_w);
        Tiling {
            h,
            w,
            cols: w.div_ceil(M),
            per_image: h.div_ceil(M) * w.div_ceil(M),
        }
    }

    pub(super) fn lane_tiles<const M: usize>(&self, first: usize, count: usize) -> [TileRef; LANES] {
        let mut refs = [TileRef::default(); LANES];
        for (l, r) in refs.iter_mut().enumerate().take(count) {
            let t = first + l;
            let (n, rem) = (t / self.per_image, t % self.per_image);
            *r = TileRef {
                present: true,
                n,
                oy: (rem / self.cols) * M,
                ox: (rem % self.cols) * M,
            };
        }
        refs
    }
}

fn forward_impl<const M: usize, const A: usize>(
    g: &ConvGeometry,
    x: &[f32],
    u: &[f32],
    epilogue: &Epilogue,
    y: &mut [f32],
) {
    let (c, k) = (g.in_channels, g.out_channels);
    let tiling = Tiling::of::<M>(g);
    let tiles = g.batch * tiling.per_image;
    if tiles == 0 || k == 0 {
        return;
    }
    let p = plan(tiles, A, c, k, rayon::current_num_threads());
    let out = SharedOut::new(y);
    (0..p.blocks * p.kblocks).into_par_iter().for_each(|task| {
        let (blk, kb) = (task / p.kblocks, task % p.kblocks);
        let t0 = blk * p.block;
        let tn = p.block.min(tiles - t0);
        let tp = tn.next_multiple_of(LANES);
        let k0 = kb * p.kblock;
        let kn = p.kblock.min(k - k0);
        with_scratch(A * A * (c + kn) * tp, |s| {
            let (v, m) = s.split_at_mut(A * A * c * tp);
            input_transform::<M, A>(&tiling, c, x, t0, tn, tp, v);
            for xi in 0..A * A {
                let u_xi = &u[(xi * k + k0) * c..(xi * k + k0 + kn) * c];
                let v_xi = &v[xi * c * tp..(xi + 1) * c * tp];
                let m_xi = &mut m[xi * kn * tp..(xi + 1) * kn * tp];
                gemm_unpacked(u_xi, v_xi, m_xi, kn, c, tp);
            }
            output_transform::<M, A>(&tiling, k, m, t0, tn, tp, k0, kn, epilogue, &out);
        });
    });
}

/// `V[xi][ch][t] = (B^T d B)[xi]` for tiles `t0..t0+tn` of the batch, `tp` columns per row
/// (absent tiles of the last vector are zero), vectorised across [`LANES`] tiles.
// Out of line (called once a task): profiles then show the transforms apart.
#[inline(never)]
pub(super) fn input_transform<const M: usize, const A: usize>(
    tl: &Tiling,
    c: usize,
    x: &[f32],
    t0: usize,
    tn: usize,
    tp: usize,
    v: &mut [f32],
) {
    let (h, w) = (tl.h, tl.w);
    // Column offsets of the vector loads that cover a patch row of A values.
    let col_offsets: &[usize] = if A > LANES { &[0, A - LANES] } else { &[0] };
    for tg in (0..tp).step_by(LANES) {
        let refs = tl.lane_tiles::<M>(t0 + tg, tn.saturating_sub(tg).min(LANES));
        // Each lane loads its patch rows as whole vectors and clears the lanes that fall
        // left or right of the image (they read a neighbouring row). `cols[l][o]` is the
        // image column of lane 0 of the load at `col_offsets[o]`.
        let mut cols = [[0isize; 2]; LANES];
        let mut masks = [[None; 2]; LANES];
        for (l, r) in refs.iter().enumerate() {
            for (o, &co) in col_offsets.iter().enumerate() {
                let first = r.ox as isize - 1 + co as isize;
                cols[l][o] = first;
                let last = first + A.min(LANES) as isize - 1;
                if first < 0 || last >= w as isize {
                    let lane_col = simd::lane_indices() + F32x::splat(first as f32);
                    masks[l][o] = Some(lane_col.simd_ge(F32x::ZERO) & lane_col.simd_lt(F32x::splat(w as f32)));
                }
            }
        }
        // What each (lane, patch row, load) reads, decided once for all channels: nothing
        // (absent tile or a row of padding), a whole vector at channel 0's offset plus
        // `ch * h * w`, or (where a whole load would leave `x`) `patch_row`'s gather.
        let plane = h * w;
        let mut loads = [[[RowLoad::Zero; 2]; 6]; LANES];
        for (l, r) in refs.iter().enumerate() {
            for (i, row_loads) in loads[l].iter_mut().enumerate().take(A) {
                let iy = r.oy + i; // input row iy - 1
                if !r.present || iy < 1 || iy > h {
                    continue;
                }
                for (o, load) in row_loads.iter_mut().enumerate().take(col_offsets.len()) {
                    let start = (((r.n * c) * h + iy - 1) * w) as isize + cols[l][o];
                    let last = start + (c.saturating_sub(1) * plane) as isize;
                    *load = if start >= 0 && last as usize + LANES <= x.len() {
                        RowLoad::Vector(start as usize)
                    } else {
                        RowLoad::Gather
                    };
                }
            }
        }
        // Rows of LANES tiles, transposed: `d[i * A + j]` holds patch value (i, j) of every
        // lane. Every channel overwrites all A * A of them, so it is cleared only once.
        let mut d = [F32x::ZERO; 36];
        for ch in 0..c {
            for i in 0..A {
                for (o, &co) in col_offsets.iter().enumerate() {
                    let mut rows = [F32x::ZERO; LANES];
                    for (l, row) in rows.iter_mut().enumerate() {
                        *row = match loads[l][i][o] {
                            RowLoad::Zero => F32x::ZERO,
                            RowLoad::Vector(start) => {
                                let v = simd::load(&x[start + ch * plane..]);
                                masks[l][o].map_or(v, |m| m.select(v, F32x::ZERO))
                            }
                            RowLoad::Gather => {
                                patch_row::<A>(&refs[l], cols[l][o], masks[l][o], x, (c, h, w), ch, i, co)
                            }
                        };
                    }
                    let t = simd::transpose(rows);
                    for (j, &col) in t.iter().enumerate().take(A - co) {
                        d[i * A + co + j] = col;
                    }
                }
            }
            let vv = separable_2d::<A, A>(&d, input_1d::<A>);
            for (xi, &val) in vv.iter().enumerate().take(A * A) {
                simd::store(val, &mut v[(xi * c + ch) * tp + tg..]);
            }
        }
    }
}

/// How the input transform reads one patch row of one lane.
#[derive(Clone, Copy)]
enum RowLoad {
    /// An absent tile, or a row of the zero padding.
    Zero,
    /// A whole vector at this offset for channel 0 (plus `ch * h * w` for channel `ch`).
    Vector(usize),
    /// Near the ends of the input, through [`patch_row`].
    Gather,
}

/// Row `i` of tile `r`'s A x A input patch in channel `ch`, from column `co` on, as one
/// vector whose lane 0 is image column `first`: loaded whole (the values past the patch
/// are ignored by the transform) with the lanes outside the image cleared by `mask`, or
/// gathered one by one where a whole load would leave `x`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn patch_row<const A: usize>(
    r: &TileRef,
    first: isize,
    mask: Option<F32x>,
    x: &[f32],
    (c, h, w): (usize, usize, usize),
    ch: usize,
    i: usize,
    co: usize,
) -> F32x {
    let iy = r.oy + i; // input row iy - 1
    if !r.present || iy < 1 || iy > h {
        return F32x::ZERO;
    }
    let row = ((r.n * c + ch) * h + iy - 1) * w;
    let start = row as isize + first;
    if start >= 0 && start as usize + LANES <= x.len() {
        let v = simd::load(&x[start as usize..]);
        return mask.map_or(v, |m| m.select(v, F32x::ZERO));
    }
    let mut t = [0f32; LANES];
    for (j, tj) in t.iter_mut().enumerate().take(A - co) {
        let ix = r.ox + co + j; // input column ix - 1
        if ix >= 1 && ix <= w {
            *tj = x[row + ix - 1];
        }
    }
    F32x::new(t)
}

/// `Y = epilogue(A^T M A)` for output channels `k0..k0+kn` of tiles `t0..t0+tn`, written
/// to the NCHW output through `out`, clipped at the image border.
#[allow(clippy::too_many_arguments)]
// Out of line (called once a task): profiles then show the transforms apart.
#[inline(never)]
fn output_transform<const M: usize, const A: usize>(
    tl: &Tiling,
    k: usize,
    m: &[f32],
    t0: usize,
    tn: usize,
    tp: usize,
    k0: usize,
    kn: usize,
    epilogue: &Epilogue,
    out: &SharedOut,
) {
    let (h, w) = (tl.h, tl.w);
    // Where image rows are whole pairs of 4-wide tiles, the two tiles of each lane pair
    // are neighbours in one tile row (every block starts at a multiple of LANES tiles
    // and every image has an even number of them), so each of their output rows is one
    // whole vector: see [`pair_rows`].
    let paired = M == 4 && LANES == 8 && w.is_multiple_of(8);
    for tg in (0..tp).step_by(LANES) {
        let refs = tl.lane_tiles::<M>(t0 + tg, tn.saturating_sub(tg).min(LANES));
        // Every channel overwrites all A * A values, so it is cleared only once.
        let mut mv = [F32x::ZERO; 36];
        for kk in 0..kn {
            for (xi, val) in mv.iter_mut().enumerate().take(A * A) {
                *val = simd::load(&m[(xi * kn + kk) * tp + tg..]);
            }
            let yv = separable_2d::<A, M>(&mv, output_1d::<A>);
            let b = F32x::splat(epilogue.bias.map_or(0.0, |b| b[k0 + kk]));
            // The bias is in; what is left (residual, ReLU) goes row by row.
            let rest = Epilogue {
                bias: None,
                ..*epilogue
            };
            // Transposed in groups of LANES values: lane l of group `g` becomes tile l's
            // output values g * LANES .. (g + 1) * LANES, whole rows of M.
            for group in 0..(M * M).div_ceil(LANES) {
                let mut vals = [F32x::ZERO; LANES];
                for (q, val) in vals.iter_mut().enumerate() {
                    if group * LANES + q < M * M {
                        *val = yv[group * LANES + q] + b;
                    }
                }
                let per_tile = simd::transpose(vals);
                // Rows of M values that lane group `group` holds per tile.
                let rows = LANES.min(M * M) / M;
                let first_row = group * LANES / M;
                if paired {
                    pair_rows(&rest, &refs, &per_tile, (k0 + kk, k, h, w), first_row, rows, out);
                    continue;
                }
                for (r, &tile_v) in refs.iter().zip(&per_tile) {
                    if !r.present {
                        continue;
                    }
                    let base = (r.n * k + k0 + kk) * h * w;
                    let cols = M.min(w - r.ox);
                    if cols == M && r.oy + first_row + rows <= h && first_row + rows <= M {
                        // Whole rows inside the image: residual and ReLU on the vector.
                        let start = |q: usize| base + (r.oy + first_row + q) * w + r.ox;
                        let mut v = tile_v;
                        if let Some(res) = rest.residual {
                            let mut add = [0f32; LANES];
                            for q in 0..rows {
                                add[q * M..(q + 1) * M].copy_from_slice(&res[start(q)..start(q) + M]);
                            }
                            v += F32x::new(add);
                        }
                        if rest.relu {
                            v = relu_lanes(v);
                        }
                        let vals = v.to_array();
                        for q in 0..rows {
                            let mut row = [0f32; M];
                            row.copy_from_slice(&vals[q * M..(q + 1) * M]);
                            out.write_array(start(q), row);
                        }
                        continue;
                    }
                    let tile = tile_v.to_array();
                    for q in (0..LANES).step_by(M) {
                        let i = (group * LANES + q) / M;
                        if i >= M || r.oy + i >= h {
                            break;
                        }
                        let start = base + (r.oy + i) * w + r.ox;
                        if cols == M {
                            let mut row = [0f32; M];
                            row.copy_from_slice(&tile[q..q + M]);
                            rest.apply_run(0, start, &mut row);
                            out.write_array(start, row);
                        } else {
                            for j in 0..cols {
                                out.write(start + j, rest.apply(0, start + j, tile[q + j]));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Stores rows `first_row..first_row + rows` of F(4x4) output tiles, lane pair by lane
/// pair (tiles `2q` and `2q + 1`, side by side in one tile row): each output row of a
/// pair is 8 contiguous values, loaded (residual), computed (ReLU) and stored as one
/// vector. `per_tile[l]` holds tile `l`'s rows, `M = 4` values each, bias included.
#[inline(always)]
fn pair_rows(
    rest: &Epilogue,
    refs: &[TileRef; LANES],
    per_tile: &[F32x; LANES],
    (kg, k, h, w): (usize, usize, usize, usize),
    first_row: usize,
    rows: usize,
    out: &SharedOut,
) {
    const M: usize = 4;
    for q in 0..LANES / 2 {
        let r = &refs[2 * q];
        if !r.present {
            continue;
        }
        debug_assert!(refs[2 * q + 1].present && refs[2 * q + 1].ox == r.ox + M);
        let (left, right) = (per_tile[2 * q].to_array(), per_tile[2 * q + 1].to_array());
        let base = (r.n * k + kg) * h * w + r.ox;
        for i in 0..rows {
            let y = r.oy + first_row + i;
            if y >= h {
                break;
            }
            let at = base + y * w;
            let mut v = F32x::new(std::array::from_fn(|j| {
                if j < M {
                    left[i * M + j]
                } else {
                    right[i * M + j - M]
                }
            }));
            if let Some(res) = rest.residual {
                v += simd::load(&res[at..]);
            }
            if rest.relu {
                v = relu_lanes(v);
            }
            out.write_array(at, v.to_array());
        }
    }
}

/// `max(0, v)` per lane; NaN compares false and stays, as in the scalar epilogue.
#[inline(always)]
fn relu_lanes(v: F32x) -> F32x {
    v.simd_lt(F32x::ZERO).select(F32x::ZERO, v)
}

/// `F d F^T` of one tile, for the 1-D transform `f` (`o = F d`, `I` values in, `O` out):
/// `f` on every column of the row-major `I x I` tile `d`, then on every row, giving a
/// row-major `O x O` tile (in the first `O * O` values).
#[inline(always)]
pub(super) fn separable_2d<const I: usize, const O: usize>(d: &[F32x], f: impl Fn(&[F32x], &mut [F32x])) -> [F32x; 36] {
    let mut t = [F32x::ZERO; 36];
    let mut o = [F32x::ZERO; 36];
    let mut col = [F32x::ZERO; 6];
    let mut res = [F32x::ZERO; 6];
    for j in 0..I {
        for i in 0..I {
            col[i] = d[i * I + j];
        }
        f(&col[..I], &mut res[..O]);
        for i in 0..O {
            t[i * I + j] = res[i];
        }
    }
    for i in 0..O {
        f(&t[i * I..i * I + I], &mut o[i * O..i * O + O]);
    }
    o
}

/// `o = B^T d` for one column of `A` values. F(2x2,3x3):
/// ```text
/// B^T = [ 1  0 -1  0 ]
///       [ 0  1  1  0 ]
///       [ 0 -1  1  0 ]
///       [ 0  1  0 -1 ]
/// ```
/// F(4x4,3x3):
/// ```text
/// B^T = [ 4  0 -5  0  1  0 ]
///       [ 0 -4 -4  1  1  0 ]
///       [ 0  4 -4 -1  1  0 ]
///       [ 0 -2 -1  2  1  0 ]
///       [ 0  2 -1 -2  1  0 ]
///       [ 0  4  0 -5  0  1 ]
/// ```
#[inline(always)]
fn input_1d<const A: usize>(d: &[F32x], o: &mut [F32x]) {
    let d: &[F32x; A] = d[..A].try_into().expect("a column of A values");
    o[..A].copy_from_slice(&super::blocked::winograd::input_1d::<F32x, A>(d));
}

/// `o = A^T m` for one column of `A` values. F(2x2,3x3):
/// ```text
/// A^T = [ 1  1  1  0 ]
///       [ 0  1 -1 -1 ]
/// ```
/// F(4x4,3x3):
/// ```text
/// A^T = [ 1  1  1  1  1  0 ]
///       [ 0  1 -1  2 -2  0 ]
///       [ 0  1  1  4  4  0 ]
///       [ 0  1 -1  8 -8  1 ]
/// ```
#[inline(always)]
fn output_1d<const A: usize>(m: &[F32x], o: &mut [F32x]) {
    use super::blocked::winograd::output_1d as one_d;
    let m: &[F32x; A] = m[..A].try_into().expect("a column of A values");
    // `A - 2` outputs; a const generic cannot be computed from `A`, so both tiles are named.
    if A == 4 {
        o[..2].copy_from_slice(&one_d::<F32x, A, 2>(m));
    } else {
        o[..4].copy_from_slice(&one_d::<F32x, A, 4>(m));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::{
        conv_backward_data, conv_backward_data_naive, conv_forward, conv_forward_fused, conv_forward_naive,
    };
    use crate::kernels::epilogue::epilogue_naive;
    use crate::kernels::test_util::{max_rel_err, random};
    use crate::rng::Rng;

    /// `B^T` and `A^T` as matrices, to check the hand-written 1-D transforms against.
    const BT2: [[f64; 4]; 4] = [
        [1., 0., -1., 0.],
        [0., 1., 1., 0.],
        [0., -1., 1., 0.],
        [0., 1., 0., -1.],
    ];
    const AT2: [[f64; 4]; 2] = [[1., 1., 1., 0.], [0., 1., -1., -1.]];
    const BT4: [[f64; 6]; 6] = [
        [4., 0., -5., 0., 1., 0.],
        [0., -4., -4., 1., 1., 0.],
        [0., 4., -4., -1., 1., 0.],
        [0., -2., -1., 2., 1., 0.],
        [0., 2., -1., -2., 1., 0.],
        [0., 4., 0., -5., 0., 1.],
    ];
    const AT4: [[f64; 6]; 4] = [
        [1., 1., 1., 1., 1., 0.],
        [0., 1., -1., 2., -2., 0.],
        [0., 1., 1., 4., 4., 0.],
        [0., 1., -1., 8., -8., 1.],
    ];

    fn check_1d<const A: usize>(bt: &[[f64; A]], at: &[[f64; A]]) {
        let mut rng = Rng::new(3);
        let d: Vec<F32x> = (0..A).map(|_| F32x::splat(rng.normal() as f32)).collect();
        let mut o = vec![F32x::ZERO; A];
        input_1d::<A>(&d, &mut o);
        for (r, row) in bt.iter().enumerate() {
            let want: f64 = row.iter().zip(&d).map(|(b, v)| b * v.to_array()[0] as f64).sum();
            assert!((o[r].to_array()[0] as f64 - want).abs() < 1e-5, "B^T row {r}");
        }
        let mut y = vec![F32x::ZERO; at.len()];
        output_1d::<A>(&d, &mut y);
        for (r, row) in at.iter().enumerate() {
            let want: f64 = row.iter().zip(&d).map(|(a, v)| a * v.to_array()[0] as f64).sum();
            assert!((y[r].to_array()[0] as f64 - want).abs() < 1e-5, "A^T row {r}");
        }
    }

    #[test]
    fn hand_written_transforms_match_their_matrices() {
        check_1d::<4>(&BT2, &AT2);
        check_1d::<6>(&BT4, &AT4);
    }

    /// Results of one shape: forward and backward-data, naive (f64) and fast.
    struct Case {
        g: ConvGeometry,
        x: Vec<f32>,
        w: Vec<f32>,
        bias: Vec<f32>,
        dy: Vec<f32>,
        y_ref: Vec<f32>,
        dx_ref: Vec<f32>,
    }

    fn case(rng: &mut Rng, n: usize, c: usize, h: usize, w: usize, k: usize, backward: bool) -> Case {
        let g = ConvGeometry::new(n, c, h, w, k, (3, 3), 1, 1).unwrap();
        let x = random(rng, n * g.in_image());
        let wt = random(rng, k * g.col_rows());
        let bias = random(rng, k);
        let dy = random(rng, n * g.out_image());
        let mut y_ref = vec![0.0; n * g.out_image()];
        conv_forward_naive(&g, &x, &wt, Some(&bias), &mut y_ref);
        let mut dx_ref = vec![0.0; if backward { x.len() } else { 0 }];
        if backward {
            conv_backward_data_naive(&g, &wt, &dy, &mut dx_ref);
        }
        Case {
            g,
            x,
            w: wt,
            bias,
            dy,
            y_ref,
            dx_ref,
        }
    }

    fn run_winograd(cs: &Case, tile: WinogradTile) -> (Vec<f32>, Vec<f32>) {
        let g = &cs.g;
        let f = transform_filters(tile, &cs.w, g.out_channels, g.in_channels);
        let mut y = vec![f32::NAN; cs.y_ref.len()];
        winograd_forward(g, tile, &cs.x, &f, Some(&cs.bias), &mut y);
        let mut dx = vec![f32::NAN; cs.dx_ref.len()];
        if !dx.is_empty() {
            winograd_backward_data(g, tile, &cs.w, &cs.dy, &mut dx);
        }
        (y, dx)
    }

    /// Checks GEMM, F2 and F4 against the naive reference; returns the worst errors.
    fn check(cs: &Case) -> [f32; 3] {
        let g = &cs.g;
        let mut y = vec![0.0; cs.y_ref.len()];
        conv_forward(g, &cs.x, &cs.w, Some(&cs.bias), &mut y);
        let mut e_gemm = max_rel_err(&y, &cs.y_ref);
        if !cs.dx_ref.is_empty() {
            let mut dx = vec![0.0; cs.dx_ref.len()];
            conv_backward_data(g, &cs.w, &cs.dy, &mut dx);
            e_gemm = e_gemm.max(max_rel_err(&dx, &cs.dx_ref));
        }
        let mut errs = [e_gemm, 0.0, 0.0];
        for (slot, tile, bound) in [(1, WinogradTile::F2, 1e-4), (2, WinogradTile::F4, 1e-3)] {
            let (y, dx) = run_winograd(cs, tile);
            let ef = max_rel_err(&y, &cs.y_ref);
            let eb = if dx.is_empty() {
                0.0
            } else {
                max_rel_err(&dx, &cs.dx_ref)
            };
            assert!(
                ef < bound && eb < bound,
                "{tile:?} {g:?}: forward {ef:.2e}, backward-data {eb:.2e}"
            );
            errs[slot] = ef.max(eb);
        }
        assert!(errs[0] < 1e-5, "gemm {g:?}: {}", errs[0]);
        let d = g;
        println!(
            "N={} C={} {}x{} K={}: max rel err gemm {:.2e}  F2 {:.2e}  F4 {:.2e}",
            d.batch, d.in_channels, d.in_h, d.in_w, d.out_channels, errs[0], errs[1], errs[2]
        );
        errs
    }

    #[test]
    fn fused_epilogue_matches_separate_passes() {
        let mut rng = Rng::new(11);
        for &(n, c, h, w, k) in &[(2, 5, 7, 9, 6), (1, 16, 8, 8, 24), (3, 4, 5, 3, 9), (2, 6, 10, 16, 7)] {
            let cs = case(&mut rng, n, c, h, w, k, false);
            let g = &cs.g;
            let residual = random(&mut rng, cs.y_ref.len());
            let e = Epilogue {
                bias: Some(&cs.bias),
                residual: Some(&residual),
                relu: true,
            };
            let mut want = vec![0.0; cs.y_ref.len()];
            conv_forward_naive(g, &cs.x, &cs.w, None, &mut want);
            epilogue_naive(&e, k, g.out_plane(), &mut want);
            assert!(want.contains(&0.0) && want.iter().any(|&v| v > 0.0));
            let mut y = vec![f32::NAN; want.len()];
            conv_forward_fused(g, &cs.x, &cs.w, &e, &mut y);
            assert!(max_rel_err(&y, &want) < 1e-5, "gemm {g:?}");
            for tile in [WinogradTile::F2, WinogradTile::F4] {
                let f = transform_filters(tile, &cs.w, k, c);
                let mut y = vec![f32::NAN; want.len()];
                winograd_forward_fused(g, tile, &cs.x, &f, &e, &mut y);
                assert!(max_rel_err(&y, &want) < 1e-3, "{tile:?} {g:?}");
                assert!(y.iter().all(|&v| v >= 0.0), "{tile:?}: ReLU");
            }
        }
    }

    fn check_all(shapes: &[(usize, usize, usize, usize, usize, bool)]) {
        let mut rng = Rng::new(7);
        let mut worst = [0f32; 3];
        for &(n, c, h, w, k, backward) in shapes {
            let cs = case(&mut rng, n, c, h, w, k, backward);
            for (wst, e) in worst.iter_mut().zip(check(&cs)) {
                *wst = wst.max(e);
            }
        }
        println!(
            "worst max rel err: gemm {:.2e}  F2 {:.2e}  F4 {:.2e}",
            worst[0], worst[1], worst[2]
        );
    }

    #[test]
    fn matches_direct_convolution_on_resnet20_shapes() {
        // (batch, C, H, W, K, check backward-data)
        check_all(&[
            (2, 16, 32, 32, 16, true),
            (2, 32, 16, 16, 32, true),
            (2, 64, 8, 8, 64, true),
        ]);
    }

    #[test]
    fn matches_direct_convolution_on_resnet50_shapes() {
        // Full size for 64@56 (forward and backward) and 512@7 (forward: the
        // channel-split path); fewer channels elsewhere to keep the naive reference fast.
        check_all(&[
            (1, 64, 56, 56, 64, true),
            (1, 512, 7, 7, 512, false),
            (1, 64, 28, 28, 128, true),
            (1, 256, 14, 14, 64, false),
            (1, 96, 7, 7, 48, true),
        ]);
    }

    #[test]
    fn matches_direct_convolution_on_odd_shapes() {
        let sizes = [1, 2, 3, 5, 7, 9, 13];
        let mut shapes = Vec::new();
        for (i, &h) in sizes.iter().enumerate() {
            let w = sizes[(i * 3 + 2) % sizes.len()];
            shapes.push((3, 3 + i, h, w, 5 + 2 * i, true));
            shapes.push((3, 11, h, h, 9, true));
        }
        shapes.push((1, 1, 1, 1, 1, true));
        // Widths of whole tile pairs (the paired store path) over partial tile rows.
        shapes.push((3, 5, 11, 8, 6, true));
        shapes.push((1, 7, 6, 24, 5, true));
        check_all(&shapes);
    }

    #[test]
    fn zero_input_channels_give_the_bias() {
        // (The GEMM path's `conv_forward` panics on C = 0, so this one is checked alone.)
        let g = ConvGeometry::new(2, 0, 5, 3, 3, (3, 3), 1, 1).unwrap();
        for tile in [WinogradTile::F2, WinogradTile::F4] {
            let f = transform_filters(tile, &[], 3, 0);
            let mut y = vec![f32::NAN; g.batch * g.out_image()];
            winograd_forward(&g, tile, &[], &f, Some(&[1.0, 2.0, 3.0]), &mut y);
            for (i, v) in y.iter().enumerate() {
                assert_eq!(*v, (1 + (i / 15) % 3) as f32);
            }
        }
    }

    #[test]
    fn results_are_deterministic_with_one_and_two_threads() {
        let mut rng = Rng::new(9);
        // Batch 1 small image: the channel-split path; batch 3: several tile blocks.
        let cases = [
            case(&mut rng, 1, 40, 13, 9, 72, true),
            case(&mut rng, 3, 24, 30, 17, 20, true),
        ];
        let mut first: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for (ci, cs) in cases.iter().enumerate() {
                for (ti, tile) in [WinogradTile::F2, WinogradTile::F4].into_iter().enumerate() {
                    let (a, b) = pool.install(|| (run_winograd(cs, tile), run_winograd(cs, tile)));
                    // Each element's sum runs in the same order whatever the split, so
                    // even different thread counts agree bit for bit.
                    if threads == 1 {
                        first.push(a.clone());
                    } else {
                        assert_eq!(first[ci * 2 + ti], a, "{tile:?}: 1 and 2 threads differ");
                    }
                    assert_eq!(a.0, b.0, "{tile:?} forward differs between runs on {threads} threads");
                    assert_eq!(a.1, b.1, "{tile:?} backward differs between runs on {threads} threads");
                    let bound = if tile == WinogradTile::F2 { 1e-4 } else { 1e-3 };
                    assert!(max_rel_err(&a.0, &cs.y_ref) < bound && max_rel_err(&a.1, &cs.dx_ref) < bound);
                }
            }
        }
    }

    #[test]
    fn filters_transform_matches_g_g_gt() {
        let mut rng = Rng::new(4);
        let w = random(&mut rng, 2 * 3 * 9);
        for tile in [WinogradTile::F2, WinogradTile::F4] {
            let f = transform_filters(tile, &w, 2, 3);
            let (a, gm) = (tile.alpha(), tile.g());
            for kk in 0..2 {
                for cc in 0..3 {
                    for p in 0..a {
                        for q in 0..a {
                            let mut want = 0f64;
                            for i in 0..3 {
                                for j in 0..3 {
                                    want += gm[p][i] * w[(kk * 3 + cc) * 9 + i * 3 + j] as f64 * gm[q][j];
                                }
                            }
                            let got = f.data[((p * a + q) * 2 + kk) * 3 + cc] as f64;
                            assert!((got - want).abs() < 1e-5, "{tile:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "only 3x3 stride-1 pad-1")]
    fn rejects_other_geometries() {
        let g = ConvGeometry::new(1, 2, 8, 8, 2, (3, 3), 2, 1).unwrap();
        let f = transform_filters(WinogradTile::F2, &[0.0; 36], 2, 2);
        winograd_forward(&g, WinogradTile::F2, &[0.0; 128], &f, None, &mut [0.0; 32]);
    }
}
