//! One allocation for every activation of a plan (llm.c's single allocation), with
//! offsets planned from each buffer's lifetime so that buffers whose lives do not overlap
//! share memory. Greedy by size, largest first, each at the lowest offset that no buffer
//! alive at the same time occupies: the usual static memory planner of inference engines.

/// Offsets are rounded up to this many floats (64 bytes: a cache line and an AVX-512
/// vector), so that no two buffers share a cache line and every buffer starts aligned
/// relative to the arena.
const ALIGN: usize = 16;

/// A buffer to place: its length in floats and the first and last step that use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub len: usize,
    pub first: usize,
    pub last: usize,
}

impl Lifetime {
    fn overlaps(&self, o: &Lifetime) -> bool {
        self.first <= o.last && o.first <= self.last
    }
}

/// Where each buffer lives and how large the arena is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Offset of each buffer, in the order given.
    pub offsets: Vec<usize>,
    /// Floats the arena needs.
    pub total: usize,
}

/// Places `buffers` in one arena: buffers alive at the same step never overlap.
pub fn place(buffers: &[Lifetime]) -> Layout {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by(|&a, &b| buffers[b].len.cmp(&buffers[a].len).then(a.cmp(&b)));
    let mut offsets = vec![0; buffers.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut total = 0;
    for i in order {
        let me = buffers[i];
        let len = me.len.div_ceil(ALIGN) * ALIGN;
        // Ranges already taken by buffers alive at the same time, lowest first.
        let mut taken: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| buffers[j].overlaps(&me))
            .map(|&j| (offsets[j], offsets[j] + buffers[j].len.div_ceil(ALIGN) * ALIGN))
            .collect();
        taken.sort();
        let mut at = 0;
        for (start, end) in taken {
            if at + len <= start {
                break;
            }
            at = at.max(end);
        }
        offsets[i] = at;
        total = total.max(at + len);
        placed.push(i);
    }
    Layout { offsets, total }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life(len: usize, first: usize, last: usize) -> Lifetime {
        Lifetime { len, first, last }
    }

    #[test]
    fn buffers_alive_together_never_overlap_and_others_share() {
        let bufs = [
            life(100, 0, 1),
            life(50, 1, 2),
            life(100, 2, 3),
            life(16, 3, 4),
            life(200, 4, 5),
            life(7, 0, 5),
        ];
        let l = place(&bufs);
        for (i, a) in bufs.iter().enumerate() {
            for (j, b) in bufs.iter().enumerate() {
                if i < j && a.overlaps(b) {
                    let (ra, rb) = (l.offsets[i]..l.offsets[i] + a.len, l.offsets[j]..l.offsets[j] + b.len);
                    assert!(ra.end <= rb.start || rb.end <= ra.start, "{i} {j}: {ra:?} {rb:?}");
                }
            }
            assert_eq!(l.offsets[i] % ALIGN, 0);
        }
        // Peak live set is at step 4-5: 200 + 16 + 7 (each rounded to 16), well under the sum.
        assert!(l.total <= 208 + 16 + 16 + 112, "{}", l.total);
        assert!(l.total < bufs.iter().map(|b| b.len).sum::<usize>());
    }

    #[test]
    fn nothing_to_place_needs_nothing() {
        assert_eq!(
            place(&[]),
            Layout {
                offsets: vec![],
                total: 0
            }
        );
    }
}
