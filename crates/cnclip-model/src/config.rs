//! Typed model configurations with named presets for the five official models.
//!
//! The numbers come from cn_clip 1.6.0's `cn_clip/clip/model_configs/*.json` and `CLIP.__init__`
//! (`cn_clip/clip/model.py`): ViT heads = `vision_width / vision_head_width` (64, or 80 for ViT-H-14),
//! ResNet attention-pool heads = `vision_width * 32 / vision_head_width`. Behaviour never depends on a
//! preset's *name*: the towers read only these fields.

use serde::{Deserialize, Serialize};

/// The whole CLIP model: a vision tower, a text tower and the shared embedding width.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// Width of the joint embedding space (output of both projections).
    pub embed_dim: usize,
    /// Image tower.
    pub vision: VisionConfig,
    /// Text tower.
    pub text: TextConfig,
}

/// Image tower: a Vision Transformer or OpenAI's ModifiedResNet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VisionConfig {
    /// `VisualTransformer` in cn_clip.
    Vit(VitConfig),
    /// `ModifiedResNet` in cn_clip (RN50).
    Resnet(ResnetConfig),
}

/// Vision Transformer hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// Input side length in pixels (224 or 336).
    pub image_size: usize,
    /// Patch side length (`conv1` kernel and stride).
    pub patch_size: usize,
    /// Residual stream width.
    pub width: usize,
    /// Number of residual attention blocks.
    pub layers: usize,
    /// Width of one attention head (64 by cn_clip's convention, 80 for the 1280-wide ViT-H).
    pub head_width: usize,
}

/// ModifiedResNet hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResnetConfig {
    /// Input side length in pixels.
    pub image_size: usize,
    /// Bottleneck blocks per stage (`[3, 4, 6, 3]` for RN50).
    pub layers: [usize; 4],
    /// Stem width (64 for RN50); the feature width is `32 * width`.
    pub width: usize,
    /// Head width of the attention pool (64 by cn_clip's convention).
    pub head_width: usize,
}

/// Chinese BERT / RoBERTa-wwm text tower hyper-parameters (cn_clip's `BertConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    /// Vocabulary size (21,128 for every official model).
    pub vocab_size: usize,
    /// Hidden width.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_layers: usize,
    /// Number of attention heads.
    pub num_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Number of learned positions (512).
    pub max_position_embeddings: usize,
    /// Number of token types (2; cn_clip only ever uses type 0).
    pub type_vocab_size: usize,
    /// LayerNorm epsilon (1e-12, hard-coded in `CLIP.__init__`).
    pub layer_norm_eps: f64,
}

/// The official models, by the names cn_clip's `available_models()` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// `RN50@RBT3-chinese`.
    Rn50,
    /// `ViT-B-16@RoBERTa-wwm-ext-base-chinese`.
    VitB16,
    /// `ViT-L-14@RoBERTa-wwm-ext-base-chinese`.
    VitL14,
    /// `ViT-L-14-336@RoBERTa-wwm-ext-base-chinese`.
    VitL14_336,
    /// `ViT-H-14@RoBERTa-wwm-ext-large-chinese`.
    VitH14,
}

impl Preset {
    /// Every preset, in cn_clip's order of `available_models()` sizes (small to large).
    pub const ALL: [Preset; 5] = [
        Preset::Rn50,
        Preset::VitB16,
        Preset::VitL14,
        Preset::VitL14_336,
        Preset::VitH14,
    ];

    /// The zoo name (`ViT-B-16`, …).
    pub fn name(self) -> &'static str {
        match self {
            Preset::Rn50 => "RN50",
            Preset::VitB16 => "ViT-B-16",
            Preset::VitL14 => "ViT-L-14",
            Preset::VitL14_336 => "ViT-L-14-336",
            Preset::VitH14 => "ViT-H-14",
        }
    }

    /// Looks a preset up by its zoo name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Preset> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// The full configuration.
    pub fn config(self) -> ClipConfig {
        let vit = |image_size, patch_size, width, layers, head_width| {
            VisionConfig::Vit(VitConfig {
                image_size,
                patch_size,
                width,
                layers,
                head_width,
            })
        };
        match self {
            Preset::Rn50 => ClipConfig {
                embed_dim: 1024,
                vision: VisionConfig::Resnet(ResnetConfig {
                    image_size: 224,
                    layers: [3, 4, 6, 3],
                    width: 64,
                    head_width: 64,
                }),
                text: TextConfig::rbt3(),
            },
            Preset::VitB16 => ClipConfig {
                embed_dim: 512,
                vision: vit(224, 16, 768, 12, 64),
                text: TextConfig::base(),
            },
            Preset::VitL14 => ClipConfig {
                embed_dim: 768,
                vision: vit(224, 14, 1024, 24, 64),
                text: TextConfig::base(),
            },
            Preset::VitL14_336 => ClipConfig {
                embed_dim: 768,
                vision: vit(336, 14, 1024, 24, 64),
                text: TextConfig::base(),
            },
            Preset::VitH14 => ClipConfig {
                embed_dim: 1024,
                vision: vit(224, 14, 1280, 32, 80),
                text: TextConfig::large(),
            },
        }
    }
}

impl TextConfig {
    /// `RBT3-chinese.json`: 3 layers of RoBERTa-wwm-ext-base.
    pub fn rbt3() -> TextConfig {
        TextConfig {
            num_layers: 3,
            ..TextConfig::base()
        }
    }

    /// `RoBERTa-wwm-ext-base-chinese.json`.
    pub fn base() -> TextConfig {
        TextConfig {
            vocab_size: 21128,
            hidden_size: 768,
            num_layers: 12,
            num_heads: 12,
            intermediate_size: 3072,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        }
    }

    /// `RoBERTa-wwm-ext-large-chinese.json`.
    pub fn large() -> TextConfig {
        TextConfig {
            hidden_size: 1024,
            num_layers: 24,
            num_heads: 16,
            intermediate_size: 4096,
            ..TextConfig::base()
        }
    }
}

impl VisionConfig {
    /// Input side length the preprocessing must produce.
    pub fn image_size(&self) -> usize {
        match self {
            VisionConfig::Vit(c) => c.image_size,
            VisionConfig::Resnet(c) => c.image_size,
        }
    }
}

impl ClipConfig {
    /// Input side length the preprocessing must produce.
    pub fn image_size(&self) -> usize {
        self.vision.image_size()
    }

    /// Number of parameters a checkpoint of this configuration holds (logit_scale included,
    /// BERT pooler excluded), as `sum(p.numel() for p in model.parameters())` counts in cn_clip.
    pub fn parameter_count(&self) -> usize {
        let text = self.text.parameter_count() + self.text.hidden_size * self.embed_dim;
        let vision = match &self.vision {
            VisionConfig::Vit(c) => c.parameter_count(self.embed_dim),
            VisionConfig::Resnet(c) => c.parameter_count(self.embed_dim),
        };
        vision + text + 1
    }
}

impl VitConfig {
    /// Number of attention heads.
    pub fn heads(&self) -> usize {
        self.width / self.head_width
    }

    /// Number of patch tokens plus the class token.
    pub fn num_positions(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }

    fn parameter_count(&self, embed_dim: usize) -> usize {
        let w = self.width;
        let ln = 2 * w;
        let block =
            ln + (3 * w * w + 3 * w) + (w * w + w) + ln + (4 * w * w + 4 * w) + (4 * w * w + w);
        3 * w * self.patch_size * self.patch_size
            + w
            + self.num_positions() * w
            + ln
            + self.layers * block
            + ln
            + w * embed_dim
    }
}

impl ResnetConfig {
    /// Number of attention-pool heads.
    pub fn heads(&self) -> usize {
        self.width * 32 / self.head_width
    }

    fn parameter_count(&self, embed_dim: usize) -> usize {
        // BatchNorm: weight + bias count as parameters (running stats are buffers).
        let bn = |c: usize| 2 * c;
        let w = self.width;
        let mut n = 3 * (w / 2) * 9
            + bn(w / 2)
            + (w / 2) * (w / 2) * 9
            + bn(w / 2)
            + (w / 2) * w * 9
            + bn(w);
        let mut inplanes = w;
        for (stage, &blocks) in self.layers.iter().enumerate() {
            let planes = w << stage;
            for b in 0..blocks {
                n += inplanes * planes + bn(planes) + planes * planes * 9 + bn(planes);
                n += planes * planes * 4 + bn(planes * 4);
                if b == 0 && (stage > 0 || inplanes != planes * 4) {
                    n += inplanes * planes * 4 + bn(planes * 4);
                }
                inplanes = planes * 4;
            }
        }
        let e = w * 32;
        let spacial = self.image_size / 32;
        n + (spacial * spacial + 1) * e + 3 * (e * e + e) + e * embed_dim + embed_dim
    }
}

impl TextConfig {
    fn parameter_count(&self) -> usize {
        let h = self.hidden_size;
        let i = self.intermediate_size;
        let embeddings =
            (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h;
        let layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h;
        embeddings + self.num_layers * layer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Totals from the issue / DESIGN §1 (`sum(p.numel())` over cn_clip's model, pooler excluded).
    #[test]
    fn parameter_counts_match_official() {
        assert_eq!(Preset::VitB16.config().parameter_count(), 188_262_913);
        assert_eq!(Preset::Rn50.config().parameter_count(), 76_989_537);
    }

    #[test]
    fn presets_round_trip_names_and_json() {
        for p in Preset::ALL {
            assert_eq!(Preset::from_name(p.name()), Some(p));
            let cfg = p.config();
            let json = serde_json::to_string(&cfg).unwrap();
            assert_eq!(serde_json::from_str::<ClipConfig>(&json).unwrap(), cfg);
        }
        assert_eq!(Preset::from_name("vit-b-16"), Some(Preset::VitB16));
        assert_eq!(Preset::from_name("ViT-B-32"), None);
    }
}
