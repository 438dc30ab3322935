//! 8-bit linear layers for `--quantize q8`: int8 weights and activations, integer dot products,
//! f32 scales.
//!
//! Scheme (the usual W8A8 one, chosen so every step is exact or a single rounding):
//! - **Weights**: per output channel `n`, `s_w[n] = max|W[n, :]| / 127`, `q_w = round(W / s_w)` in
//!   `[−127, 127]`, stored `+128` as unsigned bytes.
//! - **Activations**: per row `r` and per block of [`BLOCK`] inputs, `s_a = max|x| / 127`,
//!   `q_a = round(x / s_a)` in `[−127, 127]` (signed). Per-block scales keep a few large inputs
//!   from crushing the resolution of a whole 3072-wide row.
//! - **Product**: `vpdpbusd` multiplies unsigned × signed bytes and sums groups of four into i32
//!   lanes. With the weights offset by 128, `Σ (q_w + 128)·q_a = Σ q_w·q_a + 128·Σ q_a`, so the
//!   row's block sum of `q_a` (computed while quantizing) removes the offset exactly. Each block's
//!   integer sum becomes `s_a · (acc − 128·Σq_a)` in f32, and the row total `s_w[n] · Σ_blocks + b`.
//!
//! Kernels: AVX512-VNNI (6 rows × 32 columns per step, 64 byte-products per instruction) where the
//! CPU has it, detected at run time; elsewhere a portable kernel on the same packed layout. Both do
//! the same integer sums and the same f32 operations in the same order, so they agree bit for bit
//! (tested). Work is split over rayon by 32-column stripes of the output.

use rayon::prelude::*;

use super::ops::{lane_max, prefetch_for_write, OutPtr};
use super::team;

/// Inputs per activation-scale block.
pub const BLOCK: usize = 128;
/// Output columns per packed stripe: two 512-bit vectors of 16 i32 lanes.
const NR: usize = 32;
/// Rows per microkernel step: 6 rows × 2 vectors of i32 and of f32 accumulators, 2 weight
/// vectors and a broadcast fill 27 of the 32 vector registers.
const MR: usize = 6;

/// A `[out, in]` weight matrix quantized and packed for [`QLinear::matmul`].
#[derive(Debug, Clone)]
pub struct QLinear {
    /// Input width (`k`).
    in_dim: usize,
    /// Output width (`n`).
    out_dim: usize,
    /// `k` rounded up to a whole number of [`BLOCK`]s (zero weights in the padding).
    k_pad: usize,
    /// Stripes of [`NR`] columns: for each group of 4 inputs, 32 columns × 4 bytes
    /// (`q_w + 128`), so one 64-byte load feeds 16 columns × 4 inputs.
    packed: Vec<u8>,
    /// Per-column weight scale `s_w`, padded to whole stripes (zeros).
    scales: Vec<f32>,
}

/// One row block of quantized activations.
struct QRows {
    /// `[rows, k_pad]` signed bytes.
    q: Vec<i8>,
    /// `[rows, blocks]` activation scales.
    scale: Vec<f32>,
    /// `[rows, blocks]` `128 · Σ q_a` per block (the unsigned-offset correction), as f32.
    offset: Vec<f32>,
}

impl QLinear {
    /// Quantizes a row-major `[out_dim, in_dim]` f32 weight.
    pub fn new(weight: &[f32], out_dim: usize, in_dim: usize) -> QLinear {
        assert_eq!(weight.len(), out_dim * in_dim, "weight shape");
        let k_pad = in_dim.div_ceil(BLOCK) * BLOCK;
        let n_pad = out_dim.div_ceil(NR) * NR;
        let mut scales = vec![0f32; n_pad];
        let mut packed = vec![128u8; n_pad * k_pad];
        for (n, row) in weight.chunks_exact(in_dim).enumerate() {
            let s = abs_max(row) / 127.0;
            scales[n] = s;
            let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
            let (stripe, col) = (n / NR, n % NR);
            let base = stripe * k_pad * NR;
            for (k, &v) in row.iter().enumerate() {
                let q = round_to_i32(v * inv).clamp(-127, 127);
                packed[base + (k / 4) * NR * 4 + col * 4 + k % 4] = (q + 128) as u8;
            }
        }
        QLinear {
            in_dim,
            out_dim,
            k_pad,
            packed,
            scales,
        }
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// `x·Wᵀ` for row-major `x` of `[rows, in_dim]`, into `out` (`[rows, out_dim]`), plus `bias`.
    pub fn matmul(&self, x: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
        self.matmul_with(x, bias, out, Kernel::detect());
    }

    /// [`QLinear::matmul`], then `finish(row, first_column, values)` on every stretch of output
    /// while it is still in cache (an activation or a residual add, fused).
    pub fn matmul_then(
        &self,
        x: &[f32],
        bias: Option<&[f32]>,
        out: &mut [f32],
        finish: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
    ) {
        self.run_into(x, bias, out, Kernel::detect(), finish);
    }

    /// [`QLinear::matmul_then`] into memory that need not be initialized: every output value is
    /// written before anything reads it.
    ///
    /// # Safety
    ///
    /// `dst` must be valid for writes of `rows · out_dim` f32s (`rows` = the rows of `x`), which
    /// nothing else reads or writes during the call.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn matmul_into(
        &self,
        x: &[f32],
        bias: Option<&[f32]>,
        dst: OutPtr,
        finish: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
    ) {
        // SAFETY: the caller's contract.
        unsafe { self.run(x, bias, dst, Kernel::detect(), finish) }
    }

    /// [`QLinear::matmul`] on a chosen kernel (tests compare them).
    pub fn matmul_with(&self, x: &[f32], bias: Option<&[f32]>, out: &mut [f32], kernel: Kernel) {
        self.run_into(x, bias, out, kernel, &|_, _, _| {});
    }

    /// [`QLinear::run`] into a slice of the output's size.
    fn run_into(
        &self,
        x: &[f32],
        bias: Option<&[f32]>,
        out: &mut [f32],
        kernel: Kernel,
        finish: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
    ) {
        assert_eq!(
            out.len(),
            x.len() / self.in_dim * self.out_dim,
            "output shape"
        );
        // SAFETY: `out` is valid for all its writes and borrowed exclusively for the call.
        #[allow(unsafe_code)]
        unsafe {
            self.run(x, bias, OutPtr(out.as_mut_ptr()), kernel, finish)
        }
    }

    /// # Safety
    ///
    /// As [`QLinear::matmul_into`].
    #[allow(unsafe_code)]
    unsafe fn run(
        &self,
        x: &[f32],
        bias: Option<&[f32]>,
        out_ptr: OutPtr,
        kernel: Kernel,
        finish: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
    ) {
        let rows = x.len() / self.in_dim;
        assert_eq!(x.len(), rows * self.in_dim, "input shape");
        if let Some(b) = bias {
            assert_eq!(b.len(), self.out_dim, "bias shape");
        }
        // Checked once here, not per microkernel call: `Kernel::run` relies on it.
        assert!(
            kernel == Kernel::Portable || kernel == Kernel::detect(),
            "{kernel:?} is not supported by this CPU"
        );
        let a = quantize_rows(x, self.in_dim, self.k_pad);
        let stripes = self.out_dim.div_ceil(NR);
        let n = self.out_dim;
        team::for_each(stripes, |stripe| {
            let w = &self.packed[stripe * self.k_pad * NR..(stripe + 1) * self.k_pad * NR];
            let col = stripe * NR;
            let cols = NR.min(n - col);
            let out = Stripe {
                scales: self.scales[col..col + NR]
                    .try_into()
                    .expect("scales padded"),
                bias: bias.map(|b| &b[col..col + cols]),
                cols,
            };
            for r0 in (0..rows).step_by(MR) {
                let mr = MR.min(rows - r0);
                // The next tile but one's output lines, while this one computes.
                for r in (r0 + 2 * MR..rows).take(MR) {
                    for c in (0..cols).step_by(16) {
                        prefetch_for_write(out_ptr.get().wrapping_add(r * n + col + c));
                    }
                }
                // SAFETY: rows r0..r0+mr, columns col..col+cols lie inside the [rows, n] output
                // (the caller's contract), and only this stripe's task touches them.
                #[allow(unsafe_code)]
                unsafe {
                    kernel.run(
                        &a,
                        r0,
                        mr,
                        self.k_pad,
                        w,
                        &out,
                        out_ptr.get().add(r0 * n + col),
                        n,
                    )
                };
                for i in 0..mr {
                    // SAFETY: as above; the kernel wrote these `cols` values.
                    #[allow(unsafe_code)]
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(out_ptr.get().add((r0 + i) * n + col), cols)
                    };
                    finish(r0 + i, col, dst);
                }
            }
        });
    }
}

/// What a microkernel needs to turn one stripe's sums into outputs:
/// `out[c] = sum[c] · s_w[c] + bias[c]` for the stripe's first `cols` columns.
struct Stripe<'a> {
    scales: &'a [f32; NR],
    bias: Option<&'a [f32]>,
    cols: usize,
}

/// Rounds half away from zero, like `f32::round`, but as an add and a truncating conversion that
/// vectorize (`round` is a libm call on baseline x86-64). Inputs are within ±127.5 here; a value a
/// hair below .5 may round up, which is within the quantization error anyway.
#[inline]
fn round_to_i32(v: f32) -> i32 {
    (v + 0.5f32.copysign(v)) as i32
}

/// [`round_to_i32`] clamped to `[−127, 127]`, written so that it vectorizes: the float is clamped
/// before a plain truncating conversion (Rust's saturating `as i32` has to check for NaN and range
/// per element, which kept this loop scalar: 13% of a q8 image batch). Same value as
/// `round_to_i32(v).clamp(-127, 127)` for every non-NaN `v`; NaN gives −127.
#[inline(always)]
// Not `clamp`: it passes NaN through, and the conversion below needs a number.
#[allow(clippy::manual_clamp)]
fn round_clamped(v: f32) -> i32 {
    let r = (v + 0.5f32.copysign(v)).max(-127.0).min(127.0);
    // SAFETY: `r` is a number in [−127, 127] (`max` returns the other operand for NaN), so the
    // truncation fits in an i32.
    #[allow(unsafe_code)]
    unsafe {
        r.to_int_unchecked::<i32>()
    }
}

/// `max |x|` (0 for none; NaNs ignored).
#[inline(always)]
fn abs_max(x: &[f32]) -> f32 {
    lane_max(x, f32::abs).max(0.0)
}

/// Quantizes every row per [`BLOCK`] (see the module docs).
fn quantize_rows(x: &[f32], k: usize, k_pad: usize) -> QRows {
    let rows = x.len() / k;
    let blocks = k_pad / BLOCK;
    let mut q = vec![0i8; rows * k_pad];
    let mut scale = vec![0f32; rows * blocks];
    let mut offset = vec![0f32; rows * blocks];
    q.par_chunks_mut(k_pad)
        .zip(scale.par_chunks_mut(blocks))
        .zip(offset.par_chunks_mut(blocks))
        .zip(x.par_chunks(k))
        .for_each(|(((q, scale), offset), x)| quantize_row(x, q, scale, offset));
    QRows { q, scale, offset }
}

simd_fn! {
    /// One row of [`quantize_rows`]: per block, its scale, its values in `i8` and its offset
    /// correction.
    fn quantize_row(x: &[f32], q: &mut [i8], scale: &mut [f32], offset: &mut [f32]) {
        let k = x.len();
        for (b, (scale, offset)) in scale.iter_mut().zip(offset.iter_mut()).enumerate() {
            let src = &x[(b * BLOCK).min(k)..((b + 1) * BLOCK).min(k)];
            let s = abs_max(src) / 127.0;
            let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
            let mut sum = 0i32;
            for (d, &v) in q[b * BLOCK..b * BLOCK + src.len()].iter_mut().zip(src) {
                let v = round_clamped(v * inv);
                *d = v as i8;
                sum += v;
            }
            *scale = s;
            *offset = (128 * sum) as f32;
        }
    }
}

/// Which microkernel runs the integer products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust on the packed layout; any CPU.
    Portable,
    /// AVX512-VNNI `vpdpbusd` (x86-64 with `avx512f`, `avx512bw`, `avx512vnni`).
    Avx512Vnni,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                return Kernel::Avx512Vnni;
            }
        }
        Kernel::Portable
    }

    /// Writes rows `r0..r0+mr` of one stripe to `dst` (row `r0`'s first column; rows `ldd`
    /// apart): `Σ_blocks s_a · (Σ_k q_w·q_a)`, then times the column scale plus the bias.
    ///
    /// # Safety
    ///
    /// `dst` must be valid for writes of `out.cols` values at each of the `mr` rows.
    #[allow(unsafe_code, clippy::too_many_arguments)]
    unsafe fn run(
        self,
        a: &QRows,
        r0: usize,
        mr: usize,
        k_pad: usize,
        w: &[u8],
        out: &Stripe,
        dst: *mut f32,
        ldd: usize,
    ) {
        match self {
            // SAFETY: the caller's contract.
            Kernel::Portable => unsafe { portable(a, r0, mr, k_pad, w, out, dst, ldd) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                // SAFETY: the CPU supports the target features (`QLinear::run` checks it once
                // per product before any microkernel runs); `vnni` reads only inside `a.q`
                // (rows r0..r0+mr, k_pad each) and `w` (k_pad·NR bytes), whose sizes it
                // asserts, and writes what the caller vouches for.
                unsafe {
                    // One instantiation per row count, so the accumulators stay in registers.
                    match mr {
                        6 => vnni::<6>(a, r0, k_pad, w, out, dst, ldd),
                        5 => vnni::<5>(a, r0, k_pad, w, out, dst, ldd),
                        4 => vnni::<4>(a, r0, k_pad, w, out, dst, ldd),
                        3 => vnni::<3>(a, r0, k_pad, w, out, dst, ldd),
                        2 => vnni::<2>(a, r0, k_pad, w, out, dst, ldd),
                        _ => vnni::<1>(a, r0, k_pad, w, out, dst, ldd),
                    }
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512Vnni => unreachable!("AVX512-VNNI is x86-64 only"),
        }
    }
}

/// # Safety
///
/// As [`Kernel::run`].
#[allow(unsafe_code, clippy::too_many_arguments)]
unsafe fn portable(
    a: &QRows,
    r0: usize,
    mr: usize,
    k_pad: usize,
    w: &[u8],
    out: &Stripe,
    dst: *mut f32,
    ldd: usize,
) {
    let blocks = k_pad / BLOCK;
    for i in 0..mr {
        let r = r0 + i;
        let row = &a.q[r * k_pad..(r + 1) * k_pad];
        let mut t = [0f32; NR];
        for b in 0..blocks {
            let mut acc = [0i32; NR];
            for k4 in b * BLOCK / 4..(b + 1) * BLOCK / 4 {
                let wq = &w[k4 * NR * 4..(k4 + 1) * NR * 4];
                let aq = &row[k4 * 4..k4 * 4 + 4];
                for (c, acc) in acc.iter_mut().enumerate() {
                    for j in 0..4 {
                        *acc += wq[c * 4 + j] as i32 * aq[j] as i32;
                    }
                }
            }
            let (s, off) = (a.scale[r * blocks + b], a.offset[r * blocks + b]);
            for (t, &acc) in t.iter_mut().zip(&acc) {
                *t = s.mul_add(acc as f32 - off, *t);
            }
        }
        for c in 0..out.cols {
            let v = t[c] * out.scales[c] + out.bias.map_or(0.0, |b| b[c]);
            // SAFETY: c < cols, inside the caller's row.
            unsafe { dst.add(i * ldd + c).write(v) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(unsafe_code)]
unsafe fn vnni<const M: usize>(
    a: &QRows,
    r0: usize,
    k_pad: usize,
    w: &[u8],
    out: &Stripe,
    dst: *mut f32,
    ldd: usize,
) {
    use std::arch::x86_64::*;
    assert!(M >= 1 && M <= MR);
    assert!(a.q.len() >= (r0 + M) * k_pad && w.len() >= k_pad * NR);
    assert!(out.cols >= 1 && out.cols <= NR && out.bias.is_none_or(|b| b.len() == out.cols));
    let blocks = k_pad / BLOCK;
    let mut fa = [[_mm512_setzero_ps(); 2]; M];
    let wp = w.as_ptr();
    for b in 0..blocks {
        let mut acc = [[_mm512_setzero_si512(); 2]; M];
        for k4 in b * BLOCK / 4..(b + 1) * BLOCK / 4 {
            // SAFETY: k4 < k_pad/4, so bytes k4·128 .. k4·128+128 lie inside `w`.
            let w0 = _mm512_loadu_si512(wp.add(k4 * NR * 4) as *const _);
            let w1 = _mm512_loadu_si512(wp.add(k4 * NR * 4 + 64) as *const _);
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row r0+i < rows, and k4·4+4 ≤ k_pad: 4 bytes inside `a.q`.
                let ap = a.q.as_ptr().add((r0 + i) * k_pad + k4 * 4) as *const i32;
                let av = _mm512_set1_epi32(ap.read_unaligned());
                acc[0] = _mm512_dpbusd_epi32(acc[0], w0, av);
                acc[1] = _mm512_dpbusd_epi32(acc[1], w1, av);
            }
        }
        for i in 0..M {
            let r = r0 + i;
            let s = _mm512_set1_ps(a.scale[r * blocks + b]);
            let off = _mm512_set1_ps(a.offset[r * blocks + b]);
            for h in 0..2 {
                let v = _mm512_sub_ps(_mm512_cvtepi32_ps(acc[i][h]), off);
                fa[i][h] = _mm512_fmadd_ps(s, v, fa[i][h]);
            }
        }
    }
    // Columns h·16.. of the stripe that exist, as a lane mask per half.
    let live = |h: usize| -> __mmask16 {
        let n = out.cols.saturating_sub(16 * h).min(16);
        ((1u32 << n) - 1) as __mmask16
    };
    // The portable kernel's `t · s_w + b`: a separate multiply and add, not a fused one.
    for h in 0..2 {
        let mask = live(h);
        let scale = _mm512_loadu_ps(out.scales.as_ptr().add(16 * h));
        let bias = match out.bias {
            // SAFETY: the mask keeps the load inside the stripe's `cols` bias values.
            Some(b) => _mm512_maskz_loadu_ps(mask, b.as_ptr().wrapping_add(16 * h)),
            None => _mm512_setzero_ps(),
        };
        for (i, fa) in fa.iter().enumerate() {
            let v = _mm512_add_ps(_mm512_mul_ps(fa[h], scale), bias);
            // SAFETY: the caller's contract; the mask keeps the store inside `cols`.
            _mm512_mask_storeu_ps(dst.add(i * ldd + 16 * h), mask, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn reference(w: &[f32], x: &[f32], n: usize, k: usize, bias: &[f32]) -> Vec<f32> {
        let rows = x.len() / k;
        let mut out = vec![0f32; rows * n];
        for r in 0..rows {
            for c in 0..n {
                let dot: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[c * k + i] as f64)
                    .sum();
                out[r * n + c] = dot as f32 + bias[c];
            }
        }
        out
    }

    /// Odd shapes (rows not a multiple of 4, columns not of 32, inputs not of the block) and a
    /// row with a large outlier: the kernels agree bit for bit and stay within the quantization
    /// error of the exact product.
    #[test]
    fn kernels_agree_and_match_f32() {
        let mut seed = 7;
        for &(rows, n, k) in &[(1, 32, 128), (7, 50, 200), (13, 96, 768), (4, 33, 64)] {
            let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed) * 0.05).collect();
            let mut x: Vec<f32> = (0..rows * k).map(|_| lcg(&mut seed)).collect();
            x[k / 2] = 40.0;
            let bias: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let q = QLinear::new(&w, n, k);
            let mut portable = vec![0f32; rows * n];
            q.matmul_with(&x, Some(&bias), &mut portable, Kernel::Portable);
            if Kernel::detect() != Kernel::Portable {
                let mut fast = vec![0f32; rows * n];
                q.matmul_with(&x, Some(&bias), &mut fast, Kernel::detect());
                assert_eq!(portable, fast, "{rows}x{n}x{k}");
            }
            let exact = reference(&w, &x, n, k, &bias);
            let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = portable
                .iter()
                .zip(&exact)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                // The first row's block with the outlier is quantized 40× coarser: a few percent.
                worst < 0.05 * scale,
                "{rows}x{n}x{k}: error {worst} of {scale}"
            );
            assert!(worst > 0.0, "quantization must show");
        }
    }

    /// The vectorizing rounding equals the saturating one, clamped, at the edges of the range,
    /// at ties and past the ends.
    #[test]
    fn clamped_rounding_matches_the_saturating_one() {
        let mut seed = 3;
        let edges = [
            0.0,
            -0.0,
            0.49999997,
            0.5,
            1.5,
            2.5,
            126.5,
            126.49999,
            127.0,
            127.49999,
            127.5,
            127.9,
            128.0,
            1e9,
            f32::MAX,
            f32::INFINITY,
        ];
        let values = edges
            .iter()
            .flat_map(|&v| [v, -v])
            .chain((0..100_000).map(|_| lcg(&mut seed) * 140.0));
        for v in values {
            assert_eq!(round_clamped(v), round_to_i32(v).clamp(-127, 127), "{v}");
        }
    }

    #[test]
    fn zero_rows_and_weights_give_the_bias() {
        let q = QLinear::new(&[0.0; 64 * 40], 40, 64);
        let bias: Vec<f32> = (0..40).map(|i| i as f32).collect();
        let mut out = vec![1f32; 2 * 40];
        q.matmul(&[0.0; 2 * 64], Some(&bias), &mut out);
        assert_eq!(&out[..40], &bias[..]);
        assert_eq!(&out[40..], &bias[..]);
    }
}
