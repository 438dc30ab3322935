//! What the JPEG headers decide before any pixel is decoded (truncation, four-channel colour), and
//! four-channel (CMYK, YCCK) JPEGs decoded to the samples PIL opens them with.
//!
//! The `image` crate converts a four-channel JPEG to RGB while decoding; PIL keeps it as `CMYK`, so
//! the resize runs on the four inks and the conversion to RGB comes after it. Here zune-jpeg (the
//! decoder behind `image`) is asked for the channels as stored, and libjpeg's colour handling plus
//! PIL's unpacking are applied to them, so the pixels reach the resampler in PIL's mode.

use std::path::Path;

use zune_jpeg::errors::DecodeErrors;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

use super::ImageError;

/// How libjpeg reads the channels of a four-component JPEG (`default_decompress_parms` in
/// libjpeg-turbo's `jdapimin.c`): straight CMYK without an Adobe `APP14` marker or with transform
/// 0, YCCK with any other transform (2, or an unknown value that libjpeg warns about and assumes
/// to be 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FourChannel {
    /// The channels are C, M, Y, K as stored.
    Cmyk,
    /// The channels are Y, Cb, Cr, K: libjpeg converts the first three to CMY (`ycck_cmyk_convert`).
    Ycck,
}

/// What the marker segments before the first scan say.
#[derive(Debug, Default)]
struct Headers {
    /// `Nf` of the first start-of-frame segment.
    components: Option<u8>,
    /// The transform byte of the last Adobe `APP14` segment (libjpeg keeps the last one it saw).
    adobe_transform: Option<u8>,
    /// Where the entropy-coded data of the first scan begins; `None` when the headers end first.
    scan_data: Option<usize>,
}

/// Walks the marker segments from SOI to the first SOS. Markers may be preceded by fill bytes
/// (`FF`); standalone markers (`TEM`, `RSTn`) have no length.
fn headers(bytes: &[u8]) -> Headers {
    let mut found = Headers::default();
    let mut pos = 2;
    loop {
        while bytes.get(pos) == Some(&0xFF) && bytes.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        let (Some(0xFF), Some(&marker)) = (bytes.get(pos), bytes.get(pos + 1)) else {
            return found;
        };
        if marker == 0xD9 {
            return found; // EOI before any scan
        }
        if marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            pos += 2;
            continue;
        }
        let Some(len) = bytes.get(pos + 2..pos + 4) else {
            return found;
        };
        let end = pos + 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
        let payload = bytes.get(pos + 4..end.max(pos + 4)).unwrap_or_default();
        match marker {
            // SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC): P, Y, X, then Nf.
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                found.components = found.components.or(payload.get(5).copied());
            }
            // `examine_app14` in libjpeg's `jdmarker.c`: "Adobe", version, flags0, flags1, transform.
            0xEE if payload.len() >= 12 && payload.starts_with(b"Adobe") => {
                found.adobe_transform = Some(payload[11]);
            }
            0xDA => {
                found.scan_data = (end <= bytes.len()).then_some(end);
                return found;
            }
            _ => {}
        }
        pos = end;
    }
}

/// Whether a JPEG has an end-of-image marker after the start of its first scan. The markers are
/// walked segment by segment from SOI (so an EXIF thumbnail's EOI inside APP1 does not count); the
/// entropy-coded data cannot contain `FF D9` (a data `FF` is always followed by `00` or `D0`-`D7`).
/// Data after EOI (e.g. the video of a motion photo) is allowed.
pub(crate) fn has_end(bytes: &[u8]) -> bool {
    // Searched from the end, where a complete file has it.
    headers(bytes)
        .scan_data
        .is_some_and(|start| bytes[start..].windows(2).rev().any(|w| w == [0xFF, 0xD9]))
}

/// `Some` for a JPEG whose frame has four components, which PIL opens as `CMYK`.
pub(crate) fn four_channel(bytes: &[u8]) -> Option<FourChannel> {
    let found = headers(bytes);
    (found.components == Some(4)).then_some(match found.adobe_transform {
        None | Some(0) => FourChannel::Cmyk,
        Some(_) => FourChannel::Ycck,
    })
}

/// Decodes a four-component JPEG to PIL's `CMYK` samples (`width * height * 4` bytes, 0 = no ink).
///
/// PIL asks libjpeg for `JCS_CMYK` (which turns YCCK into CMYK) and unpacks with the `CMYK;I` raw
/// mode, inverting every channel: Adobe's convention, which PIL assumes for every CMYK JPEG
/// (`JpegImagePlugin`: "assume adobe conventions"), as Photoshop and libjpeg's own encoder write them.
pub(crate) fn decode_cmyk(
    bytes: &[u8],
    path: &Path,
    kind: FourChannel,
    (width, height): (u32, u32),
) -> Result<Vec<u8>, ImageError> {
    // Unsupported coding schemes were already refused when the `image` crate read the header.
    let decode_err = |e: DecodeErrors| ImageError::Decode {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_owned(),
    };
    let options = DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(decode_err)?;
    // zune-jpeg copies the channels through untouched when the output colour space is the input's.
    let stored = match decoder.input_colorspace() {
        Some(space @ (ColorSpace::CMYK | ColorSpace::YCCK)) => space,
        _ => {
            // E.g. an Adobe marker saying YCbCr after the frame header: libjpeg reads YCCK,
            // zune-jpeg three-channel YCbCr, whose raw channels it cannot hand out.
            return Err(ImageError::Unsupported {
                path: path.to_path_buf(),
                message: "four-component jpeg that the decoder reads neither as cmyk nor as ycck"
                    .into(),
            });
        }
    };
    if decoder.dimensions() != Some((width as usize, height as usize)) {
        return Err(ImageError::Decode {
            path: path.to_path_buf(),
            message: "the frame size differs between two reads of the header".into(),
        });
    }
    decoder.set_options(options.jpeg_set_out_colorspace(stored));
    let mut samples = vec![0u8; width as usize * height as usize * 4];
    decoder.decode_into(&mut samples).map_err(decode_err)?;
    match kind {
        FourChannel::Cmyk => samples.iter_mut().for_each(|v| *v = 255 - *v),
        FourChannel::Ycck => samples
            .chunks_exact_mut(4)
            .for_each(|p| p.copy_from_slice(&ycck_to_pil_cmyk(p))),
    }
    Ok(samples)
}

/// `FIX(x)` of libjpeg's `jdcolor.c`: `x` scaled by 2^16 and rounded (`SCALEBITS` = 16).
const ONE_HALF: i32 = 1 << 15;
const FIX_1_40200: i32 = 91_881;
const FIX_1_77200: i32 = 116_130;
const FIX_0_71414: i32 = 46_802;
const FIX_0_34414: i32 = 22_554;

/// libjpeg's `ycck_cmyk_convert` followed by PIL's `CMYK;I` inversion. libjpeg stores
/// `255 - R` (range-limited) as C, and so on, and passes K through; inverting gives back the
/// clamped R, G, B of `ycc_rgb_convert` and `255 - K`.
fn ycck_to_pil_cmyk(p: &[u8]) -> [u8; 4] {
    let [r, g, b] = ycc_to_rgb(p[0], p[1], p[2]);
    [r, g, b, 255 - p[3]]
}

/// libjpeg's `ycc_rgb_convert` for one pixel, clamped to 0..=255. The rounding is that of
/// libjpeg's tables (`build_ycc_rgb_table`): nearest for R and B, and `ONE_HALF` added before the
/// shift for G.
pub(crate) fn ycc_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let y = i32::from(y);
    let cb = i32::from(cb) - 128;
    let cr = i32::from(cr) - 128;
    let r = y + ((FIX_1_40200 * cr + ONE_HALF) >> 16);
    let g = y + ((-FIX_0_34414 * cb + ONE_HALF - FIX_0_71414 * cr) >> 16);
    let b = y + ((FIX_1_77200 * cb + ONE_HALF) >> 16);
    [r, g, b].map(|v| v.clamp(0, 255) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_constants_are_libjpegs() {
        for (fixed, x) in [
            (FIX_1_40200, 1.402),
            (FIX_1_77200, 1.772),
            (FIX_0_71414, 0.71414),
            (FIX_0_34414, 0.34414),
        ] {
            assert_eq!(fixed, (x * 65536.0 + 0.5) as i32, "FIX({x})");
        }
    }

    #[test]
    fn ycck_conversion_matches_libjpeg() {
        // Grey (no chroma) keeps Y in all three inverted inks; K is inverted.
        assert_eq!(ycck_to_pil_cmyk(&[77, 128, 128, 200]), [77, 77, 77, 55]);
        // Out-of-gamut values are clamped, as libjpeg's `range_limit` table does: R = 255 + 178,
        // G = 255 - 47, B = 255 - 227. Parity with libjpeg on whole images: the `jpeg_ycck` fixture.
        assert_eq!(ycck_to_pil_cmyk(&[255, 0, 255, 0]), [255, 208, 28, 255]);
    }

    #[test]
    fn four_channel_kind_follows_the_adobe_transform() {
        // SOI, APP14 "Adobe" with transform `t`, SOF0 with `nf` components, SOS.
        let jpeg = |transform: Option<u8>, nf: u8| {
            let mut b = vec![0xFF, 0xD8];
            if let Some(t) = transform {
                b.extend([0xFF, 0xEE, 0, 14]);
                b.extend(b"Adobe\x00\x64\x00\x00\x00\x00");
                b.push(t);
            }
            b.extend([0xFF, 0xC0, 0, 8 + 3 * nf, 8, 0, 16, 0, 16, nf]);
            b.extend((0..nf).flat_map(|i| [i + 1, 0x11, 0]));
            b.extend([0xFF, 0xDA, 0, 2]);
            b
        };
        assert_eq!(four_channel(&jpeg(None, 4)), Some(FourChannel::Cmyk));
        assert_eq!(four_channel(&jpeg(Some(0), 4)), Some(FourChannel::Cmyk));
        assert_eq!(four_channel(&jpeg(Some(2), 4)), Some(FourChannel::Ycck));
        assert_eq!(four_channel(&jpeg(Some(1), 4)), Some(FourChannel::Ycck));
        assert_eq!(four_channel(&jpeg(Some(1), 3)), None);
        assert_eq!(four_channel(&jpeg(None, 1)), None);
    }
}
