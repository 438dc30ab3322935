#!/usr/bin/env python3
"""Full-size random-weight checkpoints of the five official architectures, for local parity and
speed runs (too big to commit; official weights can replace them where a hub is reachable).

Each model is cn_clip's own `CLIP` built from its official config (`cn_clip.clip.utils.create_model`
reads `model_configs/*.json`), with LayerNorm/BatchNorm parameters and running statistics perturbed
so that normalisation bugs show up, saved the way the official files are (`torch.save` of a dict
with `state_dict` and `module.`-prefixed keys). A manifest lets tools/gen_parity.py compute the
reference embeddings:

    python3 tools/gen_fullsize.py --out /tmp/cnclip-full [--models ViT-B-16 RN50 ...]
    python3 tools/gen_parity.py --manifest /tmp/cnclip-full/manifest.json --out /tmp/cnclip-full/parity
    CNCLIP_FULL_PARITY_DIR=/tmp/cnclip-full cargo test --release -p cnclip-model --test parity -- --ignored
"""
import argparse
import json
import os

import torch

from cn_clip.clip.utils import _MODEL_INFO, _MODELS
from cn_clip.clip import utils as cn_utils
from pathlib import Path


def config_kwargs(name):
    vision, text = _MODEL_INFO[name]["struct"].split("@")
    cfg_dir = Path(cn_utils.__file__).parent / "model_configs"
    kw = json.load(open(cfg_dir / f"{vision}.json"))
    kw.update(json.load(open(cfg_dir / f"{text}.json")))
    if isinstance(kw["vision_layers"], str):
        kw["vision_layers"] = json.loads(kw["vision_layers"])
    return kw


def perturb(model, gen):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if any(s in n for s in ("bn", "LayerNorm", "ln_", "downsample.1")):
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
        for n, b in model.named_buffers():
            if n.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.2)
            elif n.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", nargs="*", default=list(_MODELS))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    from cn_clip.clip.model import CLIP

    fixtures = []
    for name in args.models:
        kw = config_kwargs(name)
        torch.manual_seed(0)
        model = CLIP(**kw).float().eval()
        perturb(model, torch.Generator().manual_seed(1))
        n_params = sum(p.numel() for p in model.parameters())
        fname = _MODELS[name][1]
        sd = {"module." + k: v for k, v in model.state_dict().items()}
        torch.save({"epoch": 0, "step": 0, "name": name, "state_dict": sd}, os.path.join(args.out, fname))
        fixtures.append({"name": name, "pt": fname, "kwargs": kw, "parameters": n_params})
        print(f"{name}: {n_params} parameters -> {fname}", flush=True)
        del model, sd
    json.dump({"fixtures": fixtures}, open(os.path.join(args.out, "manifest.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
