//! Searching: self-retrieval (exact and graph + pending vectors), removals, duplicates, refresh,
//! query checks, and a search while a build runs in another process.

// The index crate's test helpers, one copy for both crates.
#[path = "../../cnclip-index/tests/common/mod.rs"]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cnclip_index::{
    EmbedError, FakeEmbedder, GraphPolicy, ImageEmbedder, Index, Indexer, ModelIdentity, Silent,
};
use cnclip_search::{Error, QueryEncoder, Scope, Searcher};
use common::{canon, png};

fn vector_of(e: &FakeEmbedder, p: &Path) -> Vec<f32> {
    let prepared = e.prepare(p, &fs::read(p).unwrap()).unwrap();
    e.embed(&[prepared]).unwrap().remove(0)
}

fn build(idx: &Path, photos: &Path, e: &FakeEmbedder, policy: GraphPolicy) {
    let mut index = Index::open_or_create(idx, &e.identity()).unwrap();
    index.set_graph_policy(policy);
    Indexer::new(&mut index).build(photos, e, &Silent).unwrap();
}

fn assert_self_retrieval(s: &Searcher, e: &FakeEmbedder, files: &[PathBuf]) {
    for f in files {
        let hits = s.search_vector(&vector_of(e, f), 3).unwrap();
        assert_eq!(
            hits[0].path,
            canon(f),
            "{} is not its own best match",
            f.display()
        );
        assert_eq!(hits[0].rank, 1);
        assert!(
            (hits[0].score - 1.0).abs() < 1e-4,
            "score {}",
            hits[0].score
        );
        assert!(hits[1].score < 0.9);
    }
}

#[test]
fn each_image_finds_itself_exact_and_through_the_graph() {
    let photos = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..60)
        .map(|i| png(photos.path(), &format!("d{}/p{i}.png", i % 4), i))
        .collect();
    let e = FakeEmbedder::new(32);

    // Small index: exact.
    let idx = tempfile::tempdir().unwrap();
    build(idx.path(), photos.path(), &e, GraphPolicy::default());
    let s = Searcher::open(idx.path()).unwrap();
    assert!(!s.uses_graph());
    assert_eq!((s.len(), s.vectors(), s.exact_vectors()), (60, 60, 60));
    assert_self_retrieval(&s, &e, &files);

    // Graph: all vectors in the snapshot.
    let idx2 = tempfile::tempdir().unwrap();
    let policy = GraphPolicy {
        min_vectors: 20,
        max_pending: 100,
        ..GraphPolicy::default()
    };
    build(idx2.path(), photos.path(), &e, policy);
    let s = Searcher::open(idx2.path()).unwrap();
    assert!(s.uses_graph());
    assert_eq!(s.exact_vectors(), 0);
    assert_self_retrieval(&s, &e, &files);
    // A one-query process skips the graph and scans everything exactly, same answers.
    let s = Searcher::open_exact(idx2.path()).unwrap();
    assert!(!s.uses_graph());
    assert_eq!((s.vectors(), s.exact_vectors()), (60, 60));
    assert_self_retrieval(&s, &e, &files);

    // New files wait outside the snapshot (max_pending) and are scanned exactly; removed ones are
    // filtered out of the graph's answers.
    let more: Vec<PathBuf> = (60..75)
        .map(|i| png(photos.path(), &format!("new/p{i}.png"), i))
        .collect();
    let removed: Vec<PathBuf> = files[..5].iter().map(|f| canon(f)).collect();
    for f in &files[..5] {
        fs::remove_file(f).unwrap();
    }
    build(idx2.path(), photos.path(), &e, policy);
    let s = Searcher::open(idx2.path()).unwrap();
    assert!(s.uses_graph());
    assert_eq!((s.len(), s.exact_vectors()), (70, 15));
    assert_self_retrieval(&s, &e, &more);
    assert_self_retrieval(&s, &e, &files[5..]);
    let everything = s.search_vector(&vector_of(&e, &more[0]), 70).unwrap();
    assert!(everything.iter().all(|h| !removed.contains(&h.path)));
    let all = s.search_vector(&vector_of(&e, &more[0]), 1000).unwrap();
    assert_eq!(
        all.len(),
        70,
        "k above the index size returns everything once"
    );
    let ranks: Vec<usize> = all.iter().map(|h| h.rank).collect();
    assert_eq!(ranks, (1..=70).collect::<Vec<_>>());
}

#[test]
fn a_search_confined_to_folders_is_the_full_ranking_filtered() {
    let photos = tempfile::tempdir().unwrap();
    let folder = |i: u64| match i % 5 {
        0 | 1 => "a",
        2 => "a/b",
        3 => "ab", // beside `a`, not in it
        _ => "c",
    };
    let files: Vec<PathBuf> = (0..60)
        .map(|i| png(photos.path(), &format!("{}/p{i}.png", folder(i)), i))
        .collect();
    // One picture in two folders: one vector, a path in each.
    fs::copy(&files[4], photos.path().join("a/copy-of-c.png")).unwrap();
    let e = FakeEmbedder::new(16);
    let exact_idx = tempfile::tempdir().unwrap();
    build(exact_idx.path(), photos.path(), &e, GraphPolicy::default());
    // Through a graph, with vectors added since its snapshot and a file removed since.
    let graph_idx = tempfile::tempdir().unwrap();
    let policy = GraphPolicy {
        min_vectors: 20,
        max_pending: 100,
        ..GraphPolicy::default()
    };
    build(graph_idx.path(), photos.path(), &e, policy);
    let later: Vec<PathBuf> = (60..70)
        .map(|i| png(photos.path(), &format!("{}/p{i}.png", folder(i)), i))
        .collect();
    fs::remove_file(&files[5]).unwrap();
    build(exact_idx.path(), photos.path(), &e, GraphPolicy::default());
    build(graph_idx.path(), photos.path(), &e, policy);
    let exact = Searcher::open(exact_idx.path()).unwrap();
    let graph = Searcher::open(graph_idx.path()).unwrap();
    assert!(!exact.uses_graph());
    assert!(graph.uses_graph() && graph.exact_vectors() == 10);
    assert_eq!((exact.len(), graph.len()), (70, 70));

    let root = canon(photos.path());
    let scopes = [
        Scope::under([root.join("a")]),
        Scope::under([root.join("a/b/")]),
        Scope::under([root.join("ab")]),
        Scope::under([root.join("./c"), root.join("a/b")]),
        Scope::under([root.join("c/p9.png")]),
        Scope::under([root.join("nowhere")]),
        Scope::under(Vec::<PathBuf>::new()),
        Scope::under([&root]),
    ];
    let expected_sizes = [42, 14, 14, 28, 1, 0, 0, 70];
    for (scope, size) in scopes.iter().zip(expected_sizes) {
        for query in [&files[0], &files[4], &files[13], &later[1]] {
            let q = vector_of(&e, query);
            let everything = exact.search_vector(&q, 1000).unwrap();
            let admitted: Vec<_> = everything
                .iter()
                .filter(|h| scope.admits(&h.path))
                .collect();
            assert_eq!(admitted.len(), size, "{scope:?}");
            for k in [1, 5, 100] {
                let want: Vec<(&Path, f32)> = admitted
                    .iter()
                    .take(k)
                    .map(|h| (h.path.as_path(), h.score))
                    .collect();
                for s in [&exact, &graph] {
                    let hits = s.search_vector_in(&q, k, scope).unwrap();
                    let got: Vec<(&Path, f32)> =
                        hits.iter().map(|h| (h.path.as_path(), h.score)).collect();
                    assert_eq!(got, want, "{scope:?} k {k} graph {}", s.uses_graph());
                    let ranks: Vec<usize> = hits.iter().map(|h| h.rank).collect();
                    assert_eq!(ranks, (1..=got.len()).collect::<Vec<_>>());
                }
            }
        }
    }
    // The copy in `a` is found under `a`, and its original under `c`, with one score.
    let q = vector_of(&e, &files[4]);
    let in_a = graph.search_vector_in(&q, 1, &scopes[0]).unwrap();
    let in_c = graph
        .search_vector_in(&q, 1, &Scope::under([root.join("c")]))
        .unwrap();
    assert_eq!(in_a[0].path, root.join("a/copy-of-c.png"));
    assert_eq!(in_c[0].path, canon(&files[4]));
    assert_eq!(in_a[0].score, in_c[0].score);
    // The whole index as scope: the same as no scope.
    assert_eq!(
        exact.search_vector_in(&q, 7, &Scope::all()).unwrap(),
        exact.search_vector(&q, 7).unwrap()
    );
}

#[test]
fn identical_files_are_both_returned() {
    let photos = tempfile::tempdir().unwrap();
    let a = png(photos.path(), "a.png", 1);
    fs::copy(&a, photos.path().join("b.png")).unwrap();
    png(photos.path(), "c.png", 2);
    let e = FakeEmbedder::new(16);
    let idx = tempfile::tempdir().unwrap();
    build(idx.path(), photos.path(), &e, GraphPolicy::default());
    let s = Searcher::open(idx.path()).unwrap();
    assert_eq!((s.len(), s.vectors()), (3, 2));
    let hits = s.search_vector(&vector_of(&e, &a), 2).unwrap();
    let names: Vec<_> = hits.iter().map(|h| h.path.file_name().unwrap()).collect();
    assert_eq!(names, ["a.png", "b.png"]);
    assert_eq!(hits[0].score, hits[1].score);
}

#[test]
fn refresh_sees_later_batches() {
    let photos = tempfile::tempdir().unwrap();
    png(photos.path(), "a.png", 1);
    let e = FakeEmbedder::new(16);
    let idx = tempfile::tempdir().unwrap();
    let mut index = Index::create(idx.path(), &e.identity()).unwrap();
    Indexer::new(&mut index)
        .build(photos.path(), &e, &Silent)
        .unwrap();
    // A reader in the writer's own process, while the writer holds the index.
    let mut s = Searcher::open(idx.path()).unwrap();
    assert_eq!(s.len(), 1);
    let b = png(photos.path(), "b.png", 2);
    Indexer::new(&mut index)
        .build(photos.path(), &e, &Silent)
        .unwrap();
    assert_eq!(s.len(), 1);
    assert!(s.refresh().unwrap());
    assert_eq!(s.len(), 2);
    assert!(s.contains(&canon(&b)));
    assert!(!s.refresh().unwrap());
}

#[test]
fn a_new_graph_snapshot_is_a_reopen_and_new_batches_are_not() {
    let photos = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..30)
        .map(|i| png(photos.path(), &format!("p{i}.png"), i))
        .collect();
    let e = FakeEmbedder::new(16);
    let idx = tempfile::tempdir().unwrap();
    let policy = GraphPolicy {
        min_vectors: 20,
        max_pending: 5,
        ..GraphPolicy::default()
    };
    build(idx.path(), photos.path(), &e, policy);
    let mut s = Searcher::open(idx.path()).unwrap();
    assert!(s.uses_graph() && !s.needs_reopen());
    assert_eq!(s.dir(), idx.path());
    // Three new photos wait outside the snapshot (at most 5 may): batches to read, no reopen.
    let few: Vec<PathBuf> = (30..33)
        .map(|i| png(photos.path(), &format!("p{i}.png"), i))
        .collect();
    build(idx.path(), photos.path(), &e, policy);
    assert!(!s.needs_reopen());
    assert!(s.refresh().unwrap());
    assert_eq!((s.len(), s.exact_vectors()), (33, 3));
    // Ten more pass the limit: the build writes a new snapshot, which a reader must load anew.
    let many: Vec<PathBuf> = (33..43)
        .map(|i| png(photos.path(), &format!("p{i}.png"), i))
        .collect();
    build(idx.path(), photos.path(), &e, policy);
    assert!(s.needs_reopen());
    // Stored vectors, from the delta scanned exactly and from the graph alike.
    let (in_graph, waiting) = (&files[0], &few[0]);
    assert_eq!(s.exact_vectors(), 3);
    for f in [in_graph, waiting] {
        let mut want = vector_of(&e, f);
        cnclip_index::normalize(&mut want).unwrap();
        let got = s.vector_of(&canon(f)).unwrap();
        let close = got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6);
        assert!(close, "{}", f.display());
        let hits = s.search_similar(&canon(f), 2).unwrap();
        assert_eq!(hits[0].path, canon(f));
        assert!((hits[0].score - 1.0).abs() < 1e-4);
    }
    assert!(s.vector_of(&photos.path().join("nowhere.png")).is_none());
    let err = s
        .search_similar(&photos.path().join("nowhere.png"), 2)
        .unwrap_err();
    assert!(err.to_string().contains("is not in the index"), "{err}");

    assert!(s.refresh().unwrap());
    assert!(s.uses_graph() && !s.needs_reopen());
    assert_eq!((s.len(), s.exact_vectors()), (43, 0));
    assert_self_retrieval(&s, &e, &[&files[..], &few[..], &many[..]].concat());

    // A damaged snapshot: searched exactly, with a warning, and not loaded again (a server
    // refreshing every second would reload it forever) until a build replaces it.
    let snapshot = fs::read_dir(idx.path().join("graph"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let data = fs::read_dir(&snapshot)
        .unwrap()
        .map(|f| f.unwrap().path())
        .max_by_key(|f| f.metadata().unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    fs::write(&data, bytes).unwrap();
    let mut s = Searcher::open(idx.path()).unwrap();
    assert!(!s.uses_graph());
    assert!(
        s.warnings()[0].contains("searching exactly until it is rebuilt"),
        "{:?}",
        s.warnings()
    );
    assert!(!s.needs_reopen());
    assert!(!s.refresh().unwrap());
    assert_self_retrieval(&s, &e, &many);
}

struct Encoder(FakeEmbedder, PathBuf);

impl QueryEncoder for Encoder {
    fn identity(&self) -> ModelIdentity {
        self.0.identity()
    }
    fn encode_text(&self, _text: &str) -> Result<Vec<f32>, EmbedError> {
        Ok(vector_of(&self.0, &self.1))
    }
    fn encode_image(&self, path: &Path) -> Result<Vec<f32>, EmbedError> {
        Ok(vector_of(&self.0, path))
    }
}

#[test]
fn queries_are_checked() {
    let photos = tempfile::tempdir().unwrap();
    let a = png(photos.path(), "a.png", 1);
    png(photos.path(), "b.png", 2);
    let e = FakeEmbedder::new(16);
    let idx = tempfile::tempdir().unwrap();
    build(idx.path(), photos.path(), &e, GraphPolicy::default());
    let s = Searcher::open(idx.path()).unwrap();
    assert_eq!(s.identity().model, "fake");
    assert!(matches!(
        s.search_vector(&[1.0; 8], 1),
        Err(Error::WrongDimension {
            expected: 16,
            got: 8
        })
    ));
    assert!(s.search_vector(&[0.0; 16], 1).is_err());
    assert!(s.search_vector(&[1.0; 16], 0).unwrap().is_empty());
    assert_eq!(s.search_vector(&[1.0; 16], usize::MAX).unwrap().len(), 2);

    let enc = Encoder(FakeEmbedder::new(16), a.clone());
    assert_eq!(
        s.search_text(&enc, "一只小猫", 1).unwrap()[0].path,
        canon(&a)
    );
    assert_eq!(s.search_image(&enc, &a, 1).unwrap()[0].path, canon(&a));
    for blank in ["", " \t\n", "\u{3000}"] {
        assert!(matches!(
            s.search_text(&enc, blank, 1),
            Err(Error::EmptyQuery)
        ));
    }
    // Query arithmetic: each part counts alike, whatever its norm.
    let sum = cnclip_search::combine(&[2.0, 0.0], &[vec![0.0, 0.5]], &[vec![4.0, 0.0]]).unwrap();
    assert_eq!(sum, [0.0, 1.0]);
    assert!(matches!(
        cnclip_search::combine(&[1.0; 16], &[vec![1.0; 8]], &[]),
        Err(Error::WrongDimension {
            expected: 16,
            got: 8
        })
    ));
    let other = Encoder(FakeEmbedder::new(16).with_model("RN50"), a.clone());
    let err = s.search_text(&other, "一只小猫", 1).unwrap_err();
    assert!(err.to_string().contains("--model fake"), "{err}");

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Searcher::open(empty.path()),
        Err(Error::NotAnIndex { .. })
    ));
}

const CHILD: &str = "CNCLIP_SEARCH_CHILD";

/// The builder process for `search_while_a_build_runs_elsewhere`; a no-op in a normal run.
#[test]
fn slow_build_child() {
    let Some(photos) = std::env::var_os(CHILD) else {
        return;
    };
    let idx = PathBuf::from(std::env::var_os("CNCLIP_SEARCH_CHILD_INDEX").unwrap());
    let e = FakeEmbedder::new(16)
        .with_batch_size(2)
        .with_delay(Duration::from_millis(15));
    let mut index = Index::open_or_create(&idx, &e.identity()).unwrap();
    Indexer::new(&mut index)
        .build(Path::new(&photos), &e, &Silent)
        .unwrap();
}

#[test]
fn search_while_a_build_runs_elsewhere() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let photos = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..120)
        .map(|i| png(photos.path(), &format!("p{i:03}.png"), i))
        .collect();
    let e = FakeEmbedder::new(16);
    let idx = tempfile::tempdir().unwrap();
    let idx = idx.path().join("index");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["slow_build_child", "--exact", "--test-threads=1"])
        .env(CHILD, photos.path())
        .env("CNCLIP_SEARCH_CHILD_INDEX", &idx)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut searcher: Option<Searcher> = None;
    loop {
        let finished = child.try_wait().unwrap().is_some();
        match searcher.as_mut() {
            None => searcher = Searcher::open(&idx).ok(),
            Some(s) => {
                s.refresh().unwrap();
            }
        }
        if let Some(s) = &searcher {
            // While the builder holds sled, readers answer from what it has committed.
            if !finished && !s.is_empty() {
                match Index::open(&idx) {
                    Err(cnclip_index::Error::Locked { .. }) => {}
                    // Only possible once the builder has exited.
                    Ok(_) => assert!(child.try_wait().unwrap().is_some()),
                    Err(e) => panic!("{e}"),
                }
            }
            let n = s.len();
            if n > 0 {
                let probe = files.iter().find(|f| s.contains(&canon(f))).unwrap();
                let hits = s.search_vector(&vector_of(&e, probe), 1).unwrap();
                assert_eq!(hits[0].path, canon(probe));
            }
            if seen.last() != Some(&n) {
                seen.push(n);
            }
        }
        if finished {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "build too slow");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(*seen.last().unwrap(), 120);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert!(
        seen.iter().any(|n| *n > 0 && *n < 120),
        "no search happened mid-build: {seen:?}"
    );
}
