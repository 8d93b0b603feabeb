//! The zoo's structure: parameter counts (paper / torchvision), multiply-adds, shortcut
//! options, where bottlenecks put their stride, and batch-norm semantics by hand.

mod common;

use common::small_bottleneck;
use resnet_core::kernels::norm::NormGeometry;
use resnet_core::layers::batchnorm;
use resnet_core::model::{Arch, BottleneckStride, ResNetConfig, ShortcutOption};
use resnet_core::params::Kind;
use resnet_core::plan::{ExecutionPlan, PlanOptions, TrainingPlan};
use resnet_core::rng::Rng;
use resnet_core::tensor::{max_abs, max_abs_diff};
use resnet_core::train::{Schedule, Sgd, Trainer};
use resnet_core::{Params, Tensor};

/// Trainable values of `config`, from the layout alone (nothing allocated).
fn count_of(config: &ResNetConfig) -> usize {
    let layout = Params::layout_of(config).unwrap();
    layout.iter().filter(|e| e.kind == Kind::Param).map(|e| e.len).sum()
}

fn params(name: &str) -> usize {
    count_of(&ResNetConfig::named(name).unwrap())
}

#[test]
fn parameter_counts_match_the_paper_and_torchvision() {
    for (name, expected) in [
        ("resnet20", 269_722),
        ("resnet56", 853_018),
        ("resnet110", 1_727_962),
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("resnet101", 44_549_160),
        ("resnet152", 60_192_808),
    ] {
        assert_eq!(params(name), expected, "{name}");
    }
    // The plain nets have the same layers without shortcuts: option A adds nothing.
    assert_eq!(params("plain20"), 269_722);
    // resnet1202 (n = 200): 19.4M in the paper's Table 6.
    let p = params("resnet1202");
    assert!((19_400_000..19_500_000).contains(&p), "resnet1202 has {p}");
}

#[test]
fn shortcut_options_add_the_projections_table_3_describes() {
    let count = |s| count_of(&ResNetConfig::named("resnet20").unwrap().with_shortcut(s));
    // B: projections where 16->32 and 32->64 (1x1 conv + BN each).
    assert_eq!(count(ShortcutOption::B), 269_722 + (16 * 32 + 64) + (32 * 64 + 128));
    // C: a projection on each of the 9 blocks.
    let c_extra = 3 * (16 * 16 + 32) + (16 * 32 + 64) + 2 * (32 * 32 + 64) + (32 * 64 + 128) + 2 * (64 * 64 + 128);
    assert_eq!(count(ShortcutOption::C), 269_722 + c_extra);
    // resnet34 with option A has no projection parameters.
    let a34 = count_of(
        &ResNetConfig::named("resnet34")
            .unwrap()
            .with_shortcut(ShortcutOption::A),
    );
    assert_eq!(
        a34,
        21_797_672 - (64 * 128 + 256) - (128 * 256 + 512) - (256 * 512 + 1024)
    );
}

#[test]
fn multiply_adds_and_layer_table() {
    let macs = |name: &str| -> u64 {
        let config = ResNetConfig::named(name).unwrap();
        let s = config.input_size;
        Arch::of(&config)
            .unwrap()
            .layer_table(s, s)
            .unwrap()
            .iter()
            .map(|r| r.macs)
            .sum()
    };
    let r20 = macs("resnet20");
    assert!((40_500_000..40_700_000).contains(&r20), "resnet20 {r20}");
    let r50 = macs("resnet50");
    assert!((4_050_000_000..4_150_000_000).contains(&r50), "resnet50 {r50}");

    let table = Arch::of(&ResNetConfig::named("resnet50").unwrap())
        .unwrap()
        .layer_table(224, 224)
        .unwrap();
    let row = |n: &str| {
        table
            .iter()
            .find(|r| r.name == n)
            .unwrap_or_else(|| panic!("no row {n}"))
    };
    assert_eq!(row("conv1").output, [64, 112, 112]);
    assert_eq!(row("maxpool").output, [64, 56, 56]);
    assert_eq!(row("layer1.0.downsample.0").output, [256, 56, 56]);
    // torchvision v1.5: the stride sits on the 3x3 convolution.
    assert_eq!(row("layer2.0.conv1").output, [128, 56, 56]);
    assert_eq!(row("layer2.0.conv2").output, [128, 28, 28]);
    assert_eq!(row("layer4.2.conv3").output, [2048, 7, 7]);
    assert_eq!(row("fc").output, [1000, 1, 1]);
    let total: usize = table.iter().map(|r| r.params).sum();
    assert_eq!(total, 25_557_032);

    let mut paper = ResNetConfig::named("resnet50").unwrap();
    paper.bottleneck_stride = BottleneckStride::Conv1x1;
    let table = Arch::of(&paper).unwrap().layer_table(224, 224).unwrap();
    let conv1 = table.iter().find(|r| r.name == "layer2.0.conv1").unwrap();
    assert_eq!(conv1.output, [128, 28, 28], "paper placement: stride on the first 1x1");

    let t = Arch::of(&ResNetConfig::named("resnet20").unwrap())
        .unwrap()
        .layer_table(32, 32)
        .unwrap();
    assert!(t
        .iter()
        .any(|r| r.name == "layer2.0.shortcut" && r.output == [32, 16, 16]));
    assert_eq!(t.iter().find(|r| r.name == "layer3.2.bn2").unwrap().output, [64, 8, 8]);
}

#[test]
fn tensor_names_follow_torchvision() {
    let layout = Params::layout_of(&ResNetConfig::named("resnet18").unwrap()).unwrap();
    let names: Vec<String> = layout.into_iter().map(|e| e.name).collect();
    for expected in [
        "conv1.weight",
        "bn1.running_var",
        "layer2.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "fc.bias",
    ] {
        assert!(names.iter().any(|n| n == expected), "missing {expected}");
    }
    assert!(!names.iter().any(|n| n.starts_with("layer1.0.downsample")));
}

#[test]
fn batchnorm_matches_hand_computed_values() {
    // One channel, two images of 1x2: values 1, 2 | 3, 4.
    let g = NormGeometry {
        batch: 2,
        channels: 1,
        plane: 2,
    };
    let (gamma, beta) = ([2.0f32], [0.5f32]);
    let (mut rm, mut rv) = ([0.0f32], [1.0f32]);
    let x = [1.0, 2.0, 3.0, 4.0];
    let (mut y, mut xhat, mut mean, mut inv_std) = ([0f32; 4], [0f32; 4], [0f32], [0f32]);
    let mut moments = [0f64; 2];
    let saved = batchnorm::Saved {
        mean: &mut mean,
        inv_std: &mut inv_std,
    };
    batchnorm::forward_train(
        &g,
        &x,
        &gamma,
        &beta,
        &mut rm,
        &mut rv,
        false,
        &mut moments,
        saved,
        &mut xhat,
        &mut y,
    );
    let (m, var) = (2.5f64, 1.25f64);
    for (y, &xv) in y.iter().zip(&x) {
        let want = 2.0 * (xv as f64 - m) / (var + 1e-5).sqrt() + 0.5;
        assert!((*y as f64 - want).abs() < 1e-6, "{y} vs {want}");
    }
    // Running averages: momentum 0.1, unbiased variance 5/3.
    assert!((rm[0] - 0.25).abs() < 1e-7);
    assert!((rv[0] as f64 - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-7);

    // Eval mode uses the running statistics (and cannot change them: they are read-only).
    let saved = batchnorm::Saved {
        mean: &mut mean,
        inv_std: &mut inv_std,
    };
    batchnorm::forward_eval(&g, &x, &gamma, &beta, &rm, &rv, false, saved, &mut xhat, &mut y);
    let r = 0.9 + 0.1 * 5.0 / 3.0;
    for (y, &xv) in y.iter().zip(&x) {
        let want = 2.0 * (xv as f64 - 0.25) / (r + 1e-5f64).sqrt() + 0.5;
        assert!((*y as f64 - want).abs() < 1e-5, "{y} vs {want}");
    }
}

#[test]
fn bad_inputs_get_clear_errors() {
    let mut p = Params::new(ResNetConfig::named("resnet8").unwrap(), 0).unwrap();
    let mut t = Trainer::new(Sgd::new(0.9, 0.0), Schedule::Constant { base_lr: 0.1 });
    let wrong_channels = Tensor::zeros(vec![1, 1, 32, 32]).unwrap();
    let err = t.step(&mut p, &wrong_channels, &[0]).unwrap_err().to_string();
    assert!(err.contains("3 x 32 x 32") && err.contains("1024 values"), "{err}");
    let not_4d = Tensor::zeros(vec![3, 32, 32]).unwrap();
    let err = t.step(&mut p, &not_4d, &[0]).unwrap_err().to_string();
    assert!(err.contains("[3, 32, 32]"), "{err}");
    let mut big = Params::new(ResNetConfig::named("resnet18").unwrap(), 0).unwrap();
    // PyTorch's resnet18 accepts even 1x1 images; an empty one is refused.
    let one = Tensor::zeros(vec![2, 3, 1, 1]).unwrap();
    assert!(t.compute_gradients(&mut big, &one, &[0, 1]).is_ok());
    let mut plan = TrainingPlan::new(big.config(), 1, 1, 1).unwrap();
    assert!(plan.forward_eval(&big, &[0.0; 3], 1).is_ok());
    let Err(err) = TrainingPlan::new(big.config(), 1, 0, 0) else {
        panic!("an empty image must fail");
    };
    assert!(err.to_string().contains("0x0"), "{err}");
    let err = TrainingPlan::new(big.config(), 1, 4, 0).unwrap_err().to_string();
    assert!(err.contains("4x0"), "{err}");
}

/// Inference with batch norms folded into the convolutions and residual adds and ReLUs
/// fused into their stores (the inference plan) gives the layer-by-layer result (the
/// training plan in evaluation mode), for every kind of block, shortcut and stem, with
/// batch-norm statistics far from the identity.
#[test]
fn folded_inference_matches_layer_by_layer() {
    let bottleneck = small_bottleneck(BottleneckStride::Conv1x1);
    let resnet8 = || ResNetConfig::named("resnet8").unwrap();
    let configs = [
        (resnet8(), 12),
        (resnet8().with_shortcut(ShortcutOption::B), 12),
        (resnet8().with_shortcut(ShortcutOption::C), 9),
        (ResNetConfig::named("plain8").unwrap(), 12),
        (bottleneck, 19),
    ];
    for (config, size) in configs {
        let name = format!("{} {:?}", config.name, config.shortcut);
        let mut p = Params::new(config.clone(), 3).unwrap();
        let mut rng = Rng::new(9);
        let names: Vec<String> = p.entries().iter().map(|e| e.name.clone()).collect();
        for n in &names {
            let t = p.get_mut(n).unwrap();
            if n.ends_with("running_var") {
                t.iter_mut().for_each(|v| *v = 0.2 + rng.uniform() as f32 * 2.0)
            } else if n.ends_with("running_mean") {
                t.iter_mut().for_each(|v| *v = rng.normal() as f32 * 0.5)
            } else if n.contains("bn") || n.ends_with("downsample.1.weight") {
                t.iter_mut().for_each(|v| *v = rng.normal() as f32 * 0.8)
            }
        }
        let x: Vec<f32> = (0..2 * 3 * size * size).map(|_| rng.normal() as f32).collect();
        let mut unfused = TrainingPlan::new(&config, 2, size, size).unwrap();
        let mut folded = ExecutionPlan::inference(&config, 2, size, size, PlanOptions::default()).unwrap();
        let want = unfused.forward_eval(&p, &x, 2).unwrap().to_vec();
        let got = folded.forward(&p, &x, 2).unwrap().to_vec();
        let scale = max_abs(want.iter().copied());
        let err = max_abs_diff(&got, &want);
        assert!(
            scale > 1e-3 && err <= 1e-4 * scale,
            "{name}: max error {err} of {scale}"
        );
        // The folded weights follow changes to the running statistics.
        for n in names.iter().filter(|n| n.ends_with("running_mean")) {
            p.get_mut(n).unwrap().iter_mut().for_each(|v| *v += 0.3);
        }
        let moved = folded.forward(&p, &x, 2).unwrap().to_vec();
        let want = unfused.forward_eval(&p, &x, 2).unwrap().to_vec();
        let err = max_abs_diff(&moved, &want);
        assert!(err <= 1e-4 * scale, "{name} after new statistics: max error {err}");
    }
}
