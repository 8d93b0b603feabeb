//! `resnet bench`: whole-model throughput of inference or training steps on random data.

use anyhow::Result;
use clap::Args;
use resnet_core::kernels::im2col::ConvGeometry;
use resnet_core::kernels::peak::{fma_peak_gflops, sgemm_gflops};
use resnet_core::kernels::plan::{choose, choose_filter, fastest, fastest_filter, Pass};
use resnet_core::layers::Mode;
use resnet_core::model::{ResNet, ResNetConfig, ShortcutOption};
use resnet_core::rng::Rng;
use resnet_core::simd::{F32x, F32xWide, LANES, WIDE_LANES};
use resnet_core::train::{Schedule, Sgd, Trainer};
use resnet_core::Tensor;
use std::time::Instant;

/// Arguments of `resnet bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Model name, e.g. resnet20, resnet50.
    #[arg(long)]
    model: String,
    /// Images per batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Time training steps (forward, backward, SGD update) instead of inference.
    #[arg(long)]
    train: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Shortcut option (default: the model's).
    #[arg(long)]
    shortcut: Option<ShortcutOption>,
    /// Timed repetitions after one warm-up; the median is reported.
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Also time every distinct convolution shape with each algorithm: which one the
    /// plan picks next to the fastest.
    #[arg(long)]
    layers: bool,
    /// Run inference layer by layer (batch norm, residual add and ReLU as separate
    /// passes) instead of folding batch norms into the convolutions.
    #[arg(long)]
    no_fold: bool,
    /// Also measure the machine's ceilings: the FP32 FMA peak of the crate's SIMD vector
    /// on the same threads, and single-thread sgemm (matrixmultiply) on 1024^3.
    #[arg(long)]
    peak: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the benchmark in a pool of the requested size.
pub fn run(args: BenchArgs) -> Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    pool.install(|| bench(&args, threads))
}

fn bench(args: &BenchArgs, threads: usize) -> Result<()> {
    let mut config = ResNetConfig::named(&args.model)?;
    if let Some(s) = args.shortcut {
        config = config.with_shortcut(s);
    }
    let size = config.input_size;
    let classes = config.num_classes;
    let mut net = ResNet::new(config, 0)?;
    net.set_fold_bn(!args.no_fold);
    let macs: u64 = net.layer_table(size, size)?.iter().map(|r| r.macs).sum();
    let mut rng = Rng::new(1);
    let n = args.batch.max(1);
    let x = Tensor::new(
        vec![n, 3, size, size],
        (0..n * 3 * size * size).map(|_| rng.normal() as f32).collect(),
    )?;
    let labels: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
    let mut trainer = Trainer::new(net, Sgd::new(0.9, 1e-4), Schedule::Constant { base_lr: 0.01 });
    let mut times = Vec::new();
    for rep in 0..=args.reps.max(1) {
        let start = Instant::now();
        if args.train {
            trainer.step(&x, &labels)?;
        } else {
            trainer.model.forward(&x, Mode::Eval)?;
        }
        if rep > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let images_per_s = n as f64 / median;
    // Useful FLOPs: 2 per multiply-add; a training step does about three forward passes' worth.
    let flops = 2.0 * macs as f64 * n as f64 * if args.train { 3.0 } else { 1.0 };
    let gflops = flops / median / 1e9;
    let what = if args.train { "training step" } else { "inference" };
    let layers = if args.layers {
        layer_table(&mut trainer.model, n, size, args.train)?
    } else {
        Vec::new()
    };
    let peak = args.peak.then(|| {
        (
            fma_peak_gflops::<F32xWide>(threads, 1.0),
            fma_peak_gflops::<F32x>(threads, 1.0),
            sgemm_gflops(1024, 5),
        )
    });
    if args.json {
        let doc = serde_json::json!({
            "model": args.model, "batch": n, "train": args.train, "threads": threads,
            "median_ms": median * 1e3, "images_per_second": images_per_s, "gflops": gflops,
            "min_ms": times[0] * 1e3, "max_ms": times[times.len() - 1] * 1e3, "layers": layers,
            "fma_peak_gflops": peak.map(|p| p.0), "fma_peak_lanes": WIDE_LANES,
            "fma_peak_gflops_narrow": peak.map(|p| p.1), "fma_peak_narrow_lanes": LANES,
            "sgemm_1024_gflops_1_thread": peak.map(|p| p.2), "kernels": kernel_report(),
        });
        println!("{doc}");
    } else {
        println!(
            "{} batch {n} {what}, {threads} thread(s): median {:.2} ms ({} reps), {:.1} images/s, {:.1} GFLOP/s",
            args.model,
            median * 1e3,
            times.len(),
            images_per_s,
            gflops
        );
        if let Some((fma, narrow, sgemm)) = peak {
            println!(
                "FP32 FMA peak ({threads} thread(s)): {fma:.1} GFLOP/s on {WIDE_LANES} lanes, {narrow:.1} on \
                 {LANES}; this run at {:.0} % of the first. sgemm 1024^3 on 1 thread: {sgemm:.1} GFLOP/s",
                100.0 * gflops / fma
            );
            println!("{}", kernel_report());
        }
        if !layers.is_empty() {
            print_layers(&layers);
        }
    }
    Ok(())
}

/// Times each distinct convolution shape of `model` at batch `n` with every applicable
/// algorithm, for the forward pass and (when training) backward-data and backward-filter.
fn layer_table(model: &mut ResNet, n: usize, size: usize, train: bool) -> Result<Vec<serde_json::Value>> {
    let mut rows: Vec<serde_json::Value> = Vec::new();
    let seen = model.distinct_conv_geometries(n, size, size)?;
    let passes: &[Pass] = if train {
        &[Pass::Forward, Pass::BackwardData]
    } else {
        &[Pass::Forward]
    };
    let flops = |g: &ConvGeometry| 2.0 * g.macs() as f64;
    let row = |g: &ConvGeometry, names: &[String], pass: &str, chosen: &str, best: &str, timings: Vec<(&str, f64)>| {
        let chosen_s = timings.iter().find(|t| t.0 == chosen).map_or(f64::NAN, |t| t.1);
        serde_json::json!({
            "layers": names, "count": names.len(),
            "shape": format!("{}x{}x{}x{} -> {} k{} s{}", g.batch, g.in_channels, g.in_h, g.in_w, g.out_channels, g.kernel_h, g.stride),
            "pass": pass, "chosen": chosen, "fastest": best,
            "chosen_ms": chosen_s * 1e3, "chosen_gflops": flops(g) / chosen_s / 1e9,
            "timings": timings.iter().map(|(a, t)| serde_json::json!({"algo": a, "ms": t * 1e3, "gflops": flops(g) / t / 1e9})).collect::<Vec<_>>(),
        })
    };
    for (g, names) in &seen {
        for &pass in passes {
            let (best, timings) = fastest(g, pass);
            let timings = timings.iter().map(|(a, t)| (a.name(), *t)).collect();
            rows.push(row(
                g,
                names,
                &format!("{pass:?}"),
                choose(g, pass).name(),
                best.name(),
                timings,
            ));
        }
        if train {
            let (best, timings) = fastest_filter(g);
            let timings = timings.iter().map(|(a, t)| (a.name(), *t)).collect();
            rows.push(row(
                g,
                names,
                "BackwardFilter",
                choose_filter(g).name(),
                best.name(),
                timings,
            ));
        }
    }
    Ok(rows)
}

fn print_layers(rows: &[serde_json::Value]) {
    println!(
        "\n{:<34} {:>3}  {:<12} {:<6} {:>9} {:>8}  all (GFLOP/s)",
        "convolution (N x C x H x W -> K)", "x", "pass", "chosen", "ms", "GFLOP/s"
    );
    for r in rows {
        let all: Vec<String> = r["timings"]
            .as_array()
            .map(|t| {
                t.iter()
                    .map(|t| {
                        format!(
                            "{} {:.0}",
                            t["algo"].as_str().unwrap_or(""),
                            t["gflops"].as_f64().unwrap_or(0.0)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let flag = if r["chosen"] == r["fastest"] {
            ""
        } else {
            "  <- fastest differs"
        };
        println!(
            "{:<34} {:>3}  {:<14} {:<6} {:>9.3} {:>8.1}  {}{flag}",
            r["shape"].as_str().unwrap_or(""),
            r["count"],
            r["pass"].as_str().unwrap_or(""),
            r["chosen"].as_str().unwrap_or(""),
            r["chosen_ms"].as_f64().unwrap_or(0.0),
            r["chosen_gflops"].as_f64().unwrap_or(0.0),
            all.join(", ")
        );
    }
}

/// Which vector code this build runs: the crate's kernels (fixed at compile time by
/// `-C target-cpu`) and matrixmultiply's sgemm kernel (chosen at run time).
fn kernel_report() -> String {
    let ours = if WIDE_LANES == 16 {
        "f32x16 (AVX-512F) in the multiply-add kernels, f32x8 in the transforms"
    } else {
        "f32x8 in every kernel (this build has no AVX-512F)"
    };
    #[cfg(target_arch = "x86_64")]
    let sgemm = if std::arch::is_x86_feature_detected!("avx512f") {
        "its AVX-512 kernel (detected at run time)"
    } else if std::arch::is_x86_feature_detected!("fma") {
        "its AVX2+FMA kernel"
    } else {
        "its SSE/AVX kernel"
    };
    #[cfg(not(target_arch = "x86_64"))]
    let sgemm = "its portable kernel";
    format!("vector code: {ours}; matrixmultiply sgemm: {sgemm}")
}
