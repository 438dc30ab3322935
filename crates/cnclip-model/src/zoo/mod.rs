//! Model names → checkpoint files: the five official models, a local cache, and downloads from
//! ModelScope or the Hugging Face hub.
//!
//! `--model` takes a zoo name (`ViT-B-16`, …, case-insensitive) or a local path
//! ([`parse_model_arg`]). A zoo name resolves ([`Resolver::resolve`]) to the official `.pt` file of
//! cn_clip's `_MODELS` table, looked up in this order:
//!
//! 1. cnclip's cache, `$CNCLIP_CACHE` or `$XDG_CACHE_HOME/cnclip` or `~/.cache/cnclip`, then
//!    `models/<ModelName>/<file>` ([`Resolver::cached_path`]) — a file put there by hand counts;
//! 2. cn_clip's own download root (`~/.cache/clip/<file>`, the `download_root` default of
//!    `cn_clip.clip.load_from_name`) and the Hugging Face hub cache
//!    (`models--OFA-Sys--<repo>/snapshots/*/<file>`), so nobody downloads a checkpoint twice;
//! 3. a download from ModelScope or the Hugging Face hub ([`HubChoice`], `CNCLIP_HUB`), into the
//!    cache: to `<file>.part`, checked against the pinned size/sha256 of [`ZooEntry`] and whatever
//!    the server states (`Content-Length`, Hugging Face's `X-Linked-Size`/`X-Linked-Etag`, the
//!    `Size`/`Sha256` of ModelScope's file listing), fsynced, then renamed into place; the sha256
//!    of what arrived is recorded next to it in `<file>.sha256` (`sha256sum -c` format). An
//!    interrupted transfer leaves only the `.part`, which the next attempt continues with `Range`
//!    when a sha256 is known to check the joined result against (and downloads afresh otherwise).
//!
//! With downloads disabled (`CNCLIP_OFFLINE=1`, `HF_HUB_OFFLINE=1`) or when every hub fails, the
//! error names the URLs to fetch by hand and the exact path to put the file at.
//!
//! # Example
//! ```no_run
//! use cnclip_model::zoo::{parse_model_arg, NoProgress, Resolver};
//!
//! let spec = parse_model_arg("vit-b-16")?;
//! let resolver = Resolver::from_env()?;
//! let checkpoint = resolver.resolve(&spec, &NoProgress)?;
//! println!("{}", checkpoint.display());
//! # Ok::<(), cnclip_model::zoo::ResolveError>(())
//! ```

mod download;
mod error;
mod resolver;
mod sidecar;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::config::Preset;

pub use error::{DownloadError, HubFailure, ResolveError};
pub use resolver::{ModelLocation, ModelStatus, Resolver, VerifiedFile};

/// Hugging Face organisation of the official repositories (cn_clip `_HUGGINGFACE_ORG`).
pub const HF_ORG: &str = "OFA-Sys";
/// ModelScope organisation of the official repositories (cn_clip `_MODELSCOPE_ORG`).
pub const MODELSCOPE_ORG: &str = "AI-ModelScope";
/// Default Hugging Face endpoint; `HF_ENDPOINT` replaces it (e.g. `https://hf-mirror.com`).
pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";
/// Default ModelScope endpoint (the modelscope SDK's `DEFAULT_MODELSCOPE_DOMAIN`, over https);
/// `MODELSCOPE_ENDPOINT` (a URL) or the SDK's `MODELSCOPE_DOMAIN` (a host) replace it.
pub const DEFAULT_MODELSCOPE_ENDPOINT: &str = "https://www.modelscope.cn";

/// Where one official checkpoint lives, and what it must look like when it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZooEntry {
    /// The model.
    pub preset: Preset,
    /// Hugging Face repository id (`OFA-Sys/…`).
    pub hf_repo: &'static str,
    /// ModelScope model id (`AI-ModelScope/…`, the same repository names).
    pub modelscope_repo: &'static str,
    /// The checkpoint's file name inside both repositories (and inside cnclip's cache).
    pub file: &'static str,
    /// Exact size in bytes, where known.
    pub size_bytes: Option<u64>,
    /// sha256 of the file (lowercase hex), where known.
    pub sha256: Option<&'static str>,
}

/// The official checkpoints, in [`Preset::ALL`] order. Repositories and files: cn_clip 1.6.0
/// `cn_clip/clip/utils.py` (`_MODELS`, `_HUGGINGFACE_ORG`, `_MODELSCOPE_ORG`).
///
/// Pinned sizes and hashes: only RN50's could be found in a stored source — the manifest of a
/// project that downloaded `OFA-Sys/chinese-clip-rn50` at revision
/// `717ba215769231e53b9b7c6b9d329b9cc5944418` and recorded its bytes and sha256
/// (github.com/ztybuaa/ios_app, `external_models/pretrained/chinese_clip_rn50/model_manifest.json`;
/// the same manifest's sha256 of cn_clip's `vocab.txt` matches the file shipped in cn-clip 1.6.0,
/// and 308,316,425 bytes ≈ 76.99M fp32 parameters + pickle overhead). The others are `None`: their
/// downloads are checked against what the hub states (see the module docs) and their sha256 is
/// recorded on arrival.
const ENTRIES: [ZooEntry; 5] = [
    ZooEntry {
        preset: Preset::Rn50,
        hf_repo: "OFA-Sys/chinese-clip-rn50",
        modelscope_repo: "AI-ModelScope/chinese-clip-rn50",
        file: "clip_cn_rn50.pt",
        size_bytes: Some(308_316_425),
        sha256: Some("b196ee3ee528b70be1158ab1aafb1d2f1c801ad2d9ffb3bae31b0d305f82fc88"),
    },
    ZooEntry {
        preset: Preset::VitB16,
        hf_repo: "OFA-Sys/chinese-clip-vit-base-patch16",
        modelscope_repo: "AI-ModelScope/chinese-clip-vit-base-patch16",
        file: "clip_cn_vit-b-16.pt",
        size_bytes: None,
        sha256: None,
    },
    ZooEntry {
        preset: Preset::VitL14,
        hf_repo: "OFA-Sys/chinese-clip-vit-large-patch14",
        modelscope_repo: "AI-ModelScope/chinese-clip-vit-large-patch14",
        file: "clip_cn_vit-l-14.pt",
        size_bytes: None,
        sha256: None,
    },
    ZooEntry {
        preset: Preset::VitL14_336,
        hf_repo: "OFA-Sys/chinese-clip-vit-large-patch14-336px",
        modelscope_repo: "AI-ModelScope/chinese-clip-vit-large-patch14-336px",
        file: "clip_cn_vit-l-14-336.pt",
        size_bytes: None,
        sha256: None,
    },
    ZooEntry {
        preset: Preset::VitH14,
        hf_repo: "OFA-Sys/chinese-clip-vit-huge-patch14",
        modelscope_repo: "AI-ModelScope/chinese-clip-vit-huge-patch14",
        file: "clip_cn_vit-h-14.pt",
        size_bytes: None,
        sha256: None,
    },
];

impl ZooEntry {
    /// Every official checkpoint, in [`Preset::ALL`] order.
    pub fn all() -> &'static [ZooEntry] {
        &ENTRIES
    }

    /// The official entry of `preset`.
    pub fn of(preset: Preset) -> &'static ZooEntry {
        ENTRIES
            .iter()
            .find(|e| e.preset == preset)
            .expect("the zoo table has one entry per preset")
    }

    /// The zoo name (`ViT-B-16`, …).
    pub fn name(&self) -> &'static str {
        self.preset.name()
    }

    /// Hugging Face file URL: `{endpoint}/{repo}/resolve/main/{file}` (the form `hf_hub_download`
    /// requests, `huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE`).
    pub fn hf_url(&self, endpoint: &str) -> String {
        format!(
            "{}/{}/resolve/main/{}",
            trim_endpoint(endpoint),
            self.hf_repo,
            self.file
        )
    }

    /// ModelScope file URL: `{endpoint}/api/v1/models/{model_id}/repo?Revision=master&FilePath={file}`
    /// (the modelscope SDK's `modelscope.hub.file_download.get_file_download_url`).
    pub fn modelscope_url(&self, endpoint: &str) -> String {
        format!(
            "{}/api/v1/models/{}/repo?Revision=master&FilePath={}",
            trim_endpoint(endpoint),
            self.modelscope_repo,
            encode_query_value(self.file)
        )
    }

    /// ModelScope file listing, whose entries carry `Path`, `Size` and `Sha256`:
    /// `{endpoint}/api/v1/models/{model_id}/repo/files?Revision=master&Recursive=true`
    /// (the SDK's `HubApi.get_model_files`, which `model_file_download` checks downloads against).
    pub fn modelscope_listing_url(&self, endpoint: &str) -> String {
        format!(
            "{}/api/v1/models/{}/repo/files?Revision=master&Recursive=true",
            trim_endpoint(endpoint),
            self.modelscope_repo
        )
    }

    /// The file's URL on `hub`.
    pub fn url(&self, hub: Hub, hf_endpoint: &str, modelscope_endpoint: &str) -> String {
        match hub {
            Hub::HuggingFace => self.hf_url(hf_endpoint),
            Hub::ModelScope => self.modelscope_url(modelscope_endpoint),
        }
    }
}

/// `https://host/` → `https://host`.
fn trim_endpoint(endpoint: &str) -> &str {
    endpoint.trim().trim_end_matches('/')
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass through).
fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A model hub that hosts the official checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hub {
    /// The Hugging Face hub or a mirror of it (`HF_ENDPOINT`).
    HuggingFace,
    /// ModelScope (reachable from mainland China, where the Hugging Face hub is not).
    ModelScope,
}

impl Hub {
    /// `huggingface` / `modelscope`.
    pub fn as_str(self) -> &'static str {
        match self {
            Hub::HuggingFace => "huggingface",
            Hub::ModelScope => "modelscope",
        }
    }
}

impl fmt::Display for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which hubs downloads may use (`CNCLIP_HUB=auto|modelscope|huggingface`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HubChoice {
    /// Both hubs, one after the other. The Hugging Face hub (or its mirror) goes first when an
    /// endpoint was configured for it (`HF_ENDPOINT`): the user has said which one works for them.
    /// Otherwise ModelScope goes first: it is reachable from everywhere, while the Hugging Face hub
    /// is blocked in mainland China — where most users of a Chinese-language model are — and a
    /// blocked connection costs a connect timeout before the fallback starts.
    #[default]
    Auto,
    /// Only the Hugging Face hub (or the `HF_ENDPOINT` mirror).
    HuggingFace,
    /// Only ModelScope.
    ModelScope,
}

impl FromStr for HubChoice {
    type Err = ResolveError;

    /// `auto`, `huggingface`/`hf`, `modelscope`/`ms` (case-insensitive).
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(HubChoice::Auto),
            "huggingface" | "hf" => Ok(HubChoice::HuggingFace),
            "modelscope" | "ms" => Ok(HubChoice::ModelScope),
            _ => Err(ResolveError::InvalidSetting {
                name: "CNCLIP_HUB",
                value: value.to_string(),
                expected: "auto, modelscope or huggingface",
            }),
        }
    }
}

/// Reports a download's progress; the CLI draws a bar, libraries pass [`NoProgress`].
pub trait DownloadProgress {
    /// A transfer from `url` begins; `total` is the file's size when known. Also called with a
    /// file path when [`Resolver::verify`] hashes a file.
    fn start(&self, url: &str, total: Option<u64>);
    /// `bytes` more bytes arrived (or were hashed). A resumed download first reports the bytes it
    /// already had.
    fn advance(&self, bytes: u64);
    /// The transfer ended, successfully or not; called once after every `start`.
    fn finish(&self);
}

/// A [`DownloadProgress`] that reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl DownloadProgress for NoProgress {
    fn start(&self, _url: &str, _total: Option<u64>) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// What `--model` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// An official model, resolved through the cache and the hubs.
    Zoo(Preset),
    /// A local checkpoint file or model directory, used as is.
    Path(PathBuf),
}

/// Parses a `--model` argument.
///
/// An existing path wins (a directory called `ViT-B-16` in the working directory is that
/// directory); otherwise a zoo name (`ViT-B-16`, case-insensitive) or an official repository id
/// (`OFA-Sys/chinese-clip-vit-base-patch16`, `AI-ModelScope/…`) names a zoo model. Anything else is
/// an error: one that says the file is missing when the argument looks like a path, one that lists
/// the known names otherwise.
pub fn parse_model_arg(arg: &str) -> Result<ModelSpec, ResolveError> {
    let path = Path::new(arg);
    if !arg.is_empty() && path.exists() {
        return Ok(ModelSpec::Path(path.to_path_buf()));
    }
    if let Some(preset) = Preset::from_name(arg.trim()) {
        return Ok(ModelSpec::Zoo(preset));
    }
    if let Some(entry) = ZooEntry::all().iter().find(|e| {
        e.hf_repo.eq_ignore_ascii_case(arg.trim())
            || e.modelscope_repo.eq_ignore_ascii_case(arg.trim())
    }) {
        return Ok(ModelSpec::Zoo(entry.preset));
    }
    let looks_like_path = arg.contains(['/', '\\'])
        || [".pt", ".pth", ".bin", ".safetensors"]
            .iter()
            .any(|ext| arg.to_ascii_lowercase().ends_with(ext));
    if looks_like_path {
        Err(ResolveError::MissingFile {
            path: path.to_path_buf(),
        })
    } else {
        Err(ResolveError::UnknownModel {
            name: arg.to_string(),
            known: known_names(),
        })
    }
}

/// `RN50, ViT-B-16, ViT-L-14, ViT-L-14-336, ViT-H-14`.
fn known_names() -> String {
    Preset::ALL
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(", ")
}
