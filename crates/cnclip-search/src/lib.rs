//! The query side of cnclip: open an index (even while a build writes to it), search it by vector,
//! by text or by image, and get ranked file paths with cosine scores.
//!
//! [`Searcher::open`] takes no lock: it reads the index's reader log (every batch the builder has
//! committed, see `cnclip_index::view`) and the current HNSW graph snapshot, if there is one. A
//! search asks the graph for the nearest live vectors (vectors removed since the snapshot are
//! filtered out), scans the vectors added since the snapshot exactly, and merges the two; small
//! indexes have no graph and are scanned exactly. [`Searcher::refresh`] picks up batches committed
//! since, so a long-running backend sees a build's progress without reopening; when a build has
//! written a new graph snapshot, [`Searcher::needs_reopen`] says so, and a server can open the new
//! one beside the searcher in use (as `cnclip-search --serve` does) instead of stalling queries.
//!
//! Query encoding is behind [`QueryEncoder`], implemented on top of the model crate: text →
//! tokenize → text tower, image → preprocess → vision tower. [`Searcher::search_similar`] needs no
//! encoder: it searches from the vector the index holds for one of its photos. Scores are cosines
//! of L2-normalized vectors (the official "similarity" is `logit_scale.exp()` × this).
//!
//! Queries can be combined ([`combine`]: "this photo, but at night" is an image's vector plus a
//! text's). A search can be confined to some folders ([`Scope`],
//! [`Searcher::search_vector_in`]): one user's library in a shared index, one trip. Confined
//! searches are exact: they score every vector in scope, the graph's or not, and so cost in
//! proportion to the index, as an exact scan does (at 100k vectors of 512 values on the 2-core
//! build machine: 4.3 ms with a tenth of them in scope, against 5.8 ms through the graph
//! unconfined and 11.5 ms for an exact scan of all).
//!
//! ```
//! use cnclip_index::{FakeEmbedder, ImageEmbedder, Index, Indexer, Silent};
//! use cnclip_search::Searcher;
//!
//! let photos = tempfile::tempdir()?;
//! for (name, rgb) in [("red.png", [220, 20, 20]), ("green.png", [20, 220, 20])] {
//!     image::RgbImage::from_pixel(8, 8, image::Rgb(rgb)).save(photos.path().join(name))?;
//! }
//! let dir = tempfile::tempdir()?;
//! let embedder = FakeEmbedder::new(16);
//! let mut index = Index::open_or_create(dir.path(), &embedder.identity())?;
//! Indexer::new(&mut index).build(photos.path(), &embedder, &Silent)?;
//!
//! let searcher = Searcher::open(dir.path())?;
//! // The fake model's vector of the red image, as a query:
//! let red = std::fs::read(photos.path().join("red.png"))?;
//! let prepared = embedder.prepare("red.png".as_ref(), &red)?;
//! let query = embedder.embed(&[prepared]).expect("the fake always embeds").remove(0);
//! let hits = searcher.search_vector(&query, 1)?;
//! assert!(hits[0].path.ends_with("red.png"));
//! assert!((hits[0].score - 1.0).abs() < 1e-5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use cnclip_index::graph::{self, FlatVectors, Graph, Manifest};
use cnclip_index::view::{ViewOp, ViewReader};

pub use cnclip_index::{default_index_path, EmbedError, Error, ModelIdentity, Result};

/// One result.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Hit {
    /// 1-based rank.
    pub rank: usize,
    /// Cosine similarity of the query and the image, in `[-1, 1]`.
    pub score: f32,
    /// The image file (absolute; serialized lossily when it is not UTF-8).
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
}

fn lossy_path<S: serde::Serializer>(p: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// Which indexed images a search may answer with: all of them, or those under some folders (a
/// user's library on a shared NAS, one trip, one album's folder).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// `None`: everything. Else absolute paths without a trailing `/`.
    under: Option<Vec<PathBuf>>,
}

impl Scope {
    /// Every image in the index.
    pub fn all() -> Scope {
        Scope::default()
    }

    /// The images at or under any of `paths` (folders or files; absolute, as indexed: canonical
    /// paths), compared component by component: `/photos/a` holds `/photos/a/x.jpg`, not
    /// `/photos/ab.jpg`. No paths: no image.
    pub fn under<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Scope {
        // Components: no trailing `/`, no `.` (`/photos/./a/` is `/photos/a`).
        let under = (paths.into_iter())
            .map(|p| p.as_ref().components().collect())
            .collect();
        Scope { under: Some(under) }
    }

    /// Whether every image is in scope.
    pub fn is_all(&self) -> bool {
        self.under.is_none()
    }

    /// Whether the image at `path` (as indexed) is in scope.
    pub fn admits(&self, path: &Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        self.admits_bytes(path.as_os_str().as_bytes())
    }

    fn admits_bytes(&self, path: &[u8]) -> bool {
        use std::os::unix::ffi::OsStrExt;
        match &self.under {
            None => true,
            Some(roots) => {
                (roots.iter()).any(|r| cnclip_index::is_under(path, r.as_os_str().as_bytes()))
            }
        }
    }
}

/// Query arithmetic: `base` plus every vector of `add` minus every vector of `subtract`, each
/// L2-normalised first so that each counts alike — "this photo, but at night": an image's vector
/// plus the text 夜晚's; "cats, not indoors": 猫 minus 室内. Not normalised (the searcher does
/// that); [`Error::WrongDimension`] when the vectors differ in length.
pub fn combine(base: &[f32], add: &[Vec<f32>], subtract: &[Vec<f32>]) -> Result<Vec<f32>> {
    let mut sum = vec![0f32; base.len()];
    let parts = std::iter::once((1.0, base))
        .chain(add.iter().map(|v| (1.0, v.as_slice())))
        .chain(subtract.iter().map(|v| (-1.0, v.as_slice())));
    for (sign, v) in parts {
        if v.len() != base.len() {
            return Err(Error::WrongDimension {
                expected: base.len(),
                got: v.len(),
            });
        }
        let norm = cnclip_index::dot(v, v).sqrt();
        if norm > 0.0 {
            for (s, x) in sum.iter_mut().zip(v) {
                *s += sign * x / norm;
            }
        }
    }
    Ok(sum)
}

/// Turns queries into vectors in the index's embedding space: the model's text and vision towers.
/// Vectors may have any norm (the searcher normalizes).
pub trait QueryEncoder {
    /// The model this encoder stands for; it must match the index.
    fn identity(&self) -> ModelIdentity;
    /// Encodes a (Chinese) text query.
    fn encode_text(&self, text: &str) -> std::result::Result<Vec<f32>, EmbedError>;
    /// Encodes an image file as a query.
    fn encode_image(&self, path: &Path) -> std::result::Result<Vec<f32>, EmbedError>;
}

/// What the reader log says, replayed.
#[derive(Debug, Default)]
struct State {
    paths: HashMap<Vec<u8>, u64>,
    by_vid: HashMap<u64, Vec<Vec<u8>>>,
    live: HashSet<u64>,
    /// Live vectors the graph does not hold: scanned exactly.
    delta: FlatVectors,
}

impl State {
    fn apply(&mut self, op: ViewOp, graph: Option<&Graph>) {
        match op {
            ViewOp::AddVector { vid, vector } => {
                self.live.insert(vid);
                if !graph.is_some_and(|g| g.contains(vid)) {
                    self.delta.insert(vid, &vector);
                }
            }
            ViewOp::RemoveVector { vid } => {
                self.live.remove(&vid);
                self.delta.remove(vid);
            }
            ViewOp::SetPath { path, vid } => {
                if let Some(old) = self.paths.insert(path.clone(), vid) {
                    self.unlink(old, &path);
                }
                self.by_vid.entry(vid).or_default().push(path);
            }
            ViewOp::RemovePath { path } => {
                if let Some(old) = self.paths.remove(&path) {
                    self.unlink(old, &path);
                }
            }
        }
    }

    fn unlink(&mut self, vid: u64, path: &[u8]) {
        if let Some(list) = self.by_vid.get_mut(&vid) {
            list.retain(|p| p != path);
            if list.is_empty() {
                self.by_vid.remove(&vid);
            }
        }
    }
}

/// A read-only view of an index, for searching.
#[derive(Debug)]
pub struct Searcher {
    dir: PathBuf,
    view: ViewReader,
    identity: ModelIdentity,
    graph: Option<(Manifest, Graph)>,
    /// The snapshot (`Manifest::dir`) the graph was last loaded from, or tried and found
    /// damaged: a damaged one is not tried again until a build replaces it.
    graph_seen: Option<String>,
    state: State,
    warnings: Vec<String>,
    ef_search: Option<usize>,
    use_graph: bool,
}

impl Searcher {
    /// Opens the index in `dir` for searching. Needs no lock: works while a build runs, and sees
    /// everything it has committed. Loads the HNSW graph snapshot if there is one: right for a
    /// process that answers many queries.
    pub fn open(dir: &Path) -> Result<Searcher> {
        Searcher::open_with(dir, true)
    }

    /// Opens the index without its graph: every search scans all vectors exactly. Right for a
    /// process that answers one query — loading a graph snapshot costs more than hundreds of exact
    /// scans (measured at 100k vectors of 512 dims: 1.7 s to load, 10 ms per exact scan), and the
    /// answers are the exact ones.
    pub fn open_exact(dir: &Path) -> Result<Searcher> {
        Searcher::open_with(dir, false)
    }

    fn open_with(dir: &Path, use_graph: bool) -> Result<Searcher> {
        let view = ViewReader::open(dir)?;
        let identity = view.header().identity.clone();
        let mut s = Searcher {
            dir: dir.into(),
            state: State {
                delta: FlatVectors::new(identity.dim),
                ..Default::default()
            },
            identity,
            view,
            graph: None,
            graph_seen: None,
            warnings: Vec::new(),
            ef_search: None,
            use_graph,
        };
        if use_graph {
            s.load_graph();
        }
        s.read_view()?;
        Ok(s)
    }

    fn load_graph(&mut self) {
        let uuid = self.view.header().uuid.clone();
        self.graph_seen = graph::read_manifest(&self.dir)
            .ok()
            .flatten()
            .map(|m| m.dir);
        // The writer deletes the previous snapshot right after switching: retry on a vanished file.
        for attempt in 0..3 {
            match graph::load_snapshot(&self.dir, &uuid, self.identity.dim) {
                Ok(g) => {
                    self.graph_seen = g.as_ref().map(|(m, _)| m.dir.clone());
                    self.graph = g;
                    if let (Some(ef), Some((_, g))) = (self.ef_search, self.graph.as_mut()) {
                        g.set_ef_search(ef);
                    }
                    return;
                }
                Err(Error::Io { .. }) if attempt < 2 => continue,
                Err(e) => {
                    self.warnings
                        .push(format!("{e}; searching exactly until it is rebuilt"));
                    self.graph = None;
                    return;
                }
            }
        }
    }

    fn read_view(&mut self) -> Result<usize> {
        let (state, graph) = (&mut self.state, self.graph.as_ref().map(|(_, g)| g));
        self.view.read_new(&mut |op| state.apply(op, graph))
    }

    /// Picks up what was committed since: new batches of the reader log, a rewritten log, a new
    /// graph snapshot. Returns whether anything changed.
    pub fn refresh(&mut self) -> Result<bool> {
        if self.needs_reopen() {
            let ef = self.ef_search;
            *self = Searcher::open_with(&self.dir, self.use_graph)?;
            if let Some(ef) = ef {
                self.set_ef_search(ef);
            }
            return Ok(true);
        }
        Ok(self.read_view()? > 0)
    }

    /// Whether [`Searcher::refresh`] would open the index anew (its reader log was rewritten, or a
    /// new graph snapshot replaced the one loaded) rather than read the batches added since.
    /// Opening anew costs as much as [`Searcher::open`] (seconds for a large graph), so a server
    /// answering queries meanwhile opens a fresh searcher beside this one and swaps it in.
    pub fn needs_reopen(&self) -> bool {
        let current = graph::read_manifest(&self.dir)
            .ok()
            .flatten()
            .map(|m| m.dir);
        self.view.is_replaced() || (self.use_graph && current != self.graph_seen)
    }

    /// The index directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The model the index was built with (queries must be encoded with it).
    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    /// Indexed images.
    pub fn len(&self) -> usize {
        self.state.paths.len()
    }

    /// Whether the index holds no image.
    pub fn is_empty(&self) -> bool {
        self.state.paths.is_empty()
    }

    /// Whether `path` (absolute, as indexed) is in the index.
    pub fn contains(&self, path: &Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        self.state.paths.contains_key(path.as_os_str().as_bytes())
    }

    /// Distinct vectors.
    pub fn vectors(&self) -> usize {
        self.state.live.len()
    }

    /// Whether searches go through an HNSW graph (else they scan exactly).
    pub fn uses_graph(&self) -> bool {
        self.graph.is_some()
    }

    /// Vectors scanned exactly on every search (all of them without a graph; those added since the
    /// snapshot with one).
    pub fn exact_vectors(&self) -> usize {
        self.state.delta.len()
    }

    /// Problems met while opening that searches work around (e.g. a damaged graph snapshot).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// HNSW search candidate list size (default `cnclip_index::graph::DEFAULT_EF_SEARCH`, at least
    /// `2k`): higher is slower and closer to exact.
    pub fn set_ef_search(&mut self, ef: usize) {
        self.ef_search = Some(ef);
        if let Some((_, g)) = self.graph.as_mut() {
            g.set_ef_search(ef);
        }
    }

    /// The `k` images most similar to `query` (any norm; the index's dimension), best first.
    pub fn search_vector(&self, query: &[f32], k: usize) -> Result<Vec<Hit>> {
        self.search_vector_in(query, k, &Scope::all())
    }

    /// [`Searcher::search_vector`] among the images `scope` admits. A confined search is exact:
    /// it scores every vector in scope (the graph's neighbourhoods lead through images that do not
    /// count), at a cost in proportion to the index (see the crate's overview).
    pub fn search_vector_in(&self, query: &[f32], k: usize, scope: &Scope) -> Result<Vec<Hit>> {
        if query.len() != self.identity.dim {
            return Err(Error::WrongDimension {
                expected: self.identity.dim,
                got: query.len(),
            });
        }
        let mut q = query.to_vec();
        if cnclip_index::normalize(&mut q).is_none() {
            return Err(Error::Embed(
                "the query vector is zero or not finite".into(),
            ));
        }
        // No more hits than images (and no heap sized for a `k` of billions).
        let k = k.min(self.state.paths.len());
        let live = |vid: u64| self.state.live.contains(&vid);
        let mut cands = if scope.is_all() {
            let mut cands = self.state.delta.search(&q, k);
            if let Some((_, g)) = &self.graph {
                cands.extend(g.search(&q, k, &live));
            }
            cands
        } else {
            // The vectors of the images in scope: every one of them gives at least one hit.
            let in_scope: HashSet<u64> = (self.state.paths.iter())
                .filter(|(path, _)| scope.admits_bytes(path))
                .map(|(_, vid)| *vid)
                .collect();
            let keep = |vid: u64| in_scope.contains(&vid);
            let mut cands = self.state.delta.search_where(&q, k, keep);
            if let Some((_, g)) = &self.graph {
                cands.extend(g.scan(&q, k, |vid| keep(vid) && live(vid)));
            }
            cands
        };
        cands.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        cands.dedup_by_key(|c| c.0);
        let mut hits = Vec::with_capacity(k);
        for (vid, score) in cands {
            let Some(paths) = self.state.by_vid.get(&vid) else {
                continue;
            };
            let mut paths: Vec<&Vec<u8>> = paths.iter().filter(|p| scope.admits_bytes(p)).collect();
            paths.sort();
            for p in paths {
                if hits.len() == k {
                    return Ok(hits);
                }
                hits.push(Hit {
                    rank: hits.len() + 1,
                    score: score.clamp(-1.0, 1.0),
                    path: PathBuf::from(OsString::from_vec(p.clone())),
                });
            }
        }
        Ok(hits)
    }

    /// The vector the index holds for the image at `path` (absolute, as indexed): `None` when it is
    /// not in the index. It is the image as it was when indexed, whatever the file is now.
    pub fn vector_of(&self, path: &Path) -> Option<Vec<f32>> {
        use std::os::unix::ffi::OsStrExt;
        let vid = *self.state.paths.get(path.as_os_str().as_bytes())?;
        match self.state.delta.get(vid) {
            Some(v) => Some(v.to_vec()),
            None => self.graph.as_ref()?.1.vector(vid),
        }
    }

    /// The `k` images most like the indexed image at `path`, from the vector the index holds for
    /// it: no model runs. The image itself comes first (with any identical copies), at a cosine
    /// of 1. [`Error::NotIndexed`] when `path` is not in the index.
    pub fn search_similar(&self, path: &Path, k: usize) -> Result<Vec<Hit>> {
        self.search_similar_in(path, k, &Scope::all())
    }

    /// [`Searcher::search_similar`] among the images `scope` admits (the photo itself only if it
    /// is in scope).
    pub fn search_similar_in(&self, path: &Path, k: usize, scope: &Scope) -> Result<Vec<Hit>> {
        let v = self.vector_of(path).ok_or_else(|| Error::NotIndexed {
            path: path.to_path_buf(),
        })?;
        self.search_vector_in(&v, k, scope)
    }

    fn check_encoder<Q: QueryEncoder>(&self, encoder: &Q) -> Result<()> {
        let theirs = encoder.identity();
        if self.identity.compatible(&theirs) {
            Ok(())
        } else {
            Err(Error::IdentityMismatch {
                path: self.dir.clone(),
                found: Box::new(self.identity.clone()),
                wanted: Box::new(theirs),
            })
        }
    }

    /// The `k` images that best match a text query; [`Error::EmptyQuery`] for one that is only
    /// white space (the model would encode it, and every answer would be noise).
    pub fn search_text<Q: QueryEncoder>(
        &self,
        encoder: &Q,
        text: &str,
        k: usize,
    ) -> Result<Vec<Hit>> {
        self.search_text_in(encoder, text, k, &Scope::all())
    }

    /// [`Searcher::search_text`] among the images `scope` admits.
    pub fn search_text_in<Q: QueryEncoder>(
        &self,
        encoder: &Q,
        text: &str,
        k: usize,
        scope: &Scope,
    ) -> Result<Vec<Hit>> {
        self.check_encoder(encoder)?;
        if text.trim().is_empty() {
            return Err(Error::EmptyQuery);
        }
        let v = encoder.encode_text(text).map_err(Error::Embed)?;
        self.search_vector_in(&v, k, scope)
    }

    /// The `k` images most similar to the image at `path`.
    pub fn search_image<Q: QueryEncoder>(
        &self,
        encoder: &Q,
        path: &Path,
        k: usize,
    ) -> Result<Vec<Hit>> {
        self.search_image_in(encoder, path, k, &Scope::all())
    }

    /// [`Searcher::search_image`] among the images `scope` admits.
    pub fn search_image_in<Q: QueryEncoder>(
        &self,
        encoder: &Q,
        path: &Path,
        k: usize,
        scope: &Scope,
    ) -> Result<Vec<Hit>> {
        self.check_encoder(encoder)?;
        let v = encoder.encode_image(path).map_err(Error::Embed)?;
        self.search_vector_in(&v, k, scope)
    }
}
