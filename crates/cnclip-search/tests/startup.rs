//! Start-up cost of a one-query process on a large index (issue #5: a first answer in under a
//! second at 100k images). Ignored in CI (building the index takes minutes); run it with
//!
//! ```text
//! CNCLIP_STARTUP_N=100000 cargo test --release -p cnclip-search --test startup -- --ignored --nocapture
//! ```
//!
//! It builds an index of N tiny PNGs with 512-d fake embeddings (no graph, as the one-shot
//! `cnclip-search` never loads one), then times `Searcher::open_exact` + one exact search.
//!
//! To time the real binary on it, give an index built by the real model whose identity (and
//! `model.json`) the big index should carry, and where to keep the big index:
//! `CNCLIP_STARTUP_LIKE=/tmp/idx-small CNCLIP_STARTUP_KEEP=/tmp/idx-100k`, then
//! `time cnclip-search --index /tmp/idx-100k 一只小猫`.

// The index crate's test helpers, one copy for both crates.
#[path = "../../cnclip-index/tests/common/mod.rs"]
mod common;

use std::time::Instant;

use std::path::{Path, PathBuf};

use cnclip_index::{
    EmbedError, FakeEmbedder, GraphPolicy, ImageEmbedder, Index, Indexer, ModelIdentity, Silent,
};
use cnclip_search::Searcher;
use common::{png, unit, Rng};

/// The fake embedder's vectors under another model's identity.
struct Disguised(FakeEmbedder, ModelIdentity);

impl ImageEmbedder for Disguised {
    type Prepared = <FakeEmbedder as ImageEmbedder>::Prepared;

    fn identity(&self) -> ModelIdentity {
        self.1.clone()
    }

    fn prepare(&self, path: &Path, bytes: &[u8]) -> Result<Self::Prepared, String> {
        self.0.prepare(path, bytes)
    }

    fn embed(&self, batch: &[Self::Prepared]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.0.embed(batch)
    }
}

#[test]
#[ignore = "builds a large index; run by hand"]
fn one_query_process_opens_a_large_index_quickly() {
    let n: u64 = std::env::var("CNCLIP_STARTUP_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let photos = tempfile::tempdir().unwrap();
    let t = Instant::now();
    for i in 0..n {
        png(photos.path(), &format!("d{}/p{i}.png", i % 100), i);
    }
    eprintln!("{n} files written in {:.1} s", t.elapsed().as_secs_f64());
    let like = std::env::var_os("CNCLIP_STARTUP_LIKE").map(PathBuf::from);
    let identity = match &like {
        Some(dir) => cnclip_index::view::ViewReader::open(dir)
            .unwrap()
            .header()
            .identity
            .clone(),
        None => FakeEmbedder::new(512).identity(),
    };
    let e = Disguised(FakeEmbedder::new(identity.dim), identity);
    let tmp = tempfile::tempdir().unwrap();
    let idx = std::env::var_os("CNCLIP_STARTUP_KEEP")
        .map_or_else(|| tmp.path().to_owned(), PathBuf::from);
    let _ = std::fs::remove_dir_all(&idx);
    let t = Instant::now();
    let mut index = Index::open_or_create(&idx, &e.identity()).unwrap();
    index.set_graph_policy(GraphPolicy {
        min_vectors: usize::MAX,
        ..GraphPolicy::default()
    });
    Indexer::new(&mut index)
        .build(photos.path(), &e, &Silent)
        .unwrap();
    drop(index);
    if let Some(dir) = &like {
        std::fs::copy(dir.join("model.json"), idx.join("model.json")).unwrap();
    }
    eprintln!("indexed in {:.1} s", t.elapsed().as_secs_f64());

    let query = unit(&mut Rng(9), 512);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let s = Searcher::open_exact(&idx).unwrap();
        let open = t.elapsed().as_secs_f64();
        let hits = s.search_vector(&query, 10).unwrap();
        let total = t.elapsed().as_secs_f64();
        assert_eq!(s.len() as u64, n);
        assert_eq!(hits.len(), 10);
        eprintln!(
            "open {:.0} ms, open + first search {:.0} ms",
            open * 1e3,
            total * 1e3
        );
        best = best.min(total);
    }
    eprintln!("best open + first search at {n}: {:.0} ms", best * 1e3);
}
