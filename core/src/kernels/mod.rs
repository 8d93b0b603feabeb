//! Pure functions on slices: no allocation of their own beyond per-thread scratch, each
//! with a naive twin that the tests compare it against.

pub mod blocked;
pub mod conv;
pub mod epilogue;
pub mod filter_grad;
pub mod gemm;
pub mod im2col;
pub mod norm;
pub mod peak;
pub mod plan;
pub mod pool;
pub mod scratch;
pub(crate) mod shared_out;
pub mod small_gemm;
pub mod split;
#[cfg(test)]
pub(crate) mod test_util;
pub mod winograd;
pub mod winograd_filter_grad;
