//! Times the blocked backward-filter kernel (`kernels::blocked::filter_grad`) on the
//! convolutions of ResNet-20 (batch 128) and ResNet-50 (batches 1, 8 and 16), at the plan's
//! vector (`F32xBlock`), on 1 and 2 threads, and the Winograd backward-filter kernel
//! (`kernels::blocked::winograd_filter_grad`, F(2x2) and F(4x4)) on 2 threads where it
//! applies (GFLOP/s counted as the direct convolution's).
//!
//! `cargo run --release --example fgrad_bench [-- REPS [LABEL]]`: GFLOP/s of
//! `2 K C kh kw N OH OW` over the median of REPS (default 5) runs after one warm-up, for
//! the shapes whose label contains LABEL (all by default).

use resnet_core::kernels::blocked::filter_grad::filter_grad;
use resnet_core::kernels::blocked::winograd_filter_grad::winograd_filter_grad;
use resnet_core::kernels::im2col::ConvGeometry;
use resnet_core::kernels::winograd::WinogradTile;
use resnet_core::simd::{F32xBlock, BLOCK};
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

/// CPU time of every thread of this process so far, in seconds (Linux schedstat; 0
/// elsewhere): on a machine shared with other jobs, GFLOP/s per CPU-second of one thread
/// shows what the kernel does when it runs, which wall time under contention does not.
fn cpu_secs() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
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
        ("R20b128 stem", 128, 3, 32, 16, 3, 1, 1),
        ("R20b128 16@32", 128, 16, 32, 16, 3, 1, 1),
        ("R20b128 16->32/2", 128, 16, 32, 32, 3, 2, 1),
        ("R20b128 32@16", 128, 32, 16, 32, 3, 1, 1),
        ("R20b128 32->64/2", 128, 32, 16, 64, 3, 2, 1),
        ("R20b128 64@8", 128, 64, 8, 64, 3, 1, 1),
        ("R20b1 16@32", 1, 16, 32, 16, 3, 1, 1),
        ("R20b4 16@32", 4, 16, 32, 16, 3, 1, 1),
        ("R20b4 32@16", 4, 32, 16, 32, 3, 1, 1),
        ("R50b1 stem 7x7/2", 1, 3, 224, 64, 7, 2, 3),
        ("R50b1 1x1 64->256@56", 1, 64, 56, 256, 1, 1, 0),
        ("R50b1 3x3 64@56", 1, 64, 56, 64, 3, 1, 1),
        ("R50b1 3x3 128@28", 1, 128, 28, 128, 3, 1, 1),
        ("R50b1 3x3 256@14", 1, 256, 14, 256, 3, 1, 1),
        ("R50b1 3x3 512@7", 1, 512, 7, 512, 3, 1, 1),
        ("R50b1 1x1 2048->512@7", 1, 2048, 7, 512, 1, 1, 0),
        ("R50b1 1x1/2 256->512", 1, 256, 56, 512, 1, 2, 0),
        ("R50b8 stem 7x7/2", 8, 3, 224, 64, 7, 2, 3),
        ("R50b8 1x1 64->256@56", 8, 64, 56, 256, 1, 1, 0),
        ("R50b8 3x3 64@56", 8, 64, 56, 64, 3, 1, 1),
        ("R50b8 3x3 128@28", 8, 128, 28, 128, 3, 1, 1),
        ("R50b8 3x3 256@14", 8, 256, 14, 256, 3, 1, 1),
        ("R50b8 3x3 512@7", 8, 512, 7, 512, 3, 1, 1),
        ("R50b8 1x1/2 256->512", 8, 256, 56, 512, 1, 2, 0),
        ("R50b16 stem 7x7/2", 16, 3, 224, 64, 7, 2, 3),
        ("R50b16 3x3 64@56", 16, 64, 56, 64, 3, 1, 1),
        ("R50b16 3x3 128@28", 16, 128, 28, 128, 3, 1, 1),
        ("R50b16 3x3 256@14", 16, 256, 14, 256, 3, 1, 1),
        ("R50b16 3x3 512@7", 16, 512, 7, 512, 3, 1, 1),
        ("R50b16 1x1 64->256@56", 16, 64, 56, 256, 1, 1, 0),
        ("R50b16 1x1 256->64@56", 16, 256, 56, 64, 1, 1, 0),
        ("R50b16 3x3/2 128@56", 16, 128, 56, 128, 3, 2, 1),
        ("R50b16 1x1 256->1024@14", 16, 256, 14, 1024, 1, 1, 0),
        ("R50b16 1x1 1024->256@14", 16, 1024, 14, 256, 1, 1, 0),
        ("R50b16 1x1/2 512->1024", 16, 512, 28, 1024, 1, 2, 0),
        ("R50b16 1x1 512->128@28", 16, 512, 28, 128, 1, 1, 0),
    ];
    println!("{BLOCK} lanes; GFLOP/s (ms) on 1 thread, per CPU-second of 1 thread, on 2 threads (cores it got)");
    // Built once, so that no thread (and its CPU time) leaves the process meanwhile.
    let pools: Vec<rayon::ThreadPool> = [1, 2]
        .iter()
        .map(|&t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap())
        .collect();
    for &(label, n, c, h, k, ks, s, pad) in shapes.iter().filter(|s| s.0.contains(&only)) {
        let g = ConvGeometry::new(n, c, h, h, k, (ks, ks), s, pad).unwrap();
        let in_block = if c < 4 { 1 } else { BLOCK };
        let x = values(n * c.div_ceil(in_block) * in_block * h * h, 1);
        let dy = values(n * k.div_ceil(BLOCK) * BLOCK * g.out_plane(), 2);
        let mut dw = vec![0.0; k * g.col_rows()];
        let flops = 2.0 * g.macs() as f64;
        let mut cells = Vec::new();
        for (threads, pool) in [1, 2].iter().zip(&pools) {
            let c0 = cpu_secs();
            let t = pool.install(|| median_secs(reps, || filter_grad::<F32xBlock>(&g, &x, in_block, &dy, &mut dw)));
            cells.push(format!("{:>6.1} ({:>7.3})", flops / t / 1e9, t * 1e3));
            let cpu = (cpu_secs() - c0) / (reps + 1) as f64;
            if *threads == 1 {
                cells.push(format!("cpu {:>6.1}", flops / cpu / 1e9));
            } else {
                // Cores the call had on average: under 2 when another job held one.
                cells.push(format!("on {:.1} cores", cpu / t));
            }
        }
        if ks == 3 && s == 1 && in_block == BLOCK {
            for tile in [WinogradTile::F2, WinogradTile::F4] {
                let t = pools[1]
                    .install(|| median_secs(reps, || winograd_filter_grad::<F32xBlock>(&g, tile, &x, &dy, &mut dw)));
                cells.push(format!("{tile:?} {:>6.1} ({:>7.3})", flops / t / 1e9, t * 1e3));
            }
        }
        println!("{label:<24} {}", cells.join("  "));
    }
}
