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
///
/// Both maps also hold every prefix of every key (as [`PREFIX_ONLY`]), so that the longest match at a
/// position is found walking forwards and stopping as soon as the text is no key's prefix: a few
/// lookups per piece, where Python tries every end from the end of the word down. The first step of
/// each walk, a single character, is a table lookup for the BMP: a CJK word never hashes.
#[derive(Clone)]
pub(super) struct Vocab {
    /// The token on each line, by id (the line number).
    pub(super) tokens: Vec<Box<str>>,
    /// Every token, by its text.
    initial: HashMap<Box<str>, u32, FastHash>,
    /// Every token that starts with `##`, by its text after `##`.
    continuation: HashMap<Box<str>, u32, FastHash>,
    /// The entries of the one-char keys below U+10000 (`ABSENT`, `PREFIX_ONLY` or an id), as
    /// `[initial, continuation]` by code point: 512 KiB.
    single: Box<[[u32; 2]]>,
}

/// The value of a key that is only the prefix of longer tokens. Never an id: ids are line numbers and
/// [`Vocab::parse`] refuses that many lines.
const PREFIX_ONLY: u32 = u32::MAX;
/// In `single`: no key.
const ABSENT: u32 = u32::MAX - 1;

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
        if tokens.len() >= ABSENT as usize {
            return Err(TokenizerError::VocabTooLarge {
                lines: tokens.len(),
            });
        }
        let mut initial = HashMap::with_capacity_and_hasher(2 * tokens.len(), FastHash::default());
        let mut continuation = HashMap::with_hasher(FastHash::default());
        for (id, token) in tokens.iter().enumerate() {
            let id = id as u32; // < ABSENT, checked above
            initial.insert(token.clone(), id);
            if let Some(rest) = token.strip_prefix("##") {
                continuation.insert(Box::from(rest), id);
            }
        }
        for map in [&mut initial, &mut continuation] {
            let keys: Vec<Box<str>> = map.keys().cloned().collect();
            for key in keys {
                for (i, _) in key.char_indices().skip(1) {
                    map.entry(Box::from(&key[..i])).or_insert(PREFIX_ONLY);
                }
            }
        }
        let mut single = vec![[ABSENT; 2]; 0x10000].into_boxed_slice();
        for (k, map) in [&initial, &continuation].into_iter().enumerate() {
            for (key, &entry) in map {
                let mut chars = key.chars();
                if let (Some(c), None) = (chars.next(), chars.next()) {
                    if let Some(slot) = single.get_mut(c as usize) {
                        slot[k] = entry;
                    }
                }
            }
        }
        Ok(Vocab {
            tokens,
            initial,
            continuation,
            single,
        })
    }

    /// The id of `token`, if the vocabulary has it.
    pub(super) fn id(&self, token: &str) -> Option<u32> {
        self.initial
            .get(token)
            .copied()
            .filter(|&id| id != PREFIX_ONLY)
    }

    /// Appends the pieces of one basic-tokenizer word to `out` (`WordpieceTokenizer.tokenize`): greedy
    /// longest match first, `##` on every piece after the first; a word longer than
    /// [`MAX_INPUT_CHARS_PER_WORD`] chars, or with a position where no piece matches, is one `unk`.
    pub(super) fn push_pieces(&self, word: &str, unk: u32, out: &mut Vec<u32>) {
        // A word has at most as many chars as bytes: count only when the bytes exceed the limit.
        if word.len() > MAX_INPUT_CHARS_PER_WORD && word.chars().count() > MAX_INPUT_CHARS_PER_WORD
        {
            out.push(unk);
            return;
        }
        let len_before = out.len();
        let mut start = 0;
        while start < word.len() {
            let (map, k) = if start == 0 {
                (&self.initial, 0)
            } else {
                (&self.continuation, 1)
            };
            let rest = &word[start..];
            let mut longest = None;
            for (i, c) in rest.char_indices() {
                let end = i + c.len_utf8();
                let entry = match self.single.get(c as usize) {
                    Some(slot) if i == 0 => slot[k],
                    _ => map.get(&rest[..end]).copied().unwrap_or(ABSENT),
                };
                match entry {
                    ABSENT => break,
                    PREFIX_ONLY => {}
                    id => longest = Some((id, end)),
                }
            }
            let Some((id, len)) = longest else {
                out.truncate(len_before);
                out.push(unk);
                return;
            };
            out.push(id);
            start += len;
        }
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
