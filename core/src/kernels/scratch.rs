//! Per-thread scratch buffers, so kernels called from rayon tasks reuse memory across
//! calls instead of allocating in every training step.

use crate::aligned::AlignedVec;
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    static SCRATCH: RefCell<Kept> = const { RefCell::new(Kept(AlignedVec::new())) };
    /// The partial sums of gradient kernels called from this thread, kept between calls.
    static PARTIALS: RefCell<Kept> = const { RefCell::new(Kept(AlignedVec::new())) };
    /// Whole-call intermediates (a strided 1x1 convolution's subsampled input).
    static STAGING: RefCell<Kept> = const { RefCell::new(Kept(AlignedVec::new())) };
}

/// Bytes of every thread's kept buffers together.
static KEPT_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The bytes that the scratch buffers of every thread hold now (kept for reuse until
/// their thread ends): the scratch a run needs beyond its plan's arena and weights.
pub fn kept_bytes() -> usize {
    KEPT_BYTES.load(Ordering::Relaxed)
}

/// One thread's kept buffer, counted in [`kept_bytes`] while it lives.
struct Kept(AlignedVec<f32>);

impl Kept {
    /// The first `len` floats, the buffer grown (and counted) first where it is shorter.
    fn at_least(&mut self, len: usize) -> &mut [f32] {
        let had = self.0.len();
        if had < len {
            self.0.resize_zeroed(len);
            KEPT_BYTES.fetch_add((len - had) * std::mem::size_of::<f32>(), Ordering::Relaxed);
        }
        &mut self.0[..len]
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        KEPT_BYTES.fetch_sub(self.0.len() * std::mem::size_of::<f32>(), Ordering::Relaxed);
    }
}

/// Runs `f` with a scratch slice of `len` floats owned by this
/// thread. The contents are unspecified on entry. Not re-entrant: `f` must not call
/// `with_scratch` again (kernels never nest it).
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| f(cell.borrow_mut().at_least(len)))
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
    key: &'static std::thread::LocalKey<RefCell<Kept>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(buf.at_least(len)),
        Err(_) => f(&mut AlignedVec::zeroed(len)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a fresh thread's buffers add to [`kept_bytes`] while it grows them, and what
    /// the count loses once the thread has ended.
    fn grown_and_released() -> (i64, i64) {
        let (grown, inside) = std::thread::spawn(|| {
            let before = kept_bytes() as i64;
            with_scratch(1 << 20, |s| s.fill(1.0));
            with_staging(1 << 19, |s| s.fill(1.0));
            // Already that long: nothing more is kept.
            with_scratch(1 << 18, |s| assert!(s.iter().all(|&v| v == 1.0)));
            let inside = kept_bytes() as i64;
            (inside - before, inside)
        })
        .join()
        .unwrap();
        (grown, inside - kept_bytes() as i64)
    }

    #[test]
    fn kept_bytes_count_every_threads_buffers_while_they_live() {
        let bytes = ((1 << 20) + (1 << 19)) * 4;
        // Other tests' threads grow and drop theirs meanwhile: some try meets a quiet moment.
        let tries: Vec<(i64, i64)> = (0..50).map(|_| grown_and_released()).collect();
        assert!(
            tries.contains(&(bytes, bytes)),
            "no try grew and released exactly {bytes} bytes: {tries:?}"
        );
    }
}
