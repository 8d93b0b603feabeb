//! Writes a randomly initialised zoo model (with non-trivial batch-norm statistics) as
//! our safetensors, runs it in evaluation mode on a raw f32 input, and writes the logits:
//! the engine's side of `scripts/check_onnx.py`, which runs the same weights in ONNX
//! Runtime.
//!
//! `cargo run --release -p resnet-core --example forward_dump -- MODEL SEED WEIGHTS_OUT INPUT.f32 N LOGITS_OUT.f32`

use resnet_core::classifier::{default_classes, Classifier};
use resnet_core::data::augment::Normalization;
use resnet_core::model::ResNetConfig;
use resnet_core::params::Kind;
use resnet_core::rng::Rng;
use resnet_core::Params;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, seed, weights_out, input, n, logits_out] = &args[..] else {
        return Err("usage: forward_dump MODEL SEED WEIGHTS_OUT INPUT.f32 N LOGITS_OUT.f32".into());
    };
    let seed: u64 = seed.parse()?;
    let n: usize = n.parse()?;
    let config = ResNetConfig::named(model)?;
    let size = config.input_size;
    let mut params = Params::new(config.clone(), seed)?;
    let mut rng = Rng::new(seed ^ 0x5eed);
    for e in params.entries().to_vec() {
        let t = params.get_mut(&e.name).expect("listed");
        match e.kind {
            Kind::Buffer if e.name.ends_with("running_mean") => {
                t.iter_mut().for_each(|v| *v = 0.1 * rng.normal() as f32)
            }
            Kind::Buffer => t.iter_mut().for_each(|v| *v = 0.5 + rng.uniform() as f32),
            Kind::Param if e.name.contains("bn") || e.name.contains("downsample.1") => {
                let base = if e.name.ends_with("weight") { 1.0 } else { 0.0 };
                t.iter_mut().for_each(|v| *v = base + 0.1 * rng.normal() as f32);
            }
            Kind::Param => {}
        }
    }
    let bytes = std::fs::read(input)?;
    let x: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut c = Classifier::new(
        params,
        default_classes(config.num_classes),
        Normalization::PerChannel {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        },
        Default::default(),
    );
    let start = std::time::Instant::now();
    let logits = c.logits(&x, n, size, size)?.to_vec();
    eprintln!(
        "{model}: forward of {n} images in {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let out: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(logits_out, out)?;
    std::fs::write(weights_out, c.to_safetensors()?)?;
    Ok(())
}
