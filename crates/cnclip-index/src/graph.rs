//! The HNSW graph (hnsw_rs) and its durable snapshots, and exact search.
//!
//! The graph is derived data: sled holds the vectors, a snapshot saves rebuilding. A snapshot is a
//! directory `graph/g-<seq>-<nonce>/` holding hnsw_rs's two dump files, written under a temporary
//! name, fsynced and renamed into place; the pointer `graph/CURRENT` (JSON [`Manifest`]: directory,
//! change sequence number covered, CRC-32 and length of both files) is then replaced atomically.
//! The previous snapshot is deleted only after the switch — hnsw_rs's `file_dump` truncates in place
//! without fsync, so it never writes over a snapshot in use. A snapshot whose files do not match
//! the manifest's checksums is damaged and is rebuilt from the vectors; hnsw_rs's loader is only
//! ever handed files that passed that check.
//!
//! Distance: `1 − a·b` clamped at 0 ([`CosineDist`]). hnsw_rs's scalar `DistDot` asserts
//! `1 − a·b ≥ 0`, which rounding breaks on self-matches of normalized vectors (DESIGN §7).
//!
//! Removed vectors stay in the graph as tombstones (hnsw_rs cannot delete) and are filtered out
//! during search; the writer rebuilds the graph when they pass [`MAX_TOMBSTONE_FRACTION`].

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use hnsw_rs::prelude::{AnnT, Distance, Hnsw, HnswIo, Point};
use serde::{Deserialize, Serialize};

use crate::embed::dot;
use crate::error::{Error, Result};
use crate::fsutil::{crc_file, rename_durably, sync_dir, write_atomically};
use crate::identity::FORMAT_VERSION;

// Parameters measured on embedding-shaped 512-d vectors (a random 32-d subspace plus noise, see
// `benches/index.rs`) on a 2-core machine: ef_construction 200 instead of 100 costs 2.5× the build
// time for +0.001 recall; M 24 reaches the same recall at a lower ef but each step costs more.

/// Neighbours per node (hnsw_rs `max_nb_connection`).
pub const DEFAULT_M: usize = 16;
/// Candidate list size while inserting.
pub const DEFAULT_EF_CONSTRUCTION: usize = 100;
/// Candidate list size while searching (at least the number of results asked for). 200 gives
/// recall@10 0.9995 / 0.997 / 0.9925 / 0.9855 at 12.5k / 25k / 50k / 100k vectors (512-d).
pub const DEFAULT_EF_SEARCH: usize = 200;
/// Below this many vectors the writer keeps no graph and readers scan exactly. Measured (512-d,
/// k 10, ef 200, 2 cores): HNSW 3.2 / 3.6 / 5.2 / 6.4 ms per query against an exact scan's
/// 1.4 / 2.5 / 5.7 / 10.2 ms at 12.5k / 25k / 50k / 100k: exact is faster below about 50 000, and
/// exact.
pub const GRAPH_MIN_VECTORS: usize = 50_000;
/// Exact scans of at least this many vectors run on all cores.
pub const PARALLEL_SCAN_MIN: usize = 32_768;
/// The graph is rebuilt from the vectors when more than this fraction of its points are removed.
pub const MAX_TOMBSTONE_FRACTION: f64 = 0.1;

const SUBDIR: &str = "graph";
const POINTER: &str = "CURRENT";
const BASENAME: &str = "graph";

/// Cosine distance of L2-normalized vectors, `max(0, 1 − a·b)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CosineDist;

impl Distance<f32> for CosineDist {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// HNSW construction and search parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GraphParams {
    /// Neighbours per node.
    pub m: usize,
    /// Candidate list size while inserting.
    pub ef_construction: usize,
    /// Candidate list size while searching.
    pub ef_search: usize,
}

impl Default for GraphParams {
    fn default() -> Self {
        GraphParams {
            m: DEFAULT_M,
            ef_construction: DEFAULT_EF_CONSTRUCTION,
            ef_search: DEFAULT_EF_SEARCH,
        }
    }
}

/// An HNSW graph over vector ids.
pub struct Graph {
    hnsw: Hnsw<'static, f32, CosineDist>,
    ids: HashSet<u64>,
    ef_search: usize,
    /// The points in a list, gathered from hnsw_rs's layers when first needed (it finds points
    /// by its own ids only) and dropped when points are inserted.
    points: OnceLock<Points>,
}

/// hnsw_rs's points, listed.
struct Points {
    list: Vec<Arc<Point<'static, f32>>>,
    by_vid: HashMap<u64, usize>,
}

impl Points {
    fn new(list: Vec<Arc<Point<'static, f32>>>) -> Points {
        let by_vid = (list.iter().enumerate())
            .map(|(i, p)| (p.get_origin_id() as u64, i))
            .collect();
        Points { list, by_vid }
    }
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("points", &self.len())
            .finish()
    }
}

impl Graph {
    /// An empty graph sized for about `capacity` points.
    pub fn new(params: GraphParams, capacity: usize) -> Graph {
        Graph {
            hnsw: Hnsw::new(
                params.m,
                capacity.max(1),
                16,
                params.ef_construction,
                CosineDist,
            ),
            ids: HashSet::new(),
            ef_search: params.ef_search,
            points: OnceLock::new(),
        }
    }

    /// Inserts normalized vectors (in parallel, on rayon's pool).
    pub fn insert(&mut self, items: &[(u64, &[f32])]) {
        let data: Vec<(&[f32], usize)> = items.iter().map(|(id, v)| (*v, *id as usize)).collect();
        self.hnsw.parallel_insert_slice(&data);
        self.ids.extend(items.iter().map(|(id, _)| *id));
        self.points = OnceLock::new();
    }

    /// Number of points, tombstones included.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the graph has no points.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether vector `vid` is a point of the graph (live or tombstone).
    pub fn contains(&self, vid: u64) -> bool {
        self.ids.contains(&vid)
    }

    /// The ids of all points.
    pub fn ids(&self) -> &HashSet<u64> {
        &self.ids
    }

    /// The points, listed on first need: a walk of hnsw_rs's layers (at 100k points, one that
    /// also scored a tenth of them on the way took 9.3 ms).
    fn points(&self) -> &Points {
        (self.points)
            .get_or_init(|| Points::new(self.hnsw.get_point_indexation().into_iter().collect()))
    }

    /// The vector of point `vid`, as inserted.
    pub fn vector(&self, vid: u64) -> Option<Vec<f32>> {
        let points = self.points();
        let at = *points.by_vid.get(&vid)?;
        Some(points.list[at].get_v().to_vec())
    }

    /// The exact `k` best `(vid, cosine)` among the points for which `keep` holds, best first.
    /// Reads every point, as an exact scan does: for searches confined to part of the index,
    /// where the graph's neighbourhoods lead through points that do not count.
    /// Scans of [`PARALLEL_SCAN_MIN`] points or more are split across rayon's threads.
    pub fn scan(
        &self,
        query: &[f32],
        k: usize,
        keep: impl Fn(u64) -> bool + Sync,
    ) -> Vec<(u64, f32)> {
        let list = &self.points().list;
        best_of_chunks(list.len(), k, |range| {
            let mut top = TopK::new(k);
            for p in &list[range] {
                let vid = p.get_origin_id() as u64;
                if keep(vid) {
                    top.push(vid, dot(query, p.get_v()));
                }
            }
            top.into_sorted()
        })
    }

    /// Sets the search candidate list size.
    pub fn set_ef_search(&mut self, ef: usize) {
        self.ef_search = ef.max(1);
    }

    /// The `k` nearest points for which `live` holds, as `(vid, cosine)`, best first.
    ///
    /// Removed points are filtered from an unfiltered search's results, asking for more when too
    /// few survive. hnsw_rs's own `search_filter` gives up its early termination as soon as a
    /// filter is given and explores most of the graph (measured: slower than an exact scan at 20k
    /// points).
    pub fn search(&self, query: &[f32], k: usize, live: &dyn Fn(u64) -> bool) -> Vec<(u64, f32)> {
        let n = self.ids.len();
        if k == 0 || n == 0 {
            return Vec::new();
        }
        let mut want = (k + k / 8 + 4).min(n);
        loop {
            let found = self.hnsw.search(query, want, self.ef_search.max(want));
            let exhausted = found.len() < want || want >= n;
            let hits: Vec<(u64, f32)> = found
                .into_iter()
                .map(|nb| (nb.d_id as u64, 1.0 - nb.distance))
                .filter(|(id, _)| live(*id))
                .take(k)
                .collect();
            if hits.len() >= k || exhausted {
                return hits;
            }
            want = (want * 2).min(n);
        }
    }
}

/// What `graph/CURRENT` says about the current snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format of the snapshot.
    pub format: u32,
    /// The index's uuid.
    pub uuid: String,
    /// Snapshot directory name inside `graph/`.
    pub dir: String,
    /// hnsw_rs dump basename.
    pub basename: String,
    /// Change sequence number the snapshot includes (everything up to it).
    pub seq: u64,
    /// Points in the graph, tombstones included.
    pub points: usize,
    /// Live vectors when the snapshot was made.
    pub live: usize,
    /// Vector dimension.
    pub dim: usize,
    /// CRC-32 and length of `<basename>.hnsw.graph`.
    pub graph_crc: (u32, u64),
    /// CRC-32 and length of `<basename>.hnsw.data`.
    pub data_crc: (u32, u64),
}

fn graph_dir(index: &Path) -> PathBuf {
    index.join(SUBDIR)
}

/// Reads the snapshot pointer: `Ok(None)` when there is no snapshot.
pub fn read_manifest(index: &Path) -> Result<Option<Manifest>> {
    let path = graph_dir(index).join(POINTER);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::corrupt(&path, format!("graph pointer: {e}")))?;
    crate::store::check_format(&path, m.format)?;
    Ok(Some(m))
}

/// Checks a snapshot's files against its manifest (CRC-32 and length) without loading it.
pub fn check_files(index: &Path, m: &Manifest, uuid: &str, dim: usize) -> Result<()> {
    let dir = graph_dir(index).join(&m.dir);
    let damaged = |what: String| Error::corrupt(&dir, format!("graph snapshot: {what}"));
    if m.uuid != uuid || m.dim != dim {
        return Err(damaged("belongs to another index".into()));
    }
    for (suffix, want) in [("graph", m.graph_crc), ("data", m.data_crc)] {
        let file = dir.join(format!("{}.hnsw.{suffix}", m.basename));
        let got = crc_file(&file)?;
        if got != want {
            return Err(damaged(format!(
                "{} has checksum {:08x}/{} bytes, the manifest says {:08x}/{}",
                file.display(),
                got.0,
                got.1,
                want.0,
                want.1
            )));
        }
    }
    Ok(())
}

/// Loads the current snapshot after checking its files against the manifest. `Ok(None)` when there
/// is none; `Err(Corrupt)` when it is damaged or belongs to another index.
pub fn load_snapshot(index: &Path, uuid: &str, dim: usize) -> Result<Option<(Manifest, Graph)>> {
    let Some(m) = read_manifest(index)? else {
        return Ok(None);
    };
    check_files(index, &m, uuid, dim)?;
    let dir = graph_dir(index).join(&m.dir);
    let damaged = |what: String| Error::corrupt(&dir, format!("graph snapshot: {what}"));
    // hnsw_rs ties the graph's lifetime to its loader (for memory-mapped data, which we do not
    // use): the loader, a few hundred bytes, is leaked once per load so the graph can be owned.
    let io = Box::new(HnswIo::new(&dir, &m.basename));
    let loaded = catch_unwind(AssertUnwindSafe(move || load_leaked(io)))
        .map_err(|_| damaged("hnsw_rs panicked while loading it".into()))?
        .map_err(damaged)?;
    let list: Vec<_> = loaded.get_point_indexation().into_iter().collect();
    let ids: HashSet<u64> = list.iter().map(|p| p.get_origin_id() as u64).collect();
    let got_dim = loaded.get_point_indexation().get_data_dimension();
    if ids.len() != m.points || (m.points > 0 && got_dim != dim) {
        return Err(damaged(format!(
            "{} points of dimension {got_dim}, the manifest says {} of {dim}",
            ids.len(),
            m.points,
        )));
    }
    let graph = Graph {
        hnsw: loaded,
        ids,
        ef_search: DEFAULT_EF_SEARCH,
        // Listed now: the walk that found the ids did the work.
        points: OnceLock::from(Points::new(list)),
    };
    Ok(Some((m, graph)))
}

fn load_leaked(io: Box<HnswIo>) -> Result<Hnsw<'static, f32, CosineDist>, String> {
    Box::leak(io)
        .load_hnsw::<f32, CosineDist>()
        .map_err(|e| format!("{e:#}"))
}

/// Saves `graph` as the new current snapshot (covering change `seq`) and deletes the old one.
pub fn save_snapshot(
    index: &Path,
    graph: &Graph,
    seq: u64,
    live: usize,
    uuid: &str,
    dim: usize,
) -> Result<Manifest> {
    let gdir = graph_dir(index);
    fs::create_dir_all(&gdir).map_err(|e| Error::io(&gdir, e))?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!("g-{seq:012}-{:x}-{nonce:x}", std::process::id());
    let tmp = gdir.join(format!("{name}.tmp"));
    fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let basename = catch_unwind(AssertUnwindSafe(|| graph.hnsw.file_dump(&tmp, BASENAME)))
        .map_err(|_| Error::corrupt(&tmp, "hnsw_rs panicked while dumping the graph"))?
        .map_err(|e| Error::io(&tmp, std::io::Error::other(format!("{e:#}"))))?;
    let mut crcs = Vec::new();
    for suffix in ["graph", "data"] {
        let file = tmp.join(format!("{basename}.hnsw.{suffix}"));
        fs::File::open(&file)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&file, e))?;
        crcs.push(crc_file(&file)?);
    }
    sync_dir(&tmp)?;
    let fin = gdir.join(&name);
    rename_durably(&tmp, &fin)?;
    let m = Manifest {
        format: FORMAT_VERSION,
        uuid: uuid.into(),
        dir: name,
        basename,
        seq,
        points: graph.len(),
        live,
        dim,
        graph_crc: crcs[0],
        data_crc: crcs[1],
    };
    write_atomically(
        &gdir.join(POINTER),
        &serde_json::to_vec_pretty(&m).expect("serializable"),
    )?;
    remove_stale(index, Some(&m.dir));
    Ok(m)
}

/// Removes the snapshot pointer (the index goes back to exact search) and all snapshots.
pub fn remove_snapshot(index: &Path) -> Result<()> {
    let p = graph_dir(index).join(POINTER);
    match fs::remove_file(&p) {
        Ok(()) => sync_dir(&graph_dir(index))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&p, e)),
    }
    remove_stale(index, None);
    Ok(())
}

/// Deletes every snapshot directory but `keep` (leftovers of crashes and of earlier snapshots).
/// Best effort: a directory that cannot be removed now is removed next time.
pub fn remove_stale(index: &Path, keep: Option<&str>) {
    let Ok(entries) = fs::read_dir(graph_dir(index)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if name == POINTER || Some(name.to_string_lossy().as_ref()) == keep {
            continue;
        }
        if e.path().is_dir() {
            let _ = fs::remove_dir_all(e.path());
        } else if name.to_string_lossy().ends_with(".tmp") {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Vectors kept flat in memory and scanned exactly.
#[derive(Clone, Debug, Default)]
pub struct FlatVectors {
    dim: usize,
    ids: Vec<u64>,
    data: Vec<f32>,
    pos: HashMap<u64, usize>,
}

impl FlatVectors {
    /// Empty, for vectors of `dim` values.
    pub fn new(dim: usize) -> FlatVectors {
        FlatVectors {
            dim,
            ..Default::default()
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Adds (or replaces) vector `vid`.
    pub fn insert(&mut self, vid: u64, v: &[f32]) {
        debug_assert_eq!(v.len(), self.dim);
        if let Some(&p) = self.pos.get(&vid) {
            self.data[p * self.dim..(p + 1) * self.dim].copy_from_slice(v);
            return;
        }
        self.pos.insert(vid, self.ids.len());
        self.ids.push(vid);
        self.data.extend_from_slice(v);
    }

    /// Removes vector `vid` if present.
    pub fn remove(&mut self, vid: u64) {
        let Some(p) = self.pos.remove(&vid) else {
            return;
        };
        let last = self.ids.len() - 1;
        if p != last {
            let moved = self.ids[last];
            self.ids[p] = moved;
            self.data
                .copy_within(last * self.dim..(last + 1) * self.dim, p * self.dim);
            self.pos.insert(moved, p);
        }
        self.ids.pop();
        self.data.truncate(last * self.dim);
    }

    /// Vector `vid`, if present.
    pub fn get(&self, vid: u64) -> Option<&[f32]> {
        let p = *self.pos.get(&vid)?;
        Some(&self.data[p * self.dim..(p + 1) * self.dim])
    }

    /// Iterates `(vid, vector)`.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[f32])> {
        self.ids
            .iter()
            .copied()
            .zip(self.data.chunks_exact(self.dim.max(1)))
    }

    /// The exact `k` best `(vid, cosine)`, best first. Scans of [`PARALLEL_SCAN_MIN`] vectors
    /// or more are split across rayon's threads.
    pub fn search(&self, query: &[f32], k: usize) -> Vec<(u64, f32)> {
        self.search_where(query, k, |_| true)
    }

    /// [`FlatVectors::search`] among the vectors for which `keep` holds.
    pub fn search_where(
        &self,
        query: &[f32],
        k: usize,
        keep: impl Fn(u64) -> bool + Sync,
    ) -> Vec<(u64, f32)> {
        best_of_chunks(self.len(), k, |range| self.scan(range, query, k, &keep))
    }

    fn scan(
        &self,
        range: std::ops::Range<usize>,
        query: &[f32],
        k: usize,
        keep: &impl Fn(u64) -> bool,
    ) -> Vec<(u64, f32)> {
        let d = self.dim.max(1);
        let mut top = TopK::new(k);
        let data = &self.data[range.start * d..range.end * d];
        for (id, v) in self.ids[range].iter().zip(data.chunks_exact(d)) {
            if keep(*id) {
                top.push(*id, dot(query, v));
            }
        }
        top.into_sorted()
    }
}

/// The `k` best `(id, score)` of `n` items that `scan` scores range by range, best first: one
/// range below [`PARALLEL_SCAN_MIN`] items, else ranges split across rayon's threads.
fn best_of_chunks(
    n: usize,
    k: usize,
    scan: impl Fn(std::ops::Range<usize>) -> Vec<(u64, f32)> + Sync,
) -> Vec<(u64, f32)> {
    use rayon::prelude::*;
    const CHUNK: usize = 8192;
    if n < PARALLEL_SCAN_MIN {
        return scan(0..n);
    }
    let starts: Vec<usize> = (0..n).step_by(CHUNK).collect();
    let parts: Vec<Vec<(u64, f32)>> = starts
        .par_iter()
        .map(|&s| scan(s..(s + CHUNK).min(n)))
        .collect();
    let mut top = TopK::new(k);
    for (id, score) in parts.into_iter().flatten() {
        top.push(id, score);
    }
    top.into_sorted()
}

/// Keeps the `k` largest scores seen.
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Scored>,
}

/// A `(score, id)` ordered so that the heap's top is the worst kept.
#[derive(Clone, Copy, Debug)]
struct Scored(f32, u64);

impl PartialEq for Scored {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scored {
    fn cmp(&self, o: &Self) -> Ordering {
        // Worse = lower score, then higher id: the heap's max is the first to evict.
        o.0.total_cmp(&self.0).then(self.1.cmp(&o.1))
    }
}

impl TopK {
    /// Keeps at most `k`.
    pub fn new(k: usize) -> TopK {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    /// Offers one candidate.
    #[inline]
    pub fn push(&mut self, id: u64, score: f32) {
        if self.heap.len() < self.k {
            self.heap.push(Scored(score, id));
        } else if let Some(worst) = self.heap.peek() {
            if Scored(score, id) < *worst {
                self.heap.pop();
                self.heap.push(Scored(score, id));
            }
        }
    }

    /// Best first.
    pub fn into_sorted(self) -> Vec<(u64, f32)> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|s| (s.1, s.0))
            .collect()
    }
}
