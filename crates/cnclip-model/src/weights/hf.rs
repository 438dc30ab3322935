//! transformers' `ChineseCLIPModel` layout: `config.json` and tensor names, both ways.
//!
//! Names, from `transformers/models/chinese_clip/modeling_chinese_clip.py` (checked against a
//! `save_pretrained` of a random model, see `tools/gen_checkpoints.py`):
//!
//! | transformers | cn_clip (canonical) |
//! |---|---|
//! | `text_model.{embeddings,encoder}.*` | `bert.{embeddings,encoder}.*` (same suffixes) |
//! | `text_projection.weight` `[e, h]` | `text_projection` `[h, e]` (transposed) |
//! | `visual_projection.weight` `[e, w]` | `visual.proj` `[w, e]` (transposed) |
//! | `vision_model.embeddings.class_embedding` | `visual.class_embedding` |
//! | `vision_model.embeddings.patch_embedding.weight` | `visual.conv1.weight` |
//! | `vision_model.embeddings.position_embedding.weight` | `visual.positional_embedding` |
//! | `vision_model.pre_layrnorm.*` (sic) / `post_layernorm.*` | `visual.ln_pre.*` / `visual.ln_post.*` |
//! | `vision_model.encoder.layers.{i}.self_attn.{q,k,v}_proj.*` | `visual.transformer.resblocks.{i}.attn.in_proj_*` (q;k;v stacked) |
//! | `….self_attn.out_proj`, `layer_norm1`, `mlp.fc1`, `mlp.fc2`, `layer_norm2` | `attn.out_proj`, `ln_1`, `mlp.c_fc`, `mlp.c_proj`, `ln_2` |
//! | `logit_scale` | `logit_scale` |
//!
//! `text_model.pooler.*` and the `position_ids` / `token_type_ids` buffers are ignored.

use std::collections::{BTreeMap, HashMap};

use candle_core::Tensor;
use serde_json::{json, Map, Value};

use crate::config::{ClipConfig, TextConfig, VisionConfig, VitConfig};

use super::error::WeightsError;

/// Whether a name is in transformers' layout.
pub(crate) fn is_hf_name(name: &str) -> bool {
    name.starts_with("vision_model.")
        || name.starts_with("text_model.")
        || name == "visual_projection.weight"
        || name == "text_projection.weight"
}

/// transformers names that carry nothing the model uses.
pub(crate) fn is_ignored(name: &str) -> bool {
    name.starts_with("text_model.pooler.")
        || name.ends_with("embeddings.position_ids")
        || name.ends_with("embeddings.token_type_ids")
}

const VIT_BLOCK_RENAMES: [(&str, &str); 5] = [
    ("self_attn.out_proj", "attn.out_proj"),
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
];

/// A projection matrix, transposed (`nn.Linear` stores `[out, in]`, cn_clip `x @ proj` `[in, out]`).
fn transpose(name: &str, t: &Tensor) -> Result<Tensor, WeightsError> {
    if t.rank() != 2 {
        return Err(WeightsError::Convert {
            reason: format!(
                "tensor {name} has shape {}, expected a matrix",
                super::error::fmt_shape(t.dims())
            ),
        });
    }
    Ok(t.t()?.contiguous()?)
}

/// transformers names → canonical names. Names it does not know are kept as they are, so that
/// the completeness check reports them as unexpected.
pub(crate) fn hf_to_canonical(
    tensors: HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>, WeightsError> {
    let mut out = HashMap::with_capacity(tensors.len());
    // (layer, "weight"|"bias") → [q, k, v]
    let mut qkv: BTreeMap<(usize, &'static str), [Option<Tensor>; 3]> = BTreeMap::new();
    for (name, t) in tensors {
        let canonical = if let Some(rest) = name.strip_prefix("text_model.") {
            format!("bert.{rest}")
        } else if name == "text_projection.weight" {
            out.insert("text_projection".to_string(), transpose(&name, &t)?);
            continue;
        } else if name == "visual_projection.weight" {
            out.insert("visual.proj".to_string(), transpose(&name, &t)?);
            continue;
        } else if let Some(rest) = name.strip_prefix("vision_model.") {
            match vision_name(rest) {
                Some(VisionName::Plain(n)) => n,
                Some(VisionName::Qkv { layer, which, kind }) => {
                    qkv.entry((layer, kind)).or_default()[which] = Some(t);
                    continue;
                }
                None => name,
            }
        } else {
            name
        };
        out.insert(canonical, t);
    }
    for ((layer, kind), parts) in qkv {
        let mut ts: Vec<Tensor> = Vec::with_capacity(3);
        for (which, part) in parts.into_iter().enumerate() {
            let name = format!(
                "vision_model.encoder.layers.{layer}.self_attn.{}_proj.{kind}",
                ["q", "k", "v"][which]
            );
            let t = part.ok_or_else(|| WeightsError::MissingTensor { name: name.clone() })?;
            if let Some(q) = ts.first() {
                if q.dims() != t.dims() {
                    return Err(WeightsError::ShapeMismatch {
                        name,
                        shape: t.dims().to_vec(),
                        expected: q.dims().to_vec(),
                    });
                }
            }
            ts.push(t);
        }
        let fused = Tensor::cat(&ts, 0)?;
        out.insert(
            format!("visual.transformer.resblocks.{layer}.attn.in_proj_{kind}"),
            fused,
        );
    }
    Ok(out)
}

enum VisionName {
    Plain(String),
    Qkv {
        layer: usize,
        which: usize,
        kind: &'static str,
    },
}

/// A `vision_model.` name (without the prefix) → canonical, or `None` if unknown.
fn vision_name(rest: &str) -> Option<VisionName> {
    let plain = |s: String| Some(VisionName::Plain(s));
    match rest {
        "embeddings.class_embedding" => return plain("visual.class_embedding".into()),
        "embeddings.patch_embedding.weight" => return plain("visual.conv1.weight".into()),
        "embeddings.position_embedding.weight" => {
            return plain("visual.positional_embedding".into())
        }
        _ => {}
    }
    if let Some(p) = rest.strip_prefix("pre_layrnorm.") {
        return plain(format!("visual.ln_pre.{p}"));
    }
    if let Some(p) = rest.strip_prefix("post_layernorm.") {
        return plain(format!("visual.ln_post.{p}"));
    }
    let rest = rest.strip_prefix("encoder.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = tail.rsplit_once('.')?;
    let kind: &'static str = match kind {
        "weight" => "weight",
        "bias" => "bias",
        _ => return None,
    };
    let which = match module {
        "self_attn.q_proj" => Some(0),
        "self_attn.k_proj" => Some(1),
        "self_attn.v_proj" => Some(2),
        _ => None,
    };
    if let Some(which) = which {
        return Some(VisionName::Qkv { layer, which, kind });
    }
    let (_, canonical) = VIT_BLOCK_RENAMES.iter().find(|(hf, _)| *hf == module)?;
    plain(format!(
        "visual.transformer.resblocks.{layer}.{canonical}.{kind}"
    ))
}

/// Canonical names → transformers names (ViT models only).
pub(crate) fn canonical_to_hf(
    tensors: &HashMap<String, Tensor>,
    config: &ClipConfig,
) -> Result<Vec<(String, Tensor)>, WeightsError> {
    let VisionConfig::Vit(vit) = &config.vision else {
        return Err(not_vit());
    };
    let w = vit.width;
    let mut out = Vec::with_capacity(tensors.len() + 4 * vit.layers);
    for (name, t) in tensors {
        if let Some(rest) = name.strip_prefix("bert.") {
            out.push((format!("text_model.{rest}"), t.clone()));
            continue;
        }
        let plain = match name.as_str() {
            "text_projection" => {
                out.push(("text_projection.weight".into(), transpose(name, t)?));
                continue;
            }
            "visual.proj" => {
                out.push(("visual_projection.weight".into(), transpose(name, t)?));
                continue;
            }
            "logit_scale" => "logit_scale".to_string(),
            "visual.class_embedding" => "vision_model.embeddings.class_embedding".into(),
            "visual.conv1.weight" => "vision_model.embeddings.patch_embedding.weight".into(),
            "visual.positional_embedding" => {
                "vision_model.embeddings.position_embedding.weight".into()
            }
            n => {
                if let Some(p) = n.strip_prefix("visual.ln_pre.") {
                    format!("vision_model.pre_layrnorm.{p}")
                } else if let Some(p) = n.strip_prefix("visual.ln_post.") {
                    format!("vision_model.post_layernorm.{p}")
                } else if let Some(rest) = n.strip_prefix("visual.transformer.resblocks.") {
                    let (layer, tail) = rest.split_once('.').ok_or_else(|| unknown(n))?;
                    let p = format!("vision_model.encoder.layers.{layer}");
                    if let Some(kind) = tail.strip_prefix("attn.in_proj_") {
                        for (j, qkv) in ["q", "k", "v"].iter().enumerate() {
                            let part = t.narrow(0, j * w, w)?.contiguous()?;
                            out.push((format!("{p}.self_attn.{qkv}_proj.{kind}"), part));
                        }
                        continue;
                    }
                    let (module, kind) = tail.rsplit_once('.').ok_or_else(|| unknown(n))?;
                    let (hf, _) = VIT_BLOCK_RENAMES
                        .iter()
                        .find(|(_, c)| *c == module)
                        .ok_or_else(|| unknown(n))?;
                    format!("{p}.{hf}.{kind}")
                } else {
                    return Err(unknown(n));
                }
            }
        };
        out.push((plain, t.clone()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn unknown(name: &str) -> WeightsError {
    WeightsError::Convert {
        reason: format!("tensor {name} has no transformers name"),
    }
}

pub(crate) fn not_vit() -> WeightsError {
    WeightsError::Convert {
        reason: "transformers' ChineseCLIPModel has no ResNet vision tower; \
                 a ResNet model is saved in cn_clip's own names with cnclip's config.json"
            .into(),
    }
}

fn config_err(reason: String) -> WeightsError {
    WeightsError::Config { reason }
}

/// Reads a `config.json`: either cnclip's own [`ClipConfig`] JSON (what [`super::save_hf`]
/// writes for ResNet models) or transformers' `ChineseCLIPConfig`.
pub(crate) fn config_from_json(value: &Value) -> Result<ClipConfig, WeightsError> {
    let obj = value
        .as_object()
        .ok_or_else(|| config_err("config.json is not a JSON object".into()))?;
    if obj.contains_key("embed_dim") && obj.contains_key("vision") {
        return serde_json::from_value(value.clone())
            .map_err(|e| config_err(format!("not a valid cnclip configuration: {e}")));
    }
    let model_type = obj.get("model_type").and_then(Value::as_str);
    if model_type == Some("chinese_clip")
        || obj.contains_key("vision_config")
        || obj.contains_key("text_config")
    {
        return hf_config(obj);
    }
    Err(config_err(format!(
        "neither a transformers ChineseCLIPConfig nor a cnclip configuration (model_type {})",
        model_type.unwrap_or("absent")
    )))
}

/// A sub-config as transformers builds it: class defaults, then `<key>`, then `<key>_dict`
/// (the older spelling, which wins when both are present).
struct Sub {
    name: &'static str,
    map: Map<String, Value>,
}

impl Sub {
    fn new(top: &Map<String, Value>, name: &'static str) -> Result<Sub, WeightsError> {
        let mut map = Map::new();
        for key in [name.to_string(), format!("{name}_dict")] {
            match top.get(&key) {
                None | Some(Value::Null) => {}
                Some(Value::Object(m)) => map.extend(m.clone()),
                Some(_) => return Err(config_err(format!("{key} is not an object"))),
            }
        }
        Ok(Sub { name, map })
    }

    fn usize(&self, key: &str, default: usize) -> Result<usize, WeightsError> {
        match self.map.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    config_err(format!(
                        "{}.{key} is {v}, expected a non-negative integer",
                        self.name
                    ))
                }),
        }
    }

    fn f64(&self, key: &str, default: f64) -> Result<f64, WeightsError> {
        match self.map.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| {
                config_err(format!("{}.{key} is {v}, expected a number", self.name))
            }),
        }
    }

    fn str(&self, key: &str, default: &str) -> Result<String, WeightsError> {
        match self.map.get(key) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(config_err(format!(
                "{}.{key} is {v}, expected a string",
                self.name
            ))),
        }
    }

    /// Refuses a value our model does not implement.
    fn require(&self, key: &str, found: &str, needed: &str) -> Result<(), WeightsError> {
        if found == needed {
            Ok(())
        } else {
            Err(config_err(format!(
                "unsupported {}.{key} {found:?}: cn_clip's model uses {needed:?}",
                self.name
            )))
        }
    }
}

fn heads_width(sub: &Sub, hidden: usize, heads: usize) -> Result<usize, WeightsError> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(config_err(format!(
            "{}.num_attention_heads {heads} does not divide hidden_size {hidden}",
            sub.name
        )));
    }
    Ok(hidden / heads)
}

/// transformers `ChineseCLIPConfig` → [`ClipConfig`]. Missing fields take transformers' defaults
/// (`configuration_chinese_clip.py`); values the cn_clip model does not implement are refused.
fn hf_config(top: &Map<String, Value>) -> Result<ClipConfig, WeightsError> {
    let v = Sub::new(top, "vision_config")?;
    let t = Sub::new(top, "text_config")?;

    v.require(
        "hidden_act",
        &v.str("hidden_act", "quick_gelu")?,
        "quick_gelu",
    )?;
    let width = v.usize("hidden_size", 768)?;
    let intermediate = v.usize("intermediate_size", 3072)?;
    if intermediate != 4 * width {
        return Err(config_err(format!(
            "unsupported vision_config.intermediate_size {intermediate}: cn_clip's MLP is 4 × hidden_size = {}",
            4 * width
        )));
    }
    let eps = v.f64("layer_norm_eps", 1e-5)?;
    if (eps - 1e-5).abs() > 1e-12 {
        return Err(config_err(format!(
            "unsupported vision_config.layer_norm_eps {eps}: cn_clip's LayerNorm uses 1e-5"
        )));
    }
    let channels = v.usize("num_channels", 3)?;
    if channels != 3 {
        return Err(config_err(format!(
            "unsupported vision_config.num_channels {channels}: the model takes RGB images"
        )));
    }
    let heads = v.usize("num_attention_heads", 12)?;
    let vit = VitConfig {
        image_size: v.usize("image_size", 224)?,
        patch_size: v.usize("patch_size", 32)?,
        width,
        layers: v.usize("num_hidden_layers", 12)?,
        head_width: heads_width(&v, width, heads)?,
    };
    if vit.patch_size == 0 || !vit.image_size.is_multiple_of(vit.patch_size) {
        return Err(config_err(format!(
            "vision_config.image_size {} is not a multiple of patch_size {}",
            vit.image_size, vit.patch_size
        )));
    }

    t.require("hidden_act", &t.str("hidden_act", "gelu")?, "gelu")?;
    let position = t.str("position_embedding_type", "absolute")?;
    t.require("position_embedding_type", &position, "absolute")?;
    let hidden = t.usize("hidden_size", 768)?;
    let num_heads = t.usize("num_attention_heads", 12)?;
    heads_width(&t, hidden, num_heads)?;
    let text = TextConfig {
        vocab_size: t.usize("vocab_size", 30522)?,
        hidden_size: hidden,
        num_layers: t.usize("num_hidden_layers", 12)?,
        num_heads,
        intermediate_size: t.usize("intermediate_size", 3072)?,
        max_position_embeddings: t.usize("max_position_embeddings", 512)?,
        type_vocab_size: t.usize("type_vocab_size", 2)?,
        layer_norm_eps: t.f64("layer_norm_eps", 1e-12)?,
    };
    let embed_dim = match top.get("projection_dim") {
        None => 512,
        Some(x) => x
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| config_err(format!("projection_dim is {x}, expected an integer")))?,
    };
    Ok(ClipConfig {
        embed_dim,
        vision: VisionConfig::Vit(vit),
        text,
    })
}

/// transformers `ChineseCLIPConfig` JSON for a ViT configuration.
pub(crate) fn hf_config_json(config: &ClipConfig) -> Result<Value, WeightsError> {
    let VisionConfig::Vit(v) = &config.vision else {
        return Err(not_vit());
    };
    let t = &config.text;
    Ok(json!({
        "architectures": ["ChineseCLIPModel"],
        "model_type": "chinese_clip",
        "projection_dim": config.embed_dim,
        "logit_scale_init_value": 2.6592,
        "initializer_factor": 1.0,
        "text_config": {
            "model_type": "chinese_clip_text_model",
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "num_hidden_layers": t.num_layers,
            "num_attention_heads": t.num_heads,
            "intermediate_size": t.intermediate_size,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": t.max_position_embeddings,
            "type_vocab_size": t.type_vocab_size,
            "initializer_range": 0.02,
            "initializer_factor": 1.0,
            "layer_norm_eps": t.layer_norm_eps,
            "pad_token_id": 0,
            "position_embedding_type": "absolute",
        },
        "vision_config": {
            "model_type": "chinese_clip_vision_model",
            "hidden_size": v.width,
            "intermediate_size": 4 * v.width,
            "projection_dim": config.embed_dim,
            "num_hidden_layers": v.layers,
            "num_attention_heads": v.heads(),
            "num_channels": 3,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "initializer_factor": 1.0,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    #[test]
    fn hf_config_round_trips_every_vit_preset() {
        for p in [
            Preset::VitB16,
            Preset::VitL14,
            Preset::VitL14_336,
            Preset::VitH14,
        ] {
            let cfg = p.config();
            let json = hf_config_json(&cfg).unwrap();
            assert_eq!(config_from_json(&json).unwrap(), cfg, "{}", p.name());
        }
        assert!(hf_config_json(&Preset::Rn50.config()).is_err());
    }

    #[test]
    fn defaults_and_dict_overrides_follow_transformers() {
        // The older `*_config_dict` spelling overrides `*_config`.
        let json = json!({
            "model_type": "chinese_clip",
            "text_config": {"vocab_size": 100, "num_attention_heads": 2, "hidden_size": 64},
            "text_config_dict": {"vocab_size": 21128},
            "vision_config": {"patch_size": 16},
        });
        let cfg = config_from_json(&json).unwrap();
        assert_eq!(cfg.text.vocab_size, 21128);
        assert_eq!(cfg.text.num_heads, 2);
        assert_eq!(cfg.embed_dim, 512);
        let VisionConfig::Vit(v) = cfg.vision else {
            panic!()
        };
        assert_eq!(
            (v.image_size, v.patch_size, v.width, v.head_width),
            (224, 16, 768, 64)
        );
    }

    #[test]
    fn unsupported_values_are_refused() {
        for (sub, key, val) in [
            ("vision_config", "hidden_act", json!("gelu")),
            ("vision_config", "intermediate_size", json!(1000)),
            ("vision_config", "layer_norm_eps", json!(1e-6)),
            ("vision_config", "num_attention_heads", json!(7)),
            ("text_config", "hidden_act", json!("relu")),
            (
                "text_config",
                "position_embedding_type",
                json!("relative_key"),
            ),
            ("text_config", "vocab_size", json!("big")),
        ] {
            let json = json!({"model_type": "chinese_clip", sub: {key: val}});
            let err = config_from_json(&json).unwrap_err().to_string();
            assert!(err.contains(&format!("{sub}.{key}")), "{err}");
        }
        assert!(config_from_json(&json!({"model_type": "bert"})).is_err());
    }
}
