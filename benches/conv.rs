//! Criterion benchmarks of every distinct convolution shape of ResNet-20 (batch 128) and
//! ResNet-50 (batches 1 and 8): forward, backward-data and backward-filter, with each
//! algorithm that applies to the shape. Throughput counts the FLOPs of a direct
//! convolution (2 per multiply-add), so criterion's `Gelem/s` reads as GFLOP/s.
//!
//! `cargo bench --bench conv [-- FILTER]`, e.g. `-- resnet20-b128/` or `-- fwd/wino4`;
//! `RAYON_NUM_THREADS=1` for one thread. Winograd forward uses filters transformed once
//! (inference); backward-data includes its filter transform, as a training step does.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use resnet_core::kernels::conv::{conv_backward_data, conv_backward_filter, conv_forward, FilterGradWorkspace};
use resnet_core::kernels::filter_grad::filter_grad_direct;
use resnet_core::kernels::im2col::ConvGeometry;
use resnet_core::kernels::plan::winograd_applies;
use resnet_core::kernels::winograd::{transform_filters, winograd_backward_data, winograd_forward, WinogradTile};
use resnet_core::kernels::winograd_filter_grad::winograd_backward_filter;
use resnet_core::model::{Arch, ResNetConfig};
use std::time::Duration;

/// The distinct convolution shapes of `model` at `batch`, named after their first layer.
fn shapes(model: &str, batch: usize) -> Vec<(String, ConvGeometry)> {
    let config = ResNetConfig::named(model).expect("a zoo model");
    let size = config.input_size;
    let arch = Arch::of(&config).expect("the model builds");
    let distinct = arch
        .distinct_conv_geometries(batch, size, size)
        .expect("its geometries");
    distinct.into_iter().map(|(g, names)| (names[0].clone(), g)).collect()
}

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919 + seed) % 17) as f32 * 0.1 - 0.8).collect()
}

fn bench_shape(c: &mut Criterion, label: &str, g: &ConvGeometry) {
    let x = values(g.batch * g.in_image(), 1);
    let w = values(g.out_channels * g.col_rows(), 2);
    let dy = values(g.batch * g.out_image(), 3);
    let mut y = vec![0f32; dy.len()];
    let mut dx = vec![0f32; x.len()];
    let mut dw = vec![0f32; w.len()];
    let mut ws = FilterGradWorkspace::default();
    let mut group = c.benchmark_group(label);
    group.throughput(Throughput::Elements(2 * g.macs()));
    group.bench_function("fwd/gemm", |b| b.iter(|| conv_forward(g, &x, &w, None, &mut y)));
    group.bench_function("bwd-data/gemm", |b| b.iter(|| conv_backward_data(g, &w, &dy, &mut dx)));
    if winograd_applies(g) {
        for (name, tile) in [("wino2", WinogradTile::F2), ("wino4", WinogradTile::F4)] {
            let filters = transform_filters(tile, &w, g.out_channels, g.in_channels);
            group.bench_function(format!("fwd/{name}"), |b| {
                b.iter(|| winograd_forward(g, tile, &x, &filters, None, &mut y))
            });
            group.bench_function(format!("bwd-data/{name}"), |b| {
                b.iter(|| winograd_backward_data(g, tile, &w, &dy, &mut dx))
            });
        }
    }
    group.bench_function("bwd-filter/gemm", |b| {
        b.iter(|| conv_backward_filter(g, &x, &dy, &mut dw, None, &mut ws))
    });
    group.bench_function("bwd-filter/direct", |b| {
        b.iter(|| filter_grad_direct(g, &x, &dy, &mut dw, None, &mut ws))
    });
    if winograd_applies(g) {
        for (name, tile) in [("wino2", WinogradTile::F2), ("wino4", WinogradTile::F4)] {
            group.bench_function(format!("bwd-filter/{name}"), |b| {
                b.iter(|| winograd_backward_filter(g, tile, &x, &dy, &mut dw, None, &mut ws))
            });
        }
    }
    group.finish();
}

fn convolutions(c: &mut Criterion) {
    for (model, batch) in [("resnet20", 128), ("resnet50", 1), ("resnet50", 8)] {
        for (layer, g) in shapes(model, batch) {
            let label = format!(
                "{model}-b{batch}/{layer}:{}x{}x{}->{}k{}s{}",
                g.in_channels, g.in_h, g.in_w, g.out_channels, g.kernel_h, g.stride
            );
            bench_shape(c, &label, &g);
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = convolutions
}
criterion_main!(benches);
