//! What an index is bound to: the model that made its vectors, and the on-disk format version.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The on-disk format this program writes (sled layout, reader log, graph manifest).
pub const FORMAT_VERSION: u32 = 1;
/// The oldest on-disk format this program still reads.
pub const OLDEST_SUPPORTED_FORMAT: u32 = 1;

/// Everything that must match for two vectors to be comparable: an index stores it at creation and
/// refuses to be extended or queried with anything else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// The model's name, e.g. `ViT-B-16` (what `--model` takes).
    pub model: String,
    /// Embedding dimension.
    pub dim: usize,
    /// A fingerprint of the image preprocessing (size, resize, normalization constants, EXIF
    /// handling): vectors made with other preprocessing are not comparable.
    pub preprocess: String,
    /// Numeric precision the vectors were computed in (`f32`, `f16`, …). Recorded, not enforced:
    /// vectors of one model in two precisions agree to about 1e-3 in cosine.
    pub precision: String,
}

impl ModelIdentity {
    /// Whether vectors made under `other` can live in the same index as vectors made under `self`
    /// (model, dimension and preprocessing agree; precision may differ).
    pub fn compatible(&self, other: &ModelIdentity) -> bool {
        self.model == other.model && self.dim == other.dim && self.preprocess == other.preprocess
    }
}

impl fmt::Display for ModelIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (dim {}, preprocessing {}, {})",
            self.model, self.dim, self.preprocess, self.precision
        )
    }
}
