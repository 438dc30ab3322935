//! BERT's `BasicTokenizer` (cn_clip `bert_tokenizer.py`), streaming words instead of building lists.
//!
//! Python runs whole-string passes: `_clean_text`, `_tokenize_chinese_chars`, `whitespace_tokenize`,
//! then per whitespace token `lower()`, `_run_strip_accents` (NFD, drop Mn) and `_run_split_on_punc`,
//! and a final `whitespace_tokenize`. Here one pass over the characters does the first three (a token
//! ends at whitespace or at a CJK ideograph, which is a token of its own) and each token is then
//! lower-cased, decomposed and split. The token is the unit that matters: `lower()`'s final-sigma rule
//! looks at the neighbours inside it, and canonical reordering runs across its characters.

use std::ops::ControlFlow;

use unicode_general_category::GeneralCategory;

use super::unicode::{
    category, is_chinese, is_final_sigma, is_punctuation, is_python_space, push_decomposed,
    push_lower,
};

/// What `_clean_text`, `_tokenize_chinese_chars` and `whitespace_tokenize` do with one character.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// NUL, U+FFFD and control characters (Cc, Cf; not `\t` `\n` `\r`): removed.
    Drop,
    /// `_is_whitespace` (space, `\t`, `\n`, `\r`, Zs) and U+2028/U+2029, which survive `_clean_text`
    /// but are `str.isspace()`: they end a token.
    Space,
    /// `_is_chinese_char`: a token of its own.
    Chinese,
    /// Part of the current token.
    Keep,
}

const fn ascii_class(b: u8) -> Class {
    match b {
        b'\t' | b'\n' | b'\r' | b' ' => Class::Space,
        0..=0x1F | 0x7F => Class::Drop,
        _ => Class::Keep,
    }
}

static ASCII_CLASS: [Class; 128] = {
    let mut table = [Class::Keep; 128];
    let mut b = 0;
    while b < 128 {
        table[b] = ascii_class(b as u8);
        b += 1;
    }
    table
};

#[inline]
fn classify(c: char) -> Class {
    if c.is_ascii() {
        return ASCII_CLASS[c as usize];
    }
    // The CJK ranges hold only Lo and unassigned code points, so the order of the checks is free.
    if is_chinese(c) {
        return Class::Chinese;
    }
    if c == '\u{FFFD}' {
        return Class::Drop;
    }
    use GeneralCategory::*;
    match category(c) {
        Control | Format => Class::Drop,
        SpaceSeparator | LineSeparator | ParagraphSeparator => Class::Space,
        _ => Class::Keep,
    }
}

/// Buffers reused from word to word (and, in a batch, from text to text).
#[derive(Default)]
pub(super) struct BasicScratch {
    /// The current whitespace-delimited token, cleaned, in its original case.
    token: String,
    /// Whether `token` is all ASCII (then lower-casing is `make_ascii_lowercase` and NFD is a no-op).
    ascii: bool,
    /// `token` lower-cased, decomposed and stripped of Mn.
    norm: String,
    /// Combining marks waiting for canonical reordering: (combining class, character).
    marks: Vec<(u8, char)>,
}

/// Calls `emit` with each word of `BasicTokenizer.tokenize(text)`, in order, until it breaks.
pub(super) fn words<F>(text: &str, s: &mut BasicScratch, emit: &mut F) -> ControlFlow<()>
where
    F: FnMut(&str) -> ControlFlow<()>,
{
    s.token.clear();
    s.ascii = true;
    for c in text.chars() {
        match classify(c) {
            Class::Keep => {
                s.ascii &= c.is_ascii();
                s.token.push(c);
            }
            Class::Drop => {}
            Class::Space => flush(s, emit)?,
            Class::Chinese => {
                flush(s, emit)?;
                if matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF) {
                    // Unified ideographs: no case, no decomposition, not punctuation.
                    emit(c.encode_utf8(&mut [0; 4]))?;
                } else {
                    // Compatibility ideographs decompose (U+F900 → U+8C48); the rest may be unassigned.
                    s.token.push(c);
                    s.ascii = false;
                    flush(s, emit)?;
                }
            }
        }
    }
    flush(s, emit)
}

/// Normalizes the pending token and emits its words.
fn flush<F>(s: &mut BasicScratch, emit: &mut F) -> ControlFlow<()>
where
    F: FnMut(&str) -> ControlFlow<()>,
{
    if s.token.is_empty() {
        return ControlFlow::Continue(());
    }
    s.norm.clear();
    if s.ascii {
        s.norm.push_str(&s.token);
        s.norm.make_ascii_lowercase();
    } else {
        normalize(&s.token, &mut s.norm, &mut s.marks);
    }
    s.token.clear();
    s.ascii = true;
    split_on_punctuation(&s.norm, emit)
}

/// `_run_strip_accents(token.lower())`: Python's `str.lower()` (with the final-sigma rule), NFD, then
/// every Mn dropped.
fn normalize(token: &str, norm: &mut String, marks: &mut Vec<(u8, char)>) {
    marks.clear();
    let mut add = |d: char, ccc: u8| {
        if ccc == 0 {
            flush_marks(marks, norm);
            if !is_nonspacing_mark(d) {
                norm.push(d);
            }
        } else {
            marks.push((ccc, d));
        }
    };
    for (i, c) in token.char_indices() {
        if c == 'Σ' {
            let before = token[..i].chars().rev();
            let after = token[i + 'Σ'.len_utf8()..].chars();
            // σ and ς are starters without a decomposition.
            add(
                if is_final_sigma(before, after) {
                    'ς'
                } else {
                    'σ'
                },
                0,
            );
        } else {
            push_lower(c, |l| push_decomposed(l, &mut add));
        }
    }
    flush_marks(marks, norm);
}

/// Canonical ordering (a stable sort by combining class of each run of non-starters), then the marks
/// that are not Mn go to `norm`.
fn flush_marks(marks: &mut Vec<(u8, char)>, norm: &mut String) {
    if marks.is_empty() {
        return;
    }
    marks.sort_by_key(|&(ccc, _)| ccc);
    for &(_, m) in marks.iter() {
        if !is_nonspacing_mark(m) {
            norm.push(m);
        }
    }
    marks.clear();
}

#[inline]
fn is_nonspacing_mark(c: char) -> bool {
    !c.is_ascii() && category(c) == GeneralCategory::NonspacingMark
}

/// `_run_split_on_punc` and the final `whitespace_tokenize`: every punctuation character is a word, the
/// runs between them are words, and `str.isspace()` characters separate words.
fn split_on_punctuation<F>(norm: &str, emit: &mut F) -> ControlFlow<()>
where
    F: FnMut(&str) -> ControlFlow<()>,
{
    let mut start = None;
    for (i, c) in norm.char_indices() {
        if is_punctuation(c) {
            if let Some(s) = start.take() {
                emit(&norm[s..i])?;
            }
            emit(&norm[i..i + c.len_utf8()])?;
        } else if is_python_space(c) {
            if let Some(s) = start.take() {
                emit(&norm[s..i])?;
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    match start {
        Some(s) => emit(&norm[s..]),
        None => ControlFlow::Continue(()),
    }
}
