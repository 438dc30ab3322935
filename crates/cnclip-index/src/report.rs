//! Progress and results of a build: the [`Reporter`] trait (binaries implement it with a progress
//! bar or JSON) and [`BuildSummary`].

use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

/// A file that could not be used, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The file (or directory, or link). Serialized lossily when it is not UTF-8.
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    /// Why, lowercase, e.g. `"not a recognised image format"`.
    pub reason: String,
}

pub(crate) fn lossy_path<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// What a build did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BuildSummary {
    /// Images added or updated in this run (new paths, changed content, renamed files).
    pub indexed: usize,
    /// Images already indexed and unchanged.
    pub unchanged: usize,
    /// Images removed from the index (deleted, moved away, or no longer readable).
    pub removed: usize,
    /// Images in the index after the run.
    pub total: usize,
    /// Images the model embedded in this run (renames and duplicate content reuse vectors).
    pub embedded: usize,
    /// Files that could not be used.
    pub skipped: Vec<Skipped>,
    /// Files that are not images (by extension) and were left alone.
    pub ignored: usize,
    /// Whether the run was stopped before it finished (nothing was removed then).
    pub cancelled: bool,
}

/// The stages of a build, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Listing files.
    Walking,
    /// Decoding and embedding `todo` files (new or changed) — `unchanged` need nothing.
    Embedding {
        /// Files to read.
        todo: usize,
        /// Files already indexed and unchanged.
        unchanged: usize,
    },
    /// Removing records of files that are gone.
    Removing,
    /// Bringing the HNSW graph up to date with `pending` new vectors (`rebuild`: from scratch).
    Graph {
        /// Vectors to insert.
        pending: usize,
        /// Whether the graph is rebuilt from all vectors.
        rebuild: bool,
    },
}

/// One durable batch.
#[derive(Debug)]
pub struct Committed<'a> {
    /// Files whose records this batch wrote (added or updated).
    pub paths: &'a [PathBuf],
    /// Files handled so far in this run (committed or skipped), out of `todo`.
    pub done: usize,
    /// Files to handle in this run.
    pub todo: usize,
}

/// Receives progress. Every method has an empty default; implementations must be cheap (they run on
/// the committing thread).
pub trait Reporter: Sync {
    /// A new stage begins.
    fn phase(&self, _phase: Phase) {}
    /// A file was skipped.
    fn skipped(&self, _skipped: &Skipped) {}
    /// A batch is durable: a kill -9 from now on does not lose it.
    fn committed(&self, _batch: &Committed<'_>) {}
    /// Graph construction progress: `done` of `total` vectors inserted.
    fn graph_progress(&self, _done: usize, _total: usize) {}
}

/// A [`Reporter`] that reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Reporter for Silent {}
