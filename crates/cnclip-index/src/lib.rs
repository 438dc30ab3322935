//! The cnclip indexer: folder → walk → decode → embed → sled → HNSW graph, incremental and
//! crash-safe.
//!
//! ```text
//! DIR → walk (walkdir, links followed, loops skipped) → [decoder threads: read, SHA-256, prepare]
//!     → bounded channel → [committer: embed batch, L2-normalize, sled batch + flush, reader log]
//!     → remove what is gone → graph snapshot (hnsw_rs)
//! ```
//!
//! - [`Index`] is an index directory opened for writing; [`Indexer::build`] brings it up to date
//!   with a folder; [`Index::forget`] removes a folder that no build can reach any more;
//!   [`Index::status`] and [`Index::verify`] inspect it.
//! - [`ImageEmbedder`] is the seam to the model: the engine needs nothing else from it.
//!   [`FakeEmbedder`] is a deterministic stand-in for tests. A file it cannot prepare is reported
//!   and skipped, never fatal, also when its decoder panics on it.
//! - [`Reporter`] receives progress; binaries implement it (progress bar, JSON).
//! - [`view`] and [`graph`] are what a reader (`cnclip-search`) needs: it opens the index without
//!   taking sled's lock.
//!
//! # On disk
//!
//! ```text
//! INDEX/db/            sled: records, vectors, change sequence, meta — the single source of truth
//! INDEX/reader.log     append-only copy of every committed batch, for readers in other processes
//! INDEX/graph/CURRENT  pointer (JSON, replaced atomically) to the current graph snapshot
//! INDEX/graph/g-…/     hnsw_rs dump of the graph (derived; rebuilt from sled when missing/damaged)
//! ```
//!
//! **Durability.** A batch is reported done ([`Reporter::committed`]) only after sled's `flush`
//! returned and the batch was appended to the reader log: a kill -9 at any point loses no reported
//! batch, the index always opens afterwards, and building again finishes the job (records are keyed
//! by path and vectors by content, so nothing is duplicated). One sled defect needs mending for
//! "always opens": a kill while sled writes its recovery snapshot leaves an unfinished
//! `snap.*.generating` file that sled then refuses to open past; opening removes it first, under
//! sled's lock (`store`, `remove_unfinished_snapshots`).
//!
//! **Concurrency.** sled admits one process per database, and a build holds it for hours. Readers
//! therefore never open sled: they replay `reader.log`, a log of checksummed frames, one per
//! committed batch, which the writer appends after each durable commit (see [`view`]). A reader
//! sees every committed batch and never a partial one, with no lock and no coordination; a reader
//! in the writer's own process uses the same path. The price is a second copy of the vectors on
//! disk; the alternatives were worse: a lock-sharing protocol around sled would make every search
//! wait for a build's batch, and periodic full snapshots would show stale results for as long as a
//! snapshot takes to write.
//!
//! **Graph.** Below [`graph::GRAPH_MIN_VECTORS`] (50 000) vectors there is no graph: an exact scan
//! is faster there (measured; see that constant). Above, the writer keeps a snapshot of the HNSW
//! graph and a change sequence of vector additions and removals since it; readers search the
//! snapshot (removed vectors dropped from its answers) and scan the vectors added since exactly,
//! then merge. The snapshot is rewritten once enough vectors wait (1 000, or 5% of the graph), and
//! rebuilt when removed points pass [`graph::MAX_TOMBSTONE_FRACTION`]. hnsw_rs's own filtered
//! search is not used: given a filter it stops terminating early and explores most of the graph.
//!
//! Unix only: file names are stored as their exact `OsStr` bytes.
//!
//! # Example
//!
//! ```
//! use cnclip_index::{FakeEmbedder, Index, Indexer, Silent};
//!
//! let photos = tempfile::tempdir()?;
//! image::RgbImage::from_pixel(8, 8, image::Rgb([200, 30, 30])).save(photos.path().join("red.png"))?;
//! let idx = tempfile::tempdir()?;
//! let embedder = FakeEmbedder::new(16);
//! let mut index = Index::open_or_create(&idx.path().join("index"), &embedder.identity())?;
//! let summary = Indexer::new(&mut index).build(photos.path(), &embedder, &Silent)?;
//! assert_eq!((summary.indexed, summary.total), (1, 1));
//! assert!(index.verify()?.is_ok());
//! # use cnclip_index::ImageEmbedder;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

#[cfg(not(unix))]
compile_error!("cnclip-index stores file names as their OsStr bytes and supports Unix only");

mod build;
pub mod decode;
mod embed;
mod error;
mod fake;
mod fsutil;
pub mod graph;
mod identity;
mod index;
mod report;
mod store;
mod verify;
pub mod view;
mod walk;

use std::ffi::OsString;
use std::path::PathBuf;

pub use build::{BuildOptions, Indexer};
pub use embed::{dot, normalize, ImageEmbedder};
pub use error::{EmbedError, Error, Result};
pub use fake::{FakeEmbedder, PixelDigest};
pub use identity::{ModelIdentity, FORMAT_VERSION, OLDEST_SUPPORTED_FORMAT};
pub use index::{GraphPolicy, GraphStatus, Index, Status};
pub use report::{BuildSummary, Committed, Phase, Reporter, Silent, Skipped};
pub use store::Record;
pub use verify::VerifyReport;
pub use walk::is_under;

/// Where the index lives when no `--index` is given: `$CNCLIP_INDEX`, else
/// `$XDG_DATA_HOME/cnclip/index`, else `~/.local/share/cnclip/index`. `None` when none of these
/// variables is set.
pub fn default_index_path() -> Option<PathBuf> {
    default_index_path_from(&|name| std::env::var_os(name))
}

/// [`default_index_path`] with the environment given as a function (for tests).
pub fn default_index_path_from(env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let var = |name| env(name).filter(|v| !v.is_empty());
    if let Some(p) = var("CNCLIP_INDEX") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = var("XDG_DATA_HOME") {
        return Some(PathBuf::from(p).join("cnclip").join("index"));
    }
    var("HOME").map(|h| PathBuf::from(h).join(".local/share/cnclip/index"))
}

#[doc(hidden)]
/// Test support: rewrites the stored format version of a closed index.
pub fn __set_format_version(dir: &std::path::Path, version: u32) -> Result<()> {
    store::set_format_version(dir, version)
}
