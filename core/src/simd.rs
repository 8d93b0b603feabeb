//! The one place that picks the SIMD vector type of the crate's hand-vectorised kernels.
//!
//! Kernels are written once over [`F32x`] from the portable `wide` crate (no `core::arch`):
//! `f32x8` on native targets (AVX/FMA under `-C target-cpu=native`, two SSE halves
//! elsewhere) and `f32x4` on `wasm32`, where `+simd128` in `.cargo/config.toml` maps it to
//! SIMD128. Where the build has AVX-512F, the multiply-add-bound register blocks (the
//! unpacked GEMM, the filter-gradient products, the FMA peak probe) run on [`F32xWide`] =
//! `f32x16` (one 512-bit register); the transforms keep `f32x8`, whose transposes `wide` accelerates (its
//! `f32x16` transpose moves lanes one at a time).

/// The crate's `f32` vector: 8 lanes natively, 4 on wasm32 (SIMD128).
#[cfg(not(target_arch = "wasm32"))]
pub type F32x = wide::f32x8;

/// The crate's `f32` vector: 8 lanes natively, 4 on wasm32 (SIMD128).
#[cfg(target_arch = "wasm32")]
pub type F32x = wide::f32x4;

/// Lanes of [`F32x`].
pub const LANES: usize = core::mem::size_of::<F32x>() / core::mem::size_of::<f32>();

/// The widest `f32` vector of the build: `f32x16` with AVX-512F.
#[cfg(all(not(target_arch = "wasm32"), target_feature = "avx512f"))]
pub type F32xWide = wide::f32x16;

/// The widest `f32` vector of the build: [`F32x`] without AVX-512F.
#[cfg(not(all(not(target_arch = "wasm32"), target_feature = "avx512f")))]
pub type F32xWide = F32x;

/// Lanes of [`F32xWide`].
pub const WIDE_LANES: usize = core::mem::size_of::<F32xWide>() / core::mem::size_of::<f32>();

/// The operations a register-blocked kernel needs, so that one kernel runs on [`F32x`]
/// and [`F32xWide`].
pub trait Vector: Copy {
    /// Lanes.
    const LANES: usize;
    /// All lanes zero.
    const ZERO: Self;
    /// Every lane `x`.
    fn splat(x: f32) -> Self;
    /// `self * b + c`, fused where the target has FMA.
    fn mul_add(self, b: Self, c: Self) -> Self;
    /// The first `LANES` values of `s` (unaligned). Panics if `s` is shorter.
    fn load(s: &[f32]) -> Self;
    /// Stores into the first `LANES` values of `s` (unaligned). Panics if `s` is shorter.
    fn store(self, s: &mut [f32]);
    /// Loads `LANES` values at `p + i`, unaligned, without a bounds check.
    ///
    /// # Safety
    /// `p + i .. p + i + LANES` must lie inside one live allocation of `f32`s.
    unsafe fn load_at(p: *const f32, i: usize) -> Self;
    /// The sum of the lanes.
    fn reduce_add(self) -> f32;
}

macro_rules! impl_vector {
    ($t:ty, $n:expr) => {
        impl Vector for $t {
            const LANES: usize = $n;
            const ZERO: Self = <$t>::ZERO;
            #[inline(always)]
            fn splat(x: f32) -> Self {
                <$t>::splat(x)
            }
            #[inline(always)]
            fn mul_add(self, b: Self, c: Self) -> Self {
                <$t>::mul_add(self, b, c)
            }
            #[inline(always)]
            fn load(s: &[f32]) -> Self {
                let a: [f32; $n] = s[..$n].try_into().expect("slice of LANES floats");
                <$t>::new(a)
            }
            #[inline(always)]
            fn store(self, s: &mut [f32]) {
                s[..$n].copy_from_slice(self.as_array());
            }
            #[inline(always)]
            unsafe fn load_at(p: *const f32, i: usize) -> Self {
                // SAFETY: the caller guarantees the range is in bounds; `read_unaligned`
                // has no alignment requirement.
                <$t>::new(unsafe { p.add(i).cast::<[f32; $n]>().read_unaligned() })
            }
            #[inline(always)]
            fn reduce_add(self) -> f32 {
                <$t>::reduce_add(self)
            }
        }
    };
}

impl_vector!(wide::f32x4, 4);
impl_vector!(wide::f32x8, 8);
impl_vector!(wide::f32x16, 16);

/// Loads the first [`LANES`] values of `s` (unaligned): [`Vector::load`] of [`F32x`].
#[inline(always)]
pub fn load(s: &[f32]) -> F32x {
    <F32x as Vector>::load(s)
}

/// Stores `v` into the first [`LANES`] values of `s` (unaligned): [`Vector::store`].
#[inline(always)]
pub fn store(v: F32x, s: &mut [f32]) {
    v.store(s)
}

/// `[0, 1, 2, ...]`: each lane's index.
#[inline(always)]
pub fn lane_indices() -> F32x {
    F32x::new(core::array::from_fn(|j| j as f32))
}

/// Transposes `LANES` vectors as a `LANES x LANES` matrix: lane `j` of result `i` is lane
/// `i` of input `j` (shuffles through `wide`: AVX natively, SIMD128 on wasm32).
#[inline(always)]
pub fn transpose(rows: [F32x; LANES]) -> [F32x; LANES] {
    F32x::transpose(rows)
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
    fn every_vector_loads_computes_and_stores_its_lanes() {
        fn check<V: Vector>() {
            let src: Vec<f32> = (0..V::LANES + 1).map(|i| i as f32).collect();
            let mut dst = vec![-1.0; V::LANES + 2];
            V::load(&src[1..])
                .mul_add(V::splat(2.0), V::splat(0.5))
                .store(&mut dst[1..]);
            // SAFETY: `src` holds `LANES + 1` values.
            let tail = unsafe { V::load_at(src.as_ptr(), 1) };
            let want: f32 = (1..=V::LANES).map(|i| i as f32).sum();
            assert_eq!(tail.reduce_add(), want);
            for l in 0..V::LANES {
                assert_eq!(dst[1 + l], 2.0 * (1 + l) as f32 + 0.5);
            }
            assert_eq!((dst[0], dst[V::LANES + 1]), (-1.0, -1.0));
        }
        check::<wide::f32x4>();
        check::<wide::f32x8>();
        check::<wide::f32x16>();
        check::<F32xWide>();
        assert!(WIDE_LANES >= LANES && WIDE_LANES.is_multiple_of(LANES));
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
