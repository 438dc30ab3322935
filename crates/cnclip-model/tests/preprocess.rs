//! Parity of `cnclip_model::preprocess` with cn_clip's `image_transform(S)` (PIL + torchvision).
//!
//! The fixtures in `tests/fixtures/preprocess/` were made by `tools/gen_preprocess_fixtures.py` with
//! Pillow 13.0 and are listed in `cases.txt`:
//! - `synthetic`: images from an integer-only generator mirrored below, in every PIL mode and many
//!   shapes (downscale in both pass orders, upscale, identity, 12 MP), resized by PIL to 224 and 336;
//! - `file`: committed files of every PNG colour type and bit depth, GIF, BMP, WebP, TIFF, JPEG and
//!   EXIF orientations, decoded by the crate;
//! - `mode`: the mode PIL opens each file in; `tensor`: the normalized tensor of a file.
//!
//! Lossless inputs must give PIL's bytes exactly (compared through SHA-256 of the RGB output, and
//! pixel by pixel where the expected image is stored). Lossy inputs are measured against PIL's output.
//! Run with `--nocapture` to see the tables.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use cnclip_model::preprocess::{
    load_image, load_image_from_memory, preprocess_path, resize_rgb8, ImageError, PixelMode,
    PreprocessOptions, SourceImage,
};
use sha2::{Digest, Sha256};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess")
}

fn cases(kind: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(fixtures().join("cases.txt")).expect("cases.txt");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .filter(|f| f.first().map(String::as_str) == Some(kind))
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn opts(exif: bool) -> PreprocessOptions {
    PreprocessOptions {
        exif_orientation: exif,
        ..PreprocessOptions::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The generator of tools/gen_preprocess_fixtures.py, bit for bit (u32 arithmetic wraps).
// ---------------------------------------------------------------------------------------------
fn mix(x: u32, y: u32, c: u32, seed: u32) -> u32 {
    let mut h = x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77);
    h ^= c.wrapping_mul(0xC2B2_AE3D) ^ seed;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7FEB_352D);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846C_A68B);
    h ^ (h >> 16)
}

/// Gradient + hard-edged blocks + noise (`photo` in the generator).
fn photo(x: i64, y: i64, w: i64, h: i64, c: i64, seed: u32) -> u8 {
    let grad = (x * 255 / (w - 1).max(1) * (c + 1) + y * 255 / (h - 1).max(1) * (3 - c)) / 4;
    let block = ((x / (w / 7).max(1) + y / (h / 5).max(1) + c) % 2) * 96;
    let noise = i64::from(mix(x as u32, y as u32, c as u32, seed) & 31);
    (grad * 5 / 8 + block + noise).clamp(0, 255) as u8
}

fn sample(gen: &str, x: i64, y: i64, w: i64, h: i64, c: i64, seed: u32) -> u8 {
    match gen {
        "photo" => photo(x, y, w, h, c, seed),
        _ => (mix(x as u32, y as u32, c as u32, seed) & 255) as u8,
    }
}

fn alpha(x: i64, y: i64, w: i64, h: i64, seed: u32) -> u8 {
    match (x * 4 / w + (y * 3 / h) * 4) % 6 {
        0 => 0,
        1 => 255,
        2 => (mix(x as u32, y as u32, 9, seed) & 255) as u8,
        3 => 128,
        4 => 1,
        _ => 254,
    }
}

fn synthetic(mode: &str, w: u32, h: u32, gen: &str, seed: u32) -> SourceImage {
    let (wi, hi) = (i64::from(w), i64::from(h));
    let mut data = Vec::new();
    let mut wide = Vec::new();
    let palette: Vec<[u8; 3]> = (0..256)
        .map(|i| [0, 1, 2].map(|c| (mix(i, 7, c, seed ^ 0x55) & 255) as u8))
        .collect();
    for y in 0..hi {
        for x in 0..wi {
            let ch = |c| sample(gen, x, y, wi, hi, c, seed);
            match mode {
                "RGB" => data.extend([ch(0), ch(1), ch(2)]),
                "RGBA" => data.extend([ch(0), ch(1), ch(2), alpha(x, y, wi, hi, seed)]),
                "L" => data.push(ch(0)),
                "LA" => data.extend([ch(0), alpha(x, y, wi, hi, seed)]),
                "CMYK" => data.extend([ch(0), ch(1), ch(2), ch(3)]),
                "P" => data.extend(palette[usize::from(ch(0))]),
                "1" => data.push(if ch(0) >= 128 { 255 } else { 0 }),
                "I;16" => wide.push(
                    u16::from(ch(0)) * 3 / 2 + (mix(x as u32, y as u32, 5, seed) & 63) as u16,
                ),
                other => panic!("unknown mode {other}"),
            }
        }
    }
    let mode = match mode {
        "RGB" => PixelMode::Rgb,
        "RGBA" => PixelMode::Rgba,
        "L" => PixelMode::L,
        "LA" => PixelMode::La,
        "CMYK" => PixelMode::Cmyk,
        "P" => PixelMode::Palette,
        "1" => PixelMode::Bilevel,
        _ => return SourceImage::from_i16(w, h, wide).unwrap(),
    };
    SourceImage::from_u8(w, h, mode, data).unwrap()
}

// ---------------------------------------------------------------------------------------------
// |delta| statistics in 8-bit levels
// ---------------------------------------------------------------------------------------------
#[derive(Debug, Clone, Copy)]
struct Stats {
    max: u8,
    /// 99.9 % of the samples differ by at most this.
    p999: u8,
    mean: f64,
    /// Fraction of samples that differ at all.
    differing: f64,
}

fn stats(ours: &[u8], theirs: &[u8]) -> Stats {
    assert_eq!(ours.len(), theirs.len());
    let mut hist = [0usize; 256];
    for (a, b) in ours.iter().zip(theirs) {
        hist[usize::from(a.abs_diff(*b))] += 1;
    }
    let n = ours.len();
    let sum: usize = hist.iter().enumerate().map(|(d, c)| d * c).sum();
    let mut seen = 0;
    let p999 = hist
        .iter()
        .position(|&c| {
            seen += c;
            seen as f64 >= 0.999 * n as f64
        })
        .unwrap() as u8;
    Stats {
        max: hist.iter().rposition(|&c| c > 0).unwrap() as u8,
        p999,
        mean: sum as f64 / n as f64,
        differing: (n - hist[0]) as f64 / n as f64,
    }
}

/// An RGB PNG written by the generator, as bytes.
fn expected_rgb(name: &str) -> Vec<u8> {
    let img = load_image(&fixtures().join(name), &opts(false)).unwrap();
    assert_eq!(img.mode(), PixelMode::Rgb, "{name}");
    img.as_u8().unwrap().to_vec()
}

// ---------------------------------------------------------------------------------------------
#[test]
fn resize_matches_pil_exactly_in_every_mode_and_shape() {
    let mut cache: HashMap<Vec<String>, SourceImage> = HashMap::new();
    let mut failures = Vec::new();
    let mut checked = 0;
    for f in cases("synthetic") {
        let (mode, gen) = (&f[1], &f[4]);
        let (w, h, seed, size) = (
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
            f[5].parse().unwrap(),
            f[6].parse().unwrap(),
        );
        let key = f[1..6].to_vec();
        if !cache.contains_key(&key) {
            cache.clear(); // the two sizes of a case are consecutive: keep one (12 MP) image at a time
            cache.insert(key.clone(), synthetic(mode, w, h, gen, seed));
        }
        let out = resize_rgb8(&cache[&key], size);
        let label = format!("{mode} {w}x{h} {gen} seed {seed} -> {size}");
        if f[8] != "-" {
            let s = stats(&out, &expected_rgb(&f[8]));
            println!("{label}: max {} p99.9 {} mean {:.4}", s.max, s.p999, s.mean);
            if s.max != 0 {
                failures.push(format!("{label}: {s:?}"));
            }
        }
        if sha256_hex(&out) != f[7] {
            failures.push(format!("{label}: output differs from PIL's (sha256)"));
        }
        checked += 1;
    }
    assert!(checked >= 200, "only {checked} synthetic cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn files_open_in_pils_mode() {
    for f in cases("mode") {
        let (name, pil) = (&f[1], f[2].as_str());
        let img = load_image(&fixtures().join(name), &opts(false)).unwrap();
        let expected = match (name.as_str(), pil) {
            // PIL opens 16-bit grey+alpha as RGBA with equal colour bands: resized premultiplied,
            // each band is exactly the LA result, so LA is kept.
            ("png_la16.png", "RGBA") => "LA",
            _ => pil,
        };
        assert_eq!(img.mode().pil_name(), expected, "{name}");
    }
}

#[test]
fn lossless_files_match_pil_exactly() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for f in cases("file").into_iter().filter(|f| f[4] == "exact") {
        let (name, size, exif) = (&f[1], f[2].parse().unwrap(), f[3] == "1");
        let img = load_image(&fixtures().join(name), &opts(exif)).unwrap();
        let out = resize_rgb8(&img, size);
        let ok = sha256_hex(&out) == f[5];
        println!(
            "{name} ({}) -> {size}, exif {exif}: {}",
            img.mode().pil_name(),
            if ok { "identical" } else { "DIFFERENT" }
        );
        if !ok {
            failures.push(format!("{name} -> {size} (exif {exif})"));
        }
        checked += 1;
    }
    assert!(checked >= 60, "only {checked} lossless file cases");
    assert!(
        failures.is_empty(),
        "differ from PIL:\n{}",
        failures.join("\n")
    );
}

/// Bounds for lossy files, a little above what was measured (JPEG: zune-jpeg in the `image` crate vs
/// libjpeg-turbo in PIL; WebP: image-webp vs libwebp). `(max, p99.9, mean)` in 8-bit levels.
fn lossy_bound(name: &str) -> (u8, u8, f64) {
    match name {
        // Four-channel JPEGs stay CMYK until after the resize, as in PIL. Without subsampling the
        // decoders agree to within 1 level (measured: max 1, mean 0.006; converting to RGB while
        // decoding, as the `image` crate does, gave max 11, mean 0.64).
        "jpeg_cmyk.jpg" => (2, 1, 0.02),
        // Subsampled channels: zune-jpeg's upsampling rounds twice (after the vertical and the
        // horizontal pass), libjpeg-turbo's fancy upsampling once. Measured: max 3, p99.9 2, mean
        // 0.15 (CMYK) and 0.18 (YCCK); converting while decoding gave mean 0.28 and 0.37.
        "jpeg_cmyk_progressive_exif6.jpg" | "jpeg_ycck.jpg" => (4, 2, 0.25),
        "jpeg_q90_noisy.jpg" => (5, 3, 0.3),
        // Identical as measured (image-webp 0.2.4 vs libwebp 1.6.0).
        "webp_lossy.webp" => (0, 0, 0.0),
        _ => (4, 2, 0.1),
    }
}

#[test]
fn lossy_files_stay_close_to_pil() {
    let mut failures = Vec::new();
    for f in cases("file").into_iter().filter(|f| f[4] == "lossy") {
        let (name, size, exif) = (&f[1], f[2].parse().unwrap(), f[3] == "1");
        let img = load_image(&fixtures().join(name), &opts(exif)).unwrap();
        let s = stats(&resize_rgb8(&img, size), &expected_rgb(&f[6]));
        println!(
            "{name} -> {size}: max {} p99.9 {} mean {:.4} differing {:.2} %",
            s.max,
            s.p999,
            s.mean,
            100.0 * s.differing
        );
        let (max, p999, mean) = lossy_bound(name);
        if s.max > max || s.p999 > p999 || s.mean > mean {
            failures.push(format!("{name} -> {size}: {s:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn whole_transform_matches_torchvision_bit_for_bit() {
    for f in cases("tensor") {
        let opts = PreprocessOptions {
            size: f[2].parse().unwrap(),
            ..PreprocessOptions::default()
        };
        let chw = preprocess_path(&fixtures().join(&f[1]), &opts).unwrap();
        assert_eq!(chw.len(), 3 * opts.size * opts.size);
        let bytes: Vec<u8> = chw.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(sha256_hex(&bytes), f[3], "{}", f[1]);
    }
}

#[test]
fn exif_orientation_is_applied_by_default_and_can_be_turned_off() {
    assert!(PreprocessOptions::default().exif_orientation);
    // The eight JPEGs share their scan data and differ only in the EXIF orientation tag; the PNG
    // equivalents are compared with PIL's `exif_transpose` in `lossless_files_match_pil_exactly`.
    let upright = load_image(&fixtures().join("exif_1.jpg"), &opts(true)).unwrap();
    for o in 1..=8u8 {
        let path = fixtures().join(format!("exif_{o}.jpg"));
        let on = load_image(&path, &opts(true)).unwrap();
        assert_eq!(
            on,
            upright.clone().apply_exif_orientation(o),
            "orientation {o}"
        );
        let (w, h) = (on.width(), on.height());
        assert_eq!((w, h), if o >= 5 { (64, 96) } else { (96, 64) });
        let off = load_image(&path, &opts(false)).unwrap();
        assert_eq!(off, upright, "orientation {o}, ignored");
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------
fn assert_names_path(err: &ImageError, path: &Path) {
    let msg = err.to_string();
    let prefix = format!("{}: ", path.display());
    assert!(
        msg.starts_with(&prefix),
        "{msg:?} should start with {prefix:?}"
    );
    let rest = &msg[prefix.len()..];
    assert!(
        rest.starts_with(|c: char| c.is_lowercase()),
        "{msg:?}: message should start lowercase"
    );
}

#[test]
fn unreadable_files_are_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let png = std::fs::read(fixtures().join("png_rgb8.png")).unwrap();
    let jpg = std::fs::read(fixtures().join("jpeg_q90.jpg")).unwrap();
    let mut corrupt_png = png.clone();
    for b in &mut corrupt_png[200..260] {
        *b ^= 0x5a;
    }
    let mut random = vec![0u8; 4096];
    let mut s = 1u32;
    for b in &mut random {
        s = mix(s, 3, 1, 7);
        *b = s as u8;
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.jpg", vec![]),
        ("random.jpg", random),
        ("text.jpg", b"this is not a photo\n".repeat(50)),
        ("truncated.png", png[..png.len() / 2].to_vec()),
        ("header_only.png", png[..40].to_vec()),
        ("corrupt.png", corrupt_png),
        ("header_only.jpg", jpg[..300].to_vec()),
        ("just_soi.jpg", vec![0xff, 0xd8, 0xff]),
        ("gif_header.gif", b"GIF89a".to_vec()),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let err = load_image(&path, &opts(true)).expect_err(name);
        assert_names_path(&err, &path);
        let err = load_image_from_memory(&bytes, name, &opts(true)).expect_err(name);
        assert_names_path(&err, Path::new(name));
        println!("{err}");
    }
    let missing = dir.path().join("missing.jpg");
    let err = load_image(&missing, &opts(true)).unwrap_err();
    assert!(matches!(err, ImageError::Io { .. }));
    assert_names_path(&err, &missing);
    let err = load_image(dir.path(), &opts(true)).unwrap_err();
    assert_names_path(&err, dir.path());
}

#[test]
fn truncated_jpegs_are_errors_but_trailing_data_is_fine() {
    // zune-jpeg alone would fill the missing blocks with grey; PIL raises "image file is truncated".
    // Four-channel JPEGs take their own decoding path: the same checks hold for them.
    for name in [
        "jpeg_q90.jpg",
        "jpeg_cmyk.jpg",
        "jpeg_cmyk_progressive_exif6.jpg",
    ] {
        let jpg = std::fs::read(fixtures().join(name)).unwrap();
        for cut in [jpg.len() / 2, jpg.len() - 2, 1000] {
            let err = load_image_from_memory(&jpg[..cut], "cut.jpg", &opts(true)).unwrap_err();
            assert!(matches!(err, ImageError::Decode { .. }), "{name}: {err}");
            assert_names_path(&err, Path::new("cut.jpg"));
        }
        // Data after the end-of-image marker (motion photos append a video) is not truncation.
        let mut longer = jpg.clone();
        longer.extend(b"ftypmp42 trailing video data".repeat(100));
        let img = load_image_from_memory(&longer, "motion.jpg", &opts(true)).unwrap();
        assert_eq!(
            img,
            load_image_from_memory(&jpg, "still.jpg", &opts(true)).unwrap(),
            "{name}"
        );
    }
}

/// The position of the `APP14` "Adobe" segment of a JPEG written by Pillow (length 14).
fn adobe_app14(jpg: &[u8]) -> usize {
    jpg.windows(9)
        .position(|w| w == b"\xff\xee\x00\x0eAdobe")
        .expect("Adobe APP14 segment")
}

#[test]
fn four_channel_jpegs_are_read_as_libjpeg_reads_them() {
    // libjpeg (`default_decompress_parms`): four channels without an Adobe marker are CMYK, as with
    // transform 0; PIL inverts them the same way (checked with Pillow 13: identical pixels).
    let cmyk = std::fs::read(fixtures().join("jpeg_cmyk_progressive_exif6.jpg")).unwrap();
    let at = adobe_app14(&cmyk);
    let mut plain = cmyk[..at].to_vec();
    plain.extend(&cmyk[at + 16..]);
    let img = load_image_from_memory(&plain, "plain.jpg", &opts(true)).unwrap();
    assert_eq!(img.mode(), PixelMode::Cmyk);
    assert_eq!(
        img,
        load_image_from_memory(&cmyk, "adobe.jpg", &opts(true)).unwrap()
    );
    // Transform 1 with four channels is YCCK to libjpeg, as transform 2 is (Pillow 13: identical).
    let ycck = std::fs::read(fixtures().join("jpeg_ycck.jpg")).unwrap();
    let at = adobe_app14(&ycck);
    assert_eq!(ycck[at + 15], 2, "transform byte");
    let mut one = ycck.clone();
    one[at + 15] = 1;
    assert_eq!(
        load_image_from_memory(&one, "one.jpg", &opts(true)).unwrap(),
        load_image_from_memory(&ycck, "two.jpg", &opts(true)).unwrap()
    );
}

#[test]
fn bombs_are_refused_from_the_header() {
    let too_large = |err: ImageError| match err {
        ImageError::TooLarge { width, height, .. } => (width, height),
        other => panic!("expected TooLarge, got {other}"),
    };
    // Tiny files declaring huge images: decoding them would fail differently (the data is missing),
    // so TooLarge proves the refusal came from the header.
    let bomb = fixtures().join("bomb.png");
    let err = load_image(&bomb, &opts(true)).unwrap_err();
    assert_names_path(&err, &bomb);
    assert_eq!(too_large(err), (100_000, 100_000));
    let err = load_image(&fixtures().join("bomb.gif"), &opts(true)).unwrap_err();
    assert_eq!(too_large(err), (65_535, 65_535));

    // JPEGs whose frame header claims 60000 x 60000 (four-channel ones take their own path).
    for (name, sof_marker) in [
        ("jpeg_q90.jpg", 0xc0),
        ("jpeg_cmyk.jpg", 0xc0),
        ("jpeg_cmyk_progressive_exif6.jpg", 0xc2),
    ] {
        let mut jpg = std::fs::read(fixtures().join(name)).unwrap();
        let sof = jpg
            .windows(2)
            .position(|w| w == [0xff, sof_marker])
            .expect("start of frame");
        jpg[sof + 5..sof + 9].copy_from_slice(&[0xea, 0x60, 0xea, 0x60]);
        let err = load_image_from_memory(&jpg, "bomb.jpg", &opts(true)).unwrap_err();
        assert_eq!(too_large(err), (60_000, 60_000), "{name}");
    }

    // The limit is inclusive and configurable: 160 x 120 = 19,200 pixels.
    let png = fixtures().join("png_rgb8.png");
    let at = |max_pixels| PreprocessOptions {
        max_pixels,
        ..PreprocessOptions::default()
    };
    assert!(load_image(&png, &at(19_200)).is_ok());
    assert_eq!(
        too_large(load_image(&png, &at(19_199)).unwrap_err()),
        (160, 120)
    );
}
