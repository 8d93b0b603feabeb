//! Winograd F(2x2,3x3) and F(4x4,3x3) convolution, and a stride-2 transform for 3x3
//! stride-2 layers, on the channel-blocked layout, fused per cache block, for inference
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", arXiv:1509.09308).
//!
//! Per channel, an `a x a` input tile `d` (`a = m + 2`) and a 3x3 filter `g` give an
//! `m x m` output tile `Y = A^T [ (G g G^T) .* (B^T d B) ] A`. Summed over input channels
//! the elementwise products become, for each of the `a^2` positions `xi`, one matrix
//! product `M[xi] (K x T) = U[xi] (K x C) V[xi] (C x T)` over `T` tiles.
//!
//! F(2x2,3x3) (16 products per tile and channel pair instead of 36):
//! ```text
//! B^T = [ 1  0 -1  0 ]     G = [ 1    0    0   ]     A^T = [ 1  1  1  0 ]
//!       [ 0  1  1  0 ]         [ 1/2  1/2  1/2 ]           [ 0  1 -1 -1 ]
//!       [ 0 -1  1  0 ]         [ 1/2 -1/2  1/2 ]
//!       [ 0  1  0 -1 ]         [ 0    0    1   ]
//! ```
//! F(4x4,3x3) (36 instead of 144), interpolation points 0, +-1, +-2, infinity:
//! ```text
//! B^T = [ 4  0 -5  0  1  0 ]   G = [  1/4     0     0  ]   A^T = [ 1  1  1  1  1  0 ]
//!       [ 0 -4 -4  1  1  0 ]       [ -1/6  -1/6  -1/6 ]         [ 0  1 -1  2 -2  0 ]
//!       [ 0  4 -4 -1  1  0 ]       [ -1/6   1/6  -1/6 ]         [ 0  1  1  4  4  0 ]
//!       [ 0 -2 -1  2  1  0 ]       [  1/24  1/12  1/6 ]         [ 0  1 -1  8 -8  1 ]
//!       [ 0  2 -1 -2  1  0 ]       [  1/24 -1/12  1/6 ]
//!       [ 0  4  0 -5  0  1 ]       [  0     0     1   ]
//! ```
//!
//! # Stride 2
//! A 3x3 stride-2 convolution splits, along each axis, into its even input pixels
//! `e[j] = x[2j]` under the taps `(w0, w2)` and its odd ones `o[j] = x[2j + 1]` under
//! `w1`: `y[i] = w0 e[i] + w2 e[i + 1] + w1 o[i]` (the decomposable Winograd
//! method, "DWM", AAAI 2020). The even part is Winograd F(4,2) (interpolation points
//! 0, 1, -1, 2, infinity), the odd part an identity, so one axis of a 4-output tile reads
//! 9 input pixels and has 9 positions: 5 even, then 4 odd.
//! ```text
//! B^T (even) = [ 2 -1 -2  1  0 ]   G (w0, w1, w2) = [  1/2  0   0  ]   A^T (even) = [ 1  1  1  1  0 ]
//!              [ 0 -2 -1  1  0 ]                    [ -1/2  0 -1/2 ]                [ 0  1 -1  2  0 ]
//!              [ 0  2 -3  1  0 ]                    [ -1/6  0  1/6 ]                [ 0  1  1  4  0 ]
//!              [ 0 -1  0  1  0 ]                    [  1/6  0  1/3 ]                [ 0  1 -1  8  1 ]
//!              [ 0  2 -1 -2  1 ]                    [  0    0   1  ]
//!                                                   [  0    1   0  ]  (the odd positions')
//! ```
//! and output `k` adds odd position `k`. In 2D a tile has 81 positions (144 products per
//! channel pair directly); the 4 odd positions of an axis share one filter row, so `U`
//! holds 6 x 6 matrices, as F(4x4)'s. With 2-output tiles the even part is F(2,2)
//! (points 0, -1, infinity: `B^T = [1 1 0; 0 1 0; 0 1 1]`, `G = [1 0; -1 1; 0 1]`, `A^T =
//! [1 1 0; 0 -1 1]`): 5 positions an axis, 25 products per tile against 36, `U` of 4 x 4
//! matrices. The schedule, products and output transform are those of stride 1 with
//! `a = 2m + 1`; only the input patch starts at twice the output tile's corner.
//!
//! In the blocked layout one vector holds one pixel's block of `L = V::LANES` channels,
//! so every transform is plain vertical SIMD over a channel block: no transposes (as
//! oneDNN's AVX-512 Winograd and ncnn's pack16 Winograd).
//!
//! # API
//! - [`filters_len`]`(tile, in_channels, out_channels, block)` and
//!   [`transform_filters`]`(weight, scale, in_channels, out_channels, tile, block, out)`:
//!   `U = G g G^T` of OIHW weights (times an optional folded batch-norm scale per output
//!   channel), in f64, packed `[xi][ocb][ci][co_lane]` (`ci` over the padded input
//!   channels), zero-padded to whole blocks. Done once per model for inference, once per
//!   step in training; [`transform_flipped_filters`] makes the backward-data's from the
//!   same weights.
//! - [`winograd_conv`]`::<V>(g, tile, input, filters, ep, out)`: `out = ep(conv(input))`
//!   for a 3x3 stride-1 pad-1 `g`, input and output in `Blocked { .., block: V::LANES }`.
//! - [`winograd_conv_gather`]`::<V>(..)`: the same, and the sums a training batch norm
//!   needs of what it stored (the forward's per-channel mean and variance, or a
//!   backward-data's gradient sums), gathered by the output transform as it stores,
//!   without a pass over the output.
//! - [`winograd_conv_naive`]: the scalar twin from the textbook formula, for the tests.
//! - [`transform_filters_s2`], [`winograd_s2_conv`] and [`winograd_s2_conv_naive`]: the
//!   same for the stride-2 transform (see "Stride 2"), whose filters are as long as
//!   [`filters_len`] says for the same tile.
//!
//! # Schedule
//! A rayon task takes a group of `T` tiles (across images) and a range of output-channel
//! blocks, and with per-thread scratch only:
//! 1. transforms the group's inputs, `V[xi][icb][t][lane] = (B^T d B)[xi]`, zero padding
//!    at the image borders;
//! 2. for each chunk of `RB` = 4 output-channel blocks, for each position `xi`, computes
//!    `M[xi] = U[xi] V[xi]` with a register-blocked micro-kernel (4 output blocks x 6
//!    tiles of vector accumulators, tile values broadcast, `U` loaded as vectors: the
//!    shape of MLAS's NCHWc direct convolution kernel; 1 x 16 and 2 x 12 for layers of
//!    one or two channel blocks);
//! 3. transforms the chunk's outputs, `A^T M A`, and stores them through the epilogue
//!    (bias, residual, ReLU), clipped at the right and bottom edges.
//!
//! `T` is sized so that `V` and the chunk's `M` stay in the L2 cache; the transformed
//! tensors never exist whole in memory. The positions of `V` and `M` are an odd number
//! of cache lines apart, so that a tile's `a^2` vectors do not share an L1 set. Tasks are tile groups x output-channel-block
//! ranges cut by [`crate::kernels::split`], so batch 1 keeps every core busy. Every
//! output value is computed by one task in a fixed order: results are deterministic.
//!
//! Where `U` is too big for the caches and several tile groups would each stream all of
//! it (ResNet-50's 256- and 512-channel layers from batch 8: 9.4 and 37.7 MB for F(4x4)),
//! a call runs in three phases over whole-call tensors instead: every tile's input
//! transform into one `V`, the products of each position over all tiles (each `U[xi]`
//! read once), then the output transforms. `V` and `M` then pass through the L3, which
//! costs less than streaming `U` again (ResNet-50 b8 on two Zen 4 cores, alternating in
//! one process: layer3's 3x3 layers 4.2 to 3.75 ms, layer4's 5.15 to 3.8 ms).

use crate::kernels::blocked::bf16;
use crate::kernels::blocked::epilogue::BlockedEpilogue;
use crate::kernels::blocked::moments::{self, Gather, Kind};
use crate::kernels::blocked::norm::{self, FusedRelu};
use crate::kernels::blocked::prefetch::{NoPrefetch, Prefetch, Slices, Step};
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::scratch::{with_partials, with_scratch, with_staging};
use crate::kernels::shared_out::SharedOut;
use crate::kernels::split;
use crate::kernels::winograd::WinogradTile;
use crate::layout::Blocked;
use crate::simd::Vector;
use std::ops::Range;

/// Output-channel blocks per micro-kernel call: with [`RT`] tiles, `RB x RT` vector
/// accumulators. 4 x 6 = 24 of the 32 AVX-512 registers, leaving room for the 4 `U`
/// vectors and a broadcast (MLAS's NCHWc kernel uses the same 4 x 6 shape); each step
/// over an input channel loads 4 vectors and 6 scalars for 24 FMAs. Measured: 4 x 7
/// (28 accumulators) was about 10 % slower on 128 channels.
const RB: usize = 4;

/// Output-channel blocks per micro-kernel call for vectors of fewer than 16 lanes (wasm's
/// `f32x4`, AVX2's `f32x8`: 16 vector registers). With 2 blocks x 6 tiles the 12
/// accumulators, 2 `U` vectors and the broadcast fit in 16 registers; 4 x 3 needs 17.
/// Measured in Chromium (`scripts/webbench.sh WORK_DIR ours`, 3 rounds each, builds
/// alternating, ResNet-20 one thread): b32 inference 24.4-25.8 ms against 24.8-28.6 with
/// up to 4 blocks, a training step 86.0-91.9 against 90.0-98.0 ms; up to 3 blocks was no
/// better than 4.
const RB_NARROW: usize = 2;

/// Output-channel blocks per micro-kernel call for vectors `V`.
#[inline(always)]
fn blocks_per_call<V: Vector>() -> usize {
    if V::LANES >= 16 {
        RB
    } else {
        RB_NARROW
    }
}

/// Tiles per micro-kernel call with [`RB`] output blocks.
const RT: usize = 6;

/// Tiles per micro-kernel call by the number of output blocks of the call (1 to [`RB`]:
/// layers of 16 and 32 channels, or the last chunk): with fewer `U` vectors per input
/// channel, more tiles keep about 16-24 accumulators busy and fewer loads per FMA.
/// Measured on ResNet-20's 16- and 32-channel layers: 1 x 16 and 2 x 12 were 5-10 %
/// faster than 1 x 6 and 2 x 6 (noisy machine; never slower).
const TILES_PER_CALL: [usize; RB + 1] = [0, 16, 12, 8, RT];

/// [`TILES_PER_CALL`] for vectors of fewer than 16 lanes (AVX2's `f32x8`, wasm's
/// `f32x4`), whose targets have 16 vector registers, not 32: at most 12 accumulators, so
/// that the `U` vectors and the broadcast still fit. With 24 the wasm build ran
/// ResNet-20 at 0.72x the speed of the first design's NCHW kernels at batch 1 in Node.
/// Calls take at most [`RB_NARROW`] blocks, so only the first entries are used.
const TILES_PER_CALL_NARROW: [usize; RB_NARROW + 1] = [0, 12, 6];

/// Bytes of a group's transformed inputs `V` plus one chunk's products `M` to aim for:
/// half of Zen 4's 1 MB L2 per core, leaving the other half for the rows of `U`
/// streaming through and the output being written. Measured: 256 KB and 1 MB were
/// within the machine's noise of 512 KB on every benchmarked shape.
const GROUP_BYTES: usize = 512 << 10;

/// Fewest tiles per group (unless the problem has fewer): below this, each `U` vector
/// loaded (from L2 or memory) feeds too few FMAs.
const MIN_GROUP_TILES: usize = 2 * RT;

/// Fewest tiles per group when groups are cut smaller to give every thread one: fewer
/// tiles per `U` vector, but each task transforms only its own tiles, where splitting
/// the output channels instead repeats the whole input transform in every task and
/// runs narrower products. Measured (`examples/plan_profile resnet20 1`, 2 threads,
/// interleaved): the 16x16 stage's F(4x4) layers (16 tiles) 6-7 us as 1 group x 2
/// channel parts, 5 us as 2 groups of 8; the 8x8 stage (4 tiles) 7 us as 1 x 2, 10 us
/// as 2 groups of 2.
const MIN_SPLIT_TILES: usize = 4;

/// Most tiles per group: beyond this the products are no faster and fewer groups
/// balance worse across threads.
const MAX_GROUP_TILES: usize = 16 * RT;

/// `B^T`, `G` and `A^T` of a tile size, in f64 (the naive twin and the filter transform
/// use them; the fast transforms are hand-written from them, see [`input_1d`]).
struct Matrices {
    bt: &'static [&'static [f64]],
    g: &'static [[f64; 3]],
    at: &'static [&'static [f64]],
}

const BT2: [&[f64]; 4] = [
    &[1., 0., -1., 0.],
    &[0., 1., 1., 0.],
    &[0., -1., 1., 0.],
    &[0., 1., 0., -1.],
];
const AT2: [&[f64]; 2] = [&[1., 1., 1., 0.], &[0., 1., -1., -1.]];
const BT4: [&[f64]; 6] = [
    &[4., 0., -5., 0., 1., 0.],
    &[0., -4., -4., 1., 1., 0.],
    &[0., 4., -4., -1., 1., 0.],
    &[0., -2., -1., 2., 1., 0.],
    &[0., 2., -1., -2., 1., 0.],
    &[0., 4., 0., -5., 0., 1.],
];
const AT4: [&[f64]; 4] = [
    &[1., 1., 1., 1., 1., 0.],
    &[0., 1., -1., 2., -2., 0.],
    &[0., 1., 1., 4., 4., 0.],
    &[0., 1., -1., 8., -8., 1.],
];

fn matrices(tile: WinogradTile) -> Matrices {
    match tile {
        WinogradTile::F2 => Matrices {
            bt: &BT2,
            g: tile.g(),
            at: &AT2,
        },
        WinogradTile::F4 => Matrices {
            bt: &BT4,
            g: tile.g(),
            at: &AT4,
        },
    }
}

/// Length of the transformed filters of a `out_channels x in_channels x 3 x 3`
/// convolution for `tile`, in blocks of `block` channels: `a^2 * Kp * Cp`.
pub fn filters_len(tile: WinogradTile, in_channels: usize, out_channels: usize, block: usize) -> usize {
    tile.positions() * in_channels.next_multiple_of(block) * out_channels.next_multiple_of(block)
}

/// `U = G g G^T` of the OIHW 3x3 `weight`, output channel `k` scaled by `scale[k]` if
/// given (a folded batch norm), stored into `out` (of [`filters_len`]) as
/// `[xi][ocb][ci][co_lane]`: for position `xi` and output-channel block `ocb`, a
/// `Cp x block` matrix whose row `ci` holds the block's output channels for input
/// channel `ci`. Padding channels are zero. Computed in f32, vertically over the
/// block's output channels (each training step remakes these filters, so this runs per
/// step: 16 lanes at a time it is about 10x the scalar f64 form it replaced; the f32
/// rounding, a few units in the last place, is far below F(4x4)'s own error).
pub fn transform_filters(
    weight: &[f32],
    scale: Option<&[f32]>,
    in_channels: usize,
    out_channels: usize,
    tile: WinogradTile,
    block: usize,
    out: &mut [f32],
) {
    if let Some(s) = scale {
        assert!(s.len() >= out_channels, "winograd: one scale per output channel");
    }
    let len = filters_len(tile, in_channels, out_channels, block);
    transform_any(
        weight,
        scale,
        in_channels,
        out_channels,
        false,
        tile.g(),
        block,
        len,
        out,
    );
}

/// [`transform_filters`] of the filters that run the stride-1 backward-data of a 3x3
/// convolution as a forward one: the flipped, transposed `w'[c][k][y][x] = w[k][c][2 -
/// y][2 - x]` of the forward's OIHW `weight` (`out_channels x in_channels x 3 x 3`),
/// read in place rather than made first. `out` is [`filters_len`]`(tile, out_channels,
/// in_channels, block)`: the backward-data reads the forward's output channels and
/// writes its input channels.
pub fn transform_flipped_filters(
    weight: &[f32],
    in_channels: usize,
    out_channels: usize,
    tile: WinogradTile,
    block: usize,
    out: &mut [f32],
) {
    let len = filters_len(tile, out_channels, in_channels, block);
    transform_any(weight, None, out_channels, in_channels, true, tile.g(), block, len, out);
}

/// [`transform_filters`] of a convolution of `c` input and `k` output channels whose
/// taps are `weight[kk][ci]` (OIHW), or with `flipped`, `weight[ci][kk]` reversed, by the
/// filter transform `g` (`a x 3`, `a <= 6`) into `out` of `len` floats.
#[allow(clippy::too_many_arguments)]
fn transform_any(
    weight: &[f32],
    scale: Option<&[f32]>,
    c: usize,
    k: usize,
    flipped: bool,
    g: &[[f64; 3]],
    block: usize,
    len: usize,
    out: &mut [f32],
) {
    assert_eq!(weight.len(), k * c * 9, "winograd: weights must be k x c x 3 x 3");
    assert!((1..=16).contains(&block), "winograd: blocks of 1 to 16 channels");
    assert_eq!(out.len(), len, "winograd: filters length");
    let cp = c.next_multiple_of(block);
    let ocbs = k.div_ceil(block);
    let a = g.len();
    assert!(
        a <= 6 && len == a * a * cp * ocbs * block,
        "winograd: a filter transform of at most 6 rows, and {len} floats for its positions"
    );
    let g: [[f32; 3]; 6] = core::array::from_fn(|i| {
        let row = g.get(i).copied().unwrap_or_default();
        row.map(|v| v as f32)
    });
    let f = Filters {
        weight,
        scale,
        c,
        k,
        flipped,
        a,
        g,
        block,
        ocbs,
        cp,
    };
    // One unit per (output block, input channel): every element of `out` is written by
    // exactly one unit (padding channels as zero).
    let shared = SharedOut::new(out);
    split::for_each_range(ocbs * cp, |units| {
        for unit in units {
            match block {
                4 => f.unit::<4>(unit, &shared),
                8 => f.unit::<8>(unit, &shared),
                _ => f.unit::<16>(unit, &shared),
            }
        }
    });
}

/// What [`transform_any`] transforms, shared by its tasks.
struct Filters<'a> {
    weight: &'a [f32],
    scale: Option<&'a [f32]>,
    c: usize,
    k: usize,
    flipped: bool,
    a: usize,
    g: [[f32; 3]; 6],
    block: usize,
    ocbs: usize,
    cp: usize,
}

impl Filters<'_> {
    /// The `U` rows of one (output block, input channel) unit, `L >= block` lanes wide
    /// (the lanes past the block stay zero and are not stored).
    #[inline(always)]
    fn unit<const L: usize>(&self, unit: usize, out: &SharedOut) {
        let (ocb, ci) = (unit / self.cp, unit % self.cp);
        // f[p][q][lane]: tap (p, q) of output channel `ocb * block + lane`.
        let mut f = [[[0f32; L]; 3]; 3];
        if ci < self.c {
            for lane in 0..self.block.min(L) {
                let kk = ocb * self.block + lane;
                if kk >= self.k {
                    break;
                }
                let s = self.scale.map_or(1.0, |s| s[kk]);
                let filter = if self.flipped {
                    ci * self.k + kk
                } else {
                    kk * self.c + ci
                };
                let taps = &self.weight[filter * 9..(filter + 1) * 9];
                for (p, fp) in f.iter_mut().enumerate() {
                    for (q, fpq) in fp.iter_mut().enumerate() {
                        let tap = if self.flipped { 8 - (p * 3 + q) } else { p * 3 + q };
                        fpq[lane] = taps[tap] * s;
                    }
                }
            }
        }
        // gf[i][q] = sum_p G[i][p] f[p][q]; U[i][j] = sum_q gf[i][q] G[j][q].
        let a = self.a;
        let mut gf = [[[0f32; L]; 3]; 6];
        for (gfi, gi) in gf.iter_mut().zip(&self.g).take(a) {
            for (q, gfiq) in gfi.iter_mut().enumerate() {
                for (lane, v) in gfiq.iter_mut().enumerate() {
                    *v = gi[0] * f[0][q][lane] + gi[1] * f[1][q][lane] + gi[2] * f[2][q][lane];
                }
            }
        }
        for (i, gfi) in gf.iter().enumerate().take(a) {
            for (j, gj) in self.g.iter().enumerate().take(a) {
                let mut u = [0f32; L];
                for (lane, v) in u.iter_mut().enumerate() {
                    *v = gfi[0][lane] * gj[0] + gfi[1][lane] * gj[1] + gfi[2][lane] * gj[2];
                }
                let at = (((i * a + j) * self.ocbs + ocb) * self.cp + ci) * self.block;
                if self.block == L {
                    // A fixed size: a few moves instead of a `memcpy` call per row.
                    out.write_array(at, u);
                } else {
                    out.write_slice(at, &u[..self.block.min(L)]);
                }
            }
        }
    }
}

fn check_geometry(g: &ConvGeometry) {
    assert!(
        g.kernel_h == 3 && g.kernel_w == 3 && g.stride == 1 && g.pad == 1,
        "winograd: only 3x3 stride-1 pad-1 convolutions, found {g:?}"
    );
    assert_eq!((g.out_h, g.out_w), (g.in_h, g.in_w), "winograd: output size");
}

/// `G` of the stride-2 transform with 4-output tiles on a filter row's taps `(w0, w1,
/// w2)`: F(4,2)'s on the even taps `(w0, w2)` (interpolation points 0, 1, -1, 2,
/// infinity), then the odd tap `w1` alone, the filter that the four odd-phase positions
/// share.
const G_S2_4: [[f64; 3]; 6] = [
    [1.0 / 2.0, 0.0, 0.0],
    [-1.0 / 2.0, 0.0, -1.0 / 2.0],
    [-1.0 / 6.0, 0.0, 1.0 / 6.0],
    [1.0 / 6.0, 0.0, 1.0 / 3.0],
    [0.0, 0.0, 1.0],
    [0.0, 1.0, 0.0],
];

/// `B^T` of F(4,2) (points as [`G_S2_4`]), on the even-phase inputs `x0, x2, .., x8`.
const BT_F42: [&[f64]; 5] = [
    &[2., -1., -2., 1., 0.],
    &[0., -2., -1., 1., 0.],
    &[0., 2., -3., 1., 0.],
    &[0., -1., 0., 1., 0.],
    &[0., 2., -1., -2., 1.],
];

/// `A^T` of F(4,2).
const AT_F42: [&[f64]; 4] = [
    &[1., 1., 1., 1., 0.],
    &[0., 1., -1., 2., 0.],
    &[0., 1., 1., 4., 0.],
    &[0., 1., -1., 8., 1.],
];

/// [`G_S2_4`] for 2-output tiles: F(2,2)'s (points 0, -1, infinity), then the odd tap.
const G_S2_2: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]];

/// `B^T` of F(2,2), on the even-phase inputs `x0, x2, x4`.
const BT_F22: [&[f64]; 3] = [&[1., 1., 0.], &[0., 1., 0.], &[0., 1., 1.]];

/// `A^T` of F(2,2).
const AT_F22: [&[f64]; 2] = [&[1., 1., 0.], &[0., -1., 1.]];

/// The stride-2 transform's matrices for an output tile: F(m,2)'s `B^T` and `A^T` on the
/// even phase, and `G` (F(m,2)'s rows, then the odd tap's).
fn s2_matrices(tile: WinogradTile) -> Matrices {
    match tile {
        WinogradTile::F2 => Matrices {
            bt: &BT_F22,
            g: &G_S2_2,
            at: &AT_F22,
        },
        WinogradTile::F4 => Matrices {
            bt: &BT_F42,
            g: &G_S2_4,
            at: &AT_F42,
        },
    }
}

/// The filter matrix that position `xi` of an `a x a` transformed tile multiplies: its
/// own, except in the stride-2 transform (odd `a = 2m + 1`: `m + 1` even positions, then
/// `m` odd ones per axis), whose odd positions of an axis share one (a grid of
/// `(m + 2) x (m + 2)` matrices).
#[inline(always)]
fn filter_position(xi: usize, a: usize) -> usize {
    if a % 2 == 1 {
        let (even, p, q) = (a.div_ceil(2), xi / a, xi % a);
        p.min(even) * (even + 1) + q.min(even)
    } else {
        xi
    }
}

/// The filter matrices of an `a x a` transformed tile ([`filter_position`]).
fn filter_positions(a: usize) -> usize {
    filter_position(a * a - 1, a) + 1
}

/// Which transform a call runs: Winograd at stride 1, or the stride-2 decomposition
/// ([`winograd_s2_conv`]), with an output tile.
#[derive(Clone, Copy, Debug)]
enum Scheme {
    Stride1(WinogradTile),
    Stride2(WinogradTile),
}

impl Scheme {
    /// The output tile; its filters are [`filters_len`] long at either stride.
    fn tile(self) -> WinogradTile {
        match self {
            Scheme::Stride1(t) | Scheme::Stride2(t) => t,
        }
    }

    fn check_geometry(self, g: &ConvGeometry) {
        match self {
            Scheme::Stride1(_) => check_geometry(g),
            Scheme::Stride2(_) => check_geometry_s2(g),
        }
    }
}

fn check_geometry_s2(g: &ConvGeometry) {
    assert!(
        g.kernel_h == 3 && g.kernel_w == 3 && g.stride == 2 && g.pad == 1,
        "winograd: the stride-2 transform takes 3x3 stride-2 pad-1 convolutions, found {g:?}"
    );
    // The input patches of the output tiles must start inside the image.
    assert_eq!(
        (g.out_h, g.out_w),
        (g.in_h.div_ceil(2), g.in_w.div_ceil(2)),
        "winograd: output size"
    );
}

/// The filters of [`winograd_s2_conv`]: `U = G g G^T` with the stride-2 transform's `G`
/// (`(m + 2) x 3`, see the module doc), laid out as [`transform_filters`]'
/// (`[xi][ocb][ci][co_lane]`, [`filters_len`] floats: `(m + 2)^2` matrices, as many as
/// at stride 1), output channel `k` scaled by `scale[k]` if given.
pub fn transform_filters_s2(
    weight: &[f32],
    scale: Option<&[f32]>,
    in_channels: usize,
    out_channels: usize,
    tile: WinogradTile,
    block: usize,
    out: &mut [f32],
) {
    if let Some(s) = scale {
        assert!(s.len() >= out_channels, "winograd: one scale per output channel");
    }
    let len = filters_len(tile, in_channels, out_channels, block);
    let g = s2_matrices(tile).g;
    transform_any(weight, scale, in_channels, out_channels, false, g, block, len, out);
}

/// `out = ep(conv3x3_s2_p1(input, w))` by the stride-2 decomposition of the module doc
/// with output tiles `tile`, with `filters` from [`transform_filters_s2`] (`block =
/// V::LANES`); input, output and epilogue as [`winograd_conv`]'s, the output `g.out_h x
/// g.out_w`.
pub fn winograd_s2_conv<V: Vector>(
    g: &ConvGeometry,
    tile: WinogradTile,
    input: &[f32],
    filters: &[f32],
    ep: &BlockedEpilogue,
    out: &mut [f32],
) {
    checked_conv::<V>(
        g,
        Scheme::Stride2(tile),
        input,
        Transformed::F32(filters),
        ep,
        out,
        None,
        None,
    );
}

/// `out = ep(conv3x3_s1_p1(input, w))` with `filters` from [`transform_filters`] (for
/// `tile` and `block = V::LANES`). `input` is `Blocked { g.batch, g.in_channels, g.in_h,
/// g.in_w, V::LANES }`, `out` the same with `g.out_channels`; every output value is
/// overwritten (padding channels get `ep(0)`, zero when the bias and residual are zero
/// there). With `Residual::InPlace`, `out` holds the residual on entry.
pub fn winograd_conv<V: Vector>(
    g: &ConvGeometry,
    tile: WinogradTile,
    input: &[f32],
    filters: &[f32],
    ep: &BlockedEpilogue,
    out: &mut [f32],
) {
    checked_conv::<V>(
        g,
        Scheme::Stride1(tile),
        input,
        Transformed::F32(filters),
        ep,
        out,
        None,
        None,
    );
}

/// Transformed filters of a Winograd convolution, in the precision of its products.
#[derive(Clone, Copy, Debug)]
pub enum Transformed<'a> {
    /// From [`transform_filters`]: f32 products.
    F32(&'a [f32]),
    /// [`transform_filters`] packed by [`bf16::pack_filters`]: bf16 products summed in
    /// f32 (16-lane blocks on a CPU with AVX512_BF16, see [`bf16::available`]).
    Bf16(&'a [u16]),
}

impl Transformed<'_> {
    fn len(&self) -> usize {
        match self {
            Transformed::F32(f) => f.len(),
            Transformed::Bf16(f) => f.len(),
        }
    }
}

/// [`winograd_conv`] with filters in either precision.
pub fn winograd_conv_with<V: Vector>(
    g: &ConvGeometry,
    tile: WinogradTile,
    input: &[f32],
    filters: Transformed,
    ep: &BlockedEpilogue,
    out: &mut [f32],
) {
    checked_conv::<V>(g, Scheme::Stride1(tile), input, filters, ep, out, None, None);
}

/// Where the output transforms of [`winograd_conv_gather`] put their sums: `fields()`
/// vectors per (tile group, padded output channel block) in `out`, read with the batch
/// norm's `z`, mean and fused ReLU for gradient sums (`grad`), else the moments'.
#[derive(Clone, Copy)]
struct Records<'a> {
    out: &'a SharedOut<'a>,
    grad: Option<(&'a [f32], &'a [f32], Option<FusedRelu<'a>>)>,
}

impl Records<'_> {
    fn fields(&self) -> usize {
        match self.grad {
            Some(_) => moments::GRAD_FIELDS,
            None => moments::FIELDS,
        }
    }
}

/// [`winograd_conv`]'s checks of every length, then the convolution, with the records
/// of [`winograd_conv_gather`] when given, in three phases as `three` says (`None`: as
/// the rule of [`three_phases`] says; the tests force either schedule).
#[allow(clippy::too_many_arguments)]
fn checked_conv<V: Vector>(
    g: &ConvGeometry,
    scheme: Scheme,
    input: &[f32],
    filters: Transformed,
    ep: &BlockedEpilogue,
    out: &mut [f32],
    records: Option<Records>,
    three: Option<bool>,
) {
    scheme.check_geometry(g);
    let l = V::LANES;
    let xs = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, l);
    let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, l);
    assert_eq!(input.len(), xs.len(), "winograd: input length");
    assert_eq!(out.len(), ys.len(), "winograd: output length");
    assert_eq!(
        filters.len(),
        filters_len(scheme.tile(), g.in_channels, g.out_channels, l),
        "winograd: filters length"
    );
    if let Some(b) = ep.bias {
        assert!(
            b.len() >= ys.padded_channels(),
            "winograd: one bias per padded output channel"
        );
    }
    if let Some(r) = ep.residual.separate() {
        assert_eq!(r.len(), ys.len(), "winograd: residual length");
    }
    if let Transformed::Bf16(_) = filters {
        assert_eq!(l, bf16::LANES, "winograd: bf16 products take blocks of 16 lanes");
    }
    match scheme {
        Scheme::Stride1(WinogradTile::F2) => conv_impl::<V, 2, 4>(xs, ys, input, filters, ep, out, records, three),
        Scheme::Stride1(WinogradTile::F4) => conv_impl::<V, 4, 6>(xs, ys, input, filters, ep, out, records, three),
        Scheme::Stride2(tile) => {
            assert!(
                matches!(filters, Transformed::F32(_)),
                "winograd: the stride-2 transform has f32 products only"
            );
            match tile {
                WinogradTile::F2 => conv_impl::<V, 2, 5>(xs, ys, input, filters, ep, out, records, three),
                WinogradTile::F4 => conv_impl::<V, 4, 9>(xs, ys, input, filters, ep, out, records, three),
            }
        }
    }
}

/// [`winograd_conv_with`], and the sums a training batch norm needs of what it stored
/// (`gather`), in f64: each task's output transform sums, per channel block, the values
/// it stores, and the tasks' sums are merged in task order, so the result depends only
/// on the thread count. For the moments (`mean[c]`, biased `var[c]` of every padded
/// output channel) the sums are shifted by the first value stored (shifted sums keep the
/// variance exact for outputs far from zero) and merged with Chan et al.'s pairwise
/// update; for the gradient sums, `sum dy` and `sum dy (z - mean)` with `z` read at each
/// stored value's place.
pub fn winograd_conv_gather<V: Vector>(
    g: &ConvGeometry,
    tile: WinogradTile,
    input: &[f32],
    filters: Transformed,
    ep: &BlockedEpilogue,
    out: &mut [f32],
    gather: Gather,
) {
    gather_tuned::<V>(g, tile, input, filters, ep, out, gather, None);
}

/// [`winograd_conv_gather`] in three phases as `three` says (see [`checked_conv`]).
#[allow(clippy::too_many_arguments)]
fn gather_tuned<V: Vector>(
    g: &ConvGeometry,
    tile: WinogradTile,
    input: &[f32],
    filters: Transformed,
    ep: &BlockedEpilogue,
    out: &mut [f32],
    gather: Gather,
    three: Option<bool>,
) {
    let l = V::LANES;
    let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, l);
    let channels = ys.padded_channels();
    let fields = gather.fields();
    let (_, kind) = gather.split(channels, ys.len());
    let xs = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, l);
    let (tiles, p) = call_plan(xs, ys, tile.m(), tile.alpha());
    if tiles == 0 || channels == 0 {
        checked_conv::<V>(g, Scheme::Stride1(tile), input, filters, ep, out, None, three);
        return;
    }
    let groups = p.groups;
    with_partials(groups * channels * fields, |records| {
        let shared = SharedOut::new(records);
        let grad = match &kind {
            Kind::GradSums { z, mean, relu, .. } => Some((*z, *mean, *relu)),
            Kind::Moments { .. } => None,
        };
        let r = Records { out: &shared, grad };
        checked_conv::<V>(g, Scheme::Stride1(tile), input, filters, ep, out, Some(r), three);
        let records = shared.into_slice();
        let field =
            |gi: usize, f: usize, c: usize| records[(gi * channels + (c / l) * l) * fields + f * l + c % l] as f64;
        moments::finish_parts(kind, channels, groups, field);
    });
}

/// How one call is cut into tasks.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Tile groups (ranges of `split::ranges(tiles, groups)`).
    groups: usize,
    /// Output-channel-block ranges per group (`split::ranges(ocb, kparts)`).
    kparts: usize,
}

impl Plan {
    /// The tiles and the output-channel blocks of task `task` (of `groups * kparts`) of a
    /// call of `tiles` tiles and `ocb` output blocks.
    fn task(&self, task: usize, tiles: usize, ocb: usize) -> (Range<usize>, Range<usize>) {
        let tr = split::range(tiles, self.groups, task / self.kparts);
        let kr = split::range(ocb, self.kparts, task % self.kparts);
        (tr.expect("a tile range"), kr.expect("a channel range"))
    }
}

fn plan(tiles: usize, a: usize, icb: usize, ocb: usize, l: usize) -> Plan {
    let per_tile = a * a * (icb + RB) * l * std::mem::size_of::<f32>();
    let fit = (GROUP_BYTES / per_tile).clamp(MIN_GROUP_TILES, MAX_GROUP_TILES);
    let mut groups = tiles.div_ceil(fit);
    let want = split::parts(tiles * ocb);
    if groups < want {
        // More, smaller groups while they keep at least MIN_SPLIT_TILES tiles.
        groups = want.min(tiles / MIN_SPLIT_TILES).max(groups);
    } else {
        // Whole rounds of tasks, so that the threads finish together.
        let rounded = groups.next_multiple_of(want);
        if tiles / rounded >= MIN_GROUP_TILES {
            groups = rounded;
        }
    }
    let mut groups = groups.clamp(1, tiles.max(1));
    // Transformed filters too big for the caches (a network at batch 1: they come from
    // memory): every group's tasks stream all of U again, so use as few groups as keep
    // at most MAX_GROUP_TILES tiles and split the output channels instead (each task then
    // reads its own part of U once and repeats the cheap input transform).
    if u_bytes(filter_positions(a), icb, ocb, l) >= U_STREAMED_BYTES {
        // ... while a group's transformed inputs stay within the L2 (ResNet-50 b8's
        // layer4 F(4x4): 32 tiles of 512 channels are 2.4 MB, so it keeps 3 groups).
        let v_bytes = tiles * a * a * icb * l * std::mem::size_of::<f32>();
        let fewest = tiles
            .div_ceil(MAX_GROUP_TILES)
            .max(v_bytes.div_ceil(V_MAX_BYTES))
            .max(1);
        groups = groups.min(fewest);
    }
    // Too few groups to fill the threads (batch 1, small images): split the output
    // channels too; each such task repeats its group's input transform.
    let kparts = if groups < want {
        want.div_ceil(groups).min(ocb).max(1)
    } else {
        1
    };
    Plan { groups, kparts }
}

/// Bytes of the transformed filters `U` of `positions` positions, `icb` input and `ocb`
/// output blocks of `l` lanes.
fn u_bytes(positions: usize, icb: usize, ocb: usize, l: usize) -> usize {
    positions * icb * ocb * l * l * std::mem::size_of::<f32>()
}

/// Transformed-filter bytes from which [`plan`] keeps the fewest tile groups: U then
/// stays neither in the 1 MB L2s nor, beside the rest of a network's weights, in L3, so
/// every extra group costs one more pass over it from memory. Measured in place
/// (ResNet-50 b1, interleaved, loaded machine, ms): layer4.x.conv2 F(2x2) (U 16.8 MB,
/// 16 tiles: 2 groups x 2 channel parts before, 1 x 4 now) 1.39-1.46 to 1.04-1.14;
/// layer3.x.conv2 F(2x2) (4.2 MB, 49 tiles: 4 x 1 before, 1 x 4 now) 0.69-0.74 to
/// 0.67-0.69. Below it the groups read U from L3: layer2's F(4x4) at batch 1 (2.4 MB,
/// 49 tiles) as 1 group x 2 channel parts, each repeating the whole input transform and
/// reading the half of the input the other thread wrote, ran 0.54 / 0.43 / 0.41 ms
/// against 0.45 / 0.38 / 0.38 as tile groups (`examples/plan_profile resnet50 1`, the
/// rules alternating process by process, Zen 4, medians of 29-31 runs), 0.65 / 0.56 /
/// 0.54 against 0.56 / 0.51 / 0.51 while the two vCPUs sat on different L3s (6 and 10
/// runs); at batch 8 its three layers 3.07-3.53 against 2.96-3.30 ms (3 runs each).
const U_STREAMED_BYTES: usize = 4 << 20;

/// Transformed-filter bytes from which the products prefetch the next position's
/// filters ([`products_span`]): U no longer stays in the 1 MB L2s.
const U_BIG_BYTES: usize = 2 << 20;

/// The most bytes of one group's transformed inputs when [`U_STREAMED_BYTES`] cuts groups.
const V_MAX_BYTES: usize = 1 << 20;

/// Tile `t` of the batch: image, output row and column of its top-left corner.
#[derive(Clone, Copy)]
pub(crate) struct Tiling {
    pub(crate) cols: usize,
    pub(crate) per_image: usize,
}

impl Tiling {
    #[inline(always)]
    pub(crate) fn tile<const M: usize>(&self, t: usize) -> (usize, usize, usize) {
        let (n, r) = (t / self.per_image, t % self.per_image);
        (n, (r / self.cols) * M, (r % self.cols) * M)
    }
}

/// The tiles of a call (`m x m` outputs each) and how it is cut into tasks: the one
/// source for the convolution and for the moment records it fills.
fn call_plan(xs: Blocked, ys: Blocked, m: usize, a: usize) -> (usize, Plan) {
    let tiles = ys.n * ys.h.div_ceil(m) * ys.w.div_ceil(m);
    (tiles, plan(tiles, a, xs.blocks(), ys.blocks(), xs.block))
}

#[allow(clippy::too_many_arguments)]
fn conv_impl<V: Vector, const M: usize, const A: usize>(
    xs: Blocked,
    ys: Blocked,
    input: &[f32],
    filters: Transformed,
    ep: &BlockedEpilogue,
    out: &mut [f32],
    records: Option<Records>,
    three: Option<bool>,
) {
    let l = V::LANES;
    let (icb, ocb) = (xs.blocks(), ys.blocks());
    let tiling = Tiling {
        cols: ys.w.div_ceil(M),
        per_image: ys.h.div_ceil(M) * ys.w.div_ceil(M),
    };
    let (tiles, p) = call_plan(xs, ys, M, A);
    if tiles == 0 || ocb == 0 {
        return;
    }
    let shared = SharedOut::new(out);
    let out = &shared;
    if let Transformed::F32(u) = filters {
        if three.unwrap_or_else(|| three_phases(tiles, p, A, icb, ocb, l)) {
            return conv_three_phases::<V, M, A>(xs, ys, &tiling, (tiles, p), input, u, ep, out, records);
        }
    }
    // A task is one tile group's share of the output channels; its steps are its chunks
    // of `blocks_per_call` output blocks, each needing the group's transformed inputs,
    // which a thread computes before its first step of that task.
    let rb_max = blocks_per_call::<V>();
    let tasks = p.groups * p.kparts;
    let parts = |task: usize| p.task(task, tiles, ocb);
    let steps = |task: usize| parts(task).1.len().div_ceil(rb_max);
    let queues = split::Steps::new(tasks, true, steps);
    // Scratch for the largest group (ranges differ by at most one tile).
    let lens = |t: usize| {
        let v_stride = position_stride(icb * t * l);
        let v_len = A * A * v_stride;
        let m_len = A * A * position_stride(RB * t * l);
        // bf16 products read V rounded to bf16: half as many bytes, after the f32 ones.
        let v16_len = match filters {
            Transformed::F32(_) => 0,
            Transformed::Bf16(_) => v_len.div_ceil(2),
        };
        (v_stride, v_len, m_len, v16_len)
    };
    let (_, v_most, m_most, v16_most) = lens(tiles.div_ceil(p.groups));
    split::for_each_task(tasks, |task| {
        with_scratch(v_most + m_most + v16_most, |s| {
            let mut transformed = None;
            queues.run(task, steps, |task, step| {
                let (tr, kr) = parts(task);
                let t = tr.len();
                let (v_stride, v_len, m_len, v16_len) = lens(t);
                let (v, rest) = s.split_at_mut(v_len);
                let (m, rest) = rest.split_at_mut(m_len);
                let v16 = bf16::scratch_u16(&mut rest[..v16_len], if v16_len == 0 { 0 } else { v_len });
                if transformed != Some(task) {
                    input_transform::<V, M, A>(xs, &tiling, input, tr.start, t, v);
                    if let Transformed::Bf16(_) = filters {
                        bf16::convert(v, v16);
                    }
                    transformed = Some(task);
                }
                let cb = kr.start + step * rb_max;
                let rb = rb_max.min(kr.end - cb);
                match filters {
                    Transformed::F32(f) => products::<V, A>(f, xs.padded_channels(), ocb, cb, rb, icb, t, v, m),
                    Transformed::Bf16(f) => bf16::products(
                        f,
                        A * A,
                        xs.padded_channels(),
                        ocb,
                        (cb, rb),
                        t,
                        (v16, v_stride),
                        // As `products` and the output transform lay out `M`.
                        (m, position_stride(rb * t * l)),
                    ),
                }
                let record = records.map(|r| (r, task / p.kparts * ys.padded_channels()));
                output_transform::<V, M, A>(ys, &tiling, tr.start, t, cb, rb, m, ep, out, record);
            });
        });
    });
}

/// Whether [`conv_three_phases`] runs a call cut into tiles and tasks as `p` says: where
/// the plan streams transformed filters too big for the caches ([`U_STREAMED_BYTES`]) once
/// per tile group, more than once, and the whole call's `V` and `M` stay within
/// [`THREE_PHASE_BYTES`].
fn three_phases(tiles: usize, p: Plan, a: usize, icb: usize, ocb: usize, l: usize) -> bool {
    let bytes = |blocks: usize| a * a * position_stride(blocks * tiles * l) * std::mem::size_of::<f32>();
    u_bytes(filter_positions(a), icb, ocb, l) >= U_STREAMED_BYTES
        && p.groups > 1
        && bytes(icb) + bytes(ocb) <= THREE_PHASE_BYTES
}

/// The most bytes of a whole call's transformed inputs and products for which
/// [`conv_three_phases`] runs: they then stay in the L3 between the phases.
const THREE_PHASE_BYTES: usize = 12 << 20;

/// The convolution in three parallel phases over whole-call tensors, for layers whose
/// transformed filters `u` do not stay in cache (ResNet-50's 256- and 512-channel layers
/// from batch 8): every tile's input transform into one `V`, then the products of each
/// position (and chunk of output blocks) over all tiles, reading each filter matrix
/// `U[xi]` once where the grouped schedule reads all of `U` once per tile group, then
/// the output transforms, cut into the same tasks as [`conv_impl`]'s (so the records
/// of a gather are the same). Every output is the same sum in the same order as there.
#[allow(clippy::too_many_arguments)]
fn conv_three_phases<V: Vector, const M: usize, const A: usize>(
    xs: Blocked,
    ys: Blocked,
    tiling: &Tiling,
    (tiles, p): (usize, Plan),
    input: &[f32],
    u: &[f32],
    ep: &BlockedEpilogue,
    out: &SharedOut,
    records: Option<Records>,
) {
    let l = V::LANES;
    let (icb, ocb) = (xs.blocks(), ys.blocks());
    let (vs, ms) = (Span::group(icb, tiles, l), Span::group(ocb, tiles, l));
    let v_len = A * A * vs.xi;
    with_staging(v_len + A * A * ms.xi, |buf| {
        let (v, m) = buf.split_at_mut(v_len);
        {
            let v = SharedOut::new(v);
            split::for_each_range(tiles, |tr| {
                let span = vs.shifted(0, tr.start, l);
                input_transform_into::<V, M, A>(xs, tiling, input, tr.start, tr.len(), &v, span);
            });
        }
        {
            let rb_max = blocks_per_call::<V>();
            let chunks = ocb.div_ceil(rb_max);
            let m = SharedOut::new(m);
            // Steps of one (position, chunk) unit each.
            split::for_each_segment(A * A * chunks, 1, true, |_, units| {
                for unit in units {
                    let (xi, cb) = (unit / chunks, unit % chunks * rb_max);
                    let rb = rb_max.min(ocb - cb);
                    let span = ms.shifted(cb, 0, l);
                    products_span::<V>(
                        u,
                        xs.padded_channels(),
                        (ocb, cb, rb),
                        icb,
                        tiles,
                        (xi..xi + 1, A),
                        (v, vs),
                        (&m, span),
                    );
                }
            });
        }
        let m = &*m;
        let rb_max = blocks_per_call::<V>();
        let parts = |task: usize| p.task(task, tiles, ocb);
        let steps = |task: usize| parts(task).1.len().div_ceil(rb_max);
        split::for_each_step(p.groups * p.kparts, true, steps, |task, step| {
            let (tr, kr) = parts(task);
            let cb = kr.start + step * rb_max;
            let rb = rb_max.min(kr.end - cb);
            let record = records.map(|r| (r, task / p.kparts * ys.padded_channels()));
            let span = ms.shifted(cb, tr.start, l);
            output_transform_span::<V, M, A>(ys, tiling, tr.start, tr.len(), cb, rb, (m, span), ep, out, record);
        });
    });
}

/// The distance in floats between the positions `xi` of the scratch `V` and `M`, each
/// `len` floats: rounded up to an odd number of 64-byte lines. With a power-of-two
/// distance (64 tiles x 4 blocks x 16 lanes = 16 KB, F2's usual case) the 16 or 36
/// vectors a tile's transform stores or loads, one per position, all map to one set of
/// the 8-way L1 and evict each other; an odd number of lines spreads them over 64 sets.
#[inline(always)]
pub(crate) fn position_stride(len: usize) -> usize {
    const LINE: usize = 64 / std::mem::size_of::<f32>();
    let lines = len.div_ceil(LINE);
    (lines | 1) * LINE
}

/// `o = B^T d` for one column (or row) of `A` vectors; the matrices are in the module doc.
#[inline(always)]
pub(crate) fn input_1d<V: Vector, const A: usize>(d: &[V; A]) -> [V; A] {
    let mut o = [V::ZERO; A];
    if A == 4 {
        o[0] = d[0] - d[2];
        o[1] = d[1] + d[2];
        o[2] = d[2] - d[1];
        o[3] = d[1] - d[3];
    } else if A == 5 {
        // The stride-2 transform of 2-output tiles: F(2,2)'s B^T ([`BT_F22`]) on the
        // even inputs d0, d2, d4; the odd inputs d1, d3 pass as they are.
        o[0] = d[0] + d[2];
        o[1] = d[2];
        o[2] = d[2] + d[4];
        o[3] = d[1];
        o[4] = d[3];
    } else if A == 9 {
        // The stride-2 transform of 4-output tiles: F(4,2)'s B^T ([`BT_F42`]) on the
        // even inputs e = d0, d2, .., d8; the odd inputs d1, d3, d5, d7 pass as they are.
        let (e0, e1, e2, e3, e4) = (d[0], d[2], d[4], d[6], d[8]);
        let two = V::splat(2.0);
        let (d31, d32) = (e3 - e1, e3 - e2);
        o[0] = (e0 - e2).mul_add(two, d31);
        o[1] = e1.mul_add(V::splat(-2.0), d32);
        o[2] = (e1 - e2).mul_add(two, d32);
        o[3] = d31;
        o[4] = (e1 - e3).mul_add(two, e4 - e2);
        for k in 0..4 {
            o[5 + k] = d[2 * k + 1];
        }
    } else {
        let (d0, d1, d2, d3, d4, d5) = (d[0], d[1], d[2], d[3], d[4], d[5]);
        let four = V::splat(4.0);
        let five = V::splat(5.0);
        let two = V::splat(2.0);
        // o0 = 4 d0 - 5 d2 + d4, o5 = 4 d1 - 5 d3 + d5.
        o[0] = d0.mul_add(four, d4) - d2 * five;
        o[1] = (d3 + d4) - (d1 + d2) * four;
        o[2] = (d4 - d3) + (d1 - d2) * four;
        o[3] = (d4 - d2) + (d3 - d1) * two;
        o[4] = (d4 - d2) - (d3 - d1) * two;
        o[5] = d1.mul_add(four, d5) - d3 * five;
    }
    o
}

/// `o = A^T m` for one column (or row) of `A` vectors, `M` values out.
#[inline(always)]
pub(crate) fn output_1d<V: Vector, const A: usize, const M: usize>(m: &[V; A]) -> [V; M] {
    let mut o = [V::ZERO; M];
    if A == 4 {
        o[0] = m[0] + m[1] + m[2];
        o[1] = m[1] - m[2] - m[3];
    } else if A == 5 {
        // F(2,2)'s A^T ([`AT_F22`]) on the even positions, plus output k's odd one.
        o[0] = m[0] + m[1] + m[3];
        o[1] = (m[2] - m[1]) + m[4];
    } else if A == 9 {
        // F(4,2)'s A^T ([`AT_F42`]) on the even positions, plus output k's odd one.
        let s12 = m[1] + m[2];
        let d12 = m[1] - m[2];
        o[0] = (m[0] + s12) + m[3] + m[5];
        o[1] = m[3].mul_add(V::splat(2.0), d12) + m[6];
        o[2] = m[3].mul_add(V::splat(4.0), s12) + m[7];
        o[3] = m[3].mul_add(V::splat(8.0), d12) + (m[4] + m[8]);
    } else {
        let s12 = m[1] + m[2];
        let d12 = m[1] - m[2];
        let s34 = m[3] + m[4];
        let d34 = m[3] - m[4];
        o[0] = m[0] + s12 + s34;
        o[1] = d34.mul_add(V::splat(2.0), d12);
        o[2] = s34.mul_add(V::splat(4.0), s12);
        o[3] = d34.mul_add(V::splat(8.0), d12) + m[5];
    }
    o
}

/// Tiles ahead of the current one whose pixels the transforms prefetch.
pub(crate) const PREFETCH_AHEAD: usize = 2;

/// Activations of at least this many bytes (a core's L2) are prefetched tile by tile.
const STREAMED_BYTES: usize = 1 << 20;

/// Whether the transforms prefetch the pixels of a tensor of `len` floats: those that
/// fit L2 are read from it without stalls, and the prefetches would only add work
/// (ResNet-20 at batch 1 ran 3 % slower with them); larger ones come from L3 or memory,
/// where training reads most of them (activations kept since the forward pass), and
/// the loads of a tile stall.
#[inline(always)]
pub(crate) fn streamed(len: usize) -> bool {
    crate::simd::HAS_PREFETCH && len * std::mem::size_of::<f32>() >= STREAMED_BYTES
}

/// Prefetches into L1 rows `rows` and columns `cols` of channel blocks `blocks` of tile
/// `t` of `tl` in the tensor at `data` (laid out as `ls`), counted from `back` pixels
/// above and to the left of the tile's first pixel, to be written (`write`: the lines
/// come without waiting for a later store to claim them) or read. A hint only: the
/// addresses are never dereferenced, so a tile past the last one is harmless.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn prefetch_tile<const M: usize>(
    ls: Blocked,
    tl: &Tiling,
    data: *const f32,
    t: usize,
    blocks: Range<usize>,
    rows: Range<usize>,
    cols: Range<usize>,
    back: usize,
    write: bool,
) {
    let (n, oy, ox) = tl.tile::<M>(t);
    let row = ls.w * ls.block;
    for b in blocks {
        let base = ls.at(n, b, oy, ox).wrapping_sub(back * (row + ls.block));
        for i in rows.clone() {
            for j in cols.clone() {
                let p = data.wrapping_add(base.wrapping_add(i * row + j * ls.block));
                if write {
                    crate::simd::prefetch_write(p);
                } else {
                    crate::simd::prefetch_l1(p);
                }
            }
        }
    }
}

/// `V[xi][icb][t][lane] = (B^T d B)[xi]` of tiles `t0..t0 + tn` of the batch, every input
/// channel block: `d` is the tile's `A x A` patch (rows `oy-1..`, columns `ox-1..`), zero
/// outside the image.
// Out of line (called once a task): profiles then show the transforms apart.
#[inline(never)]
pub(crate) fn input_transform<V: Vector, const M: usize, const A: usize>(
    xs: Blocked,
    tl: &Tiling,
    x: &[f32],
    t0: usize,
    tn: usize,
    v: &mut [f32],
) {
    let span = Span::group(xs.blocks(), tn, V::LANES);
    input_transform_into::<V, M, A>(xs, tl, x, t0, tn, &SharedOut::new(v), span);
}

/// Where the transformed values of a set of tiles lie: those of tile `t` (counted from
/// the set's first) of channel block `b` at position `xi` start at `xi * xi + b * block +
/// at + t * L`. A group's own scratch ([`Span::group`]) or, for the three-phase
/// schedule, the tile's columns of the whole call's `V` or `M`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    pub(crate) xi: usize,
    pub(crate) block: usize,
    pub(crate) at: usize,
}

impl Span {
    /// A group scratch of `blocks` blocks of `tn` tiles, positions [`position_stride`]
    /// apart.
    pub(crate) fn group(blocks: usize, tn: usize, l: usize) -> Span {
        Span {
            xi: position_stride(blocks * tn * l),
            block: tn * l,
            at: 0,
        }
    }

    /// The same span moved by `blocks` blocks and `tiles` tiles of `l` lanes.
    pub(crate) fn shifted(self, blocks: usize, tiles: usize, l: usize) -> Span {
        Span {
            at: self.at + blocks * self.block + tiles * l,
            ..self
        }
    }

    /// One past the last float of `positions` positions, `blocks` blocks, `tn` tiles.
    pub(crate) fn end(&self, positions: usize, blocks: usize, tn: usize, l: usize) -> usize {
        if positions == 0 || blocks == 0 || tn == 0 {
            return 0;
        }
        (positions - 1) * self.xi + (blocks - 1) * self.block + self.at + tn * l
    }
}

/// [`input_transform`] into the span `span` of `v`, whose other floats it leaves alone
/// (tasks fill disjoint tile columns of one whole `V`).
#[inline(never)]
pub(crate) fn input_transform_into<V: Vector, const M: usize, const A: usize>(
    xs: Blocked,
    tl: &Tiling,
    x: &[f32],
    t0: usize,
    tn: usize,
    v: &SharedOut,
    span: Span,
) {
    let l = V::LANES;
    let icb = xs.blocks();
    let (h, w) = (xs.h, xs.w);
    let row = w * l;
    assert_eq!(x.len(), xs.len());
    assert!(span.end(A * A, icb, tn, l) <= v.len(), "winograd: V span out of bounds");
    // Only this task writes the span's tiles (the caller's guarantee, as `SharedOut`'s).
    let (xp, vp) = (x.as_ptr(), v.ptr_at(0));
    // The stride-2 transform's tiles of M outputs read A = 2M + 1 input pixels.
    let stride = if A == 2 * M + 1 { 2 } else { 1 };
    // (Prefetching the stride-2 transform's patches measured no faster.)
    let prefetch = stride == 1 && streamed(x.len());
    for t in 0..tn {
        let (n, oy, ox) = tl.tile::<M>(t0 + t);
        let (oy, ox) = (oy * stride, ox * stride);
        // Rows and columns of the patch inside the image.
        let (i0, j0) = (usize::from(oy == 0), usize::from(ox == 0));
        let (i1, j1) = (A.min(h + 1 - oy), A.min(w + 1 - ox));
        let interior = i0 == 0 && j0 == 0 && i1 == A && j1 == A;
        let row_in: [bool; A] = core::array::from_fn(|i| i >= i0 && i < i1);
        let col_in: [bool; A] = core::array::from_fn(|j| j >= j0 && j < j1);
        if prefetch {
            // The patch's last M columns: the tile before read the others.
            prefetch_tile::<M>(xs, tl, xp, t0 + t + PREFETCH_AHEAD, 0..icb, 0..A, A - M..A, 1, false);
        }
        for cb in 0..icb {
            // Patch value (i, j) is image pixel (oy - 1 + i, ox - 1 + j), at
            // `base + i * row + j * l - row - l` (written so that it never goes negative).
            let base = xs.at(n, cb, oy, ox);
            let mut d = [[V::ZERO; A]; A];
            // Constant loop bounds (no early exits) so that `d` stays in registers.
            if interior {
                for (i, di) in d.iter_mut().enumerate() {
                    for (j, dij) in di.iter_mut().enumerate() {
                        // SAFETY: an interior patch lies inside the image, so each pixel's
                        // vector lies inside `x` (whose length is checked above).
                        *dij = unsafe { V::load_at(xp, base + i * row + j * l - row - l) };
                    }
                }
            } else {
                for (i, di) in d.iter_mut().enumerate() {
                    for (j, dij) in di.iter_mut().enumerate() {
                        if row_in[i] && col_in[j] {
                            // SAFETY: pixel (oy - 1 + i, ox - 1 + j) is inside the image.
                            *dij = unsafe { V::load_at(xp, base + i * row + j * l - row - l) };
                        }
                    }
                }
            }
            // Columns, then rows.
            let mut tcol = [[V::ZERO; A]; A];
            for j in 0..A {
                let col: [V; A] = core::array::from_fn(|i| d[i][j]);
                let r = input_1d::<V, A>(&col);
                for (i, ti) in tcol.iter_mut().enumerate() {
                    ti[j] = r[i];
                }
            }
            for (i, ti) in tcol.iter().enumerate() {
                let r = input_1d::<V, A>(ti);
                for (j, rj) in r.iter().enumerate() {
                    // SAFETY: `xi < A * A`, `cb < icb`, `t < tn`: inside the span of `v`
                    // (checked above), which only this task writes.
                    unsafe { rj.store_at(vp, (i * A + j) * span.xi + cb * span.block + span.at + t * l) };
                }
            }
        }
    }
}

/// `M[xi][r][t][lane] = sum_ci U[xi][cb + r][ci][lane] V[xi][ci / L][t][ci % L]` for
/// output-channel blocks `cb..cb + rb` and the group's `tn` tiles, every position.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn products<V: Vector, const A: usize>(
    u: &[f32],
    cp: usize,
    ocb: usize,
    cb: usize,
    rb: usize,
    icb: usize,
    tn: usize,
    v: &[f32],
    m: &mut [f32],
) {
    let l = V::LANES;
    let (vs, ms) = (Span::group(icb, tn, l), Span::group(rb, tn, l));
    products_span::<V>(
        u,
        cp,
        (ocb, cb, rb),
        icb,
        tn,
        (0..A * A, A),
        (v, vs),
        (&SharedOut::new(m), ms),
    );
}

/// [`products`] of the positions `xis` of an `a x a` tile only (each multiplying its
/// filter matrix, [`filter_position`]), reading `V` from its span `vs` (`icb`
/// blocks of `tn` tiles) and writing the `rb` blocks of `M` into the span `ms` of `m`
/// (tasks fill disjoint spans of one whole `M`). Where `u` outgrows the caches
/// ([`U_BIG_BYTES`]) and the target has a prefetch instruction, each position's calls
/// prefetch the filters of the next position of these blocks (after the last, those of
/// the next blocks at the first position) into L2, a few lines per input-channel block,
/// so that their trip from memory overlaps these products. Measured in place
/// (`examples/plan_profile resnet50 1`, interleaved, loaded machine, ms): layer3.x.conv2
/// F(2x2) 0.64-0.77 to 0.59-0.68, layer4.x.conv2 0.80-0.97 to 0.68-0.82. Elsewhere the
/// kernel is built without the prefetch: in wasm its bookkeeping alone, never issuing a
/// prefetch, made ResNet-20 17-19 % slower in Node.
#[allow(clippy::too_many_arguments)]
fn products_span<V: Vector>(
    u: &[f32],
    cp: usize,
    (ocb, cb, rb): (usize, usize, usize),
    icb: usize,
    tn: usize,
    (xis, a): (std::ops::Range<usize>, usize),
    v: (&[f32], Span),
    m: (&SharedOut, Span),
) {
    let l = V::LANES;
    if crate::simd::HAS_PREFETCH && std::mem::size_of_val(u) >= U_BIG_BYTES {
        let (region, calls) = (rb * cp * l, tn.div_ceil(rt_for::<V>(rb)));
        let (first, last) = (xis.start, xis.end);
        products_span_with::<V, Prefetch>(u, cp, (ocb, cb, rb), icb, tn, (xis, a), v, m, |xi, call| {
            let next = if xi + 1 < last {
                filter_position(xi + 1, a) * ocb + cb
            } else {
                filter_position(first, a) * ocb + cb + rb
            } * cp
                * l;
            Slices::new(u, next..next + region, calls, icb).call(call)
        })
    } else {
        products_span_with::<V, NoPrefetch>(u, cp, (ocb, cb, rb), icb, tn, (xis, a), v, m, |_, _| NoPrefetch)
    }
}

/// [`products_span`] with the micro-kernel's call `call` at position `xi` stepping
/// `prefetch(xi, call)`.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn products_span_with<V: Vector, P: Step>(
    u: &[f32],
    cp: usize,
    (ocb, cb, rb): (usize, usize, usize),
    icb: usize,
    tn: usize,
    (xis, a): (std::ops::Range<usize>, usize),
    (v, vs): (&[f32], Span),
    (m, ms): (&SharedOut, Span),
    prefetch: impl Fn(usize, usize) -> P,
) {
    let l = V::LANES;
    assert!(cb + rb <= ocb && rb <= RB);
    assert!(xis.end <= a * a && u.len() >= filter_positions(a) * ocb * cp * l);
    assert!(vs.end(xis.end, icb, tn, l) <= v.len() && ms.end(xis.end, rb, tn, l) <= m.len());
    assert_eq!(cp, icb * l);
    let mp = m.ptr_at(0);
    for xi in xis {
        let u_xi = &u[((filter_position(xi, a) * ocb + cb) * cp) * l..];
        let v_xi = &v[xi * vs.xi + vs.at..];
        let m_at = xi * ms.xi + ms.at;
        let mut t = 0;
        let mut call = 0;
        while t < tn {
            let rt = rt_for::<V>(rb).min(tn - t);
            let mut pf = prefetch(xi, call);
            call += 1;
            // SAFETY: `u_xi` holds blocks `cb..cb + rb` of `cp x l` values each (asserted
            // above: `cb + rb <= ocb`), `v_xi` holds `icb` blocks `vs.block` apart and
            // reads tiles `t..t + rt <= tn` of each, and the span of `m` at `m_at` holds
            // `rb` blocks `ms.block` apart whose tiles `t..t + rt` are written (all
            // bounded by the asserts above), by this task only.
            unsafe {
                micro_dispatch::<V, P>(
                    rb,
                    rt,
                    u_xi.as_ptr(),
                    cp * l,
                    v_xi.as_ptr().add(t * l),
                    vs.block,
                    icb,
                    mp.add(m_at + t * l),
                    ms.block,
                    &mut pf,
                );
            }
            t += rt;
        }
    }
}

/// Tiles per micro-kernel call for `rb` output blocks of `V` (`TILES_PER_CALL[rb]`, or
/// [`TILES_PER_CALL_NARROW`] for narrow vectors).
#[inline(always)]
fn rt_for<V: Vector>(rb: usize) -> usize {
    if V::LANES >= 16 {
        TILES_PER_CALL[rb]
    } else {
        TILES_PER_CALL_NARROW[rb]
    }
}

/// Picks the micro-kernel instance for `rb <= RB` output blocks and `rt <= 16` tiles.
///
/// # Safety
/// As [`micro`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn micro_dispatch<V: Vector, P: Step>(
    rb: usize,
    rt: usize,
    u: *const f32,
    u_block: usize,
    v: *const f32,
    v_block: usize,
    icb: usize,
    m: *mut f32,
    m_block: usize,
    pf: &mut P,
) {
    macro_rules! by_rt {
        ($rb:literal) => {
            match rt {
                // SAFETY: forwarded from the caller.
                1 => unsafe { micro::<V, $rb, 1, P>(u, u_block, v, v_block, icb, m, m_block, pf) },
                2 => unsafe { micro::<V, $rb, 2, P>(u, u_block, v, v_block, icb, m, m_block, pf) },
                3 => unsafe { micro::<V, $rb, 3, P>(u, u_block, v, v_block, icb, m, m_block, pf) },
                4 => unsafe { micro::<V, $rb, 4, P>(u, u_block, v, v_block, icb, m, m_block, pf) },
                5 => unsafe { micro::<V, $rb, 5, P>(u, u_block, v, v_block, icb, m, m_block, pf) },
                6 => unsafe { micro::<V, $rb, 6, P>(u, u_block, v, v_block, icb, m, m_block, pf) },
                7 => unsafe { micro::<V, $rb, 7, P>(u, u_block, v, v_block, icb, m, m_block, pf) },
                8 => unsafe { micro::<V, $rb, 8, P>(u, u_block, v, v_block, icb, m, m_block, pf) },
                9 => unsafe { micro::<V, $rb, 9, P>(u, u_block, v, v_block, icb, m, m_block, pf) },
                10 => unsafe { micro::<V, $rb, 10, P>(u, u_block, v, v_block, icb, m, m_block, pf) },
                11 => unsafe { micro::<V, $rb, 11, P>(u, u_block, v, v_block, icb, m, m_block, pf) },
                12 => unsafe { micro::<V, $rb, 12, P>(u, u_block, v, v_block, icb, m, m_block, pf) },
                13 => unsafe { micro::<V, $rb, 13, P>(u, u_block, v, v_block, icb, m, m_block, pf) },
                14 => unsafe { micro::<V, $rb, 14, P>(u, u_block, v, v_block, icb, m, m_block, pf) },
                15 => unsafe { micro::<V, $rb, 15, P>(u, u_block, v, v_block, icb, m, m_block, pf) },
                16 => unsafe { micro::<V, $rb, 16, P>(u, u_block, v, v_block, icb, m, m_block, pf) },
                _ => unreachable!("at most 16 tiles"),
            }
        };
    }
    match rb {
        1 => by_rt!(1),
        2 => by_rt!(2),
        3 => by_rt!(3),
        4 => by_rt!(4),
        _ => unreachable!("at most RB blocks"),
    }
}

/// The register-blocked product of `R` output-channel blocks and `T` tiles: for every
/// input channel `ci`, the `R` vectors `U[r][ci]` times the broadcast tile values
/// `V[t][ci]`, accumulated in `R x T` vectors and stored to `M` at the end; `pf` steps
/// once per input-channel block.
///
/// # Safety
/// `u + r * u_block + ci * L .. + L` for `r < R`, `ci < icb * L`; `v + b * v_block + t * L
/// + lane` for `b < icb`, `t < T`, `lane < L`; and `m + r * m_block + t * L .. + L` (written)
/// must lie inside live allocations, `m` not overlapping the others.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn micro<V: Vector, const R: usize, const T: usize, P: Step>(
    u: *const f32,
    u_block: usize,
    v: *const f32,
    v_block: usize,
    icb: usize,
    m: *mut f32,
    m_block: usize,
    pf: &mut P,
) {
    let l = V::LANES;
    let mut acc = [[V::ZERO; T]; R];
    // Indexed loops: fully unrolled over the constant R and T, `acc` stays in registers.
    #[allow(clippy::needless_range_loop)]
    for b in 0..icb {
        // SAFETY (whole loop body): in bounds by the function's contract.
        unsafe {
            let vb = v.add(b * v_block);
            let ub = u.add(b * l * l);
            for lane in 0..l {
                let uv: [V; R] = core::array::from_fn(|r| V::load_at(ub, r * u_block + lane * l));
                for t in 0..T {
                    let x = V::splat(*vb.add(t * l + lane));
                    for r in 0..R {
                        acc[r][t] = uv[r].mul_add(x, acc[r][t]);
                    }
                }
            }
        }
        pf.step();
    }
    for (r, ar) in acc.iter().enumerate() {
        for (t, a) in ar.iter().enumerate() {
            // SAFETY: in bounds and unshared by the function's contract.
            unsafe { a.store_at(m, r * m_block + t * l) };
        }
    }
}

/// `Y = ep(A^T M A)` of output-channel blocks `cb..cb + rb` of the group's tiles, stored
/// into the blocked output; partial tiles at the right and bottom edges store only the
/// pixels inside the image.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn output_transform<V: Vector, const M: usize, const A: usize>(
    ys: Blocked,
    tl: &Tiling,
    t0: usize,
    tn: usize,
    cb: usize,
    rb: usize,
    m: &[f32],
    ep: &BlockedEpilogue,
    out: &SharedOut,
    records: Option<(Records, usize)>,
) {
    let span = Span::group(rb, tn, V::LANES);
    output_transform_span::<V, M, A>(ys, tl, t0, tn, cb, rb, (m, span), ep, out, records);
}

/// [`output_transform`] reading `M` from the span `ms` of `m` (`rb` blocks of `tn`
/// tiles).
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn output_transform_span<V: Vector, const M: usize, const A: usize>(
    ys: Blocked,
    tl: &Tiling,
    t0: usize,
    tn: usize,
    cb: usize,
    rb: usize,
    (m, ms): (&[f32], Span),
    ep: &BlockedEpilogue,
    out: &SharedOut,
    records: Option<(Records, usize)>,
) {
    let l = V::LANES;
    let (h, w) = (ys.h, ys.w);
    assert!(ms.end(A * A, rb, tn, l) <= m.len(), "winograd: M span out of bounds");
    let mp = m.as_ptr();
    let prefetch = streamed(out.len());
    for r in 0..rb {
        let bias = ep.bias_of::<V>(cb + r);
        // Moments of the stored values around the first one, or the gradient sums (see
        // `winograd_conv_gather`): `sum` and `squares` hold `sum dy` and `sum dy (z - mean)`.
        let (mut shift, mut sum, mut squares, mut count) = (None, V::ZERO, V::ZERO, 0usize);
        let grad = records.and_then(|(rec, _)| rec.grad).map(|(z, mean, relu)| {
            let b = cb + r;
            (z, V::load(&mean[b * l..]), norm::relu_block::<V>(relu, b))
        });
        for t in 0..tn {
            if prefetch {
                let ahead = t0 + t + PREFETCH_AHEAD;
                let b = cb + r..cb + r + 1;
                // The stored pixels and what the epilogue reads at them.
                prefetch_tile::<M>(ys, tl, out.ptr_at(0), ahead, b.clone(), 0..M, 0..M, 0, true);
                for read in [ep.residual.separate(), ep.relu_output, grad.map(|(z, _, _)| z)]
                    .into_iter()
                    .flatten()
                {
                    prefetch_tile::<M>(ys, tl, read.as_ptr(), ahead, b.clone(), 0..M, 0..M, 0, false);
                }
            }
            let (n, oy, ox) = tl.tile::<M>(t0 + t);
            let mut mv = [[V::ZERO; A]; A];
            for (i, mi) in mv.iter_mut().enumerate() {
                for (j, mij) in mi.iter_mut().enumerate() {
                    // SAFETY: `xi < A * A`, `r < rb`, `t < tn`: inside `m` (checked above).
                    *mij = unsafe { V::load_at(mp, (i * A + j) * ms.xi + r * ms.block + ms.at + t * l) };
                }
            }
            // Columns (A x A -> M x A), then rows (M x A -> M x M).
            let mut tcol = [[V::ZERO; A]; M];
            for j in 0..A {
                let col: [V; A] = core::array::from_fn(|i| mv[i][j]);
                let o = output_1d::<V, A, M>(&col);
                for (i, ti) in tcol.iter_mut().enumerate() {
                    ti[j] = o[i];
                }
            }
            // Partial tiles at the right and bottom edges store only their pixels inside
            // the image; the loop bounds stay constant so that the tile stays in registers.
            let (rows, cols) = (h - oy, w - ox);
            let whole = rows >= M && cols >= M;
            for (i, ti) in tcol.iter().enumerate() {
                if whole || i < rows {
                    let y = output_1d::<V, A, M>(ti);
                    let at = ys.at(n, cb + r, oy + i, ox);
                    for (j, yj) in y.iter().enumerate() {
                        if whole || j < cols {
                            let v = ep.store(*yj, bias, at + j * l, out);
                            if let Some((z, mean, relu)) = grad {
                                let zv = V::load(&z[at + j * l..]);
                                let d = norm::masked(v, zv, relu);
                                sum = sum + d;
                                squares = d.mul_add(zv - mean, squares);
                            } else if records.is_some() {
                                let d = v - *shift.get_or_insert(v);
                                sum = sum + d;
                                squares = d.mul_add(d, squares);
                                count += 1;
                            }
                        }
                    }
                }
            }
        }
        if let Some((rec, base)) = records {
            let at = (base + (cb + r) * l) * rec.fields();
            if grad.is_some() {
                rec.out.store(at, sum);
                rec.out.store(at + l, squares);
            } else {
                rec.out.store(at, shift.unwrap_or(V::ZERO));
                rec.out.store(at + l, sum);
                rec.out.store(at + 2 * l, squares);
                rec.out.store(at + 3 * l, V::splat(count as f32));
            }
        }
    }
}

/// The naive scalar twin of [`winograd_conv`]: per image, output channel, tile and input
/// channel, the textbook `Y = A^T [(G g G^T) .* (B^T d B)] A` with plain f32 loops over
/// the matrices of the module doc, from the OIHW `weight` (times `scale[k]` if given),
/// then the same epilogue. `input` and `out` are blocked with `block` channels; padding
/// output channels get `ep(0)`. No threads.
#[allow(clippy::too_many_arguments)]
pub fn winograd_conv_naive(
    g: &ConvGeometry,
    tile: WinogradTile,
    input: &[f32],
    weight: &[f32],
    scale: Option<&[f32]>,
    block: usize,
    ep: &BlockedEpilogue,
    out: &mut [f32],
) {
    check_geometry(g);
    let mx = matrices(tile);
    let rows = |r: &[&[f64]]| r.iter().map(|row| row.to_vec()).collect::<Vec<_>>();
    let naive = Naive {
        bt: rows(mx.bt),
        g: mx.g.to_vec(),
        at: rows(mx.at),
        stride: 1,
    };
    naive.conv(g, input, weight, scale, block, ep, out);
}

/// The naive scalar twin of [`winograd_s2_conv`]: the textbook formula of
/// [`winograd_conv_naive`] with the stride-2 transform's `a x a` `B^T`, `a x 3` `G` and
/// `m x a` `A^T` (`a = 2m + 1`) written out whole (the even phase's F(m,2) on the even
/// inputs and taps, the odd phase's identity on the odd ones), each odd-phase position
/// with its own copy of the odd tap.
#[allow(clippy::too_many_arguments)]
pub fn winograd_s2_conv_naive(
    g: &ConvGeometry,
    tile: WinogradTile,
    input: &[f32],
    weight: &[f32],
    scale: Option<&[f32]>,
    block: usize,
    ep: &BlockedEpilogue,
    out: &mut [f32],
) {
    check_geometry_s2(g);
    let mx = s2_matrices(tile);
    let m = tile.m();
    let (e, a) = (m + 1, 2 * m + 1);
    let mut bt = vec![vec![0.0; a]; a];
    let mut gm = vec![[0.0; 3]; a];
    let mut at = vec![vec![0.0; a]; m];
    for p in 0..e {
        for j in 0..e {
            bt[p][2 * j] = mx.bt[p][j];
        }
        gm[p] = mx.g[p];
    }
    for k in 0..m {
        bt[e + k][2 * k + 1] = 1.0;
        gm[e + k] = mx.g[e];
        at[k][..e].copy_from_slice(mx.at[k]);
        at[k][e + k] = 1.0;
    }
    let naive = Naive {
        bt,
        g: gm,
        at,
        stride: 2,
    };
    naive.conv(g, input, weight, scale, block, ep, out);
}

/// The matrices and stride of a naive Winograd convolution: `m x m` output tiles
/// (`m` the rows of `at`) from `a x a` input patches (`a` the rows of `bt`) starting
/// `stride * m` pixels apart.
struct Naive {
    bt: Vec<Vec<f64>>,
    g: Vec<[f64; 3]>,
    at: Vec<Vec<f64>>,
    stride: usize,
}

impl Naive {
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &self,
        g: &ConvGeometry,
        input: &[f32],
        weight: &[f32],
        scale: Option<&[f32]>,
        block: usize,
        ep: &BlockedEpilogue,
        out: &mut [f32],
    ) {
        let (c, k) = (g.in_channels, g.out_channels);
        let xs = Blocked::new(g.batch, c, g.in_h, g.in_w, block);
        let ys = Blocked::new(g.batch, k, g.out_h, g.out_w, block);
        assert_eq!(input.len(), xs.len(), "winograd: input length");
        assert_eq!(out.len(), ys.len(), "winograd: output length");
        assert_eq!(weight.len(), k * c * 9, "winograd: weights must be k x c x 3 x 3");
        let (m, a, stride) = (self.at.len(), self.bt.len(), self.stride);
        let (h, w) = (g.in_h, g.in_w);
        let (oh, ow) = (g.out_h, g.out_w);
        // U[k][c] = G g G^T (a x a), in f32 like the fast kernel's filters.
        let mut u = vec![0f32; k * c * a * a];
        for kk in 0..k {
            for ci in 0..c {
                let f = &weight[(kk * c + ci) * 9..(kk * c + ci + 1) * 9];
                let s = scale.map_or(1.0, |s| s[kk]);
                for i in 0..a {
                    for j in 0..a {
                        let mut acc = 0f32;
                        for p in 0..3 {
                            for q in 0..3 {
                                acc += self.g[i][p] as f32 * f[p * 3 + q] * self.g[j][q] as f32;
                            }
                        }
                        u[((kk * c + ci) * a + i) * a + j] = acc * s;
                    }
                }
            }
        }
        let mut vt = vec![0f32; c * a * a];
        let mut mm = vec![0f32; a * a];
        for n in 0..g.batch {
            for oy in (0..oh).step_by(m) {
                for ox in (0..ow).step_by(m) {
                    // V[c] = B^T d B of this tile, every input channel.
                    for ci in 0..c {
                        let d = |p: usize, q: usize| -> f32 {
                            let (y, x) = ((oy * stride + p) as isize - 1, (ox * stride + q) as isize - 1);
                            if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
                                0.0
                            } else {
                                input[xs.index(n, ci, y as usize, x as usize)]
                            }
                        };
                        for i in 0..a {
                            for j in 0..a {
                                let mut acc = 0f32;
                                for p in 0..a {
                                    for q in 0..a {
                                        acc += self.bt[i][p] as f32 * d(p, q) * self.bt[j][q] as f32;
                                    }
                                }
                                vt[(ci * a + i) * a + j] = acc;
                            }
                        }
                    }
                    for kk in 0..ys.padded_channels() {
                        mm.fill(0.0);
                        if kk < k {
                            for ci in 0..c {
                                for (xi, mv) in mm.iter_mut().enumerate() {
                                    *mv += u[(kk * c + ci) * a * a + xi] * vt[ci * a * a + xi];
                                }
                            }
                        }
                        for i in 0..m.min(oh - oy) {
                            for j in 0..m.min(ow - ox) {
                                let mut acc = 0f32;
                                for p in 0..a {
                                    for q in 0..a {
                                        acc += self.at[i][p] as f32 * mm[p * a + q] * self.at[j][q] as f32;
                                    }
                                }
                                let at = ys.index(n, kk, oy + i, ox + j);
                                out[at] = ep.apply_scalar(acc, kk, at, out[at]);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::blocked::moments::Moments;
    use crate::kernels::blocked::Residual;
    use crate::kernels::test_util::{conv_f64, conv_value_f64, max_rel_err, random, zoo_convs};
    use crate::layout::{from_blocked, to_blocked};
    use crate::rng::Rng;
    use crate::simd::F32xBlock;

    const TILES: [WinogradTile; 2] = [WinogradTile::F2, WinogradTile::F4];

    /// Largest relative error accepted: F(2x2) is about as accurate as direct
    /// convolution, F(4x4) loses about a decimal digit (Lavin & Gray sec. 5).
    fn tolerance(tile: WinogradTile) -> f32 {
        match tile {
            WinogradTile::F2 => 1e-5,
            WinogradTile::F4 => 1e-4,
        }
    }

    fn geometry(n: usize, c: usize, k: usize, h: usize, w: usize) -> ConvGeometry {
        ConvGeometry::new(n, c, h, w, k, (3, 3), 1, 1).unwrap()
    }

    /// Random NCHW input and OIHW weights of `g`, and the input in blocks of `block`.
    fn case(rng: &mut Rng, g: &ConvGeometry, block: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let x = random(rng, g.batch * g.in_image());
        let w = random(rng, g.out_channels * g.in_channels * 9);
        let xs = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, block);
        let mut xb = vec![0.0; xs.len()];
        to_blocked(&x, xs, &mut xb);
        (x, w, xb)
    }

    /// The fast kernel at vector `V`, from the OIHW weights (NaN-filled output first, so an
    /// unwritten value shows as an infinite error).
    fn fast<V: Vector>(g: &ConvGeometry, tile: WinogradTile, xb: &[f32], w: &[f32], ep: &BlockedEpilogue) -> Vec<f32> {
        let l = V::LANES;
        let mut u = vec![0.0; filters_len(tile, g.in_channels, g.out_channels, l)];
        transform_filters(w, None, g.in_channels, g.out_channels, tile, l, &mut u);
        let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, l);
        let mut y = vec![f32::NAN; ys.len()];
        winograd_conv::<V>(g, tile, xb, &u, ep, &mut y);
        y
    }

    fn naive(g: &ConvGeometry, tile: WinogradTile, xb: &[f32], w: &[f32], block: usize) -> Vec<f32> {
        let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, block);
        let mut y = vec![f32::NAN; ys.len()];
        winograd_conv_naive(g, tile, xb, w, None, block, &BlockedEpilogue::default(), &mut y);
        y
    }

    /// The blocked output as NCHW, after checking that its padding channels are zero.
    fn unblock(g: &ConvGeometry, y: &[f32], block: usize) -> Vec<f32> {
        let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, block);
        for n in 0..g.batch {
            for c in g.out_channels..ys.padded_channels() {
                for oy in 0..g.out_h {
                    for ox in 0..g.out_w {
                        assert_eq!(y[ys.index(n, c, oy, ox)], 0.0, "padding channel {c} of {g:?}");
                    }
                }
            }
        }
        let mut out = vec![0.0; g.batch * g.out_image()];
        from_blocked(y, ys, &mut out);
        out
    }

    /// bf16 products (`Transformed::Bf16`) on odd shapes and every 3x3 stride-1 convolution
    /// of ResNet-20, with and without moment records, against the f64 definition: within
    /// bf16's rounding (relative to the largest output), the same output with moments,
    /// and the moments those of the stored output. On a CPU without AVX512_BF16 the products take the naive twin.
    #[test]
    fn bf16_products_stay_within_bf16_rounding_of_the_definition() {
        let mut rng = Rng::new(41);
        let mut shapes = vec![geometry(2, 19, 21, 7, 9), geometry(1, 32, 16, 5, 12)];
        shapes.extend(
            zoo_convs("resnet20", 2, 32)
                .into_iter()
                .map(|(g, _)| g)
                .filter(|g| g.kernel_h == 3 && g.stride == 1),
        );
        for g in &shapes {
            for tile in TILES {
                let l = bf16::LANES;
                let (x, w, xb) = case(&mut rng, g, l);
                let want: Vec<f32> = conv_f64(g, &x, &w).iter().map(|&v| v as f32).collect();
                let mut u = vec![0.0; filters_len(tile, g.in_channels, g.out_channels, l)];
                transform_filters(&w, None, g.in_channels, g.out_channels, tile, l, &mut u);
                let ocb = g.out_channels.div_ceil(l);
                let cp = g.in_channels.next_multiple_of(l);
                let mut u16s = vec![0u16; u.len()];
                bf16::pack_filters(&u, tile.alpha() * tile.alpha(), ocb, cp, &mut u16s);
                let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, l);
                let ep = BlockedEpilogue::default();
                let mut y = vec![f32::NAN; ys.len()];
                winograd_conv_with::<wide::f32x16>(g, tile, &xb, Transformed::Bf16(&u16s), &ep, &mut y);
                let err = max_rel_err(&unblock(g, &y, l), &want);
                // Measured: F(2x2) 0.3-0.5 % of the largest output, F(4x4) 5-9 % (its output
                // transform's coefficients, up to 8, magnify bf16's rounding of U and V):
                // why plans give bf16 products to F(2x2) only.
                let limit = match tile {
                    WinogradTile::F2 => 1e-2,
                    WinogradTile::F4 => 0.15,
                };
                assert!(err < limit, "{tile:?} {g:?}: bf16 error {err}");
                let mut y2 = vec![f32::NAN; ys.len()];
                let (mut mean, mut var) = (vec![0f64; ys.padded_channels()], vec![0f64; ys.padded_channels()]);
                let moments = Moments {
                    partials: &mut Vec::new(),
                    mean: &mut mean,
                    var: &mut var,
                };
                let gather = Gather::Moments(moments);
                winograd_conv_gather::<wide::f32x16>(g, tile, &xb, Transformed::Bf16(&u16s), &ep, &mut y2, gather);
                assert_eq!(
                    y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    y2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
                let stored = unblock(g, &y2, l);
                let per = g.out_h * g.out_w;
                for k in 0..g.out_channels {
                    let vals: Vec<f64> = (0..g.batch)
                        .flat_map(|n| {
                            stored[(n * g.out_channels + k) * per..][..per]
                                .iter()
                                .map(|&v| v as f64)
                        })
                        .collect();
                    let mu = vals.iter().sum::<f64>() / vals.len() as f64;
                    assert!(
                        (mean[k] - mu).abs() <= 1e-5 * (1.0 + mu.abs()),
                        "mean {} vs {mu}",
                        mean[k]
                    );
                }
            }
        }
    }

    /// Max relative errors (naive, fast) against the whole f64 reference.
    fn check_full<V: Vector>(rng: &mut Rng, g: &ConvGeometry, tile: WinogradTile) -> (f32, f32) {
        let l = V::LANES;
        let (x, w, xb) = case(rng, g, l);
        let want: Vec<f32> = conv_f64(g, &x, &w).iter().map(|&v| v as f32).collect();
        let en = max_rel_err(&unblock(g, &naive(g, tile, &xb, &w, l), l), &want);
        let ef = max_rel_err(
            &unblock(g, &fast::<V>(g, tile, &xb, &w, &BlockedEpilogue::default()), l),
            &want,
        );
        assert!(
            en < tolerance(tile) && ef < tolerance(tile),
            "{tile:?} {g:?} at {l} lanes: naive {en:e}, fast {ef:e}"
        );
        (en, ef)
    }

    #[test]
    fn matches_the_definition_on_resnet20_convs() {
        let mut rng = Rng::new(1);
        for (g, names) in zoo_convs("resnet20", 2, 32) {
            if g.kernel_h != 3 || g.stride != 1 {
                continue;
            }
            for tile in TILES {
                let (en, ef) = check_full::<F32xBlock>(&mut rng, &g, tile);
                println!("resnet20 {} {tile:?}: naive {en:.2e}, fast {ef:.2e}", names[0]);
            }
        }
    }

    /// A few hundred outputs of image 0 of `g` (the image's corners among them) and their
    /// f64 values: for layers whose whole f64 definition would take too long.
    struct Sampled {
        ys: Blocked,
        points: Vec<(usize, usize, usize)>,
        want: Vec<f32>,
    }

    impl Sampled {
        fn new(rng: &mut Rng, g: &ConvGeometry, x: &[f32], w: &[f32], block: usize) -> Sampled {
            let corners = [(0, 0), (g.out_h - 1, g.out_w - 1), (0, g.out_w - 1), (g.out_h - 1, 0)];
            let points: Vec<(usize, usize, usize)> = (0..300)
                .map(|i| {
                    let (oy, ox) = corners
                        .get(i)
                        .copied()
                        .unwrap_or_else(|| (rng.below(g.out_h), rng.below(g.out_w)));
                    (rng.below(g.out_channels), oy, ox)
                })
                .collect();
            let want = points
                .iter()
                .map(|&(k, oy, ox)| conv_value_f64(g, x, w, 0, k, oy, ox) as f32)
                .collect();
            let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, block);
            Sampled { ys, points, want }
        }

        /// The largest relative error of the blocked output `y` at the sampled outputs.
        fn err(&self, y: &[f32]) -> f32 {
            let got: Vec<f32> = self
                .points
                .iter()
                .map(|&(k, oy, ox)| y[self.ys.index(0, k, oy, ox)])
                .collect();
            max_rel_err(&got, &self.want)
        }
    }

    #[test]
    fn matches_the_definition_on_resnet50_convs() {
        let mut rng = Rng::new(2);
        let l = F32xBlock::LANES;
        for (g, names) in zoo_convs("resnet50", 1, 224) {
            if g.kernel_h != 3 || g.stride != 1 {
                continue;
            }
            let (x, w, xb) = case(&mut rng, &g, l);
            let sampled = Sampled::new(&mut rng, &g, &x, &w, l);
            for tile in TILES {
                let en = sampled.err(&naive(&g, tile, &xb, &w, l));
                let ef = sampled.err(&fast::<F32xBlock>(&g, tile, &xb, &w, &BlockedEpilogue::default()));
                println!("resnet50 {} {tile:?}: naive {en:.2e}, fast {ef:.2e}", names[0]);
                assert!(
                    en < tolerance(tile) && ef < tolerance(tile),
                    "{tile:?} {g:?}: naive {en:e}, fast {ef:e}"
                );
            }
        }
    }

    /// Activations too large for L2, whose transforms prefetch tile by tile (with ragged
    /// edge tiles): the forward against the f64 definition, and the gradient sums' output
    /// transform (which also prefetches the residual and `z`) against the stored output.
    #[test]
    fn streamed_activations_match_the_definition() {
        let mut rng = Rng::new(4);
        let l = F32xBlock::LANES;
        let g = geometry(9, 32, 32, 31, 30);
        let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, l);
        let xs = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, l);
        assert!(streamed(xs.len()) == crate::simd::HAS_PREFETCH && streamed(ys.len()) == streamed(xs.len()));
        for tile in TILES {
            check_full::<F32xBlock>(&mut rng, &g, tile);
            let (_, wt, xb) = case(&mut rng, &g, l);
            let residual = random(&mut rng, ys.len());
            let ep = BlockedEpilogue {
                residual: Residual::From(&residual),
                ..BlockedEpilogue::default()
            };
            let kp = ys.padded_channels();
            let (z, mean) = (random(&mut rng, ys.len()), random(&mut rng, kp));
            let mut u = vec![0.0; filters_len(tile, g.in_channels, g.out_channels, l)];
            transform_filters(&wt, None, g.in_channels, g.out_channels, tile, l, &mut u);
            let mut y = vec![f32::NAN; ys.len()];
            let (mut sum_dy, mut sum_dy_zc) = (vec![f64::NAN; kp], vec![f64::NAN; kp]);
            let gather = Gather::GradSums(moments::GradSums {
                z: &z,
                mean: &mean,
                relu: None,
                partials: &mut Vec::new(),
                sum_dy: &mut sum_dy,
                sum_dy_zc: &mut sum_dy_zc,
            });
            winograd_conv_gather::<F32xBlock>(&g, tile, &xb, Transformed::F32(&u), &ep, &mut y, gather);
            let mut plain = vec![f32::NAN; ys.len()];
            winograd_conv::<F32xBlock>(&g, tile, &xb, &u, &ep, &mut plain);
            let what = format!("{tile:?} {g:?}");
            assert!(y == plain, "{what}: the output is winograd_conv's");
            moments::assert_grad_sums::<F32xBlock>(ys, &y, (&z, &mean, None), (&sum_dy, &sum_dy_zc), &what);
        }
    }

    #[test]
    fn matches_the_definition_on_odd_shapes_at_every_block() {
        let mut rng = Rng::new(3);
        let mut worst = [[0f32; 2]; 2];
        let shapes = [
            (1, 3, 5, 1, 1),
            (2, 5, 3, 2, 3),
            (3, 19, 33, 5, 7),
            (1, 33, 19, 9, 9),
            (2, 33, 5, 13, 6),
            (1, 19, 3, 6, 13),
            (3, 3, 19, 9, 5),
        ];
        for (n, c, k, h, w) in shapes {
            let g = geometry(n, c, k, h, w);
            for (ti, tile) in TILES.into_iter().enumerate() {
                for (en, ef) in [
                    check_full::<wide::f32x4>(&mut rng, &g, tile),
                    check_full::<wide::f32x8>(&mut rng, &g, tile),
                    check_full::<wide::f32x16>(&mut rng, &g, tile),
                ] {
                    worst[ti][0] = worst[ti][0].max(en);
                    worst[ti][1] = worst[ti][1].max(ef);
                }
            }
        }
        for (ti, tile) in TILES.into_iter().enumerate() {
            println!(
                "odd shapes {tile:?}: naive {:.2e}, fast {:.2e}",
                worst[ti][0], worst[ti][1]
            );
        }
    }

    /// The backward-data filters made from the forward's weights in place are bit for bit
    /// those of the explicitly flipped and transposed weights.
    #[test]
    fn flipped_filters_are_the_filters_of_the_flipped_weights() {
        let mut rng = Rng::new(12);
        for (c, k) in [(16, 16), (19, 5), (3, 33)] {
            let w = random(&mut rng, k * c * 9);
            let mut flipped = vec![0.0; w.len()];
            for o in 0..k {
                for i in 0..c {
                    for t in 0..9 {
                        flipped[(i * k + o) * 9 + 8 - t] = w[(o * c + i) * 9 + t];
                    }
                }
            }
            for block in [4, 8, 16, 5] {
                for tile in TILES {
                    let mut want = vec![f32::NAN; filters_len(tile, k, c, block)];
                    transform_filters(&flipped, None, k, c, tile, block, &mut want);
                    let mut got = vec![f32::NAN; want.len()];
                    transform_flipped_filters(&w, c, k, tile, block, &mut got);
                    assert!(got == want, "{c} -> {k}, block {block}, {tile:?}");
                }
            }
        }
    }

    /// The gradient sums gathered by the output transform (a backward-data's, for the
    /// batch norm whose output gradient it stores), with and without that batch norm's
    /// ReLU and with a residual in the epilogue, against the batch norm's own pass over
    /// the stored output: several tile groups, channel blocks and ragged edges.
    #[test]
    fn gradient_sums_match_the_stored_output() {
        fn run<V: Vector>(rng: &mut Rng) {
            let l = V::LANES;
            for (n, c, k, h, w) in [(3, 19, 21, 7, 10), (8, 16, 33, 12, 12), (1, 5, 3, 2, 3)] {
                let g = geometry(n, c, k, h, w);
                let (_, wt, xb) = case(rng, &g, l);
                let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, l);
                let kp = ys.padded_channels();
                let residual = random(rng, ys.len());
                let ep = BlockedEpilogue {
                    residual: Residual::From(&residual),
                    ..BlockedEpilogue::default()
                };
                let z = random(rng, ys.len());
                let (mean, scale, shift) = (random(rng, kp), random(rng, kp), random(rng, kp));
                for tile in TILES {
                    let mut u = vec![0.0; filters_len(tile, c, k, l)];
                    transform_filters(&wt, None, c, k, tile, l, &mut u);
                    let mut plain = vec![f32::NAN; ys.len()];
                    winograd_conv::<V>(&g, tile, &xb, &u, &ep, &mut plain);
                    for relu in [
                        None,
                        Some(FusedRelu {
                            scale: &scale,
                            shift: &shift,
                        }),
                    ] {
                        let mut y = vec![f32::NAN; ys.len()];
                        let (mut sum_dy, mut sum_dy_zc) = (vec![f64::NAN; kp], vec![f64::NAN; kp]);
                        let gather = Gather::GradSums(moments::GradSums {
                            z: &z,
                            mean: &mean,
                            relu,
                            partials: &mut Vec::new(),
                            sum_dy: &mut sum_dy,
                            sum_dy_zc: &mut sum_dy_zc,
                        });
                        winograd_conv_gather::<V>(&g, tile, &xb, Transformed::F32(&u), &ep, &mut y, gather);
                        let what = format!("{tile:?} {g:?} at {l} lanes, ReLU {}", relu.is_some());
                        assert!(y == plain, "{what}: the output is winograd_conv's");
                        let sums = (&sum_dy[..], &sum_dy_zc[..]);
                        moments::assert_grad_sums::<V>(ys, &y, (&z, &mean, relu), sums, &what);
                    }
                }
            }
        }
        let mut rng = Rng::new(31);
        run::<wide::f32x4>(&mut rng);
        run::<wide::f32x8>(&mut rng);
        run::<wide::f32x16>(&mut rng);
    }

    /// The fused moments against the f64 moments of the stored output (which is bit for
    /// bit what `winograd_conv` stores), with a bias far from zero so that an unshifted
    /// sum of squares would lose the variance; several tile groups and channel blocks.
    #[test]
    fn moments_match_the_stored_output() {
        fn run<V: Vector>(rng: &mut Rng) {
            let l = V::LANES;
            for (n, c, k, h, w) in [(3, 19, 21, 7, 10), (8, 16, 33, 12, 12), (1, 5, 3, 2, 3)] {
                let g = geometry(n, c, k, h, w);
                let (_, wt, xb) = case(rng, &g, l);
                let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, l);
                let kp = ys.padded_channels();
                let bias: Vec<f32> = (0..kp).map(|i| if i < k { 1000.0 + i as f32 } else { 0.0 }).collect();
                let ep = BlockedEpilogue {
                    bias: Some(&bias),
                    ..BlockedEpilogue::default()
                };
                for tile in TILES {
                    let mut u = vec![0.0; filters_len(tile, c, k, l)];
                    transform_filters(&wt, None, c, k, tile, l, &mut u);
                    let mut plain = vec![f32::NAN; ys.len()];
                    winograd_conv::<V>(&g, tile, &xb, &u, &ep, &mut plain);
                    let mut y = vec![f32::NAN; ys.len()];
                    let (mut mean, mut var) = (vec![f64::NAN; kp], vec![f64::NAN; kp]);
                    let moments = Moments {
                        partials: &mut Vec::new(),
                        mean: &mut mean,
                        var: &mut var,
                    };
                    let gather = Gather::Moments(moments);
                    winograd_conv_gather::<V>(&g, tile, &xb, Transformed::F32(&u), &ep, &mut y, gather);
                    assert!(y == plain, "{tile:?} {g:?}: the output is winograd_conv's");
                    let count = (n * h * w) as f64;
                    for ch in 0..kp {
                        let values: Vec<f64> = (0..n)
                            .flat_map(|i| (0..h).flat_map(move |yy| (0..w).map(move |xx| (i, yy, xx))))
                            .map(|(i, yy, xx)| y[ys.index(i, ch, yy, xx)] as f64)
                            .collect();
                        let mu = values.iter().sum::<f64>() / count;
                        let v = values.iter().map(|x| (x - mu) * (x - mu)).sum::<f64>() / count;
                        let what = format!("{tile:?} {g:?} at {l} lanes, channel {ch}");
                        assert!(
                            (mean[ch] - mu).abs() <= 1e-6 * v.sqrt().max(1e-3),
                            "{what}: mean {} vs {mu}",
                            mean[ch]
                        );
                        assert!(
                            (var[ch] - v).abs() <= 1e-4 * v.max(1e-3),
                            "{what}: var {} vs {v}",
                            var[ch]
                        );
                    }
                }
            }
        }
        let mut rng = Rng::new(11);
        run::<wide::f32x4>(&mut rng);
        run::<wide::f32x8>(&mut rng);
        run::<wide::f32x16>(&mut rng);
    }

    /// Bias, residual (separate and in place) and ReLU, with a folded scale, against the
    /// f64 reference finished by the scalar epilogue; a NaN in the residual propagates.
    #[test]
    fn applies_the_epilogue() {
        fn run<V: Vector>(rng: &mut Rng) {
            let l = V::LANES;
            let g = geometry(2, 19, 21, 7, 10);
            let (x, w, xb) = case(rng, &g, l);
            let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, l);
            let kp = ys.padded_channels();
            let scale: Vec<f32> = (0..g.out_channels).map(|i| 0.5 + i as f32 / 16.0).collect();
            let mut bias = random(rng, kp);
            bias[g.out_channels..].fill(0.0);
            let mut res = vec![0.0; ys.len()];
            to_blocked(&random(rng, g.batch * g.out_image()), ys, &mut res);
            let nan_at = ys.index(1, 3, 4, 5);
            res[nan_at] = f32::NAN;
            // A ReLU's output for the fused ReLU backward: zero, positive or NaN (which
            // passes no gradient); never zero at the residual's NaN, so that it shows.
            let relu_out: Vec<f32> = (0..ys.len())
                .map(|i| match i % 3 {
                    _ if i == nan_at => 1.0,
                    0 => 0.0,
                    1 => 0.5 + (i % 7) as f32,
                    _ => f32::NAN,
                })
                .collect();
            // The reference: the scaled weights' f64 convolution, blocked, then the epilogue.
            let ws: Vec<f32> = w
                .iter()
                .enumerate()
                .map(|(i, &v)| v * scale[i / (g.in_channels * 9)])
                .collect();
            let conv: Vec<f32> = conv_f64(&g, &x, &ws).iter().map(|&v| v as f32).collect();
            let mut conv_b = vec![0.0; ys.len()];
            to_blocked(&conv, ys, &mut conv_b);
            for tile in TILES {
                let mut u = vec![0.0; filters_len(tile, g.in_channels, g.out_channels, l)];
                transform_filters(&w, Some(&scale), g.in_channels, g.out_channels, tile, l, &mut u);
                for (with_bias, residual, relu, masked) in [
                    (true, 0, false, false),
                    (false, 1, false, false),
                    (true, 2, true, false),
                    (false, 0, true, false),
                    (false, 1, false, true),
                ] {
                    let ep = BlockedEpilogue {
                        bias: with_bias.then_some(&bias[..]),
                        residual: match residual {
                            0 => Residual::None,
                            1 => Residual::From(&res),
                            _ => Residual::InPlace,
                        },
                        relu,
                        relu_output: masked.then_some(&relu_out[..]),
                    };
                    let start = if residual == 2 {
                        res.clone()
                    } else {
                        vec![f32::NAN; ys.len()]
                    };
                    let want: Vec<f32> = (0..ys.len())
                        .map(|i| ep.apply_scalar(conv_b[i], channel_of(ys, i), i, start[i]))
                        .collect();
                    let mut fast_y = start.clone();
                    winograd_conv::<V>(&g, tile, &xb, &u, &ep, &mut fast_y);
                    let mut naive_y = start.clone();
                    winograd_conv_naive(&g, tile, &xb, &w, Some(&scale), l, &ep, &mut naive_y);
                    for (name, mut y) in [("fast", fast_y), ("naive", naive_y)] {
                        let mut want = want.clone();
                        if residual > 0 {
                            assert!(y[nan_at].is_nan(), "{name} {tile:?}: the residual's NaN propagates");
                            y[nan_at] = 0.0;
                            want[nan_at] = 0.0;
                        }
                        if relu {
                            assert!(y.iter().all(|&v| v >= 0.0), "{name} {tile:?}: relu clamps");
                        }
                        let e = max_rel_err(&y, &want);
                        println!("epilogue {name} {tile:?} bias {with_bias} residual {residual} relu {relu} masked {masked} at {l} lanes: {e:.2e}");
                        if masked {
                            for (i, &v) in y.iter().enumerate() {
                                if relu_out[i].is_nan() || relu_out[i] <= 0.0 {
                                    assert_eq!(v, 0.0, "{name} {tile:?}: masked at {i}");
                                }
                            }
                        }
                        assert!(e < tolerance(tile), "{name} {tile:?}: {e:e}");
                        for n in 0..g.batch {
                            for c in g.out_channels..kp {
                                assert_eq!(y[ys.index(n, c, 0, 0)], 0.0, "{name}: padding channels stay zero");
                            }
                        }
                    }
                }
            }
        }
        fn channel_of(ys: Blocked, i: usize) -> usize {
            let l = ys.block;
            (i / ys.plane_len()) % ys.blocks() * l + i % l
        }
        let mut rng = Rng::new(4);
        run::<wide::f32x4>(&mut rng);
        run::<wide::f32x16>(&mut rng);
    }

    /// The three-phase schedule stores what the grouped schedule stores, bit for bit,
    /// with every epilogue, at every lane width and thread count, and within the tile's
    /// tolerance of the f64 convolution.
    #[test]
    fn three_phases_match_the_grouped_schedule() {
        /// The output of one schedule (`three`) on `threads` threads, NaN-filled first so
        /// that an unwritten value shows.
        fn run<V: Vector>(
            g: &ConvGeometry,
            (tile, u): (WinogradTile, &[f32]),
            xb: &[f32],
            ep: &BlockedEpilogue,
            threads: usize,
            three: bool,
        ) -> Vec<f32> {
            let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, V::LANES);
            let mut y = vec![f32::NAN; ys.len()];
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                checked_conv::<V>(
                    g,
                    Scheme::Stride1(tile),
                    xb,
                    Transformed::F32(u),
                    ep,
                    &mut y,
                    None,
                    Some(three),
                )
            });
            y
        }
        fn check<V: Vector>(rng: &mut Rng) {
            let l = V::LANES;
            // Several tile groups (batch 4 of 16x16), channel parts (one small image),
            // ragged tiles and blocks, ResNet-50's layer4 at batch 2.
            let shapes = [
                geometry(4, 16, 24, 16, 16),
                geometry(1, 33, 70, 6, 7),
                geometry(3, 19, 21, 7, 10),
                geometry(2, 512, 512, 7, 7),
            ];
            for g in &shapes {
                let (x, w, xb) = case(rng, g, l);
                let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, l);
                let bias: Vec<f32> = random(rng, ys.padded_channels());
                let residual: Vec<f32> = random(rng, ys.len());
                let ep = BlockedEpilogue {
                    bias: Some(&bias),
                    residual: Residual::From(&residual),
                    relu: true,
                    ..BlockedEpilogue::default()
                };
                for tile in TILES {
                    let mut u = vec![0.0; filters_len(tile, g.in_channels, g.out_channels, l)];
                    transform_filters(&w, None, g.in_channels, g.out_channels, tile, l, &mut u);
                    for threads in [1, 2, 3] {
                        let grouped = run::<V>(g, (tile, &u), &xb, &ep, threads, false);
                        let three = run::<V>(g, (tile, &u), &xb, &ep, threads, true);
                        let bits = |y: &[f32]| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        assert!(
                            bits(&three) == bits(&grouped),
                            "{tile:?} {g:?} at {l} lanes on {threads} threads: the three phases differ"
                        );
                    }
                    // And the values are the convolution's: the f64 reference, finished by
                    // the same epilogue.
                    let y = run::<V>(g, (tile, &u), &xb, &BlockedEpilogue::default(), 2, true);
                    let want: Vec<f32> = conv_f64(g, &x, &w).iter().map(|&v| v as f32).collect();
                    let err = max_rel_err(&unblock(g, &y, l), &want);
                    assert!(err < tolerance(tile), "{tile:?} {g:?} at {l} lanes: error {err:e}");
                }
            }
        }
        let mut rng = Rng::new(23);
        check::<wide::f32x4>(&mut rng);
        check::<wide::f32x8>(&mut rng);
        check::<wide::f32x16>(&mut rng);
    }

    /// The three-phase schedule gathers the grouped schedule's moments: the records are
    /// cut into the same tasks.
    #[test]
    fn three_phases_gather_the_grouped_moments() {
        let mut rng = Rng::new(29);
        let l = F32xBlock::LANES;
        for g in [geometry(4, 16, 24, 16, 16), geometry(1, 33, 70, 6, 7)] {
            let (_, w, xb) = case(&mut rng, &g, l);
            let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, l);
            let kp = ys.padded_channels();
            for tile in TILES {
                let mut u = vec![0.0; filters_len(tile, g.in_channels, g.out_channels, l)];
                transform_filters(&w, None, g.in_channels, g.out_channels, tile, l, &mut u);
                let gathered = |three: bool| {
                    let mut y = vec![f32::NAN; ys.len()];
                    let (mut mean, mut var) = (vec![f64::NAN; kp], vec![f64::NAN; kp]);
                    let gather = Gather::Moments(Moments {
                        partials: &mut Vec::new(),
                        mean: &mut mean,
                        var: &mut var,
                    });
                    let ep = BlockedEpilogue::default();
                    gather_tuned::<F32xBlock>(&g, tile, &xb, Transformed::F32(&u), &ep, &mut y, gather, Some(three));
                    (y, mean, var)
                };
                let (grouped, three) = (gathered(false), gathered(true));
                assert!(grouped.0 == three.0, "{tile:?} {g:?}: outputs differ");
                assert!(
                    grouped.1 == three.1 && grouped.2 == three.2,
                    "{tile:?} {g:?}: moments differ"
                );
                assert!(three.1.iter().chain(&three.2).all(|v| v.is_finite()));
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let mut rng = Rng::new(5);
        for g in [
            geometry(1, 64, 64, 14, 14),
            geometry(3, 32, 48, 16, 16),
            geometry(1, 128, 128, 7, 7),
        ] {
            let (_, w, xb) = case(&mut rng, &g, F32xBlock::LANES);
            for tile in TILES {
                let run = |threads: usize| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    pool.install(|| fast::<F32xBlock>(&g, tile, &xb, &w, &BlockedEpilogue::default()))
                };
                let one = run(1);
                assert!(one.iter().all(|v| v.is_finite()));
                for threads in [2, 3, 5] {
                    assert_eq!(run(threads), one, "{tile:?} {g:?} on {threads} threads");
                }
            }
        }
    }

    /// The stride-2 decomposition is about as accurate as F(2x2): its even phase is
    /// F(2,2) or F(4,2), whose interpolation points are F(2x2)'s and at most one more.
    const S2_TOLERANCE: f32 = 1e-5;

    fn geometry_s2(n: usize, c: usize, k: usize, h: usize, w: usize) -> ConvGeometry {
        ConvGeometry::new(n, c, h, w, k, (3, 3), 2, 1).unwrap()
    }

    /// The stride-2 kernel at vector `V`, from the OIHW weights (times `scale`), into
    /// `start` (NaN-filled unless it holds an in-place residual), on the grouped or
    /// three-phase schedule as `three` says.
    #[allow(clippy::too_many_arguments)]
    fn fast_s2<V: Vector>(
        g: &ConvGeometry,
        tile: WinogradTile,
        xb: &[f32],
        w: &[f32],
        scale: Option<&[f32]>,
        ep: &BlockedEpilogue,
        start: Vec<f32>,
        three: Option<bool>,
    ) -> Vec<f32> {
        let l = V::LANES;
        let mut u = vec![0.0; filters_len(tile, g.in_channels, g.out_channels, l)];
        transform_filters_s2(w, scale, g.in_channels, g.out_channels, tile, l, &mut u);
        let mut y = start;
        checked_conv::<V>(
            g,
            Scheme::Stride2(tile),
            xb,
            Transformed::F32(&u),
            ep,
            &mut y,
            None,
            three,
        );
        y
    }

    /// The fast and naive stride-2 kernels at `V` against the f64 definition, every
    /// output; returns their largest relative errors.
    fn check_s2<V: Vector>(rng: &mut Rng, g: &ConvGeometry, tile: WinogradTile) -> (f32, f32) {
        let l = V::LANES;
        let (x, w, xb) = case(rng, g, l);
        let want: Vec<f32> = conv_f64(g, &x, &w).iter().map(|&v| v as f32).collect();
        let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, l);
        let ep = BlockedEpilogue::default();
        let mut naive_y = vec![f32::NAN; ys.len()];
        winograd_s2_conv_naive(g, tile, &xb, &w, None, l, &ep, &mut naive_y);
        let fast_y = fast_s2::<V>(g, tile, &xb, &w, None, &ep, vec![f32::NAN; ys.len()], None);
        let en = max_rel_err(&unblock(g, &naive_y, l), &want);
        let ef = max_rel_err(&unblock(g, &fast_y, l), &want);
        assert!(
            en < S2_TOLERANCE && ef < S2_TOLERANCE,
            "stride 2 {tile:?} {g:?} at {l} lanes: naive {en:e}, fast {ef:e}"
        );
        (en, ef)
    }

    #[test]
    fn stride_2_matches_the_definition_on_resnet_convs() {
        let mut rng = Rng::new(11);
        for (net, batch, size) in [("resnet20", 2, 32), ("resnet18", 1, 64), ("resnet50", 1, 64)] {
            for (g, names) in zoo_convs(net, batch, size) {
                if g.kernel_h != 3 || g.stride != 2 {
                    continue;
                }
                for tile in TILES {
                    let (en, ef) = check_s2::<F32xBlock>(&mut rng, &g, tile);
                    println!("{net} {} stride 2 {tile:?}: naive {en:.2e}, fast {ef:.2e}", names[0]);
                }
            }
        }
    }

    /// ResNet-50's strided 3x3 layers at 224x224, checked at a few hundred outputs (the
    /// corners among them): the whole f64 definition would take too long.
    #[test]
    fn stride_2_matches_the_definition_on_resnet50_at_224() {
        let mut rng = Rng::new(12);
        let l = F32xBlock::LANES;
        for (g, names) in zoo_convs("resnet50", 1, 224) {
            if g.kernel_h != 3 || g.stride != 2 {
                continue;
            }
            let (x, w, xb) = case(&mut rng, &g, l);
            let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, l);
            let sampled = Sampled::new(&mut rng, &g, &x, &w, l);
            let ep = BlockedEpilogue::default();
            for tile in TILES {
                let mut naive_y = vec![f32::NAN; ys.len()];
                winograd_s2_conv_naive(&g, tile, &xb, &w, None, l, &ep, &mut naive_y);
                let fast_y = fast_s2::<F32xBlock>(&g, tile, &xb, &w, None, &ep, vec![f32::NAN; ys.len()], None);
                let (en, ef) = (sampled.err(&naive_y), sampled.err(&fast_y));
                println!("resnet50 {} stride 2 {tile:?}: naive {en:.2e}, fast {ef:.2e}", names[0]);
                assert!(
                    en < S2_TOLERANCE && ef < S2_TOLERANCE,
                    "{tile:?} {g:?}: naive {en:e}, fast {ef:e}"
                );
            }
        }
    }

    /// Odd and even input sizes (the last tile ragged or whole, inputs of 1 to 3 pixels),
    /// channel counts off the block, at 4, 8 and 16 lanes.
    #[test]
    fn stride_2_matches_the_definition_on_odd_shapes_at_every_block() {
        let mut rng = Rng::new(13);
        let shapes = [
            (1, 3, 5, 1, 1),
            (2, 5, 3, 2, 3),
            (1, 17, 20, 3, 2),
            (3, 19, 33, 9, 8),
            (1, 33, 19, 17, 18),
            (2, 33, 5, 16, 11),
            (1, 19, 3, 7, 25),
        ];
        for (n, c, k, h, w) in shapes {
            let g = geometry_s2(n, c, k, h, w);
            for tile in TILES {
                check_s2::<wide::f32x4>(&mut rng, &g, tile);
                check_s2::<wide::f32x8>(&mut rng, &g, tile);
                check_s2::<wide::f32x16>(&mut rng, &g, tile);
            }
        }
    }

    /// The stride-2 kernel's epilogue (folded scale, bias, residual from a tensor or in
    /// place, ReLU) on both schedules, against the naive twin with the same epilogue and
    /// against the f64 convolution followed by the epilogue; the two schedules store the
    /// same values bit for bit.
    #[test]
    fn stride_2_applies_the_epilogue_on_both_schedules() {
        fn run<V: Vector>(rng: &mut Rng) {
            let l = V::LANES;
            let g = geometry_s2(2, 19, 21, 13, 10);
            let (x, w, xb) = case(rng, &g, l);
            let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, l);
            let kp = ys.padded_channels();
            let scale: Vec<f32> = (0..g.out_channels).map(|i| 0.5 + i as f32 / 16.0).collect();
            let mut bias = random(rng, kp);
            bias[g.out_channels..].fill(0.0);
            let mut res = vec![0.0; ys.len()];
            to_blocked(&random(rng, g.batch * g.out_image()), ys, &mut res);
            let ws: Vec<f32> = w
                .iter()
                .enumerate()
                .map(|(i, &v)| v * scale[i / (g.in_channels * 9)])
                .collect();
            let conv: Vec<f32> = conv_f64(&g, &x, &ws).iter().map(|&v| v as f32).collect();
            let mut conv_b = vec![0.0; ys.len()];
            to_blocked(&conv, ys, &mut conv_b);
            let channel_of = |i: usize| (i / ys.plane_len()) % ys.blocks() * l + i % l;
            for (with_bias, residual, relu) in [(true, 0, false), (false, 1, true), (true, 2, true)] {
                let ep = BlockedEpilogue {
                    bias: with_bias.then_some(&bias[..]),
                    residual: match residual {
                        0 => Residual::None,
                        1 => Residual::From(&res),
                        _ => Residual::InPlace,
                    },
                    relu,
                    relu_output: None,
                };
                let start = if residual == 2 {
                    res.clone()
                } else {
                    vec![f32::NAN; ys.len()]
                };
                let want: Vec<f32> = (0..ys.len())
                    .map(|i| ep.apply_scalar(conv_b[i], channel_of(i), i, start[i]))
                    .collect();
                for tile in TILES {
                    let grouped = fast_s2::<V>(&g, tile, &xb, &w, Some(&scale), &ep, start.clone(), Some(false));
                    let three = fast_s2::<V>(&g, tile, &xb, &w, Some(&scale), &ep, start.clone(), Some(true));
                    assert!(grouped == three, "the schedules agree at {l} lanes");
                    let mut naive_y = start.clone();
                    winograd_s2_conv_naive(&g, tile, &xb, &w, Some(&scale), l, &ep, &mut naive_y);
                    for (name, y) in [("fast", grouped), ("naive", naive_y)] {
                        let e = max_rel_err(&y, &want);
                        assert!(
                            e < S2_TOLERANCE,
                            "{name} {tile:?} bias {with_bias} residual {residual} relu {relu}: {e:e}"
                        );
                        if relu {
                            assert!(y.iter().all(|&v| v >= 0.0), "{name}: relu clamps");
                        }
                        for n in 0..g.batch {
                            for c in g.out_channels..kp {
                                assert_eq!(y[ys.index(n, c, 0, 0)], 0.0, "{name}: padding channels stay zero");
                            }
                        }
                    }
                }
            }
        }
        let mut rng = Rng::new(14);
        run::<wide::f32x4>(&mut rng);
        run::<wide::f32x16>(&mut rng);
    }
}
