//! What can go wrong between a model name and a checkpoint file.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::Hub;

/// Resolving a `--model` argument to a file failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The argument is neither an existing path nor a zoo name.
    #[error(
        "model \"{name}\" is neither an existing file nor a known model name (known: {known})"
    )]
    UnknownModel {
        /// The argument as given.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },
    /// A local model path does not exist.
    #[error("model file {path} does not exist")]
    MissingFile {
        /// The path as given.
        path: PathBuf,
    },
    /// An environment variable or option has a value this module cannot use.
    #[error("{name}=\"{value}\" is not valid: expected {expected}")]
    InvalidSetting {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// No cache directory can be derived from the environment.
    #[error("no cache directory for models: set CNCLIP_CACHE, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
    /// Something that is not a regular file sits where a checkpoint is expected.
    #[error("cached model {path} is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// A checkpoint in the cache has the wrong size.
    #[error(
        "cached model {path} is {actual} bytes but {expected} bytes are expected: delete it to download it again"
    )]
    DamagedCache {
        /// The cached file.
        path: PathBuf,
        /// The size it should have.
        expected: u64,
        /// The size it has.
        actual: u64,
    },
    /// A checkpoint's sha256 is not the expected one.
    #[error(
        "model file {path} has sha256 {actual} but {expected} is expected: delete it to download it again"
    )]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// The expected sha256.
        expected: String,
        /// The sha256 it has (or that its sidecar records).
        actual: String,
    },
    /// The model is not available locally (and nothing was asked to download it).
    #[error("model \"{model}\" is not in the cache (expected at {path})")]
    NotCached {
        /// The zoo name.
        model: &'static str,
        /// Where it would be.
        path: PathBuf,
    },
    /// The model is not available locally and downloads are disabled.
    #[error(
        "model \"{model}\" is not in the cache and downloads are disabled ({reason}): {}",
        manual_download(urls, path)
    )]
    Offline {
        /// The zoo name.
        model: &'static str,
        /// Why downloads are disabled (`CNCLIP_OFFLINE=1`, …).
        reason: String,
        /// Where the file can be downloaded from, preferred first.
        urls: Vec<String>,
        /// Where to put it.
        path: PathBuf,
    },
    /// Every hub that was tried failed.
    #[error(
        "model \"{model}\" could not be downloaded ({}): {}",
        failure_list(failures),
        manual_download(urls, path)
    )]
    DownloadFailed {
        /// The zoo name.
        model: &'static str,
        /// One failure per hub tried, in order.
        failures: Vec<HubFailure>,
        /// Where the file can be downloaded from, preferred first.
        urls: Vec<String>,
        /// Where to put it.
        path: PathBuf,
    },
    /// A file system operation failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done (`read`, `create directory`, …).
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

/// `download URL (or URL) and put it at PATH`.
fn manual_download(urls: &[String], path: &std::path::Path) -> String {
    let mut text = String::from("download ");
    match urls.split_first() {
        Some((first, rest)) => {
            text.push_str(first);
            for url in rest {
                text.push_str(" (or ");
                text.push_str(url);
                text.push(')');
            }
        }
        None => text.push_str("the checkpoint"),
    }
    text.push_str(" and put it at ");
    text.push_str(&path.display().to_string());
    text
}

fn failure_list(failures: &[HubFailure]) -> String {
    failures
        .iter()
        .map(HubFailure::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One hub's failure inside [`ResolveError::DownloadFailed`].
#[derive(Debug)]
pub struct HubFailure {
    /// The hub.
    pub hub: Hub,
    /// What went wrong there.
    pub error: DownloadError,
}

impl fmt::Display for HubFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.hub, self.error)
    }
}

/// One download attempt failed. Messages are complete on their own (they are listed inside
/// [`ResolveError::DownloadFailed`]), so they include their cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// The server has no such file (HTTP 404).
    #[error("{url} was not found (HTTP 404)")]
    NotFound {
        /// The URL requested.
        url: String,
    },
    /// The server answered with another unusable status.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The server could not be reached, or a redirect could not be followed.
    #[error("{url} could not be fetched: {message}")]
    Network {
        /// The URL requested.
        url: String,
        /// The cause.
        message: String,
    },
    /// The transfer stopped before the whole file arrived; the bytes so far are kept in `part`
    /// (never under the final name), which the next attempt continues when it can check the
    /// result against a known sha256.
    #[error("{url}: transfer interrupted after {received} of {} bytes ({message}); {part} keeps what arrived for the next attempt", expected.map_or_else(|| "?".to_string(), |n| n.to_string()))]
    Interrupted {
        /// The URL requested.
        url: String,
        /// Bytes of the file received so far (resumed bytes included).
        received: u64,
        /// The file's size, when known.
        expected: Option<u64>,
        /// The partial file.
        part: PathBuf,
        /// The cause.
        message: String,
    },
    /// The file's size is not the expected one (announced by the server, or as received); nothing
    /// was kept.
    #[error("{url}: size mismatch: expected {expected} bytes, {actual} bytes {source_of_actual}; nothing was kept")]
    SizeMismatch {
        /// The URL requested.
        url: String,
        /// The expected size.
        expected: u64,
        /// The other size.
        actual: u64,
        /// Where the other size comes from (`announced by the server`, `received`).
        source_of_actual: &'static str,
    },
    /// The file's sha256 is not the expected one (announced by the server, or as received);
    /// nothing was kept.
    #[error("{url}: sha256 mismatch: expected {expected}, {actual} {source_of_actual}; nothing was kept")]
    ChecksumMismatch {
        /// The URL requested.
        url: String,
        /// The expected sha256.
        expected: String,
        /// The other sha256.
        actual: String,
        /// Where the other hash comes from (`announced by the server`, `received`).
        source_of_actual: &'static str,
    },
    /// A file system operation failed.
    #[error("cannot {action} {path}: {cause}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed (part of the message, not a `source()`, see the type's docs).
        cause: io::Error,
    },
}
