//! Which files are images, and a hardened decoder for them.
//!
//! The model crate brings its own exact preprocessing; this decoder is what [`crate::FakeEmbedder`]
//! uses, and what an embedder may use to turn bytes into pixels with the same refusals: a pixel-count
//! limit checked from the header before any pixel is decoded (decompression bombs), an allocation
//! limit, and errors as short reasons instead of panics.

use std::ffi::OsStr;
use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

/// Extensions (lowercase) of the formats the engine indexes.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "jfif", "png", "webp", "gif", "tif", "tiff", "bmp",
];

/// Extensions of image formats that are recognised but not supported: such files are reported as
/// skipped (the user would expect them to be indexed) rather than silently ignored.
pub const UNSUPPORTED_IMAGE_EXTENSIONS: &[&str] = &[
    "heic", "heif", "avif", "jxl", "jp2", "psd", "svg", "ico", "cr2", "cr3", "nef", "arw", "dng",
    "raf", "orf", "rw2",
];

/// Pillow's `DecompressionBombError` threshold (2 × `Image.MAX_IMAGE_PIXELS`): what the reference
/// implementation refuses, we refuse.
pub const MAX_PIXELS: u64 = 178_956_970;

/// How a file is treated, judged by its extension (case-insensitive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// One of [`IMAGE_EXTENSIONS`].
    Image,
    /// One of [`UNSUPPORTED_IMAGE_EXTENSIONS`].
    UnsupportedImage,
    /// Anything else (not reported).
    Other,
}

/// Classifies a file name by its extension.
pub fn file_kind(name: &OsStr) -> FileKind {
    let Some(ext) = std::path::Path::new(name).extension() else {
        return FileKind::Other;
    };
    let Some(ext) = ext.to_str() else {
        return FileKind::Other;
    };
    let ext = ext.to_ascii_lowercase();
    if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
        FileKind::Image
    } else if UNSUPPORTED_IMAGE_EXTENSIONS.contains(&ext.as_str()) {
        FileKind::UnsupportedImage
    } else {
        FileKind::Other
    }
}

/// Decodes an image from memory: format from the content (not the name), first frame of animations,
/// EXIF orientation applied when `apply_orientation`. Errors are short lowercase reasons.
pub fn decode_image(bytes: &[u8], apply_orientation: bool) -> Result<DynamicImage, String> {
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("cannot read: {e}"))
    };
    let probe = reader()?;
    match probe.format() {
        None => return Err("not a recognised image format".into()),
        Some(image::ImageFormat::Jpeg) if jpeg_is_truncated(bytes) => {
            return Err("truncated JPEG (no end-of-image marker after the last scan)".into())
        }
        Some(_) => {}
    }
    let (w, h) = probe.into_dimensions().map_err(reason)?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > MAX_PIXELS {
        return Err(format!(
            "{w}×{h} pixels is more than the {MAX_PIXELS}-pixel limit (decompression bomb?)"
        ));
    }
    if pixels == 0 {
        return Err("image has no pixels".into());
    }
    let mut limits = Limits::default();
    // 16-bit RGBA at the pixel limit, plus the decoders' own buffers.
    limits.max_alloc = Some(MAX_PIXELS * 8 + (64 << 20));
    let mut reader = reader()?;
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(reason)?;
    let orientation = if apply_orientation {
        decoder.orientation().ok()
    } else {
        None
    };
    let mut img = DynamicImage::from_decoder(decoder).map_err(reason)?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(img)
}

/// Whether a JPEG stops before its end-of-image marker. The `image` crate's decoder fills a cut-off
/// scan with grey and succeeds; Pillow refuses such files ("image file is truncated"), so do we.
/// The last start-of-scan marker (`FF DA`) belongs to the main image (entropy-coded data cannot
/// contain it, and an EXIF thumbnail comes before), and an `FF D9` must follow it.
pub fn jpeg_is_truncated(bytes: &[u8]) -> bool {
    let Some(sos) = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]) else {
        return true;
    };
    !bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9])
}

fn reason(e: image::ImageError) -> String {
    let s = e.to_string();
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => "cannot decode".into(),
    }
}
