//! OpenAI CLIP's `ModifiedResNet` as cn_clip ships it (`cn_clip/clip/model.py`): a 3-conv stem with
//! an average pool, bottleneck stages whose strided convolutions are anti-aliased (avgpool, then a
//! stride-1 conv), and an attention pool over the final feature map.
//!
//! BatchNorm runs in inference mode (running statistics, eps 1e-5 = PyTorch's default) and is
//! folded into the preceding bias-free convolution at load time: `w' = w·γ/√(σ²+ε)`,
//! `b' = β − μ·γ/√(σ²+ε)`. The result equals conv→BN up to float rounding.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::ops::{self, Linear};
use crate::config::ResnetConfig;

const BN_EPS: f64 = 1e-5;

/// A convolution with its BatchNorm folded in.
#[derive(Debug, Clone)]
struct ConvBn {
    weight: Tensor,
    bias: Tensor,
    padding: usize,
}

impl ConvBn {
    fn new(
        conv: VarBuilder,
        bn: VarBuilder,
        c_in: usize,
        c_out: usize,
        k: usize,
    ) -> Result<ConvBn> {
        // candle's CPU backend has no bf16 convolution/matmul kernel: there the convolutions run in
        // f32 and only the activations between them are bf16.
        let dtype = match conv.dtype() {
            DType::BF16 if conv.device().is_cpu() => DType::F32,
            d => d,
        };
        let w = conv
            .get((c_out, c_in, k, k), "weight")?
            .to_dtype(DType::F32)?;
        let gamma = bn.get(c_out, "weight")?.to_dtype(DType::F32)?;
        let beta = bn.get(c_out, "bias")?.to_dtype(DType::F32)?;
        let mean = bn.get(c_out, "running_mean")?.to_dtype(DType::F32)?;
        let var = bn.get(c_out, "running_var")?.to_dtype(DType::F32)?;
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let weight = w.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
        let bias = (beta - (mean * &scale)?)?;
        Ok(ConvBn {
            weight: weight.to_dtype(dtype)?,
            bias: bias.to_dtype(dtype)?.reshape((1, c_out, 1, 1))?,
            padding: k / 2,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_strided(x, 1)
    }

    fn forward_strided(&self, x: &Tensor, stride: usize) -> Result<Tensor> {
        let dtype = x.dtype();
        x.to_dtype(self.weight.dtype())?
            .conv2d(&self.weight, self.padding, stride, 1, 1)?
            .broadcast_add(&self.bias)?
            .to_dtype(dtype)
    }
}

#[derive(Debug, Clone)]
struct Bottleneck {
    c1: ConvBn,
    c2: ConvBn,
    c3: ConvBn,
    downsample: Option<ConvBn>,
    stride: usize,
}

impl Bottleneck {
    const EXPANSION: usize = 4;

    fn new(vb: VarBuilder, inplanes: usize, planes: usize, stride: usize) -> Result<Bottleneck> {
        let out = planes * Self::EXPANSION;
        let downsample = if stride > 1 || inplanes != out {
            // `downsample` = Sequential("-1": AvgPool2d, "0": conv 1×1, "1": BatchNorm2d)
            let ds = vb.pp("downsample");
            Some(ConvBn::new(ds.pp("0"), ds.pp("1"), inplanes, out, 1)?)
        } else {
            None
        };
        Ok(Bottleneck {
            c1: ConvBn::new(vb.pp("conv1"), vb.pp("bn1"), inplanes, planes, 1)?,
            c2: ConvBn::new(vb.pp("conv2"), vb.pp("bn2"), planes, planes, 3)?,
            c3: ConvBn::new(vb.pp("conv3"), vb.pp("bn3"), planes, out, 1)?,
            downsample,
            stride,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = self.c1.forward(x)?.relu()?;
        let out = self.c2.forward(&out)?.relu()?;
        let out = avg_pool(&out, self.stride)?;
        let out = self.c3.forward(&out)?;
        let identity = match &self.downsample {
            Some(ds) => ds.forward(&avg_pool(x, self.stride)?)?,
            None => x.clone(),
        };
        (out + identity)?.relu()
    }
}

fn avg_pool(x: &Tensor, k: usize) -> Result<Tensor> {
    if k > 1 {
        x.avg_pool2d(k)
    } else {
        Ok(x.clone())
    }
}

/// `AttentionPool2d`: multi-head attention of the mean token (prepended) over all tokens; only the
/// first output token is returned, so only its query is computed.
#[derive(Debug, Clone)]
struct AttentionPool {
    positional_embedding: Tensor,
    q: Linear,
    kv: Linear,
    c: Linear,
    heads: usize,
}

impl AttentionPool {
    fn new(vb: VarBuilder, spacial: usize, dim: usize, heads: usize, out: usize) -> Result<Self> {
        Ok(AttentionPool {
            positional_embedding: vb.get((spacial * spacial + 1, dim), "positional_embedding")?,
            q: Linear::new(vb.pp("q_proj"), dim, dim)?,
            kv: Linear::stacked(vb.clone(), &["k_proj", "v_proj"], dim, dim)?,
            c: Linear::new(vb.pp("c_proj"), dim, out)?,
            heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let x = x.reshape((b, c, h * w))?.transpose(1, 2)?; // [b, hw, c]
        let mean = x.mean_keepdim(1)?;
        let x = Tensor::cat(&[&mean, &x], 1)?.broadcast_add(&self.positional_embedding)?;
        let l = h * w + 1;
        let hd = c / self.heads;
        let q = self
            .q
            .forward(&x.narrow(1, 0, 1)?)?
            .reshape((b, 1, self.heads, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let kv = self
            .kv
            .forward(&x)?
            .reshape((b, l, 2, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let a = ops::attention(&q, &kv.get(0)?, &kv.get(1)?, None)?;
        self.c.forward(&ops::merge_heads(&a)?.squeeze(1)?)
    }
}

/// The ModifiedResNet image tower.
#[derive(Debug, Clone)]
pub struct ModifiedResNet {
    stem: [ConvBn; 3],
    stages: Vec<Vec<Bottleneck>>,
    attnpool: AttentionPool,
    dtype: DType,
}

impl ModifiedResNet {
    /// Builds the tower from `visual.*` tensors (`vb` already points at `visual`).
    pub fn new(vb: VarBuilder, cfg: &ResnetConfig, embed_dim: usize) -> Result<ModifiedResNet> {
        let w = cfg.width;
        let stem = [
            ConvBn::new(vb.pp("conv1"), vb.pp("bn1"), 3, w / 2, 3)?,
            ConvBn::new(vb.pp("conv2"), vb.pp("bn2"), w / 2, w / 2, 3)?,
            ConvBn::new(vb.pp("conv3"), vb.pp("bn3"), w / 2, w, 3)?,
        ];
        let mut inplanes = w;
        let mut stages = Vec::with_capacity(4);
        for (i, &blocks) in cfg.layers.iter().enumerate() {
            let planes = w << i;
            let stride = if i == 0 { 1 } else { 2 };
            let vb_stage = vb.pp(format!("layer{}", i + 1));
            let mut stage = Vec::with_capacity(blocks);
            for j in 0..blocks {
                let s = if j == 0 { stride } else { 1 };
                stage.push(Bottleneck::new(vb_stage.pp(j), inplanes, planes, s)?);
                inplanes = planes * Bottleneck::EXPANSION;
            }
            stages.push(stage);
        }
        let attnpool = AttentionPool::new(
            vb.pp("attnpool"),
            cfg.image_size / 32,
            w * 32,
            cfg.heads(),
            embed_dim,
        )?;
        Ok(ModifiedResNet {
            stem,
            stages,
            attnpool,
            dtype: vb.dtype(),
        })
    }

    /// `[batch, 3, S, S]` normalised pixels → `[batch, embed_dim]` unnormalised features.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let mut x = pixels.to_dtype(self.dtype)?;
        // Stem convolution 1 has stride 2.
        x = self.stem[0].forward_strided(&x, 2)?.relu()?;
        for conv in &self.stem[1..] {
            x = conv.forward(&x)?.relu()?;
        }
        x = x.avg_pool2d(2)?;
        for stage in &self.stages {
            for block in stage {
                x = block.forward(&x)?;
            }
        }
        self.attnpool.forward(&x)
    }

    /// The dtype the tower's activations use.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
}
