//! The crate's error type: one variant per module that can fail, each carrying its own typed error.

/// Everything that can go wrong in cnclip-model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading, recognising or converting a checkpoint.
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
    /// Reading, decoding or preprocessing an image.
    #[error(transparent)]
    Image(#[from] crate::preprocess::ImageError),
    /// Resolving a model name to files (cache, ModelScope, Hugging Face hub).
    #[error(transparent)]
    Resolve(#[from] crate::zoo::ResolveError),
    /// Tokenizing a text (a context length under 2, a broken vocab).
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    /// A tensor operation failed (shape mismatch inside the model, out of memory, …).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A caller passed something the API cannot use (empty label list, …).
    #[error("{0}")]
    InvalidInput(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
