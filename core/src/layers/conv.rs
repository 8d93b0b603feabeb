//! `Conv2d`: a 2-D convolution with optional bias. The algorithm for each pass comes
//! from `kernels::plan`: im2col + GEMM (`kernels::conv`; 1x1 stride-1 as a plain GEMM)
//! or Winograd (`kernels::winograd`) for 3x3 stride-1 convolutions. Backward-filter is
//! im2col + GEMM or the unpacked direct kernel (`kernels::filter_grad`), also chosen
//! by the plan.

use super::{fit, join, Dims, Mode, Param, Slot, Visitor};
use crate::kernels::conv::{conv_backward_data, conv_backward_filter, conv_forward_fused, FilterGradWorkspace};
use crate::kernels::epilogue::Epilogue;
use crate::kernels::filter_grad::filter_grad_direct;
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::plan::{choose, choose_filter, ConvAlgo, FilterAlgo, Pass};
use crate::kernels::winograd::{
    transform_filters_into, winograd_backward_data_with, winograd_forward_fused, WinogradFilters, WinogradTile,
};
use crate::kernels::winograd_filter_grad::winograd_backward_filter;
use crate::rng::Rng;
use crate::Result;

/// A convolution layer with square kernel, stride and zero padding.
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// `[out_channels, in_channels, kernel, kernel]`, PyTorch's layout.
    pub weight: Param,
    pub bias: Option<Param>,
    /// The output of the last forward pass.
    pub out: Vec<f32>,
    geometry: Option<ConvGeometry>,
    workspace: FilterGradWorkspace,
    /// Forward Winograd filters and the weight generation they were made from.
    winograd: Option<(u64, WinogradFilters)>,
    /// Weights with a batch norm folded in, for inference.
    folded: Folded,
    /// Rotated filters for backward-data, rebuilt on every call.
    winograd_rotated: Option<WinogradFilters>,
}

/// The weights scaled per output channel by a following batch norm, the bias it implies,
/// and what they were made from, so that inference rebuilds them only when that changes.
#[derive(Clone, Debug, Default)]
struct Folded {
    /// The weight generation and the batch-norm scale the weights were made from.
    source: Option<(u64, Vec<f32>)>,
    /// Bumped whenever `weight` is rebuilt; keys the Winograd filters made from it.
    version: u64,
    weight: Vec<f32>,
    bias: Vec<f32>,
    winograd: Option<(u64, WinogradFilters)>,
}

fn empty_filters(tile: WinogradTile) -> WinogradFilters {
    WinogradFilters {
        tile,
        k: 0,
        c: 0,
        data: Vec::new(),
    }
}

impl Conv2d {
    /// A convolution with He (Kaiming normal, fan-out, as torchvision) weights and zero bias.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        rng: &mut Rng,
    ) -> Self {
        let fan_out = (out_channels * kernel * kernel) as f64;
        let std = (2.0 / fan_out).sqrt();
        let n = out_channels * in_channels * kernel * kernel;
        let w = (0..n).map(|_| (rng.normal() * std) as f32).collect();
        Conv2d {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            weight: Param::new(vec![out_channels, in_channels, kernel, kernel], w),
            bias: bias.then(|| Param::filled(vec![out_channels], 0.0)),
            out: Vec::new(),
            geometry: None,
            workspace: FilterGradWorkspace::default(),
            winograd: None,
            folded: Folded::default(),
            winograd_rotated: None,
        }
    }

    /// The geometry of this layer applied to `input`.
    pub fn geometry(&self, input: Dims) -> Result<ConvGeometry> {
        if input.c != self.in_channels {
            return Err(crate::Error::Shape(format!(
                "convolution expects {} input channels, found {}",
                self.in_channels, input.c
            )));
        }
        ConvGeometry::new(
            input.n,
            input.c,
            input.h,
            input.w,
            self.out_channels,
            (self.kernel, self.kernel),
            self.stride,
            self.padding,
        )
    }

    /// Output dimensions for `input`.
    pub fn out_dims(&self, input: Dims) -> Result<Dims> {
        let g = self.geometry(input)?;
        Ok(Dims::new(input.n, self.out_channels, g.out_h, g.out_w))
    }

    /// Multiply-adds per image for an `h x w` input.
    pub fn macs_per_image(&self, input: Dims) -> Result<u64> {
        let g = self.geometry(Dims { n: 1, ..input })?;
        Ok(g.macs())
    }

    /// Computes `self.out` from `x` and returns its dimensions. In `Mode::Eval` the
    /// Winograd filters are cached across calls (rebuilt when the weight is touched); in
    /// `Mode::Train` they are rebuilt on every call, since weights change every step.
    pub fn forward(&mut self, x: &[f32], input: Dims, mode: Mode) -> Result<Dims> {
        let g = self.geometry(input)?;
        let epilogue = Epilogue::bias(self.bias.as_ref().map(|b| &b.value[..]));
        let key = (mode == Mode::Eval).then_some(self.weight.generation);
        run_forward(
            &g,
            x,
            &self.weight.value,
            &mut self.winograd,
            key,
            &epilogue,
            &mut self.out,
        );
        self.geometry = Some(g);
        Ok(Dims::new(g.batch, g.out_channels, g.out_h, g.out_w))
    }

    /// Inference through a following batch norm given as `y = scale * x + shift` per
    /// output channel: computes `relu?(bn(conv(x)) + residual)` into `self.out` with the
    /// scale folded into the weights (cached until the weight or scale changes) and the
    /// rest done as each value is stored. Not for training: backward needs the unfolded
    /// forward.
    pub fn forward_folded(
        &mut self,
        x: &[f32],
        input: Dims,
        scale: &[f32],
        shift: &[f32],
        residual: Option<&[f32]>,
        relu: bool,
    ) -> Result<Dims> {
        let g = self.geometry(input)?;
        let k = self.out_channels;
        if scale.len() != k || shift.len() != k {
            return Err(crate::Error::Shape(format!(
                "folding a batch norm of {} channels into a convolution of {k} output channels",
                scale.len()
            )));
        }
        let f = &mut self.folded;
        let fresh = matches!(&f.source, Some((gen, s)) if *gen == self.weight.generation && s == scale);
        if !fresh {
            let per_k = self.weight.value.len() / k;
            fit(&mut f.weight, self.weight.value.len());
            for ((dst, src), &s) in f
                .weight
                .chunks_mut(per_k)
                .zip(self.weight.value.chunks(per_k))
                .zip(scale)
            {
                dst.iter_mut().zip(src).for_each(|(d, &w)| *d = w * s);
            }
            f.source = Some((self.weight.generation, scale.to_vec()));
            f.version += 1;
        }
        fit(&mut f.bias, k);
        for (i, b) in f.bias.iter_mut().enumerate() {
            *b = shift[i] + self.bias.as_ref().map_or(0.0, |cb| scale[i] * cb.value[i]);
        }
        let epilogue = Epilogue {
            bias: Some(&f.bias),
            residual,
            relu,
        };
        run_forward(
            &g,
            x,
            &f.weight,
            &mut f.winograd,
            Some(f.version),
            &epilogue,
            &mut self.out,
        );
        self.geometry = Some(g);
        Ok(Dims::new(g.batch, g.out_channels, g.out_h, g.out_w))
    }

    /// Accumulates weight (and bias) gradients from `dy`; writes the input gradient to
    /// `dx` when asked. `x` must be the input of the last forward pass.
    pub fn backward(&mut self, x: &[f32], dy: &[f32], dx: Option<&mut Vec<f32>>) {
        let g = self.geometry.expect("Conv2d::backward called before forward");
        let (dw, db, ws) = (
            &mut self.weight.grad,
            self.bias.as_mut().map(|b| &mut b.grad[..]),
            &mut self.workspace,
        );
        match choose_filter(&g) {
            FilterAlgo::Gemm => conv_backward_filter(&g, x, dy, dw, db, ws),
            FilterAlgo::Direct => filter_grad_direct(&g, x, dy, dw, db, ws),
            FilterAlgo::Winograd(tile) => winograd_backward_filter(&g, tile, x, dy, dw, db, ws),
        }
        if let Some(dx) = dx {
            fit(dx, g.batch * g.in_image());
            match choose(&g, Pass::BackwardData) {
                ConvAlgo::Gemm => conv_backward_data(&g, &self.weight.value, dy, dx),
                ConvAlgo::Winograd(tile) => {
                    let f = self.winograd_rotated.get_or_insert_with(|| empty_filters(tile));
                    winograd_backward_data_with(&g, tile, f, &self.weight.value, dy, dx);
                }
            }
        }
    }

    /// Visits `weight` and `bias`. The visitor may change them, so the weight counts as
    /// touched.
    pub fn visit(&mut self, prefix: &str, f: &mut Visitor) {
        self.weight.touch();
        f(&join(prefix, "weight"), Slot::Param(&mut self.weight));
        if let Some(b) = &mut self.bias {
            f(&join(prefix, "bias"), Slot::Param(b));
        }
    }
}

/// `out = epilogue(conv(x, weight))` by the planned algorithm. Winograd filters come from
/// `cache` when it was made for `key` (`None`: always rebuild, as in training).
fn run_forward(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    cache: &mut Option<(u64, WinogradFilters)>,
    key: Option<u64>,
    epilogue: &Epilogue,
    out: &mut Vec<f32>,
) {
    fit(out, g.batch * g.out_image());
    match choose(g, Pass::Forward) {
        ConvAlgo::Gemm => conv_forward_fused(g, x, weight, epilogue, out),
        ConvAlgo::Winograd(tile) => {
            let cached = cache.get_or_insert_with(|| (u64::MAX, empty_filters(tile)));
            if key.is_none_or(|k| k != cached.0) || cached.1.tile != tile {
                transform_filters_into(tile, weight, g.out_channels, g.in_channels, false, &mut cached.1);
                cached.0 = key.unwrap_or(u64::MAX);
            }
            winograd_forward_fused(g, tile, x, &cached.1, epilogue, out);
        }
    }
}

/// The algorithms of a convolution's three passes, as `kernels::plan` chooses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvAlgos {
    pub forward: ConvAlgo,
    pub backward_data: ConvAlgo,
    pub backward_filter: FilterAlgo,
}

impl ConvAlgos {
    /// The choice of `kernels::plan` for each pass of `g` under the current policy.
    pub fn choose(g: &ConvGeometry) -> Self {
        ConvAlgos {
            forward: choose(g, Pass::Forward),
            backward_data: choose(g, Pass::BackwardData),
            backward_filter: choose_filter(g),
        }
    }
}

/// What the passes of a convolution reuse from call to call: the Winograd filters of the
/// forward pass and the rotated ones of backward-data (both rebuilt on every call, since
/// training changes the weights every step) and backward-filter's partial sums.
#[derive(Clone, Debug)]
pub struct ConvWorkspace {
    filters: WinogradFilters,
    rotated: WinogradFilters,
    filter_grad: FilterGradWorkspace,
}

impl Default for ConvWorkspace {
    fn default() -> Self {
        ConvWorkspace {
            filters: empty_filters(WinogradTile::F4),
            rotated: empty_filters(WinogradTile::F4),
            filter_grad: FilterGradWorkspace::default(),
        }
    }
}

/// `y = conv(x, w) + b` (NCHW, PyTorch's `[K, C, kh, kw]` weights) by `algo`.
pub fn forward(
    g: &ConvGeometry,
    algo: ConvAlgo,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    ws: &mut ConvWorkspace,
    y: &mut [f32],
) {
    let epilogue = Epilogue::bias(b);
    match algo {
        ConvAlgo::Winograd(tile) if crate::kernels::plan::winograd_applies(g) => {
            transform_filters_into(tile, w, g.out_channels, g.in_channels, false, &mut ws.filters);
            winograd_forward_fused(g, tile, x, &ws.filters, &epilogue, y);
        }
        _ => conv_forward_fused(g, x, w, &epilogue, y),
    }
}

/// Accumulates `dw += dY (*) x` (and `db += sum dY`) by `algos.backward_filter`, and
/// writes `dx = conv^T(dy, w)` by `algos.backward_data` when asked. `x` is the forward
/// pass's input.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    g: &ConvGeometry,
    algos: ConvAlgos,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dx: Option<&mut [f32]>,
    ws: &mut ConvWorkspace,
) {
    let fws = &mut ws.filter_grad;
    match algos.backward_filter {
        FilterAlgo::Gemm => conv_backward_filter(g, x, dy, dw, db, fws),
        FilterAlgo::Direct => filter_grad_direct(g, x, dy, dw, db, fws),
        FilterAlgo::Winograd(tile) => winograd_backward_filter(g, tile, x, dy, dw, db, fws),
    }
    if let Some(dx) = dx {
        match algos.backward_data {
            ConvAlgo::Winograd(tile) if crate::kernels::plan::winograd_applies(g) => {
                winograd_backward_data_with(g, tile, &mut ws.rotated, w, dy, dx)
            }
            _ => conv_backward_data(g, w, dy, dx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::conv_forward_naive;

    #[test]
    fn cached_winograd_filters_follow_weight_changes() {
        let mut rng = Rng::new(4);
        let mut conv = Conv2d::new(8, 8, 3, 1, 1, false, &mut rng);
        let dims = Dims::new(2, 8, 9, 9);
        let x: Vec<f32> = (0..dims.len()).map(|_| rng.normal() as f32).collect();
        let check = |conv: &mut Conv2d| {
            conv.forward(&x, dims, Mode::Eval).unwrap();
            let g = conv.geometry(dims).unwrap();
            let mut want = vec![0.0; conv.out.len()];
            conv_forward_naive(&g, &x, &conv.weight.value, None, &mut want);
            let err = conv
                .out
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-3, "max error {err}");
        };
        check(&mut conv);
        // Changing the weights through `visit` (as optimisers and loaders do) invalidates the cache.
        conv.visit("", &mut |_, slot| {
            if let Slot::Param(p) = slot {
                p.value.iter_mut().for_each(|v| *v *= -2.0);
            }
        });
        check(&mut conv);
    }
}
