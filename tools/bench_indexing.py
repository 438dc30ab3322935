#!/usr/bin/env python3
"""Indexing throughput against model-only throughput, in the same run (issue #5's decoding bar).

    cargo build --release -p cnclip-cli
    python3 tools/gen_test_photos.py /tmp/photos            # or any folder of large JPEGs
    python3 tools/bench_indexing.py --model /tmp/cnclip-full/clip_cn_vit-b-16.pt \
        --photos /tmp/photos --rounds 3

For each configuration (f32, f32 with --exact-decode, q8 by default) and each round:

* `cnclip-index build` of an empty folder: the time to start and load the model;
* `cnclip-index build` of the photos into a fresh index: net images/s = photos / (that time minus
  the load time), i.e. reading, decoding, resizing, embedding and committing, overlapped as the
  indexer does it;
* `cnclip bench --what image` (batch 8, the indexer's batch): the model alone on pixels already in
  memory, measured right before and right after the build; their mean is the round's model-only
  figure.

The ratio of the two is printed per round, with the median over rounds: the machine this project
is developed on is shared and its speed drifts between minutes, so only ratios measured side by
side mean anything, and one round is not enough.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CONFIGS = {
    "f32": ["--precision", "f32"],
    "f32-exact": ["--precision", "f32", "--exact-decode"],
    "q8": ["--precision", "q8"],
}


def run(cmd):
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - start, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="checkpoint path or zoo name")
    ap.add_argument("--photos", required=True, help="folder of photos (all are indexed)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", default="f32,f32-exact,q8", help=f"of {','.join(CONFIGS)}")
    ap.add_argument("--bin", default="target/release", help="where the cnclip binaries are")
    ap.add_argument("--iters", type=int, default=4, help="cnclip bench iterations per round")
    args = ap.parse_args()

    index_bin = os.path.join(args.bin, "cnclip-index")
    cnclip_bin = os.path.join(args.bin, "cnclip")
    photos = sum(
        1
        for _, _, files in os.walk(args.photos)
        for f in files
        if f.lower().endswith((".jpg", ".jpeg", ".png", ".webp"))
    )
    if photos == 0:
        sys.exit(f"no photos in {args.photos}")
    work = tempfile.mkdtemp(prefix="cnclip-bench-indexing-")
    empty = os.path.join(work, "empty")
    os.mkdir(empty)
    print(f"{photos} photos in {args.photos}; model {args.model}; {os.cpu_count()} CPUs")
    try:
        for name in args.configs.split(","):
            extra = CONFIGS[name]
            model_extra = [a for a in extra if a != "--exact-decode"]
            ratios = []
            for r in range(args.rounds):
                index = os.path.join(work, "index")
                bench = [cnclip_bin, "bench", "--model", args.model, "--what", "image", "--batch",
                         "8", "--iters", str(args.iters), *model_extra]
                before = json.loads(run(bench)[1])["images_per_s"]
                shutil.rmtree(index, ignore_errors=True)
                load, _ = run([index_bin, "build", empty, "--index", index, "--model", args.model,
                               "--quiet", *extra])
                shutil.rmtree(index, ignore_errors=True)
                full, _ = run([index_bin, "build", args.photos, "--index", index, "--model",
                               args.model, "--quiet", *extra])
                net = photos / (full - load)
                after = json.loads(run(bench)[1])["images_per_s"]
                model_only = (before + after) / 2
                ratios.append(net / model_only)
                print(f"{name:10} round {r + 1}: load {load:.2f} s, build {full:.2f} s, "
                      f"net {net:.2f} img/s, model-only {before:.2f} / {after:.2f} img/s, "
                      f"ratio {net / model_only:.3f}", flush=True)
            print(f"{name:10} median ratio {statistics.median(ratios):.3f} "
                  f"(min {min(ratios):.3f}, max {max(ratios):.3f})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
