//! Checkpoints: the official `.pt` files, Hugging Face directories and safetensors, all loaded into
//! cn_clip's own tensor names (f32, CPU), with the architecture read or inferred and every tensor
//! checked.
//!
//! [`load`] takes a file or a directory and recognises the format by its content:
//!
//! - **Official `.pt`** ([`CheckpointFormat::CnClipPt`]): a `torch.save` zip (or the legacy
//!   pre-1.6 stream) of `{'epoch', 'step', 'name', 'state_dict'[, 'optimizer']}` or of a bare state
//!   dict; keys with or without `module.`; fp32, fp16, bf16 or fp64 storages. Read with a
//!   restricted unpickler that never executes code: any pickle global off its allow-list is refused
//!   with an error naming the file and the global. The architecture is inferred from the shapes
//!   ([`infer_config`]).
//! - **Hugging Face directory** ([`CheckpointFormat::HfDirectory`]): `config.json` (transformers'
//!   `ChineseCLIPConfig`, whose explicit head counts describe any head width exactly) with
//!   `model.safetensors` (preferred) or `pytorch_model.bin`, in transformers' `ChineseCLIPModel`
//!   names, which are mapped to cn_clip's (q/k/v fused, projections transposed). A directory
//!   written by [`save_hf`] for a ResNet model holds cn_clip's names and cnclip's own
//!   [`ClipConfig`] JSON instead, and loads the same way. A single weight file in transformers'
//!   names (`pytorch_model.bin`, `model.safetensors`) loads too, with the `config.json` beside it.
//! - **safetensors** ([`CheckpointFormat::Safetensors`]): a single file in cn_clip's names. Its
//!   configuration is, in order: the `cnclip_config` entry of the file's metadata (written by
//!   [`save_hf`]); otherwise inferred from the shapes, like a `.pt` (a `config.json` beside it is
//!   not consulted, because a lone file's directory may hold anything).
//!
//! [`load_with`] can leave a tower out ([`Towers`]): a process that only encodes queries need not
//! read the image tower (half of ViT-B-16's 0.75 GB). The left-out tensors are still listed,
//! shape-checked and fingerprinted from their first values ([`TensorHead`]), so a partial load
//! has the same configuration and [`Checkpoint::fingerprint`] as a full one; only `.pt` and
//! safetensors files in cn_clip's names skip the reading, a file in transformers' names is read
//! whole.
//!
//! Every loaded checkpoint has passed [`check_complete`]: no tensor missing, mis-shaped or
//! unexpected. `bert.pooler.*`, `*.num_batches_tracked` (and transformers' `position_ids`,
//! `token_type_ids` buffers and text pooler) are dropped without being read.
//!
//! ```no_run
//! use cnclip_model::weights;
//! # fn main() -> Result<(), weights::WeightsError> {
//! let ck = weights::load("clip_cn_vit-b-16.pt".as_ref())?;
//! assert_eq!(ck.config, cnclip_model::Preset::VitB16.config());
//! let vb = ck.var_builder(candle_core::DType::F32, &candle_core::Device::Cpu);
//! let proj = vb.pp("visual").get((768, 512), "proj")?;
//! weights::save_hf(&ck, "chinese-clip-vit-base-patch16".as_ref())?; // `cnclip convert`
//! # Ok(()) }
//! ```

mod error;
mod hf;
mod names;
mod pickle;
mod st;
mod torch;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::{ClipConfig, VisionConfig};
use torch::{Loaded, Select};

pub use error::WeightsError;
pub use names::{check_complete, expected_tensors, infer_config, is_buffer};

/// Values of a tensor that [`Checkpoint::fingerprint`] reads (its first, row-major).
pub const HEAD_LEN: usize = 64;

/// Which towers [`load_with`] reads in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Towers {
    /// Both: everything.
    #[default]
    Both,
    /// The text tower (`bert.*`, `text_projection`) and `logit_scale`: enough to encode queries.
    Text,
    /// The image tower (`visual.*`) and `logit_scale`.
    Image,
}

impl Towers {
    /// The tower the tensor `name` (cn_clip's name, with or without `module.`) belongs to:
    /// `Image` or `Text`, or `None` for `logit_scale` (and names that are not cn_clip's).
    pub fn of(name: &str) -> Option<Towers> {
        let name = name.strip_prefix("module.").unwrap_or(name);
        if name.starts_with("visual.") {
            Some(Towers::Image)
        } else if name.starts_with("bert.") || name == "text_projection" {
            Some(Towers::Text)
        } else {
            None
        }
    }

    /// Whether the tensor `name` belongs to a tower this selection leaves out.
    pub fn leaves_out(self, name: &str) -> bool {
        matches!(
            (self, Towers::of(name)),
            (Towers::Text, Some(Towers::Image)) | (Towers::Image, Some(Towers::Text))
        )
    }
}

/// A tensor left out by [`Towers`]: its shape and first [`HEAD_LEN`] values, as f32.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorHead {
    /// The tensor's shape.
    pub dims: Vec<usize>,
    /// Its first `min(HEAD_LEN, numel)` values in row-major order.
    pub values: Vec<f32>,
}

/// The metadata key under which [`save_hf`] stores the [`ClipConfig`] JSON in `model.safetensors`.
pub const METADATA_CONFIG_KEY: &str = "cnclip_config";

/// Where a checkpoint's tensors came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// A `torch.save` file (zip or legacy) in cn_clip's names: the official `clip_cn_*.pt`.
    CnClipPt,
    /// A directory with `config.json` (transformers' layout, or cnclip's own for ResNet models),
    /// or a single weight file in transformers' names.
    HfDirectory,
    /// A single safetensors file in cn_clip's names.
    Safetensors,
}

/// A loaded, complete checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The architecture (read from `config.json` / metadata, or inferred from the shapes).
    pub config: ClipConfig,
    /// Canonical (cn_clip state-dict) name → f32 CPU tensor; with `left_out`, exactly
    /// [`expected_tensors`].
    pub tensors: HashMap<String, Tensor>,
    /// The tensors of a tower [`load_with`] was told to leave out, by canonical name (empty
    /// after [`load`]).
    pub left_out: HashMap<String, TensorHead>,
    /// The format the tensors were read from.
    pub format: CheckpointFormat,
    /// The file or directory given to [`load`].
    pub source: PathBuf,
}

impl Checkpoint {
    /// A `VarBuilder` over the tensors, converting to `dtype` on `device` as they are fetched;
    /// model code uses `vb.pp("visual")`, `vb.pp("bert")`, … with cn_clip's names.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_tensors(self.tensors.clone(), dtype, device)
    }

    /// Canonical name → shape (left-out tensors included).
    pub fn shapes(&self) -> HashMap<String, Vec<usize>> {
        all_shapes(&self.tensors, &self.left_out)
    }

    /// Whether every tensor of `tower` (`Image` or `Text`; `Both`: of both) was read.
    pub fn has(&self, tower: Towers) -> bool {
        !self
            .left_out
            .keys()
            .any(|k| tower == Towers::Both || Towers::of(k) == Some(tower))
    }

    /// A short hex digest identifying these weights: SHA-256 over the configuration and, for
    /// every tensor in name order, its name, shape and first [`HEAD_LEN`] values — the same
    /// whether or not a tower was left out.
    pub fn fingerprint(&self) -> Result<String, WeightsError> {
        fingerprint(&self.config, &self.tensors, &self.left_out)
    }
}

fn all_shapes(
    tensors: &HashMap<String, Tensor>,
    left_out: &HashMap<String, TensorHead>,
) -> HashMap<String, Vec<usize>> {
    let mut shapes = names::shapes_of(tensors);
    shapes.extend(left_out.iter().map(|(k, h)| (k.clone(), h.dims.clone())));
    shapes
}

/// [`Checkpoint::fingerprint`] of a configuration and its tensors, read or left out.
pub fn fingerprint(
    config: &ClipConfig,
    tensors: &HashMap<String, Tensor>,
    left_out: &HashMap<String, TensorHead>,
) -> Result<String, WeightsError> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(
        serde_json::to_vec(config).map_err(|e| WeightsError::Config {
            reason: e.to_string(),
        })?,
    );
    let mut names: Vec<&String> = tensors.keys().chain(left_out.keys()).collect();
    names.sort();
    for name in names {
        let (dims, head) = match tensors.get(name) {
            Some(t) => {
                let flat = t.flatten_all()?;
                let n = flat.elem_count().min(HEAD_LEN);
                let head = flat
                    .narrow(0, 0, n)?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?;
                (t.dims().to_vec(), head)
            }
            None => (left_out[name].dims.clone(), left_out[name].values.clone()),
        };
        h.update(name.as_bytes());
        for d in dims {
            h.update((d as u64).to_le_bytes());
        }
        for v in head {
            h.update(v.to_le_bytes());
        }
    }
    let digest = h.finalize();
    Ok(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
}

/// Loads a checkpoint file or directory (format recognised by content, see the module docs),
/// checks it is complete, and returns it in canonical names.
pub fn load(path: &Path) -> Result<Checkpoint, WeightsError> {
    load_with(path, Towers::Both)
}

/// [`load`], reading in full only the tensors of `towers` (the others go to
/// [`Checkpoint::left_out`]; see the module docs).
pub fn load_with(path: &Path, towers: Towers) -> Result<Checkpoint, WeightsError> {
    let meta = fs::metadata(path).map_err(|e| WeightsError::io("cannot open", e).in_file(path))?;
    if meta.is_dir() {
        return load_dir(path, towers);
    }
    let file = read_file(path, None, towers).map_err(|e| e.in_file(path))?;
    let config = match file.config.clone() {
        Some(c) => Some(c),
        None if file.hf_names => {
            let beside = path.with_file_name("config.json");
            if !beside.is_file() {
                return Err(WeightsError::Config {
                    reason: "tensors in transformers' names need the config.json beside them"
                        .into(),
                }
                .in_file(path));
            }
            Some(read_config(&beside)?)
        }
        None => None,
    };
    let format = if file.hf_names {
        CheckpointFormat::HfDirectory
    } else {
        file.format
    };
    finish(file, config, format, path)
}

fn load_dir(dir: &Path, towers: Towers) -> Result<Checkpoint, WeightsError> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(WeightsError::UnknownFormat {
            reason: "a directory without config.json".into(),
        }
        .in_file(dir));
    }
    let config = read_config(&config_path)?;
    let weights = ["model.safetensors", "pytorch_model.bin"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            WeightsError::UnknownFormat {
                reason: "a directory with neither model.safetensors nor pytorch_model.bin".into(),
            }
            .in_file(dir)
        })?;
    let file = read_file(&weights, Some(&config), towers).map_err(|e| e.in_file(&weights))?;
    finish(file, Some(config), CheckpointFormat::HfDirectory, dir)
}

fn read_config(path: &Path) -> Result<ClipConfig, WeightsError> {
    let text =
        fs::read_to_string(path).map_err(|e| WeightsError::io("cannot read", e).in_file(path))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        WeightsError::Config {
            reason: format!("not valid JSON: {e}"),
        }
        .in_file(path)
    })?;
    hf::config_from_json(&value).map_err(|e| e.in_file(path))
}

struct FileTensors {
    tensors: HashMap<String, Tensor>,
    left_out: HashMap<String, TensorHead>,
    /// Whether the names were transformers' (already converted to canonical).
    hf_names: bool,
    format: CheckpointFormat,
    /// Configuration stored in the file itself (safetensors metadata).
    config: Option<ClipConfig>,
}

fn read_file(
    path: &Path,
    dir_config: Option<&ClipConfig>,
    towers: Towers,
) -> Result<FileTensors, WeightsError> {
    // Everything but the known-ignorable names, in full unless its tower is left out.
    let select = |name: &str| {
        let bare = name.strip_prefix("module.").unwrap_or(name);
        if names::is_ignored(bare) || hf::is_ignored(bare) {
            Select::Skip
        } else if towers.leaves_out(bare) {
            Select::Head
        } else {
            Select::Full
        }
    };
    let mut f = fs::File::open(path).map_err(|e| WeightsError::io("cannot open", e))?;
    let mut head = [0u8; 16];
    let n = read_up_to(&mut f, &mut head).map_err(|e| WeightsError::io("cannot read", e))?;
    let head = &head[..n];
    drop(f);
    let read_all = || fs::read(path).map_err(|e| WeightsError::io("cannot read", e));

    let mut config = None;
    let (raw, format) = if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        (torch::read_zip(path, &select)?, CheckpointFormat::CnClipPt)
    } else if head.starts_with(&torch::LEGACY_MAGIC) {
        (
            torch::read_legacy(&read_all()?, &select)?,
            CheckpointFormat::CnClipPt,
        )
    } else if st::sniff(head) {
        let (tensors, metadata) = st::read(&read_all()?, &select)?;
        if dir_config.is_none() {
            if let Some(json) = metadata.get(METADATA_CONFIG_KEY) {
                let value = serde_json::from_str(json).map_err(|e| WeightsError::Config {
                    reason: format!("metadata {METADATA_CONFIG_KEY} is not valid JSON: {e}"),
                })?;
                config = Some(hf::config_from_json(&value)?);
            }
        }
        (tensors, CheckpointFormat::Safetensors)
    } else if looks_like_pickle(head) {
        (
            torch::read_bare_pickle(&read_all()?)?,
            CheckpointFormat::CnClipPt,
        )
    } else {
        return Err(WeightsError::UnknownFormat {
            reason: "neither a torch checkpoint (zip or legacy pickle) nor safetensors".into(),
        });
    };

    let mut tensors = HashMap::with_capacity(raw.len());
    let mut left_out = HashMap::new();
    for (name, t) in raw {
        let canonical = name.strip_prefix("module.").unwrap_or(&name).to_owned();
        let twice = match t {
            Loaded::Full(t) => tensors.insert(canonical.clone(), t).is_some(),
            Loaded::Head(h) => left_out.insert(canonical.clone(), h).is_some(),
        };
        if twice || (tensors.contains_key(&canonical) && left_out.contains_key(&canonical)) {
            return Err(WeightsError::NoStateDict {
                reason: format!("tensor {canonical} appears twice (with and without module.)"),
            });
        }
    }
    let hf_names = tensors.keys().any(|k| hf::is_hf_name(k));
    if hf_names {
        tensors = hf::hf_to_canonical(tensors)?;
    }
    Ok(FileTensors {
        tensors,
        left_out,
        hf_names,
        format,
        config,
    })
}

fn read_up_to(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The first opcode of a pickle of any protocol: `PROTO`, or a protocol-0/1 opening
/// (`GLOBAL`, `MARK`, `EMPTY_DICT`, `EMPTY_LIST`, `EMPTY_TUPLE`, `INST`…).
fn looks_like_pickle(head: &[u8]) -> bool {
    match head.first() {
        Some(0x80) => head.get(1).is_some_and(|&p| p <= 5),
        Some(b) => b"c(}])i".contains(b),
        None => false,
    }
}

fn finish(
    file: FileTensors,
    config: Option<ClipConfig>,
    format: CheckpointFormat,
    source: &Path,
) -> Result<Checkpoint, WeightsError> {
    let config = match config {
        Some(c) => c,
        None => infer_config(&all_shapes(&file.tensors, &file.left_out))
            .map_err(|e| e.in_file(source))?,
    };
    let ck = Checkpoint {
        config,
        tensors: file.tensors,
        left_out: file.left_out,
        format,
        source: source.to_path_buf(),
    };
    check_complete(&ck)?;
    Ok(ck)
}

/// Writes `ck` to `dir` (created if needed) as `model.safetensors` + `config.json` — what
/// `cnclip convert` does — and [`load`] reads the directory back to the same tensors.
///
/// ViT models get transformers' `ChineseCLIPModel` layout (tensor names and `ChineseCLIPConfig`),
/// which `ChineseCLIPModel.from_pretrained(dir)` loads with no missing or unexpected keys.
/// transformers has no ResNet Chinese-CLIP, so ResNet models (RN50) are written in cn_clip's own
/// names with cnclip's [`ClipConfig`] JSON as `config.json`; only cnclip reads that directory.
/// In both cases the safetensors metadata carries the [`ClipConfig`] under
/// [`METADATA_CONFIG_KEY`], so `model.safetensors` alone also loads exactly. Each file is
/// written to a temporary name, synced and renamed into place.
pub fn save_hf(ck: &Checkpoint, dir: &Path) -> Result<(), WeightsError> {
    check_complete(ck)?;
    let wrap = |e: WeightsError| e.in_file(dir);
    if let Some(name) = ck.left_out.keys().min() {
        return Err(wrap(WeightsError::Config {
            reason: format!("cannot save a checkpoint loaded without {name} (a tower left out)"),
        }));
    }
    fs::create_dir_all(dir).map_err(|e| wrap(WeightsError::io("cannot create directory", e)))?;
    let (tensors, config_json) = match &ck.config.vision {
        VisionConfig::Vit(_) => (
            hf::canonical_to_hf(&ck.tensors, &ck.config).map_err(wrap)?,
            hf::hf_config_json(&ck.config).map_err(wrap)?,
        ),
        VisionConfig::Resnet(_) => {
            let mut t: Vec<(String, Tensor)> = ck
                .tensors
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            t.sort_by(|a, b| a.0.cmp(&b.0));
            let json = serde_json::to_value(&ck.config).map_err(|e| {
                wrap(WeightsError::Config {
                    reason: e.to_string(),
                })
            })?;
            (t, json)
        }
    };
    let own = serde_json::to_string(&ck.config).map_err(|e| {
        wrap(WeightsError::Config {
            reason: e.to_string(),
        })
    })?;
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (METADATA_CONFIG_KEY.to_string(), own),
    ]);
    let weights = dir.join("model.safetensors");
    write_atomic(&weights, |tmp| st::write(tmp, &tensors, metadata))?;
    let mut text = serde_json::to_string_pretty(&config_json).map_err(|e| {
        wrap(WeightsError::Config {
            reason: e.to_string(),
        })
    })?;
    text.push('\n');
    write_atomic(&dir.join("config.json"), |tmp| {
        let mut f = fs::File::create(tmp).map_err(|e| WeightsError::io("cannot create", e))?;
        f.write_all(text.as_bytes())
            .map_err(|e| WeightsError::io("cannot write", e))
    })?;
    // Make the renames durable (best effort: not every platform can open a directory).
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes through `write` to `<path>.tmp`, syncs it and renames it to `path`.
fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), WeightsError>,
) -> Result<(), WeightsError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = write(&tmp).and_then(|()| {
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| WeightsError::io("cannot sync", e))?;
        fs::rename(&tmp, path).map_err(|e| WeightsError::io("cannot rename into place", e))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| e.in_file(path))
}
