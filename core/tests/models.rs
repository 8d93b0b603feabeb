//! The zoo's structure: parameter counts (paper / torchvision), multiply-adds, shortcut
//! options, where bottlenecks put their stride, and batch-norm semantics by hand.

mod common;

use common::small_bottleneck;
use resnet_core::layers::batchnorm::BatchNorm2d;
use resnet_core::layers::{Dims, Mode, Slot};
use resnet_core::model::{Arch, BottleneckStride, ResNet, ResNetConfig, ShortcutOption};
use resnet_core::rng::Rng;
use resnet_core::Tensor;

fn params(name: &str) -> usize {
    ResNet::new(ResNetConfig::named(name).unwrap(), 0)
        .unwrap()
        .param_count()
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
    let count = |s| {
        ResNet::new(ResNetConfig::named("resnet20").unwrap().with_shortcut(s), 0)
            .unwrap()
            .param_count()
    };
    // B: projections where 16->32 and 32->64 (1x1 conv + BN each).
    assert_eq!(count(ShortcutOption::B), 269_722 + (16 * 32 + 64) + (32 * 64 + 128));
    // C: a projection on each of the 9 blocks.
    let c_extra = 3 * (16 * 16 + 32) + (16 * 32 + 64) + 2 * (32 * 32 + 64) + (32 * 64 + 128) + 2 * (64 * 64 + 128);
    assert_eq!(count(ShortcutOption::C), 269_722 + c_extra);
    // resnet34 with option A has no projection parameters.
    let a34 = ResNet::new(
        ResNetConfig::named("resnet34")
            .unwrap()
            .with_shortcut(ShortcutOption::A),
        0,
    )
    .unwrap()
    .param_count();
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
    let mut m = ResNet::new(ResNetConfig::named("resnet18").unwrap(), 0).unwrap();
    let names: Vec<String> = m.tensor_names().into_iter().map(|(n, _)| n).collect();
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
    let mut bn = BatchNorm2d::new(1);
    bn.weight.value = vec![2.0];
    bn.bias.value = vec![0.5];
    let x = [1.0, 2.0, 3.0, 4.0];
    bn.forward(&x, Dims::new(2, 1, 1, 2), Mode::Train);
    let (mean, var) = (2.5f64, 1.25f64);
    for (y, &xv) in bn.out.iter().zip(&x) {
        let want = 2.0 * (xv as f64 - mean) / (var + 1e-5).sqrt() + 0.5;
        assert!((*y as f64 - want).abs() < 1e-6, "{y} vs {want}");
    }
    // Running averages: momentum 0.1, unbiased variance 5/3.
    assert!((bn.running_mean[0] - 0.25).abs() < 1e-7);
    assert!((bn.running_var[0] as f64 - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-7);
    assert_eq!(bn.num_batches_tracked, 1);

    // Eval mode uses the running statistics and leaves them alone.
    bn.forward(&x, Dims::new(2, 1, 1, 2), Mode::Eval);
    let rv = 0.9 + 0.1 * 5.0 / 3.0;
    for (y, &xv) in bn.out.iter().zip(&x) {
        let want = 2.0 * (xv as f64 - 0.25) / (rv + 1e-5f64).sqrt() + 0.5;
        assert!((*y as f64 - want).abs() < 1e-5, "{y} vs {want}");
    }
    assert!((bn.running_mean[0] - 0.25).abs() < 1e-7);
    assert_eq!(bn.num_batches_tracked, 1);
}

#[test]
fn bad_inputs_get_clear_errors() {
    let mut m = ResNet::new(ResNetConfig::named("resnet8").unwrap(), 0).unwrap();
    let wrong_channels = Tensor::zeros(vec![1, 1, 32, 32]).unwrap();
    let Err(err) = m.forward(&wrong_channels, Mode::Eval) else {
        panic!("wrong channels must fail");
    };
    let err = err.to_string();
    assert!(err.contains("3") && err.contains("[1, 1, 32, 32]"), "{err}");
    let not_4d = Tensor::zeros(vec![3, 32, 32]).unwrap();
    assert!(m.forward(&not_4d, Mode::Eval).is_err());
    let mut big = ResNet::new(ResNetConfig::named("resnet18").unwrap(), 0).unwrap();
    // PyTorch's resnet18 accepts even 1x1 images; an empty one is refused.
    assert!(big
        .forward(&Tensor::zeros(vec![1, 3, 1, 1]).unwrap(), Mode::Eval)
        .is_ok());
    let empty = Tensor::zeros(vec![1, 3, 0, 0]).unwrap();
    let Err(err) = big.forward(&empty, Mode::Eval) else {
        panic!("an empty image must fail");
    };
    let err = err.to_string();
    assert!(err.contains("0x0") && err.contains("7x7"), "{err}");
}

/// Inference with batch norms folded into the convolutions and residual adds and ReLUs
/// fused into their stores gives the layer-by-layer result, for every kind of block,
/// shortcut and stem, with batch-norm statistics far from the identity.
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
        let mut net = ResNet::new(config, 3).unwrap();
        let mut rng = Rng::new(9);
        net.visit(&mut |name, slot| match slot {
            Slot::Buffer(_, b) if name.ends_with("running_var") => {
                b.iter_mut().for_each(|v| *v = 0.2 + rng.uniform() as f32 * 2.0)
            }
            Slot::Buffer(_, b) => b.iter_mut().for_each(|v| *v = rng.normal() as f32 * 0.5),
            Slot::Param(p) if name.contains("bn") || name.ends_with("downsample.1.weight") => {
                p.value.iter_mut().for_each(|v| *v = rng.normal() as f32 * 0.8)
            }
            Slot::Param(_) => {}
        });
        let x: Vec<f32> = (0..2 * 3 * size * size).map(|_| rng.normal() as f32).collect();
        let x = Tensor::new(vec![2, 3, size, size], x).unwrap();
        net.set_fold_bn(false);
        let want = net.forward(&x, Mode::Eval).unwrap().to_vec();
        net.set_fold_bn(true);
        let got = net.forward(&x, Mode::Eval).unwrap().to_vec();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(
            scale > 1e-3 && err <= 1e-4 * scale,
            "{name}: max error {err} of {scale}"
        );
        // The folded weights follow changes to the running statistics.
        net.visit(&mut |name, slot| {
            if let Slot::Buffer(_, b) = slot {
                if name.ends_with("running_mean") {
                    b.iter_mut().for_each(|v| *v += 0.3);
                }
            }
        });
        let moved = net.forward(&x, Mode::Eval).unwrap().to_vec();
        net.set_fold_bn(false);
        let want = net.forward(&x, Mode::Eval).unwrap().to_vec();
        let err = moved.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err <= 1e-4 * scale, "{name} after new statistics: max error {err}");
    }
}
