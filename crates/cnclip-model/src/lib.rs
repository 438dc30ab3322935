//! Chinese-CLIP (OFA-Sys) in Rust, on candle: the five official models, exactly.
//!
//! - [`config`]: typed configurations and the five presets.
//! - [`tokenizer`]: cn_clip's `FullTokenizer` + `tokenize`, id for id.
//! - [`preprocess`]: cn_clip's `image_transform(S)`, a replica of PIL's fixed-point bicubic resize;
//!   optionally ([`preprocess::JpegDecode::Scaled`]) large JPEGs decoded at reduced scale.
//! - [`weights`]: official `.pt` (restricted pickle reader), Hugging Face directories and
//!   safetensors; one tower can be left unread ([`weights::Towers`]) without changing the
//!   configuration or fingerprint.
//! - [`model`]: the towers and [`model::ChineseClip`] (encode, similarity, zero-shot), fused CPU
//!   kernels ([`model::ops`]), f32 weights in GEMM panels ([`model::panels`]) and 8-bit weights
//!   ([`model::ChineseClip::quantize`], [`model::q8`]); a text query's parallel loops run on a
//!   team of rayon workers kept spinning through the pass (`model::team`).
//! - [`zoo`]: model names → local cache → ModelScope / Hugging Face hub.
//!
//! Embeddings equal cn_clip 1.6.0's to float precision (max |Δ| of normalised embeddings ≈ 1e-7
//! for all five official architectures; see `tests/parity.rs`).
//!
//! # Example
//!
//! ```
//! use cnclip_model::tokenizer::Tokenizer;
//!
//! // Same ids as cn_clip.clip.tokenize("一只小猫", context_length=8).
//! let ids = Tokenizer::chinese().encode("一只小猫", 8)?;
//! assert_eq!(ids, [101, 671, 1372, 2207, 4344, 102, 0, 0]);
//! # Ok::<(), cnclip_model::Error>(())
//! ```
//!
//! Zero-shot classification with an official checkpoint:
//!
//! ```no_run
//! use candle_core::{DType, Device};
//! use cnclip_model::model::ChineseClip;
//! use cnclip_model::preprocess::{preprocess_path, PreprocessOptions};
//!
//! let model = ChineseClip::load("clip_cn_vit-b-16.pt".as_ref(), &Device::Cpu, DType::F32)?;
//! let opts = PreprocessOptions { size: model.image_size(), ..PreprocessOptions::default() };
//! let pixels = preprocess_path("pikachu.png".as_ref(), &opts)?;
//! let probs = model.classify(&[pixels], &["杰尼龟", "妙蛙种子", "小火龙", "皮卡丘"])?;
//! println!("{probs:?}");
//! # Ok::<(), cnclip_model::Error>(())
//! ```

#![deny(missing_docs)]

/// Defines a function whose body is compiled for AVX-512 (F, BW, DQ, VL + FMA), for AVX2 + FMA
/// and for baseline x86-64, and runs the widest the CPU has (`ops::simd_level`). The crate is
/// built for baseline x86-64, so the element-wise loops (epilogues, LayerNorm, softmax,
/// activation quantization, the resampler's dot products) would otherwise get SSE2's 4 lanes; measured on the Zen 4 build
/// machine, QuickGELU and residual epilogues took 20% of a q8 image batch that way. Only the
/// instruction width changes: Rust never contracts `a * b + c` into an FMA and sums keep their
/// order, so every variant gives the same bits. The body is a nested `#[inline(always)]` function,
/// so it is inlined into (and compiled with) each variant.
macro_rules! simd_fn {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$attr])*
        #[allow(unsafe_code)]
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                // SAFETY: each variant runs only on a CPU with the features it enables.
                match $crate::model::ops::simd_level() {
                    2 => return unsafe { avx512($($arg),*) },
                    1 => return unsafe { avx2($($arg),*) },
                    _ => {}
                }
            }
            body($($arg),*)
        }
    };
}

pub mod config;
pub mod error;
pub mod model;
pub mod preprocess;
pub mod tokenizer;
pub mod weights;
pub mod zoo;

pub use config::{ClipConfig, Preset};
pub use error::{Error, Result};
