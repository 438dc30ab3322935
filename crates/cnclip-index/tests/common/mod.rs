//! Helpers shared by the integration tests of cnclip-index and (through `#[path]`) cnclip-search.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// splitmix64: a tiny deterministic PRNG for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.f32().max(1e-7);
        let u2 = self.f32();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A random unit vector.
pub fn unit(rng: &mut Rng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| rng.normal()).collect();
    cnclip_index::normalize(&mut v).unwrap();
    v
}

/// Writes a small PNG whose pixels are determined by `seed`; returns its path.
pub fn png(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let mut rng = Rng(seed);
    let img = image::RgbImage::from_fn(12, 9, |_, _| {
        let v = rng.next_u64();
        image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
    });
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    img.save(&path).unwrap();
    path
}

/// Absolute, canonical form of a path (what the index stores).
pub fn canon(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap()
}
