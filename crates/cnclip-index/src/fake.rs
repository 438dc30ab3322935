//! A deterministic stand-in for the model, for tests and benchmarks.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::decode::decode_image;
use crate::embed::ImageEmbedder;
use crate::error::EmbedError;
use crate::identity::ModelIdentity;

/// An [`ImageEmbedder`] whose vector is a pseudo-random function of the decoded pixels: it decodes
/// every file with [`decode_image`] (so hostile files are refused as a real model would refuse
/// them), identical pixels give identical vectors and different pixels nearly orthogonal ones. It
/// counts what it embeds, which is how tests prove that nothing is embedded twice.
#[derive(Debug)]
pub struct FakeEmbedder {
    dim: usize,
    model: String,
    batch: usize,
    delay: Duration,
    embedded: AtomicUsize,
    calls: AtomicUsize,
}

impl FakeEmbedder {
    /// A fake model called `fake` with vectors of `dim` values.
    pub fn new(dim: usize) -> Self {
        FakeEmbedder {
            dim,
            model: "fake".into(),
            batch: 8,
            delay: Duration::ZERO,
            embedded: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
        }
    }

    /// Same, under another model name (to test identity checks).
    pub fn with_model(mut self, model: &str) -> Self {
        self.model = model.into();
        self
    }

    /// Batch size handed to the engine.
    pub fn with_batch_size(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Sleeps this long per embedded image, to look like a slow model (crash and concurrency tests).
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Images embedded so far.
    pub fn embedded(&self) -> usize {
        self.embedded.load(Ordering::SeqCst)
    }

    /// Calls to [`ImageEmbedder::embed`] so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The vector this embedder gives an image with these decoded pixels (before normalization).
    pub fn vector_for_digest(&self, digest: &[u8; 32]) -> Vec<f32> {
        // splitmix64 seeded by the digest: cheap, deterministic, well spread.
        let mut state = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
            ^ u64::from_le_bytes(digest[8..16].try_into().expect("8 bytes"));
        (0..self.dim)
            .map(|_| {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                (z >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }
}

/// The fake's prepared image: a digest of the decoded RGB pixels and their size.
#[derive(Clone, Copy, Debug)]
pub struct PixelDigest(pub [u8; 32]);

impl ImageEmbedder for FakeEmbedder {
    type Prepared = PixelDigest;

    fn identity(&self) -> ModelIdentity {
        ModelIdentity {
            model: self.model.clone(),
            dim: self.dim,
            preprocess: "fake-v1".into(),
            precision: "f32".into(),
        }
    }

    fn prepare(&self, _path: &Path, bytes: &[u8]) -> Result<PixelDigest, String> {
        let img = decode_image(bytes, true)?.into_rgb8();
        let mut h = Sha256::new();
        h.update(img.width().to_le_bytes());
        h.update(img.height().to_le_bytes());
        h.update(img.as_raw());
        Ok(PixelDigest(h.finalize().into()))
    }

    fn embed(&self, batch: &[PixelDigest]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.embedded.fetch_add(batch.len(), Ordering::SeqCst);
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay * batch.len() as u32);
        }
        Ok(batch.iter().map(|d| self.vector_for_digest(&d.0)).collect())
    }

    fn batch_size(&self) -> usize {
        self.batch
    }
}
