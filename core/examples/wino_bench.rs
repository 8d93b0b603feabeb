//! Times the blocked Winograd convolution (`kernels::blocked::winograd`) on every 3x3
//! stride-1 convolution of ResNet-20 (batch 1 and 128, 32x32) and ResNet-50 (batch 1 and
//! 8, 224x224), F(2x2,3x3) and F(4x4,3x3), at `F32xBlock`.
//!
//! `cargo run --release -p resnet-core --example wino_bench -- [THREADS] [REPS] [ONLY]`
//! (default: 1 and 2 threads, 7 reps, every shape; ONLY keeps the shapes whose name
//! contains it). On a CPU with AVX512_BF16 (16-lane builds) two more columns time the
//! bf16 products (`--precision bf16`). Effective GFLOP/s count the FLOPs of the direct
//! convolution, `2 * MACs`, over the median time of REPS runs after a warm-up; "% peak"
//! compares them with the f32 FMA peak per thread measured at start (`kernels::peak`)
//! times the threads, so Winograd can exceed 100 %.

use resnet_core::kernels::blocked::bf16;
use resnet_core::kernels::blocked::winograd::{filters_len, transform_filters, winograd_conv_with, Transformed};
use resnet_core::kernels::blocked::BlockedEpilogue;
use resnet_core::kernels::im2col::ConvGeometry;
use resnet_core::kernels::winograd::WinogradTile;
use resnet_core::layout::Blocked;
use resnet_core::model::{Arch, ResNetConfig};
use resnet_core::simd::{F32xBlock, BLOCK};
use std::time::Instant;

/// The f32 FMA peak the brief quotes for one Zen 4 core, GFLOP/s (`resnet bench
/// --peak` on the machine it was measured on); the bench also prints the peak it
/// measures itself, which is what "% peak" uses.
const PEAK_PER_THREAD_NOMINAL: f64 = 113.0;

/// Seconds this thread has run on a CPU, for WINO_CPU=1 (Linux: `clock_gettime` of
/// `CLOCK_THREAD_CPUTIME_ID`; 0 elsewhere).
fn thread_cpu_secs() -> f64 {
    #[cfg(target_os = "linux")]
    {
        #[repr(C)]
        struct Timespec {
            sec: i64,
            nsec: i64,
        }
        extern "C" {
            fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
        }
        const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
        let mut ts = Timespec { sec: 0, nsec: 0 };
        // SAFETY: `ts` is a valid, writable `struct timespec` (two 64-bit fields on
        // 64-bit Linux) and the clock id is Linux's thread CPU-time clock.
        unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.sec as f64 + ts.nsec as f64 * 1e-9
    }
    #[cfg(not(target_os = "linux"))]
    0.0
}

fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    // WINO_CPU=1 (single thread only): the time the thread ran rather than wall time, so
    // that another tenant of the machine taking the core does not count.
    let cpu = std::env::var_os("WINO_CPU").is_some();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            if cpu {
                let s = thread_cpu_secs();
                f();
                thread_cpu_secs() - s
            } else {
                let s = Instant::now();
                f();
                s.elapsed().as_secs_f64()
            }
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // WINO_MIN=1: the fastest run instead, for A/B comparisons on a busy machine.
    if std::env::var_os("WINO_MIN").is_some() {
        t[0]
    } else {
        t[reps / 2]
    }
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
        .collect()
}

fn convs(name: &str, batch: usize, size: usize) -> Vec<(ConvGeometry, String)> {
    let net = Arch::of(&ResNetConfig::named(name).unwrap()).unwrap();
    net.distinct_conv_geometries(batch, size, size)
        .unwrap()
        .into_iter()
        .filter(|(g, _)| g.kernel_h == 3 && g.stride == 1 && g.in_channels >= 16)
        .map(|(g, names)| (g, names[0].clone()))
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: Vec<usize> = match args.next().and_then(|s| s.parse().ok()) {
        Some(t) => vec![t],
        None => vec![1, 2],
    };
    let reps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(7).max(1);
    // Only the shapes whose name contains this (for profiling one shape).
    let only = args.next().unwrap_or_default();
    let mut shapes = Vec::new();
    for (net, batch, size) in [
        ("resnet20", 1, 32),
        ("resnet20", 128, 32),
        ("resnet50", 1, 224),
        ("resnet50", 8, 224),
    ] {
        for (g, layer) in convs(net, batch, size) {
            let name = format!("{net} b{batch} {layer}");
            if name.contains(&only) {
                shapes.push((name, g));
            }
        }
    }
    let peak = resnet_core::kernels::peak::fma_peak_gflops::<F32xBlock>(1, 0.3);
    println!("f32 FMA peak measured here: {peak:.1} GFLOP/s per thread (nominal {PEAK_PER_THREAD_NOMINAL})");
    println!("effective GFLOP/s = 2 * direct-conv MACs / median time; % of the measured peak x threads");
    let with_bf16 = bf16::available() && BLOCK == bf16::LANES;
    let mut head = format!(
        "{:<28} {:>12} {:>3} | {:>8} {:>6} {:>8} | {:>8} {:>6} {:>8}",
        "shape", "CxHxW", "thr", "F2 GF/s", "%peak", "ms", "F4 GF/s", "%peak", "ms"
    );
    if with_bf16 {
        head += &format!(
            " | {:>8} {:>6} {:>8} | {:>8} {:>6} {:>8}",
            "F2 bf16", "%peak", "ms", "F4 bf16", "%peak", "ms"
        );
    }
    println!("{head}");
    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
        for (name, g) in &shapes {
            let xs = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, BLOCK);
            let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, BLOCK);
            let x = values(xs.len(), 1);
            let w = values(g.out_channels * g.in_channels * 9, 2);
            let mut y = vec![0.0; ys.len()];
            let mut row = format!(
                "{name:<28} {:>12} {t:>3} |",
                format!("{}x{}x{}", g.in_channels, g.in_h, g.in_w)
            );
            let variants = [
                (WinogradTile::F2, false),
                (WinogradTile::F4, false),
                (WinogradTile::F2, true),
                (WinogradTile::F4, true),
            ];
            for (tile, half) in variants.into_iter().filter(|v| with_bf16 || !v.1) {
                let mut u = vec![0.0; filters_len(tile, g.in_channels, g.out_channels, BLOCK)];
                transform_filters(&w, None, g.in_channels, g.out_channels, tile, BLOCK, &mut u);
                let mut u16s = vec![0u16; if half { u.len() } else { 0 }];
                if half {
                    let (a, ocb, cp) = (
                        tile.alpha(),
                        g.out_channels.div_ceil(BLOCK),
                        g.in_channels.next_multiple_of(BLOCK),
                    );
                    bf16::pack_filters(&u, a * a, ocb, cp, &mut u16s);
                }
                let filters = if half {
                    Transformed::Bf16(&u16s)
                } else {
                    Transformed::F32(&u)
                };
                let ep = BlockedEpilogue {
                    relu: true,
                    relu_output: None,
                    ..Default::default()
                };
                let secs = pool.install(|| {
                    median_secs(reps, || {
                        winograd_conv_with::<F32xBlock>(g, tile, &x, filters, &ep, &mut y)
                    })
                });
                let gflops = 2.0 * g.macs() as f64 / secs / 1e9;
                row += &format!(
                    " {gflops:>8.1} {:>5.0}% {:>8.3} |",
                    100.0 * gflops / (peak * t as f64),
                    secs * 1e3
                );
            }
            println!("{row}");
        }
    }
}
