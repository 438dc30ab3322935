//! Building blocks shared by the towers: linear layers on pre-transposed weights, LayerNorm,
//! QuickGELU and scaled-dot-product attention.
//!
//! Why our own LayerNorm: candle-nn's fused kernel computes the variance as `E[x²] − E[x]²` in f32,
//! which cancels badly when the mean is large against the spread (BERT's embeddings); PyTorch uses a
//! two-pass (Welford-style) variance. Ours is two-pass, accumulated in f32 over f32 input, so its
//! output matches PyTorch to float rounding. Half-precision inputs are normalised in f32 and cast
//! back, as cn_clip's `LayerNorm` subclass does.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, Layout, Module, Result, Shape, Tensor, D,
};
use candle_nn::VarBuilder;
use rayon::prelude::*;

/// A dense layer `y = x·Wᵀ + b`, holding `Wᵀ` contiguous (`[in, out]`) so one GEMM serves the
/// whole flattened batch.
#[derive(Debug, Clone)]
pub struct Linear {
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Reads `{prefix}.weight` (`[out, in]`, PyTorch's `nn.Linear` layout) and `{prefix}.bias`.
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Linear> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = vb.get(out_dim, "bias")?;
        Linear::from_weight(&weight, Some(bias))
    }

    /// Builds a layer from a `[out, in]` weight and an optional `[out]` bias.
    pub fn from_weight(weight: &Tensor, bias: Option<Tensor>) -> Result<Linear> {
        Ok(Linear {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    /// Builds a layer from a weight already in `[in, out]` layout (cn_clip's `proj` and
    /// `text_projection` parameters are used as `x @ P`).
    pub fn from_weight_t(weight_t: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        Ok(Linear {
            weight_t: weight_t.contiguous()?,
            bias,
        })
    }

    /// Concatenates layers that read the same input (q, k, v) into one wider layer.
    pub fn fuse(parts: &[Linear]) -> Result<Linear> {
        let ws: Vec<&Tensor> = parts.iter().map(|l| &l.weight_t).collect();
        let weight_t = Tensor::cat(&ws, 1)?;
        let bias = match parts
            .iter()
            .map(|l| l.bias.clone())
            .collect::<Option<Vec<_>>>()
        {
            Some(bs) => Some(Tensor::cat(&bs, 0)?),
            None => None,
        };
        Ok(Linear { weight_t, bias })
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.weight_t.dims()[1]
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim;
        let y = x.reshape((rows, in_dim))?.matmul(&self.weight_t)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims.to_vec();
        *out_dims
            .last_mut()
            .expect("linear input has at least one dim") = self.out_dim();
        y.reshape(out_dims)
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
        let eps = self.eps;
        let norm_row = |src: &[f32], dst: &mut [f32]| {
            let mean = src.iter().sum::<f32>() / n as f32;
            let var = src.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
            let inv_std = 1.0 / (var + eps).sqrt();
            for (((d, &s), &w), &b) in dst.iter_mut().zip(src).zip(w).zip(b) {
                *d = (s - mean) * inv_std * w + b;
            }
        };
        let shape = l1.shape().clone();
        let out = match s1 {
            CpuStorage::F32(x) => {
                let x = contiguous_slice(x, l1)?;
                let mut out = vec![0f32; x.len()];
                out.par_chunks_mut(n)
                    .zip(x.par_chunks(n))
                    .for_each(|(d, s)| norm_row(s, d));
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
                for (d, &v) in d.iter_mut().zip(s) {
                    *d = v / (1.0 + (-1.702 * v).exp());
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// Scaled dot-product attention over `[batch, heads, len, head_dim]` tensors, with an optional
/// additive mask broadcastable to `[batch, heads, len_q, len_k]`. Softmax runs in f32.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let head_dim = q.dim(D::Minus1)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let scores = (q.matmul(&k.t()?)? * scale)?;
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
    if qkv.device().is_cpu() && qkv.dtype() == DType::F32 {
        let qkv = qkv.contiguous()?;
        let op = FusedAttention { heads };
        return match mask {
            Some(m) => qkv.apply_op2_no_bwd(&m.to_dtype(DType::F32)?.contiguous()?, &op),
            None => qkv.apply_op1_no_bwd(&op),
        };
    }
    let (q, k, v) = split_qkv(qkv, heads)?;
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
}

/// A raw output pointer shared by the attention tasks; each task writes a disjoint set of elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the pointer is only used to write elements that no other task touches (see `run`).
#[allow(unsafe_code)]
unsafe impl Send for OutPtr {}
#[allow(unsafe_code)]
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Read through a method so closures capture the whole (Send) wrapper, not the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
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
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![0f32; b * l * w];
        let out_ptr = OutPtr(out.as_mut_ptr());
        (0..b * heads).into_par_iter().for_each(|task| {
            let (bi, h) = (task / heads, task % heads);
            let base = bi * l * three_w + h * d;
            let (q, k, v) = (&qkv[base..], &qkv[base + w..], &qkv[base + 2 * w..]);
            let mut scores = vec![0f32; l * l];
            #[allow(unsafe_code)]
            // SAFETY: all operands lie inside their slices: row r of q/k/v starts at
            // r·3w (< len − 2w − h·d for r < l) and spans d ≤ w columns; `scores` is l×l.
            unsafe {
                // scores = scale · q · kᵀ   (k read transposed through its strides)
                gemm::gemm(
                    l,
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
            }
            for row in scores.chunks_exact_mut(l) {
                if let Some(m) = mask {
                    for (s, &mv) in row.iter_mut().zip(&m[bi * l..(bi + 1) * l]) {
                        *s += mv;
                    }
                }
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for s in row.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|s| *s *= inv);
            }
            #[allow(unsafe_code)]
            // SAFETY: the destination is rows bi·l..(bi+1)·l, columns h·d..(h+1)·d of the
            // [b·l, w] output: inside `out`, and disjoint from every other (bi, h) task's block.
            unsafe {
                gemm::gemm(
                    l,
                    d,
                    l,
                    out_ptr.get().add(bi * l * w + h * d),
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
        Ok((CpuStorage::F32(out), Shape::from((b, l, w))))
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
