//! Times every step of an inference plan inside the network (caches as the network
//! leaves them), next to the sum of the steps and the whole call.
//!
//! `cargo run --release -p resnet-core --example plan_profile -- MODEL BATCH [REPS] [CONV] [THREADS]`
//!
//! The plan runs inside a pool of THREADS (default 2) as `resnet bench` runs it, so that
//! the calling thread is one of the pool's and every step's tasks start at once.

use resnet_core::model::ResNetConfig;
use resnet_core::plan::{ConvChoice, ExecutionPlan, PlanOptions};
use resnet_core::Params;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads: usize = args.get(4).map_or(Ok(2), |s| s.parse())?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    pool.install(|| profile(&args)).map_err(|e| e.to_string().into())
}

fn profile(args: &[String]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let model = args.first().map_or("resnet50", |s| s.as_str());
    let n: usize = args.get(1).map_or(Ok(1), |s| s.parse())?;
    let reps: usize = args.get(2).map_or(Ok(20), |s| s.parse())?;
    let conv: ConvChoice = args.get(3).map_or(Ok(ConvChoice::Auto), |s| s.parse())?;
    let config = ResNetConfig::named(model)?;
    let size = config.input_size;
    let params = Params::new(config.clone(), 1)?;
    let x = vec![0.5f32; n * 3 * size * size];
    let mut plan = ExecutionPlan::inference(&config, n, size, size, PlanOptions { conv })?;
    plan.set_profiling(true);
    let mut sums: Vec<(String, Vec<f64>)> = Vec::new();
    let mut whole = Vec::new();
    for rep in 0..=reps {
        let t = Instant::now();
        plan.forward(&params, &x, n)?;
        let dt = t.elapsed().as_secs_f64();
        if rep == 0 {
            continue;
        }
        whole.push(dt);
        for (i, (name, s)) in plan.step_profile().into_iter().enumerate() {
            if sums.len() <= i {
                sums.push((name, Vec::new()));
            }
            sums[i].1.push(s);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut total = 0.0;
    for (i, (name, v)) in sums.iter_mut().enumerate() {
        let m = median(v);
        total += m;
        let conv = plan.convs().iter().find(|c| &c.name == name);
        let algo = conv.map_or("", |c| c.algo.name());
        let shape = conv.map_or(String::new(), |c| {
            let g = &c.geometry;
            format!("{}x{}/{}", g.kernel_h, g.kernel_w, g.stride)
        });
        println!("{i:3} {name:28} {algo:6} {shape:6} {:8.3} ms", m * 1e3);
    }
    println!(
        "sum of step medians {:.2} ms, whole call median {:.2} ms",
        total * 1e3,
        median(&mut whole) * 1e3
    );
    Ok(())
}
