//! Matrix products: a bounds-checked wrapper around `matrixmultiply::sgemm` and its naive twin.

/// A read-only matrix view: `rows x cols` elements of `data`, element `(i, j)` at
/// `i * row_stride + j * col_stride`. Strides are non-negative so transposes are free.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix (`row_stride = cols`).
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The same elements seen as the transposed matrix.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn assert_in_bounds(&self, what: &str) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(
                last < self.data.len(),
                "gemm: {what} view {}x{} (strides {}, {}) exceeds its slice of {}",
                self.rows,
                self.cols,
                self.row_stride,
                self.col_stride,
                self.data.len()
            );
        }
    }
}

/// A mutable row-major-with-stride output matrix: element `(i, j)` at `i * row_stride + j`.
#[derive(Debug)]
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
}

impl<'a> MatMut<'a> {
    /// A row-major matrix (`row_stride = cols`).
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        MatMut {
            data,
            rows,
            cols,
            row_stride: cols,
        }
    }
}

/// `c = alpha * a * b + beta * c` through matrixmultiply's single-threaded sgemm
/// (callers parallelise across independent products with rayon).
///
/// Panics when the shapes disagree or a view exceeds its slice: that is a bug in the
/// caller, never a property of user data.
pub fn gemm(alpha: f32, a: MatRef, b: MatRef, beta: f32, c: MatMut) {
    assert_eq!(a.cols, b.rows, "gemm: inner dimensions differ");
    assert_eq!(a.rows, c.rows, "gemm: rows of a and c differ");
    assert_eq!(b.cols, c.cols, "gemm: columns of b and c differ");
    a.assert_in_bounds("a");
    b.assert_in_bounds("b");
    if c.rows > 0 && c.cols > 0 {
        assert!(c.cols <= c.row_stride || c.rows == 1, "gemm: rows of c overlap");
        assert!(
            (c.rows - 1) * c.row_stride + c.cols <= c.data.len(),
            "gemm: c exceeds its slice"
        );
    } else {
        return;
    }
    if a.cols == 0 {
        scale(beta, c);
        return;
    }
    // SAFETY: every element touched by sgemm lies inside the slices: the assertions above
    // bound the last (largest-offset) element of each view with non-negative strides, and
    // `c` is a unique borrow whose rows do not overlap, so writes alias nothing else.
    unsafe {
        matrixmultiply::sgemm(
            a.rows,
            a.cols,
            b.cols,
            alpha,
            a.data.as_ptr(),
            a.row_stride as isize,
            a.col_stride as isize,
            b.data.as_ptr(),
            b.row_stride as isize,
            b.col_stride as isize,
            beta,
            c.data.as_mut_ptr(),
            c.row_stride as isize,
            1,
        );
    }
}

fn scale(beta: f32, c: MatMut) {
    for i in 0..c.rows {
        for v in &mut c.data[i * c.row_stride..i * c.row_stride + c.cols] {
            *v = if beta == 0.0 { 0.0 } else { *v * beta };
        }
    }
}

/// The naive twin of [`gemm`]: triple loop, f64 accumulation.
pub fn gemm_naive(alpha: f32, a: MatRef, b: MatRef, beta: f32, c: MatMut) {
    assert_eq!(a.cols, b.rows);
    for i in 0..c.rows {
        for j in 0..c.cols {
            let mut acc = 0f64;
            for p in 0..a.cols {
                acc += a.data[i * a.row_stride + p * a.col_stride] as f64
                    * b.data[p * b.row_stride + j * b.col_stride] as f64;
            }
            let out = &mut c.data[i * c.row_stride + j];
            let prev = if beta == 0.0 { 0.0 } else { beta as f64 * *out as f64 };
            *out = (alpha as f64 * acc + prev) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::random;
    use crate::rng::Rng;

    #[test]
    fn matches_naive_on_odd_sizes_and_transposes() {
        let mut rng = Rng::new(1);
        for &(m, k, n) in &[(63, 65, 67), (1, 1, 1), (7, 0, 5), (16, 144, 1024), (5, 3, 1)] {
            for &(ta, tb) in &[(false, false), (true, false), (false, true), (true, true)] {
                let a_data = random(&mut rng, m * k);
                let b_data = random(&mut rng, k * n);
                let a = if ta {
                    MatRef::row_major(&a_data, k, m).t()
                } else {
                    MatRef::row_major(&a_data, m, k)
                };
                let b = if tb {
                    MatRef::row_major(&b_data, n, k).t()
                } else {
                    MatRef::row_major(&b_data, k, n)
                };
                // c with a padded row stride, beta = 0.5 accumulation.
                let stride = n + 3;
                let init = random(&mut rng, m * stride);
                let mut fast = init.clone();
                let mut slow = init.clone();
                gemm(
                    1.5,
                    a,
                    b,
                    0.5,
                    MatMut {
                        data: &mut fast,
                        rows: m,
                        cols: n,
                        row_stride: stride,
                    },
                );
                gemm_naive(
                    1.5,
                    a,
                    b,
                    0.5,
                    MatMut {
                        data: &mut slow,
                        rows: m,
                        cols: n,
                        row_stride: stride,
                    },
                );
                let max_err = crate::tensor::max_abs(fast.iter().zip(&slow).map(|(x, y)| (x - y) / (1.0 + y.abs())));
                assert!(
                    max_err < 1e-4,
                    "m={m} k={k} n={n} ta={ta} tb={tb}: max rel err {max_err}"
                );
                // Padding columns are untouched.
                for i in 0..m {
                    assert_eq!(
                        &fast[i * stride + n..(i + 1) * stride],
                        &init[i * stride + n..(i + 1) * stride]
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "exceeds its slice")]
    fn rejects_views_past_the_slice() {
        let a = vec![0.0; 5];
        let b = vec![0.0; 6];
        let mut c = vec![0.0; 6];
        gemm(
            1.0,
            MatRef::row_major(&a, 2, 3),
            MatRef::row_major(&b, 3, 2),
            0.0,
            MatMut::row_major(&mut c, 2, 2),
        );
    }
}
