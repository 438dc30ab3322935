//! Parity of `cnclip_model::tokenizer` with cn_clip 1.6.0's tokenizer on Python 3.11.
//!
//! The fixtures come from `tools/gen_tokenizer_cases.py`, which runs cn_clip's own `bert_tokenizer.py`:
//! `corpus.jsonl` holds 20,000+ adversarial strings with cn_clip's piece ids, and `codepoints.txt`
//! hashes cn_clip's basic tokenizer over four probes of every code point, per block of 256.

use std::path::PathBuf;

use cnclip_model::tokenizer::{
    basic_tokens, Tokenizer, TokenizerError, CLS_ID, DEFAULT_CONTEXT_LENGTH, PAD_ID, SEP_ID, UNK_ID,
};

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizer")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Case {
    text: String,
    ids: Vec<u32>,
}

fn corpus() -> Vec<Case> {
    fixture("corpus.jsonl")
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("corpus.jsonl:{}: {e}", i + 1));
            let text = v["text"].as_str().expect("text").to_owned();
            let ids = v["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|id| u32::try_from(id.as_u64().expect("id")).expect("u32 id"))
                .collect();
            Case { text, ids }
        })
        .collect()
}

/// cn_clip's `tokenize()` row, from its unpadded piece ids.
fn reference_row(ids: &[u32], context_length: usize) -> Vec<u32> {
    let kept = &ids[..ids.len().min(context_length - 2)];
    let mut row = vec![CLS_ID];
    row.extend_from_slice(kept);
    row.push(SEP_ID);
    row.resize(context_length, PAD_ID);
    row
}

#[test]
fn corpus_matches_cn_clip() {
    let tok = Tokenizer::chinese();
    let cases = corpus();
    assert!(
        cases.len() >= 20_000,
        "corpus has only {} texts",
        cases.len()
    );
    let mut mismatches = Vec::new();
    for case in &cases {
        let got = tok.ids(&case.text);
        let mut wrong = got != case.ids;
        for ctx in [DEFAULT_CONTEXT_LENGTH, 8] {
            wrong |= tok.encode(&case.text, ctx).unwrap() != reference_row(&case.ids, ctx);
        }
        let pieces = tok.pieces(&case.text);
        wrong |= pieces.len() != got.len()
            || pieces
                .iter()
                .zip(&got)
                .any(|(p, &id)| tok.id_to_token(id) != Some(*p));
        if wrong {
            mismatches.push((case, got));
        }
    }
    if !mismatches.is_empty() {
        for (case, got) in mismatches.iter().take(10) {
            eprintln!(
                "text {:?}\n  expected {:?}\n  got      {:?}\n  pieces   {:?}",
                case.text,
                case.ids,
                got,
                tok.pieces(&case.text)
            );
        }
        panic!(
            "{} of {} corpus texts differ from cn_clip (first ones above)",
            mismatches.len(),
            cases.len()
        );
    }
}

#[test]
fn encode_batch_matches_cn_clip() {
    let tok = Tokenizer::chinese();
    let cases = corpus();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let rows = tok.encode_batch(&texts, DEFAULT_CONTEXT_LENGTH).unwrap();
    assert_eq!(rows.len(), cases.len());
    for (case, row) in cases.iter().zip(&rows) {
        assert_eq!(
            *row,
            reference_row(&case.ids, DEFAULT_CONTEXT_LENGTH),
            "text {:?}",
            case.text
        );
    }
}

/// Must match `PROBES`, `BLOCK` and `probe_bytes` in tools/gen_tokenizer_cases.py.
fn probe_hash(hash: &mut u64, c: char) {
    fn fnv1a(hash: &mut u64, bytes: &[u8]) {
        for &b in bytes {
            *hash = (*hash ^ u64::from(b)).wrapping_mul(0x100000001B3);
        }
    }
    let probes = [
        format!("x{c}x"),
        format!("A{c}\u{3A3}"),
        format!("{c}\u{3A3}"),
        format!("\u{1D16D}{c}\u{1D165}"),
    ];
    for probe in &probes {
        for token in basic_tokens(probe) {
            fnv1a(hash, token.as_bytes());
            fnv1a(hash, &[0]);
        }
        fnv1a(hash, &[1]);
    }
}

/// Every code point, through the probes: categories (dropped, whitespace, CJK, punctuation, Mn),
/// lower case, NFD and combining classes, and the final-sigma properties (cased, case-ignorable), all
/// as Python 3.11's Unicode 14.0 has them.
#[test]
fn every_code_point_matches_cn_clip() {
    const BLOCK: u32 = 256;
    let text = fixture("codepoints.txt");
    let expected: Vec<(u32, u64)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (start, hash) = l.split_once(' ').expect("'START HASH'");
            (
                u32::from_str_radix(start, 16).expect("hex start"),
                u64::from_str_radix(hash, 16).expect("hex hash"),
            )
        })
        .collect();
    assert_eq!(expected.len(), (0x110000 / BLOCK) as usize);
    let mut bad = Vec::new();
    for &(start, want) in &expected {
        let mut hash = 0xCBF29CE484222325;
        for c in (start..start + BLOCK).filter_map(char::from_u32) {
            probe_hash(&mut hash, c);
        }
        if hash != want {
            bad.push(start);
        }
    }
    if let Some(&first) = bad.first() {
        for c in (first..first + BLOCK).filter_map(char::from_u32).take(16) {
            eprintln!("U+{:04X}: {:?}", c as u32, basic_tokens(&format!("x{c}x")));
        }
        panic!(
            "{} blocks of 256 code points differ from cn_clip on Python 3.11, starting at U+{:04X} \
             (its first code points above); compare with \
             `python3.11 tools/gen_tokenizer_cases.py --explain 0x{:X}`",
            bad.len(),
            first,
            first
        );
    }
}

#[test]
fn empty_and_blank_texts_are_cls_sep_then_padding() {
    let tok = Tokenizer::chinese();
    for text in ["", " ", "\t\n\r", "\u{3000}\u{A0}", "\u{0}\u{FFFD}\u{200B}"] {
        assert_eq!(tok.ids(text), Vec::<u32>::new(), "{text:?}");
        let row = tok.encode(text, DEFAULT_CONTEXT_LENGTH).unwrap();
        let mut want = vec![PAD_ID; DEFAULT_CONTEXT_LENGTH];
        want[..2].copy_from_slice(&[CLS_ID, SEP_ID]);
        assert_eq!(row, want, "{text:?}");
    }
}

#[test]
fn long_texts_keep_the_first_context_minus_two_pieces() {
    let tok = Tokenizer::chinese();
    let text = "一只猫".repeat(40);
    let ids = tok.ids(&text);
    assert_eq!(ids.len(), 120);
    let row = tok.encode(&text, DEFAULT_CONTEXT_LENGTH).unwrap();
    assert_eq!(row.len(), 52);
    assert_eq!(row[0], CLS_ID);
    assert_eq!(&row[1..51], &ids[..50]);
    assert_eq!(row[51], SEP_ID);
    // A limit in the middle of a word's pieces cuts the word.
    let row = tok.encode("unaffable", 3).unwrap();
    assert_eq!(row, [CLS_ID, tok.ids("unaffable")[0], SEP_ID]);
}

#[test]
fn context_two_is_cls_sep_and_shorter_is_an_error() {
    let tok = Tokenizer::chinese();
    assert_eq!(tok.encode("一只猫", 2).unwrap(), [CLS_ID, SEP_ID]);
    for context_length in [0, 1] {
        let err = tok.encode("一只猫", context_length).unwrap_err();
        assert_eq!(err, TokenizerError::ContextTooShort { context_length });
        assert!(tok.encode_batch(&["a"], context_length).is_err());
        assert!(tok.encode_into("a", &mut vec![0; context_length]).is_err());
    }
    let mut buf = [7u32; 6];
    tok.encode_into("猫", &mut buf).unwrap();
    assert_eq!(buf, [CLS_ID, 4344, SEP_ID, PAD_ID, PAD_ID, PAD_ID]);
}

#[test]
fn words_over_200_chars_are_unk() {
    let tok = Tokenizer::chinese();
    assert_eq!(tok.ids(&"a".repeat(201)), [UNK_ID]);
    assert_ne!(tok.ids(&"a".repeat(200)), [UNK_ID]);
    // The limit applies after accent stripping: 201 × "e + U+0301" is 201 chars once stripped.
    assert_eq!(tok.ids(&"e\u{301}".repeat(201)), [UNK_ID]);
    assert_ne!(tok.ids(&"e\u{301}".repeat(200)), [UNK_ID]);
    // Punctuation splits words before the limit is checked.
    let ids = tok.ids(&format!("{}.{}", "a".repeat(150), "a".repeat(150)));
    assert!(!ids.contains(&UNK_ID) && ids.contains(&tok.token_to_id(".").unwrap()));
    assert_eq!(tok.ids(&"a".repeat(301)), [UNK_ID]);
}

#[test]
fn final_sigma_follows_python_lower() {
    // Python: "ΑΣ".lower() == "ας", "ΣΑ".lower() == "σα"; BERT lower-cases each whitespace token
    // before splitting punctuation, so the period does not end the word for `lower()`.
    assert_eq!(basic_tokens("ΑΣ ΣΑ Σ"), ["ας", "σα", "σ"]);
    assert_eq!(basic_tokens("Α.Σ ΑΣ."), ["α", ".", "ς", "ας", "."]);
    assert_eq!(basic_tokens("ΑΣ猫"), ["ας", "猫"]);
    assert_eq!(basic_tokens("Α\u{200B}Σ"), ["ας"]); // U+200B is dropped before lower()
    assert_eq!(basic_tokens("ΟΔΥΣΣΕΥΣ"), ["οδυσσευς"]);
}

/// Characters whose properties changed after Unicode 14.0 (Python 3.11) must keep their 14.0 meaning.
#[test]
fn unicode_14_semantics_for_newer_characters() {
    assert_eq!(basic_tokens("\u{A7CB}"), ["\u{A7CB}"]); // Unicode 16 upper case: not lowered
    assert_eq!(basic_tokens("a\u{13439}b"), ["a\u{13439}b"]); // Unicode 15 Cf: not dropped
    assert_eq!(basic_tokens("a\u{11B00}b"), ["a\u{11B00}b"]); // Unicode 15 Po: not split off
    assert_eq!(basic_tokens("a\u{897}b"), ["a\u{897}b"]); // Unicode 16 Mn: not stripped
    assert_eq!(basic_tokens("\u{295}\u{3A3}"), ["\u{295}ς"]); // cased in 14.0, not in 17.0
    assert_eq!(basic_tokens("a\u{1171E}b"), ["ab"]); // Mn in 14.0, Mc since
}

#[test]
fn basic_tokenizer_examples() {
    assert_eq!(
        basic_tokens(" Héllo,\tWORLD！ＡＢＣ１２３ 一只猫\u{2028}ﬁ İ ß"),
        [
            "hello",
            ",",
            "world",
            "！",
            "ａｂｃ１２３",
            "一",
            "只",
            "猫",
            "ﬁ",
            "i",
            "ß"
        ]
    );
    assert_eq!(basic_tokens("\u{F900}"), ["\u{8C48}"]); // compatibility ideograph, decomposed
    assert_eq!(basic_tokens("\u{301}"), Vec::<String>::new());
}

#[test]
fn bundled_vocabulary() {
    let tok = Tokenizer::chinese();
    assert_eq!(tok.vocab_size(), 21_128);
    assert_eq!(tok.token_to_id("[PAD]"), Some(PAD_ID));
    assert_eq!(
        (tok.unk_id(), tok.cls_id(), tok.sep_id()),
        (UNK_ID, CLS_ID, SEP_ID)
    );
    assert_eq!(tok.id_to_token(UNK_ID), Some("[UNK]"));
    assert_eq!(tok.token_to_id("猫"), Some(4344));
    assert!(format!("{tok:?}").contains("21128"));
}

#[test]
fn custom_vocabulary_is_read_like_load_vocab() {
    // CRLF and CR line ends, stripped whitespace (U+2028 included), a repeated token (last id wins).
    let vocab = "[PAD]\r\n[UNK]\r[CLS]\n[SEP]\n un \n##aff\u{2028}\n##able\nun\n";
    let tok = Tokenizer::from_vocab(vocab).unwrap();
    assert_eq!(tok.vocab_size(), 8);
    assert_eq!((tok.unk_id(), tok.cls_id(), tok.sep_id()), (1, 2, 3));
    assert_eq!(tok.pieces("unaffable"), ["un", "##aff", "##able"]);
    assert_eq!(tok.ids("unaffable"), [7, 5, 6]);
    assert_eq!(tok.ids("unaffablex"), [1]);
    assert_eq!(tok.encode("un", 4).unwrap(), [2, 7, 3, 0]);
    assert_eq!(
        Tokenizer::from_vocab("[UNK]\n[SEP]\n").unwrap_err(),
        TokenizerError::MissingSpecialToken { token: "[CLS]" }
    );
    assert_eq!(
        TokenizerError::MissingSpecialToken { token: "[CLS]" }.to_string(),
        "vocabulary has no [CLS] token"
    );
}
