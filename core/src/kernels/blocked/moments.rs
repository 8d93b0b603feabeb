//! Batch-norm moments gathered by the convolution that produces the values, so that
//! training does not read every convolution output back from memory for its statistics.
//!
//! Each task of a kernel call keeps, per padded output channel, shifted sums of what it
//! stored: a shift `k` (the first value it saw in that channel), `sum (y - k)`, `sum (y -
//! k)^2` and the count (shifted sums keep the variance exact for outputs far from zero).
//! [`combine`] merges the tasks' sums in task order with Chan, Golub & LeVeque's pairwise
//! update, so the moments depend only on the thread count, as the outputs do.

use crate::kernels::shared_out::SharedOut;
use crate::simd::Vector;
use std::marker::PhantomData;

/// Fields per padded channel of one task's record: shift, sum, sum of squares, count.
pub(crate) const FIELDS: usize = 4;

/// Where a convolution that gathers its output's batch-norm moments
/// ([`crate::kernels::blocked::direct::direct_conv_moments`]) puts them.
pub struct Moments<'m> {
    /// Per-task sums, grown on the first call and kept for the next.
    pub partials: &'m mut Vec<f64>,
    /// Mean and biased variance of every padded output channel.
    pub mean: &'m mut [f64],
    pub var: &'m mut [f64],
}

/// Mean and biased variance of the values summarised by `parts`, each `(k, sum (y - k),
/// sum (y - k)^2, count)`, merged in order; parts with a count of 0 are skipped, and no
/// values at all give `(0, 0)`.
pub(crate) fn combine(parts: impl Iterator<Item = (f64, f64, f64, f64)>) -> (f64, f64) {
    let (mut n, mut mu, mut m2) = (0f64, 0f64, 0f64);
    for (k, s, q, count) in parts {
        if count == 0.0 {
            continue;
        }
        let (mu_b, m2_b) = (k + s / count, (q - s * s / count).max(0.0));
        let total = n + count;
        let delta = mu_b - mu;
        mu += delta * count / total;
        m2 += m2_b + delta * delta * n * count / total;
        n = total;
    }
    (mu, if n > 0.0 { m2 / n } else { 0.0 })
}

/// The records of one call's tasks: `tasks` records of `channels` padded channels, each
/// `[k; channels] [sum; channels] [squares; channels] [count; channels]` in f64, and
/// where [`TaskMoments::finish`] puts the merged moments.
pub(crate) struct TaskMoments<'a> {
    ptr: *mut f64,
    channels: usize,
    tasks: usize,
    mean: &'a mut [f64],
    var: &'a mut [f64],
    _borrow: PhantomData<&'a mut [f64]>,
}

// SAFETY: each task touches only its own record (see `record`), and the value holds a
// unique borrow of the buffer for its lifetime.
unsafe impl Send for TaskMoments<'_> {}
// SAFETY: as above.
unsafe impl Sync for TaskMoments<'_> {}

impl<'a> TaskMoments<'a> {
    /// Zeroed records for `tasks` tasks in `m.partials` (grown as needed, kept for the
    /// next call); the moments start at zero, which is what a call with no output gives.
    pub(crate) fn new(m: Moments<'a>, tasks: usize, channels: usize) -> Self {
        assert!(
            m.mean.len() >= channels && m.var.len() >= channels,
            "moments: one per padded channel"
        );
        m.mean[..channels].fill(0.0);
        m.var[..channels].fill(0.0);
        m.partials.clear();
        m.partials.resize(tasks * channels * FIELDS, 0.0);
        TaskMoments {
            ptr: m.partials.as_mut_ptr(),
            channels,
            tasks,
            mean: m.mean,
            var: m.var,
            _borrow: PhantomData,
        }
    }

    /// Task `task`'s record. Callers guarantee that one task at a time holds a record:
    /// every kernel hands record `t` to the one run of its task `t`.
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn record(&self, task: usize) -> &mut [f64] {
        assert!(task < self.tasks, "moments: task index out of range");
        let len = self.channels * FIELDS;
        // SAFETY: in bounds (checked above); only task `task` uses this range meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(task * len), len) }
    }

    /// The mean and biased variance of every padded channel, the tasks merged in order.
    pub(crate) fn finish(self) {
        let c = self.channels;
        // SAFETY: the parallel loop that wrote the records has ended; this value held the
        // unique borrow of all `tasks * c * FIELDS` floats until now.
        let all = unsafe { std::slice::from_raw_parts(self.ptr, self.tasks * c * FIELDS) };
        for ch in 0..c {
            let parts = all
                .chunks_exact(c * FIELDS)
                .map(|r| (r[ch], r[c + ch], r[2 * c + ch], r[3 * c + ch]));
            (self.mean[ch], self.var[ch]) = combine(parts);
        }
    }
}

/// Adds the `count` vectors of channel block `block` stored contiguously in `out` from
/// `at` (a run of pixels of one image) to `record`, reading them back while they are still
/// in cache. The record's shift for the block is the first value it sees.
pub(crate) fn add_run<V: Vector>(out: &SharedOut, at: usize, count: usize, block: usize, record: &mut [f64]) {
    let l = V::LANES;
    let channels = record.len() / FIELDS;
    let lanes = block * l..(block + 1) * l;
    assert!(lanes.end <= channels && l <= 16, "moments: block out of range");
    if count == 0 {
        return;
    }
    let mut k = [0f32; 16];
    if record[3 * channels + lanes.start] == 0.0 {
        out.load::<V>(at).store(&mut k[..l]);
        for (r, &v) in record[lanes.clone()].iter_mut().zip(&k) {
            *r = v as f64;
        }
    } else {
        for (v, &r) in k.iter_mut().zip(&record[lanes.clone()]) {
            *v = r as f32;
        }
    }
    let shift = V::load(&k);
    // Four pairs of f32 sums (independent chains), flushed to f64 every 256 pixels.
    const FLUSH: usize = 256;
    let (mut sum, mut squares) = ([0f64; 16], [0f64; 16]);
    let mut p = 0;
    while p < count {
        let end = count.min(p + FLUSH);
        let (mut s, mut q) = ([V::ZERO; 4], [V::ZERO; 4]);
        while p + 4 <= end {
            for i in 0..4 {
                let d = out.load::<V>(at + (p + i) * l) - shift;
                s[i] = s[i] + d;
                q[i] = d.mul_add(d, q[i]);
            }
            p += 4;
        }
        while p < end {
            let d = out.load::<V>(at + p * l) - shift;
            s[0] = s[0] + d;
            q[0] = d.mul_add(d, q[0]);
            p += 1;
        }
        let (mut sv, mut qv) = ([0f32; 16], [0f32; 16]);
        ((s[0] + s[1]) + (s[2] + s[3])).store(&mut sv[..l]);
        ((q[0] + q[1]) + (q[2] + q[3])).store(&mut qv[..l]);
        for i in 0..l {
            sum[i] += sv[i] as f64;
            squares[i] += qv[i] as f64;
        }
    }
    for (i, lane) in lanes.enumerate() {
        record[channels + lane] += sum[i];
        record[2 * channels + lane] += squares[i];
        record[3 * channels + lane] += count as f64;
    }
}
