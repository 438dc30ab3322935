#!/usr/bin/env python3
"""cnclip on an NVIDIA GPU vs cn_clip (PyTorch fp16) on the same GPU, in the same run.

Times the ViT-B-16 image tower in images/s at batch 1, 8, 32 and 128, cnclip and cn_clip
alternately (rounds × batches), and prints the ratios; then checks cnclip's half-precision
embeddings on the GPU: finite (no NaN/inf) and their cosine to cn_clip's fp32 embeddings of the
same pixels and texts, beside cn_clip's own fp16-vs-fp32 cosine. Exits 1 when a check fails.

Needs, on the GPU machine: PyTorch with CUDA, torchvision, numpy, pillow, six,
`pip install --no-deps cn-clip==1.6.0`, and a cnclip built with the `cuda` feature:

    tools/build_cuda.sh                                   # target/release/cnclip, CUDA 13.0
    python3 tools/bench_gpu.py                            # builds the checkpoint, then runs
    python3 tools/bench_gpu.py --checkpoint ~/.cache/clip/clip_cn_vit-b-16.pt   # official weights

Without --checkpoint, the random-weight full-size ViT-B-16 of tools/gen_fullsize.py is written
to --work-dir first (≈ 750 MB, once). The cnclip binary needs libcudart.so.13, libcublas.so.13,
libcublasLt.so.13 and libcurand.so.10 at run time; this script puts the `nvidia/*/lib` folders of
the Python environment (PyTorch cu130's wheels), the build venv of tools/build_cuda.sh and
every --lib-dir on LD_LIBRARY_PATH for it.

What is timed, on both sides: host f32 pixels in → host f32 embeddings out (the copies to and
from the GPU included, as an indexer sees it), median of --iters after --warmup. cn_clip is also
timed with its input already on the GPU (column `cn_clip on-GPU`), for scale. cnclip's `bench`
loads the model once per call, outside the timing. TF32 is off on both sides (candle does not
use it either), so f32 numbers compare like with like.
"""
import argparse
import glob
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

DEFAULT_BATCHES = "1,8,32,128"
TEXTS = ["一只小猫", "海边的日落", "穿红衣服的女孩在公园里放风筝", "生日蛋糕", "",
         "北京天安门广场上的人群在晚霞中拍照留念" * 5]
N_CHECK_IMAGES = 4


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="cnclip (CUDA) vs cn_clip (PyTorch fp16) image-tower throughput on one GPU",
        epilog="see the module docstring (head of this file) for setup")
    ap.add_argument("--checkpoint", help="official .pt (or tools/gen_fullsize.py output); "
                    "default: generate a random-weight full-size model into --work-dir")
    ap.add_argument("--name", default="ViT-B-16",
                    help="architecture (cn_clip model name) of the checkpoint (default ViT-B-16)")
    ap.add_argument("--work-dir", default="/tmp/cnclip-gpu-bench",
                    help="generated checkpoint, check images and results.json go here")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "cnclip"),
                    help="cnclip built with --features cuda (default target/release/cnclip)")
    ap.add_argument("--gpu", type=int, default=0, help="CUDA ordinal (default 0)")
    ap.add_argument("--batches", type=batch_list, default=batch_list(DEFAULT_BATCHES),
                    help=f"comma-separated batch sizes (default {DEFAULT_BATCHES})")
    ap.add_argument("--iters", type=positive, default=20, help="timed iterations per measurement")
    ap.add_argument("--warmup", type=positive, default=3, help="cn_clip warm-up iterations")
    ap.add_argument("--rounds", type=positive, default=2,
                    help="times the whole batch sweep is repeated, alternating implementations")
    ap.add_argument("--precision", choices=["f16", "f32"], default="f16",
                    help="precision of both sides in the timing (default f16)")
    ap.add_argument("--min-cosine", type=float, default=0.999,
                    help="fail when a cnclip f16 embedding's cosine to cn_clip fp32 is below this")
    ap.add_argument("--lib-dir", action="append", default=[],
                    help="extra folder for LD_LIBRARY_PATH (repeatable)")
    ap.add_argument("--skip-bench", action="store_true", help="only the f16 correctness check")
    ap.add_argument("--skip-check", action="store_true", help="only the timing")
    ap.add_argument("--json-out", help="results as JSON (default WORK_DIR/results.json)")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the plan and the cnclip commands, run nothing (no GPU needed)")
    args = ap.parse_args(argv)
    if args.skip_bench and args.skip_check:
        ap.error("--skip-bench and --skip-check together leave nothing to do")
    if not 0.0 < args.min_cosine <= 1.0:
        ap.error("--min-cosine must be in (0, 1]")
    args.json_out = args.json_out or os.path.join(args.work_dir, "results.json")
    return args


def positive(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s!r} is not a positive integer")
    return v


def batch_list(s):
    try:
        out = [positive(x) for x in s.split(",") if x.strip()]
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of batch sizes")
    if not out:
        raise argparse.ArgumentTypeError("no batch sizes given")
    return out


def library_dirs(extra):
    """Folders holding the CUDA 13 libraries cnclip links: --lib-dir, then the `nvidia/*/lib`
    folders of this Python's environment (PyTorch's CUDA wheels), then tools/build_cuda.sh's,
    then the driver's usual container mount."""
    dirs = list(extra)
    for base in sys.path:
        dirs += sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib")))
    venv = os.environ.get("CNCLIP_CUDA_VENV", "/tmp/cuda-venv")
    dirs += sorted(glob.glob(os.path.join(venv, "lib", "python3*", "site-packages", "nvidia",
                                          "cu13", "lib")))
    # Where container runtimes mount the driver's libcuda.so.1 when ld.so.conf does not list it.
    dirs += ["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib"]
    seen, out = set(), []
    for d in dirs:
        d = os.path.abspath(d)
        if d not in seen and os.path.isdir(d):
            seen.add(d)
            out.append(d)
    return out


def binary_env(lib_dirs):
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
    env.pop("CNCLIP_DEVICE", None)
    return env


class Cnclip:
    """The cnclip binary with the GPU flags every model command gets."""

    def __init__(self, binary, gpu, env, dry_run=False):
        self.binary, self.device, self.env, self.dry_run = binary, f"cuda:{gpu}", env, dry_run

    def command(self, *args, model=True):
        return [self.binary, *args, *(["--device", self.device] if model else [])]

    def run(self, *args, model=True):
        cmd = self.command(*args, model=model)
        if self.dry_run:
            print("  would run:", shlex.join(cmd))
            return None
        p = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        if p.returncode != 0:
            sys.exit(f"failed ({p.returncode}): {shlex.join(cmd)}\n{p.stderr.strip()}")
        return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]

    def images_per_s(self, checkpoint, batch, iters, precision):
        out = self.run("bench", "--what", "image", "--model", checkpoint, "--batch", str(batch),
                       "--iters", str(iters), "--precision", precision)
        return None if out is None else out[-1]["images_per_s"]


def ensure_checkpoint(args):
    if args.checkpoint:
        if not os.path.isfile(args.checkpoint):
            sys.exit(f"checkpoint {args.checkpoint} does not exist")
        return args.checkpoint
    manifest = os.path.join(args.work_dir, "manifest.json")
    if os.path.exists(manifest):
        for e in json.load(open(manifest))["fixtures"]:
            path = os.path.join(args.work_dir, e["pt"])
            if e["name"] == args.name and os.path.isfile(path):
                return path
    cmd = [sys.executable, os.path.join(ROOT, "tools", "gen_fullsize.py"), "--out", args.work_dir,
           "--models", args.name]
    if args.dry_run:
        print("  would run:", shlex.join(cmd))
        return os.path.join(args.work_dir, f"<{args.name} checkpoint>")
    print(f"generating the random-weight {args.name} checkpoint in {args.work_dir} ...", flush=True)
    subprocess.run(cmd, check=True)
    e = next(e for e in json.load(open(manifest))["fixtures"] if e["name"] == args.name)
    return os.path.join(args.work_dir, e["pt"])


def load_reference(name, checkpoint):
    """cn_clip's own CLIP for `name`, fp32, eval mode, on the CPU."""
    import cn_clip.clip.model as cn_model
    # gen_parity swaps cn_clip's fp32-casting LayerNorm for plain nn.LayerNorm (its float64
    # reference needs that); the fp16 reference must keep cn_clip's own, so put it back.
    cn_layer_norm = cn_model.LayerNorm.forward
    from gen_parity import build, load_state_dict
    cn_model.LayerNorm.forward = cn_layer_norm
    from gen_fullsize import config_kwargs
    kwargs = config_kwargs(name)
    return build(kwargs, load_state_dict(checkpoint)), kwargs["image_resolution"]


def half_copy(model32):
    """cn_clip's fp16 model, as `load_from_name(..., device="cuda")` makes it."""
    import copy
    from cn_clip.clip.model import convert_weights
    m = copy.deepcopy(model32)
    convert_weights(m)
    return m.eval()


def bench_pixels(batch, size):
    """The pixels `cnclip bench` feeds (bench.rs): ((b·n + i) mod 251)/125 − 1."""
    import numpy as np
    n = 3 * size * size
    i = np.arange(batch * n, dtype=np.int64)
    return ((i % 251).astype(np.float32) / np.float32(125.0) - np.float32(1.0)).reshape(
        batch, 3, size, size)


def torch_images_per_s(model, pixels, iters, warmup, device):
    import numpy as np
    import torch
    host = torch.from_numpy(pixels)
    on_gpu = host.to(device)

    def host_to_host():
        return model.encode_image(host.to(device)).float().cpu()

    def gpu_only():
        return model.encode_image(on_gpu)

    rates = []
    with torch.inference_mode():
        for fn in (host_to_host, gpu_only):
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(iters):
                torch.cuda.synchronize(device)
                t = time.perf_counter()
                fn()
                torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t)
            rates.append(len(pixels) / float(np.median(times)))
    return rates


def check_images(work_dir):
    """Deterministic lossless test images (gradients, stripes, noise) of assorted sizes."""
    import numpy as np
    from PIL import Image
    os.makedirs(work_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for k, (h, w) in enumerate([(224, 224), (300, 400), (512, 384), (97, 131)][:N_CHECK_IMAGES]):
        y, x = np.mgrid[0:h, 0:w]
        img = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)),
                        ((x // (4 + k) + y // (3 + k)) % 2) * 255], axis=-1).astype(np.int32)
        img = np.clip(img + rng.integers(-40, 41, size=img.shape), 0, 255).astype(np.uint8)
        path = os.path.join(work_dir, f"check-{k}.png")
        Image.fromarray(img, "RGB").save(path)
        paths.append(path)
    return paths


def correctness(args, cn, checkpoint, model32, size, device):
    """cnclip f16 (and f32) on the GPU vs cn_clip fp32 / fp16 on the same pixels and texts."""
    import numpy as np
    import torch
    import cn_clip.clip as clip

    paths = check_images(args.work_dir)
    pixels = np.stack([np.asarray(cn.run("preprocess", "--size", str(size), "--json", p,
                                         model=False)[0]["data"], dtype=np.float32)
                       .reshape(3, size, size) for p in paths])
    tokens = clip.tokenize(TEXTS)

    def reference(model):
        with torch.inference_mode():
            img = model.encode_image(torch.from_numpy(pixels).to(device)).double()
            txt = model.encode_text(tokens.to(device)).double()
        img, txt = (t / t.norm(dim=-1, keepdim=True) for t in (img, txt))
        return img.cpu().numpy(), txt.cpu().numpy()

    def ours(precision):
        args_ = ["embed", "--model", checkpoint, "--json", "--precision", precision]
        for t in TEXTS:
            args_ += ["--text", t]
        for p in paths:
            args_ += ["--image", p]
        rows = cn.run(*args_)
        txt = np.array([r["embedding"] for r in rows if r["kind"] == "text"], dtype=np.float64)
        img = np.array([r["embedding"] for r in rows if r["kind"] == "image"], dtype=np.float64)
        return img, txt

    ref32 = reference(model32.to(device))
    model32.cpu()
    m16 = half_copy(model32).to(device)
    ref16 = reference(m16)
    del m16
    torch.cuda.empty_cache()
    results, ok = {}, True
    for label, (img, txt) in (("cn_clip fp16", ref16), ("cnclip f16", ours("f16")),
                              ("cnclip f32", ours("f32"))):
        finite = bool(np.isfinite(img).all() and np.isfinite(txt).all())
        cos_img = (img * ref32[0]).sum(-1) / np.linalg.norm(img, axis=-1)
        cos_txt = (txt * ref32[1]).sum(-1) / np.linalg.norm(txt, axis=-1)
        results[label] = {
            "finite": finite,
            "min_cosine_image": float(cos_img.min()), "min_cosine_text": float(cos_txt.min()),
            "max_abs_image": float(np.abs(img - ref32[0]).max()),
            "max_abs_text": float(np.abs(txt - ref32[1]).max()),
        }
        if label.startswith("cnclip"):
            ok &= finite
            if label == "cnclip f16":
                ok &= min(cos_img.min(), cos_txt.min()) >= args.min_cosine
    return results, bool(ok)


def main(argv=None):
    args = parse_args(argv)
    lib_dirs = library_dirs(args.lib_dir)
    cn = Cnclip(args.binary, args.gpu, binary_env(lib_dirs), args.dry_run)
    if args.dry_run:
        print(f"binary {args.binary} (--device {cn.device}); LD_LIBRARY_PATH prefix: "
              f"{os.pathsep.join(lib_dirs) or '(none found)'}")
    elif not os.access(args.binary, os.X_OK):
        sys.exit(f"{args.binary} is missing: build it with tools/build_cuda.sh")
    checkpoint = ensure_checkpoint(args)
    if args.dry_run:
        for b in args.batches:
            cn.images_per_s(checkpoint, b, args.iters, args.precision)
        print(f"  then cn_clip {args.name} fp16/fp32 on cuda:{args.gpu}, {args.rounds} rounds, "
              f"batches {args.batches}, and `embed --precision f16|f32` for the check")
        return 0

    import torch
    if not torch.cuda.is_available():
        sys.exit("PyTorch sees no CUDA GPU")
    device = torch.device(f"cuda:{args.gpu}")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    p = subprocess.run([args.binary, "--help"], capture_output=True, text=True, env=cn.env)
    if p.returncode != 0:
        sys.exit(f"{args.binary} does not start (CUDA libraries on LD_LIBRARY_PATH? "
                 f"searched {lib_dirs}):\n{p.stderr.strip()}")

    model32, size = load_reference(args.name, checkpoint)
    gpu_name = torch.cuda.get_device_name(device)
    report = {"gpu": gpu_name, "torch": torch.__version__, "checkpoint": checkpoint,
              "name": args.name, "precision": args.precision, "iters": args.iters}
    ok = True
    if not args.skip_check:
        report["check"], ok = correctness(args, cn, checkpoint, model32, size, device)

    if not args.skip_bench:
        ref = (half_copy(model32) if args.precision == "f16" else model32).to(device)
        rows = []
        for r in range(args.rounds):
            for b in args.batches:
                pixels = bench_pixels(b, size)
                e2e, on_gpu = torch_images_per_s(ref, pixels, args.iters, args.warmup, device)
                ours = cn.images_per_s(checkpoint, b, args.iters, args.precision)
                rows.append({"round": r, "batch": b, "cnclip": ours, "cn_clip": e2e,
                             "cn_clip_on_gpu": on_gpu, "ratio": ours / e2e})
                print(f"round {r} batch {b:4}: cnclip {ours:9.1f}  cn_clip {e2e:9.1f} images/s",
                      flush=True)
        report["bench"] = rows

    print(f"\n{args.name} on {gpu_name}, torch {torch.__version__}, cnclip {args.binary}")
    if "bench" in report:
        print(f"image tower {args.precision}, images/s (best round); ratio > 1: cnclip faster")
        print(f"{'batch':>6} {'cnclip':>10} {'cn_clip':>10} {'ratio':>7} {'cn_clip on-GPU':>15}")
        for b in args.batches:
            best = max((x for x in report["bench"] if x["batch"] == b), key=lambda x: x["cnclip"])
            ref_best = max(x["cn_clip"] for x in report["bench"] if x["batch"] == b)
            gpu_best = max(x["cn_clip_on_gpu"] for x in report["bench"] if x["batch"] == b)
            print(f"{b:6} {best['cnclip']:10.1f} {ref_best:10.1f} "
                  f"{best['cnclip'] / ref_best:6.2f}x {gpu_best:15.1f}")
    if "check" in report:
        print("\nembeddings vs cn_clip fp32 (L2-normalised; min cosine, max |Δ|):")
        for label, c in report["check"].items():
            print(f"  {label:13} finite={c['finite']!s:5} image cos {c['min_cosine_image']:.6f} "
                  f"|Δ| {c['max_abs_image']:.2e}   text cos {c['min_cosine_text']:.6f} "
                  f"|Δ| {c['max_abs_text']:.2e}")
        print("check:", "ok" if ok else f"FAILED (NaN/inf, or f16 cosine < {args.min_cosine})")
    os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
    with open(args.json_out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"results: {args.json_out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
