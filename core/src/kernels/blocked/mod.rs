//! Kernels on the channel-blocked layout (`crate::layout::Blocked`): each vector is one
//! pixel's block of channels, so every kernel here is generic over the vector type
//! [`Vector`](crate::simd::Vector) and its block is `V::LANES` (16 with AVX-512F, 8 with AVX2, 4 on wasm). The
//! plan runs them on [`crate::simd::F32xBlock`]; the tests also run them at 4 and 8 lanes
//! natively, which covers the wasm block on every build.
//!
//! Each kernel has a naive scalar twin in the same file that the tests compare it with.

pub mod amx;
pub mod bf16;
pub mod bf16_data_grad;
pub mod bf16_direct;
pub mod bf16_filter_grad;
pub mod bf16_tile_filter_grad;
pub mod data_grad;
pub mod dense;
pub mod direct;
pub mod epilogue;
pub mod filter_grad;
pub mod moments;
pub mod norm;
pub mod pool;
pub(crate) mod prefetch;
pub mod resample;
pub mod winograd;
pub mod winograd_filter_grad;

pub use epilogue::{BlockedEpilogue, Residual};
