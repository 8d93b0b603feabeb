//! Finite-difference gradient checks of every layer, each whole block kind and whole
//! small networks (CIFAR resnet8, a small bottleneck net, option B/C and plain nets).

mod common;

use common::reference;

use common::{check_gradient, dot, randn, small_bottleneck};
use resnet_core::kernels::im2col::ConvGeometry;
use resnet_core::kernels::norm::NormGeometry;
use resnet_core::layers::conv::{ConvAlgos, ConvWorkspace};
use resnet_core::layers::loss::softmax_cross_entropy;
use resnet_core::layers::relu::{relu_backward_inplace, relu_forward};
use resnet_core::layers::shortcut::{option_a_backward_add, option_a_forward};
use resnet_core::layers::{batchnorm, conv, linear, pool, Dims};
use resnet_core::model::{BottleneckStride, ResNetConfig, ShortcutOption};
use resnet_core::params::Kind;
use resnet_core::plan::TrainingPlan;
use resnet_core::rng::Rng;
use resnet_core::{Params, Tensor};

const EPS: f32 = 1e-2;

struct ConvCase {
    g: ConvGeometry,
    algos: ConvAlgos,
    w: Vec<f32>,
    b: Option<Vec<f32>>,
    x: Vec<f32>,
    r: Vec<f32>,
    ws: ConvWorkspace,
}

fn conv_loss(c: &mut ConvCase) -> f64 {
    let mut y = vec![0.0; c.r.len()];
    conv::forward(&c.g, c.algos.forward, &c.x, &c.w, c.b.as_deref(), &mut c.ws, &mut y);
    dot(&c.r, &y)
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
        let g = ConvGeometry::new(2, 3, h, w, 4, (kernel, kernel), stride, pad).unwrap();
        let std = (2.0 / (4 * kernel * kernel) as f64).sqrt() as f32;
        let mut case = ConvCase {
            g,
            algos: ConvAlgos::choose(&g),
            w: randn(&mut rng, 4 * 3 * kernel * kernel)
                .iter()
                .map(|v| v * std)
                .collect(),
            b: bias.then(|| randn(&mut rng, 4)),
            x: randn(&mut rng, 2 * g.in_image()),
            r: randn(&mut rng, 2 * g.out_image()),
            ws: ConvWorkspace::default(),
        };
        let mut dx = vec![0.0; case.x.len()];
        let mut dw = vec![0.0; case.w.len()];
        let mut db = vec![0.0; 4];
        let (x, w, r) = (case.x.clone(), case.w.clone(), case.r.clone());
        conv::backward(
            &g,
            case.algos,
            &x,
            &w,
            &r,
            &mut dw,
            bias.then_some(&mut db[..]),
            Some(&mut dx),
            &mut case.ws,
        );
        let what = format!("conv {kernel}x{kernel}/{stride} pad {pad}");
        check_gradient(
            &format!("{what} dW"),
            &mut case,
            |c| &mut c.w,
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
            check_gradient(
                &format!("{what} db"),
                &mut case,
                |c| c.b.as_mut().unwrap(),
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
    g: NormGeometry,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    x: Vec<f32>,
    r: Vec<f32>,
    train: bool,
}

/// The batch norm's output, `xhat` and `1/std` (running statistics are updated on
/// copies, so that repeated calls see the same state).
fn bn_run(c: &BnCase) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let ch = c.g.channels;
    let (mut y, mut xhat) = (vec![0.0; c.x.len()], vec![0.0; c.x.len()]);
    let (mut mean, mut inv_std) = (vec![0.0; ch], vec![0.0; ch]);
    let saved = batchnorm::Saved {
        mean: &mut mean,
        inv_std: &mut inv_std,
    };
    if c.train {
        let (mut rm, mut rv) = (c.running_mean.clone(), c.running_var.clone());
        let mut moments = vec![0.0; 2 * ch];
        batchnorm::forward_train(
            &c.g,
            &c.x,
            &c.gamma,
            &c.beta,
            &mut rm,
            &mut rv,
            false,
            &mut moments,
            saved,
            &mut xhat,
            &mut y,
        );
    } else {
        batchnorm::forward_eval(
            &c.g,
            &c.x,
            &c.gamma,
            &c.beta,
            &c.running_mean,
            &c.running_var,
            false,
            saved,
            &mut xhat,
            &mut y,
        );
    }
    (y, xhat, inv_std)
}

fn bn_loss(c: &mut BnCase) -> f64 {
    dot(&c.r, &bn_run(c).0)
}

#[test]
fn batchnorm_gradients_in_train_and_eval_mode() {
    let mut rng = Rng::new(2);
    for train in [true, false] {
        let mode = if train { "train" } else { "eval" };
        let g = NormGeometry {
            batch: 3,
            channels: 4,
            plane: 15,
        };
        let len = 3 * 4 * 15;
        let x = randn(&mut rng, len).iter().map(|v| v * 2.0 + 1.0).collect();
        let mut case = BnCase {
            g,
            gamma: randn(&mut rng, 4),
            beta: randn(&mut rng, 4),
            running_mean: randn(&mut rng, 4),
            running_var: (0..4).map(|i| 0.5 + i as f32).collect(),
            x,
            r: randn(&mut rng, len),
            train,
        };
        let (_, xhat, inv_std) = bn_run(&case);
        let mut dx = vec![0.0; len];
        let (mut dg, mut db) = (vec![0.0; 4], vec![0.0; 4]);
        let mut sums = vec![0.0; 8];
        batchnorm::backward(
            &g,
            &case.r,
            &xhat,
            &inv_std,
            &case.gamma,
            train,
            &mut dg,
            &mut db,
            &mut sums,
            &mut dx,
        );
        check_gradient(
            &format!("bn {mode} dX"),
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
            &format!("bn {mode} dgamma"),
            &mut case,
            |c| &mut c.gamma,
            &dg,
            bn_loss,
            EPS,
            4,
            1e-3,
            &mut rng,
        );
        check_gradient(
            &format!("bn {mode} dbeta"),
            &mut case,
            |c| &mut c.beta,
            &db,
            bn_loss,
            EPS,
            4,
            1e-3,
            &mut rng,
        );
        // The fused ReLU gives the same output as a separate one.
        let mut fused = case.x.clone();
        let (mut xh, mut m, mut s) = (vec![0.0; len], vec![0.0; 4], vec![0.0; 4]);
        let saved = batchnorm::Saved {
            mean: &mut m,
            inv_std: &mut s,
        };
        let (rm, rv) = (&case.running_mean, &case.running_var);
        batchnorm::forward_eval(
            &g,
            &case.x,
            &case.gamma,
            &case.beta,
            rm,
            rv,
            true,
            saved,
            &mut xh,
            &mut fused,
        );
        let train_was = case.train;
        case.train = false;
        let plain = bn_run(&case).0;
        case.train = train_was;
        let mut relu = vec![0.0; len];
        relu_forward(&plain, &mut relu);
        assert_eq!(fused, relu);
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
    let g = pool::stem_max_pool(dims).unwrap();
    let out = Dims::new(2, 3, g.out_h, g.out_w);
    let r = randn(&mut rng, out.len());
    let mp_loss = |x: &mut Vec<f32>| {
        let (mut y, mut arg) = (vec![0.0; out.len()], vec![0u32; out.len()]);
        pool::max_forward(&g, x, &mut y, &mut arg);
        dot(&r, &y)
    };
    let mut x = randn(&mut rng, dims.len());
    let (mut y, mut arg) = (vec![0.0; out.len()], vec![0u32; out.len()]);
    pool::max_forward(&g, &x, &mut y, &mut arg);
    let mut dx = vec![0.0; dims.len()];
    pool::max_backward(&g, &r, &arg, &mut dx);
    check_gradient(
        "maxpool dX",
        &mut x,
        |x| &mut x[..],
        &dx,
        mp_loss,
        1e-3,
        60,
        1e-3,
        &mut rng,
    );
    assert_eq!(out, Dims::new(2, 3, 4, 3));

    // Global average pooling.
    let dims = Dims::new(2, 3, 4, 5);
    let r = randn(&mut rng, 6);
    let ap_loss = |x: &mut Vec<f32>| {
        let mut y = vec![0.0; 6];
        pool::avg_forward(dims.plane(), x, &mut y);
        dot(&r, &y)
    };
    let mut x = randn(&mut rng, dims.len());
    let mut dx = vec![0.0; dims.len()];
    pool::avg_backward(dims.plane(), &r, &mut dx);
    check_gradient(
        "avgpool dX",
        &mut x,
        |x| &mut x[..],
        &dx,
        ap_loss,
        EPS,
        40,
        1e-3,
        &mut rng,
    );

    // Linear: 3 rows of 7 features into 5 outputs.
    let r = randn(&mut rng, 15);
    // (input, weight, bias)
    let mut case = (randn(&mut rng, 21), randn(&mut rng, 35), randn(&mut rng, 5));
    let lin_loss = |c: &mut (Vec<f32>, Vec<f32>, Vec<f32>)| {
        let mut y = vec![0.0; 15];
        linear::forward(&c.0, &c.1, &c.2, 3, 7, 5, &mut y);
        dot(&r, &y)
    };
    let (mut dx, mut dw, mut db) = (vec![0.0; 21], vec![0.0; 35], vec![0.0; 5]);
    linear::backward(&case.0, &case.1, &r, 3, 7, 5, &mut dw, &mut db, &mut dx);
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
        |c| &mut c.1,
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
        |c| &mut c.2,
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

/// The f64 reference loss of `p` with value `index` (into the flat values) moved by
/// about `delta`, and the exact move (the difference of two f32 values is exact in f64).
fn reference_loss_at(p: &mut Params, index: usize, delta: f64, x: &Tensor, labels: &[u32]) -> (f64, f64) {
    let [n, _, h, w] = x.shape() else { unreachable!() };
    let original = p.values()[index];
    let moved = (original as f64 + delta) as f32;
    let actual_delta = moved as f64 - original as f64;
    p.values_mut()[index] = moved;
    let loss = reference::cross_entropy(&reference::forward(p, x.data(), *n, *h, *w), labels);
    // Restore bit-exactly.
    p.values_mut()[index] = original;
    (loss, actual_delta)
}

/// Checks every parameter tensor of a network at a few coordinates: the training plan's
/// f32 backward pass against central differences of the independent f64 reference
/// forward pass. Also checks the plan's f32 forward against that reference.
fn check_model(config: ResNetConfig, batch: usize, size: usize, tol: f64) {
    let mut rng = Rng::new(9);
    let mut p = Params::new(config.clone(), 4).unwrap();
    // Non-trivial BN affine parameters so every gradient path is exercised.
    let names: Vec<String> = p.entries().iter().map(|e| e.name.clone()).collect();
    for name in &names {
        let bn = name.contains("bn") || name.contains("downsample.1");
        if bn && !name.ends_with("running_mean") && !name.ends_with("running_var") {
            for v in p.get_mut(name).unwrap() {
                *v += 0.3 * rng.normal() as f32;
            }
        }
    }
    let x = Tensor::new(vec![batch, 3, size, size], randn(&mut rng, batch * 3 * size * size)).unwrap();
    let labels: Vec<u32> = (0..batch).map(|i| (i % config.num_classes) as u32).collect();
    let mut plan = TrainingPlan::new(&config, batch, size, size).unwrap();
    let logits = plan.forward_train(&mut p, x.data(), batch).unwrap().to_vec();
    let golden = reference::forward(&p, x.data(), batch, size, size);
    let scale = resnet_core::tensor::max_abs_f64(golden.iter().copied());
    let fwd_err = resnet_core::tensor::max_abs_f64(logits.iter().zip(&golden).map(|(&a, b)| a as f64 - b)) / scale;
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
    p.grads_mut().fill(0.0);
    plan.backward(&mut p, &dlogits).unwrap();
    let grads = p.grads().to_vec();
    let entries: Vec<_> = p.entries().iter().filter(|e| e.kind == Kind::Param).cloned().collect();
    let (mut diff, mut norm) = (0f64, 0f64);
    let mut worst = (0f64, String::new());
    for e in &entries {
        let (mut d_t, mut n_t) = (0f64, 0f64);
        for _ in 0..3 {
            let index = e.offset + rng.below(e.len);
            // Small steps: the f64 reference has no rounding noise to drown them, and
            // they rarely carry a ReLU across its kink.
            let (lp, dp) = reference_loss_at(&mut p, index, 1e-5, &x, &labels);
            let (lm, dm) = reference_loss_at(&mut p, index, -1e-5, &x, &labels);
            let fd = (lp - lm) / (dp - dm);
            d_t += (fd - grads[index] as f64).powi(2);
            n_t += (grads[index] as f64).powi(2).max(fd * fd);
        }
        let rel_t = (d_t / n_t.max(1e-24)).sqrt();
        println!("{:<24} {rel_t:>9.2e} relative error", e.name);
        if rel_t > worst.0 {
            worst = (rel_t, e.name.clone());
        }
        diff += d_t;
        norm += n_t;
    }
    let rel = (diff / norm).sqrt();
    println!(
        "{}: whole-network relative error {rel:.2e} over {} tensors (worst {} {:.2e})",
        config.name,
        entries.len(),
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
