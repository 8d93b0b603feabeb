//! The one place that picks the SIMD vector type of the crate's hand-vectorised kernels.
//!
//! Kernels are written once over [`F32x`] from the portable `wide` crate (no `core::arch`):
//! `f32x8` on native targets (AVX/FMA under `-C target-cpu=native`, two SSE halves
//! elsewhere) and `f32x4` on `wasm32`, where `+simd128` in `.cargo/config.toml` maps it to
//! SIMD128. `wide` 0.7 has no `f32x16`, so AVX-512 machines run the 256-bit forms; the
//! GEMMs, where most of the time goes, still get AVX-512 through `matrixmultiply`.

/// The crate's `f32` vector: 8 lanes natively, 4 on wasm32 (SIMD128).
#[cfg(not(target_arch = "wasm32"))]
pub type F32x = wide::f32x8;

/// The crate's `f32` vector: 8 lanes natively, 4 on wasm32 (SIMD128).
#[cfg(target_arch = "wasm32")]
pub type F32x = wide::f32x4;

/// Lanes of [`F32x`].
pub const LANES: usize = core::mem::size_of::<F32x>() / core::mem::size_of::<f32>();

/// Loads the first [`LANES`] values of `s` (unaligned). Panics if `s` is shorter.
#[inline(always)]
pub fn load(s: &[f32]) -> F32x {
    let a: [f32; LANES] = s[..LANES].try_into().expect("slice of LANES floats");
    F32x::new(a)
}

/// Stores `v` into the first [`LANES`] values of `s` (unaligned). Panics if `s` is shorter.
#[inline(always)]
pub fn store(v: F32x, s: &mut [f32]) {
    s[..LANES].copy_from_slice(v.as_array_ref());
}

/// `[0, 1, 2, ...]`: each lane's index.
#[inline(always)]
pub fn lane_indices() -> F32x {
    F32x::new(core::array::from_fn(|j| j as f32))
}

/// Transposes `LANES` vectors as a `LANES x LANES` matrix: lane `j` of result `i` is lane
/// `i` of input `j` (AVX shuffles natively, through `wide`).
#[cfg(not(target_arch = "wasm32"))]
#[inline(always)]
pub fn transpose(rows: [F32x; LANES]) -> [F32x; LANES] {
    F32x::transpose(rows)
}

/// Transposes 4 vectors as a 4 x 4 matrix with SIMD128 shuffles (`wide` 0.7 moves lanes
/// one at a time here, which costs the Winograd transforms a quarter of their time).
#[cfg(target_arch = "wasm32")]
#[inline(always)]
pub fn transpose(rows: [F32x; LANES]) -> [F32x; LANES] {
    use core::arch::wasm32::{i32x4_shuffle, v128};
    // SAFETY: `F32x` is `wide::f32x4`, 16 bytes holding one `v128` on wasm32 with
    // SIMD128; every bit pattern is valid for both types.
    let [a, b, c, d] = rows.map(|v| unsafe { core::mem::transmute::<F32x, v128>(v) });
    let ab_lo = i32x4_shuffle::<0, 4, 1, 5>(a, b);
    let ab_hi = i32x4_shuffle::<2, 6, 3, 7>(a, b);
    let cd_lo = i32x4_shuffle::<0, 4, 1, 5>(c, d);
    let cd_hi = i32x4_shuffle::<2, 6, 3, 7>(c, d);
    [
        i32x4_shuffle::<0, 1, 4, 5>(ab_lo, cd_lo),
        i32x4_shuffle::<2, 3, 6, 7>(ab_lo, cd_lo),
        i32x4_shuffle::<0, 1, 4, 5>(ab_hi, cd_hi),
        i32x4_shuffle::<2, 3, 6, 7>(ab_hi, cd_hi),
    ]
    // SAFETY: as above, in the other direction.
    .map(|v| unsafe { core::mem::transmute::<v128, F32x>(v) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_and_store_round_trip_at_any_offset() {
        let src: Vec<f32> = (0..3 * LANES).map(|i| i as f32).collect();
        let mut dst = [0.0; 3 * LANES];
        let v = load(&src[1..]);
        store(v * 2.0, &mut dst[2..]);
        for l in 0..LANES {
            assert_eq!(dst[2 + l], 2.0 * (1 + l) as f32);
        }
        assert_eq!(dst[0], 0.0);
        assert_eq!(dst[2 + LANES], 0.0);
    }

    #[test]
    fn transpose_swaps_rows_and_lanes() {
        let rows: [F32x; LANES] = std::array::from_fn(|i| F32x::new(std::array::from_fn(|j| (i * 100 + j) as f32)));
        let t = transpose(rows);
        for (i, v) in t.iter().enumerate() {
            for (j, &x) in v.to_array().iter().enumerate() {
                assert_eq!(x, (j * 100 + i) as f32);
            }
        }
    }
}
