//! A 2-D convolution with optional bias, NCHW: [`forward`] and [`backward`]. The
//! algorithm of each pass comes from `kernels::plan` ([`ConvAlgos::choose`]): im2col +
//! GEMM (`kernels::conv`; 1x1 stride-1 as a plain GEMM) or Winograd
//! (`kernels::winograd`, filters transformed on every call) for 3x3 stride-1
//! convolutions; backward-filter is im2col + GEMM, the unpacked direct kernel
//! (`kernels::filter_grad`) or Winograd (`kernels::winograd_filter_grad`).

use crate::kernels::conv::{conv_backward_data, conv_backward_filter, conv_forward_fused, FilterGradWorkspace};
use crate::kernels::epilogue::Epilogue;
use crate::kernels::filter_grad::filter_grad_direct;
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::plan::{choose, choose_filter, ConvAlgo, FilterAlgo, Pass};
use crate::kernels::winograd::{
    transform_filters_into, winograd_backward_data_with, winograd_forward_fused, WinogradFilters, WinogradTile,
};
use crate::kernels::winograd_filter_grad::winograd_backward_filter;

fn empty_filters(tile: WinogradTile) -> WinogradFilters {
    WinogradFilters {
        tile,
        k: 0,
        c: 0,
        data: Vec::new(),
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
