//! Training behaviour: SGD semantics, overfitting a small batch, determinism.

mod common;

use common::randn;
use resnet_core::model::ResNetConfig;
use resnet_core::rng::Rng;
use resnet_core::train::{Schedule, Sgd, Trainer};
use resnet_core::{Params, Tensor};

fn resnet8(seed: u64) -> Params {
    Params::new(ResNetConfig::named("resnet8").unwrap(), seed).unwrap()
}

/// The offset of `fc.bias` in the flat values.
fn fc_bias(p: &Params) -> usize {
    p.entry("fc.bias").unwrap().offset
}

fn batch(rng: &mut Rng, n: usize, size: usize) -> (Tensor, Vec<u32>) {
    let x = Tensor::new(vec![n, 3, size, size], randn(rng, n * 3 * size * size)).unwrap();
    let labels = (0..n).map(|_| rng.below(10) as u32).collect();
    (x, labels)
}

#[test]
fn sgd_follows_pytorch_semantics() {
    // One scalar parameter: fc.bias[0] of a model whose other gradients we ignore.
    let mut p = resnet8(0);
    let i = fc_bias(&p);
    p.grads_mut().fill(0.0);
    p.values_mut()[i] = 1.0;
    p.grads_mut()[i] = 0.5;
    let mut sgd = Sgd::new(0.9, 0.1);
    // Step 1: g = 0.5 + 0.1 * 1 = 0.6; v = g; p = 1 - 0.1 * 0.6 = 0.94.
    sgd.step(&mut p, 0.1);
    assert!((p.values()[i] - 0.94).abs() < 1e-7);
    assert_eq!(sgd.velocity.len(), p.param_count());
    // Step 2: g = 0.5 + 0.094 = 0.594; v = 0.9 * 0.6 + 0.594 = 1.134; p = 0.94 - 0.1134.
    sgd.step(&mut p, 0.1);
    assert!((p.values()[i] - (0.94 - 0.1134)).abs() < 1e-6, "{}", p.values()[i]);
    // Weight decay reaches every parameter, even one with a zero gradient; no momentum
    // keeps no velocity.
    let mut q = resnet8(0);
    q.grads_mut().fill(0.0);
    let before = q.values().to_vec();
    let mut plain = Sgd::new(0.0, 0.5);
    plain.step(&mut q, 0.1);
    assert!(plain.velocity.is_empty());
    for (a, b) in q.values().iter().zip(&before) {
        assert_eq!(*a, b - 0.1 * (0.5 * b));
    }
}

#[test]
fn small_resnet_overfits_64_random_images() {
    let mut rng = Rng::new(42);
    let (x, labels) = batch(&mut rng, 64, 16);
    let mut p = resnet8(1);
    let mut t = Trainer::new(Sgd::new(0.9, 0.0), Schedule::Constant { base_lr: 0.05 });
    let first = t.step(&mut p, &x, &labels).unwrap();
    let mut last = first;
    for _ in 0..150 {
        last = t.step(&mut p, &x, &labels).unwrap();
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
    let eval = t.evaluate(&p, &x, &labels, 32).unwrap();
    println!("eval accuracy {:.3}, loss {:.4}", eval.accuracy(), eval.loss);
    assert_eq!(eval.accuracy(), 1.0);
}

fn train_resnet20(steps: usize) -> Params {
    let mut rng = Rng::new(7);
    let mut p = Params::new(ResNetConfig::named("resnet20").unwrap(), 3).unwrap();
    let mut t = Trainer::new(Sgd::new(0.9, 1e-4), Schedule::paper(0.1, 100));
    for _ in 0..steps {
        let (x, labels) = batch(&mut rng, 8, 32);
        t.step(&mut p, &x, &labels).unwrap();
    }
    p
}

#[test]
fn resnet20_training_is_deterministic_for_a_seed_and_thread_count() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let a = pool.install(|| train_resnet20(3));
    let b = pool.install(|| train_resnet20(3));
    assert!(a.values() == b.values(), "two identical runs gave different weights");
    assert!(
        a.buffers() == b.buffers(),
        "two identical runs gave different statistics"
    );
    let fresh = Params::new(ResNetConfig::named("resnet20").unwrap(), 3).unwrap();
    assert_ne!(a.values(), fresh.values());
    assert_eq!(a.buffers().len(), 2 * 16 * 7 + 2 * 32 * 6 + 2 * 64 * 6);
}

#[test]
fn diverging_loss_stops_with_the_iteration_and_keeps_the_weights() {
    let mut rng = Rng::new(3);
    let (mut x, labels) = batch(&mut rng, 4, 8);
    x.data_mut()[0] = f32::NAN;
    let mut p = resnet8(1);
    let mut t = Trainer::new(Sgd::new(0.9, 0.0), Schedule::Constant { base_lr: 0.1 });
    let before = p.values().to_vec();
    let err = t.step(&mut p, &x, &labels).unwrap_err().to_string();
    assert!(err.contains("iteration 0") && err.contains("NaN"), "{err}");
    assert_eq!(p.values(), &before[..]);
    assert_eq!(t.iteration, 0);
    let bad_label = [0u32, 1, 2, 10];
    let (x, _) = batch(&mut rng, 4, 8);
    let err = t.step(&mut p, &x, &bad_label).unwrap_err().to_string();
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
        (
            Trainer::new(Sgd::new(0.9, 1e-4), Schedule::Constant { base_lr: 0.1 }),
            resnet8(2),
        )
    };
    let ((mut a, mut pa), (mut b, mut pb), (mut reference, mut pr)) = (make(), make(), make());
    a.compute_gradients(&mut pa, &half(0), &labels[..4]).unwrap();
    b.compute_gradients(&mut pb, &half(4), &labels[4..]).unwrap();
    let avg: Vec<f32> = pa.grads().iter().zip(pb.grads()).map(|(x, y)| 0.5 * (x + y)).collect();
    for (t, p) in [(&mut a, &mut pa), (&mut b, &mut pb)] {
        p.set_grads(&avg).unwrap();
        t.apply_gradients(p);
    }
    pr.set_grads(&avg).unwrap();
    reference.apply_gradients(&mut pr);
    assert_eq!(pa.grads(), pb.grads());
    assert_eq!(pa.values(), pb.values());
    assert_eq!(pa.values(), pr.values());
    assert!(pa.set_grads(&avg[1..]).is_err());
    let stats = pa.buffers().to_vec();
    pb.set_buffers(&stats).unwrap();
    assert_eq!(pb.buffers(), &stats[..]);
}

#[test]
fn divergence_is_caught_in_the_loss_the_weights_and_the_running_statistics() {
    use resnet_core::train::trainer::check_params;
    use resnet_core::Error;
    let mut rng = Rng::new(4);
    let (x, labels) = batch(&mut rng, 4, 8);
    let trainer = || Trainer::new(Sgd::new(0.9, 0.0), Schedule::Constant { base_lr: 0.1 });

    // An exploding but finite loss: logits of 1e6 from a huge classifier.
    let mut p = resnet8(1);
    let fc = p.entry("fc.weight").unwrap().clone();
    p.values_mut()[fc.offset..fc.offset + fc.len]
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = if i % 3 == 0 { 1e6 } else { -1e6 });
    match trainer().step(&mut p, &x, &labels) {
        Err(Error::Diverged { iteration: 0, what }) => assert!(what.contains("the loss is"), "{what}"),
        other => panic!("expected divergence, found {other:?}"),
    }

    // An infinite running variance: the loss stays finite, the state does not.
    let mut p = resnet8(1);
    p.get_mut("layer1.0.bn2.running_var").unwrap()[3] = f32::INFINITY;
    let mut t = trainer();
    t.iteration = 7;
    match t.step(&mut p, &x, &labels) {
        Err(Error::Diverged { iteration: 7, what }) => {
            assert!(what.contains("layer1.0.bn2.running_var holds inf"), "{what}")
        }
        other => panic!("expected divergence, found {other:?}"),
    }

    // A NaN weight and an exploding one are both named.
    let mut p = resnet8(1);
    p.get_mut("layer2.0.conv1.weight").unwrap()[0] = f32::NAN;
    let err = check_params(&p, 3).unwrap_err().to_string();
    assert!(
        err.contains("iteration 3") && err.contains("layer2.0.conv1.weight holds NaN"),
        "{err}"
    );
    let mut p = resnet8(1);
    p.get_mut("conv1.weight").unwrap()[5] = 1e20;
    let err = check_params(&p, 3).unwrap_err().to_string();
    assert!(err.contains("conv1.weight holds 1e20"), "{err}");
    check_params(&resnet8(1), 0).unwrap();
}
