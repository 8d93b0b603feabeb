//! Times the blocked backward-data convolution (`kernels::blocked::data_grad`) on the
//! distinct convolutions of ResNet-20 (batch 128, 32x32) and ResNet-50 (batch 1 and 8,
//! 224x224), the stems left out (their dx is never needed).
//!
//! `cargo run --release -p resnet-core --example dgrad_bench -- [THREADS [FILTER]]`
//! (default 2 threads; FILTER keeps the rows whose label, e.g. `20b128 16->32`, contains
//! it). GFLOP/s count `2 * N * K * C * KH * KW * OH * OW` (the forward convolution's
//! multiply-adds) over the median time of several runs after a warm-up, and over the
//! fastest run; the pack of the weights (once per training step) is timed separately.
//! `fwd` is the forward direct convolution of the same layer (the same FLOPs) timed right
//! after it, the yardstick that moves with the machine's load as the kernel does.

use resnet_core::kernels::blocked::data_grad::{data_grad, data_grad_packed_len, pack_data_grad_weights};
use resnet_core::kernels::blocked::direct::{direct_conv, pack_weights, packed_len};
use resnet_core::kernels::blocked::BlockedEpilogue;
use resnet_core::kernels::im2col::ConvGeometry;
use resnet_core::layout::Blocked;
use resnet_core::model::{Arch, ResNetConfig};
use resnet_core::simd::{F32xBlock, BLOCK};
use std::time::Instant;

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
        .collect()
}

/// Median and fastest seconds of `f` over runs filling about 0.2 s (at least 5), after a
/// warm-up. The fastest run is what the kernel does when no other tenant of the machine
/// takes a core from it (this 2-core machine is shared).
fn median_secs(mut f: impl FnMut()) -> (f64, f64) {
    let start = Instant::now();
    f();
    let once = start.elapsed().as_secs_f64().max(1e-6);
    let reps = ((0.2 / once) as usize).clamp(5, 200);
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    (t[reps / 2], t[0])
}

fn shapes(name: &str, batch: usize, size: usize) -> Vec<(ConvGeometry, Vec<String>)> {
    let net = Arch::of(&ResNetConfig::named(name).expect("a zoo model")).expect("it builds");
    net.distinct_conv_geometries(batch, size, size).expect("its geometries")
}

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let filter = std::env::args().nth(2).unwrap_or_default();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool");
    println!(
        "blocked backward-data convolution, block {BLOCK}, {threads} thread(s); GFLOP/s = 2 * MACs / median time (best: fastest run)"
    );
    println!(
        "{:<9} {:<34} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "model", "conv (layers)", "ms", "GFLOP/s", "best", "pack ms", "fwd"
    );
    for (model, batch, size) in [("resnet20", 128, 32), ("resnet50", 1, 224), ("resnet50", 8, 224)] {
        let (mut flops_all, mut secs_all) = (0.0, 0.0);
        for (g, names) in shapes(model, batch, size) {
            if g.in_channels < 4 {
                continue;
            }
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
            let label = format!("{}b{batch}", &model[6..]);
            if !format!("{label} {what}").contains(&filter) {
                continue;
            }
            let dy_l = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, BLOCK);
            let dx_l = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, BLOCK);
            let dy = values(dy_l.len(), 1);
            let w = values(g.out_channels * g.col_rows(), 2);
            let mut packed = vec![0.0; data_grad_packed_len(&g, BLOCK)];
            let (pack, _) = pool.install(|| median_secs(|| pack_data_grad_weights(&w, &g, BLOCK, &mut packed)));
            let mut dx = vec![0.0; dx_l.len()];
            let (secs, best) = pool.install(|| median_secs(|| data_grad::<F32xBlock>(&g, &dy, &packed, &mut dx)));
            let x = values(dx_l.len(), 3);
            let mut fwd_packed = vec![0.0; packed_len(&g, BLOCK, BLOCK)];
            pack_weights(&w, None, &g, BLOCK, BLOCK, &mut fwd_packed);
            let (ep, mut y) = (BlockedEpilogue::default(), vec![0.0; dy_l.len()]);
            let (fwd, _) =
                pool.install(|| median_secs(|| direct_conv::<F32xBlock>(&g, &x, BLOCK, &fwd_packed, &ep, &mut y)));
            let flops = 2.0 * g.macs() as f64;
            flops_all += flops * names.len() as f64;
            secs_all += secs * names.len() as f64;
            println!(
                "{:<9} {:<34} {:>8.3} {:>8.1} {:>8.1} {:>9.3} {:>8.1}",
                label,
                what,
                secs * 1e3,
                flops / secs / 1e9,
                flops / best / 1e9,
                pack * 1e3,
                flops / fwd / 1e9
            );
        }
        if secs_all > 0.0 {
            println!(
                "{:<9} {:<34} {:>8.3} {:>8.1}",
                format!("{}b{batch}", &model[6..]),
                "all (each layer once)",
                secs_all * 1e3,
                flops_all / secs_all / 1e9
            );
        }
    }
}
