//! Buffers whose first element starts a 64-byte cache line (and, on Linux, whose
//! whole 2 MB pages are asked to be transparent huge pages).
//!
//! The kernels load and store whole vectors of 16 floats (64 bytes with AVX-512) at
//! offsets that are multiples of 16 floats from the start of an activation arena, a
//! derived-weight buffer or a scratch buffer. A `Vec<f32>` only promises 4-byte
//! alignment (glibc's large allocations start 16 bytes past a page), so every such
//! vector straddled two cache lines: each load and store cost two line accesses.
//! Measured on the F(4x4) input transform (one thread, data in L1): 37 ns per tile and
//! channel block from a `Vec`, 30.5 ns from a 64-byte-aligned buffer.

use std::ops::{Deref, DerefMut};

/// Bytes of one cache line, the alignment of every [`AlignedVec`].
pub const LINE_BYTES: usize = 64;

/// One cache line of storage.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; LINE_BYTES]);

const ZERO_LINE: Line = Line([0; LINE_BYTES]);

/// Element types an [`AlignedVec`] may hold: plain numbers, valid for any bit pattern
/// (all zero bits is zero), with no padding.
///
/// # Safety
/// Implementors must be `Copy` types of size dividing 64 for which every bit pattern is
/// a valid value.
pub unsafe trait Plain: Copy + 'static {}

// SAFETY: f32, u16 and u32 are 4, 2 and 4 bytes, valid for any bits, without padding.
unsafe impl Plain for f32 {}
// SAFETY: as above.
unsafe impl Plain for u16 {}
// SAFETY: as above.
unsafe impl Plain for u32 {}

/// A growable buffer of `T` whose data starts on a 64-byte boundary; it derefs to a
/// slice as a `Vec` does. New elements are zero.
#[derive(Clone)]
pub struct AlignedVec<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    _element: std::marker::PhantomData<T>,
}

impl<T: Plain> AlignedVec<T> {
    /// An empty buffer (allocates nothing).
    pub const fn new() -> Self {
        AlignedVec {
            lines: Vec::new(),
            len: 0,
            _element: std::marker::PhantomData,
        }
    }

    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let mut v = Self::new();
        v.resize_zeroed(len);
        v
    }

    /// Grows (new elements zero) or shrinks the buffer to `len` elements.
    pub fn resize_zeroed(&mut self, len: usize) {
        let per_line = LINE_BYTES / std::mem::size_of::<T>();
        let lines = len.div_ceil(per_line);
        if len > self.len {
            // Elements past `len` inside the last line may hold old values: clear them.
            let old_lines = self.lines.len().min(lines);
            let tail = self.len..(old_lines * per_line).min(len);
            if lines > self.lines.capacity() {
                // Ask for huge pages before the new lines are first touched below.
                self.lines.reserve_exact(lines - self.lines.len());
                advise_huge_pages(self.lines.as_mut_ptr().cast(), self.lines.capacity() * LINE_BYTES);
            }
            self.lines.resize(lines, ZERO_LINE);
            self.len = len;
            for x in &mut self[tail] {
                // SAFETY: zero bits are a valid `T` (`Plain`).
                *x = unsafe { std::mem::zeroed() };
            }
        } else {
            self.lines.truncate(lines);
            self.len = len;
        }
    }
}

/// Bytes of a transparent huge page (x86-64 and arm64 Linux).
const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Asks Linux to back the whole 2 MB pages inside `bytes` bytes at `ptr` with
/// transparent huge pages (`madvise(MADV_HUGEPAGE)`), which the kernel otherwise gives
/// only to memory that asked for them where, as on this project's hosts, THP is set to
/// `madvise`. A plan's activations and derived weights (about 150 MB at batch 1 for
/// ResNet-50) are then one TLB entry per 2 MB instead of per 4 KB, and their placement
/// in the physically indexed caches the same from one run to the next. A hint only:
/// nothing changes where the kernel refuses it, and other targets ignore it.
fn advise_huge_pages(ptr: *mut u8, bytes: usize) {
    let Some(range) = whole_huge_pages(ptr as usize, bytes) else {
        return;
    };
    #[cfg(not(target_os = "linux"))]
    let _ = range;
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        /// `MADV_HUGEPAGE` of Linux's `<asm-generic/mman-common.h>`.
        const MADV_HUGEPAGE: i32 = 14;
        // SAFETY: the range lies inside this buffer's own allocation; the advice changes
        // no contents and its failure (an old kernel, THP off) is harmless.
        unsafe { madvise(range.start as *mut std::ffi::c_void, range.len(), MADV_HUGEPAGE) };
    }
}

/// The addresses of the whole huge pages inside `bytes` bytes from address `start`, if any.
fn whole_huge_pages(start: usize, bytes: usize) -> Option<std::ops::Range<usize>> {
    let first = start.checked_next_multiple_of(HUGE_PAGE_BYTES)?;
    let end = start.checked_add(bytes)? / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
    (end > first).then_some(first..end)
}

impl<T: Plain> Default for AlignedVec<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Plain> Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `lines` holds at least `len * size_of::<T>()` initialised bytes
        // (`resize_zeroed` keeps `lines.len() * 64 >= len * size_of::<T>()`), aligned to
        // 64 and so to `T`, and every bit pattern is a valid `T` (`Plain`).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<T>(), self.len) }
    }
}

impl<T: Plain> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<T>(), self.len) }
    }
}

impl<T: Plain + std::fmt::Debug> std::fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_buffer_starts_a_cache_line_and_reads_as_zeros() {
        for len in [1, 15, 16, 17, 1000, 100_003] {
            let f = AlignedVec::<f32>::zeroed(len);
            assert_eq!(f.len(), len);
            assert_eq!(f.as_ptr() as usize % LINE_BYTES, 0, "f32 x {len}");
            assert!(f.iter().all(|&x| x == 0.0));
            let h = AlignedVec::<u16>::zeroed(len);
            assert_eq!(h.as_ptr() as usize % LINE_BYTES, 0, "u16 x {len}");
            assert_eq!(h.len(), len);
        }
        assert!(AlignedVec::<f32>::new().is_empty());
    }

    #[test]
    fn huge_page_advice_covers_only_whole_pages_inside_the_buffer() {
        let mb = 1 << 20;
        assert_eq!(whole_huge_pages(0, 4 * mb), Some(0..4 * mb));
        assert_eq!(whole_huge_pages(4096, 4 * mb), Some(2 * mb..4 * mb));
        assert_eq!(whole_huge_pages(4096, 6 * mb), Some(2 * mb..6 * mb));
        assert_eq!(whole_huge_pages(4096, 3 * mb), None);
        assert_eq!(whole_huge_pages(2 * mb, mb), None);
        assert_eq!(whole_huge_pages(usize::MAX - 10, 100), None);
        // A buffer big enough to take the advice reads as zeros and keeps its values.
        let mut v = AlignedVec::<f32>::zeroed(3 * mb);
        assert!(v.iter().all(|&x| x == 0.0));
        v[3 * mb - 1] = 7.0;
        v.resize_zeroed(5 * mb);
        assert_eq!(v[3 * mb - 1], 7.0);
        assert!(v[3 * mb..].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn growing_keeps_the_values_and_zeroes_the_new_ones() {
        let mut v = AlignedVec::<f32>::zeroed(20);
        for (i, x) in v.iter_mut().enumerate() {
            *x = i as f32 + 1.0;
        }
        // Shrink inside a line, then grow: the values cut off must come back as zeros.
        v.resize_zeroed(18);
        v.resize_zeroed(40);
        assert_eq!(v.len(), 40);
        for (i, &x) in v.iter().enumerate() {
            let want = if i < 18 { i as f32 + 1.0 } else { 0.0 };
            assert_eq!(x, want, "element {i}");
        }
        assert_eq!(v.as_ptr() as usize % LINE_BYTES, 0);
        v.resize_zeroed(3);
        assert_eq!(&v[..], &[1.0, 2.0, 3.0]);
        let c = v.clone();
        assert_eq!(&c[..], &v[..]);
        assert_eq!(c.as_ptr() as usize % LINE_BYTES, 0);
    }
}
