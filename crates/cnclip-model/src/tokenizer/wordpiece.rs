//! The vocabulary (`load_vocab`) and BERT's `WordpieceTokenizer`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::unicode::is_python_space;
use super::TokenizerError;

/// BERT's `max_input_chars_per_word`: a longer word (in code points, after basic tokenization) is a
/// single `[UNK]`.
pub const MAX_INPUT_CHARS_PER_WORD: usize = 200;

/// A vocabulary: ids by token, split into word-initial pieces and `##` continuations so that a lookup
/// never builds `"##" + piece`.
#[derive(Clone)]
pub(super) struct Vocab {
    /// The token on each line, by id (the line number).
    pub(super) tokens: Vec<Box<str>>,
    /// Every token, by its text.
    initial: HashMap<Box<str>, u32, FastHash>,
    /// Every token that starts with `##`, by its text after `##`.
    continuation: HashMap<Box<str>, u32, FastHash>,
    /// The longest key of `initial`, in chars: no longer piece can match.
    max_initial: usize,
    /// The longest key of `continuation`, in chars.
    max_continuation: usize,
}

impl Vocab {
    /// `load_vocab`: one token per line, the id is the line number. As in Python, lines end at `\n`,
    /// `\r\n` or `\r` (text-mode universal newlines), each line is `strip()`ped of `str.isspace()`
    /// characters (the bundled vocab has a line holding U+2028, which becomes the empty token), and a
    /// token that appears twice gets the id of its last line.
    pub(super) fn parse(text: &str) -> Result<Vocab, TokenizerError> {
        let mut tokens = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let (line, next) = match rest.find(['\n', '\r']) {
                Some(i) if rest[i..].starts_with("\r\n") => (&rest[..i], &rest[i + 2..]),
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, ""),
            };
            tokens.push(Box::<str>::from(line.trim_matches(is_python_space)));
            rest = next;
        }
        if u32::try_from(tokens.len()).is_err() {
            return Err(TokenizerError::VocabTooLarge { lines: tokens.len() });
        }
        let mut initial = HashMap::with_capacity_and_hasher(tokens.len(), FastHash::default());
        let mut continuation = HashMap::with_hasher(FastHash::default());
        let (mut max_initial, mut max_continuation) = (0, 0);
        for (id, token) in tokens.iter().enumerate() {
            let id = id as u32; // checked above
            initial.insert(token.clone(), id);
            max_initial = max_initial.max(token.chars().count());
            if let Some(rest) = token.strip_prefix("##") {
                continuation.insert(Box::from(rest), id);
                max_continuation = max_continuation.max(rest.chars().count());
            }
        }
        Ok(Vocab {
            tokens,
            initial,
            continuation,
            max_initial,
            max_continuation,
        })
    }

    /// The id of `token`, if the vocabulary has it.
    pub(super) fn id(&self, token: &str) -> Option<u32> {
        self.initial.get(token).copied()
    }

    /// Appends the pieces of one basic-tokenizer word to `out`: greedy longest-match-first, `##` on
    /// every piece after the first; a word longer than [`MAX_INPUT_CHARS_PER_WORD`] or with a position
    /// no piece matches is a single `unk` instead.
    pub(super) fn push_pieces(
        &self,
        word: &str,
        unk: u32,
        bounds: &mut Vec<usize>,
        out: &mut Vec<u32>,
    ) {
        let ok = if word.is_ascii() {
            // Byte offsets are char offsets.
            word.len() <= MAX_INPUT_CHARS_PER_WORD && self.greedy(word, word.len(), |k| k, out)
        } else {
            bounds.clear();
            bounds.extend(word.char_indices().map(|(i, _)| i));
            bounds.push(word.len());
            let n = bounds.len() - 1;
            n <= MAX_INPUT_CHARS_PER_WORD && self.greedy(word, n, |k| bounds[k], out)
        };
        if !ok {
            out.push(unk);
        }
    }

    /// The matching loop of `WordpieceTokenizer.tokenize` over a word of `n` chars whose char `k`
    /// starts at byte `at(k)`. Python tries every end from the word's end down; ends further than the
    /// longest vocabulary entry cannot match, so the search starts there. On failure `out` is restored.
    fn greedy(&self, word: &str, n: usize, at: impl Fn(usize) -> usize, out: &mut Vec<u32>) -> bool {
        let len_before = out.len();
        let mut start = 0;
        while start < n {
            let (map, longest) = if start == 0 {
                (&self.initial, self.max_initial)
            } else {
                (&self.continuation, self.max_continuation)
            };
            let mut end = n.min(start + longest);
            loop {
                if end == start {
                    out.truncate(len_before);
                    return false;
                }
                if let Some(&id) = map.get(&word[at(start)..at(end)]) {
                    out.push(id);
                    break;
                }
                end -= 1;
            }
            start = end;
        }
        true
    }
}

/// The hasher of the vocabulary maps: keys are short, trusted strings, so a multiply-rotate hash (as in
/// rustc's FxHash) over 8-byte words beats SipHash several times over.
type FastHash = BuildHasherDefault<WordHasher>;

#[derive(Default, Clone, Copy)]
struct WordHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl WordHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for WordHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("chunks of 8")));
        }
        let tail = chunks.remainder();
        if !tail.is_empty() {
            let mut last = [0u8; 8];
            last[..tail.len()].copy_from_slice(tail);
            self.add(u64::from_le_bytes(last));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn finish(&self) -> u64 {
        // hashbrown takes the bucket from the low bits and a tag from the top 7: fold the well-mixed
        // high half of the last product into both.
        self.0 ^ (self.0 >> 32)
    }
}
