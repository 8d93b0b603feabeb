//! Times backward-filter on the convolutions of ResNet-20 (batch 128) and a few ResNet-50
//! shapes: im2col + GEMM against the direct register-blocked kernel, 1 and 2 threads.
//!
//! `cargo run --release --example filter_bench [-- REPS]`: GFLOP/s of `2 K C kh kw N OH OW`
//! over the median of REPS (default 5) runs after one warm-up.

use resnet_core::kernels::conv::{conv_backward_filter, FilterGradWorkspace};
use resnet_core::kernels::filter_grad::filter_grad_direct;
use resnet_core::kernels::im2col::ConvGeometry;
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
    let shapes: &[Shape] = &[
        ("R20 stem", 128, 3, 32, 16, 3, 1, 1),
        ("R20 16@32", 128, 16, 32, 16, 3, 1, 1),
        ("R20 16->32/2", 128, 16, 32, 32, 3, 2, 1),
        ("R20 32@16", 128, 32, 16, 32, 3, 1, 1),
        ("R20 32->64/2", 128, 32, 16, 64, 3, 2, 1),
        ("R20 64@8", 128, 64, 8, 64, 3, 1, 1),
        ("R50 stem 7x7/2", 8, 3, 224, 64, 7, 2, 3),
        ("R50 1x1 64->256@56", 8, 64, 56, 256, 1, 1, 0),
        ("R50 3x3 128@28", 8, 128, 28, 128, 3, 1, 1),
        ("R50 3x3 512@7", 8, 512, 7, 512, 3, 1, 1),
        ("R50 1x1/2 256->512", 8, 256, 56, 512, 1, 2, 0),
    ];
    println!("{:<20} {:>3} | {:>7} {:>7} | GFLOP/s", "shape", "thr", "gemm", "direct");
    for &(label, n, c, h, k, ks, s, pad) in shapes {
        let g = ConvGeometry::new(n, c, h, h, k, (ks, ks), s, pad).unwrap();
        let x = values(n * g.in_image(), 1);
        let dy = values(n * g.out_image(), 2);
        let mut dw = vec![0.0; k * g.col_rows()];
        let mut ws = FilterGradWorkspace::default();
        let flops = 2.0 * g.macs() as f64;
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let (tg, td) = pool.install(|| {
                (
                    median_secs(reps, || conv_backward_filter(&g, &x, &dy, &mut dw, None, &mut ws)),
                    median_secs(reps, || filter_grad_direct(&g, &x, &dy, &mut dw, None, &mut ws)),
                )
            });
            println!(
                "{label:<20} {threads:>3} | {:>7.1} {:>7.1} | ms {:.2} {:.2}",
                flops / tg / 1e9,
                flops / td / 1e9,
                tg * 1e3,
                td * 1e3
            );
        }
    }
}
