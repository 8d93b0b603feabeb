//! Times the 3x3 stride-1 convolutions of ResNet-20 (batch 128) and ResNet-50 (batch 1
//! and 8): im2col + GEMM against Winograd F(2x2,3x3) and F(4x4,3x3), forward and
//! backward-data, on 1 and 2 threads.
//!
//! `cargo run --release --example conv_bench [-- REPS]`. GFLOP/s count the useful FLOPs of
//! a direct convolution, `2 K C 9 N OH OW`, over the median time of REPS (default 5) runs
//! after one warm-up. Winograd forward uses filters transformed once (inference);
//! backward-data includes its filter transform, as a training step does.

use resnet_core::kernels::conv::{conv_backward_data, conv_forward};
use resnet_core::kernels::gemm::{gemm, MatMut, MatRef};
use resnet_core::kernels::im2col::ConvGeometry;
use resnet_core::kernels::winograd::{
    transform_filters, transform_filters_into, winograd_backward_data_with, winograd_forward, WinogradTile,
};
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
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[reps / 2]
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
        .collect()
}

fn main() {
    let reps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5).max(1);
    let pool1 = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let pool2 = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();

    // Reference: one sgemm of M=64, K=576, N=1024 (a 64-channel 3x3 conv on 32x32).
    let (m, k, n) = (64, 576, 1024);
    let (a, b) = (values(m * k, 1), values(k * n, 2));
    let mut c = vec![0.0; m * n];
    let t = pool1.install(|| {
        median_secs(reps.max(5), || {
            gemm(
                1.0,
                MatRef::row_major(&a, m, k),
                MatRef::row_major(&b, k, n),
                0.0,
                MatMut::row_major(&mut c, m, n),
            )
        })
    });
    println!(
        "matrixmultiply sgemm {m}x{k}x{n}, 1 thread: {:.1} GFLOP/s\n",
        2.0 * (m * k * n) as f64 / t / 1e9
    );

    // (net, batch, channels, size)
    let shapes: &[(&str, usize, usize, usize)] = &[
        ("R20", 128, 16, 32),
        ("R20", 128, 32, 16),
        ("R20", 128, 64, 8),
        ("R50", 1, 64, 56),
        ("R50", 1, 128, 28),
        ("R50", 1, 256, 14),
        ("R50", 1, 512, 7),
        ("R50", 8, 64, 56),
        ("R50", 8, 128, 28),
        ("R50", 8, 256, 14),
        ("R50", 8, 512, 7),
    ];
    println!("GFLOP/s (2*K*C*9*N*H*W / median time); fwd = forward, bwd = backward-data; ft = F4 filter transform ms");
    println!(
        "{:<22} {:>3} | {:>6} {:>6} {:>6} | {:>6} {:>6} {:>6} | {:>6} {:>6}",
        "shape", "thr", "gemm", "F2", "F4", "gemm", "F2", "F4", "best", "ft"
    );
    println!("{:<22} {:>3} | {:^20} | {:^20} |", "", "", "forward", "backward-data");
    for &(net, batch, ch, size) in shapes {
        let g = ConvGeometry::new(batch, ch, size, size, ch, (3, 3), 1, 1).unwrap();
        let x = values(batch * g.in_image(), 3);
        let w: Vec<f32> = values(ch * g.col_rows(), 4).iter().map(|v| v * 0.1).collect();
        let bias = values(ch, 5);
        let dy = values(batch * g.out_image(), 6);
        let mut y = vec![0.0; dy.len()];
        let mut dx = vec![0.0; x.len()];
        let flops = 2.0 * g.macs() as f64;
        let f2 = transform_filters(WinogradTile::F2, &w, ch, ch);
        let f4 = transform_filters(WinogradTile::F4, &w, ch, ch);
        let mut rot = transform_filters(WinogradTile::F2, &w, ch, ch);
        for (threads, pool) in [(1, &pool1), (2, &pool2)] {
            let row: Vec<f64> = pool.install(|| {
                let mut r = Vec::new();
                r.push(median_secs(reps, || conv_forward(&g, &x, &w, Some(&bias), &mut y)));
                for f in [&f2, &f4] {
                    r.push(median_secs(reps, || {
                        winograd_forward(&g, f.tile, &x, f, Some(&bias), &mut y)
                    }));
                }
                r.push(median_secs(reps, || conv_backward_data(&g, &w, &dy, &mut dx)));
                for tile in [WinogradTile::F2, WinogradTile::F4] {
                    r.push(median_secs(reps, || {
                        winograd_backward_data_with(&g, tile, &mut rot, &w, &dy, &mut dx)
                    }));
                }
                r.push(median_secs(reps, || {
                    transform_filters_into(WinogradTile::F4, &w, ch, ch, true, &mut rot)
                }));
                r
            });
            let gf: Vec<f64> = row[..6].iter().map(|t| flops / t / 1e9).collect();
            let names = ["gemm", "F2", "F4"];
            let best_f = (0..3).max_by(|&a, &b| gf[a].total_cmp(&gf[b])).unwrap();
            let best_b = (0..3).max_by(|&a, &b| gf[3 + a].total_cmp(&gf[3 + b])).unwrap();
            println!(
                "{:<22} {:>3} | {:>6.1} {:>6.1} {:>6.1} | {:>6.1} {:>6.1} {:>6.1} | {:>2}/{:<3} {:>6.2}",
                format!("{net} N={batch} {ch}->{ch} {size}x{size}"),
                threads,
                gf[0],
                gf[1],
                gf[2],
                gf[3],
                gf[4],
                gf[5],
                names[best_f],
                names[best_b],
                row[6] * 1e3
            );
        }
    }
}
