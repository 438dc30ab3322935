//! [`Resolver`]: settings (from the environment or a builder), local lookup, downloads, status.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::download::{self, Expected, Http, Listing};
use super::sidecar;
use super::{
    DownloadError, DownloadProgress, Hub, HubChoice, HubFailure, ModelSpec, ResolveError, ZooEntry,
    DEFAULT_HF_ENDPOINT, DEFAULT_MODELSCOPE_ENDPOINT,
};
use crate::config::Preset;

/// Turns [`ModelSpec`]s into checkpoint files: cache first, then the hubs.
///
/// [`Resolver::from_env`] reads the settings from the environment; the `with_*` methods set them
/// one by one (tests point the endpoints at a local server and the cache at a temporary
/// directory).
#[derive(Debug, Clone)]
pub struct Resolver {
    cache_dir: PathBuf,
    search_dirs: Vec<PathBuf>,
    hf_caches: Vec<PathBuf>,
    hub: HubChoice,
    hf_endpoint: String,
    hf_endpoint_configured: bool,
    modelscope_endpoint: String,
    offline: Option<String>,
    entries: Vec<ZooEntry>,
    connect_timeout: Duration,
    read_timeout: Duration,
}

/// Where a zoo model would come from right now (see [`Resolver::describe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelLocation {
    /// In cnclip's cache.
    Cached {
        /// The file.
        path: PathBuf,
        /// The sha256 recorded when it was downloaded (or verified), if any.
        sha256: Option<String>,
    },
    /// In cn_clip's download root or the Hugging Face hub cache.
    Elsewhere {
        /// The file.
        path: PathBuf,
    },
    /// Not present; [`Resolver::resolve`] would download it from these URLs, in order.
    Download {
        /// The URLs it would try.
        urls: Vec<String>,
    },
    /// Not present, and downloads are disabled.
    Missing {
        /// Why downloads are disabled.
        reason: String,
        /// Where it can be fetched by hand.
        urls: Vec<String>,
    },
    /// Present but unusable (wrong size, not a file, unreadable).
    Unusable {
        /// What is wrong, as [`ResolveError`]'s message.
        problem: String,
    },
}

impl fmt::Display for ModelLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelLocation::Cached { path, .. } => write!(f, "cached at {}", path.display()),
            ModelLocation::Elsewhere { path } => write!(f, "found at {}", path.display()),
            ModelLocation::Download { urls } => match urls.first() {
                Some(url) => write!(f, "not cached; would download {url}"),
                None => f.write_str("not cached"),
            },
            ModelLocation::Missing { reason, .. } => {
                write!(f, "not cached; downloads are disabled ({reason})")
            }
            ModelLocation::Unusable { problem } => f.write_str(problem),
        }
    }
}

/// One zoo model as `cnclip models` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelStatus {
    /// The model.
    pub preset: Preset,
    /// The checkpoint's file name.
    pub file: &'static str,
    /// Parameters (`Preset::config().parameter_count()`).
    pub parameter_count: usize,
    /// The checkpoint's size in bytes: pinned in the table, or of the local file.
    pub size_bytes: Option<u64>,
    /// Where it lives (or would live) in cnclip's cache.
    pub cache_path: PathBuf,
    /// Where it resolves from right now.
    pub location: ModelLocation,
}

/// The result of [`Resolver::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedFile {
    /// The file that was hashed.
    pub path: PathBuf,
    /// Its sha256.
    pub sha256: String,
    /// Its size.
    pub size_bytes: u64,
    /// What it was compared with (pinned in the table, or recorded at download); `None` when there
    /// was nothing to compare with — the hash is then recorded for later checks.
    pub expected_sha256: Option<String>,
}

enum Local {
    Cache(PathBuf),
    Elsewhere(PathBuf),
    Absent,
}

impl Resolver {
    /// A resolver with its cache at `cache_dir` (models go to `cache_dir/models/<Name>/<file>`),
    /// both hubs ([`HubChoice::Auto`]) at their default endpoints, downloads enabled, and no other
    /// directories searched.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Resolver {
        Resolver {
            cache_dir: cache_dir.into(),
            search_dirs: Vec::new(),
            hf_caches: Vec::new(),
            hub: HubChoice::Auto,
            hf_endpoint: DEFAULT_HF_ENDPOINT.to_string(),
            hf_endpoint_configured: false,
            modelscope_endpoint: DEFAULT_MODELSCOPE_ENDPOINT.to_string(),
            offline: None,
            entries: ZooEntry::all().to_vec(),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
        }
    }

    /// Settings from the process environment; see [`Resolver::from_env_with`].
    pub fn from_env() -> Result<Resolver, ResolveError> {
        Resolver::from_env_with(|name| std::env::var_os(name))
    }

    /// Settings from the variables `var` returns:
    ///
    /// - cache: `CNCLIP_CACHE`, else `$XDG_CACHE_HOME/cnclip`, else `$HOME/.cache/cnclip`
    ///   (`USERPROFILE` stands in for `HOME`);
    /// - also searched: cn_clip's download root `$HOME/.cache/clip` and the Hugging Face hub cache
    ///   (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
    ///   `$HOME/.cache/huggingface/hub`, as `huggingface_hub.constants` derives it);
    /// - hubs: `CNCLIP_HUB=auto|modelscope|huggingface`; endpoints: `HF_ENDPOINT`,
    ///   `MODELSCOPE_ENDPOINT` (a URL) or the modelscope SDK's `MODELSCOPE_DOMAIN` (a host);
    /// - offline: `CNCLIP_OFFLINE=1` (also `true`/`yes`/`on`; `0`/`false`/`no`/`off` and empty
    ///   mean online, anything else is an error) or `HF_HUB_OFFLINE=1` (huggingface_hub's truthy
    ///   values).
    pub fn from_env_with(var: impl Fn(&str) -> Option<OsString>) -> Result<Resolver, ResolveError> {
        let set = |name: &str| var(name).filter(|v| !v.is_empty());
        let text = |name: &str| set(name).map(|v| v.to_string_lossy().into_owned());
        let home = set("HOME")
            .or_else(|| set("USERPROFILE"))
            .map(PathBuf::from);
        // The XDG spec says relative values are to be ignored.
        let xdg_cache = set("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute());

        let cache_dir = if let Some(dir) = set("CNCLIP_CACHE") {
            PathBuf::from(dir)
        } else if let Some(xdg) = &xdg_cache {
            xdg.join("cnclip")
        } else if let Some(home) = &home {
            home.join(".cache").join("cnclip")
        } else {
            return Err(ResolveError::NoCacheDir);
        };
        let mut resolver = Resolver::new(cache_dir);

        // cn_clip `load_from_name`: `download_root or os.path.expanduser("~/.cache/clip")`, with the
        // file directly inside.
        if let Some(home) = &home {
            resolver.search_dirs.push(home.join(".cache").join("clip"));
        }
        let hf_cache = set("HF_HUB_CACHE")
            .or_else(|| set("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .or_else(|| set("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
            .or_else(|| {
                xdg_cache
                    .as_ref()
                    .map(|x| x.join("huggingface").join("hub"))
            })
            .or_else(|| {
                home.as_ref()
                    .map(|h| h.join(".cache").join("huggingface").join("hub"))
            });
        resolver.hf_caches.extend(hf_cache);

        if let Some(hub) = var("CNCLIP_HUB") {
            resolver.hub = hub.to_string_lossy().parse()?;
        }
        if let Some(endpoint) = text("HF_ENDPOINT") {
            resolver = resolver.with_hf_endpoint(endpoint);
        }
        if let Some(endpoint) = text("MODELSCOPE_ENDPOINT") {
            resolver = resolver.with_modelscope_endpoint(endpoint);
        } else if let Some(domain) = text("MODELSCOPE_DOMAIN") {
            // The SDK prefixes `https://` to the domain (`get_endpoint`); accept a URL as well.
            let endpoint = if domain.contains("://") {
                domain
            } else {
                format!("https://{}", domain.trim())
            };
            resolver = resolver.with_modelscope_endpoint(endpoint);
        }

        if let Some(value) = var("CNCLIP_OFFLINE") {
            let value = value.to_string_lossy().into_owned();
            match value.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => {
                    resolver.offline = Some(format!("CNCLIP_OFFLINE={value}"));
                }
                "" | "0" | "false" | "no" | "off" => {}
                _ => {
                    return Err(ResolveError::InvalidSetting {
                        name: "CNCLIP_OFFLINE",
                        value,
                        expected: "1, true, yes or on to disable downloads; 0, false, no or off",
                    })
                }
            }
        }
        if resolver.offline.is_none() {
            if let Some(value) = text("HF_HUB_OFFLINE") {
                // huggingface_hub `_is_true`: value.upper() in {"1", "ON", "YES", "TRUE"}.
                if matches!(
                    value.trim().to_ascii_uppercase().as_str(),
                    "1" | "ON" | "YES" | "TRUE"
                ) {
                    resolver.offline = Some(format!("HF_HUB_OFFLINE={value}"));
                }
            }
        }
        Ok(resolver)
    }

    /// Which hubs downloads may use.
    pub fn with_hub(mut self, hub: HubChoice) -> Resolver {
        self.hub = hub;
        self
    }

    /// The Hugging Face endpoint (a mirror such as `https://hf-mirror.com`); with
    /// [`HubChoice::Auto`], a configured endpoint is tried first.
    pub fn with_hf_endpoint(mut self, endpoint: impl Into<String>) -> Resolver {
        self.hf_endpoint = endpoint.into().trim().trim_end_matches('/').to_string();
        self.hf_endpoint_configured = true;
        self
    }

    /// The ModelScope endpoint.
    pub fn with_modelscope_endpoint(mut self, endpoint: impl Into<String>) -> Resolver {
        self.modelscope_endpoint = endpoint.into().trim().trim_end_matches('/').to_string();
        self
    }

    /// Disables downloads; `reason` appears in errors (`--offline`, `CNCLIP_OFFLINE=1`).
    pub fn with_offline(mut self, reason: impl Into<String>) -> Resolver {
        self.offline = Some(reason.into());
        self
    }

    /// Enables downloads.
    pub fn with_online(mut self) -> Resolver {
        self.offline = None;
        self
    }

    /// Also looks for checkpoints directly inside `dir` (as cn_clip's `download_root` holds them).
    pub fn with_search_dir(mut self, dir: impl Into<PathBuf>) -> Resolver {
        self.search_dirs.push(dir.into());
        self
    }

    /// Also looks in the Hugging Face hub cache at `dir` (`models--OFA-Sys--<repo>/snapshots/*/`).
    pub fn with_hf_cache(mut self, dir: impl Into<PathBuf>) -> Resolver {
        self.hf_caches.push(dir.into());
        self
    }

    /// Replaces the table entry of `entry.preset` (another file, mirror repository, or pinned
    /// size/hash).
    pub fn with_entry(mut self, entry: ZooEntry) -> Resolver {
        for slot in &mut self.entries {
            if slot.preset == entry.preset {
                *slot = entry;
            }
        }
        self
    }

    /// Connect timeout, and the longest wait for a response or for any single read of a body.
    pub fn with_timeouts(mut self, connect: Duration, read: Duration) -> Resolver {
        self.connect_timeout = connect;
        self.read_timeout = read;
        self
    }

    /// The official table (the same as [`ZooEntry::all`]).
    pub fn entries() -> &'static [ZooEntry] {
        ZooEntry::all()
    }

    /// The entry this resolver uses for `preset`.
    pub fn entry(&self, preset: Preset) -> &ZooEntry {
        self.entries
            .iter()
            .find(|e| e.preset == preset)
            .expect("the resolver holds one entry per preset")
    }

    /// cnclip's cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Where `preset`'s checkpoint lives in cnclip's cache: `<cache>/models/<Name>/<file>`.
    pub fn cached_path(&self, preset: Preset) -> PathBuf {
        let entry = self.entry(preset);
        self.cache_dir
            .join("models")
            .join(entry.name())
            .join(entry.file)
    }

    /// Directories searched after the cache (cn_clip's download root, …).
    pub fn search_dirs(&self) -> &[PathBuf] {
        &self.search_dirs
    }

    /// Hugging Face hub caches searched after the cache.
    pub fn hf_caches(&self) -> &[PathBuf] {
        &self.hf_caches
    }

    /// The Hugging Face endpoint in use.
    pub fn hf_endpoint(&self) -> &str {
        &self.hf_endpoint
    }

    /// The ModelScope endpoint in use.
    pub fn modelscope_endpoint(&self) -> &str {
        &self.modelscope_endpoint
    }

    /// Why downloads are disabled, if they are.
    pub fn offline_reason(&self) -> Option<&str> {
        self.offline.as_deref()
    }

    /// The hubs a download tries, in order (see [`HubChoice::Auto`]).
    pub fn hub_order(&self) -> Vec<Hub> {
        match self.hub {
            HubChoice::HuggingFace => vec![Hub::HuggingFace],
            HubChoice::ModelScope => vec![Hub::ModelScope],
            HubChoice::Auto if self.hf_endpoint_configured => {
                vec![Hub::HuggingFace, Hub::ModelScope]
            }
            HubChoice::Auto => vec![Hub::ModelScope, Hub::HuggingFace],
        }
    }

    /// `preset`'s URL on every hub, those downloads would try first (for fetching by hand).
    pub fn urls(&self, preset: Preset) -> Vec<String> {
        let entry = self.entry(preset);
        let mut hubs = self.hub_order();
        for hub in [Hub::ModelScope, Hub::HuggingFace] {
            if !hubs.contains(&hub) {
                hubs.push(hub);
            }
        }
        hubs.into_iter()
            .map(|hub| entry.url(hub, &self.hf_endpoint, &self.modelscope_endpoint))
            .collect()
    }

    /// Resolves `spec` to a file: a path as is (it must exist); a zoo model from the cache,
    /// cn_clip's or the Hugging Face hub's cache, or else a download into the cache.
    pub fn resolve(
        &self,
        spec: &ModelSpec,
        progress: &dyn DownloadProgress,
    ) -> Result<PathBuf, ResolveError> {
        match spec {
            ModelSpec::Path(path) if path.exists() => Ok(path.clone()),
            ModelSpec::Path(path) => Err(ResolveError::MissingFile { path: path.clone() }),
            ModelSpec::Zoo(preset) => self.resolve_preset(*preset, progress),
        }
    }

    /// [`Resolver::resolve`] for a zoo model.
    pub fn resolve_preset(
        &self,
        preset: Preset,
        progress: &dyn DownloadProgress,
    ) -> Result<PathBuf, ResolveError> {
        let entry = self.entry(preset);
        match self.find_local(entry)? {
            Local::Cache(path) | Local::Elsewhere(path) => return Ok(path),
            Local::Absent => {}
        }
        let path = self.cached_path(preset);
        if let Some(reason) = &self.offline {
            return Err(ResolveError::Offline {
                model: entry.name(),
                reason: reason.clone(),
                urls: self.urls(preset),
                path,
            });
        }
        let http = Http::new(self.connect_timeout, self.read_timeout);
        let mut failures = Vec::new();
        for hub in self.hub_order() {
            match self.download_from(&http, hub, entry, &path, progress) {
                Ok(()) => return Ok(path),
                Err(error) => failures.push(HubFailure { hub, error }),
            }
        }
        Err(ResolveError::DownloadFailed {
            model: entry.name(),
            failures,
            urls: self.urls(preset),
            path,
        })
    }

    fn download_from(
        &self,
        http: &Http,
        hub: Hub,
        entry: &ZooEntry,
        dest: &Path,
        progress: &dyn DownloadProgress,
    ) -> Result<(), DownloadError> {
        let mut expected = Expected {
            pinned_size: entry.size_bytes,
            pinned_sha256: entry.sha256.map(str::to_ascii_lowercase),
            ..Expected::default()
        };
        let url = entry.url(hub, &self.hf_endpoint, &self.modelscope_endpoint);
        if hub == Hub::ModelScope {
            let listing = entry.modelscope_listing_url(&self.modelscope_endpoint);
            match http.modelscope_listing(&listing, entry.file)? {
                Listing::Found { size, sha256 } => {
                    expected.listed_size = size;
                    expected.listed_sha256 = sha256;
                }
                Listing::NoSuchFile => return Err(DownloadError::NotFound { url }),
                Listing::Unavailable => {}
            }
        }
        http.download(&url, dest, &expected, progress)
    }

    /// Every zoo model with its size and where it resolves from right now. Reads only local
    /// files: no network.
    pub fn describe(&self) -> Vec<ModelStatus> {
        self.entries
            .iter()
            .map(|entry| {
                let local_size = |path: &Path| fs::metadata(path).ok().map(|m| m.len());
                let (location, size) = match self.find_local(entry) {
                    Ok(Local::Cache(path)) => {
                        let sha256 = sidecar::read(&path).ok().flatten().map(|r| r.sha256);
                        let size = local_size(&path);
                        (ModelLocation::Cached { path, sha256 }, size)
                    }
                    Ok(Local::Elsewhere(path)) => {
                        let size = local_size(&path);
                        (ModelLocation::Elsewhere { path }, size)
                    }
                    Ok(Local::Absent) => match &self.offline {
                        Some(reason) => (
                            ModelLocation::Missing {
                                reason: reason.clone(),
                                urls: self.urls(entry.preset),
                            },
                            None,
                        ),
                        None => {
                            let urls = self
                                .hub_order()
                                .into_iter()
                                .map(|hub| {
                                    entry.url(hub, &self.hf_endpoint, &self.modelscope_endpoint)
                                })
                                .collect();
                            (ModelLocation::Download { urls }, None)
                        }
                    },
                    Err(e) => (
                        ModelLocation::Unusable {
                            problem: e.to_string(),
                        },
                        None,
                    ),
                };
                ModelStatus {
                    preset: entry.preset,
                    file: entry.file,
                    parameter_count: entry.preset.config().parameter_count(),
                    size_bytes: entry.size_bytes.or(size),
                    cache_path: self.cached_path(entry.preset),
                    location,
                }
            })
            .collect()
    }

    /// Hashes the local checkpoint of `preset` and compares it with the pinned sha256, or the one
    /// recorded when it was downloaded. A file in cnclip's cache with nothing recorded gets its
    /// hash recorded now. Never deletes anything.
    pub fn verify(
        &self,
        preset: Preset,
        progress: &dyn DownloadProgress,
    ) -> Result<VerifiedFile, ResolveError> {
        let entry = self.entry(preset);
        let (path, in_cache) = match self.find_local(entry)? {
            Local::Cache(path) => (path, true),
            Local::Elsewhere(path) => (path, false),
            Local::Absent => {
                return Err(ResolveError::NotCached {
                    model: entry.name(),
                    path: self.cached_path(preset),
                })
            }
        };
        let record = if in_cache {
            sidecar::read(&path).map_err(io_error("read", &sidecar::path_of(&path)))?
        } else {
            None
        };
        let (sha256, size) =
            download::hash_file(&path, progress).map_err(io_error("read", &path))?;
        let expected = entry
            .sha256
            .map(str::to_ascii_lowercase)
            .or_else(|| record.as_ref().map(|r| r.sha256.clone()));
        if let Some(expected) = &expected {
            if *expected != sha256 {
                return Err(ResolveError::ChecksumMismatch {
                    path,
                    expected: expected.clone(),
                    actual: sha256,
                });
            }
        }
        if in_cache && record.is_none() {
            let sidecar_path = sidecar::path_of(&path);
            sidecar::write(&path, &sha256, size, "verified locally")
                .map_err(io_error("write", &sidecar_path))?;
        }
        Ok(VerifiedFile {
            path,
            sha256,
            size_bytes: size,
            expected_sha256: expected,
        })
    }

    fn find_local(&self, entry: &ZooEntry) -> Result<Local, ResolveError> {
        let cached = self.cached_path(entry.preset);
        if self.check_cached(entry, &cached)? {
            return Ok(Local::Cache(cached));
        }
        // Other tools' caches are only read: a candidate of the wrong size is passed over.
        for candidate in self.other_candidates(entry) {
            if let Ok(meta) = fs::metadata(&candidate) {
                if meta.is_file() && entry.size_bytes.is_none_or(|size| size == meta.len()) {
                    return Ok(Local::Elsewhere(candidate));
                }
            }
        }
        Ok(Local::Absent)
    }

    /// Whether a usable checkpoint sits at `path` in cnclip's cache; errors for one that is there
    /// but wrong (its size against the pinned or recorded one, its recorded hash against the
    /// pinned one).
    fn check_cached(&self, entry: &ZooEntry, path: &Path) -> Result<bool, ResolveError> {
        let meta = match fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_error("read", path)(e)),
        };
        if !meta.is_file() {
            return Err(ResolveError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let record = sidecar::read(path).map_err(io_error("read", &sidecar::path_of(path)))?;
        if let Some(expected) = entry
            .size_bytes
            .or_else(|| record.as_ref().and_then(|r| r.size))
        {
            if expected != meta.len() {
                return Err(ResolveError::DamagedCache {
                    path: path.to_path_buf(),
                    expected,
                    actual: meta.len(),
                });
            }
        }
        if let (Some(pinned), Some(record)) = (entry.sha256, &record) {
            if !pinned.eq_ignore_ascii_case(&record.sha256) {
                return Err(ResolveError::ChecksumMismatch {
                    path: path.to_path_buf(),
                    expected: pinned.to_ascii_lowercase(),
                    actual: record.sha256.clone(),
                });
            }
        }
        Ok(true)
    }

    /// cn_clip's flat download roots, then Hugging Face hub cache snapshots (`refs/main` first).
    fn other_candidates(&self, entry: &ZooEntry) -> Vec<PathBuf> {
        let mut candidates: Vec<PathBuf> = self
            .search_dirs
            .iter()
            .map(|d| d.join(entry.file))
            .collect();
        let repo_dir = format!("models--{}", entry.hf_repo.replace('/', "--"));
        for cache in &self.hf_caches {
            let repo = cache.join(&repo_dir);
            if let Ok(main) = fs::read_to_string(repo.join("refs").join("main")) {
                candidates.push(repo.join("snapshots").join(main.trim()).join(entry.file));
            }
            if let Ok(read) = fs::read_dir(repo.join("snapshots")) {
                let mut snapshots: Vec<PathBuf> = read.flatten().map(|e| e.path()).collect();
                snapshots.sort();
                candidates.extend(snapshots.into_iter().map(|s| s.join(entry.file)));
            }
        }
        candidates
    }
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ResolveError + 'a {
    move |source| ResolveError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}
