//! `JpegDecode::Scaled`: large JPEGs decoded at reduced scale in the DCT domain, everything else
//! exactly as `JpegDecode::Exact` decodes it.
//!
//! The JPEGs are encoded here with the `image` crate from a deterministic generator (4:4:4), or are
//! the committed fixtures (4:2:0, progressive, greyscale, CMYK, by Pillow); small output sides
//! (`S` = 8 to 112) let images of one or two megapixels at most reach the reductions a 12-MP photo
//! reaches at 224. Bounds on the pixel differences were measured on these images and carry a
//! margin; `examples/decode_fidelity.rs` measures real-size photos and embeddings.

use std::path::{Path, PathBuf};

use cnclip_model::preprocess::{
    load_image, load_image_from_memory, preprocess_bytes, resize_rgb8, ImageError, JpegDecode,
    PixelMode, PreprocessOptions, SourceImage,
};
use image::codecs::jpeg::JpegEncoder;
use image::{ExtendedColorType, ImageEncoder};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess")
}

fn opts(size: usize, jpeg_decode: JpegDecode) -> PreprocessOptions {
    PreprocessOptions {
        size,
        jpeg_decode,
        ..PreprocessOptions::default()
    }
}

fn hash(x: u32, y: u32, c: u32) -> u32 {
    let mut h =
        x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77) ^ c.wrapping_mul(0xC2B2_AE3D);
    h ^= h >> 16;
    h = h.wrapping_mul(0x7FEB_352D);
    h ^= h >> 15;
    h ^ (h >> 16)
}

/// Photo-like samples: gradients, a grid of hard-edged coloured blocks, a few thin lines and noise.
/// Asymmetric, so that a wrong orientation or a shifted resize shows.
fn photo(w: u32, h: u32, channels: u32) -> Vec<u8> {
    let mut data = Vec::with_capacity((w * h * channels) as usize);
    for y in 0..h {
        for x in 0..w {
            for c in 0..channels {
                let grad = (x * 160 / w) * (c + 1) / 3 + (y * 120 / h) * (3 - c) / 3;
                let block = ((x * 9 / w + y * 5 / h + c) % 3) * 40;
                let line = if (x + 2 * y) % 97 < 2 { 60 } else { 0 };
                let noise = hash(x, y, c) & 15;
                data.push((grad + block + line + noise).min(255) as u8);
            }
        }
    }
    data
}

/// A quality-90 JPEG from the `image` crate's encoder (which writes colour as 4:4:4; 4:2:0 files are
/// the fixtures'), with an EXIF orientation when `orientation` is given.
fn jpeg(w: u32, h: u32, grey: bool, orientation: Option<u8>) -> Vec<u8> {
    let (channels, color) = if grey {
        (1, ExtendedColorType::L8)
    } else {
        (3, ExtendedColorType::Rgb8)
    };
    let mut out = Vec::new();
    let mut encoder = JpegEncoder::new_with_quality(&mut out, 90);
    if let Some(o) = orientation {
        // A big-endian TIFF header and one IFD entry: Orientation (0x0112), SHORT, count 1.
        let mut exif =
            b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01".to_vec();
        exif.extend([0, o, 0, 0, 0, 0, 0, 0]);
        encoder.set_exif_metadata(exif).unwrap();
    }
    encoder
        .write_image(&photo(w, h, channels), w, h, color)
        .unwrap();
    out
}

/// Bounds on the differences between the exact and the scaled path's resized pixels on [`photo`]
/// images, with margin over what was measured (see the tests).
const MAX_DIFF: u8 = 5;
const MEAN_DIFF: f64 = 0.4;

/// Max and mean |Δ| between two equally sized byte buffers.
fn diff(a: &[u8], b: &[u8]) -> (u8, f64) {
    assert_eq!(a.len(), b.len());
    let max = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0);
    let sum: u64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    (max, sum as f64 / a.len() as f64)
}

fn load(bytes: &[u8], o: &PreprocessOptions) -> SourceImage {
    load_image_from_memory(bytes, "test.jpg", o).unwrap()
}

/// Exact and scaled loads of `bytes` at output side `size`, and their resized RGB pixels.
fn both(bytes: &[u8], size: usize) -> (SourceImage, SourceImage, (u8, f64)) {
    let exact = load(bytes, &opts(size, JpegDecode::Exact));
    let scaled = load(bytes, &opts(size, JpegDecode::Scaled));
    let d = diff(&resize_rgb8(&exact, size), &resize_rgb8(&scaled, size));
    (exact, scaled, d)
}

#[test]
fn exact_is_the_default() {
    assert_eq!(PreprocessOptions::default().jpeg_decode, JpegDecode::Exact);
    assert_eq!(JpegDecode::default(), JpegDecode::Exact);
}

#[test]
fn jpegs_below_three_times_the_output_side_per_half_are_decoded_exactly() {
    // At S = 112 a reduction to 1/2 needs both sides at least 2 * 3 * 112 - 1 = 671 pixels
    // (libjpeg rounds reduced sizes up).
    for (w, h) in [(640, 480), (670, 2000), (2000, 670)] {
        let bytes = jpeg(w, h, false, None);
        let scaled = opts(112, JpegDecode::Scaled);
        let img = load(&bytes, &scaled);
        assert_eq!((img.width(), img.height(), img.reduction()), (w, h, 1));
        assert_eq!(
            preprocess_bytes(&bytes, "t.jpg", &scaled).unwrap(),
            preprocess_bytes(&bytes, "t.jpg", &opts(112, JpegDecode::Exact)).unwrap(),
            "{w}x{h}"
        );
    }
    assert_eq!(
        load(&jpeg(671, 671, false, None), &opts(112, JpegDecode::Scaled)).reduction(),
        2
    );
    // Default options never reduce, however large the photo.
    let bytes = jpeg(1400, 1400, false, None);
    assert_eq!(load(&bytes, &PreprocessOptions::default()).reduction(), 1);
}

#[test]
fn large_jpegs_are_reduced_and_stay_close_to_the_exact_path() {
    // (width, height, S, expected reduction). Measured: max |Δ| 3, mean |Δ| 0.16-0.26; resizing the
    // reduced image as a whole (ignoring that partial blocks cover less than a pixel) gives means of
    // 0.52-0.91 on the last three, so the mean bound also checks that.
    let cases = [
        (1000, 750, 112, 2),  // 500x375: ratio 3.35, like a 12-MP photo at 224 at 1/4
        (1343, 1001, 112, 2), // 672x501, partial pixels on both axes
        (1800, 1350, 112, 4), // 450x338: ratio 3.0, a partial pixel at the bottom
        (1401, 1051, 80, 4),  // 351x263, partial pixels on both axes
    ];
    for (w, h, size, reduction) in cases {
        let bytes = jpeg(w, h, false, None);
        let (exact, scaled, (max, mean)) = both(&bytes, size);
        println!(
            "{w}x{h} at {size}: 1/{} max {max} mean {mean:.3}",
            scaled.reduction()
        );
        assert_eq!(scaled.reduction(), reduction, "{w}x{h} at {size}");
        assert_eq!(
            (scaled.width(), scaled.height()),
            (w.div_ceil(reduction), h.div_ceil(reduction))
        );
        assert_eq!(scaled.full_size(), (w, h));
        assert_eq!(scaled.mode(), PixelMode::Rgb);
        assert_eq!(exact.reduction(), 1);
        assert!(
            max <= MAX_DIFF && mean <= MEAN_DIFF,
            "{w}x{h} at {size}: max {max}, mean {mean}"
        );
    }
}

#[test]
fn exif_orientation_is_applied_to_reduced_images() {
    // 1401x1051 at S = 80: 1/4, with partial pixels on the right and bottom edges, which every
    // orientation moves elsewhere (mirrored to the left or top, or onto the other axis). Measured:
    // max 3, mean 0.24-0.25 for all eight; leaving the partial pixels where they were decoded gives
    // means of 0.53-1.69 for orientations 2, 3, 4, 6, 7 and 8.
    let (w, h) = (1401, 1051);
    let upright = jpeg(w, h, false, None);
    let plain = resize_rgb8(&load(&upright, &opts(80, JpegDecode::Exact)), 80);
    for o in 1..=8u8 {
        let bytes = jpeg(w, h, false, Some(o));
        let (exact, scaled, (max, mean)) = both(&bytes, 80);
        println!("orientation {o}: max {max} mean {mean:.3}");
        let swapped = o >= 5;
        let full = if swapped { (h, w) } else { (w, h) };
        assert_eq!((exact.width(), exact.height()), full);
        assert_eq!(scaled.full_size(), full, "orientation {o}");
        assert_eq!(scaled.reduction(), 4);
        assert_eq!(
            (scaled.width(), scaled.height()),
            (full.0.div_ceil(4), full.1.div_ceil(4))
        );
        assert!(
            max <= MAX_DIFF && mean <= MEAN_DIFF,
            "orientation {o}: max {max}, mean {mean}"
        );
        if o != 1 {
            // The orientation did change the picture: far from the upright one.
            let (_, from_upright) = diff(&plain, &resize_rgb8(&scaled, 80));
            assert!(from_upright > 5.0, "orientation {o}: {from_upright}");
        }
    }
}

#[test]
fn greyscale_jpegs_are_reduced_in_mode_l() {
    let bytes = jpeg(1401, 1051, true, None);
    let (exact, scaled, (max, mean)) = both(&bytes, 80);
    println!("grey: 1/{} max {max} mean {mean:.3}", scaled.reduction());
    assert_eq!((exact.mode(), scaled.mode()), (PixelMode::L, PixelMode::L));
    assert_eq!(scaled.reduction(), 4);
    assert!(
        max <= MAX_DIFF && mean <= MEAN_DIFF,
        "max {max}, mean {mean}"
    );
}

#[test]
fn subsampled_and_progressive_jpegs_are_reduced_too() {
    // Fixtures made by Pillow (libjpeg-turbo), 640x480: at S = 40, 1/4 gives 160x120 (ratio 3).
    // Their generator draws a grid of hard-edged blocks of a different colour in each channel every
    // 91 pixels, with per-pixel noise: chroma that 4:2:0 subsampling, decoded at 1/4 (2x2 samples
    // per 16x16 pixels, upsampled), renders less faithfully than libjpeg-turbo's reduced decoding
    // (which gives 0.31-0.33 here). Measured max / mean |Δ|: progressive 4:2:0 7 / 1.59,
    // baseline 4:2:0 8 / 1.62, 4:4:4 2 / 0.32, grey 1 / 0.15.
    for (name, max_bound, mean_bound) in [
        ("jpeg_q75_progressive.jpg", 12, 2.0),
        ("jpeg_q90.jpg", 12, 2.0),
        ("jpeg_q90_444.jpg", MAX_DIFF, MEAN_DIFF),
        ("jpeg_grey.jpg", MAX_DIFF, MEAN_DIFF),
    ] {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        let (_, scaled, (max, mean)) = both(&bytes, 40);
        println!("{name}: 1/{} max {max} mean {mean:.3}", scaled.reduction());
        assert_eq!(scaled.reduction(), 4, "{name}");
        assert!(
            max <= max_bound && mean <= mean_bound,
            "{name}: max {max}, mean {mean}"
        );
    }
}

#[test]
fn four_channel_and_non_jpeg_files_are_decoded_exactly() {
    // CMYK and YCCK JPEGs keep their own exact path (PIL's CMYK mode until after the resize); other
    // formats have no reduced decoding. At S = 8 every one of them would be large enough.
    for name in [
        "jpeg_cmyk.jpg",
        "jpeg_ycck.jpg",
        "jpeg_cmyk_progressive_exif6.jpg",
        "png_rgb8.png",
        "webp_lossy.webp",
    ] {
        let path = fixtures().join(name);
        let scaled = load_image(&path, &opts(8, JpegDecode::Scaled)).unwrap();
        assert_eq!(scaled.reduction(), 1, "{name}");
        assert_eq!(
            scaled,
            load_image(&path, &opts(8, JpegDecode::Exact)).unwrap(),
            "{name}"
        );
    }
}

fn assert_names(err: &ImageError, name: &str) {
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{name}: ")),
        "{msg:?} should name {name}"
    );
}

#[test]
fn truncated_and_corrupt_jpegs_fail_as_on_the_exact_path() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = jpeg(1401, 1051, false, None);
    let scaled = opts(80, JpegDecode::Scaled);
    for cut in [bytes.len() / 2, bytes.len() - 2, 700] {
        let path = dir.path().join(format!("cut{cut}.jpg"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = load_image(&path, &scaled).unwrap_err();
        assert!(matches!(err, ImageError::Decode { .. }), "{err}");
        assert_names(&err, &path.display().to_string());
        let err = preprocess_bytes(&bytes[..cut], "cut.jpg", &scaled).unwrap_err();
        assert_names(&err, "cut.jpg");
    }
    // Damaged entropy-coded data with the end marker in place: whatever the exact path makes of it
    // (zune-jpeg is lenient), the scaled path gives the same kind of result, and never panics.
    let scan = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap() + 20;
    for (i, at) in [scan, scan + 5000, bytes.len() / 2, bytes.len() - 100]
        .into_iter()
        .enumerate()
    {
        let mut damaged = bytes.clone();
        for (k, b) in damaged[at..at + 64].iter_mut().enumerate() {
            *b = (hash(i as u32, k as u32, 7) & 0xFE) as u8; // no 0xFF: no markers made up
        }
        let name = format!("damaged{i}.jpg");
        let exact = load_image_from_memory(&damaged, &name, &opts(80, JpegDecode::Exact));
        let reduced = load_image_from_memory(&damaged, &name, &scaled);
        match (&exact, &reduced) {
            (Ok(_), Ok(_)) => {}
            (Err(a), Err(b)) => {
                assert_eq!(std::mem::discriminant(a), std::mem::discriminant(b));
                assert_names(b, &name);
            }
            _ => panic!("{name}: exact {exact:?}, scaled {reduced:?}"),
        }
    }
}

#[test]
fn the_pixel_limit_is_checked_before_decoding() {
    let bytes = jpeg(1000, 750, false, None);
    let limited = PreprocessOptions {
        max_pixels: 1000 * 750 - 1,
        ..opts(112, JpegDecode::Scaled)
    };
    let err = load_image_from_memory(&bytes, "big.jpg", &limited).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooLarge {
                width: 1000,
                height: 750,
                ..
            }
        ),
        "{err}"
    );
    // A frame header claiming 60000 x 60000 on a small file: refused from the header (decoding would
    // fail otherwise, the data is missing).
    let mut bomb = bytes.clone();
    let sof = bomb.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    bomb[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    let err =
        load_image_from_memory(&bomb, "bomb.jpg", &opts(224, JpegDecode::Scaled)).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooLarge {
                width: 60000,
                height: 60000,
                ..
            }
        ),
        "{err}"
    );
}
