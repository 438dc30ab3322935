//! f32 weights laid out for the CPU GEMM: `Wᵀ` (`[in, out]`) cut into column panels of
//! [`PANEL`] outputs, each panel stored contiguous as `[in, PANEL]` (the last one narrower when
//! `out` is not a multiple of it).
//!
//! Why: with a text query (8–16 rows) the linear layers read far more weight bytes than they do
//! arithmetic per byte, so the GEMM runs at the speed weights stream from memory. Read from a
//! plain `[in, out]` matrix, each step along `in` jumps a whole row ahead (3–12 KB), a new page
//! every step for the wide layers, and the hardware prefetchers lose the stream. Measured on the
//! 2-core Zen 4 build machine for the 48 matrices of a 12-layer BERT-base (340 MB, cold in
//! cache), one GEMM each: 41–57 ms at 6–16 rows from `[in, out]`, 13–18 ms from panels (26 GB/s
//! of the machine's ~38). With a whole image batch (1576 rows) both run at the FMA units' speed
//! (190–216 GFLOP/s), and the results are the same sums in the same order.
//!
//! One GEMM per panel ([`gemm`], single-threaded, 256 rows at a time; inputs of at most 16 rows
//! on a kernel of our own, `few_rows`, for AVX-512 and for AVX2 with FMA, the same bits on
//! both), panels spread over rayon's threads; the output row stretch a panel wrote gets its bias
//! and is finished (residual, GELU) right after, while it is hot.

use rayon::prelude::*;

use super::ops::OutPtr;
use super::team;

/// Outputs per panel: four 16-lane AVX-512 registers, the width of gemm's f32 microkernel.
pub const PANEL: usize = 64;

/// Rows per gemm call on a panel: a 64 KB stretch of output that is still in L2 when its bias and
/// epilogue are applied right after. A whole image batch at once (1576 rows at batch 8, 403 KB)
/// had spilled from the Zen 1 EPYC's 512 KB L2 by then, and the bias pass alone was 4.3% of the
/// batch; in chunks, ViT-B-16 at batch 8 ran 1.94–2.02 images/s against 1.76–1.89 (interleaved
/// runs). gemm's blocking along `in` depends on `in` and the caches only, not on the rows, so
/// every output is the same sum as in one call.
const GEMM_ROWS: usize = 256;

/// Steps along `in` per packing tile: the tile being written (`K_TILE × PANEL` floats, 32 KB)
/// stays in L1.
const K_TILE: usize = 128;

/// A `[out, in]` f32 weight in column panels of `Wᵀ` (see the module docs).
#[derive(Debug)]
pub struct Panels {
    data: Vec<f32>,
    in_dim: usize,
    out_dim: usize,
}

impl Panels {
    /// Packs `W` given row by row: `row(o)` is output `o`'s `in_dim` weights (PyTorch's
    /// `nn.Linear` layout). Rows may come from several tensors (q, k and v stacked).
    pub fn from_rows<'w>(
        in_dim: usize,
        out_dim: usize,
        row: &(dyn Fn(usize) -> &'w [f32] + Sync),
    ) -> Panels {
        Panels::pack(in_dim, out_dim, |col, width, panel| {
            let rows: Vec<&[f32]> = (0..width).map(|j| row(col + j)).collect();
            for r in &rows {
                assert_eq!(r.len(), in_dim, "weight row of the wrong width");
            }
            for k0 in (0..in_dim).step_by(K_TILE) {
                let k1 = (k0 + K_TILE).min(in_dim);
                for (j, r) in rows.iter().enumerate() {
                    for (k, &v) in r[k0..k1].iter().enumerate() {
                        panel[(k0 + k) * width + j] = v;
                    }
                }
            }
        })
    }

    /// Packs `Wᵀ` given row-major as `[in, out]` (cn_clip's `proj` and `text_projection`).
    pub fn from_transposed(w_t: &[f32], in_dim: usize, out_dim: usize) -> Panels {
        assert_eq!(w_t.len(), in_dim * out_dim, "weight of the wrong size");
        Panels::pack(in_dim, out_dim, |col, width, panel| {
            for (k, dst) in panel.chunks_exact_mut(width).enumerate() {
                let start = k * out_dim + col;
                dst.copy_from_slice(&w_t[start..start + width]);
            }
        })
    }

    /// Fills each panel in parallel: `fill(first column, width, panel)`.
    fn pack(
        in_dim: usize,
        out_dim: usize,
        fill: impl Fn(usize, usize, &mut [f32]) + Sync,
    ) -> Panels {
        let mut data = vec![0f32; in_dim * out_dim];
        if in_dim > 0 {
            data.par_chunks_mut(PANEL * in_dim)
                .enumerate()
                .for_each(|(p, panel)| fill(p * PANEL, panel.len() / in_dim, panel));
        }
        Panels {
            data,
            in_dim,
            out_dim,
        }
    }

    /// `W` row-major, `[out, in]` (what [`super::q8::QLinear::new`] quantizes).
    pub fn to_rows(&self) -> Vec<f32> {
        let (k, n) = (self.in_dim, self.out_dim);
        let mut w = vec![0f32; k * n];
        if k > 0 {
            w.par_chunks_mut(PANEL * k)
                .zip(self.data.par_chunks(PANEL * k))
                .for_each(|(rows, panel)| {
                    let width = panel.len() / k;
                    for k0 in (0..k).step_by(K_TILE) {
                        let k1 = (k0 + K_TILE).min(k);
                        for (j, row) in rows.chunks_exact_mut(k).enumerate() {
                            for (kk, v) in row[k0..k1].iter_mut().enumerate() {
                                *v = panel[(k0 + kk) * width + j];
                            }
                        }
                    }
                });
        }
        w
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// `out = x · Wᵀ + bias` for `x` `[m, in]` and `out` `[m, out]` (both row-major; `out`'s prior
    /// contents are ignored), then `finish(row, col, stretch)` on each output row's stretch of
    /// one panel (columns `col..col + stretch.len()`), right after the panel's GEMM.
    pub fn matmul_then(
        &self,
        x: &[f32],
        bias: Option<&[f32]>,
        out: &mut [f32],
        finish: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
    ) {
        assert_eq!(
            out.len(),
            x.len() / self.in_dim.max(1) * self.out_dim,
            "output of the wrong size"
        );
        // SAFETY: `out` is valid for all its writes and borrowed exclusively for the call.
        #[allow(unsafe_code)]
        unsafe {
            self.matmul_into(x, bias, OutPtr(out.as_mut_ptr()), finish)
        }
    }

    /// [`Panels::matmul_then`] into memory that need not be initialized: every output value is
    /// written by the GEMM before anything reads it.
    ///
    /// # Safety
    ///
    /// `dst` must be valid for writes of `m · out_dim` f32s (`m` = the rows of `x`), which nothing
    /// else reads or writes during the call.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn matmul_into(
        &self,
        x: &[f32],
        bias: Option<&[f32]>,
        dst: OutPtr,
        finish: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
    ) {
        let (k, n) = (self.in_dim, self.out_dim);
        assert!(k > 0 && n > 0, "empty weight");
        let m = x.len() / k;
        assert_eq!(x.len(), m * k, "input rows of the wrong width");
        if let Some(b) = bias {
            assert_eq!(b.len(), n, "bias of the wrong size");
        }
        if m == 0 {
            return;
        }
        let stride = PANEL * k;
        team::for_each(self.data.len().div_ceil(stride), |p| {
            let panel = &self.data[p * stride..((p + 1) * stride).min(self.data.len())];
            let (col, width) = (p * PANEL, panel.len() / k);
            #[allow(unsafe_code)]
            // SAFETY: dst is the m×n row-major output (the caller's contract); this task
            // writes and then reads columns col..col + width of it (inside, as
            // col + width ≤ n), which no other task touches. lhs is the m×k row-major `x`,
            // rhs the k×width row-major panel.
            unsafe {
                let finish_rows = |rows: std::ops::Range<usize>| {
                    for row in rows {
                        let stretch =
                            std::slice::from_raw_parts_mut(dst.get().add(row * n + col), width);
                        if let Some(b) = bias {
                            add_bias(stretch, &b[col..col + width]);
                        }
                        finish(row, col, stretch);
                    }
                };
                if few_rows_kernel(m, width) {
                    #[cfg(target_arch = "x86_64")]
                    if super::ops::simd_level() == 2 {
                        few_rows(x, m, k, panel, dst.get().add(col), n);
                    } else {
                        few_rows_avx2(x, m, k, panel, dst.get().add(col), n);
                    }
                    finish_rows(0..m);
                } else {
                    for r0 in (0..m).step_by(GEMM_ROWS) {
                        let rows = GEMM_ROWS.min(m - r0);
                        gemm::gemm(
                            rows,
                            width,
                            k,
                            dst.get().add(r0 * n + col),
                            1,
                            n as isize,
                            false,
                            x.as_ptr().add(r0 * k),
                            1,
                            k as isize,
                            panel.as_ptr(),
                            1,
                            width as isize,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                        finish_rows(r0..r0 + rows);
                    }
                }
            }
        });
    }
}

/// Inputs of at most this many rows (a text query) take [`few_rows`] instead of gemm.
pub(crate) const FEW_ROWS: usize = 16;

/// Whether an `m`-row product on a panel `width` wide runs on [`few_rows`].
fn few_rows_kernel(m: usize, width: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return m <= FEW_ROWS && width == PANEL && super::ops::simd_level() >= 1;
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (m, width);
        false
    }
}

/// `dst = x · panel` for a few rows: what a text query's linear layers are. The product is
/// bound by how fast the panel streams in from memory (each weight is used by a handful of
/// rows), so it goes straight through the panel once, asking for the lines 12 KB ahead into L2:
/// the hardware prefetchers stop at page boundaries, and with a fresh page every 16 steps along
/// `in` they never got far ahead. A query's f32 text tower on the 2-core Xeon: 20.4–23.7 ms p50
/// through gemm, 16.5–19.6 ms here (23–24 ms with the kernel but without the prefetches).
///
/// Six rows fill the registers (24 accumulators); more rows are tiles of six that take turns
/// on each [`SUB_STEPS`]-step stretch of the panel: the first tile streams it in, the others find
/// it in L1. Running each tile down the whole panel instead (as before) left memory idle while
/// the later tiles re-read it from L2: a 7–11-token query's layer took 25% longer than a
/// 6-token one's, a 14–16-token query's 55% (now 0–16% and 28–41%; sixteen rows are nearly as
/// much arithmetic as memory time). The sums are the same in either order: every output's
/// products are added step after step within each [`SUM_STEPS`] block.
///
/// # Safety
///
/// AVX-512F is available; `x` holds `m ≤ FEW_ROWS` rows of `k`, `panel` is `k × PANEL`, and
/// `dst` (row stride `n`) is valid for writes of `PANEL` values in each of `m` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
unsafe fn few_rows(x: &[f32], m: usize, k: usize, panel: &[f32], dst: *mut f32, n: usize) {
    use std::arch::x86_64::*;
    assert!(m <= FEW_ROWS && x.len() >= m * k && panel.len() >= k * PANEL);
    let tiles = m.div_ceil(TILE_ROWS);
    let stretch = if tiles == 1 { SUM_STEPS } else { SUB_STEPS };
    let zero = [_mm512_setzero_ps(); 4];
    let mut total = [zero; FEW_ROWS];
    let mut acc = [zero; FEW_ROWS];
    for k0 in (0..k).step_by(SUM_STEPS) {
        let k1 = (k0 + SUM_STEPS).min(k);
        acc[..m].fill(zero);
        for s0 in (k0..k1).step_by(stretch) {
            let steps = s0..(s0 + stretch).min(k1);
            for t in 0..tiles {
                let r0 = t * TILE_ROWS;
                let (x, acc) = (x[r0 * k..].as_ptr(), &mut acc[r0..]);
                let (rows, panel, steps) = ((m - r0).min(TILE_ROWS), panel.as_ptr(), steps.clone());
                // SAFETY: the caller's contract; the tile's rows r0.. are inside x and acc.
                unsafe {
                    if t == 0 {
                        few_rows_tile::<true>(rows, x, k, panel, steps, acc);
                    } else {
                        few_rows_tile::<false>(rows, x, k, panel, steps, acc);
                    }
                }
            }
        }
        for (t, a) in total[..m].iter_mut().zip(&acc) {
            for (t, &a) in t.iter_mut().zip(a) {
                *t = _mm512_add_ps(*t, a);
            }
        }
    }
    for (r, t) in total[..m].iter().enumerate() {
        for (j, &t) in t.iter().enumerate() {
            // SAFETY: row r < m, columns 16j..16j + 16 < PANEL: inside the caller's block.
            unsafe { _mm512_storeu_ps(dst.add(r * n + 16 * j), t) };
        }
    }
}

/// [`few_rows`] for CPUs with AVX2 and FMA but not AVX-512 (Haswell to Comet Lake, Zen 1 to
/// Zen 3), with every output the same chain of fused multiply-adds as there, so the same bits.
/// A panel row is eight 8-lane registers, so a tile runs the panel in strips of 16 or 32 columns
/// (at most 12 accumulators, the strip's weights and a broadcast in the 16 registers), the strips
/// taking turns on each [`SUB_STEPS`] stretch, each asking for its own lines [`AHEAD_AVX2`]
/// steps on. Through gemm instead, whose microkernel puts 16 rows in its lanes, a text query of
/// 6–10 tokens left a third to two thirds of them empty: on the 2-core Zen 1 EPYC (AVX2, one
/// 256-bit FMA per cycle) the f32 text tower took 48.6 ms p50 over the benchmark's queries that
/// way, 34.4–36.3 ms here with the first prefetch scheme, 33.5–34.7 with the present one.
///
/// # Safety
///
/// AVX2 and FMA are available; otherwise as [`few_rows`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(unsafe_code)]
unsafe fn few_rows_avx2(x: &[f32], m: usize, k: usize, panel: &[f32], dst: *mut f32, n: usize) {
    use std::arch::x86_64::*;
    assert!(m <= FEW_ROWS && x.len() >= m * k && panel.len() >= k * PANEL);
    let tiles = m.div_ceil(TILE_ROWS);
    // Rows spread evenly over the tiles (7 = 4 + 3, not 6 + 1): a tile's independent chains are
    // its rows times the vectors it holds per row, and a lone row's few chains would wait on the
    // FMA latency (5 cycles on Zen 1, 4 on Skylake).
    let per_tile = m.div_ceil(tiles);
    // Short stretches even for a single tile: its strips take turns on each, so a stretch (4 KB)
    // comes from memory once, for the first strip, and from L1 for the others.
    let stretch = SUB_STEPS;
    let zero = [_mm256_setzero_ps(); 8];
    let mut total = [zero; FEW_ROWS];
    let mut acc = [zero; FEW_ROWS];
    for k0 in (0..k).step_by(SUM_STEPS) {
        let k1 = (k0 + SUM_STEPS).min(k);
        acc[..m].fill(zero);
        for s0 in (k0..k1).step_by(stretch) {
            let steps = s0..(s0 + stretch).min(k1);
            for r0 in (0..m).step_by(per_tile) {
                let (x, acc) = (x[r0 * k..].as_ptr(), &mut acc[r0..]);
                let (rows, panel, steps) = ((m - r0).min(per_tile), panel.as_ptr(), steps.clone());
                // SAFETY: the caller's contract; the tile's rows r0.. are inside x and acc.
                unsafe {
                    // Up to 3 rows take 32 columns at a time, more rows 16: at most 12
                    // accumulators either way.
                    match rows {
                        1 => few_rows_strips::<1, 4>(x, k, panel, steps, acc),
                        2 => few_rows_strips::<2, 4>(x, k, panel, steps, acc),
                        3 => few_rows_strips::<3, 4>(x, k, panel, steps, acc),
                        4 => few_rows_strips::<4, 2>(x, k, panel, steps, acc),
                        5 => few_rows_strips::<5, 2>(x, k, panel, steps, acc),
                        _ => few_rows_strips::<6, 2>(x, k, panel, steps, acc),
                    }
                }
            }
        }
        for (t, a) in total[..m].iter_mut().zip(&acc) {
            for (t, &a) in t.iter_mut().zip(a) {
                *t = _mm256_add_ps(*t, a);
            }
        }
    }
    for (r, t) in total[..m].iter().enumerate() {
        for (j, &t) in t.iter().enumerate() {
            // SAFETY: row r < m, columns 8j..8j + 8 < PANEL: inside the caller's block.
            unsafe { _mm256_storeu_ps(dst.add(r * n + 8 * j), t) };
        }
    }
}

/// `R` rows of [`few_rows_avx2`] over `steps`, one strip of `V` vectors (`8·V` columns) of the
/// panel after another: adds `x[r][kk] · panel[kk]` to `acc[r]` for each step `kk` in order.
/// Each strip asks for the lines it will read [`AHEAD_AVX2`] steps on.
///
/// # Safety
///
/// As [`few_rows_rows`], with AVX2 and FMA; `V` divides 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(unsafe_code)]
unsafe fn few_rows_strips<const R: usize, const V: usize>(
    x: *const f32,
    k: usize,
    panel: *const f32,
    steps: std::ops::Range<usize>,
    acc: &mut [[std::arch::x86_64::__m256; 8]],
) {
    use std::arch::x86_64::*;
    assert!(acc.len() >= R && 8 % V == 0);
    for strip in 0..8 / V {
        let v0 = strip * V;
        let mut sums = [[_mm256_setzero_ps(); V]; R];
        for (s, a) in sums.iter_mut().zip(&acc[..R]) {
            s.copy_from_slice(&a[v0..v0 + V]);
        }
        for kk in steps.clone() {
            // SAFETY (all below): kk < k, so the panel row kk and x[r·k + kk] are in bounds; a
            // prefetch never faults, so its address may run past the panel's end.
            let w = unsafe { panel.add(kk * PANEL) };
            for line in v0 / 2..(v0 + V) / 2 {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(AHEAD_AVX2 * PANEL + 16 * line).cast());
            }
            let mut wv = [_mm256_setzero_ps(); V];
            for (j, wv) in wv.iter_mut().enumerate() {
                *wv = unsafe { _mm256_loadu_ps(w.add(8 * (v0 + j))) };
            }
            for (r, sums) in sums.iter_mut().enumerate() {
                let xv = _mm256_set1_ps(unsafe { *x.add(r * k + kk) });
                for (a, &w) in sums.iter_mut().zip(&wv) {
                    *a = _mm256_fmadd_ps(w, xv, *a);
                }
            }
        }
        for (a, s) in acc[..R].iter_mut().zip(&sums) {
            a[v0..v0 + V].copy_from_slice(s);
        }
    }
}

/// Rows of one [`few_rows`] tile: 6 × 4 accumulators, and 4 registers for the panel's row.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const TILE_ROWS: usize = 6;

/// Steps along `in` summed on their own before joining the total, as gemm sums in blocks too:
/// one chain of 768–5120 FMAs doubled the rounding error of the full-size embeddings.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const SUM_STEPS: usize = 256;

/// Steps along `in` (4 KB of panel) each tile runs in turn when there are several.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const SUB_STEPS: usize = 16;

/// Steps along `in` the lead tile's prefetches run ahead: 48 × 256 bytes. (Distances of 16–96
/// steps and stretches of 4–64 steps all measured within noise of each other on the Xeon; so did
/// spreading the prefetches over all tiles.)
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const AHEAD: usize = 48;

/// [`AHEAD`] for [`few_rows_avx2`], into L1: 24 steps (6 KB), each strip of every tile asking for
/// its own lines (a 16-column strip reads one 64-byte line a step), so the requests go out evenly
/// all the time. On the Zen 1 EPYC, text p50 in interleaved runs, against the earlier scheme (the
/// first tile's first strip asking for whole rows 8 steps on, the rest of the stretch asking for
/// nothing): a 6-token query 22.8–23.0 ms (was 25.5–26.0), 7 tokens 25.2–26.5 (30.9–32.8), 13
/// tokens 42.9–43.9 (44.8–45.0), the benchmark's eight queries 33.5–34.7 (35.3–39.1); 7 tokens
/// on one core 46.8–47.0 (55.6–61.1). 16 and 32 steps were 0–2 ms slower than 24; only the
/// first tile asking, 2–3 ms slower; farther prefetches into L2 on top, slower still.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const AHEAD_AVX2: usize = 24;

/// One tile of `rows` (1–6) rows of [`few_rows`] over `steps`; the `LEAD` tile prefetches.
///
/// # Safety
///
/// As [`few_rows_rows`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
unsafe fn few_rows_tile<const LEAD: bool>(
    rows: usize,
    x: *const f32,
    k: usize,
    panel: *const f32,
    steps: std::ops::Range<usize>,
    acc: &mut [[std::arch::x86_64::__m512; 4]],
) {
    // SAFETY: the caller's contract.
    unsafe {
        match rows {
            1 => few_rows_rows::<1, LEAD>(x, k, panel, steps, acc),
            2 => few_rows_rows::<2, LEAD>(x, k, panel, steps, acc),
            3 => few_rows_rows::<3, LEAD>(x, k, panel, steps, acc),
            4 => few_rows_rows::<4, LEAD>(x, k, panel, steps, acc),
            5 => few_rows_rows::<5, LEAD>(x, k, panel, steps, acc),
            _ => few_rows_rows::<TILE_ROWS, LEAD>(x, k, panel, steps, acc),
        }
    }
}

/// `R` rows of [`few_rows`] over `steps`: adds `x[r][kk] · panel[kk]` to `acc[r]` for each step
/// `kk` in order (`R × 4` accumulators of 16 lanes).
///
/// # Safety
///
/// As [`few_rows`], for rows `0..R` of `x` (stride `k`), `steps` within `0..k`, and
/// `acc.len() ≥ R`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
unsafe fn few_rows_rows<const R: usize, const LEAD: bool>(
    x: *const f32,
    k: usize,
    panel: *const f32,
    steps: std::ops::Range<usize>,
    acc: &mut [[std::arch::x86_64::__m512; 4]],
) {
    use std::arch::x86_64::*;
    let mut sums: [[__m512; 4]; R] = acc[..R].try_into().expect("R accumulators");
    for kk in steps {
        // SAFETY (all below): kk < k, so the panel row kk and x[r·k + kk] are in bounds; a
        // prefetch never faults, so its address may run past the panel's end.
        let w = unsafe { panel.add(kk * PANEL) };
        if LEAD {
            for line in 0..4 {
                _mm_prefetch::<_MM_HINT_T1>(w.wrapping_add(AHEAD * PANEL + 16 * line).cast());
            }
        }
        let wv = unsafe {
            [
                _mm512_loadu_ps(w),
                _mm512_loadu_ps(w.add(16)),
                _mm512_loadu_ps(w.add(32)),
                _mm512_loadu_ps(w.add(48)),
            ]
        };
        for (r, sums) in sums.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(unsafe { *x.add(r * k + kk) });
            for (a, &w) in sums.iter_mut().zip(&wv) {
                *a = _mm512_fmadd_ps(w, xv, *a);
            }
        }
    }
    acc[..R].copy_from_slice(&sums);
}

simd_fn! {
    /// `values += bias`, on a stretch the GEMM has just written (PyTorch's `addmm` adds the bias
    /// to the product's sum in one rounding too).
    fn add_bias(values: &mut [f32], bias: &[f32]) {
        for (v, &b) in values.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for o in 0..n {
                out[r * n + o] = (0..k).map(|i| x[r * k + i] * w[o * k + i]).sum();
            }
        }
        out
    }

    /// A `[n, k]` weight and `m` input rows of `k`, deterministic values in [−1, 1].
    fn operands(m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
        let w = (0..n * k)
            .map(|i| ((i * 7919) % 201) as f32 / 100.0 - 1.0)
            .collect();
        let x = (0..m * k)
            .map(|i| ((i * 104729) % 97) as f32 / 50.0 - 1.0)
            .collect();
        (w, x)
    }

    #[test]
    fn a_row_comes_out_the_same_whatever_rows_come_with_it() {
        // Text queries run on the few-row kernel, whose tiles take turns along `in`: each row's
        // sums must still be added in the same order as when it is alone.
        for (m, k) in [(7, 530), (11, 768), (16, 300), (16, 3072)] {
            let n = 2 * PANEL;
            let (w, x) = operands(m, k, n);
            let p = Panels::from_rows(k, n, &|o| &w[o * k..(o + 1) * k]);
            let mut all = vec![0f32; m * n];
            p.matmul_then(&x, None, &mut all, &|_, _, _| {});
            for r in 0..m {
                let mut alone = vec![0f32; n];
                p.matmul_then(&x[r * k..(r + 1) * k], None, &mut alone, &|_, _, _| {});
                let together = &all[r * n..(r + 1) * n];
                if few_rows_kernel(m, PANEL) {
                    assert_eq!(together, &alone[..], "{m}×{k}: row {r}");
                } else {
                    for (a, b) in together.iter().zip(&alone) {
                        assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{m}×{k}: row {r}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_batch_in_gemm_chunks_sums_as_its_parts_do() {
        // Tall inputs go to gemm GEMM_ROWS rows at a time; an image's outputs must not depend on
        // where its rows fall in those chunks (the same image alone or third in a batch).
        let (m, k, n) = (2 * GEMM_ROWS + 90, 768, 2 * PANEL);
        let (w, x) = operands(m, k, n);
        let p = Panels::from_rows(k, n, &|o| &w[o * k..(o + 1) * k]);
        let bias: Vec<f32> = (0..n).map(|o| o as f32 / 8.0).collect();
        let mut all = vec![0f32; m * n];
        p.matmul_then(&x, Some(&bias), &mut all, &|_, _, _| {});
        let split = GEMM_ROWS / 2 + 3;
        let mut parts = vec![0f32; m * n];
        let (head, tail) = parts.split_at_mut(split * n);
        p.matmul_then(&x[..split * k], Some(&bias), head, &|_, _, _| {});
        p.matmul_then(&x[split * k..], Some(&bias), tail, &|_, _, _| {});
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&all), bits(&parts));
    }

    #[test]
    fn few_row_kernels_are_the_same_fma_chains_on_every_cpu() {
        // The AVX-512 and AVX2 kernels both promise each output `Σ_blocks (Σ_steps fma)` in this
        // exact order, so a text query's linear layers give the same bits on either CPU.
        for (m, k) in [
            (1, 5),
            (2, 300),
            (6, 768),
            (7, 530),
            (10, 257),
            (13, 768),
            (16, 1024),
        ] {
            let n = 2 * PANEL;
            if !few_rows_kernel(m, PANEL) {
                return; // neither AVX-512 nor AVX2 with FMA: gemm, no promise of these bits
            }
            let (w, x) = operands(m, k, n);
            let p = Panels::from_rows(k, n, &|o| &w[o * k..(o + 1) * k]);
            let mut got = vec![0f32; m * n];
            p.matmul_then(&x, None, &mut got, &|_, _, _| {});
            for r in 0..m {
                for o in 0..n {
                    let mut total = 0f32;
                    for block in (0..k).step_by(SUM_STEPS) {
                        let mut sum = 0f32;
                        for i in block..(block + SUM_STEPS).min(k) {
                            sum = w[o * k + i].mul_add(x[r * k + i], sum);
                        }
                        total += sum;
                    }
                    assert_eq!(
                        got[r * n + o].to_bits(),
                        total.to_bits(),
                        "{m}×{k}: [{r}, {o}]"
                    );
                }
            }
        }
    }

    /// Packing from either layout, unpacking, and the product (narrow last panel, one row,
    /// several panels, a tall input) against a naive one.
    #[test]
    fn panels_pack_unpack_and_multiply() {
        for (m, k, n) in [
            (1, 3, 1),
            (7, 5, 40),
            (3, 130, 64),
            (9, 64, 200),
            (70, 33, 129),
            (16, 300, 192),
            (11, 768, 64),
            (7, 530, 64),
        ] {
            let (w, x) = operands(m, k, n);
            let p = Panels::from_rows(k, n, &|o| &w[o * k..(o + 1) * k]);
            assert_eq!(p.to_rows(), w, "{m}×{k}×{n}: unpack");
            let mut w_t = vec![0f32; k * n];
            for o in 0..n {
                for i in 0..k {
                    w_t[i * n + o] = w[o * k + i];
                }
            }
            assert_eq!(Panels::from_transposed(&w_t, k, n).data, p.data);
            let bias: Vec<f32> = (0..n).map(|o| o as f32 / 8.0).collect();
            let mut out = vec![0f32; m * n];
            p.matmul_then(&x, Some(&bias), &mut out, &|_, _, s| {
                s.iter_mut().for_each(|v| *v *= 2.0)
            });
            for (i, (got, want)) in out.iter().zip(naive(&x, &w, m, k, n)).enumerate() {
                let want = 2.0 * (bias[i % n] + want);
                assert!(
                    (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{got} vs {want}"
                );
            }
        }
    }
}
