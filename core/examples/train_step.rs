//! Times one CIFAR ResNet-20 training step (forward, loss, backward, SGD update) at batch
//! 128 on random data, with a 1-thread and a 2-thread rayon pool.
//!
//! `cargo run --release --example train_step [-- STEPS [MODEL [BATCH]]]`: prints the
//! median images/s of STEPS (default 7) steps after two warm-up steps (the first step
//! sizes every buffer). `RESNET_CONV` and `RESNET_FILTER_GRAD` pick the kernels.

use resnet_core::model::ResNetConfig;
use resnet_core::rng::Rng;
use resnet_core::train::{Schedule, Sgd, Trainer};
use resnet_core::Tensor;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(7).max(1);
    let name = args.next().unwrap_or_else(|| "resnet20".to_string());
    let batch: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(128);
    let threads: Vec<usize> = std::env::var("THREADS")
        .ok()
        .map(|s| s.split(',').filter_map(|t| t.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2]);
    let mut rng = Rng::new(1);
    let data: Vec<f32> = (0..batch * 3 * 32 * 32).map(|_| rng.normal() as f32).collect();
    let images = Tensor::new(vec![batch, 3, 32, 32], data).unwrap();
    let labels: Vec<u32> = (0..batch).map(|_| rng.below(10) as u32).collect();
    for t in threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
        let mut params = resnet_core::Params::new(ResNetConfig::named(&name).unwrap(), 0).unwrap();
        let mut trainer = Trainer::new(Sgd::new(0.9, 1e-4), Schedule::Constant { base_lr: 0.01 });
        let mut times: Vec<f64> = pool.install(|| {
            for _ in 0..2 {
                trainer.step(&mut params, &images, &labels).unwrap();
            }
            (0..steps)
                .map(|_| {
                    let s = Instant::now();
                    trainer.step(&mut params, &images, &labels).unwrap();
                    s.elapsed().as_secs_f64()
                })
                .collect()
        });
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        println!(
            "{name} batch {batch}, {t} thread(s): median step {:.1} ms, {:.0} images/s (min {:.0}, max {:.0})",
            med * 1e3,
            batch as f64 / med,
            batch as f64 / times[times.len() - 1],
            batch as f64 / times[0]
        );
    }
}
