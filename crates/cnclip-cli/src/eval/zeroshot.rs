//! Zero-shot classification accuracy on an ImageFolder with Chinese labels.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cnclip_model::model::{l2_normalized, ChineseClip};
use cnclip_model::preprocess::{preprocess_path, PreprocessOptions};
use serde_json::json;

use super::data::{read_labels, read_templates, scan_image_folder};
use super::templates::DEFAULT_TEMPLATES;
use super::{exact_top_k, preprocess_text, Progress, Vectors};

/// What to evaluate.
#[derive(Clone, Debug)]
pub struct ZeroShotOptions {
    /// ImageFolder root: one subfolder per class; sorted folder order is the class index.
    pub data: PathBuf,
    /// `label_cn.txt`: one label per line, in class-index order.
    pub labels: PathBuf,
    /// Template file (one per line, `{}` for the label); the built-in ones when `None`.
    pub templates: Option<PathBuf>,
    /// Images embedded at a time.
    pub batch_size: usize,
    /// Image loading and preprocessing (its `size` is replaced by the model's).
    pub preprocess: PreprocessOptions,
}

impl ZeroShotOptions {
    /// Checks that the inputs exist, before any model is loaded.
    pub fn check(&self) -> Result<()> {
        if !self.data.is_dir() {
            bail!("{}: not a directory", self.data.display());
        }
        for p in std::iter::once(&self.labels).chain(&self.templates) {
            if !p.is_file() {
                bail!("{}: no such file", p.display());
            }
        }
        Ok(())
    }
}

/// The result of [`evaluate`].
#[derive(Clone, Debug, PartialEq)]
pub struct ZeroShotReport {
    /// Top-1 accuracy, percent.
    pub top1: f64,
    /// Top-5 accuracy, percent (top-`classes` when there are fewer than 5).
    pub top5: f64,
    /// Images evaluated.
    pub n: usize,
    /// Classes.
    pub classes: usize,
    /// Templates per class.
    pub templates: usize,
}

impl ZeroShotReport {
    /// The one-line `--json` report.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "top1": self.top1,
            "top5": self.top5,
            "n": self.n,
            "classes": self.classes,
            "templates": self.templates,
        })
    }

    /// A human-readable line.
    pub fn to_text(&self) -> String {
        format!(
            "top-1 {:.2}%  top-5 {:.2}%  ({} images, {} classes, {} templates)\n",
            self.top1, self.top5, self.n, self.classes, self.templates
        )
    }
}

/// The zero-shot classifier: for each label, every template's text embedding normalised,
/// averaged, renormalised (cn_clip's `zero_shot_classifier`). One row per class.
pub fn class_embeddings(
    model: &ChineseClip,
    labels: &[String],
    templates: &[String],
    progress: &dyn Progress,
) -> Result<Vectors> {
    progress.start("classes", Some(labels.len() as u64));
    let mut out = Vectors::new();
    for label in labels {
        let texts: Vec<String> = templates
            .iter()
            .map(|t| preprocess_text(&t.replacen("{}", label, 1)))
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let rows = model
            .encode_texts_normalized(&refs)
            .with_context(|| format!("cannot embed the prompts for label {label}"))?;
        let dim = rows.first().map_or(0, Vec::len);
        let mut mean = vec![0f32; dim];
        for r in &rows {
            for (m, x) in mean.iter_mut().zip(r) {
                *m += x;
            }
        }
        let n = rows.len() as f32;
        mean.iter_mut().for_each(|m| *m /= n);
        out.extend(vec![l2_normalized(mean)]);
        progress.advance(1);
    }
    progress.finish();
    Ok(out)
}

/// Runs the whole zero-shot evaluation. An image that cannot be decoded is an error naming it.
pub fn evaluate(
    model: &ChineseClip,
    opts: &ZeroShotOptions,
    progress: &dyn Progress,
) -> Result<ZeroShotReport> {
    let folder = scan_image_folder(&opts.data)?;
    let labels = read_labels(&opts.labels)?;
    if labels.len() != folder.classes.len() {
        bail!(
            "{}: {} labels, but {} has {} class folders",
            opts.labels.display(),
            labels.len(),
            opts.data.display(),
            folder.classes.len()
        );
    }
    let templates = match &opts.templates {
        Some(p) => read_templates(p)?,
        None => DEFAULT_TEMPLATES.iter().map(|t| (*t).to_owned()).collect(),
    };
    let classifier = class_embeddings(model, &labels, &templates, progress)?;
    let pre = PreprocessOptions {
        size: model.image_size(),
        ..opts.preprocess.clone()
    };
    let k = 5.min(labels.len());
    let (mut top1, mut top5) = (0usize, 0usize);
    progress.start("images", Some(folder.samples.len() as u64));
    for chunk in folder.samples.chunks(opts.batch_size.max(1)) {
        let pixels = chunk
            .iter()
            .map(|(p, _)| preprocess_path(p, &pre))
            .collect::<Result<Vec<_>, _>>()?;
        let mut feats = Vectors::new();
        feats.extend(model.encode_image_data_normalized(&pixels)?);
        for (ranked, (_, target)) in exact_top_k(&feats, &classifier, k).iter().zip(chunk) {
            top1 += usize::from(ranked.first() == Some(target));
            top5 += usize::from(ranked.contains(target));
        }
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    let n = folder.samples.len();
    Ok(ZeroShotReport {
        top1: 100.0 * top1 as f64 / n as f64,
        top5: 100.0 * top5 as f64 / n as f64,
        n,
        classes: labels.len(),
        templates: templates.len(),
    })
}
