//! Throughput measurements behind the hidden `cnclip bench` subcommand, so that
//! `tools/bench_vs_reference.py` can time cnclip and cn_clip side by side in one run.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use cnclip_model::model::Towers;
use cnclip_model::tokenizer::{Tokenizer, DEFAULT_CONTEXT_LENGTH};
use serde_json::{json, Value};

use crate::{load_model_on, Precision};

/// What to measure.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum What {
    /// Image tower on deterministic pixels: images per second.
    Image,
    /// Text tower, one batch of corpus lines at a time: per-batch latencies.
    Text,
    /// Tokenizer alone over the corpus: texts per second.
    Tokenize,
}

/// Runs one measurement and returns its JSON report.
pub fn run(
    model: Option<&str>,
    what: What,
    batch: usize,
    iters: usize,
    corpus: Option<&Path>,
    precision: Precision,
    device: &Device,
) -> Result<Value> {
    let lines = || -> Result<Vec<String>> {
        let path = corpus.context("--corpus is required for text and tokenize")?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(text.lines().map(str::to_owned).collect())
    };
    match what {
        What::Tokenize => {
            let texts = lines()?;
            let tok = Tokenizer::chinese();
            let mut best = f64::MAX;
            let mut checksum = 0u64;
            for _ in 0..iters.max(1) {
                let t = Instant::now();
                for text in &texts {
                    let ids = tok.encode(text, DEFAULT_CONTEXT_LENGTH)?;
                    checksum = checksum.wrapping_add(ids.iter().map(|&i| i as u64).sum::<u64>());
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            Ok(json!({"what": "tokenize", "texts": texts.len(),
                      "texts_per_s": texts.len() as f64 / best, "checksum": checksum}))
        }
        What::Image => {
            let Some(model) = model else {
                bail!("--model is required")
            };
            let model = load_model_on(model, precision, Towers::Image, device)?;
            let n = 3 * model.image_size() * model.image_size();
            let images: Vec<Vec<f32>> = (0..batch)
                .map(|b| {
                    (0..n)
                        .map(|i| (((b * n + i) % 251) as f32 / 125.0) - 1.0)
                        .collect()
                })
                .collect();
            model.encode_image_data(&images)?;
            let mut times = Vec::with_capacity(iters);
            for _ in 0..iters.max(1) {
                let t = Instant::now();
                model.encode_image_data(&images)?;
                times.push(t.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            Ok(
                json!({"what": "image", "batch": batch, "images_per_s": batch as f64 / median,
                      "median_s": median}),
            )
        }
        What::Text => {
            let Some(model) = model else {
                bail!("--model is required")
            };
            let model = load_model_on(model, precision, Towers::Text, device)?;
            let texts = lines()?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            model.encode_texts(&refs[..batch.min(refs.len())])?;
            let mut times = Vec::new();
            for _ in 0..iters.max(1) {
                for chunk in refs.chunks(batch.max(1)) {
                    let t = Instant::now();
                    model.encode_texts(chunk)?;
                    times.push(t.elapsed().as_secs_f64());
                }
            }
            times.sort_by(f64::total_cmp);
            let p50 = times[times.len() / 2];
            let total: f64 = times.iter().sum();
            Ok(json!({"what": "text", "batch": batch, "p50_ms": p50 * 1e3,
                      "texts_per_s": (times.len() * batch) as f64 / total}))
        }
    }
}
