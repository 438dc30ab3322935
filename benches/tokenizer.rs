//! Tokenizer throughput on the parity corpus (20,000+ texts, see tools/gen_tokenizer_cases.py).
//!
//! `cargo bench -p cnclip-model --bench tokenizer` reports criterion's timings and prints texts/s;
//! `python3.11 tools/bench_tokenizer.py` then measures cn_clip on the same texts and compares.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cnclip_model::tokenizer::{Tokenizer, DEFAULT_CONTEXT_LENGTH};
use criterion::{Criterion, Throughput};

fn corpus() -> Vec<String> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/corpus.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("corpus line");
            v["text"].as_str().expect("text").to_owned()
        })
        .collect()
}

/// The subsets worth timing apart: everything, Chinese captions and queries (CJK ideographs and CJK
/// punctuation only), and pure ASCII.
fn subsets(all: &[String]) -> Vec<(&'static str, Vec<&str>)> {
    let chinese = |t: &&String| {
        !t.is_empty()
            && t.chars().all(|c| {
                matches!(c as u32, 0x4E00..=0x9FFF | 0x3000..=0x303F | 0xFF00..=0xFF0F | 0xFF1A..=0xFF20)
            })
    };
    vec![
        ("corpus", all.iter().map(String::as_str).collect()),
        (
            "chinese",
            all.iter().filter(chinese).map(String::as_str).collect(),
        ),
        (
            "ascii",
            all.iter()
                .filter(|t| t.is_ascii())
                .map(String::as_str)
                .collect(),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let tok = Tokenizer::chinese();
    let all = corpus();
    let mut group = c.benchmark_group("tokenizer");
    for (name, texts) in subsets(&all) {
        group.throughput(Throughput::Elements(texts.len() as u64));
        group.bench_function(format!("encode_batch/{name}"), |b| {
            b.iter(|| tok.encode_batch(black_box(&texts), DEFAULT_CONTEXT_LENGTH))
        });
    }
    let texts: Vec<&str> = all.iter().map(String::as_str).collect();
    group.throughput(Throughput::Elements(texts.len() as u64));
    group.bench_function("ids/corpus", |b| {
        b.iter(|| {
            for t in &texts {
                black_box(tok.ids(black_box(t)));
            }
        })
    });
    group.finish();
}

/// One plain line per subset for humans and tools/bench_tokenizer.py: texts per second of
/// `encode_batch(texts, 52)`, best of several passes of at least 0.5 s.
fn summary() {
    let tok = Tokenizer::chinese();
    let all = corpus();
    for (name, texts) in subsets(&all) {
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let start = Instant::now();
            let mut passes = 0u32;
            while start.elapsed() < Duration::from_millis(500) {
                black_box(
                    tok.encode_batch(black_box(&texts), DEFAULT_CONTEXT_LENGTH)
                        .unwrap(),
                );
                passes += 1;
            }
            best = best.min(start.elapsed().as_secs_f64() / f64::from(passes));
        }
        println!(
            "cnclip tokenizer, {name} ({} texts): {:.0} texts/s",
            texts.len(),
            texts.len() as f64 / best
        );
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
    // Only under `cargo bench` (criterion's own runs), not `cargo test --benches` or `--list`.
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--bench") && !has("--list") && !has("--profile-time") {
        summary();
    }
}
