//! Damaged copies of every committed image fixture through the whole preprocessing (format
//! detection, header checks, EXIF, every decoder, the reduced-scale JPEG decoders, the resize):
//! any result but a panic.
//!
//! A photo library holds files cut short by a full disk, flipped bits from a dying drive, and files
//! made to hurt; the indexer must report them and go on. The copies are damaged in the ways such
//! files are (bits flipped, bytes overwritten with boundary values such as 0, 0xFF and 0xFFFF in
//! length and size fields, stretches deleted or repeated, the end cut off), one to three times
//! each, deterministically. Each copy is decoded exactly and at reduced scale, at output sides that
//! send the fixtures' 61- to 640-pixel JPEGs through the 1/2 and 1/4 decoders.
//!
//! `CNCLIP_FUZZ_ITERS` sets the copies per fixture (default 40, about 4,000 decodes in all);
//! failing copies are written to a temporary folder that is named in the failure.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use cnclip_model::preprocess::{preprocess_bytes, JpegDecode, PreprocessOptions};

fn fixture_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files = Vec::new();
    for dir in ["preprocess", "jpeg"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap();
            // The expected outputs and synthetic references are PNGs written by PIL: the committed
            // PNG fixtures already cover every PNG layout.
            let image = ["jpg", "png", "gif", "bmp", "webp", "tiff"]
                .iter()
                .any(|ext| name.ends_with(&format!(".{ext}")));
            if image && !name.starts_with("expected_") && !name.starts_with("syn_") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// xorshift64*: deterministic and good enough to pick offsets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One damage done to `bytes`.
fn damage(bytes: &mut Vec<u8>, rng: &mut Rng) {
    if bytes.is_empty() {
        return;
    }
    let at = rng.below(bytes.len());
    match rng.below(6) {
        0 => bytes[at] ^= 1 << rng.below(8),
        1 => bytes[at] = [0x00, 0xFF, 0x7F, 0x80, 0x01][rng.below(5)],
        2 => {
            // A 16- or 32-bit field (a length, a width, an offset) set to a boundary value.
            let value: u32 = [0, 1, 0xFFFF, 0x7FFF, 0x8000, 0xFFFF_FFFF, 0x7FFF_FFFF][rng.below(7)];
            let width = if rng.below(2) == 0 { 2 } else { 4 };
            let be = value.to_be_bytes();
            let le = value.to_le_bytes();
            let src = if rng.below(2) == 0 {
                &be[4 - width..]
            } else {
                &le[..width]
            };
            for (i, &b) in src.iter().enumerate() {
                if let Some(slot) = bytes.get_mut(at + i) {
                    *slot = b;
                }
            }
        }
        3 => bytes.truncate(at),
        4 => {
            let len = 1 + rng.below(64.min(bytes.len() - at));
            bytes.drain(at..at + len);
        }
        _ => {
            let len = 1 + rng.below(256.min(bytes.len() - at));
            let copy = bytes[at..at + len].to_vec();
            let to = rng.below(bytes.len());
            bytes.splice(to..to, copy);
        }
    }
}

fn options() -> Vec<PreprocessOptions> {
    let with = |size, jpeg_decode| PreprocessOptions {
        size,
        jpeg_decode,
        ..PreprocessOptions::default()
    };
    vec![
        with(224, JpegDecode::Exact),
        // 640x480 at 32: 1/4 (160x120 >= 96); 203x157 at 8: 1/4; 61x45 at 8: 1/2.
        with(32, JpegDecode::Scaled),
        with(8, JpegDecode::Scaled),
    ]
}

#[test]
fn damaged_copies_of_every_fixture_never_panic() {
    let iters: usize = std::env::var("CNCLIP_FUZZ_ITERS").map_or(40, |v| v.parse().unwrap());
    let files = fixture_files();
    assert!(files.len() >= 40, "fixtures missing: {}", files.len());
    let options = options();
    let kept = std::env::temp_dir().join(format!("cnclip-damaged-{}", std::process::id()));
    let mut failures = Vec::new();
    let (mut decoded, mut refused) = (0usize, 0usize);
    for path in &files {
        let original = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ original.len() as u64);
        for i in 0..iters {
            let mut bytes = original.clone();
            for _ in 0..1 + rng.below(3) {
                damage(&mut bytes, &mut rng);
            }
            for opts in &options {
                let run = catch_unwind(AssertUnwindSafe(|| preprocess_bytes(&bytes, name, opts)));
                match run {
                    Ok(Ok(tensor)) => {
                        assert_eq!(tensor.len(), 3 * opts.size * opts.size);
                        decoded += 1;
                    }
                    // The preprocessing turns a decoder's panic into the file's error (and says
                    // so); here that is as much a failure as a panic.
                    Ok(Err(e)) if !e.to_string().contains("the decoder crashed") => refused += 1,
                    Ok(Err(_)) | Err(_) => {
                        std::fs::create_dir_all(&kept).unwrap();
                        let copy = kept.join(format!("{i}-{}-{name}", opts.size));
                        std::fs::write(&copy, &bytes).unwrap();
                        failures.push(format!("{} ({:?})", copy.display(), opts.jpeg_decode));
                    }
                }
            }
        }
    }
    println!(
        "{} fixtures x {iters} damaged copies x {} option sets: {decoded} decoded, {refused} refused, {} panicked",
        files.len(),
        options.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} damaged copies panicked:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
