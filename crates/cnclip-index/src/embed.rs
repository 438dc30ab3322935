//! The seam between the engine and a model: [`ImageEmbedder`].

use std::path::Path;

use crate::error::EmbedError;
use crate::identity::ModelIdentity;

/// Turns image files into vectors. The engine calls [`prepare`](Self::prepare) on its decoder
/// threads (in parallel, one file at a time) and [`embed`](Self::embed) on one thread, in batches,
/// while the decoders go on with the next files.
pub trait ImageEmbedder: Send + Sync {
    /// A decoded, preprocessed image ready to be embedded (e.g. a normalized `3×S×S` tensor).
    type Prepared: Send;

    /// The model, dimension and preprocessing this embedder stands for; the index must match.
    fn identity(&self) -> ModelIdentity;

    /// Decodes and preprocesses one file. `Err` is the reason the file cannot be used (it is skipped
    /// and reported, never fatal): keep it short and lowercase, e.g. `"not a JPEG file"`. A panic
    /// is caught and the file reported the same way, so `prepare` must leave the embedder usable
    /// when it unwinds (hold no lock that a panic would poison).
    fn prepare(&self, path: &Path, bytes: &[u8]) -> Result<Self::Prepared, String>;

    /// Embeds a batch: one vector per item, of length `identity().dim`, any norm (the engine
    /// L2-normalizes). An error stops the build.
    fn embed(&self, batch: &[Self::Prepared]) -> Result<Vec<Vec<f32>>, EmbedError>;

    /// How many prepared images to hand to [`embed`](Self::embed) at once.
    fn batch_size(&self) -> usize {
        16
    }
}

/// L2-normalizes `v` in place; `None` when it is not finite or has (almost) no length, since such a
/// vector has no direction to compare.
pub fn normalize(v: &mut [f32]) -> Option<()> {
    let norm = dot(v, v).sqrt();
    if !norm.is_finite() || norm < 1e-12 {
        return None;
    }
    for x in v.iter_mut() {
        *x /= norm;
    }
    Some(())
}

/// Dot product with eight independent accumulators, so that it vectorizes without fast-math.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + tail
}
