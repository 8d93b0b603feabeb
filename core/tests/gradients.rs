//! Finite-difference gradient checks of every layer, each whole block kind and whole
//! small networks (CIFAR resnet8, a small bottleneck net, option B/C and plain nets).

mod common;

use common::reference;

use common::{check_gradient, dot, randn, small_bottleneck};
use resnet_core::layers::batchnorm::BatchNorm2d;
use resnet_core::layers::conv::Conv2d;
use resnet_core::layers::linear::Linear;
use resnet_core::layers::loss::softmax_cross_entropy;
use resnet_core::layers::pool::{GlobalAvgPool, MaxPool2d};
use resnet_core::layers::relu::{relu_backward_inplace, relu_forward};
use resnet_core::layers::shortcut::{option_a_backward_add, option_a_forward};
use resnet_core::layers::{Dims, Mode, Param};
use resnet_core::model::{BottleneckStride, ResNet, ResNetConfig, ShortcutOption};
use resnet_core::rng::Rng;
use resnet_core::Tensor;

const EPS: f32 = 1e-2;

struct ConvCase {
    conv: Conv2d,
    x: Vec<f32>,
    r: Vec<f32>,
    dims: Dims,
}

fn conv_loss(c: &mut ConvCase) -> f64 {
    c.conv.forward(&c.x, c.dims, Mode::Train).unwrap();
    dot(&c.r, &c.conv.out)
}

#[test]
fn conv2d_gradients() {
    let mut rng = Rng::new(1);
    for &(kernel, stride, pad, bias, h, w) in &[
        (3, 1, 1, true, 7, 6),
        (3, 2, 1, false, 9, 8),
        (1, 1, 0, true, 5, 5),
        (1, 2, 0, false, 6, 7),
        (7, 2, 3, false, 11, 11),
    ] {
        let dims = Dims::new(2, 3, h, w);
        let mut conv = Conv2d::new(3, 4, kernel, stride, pad, bias, &mut rng);
        if let Some(b) = &mut conv.bias {
            b.value = randn(&mut rng, 4);
        }
        let out = conv.out_dims(dims).unwrap();
        let mut case = ConvCase {
            conv,
            x: randn(&mut rng, dims.len()),
            r: randn(&mut rng, out.len()),
            dims,
        };
        conv_loss(&mut case);
        let mut dx = Vec::new();
        let r = case.r.clone();
        case.conv.backward(&case.x.clone(), &r, Some(&mut dx));
        let what = format!("conv {kernel}x{kernel}/{stride} pad {pad}");
        let dw = case.conv.weight.grad.clone();
        check_gradient(
            &format!("{what} dW"),
            &mut case,
            |c| &mut c.conv.weight.value,
            &dw,
            conv_loss,
            EPS,
            40,
            1e-3,
            &mut rng,
        );
        check_gradient(
            &format!("{what} dX"),
            &mut case,
            |c| &mut c.x,
            &dx,
            conv_loss,
            EPS,
            40,
            1e-3,
            &mut rng,
        );
        if bias {
            let db = case.conv.bias.as_ref().unwrap().grad.clone();
            check_gradient(
                &format!("{what} db"),
                &mut case,
                |c| &mut c.conv.bias.as_mut().unwrap().value,
                &db,
                conv_loss,
                EPS,
                40,
                1e-3,
                &mut rng,
            );
        }
    }
}

struct BnCase {
    bn: BatchNorm2d,
    x: Vec<f32>,
    r: Vec<f32>,
    dims: Dims,
    mode: Mode,
}

fn bn_loss(c: &mut BnCase) -> f64 {
    c.bn.forward(&c.x, c.dims, c.mode);
    dot(&c.r, &c.bn.out)
}

#[test]
fn batchnorm_gradients_in_train_and_eval_mode() {
    let mut rng = Rng::new(2);
    for mode in [Mode::Train, Mode::Eval] {
        let dims = Dims::new(3, 4, 3, 5);
        let mut bn = BatchNorm2d::new(4);
        bn.weight.value = randn(&mut rng, 4);
        bn.bias.value = randn(&mut rng, 4);
        bn.running_mean = randn(&mut rng, 4);
        bn.running_var = (0..4).map(|i| 0.5 + i as f32).collect();
        let x = randn(&mut rng, dims.len()).iter().map(|v| v * 2.0 + 1.0).collect();
        let mut case = BnCase {
            bn,
            x,
            r: randn(&mut rng, dims.len()),
            dims,
            mode,
        };
        bn_loss(&mut case);
        let mut dx = Vec::new();
        let r = case.r.clone();
        case.bn.backward(&r, &mut dx);
        let (dg, db) = (case.bn.weight.grad.clone(), case.bn.bias.grad.clone());
        check_gradient(
            &format!("bn {mode:?} dX"),
            &mut case,
            |c| &mut c.x,
            &dx,
            bn_loss,
            EPS,
            60,
            2e-3,
            &mut rng,
        );
        check_gradient(
            &format!("bn {mode:?} dgamma"),
            &mut case,
            |c| &mut c.bn.weight.value,
            &dg,
            bn_loss,
            EPS,
            4,
            1e-3,
            &mut rng,
        );
        check_gradient(
            &format!("bn {mode:?} dbeta"),
            &mut case,
            |c| &mut c.bn.bias.value,
            &db,
            bn_loss,
            EPS,
            4,
            1e-3,
            &mut rng,
        );
    }
}

#[test]
fn relu_pool_linear_shortcut_and_loss_gradients() {
    let mut rng = Rng::new(3);

    // ReLU, with inputs kept away from the kink.
    let x: Vec<f32> = randn(&mut rng, 50)
        .iter()
        .map(|v| if v.abs() < 0.1 { v + 0.3 } else { *v })
        .collect();
    let r = randn(&mut rng, 50);
    let relu_loss = |x: &mut Vec<f32>| {
        let mut y = vec![0.0; x.len()];
        relu_forward(x, &mut y);
        dot(&r, &y)
    };
    let mut y = vec![0.0; 50];
    relu_forward(&x, &mut y);
    let mut dx = r.clone();
    relu_backward_inplace(&y, &mut dx);
    let mut xs = x.clone();
    check_gradient(
        "relu dX",
        &mut xs,
        |x| &mut x[..],
        &dx,
        relu_loss,
        1e-3,
        50,
        1e-3,
        &mut rng,
    );

    // Max pooling 3x3/2 pad 1.
    let dims = Dims::new(2, 3, 7, 6);
    let mut mp = MaxPool2d::new(3, 2, 1);
    let out = mp.out_dims(dims).unwrap();
    let r = randn(&mut rng, out.len());
    let mut case = (randn(&mut rng, dims.len()), mp.clone());
    let mp_loss = |c: &mut (Vec<f32>, MaxPool2d)| {
        c.1.forward(&c.0, dims).unwrap();
        dot(&r, &c.1.out)
    };
    mp_loss(&mut case);
    let mut dx = Vec::new();
    case.1.backward(&r, &mut dx);
    check_gradient(
        "maxpool dX",
        &mut case,
        |c| &mut c.0,
        &dx,
        mp_loss,
        1e-3,
        60,
        1e-3,
        &mut rng,
    );
    mp.forward(&case.0, dims).unwrap();
    assert_eq!(out, Dims::new(2, 3, 4, 3));

    // Global average pooling.
    let dims = Dims::new(2, 3, 4, 5);
    let r = randn(&mut rng, 6);
    let mut case = (randn(&mut rng, dims.len()), GlobalAvgPool::default());
    let ap_loss = |c: &mut (Vec<f32>, GlobalAvgPool)| {
        c.1.forward(&c.0, dims);
        dot(&r, &c.1.out)
    };
    ap_loss(&mut case);
    let mut dx = Vec::new();
    case.1.backward(&r, &mut dx);
    check_gradient(
        "avgpool dX",
        &mut case,
        |c| &mut c.0,
        &dx,
        ap_loss,
        EPS,
        40,
        1e-3,
        &mut rng,
    );

    // Linear.
    let mut lin = Linear::new(7, 5, &mut rng);
    lin.bias.value = randn(&mut rng, 5);
    let r = randn(&mut rng, 15);
    let mut case = (randn(&mut rng, 21), lin);
    let lin_loss = |c: &mut (Vec<f32>, Linear)| {
        c.1.forward(&c.0, 3);
        dot(&r, &c.1.out)
    };
    lin_loss(&mut case);
    let mut dx = Vec::new();
    let x = case.0.clone();
    case.1.backward(&x, &r, &mut dx);
    let (dw, db) = (case.1.weight.grad.clone(), case.1.bias.grad.clone());
    check_gradient(
        "linear dX",
        &mut case,
        |c| &mut c.0,
        &dx,
        lin_loss,
        EPS,
        21,
        1e-3,
        &mut rng,
    );
    check_gradient(
        "linear dW",
        &mut case,
        |c| &mut c.1.weight.value,
        &dw,
        lin_loss,
        EPS,
        35,
        1e-3,
        &mut rng,
    );
    check_gradient(
        "linear db",
        &mut case,
        |c| &mut c.1.bias.value,
        &db,
        lin_loss,
        EPS,
        5,
        1e-3,
        &mut rng,
    );

    // Option-A shortcut: 4 -> 8 channels, stride 2, on an odd size.
    let (input, out) = (Dims::new(2, 4, 5, 5), Dims::new(2, 8, 3, 3));
    let r = randn(&mut rng, out.len());
    let sc_loss = |x: &mut Vec<f32>| {
        let mut y = vec![0.0; out.len()];
        option_a_forward(x, input, out, 2, &mut y);
        dot(&r, &y)
    };
    let mut dx = vec![0.0; input.len()];
    option_a_backward_add(&r, input, out, 2, &mut dx);
    let mut x = randn(&mut rng, input.len());
    check_gradient(
        "option-A shortcut dX",
        &mut x,
        |x| &mut x[..],
        &dx,
        sc_loss,
        EPS,
        100,
        1e-3,
        &mut rng,
    );

    // Softmax cross-entropy.
    let labels = [2u32, 0, 4];
    let mut logits = randn(&mut rng, 15);
    let ce = |l: &mut Vec<f32>| {
        let mut d = vec![0.0; 15];
        softmax_cross_entropy(l, &labels, 5, &mut d).unwrap().loss
    };
    let mut dl = vec![0.0; 15];
    softmax_cross_entropy(&logits, &labels, 5, &mut dl).unwrap();
    check_gradient(
        "cross-entropy dlogits",
        &mut logits,
        |l| &mut l[..],
        &dl,
        ce,
        1e-3,
        15,
        1e-3,
        &mut rng,
    );
}

/// Adds `delta` to element `elem` of the `index`-th parameter of `model`.
fn nudge(model: &mut ResNet, index: usize, elem: usize, delta: f32) {
    let mut i = 0;
    model.for_each_param(&mut |p: &mut Param| {
        if i == index {
            p.value[elem] += delta;
        }
        i += 1;
    });
}

/// The f64 reference loss of `model` with element `elem` of parameter `index` moved by
/// about `delta`, and the exact move (the difference of two f32 values is exact in f64).
fn reference_loss_at(
    model: &mut ResNet,
    index: usize,
    elem: usize,
    delta: f64,
    x: &Tensor,
    labels: &[u32],
) -> (f64, f64) {
    let [n, _, h, w] = x.shape() else { unreachable!() };
    let mut original = 0f32;
    let mut i = 0;
    model.for_each_param(&mut |p: &mut Param| {
        if i == index {
            original = p.value[elem];
        }
        i += 1;
    });
    let moved = (original as f64 + delta) as f32;
    let actual_delta = moved as f64 - original as f64;
    nudge(model, index, elem, moved - original);
    let loss = reference::cross_entropy(&reference::forward(model, x.data(), *n, *h, *w), labels);
    // Restore bit-exactly.
    let mut i = 0;
    model.for_each_param(&mut |p: &mut Param| {
        if i == index {
            p.value[elem] = original;
        }
        i += 1;
    });
    (loss, actual_delta)
}

/// Checks every parameter tensor of `model` at a few coordinates: the f32 backward pass
/// against central differences of the independent f64 reference forward pass. Also
/// checks the f32 forward against that reference.
fn check_model(config: ResNetConfig, batch: usize, size: usize, tol: f64) {
    let mut rng = Rng::new(9);
    let mut model = ResNet::new(config.clone(), 4).unwrap();
    // Non-trivial BN affine parameters so every gradient path is exercised.
    model.visit(&mut |name, slot| {
        if let resnet_core::layers::Slot::Param(p) = slot {
            if name.contains("bn") || name.contains("downsample.1") {
                for v in &mut p.value {
                    *v += 0.3 * rng.normal() as f32;
                }
            }
        }
    });
    let x = Tensor::new(vec![batch, 3, size, size], randn(&mut rng, batch * 3 * size * size)).unwrap();
    let labels: Vec<u32> = (0..batch).map(|i| (i % config.num_classes) as u32).collect();
    let logits = model.forward(&x, Mode::Train).unwrap().to_vec();
    let golden = reference::forward(&model, x.data(), batch, size, size);
    let scale = golden.iter().fold(0f64, |m, v| m.max(v.abs()));
    let fwd_err = logits
        .iter()
        .zip(&golden)
        .map(|(&a, b)| (a as f64 - b).abs())
        .fold(0f64, f64::max)
        / scale;
    println!(
        "{}: forward max relative difference to the f64 reference {fwd_err:.2e}",
        config.name
    );
    assert!(
        fwd_err < 1e-4,
        "{}: forward differs from the reference by {fwd_err:.3e}",
        config.name
    );

    let mut dlogits = vec![0.0; logits.len()];
    softmax_cross_entropy(&logits, &labels, config.num_classes, &mut dlogits).unwrap();
    model.zero_grad();
    model.backward(&dlogits);
    let mut grads = Vec::new();
    model.for_each_param(&mut |p| grads.push(p.grad.clone()));
    let names: Vec<String> = model
        .tensor_names()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| !n.ends_with("running_mean") && !n.ends_with("running_var"))
        .collect();
    let (mut diff, mut norm) = (0f64, 0f64);
    let mut worst = (0f64, String::new());
    for (index, g) in grads.iter().enumerate() {
        let (mut d_t, mut n_t) = (0f64, 0f64);
        for _ in 0..3 {
            let elem = rng.below(g.len());
            // Small steps: the f64 reference has no rounding noise to drown them, and
            // they rarely carry a ReLU across its kink.
            let (lp, dp) = reference_loss_at(&mut model, index, elem, 1e-5, &x, &labels);
            let (lm, dm) = reference_loss_at(&mut model, index, elem, -1e-5, &x, &labels);
            let fd = (lp - lm) / (dp - dm);
            d_t += (fd - g[elem] as f64).powi(2);
            n_t += (g[elem] as f64).powi(2).max(fd * fd);
        }
        let rel_t = (d_t / n_t.max(1e-24)).sqrt();
        println!("{:<24} {rel_t:>9.2e} relative error", names[index]);
        if rel_t > worst.0 {
            worst = (rel_t, names[index].clone());
        }
        diff += d_t;
        norm += n_t;
    }
    let rel = (diff / norm).sqrt();
    println!(
        "{}: whole-network relative error {rel:.2e} over {} tensors (worst {} {:.2e})",
        config.name,
        grads.len(),
        worst.1,
        worst.0
    );
    assert!(rel < tol, "{}: relative error {rel:.3e} > {tol:.1e}", config.name);
}

#[test]
fn whole_resnet8_gradient() {
    check_model(ResNetConfig::named("resnet8").unwrap(), 3, 8, 2e-3);
}

#[test]
fn plain_and_projection_shortcut_nets_gradient() {
    check_model(ResNetConfig::named("plain8").unwrap(), 2, 8, 2e-3);
    check_model(
        ResNetConfig::named("resnet8").unwrap().with_shortcut(ShortcutOption::B),
        2,
        8,
        2e-3,
    );
    check_model(
        ResNetConfig::named("resnet8").unwrap().with_shortcut(ShortcutOption::C),
        2,
        8,
        2e-3,
    );
}

#[test]
fn small_bottleneck_net_gradient() {
    check_model(small_bottleneck(BottleneckStride::Conv3x3), 2, 16, 2e-3);
    check_model(
        small_bottleneck(BottleneckStride::Conv1x1).with_shortcut(ShortcutOption::A),
        2,
        16,
        2e-3,
    );
}
