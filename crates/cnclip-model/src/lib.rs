//! Chinese-CLIP (OFA-Sys) in Rust, on candle: the five official models, exactly.
//!
//! - [`config`]: typed configurations and the five presets.
//! - [`tokenizer`]: cn_clip's `FullTokenizer` + `tokenize`, id for id.
//! - [`preprocess`]: cn_clip's `image_transform(S)`, a replica of PIL's fixed-point bicubic resize.
//! - [`weights`]: official `.pt` (restricted pickle reader), Hugging Face directories and safetensors.
//! - [`model`]: the towers and [`model::ChineseClip`] (encode, similarity, zero-shot).
//! - [`zoo`]: model names → local cache → ModelScope / Hugging Face hub.

pub mod config;
pub mod error;
pub mod model;
pub mod preprocess;
pub mod tokenizer;
pub mod weights;
pub mod zoo;

pub use config::{ClipConfig, Preset};
pub use error::{Error, Result};
