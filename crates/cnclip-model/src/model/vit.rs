//! cn_clip's `VisualTransformer` (`cn_clip/clip/model.py`): patch conv → class token → positions →
//! `ln_pre` → pre-LN residual blocks (fused q/k/v, QuickGELU MLP 4×) → `ln_post` on the class token
//! → `@ proj`. LayerNorm eps 1e-5 (PyTorch's default, which cn_clip keeps). The last block computes
//! its output at the class token only (all positions still serve as keys and values): its
//! attention output, MLP and residuals for one position instead of all.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::ops::{self, Epilogue, LayerNorm, Linear};
use crate::config::VitConfig;

const LN_EPS: f64 = 1e-5;

/// One `ResidualAttentionBlock`.
#[derive(Debug, Clone)]
struct Block {
    ln_1: LayerNorm,
    in_proj: Linear,
    out_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
    heads: usize,
}

impl Block {
    fn new(vb: VarBuilder, width: usize, heads: usize) -> Result<Block> {
        let attn = vb.pp("attn");
        // nn.MultiheadAttention stores q/k/v stacked as `in_proj_weight` [3w, w].
        let in_w = attn.get((3 * width, width), "in_proj_weight")?;
        let in_b = attn.get(3 * width, "in_proj_bias")?;
        Ok(Block {
            ln_1: LayerNorm::new(vb.pp("ln_1"), width, LN_EPS)?,
            in_proj: Linear::from_weight(&in_w, Some(in_b))?,
            out_proj: Linear::new(attn.pp("out_proj"), width, width)?,
            ln_2: LayerNorm::new(vb.pp("ln_2"), width, LN_EPS)?,
            c_fc: Linear::new(vb.pp("mlp").pp("c_fc"), width, 4 * width)?,
            c_proj: Linear::new(vb.pp("mlp").pp("c_proj"), 4 * width, width)?,
            heads,
        })
    }

    fn quantize(&self) -> Result<Block> {
        Ok(Block {
            in_proj: self.in_proj.quantize()?,
            out_proj: self.out_proj.quantize()?,
            c_fc: self.c_fc.quantize()?,
            c_proj: self.c_proj.quantize()?,
            ..self.clone()
        })
    }

    /// With `cls_only`, the block's output at the class token alone (`[b, 1, w]`): every
    /// position still serves as key and value, but the attention output, MLP and residuals are
    /// per position, and the tower reads nothing but the class token of its last block.
    fn forward(&self, x: &Tensor, cls_only: bool) -> Result<Tensor> {
        let h = self.ln_1.forward(x)?;
        let qkv = self.in_proj.forward(&h)?;
        let (a, x) = ops::attention_and_residual(&qkv, x, self.heads, None, cls_only)?;
        let x = self.out_proj.forward_with(&a, Epilogue::Residual(&x))?;
        let h = self
            .c_fc
            .forward_with(&self.ln_2.forward(&x)?, Epilogue::QuickGelu)?;
        self.c_proj.forward_with(&h, Epilogue::Residual(&x))
    }
}

/// The ViT image tower.
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    /// `conv1.weight` reshaped to `[3·p·p, width]`: the patch convolution as a GEMM operand.
    patch_kernel_t: Tensor,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: LayerNorm,
    blocks: Vec<Block>,
    ln_post: LayerNorm,
    proj: Linear,
    patch_size: usize,
}

impl VisionTransformer {
    /// Builds the tower from `visual.*` tensors (`vb` already points at `visual`).
    pub fn new(vb: VarBuilder, cfg: &VitConfig, embed_dim: usize) -> Result<VisionTransformer> {
        let w = cfg.width;
        let p = cfg.patch_size;
        let heads = cfg.heads();
        let blocks = (0..cfg.layers)
            .map(|i| Block::new(vb.pp("transformer").pp("resblocks").pp(i), w, heads))
            .collect::<Result<Vec<_>>>()?;
        Ok(VisionTransformer {
            patch_kernel_t: vb
                .get((w, 3, p, p), "conv1.weight")?
                .reshape((w, 3 * p * p))?
                .t()?
                .contiguous()?,
            class_embedding: vb.get(w, "class_embedding")?,
            positional_embedding: vb.get((cfg.num_positions(), w), "positional_embedding")?,
            ln_pre: LayerNorm::new(vb.pp("ln_pre"), w, LN_EPS)?,
            blocks,
            ln_post: LayerNorm::new(vb.pp("ln_post"), w, LN_EPS)?,
            proj: Linear::from_weight_t(vb.get((w, embed_dim), "proj")?, None)?,
            patch_size: p,
        })
    }

    /// The tower with the residual blocks' linear layers quantized to 8 bits
    /// ([`Linear::quantize`]); the patch embedding and the final projection stay in full
    /// precision.
    pub fn quantize(&self) -> Result<VisionTransformer> {
        Ok(VisionTransformer {
            blocks: self
                .blocks
                .iter()
                .map(Block::quantize)
                .collect::<Result<_>>()?,
            ..self.clone()
        })
    }

    /// `[batch, 3, S, S]` normalised pixels → `[batch, embed_dim]` unnormalised features.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let pixels = pixels.to_dtype(self.dtype())?;
        let x = self.patchify(&pixels)?; // [b, grid², w]
        let (b, _, w) = x.dims3()?;
        let cls = self.class_embedding.reshape((1, 1, w))?.repeat((b, 1, 1))?;
        let x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.positional_embedding)?;
        let mut x = self.ln_pre.forward(&x)?;
        let last = self.blocks.len().saturating_sub(1);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, i == last)?;
        }
        let cls = self.ln_post.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?;
        self.proj.forward(&cls)
    }

    /// The stride-`p`, kernel-`p` convolution as one GEMM: non-overlapping patches are a reshape,
    /// so no im2col buffer beyond the patch matrix is needed.
    fn patchify(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let patches = pixels
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))? // b, gh, gw, c, p, p
            .contiguous()?
            .reshape((b * gh * gw, c * p * p))?;
        let width = self.patch_kernel_t.dim(1)?;
        patches
            .matmul(&self.patch_kernel_t)?
            .reshape((b, gh * gw, width))
    }

    /// The dtype the tower computes in.
    pub fn dtype(&self) -> DType {
        self.patch_kernel_t.dtype()
    }
}
