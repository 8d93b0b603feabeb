//! An output slice that the rayon tasks of one kernel call write to at once, each task
//! its own elements: the kernels' partitions (tiles x channels, column blocks) are not
//! contiguous sub-slices, so `par_chunks_mut` cannot express them.

use crate::simd::Vector;
use std::marker::PhantomData;

/// The output slice shared by the tasks of one call, each writing its own elements.
pub(crate) struct SharedOut<'a> {
    ptr: *mut f32,
    len: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: `SharedOut` only hands out writes to distinct elements from different tasks
// (see `write`); it owns a unique borrow of the slice for its lifetime.
unsafe impl Send for SharedOut<'_> {}
// SAFETY: as above: concurrent `write`s from tasks never target the same element.
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    pub(crate) fn new(y: &'a mut [f32]) -> Self {
        SharedOut {
            ptr: y.as_mut_ptr(),
            len: y.len(),
            _borrow: PhantomData,
        }
    }

    /// The slice again, once the parallel loop that wrote it has ended.
    pub(crate) fn into_slice(self) -> &'a mut [f32] {
        // SAFETY: `ptr` and `len` come from the unique borrow taken in `new`, which this
        // value held until now; consuming it ends every shared write.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Writes `v` at `i`. Callers guarantee that no other task writes `i` during the
    /// parallel loop (each kernel partitions its output among its tasks).
    #[inline(always)]
    pub(crate) fn write(&self, i: usize, v: f32) {
        assert!(i < self.len, "shared output index out of range");
        // SAFETY: `i` is in bounds of the uniquely borrowed slice (checked above), and no
        // other thread reads or writes element `i` while the parallel loop runs (each
        // output element belongs to exactly one task), so this write races with nothing.
        unsafe { *self.ptr.add(i) = v }
    }

    /// Writes `v` at `i..i + N`, under the same guarantee as [`SharedOut::write`]; a
    /// fixed size, so that it compiles to a few moves rather than a `memcpy` call.
    #[inline(always)]
    pub(crate) fn write_array<const N: usize>(&self, i: usize, v: [f32; N]) {
        assert!(i + N <= self.len, "shared output range out of bounds");
        // SAFETY: the range is in bounds (checked above) and no other task touches these
        // elements while the parallel loop runs (see `write`).
        unsafe { (self.ptr.add(i) as *mut [f32; N]).write_unaligned(v) }
    }

    /// Copies `v` to `i..i + v.len()`, under the same guarantee as [`SharedOut::write`].
    #[inline(always)]
    pub(crate) fn write_slice(&self, i: usize, v: &[f32]) {
        assert!(i + v.len() <= self.len, "shared output range out of bounds");
        // SAFETY: the range is in bounds (checked above), `v` is scratch memory that
        // cannot overlap the output, and no other task touches these elements.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), self.ptr.add(i), v.len()) }
    }

    /// Elements in the output.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// A pointer to element `i`, for a kernel that stores through raw pointers: under the
    /// same guarantee as [`SharedOut::write`], for every element it writes.
    pub(crate) fn ptr_at(&self, i: usize) -> *mut f32 {
        assert!(i <= self.len, "shared output index out of range");
        // SAFETY: `i <= len` keeps the pointer inside (or one past) the borrowed slice.
        unsafe { self.ptr.add(i) }
    }

    /// Reads the vector at `i..i + V::LANES`: the blocked kernels' in-place residual,
    /// read by the one task that then overwrites it.
    #[inline(always)]
    pub(crate) fn load<V: Vector>(&self, i: usize) -> V {
        assert!(i + V::LANES <= self.len, "shared output range out of bounds");
        // SAFETY: in bounds (checked above); only the task that owns these elements reads
        // or writes them during the parallel loop.
        unsafe { V::load_at(self.ptr, i) }
    }

    /// Writes the vector `v` at `i..i + V::LANES`, under the guarantee of [`SharedOut::write`].
    #[inline(always)]
    pub(crate) fn store<V: Vector>(&self, i: usize, v: V) {
        assert!(i + V::LANES <= self.len, "shared output range out of bounds");
        // SAFETY: in bounds (checked above), and no other task touches these elements.
        unsafe { v.store_at(self.ptr, i) }
    }
}
