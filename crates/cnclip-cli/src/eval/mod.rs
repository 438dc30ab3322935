//! `cnclip eval`: the official benchmarks — retrieval recall on the MUGE / Flickr30K-CN /
//! COCO-CN layout and zero-shot classification on an ImageFolder.
//!
//! The protocol follows cn_clip 1.6.0's `cn_clip/eval/` scripts (`extract_features.py`,
//! `make_topk_predictions.py`, `make_topk_predictions_tr.py`, `evaluation.py`,
//! `evaluation_tr.py`, `zeroshot_evaluation.py`):
//!
//! * texts are lower-cased and curly double quotes made straight before tokenizing
//!   ([`preprocess_text`], cn_clip's `_preprocess_text`), context length 52;
//! * image and text features are L2-normalised; the score is their dot product;
//! * each query keeps its 10 best candidates, ties kept in file order (Python's stable `sorted`);
//! * a query hits at k when any ground-truth id is among its first k predictions; image→text
//!   queries are the images that at least one text lists, and their ground truth is every text
//!   listing them (`transform_ir_annotation_to_tr.py`);
//! * zero-shot: each template's text embedding is normalised, averaged over templates and
//!   renormalised (`zero_shot_classifier`).
//!
//! Images are decoded and embedded in batches; only the normalised vectors are kept.

pub mod data;
pub mod retrieval;
pub mod templates;
pub mod zeroshot;

use cnclip_index::graph::TopK;

pub use retrieval::{Backend, Recall, RetrievalOptions, RetrievalReport};
pub use zeroshot::{ZeroShotOptions, ZeroShotReport};

/// cn_clip's `_preprocess_text`: lower-case, and `“` `”` become `"`, to suit the Chinese BERT
/// vocabulary.
pub fn preprocess_text(text: &str) -> String {
    text.to_lowercase().replace(['“', '”'], "\"")
}

/// Progress of a long evaluation step. The library reports; a binary decides how to show it.
pub trait Progress: Sync {
    /// A step begins; `total` is in the step's unit (bytes of a file, items), if known.
    fn start(&self, step: &str, total: Option<u64>);
    /// `n` more units done.
    fn advance(&self, n: u64);
    /// The step is over.
    fn finish(&self);
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// Row-major normalised vectors.
#[derive(Clone, Debug, Default)]
pub struct Vectors {
    dim: usize,
    data: Vec<f32>,
}

impl Vectors {
    /// Empty.
    pub fn new() -> Vectors {
        Vectors::default()
    }

    /// Appends rows; the first row fixes the dimension.
    pub fn extend(&mut self, rows: Vec<Vec<f32>>) {
        for r in rows {
            if self.data.is_empty() {
                self.dim = r.len();
            }
            debug_assert_eq!(r.len(), self.dim);
            self.data.extend_from_slice(&r);
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Iterates the rows.
    pub fn rows(&self) -> impl Iterator<Item = &[f32]> {
        self.data.chunks_exact(self.dim.max(1))
    }
}

/// For each query row, the positions of its `k` best candidate rows by dot product, best first;
/// equal scores keep the earlier candidate first (Python's stable `sorted(..., reverse=True)`,
/// as `make_topk_predictions.py` uses). Queries are split over the available cores.
pub fn exact_top_k(queries: &Vectors, candidates: &Vectors, k: usize) -> Vec<Vec<usize>> {
    let n = queries.len();
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(n.max(1));
    let chunk = n.div_ceil(threads).max(1);
    let mut out = vec![Vec::new(); n];
    std::thread::scope(|s| {
        for (c, slot) in out.chunks_mut(chunk).enumerate() {
            s.spawn(move || {
                for (j, res) in slot.iter_mut().enumerate() {
                    let q = queries.row(c * chunk + j);
                    let mut top = TopK::new(k);
                    for (pos, v) in candidates.rows().enumerate() {
                        top.push(pos as u64, cnclip_index::dot(q, v));
                    }
                    *res = top
                        .into_sorted()
                        .into_iter()
                        .map(|(p, _)| p as usize)
                        .collect();
                }
            });
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocess_text_is_cn_clip_s() {
        assert_eq!(preprocess_text("A “Red” Car"), "a \"red\" car");
        assert_eq!(preprocess_text("一只猫"), "一只猫");
    }

    #[test]
    fn exact_top_k_breaks_ties_by_file_order() {
        let mut q = Vectors::new();
        q.extend(vec![vec![1.0, 0.0]]);
        let mut c = Vectors::new();
        c.extend(vec![
            vec![0.0, 1.0],
            vec![1.0, 0.0],
            vec![0.6, 0.8],
            vec![1.0, 0.0],
        ]);
        assert_eq!(exact_top_k(&q, &c, 3), vec![vec![1, 3, 2]]);
    }
}
