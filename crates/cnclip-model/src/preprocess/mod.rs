//! cn_clip's `image_transform(S)`, reproduced exactly.
//!
//! cn_clip (`clip/utils.py`) preprocesses with torchvision:
//! `Resize((S, S), BICUBIC)` on the image as PIL opened it (aspect ratio squashed, no centre crop),
//! `convert("RGB")`, `ToTensor()` (÷255) and `Normalize(CLIP_MEAN, CLIP_STD)`. The resize is PIL's
//! fixed-point bicubic, done in the image's own mode, and this module replicates it operation for
//! operation (Pillow 13.0's `Resample.c`): on lossless inputs the 8-bit RGB it produces is identical to
//! PIL's, byte for byte, for `RGB`, `RGBA`, `L`, `LA`, `P`, `1`, `CMYK` and `I;16` images.
//!
//! Decoding uses the `image` crate. Lossless formats (PNG of every colour type and depth, GIF, BMP,
//! lossless WebP, TIFF) decode to PIL's pixels in PIL's mode, so the end result is identical. JPEG
//! decoders differ slightly (zune-jpeg vs PIL's libjpeg-turbo): after the resize, at most 1–3 levels
//! on a few percent of the samples. Four-channel (CMYK and YCCK) JPEGs are decoded to their inks and
//! stay `CMYK` until after the resize, as in PIL; where their channels are subsampled, zune-jpeg's
//! upsampling rounds differently from libjpeg-turbo's (up to 2–3 levels, a fifth of a level on average).
//! Two deliberate differences from cn_clip, both options:
//! EXIF orientation is applied by default (cn_clip ignores it, so a portrait photo from a phone is
//! embedded lying on its side), and images above [`DEFAULT_MAX_PIXELS`] are refused before decoding.
//! A third is opt-in: [`JpegDecode::Scaled`] decodes large JPEGs at reduced scale in the DCT domain,
//! about 3.5 times as fast on 12-MP photos, for pixels that differ by about half a level on average.
//!
//! Files are untrusted: a damaged or hostile one gives an [`ImageError`], never a panic (should a
//! decoder panic all the same, that becomes the file's [`ImageError::Decode`]); the
//! `damaged_files` test sends thousands of damaged copies of every fixture through all of it.
//!
//! ```no_run
//! use cnclip_model::preprocess::{preprocess_path, PreprocessOptions};
//!
//! let opts = PreprocessOptions { size: 224, ..PreprocessOptions::default() };
//! let chw = preprocess_path("photo.jpg".as_ref(), &opts)?; // 3 * 224 * 224 floats, CHW
//! assert_eq!(chw.len(), 3 * 224 * 224);
//! # Ok::<(), cnclip_model::preprocess::ImageError>(())
//! ```

mod convert;
mod decode;
mod jpeg;
mod progressive;
mod reduced;
mod resample;
mod scaled;
mod source;

use std::path::{Path, PathBuf};

pub use source::{PixelMode, SourceImage};

/// Per-channel mean of `Normalize` in cn_clip's `image_transform` (OpenAI CLIP's values).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// Per-channel standard deviation of `Normalize` in cn_clip's `image_transform`.
// The literals are cn_clip's as written; like `torch.as_tensor(std, dtype=float32)`, Rust rounds them
// to the nearest f32.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// PIL's decompression-bomb threshold: `Image.open` raises `DecompressionBombError` above
/// `2 * MAX_IMAGE_PIXELS`, where `MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3 = 89_478_485`.
pub const DEFAULT_MAX_PIXELS: u64 = 2 * (1024 * 1024 * 1024 / 4 / 3);

/// How images are loaded and preprocessed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreprocessOptions {
    /// Output side `S`: images are resized to `S x S` (224 for most models, 336 for ViT-L-14-336).
    pub size: usize,
    /// Apply the EXIF orientation (1–8) before resizing, so the model sees the photo upright as a
    /// person does (`PIL.ImageOps.exif_transpose`). cn_clip itself does not: set `false` for its exact
    /// behaviour.
    pub exif_orientation: bool,
    /// Largest `width * height` accepted, checked from the header before any pixel is decoded.
    pub max_pixels: u64,
    /// How JPEGs are decoded: at full size like cn_clip ([`JpegDecode::Exact`], the default), or at
    /// a reduced scale when they are much larger than `size` ([`JpegDecode::Scaled`], faster).
    pub jpeg_decode: JpegDecode,
}

impl Default for PreprocessOptions {
    /// 224 pixels, EXIF orientation applied, PIL's bomb limit ([`DEFAULT_MAX_PIXELS`]), JPEGs
    /// decoded at full size ([`JpegDecode::Exact`]).
    fn default() -> Self {
        PreprocessOptions {
            size: 224,
            exif_orientation: true,
            max_pixels: DEFAULT_MAX_PIXELS,
            jpeg_decode: JpegDecode::Exact,
        }
    }
}

/// How JPEG files are decoded ([`PreprocessOptions::jpeg_decode`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JpegDecode {
    /// Every pixel at full resolution, then resized: cn_clip's own pipeline (PIL opens the whole
    /// image), so the embeddings are as close to cn_clip's as a JPEG decoder allows.
    #[default]
    Exact,
    /// What PIL's `Image.draft()` does, for speed: a JPEG at least 6 times the output side `S` in
    /// both dimensions is decoded at 1/2 or 1/4 of its size by a reduced inverse DCT (each 8x8 block
    /// gives 4x4 or 2x2 pixels), the smaller scale whenever both sides stay at least `3 * S`, then
    /// resized to `S x S` with the same bicubic, over exactly the area of the full picture.
    ///
    /// Measured on 12-MP photo-like JPEGs (4000x3000, quality 90, 4:2:0) at `S` = 224, decoded at
    /// 1/4: 3.5x faster (24 vs 84 ms per photo for decode + resize on the build machine; baseline
    /// JPEGs go through a decoder that skips the coefficients the reduced IDCT does not read;
    /// progressive ones through one that keeps only those across the scans, 2.1x, as their
    /// refinement scans dominate; 1.8x at `S` = 336, decoded at 1/2, worst ViT-L-14-336 cosine
    /// 0.999992); the resized pixels
    /// differ from [`JpegDecode::Exact`]'s by 0.56 levels on average and 15 at most (more on sharp
    /// colour edges of 4:2:0 JPEGs, whose chroma is decoded at half the luma's resolution), and
    /// ViT-B-16 image embeddings keep a cosine of at least 0.999998 with the exact ones. See
    /// `examples/decode_fidelity.rs`.
    ///
    /// Smaller JPEGs, four-channel (CMYK, YCCK), lossless and 12-bit JPEGs, anything the reduced
    /// decoder cannot read, and other formats are decoded exactly as with [`JpegDecode::Exact`], so
    /// a file fails or succeeds the same way in both modes, and the pixel limit is still checked
    /// from the header before decoding. [`load_image`] returns the reduced image (see
    /// [`SourceImage::reduction`]); [`resize_rgb8`] of it covers the same area as of the full one.
    Scaled,
}

/// Why an image could not be loaded. Every variant names the file first.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The file could not be read.
    #[error("{}: cannot read file: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The file is empty.
    #[error("{}: cannot decode image: file is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The content is not an image format that can be decoded (JPEG, PNG, WebP, GIF, TIFF, BMP).
    #[error("{}: cannot decode image: unrecognized image format", path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// The header declares more pixels than [`PreprocessOptions::max_pixels`] allows.
    #[error(
        "{}: image is {width}x{height}, more than the limit of {limit} pixels (decompression-bomb guard)",
        path.display()
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The limit in force.
        limit: u64,
    },
    /// The data is corrupt or truncated.
    #[error("{}: cannot decode image: {message}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// The decoder's explanation.
        message: String,
    },
    /// [`PreprocessOptions::size`] is 0.
    #[error("{}: cannot resize to 0x0 pixels: the output size must be positive", path.display())]
    ZeroSize {
        /// The file.
        path: PathBuf,
    },
    /// A recognised format with a feature the decoder does not support.
    #[error("{}: unsupported image: {message}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported.
        message: String,
    },
}

/// Reads and decodes an image file, applying EXIF orientation if asked. The pixels keep the mode PIL
/// would have opened the file in (see [`PixelMode`]). With [`JpegDecode::Scaled`], a JPEG much
/// larger than `opts.size` comes back at reduced scale ([`SourceImage::reduction`]).
pub fn load_image(path: &Path, opts: &PreprocessOptions) -> Result<SourceImage, ImageError> {
    let io_err = |error| ImageError::Io {
        path: path.to_path_buf(),
        error,
    };
    let len = std::fs::metadata(path).map_err(io_err)?.len();
    // No supported format needs more than 8 bytes per pixel (uncompressed 16-bit RGBA) plus headers;
    // a larger file is not read into memory.
    let max_len = opts.max_pixels.saturating_mul(8).saturating_add(1 << 26);
    if len > max_len {
        return Err(ImageError::Decode {
            path: path.to_path_buf(),
            message: format!(
                "file is {len} bytes, more than an image within the pixel limit needs"
            ),
        });
    }
    let bytes = std::fs::read(path).map_err(io_err)?;
    decode::decode(&bytes, path, opts)
}

/// [`load_image`] on bytes already in memory; `name` stands for the file in errors.
pub fn load_image_from_memory(
    bytes: &[u8],
    name: &str,
    opts: &PreprocessOptions,
) -> Result<SourceImage, ImageError> {
    decode::decode(bytes, Path::new(name), opts)
}

/// `Resize((size, size), BICUBIC)` followed by `convert("RGB")`, exactly as PIL does them:
/// `size * size * 3` bytes, row-major RGB.
///
/// # Panics
/// If `size` is 0.
pub fn resize_rgb8(img: &SourceImage, size: usize) -> Vec<u8> {
    convert::resize_rgb8(img, size)
}

/// [`resize_rgb8`] to a `width x height` output (`width * height * 3` bytes).
///
/// # Panics
/// If `width` or `height` is 0.
pub fn resize_rgb8_to(img: &SourceImage, width: usize, height: usize) -> Vec<u8> {
    convert::resize_rgb8_to(img, width, height)
}

/// `ToTensor()` + `Normalize(CLIP_MEAN, CLIP_STD)` on `size * size` RGB pixels: `3 * size * size`
/// floats, channel-major (CHW), each `(x / 255 - mean) / std` in `f32` as torchvision computes it.
///
/// # Panics
/// If `rgb.len() != size * size * 3`.
pub fn normalize_chw(rgb: &[u8], size: usize) -> Vec<f32> {
    let plane = size * size;
    assert_eq!(rgb.len(), plane * 3, "expected {size}x{size} RGB pixels");
    let mut out = vec![0.0f32; plane * 3];
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        // Division, not multiplication by reciprocals: bit-identical to torch's `div` / `div_`.
        r[i] = (f32::from(px[0]) / 255.0 - CLIP_MEAN[0]) / CLIP_STD[0];
        g[i] = (f32::from(px[1]) / 255.0 - CLIP_MEAN[1]) / CLIP_STD[1];
        b[i] = (f32::from(px[2]) / 255.0 - CLIP_MEAN[2]) / CLIP_STD[2];
    }
    out
}

/// The whole of `image_transform(size)` on an image already loaded: `3 * size * size` floats, CHW.
///
/// # Panics
/// If `size` is 0.
pub fn preprocess_image(img: &SourceImage, size: usize) -> Vec<f32> {
    normalize_chw(&resize_rgb8(img, size), size)
}

/// Loads `path` and applies `image_transform(opts.size)`: `3 * S * S` floats, CHW.
pub fn preprocess_path(path: &Path, opts: &PreprocessOptions) -> Result<Vec<f32>, ImageError> {
    check_size(path, opts)?;
    Ok(preprocess_image(&load_image(path, opts)?, opts.size))
}

fn check_size(path: &Path, opts: &PreprocessOptions) -> Result<(), ImageError> {
    match opts.size {
        0 => Err(ImageError::ZeroSize {
            path: path.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

/// [`preprocess_path`] on bytes already in memory; `name` stands for the file in errors.
pub fn preprocess_bytes(
    bytes: &[u8],
    name: &str,
    opts: &PreprocessOptions,
) -> Result<Vec<f32>, ImageError> {
    check_size(Path::new(name), opts)?;
    Ok(preprocess_image(
        &load_image_from_memory(bytes, name, opts)?,
        opts.size,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_are_the_f32_roundings_of_cn_clip_values() {
        // torch.as_tensor((0.48145466, ...), dtype=float32) gives these exact values.
        assert_eq!(
            CLIP_MEAN,
            [
                0.48145466f64 as f32,
                0.4578275f64 as f32,
                0.40821073f64 as f32
            ]
        );
        assert_eq!(
            CLIP_STD,
            [
                0.26862954f64 as f32,
                0.26130258f64 as f32,
                0.27577711f64 as f32
            ]
        );
        assert_eq!(DEFAULT_MAX_PIXELS, 178_956_970);
    }

    #[test]
    fn normalize_matches_torch_bit_for_bit() {
        // torch: (tensor([0, 128, 255] as channels R, G, B).float().div(255) - mean) / std, as bits.
        let out = normalize_chw(&[0, 128, 255], 1);
        let bits: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits, [0xbfe5_68dc, 0x3e2c_f36b, 0x4009_5660]);
    }
}
