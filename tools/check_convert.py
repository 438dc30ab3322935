#!/usr/bin/env python3
"""Checks `cnclip convert` output (weights::save_hf) with the reference implementations.

For every fixture in the manifest, the directory written by cnclip's `save_hf` is checked:

- ViT models: `transformers.ChineseCLIPModel.from_pretrained(dir)` must load with no missing,
  unexpected or mis-shaped keys, and give the same image and text embeddings as cn_clip's `CLIP`
  (rebuilt from the manifest's constructor arguments) holding the original fixture's weights.
- ResNet models (no transformers form): `model.safetensors` in cn_clip's names must load strictly
  into cn_clip's `CLIP`, with the same embeddings, and `config.json` must be cnclip's own config.

Usage:
    CNCLIP_CONVERT_OUT=/tmp/cnclip-convert cargo test -p cnclip-model --test weights convert_round_trip
    python3 tools/check_convert.py /tmp/cnclip-convert

Needs: torch, transformers, safetensors, cn-clip==1.6.0 (--no-deps). Not run by CI.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_checkpoints as g  # noqa: E402  (shares the name mapping and the fixtures' layout)

from cn_clip.clip.model import CLIP  # noqa: E402


def original_state_dict(entry, base):
    """The fixture's weights in cn_clip's names, read by torch / safetensors (not by cnclip)."""
    if "pt" in entry:
        ck = torch.load(os.path.join(base, entry["pt"]), map_location="cpu", weights_only=True)
        sd = ck.get("state_dict", ck)
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
        return {k: v.float() for k, v in sd.items() if "bert.pooler" not in k}
    from transformers import ChineseCLIPModel

    hf = ChineseCLIPModel.from_pretrained(os.path.join(base, entry["hf_dir"]))
    return g.hf_to_cnclip(hf.state_dict())


def cnclip_model(kwargs, sd):
    model = CLIP(**kwargs).float().eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if "num_batches_tracked" not in k]
    if missing or unexpected:
        raise SystemExit(f"state dict does not fit cn_clip: missing {missing}, unexpected {unexpected}")
    return model


def max_delta(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("converted", help="directory holding one converted directory per fixture")
    ap.add_argument("--manifest", default=os.path.join(g.DEFAULT_OUT, "manifest.json"))
    ap.add_argument("--tolerance", type=float, default=1e-4)
    args = ap.parse_args()
    base = os.path.dirname(args.manifest)
    manifest = json.load(open(args.manifest))
    worst = 0.0
    for entry in manifest["fixtures"]:
        name, kwargs = entry["name"], entry["kwargs"]
        out = os.path.join(args.converted, name)
        if not os.path.isdir(out):
            raise SystemExit(f"{out}: missing (run the convert_round_trip test with CNCLIP_CONVERT_OUT)")
        reference = cnclip_model(kwargs, original_state_dict(entry, base))
        images, ids = g.sample_inputs(kwargs, n=3)
        want = g.embeddings_cnclip(reference, images, ids)
        config = json.load(open(os.path.join(out, "config.json")))
        if isinstance(kwargs["vision_layers"], list):
            from safetensors.torch import load_file

            if config.get("vision", {}).get("kind") != "resnet":
                raise SystemExit(f"{out}: config.json is not cnclip's ResNet config")
            converted = cnclip_model(kwargs, load_file(os.path.join(out, "model.safetensors")))
            got = g.embeddings_cnclip(converted, images, ids)
            how = "cn_clip (canonical safetensors)"
        else:
            from transformers import ChineseCLIPModel

            hf, info = ChineseCLIPModel.from_pretrained(out, output_loading_info=True)
            problems = {k: v for k, v in info.items() if v}
            if problems:
                raise SystemExit(f"{out}: transformers loading problems: {problems}")
            got = g.embeddings_hf(hf.eval(), images, ids)
            how = "transformers"
        delta = max_delta(want, got)
        worst = max(worst, delta)
        print(f"{name:18s} {how:34s} vs cn_clip: max |delta| = {delta:.3e}")
        if delta > args.tolerance:
            raise SystemExit(f"{name}: embeddings differ by {delta:.3e} > {args.tolerance}")
    print(f"all converted models agree; worst max |delta| = {worst:.3e}")


if __name__ == "__main__":
    main()
