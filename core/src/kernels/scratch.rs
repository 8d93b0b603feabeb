//! Per-thread scratch buffers, so kernels called from rayon tasks reuse memory across
//! calls instead of allocating in every training step.

use crate::aligned::AlignedVec;
use std::cell::RefCell;

thread_local! {
    static SCRATCH: RefCell<AlignedVec<f32>> = const { RefCell::new(AlignedVec::new()) };
    /// The partial sums of gradient kernels called from this thread, kept between calls.
    static PARTIALS: RefCell<AlignedVec<f32>> = const { RefCell::new(AlignedVec::new()) };
    /// Whole-call intermediates (a strided 1x1 convolution's subsampled input).
    static STAGING: RefCell<AlignedVec<f32>> = const { RefCell::new(AlignedVec::new()) };
}

/// Runs `f` with a scratch slice of `len` floats owned by this
/// thread. The contents are unspecified on entry. Not re-entrant: `f` must not call
/// `with_scratch` again (kernels never nest it).
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < len {
            buf.resize_zeroed(len);
        }
        f(&mut buf[..len])
    })
}

/// Runs `f` on `len` floats for a call's partial sums (contents unspecified): this
/// thread's buffer, grown once, so that training steps do not allocate; a fresh one when
/// a call on this thread already holds it (a call made from inside another's rayon
/// wait). Unlike [`with_scratch`], `f` may hand the buffer to rayon tasks.
pub fn with_partials<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    grown_or_fresh(&PARTIALS, len, f)
}

/// Runs `f` on `len` floats for an intermediate tensor of one call (contents
/// unspecified), kept apart from [`with_partials`] so that the call may also use that:
/// this thread's buffer, grown once; a fresh one when a call on this thread holds it.
/// `f` may hand the buffer to rayon tasks.
pub fn with_staging<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    grown_or_fresh(&STAGING, len, f)
}

fn grown_or_fresh<R>(
    key: &'static std::thread::LocalKey<RefCell<AlignedVec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize_zeroed(len);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut AlignedVec::zeroed(len)),
    })
}
