//! `<file>.sha256`: what cnclip recorded about a checkpoint it downloaded.
//!
//! The format is `sha256sum -c` compatible (GNU coreutils skips `#` lines):
//! ```text
//! # size 308316425
//! # source https://huggingface.co/OFA-Sys/chinese-clip-rn50/resolve/main/clip_cn_rn50.pt
//! b196ee3ee528b70be1158ab1aafb1d2f1c801ad2d9ffb3bae31b0d305f82fc88  clip_cn_rn50.pt
//! ```
//! A cache hit checks the size (cheap); [`super::Resolver::verify`] checks the hash.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// What a sidecar records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sidecar {
    pub sha256: String,
    pub size: Option<u64>,
}

/// `dir/file.pt` → `dir/file.pt.sha256`.
pub(crate) fn path_of(model: &Path) -> PathBuf {
    let mut name = model.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    model.with_file_name(name)
}

/// Reads the sidecar of `model`; `Ok(None)` when there is none or it is not one of ours.
pub(crate) fn read(model: &Path) -> io::Result<Option<Sidecar>> {
    let text = match fs::read_to_string(path_of(model)) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut size = None;
    let mut sha256 = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# size ") {
            size = rest.trim().parse().ok();
        } else if !line.starts_with('#') {
            let hash = line.split_whitespace().next().unwrap_or("");
            if is_sha256(hash) {
                sha256 = Some(hash.to_ascii_lowercase());
            }
        }
    }
    Ok(sha256.map(|sha256| Sidecar { sha256, size }))
}

/// Writes the sidecar of `model` atomically (temporary file, fsync, rename).
pub(crate) fn write(model: &Path, sha256: &str, size: u64, source: &str) -> io::Result<()> {
    let path = path_of(model);
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let file_name = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let body = format!("# size {size}\n# source {source}\n{sha256}  {file_name}\n");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(body.as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, &path)
}

/// 64 hex digits.
pub(crate) fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}
