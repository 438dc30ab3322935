#!/usr/bin/env python3.11
"""cn_clip's tokenizer throughput on the parity corpus, to compare with `cargo bench --bench tokenizer`.

Times `cn_clip.clip.tokenize(texts, 52)` (what callers use: pieces, ids and the padded torch tensor) and,
without torch, `FullTokenizer.tokenize` + `convert_tokens_to_ids` alone, on the same subsets as
benches/tokenizer.rs. Pass the Rust bench's texts/s for the corpus with --rust to print the ratio:

    cargo bench -p cnclip-model --bench tokenizer | grep texts/s
    python3.11 tools/bench_tokenizer.py --rust 417159
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_tokenizer_cases import FIXTURES, load_bert_tokenizer  # noqa: E402


def best_rate(fn, texts, min_seconds=0.5, repeats=3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start, passes = time.perf_counter(), 0
        while time.perf_counter() - start < min_seconds:
            fn(texts)
            passes += 1
        best = min(best, (time.perf_counter() - start) / passes)
    return len(texts) / best


def is_chinese(t: str) -> bool:
    return bool(t) and all(0x4E00 <= ord(c) <= 0x9FFF or 0x3000 <= ord(c) <= 0x303F or 0xFF00 <= ord(c) <= 0xFF0F
                           or 0xFF1A <= ord(c) <= 0xFF20 for c in t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rust", type=float, help="the Rust bench's texts/s on the corpus, to print the ratio")
    ap.add_argument("--no-torch", action="store_true", help="skip cn_clip.clip.tokenize (which imports torch)")
    args = ap.parse_args()

    with open(os.path.join(FIXTURES, "corpus.jsonl"), encoding="utf-8") as f:
        corpus = [json.loads(line)["text"] for line in f]
    subsets = [("corpus", corpus), ("chinese", [t for t in corpus if is_chinese(t)]),
               ("ascii", [t for t in corpus if t.isascii()])]

    _, tok = load_bert_tokenizer(None)

    def pieces_and_ids(texts):
        for t in texts:
            tok.convert_tokens_to_ids(tok.tokenize(t))

    tokenize = None
    if not args.no_torch:
        from cn_clip.clip import tokenize

    corpus_rate = None
    for name, texts in subsets:
        rate = best_rate(pieces_and_ids, texts)
        print(f"cn_clip FullTokenizer ids, {name} ({len(texts)} texts): {rate:.0f} texts/s")
        if tokenize is not None:
            rate = best_rate(lambda ts: tokenize(ts, context_length=52), texts)
            print(f"cn_clip.clip.tokenize(texts, 52), {name} ({len(texts)} texts): {rate:.0f} texts/s")
        if name == "corpus":
            corpus_rate = rate
    if args.rust:
        print(f"ratio on the corpus, Rust encode_batch / cn_clip: {args.rust / corpus_rate:.1f}x")


if __name__ == "__main__":
    main()
