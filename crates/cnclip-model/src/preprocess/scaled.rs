//! JPEGs decoded at 1/2 or 1/4 of their size in the DCT domain ([`JpegDecode::Scaled`]), for photos
//! much larger than the model's input.
//!
//! libjpeg can run a reduced inverse DCT on each 8x8 block (`scale_denom` 2, 4, 8: 4x4, 2x2 or 1x1
//! samples out of the block's low frequencies), which is what PIL's `Image.draft()` asks it for. The
//! entropy decoding still reads every coefficient, but the IDCT, the chroma upsampling, the colour
//! conversion and the resize that follows work on 4 or 16 times fewer pixels. zune-jpeg (the exact
//! path, behind the `image` crate) has no such mode. JPEGs of the usual layouts, baseline or
//! progressive, go to [`super::reduced`], which does not even keep the coefficients the reduced
//! IDCT does not read (half the time of the alternative at 1/4, 0.6 of it for progressive ones);
//! everything else to the `jpeg-decoder` crate (image-rs), whose samples `reduced` reproduces
//! before the colour conversion.
//! The reduced image is then resized with the same PIL-replica bicubic as every other image, over the
//! area the full picture covers (`SourceImage::area`: a partial 8-pixel block at the right or bottom
//! edge gives a whole reduced pixel).
//!
//! Only what both decoders read the same way in kind is decoded here: 8-bit greyscale and three-
//! channel JPEGs, with the colour transform (YCbCr or RGB) the exact path uses. Everything else
//! (four-channel CMYK/YCCK, lossless, 12-bit, arithmetic coding, anything jpeg-decoder refuses or
//! fails on) goes to the exact path, which gives its own result or error: reduced decoding changes
//! the pixels a little, never whether a file can be read.
//!
//! [`JpegDecode::Scaled`]: super::JpegDecode::Scaled

use std::panic::{catch_unwind, AssertUnwindSafe};

use jpeg_decoder::ColorTransform;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

use super::reduced;
use super::source::{PixelMode, SourceImage};

/// The reduced image keeps at least `MIN_RATIO` times the output side `S` along both axes.
///
/// The differences from the exact path grow as the bicubic resize has fewer reduced pixels to
/// average per output pixel. Measured at S = 224 on 4:2:0 photo-like JPEGs with fine saturated
/// detail (`tools/gen_test_photos.py`, `examples/decode_fidelity.rs`), mean / max |Δ| of the resized
/// 8-bit pixels at the smallest ratio each threshold admits: 1.8-3.0 / 38 levels at a ratio of 2,
/// 0.8-1.2 / 18 at 3, 0.5-0.6 / 15 at 3.35 (a 12-MP photo at 1/4). ViT-B-16 embeddings keep a
/// cosine above 0.99994 in all of these, but at 3 the pixels stay within about a level on average,
/// and a 12-MP photo at S = 224 is still decoded at 1/4, where nearly all the time is saved. (The
/// chroma of 4:2:0 JPEGs, decoded here at half the luma's scale and upsampled, makes most of the
/// difference: greyscale photos differ by 0.16 levels on average at 3.35.)
pub(crate) const MIN_RATIO: u64 = 3;

/// The largest reduction used. jpeg-decoder's 1/8 IDCT (`dequantize_and_idct_block_1x1` in 0.3.2)
/// truncates the DC value instead of rounding it, as libjpeg's `jpeg_idct_1x1` does: half a level
/// darker luma and chroma, measured as -1.3 / +0.2 / -1.5 levels on R / G / B after the resize
/// (mean |Δ| 1.3 vs 0.3 at 1/4 on 24-MP photos), for 12% less time than 1/4.
const MAX_REDUCTION: u32 = 4;

/// The reduction (4, 2, or 1 for none) for a `width x height` JPEG resized to `size x size`: the
/// largest up to [`MAX_REDUCTION`] that keeps both reduced sides at least [`MIN_RATIO`] `* size`.
/// libjpeg rounds reduced sizes up (`jdiv_round_up`), hence `div_ceil`. The output is square, so an
/// EXIF orientation that swaps the axes does not change the choice.
pub(crate) fn reduction(width: u32, height: u32, size: usize) -> u32 {
    if size == 0 {
        return 1;
    }
    let min_side = MIN_RATIO.saturating_mul(size as u64);
    [MAX_REDUCTION, 2]
        .into_iter()
        .find(|&r| {
            u64::from(width.div_ceil(r)) >= min_side && u64::from(height.div_ceil(r)) >= min_side
        })
        .unwrap_or(1)
}

/// Decodes a `width x height` JPEG at `1 / reduction` scale (`reduction` 2 or 4). `None` when the
/// exact path should decode it instead: a kind of JPEG not decoded here, or any failure (the exact
/// path then reports it as it always does). `max_alloc` bounds the decoder's buffers.
pub(crate) fn decode(
    bytes: &[u8],
    reduction: u32,
    (width, height): (u32, u32),
    max_alloc: usize,
) -> Option<SourceImage> {
    let (mode, transform) = colour(bytes)?;
    let size = (width.div_ceil(reduction), height.div_ceil(reduction));
    let colour = match transform {
        ColorTransform::Grayscale => reduced::Colour::Grey,
        ColorTransform::RGB => reduced::Colour::Rgb,
        _ => reduced::Colour::YCbCr,
    };
    if let Some((w, h, pixels)) = reduced::decode(bytes, colour, reduction as usize, max_alloc) {
        if (w, h) == size {
            return SourceImage::from_u8(w, h, mode, pixels)?
                .reduced_from(width, height, reduction);
        }
    }
    let run = || {
        let mut decoder = jpeg_decoder::Decoder::new(bytes);
        decoder.set_max_decoding_buffer_size(max_alloc);
        decoder.set_color_transform(transform);
        let request = (u16::try_from(size.0).ok()?, u16::try_from(size.1).ok()?);
        // jpeg-decoder picks the smallest of 1/8..8/8 that reaches the request (in either axis); the
        // request is exactly the size at the chosen reduction, so that is the reduction itself.
        if decoder.scale(request.0, request.1).ok()? != request {
            return None;
        }
        decoder.decode().ok()
    };
    // A panic in the decoder (a bug on some hostile file) must not take the caller down: the exact
    // path then decides about the file.
    let pixels = catch_unwind(AssertUnwindSafe(run)).ok()??;
    SourceImage::from_u8(size.0, size.1, mode, pixels)?.reduced_from(width, height, reduction)
}

/// The mode and colour transform the exact path decodes a JPEG with, from zune-jpeg's own reading of
/// the headers; `None` for what is not decoded at reduced scale.
///
/// zune-jpeg 0.5.15 settles the colour space of three components in two places: the headers
/// (`parse_app14`: Adobe transform 0 = "CMYK", 1 = YCbCr, 2 = YCCK; component ids `R`, `G`, `B` = RGB
/// at the start of the scan; YCbCr otherwise) and, when decoding starts, `setup_component_params`,
/// which turns "CMYK" with three components into RGB and YCCK into YCbCr. jpeg-decoder would decide
/// differently for some files (it lets a JFIF marker win over Adobe's transform 0), so it is told.
fn colour(bytes: &[u8]) -> Option<(PixelMode, ColorTransform)> {
    let options = DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let mut headers = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    headers.decode_headers().ok()?;
    let info = headers.info()?;
    if info.sof.is_lossless() {
        return None; // no DCT to reduce
    }
    match (info.components, headers.input_colorspace()?) {
        (1, ColorSpace::Luma) => Some((PixelMode::L, ColorTransform::Grayscale)),
        (3, ColorSpace::YCbCr | ColorSpace::YCCK) => Some((PixelMode::Rgb, ColorTransform::YCbCr)),
        (3, ColorSpace::RGB | ColorSpace::CMYK) => Some((PixelMode::Rgb, ColorTransform::RGB)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduction_keeps_three_times_the_output_side() {
        // 4000x3000 at 224: 1/4 gives 1000x750 (750 >= 672); 1/8 is never used.
        assert_eq!(reduction(4000, 3000, 224), 4);
        assert_eq!(reduction(3000, 4000, 224), 4);
        assert_eq!(reduction(8000, 6000, 224), 4);
        // At 336 the same photo needs 1008 pixels: 1/2 (2000x1500).
        assert_eq!(reduction(4000, 3000, 336), 2);
        // 1344 / 2 = 672 exactly; one pixel less is not enough; rounding up counts.
        assert_eq!(reduction(1344, 1344, 224), 2);
        assert_eq!(reduction(1342, 2000, 224), 1);
        assert_eq!(reduction(1343, 1343, 224), 2);
        assert_eq!(reduction(2685, 2685, 224), 4);
        assert_eq!(reduction(2684, 9000, 224), 2);
        assert_eq!(reduction(640, 480, 224), 1);
        assert_eq!(reduction(u32::MAX, u32::MAX, 0), 1);
    }
}
