//! Writes a randomly initialised zoo model (with non-trivial batch-norm statistics) as
//! our safetensors, runs it in evaluation mode on a raw f32 input, and writes the logits:
//! the engine's side of `scripts/check_onnx.py`, which runs the same weights in ONNX
//! Runtime.
//!
//! `cargo run --release -p resnet-core --example forward_dump -- MODEL SEED WEIGHTS_OUT INPUT.f32 N LOGITS_OUT.f32`

use resnet_core::classifier::{default_classes, Classifier};
use resnet_core::data::augment::Normalization;
use resnet_core::layers::{Mode, Slot};
use resnet_core::model::{ResNet, ResNetConfig};
use resnet_core::rng::Rng;
use resnet_core::Tensor;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, seed, weights_out, input, n, logits_out] = &args[..] else {
        return Err("usage: forward_dump MODEL SEED WEIGHTS_OUT INPUT.f32 N LOGITS_OUT.f32".into());
    };
    let seed: u64 = seed.parse()?;
    let n: usize = n.parse()?;
    let config = ResNetConfig::named(model)?;
    let size = config.input_size;
    let mut net = ResNet::new(config.clone(), seed)?;
    let mut rng = Rng::new(seed ^ 0x5eed);
    net.visit(&mut |name, slot| match slot {
        Slot::Buffer(_, b) if name.ends_with("running_mean") => {
            b.iter_mut().for_each(|v| *v = 0.1 * rng.normal() as f32)
        }
        Slot::Buffer(_, b) => b.iter_mut().for_each(|v| *v = 0.5 + rng.uniform() as f32),
        Slot::Param(p) if name.contains("bn") || name.contains("downsample.1") => {
            let base = if name.ends_with("weight") { 1.0 } else { 0.0 };
            p.value.iter_mut().for_each(|v| *v = base + 0.1 * rng.normal() as f32);
        }
        Slot::Param(_) => {}
    });
    let bytes = std::fs::read(input)?;
    let x: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let t = Tensor::new(vec![n, 3, size, size], x)?;
    let start = std::time::Instant::now();
    let logits = net.forward(&t, Mode::Eval)?.to_vec();
    eprintln!(
        "{model}: forward of {n} images in {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let out: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(logits_out, out)?;
    let mut c = Classifier {
        classes: default_classes(config.num_classes),
        net,
        normalization: Normalization::PerChannel {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        },
        metadata: Default::default(),
    };
    std::fs::write(weights_out, c.to_safetensors()?)?;
    Ok(())
}
