//! Software prefetch of the next weights into L2 while the current ones are in use: the
//! kernels whose weights do not stay in the caches (a network at batch 1 streams them
//! from memory: the direct kernel's packed weights, the Winograd products' transformed
//! filters) cut the next pass's weights into slices, one per micro-kernel call, and each
//! call issues its slice a few lines per step of its reduction, so that the trip from
//! memory overlaps the FMAs instead of stalling the next pass's first call.

use std::ops::Range;

/// Floats per 64-byte cache line: the prefetch step.
pub(crate) const PF_LINE: usize = 16;

/// The cache lines one micro-kernel call prefetches: `next .. end`, `per_step` lines
/// per step of its loop. The addresses are only prefetched, never dereferenced.
pub(crate) struct Prefetch {
    next: *const f32,
    end: *const f32,
    per_step: usize,
}

/// What a micro-kernel does once per step of its reduction: issue some prefetches
/// ([`Prefetch`]) or nothing ([`NoPrefetch`], whose kernels compile to the code they
/// had without any).
pub(crate) trait Step {
    fn step(&mut self);
}

/// Prefetches nothing.
pub(crate) struct NoPrefetch;

impl Step for NoPrefetch {
    #[inline(always)]
    fn step(&mut self) {}
}

impl Step for Prefetch {
    /// Issues the next `per_step` lines of this call's slice.
    #[inline(always)]
    fn step(&mut self) {
        for _ in 0..self.per_step {
            if self.next >= self.end {
                return;
            }
            crate::simd::prefetch_l2(self.next);
            self.next = self.next.wrapping_add(PF_LINE);
        }
    }
}

/// The slices of the floats `next` of `data` for `calls` calls of `steps` steps each:
/// call `i` of them prefetches [`Slices::call`]`(i)`.
pub(crate) struct Slices {
    base: *const f32,
    len: usize,
    per_call: usize,
    per_step: usize,
}

impl Slices {
    /// `next` (clamped to `data`) cut evenly over `calls` calls of `steps` steps.
    pub(crate) fn new(data: &[f32], next: Range<usize>, calls: usize, steps: usize) -> Slices {
        let next = next.start.min(data.len())..next.end.min(data.len());
        let lines = next.len().div_ceil(PF_LINE);
        let per_call = lines.div_ceil(calls.max(1));
        Slices {
            base: data.as_ptr().wrapping_add(next.start),
            len: next.len(),
            per_call,
            per_step: per_call.div_ceil(steps.max(1)),
        }
    }

    /// The lines call `i` prefetches.
    pub(crate) fn call(&self, i: usize) -> Prefetch {
        let at = |i: usize| self.base.wrapping_add((i * self.per_call * PF_LINE).min(self.len));
        Prefetch {
            next: at(i),
            end: at(i + 1),
            per_step: self.per_step,
        }
    }
}
