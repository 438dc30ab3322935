#!/usr/bin/env python3
"""Photo-like 12-MP JPEGs for measuring reduced-scale JPEG decoding (not committed: they are large).

    python3 tools/gen_test_photos.py OUT_DIR        # ~16 JPEGs, 4000x3000 and variants

Each of the twelve sample scenes in index-data/photos is enlarged to 4000x3000 (half of them with soft
bicubic edges, half with sharp ones) and given the texture a real photo has and a flat drawing has not:
coloured noise at several scales (4 to 256 pixels), sensor grain, and thin high-contrast strokes (grass,
twigs, text-like detail). Saved as PIL/libjpeg-turbo saves camera photos: quality 90, 4:2:0.
Variants: progressive, greyscale (mode L), 4:4:4, odd dimensions (4001x2999, not a multiple of the
8-pixel block) and an EXIF orientation 6 (stored landscape, shown portrait). Deterministic.
"""
import glob
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W, H = 4000, 3000


def value_noise(rng, w, h, cell, channels=3):
    """Smooth random noise with features of about `cell` pixels, in [-1, 1]."""
    small = rng.uniform(-1, 1, (h // cell + 2, w // cell + 2, channels)).astype(np.float32)
    out = np.empty((h, w, channels), np.float32)
    for c in range(channels):
        img = Image.fromarray(small[:, :, c], mode="F")
        img = img.resize(((w // cell + 2) * cell, (h // cell + 2) * cell), Image.BICUBIC)
        out[:, :, c] = np.asarray(img)[:h, :w]
    return out


def strokes(rng, size, n, colour_range):
    """Thin random strokes (1-3 px) on a transparent layer: fine high-contrast detail."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    w, h = size
    for _ in range(n):
        x, y = rng.integers(0, w), rng.integers(0, h)
        dx, dy = rng.integers(-60, 61), rng.integers(-120, 20)
        c = tuple(int(v) for v in rng.integers(*colour_range, 3)) + (int(rng.integers(120, 256)),)
        d.line((x, y, x + dx, y + dy), fill=c, width=int(rng.integers(1, 4)))
    return layer


def photo(path, seed, sharp):
    rng = np.random.default_rng(seed)
    base = Image.open(path).convert("RGB")
    if sharp:
        img = base.resize((W, H), Image.NEAREST).filter(ImageFilter.GaussianBlur(1.2))
    else:
        img = base.resize((W, H), Image.BICUBIC)
    rgba = img.convert("RGBA")
    rgba.alpha_composite(strokes(rng, (W, H), 6000, (0, 256)))
    a = np.asarray(rgba.convert("RGB"), np.float32)
    a += 14 * value_noise(rng, W, H, 256) + 10 * value_noise(rng, W, H, 48)
    a += 8 * value_noise(rng, W, H, 12) + 6 * value_noise(rng, W, H, 4)
    a += rng.normal(0, 4, a.shape).astype(np.float32)  # sensor grain
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/photos"
    os.makedirs(out, exist_ok=True)
    scenes = sorted(glob.glob(os.path.join(ROOT, "index-data", "photos", "*.*")))
    for i, path in enumerate(scenes):
        name = os.path.splitext(os.path.basename(path))[0]
        img = photo(path, i, sharp=i % 2 == 1)
        img.save(os.path.join(out, f"{name}.jpg"), quality=90, subsampling=2)
        if i == 0:
            img.save(os.path.join(out, f"{name}-progressive.jpg"), quality=90, subsampling=2,
                     progressive=True)
            img.convert("L").save(os.path.join(out, f"{name}-grey.jpg"), quality=90)
        if i == 1:
            img.save(os.path.join(out, f"{name}-444.jpg"), quality=90, subsampling=0)
            img.save(os.path.join(out, f"{name}-progressive.jpg"), quality=90, subsampling=2,
                     progressive=True)
        if i == 2:
            img.resize((4001, 2999), Image.BICUBIC).save(
                os.path.join(out, f"{name}-odd.jpg"), quality=90, subsampling=2)
        if i == 3:
            exif = Image.Exif()
            exif[0x0112] = 6
            img.save(os.path.join(out, f"{name}-exif6.jpg"), quality=90, subsampling=2, exif=exif)
        print(name, flush=True)


if __name__ == "__main__":
    main()
