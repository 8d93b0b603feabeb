//! `resnet bench`: whole-model throughput of inference or training steps on random data.

use crate::train::Precision;
use anyhow::Result;
use clap::Args;
use resnet_core::kernels::blocked::{amx, bf16};
use resnet_core::kernels::im2col::ConvGeometry;
use resnet_core::kernels::peak::{fma_peak_gflops, sgemm_gflops};
use resnet_core::model::{Arch, ResNetConfig, ShortcutOption};
use resnet_core::plan::choose::{time_candidates, Algo};
use resnet_core::plan::train::{bf16_name, time_passes, DataGradAlgo, TrainConv};
use resnet_core::plan::TrainingPlan;
use resnet_core::plan::{ConvChoice, ExecutionPlan, PlanOptions};
use resnet_core::rng::Rng;
use resnet_core::simd::{F32x, F32xWide, BLOCK, LANES, WIDE_LANES};
use resnet_core::train::{Schedule, Sgd, Trainer};
use resnet_core::{Params, Tensor};
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
    /// Inference convolution algorithm: auto (the plan's rule), measure (time every
    /// candidate per shape first), direct, wino2, wino4, wino2s2 or wino4s2 (where it
    /// applies).
    #[arg(long, default_value = "auto")]
    conv: ConvChoice,
    /// Also time every distinct convolution shape with each algorithm: which one the
    /// plan picks next to the fastest, with GFLOP/s and % of the measured FMA peak.
    #[arg(long)]
    layers: bool,
    /// Also measure the machine's ceilings: the FP32 FMA peak of the crate's SIMD vector
    /// on the same threads, and single-thread sgemm (matrixmultiply) on 1024^3.
    #[arg(long)]
    peak: bool,
    /// Arithmetic of training's wide Winograd convolutions: f32, or bf16 products summed
    /// in f32 (AVX512_BF16 CPUs; see `resnet train --precision`).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the benchmark in a pool of the requested size.
pub fn run(args: BenchArgs) -> Result<()> {
    let (pool, threads) = crate::train::thread_pool(args.threads)?;
    pool.install(|| bench(&args, threads))
}

/// The median of `reps` timed calls of `f` after one warm-up, with the fastest and slowest.
fn time_reps(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64, f64, usize)> {
    let mut times = Vec::new();
    for rep in 0..=reps.max(1) {
        let start = Instant::now();
        f()?;
        if rep > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[0], times[times.len() - 1], times.len()))
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn bench(args: &BenchArgs, threads: usize) -> Result<()> {
    let mut config = ResNetConfig::named(&args.model)?;
    if let Some(s) = args.shortcut {
        config = config.with_shortcut(s);
    }
    let size = config.input_size;
    let classes = config.num_classes;
    let arch = Arch::of(&config)?;
    let macs: u64 = arch.layer_table(size, size)?.iter().map(|r| r.macs).sum();
    let mut rng = Rng::new(1);
    if args.batch == 0 || args.batch > crate::train::MAX_BATCH {
        anyhow::bail!(
            "--batch must be between 1 and {}, found {}",
            crate::train::MAX_BATCH,
            args.batch
        );
    }
    let n = args.batch;
    let x: Vec<f32> = (0..n * 3 * size * size).map(|_| rng.normal() as f32).collect();
    let mut params = Params::new(config.clone(), 0)?;
    let mut plan_memory = None;
    if args.precision == Precision::Bf16 && !args.train {
        anyhow::bail!("--precision bf16 applies to training steps (--train); inference runs in f32");
    }
    let (median, min, max, reps) = if args.train {
        let labels: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
        let x = Tensor::new(vec![n, 3, size, size], x)?;
        let mut trainer = Trainer::new(Sgd::new(0.9, 1e-4), Schedule::Constant { base_lr: 0.01 });
        if args.precision == Precision::Bf16 {
            trainer.use_bf16()?;
        }
        time_reps(args.reps, || {
            trainer.step(&mut params, &x, &labels)?;
            Ok(())
        })?
    } else {
        let mut plan = ExecutionPlan::inference(&config, n, size, size, PlanOptions { conv: args.conv })?;
        let t = time_reps(args.reps, || {
            plan.forward(&params, &x, n)?;
            Ok(())
        })?;
        plan_memory = Some(plan.memory());
        t
    };
    // Read before `--layers` runs other algorithms: the scratch of the timed calls only.
    let scratch = resnet_core::kernels::scratch::kept_bytes();
    let params_bytes = (params.param_count() + params.buffers().len()) * std::mem::size_of::<f32>();
    let images_per_s = n as f64 / median;
    // Useful FLOPs: 2 per multiply-add; a training step does about three forward passes' worth.
    let flops = 2.0 * macs as f64 * n as f64 * if args.train { 3.0 } else { 1.0 };
    let gflops = flops / median / 1e9;
    let what = if args.train { "training step" } else { "inference" };
    let peak = (args.peak || args.layers).then(|| {
        (
            fma_peak_gflops::<F32xWide>(threads, 1.0),
            fma_peak_gflops::<F32x>(threads, 1.0),
            args.peak.then(|| sgemm_gflops(1024, 5)),
        )
    });
    let layers = if args.layers {
        let fma = peak.map_or(f64::NAN, |p| p.0);
        if args.train {
            train_layer_table(&config, n, size, fma, args.precision == Precision::Bf16)?
        } else {
            inference_layer_table(&config, n, size, args.conv, fma)?
        }
    } else {
        Vec::new()
    };
    let rss = peak_rss();
    if args.json {
        let doc = serde_json::json!({
            "model": args.model, "batch": n, "train": args.train, "threads": threads,
            "median_ms": median * 1e3, "images_per_second": images_per_s, "gflops": gflops,
            "min_ms": min * 1e3, "max_ms": max * 1e3, "layers": layers,
            "fma_peak_gflops": peak.map(|p| p.0), "fma_peak_lanes": WIDE_LANES,
            "fma_peak_gflops_narrow": peak.map(|p| p.1), "fma_peak_narrow_lanes": LANES,
            "sgemm_1024_gflops_1_thread": peak.and_then(|p| p.2), "kernels": kernel_report(),
            "peak_rss_bytes": rss, "scratch_bytes": scratch,
            "params_bytes": params_bytes,
            "plan_arena_bytes": plan_memory.map(|m| m.arena),
            "plan_largest_activation_bytes": plan_memory.map(|m| m.largest_activation),
            "plan_derived_weight_bytes": plan_memory.map(|m| m.derived_weights),
        });
        println!("{doc}");
    } else {
        println!(
            "{} batch {n} {what}, {threads} thread(s): median {:.2} ms ({reps} reps), {:.1} images/s, {:.1} GFLOP/s",
            args.model,
            median * 1e3,
            images_per_s,
            gflops
        );
        let mb = |b: usize| b as f64 / (1 << 20) as f64;
        if let Some(m) = plan_memory {
            println!(
                "memory: activation arena {:.1} MB (largest activation {:.1} MB), weights {:.1} MB + derived {:.1} MB, \
                 scratch {:.1} MB; peak resident {:.1} MB",
                mb(m.arena),
                mb(m.largest_activation),
                mb(params_bytes),
                mb(m.derived_weights),
                mb(scratch),
                mb(rss.unwrap_or(0) as usize)
            );
        } else if let Some(rss) = rss {
            println!(
                "memory: scratch {:.1} MB; peak resident {:.1} MB",
                mb(scratch),
                mb(rss as usize)
            );
        }
        if let Some((fma, narrow, sgemm)) = peak {
            println!(
                "FP32 FMA peak ({threads} thread(s)): {fma:.1} GFLOP/s on {WIDE_LANES} lanes, {narrow:.1} on \
                 {LANES}; this run at {:.0} % of the first.{}",
                100.0 * gflops / fma,
                sgemm.map_or(String::new(), |s| format!(" sgemm 1024^3 on 1 thread: {s:.1} GFLOP/s"))
            );
            println!("{}", kernel_report());
        }
        if !layers.is_empty() {
            print_layers(&layers);
        }
    }
    Ok(())
}

/// One row of the `--layers` table: a shape, a pass, the algorithm chosen, every
/// candidate's time, GFLOP/s and % of `fma` (the measured FMA peak).
fn layer_row(
    g: &ConvGeometry,
    names: &[String],
    pass: &str,
    chosen: &str,
    timings: &[(&str, f64)],
    fma: f64,
) -> serde_json::Value {
    let flops = 2.0 * g.macs() as f64;
    let chosen_s = timings.iter().find(|t| t.0 == chosen).map_or(f64::NAN, |t| t.1);
    let best = timings.iter().min_by(|a, b| a.1.total_cmp(&b.1)).map_or("", |t| t.0);
    serde_json::json!({
        "layers": names, "count": names.len(),
        "shape": format!("{}x{}x{}x{} -> {} k{} s{}", g.batch, g.in_channels, g.in_h, g.in_w, g.out_channels, g.kernel_h, g.stride),
        "pass": pass, "chosen": chosen, "fastest": best,
        "chosen_ms": chosen_s * 1e3, "chosen_gflops": flops / chosen_s / 1e9,
        "chosen_percent_of_peak": 100.0 * flops / chosen_s / 1e9 / fma,
        "timings": timings.iter().map(|(a, t)| serde_json::json!({"algo": a, "ms": t * 1e3, "gflops": flops / t / 1e9})).collect::<Vec<_>>(),
    })
}

/// Every convolution of the inference plan, grouped by shape: the plan's algorithm
/// beside every candidate, timed on the plan's blocked layout.
fn inference_layer_table(
    config: &ResNetConfig,
    n: usize,
    size: usize,
    conv: ConvChoice,
    fma: f64,
) -> Result<Vec<serde_json::Value>> {
    let plan = ExecutionPlan::inference(config, n, size, size, PlanOptions { conv })?;
    let mut groups: Vec<(ConvGeometry, usize, &str, Vec<String>)> = Vec::new();
    for c in plan.convs() {
        match groups
            .iter_mut()
            .find(|(g, b, a, _)| *g == c.geometry && *b == c.in_block && *a == c.algo.name())
        {
            Some((_, _, _, names)) => names.push(c.name.clone()),
            None => groups.push((c.geometry, c.in_block, c.algo.name(), vec![c.name.clone()])),
        }
    }
    let mut rows = Vec::new();
    for (g, in_block, chosen, names) in groups {
        let timings = time_candidates(&g, in_block, 5);
        let timings: Vec<(&str, f64)> = timings.iter().map(|(a, t)| (a.name(), *t)).collect();
        rows.push(layer_row(&g, &names, "Forward", chosen, &timings, fma));
    }
    Ok(rows)
}

/// Every convolution of the training plan, grouped by shape: for each pass (forward,
/// backward-data, backward-filter) the plan's choice beside every candidate, timed on
/// the blocked layout the plan runs; with `bf16`, the plan of `--precision bf16`, whose
/// passes with bf16 products are named `bf16` (1x1) or `bf16-wino2`.
fn train_layer_table(
    config: &ResNetConfig,
    n: usize,
    size: usize,
    fma: f64,
    bf16: bool,
) -> Result<Vec<serde_json::Value>> {
    let mut plan = TrainingPlan::new(config, n, size, size)?;
    if bf16 {
        plan.use_bf16()?;
    }
    let mut groups: Vec<(&TrainConv, Vec<String>)> = Vec::new();
    for c in plan.convs() {
        match groups
            .iter_mut()
            .find(|(g, _)| g.geometry == c.geometry && g.in_block == c.in_block)
        {
            Some((_, names)) => names.push(c.name.clone()),
            None => groups.push((c, vec![c.name.clone()])),
        }
    }
    // A pass's f32 candidates and, where it was timed, its bf16 kernel.
    let with_bf16 = |mut f32s: Vec<(&'static str, f64)>, bf16: Option<(Algo, f64)>| {
        f32s.extend(bf16.map(|(a, s)| (bf16_name(a), s)));
        f32s
    };
    let mut rows = Vec::new();
    for (c, names) in groups {
        let t = time_passes(&c.geometry, c.in_block, 5, bf16);
        let forward = with_bf16(t.forward.iter().map(|(a, s)| (a.name(), *s)).collect(), t.forward_bf16);
        let chosen = if c.forward_bf16() {
            bf16_name(c.forward)
        } else {
            c.forward.name()
        };
        rows.push(layer_row(&c.geometry, &names, "Forward", chosen, &forward, fma));
        if let Some(algo) = c.data_grad {
            let data = with_bf16(
                t.data_grad.iter().map(|(a, s)| (a.name(), *s)).collect(),
                t.data_grad_bf16,
            );
            let chosen = match algo {
                DataGradAlgo::Forward(a) if c.data_grad_bf16() => bf16_name(a),
                // A strided backward-data with bf16 products runs the polyphase tile kernel.
                DataGradAlgo::Strided if c.data_grad_bf16() => bf16_name(Algo::Direct),
                _ => algo.name(),
            };
            rows.push(layer_row(&c.geometry, &names, "BackwardData", chosen, &data, fma));
        }
        let filter: Vec<(&str, f64)> = t.filter_grad.iter().map(|(a, s)| (a.name(), *s)).collect();
        rows.push(layer_row(
            &c.geometry,
            &names,
            "BackwardFilter",
            c.filter_grad.name(),
            &filter,
            fma,
        ));
    }
    Ok(rows)
}

fn print_layers(rows: &[serde_json::Value]) {
    println!(
        "\n{:<34} {:>3}  {:<14} {:<10} {:>9} {:>8} {:>6}  all (GFLOP/s)",
        "convolution (N x C x H x W -> K)", "x", "pass", "chosen", "ms", "GFLOP/s", "% peak"
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
            "{:<34} {:>3}  {:<14} {:<10} {:>9.3} {:>8.1} {:>6.0}  {}{flag}",
            r["shape"].as_str().unwrap_or(""),
            r["count"],
            r["pass"].as_str().unwrap_or(""),
            r["chosen"].as_str().unwrap_or(""),
            r["chosen_ms"].as_f64().unwrap_or(0.0),
            r["chosen_gflops"].as_f64().unwrap_or(0.0),
            r["chosen_percent_of_peak"].as_f64().unwrap_or(f64::NAN),
            all.join(", ")
        );
    }
}

/// Which vector code this build runs: the crate's kernels (fixed at compile time by
/// `-C target-cpu`) and matrixmultiply's sgemm kernel (chosen at run time).
fn kernel_report() -> String {
    let ours = if WIDE_LANES == 16 {
        "inference and training in blocks of 16 channels on f32x16 (AVX-512F)"
    } else {
        "inference and training in blocks of 8 channels on f32x8 (this build has no AVX-512F)"
    };
    debug_assert_eq!(BLOCK, WIDE_LANES);
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
    let half = if amx::available() {
        "AMX tiles (tdpbf16ps)"
    } else if bf16::available() {
        "AVX512_BF16 (vdpbf16ps)"
    } else {
        "none on this CPU"
    };
    format!("vector code: {ours}; bf16 products (--precision bf16): {half}; matrixmultiply sgemm: {sgemm}")
}
