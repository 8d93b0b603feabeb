//! Softmax cross-entropy, averaged over the batch, with its gradient.

use crate::{Error, Result};

/// Loss, gradient and top-1 hits of one batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossOutput {
    /// Mean cross-entropy over the batch.
    pub loss: f64,
    /// Rows whose largest logit is the label.
    pub correct: usize,
}

/// Computes the mean softmax cross-entropy of `logits` (`N x classes`) against `labels`
/// and writes `dlogits = (softmax - onehot) / N`. Errors on a label out of range.
pub fn softmax_cross_entropy(
    logits: &[f32],
    labels: &[u32],
    classes: usize,
    dlogits: &mut [f32],
) -> Result<LossOutput> {
    let n = labels.len();
    if logits.len() != n * classes || dlogits.len() != logits.len() {
        return Err(Error::Shape(format!(
            "cross-entropy: {n} labels and {classes} classes need {} logits, found {}",
            n * classes,
            logits.len()
        )));
    }
    if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
        return Err(Error::Label { label, index, classes });
    }
    let mut total = 0f64;
    let mut correct = 0;
    let inv_n = 1.0 / n.max(1) as f64;
    for ((row, drow), &label) in logits.chunks(classes).zip(dlogits.chunks_mut(classes)).zip(labels) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        let log_sum = sum.ln() + max;
        total += log_sum - row[label as usize] as f64;
        for (d, &v) in drow.iter_mut().zip(row) {
            *d = (((v as f64 - log_sum).exp()) * inv_n) as f32;
        }
        drow[label as usize] -= inv_n as f32;
        if argmax(row) == label as usize {
            correct += 1;
        }
    }
    Ok(LossOutput {
        loss: total * inv_n,
        correct,
    })
}

/// Index of the largest value (the first one on ties).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
        )
        .0
}

/// Softmax of one row, in f64 for stability, returned as f32.
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let exps: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}
