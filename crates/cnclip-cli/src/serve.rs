//! `cnclip-search --serve ADDR`: an index and its model behind a small HTTP/1.1 interface that
//! answers in JSON, for photo-library backends that do not link the Rust library.
//!
//! - `GET /search?q=一只小猫&k=10` — a text query (the `q` parameter percent-encoded UTF-8; `k`
//!   defaults to 10): `{"hits": [{"rank", "score", "path"}, …]}`, best first, as
//!   `cnclip-search --json` prints them. `&under=/photos/alice` (absolute; may be repeated)
//!   confines any search to the images under those folders, as `cnclip-search --under` does;
//!   `&offset=20` skips the best 20 (the next page; ranks still count from the best);
//!   `&min_score=0.95` keeps only hits scoring that much (on `/similar`: near duplicates);
//!   `&add=夜晚` and `&subtract=室内` (repeatable) are query arithmetic, as `cnclip-search --add`
//!   and `--subtract` (on `/similar` too: "this photo, but at night"). The
//!   vectors of the last [`TEXT_CACHE`] texts asked are kept: asking again, for the next page or
//!   after going back, costs no model time.
//! - `POST /search?k=10` — an image query: the body is the image file (any format the indexer
//!   reads, at most [`MAX_BODY`] bytes, with a `Content-Length`), decoded as the index's photos were.
//! - `GET /similar?path=/photos/cat.jpg&k=10` — the images most like an indexed one, from the
//!   vector the index holds for it (no model runs: milliseconds); the photo itself comes first.
//! - `GET /embed?text=一只小猫` and `POST /embed` (an image file as the body) — the query's
//!   embedding, for backends that keep vectors themselves: `{"kind", "input", "model",
//!   "embedding"}`, L2-normalised, equal to what `cnclip embed --json` prints for it (`input` for
//!   texts only; `model` is the server's, as the index records it).
//! - `GET /status` — `{"model", "dim", "preprocess", "precision", "images", "vectors", "graph",
//!   "exact_vectors", "query_cache": {"texts", "hits"}}`.
//! - `GET /file?path=/photos/cat.jpg` — an indexed photo's file, as it is on disk now (404 for
//!   any path the index does not hold: the server shows no other file); `GET /thumb?path=` — a
//!   JPEG thumbnail of it, upright, its long side [`THUMB_SIDE`].
//! - `GET /` — a search page for a browser ([`PAGE`]): a search box, a photo dropped on it
//!   searches by that photo, results come as a grid of photos, a click shows more like one.
//!
//! Failures answer `{"error": "…"}`: 400 for a query that cannot be answered as given (no `q` or
//! `text`, an empty one, a bad `k`, `offset` or `min_score`, a relative `under`, an image that
//! does not decode, a `path` not in the index), 403 for a `Host` that is not the loopback's on a
//! loopback address, 404 and 405 for other paths and methods, 408 when a request does not arrive
//! whole within [`READ_TIMEOUT`], 411 for a body without a length, 413 for one over
//! [`MAX_BODY`], 431 for headers over [`MAX_HEAD`], 500 when the index cannot be read, and 503
//! once the index has been rebuilt with another model than the server's (its vectors and the
//! server's queries are not comparable: restart the server; `/embed` still answers, with the
//! server's model).
//!
//! The index is read as `cnclip-search` reads it, without its lock, so a build can run beside the
//! server: every second a refresher picks up the batches it committed, and when a new graph
//! snapshot or a rewritten log needs the index opened anew, it opens a fresh searcher beside the
//! one in use and swaps it in, so queries never wait for a graph to load. [`WORKERS`] threads take
//! connections, one request each (`Connection: close`); searches run side by side, while queries
//! are encoded one at a time, since the model already spreads one query over every core, and
//! query images are decoded one at a time beside that. There is no authentication: bind to a
//! loopback address (as the README does) unless something in front decides who may ask. On a
//! loopback address the server answers only requests whose `Host` names the loopback (403
//! otherwise): a web page from elsewhere pointing a name of its own at 127.0.0.1 ("DNS
//! rebinding") cannot read the answers, or the photos, through a visitor's browser.

use std::collections::HashMap;
use std::io::{BufWriter, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use cnclip_index::{Error, ImageEmbedder};
use cnclip_model::model::l2_normalized;
use cnclip_model::preprocess::JpegDecode;
use cnclip_search::{Hit, QueryEncoder, Scope, Searcher};
use serde_json::{json, Value};

use crate::engine::ClipEngine;

/// Threads taking connections.
pub const WORKERS: usize = 8;
/// The largest request head (request line and headers) read.
pub const MAX_HEAD: usize = 16 << 10;
/// The largest body accepted: a query image (a 100-MP camera JPEG fits). With [`WORKERS`]
/// connections at once, bodies take at most 512 MiB.
pub const MAX_BODY: u64 = 64 << 20;
/// How long a connection may take to send its whole request, and to take its answer: a client
/// that trickles bytes holds a worker no longer.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Results per query when `k` is not given, and the most that may be asked for.
const DEFAULT_K: usize = 10;
const MAX_K: usize = 10_000;
/// Text queries whose vectors are kept (2 KiB each at 512 dimensions).
pub const TEXT_CACHE: usize = 1024;
/// How often the refresher looks for what builds committed.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// What the workers share.
struct Server {
    /// Listening on a loopback address: only requests naming a loopback host are answered.
    loopback: bool,
    searcher: RwLock<Searcher>,
    engine: ClipEngine,
    /// Held while a query is encoded (one at a time).
    encoding: Mutex<()>,
    text_cache: Mutex<TextCache>,
    /// Held while a query image is decoded (one at a time, apart from the model: a text query
    /// need not wait for a decode, and the pixels of one photo are in memory at a time).
    decoding: Mutex<()>,
    /// Thumbnails made at once ([`THUMB_WORKERS`]): a page of results fills on every core.
    thumbs: Permits,
    /// Set when the index was rebuilt with another model: its vectors cannot be compared with
    /// this model's queries, so searches are refused until the server restarts with that model.
    other_model: Mutex<Option<String>>,
    /// The refresher's last failure, said once rather than every second.
    refresh_failure: Mutex<Option<String>>,
}

/// Serves queries on `listener` until the process ends. `searcher` and `engine` must agree on the
/// model (the caller checks).
pub fn serve(listener: TcpListener, searcher: Searcher, engine: ClipEngine) -> ! {
    let server = Server {
        loopback: listener.local_addr().is_ok_and(|a| a.ip().is_loopback()),
        searcher: RwLock::new(searcher),
        engine,
        encoding: Mutex::new(()),
        text_cache: Mutex::new(TextCache::default()),
        decoding: Mutex::new(()),
        thumbs: Permits::new(THUMB_WORKERS),
        other_model: Mutex::new(None),
        refresh_failure: Mutex::new(None),
    };
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            let (listener, server) = (&listener, &server);
            s.spawn(move || {
                loop {
                    match listener.accept() {
                        Ok((stream, _)) => server.answer(stream),
                        // A connection reset before it was taken is its client's problem; out
                        // of file descriptors, wait a moment rather than spin.
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
        }
        s.spawn(|| loop {
            std::thread::sleep(REFRESH_EVERY);
            server.refresh();
        });
    });
    unreachable!("the workers never return")
}

/// A parsed request.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    body: Vec<u8>,
    /// The `Host` header, if any.
    host: Option<String>,
}

/// An answer that is not 200: its status and message.
#[derive(Debug, PartialEq)]
struct Failure(u16, String);

fn fail<T>(status: u16, message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure(status, message.into()))
}

impl Server {
    fn answer(&self, mut stream: TcpStream) {
        let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
        let deadline = Instant::now() + READ_TIMEOUT;
        let result = read_request(&mut stream, deadline).and_then(|req| {
            if let Some(host) = req
                .host
                .as_deref()
                .filter(|h| self.loopback && !loopback(h))
            {
                return fail(
                    403,
                    format!(
                        "this server listens on a loopback address and answers requests for \
                         localhost only, not for {host:?} (to serve other machines, listen on \
                         their network: --serve 0.0.0.0:PORT)"
                    ),
                );
            }
            // A bug met on some query must cost that query, not the server.
            catch_unwind(AssertUnwindSafe(|| self.route(&req))).unwrap_or_else(|_| {
                fail(
                    500,
                    "internal error while answering (a bug: please report it)",
                )
            })
        });
        let error = |Failure(status, message)| {
            let body = json!({ "error": message }).to_string();
            (status, JSON, body.into_bytes())
        };
        let (status, kind, body) = match result {
            Ok(Reply::Json(body)) => (200, JSON, body.into_bytes()),
            Ok(Reply::Page) => (200, "text/html; charset=utf-8", PAGE.as_bytes().to_vec()),
            Ok(Reply::Bytes(body, kind)) => (200, kind, body),
            Ok(Reply::File(path, kind)) => match std::fs::File::open(&path) {
                Ok(file) => {
                    // Streamed: a photo is never read into memory whole.
                    let _ = write_response(&mut stream, 200, kind, CACHE_PHOTOS, file);
                    return finish(stream);
                }
                Err(e) => error(Failure(404, format!("{}: {e}", path.display()))),
            },
            Err(failure) => error(failure),
        };
        // Thumbnails may be kept a while (a page of "more like this" shows many again).
        let cache = if status == 200 && kind.starts_with("image/") {
            CACHE_PHOTOS
        } else {
            ""
        };
        // The client may have gone; nothing to tell it then.
        let _ = write_response(&mut stream, status, kind, cache, &body[..]);
        finish(stream);
    }

    fn route(&self, req: &Request) -> Result<Reply, Failure> {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => Ok(Reply::Page),
            ("GET", "/file") => {
                let path = self.indexed_photo(req)?;
                let kind = content_type(&path);
                Ok(Reply::File(path, kind))
            }
            ("GET", "/thumb") => {
                let path = self.indexed_photo(req)?;
                let _permit = self.thumbs.take();
                let jpeg = thumbnail(&path).or_else(|e| fail(500, e))?;
                Ok(Reply::Bytes(jpeg, "image/jpeg"))
            }
            (_, "/" | "/file" | "/thumb") => fail(405, format!("use GET {}", req.path)),
            _ => self.route_json(req).map(Reply::Json),
        }
    }
}

/// What a request is answered with.
enum Reply {
    Json(String),
    /// The search page ([`PAGE`]).
    Page,
    /// An indexed photo, and its content type.
    File(std::path::PathBuf, &'static str),
    /// Bytes of this content type.
    Bytes(Vec<u8>, &'static str),
}

/// Thumbnails made at once. Two: the build machines' cores (a NAS has no more), and a bound on
/// memory, as a photo without a reduced decode (a huge PNG) is decoded whole.
pub const THUMB_WORKERS: usize = 2;

/// A counting semaphore: at most `n` holders at once.
struct Permits {
    free: Mutex<usize>,
    freed: std::sync::Condvar,
}

/// Gives its permit back when dropped.
struct Permit<'a>(&'a Permits);

impl Permits {
    fn new(n: usize) -> Permits {
        Permits {
            free: Mutex::new(n),
            freed: std::sync::Condvar::new(),
        }
    }

    fn take(&self) -> Permit<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

/// The long side of the thumbnails `/thumb` answers with (photos smaller than that keep their
/// size): sharp in the search page's 180-pixel cells on a high-density screen.
pub const THUMB_SIDE: u32 = 360;

/// A JPEG thumbnail of the photo at `path`, upright (EXIF orientation applied), its long side
/// [`THUMB_SIDE`]. Large JPEGs are decoded at reduced scale, as the indexer decodes them.
fn thumbnail(path: &Path) -> Result<Vec<u8>, String> {
    use cnclip_model::preprocess::{self, PreprocessOptions};
    let opts = PreprocessOptions {
        // Reduced decoding keeps both sides at least 3 × this: above the thumbnail's.
        size: (THUMB_SIDE / 2) as usize,
        jpeg_decode: JpegDecode::Scaled,
        ..PreprocessOptions::default()
    };
    let img = preprocess::load_image(path, &opts).map_err(|e| e.to_string())?;
    let r = img.reduction();
    let (w, h) = (img.width() * r, img.height() * r);
    let long = w.max(h).min(THUMB_SIDE);
    let scale = |side: u32| ((side as u64 * long as u64) / w.max(h) as u64).max(1) as u32;
    let (tw, th) = (scale(w), scale(h));
    let rgb = preprocess::resize_rgb8_to(&img, tw as usize, th as usize);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 82)
        .encode(&rgb, tw, th, image::ExtendedColorType::Rgb8)
        .map_err(|e| format!("cannot encode a thumbnail: {e}"))?;
    Ok(jpeg)
}

const JSON: &str = "application/json; charset=utf-8";
/// Photos and thumbnails may be reused by the browser for ten minutes (a photo changed since
/// shows anew after that, or on a reload).
const CACHE_PHOTOS: &str = "Cache-Control: private, max-age=600\r\n";

/// The search page `GET /` answers: a search box, photo drops, results as a grid of photos
/// (from `/file`), a click for more like one. It uses only the endpoints above.
pub const PAGE: &str = include_str!("serve.html");

/// A photo's content type, by its extension (the indexer takes files by extension too).
fn content_type(path: &Path) -> &'static str {
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase());
    match ext.as_deref() {
        Some("jpg" | "jpeg" | "jpe" | "jfif") => "image/jpeg",
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("bmp") => "image/bmp",
        Some("tif" | "tiff") => "image/tiff",
        _ => "application/octet-stream",
    }
}

/// Closes the connection after an answer: reads what the client still sends (a body the server
/// refused) until it closes, for at most a second, so that closing does not reset the connection
/// before the client has read the answer.
fn finish(mut stream: TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let until = Instant::now() + Duration::from_secs(1);
    let mut scratch = [0u8; 16 << 10];
    while Instant::now() < until {
        match stream.read(&mut scratch) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

impl Server {
    /// The photo named by `path`, which must be one the index holds: the server shows no other
    /// file, also not through a symlink put since in an indexed photo's place (the index holds
    /// canonical paths, which a symlink's is not).
    fn indexed_photo(&self, req: &Request) -> Result<std::path::PathBuf, Failure> {
        let Some(path) = param(req, "path") else {
            return fail(
                400,
                format!("missing the photo: GET {}?path=/ABSOLUTE/PATH", req.path),
            );
        };
        let path = Path::new(path);
        let indexed = (self.searcher.read().unwrap_or_else(|e| e.into_inner())).contains(path);
        let canonical = std::fs::canonicalize(path).is_ok_and(|c| c == path);
        if !indexed || !canonical {
            return fail(404, format!("{} is not an indexed photo", path.display()));
        }
        Ok(path.to_path_buf())
    }

    fn route_json(&self, req: &Request) -> Result<String, Failure> {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/search") => {
                let page = Page::of(req)?;
                let text = text_of(req, "q", "query", "GET /search?q=TEXT")?;
                let vector = self.encode_text(text)?;
                self.search(&self.arithmetic(req, vector)?, &page)
            }
            ("POST", "/search") => {
                let page = Page::of(req)?;
                let vector = self.encode_posted_image(req)?;
                self.search(&self.arithmetic(req, vector)?, &page)
            }
            ("GET", "/embed") => {
                let text = text_of(req, "text", "text", "GET /embed?text=TEXT")?;
                let vector = self.encode_text(text)?;
                self.embedding("text", Some(text), vector)
            }
            ("POST", "/embed") => {
                let vector = self.encode_posted_image(req)?;
                self.embedding("image", None, vector)
            }
            ("GET", "/similar") => {
                let page = Page::of(req)?;
                let Some(path) = param(req, "path") else {
                    return fail(400, "missing the photo: GET /similar?path=/ABSOLUTE/PATH");
                };
                self.similar(Path::new(path), &page, req)
            }
            ("GET", "/status") => Ok(self.status().to_string()),
            (_, "/search") => fail(405, "use GET /search?q=TEXT or POST /search with an image"),
            (_, "/embed") => fail(405, "use GET /embed?text=TEXT or POST /embed with an image"),
            (_, "/similar") => fail(405, "use GET /similar?path=PATH"),
            (_, "/status") => fail(405, "use GET /status"),
            _ => fail(
                404,
                format!(
                    "no such endpoint: {} (see GET /status, /search, /similar, /embed, /file, \
                     /thumb, /)",
                    req.path
                ),
            ),
        }
    }

    /// The posted image (the body), decoded as the index's photos were and encoded.
    fn encode_posted_image(&self, req: &Request) -> Result<Vec<f32>, Failure> {
        if req.body.is_empty() {
            return fail(400, "no image: POST the image file as the body");
        }
        let prepared = {
            let _one_at_a_time = self.decoding.lock().unwrap_or_else(|e| e.into_inner());
            self.engine
                .prepare(Path::new("the posted image"), &req.body)
                .or_else(|e| fail(400, e))?
        };
        self.encode(|| {
            Ok(self
                .engine
                .embed(&[prepared])
                .map_err(Error::Embed)?
                .remove(0))
        })
    }

    /// `{"kind", "input", "model", "embedding"}`: the line `cnclip embed --json` prints (the
    /// vector L2-normalised as it does), with the server's model; `input` for texts only.
    fn embedding(
        &self,
        kind: &str,
        input: Option<&str>,
        vector: Vec<f32>,
    ) -> Result<String, Failure> {
        let embedding = l2_normalized(vector);
        if !embedding.iter().all(|x| x.is_finite()) {
            return fail(500, "the model gave a vector that is not finite");
        }
        let mut answer = json!({
            "kind": kind,
            "model": ImageEmbedder::identity(&self.engine).model,
            "embedding": embedding,
        });
        if let Some(input) = input {
            answer["input"] = input.into();
        }
        Ok(answer.to_string())
    }

    fn encode(
        &self,
        run: impl FnOnce() -> cnclip_index::Result<Vec<f32>>,
    ) -> Result<Vec<f32>, Failure> {
        let _one_at_a_time = self.encoding.lock().unwrap_or_else(|e| e.into_inner());
        run().or_else(|e| match e {
            // The model could not take this query (an image that does not decode, a text it
            // cannot encode): the asker's to fix.
            Error::Embed(e) => fail(400, e.to_string()),
            e => fail(500, e.to_string()),
        })
    }

    /// A text query's vector: from the cache when it was asked before (a photo app asks again
    /// for the next page, or when the user goes back), else from the model.
    fn encode_text(&self, text: &str) -> Result<Vec<f32>, Failure> {
        if let Some(v) = self
            .text_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(text)
        {
            return Ok(v);
        }
        let v = self.encode(|| self.engine.encode_text(text).map_err(Error::Embed))?;
        (self.text_cache.lock().unwrap_or_else(|e| e.into_inner())).put(text, &v);
        Ok(v)
    }

    fn search(&self, vector: &[f32], page: &Page) -> Result<String, Failure> {
        self.refuse_other_model()?;
        let searcher = self.searcher.read().unwrap_or_else(|e| e.into_inner());
        page.hits_json(searcher.search_vector_in(vector, page.offset + page.k, &page.scope))
    }

    fn similar(&self, path: &Path, page: &Page, req: &Request) -> Result<String, Failure> {
        self.refuse_other_model()?;
        let stored = {
            let searcher = self.searcher.read().unwrap_or_else(|e| e.into_inner());
            searcher.vector_of(path)
        };
        let Some(vector) = stored else {
            // Not in the index: the asker's to fix.
            let e = Error::NotIndexed { path: path.into() };
            return fail(400, e.to_string());
        };
        self.search(&self.arithmetic(req, vector)?, page)
    }

    /// The query plus the `add` texts minus the `subtract` ones (`cnclip_search::combine`).
    fn arithmetic(&self, req: &Request, query: Vec<f32>) -> Result<Vec<f32>, Failure> {
        let (mut add, mut subtract) = (Vec::new(), Vec::new());
        for (name, text) in &req.query {
            let into = match name.as_str() {
                "add" => &mut add,
                "subtract" => &mut subtract,
                _ => continue,
            };
            if text.trim().is_empty() {
                return fail(400, format!("the {name} text is empty"));
            }
            into.push(self.encode_text(text)?);
        }
        if add.is_empty() && subtract.is_empty() {
            return Ok(query);
        }
        cnclip_search::combine(&query, &add, &subtract).or_else(|e| fail(500, e.to_string()))
    }

    /// A 503 once the index holds another model's vectors.
    fn refuse_other_model(&self) -> Result<(), Failure> {
        match &*self.other_model.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(why) => fail(503, why.clone()),
            None => Ok(()),
        }
    }

    fn status(&self) -> Value {
        let s = self.searcher.read().unwrap_or_else(|e| e.into_inner());
        let cache = self.text_cache.lock().unwrap_or_else(|e| e.into_inner());
        let id = s.identity();
        json!({
            "model": id.model,
            "dim": id.dim,
            "preprocess": id.preprocess,
            "precision": id.precision,
            "images": s.len(),
            "vectors": s.vectors(),
            "graph": s.uses_graph(),
            "exact_vectors": s.exact_vectors(),
            "query_cache": {"texts": cache.entries.len(), "hits": cache.hits},
        })
    }

    /// Picks up what builds committed; a reopen happens beside the searcher in use.
    fn refresh(&self) {
        let (reopen, dir) = {
            let s = self.searcher.read().unwrap_or_else(|e| e.into_inner());
            (s.needs_reopen(), s.dir().to_path_buf())
        };
        let result = if reopen {
            Searcher::open(&dir).map(|fresh| {
                for w in fresh.warnings() {
                    eprintln!("warning: {w}");
                }
                *self.searcher.write().unwrap_or_else(|e| e.into_inner()) = fresh;
            })
        } else {
            let mut s = self.searcher.write().unwrap_or_else(|e| e.into_inner());
            s.refresh().map(drop)
        };
        // Queries go on with what was read; the next round tries again.
        let failure = result.err().map(|e| e.to_string());
        let mut last = self
            .refresh_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if failure.is_some() && *last != failure {
            eprintln!(
                "warning: cannot refresh the index: {}",
                failure.as_deref().unwrap_or("")
            );
        }
        *last = failure;
        // A reopened index may have been rebuilt from scratch with another model.
        let s = self.searcher.read().unwrap_or_else(|e| e.into_inner());
        let ours = ImageEmbedder::identity(&self.engine);
        let mut other = self.other_model.lock().unwrap_or_else(|e| e.into_inner());
        let theirs = s.identity();
        if ours.compatible(theirs) {
            *other = None;
        } else if other.is_none() {
            let why = format!(
                "{}: the index is now built with {theirs}, but this server encodes queries with \
                 {ours}; restart it to search with the index's model",
                dir.display()
            );
            eprintln!("error: {why}");
            *other = Some(why);
        }
    }
}

/// Which hits a search answers with: `k` (1–[`MAX_K`], default [`DEFAULT_K`]) from `offset`
/// (default 0; `offset + k` at most [`MAX_K`]), among the images under the `under` folders.
struct Page {
    k: usize,
    offset: usize,
    scope: Scope,
    /// Only hits scoring at least this.
    min_score: Option<f32>,
}

impl Page {
    fn of(req: &Request) -> Result<Page, Failure> {
        let number = |name: &str, default: usize, min: usize| match param(req, name) {
            None => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (min..=MAX_K).contains(&n) => Ok(n),
                _ => fail(
                    400,
                    format!("{name} must be a whole number from {min} to {MAX_K}, not {v:?}"),
                ),
            },
        };
        let (k, offset) = (number("k", DEFAULT_K, 1)?, number("offset", 0, 0)?);
        if k + offset > MAX_K {
            return fail(400, format!("offset + k must be at most {MAX_K}"));
        }
        let min_score = (param(req, "min_score").map(crate::parse_cosine))
            .transpose()
            .map_err(|e| Failure(400, format!("min_score: {e}")))?;
        Ok(Page {
            k,
            offset,
            scope: scope_of(req)?,
            min_score,
        })
    }

    /// `{"hits": [...]}` from `offset` on (ranks counted from the best), the hits' fields in
    /// `cnclip-search --json`'s order.
    fn hits_json(&self, hits: cnclip_index::Result<Vec<Hit>>) -> Result<String, Failure> {
        #[derive(serde::Serialize)]
        struct Hits {
            hits: Vec<Hit>,
        }
        match hits {
            Ok(mut hits) => {
                hits.drain(..self.offset.min(hits.len()));
                if let Some(min) = self.min_score {
                    hits.retain(|h| h.score >= min);
                }
                serde_json::to_string(&Hits { hits }).or_else(|e| fail(500, e.to_string()))
            }
            Err(e) => fail(500, e.to_string()),
        }
    }
}

/// The vectors of the last [`TEXT_CACHE`] text queries asked, the least recently asked evicted.
#[derive(Default)]
struct TextCache {
    entries: HashMap<String, (Vec<f32>, u64)>,
    clock: u64,
    hits: u64,
}

impl TextCache {
    fn get(&mut self, text: &str) -> Option<Vec<f32>> {
        self.clock += 1;
        let (v, used) = self.entries.get_mut(text)?;
        *used = self.clock;
        self.hits += 1;
        Some(v.clone())
    }

    fn put(&mut self, text: &str, v: &[f32]) {
        if self.entries.len() >= TEXT_CACHE {
            let oldest = (self.entries.iter())
                .min_by_key(|(_, (_, used))| *used)
                .map(|(t, _)| t.clone());
            if let Some(t) = oldest {
                self.entries.remove(&t);
            }
        }
        self.clock += 1;
        self.entries
            .insert(text.to_owned(), (v.to_vec(), self.clock));
    }
}

fn param<'r>(req: &'r Request, name: &str) -> Option<&'r str> {
    req.query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The text in parameter `name`, which must be there and not blank; `what` names it in the
/// error and `usage` says how to ask.
fn text_of<'r>(req: &'r Request, name: &str, what: &str, usage: &str) -> Result<&'r str, Failure> {
    match param(req, name) {
        None => fail(400, format!("missing the {what}: {usage}")),
        Some(text) if text.trim().is_empty() => fail(400, format!("the {what} is empty")),
        Some(text) => Ok(text),
    }
}

/// The folders of the `under` parameters (absolute; canonicalized when they exist, as the index
/// names files): all images when there is none.
fn scope_of(req: &Request) -> Result<Scope, Failure> {
    let mut under = Vec::new();
    for (_, dir) in req.query.iter().filter(|(name, _)| name == "under") {
        let dir = Path::new(dir);
        if !dir.is_absolute() {
            return fail(400, format!("under must be an absolute path, not {dir:?}"));
        }
        under.push(crate::as_indexed(dir).map_err(|e| Failure(400, e.to_string()))?);
    }
    Ok(if under.is_empty() {
        Scope::all()
    } else {
        Scope::under(under)
    })
}

/// Reads one request, its head, then a body of `Content-Length` bytes, all before `deadline`.
fn read_request(stream: &mut TcpStream, deadline: Instant) -> Result<Request, Failure> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        let end = find(&buf, b"\r\n\r\n");
        if end.unwrap_or(buf.len()) > MAX_HEAD {
            return fail(431, format!("the request head is over {MAX_HEAD} bytes"));
        }
        if let Some(at) = end {
            break at;
        }
        let mut chunk = [0u8; 4096];
        match read_before(stream, deadline, &mut chunk)? {
            0 => return fail(400, "the connection closed before the request ended"),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let mut body = buf.split_off(head_end + 4);
    buf.truncate(head_end);
    let head = std::str::from_utf8(&buf)
        .map_err(|_| Failure(400, "the request head is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return fail(400, format!("not an HTTP request line: {request_line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return fail(400, format!("not HTTP/1.x: {version:?}"));
    }
    let mut length: Option<u64> = None;
    let mut expect_continue = false;
    let mut host = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return fail(400, format!("not a header: {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<u64>()
                .map_err(|_| Failure(400, format!("bad Content-Length: {value:?}")))?;
            if length.is_some_and(|l| l != n) {
                return fail(400, "two different Content-Lengths");
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("host") {
            host = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return fail(411, "send the body with a Content-Length, not chunked");
        } else if name.eq_ignore_ascii_case("expect") && value.eq_ignore_ascii_case("100-continue")
        {
            expect_continue = true;
        }
    }
    let length = length.unwrap_or(0);
    if length > MAX_BODY {
        return fail(413, format!("the body is over {} MiB", MAX_BODY >> 20));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = parse_query(query)?;
    if expect_continue && length > 0 {
        // curl asks before sending a large body.
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|e| Failure(400, format!("cannot answer: {e}")))?;
    }
    if body.len() as u64 > length {
        // Pipelined requests are not read: one request per connection.
        body.truncate(length as usize);
    }
    while (body.len() as u64) < length {
        let start = body.len();
        let want = usize::try_from(length - start as u64).map_or(64 << 10, |n| n.min(64 << 10));
        body.resize(start + want, 0);
        let n = read_before(stream, deadline, &mut body[start..])?;
        body.truncate(start + n);
        if n == 0 {
            return fail(400, "the connection closed before the body ended");
        }
    }
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query,
        body,
        host,
    })
}

/// One `read`, in what is left of the time the request may take.
fn read_before(
    stream: &mut TcpStream,
    deadline: Instant,
    into: &mut [u8],
) -> Result<usize, Failure> {
    let late = || Failure(408, "the request did not arrive in time".into());
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or_else(late)?;
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(into) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(late())
            }
            Err(e) => return fail(400, format!("cannot read the request: {e}")),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether a `Host` header names this machine's loopback ("localhost", "127.0.0.1:7860",
/// "[::1]:7860"). A server on a loopback address answers no other: a web page from elsewhere that
/// points a name of its own at 127.0.0.1 ("DNS rebinding") could otherwise read its answers, and
/// the photos, through the browser of the person whose photos they are.
fn loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `a=1&b=x+y%21` → `[("a", "1"), ("b", "x y!")]`: form encoding, UTF-8.
fn parse_query(query: &str) -> Result<Vec<(String, String)>, Failure> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Result<String, Failure> {
    let bad = || Failure(400, format!("bad percent-encoding in {s:?}"));
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next().ok_or_else(bad)?, bytes.next().ok_or_else(bad)?];
                // Two hex digits: `from_str_radix` alone would take a sign ("%+F").
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(bad());
                }
                let hex = std::str::from_utf8(&hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| Failure(400, format!("the query {s:?} is not UTF-8")))
}

/// Writes an answer: head, then `body` (read to its end; its length must be known first, so a
/// file is measured before it is sent).
fn write_response(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    headers: &str,
    mut body: impl Read + Len,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let length = body.len()?;
    let mut out = BufWriter::new(stream);
    write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n{headers}\
         Content-Length: {length}\r\nConnection: close\r\n\r\n"
    )?;
    // No more than the length said, should a file have grown since it was measured (one that
    // shrank ends early, and the client sees the connection close short of the length).
    std::io::copy(&mut (&mut body).take(length), &mut out)?;
    out.flush()
}

/// A body's length in bytes, known before it is sent.
trait Len {
    fn len(&self) -> std::io::Result<u64>;
}

impl Len for &[u8] {
    fn len(&self) -> std::io::Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }
}

impl Len for std::fs::File {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair: the client's end and the server's.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (client, listener.accept().unwrap().0)
    }

    #[test]
    fn a_request_is_read_whole_or_refused_in_time() {
        let (mut client, mut server) = pair();
        let body = b"\x89PNG not really";
        let head = format!(
            "POST /search?k=2 HTTP/1.1\r\nHost: x\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        // Head and body in pieces, the body split across reads.
        let writer = std::thread::spawn(move || {
            client.write_all(&head.as_bytes()[..10]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            client.write_all(&head.as_bytes()[10..]).unwrap();
            client.write_all(&body[..4]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            client.write_all(&body[4..]).unwrap();
            client
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let req = read_request(&mut server, deadline).unwrap();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("POST", "/search")
        );
        assert_eq!(req.query, [("k".to_owned(), "2".to_owned())]);
        assert_eq!(req.body, body);
        drop(writer.join().unwrap());

        // A client that trickles a byte every 50 ms never lets one read time out, but the
        // request as a whole must arrive by the deadline (without it, this would read on until
        // the trickle ends after 2 s and answer 400 for the closed connection).
        let (mut client, mut server) = pair();
        let trickle = std::thread::spawn(move || {
            for b in b"GET /search?q=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
                if client.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let late = read_request(&mut server, Instant::now() + Duration::from_millis(300));
        assert_eq!(late.unwrap_err().0, 408);
        drop(server);
        trickle.join().unwrap();

        // A body shorter than its length, then the connection closed.
        let (mut client, mut server) = pair();
        client
            .write_all(b"POST /search HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
            .unwrap();
        drop(client);
        let cut = read_request(&mut server, Instant::now() + Duration::from_secs(10));
        assert_eq!(cut.unwrap_err().0, 400);
    }

    #[test]
    fn only_loopback_hosts_are_loopback() {
        for host in [
            "localhost",
            "LOCALHOST:7860",
            "127.0.0.1",
            "127.0.0.1:7860",
            "127.9.9.9:1",
        ] {
            assert!(loopback(host), "{host}");
        }
        for host in ["[::1]:7860", "[::1]"] {
            assert!(loopback(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:7860",
            "10.0.0.2:7860",
            "[::2]:7860",
            "",
            ":80",
        ] {
            assert!(!loopback(host), "{host}");
        }
    }

    #[test]
    fn permits_bound_the_holders_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let permits = Permits::new(2);
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    let _permit = permits.take();
                    let held = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(held, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    now.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert_eq!(*permits.free.lock().unwrap(), 2);
    }

    #[test]
    fn the_query_cache_keeps_the_texts_last_asked() {
        let mut cache = TextCache::default();
        for i in 0..TEXT_CACHE {
            cache.put(&i.to_string(), &[i as f32]);
        }
        // Asked again: kept when the next one comes in, and the least recently asked goes.
        assert_eq!(cache.get("0"), Some(vec![0.0]));
        cache.put("new", &[-1.0]);
        assert_eq!(cache.entries.len(), TEXT_CACHE);
        assert_eq!(cache.get("0"), Some(vec![0.0]));
        assert_eq!(cache.get("1"), None);
        assert_eq!(cache.get("new"), Some(vec![-1.0]));
        assert_eq!(cache.hits, 3);
    }

    #[test]
    fn queries_are_form_decoded_as_utf8() {
        let q = parse_query("q=%E4%B8%80%E5%8F%AA%E5%B0%8F%E7%8C%AB&k=3&x=a+b%2Bc&&flag").unwrap();
        let pairs: Vec<(&str, &str)> = q.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [("q", "一只小猫"), ("k", "3"), ("x", "a b+c"), ("flag", "")]
        );
        // Raw UTF-8 in the target (some clients send it) is kept.
        assert_eq!(parse_query("q=小猫").unwrap()[0].1, "小猫");
        for bad in ["q=%", "q=%E", "q=%zz", "q=%+F", "q=%FF", "q=%E4%B8"] {
            assert_eq!(parse_query(bad).unwrap_err().0, 400, "{bad}");
        }
    }
}
