//! Backward-filter (weight gradient) of a convolution on the channel-blocked layout
//! (NCHWc): `dW[k][c][ky][kx] += sum over (n, oy, ox) of dY[n][k][oy][ox] *
//! X[n][c][oy * s + ky - pad][ox * s + kx - pad]`, as oneDNN's `jit_avx512_common_conv_bwd_weights`
//! and MLAS compute it: register-blocked outer products swept along the long reduction
//! over output pixels.
//!
//! # The register tile
//! One tile is the gradient of one tap `(ky, kx)` for `NCI` input channels x `NOC`
//! output-channel blocks: `NCI * NOC` accumulator vectors, each holding `V::LANES` output
//! channels of one input channel. Per output pixel it loads the `NOC` vectors of `dY`
//! (one pixel's output channels, contiguous in the blocked layout), broadcasts the `NCI`
//! input scalars the tap reads for that pixel (contiguous too: one pixel's channels of
//! one input block), and does `NCI * NOC` fused multiply-adds. With 16 lanes (AVX-512: 32
//! registers) the tiles are 8 x 2 and 16 x 1 = 16 accumulators: per FMA at most one
//! broadcast and `1/NCI` vector loads, bound by the FMA pipes.
//!
//! # Borders
//! For a fixed tap the output pixels whose input lies inside the image form a rectangle
//! (rows and columns clipped once per tap), so there are no border tiles: padding is
//! never read, and every tile sweeps plain strided rows.
//!
//! # Cache blocking and threads
//! The gradient is cut into *units*: (output-channel group of at most [`max_group`]
//! blocks, input-channel group of one input block, or [`STEM_GROUP`] planes when
//! `in_block` is 1). The reduction over output rows `(n, oy)` is walked in *chunks* of
//! about [`CHUNK_PIXELS`] pixels; for each chunk every unit of a batch of units (their
//! accumulators at most [`BATCH_FLOATS`], in L2) runs every tap and every tile, so the
//! chunk's `dY` and input are read from memory once per batch and from cache by every
//! tap (9 reuses for 3x3) and every unit of the batch. Within a tap, the tiles of an
//! input block's channel chunks take turns on blocks of [`SUB_PIXELS`], so that `dY`
//! stays in L1 from one chunk to the next.
//!
//! Tasks ([`split`], chosen by `split_plan` from the shapes and the thread count): the
//! units are cut into `pw` contiguous ranges and the output rows into `pr`, so that
//! there are at least [`split::parts`] tasks (both threads busy at batch 1 and 128) and
//! the fewest bytes move. With `pr = 1` (many units: ResNet-50's wide layers) each task
//! owns its units over the whole reduction and adds its finished sums straight into
//! `dw`: each element is summed by one task in a fixed order, whatever the thread count.
//! With `pr > 1` (few units: ResNet-20's layers are 1 to 8 units; the 1x1 layers of
//! ResNet-50 at batch 8, where splitting units would make every task read all of `dY`),
//! each task sums into its own partial buffer, allocated per call and at most
//! [`MAX_PARTIALS`] floats, and the partials are added in range order: deterministic for
//! a given thread count. The units are ordered with the larger operand's groups outermost
//! so that a unit range reads only its share of that operand.
//!
//! # Measured (`examples/fgrad_bench.rs`, 16 lanes, a 2-core Zen machine shared with
//! other jobs: FMA peak about 250 GFLOP/s per core)
//! Two threads, in moments when the call got both cores: ResNet-20 batch 128 at
//! 370-410 GFLOP/s on its 16-channel 3x3 layers (one output block: one broadcast per
//! FMA, and 37 FLOPs per byte of `dY` and input streamed from memory), 450-560 on the
//! 32- and 64-channel ones, 210 on the 3-channel stem; ResNet-50 batch 8 at 430-510 on
//! its 3x3 layers, 320-380 on the 1x1 ones, 350-370 on the stem; batch 1 at 370-490 on
//! the 3x3 layers down to 14x14, 390-460 on the 1x1 ones at 28x28 and more. The old
//! NCHW kernels ran 250-340 on the ResNet-20 shapes. Per core (1 thread, per CPU second)
//! the 3x3 tiles run at 240-290 when their data come from cache.
//! Weak spots: batch 1 at 7x7 (512 channels 3x3: 110-190; 2048 -> 512 1x1: 90-160),
//! where the gradient (up to 9.4 MB, added to `dw` once) is as large as the reduction is
//! short (49 pixels), so reading and writing `dw` costs as much as the products.
//!
//! # API
//! - [`filter_grad`]: `dw += dL/dW` for `input` in blocks of `in_block` (`V::LANES`, or 1
//!   for the NCHW stem) and `dy` in blocks of `V::LANES`; `dw` is OIHW.
//! - [`filter_grad_naive`]: the scalar twin, f64 sums, same contract, `dy` in blocks of
//!   [`crate::simd::BLOCK`] (the plan's vector); [`filter_grad_naive_with_block`] for
//!   other `dy` blocks (the tests' 4 and 8 lanes).

use crate::kernels::blocked::resample;
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::scratch::{with_partials, with_scratch};
use crate::kernels::split;
use crate::layout::Blocked;
use crate::simd::Vector;
use rayon::prelude::*;
use std::ops::Range;

/// Input planes per unit when the input is plain NCHW (`in_block` 1, the 3-channel stem):
/// the tile broadcasts one scalar of each plane per pixel, so 4 planes x 4 output blocks =
/// 16 accumulators at 16 lanes (all of the stem's 3 channels in one tile).
pub const STEM_GROUP: usize = 4;

/// Output pixels per chunk of the reduction: a chunk's `dY` (up to 2 blocks, 32 KB) and
/// input rows (about 20 KB at 32 columns) stay in L1/L2 while every tap, tile and unit of
/// a batch sweeps them; 256 accumulations per tile make its accumulator load and store
/// (`NCI * NOC` vectors each) about 1 % of its work.
pub const CHUNK_PIXELS: usize = 256;

/// Output pixels per chunk for units of up to `blocks` output blocks: [`CHUNK_PIXELS`]
/// for groups of up to 2 blocks, fewer for the stem's 4, so that a chunk's `dY` stays the
/// size of 2 blocks x [`CHUNK_PIXELS`] (32 KB at 16 lanes) and every one of the stem's 49
/// taps finds it in L1: ResNet-50's stem at batch 8 and 16 (one thread, `fgrad_bench`,
/// alternating) ran at 64-83 GFLOP/s with 2 rows (224 pixels) a chunk and 114-118 with 1.
fn chunk_pixels(blocks: usize) -> usize {
    CHUNK_PIXELS * 2 / blocks.max(2)
}

/// Output pixels (whole rows of one image, at least one) that the channel chunks of one
/// input block sweep in turn: 2 blocks of `dY` over 128 pixels are 16 KB, which stay in
/// L1 from one chunk's tile to the next instead of coming from L2 again.
pub const SUB_PIXELS: usize = 128;

/// Accumulator floats of one batch of units (128 KB): the partial sums every chunk
/// loads and stores once per tile, kept in L2 beside the chunk's data.
pub const BATCH_FLOATS: usize = 32 << 10;

/// Output-channel blocks per unit (the tile's `NOC` at most): 2 for blocked input (8 x 2
/// or 16 x 1 tiles at 16 lanes; 4 x 2 = 8 accumulators at 8 and 4 lanes, which AVX2's and
/// wasm engines' 16 registers hold with operands); 4 for the NCHW stem at 16 lanes (at
/// most 4 planes x 4 blocks = 16 accumulators), 2 below.
pub const fn max_group(lanes: usize, in_block: usize) -> usize {
    if in_block == 1 && lanes >= 16 {
        4
    } else {
        2
    }
}

/// Input channels per tile (`NCI`) for blocked input and `noc` output blocks: as many as
/// make 16 accumulators at 16 lanes and 8 below, at most the block.
pub const fn tile_channels(lanes: usize, noc: usize) -> usize {
    let acc = if lanes >= 16 { 16 } else { 8 };
    let n = acc / noc;
    if n < lanes {
        n
    } else {
        lanes
    }
}

/// Everything the tasks share, computed once per call.
struct Ctx<'a> {
    g: ConvGeometry,
    input: &'a [f32],
    dy: &'a [f32],
    in_l: Blocked,
    dy_l: Blocked,
    /// Output-channel blocks, cut into `ngroups` groups of at most [`max_group`] blocks
    /// as evenly as [`split::ranges`] cuts them.
    ocbs: usize,
    ngroups: usize,
    /// Input channels per unit: `in_block`, or [`STEM_GROUP`] planes.
    icw: usize,
    /// Input-channel groups.
    icgs: usize,
    /// Output blocks of the widest group.
    maxg: usize,
    /// Accumulator floats per unit: `[tap][ci < icw][j < maxg][lane]`.
    unit_len: usize,
    /// Units ordered input group first (see [`split_plan`]).
    icg_major: bool,
}

impl Ctx<'_> {
    fn units(&self) -> usize {
        self.ngroups * self.icgs
    }

    /// The output blocks of group `gi`: [`split::ranges`]`(ocbs, ngroups)`, whose ranges
    /// are all non-empty (`ngroups <= ocbs`), so the `gi`-th is this one.
    fn group(&self, gi: usize) -> Range<usize> {
        gi * self.ocbs / self.ngroups..(gi + 1) * self.ocbs / self.ngroups
    }

    /// The output blocks and input channels of unit `u`: input groups outermost when
    /// `icg_major`, else output groups.
    fn unit(&self, u: usize) -> (Range<usize>, Range<usize>) {
        let ng = self.ngroups;
        let (gi, ig) = if self.icg_major {
            (u % ng, u / ng)
        } else {
            (u / self.icgs, u % self.icgs)
        };
        let c0 = ig * self.icw;
        (self.group(gi), c0..(c0 + self.icw).min(self.g.in_channels))
    }
}

/// `dw += dL/dW` for `y = conv(x, w)` of geometry `g`: `input` is `Blocked::new(g.batch,
/// g.in_channels, g.in_h, g.in_w, in_block)` with `in_block` = `V::LANES`, or 1 for plain
/// NCHW; `dy` is `Blocked::new(g.batch, g.out_channels, g.out_h,
/// g.out_w, V::LANES)`; `dw` is OIHW
/// (`out_channels x in_channels x kernel_h x kernel_w`) and is accumulated into. Any
/// kernel, stride and padding. Deterministic for a given thread count (see the module
/// docs). No allocation in steady state: the accumulators and partial sums live in
/// per-thread buffers grown on the first calls (the tasks use
/// [`with_scratch`](crate::kernels::scratch::with_scratch), so do not call this from
/// inside it). Padding channels of `input` and `dy` may hold anything: their products are
/// never added to `dw`.
pub fn filter_grad<V: Vector>(g: &ConvGeometry, input: &[f32], in_block: usize, dy: &[f32], dw: &mut [f32]) {
    filter_grad_tuned::<V>(g, input, in_block, dy, dw, None);
}

/// [`filter_grad`], a strided 1x1 convolution run on its subsampled input as `subsample`
/// says (`None`: as the rule of [`resample::strided_as_pointwise`] says), so that the
/// tests reach both paths.
fn filter_grad_tuned<V: Vector>(
    g: &ConvGeometry,
    input: &[f32],
    in_block: usize,
    dy: &[f32],
    dw: &mut [f32],
    subsample: Option<bool>,
) {
    if let Some(pointwise) = resample::strided_as_pointwise(g, in_block, V::LANES, subsample) {
        let in_l = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, in_block);
        return resample::on_subsampled::<V, _>(g, in_l, input, |sub| {
            filter_grad_tiles::<V>(&pointwise, sub, in_block, dy, dw)
        });
    }
    filter_grad_tiles::<V>(g, input, in_block, dy, dw);
}

/// [`filter_grad`] on the tiles, whatever the stride.
fn filter_grad_tiles<V: Vector>(g: &ConvGeometry, input: &[f32], in_block: usize, dy: &[f32], dw: &mut [f32]) {
    let lanes = V::LANES;
    assert!(matches!(lanes, 4 | 8 | 16), "filter_grad: vectors of 4, 8 or 16 lanes");
    assert!(
        in_block == 1 || in_block == lanes,
        "filter_grad: in_block must be 1 or V::LANES"
    );
    let in_l = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, in_block);
    let dy_l = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, lanes);
    let kk = g.kernel_h * g.kernel_w;
    assert_eq!(input.len(), in_l.len(), "filter_grad: input length");
    assert_eq!(dy.len(), dy_l.len(), "filter_grad: dy length");
    assert_eq!(dw.len(), g.out_channels * g.in_channels * kk, "filter_grad: dw length");
    let rows = g.batch * g.out_h;
    if dw.is_empty() || rows == 0 || g.out_w == 0 {
        return;
    }
    let ocbs = dy_l.blocks();
    let maxg = max_group(lanes, in_block);
    let ngroups = ocbs.div_ceil(maxg);
    let icw = if in_block == 1 { STEM_GROUP } else { in_block };
    let c = Ctx {
        g: *g,
        input,
        dy,
        in_l,
        dy_l,
        ocbs,
        ngroups,
        icw,
        icgs: g.in_channels.div_ceil(icw),
        maxg,
        unit_len: kk * icw * maxg * lanes,
        icg_major: in_l.len() > dy_l.len(),
    };
    let units = c.units();
    let ul = c.unit_len;
    let major = if c.icg_major { c.icgs } else { c.ngroups };
    let (pr, pw) = split_plan(units, major, rows, (in_l.len(), dy_l.len()), ul);
    let out = DwOut::new(dw);
    let per_batch = (BATCH_FLOATS / ul).max(1);
    if pr == 1 {
        // Each task owns its units over the whole reduction: sums go straight into `dw`.
        (0..pw).into_par_iter().for_each(|t| {
            let Some(us) = split::range(units, pw, t) else {
                return;
            };
            for b in us.clone().step_by(per_batch) {
                let batch = b..(b + per_batch).min(us.end);
                with_scratch(batch.len() * ul, |buf| {
                    run_units::<V>(&c, batch.clone(), 0..rows, buf);
                    for (i, u) in batch.clone().enumerate() {
                        scatter_add(&c, u, &buf[i * ul..(i + 1) * ul], &out);
                    }
                });
            }
        });
        return;
    }
    // The rows are cut into `pr` ranges too, each task's sums kept apart: task `r * pw +
    // w` (row range `r`, unit range `w`) owns `per_task` floats of the partials.
    let per_task = units.div_ceil(pw) * ul;
    with_partials(pr * pw * per_task, |partials| {
        partials.par_chunks_mut(per_task).enumerate().for_each(|(t, buf)| {
            let (r, w) = (t / pw, t % pw);
            let rows = split::range(rows, pr, r).expect("pr <= rows: no empty range");
            let Some(us) = split::range(units, pw, w) else {
                return;
            };
            for (bi, b) in us.clone().step_by(per_batch).enumerate() {
                let batch = b..(b + per_batch).min(us.end);
                let at = bi * per_batch * ul;
                run_units::<V>(&c, batch.clone(), rows.clone(), &mut buf[at..at + batch.len() * ul]);
            }
        });
        // The partials of each unit added in range order, then into `dw`.
        let partials = &*partials;
        (0..units).into_par_iter().for_each(|u| {
            // `pw <= units`: no range is empty, so the w-th range is task w's.
            let (w, us) = split::ranges(units, pw)
                .enumerate()
                .find(|(_, r)| r.contains(&u))
                .expect("every unit in a range");
            let at = |r: usize| (r * pw + w) * per_task + (u - us.start) * ul;
            with_scratch(ul, |sum| {
                sum.copy_from_slice(&partials[at(0)..at(0) + ul]);
                for r in 1..pr {
                    let p = &partials[at(r)..at(r) + ul];
                    sum.iter_mut().zip(p).for_each(|(s, &v)| *s += v);
                }
                scatter_add(&c, u, sum, &out);
            });
        });
    });
}

/// Most floats of partial sums that `split_plan` allocates per call (1 MB), so that the
/// call stays free of large allocations; the gradients that would need more have enough
/// units to split without partials.
pub const MAX_PARTIALS: usize = 1 << 18;

/// How [`filter_grad`] cuts its work: `(pr, pw)`, the output rows into `pr` ranges and
/// the `units` units (`major` distinct groups along their outer axis) into `pw` ranges,
/// `pr * pw` tasks, at least [`split::parts`] of them where the work allows. Picks the
/// split that moves the fewest bytes: every task reads its rows of the operand (input or
/// `dY`) its units split, and all of the other one, so `pw` multiplies the smaller
/// operand's traffic (`sizes`, in floats); `pr > 1` costs the partial sums (`pr` x the
/// gradient, written, read, zeroed), and is allowed only within [`MAX_PARTIALS`] unless
/// nothing else gives enough tasks. Depends on the shapes and the thread count alone.
fn split_plan(units: usize, major: usize, rows: usize, sizes: (usize, usize), unit_len: usize) -> (usize, usize) {
    let tasks = split::parts(units * rows);
    let (small, big) = (sizes.0.min(sizes.1), sizes.0.max(sizes.1));
    let most_pr = rows.min(tasks).max(1);
    let mut best = (usize::MAX, most_pr, tasks.div_ceil(most_pr).min(units));
    for pr in 1..=most_pr {
        let pw = tasks.div_ceil(pr).min(units);
        let partials = if pr > 1 { pr * units * unit_len } else { 0 };
        if pr * pw < tasks || partials > MAX_PARTIALS {
            continue;
        }
        let cost = small * pw.min(major) + big + 3 * partials;
        if cost < best.0 {
            best = (cost, pr, pw);
        }
    }
    (best.1, best.2)
}

/// `dw` shared by the tasks of one call: each unit's elements (its output channels x its
/// input channels x every tap) are added to by exactly one task.
struct DwOut<'a> {
    ptr: *mut f32,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: `DwOut` holds a unique borrow of `dw` for its lifetime and tasks only `add`
// to the elements of their own units, which no other task touches.
unsafe impl Send for DwOut<'_> {}
// SAFETY: as above.
unsafe impl Sync for DwOut<'_> {}

impl<'a> DwOut<'a> {
    fn new(dw: &'a mut [f32]) -> Self {
        DwOut {
            ptr: dw.as_mut_ptr(),
            len: dw.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    /// The elements `at .. at + len` of `dw`. Callers guarantee that no other task
    /// touches them while the returned slice lives (they belong to the caller's unit).
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    fn run(&self, at: usize, len: usize) -> &mut [f32] {
        assert!(at + len <= self.len, "filter_grad: dw range out of bounds");
        // SAFETY: in bounds (checked above); the range belongs to one unit, summed by one
        // task, so no other reference to it exists meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), len) }
    }
}

/// Adds unit `u`'s sums `acc` (`[tap][ci][j][lane]`) to the OIHW gradient, dropping
/// padding channels: for each output channel, one contiguous run of `dw` (its input
/// channels x taps), read from `acc` at fixed strides.
fn scatter_add(c: &Ctx, u: usize, acc: &[f32], out: &DwOut) {
    let g = &c.g;
    let (blocks, chans) = c.unit(u);
    let (lanes, kk) = (c.dy_l.block, g.kernel_h * g.kernel_w);
    let (ci_step, tap_step) = (c.maxg * lanes, c.icw * c.maxg * lanes);
    assert!(acc.len() >= c.unit_len);
    for j in 0..blocks.len() {
        for lane in 0..lanes {
            let k = (blocks.start + j) * lanes + lane;
            if k >= g.out_channels {
                break;
            }
            let row = out.run((k * g.in_channels + chans.start) * kk, chans.len() * kk);
            let acc = &acc[j * lanes + lane..];
            for tap in 0..kk {
                let (dst, src) = (&mut row[tap..], &acc[tap * tap_step..]);
                for (d, s) in dst.iter_mut().step_by(kk).zip(src.iter().step_by(ci_step)) {
                    *d += s;
                }
            }
        }
    }
}

/// Output rows `lo..hi` (or columns) whose input row `o * s + k - pad` lies inside `0..size`.
fn valid(out: usize, size: usize, k: usize, s: usize, pad: usize) -> Range<usize> {
    let lo = pad.saturating_sub(k).div_ceil(s);
    let hi = if size + pad > k {
        (size + pad - k).div_ceil(s)
    } else {
        0
    };
    lo.min(out)..hi.min(out).max(lo.min(out))
}

/// Sums the units `units` over the output rows `rows` (`n * out_h + oy`) into `buf`
/// (`units.len()` unit buffers, overwritten), chunk by chunk.
fn run_units<V: Vector>(c: &Ctx, units: Range<usize>, rows: Range<usize>, buf: &mut [f32]) {
    let g = &c.g;
    let ul = c.unit_len;
    assert_eq!(buf.len(), units.len() * ul);
    buf.fill(0.0);
    let (oh, ow) = (g.out_h, g.out_w);
    let chunk = chunk_pixels(c.ocbs.div_ceil(c.ngroups));
    let chunk_rows = (chunk / ow).clamp(1, oh);
    let chunk_imgs = (chunk / (oh * ow)).max(1);
    let mut r = rows.start;
    while r < rows.end {
        let (n, oy) = (r / oh, r % oh);
        // A chunk: several whole images when they are small, else rows of one image.
        let (imgs, ys) = if oy == 0 && chunk_imgs > 1 && r + oh <= rows.end {
            let k = chunk_imgs.min((rows.end - r) / oh);
            (n..n + k, 0..oh)
        } else {
            let end = rows.end.min(r - oy + oh).min(r + chunk_rows);
            (n..n + 1, oy..oy + end - r)
        };
        r += imgs.len() * ys.len();
        for (i, u) in units.clone().enumerate() {
            let acc = &mut buf[i * ul..(i + 1) * ul];
            for ky in 0..g.kernel_h {
                let yv = valid(oh, g.in_h, ky, g.stride, g.pad);
                let y = yv.start.max(ys.start)..yv.end.min(ys.end);
                if y.is_empty() {
                    continue;
                }
                for kx in 0..g.kernel_w {
                    let x = valid(ow, g.in_w, kx, g.stride, g.pad);
                    if x.is_empty() {
                        continue;
                    }
                    let tap = ky * g.kernel_w + kx;
                    let sweep = (imgs.clone(), y.clone(), x, ky, kx);
                    unit_tap::<V>(c, u, tap, sweep, acc);
                }
            }
        }
    }
}

/// The pixels one tile sweeps and the strides to walk them (offsets in floats).
#[derive(Clone, Copy)]
struct Sweep {
    imgs: usize,
    rows: usize,
    cols: usize,
    /// `dY` of the first pixel, first block; strides per image, row and block (one pixel
    /// is `V::LANES` on).
    dy: usize,
    dy_img: usize,
    dy_row: usize,
    dy_blk: usize,
    /// The input scalar of the first pixel and channel; strides per image, row, pixel and
    /// channel (1 within a block, a plane for NCHW input).
    x: usize,
    x_img: usize,
    x_row: usize,
    x_col: usize,
    x_ch: usize,
}

/// Runs every tile of tap `tap` of unit `u` over the images `imgs`, output rows and
/// columns of `sweep` (all inside the input for this tap), into the unit's sums `acc`.
fn unit_tap<V: Vector>(
    c: &Ctx,
    u: usize,
    tap: usize,
    (imgs, ys, xs, ky, kx): (Range<usize>, Range<usize>, Range<usize>, usize, usize),
    acc: &mut [f32],
) {
    let g = &c.g;
    let (blocks, chans) = c.unit(u);
    let (lanes, s, ib) = (V::LANES, g.stride, c.in_l.block);
    let (iy, ix) = (ys.start * s + ky - g.pad, xs.start * s + kx - g.pad);
    let mut sw = Sweep {
        imgs: imgs.len(),
        rows: ys.len(),
        cols: xs.len(),
        dy: c.dy_l.at(imgs.start, blocks.start, ys.start, xs.start),
        dy_img: c.dy_l.image_len(),
        dy_row: g.out_w * lanes,
        dy_blk: c.dy_l.plane_len(),
        x: 0,
        x_img: c.in_l.image_len(),
        x_row: s * g.in_w * ib,
        x_col: s * ib,
        x_ch: if ib == 1 { c.in_l.plane_len() } else { 1 },
    };
    let noc = blocks.len();
    let tile_at = |ci: usize| (tap * c.icw + ci) * c.maxg * lanes;
    if ib == 1 {
        // All the unit's planes in one tile.
        sw.x = c.in_l.index(imgs.start, chans.start, iy, ix);
        let acc = &mut acc[tile_at(0)..];
        match (noc, chans.len()) {
            (1, n) => stem_tile::<V, 1>(c, &sw, n, acc),
            (2, n) => stem_tile::<V, 2>(c, &sw, n, acc),
            (3, n) => stem_tile::<V, 3>(c, &sw, n, acc),
            (4, n) => stem_tile::<V, 4>(c, &sw, n, acc),
            (b, _) => unreachable!("a group of {b} blocks"),
        }
        return;
    }
    let nci = tile_channels(lanes, noc);
    // The tiles of the block's channel chunks take turns on blocks of rows, so that the
    // rows' `dY` (read by every chunk) is still in L1 for the next chunk.
    let sub_rows = if sw.imgs == 1 {
        (SUB_PIXELS / sw.cols.max(1)).max(1)
    } else {
        sw.rows
    };
    let x0 = c.in_l.index(imgs.start, chans.start, iy, ix);
    let full = sw;
    for r0 in (0..full.rows).step_by(sub_rows.max(1)) {
        let rows = sub_rows.min(full.rows - r0);
        for ci0 in (0..ib).step_by(nci) {
            if chans.start + ci0 >= g.in_channels {
                break;
            }
            let sw = Sweep {
                rows,
                dy: full.dy + r0 * full.dy_row,
                x: x0 + r0 * full.x_row + ci0,
                ..full
            };
            let acc = &mut acc[tile_at(ci0)..];
            match (lanes, noc) {
                (16, 1) => tile::<V, true, 1, { tile_channels(16, 1) }>(c, &sw, acc),
                (16, 2) => tile::<V, true, 2, { tile_channels(16, 2) }>(c, &sw, acc),
                (8, 1) => tile::<V, true, 1, { tile_channels(8, 1) }>(c, &sw, acc),
                (8, 2) => tile::<V, true, 2, { tile_channels(8, 2) }>(c, &sw, acc),
                (4, 1) => tile::<V, true, 1, { tile_channels(4, 1) }>(c, &sw, acc),
                (4, 2) => tile::<V, true, 2, { tile_channels(4, 2) }>(c, &sw, acc),
                (l, b) => unreachable!("{l} lanes, a group of {b} blocks"),
            }
        }
    }
}

/// The stem's tile: `n` (1 to [`STEM_GROUP`]) planes x `NOC` blocks.
fn stem_tile<V: Vector, const NOC: usize>(c: &Ctx, sw: &Sweep, n: usize, acc: &mut [f32]) {
    match n {
        1 => tile::<V, false, NOC, 1>(c, sw, acc),
        2 => tile::<V, false, NOC, 2>(c, sw, acc),
        3 => tile::<V, false, NOC, 3>(c, sw, acc),
        4 => tile::<V, false, NOC, 4>(c, sw, acc),
        _ => unreachable!("a stem unit of {n} planes"),
    }
}

/// One register tile: `NCI` input channels x `NOC` output blocks of one tap, summed over
/// the pixels of `sw` into `acc` (`[ci][j < maxg][lane]`, loaded before and stored after).
/// `BLOCKED`: the channels are consecutive floats (`x_ch` is 1), so their broadcasts are
/// constant offsets from one pointer.
#[inline(never)]
fn tile<V: Vector, const BLOCKED: bool, const NOC: usize, const NCI: usize>(c: &Ctx, sw: &Sweep, acc: &mut [f32]) {
    let lanes = V::LANES;
    let stride = c.maxg * lanes;
    assert!(NOC <= c.maxg && acc.len() >= (NCI - 1) * stride + NOC * lanes);
    assert!(!BLOCKED || sw.x_ch == 1);
    if sw.imgs == 0 || sw.rows == 0 || sw.cols == 0 {
        return;
    }
    let (li, lr, lc) = (sw.imgs - 1, sw.rows - 1, sw.cols - 1);
    // The last floats read: `dY` of the last pixel's last block, and the last pixel's
    // last channel.
    let dy_last = sw.dy + li * sw.dy_img + lr * sw.dy_row + lc * lanes + (NOC - 1) * sw.dy_blk + lanes;
    let x_last = sw.x + li * sw.x_img + lr * sw.x_row + lc * sw.x_col + (NCI - 1) * sw.x_ch + 1;
    assert!(
        dy_last <= c.dy.len() && x_last <= c.input.len(),
        "filter_grad: tile out of bounds"
    );
    let mut a: [[V; NOC]; NCI] =
        core::array::from_fn(|ci| core::array::from_fn(|j| V::load(&acc[ci * stride + j * lanes..])));
    // Tiles of fewer than 8 accumulators (the stem's: 3 planes x 1 or 2 blocks) would
    // wait on the FMA latency: they alternate pixels between two sets, added at the end.
    let dual = NOC * NCI < 8;
    let mut b = [[V::ZERO; NOC]; NCI];
    let (x_ch, dy_blk) = (if BLOCKED { 1 } else { sw.x_ch }, sw.dy_blk);
    for i in 0..sw.imgs {
        for r in 0..sw.rows {
            // SAFETY: every pixel, block and channel read below is at most the last one
            // bounded by the assert above (all offsets grow with i, r, the column, j and
            // ci), so the pointers stay inside `dy` and `input`.
            unsafe {
                let mut d = c.dy.as_ptr().add(sw.dy + i * sw.dy_img + r * sw.dy_row);
                let mut x = c.input.as_ptr().add(sw.x + i * sw.x_img + r * sw.x_row);
                let mut left = sw.cols;
                if dual {
                    while left >= 2 {
                        pixel::<V, NOC, NCI>(&mut a, d, x, dy_blk, x_ch);
                        pixel::<V, NOC, NCI>(&mut b, d.add(lanes), x.add(sw.x_col), dy_blk, x_ch);
                        d = d.add(2 * lanes);
                        x = x.add(2 * sw.x_col);
                        left -= 2;
                    }
                }
                for _ in 0..left {
                    pixel::<V, NOC, NCI>(&mut a, d, x, dy_blk, x_ch);
                    d = d.add(lanes);
                    x = x.add(sw.x_col);
                }
            }
        }
    }
    if dual {
        for (ra, rb) in a.iter_mut().zip(&b) {
            for (va, &vb) in ra.iter_mut().zip(rb) {
                *va = *va + vb;
            }
        }
    }
    for (ci, row) in a.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            v.store(&mut acc[ci * stride + j * lanes..]);
        }
    }
}

/// One pixel of a tile: the `NOC` vectors of `dY` at `d`, `dy_blk` apart, times the `NCI`
/// input scalars at `x`, `x_ch` apart, into `a`.
///
/// # Safety
/// `d + j * dy_blk .. + V::LANES` for `j < NOC` and `x + ci * x_ch` for `ci < NCI` lie
/// inside live allocations of `f32`s.
#[inline(always)]
unsafe fn pixel<V: Vector, const NOC: usize, const NCI: usize>(
    a: &mut [[V; NOC]; NCI],
    d: *const f32,
    x: *const f32,
    dy_blk: usize,
    x_ch: usize,
) {
    // SAFETY: the caller guarantees these reads are in bounds.
    let dv: [V; NOC] = core::array::from_fn(|j| unsafe { V::load_at(d, j * dy_blk) });
    for (ci, row) in a.iter_mut().enumerate() {
        // SAFETY: as above.
        let xv = V::splat(unsafe { *x.add(ci * x_ch) });
        for (acc, &dv) in row.iter_mut().zip(&dv) {
            *acc = dv.mul_add(xv, *acc);
        }
    }
}

/// The scalar twin of [`filter_grad`] at the plan's vector, [`crate::simd::F32xBlock`]:
/// same layouts and contract (`dy` in blocks of [`crate::simd::BLOCK`], `dw +=`, OIHW),
/// plain loops over every output channel, input channel, tap and pixel, summed in f64,
/// one thread. [`filter_grad_naive_with_block`] takes other `dy` blocks.
pub fn filter_grad_naive(g: &ConvGeometry, input: &[f32], in_block: usize, dy: &[f32], dw: &mut [f32]) {
    filter_grad_naive_with_block(g, input, in_block, dy, crate::simd::BLOCK, dw);
}

/// [`filter_grad_naive`] for `dy` in blocks of `dy_block` (the twin of
/// `filter_grad::<V>` with `V::LANES == dy_block`).
pub fn filter_grad_naive_with_block(
    g: &ConvGeometry,
    input: &[f32],
    in_block: usize,
    dy: &[f32],
    dy_block: usize,
    dw: &mut [f32],
) {
    let in_l = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, in_block);
    let dy_l = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, dy_block);
    let kk = g.kernel_h * g.kernel_w;
    assert_eq!(input.len(), in_l.len(), "filter_grad_naive: input length");
    assert_eq!(dy.len(), dy_l.len(), "filter_grad_naive: dy length");
    assert_eq!(
        dw.len(),
        g.out_channels * g.in_channels * kk,
        "filter_grad_naive: dw length"
    );
    let (s, pad) = (g.stride, g.pad);
    for k in 0..g.out_channels {
        for ch in 0..g.in_channels {
            for ky in 0..g.kernel_h {
                for kx in 0..g.kernel_w {
                    let mut acc = 0.0f64;
                    for n in 0..g.batch {
                        for oy in valid(g.out_h, g.in_h, ky, s, pad) {
                            for ox in valid(g.out_w, g.in_w, kx, s, pad) {
                                let (iy, ix) = (oy * s + ky - pad, ox * s + kx - pad);
                                acc += dy[dy_l.index(n, k, oy, ox)] as f64 * input[in_l.index(n, ch, iy, ix)] as f64;
                            }
                        }
                    }
                    dw[((k * g.in_channels + ch) * g.kernel_h + ky) * g.kernel_w + kx] += acc as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::conv_backward_filter_naive;
    use crate::kernels::test_util::{max_rel_err, random, square_conv, strided_1x1_shapes, zoo_convs};
    use crate::layout::to_blocked;
    use crate::rng::Rng;
    use wide::{f32x16, f32x4, f32x8};

    /// A random problem: NCHW input and output gradient, and the gradient already in
    /// `dw` (so that every check also checks that the kernels add to it).
    struct Problem {
        x: Vec<f32>,
        dy: Vec<f32>,
        dw0: Vec<f32>,
    }

    impl Problem {
        fn new(g: &ConvGeometry, seed: u64) -> Self {
            let mut rng = Rng::new(seed);
            Problem {
                x: random(&mut rng, g.batch * g.in_image()),
                dy: random(&mut rng, g.batch * g.out_image()),
                dw0: random(&mut rng, g.out_channels * g.col_rows()),
            }
        }

        /// The input in blocks of `in_block`, its padding channels holding garbage
        /// (finite) that the kernels must ignore.
        fn input(&self, g: &ConvGeometry, in_block: usize) -> Vec<f32> {
            let l = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, in_block);
            let mut xb = vec![0.0; l.len()];
            to_blocked(&self.x, l, &mut xb);
            for n in 0..g.batch {
                for c in g.in_channels..l.padded_channels() {
                    for y in 0..g.in_h {
                        for x in 0..g.in_w {
                            xb[l.index(n, c, y, x)] = -1e3 - (c + y + x) as f32;
                        }
                    }
                }
            }
            xb
        }

        /// The output gradient in blocks of `lanes`, its padding channels holding
        /// garbage (finite) that the kernels must ignore.
        fn dy(&self, g: &ConvGeometry, lanes: usize) -> Vec<f32> {
            let l = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, lanes);
            let mut b = vec![0.0; l.len()];
            to_blocked(&self.dy, l, &mut b);
            for n in 0..g.batch {
                for k in g.out_channels..l.padded_channels() {
                    for y in 0..g.out_h {
                        for x in 0..g.out_w {
                            b[l.index(n, k, y, x)] = 1e3 + (k + y + x) as f32;
                        }
                    }
                }
            }
            b
        }

        /// `dw0` plus the gradient from the NCHW f64 reference.
        fn expected(&self, g: &ConvGeometry) -> Vec<f32> {
            let mut dw = self.dw0.clone();
            conv_backward_filter_naive(g, &self.x, &self.dy, &mut dw, None);
            dw
        }

        fn fast<V: Vector>(&self, g: &ConvGeometry, in_block: usize) -> Vec<f32> {
            let (xb, dyb) = (self.input(g, in_block), self.dy(g, V::LANES));
            let mut dw = self.dw0.clone();
            filter_grad::<V>(g, &xb, in_block, &dyb, &mut dw);
            dw
        }

        fn naive(&self, g: &ConvGeometry, in_block: usize, lanes: usize) -> Vec<f32> {
            let (xb, dyb) = (self.input(g, in_block), self.dy(g, lanes));
            let mut dw = self.dw0.clone();
            filter_grad_naive_with_block(g, &xb, in_block, &dyb, lanes, &mut dw);
            dw
        }
    }

    /// The fast kernel at `V` and the naive twin against the f64 reference (and each
    /// other); returns the larger error.
    fn check<V: Vector>(g: &ConvGeometry, in_block: usize, seed: u64) -> f32 {
        let p = Problem::new(g, seed);
        let want = p.expected(g);
        let fast = p.fast::<V>(g, in_block);
        let naive = p.naive(g, in_block, V::LANES);
        let (ef, en, efn) = (
            max_rel_err(&fast, &want),
            max_rel_err(&naive, &want),
            max_rel_err(&fast, &naive),
        );
        let what = format!("{g:?} lanes {} in_block {in_block}", V::LANES);
        assert!(
            ef < 1e-5 && en < 1e-5 && efn < 1e-5,
            "{what}: fast {ef:e}, naive {en:e}, fast vs naive {efn:e}"
        );
        ef.max(en)
    }

    /// Odd shapes: channels off the block, h != w, batch 3, 1x1 stride 2, the 7x7/2 stem
    /// on NCHW input, images larger than a chunk and smaller than one row of it.
    fn odd_shapes() -> Vec<ConvGeometry> {
        vec![
            square_conv(1, 3, 7, 9, 5, 3, 1, 1),
            square_conv(2, 5, 7, 9, 19, 3, 2, 1),
            square_conv(3, 19, 2, 3, 33, 3, 1, 1),
            square_conv(1, 33, 1, 1, 3, 1, 1, 0),
            square_conv(2, 19, 9, 7, 5, 1, 2, 0),
            square_conv(1, 3, 13, 11, 19, 7, 2, 3),
            square_conv(2, 3, 21, 18, 64, 7, 2, 3),
            square_conv(1, 5, 9, 9, 33, 7, 1, 3),
            square_conv(2, 33, 7, 9, 19, 1, 1, 0),
            square_conv(1, 19, 5, 5, 5, 3, 1, 0),
            square_conv(1, 5, 4, 5, 7, 3, 1, 3),
            square_conv(3, 19, 20, 37, 21, 3, 1, 1),
            square_conv(1, 17, 6, 41, 20, 3, 2, 1),
            square_conv(3, 16, 4, 30, 64, 1, 2, 0),
            square_conv(2, 7, 6, 29, 70, 3, 3, 2),
            square_conv(1, 33, 3, 50, 5, 5, 1, 2),
            square_conv(3, 40, 5, 6, 70, 3, 1, 1),
        ]
    }

    fn odd_shapes_at<V: Vector>() {
        let mut worst = 0f32;
        for (i, g) in odd_shapes().iter().enumerate() {
            for in_block in [1, V::LANES] {
                worst = worst.max(check::<V>(g, in_block, 100 + i as u64));
            }
        }
        println!("odd shapes, {} lanes: max relative error {worst:e}", V::LANES);
    }

    #[test]
    fn filter_grad_odd_shapes_match_the_reference_at_4_lanes() {
        odd_shapes_at::<f32x4>();
    }

    #[test]
    fn filter_grad_odd_shapes_match_the_reference_at_8_lanes() {
        odd_shapes_at::<f32x8>();
    }

    #[test]
    fn filter_grad_odd_shapes_match_the_reference_at_16_lanes() {
        odd_shapes_at::<f32x16>();
    }

    /// Strided 1x1 convolutions on their subsampled input and on the strided tiles: bit
    /// for bit the same, and within 1e-5 of the f64 reference.
    #[test]
    fn filter_grad_subsampled_strided_1x1_matches_the_strided_tiles() {
        fn at<V: Vector>() {
            let shapes = strided_1x1_shapes();
            for (i, g) in shapes.iter().enumerate() {
                let p = Problem::new(g, 40 + i as u64);
                let (xb, dyb) = (p.input(g, V::LANES), p.dy(g, V::LANES));
                let run = |subsample| {
                    let mut dw = p.dw0.clone();
                    filter_grad_tuned::<V>(g, &xb, V::LANES, &dyb, &mut dw, Some(subsample));
                    dw
                };
                let (sub, strided) = (run(true), run(false));
                let what = format!("{g:?} lanes {}", V::LANES);
                let err = max_rel_err(&sub, &p.expected(g));
                assert!(err < 1e-5, "{what}: {err:e}");
                assert!(sub == strided, "{what}: subsampled and strided differ");
            }
        }
        at::<f32x4>();
        at::<f32x8>();
        at::<f32x16>();
    }

    fn zoo_at<V: Vector>(name: &str, batch: usize, size: usize) {
        let mut worst = 0f32;
        for (i, (g, names)) in zoo_convs(name, batch, size).iter().enumerate() {
            let in_block = if g.in_channels < 4 { 1 } else { V::LANES };
            let e = check::<V>(g, in_block, 20 + i as u64);
            println!("{name} {names:?}: {e:e}");
            worst = worst.max(e);
        }
        println!("{name}, {} lanes: max relative error {worst:e}", V::LANES);
    }

    #[test]
    fn filter_grad_resnet20_convs_match_the_reference() {
        zoo_at::<f32x4>("resnet20", 2, 8);
        zoo_at::<f32x8>("resnet20", 2, 8);
        zoo_at::<f32x16>("resnet20", 2, 8);
    }

    #[test]
    fn filter_grad_resnet50_convs_match_the_reference() {
        zoo_at::<f32x4>("resnet50", 1, 32);
        zoo_at::<f32x8>("resnet50", 1, 32);
        zoo_at::<f32x16>("resnet50", 1, 32);
    }

    /// The plain path (many units, sums straight into `dw`) and the partial sums (few
    /// units, rows cut into ranges that start inside images) on 1 to 3 threads: right
    /// each time, and bit-identical when repeated on the same thread count.
    #[test]
    fn filter_grad_is_deterministic_on_every_thread_count() {
        let shapes = [
            square_conv(3, 16, 9, 11, 16, 3, 1, 1),
            square_conv(2, 64, 6, 7, 96, 3, 1, 1),
            square_conv(2, 3, 15, 17, 64, 7, 2, 3),
        ];
        for (i, g) in shapes.iter().enumerate() {
            let p = Problem::new(g, 70 + i as u64);
            let want = p.expected(g);
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("a pool");
                for in_block in [1, 16] {
                    let a = pool.install(|| p.fast::<f32x16>(g, in_block));
                    let b = pool.install(|| p.fast::<f32x16>(g, in_block));
                    assert!(a == b, "{g:?} on {threads} threads: two runs differ");
                    let e = max_rel_err(&a, &want);
                    assert!(e < 1e-5, "{g:?} on {threads} threads: {e:e}");
                }
            }
        }
    }

    #[test]
    fn filter_grad_adds_to_the_gradient() {
        let g = square_conv(2, 19, 6, 7, 21, 3, 1, 1);
        let p = Problem::new(&g, 5);
        let (xb, dyb) = (p.input(&g, 8), p.dy(&g, 8));
        let mut once = vec![0.0; p.dw0.len()];
        filter_grad::<f32x8>(&g, &xb, 8, &dyb, &mut once);
        let mut twice = once.clone();
        filter_grad::<f32x8>(&g, &xb, 8, &dyb, &mut twice);
        let doubled: Vec<f32> = once.iter().map(|v| 2.0 * v).collect();
        assert!(max_rel_err(&twice, &doubled) < 1e-6);
        let mut naive = once.clone();
        filter_grad_naive_with_block(&g, &xb, 8, &dyb, 8, &mut naive);
        assert!(max_rel_err(&naive, &doubled) < 1e-5);
    }

    #[test]
    fn filter_grad_propagates_nan_in_dy() {
        // A NaN in dY for channel 5 at output (2, 3): every tap of every input channel of
        // output channel 5 reads an input pixel there (padding 1 never clips it), so that
        // whole filter is NaN and every other stays finite.
        let g = square_conv(2, 19, 6, 7, 21, 3, 1, 1);
        let mut p = Problem::new(&g, 6);
        p.dy[((21 + 5) * g.out_h + 2) * g.out_w + 3] = f32::NAN;
        fn at<V: Vector>(g: &ConvGeometry, p: &Problem) {
            for in_block in [1, V::LANES] {
                let fast = p.fast::<V>(g, in_block);
                let naive = p.naive(g, in_block, V::LANES);
                for (i, (&f, &n)) in fast.iter().zip(&naive).enumerate() {
                    let nan = i / g.col_rows() == 5;
                    assert_eq!(f.is_nan(), nan, "lanes {} dw[{i}] = {f}", V::LANES);
                    assert_eq!(n.is_nan(), nan, "naive dw[{i}] = {n}");
                }
            }
        }
        at::<f32x4>(&g, &p);
        at::<f32x8>(&g, &p);
        at::<f32x16>(&g, &p);
    }

    #[test]
    fn filter_grad_split_plan_fills_the_threads_within_the_partials_budget() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a pool");
        pool.install(|| {
            let tasks = split::parts(usize::MAX);
            // (units, major, rows, (input, dy) floats, unit floats)
            let cases = [
                // ResNet-20 16-channel 3x3 at batch 128 and 1: one unit, rows split.
                (1, 1, 128 * 32, (1 << 21, 1 << 21), 4608),
                (1, 1, 32, (1 << 14, 1 << 14), 4608),
                // ResNet-50 3x3 512 at batch 1: many units, no partials.
                (512, 16, 7, (25088, 25088), 4608),
                // ResNet-50 1x1 64 -> 256 at batch 8: dY 4x the input, rows split.
                (32, 8, 8 * 56, (1 << 21, 1 << 23), 512),
                // One image row: cannot reach the task count; takes what there is.
                (1, 1, 1, (64, 64), 4608),
            ];
            for (units, major, rows, sizes, ul) in cases {
                let (pr, pw) = split_plan(units, major, rows, sizes, ul);
                assert!(pr >= 1 && pr <= rows && pw >= 1 && pw <= units, "{pr} x {pw}");
                assert!(
                    pr * pw >= tasks.min(units * rows),
                    "{units} units x {rows} rows: {pr} x {pw}"
                );
                assert!(pr == 1 || pr * units * ul <= MAX_PARTIALS);
            }
            assert_eq!(split_plan(512, 16, 7, (25088, 25088), 4608).0, 1);
            assert!(split_plan(32, 8, 8 * 56, (1 << 21, 1 << 23), 512).0 > 1);
        });
    }

    #[test]
    fn filter_grad_groups_are_the_split_ranges() {
        for ocbs in 1usize..40 {
            let ngroups = ocbs.div_ceil(2);
            let c = Ctx {
                g: square_conv(1, 1, 1, 1, 1, 1, 1, 0),
                input: &[],
                dy: &[],
                in_l: Blocked::nchw(1, 1, 1, 1),
                dy_l: Blocked::nchw(1, 1, 1, 1),
                ocbs,
                ngroups,
                icw: 1,
                icgs: 1,
                maxg: 2,
                unit_len: 1,
                icg_major: false,
            };
            let want: Vec<_> = split::ranges(ocbs, ngroups).collect();
            let got: Vec<_> = (0..ngroups).map(|gi| c.group(gi)).collect();
            assert_eq!(got, want);
            assert!(got.iter().all(|r| r.len() <= 2));
        }
    }

    #[test]
    fn filter_grad_naive_reads_the_plan_block() {
        let g = square_conv(1, 5, 4, 5, 7, 3, 1, 1);
        let p = Problem::new(&g, 8);
        let lanes = crate::simd::BLOCK;
        let (xb, dyb) = (p.input(&g, lanes), p.dy(&g, lanes));
        let mut dw = p.dw0.clone();
        filter_grad_naive(&g, &xb, lanes, &dyb, &mut dw);
        assert!(max_rel_err(&dw, &p.expected(&g)) < 1e-5);
    }
}
