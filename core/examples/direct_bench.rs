//! Times the blocked direct convolution (`kernels::blocked::direct`) on every distinct
//! convolution of ResNet-20 (batch 1 and 128, 32x32) and ResNet-50 (batch 1, 224x224).
//!
//! `cargo run --release -p resnet-core --example direct_bench -- [THREADS [FILTER]]`
//! (default: 1 then 2 threads; FILTER keeps the rows whose label, e.g. `20b128 16->16`,
//! contains it). GFLOP/s count `2 * MACs` of the direct convolution over the median time of
//! several runs after a warm-up. Two percentages: of 113 GFLOP/s per thread (the FP32
//! FMA peak of one Zen 4 core, where 512-bit FMAs run as two halves) and of the FMA peak
//! measured at start on this machine by [`fma_peak`] (a Zen 5 core, with full-width
//! 512-bit FMAs, reaches over twice that). Inputs with fewer than 4
//! channels (the stems) are read as plain NCHW, as the plan does; the epilogue adds a
//! bias and applies ReLU.

use resnet_core::kernels::blocked::direct::{direct_conv, pack_weights, packed_len};
use resnet_core::kernels::blocked::BlockedEpilogue;
use resnet_core::kernels::im2col::ConvGeometry;
use resnet_core::layout::Blocked;
use resnet_core::model::{Arch, ResNetConfig};
use resnet_core::simd::{F32xBlock, BLOCK};
use std::time::Instant;

/// FP32 GFLOP/s of one Zen 4 core: the nominal peak the goals are stated against.
const PEAK_PER_THREAD: f64 = 113.0;

/// FP32 GFLOP/s of `threads` threads each running 24 independent chains of vector FMAs
/// for about 0.3 s: the FMA ceiling of this machine. (24 chains rather than the 12 of
/// `kernels::peak`: enough to cover the latency of two full-width 512-bit FMA pipes.)
fn fma_peak(threads: usize) -> f64 {
    const CHAINS: usize = 24;
    let run = |iters: u64| {
        let m = std::hint::black_box(F32xBlock::splat(0.999_999));
        let a = std::hint::black_box(F32xBlock::splat(1e-7));
        let mut acc = [F32xBlock::splat(1.0); CHAINS];
        let start = Instant::now();
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = v.mul_add(m, a);
            }
        }
        std::hint::black_box(acc);
        start.elapsed().as_secs_f64()
    };
    let iters = (0.3 / (run(1_000_000) / 1e6)) as u64;
    let worst = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads).map(|_| s.spawn(move || run(iters))).collect();
        hs.into_iter()
            .map(|h| h.join().expect("probe thread"))
            .fold(0f64, f64::max)
    });
    2.0 * (CHAINS * BLOCK) as f64 * iters as f64 * threads as f64 / worst / 1e9
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
        .collect()
}

/// Median seconds of `f` over runs filling about 0.3 s (at least 5), after a warm-up.
fn median_secs(mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    f();
    let once = start.elapsed().as_secs_f64().max(1e-6);
    let reps = ((0.3 / once) as usize).clamp(5, 200);
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[reps / 2]
}

fn shapes(name: &str, batch: usize, size: usize) -> Vec<(ConvGeometry, Vec<String>)> {
    let net = Arch::of(&ResNetConfig::named(name).expect("a zoo model")).expect("it builds");
    net.distinct_conv_geometries(batch, size, size).expect("its geometries")
}

fn main() {
    let threads: Vec<usize> = match std::env::args().nth(1).and_then(|s| s.parse().ok()) {
        Some(t) => vec![t],
        None => vec![1, 2],
    };
    let filter = std::env::args().nth(2).unwrap_or_default();
    println!("blocked direct convolution, block {BLOCK}; GFLOP/s = 2 * MACs / median time; peak {PEAK_PER_THREAD} GFLOP/s per thread");
    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .expect("a thread pool");
        let peak = fma_peak(t);
        println!("\n{t} thread(s); measured FMA peak {peak:.1} GFLOP/s");
        println!(
            "{:<9} {:<40} {:>8} {:>8} {:>6} {:>6}",
            "model", "conv (layers)", "ms", "GFLOP/s", "%113", "%meas"
        );
        for (model, batch, size) in [("resnet20", 1, 32), ("resnet20", 128, 32), ("resnet50", 1, 224)] {
            let (mut flops_all, mut secs_all) = (0.0, 0.0);
            for (g, names) in shapes(model, batch, size) {
                let label = format!(
                    "{}b{batch} {}->{} {}x{}/{} {}x{}",
                    &model[6..],
                    g.in_channels,
                    g.out_channels,
                    g.kernel_h,
                    g.kernel_w,
                    g.stride,
                    g.in_h,
                    g.in_w
                );
                if !label.contains(&filter) {
                    continue;
                }
                let in_block = if g.in_channels < 4 { 1 } else { BLOCK };
                let in_l = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, in_block);
                let out_l = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, BLOCK);
                let x = values(in_l.len(), 1);
                let w = values(g.out_channels * g.col_rows(), 2);
                let bias = values(out_l.padded_channels(), 3);
                let mut packed = vec![0.0; packed_len(&g, in_block, BLOCK)];
                pack_weights(&w, None, &g, in_block, BLOCK, &mut packed);
                let mut y = vec![0.0; out_l.len()];
                let ep = BlockedEpilogue {
                    bias: Some(&bias),
                    relu: true,
                    relu_output: None,
                    ..Default::default()
                };
                let secs =
                    pool.install(|| median_secs(|| direct_conv::<F32xBlock>(&g, &x, in_block, &packed, &ep, &mut y)));
                let flops = 2.0 * g.macs() as f64;
                let gf = flops / secs / 1e9;
                // Weight each distinct conv by how many layers have it, for the model's total.
                flops_all += flops * names.len() as f64;
                secs_all += secs * names.len() as f64;
                let what = format!(
                    "{}->{} {}x{}/{} {}x{} ({})",
                    g.in_channels,
                    g.out_channels,
                    g.kernel_h,
                    g.kernel_w,
                    g.stride,
                    g.in_h,
                    g.in_w,
                    names.len()
                );
                println!(
                    "{:<9} {:<40} {:>8.3} {:>8.1} {:>5.0}% {:>5.0}%",
                    format!("{}b{batch}", &model[6..]),
                    what,
                    secs * 1e3,
                    gf,
                    100.0 * gf / (PEAK_PER_THREAD * t as f64),
                    100.0 * gf / peak
                );
            }
            if secs_all == 0.0 {
                continue;
            }
            let gf = flops_all / secs_all / 1e9;
            println!(
                "{:<9} {:<40} {:>8.3} {:>8.1} {:>5.0}% {:>5.0}%",
                format!("{}b{batch}", &model[6..]),
                "all convs, each layer once",
                secs_all * 1e3,
                gf,
                100.0 * gf / (PEAK_PER_THREAD * t as f64),
                100.0 * gf / peak
            );
        }
    }
}
