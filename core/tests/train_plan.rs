//! The training plan on `Params` against the first design's all-in-one `ResNet`: the
//! same kernels in the same order, so logits, loss, every gradient and every running
//! statistic must be bit for bit the same.

mod common;

use common::{randn, small_bottleneck};
use resnet_core::layers::loss::softmax_cross_entropy;
use resnet_core::layers::Mode;
use resnet_core::model::{BottleneckStride, ResNet, ResNetConfig, ShortcutOption};
use resnet_core::plan::TrainingPlan;
use resnet_core::rng::Rng;
use resnet_core::{Params, Tensor};

fn compare(config: ResNetConfig, batch: usize, size: usize) {
    let mut rng = Rng::new(7);
    let mut params = Params::new(config.clone(), 5).unwrap();
    let mut net = ResNet::from_params(&params).unwrap();
    let mut plan = TrainingPlan::new(&config, batch, size, size).unwrap();
    let classes = config.num_classes;
    // A full batch, then a smaller one on a prefix of the plan's slots.
    for n in [batch, batch - 1] {
        let x = randn(&mut rng, n * 3 * size * size);
        let labels: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
        let t = Tensor::new(vec![n, 3, size, size], x.clone()).unwrap();
        let old_logits = net.forward(&t, Mode::Train).unwrap().to_vec();
        let mut old_d = vec![0.0; old_logits.len()];
        let old_loss = softmax_cross_entropy(&old_logits, &labels, classes, &mut old_d).unwrap();
        net.zero_grad();
        net.backward(&old_d);
        let mut old = Params::new(config.clone(), 0).unwrap();
        net.copy_into_params(&mut old);

        let logits = plan.forward_train(&mut params, &x, n).unwrap().to_vec();
        let mut d = vec![0.0; logits.len()];
        let loss = softmax_cross_entropy(&logits, &labels, classes, &mut d).unwrap();
        params.grads_mut().fill(0.0);
        plan.backward(&mut params, &d).unwrap();

        let name = &config.name;
        assert_eq!(logits, old_logits, "{name} n={n}: logits");
        assert_eq!(loss, old_loss, "{name} n={n}: loss");
        for e in params.entries() {
            let (a, b) = match e.kind {
                resnet_core::params::Kind::Param => (
                    &params.grads()[e.offset..e.offset + e.len],
                    &old.grads()[e.offset..e.offset + e.len],
                ),
                resnet_core::params::Kind::Buffer => (params.tensor(&e.name), old.tensor(&e.name)),
            };
            let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(a == b, "{name} n={n}: {} differs by up to {diff}", e.name);
        }
        assert_eq!(params.values(), old.values(), "{name}: values untouched");
    }
}

#[test]
fn training_plan_matches_the_resnet_path_bit_for_bit() {
    let r8 = ResNetConfig::named("resnet8").unwrap();
    compare(r8.clone(), 4, 8);
    compare(r8.clone().with_shortcut(ShortcutOption::B), 3, 8);
    compare(r8.with_shortcut(ShortcutOption::C), 3, 8);
    compare(ResNetConfig::named("plain8").unwrap(), 3, 8);
    compare(small_bottleneck(BottleneckStride::Conv3x3), 3, 16);
    compare(small_bottleneck(BottleneckStride::Conv1x1), 2, 16);
}
