//! cn_clip's text tower: `BertModel` from `cn_clip/clip/modeling_bert.py` (Chinese BERT /
//! RoBERTa-wwm-ext), post-LN, GELU (erf), LayerNorm eps 1e-12. The text feature is the last
//! hidden state of `[CLS]` (position 0) `@ text_projection`; the pooler is never used, and the
//! last layer computes its output at `[CLS]` only.
//!
//! Attention mask: cn_clip passes `ids != [PAD]` and BertModel turns it into an additive
//! `(1 − mask) · −10000` (`modeling_bert.py`, `BertModel.forward`). We use the same constant: it is
//! representable in f16/bf16 (candle's port casts `f32::MIN` and gets NaN there), and since
//! `exp(−10000)` underflows to exactly 0, trimming a batch to its longest sequence changes nothing.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::ops::{self, Epilogue, LayerNorm, Linear};
use crate::config::TextConfig;

/// Additive mask value for padding (`modeling_bert.py`: `(1.0 - mask) * -10000.0`).
const MASK_VALUE: f64 = -10000.0;

#[derive(Debug, Clone)]
struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_ln: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_ln: LayerNorm,
    heads: usize,
}

impl Layer {
    fn new(vb: VarBuilder, cfg: &TextConfig) -> Result<Layer> {
        let h = cfg.hidden_size;
        let att = vb.pp("attention");
        let sa = att.pp("self");
        // q, k and v read the same input: one GEMM instead of three.
        let qkv = Linear::stacked(sa, &["query", "key", "value"], h, h)?;
        Ok(Layer {
            qkv,
            attn_out: Linear::new(att.pp("output").pp("dense"), h, h)?,
            attn_ln: LayerNorm::new(att.pp("output").pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            intermediate: Linear::new(vb.pp("intermediate").pp("dense"), h, cfg.intermediate_size)?,
            output: Linear::new(vb.pp("output").pp("dense"), cfg.intermediate_size, h)?,
            output_ln: LayerNorm::new(vb.pp("output").pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            heads: cfg.num_heads,
        })
    }

    fn quantize(&self) -> Result<Layer> {
        Ok(Layer {
            qkv: self.qkv.quantize()?,
            attn_out: self.attn_out.quantize()?,
            intermediate: self.intermediate.quantize()?,
            output: self.output.quantize()?,
            ..self.clone()
        })
    }

    /// With `cls_only`, the layer's output at `[CLS]` alone (`[b, 1, h]`), all the text feature
    /// reads of the last layer (every position still serves as key and value).
    fn forward(&self, x: &Tensor, mask: &Tensor, cls_only: bool) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?;
        let (a, x) = ops::attention_and_residual(&qkv, x, self.heads, Some(mask), cls_only)?;
        let x = self
            .attn_ln
            .forward(&self.attn_out.forward_with(&a, Epilogue::Residual(&x))?)?;
        let h = self.intermediate.forward_with(&x, Epilogue::GeluErf)?;
        self.output_ln
            .forward(&self.output.forward_with(&h, Epilogue::Residual(&x))?)
    }
}

/// The BERT text tower plus `text_projection`.
#[derive(Debug, Clone)]
pub struct TextTransformer {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_0: Tensor,
    embeddings_ln: LayerNorm,
    layers: Vec<Layer>,
    projection: Linear,
}

impl TextTransformer {
    /// Builds the tower from `bert.*` (`vb_bert`) and `text_projection` (`vb_root`).
    pub fn new(
        vb_bert: VarBuilder,
        vb_root: VarBuilder,
        cfg: &TextConfig,
        embed_dim: usize,
    ) -> Result<TextTransformer> {
        let h = cfg.hidden_size;
        let emb = vb_bert.pp("embeddings");
        let token_types = emb.get((cfg.type_vocab_size, h), "token_type_embeddings.weight")?;
        let layers = (0..cfg.num_layers)
            .map(|i| Layer::new(vb_bert.pp("encoder").pp("layer").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(TextTransformer {
            word_embeddings: emb.get((cfg.vocab_size, h), "word_embeddings.weight")?,
            position_embeddings: emb.get(
                (cfg.max_position_embeddings, h),
                "position_embeddings.weight",
            )?,
            // cn_clip never passes token types: all zeros.
            token_type_0: token_types.get(0)?,
            embeddings_ln: LayerNorm::new(emb.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            layers,
            projection: Linear::from_weight_t(
                vb_root.get((h, embed_dim), "text_projection")?,
                None,
            )?,
        })
    }

    /// The tower with its encoder layers' linear layers quantized to 8 bits
    /// ([`Linear::quantize`]); embeddings, LayerNorms and `text_projection` stay in full precision.
    pub fn quantize(&self) -> Result<TextTransformer> {
        Ok(TextTransformer {
            layers: self
                .layers
                .iter()
                .map(Layer::quantize)
                .collect::<Result<_>>()?,
            ..self.clone()
        })
    }

    /// Longest sequence the position table allows.
    pub fn max_len(&self) -> usize {
        self.position_embeddings.dim(0).unwrap_or(0)
    }

    /// `[batch, len]` token ids (u32, 0 = padding) → `[batch, embed_dim]` unnormalised features.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let dtype = self.word_embeddings.dtype();
        let device = ids.device();
        let words = self
            .word_embeddings
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, l, ()))?;
        let pos = self.position_embeddings.narrow(0, 0, l)?;
        let x = words
            .broadcast_add(&pos)?
            .broadcast_add(&self.token_type_0)?;
        let mut x = self.embeddings_ln.forward(&x)?;
        let mask = additive_mask(ids, dtype, device)?;
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &mask, i == last)?;
        }
        let cls = x.narrow(1, 0, 1)?.squeeze(1)?;
        self.projection.forward(&cls)
    }
}

/// `[batch, len]`: 0 where `ids != 0`, −10000 at padding.
fn additive_mask(ids: &Tensor, dtype: DType, device: &Device) -> Result<Tensor> {
    let is_pad = ids.eq(0u32)?.to_dtype(DType::F32)?;
    (is_pad * MASK_VALUE)?.to_dtype(dtype)?.to_device(device)
}
