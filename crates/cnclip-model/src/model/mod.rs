//! The Chinese-CLIP model: image tower, text tower, projections and `logit_scale`.
//!
//! [`ChineseClip::encode_images`] and [`ChineseClip::encode_texts`] return **unnormalised**
//! features, exactly like cn_clip's `encode_image` / `encode_text`; the `*_normalized` helpers
//! L2-normalise them. Similarity is `logit_scale.exp() × cosine`, zero-shot probabilities are its
//! softmax over labels. Inference is always deterministic (no dropout: cn_clip keeps dropout on
//! unless `.eval()` is called).

pub mod bert;
pub mod ops;
pub mod panels;
pub mod q8;
pub mod resnet;
mod team;
pub mod vit;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::{ClipConfig, VisionConfig};
use crate::tokenizer::{Tokenizer, DEFAULT_CONTEXT_LENGTH};
pub use crate::weights::Towers;
use crate::{Error, Result};

/// The image tower of either family.
#[derive(Debug, Clone)]
pub enum VisionTower {
    /// Vision Transformer (ViT-B-16, ViT-L-14, ViT-L-14-336, ViT-H-14).
    Vit(vit::VisionTransformer),
    /// ModifiedResNet (RN50).
    Resnet(resnet::ModifiedResNet),
}

impl VisionTower {
    fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            VisionTower::Vit(t) => t.forward(pixels),
            VisionTower::Resnet(t) => t.forward(pixels),
        }
    }
}

/// A loaded Chinese-CLIP model (both towers, or one: [`ChineseClip::load_towers`]).
#[derive(Debug, Clone)]
pub struct ChineseClip {
    config: ClipConfig,
    vision: Option<VisionTower>,
    text: Option<bert::TextTransformer>,
    logit_scale: f32,
    fingerprint: String,
    device: Device,
    dtype: DType,
    quantized: bool,
}

impl ChineseClip {
    /// Loads a checkpoint in any supported format (official `.pt`, Hugging Face directory,
    /// safetensors; see [`crate::weights`]), checks that every tensor is present with its exact
    /// shape, and builds the model in `dtype` on `device`.
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<ChineseClip> {
        ChineseClip::load_towers(path, device, dtype, Towers::Both)
    }

    /// [`ChineseClip::load`] with only the tower(s) `towers` read and built: a process that
    /// only encodes texts skips reading the image tower, and the other way round. The
    /// configuration and [`ChineseClip::fingerprint`] are those of the whole checkpoint (every
    /// tensor is still checked); encoding with a tower left out is an error.
    pub fn load_towers(
        path: &Path,
        device: &Device,
        dtype: DType,
        towers: Towers,
    ) -> Result<ChineseClip> {
        let ck = crate::weights::load_with(path, towers)?;
        crate::weights::check_complete(&ck)?;
        let fingerprint = ck.fingerprint()?;
        let built = match (ck.has(Towers::Image), ck.has(Towers::Text)) {
            // A file in transformers' names is read whole: build only what was asked for.
            (true, true) => towers,
            (true, false) => Towers::Image,
            (false, _) => Towers::Text,
        };
        ChineseClip::build(ck.config, ck.tensors, fingerprint, built, device, dtype)
    }

    /// Builds the model from tensors in canonical (cn_clip state-dict) names, converted to `dtype`
    /// on `device`. Every tensor the configuration needs must be present with its exact shape;
    /// a missing or mis-shaped tensor is an error naming it.
    pub fn from_tensors(
        config: ClipConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
    ) -> Result<ChineseClip> {
        let fingerprint = crate::weights::fingerprint(&config, &tensors, &HashMap::new())?;
        ChineseClip::build(config, tensors, fingerprint, Towers::Both, device, dtype)
    }

    fn build(
        config: ClipConfig,
        tensors: HashMap<String, Tensor>,
        fingerprint: String,
        towers: Towers,
        device: &Device,
        dtype: DType,
    ) -> Result<ChineseClip> {
        let logit_scale = tensors
            .get("logit_scale")
            .ok_or_else(|| Error::InvalidInput("tensor logit_scale is missing".into()))?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .get(0)?
            .to_scalar::<f32>()?;
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        let vision =
            match (&config.vision, towers) {
                (_, Towers::Text) => None,
                (VisionConfig::Vit(c), _) => Some(VisionTower::Vit(vit::VisionTransformer::new(
                    vb.pp("visual"),
                    c,
                    config.embed_dim,
                )?)),
                (VisionConfig::Resnet(c), _) => Some(VisionTower::Resnet(
                    resnet::ModifiedResNet::new(vb.pp("visual"), c, config.embed_dim)?,
                )),
            };
        let text = match towers {
            Towers::Image => None,
            _ => Some(bert::TextTransformer::new(
                vb.pp("bert"),
                vb.clone(),
                &config.text,
                config.embed_dim,
            )?),
        };
        Ok(ChineseClip {
            config,
            vision,
            text,
            logit_scale,
            fingerprint,
            device: device.clone(),
            dtype,
            quantized: false,
        })
    }

    /// The same model with the transformer layers' weights in 8 bits (`--quantize q8`): int8
    /// weights with one scale per output channel, activations quantized per row and 128-wide block,
    /// products summed in 32-bit integers ([`q8`]). Both ViT blocks and BERT layers are
    /// quantized; patch embedding, LayerNorms, attention itself, the ResNet convolutions (RN50's
    /// image tower) and the projections stay in f32. Only f32 models can be quantized.
    ///
    /// The embeddings move slightly (cosine to the f32 embeddings ≈ 0.999; measured figures are in
    /// the README); the weights fingerprint is unchanged, since the weights are the same.
    pub fn quantize(&self) -> Result<ChineseClip> {
        if self.dtype != DType::F32 {
            return Err(Error::InvalidInput(format!(
                "only an f32 model can be quantized (this one is {:?})",
                self.dtype
            )));
        }
        let vision = match &self.vision {
            Some(VisionTower::Vit(t)) => Some(VisionTower::Vit(t.quantize()?)),
            other => other.clone(),
        };
        let text = match &self.text {
            Some(t) => Some(t.quantize()?),
            None => None,
        };
        Ok(ChineseClip {
            vision,
            text,
            quantized: true,
            ..self.clone()
        })
    }

    /// Whether [`ChineseClip::quantize`] made this model.
    pub fn is_quantized(&self) -> bool {
        self.quantized
    }

    /// The model's configuration.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// Input side length images must be preprocessed to.
    pub fn image_size(&self) -> usize {
        self.config.image_size()
    }

    /// Width of the embeddings.
    pub fn embed_dim(&self) -> usize {
        self.config.embed_dim
    }

    /// The learned temperature, `logit_scale` (before `exp`).
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    /// A short hex digest identifying these weights: SHA-256 over the configuration and, for every
    /// tensor in name order, its name, shape and first 64 values
    /// ([`crate::weights::Checkpoint::fingerprint`]; the same when a tower was left out). Two
    /// checkpoints with the same fingerprint embed identically; an index records it so vectors
    /// of different weights are never mixed, even when both are called `ViT-B-16`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype the model computes in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `[batch, 3, S, S]` normalised pixels → `[batch, embed_dim]` unnormalised f32 features.
    pub fn encode_images(&self, pixels: &Tensor) -> Result<Tensor> {
        let s = self.image_size();
        let (_, c, h, w) = pixels.dims4()?;
        if (c, h, w) != (3, s, s) {
            return Err(Error::InvalidInput(format!(
                "image batch has shape [_, {c}, {h}, {w}], the model needs [_, 3, {s}, {s}]"
            )));
        }
        let vision = self.vision.as_ref().ok_or_else(|| {
            Error::InvalidInput("this model was loaded without its image tower".into())
        })?;
        let pixels = pixels.to_device(&self.device)?;
        Ok(on_pool(|| vision.forward(&pixels))?.to_dtype(DType::F32)?)
    }

    /// Preprocessed images (each `3·S·S` CHW floats, see [`crate::preprocess`]) → unnormalised
    /// features, one row per image.
    pub fn encode_image_data(&self, images: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.image_size();
        let n = 3 * s * s;
        if let Some(bad) = images.iter().find(|d| d.len() != n) {
            return Err(Error::InvalidInput(format!(
                "preprocessed image has {} values, the model needs 3×{s}×{s} = {n}",
                bad.len()
            )));
        }
        let flat: Vec<f32> = images.concat();
        let pixels = Tensor::from_vec(flat, (images.len(), 3, s, s), &Device::Cpu)?;
        Ok(self.encode_images(&pixels)?.to_vec2()?)
    }

    /// Token ids `[batch, len]` (u32, 0 = padding) → unnormalised f32 features.
    pub fn encode_token_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let text = self.text.as_ref().ok_or_else(|| {
            Error::InvalidInput("this model was loaded without its text tower".into())
        })?;
        let (_, l) = ids.dims2()?;
        if l > text.max_len() {
            return Err(Error::InvalidInput(format!(
                "token sequence of length {l} exceeds the model's {} positions",
                text.max_len()
            )));
        }
        let ids = ids.to_device(&self.device)?;
        let forward = || text.forward(&ids);
        // A query's handful of tokens: ~70 short parallel loops, run by a team kept awake.
        let features = if self.device.is_cpu() && ids.elem_count() <= panels::FEW_ROWS {
            team::with_team(forward)
        } else {
            on_pool(forward)
        };
        Ok(features?.to_dtype(DType::F32)?)
    }

    /// Texts → unnormalised features, tokenized like `cn_clip.clip.tokenize(texts)` (context 52).
    /// The batch is trimmed to its longest sequence: padding is masked with an additive −10000
    /// whose `exp` is exactly 0, so the result is the same as with full padding, for far less work.
    pub fn encode_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.encode_texts_with_context(texts, DEFAULT_CONTEXT_LENGTH)
    }

    /// [`ChineseClip::encode_texts`] with an explicit context length.
    pub fn encode_texts_with_context(
        &self,
        texts: &[&str],
        context_length: usize,
    ) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let tok = Tokenizer::chinese();
        let rows: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| tok.encode(t, context_length))
            .collect::<std::result::Result<_, _>>()?;
        let longest = rows
            .iter()
            .map(|r| r.iter().rposition(|&id| id != 0).map_or(0, |p| p + 1))
            .max()
            .unwrap_or(0)
            .max(1);
        let flat: Vec<u32> = rows
            .iter()
            .flat_map(|r| r[..longest].iter().copied())
            .collect();
        let ids = Tensor::from_vec(flat, (rows.len(), longest), &Device::Cpu)?;
        Ok(self.encode_token_ids(&ids)?.to_vec2()?)
    }

    /// [`ChineseClip::encode_image_data`], L2-normalised.
    pub fn encode_image_data_normalized(&self, images: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        Ok(self
            .encode_image_data(images)?
            .into_iter()
            .map(l2_normalized)
            .collect())
    }

    /// [`ChineseClip::encode_texts`], L2-normalised.
    pub fn encode_texts_normalized(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(self
            .encode_texts(texts)?
            .into_iter()
            .map(l2_normalized)
            .collect())
    }

    /// `logit_scale.exp() × cosine` for every (image, text) pair: `[images, texts]`, like
    /// cn_clip's `get_similarity` (`logits_per_image`). Inputs may be unnormalised.
    pub fn similarity(
        &self,
        image_features: &[Vec<f32>],
        text_features: &[Vec<f32>],
    ) -> Vec<Vec<f32>> {
        let scale = self.logit_scale.exp();
        let texts: Vec<Vec<f32>> = text_features.iter().cloned().map(l2_normalized).collect();
        image_features
            .iter()
            .map(|i| {
                let i = l2_normalized(i.clone());
                texts.iter().map(|t| scale * dot(&i, t)).collect()
            })
            .collect()
    }

    /// Zero-shot classification: for each image, the softmax over `labels` of
    /// `logit_scale.exp() × cosine(image, label text)`.
    pub fn classify(&self, images: &[Vec<f32>], labels: &[&str]) -> Result<Vec<Vec<f32>>> {
        if labels.is_empty() {
            return Err(Error::InvalidInput(
                "zero-shot classification needs at least one label".into(),
            ));
        }
        let image_features = self.encode_image_data(images)?;
        let text_features = self.encode_texts(labels)?;
        Ok(self
            .similarity(&image_features, &text_features)
            .into_iter()
            .map(|row| softmax(&row))
            .collect())
    }
}

/// Runs a forward pass on one of rayon's worker threads. Its kernels are parallel loops; started
/// from a thread outside the pool, each one hands its work to the pool and sleeps until it is
/// done, two thread wake-ups per layer operation (~80 per text query, measured as about a tenth
/// of a one-query run on two cores). From a worker, the loops run on the calling thread with the
/// other workers stealing their share.
fn on_pool<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let mut out = None;
    rayon::scope(|_| out = Some(f()));
    out.expect("the scope ran its body")
}

/// Returns `v / ‖v‖` (a zero vector stays zero).
pub fn l2_normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}
