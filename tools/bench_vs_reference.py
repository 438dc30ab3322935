#!/usr/bin/env python3
"""cnclip vs cn_clip (PyTorch), side by side in one run, reported as ratios.

This machine is shared and noisy, so absolute times drift; the two implementations are timed
alternately on the same checkpoint, the same batch shapes and the same number of threads, and
only ratios are meant to be compared across runs. Each image row's cn_clip figure is the mean of
a measurement right before cnclip's and one right after, and the summary gives each row's median
ratio over the rounds (`--rounds`, default 3; `--images-only` skips the text and tokenizer rows,
`--text-only` the image rows).

    cargo build --release -p cnclip-cli
    python3 tools/gen_fullsize.py --out /tmp/cnclip-full --models ViT-B-16
    python3 tools/bench_vs_reference.py --checkpoint /tmp/cnclip-full/clip_cn_vit-b-16.pt \
        --manifest /tmp/cnclip-full/manifest.json --name ViT-B-16

Measures: image tower images/s at batch 8 and batch 1 (f32, and cnclip with 8-bit weights), text
tower p50 latency for short queries at batch 1 (f32 and q8), and tokenizer texts/s on the tokenizer
fixture corpus. When `onnxruntime` is installed (`pip install onnxruntime onnx onnxscript`), the
image tower is also exported to ONNX and timed in ONNX Runtime, fp32 and dynamically quantized int8
(`onnxruntime.quantization.quantize_dynamic`), as a second reference.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from gen_parity import build, load_state_dict  # noqa: E402

import cn_clip.clip as clip  # noqa: E402

QUERIES = ["一只小猫", "海边的日落", "穿红衣服的女孩在公园里放风筝", "一辆停在雪地里的蓝色汽车",
           "生日蛋糕", "夜晚的城市街道", "两只狗在草地上奔跑", "桌子上的一杯咖啡"]


def cnclip(binary, *args):
    out = subprocess.run([binary, "bench", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_images_per_s(model, batch, iters, size):
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        model.encode_image(x)
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            model.encode_image(x)
            times.append(time.perf_counter() - t)
    return batch / float(np.median(times))


def ort_sessions(model, size, threads):
    """ONNX Runtime sessions for the image tower, fp32 and int8; None without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return None
    path = "/tmp/cnclip-bench-visual.onnx"
    qpath = "/tmp/cnclip-bench-visual.int8.onnx"
    if not os.path.exists(path):
        torch.onnx.export(model.visual, torch.randn(1, 3, size, size), path, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
                          opset_version=17, dynamo=False)
    if not os.path.exists(qpath):
        quantize_dynamic(path, qpath, weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return {name: ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"])
            for name, p in (("fp32", path), ("int8", qpath))}


def ort_images_per_s(session, batch, iters, size):
    x = np.random.randn(batch, 3, size, size).astype(np.float32)
    session.run(None, {"x": x})
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - t)
    return batch / float(np.median(times))


def torch_text_p50_ms(model, iters):
    times = []
    with torch.no_grad():
        model.encode_text(clip.tokenize(QUERIES[:1]))
        for _ in range(iters):
            for q in QUERIES:
                t = time.perf_counter()
                # cn_clip's own path: tokenize to 52, encode.
                model.encode_text(clip.tokenize([q]))
                times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def torch_tokenize_per_s(texts):
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for s in texts:
            clip.tokenize([s])
        best = min(best, time.perf_counter() - t)
    return len(texts) / best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--name", default="ViT-B-16")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "cnclip"))
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images-only", action="store_true", help="image tower rows only")
    ap.add_argument("--text-only", action="store_true", help="text tower and tokenizer rows only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)

    entry = next(e for e in json.load(open(args.manifest))["fixtures"] if e["name"] == args.name)
    model = build(entry["kwargs"], load_state_dict(args.checkpoint))
    size = entry["kwargs"]["image_resolution"]

    corpus = os.path.join(ROOT, "crates", "cnclip-model", "tests", "fixtures", "tokenizer")
    texts = []
    for f in sorted(os.listdir(corpus)) if os.path.isdir(corpus) else []:
        if f.endswith(".jsonl"):
            texts += [json.loads(l)["text"] for l in open(os.path.join(corpus, f))]
    texts = [t.replace("\n", " ").replace("\r", " ") for t in texts][:20000]
    qfile = "/tmp/cnclip-bench-queries.txt"
    open(qfile, "w").write("\n".join(QUERIES) + "\n")
    tfile = "/tmp/cnclip-bench-corpus.txt"
    open(tfile, "w").write("\n".join(texts) + "\n")

    sessions = None if args.text_only else ort_sessions(model, size, args.threads)
    rows = []
    for r in range(args.rounds):
        for batch in () if args.text_only else (8, 1):
            before = torch_images_per_s(model, batch, args.iters, size)
            measured = []
            for precision in ("f32", "q8"):
                ours = cnclip(args.binary, "--what", "image", "--model", args.checkpoint,
                              "--batch", str(batch), "--iters", str(args.iters),
                              "--precision", precision)["images_per_s"]
                measured.append((f"image tower {precision}, batch {batch} (images/s)", ours))
            for name, session in (sessions or {}).items():
                measured.append((f"  ONNX Runtime {name}, batch {batch} (images/s)",
                                 ort_images_per_s(session, batch, args.iters, size)))
            ref = (before + torch_images_per_s(model, batch, args.iters, size)) / 2
            rows += [(name, ips, ref, ips / ref) for name, ips in measured]
        if args.images_only:
            continue
        ref = torch_text_p50_ms(model, args.iters)
        for precision in ("f32", "q8"):
            ours = cnclip(args.binary, "--what", "text", "--model", args.checkpoint, "--batch", "1",
                          "--iters", str(args.iters), "--corpus", qfile,
                          "--precision", precision)["p50_ms"]
            rows.append((f"text tower {precision}, short query (p50 ms)", ours, ref, ref / ours))
        if texts:
            ref = torch_tokenize_per_s(texts)
            ours = cnclip(args.binary, "--what", "tokenize", "--corpus", tfile, "--iters", "3")["texts_per_s"]
            rows.append((f"tokenizer, {len(texts)} texts (texts/s)", ours, ref, ours / ref))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "unknown CPU")
    print(f"machine: {cpu}, {os.cpu_count()} threads, torch {torch.__version__}, "
          f"threads={args.threads}")
    print(f"{'measure':50} {'ours':>12} {'cn_clip':>12} {'ratio':>8}")
    for name, ours, ref, ratio in rows:
        print(f"{name:50} {ours:12.2f} {ref:12.2f} {ratio:7.2f}x")
    print("ratio > 1 means faster than cn_clip (PyTorch) in the same run; ONNX Runtime rows "
          "compare ONNX Runtime to cn_clip.")
    print(f"\nmedian ratio over {args.rounds} rounds (min, max):")
    for name in dict.fromkeys(name for name, *_ in rows):
        ratios = sorted(ratio for n, _, _, ratio in rows if n == name)
        print(f"{name:50} {statistics.median(ratios):7.2f}x  ({ratios[0]:.2f}, {ratios[-1]:.2f})")


if __name__ == "__main__":
    main()
