//! Walking a folder: which files to consider, which to report as unusable.
//!
//! Symbolic links are followed (photo libraries link folders in); walkdir detects a link back to an
//! ancestor and reports it as an error, which becomes a skip — a loop never hangs the walk. A file
//! reached twice through two links is indexed under both paths, with one vector. Directories are
//! never images whatever their name (`x.jpg/` is walked into). Only regular files are read (a FIFO
//! named `x.jpg` would block forever).

use std::collections::HashSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::decode::{file_kind, FileKind};
use crate::report::Skipped;

/// A file that may be an image, with what `stat` says about it.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
}

#[derive(Debug, Default)]
pub(crate) struct Walk {
    pub candidates: Vec<Candidate>,
    pub skipped: Vec<Skipped>,
    /// Files that are not images (by extension), not reported one by one.
    pub ignored: usize,
    /// Directories that could not be read: records under them are kept, not removed.
    pub unreadable: Vec<PathBuf>,
}

/// Walks `root` (absolute), sorted by name, not descending into `exclude` (the index itself, when
/// it lives inside the folder).
pub(crate) fn walk(root: &Path, exclude: Option<&Path>, stop: &dyn Fn() -> bool) -> Walk {
    let mut w = Walk::default();
    let mut seen = HashSet::new();
    for entry in walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| Some(e.path()) != exclude)
    {
        if stop() {
            break;
        }
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let path = e
                    .path()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| root.into());
                if let Some(anc) = e.loop_ancestor() {
                    w.skipped.push(Skipped {
                        path,
                        reason: format!("symlink loop back to {}", anc.display()),
                    });
                    continue;
                }
                let is_dir = fs::symlink_metadata(&path)
                    .map(|m| m.is_dir())
                    .unwrap_or(false);
                let reason = e
                    .io_error()
                    .map(|io| io.to_string().to_lowercase())
                    .unwrap_or_else(|| e.to_string());
                if is_dir {
                    w.unreadable.push(path.clone());
                    w.skipped.push(Skipped {
                        path,
                        reason: format!("cannot read directory: {reason}"),
                    });
                } else if path.file_name().map(file_kind) == Some(FileKind::Image) {
                    let reason = if fs::symlink_metadata(&path)
                        .map(|m| m.file_type().is_symlink())
                        .unwrap_or(false)
                    {
                        format!("broken symlink: {reason}")
                    } else {
                        reason
                    };
                    w.skipped.push(Skipped { path, reason });
                } else {
                    w.ignored += 1;
                }
                continue;
            }
        };
        if entry.file_type().is_dir() {
            continue;
        }
        let path = entry.into_path();
        match path.file_name().map(file_kind).unwrap_or(FileKind::Other) {
            FileKind::Other => {
                w.ignored += 1;
                continue;
            }
            FileKind::UnsupportedImage => {
                let ext = path
                    .extension()
                    .map(|e| e.to_string_lossy().to_lowercase())
                    .unwrap_or_default();
                w.skipped.push(Skipped {
                    path,
                    reason: format!("unsupported image format (.{ext})"),
                });
                continue;
            }
            FileKind::Image => {}
        }
        // Following links, the walk can reach one path twice only through a bug; be safe.
        if !seen.insert(path.as_os_str().as_bytes().to_vec()) {
            continue;
        }
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                w.skipped.push(Skipped {
                    path,
                    reason: e.to_string().to_lowercase(),
                });
                continue;
            }
        };
        if !meta.is_file() {
            w.skipped.push(Skipped {
                path,
                reason: "not a regular file".into(),
            });
            continue;
        }
        let mtime_ns = meta
            .modified()
            .ok()
            .map(|t| match t.duration_since(UNIX_EPOCH) {
                Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
                Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
            })
            .unwrap_or(0);
        w.candidates.push(Candidate {
            path,
            size: meta.len(),
            mtime_ns,
        });
    }
    w
}

/// Whether `path` is `root` or inside it, comparing bytes component-wise (`/a` holds `/a/b`, not
/// `/ab`); both absolute, `root` without a trailing `/`.
pub fn is_under(path: &[u8], root: &[u8]) -> bool {
    if root.is_empty() || root == b"/" {
        return path.starts_with(b"/");
    }
    path.starts_with(root) && (path.len() == root.len() || path[root.len()] == b'/')
}
