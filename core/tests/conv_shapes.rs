//! Every algorithm against the naive f64 convolution on every distinct convolution shape
//! of ResNet-20 (batch 2) and ResNet-50 (batch 1), all three passes: forward (GEMM,
//! Winograd F2 and F4), backward-data (GEMM, F2, F4) and backward-filter (GEMM, the
//! direct kernel, F2, F4). Prints the worst relative error of each.
//!
//! ResNet-20's references are whole naive passes; ResNet-50's would take most of a
//! minute, so there each pass is checked on `SAMPLES` output elements drawn at random,
//! each computed in f64 straight from the definition.

use resnet_core::kernels::conv::{
    conv_backward_data, conv_backward_data_naive, conv_backward_filter, conv_backward_filter_naive, conv_forward,
    conv_forward_naive, FilterGradWorkspace,
};
use resnet_core::kernels::filter_grad::filter_grad_direct;
use resnet_core::kernels::im2col::ConvGeometry;
use resnet_core::kernels::plan::winograd_applies;
use resnet_core::kernels::winograd::{transform_filters, winograd_backward_data, winograd_forward, WinogradTile};
use resnet_core::kernels::winograd_filter_grad::winograd_backward_filter;
use resnet_core::model::{Arch, ResNetConfig};
use resnet_core::rng::Rng;
use std::collections::BTreeMap;

fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// `max |a - b| / max |b|`; NaN (a value never written) counts as infinite.
fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let err = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) });
    err / scale
}

fn distinct_shapes(model: &str, batch: usize) -> Vec<ConvGeometry> {
    let config = ResNetConfig::named(model).expect("a zoo model");
    let size = config.input_size;
    let arch = Arch::of(&config).expect("the model builds");
    let distinct = arch
        .distinct_conv_geometries(batch, size, size)
        .expect("its geometries");
    distinct.into_iter().map(|(g, _)| g).collect()
}

/// Elements of each pass's result compared on sampled shapes.
const SAMPLES: usize = 600;

/// Which elements of a pass's result are compared with its reference, and the reference
/// values there (f64 from the definition, rounded to f32).
struct Reference {
    at: Vec<usize>,
    want: Vec<f32>,
}

impl Reference {
    fn full(want: Vec<f32>) -> Self {
        Reference {
            at: (0..want.len()).collect(),
            want,
        }
    }

    fn sampled(rng: &mut Rng, len: usize, value: impl Fn(usize) -> f64) -> Self {
        let at: Vec<usize> = (0..SAMPLES.min(len)).map(|_| rng.below(len)).collect();
        let want = at.iter().map(|&i| value(i) as f32).collect();
        Reference { at, want }
    }

    fn err(&self, got: &[f32]) -> f32 {
        let picked: Vec<f32> = self.at.iter().map(|&i| got[i]).collect();
        max_rel_err(&picked, &self.want)
    }
}

/// The input value feeding tap `(i, j)` of output `(oy, ox)`, zero in the padding.
fn input_at(
    g: &ConvGeometry,
    x: &[f32],
    (n, c): (usize, usize),
    (oy, ox): (usize, usize),
    (i, j): (usize, usize),
) -> f64 {
    let iy = (oy * g.stride + i) as isize - g.pad as isize;
    let ix = (ox * g.stride + j) as isize - g.pad as isize;
    if iy < 0 || ix < 0 || iy >= g.in_h as isize || ix >= g.in_w as isize {
        return 0.0;
    }
    x[((n * g.in_channels + c) * g.in_h + iy as usize) * g.in_w + ix as usize] as f64
}

fn weight_at(g: &ConvGeometry, w: &[f32], k: usize, c: usize, i: usize, j: usize) -> f64 {
    w[((k * g.in_channels + c) * g.kernel_h + i) * g.kernel_w + j] as f64
}

/// References for forward, backward-data and backward-filter: whole naive passes, or
/// sampled elements.
fn references(g: &ConvGeometry, x: &[f32], w: &[f32], dy: &[f32], sample: Option<&mut Rng>) -> [Reference; 3] {
    let Some(rng) = sample else {
        let mut y = vec![0.0; dy.len()];
        conv_forward_naive(g, x, w, None, &mut y);
        let mut dx = vec![0.0; x.len()];
        conv_backward_data_naive(g, w, dy, &mut dx);
        let mut dw = vec![0.0; w.len()];
        conv_backward_filter_naive(g, x, dy, &mut dw, None);
        return [Reference::full(y), Reference::full(dx), Reference::full(dw)];
    };
    let (kh, kw) = (g.kernel_h, g.kernel_w);
    let y = Reference::sampled(rng, dy.len(), |e| {
        let (ox, oy) = (e % g.out_w, (e / g.out_w) % g.out_h);
        let (k, n) = ((e / g.out_plane()) % g.out_channels, e / g.out_image());
        let mut acc = 0.0;
        for c in 0..g.in_channels {
            for i in 0..kh {
                for j in 0..kw {
                    acc += weight_at(g, w, k, c, i, j) * input_at(g, x, (n, c), (oy, ox), (i, j));
                }
            }
        }
        acc
    });
    let dx = Reference::sampled(rng, x.len(), |e| {
        let (ix, iy) = (e % g.in_w, (e / g.in_w) % g.in_h);
        let (c, n) = ((e / g.in_plane()) % g.in_channels, e / g.in_image());
        let mut acc = 0.0;
        for i in 0..kh {
            for j in 0..kw {
                // Output (oy, ox) reads input (iy, ix) through tap (i, j) when
                // oy * s + i - pad == iy.
                let (ny, nx) = (iy + g.pad, ix + g.pad);
                if ny < i || nx < j || (ny - i) % g.stride != 0 || (nx - j) % g.stride != 0 {
                    continue;
                }
                let (oy, ox) = ((ny - i) / g.stride, (nx - j) / g.stride);
                if oy >= g.out_h || ox >= g.out_w {
                    continue;
                }
                for k in 0..g.out_channels {
                    let d = dy[((n * g.out_channels + k) * g.out_h + oy) * g.out_w + ox] as f64;
                    acc += weight_at(g, w, k, c, i, j) * d;
                }
            }
        }
        acc
    });
    let dw = Reference::sampled(rng, w.len(), |e| {
        let (j, i) = (e % kw, (e / kw) % kh);
        let (c, k) = ((e / (kh * kw)) % g.in_channels, e / g.col_rows());
        let mut acc = 0.0;
        for n in 0..g.batch {
            for oy in 0..g.out_h {
                for ox in 0..g.out_w {
                    let d = dy[((n * g.out_channels + k) * g.out_h + oy) * g.out_w + ox] as f64;
                    acc += d * input_at(g, x, (n, c), (oy, ox), (i, j));
                }
            }
        }
        acc
    });
    [y, dx, dw]
}

/// Checks every algorithm on every shape; returns the worst error per (pass, algorithm).
fn check_model(model: &str, batch: usize, seed: u64, sampled: bool) -> BTreeMap<&'static str, f32> {
    let mut rng = Rng::new(seed);
    let mut worst: BTreeMap<&'static str, f32> = BTreeMap::new();
    let mut record = |key: &'static str, e: f32, bound: f32, g: &ConvGeometry| {
        assert!(
            e < bound,
            "{model} {key} on {g:?}: max rel err {e:.2e} (bound {bound:.0e})"
        );
        let w = worst.entry(key).or_insert(0.0);
        *w = w.max(e);
    };
    for g in distinct_shapes(model, batch) {
        let x = random(&mut rng, g.batch * g.in_image());
        let w = random(&mut rng, g.out_channels * g.col_rows());
        let dy = random(&mut rng, g.batch * g.out_image());
        let [y_ref, dx_ref, dw_ref] = references(&g, &x, &w, &dy, sampled.then_some(&mut rng));

        let mut y = vec![f32::NAN; dy.len()];
        conv_forward(&g, &x, &w, None, &mut y);
        record("forward gemm", y_ref.err(&y), 1e-5, &g);
        let mut dx = vec![f32::NAN; x.len()];
        conv_backward_data(&g, &w, &dy, &mut dx);
        record("backward-data gemm", dx_ref.err(&dx), 1e-5, &g);
        let mut ws = FilterGradWorkspace::default();
        let mut dw = vec![0.0; w.len()];
        conv_backward_filter(&g, &x, &dy, &mut dw, None, &mut ws);
        record("backward-filter gemm", dw_ref.err(&dw), 1e-5, &g);
        let mut dw = vec![0.0; w.len()];
        filter_grad_direct(&g, &x, &dy, &mut dw, None, &mut ws);
        record("backward-filter direct", dw_ref.err(&dw), 1e-5, &g);
        if !winograd_applies(&g) {
            continue;
        }
        for (tile, name, bound) in [(WinogradTile::F2, "wino2", 1e-4), (WinogradTile::F4, "wino4", 1e-3)] {
            let f = transform_filters(tile, &w, g.out_channels, g.in_channels);
            let mut y = vec![f32::NAN; dy.len()];
            winograd_forward(&g, tile, &x, &f, None, &mut y);
            let key = if name == "wino2" {
                "forward wino2"
            } else {
                "forward wino4"
            };
            record(key, y_ref.err(&y), bound, &g);
            let mut dx = vec![f32::NAN; x.len()];
            winograd_backward_data(&g, tile, &w, &dy, &mut dx);
            let key = if name == "wino2" {
                "backward-data wino2"
            } else {
                "backward-data wino4"
            };
            record(key, dx_ref.err(&dx), bound, &g);
            let mut dw = vec![0.0; w.len()];
            winograd_backward_filter(&g, tile, &x, &dy, &mut dw, None, &mut ws);
            let key = if name == "wino2" {
                "backward-filter wino2"
            } else {
                "backward-filter wino4"
            };
            record(key, dw_ref.err(&dw), bound, &g);
        }
    }
    for (key, e) in &worst {
        println!("{model}: {key:<24} worst max rel err {e:.2e}");
    }
    worst
}

#[test]
fn every_algorithm_matches_the_naive_convolution_on_every_resnet20_shape() {
    let worst = check_model("resnet20", 2, 1, false);
    // Every pass and algorithm ran on at least one shape.
    assert_eq!(worst.len(), 10, "{worst:?}");
}

#[test]
fn every_algorithm_matches_the_naive_convolution_on_every_resnet50_shape() {
    let worst = check_model("resnet50", 1, 2, true);
    assert_eq!(worst.len(), 10, "{worst:?}");
}
