#!/usr/bin/env python3
"""Generate the preprocessing fixtures in crates/cnclip-model/tests/fixtures/preprocess/ with Pillow.

The reference is cn_clip's `image_transform(S)`: torchvision's `Resize((S, S), BICUBIC)` on a PIL image is
`img.resize((S, S), Image.BICUBIC)`, followed by `convert("RGB")`. ToTensor/Normalize are exact arithmetic
and are checked in the Rust unit tests, so the fixtures hold the 8-bit RGB image before them.

Two kinds of cases, listed in `cases.txt`:

* `synthetic`: images computed by a small integer-only generator that `tests/preprocess.rs` reproduces
  bit for bit (no file to decode), in every PIL mode, at many shapes (downscale, upscale, 12 MP, both
  pass orders). The expected output is stored as a SHA-256 of the RGB bytes, plus a PNG for some.
* `file`: small image files committed here (PNG of every colour type and bit depth, GIF, BMP, WebP, TIFF,
  JPEG, EXIF orientations), decoded by the crate. Lossless ones must match exactly; lossy ones (JPEG,
  lossy WebP) come with the expected PNG so the test can measure |delta|.

Usage: python3 tools/gen_preprocess_fixtures.py  (Pillow and numpy; writes the fixture directory)
"""

import hashlib
import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

OUT = Path(__file__).resolve().parent.parent / "crates/cnclip-model/tests/fixtures/preprocess"
SIZES = (224, 336)


# --------------------------------------------------------------------------------------------------
# The generator (mirrored in tests/preprocess.rs: keep both in step). uint32 arithmetic wraps.
# --------------------------------------------------------------------------------------------------
def mix(x, y, c, seed):
    """lowbias32-style hash of (x, y, c, seed), uint32."""
    x = np.asarray(x, dtype=np.uint32)
    y = np.asarray(y, dtype=np.uint32)
    h = (x * np.uint32(0x9E3779B1)) ^ (y * np.uint32(0x85EBCA77))
    h = h ^ (np.uint32(c) * np.uint32(0xC2B2AE3D)) ^ np.uint32(seed)
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x7FEB352D)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x846CA68B)
    h = h ^ (h >> np.uint32(16))
    return h


def grid(w, h):
    y, x = np.mgrid[0:h, 0:w]
    return x.astype(np.int64), y.astype(np.int64)


def photo(w, h, c, seed, noise_mask=31):
    """Gradient + hard-edged blocks + noise: smooth areas, ringing at edges, clipping."""
    x, y = grid(w, h)
    grad = (x * 255 // max(w - 1, 1) * (c + 1) + y * 255 // max(h - 1, 1) * (3 - c)) // 4
    block = ((x // max(w // 7, 1) + y // max(h // 5, 1) + c) % 2) * 96
    noise = (mix(x, y, c, seed) & np.uint32(noise_mask)).astype(np.int64)
    return np.clip(grad * 5 // 8 + block + noise, 0, 255).astype(np.uint8)


def noise(w, h, c, seed):
    x, y = grid(w, h)
    return (mix(x, y, c, seed) & np.uint32(255)).astype(np.uint8)


def alpha(w, h, seed):
    """Six zones: transparent, opaque, random, half, almost transparent, almost opaque."""
    x, y = grid(w, h)
    zone = (x * 4 // w + (y * 3 // h) * 4) % 6
    rand = (mix(x, y, 9, seed) & np.uint32(255)).astype(np.int64)
    table = np.stack([np.zeros_like(rand), np.full_like(rand, 255), rand,
                      np.full_like(rand, 128), np.ones_like(rand), np.full_like(rand, 254)])
    return np.take_along_axis(table, zone[None], 0)[0].astype(np.uint8)


def palette(seed):
    i = np.arange(256)
    return np.stack([mix(i, 7, c, seed ^ 0x55) & np.uint32(255) for c in range(3)], 1).astype(np.uint8)


def channel(gen, w, h, c, seed):
    return photo(w, h, c, seed) if gen == "photo" else noise(w, h, c, seed)


def synthetic(mode, w, h, gen, seed):
    """The PIL image of a synthetic case."""
    ch = lambda c: channel(gen, w, h, c, seed)  # noqa: E731
    if mode == "RGB":
        return Image.fromarray(np.stack([ch(0), ch(1), ch(2)], 2), "RGB")
    if mode == "RGBA":
        return Image.fromarray(np.stack([ch(0), ch(1), ch(2), alpha(w, h, seed)], 2), "RGBA")
    if mode == "L":
        return Image.fromarray(ch(0), "L")
    if mode == "LA":
        return Image.fromarray(np.stack([ch(0), alpha(w, h, seed)], 2), "LA")
    if mode == "CMYK":
        return Image.fromarray(np.stack([ch(0), ch(1), ch(2), ch(3)], 2), "CMYK")
    if mode == "P":
        im = Image.frombytes("P", (w, h), ch(0).tobytes())  # the indices, as they are
        im.putpalette(palette(seed).tobytes())
        return im
    if mode == "1":
        return Image.fromarray(ch(0) >= 128)
    if mode == "I;16":
        x, y = grid(w, h)
        v = ch(0).astype(np.int64) * 3 // 2 + (mix(x, y, 5, seed) & np.uint32(63)).astype(np.int64)
        return Image.fromarray(v.astype(np.uint16))  # values 0..445: the RGB conversion clamps at 255
    raise ValueError(mode)


# --------------------------------------------------------------------------------------------------
# Reference pipeline
# --------------------------------------------------------------------------------------------------
def transform(im, size, exif=False):
    """cn_clip's Resize((S, S), BICUBIC) + convert("RGB"), optionally after exif_transpose."""
    if exif:
        im = ImageOps.exif_transpose(im)
    return np.asarray(im.resize((size, size), Image.BICUBIC).convert("RGB"))


def sha(a):
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.uint8).tobytes()).hexdigest()


def tensor_sha(rgb8):
    """SHA-256 of ToTensor + Normalize as torchvision computes them (float32), little-endian CHW."""
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    try:
        import torch

        t = torch.from_numpy(rgb8.copy()).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        t = t.sub_(torch.as_tensor(mean)[:, None, None]).div_(torch.as_tensor(std)[:, None, None])
        out = t.numpy()
    except ImportError:  # the same float32 operations in numpy
        x = rgb8.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        m, s = np.array(mean, dtype=np.float32), np.array(std, dtype=np.float32)
        out = (x - m[:, None, None]) / s[:, None, None]
    return hashlib.sha256(out.astype("<f4").tobytes()).hexdigest()


def save_png(a, name):
    Image.fromarray(a, "RGB").save(OUT / name, optimize=True)
    return name


# --------------------------------------------------------------------------------------------------
# A minimal PNG writer for colour types / depths Pillow does not write (16-bit RGB, 2/4-bit grey, ...)
# --------------------------------------------------------------------------------------------------
def png_bytes(rows, width, height, depth, color_type, extra_chunks=()):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + r for r in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    body = chunk(b"IHDR", ihdr)
    for kind, data in extra_chunks:
        body += chunk(kind, data)
    body += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def pack_bits(values, depth):
    """Pack a row of small ints MSB first."""
    per = 8 // depth
    out = bytearray()
    for i in range(0, len(values), per):
        b = 0
        for j, v in enumerate(values[i:i + per]):
            b |= int(v) << (8 - depth * (j + 1))
        out.append(b)
    return bytes(out)


def exif_with_orientation(o):
    ex = Image.Exif()
    ex[0x0112] = o
    return ex.tobytes()


# --------------------------------------------------------------------------------------------------
def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    lines = [
        "# Generated by tools/gen_preprocess_fixtures.py with Pillow " + Image.__version__ + ".",
        "# synthetic MODE W H GEN SEED SIZE SHA256 EXPECTED_PNG|-",
        "# file NAME SIZE EXIF(0|1) exact|lossy SHA256 EXPECTED_PNG|-",
        "# mode NAME PIL_MODE",
        "# tensor NAME SIZE SHA256_OF_F32_LE_CHW",
    ]

    # ---- synthetic cases: the resampler in every mode ----
    # Both pass orders, upscale, identity, one axis unchanged (224 wide or high), mixed up/down.
    shapes = [(640, 480), (300, 500), (500, 300), (37, 23), (224, 224), (224, 500), (500, 224),
              (1000, 150), (150, 1000)]
    modes = ["RGB", "RGBA", "L", "LA", "P", "1", "CMYK", "I;16"]
    keep_png = {("RGB", 640, 480, "photo", 224), ("RGBA", 640, 480, "photo", 224),
                ("LA", 640, 480, "photo", 224), ("CMYK", 640, 480, "photo", 224),
                ("RGB", 37, 23, "photo", 224), ("RGB", 300, 500, "noise", 224),
                ("RGB", 4000, 3000, "photo", 224), ("RGB", 4000, 3000, "photo", 336)}
    cases = [(m, w, h, g, 1) for m in modes for (w, h) in shapes for g in ("photo", "noise")]
    cases += [("RGB", 4000, 3000, "photo", 2), ("L", 4000, 3000, "photo", 2),
              ("RGBA", 4000, 3000, "photo", 2), ("RGB", 3000, 4000, "photo", 3),
              ("RGB", 1000, 4000, "noise", 4)]
    for mode, w, h, gen, seed in cases:
        im = synthetic(mode, w, h, gen, seed)
        assert im.mode == mode, (mode, im.mode)
        for size in SIZES:
            out = transform(im, size)
            png = "-"
            if (mode, w, h, gen, size) in keep_png and seed in (1, 2):
                png = save_png(out, f"syn_{mode.replace(';', '')}_{w}x{h}_{gen}_{size}.png".lower())
            lines.append(f"synthetic {mode} {w} {h} {gen} {seed} {size} {sha(out)} {png}")

    # ---- files ----
    files = {}  # name -> (bytes, lossy)
    W, H = 160, 120
    rgb = synthetic("RGB", W, H, "photo", 11)
    rgba = synthetic("RGBA", W, H, "photo", 12)

    def pil_file(im, name, fmt, lossy=False, **kw):
        b = io.BytesIO()
        im.save(b, fmt, **kw)
        files[name] = (b.getvalue(), lossy)

    pil_file(rgb, "png_rgb8.png", "PNG", optimize=True)
    pil_file(rgba, "png_rgba8.png", "PNG", optimize=True)
    pil_file(synthetic("L", W, H, "photo", 13), "png_l8.png", "PNG", optimize=True)
    pil_file(synthetic("LA", W, H, "photo", 14), "png_la8.png", "PNG", optimize=True)
    pil_file(synthetic("1", W, H, "photo", 15), "png_1bit.png", "PNG", optimize=True)
    pil_file(synthetic("I;16", W, H, "photo", 16), "png_l16.png", "PNG")
    p = synthetic("P", W, H, "photo", 17)
    pil_file(p, "png_p8_trns.png", "PNG", transparency=5)
    p16 = rgb.quantize(16)
    pil_file(p16, "png_p4.png", "PNG", bits=4)
    pil_file(rgb, "png_rgb_trns.png", "PNG", transparency=(0, 0, 0))
    pil_file(synthetic("L", W, H, "photo", 18), "png_l_trns.png", "PNG", transparency=200)
    # Written by hand: 16-bit colour, 2/4-bit grey, 16-bit grey+alpha.
    # Low bytes vary too (PIL keeps the high byte: the test catches a decoder that rounds instead).
    a16 = (np.stack([photo(W, H, c, 19) for c in range(4)], 2).astype(np.uint16) * 256
           + (mix(*grid(W, H), 3, 19) & np.uint32(255)).astype(np.uint16)[..., None])
    rows3 = [a16[y, :, :3].astype(">u2").tobytes() for y in range(H)]
    rows4 = [a16[y].astype(">u2").tobytes() for y in range(H)]
    rows2 = [a16[y, :, [0, 3]].T.astype(">u2").tobytes() for y in range(H)]
    files["png_rgb16.png"] = (png_bytes(rows3, W, H, 16, 2), False)
    files["png_rgba16.png"] = (png_bytes(rows4, W, H, 16, 6), False)
    files["png_la16.png"] = (png_bytes(rows2, W, H, 16, 4), False)
    g = photo(W, H, 0, 20)
    files["png_l4.png"] = (png_bytes([pack_bits(g[y] >> 4, 4) for y in range(H)], W, H, 4, 0), False)
    files["png_l2.png"] = (png_bytes([pack_bits(g[y] >> 6, 2) for y in range(H)], W, H, 2, 0), False)
    pil_file(p, "gif_p.gif", "GIF", transparency=5)
    grey = Image.fromarray(np.arange(W * H, dtype=np.int64).reshape(H, W).astype(np.uint8) // 2 * 2
                           + (photo(W, H, 0, 21) & 1), "L")
    pil_file(grey, "gif_grey.gif", "GIF", optimize=False)
    pil_file(rgb, "bmp_rgb24.bmp", "BMP")
    pil_file(p, "bmp_p8.bmp", "BMP")
    pil_file(synthetic("L", W, H, "photo", 22), "bmp_l8.bmp", "BMP")
    pil_file(synthetic("1", W, H, "photo", 23), "bmp_1.bmp", "BMP")
    pil_file(rgb, "webp_lossless.webp", "WEBP", lossless=True)
    pil_file(rgba, "webp_lossless_rgba.webp", "WEBP", lossless=True, exact=True)
    pil_file(rgb, "tiff_rgb.tiff", "TIFF", compression="tiff_deflate")
    pil_file(rgba, "tiff_rgba.tiff", "TIFF", compression="tiff_deflate")
    # Lossy: smoother content, like a photo.
    smooth = Image.fromarray(np.stack([photo(640, 480, c, 30, noise_mask=7) for c in range(3)], 2), "RGB")
    pil_file(smooth, "webp_lossy.webp", "WEBP", lossy=True, quality=90)
    pil_file(smooth, "jpeg_q90.jpg", "JPEG", lossy=True, quality=90)
    pil_file(smooth, "jpeg_q90_444.jpg", "JPEG", lossy=True, quality=90, subsampling=0)
    pil_file(smooth, "jpeg_q75_progressive.jpg", "JPEG", lossy=True, quality=75, progressive=True)
    pil_file(smooth.convert("L"), "jpeg_grey.jpg", "JPEG", lossy=True, quality=90)
    pil_file(synthetic("RGB", 640, 480, "photo", 31), "jpeg_q90_noisy.jpg", "JPEG", lossy=True, quality=90)
    # CMYK with real black ink (RGB.convert("CMYK") would leave K at 0). PIL writes an Adobe APP14
    # marker and reads the samples inverted ("CMYK;I"), as Photoshop files are.
    cmyk = Image.fromarray(np.stack([photo(640, 480, c, 32, noise_mask=7) for c in range(4)], 2), "CMYK")
    pil_file(cmyk, "jpeg_cmyk.jpg", "JPEG", lossy=True, quality=90)
    # Smaller four-channel files for the other decoding paths. Pillow's `subsampling` halves every
    # channel but the first. Progressive, subsampled and rotated by EXIF (orientation 6):
    cmyk = Image.fromarray(np.stack([photo(320, 240, c, 33, noise_mask=7) for c in range(4)], 2), "CMYK")
    pil_file(cmyk, "jpeg_cmyk_progressive_exif6.jpg", "JPEG", lossy=True, quality=90, subsampling=2,
             progressive=True, exif=exif_with_orientation(6))
    # YCCK (Adobe transform 2), as Photoshop writes CMYK: Pillow cannot encode it, so the channels of
    # a CMYK file are relabelled Y, Cb, Cr, K by patching the transform byte of its APP14 marker.
    ycck = Image.fromarray(np.stack([photo(320, 240, c, 34, noise_mask=7) for c in range(4)], 2), "CMYK")
    pil_file(ycck, "jpeg_ycck.jpg", "JPEG", lossy=True, quality=90, subsampling=2)
    data = bytearray(files["jpeg_ycck.jpg"][0])
    app14 = data.index(b"\xff\xee\x00\x0eAdobe")  # marker, length 14, then "Adobe"
    assert data[app14 + 15] == 0, "APP14 transform of a CMYK JPEG"
    data[app14 + 15] = 2
    files["jpeg_ycck.jpg"] = (bytes(data), True)
    # EXIF orientations on an asymmetric image: exact with PNG (eXIf chunk), lossy with JPEG (APP1).
    small = Image.fromarray(np.stack([photo(96, 64, c, 40) for c in range(3)], 2), "RGB")
    for o in range(1, 9):
        pil_file(small, f"exif_{o}.png", "PNG", exif=exif_with_orientation(o))
        pil_file(small, f"exif_{o}.jpg", "JPEG", lossy=True, quality=95, exif=exif_with_orientation(o))

    for name, (data, lossy) in sorted(files.items()):
        (OUT / name).write_bytes(data)
        im = Image.open(io.BytesIO(data))
        im.load()
        orientation = im.getexif().get(0x0112, 1)
        if name.startswith("exif_") and name.endswith(".jpg"):
            continue  # checked against exif_1.jpg transposed: same scan data, other orientation
        sizes = SIZES if not lossy or name == "jpeg_q90.jpg" else (224,)
        for exif in (1, 0) if orientation != 1 else (1,):
            for size in sizes if not name.startswith("exif_") else (224,):
                out = transform(Image.open(io.BytesIO(data)), size, exif=bool(exif))
                png = "-"
                if lossy:
                    png = save_png(out, f"expected_{name.replace('.', '_')}_{size}_{exif}.png")
                kind = "lossy" if lossy else "exact"
                lines.append(f"file {name} {size} {exif} {kind} {sha(out)} {png}")
        lines.append(f"mode {name} {im.mode}")
        print(f"{name}: PIL mode {im.mode}, {len(data)} bytes", file=sys.stderr)

    # ---- the whole transform, ToTensor + Normalize included, on one file ----
    for name in ("png_rgb8.png", "png_p8_trns.png"):
        rgb8 = transform(Image.open(OUT / name), 224, exif=True)
        lines.append(f"tensor {name} 224 {tensor_sha(rgb8)}")

    # ---- decompression bombs: tiny files declaring huge images ----
    bomb = png_bytes([b"\x00"], 100_000, 100_000, 8, 0)  # IDAT far too short: never decoded
    (OUT / "bomb.png").write_bytes(bomb)
    gif = bytearray(files["gif_p.gif"][0])
    gif[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen 65535 x 65535
    (OUT / "bomb.gif").write_bytes(bytes(gif))

    (OUT / "cases.txt").write_text("\n".join(lines) + "\n")
    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"{len(lines)} lines, {total} bytes in {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
