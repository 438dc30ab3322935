//! [`Indexer`]: walk → decode (parallel) → embed (batches) → commit (durable) → graph.
//!
//! Threads: the caller's thread walks, then commits; `decoder_threads` read, hash and
//! [`prepare`](crate::ImageEmbedder::prepare) files and send the results through a bounded channel,
//! so decoding runs while the model embeds the previous batch. The committing thread is the only
//! writer: it batches prepared images, embeds the ones whose content has no vector yet, and commits
//! each batch atomically and durably before reporting it.
//!
//! What is read: a file whose size and mtime match its record is unchanged and not even opened. A
//! changed or new file is read and hashed; content already in the index (rename, move, copy,
//! `touch`) reuses its vector and is never decoded nor embedded. Records under the walked folder
//! that the walk did not produce are removed at the end — except under directories that could not be
//! read, and not at all when the run is stopped early.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::embed::{normalize, ImageEmbedder};
use crate::error::{Error, Result};
use crate::index::Index;
use crate::report::{BuildSummary, Committed, Phase, Reporter, Skipped};
use crate::store::{Hash, Record, StoreReader};
use crate::walk::{is_under, walk, Candidate};

/// How a build runs.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Threads reading and decoding files (default: available cores).
    pub decoder_threads: usize,
    /// Files larger than this are skipped (default 512 MiB).
    pub max_file_bytes: u64,
    /// Set to stop the build: the current batch is committed, nothing is removed.
    pub stop: Option<Arc<AtomicBool>>,
    /// Update the graph snapshot at the end (default true).
    pub update_graph: bool,
    /// Most changes without embedding (renames, touches) per commit.
    pub max_batch_records: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            decoder_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_file_bytes: 512 << 20,
            stop: None,
            update_graph: true,
            max_batch_records: 512,
        }
    }
}

/// Builds or updates an index from a folder.
#[derive(Debug)]
pub struct Indexer<'a> {
    index: &'a mut Index,
    options: BuildOptions,
}

/// A file to read, and its record from before.
struct Job {
    file: Candidate,
    prev: Option<Record>,
}

enum Outcome<P> {
    /// Same content as its record (only the mtime moved).
    Touch(Job),
    /// Content with a vector already: no embedding.
    Known(Job, Hash),
    /// New content, decoded.
    New(Job, Hash, P),
    Skip(Skipped),
}

impl<'a> Indexer<'a> {
    /// An indexer writing to `index`.
    pub fn new(index: &'a mut Index) -> Self {
        Indexer {
            index,
            options: BuildOptions::default(),
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: BuildOptions) -> Self {
        self.options = options;
        self
    }

    fn stopped(&self) -> bool {
        self.options
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }

    /// Indexes the images under `dir` (a folder or one file) with `embedder`: adds new files, updates
    /// changed ones, removes records of files that are gone. Every unusable file is skipped and
    /// reported; errors are for the index itself (I/O, a failing model).
    pub fn build<E: ImageEmbedder>(
        &mut self,
        dir: &Path,
        embedder: &E,
        reporter: &dyn Reporter,
    ) -> Result<BuildSummary> {
        self.index.check_identity(&embedder.identity())?;
        let root = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
        reporter.phase(Phase::Walking);
        let exclude = std::fs::canonicalize(self.index.path()).ok();
        let walked = walk(&root, exclude.as_deref(), &|| self.stopped());
        let mut summary = BuildSummary {
            ignored: walked.ignored,
            ..Default::default()
        };
        for s in &walked.skipped {
            reporter.skipped(s);
        }
        summary.skipped = walked.skipped;
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut jobs = Vec::new();
        for file in walked.candidates {
            let key = file.path.as_os_str().as_bytes();
            let prev = self.index.store.record(key)?;
            seen.insert(key.to_vec());
            match prev {
                Some(r) if r.size == file.size && r.mtime_ns == file.mtime_ns => {
                    summary.unchanged += 1
                }
                prev => jobs.push(Job { file, prev }),
            }
        }
        let todo = jobs.len();
        reporter.phase(Phase::Embedding {
            todo,
            unchanged: summary.unchanged,
        });
        let failed = self.run_pipeline(jobs, embedder, reporter, &mut summary)?;
        for s in &failed {
            seen.remove(s.path.as_os_str().as_bytes());
        }
        summary.cancelled = self.stopped();
        if !summary.cancelled {
            reporter.phase(Phase::Removing);
            summary.removed = self.remove_missing(&root, &seen, &walked.unreadable)?;
            self.index.maybe_compact_view()?;
            if self.options.update_graph {
                self.index.sync_graph(reporter)?;
            }
        }
        summary.total = self.index.store.counters().records as usize;
        Ok(summary)
    }

    /// Decoders + committer. Returns the files skipped while reading/decoding.
    fn run_pipeline<E: ImageEmbedder>(
        &mut self,
        jobs: Vec<Job>,
        embedder: &E,
        reporter: &dyn Reporter,
        summary: &mut BuildSummary,
    ) -> Result<Vec<Skipped>> {
        let todo = jobs.len();
        if todo == 0 {
            return Ok(Vec::new());
        }
        let queue = Mutex::new(jobs.into_iter());
        let batch = embedder.batch_size().max(1);
        let (tx, rx) = sync_channel::<Outcome<E::Prepared>>(2 * batch);
        let abort = AtomicBool::new(false);
        let reader = self.index.store.reader();
        let threads = self.options.decoder_threads.clamp(1, 64);
        let max_bytes = self.options.max_file_bytes;
        std::thread::scope(|s| {
            for _ in 0..threads {
                let (tx, queue, abort, reader) = (tx.clone(), &queue, &abort, reader.clone());
                s.spawn(move || loop {
                    if abort.load(Ordering::Relaxed) {
                        return;
                    }
                    let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
                    let Some(job) = next else { return };
                    let out = decode_job(job, embedder, &reader, max_bytes);
                    if tx.send(out).is_err() {
                        return;
                    }
                });
            }
            drop(tx);
            let r = self.commit_loop(rx, embedder, reporter, summary, todo);
            abort.store(true, Ordering::Relaxed);
            r
        })
    }

    fn commit_loop<E: ImageEmbedder>(
        &mut self,
        rx: Receiver<Outcome<E::Prepared>>,
        embedder: &E,
        reporter: &dyn Reporter,
        summary: &mut BuildSummary,
        todo: usize,
    ) -> Result<Vec<Skipped>> {
        let batch = embedder.batch_size().max(1);
        let mut failed = Vec::new();
        let mut new: Vec<(Job, Hash, E::Prepared)> = Vec::new();
        let mut other: Vec<(Job, Option<Hash>)> = Vec::new();
        let mut done = 0;
        let mut stream = rx.into_iter();
        loop {
            let stop = self.stopped();
            let next = if stop { None } else { stream.next() };
            let end = next.is_none();
            match next {
                Some(Outcome::Skip(s)) => {
                    done += 1;
                    reporter.skipped(&s);
                    failed.push(s);
                }
                Some(Outcome::Touch(job)) => other.push((job, None)),
                Some(Outcome::Known(job, h)) => other.push((job, Some(h))),
                Some(Outcome::New(job, h, p)) => new.push((job, h, p)),
                None => {}
            }
            let full = new.len() >= batch || other.len() >= self.options.max_batch_records;
            if (full || end) && (!new.is_empty() || !other.is_empty()) {
                done += new.len() + other.len();
                self.commit_batch(
                    std::mem::take(&mut new),
                    std::mem::take(&mut other),
                    embedder,
                    reporter,
                    summary,
                    (done, todo),
                )?;
            }
            if end {
                break;
            }
        }
        summary.skipped.extend(failed.iter().cloned());
        Ok(failed)
    }

    fn commit_batch<E: ImageEmbedder>(
        &mut self,
        mut new: Vec<(Job, Hash, E::Prepared)>,
        other: Vec<(Job, Option<Hash>)>,
        embedder: &E,
        reporter: &dyn Reporter,
        summary: &mut BuildSummary,
        (done, todo): (usize, usize),
    ) -> Result<()> {
        let dim = self.index.identity().dim;
        let reader = self.index.store.reader();
        let mut late_skips = Vec::new();
        let mut kept = Vec::with_capacity(other.len());
        for (job, hash) in other {
            match hash {
                // The content had a vector when the decoder looked, but an earlier batch removed
                // it (its last other file changed): decode the file after all.
                Some(h) if reader.hash_entry(&h)?.is_none() && !new.iter().any(|n| n.1 == h) => {
                    match reprepare(&job, h, embedder, self.options.max_file_bytes) {
                        Ok(p) => new.push((job, h, p)),
                        Err(reason) => late_skips.push(Skipped {
                            path: job.file.path.clone(),
                            reason,
                        }),
                    }
                }
                _ => kept.push((job, hash)),
            }
        }
        let other = kept;
        // Embed only content that has no vector yet, once per distinct content.
        let mut embed_items: Vec<E::Prepared> = Vec::new();
        let mut embed_hashes: Vec<Hash> = Vec::new();
        let mut planned: HashSet<Hash> = HashSet::new();
        let mut new_jobs: Vec<(Job, Option<Hash>)> = Vec::with_capacity(new.len());
        for (job, h, p) in new {
            if !planned.contains(&h) && reader.hash_entry(&h)?.is_none() {
                planned.insert(h);
                embed_items.push(p);
                embed_hashes.push(h);
            }
            new_jobs.push((job, Some(h)));
        }
        let mut vectors = Vec::new();
        if !embed_items.is_empty() {
            vectors = embedder.embed(&embed_items).map_err(Error::Embed)?;
            if vectors.len() != embed_items.len() {
                return Err(Error::WrongDimension {
                    expected: embed_items.len(),
                    got: vectors.len(),
                });
            }
            summary.embedded += vectors.len();
        }
        drop(embed_items);
        let mut txn = self.index.txn();
        let mut bad: HashSet<Hash> = HashSet::new();
        for (hash, mut v) in embed_hashes.into_iter().zip(vectors) {
            if v.len() != dim {
                return Err(Error::WrongDimension {
                    expected: dim,
                    got: v.len(),
                });
            }
            if normalize(&mut v).is_none() {
                bad.insert(hash);
                continue;
            }
            txn.add_vector(hash, &v);
        }
        let mut paths = Vec::new();
        for (job, hash) in new_jobs.iter().chain(other.iter()) {
            let hash = *hash;
            let key = job.file.path.as_os_str().as_bytes();
            let hash = match hash.or(job.prev.map(|p| p.hash)) {
                Some(h) => h,
                None => continue,
            };
            if bad.contains(&hash) {
                late_skips.push(Skipped {
                    path: job.file.path.clone(),
                    reason: "the model returned a vector without direction (zero or not finite)"
                        .into(),
                });
                continue;
            }
            if txn.hash_entry(&hash)?.is_none() {
                // Only when the file changed between the decoder's read and this batch.
                late_skips.push(Skipped {
                    path: job.file.path.clone(),
                    reason: "changed while indexing; run the build again".into(),
                });
                continue;
            }
            txn.set_record(key, job.file.size, job.file.mtime_ns, hash)?;
            if job.prev.map(|p| p.hash) != Some(hash) {
                summary.indexed += 1;
            } else {
                summary.unchanged += 1;
            }
            paths.push(job.file.path.clone());
        }
        let pending = txn.finish()?;
        self.index.commit(pending)?;
        for s in late_skips {
            reporter.skipped(&s);
            summary.skipped.push(s);
        }
        reporter.committed(&Committed {
            paths: &paths,
            done,
            todo,
        });
        Ok(())
    }

    /// Removes records under `root` that are not in `seen` (except under unreadable directories).
    fn remove_missing(
        &mut self,
        root: &Path,
        seen: &HashSet<Vec<u8>>,
        unreadable: &[PathBuf],
    ) -> Result<usize> {
        let root_b = root.as_os_str().as_bytes();
        let keep: Vec<&[u8]> = unreadable
            .iter()
            .map(|p| p.as_os_str().as_bytes())
            .collect();
        let mut gone = Vec::new();
        for r in self.index.store.records(root_b) {
            let (path, _) = r?;
            if is_under(&path, root_b)
                && !seen.contains(&path)
                && !keep.iter().any(|k| is_under(&path, k))
            {
                gone.push(path);
            }
        }
        self.index.remove_records(&gone)?;
        Ok(gone.len())
    }
}

/// Reads and prepares a file again on the committing thread (rare: see `commit_batch`).
fn reprepare<E: ImageEmbedder>(
    job: &Job,
    hash: Hash,
    embedder: &E,
    max_bytes: u64,
) -> std::result::Result<E::Prepared, String> {
    let mut bytes = Vec::new();
    File::open(&job.file.path)
        .and_then(|f| f.take(max_bytes + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read: {}", e.to_string().to_lowercase()))?;
    if Sha256::digest(&bytes).as_slice() != hash {
        return Err("changed while indexing; run the build again".into());
    }
    embedder.prepare(&job.file.path, &bytes)
}

/// Reads, hashes and (for new content) decodes one file. Runs on a decoder thread.
fn decode_job<E: ImageEmbedder>(
    job: Job,
    embedder: &E,
    reader: &StoreReader,
    max_bytes: u64,
) -> Outcome<E::Prepared> {
    let skip = |job: &Job, reason: String| {
        Outcome::Skip(Skipped {
            path: job.file.path.clone(),
            reason,
        })
    };
    if job.file.size > max_bytes {
        return skip(
            &job,
            format!("file is larger than the {} MiB limit", max_bytes >> 20),
        );
    }
    let mut bytes = Vec::with_capacity(job.file.size as usize);
    let read =
        File::open(&job.file.path).and_then(|f| f.take(max_bytes + 1).read_to_end(&mut bytes));
    if let Err(e) = read {
        return skip(
            &job,
            format!("cannot read: {}", e.to_string().to_lowercase()),
        );
    }
    if bytes.is_empty() {
        return skip(&job, "empty file".into());
    }
    let hash: Hash = Sha256::digest(&bytes).into();
    if job.prev.is_some_and(|p| p.hash == hash) {
        return Outcome::Touch(job);
    }
    match reader.hash_entry(&hash) {
        Ok(Some(_)) => return Outcome::Known(job, hash),
        Ok(None) => {}
        Err(e) => return skip(&job, format!("index lookup failed: {e}")),
    }
    // A decoder's bug on some hostile file (a panic deep in a third-party decoder) costs that file,
    // not the build: it is reported like any file that cannot be used, and the next run, finding
    // it unchanged, tries it again rather than remembering the failure.
    match catch_unwind(AssertUnwindSafe(|| {
        embedder.prepare(&job.file.path, &bytes)
    })) {
        Ok(Ok(p)) => Outcome::New(job, hash, p),
        Ok(Err(reason)) => skip(&job, reason),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("no message");
            skip(&job, format!("the decoder crashed on it ({what})"))
        }
    }
}
