//! A hostile corpus: every unusable file is skipped with a reason, never a crash or a hang; every
//! valid-but-odd image is indexed.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::Cursor;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cnclip_index::{FakeEmbedder, ImageEmbedder, Index, Indexer, Silent, Skipped};
use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb, RgbImage, Rgba};

fn noise(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut rng = common::Rng(seed);
    RgbImage::from_fn(w, h, |_, _| {
        let v = rng.next_u64();
        Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
    })
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// A 100 000 × 100 000 RGB PNG in 70 bytes: refused from its header.
fn png_bomb() -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    // zlib stream with one stored block of 4 zero bytes.
    let idat = [
        0x78, 0x01, 0x01, 4, 0, 0xfb, 0xff, 0, 0, 0, 0, 0, 0x04, 0, 0x01,
    ];
    png_chunk(&mut out, b"IDAT", &idat);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

fn animated_gif() -> Vec<u8> {
    use image::codecs::gif::GifEncoder;
    use image::{Delay, Frame};
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new(&mut out);
        for seed in [1, 2, 3] {
            let frame = DynamicImage::ImageRgb8(noise(10, 7, seed)).into_rgba8();
            enc.encode_frame(Frame::from_parts(
                frame,
                0,
                0,
                Delay::from_numer_denom_ms(100, 1),
            ))
            .unwrap();
        }
    }
    out
}

fn webp_lossless() -> Vec<u8> {
    let img = noise(9, 9, 44);
    let mut out = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut out)
        .encode(img.as_raw(), 9, 9, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

struct Corpus {
    dir: tempfile::TempDir,
    /// Files that must be indexed.
    valid: Vec<PathBuf>,
    /// Paths that must be reported skipped, with a word their reason must contain.
    skipped: Vec<(PathBuf, &'static str)>,
}

fn corpus() -> Corpus {
    let dir = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(dir.path()).unwrap();
    let mut valid = Vec::new();
    let mut skipped = Vec::new();
    let put = |name: &[u8], bytes: &[u8]| -> PathBuf {
        let p = root.join(OsStr::from_bytes(name));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        p
    };
    let jpeg = encode(
        &DynamicImage::ImageRgb8(noise(32, 24, 5)),
        ImageFormat::Jpeg,
    );
    let png = encode(&DynamicImage::ImageRgb8(noise(16, 16, 6)), ImageFormat::Png);

    // Unusable.
    skipped.push((put(b"zero.jpg", b""), "empty"));
    skipped.push((put(b"truncated.png", &png[..png.len() / 2]), ""));
    skipped.push((put(b"truncated.jpg", &jpeg[..jpeg.len() / 2]), ""));
    skipped.push((
        put(b"random.png", &[0x13u8; 300].map(|b| b ^ 0x5c)),
        "not a recognised",
    ));
    let mut rng = common::Rng(9);
    let random: Vec<u8> = (0..999).map(|_| rng.next_u64() as u8).collect();
    skipped.push((put(b"random.jpg", &random), "not a recognised"));
    skipped.push((
        put(b"text.jpg", b"this is not a picture\n"),
        "not a recognised",
    ));
    skipped.push((put(b"bomb.png", &png_bomb()), "100000\u{d7}100000"));
    skipped.push((
        put(b"photo.heic", b"\0\0\0\x18ftypheic\0\0\0\0"),
        "unsupported image format",
    ));
    let html_gif = put(b"looks-like.gif", b"GIF89a\x01\0\x01\0garbage");
    skipped.push((html_gif, ""));

    // A symlink loop and a dangling link.
    fs::create_dir_all(root.join("loop")).unwrap();
    std::os::unix::fs::symlink(&root, root.join("loop/back")).unwrap();
    skipped.push((root.join("loop/back"), "symlink loop"));
    std::os::unix::fs::symlink(root.join("nowhere.png"), root.join("dangling.png")).unwrap();
    skipped.push((root.join("dangling.png"), "broken symlink"));
    // A FIFO named like an image must not be opened (it would block forever).
    let fifo = root.join("pipe.jpg");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        skipped.push((fifo, "not a regular file"));
    }

    // Valid but odd: all indexed.
    valid.push(put(b"cmyk.jpg", include_bytes!("data/cmyk.jpg")));
    let deep = ImageBuffer::<Rgb<u16>, _>::from_fn(7, 5, |x, y| {
        Rgb([x as u16 * 9000, y as u16 * 13000, 40000])
    });
    valid.push(put(
        b"deep16.png",
        &encode(&DynamicImage::ImageRgb16(deep), ImageFormat::Png),
    ));
    valid.push(put(b"animated.gif", &animated_gif()));
    valid.push(put(
        b"one.png",
        &encode(&DynamicImage::ImageRgb8(noise(1, 1, 7)), ImageFormat::Png),
    ));
    valid.push(put(b"UPPER.JPG", &jpeg));
    valid.push(put(b"lossless.webp", &webp_lossless()));
    valid.push(put(b"caf\xe9-latin1.png", &png));
    valid.push(put(
        b"alpha.png",
        &encode(
            &DynamicImage::ImageRgba8(ImageBuffer::from_pixel(4, 4, Rgba([9, 8, 7, 0]))),
            ImageFormat::Png,
        ),
    ));
    valid.push(put(
        b"gray.tif",
        &encode(
            &DynamicImage::ImageRgb8(noise(6, 6, 8)).grayscale(),
            ImageFormat::Tiff,
        ),
    ));
    valid.push(put(
        b"old.bmp",
        &encode(&DynamicImage::ImageRgb8(noise(5, 3, 10)), ImageFormat::Bmp),
    ));
    // A directory named like an image is walked into, not read.
    valid.push(put(b"dir.jpg/inside.png", &png));
    // A file that is a PNG under a .jpg name: the content decides.
    valid.push(put(
        b"misnamed.jpg",
        &encode(&DynamicImage::ImageRgb8(noise(3, 3, 11)), ImageFormat::Png),
    ));
    // Not images: ignored, not reported.
    put(b"notes.txt", b"hello");
    put(b"movie.mp4", b"\0\0\0\x20ftypisom");
    Corpus {
        dir,
        valid,
        skipped,
    }
}

fn reason<'a>(skipped: &'a [Skipped], p: &Path) -> Option<&'a str> {
    skipped
        .iter()
        .find(|s| s.path == p)
        .map(|s| s.reason.as_str())
}

#[test]
fn hostile_corpus_is_skipped_with_reasons_and_odd_images_are_indexed() {
    let c = corpus();
    let idx = tempfile::tempdir().unwrap();
    let e = FakeEmbedder::new(16);
    let mut index = Index::create(idx.path(), &e.identity()).unwrap();
    let s = Indexer::new(&mut index)
        .build(c.dir.path(), &e, &Silent)
        .unwrap();

    for (p, word) in &c.skipped {
        let r = reason(&s.skipped, p)
            .unwrap_or_else(|| panic!("{} not reported; skipped: {:#?}", p.display(), s.skipped));
        assert!(
            r.contains(word),
            "{}: reason {r:?} lacks {word:?}",
            p.display()
        );
        assert!(index.record(p).unwrap().is_none());
    }
    for p in &c.valid {
        assert!(
            index.record(p).unwrap().is_some(),
            "{} not indexed: {:?}",
            p.display(),
            reason(&s.skipped, p)
        );
    }
    assert_eq!(s.indexed, c.valid.len(), "skipped: {:#?}", s.skipped);
    assert_eq!(s.skipped.len(), c.skipped.len(), "{:#?}", s.skipped);
    assert_eq!(s.ignored, 2);
    let v = index.verify().unwrap();
    assert!(v.is_ok(), "{:?}", v.problems);

    // The non-UTF-8 name is stored byte for byte.
    let records = index.records().unwrap();
    assert!(records
        .iter()
        .any(|(p, _)| p.as_os_str().as_bytes().ends_with(b"caf\xe9-latin1.png")));

    // A second run changes nothing and reports the same skips.
    let s2 = Indexer::new(&mut index)
        .build(c.dir.path(), &e, &Silent)
        .unwrap();
    assert_eq!((s2.indexed, s2.removed, s2.embedded), (0, 0, 0));
    assert_eq!(s2.unchanged, c.valid.len());
    assert_eq!(s2.skipped.len(), s.skipped.len());
}

#[test]
fn a_file_that_turns_bad_is_removed_from_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::png(dir.path(), "a.png", 1);
    let idx = tempfile::tempdir().unwrap();
    let e = FakeEmbedder::new(16);
    let mut index = Index::create(idx.path(), &e.identity()).unwrap();
    Indexer::new(&mut index)
        .build(dir.path(), &e, &Silent)
        .unwrap();
    fs::write(&p, b"now garbage").unwrap();
    let s = Indexer::new(&mut index)
        .build(dir.path(), &e, &Silent)
        .unwrap();
    assert_eq!((s.removed, s.total, s.skipped.len()), (1, 0, 1));
    assert!(index.verify().unwrap().is_ok());
}

#[test]
fn an_unreadable_folder_keeps_its_records() {
    let dir = tempfile::tempdir().unwrap();
    common::png(dir.path(), "locked/a.png", 1);
    common::png(dir.path(), "b.png", 2);
    let idx = tempfile::tempdir().unwrap();
    let e = FakeEmbedder::new(16);
    let mut index = Index::create(idx.path(), &e.identity()).unwrap();
    Indexer::new(&mut index)
        .build(dir.path(), &e, &Silent)
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    let locked = dir.path().join("locked");
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    if fs::read_dir(&locked).is_ok() {
        // Running as root: permissions do not bind, nothing to test.
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
        return;
    }
    let s = Indexer::new(&mut index)
        .build(dir.path(), &e, &Silent)
        .unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!((s.removed, s.total), (0, 2), "{:?}", s.skipped);
    assert!(s
        .skipped
        .iter()
        .any(|k| k.reason.contains("cannot read directory")));
}

#[test]
fn decoder_refuses_a_bomb_before_allocating() {
    let err = cnclip_index::decode::decode_image(&png_bomb(), true).unwrap_err();
    assert!(err.contains("pixel limit"), "{err}");
}

/// The fake model, except that its decoder panics on files whose name says so, as a decoder with a
/// bug would on some hostile file.
struct PanickyDecoder(FakeEmbedder);

impl ImageEmbedder for PanickyDecoder {
    type Prepared = cnclip_index::PixelDigest;

    fn identity(&self) -> cnclip_index::ModelIdentity {
        self.0.identity()
    }

    fn prepare(&self, path: &Path, bytes: &[u8]) -> Result<Self::Prepared, String> {
        let name = path.file_name().unwrap().to_string_lossy();
        if name.starts_with("panic-literal") {
            panic!("index out of bounds in a decoder");
        }
        if name.starts_with("panic-formatted") {
            panic!("decoder bug on {name}");
        }
        self.0.prepare(path, bytes)
    }

    fn embed(&self, batch: &[Self::Prepared]) -> Result<Vec<Vec<f32>>, cnclip_index::EmbedError> {
        self.0.embed(batch)
    }

    fn batch_size(&self) -> usize {
        2
    }
}

#[test]
fn a_decoder_that_panics_costs_the_file_not_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let good: Vec<PathBuf> = (0..5)
        .map(|i| common::png(dir.path(), &format!("good-{i}.png"), i))
        .collect();
    let bad_str = common::png(dir.path(), "panic-literal.png", 10);
    let bad_string = common::png(dir.path(), "panic-formatted.png", 11);
    let idx = tempfile::tempdir().unwrap();
    let e = PanickyDecoder(FakeEmbedder::new(16));
    let mut index = Index::create(idx.path(), &e.identity()).unwrap();
    for _ in 0..2 {
        let s = Indexer::new(&mut index)
            .build(dir.path(), &e, &Silent)
            .unwrap();
        assert_eq!(s.total, good.len(), "{:?}", s.skipped);
        assert_eq!(s.skipped.len(), 2, "{:?}", s.skipped);
        let r = reason(&s.skipped, &common::canon(&bad_str)).unwrap();
        assert!(
            r.contains("decoder crashed") && r.contains("index out of bounds"),
            "{r}"
        );
        let r = reason(&s.skipped, &common::canon(&bad_string)).unwrap();
        assert!(r.contains("decoder bug on panic-formatted.png"), "{r}");
    }
    for p in &good {
        assert!(index.record(p).unwrap().is_some(), "{}", p.display());
    }
    assert!(index.verify().unwrap().is_ok());
}
