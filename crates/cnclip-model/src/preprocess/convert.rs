//! `Resize((S, S), BICUBIC)` in the image's own mode followed by `convert("RGB")`, as PIL does them
//! (`Image.resize` in `PIL/Image.py`, conversions from `src/libImaging/Convert.c`, Pillow 13.0).

use super::resample::{bicubic_u16, bicubic_u8, nearest_u8};
use super::source::{PixelMode, Pixels, SourceImage};

/// `MULDIV255(a, b)`: `a * b / 255` rounded to nearest, Pillow's exact integer form.
#[inline(always)]
fn muldiv255(a: u8, b: u8) -> u8 {
    let t = u32::from(a) * u32::from(b) + 128;
    (((t >> 8) + t) >> 8) as u8
}

/// Un-premultiplies one sample (`rgba2rgbA` / `la2lA`): kept as is where alpha is 0 or 255, else
/// `CLIP8(255 * c / alpha)` with integer division.
#[inline(always)]
fn unpremultiply(c: u8, alpha: u8) -> u8 {
    if alpha == 0 || alpha == 255 {
        c
    } else {
        (255 * u32::from(c) / u32::from(alpha)).min(255) as u8
    }
}

/// Resizes `img` to `size x size` and converts it to RGB exactly like cn_clip's
/// `Resize((size, size), BICUBIC)` + `convert("RGB")`: `size * size * 3` bytes, row-major RGB.
pub(crate) fn resize_rgb8(img: &SourceImage, size: usize) -> Vec<u8> {
    resize_rgb8_to(img, size, size)
}

/// [`resize_rgb8`] to any output size (`out_w * out_h * 3` bytes).
pub(crate) fn resize_rgb8_to(img: &SourceImage, out_w: usize, out_h: usize) -> Vec<u8> {
    assert!(out_w > 0 && out_h > 0, "output size must be positive");
    let (w, h) = img.dims();
    // The whole image, except for a JPEG decoded at reduced scale whose partial edge blocks are
    // only partly part of the picture (`SourceImage::area`).
    let area = img.area();
    if (w, h) == (out_w, out_h) && img.reduction() == 1 {
        // `Image.resize` returns a copy when the size is already right: no premultiplication
        // round trip for LA/RGBA, just the conversion.
        return to_rgb(img);
    }
    // Only 8-bit L and RGB JPEGs are decoded at reduced scale; NEAREST and 16-bit resizing have no
    // use for a box.
    debug_assert!(img.reduction() == 1 || matches!(img.mode(), PixelMode::L | PixelMode::Rgb));
    let src = match img.pixels() {
        Pixels::U8(v) => v.as_slice(),
        Pixels::U16(v) => {
            let resized = bicubic_u16(v, w, h, out_w, out_h);
            // `I16_RGB`: values above 255 saturate (PIL clamps, it does not scale).
            return resized
                .iter()
                .flat_map(|&v| [v.min(255) as u8; 3])
                .collect();
        }
    };
    match img.mode() {
        PixelMode::Bilevel => grey_to_rgb(&nearest_u8::<1>(src, w, h, out_w, out_h)),
        PixelMode::Palette => nearest_u8::<3>(src, w, h, out_w, out_h),
        PixelMode::L => grey_to_rgb(&bicubic_u8::<1>(src, w, h, area, out_w, out_h)),
        PixelMode::Rgb => bicubic_u8::<3>(src, w, h, area, out_w, out_h),
        PixelMode::La => resize_la(src, w, h, area, out_w, out_h),
        PixelMode::Rgba => resize_rgba(src, w, h, area, out_w, out_h),
        PixelMode::Cmyk => bicubic_u8::<4>(src, w, h, area, out_w, out_h)
            .chunks_exact(4)
            .flat_map(cmyk_to_rgb)
            .collect(),
        PixelMode::I16 => unreachable!("I;16 images hold 16-bit samples"),
    }
}

/// `convert("RGB")` alone.
fn to_rgb(img: &SourceImage) -> Vec<u8> {
    let src = match img.pixels() {
        Pixels::U8(v) => v.as_slice(),
        Pixels::U16(v) => return v.iter().flat_map(|&v| [v.min(255) as u8; 3]).collect(),
    };
    match img.mode() {
        PixelMode::Bilevel | PixelMode::L => grey_to_rgb(src),
        PixelMode::Palette | PixelMode::Rgb => src.to_vec(),
        PixelMode::La => src.chunks_exact(2).flat_map(|p| [p[0]; 3]).collect(),
        PixelMode::Rgba => src
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        PixelMode::Cmyk => src.chunks_exact(4).flat_map(cmyk_to_rgb).collect(),
        PixelMode::I16 => unreachable!("I;16 images hold 16-bit samples"),
    }
}

fn grey_to_rgb(grey: &[u8]) -> Vec<u8> {
    grey.iter().flat_map(|&v| [v; 3]).collect()
}

/// `cmyk2rgb`: `CLIP8(nk - MULDIV255(c, nk))` with `nk = 255 - k`.
fn cmyk_to_rgb(p: &[u8]) -> [u8; 3] {
    let nk = 255 - p[3];
    [0, 1, 2].map(|i| nk - muldiv255(p[i], nk))
}

/// `LA`: `Image.resize` converts to `La` (`lA2la`, premultiplied), resizes both bands and converts
/// back (`la2lA`); `convert("RGB")` then drops alpha.
fn resize_la(
    src: &[u8],
    w: usize,
    h: usize,
    area: [f64; 4],
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    if src.chunks_exact(2).all(|p| p[1] == 255) {
        // Opaque: premultiplying is the identity, and the resized alpha stays 255 (the weights sum to
        // one), so un-premultiplying is the identity too. Resizing the grey band alone is exact.
        let grey: Vec<u8> = src.chunks_exact(2).map(|p| p[0]).collect();
        return grey_to_rgb(&bicubic_u8::<1>(&grey, w, h, area, out_w, out_h));
    }
    let premultiplied: Vec<u8> = src
        .chunks_exact(2)
        .flat_map(|p| [muldiv255(p[0], p[1]), p[1]])
        .collect();
    bicubic_u8::<2>(&premultiplied, w, h, area, out_w, out_h)
        .chunks_exact(2)
        .flat_map(|p| [unpremultiply(p[0], p[1]); 3])
        .collect()
}

/// `RGBA`: resized as `RGBa` (`rgbA2rgba`, premultiplied) and converted back (`rgba2rgbA`);
/// `convert("RGB")` then drops alpha.
fn resize_rgba(
    src: &[u8],
    w: usize,
    h: usize,
    area: [f64; 4],
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    if src.chunks_exact(4).all(|p| p[3] == 255) {
        // Opaque: see `resize_la`; the colour bands alone give the same bytes.
        let rgb: Vec<u8> = src
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        return bicubic_u8::<3>(&rgb, w, h, area, out_w, out_h);
    }
    let premultiplied: Vec<u8> = src
        .chunks_exact(4)
        .flat_map(|p| {
            let a = p[3];
            [
                muldiv255(p[0], a),
                muldiv255(p[1], a),
                muldiv255(p[2], a),
                a,
            ]
        })
        .collect();
    bicubic_u8::<4>(&premultiplied, w, h, area, out_w, out_h)
        .chunks_exact(4)
        .flat_map(|p| [0, 1, 2].map(|i| unpremultiply(p[i], p[3])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn muldiv255_is_rounded_division() {
        for a in 0..=255u32 {
            for b in 0..=255u32 {
                let exact = (a * b + 127) / 255;
                assert_eq!(u32::from(muldiv255(a as u8, b as u8)), exact, "{a}*{b}");
            }
        }
    }

    #[test]
    fn cmyk_conversion_matches_pil() {
        // PIL: Image.new("CMYK", (1, 1), (10, 200, 255, 30)).convert("RGB") == (216, 49, 0)
        assert_eq!(cmyk_to_rgb(&[10, 200, 255, 30]), [216, 49, 0]);
        assert_eq!(cmyk_to_rgb(&[0, 0, 0, 0]), [255, 255, 255]);
        assert_eq!(cmyk_to_rgb(&[0, 0, 0, 255]), [0, 0, 0]);
    }

    #[test]
    fn transparent_pixels_keep_their_premultiplied_value() {
        // Pillow's rgba2rgbA copies the samples where alpha is 0 instead of zeroing them.
        assert_eq!(unpremultiply(3, 0), 3);
        assert_eq!(unpremultiply(200, 100), 255);
        assert_eq!(unpremultiply(50, 100), 127);
    }
}
