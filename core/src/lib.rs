//! `resnet-core`: every number of the resnet engine is computed here.
//!
//! Layers with explicit forward and backward passes (`layers`), the kernels they call
//! (`kernels`), the ResNet zoo of He et al. 2015 (`model`) and the training loop
//! (`train`). NCHW `f32` at every public boundary. Builds for `wasm32-unknown-unknown`.

pub mod aligned;
pub mod classifier;
pub mod data;
pub mod error;
pub mod io;
pub mod kernels;
pub mod layers;
pub mod layout;
pub mod model;
pub mod params;
pub mod plan;
pub mod rng;
pub mod simd;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};
pub use params::Params;
pub use tensor::Tensor;
