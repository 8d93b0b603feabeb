//! Register-blocked direct convolution on the channel-blocked layout (NCHWc), the kernel
//! ONNX Runtime's MLAS (`SconvKernelAvx512F.S`: 4 filter blocks x up to 6 output pixels)
//! and oneDNN (`jit_avx512_common_conv_kernel.cpp`) run for most convolutions: no im2col
//! copy, each output vector accumulated in a register over every input channel and tap,
//! and the epilogue (bias, residual, ReLU) applied before the one store.
//!
//! # The register tile
//! One tile is `NOC` output-channel blocks x `NPX` output pixels of accumulators
//! (`NOC * NPX` vectors). For each input channel `ci` of each tap `(ky, kx)` it loads the
//! `NOC` weight vectors (one lane per output channel), broadcasts the `NPX` input scalars,
//! and does `NOC * NPX` fused multiply-adds: per FMA, about `1/NPX` vector loads and
//! `1/NOC` broadcasts, so the loop is bound by the FMA pipes and not by loads.
//!
//! # Borders
//! A tile whose pixels lie in one output row and read only columns inside the input (the
//! interior) takes the fast path: input addresses are one base plus constant offsets, and
//! the padding rows are skipped by clipping the `ky` range once per tile. Any other tile
//! (touching the left or right padding, spanning two rows, a ragged end) computes one
//! input pointer per pixel and tap, pointing at a block of zeros where the tap falls into
//! the padding; that costs a few scalar instructions per tap, which run beside the
//! `in_block * NOC * NPX` FMAs of the tap. With one input channel per tap (the stems)
//! they outweigh the FMAs, and most tiles of a strided 1x1 convolution cross a row end:
//! such calls (where measured to pay) run on a copy of their input whose tiles are all
//! interior ([`resample`]).
//!
//! # Large weights
//! A group whose packed weights exceed [`SLAB_BYTES`] (ResNet-50's 256- and 512-channel
//! 3x3 layers, its 2048-input 1x1 layers) runs its reduction in input-channel chunks:
//! every tile of a task's segment runs one chunk (its weights in L2) before any runs the
//! next, partial sums kept in the output; and each pass prefetches the next pass's
//! weights into L2. Inside a network at batch 1 these weights come from memory, so
//! without this every pixel tile streamed the whole slab through L2 again.
//!
//! # API
//! - [`packed_len`] / [`pack_weights`]: OIHW weights (optionally times a folded batch
//!   norm's per-channel scale) reordered once into the layout the tiles read:
//!   `[group][icb][ky][kx][ci][ocb in group][co]`, where the output-channel blocks are cut
//!   into groups of at most [`max_tile_blocks`] (the tile's `NOC`), so that the `NOC`
//!   weight vectors of one `(ci, tap)` are contiguous; padding channels are zero.
//! - [`direct_conv`]: `out = epilogue(conv(input, w))`, input in blocks of `in_block`
//!   (`V::LANES`, or 1 for plain NCHW as the 3-channel stem reads it), output in blocks of
//!   `V::LANES`. Threads split (image, output-channel group, output rows) with
//!   [`split`], so batch 1 fills every core (a single image whose input outweighs its
//!   weights by bands of rows, see `split_by_rows`); every output vector is computed by
//!   one task in a fixed order, so results do not depend on the thread count.
//! - [`direct_conv_gather`]: the same, also gathering the sums a training batch norm needs
//!   of what it stores (the moments of a forward output, the gradient sums of a
//!   backward-data's), each task reading its finished rows back from cache.
//! - [`direct_conv_naive`]: the scalar twin from the unpacked weights, for the tests.
//!
//! # Measured (`examples/direct_bench.rs`, one Zen 5 core, FMA peak about 250 GFLOP/s)
//! ResNet-50 batch 1: 204-257 GFLOP/s per convolution, 232 over all its convolutions
//! (about 93 %); ResNet-20's 32- and 64-channel stages 218-243, its 16-channel stage
//! (one output block, so one broadcast per FMA) 150-170, the 3-channel stems 65-70.
//! Border tiles cost little: running every tile through the border path measured the
//! same within noise, except 12 % slower on the one-block tiles. On two cores ResNet-50
//! batch 1 runs at 470 GFLOP/s and ResNet-20 batch 128 at 376 (about 2x one core);
//! ResNet-20 batch 1 convolutions (10-30 us each) hardly gain from the second thread.

use crate::kernels::blocked::epilogue::{BlockedEpilogue, Residual};
use crate::kernels::blocked::moments::{Gather, TaskGather};
use crate::kernels::blocked::prefetch::{Prefetch, Slices, Step, PF_LINE};
use crate::kernels::blocked::resample;
use crate::kernels::conv::split_regions;
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::shared_out::SharedOut;
use crate::kernels::split;
use crate::layout::Blocked;
use crate::simd::Vector;
use rayon::prelude::*;
use std::ops::Range;

/// The most output-channel blocks of one register tile for an output block of
/// `out_block` lanes. With 16 lanes (AVX-512: 32 vector registers) 4 blocks x 6 pixels =
/// 24 accumulators + 4 weights + 1 broadcast fit, MLAS's AVX-512 tile; with 8 or 4
/// lanes (AVX2 and wasm engines: 16 registers) 2 blocks x 6 pixels = 12 accumulators + 2
/// weights + 1 broadcast (+ 1 temporary where there is no FMA) fit.
pub const fn max_tile_blocks(out_block: usize) -> usize {
    if out_block >= 16 {
        4
    } else {
        2
    }
}

/// Pixels of the register tile of `noc` output-channel blocks: as many as leave room for
/// the weights and the broadcast (see [`max_tile_blocks`]), except that no tile has more
/// than 12, so that the per-pixel input pointers of a border tile stay in general
/// registers. With 16 lanes a 1-block tile has 8 pixels: measured against 12 and 24 on
/// the 16-channel ResNet-20 stage, 24 was 20 % slower (its border tiles spill their 24
/// pointers) and 8 about 2 % faster than 12 (more tiles fit inside a 32-pixel row); 8
/// accumulators still cover the latency of two FMA pipes.
pub(crate) const fn tile_pixels(noc: usize, out_block: usize) -> usize {
    match (out_block >= 16, noc) {
        (true, 4) => 6,
        (true, 3) => 8,
        (true, 2) => 12,
        (true, _) => 8,
        (false, 2) => 6,
        (false, _) => 12,
    }
}

/// Number of output-channel groups: blocks cut into groups of at most
/// [`max_tile_blocks`], as evenly as [`split::ranges`] cuts them (5 blocks: 2 + 3).
pub(crate) fn group_count(ocb: usize, out_block: usize) -> usize {
    ocb.div_ceil(max_tile_blocks(out_block)).max(1)
}

/// The output-channel blocks of group `i` of [`group_count`].
pub(crate) fn group(i: usize, ocb: usize, out_block: usize) -> Range<usize> {
    split::range(ocb, group_count(ocb, out_block), i).expect("group index below group_count")
}

/// Packed weight floats of one output-channel block: `icb * kh * kw * in_block * out_block`.
pub(crate) fn per_block(g: &ConvGeometry, in_block: usize, out_block: usize) -> usize {
    g.in_channels.div_ceil(in_block) * g.kernel_h * g.kernel_w * in_block * out_block
}

/// Length of the packed weights of `g` for input blocks of `in_block` channels and output
/// blocks of `out_block` (both padded with zeros to whole blocks).
pub fn packed_len(g: &ConvGeometry, in_block: usize, out_block: usize) -> usize {
    g.out_channels.div_ceil(out_block) * per_block(g, in_block, out_block)
}

/// Packs OIHW weights (PyTorch's layout), each output channel `k` multiplied by
/// `scale[k]` when given (a folded batch norm), into `out` (of [`packed_len`]) in the
/// layout [`direct_conv`] reads: `[group][icb][ky][kx][ci][ocb in group][co]`, zero-padded.
/// Training repacks every step, so the (group, input block) regions are packed in
/// parallel, each reading its output channels' taps in order.
pub fn pack_weights(
    weight: &[f32],
    scale: Option<&[f32]>,
    g: &ConvGeometry,
    in_block: usize,
    out_block: usize,
    out: &mut [f32],
) {
    let (c, k, kk) = (g.in_channels, g.out_channels, g.kernel_h * g.kernel_w);
    assert_eq!(weight.len(), k * c * kk, "pack_weights: weight length");
    assert_eq!(
        out.len(),
        packed_len(g, in_block, out_block),
        "pack_weights: packed length"
    );
    if let Some(s) = scale {
        assert!(s.len() >= k, "pack_weights: one scale per output channel");
    }
    let (icbs, ocbs) = (c.div_ceil(in_block), k.div_ceil(out_block));
    let groups = group_count(ocbs, out_block);
    // One region per (group, input-channel block): its taps x input channels x the
    // group's output channels.
    let region = |gi: usize| kk * in_block * group(gi, ocbs, out_block).len() * out_block;
    let sizes = (0..groups).flat_map(|gi| std::iter::repeat_n(region(gi), icbs));
    split_regions(out, sizes)
        .into_par_iter()
        .enumerate()
        .for_each(|(ri, dst)| {
            let (blocks, ic0) = (group(ri / icbs, ocbs, out_block), ri % icbs * in_block);
            let (nb, ics) = (blocks.len(), c.saturating_sub(ic0).min(in_block));
            dst.fill(0.0);
            for j in 0..nb {
                for co in 0..out_block {
                    let oc = (blocks.start + j) * out_block + co;
                    if oc >= k {
                        break;
                    }
                    let s = scale.map_or(1.0, |s| s[oc]);
                    let src = &weight[(oc * c + ic0) * kk..(oc * c + ic0 + ics) * kk];
                    for (ci, taps) in src.chunks_exact(kk).enumerate() {
                        for (tap, &v) in taps.iter().enumerate() {
                            dst[((tap * in_block + ci) * nb + j) * out_block + co] = v * s;
                        }
                    }
                }
            }
        });
}

/// Group slabs from which [`direct_conv`] prefetches the next pass's weights (the next
/// input-channel chunk, or the next group's first) into L2 while a pass runs, a few
/// lines after each tap, so that reading them from memory overlaps the FMAs instead of
/// stalling the first tile of the next pass. Measured in place (ResNet-50 b1, loaded
/// machine, ms): layer4.x.conv2 direct 1.42 chunked alone, 1.18-1.20 with the prefetch;
/// layer3.x.conv2 direct 1.04 to 0.95; the 1x1 layers unchanged within noise.
const PREFETCH_MIN_BYTES: usize = 64 << 10;

/// A block of zeros that border tiles point at for taps in the padding (16 floats: the
/// widest input block).
pub(crate) static ZEROS: [f32; 16] = [0.0; 16];

/// Everything a tile needs, computed once per call.
struct Ctx<'a, 'e> {
    g: ConvGeometry,
    input: &'a [f32],
    packed: &'a [f32],
    in_l: Blocked,
    out_l: Blocked,
    ep: &'a BlockedEpilogue<'e>,
    out: &'a SharedOut<'a>,
    /// Packed floats per output-channel block.
    per_block: usize,
    /// Weight bytes of one group above which its input channels are cut into chunks
    /// ([`SLAB_BYTES`] outside the tests).
    slab_bytes: usize,
}

/// What a pass over a range of input-channel blocks does with the output (see
/// [`SLAB_BYTES`]): `Full` is the whole reduction in one pass; a chunked reduction runs
/// `First` (bias and residual added to its partial sums, stored unfinished), any number
/// of `Mid` (partial sums loaded from the output and stored back), then `Last` (loaded,
/// ReLU, stored). The in-place residual is thus read once, by `First`, before anything
/// overwrites it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Full,
    First,
    Mid,
    Last,
}

impl Phase {
    /// The phase of chunk `i` of `n`.
    fn of(i: usize, n: usize) -> Phase {
        match (i == 0, i + 1 == n) {
            (true, true) => Phase::Full,
            (true, false) => Phase::First,
            (false, false) => Phase::Mid,
            (false, true) => Phase::Last,
        }
    }
}

/// Packed weight bytes of one output-channel group (its slab: every input channel and
/// tap) above which [`direct_conv`] cuts the reduction over input channels into chunks
/// of at most this size, as MLAS and oneDNN block their NCHWc kernels over input
/// channels: each chunk's weights are read from memory once, then from L2 by every pixel
/// tile of the task's segment, instead of the whole slab streaming through (and out of)
/// the 1 MB L2 once per tile. Partial sums go to the output (see `Phase`), a few KB per
/// segment at the sizes that chunk. Small slabs (ResNet's 16- to 128-channel 3x3 layers,
/// most 1x1 layers) keep the single pass.
pub const SLAB_BYTES: usize = 256 << 10;

/// `y = epilogue(conv(x, w))` for NCHWc `input` (`Blocked { g.batch, g.in_channels, g.in_h,
/// g.in_w, in_block }`, `in_block` = `V::LANES`, or 1 for plain NCHW) and weights `packed`
/// by [`pack_weights`] with `(in_block, V::LANES)`, into `out` (`Blocked { g.batch,
/// g.out_channels, g.out_h, g.out_w, V::LANES }`). Padding channels of the output come out
/// zero given a zero-padded bias and residual. Any stride, padding and kernel size.
pub fn direct_conv<V: Vector>(
    g: &ConvGeometry,
    input: &[f32],
    in_block: usize,
    packed: &[f32],
    ep: &BlockedEpilogue,
    out: &mut [f32],
) {
    direct_conv_tuned::<V>(g, input, in_block, packed, ep, out, Knobs::RULES, None);
}

/// [`direct_conv`], and the sums a training batch norm needs of what it stored, in f64
/// (`gather`: the moments of every padded output channel, or the gradient sums of a
/// batch norm whose output gradient this convolution computes): each task reads back
/// each run of output rows it has just finished, from cache, instead of a separate pass
/// reading the whole output from memory (see `kernels::blocked::moments`). The output is
/// bit for bit [`direct_conv`]'s; the sums depend only on the thread count.
pub fn direct_conv_gather<V: Vector>(
    g: &ConvGeometry,
    input: &[f32],
    in_block: usize,
    packed: &[f32],
    ep: &BlockedEpilogue,
    out: &mut [f32],
    gather: Gather,
) {
    direct_conv_tuned::<V>(g, input, in_block, packed, ep, out, Knobs::RULES, Some(gather));
}

/// How [`direct_conv_tuned`] runs a call: the plan's rules ([`Knobs::RULES`]), or
/// another weight-slab budget, subsampling or padding choice, so that the tests reach
/// every path on small shapes.
#[derive(Clone, Copy, Debug)]
struct Knobs {
    /// Weight bytes of a group above which its reduction runs in chunks ([`SLAB_BYTES`]).
    slab_bytes: usize,
    /// Whether a strided 1x1 convolution subsamples its input first: `None` as the
    /// rule of [`resample::strided_as_pointwise`] says.
    subsample: Option<bool>,
    /// Whether a padded convolution of NCHW input (a stem) runs on a zero-padded copy:
    /// `None` as the rule of [`resample::stem_as_unpadded`] says.
    pad_nchw: Option<bool>,
}

impl Knobs {
    const RULES: Knobs = Knobs {
        slab_bytes: SLAB_BYTES,
        subsample: None,
        pad_nchw: None,
    };
}

/// [`direct_conv`] as `knobs` say, and the sums of [`direct_conv_gather`] when given.
#[allow(clippy::too_many_arguments)]
fn direct_conv_tuned<V: Vector>(
    g: &ConvGeometry,
    input: &[f32],
    in_block: usize,
    packed: &[f32],
    ep: &BlockedEpilogue,
    out: &mut [f32],
    knobs: Knobs,
    gather: Option<Gather>,
) {
    let ob = V::LANES;
    assert!(
        in_block == 1 || in_block == ob,
        "direct_conv: in_block must be 1 or V::LANES"
    );
    assert!(ob <= ZEROS.len(), "direct_conv: vectors of at most 16 lanes");
    let in_l = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, in_block);
    let out_l = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, ob);
    assert_eq!(input.len(), in_l.len(), "direct_conv: input length");
    assert_eq!(out.len(), out_l.len(), "direct_conv: output length");
    assert_eq!(
        packed.len(),
        packed_len(g, in_block, ob),
        "direct_conv: packed weights length"
    );
    if let Some(b) = ep.bias {
        assert!(
            b.len() >= out_l.padded_channels(),
            "direct_conv: bias per padded channel"
        );
    }
    if let Some(r) = ep.residual.separate() {
        assert_eq!(r.len(), out_l.len(), "direct_conv: residual length");
    }
    if let Some(pointwise) = resample::strided_as_pointwise(g, in_block, ob, knobs.subsample) {
        return resample::on_subsampled::<V, _>(g, in_l, input, |sub| {
            direct_conv_tuned::<V>(&pointwise, sub, in_block, packed, ep, out, knobs, gather)
        });
    }
    if let Some(unpadded) = resample::stem_as_unpadded(g, in_block, knobs.pad_nchw) {
        return resample::on_padded(g, in_l, input, |padded| {
            direct_conv_tuned::<V>(&unpadded, padded, in_block, packed, ep, out, knobs, gather)
        });
    }
    let groups = group_count(out_l.blocks(), ob);
    let by_rows = split_by_rows(g, in_block, groups, split::parts(g.out_h));
    let (units, tasks) = if by_rows {
        (g.out_h, split::parts(g.out_h))
    } else {
        let units = g.batch * groups * g.out_h;
        (units, split::parts(units))
    };
    let records = gather.map(|m| TaskGather::new(m, tasks, out_l.padded_channels(), out_l.len()));
    if out.is_empty() {
        return;
    }
    let shared = SharedOut::new(out);
    let ctx = Ctx {
        g: *g,
        input,
        packed,
        in_l,
        out_l,
        ep,
        out: &shared,
        per_block: per_block(g, in_block, ob),
        slab_bytes: knobs.slab_bytes,
    };
    // Output rows `rows` of image `n` for the blocks of group `gi`, then (with a gather)
    // those rows read back into task `t`'s record.
    let run = |t: usize, n: usize, gi: usize, rows: Range<usize>| {
        let blocks = group(gi, out_l.blocks(), ob);
        let pixels = rows.start * g.out_w..rows.end * g.out_w;
        if in_block == 1 {
            segment_any::<V, false>(&ctx, n, blocks.clone(), pixels.clone());
        } else {
            segment_any::<V, true>(&ctx, n, blocks.clone(), pixels.clone());
        }
        if let Some(records) = &records {
            for b in blocks {
                records.add_run::<V>(t, &shared, out_l.at(n, b, rows.start, 0), pixels.len(), b);
            }
        }
    };
    // A gather adds each segment to its task's record, in order: no sharing.
    let share = records.is_none();
    if by_rows {
        // A band of output rows of the one image, every group over it in turn.
        let band = |t: usize| split::range(units, tasks, t).unwrap_or(0..0);
        split::for_each_step(tasks, share, |_| groups, |t, gi| run(t, 0, gi, band(t)));
    } else {
        // Units are (image, group, output row), rows fastest: one (image, group) at a time.
        split::for_each_segment(units, g.out_h, share, |t, rows| {
            let (oy, rest) = (rows.start % g.out_h, rows.start / g.out_h);
            run(t, rest / groups, rest % groups, oy..oy + rows.len());
        });
    }
    if let Some(records) = records {
        records.finish();
    }
}

/// Whether a single image's convolution is split over `tasks` bands of output rows, each
/// task running every output-channel group over its band, rather than over (group, rows)
/// units with the groups outermost. Split by groups, every task reads the whole input and
/// its share of the weights; split by rows, its share of the input and every weight. The
/// input was just written by the previous layer's tasks, much of it by the other core,
/// so it costs more to read than weights streaming from memory: rows are chosen when four
/// times the input outweighs the weights, and when there are at least 4 rows per task
/// (7 rows on 2 threads would split 4 + 3).
///
/// Measured inside ResNet-50 on 2 threads of an Intel Xeon (2 MB of L2 per core), the
/// rules alternating call by call in one process, medians of 40 calls: at batch 1, whole
/// call 42.0 ms by groups against 41.0 / 39.1 / 38.9 ms by rows where the input weighs
/// 1 / 2 / 4 times the weights, and in later minutes 35.4 / 33.5 / 34.4 / 34.4 ms for
/// 2 / 4 / 8 / 32 times and 39.5 / 38.9 / 39.4 ms for 2 / 4 / 8 (the 1024->256 1x1
/// layers 0.74-0.83 -> 0.57-0.61 ms, layer2's 512->128 0.64-0.71 -> 0.52-0.54); at batch
/// 8, whose first stages run one image at a time, 282 -> 264 ms.
fn split_by_rows(g: &ConvGeometry, in_block: usize, groups: usize, tasks: usize) -> bool {
    let input = g.in_h * g.in_w * g.in_channels.div_ceil(in_block) * in_block;
    let weights = per_block(g, in_block, 1) * g.out_channels;
    g.batch == 1 && groups > 1 && tasks > 1 && g.out_h >= 4 * tasks && 4 * input > weights
}

/// Runs the output pixels `pixels` (flattened `oy * out_w + ox`) of image `n` for the
/// output-channel blocks `blocks` on the tile of `blocks.len()` blocks.
///
/// When the group's weight slab exceeds `c.slab_bytes`, the input-channel blocks are cut
/// into chunks whose slabs fit it, and every tile of the segment runs one chunk before
/// any tile runs the next (see [`SLAB_BYTES`]).
fn segment_any<V: Vector, const BLOCKED: bool>(c: &Ctx, n: usize, blocks: Range<usize>, pixels: Range<usize>) {
    let icbs = c.in_l.blocks();
    let slab = blocks.len() * c.per_block * std::mem::size_of::<f32>();
    let chunks = if BLOCKED {
        slab.div_ceil(c.slab_bytes.max(1)).clamp(1, icbs.max(1))
    } else {
        1
    };
    // Packed floats of one input-channel block of the group (every tap).
    let per_icb = c.per_block / icbs.max(1) * blocks.len();
    let group_start = blocks.start * c.per_block;
    for (i, chunk) in split::ranges(icbs, chunks).enumerate() {
        let phase = Phase::of(i, chunks);
        // The weights of the next pass (the next chunk, or the next group's first one),
        // prefetched into L2 while this pass runs.
        let next = if !BLOCKED || slab < PREFETCH_MIN_BYTES {
            0..0
        } else if let Some(nc) = split::range(icbs, chunks, i + 1) {
            group_start + nc.start * per_icb..group_start + nc.end * per_icb
        } else {
            let at = group_start + icbs * per_icb;
            at..(at + chunk.len() * per_icb).min(c.packed.len())
        };
        let wide = V::LANES >= 16;
        let (b0, px, k) = (blocks.start, pixels.clone(), (chunk.clone(), phase));
        match blocks.len() {
            4 if wide => segment::<V, BLOCKED, 4, 6>(c, n, b0, px, k, next),
            3 if wide => segment::<V, BLOCKED, 3, 8>(c, n, b0, px, k, next),
            2 if wide => segment::<V, BLOCKED, 2, 12>(c, n, b0, px, k, next),
            2 => segment::<V, BLOCKED, 2, 6>(c, n, b0, px, k, next),
            1 if wide => segment::<V, BLOCKED, 1, 8>(c, n, b0, px, k, next),
            1 => segment::<V, BLOCKED, 1, 12>(c, n, b0, px, k, next),
            b => unreachable!("a group of {b} blocks"),
        }
    }
}

/// Tiles the pixels `pixels` of image `n` for the `NOC` blocks from `ocb0` with tiles of
/// `NPX` pixels, summing over the input-channel blocks `icbs` as `phase` says; the ragged
/// end runs on a narrower tile.
fn segment<V: Vector, const BLOCKED: bool, const NOC: usize, const NPX: usize>(
    c: &Ctx,
    n: usize,
    ocb0: usize,
    pixels: Range<usize>,
    k: (Range<usize>, Phase),
    next: Range<usize>,
) {
    debug_assert_eq!(NPX, tile_pixels(NOC, V::LANES));
    let g = &c.g;
    // The prefetch of `next` (packed floats), cut evenly over the segment's tiles and
    // within each tile over its taps.
    assert!(next.end <= c.packed.len());
    let taps = k.0.len() * g.kernel_h * g.kernel_w;
    let slices = Slices::new(c.packed, next, pixels.len().div_ceil(NPX), taps);
    let mut tile_i = 0;
    let mut pf = || {
        tile_i += 1;
        slices.call(tile_i - 1)
    };
    let (s, pad) = (g.stride, g.pad as isize);
    // A 1x1 stride-1 unpadded convolution reads input pixel i for output pixel i: every
    // tile is contiguous, even across rows.
    let pointwise = g.kernel_h == 1 && g.kernel_w == 1 && s == 1 && g.pad == 0;
    let mut p0 = pixels.start;
    while p0 + NPX <= pixels.end {
        let (oy, ox) = (p0 / g.out_w, p0 % g.out_w);
        let ix0 = (ox * s) as isize - pad;
        let last = ((ox + NPX - 1) * s + g.kernel_w - 1) as isize - pad;
        if pointwise {
            tile_fast::<V, BLOCKED, NOC, NPX, 1>(c, n, ocb0, p0, 0, p0, k.clone(), pf());
        } else if ox + NPX <= g.out_w && ix0 >= 0 && last < g.in_w as isize && s <= 2 {
            let iy0 = (oy * s) as isize - pad;
            if s == 1 {
                tile_fast::<V, BLOCKED, NOC, NPX, 1>(c, n, ocb0, p0, iy0, ix0 as usize, k.clone(), pf());
            } else {
                tile_fast::<V, BLOCKED, NOC, NPX, 2>(c, n, ocb0, p0, iy0, ix0 as usize, k.clone(), pf());
            }
        } else {
            tile_border::<V, BLOCKED, NOC, NPX>(c, n, ocb0, p0, NPX, k.clone(), pf());
        }
        p0 += NPX;
    }
    // The ragged end (fewer than NPX pixels) runs on the smallest of a few tile widths
    // that holds it, its unused pixels reading the zero block: one tile rather than a
    // run of single-pixel ones, and 4 widths per block count rather than NPX - 1.
    let left = pixels.end - p0;
    match left {
        0 => {}
        1 => tile_border::<V, BLOCKED, NOC, 1>(c, n, ocb0, p0, 1, k, pf()),
        2 => tile_border::<V, BLOCKED, NOC, 2>(c, n, ocb0, p0, 2, k, pf()),
        3 | 4 => tile_border::<V, BLOCKED, NOC, 4>(c, n, ocb0, p0, left, k, pf()),
        5 | 6 => tile_border::<V, BLOCKED, NOC, 6>(c, n, ocb0, p0, left, k, pf()),
        _ => tile_border::<V, BLOCKED, NOC, NPX>(c, n, ocb0, p0, left, k, pf()),
    }
}

/// The inner product of one tap: for each of the `ib` input channels, `NOC` weight
/// vectors from `w` (`[ci][j][lane]`) times the broadcast input scalar of each pixel
/// (`src[p] + ci`), into `acc`.
///
/// # Safety
/// `w .. w + ib * NOC * V::LANES` and every `src[p] .. src[p] + ib` lie inside live
/// allocations of `f32`s.
#[inline(always)]
pub(crate) unsafe fn tap<V: Vector, const NOC: usize, const NPX: usize>(
    acc: &mut [[V; NPX]; NOC],
    w: *const f32,
    src: &[*const f32; NPX],
    ib: usize,
) {
    // The sums live in a copy whose address never escapes: summing into `acc` itself,
    // whose address the caller's tile exposes, made LLVM store all NOC * NPX
    // accumulators back to the stack after every input channel (the raw-pointer loads
    // below might have read them), one store per FMA.
    let mut sums = *acc;
    for ci in 0..ib {
        // SAFETY: `(ci * NOC + j + 1) * LANES <= ib * NOC * LANES`, inside `w`'s range.
        let wv: [V; NOC] = core::array::from_fn(|j| unsafe { V::load_at(w, (ci * NOC + j) * V::LANES) });
        for p in 0..NPX {
            // SAFETY: `ci < ib`, inside `src[p]`'s range.
            let x = V::splat(unsafe { *src[p].add(ci) });
            for j in 0..NOC {
                sums[j][p] = wv[j].mul_add(x, sums[j][p]);
            }
        }
    }
    *acc = sums;
}

/// Finishes and stores the tile's accumulators: pixels `p0 .. p0 + count` of image `n`,
/// blocks `ocb0 .. ocb0 + NOC`.
/// In `phase`, finishing a pass (see [`Phase`]): a pass that resumes adds the partial
/// sums in the output here, at the store, rather than starting its accumulators from
/// them (loaded before the loop, they kept the accumulators out of registers: spilled
/// to the stack, 2.5x slower).
#[inline(always)]
fn store_tile<V: Vector, const NOC: usize, const NPX: usize>(
    c: &Ctx,
    acc: &[[V; NPX]; NOC],
    n: usize,
    ocb0: usize,
    p0: usize,
    count: usize,
    phase: Phase,
) {
    if phase == Phase::Full && count == NPX && c.ep.relu_output.is_none() {
        match (c.ep.residual, c.ep.relu) {
            (Residual::None, false) => return store_full::<V, NOC, NPX, false, false>(c, acc, n, ocb0, p0),
            (Residual::None, true) => return store_full::<V, NOC, NPX, false, true>(c, acc, n, ocb0, p0),
            (Residual::InPlace, false) => return store_full::<V, NOC, NPX, true, false>(c, acc, n, ocb0, p0),
            (Residual::InPlace, true) => return store_full::<V, NOC, NPX, true, true>(c, acc, n, ocb0, p0),
            (Residual::From(_), _) => {}
        }
    }
    for (j, row) in acc.iter().enumerate() {
        let bias = c.ep.bias_of::<V>(ocb0 + j);
        let base = c.out_l.at(n, ocb0 + j, 0, 0) + p0 * V::LANES;
        for (p, &v) in row.iter().enumerate().take(count) {
            let at = base + p * V::LANES;
            match phase {
                Phase::Full => {
                    c.ep.store(v, bias, at, c.out);
                }
                Phase::First => c.ep.store_partial(v, bias, at, c.out),
                Phase::Mid => c.out.store(at, v + c.out.load::<V>(at)),
                Phase::Last => c.ep.store_final(v + c.out.load::<V>(at), at, c.out),
            }
        }
    }
}

/// [`store_tile`] of a whole tile (`NPX` pixels) finishing a single-pass reduction, for
/// the epilogues of inference (bias, the output's own values added when `IN_PLACE`, ReLU
/// when `RELU`),
/// chosen once per tile rather than per vector, with one bounds check per block: at 64
/// input channels (ResNet-50's 64->256 expansions) the per-vector epilogue was about
/// an eighth of the tile's time. Stores what [`BlockedEpilogue::store`] stores. Not
/// inlined: inlined, its four variants cost the tiles' inner loops registers (3x3
/// layers 10-20 % slower).
#[inline(never)]
fn store_full<V: Vector, const NOC: usize, const NPX: usize, const IN_PLACE: bool, const RELU: bool>(
    c: &Ctx,
    acc: &[[V; NPX]; NOC],
    n: usize,
    ocb0: usize,
    p0: usize,
) {
    for (j, row) in acc.iter().enumerate() {
        let bias = c.ep.bias_of::<V>(ocb0 + j);
        let base = c.out_l.at(n, ocb0 + j, 0, 0) + p0 * V::LANES;
        assert!(
            base + NPX * V::LANES <= c.out.len(),
            "direct_conv: tile outside the output"
        );
        let at = c.out.ptr_at(base);
        for (p, &v) in row.iter().enumerate() {
            // SAFETY: `base + (p + 1) * LANES <= len` (asserted above), and only this task
            // reads or writes these elements (`SharedOut`).
            unsafe {
                let mut v = v + bias;
                if IN_PLACE {
                    v = v + V::load_at(at, p * V::LANES);
                }
                if RELU {
                    v = v.relu();
                }
                v.store_at(at, p * V::LANES);
            }
        }
    }
}

/// An interior tile: `NPX` output pixels from flattened `p0` whose input pixel at tap
/// `(ky, kx)` is at row `iy0 + ky`, column `ix0 + kx + p * S` (all columns inside the
/// input; rows outside it are skipped).
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn tile_fast<V: Vector, const BLOCKED: bool, const NOC: usize, const NPX: usize, const S: usize>(
    c: &Ctx,
    n: usize,
    ocb0: usize,
    p0: usize,
    iy0: isize,
    ix0: usize,
    (icbs, phase): (Range<usize>, Phase),
    mut pf: Prefetch,
) {
    let g = &c.g;
    let ib = if BLOCKED { V::LANES } else { 1 };
    let (kh, kw, h, w) = (g.kernel_h, g.kernel_w, g.in_h as isize, g.in_w);
    let ky_lo = (-iy0).clamp(0, kh as isize) as usize;
    let ky_hi = (h - iy0).clamp(ky_lo as isize, kh as isize) as usize;
    let tap_len = ib * NOC * V::LANES;
    let wgroup = ocb0 * c.per_block;
    assert!(wgroup + c.in_l.blocks() * kh * kw * tap_len <= c.packed.len());
    // Input reads: image n, any block, rows iy0 + ky for ky in ky_lo..ky_hi (inside the
    // image), columns ix0 .. ix0 + (NPX - 1) * S + kw (checked by the caller), `ib` floats each.
    assert!(
        ky_lo == ky_hi
            || ((iy0 + ky_hi as isize - 1) as usize * w + ix0 + (NPX - 1) * S + kw) * ib <= c.in_l.plane_len()
    );
    assert!(n < g.batch && icbs.end <= c.in_l.blocks());
    let mut acc = [[V::ZERO; NPX]; NOC];
    // A pointwise tile reads NPX consecutive pixels of every input-channel block, one
    // stream per block: with hundreds of input channels, more streams than the hardware
    // prefetcher follows, so each block prefetches the next tile's pixels into L2. In
    // ResNet-50 b8 (with and without, alternating call by call in one process) the 1x1
    // layers took 4-6 % less time, those of 1024 and 2048 inputs 8-19 %; whole builds
    // alternating process by process ran b8 in 276 against 283 ms and b1, whose inputs
    // stay in L2, in 33.9 against 37.1 ms.
    let prefetch_input = crate::simd::HAS_PREFETCH && BLOCKED && S == 1 && kh == 1 && kw == 1;
    for icb in icbs {
        let plane = c.in_l.at(n, icb, 0, 0);
        for ky in ky_lo..ky_hi {
            let row = plane + ((iy0 + ky as isize) as usize * w + ix0) * ib;
            let wrow = wgroup + (icb * kh + ky) * kw * tap_len;
            for kx in 0..kw {
                // SAFETY: the asserts above bound every input offset by the image's
                // planes and every weight offset by the group's packed weights.
                unsafe {
                    let base = c.input.as_ptr().add(row + kx * ib);
                    let src: [*const f32; NPX] = core::array::from_fn(|p| base.add(p * S * ib));
                    tap::<V, NOC, NPX>(&mut acc, c.packed.as_ptr().add(wrow + kx * tap_len), &src, ib);
                }
                pf.step();
            }
            if prefetch_input {
                let next = c.input.as_ptr().wrapping_add(row + NPX * ib);
                for line in 0..(NPX * ib).div_ceil(PF_LINE) {
                    crate::simd::prefetch_l2(next.wrapping_add(line * PF_LINE));
                }
            }
        }
    }
    store_tile(c, &acc, n, ocb0, p0, NPX, phase);
}

/// Any tile: `count <= NPX` output pixels from flattened `p0`, each tap's input pointer
/// computed per pixel (the zero block where the tap falls into the padding, and for the
/// unused pixels past `count`).
#[inline(never)]
fn tile_border<V: Vector, const BLOCKED: bool, const NOC: usize, const NPX: usize>(
    c: &Ctx,
    n: usize,
    ocb0: usize,
    p0: usize,
    count: usize,
    (icbs, phase): (Range<usize>, Phase),
    mut pf: Prefetch,
) {
    let g = &c.g;
    let ib = if BLOCKED { V::LANES } else { 1 };
    let (kh, kw) = (g.kernel_h, g.kernel_w);
    let (h, w) = (g.in_h as isize, g.in_w as isize);
    let (s, pad) = (g.stride as isize, g.pad as isize);
    // Pixels past `count` sit far outside the input, so every tap reads zeros.
    let far = -(isize::MAX / 4);
    let mut iy0 = [far; NPX];
    let mut ix0 = [far; NPX];
    for p in 0..count.min(NPX) {
        let pix = p0 + p;
        iy0[p] = (pix / g.out_w) as isize * s - pad;
        ix0[p] = (pix % g.out_w) as isize * s - pad;
    }
    // Only taps that some pixel reads inside the input.
    let (ylo, yhi) = (
        iy0[..count].iter().max().copied().unwrap_or(far),
        iy0[..count].iter().min().copied().unwrap_or(far),
    );
    let (xlo, xhi) = (
        ix0[..count].iter().max().copied().unwrap_or(far),
        ix0[..count].iter().min().copied().unwrap_or(far),
    );
    let ky_lo = (-ylo).clamp(0, kh as isize) as usize;
    let ky_hi = (h - yhi).clamp(ky_lo as isize, kh as isize) as usize;
    let kx_lo = (-xlo).clamp(0, kw as isize) as usize;
    let kx_hi = (w - xhi).clamp(kx_lo as isize, kw as isize) as usize;
    let tap_len = ib * NOC * V::LANES;
    let wgroup = ocb0 * c.per_block;
    assert!(wgroup + c.in_l.blocks() * kh * kw * tap_len <= c.packed.len());
    assert!(n < g.batch && ib <= ZEROS.len() && icbs.end <= c.in_l.blocks());
    let input = c.input.as_ptr();
    let mut acc = [[V::ZERO; NPX]; NOC];
    for icb in icbs {
        let plane = c.in_l.at(n, icb, 0, 0);
        for ky in ky_lo..ky_hi {
            let wrow = wgroup + (icb * kh + ky) * kw * tap_len;
            for kx in kx_lo..kx_hi {
                let src: [*const f32; NPX] = core::array::from_fn(|p| {
                    let (iy, ix) = (iy0[p] + ky as isize, ix0[p] + kx as isize);
                    if (iy as usize) < h as usize && (ix as usize) < w as usize {
                        // SAFETY: (iy, ix) is a pixel of image n: `ib` floats inside the input.
                        unsafe { input.add(plane + (iy as usize * w as usize + ix as usize) * ib) }
                    } else {
                        ZEROS.as_ptr()
                    }
                });
                // SAFETY: every `src[p]` has `ib <= 16` readable floats; the weights are
                // bounded by the assert above.
                unsafe { tap::<V, NOC, NPX>(&mut acc, c.packed.as_ptr().add(wrow + kx * tap_len), &src, ib) };
                pf.step();
            }
        }
    }
    store_tile(c, &acc, n, ocb0, p0, count, phase);
}

/// The scalar twin of [`direct_conv`] from the unpacked OIHW `weight` (times `scale[k]`
/// per output channel when given): same input and epilogue, output in blocks of
/// `out_block`, plain loops, one thread. It sums each output channel's plane one weight
/// at a time (a different order from the tiles), so that the tests can afford it on
/// ResNet-50's shapes.
#[allow(clippy::too_many_arguments)]
pub fn direct_conv_naive(
    g: &ConvGeometry,
    input: &[f32],
    in_block: usize,
    weight: &[f32],
    scale: Option<&[f32]>,
    out_block: usize,
    ep: &BlockedEpilogue,
    out: &mut [f32],
) {
    let in_l = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, in_block);
    let out_l = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, out_block);
    assert_eq!(input.len(), in_l.len(), "direct_conv_naive: input length");
    assert_eq!(out.len(), out_l.len(), "direct_conv_naive: output length");
    assert_eq!(
        weight.len(),
        g.out_channels * g.col_rows(),
        "direct_conv_naive: weight length"
    );
    let (ow, pad) = (g.out_w, g.pad as isize);
    let mut acc = vec![0.0f32; g.out_plane()];
    for n in 0..g.batch {
        for k in 0..out_l.padded_channels() {
            acc.fill(0.0);
            for c in 0..if k < g.out_channels { g.in_channels } else { 0 } {
                let plane = in_l.index(n, c, 0, 0);
                for ky in 0..g.kernel_h {
                    for kx in 0..g.kernel_w {
                        let wv = weight[((k * g.in_channels + c) * g.kernel_h + ky) * g.kernel_w + kx];
                        for oy in 0..g.out_h {
                            let iy = (oy * g.stride + ky) as isize - pad;
                            if iy < 0 || iy >= g.in_h as isize {
                                continue;
                            }
                            for ox in 0..ow {
                                let ix = (ox * g.stride + kx) as isize - pad;
                                if ix < 0 || ix >= g.in_w as isize {
                                    continue;
                                }
                                let xv = input[plane + (iy as usize * g.in_w + ix as usize) * in_block];
                                acc[oy * ow + ox] += xv * wv;
                            }
                        }
                    }
                }
            }
            let s = if k < g.out_channels {
                scale.map_or(1.0, |s| s[k])
            } else {
                0.0
            };
            for oy in 0..g.out_h {
                for ox in 0..ow {
                    let at = out_l.index(n, k, oy, ox);
                    out[at] = ep.apply_scalar(acc[oy * ow + ox] * s, k, at, out[at]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::blocked::moments::{assert_grad_sums, GradSums, Moments};
    use crate::kernels::blocked::norm::FusedRelu;
    use crate::kernels::blocked::Residual;
    use crate::kernels::test_util::{
        conv_f64, conv_value_f64, max_rel_err, random, square_conv, strided_1x1_shapes, zoo_convs,
    };
    use crate::layout::to_blocked;
    use crate::rng::Rng;
    use crate::simd::F32xBlock;
    use wide::{f32x16, f32x4, f32x8};

    /// Which epilogue a check runs.
    #[derive(Clone, Copy, Debug)]
    struct Epi {
        bias: bool,
        /// 0: none, 1: `Residual::From`, 2: `Residual::InPlace`.
        residual: u8,
        relu: bool,
        scale: bool,
    }

    const PLAIN: Epi = Epi {
        bias: false,
        residual: 0,
        relu: false,
        scale: false,
    };
    const EPIS: [Epi; 4] = [
        PLAIN,
        Epi {
            bias: true,
            residual: 0,
            relu: true,
            scale: true,
        },
        Epi {
            bias: true,
            residual: 1,
            relu: false,
            scale: false,
        },
        Epi {
            bias: false,
            residual: 2,
            relu: true,
            scale: true,
        },
    ];

    /// A random problem for `g`: NCHW input, OIHW weights, and the epilogue's operands
    /// in the blocked output layout of `out_block` (padding channels zero).
    struct Problem {
        x: Vec<f32>,
        w: Vec<f32>,
        scale: Option<Vec<f32>>,
        bias: Option<Vec<f32>>,
        resid: Vec<f32>,
        out_l: Blocked,
    }

    impl Problem {
        fn new(g: &ConvGeometry, out_block: usize, epi: Epi, seed: u64) -> Self {
            let mut rng = Rng::new(seed);
            let x = random(&mut rng, g.batch * g.in_image());
            let fan_in = (g.col_rows() as f32).sqrt();
            let w = random(&mut rng, g.out_channels * g.col_rows())
                .iter()
                .map(|v| v / fan_in)
                .collect();
            let out_l = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, out_block);
            let scale = epi
                .scale
                .then(|| (0..g.out_channels).map(|_| 0.5 + rng.uniform() as f32).collect());
            let bias = epi.bias.then(|| {
                (0..out_l.padded_channels())
                    .map(|k| if k < g.out_channels { rng.normal() as f32 } else { 0.0 })
                    .collect()
            });
            let plain = random(&mut rng, g.batch * g.out_channels * g.out_plane());
            let mut resid = vec![0.0; out_l.len()];
            to_blocked(&plain, out_l, &mut resid);
            Problem {
                x,
                w,
                scale,
                bias,
                resid,
                out_l,
            }
        }

        fn input(&self, g: &ConvGeometry, in_block: usize) -> Vec<f32> {
            let l = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, in_block);
            let mut xb = vec![0.0; l.len()];
            to_blocked(&self.x, l, &mut xb);
            xb
        }

        fn epilogue(&self, epi: Epi) -> BlockedEpilogue<'_> {
            BlockedEpilogue {
                bias: self.bias.as_deref(),
                residual: match epi.residual {
                    0 => Residual::None,
                    1 => Residual::From(&self.resid),
                    _ => Residual::InPlace,
                },
                relu: epi.relu,
                relu_output: None,
            }
        }

        /// The output buffer before the call: the residual for an in-place add, NaN
        /// otherwise (so that an output never written fails the comparison).
        fn initial(&self, epi: Epi) -> Vec<f32> {
            if epi.residual == 2 {
                self.resid.clone()
            } else {
                vec![f32::NAN; self.out_l.len()]
            }
        }

        fn scaled_weights(&self, g: &ConvGeometry) -> Vec<f32> {
            let per = g.col_rows();
            self.w
                .iter()
                .enumerate()
                .map(|(i, &v)| v * self.scale.as_ref().map_or(1.0, |s| s[i / per]))
                .collect()
        }

        /// The expected output from the f64 reference, finished by the scalar epilogue.
        fn expected(&self, g: &ConvGeometry, epi: Epi) -> Vec<f32> {
            let r = conv_f64(g, &self.x, &self.scaled_weights(g));
            let ep = self.epilogue(epi);
            let init = self.initial(epi);
            let l = self.out_l;
            let mut y = vec![0.0; l.len()];
            for n in 0..g.batch {
                for k in 0..l.padded_channels() {
                    for oy in 0..g.out_h {
                        for ox in 0..g.out_w {
                            let at = l.index(n, k, oy, ox);
                            let acc = if k < g.out_channels {
                                r[((n * g.out_channels + k) * g.out_h + oy) * g.out_w + ox] as f32
                            } else {
                                0.0
                            };
                            y[at] = ep.apply_scalar(acc, k, at, init[at]);
                        }
                    }
                }
            }
            y
        }

        fn fast<V: Vector>(&self, g: &ConvGeometry, in_block: usize, epi: Epi) -> Vec<f32> {
            self.fast_tuned::<V>(g, in_block, epi, Knobs::RULES)
        }

        /// The fast kernel run as `knobs` say.
        fn fast_tuned<V: Vector>(&self, g: &ConvGeometry, in_block: usize, epi: Epi, knobs: Knobs) -> Vec<f32> {
            let xb = self.input(g, in_block);
            let mut packed = vec![f32::NAN; packed_len(g, in_block, V::LANES)];
            pack_weights(&self.w, self.scale.as_deref(), g, in_block, V::LANES, &mut packed);
            let mut y = self.initial(epi);
            direct_conv_tuned::<V>(g, &xb, in_block, &packed, &self.epilogue(epi), &mut y, knobs, None);
            y
        }

        /// [`Problem::fast_tuned`] with the fused moments: the output, mean and variance.
        fn fast_moments<V: Vector>(
            &self,
            g: &ConvGeometry,
            in_block: usize,
            epi: Epi,
            knobs: Knobs,
        ) -> (Vec<f32>, Vec<f64>, Vec<f64>) {
            let xb = self.input(g, in_block);
            let mut packed = vec![f32::NAN; packed_len(g, in_block, V::LANES)];
            pack_weights(&self.w, self.scale.as_deref(), g, in_block, V::LANES, &mut packed);
            let mut y = self.initial(epi);
            let channels = self.out_l.padded_channels();
            let (mut mean, mut var, mut partials) = (vec![f64::NAN; channels], vec![f64::NAN; channels], Vec::new());
            let moments = Moments {
                partials: &mut partials,
                mean: &mut mean,
                var: &mut var,
            };
            let ep = self.epilogue(epi);
            direct_conv_tuned::<V>(
                g,
                &xb,
                in_block,
                &packed,
                &ep,
                &mut y,
                knobs,
                Some(Gather::Moments(moments)),
            );
            (y, mean, var)
        }

        fn naive(&self, g: &ConvGeometry, in_block: usize, epi: Epi) -> Vec<f32> {
            let xb = self.input(g, in_block);
            let mut y = self.initial(epi);
            let ob = self.out_l.block;
            direct_conv_naive(
                g,
                &xb,
                in_block,
                &self.w,
                self.scale.as_deref(),
                ob,
                &self.epilogue(epi),
                &mut y,
            );
            y
        }
    }

    /// The plan's rules with a weight-slab budget of `bytes`.
    fn slab(bytes: usize) -> Knobs {
        Knobs {
            slab_bytes: bytes,
            ..Knobs::RULES
        }
    }

    /// Fails unless every padding channel of the blocked output `y` is exactly zero.
    fn assert_padding_zero(y: &[f32], l: Blocked, what: &str) {
        for n in 0..l.n {
            for k in l.c..l.padded_channels() {
                for oy in 0..l.h {
                    for ox in 0..l.w {
                        let v = y[l.index(n, k, oy, ox)];
                        assert!(v == 0.0, "{what}: padding channel {k} at ({n}, {oy}, {ox}) is {v}");
                    }
                }
            }
        }
    }

    /// The fast kernel at `V` and the naive twin against the f64 reference; returns the
    /// larger error.
    fn check<V: Vector>(g: &ConvGeometry, in_block: usize, epi: Epi, seed: u64) -> f32 {
        let p = Problem::new(g, V::LANES, epi, seed);
        let want = p.expected(g, epi);
        let fast = p.fast::<V>(g, in_block, epi);
        let naive = p.naive(g, in_block, epi);
        let (ef, en) = (max_rel_err(&fast, &want), max_rel_err(&naive, &want));
        let what = format!("{g:?} lanes {} in_block {in_block} {epi:?}", V::LANES);
        assert!(ef < 1e-5 && en < 1e-5, "{what}: fast {ef:e}, naive {en:e}");
        assert_padding_zero(&fast, p.out_l, &what);
        assert_padding_zero(&naive, p.out_l, &what);
        ef.max(en)
    }

    /// Odd shapes: channels off the block, tiny and ragged images, every border case.
    fn odd_shapes() -> Vec<ConvGeometry> {
        vec![
            square_conv(1, 3, 7, 9, 5, 3, 1, 1),
            square_conv(2, 5, 7, 9, 19, 3, 2, 1),
            square_conv(3, 19, 2, 3, 33, 3, 1, 1),
            square_conv(1, 33, 1, 1, 3, 1, 1, 0),
            square_conv(2, 19, 9, 7, 5, 1, 2, 0),
            square_conv(1, 3, 13, 11, 19, 7, 2, 3),
            square_conv(1, 5, 9, 9, 33, 7, 1, 3),
            square_conv(2, 33, 7, 9, 19, 1, 1, 0),
            square_conv(1, 19, 5, 5, 5, 3, 1, 0),
            square_conv(1, 5, 4, 5, 7, 3, 1, 3),
            square_conv(1, 19, 5, 40, 33, 3, 1, 1),
            square_conv(1, 17, 6, 41, 20, 3, 2, 1),
            square_conv(1, 16, 4, 30, 64, 1, 2, 0),
            square_conv(2, 7, 6, 29, 70, 3, 3, 2),
            square_conv(1, 33, 3, 50, 5, 5, 1, 2),
            square_conv(2, 20, 8, 11, 9, 1, 3, 0),
        ]
    }

    fn odd_shapes_at<V: Vector>() -> f32 {
        let mut worst = 0f32;
        for (i, g) in odd_shapes().iter().enumerate() {
            for in_block in [1, V::LANES] {
                let epi = EPIS[(i + in_block) % EPIS.len()];
                worst = worst.max(check::<V>(g, in_block, epi, 100 + i as u64));
            }
        }
        println!("odd shapes, {} lanes: max relative error {worst:e}", V::LANES);
        worst
    }

    #[test]
    fn odd_shapes_match_the_reference_at_4_lanes() {
        odd_shapes_at::<f32x4>();
    }

    #[test]
    fn odd_shapes_match_the_reference_at_8_lanes() {
        odd_shapes_at::<f32x8>();
    }

    #[test]
    fn odd_shapes_match_the_reference_at_16_lanes() {
        odd_shapes_at::<f32x16>();
    }

    /// Strided 1x1 convolutions run on their subsampled input and on the strided tiles:
    /// both bit for bit the same (each output summed in the same order) and within 1e-5
    /// of the f64 reference, with every epilogue, chunked reductions and fused moments.
    #[test]
    fn subsampled_strided_1x1_matches_the_strided_tiles() {
        fn at<V: Vector>() {
            let shapes = strided_1x1_shapes();
            for (i, g) in shapes.iter().enumerate() {
                for (e, &epi) in EPIS.iter().enumerate() {
                    let p = Problem::new(g, V::LANES, epi, 90 + (i * 7 + e) as u64);
                    let want = p.expected(g, epi);
                    for slab_bytes in [SLAB_BYTES, 1] {
                        let knobs = |subsample| Knobs {
                            slab_bytes,
                            subsample: Some(subsample),
                            ..Knobs::RULES
                        };
                        let sub = p.fast_tuned::<V>(g, V::LANES, epi, knobs(true));
                        let strided = p.fast_tuned::<V>(g, V::LANES, epi, knobs(false));
                        let what = format!("{g:?} lanes {} slab {slab_bytes} {epi:?}", V::LANES);
                        let err = max_rel_err(&sub, &want);
                        assert!(err < 1e-5, "{what}: {err:e}");
                        assert!(sub == strided, "{what}: subsampled and strided differ");
                        assert_padding_zero(&sub, p.out_l, &what);
                        let (y, mean, var) = p.fast_moments::<V>(g, V::LANES, epi, knobs(true));
                        let (y2, mean2, var2) = p.fast_moments::<V>(g, V::LANES, epi, knobs(false));
                        assert!(y == sub && y2 == strided, "{what}: the gather changed the output");
                        assert!(mean == mean2 && var == var2, "{what}: moments differ");
                    }
                }
            }
        }
        at::<wide::f32x4>();
        at::<wide::f32x8>();
        at::<wide::f32x16>();
    }

    /// NCHW stems on a zero-padded copy and on the border tiles: bit for bit the same,
    /// within 1e-5 of the f64 reference, with every epilogue and the fused moments.
    #[test]
    fn padded_stems_match_the_border_tiles() {
        fn at<V: Vector>() {
            let shapes = [
                square_conv(2, 3, 9, 7, 5, 3, 1, 1),
                square_conv(1, 3, 13, 11, 19, 7, 2, 3),
                square_conv(3, 3, 32, 32, 16, 3, 1, 1),
                square_conv(1, 1, 2, 3, 33, 5, 1, 2),
            ];
            for (i, g) in shapes.iter().enumerate() {
                for (e, &epi) in EPIS.iter().enumerate() {
                    let p = Problem::new(g, V::LANES, epi, 150 + (i * 7 + e) as u64);
                    let knobs = |pad| Knobs {
                        pad_nchw: Some(pad),
                        ..Knobs::RULES
                    };
                    let padded = p.fast_tuned::<V>(g, 1, epi, knobs(true));
                    let border = p.fast_tuned::<V>(g, 1, epi, knobs(false));
                    let what = format!("{g:?} lanes {} {epi:?}", V::LANES);
                    let err = max_rel_err(&padded, &p.expected(g, epi));
                    assert!(err < 1e-5, "{what}: {err:e}");
                    assert!(padded == border, "{what}: padded and border tiles differ");
                    let (y, mean, var) = p.fast_moments::<V>(g, 1, epi, knobs(true));
                    let (y2, mean2, var2) = p.fast_moments::<V>(g, 1, epi, knobs(false));
                    assert!(y == padded && y2 == border, "{what}: the gather changed the output");
                    assert!(mean == mean2 && var == var2, "{what}: moments differ");
                }
            }
        }
        at::<wide::f32x4>();
        at::<wide::f32x8>();
        at::<wide::f32x16>();
    }

    #[test]
    fn every_epilogue_matches_the_reference() {
        let g = square_conv(2, 19, 6, 11, 33, 3, 1, 1);
        let mut worst = 0f32;
        for epi in EPIS {
            for relu in [false, true] {
                for in_block in [1, F32xBlock::LANES] {
                    worst = worst.max(check::<F32xBlock>(&g, in_block, Epi { relu, ..epi }, 7));
                }
            }
        }
        println!("epilogues: max relative error {worst:e}");
    }

    #[test]
    fn resnet20_convs_match_the_reference() {
        let mut worst = 0f32;
        for (i, (g, names)) in zoo_convs("resnet20", 2, 32).iter().enumerate() {
            let in_block = if g.in_channels < 4 { 1 } else { F32xBlock::LANES };
            let e = check::<F32xBlock>(g, in_block, EPIS[i % EPIS.len()], 20 + i as u64);
            println!("resnet20 {names:?}: {e:e}");
            worst = worst.max(e);
        }
        println!("resnet20: max relative error {worst:e}");
    }

    #[test]
    fn resnet50_convs_match_the_reference_at_sampled_outputs() {
        let mut rng = Rng::new(50);
        let mut worst = 0f32;
        for (i, (g, names)) in zoo_convs("resnet50", 1, 224).iter().enumerate() {
            let epi = EPIS[i % EPIS.len()];
            let in_block = if g.in_channels < 4 { 1 } else { F32xBlock::LANES };
            let p = Problem::new(g, F32xBlock::LANES, epi, 500 + i as u64);
            let fast = p.fast::<F32xBlock>(g, in_block, epi);
            let naive = p.naive(g, in_block, epi);
            let (ws, ep, init, l) = (p.scaled_weights(g), p.epilogue(epi), p.initial(epi), p.out_l);
            let (mut got_f, mut got_n, mut want) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..200 {
                let (n, k) = (rng.below(g.batch), rng.below(g.out_channels));
                let (oy, ox) = (rng.below(g.out_h), rng.below(g.out_w));
                let at = l.index(n, k, oy, ox);
                let r = conv_value_f64(g, &p.x, &ws, n, k, oy, ox) as f32;
                want.push(ep.apply_scalar(r, k, at, init[at]));
                got_f.push(fast[at]);
                got_n.push(naive[at]);
            }
            let e = max_rel_err(&got_f, &want).max(max_rel_err(&got_n, &want));
            println!("resnet50 {names:?}: {e:e}");
            assert!(e < 1e-5, "{g:?}: {e:e}");
            assert!(fast.iter().all(|v| v.is_finite()), "{g:?}: an output not written");
            worst = worst.max(e);
        }
        println!("resnet50: max relative error {worst:e}");
    }

    #[test]
    fn relu_clamps_negatives_and_keeps_nan() {
        let g = square_conv(1, 20, 6, 30, 17, 3, 1, 1);
        let epi = Epi {
            bias: true,
            residual: 0,
            relu: true,
            scale: false,
        };
        let mut p = Problem::new(&g, F32xBlock::LANES, epi, 9);
        // A NaN input pixel: every output whose window holds it is NaN, ReLU or not.
        p.x[(3 * g.in_h + 2) * g.in_w + 20] = f32::NAN;
        for in_block in [1, F32xBlock::LANES] {
            let y = p.fast::<F32xBlock>(&g, in_block, epi);
            let naive = p.naive(&g, in_block, epi);
            let l = p.out_l;
            let mut clamped = 0;
            for k in 0..g.out_channels {
                for oy in 0..g.out_h {
                    for ox in 0..g.out_w {
                        let (v, nv) = (y[l.index(0, k, oy, ox)], naive[l.index(0, k, oy, ox)]);
                        let window = oy.abs_diff(2) <= 1 && ox.abs_diff(20) <= 1;
                        assert_eq!(v.is_nan(), window, "NaN at channel {k} ({oy}, {ox}): {v}");
                        assert_eq!(nv.is_nan(), window, "naive NaN at channel {k} ({oy}, {ox})");
                        assert!(v.is_nan() || v >= 0.0);
                        clamped += usize::from(v == 0.0);
                    }
                }
            }
            assert!(clamped > 100, "only {clamped} outputs clamped");
        }
    }

    /// The input-channel chunks (forced by small slab budgets: one block per chunk, and
    /// chunks of a few blocks with a ragged split) against the naive twin and the
    /// reference, every epilogue (in-place residual with ReLU included), at every width.
    #[test]
    fn chunked_reductions_match_the_reference() {
        fn at<V: Vector>() {
            let shapes = [
                square_conv(2, 40, 7, 9, 19, 3, 1, 1),
                square_conv(1, 70, 6, 13, 70, 3, 2, 1),
                square_conv(1, 53, 5, 5, 33, 1, 1, 0),
            ];
            for (i, g) in shapes.iter().enumerate() {
                let icbs = g.in_channels.div_ceil(V::LANES);
                let per = per_block(g, V::LANES, V::LANES) * 4;
                // Every block its own chunk; about two blocks of one output block's slab.
                for budget in [1, per * 2 / icbs] {
                    for (e, epi) in EPIS.iter().enumerate() {
                        let p = Problem::new(g, V::LANES, *epi, 40 + (i * 4 + e) as u64);
                        let want = p.expected(g, *epi);
                        let fast = p.fast_tuned::<V>(g, V::LANES, *epi, slab(budget));
                        let naive = p.naive(g, V::LANES, *epi);
                        let what = format!("{g:?} lanes {} budget {budget} {epi:?}", V::LANES);
                        let (ef, en) = (max_rel_err(&fast, &want), max_rel_err(&fast, &naive));
                        assert!(ef < 1e-5 && en < 1e-5, "{what}: reference {ef:e}, naive {en:e}");
                        assert_padding_zero(&fast, p.out_l, &what);
                    }
                }
            }
        }
        at::<f32x4>();
        at::<f32x8>();
        at::<f32x16>();
    }

    #[test]
    fn padding_channels_come_out_zero() {
        // 19 output channels: 13 padding channels in the second block of 16 (5 of 8, 1 of 4).
        let g = square_conv(2, 19, 5, 13, 19, 3, 2, 1);
        fn at<V: Vector>(g: &ConvGeometry) {
            for epi in EPIS {
                let p = Problem::new(g, V::LANES, epi, 3);
                for in_block in [1, V::LANES] {
                    let y = p.fast::<V>(g, in_block, epi);
                    assert_padding_zero(&y, p.out_l, "fast");
                }
            }
        }
        at::<f32x4>(&g);
        at::<f32x8>(&g);
        at::<f32x16>(&g);
    }

    #[test]
    fn row_bands_match_the_reference_and_the_group_split() {
        // Shapes whose input outweighs their weights: split by rows on 2 and 3 threads.
        for (i, g) in [
            square_conv(1, 40, 30, 17, 70, 3, 1, 1),
            square_conv(1, 64, 20, 20, 96, 1, 2, 0),
        ]
        .iter()
        .enumerate()
        {
            let epi = EPIS[i % EPIS.len()];
            let p = Problem::new(g, F32xBlock::LANES, epi, 40 + i as u64);
            let want = p.expected(g, epi);
            let runs: Vec<Vec<f32>> = [1, 2, 3]
                .iter()
                .map(|&t| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("a pool");
                    pool.install(|| {
                        let groups = group_count(g.out_channels.div_ceil(F32xBlock::LANES), F32xBlock::LANES);
                        let by_rows = split_by_rows(g, F32xBlock::LANES, groups, split::parts(g.out_h));
                        assert_eq!(by_rows, t == 2 || (t == 3 && g.out_h >= 12), "{g:?} on {t} threads");
                        p.fast::<F32xBlock>(g, F32xBlock::LANES, epi)
                    })
                })
                .collect();
            for (t, run) in runs.iter().enumerate() {
                let err = max_rel_err(run, &want);
                assert!(err < 1e-5, "{g:?} on {} threads: {err:e}", t + 1);
            }
            assert!(
                runs.windows(2).all(|r| r[0] == r[1]),
                "{g:?}: results differ by thread count"
            );
        }
    }

    /// The moments gathered as the output is stored (by image groups, by row bands, by
    /// input-channel chunks; NCHW and blocked input; 1 to 3 threads) against the f64
    /// moments of the stored output, which is bit for bit the plain call's.
    #[test]
    fn fused_moments_match_the_stored_output() {
        let cases = [
            (square_conv(3, 16, 9, 11, 40, 3, 2, 1), F32xBlock::LANES, SLAB_BYTES),
            (square_conv(1, 40, 30, 17, 70, 3, 1, 1), F32xBlock::LANES, SLAB_BYTES),
            (square_conv(2, 64, 20, 20, 96, 1, 1, 0), F32xBlock::LANES, 4 << 10),
            (square_conv(2, 3, 31, 31, 20, 7, 2, 3), 1, SLAB_BYTES),
        ];
        for (i, (g, in_block, budget)) in cases.iter().enumerate() {
            let epi = EPIS[i % EPIS.len()];
            let p = Problem::new(g, F32xBlock::LANES, epi, 70 + i as u64);
            let plain = p.fast_tuned::<F32xBlock>(g, *in_block, epi, slab(*budget));
            let l = p.out_l;
            for t in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("a pool");
                let (y, mean, var) = pool.install(|| p.fast_moments::<F32xBlock>(g, *in_block, epi, slab(*budget)));
                assert!(
                    y == plain,
                    "{g:?} on {t} threads: the output differs from the plain call's"
                );
                for k in 0..l.padded_channels() {
                    let values: Vec<f64> = (0..l.n)
                        .flat_map(|n| (0..l.h).flat_map(move |oy| (0..l.w).map(move |ox| (n, oy, ox))))
                        .map(|(n, oy, ox)| y[l.index(n, k, oy, ox)] as f64)
                        .collect();
                    let m = values.iter().sum::<f64>() / values.len() as f64;
                    let v = values.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / values.len() as f64;
                    let scale = m.abs().max(v.sqrt()).max(1e-3);
                    assert!(
                        (mean[k] - m).abs() <= 1e-5 * scale && (var[k] - v).abs() <= 1e-5 * v.max(1e-6),
                        "{g:?} on {t} threads, channel {k}: mean {} against {m}, variance {} against {v}",
                        mean[k],
                        var[k]
                    );
                }
            }
        }
    }

    /// The gradient sums gathered as the output is stored (a backward-data's, for the
    /// batch norm whose output gradient it is), with and without that batch norm's ReLU,
    /// against the batch norm's own pass over the stored output, which is bit for bit the
    /// plain call's: image groups, row bands (batch 1), input-channel chunks.
    #[test]
    fn fused_gradient_sums_match_the_stored_output() {
        let lanes = F32xBlock::LANES;
        let cases = [
            (square_conv(3, 40, 13, 11, 24, 3, 1, 1), SLAB_BYTES),
            (square_conv(1, 32, 40, 40, 80, 3, 1, 1), SLAB_BYTES),
            (square_conv(2, 64, 20, 20, 96, 1, 1, 0), 4 << 10),
        ];
        for (i, (g, budget)) in cases.iter().enumerate() {
            let epi = EPIS[i % EPIS.len()];
            let p = Problem::new(g, lanes, epi, 90 + i as u64);
            let plain = p.fast_tuned::<F32xBlock>(g, lanes, epi, slab(*budget));
            let l = p.out_l;
            let kp = l.padded_channels();
            let mut rng = Rng::new(40 + i as u64);
            let z = random(&mut rng, l.len());
            let (mean, scale, shift) = (random(&mut rng, kp), random(&mut rng, kp), random(&mut rng, kp));
            let xb = p.input(g, lanes);
            let mut packed = vec![f32::NAN; packed_len(g, lanes, lanes)];
            pack_weights(&p.w, p.scale.as_deref(), g, lanes, lanes, &mut packed);
            for relu in [
                None,
                Some(FusedRelu {
                    scale: &scale,
                    shift: &shift,
                }),
            ] {
                for t in [1, 2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("a pool");
                    let mut y = p.initial(epi);
                    let (mut sum_dy, mut sum_dy_zc) = (vec![f64::NAN; kp], vec![f64::NAN; kp]);
                    let gather = Gather::GradSums(GradSums {
                        z: &z,
                        mean: &mean,
                        relu,
                        partials: &mut Vec::new(),
                        sum_dy: &mut sum_dy,
                        sum_dy_zc: &mut sum_dy_zc,
                    });
                    let ep = p.epilogue(epi);
                    pool.install(|| {
                        direct_conv_tuned::<F32xBlock>(g, &xb, lanes, &packed, &ep, &mut y, slab(*budget), Some(gather))
                    });
                    let what = format!("{g:?} on {t} threads, ReLU {}", relu.is_some());
                    assert!(y == plain, "{what}: the output differs from the plain call's");
                    assert_grad_sums::<F32xBlock>(l, &y, (&z, &mean, relu), (&sum_dy, &sum_dy_zc), &what);
                }
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let g = square_conv(1, 32, 9, 23, 80, 3, 1, 1);
        let p = Problem::new(&g, F32xBlock::LANES, EPIS[1], 11);
        let runs: Vec<Vec<f32>> = [1, 2, 3]
            .iter()
            .map(|&t| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("a pool");
                pool.install(|| p.fast::<F32xBlock>(&g, F32xBlock::LANES, EPIS[1]))
            })
            .collect();
        assert!(runs.windows(2).all(|r| r[0] == r[1]));
    }
}
