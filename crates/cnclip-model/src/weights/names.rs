//! The canonical tensor table of a configuration, architecture inference from shapes, and the
//! completeness check.
//!
//! Canonical names are cn_clip's own state-dict names (`cn_clip/clip/model.py`,
//! `cn_clip/clip/modeling_bert.py`) without the `module.` prefix DistributedDataParallel adds.

use std::collections::{HashMap, HashSet};

use crate::config::{ClipConfig, ResnetConfig, TextConfig, VisionConfig, VitConfig};

use super::error::WeightsError;
use super::Checkpoint;

/// Every tensor a checkpoint of `config` must hold, canonical name → shape, in cn_clip's
/// state-dict order. BatchNorm running statistics are included (they are buffers, not
/// parameters, but the model needs them); `num_batches_tracked` and `bert.pooler.*` are not.
pub fn expected_tensors(config: &ClipConfig) -> Vec<(String, Vec<usize>)> {
    let mut t = Table::default();
    let e = config.embed_dim;
    // `CLIP`'s own parameters come first in its state dict, then `visual`, then `bert`.
    t.add("text_projection", &[config.text.hidden_size, e]);
    t.add("logit_scale", &[]);
    match &config.vision {
        VisionConfig::Vit(c) => vit_tensors(&mut t, c, e),
        VisionConfig::Resnet(c) => resnet_tensors(&mut t, c, e),
    }
    text_tensors(&mut t, &config.text);
    t.0
}

/// Whether a canonical name is a buffer rather than a parameter (BatchNorm running statistics):
/// [`ClipConfig::parameter_count`] does not count these.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// Canonical names that official checkpoints carry but the model does not use.
pub(crate) fn is_ignored(name: &str) -> bool {
    name.starts_with("bert.pooler.") || name.ends_with(".num_batches_tracked")
}

#[derive(Default)]
struct Table(Vec<(String, Vec<usize>)>);

impl Table {
    fn add(&mut self, name: impl Into<String>, shape: &[usize]) {
        self.0.push((name.into(), shape.to_vec()));
    }

    fn linear(&mut self, prefix: &str, out: usize, inp: usize) {
        self.add(format!("{prefix}.weight"), &[out, inp]);
        self.add(format!("{prefix}.bias"), &[out]);
    }

    fn norm(&mut self, prefix: &str, n: usize) {
        self.add(format!("{prefix}.weight"), &[n]);
        self.add(format!("{prefix}.bias"), &[n]);
    }

    fn batch_norm(&mut self, prefix: &str, n: usize) {
        for p in ["weight", "bias", "running_mean", "running_var"] {
            self.add(format!("{prefix}.{p}"), &[n]);
        }
    }

    fn conv(&mut self, prefix: &str, out: usize, inp: usize, k: usize) {
        self.add(format!("{prefix}.weight"), &[out, inp, k, k]);
    }
}

fn vit_tensors(t: &mut Table, c: &VitConfig, embed_dim: usize) {
    let w = c.width;
    t.add("visual.class_embedding", &[w]);
    t.add("visual.positional_embedding", &[c.num_positions(), w]);
    t.add("visual.proj", &[w, embed_dim]);
    t.conv("visual.conv1", w, 3, c.patch_size);
    t.norm("visual.ln_pre", w);
    for i in 0..c.layers {
        let p = format!("visual.transformer.resblocks.{i}");
        t.add(format!("{p}.attn.in_proj_weight"), &[3 * w, w]);
        t.add(format!("{p}.attn.in_proj_bias"), &[3 * w]);
        t.linear(&format!("{p}.attn.out_proj"), w, w);
        t.norm(&format!("{p}.ln_1"), w);
        t.linear(&format!("{p}.mlp.c_fc"), 4 * w, w);
        t.linear(&format!("{p}.mlp.c_proj"), w, 4 * w);
        t.norm(&format!("{p}.ln_2"), w);
    }
    t.norm("visual.ln_post", w);
}

fn resnet_tensors(t: &mut Table, c: &ResnetConfig, embed_dim: usize) {
    let w = c.width;
    t.conv("visual.conv1", w / 2, 3, 3);
    t.batch_norm("visual.bn1", w / 2);
    t.conv("visual.conv2", w / 2, w / 2, 3);
    t.batch_norm("visual.bn2", w / 2);
    t.conv("visual.conv3", w, w / 2, 3);
    t.batch_norm("visual.bn3", w);
    let mut inplanes = w;
    for (stage, &blocks) in c.layers.iter().enumerate() {
        let planes = w << stage;
        for b in 0..blocks {
            let p = format!("visual.layer{}.{b}", stage + 1);
            t.conv(&format!("{p}.conv1"), planes, inplanes, 1);
            t.batch_norm(&format!("{p}.bn1"), planes);
            t.conv(&format!("{p}.conv2"), planes, planes, 3);
            t.batch_norm(&format!("{p}.bn2"), planes);
            t.conv(&format!("{p}.conv3"), planes * 4, planes, 1);
            t.batch_norm(&format!("{p}.bn3"), planes * 4);
            // `Bottleneck.__init__`: a downsample branch when stride > 1 or the width changes.
            if b == 0 && (stage > 0 || inplanes != planes * 4) {
                t.conv(&format!("{p}.downsample.0"), planes * 4, inplanes, 1);
                t.batch_norm(&format!("{p}.downsample.1"), planes * 4);
            }
            inplanes = planes * 4;
        }
    }
    let e = w * 32;
    let spacial = c.image_size / 32;
    t.add(
        "visual.attnpool.positional_embedding",
        &[spacial * spacial + 1, e],
    );
    t.linear("visual.attnpool.k_proj", e, e);
    t.linear("visual.attnpool.q_proj", e, e);
    t.linear("visual.attnpool.v_proj", e, e);
    t.linear("visual.attnpool.c_proj", embed_dim, e);
}

fn text_tensors(t: &mut Table, c: &TextConfig) {
    let h = c.hidden_size;
    t.add("bert.embeddings.word_embeddings.weight", &[c.vocab_size, h]);
    t.add(
        "bert.embeddings.position_embeddings.weight",
        &[c.max_position_embeddings, h],
    );
    t.add(
        "bert.embeddings.token_type_embeddings.weight",
        &[c.type_vocab_size, h],
    );
    t.norm("bert.embeddings.LayerNorm", h);
    for i in 0..c.num_layers {
        let p = format!("bert.encoder.layer.{i}");
        t.linear(&format!("{p}.attention.self.query"), h, h);
        t.linear(&format!("{p}.attention.self.key"), h, h);
        t.linear(&format!("{p}.attention.self.value"), h, h);
        t.linear(&format!("{p}.attention.output.dense"), h, h);
        t.norm(&format!("{p}.attention.output.LayerNorm"), h);
        t.linear(&format!("{p}.intermediate.dense"), c.intermediate_size, h);
        t.linear(&format!("{p}.output.dense"), h, c.intermediate_size);
        t.norm(&format!("{p}.output.LayerNorm"), h);
    }
}

/// Checks that `ck.tensors` (with `ck.left_out`) holds exactly the tensors `ck.config` needs, with
/// the right shapes.
///
/// Reports the first missing or mis-shaped tensor in cn_clip's state-dict order, then the first
/// (alphabetically) unexpected one, as an error naming the checkpoint and the tensor.
pub fn check_complete(ck: &Checkpoint) -> Result<(), WeightsError> {
    check_tensors(&ck.config, &ck.shapes()).map_err(|e| e.in_file(&ck.source))
}

pub(crate) fn shapes_of(
    tensors: &HashMap<String, candle_core::Tensor>,
) -> HashMap<String, Vec<usize>> {
    tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect()
}

pub(crate) fn check_tensors(
    config: &ClipConfig,
    shapes: &HashMap<String, Vec<usize>>,
) -> Result<(), WeightsError> {
    let expected = expected_tensors(config);
    for (name, shape) in &expected {
        match shapes.get(name) {
            None => return Err(WeightsError::MissingTensor { name: name.clone() }),
            Some(s) if s != shape => {
                return Err(WeightsError::ShapeMismatch {
                    name: name.clone(),
                    shape: s.clone(),
                    expected: shape.clone(),
                })
            }
            Some(_) => {}
        }
    }
    let known: HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let mut extra: Vec<&String> = shapes
        .keys()
        .filter(|k| !known.contains(k.as_str()))
        .collect();
    extra.sort();
    match extra.first() {
        Some(name) => Err(WeightsError::UnexpectedTensor {
            name: name.to_string(),
        }),
        None => Ok(()),
    }
}

/// Infers the architecture from canonical tensor shapes, by cn_clip's conventions.
///
/// - Vision family: ModifiedResNet if `visual.layer1.*` / `visual.attnpool.*` exist, else ViT.
/// - ViT: width and patch from `visual.conv1.weight` `[width, 3, patch, patch]`, image size from
///   the number of positions (`(image / patch)² + 1`), layers from the highest
///   `visual.transformer.resblocks.{i}`, head width 64 — or 80 when the width is 1280 (ViT-H-14,
///   cn_clip's `model_configs/ViT-H-14.json`: the only official model that differs).
/// - ResNet: width from `visual.conv3.weight`, blocks per stage from `visual.layer{1-4}.{j}`, image
///   size from the attention pool's positions (`(image / 32)² + 1`), head width 64.
/// - Text: vocabulary, hidden width, positions and token types from the embedding tables,
///   intermediate width from layer 0, layers from the highest `bert.encoder.layer.{i}`, heads =
///   hidden / 64 (every official text tower), LayerNorm epsilon 1e-12.
/// - Embedding width from `visual.proj` (ViT) or `visual.attnpool.c_proj.weight` (ResNet).
///
/// Only what is needed to size the model is read; whether every tensor is present with the
/// right shape is [`check_complete`]'s job. A head width that the shapes cannot reveal (any
/// non-official combination) must come from a `config.json` instead.
pub fn infer_config(shapes: &HashMap<String, Vec<usize>>) -> Result<ClipConfig, WeightsError> {
    let s = Shapes(shapes);
    let resnet = shapes
        .keys()
        .any(|k| k.starts_with("visual.layer1.") || k.starts_with("visual.attnpool."));
    let (vision, embed_dim) = if resnet {
        infer_resnet(&s)?
    } else {
        infer_vit(&s)?
    };
    Ok(ClipConfig {
        embed_dim,
        vision,
        text: infer_text(&s)?,
    })
}

struct Shapes<'a>(&'a HashMap<String, Vec<usize>>);

impl Shapes<'_> {
    fn dims<const N: usize>(&self, name: &str) -> Result<[usize; N], WeightsError> {
        let shape = self
            .0
            .get(name)
            .ok_or_else(|| WeightsError::MissingTensor {
                name: name.to_string(),
            })?;
        <[usize; N]>::try_from(shape.as_slice()).map_err(|_| WeightsError::Architecture {
            reason: format!(
                "tensor {name} has shape {}, expected {N} dimensions",
                super::error::fmt_shape(shape)
            ),
        })
    }

    /// `1 + max i` over names `{prefix}{i}.…`; 0 if there are none.
    fn count(&self, prefix: &str) -> usize {
        self.0
            .keys()
            .filter_map(|k| k.strip_prefix(prefix))
            .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
            .map(|i| i + 1)
            .max()
            .unwrap_or(0)
    }
}

fn arch(reason: String) -> WeightsError {
    WeightsError::Architecture { reason }
}

/// `n = g² + 1` → `g`.
fn grid_side(n: usize, name: &str) -> Result<usize, WeightsError> {
    let g = (n.saturating_sub(1) as f64).sqrt().round() as usize;
    if n == 0 || g * g + 1 != n {
        return Err(arch(format!(
            "tensor {name} has {n} positions, not a square grid plus one"
        )));
    }
    Ok(g)
}

fn infer_vit(s: &Shapes) -> Result<(VisionConfig, usize), WeightsError> {
    let [width, channels, patch, patch2] = s.dims::<4>("visual.conv1.weight")?;
    if channels != 3 || patch != patch2 || patch == 0 {
        return Err(arch(format!(
            "visual.conv1.weight has shape [{width}, {channels}, {patch}, {patch2}], expected [width, 3, patch, patch]"
        )));
    }
    let [positions, _] = s.dims::<2>("visual.positional_embedding")?;
    let grid = grid_side(positions, "visual.positional_embedding")?;
    let layers = s.count("visual.transformer.resblocks.");
    if layers == 0 {
        return Err(arch("no visual.transformer.resblocks.* tensors".into()));
    }
    // cn_clip's `vision_head_width`: 64 by default, 80 in ViT-H-14.json (width 1280).
    let head_width = if width == 1280 { 80 } else { 64 };
    if width % head_width != 0 {
        return Err(arch(format!(
            "vision width {width} is not a multiple of cn_clip's head width {head_width}; \
             describe the model in a config.json"
        )));
    }
    let [_, embed_dim] = s.dims::<2>("visual.proj")?;
    let vit = VitConfig {
        image_size: grid * patch,
        patch_size: patch,
        width,
        layers,
        head_width,
    };
    Ok((VisionConfig::Vit(vit), embed_dim))
}

fn infer_resnet(s: &Shapes) -> Result<(VisionConfig, usize), WeightsError> {
    let [width, ..] = s.dims::<4>("visual.conv3.weight")?;
    let mut layers = [0usize; 4];
    for (i, n) in layers.iter_mut().enumerate() {
        *n = s.count(&format!("visual.layer{}.", i + 1));
        if *n == 0 {
            return Err(arch(format!("no visual.layer{}.* tensors", i + 1)));
        }
    }
    let [positions, _] = s.dims::<2>("visual.attnpool.positional_embedding")?;
    let spacial = grid_side(positions, "visual.attnpool.positional_embedding")?;
    let head_width = 64;
    if (width * 32) % head_width != 0 {
        return Err(arch(format!(
            "attention-pool width {} is not a multiple of cn_clip's head width {head_width}",
            width * 32
        )));
    }
    let [embed_dim, _] = s.dims::<2>("visual.attnpool.c_proj.weight")?;
    let rn = ResnetConfig {
        image_size: spacial * 32,
        layers,
        width,
        head_width,
    };
    Ok((VisionConfig::Resnet(rn), embed_dim))
}

fn infer_text(s: &Shapes) -> Result<TextConfig, WeightsError> {
    let [vocab_size, hidden_size] = s.dims::<2>("bert.embeddings.word_embeddings.weight")?;
    let [max_position_embeddings, _] = s.dims::<2>("bert.embeddings.position_embeddings.weight")?;
    let [type_vocab_size, _] = s.dims::<2>("bert.embeddings.token_type_embeddings.weight")?;
    let num_layers = s.count("bert.encoder.layer.");
    if num_layers == 0 {
        return Err(arch("no bert.encoder.layer.* tensors".into()));
    }
    let [intermediate_size, _] = s.dims::<2>("bert.encoder.layer.0.intermediate.dense.weight")?;
    // Every official text tower (RBT3, RoBERTa-wwm-ext base and large) has 64-wide heads.
    if hidden_size == 0 || hidden_size % 64 != 0 {
        return Err(arch(format!(
            "text hidden width {hidden_size} is not a multiple of the official head width 64; \
             describe the model in a config.json"
        )));
    }
    Ok(TextConfig {
        vocab_size,
        hidden_size,
        num_layers,
        num_heads: hidden_size / 64,
        intermediate_size,
        max_position_embeddings,
        type_vocab_size,
        layer_norm_eps: 1e-12,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    fn table(config: &ClipConfig) -> HashMap<String, Vec<usize>> {
        expected_tensors(config).into_iter().collect()
    }

    #[test]
    fn presets_are_inferred_exactly() {
        for p in Preset::ALL {
            let cfg = p.config();
            assert_eq!(infer_config(&table(&cfg)).unwrap(), cfg, "{}", p.name());
        }
    }

    #[test]
    fn table_agrees_with_parameter_count() {
        for p in Preset::ALL {
            let cfg = p.config();
            let (mut params, mut buffers) = (0, 0);
            for (name, shape) in expected_tensors(&cfg) {
                let n: usize = shape.iter().product();
                if is_buffer(&name) {
                    buffers += n;
                } else {
                    params += n;
                }
            }
            assert_eq!(params, cfg.parameter_count(), "{}", p.name());
            let is_rn = matches!(cfg.vision, VisionConfig::Resnet(_));
            assert_eq!(buffers > 0, is_rn, "{}", p.name());
        }
    }

    #[test]
    fn names_are_unique() {
        for p in Preset::ALL {
            let t = expected_tensors(&p.config());
            let set: HashSet<&String> = t.iter().map(|(n, _)| n).collect();
            assert_eq!(set.len(), t.len());
        }
    }

    #[test]
    fn check_reports_first_problem() {
        let cfg = Preset::VitB16.config();
        let mut shapes = table(&cfg);
        assert!(check_tensors(&cfg, &shapes).is_ok());
        shapes.insert("visual.proj".into(), vec![768, 256]);
        let e = check_tensors(&cfg, &shapes).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor visual.proj has shape [768, 256], expected [768, 512]"
        );
        shapes.remove("visual.class_embedding");
        let e = check_tensors(&cfg, &shapes).unwrap_err();
        assert_eq!(e.to_string(), "tensor visual.class_embedding is missing");
        let mut shapes = table(&cfg);
        shapes.insert("visual.extra".into(), vec![1]);
        let e = check_tensors(&cfg, &shapes).unwrap_err();
        assert_eq!(e.to_string(), "unexpected tensor visual.extra");
    }

    #[test]
    fn inference_errors_name_the_tensor() {
        let cfg = Preset::VitB16.config();
        let mut shapes = table(&cfg);
        shapes.remove("visual.proj");
        let e = infer_config(&shapes).unwrap_err();
        assert_eq!(e.to_string(), "tensor visual.proj is missing");
        let mut shapes = table(&cfg);
        shapes.insert("visual.positional_embedding".into(), vec![198, 768]);
        assert!(infer_config(&shapes)
            .unwrap_err()
            .to_string()
            .contains("visual.positional_embedding has 198 positions"));
    }
}
