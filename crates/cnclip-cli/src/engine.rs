//! The real model behind the engine's seams: [`ClipEngine`] implements cnclip-index's
//! `ImageEmbedder` and cnclip-search's `QueryEncoder` with a [`ChineseClip`] model and cn_clip's
//! preprocessing.
//!
//! An index is bound to a [`ModelIdentity`]: `model` is the architecture name plus the weights
//! fingerprint (`ViT-B-16/1a2b…`), so the same weights reached by zoo name or by path match, and
//! different weights never mix; `preprocess` names the pipeline, size and EXIF handling.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cnclip_index::{EmbedError, ImageEmbedder, ModelIdentity};
use cnclip_model::config::Preset;
use cnclip_model::model::{ChineseClip, Towers};
use cnclip_model::preprocess::{self, JpegDecode, PreprocessOptions};
use cnclip_search::QueryEncoder;
use serde::{Deserialize, Serialize};

use crate::device::DeviceSpec;
use crate::{load_model_on, resolve_model, Precision};

/// File in an index directory naming the model that built it, so `cnclip-search` can load the
/// same one without being told.
pub const MODEL_FILE: &str = "model.json";

/// What `model.json` holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct ModelRecord {
    /// The `--model` argument as given (zoo name or path).
    pub model: String,
    /// Where it resolved to when the index was built.
    pub path: PathBuf,
}

/// Appended to the precision in an index's identity when its JPEGs were decoded at reduced scale.
const JPEG_SCALED: &str = "+jpeg-scaled";

/// How the JPEGs of an index with this identity were decoded, so that a query image is decoded
/// the same way.
pub fn jpeg_decode_of(identity: &ModelIdentity) -> JpegDecode {
    if identity.precision.ends_with(JPEG_SCALED) {
        JpegDecode::Scaled
    } else {
        JpegDecode::Exact
    }
}

/// How [`ClipEngine::load`] sets up the model and its preprocessing.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Compute precision (`q8` quantizes after loading).
    pub precision: Precision,
    /// Apply EXIF orientation before resizing.
    pub exif_orientation: bool,
    /// Exact or reduced-scale decoding of large JPEGs ([`JpegDecode`]).
    pub jpeg_decode: JpegDecode,
    /// The towers to load: `Image` to index, `Text` for text queries (the identity is the
    /// same either way).
    pub towers: Towers,
    /// Where the model runs (`--device`); decoding and the index stay on the CPU.
    pub device: DeviceSpec,
}

/// A Chinese-CLIP model with its preprocessing.
pub struct ClipEngine {
    model: ChineseClip,
    options: PreprocessOptions,
    identity: ModelIdentity,
    batch_size: usize,
}

impl ClipEngine {
    /// Resolves and loads `model_arg` (zoo name or path).
    pub fn load(model_arg: &str, opts: EngineOptions) -> Result<ClipEngine> {
        let EngineOptions {
            precision,
            exif_orientation,
            jpeg_decode,
            towers,
            device,
        } = opts;
        let model = load_model_on(model_arg, precision, towers, &device.open()?)?;
        let options = PreprocessOptions {
            size: model.image_size(),
            exif_orientation,
            jpeg_decode,
            ..PreprocessOptions::default()
        };
        let arch = Preset::ALL
            .into_iter()
            .find(|p| &p.config() == model.config())
            .map_or("custom", Preset::name);
        let identity = ModelIdentity {
            model: format!("{arch}/{}", model.fingerprint()),
            dim: model.embed_dim(),
            // The preprocessing of cn_clip's image_transform(S), in our replica of PIL.
            preprocess: format!(
                "cn_clip-image_transform/pil13-bicubic-squash/{}/exif-{}",
                options.size,
                if exif_orientation { "on" } else { "off" }
            ),
            // Recorded, not enforced (like the precision): reduced-scale JPEG decoding moves
            // embeddings by ~1e-5 in cosine, far less than q8 does.
            precision: match jpeg_decode {
                JpegDecode::Exact => precision.name().to_owned(),
                _ => format!("{}{JPEG_SCALED}", precision.name()),
            },
        };
        Ok(ClipEngine {
            model,
            options,
            identity,
            // 8 on a CPU (larger batches gain nothing there and delay the first commit); on a
            // GPU, 32: 798 images/s on an H100 against 717 at 8 (README, f16 ViT-B-16).
            batch_size: if device.is_cpu() { 8 } else { 32 },
        })
    }

    /// The loaded model.
    pub fn model(&self) -> &ChineseClip {
        &self.model
    }
}

impl ImageEmbedder for ClipEngine {
    type Prepared = Vec<f32>;

    fn identity(&self) -> ModelIdentity {
        self.identity.clone()
    }

    fn prepare(&self, path: &Path, bytes: &[u8]) -> Result<Vec<f32>, String> {
        let name = path.to_string_lossy();
        preprocess::preprocess_bytes(bytes, &name, &self.options).map_err(|e| {
            // The message starts with the path, which the report already shows.
            let msg = e.to_string();
            msg.strip_prefix(&format!("{name}: "))
                .map_or(msg.clone(), str::to_owned)
        })
    }

    fn embed(&self, batch: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(self.model.encode_image_data(batch)?)
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }
}

impl QueryEncoder for ClipEngine {
    fn identity(&self) -> ModelIdentity {
        self.identity.clone()
    }

    fn encode_text(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        Ok(self.model.encode_texts(&[text])?.remove(0))
    }

    fn encode_image(&self, path: &Path) -> Result<Vec<f32>, EmbedError> {
        let pixels = preprocess::preprocess_path(path, &self.options)?;
        Ok(self.model.encode_image_data(&[pixels])?.remove(0))
    }
}

/// Records which model built the index in `INDEX/model.json` (atomically: temp file + rename).
pub fn write_model_record(index: &Path, model_arg: &str) -> Result<()> {
    let path = resolve_model(model_arg)?;
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let record = ModelRecord {
        model: model_arg.to_owned(),
        path,
    };
    let tmp = index.join(format!("{MODEL_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&record)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, index.join(MODEL_FILE))
        .with_context(|| format!("cannot write {}", index.join(MODEL_FILE).display()))?;
    Ok(())
}

/// Reads `INDEX/model.json`, if there is one.
pub fn read_model_record(index: &Path) -> Result<Option<ModelRecord>> {
    let path = index.join(MODEL_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{}: not a model record", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}
