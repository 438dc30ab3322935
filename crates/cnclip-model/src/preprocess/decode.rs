//! Decoding with the `image` crate into a [`SourceImage`] in the mode PIL would open the file in.
//!
//! The `image` crate expands palettes and low bit depths and turns transparency chunks into an alpha
//! channel; PIL keeps palette images as `P` (resized with NEAREST), keeps `tRNS` as metadata (the
//! pixels stay `L`/`RGB`), opens 16-bit greyscale PNGs as `I;16` and 16-bit colour PNGs as 8-bit
//! (most significant byte). The headers that decide PIL's mode are read here directly (PNG `IHDR`,
//! GIF and BMP palettes) so that the pixels can be put back in that mode.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use image::{ColorType, ImageDecoder, ImageFormat, ImageReader, Limits};

use super::source::{PixelMode, SourceImage};
use super::{jpeg, scaled};
use super::{ImageError, JpegDecode, PreprocessOptions};

/// Decodes `bytes` (named `path` in errors), checking the pixel limit from the header first.
///
/// The decoders (the `image` crate's, zune-jpeg, jpeg-decoder, the EXIF reader, and ours) run on
/// untrusted bytes; a panic in one, a bug that some hostile file finds, becomes that file's
/// [`ImageError::Decode`] instead of taking the caller down.
pub(crate) fn decode(
    bytes: &[u8],
    path: &Path,
    opts: &PreprocessOptions,
) -> Result<SourceImage, ImageError> {
    guarded(path, || decode_unguarded(bytes, path, opts))
}

/// `run()`, with a panic turned into [`ImageError::Decode`] for `path`.
fn guarded(
    path: &Path,
    run: impl FnOnce() -> Result<SourceImage, ImageError>,
) -> Result<SourceImage, ImageError> {
    catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("no message");
        Err(ImageError::Decode {
            path: path.to_path_buf(),
            message: format!("the decoder crashed ({what})"),
        })
    })
}

fn decode_unguarded(
    bytes: &[u8],
    path: &Path,
    opts: &PreprocessOptions,
) -> Result<SourceImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty {
            path: path.to_path_buf(),
        });
    }
    let format = image::guess_format(bytes).map_err(|_| ImageError::UnknownFormat {
        path: path.to_path_buf(),
    })?;
    let decode_err = |e: image::ImageError| match e {
        image::ImageError::Unsupported(e) => ImageError::Unsupported {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_owned(),
        },
        e => ImageError::Decode {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_owned(),
        },
    };

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::no_limits();
    // The pixel limit is checked below from the header; this only keeps the decoders' own
    // allocations proportionate to it (8 bytes: 16-bit RGBA, the widest layout decoded here).
    let max_alloc = opts.max_pixels.saturating_mul(8).saturating_add(1 << 26);
    limits.max_alloc = Some(max_alloc);
    reader.limits(limits);
    // Building the decoder reads headers only (the JPEG decoder copies the compressed bytes).
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > opts.max_pixels {
        return Err(ImageError::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
            limit: opts.max_pixels,
        });
    }
    if pixels == 0 {
        return Err(ImageError::Decode {
            path: path.to_path_buf(),
            message: format!("image has no pixels ({width}x{height})"),
        });
    }
    let orientation = if opts.exif_orientation {
        // An unreadable EXIF block is not a reason to refuse the pixels: keep them as stored.
        decoder.orientation().map(|o| o.to_exif()).unwrap_or(1)
    } else {
        1
    };
    if format == ImageFormat::Jpeg && !jpeg::has_end(bytes) {
        // zune-jpeg (lenient) fills the missing blocks of a truncated file with grey; PIL raises
        // "image file is truncated". A half-grey photo is worse than an error.
        return Err(ImageError::Decode {
            path: path.to_path_buf(),
            message: "truncated jpeg: no end-of-image marker after the scan data".into(),
        });
    }
    if let Some(kind) = (format == ImageFormat::Jpeg)
        .then(|| jpeg::four_channel(bytes))
        .flatten()
    {
        // PIL keeps these as CMYK until after the resize; the `image` crate would give RGB.
        drop(decoder);
        let data = jpeg::decode_cmyk(bytes, path, kind, (width, height))?;
        let img = SourceImage::from_u8(width, height, PixelMode::Cmyk, data)
            .expect("decode_cmyk returns width * height * 4 samples");
        return Ok(img.apply_exif_orientation(orientation));
    }
    if format == ImageFormat::Jpeg && opts.jpeg_decode == JpegDecode::Scaled {
        let reduction = scaled::reduction(width, height, opts.size);
        let max_alloc = usize::try_from(max_alloc).unwrap_or(usize::MAX);
        if let Some(img) = (reduction > 1)
            .then(|| scaled::decode(bytes, reduction, (width, height), max_alloc))
            .flatten()
        {
            return Ok(img.apply_exif_orientation(orientation));
        }
    }
    let color = decoder.color_type();
    let mode = pil_mode(format, bytes, color).ok_or_else(|| ImageError::Unsupported {
        path: path.to_path_buf(),
        message: format!("{} pixels are not supported", color_name(color)),
    })?;
    let total = usize::try_from(decoder.total_bytes()).map_err(|_| ImageError::TooLarge {
        path: path.to_path_buf(),
        width,
        height,
        limit: opts.max_pixels,
    })?;
    let mut buf = vec![0u8; total];
    decoder.read_image(&mut buf).map_err(decode_err)?;
    let img =
        into_mode(buf, color, mode, width, height).ok_or_else(|| ImageError::Unsupported {
            path: path.to_path_buf(),
            message: format!(
                "cannot convert {} pixels to mode {}",
                color_name(color),
                mode.pil_name()
            ),
        })?;
    Ok(img.apply_exif_orientation(orientation))
}

/// A readable name of a decoded pixel layout, for error messages.
fn color_name(color: ColorType) -> &'static str {
    match color {
        ColorType::L8 => "8-bit grey",
        ColorType::La8 => "8-bit grey+alpha",
        ColorType::Rgb8 => "8-bit rgb",
        ColorType::Rgba8 => "8-bit rgba",
        ColorType::L16 => "16-bit grey",
        ColorType::La16 => "16-bit grey+alpha",
        ColorType::Rgb16 => "16-bit rgb",
        ColorType::Rgba16 => "16-bit rgba",
        ColorType::Rgb32F => "32-bit float rgb",
        ColorType::Rgba32F => "32-bit float rgba",
        _ => "unknown",
    }
}

/// The mode PIL opens the file in, from the format's header where the decoded color type does not
/// tell (palettes, `tRNS`, 16-bit greyscale), else from the decoded color type.
fn pil_mode(format: ImageFormat, bytes: &[u8], color: ColorType) -> Option<PixelMode> {
    let sniffed = match format {
        ImageFormat::Png => png_mode(bytes),
        ImageFormat::Gif => gif_mode(bytes),
        ImageFormat::Bmp => bmp_palette_mode(bytes),
        _ => None,
    };
    sniffed.or(match color {
        ColorType::L8 => Some(PixelMode::L),
        ColorType::La8 | ColorType::La16 => Some(PixelMode::La),
        ColorType::Rgb8 | ColorType::Rgb16 => Some(PixelMode::Rgb),
        ColorType::Rgba8 | ColorType::Rgba16 => Some(PixelMode::Rgba),
        ColorType::L16 => Some(PixelMode::I16),
        _ => None,
    })
}

/// PIL's mode of a PNG from `IHDR` (`PngImagePlugin._MODES`): bit depth at byte 24, colour type at 25.
fn png_mode(bytes: &[u8]) -> Option<PixelMode> {
    if bytes.get(12..16)? != b"IHDR" {
        return None;
    }
    let (depth, color_type) = (*bytes.get(24)?, *bytes.get(25)?);
    Some(match (color_type, depth) {
        (0, 1) => PixelMode::Bilevel,
        (0, 16) => PixelMode::I16,
        (0, _) => PixelMode::L,
        (2, _) => PixelMode::Rgb,
        (3, _) => PixelMode::Palette,
        // PIL opens 16-bit grey+alpha as RGBA with the grey replicated; resized premultiplied, each
        // colour band then equals the LA result.
        (4, _) => PixelMode::La,
        (6, _) => PixelMode::Rgba,
        _ => return None,
    })
}

/// `GifImagePlugin._is_palette_needed`: a palette whose entry `i` is `(i, i, i)` for every `i` is
/// dropped, and the image is opened as `L`.
fn palette_needed(p: &[u8]) -> bool {
    p.chunks(3)
        .enumerate()
        .any(|(i, c)| c.len() < 3 || !(c[0] as usize == i && c[0] == c[1] && c[1] == c[2]))
}

/// PIL opens the first frame of a GIF as `P`, or as `L` when its palette (the local one if the frame
/// has one, else the global one) is absent or the identity grey ramp.
fn gif_mode(bytes: &[u8]) -> Option<PixelMode> {
    if bytes.get(..3)? != b"GIF" {
        return None;
    }
    let flags = *bytes.get(10)?;
    let mut pos = 13;
    let mut global_needed = false;
    if flags & 0x80 != 0 {
        let len = 3usize << ((flags & 7) + 1);
        global_needed = palette_needed(bytes.get(pos..pos + len)?);
        pos += len;
    }
    // Walk the blocks up to the first image descriptor.
    loop {
        match *bytes.get(pos)? {
            0x21 => {
                pos += 2;
                loop {
                    let n = *bytes.get(pos)? as usize;
                    pos += 1 + n;
                    if n == 0 {
                        break;
                    }
                }
            }
            0x2C => {
                let local_flags = *bytes.get(pos + 9)?;
                let needed = if local_flags & 0x80 != 0 {
                    let len = 3usize << ((local_flags & 7) + 1);
                    let start = pos + 10;
                    palette_needed(bytes.get(start..start + len)?)
                } else {
                    global_needed
                };
                return Some(if needed {
                    PixelMode::Palette
                } else {
                    PixelMode::L
                });
            }
            _ => return None,
        }
    }
}

/// PIL's mode of a BMP with a palette (`BmpImagePlugin`): `P`, unless the palette is the identity
/// grey ramp (`(0, 255)` for two colours), which gives `1` (up to two colours) or `L`.
fn bmp_palette_mode(bytes: &[u8]) -> Option<PixelMode> {
    let u16_at = |i: usize| Some(u16::from_le_bytes(bytes.get(i..i + 2)?.try_into().ok()?));
    let u32_at = |i: usize| Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?));
    let header = u32_at(14)? as usize;
    let (bits, colors, padding) = if header == 12 {
        (u16_at(24)?, 0, 3)
    } else {
        (u16_at(28)?, u32_at(46)?, 4)
    };
    if !matches!(bits, 1 | 4 | 8) {
        return None;
    }
    let colors = if colors == 0 {
        1usize << bits
    } else {
        colors as usize
    };
    let palette = bytes.get(14 + header..14 + header + padding * colors)?;
    let grey = (0..colors).all(|i| {
        let v = if colors == 2 { [0u8, 255][i] } else { i as u8 };
        palette[i * padding..i * padding + 3] == [v, v, v] && (colors == 2 || i < 256)
    });
    Some(match (grey, colors <= 2) {
        (true, true) => PixelMode::Bilevel,
        (true, false) => PixelMode::L,
        (false, _) => PixelMode::Palette,
    })
}

/// Re-lays decoded samples out in `mode`: drops an alpha channel PIL would not have (from `tRNS`),
/// keeps the most significant byte of 16-bit colour (PIL's `RGB;16B` unpackers), keeps 16-bit grey.
fn into_mode(
    buf: Vec<u8>,
    color: ColorType,
    mode: PixelMode,
    width: u32,
    height: u32,
) -> Option<SourceImage> {
    let (src_ch, wide) = match color {
        ColorType::L8 => (1, false),
        ColorType::La8 => (2, false),
        ColorType::Rgb8 => (3, false),
        ColorType::Rgba8 => (4, false),
        ColorType::L16 => (1, true),
        ColorType::La16 => (2, true),
        ColorType::Rgb16 => (3, true),
        ColorType::Rgba16 => (4, true),
        _ => return None,
    };
    if mode == PixelMode::I16 {
        if !wide || src_ch > 2 {
            return None;
        }
        let samples = buf
            .chunks_exact(2 * src_ch)
            .map(|p| u16::from_ne_bytes([p[0], p[1]]))
            .collect();
        return SourceImage::from_i16(width, height, samples);
    }
    // Which decoded channel feeds each channel of `mode`.
    let pick: &[usize] = match (mode.channels(), src_ch) {
        (1, _) => &[0],
        (2, 2) | (2, 4) => &[0, src_ch - 1],
        (3, 1) | (3, 2) => &[0, 0, 0],
        (3, _) => &[0, 1, 2],
        (4, 4) => &[0, 1, 2, 3],
        _ => return None,
    };
    let identity = !wide && pick.len() == src_ch && pick.iter().enumerate().all(|(i, &c)| i == c);
    let data = if identity {
        buf
    } else if wide {
        buf.chunks_exact(2 * src_ch)
            .flat_map(|p| {
                pick.iter()
                    .map(move |&c| u16::from_ne_bytes([p[2 * c], p[2 * c + 1]]) >> 8)
            })
            .map(|v| v as u8)
            .collect()
    } else {
        buf.chunks_exact(src_ch)
            .flat_map(|p| pick.iter().map(move |&c| p[c]))
            .collect()
    };
    SourceImage::from_u8(width, height, mode, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_while_decoding_is_the_files_error() {
        let path = Path::new("hostile.png");
        let err = guarded(path, || panic!("index out of bounds")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "hostile.png: cannot decode image: the decoder crashed (index out of bounds)"
        );
        let n = 7;
        let err = guarded(path, || panic!("attempt to shift left by {n}")).unwrap_err();
        assert!(
            err.to_string().ends_with("(attempt to shift left by 7)"),
            "{err}"
        );
        // Results go through untouched.
        let fine = guarded(path, || Err(ImageError::Empty { path: path.into() })).unwrap_err();
        assert!(matches!(fine, ImageError::Empty { .. }));
    }

    #[test]
    fn grey_ramp_palettes_are_not_needed() {
        let ramp: Vec<u8> = (0..=255u8).flat_map(|i| [i, i, i]).collect();
        assert!(!palette_needed(&ramp));
        let mut other = ramp.clone();
        other[3 * 7 + 1] = 0;
        assert!(palette_needed(&other));
    }
}
