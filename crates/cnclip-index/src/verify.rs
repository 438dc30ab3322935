//! `Index::verify`: records, vectors, change sequence, reader log and graph agree.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::embed::dot;
use crate::error::Result;
use crate::graph;
use crate::index::Index;
use crate::store::{Change, Hash};
use crate::view::{ViewOp, ViewReader};

/// What [`Index::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct VerifyReport {
    /// Records checked.
    pub images: usize,
    /// Vectors checked.
    pub vectors: usize,
    /// Points in the graph snapshot, if there is one.
    pub graph_points: Option<usize>,
    /// Disagreements: the index is damaged when there is any.
    pub problems: Vec<String>,
    /// Facts worth knowing that are not damage (e.g. vectors waiting for the next graph snapshot).
    pub notes: Vec<String>,
}

impl VerifyReport {
    /// Whether everything agrees.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Reports at most this many problems of one kind, then a count.
const MAX_EACH: usize = 20;

impl Index {
    /// Reads everything and checks that it agrees: every record's content has a vector and the
    /// reference counts are right, every vector is referenced, normalized and of the right
    /// dimension, the change sequence is contiguous, the reader log replays to exactly sled's state,
    /// and the graph snapshot loads, matches its checksums and, with the pending changes, covers
    /// every live vector.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut r = VerifyReport::default();
        let mut problems: HashMap<&'static str, usize> = HashMap::new();
        let mut problem = |r: &mut VerifyReport, kind: &'static str, msg: String| {
            let n = problems.entry(kind).or_default();
            *n += 1;
            if *n <= MAX_EACH {
                r.problems.push(msg);
            } else if *n == MAX_EACH + 1 {
                r.problems
                    .push(format!("(more {kind} problems not listed)"));
            }
        };
        let store = &self.store;
        let c = store.counters();
        let dim = store.identity().dim;

        let mut refs: HashMap<Hash, u64> = HashMap::new();
        let mut path_hash: HashMap<Vec<u8>, Hash> = HashMap::new();
        let mut record_ids = HashSet::new();
        for rec in store.records(&[]) {
            let (path, rec) = rec?;
            *refs.entry(rec.hash).or_default() += 1;
            if !record_ids.insert(rec.id) {
                let p = String::from_utf8_lossy(&path).into_owned();
                problem(
                    &mut r,
                    "record",
                    format!("record id {} is used twice ({p})", rec.id),
                );
            }
            path_hash.insert(path, rec.hash);
        }
        r.images = path_hash.len();
        if r.images as u64 != c.records {
            let msg = format!("{} records, meta counts {}", r.images, c.records);
            problem(&mut r, "count", msg);
        }

        let mut hash_vid: HashMap<Hash, u64> = HashMap::new();
        let mut vid_hash: HashMap<u64, Hash> = HashMap::new();
        for e in store.hashes() {
            let (h, e) = e?;
            let counted = refs.remove(&h).unwrap_or(0);
            if counted != e.refs {
                let msg = format!(
                    "content {} has {} records, its entry says {}",
                    hex(&h),
                    counted,
                    e.refs
                );
                problem(&mut r, "refs", msg);
            }
            if vid_hash.insert(e.vid, h).is_some() {
                problem(
                    &mut r,
                    "vid",
                    format!("vector {} serves two contents", e.vid),
                );
            }
            hash_vid.insert(h, e.vid);
        }
        for (h, n) in refs {
            let msg = format!(
                "{n} records point at content {} which has no vector",
                hex(&h)
            );
            problem(&mut r, "refs", msg);
        }

        let mut vectors: HashMap<u64, Vec<f32>> = HashMap::new();
        for v in store.vectors() {
            let (vid, h, v) = v?;
            if vid_hash.get(&vid) != Some(&h) {
                problem(
                    &mut r,
                    "vector",
                    format!("vector {vid} is not referenced (orphan)"),
                );
            }
            if vid >= c.next_vid {
                problem(
                    &mut r,
                    "vector",
                    format!("vector id {vid} was never assigned"),
                );
            }
            let norm = dot(&v, &v);
            if v.len() != dim {
                let msg = format!("vector {vid} has {} values, the index {dim}", v.len());
                problem(&mut r, "vector", msg);
            } else if !norm.is_finite() || (norm - 1.0).abs() > 1e-3 {
                problem(
                    &mut r,
                    "vector",
                    format!("vector {vid} has squared norm {norm}"),
                );
            }
            vectors.insert(vid, v);
        }
        for vid in vid_hash.keys() {
            if !vectors.contains_key(vid) {
                problem(&mut r, "vector", format!("vector {vid} is missing"));
            }
        }
        r.vectors = vectors.len();
        if r.vectors as u64 != c.vectors {
            let msg = format!("{} vectors, meta counts {}", r.vectors, c.vectors);
            problem(&mut r, "count", msg);
        }

        // Change sequence: contiguous, within the counter.
        let mut pending_adds = HashSet::new();
        let mut prev: Option<u64> = None;
        let mut first: Option<u64> = None;
        for ch in store.changes() {
            let (seq, ch) = ch?;
            if seq > c.seq || prev.is_some_and(|p| seq != p + 1) {
                problem(&mut r, "change", format!("change sequence broken at {seq}"));
            }
            prev = Some(seq);
            first.get_or_insert(seq);
            match ch {
                Change::Add(v) => pending_adds.insert(v),
                Change::Remove(v) => pending_adds.remove(&v),
            };
        }

        // Reader log replays to sled's state.
        match ViewReader::open(self.path()) {
            Err(e) => problem(&mut r, "view", format!("reader log: {e}")),
            Ok(mut view) => {
                let mut vpaths: HashMap<Vec<u8>, u64> = HashMap::new();
                let mut vvecs: HashMap<u64, Vec<f32>> = HashMap::new();
                view.read_new(&mut |op| match op {
                    ViewOp::AddVector { vid, vector } => {
                        vvecs.insert(vid, vector);
                    }
                    ViewOp::RemoveVector { vid } => {
                        vvecs.remove(&vid);
                    }
                    ViewOp::SetPath { path, vid } => {
                        vpaths.insert(path, vid);
                    }
                    ViewOp::RemovePath { path } => {
                        vpaths.remove(&path);
                    }
                })?;
                if view.batch() != c.batch {
                    let msg = format!(
                        "reader log ends at batch {}, sled at {}",
                        view.batch(),
                        c.batch
                    );
                    problem(&mut r, "view", msg);
                }
                let sled_paths: HashMap<&Vec<u8>, Option<&u64>> = path_hash
                    .iter()
                    .map(|(p, h)| (p, hash_vid.get(h)))
                    .collect();
                let agree = vpaths.len() == sled_paths.len()
                    && vpaths
                        .iter()
                        .all(|(p, v)| sled_paths.get(p).copied().flatten() == Some(v));
                if !agree {
                    let msg = format!(
                        "reader log has {} paths, sled {} (or they point at other vectors)",
                        vpaths.len(),
                        sled_paths.len()
                    );
                    problem(&mut r, "view", msg);
                }
                if vvecs != vectors {
                    let msg = format!(
                        "reader log has {} vectors, sled {} (or their values differ)",
                        vvecs.len(),
                        vectors.len()
                    );
                    problem(&mut r, "view", msg);
                }
            }
        }

        // Graph: loads, and with the pending changes covers every live vector.
        match graph::load_snapshot(self.path(), store.uuid(), dim) {
            Err(e) => problem(&mut r, "graph", format!("{e} (the next build rebuilds it)")),
            Ok(None) => {
                if vectors.len() >= self.graph_policy().min_vectors {
                    r.notes.push(format!(
                        "no graph snapshot for {} vectors: searches scan exactly until the next \
                         build makes one",
                        vectors.len()
                    ));
                }
            }
            Ok(Some((m, g))) => {
                r.graph_points = Some(g.len());
                if m.seq > c.seq {
                    let msg = format!("graph covers change {}, sled has {}", m.seq, c.seq);
                    problem(&mut r, "graph", msg);
                }
                let covered = m.seq >= c.seq
                    || (first.is_some_and(|f| f <= m.seq + 1) && prev == Some(c.seq));
                if !covered {
                    let msg = format!(
                        "changes after {} are missing from the sequence (graph at {}, sled at {})",
                        m.seq, m.seq, c.seq
                    );
                    problem(&mut r, "graph", msg);
                }
                for id in g.ids() {
                    if *id >= c.next_vid {
                        problem(
                            &mut r,
                            "graph",
                            format!("graph point {id} was never a vector"),
                        );
                    }
                }
                let mut waiting = 0;
                for vid in vectors.keys() {
                    if !g.contains(*vid) {
                        if pending_adds.contains(vid) {
                            waiting += 1;
                        } else {
                            let msg = format!("vector {vid} is neither in the graph nor pending");
                            problem(&mut r, "graph", msg);
                        }
                    }
                }
                let tomb = g.ids().iter().filter(|i| !vectors.contains_key(i)).count();
                r.notes.push(format!(
                    "graph: {} points ({tomb} removed), {waiting} vectors waiting for the next \
                     snapshot (searched exactly)",
                    g.len()
                ));
            }
        }
        Ok(r)
    }
}

fn hex(h: &[u8]) -> String {
    h.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
