#!/usr/bin/env python3
"""Expected embeddings for the model parity tests, computed by the official implementation.

For every tiny random-weight checkpoint listed in the fixtures manifest (written by
tools/gen_checkpoints.py), this rebuilds cn_clip's own `CLIP` module with the same constructor
arguments, loads the checkpoint's state dict, and records:

- text features for a fixed list of texts (tokenized by `cn_clip.clip.tokenize`, context 52), and
- image features for deterministic pixel tensors (`pixels(n, size)` below; the Rust test rebuilds
  the same tensors bit for bit, so no pixel data is committed),

both as the float32 model computes them and as the float64 model does (the reference's own
rounding error, which tells how close "float precision" is).

Usage: python3 tools/gen_parity.py [--manifest PATH] [--out DIR]
Needs: torch, cn-clip==1.6.0 (--no-deps), numpy. Not needed by CI: the outputs are committed.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

import cn_clip.clip as clip
import cn_clip.clip.model as cn_model
from cn_clip.clip.model import CLIP

# cn_clip's LayerNorm subclass casts its input to float32 (for fp16 training); in the float64
# reference that cast would mix dtypes, so the float64 model uses plain nn.LayerNorm. For float32
# inputs the two are identical.
cn_model.LayerNorm.forward = torch.nn.LayerNorm.forward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "crates", "cnclip-model", "tests", "fixtures")

TEXTS = [
    "一只小猫",
    "皮卡丘",
    "杰尼龟 妙蛙种子 小火龙 皮卡丘",
    "",
    "a photo of a dog 一张狗的照片",
    "ＣＬＩＰ模型，Café, ΟΔΥΣΣΕΥΣ！😀",
    "北京天安门广场上的人群在晚霞中拍照留念" * 5,  # longer than the context: truncated
]

N_IMAGES = 3


def pixels(n, size):
    """Deterministic pseudo-random normalised pixels in [-2, 2), shape [n, 3, size, size].

    x_i = ((i * 2654435761) mod 2^32) / 2^32 * 4 - 2, computed in float64 and rounded to float32.
    The Rust test computes the same sequence.
    """
    count = n * 3 * size * size
    i = np.arange(count, dtype=np.uint64)
    h = (i * np.uint64(2654435761)) % np.uint64(2**32)
    x = h.astype(np.float64) / 2.0**32 * 4.0 - 2.0
    return torch.from_numpy(x.astype(np.float32).reshape(n, 3, size, size))


def load_state_dict(path):
    ck = torch.load(path, map_location="cpu", weights_only=False)
    sd = ck["state_dict"] if isinstance(ck, dict) and "state_dict" in ck else ck
    return {
        (k[len("module."):] if k.startswith("module.") else k): v
        for k, v in sd.items()
        if "bert.pooler" not in k
    }


def hf_to_cn_clip(hf):
    """transformers' ChineseCLIPModel names -> cn_clip's (q/k/v fused, projections transposed)."""
    sd = {}
    for k, v in hf.items():
        if k.startswith("text_model."):
            if ".pooler." not in k:
                sd["bert." + k[len("text_model."):]] = v
        elif k == "logit_scale":
            sd[k] = v
        elif k == "visual_projection.weight":
            sd["visual.proj"] = v.t().contiguous()
        elif k == "text_projection.weight":
            sd["text_projection"] = v.t().contiguous()
    vm = "vision_model."
    sd["visual.class_embedding"] = hf[vm + "embeddings.class_embedding"]
    sd["visual.conv1.weight"] = hf[vm + "embeddings.patch_embedding.weight"]
    sd["visual.positional_embedding"] = hf[vm + "embeddings.position_embedding.weight"]
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for p in ("weight", "bias"):
            sd[f"visual.{ours}.{p}"] = hf[f"{vm}{theirs}.{p}"]
    i = 0
    while f"{vm}encoder.layers.{i}.layer_norm1.weight" in hf:
        src, dst = f"{vm}encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            sd[dst + f"attn.in_proj_{p}"] = torch.cat([hf[src + f"self_attn.{x}_proj.{p}"] for x in "qkv"])
            for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"), ("ln_2", "layer_norm2")):
                sd[dst + f"{ours}.{p}"] = hf[src + f"{theirs}.{p}"]
        i += 1
    return sd


def build(kwargs, state_dict):
    model = CLIP(**kwargs)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if "bert.pooler" not in k]
    if missing or unexpected:
        sys.exit(f"state dict does not fit: missing {missing}, unexpected {unexpected}")
    return model.float().eval()


def features(model, images, tokens):
    with torch.no_grad():
        img = model.encode_image(images.to(next(model.parameters()).dtype))
        txt = model.encode_text(tokens)
    return img.double(), txt.double()


def normalized(x):
    return x / x.norm(dim=-1, keepdim=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", default=os.path.join(FIXTURES, "models", "manifest.json"))
    ap.add_argument("--out", default=os.path.join(FIXTURES, "parity"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    manifest = json.load(open(args.manifest))
    base = os.path.dirname(args.manifest)
    for entry in manifest["fixtures"]:
        kwargs = entry["kwargs"]
        context = min(52, kwargs["text_max_position_embeddings"])
        real_tokens = clip.tokenize(TEXTS, context_length=context)
        if "pt" in entry:
            checkpoint = entry["pt"]
            sd = load_state_dict(os.path.join(base, checkpoint))
        elif "hf_dir" in entry:
            checkpoint = entry["hf_dir"]
            d = os.path.join(base, checkpoint)
            if os.path.exists(os.path.join(d, "pytorch_model.bin")):
                hf = torch.load(os.path.join(d, "pytorch_model.bin"), map_location="cpu", weights_only=True)
            else:
                from safetensors.torch import load_file
                hf = load_file(os.path.join(d, "model.safetensors"))
            sd = hf_to_cn_clip(hf)
        else:
            continue
        # Micro fixtures have a vocab smaller than the real one: fold the real ids into it
        # (keeping [PAD]=0, [CLS]=101, [SEP]=102 where they fit), so the text tower still sees
        # realistic lengths and padding.
        vocab = kwargs["vocab_size"]
        real_vocab = vocab == 21128
        tokens = real_tokens if real_vocab else torch.where(real_tokens < vocab, real_tokens, real_tokens % vocab)
        model32 = build(kwargs, sd)
        model64 = build(kwargs, sd).double()
        size = kwargs["image_resolution"]
        images = pixels(N_IMAGES, size)
        img32, txt32 = features(model32, images, tokens)
        img64, txt64 = features(model64, images.double(), tokens)
        ref_err = max(
            (normalized(img32) - normalized(img64)).abs().max().item(),
            (normalized(txt32) - normalized(txt64)).abs().max().item(),
        )
        out = {
            "name": entry["name"],
            "checkpoint": checkpoint,
            "real_vocab": real_vocab,
            "context_length": context,
            "image_size": size,
            "n_images": N_IMAGES,
            "texts": TEXTS,
            "token_ids": tokens.tolist(),
            "logit_scale": model64.logit_scale.item(),
            "image_features": img64.tolist(),
            "text_features": txt64.tolist(),
            "reference_f32_vs_f64_max_abs": ref_err,
        }
        path = os.path.join(args.out, entry["name"] + ".json")
        with open(path, "w") as f:
            json.dump(out, f)
        print(f"{entry['name']}: reference f32-vs-f64 max |Δ| (normalized) = {ref_err:.3e} -> {path}")


if __name__ == "__main__":
    main()
