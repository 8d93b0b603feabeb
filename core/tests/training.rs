//! Training behaviour: SGD semantics, overfitting a small batch, determinism.

mod common;

use common::randn;
use resnet_core::model::{ResNet, ResNetConfig};
use resnet_core::rng::Rng;
use resnet_core::train::{Schedule, Sgd, Trainer};
use resnet_core::Tensor;

fn batch(rng: &mut Rng, n: usize, size: usize) -> (Tensor, Vec<u32>) {
    let x = Tensor::new(vec![n, 3, size, size], randn(rng, n * 3 * size * size)).unwrap();
    let labels = (0..n).map(|_| rng.below(10) as u32).collect();
    (x, labels)
}

#[test]
fn sgd_follows_pytorch_semantics() {
    // One scalar parameter: fc.bias[0] of a model whose other gradients we ignore.
    let mut model = ResNet::new(ResNetConfig::named("resnet8").unwrap(), 0).unwrap();
    model.zero_grad();
    model.fc.bias.value[0] = 1.0;
    model.fc.bias.grad[0] = 0.5;
    let mut sgd = Sgd::new(0.9, 0.1);
    // Step 1: g = 0.5 + 0.1 * 1 = 0.6; v = g; p = 1 - 0.1 * 0.6 = 0.94.
    sgd.step(&mut model, 0.1);
    assert!((model.fc.bias.value[0] - 0.94).abs() < 1e-7);
    // Step 2: g = 0.5 + 0.094 = 0.594; v = 0.9 * 0.6 + 0.594 = 1.134; p = 0.94 - 0.1134.
    sgd.step(&mut model, 0.1);
    assert!(
        (model.fc.bias.value[0] - (0.94 - 0.1134)).abs() < 1e-6,
        "{}",
        model.fc.bias.value[0]
    );
}

#[test]
fn small_resnet_overfits_64_random_images() {
    let mut rng = Rng::new(42);
    let (x, labels) = batch(&mut rng, 64, 16);
    let model = ResNet::new(ResNetConfig::named("resnet8").unwrap(), 1).unwrap();
    let mut t = Trainer::new(model, Sgd::new(0.9, 0.0), Schedule::Constant { base_lr: 0.05 });
    let first = t.step(&x, &labels).unwrap();
    let mut last = first;
    for _ in 0..150 {
        last = t.step(&x, &labels).unwrap();
        if last.accuracy == 1.0 && last.loss < 0.05 {
            break;
        }
    }
    println!(
        "loss {:.3} -> {:.4}, accuracy {:.3} after {} steps",
        first.loss,
        last.loss,
        last.accuracy,
        last.iteration + 1
    );
    assert_eq!(last.accuracy, 1.0, "training accuracy {}", last.accuracy);
    // Evaluation mode (running statistics) also classifies them all.
    let eval = t.evaluate(&x, &labels, 32).unwrap();
    println!("eval accuracy {:.3}, loss {:.4}", eval.accuracy(), eval.loss);
    assert_eq!(eval.accuracy(), 1.0);
}

fn train_resnet20(steps: usize) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(7);
    let model = ResNet::new(ResNetConfig::named("resnet20").unwrap(), 3).unwrap();
    let mut t = Trainer::new(model, Sgd::new(0.9, 1e-4), Schedule::paper(0.1, 100));
    for _ in 0..steps {
        let (x, labels) = batch(&mut rng, 8, 32);
        t.step(&x, &labels).unwrap();
    }
    let mut out = Vec::new();
    t.model.visit(&mut |_, slot| match slot {
        resnet_core::layers::Slot::Param(p) => out.push(p.value.clone()),
        resnet_core::layers::Slot::Buffer(_, b) => out.push(b.clone()),
    });
    out
}

#[test]
fn resnet20_training_is_deterministic_for_a_seed_and_thread_count() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let a = pool.install(|| train_resnet20(3));
    let b = pool.install(|| train_resnet20(3));
    assert!(a == b, "two identical runs gave different weights");
    let fresh = ResNet::new(ResNetConfig::named("resnet20").unwrap(), 3)
        .unwrap()
        .param_count();
    assert_eq!(
        a.iter().map(|v| v.len()).sum::<usize>(),
        fresh + 2 * 16 * 7 + 2 * 32 * 6 + 2 * 64 * 6
    );
}

#[test]
fn diverging_loss_stops_with_the_iteration_and_keeps_the_weights() {
    let mut rng = Rng::new(3);
    let (mut x, labels) = batch(&mut rng, 4, 8);
    x.data_mut()[0] = f32::NAN;
    let model = ResNet::new(ResNetConfig::named("resnet8").unwrap(), 1).unwrap();
    let mut t = Trainer::new(model, Sgd::new(0.9, 0.0), Schedule::Constant { base_lr: 0.1 });
    let before = t.model.fc.weight.value.clone();
    let err = t.step(&x, &labels).unwrap_err().to_string();
    assert!(err.contains("iteration 0") && err.contains("NaN"), "{err}");
    assert_eq!(t.model.fc.weight.value, before);
    let bad_label = [0u32, 1, 2, 10];
    let (x, _) = batch(&mut rng, 4, 8);
    let err = t.step(&x, &bad_label).unwrap_err().to_string();
    assert!(err.contains("label 10") && err.contains("10 classes"), "{err}");
}

#[test]
fn averaged_gradients_of_two_halves_equal_one_full_batch_step_without_batch_norm_coupling() {
    // Data-parallel building blocks: gradients exported, averaged and applied. With batch
    // norm the halves' statistics differ from the full batch's, so compare against the
    // explicit average of the two halves' gradients rather than a full-batch step.
    let mut rng = Rng::new(8);
    let (x, labels) = batch(&mut rng, 8, 8);
    let half = |lo: usize| {
        let per = 3 * 8 * 8;
        Tensor::new(vec![4, 3, 8, 8], x.data()[lo * per..(lo + 4) * per].to_vec()).unwrap()
    };
    let make = || {
        Trainer::new(
            ResNet::new(ResNetConfig::named("resnet8").unwrap(), 2).unwrap(),
            Sgd::new(0.9, 1e-4),
            Schedule::Constant { base_lr: 0.1 },
        )
    };
    let (mut a, mut b, mut reference) = (make(), make(), make());
    a.compute_gradients(&half(0), &labels[..4]).unwrap();
    b.compute_gradients(&half(4), &labels[4..]).unwrap();
    let (ga, gb) = (a.model.gradients_flat(), b.model.gradients_flat());
    let avg: Vec<f32> = ga.iter().zip(&gb).map(|(x, y)| 0.5 * (x + y)).collect();
    for t in [&mut a, &mut b] {
        t.model.set_gradients_flat(&avg).unwrap();
        t.apply_gradients();
    }
    reference.model.set_gradients_flat(&avg).unwrap();
    reference.apply_gradients();
    assert_eq!(a.model.gradients_flat(), b.model.gradients_flat());
    let params = |t: &mut Trainer| {
        let mut v = Vec::new();
        t.model.for_each_param(&mut |p| v.extend_from_slice(&p.value));
        v
    };
    assert_eq!(params(&mut a), params(&mut b));
    assert_eq!(params(&mut a), params(&mut reference));
    assert!(a.model.set_gradients_flat(&avg[1..]).is_err());
    let stats = a.model.buffers_flat();
    b.model.set_buffers_flat(&stats).unwrap();
    assert_eq!(b.model.buffers_flat(), stats);
}
