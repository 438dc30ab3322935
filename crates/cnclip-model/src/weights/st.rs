//! safetensors files: reading (any float dtype → f32) and writing (f32).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, View};

use super::error::WeightsError;
use super::pickle::StorageDType;
use super::torch::{decode, Loaded, Select, Tensors};
use super::{TensorHead, HEAD_LEN};

fn invalid(reason: String) -> WeightsError {
    WeightsError::Safetensors { reason }
}

/// Whether `head` (the first bytes of a file) looks like a safetensors header: a little-endian
/// u64 header length of plausible size, then `{`. A truncated file still matches, so that
/// reading it reports what is wrong rather than "unknown format".
pub(crate) fn sniff(head: &[u8]) -> bool {
    if head.len() < 9 {
        return false;
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&head[..8]);
    let n = u64::from_le_bytes(n);
    // safetensors itself refuses headers over 100 MB.
    (2..=100_000_000).contains(&n) && head[8] == b'{'
}

/// Tensors (names as stored, f32) and the `__metadata__` map.
pub(crate) fn read(
    bytes: &[u8],
    select: &dyn Fn(&str) -> Select,
) -> Result<(Tensors, HashMap<String, String>), WeightsError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| invalid(e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| invalid(e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let mut out = Vec::new();
    for (name, view) in st.iter() {
        let sel = select(name);
        if sel == Select::Skip {
            continue;
        }
        let dt = match view.dtype() {
            Dtype::F32 => StorageDType::F32,
            Dtype::F16 => StorageDType::F16,
            Dtype::BF16 => StorageDType::BF16,
            Dtype::F64 => StorageDType::F64,
            other => {
                return Err(WeightsError::DType {
                    name: name.to_owned(),
                    dtype: format!("{other:?}").to_lowercase(),
                })
            }
        };
        let loaded = if sel == Select::Head {
            let numel: usize = view.shape().iter().product();
            let k = numel.min(HEAD_LEN) * dt.size();
            Loaded::Head(TensorHead {
                dims: view.shape().to_vec(),
                values: decode(&view.data()[..k], dt, false),
            })
        } else {
            let values = decode(view.data(), dt, false);
            Loaded::Full(Tensor::from_vec(values, view.shape(), &Device::Cpu)?)
        };
        out.push((name.to_owned(), loaded));
    }
    Ok((out, metadata))
}

/// An f32 CPU tensor whose bytes are produced only when the writer asks for them, so that
/// saving needs one tensor's worth of extra memory, not a copy of the model.
struct F32View<'a>(&'a Tensor);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        self.0.dims()
    }

    fn data(&self) -> Cow<'_, [u8]> {
        // `write` checked that the tensor is f32 on the CPU, for which flattening and reading
        // cannot fail.
        let values = self
            .0
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("f32 CPU tensor");
        Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn data_len(&self) -> usize {
        self.0.elem_count() * 4
    }
}

/// Writes f32 tensors to `path` (not atomically; the caller renames).
pub(crate) fn write(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<(), WeightsError> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if t.dtype() != DType::F32 || !t.device().is_cpu() {
            return Err(WeightsError::Convert {
                reason: format!("tensor {name} is not an f32 CPU tensor"),
            });
        }
        views.push((name.as_str(), F32View(t)));
    }
    safetensors::tensor::serialize_to_file(views, Some(metadata), path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(error) => WeightsError::io("cannot write", error),
        e => invalid(e.to_string()),
    })
}
