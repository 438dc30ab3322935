//! One file over HTTP, safely: redirects followed by hand (Hugging Face states the file's size and
//! sha256 in `X-Linked-Size`/`X-Linked-Etag` on the redirect to its CDN, which an automatic
//! redirect would hide), the body streamed into `<file>.part` (resumed with `Range` when a
//! `.part` is there), checked, fsynced, and only then renamed to its final name.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::sidecar;
use super::{DownloadError, DownloadProgress};

const MAX_REDIRECTS: usize = 10;
const CHUNK: usize = 256 * 1024;
/// A file listing is small JSON; anything bigger is not one.
const MAX_LISTING_BYTES: u64 = 16 * 1024 * 1024;

/// An HTTP client configured for downloads.
#[derive(Debug)]
pub(crate) struct Http {
    agent: ureq::Agent,
}

/// What is known about the file before its bytes arrive.
#[derive(Debug, Default, Clone)]
pub(crate) struct Expected {
    /// From the zoo table.
    pub pinned_size: Option<u64>,
    /// From the zoo table.
    pub pinned_sha256: Option<String>,
    /// From the hub's file listing (ModelScope).
    pub listed_size: Option<u64>,
    /// From the hub's file listing (ModelScope).
    pub listed_sha256: Option<String>,
}

/// What ModelScope's file listing says about one file.
#[derive(Debug)]
pub(crate) enum Listing {
    /// The file is listed.
    Found {
        size: Option<u64>,
        sha256: Option<String>,
    },
    /// The repository exists but does not hold the file.
    NoSuchFile,
    /// The listing could not be read (odd status, not JSON): go on without it.
    Unavailable,
}

enum Attempt {
    Failed(DownloadError),
    /// The partial file could not be continued (server refused the range, or the resumed file is
    /// not the expected one): start again from zero.
    Restart,
}

impl From<DownloadError> for Attempt {
    fn from(e: DownloadError) -> Self {
        Attempt::Failed(e)
    }
}

struct Opened {
    response: ureq::http::Response<ureq::Body>,
    status: u16,
    linked_size: Option<u64>,
    linked_sha256: Option<String>,
}

impl Http {
    /// `connect`: TCP+TLS connect timeout; `read`: the longest wait for response headers or for
    /// any single read of the body (a stalled transfer fails instead of hanging).
    pub(crate) fn new(connect: Duration, read: Duration) -> Http {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(connect))
            .timeout_recv_response(Some(read))
            .timeout_per_read(Some(read))
            .user_agent(concat!("cnclip/", env!("CARGO_PKG_VERSION")))
            .build();
        Http {
            agent: config.into(),
        }
    }

    /// Downloads `url` to `dest` (via `dest.part`), checks it against `expected` and what the
    /// server states, writes the sidecar and renames it into place.
    pub(crate) fn download(
        &self,
        url: &str,
        dest: &Path,
        expected: &Expected,
        progress: &dyn DownloadProgress,
    ) -> Result<(), DownloadError> {
        let part = part_path(dest);
        let result = match self.attempt(url, dest, &part, expected, progress, true) {
            Err(Attempt::Restart) => {
                remove_quietly(&part);
                self.attempt(url, dest, &part, expected, progress, false)
            }
            other => other,
        };
        match result {
            Ok(done) => Ok(done),
            Err(Attempt::Failed(e)) => Err(e),
            // A fresh attempt sends no Range and so never asks for a restart.
            Err(Attempt::Restart) => Err(DownloadError::Network {
                url: url.to_string(),
                message: "the server's answer could not be used".to_string(),
            }),
        }
    }

    fn attempt(
        &self,
        url: &str,
        dest: &Path,
        part: &Path,
        expected: &Expected,
        progress: &dyn DownloadProgress,
        resume: bool,
    ) -> Result<(), Attempt> {
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        }
        let mut offset = match fs::metadata(part) {
            Ok(meta) if resume && meta.is_file() => meta.len(),
            _ => 0,
        };
        if let Some(size) = expected.pinned_size.or(expected.listed_size) {
            if offset >= size {
                // A full-length leftover: cannot be continued; fetch it again.
                offset = 0;
            }
        }

        let opened = self.open(url, offset)?;
        let content_length =
            header(&opened.response, "content-length").and_then(|v| v.parse().ok());
        let (resumed_from, remote_total) = match opened.status {
            200 => (0, content_length),
            206 if offset > 0 => {
                match header(&opened.response, "content-range").and_then(|v| content_range(&v)) {
                    Some((start, total)) if start == offset => {
                        (offset, total.or(content_length.map(|n: u64| n + offset)))
                    }
                    _ => return Err(Attempt::Restart),
                }
            }
            416 if offset > 0 => return Err(Attempt::Restart),
            404 => {
                return Err(DownloadError::NotFound {
                    url: url.to_string(),
                }
                .into())
            }
            status => {
                return Err(DownloadError::Status {
                    url: url.to_string(),
                    status,
                }
                .into())
            }
        };

        // What the file must be: the pinned values first, then what the hub states. Any two
        // statements that disagree end the attempt before a byte is written.
        let want_size = expected
            .pinned_size
            .or(expected.listed_size)
            .or(opened.linked_size)
            .or(remote_total);
        if let Some(want) = want_size {
            for (size, what) in [
                (expected.listed_size, "listed by the hub"),
                (opened.linked_size, "announced by the server"),
                (remote_total, "announced by the server"),
            ] {
                if let Some(size) = size.filter(|&size| size != want) {
                    remove_quietly(part);
                    return Err(DownloadError::SizeMismatch {
                        url: url.to_string(),
                        expected: want,
                        actual: size,
                        source_of_actual: what,
                    }
                    .into());
                }
            }
        }
        let want_sha256 = expected
            .pinned_sha256
            .clone()
            .or_else(|| expected.listed_sha256.clone())
            .or_else(|| opened.linked_sha256.clone());
        if let Some(want) = &want_sha256 {
            for (sha, what) in [
                (&expected.listed_sha256, "listed by the hub"),
                (&opened.linked_sha256, "announced by the server"),
            ] {
                if let Some(sha) = sha.as_ref().filter(|sha| *sha != want) {
                    remove_quietly(part);
                    return Err(DownloadError::ChecksumMismatch {
                        url: url.to_string(),
                        expected: want.clone(),
                        actual: sha.clone(),
                        source_of_actual: what,
                    }
                    .into());
                }
            }
        }

        if resumed_from > 0 && want_sha256.is_none() {
            // Kept bytes may be from another version or another mirror of the file; without a hash
            // to check the spliced result against, only a whole download can be trusted.
            return Err(Attempt::Restart);
        }

        let mut hasher = Sha256::new();
        let mut file = if resumed_from > 0 {
            let mut existing = File::open(part).map_err(io_error("read", part))?;
            io::copy(&mut existing, &mut hasher).map_err(io_error("read", part))?;
            OpenOptions::new()
                .append(true)
                .open(part)
                .map_err(io_error("write", part))?
        } else {
            File::create(part).map_err(io_error("create", part))?
        };

        let _finish = FinishOnDrop(progress);
        progress.start(url, want_size);
        if resumed_from > 0 {
            progress.advance(resumed_from);
        }
        let mut received = resumed_from;
        let mut reader = opened.response.into_body().into_reader();
        let mut buf = vec![0u8; CHUNK];
        let interrupted = |received: u64, message: String| DownloadError::Interrupted {
            url: url.to_string(),
            received,
            expected: want_size,
            part: part.to_path_buf(),
            message,
        };
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Keep what arrived, durably, for the next attempt to resume.
                    let _ = file.sync_all();
                    return Err(interrupted(received, e.to_string()).into());
                }
            };
            if let Some(want) = want_size {
                if received + n as u64 > want {
                    drop(file);
                    remove_quietly(part);
                    return Err(DownloadError::SizeMismatch {
                        url: url.to_string(),
                        expected: want,
                        actual: received + n as u64,
                        source_of_actual: "or more received",
                    }
                    .into());
                }
            }
            file.write_all(&buf[..n]).map_err(io_error("write", part))?;
            hasher.update(&buf[..n]);
            received += n as u64;
            progress.advance(n as u64);
        }
        if let Some(want) = want_size {
            if received < want {
                let _ = file.sync_all();
                return Err(
                    interrupted(received, "the connection closed early".to_string()).into(),
                );
            }
        }
        file.sync_all().map_err(io_error("sync", part))?;
        drop(file);

        let sha256 = format!("{:x}", hasher.finalize());
        if let Some(want) = want_sha256 {
            if sha256 != want {
                remove_quietly(part);
                if resumed_from > 0 {
                    // The kept bytes may be from another version of the file.
                    return Err(Attempt::Restart);
                }
                return Err(DownloadError::ChecksumMismatch {
                    url: url.to_string(),
                    expected: want,
                    actual: sha256,
                    source_of_actual: "received",
                }
                .into());
            }
        }

        // Sidecar first, then the file: a checkpoint under its final name always has its record.
        let sidecar_path = sidecar::path_of(dest);
        sidecar::write(dest, &sha256, received, url).map_err(io_error("write", &sidecar_path))?;
        fs::rename(part, dest).map_err(io_error("rename into place", part))?;
        if let Some(dir) = dest.parent() {
            sync_dir(dir).map_err(io_error("sync directory", dir))?;
        }
        Ok(())
    }

    /// Reads ModelScope's file listing and picks `file` out of it.
    pub(crate) fn modelscope_listing(
        &self,
        url: &str,
        file: &str,
    ) -> Result<Listing, DownloadError> {
        let opened = self.open(url, 0)?;
        match opened.status {
            200 => {}
            404 => {
                return Err(DownloadError::NotFound {
                    url: url.to_string(),
                })
            }
            _ => return Ok(Listing::Unavailable),
        }
        let reader = opened
            .response
            .into_body()
            .into_with_config()
            .limit(MAX_LISTING_BYTES)
            .reader();
        let Ok(listing) = serde_json::from_reader::<_, MsListing>(reader) else {
            return Ok(Listing::Unavailable);
        };
        let Some(data) = listing.data else {
            return Ok(Listing::Unavailable);
        };
        let found = data.files.into_iter().find(|f| {
            f.kind.as_deref() != Some("tree")
                && f.path.as_deref().or(f.name.as_deref()) == Some(file)
        });
        Ok(match found {
            Some(f) => Listing::Found {
                size: f.size,
                sha256: f
                    .sha256
                    .filter(|s| sidecar::is_sha256(s))
                    .map(|s| s.to_ascii_lowercase()),
            },
            None => Listing::NoSuchFile,
        })
    }

    /// GET `url`, following redirects by hand and collecting `X-Linked-*` on the way.
    fn open(&self, url: &str, range_from: u64) -> Result<Opened, DownloadError> {
        let mut current = url.to_string();
        let mut linked_size = None;
        let mut linked_sha256 = None;
        for _ in 0..=MAX_REDIRECTS {
            // `identity`: sizes and hashes are of the file itself, never of a compressed body.
            let mut request = self
                .agent
                .get(current.as_str())
                .header("Accept-Encoding", "identity");
            if range_from > 0 {
                request = request.header("Range", format!("bytes={range_from}-"));
            }
            let response = request
                .call()
                .map_err(|e| network(url, &current, e.to_string()))?;
            if linked_size.is_none() {
                linked_size = header(&response, "x-linked-size").and_then(|v| v.parse().ok());
            }
            if linked_sha256.is_none() {
                linked_sha256 = header(&response, "x-linked-etag").and_then(|v| etag_sha256(&v));
            }
            let status = response.status().as_u16();
            if matches!(status, 301 | 302 | 303 | 307 | 308) {
                let location = header(&response, "location").ok_or_else(|| {
                    network(
                        url,
                        &current,
                        format!("HTTP {status} without a Location header"),
                    )
                })?;
                current = join_location(&current, &location).ok_or_else(|| {
                    network(
                        url,
                        &current,
                        format!("unusable redirect to \"{location}\""),
                    )
                })?;
                continue;
            }
            return Ok(Opened {
                response,
                status,
                linked_size,
                linked_sha256,
            });
        }
        Err(network(url, &current, "too many redirects".to_string()))
    }
}

/// sha256 and size of a file, reading it through once.
pub(crate) fn hash_file(path: &Path, progress: &dyn DownloadProgress) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let total = file.metadata()?.len();
    let _finish = FinishOnDrop(progress);
    progress.start(&path.display().to_string(), Some(total));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
        progress.advance(n as u64);
    }
    Ok((format!("{:x}", hasher.finalize()), size))
}

/// `dir/file.pt` → `dir/file.pt.part`.
pub(crate) fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

struct FinishOnDrop<'a>(&'a dyn DownloadProgress);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

#[derive(Deserialize)]
struct MsListing {
    #[serde(rename = "Data")]
    data: Option<MsListingData>,
}

#[derive(Deserialize)]
struct MsListingData {
    #[serde(rename = "Files", default)]
    files: Vec<MsListedFile>,
}

#[derive(Deserialize)]
struct MsListedFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Name")]
    name: Option<String>,
    #[serde(rename = "Size")]
    size: Option<u64>,
    #[serde(rename = "Sha256")]
    sha256: Option<String>,
    #[serde(rename = "Type")]
    kind: Option<String>,
}

fn header(response: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

/// An ETag that is a sha256 (Hugging Face's `X-Linked-Etag` of LFS files is `"<sha256>"`; git
/// blob ids are 40 digits and are ignored).
fn etag_sha256(etag: &str) -> Option<String> {
    let bare = etag.trim().trim_start_matches("W/").trim_matches('"');
    sidecar::is_sha256(bare).then(|| bare.to_ascii_lowercase())
}

/// `bytes START-END/TOTAL` → `(START, Some(TOTAL))` (`None` for `*`).
fn content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        n => Some(n.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, total))
}

/// Resolves a `Location` header against the URL that returned it.
fn join_location(base: &str, location: &str) -> Option<String> {
    let location = location.trim();
    if location.starts_with("http://") || location.starts_with("https://") {
        return Some(location.to_string());
    }
    let scheme_end = base.find("://")?;
    if let Some(rest) = location.strip_prefix("//") {
        return Some(format!("{}//{rest}", &base[..=scheme_end]));
    }
    let after_scheme = scheme_end + 3;
    let authority_end = base[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(base.len(), |i| after_scheme + i);
    if location.starts_with('/') {
        return Some(format!("{}{location}", &base[..authority_end]));
    }
    if location.is_empty() {
        return None;
    }
    let path_end = base[authority_end..]
        .find(['?', '#'])
        .map_or(base.len(), |i| authority_end + i);
    let dir_end = base[authority_end..path_end]
        .rfind('/')
        .map_or(authority_end, |i| authority_end + i);
    Some(format!("{}/{location}", &base[..dir_end]))
}

fn network(url: &str, current: &str, message: String) -> DownloadError {
    let message = if current == url {
        message
    } else {
        let end = current.find(['?', '#']).unwrap_or(current.len());
        format!("{message} (after a redirect to {})", &current[..end])
    };
    DownloadError::Network {
        url: url.to_string(),
        message,
    }
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> DownloadError + 'a {
    move |cause| DownloadError::Io {
        action,
        path: path.to_path_buf(),
        cause,
    }
}

fn remove_quietly(path: &Path) {
    let _ = fs::remove_file(path);
}

/// Makes a rename in `dir` durable (POSIX: fsync the directory).
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_redirecting_url() {
        let base = "http://127.0.0.1:8080/OFA-Sys/repo/resolve/main/f.pt?x=1";
        assert_eq!(
            join_location(base, "https://cdn.example/a?sig=1").as_deref(),
            Some("https://cdn.example/a?sig=1")
        );
        assert_eq!(
            join_location(base, "//cdn.example/a").as_deref(),
            Some("http://cdn.example/a")
        );
        assert_eq!(
            join_location(base, "/api/resolve-cache/x").as_deref(),
            Some("http://127.0.0.1:8080/api/resolve-cache/x")
        );
        assert_eq!(
            join_location(base, "g.pt").as_deref(),
            Some("http://127.0.0.1:8080/OFA-Sys/repo/resolve/main/g.pt")
        );
        assert_eq!(
            join_location("http://h:1", "/x").as_deref(),
            Some("http://h:1/x")
        );
    }

    #[test]
    fn content_range_and_etags_parse() {
        assert_eq!(content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(content_range("items 1-2/3"), None);
        let sha = "B196EE3EE528B70BE1158AB1AAFB1D2F1C801AD2D9FFB3BAE31B0D305F82FC88";
        assert_eq!(
            etag_sha256(&format!("\"{sha}\"")),
            Some(sha.to_ascii_lowercase())
        );
        assert_eq!(
            etag_sha256(&format!("W/\"{sha}\"")),
            Some(sha.to_ascii_lowercase())
        );
        // A git blob id is not a content hash.
        assert_eq!(
            etag_sha256("\"0123456789abcdef0123456789abcdef01234567\""),
            None
        );
    }
}
