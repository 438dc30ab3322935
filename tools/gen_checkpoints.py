#!/usr/bin/env python3
"""Tiny random-weight checkpoints for the weight-loading tests, built with cn_clip's own `CLIP`.

Every fixture is a real cn_clip `CLIP` module (random init, then LayerNorm / BatchNorm parameters,
running statistics and biases perturbed with noise so that a swapped or mis-mapped tensor shows up),
saved the way the official files are saved. Outputs, in crates/cnclip-model/tests/fixtures/models/:

- vit_tiny.pt          ViT (image 64, patch 16, width 64, 2 layers) + BERT (vocab 21128, hidden 64,
                       2 layers), fp32, `{'epoch','step','name','state_dict'}` with `module.` keys and a
                       `bert.pooler.*` that must be ignored; `text_projection` stored column-major and
                       `visual.ln_post.bias` as a slice at an offset of a larger storage. The main
                       parity fixture.
- vit336_tiny.pt       ViT at image 336, patch 14 (577 positions, as ViT-L-14-336), width 128 (2 heads);
                       fp16; unprefixed keys; a small `optimizer` entry that must be skipped.
- rn_tiny.pt           ModifiedResNet layers [1,2,1,1], width 8 (4 attention-pool heads), image 64;
                       bf16; unprefixed keys (with `num_batches_tracked`).
- hf_vit_h80_tiny/     transformers `ChineseCLIPModel.save_pretrained(safe_serialization=False)` of a
                       ViT with head width 80 (width 160, 2 heads) and a BERT with 3 heads of 32: the
                       same model as cn_clip's CLIP(vision_head_width=80), converted name by name and
                       checked to give the same embeddings in transformers as in cn_clip.
- vit_micro.safetensors  a micro ViT in canonical names (safetensors.torch.save_file, fp32).
- vit_micro_legacy.pt  the same micro model as a bare state dict in torch's legacy (non-zip) format.
- hf_micro/            the same micro model via transformers' save_pretrained (model.safetensors).
- evil_*.pt / evil_*.pkl  pickles whose unpickling would run a command (never run here: pickling
                       only records the call). The loader must refuse them.
- manifest.json        per fixture: file(s), cn_clip `CLIP(**kwargs)` arguments, the expected
                       `ClipConfig` (cnclip's serde JSON), the storage dtype.
- <name>.expected.json per fixture: every canonical tensor's shape, first values, float64 sum and
                       position-weighted sum.
- preset_state_dicts.json  name and shape of every entry of cn_clip's own state dict for the five
                       official models (built on the meta device: no weights), to check cnclip's
                       expected-tensor table against the reference.

Usage: python3 tools/gen_checkpoints.py [--out DIR]. Deterministic (fixed seeds).
Needs: torch, numpy, safetensors, transformers, cn-clip==1.6.0 (--no-deps). Not needed by CI.
"""
import argparse
import collections
import json
import os
import pickle
import shutil
import sys

import torch
from torch import nn

from cn_clip.clip.model import CLIP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "crates", "cnclip-model", "tests", "fixtures", "models")

# Where the evil pickles' payloads would write if they were ever executed. The Rust tests check
# that these paths do not exist after a (refused) load.
EVIL_MARKER_PREFIX = "/tmp/cnclip-evil-marker-"

TEXT_COMMON = dict(
    text_attention_probs_dropout_prob=0.1,
    text_hidden_act="gelu",
    text_hidden_dropout_prob=0.1,
    text_initializer_range=0.02,
    text_type_vocab_size=2,
)

FIXTURES = {
    "vit_tiny": dict(
        embed_dim=64,
        image_resolution=64,
        vision_layers=2,
        vision_width=64,
        vision_patch_size=16,
        vocab_size=21128,
        text_hidden_size=64,
        text_intermediate_size=256,
        text_max_position_embeddings=512,
        text_num_attention_heads=1,
        text_num_hidden_layers=2,
        **TEXT_COMMON,
    ),
    "vit336_tiny": dict(
        embed_dim=32,
        image_resolution=336,
        vision_layers=1,
        vision_width=128,
        vision_patch_size=14,
        vocab_size=21128,
        text_hidden_size=64,
        text_intermediate_size=128,
        text_max_position_embeddings=64,
        text_num_attention_heads=1,
        text_num_hidden_layers=1,
        **TEXT_COMMON,
    ),
    "rn_tiny": dict(
        embed_dim=48,
        image_resolution=64,
        vision_layers=[1, 2, 1, 1],
        vision_width=8,
        vision_patch_size=None,
        vocab_size=21128,
        text_hidden_size=64,
        text_intermediate_size=96,
        text_max_position_embeddings=64,
        text_num_attention_heads=1,
        text_num_hidden_layers=1,
        **TEXT_COMMON,
    ),
    "hf_vit_h80_tiny": dict(
        embed_dim=40,
        image_resolution=56,
        vision_layers=1,
        vision_width=160,
        vision_patch_size=14,
        vision_head_width=80,
        vocab_size=1000,
        text_hidden_size=96,
        text_intermediate_size=192,
        text_max_position_embeddings=64,
        text_num_attention_heads=3,
        text_num_hidden_layers=2,
        **TEXT_COMMON,
    ),
    "vit_micro": dict(
        embed_dim=16,
        image_resolution=16,
        vision_layers=1,
        vision_width=64,
        vision_patch_size=8,
        vocab_size=128,
        text_hidden_size=64,
        text_intermediate_size=64,
        text_max_position_embeddings=16,
        text_num_attention_heads=1,
        text_num_hidden_layers=1,
        **TEXT_COMMON,
    ),
}

SEEDS = {"vit_tiny": 1, "vit336_tiny": 2, "rn_tiny": 3, "hf_vit_h80_tiny": 4, "vit_micro": 5}


def build_model(name):
    """cn_clip's CLIP with random weights, perturbed so every parameter matters; eval mode, fp32."""
    torch.manual_seed(SEEDS[name])
    model = CLIP(**FIXTURES[name]).float()
    g = torch.Generator().manual_seed(1000 + SEEDS[name])
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
                module.weight.copy_(1.0 + 0.1 * torch.randn(module.weight.shape, generator=g))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=g))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=g))
                module.num_batches_tracked.fill_(1234)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.copy_(0.05 * torch.randn(module.bias.shape, generator=g))
            if isinstance(module, nn.MultiheadAttention):
                module.in_proj_bias.copy_(0.05 * torch.randn(module.in_proj_bias.shape, generator=g))
        model.logit_scale.fill_(4.2 + 0.1 * torch.rand((), generator=g).item())
    return model.eval()


def clip_config_json(kwargs):
    """The `ClipConfig` cnclip must infer / read for these CLIP arguments (its serde JSON form)."""
    layers = kwargs["vision_layers"]
    head_width = kwargs.get("vision_head_width", 64)
    if isinstance(layers, list):
        vision = dict(kind="resnet", image_size=kwargs["image_resolution"], layers=layers,
                      width=kwargs["vision_width"], head_width=head_width)
    else:
        vision = dict(kind="vit", image_size=kwargs["image_resolution"],
                      patch_size=kwargs["vision_patch_size"], width=kwargs["vision_width"],
                      layers=layers, head_width=head_width)
    text = dict(
        vocab_size=kwargs["vocab_size"],
        hidden_size=kwargs["text_hidden_size"],
        num_layers=kwargs["text_num_hidden_layers"],
        num_heads=kwargs["text_num_attention_heads"],
        intermediate_size=kwargs["text_intermediate_size"],
        max_position_embeddings=kwargs["text_max_position_embeddings"],
        type_vocab_size=kwargs["text_type_vocab_size"],
        layer_norm_eps=1e-12,
    )
    return dict(embed_dim=kwargs["embed_dim"], vision=vision, text=text)


def canonical_state_dict(model):
    """cn_clip's state dict as the loader returns it: no pooler, no num_batches_tracked."""
    return collections.OrderedDict(
        (k, v.detach().clone())
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    )


def expected_json(state_dict):
    """Per tensor, as stored (after dtype rounding): shape, first four values, float64 sum, and a
    position-weighted float64 sum, sum(x[i] * (i % 97 + 1)) over the row-major flattening, which
    changes when rows or elements are permuted (a q/k/v or transpose mix-up)."""
    out = {}
    for k, v in state_dict.items():
        flat = v.detach().to(torch.float64).flatten()
        weights = (torch.arange(flat.numel(), dtype=torch.float64) % 97) + 1
        out[k] = dict(
            shape=list(v.shape),
            first=[float(x) for x in flat[:4]],
            sum=float(flat.sum()),
            wsum=float((flat * weights).sum()),
        )
    return dict(tensors=out)


# ---- cn_clip <-> transformers ChineseCLIPModel names (also used by tools/check_convert.py) ----

def hf_config(kwargs):
    """transformers ChineseCLIPConfig kwargs for a cn_clip ViT model."""
    from transformers import ChineseCLIPConfig

    width = kwargs["vision_width"]
    head_width = kwargs.get("vision_head_width", 64)
    return ChineseCLIPConfig(
        text_config=dict(
            vocab_size=kwargs["vocab_size"],
            hidden_size=kwargs["text_hidden_size"],
            num_hidden_layers=kwargs["text_num_hidden_layers"],
            num_attention_heads=kwargs["text_num_attention_heads"],
            intermediate_size=kwargs["text_intermediate_size"],
            hidden_act="gelu",
            max_position_embeddings=kwargs["text_max_position_embeddings"],
            type_vocab_size=kwargs["text_type_vocab_size"],
            layer_norm_eps=1e-12,
        ),
        vision_config=dict(
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=kwargs["vision_layers"],
            num_attention_heads=width // head_width,
            image_size=kwargs["image_resolution"],
            patch_size=kwargs["vision_patch_size"],
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            projection_dim=kwargs["embed_dim"],
        ),
        projection_dim=kwargs["embed_dim"],
    )


def cnclip_to_hf(sd):
    """cn_clip state dict (canonical names) -> transformers ChineseCLIPModel state dict."""
    out = {}
    for k, v in sd.items():
        if k.startswith("bert.pooler") or k.endswith("num_batches_tracked"):
            continue
        if k.startswith("bert."):
            out["text_model." + k[len("bert."):]] = v
        elif k == "text_projection":
            out["text_projection.weight"] = v.t().contiguous()
        elif k == "logit_scale":
            out["logit_scale"] = v
        elif k == "visual.proj":
            out["visual_projection.weight"] = v.t().contiguous()
        elif k == "visual.class_embedding":
            out["vision_model.embeddings.class_embedding"] = v
        elif k == "visual.conv1.weight":
            out["vision_model.embeddings.patch_embedding.weight"] = v
        elif k == "visual.positional_embedding":
            out["vision_model.embeddings.position_embedding.weight"] = v
        elif k.startswith("visual.ln_pre."):
            out["vision_model.pre_layrnorm." + k.split(".")[-1]] = v
        elif k.startswith("visual.ln_post."):
            out["vision_model.post_layernorm." + k.split(".")[-1]] = v
        elif k.startswith("visual.transformer.resblocks."):
            parts = k.split(".")
            i, rest = parts[3], ".".join(parts[4:])
            p = f"vision_model.encoder.layers.{i}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if rest.endswith("weight") else "bias"
                q, kk, vv = v.chunk(3, dim=0)
                out[p + f"self_attn.q_proj.{kind}"] = q.contiguous()
                out[p + f"self_attn.k_proj.{kind}"] = kk.contiguous()
                out[p + f"self_attn.v_proj.{kind}"] = vv.contiguous()
            else:
                rename = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1",
                          "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
                mod, kind = rest.rsplit(".", 1)
                out[p + rename[mod] + "." + kind] = v
        else:
            raise KeyError(f"no transformers name for {k}")
    return out


def hf_to_cnclip(sd):
    """transformers ChineseCLIPModel state dict -> cn_clip names (inverse of cnclip_to_hf)."""
    out = {}
    qkv = collections.defaultdict(dict)
    for k, v in sd.items():
        if k.startswith("text_model.pooler") or k.endswith("position_ids") or k.endswith("token_type_ids"):
            continue
        if k.startswith("text_model."):
            out["bert." + k[len("text_model."):]] = v
        elif k == "text_projection.weight":
            out["text_projection"] = v.t().contiguous()
        elif k == "visual_projection.weight":
            out["visual.proj"] = v.t().contiguous()
        elif k == "logit_scale":
            out[k] = v
        elif k == "vision_model.embeddings.class_embedding":
            out["visual.class_embedding"] = v
        elif k == "vision_model.embeddings.patch_embedding.weight":
            out["visual.conv1.weight"] = v
        elif k == "vision_model.embeddings.position_embedding.weight":
            out["visual.positional_embedding"] = v
        elif k.startswith("vision_model.pre_layrnorm."):
            out["visual.ln_pre." + k.split(".")[-1]] = v
        elif k.startswith("vision_model.post_layernorm."):
            out["visual.ln_post." + k.split(".")[-1]] = v
        elif k.startswith("vision_model.encoder.layers."):
            parts = k.split(".")
            i, rest = parts[3], ".".join(parts[4:])
            p = f"visual.transformer.resblocks.{i}."
            mod, kind = rest.rsplit(".", 1)
            if mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv[(p, kind)][mod[-6]] = v
            else:
                rename = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1",
                          "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
                out[p + rename[mod] + "." + kind] = v
        else:
            raise KeyError(f"no cn_clip name for {k}")
    for (p, kind), parts in qkv.items():
        out[p + f"attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def hf_model_from_cnclip(kwargs, sd):
    """transformers ChineseCLIPModel holding exactly the weights of a cn_clip state dict."""
    from transformers import ChineseCLIPModel

    model = ChineseCLIPModel(hf_config(kwargs)).eval()
    missing, unexpected = model.load_state_dict(cnclip_to_hf(sd), strict=False)
    if missing or unexpected:
        sys.exit(f"transformers model does not fit: missing {missing}, unexpected {unexpected}")
    return model


def sample_inputs(kwargs, n=2, seed=7):
    g = torch.Generator().manual_seed(seed)
    size = kwargs["image_resolution"]
    images = torch.randn((n, 3, size, size), generator=g)
    ids = torch.randint(1, kwargs["vocab_size"], (n, 12), generator=g)
    ids[:, 0] = 101 % kwargs["vocab_size"]
    ids[1, 8:] = 0  # padding
    return images, ids


def embeddings_cnclip(model, images, ids):
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(ids)


def embeddings_hf(model, images, ids):
    """Unnormalised features as ChineseCLIPModel.forward computes them (text: [CLS] hidden state
    @ text_projection; transformers 4.57's get_text_features reads a pooler this model lacks)."""
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=images)[1])
        hidden = model.text_model(input_ids=ids, attention_mask=(ids != 0).long())[0]
        txt = model.text_projection(hidden[:, 0, :])
    return img, txt


# ---- evil pickles ----

class _Reduce:
    """Pickles as `func(*args)`: what a malicious checkpoint does to run code on load."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def write_evil(out):
    import builtins
    import subprocess

    cmd = lambda tag: f"touch {EVIL_MARKER_PREFIX}{tag}"  # noqa: E731
    small = collections.OrderedDict(
        [("module.logit_scale", torch.tensor(4.0)), ("module.visual.proj", torch.zeros(2, 2))]
    )
    # torch zip checkpoints: the payload sits next to a real state dict.
    torch.save({"epoch": 1, "state_dict": small, "name": _Reduce(os.system, (cmd("system"),))},
               os.path.join(out, "evil_system.pt"))
    torch.save({"state_dict": small, "x": _Reduce(subprocess.Popen, (["touch", EVIL_MARKER_PREFIX + "popen"],))},
               os.path.join(out, "evil_popen.pt"))
    # raw pickle (no zip), protocol 4 (STACK_GLOBAL) and protocol 0 (text GLOBAL).
    with open(os.path.join(out, "evil_eval.pkl"), "wb") as f:
        pickle.dump({"state_dict": _Reduce(builtins.eval, (f"__import__('os').system('{cmd('eval')}')",))}, f,
                    protocol=4)
    with open(os.path.join(out, "evil_system_p0.pkl"), "wb") as f:
        pickle.dump(_Reduce(os.system, (cmd("system_p0"),)), f, protocol=0)


# ---- the five official architectures, as cn_clip builds them ----

PRESETS = {
    "RN50": ("RN50", "RBT3-chinese"),
    "ViT-B-16": ("ViT-B-16", "RoBERTa-wwm-ext-base-chinese"),
    "ViT-L-14": ("ViT-L-14", "RoBERTa-wwm-ext-base-chinese"),
    "ViT-L-14-336": ("ViT-L-14-336", "RoBERTa-wwm-ext-base-chinese"),
    "ViT-H-14": ("ViT-H-14", "RoBERTa-wwm-ext-large-chinese"),
}


def preset_state_dicts():
    """{preset: [[name, shape], ...]} of cn_clip's CLIP built from its own model_configs."""
    import cn_clip.clip as clip_pkg

    cfg_dir = os.path.join(os.path.dirname(clip_pkg.__file__), "model_configs")
    out = {}
    for preset, (vision, text) in PRESETS.items():
        info = json.load(open(os.path.join(cfg_dir, vision + ".json")))
        info.update(json.load(open(os.path.join(cfg_dir, text + ".json"))))
        if isinstance(info["vision_layers"], str):
            info["vision_layers"] = json.loads(info["vision_layers"])
        with torch.device("meta"):
            model = CLIP(**info)
        out[preset] = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    return out


def save_legacy(obj, path):
    """torch's legacy (pre-zip) format, made deterministic. torch names storages by memory
    address and writes them sorted by that name, so the file changes from run to run; here the
    storages are renamed to zero-padded ranks of first appearance (same length, so the pickle
    stays valid) and written in that order."""
    import io
    import struct

    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    f = io.BytesIO(data)
    for _ in range(3):
        pickle.load(f)
    main_start = f.tell()
    elsize = {}

    class _Record(pickle.Unpickler):
        def persistent_load(self, pid):
            _, storage_type, key, _, _, _ = pid
            elsize[key] = torch.tensor([], dtype=storage_type(0).dtype).element_size()
            return None

        def find_class(self, module, name):
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return lambda *args: None
            if module == "torch" and name.endswith("Storage"):
                return getattr(torch, name)
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    _Record(f).load()
    main = data[main_start: f.tell()]
    keys = pickle.load(f)
    storages = {}
    for key in keys:
        (numel,) = struct.unpack("<q", f.read(8))
        storages[key] = struct.pack("<q", numel) + f.read(numel * elsize[key])
    assert f.read() == b""

    def enc(k):
        return b"X" + struct.pack("<I", len(k)) + k.encode()

    order = sorted(keys, key=lambda k: main.index(enc(k)))
    rename = {k: f"{i:0{len(k)}d}" for i, k in enumerate(order)}
    for k in order:
        main = main.replace(enc(k), enc(rename[k]))
    with open(path, "wb") as out:
        out.write(data[:main_start] + main)
        out.write(pickle.dumps([rename[k] for k in order], protocol=2))
        for k in order:
            out.write(storages[k])


# ---- main ----

def save_official(path, sd, *, prefix, extra=None, name="tiny"):
    state = collections.OrderedDict((prefix + k, v) for k, v in sd.items())
    ck = {"epoch": 3, "step": 4321, "name": name, "state_dict": state}
    if extra:
        ck.update(extra)
    torch.save(ck, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    out = args.out
    os.makedirs(out, exist_ok=True)
    manifest = []

    def record(name, dtype, **files):
        kwargs = FIXTURES[name]
        manifest.append(dict(name=name, **files, kwargs=kwargs, config=clip_config_json(kwargs),
                             dtype=dtype, expected=f"{name}.expected.json", seed=SEEDS[name]))

    def write_expected(name, sd):
        with open(os.path.join(out, f"{name}.expected.json"), "w") as f:
            json.dump(expected_json(sd), f, indent=0)

    # vit_tiny: official layout, fp32, module. prefix, pooler present.
    model = build_model("vit_tiny")
    sd = model.state_dict()
    full = collections.OrderedDict(sd)
    g = torch.Generator().manual_seed(99)
    h = FIXTURES["vit_tiny"]["text_hidden_size"]
    full["bert.pooler.dense.weight"] = torch.randn((h, h), generator=g)
    full["bert.pooler.dense.bias"] = torch.randn((h,), generator=g)
    # Stored layouts a loader must honour (torch.save keeps storage, offset and strides):
    # a column-major matrix and a slice at an offset inside a larger storage. Same values.
    full["text_projection"] = full["text_projection"].t().contiguous().t()
    bias = full["visual.ln_post.bias"]
    full["visual.ln_post.bias"] = torch.cat([torch.ones(3), bias, torch.ones(5)])[3:3 + bias.numel()]
    save_official(os.path.join(out, "vit_tiny.pt"), full, prefix="module.", name="vit_tiny")
    write_expected("vit_tiny", canonical_state_dict(model))
    record("vit_tiny", "float32", pt="vit_tiny.pt")

    # vit336_tiny: fp16 storage, no prefix, a small optimizer entry to skip.
    model = build_model("vit336_tiny")
    sd16 = collections.OrderedDict((k, v.half()) for k, v in canonical_state_dict(model).items())
    optimizer = {
        "state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.randn(3, 4), "exp_avg_sq": torch.rand(3, 4)}},
        "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.001,
                          "amsgrad": False, "params": [0, 1, 2]}],
    }
    save_official(os.path.join(out, "vit336_tiny.pt"), sd16, prefix="", extra={"optimizer": optimizer},
                  name="vit336_tiny")
    write_expected("vit336_tiny", sd16)
    record("vit336_tiny", "float16", pt="vit336_tiny.pt")

    # rn_tiny: bf16 storage (num_batches_tracked stays int64, as torch keeps it), no prefix.
    model = build_model("rn_tiny")
    sdbf = collections.OrderedDict(
        (k, v if k.endswith("num_batches_tracked") else v.bfloat16()) for k, v in model.state_dict().items()
    )
    save_official(os.path.join(out, "rn_tiny.pt"), sdbf, prefix="", name="rn_tiny")
    write_expected("rn_tiny", collections.OrderedDict((k, v) for k, v in sdbf.items()
                                                      if not k.endswith("num_batches_tracked")))
    record("rn_tiny", "bfloat16", pt="rn_tiny.pt")

    # hf_vit_h80_tiny: transformers layout, head width 80.
    kwargs = FIXTURES["hf_vit_h80_tiny"]
    model = build_model("hf_vit_h80_tiny")
    sd = canonical_state_dict(model)
    hf = hf_model_from_cnclip(kwargs, sd)
    images, ids = sample_inputs(kwargs)
    a_img, a_txt = embeddings_cnclip(model, images, ids)
    b_img, b_txt = embeddings_hf(hf, images, ids)
    delta = max((a_img - b_img).abs().max().item(), (a_txt - b_txt).abs().max().item())
    print(f"hf_vit_h80_tiny: transformers vs cn_clip max |delta| = {delta:.3e}")
    if delta > 1e-4:
        sys.exit("transformers and cn_clip disagree on the converted model")
    d = os.path.join(out, "hf_vit_h80_tiny")
    shutil.rmtree(d, ignore_errors=True)
    hf.save_pretrained(d, safe_serialization=False)
    write_expected("hf_vit_h80_tiny", sd)
    record("hf_vit_h80_tiny", "float32", hf_dir="hf_vit_h80_tiny")

    # vit_micro: canonical safetensors, legacy torch format (bare state dict), transformers safetensors.
    from safetensors.torch import save_file

    kwargs = FIXTURES["vit_micro"]
    model = build_model("vit_micro")
    sd = canonical_state_dict(model)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(out, "vit_micro.safetensors"))
    save_legacy(sd, os.path.join(out, "vit_micro_legacy.pt"))
    d = os.path.join(out, "hf_micro")
    shutil.rmtree(d, ignore_errors=True)
    hf_model_from_cnclip(kwargs, sd).save_pretrained(d, safe_serialization=True)
    write_expected("vit_micro", sd)
    record("vit_micro", "float32", legacy_pt="vit_micro_legacy.pt", safetensors="vit_micro.safetensors",
           hf_dir="hf_micro")

    write_evil(out)

    with open(os.path.join(out, "preset_state_dicts.json"), "w") as f:
        json.dump(preset_state_dicts(), f, separators=(",", ":"))

    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(dict(fixtures=manifest, evil_marker_prefix=EVIL_MARKER_PREFIX), f, indent=1)
    total = 0
    for root, _, files in os.walk(out):
        for fn in sorted(files):
            p = os.path.join(root, fn)
            total += os.path.getsize(p)
            print(f"{os.path.relpath(p, out):40s} {os.path.getsize(p):>10,d}")
    print(f"{'total':40s} {total:>10,d}")


if __name__ == "__main__":
    main()
