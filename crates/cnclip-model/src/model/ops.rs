//! Building blocks shared by the towers: linear layers (f32 weights in GEMM panels,
//! [`super::panels`], or 8 bits, [`super::q8`]), LayerNorm, QuickGELU and scaled-dot-product
//! attention.
//!
//! Why our own LayerNorm: candle-nn's fused kernel computes the variance as `E[x²] − E[x]²` in f32,
//! which cancels badly when the mean is large against the spread (BERT's embeddings); PyTorch uses a
//! two-pass (Welford-style) variance. Ours is two-pass, accumulated in f32 over f32 input, so its
//! output matches PyTorch to float rounding. Half-precision inputs are normalised in f32 and cast
//! back, as cn_clip's `LayerNorm` subclass does.

use std::sync::Arc;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, Layout, Module, Result, Shape, Storage, Tensor, D,
};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::panels::Panels;
use super::q8::QLinear;
use super::team;

/// A dense layer `y = x·Wᵀ + b` over the whole flattened batch (one GEMM), with `W` as loaded or
/// (after [`Linear::quantize`]) in 8 bits.
///
/// f32 CPU weights are packed at load time into column panels of `Wᵀ` ([`Panels`]), which the
/// GEMM streams from memory without packing them again; other weights (a GPU, half precision)
/// are kept as `Wᵀ`, `[in, out]`, for candle's matmul.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

#[derive(Debug, Clone)]
enum Weight {
    /// `Wᵀ`, `[in, out]`, contiguous, in the model dtype (not CPU f32).
    Dense(Tensor),
    /// CPU f32 weights in GEMM panels.
    Panels(Arc<Panels>),
    /// `W` in 8 bits per weight with per-channel scales ([`super::q8`]); CPU f32 only.
    Q8(Arc<QLinear>),
}

/// What [`Linear::forward_with`] does to `x·Wᵀ + b` before returning it.
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    /// Nothing: the layer's plain output.
    None,
    /// OpenAI CLIP's `QuickGELU` ([`quick_gelu`]).
    QuickGelu,
    /// The exact (erf) GELU of BERT (`modeling_bert.py`'s `gelu`).
    GeluErf,
    /// Adds a residual of the output's shape: `x + (y·Wᵀ + b)`.
    Residual(&'a Tensor),
}

impl Linear {
    /// Reads `{prefix}.weight` (`[out, in]`, PyTorch's `nn.Linear` layout) and `{prefix}.bias`.
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Linear> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = vb.get(out_dim, "bias")?;
        Linear::from_weight(&weight, Some(bias))
    }

    /// Layers `{prefix}.weight` / `{prefix}.bias` for each of `prefixes` (each `[out, in]`), read
    /// as one layer with their outputs side by side: q, k and v in one GEMM.
    pub fn stacked(
        vb: VarBuilder,
        prefixes: &[&str],
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Linear> {
        let weights = prefixes
            .iter()
            .map(|p| vb.pp(*p).get((out_dim, in_dim), "weight"))
            .collect::<Result<Vec<_>>>()?;
        let biases = prefixes
            .iter()
            .map(|p| vb.pp(*p).get(out_dim, "bias"))
            .collect::<Result<Vec<_>>>()?;
        let weights: Vec<&Tensor> = weights.iter().collect();
        Linear::from_weights(&weights, Some(Tensor::cat(&biases, 0)?))
    }

    /// Builds a layer from a `[out, in]` weight and an optional `[out]` bias.
    pub fn from_weight(weight: &Tensor, bias: Option<Tensor>) -> Result<Linear> {
        Linear::from_weights(&[weight], bias)
    }

    /// One layer from several `[out_i, in]` weights that read the same input (q, k and v),
    /// their outputs side by side; `bias` is theirs concatenated. Call it before
    /// [`Linear::quantize`].
    pub fn from_weights(weights: &[&Tensor], bias: Option<Tensor>) -> Result<Linear> {
        let Some(first) = weights.first() else {
            candle_core::bail!("a linear layer needs a weight");
        };
        let in_dim = first.dim(1)?;
        if !is_f32_cpu(first) {
            let parts = weights.iter().map(|w| w.t()).collect::<Result<Vec<_>>>()?;
            return Ok(Linear {
                weight: Weight::Dense(Tensor::cat(&parts, 1)?.contiguous()?),
                bias,
            });
        }
        let weights = weights
            .iter()
            .map(|w| w.contiguous())
            .collect::<Result<Vec<_>>>()?;
        let guards: Vec<_> = weights.iter().map(Tensor::storage_and_layout).collect();
        let mut parts: Vec<(usize, &[f32])> = Vec::with_capacity(guards.len());
        for (w, (storage, layout)) in weights.iter().zip(&guards) {
            let (Storage::Cpu(CpuStorage::F32(v)), (_, k)) = (&**storage, w.dims2()?) else {
                candle_core::bail!("linear weights must all be f32 CPU matrices");
            };
            if k != in_dim {
                candle_core::bail!("stacked linear weights read {k} and {in_dim} inputs");
            }
            parts.push((w.dim(0)?, contiguous_slice(v, layout)?));
        }
        let out_dim = parts.iter().map(|(rows, _)| rows).sum();
        let row = |mut o: usize| -> &[f32] {
            for (rows, data) in &parts {
                if o < *rows {
                    return &data[o * in_dim..(o + 1) * in_dim];
                }
                o -= rows;
            }
            unreachable!("row {o} past the stacked weights")
        };
        Ok(Linear {
            weight: Weight::Panels(Arc::new(Panels::from_rows(in_dim, out_dim, &row))),
            bias,
        })
    }

    /// Builds a layer from a weight already in `[in, out]` layout (cn_clip's `proj` and
    /// `text_projection` parameters are used as `x @ P`).
    pub fn from_weight_t(weight_t: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        if !is_f32_cpu(&weight_t) {
            return Ok(Linear {
                weight: Weight::Dense(weight_t.contiguous()?),
                bias,
            });
        }
        if !weight_t.is_contiguous() {
            return Linear::from_weight(&weight_t.t()?, bias);
        }
        let (in_dim, out_dim) = weight_t.dims2()?;
        let (storage, layout) = weight_t.storage_and_layout();
        let Storage::Cpu(CpuStorage::F32(v)) = &*storage else {
            candle_core::bail!("linear weight must be an f32 CPU matrix");
        };
        let panels = Panels::from_transposed(contiguous_slice(v, layout)?, in_dim, out_dim);
        Ok(Linear {
            weight: Weight::Panels(Arc::new(panels)),
            bias,
        })
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        match &self.weight {
            Weight::Dense(w) => w.dims()[1],
            Weight::Panels(p) => p.out_dim(),
            Weight::Q8(q) => q.out_dim(),
        }
    }

    /// The same layer with its weight in 8 bits ([`super::q8`]): activations are quantized on
    /// the fly and products summed in integers. The bias stays f32. Only f32 CPU weights can be
    /// quantized.
    pub fn quantize(&self) -> Result<Linear> {
        let p = match &self.weight {
            Weight::Panels(p) => p,
            Weight::Q8(_) => return Ok(self.clone()),
            Weight::Dense(_) => candle_core::bail!("only f32 CPU layers can be quantized"),
        };
        let q = QLinear::new(&p.to_rows(), p.out_dim(), p.in_dim());
        Ok(Linear {
            weight: Weight::Q8(Arc::new(q)),
            bias: self.bias.clone(),
        })
    }

    /// `x·Wᵀ + b` followed by `epilogue`. On the CPU in f32 the bias (and the residual or GELU) is
    /// applied in the GEMM's own output buffer — the bias preloaded so the GEMM accumulates onto it,
    /// the rest in one pass over the rows — instead of one whole-tensor op (and allocation) each.
    pub fn forward_with(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim;
        let x2 = x.reshape((rows, in_dim))?;
        let fast = is_f32_cpu(x) && epilogue_is_f32_cpu(epilogue);
        let y = match (&self.weight, &self.bias) {
            (Weight::Q8(_) | Weight::Panels(_), _) if !fast => {
                candle_core::bail!("f32 CPU layers take f32 CPU inputs (and residuals)")
            }
            (weight @ (Weight::Q8(_) | Weight::Panels(_)), bias) => {
                let op = LinearOp {
                    weight,
                    bias: bias.as_ref(),
                    epilogue,
                };
                x2.contiguous()?.apply_op1_no_bwd(&op)?
            }
            (Weight::Dense(w_t), bias) => {
                let y = x2.matmul(w_t)?;
                match bias {
                    Some(b) => generic_epilogue(&y.broadcast_add(b)?, epilogue)?,
                    None => generic_epilogue(&y, epilogue)?,
                }
            }
        };
        let mut out_dims = dims.to_vec();
        *out_dims
            .last_mut()
            .expect("linear input has at least one dim") = y.dims()[1];
        y.reshape(out_dims)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, Epilogue::None)
    }
}

/// Whether `t` is an f32 tensor on the CPU (what the CPU kernels take).
fn is_f32_cpu(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Whether the CPU kernels can apply `epilogue` (a residual must be a contiguous f32 CPU tensor).
fn epilogue_is_f32_cpu(epilogue: Epilogue) -> bool {
    match epilogue {
        Epilogue::Residual(r) => {
            r.device().is_cpu() && r.dtype() == DType::F32 && r.is_contiguous()
        }
        _ => true,
    }
}

/// The epilogue as ordinary tensor ops (GPU, half precision, layers without bias).
fn generic_epilogue(y: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
    let dims = y.dims().to_vec();
    match epilogue {
        Epilogue::None => Ok(y.clone()),
        Epilogue::QuickGelu => quick_gelu(y),
        Epilogue::GeluErf => y.gelu_erf(),
        Epilogue::Residual(r) => y + r.reshape(dims)?,
    }
}

/// Runs `f` with the residual's values (when `epilogue` adds one), checked to hold `len` values.
fn with_residual<T>(
    epilogue: Epilogue,
    len: usize,
    f: impl FnOnce(Option<&[f32]>) -> T,
) -> Result<T> {
    let Epilogue::Residual(r) = epilogue else {
        return Ok(f(None));
    };
    if r.elem_count() != len {
        candle_core::bail!(
            "linear residual has {} values, the output {len}",
            r.elem_count()
        );
    }
    let (storage, layout) = r.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Ok(f(Some(contiguous_slice(v, layout)?))),
        _ => candle_core::bail!("linear residual must be an f32 CPU tensor"),
    }
}

simd_fn! {
    /// The epilogue on `values`, output row `row` from column `col` of an `n`-wide output.
    fn finish_row(
        epilogue: Epilogue<'_>,
        residual: Option<&[f32]>,
        n: usize,
        row: usize,
        col: usize,
        values: &mut [f32]
    ) {
        match epilogue {
            Epilogue::None => {}
            // Plain loops: a `for_each` closure may be left out of line, compiled for baseline
            // x86-64 (the GELU loop was, in SSE2).
            Epilogue::QuickGelu => {
                for y in values.iter_mut() {
                    *y = quick_gelu_f32(*y);
                }
            }
            Epilogue::GeluErf => {
                for y in values.iter_mut() {
                    *y = gelu_erf_f32(*y);
                }
            }
            Epilogue::Residual(_) => {
                let residual = residual.expect("residual checked by with_residual");
                let start = row * n + col;
                let res = &residual[start..start + values.len()];
                // Stretches are finished row after row, `n` apart: the residual lines a dozen
                // rows on are asked for now (worth 3% of a q8 image batch).
                if let Some(ahead) = residual.get(start + PREFETCH_ROWS * n..) {
                    prefetch(&ahead[..values.len().min(ahead.len())]);
                }
                // cn_clip / BERT: `x + layer(y)`; addition commutes exactly in IEEE.
                values.iter_mut().zip(res).for_each(|(y, &x)| *y += x);
            }
        }
    }
}

/// Rows ahead of the one being finished whose residual [`finish_row`] prefetches; the q8 kernel
/// runs 6 rows at a time, so this is two tiles on.
const PREFETCH_ROWS: usize = 12;

/// Asks for the cache lines of `values` ahead of a read (a hint; no effect off x86-64).
#[inline(always)]
fn prefetch(values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in values.chunks(16) {
        // SAFETY: prefetching is a hint that never faults, and the pointer is in bounds.
        #[allow(unsafe_code)]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// Asks for the cache line at `p` with intent to write, ahead of the stores (a hint: never
/// faults, whatever the address; no effect off x86-64). Output rows lie a whole row apart, too far
/// for the hardware prefetchers, so without it every first store to a line of a fresh output
/// waits for the line's read-for-ownership.
#[inline(always)]
pub(crate) fn prefetch_for_write(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint that never faults, whatever the address (`prefetchw`; a NOP
    // on CPUs without it).
    #[allow(unsafe_code)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_ET0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

simd_fn! {
    /// Softmax of each `l`-wide row of `scores` in place, after adding the key mask.
    fn softmax_rows(scores: &mut [f32], l: usize, mask: Option<&[f32]>) {
        for row in scores.chunks_exact_mut(l) {
            if let Some(m) = mask {
                for (s, &mv) in row.iter_mut().zip(m) {
                    *s += mv;
                }
            }
            let max = lane_max(row, |v| v);
            row.iter_mut().for_each(|s| *s = exp_f32(*s - max));
            let inv = 1.0 / lane_sum(row, |v| v);
            row.iter_mut().for_each(|s| *s *= inv);
        }
    }
}

simd_fn! {
    /// One LayerNorm row: two-pass mean and variance in f32, then the affine map.
    fn layer_norm_row(src: &[f32], dst: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
        let n = src.len();
        let mean = lane_sum(src, |v| v) / n as f32;
        let var = lane_sum(src, |v| (v - mean) * (v - mean)) / n as f32;
        let inv_std = 1.0 / (var + eps).sqrt();
        for (((d, &s), &w), &b) in dst.iter_mut().zip(src).zip(w).zip(b) {
            *d = (s - mean) * inv_std * w + b;
        }
    }
}

/// `Σ f(v)` over `x`, in 16 independent lanes added pairwise at the end, so that it vectorizes: a
/// single running f32 sum is a chain of dependent additions the compiler must keep in order (four
/// cycles each; 768 of them per LayerNorm row). The rounding differs from a sequential sum's by
/// float noise, as PyTorch's own vectorized reductions do.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (s, &v) in lanes.iter_mut().zip(c) {
            *s += f(v);
        }
    }
    for (s, &v) in lanes.iter_mut().zip(tail) {
        *s += f(v);
    }
    let mut half = lanes.len();
    while half > 1 {
        half /= 2;
        for i in 0..half {
            lanes[i] += lanes[i + half];
        }
    }
    lanes[0]
}

/// The largest `f(v)` over `x` (NaNs ignored, `-∞` for none), in 16 independent lanes so that it
/// vectorizes (a single `max` chain does not); exact.
#[inline(always)]
pub(crate) fn lane_max(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let max = |m: f32, v: f32| if v > m { v } else { m };
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = max(*m, f(v));
        }
    }
    tail.iter()
        .map(|&v| f(v))
        .chain(lanes)
        .fold(f32::NEG_INFINITY, max)
}

/// `x · σ(1.702 x)`, as [`quick_gelu`] computes it.
#[inline(always)]
fn quick_gelu_f32(v: f32) -> f32 {
    v / (1.0 + exp_f32(-1.702 * v))
}

/// `eˣ` in f32 that the compiler vectorizes (libm's `expf` is a call per element): Cephes'
/// `expf` — `x = n·ln2 + r` with `|r| ≤ ½ln2` (Cody–Waite, ln2 split in two), a degree-7
/// polynomial for `eʳ`, and `2ⁿ` built in the exponent bits. Relative error ≈ 1e-7 (1–2 ulp,
/// PyTorch's vectorized Sleef `expf` allows 1 ulp). Below −87.3 (where `eˣ` leaves the normal
/// range) it returns exactly 0, so masked attention scores still contribute nothing.
#[inline(always)]
#[allow(clippy::excessive_precision)]
// Not `clamp` below: it passes NaN through, and the conversion needs a number.
#[allow(clippy::manual_clamp)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    // Constants: Cephes `expf.c` (S. L. Moshier), as in every SIMD `exp_ps` derived from it,
    // written with the digits Cephes gives (more than f32 holds).
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5.000_000_1e-1,
    ];
    // Round-to-nearest by the 1.5·2²³ trick (no libm `round`, vectorizes).
    const SHIFTER: f32 = 12_582_912.0;
    // `max`/`min`, not `clamp`: they turn NaN into a number, which the conversion below needs;
    // NaN itself is given back at the end.
    let xc = x.max(-87.3).min(88.3);
    let n = (xc * LOG2E + SHIFTER) - SHIFTER;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = P[0];
    for c in &P[1..] {
        p = p * r + c;
    }
    let e = p * r * r + r + 1.0;
    // SAFETY: `n` is a whole number in [−126, 127] (from the clamp, NaN included), so it
    // converts exactly; the unchecked conversion is one vector instruction where `as` adds
    // saturation fix-ups.
    #[allow(unsafe_code)]
    let n = unsafe { n.to_int_unchecked::<i32>() };
    let pow2 = f32::from_bits(((n + 127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else if x.is_nan() {
        x
    } else {
        e * pow2
    }
}

/// erf in f32 that the compiler vectorizes (libm's `erff`, a call per element, was 3–5% of a text
/// query; its values are the same to ~1 ulp): `x + x·A(x²)` for `|x| < 1`, `1 − e^(−x²)·B(1/|x|)`
/// up to 3.92 (sign restored), `±1` beyond, where erfc is below half an ulp of 1. `A` and `B` are
/// near-minimax polynomials fitted by `tools/fit_erf.py`, which also checks the error: 1.22 ulp
/// at most with an exact `e^(−x²)`; with [`exp_f32`], 1.18 ulp at most over 6.7M values against
/// f64 erf (the test allows 1.5). PyTorch's vectorized `erf` (Sleef `erff_u10`) promises 1 ulp.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub(crate) fn erf_f32(x: f32) -> f32 {
    const A: [f32; 7] = [
        1.283_791_661e-1,
        -3.761_262_298e-1,
        1.128_358_319e-1,
        -2.685_444_988e-2,
        5.190_598_313e-3,
        -8.037_583_320e-4,
        7.964_416_727e-5,
    ];
    const B: [f32; 10] = [
        1.292_750_239e-4,
        5.616_251_230e-1,
        2.161_055_990e-2,
        -3.804_488_182e-1,
        2.426_332_384e-1,
        2.171_274_424e-1,
        -5.130_590_200e-1,
        4.213_465_750e-1,
        -1.728_986_502e-1,
        2.951_785_736e-2,
    ];
    let horner = |c: &[f32], t: f32| c.iter().rev().fold(0.0, |p, &c| p * t + c);
    let a = x.abs();
    let s = a * a;
    // Both branches are computed and one is picked, so the loop has no branch to vectorize.
    let near = x + x * horner(&A, s);
    let far = 1.0 - exp_f32(-s) * horner(&B, 1.0 / a.max(1.0));
    let far = if a >= 3.92 { 1.0 } else { far };
    if a < 1.0 {
        near
    } else {
        far.copysign(x)
    }
}

/// The widest vector instructions the CPU offers the [`simd_fn!`] functions: 2 = AVX-512 (F, BW,
/// DQ, VL) with FMA, 1 = AVX2 with FMA, 0 = baseline (detected once).
#[cfg(target_arch = "x86_64")]
pub(crate) fn simd_level() -> u8 {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("fma")
        {
            2
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            1
        } else {
            0
        }
    })
}

/// `x · ½ (1 + erf(x / √2))`: PyTorch's exact GELU (`modeling_bert.py`'s `gelu`), in that order.
#[inline(always)]
fn gelu_erf_f32(v: f32) -> f32 {
    (erf_f32(v * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * v
}

/// CPU f32 `x·Wᵀ + b` + epilogue, on panelled f32 or 8-bit weights. Both kernels add the bias to
/// each output stretch and run the epilogue on it as soon as its products are summed, while it is
/// in cache.
struct LinearOp<'a> {
    weight: &'a Weight,
    bias: Option<&'a Tensor>,
    epilogue: Epilogue<'a>,
}

impl CustomOp1 for LinearOp<'_> {
    fn name(&self) -> &'static str {
        "cnclip-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = s else {
            candle_core::bail!("linear kernel is f32 only");
        };
        let x = contiguous_slice(x, l)?;
        let (m, k) = l.shape().dims2()?;
        let (in_dim, n) = match self.weight {
            Weight::Panels(p) => (p.in_dim(), p.out_dim()),
            Weight::Q8(q) => (q.in_dim(), q.out_dim()),
            Weight::Dense(_) => candle_core::bail!("linear kernel: weights not for the CPU"),
        };
        if k != in_dim {
            candle_core::bail!("linear: input [{m}, {k}], layer input {in_dim}");
        }
        let bias_guard = self.bias.map(Tensor::storage_and_layout);
        let bias = match &bias_guard {
            Some((storage, layout)) => match &**storage {
                Storage::Cpu(CpuStorage::F32(b)) => Some(contiguous_slice(b, layout)?),
                _ => candle_core::bail!("linear bias must be an f32 CPU tensor"),
            },
            None => None,
        };
        if let Some(b) = bias.filter(|b| b.len() != n) {
            candle_core::bail!("linear: bias [{}] for {n} outputs", b.len());
        }
        let epilogue = self.epilogue;
        let out = with_residual(epilogue, m * n, |residual| {
            let finish =
                |row, col, values: &mut [f32]| finish_row(epilogue, residual, n, row, col, values);
            // The output is not zeroed first (for a 1576×3072 MLP activation that was 8% of a
            // q8 image batch): both kernels write every value before reading it.
            // SAFETY: the kernels write all m·n values through `dst` (their contract), which
            // the vector's capacity holds, and nothing else sees the vector before `set_len`.
            #[allow(unsafe_code)]
            unsafe {
                filled(m * n, |dst| match self.weight {
                    Weight::Panels(p) => p.matmul_into(x, bias, dst, &finish),
                    Weight::Q8(q) => q.matmul_into(x, bias, dst, &finish),
                    Weight::Dense(_) => unreachable!("refused above"),
                })
            }
        })?;
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// PyTorch's `nn.LayerNorm` over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    /// Reads `{prefix}.weight` and `{prefix}.bias` of width `dim`.
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<LayerNorm> {
        // The affine parameters stay f32 whatever the model dtype: normalisation runs in f32.
        let weight = vb.get(dim, "weight")?.to_dtype(DType::F32)?;
        let bias = vb.get(dim, "bias")?.to_dtype(DType::F32)?;
        Ok(LayerNorm {
            weight,
            bias,
            eps: eps as f32,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        if x.device().is_cpu() {
            return x.apply_op3_no_bwd(&self.weight, &self.bias, &LayerNormOp { eps: self.eps });
        }
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps as f64)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?
            .to_dtype(dtype)
    }
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "cnclip-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(w), CpuStorage::F32(b)) = (s2, s3) else {
            candle_core::bail!("layer norm parameters must be f32");
        };
        let w = contiguous_slice(w, l2)?;
        let b = contiguous_slice(b, l3)?;
        let n = w.len();
        if n == 0 || l1.shape().dims().last() != Some(&n) || b.len() != n {
            candle_core::bail!(
                "layer norm of shape {:?} with {n} weights and {} biases",
                l1.shape(),
                b.len()
            );
        }
        let eps = self.eps;
        let norm_row = |src: &[f32], dst: &mut [f32]| layer_norm_row(src, dst, w, b, eps);
        let shape = l1.shape().clone();
        let out = match s1 {
            CpuStorage::F32(x) => {
                let x = contiguous_slice(x, l1)?;
                let rows = x.len() / n;
                // SAFETY: `x` is `rows` whole rows of `n` (the last dimension, checked above), and
                // each row's task writes all `n` values of its row of the output.
                #[allow(unsafe_code)]
                let out = unsafe {
                    filled(x.len(), |out| {
                        team::for_each(rows, |r| {
                            let dst = std::slice::from_raw_parts_mut(out.get().add(r * n), n);
                            norm_row(&x[r * n..(r + 1) * n], dst);
                        })
                    })
                };
                CpuStorage::F32(out)
            }
            CpuStorage::F16(x) => {
                let x = contiguous_slice(x, l1)?;
                let out = half_rows(x, n, norm_row, |v| v.to_f32(), half::f16::from_f32);
                CpuStorage::F16(out)
            }
            CpuStorage::BF16(x) => {
                let x = contiguous_slice(x, l1)?;
                let out = half_rows(x, n, norm_row, |v| v.to_f32(), half::bf16::from_f32);
                CpuStorage::BF16(out)
            }
            _ => candle_core::bail!("layer norm supports f32, f16 and bf16 only"),
        };
        Ok((out, shape))
    }
}

fn half_rows<T: Copy + Send + Sync + Default>(
    x: &[T],
    n: usize,
    norm_row: impl Fn(&[f32], &mut [f32]) + Sync,
    to: impl Fn(T) -> f32 + Sync,
    from: impl Fn(f32) -> T + Sync,
) -> Vec<T> {
    let mut out = vec![T::default(); x.len()];
    out.par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .for_each(|(d, s)| {
            let src: Vec<f32> = s.iter().map(|&v| to(v)).collect();
            let mut dst = vec![0f32; n];
            norm_row(&src, &mut dst);
            for (o, v) in d.iter_mut().zip(dst) {
                *o = from(v);
            }
        });
    out
}

fn contiguous_slice<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("expected a contiguous tensor"),
    }
}

/// OpenAI CLIP's `QuickGELU`: `x · σ(1.702 x)` (cn_clip `model.py`).
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1_no_bwd(&QuickGeluOp);
    }
    x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
}

struct QuickGeluOp;

impl CustomOp1 for QuickGeluOp {
    fn name(&self) -> &'static str {
        "cnclip-quick-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = s else {
            candle_core::bail!("quick gelu kernel is f32 only");
        };
        let x = contiguous_slice(x, l)?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(4096)
            .zip(x.par_chunks(4096))
            .for_each(|(d, s)| {
                // The linear layers' QuickGELU epilogue (vectorized), on a copy.
                d.copy_from_slice(s);
                finish_row(Epilogue::QuickGelu, None, 0, 0, 0, d);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// Scaled dot-product attention over `[batch, heads, len, head_dim]` tensors, with an optional
/// additive mask broadcastable to `[batch, heads, len_q, len_k]`. Softmax runs in f32.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let head_dim = q.dim(D::Minus1)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    // q is scaled before the product (as PyTorch's multi-head attention does): in f16 the
    // unscaled scores can overflow.
    let scores = (q * scale)?.matmul(&k.t()?)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let dtype = scores.dtype();
    let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)?;
    probs.matmul(v)
}

/// Multi-head attention straight from a fused `[batch, len, 3·width]` q/k/v projection to the
/// merged `[batch, len, width]` output, with an optional additive key mask `[batch, len]`.
///
/// On the CPU in f32 this is one kernel: every (batch, head) pair is a task for rayon that reads
/// its q, k and v columns in place (strided GEMM operands), so there is no head-split or
/// head-merge copy, and small per-head GEMMs run one per thread instead of each being split over
/// all threads. Elsewhere it falls back to [`split_qkv`] → [`attention`] → [`merge_heads`].
/// Both compute `softmax(q·kᵀ/√d + mask)·v` with the softmax in f32.
pub fn fused_attention(qkv: &Tensor, heads: usize, mask: Option<&Tensor>) -> Result<Tensor> {
    let len = qkv.dim(1)?;
    fused_attention_first(qkv, heads, mask, len)
}

/// A pre-LN or post-LN block's attention output and the input it is added to: at every
/// position, or with `cls_only` at the class token (position 0) alone, `[b, 1, w]` — all the
/// tower reads of its last block (every position still serves as key and value).
pub fn attention_and_residual(
    qkv: &Tensor,
    x: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
    cls_only: bool,
) -> Result<(Tensor, Tensor)> {
    if cls_only {
        let a = fused_attention_first(qkv, heads, mask, 1)?;
        return Ok((a, x.narrow(1, 0, 1)?.contiguous()?));
    }
    Ok((fused_attention(qkv, heads, mask)?, x.clone()))
}

/// [`fused_attention`] for the first `queries` positions only: `[batch, queries, width]`, every
/// query still attending to all keys. The last block of a tower whose output is the class token
/// needs one query row, not all of them.
pub fn fused_attention_first(
    qkv: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
    queries: usize,
) -> Result<Tensor> {
    let len = qkv.dim(1)?;
    if queries == 0 || queries > len {
        candle_core::bail!("attention: {queries} query rows asked of a sequence of {len}");
    }
    if qkv.device().is_cpu() && qkv.dtype() == DType::F32 {
        let qkv = qkv.contiguous()?;
        let op = FusedAttention { heads, queries };
        return match mask {
            Some(m) => qkv.apply_op2_no_bwd(&m.to_dtype(DType::F32)?.contiguous()?, &op),
            None => qkv.apply_op1_no_bwd(&op),
        };
    }
    let (q, k, v) = split_qkv(qkv, heads)?;
    let q = q.narrow(2, 0, queries)?;
    let mask = match mask {
        Some(m) => {
            let (b, l) = m.dims2()?;
            Some(m.to_dtype(qkv.dtype())?.reshape((b, 1, 1, l))?)
        }
        None => None,
    };
    merge_heads(&attention(&q, &k, &v, mask.as_ref())?)
}

struct FusedAttention {
    heads: usize,
    /// Leading query rows computed (≤ the sequence length).
    queries: usize,
}

/// A raw output pointer shared by parallel tasks (attention heads, GEMM panels, int8 column
/// stripes), each of which writes a disjoint set of the output's elements; the disjointness is
/// argued where it is used.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: the pointer is only used to write elements that no other task touches.
#[allow(unsafe_code)]
unsafe impl Send for OutPtr {}
#[allow(unsafe_code)]
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Read through a method so closures capture the whole (Send) wrapper, not the raw field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// A vector of `len` values written by `fill` through the pointer it is given, without zeroing
/// the memory first.
///
/// # Safety
///
/// `fill` must write all `len` values (and may read only those it has written). If it panics,
/// the vector is dropped empty.
#[allow(unsafe_code)]
pub(crate) unsafe fn filled(len: usize, fill: impl FnOnce(OutPtr)) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    fill(OutPtr(out.as_mut_ptr()));
    // SAFETY: the caller's contract: every value up to `len` is initialized.
    unsafe { out.set_len(len) };
    out
}

impl FusedAttention {
    fn run(&self, qkv: &[f32], shape: &Shape, mask: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
        let (b, l, three_w) = shape.dims3()?;
        let w = three_w / 3;
        let heads = self.heads;
        if three_w % 3 != 0 || w % heads != 0 || qkv.len() != b * l * three_w {
            candle_core::bail!("fused attention: bad qkv shape {shape:?} for {heads} heads");
        }
        if let Some(m) = mask {
            if m.len() != b * l {
                candle_core::bail!(
                    "fused attention: mask has {} values, expected {}",
                    m.len(),
                    b * l
                );
            }
        }
        let d = w / heads;
        let lq = self.queries;
        if lq > l {
            candle_core::bail!("fused attention: {lq} query rows of a sequence of {l}");
        }
        let scale = 1.0 / (d as f32).sqrt();
        let fill = |out_ptr: OutPtr| {
            team::for_each(b * heads, |task| {
                let (bi, h) = (task / heads, task % heads);
                let base = bi * l * three_w + h * d;
                let (q, k, v) = (&qkv[base..], &qkv[base + w..], &qkv[base + 2 * w..]);
                let mut scores = Vec::with_capacity(lq * l);
                #[allow(unsafe_code)]
                // SAFETY: all operands lie inside their slices: row r of q/k/v starts at
                // r·3w (< len − 2w − h·d for r < l) and spans d ≤ w columns; `scores` has room for
                // lq×l values, all of which the GEMM writes (it does not read its destination).
                unsafe {
                    // scores = scale · q · kᵀ   (k read transposed through its strides)
                    gemm::gemm(
                        lq,
                        l,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        l as isize,
                        false,
                        q.as_ptr(),
                        1,
                        three_w as isize,
                        k.as_ptr(),
                        three_w as isize,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                    scores.set_len(lq * l);
                }
                softmax_rows(&mut scores, l, mask.map(|m| &m[bi * l..(bi + 1) * l]));
                #[allow(unsafe_code)]
                // SAFETY: the destination is rows bi·lq..(bi+1)·lq, columns h·d..(h+1)·d of the
                // [b·lq, w] output: inside `out`, and disjoint from every other (bi, h) task's block.
                unsafe {
                    gemm::gemm(
                        lq,
                        d,
                        l,
                        out_ptr.get().add(bi * lq * w + h * d),
                        1,
                        w as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        l as isize,
                        v.as_ptr(),
                        1,
                        three_w as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
        };
        // SAFETY: every (image, head) task writes its lq×d block of the [b·lq, w] output, and
        // together they cover it; nothing reads it before the tasks end.
        #[allow(unsafe_code)]
        let out = unsafe { filled(b * lq * w, fill) };
        Ok((CpuStorage::F32(out), Shape::from((b, lq, w))))
    }
}

impl CustomOp1 for FusedAttention {
    fn name(&self) -> &'static str {
        "cnclip-fused-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = s else {
            candle_core::bail!("fused attention kernel is f32 only");
        };
        self.run(contiguous_slice(x, l)?, l.shape(), None)
    }
}

impl candle_core::CustomOp2 for FusedAttention {
    fn name(&self) -> &'static str {
        "cnclip-fused-attention-masked"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(m)) = (s1, s2) else {
            candle_core::bail!("fused attention kernel is f32 only");
        };
        self.run(
            contiguous_slice(x, l1)?,
            l1.shape(),
            Some(contiguous_slice(m, l2)?),
        )
    }
}

/// Splits a fused `[batch, len, 3·width]` projection into q, k, v of shape
/// `[batch, heads, len, head_dim]`, each contiguous.
pub fn split_qkv(qkv: &Tensor, heads: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, l, three_w) = qkv.dims3()?;
    let head_dim = three_w / 3 / heads;
    let qkv = qkv
        .reshape((b, l, 3, heads, head_dim))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    Ok((qkv.get(0)?, qkv.get(1)?, qkv.get(2)?))
}

/// Merges `[batch, heads, len, head_dim]` back into `[batch, len, heads·head_dim]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, l, d) = x.dims4()?;
    x.transpose(1, 2)?.contiguous()?.reshape((b, l, h * d))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The standalone QuickGELU kernel (the linear layers' epilogue) against `x·σ(1.702x)` in f64.
    #[test]
    fn quick_gelu_matches_its_definition() {
        let xs: Vec<f32> = (0..10_000).map(|i| (i as f32 - 5_000.0) / 250.0).collect();
        let t = Tensor::from_vec(xs.clone(), xs.len(), &candle_core::Device::Cpu).unwrap();
        let ys = quick_gelu(&t).unwrap().to_vec1::<f32>().unwrap();
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = f64::from(x) / (1.0 + (-1.702 * f64::from(x)).exp());
            assert!(
                (f64::from(y) - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "{x}: {y} vs {want}"
            );
        }
    }

    /// The vectorizable `exp` is within 2 ulp of the exact value over the whole normal range,
    /// and exactly 0 below it (masked attention scores must vanish).
    #[test]
    fn exp_is_accurate_and_underflows_to_zero() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let exact = (x as f64).exp();
            let rel = ((exp_f32(x) as f64 - exact) / exact).abs();
            worst = worst.max(rel);
            x += 0.000_77;
        }
        assert!(worst < 2.5e-7, "relative error {worst:e}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-10_000.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn erf_is_within_one_and_a_half_ulp() {
        let ulps = |x: f32| {
            let exact = candle_core::cpu::erf::erf_f64(x as f64);
            let ulp = if exact == 0.0 {
                f64::from(f32::from_bits(1))
            } else {
                let e = exact.abs() as f32;
                f64::from(f32::from_bits(e.to_bits() + 1) - e)
            };
            (erf_f32(x) as f64 - exact).abs() / ulp
        };
        let mut worst = (0f64, 0f32);
        let mut note = |x: f32| {
            let e = ulps(x);
            if e > worst.0 {
                worst = (e, x);
            }
        };
        // Every 257th f32 from 1e-30 to 5 (3.3M values), both signs, and the ends of the ranges.
        let mut bits = 1e-30f32.to_bits();
        while f32::from_bits(bits) < 5.0 {
            note(f32::from_bits(bits));
            note(-f32::from_bits(bits));
            bits += 257;
        }
        for x in [0.999_999_9, 1.0, 1.000_000_1, 3.919_999_8, 3.92, 1e-40] {
            note(x);
        }
        assert!(worst.0 <= 1.5, "{} ulp at {}", worst.0, worst.1);
        assert_eq!(erf_f32(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(erf_f32(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(erf_f32(f32::INFINITY), 1.0);
        assert_eq!(erf_f32(f32::NEG_INFINITY), -1.0);
        assert_eq!(erf_f32(-7.0), -1.0);
        assert!(erf_f32(f32::NAN).is_nan());
    }
}
