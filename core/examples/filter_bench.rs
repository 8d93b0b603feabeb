//! Times backward-filter on the convolutions of ResNet-20 (batch 128) and a few ResNet-50
//! shapes: im2col + GEMM, the direct register-blocked kernel and (on 3x3 stride-1 shapes)
//! Winograd F(2x2) and F(4x4), 1 and 2 threads.
//!
//! `cargo run --release --example filter_bench [-- REPS [LABEL]]`: GFLOP/s of
//! `2 K C kh kw N OH OW` over the median of REPS (default 5) runs after one warm-up, for
//! the shapes whose label contains LABEL (all by default).

use resnet_core::kernels::conv::{conv_backward_filter, FilterGradWorkspace};
use resnet_core::kernels::filter_grad::filter_grad_direct;
use resnet_core::kernels::im2col::ConvGeometry;
use resnet_core::kernels::plan::winograd_applies;
use resnet_core::kernels::winograd::WinogradTile;
use resnet_core::kernels::winograd_filter_grad::winograd_backward_filter;
use std::time::Instant;

fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
        .collect()
}

/// (label, batch, C, H = W, K, kernel, stride, pad)
type Shape = (&'static str, usize, usize, usize, usize, usize, usize, usize);

fn main() {
    let reps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5).max(1);
    let only = std::env::args().nth(2).unwrap_or_default();
    let shapes: &[Shape] = &[
        ("R20 stem", 128, 3, 32, 16, 3, 1, 1),
        ("R20 16@32", 128, 16, 32, 16, 3, 1, 1),
        ("R20 16->32/2", 128, 16, 32, 32, 3, 2, 1),
        ("R20 32@16", 128, 32, 16, 32, 3, 1, 1),
        ("R20 32->64/2", 128, 32, 16, 64, 3, 2, 1),
        ("R20 64@8", 128, 64, 8, 64, 3, 1, 1),
        ("R50 stem 7x7/2", 8, 3, 224, 64, 7, 2, 3),
        ("R50 1x1 64->256@56", 8, 64, 56, 256, 1, 1, 0),
        ("R50 3x3 64@56", 8, 64, 56, 64, 3, 1, 1),
        ("R50 3x3 128@28", 8, 128, 28, 128, 3, 1, 1),
        ("R50 3x3 256@14", 8, 256, 14, 256, 3, 1, 1),
        ("R50 3x3 512@7", 8, 512, 7, 512, 3, 1, 1),
        ("R50 1x1/2 256->512", 8, 256, 56, 512, 1, 2, 0),
    ];
    println!(
        "{:<20} {:>3} | {:>7} {:>7} {:>7} {:>7} | GFLOP/s",
        "shape", "thr", "gemm", "direct", "wino2", "wino4"
    );
    for &(label, n, c, h, k, ks, s, pad) in shapes.iter().filter(|s| s.0.contains(&only)) {
        let g = ConvGeometry::new(n, c, h, h, k, (ks, ks), s, pad).unwrap();
        let x = values(n * g.in_image(), 1);
        let dy = values(n * g.out_image(), 2);
        let mut dw = vec![0.0; k * g.col_rows()];
        let mut ws = FilterGradWorkspace::default();
        let flops = 2.0 * g.macs() as f64;
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let times = pool.install(|| {
                let mut t = vec![
                    median_secs(reps, || conv_backward_filter(&g, &x, &dy, &mut dw, None, &mut ws)),
                    median_secs(reps, || filter_grad_direct(&g, &x, &dy, &mut dw, None, &mut ws)),
                ];
                if winograd_applies(&g) {
                    for tile in [WinogradTile::F2, WinogradTile::F4] {
                        t.push(median_secs(reps, || {
                            winograd_backward_filter(&g, tile, &x, &dy, &mut dw, None, &mut ws)
                        }));
                    }
                }
                t
            });
            let cell = |i: usize| {
                times
                    .get(i)
                    .map_or("-".to_string(), |t| format!("{:.1}", flops / t / 1e9))
            };
            println!(
                "{label:<20} {threads:>3} | {:>7} {:>7} {:>7} {:>7} | ms {}",
                cell(0),
                cell(1),
                cell(2),
                cell(3),
                times
                    .iter()
                    .map(|t| format!("{:.2}", t * 1e3))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }
}
