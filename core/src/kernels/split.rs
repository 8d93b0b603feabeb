//! The one rule by which the blocked kernels cut a call into rayon tasks: a fixed number
//! of contiguous, nearly equal parts, decided by the unit count and the thread count
//! alone. Fixed chunks (never work-stealing order) keep reductions over parts
//! deterministic for a given thread count.

use rayon::prelude::*;
use std::ops::Range;

/// Tasks per thread. One: each thread takes one contiguous part and the threads meet once.
/// Two (slack for a thread slowed by another tenant) measured no better at large batches
/// and worse at batch 1, where a call is tens of microseconds and every extra task a
/// handover (2 threads, interleaved, ms, one against two: resnet20 b1 0.12-0.13 against
/// 0.14-0.15, resnet50 b1 15.7-16.2 against 16.1-16.5, resnet20 b128 and resnet50 b8
/// inference and resnet20 b128 and resnet50 b16 training within 1 %; in Chromium, the
/// threaded wasm build's resnet20 b1 0.54-0.55 against 0.57-0.67).
pub const TASKS_PER_THREAD: usize = 1;

/// How many tasks to cut `units` independent units of work into.
pub fn parts(units: usize) -> usize {
    (rayon::current_num_threads() * TASKS_PER_THREAD).clamp(1, units.max(1))
}

/// `0..total` cut into `parts` contiguous ranges whose sizes differ by at most one;
/// empty ranges are left out.
pub fn ranges(total: usize, parts: usize) -> impl Iterator<Item = Range<usize>> + Clone {
    let parts = parts.clamp(1, total.max(1));
    (0..parts)
        .map(move |p| (p * total / parts)..((p + 1) * total / parts))
        .filter(|r| !r.is_empty())
}

/// Runs `f` on each of the [`parts`] ranges of `0..units` (as [`ranges`] cuts them), as
/// parallel rayon tasks.
pub fn for_each_range(units: usize, f: impl Fn(Range<usize>) + Send + Sync) {
    let parts = parts(units);
    (0..parts).into_par_iter().for_each(|task| {
        if let Some(range) = ranges(units, parts).nth(task) {
            f(range);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_everything_once_in_order() {
        for total in [0, 1, 5, 7, 64, 1000] {
            for parts in [1, 2, 3, 8, 2000] {
                let rs: Vec<_> = ranges(total, parts).collect();
                let mut next = 0;
                for r in &rs {
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, total);
                if let (Some(min), Some(max)) = (rs.iter().map(|r| r.len()).min(), rs.iter().map(|r| r.len()).max()) {
                    assert!(max - min <= 1, "{total} in {parts}: {rs:?}");
                }
            }
        }
    }
}
