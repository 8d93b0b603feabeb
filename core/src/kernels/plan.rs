//! Which convolution algorithm runs a given shape: im2col + GEMM, or Winograd F(2x2,3x3)
//! / F(4x4,3x3) (Lavin & Gray 2015) for 3x3 stride-1 pad-1 convolutions.
//!
//! The policy comes from `RESNET_CONV`:
//! - unset or `auto`: a fixed rule drawn from `examples/conv_bench.rs` measurements on
//!   this project's machines. It is deterministic, so a seeded run is reproducible from
//!   one process to the next (a timing-based choice could differ between processes).
//! - `measure`: cuDNN-benchmark style: each candidate is timed once per shape on first
//!   use and the fastest is cached for the process.
//! - `gemm`, `wino2`, `wino4`: force one algorithm wherever it applies (tests, benches).
//!
//! Backward-filter has its own switch, `RESNET_FILTER_GRAD` (or [`set_filter_policy`]):
//! unset or `auto` for the rule of [`auto_filter_choice`], `measure` to time every
//! candidate once per shape, `gemm` for im2col + GEMM, `direct` for the register-blocked
//! kernel of `kernels::filter_grad`, `wino2` / `wino4` for
//! `kernels::winograd_filter_grad` (3x3 stride-1 only; elsewhere the rule applies).

use super::conv::{conv_backward_data, conv_backward_filter, conv_forward, FilterGradWorkspace};
use super::filter_grad::filter_grad_direct;
use super::im2col::ConvGeometry;
use super::winograd::{transform_filters, winograd_backward_data, winograd_forward, WinogradTile};
use super::winograd_filter_grad::winograd_backward_filter;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

/// A convolution algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvAlgo {
    /// im2col + sgemm (1x1 stride-1 without im2col).
    Gemm,
    /// Winograd with the given output tile.
    Winograd(WinogradTile),
}

impl ConvAlgo {
    /// The name used by `RESNET_CONV` and in bench tables.
    pub fn name(self) -> &'static str {
        match self {
            ConvAlgo::Gemm => "gemm",
            ConvAlgo::Winograd(WinogradTile::F2) => "wino2",
            ConvAlgo::Winograd(WinogradTile::F4) => "wino4",
        }
    }
}

/// The two passes whose algorithm is chosen by [`choose`] (backward-filter has its own
/// [`choose_filter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    Forward,
    BackwardData,
}

/// How algorithms are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// The deterministic rule of [`auto_choice`].
    Auto,
    /// Time every candidate once per shape.
    Measure,
    /// One algorithm wherever it applies.
    Force(ConvAlgo),
}

static POLICY: Mutex<Option<Policy>> = Mutex::new(None);
static FILTER_POLICY: Mutex<Option<FilterPolicy>> = Mutex::new(None);
static MEASURED_FILTER: Mutex<Option<HashMap<ConvGeometry, FilterAlgo>>> = Mutex::new(None);

/// A backward-filter algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FilterAlgo {
    /// im2col + sgemm, [`conv_backward_filter`].
    Gemm,
    /// The unpacked register-blocked product of
    /// [`filter_grad_direct`].
    Direct,
    /// Winograd with the given tile,
    /// [`winograd_backward_filter`].
    Winograd(WinogradTile),
}

impl FilterAlgo {
    /// The name used by `RESNET_FILTER_GRAD` and in bench tables.
    pub fn name(self) -> &'static str {
        match self {
            FilterAlgo::Gemm => "gemm",
            FilterAlgo::Direct => "direct",
            FilterAlgo::Winograd(WinogradTile::F2) => "wino2",
            FilterAlgo::Winograd(WinogradTile::F4) => "wino4",
        }
    }
}

/// How backward-filter algorithms are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterPolicy {
    /// The deterministic rule of [`auto_filter_choice`].
    Auto,
    /// Time every candidate once per shape ([`fastest_filter`]).
    Measure,
    /// One algorithm wherever it applies (Winograd only on 3x3 stride-1 pad-1).
    Force(FilterAlgo),
}

/// Parses a `RESNET_FILTER_GRAD` value.
pub fn parse_filter_policy(s: &str) -> Option<FilterPolicy> {
    match s.trim() {
        "" | "auto" => Some(FilterPolicy::Auto),
        "measure" => Some(FilterPolicy::Measure),
        "gemm" => Some(FilterPolicy::Force(FilterAlgo::Gemm)),
        "direct" => Some(FilterPolicy::Force(FilterAlgo::Direct)),
        "wino2" => Some(FilterPolicy::Force(FilterAlgo::Winograd(WinogradTile::F2))),
        "wino4" => Some(FilterPolicy::Force(FilterAlgo::Winograd(WinogradTile::F4))),
        _ => None,
    }
}

/// Replaces the backward-filter policy for the rest of the process, overriding
/// `RESNET_FILTER_GRAD`.
pub fn set_filter_policy(p: FilterPolicy) {
    *FILTER_POLICY.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
}

/// The backward-filter algorithm for `g` under [`set_filter_policy`] or
/// `RESNET_FILTER_GRAD` (read once; an unknown value warns and means `auto`).
pub fn choose_filter(g: &ConvGeometry) -> FilterAlgo {
    let policy = read_once(
        &FILTER_POLICY,
        "RESNET_FILTER_GRAD",
        "auto, measure, gemm, direct, wino2, wino4",
        parse_filter_policy,
        FilterPolicy::Auto,
    );
    match policy {
        FilterPolicy::Force(FilterAlgo::Winograd(_)) if !winograd_applies(g) => auto_filter_choice(g),
        FilterPolicy::Force(a) => a,
        FilterPolicy::Auto => auto_filter_choice(g),
        FilterPolicy::Measure => cached(&MEASURED_FILTER, *g, || fastest_filter(g).0),
    }
}

/// The value in `slot`, else `var` parsed by `parse` and kept there; a value `parse`
/// rejects warns on stderr (naming the `allowed` ones) and gives `fallback`.
fn read_once<P: Copy>(
    slot: &Mutex<Option<P>>,
    var: &str,
    allowed: &str,
    parse: fn(&str) -> Option<P>,
    fallback: P,
) -> P {
    *slot.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| {
        let v = std::env::var(var).unwrap_or_default();
        parse(&v).unwrap_or_else(|| {
            eprintln!("{var}=\"{v}\" is not one of {allowed}; using auto");
            fallback
        })
    })
}

/// `key`'s entry of `cache`, computed by `compute` on first use. The lock is not held
/// while `compute` runs (timing candidates runs the kernels, which may choose again).
fn cached<K: Eq + Hash + Copy, V: Copy>(
    cache: &Mutex<Option<HashMap<K, V>>>,
    key: K,
    compute: impl FnOnce() -> V,
) -> V {
    let lock = || cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&v) = lock().get_or_insert_with(HashMap::new).get(&key) {
        return v;
    }
    let v = compute();
    lock().get_or_insert_with(HashMap::new).insert(key, v);
    v
}

/// The deterministic backward-filter rule, from `examples/filter_bench.rs` (2 threads):
/// - from `K x C = 256 x 512` on, the direct kernel's per-unit `dY` outgrows L2 and
///   GEMM's packed panels win (by 10-20 %);
/// - 3x3 stride-1 layers with 64 channels or more and enough tiles: Winograd, F(4x4) up
///   to 128 x 128 channels (1.1-1.6x the direct kernel on 64@8, 64@56 and 128@28), F(2x2)
///   above, where F(4x4)'s 36 transformed products cost more than they save (256@14:
///   1.2-1.3x);
/// - elsewhere the direct kernel (1.2-5x GEMM where `K x C` is small, which spends most
///   of its time on im2col and packing; 16 and 32 channels: 1.3-1.5x Winograd, whose
///   transforms then outweigh the products).
pub fn auto_filter_choice(g: &ConvGeometry) -> FilterAlgo {
    let channels = g.in_channels * g.out_channels;
    let tiles4 = g.batch * g.out_h.div_ceil(4) * g.out_w.div_ceil(4);
    if channels >= 256 * 512 {
        FilterAlgo::Gemm
    } else if winograd_applies(g) && g.in_channels.min(g.out_channels) >= 64 && tiles4 >= 64 {
        if channels <= 128 * 128 {
            FilterAlgo::Winograd(WinogradTile::F4)
        } else {
            FilterAlgo::Winograd(WinogradTile::F2)
        }
    } else {
        FilterAlgo::Direct
    }
}

/// Times every applicable backward-filter algorithm on `g` with synthetic data (the
/// median of three runs after a warm-up); returns the fastest with all timings in seconds.
pub fn fastest_filter(g: &ConvGeometry) -> (FilterAlgo, Vec<(FilterAlgo, f64)>) {
    let mut candidates = vec![FilterAlgo::Gemm, FilterAlgo::Direct];
    if winograd_applies(g) {
        candidates.push(FilterAlgo::Winograd(WinogradTile::F2));
        candidates.push(FilterAlgo::Winograd(WinogradTile::F4));
    }
    let (input, _, dy) = synthetic(g);
    let mut dw = vec![0f32; g.out_channels * g.col_rows()];
    let mut ws = FilterGradWorkspace::default();
    let timings: Vec<(FilterAlgo, f64)> = candidates
        .into_iter()
        .map(|algo| {
            let mut once = || {
                let start = Instant::now();
                match algo {
                    FilterAlgo::Gemm => conv_backward_filter(g, &input, &dy, &mut dw, None, &mut ws),
                    FilterAlgo::Direct => filter_grad_direct(g, &input, &dy, &mut dw, None, &mut ws),
                    FilterAlgo::Winograd(t) => winograd_backward_filter(g, t, &input, &dy, &mut dw, None, &mut ws),
                }
                start.elapsed().as_secs_f64()
            };
            (algo, median_of_three(&mut once))
        })
        .collect();
    let best = timings
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(FilterAlgo::Direct, |t| t.0);
    (best, timings)
}

/// Input, weights and output gradient of `g`, deterministic and of unit scale.
fn synthetic(g: &ConvGeometry) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let input = (0..g.batch * g.in_image())
        .map(|i| ((i * 7919) % 17) as f32 * 0.1 - 0.8)
        .collect();
    let weights = (0..g.out_channels * g.col_rows())
        .map(|i| ((i * 104_729) % 13) as f32 * 0.05 - 0.3)
        .collect();
    let dy = (0..g.batch * g.out_image())
        .map(|i| ((i * 31) % 11) as f32 * 0.1 - 0.5)
        .collect();
    (input, weights, dy)
}

/// The median of three timed runs after one warm-up.
fn median_of_three(once: &mut impl FnMut() -> f64) -> f64 {
    once();
    let mut t = [once(), once(), once()];
    t.sort_by(f64::total_cmp);
    t[1]
}
static MEASURED: Mutex<Option<HashMap<(ConvGeometry, Pass), ConvAlgo>>> = Mutex::new(None);

/// Parses a `RESNET_CONV` value.
pub fn parse_policy(s: &str) -> Option<Policy> {
    match s.trim() {
        "" | "auto" => Some(Policy::Auto),
        "measure" => Some(Policy::Measure),
        "gemm" => Some(Policy::Force(ConvAlgo::Gemm)),
        "wino2" => Some(Policy::Force(ConvAlgo::Winograd(WinogradTile::F2))),
        "wino4" => Some(Policy::Force(ConvAlgo::Winograd(WinogradTile::F4))),
        _ => None,
    }
}

/// The policy in force: set by [`set_policy`], else read once from `RESNET_CONV`
/// (an unknown value falls back to `auto` with a warning on stderr).
pub fn policy() -> Policy {
    read_once(
        &POLICY,
        "RESNET_CONV",
        "auto, measure, gemm, wino2, wino4",
        parse_policy,
        Policy::Auto,
    )
}

/// Replaces the policy for the rest of the process (benches compare algorithms this way).
pub fn set_policy(p: Policy) {
    *POLICY.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
}

/// Whether Winograd can compute this convolution.
pub fn winograd_applies(g: &ConvGeometry) -> bool {
    g.kernel_h == 3 && g.kernel_w == 3 && g.stride == 1 && g.pad == 1
}

/// The algorithm for `pass` on `g` under the current policy.
pub fn choose(g: &ConvGeometry, pass: Pass) -> ConvAlgo {
    if !winograd_applies(g) {
        return ConvAlgo::Gemm;
    }
    match policy() {
        Policy::Force(a) => a,
        Policy::Auto => auto_choice(g, pass),
        Policy::Measure => cached(&MEASURED, (*g, pass), || fastest(g, pass).0),
    }
}

/// The deterministic rule. From the measurements (GFLOP/s of each algorithm per shape):
/// with fewer than 8 input channels (the RGB stem) the transforms cost more than the
/// products save, so GEMM runs; F(4x4) wins the forward pass almost everywhere else
/// (1.9-3x GEMM); with 512x512 channels
/// and fewer than 16 output tiles of 4x4 its 36 large transformed-filter matrices are
/// streamed for too little work and F(2x2) wins. Backward-data re-transforms the rotated
/// filters every call, which pays on small channel counts with F(4x4), on large ones
/// with F(2x2) once there are enough tiles, and not at all below that.
pub fn auto_choice(g: &ConvGeometry, pass: Pass) -> ConvAlgo {
    let tiles4 = g.batch * g.out_h.div_ceil(4) * g.out_w.div_ceil(4);
    let channels = g.in_channels * g.out_channels;
    if g.in_channels < 8 {
        return ConvAlgo::Gemm;
    }
    match pass {
        Pass::Forward if channels >= 512 * 512 && tiles4 < 16 => ConvAlgo::Winograd(WinogradTile::F2),
        Pass::Forward => ConvAlgo::Winograd(WinogradTile::F4),
        Pass::BackwardData if channels <= 128 * 128 => ConvAlgo::Winograd(WinogradTile::F4),
        Pass::BackwardData if tiles4 >= 32 => ConvAlgo::Winograd(WinogradTile::F2),
        Pass::BackwardData => ConvAlgo::Gemm,
    }
}

/// Times every applicable algorithm for `pass` on `g` with synthetic data (the median of
/// three runs after a warm-up) and returns the fastest with all timings in seconds.
pub fn fastest(g: &ConvGeometry, pass: Pass) -> (ConvAlgo, Vec<(ConvAlgo, f64)>) {
    let mut candidates = vec![ConvAlgo::Gemm];
    if winograd_applies(g) {
        candidates.push(ConvAlgo::Winograd(WinogradTile::F2));
        candidates.push(ConvAlgo::Winograd(WinogradTile::F4));
    }
    let (input, weights, dy) = synthetic(g);
    let mut out = vec![0f32; g.batch * g.out_image().max(g.in_image())];
    let (fwd_len, bwd_len) = (g.batch * g.out_image(), g.batch * g.in_image());
    let mut timings = Vec::new();
    for &algo in &candidates {
        // Inference caches the transformed filters and training transforms them once per
        // step, so the forward transform is done outside the timed call.
        let filters = match (pass, algo) {
            (Pass::Forward, ConvAlgo::Winograd(t)) => {
                Some(transform_filters(t, &weights, g.out_channels, g.in_channels))
            }
            _ => None,
        };
        let mut once = || {
            let start = Instant::now();
            match (pass, algo, &filters) {
                (Pass::Forward, ConvAlgo::Winograd(t), Some(f)) => {
                    winograd_forward(g, t, &input, f, None, &mut out[..fwd_len])
                }
                (Pass::Forward, _, _) => conv_forward(g, &input, &weights, None, &mut out[..fwd_len]),
                (Pass::BackwardData, ConvAlgo::Winograd(t), _) => {
                    winograd_backward_data(g, t, &weights, &dy, &mut out[..bwd_len])
                }
                (Pass::BackwardData, ConvAlgo::Gemm, _) => conv_backward_data(g, &weights, &dy, &mut out[..bwd_len]),
            }
            start.elapsed().as_secs_f64()
        };
        timings.push((algo, median_of_three(&mut once)));
    }
    let best = timings
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(ConvAlgo::Gemm, |t| t.0);
    (best, timings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_the_rule_follows_the_measurements() {
        assert_eq!(
            parse_policy("wino4"),
            Some(Policy::Force(ConvAlgo::Winograd(WinogradTile::F4)))
        );
        assert_eq!(parse_policy(""), Some(Policy::Auto));
        assert_eq!(parse_policy("fft"), None);
        assert_eq!(
            parse_filter_policy("direct"),
            Some(FilterPolicy::Force(FilterAlgo::Direct))
        );
        assert_eq!(
            parse_filter_policy("wino4"),
            Some(FilterPolicy::Force(FilterAlgo::Winograd(WinogradTile::F4)))
        );
        assert_eq!(parse_filter_policy("measure"), Some(FilterPolicy::Measure));
        assert_eq!(parse_filter_policy("auto"), Some(FilterPolicy::Auto));
        assert_eq!(parse_filter_policy("fft"), None);
        let big = ConvGeometry::new(8, 512, 7, 7, 512, (3, 3), 1, 1).unwrap();
        assert_eq!(auto_filter_choice(&big), FilterAlgo::Gemm);
        let small = ConvGeometry::new(128, 16, 32, 32, 16, (3, 3), 1, 1).unwrap();
        assert_eq!(auto_filter_choice(&small), FilterAlgo::Direct);
        let wide = ConvGeometry::new(128, 64, 8, 8, 64, (3, 3), 1, 1).unwrap();
        assert_eq!(auto_filter_choice(&wide), FilterAlgo::Winograd(WinogradTile::F4));
        let wider = ConvGeometry::new(8, 256, 14, 14, 256, (3, 3), 1, 1).unwrap();
        assert_eq!(auto_filter_choice(&wider), FilterAlgo::Winograd(WinogradTile::F2));
        let strided = ConvGeometry::new(128, 64, 16, 16, 64, (3, 3), 2, 1).unwrap();
        assert_eq!(auto_filter_choice(&strided), FilterAlgo::Direct);
        let (best, timings) = fastest_filter(&ConvGeometry::new(2, 8, 6, 6, 8, (3, 3), 1, 1).unwrap());
        assert_eq!(timings.len(), 4);
        assert!(timings.iter().any(|t| t.0 == best));
        let g = |n, c, h| ConvGeometry::new(n, c, h, h, c, (3, 3), 1, 1).unwrap();
        assert_eq!(
            auto_choice(&g(128, 16, 32), Pass::Forward),
            ConvAlgo::Winograd(WinogradTile::F4)
        );
        assert_eq!(
            auto_choice(&g(1, 512, 7), Pass::Forward),
            ConvAlgo::Winograd(WinogradTile::F2)
        );
        assert_eq!(auto_choice(&g(1, 512, 7), Pass::BackwardData), ConvAlgo::Gemm);
        assert_eq!(
            auto_choice(&g(8, 256, 14), Pass::BackwardData),
            ConvAlgo::Winograd(WinogradTile::F2)
        );
        let strided = ConvGeometry::new(1, 16, 8, 8, 32, (3, 3), 2, 1).unwrap();
        assert_eq!(choose(&strided, Pass::Forward), ConvAlgo::Gemm);
        let (best, timings) = fastest(&g(1, 8, 6), Pass::BackwardData);
        assert_eq!(timings.len(), 3);
        assert!(timings.iter().any(|t| t.0 == best));
    }
}
