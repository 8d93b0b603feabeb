//! bf16 products for the blocked Winograd convolution (`--precision bf16`): the
//! transformed filters `U` and inputs `V` rounded to bf16 (8 bits of mantissa), their
//! products summed in f32 with `vdpbf16ps` (AVX512_BF16), which does two multiply-adds
//! per f32 lane, twice the f32 FMA rate. Transforms, batch norm, gradients of the
//! weights and the weights themselves stay f32, as PyTorch's CPU autocast keeps them.
//!
//! Layouts (16-lane blocks only, the AVX-512 build's): `U16[xi][ob][ci / 2][lane][2]`,
//! the two input channels of a pair side by side for each output lane (the f32 `U` is
//! `U[xi][ob][ci][lane]`), and `V16` exactly as `V` (`[xi][icb][t][lane]`), whose input
//! channels `2p, 2p + 1` are adjacent lanes: one 32-bit broadcast feeds a pair.

use super::amx;
use super::moments::{Gather, TaskGather};
use super::{BlockedEpilogue, Residual};
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::scratch::with_scratch;
use crate::kernels::shared_out::SharedOut;
use crate::layout::Blocked;
use rayon::prelude::*;
use std::ops::Range;

/// Lanes of the blocks these kernels take.
pub const LANES: usize = 16;

/// The vector of one output block: 16 lanes on every build, as these kernels' blocks.
pub(crate) type V16 = wide::f32x16;

/// Bytes of one task's input pixels in bf16 in [`pointwise`]: well inside the L2, beside
/// the filters and the output rows.
const POINTWISE_CHUNK_BYTES: usize = 128 << 10;

/// Whether this CPU runs the bf16 products (AVX-512F and AVX512_BF16).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` rounded to the nearest bf16 (ties to even), as `vcvtne2ps2bf16` rounds; NaN stays
/// a (quiet) NaN.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// The f32 value of a bf16.
#[inline(always)]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `U16` from the f32 transformed filters `u` (`positions` x `ocb` blocks x `cp` input
/// channels x 16 lanes, as `transform_filters` lays them out): the same length.
pub fn pack_filters(u: &[f32], positions: usize, ocb: usize, cp: usize, out: &mut [u16]) {
    let l = LANES;
    assert!(cp.is_multiple_of(2), "bf16: an even number of input channels");
    assert_eq!(u.len(), positions * ocb * cp * l, "bf16: transformed filters length");
    assert_eq!(out.len(), u.len(), "bf16: packed filters length");
    for (row, packed) in u.chunks_exact(cp * l).zip(out.chunks_exact_mut(cp * l)) {
        pack_tile(packed, |lane, c| row[c * l + lane]);
    }
}

/// Fills `tile` (input-channel pairs of 16 output lanes, `[c / 2][lane][2]`: the layout
/// every bf16 packer writes) with `weight(lane, c)` rounded to bf16.
pub(crate) fn pack_tile(tile: &mut [u16], weight: impl Fn(usize, usize) -> f32) {
    for (p, pair) in tile.chunks_exact_mut(2 * LANES).enumerate() {
        for lane in 0..LANES {
            for j in 0..2 {
                pair[lane * 2 + j] = to_bf16(weight(lane, 2 * p + j));
            }
        }
    }
}

/// Length of [`pack_pointwise`]'s output for `c` input and `k` output channels.
pub fn pointwise_len(c: usize, k: usize) -> usize {
    k.div_ceil(LANES) * LANES * c.next_multiple_of(LANES)
}

/// The weights of a 1x1 convolution of `c` input and `k` output channels (`weight[k][c]`,
/// OIHW), or with `transposed` of its backward-data (`weight[c][k]` read as `k x c`...
/// that is, the convolution from `k` channels back to `c`), packed for [`pointwise`] as
/// [`pack_filters`] packs one Winograd position: `[ob][ci / 2][lane][2]`, zero-padded.
pub fn pack_pointwise(weight: &[f32], c: usize, k: usize, transposed: bool, out: &mut [u16]) {
    // The packed convolution's input and output channels.
    let (ci_n, co_n) = if transposed { (k, c) } else { (c, k) };
    let (l, cp) = (LANES, ci_n.next_multiple_of(LANES));
    assert_eq!(weight.len(), c * k, "bf16: 1x1 weights length");
    assert_eq!(out.len(), pointwise_len(ci_n, co_n), "bf16: packed 1x1 weights length");
    out.par_chunks_exact_mut(cp * l).enumerate().for_each(|(ob, block)| {
        pack_tile(block, |lane, i| {
            let o = ob * l + lane;
            match (o < co_n && i < ci_n, transposed) {
                (false, _) => 0.0,
                (true, false) => weight[o * c + i],
                // The backward-data from `k` channels to `c`: output `o` is forward
                // input `o`, input `i` is forward output `i`.
                (true, true) => weight[i * c + o],
            }
        })
    });
}

/// `out = conv1x1(input)` with weights from [`pack_pointwise`], for a 1x1 unpadded
/// convolution `g` of any stride whose input and output are blocked in 16 lanes (every
/// output value written, padding channels zero): the products in bf16 summed in f32.
/// Tasks take one image's range of output pixels each, rounding their input pixels to
/// bf16 once for all output blocks.
pub fn pointwise(g: &ConvGeometry, input: &[f32], w16: &[u16], out: &mut [f32]) {
    pointwise_with(g, input, w16, &BlockedEpilogue::default(), out, None);
}

/// [`pointwise`] with the epilogue `ep` (any but an in-place residual: the sums
/// overwrite the output) applied to each task's output vectors once stored, and the
/// batch-norm sums of `gather` taken from them, while both are in cache.
pub fn pointwise_with(
    g: &ConvGeometry,
    input: &[f32],
    w16: &[u16],
    ep: &BlockedEpilogue,
    out: &mut [f32],
    gather: Option<Gather>,
) {
    pointwise_on(g, input, w16, (ep, out, gather), amx::available());
}

/// [`pointwise_with`] on AMX tiles when `tiles` (and the input blocks pair up), else on
/// AVX512_BF16 or the naive twin: the tests run both on AMX CPUs.
fn pointwise_on(
    g: &ConvGeometry,
    input: &[f32],
    w16: &[u16],
    (ep, out, gather): (&BlockedEpilogue, &mut [f32], Option<Gather>),
    tiles: bool,
) {
    assert!(
        g.kernel_h == 1 && g.kernel_w == 1 && g.pad == 0,
        "bf16: pointwise takes unpadded 1x1 convolutions, found {g:?}"
    );
    let l = LANES;
    let xs = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, l);
    let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, l);
    assert_eq!(input.len(), xs.len(), "bf16: 1x1 input length");
    assert_eq!(out.len(), ys.len(), "bf16: 1x1 output length");
    assert_eq!(
        w16.len(),
        pointwise_len(g.in_channels, g.out_channels),
        "bf16: 1x1 weights length"
    );
    assert!(
        !matches!(ep.residual, Residual::InPlace),
        "bf16: pointwise cannot add an in-place residual"
    );
    let (icb, ocb, px, in_px) = (xs.blocks(), ys.blocks(), g.out_h * g.out_w, g.in_h * g.in_w);
    let chunk = (POINTWISE_CHUNK_BYTES / (icb * l * 2).max(1))
        .max(TILES_PER_CALL[1])
        .clamp(1, px.max(1));
    let chunks = px.div_ceil(chunk);
    let records = gather.map(|m| TaskGather::new(m, g.batch * chunks, ys.padded_channels(), ys.len()));
    if g.batch == 0 || px == 0 || ocb == 0 {
        return;
    }
    let cp = icb * l;
    let shared = SharedOut::new(out);
    let tiles = tiles && icb.is_multiple_of(2);
    // The epilogue and the gather over a task's output vectors, once its sums are stored.
    let finish = |task: usize, n: usize, (t0, tn): (usize, usize)| {
        for b in 0..ocb {
            let at = ((n * ocb + b) * px + t0) * l;
            if !ep.is_identity() {
                let bias = ep.bias_of::<V16>(b);
                for i in (at..at + tn * l).step_by(l) {
                    ep.store::<V16>(shared.load::<V16>(i), bias, i, &shared);
                }
            }
            if let Some(records) = &records {
                records.add_run::<V16>(task, &shared, at, tn, b);
            }
        }
    };
    (0..g.batch * chunks).into_par_iter().for_each(|task| {
        let (n, t0) = (task / chunks, (task % chunks) * chunk);
        let tn = chunk.min(px - t0);
        if tiles {
            // Tile rows: each pixel's 32 input channels of a pair of blocks in a row,
            // the rows past `tn` zero.
            let (kbs, tpad) = (icb / 2, tn.next_multiple_of(amx::STEP_PIXELS));
            with_scratch((kbs * tpad * amx::ROW).div_ceil(2), |s| {
                let rows = scratch_u16(s, kbs * tpad * amx::ROW);
                for b in 0..icb {
                    let block = &input[(n * icb + b) * in_px * l..(n * icb + b + 1) * in_px * l];
                    let half = &mut rows[(b / 2) * tpad * amx::ROW + (b % 2) * l..];
                    round_pixels(g, block, t0..t0 + tn, (half, amx::ROW));
                    for t in tn..tpad {
                        half[t * amx::ROW..t * amx::ROW + l].fill(0);
                    }
                }
                let o = amx::OutRows {
                    at: (n * ocb * px + t0) * l,
                    block: px * l,
                };
                amx::pointwise_products(rows, (kbs, tpad, tn), w16, ocb, &shared, o);
            });
            finish(task, n, (t0, tn));
            return;
        }
        with_scratch((icb * tn * l).div_ceil(2), |s| {
            let v16 = scratch_u16(s, icb * tn * l);
            for b in 0..icb {
                let block = &input[(n * icb + b) * in_px * l..(n * icb + b + 1) * in_px * l];
                round_pixels(g, block, t0..t0 + tn, (&mut v16[b * tn * l..(b + 1) * tn * l], l));
            }
            let mut cb = 0;
            while cb < ocb {
                let rb = (ocb - cb).min(4);
                let mut t = 0;
                while t < tn {
                    let rt = TILES_PER_CALL[rb].min(tn - t);
                    let at = ((n * ocb + cb) * px + t0 + t) * l;
                    // Rows `r * px * l` apart from `at`: blocks `cb..cb + rb` of image `n`,
                    // pixels `t0 + t..t0 + t + rt`, inside `out`; this task alone writes
                    // its pixel range.
                    assert!(at + ((rb - 1) * px + rt) * l <= shared.len());
                    micro(
                        (rb, rt),
                        &w16[cb * cp * l..],
                        cp * l,
                        (&v16[t * l..], tn * l),
                        icb,
                        (&shared, at, px * l),
                    );
                    t += rt;
                }
                cb += rb;
            }
        });
        finish(task, n, (t0, tn));
    });
    if let Some(records) = records {
        records.finish();
    }
}

/// The 16 input channels of `block` (one input block of one image of the unpadded 1x1
/// convolution `g`) under the output pixels `pixels`, rounded to bf16 into `dst`, one
/// pixel every `dst_step` values: a run of one output row at a time, whose input pixels
/// are `g.stride` apart.
fn round_pixels(g: &ConvGeometry, block: &[f32], pixels: Range<usize>, (dst, dst_step): (&mut [u16], usize)) {
    let l = LANES;
    let mut o = pixels.start;
    while o < pixels.end {
        let run = (g.out_w - o % g.out_w).min(pixels.end - o);
        let at = (o / g.out_w * g.in_w + o % g.out_w) * g.stride;
        convert_rows(
            (&block[at * l..], g.stride * l),
            run,
            (&mut dst[(o - pixels.start) * dst_step..], dst_step),
        );
        o += run;
    }
}

/// One micro-kernel call of `rb` blocks x `rt` tiles writing into `out` at `at` (rows
/// `row` apart): the instruction's kernel where the CPU has it, the naive sum elsewhere.
fn micro(
    (rb, rt): (usize, usize),
    u: &[u16],
    u_block: usize,
    (v, v_block): (&[u16], usize),
    icb: usize,
    (out, at, row): (&SharedOut, usize, usize),
) {
    let l = LANES;
    assert!(u.len() >= (rb - 1) * u_block + icb * l * l && v.len() >= (icb - 1) * v_block + rt * l);
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has the instructions; `u` and `v` hold what the kernel reads
        // (asserted above); the output rows lie inside `out` (asserted by the caller)
        // and belong to this task alone.
        unsafe {
            x86::micro_dispatch(
                rb,
                rt,
                u.as_ptr(),
                u_block,
                v.as_ptr(),
                v_block,
                icb,
                out.ptr_at(at),
                row,
            )
        };
        return;
    }
    for r in 0..rb {
        for t in 0..rt {
            for lane in 0..l {
                out.write(
                    at + r * row + t * l + lane,
                    pair_sum(&u[r * u_block..], v, v_block, icb, t, lane),
                );
            }
        }
    }
}

/// One output lane of the naive twin: `sum_ci u[ci][lane] v[ci / 16][t][ci % 16]` over
/// `icb` input blocks (`v` blocks `v_block` apart), the pairs added in the instruction's
/// order (the odd product, then the even one).
fn pair_sum(u: &[u16], v: &[u16], v_block: usize, icb: usize, t: usize, lane: usize) -> f32 {
    let l = LANES;
    let mut acc = 0f32;
    for p in 0..icb * l / 2 {
        let (b, q) = (2 * p / l, 2 * p % l);
        let x = &v[b * v_block + t * l + q..];
        let w = &u[(p * l + lane) * 2..];
        acc = acc + from_bf16(w[1]) * from_bf16(x[1]) + from_bf16(w[0]) * from_bf16(x[0]);
    }
    acc
}

/// The first `len` halves of `floats` as `u16`s (`floats` holds at least `len / 2`).
pub(crate) fn scratch_u16(floats: &mut [f32], len: usize) -> &mut [u16] {
    if len == 0 {
        return &mut [];
    }
    assert!(floats.len() * 2 >= len, "bf16 scratch too short");
    // SAFETY: `f32` and `u16` have no invalid bit patterns, `u16`'s alignment divides
    // `f32`'s, and the `len` halves lie inside the borrowed floats (checked above).
    unsafe { std::slice::from_raw_parts_mut(floats.as_mut_ptr() as *mut u16, len) }
}

/// `out[i] = bf16(v[i])`.
pub(crate) fn convert(v: &[f32], out: &mut [u16]) {
    assert_eq!(v.len(), out.len(), "bf16: conversion lengths");
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has AVX-512F and AVX512_BF16 (checked just above).
        unsafe { x86::convert(v, out) };
        return;
    }
    for (o, &x) in out.iter_mut().zip(v) {
        *o = to_bf16(x);
    }
}

/// `count` rows of 16 values: `dst[i * dst_step + j] = bf16(src[i * src_step + j])` for
/// `j < 16` (as [`convert`] rounds).
pub(crate) fn convert_rows((src, src_step): (&[f32], usize), count: usize, (dst, dst_step): (&mut [u16], usize)) {
    let l = LANES;
    if count == 0 {
        return;
    }
    assert!(src.len() >= (count - 1) * src_step + l, "bf16: source rows");
    assert!(dst.len() >= (count - 1) * dst_step + l, "bf16: destination rows");
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has AVX-512F and AVX512_BF16 (checked just above); the rows lie
        // inside both slices (asserted above).
        unsafe { x86::convert_rows(src.as_ptr(), src_step, count, dst.as_mut_ptr(), dst_step) };
        return;
    }
    for i in 0..count {
        for j in 0..l {
            dst[i * dst_step + j] = to_bf16(src[i * src_step + j]);
        }
    }
}

/// `M[xi][r][t][lane] = sum_ci U16[xi][cb + r][ci][lane] V16[xi][ci / 16][t][ci % 16]`,
/// summed in f32, for output blocks `cb..cb + rb` (at most 4) and `tn` tiles, every one
/// of `positions` positions: the bf16 twin of the f32 Winograd products. `v16` and `m`
/// hold one position every `v_stride` and `m_stride` values.
#[allow(clippy::too_many_arguments)]
pub(crate) fn products(
    u16s: &[u16],
    positions: usize,
    cp: usize,
    ocb: usize,
    (cb, rb): (usize, usize),
    tn: usize,
    (v16, v_stride): (&[u16], usize),
    (m, m_stride): (&mut [f32], usize),
) {
    let l = LANES;
    let icb = cp / l;
    assert!(cb + rb <= ocb && (1..=4).contains(&rb) && cp.is_multiple_of(l));
    assert!(u16s.len() >= positions * ocb * cp * l);
    assert!(positions == 0 || (v16.len() >= (positions - 1) * v_stride + icb * tn * l));
    assert!(positions == 0 || (m.len() >= (positions - 1) * m_stride + rb * tn * l));
    #[cfg(target_arch = "x86_64")]
    if available() {
        // Whole 32-row steps on AMX tiles where the CPU has them, the rest on vectors.
        let on_tiles = if amx::available() {
            tn / amx::STEP_PIXELS * amx::STEP_PIXELS
        } else {
            0
        };
        for xi in 0..positions {
            let u = &u16s[(xi * ocb + cb) * cp * l..];
            let v = &v16[xi * v_stride..];
            let m = &mut m[xi * m_stride..];
            if on_tiles > 0 {
                amx::products(u, (cp, rb), on_tiles, (v, tn * l), (m, tn * l));
            }
            let mut t = on_tiles;
            while t < tn {
                let rt = TILES_PER_CALL[rb].min(tn - t);
                // SAFETY: the CPU has the instructions (checked just above); `u` holds `rb`
                // blocks of `cp x 16` values, `v` `icb` blocks of `tn x 16` and reads
                // tiles `t..t + rt <= tn`, `m` gets `rb` blocks of `tn x 16` (asserted above).
                unsafe {
                    x86::micro_dispatch(
                        rb,
                        rt,
                        u.as_ptr(),
                        cp * l,
                        v.as_ptr().add(t * l),
                        tn * l,
                        icb,
                        m.as_mut_ptr().add(t * l),
                        tn * l,
                    )
                };
                t += rt;
            }
        }
        return;
    }
    products_reference(u16s, positions, cp, ocb, (cb, rb), tn, (v16, v_stride), (m, m_stride));
}

/// Tiles per micro-kernel call by its number of output blocks (accumulators `rb x rt`
/// plus `rb` filter vectors and the broadcast within 32 registers).
const TILES_PER_CALL: [usize; 5] = [0, 16, 12, 8, 6];

/// [`products`] one value at a time, the pairs summed in the instruction's order: the
/// naive twin that the tests hold the kernel to, and the path of CPUs without it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn products_reference(
    u16s: &[u16],
    positions: usize,
    cp: usize,
    ocb: usize,
    (cb, rb): (usize, usize),
    tn: usize,
    (v16, v_stride): (&[u16], usize),
    (m, m_stride): (&mut [f32], usize),
) {
    let l = LANES;
    for xi in 0..positions {
        for r in 0..rb {
            let u = &u16s[((xi * ocb + cb + r) * cp) * l..];
            for t in 0..tn {
                for lane in 0..l {
                    let v = &v16[xi * v_stride..];
                    m[xi * m_stride + (r * tn + t) * l + lane] = pair_sum(u, v, tn * l, cp / l, t, lane);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::convert`] 32 values at a time.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn convert(v: &[f32], out: &mut [u16]) {
        let whole = v.len() / 32 * 32;
        for i in (0..whole).step_by(32) {
            // SAFETY: `i + 32 <= v.len() == out.len()`.
            unsafe {
                let lo = _mm512_loadu_ps(v.as_ptr().add(i));
                let hi = _mm512_loadu_ps(v.as_ptr().add(i + 16));
                let packed = _mm512_cvtne2ps_pbh(hi, lo);
                _mm512_storeu_si512(
                    out.as_mut_ptr().add(i) as *mut __m512i,
                    core::mem::transmute::<__m512bh, __m512i>(packed),
                );
            }
        }
        let mut i = whole;
        if v.len() - i >= 16 {
            // SAFETY: `i + 16 <= v.len() == out.len()`.
            unsafe {
                let packed = _mm512_cvtneps_pbh(_mm512_loadu_ps(v.as_ptr().add(i)));
                _mm256_storeu_si256(
                    out.as_mut_ptr().add(i) as *mut __m256i,
                    core::mem::transmute::<__m256bh, __m256i>(packed),
                );
            }
            i += 16;
        }
        for j in i..v.len() {
            out[j] = super::to_bf16(v[j]);
        }
    }

    /// [`super::convert_rows`].
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX512_BF16; `count` rows of 16 values `src_step`
    /// apart are readable at `src` and as many `dst_step` apart writable at `dst`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn convert_rows(src: *const f32, src_step: usize, count: usize, dst: *mut u16, dst_step: usize) {
        for i in 0..count {
            // SAFETY: row `i < count`, inside both ranges by the function's contract.
            unsafe {
                let packed = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.add(i * src_step)));
                _mm256_storeu_si256(
                    dst.add(i * dst_step) as *mut __m256i,
                    core::mem::transmute::<__m256bh, __m256i>(packed),
                );
            }
        }
    }

    /// Picks the micro-kernel for `rb <= 4` blocks and `rt <= TILES_PER_CALL[rb]` tiles.
    ///
    /// # Safety
    /// As [`micro`].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn micro_dispatch(
        rb: usize,
        rt: usize,
        u: *const u16,
        u_block: usize,
        v: *const u16,
        v_block: usize,
        icb: usize,
        m: *mut f32,
        m_block: usize,
    ) {
        macro_rules! by_rt {
            ($rb:literal, $($rt:literal)*) => {
                match rt {
                    // SAFETY: forwarded from the caller.
                    $($rt => unsafe { micro::<$rb, $rt>(u, u_block, v, v_block, icb, m, m_block) },)*
                    _ => unreachable!("bf16: {} tiles for {} blocks", rt, rb),
                }
            };
        }
        match rb {
            1 => by_rt!(1, 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16),
            2 => by_rt!(2, 1 2 3 4 5 6 7 8 9 10 11 12),
            3 => by_rt!(3, 1 2 3 4 5 6 7 8),
            4 => by_rt!(4, 1 2 3 4 5 6),
            _ => unreachable!("bf16: {rb} output blocks"),
        }
    }

    /// `R` output blocks x `T` tiles of one position: `R x T` f32 accumulators, each
    /// `vdpbf16ps` adding two input channels' products to every lane.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16; `u` holds `R` blocks `u_block` apart of
    /// `icb x 16 x 16` values, `v` holds `icb` blocks `v_block` apart of `T x 16` values,
    /// and `m` has room for `R` blocks `m_block` apart of `T x 16` floats that nothing
    /// else accesses meanwhile.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn micro<const R: usize, const T: usize>(
        u: *const u16,
        u_block: usize,
        v: *const u16,
        v_block: usize,
        icb: usize,
        m: *mut f32,
        m_block: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        #[allow(clippy::needless_range_loop)]
        for b in 0..icb {
            // SAFETY (whole loop body): in bounds by the function's contract.
            unsafe {
                let vb = v.add(b * v_block);
                let ub = u.add(b * 16 * 16);
                for pair in 0..8 {
                    let uv: [__m512bh; R] = core::array::from_fn(|r| {
                        core::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                            ub.add(r * u_block + pair * 32) as *const __m512i
                        ))
                    });
                    for t in 0..T {
                        let word = (vb.add(t * 16 + 2 * pair) as *const i32).read_unaligned();
                        let x = core::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(word));
                        for r in 0..R {
                            acc[r][t] = _mm512_dpbf16_ps(acc[r][t], uv[r], x);
                        }
                    }
                }
            }
        }
        for (r, ar) in acc.iter().enumerate() {
            for (t, a) in ar.iter().enumerate() {
                // SAFETY: in bounds and unshared by the function's contract.
                unsafe { _mm512_storeu_ps(m.add(r * m_block + t * 16), *a) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_to_bf16_is_to_nearest_even_and_keeps_nan() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even 1.
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        // The largest finite f32 rounds up to infinity, as the instruction does.
        assert_eq!(from_bf16(to_bf16(f32::MAX)), f32::INFINITY);
    }

    #[test]
    fn conversion_matches_the_scalar_rounding() {
        // Whole vectors of 32, one of 16, and a scalar tail.
        for len in [77, 50, 16, 5] {
            let v: Vec<f32> = (0..len)
                .map(|i| (i as f32 * 0.37).sin() * 10f32.powi(i % 7 - 3))
                .collect();
            let mut fast = vec![0u16; v.len()];
            convert(&v, &mut fast);
            let slow: Vec<u16> = v.iter().map(|&x| to_bf16(x)).collect();
            assert_eq!(fast, slow, "{len} values");
        }
    }

    #[test]
    fn row_conversion_matches_the_scalar_rounding() {
        let src: Vec<f32> = (0..40 * 16)
            .map(|i| (i as f32 * 0.91).cos() * 10f32.powi(i % 9 - 4))
            .collect();
        for (count, src_step, dst_step) in [(5, 16, 32), (7, 32, 32), (3, 48, 16), (1, 16, 16), (0, 16, 16)] {
            let mut fast = vec![7u16; count * dst_step + 16];
            let mut slow = fast.clone();
            convert_rows((&src, src_step), count, (&mut fast, dst_step));
            for i in 0..count {
                for j in 0..LANES {
                    slow[i * dst_step + j] = to_bf16(src[i * src_step + j]);
                }
            }
            assert_eq!(fast, slow, "{count} rows {src_step} / {dst_step} apart");
        }
    }

    /// 1x1 convolutions (and their backward-data, from transposed packing) against the
    /// f64 sums of the same bf16 values, on odd and ResNet-50-like shapes.
    #[test]
    fn pointwise_matches_f64_sums_of_the_bf16_values() {
        use crate::layout::{from_blocked, to_blocked};
        for &(n, c, k, h, w, stride) in &[
            (2, 19, 21, 5, 7, 1),
            (1, 64, 256, 8, 8, 1),
            (3, 40, 8, 3, 11, 1),
            (2, 19, 21, 5, 7, 2),
            (1, 256, 512, 8, 8, 2),
            // Even input blocks (AMX tiles where the CPU has them) and an odd number of
            // output blocks, 49 and 30 pixels (ragged steps).
            (2, 32, 40, 6, 5, 1),
            (1, 64, 48, 7, 7, 1),
        ] {
            for transposed in [false, true] {
                if transposed && stride > 1 {
                    continue; // backward-data is a 1x1 stride-1 convolution only
                }
                // The convolution computed: from `ci` channels to `co`.
                let (ci, co) = if transposed { (k, c) } else { (c, k) };
                let g = ConvGeometry::new(n, ci, h, w, co, (1, 1), stride, 0).unwrap();
                let (oh, ow) = (g.out_h, g.out_w);
                let weight: Vec<f32> = (0..c * k).map(|i| value(i, 3)).collect();
                let x: Vec<f32> = (0..n * ci * h * w).map(|i| value(i, 4) * 3.0).collect();
                let xs = Blocked::new(n, ci, h, w, LANES);
                let ys = Blocked::new(n, co, oh, ow, LANES);
                let mut xb = vec![0.0; xs.len()];
                to_blocked(&x, xs, &mut xb);
                let mut w16 = vec![0u16; pointwise_len(ci, co)];
                pack_pointwise(&weight, c, k, transposed, &mut w16);
                let mut yb = vec![f32::NAN; ys.len()];
                pointwise(&g, &xb, &w16, &mut yb);
                for b in co..ys.padded_channels() {
                    assert!(
                        (0..oh * ow).all(|p| yb[ys.index(0, b, p / ow, p % ow)] == 0.0),
                        "padding channel {b}"
                    );
                }
                let mut y = vec![0.0; n * co * oh * ow];
                from_blocked(&yb, ys, &mut y);
                let round = |v: f32| from_bf16(to_bf16(v)) as f64;
                for img in 0..n {
                    for o in 0..co {
                        for p in 0..oh * ow {
                            // The input pixel under output pixel `p`.
                            let at = (p / ow * stride) * w + (p % ow) * stride;
                            let (mut exact, mut size) = (0f64, 0f64);
                            for i in 0..ci {
                                let wv = if transposed {
                                    weight[i * c + o]
                                } else {
                                    weight[o * c + i]
                                };
                                let term = round(wv) * round(x[(img * ci + i) * h * w + at]);
                                exact += term;
                                size += term.abs();
                            }
                            let got = y[(img * co + o) * oh * ow + p] as f64;
                            assert!(
                                (got - exact).abs() <= 1e-6 * size + 1e-30,
                                "{g:?} {transposed}: {got} vs {exact}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// On AMX CPUs, the tile kernel against the AVX512_BF16 one (the f64 test above holds
    /// both to the exact sums): every output block count mod 2, whole and ragged pixel
    /// steps, strides 1 and 2, several tasks. Elsewhere there is one kernel and nothing to
    /// compare: the test says so.
    #[test]
    fn amx_tiles_match_the_avx512_bf16_kernel() {
        use crate::tensor::max_abs;
        if !amx::available() {
            eprintln!("no AMX on this CPU: the tile kernel is not run");
            return;
        }
        for &(n, c, k, h, w, stride) in &[
            (1, 32, 16, 4, 8, 1),
            (2, 64, 48, 7, 7, 1),
            (3, 96, 80, 9, 13, 1),
            (1, 256, 512, 14, 14, 1),
            (2, 64, 40, 11, 9, 2),
        ] {
            let g = ConvGeometry::new(n, c, h, w, k, (1, 1), stride, 0).unwrap();
            let xs = Blocked::new(n, c, h, w, LANES);
            let ys = Blocked::new(n, k, g.out_h, g.out_w, LANES);
            let x: Vec<f32> = (0..xs.len()).map(|i| value(i, 5) * 2.0).collect();
            let weight: Vec<f32> = (0..c * k).map(|i| value(i, 6)).collect();
            let mut w16 = vec![0u16; pointwise_len(c, k)];
            pack_pointwise(&weight, c, k, false, &mut w16);
            let mut tiles = vec![f32::NAN; ys.len()];
            let mut vectors = vec![f32::NAN; ys.len()];
            pointwise_on(&g, &x, &w16, (&BlockedEpilogue::default(), &mut tiles, None), true);
            pointwise_on(&g, &x, &w16, (&BlockedEpilogue::default(), &mut vectors, None), false);
            // Both sum the same exact bf16 products in f32, in different orders.
            let size = max_abs(x.iter().copied()) * max_abs(weight.iter().copied()) * c as f32;
            for (i, (a, b)) in tiles.iter().zip(&vectors).enumerate() {
                assert!((a - b).abs() <= 1e-5 * size, "{g:?} at {i}: tiles {a}, vectors {b}");
            }
        }
    }

    fn value(i: usize, salt: usize) -> f32 {
        ((i * 7919 + salt * 104729) % 2003) as f32 / 1001.0 - 1.0
    }

    /// The kernel against its naive twin and against the f64 products of the same bf16
    /// values, on every block and tile count a call can take (75 tiles: on AMX CPUs two
    /// 32-row steps on tiles and 11 rows on vectors).
    #[test]
    fn products_match_the_naive_twin_and_f64() {
        let (positions, icb, ocb, tn) = (3, 3, 5, 75);
        let (l, cp) = (LANES, 3 * LANES);
        let u: Vec<f32> = (0..positions * ocb * cp * l).map(|i| value(i, 1)).collect();
        let mut u16s = vec![0u16; u.len()];
        pack_filters(&u, positions, ocb, cp, &mut u16s);
        let v_stride = icb * tn * l + 16;
        let v: Vec<f32> = (0..positions * v_stride).map(|i| value(i, 2)).collect();
        let mut v16 = vec![0u16; v.len()];
        convert(&v, &mut v16);
        for (cb, rb) in [(0, 4), (1, 3), (3, 2), (4, 1)] {
            let m_stride = rb * tn * l;
            let mut fast = vec![f32::NAN; positions * m_stride];
            let mut slow = fast.clone();
            products(
                &u16s,
                positions,
                cp,
                ocb,
                (cb, rb),
                tn,
                (&v16, v_stride),
                (&mut fast, m_stride),
            );
            products_reference(
                &u16s,
                positions,
                cp,
                ocb,
                (cb, rb),
                tn,
                (&v16, v_stride),
                (&mut slow, m_stride),
            );
            for xi in 0..positions {
                for r in 0..rb {
                    for t in 0..tn {
                        for lane in 0..l {
                            let at = xi * m_stride + (r * tn + t) * l + lane;
                            let (mut exact, mut size) = (0f64, 0f64);
                            for ci in 0..cp {
                                let uu = from_bf16(to_bf16(u[((xi * ocb + cb + r) * cp + ci) * l + lane])) as f64;
                                let vv = from_bf16(to_bf16(v[xi * v_stride + ((ci / l) * tn + t) * l + ci % l])) as f64;
                                exact += uu * vv;
                                size += (uu * vv).abs();
                            }
                            let tol = 1e-6 * size + 1e-30;
                            assert!((fast[at] as f64 - exact).abs() <= tol, "kernel {} vs {exact}", fast[at]);
                            assert!((slow[at] as f64 - exact).abs() <= tol, "twin {} vs {exact}", slow[at]);
                        }
                    }
                }
            }
        }
    }
}
