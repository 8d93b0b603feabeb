//! Which blocked algorithm runs each convolution of a plan: a deterministic rule drawn
//! from measurements on this project's machines (the default, so a run is reproducible
//! from one process to the next), measurement per shape (cuDNN's benchmark mode, FFTW's
//! plans), or one algorithm forced wherever it applies (tests, benches).

use crate::kernels::blocked::{direct, winograd, BlockedEpilogue};
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::winograd::WinogradTile;
use crate::layout::Blocked;
use crate::rng::Rng;
use crate::simd::{F32xBlock, BLOCK};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// A convolution algorithm of the blocked engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algo {
    /// Register-blocked direct convolution (`kernels::blocked::direct`).
    Direct,
    /// Winograd with the given output tile (`kernels::blocked::winograd`), 3x3 stride 1 only.
    Winograd(WinogradTile),
    /// The stride-2 decomposition into Winograd F(m,2) and pointwise products with the
    /// given output tile (`kernels::blocked::winograd::winograd_s2_conv`), 3x3 stride 2 only.
    WinogradS2(WinogradTile),
}

impl Algo {
    /// Every algorithm, in the order tables list them.
    pub const ALL: [Algo; 5] = [
        Algo::Direct,
        Algo::Winograd(WinogradTile::F2),
        Algo::Winograd(WinogradTile::F4),
        Algo::WinogradS2(WinogradTile::F2),
        Algo::WinogradS2(WinogradTile::F4),
    ];

    /// The name used on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Direct => "direct",
            Algo::Winograd(WinogradTile::F2) => "wino2",
            Algo::Winograd(WinogradTile::F4) => "wino4",
            Algo::WinogradS2(WinogradTile::F2) => "wino2s2",
            Algo::WinogradS2(WinogradTile::F4) => "wino4s2",
        }
    }

    /// Whether the algorithm can run `g`.
    pub fn applies(self, g: &ConvGeometry) -> bool {
        match self {
            Algo::Direct => true,
            Algo::Winograd(_) => g.kernel_h == 3 && g.kernel_w == 3 && g.stride == 1 && g.pad == 1,
            Algo::WinogradS2(_) => g.kernel_h == 3 && g.kernel_w == 3 && g.stride == 2 && g.pad == 1,
        }
    }
}

/// How a plan picks each convolution's algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConvChoice {
    /// The deterministic rule of [`auto`].
    #[default]
    Auto,
    /// Time every candidate once per shape (cached for the process) and take the fastest.
    Measure,
    /// One algorithm wherever it applies, the rule elsewhere.
    Force(Algo),
}

impl std::str::FromStr for ConvChoice {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.trim() {
            "auto" => Ok(ConvChoice::Auto),
            "measure" => Ok(ConvChoice::Measure),
            other => Algo::ALL
                .into_iter()
                .find(|a| a.name() == other)
                .map(ConvChoice::Force)
                .ok_or_else(|| {
                    crate::Error::Config(format!(
                        "unknown convolution algorithm \"{other}\": expected auto, measure, direct, wino2, wino4, wino2s2 or wino4s2"
                    ))
                }),
        }
    }
}

/// The algorithm `choice` gives `g`.
pub fn choose(choice: ConvChoice, g: &ConvGeometry) -> Algo {
    match choice {
        ConvChoice::Force(a) if a.applies(g) => a,
        ConvChoice::Measure => measured(g),
        _ => auto(g),
    }
}

/// The deterministic rule, drawn from `resnet bench --layers` on this project's machine
/// (AVX-512, 2 cores): the stride-2 transform on 3x3 stride-2 layers where
/// [`stride_2_pays`]; Winograd on every 3x3 stride-1 convolution of blocked input (F(4x4)
/// ran at 2-3x the direct kernel's effective GFLOP/s from 16 to 256 channels), with
/// F(2x2) where the output has fewer than [`MIN_F4_TILES`] 4x4 tiles and F(4x4)'s 36
/// transformed filter matrices are larger than [`CACHED_FILTER_BYTES`]: they are then
/// read from memory for too few tiles (ResNet-50's 512-channel
/// 7x7 layers at batch 1, alone: F(2x2) 593, direct 486, F(4x4) 405 GFLOP/s). Direct
/// convolution everywhere else (1x1, the stem, the 3x3 stride-2 layers where the transform
/// does not pay).
pub fn auto(g: &ConvGeometry) -> Algo {
    if Algo::WinogradS2(WinogradTile::F4).applies(g) {
        let tile = stride_2_tile(g);
        return if S2_TRANSFORM && stride_2_pays(g, tile) {
            Algo::WinogradS2(tile)
        } else {
            Algo::Direct
        };
    }
    if !Algo::Winograd(WinogradTile::F4).applies(g) {
        return Algo::Direct;
    }
    let f4_tiles = g.batch * g.out_h.div_ceil(4) * g.out_w.div_ceil(4);
    let f4_filter_bytes = 36 * g.in_channels * g.out_channels * std::mem::size_of::<f32>();
    if f4_tiles >= MIN_F4_TILES || f4_filter_bytes <= CACHED_FILTER_BYTES {
        Algo::Winograd(WinogradTile::F4)
    } else {
        Algo::Winograd(WinogradTile::F2)
    }
}

/// Whether [`auto`] gives 3x3 stride-2 layers the stride-2 transform at all: on the
/// 16-lane (AVX-512) build, where it was measured; the 4-lane wasm build keeps the direct
/// kernel, which it has not been measured against there.
pub const S2_TRANSFORM: bool = BLOCK >= 16;

/// The output tile of the stride-2 transform for the 3x3 stride-2 layer `g`: the one with
/// fewer products per output pixel, counting the tiles' overhang past the image (F(4,2)
/// takes 81 per 4x4 tile, F(2,2) 25 per 2x2: 5.06 against 6.25 a pixel, but a 14x14
/// output takes 16x16 pixels of 4x4 tiles and 14x14 of 2x2 ones).
pub fn stride_2_tile(g: &ConvGeometry) -> WinogradTile {
    let cost = |t: WinogradTile| {
        let (m, a) = (t.m(), 2 * t.m() + 1);
        let covered = g.out_h.next_multiple_of(m) * g.out_w.next_multiple_of(m);
        (a * a) as f64 / (m * m) as f64 * covered as f64
    };
    if cost(WinogradTile::F2) < cost(WinogradTile::F4) {
        WinogradTile::F2
    } else {
        WinogradTile::F4
    }
}

/// Whether the stride-2 transform with output tiles `tile` (81 products per 4x4 tile and
/// channel pair, or 25 per 2x2, against the direct kernel's 144 and 36) runs the 3x3
/// stride-2 layer `g` faster: with at least [`MIN_S2_TILES`] output tiles, and twice that
/// where its transformed filter matrices exceed [`STREAMED_S2_FILTER_BYTES`] (then read
/// from memory in a network, as the F(4x4) filters of [`MIN_F4_TILES`]). Measured
/// (`resnet bench --layers`, 2 threads, each layer alone, GFLOP/s direct against 2x2 and
/// 4x4 tiles): ResNet-50 b1 128 channels at 56 -> 28 222 / 245 / 258, 256 at 28 -> 14
/// 215 / 267 / 237, 512 at 14 -> 7 (4 or 16 tiles) 214 / 210 / 128; b8 168 / 234 / 238,
/// 217 / 285 / 244, 182 / 176 / 191 (another run: 201 against 219 with 4x4 tiles);
/// ResNet-18 b1 201 / 237 / 260, 210 / 257 / 246; ResNet-20 b1 (16 and 4 tiles of 4x4)
/// 82 / - / 80, 109 / - / 94. Inside ResNet-50 (`examples/plan_profile`, alternating
/// process by process, medians of 10 runs at b1, 3-4 at b8, ms): b1 layer2.0.conv2 1.034
/// -> 0.821 with 4x4 tiles; layer3.0.conv2 with 4x4 tiles (16 tiles, 9.4 MB of filters)
/// 1.038 -> 1.047, with 2x2 tiles (49 tiles, 4.2 MB) 1.077 -> 0.887; b8 layer2-4's 8.42 / 8.61 / 8.51 -> 6.59 / 7.46 / 7.70, whole call
/// 243.7 -> 236.6.
pub fn stride_2_pays(g: &ConvGeometry, tile: WinogradTile) -> bool {
    let m = tile.m();
    let tiles = g.batch * g.out_h.div_ceil(m) * g.out_w.div_ceil(m);
    let filter_bytes = derived_len(Algo::WinogradS2(tile), g, BLOCK) * std::mem::size_of::<f32>();
    tiles >= 2 * MIN_S2_TILES || (tiles >= MIN_S2_TILES && filter_bytes <= STREAMED_S2_FILTER_BYTES)
}

/// Fewest output tiles for which [`auto`] picks the stride-2 transform.
pub const MIN_S2_TILES: usize = 16;

/// Transformed stride-2 filter bytes from which [`stride_2_pays`] wants twice
/// [`MIN_S2_TILES`].
pub const STREAMED_S2_FILTER_BYTES: usize = 4 << 20;

/// Fewest 4x4 output tiles for which [`auto`] picks F(4x4). Inside a whole network at
/// batch 1 the transformed filters come from memory, not cache, so their size counts:
/// F(4x4)'s are 2.25x F(2x2)'s, for 1.36x fewer products on ResNet-50's 14x14 layers.
/// With 32, timed in place (`examples/plan_profile.rs`, ResNet-50 b1, interleaved,
/// loaded machine, ms): layer3.x.conv2 F(2x2) 0.67-0.71, F(4x4) 0.69-0.77, direct
/// 0.95-0.97; layer4.x.conv2 F(2x2) 1.04-1.05, direct 1.16-1.21, F(4x4) 1.36-1.41.
/// Since the products prefetch the next position's filters (see `products_span` in
/// `kernels::blocked::winograd`), 16 tiles pay: layer3.x.conv2 (16 tiles) F(4x4)
/// 0.45-0.56 against F(2x2) 0.56-0.68 in the same runs, ResNet-101 b1 whole 53-61 ms
/// against 56-67 (builds alternating); layer4.x.conv2 (4 tiles) keeps F(2x2). Targets
/// without a prefetch instruction ([`crate::simd::HAS_PREFETCH`]: wasm) keep 32.
pub const MIN_F4_TILES: usize = if crate::simd::HAS_PREFETCH { 16 } else { 32 };

/// F(4x4) filters up to this size stay in cache from one call to the next, so few tiles do
/// not make them costly: ResNet-20's 64-channel layers (590 KB) at batch 1 have 4 tiles
/// and run fastest on F(4x4) (in Node, 4 lanes: 1.8 ms against 2.0-2.4 with F(2x2)).
pub const CACHED_FILTER_BYTES: usize = 1 << 20;

/// Derived-weight bytes a whole plan may hold and still find its filters in cache when
/// the next call starts (half of the machine's 32 MB L3, which other tenants share).
/// [`CACHED_FILTER_BYTES`] assumes this: a batch-1 ResNet-56 (14 MB of derived weights)
/// runs fastest with F(4x4) everywhere, but ResNet-110 (28 MB) streams them from memory
/// on every call, and its 8x8 stage, 4 tiles per layer at batch 1, then ran in 0.36 ms
/// with F(4x4) against 0.24 with F(2x2), whose filters are 16/36 the size
/// (`examples/plan_profile resnet110 1`, 2 threads).
pub const CACHED_PLAN_BYTES: usize = 16 << 20;

/// Turns F(4x4) into F(2x2) on the layers of `layers` (geometry and input block, with
/// `algos` their algorithms by [`auto`]) that have fewer than [`MIN_F4_TILES`] tiles,
/// largest savings first, until the plan's derived weights fit [`CACHED_PLAN_BYTES`] or
/// no such layer is left: where filters come from memory, few tiles make them dear.
pub fn fit_in_cache(layers: &[(ConvGeometry, usize)], algos: &mut [Algo]) {
    assert_eq!(layers.len(), algos.len(), "fit_in_cache: one algorithm per layer");
    let bytes = |a: Algo, (g, b): &(ConvGeometry, usize)| derived_len(a, g, *b) * std::mem::size_of::<f32>();
    let mut total: usize = layers.iter().zip(algos.iter()).map(|(l, &a)| bytes(a, l)).sum();
    let (f4, f2) = (Algo::Winograd(WinogradTile::F4), Algo::Winograd(WinogradTile::F2));
    let mut candidates: Vec<(usize, usize)> = layers
        .iter()
        .enumerate()
        .filter(|&(i, (g, _))| algos[i] == f4 && g.batch * g.out_h.div_ceil(4) * g.out_w.div_ceil(4) < MIN_F4_TILES)
        .map(|(i, l)| (i, bytes(f4, l) - bytes(f2, l)))
        .collect();
    candidates.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (i, saving) in candidates {
        if total <= CACHED_PLAN_BYTES {
            break;
        }
        algos[i] = f2;
        total -= saving;
    }
}

static MEASURED: Mutex<Option<HashMap<ConvGeometry, Algo>>> = Mutex::new(None);

/// The fastest algorithm for `g` by [`time_candidates`], timed once per process.
fn measured(g: &ConvGeometry) -> Algo {
    if let Some(a) = MEASURED
        .lock()
        .ok()
        .and_then(|m| m.as_ref().and_then(|m| m.get(g).copied()))
    {
        return a;
    }
    let best = time_candidates(g, BLOCK, 2)
        .into_iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(Algo::Direct, |(a, _)| a);
    if let Ok(mut m) = MEASURED.lock() {
        m.get_or_insert_with(HashMap::new).insert(*g, best);
    }
    best
}

/// Seconds per call of every algorithm that applies to `g` with input blocks of
/// `in_block` channels (the best of `reps` calls after one warm-up), on random data with
/// a bias and ReLU epilogue. `resnet bench --layers` prints these beside the plan's choice.
pub fn time_candidates(g: &ConvGeometry, in_block: usize, reps: usize) -> Vec<(Algo, f64)> {
    let mut rng = Rng::new(7);
    let input = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, in_block);
    let output = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, BLOCK);
    let x: Vec<f32> = (0..input.len()).map(|_| rng.normal() as f32).collect();
    let w: Vec<f32> = (0..g.out_channels * g.in_channels * g.kernel_h * g.kernel_w)
        .map(|_| rng.normal() as f32 * 0.1)
        .collect();
    let bias = vec![0.1; output.padded_channels()];
    let mut y = vec![0.0; output.len()];
    let ep = BlockedEpilogue {
        bias: Some(&bias),
        relu: true,
        relu_output: None,
        ..Default::default()
    };
    let mut out = Vec::new();
    for algo in Algo::ALL
        .into_iter()
        .filter(|a| a.applies(g) && (in_block == BLOCK || *a == Algo::Direct))
    {
        let weights = derive_weights(algo, g, &w, None, in_block);
        let mut best = f64::INFINITY;
        for rep in 0..=reps.max(1) {
            let t = Instant::now();
            run_conv(algo, g, &x, in_block, &weights, &ep, &mut y);
            if rep > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        out.push((algo, best));
    }
    out
}

/// The weights `algo` reads for `g`, from OIHW `weight` with each output channel scaled
/// by `scale` (a folded batch norm): packed filter blocks or Winograd-transformed filters.
pub fn derive_weights(
    algo: Algo,
    g: &ConvGeometry,
    weight: &[f32],
    scale: Option<&[f32]>,
    in_block: usize,
) -> Vec<f32> {
    let mut out = vec![0.0; derived_len(algo, g, in_block)];
    derive_weights_into(algo, g, weight, scale, in_block, &mut out);
    out
}

/// Length of [`derive_weights`]' result.
pub fn derived_len(algo: Algo, g: &ConvGeometry, in_block: usize) -> usize {
    match algo {
        Algo::Direct => direct::packed_len(g, in_block, BLOCK),
        Algo::Winograd(t) => winograd::filters_len(t, g.in_channels, g.out_channels, BLOCK),
        Algo::WinogradS2(t) => winograd::filters_len(t, g.in_channels, g.out_channels, BLOCK),
    }
}

/// [`derive_weights`] into a slice of [`derived_len`] values.
pub fn derive_weights_into(
    algo: Algo,
    g: &ConvGeometry,
    weight: &[f32],
    scale: Option<&[f32]>,
    in_block: usize,
    out: &mut [f32],
) {
    match algo {
        Algo::Direct => direct::pack_weights(weight, scale, g, in_block, BLOCK, out),
        Algo::Winograd(t) => winograd::transform_filters(weight, scale, g.in_channels, g.out_channels, t, BLOCK, out),
        Algo::WinogradS2(t) => {
            winograd::transform_filters_s2(weight, scale, g.in_channels, g.out_channels, t, BLOCK, out)
        }
    }
}

/// Runs `algo` on the plan's vector type: `input` in blocks of `in_block` channels (1 for
/// the NCHW stem input), `out` in blocks of [`BLOCK`].
pub fn run_conv(
    algo: Algo,
    g: &ConvGeometry,
    input: &[f32],
    in_block: usize,
    weights: &[f32],
    ep: &BlockedEpilogue,
    out: &mut [f32],
) {
    match algo {
        Algo::Direct => direct::direct_conv::<F32xBlock>(g, input, in_block, weights, ep, out),
        Algo::Winograd(t) => winograd::winograd_conv::<F32xBlock>(g, t, input, weights, ep, out),
        Algo::WinogradS2(t) => winograd::winograd_s2_conv::<F32xBlock>(g, t, input, weights, ep, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_winograd_only_applies_to_3x3_stride_1() {
        for a in Algo::ALL {
            assert_eq!(a.name().parse::<ConvChoice>().unwrap(), ConvChoice::Force(a));
        }
        assert!("gemm"
            .parse::<ConvChoice>()
            .unwrap_err()
            .to_string()
            .contains("expected auto"));
        let g3 = ConvGeometry::new(1, 16, 8, 8, 16, (3, 3), 1, 1).unwrap();
        let g3s2 = ConvGeometry::new(1, 16, 8, 8, 32, (3, 3), 2, 1).unwrap();
        let g1 = ConvGeometry::new(1, 16, 8, 8, 32, (1, 1), 1, 0).unwrap();
        let f4 = Algo::Winograd(WinogradTile::F4);
        assert!(f4.applies(&g3) && !f4.applies(&g3s2) && !f4.applies(&g1));
        let s2 = Algo::WinogradS2(WinogradTile::F4);
        assert!(s2.applies(&g3s2) && !s2.applies(&g3) && !s2.applies(&g1));
        let g1s2 = ConvGeometry::new(1, 16, 8, 8, 32, (1, 1), 2, 0).unwrap();
        assert!(!s2.applies(&g1s2));
        assert_eq!(choose(ConvChoice::Force(f4), &g1), auto(&g1));
        assert_eq!(choose(ConvChoice::Force(Algo::Direct), &g3), Algo::Direct);
    }

    #[test]
    fn a_plan_over_the_cache_budget_moves_its_fewest_tile_layers_to_f2() {
        let (f2, f4) = (Algo::Winograd(WinogradTile::F2), Algo::Winograd(WinogradTile::F4));
        let conv = |n, c, hw| (ConvGeometry::new(n, c, hw, hw, c, (3, 3), 1, 1).unwrap(), BLOCK);
        // 32-channel 16x16 layers (16 tiles, 147 KB each with F(4x4)) and 64-channel 8x8
        // ones (4 tiles, 590 KB): 36 of each come to 26 MB.
        let mut layers = vec![conv(1, 32, 16); 36];
        layers.extend(vec![conv(1, 64, 8); 36]);
        let mut algos: Vec<Algo> = layers.iter().map(|(g, _)| auto(g)).collect();
        assert!(algos.iter().all(|&a| a == f4));
        fit_in_cache(&layers, &mut algos);
        let total: usize = layers
            .iter()
            .zip(&algos)
            .map(|((g, b), &a)| derived_len(a, g, *b) * 4)
            .sum();
        assert!(total <= CACHED_PLAN_BYTES, "{total}");
        // The largest savings go first (the 64-channel layers, in order), and no more
        // layers move than it takes.
        assert!(algos[..36].iter().all(|&a| a == f4));
        let moved = algos[36..].iter().take_while(|&&a| a == f2).count();
        assert!(moved > 0 && algos[36 + moved..].iter().all(|&a| a == f4), "{algos:?}");
        let saving = (derived_len(f4, &layers[36].0, BLOCK) - derived_len(f2, &layers[36].0, BLOCK)) * 4;
        assert!(total + saving > CACHED_PLAN_BYTES, "one layer fewer would have done");

        // Under the budget, or with enough tiles (batch 8), nothing changes.
        let small = vec![conv(1, 64, 8); 4];
        let mut a = vec![f4; 4];
        fit_in_cache(&small, &mut a);
        assert_eq!(a, vec![f4; 4]);
        let batched = vec![conv(8, 64, 8); 72];
        let mut a = vec![f4; 72];
        fit_in_cache(&batched, &mut a);
        assert_eq!(a, vec![f4; 72]);
    }

    /// ResNet-50's strided 3x3 layers take the stride-2 transform where it measured
    /// faster, with 2x2 output tiles at 14x14 (4x4 tiles would cover 16x16): layer2's and
    /// layer3's at batch 1, all three at batch 8, not the 4-tile layer4's at batch 1 nor
    /// ResNet-20's 8x8 layer at batch 1; the training plan's forward keeps the direct
    /// kernel (it gathers the batch norm's moments as it stores).
    #[test]
    fn the_stride_2_transform_goes_where_it_measured_faster() {
        let s2 = |n, c, hw| ConvGeometry::new(n, c, hw, hw, c, (3, 3), 2, 1).unwrap();
        let want = |g: &ConvGeometry, tile: Option<WinogradTile>| {
            let expected = match tile {
                Some(t) if S2_TRANSFORM => Algo::WinogradS2(t),
                _ => Algo::Direct,
            };
            assert_eq!(auto(g), expected, "{g:?}");
            assert_eq!(crate::plan::train::forward_algo(g, BLOCK), Algo::Direct, "{g:?}");
        };
        let (f2, f4) = (Some(WinogradTile::F2), Some(WinogradTile::F4));
        want(&s2(1, 128, 56), f4);
        want(&s2(1, 256, 28), f2);
        want(&s2(1, 512, 14), None);
        want(&s2(8, 128, 56), f4);
        want(&s2(8, 256, 28), f2);
        want(&s2(8, 512, 14), f4);
        want(&ConvGeometry::new(1, 16, 32, 32, 32, (3, 3), 2, 1).unwrap(), f4);
        want(&ConvGeometry::new(1, 32, 16, 16, 64, (3, 3), 2, 1).unwrap(), None);
    }
}
