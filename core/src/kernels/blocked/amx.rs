//! bf16 products on Intel AMX (Sapphire Rapids and later): eight tile registers of up to
//! 16 rows x 64 bytes, and `tdpbf16ps`, which adds a 16 x 32 bf16 tile times a 32 x 16
//! one (stored as 16 rows of 16 input-channel pairs) into a 16 x 16 f32 tile: 8192
//! multiply-adds an instruction. On one core of the Intel host (Emerald Rapids) a 2 x 2
//! tile step on cached data ran at 680 GFLOP/s against an f32 FMA peak of about 150, and
//! AVX512_BF16's `vdpbf16ps` runs no faster than f32 FMAs there. PyTorch's CPU autocast
//! runs its bf16 convolutions on the tiles (oneDNN); without them `--precision bf16` lost
//! to it and even to this engine's f32.
//!
//! Used by the bf16 1x1 convolutions (`bf16::pointwise`): a task's input pixels are laid
//! out as tile rows, `[input-channel pair of blocks][pixel][32]` ([`ROW`] values, one
//! pixel's 32 input channels a row), and the weights are read as [`super::bf16::pack_pointwise`]
//! packs them (`[output block][input channel / 2][lane][2]`: 16 pairs of one output
//! block are one 16-row tile). Each step adds 2 pixel tiles x 2 output blocks: four
//! accumulator tiles, two of inputs, two of weights. The direct convolutions of other
//! kernels (`bf16_direct`) run the same steps with each tap's pixel rows at its own
//! offset in one input buffer (`Tiles::gathered_step`), as do the strided backward-data
//! (`bf16_data_grad`) and the backward-filter (`bf16_tile_filter_grad`, whose tile rows
//! are input channels along the output positions and whose "weights" are `dy`).
//!
//! The tiles are not in Rust's register model, and the compiler never emits tile
//! instructions itself: each call (or `Tiles` value) configures the tiles, runs its
//! steps (each one `asm!` block from zeroing or loading its accumulators to storing them)
//! and releases them before it returns, so no other code on the thread finds them in use. Linux
//! hands a process the tile state only once asked (`arch_prctl(ARCH_REQ_XCOMP_PERM)`),
//! which [`available`] does once; elsewhere (other systems, other CPUs, wasm) it is false
//! and the AVX512_BF16 kernels run.

use super::bf16::LANES;
use crate::kernels::shared_out::SharedOut;

/// bf16 values of one tile row: 32 input channels (two blocks of 16) of one pixel.
pub const ROW: usize = 32;

/// Rows of a tile: 16 pixels (inputs, accumulators) or 16 input-channel pairs (weights).
pub const TILE_ROWS: usize = 16;

/// Pixels of one step: two tiles of rows.
pub const STEP_PIXELS: usize = 2 * TILE_ROWS;

/// Whether this CPU and system run AMX bf16 tiles (asked of the kernel once per process).
pub fn available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        static AMX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AMX.get_or_init(|| super::bf16::available() && x86::cpu_has_amx_bf16() && x86::request_tile_state())
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// Floats of `out` between two output blocks' rows of the same pixels, and where block 0
/// of the task's first pixel is.
#[derive(Clone, Copy, Debug)]
pub struct OutRows {
    /// Index in `out` of output block 0, first pixel of the task.
    pub at: usize,
    /// Floats from one output block to the next (the image's pixels times 16).
    pub block: usize,
}

/// `out[block cb][pixel t] = sum_c w[cb][c] x[t][c]` for every one of `ocb` output blocks
/// and `tn` pixels: `rows` holds the task's input as tile rows (`kbs` pairs of input
/// blocks, `tpad` pixel rows each, `tpad` a multiple of [`STEP_PIXELS`] whose rows past
/// `tn` are zero), `w16` the packed weights of [`super::bf16::pack_pointwise`] with
/// `2 * kbs` input blocks. Needs [`available`]; only this task writes the pixels it
/// stores.
pub(crate) fn pointwise_products(
    rows: &[u16],
    (kbs, tpad, tn): (usize, usize, usize),
    w16: &[u16],
    ocb: usize,
    out: &SharedOut,
    o: OutRows,
) {
    assert!(available(), "amx: not available on this CPU");
    let cp = 2 * kbs * LANES;
    assert!(tpad.is_multiple_of(STEP_PIXELS) && tn <= tpad, "amx: pixel rows");
    assert!(rows.len() >= kbs * tpad * ROW, "amx: input rows");
    assert!(w16.len() >= ocb * cp * LANES, "amx: packed weights");
    if kbs == 0 || tn == 0 || ocb == 0 {
        for b in 0..ocb {
            for i in 0..tn * LANES {
                out.write(o.at + b * o.block + i, 0.0);
            }
        }
        return;
    }
    assert!(o.at + (ocb - 1) * o.block + tn * LANES <= out.len(), "amx: output rows");
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        // Accumulator tiles of a ragged last step, copied out row by row.
        let mut spill = Spill::default();
        x86::load_config(&x86::FULL_DEPTH);
        let mut cb = 0;
        while cb < ocb {
            let pair = ocb - cb >= 2;
            let w0 = w16[cb * cp * LANES..].as_ptr();
            let w1 = if pair {
                w16[(cb + 1) * cp * LANES..].as_ptr()
            } else {
                w0
            };
            let mut t = 0;
            while t < tn {
                let whole = tn - t >= STEP_PIXELS;
                let a = rows[t * ROW..].as_ptr();
                let dst: [[*mut f32; 2]; 2] = core::array::from_fn(|j| {
                    core::array::from_fn(|i| {
                        if whole {
                            out.ptr_at(o.at + (cb + j.min(pair as usize)) * o.block + (t + i * TILE_ROWS) * LANES)
                        } else {
                            spill.tile(j, i)
                        }
                    })
                });
                // SAFETY: the tiles are configured (above) on this thread; `a` has `kbs`
                // pair-blocks `tpad * ROW` apart of at least 32 rows from pixel `t`
                // (`t + 32 <= tpad`), `w0` / `w1` `kbs` tiles of 16 rows of the packed
                // weights of their output block (asserted above); `dst` is 16 rows of 16
                // floats each, in `out` for a whole step (asserted above: pixels up to
                // `tn`, blocks up to `ocb`) or in `spill`.
                unsafe {
                    if pair {
                        x86::step_2x2(a, tpad * ROW * 2, w0, w1, kbs, dst);
                    } else {
                        x86::step_2x1(a, tpad * ROW * 2, w0, kbs, [dst[0][0], dst[0][1]]);
                    }
                }
                if !whole {
                    for j in 0..1 + pair as usize {
                        for p in 0..tn - t {
                            let row = spill.row(j, p);
                            let at = o.at + (cb + j) * o.block + (t + p) * LANES;
                            for (lane, &v) in row.iter().enumerate() {
                                out.write(at + lane, v);
                            }
                        }
                    }
                }
                t += STEP_PIXELS;
            }
            cb += 1 + pair as usize;
        }
        x86::release();
    }
}

/// The whole 32-row steps of [`super::bf16::products`] for one position: `m[r][t] =
/// sum_c u[r][c] v[c / 16][t][c % 16]` for `rb` output blocks (`u` blocks `cp * 16`
/// values apart, packed as `[c / 2][lane][2]`) and rows `t < rows`, a multiple of
/// [`STEP_PIXELS`], from `v` (`cp / 16` blocks `v_block` apart) into `m` (blocks
/// `m_block` apart). The input blocks are the Winograd layout's, 16 channels a row, so
/// each `tdpbf16ps` takes 16 input channels (half a tile's depth: about two thirds of
/// the full-depth rate, measured alone), rather than copying them into 32-channel rows.
/// Needs [`available`].
#[cfg(target_arch = "x86_64")]
pub(crate) fn products(
    u: &[u16],
    (cp, rb): (usize, usize),
    rows: usize,
    (v, v_block): (&[u16], usize),
    (m, m_block): (&mut [f32], usize),
) {
    assert!(available(), "amx: not available on this CPU");
    let icb = cp / LANES;
    assert!(
        cp.is_multiple_of(LANES) && rows.is_multiple_of(STEP_PIXELS),
        "amx: product shape"
    );
    assert!(u.len() >= rb * cp * LANES, "amx: packed filters");
    assert!(icb == 0 || v.len() >= (icb - 1) * v_block + rows * LANES, "amx: inputs");
    assert!(rb == 0 || m.len() >= (rb - 1) * m_block + rows * LANES, "amx: products");
    if icb == 0 {
        for r in 0..rb {
            m[r * m_block..r * m_block + rows * LANES].fill(0.0);
        }
    } else {
        #[cfg(target_os = "linux")]
        products_on_tiles(u, (cp, rb), rows, (v, v_block), (m, m_block));
    }
}

/// [`products`] with at least one input block, on the half-depth tiles.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn products_on_tiles(
    u: &[u16],
    (cp, rb): (usize, usize),
    rows: usize,
    (v, v_block): (&[u16], usize),
    (m, m_block): (&mut [f32], usize),
) {
    let icb = cp / LANES;
    x86::load_config(&x86::HALF_DEPTH);
    let mut r = 0;
    while r < rb {
        let pair = rb - r >= 2;
        let w0 = u[r * cp * LANES..].as_ptr();
        let w1 = if pair { u[(r + 1) * cp * LANES..].as_ptr() } else { w0 };
        for t in (0..rows).step_by(STEP_PIXELS) {
            let a = v[t * LANES..].as_ptr();
            let mp = m.as_mut_ptr();
            let dst: [[*mut f32; 2]; 2] = core::array::from_fn(|j| {
                let block = (r + j).min(rb - 1);
                // In bounds: `block < rb` and `t + 32 <= rows` (asserted above).
                core::array::from_fn(|i| mp.wrapping_add(block * m_block + (t + i * TILE_ROWS) * LANES))
            });
            // SAFETY: the half-depth tiles are configured (above) on this thread; `a`
            // has `icb` blocks `v_block` apart of 32 rows of 16 values from row `t`
            // (`t + 32 <= rows`), `w0` / `w1` `icb` tiles of 8 rows of 32 values of
            // their output block; `dst` rows lie inside `m` (asserted above) and this
            // call alone writes them.
            unsafe {
                if pair {
                    x86::half_step_2x2(a, v_block * 2, w0, w1, icb, dst);
                } else {
                    x86::half_step_2x1(a, v_block * 2, w0, icb, dst[0]);
                }
            }
        }
        r += 1 + pair as usize;
    }
    x86::release();
}

/// Four accumulator tiles of one step, `[output block][pixel tile][16 rows][16 floats]`:
/// where a ragged step (or a step of [`Tiles::gathered_step`]) leaves its sums.
#[repr(C, align(64))]
pub(crate) struct Spill([[[f32; TILE_ROWS * TILE_ROWS]; 2]; 2]);

impl Default for Spill {
    fn default() -> Self {
        Spill([[[0.0; TILE_ROWS * TILE_ROWS]; 2]; 2])
    }
}

impl Spill {
    /// The spills laid end to end in `floats`: a whole number of them, 64-byte aligned
    /// (a task's share of [`crate::kernels::scratch::with_partials`]).
    pub(crate) fn many(floats: &mut [f32]) -> &mut [Spill] {
        let size = std::mem::size_of::<Spill>() / std::mem::size_of::<f32>();
        assert!(
            floats.len().is_multiple_of(size)
                && (floats.as_ptr() as usize).is_multiple_of(std::mem::align_of::<Spill>()),
            "amx: spills need whole, aligned tiles"
        );
        // SAFETY: `Spill` is `repr(C)` arrays of `f32` with no padding; the floats are
        // aligned for it and hold a whole number of them (asserted above), and the
        // borrow of `floats` passes to the result.
        unsafe { std::slice::from_raw_parts_mut(floats.as_mut_ptr().cast::<Spill>(), floats.len() / size) }
    }

    /// Output block `j` (of the step's two), pixel tile `i`.
    #[cfg_attr(not(all(target_arch = "x86_64", target_os = "linux")), allow(dead_code))]
    fn tile(&mut self, j: usize, i: usize) -> *mut f32 {
        self.0[j][i].as_mut_ptr()
    }

    /// The 16 floats of output block `j`, pixel `p` (of the step's 32).
    pub(crate) fn row(&self, j: usize, p: usize) -> &[f32] {
        let (i, r) = (p / TILE_ROWS, p % TILE_ROWS);
        &self.0[j][i][r * TILE_ROWS..(r + 1) * TILE_ROWS]
    }
}

/// How many input channels a tile row holds: the depth of one `tdpbf16ps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// 32 input channels (a pair of blocks) a row; a weight tile of 16 rows of pairs.
    Full,
    /// 16 input channels (one block) a row; a weight tile of 8 rows of pairs.
    Half,
}

impl Depth {
    /// bf16 values of one input row.
    pub const fn row(self) -> usize {
        match self {
            Depth::Full => ROW,
            Depth::Half => ROW / 2,
        }
    }

    /// bf16 values of one weight tile (16 output lanes x `row()` input channels).
    pub const fn weight_tile(self) -> usize {
        self.row() * TILE_ROWS
    }
}

/// This thread's tile registers, configured for one [`Depth`] until dropped (which
/// releases them, so no other code on the thread finds them in use).
pub(crate) struct Tiles {
    depth: Depth,
    /// The configuration belongs to the thread that loaded it.
    _thread: std::marker::PhantomData<*const ()>,
}

impl Tiles {
    /// Configures the tiles for `depth`. Needs [`available`].
    pub(crate) fn new(depth: Depth) -> Tiles {
        assert!(available(), "amx: not available on this CPU");
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        x86::load_config(match depth {
            Depth::Full => &x86::FULL_DEPTH,
            Depth::Half => &x86::HALF_DEPTH,
        });
        Tiles {
            depth,
            _thread: std::marker::PhantomData,
        }
    }

    /// One step of a convolution whose taps are offsets into one input buffer:
    /// `spill[j][i][r] = sum_k a[first + taps[k] + (16 i + r) * a_row ..][..row]` times
    /// weight tile `k` of output block `j`, for 2 pixel tiles and `blocks` (1 or 2) output
    /// blocks, the weights of block `j` at `w[j * w_block..]`, [`Depth::weight_tile`]
    /// values a tile; added to the sums in `spill` when `accumulate`. `first` and `a_row`
    /// count bf16 values.
    pub(crate) fn gathered_step(
        &mut self,
        (a, first, a_row): (&[u16], usize, usize),
        taps: &Taps,
        (w, w_block, blocks): (&[u16], usize, usize),
        accumulate: bool,
        spill: &mut Spill,
    ) {
        let (row, wt, k) = (self.depth.row(), self.depth.weight_tile(), taps.bytes.len());
        assert!((1..=2).contains(&blocks) && k > 0, "amx: gathered step shape");
        assert!(
            first + taps.reach + (STEP_PIXELS - 1) * a_row + row <= a.len(),
            "amx: gathered input rows"
        );
        assert!((blocks - 1) * w_block + k * wt <= w.len(), "amx: gathered weights");
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            let a_ptr = a[first..].as_ptr();
            let (w0, w1) = (w.as_ptr(), w[(blocks - 1) * w_block..].as_ptr());
            let (bytes, a_row) = (taps.bytes, a_row * 2);
            // SAFETY: the tiles are configured for `self.depth` on this thread (`new`);
            // every input row read lies in `a` (the farthest tap is `taps.reach` values
            // on) and every weight tile in `w` (asserted above); the spill tiles are 16
            // rows of 64 bytes each, ours alone.
            unsafe {
                let dst = spill.tile(0, 0);
                match (self.depth, blocks) {
                    (Depth::Full, 2) => x86::gathered_2x2(a_ptr, bytes, a_row, (w0, w1), accumulate, dst),
                    (Depth::Full, _) => x86::gathered_2x1(a_ptr, bytes, a_row, w0, accumulate, dst),
                    (Depth::Half, 2) => x86::half_gathered_2x2(a_ptr, bytes, a_row, (w0, w1), accumulate, dst),
                    (Depth::Half, _) => x86::half_gathered_2x1(a_ptr, bytes, a_row, w0, accumulate, dst),
                }
            }
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        let _ = (spill, accumulate);
    }
}

/// The taps of [`Tiles::gathered_step`]: byte offsets into its input buffer, as the
/// kernel reads them, made once per buffer layout, and the farthest in bf16 values.
pub(crate) struct Taps<'a> {
    bytes: &'a [usize],
    reach: usize,
}

impl<'a> Taps<'a> {
    /// Fills `bytes` with the offsets `values` gives (in bf16 values; the first
    /// `bytes.len()` of them) and takes them.
    pub(crate) fn new(values: impl Iterator<Item = usize>, bytes: &'a mut [usize]) -> Taps<'a> {
        let mut n = 0;
        let mut reach = 0;
        for (b, v) in bytes.iter_mut().zip(values) {
            *b = v * 2;
            reach = reach.max(v);
            n += 1;
        }
        Taps {
            bytes: &bytes[..n],
            reach,
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        x86::release();
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod x86 {
    use super::STEP_PIXELS;
    use std::arch::asm;

    /// CPUID leaf 7: AMX-BF16 (EDX bit 22) and AMX-TILE (bit 24).
    pub(super) fn cpu_has_amx_bf16() -> bool {
        if std::arch::x86_64::__cpuid(0).eax < 7 {
            return false;
        }
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        edx & (1 << 22) != 0 && edx & (1 << 24) != 0
    }

    /// Asks Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
    /// XFEATURE_XTILEDATA)`); false where the kernel refuses it (older than 5.16, or the
    /// state disabled).
    pub(super) fn request_tile_state() -> bool {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
        const XFEATURE_XTILEDATA: u64 = 18;
        let ret: i64;
        // SAFETY: a system call with integer arguments that only changes this process's
        // permission to use a CPU state; rcx and r11 are clobbered by `syscall`.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack)
            );
        }
        ret == 0
    }

    /// A 64-byte tile configuration (palette 1).
    #[repr(C, align(64))]
    pub(super) struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    /// Full depth: all eight tiles 16 rows x 64 bytes (32 input channels a row).
    pub(super) static FULL_DEPTH: Config = Config {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    /// Half depth: accumulators (tmm0-3) 16 x 64 bytes, inputs (tmm4-5) 16 rows of 16
    /// input channels (32 bytes), weights (tmm6-7) 8 rows of pairs (64 bytes).
    pub(super) static HALF_DEPTH: Config = Config {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [64, 64, 64, 64, 32, 32, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 8, 8, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    /// Configures this thread's tiles as `config` says.
    pub(super) fn load_config(config: &'static Config) {
        // SAFETY: both configurations are valid for palette 1 (at most 16 rows of at
        // most 64 bytes a tile) and `available` has been checked by the caller.
        unsafe { asm!("ldtilecfg [{}]", in(reg) config as *const Config, options(nostack, readonly)) };
    }

    /// Returns this thread's tiles to their initial state.
    pub(super) fn release() {
        // SAFETY: only resets tile state, which no code outside these kernels uses.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    const _: () = assert!(STEP_PIXELS == 32);

    /// Defines the two step kernels of one tile depth: `$two` adds 2 pixel tiles x 2
    /// output blocks, `$one` 2 pixel tiles x 1 block, summed over `kbs` steps of depth:
    /// `dst[j][i]` (16 rows 64 bytes apart) = pixel rows `16 i ..` of `a` (rows
    /// `$a_row` bytes apart, the second tile `$a_tile` bytes on) times the weights of block
    /// `j` (`$w_step` bytes of tile rows a step), `a` moving `a_step` bytes a step.
    macro_rules! steps {
        ($two:ident, $one:ident, $a_row:literal, $a_tile:literal, $w_step:literal) => {
            /// The 2 x 2 step kernel of this depth (see `steps!`).
            ///
            /// # Safety
            /// The tiles are configured for this depth on this thread; `a` holds `kbs`
            /// steps `a_step` bytes apart of 32 rows, `w0` and `w1` `kbs` consecutive
            /// weight tiles, and each `dst` 16 rows of 64 bytes that nothing else accesses.
            pub(super) unsafe fn $two(
                a: *const u16,
                a_step: usize,
                w0: *const u16,
                w1: *const u16,
                kbs: usize,
                dst: [[*mut f32; 2]; 2],
            ) {
                // SAFETY: by the function's contract.
                unsafe {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        "2:",
                        "tileloadd tmm4, [{a} + {a_row}*1]",
                        concat!("tileloadd tmm5, [{a} + {a_row}*1 + ", $a_tile, "]"),
                        "tileloadd tmm6, [{w0} + {row}*1]",
                        "tileloadd tmm7, [{w1} + {row}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm5, tmm6",
                        "tdpbf16ps tmm2, tmm4, tmm7",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        "add {a}, {a_step}",
                        concat!("add {w0}, ", $w_step),
                        concat!("add {w1}, ", $w_step),
                        "dec {k}",
                        "jnz 2b",
                        "tilestored [{d00} + {row}*1], tmm0",
                        "tilestored [{d01} + {row}*1], tmm1",
                        "tilestored [{d10} + {row}*1], tmm2",
                        "tilestored [{d11} + {row}*1], tmm3",
                        a = inout(reg) a => _,
                        w0 = inout(reg) w0 => _,
                        w1 = inout(reg) w1 => _,
                        k = inout(reg) kbs => _,
                        a_step = in(reg) a_step,
                        a_row = in(reg) $a_row,
                        row = in(reg) 64usize,
                        d00 = in(reg) dst[0][0],
                        d01 = in(reg) dst[0][1],
                        d10 = in(reg) dst[1][0],
                        d11 = in(reg) dst[1][1],
                        options(nostack)
                    );
                }
            }

            /// The 2 x 1 step kernel of this depth: `dst[i]` = pixel tile `i` times block
            /// `w0`.
            ///
            /// # Safety
            /// As the 2 x 2 kernel's, without `w1`.
            pub(super) unsafe fn $one(a: *const u16, a_step: usize, w0: *const u16, kbs: usize, dst: [*mut f32; 2]) {
                // SAFETY: by the function's contract.
                unsafe {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "2:",
                        "tileloadd tmm4, [{a} + {a_row}*1]",
                        concat!("tileloadd tmm5, [{a} + {a_row}*1 + ", $a_tile, "]"),
                        "tileloadd tmm6, [{w0} + {row}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm5, tmm6",
                        "add {a}, {a_step}",
                        concat!("add {w0}, ", $w_step),
                        "dec {k}",
                        "jnz 2b",
                        "tilestored [{d0} + {row}*1], tmm0",
                        "tilestored [{d1} + {row}*1], tmm1",
                        a = inout(reg) a => _,
                        w0 = inout(reg) w0 => _,
                        k = inout(reg) kbs => _,
                        a_step = in(reg) a_step,
                        a_row = in(reg) $a_row,
                        row = in(reg) 64usize,
                        d0 = in(reg) dst[0],
                        d1 = in(reg) dst[1],
                        options(nostack)
                    );
                }
            }
        };
    }

    // [`FULL_DEPTH`]: rows of 32 input channels (64 bytes), a weight tile of 16 rows.
    steps!(step_2x2, step_2x1, 64usize, "1024", "1024");
    // [`HALF_DEPTH`]: rows of 16 input channels (32 bytes), a weight tile of 8 rows.
    steps!(half_step_2x2, half_step_2x1, 32usize, "512", "512");

    /// Defines the two gathered step kernels of one tile depth (see
    /// `Tiles::gathered_step`): `$two` adds 2 pixel tiles x 2 output blocks, `$one` 2
    /// pixel tiles x 1 block, into the four spill tiles at `dst` (`[block][tile]`, 1024
    /// bytes each), which hold the sums so far when `acc`, else start from zero. Step `k`
    /// reads its pixel rows from `a + offs[k]` bytes (rows `a_row` bytes apart, the second
    /// tile `16 a_row` on) and the `k`-th weight tile of each block (`$w_step` bytes).
    macro_rules! gathered {
        ($two:ident, $one:ident, $w_step:literal) => {
            /// The 2 x 2 gathered kernel of this depth (see `gathered!`).
            ///
            /// # Safety
            /// The tiles are configured for this depth on this thread; every row read
            /// (`a + offs[k] + r * a_row`, `r < 32`) and `offs.len()` weight tiles from `w0`
            /// and `w1` are readable; `dst` is four tiles of 1024 bytes that nothing else
            /// accesses.
            pub(super) unsafe fn $two(
                a: *const u16,
                offs: &[usize],
                a_row: usize,
                (w0, w1): (*const u16, *const u16),
                acc: bool,
                dst: *mut f32,
            ) {
                // SAFETY: by the function's contract.
                unsafe {
                    start::<4>(acc, dst);
                    asm!(
                        "2:",
                        "mov {p}, qword ptr [{offs}]",
                        "add {p}, {a}",
                        "tileloadd tmm4, [{p} + {a_row}*1]",
                        "add {p}, {a_tile}",
                        "tileloadd tmm5, [{p} + {a_row}*1]",
                        "tileloadd tmm6, [{w0} + {row}*1]",
                        "tileloadd tmm7, [{w1} + {row}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm5, tmm6",
                        "tdpbf16ps tmm2, tmm4, tmm7",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        "add {offs}, 8",
                        concat!("add {w0}, ", $w_step),
                        concat!("add {w1}, ", $w_step),
                        "dec {k}",
                        "jnz 2b",
                        "tilestored [{d} + {row}*1], tmm0",
                        "tilestored [{d} + {row}*1 + 1024], tmm1",
                        "tilestored [{d} + {row}*1 + 2048], tmm2",
                        "tilestored [{d} + {row}*1 + 3072], tmm3",
                        a = in(reg) a,
                        offs = inout(reg) offs.as_ptr() => _,
                        p = out(reg) _,
                        a_row = in(reg) a_row,
                        a_tile = in(reg) a_row * 16,
                        w0 = inout(reg) w0 => _,
                        w1 = inout(reg) w1 => _,
                        k = inout(reg) offs.len() => _,
                        row = in(reg) 64usize,
                        d = in(reg) dst,
                        options(nostack)
                    );
                }
            }

            /// The 2 x 1 gathered kernel of this depth: the first two spill tiles.
            ///
            /// # Safety
            /// As the 2 x 2 kernel's, without `w1`.
            pub(super) unsafe fn $one(
                a: *const u16,
                offs: &[usize],
                a_row: usize,
                w0: *const u16,
                acc: bool,
                dst: *mut f32,
            ) {
                // SAFETY: by the function's contract.
                unsafe {
                    start::<2>(acc, dst);
                    asm!(
                        "2:",
                        "mov {p}, qword ptr [{offs}]",
                        "add {p}, {a}",
                        "tileloadd tmm4, [{p} + {a_row}*1]",
                        "add {p}, {a_tile}",
                        "tileloadd tmm5, [{p} + {a_row}*1]",
                        "tileloadd tmm6, [{w0} + {row}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm5, tmm6",
                        "add {offs}, 8",
                        concat!("add {w0}, ", $w_step),
                        "dec {k}",
                        "jnz 2b",
                        "tilestored [{d} + {row}*1], tmm0",
                        "tilestored [{d} + {row}*1 + 1024], tmm1",
                        a = in(reg) a,
                        offs = inout(reg) offs.as_ptr() => _,
                        p = out(reg) _,
                        a_row = in(reg) a_row,
                        a_tile = in(reg) a_row * 16,
                        w0 = inout(reg) w0 => _,
                        k = inout(reg) offs.len() => _,
                        row = in(reg) 64usize,
                        d = in(reg) dst,
                        options(nostack)
                    );
                }
            }
        };
    }

    /// Zeroes the first `N` (2 or 4) accumulator tiles, or loads them from `dst` when
    /// `acc`.
    ///
    /// # Safety
    /// The tiles are configured on this thread; with `acc`, `dst` holds `N` tiles of 1024
    /// bytes.
    unsafe fn start<const N: usize>(acc: bool, dst: *mut f32) {
        // SAFETY: by the function's contract.
        unsafe {
            match (acc, N) {
                (false, 2) => asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem)),
                (false, _) => asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                ),
                (true, 2) => asm!(
                    "tileloadd tmm0, [{d} + {row}*1]",
                    "tileloadd tmm1, [{d} + {row}*1 + 1024]",
                    d = in(reg) dst,
                    row = in(reg) 64usize,
                    options(nostack, readonly)
                ),
                (true, _) => asm!(
                    "tileloadd tmm0, [{d} + {row}*1]",
                    "tileloadd tmm1, [{d} + {row}*1 + 1024]",
                    "tileloadd tmm2, [{d} + {row}*1 + 2048]",
                    "tileloadd tmm3, [{d} + {row}*1 + 3072]",
                    d = in(reg) dst,
                    row = in(reg) 64usize,
                    options(nostack, readonly)
                ),
            }
        }
    }

    // [`FULL_DEPTH`]: a weight tile of 16 rows of 64 bytes.
    gathered!(gathered_2x2, gathered_2x1, "1024");
    // [`HALF_DEPTH`]: a weight tile of 8 rows of 64 bytes.
    gathered!(half_gathered_2x2, half_gathered_2x1, "512");
}
