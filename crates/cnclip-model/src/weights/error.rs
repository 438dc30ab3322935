//! [`WeightsError`]: everything that can go wrong reading, checking or writing a checkpoint.

use std::path::PathBuf;

/// Reading, recognising, checking or converting a checkpoint failed.
///
/// Errors about a particular file come wrapped in [`WeightsError::InFile`], whose message starts
/// with the path (`"clip_cn_vit-b-16.pt: tensor visual.class_embedding is missing"`);
/// [`WeightsError::root`] gives the underlying error to match on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WeightsError {
    /// The error `inner` happened while handling the file or directory `path`.
    #[error("{}: {inner}", path.display())]
    InFile {
        /// The checkpoint file or directory (or the `config.json` inside it).
        path: PathBuf,
        /// What went wrong.
        inner: Box<WeightsError>,
    },
    /// An I/O operation failed.
    #[error("{action}: {error}")]
    Io {
        /// What was being done (`"cannot read"`, `"cannot write model.safetensors"`, …).
        action: String,
        /// The operating-system error.
        error: std::io::Error,
    },
    /// The file is not a format this loader knows.
    #[error("not a recognised checkpoint: {reason}")]
    UnknownFormat {
        /// What was found instead.
        reason: String,
    },
    /// A torch zip archive is unreadable (truncated, corrupt, or an entry is missing).
    #[error("corrupt torch archive: {reason}")]
    Archive {
        /// What is wrong.
        reason: String,
    },
    /// The pickle stream is malformed or uses something this restricted reader does not support.
    #[error("malformed pickle at byte {offset}: {reason}")]
    Pickle {
        /// Byte offset of the failing opcode inside the pickle stream.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// The pickle names a global that is not on the allow-list: unpickling it with Python would
    /// import and possibly call arbitrary code. Nothing was executed.
    #[error("refusing pickle global {global}")]
    ForbiddenGlobal {
        /// `module.name`, as written in the pickle.
        global: String,
    },
    /// The pickle is valid but holds no state dict of tensors where one was expected.
    #[error("no state dict found: {reason}")]
    NoStateDict {
        /// What was found instead.
        reason: String,
    },
    /// A safetensors file is malformed.
    #[error("invalid safetensors file: {reason}")]
    Safetensors {
        /// What is wrong.
        reason: String,
    },
    /// A tensor the configuration needs is absent.
    #[error("tensor {name} is missing")]
    MissingTensor {
        /// Canonical (cn_clip) or, before conversion, transformers name.
        name: String,
    },
    /// A tensor has the wrong shape for the configuration.
    #[error(
        "tensor {name} has shape {}, expected {}",
        fmt_shape(shape),
        fmt_shape(expected)
    )]
    ShapeMismatch {
        /// Tensor name.
        name: String,
        /// Shape found in the checkpoint.
        shape: Vec<usize>,
        /// Shape the configuration implies.
        expected: Vec<usize>,
    },
    /// The checkpoint holds a tensor that the model would not use (and that is not on the list of
    /// known-ignorable ones such as `bert.pooler.*`).
    #[error("unexpected tensor {name}")]
    UnexpectedTensor {
        /// Tensor name.
        name: String,
    },
    /// A tensor has a dtype that cannot hold weights (integers, booleans, …).
    #[error("tensor {name} has dtype {dtype}, expected a floating-point type")]
    DType {
        /// Tensor name.
        name: String,
        /// The dtype found.
        dtype: String,
    },
    /// The architecture cannot be inferred from the tensor shapes.
    #[error("cannot infer the architecture: {reason}")]
    Architecture {
        /// Why.
        reason: String,
    },
    /// A `config.json` is invalid or describes a model this crate does not implement.
    #[error("invalid configuration: {reason}")]
    Config {
        /// Why.
        reason: String,
    },
    /// The requested conversion is impossible for this model.
    #[error("cannot convert: {reason}")]
    Convert {
        /// Why.
        reason: String,
    },
    /// A tensor operation failed while converting or assembling tensors.
    #[error("tensor operation failed: {error}")]
    Tensor {
        /// candle's error.
        error: candle_core::Error,
    },
}

impl WeightsError {
    /// The error with any [`WeightsError::InFile`] wrappers removed.
    pub fn root(&self) -> &WeightsError {
        match self {
            WeightsError::InFile { inner, .. } => inner.root(),
            other => other,
        }
    }

    /// Wraps the error with the file it concerns (unless it already names one).
    pub(crate) fn in_file(self, path: impl Into<PathBuf>) -> WeightsError {
        match self {
            e @ WeightsError::InFile { .. } => e,
            e => WeightsError::InFile {
                path: path.into(),
                inner: Box::new(e),
            },
        }
    }

    pub(crate) fn io(action: impl Into<String>, error: std::io::Error) -> WeightsError {
        WeightsError::Io {
            action: action.into(),
            error,
        }
    }
}

impl From<candle_core::Error> for WeightsError {
    fn from(error: candle_core::Error) -> Self {
        WeightsError::Tensor { error }
    }
}

/// `[768, 512]`; `[]` for a scalar.
pub(crate) fn fmt_shape(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}
