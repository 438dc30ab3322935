//! Text↔image retrieval recall on the official layout (`${split}_imgs.tsv`,
//! `${split}_texts.jsonl`), exact or through an HNSW graph.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use cnclip_index::graph::{Graph, GraphParams};
use cnclip_model::model::ChineseClip;
use cnclip_model::preprocess::{preprocess_bytes, PreprocessOptions};
use serde_json::json;

use super::data::{read_texts, ImageLines, TextRecord};
use super::{exact_top_k, preprocess_text, Progress, Vectors};

/// Predictions kept per query: the official scorer reads exactly 10.
pub const TOP_K: usize = 10;

/// How queries find their candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Score every candidate (the official protocol).
    Exact,
    /// Search an HNSW graph over the candidates (the engine's index), and report exact search
    /// beside it.
    Hnsw,
}

/// What to evaluate.
#[derive(Clone, Debug)]
pub struct RetrievalOptions {
    /// Directory holding `${split}_imgs.tsv` and `${split}_texts.jsonl`.
    pub data: PathBuf,
    /// Split name: `valid`, `test`, …
    pub split: String,
    /// Images decoded and embedded at a time (and texts embedded at a time).
    pub batch_size: usize,
    /// Exact or HNSW search.
    pub backend: Backend,
    /// HNSW parameters (used with [`Backend::Hnsw`]).
    pub graph: GraphParams,
    /// Image loading and preprocessing (its `size` is replaced by the model's).
    pub preprocess: PreprocessOptions,
    /// Where to write text→image predictions (`{"text_id", "image_ids": [top-10]}` per line).
    pub predictions: Option<PathBuf>,
    /// Where to write image→text predictions (`{"image_id", "text_ids": [top-10]}` per line).
    pub predictions_tr: Option<PathBuf>,
}

impl RetrievalOptions {
    /// `${split}_imgs.tsv`.
    pub fn images_path(&self) -> PathBuf {
        self.data.join(format!("{}_imgs.tsv", self.split))
    }

    /// `${split}_texts.jsonl`.
    pub fn texts_path(&self) -> PathBuf {
        self.data.join(format!("{}_texts.jsonl", self.split))
    }

    /// Checks that both split files exist, before any model is loaded.
    pub fn check(&self) -> Result<()> {
        for p in [self.images_path(), self.texts_path()] {
            if !p.is_file() {
                bail!(
                    "{}: no such file (expected the official layout)",
                    p.display()
                );
            }
        }
        Ok(())
    }
}

/// R@1/5/10 of one direction, in percent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recall {
    /// Share of queries with a ground-truth item first.
    pub r1: f64,
    /// … among the first 5.
    pub r5: f64,
    /// … among the first 10.
    pub r10: f64,
    /// Number of queries.
    pub queries: usize,
}

impl Recall {
    /// Official recall of ranked predictions (candidate positions) against ground-truth
    /// positions: a query hits at k when any of its ground truth is among its first k.
    pub fn compute(predictions: &[Vec<usize>], truth: &[HashSet<usize>]) -> Recall {
        assert_eq!(predictions.len(), truth.len());
        let mut hits = [0usize; 3];
        for (pred, gt) in predictions.iter().zip(truth) {
            for (h, k) in hits.iter_mut().zip([1, 5, 10]) {
                if pred.iter().take(k).any(|p| gt.contains(p)) {
                    *h += 1;
                }
            }
        }
        let n = predictions.len();
        let pct = |h: usize| {
            if n == 0 {
                0.0
            } else {
                100.0 * h as f64 / n as f64
            }
        };
        Recall {
            r1: pct(hits[0]),
            r5: pct(hits[1]),
            r10: pct(hits[2]),
            queries: n,
        }
    }

    /// Mean of R@1, R@5 and R@10 (the MR cn_clip reports for a single direction, e.g. MUGE).
    pub fn mean(&self) -> f64 {
        (self.r1 + self.r5 + self.r10) / 3.0
    }

    fn to_json(self) -> serde_json::Value {
        json!({"R@1": self.r1, "R@5": self.r5, "R@10": self.r10, "MR": self.mean()})
    }
}

/// Recall in both directions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scores {
    /// Text→image.
    pub t2i: Recall,
    /// Image→text.
    pub i2t: Recall,
    /// Wall time of the searches, seconds (graph construction excluded).
    pub search_seconds: f64,
}

impl Scores {
    /// Mean of the six recalls (the MR of the Chinese-CLIP paper's two-way tables).
    pub fn mean_recall(&self) -> f64 {
        (self.t2i.mean() + self.i2t.mean()) / 2.0
    }

    fn to_json(self) -> serde_json::Value {
        json!({
            "t2i": self.t2i.to_json(),
            "i2t": self.i2t.to_json(),
            "MR": self.mean_recall(),
            "search_seconds": self.search_seconds,
        })
    }
}

/// The result of [`evaluate`].
#[derive(Clone, Debug)]
pub struct RetrievalReport {
    /// The backend the headline scores (and prediction files) come from.
    pub backend: Backend,
    /// Headline scores.
    pub scores: Scores,
    /// With [`Backend::Hnsw`], exact search on the same embeddings, for comparison.
    pub exact: Option<Scores>,
    /// Texts in the split.
    pub texts: usize,
    /// Images in the split.
    pub images: usize,
    /// Seconds spent embedding images and texts.
    pub embed_seconds: f64,
    /// Seconds spent building the HNSW graphs.
    pub graph_seconds: Option<f64>,
}

impl RetrievalReport {
    /// The one-line `--json` report: `{"t2i": {"R@1", "R@5", "R@10", "MR"}, "i2t": {…}, "MR": mean
    /// of the six, …}`, recalls in percent; with HNSW, `"exact"` holds the same for exact search.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = self.scores.to_json();
        let o = v.as_object_mut().expect("object");
        o.insert("backend".into(), json!(backend_name(self.backend)));
        o.insert("texts".into(), json!(self.texts));
        o.insert("images".into(), json!(self.images));
        o.insert("embed_seconds".into(), json!(self.embed_seconds));
        if let Some(e) = self.exact {
            o.insert("exact".into(), e.to_json());
            o.insert("graph_seconds".into(), json!(self.graph_seconds));
        }
        v
    }

    /// A human-readable table.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let row = |s: &mut String, name: &str, sc: &Scores| {
            s.push_str(&format!(
                "{name:<6} t2i R@1 {:6.2}  R@5 {:6.2}  R@10 {:6.2}  (mean {:6.2}, {} queries)\n",
                sc.t2i.r1,
                sc.t2i.r5,
                sc.t2i.r10,
                sc.t2i.mean(),
                sc.t2i.queries
            ));
            s.push_str(&format!(
                "{:<6} i2t R@1 {:6.2}  R@5 {:6.2}  R@10 {:6.2}  (mean {:6.2}, {} queries)\n",
                "",
                sc.i2t.r1,
                sc.i2t.r5,
                sc.i2t.r10,
                sc.i2t.mean(),
                sc.i2t.queries
            ));
            s.push_str(&format!(
                "{:<6} MR {:.2}  (search {:.2} s)\n",
                "",
                sc.mean_recall(),
                sc.search_seconds
            ));
        };
        s.push_str(&format!(
            "{} texts, {} images, embedded in {:.1} s\n",
            self.texts, self.images, self.embed_seconds
        ));
        row(&mut s, backend_name(self.backend), &self.scores);
        if let Some(e) = &self.exact {
            row(&mut s, "exact", e);
            s.push_str(&format!(
                "hnsw − exact: t2i R@1 {:+.2} R@5 {:+.2} R@10 {:+.2}; i2t R@1 {:+.2} R@5 {:+.2} R@10 {:+.2}; MR {:+.2} (graphs built in {:.2} s)\n",
                self.scores.t2i.r1 - e.t2i.r1,
                self.scores.t2i.r5 - e.t2i.r5,
                self.scores.t2i.r10 - e.t2i.r10,
                self.scores.i2t.r1 - e.i2t.r1,
                self.scores.i2t.r5 - e.i2t.r5,
                self.scores.i2t.r10 - e.i2t.r10,
                self.scores.mean_recall() - e.mean_recall(),
                self.graph_seconds.unwrap_or(0.0),
            ));
        }
        s
    }
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Exact => "exact",
        Backend::Hnsw => "hnsw",
    }
}

/// Embeds every image of `${split}_imgs.tsv` in batches: returns ids in file order and their
/// normalised vectors. A repeated id, a bad line or an image that cannot be decoded is an error
/// naming the line (skipping it would silently change the candidate set).
pub fn embed_image_file(
    model: &ChineseClip,
    path: &Path,
    batch_size: usize,
    opts: &PreprocessOptions,
    progress: &dyn Progress,
) -> Result<(Vec<i64>, Vectors)> {
    let total = std::fs::metadata(path).map(|m| m.len()).ok();
    progress.start("images", total);
    let mut ids = Vec::new();
    let mut seen = HashSet::new();
    let mut vectors = Vectors::new();
    let mut batch: Vec<Vec<f32>> = Vec::with_capacity(batch_size);
    let mut batch_bytes = 0;
    let flush = |batch: &mut Vec<Vec<f32>>, vectors: &mut Vectors| -> Result<()> {
        if !batch.is_empty() {
            vectors.extend(
                model
                    .encode_image_data_normalized(batch)
                    .with_context(|| format!("{}: cannot embed images", path.display()))?,
            );
            batch.clear();
        }
        Ok(())
    };
    for item in ImageLines::open(path)? {
        let item = item?;
        if !seen.insert(item.image_id) {
            bail!(
                "{}:{}: image_id {} appears twice",
                path.display(),
                item.line,
                item.image_id
            );
        }
        let name = format!(
            "{}:{} (image_id {})",
            path.display(),
            item.line,
            item.image_id
        );
        // The error names `name` (file, line and id) first.
        let pixels = preprocess_bytes(&item.bytes, &name, opts)?;
        ids.push(item.image_id);
        batch.push(pixels);
        batch_bytes += item.raw_len;
        if batch.len() >= batch_size {
            flush(&mut batch, &mut vectors)?;
            progress.advance(std::mem::take(&mut batch_bytes));
        }
    }
    flush(&mut batch, &mut vectors)?;
    progress.advance(batch_bytes);
    progress.finish();
    Ok((ids, vectors))
}

/// Embeds texts (after [`preprocess_text`]) in batches, normalised.
pub fn embed_texts(
    model: &ChineseClip,
    texts: &[&str],
    batch_size: usize,
    progress: &dyn Progress,
) -> Result<Vectors> {
    progress.start("texts", Some(texts.len() as u64));
    let mut out = Vectors::new();
    for chunk in texts.chunks(batch_size.max(1)) {
        let pre: Vec<String> = chunk.iter().map(|t| preprocess_text(t)).collect();
        let refs: Vec<&str> = pre.iter().map(String::as_str).collect();
        out.extend(model.encode_texts_normalized(&refs)?);
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    Ok(out)
}

/// Ground truth as positions: for each text, its images; and the image→text queries (images some
/// text lists, in file order) with their texts.
struct Truth {
    t2i: Vec<HashSet<usize>>,
    i2t_queries: Vec<usize>,
    i2t: Vec<HashSet<usize>>,
}

fn ground_truth(texts: &[TextRecord], image_ids: &[i64], texts_path: &Path) -> Result<Truth> {
    let pos: HashMap<i64, usize> = image_ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect();
    let mut t2i = Vec::with_capacity(texts.len());
    let mut per_image: HashMap<usize, HashSet<usize>> = HashMap::new();
    for (t, rec) in texts.iter().enumerate() {
        let mut gt = HashSet::new();
        for id in &rec.image_ids {
            // cn_clip's i2t scorer fails on such an image (it has no prediction); refuse up
            // front rather than score a query that can never hit.
            let Some(&p) = pos.get(id) else {
                bail!(
                    "{}: text_id {} lists image_id {id}, which is not in the images file",
                    texts_path.display(),
                    rec.text_id
                );
            };
            gt.insert(p);
            per_image.entry(p).or_default().insert(t);
        }
        t2i.push(gt);
    }
    let mut i2t_queries: Vec<usize> = per_image.keys().copied().collect();
    i2t_queries.sort_unstable();
    let i2t = i2t_queries
        .iter()
        .map(|p| per_image.remove(p).expect("key"))
        .collect();
    Ok(Truth {
        t2i,
        i2t_queries,
        i2t,
    })
}

fn graph_top_k(graph: &Graph, queries: &Vectors, which: &[usize], k: usize) -> Vec<Vec<usize>> {
    which
        .iter()
        .map(|&q| {
            graph
                .search(queries.row(q), k, &|_| true)
                .into_iter()
                .map(|(p, _)| p as usize)
                .collect()
        })
        .collect()
}

fn build_graph(vectors: &Vectors, params: GraphParams) -> Graph {
    let mut g = Graph::new(params, vectors.len());
    let items: Vec<(u64, &[f32])> = vectors
        .rows()
        .enumerate()
        .map(|(i, v)| (i as u64, v))
        .collect();
    g.insert(&items);
    g
}

/// Runs the whole retrieval evaluation.
pub fn evaluate(
    model: &ChineseClip,
    opts: &RetrievalOptions,
    progress: &dyn Progress,
) -> Result<RetrievalReport> {
    let imgs_path = opts.images_path();
    let texts_path = opts.texts_path();
    let texts = read_texts(&texts_path)?;
    if texts.is_empty() {
        bail!("{}: no texts", texts_path.display());
    }
    let pre = PreprocessOptions {
        size: model.image_size(),
        ..opts.preprocess.clone()
    };
    let started = Instant::now();
    let (image_ids, image_vecs) =
        embed_image_file(model, &imgs_path, opts.batch_size.max(1), &pre, progress)?;
    if image_ids.is_empty() {
        bail!("{}: no images", imgs_path.display());
    }
    let truth = ground_truth(&texts, &image_ids, &texts_path)?;
    let strs: Vec<&str> = texts.iter().map(|t| t.text.as_str()).collect();
    let text_vecs = embed_texts(model, &strs, opts.batch_size, progress)?;
    let embed_seconds = started.elapsed().as_secs_f64();

    let all_texts: Vec<usize> = (0..texts.len()).collect();
    let exact = || -> (Vec<Vec<usize>>, Vec<Vec<usize>>, f64) {
        let t = Instant::now();
        let t2i = exact_top_k(&text_vecs, &image_vecs, TOP_K);
        let mut q = Vectors::new();
        q.extend(
            truth
                .i2t_queries
                .iter()
                .map(|&p| image_vecs.row(p).to_vec())
                .collect(),
        );
        let i2t = exact_top_k(&q, &text_vecs, TOP_K);
        (t2i, i2t, t.elapsed().as_secs_f64())
    };
    let score = |t2i: &[Vec<usize>], i2t: &[Vec<usize>], secs: f64| Scores {
        t2i: Recall::compute(t2i, &truth.t2i),
        i2t: Recall::compute(i2t, &truth.i2t),
        search_seconds: secs,
    };

    let (t2i, i2t, scores, exact_scores, graph_seconds) = match opts.backend {
        Backend::Exact => {
            let (t2i, i2t, secs) = exact();
            let s = score(&t2i, &i2t, secs);
            (t2i, i2t, s, None, None)
        }
        Backend::Hnsw => {
            let t = Instant::now();
            let image_graph = build_graph(&image_vecs, opts.graph);
            let text_graph = build_graph(&text_vecs, opts.graph);
            let graph_seconds = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let t2i = graph_top_k(&image_graph, &text_vecs, &all_texts, TOP_K);
            let i2t = graph_top_k(&text_graph, &image_vecs, &truth.i2t_queries, TOP_K);
            let s = score(&t2i, &i2t, t.elapsed().as_secs_f64());
            let (et2i, ei2t, esecs) = exact();
            let e = score(&et2i, &ei2t, esecs);
            (t2i, i2t, s, Some(e), Some(graph_seconds))
        }
    };

    if let Some(path) = &opts.predictions {
        write_predictions(path, |out| {
            for (rec, pred) in texts.iter().zip(&t2i) {
                let ids: Vec<i64> = pred.iter().map(|&p| image_ids[p]).collect();
                writeln!(out, "{}", json!({"text_id": rec.text_id, "image_ids": ids}))?;
            }
            Ok(())
        })?;
    }
    if let Some(path) = &opts.predictions_tr {
        write_predictions(path, |out| {
            for (&q, pred) in truth.i2t_queries.iter().zip(&i2t) {
                let ids: Vec<i64> = pred.iter().map(|&p| texts[p].text_id).collect();
                writeln!(
                    out,
                    "{}",
                    json!({"image_id": image_ids[q], "text_ids": ids})
                )?;
            }
            Ok(())
        })?;
    }

    Ok(RetrievalReport {
        backend: opts.backend,
        scores,
        exact: exact_scores,
        texts: texts.len(),
        images: image_ids.len(),
        embed_seconds,
        graph_seconds,
    })
}

fn write_predictions(
    path: &Path,
    body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    body(&mut out)
        .and_then(|()| out.flush())
        .with_context(|| format!("{}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_counts_any_ground_truth_in_top_k() {
        let preds = vec![
            vec![3, 1, 2, 4, 5, 6, 7, 8, 9, 10],
            vec![0, 1, 2, 4, 5, 6, 7, 8, 9, 3],
            vec![0, 1, 2, 4, 5, 6, 7, 8, 9, 10],
        ];
        let truth = vec![
            HashSet::from([3]),
            HashSet::from([3, 11]),
            HashSet::from([11]),
        ];
        let r = Recall::compute(&preds, &truth);
        assert_eq!(r.queries, 3);
        assert!((r.r1 - 100.0 / 3.0).abs() < 1e-9);
        assert!((r.r5 - 100.0 / 3.0).abs() < 1e-9);
        assert!((r.r10 - 200.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn image_to_text_truth_is_every_text_listing_the_image() {
        let texts = vec![
            TextRecord {
                text_id: 10,
                text: "a".into(),
                image_ids: vec![7, 5],
            },
            TextRecord {
                text_id: 11,
                text: "b".into(),
                image_ids: vec![7],
            },
        ];
        // Image 6 (position 1) is listed by no text: it is not an image→text query.
        let t = ground_truth(&texts, &[5, 6, 7], Path::new("t.jsonl")).unwrap();
        assert_eq!(t.t2i, vec![HashSet::from([2, 0]), HashSet::from([2])]);
        assert_eq!(t.i2t_queries, vec![0, 2]);
        assert_eq!(t.i2t, vec![HashSet::from([0]), HashSet::from([0, 1])]);
        let err = ground_truth(&texts, &[5, 6], Path::new("t.jsonl"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("image_id 7"), "{err}");
    }
}
