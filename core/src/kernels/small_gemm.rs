//! A matrix product without packing, for the narrow products where a general GEMM's
//! packing of the large operand costs as much as the arithmetic: the per-position
//! products of Winograd (`U[xi] * V[xi]`) and 1x1 convolutions on small images.

#[cfg(target_feature = "avx512f")]
use crate::simd::F32xWide;
use crate::simd::{F32x, Vector, LANES};

/// Rows of `u` per register block of [`gemm_unpacked`].
const MR: usize = 6;

/// Vectors of columns per register block of [`gemm_unpacked`], where AVX-512 gives
/// 256-bit code 32 vector registers: `MR x NV` accumulators, `NV` loads and a broadcast
/// take 29 of them (measured 1.3-1.8x over `NV = 2` on the Winograd products).
#[cfg(target_feature = "avx512f")]
const NV: usize = 4;

/// Vectors of columns per register block of [`gemm_unpacked`]: `MR x NV` accumulators
/// plus `NV` loaded vectors and one broadcast fit the 16 vector registers of AVX2 and
/// SIMD128.
#[cfg(not(target_feature = "avx512f"))]
const NV: usize = 2;

/// `m (kn x tp) = u (kn x c) * v (c x tp)`, all row-major, `tp` a multiple of `LANES`:
/// a register-blocked product that reads `v` in place (no packing, which costs as much
/// as the product itself at these sizes) and broadcasts elements of `u`.
///
/// Panics when a slice is shorter than its matrix or `tp` is not a multiple of `LANES`.
pub fn gemm_unpacked(u: &[f32], v: &[f32], m: &mut [f32], kn: usize, c: usize, tp: usize) {
    assert!(
        tp.is_multiple_of(LANES),
        "gemm_unpacked: {tp} columns are not whole vectors"
    );
    assert!(
        u.len() >= kn * c && v.len() >= c * tp && m.len() >= kn * tp,
        "gemm_unpacked: short operand"
    );
    if kn * c * std::mem::size_of::<f32>() <= U_CACHED_BYTES {
        // `u` stays in L1/L2 while each block of columns of `v` streams once.
        for col in (0..tp).step_by(NV * LANES) {
            for row in (0..kn).step_by(MR) {
                block_at(u, v, m, (row, col), (kn, c, tp));
            }
        }
    } else {
        // A large `u` (a 1x1 convolution's weights) is read once, a few rows at a time,
        // against all of the narrow `v`.
        for row in (0..kn).step_by(MR) {
            for col in (0..tp).step_by(NV * LANES) {
                block_at(u, v, m, (row, col), (kn, c, tp));
            }
        }
    }
}

/// Bytes of `u` up to which [`gemm_unpacked`] sweeps all of `u` for each block of columns.
const U_CACHED_BYTES: usize = 64 << 10;

/// The register block of [`gemm_unpacked`] at (`row`, `col`), clipped to the matrix.
#[inline(always)]
fn block_at(u: &[f32], v: &[f32], m: &mut [f32], (row, col): (usize, usize), (kn, c, tp): (usize, usize, usize)) {
    let nv = ((tp - col) / LANES).min(NV);
    let mr = (kn - row).min(MR);
    macro_rules! by_rows {
        ($w:ty, $v:expr) => {
            match mr {
                6 => block::<$w, 6, { $v }>(u, v, m, row, col, c, tp),
                5 => block::<$w, 5, { $v }>(u, v, m, row, col, c, tp),
                4 => block::<$w, 4, { $v }>(u, v, m, row, col, c, tp),
                3 => block::<$w, 3, { $v }>(u, v, m, row, col, c, tp),
                2 => block::<$w, 2, { $v }>(u, v, m, row, col, c, tp),
                _ => block::<$w, 1, { $v }>(u, v, m, row, col, c, tp),
            }
        };
    }
    // With AVX-512, pairs of 256-bit column vectors run as one `f32x16` (half the
    // multiply-add instructions for the same work).
    #[cfg(target_feature = "avx512f")]
    match nv {
        1 => by_rows!(F32x, 1),
        2 => by_rows!(F32xWide, 1),
        3 => by_rows!(F32x, 3),
        _ => by_rows!(F32xWide, 2),
    }
    #[cfg(not(target_feature = "avx512f"))]
    match nv {
        1 => by_rows!(F32x, 1),
        _ => by_rows!(F32x, NV),
    }
}

/// One `R x (V * W::LANES)` block of [`gemm_unpacked`] at (`row`, `col`), on vectors `W`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block<W: Vector, const R: usize, const V: usize>(
    u: &[f32],
    v: &[f32],
    m: &mut [f32],
    row: usize,
    col: usize,
    c: usize,
    tp: usize,
) {
    let u_rows: [&[f32]; R] = std::array::from_fn(|i| &u[(row + i) * c..(row + i + 1) * c]);
    let mut acc = [[W::ZERO; V]; R];
    for ci in 0..c {
        let v_row = &v[ci * tp + col..ci * tp + col + V * W::LANES];
        let b: [W; V] = std::array::from_fn(|j| W::load(&v_row[j * W::LANES..]));
        for i in 0..R {
            let a = W::splat(u_rows[i][ci]);
            for j in 0..V {
                acc[i][j] = a.mul_add(b[j], acc[i][j]);
            }
        }
    }
    for (i, acc_row) in acc.iter().enumerate() {
        let m_row = &mut m[(row + i) * tp + col..];
        for (j, &val) in acc_row.iter().enumerate() {
            val.store(&mut m_row[j * W::LANES..]);
        }
    }
}

/// Whether [`gemm_unpacked`] beats matrixmultiply on a product with `inner` terms and
/// `cols` columns: on narrow products (measured here: 1.1-1.5x at 49 columns, 1.1x at
/// 196 with 256 terms), while the padded `v` fits in L2. Wide products amortise
/// matrixmultiply's packing and its larger register block.
pub fn unpacked_pays(inner: usize, cols: usize) -> bool {
    let tp = cols.next_multiple_of(LANES);
    tp <= 64 || (tp <= 256 && inner * tp * std::mem::size_of::<f32>() <= 512 << 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::{gemm_naive, MatMut, MatRef};
    use crate::rng::Rng;

    #[test]
    fn matches_the_naive_product_in_both_sweep_orders() {
        let mut rng = Rng::new(3);
        // Small u (column-block sweep) and u over U_CACHED_BYTES (row-block sweep); row
        // counts that leave every remainder of MR, column counts every remainder of NV.
        for &(kn, c, tp) in &[
            (13, 7, 3 * LANES),
            (6, 1, LANES),
            (1, 5, 2 * LANES),
            (131, 140, 5 * LANES),
            (7, 9, 7 * LANES),
            (5, 4, 11 * LANES),
        ] {
            let u: Vec<f32> = (0..kn * c).map(|_| rng.normal() as f32).collect();
            let v: Vec<f32> = (0..c * tp).map(|_| rng.normal() as f32).collect();
            let mut got = vec![f32::NAN; kn * tp];
            gemm_unpacked(&u, &v, &mut got, kn, c, tp);
            let mut want = vec![0.0; kn * tp];
            gemm_naive(
                1.0,
                MatRef::row_major(&u, kn, c),
                MatRef::row_major(&v, c, tp),
                0.0,
                MatMut::row_major(&mut want, kn, tp),
            );
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                .fold(0f32, |m, e| if e.is_nan() { f32::INFINITY } else { m.max(e) });
            assert!(err < 1e-5, "{kn}x{c}x{tp}: {err}");
        }
    }
}
