//! The Unicode properties the tokenizer needs, as Python 3.11 sees them.
//!
//! cn_clip's tokenizer takes every property from Python's Unicode database: `unicodedata.category`,
//! `unicodedata.normalize("NFD")` and `str.lower()`. Python 3.11 ships Unicode 14.0; the Rust tables
//! are newer, and not even of one version: std 17.0 (Rust 1.95: `to_lowercase`, `is_lowercase`),
//! `unicode-general-category` 1.1 16.0, `unicode-normalization` 0.1.26 18.0. Measured over every code
//! point, they differ from Python 3.11 on:
//!
//! - the ~10,400 code points assigned after 14.0 (to Python 3.11 they are unassigned, `Cn`: kept, never
//!   lower-cased, decomposed, split off or stripped; e.g. U+A7CB `Ꟍ` (16.0) stays upper-case and the
//!   Egyptian format controls U+13439.. (15.0) stay in the text);
//! - U+0295 `ʕ`, no longer `Lowercase` (so not `Cased`) in std's 17.0 tables, but cased in 14.0, where it
//!   turns a following `Σ` into a final `ς`;
//! - U+1171E AHOM CONSONANT SIGN MEDIAL RA, `Mn` in 14.0 (so accent stripping drops it), `Mc` in 16.0.
//!
//! Every lookup here therefore first asks [`assigned`] (the Unicode 14.0 table generated from Python) and
//! then patches the two changed characters. The tokenizer matches cn_clip *as run on Python 3.11*: under
//! Python 3.12+ (Unicode 15+) cn_clip itself gives other ids for these characters. The exhaustive test in
//! `tests/tokenizer.rs` checks all 1,112,064 code points against Python, so a future Rust or crate
//! upgrade that changes anything else fails there.

use std::cmp::Ordering;

use unicode_general_category::{get_general_category, GeneralCategory};

use super::unicode14::ASSIGNED;

/// [`ASSIGNED`] as a bitmap over planes 0–3 (32 KiB, built at compile time), where nearly all text
/// lives; the planes above take a binary search.
static ASSIGNED_LOW: [u64; (LOW_LIMIT / 64) as usize] = assigned_bitmap();
const LOW_LIMIT: u32 = 0x40000;

const fn assigned_bitmap() -> [u64; (LOW_LIMIT / 64) as usize] {
    let mut bits = [0; (LOW_LIMIT / 64) as usize];
    let mut i = 0;
    while i < ASSIGNED.len() {
        let (mut cp, hi) = ASSIGNED[i];
        while cp <= hi && cp < LOW_LIMIT {
            bits[(cp / 64) as usize] |= 1 << (cp % 64);
            cp += 1;
        }
        i += 1;
    }
    bits
}

/// Whether `c` is assigned in Unicode 14.0 (Python 3.11's `unicodedata.category(c) != "Cn"`).
#[inline]
pub(super) fn assigned(c: char) -> bool {
    let cp = c as u32;
    if cp < LOW_LIMIT {
        return ASSIGNED_LOW[(cp / 64) as usize] & (1 << (cp % 64)) != 0;
    }
    ASSIGNED
        .binary_search_by(|&(lo, hi)| {
            if hi < cp {
                Ordering::Less
            } else if lo > cp {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        })
        .is_ok()
}

/// `unicodedata.category(c)` in Python 3.11.
#[inline]
pub(super) fn category(c: char) -> GeneralCategory {
    if !assigned(c) {
        GeneralCategory::Unassigned
    } else if c == '\u{1171E}' {
        GeneralCategory::NonspacingMark
    } else {
        get_general_category(c)
    }
}

/// BERT's `_is_punctuation`: the ASCII symbols (33–47, 58–64, 91–96, 123–126), which are not all `P*`
/// in Unicode (`$`, `+`, `^`, `` ` ``, …), and every character whose category starts with `P`.
#[inline]
pub(super) fn is_punctuation(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_punctuation();
    }
    use GeneralCategory::*;
    matches!(
        category(c),
        ConnectorPunctuation
            | DashPunctuation
            | OpenPunctuation
            | ClosePunctuation
            | InitialPunctuation
            | FinalPunctuation
            | OtherPunctuation
    )
}

/// Python's `str.isspace()` (bidirectional class WS, B or S, or category Zs), which `str.split()` and
/// `str.strip()` split and strip on. This set is the same in every Unicode version since 6.3.
#[inline]
pub(super) fn is_python_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | '\u{1C}'..='\u{20}'
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

/// BERT's `_is_chinese_char`: the CJK Unified Ideographs blocks as they were in 2018 (Extension F and
/// later blocks are not in it) plus the two compatibility blocks.
#[inline]
pub(super) fn is_chinese(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B820..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

/// Python's `Cased` (DerivedCoreProperties: Lowercase, Uppercase or Lt), used by the final-sigma rule.
#[inline]
fn is_cased(c: char) -> bool {
    assigned(c)
        && (c.is_lowercase()
            || c.is_uppercase()
            || c == '\u{295}'
            || get_general_category(c) == GeneralCategory::TitlecaseLetter)
}

/// Python's `Case_Ignorable`: categories Mn, Me, Cf, Lm, Sk, and Word_Break MidLetter, MidNumLet or
/// Single_Quote (the fixed list below).
#[inline]
fn is_case_ignorable(c: char) -> bool {
    use GeneralCategory::*;
    matches!(
        c,
        '\'' | '.'
            | ':'
            | '\u{B7}'
            | '\u{387}'
            | '\u{55F}'
            | '\u{5F4}'
            | '\u{2018}'
            | '\u{2019}'
            | '\u{2024}'
            | '\u{2027}'
            | '\u{FE13}'
            | '\u{FE52}'
            | '\u{FE55}'
            | '\u{FF07}'
            | '\u{FF0E}'
            | '\u{FF1A}'
    ) || matches!(
        category(c),
        NonspacingMark | EnclosingMark | Format | ModifierLetter | ModifierSymbol
    )
}

/// Whether a `Σ` between `before` and `after` (both in the same whitespace-delimited token) is
/// word-final, by CPython's `handle_capital_sigma`: a cased letter before it and none after it, skipping
/// case-ignorable characters both ways.
pub(super) fn is_final_sigma(
    before: impl Iterator<Item = char>,
    after: impl Iterator<Item = char>,
) -> bool {
    fn cased_after_ignorables(mut it: impl Iterator<Item = char>) -> bool {
        it.find(|&c| !is_case_ignorable(c)).is_some_and(is_cased)
    }
    cased_after_ignorables(before) && !cased_after_ignorables(after)
}

/// Pushes Python's `c.lower()` onto `out`, for every character but `Σ` (whose lower case depends on
/// its neighbours: see [`is_final_sigma`]).
#[inline]
pub(super) fn push_lower(c: char, mut push: impl FnMut(char)) {
    if assigned(c) {
        c.to_lowercase().for_each(push);
    } else {
        push(c);
    }
}

/// Pushes the canonical decomposition of `c` (NFD before reordering) with each character's canonical
/// combining class.
#[inline]
pub(super) fn push_decomposed(c: char, mut push: impl FnMut(char, u8)) {
    if assigned(c) {
        unicode_normalization::char::decompose_canonical(c, |d| {
            push(d, unicode_normalization::char::canonical_combining_class(d))
        });
    } else {
        push(c, 0);
    }
}
