//! Batch-norm sums gathered by the convolution that produces the values, so that
//! training does not read every convolution output back from memory for them: in the
//! forward pass the moments of the batch norm's input, in the backward pass the gradient
//! sums of a batch norm whose output gradient a backward-data stores.
//!
//! Each task of a kernel call keeps one record of sums per padded output channel. For
//! the moments: a shift `k` (the first value it saw in that channel), `sum (y - k)`,
//! `sum (y - k)^2` and the count (shifted sums keep the variance exact for outputs far
//! from zero); [`combine`] merges the tasks' sums in task order with Chan, Golub &
//! LeVeque's pairwise update. For the gradient sums: `sum dy` and `sum dy (z - mean)`,
//! added in task order. Either way the result depends only on the thread count, as the
//! outputs do.

use crate::kernels::blocked::norm::{self, FusedRelu};
use crate::kernels::shared_out::SharedOut;
use crate::simd::Vector;
use std::marker::PhantomData;

/// Fields per padded channel of one task's moments record: shift, sum, sum of squares,
/// count.
pub(crate) const FIELDS: usize = 4;
/// Fields per padded channel of one task's gradient-sums record: `sum dy`, `sum dy (z - mean)`.
pub(crate) const GRAD_FIELDS: usize = 2;

/// Where a convolution that gathers its output's batch-norm moments
/// ([`crate::kernels::blocked::direct::direct_conv_gather`]) puts them.
pub struct Moments<'m> {
    /// Per-task sums, grown on the first call and kept for the next.
    pub partials: &'m mut Vec<f64>,
    /// Mean and biased variance of every padded output channel.
    pub mean: &'m mut [f64],
    pub var: &'m mut [f64],
}

/// Where a backward-data convolution puts the sums of [`norm::grad_sums`] for the batch
/// norm whose output gradient `dy` it stores: `sum dy` and `sum dy (z - mean)` per
/// padded channel, `dy` masked by the batch norm's fused ReLU when given.
pub struct GradSums<'m> {
    /// The batch norm's input, laid out as the stored gradient, and its batch mean (one
    /// per padded channel).
    pub z: &'m [f32],
    pub mean: &'m [f32],
    pub relu: Option<FusedRelu<'m>>,
    /// Per-task sums, grown on the first call and kept for the next.
    pub partials: &'m mut Vec<f64>,
    pub sum_dy: &'m mut [f64],
    pub sum_dy_zc: &'m mut [f64],
}

/// What a convolution gathers from the values it stores, for the batch norm that reads
/// them next.
pub enum Gather<'m> {
    Moments(Moments<'m>),
    GradSums(GradSums<'m>),
}

impl Gather<'_> {
    /// Fields per padded channel of one task's record.
    pub(crate) fn fields(&self) -> usize {
        match self {
            Gather::Moments(_) => FIELDS,
            Gather::GradSums(_) => GRAD_FIELDS,
        }
    }

    /// Checks that the sums' destinations hold `channels` padded channels, and for the
    /// gradient sums that `z` has `len` values (the stored output's).
    pub(crate) fn check(&self, channels: usize, len: usize) {
        match self {
            Gather::Moments(m) => assert!(
                m.mean.len() >= channels && m.var.len() >= channels,
                "moments: one per padded channel"
            ),
            Gather::GradSums(s) => {
                assert_eq!(s.z.len(), len, "gradient sums: z must have the output's length");
                assert!(
                    s.mean.len() >= channels && s.sum_dy.len() >= channels && s.sum_dy_zc.len() >= channels,
                    "gradient sums: one per padded channel"
                );
                if let Some(r) = s.relu {
                    assert!(
                        r.scale.len() >= channels && r.shift.len() >= channels,
                        "gradient sums: one scale and shift per padded channel"
                    );
                }
            }
        }
    }
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

/// Fills `kind`'s destinations from per-part records, parts taken in order: `field(part,
/// f, channel)` reads field `f` of a part's record.
pub(crate) fn finish_parts(kind: Kind, channels: usize, parts: usize, field: impl Fn(usize, usize, usize) -> f64) {
    match kind {
        Kind::Moments { mean, var } => {
            for ch in 0..channels {
                let all = (0..parts).map(|p| (field(p, 0, ch), field(p, 1, ch), field(p, 2, ch), field(p, 3, ch)));
                (mean[ch], var[ch]) = combine(all);
            }
        }
        Kind::GradSums { sum_dy, sum_dy_zc, .. } => {
            for ch in 0..channels {
                sum_dy[ch] = (0..parts).map(|p| field(p, 0, ch)).sum();
                sum_dy_zc[ch] = (0..parts).map(|p| field(p, 1, ch)).sum();
            }
        }
    }
}

/// The records of one call's tasks: `tasks` records of `channels` padded channels, each
/// field by field (`[field 0; channels] [field 1; channels] ..`) in f64, and the
/// [`Gather`] that [`TaskGather::finish`] fills from them.
pub(crate) struct TaskGather<'a> {
    ptr: *mut f64,
    channels: usize,
    tasks: usize,
    fields: usize,
    /// The gather, its `partials` lent to the records.
    kind: Kind<'a>,
    _borrow: PhantomData<&'a mut [f64]>,
}

/// A [`Gather`] without its record buffer: what the records are read with and where
/// their result goes.
pub(crate) enum Kind<'a> {
    Moments {
        mean: &'a mut [f64],
        var: &'a mut [f64],
    },
    GradSums {
        z: &'a [f32],
        mean: &'a [f32],
        relu: Option<FusedRelu<'a>>,
        sum_dy: &'a mut [f64],
        sum_dy_zc: &'a mut [f64],
    },
}

impl<'a> Gather<'a> {
    /// The record buffer and the rest, after [`Gather::check`] for `channels` padded
    /// channels and an output of `len` values; the destinations are zeroed (what a call
    /// with no output gives).
    pub(crate) fn split(self, channels: usize, len: usize) -> (&'a mut Vec<f64>, Kind<'a>) {
        self.check(channels, len);
        match self {
            Gather::Moments(m) => {
                m.mean[..channels].fill(0.0);
                m.var[..channels].fill(0.0);
                (
                    m.partials,
                    Kind::Moments {
                        mean: m.mean,
                        var: m.var,
                    },
                )
            }
            Gather::GradSums(s) => {
                s.sum_dy[..channels].fill(0.0);
                s.sum_dy_zc[..channels].fill(0.0);
                let kind = Kind::GradSums {
                    z: s.z,
                    mean: s.mean,
                    relu: s.relu,
                    sum_dy: s.sum_dy,
                    sum_dy_zc: s.sum_dy_zc,
                };
                (s.partials, kind)
            }
        }
    }
}

// SAFETY: each task touches only its own record (see `record`), and the value holds a
// unique borrow of the buffer for its lifetime; the rest is read only until `finish`.
unsafe impl Send for TaskGather<'_> {}
// SAFETY: as above.
unsafe impl Sync for TaskGather<'_> {}

impl<'a> TaskGather<'a> {
    /// Zeroed records for `tasks` tasks in the gather's `partials` (grown as needed, kept
    /// for the next call). `len` is the output's length (see [`Gather::split`]).
    pub(crate) fn new(gather: Gather<'a>, tasks: usize, channels: usize, len: usize) -> Self {
        let fields = gather.fields();
        let (partials, kind) = gather.split(channels, len);
        partials.clear();
        partials.resize(tasks * channels * fields, 0.0);
        TaskGather {
            ptr: partials.as_mut_ptr(),
            channels,
            tasks,
            fields,
            kind,
            _borrow: PhantomData,
        }
    }

    /// Task `task`'s record. Callers guarantee that one task at a time holds a record:
    /// every kernel hands record `t` to the one run of its task `t`.
    #[allow(clippy::mut_from_ref)]
    fn record(&self, task: usize) -> &mut [f64] {
        assert!(task < self.tasks, "gather: task index out of range");
        let len = self.channels * self.fields;
        // SAFETY: in bounds (checked above); only task `task` uses this range meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(task * len), len) }
    }

    /// Adds to task `task`'s record the `count` vectors of channel block `block` stored
    /// contiguously in `out` from `at` (a run of pixels of one image), reading them back
    /// while they are still in cache.
    pub(crate) fn add_run<V: Vector>(&self, task: usize, out: &SharedOut, at: usize, count: usize, block: usize) {
        let record = self.record(task);
        match &self.kind {
            Kind::Moments { .. } => add_moments_run::<V>(out, at, count, block, record),
            Kind::GradSums { z, mean, relu, .. } => add_grad_run::<V>(out, (z, mean, *relu), at, count, block, record),
        }
    }

    /// Fills the gather's destinations, the tasks' records merged in order.
    pub(crate) fn finish(self) {
        let (c, fields) = (self.channels, self.fields);
        // SAFETY: the parallel loop that wrote the records has ended; this value held the
        // unique borrow of all `tasks * c * fields` floats until now.
        let all = unsafe { std::slice::from_raw_parts(self.ptr, self.tasks * c * fields) };
        finish_parts(self.kind, c, self.tasks, |t, f, ch| all[(t * fields + f) * c + ch]);
    }
}

/// Adds the `count` vectors of channel block `block` stored contiguously in `out` from
/// `at` to a moments `record`. The record's shift for the block is the first value it sees.
fn add_moments_run<V: Vector>(out: &SharedOut, at: usize, count: usize, block: usize, record: &mut [f64]) {
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

/// Adds the `count` gradient vectors of channel block `block` stored contiguously in
/// `out` from `at` to a gradient-sums `record`, with `z` read at the same places.
fn add_grad_run<V: Vector>(
    out: &SharedOut,
    (z, mean, relu): (&[f32], &[f32], Option<FusedRelu>),
    at: usize,
    count: usize,
    block: usize,
    record: &mut [f64],
) {
    let l = V::LANES;
    let channels = record.len() / GRAD_FIELDS;
    let lanes = block * l..(block + 1) * l;
    assert!(lanes.end <= channels && l <= 16, "gradient sums: block out of range");
    assert!(at + count * l <= z.len(), "gradient sums: run out of range");
    let m = V::load(&mean[lanes.clone()]);
    let r = norm::relu_block::<V>(relu, block);
    // Two pairs of f32 sums (independent chains), flushed to f64 every 256 pixels.
    const FLUSH: usize = 256;
    let (mut sum, mut cross) = ([0f64; 16], [0f64; 16]);
    let mut p = 0;
    while p < count {
        let end = count.min(p + FLUSH);
        let (mut s, mut q) = ([V::ZERO; 2], [V::ZERO; 2]);
        while p < end {
            let i = p & 1;
            let zv = V::load(&z[at + p * l..]);
            let d = norm::masked(out.load::<V>(at + p * l), zv, r);
            s[i] = s[i] + d;
            q[i] = d.mul_add(zv - m, q[i]);
            p += 1;
        }
        let (mut sv, mut qv) = ([0f32; 16], [0f32; 16]);
        (s[0] + s[1]).store(&mut sv[..l]);
        (q[0] + q[1]).store(&mut qv[..l]);
        for i in 0..l {
            sum[i] += sv[i] as f64;
            cross[i] += qv[i] as f64;
        }
    }
    for (i, lane) in lanes.enumerate() {
        record[lane] += sum[i];
        record[channels + lane] += cross[i];
    }
}

/// Checks gathered gradient sums against [`norm::grad_sums`] over the stored gradient
/// `dy` (shape `shape`), within 1e-5 of each channel's sum of absolute terms.
#[cfg(test)]
pub(crate) fn assert_grad_sums<V: Vector>(
    shape: crate::layout::Blocked,
    dy: &[f32],
    (z, mean, relu): (&[f32], &[f32], Option<FusedRelu>),
    (sum_dy, sum_dy_zc): (&[f64], &[f64]),
    what: &str,
) {
    let channels = shape.padded_channels();
    let (mut want, mut want_zc) = (vec![0f64; channels], vec![0f64; channels]);
    norm::grad_sums::<V>(shape, dy, relu, z, mean, &mut Vec::new(), &mut want, &mut want_zc);
    // The scale of each sum: the same sums of absolute values.
    let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
    let zero = vec![0f32; channels];
    let (mut scale, mut scale_zc) = (vec![0f64; channels], vec![0f64; channels]);
    let (dy_abs, z_abs) = (abs(dy), abs(z));
    norm::grad_sums::<V>(
        shape,
        &dy_abs,
        None,
        &z_abs,
        &zero,
        &mut Vec::new(),
        &mut scale,
        &mut scale_zc,
    );
    for c in 0..shape.c {
        let m = mean[c].abs() as f64;
        let tol_zc = 1e-5 * (scale_zc[c] + m * scale[c]).max(1e-6);
        let tol = 1e-5 * scale[c].max(1e-6);
        assert!(
            (sum_dy[c] - want[c]).abs() <= tol,
            "{what}, channel {c}: sum dy {} vs {}",
            sum_dy[c],
            want[c]
        );
        assert!(
            (sum_dy_zc[c] - want_zc[c]).abs() <= tol_zc,
            "{what}, channel {c}: sum dy (z - mean) {} vs {}",
            sum_dy_zc[c],
            want_zc[c]
        );
    }
}
