//! The machine's arithmetic ceilings as this crate's code meets them: a register-blocked
//! FMA loop over any of the crate's vectors ([`F32x`] for the transforms, [`F32xWide`]
//! for the multiply-add kernels) and matrixmultiply's sgemm on a large square, so that
//! every kernel figure can be read as a fraction of peak.

use super::gemm::{gemm, MatMut, MatRef};
use crate::simd::Vector;
#[cfg(doc)]
use crate::simd::{F32x, F32xWide};
use std::hint::black_box;
use std::time::Instant;

/// Independent accumulators of the FMA loop: enough to hide the FMA latency on two
/// pipes, few enough to stay in registers.
const CHAINS: usize = 12;

/// Runs `iters` rounds of `CHAINS` independent vector FMAs and returns the seconds taken.
fn fma_loop<V: Vector>(iters: u64) -> f64 {
    let m = black_box(V::splat(0.999_999));
    let a = black_box(V::splat(1e-7));
    let mut acc = [V::splat(1.0); CHAINS];
    let start = Instant::now();
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = v.mul_add(m, a);
        }
    }
    black_box(acc);
    start.elapsed().as_secs_f64()
}

/// FP32 GFLOP/s (2 per multiply-add) of `threads` OS threads each running the FMA loop
/// on vectors `V` for about `seconds`.
pub fn fma_peak_gflops<V: Vector>(threads: usize, seconds: f64) -> f64 {
    // Size the loop from a short calibration run on this thread.
    let probe = 1_000_000;
    let per_iter = fma_loop::<V>(probe).max(1e-9) / probe as f64;
    let iters = ((seconds / per_iter) as u64).max(probe);
    let threads = threads.max(1);
    let worst = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(move || fma_loop::<V>(iters))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(f64::INFINITY))
            .fold(0f64, f64::max)
    });
    let flops = 2.0 * (CHAINS * V::LANES) as f64 * iters as f64 * threads as f64;
    flops / worst / 1e9
}

/// Single-thread GFLOP/s of the crate's sgemm (matrixmultiply) on `n x n` matrices: the
/// median of `reps` runs after one warm-up.
pub fn sgemm_gflops(n: usize, reps: usize) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.25).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 * 0.5).collect();
    let mut c = vec![0f32; n * n];
    let mut times: Vec<f64> = (0..=reps.max(1))
        .map(|_| {
            let start = Instant::now();
            gemm(
                1.0,
                MatRef::row_major(&a, n, n),
                MatRef::row_major(&b, n, n),
                0.0,
                MatMut::row_major(&mut c, n, n),
            );
            start.elapsed().as_secs_f64()
        })
        .skip(1)
        .collect();
    black_box(&c);
    times.sort_by(f64::total_cmp);
    2.0 * (n as f64).powi(3) / times[times.len() / 2] / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_are_positive_and_finite() {
        let fma = fma_peak_gflops::<crate::simd::F32x>(1, 0.01);
        let wide = fma_peak_gflops::<crate::simd::F32xWide>(1, 0.01);
        let sgemm = sgemm_gflops(64, 1);
        assert!(fma.is_finite() && fma > 0.0, "{fma}");
        assert!(wide.is_finite() && wide > 0.0, "{wide}");
        assert!(sgemm.is_finite() && sgemm > 0.0, "{sgemm}");
    }
}
