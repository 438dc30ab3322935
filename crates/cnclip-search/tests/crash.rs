//! kill -9 at random moments of a build (in a child process: this test binary re-executed) loses
//! nothing that was reported committed; the index always opens and verifies afterwards, readers see
//! every committed image, and running the build again finishes the job without duplicates. A second
//! test kills a child that opens the index over and over, so kills land while sled recovers; a
//! third kills `Index::forget` halfway through a folder, which must cost nothing outside it.

// The index crate's test helpers, one copy for both crates.
#[path = "../../cnclip-index/tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cnclip_index::{
    Committed, FakeEmbedder, GraphPolicy, ImageEmbedder, Index, Indexer, Reporter, Silent,
};
use cnclip_search::Searcher;
use common::{png, Rng};

const CHILD: &str = "CNCLIP_CRASH_CHILD";
const CHILD_INDEX: &str = "CNCLIP_CRASH_CHILD_INDEX";
/// `build` (one build of the folder) or `reopen` (open, add a photo, build, close, again and again).
const CHILD_MODE: &str = "CNCLIP_CRASH_CHILD_MODE";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn embedder() -> FakeEmbedder {
    FakeEmbedder::new(24)
        .with_batch_size(4)
        .with_delay(Duration::from_millis(3))
}

fn policy() -> GraphPolicy {
    GraphPolicy {
        min_vectors: 30,
        max_pending: 0,
        ..GraphPolicy::default()
    }
}

/// Prints each committed path as soon as the batch is durable.
struct Announce;

impl Reporter for Announce {
    fn committed(&self, batch: &Committed<'_>) {
        let mut out = std::io::stdout().lock();
        for p in batch.paths {
            writeln!(out, "C {}", hex(p.as_os_str().as_bytes())).unwrap();
        }
        out.flush().unwrap();
    }
}

/// The child: builds `photos` into `index` (once, or in `reopen` mode again and again), announcing
/// commits. A no-op in a normal test run.
#[test]
fn crash_child() {
    let Some(photos) = std::env::var_os(CHILD) else {
        return;
    };
    let photos = PathBuf::from(photos);
    let idx = PathBuf::from(std::env::var_os(CHILD_INDEX).unwrap());
    // The test harness prints "test crash_child ... " without a newline: start on a fresh line.
    println!();
    let e = embedder();
    if std::env::var_os(CHILD_MODE).is_some_and(|m| m == "forget") {
        let mut index = Index::open(&idx).unwrap();
        index.set_graph_policy(policy());
        index.forget(&photos.join("gone"), &Silent).unwrap();
        println!("DONE");
        return;
    }
    if std::env::var_os(CHILD_MODE).is_some_and(|m| m == "reopen") {
        // Every open after a commit makes sled write a recovery snapshot (synced, then renamed):
        // a child that does little else puts many kills inside that window.
        // Names no other child uses: a process id alone comes round again after some thousands
        // of children, and a child rewriting a committed photo (killed mid-write, so it no
        // longer decodes) would have the index drop it, rightly, and the test report it lost.
        let child = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        for i in 0u64.. {
            png(&photos, &format!("n/{child}-{i}.png"), i);
            let mut index = Index::open_or_create(&idx, &e.identity()).unwrap();
            index.set_graph_policy(policy());
            Indexer::new(&mut index)
                .build(&photos, &e, &Announce)
                .unwrap();
        }
    }
    let mut index = Index::open_or_create(&idx, &e.identity()).unwrap();
    index.set_graph_policy(policy());
    Indexer::new(&mut index)
        .build(&photos, &e, &Announce)
        .unwrap();
    println!("DONE");
}

/// Runs the child; kills it after `kill_after` unless it finishes first. Returns the committed
/// paths it announced and whether it finished.
fn run_child(
    mode: &str,
    photos: &Path,
    idx: &Path,
    kill_after: Option<Duration>,
) -> (Vec<PathBuf>, bool) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, photos)
        .env(CHILD_INDEX, idx)
        .env(CHILD_MODE, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            lines.push(line.unwrap());
        }
        lines
    });
    let start = Instant::now();
    let mut killed = false;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if kill_after.is_some_and(|t| start.elapsed() >= t) {
            child.kill().unwrap(); // SIGKILL
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = child.wait().unwrap();
    let lines = reader.join().unwrap();
    let done = lines.iter().any(|l| l == "DONE");
    if !killed {
        assert!(status.success(), "child failed: {lines:?}");
    }
    let paths = lines
        .iter()
        .filter_map(|l| l.strip_prefix("C "))
        .map(|h| PathBuf::from(OsString::from_vec(unhex(h))))
        .collect();
    (paths, done)
}

/// Adds, deletes and renames some photos, keeping `expected` (committed paths that still exist).
fn mutate(photos: &Path, round: u64, expected: &mut HashSet<PathBuf>) {
    let mut rng = Rng(round);
    let mut files: Vec<PathBuf> = std::fs::read_dir(photos.join("a"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for (i, f) in files.iter().enumerate() {
        match rng.below(10) {
            0 => {
                std::fs::remove_file(f).unwrap();
                expected.remove(f);
            }
            1 => {
                let to = photos.join("b").join(format!("r{round}-{i}.png"));
                std::fs::rename(f, &to).unwrap();
                expected.remove(f);
            }
            _ => {}
        }
    }
    for i in 0..40 {
        png(photos, &format!("a/n{round}-{i}.png"), 10_000 * round + i);
    }
}

/// After a kill: readers see every committed image, the writer opens (repairing what the crash
/// left), verifies, and has every committed image.
fn check_after_kill(idx: &Path, expected: &HashSet<PathBuf>, round: u64) {
    if !idx.join("db").exists() {
        return; // killed before the index was created
    }
    // Readers first (no writer has repaired anything yet).
    let searcher = Searcher::open(idx).unwrap();
    let unseen: Vec<_> = expected.iter().filter(|p| !searcher.contains(p)).collect();
    drop(searcher);
    if !unseen.is_empty() {
        let kept = keep_copy(idx);
        let writer = match Index::open(idx) {
            Ok(index) => {
                let lost: Vec<_> = unseen
                    .iter()
                    .filter(|p| index.record(p).unwrap().is_none())
                    .collect();
                format!("the writer lacks {lost:?}")
            }
            Err(e) => format!("the writer cannot open the index ({e})"),
        };
        let files: Vec<String> = unseen
            .iter()
            .map(|p| match std::fs::metadata(p) {
                Ok(m) => format!("{} bytes, decodes: {}", m.len(), image::open(p).is_ok()),
                Err(e) => e.to_string(),
            })
            .collect();
        panic!(
            "round {round}: readers miss {unseen:?} (on disk: {files:?}); {writer}; what the kill \
             left is kept in {}",
            kept.display()
        );
    }

    let index = match Index::open(idx) {
        Ok(index) => index,
        Err(e) => panic!(
            "round {round}: the writer cannot open the index ({e}); what the kill left is kept \
             in {}",
            keep_copy(idx).display()
        ),
    };
    let v = index.verify().unwrap();
    assert!(v.is_ok(), "round {round}: {:?}", v.problems);
    let lost: Vec<_> = expected
        .iter()
        .filter(|p| index.record(p).unwrap().is_none())
        .collect();
    assert!(lost.is_empty(), "round {round}: lost {lost:?}");
}

/// Copies an index out of the temporary directory (which goes when the test unwinds), so that
/// what a kill left can be studied.
fn keep_copy(idx: &Path) -> PathBuf {
    let kept = std::env::temp_dir().join(format!("cnclip-crash-kept-{}", std::process::id()));
    for e in walkdir::WalkDir::new(idx)
        .into_iter()
        .filter_map(|e| e.ok())
    {
        let to = kept.join(e.path().strip_prefix(idx).unwrap());
        if e.file_type().is_dir() {
            let _ = std::fs::create_dir_all(&to);
        } else {
            let _ = std::fs::copy(e.path(), &to);
        }
    }
    kept
}

/// How many kills each crash test makes: 40, or `CRASH_KILLS` (e.g. 1000 for a longer local run).
fn kills_wanted() -> u64 {
    std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

/// Kills a child that keeps reopening the index, each time after a commit: every such open
/// writes sled's recovery snapshot, and a kill in the middle of that once made the index
/// unopenable for the writer (sled's unfinished `snap.*.generating`; see `store`).
#[test]
fn kill_9_while_reopening_leaves_an_index_that_opens() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let photos_dir = tempfile::tempdir().unwrap();
    let photos = std::fs::canonicalize(photos_dir.path()).unwrap();
    for i in 0..5u64 {
        png(&photos, &format!("a/p{i}.png"), 1_000_000 + i);
    }
    let idx_dir = tempfile::tempdir().unwrap();
    let idx = idx_dir.path().join("index");
    let mut expected: HashSet<PathBuf> = HashSet::new();
    let mut rng = Rng(11);
    let kills = kills_wanted();
    for round in 1..=kills {
        let after = Duration::from_millis(5 + rng.below(150));
        let (committed, done) = run_child("reopen", &photos, &idx, Some(after));
        assert!(!done, "the reopening child runs until it is killed");
        expected.extend(committed);
        check_after_kill(&idx, &expected, round);
    }
    eprintln!(
        "reopen crash test: {kills} kills, {} committed photos checked, lost 0",
        expected.len()
    );
}

#[test]
fn kill_9_during_build_loses_nothing_committed() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let photos_dir = tempfile::tempdir().unwrap();
    let photos = std::fs::canonicalize(photos_dir.path()).unwrap();
    std::fs::create_dir_all(photos.join("b")).unwrap();
    for i in 0..120u64 {
        png(&photos, &format!("a/p{i:03}.png"), i);
    }
    // Some identical content, to exercise shared vectors under crashes.
    for i in 0..10 {
        std::fs::copy(
            photos.join(format!("a/p{i:03}.png")),
            photos.join(format!("b/dup{i}.png")),
        )
        .unwrap();
    }
    let idx_dir = tempfile::tempdir().unwrap();
    let idx = idx_dir.path().join("index");

    let mut expected: HashSet<PathBuf> = HashSet::new();
    let mut rng = Rng(7);
    let (mut kills, mut finished, mut round) = (0, 0, 0u64);
    let mut empty_kills = 0;
    let target = kills_wanted();
    while kills < target {
        round += 1;
        assert!(round < 20 * target, "too many rounds");
        let after = Duration::from_millis(10 + rng.below(300));
        let (committed, done) = run_child("build", &photos, &idx, Some(after));
        if std::env::var_os("CRASH_DEBUG").is_some() {
            eprintln!(
                "round {round}: kill after {after:?}: {} committed, done {done}",
                committed.len()
            );
        }
        if committed.is_empty() && !done {
            empty_kills += 1;
        }
        expected.extend(committed.into_iter().filter(|p| p.exists()));
        if done {
            finished += 1;
            mutate(&photos, round, &mut expected);
        } else {
            kills += 1;
        }
        check_after_kill(&idx, &expected, round);
    }

    // Finish the job.
    let (_, done) = run_child("build", &photos, &idx, None);
    assert!(done);
    let e = FakeEmbedder::new(24);
    let mut index = Index::open_for(&idx, &e.identity()).unwrap();
    index.set_graph_policy(policy());
    let s = Indexer::new(&mut index)
        .build(&photos, &e, &Silent)
        .unwrap();
    assert_eq!((s.indexed, s.removed, s.embedded), (0, 0, 0), "{s:?}");
    let v = index.verify().unwrap();
    assert!(v.is_ok(), "{:?}", v.problems);
    let on_disk: HashSet<PathBuf> = walkdir::WalkDir::new(&photos)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    let indexed: HashSet<PathBuf> = index.records().unwrap().into_iter().map(|r| r.0).collect();
    assert_eq!(indexed, on_disk, "exactly the files on disk, once each");
    let distinct: HashSet<Vec<u8>> = on_disk.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert_eq!(index.status().unwrap().vectors as usize, distinct.len());
    let lost = expected.iter().filter(|p| !indexed.contains(*p)).count();
    assert_eq!(lost, 0);
    eprintln!(
        "crash test: {kills} kills ({empty_kills} before any commit), {finished} completed runs, \
         {} committed paths checked, lost 0, {} images in the end",
        expected.len(),
        indexed.len()
    );
}

/// Kills a child forgetting a folder of 1 500 photos (two commits of removals, then the graph):
/// after every kill the index opens and verifies, the other folder is whole, and forgetting
/// again finishes the job.
#[test]
fn kill_9_while_forgetting_costs_nothing_else() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let photos_dir = tempfile::tempdir().unwrap();
    let photos = std::fs::canonicalize(photos_dir.path()).unwrap();
    for i in 0..1500u64 {
        png(&photos, &format!("gone/{}/p{i}.png", i % 10), i);
    }
    let mut kept = HashSet::new();
    for i in 0..40u64 {
        kept.insert(png(&photos, &format!("kept/p{i}.png"), 10_000 + i));
    }
    // One picture in both: its vector must outlive the forgotten copy.
    std::fs::copy(photos.join("gone/0/p0.png"), photos.join("kept/copy.png")).unwrap();
    kept.insert(photos.join("kept/copy.png"));
    let fast = FakeEmbedder::new(24).with_batch_size(256);
    let work = tempfile::tempdir().unwrap();
    let base = work.path().join("base");
    let mut index = Index::open_or_create(&base, &fast.identity()).unwrap();
    index.set_graph_policy(policy());
    Indexer::new(&mut index)
        .build(&photos, &fast, &Silent)
        .unwrap();
    drop(index);

    let mut rng = Rng(5);
    let (mut before, mut midway, mut after) = (0, 0, 0);
    let kills = kills_wanted();
    for round in 1..=kills {
        let idx = work.path().join(format!("i{round}"));
        copy_dir(&base, &idx);
        let (_, done) = run_child(
            "forget",
            &photos,
            &idx,
            Some(Duration::from_millis(20 + rng.below(100))),
        );
        check_after_kill(&idx, &kept, round);
        let mut index = Index::open(&idx).unwrap();
        match index.status().unwrap().images {
            1541 => before += 1,
            41 => after += 1,
            _ => midway += 1,
        }
        assert!(done || index.status().unwrap().images >= 41);
        index.set_graph_policy(policy());
        index.forget(&photos.join("gone"), &Silent).unwrap();
        let st = index.status().unwrap();
        assert_eq!((st.images, st.vectors), (41, 41), "round {round}");
        let v = index.verify().unwrap();
        assert!(v.is_ok(), "round {round}: {:?}", v.problems);
        drop(index);
        std::fs::remove_dir_all(&idx).unwrap();
    }
    eprintln!(
        "forget crash test: {kills} kills ({before} before any removal, {midway} midway, {after} \
         after all), the other folder whole every time"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from).into_iter().map(|e| e.unwrap()) {
        let dest = to.join(e.path().strip_prefix(from).unwrap());
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}
