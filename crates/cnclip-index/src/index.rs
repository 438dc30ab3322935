//! [`Index`]: an index directory opened for writing (it holds sled's lock).

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::graph::{self, Graph, GraphParams, GRAPH_MIN_VECTORS, MAX_TOMBSTONE_FRACTION};
use crate::identity::ModelIdentity;
use crate::report::{Phase, Reporter};
use crate::store::{db_path, Change, Record, Store, Txn};
use crate::view::ViewWriter;

/// When the writer keeps a graph and when it saves a new snapshot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GraphPolicy {
    /// HNSW parameters.
    pub params: GraphParams,
    /// No graph below this many vectors (readers scan exactly); an existing graph is dropped below
    /// half of it.
    pub min_vectors: usize,
    /// New vectors that may wait outside the snapshot (readers scan them exactly) before a new
    /// snapshot is written: at least this many, or 5% of the graph, whichever is more.
    pub max_pending: usize,
    /// Rebuild when removed points exceed this fraction of the graph.
    pub max_tombstones: f64,
}

impl Default for GraphPolicy {
    fn default() -> Self {
        GraphPolicy {
            params: GraphParams::default(),
            min_vectors: GRAPH_MIN_VECTORS,
            max_pending: 1_000,
            max_tombstones: MAX_TOMBSTONE_FRACTION,
        }
    }
}

/// What `cnclip-index status` shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    /// The index directory.
    #[serde(serialize_with = "crate::report::lossy_path")]
    pub path: PathBuf,
    /// Indexed image files.
    pub images: u64,
    /// Distinct vectors (files with identical content share one).
    pub vectors: u64,
    /// The model the index is bound to.
    pub identity: ModelIdentity,
    /// On-disk format version.
    pub format_version: u32,
    /// The graph snapshot, if there is one (below the exact-search threshold there is none).
    pub graph: Option<GraphStatus>,
    /// Vector additions and removals since the graph snapshot (0 without a graph).
    pub pending_changes: u64,
    /// Committed batches so far.
    pub batches: u64,
    /// Bytes the index directory takes on disk.
    pub disk_bytes: u64,
}

/// The graph snapshot as its manifest describes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GraphStatus {
    /// Points in the graph, removed ones included.
    pub points: usize,
    /// Live vectors when it was saved.
    pub live: usize,
    /// Change sequence number it covers.
    pub seq: u64,
}

/// An index opened for writing. One process at a time (sled's lock); readers use
/// `cnclip_search::Searcher`, which needs no lock.
pub struct Index {
    dir: PathBuf,
    pub(crate) store: Store,
    view: ViewWriter,
    policy: GraphPolicy,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("dir", &self.dir).finish()
    }
}

impl Index {
    /// Creates a new index in `dir` (created if missing; must be empty if it exists).
    pub fn create(dir: &Path, identity: &ModelIdentity) -> Result<Index> {
        // What a creation that crashed before the database was in place can leave behind.
        const LEFTOVERS: [&str; 3] = [crate::store::CREATING, "reader.log", "reader.log.tmp"];
        match fs::read_dir(dir) {
            Ok(it) => {
                for e in it {
                    let e = e.map_err(|e| Error::io(dir, e))?;
                    let name = e.file_name();
                    if !LEFTOVERS.iter().any(|l| name == *l) || db_path(dir).exists() {
                        return Err(Error::NotEmpty { path: dir.into() });
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            Err(e) => return Err(Error::io(dir, e)),
        }
        let store = Store::create(dir, identity, &new_uuid(dir))?;
        Self::finish_open(dir, store)
    }

    /// Opens an existing index, whatever model it was built with.
    pub fn open(dir: &Path) -> Result<Index> {
        let store = Store::open(dir)?;
        Self::finish_open(dir, store)
    }

    /// Opens an existing index, refusing one built with another model, dimension or preprocessing.
    pub fn open_for(dir: &Path, identity: &ModelIdentity) -> Result<Index> {
        let index = Self::open(dir)?;
        index.check_identity(identity)?;
        Ok(index)
    }

    /// Opens the index in `dir` for `identity`, creating it when there is none.
    pub fn open_or_create(dir: &Path, identity: &ModelIdentity) -> Result<Index> {
        if db_path(dir).is_dir() {
            Self::open_for(dir, identity)
        } else {
            Self::create(dir, identity)
        }
    }

    fn finish_open(dir: &Path, store: Store) -> Result<Index> {
        // The reader log must end where sled ends before anything is appended to it.
        let (view, _rewritten) = ViewWriter::open(&store)?;
        // Leftovers of snapshots interrupted by a crash.
        let current = graph::read_manifest(dir).ok().flatten().map(|m| m.dir);
        graph::remove_stale(dir, current.as_deref());
        Ok(Index {
            dir: dir.into(),
            store,
            view,
            policy: GraphPolicy::default(),
        })
    }

    /// Refuses `identity` unless it is compatible with the index's.
    pub fn check_identity(&self, identity: &ModelIdentity) -> Result<()> {
        let found = self.store.identity();
        if found.compatible(identity) {
            Ok(())
        } else {
            Err(Error::IdentityMismatch {
                path: self.dir.clone(),
                found: Box::new(found.clone()),
                wanted: Box::new(identity.clone()),
            })
        }
    }

    /// The index directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The model the index is bound to.
    pub fn identity(&self) -> &ModelIdentity {
        self.store.identity()
    }

    /// Changes when a graph is kept and refreshed (tests use small thresholds).
    pub fn set_graph_policy(&mut self, policy: GraphPolicy) {
        self.policy = policy;
    }

    /// The graph policy in force.
    pub fn graph_policy(&self) -> GraphPolicy {
        self.policy
    }

    /// The record of one file, if it is indexed.
    pub fn record(&self, path: &Path) -> Result<Option<Record>> {
        self.store.record(path.as_os_str().as_bytes())
    }

    /// Every indexed file and its record, sorted by path bytes.
    pub fn records(&self) -> Result<Vec<(PathBuf, Record)>> {
        use std::os::unix::ffi::OsStringExt;
        self.store
            .records(&[])
            .map(|r| r.map(|(p, rec)| (PathBuf::from(std::ffi::OsString::from_vec(p)), rec)))
            .collect()
    }

    /// Counts and identity, read from meta (cheap).
    pub fn status(&self) -> Result<Status> {
        let c = self.store.counters();
        let manifest = graph::read_manifest(&self.dir).ok().flatten();
        // Without a graph nothing waits for one (readers scan everything exactly).
        let pending = manifest.as_ref().map_or(0, |m| c.seq - m.seq.min(c.seq));
        Ok(Status {
            path: self.dir.clone(),
            images: c.records,
            vectors: c.vectors,
            identity: self.store.identity().clone(),
            format_version: self.store.format_version(),
            graph: manifest.map(|m| GraphStatus {
                points: m.points,
                live: m.live,
                seq: m.seq,
            }),
            pending_changes: pending,
            batches: c.batch,
            disk_bytes: crate::fsutil::dir_size(&self.dir),
        })
    }

    /// Removes every image at or under `path` (absolute, as indexed: a folder or one file; it need
    /// not exist any more — a library moved elsewhere, a drive retired), and the vectors no other
    /// image shares, then brings the graph up to date. Returns how many images were removed.
    /// Removals are committed in batches, durably, as a build's are: a kill loses none that was
    /// committed, and running it again finishes the job. A later build of a folder holding
    /// `path` indexes what is still there again.
    pub fn forget(&mut self, path: &Path, reporter: &dyn Reporter) -> Result<usize> {
        let gone = self.paths_under(path)?;
        self.remove_records(&gone)?;
        self.maybe_compact_view()?;
        self.sync_graph(reporter)?;
        Ok(gone.len())
    }

    /// How many images [`Index::forget`] would remove for `path`; nothing changes.
    pub fn count_under(&self, path: &Path) -> Result<usize> {
        Ok(self.paths_under(path)?.len())
    }

    /// The indexed paths at or under `path`.
    fn paths_under(&self, path: &Path) -> Result<Vec<Vec<u8>>> {
        // Components: no trailing `/`, no `.`.
        let root: PathBuf = path.components().collect();
        let root = root.as_os_str().as_bytes();
        let mut under = Vec::new();
        for r in self.store.records(root) {
            let (p, _) = r?;
            if crate::walk::is_under(&p, root) {
                under.push(p);
            }
        }
        Ok(under)
    }

    /// Removes these records (and vectors left without one), committed 1 024 at a time.
    pub(crate) fn remove_records(&mut self, paths: &[Vec<u8>]) -> Result<()> {
        for chunk in paths.chunks(1024) {
            let mut txn = self.txn();
            for p in chunk {
                txn.remove_record(p)?;
            }
            let pending = txn.finish()?;
            self.commit(pending)?;
        }
        Ok(())
    }

    pub(crate) fn txn(&self) -> Txn<'_> {
        self.store.txn()
    }

    /// Commits a batch: sled apply + flush (durable), then the reader log.
    pub(crate) fn commit(&mut self, pending: crate::store::Pending) -> Result<u64> {
        let (batch, ops) = self.store.commit(pending)?;
        self.view.append(batch, &ops)?;
        Ok(batch)
    }

    /// Rewrites the reader log when dead entries dominate it.
    pub(crate) fn maybe_compact_view(&mut self) -> Result<()> {
        let live = self.store.counters().view_live_bytes;
        if self.view.len() > 2 * live + (64 << 10) {
            self.view = ViewWriter::rewrite(&self.store)?;
        }
        Ok(())
    }

    /// Brings the graph snapshot up to date with the stored vectors, per the [`GraphPolicy`]:
    /// creates, extends, rebuilds or drops it. Readers keep working throughout (they switch to the
    /// new snapshot when they next open or refresh).
    pub fn sync_graph(&mut self, reporter: &dyn Reporter) -> Result<()> {
        let c = self.store.counters();
        let live = c.vectors as usize;
        let p = self.policy;
        let dim = self.store.identity().dim;
        let uuid = self.store.uuid().to_string();
        // A pointer that cannot be read is a damaged snapshot: rebuilt below.
        let manifest = graph::read_manifest(&self.dir).unwrap_or(None);
        let want = live >= p.min_vectors || (manifest.is_some() && 2 * live >= p.min_vectors);
        if !want {
            if manifest.is_some() {
                graph::remove_snapshot(&self.dir)?;
            }
            return self.store.truncate_changes(c.seq);
        }
        // Decide from the manifest and the change sequence; load the graph only to extend it.
        let plan = match &manifest {
            Some(m) if m.uuid == uuid && m.dim == dim && m.seq <= c.seq => {
                self.adds_since(m.seq, c.seq)?.map(|adds| (m.points, adds))
            }
            _ => None,
        };
        if let Some((points_before, adds)) = plan {
            let points = points_before + adds.len();
            let tombstones = points.saturating_sub(live);
            if (tombstones as f64) <= p.max_tombstones * points as f64 {
                let intact = manifest
                    .as_ref()
                    .is_some_and(|m| graph::check_files(&self.dir, m, &uuid, dim).is_ok());
                if intact && adds.len() <= p.max_pending.max(points_before / 20) {
                    return Ok(()); // readers scan the few pending vectors exactly
                }
                if let Ok(Some((_, mut g))) = graph::load_snapshot(&self.dir, &uuid, dim) {
                    reporter.phase(Phase::Graph {
                        pending: adds.len(),
                        rebuild: false,
                    });
                    let mut items = Vec::with_capacity(adds.len());
                    for vid in adds {
                        if let Some((_, v)) = self.store.vector(vid)? {
                            items.push((vid, v));
                        }
                    }
                    insert_reporting(&mut g, &items, reporter);
                    graph::save_snapshot(&self.dir, &g, c.seq, live, &uuid, dim)?;
                    return self.store.truncate_changes(c.seq);
                }
            }
        }
        self.rebuild_graph(reporter)
    }

    /// Vector ids added after change `from` (up to `to`) and still live — none of them is in a
    /// snapshot taken at `from`, since ids are never reused. `None` when the change sequence does
    /// not cover that range (the graph must be rebuilt).
    fn adds_since(&self, from: u64, to: u64) -> Result<Option<Vec<u64>>> {
        let mut adds = Vec::new();
        let mut removed = std::collections::HashSet::new();
        let mut expect = from + 1;
        for r in self.store.changes() {
            let (seq, change) = r?;
            if seq <= from {
                continue;
            }
            if seq != expect {
                return Ok(None);
            }
            expect += 1;
            match change {
                Change::Add(vid) => adds.push(vid),
                Change::Remove(vid) => {
                    removed.insert(vid);
                }
            }
        }
        adds.retain(|v| !removed.contains(v));
        Ok((expect == to + 1).then_some(adds))
    }

    /// Builds the graph from all stored vectors and saves it as the snapshot.
    pub fn rebuild_graph(&mut self, reporter: &dyn Reporter) -> Result<()> {
        let c = self.store.counters();
        let items: Vec<(u64, Vec<f32>)> = self
            .store
            .vectors()
            .map(|r| r.map(|(vid, _, v)| (vid, v)))
            .collect::<Result<_>>()?;
        reporter.phase(Phase::Graph {
            pending: items.len(),
            rebuild: true,
        });
        let mut g = Graph::new(self.policy.params, items.len());
        insert_reporting(&mut g, &items, reporter);
        let (uuid, dim) = (self.store.uuid().to_string(), self.store.identity().dim);
        graph::save_snapshot(&self.dir, &g, c.seq, items.len(), &uuid, dim)?;
        self.store.truncate_changes(c.seq)
    }
}

fn insert_reporting(g: &mut Graph, items: &[(u64, Vec<f32>)], reporter: &dyn Reporter) {
    let total = items.len();
    let mut done = 0;
    for chunk in items.chunks(2048) {
        let refs: Vec<(u64, &[f32])> = chunk.iter().map(|(id, v)| (*id, v.as_slice())).collect();
        g.insert(&refs);
        done += chunk.len();
        reporter.graph_progress(done, total);
    }
}

fn new_uuid(dir: &Path) -> String {
    let mut h = Sha256::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.update(now.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(dir.as_os_str().as_bytes());
    let r = std::collections::hash_map::RandomState::new();
    h.update(std::hash::BuildHasher::hash_one(&r, now).to_le_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
