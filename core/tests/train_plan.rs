//! The training plan: a call with fewer images than the plan was built for runs on a
//! prefix of every slot and gives bit for bit what a plan built for that batch gives;
//! the forward pass agrees with the independent f64 reference; running statistics move
//! as PyTorch's do. (Its gradients are checked against finite differences of the f64
//! reference in `gradients.rs`.)

mod common;

use common::{randn, reference, small_bottleneck};
use resnet_core::kernels::winograd::WinogradTile;
use resnet_core::layers::loss::softmax_cross_entropy;
use resnet_core::model::{BottleneckStride, ResNetConfig, ShortcutOption};
use resnet_core::plan::train::{DataGradAlgo, FilterGradAlgo};
use resnet_core::plan::TrainingPlan;
use resnet_core::rng::Rng;
use resnet_core::tensor::{max_abs, max_abs_diff, max_abs_f64};
use resnet_core::Params;

/// Logits, gradients and running statistics after one training pass of `n` images.
fn run(plan: &mut TrainingPlan, p: &mut Params, x: &[f32], n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let classes = p.config().num_classes;
    let labels: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
    let logits = plan.forward_train(p, x, n).unwrap().to_vec();
    let mut d = vec![0.0; logits.len()];
    softmax_cross_entropy(&logits, &labels, classes, &mut d).unwrap();
    p.grads_mut().fill(0.0);
    plan.backward(p, &d).unwrap();
    (logits, p.grads().to_vec(), p.buffers().to_vec())
}

fn check(config: ResNetConfig, batch: usize, size: usize) {
    let name = format!("{} {:?}", config.name, config.shortcut);
    let mut rng = Rng::new(7);
    let n = batch - 1;
    let x = randn(&mut rng, n * 3 * size * size);
    let mut big = TrainingPlan::new(&config, batch, size, size).unwrap();
    let mut exact = TrainingPlan::new(&config, n, size, size).unwrap();
    let (mut p, mut q) = (
        Params::new(config.clone(), 5).unwrap(),
        Params::new(config.clone(), 5).unwrap(),
    );
    // Twice: the second pass reuses every slot and workspace.
    for _ in 0..2 {
        let a = run(&mut big, &mut p, &x, n);
        let b = run(&mut exact, &mut q, &x, n);
        assert!(
            a == b,
            "{name}: a prefix of a larger plan differs from a plan of its size"
        );
    }
    let golden = reference::forward(&p, &x, n, size, size);
    let logits = big.forward_train(&mut p, &x, n).unwrap();
    let scale = max_abs_f64(golden.iter().copied());
    let err = max_abs_f64(logits.iter().zip(&golden).map(|(&a, b)| a as f64 - b)) / scale;
    println!("{name}: forward max relative difference to the f64 reference {err:.2e}");
    assert!(err < 1e-4, "{name}: {err:.3e}");
    assert!(big
        .backward(
            &mut Params::new(ResNetConfig::named("resnet14").unwrap(), 0).unwrap(),
            &[]
        )
        .is_err());
    assert!(big.backward(&mut p, &[0.0; 3]).is_err());
}

#[test]
fn a_smaller_batch_runs_on_a_prefix_and_the_forward_matches_the_reference() {
    let r8 = ResNetConfig::named("resnet8").unwrap();
    check(r8.clone(), 4, 8);
    check(r8.clone().with_shortcut(ShortcutOption::B), 3, 8);
    check(r8.with_shortcut(ShortcutOption::C), 3, 8);
    check(ResNetConfig::named("plain8").unwrap(), 3, 8);
    check(small_bottleneck(BottleneckStride::Conv3x3), 3, 16);
    check(small_bottleneck(BottleneckStride::Conv1x1), 3, 16);
}

#[test]
fn running_statistics_move_with_momentum_and_the_unbiased_variance() {
    let config = ResNetConfig::named("resnet8").unwrap();
    let mut p = Params::new(config.clone(), 1).unwrap();
    let mut plan = TrainingPlan::new(&config, 2, 4, 4).unwrap();
    // The stem sees the input through conv1; make conv1 the identity on channel 0 so
    // that bn1's batch statistics are those of the input's first channel.
    let w = p.get_mut("conv1.weight").unwrap();
    w.fill(0.0);
    w[4] = 1.0;
    let x: Vec<f32> = (0..2 * 3 * 16).map(|i| (i % 7) as f32).collect();
    plan.forward_train(&mut p, &x, 2).unwrap();
    let vals: Vec<f64> = (0..2)
        .flat_map(|n| x[n * 48..n * 48 + 16].iter().map(|&v| v as f64))
        .collect();
    let mean = vals.iter().sum::<f64>() / 32.0;
    let unbiased = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 31.0;
    let (rm, rv) = (p.tensor("bn1.running_mean")[0], p.tensor("bn1.running_var")[0]);
    assert!((rm as f64 - 0.1 * mean).abs() < 1e-6, "{rm} vs {}", 0.1 * mean);
    assert!((rv as f64 - (0.9 + 0.1 * unbiased)).abs() < 1e-5, "{rv}");
    // Channel 1 of conv1 is all zeros: mean 0, variance 0.
    assert_eq!(p.tensor("bn1.running_mean")[1], 0.0);
    assert_eq!(p.tensor("bn1.running_var")[1], 0.9);
}

/// The blocked plan against its layer-by-layer NCHW twin: logits, every gradient and
/// the running statistics after one training pass agree to rounding, for each kind of
/// block, shortcut and stem, and each backward-filter algorithm.
#[test]
fn the_blocked_plan_matches_its_nchw_twin() {
    for algo in [
        FilterGradAlgo::Direct,
        FilterGradAlgo::Winograd(WinogradTile::F2),
        FilterGradAlgo::Winograd(WinogradTile::F4),
    ] {
        matches_the_nchw_twin(algo);
    }
}

fn matches_the_nchw_twin(filter_grad: FilterGradAlgo) {
    use resnet_core::plan::train_nchw::NchwTrainingPlan;
    let configs = [
        ResNetConfig::named("resnet8").unwrap(),
        // Two blocks a stage: identity blocks after blocks, whose backward-data passes
        // also apply the previous block's ReLU.
        ResNetConfig::named("resnet14").unwrap(),
        ResNetConfig::named("resnet8").unwrap().with_shortcut(ShortcutOption::B),
        ResNetConfig::named("plain8").unwrap(),
        small_bottleneck(BottleneckStride::Conv1x1),
    ];
    for config in configs {
        let (n, size) = (3, 16);
        let classes = config.num_classes;
        let mut rng = Rng::new(9);
        let x = randn(&mut rng, n * 3 * size * size);
        let labels: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
        let (mut p, mut q) = (
            Params::new(config.clone(), 3).unwrap(),
            Params::new(config.clone(), 3).unwrap(),
        );
        let mut blocked = TrainingPlan::new(&config, n, size, size).unwrap();
        let mut twin = NchwTrainingPlan::new(&config, n, size, size).unwrap();
        blocked.force_filter_grad(filter_grad);
        let a = blocked.forward_train(&mut p, &x, n).unwrap().to_vec();
        let b = twin.forward_train(&mut q, &x, n).unwrap().to_vec();
        let mut d = vec![0.0; a.len()];
        softmax_cross_entropy(&b, &labels, classes, &mut d).unwrap();
        p.grads_mut().fill(0.0);
        q.grads_mut().fill(0.0);
        blocked.backward(&mut p, &d).unwrap();
        twin.backward(&mut q, &d).unwrap();
        let close = |what: &str, got: &[f32], want: &[f32], tol: f32| {
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            let err = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, |m, e| {
                if e.is_nan() {
                    f32::INFINITY
                } else {
                    m.max(e)
                }
            });
            assert!(
                err <= tol * scale,
                "{} ({filter_grad:?}): {what} differ by {err} of {scale}",
                config.name
            );
        };
        close("logits", &a, &b, 1e-5);
        close("gradients", p.grads(), q.grads(), 1e-4);
        close("running statistics", p.buffers(), q.buffers(), 1e-5);
    }
}

/// `--precision bf16`: the 1x1 stride-1 and the wide Winograd convolutions of ResNet-18
/// and ResNet-50 switch to bf16 products, and a training pass stays within bf16's
/// rounding of the f32 plan's: logits and running statistics within 2 %, the gradient
/// pointing the same way (cosine above 0.95). At initialisation the gradients are
/// ill-conditioned (on ResNet-18, 1e-3 relative noise on the input moves their largest
/// value by 12 %, cosine 0.992), so a per-value bound would measure the network, not the
/// kernels (those are held to their naive twin and to f64 in `kernels::blocked::bf16` and
/// `winograd`). A CPU without AVX512_BF16 refuses with a clear error instead.
#[test]
fn bf16_products_stay_close_to_the_f32_plan() {
    // ResNet-18, and a short ResNet-50-like net (bottleneck blocks 64 and 128 wide, one
    // per stage): every kind of bf16 pass, in a net shallow enough to be well conditioned
    // (the whole ResNet-50 at initialisation moves its logits by 2 % for 1e-3 noise on the
    // input).
    let mut short50 = small_bottleneck(BottleneckStride::Conv3x3);
    short50.stem_width = 64;
    short50.stage_blocks = vec![1, 1];
    short50.stage_widths = vec![64, 128];
    for (config, least) in [(ResNetConfig::named("resnet18").unwrap(), 4), (short50, 6)] {
        let config = config.with_classes(10);
        let model = config.name.clone();
        let (n, size) = (4, 128);
        let mut rng = Rng::new(3);
        let x = randn(&mut rng, n * 3 * size * size);
        let mut f32_plan = TrainingPlan::new(&config, n, size, size).unwrap();
        let mut bf16_plan = TrainingPlan::new(&config, n, size, size).unwrap();
        let switched = match bf16_plan.use_bf16() {
            Ok(s) => s,
            Err(e) => {
                assert!(!resnet_core::kernels::blocked::bf16::available());
                assert!(e.to_string().contains("AVX512_BF16"), "{e}");
                return;
            }
        };
        assert!(switched >= least, "{model}: only {switched} passes switched to bf16");
        let (mut p, mut q) = (
            Params::new(config.clone(), 9).unwrap(),
            Params::new(config.clone(), 9).unwrap(),
        );
        let a = run(&mut f32_plan, &mut p, &x, n);
        let b = run(&mut bf16_plan, &mut q, &x, n);
        let rel = |u: &[f32], v: &[f32]| {
            let scale = max_abs(v.iter().copied()).max(1e-30);
            max_abs_diff(u, v) / scale
        };
        let dot = |u: &[f32], v: &[f32]| u.iter().zip(v).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>();
        let cosine = dot(&a.1, &b.1) / (dot(&a.1, &a.1) * dot(&b.1, &b.1)).sqrt();
        let (logits, stats) = (rel(&b.0, &a.0), rel(&b.2, &a.2));
        println!("{model} bf16 against f32 ({switched} passes): logits {logits:.2e}, running statistics {stats:.2e}, gradient cosine {cosine:.4}");
        assert!(
            logits > 0.0,
            "{model}: the bf16 plan computed exactly what the f32 plan did"
        );
        assert!(
            logits < 2e-2 && stats < 2e-2 && cosine > 0.95,
            "{model}: {logits} {stats} {cosine}"
        );
    }
}

/// `--precision bf16` as `resnet bench --layers --train` shows it: every pass the plan
/// switches is the one the rule functions name (so the table's "chosen" column is the
/// plan's), every other pass is left as it was, and `time_passes` times the bf16 kernel
/// of each switched pass beside the f32 candidates (without AVX512_BF16: neither).
#[test]
fn bf16_passes_follow_the_rule_the_layer_table_shows() {
    use resnet_core::kernels::blocked::{amx, bf16};
    use resnet_core::plan::choose::Algo;
    use resnet_core::plan::train::{bf16_data_grad, bf16_filter_grad, bf16_forward, bf16_name, time_passes};
    let config = ResNetConfig::named("resnet50").unwrap();
    let f32_plan = TrainingPlan::new(&config, 1, 32, 32).unwrap();
    let mut bf16_plan = TrainingPlan::new(&config, 1, 32, 32).unwrap();
    if bf16_plan.use_bf16().is_err() {
        assert!(!bf16::available());
        let g = f32_plan.convs().iter().find(|c| c.geometry.kernel_h == 1).unwrap();
        let t = time_passes(&g.geometry, g.in_block, 1, true);
        assert!(t.forward_bf16.is_none() && t.data_grad_bf16.is_none());
        return;
    }
    let (mut forward, mut data, mut filter) = (0, 0, 0);
    for (a, b) in f32_plan.convs().iter().zip(bf16_plan.convs()) {
        let g = &a.geometry;
        match bf16_forward(g, a.forward, a.in_block) {
            Some(algo) => {
                assert!(b.forward_bf16() && b.forward == algo, "{}: forward", a.name);
                forward += 1;
            }
            None => assert!(!b.forward_bf16() && b.forward == a.forward, "{}: forward", a.name),
        }
        match bf16_data_grad(g, a.data_grad, a.in_block) {
            Some(algo) => {
                assert!(b.data_grad_bf16(), "{}: backward-data", a.name);
                if let Algo::Winograd(_) = algo {
                    assert_eq!(b.data_grad, Some(DataGradAlgo::Forward(algo)), "{}", a.name);
                }
                data += 1;
            }
            None => assert!(!b.data_grad_bf16() && b.data_grad == a.data_grad, "{}", a.name),
        }
        let bf16_filter = bf16_filter_grad(g, a.in_block);
        assert_eq!(b.filter_grad == FilterGradAlgo::Bf16, bf16_filter, "{}", a.name);
        filter += usize::from(bf16_filter);
    }
    // ResNet-50: 36 1x1 convolutions (3 of them strided: the projections of layer2-4), 16
    // 3x3 of which 13 are stride 1 (Winograd) and 10 of those (layer2-4 after their first
    // block) 128 channels or more. With AMX tiles every 3x3 forward and every
    // backward-data runs a bf16 tile kernel, and every 3x3 backward-filter too (64 input
    // channels or more); without, the wide Winograd ones F(2x2) and no 3x3 backward-filter.
    let want = if amx::available() {
        (36 + 16, 36 + 16, 36 + 16)
    } else {
        (36 + 10, 33 + 10, 36)
    };
    assert_eq!((forward, data, filter), want);
    // One of each kind, timed: a 1x1, a wide 3x3 and (with AMX) a strided 3x3
    // convolution.
    let strided = ["layer2.0.conv2"].into_iter().filter(|_| amx::available());
    for name in ["layer1.0.conv1", "layer3.1.conv2"].into_iter().chain(strided) {
        let c = bf16_plan.convs().iter().find(|c| c.name == name).unwrap();
        let t = time_passes(&c.geometry, c.in_block, 1, true);
        let (fwd, _) = t.forward_bf16.expect("the forward's bf16 kernel timed");
        assert_eq!(bf16_name(fwd), bf16_name(c.forward), "{name}");
        let dat = t.data_grad_bf16.map(|(algo, _)| bf16_name(algo));
        assert!(dat.is_some() && c.data_grad_bf16(), "{name}");
        assert_eq!(dat.unwrap_or(bf16_name(c.forward)), bf16_name(c.forward), "{name}");
        let filter_bf16 = t.filter_grad.iter().any(|(a, _)| *a == FilterGradAlgo::Bf16);
        assert_eq!(filter_bf16, c.geometry.kernel_h == 1 || amx::available(), "{name}");
        let f32_only = time_passes(&c.geometry, c.in_block, 1, false);
        assert!(f32_only.forward_bf16.is_none() && f32_only.data_grad_bf16.is_none());
    }
}
