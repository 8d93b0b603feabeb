//! Per-thread scratch buffers, so kernels called from rayon tasks reuse memory across
//! calls instead of allocating in every training step.

use std::cell::RefCell;

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a scratch slice of `len` floats owned by this
/// thread. The contents are unspecified on entry. Not re-entrant: `f` must not call
/// `with_scratch` again (kernels never nest it).
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        f(&mut buf[..len])
    })
}
