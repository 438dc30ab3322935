#!/usr/bin/env python3
"""Small progressive JPEGs written by PIL (libjpeg-turbo), for the reduced-scale decoder's tests.

    python3 tools/gen_progressive_jpegs.py    # writes crates/cnclip-model/tests/fixtures/jpeg/

libjpeg's progressive script (`jpeg_simple_progression`) uses successive approximation: DC and AC
bands first sent without their low bits, then refined one bit per scan, with end-of-band runs across
blocks. jpeg-encoder (the Rust encoder the unit tests also use) writes spectral selection only, so
these files are what exercises the refinement scans. Photo-like content (gradients, edges, noise)
so that every band carries coefficients; each layout PIL writes, greyscale, restart intervals (by
blocks and by rows), odd sizes and a high quality (large coefficients, more refinement bits).
Deterministic for a given Pillow/libjpeg-turbo (Pillow 13.0 here).
"""
import io
import os

import numpy as np
from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "crates", "cnclip-model", "tests", "fixtures", "jpeg")


def picture(w, h, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = np.where(((x // 7) + (y // 5)) % 2 == 0, 230.0, 20.0)
    a = np.stack([r, g, b], axis=-1)
    a += rng.normal(0, 12, a.shape)
    # A disc with a sharp edge and a few thin strokes.
    disc = (x - w * 0.6) ** 2 + (y - h * 0.4) ** 2 < (min(w, h) * 0.25) ** 2
    a[disc] = [250, 40, 60]
    for i in range(0, w, 17):
        a[:, i:i + 1] = 255 - a[:, i:i + 1]
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def save(img, name, **options):
    buf = io.BytesIO()
    img.save(buf, "JPEG", progressive=True, **options)
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(buf.getvalue())
    print(f"{name}: {img.size[0]}x{img.size[1]} {len(buf.getvalue())} bytes")


def main():
    os.makedirs(OUT, exist_ok=True)
    big = picture(203, 157, 1)
    save(big, "progressive_420.jpg", quality=90, subsampling=2)
    save(big, "progressive_422.jpg", quality=90, subsampling=1)
    save(big, "progressive_444.jpg", quality=90, subsampling=0)
    save(big.convert("L"), "progressive_grey.jpg", quality=90)
    save(big, "progressive_420_q98.jpg", quality=98, subsampling=2)
    save(big, "progressive_420_restart5.jpg", quality=85, subsampling=2, restart_marker_blocks=5)
    small = picture(61, 45, 2)
    save(small, "progressive_420_odd_restart_rows.jpg", quality=90, subsampling=2,
         restart_marker_rows=1)
    save(small.convert("L"), "progressive_grey_odd_restart3.jpg", quality=75,
         restart_marker_blocks=3)


if __name__ == "__main__":
    main()
