//! The sled database: the single source of truth.
//!
//! One tree, keys prefixed by kind, so that one [`sled::Batch`] commits a whole build batch
//! atomically:
//!
//! | key | value |
//! |---|---|
//! | `m` name | meta: format versions, identity (JSON), uuid, counters |
//! | `r` path bytes | [`Record`]: record id, size, mtime (ns), content hash — 56 bytes |
//! | `h` hash (32) | vector id, number of records with this content — 16 bytes |
//! | `v` vector id (BE) | content hash, then `dim` little-endian `f32`, L2-normalized |
//! | `c` seq (BE) | change: `1` add / `2` remove, vector id (since the last graph snapshot) |
//!
//! Vectors are keyed by content: two paths with the same bytes share one vector (`refs` = 2), and a
//! vector goes when its last record goes. Vector ids are never reused, so a graph snapshot and a
//! reader's view can always tell a live vector from a removed one by id alone.
//!
//! Durability: [`Store::commit`] applies the batch and then `flush`es — sled loses acknowledged
//! writes on kill -9 without it (DESIGN §7) — and only then is the batch reported done.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::identity::{ModelIdentity, FORMAT_VERSION, OLDEST_SUPPORTED_FORMAT};
use crate::view::ViewOp;

/// A SHA-256 of a file's bytes.
pub type Hash = [u8; 32];

const META: u8 = b'm';
const RECORD: u8 = b'r';
const HASH: u8 = b'h';
const VECTOR: u8 = b'v';
const CHANGE: u8 = b'c';

/// One indexed image file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Stable id of the record (kept when the file's content changes).
    pub id: u64,
    /// File size in bytes when it was indexed.
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch when it was indexed.
    pub mtime_ns: i64,
    /// SHA-256 of the content.
    pub hash: Hash,
}

impl Record {
    fn encode(&self) -> [u8; 56] {
        let mut b = [0u8; 56];
        b[..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..24].copy_from_slice(&self.mtime_ns.to_le_bytes());
        b[24..].copy_from_slice(&self.hash);
        b
    }

    fn decode(b: &[u8]) -> Option<Record> {
        (b.len() == 56).then(|| Record {
            id: u64_at(b, 0),
            size: u64_at(b, 8),
            mtime_ns: u64_at(b, 16) as i64,
            hash: b[24..56].try_into().expect("32 bytes"),
        })
    }
}

/// The vector of one content hash and how many records point at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HashEntry {
    pub vid: u64,
    pub refs: u64,
}

impl HashEntry {
    fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.vid.to_le_bytes());
        b[8..].copy_from_slice(&self.refs.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<HashEntry> {
        (b.len() == 16).then(|| HashEntry {
            vid: u64_at(b, 0),
            refs: u64_at(b, 8),
        })
    }
}

/// An entry of the change sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Add(u64),
    Remove(u64),
}

/// Counters kept in meta and written with every batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Number of committed batches (the reader log's frames carry it).
    pub batch: u64,
    pub next_vid: u64,
    pub next_record: u64,
    /// Last change sequence number used.
    pub seq: u64,
    pub vectors: u64,
    pub records: u64,
    /// Bytes the live state takes in the reader log (decides when to compact it).
    pub view_live_bytes: u64,
}

const COUNTER_NAMES: [&str; 7] = [
    "batch",
    "next_vid",
    "next_record",
    "seq",
    "vectors",
    "records",
    "view_live_bytes",
];

impl Counters {
    fn as_array(&self) -> [u64; 7] {
        [
            self.batch,
            self.next_vid,
            self.next_record,
            self.seq,
            self.vectors,
            self.records,
            self.view_live_bytes,
        ]
    }

    fn from_array(a: [u64; 7]) -> Counters {
        Counters {
            batch: a[0],
            next_vid: a[1],
            next_record: a[2],
            seq: a[3],
            vectors: a[4],
            records: a[5],
            view_live_bytes: a[6],
        }
    }
}

/// The open database.
pub(crate) struct Store {
    db: sled::Db,
    dir: PathBuf,
    identity: ModelIdentity,
    uuid: String,
    format_version: u32,
    counters: Counters,
}

pub(crate) fn db_path(dir: &Path) -> PathBuf {
    dir.join("db")
}

/// Name of a database being created.
pub(crate) const CREATING: &str = "db.creating";

fn open_db(dir: &Path) -> Result<sled::Db> {
    open_db_at(&db_path(dir), dir)
}

/// How long opening waits for a lock this process held itself. sled frees a closed database's file
/// (and its lock) in deferred epoch-based reclamation, so reopening right after closing in the same
/// process can find it still locked for a moment (seen in a loop of create/close/reopen). A lock
/// held by another process is reported at once.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Index directories this process has opened.
static OPENED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn opened_here(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.into());
    OPENED.lock().map(|o| o.contains(&dir)).unwrap_or(false)
}

fn remember_opened(dir: &Path) {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.into());
    if let Ok(mut o) = OPENED.lock() {
        if !o.contains(&dir) {
            o.push(dir);
        }
    }
}

/// sled's file lock: the log file `db` inside the database directory (sled 0.34.7 `config.rs`,
/// `db_path` and `try_lock`, an exclusive `flock`).
const SLED_LOCK_FILE: &str = "db";

/// Removes the snapshot a killed open left unfinished.
///
/// sled writes its snapshot only while opening (recovery, `pagecache/snapshot.rs`
/// `advance_snapshot`): to `snap.<lsn>.generating`, synced and then renamed `snap.<lsn>`. A kill
/// -9 before the rename leaves the `.generating` file, often cut short, and the next open reads
/// the newest `snap.*` file, that one, and fails with `Corruption { at: None }` (spacejam/sled
/// #1527, #1533; about once in 700 kills of the build crash test, once in ~10 kills of a child
/// that only reopens: `kill_9_while_reopening_leaves_an_index_that_opens`). The unfinished file
/// never was the database's state — the previous snapshot and the log still are, as they would
/// be after a kill just before the file was created — so removing it gives sled a state it
/// recovers from.
///
/// Done under sled's own lock, so a database another process has open is never touched: when the
/// lock is held nothing is removed, and sled's open then reports the lock.
fn remove_unfinished_snapshots(path: &Path) -> Result<()> {
    let lock_path = path.join(SLED_LOCK_FILE);
    let lock = match std::fs::OpenOptions::new().read(true).open(&lock_path) {
        Ok(f) => f,
        // No log yet: a new database, nothing to recover.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(&lock_path, e)),
    };
    if lock.try_lock().is_err() {
        return Ok(());
    }
    let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(path, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    // The lock goes with `lock`, before sled takes it.
    Ok(())
}

fn open_db_at(path: &Path, dir: &Path) -> Result<sled::Db> {
    let start = std::time::Instant::now();
    loop {
        remove_unfinished_snapshots(path)?;
        let r = sled::Config::new()
            .path(path)
            .cache_capacity(64 << 20)
            .open();
        match r {
            Ok(db) => {
                remember_opened(dir);
                return Ok(db);
            }
            Err(sled::Error::Io(ref io)) if io.to_string().contains("could not acquire lock") => {
                if start.elapsed() >= LOCK_WAIT || !opened_here(dir) {
                    return Err(Error::Locked { path: dir.into() });
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => {
                return Err(Error::Db {
                    path: dir.into(),
                    source: e,
                })
            }
        }
    }
}

impl Store {
    /// Creates the database of a new index in `dir` (which exists and holds no database).
    pub fn create(dir: &Path, identity: &ModelIdentity, uuid: &str) -> Result<Store> {
        // Made under a temporary name and renamed into place once durable: a crash during
        // creation leaves no half-made index behind, only a temporary directory the next
        // creation removes.
        let tmp = dir.join(CREATING);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        {
            let db = open_db_at(&tmp, dir)?;
            let mut b = sled::Batch::default();
            b.insert(
                meta_key("format_version"),
                FORMAT_VERSION.to_le_bytes().to_vec(),
            );
            b.insert(
                meta_key("identity"),
                serde_json::to_vec(identity).expect("serializable"),
            );
            b.insert(meta_key("uuid"), uuid.as_bytes());
            put_counters(&mut b, &Counters::default());
            let err = |e| Error::Db {
                path: dir.into(),
                source: e,
            };
            db.apply_batch(b).map_err(err)?;
            db.flush().map_err(err)?;
        }
        // Readers find the (empty) reader log as soon as the database exists.
        crate::view::write_empty(
            dir,
            &crate::view::ViewHeader {
                uuid: uuid.into(),
                identity: identity.clone(),
            },
        )?;
        crate::fsutil::rename_durably(&tmp, &db_path(dir))?;
        Store::open(dir)
    }

    /// Opens the database of an existing index, checking the format version.
    pub fn open(dir: &Path) -> Result<Store> {
        if !db_path(dir).is_dir() {
            return Err(Error::NotAnIndex { path: dir.into() });
        }
        let db = open_db(dir)?;
        let get = |name: &str| -> Result<Vec<u8>> {
            db.get(meta_key(name))
                .map_err(|e| Error::Db {
                    path: dir.into(),
                    source: e,
                })?
                .map(|v| v.to_vec())
                .ok_or_else(|| Error::corrupt(dir, format!("meta `{name}` is missing")))
        };
        let version = get("format_version")?;
        let format_version = u32::from_le_bytes(
            version
                .as_slice()
                .try_into()
                .map_err(|_| Error::corrupt(dir, "meta `format_version` is not 4 bytes"))?,
        );
        check_format(dir, format_version)?;
        let identity: ModelIdentity = serde_json::from_slice(&get("identity")?)
            .map_err(|e| Error::corrupt(dir, format!("meta `identity`: {e}")))?;
        let uuid = String::from_utf8(get("uuid")?)
            .map_err(|_| Error::corrupt(dir, "meta `uuid` is not text"))?;
        let mut a = [0u64; 7];
        for (slot, name) in a.iter_mut().zip(COUNTER_NAMES) {
            let v = get(name)?;
            *slot = u64::from_le_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| Error::corrupt(dir, format!("meta `{name}` is not 8 bytes")))?,
            );
        }
        Ok(Store {
            db,
            dir: dir.into(),
            identity,
            uuid,
            format_version,
            counters: Counters::from_array(a),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    pub fn format_version(&self) -> u32 {
        self.format_version
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// A handle for reading from other threads (the decoders look up content hashes).
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            tree: (*self.db).clone(),
            dir: self.dir.clone(),
        }
    }

    pub fn db_err(&self, e: sled::Error) -> Error {
        Error::Db {
            path: self.dir.clone(),
            source: e,
        }
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush().map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Every entry with a key starting with `prefix`, keys without the kind byte.
    fn scan(&self, kind: u8, prefix: &[u8]) -> impl Iterator<Item = Result<(Vec<u8>, sled::IVec)>> {
        let mut key = vec![kind];
        key.extend_from_slice(prefix);
        let dir = self.dir.clone();
        self.db.scan_prefix(key).map(move |r| {
            r.map(|(k, v)| (k[1..].to_vec(), v)).map_err(|e| Error::Db {
                path: dir.clone(),
                source: e,
            })
        })
    }

    /// All records whose path starts with `prefix` (bytes).
    pub fn records(&self, prefix: &[u8]) -> impl Iterator<Item = Result<(Vec<u8>, Record)>> + '_ {
        self.scan(RECORD, prefix).map(|r| {
            let (k, v) = r?;
            let rec = Record::decode(&v).ok_or_else(|| self.bad("record", &k))?;
            Ok((k, rec))
        })
    }

    /// All content hashes and their entries.
    pub fn hashes(&self) -> impl Iterator<Item = Result<(Hash, HashEntry)>> + '_ {
        self.scan(HASH, &[]).map(|r| {
            let (k, v) = r?;
            let hash: Hash = k
                .as_slice()
                .try_into()
                .map_err(|_| self.bad("hash key", &k))?;
            let e = HashEntry::decode(&v).ok_or_else(|| self.bad("hash entry", &k))?;
            Ok((hash, e))
        })
    }

    /// All vectors: id, content hash, values.
    pub fn vectors(&self) -> impl Iterator<Item = Result<(u64, Hash, Vec<f32>)>> + '_ {
        self.scan(VECTOR, &[]).map(|r| {
            let (k, v) = r?;
            let vid = be_u64(&k).ok_or_else(|| self.bad("vector key", &k))?;
            let (hash, vec) = decode_vector(&v).ok_or_else(|| self.bad("vector", &k))?;
            Ok((vid, hash, vec))
        })
    }

    pub fn vector(&self, vid: u64) -> Result<Option<(Hash, Vec<f32>)>> {
        let v = self
            .db
            .get(key(VECTOR, &vid.to_be_bytes()))
            .map_err(|e| self.db_err(e))?;
        v.map(|v| decode_vector(&v).ok_or_else(|| self.bad("vector", &vid.to_be_bytes())))
            .transpose()
    }

    /// The change sequence, in order.
    pub fn changes(&self) -> impl Iterator<Item = Result<(u64, Change)>> + '_ {
        self.scan(CHANGE, &[]).map(|r| {
            let (k, v) = r?;
            let seq = be_u64(&k).ok_or_else(|| self.bad("change key", &k))?;
            let change = match (v.first(), v.get(1..9)) {
                (Some(1), Some(id)) => Change::Add(u64_at(id, 0)),
                (Some(2), Some(id)) => Change::Remove(u64_at(id, 0)),
                _ => return Err(self.bad("change", &k)),
            };
            Ok((seq, change))
        })
    }

    /// Drops the changes up to and including `seq` (they are in the graph snapshot now).
    pub fn truncate_changes(&self, seq: u64) -> Result<()> {
        let mut b = sled::Batch::default();
        for r in self.changes() {
            let (s, _) = r?;
            if s > seq {
                break;
            }
            b.remove(key(CHANGE, &s.to_be_bytes()));
        }
        self.db.apply_batch(b).map_err(|e| self.db_err(e))?;
        self.flush()
    }

    pub fn record(&self, path: &[u8]) -> Result<Option<Record>> {
        let v = self.db.get(key(RECORD, path)).map_err(|e| self.db_err(e))?;
        v.map(|v| Record::decode(&v).ok_or_else(|| self.bad("record", path)))
            .transpose()
    }

    fn hash_entry(&self, hash: &Hash) -> Result<Option<HashEntry>> {
        self.reader().hash_entry(hash)
    }

    fn bad(&self, what: &str, key: &[u8]) -> Error {
        Error::corrupt(
            &self.dir,
            format!("malformed {what} at key {}", String::from_utf8_lossy(key)),
        )
    }

    /// Starts a batch of changes.
    pub fn txn(&self) -> Txn<'_> {
        Txn {
            store: self,
            batch: sled::Batch::default(),
            counters: self.counters,
            hashes: HashMap::new(),
            records: HashMap::new(),
            ops: Vec::new(),
            unrefs: Vec::new(),
        }
    }

    /// Applies a batch atomically and makes it durable; returns the reader-log ops it amounts to
    /// and the batch number.
    pub fn commit(&mut self, pending: Pending) -> Result<(u64, Vec<ViewOp>)> {
        let Pending {
            mut batch,
            mut counters,
            ops,
        } = pending;
        counters.batch += 1;
        put_counters(&mut batch, &counters);
        self.db.apply_batch(batch).map_err(|e| self.db_err(e))?;
        self.flush()?;
        self.counters = counters;
        Ok((counters.batch, ops))
    }
}

/// A cloneable read handle on the database, for other threads.
#[derive(Clone)]
pub(crate) struct StoreReader {
    tree: sled::Tree,
    dir: PathBuf,
}

impl StoreReader {
    pub fn hash_entry(&self, hash: &Hash) -> Result<Option<HashEntry>> {
        let v = self.tree.get(key(HASH, hash)).map_err(|e| Error::Db {
            path: self.dir.clone(),
            source: e,
        })?;
        v.map(|v| {
            HashEntry::decode(&v)
                .ok_or_else(|| Error::corrupt(&self.dir, "malformed hash entry".to_string()))
        })
        .transpose()
    }
}

/// A batch being assembled: reads see the batch's own writes.
pub(crate) struct Txn<'s> {
    store: &'s Store,
    batch: sled::Batch,
    counters: Counters,
    hashes: HashMap<Hash, Option<HashEntry>>,
    records: HashMap<Vec<u8>, Option<Record>>,
    ops: Vec<ViewOp>,
    /// Contents that lost a record in this batch. Dropped at the end, so that content moving
    /// between files within a batch (two files swapping contents) keeps its vector.
    unrefs: Vec<Hash>,
}

/// A finished [`Txn`], no longer borrowing the store.
pub(crate) struct Pending {
    batch: sled::Batch,
    counters: Counters,
    ops: Vec<ViewOp>,
}

impl Txn<'_> {
    /// Applies the deferred reference drops and hands the batch over for commit.
    pub fn finish(mut self) -> Result<Pending> {
        for hash in std::mem::take(&mut self.unrefs) {
            self.unref(hash)?;
        }
        Ok(Pending {
            batch: self.batch,
            counters: self.counters,
            ops: self.ops,
        })
    }

    pub fn hash_entry(&self, hash: &Hash) -> Result<Option<HashEntry>> {
        match self.hashes.get(hash) {
            Some(e) => Ok(*e),
            None => self.store.hash_entry(hash),
        }
    }

    pub fn record(&self, path: &[u8]) -> Result<Option<Record>> {
        match self.records.get(path) {
            Some(r) => Ok(*r),
            None => self.store.record(path),
        }
    }

    fn put_hash(&mut self, hash: Hash, e: Option<HashEntry>) {
        match e {
            Some(e) => self.batch.insert(key(HASH, &hash), e.encode().to_vec()),
            None => self.batch.remove(key(HASH, &hash)),
        }
        self.hashes.insert(hash, e);
    }

    fn change(&mut self, c: Change) {
        self.counters.seq += 1;
        let (op, vid) = match c {
            Change::Add(v) => (1u8, v),
            Change::Remove(v) => (2u8, v),
        };
        let mut val = [op; 9];
        val[1..].copy_from_slice(&vid.to_le_bytes());
        self.batch
            .insert(key(CHANGE, &self.counters.seq.to_be_bytes()), val.to_vec());
    }

    /// Stores a new (normalized) vector for content `hash`, which has none; a record must point at
    /// it in the same batch.
    pub fn add_vector(&mut self, hash: Hash, vector: &[f32]) -> u64 {
        let vid = self.counters.next_vid;
        self.counters.next_vid += 1;
        self.counters.vectors += 1;
        let mut val = Vec::with_capacity(32 + vector.len() * 4);
        val.extend_from_slice(&hash);
        for x in vector {
            val.extend_from_slice(&x.to_le_bytes());
        }
        self.batch.insert(key(VECTOR, &vid.to_be_bytes()), val);
        self.put_hash(hash, Some(HashEntry { vid, refs: 0 }));
        self.change(Change::Add(vid));
        let op = ViewOp::AddVector {
            vid,
            vector: vector.to_vec(),
        };
        self.counters.view_live_bytes += op.encoded_len() as u64;
        self.ops.push(op);
        vid
    }

    fn unref(&mut self, hash: Hash) -> Result<()> {
        let mut e = self
            .hash_entry(&hash)?
            .ok_or_else(|| Error::corrupt(&self.store.dir, "a record points at a missing hash"))?;
        e.refs = e.refs.saturating_sub(1);
        if e.refs > 0 {
            self.put_hash(hash, Some(e));
            return Ok(());
        }
        self.put_hash(hash, None);
        self.batch.remove(key(VECTOR, &e.vid.to_be_bytes()));
        self.counters.vectors -= 1;
        self.change(Change::Remove(e.vid));
        let dim = self.store.identity.dim;
        let added = ViewOp::AddVector {
            vid: e.vid,
            vector: Vec::new(),
        }
        .encoded_len()
            + 4 * dim;
        self.counters.view_live_bytes = self.counters.view_live_bytes.saturating_sub(added as u64);
        self.ops.push(ViewOp::RemoveVector { vid: e.vid });
        Ok(())
    }

    /// Points `path` at the content `hash`, which must have a vector (stored or added in this
    /// batch). Replaces what the path pointed at before.
    pub fn set_record(&mut self, path: &[u8], size: u64, mtime_ns: i64, hash: Hash) -> Result<()> {
        let old = self.record(path)?;
        let id = match old {
            Some(o) => o.id,
            None => {
                self.counters.next_record += 1;
                self.counters.records += 1;
                self.counters.next_record - 1
            }
        };
        let rec = Record {
            id,
            size,
            mtime_ns,
            hash,
        };
        self.batch.insert(key(RECORD, path), rec.encode().to_vec());
        self.records.insert(path.to_vec(), Some(rec));
        if old.map(|o| o.hash) == Some(hash) {
            return Ok(());
        }
        let mut e = self.hash_entry(&hash)?.ok_or_else(|| {
            Error::corrupt(&self.store.dir, "set_record on content without a vector")
        })?;
        e.refs += 1;
        self.put_hash(hash, Some(e));
        if let Some(o) = old {
            self.unrefs.push(o.hash);
        } else {
            self.counters.view_live_bytes += ViewOp::path_len(path) as u64;
        }
        self.ops.push(ViewOp::SetPath {
            path: path.to_vec(),
            vid: e.vid,
        });
        Ok(())
    }

    /// Removes the record of `path` (and its vector when no other record shares it).
    pub fn remove_record(&mut self, path: &[u8]) -> Result<()> {
        let Some(old) = self.record(path)? else {
            return Ok(());
        };
        self.batch.remove(key(RECORD, path));
        self.records.insert(path.to_vec(), None);
        self.counters.records -= 1;
        self.counters.view_live_bytes = self
            .counters
            .view_live_bytes
            .saturating_sub(ViewOp::path_len(path) as u64);
        self.unrefs.push(old.hash);
        self.ops.push(ViewOp::RemovePath {
            path: path.to_vec(),
        });
        Ok(())
    }
}

pub(crate) fn check_format(path: &Path, found: u32) -> Result<()> {
    if found > FORMAT_VERSION {
        return Err(Error::UnsupportedFormat {
            path: path.into(),
            found,
            oldest: OLDEST_SUPPORTED_FORMAT,
            current: FORMAT_VERSION,
            hint: "it was written by a newer cnclip; upgrade cnclip",
        });
    }
    if found < OLDEST_SUPPORTED_FORMAT {
        return Err(Error::UnsupportedFormat {
            path: path.into(),
            found,
            oldest: OLDEST_SUPPORTED_FORMAT,
            current: FORMAT_VERSION,
            hint: "rebuild it into a new --index",
        });
    }
    Ok(())
}

/// Sets the stored format version (tests use it to make an index from the future).
#[doc(hidden)]
pub(crate) fn set_format_version(dir: &Path, version: u32) -> Result<()> {
    let db = open_db(dir)?;
    db.insert(meta_key("format_version"), version.to_le_bytes().to_vec())
        .map_err(|e| Error::Db {
            path: dir.into(),
            source: e,
        })?;
    db.flush().map_err(|e| Error::Db {
        path: dir.into(),
        source: e,
    })?;
    Ok(())
}

fn put_counters(b: &mut sled::Batch, c: &Counters) {
    for (name, v) in COUNTER_NAMES.iter().zip(c.as_array()) {
        b.insert(meta_key(name), v.to_le_bytes().to_vec());
    }
}

fn meta_key(name: &str) -> Vec<u8> {
    key(META, name.as_bytes())
}

fn key(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(kind);
    k.extend_from_slice(rest);
    k
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

fn decode_vector(v: &[u8]) -> Option<(Hash, Vec<f32>)> {
    if v.len() < 32 || !(v.len() - 32).is_multiple_of(4) {
        return None;
    }
    let hash: Hash = v[..32].try_into().ok()?;
    let vec = v[32..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    Some((hash, vec))
}
