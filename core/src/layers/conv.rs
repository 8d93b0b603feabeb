//! `Conv2d`: a 2-D convolution with optional bias, computed by the kernels in
//! `kernels::conv` (im2col + GEMM; 1x1 stride-1 as a plain GEMM).

use super::{fit, join, Dims, Param, Slot, Visitor};
use crate::kernels::conv::{conv_backward_data, conv_backward_filter, conv_forward, FilterGradWorkspace};
use crate::kernels::im2col::ConvGeometry;
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

    /// Computes `self.out` from `x` and returns its dimensions.
    pub fn forward(&mut self, x: &[f32], input: Dims) -> Result<Dims> {
        let g = self.geometry(input)?;
        fit(&mut self.out, g.batch * g.out_image());
        conv_forward(
            &g,
            x,
            &self.weight.value,
            self.bias.as_ref().map(|b| &b.value[..]),
            &mut self.out,
        );
        self.geometry = Some(g);
        Ok(Dims::new(g.batch, g.out_channels, g.out_h, g.out_w))
    }

    /// Accumulates weight (and bias) gradients from `dy`; writes the input gradient to
    /// `dx` when asked. `x` must be the input of the last forward pass.
    pub fn backward(&mut self, x: &[f32], dy: &[f32], dx: Option<&mut Vec<f32>>) {
        let g = self.geometry.expect("Conv2d::backward called before forward");
        conv_backward_filter(
            &g,
            x,
            dy,
            &mut self.weight.grad,
            self.bias.as_mut().map(|b| &mut b.grad[..]),
            &mut self.workspace,
        );
        if let Some(dx) = dx {
            fit(dx, g.batch * g.in_image());
            conv_backward_data(&g, &self.weight.value, dy, dx);
        }
    }

    /// Visits `weight` and `bias`.
    pub fn visit(&mut self, prefix: &str, f: &mut Visitor) {
        f(&join(prefix, "weight"), Slot::Param(&mut self.weight));
        if let Some(b) = &mut self.bias {
            f(&join(prefix, "bias"), Slot::Param(b));
        }
    }
}
