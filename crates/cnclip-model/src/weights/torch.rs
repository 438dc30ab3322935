//! `torch.save` files: the zip format (torch ≥ 1.6) and the legacy stream format, read with the
//! restricted unpickler in [`super::pickle`].
//!
//! Zip layout: `<folder>/data.pkl` (the pickle; `<folder>` is the file's stem, `archive`, …),
//! `<folder>/data/<key>` (one raw storage per key), `<folder>/byteorder` (`little`/`big`, absent
//! in older files = little). Legacy layout: five pickles in a row (magic number, protocol 1001,
//! system info, the object, the list of storage keys), then each storage as an 8-byte element
//! count followed by its raw bytes (torch `serialization.py`, `_legacy_save` / `_legacy_load`).
//!
//! Only the storages that the state dict's kept tensors use are read: an `optimizer` entry is
//! parsed (it is part of the pickle) but its tensors are never materialised.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::error::WeightsError;
use super::pickle::{self, Pickle, StorageDType, TensorRef, Value};
use super::{TensorHead, HEAD_LEN};

/// What a reader returns: tensors as named in the file, converted to f32 (or only their heads).
pub(crate) type Tensors = Vec<(String, Loaded)>;

/// How much of a stored tensor a reader materialises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Select {
    /// Not at all (ignored names, such as `bert.pooler.*`).
    Skip,
    /// Its shape and first [`HEAD_LEN`] values only (a tower left out, see `Towers`).
    Head,
    /// All of it.
    Full,
}

/// One stored tensor, read whole or only its head.
#[derive(Debug, Clone)]
pub(crate) enum Loaded {
    Full(Tensor),
    Head(TensorHead),
}

/// The first bytes of a legacy `torch.save` file: protocol 2, `LONG1` of the 10-byte magic
/// number 0x1950a86a20f9469cfc6c (`torch/serialization.py`, `MAGIC_NUMBER`).
pub(crate) const LEGACY_MAGIC: [u8; 14] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];

/// Largest `data.pkl` accepted (state dicts are kilobytes to a few megabytes).
const MAX_PICKLE_BYTES: u64 = 1 << 30;

fn archive(reason: String) -> WeightsError {
    WeightsError::Archive { reason }
}

/// Reads the state dict of a torch zip checkpoint; `select(name)` says how much of each entry to
/// materialise. A storage whose tensors are all [`Select::Head`] is read only as far as their
/// heads reach.
pub(crate) fn read_zip(
    path: &Path,
    select: &dyn Fn(&str) -> Select,
) -> Result<Tensors, WeightsError> {
    let file = File::open(path).map_err(|e| WeightsError::io("cannot open", e))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| archive(format!("not a readable zip archive ({e})")))?;
    let pkl_name = zip
        .file_names()
        .filter(|n| *n == "data.pkl" || (n.ends_with("/data.pkl") && n.matches('/').count() == 1))
        .min()
        .map(str::to_owned)
        .ok_or_else(|| archive("no data.pkl entry: not a torch checkpoint".into()))?;
    let prefix = pkl_name.strip_suffix("data.pkl").unwrap_or("").to_owned();
    let pkl = read_entry(&mut zip, &pkl_name, MAX_PICKLE_BYTES + 1)?;
    let big_endian = match zip.by_name(&format!("{prefix}byteorder")) {
        Ok(mut f) => {
            let mut s = String::new();
            f.read_to_string(&mut s)
                .map_err(|e| archive(format!("cannot read {prefix}byteorder: {e}")))?;
            match s.trim() {
                "little" => false,
                "big" => true,
                other => return Err(archive(format!("unknown byteorder {other:?}"))),
            }
        }
        Err(_) => false,
    };
    let p = pickle::parse(&pkl)?;
    let groups: Vec<_> = group_by_storage(&p, select)?.into_iter().collect();
    drop(zip);
    // Storages are read in parallel, each thread with its own handle on the archive: reading,
    // CRC-checking and converting 0.75 GB (ViT-B-16) is most of a one-query process's start-up.
    let chunks: Vec<Result<Tensors, WeightsError>> = groups
        .par_iter()
        .map_init(
            || {
                File::open(path)
                    .map_err(|e| WeightsError::io("cannot open", e))
                    .and_then(|f| {
                        zip::ZipArchive::new(BufReader::new(f))
                            .map_err(|e| archive(format!("not a readable zip archive ({e})")))
                    })
            },
            |zip, (key, tensors)| {
                let zip = zip.as_mut().map_err(|e| archive(e.to_string()))?;
                let entry = format!("{prefix}data/{key}");
                // The storage's size per the pickle.
                let whole = tensors
                    .iter()
                    .map(|(_, t, _)| storage_bytes(t))
                    .max()
                    .unwrap_or(0);
                let bytes = if tensors.iter().all(|(_, _, sel)| *sel == Select::Head) {
                    let reach = tensors.iter().map(|(_, t, _)| head_reach(t)).max();
                    read_entry_prefix(zip, &entry, reach.unwrap_or(0), whole)?
                } else {
                    // One byte more, so that a complete read reaches the entry's end (and its
                    // CRC check).
                    read_entry(zip, &entry, whole.saturating_add(1))?
                };
                tensors
                    .iter()
                    .map(|(name, t, sel)| {
                        Ok((name.clone(), load(name, &bytes, t, *sel, big_endian)?))
                    })
                    .collect()
            },
        )
        .collect();
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend(chunk?);
    }
    Ok(out)
}

/// Bytes of the storage `t` views, per the pickle.
fn storage_bytes(t: &TensorRef) -> u64 {
    let s = &t.storage;
    (s.view_offset as u64 + s.numel as u64).saturating_mul(s.dtype.size() as u64)
}

/// Bytes of its storage that [`head_of`] needs for `t`: up to its first [`HEAD_LEN`] elements
/// when they are consecutive (a row-major view), else the whole storage.
fn head_reach(t: &TensorRef) -> u64 {
    if !is_row_major(&t.size, &t.stride) {
        return storage_bytes(t);
    }
    let numel = t.size.iter().fold(1u64, |a, &s| a.saturating_mul(s as u64));
    let s = &t.storage;
    (s.view_offset as u64)
        .saturating_add(t.offset as u64)
        .saturating_add(numel.min(HEAD_LEN as u64))
        .saturating_mul(s.dtype.size() as u64)
        .min(storage_bytes(t))
}

/// Reads the first `n` bytes of an entry whose full size must be `whole` (what the pickle says),
/// without reading the rest (so without its CRC check).
fn read_entry_prefix<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    n: u64,
    whole: u64,
) -> Result<Vec<u8>, WeightsError> {
    let f = zip
        .by_name(name)
        .map_err(|e| archive(format!("entry {name}: {e}")))?;
    if f.size() != whole {
        return Err(archive(format!(
            "entry {name} holds {} bytes, the pickle says {whole}",
            f.size()
        )));
    }
    let mut buf = Vec::with_capacity(n.min(whole) as usize);
    f.take(n)
        .read_to_end(&mut buf)
        .map_err(|e| archive(format!("cannot read entry {name}: {e}")))?;
    if (buf.len() as u64) < n.min(whole) {
        return Err(archive(format!("entry {name} is shorter than it says")));
    }
    Ok(buf)
}

/// Reads at most `limit` bytes of an entry. Memory grows with the bytes actually read, so a
/// corrupt size field or a deflate bomb cannot make us allocate more than `limit`. A complete
/// read (the entry is shorter than `limit`) also verifies the entry's CRC-32.
fn read_entry<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    limit: u64,
) -> Result<Vec<u8>, WeightsError> {
    let f = zip
        .by_name(name)
        .map_err(|e| archive(format!("entry {name}: {e}")))?;
    let mut buf = Vec::with_capacity(f.size().min(limit).min(1 << 30) as usize);
    f.take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| archive(format!("cannot read entry {name}: {e}")))?;
    if buf.len() as u64 == limit {
        return Err(archive(format!("entry {name} is larger than expected")));
    }
    Ok(buf)
}

/// Reads a legacy (pre-zip) `torch.save` stream held in memory.
pub(crate) fn read_legacy(
    bytes: &[u8],
    select: &dyn Fn(&str) -> Select,
) -> Result<Tensors, WeightsError> {
    let mut pos = 0;
    let mut next = |what: &str| -> Result<Pickle, WeightsError> {
        let p = pickle::parse(&bytes[pos..]).map_err(|e| match e {
            WeightsError::Pickle { offset, reason } => WeightsError::Pickle {
                offset: offset + pos,
                reason: format!("{what}: {reason}"),
            },
            e => e,
        })?;
        pos += p.end;
        Ok(p)
    };
    let _magic = next("magic number")?;
    let protocol = next("protocol version")?;
    if protocol.get(protocol.root) != &Value::Int(1001) {
        return Err(archive(
            "legacy torch file with an unknown protocol version".into(),
        ));
    }
    let sys = next("system info")?;
    let big_endian = match sys.dict_get(sys.root, "little_endian").map(|v| sys.get(v)) {
        Some(Value::Bool(little)) => !little,
        _ => false,
    };
    let main = next("state dict")?;
    let keys = next("storage keys")?;
    let groups = group_by_storage(&main, select)?;
    // Element type of every storage (kept or not), to step over the ones we skip.
    let dtypes: HashMap<&str, StorageDType> = main
        .values
        .iter()
        .filter_map(|v| match v {
            Value::Storage(s) => Some((s.key.as_str(), s.dtype)),
            Value::Tensor(t) => Some((t.storage.key.as_str(), t.storage.dtype)),
            _ => None,
        })
        .collect();
    let Value::List(key_ids) = keys.get(keys.root) else {
        return Err(archive("legacy storage key list is not a list".into()));
    };
    let mut data: HashMap<String, &[u8]> = HashMap::new();
    for &k in key_ids {
        let key = keys
            .str(k)
            .ok_or_else(|| archive("legacy storage key is not a string".into()))?;
        let dtype = dtypes
            .get(key)
            .ok_or_else(|| archive(format!("legacy storage {key} is not referenced")))?;
        let header = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| archive(format!("truncated before storage {key}")))?;
        let mut n = [0u8; 8];
        n.copy_from_slice(header);
        let numel = if big_endian {
            u64::from_be_bytes(n)
        } else {
            u64::from_le_bytes(n)
        };
        let len = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| archive(format!("storage {key} has an impossible size")))?;
        let start = pos + 8;
        let slice = bytes
            .get(start..start.saturating_add(len))
            .ok_or_else(|| archive(format!("truncated inside storage {key}")))?;
        data.insert(key.to_owned(), slice);
        pos = start + len;
    }
    let mut out = Vec::new();
    for (key, tensors) in groups {
        let bytes = data
            .get(&key)
            .ok_or_else(|| archive(format!("storage {key} is missing from the file")))?;
        for (name, t, sel) in tensors {
            let loaded = load(&name, bytes, &t, sel, big_endian)?;
            out.push((name, loaded));
        }
    }
    Ok(out)
}

/// A file that is a pickle but not a torch checkpoint: parsed only to refuse or to explain.
pub(crate) fn read_bare_pickle(bytes: &[u8]) -> Result<Tensors, WeightsError> {
    // A protocol 0/1 pickle starts with a printable opcode: require its final STOP too before
    // calling a text file a pickle.
    if bytes.first() != Some(&0x80) && bytes.last() != Some(&b'.') {
        return Err(WeightsError::UnknownFormat {
            reason: "neither a torch checkpoint (zip or legacy pickle) nor safetensors".into(),
        });
    }
    pickle::parse(bytes)?;
    Err(WeightsError::UnknownFormat {
        reason: "a bare pickle without tensor data (not a torch.save file)".into(),
    })
}

/// The state dict's selected tensors, grouped by storage key (so each storage is read once).
type StorageGroups = BTreeMap<String, Vec<(String, TensorRef, Select)>>;

fn group_by_storage(
    p: &Pickle,
    select: &dyn Fn(&str) -> Select,
) -> Result<StorageGroups, WeightsError> {
    let entries = state_dict_entries(p)?;
    let mut groups = StorageGroups::new();
    for (name, t) in entries {
        let sel = select(&name);
        if sel != Select::Skip {
            groups
                .entry(t.storage.key.clone())
                .or_default()
                .push((name, t, sel));
        }
    }
    Ok(groups)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::Int(_) | Value::BigInt(_) => "an int",
        Value::Float(_) => "a float",
        Value::Str(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::Tuple(_) => "a tuple",
        Value::List(_) => "a list",
        Value::Dict(_) => "a dict",
        Value::Global(_) => "a class",
        Value::Storage(_) => "a storage",
        Value::Tensor(_) => "a tensor",
        Value::Inert(_) => "an opaque object",
    }
}

/// `obj['state_dict']` if present (cn_clip's training checkpoints), else `obj` itself (a bare
/// state dict, as transformers' `pytorch_model.bin`).
fn state_dict_entries(p: &Pickle) -> Result<Vec<(String, TensorRef)>, WeightsError> {
    let no = |reason: String| WeightsError::NoStateDict { reason };
    let wrapped = p.dict_get(p.root, "state_dict");
    let sd = wrapped.unwrap_or(p.root);
    let Value::Dict(items) = p.get(sd) else {
        return Err(no(format!("the pickle holds {}", kind(p.get(sd)))));
    };
    let mut out = Vec::with_capacity(items.len());
    for &(k, v) in items {
        let name = p
            .str(k)
            .ok_or_else(|| no(format!("a key is {}, not a string", kind(p.get(k)))))?;
        match p.get(v) {
            Value::Tensor(t) => out.push((name.to_owned(), t.clone())),
            other if wrapped.is_some() => {
                return Err(no(format!("state_dict entry {name} is {}", kind(other))))
            }
            _ => {
                let keys: Vec<&str> = items
                    .iter()
                    .filter_map(|&(k, _)| p.str(k))
                    .take(8)
                    .collect();
                return Err(no(format!(
                    "no 'state_dict' entry, and the top-level dict is not a state dict (keys: {})",
                    keys.join(", ")
                )));
            }
        }
    }
    if out.is_empty() {
        return Err(no("the state dict is empty".into()));
    }
    Ok(out)
}

/// The view `t` of a storage's `bytes`, whole or (for [`Select::Head`]) only its head.
fn load(
    name: &str,
    bytes: &[u8],
    t: &TensorRef,
    sel: Select,
    big_endian: bool,
) -> Result<Loaded, WeightsError> {
    Ok(match sel {
        Select::Head => Loaded::Head(head_of(name, bytes, t, big_endian)?),
        _ => Loaded::Full(materialize(name, bytes, t, big_endian)?),
    })
}

/// The shape and first [`HEAD_LEN`] values (row-major) of the strided view `t`; `bytes` must reach
/// at least [`head_reach`] of its storage.
fn head_of(
    name: &str,
    bytes: &[u8],
    t: &TensorRef,
    big_endian: bool,
) -> Result<TensorHead, WeightsError> {
    let first = if is_row_major(&t.size, &t.stride) {
        let dt = t.storage.dtype;
        let (numel, _) = view_extent(name, t)?;
        let k = numel.min(HEAD_LEN);
        let start = (t.storage.view_offset + t.offset) * dt.size();
        let Some(raw) = bytes.get(start..start + k * dt.size()) else {
            return Err(archive(format!(
                "storage {} of tensor {name} is shorter than the pickle says",
                t.storage.key
            )));
        };
        decode(raw, dt, big_endian)
    } else {
        let full = materialize(name, bytes, t, big_endian)?.flatten_all()?;
        let k = full.elem_count().min(HEAD_LEN);
        full.narrow(0, 0, k)?.to_vec1()?
    };
    Ok(TensorHead {
        dims: t.size.clone(),
        values: first,
    })
}

/// Elements of the view `t` and the storage elements it spans (1 + Σ (size_i − 1)·stride_i; 0
/// when empty), checked against its storage, and its dtype checked to be a float.
fn view_extent(name: &str, t: &TensorRef) -> Result<(usize, usize), WeightsError> {
    let dt = t.storage.dtype;
    if !dt.is_float() {
        return Err(WeightsError::DType {
            name: name.to_owned(),
            dtype: dt.name().to_owned(),
        });
    }
    let numel = t
        .size
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))
        .filter(|&n| n <= t.storage.numel.max(1))
        .ok_or_else(|| {
            archive(format!(
                "tensor {name} has more elements than its storage {}",
                t.storage.key
            ))
        })?;
    if numel == 0 {
        return Ok((0, 0));
    }
    let span = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(1usize, |acc, (&s, &st)| {
            acc.checked_add((s - 1).checked_mul(st)?)
        });
    match span {
        Some(span)
            if span
                .checked_add(t.offset)
                .is_some_and(|e| e <= t.storage.numel) =>
        {
            Ok((numel, span))
        }
        _ => Err(archive(format!(
            "tensor {name} reaches past the end of its storage {}",
            t.storage.key
        ))),
    }
}

/// Decodes a strided view of a raw storage into an f32 tensor.
fn materialize(
    name: &str,
    bytes: &[u8],
    t: &TensorRef,
    big_endian: bool,
) -> Result<Tensor, WeightsError> {
    let (numel, span) = view_extent(name, t)?;
    let dt = t.storage.dtype;
    let es = dt.size();
    let available = bytes.len() / es;
    let base = t.storage.view_offset;
    if base.saturating_add(t.storage.numel) > available {
        return Err(archive(format!(
            "storage {} of tensor {name} holds {available} elements, the pickle says {}",
            t.storage.key,
            base.saturating_add(t.storage.numel)
        )));
    }
    if numel == 0 {
        return Ok(Tensor::zeros(t.size.as_slice(), DType::F32, &Device::Cpu)?);
    }
    let start = (base + t.offset) * es;
    let values = decode(&bytes[start..start + span * es], dt, big_endian);
    let data = if is_row_major(&t.size, &t.stride) {
        values
    } else {
        gather(&values, &t.size, &t.stride)
    };
    Ok(Tensor::from_vec(data, t.size.as_slice(), &Device::Cpu)?)
}

fn is_row_major(size: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1;
    for (&s, &st) in size.iter().zip(stride).rev() {
        if s != 1 && st != expected {
            return false;
        }
        expected *= s;
    }
    true
}

/// Row-major copy of a strided view (`values[0]` is the view's first element).
fn gather(values: &[f32], size: &[usize], stride: &[usize]) -> Vec<f32> {
    let numel: usize = size.iter().product();
    let mut out = Vec::with_capacity(numel);
    let mut index = vec![0usize; size.len()];
    let mut offset = 0usize;
    for _ in 0..numel {
        out.push(values[offset]);
        // Odometer increment, last dimension fastest.
        for d in (0..size.len()).rev() {
            index[d] += 1;
            offset += stride[d];
            if index[d] < size[d] {
                break;
            }
            offset -= stride[d] * size[d];
            index[d] = 0;
        }
    }
    out
}

/// Raw storage bytes → f32 (exact for f16/bf16; f64 is rounded).
pub(crate) fn decode(bytes: &[u8], dt: StorageDType, big_endian: bool) -> Vec<f32> {
    fn words<const N: usize>(bytes: &[u8], big: bool) -> impl Iterator<Item = [u8; N]> + '_ {
        bytes.chunks_exact(N).map(move |c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            if big {
                a.reverse();
            }
            a
        })
    }
    match dt {
        StorageDType::F32 => words::<4>(bytes, big_endian)
            .map(f32::from_le_bytes)
            .collect(),
        StorageDType::F16 => words::<2>(bytes, big_endian)
            .map(|w| half::f16::from_le_bytes(w).to_f32())
            .collect(),
        StorageDType::BF16 => words::<2>(bytes, big_endian)
            .map(|w| half::bf16::from_le_bytes(w).to_f32())
            .collect(),
        StorageDType::F64 => words::<8>(bytes, big_endian)
            .map(|w| f64::from_le_bytes(w) as f32)
            .collect(),
        // Callers check `is_float` first.
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_transposed() {
        // storage [0..6] viewed as the transpose of a 2×3 matrix: size [3, 2], stride [1, 3].
        let values: Vec<f32> = (0..6).map(|i| i as f32).collect();
        assert_eq!(
            gather(&values, &[3, 2], &[1, 3]),
            vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
        );
        assert!(is_row_major(&[2, 3], &[3, 1]));
        assert!(is_row_major(&[1, 3], &[99, 1]));
        assert!(!is_row_major(&[3, 2], &[1, 3]));
    }

    #[test]
    fn decode_half_precision_exactly() {
        let bytes = [0x00, 0x3c, 0x00, 0xc0]; // f16 1.0, -2.0 (little endian)
        assert_eq!(decode(&bytes, StorageDType::F16, false), vec![1.0, -2.0]);
        let bytes = [0x80, 0x3f]; // bf16 1.0
        assert_eq!(decode(&bytes, StorageDType::BF16, false), vec![1.0]);
        assert_eq!(decode(&[0x3f, 0x80], StorageDType::BF16, true), vec![1.0]);
    }
}
