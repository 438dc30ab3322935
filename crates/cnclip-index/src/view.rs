//! The reader log (`reader.log`): how other processes read an index while a build holds sled.
//!
//! sled admits one process per database, and a build holds it for hours. So after every durable
//! commit the writer appends the same batch to this append-only log: one checksummed frame per
//! batch, carrying the batch number. A reader replays whole frames and stops at the first one that
//! is incomplete or fails its checksum (a frame being written): it sees exactly the committed
//! batches, never half of one, and never needs the lock.
//!
//! The log is derived from sled, never the other way round. The writer checks on open that the
//! log's last frame is sled's last batch (a crash can fall between sled's flush and the append);
//! when it is not, or the log is damaged, or dead entries dominate it, the writer rewrites it from
//! sled into a temporary file, fsyncs it and renames it over the old one. Readers notice the new
//! file (another inode) and reload.
//!
//! Layout: `CNCLIPRL`, format `u32`, header length `u32`, JSON header ([`ViewHeader`]), CRC-32 of
//! the header; then frames `len u32 | crc32 u32 | payload | len u32 | FRAME_END u32`, payload =
//! batch `u64` + ops (see [`ViewOp`]). All integers little-endian.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::identity::{ModelIdentity, FORMAT_VERSION};
use crate::store::{check_format, Store};

const MAGIC: &[u8; 8] = b"CNCLIPRL";
const FRAME_END: u32 = 0x4D52_4643; // "CFRM"
/// A frame larger than this is damage, not data (the writer keeps frames to a few MiB).
const MAX_FRAME: u32 = 1 << 30;
/// Target payload size of the frames of a rewritten log.
const REWRITE_FRAME: usize = 4 << 20;

/// The log's file name inside the index directory.
pub const FILE_NAME: &str = "reader.log";

/// What the log says about the index it mirrors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewHeader {
    /// The index's uuid (a log from another index is never mistaken for this one's).
    pub uuid: String,
    /// The model the vectors come from.
    pub identity: ModelIdentity,
}

/// One change, as readers replay it.
#[derive(Clone, Debug, PartialEq)]
pub enum ViewOp {
    /// A vector (normalized) appears.
    AddVector {
        /// Vector id (never reused).
        vid: u64,
        /// The values.
        vector: Vec<f32>,
    },
    /// A vector goes away.
    RemoveVector {
        /// Vector id.
        vid: u64,
    },
    /// A file path now shows vector `vid` (new file, or its content changed).
    SetPath {
        /// Path bytes (`OsStr` bytes, not necessarily UTF-8).
        path: Vec<u8>,
        /// Vector id.
        vid: u64,
    },
    /// A file path is no longer indexed.
    RemovePath {
        /// Path bytes.
        path: Vec<u8>,
    },
}

impl ViewOp {
    /// Bytes this op takes in a frame.
    pub fn encoded_len(&self) -> usize {
        match self {
            ViewOp::AddVector { vector, .. } => 1 + 8 + 4 + 4 * vector.len(),
            ViewOp::RemoveVector { .. } => 9,
            ViewOp::SetPath { path, .. } => Self::path_len(path),
            ViewOp::RemovePath { path } => 5 + path.len(),
        }
    }

    /// Bytes a `SetPath` of this path takes.
    pub fn path_len(path: &[u8]) -> usize {
        13 + path.len()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ViewOp::AddVector { vid, vector } => {
                out.push(1);
                out.extend_from_slice(&vid.to_le_bytes());
                out.extend_from_slice(&(vector.len() as u32).to_le_bytes());
                for x in vector {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
            ViewOp::RemoveVector { vid } => {
                out.push(2);
                out.extend_from_slice(&vid.to_le_bytes());
            }
            ViewOp::SetPath { path, vid } => {
                out.push(3);
                out.extend_from_slice(&vid.to_le_bytes());
                out.extend_from_slice(&(path.len() as u32).to_le_bytes());
                out.extend_from_slice(path);
            }
            ViewOp::RemovePath { path } => {
                out.push(4);
                out.extend_from_slice(&(path.len() as u32).to_le_bytes());
                out.extend_from_slice(path);
            }
        }
    }
}

/// Decodes a frame's payload: batch number and ops. `None` when it does not parse.
fn decode_payload(p: &[u8]) -> Option<(u64, Vec<ViewOp>)> {
    struct Cur<'a>(&'a [u8]);
    impl<'a> Cur<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let (a, b) = (self.0.get(..n)?, self.0.get(n..)?);
            self.0 = b;
            Some(a)
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
        }
        fn u64(&mut self) -> Option<u64> {
            Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
        }
    }
    let mut c = Cur(p);
    let batch = c.u64()?;
    let mut ops = Vec::new();
    while !c.0.is_empty() {
        let op = match c.take(1)?[0] {
            1 => {
                let vid = c.u64()?;
                let n = c.u32()? as usize;
                let raw = c.take(n.checked_mul(4)?)?;
                let vector = raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .collect();
                ViewOp::AddVector { vid, vector }
            }
            2 => ViewOp::RemoveVector { vid: c.u64()? },
            3 => {
                let vid = c.u64()?;
                let n = c.u32()? as usize;
                ViewOp::SetPath {
                    path: c.take(n)?.to_vec(),
                    vid,
                }
            }
            4 => {
                let n = c.u32()? as usize;
                ViewOp::RemovePath {
                    path: c.take(n)?.to_vec(),
                }
            }
            _ => return None,
        };
        ops.push(op);
    }
    Some((batch, ops))
}

fn encode_frame(batch: u64, ops: &[ViewOp]) -> Vec<u8> {
    let payload_len = 8 + ops.iter().map(ViewOp::encoded_len).sum::<usize>();
    let mut out = Vec::with_capacity(payload_len + 16);
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&batch.to_le_bytes());
    for op in ops {
        op.encode(&mut out);
    }
    let crc = crc32fast::hash(&out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&FRAME_END.to_le_bytes());
    out
}

fn encode_header(h: &ViewHeader) -> Vec<u8> {
    let json = serde_json::to_vec(h).expect("serializable");
    let mut out = Vec::with_capacity(json.len() + 20);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
    out
}

/// Reads the header; returns it and the offset of the first frame.
fn read_header(path: &Path, r: &mut impl Read) -> Result<(ViewHeader, u64)> {
    let bad = |what: &str| Error::corrupt(path, format!("reader log header: {what}"));
    let mut head = [0u8; 16];
    r.read_exact(&mut head).map_err(|_| bad("too short"))?;
    if &head[..8] != MAGIC {
        return Err(bad("not a cnclip reader log"));
    }
    check_format(path, u32::from_le_bytes(head[8..12].try_into().expect("4")))?;
    let n = u32::from_le_bytes(head[12..16].try_into().expect("4")) as usize;
    if n > 1 << 20 {
        return Err(bad("implausible length"));
    }
    let mut json = vec![0u8; n + 4];
    r.read_exact(&mut json).map_err(|_| bad("truncated"))?;
    let crc = u32::from_le_bytes(json[n..].try_into().expect("4"));
    if crc32fast::hash(&json[..n]) != crc {
        return Err(bad("checksum mismatch"));
    }
    let h = serde_json::from_slice(&json[..n]).map_err(|e| bad(&e.to_string()))?;
    Ok((h, 16 + n as u64 + 4))
}

/// The outcome of reading one frame.
enum Frame {
    /// A complete, valid frame: its batch, ops and total length.
    Ok(u64, Vec<ViewOp>, u64),
    /// Nothing more to read (end of file, an incomplete frame, or a frame failing its checksum).
    End,
}

fn read_frame(r: &mut impl Read) -> Frame {
    let mut head = [0u8; 8];
    if r.read_exact(&mut head).is_err() {
        return Frame::End;
    }
    let len = u32::from_le_bytes(head[..4].try_into().expect("4"));
    let crc = u32::from_le_bytes(head[4..].try_into().expect("4"));
    if !(8..=MAX_FRAME).contains(&len) {
        return Frame::End;
    }
    let mut payload = vec![0u8; len as usize + 8];
    if r.read_exact(&mut payload).is_err() {
        return Frame::End;
    }
    let (payload, tail) = payload.split_at(len as usize);
    if tail[..4] != len.to_le_bytes() || tail[4..] != FRAME_END.to_le_bytes() {
        return Frame::End;
    }
    if crc32fast::hash(payload) != crc {
        return Frame::End;
    }
    match decode_payload(payload) {
        Some((batch, ops)) => Frame::Ok(batch, ops, u64::from(len) + 16),
        None => Frame::End,
    }
}

/// Reads the committed batches of an index's reader log, without any lock.
#[derive(Debug)]
pub struct ViewReader {
    path: PathBuf,
    reader: BufReader<File>,
    offset: u64,
    ino: (u64, u64),
    header: ViewHeader,
    batch: u64,
}

impl ViewReader {
    /// Opens the reader log of the index in `dir`.
    pub fn open(dir: &Path) -> Result<ViewReader> {
        let path = dir.join(FILE_NAME);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(if dir.is_dir() && crate::store::db_path(dir).is_dir() {
                    Error::corrupt(
                        dir,
                        "the reader log is missing; run `cnclip-index build` once to restore it",
                    )
                } else {
                    Error::NotAnIndex { path: dir.into() }
                });
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let (header, offset) = read_header(&path, &mut reader)?;
        Ok(ViewReader {
            path,
            reader,
            offset,
            ino: (meta.dev(), meta.ino()),
            header,
            batch: 0,
        })
    }

    /// The header: index uuid and model identity.
    pub fn header(&self) -> &ViewHeader {
        &self.header
    }

    /// The last batch read.
    pub fn batch(&self) -> u64 {
        self.batch
    }

    /// Reads every complete frame after the last one read, handing their ops to `apply` frame by
    /// frame. Returns the number of frames read.
    pub fn read_new(&mut self, apply: &mut dyn FnMut(ViewOp)) -> Result<usize> {
        self.reader
            .seek(SeekFrom::Start(self.offset))
            .map_err(|e| Error::io(&self.path, e))?;
        let mut frames = 0;
        while let Frame::Ok(batch, ops, len) = read_frame(&mut self.reader) {
            ops.into_iter().for_each(&mut *apply);
            self.offset += len;
            self.batch = batch;
            frames += 1;
        }
        Ok(frames)
    }

    /// Whether the writer has replaced the log (rewrite or compaction): reopen to read it.
    pub fn is_replaced(&self) -> bool {
        match fs::metadata(&self.path) {
            Ok(m) => (m.dev(), m.ino()) != self.ino,
            Err(_) => true,
        }
    }
}

/// Writes the log of a new, empty index (batch 0), atomically.
pub(crate) fn write_empty(dir: &Path, header: &ViewHeader) -> Result<()> {
    let mut bytes = encode_header(header);
    bytes.extend_from_slice(&encode_frame(0, &[]));
    crate::fsutil::write_atomically(&dir.join(FILE_NAME), &bytes)
}

/// The writer's end of the log.
pub(crate) struct ViewWriter {
    path: PathBuf,
    file: File,
    len: u64,
}

impl ViewWriter {
    /// Opens the log for appending, rewriting it from sled when it is missing, damaged, from
    /// another index, or does not end at sled's last batch (a crash fell between the two).
    /// Returns the writer and whether it had to rewrite.
    pub fn open(store: &Store) -> Result<(ViewWriter, bool)> {
        let path = store.dir().join(FILE_NAME);
        match Self::check(store, &path)? {
            Some(len) => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| Error::io(&path, e))?;
                file.set_len(len).map_err(|e| Error::io(&path, e))?;
                Ok((ViewWriter { path, file, len }, false))
            }
            None => Ok((Self::rewrite(store)?, true)),
        }
    }

    /// The length up to which the log is good and ends at sled's batch, if it is usable.
    fn check(store: &Store, path: &Path) -> Result<Option<u64>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        let want = ViewHeader {
            uuid: store.uuid().into(),
            identity: store.identity().clone(),
        };
        let total = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut r = BufReader::with_capacity(1 << 20, file);
        let first = match read_header(path, &mut r) {
            Ok((h, off)) if h == want => off,
            _ => return Ok(None),
        };
        let batch = store.counters().batch;
        // Fast path: the last frame is intact and is sled's last batch.
        if total >= first + 16 {
            let mut tail = [0u8; 8];
            if r.get_ref().read_exact_at(&mut tail, total - 8).is_ok()
                && tail[4..] == FRAME_END.to_le_bytes()
            {
                let len = u64::from(u32::from_le_bytes(tail[..4].try_into().expect("4")));
                if let Some(start) = total.checked_sub(len + 16).filter(|s| *s >= first) {
                    r.seek(SeekFrom::Start(start))
                        .map_err(|e| Error::io(path, e))?;
                    if let Frame::Ok(b, _, _) = read_frame(&mut r) {
                        return Ok((b == batch).then_some(total));
                    }
                }
            }
        }
        // Slow path (after a crash mid-append): find the last complete frame.
        r.seek(SeekFrom::Start(first))
            .map_err(|e| Error::io(path, e))?;
        let (mut end, mut last) = (first, None);
        while let Frame::Ok(b, _, len) = read_frame(&mut r) {
            end += len;
            last = Some(b);
        }
        Ok((last == Some(batch)).then_some(end))
    }

    /// Writes the whole log from sled's state, atomically replacing the old one.
    pub fn rewrite(store: &Store) -> Result<ViewWriter> {
        let dir = store.dir();
        let path = dir.join(FILE_NAME);
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        let batch = store.counters().batch;
        let mut out = std::io::BufWriter::new(File::create(&tmp).map_err(|e| Error::io(&tmp, e))?);
        let io = |e| Error::io(&tmp, e);
        let header = ViewHeader {
            uuid: store.uuid().into(),
            identity: store.identity().clone(),
        };
        out.write_all(&encode_header(&header)).map_err(io)?;
        let mut ops = Vec::new();
        let mut size = 0;
        let mut frames = 0;
        let flush =
            |ops: &mut Vec<ViewOp>, size: &mut usize, out: &mut dyn Write, n: &mut usize| {
                *n += 1;
                *size = 0;
                out.write_all(&encode_frame(batch, &std::mem::take(ops)))
            };
        let mut hashes = std::collections::HashMap::new();
        for r in store.hashes() {
            let (h, e) = r?;
            hashes.insert(h, e.vid);
        }
        for r in store.vectors() {
            let (vid, _, vector) = r?;
            let op = ViewOp::AddVector { vid, vector };
            size += op.encoded_len();
            ops.push(op);
            if size >= REWRITE_FRAME {
                flush(&mut ops, &mut size, &mut out, &mut frames).map_err(io)?;
            }
        }
        for r in store.records(&[]) {
            let (path, rec) = r?;
            let vid = *hashes
                .get(&rec.hash)
                .ok_or_else(|| Error::corrupt(dir, "a record points at a missing hash"))?;
            let op = ViewOp::SetPath { path, vid };
            size += op.encoded_len();
            ops.push(op);
            if size >= REWRITE_FRAME {
                flush(&mut ops, &mut size, &mut out, &mut frames).map_err(io)?;
            }
        }
        if !ops.is_empty() || frames == 0 {
            flush(&mut ops, &mut size, &mut out, &mut frames).map_err(io)?;
        }
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        crate::fsutil::rename_durably(&tmp, &path)?;
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        Ok(ViewWriter { path, file, len })
    }

    /// Appends one committed batch. Not fsynced: after kill -9 the page cache keeps it, and after a
    /// power loss the next open finds the log behind sled and rewrites it.
    pub fn append(&mut self, batch: u64, ops: &[ViewOp]) -> Result<()> {
        let frame = encode_frame(batch, ops);
        self.file
            .write_all_at(&frame, self.len)
            .map_err(|e| Error::io(&self.path, e))?;
        self.len += frame.len() as u64;
        Ok(())
    }

    /// Current length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
}
