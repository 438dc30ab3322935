//! Derived data repairs itself: a missing or damaged graph snapshot is rebuilt from sled, a reader
//! log that is behind, torn or damaged is rewritten; the graph follows additions and removals.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use cnclip_index::graph::{self, GRAPH_MIN_VECTORS};
use cnclip_index::{FakeEmbedder, GraphPolicy, ImageEmbedder, Index, Indexer, Silent};
use common::png;

fn policy() -> GraphPolicy {
    GraphPolicy {
        min_vectors: 40,
        max_pending: 0,
        ..GraphPolicy::default()
    }
}

fn setup(n: u64) -> (tempfile::TempDir, tempfile::TempDir, FakeEmbedder) {
    let photos = tempfile::tempdir().unwrap();
    for i in 0..n {
        png(photos.path(), &format!("p{i:03}.png"), i);
    }
    (photos, tempfile::tempdir().unwrap(), FakeEmbedder::new(16))
}

fn open(idx: &Path, e: &FakeEmbedder) -> Index {
    let mut index = Index::open_or_create(idx, &e.identity()).unwrap();
    index.set_graph_policy(policy());
    index
}

fn build(idx: &Path, photos: &Path, e: &FakeEmbedder) -> Index {
    let mut index = open(idx, e);
    Indexer::new(&mut index).build(photos, e, &Silent).unwrap();
    let v = index.verify().unwrap();
    assert!(v.is_ok(), "{:?}", v.problems);
    index
}

fn snapshot_files(idx: &Path) -> (PathBuf, PathBuf) {
    let m = graph::read_manifest(idx).unwrap().expect("a snapshot");
    let d = idx.join("graph").join(&m.dir);
    (
        d.join(format!("{}.hnsw.graph", m.basename)),
        d.join(format!("{}.hnsw.data", m.basename)),
    )
}

#[test]
fn graph_snapshot_is_made_above_the_threshold_and_follows_changes() {
    const {
        assert!(
            GRAPH_MIN_VECTORS >= 1000,
            "the default keeps small indexes exact"
        )
    };
    let (photos, idx, e) = setup(60);
    let index = build(idx.path(), photos.path(), &e);
    let g = index
        .status()
        .unwrap()
        .graph
        .expect("graph above min_vectors");
    assert_eq!((g.points, g.live), (60, 60));
    drop(index);

    // Additions are inserted into the loaded snapshot.
    for i in 60..70 {
        png(photos.path(), &format!("p{i:03}.png"), i);
    }
    let index = build(idx.path(), photos.path(), &e);
    let st = index.status().unwrap();
    assert_eq!(st.graph.as_ref().unwrap().points, 70);
    assert_eq!(st.pending_changes, 0);
    drop(index);

    // A few removals stay tombstones (pending, filtered by readers) ...
    for i in 0..3 {
        fs::remove_file(photos.path().join(format!("p{i:03}.png"))).unwrap();
    }
    let index = build(idx.path(), photos.path(), &e);
    let st = index.status().unwrap();
    assert_eq!(st.graph.as_ref().unwrap().points, 70);
    assert_eq!(st.pending_changes, 3);
    drop(index);

    // ... until they pass 10% of the graph: rebuilt without them.
    for i in 3..12 {
        fs::remove_file(photos.path().join(format!("p{i:03}.png"))).unwrap();
    }
    let index = build(idx.path(), photos.path(), &e);
    let st = index.status().unwrap();
    assert_eq!(st.graph.as_ref().unwrap().points, 58);
    assert_eq!(st.pending_changes, 0);
    drop(index);

    // Below half the threshold the graph is dropped: exact search.
    for i in 12..52 {
        fs::remove_file(photos.path().join(format!("p{i:03}.png"))).unwrap();
    }
    let index = build(idx.path(), photos.path(), &e);
    assert!(index.status().unwrap().graph.is_none());
    assert_eq!(fs::read_dir(idx.path().join("graph")).unwrap().count(), 0);
}

#[test]
fn missing_graph_is_rebuilt() {
    let (photos, idx, e) = setup(50);
    drop(build(idx.path(), photos.path(), &e));
    fs::remove_dir_all(idx.path().join("graph")).unwrap();
    let index = open(idx.path(), &e);
    assert!(index.verify().unwrap().is_ok(), "no graph is not damage");
    drop(index);
    let index = build(idx.path(), photos.path(), &e);
    assert_eq!(index.status().unwrap().graph.unwrap().points, 50);
    assert_eq!(
        e.embedded(),
        50,
        "rebuilt from stored vectors, not re-embedded"
    );
}

#[test]
fn corrupt_graph_is_detected_and_rebuilt() {
    let (photos, idx, e) = setup(50);
    drop(build(idx.path(), photos.path(), &e));
    for (which, at) in [(1, 100usize), (0, 40)] {
        let files = snapshot_files(idx.path());
        let file = if which == 0 { &files.0 } else { &files.1 };
        let mut bytes = fs::read(file).unwrap();
        bytes[at] ^= 0x5a;
        fs::write(file, &bytes).unwrap();
        let index = open(idx.path(), &e);
        let v = index.verify().unwrap();
        assert!(
            v.problems.iter().any(|p| p.contains("checksum")),
            "{:?}",
            v.problems
        );
        drop(index);
        let index = build(idx.path(), photos.path(), &e);
        assert_eq!(index.status().unwrap().graph.unwrap().points, 50);
    }
    // A truncated dump and a garbage pointer too.
    let (_, data_file) = snapshot_files(idx.path());
    let len = fs::metadata(&data_file).unwrap().len();
    fs::File::options()
        .write(true)
        .open(&data_file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    drop(build(idx.path(), photos.path(), &e));
    fs::write(idx.path().join("graph/CURRENT"), b"{ not json").unwrap();
    let index = open(idx.path(), &e);
    assert!(!index.verify().unwrap().is_ok());
    drop(index);
    let index = build(idx.path(), photos.path(), &e);
    assert_eq!(index.status().unwrap().graph.unwrap().points, 50);
    assert_eq!(e.embedded(), 50);
}

#[test]
fn reader_log_is_repaired_on_open() {
    let (photos, idx, e) = setup(12);
    drop(build(idx.path(), photos.path(), &e));
    let log = idx.path().join("reader.log");
    let good = fs::read(&log).unwrap();

    // A torn append (garbage after the last frame): truncated back.
    fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(&[7u8; 37])
        .unwrap();
    let index = open(idx.path(), &e);
    assert!(index.verify().unwrap().is_ok());
    drop(index);
    assert_eq!(fs::read(&log).unwrap(), good);

    // The last frame half written (sled committed it, the log did not get it all): rewritten.
    fs::write(&log, &good[..good.len() - 10]).unwrap();
    drop(open(idx.path(), &e));
    let index = open(idx.path(), &e);
    assert!(index.verify().unwrap().is_ok());
    drop(index);

    // Damaged in the middle, missing, or from another index: rewritten.
    let mut bad = fs::read(&log).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    fs::write(&log, &bad).unwrap();
    let index = open(idx.path(), &e);
    assert!(index.verify().unwrap().is_ok());
    drop(index);
    fs::remove_file(&log).unwrap();
    let index = open(idx.path(), &e);
    assert!(index.verify().unwrap().is_ok());
    drop(index);

    // And a log damaged behind the writer's back is reported by verify.
    let index = open(idx.path(), &e);
    let mut bytes = fs::read(&log).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 1;
    fs::write(&log, &bytes).unwrap();
    let v = index.verify().unwrap();
    assert!(v.problems.iter().any(|p| p.contains("reader log")), "{v:?}");
}

#[test]
fn reader_log_is_compacted_when_mostly_dead() {
    let photos = tempfile::tempdir().unwrap();
    let idx = tempfile::tempdir().unwrap();
    let e = FakeEmbedder::new(256);
    let log = idx.path().join("reader.log");
    let mut sizes = Vec::new();
    // Replace every image's content again and again: the log grows with dead entries until the
    // writer rewrites it.
    for round in 0..8u64 {
        for i in 0..30 {
            let p = png(photos.path(), &format!("p{i:03}.png"), 1000 * round + i);
            let t = std::time::SystemTime::now() + std::time::Duration::from_secs(round + 1);
            fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        drop(build(idx.path(), photos.path(), &e));
        sizes.push(fs::metadata(&log).unwrap().len());
    }
    assert!(
        sizes.windows(2).any(|w| w[1] < w[0]),
        "the log never shrank: {sizes:?}"
    );
}
