//! cn_clip's tokenizer (`cn_clip.clip.tokenize`, BERT's `FullTokenizer`), id for id.
//!
//! The text tower reads `[CLS]` + word pieces + `[SEP]`, zero-padded to the context length (52 for all
//! official models). The pieces come from BERT's basic tokenizer (drop control characters, split around
//! CJK ideographs and whitespace, lower-case, strip accents, split off punctuation) and WordPiece over
//! Google's Chinese BERT vocabulary (21,128 tokens, bundled: see [`Tokenizer::chinese`]).
//!
//! ```
//! use cnclip_model::tokenizer::{Tokenizer, CLS_ID, SEP_ID, DEFAULT_CONTEXT_LENGTH};
//!
//! let tok = Tokenizer::chinese();
//! assert_eq!(tok.pieces("一只猫 on the SOFA!"), ["一", "只", "猫", "on", "the", "so", "##fa", "!"]);
//! let ids = tok.encode("一只猫", DEFAULT_CONTEXT_LENGTH)?;
//! assert_eq!(ids.len(), 52);
//! assert_eq!(&ids[..5], &[CLS_ID, 671, 1372, 4344, SEP_ID]);
//! # Ok::<(), cnclip_model::tokenizer::TokenizerError>(())
//! ```
//!
//! # Exactness
//!
//! The output equals cn_clip 1.6.0's on Python 3.11 for every input: the parity test checks a corpus of
//! 20,000+ adversarial strings and, through four probes, every Unicode code point. Two things needed care
//! beyond reading `bert_tokenizer.py`:
//!
//! - Python's `str.lower()` turns `Σ` into a final `ς` when a cased letter precedes it and none follows,
//!   skipping case-ignorable characters (`.`, `'`, `:`, marks, …). BERT lower-cases each whitespace token
//!   *before* splitting off punctuation, so `ΑΣ.` ends in `ς` and `Α.Σ` does too.
//! - Python 3.11's Unicode database is version 14.0; Rust's std and the Unicode crates are newer. The
//!   tokenizer sees characters assigned after 14.0 as unassigned, as Python 3.11 does (see the `unicode`
//!   module). cn_clip run under Python 3.12+ gives other ids for those characters.

mod basic;
mod unicode;
mod unicode14;
mod wordpiece;

use std::fmt;
use std::ops::ControlFlow;
use std::sync::OnceLock;

use self::basic::BasicScratch;
use self::wordpiece::Vocab;
pub use self::wordpiece::MAX_INPUT_CHARS_PER_WORD;

/// The context length of every official model (`tokenize(texts, context_length=52)`).
pub const DEFAULT_CONTEXT_LENGTH: usize = 52;
/// The padding id after `[SEP]` (cn_clip pads with zeros, whatever the vocabulary; it is `[PAD]` in
/// the bundled one). The text tower's attention mask is `ids != PAD_ID`.
pub const PAD_ID: u32 = 0;
/// `[UNK]` in the bundled vocabulary: a word longer than 200 chars, or one WordPiece cannot cover.
pub const UNK_ID: u32 = 100;
/// `[CLS]` in the bundled vocabulary: the first id of every encoded text.
pub const CLS_ID: u32 = 101;
/// `[SEP]` in the bundled vocabulary: follows the last kept piece.
pub const SEP_ID: u32 = 102;

/// cn_clip's `cn_clip/clip/vocab.txt`: Google's Chinese BERT vocabulary (`chinese_L-12_H-768_A-12`,
/// Apache-2.0, © Google), byte for byte. Official `.pt` checkpoints do not carry it.
const CHINESE_VOCAB: &str = include_str!("../../vocab.txt");

/// What can go wrong building a tokenizer or encoding with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// The vocabulary lacks a token that tokenizing needs (`[UNK]`, `[CLS]` or `[SEP]`).
    #[error("vocabulary has no {token} token")]
    MissingSpecialToken {
        /// The missing token.
        token: &'static str,
    },
    /// The vocabulary has more lines than `u32` ids can number.
    #[error("vocabulary has {lines} lines, more than u32 ids can number")]
    VocabTooLarge {
        /// How many lines it has.
        lines: usize,
    },
    /// The context length cannot hold `[CLS]` and `[SEP]` (cn_clip fails an assertion there).
    #[error(
        "context length {context_length} is too short: it must be at least 2, for [CLS] and [SEP]"
    )]
    ContextTooShort {
        /// The context length asked for.
        context_length: usize,
    },
}

/// A BERT WordPiece tokenizer with cn_clip's exact behaviour; see the [module docs](self).
///
/// Cheap to share: every method takes `&self`, and the type is `Send + Sync`.
#[derive(Clone)]
pub struct Tokenizer {
    vocab: Vocab,
    unk: u32,
    cls: u32,
    sep: u32,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("unk", &self.unk)
            .field("cls", &self.cls)
            .field("sep", &self.sep)
            .finish()
    }
}

impl Tokenizer {
    /// The tokenizer of every official model: the bundled Chinese BERT vocabulary, built on first use
    /// (about 10 ms) and shared after that.
    pub fn chinese() -> &'static Tokenizer {
        static CHINESE: OnceLock<Tokenizer> = OnceLock::new();
        CHINESE.get_or_init(|| {
            Tokenizer::from_vocab(CHINESE_VOCAB)
                .expect("the bundled vocab has [UNK], [CLS] and [SEP]")
        })
    }

    /// A tokenizer over a `vocab.txt` text: one token per line, the id is the line number (as cn_clip's
    /// `load_vocab`: lines are stripped of whitespace, and a repeated token takes its last line's id).
    ///
    /// Fails if `[UNK]`, `[CLS]` or `[SEP]` is missing.
    pub fn from_vocab(text: &str) -> Result<Tokenizer, TokenizerError> {
        let vocab = Vocab::parse(text)?;
        let special = |token: &'static str| {
            vocab
                .id(token)
                .ok_or(TokenizerError::MissingSpecialToken { token })
        };
        let (unk, cls, sep) = (special("[UNK]")?, special("[CLS]")?, special("[SEP]")?);
        Ok(Tokenizer {
            vocab,
            unk,
            cls,
            sep,
        })
    }

    /// The number of ids: the vocabulary's line count (21,128 for the bundled one), which is the size of
    /// the text tower's embedding table.
    pub fn vocab_size(&self) -> usize {
        self.vocab.tokens.len()
    }

    /// The id of a whole token (`"猫"`, `"##ing"`, `"[MASK]"`), if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.vocab.id(token)
    }

    /// The token on line `id`, if there is one.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.vocab.tokens.get(id as usize).map(|t| &**t)
    }

    /// The id of `[UNK]` in this vocabulary ([`UNK_ID`] in the bundled one).
    pub fn unk_id(&self) -> u32 {
        self.unk
    }

    /// The id of `[CLS]` in this vocabulary ([`CLS_ID`] in the bundled one).
    pub fn cls_id(&self) -> u32 {
        self.cls
    }

    /// The id of `[SEP]` in this vocabulary ([`SEP_ID`] in the bundled one).
    pub fn sep_id(&self) -> u32 {
        self.sep
    }

    /// The word pieces of `text`, as cn_clip's `FullTokenizer.tokenize(text)`: `"##"` marks a piece
    /// that continues a word, and `"[UNK]"` stands for a word the vocabulary cannot cover.
    pub fn pieces(&self, text: &str) -> Vec<&str> {
        self.ids(text)
            .into_iter()
            .map(|id| &*self.vocab.tokens[id as usize])
            .collect()
    }

    /// The ids of the word pieces of `text`, without `[CLS]`, `[SEP]` or padding (cn_clip's
    /// `convert_tokens_to_ids(tokenize(text))`).
    pub fn ids(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        self.push_ids(text, usize::MAX, &mut Scratch::default(), &mut out);
        out
    }

    /// cn_clip's `tokenize(text, context_length)`: `[CLS]`, the first `context_length - 2` piece ids,
    /// `[SEP]`, then [`PAD_ID`] up to `context_length`.
    ///
    /// Fails with [`TokenizerError::ContextTooShort`] if `context_length < 2`, where cn_clip fails an
    /// assertion (there is no room for `[CLS]` and `[SEP]`).
    pub fn encode(&self, text: &str, context_length: usize) -> Result<Vec<u32>, TokenizerError> {
        let mut out = vec![PAD_ID; context_length];
        self.encode_into(text, &mut out)?;
        Ok(out)
    }

    /// [`encode`](Self::encode) into `out`, whose length is the context length: fills a row of a
    /// `[batch, context]` buffer without allocating one per text.
    pub fn encode_into(&self, text: &str, out: &mut [u32]) -> Result<(), TokenizerError> {
        self.encode_with(text, out, &mut Scratch::default())
    }

    /// [`encode`](Self::encode) for each text (cn_clip's `tokenize(texts, context_length)`), one row
    /// per text; buffers are reused across the batch.
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        context_length: usize,
    ) -> Result<Vec<Vec<u32>>, TokenizerError> {
        check_context(context_length)?;
        let mut scratch = Scratch::default();
        texts
            .iter()
            .map(|text| {
                let mut row = vec![PAD_ID; context_length];
                self.encode_with(text.as_ref(), &mut row, &mut scratch)?;
                Ok(row)
            })
            .collect()
    }

    fn encode_with(
        &self,
        text: &str,
        out: &mut [u32],
        scratch: &mut Scratch,
    ) -> Result<(), TokenizerError> {
        let context_length = out.len();
        check_context(context_length)?;
        let mut ids = std::mem::take(&mut scratch.ids);
        ids.clear();
        self.push_ids(text, context_length - 2, scratch, &mut ids);
        out[0] = self.cls;
        out[1..=ids.len()].copy_from_slice(&ids);
        out[ids.len() + 1] = self.sep;
        out[ids.len() + 2..].fill(PAD_ID);
        scratch.ids = ids;
        Ok(())
    }

    /// Appends the first `limit` piece ids of `text` to `out`. Tokenizing stops at the first word that
    /// reaches the limit: later text cannot change earlier pieces (a word's pieces depend only on its
    /// whitespace token, which is complete before any of its words is emitted).
    fn push_ids(&self, text: &str, limit: usize, scratch: &mut Scratch, out: &mut Vec<u32>) {
        if limit == 0 {
            return;
        }
        let end = out.len().saturating_add(limit);
        let _ = basic::words(text, &mut scratch.basic, &mut |word| {
            self.vocab.push_pieces(word, self.unk, out);
            if out.len() >= end {
                out.truncate(end);
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
    }
}

fn check_context(context_length: usize) -> Result<(), TokenizerError> {
    if context_length < 2 {
        return Err(TokenizerError::ContextTooShort { context_length });
    }
    Ok(())
}

/// Buffers reused across words and texts.
#[derive(Default)]
struct Scratch {
    basic: BasicScratch,
    /// Piece ids of the current text (encode).
    ids: Vec<u32>,
}

/// The words of BERT's `BasicTokenizer.tokenize(text)`, before WordPiece: cleaned, split on whitespace,
/// around CJK ideographs and around punctuation, lower-cased and stripped of accents. Independent of the
/// vocabulary; for inspecting what the tokenizer does (and for the per-code-point parity test).
pub fn basic_tokens(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let _ = basic::words(text, &mut BasicScratch::default(), &mut |w: &str| {
        words.push(w.to_owned());
        ControlFlow::Continue(())
    });
    words
}
