//! `Tensor`: a shape and a row-major `Vec<f32>`, NCHW for images.

use crate::{Error, Result};

/// A dense row-major f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// Wraps `data`, checking that its length is the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let expected = checked_numel(&shape)?;
        if expected != data.len() {
            return Err(Error::Shape(format!(
                "tensor of shape {shape:?} needs {expected} values, found {}",
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: Vec<usize>) -> Result<Self> {
        let n = checked_numel(&shape)?;
        Ok(Tensor {
            shape,
            data: vec![0.0; n],
        })
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Gives up the values.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
}

/// Product of the dimensions, or an error when it overflows.
pub fn checked_numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::Shape(format!("shape {shape:?} has more elements than fit in memory")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_length() {
        assert!(Tensor::new(vec![2, 3], vec![0.0; 6]).is_ok());
        let err = Tensor::new(vec![2, 3], vec![0.0; 5]).unwrap_err().to_string();
        assert!(
            err.contains("[2, 3]") && err.contains("6") && err.contains("5"),
            "{err}"
        );
        assert!(checked_numel(&[usize::MAX, 2]).is_err());
    }
}

/// The largest `|x|` of `values`, NaN if any is NaN: the NaN-aware fold for error
/// measures (`fold(0.0, f32::max)` would skip a NaN and report no error).
pub fn max_abs(values: impl IntoIterator<Item = f32>) -> f32 {
    values.into_iter().fold(0.0, |m: f32, x| {
        if m.is_nan() || x.is_nan() {
            f32::NAN
        } else {
            m.max(x.abs())
        }
    })
}

/// [`max_abs`] in f64, for errors measured against f64 references.
pub fn max_abs_f64(values: impl IntoIterator<Item = f64>) -> f64 {
    values.into_iter().fold(0.0, |m: f64, x| {
        if m.is_nan() || x.is_nan() {
            f64::NAN
        } else {
            m.max(x.abs())
        }
    })
}

/// `max |a[i] - b[i]|` over the pairs, NaN if any difference is NaN ([`max_abs`]).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    max_abs(a.iter().zip(b).map(|(x, y)| x - y))
}

#[cfg(test)]
mod error_measure_tests {
    use super::*;

    #[test]
    fn nan_is_never_skipped() {
        assert_eq!(max_abs([1.0, -3.0, 2.0]), 3.0);
        assert!(max_abs([1.0, f32::NAN, 2.0]).is_nan());
        assert!(max_abs_diff(&[1.0, 2.0], &[1.0, f32::NAN]).is_nan());
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, 2.0]), 0.5);
        assert!(max_abs_f64([f64::NAN, 1.0]).is_nan());
    }
}
