//! The one error type of the index crate. Messages are lowercase, name the path first and, where the
//! user can do something about it, say what.

use std::io;
use std::path::PathBuf;

use crate::identity::ModelIdentity;

/// What an embedder returns when a batch cannot be embedded (out of memory, a broken model, …).
/// Building stops: everything committed before stays committed.
pub type EmbedError = Box<dyn std::error::Error + Send + Sync>;

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong opening, building, verifying or reading an index.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory of the index (or the folder being indexed) could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// sled reported an error.
    #[error("index {path}: database error: {source}")]
    Db {
        /// The index directory.
        path: PathBuf,
        /// The underlying error.
        source: sled::Error,
    },
    /// There is no index at this path.
    #[error(
        "{path} is not a cnclip index; build one with `cnclip-index build DIR --index {path}`"
    )]
    NotAnIndex {
        /// The path that was opened.
        path: PathBuf,
    },
    /// Creating an index where something else already is.
    #[error(
        "{path} already exists and is neither empty nor a cnclip index; choose another --index"
    )]
    NotEmpty {
        /// The path that was given.
        path: PathBuf,
    },
    /// Another process (a running build) holds the database.
    #[error(
        "index {path} is in use by another process (a build is running?); wait for it to finish \
         (searching works meanwhile)"
    )]
    Locked {
        /// The index directory.
        path: PathBuf,
    },
    /// The index was made with another model, dimension or preprocessing than the one asked for.
    #[error(
        "index {path} was built with {found}; this run uses {wanted}: run with --model {} or choose \
         another --index",
        found.model
    )]
    IdentityMismatch {
        /// The index directory.
        path: PathBuf,
        /// What the index was built with.
        found: Box<ModelIdentity>,
        /// What this run uses.
        wanted: Box<ModelIdentity>,
    },
    /// The on-disk format is newer or older than this program can read.
    #[error(
        "index {path} has format version {found}; this cnclip reads versions {oldest} to {current}: \
         {hint}"
    )]
    UnsupportedFormat {
        /// The file or directory carrying the version.
        path: PathBuf,
        /// The version found on disk.
        found: u32,
        /// The oldest version this program reads.
        oldest: u32,
        /// The version this program writes.
        current: u32,
        /// What to do about it.
        hint: &'static str,
    },
    /// Stored data does not parse or contradicts itself.
    #[error("index {path} is damaged: {what}")]
    Corrupt {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The embedder failed on a batch.
    #[error("embedding failed: {0}")]
    Embed(EmbedError),
    /// The embedder returned a vector of the wrong length, or the wrong number of vectors.
    #[error("the embedder returned {got} values where {expected} were expected")]
    WrongDimension {
        /// What the index holds.
        expected: usize,
        /// What was given.
        got: usize,
    },
    /// A text query with nothing in it but white space.
    #[error("the query is empty")]
    EmptyQuery,
    /// A search by an indexed image named one the index does not hold.
    #[error(
        "{path} is not in the index (photos are indexed under their absolute, canonical paths)"
    )]
    NotIndexed {
        /// The path asked for.
        path: PathBuf,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.into(),
            what: what.into(),
        }
    }
}
