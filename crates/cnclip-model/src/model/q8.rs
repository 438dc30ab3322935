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
//!   integer sum becomes `s_a · (acc − 128·Σq_a)` in f32, and the row total `s_w[n] · Σ_blocks + b`
//!   (each a multiply, then an add: not fused, so that CPUs without FMA, such as the Celeron J3455
//!   and J4125 of many NAS boxes, compute the same values without a libm call per block).
//!
//! Kernels, picked at run time ([`Kernel::detect`]): AVX512-VNNI (6 rows × 32 columns per step,
//! 64 byte-products per instruction), AVX-VNNI (the same on 256-bit vectors, 16 columns at a
//! time), AVX2 without VNNI (the weight bytes widened to 16 bits for `vpmaddwd`, 8 columns at a
//! time), SSE2 (the same on 128 bits), NEON with `sdot` where the CPU has the dot-product
//! extension and `smull` + `sadalp` otherwise, and a portable one for other CPUs, all on the same
//! packed layout. They do the same integer sums and the same f32 operations in the same order, so
//! they agree bit for bit (tested; the NEON ones under qemu, not timed): an index built on one CPU
//! matches one built on another. On the Xeon build machine a 197×768→3072 product takes 0.90 ms
//! (AVX512-VNNI), 1.50 (AVX-VNNI), 4.4 (AVX2), 10.2 (SSE2) and 128 (portable), against 3.0 ms for
//! the f32 panels with AVX-512 FMA. `CNCLIP_Q8_KERNEL` (a [`Kernel::name`]) forces a kernel the
//! CPU has, for benchmarks.
//! Work is split over rayon by 32-column stripes of the output.

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
    /// The same values widened to `i16`, for [`Kernel::Sse2`] and [`Kernel::Avx2`] only (empty
    /// otherwise): their `pmaddwd` multiplies 16-bit numbers.
    wide: Vec<i16>,
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
            kernel.supported(),
            "{kernel:?} is not supported by this CPU"
        );
        let mut a = quantize_rows(x, self.in_dim, self.k_pad);
        if matches!(kernel, Kernel::Sse2 | Kernel::Avx2) {
            a.wide = a.q.iter().map(|&v| i16::from(v)).collect();
        }
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
    QRows {
        q,
        wide: Vec::new(),
        scale,
        offset,
    }
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

/// Which microkernel runs the integer products. All of them compute the same integer sums and
/// the same f32 operations in the same order, so they agree bit for bit (tested): an index built
/// on one CPU matches one built on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust on the packed layout; any CPU.
    Portable,
    /// SSE2 `pmaddwd` (every x86-64 CPU; the one for those without AVX2, such as the Celeron
    /// J3455 and J4125 of many NAS boxes).
    Sse2,
    /// AVX2 `vpmaddwd` on the weight bytes widened to 16 bits, for x86-64 CPUs without VNNI
    /// (Haswell to Comet Lake, Zen 1-3: most NAS and older desktop CPUs).
    Avx2,
    /// AVX-VNNI `vpdpbusd` on 256-bit vectors (Alder Lake and later cores, Intel's N100-class
    /// Atoms, Zen 5).
    AvxVnni,
    /// AVX512-VNNI `vpdpbusd` (x86-64 with `avx512f`, `avx512bw`, `avx512vnni`: Ice Lake and later
    /// Xeons, Zen 4 and 5).
    Avx512Vnni,
    /// NEON `smull` + `sadalp` on signed bytes (every 64-bit ARM: Cortex-A53/A72 NAS and
    /// Raspberry Pi boards).
    Neon,
    /// NEON `sdot` (ARMv8.2 dot product: Apple M1 and later, Cortex-A55/A76 and later, Graviton
    /// 2 and later).
    NeonDot,
}

impl Kernel {
    /// Every kernel, slowest first on each architecture.
    pub const ALL: [Kernel; 7] = [
        Kernel::Portable,
        Kernel::Sse2,
        Kernel::Avx2,
        Kernel::AvxVnni,
        Kernel::Avx512Vnni,
        Kernel::Neon,
        Kernel::NeonDot,
    ];

    /// Whether this CPU runs it.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Kernel::Portable | Kernel::Sse2 => true,
                Kernel::Avx2 => has!("avx2"),
                Kernel::AvxVnni => has!("avx2") && has!("avxvnni"),
                Kernel::Avx512Vnni => has!("avx512f") && has!("avx512bw") && has!("avx512vnni"),
                Kernel::Neon | Kernel::NeonDot => false,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            match self {
                Kernel::Portable | Kernel::Neon => true,
                Kernel::NeonDot => std::arch::is_aarch64_feature_detected!("dotprod"),
                _ => false,
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            self == Kernel::Portable
        }
    }

    /// The kernel's name in `CNCLIP_Q8_KERNEL`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Sse2 => "sse2",
            Kernel::Avx2 => "avx2",
            Kernel::AvxVnni => "avx-vnni",
            Kernel::Avx512Vnni => "avx512-vnni",
            Kernel::Neon => "neon",
            Kernel::NeonDot => "neon-dot",
        }
    }

    /// The fastest kernel this CPU runs, or the one `CNCLIP_Q8_KERNEL` names if the CPU runs it
    /// (decided once; a name that is unknown or unsupported is reported on stderr and ignored).
    pub fn detect() -> Kernel {
        static CHOSEN: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let best = Kernel::ALL
                .into_iter()
                .rev()
                .find(|k| k.supported())
                .unwrap_or(Kernel::Portable);
            let Ok(name) = std::env::var("CNCLIP_Q8_KERNEL") else {
                return best;
            };
            match Kernel::ALL.into_iter().find(|k| k.name() == name) {
                Some(k) if k.supported() => k,
                found => {
                    let why = if found.is_some() {
                        "not supported by this CPU"
                    } else {
                        "unknown"
                    };
                    eprintln!(
                        "warning: CNCLIP_Q8_KERNEL={name} is {why}; using {}",
                        best.name()
                    );
                    best
                }
            }
        })
    }

    /// Writes rows `r0..r0+mr` of one stripe to `dst` (row `r0`'s first column; rows `ldd`
    /// apart): `Σ_blocks s_a · (Σ_k q_w·q_a)`, then times the column scale plus the bias.
    ///
    /// # Safety
    ///
    /// The CPU supports the kernel, and `dst` must be valid for writes of `out.cols` values at
    /// each of the `mr` rows.
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
        // One instantiation per row count, so the accumulators stay in registers.
        macro_rules! rows {
            ($kernel:ident) => {
                match mr {
                    6 => $kernel::<6>(a, r0, k_pad, w, out, dst, ldd),
                    5 => $kernel::<5>(a, r0, k_pad, w, out, dst, ldd),
                    4 => $kernel::<4>(a, r0, k_pad, w, out, dst, ldd),
                    3 => $kernel::<3>(a, r0, k_pad, w, out, dst, ldd),
                    2 => $kernel::<2>(a, r0, k_pad, w, out, dst, ldd),
                    _ => $kernel::<1>(a, r0, k_pad, w, out, dst, ldd),
                }
            };
        }
        match self {
            // SAFETY: the caller's contract.
            Kernel::Portable => unsafe { portable(a, r0, mr, k_pad, w, out, dst, ldd) },
            // SAFETY (all of them): the caller vouches for the CPU (`QLinear::run` checks it once
            // per product before any microkernel runs); the kernels read only inside `a` (rows
            // r0..r0+mr, k_pad each) and `w` (k_pad·NR bytes), whose sizes they assert, and
            // write what the caller vouches for.
            #[cfg(target_arch = "x86_64")]
            Kernel::Sse2 => {
                // Two rows at a time: its 16 registers hold no more.
                for i in (0..mr).step_by(2) {
                    // SAFETY: as above, for rows r0+i.. of the same tile.
                    unsafe {
                        let d = dst.add(i * ldd);
                        match mr - i {
                            1 => sse2::<1>(a, r0 + i, k_pad, w, out, d, ldd),
                            _ => sse2::<2>(a, r0 + i, k_pad, w, out, d, ldd),
                        }
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { rows!(avx2) },
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => unsafe { rows!(avx_vnni) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => unsafe { rows!(vnni) },
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => unsafe { rows!(neon) },
            #[cfg(target_arch = "aarch64")]
            Kernel::NeonDot => unsafe { rows!(neon_dot) },
            #[allow(unreachable_patterns)]
            _ => unreachable!("{self:?} is not for this architecture"),
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
                // A multiply and an add, not fused: CPUs without FMA would call libm for it.
                *t += s * (acc as f32 - off);
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
                fa[i][h] = _mm512_add_ps(fa[i][h], _mm512_mul_ps(s, v));
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

/// The lanes of an 8-column stretch of the stripe that exist (columns `c0..c0+8` below
/// `cols`), as an AVX2 mask: all ones where a column exists.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn live8(cols: usize, c0: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let n = cols.saturating_sub(c0).min(8) as i32;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// The end of a 256-bit kernel's stretch of 8 columns at `c0`: `fa · s_w + b` (a separate
/// multiply and add, as the portable kernel does) into `M` rows of `dst`.
///
/// # Safety
///
/// As [`Kernel::run`]; `c0 < out.cols`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_code)]
unsafe fn store8<const M: usize>(
    fa: &[std::arch::x86_64::__m256; M],
    out: &Stripe,
    c0: usize,
    dst: *mut f32,
    ldd: usize,
) {
    use std::arch::x86_64::*;
    let mask = live8(out.cols, c0);
    // SAFETY: `scales` is padded to the whole stripe; the mask keeps the bias load inside the
    // stripe's `cols` values and the stores inside the caller's rows.
    unsafe {
        let scale = _mm256_loadu_ps(out.scales.as_ptr().add(c0));
        let bias = match out.bias {
            Some(b) => _mm256_maskload_ps(b.as_ptr().wrapping_add(c0), mask),
            None => _mm256_setzero_ps(),
        };
        for (i, fa) in fa.iter().enumerate() {
            let v = _mm256_add_ps(_mm256_mul_ps(*fa, scale), bias);
            _mm256_maskstore_ps(dst.add(i * ldd + c0), mask, v);
        }
    }
}

/// The AVX-VNNI kernel: [`vnni`] on 256-bit vectors, a 16-column half of the stripe at a time (6
/// rows × 2 vectors of accumulators, 2 weight vectors and a broadcast fill 15 of the 16
/// registers).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avxvnni")]
#[allow(unsafe_code)]
unsafe fn avx_vnni<const M: usize>(
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
    let wp = w.as_ptr();
    for half in 0..2 {
        if 16 * half >= out.cols {
            break;
        }
        let mut fa = [[_mm256_setzero_ps(); 2]; M];
        for b in 0..blocks {
            let mut acc = [[_mm256_setzero_si256(); 2]; M];
            for k4 in b * BLOCK / 4..(b + 1) * BLOCK / 4 {
                // SAFETY: k4 < k_pad/4, so bytes k4·128 + 64·half .. +64 lie inside `w`.
                let (w0, w1) = unsafe {
                    let p = wp.add(k4 * NR * 4 + 64 * half);
                    (
                        _mm256_loadu_si256(p as *const _),
                        _mm256_loadu_si256(p.add(32) as *const _),
                    )
                };
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: row r0+i < rows, and k4·4+4 ≤ k_pad: 4 bytes inside `a.q`.
                    let ap = unsafe { a.q.as_ptr().add((r0 + i) * k_pad + k4 * 4) as *const i32 };
                    let av = _mm256_set1_epi32(unsafe { ap.read_unaligned() });
                    acc[0] = _mm256_dpbusd_avx_epi32(acc[0], w0, av);
                    acc[1] = _mm256_dpbusd_avx_epi32(acc[1], w1, av);
                }
            }
            for i in 0..M {
                let r = r0 + i;
                let s = _mm256_set1_ps(a.scale[r * blocks + b]);
                let off = _mm256_set1_ps(a.offset[r * blocks + b]);
                for v in 0..2 {
                    let x = _mm256_sub_ps(_mm256_cvtepi32_ps(acc[i][v]), off);
                    fa[i][v] = _mm256_add_ps(fa[i][v], _mm256_mul_ps(s, x));
                }
            }
        }
        for v in 0..2 {
            let c0 = 16 * half + 8 * v;
            if c0 < out.cols {
                let fa: [__m256; M] = std::array::from_fn(|i| fa[i][v]);
                // SAFETY: the caller's contract; c0 < cols.
                unsafe { store8::<M>(&fa, out, c0, dst, ldd) };
            }
        }
    }
}

/// The AVX2 kernel for CPUs without VNNI, an 8-column quarter of the stripe at a time: each
/// 16-byte stretch of weights (4 columns × 4 inputs, `q_w + 128` in 1..=255) zero-extended to
/// 16 bits, `vpmaddwd` against the row's 4 inputs (as `i16`, repeated) into 4 columns × 2 partial
/// sums, which a horizontal add joins once per block. `vpmaddubsw` would take the bytes as they
/// are, but it saturates its 16-bit pair sums (255·127·2 > 32767); these sums are exact, the same
/// integers as `vpdpbusd`'s.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_code)]
unsafe fn avx2<const M: usize>(
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
    assert!(a.wide.len() >= (r0 + M) * k_pad && w.len() >= k_pad * NR);
    assert!(out.cols >= 1 && out.cols <= NR && out.bias.is_none_or(|b| b.len() == out.cols));
    let blocks = k_pad / BLOCK;
    let wp = w.as_ptr();
    for quarter in 0..4 {
        let c0 = 8 * quarter;
        if c0 >= out.cols {
            break;
        }
        let mut fa = [_mm256_setzero_ps(); M];
        for b in 0..blocks {
            let mut acc = [[_mm256_setzero_si256(); 2]; M];
            for k4 in b * BLOCK / 4..(b + 1) * BLOCK / 4 {
                // SAFETY: k4 < k_pad/4, so bytes k4·128 + 32·quarter .. +32 lie inside `w`.
                let (w0, w1) = unsafe {
                    let p = wp.add(k4 * NR * 4 + 32 * quarter);
                    (
                        _mm256_cvtepu8_epi16(_mm_loadu_si128(p as *const _)),
                        _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(16) as *const _)),
                    )
                };
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: row r0+i < rows, and k4·4+4 ≤ k_pad: 4 values inside `a.wide`.
                    let ap =
                        unsafe { a.wide.as_ptr().add((r0 + i) * k_pad + k4 * 4) as *const i64 };
                    let av = _mm256_set1_epi64x(unsafe { ap.read_unaligned() });
                    acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(w0, av));
                    acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(w1, av));
                }
            }
            for (i, fa) in fa.iter_mut().enumerate() {
                let r = r0 + i;
                // Columns 0,1,4,5 | 2,3,6,7 of the quarter, then in order.
                let sums = _mm256_hadd_epi32(acc[i][0], acc[i][1]);
                let sums = _mm256_permute4x64_epi64::<0b11_01_10_00>(sums);
                let s = _mm256_set1_ps(a.scale[r * blocks + b]);
                let off = _mm256_set1_ps(a.offset[r * blocks + b]);
                let x = _mm256_sub_ps(_mm256_cvtepi32_ps(sums), off);
                *fa = _mm256_add_ps(*fa, _mm256_mul_ps(s, x));
            }
        }
        // SAFETY: the caller's contract; c0 < cols.
        unsafe { store8::<M>(&fa, out, c0, dst, ldd) };
    }
}

/// The SSE2 kernel, for x86-64 CPUs without AVX2: [`avx2`] on 128-bit vectors, the bytes
/// widened by interleaving them with zeros (`pmovzxbw` is SSE4.1) and the pair sums joined by
/// shuffles (`phaddd` is SSSE3). 8 columns of up to 2 rows at a time: 8 accumulators, 4 weight
/// vectors and a broadcast in the 16 registers.
///
/// # Safety
///
/// As [`Kernel::run`] (SSE2 is part of x86-64).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
unsafe fn sse2<const M: usize>(
    a: &QRows,
    r0: usize,
    k_pad: usize,
    w: &[u8],
    out: &Stripe,
    dst: *mut f32,
    ldd: usize,
) {
    use std::arch::x86_64::*;
    assert!(M >= 1 && M <= 2);
    assert!(a.wide.len() >= (r0 + M) * k_pad && w.len() >= k_pad * NR);
    assert!(out.cols >= 1 && out.cols <= NR && out.bias.is_none_or(|b| b.len() == out.cols));
    let blocks = k_pad / BLOCK;
    let wp = w.as_ptr();
    let zero = _mm_setzero_si128();
    for quarter in 0..4 {
        let c0 = 8 * quarter;
        if c0 >= out.cols {
            break;
        }
        let mut fa = [[_mm_setzero_ps(); 2]; M];
        for b in 0..blocks {
            // Per row: columns 0-1, 2-3, 4-5, 6-7 of the quarter, two pair sums each.
            let mut acc = [[_mm_setzero_si128(); 4]; M];
            for k4 in b * BLOCK / 4..(b + 1) * BLOCK / 4 {
                // SAFETY: k4 < k_pad/4, so bytes k4·128 + 32·quarter .. +32 lie inside `w`.
                let (lo, hi) = unsafe {
                    let p = wp.add(k4 * NR * 4 + 32 * quarter);
                    (
                        _mm_loadu_si128(p as *const _),
                        _mm_loadu_si128(p.add(16) as *const _),
                    )
                };
                let wv = [
                    _mm_unpacklo_epi8(lo, zero),
                    _mm_unpackhi_epi8(lo, zero),
                    _mm_unpacklo_epi8(hi, zero),
                    _mm_unpackhi_epi8(hi, zero),
                ];
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: row r0+i < rows, and k4·4+4 ≤ k_pad: 4 values inside `a.wide`.
                    let ap =
                        unsafe { a.wide.as_ptr().add((r0 + i) * k_pad + k4 * 4) as *const i64 };
                    let av = _mm_set1_epi64x(unsafe { ap.read_unaligned() });
                    for (acc, &wv) in acc.iter_mut().zip(&wv) {
                        *acc = _mm_add_epi32(*acc, _mm_madd_epi16(wv, av));
                    }
                }
            }
            for (i, fa) in fa.iter_mut().enumerate() {
                let r = r0 + i;
                let s = _mm_set1_ps(a.scale[r * blocks + b]);
                let off = _mm_set1_ps(a.offset[r * blocks + b]);
                for (h, fa) in fa.iter_mut().enumerate() {
                    let x = _mm_castsi128_ps(acc[i][2 * h]);
                    let y = _mm_castsi128_ps(acc[i][2 * h + 1]);
                    // The first and the second sum of each of the 4 columns, then their total.
                    let first = _mm_castps_si128(_mm_shuffle_ps::<0b10_00_10_00>(x, y));
                    let second = _mm_castps_si128(_mm_shuffle_ps::<0b11_01_11_01>(x, y));
                    let v = _mm_sub_ps(_mm_cvtepi32_ps(_mm_add_epi32(first, second)), off);
                    *fa = _mm_add_ps(*fa, _mm_mul_ps(s, v));
                }
            }
        }
        for h in 0..2 {
            let c = c0 + 4 * h;
            if c >= out.cols {
                break;
            }
            let n = (out.cols - c).min(4);
            let mut bias = [0f32; 4];
            if let Some(b) = out.bias {
                bias[..n].copy_from_slice(&b[c..c + n]);
            }
            // SAFETY: `scales` is padded to the whole stripe.
            let scale = unsafe { _mm_loadu_ps(out.scales.as_ptr().add(c)) };
            let bias = unsafe { _mm_loadu_ps(bias.as_ptr()) };
            for (i, fa) in fa.iter().enumerate() {
                let mut row = [0f32; 4];
                // SAFETY: `row` holds 4 values; the caller's contract covers the `n` columns
                // from c of row i.
                unsafe {
                    _mm_storeu_ps(row.as_mut_ptr(), _mm_add_ps(_mm_mul_ps(fa[h], scale), bias));
                    std::ptr::copy_nonoverlapping(row.as_ptr(), dst.add(i * ldd + c), n);
                }
            }
        }
    }
}

/// The end of a NEON kernel's stretch of 16 columns at `c0`: `fa · s_w + b` (a separate multiply
/// and add, as the portable kernel does) into `M` rows of `dst`, the columns that exist.
///
/// # Safety
///
/// As [`Kernel::run`]; `c0 < out.cols`.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
#[allow(unsafe_code)]
unsafe fn store16<const M: usize>(
    fa: &[[std::arch::aarch64::float32x4_t; 4]; M],
    out: &Stripe,
    c0: usize,
    dst: *mut f32,
    ldd: usize,
) {
    use std::arch::aarch64::*;
    let n = (out.cols - c0).min(16);
    let mut bias = [0f32; 16];
    if let Some(b) = out.bias {
        bias[..n].copy_from_slice(&b[c0..c0 + n]);
    }
    for (i, fa) in fa.iter().enumerate() {
        let mut row = [0f32; 16];
        for (v, fa) in fa.iter().enumerate() {
            // SAFETY: `scales` is padded to the whole stripe (c0 + 16 ≤ NR); `bias` and `row` hold
            // 16 values.
            unsafe {
                let scale = vld1q_f32(out.scales.as_ptr().add(c0 + 4 * v));
                let b = vld1q_f32(bias.as_ptr().add(4 * v));
                vst1q_f32(
                    row.as_mut_ptr().add(4 * v),
                    vaddq_f32(vmulq_f32(*fa, scale), b),
                );
            }
        }
        // SAFETY: the caller's contract; `n` columns from c0 exist.
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), dst.add(i * ldd + c0), n) };
    }
}

/// A block's integer column sums into a NEON kernel's f32 accumulators: `fa += s_a · (sums as
/// f32)`, a multiply and an add as in the other kernels. The sums here are `Σ q_w·q_a` directly (the weights turned signed), which equals the
/// VNNI kernels' `acc − 128·Σq_a` exactly (all are integers below 2^24), so the f32 steps match.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
fn scale_block(
    fa: &mut std::arch::aarch64::float32x4_t,
    sums: std::arch::aarch64::int32x4_t,
    s: f32,
) {
    use std::arch::aarch64::*;
    *fa = vaddq_f32(*fa, vmulq_f32(vdupq_n_f32(s), vcvtq_f32_s32(sums)));
}

/// The weights of 4 columns × 4 inputs as signed bytes (`q_w`; stored `q_w + 128`).
///
/// # Safety
///
/// `p` is valid for 16 bytes.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
#[allow(unsafe_code)]
unsafe fn signed_weights(p: *const u8) -> std::arch::aarch64::int8x16_t {
    use std::arch::aarch64::*;
    // SAFETY: the caller's contract.
    unsafe { vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p), vdupq_n_u8(0x80))) }
}

/// A row's 4 inputs `q_a`, repeated over the 16 lanes.
///
/// # Safety
///
/// `a.q` holds 4 bytes at `at`.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
#[allow(unsafe_code)]
unsafe fn inputs4(a: &QRows, at: usize) -> std::arch::aarch64::int8x16_t {
    use std::arch::aarch64::*;
    // SAFETY: the caller's contract.
    let four = unsafe { (a.q.as_ptr().add(at) as *const i32).read_unaligned() };
    vreinterpretq_s8_s32(vdupq_n_s32(four))
}

/// The NEON kernel with `sdot` (4 columns × 4 inputs per instruction), a 16-column half of the
/// stripe at a time: 6 rows × 4 accumulators, 4 weight vectors and a broadcast in the 32
/// registers. `sdot` through `asm!`: its intrinsic is not stable Rust yet.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon,dotprod")]
#[allow(unsafe_code)]
unsafe fn neon_dot<const M: usize>(
    a: &QRows,
    r0: usize,
    k_pad: usize,
    w: &[u8],
    out: &Stripe,
    dst: *mut f32,
    ldd: usize,
) {
    use std::arch::aarch64::*;
    assert!(M >= 1 && M <= MR);
    assert!(a.q.len() >= (r0 + M) * k_pad && w.len() >= k_pad * NR);
    assert!(out.cols >= 1 && out.cols <= NR && out.bias.is_none_or(|b| b.len() == out.cols));
    let blocks = k_pad / BLOCK;
    for half in 0..2 {
        if 16 * half >= out.cols {
            break;
        }
        let mut fa = [[vdupq_n_f32(0.0); 4]; M];
        for b in 0..blocks {
            let mut acc = [[vdupq_n_s32(0); 4]; M];
            for k4 in b * BLOCK / 4..(b + 1) * BLOCK / 4 {
                // SAFETY: k4 < k_pad/4, so bytes k4·128 + 64·half .. +64 lie inside `w`.
                let wv: [int8x16_t; 4] = std::array::from_fn(|v| unsafe {
                    signed_weights(w.as_ptr().add(k4 * NR * 4 + 64 * half + 16 * v))
                });
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: row r0+i < rows, and k4·4+4 ≤ k_pad.
                    let av = unsafe { inputs4(a, (r0 + i) * k_pad + k4 * 4) };
                    for (acc, wv) in acc.iter_mut().zip(&wv) {
                        // SAFETY: `sdot` on registers only; the CPU has dot product (the
                        // caller's contract).
                        unsafe {
                            std::arch::asm!(
                                "sdot {acc:v}.4s, {w:v}.16b, {a:v}.16b",
                                acc = inout(vreg) *acc,
                                w = in(vreg) *wv,
                                a = in(vreg) av,
                                options(pure, nomem, nostack, preserves_flags),
                            )
                        };
                    }
                }
            }
            for (i, (fa, acc)) in fa.iter_mut().zip(&acc).enumerate() {
                let s = a.scale[(r0 + i) * blocks + b];
                for (fa, &sums) in fa.iter_mut().zip(acc) {
                    scale_block(fa, sums, s);
                }
            }
        }
        // SAFETY: the caller's contract; 16·half < cols.
        unsafe { store16::<M>(&fa, out, 16 * half, dst, ldd) };
    }
}

/// The NEON kernel without dot product: per 4 columns × 4 inputs, two widening multiplies into
/// 16-bit products (at most 127·127, exact) and two pairwise add-accumulates into 32-bit pair sums,
/// joined once per block. 8 columns at a time: 6 rows × 4 accumulators.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
#[allow(unsafe_code)]
unsafe fn neon<const M: usize>(
    a: &QRows,
    r0: usize,
    k_pad: usize,
    w: &[u8],
    out: &Stripe,
    dst: *mut f32,
    ldd: usize,
) {
    use std::arch::aarch64::*;
    assert!(M >= 1 && M <= MR);
    assert!(a.q.len() >= (r0 + M) * k_pad && w.len() >= k_pad * NR);
    assert!(out.cols >= 1 && out.cols <= NR && out.bias.is_none_or(|b| b.len() == out.cols));
    let blocks = k_pad / BLOCK;
    for half in 0..2 {
        if 16 * half >= out.cols {
            break;
        }
        let mut fa = [[vdupq_n_f32(0.0); 4]; M];
        for quarter in 0..2 {
            let c = 16 * half + 8 * quarter;
            for b in 0..blocks {
                // Per row, for columns c..c+2, c+2..c+4, c+4..c+6, c+6..c+8: pair sums.
                let mut acc = [[vdupq_n_s32(0); 4]; M];
                for k4 in b * BLOCK / 4..(b + 1) * BLOCK / 4 {
                    // SAFETY: k4 < k_pad/4, so bytes k4·128 + 4·c .. +32 lie inside `w`.
                    let (w0, w1) = unsafe {
                        let p = w.as_ptr().add(k4 * NR * 4 + 4 * c);
                        (signed_weights(p), signed_weights(p.add(16)))
                    };
                    for (i, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: row r0+i < rows, and k4·4+4 ≤ k_pad.
                        let av = unsafe { inputs4(a, (r0 + i) * k_pad + k4 * 4) };
                        let a8 = vget_low_s8(av);
                        acc[0] = vpadalq_s16(acc[0], vmull_s8(vget_low_s8(w0), a8));
                        acc[1] = vpadalq_s16(acc[1], vmull_high_s8(w0, av));
                        acc[2] = vpadalq_s16(acc[2], vmull_s8(vget_low_s8(w1), a8));
                        acc[3] = vpadalq_s16(acc[3], vmull_high_s8(w1, av));
                    }
                }
                for (i, (fa, acc)) in fa.iter_mut().zip(&acc).enumerate() {
                    let s = a.scale[(r0 + i) * blocks + b];
                    scale_block(&mut fa[2 * quarter], vpaddq_s32(acc[0], acc[1]), s);
                    scale_block(&mut fa[2 * quarter + 1], vpaddq_s32(acc[2], acc[3]), s);
                }
            }
        }
        // SAFETY: the caller's contract; 16·half < cols.
        unsafe { store16::<M>(&fa, out, 16 * half, dst, ldd) };
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
            for kernel in Kernel::ALL.into_iter().filter(|k| k.supported()) {
                let mut fast = vec![0f32; rows * n];
                q.matmul_with(&x, Some(&bias), &mut fast, kernel);
                assert_eq!(portable, fast, "{kernel:?} {rows}x{n}x{k}");
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

    /// Every product at its largest (`q_w` and `q_a` ±127 with matching signs, then opposite
    /// ones): 16-bit pair sums would saturate here; the kernels' sums must not.
    #[test]
    fn kernels_agree_at_the_extremes() {
        let (rows, n, k) = (7, 40, 384);
        let w: Vec<f32> = (0..n * k)
            .map(|i| if (i / k + i % 3) % 2 == 0 { 0.5 } else { -0.5 })
            .collect();
        let x: Vec<f32> = (0..rows * k)
            .map(|i| match (i / k) % 3 {
                0 => 1.0,
                1 => -1.0,
                _ => {
                    if i % 3 == 0 {
                        1.0
                    } else {
                        -1.0
                    }
                }
            })
            .collect();
        let q = QLinear::new(&w, n, k);
        let mut portable = vec![0f32; rows * n];
        q.matmul_with(&x, None, &mut portable, Kernel::Portable);
        let exact = reference(&w, &x, n, k, &vec![0.0; n]);
        assert_eq!(portable, exact, "±1 and ±0.5 quantize exactly");
        for kernel in Kernel::ALL.into_iter().filter(|k| k.supported()) {
            let mut out = vec![0f32; rows * n];
            q.matmul_with(&x, None, &mut out, kernel);
            assert_eq!(out, portable, "{kernel:?}");
        }
    }

    /// Every 64-bit CPU of the two architectures has a vector kernel: the portable one is for
    /// others only.
    #[test]
    fn vector_kernels_cover_the_architectures() {
        #[cfg(target_arch = "x86_64")]
        assert!(Kernel::Sse2.supported());
        #[cfg(target_arch = "aarch64")]
        assert!(Kernel::Neon.supported());
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        assert_ne!(Kernel::detect(), Kernel::Portable);
        let best = Kernel::ALL.into_iter().rev().find(|k| k.supported());
        if std::env::var_os("CNCLIP_Q8_KERNEL").is_none() {
            assert_eq!(Some(Kernel::detect()), best);
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
