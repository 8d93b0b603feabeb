//! Helpers shared by the integration tests: random data and finite-difference checks.
#![allow(dead_code)]

pub mod reference;
pub mod shared;

use resnet_core::model::{BlockKind, BottleneckStride, ResNetConfig, ShortcutOption, Stem};
use resnet_core::rng::Rng;

/// A tiny bottleneck ResNet with an ImageNet stem and projection shortcuts (option B),
/// small enough for reference checks on 16x16 inputs.
pub fn small_bottleneck(stride: BottleneckStride) -> ResNetConfig {
    ResNetConfig {
        name: "bottleneck-test".into(),
        stem: Stem::ImageNet,
        stem_width: 8,
        block: BlockKind::Bottleneck,
        stage_blocks: vec![1, 2],
        stage_widths: vec![4, 8],
        residual: true,
        shortcut: ShortcutOption::B,
        bottleneck_stride: stride,
        num_classes: 5,
        in_channels: 3,
        input_size: 16,
    }
}

/// `n` standard-normal values.
pub fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// `sum(r * y)` in f64: a loss whose gradient with respect to `y` is `r`.
pub fn dot(r: &[f32], y: &[f32]) -> f64 {
    r.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Central finite differences of `loss` at `samples` random coordinates of the vector
/// that `get` exposes, compared with `analytic`. Prints how close they are and fails when
/// the relative error of the sampled gradient vector exceeds `tol`.
#[allow(clippy::too_many_arguments)]
pub fn check_gradient<T>(
    what: &str,
    obj: &mut T,
    get: impl Fn(&mut T) -> &mut [f32],
    analytic: &[f32],
    loss: impl Fn(&mut T) -> f64,
    eps: f32,
    samples: usize,
    tol: f64,
    rng: &mut Rng,
) {
    let len = get(obj).len();
    assert_eq!(len, analytic.len(), "{what}: gradient length");
    let picks: Vec<usize> = if len <= samples {
        (0..len).collect()
    } else {
        (0..samples).map(|_| rng.below(len)).collect()
    };
    let (mut num, mut diff, mut norm_a, mut norm_n) = (0usize, 0f64, 0f64, 0f64);
    let mut worst = 0f64;
    for &i in &picks {
        let v = get(obj)[i];
        get(obj)[i] = v + eps;
        let lp = loss(obj);
        get(obj)[i] = v - eps;
        let lm = loss(obj);
        get(obj)[i] = v;
        let fd = (lp - lm) / (2.0 * eps as f64);
        let an = analytic[i] as f64;
        diff += (fd - an).powi(2);
        norm_a += an * an;
        norm_n += fd * fd;
        worst = worst.max((fd - an).abs());
        num += 1;
    }
    let rel = diff.sqrt() / norm_a.sqrt().max(norm_n.sqrt()).max(1e-12);
    println!(
        "{what}: {num} coordinates, relative error {rel:.2e}, worst abs diff {worst:.2e}, |grad| {:.3e}",
        norm_a.sqrt()
    );
    assert!(
        rel < tol,
        "{what}: finite differences disagree with backward (relative error {rel:.3e} > {tol:.1e})"
    );
    assert!(norm_a > 0.0 || norm_n == 0.0, "{what}: zero analytic gradient");
}
