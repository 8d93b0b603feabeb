//! The one place that picks the SIMD vector type of the crate's hand-vectorised kernels.
//!
//! Kernels are written once over [`F32x`] from the portable `wide` crate (no `core::arch`):
//! `f32x8` on native targets (AVX/FMA under `-C target-cpu=native`, two SSE halves
//! elsewhere) and `f32x4` on `wasm32`, where `+simd128` in `.cargo/config.toml` maps it to
//! SIMD128. The engine's blocked kernels (inference and training) run on [`F32xBlock`] =
//! [`F32xWide`]: `f32x16` (one 512-bit register) where the build has AVX-512F, so one
//! vector holds a pixel's block of 16 channels. `F32x` remains for the first design's
//! NCHW kernels, kept as the twins the blocked ones are tested against.

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

/// The vector of the channel-blocked activation layout (`crate::layout`): one vector holds
/// one pixel's [`BLOCK`] channels, so the blocked kernels move whole channel blocks with no
/// transposes. 16 lanes with AVX-512F, 8 on other native builds (AVX2), 4 on wasm32.
pub type F32xBlock = F32xWide;

/// Channels per block of the blocked activation layout: the lanes of [`F32xBlock`].
pub const BLOCK: usize = WIDE_LANES;

/// The operations a register-blocked kernel needs, so that one kernel runs on [`F32x`]
/// and [`F32xWide`].
pub trait Vector:
    Copy
    + Send
    + Sync
    + 'static
    + core::ops::Add<Output = Self>
    + core::ops::Mul<Output = Self>
    + core::ops::Sub<Output = Self>
{
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
    /// Stores the lanes at `p + i`, unaligned, without a bounds check.
    ///
    /// # Safety
    /// `p + i .. p + i + LANES` must lie inside one live, writable allocation of `f32`s
    /// that nothing else accesses meanwhile.
    unsafe fn store_at(self, p: *mut f32, i: usize);
    /// The sum of the lanes.
    fn reduce_add(self) -> f32;
    /// Negative lanes set to zero; NaN stays NaN, as in PyTorch.
    fn relu(self) -> Self;
    /// The larger of each pair of lanes; NaN in either operand gives NaN, as PyTorch's
    /// max pooling propagates it.
    fn max_nan(self, o: Self) -> Self;
    /// `self` where `y > 0`, else 0: the gradient through a ReLU whose output was `y`
    /// (a NaN output passes no gradient, as PyTorch's `threshold_backward`).
    fn relu_mask(self, y: Self) -> Self;
    /// The lanes as an array.
    fn to_lanes(self) -> Vec<f32>;
}

/// `a * b + c` on four lanes: one `f32x4.relaxed_madd` in a wasm build with relaxed SIMD
/// (`-C target-feature=+relaxed-simd`), which the engine runs as a fused multiply-add where
/// the CPU has one (rounded once) or as a multiply and an add (rounded twice); elsewhere
/// [`madd_f32x4_plain`], its twin. The two differ at most by the rounding of the product.
#[inline(always)]
pub fn madd_f32x4(a: wide::f32x4, b: wide::f32x4, c: wide::f32x4) -> wide::f32x4 {
    #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
    {
        use core::arch::wasm32::{f32x4_relaxed_madd, v128};
        // SAFETY: on wasm32 `wide::f32x4` is a 16-byte `repr(C, align(16))` wrapper of one
        // `v128`, and every bit pattern is valid for both types.
        unsafe {
            let (a, b, c) = (
                core::mem::transmute::<wide::f32x4, v128>(a),
                core::mem::transmute::<wide::f32x4, v128>(b),
                core::mem::transmute::<wide::f32x4, v128>(c),
            );
            core::mem::transmute::<v128, wide::f32x4>(f32x4_relaxed_madd(a, b, c))
        }
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "relaxed-simd")))]
    {
        madd_f32x4_plain(a, b, c)
    }
}

/// `a * b + c` on four lanes as `wide` computes it: fused with FMA (native builds), a
/// multiply then an add elsewhere (wasm SIMD128). The twin of [`madd_f32x4`].
#[inline(always)]
pub fn madd_f32x4_plain(a: wide::f32x4, b: wide::f32x4, c: wide::f32x4) -> wide::f32x4 {
    a.mul_add(b, c)
}

macro_rules! impl_vector {
    ($t:ty, $n:expr) => {
        impl_vector!($t, $n, |a: $t, b: $t, c: $t| <$t>::mul_add(a, b, c));
    };
    ($t:ty, $n:expr, $madd:expr) => {
        impl Vector for $t {
            const LANES: usize = $n;
            const ZERO: Self = <$t>::ZERO;
            #[inline(always)]
            fn splat(x: f32) -> Self {
                <$t>::splat(x)
            }
            #[inline(always)]
            fn mul_add(self, b: Self, c: Self) -> Self {
                ($madd)(self, b, c)
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
            unsafe fn store_at(self, p: *mut f32, i: usize) {
                // SAFETY: the caller guarantees the range is in bounds and unshared.
                unsafe { p.add(i).cast::<[f32; $n]>().write_unaligned(self.to_array()) }
            }
            #[inline(always)]
            fn reduce_add(self) -> f32 {
                <$t>::reduce_add(self)
            }
            #[inline(always)]
            fn relu(self) -> Self {
                self.simd_lt(<$t>::ZERO).select(<$t>::ZERO, self)
            }
            #[inline(always)]
            fn max_nan(self, o: Self) -> Self {
                (self.simd_lt(o) | o.is_nan()).select(o, self)
            }
            #[inline(always)]
            fn relu_mask(self, y: Self) -> Self {
                y.simd_gt(Self::ZERO).select(self, Self::ZERO)
            }
            fn to_lanes(self) -> Vec<f32> {
                self.to_array().to_vec()
            }
        }
    };
}

impl_vector!(wide::f32x4, 4, madd_f32x4);
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

/// Whether [`prefetch_l2`] does anything on this target (x86-64's `prefetcht1`; wasm has no
/// prefetch instruction): rules that count on it (the Winograd tile rule) check this.
pub const HAS_PREFETCH: bool = cfg!(target_arch = "x86_64");

/// Asks the CPU to bring the cache line at `p` into L2 (x86-64 `prefetcht1`; nothing on
/// other targets). A hint only: it never faults and never reads, whatever the address,
/// so `p` may point anywhere. The kernels use it to overlap the next weights' trip from
/// memory with the current arithmetic.
#[inline(always)]
pub fn prefetch_l2(p: *const f32) {
    prefetch::<PREFETCH_T1>(p)
}

/// Asks the CPU to bring the cache line at `p` into L1 (x86-64 `prefetcht0`; nothing on
/// other targets). A hint only, as [`prefetch_l2`].
#[inline(always)]
pub fn prefetch_l1(p: *const f32) {
    prefetch::<PREFETCH_T0>(p)
}

/// Asks the CPU to bring the cache line at `p` into L1 ready to be written (x86-64
/// `prefetchw`; nothing on other targets): a store to a line that is not in the cache
/// first reads it, and this starts that read early. A hint only, as [`prefetch_l2`].
#[inline(always)]
pub fn prefetch_write(p: *const f32) {
    prefetch::<PREFETCH_ET0>(p)
}

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::{_MM_HINT_ET0 as PREFETCH_ET0, _MM_HINT_T0 as PREFETCH_T0, _MM_HINT_T1 as PREFETCH_T1};
#[cfg(not(target_arch = "x86_64"))]
const PREFETCH_T1: i32 = 0;
#[cfg(not(target_arch = "x86_64"))]
const PREFETCH_T0: i32 = 0;
#[cfg(not(target_arch = "x86_64"))]
const PREFETCH_ET0: i32 = 0;

/// The prefetch with x86-64 hint `HINT`, the one place that issues it.
#[inline(always)]
fn prefetch<const HINT: i32>(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it neither faults nor dereferences the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<HINT>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
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
    fn relu_and_max_keep_nan() {
        fn check<V: Vector>() {
            let mut a = vec![0.0f32; V::LANES];
            let mut b = vec![0.0f32; V::LANES];
            a[0] = f32::NAN;
            b[0] = 1.0;
            a[1] = 2.0;
            b[1] = f32::NAN;
            a[2] = -3.0;
            b[2] = -1.0;
            let m = V::load(&a).max_nan(V::load(&b)).to_lanes();
            assert!(m[0].is_nan() && m[1].is_nan());
            assert_eq!(m[2], -1.0);
            let r = V::load(&a).relu().to_lanes();
            assert!(r[0].is_nan());
            assert_eq!((r[1], r[2]), (2.0, 0.0));
        }
        check::<wide::f32x4>();
        check::<wide::f32x8>();
        check::<wide::f32x16>();
    }

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
    fn madd_f32x4_matches_its_twin_and_the_scalar_product() {
        let mut s = 0x2545_f491_u32;
        let mut r = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32 - 0.5) * 64.0
        };
        for _ in 0..1000 {
            let (a, b, c) = ([r(), r(), r(), r()], [r(), r(), r(), r()], [r(), r(), r(), r()]);
            let (va, vb, vc) = (wide::f32x4::new(a), wide::f32x4::new(b), wide::f32x4::new(c));
            let fast = madd_f32x4(va, vb, vc).to_array();
            let plain = madd_f32x4_plain(va, vb, vc).to_array();
            let trait_form = <wide::f32x4 as Vector>::mul_add(va, vb, vc).to_array();
            assert_eq!(fast, trait_form, "the Vector impl of f32x4 is madd_f32x4");
            for l in 0..4 {
                let exact = a[l] as f64 * b[l] as f64 + c[l] as f64;
                // Fused or not, the result is within one rounding of the product (half an
                // ulp of a*b) plus the final rounding of the sum.
                let tol = (a[l] * b[l]).abs() as f64 * f32::EPSILON as f64 + exact.abs() * f32::EPSILON as f64 + 1e-30;
                assert!(
                    (fast[l] as f64 - exact).abs() <= tol,
                    "lane {l}: {} vs {exact}",
                    fast[l]
                );
                assert!(
                    (fast[l] - plain[l]).abs() as f64 <= tol,
                    "lane {l}: {} vs twin {}",
                    fast[l],
                    plain[l]
                );
            }
        }
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
