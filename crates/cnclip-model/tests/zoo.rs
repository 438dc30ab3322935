//! Model resolution: names, cache lookup, offline errors, and real downloads from a local HTTP
//! server that plays the Hugging Face hub and ModelScope (no test touches the network or the real
//! home cache).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cnclip_model::zoo::{
    parse_model_arg, DownloadError, DownloadProgress, Hub, HubChoice, ModelLocation, ModelSpec,
    NoProgress, ResolveError, Resolver, ZooEntry,
};
use cnclip_model::Preset;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 server with canned answers.

#[derive(Debug, Clone)]
struct Request {
    target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

enum Reply {
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Announces `announced` bytes (no `Content-Length` at all for `None`: the body ends when
    /// the connection closes), sends `body`, then closes (or stalls for `stall`).
    Cut {
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        announced: Option<u64>,
        stall: Option<Duration>,
    },
}

struct Server {
    url: String,
    log: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        let thread_log = Arc::clone(&log);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let log = Arc::clone(&thread_log);
                let handler = Arc::clone(&handler);
                std::thread::spawn(move || serve_one(stream, &log, &*handler));
            }
        });
        Server { url, log }
    }

    fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    fn targets(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.target).collect()
    }
}

fn serve_one(stream: TcpStream, log: &Mutex<Vec<Request>>, handler: &dyn Fn(&Request) -> Reply) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let request = Request { target, headers };
    log.lock().unwrap().push(request.clone());
    let mut stream = stream;
    let head = |status: u16, headers: &[(String, String)], length: Option<u64>| {
        let mut text = format!("HTTP/1.1 {status} X\r\n");
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(length) = length {
            text.push_str(&format!("Content-Length: {length}\r\n"));
        }
        text.push_str("Connection: close\r\n\r\n");
        text
    };
    match handler(&request) {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let _ = stream.write_all(head(status, &headers, Some(body.len() as u64)).as_bytes());
            let _ = stream.write_all(&body);
        }
        Reply::Cut {
            headers,
            body,
            announced,
            stall,
        } => {
            let _ = stream.write_all(head(200, &headers, announced).as_bytes());
            let _ = stream.write_all(&body);
            let _ = stream.flush();
            if let Some(stall) = stall {
                std::thread::sleep(stall);
            }
        }
    }
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn ok(body: &[u8]) -> Reply {
    ok_with(body, &[])
}

fn ok_with(body: &[u8], headers: &[(&str, &str)]) -> Reply {
    Reply::Full {
        status: 200,
        headers: own(headers),
        body: body.to_vec(),
    }
}

fn status(code: u16) -> Reply {
    Reply::Full {
        status: code,
        headers: Vec::new(),
        body: b"nope".to_vec(),
    }
}

fn redirect(location: &str, headers: &[(&str, &str)]) -> Reply {
    let mut headers = own(headers);
    headers.push(("Location".to_string(), location.to_string()));
    Reply::Full {
        status: 302,
        headers,
        body: Vec::new(),
    }
}

/// 206 for `Range: bytes=N-`, 200 otherwise.
fn ranged(request: &Request, body: &[u8]) -> Reply {
    let start = request
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    match start {
        Some(start) if start < body.len() => Reply::Full {
            status: 206,
            headers: own(&[(
                "Content-Range",
                &format!("bytes {start}-{}/{}", body.len() - 1, body.len()),
            )]),
            body: body[start..].to_vec(),
        },
        Some(_) => status(416),
        None => ok(body),
    }
}

fn own(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

const HF_PATH: &str = "/OFA-Sys/chinese-clip-vit-base-patch16/resolve/main/clip_cn_vit-b-16.pt";
const MS_FILE: &str =
    "/api/v1/models/AI-ModelScope/chinese-clip-vit-base-patch16/repo?Revision=master&FilePath=clip_cn_vit-b-16.pt";
const MS_LIST: &str =
    "/api/v1/models/AI-ModelScope/chinese-clip-vit-base-patch16/repo/files?Revision=master&Recursive=true";

/// 600 kB of deterministic bytes (more than one read chunk).
fn payload() -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..600_000)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// ViT-B-16's entry with pinned values, as the table would hold them.
fn pinned_entry(size: Option<u64>, sha256: Option<&str>) -> ZooEntry {
    ZooEntry {
        size_bytes: size,
        sha256: sha256.map(|s| leak(s.to_string())),
        ..*ZooEntry::of(Preset::VitB16)
    }
}

/// A resolver whose cache is `dir`, both hubs at `server`, Hugging Face first.
fn resolver_for(dir: &Path, server: &Server) -> Resolver {
    Resolver::new(dir)
        .with_hf_endpoint(&server.url)
        .with_modelscope_endpoint(&server.url)
        .with_timeouts(Duration::from_secs(5), Duration::from_secs(5))
}

fn vit_b() -> ModelSpec {
    ModelSpec::Zoo(Preset::VitB16)
}

fn part_of(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.part", path.display()))
}

fn sidecar_of(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sha256", path.display()))
}

#[derive(Default)]
struct Recorder {
    starts: Mutex<Vec<(String, Option<u64>)>>,
    advanced: Mutex<u64>,
    finishes: Mutex<usize>,
}

impl DownloadProgress for Recorder {
    fn start(&self, url: &str, total: Option<u64>) {
        self.starts.lock().unwrap().push((url.to_string(), total));
    }
    fn advance(&self, bytes: u64) {
        *self.advanced.lock().unwrap() += bytes;
    }
    fn finish(&self) {
        *self.finishes.lock().unwrap() += 1;
    }
}

fn single_failure(error: ResolveError) -> (Hub, DownloadError) {
    match error {
        ResolveError::DownloadFailed { mut failures, .. } if failures.len() == 1 => {
            let failure = failures.remove(0);
            (failure.hub, failure.error)
        }
        other => panic!("expected one hub failure, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The table and the URLs.

#[test]
fn table_is_cn_clips_models_table() {
    // cn_clip 1.6.0 utils.py `_MODELS`, orgs `OFA-Sys` / `AI-ModelScope`.
    let expected = [
        (Preset::Rn50, "chinese-clip-rn50", "clip_cn_rn50.pt"),
        (
            Preset::VitB16,
            "chinese-clip-vit-base-patch16",
            "clip_cn_vit-b-16.pt",
        ),
        (
            Preset::VitL14,
            "chinese-clip-vit-large-patch14",
            "clip_cn_vit-l-14.pt",
        ),
        (
            Preset::VitL14_336,
            "chinese-clip-vit-large-patch14-336px",
            "clip_cn_vit-l-14-336.pt",
        ),
        (
            Preset::VitH14,
            "chinese-clip-vit-huge-patch14",
            "clip_cn_vit-h-14.pt",
        ),
    ];
    let entries = Resolver::entries();
    assert_eq!(entries.len(), expected.len());
    for (entry, (preset, repo, file)) in entries.iter().zip(expected) {
        assert_eq!(entry.preset, preset);
        assert_eq!(entry.hf_repo, format!("OFA-Sys/{repo}"));
        assert_eq!(entry.modelscope_repo, format!("AI-ModelScope/{repo}"));
        assert_eq!(entry.file, file);
        assert_eq!(ZooEntry::of(preset), entry);
        if let Some(sha) = entry.sha256 {
            assert!(sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        }
    }
    // The one pinned checkpoint (see the table's docs for the source).
    let rn50 = ZooEntry::of(Preset::Rn50);
    assert_eq!(rn50.size_bytes, Some(308_316_425));
    // ≈ its parameters in fp32 plus the pickle's names and framing.
    let params = Preset::Rn50.config().parameter_count() as u64;
    assert!(
        rn50.size_bytes.unwrap() > params * 4 && rn50.size_bytes.unwrap() < params * 4 + 2_000_000
    );
}

#[test]
fn urls_have_the_hub_forms() {
    let entry = ZooEntry::of(Preset::VitL14_336);
    assert_eq!(
        entry.hf_url("https://huggingface.co"),
        "https://huggingface.co/OFA-Sys/chinese-clip-vit-large-patch14-336px/resolve/main/clip_cn_vit-l-14-336.pt"
    );
    assert_eq!(
        entry.hf_url("https://hf-mirror.com/"),
        "https://hf-mirror.com/OFA-Sys/chinese-clip-vit-large-patch14-336px/resolve/main/clip_cn_vit-l-14-336.pt"
    );
    assert_eq!(
        entry.modelscope_url("https://www.modelscope.cn"),
        "https://www.modelscope.cn/api/v1/models/AI-ModelScope/chinese-clip-vit-large-patch14-336px/repo?Revision=master&FilePath=clip_cn_vit-l-14-336.pt"
    );
    assert_eq!(
        entry.modelscope_listing_url("https://www.modelscope.cn/"),
        "https://www.modelscope.cn/api/v1/models/AI-ModelScope/chinese-clip-vit-large-patch14-336px/repo/files?Revision=master&Recursive=true"
    );
}

// ---------------------------------------------------------------------------------------------
// `--model` parsing.

#[test]
fn names_parse_case_insensitively() {
    for preset in Preset::ALL {
        assert_eq!(
            parse_model_arg(preset.name()).unwrap(),
            ModelSpec::Zoo(preset)
        );
        assert_eq!(
            parse_model_arg(&preset.name().to_ascii_lowercase()).unwrap(),
            ModelSpec::Zoo(preset)
        );
        let entry = ZooEntry::of(preset);
        assert_eq!(
            parse_model_arg(entry.hf_repo).unwrap(),
            ModelSpec::Zoo(preset)
        );
        assert_eq!(
            parse_model_arg(entry.modelscope_repo).unwrap(),
            ModelSpec::Zoo(preset)
        );
    }
    assert_eq!(
        parse_model_arg("VIT-L-14-336").unwrap(),
        ModelSpec::Zoo(Preset::VitL14_336)
    );
}

#[test]
fn existing_paths_are_paths() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("my-finetune.pt");
    std::fs::write(&file, b"x").unwrap();
    let arg = file.to_str().unwrap();
    assert_eq!(parse_model_arg(arg).unwrap(), ModelSpec::Path(file.clone()));
    // Resolving a path hands it back untouched, with no cache involved.
    let resolver = Resolver::new(dir.path().join("cache")).with_offline("test");
    assert_eq!(
        resolver
            .resolve(&ModelSpec::Path(file.clone()), &NoProgress)
            .unwrap(),
        file
    );
    let gone = ModelSpec::Path(dir.path().join("gone.pt"));
    assert!(matches!(
        resolver.resolve(&gone, &NoProgress),
        Err(ResolveError::MissingFile { .. })
    ));
}

#[test]
fn unknown_names_list_the_known_ones() {
    let error = parse_model_arg("ViT-B-32").unwrap_err();
    assert!(matches!(error, ResolveError::UnknownModel { .. }));
    assert_eq!(
        error.to_string(),
        "model \"ViT-B-32\" is neither an existing file nor a known model name \
         (known: RN50, ViT-B-16, ViT-L-14, ViT-L-14-336, ViT-H-14)"
    );
    // Something that looks like a file gets the missing-file error instead.
    let error = parse_model_arg("weights/missing.pt").unwrap_err();
    assert_eq!(
        error.to_string(),
        "model file weights/missing.pt does not exist"
    );
    assert!(parse_model_arg("").is_err());
}

// ---------------------------------------------------------------------------------------------
// Local lookup.

#[test]
fn cache_layout_is_models_name_file() {
    let resolver = Resolver::new("/c");
    assert_eq!(
        resolver.cached_path(Preset::VitH14),
        Path::new("/c/models/ViT-H-14/clip_cn_vit-h-14.pt")
    );
    assert_eq!(
        resolver.cached_path(Preset::Rn50),
        Path::new("/c/models/RN50/clip_cn_rn50.pt")
    );
}

#[test]
fn a_cached_file_is_used_without_any_request() {
    let server = Server::start(|_| status(500));
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server);
    let cached = resolver.cached_path(Preset::VitB16);
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    std::fs::write(&cached, b"placed by hand").unwrap();
    assert_eq!(resolver.resolve(&vit_b(), &NoProgress).unwrap(), cached);
    // Offline makes no difference to a hit.
    let offline = resolver.clone().with_offline("CNCLIP_OFFLINE=1");
    assert_eq!(offline.resolve(&vit_b(), &NoProgress).unwrap(), cached);
    assert!(server.requests().is_empty(), "{:?}", server.targets());
}

#[test]
fn cn_clip_download_root_and_hf_cache_are_reused() {
    let dir = tempfile::tempdir().unwrap();
    let clip_root = dir.path().join("clip");
    let hf = dir.path().join("hf");
    let resolver = Resolver::new(dir.path().join("cache"))
        .with_search_dir(&clip_root)
        .with_hf_cache(&hf)
        .with_offline("test");

    // cn_clip's `_download(name, root)` puts the file directly in `root`.
    std::fs::create_dir_all(&clip_root).unwrap();
    std::fs::write(clip_root.join("clip_cn_vit-l-14.pt"), b"cn_clip").unwrap();
    assert_eq!(
        resolver
            .resolve(&ModelSpec::Zoo(Preset::VitL14), &NoProgress)
            .unwrap(),
        clip_root.join("clip_cn_vit-l-14.pt")
    );

    // huggingface_hub's cache: `models--org--repo/snapshots/<commit>/<file>`, refs/main first.
    let repo = hf.join("models--OFA-Sys--chinese-clip-vit-huge-patch14");
    for commit in ["aaaa", "bbbb"] {
        let snapshot = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::write(snapshot.join("clip_cn_vit-h-14.pt"), commit).unwrap();
    }
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "bbbb\n").unwrap();
    assert_eq!(
        resolver
            .resolve(&ModelSpec::Zoo(Preset::VitH14), &NoProgress)
            .unwrap(),
        repo.join("snapshots/bbbb/clip_cn_vit-h-14.pt")
    );

    // A candidate of the wrong size (pinned RN50) is passed over, not used.
    std::fs::write(clip_root.join("clip_cn_rn50.pt"), b"truncated").unwrap();
    assert!(matches!(
        resolver.resolve(&ModelSpec::Zoo(Preset::Rn50), &NoProgress),
        Err(ResolveError::Offline { .. })
    ));
}

#[test]
fn a_cached_file_of_the_wrong_size_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // Pinned size.
    let resolver = Resolver::new(dir.path()).with_offline("test");
    let rn50 = resolver.cached_path(Preset::Rn50);
    std::fs::create_dir_all(rn50.parent().unwrap()).unwrap();
    std::fs::write(&rn50, b"short").unwrap();
    let error = resolver
        .resolve(&ModelSpec::Zoo(Preset::Rn50), &NoProgress)
        .unwrap_err();
    assert!(matches!(
        error,
        ResolveError::DamagedCache {
            expected: 308_316_425,
            actual: 5,
            ..
        }
    ));
    assert_eq!(
        error.to_string(),
        format!(
            "cached model {} is 5 bytes but 308316425 bytes are expected: delete it to download it again",
            rn50.display()
        )
    );
    // Size recorded in the sidecar of an earlier download.
    let vit = resolver.cached_path(Preset::VitB16);
    std::fs::create_dir_all(vit.parent().unwrap()).unwrap();
    std::fs::write(&vit, b"0123456789").unwrap();
    std::fs::write(
        sidecar_of(&vit),
        format!(
            "# size 11\n{}  clip_cn_vit-b-16.pt\n",
            sha256_hex(b"01234567890")
        ),
    )
    .unwrap();
    assert!(matches!(
        resolver.resolve(&vit_b(), &NoProgress),
        Err(ResolveError::DamagedCache {
            expected: 11,
            actual: 10,
            ..
        })
    ));
    // A directory where the file should be.
    let l14 = resolver.cached_path(Preset::VitL14);
    std::fs::create_dir_all(&l14).unwrap();
    assert!(matches!(
        resolver.resolve(&ModelSpec::Zoo(Preset::VitL14), &NoProgress),
        Err(ResolveError::NotAFile { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Offline.

#[test]
fn offline_error_says_what_to_download_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let resolver = Resolver::new(dir.path()).with_offline("CNCLIP_OFFLINE=1");
    let error = resolver.resolve(&vit_b(), &NoProgress).unwrap_err();
    let path = dir.path().join("models/ViT-B-16/clip_cn_vit-b-16.pt");
    // Default `auto` order without HF_ENDPOINT: ModelScope first.
    assert_eq!(
        error.to_string(),
        format!(
            "model \"ViT-B-16\" is not in the cache and downloads are disabled (CNCLIP_OFFLINE=1): \
             download https://www.modelscope.cn/api/v1/models/AI-ModelScope/chinese-clip-vit-base-patch16/repo?Revision=master&FilePath=clip_cn_vit-b-16.pt \
             (or https://huggingface.co/OFA-Sys/chinese-clip-vit-base-patch16/resolve/main/clip_cn_vit-b-16.pt) \
             and put it at {}",
            path.display()
        )
    );
    // With a Hugging Face mirror configured, the mirror's URL comes first.
    let mirrored = resolver.with_hf_endpoint("https://hf-mirror.com/");
    let error = mirrored.resolve(&vit_b(), &NoProgress).unwrap_err();
    match &error {
        ResolveError::Offline { urls, path: at, .. } => {
            assert_eq!(
                urls[0],
                "https://hf-mirror.com/OFA-Sys/chinese-clip-vit-base-patch16/resolve/main/clip_cn_vit-b-16.pt"
            );
            assert_eq!(at, &path);
        }
        other => panic!("{other:?}"),
    }
    assert!(!path.exists() && !part_of(&path).exists());
}

#[test]
fn environment_settings_are_read() {
    use std::collections::HashMap;
    use std::ffi::OsString;
    let env = |pairs: &[(&str, &str)]| {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Resolver::from_env_with(move |name| map.get(name).cloned())
    };

    let r = env(&[("HOME", "/home/u")]).unwrap();
    assert_eq!(r.cache_dir(), Path::new("/home/u/.cache/cnclip"));
    assert_eq!(r.search_dirs(), [PathBuf::from("/home/u/.cache/clip")]);
    assert_eq!(
        r.hf_caches(),
        [PathBuf::from("/home/u/.cache/huggingface/hub")]
    );
    assert_eq!(r.hub_order(), [Hub::ModelScope, Hub::HuggingFace]);
    assert_eq!(r.hf_endpoint(), "https://huggingface.co");
    assert_eq!(r.modelscope_endpoint(), "https://www.modelscope.cn");
    assert_eq!(r.offline_reason(), None);

    let r = env(&[
        ("HOME", "/home/u"),
        ("XDG_CACHE_HOME", "/xdg"),
        ("HF_HOME", "/hfhome"),
    ])
    .unwrap();
    assert_eq!(r.cache_dir(), Path::new("/xdg/cnclip"));
    assert_eq!(r.hf_caches(), [PathBuf::from("/hfhome/hub")]);
    // A relative XDG_CACHE_HOME is ignored (XDG base directory spec).
    let r = env(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "rel")]).unwrap();
    assert_eq!(r.cache_dir(), Path::new("/home/u/.cache/cnclip"));
    let r = env(&[
        ("HOME", "/home/u"),
        ("XDG_CACHE_HOME", "/xdg"),
        ("CNCLIP_CACHE", "/big/disk"),
    ])
    .unwrap();
    assert_eq!(r.cache_dir(), Path::new("/big/disk"));
    assert_eq!(
        r.cached_path(Preset::VitB16),
        Path::new("/big/disk/models/ViT-B-16/clip_cn_vit-b-16.pt")
    );
    assert!(matches!(env(&[]), Err(ResolveError::NoCacheDir)));

    let r = env(&[("HOME", "/h"), ("HF_ENDPOINT", "https://hf-mirror.com/")]).unwrap();
    assert_eq!(r.hf_endpoint(), "https://hf-mirror.com");
    assert_eq!(r.hub_order(), [Hub::HuggingFace, Hub::ModelScope]);
    let r = env(&[
        ("HOME", "/h"),
        ("CNCLIP_HUB", "ModelScope"),
        ("HF_ENDPOINT", "https://m"),
    ])
    .unwrap();
    assert_eq!(r.hub_order(), [Hub::ModelScope]);
    let r = env(&[("HOME", "/h"), ("CNCLIP_HUB", "hf")]).unwrap();
    assert_eq!(r.hub_order(), [Hub::HuggingFace]);
    let error = env(&[("HOME", "/h"), ("CNCLIP_HUB", "github")]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "CNCLIP_HUB=\"github\" is not valid: expected auto, modelscope or huggingface"
    );

    let r = env(&[("HOME", "/h"), ("MODELSCOPE_DOMAIN", "www.modelscope.ai")]).unwrap();
    assert_eq!(r.modelscope_endpoint(), "https://www.modelscope.ai");
    let r = env(&[
        ("HOME", "/h"),
        ("MODELSCOPE_DOMAIN", "x"),
        ("MODELSCOPE_ENDPOINT", "http://127.0.0.1:9/"),
    ])
    .unwrap();
    assert_eq!(r.modelscope_endpoint(), "http://127.0.0.1:9");

    assert_eq!(
        env(&[("HOME", "/h"), ("CNCLIP_OFFLINE", "1")])
            .unwrap()
            .offline_reason(),
        Some("CNCLIP_OFFLINE=1")
    );
    assert_eq!(
        env(&[("HOME", "/h"), ("CNCLIP_OFFLINE", "TRUE")])
            .unwrap()
            .offline_reason(),
        Some("CNCLIP_OFFLINE=TRUE")
    );
    assert_eq!(
        env(&[("HOME", "/h"), ("CNCLIP_OFFLINE", "0")])
            .unwrap()
            .offline_reason(),
        None
    );
    assert!(matches!(
        env(&[("HOME", "/h"), ("CNCLIP_OFFLINE", "maybe")]),
        Err(ResolveError::InvalidSetting {
            name: "CNCLIP_OFFLINE",
            ..
        })
    ));
    assert_eq!(
        env(&[("HOME", "/h"), ("HF_HUB_OFFLINE", "1")])
            .unwrap()
            .offline_reason(),
        Some("HF_HUB_OFFLINE=1")
    );
    assert_eq!(
        env(&[("HOME", "/h"), ("HF_HUB_OFFLINE", "0")])
            .unwrap()
            .offline_reason(),
        None
    );
}

/// `from_env` and relative-path precedence need a process environment and a working directory of
/// their own: the test re-runs itself as a child process with both set.
#[test]
fn from_env_and_relative_paths_in_a_child_process() {
    const CHILD: &str = "CNCLIP_ZOO_TEST_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let resolver = Resolver::from_env().unwrap();
        let home = PathBuf::from(std::env::var_os("HOME").unwrap());
        assert_eq!(resolver.cache_dir(), home.join(".cache/cnclip"));
        assert_eq!(resolver.hub_order(), [Hub::ModelScope]);
        assert_eq!(resolver.hf_endpoint(), "https://hf-mirror.com");
        assert_eq!(resolver.offline_reason(), Some("HF_HUB_OFFLINE=1"));
        // An existing directory called like a model wins over the name …
        assert_eq!(
            parse_model_arg("ViT-B-16").unwrap(),
            ModelSpec::Path(PathBuf::from("ViT-B-16"))
        );
        // … but only that one.
        assert_eq!(
            parse_model_arg("vit-l-14").unwrap(),
            ModelSpec::Zoo(Preset::VitL14)
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("ViT-B-16")).unwrap();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "from_env_and_relative_paths_in_a_child_process",
            "--test-threads=1",
        ])
        .env_clear()
        .env(CHILD, "1")
        .env("HOME", dir.path())
        .env("CNCLIP_HUB", "modelscope")
        .env("HF_ENDPOINT", "https://hf-mirror.com")
        .env("HF_HUB_OFFLINE", "1")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Downloads, against the local server.

#[test]
fn hf_download_follows_the_redirect_and_checks_the_linked_etag() {
    let body = payload();
    let sha = sha256_hex(&body);
    let (served, linked) = (body.clone(), sha.clone());
    let server = Server::start(move |r| match r.target.as_str() {
        HF_PATH => redirect(
            "/cdn/blob?signature=abc",
            &[
                ("X-Linked-Size", "600000"),
                ("X-Linked-Etag", &format!("\"{linked}\"")),
            ],
        ),
        "/cdn/blob?signature=abc" => ok_with(&served, &[("ETag", "\"not-a-sha\"")]),
        _ => status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server).with_hub(HubChoice::HuggingFace);
    let progress = Recorder::default();
    let path = resolver.resolve(&vit_b(), &progress).unwrap();

    assert_eq!(path, resolver.cached_path(Preset::VitB16));
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert!(!part_of(&path).exists());
    let sidecar = std::fs::read_to_string(sidecar_of(&path)).unwrap();
    assert!(sidecar.contains("# size 600000\n"), "{sidecar}");
    assert!(
        sidecar.ends_with(&format!("{sha}  clip_cn_vit-b-16.pt\n")),
        "{sidecar}"
    );
    assert_eq!(server.targets(), [HF_PATH, "/cdn/blob?signature=abc"]);
    let request = &server.requests()[0];
    assert_eq!(request.header("accept-encoding"), Some("identity"));
    assert!(request.header("user-agent").unwrap().starts_with("cnclip/"));
    assert_eq!(request.header("range"), None);

    let starts = progress.starts.lock().unwrap().clone();
    assert_eq!(
        starts,
        [(format!("{}{HF_PATH}", server.url), Some(600_000))]
    );
    assert_eq!(*progress.advanced.lock().unwrap(), 600_000);
    assert_eq!(*progress.finishes.lock().unwrap(), 1);

    // The second resolve is a cache hit, checked by size against the sidecar: no request.
    assert_eq!(resolver.resolve(&vit_b(), &NoProgress).unwrap(), path);
    assert_eq!(server.requests().len(), 2);
    // The status shows the recorded hash.
    let status = resolver
        .describe()
        .into_iter()
        .find(|s| s.preset == Preset::VitB16)
        .unwrap();
    assert_eq!(
        status.location,
        ModelLocation::Cached {
            path: path.clone(),
            sha256: Some(sha)
        }
    );
    assert_eq!(status.size_bytes, Some(600_000));
}

#[test]
fn modelscope_download_is_checked_against_the_listing() {
    let body = payload();
    let listing = format!(
        r#"{{"Code":200,"Data":{{"Files":[
            {{"Name":"README.md","Path":"README.md","Size":10,"Sha256":"","Type":"blob"}},
            {{"Name":"clip_cn_vit-b-16.pt","Path":"clip_cn_vit-b-16.pt","Size":{},"Sha256":"{}","Type":"blob"}}
        ]}},"Success":true}}"#,
        body.len(),
        sha256_hex(&body)
    );
    let served = body.clone();
    let server = Server::start(move |r| match r.target.as_str() {
        MS_LIST => ok(listing.as_bytes()),
        MS_FILE => ok(&served),
        _ => status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server).with_hub(HubChoice::ModelScope);
    let path = resolver.resolve(&vit_b(), &NoProgress).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(server.targets(), [MS_LIST, MS_FILE]);
}

#[test]
fn modelscope_listing_that_disagrees_with_the_body_keeps_nothing() {
    let body = payload();
    let listing = format!(
        r#"{{"Data":{{"Files":[{{"Path":"clip_cn_vit-b-16.pt","Size":{},"Sha256":"{}","Type":"blob"}}]}}}}"#,
        body.len(),
        sha256_hex(b"another file")
    );
    let served = body.clone();
    let server = Server::start(move |r| match r.target.as_str() {
        MS_LIST => ok(listing.as_bytes()),
        MS_FILE => ok(&served),
        _ => status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server).with_hub(HubChoice::ModelScope);
    let (hub, error) = single_failure(resolver.resolve(&vit_b(), &NoProgress).unwrap_err());
    assert_eq!(hub, Hub::ModelScope);
    match error {
        DownloadError::ChecksumMismatch {
            expected,
            actual,
            source_of_actual,
            ..
        } => {
            assert_eq!(expected, sha256_hex(b"another file"));
            assert_eq!(actual, sha256_hex(&body));
            assert_eq!(source_of_actual, "received");
        }
        other => panic!("{other:?}"),
    }
    let path = resolver.cached_path(Preset::VitB16);
    assert!(!path.exists() && !part_of(&path).exists() && !sidecar_of(&path).exists());
}

#[test]
fn size_mismatch_against_the_pinned_size_keeps_nothing() {
    let body = payload();
    let served = body.clone();
    let server = Server::start(move |r| match r.target.as_str() {
        HF_PATH => ok(&served),
        _ => status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server)
        .with_hub(HubChoice::HuggingFace)
        .with_entry(pinned_entry(Some(599_999), None));
    let (_, error) = single_failure(resolver.resolve(&vit_b(), &NoProgress).unwrap_err());
    assert!(
        matches!(
            error,
            DownloadError::SizeMismatch {
                expected: 599_999,
                actual: 600_000,
                source_of_actual: "announced by the server",
                ..
            }
        ),
        "{error:?}"
    );
    let path = resolver.cached_path(Preset::VitB16);
    assert!(!path.exists() && !part_of(&path).exists());
}

#[test]
fn a_content_length_contradicting_the_linked_size_keeps_nothing() {
    // The redirect states the LFS file's size; the CDN announces another.
    let body = payload();
    let served = body.clone();
    let server = Server::start(move |r| match r.target.as_str() {
        HF_PATH => redirect("/blob", &[("X-Linked-Size", "600000")]),
        "/blob" => ok(&served[..599_000]),
        _ => status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server).with_hub(HubChoice::HuggingFace);
    let (_, error) = single_failure(resolver.resolve(&vit_b(), &NoProgress).unwrap_err());
    assert!(
        matches!(
            error,
            DownloadError::SizeMismatch {
                expected: 600_000,
                actual: 599_000,
                ..
            }
        ),
        "{error:?}"
    );
    let path = resolver.cached_path(Preset::VitB16);
    assert!(!path.exists() && !part_of(&path).exists());
}

#[test]
fn checksum_mismatch_keeps_nothing() {
    // The hub announces the sha256 of the real file; the bytes that arrive differ (corrupted in
    // transit, or a mirror serving something else).
    let body = payload();
    let mut corrupted = body.clone();
    corrupted[300_000] ^= 0xff;
    let linked = sha256_hex(&body);
    let server = Server::start(move |r| match r.target.as_str() {
        HF_PATH => redirect("/blob", &[("X-Linked-Etag", &format!("\"{linked}\""))]),
        "/blob" => ok(&corrupted),
        _ => status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server).with_hub(HubChoice::HuggingFace);
    let error = resolver.resolve(&vit_b(), &NoProgress).unwrap_err();
    let message = error.to_string();
    let (_, failure) = single_failure(error);
    assert!(
        matches!(
            failure,
            DownloadError::ChecksumMismatch {
                source_of_actual: "received",
                ..
            }
        ),
        "{failure:?}"
    );
    assert!(message.contains("sha256 mismatch"), "{message}");
    let path = resolver.cached_path(Preset::VitB16);
    assert!(!path.exists() && !part_of(&path).exists() && !sidecar_of(&path).exists());
}

#[test]
fn a_pinned_hash_the_server_contradicts_stops_before_the_body() {
    let body = payload();
    let real = sha256_hex(&body);
    let served = body.clone();
    let server = Server::start(move |r| match r.target.as_str() {
        HF_PATH => redirect("/blob", &[("X-Linked-Etag", &format!("\"{real}\""))]),
        "/blob" => ok(&served),
        _ => status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let pinned = sha256_hex(b"the file the table pins");
    let resolver = resolver_for(dir.path(), &server)
        .with_hub(HubChoice::HuggingFace)
        .with_entry(pinned_entry(None, Some(&pinned)));
    let (_, error) = single_failure(resolver.resolve(&vit_b(), &NoProgress).unwrap_err());
    match error {
        DownloadError::ChecksumMismatch {
            expected,
            source_of_actual,
            ..
        } => {
            assert_eq!(expected, pinned);
            assert_eq!(source_of_actual, "announced by the server");
        }
        other => panic!("{other:?}"),
    }
    assert!(!resolver.cached_path(Preset::VitB16).exists());
}

#[test]
fn a_pinned_hash_is_checked_on_download() {
    let body = payload();
    let served = body.clone();
    let server = Server::start(move |r| match r.target.as_str() {
        HF_PATH => ok(&served),
        _ => status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let good = resolver_for(dir.path(), &server)
        .with_hub(HubChoice::HuggingFace)
        .with_entry(pinned_entry(Some(600_000), Some(&sha256_hex(&body))));
    let path = good.resolve(&vit_b(), &NoProgress).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);

    let other = tempfile::tempdir().unwrap();
    let bad = resolver_for(other.path(), &server)
        .with_hub(HubChoice::HuggingFace)
        .with_entry(pinned_entry(Some(600_000), Some(&sha256_hex(b"x"))));
    let (_, error) = single_failure(bad.resolve(&vit_b(), &NoProgress).unwrap_err());
    assert!(
        matches!(error, DownloadError::ChecksumMismatch { .. }),
        "{error:?}"
    );
    assert!(!bad.cached_path(Preset::VitB16).exists());
    assert!(!part_of(&bad.cached_path(Preset::VitB16)).exists());
}

#[test]
fn an_interrupted_download_is_never_taken_for_a_complete_one_and_resumes() {
    let body = payload();
    let sha = sha256_hex(&body);
    let served = body.clone();
    let cut = Arc::new(Mutex::new(true));
    let cut_now = Arc::clone(&cut);
    let server = Server::start(move |r| match r.target.as_str() {
        HF_PATH if *cut_now.lock().unwrap() => Reply::Cut {
            headers: Vec::new(),
            body: served[..250_000].to_vec(),
            announced: Some(600_000),
            stall: None,
        },
        HF_PATH => ranged(r, &served),
        _ => status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server)
        .with_hub(HubChoice::HuggingFace)
        .with_entry(pinned_entry(None, Some(&sha)));
    let path = resolver.cached_path(Preset::VitB16);

    let error = resolver.resolve(&vit_b(), &NoProgress).unwrap_err();
    let message = error.to_string();
    let (_, failure) = single_failure(error);
    match failure {
        DownloadError::Interrupted {
            received,
            expected,
            part,
            ..
        } => {
            assert_eq!(received, 250_000);
            assert_eq!(expected, Some(600_000));
            assert_eq!(part, part_of(&path));
        }
        other => panic!("{other:?}"),
    }
    assert!(message.contains("and put it at"), "{message}");
    assert!(
        !path.exists(),
        "a partial download must not appear under the final name"
    );
    assert_eq!(std::fs::read(part_of(&path)).unwrap(), &body[..250_000]);
    // Neither does a later lookup take the partial file.
    assert!(matches!(
        resolver
            .clone()
            .with_offline("test")
            .resolve(&vit_b(), &NoProgress),
        Err(ResolveError::Offline { .. })
    ));

    // The next attempt asks for the rest only.
    *cut.lock().unwrap() = false;
    let progress = Recorder::default();
    assert_eq!(resolver.resolve(&vit_b(), &progress).unwrap(), path);
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert!(!part_of(&path).exists());
    let last = server.requests().pop().unwrap();
    assert_eq!(last.header("range"), Some("bytes=250000-"));
    assert_eq!(*progress.advanced.lock().unwrap(), 600_000);
    assert_eq!(*progress.finishes.lock().unwrap(), 1);
}

#[test]
fn a_close_delimited_body_that_ends_early_is_interrupted() {
    // No Content-Length: only the size the hub stated on the redirect tells that bytes are missing.
    let body = payload();
    let server = Server::start(move |r| match r.target.as_str() {
        HF_PATH => redirect("/blob", &[("X-Linked-Size", "600000")]),
        "/blob" => Reply::Cut {
            headers: Vec::new(),
            body: body[..250_000].to_vec(),
            announced: None,
            stall: None,
        },
        _ => status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server).with_hub(HubChoice::HuggingFace);
    let (_, error) = single_failure(resolver.resolve(&vit_b(), &NoProgress).unwrap_err());
    assert!(
        matches!(
            error,
            DownloadError::Interrupted {
                received: 250_000,
                expected: Some(600_000),
                ..
            }
        ),
        "{error:?}"
    );
    let path = resolver.cached_path(Preset::VitB16);
    assert!(!path.exists());
    assert_eq!(std::fs::metadata(part_of(&path)).unwrap().len(), 250_000);
}

#[test]
fn a_206_for_another_range_restarts_the_download() {
    let body = payload();
    let served = body.clone();
    let server = Server::start(move |r| match r.target.as_str() {
        // Answers every range request with the whole file as "bytes 0-…".
        HF_PATH if r.header("range").is_some() => Reply::Full {
            status: 206,
            headers: own(&[("Content-Range", "bytes 0-599999/600000")]),
            body: served.clone(),
        },
        HF_PATH => ok(&served),
        _ => status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server).with_hub(HubChoice::HuggingFace);
    let path = resolver.cached_path(Preset::VitB16);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(part_of(&path), &body[..1000]).unwrap();
    resolver.resolve(&vit_b(), &NoProgress).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn a_partial_file_is_not_resumed_without_a_hash_to_check_the_result() {
    // No pinned, listed or linked sha256: resuming could splice two versions undetected.
    let body = payload();
    let served = body.clone();
    let server = Server::start(move |r| match r.target.as_str() {
        HF_PATH => ranged(r, &served),
        _ => status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server).with_hub(HubChoice::HuggingFace);
    let path = resolver.cached_path(Preset::VitB16);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(part_of(&path), vec![7u8; 1000]).unwrap();
    resolver.resolve(&vit_b(), &NoProgress).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    let ranges: Vec<Option<String>> = server
        .requests()
        .iter()
        .map(|r| r.header("range").map(str::to_string))
        .collect();
    assert_eq!(ranges, [Some("bytes=1000-".to_string()), None]);
}

#[test]
fn a_server_that_ignores_range_restarts_the_download() {
    let body = payload();
    let served = body.clone();
    let server = Server::start(move |r| match r.target.as_str() {
        HF_PATH => ok(&served),
        _ => status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server).with_hub(HubChoice::HuggingFace);
    let path = resolver.cached_path(Preset::VitB16);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(part_of(&path), &body[..1000]).unwrap();
    resolver.resolve(&vit_b(), &NoProgress).unwrap();
    assert_eq!(server.requests()[0].header("range"), Some("bytes=1000-"));
    assert_eq!(std::fs::read(&path).unwrap(), body);
}

#[test]
fn a_stale_partial_file_is_discarded_once_and_fetched_again() {
    // The kept bytes are from some other file: resuming cannot pass the hash; one fresh download
    // follows.
    let body = payload();
    let linked = sha256_hex(&body);
    let served = body.clone();
    let server = Server::start(move |r| match r.target.as_str() {
        HF_PATH => redirect("/blob", &[("X-Linked-Etag", &format!("\"{linked}\""))]),
        "/blob" => ranged(r, &served),
        _ => status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server).with_hub(HubChoice::HuggingFace);
    let path = resolver.cached_path(Preset::VitB16);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(part_of(&path), vec![0u8; 4096]).unwrap();
    resolver.resolve(&vit_b(), &NoProgress).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    let ranges: Vec<Option<String>> = server
        .requests()
        .iter()
        .filter(|r| r.target == "/blob")
        .map(|r| r.header("range").map(str::to_string))
        .collect();
    assert_eq!(ranges, [Some("bytes=4096-".to_string()), None]);
}

#[test]
fn a_stalled_transfer_fails_instead_of_hanging() {
    let body = payload();
    let server = Server::start(move |r| match r.target.as_str() {
        HF_PATH => Reply::Cut {
            headers: Vec::new(),
            body: body[..1000].to_vec(),
            announced: Some(600_000),
            stall: Some(Duration::from_secs(5)),
        },
        _ => status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server)
        .with_hub(HubChoice::HuggingFace)
        .with_timeouts(Duration::from_secs(2), Duration::from_millis(300));
    let started = std::time::Instant::now();
    let (_, error) = single_failure(resolver.resolve(&vit_b(), &NoProgress).unwrap_err());
    assert!(
        matches!(error, DownloadError::Interrupted { received: 1000, .. }),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(!resolver.cached_path(Preset::VitB16).exists());
}

#[test]
fn not_found_on_every_hub_says_what_to_do() {
    let server = Server::start(|_| status(404));
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server);
    let error = resolver.resolve(&vit_b(), &NoProgress).unwrap_err();
    let path = resolver.cached_path(Preset::VitB16);
    let hf = format!("{}{HF_PATH}", server.url);
    let ms_list = format!("{}{MS_LIST}", server.url);
    let ms = format!("{}{MS_FILE}", server.url);
    assert_eq!(
        error.to_string(),
        format!(
            "model \"ViT-B-16\" could not be downloaded (huggingface: {hf} was not found (HTTP 404); \
             modelscope: {ms_list} was not found (HTTP 404)): download {hf} (or {ms}) and put it at {}",
            path.display()
        )
    );
    // HF_ENDPOINT configured: Hugging Face first, then ModelScope.
    assert_eq!(server.targets(), [HF_PATH, MS_LIST]);
    assert!(!path.exists() && !part_of(&path).exists());
}

#[test]
fn other_statuses_are_reported() {
    let server = Server::start(|_| status(503));
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server).with_hub(HubChoice::HuggingFace);
    let (_, error) = single_failure(resolver.resolve(&vit_b(), &NoProgress).unwrap_err());
    assert!(
        matches!(error, DownloadError::Status { status: 503, .. }),
        "{error:?}"
    );
}

#[test]
fn auto_falls_back_to_the_other_hub() {
    let body = payload();
    let served = body.clone();
    let server = Server::start(move |r| match r.target.as_str() {
        HF_PATH => status(404),
        MS_LIST => status(500), // no listing: the file is checked by its Content-Length only
        MS_FILE => ok(&served),
        _ => status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server);
    let path = resolver.resolve(&vit_b(), &NoProgress).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(server.targets(), [HF_PATH, MS_LIST, MS_FILE]);
}

#[test]
fn auto_without_a_configured_hf_endpoint_tries_modelscope_first() {
    let body = payload();
    let listing = r#"{"Data":{"Files":[{"Path":"clip_cn_vit-b-16.pt","Type":"blob"}]}}"#;
    let served = body.clone();
    let server = Server::start(move |r| match r.target.as_str() {
        MS_LIST => ok(listing.as_bytes()),
        MS_FILE => ok(&served),
        _ => status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    // The Hugging Face endpoint stays the default one and is never contacted: ModelScope succeeds.
    let resolver = Resolver::new(dir.path()).with_modelscope_endpoint(&server.url);
    assert_eq!(resolver.hub_order(), [Hub::ModelScope, Hub::HuggingFace]);
    let path = resolver.resolve(&vit_b(), &NoProgress).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(server.targets(), [MS_LIST, MS_FILE]);
}

#[test]
fn a_file_missing_from_the_listing_is_not_found() {
    let listing = r#"{"Data":{"Files":[{"Path":"README.md","Type":"blob"}]}}"#;
    let server = Server::start(move |r| match r.target.as_str() {
        MS_LIST => ok(listing.as_bytes()),
        _ => status(500),
    });
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server).with_hub(HubChoice::ModelScope);
    let (hub, error) = single_failure(resolver.resolve(&vit_b(), &NoProgress).unwrap_err());
    assert_eq!(hub, Hub::ModelScope);
    assert!(
        matches!(&error, DownloadError::NotFound { url } if url.ends_with(MS_FILE)),
        "{error:?}"
    );
    assert_eq!(server.targets(), [MS_LIST]);
}

#[test]
fn an_explicit_hub_does_not_fall_back() {
    let server = Server::start(|r| match r.target.as_str() {
        HF_PATH => status(404),
        _ => ok(b"would be wrong to fetch"),
    });
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server).with_hub(HubChoice::HuggingFace);
    let (hub, _) = single_failure(resolver.resolve(&vit_b(), &NoProgress).unwrap_err());
    assert_eq!(hub, Hub::HuggingFace);
    assert_eq!(server.targets(), [HF_PATH]);
}

#[test]
fn an_unreachable_network_says_what_to_download_and_where() {
    // A port nobody listens on: connection refused, at once.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let resolver = Resolver::new(dir.path())
        .with_hf_endpoint(&dead)
        .with_modelscope_endpoint(&dead);
    let error = resolver.resolve(&vit_b(), &NoProgress).unwrap_err();
    let message = error.to_string();
    match &error {
        ResolveError::DownloadFailed {
            failures,
            urls,
            path,
            ..
        } => {
            assert_eq!(failures.len(), 2);
            assert!(failures
                .iter()
                .all(|f| matches!(f.error, DownloadError::Network { .. })));
            assert_eq!(urls[0], format!("{dead}{HF_PATH}"));
            assert_eq!(path, &resolver.cached_path(Preset::VitB16));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        message.ends_with(&format!(
            "download {dead}{HF_PATH} (or {dead}{MS_FILE}) and put it at {}",
            resolver.cached_path(Preset::VitB16).display()
        )),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------------
// Status and verification.

#[test]
fn describe_says_where_each_model_comes_from() {
    let dir = tempfile::tempdir().unwrap();
    let resolver = Resolver::new(dir.path().join("cache"))
        .with_search_dir(dir.path().join("clip"))
        .with_hf_endpoint("https://hf-mirror.com");
    let cached = resolver.cached_path(Preset::VitB16);
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    std::fs::write(&cached, b"abc").unwrap();
    std::fs::create_dir_all(dir.path().join("clip")).unwrap();
    std::fs::write(dir.path().join("clip/clip_cn_vit-l-14.pt"), b"abcd").unwrap();
    let rn50 = resolver.cached_path(Preset::Rn50);
    std::fs::create_dir_all(rn50.parent().unwrap()).unwrap();
    std::fs::write(&rn50, b"short").unwrap();

    let statuses = resolver.describe();
    assert_eq!(
        statuses.iter().map(|s| s.preset).collect::<Vec<_>>(),
        Preset::ALL
    );
    for status in &statuses {
        assert_eq!(
            status.parameter_count,
            status.preset.config().parameter_count()
        );
        assert_eq!(status.cache_path, resolver.cached_path(status.preset));
    }
    let by = |p: Preset| statuses.iter().find(|s| s.preset == p).unwrap();
    assert_eq!(
        by(Preset::VitB16).location,
        ModelLocation::Cached {
            path: cached.clone(),
            sha256: None
        }
    );
    assert_eq!(by(Preset::VitB16).size_bytes, Some(3));
    assert_eq!(
        by(Preset::VitL14).location,
        ModelLocation::Elsewhere {
            path: dir.path().join("clip/clip_cn_vit-l-14.pt")
        }
    );
    assert!(matches!(
        by(Preset::Rn50).location,
        ModelLocation::Unusable { .. }
    ));
    assert_eq!(by(Preset::Rn50).size_bytes, Some(308_316_425));
    assert_eq!(
        by(Preset::VitH14).location,
        ModelLocation::Download {
            urls: vec![
                "https://hf-mirror.com/OFA-Sys/chinese-clip-vit-huge-patch14/resolve/main/clip_cn_vit-h-14.pt".to_string(),
                "https://www.modelscope.cn/api/v1/models/AI-ModelScope/chinese-clip-vit-huge-patch14/repo?Revision=master&FilePath=clip_cn_vit-h-14.pt".to_string(),
            ]
        }
    );
    assert_eq!(by(Preset::VitH14).size_bytes, None);
    assert_eq!(
        by(Preset::VitB16).location.to_string(),
        format!("cached at {}", cached.display())
    );

    let offline = resolver.with_offline("CNCLIP_OFFLINE=1").describe();
    let h14 = offline.iter().find(|s| s.preset == Preset::VitH14).unwrap();
    assert!(
        matches!(&h14.location, ModelLocation::Missing { reason, urls } if reason == "CNCLIP_OFFLINE=1" && urls.len() == 2)
    );
    assert_eq!(
        h14.location.to_string(),
        "not cached; downloads are disabled (CNCLIP_OFFLINE=1)"
    );
}

#[test]
fn verify_hashes_the_file_and_catches_corruption() {
    let body = payload();
    let served = body.clone();
    let server = Server::start(move |r| match r.target.as_str() {
        HF_PATH => ok(&served),
        _ => status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server).with_hub(HubChoice::HuggingFace);
    assert!(matches!(
        resolver.verify(Preset::VitB16, &NoProgress),
        Err(ResolveError::NotCached { .. })
    ));
    let path = resolver.resolve(&vit_b(), &NoProgress).unwrap();

    let progress = Recorder::default();
    let verified = resolver.verify(Preset::VitB16, &progress).unwrap();
    assert_eq!(verified.sha256, sha256_hex(&body));
    assert_eq!(verified.expected_sha256, Some(sha256_hex(&body)));
    assert_eq!(verified.size_bytes, 600_000);
    assert_eq!(*progress.advanced.lock().unwrap(), 600_000);

    // Same size, one byte changed: only the hash can tell.
    let mut damaged = body.clone();
    damaged[12_345] ^= 1;
    std::fs::write(&path, &damaged).unwrap();
    assert_eq!(resolver.resolve(&vit_b(), &NoProgress).unwrap(), path);
    let error = resolver.verify(Preset::VitB16, &NoProgress).unwrap_err();
    assert!(
        matches!(error, ResolveError::ChecksumMismatch { .. }),
        "{error:?}"
    );
    assert!(error
        .to_string()
        .starts_with(&format!("model file {} has sha256 ", path.display())));
    assert!(path.exists(), "verify never deletes");
}

#[test]
fn verify_records_the_hash_of_a_file_placed_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let resolver = Resolver::new(dir.path()).with_offline("test");
    let path = resolver.cached_path(Preset::VitL14);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"by hand").unwrap();
    let verified = resolver.verify(Preset::VitL14, &NoProgress).unwrap();
    assert_eq!(verified.expected_sha256, None);
    let sidecar = std::fs::read_to_string(sidecar_of(&path)).unwrap();
    assert!(sidecar.contains(&format!("{}  clip_cn_vit-l-14.pt", sha256_hex(b"by hand"))));
    // From now on its size is checked on every hit.
    std::fs::write(&path, b"by hand, changed").unwrap();
    assert!(matches!(
        resolver.resolve(&ModelSpec::Zoo(Preset::VitL14), &NoProgress),
        Err(ResolveError::DamagedCache { .. })
    ));
}

/// The sidecar is what `sha256sum -c` reads (when coreutils is there to ask).
#[test]
fn sidecar_is_sha256sum_compatible() {
    let body = payload();
    let served = body.clone();
    let server = Server::start(move |r| match r.target.as_str() {
        HF_PATH => ok(&served),
        _ => status(404),
    });
    let dir = tempfile::tempdir().unwrap();
    let resolver = resolver_for(dir.path(), &server).with_hub(HubChoice::HuggingFace);
    let path = resolver.resolve(&vit_b(), &NoProgress).unwrap();
    let Ok(output) = std::process::Command::new("sha256sum")
        .args(["-c", "--strict", "clip_cn_vit-b-16.pt.sha256"])
        .current_dir(path.parent().unwrap())
        .output()
    else {
        return;
    };
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut text = String::new();
    output.stdout.as_slice().read_to_string(&mut text).unwrap();
    assert_eq!(text, "clip_cn_vit-b-16.pt: OK\n");
}
