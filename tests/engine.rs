//! End-to-end tests of `cnclip-index` and `cnclip-search`: the real binaries, spawned in temp
//! dirs, on images the tests generate, with the real model code on the tiny fixture checkpoints.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn model(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cnclip-model/tests/fixtures/models")
        .join(name)
        .display()
        .to_string()
}

fn bin(name: &str) -> Command {
    let path = match name {
        "cnclip" => env!("CARGO_BIN_EXE_cnclip"),
        "cnclip-index" => env!("CARGO_BIN_EXE_cnclip-index"),
        _ => env!("CARGO_BIN_EXE_cnclip-search"),
    };
    let mut c = Command::new(path);
    c.env("CNCLIP_OFFLINE", "1")
        .env_remove("CNCLIP_MODEL")
        .env_remove("CNCLIP_DEVICE");
    c
}

fn run(name: &str, args: &[&str]) -> Output {
    bin(name).args(args).output().expect("spawn")
}

fn ok(out: Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A distinct image per seed: a colour gradient and pseudo-random blocks.
fn picture(seed: u32, w: u32, h: u32) -> image::RgbImage {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let blocks: Vec<[u8; 3]> = (0..64)
        .map(|_| {
            let v = next();
            [v as u8, (v >> 8) as u8, (v >> 16) as u8]
        })
        .collect();
    image::RgbImage::from_fn(w, h, |x, y| {
        let b = blocks[((x * 8 / w) + 8 * (y * 8 / h)) as usize];
        image::Rgb([
            b[0] / 2 + (x * 127 / w) as u8,
            b[1] / 2 + (y * 127 / h) as u8,
            b[2],
        ])
    })
}

fn make_corpus(dir: &Path, n: u32, size: u32) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let p = dir.join(format!("img{i:04}.png"));
            picture(i, size, size * 3 / 4).save(&p).unwrap();
            p
        })
        .collect()
}

fn build(photos: &Path, index: &Path, model_name: &str) -> Value {
    let m = model(model_name);
    ok(run(
        "cnclip-index",
        &[
            "build",
            photos.to_str().unwrap(),
            "--index",
            index.to_str().unwrap(),
            "--model",
            &m,
            "--json",
        ],
    ))
    .remove(0)
}

fn search_image(index: &Path, query: &Path, k: usize) -> Vec<Value> {
    // Paths as OsStr: query files may have non-UTF-8 names.
    ok(bin("cnclip-search")
        .arg("--index")
        .arg(index)
        .args(["-k", &k.to_string(), "--json", "--image"])
        .arg(query)
        .output()
        .expect("spawn"))
}

fn search_text(index: &Path, text: &str, k: usize) -> Vec<Value> {
    ok(bin("cnclip-search")
        .arg("--index")
        .arg(index)
        .args(["-k", &k.to_string(), "--json", text])
        .output()
        .expect("spawn"))
}

fn status(index: &Path) -> Value {
    ok(run(
        "cnclip-index",
        &["status", "--index", index.to_str().unwrap(), "--json"],
    ))
    .remove(0)
}

fn verify_ok(index: &Path) {
    let out = run(
        "cnclip-index",
        &["verify", "--index", index.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_image_finds_itself_first() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    let files = make_corpus(&photos, 24, 96);
    let index = tmp.path().join("index");
    let summary = build(&photos, &index, "vit_tiny.pt");
    assert_eq!(summary["indexed"], 24);
    assert_eq!(summary["total"], 24);
    for f in &files {
        let hits = search_image(&index, f, 3);
        assert_eq!(hits.len(), 3);
        assert_eq!(hits[0]["rank"], 1);
        assert_eq!(
            Path::new(hits[0]["path"].as_str().unwrap()),
            f.canonicalize().unwrap()
        );
        assert!((hits[0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4);
        assert!(hits[1]["score"].as_f64().unwrap() <= hits[0]["score"].as_f64().unwrap());
    }
    // Like an indexed photo, from its stored vector (no model; the path relative to the working
    // directory): the ranking of a query with the file itself.
    for f in &files[..3] {
        let similar = ok(bin("cnclip-search")
            .current_dir(&photos)
            .arg("--index")
            .arg(&index)
            .args(["-k", "3", "--json", "--similar"])
            .arg(f.file_name().unwrap())
            .output()
            .unwrap());
        let by_file = search_image(&index, f, 3);
        for (a, b) in similar.iter().zip(&by_file) {
            assert_eq!((&a["rank"], &a["path"]), (&b["rank"], &b["path"]));
        }
        assert_eq!(similar.len(), 3);
    }
    let out = run(
        "cnclip-search",
        &[
            "--index",
            index.to_str().unwrap(),
            "--similar",
            "/nowhere.png",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("/nowhere.png is not in the index"),
        "{stderr}"
    );

    // A text query answers with ranked, absolute paths.
    let hits = search_text(&index, "一只小猫", 5);
    assert_eq!(hits.len(), 5);
    assert!(hits
        .iter()
        .all(|h| Path::new(h["path"].as_str().unwrap()).is_absolute()));
    let st = status(&index);
    assert_eq!(
        (st["images"].as_u64(), st["dim"].as_u64()),
        (Some(24), Some(64))
    );
    // Builds decode large JPEGs at reduced scale unless --exact-decode; the index records it.
    assert_eq!(st["precision"], "f32+jpeg-scaled");
    verify_ok(&index);
}

#[test]
fn incremental_add_modify_rename_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    let files = make_corpus(&photos, 10, 64);
    let index = tmp.path().join("index");
    build(&photos, &index, "vit_tiny.pt");

    // Nothing changed: nothing embedded.
    let s = build(&photos, &index, "vit_tiny.pt");
    assert_eq!(
        (s["indexed"].as_u64(), s["unchanged"].as_u64()),
        (Some(0), Some(10))
    );

    let added = photos.join("new.png");
    picture(1000, 64, 48).save(&added).unwrap();
    picture(2000, 64, 48).save(&files[1]).unwrap(); // modified in place
    let renamed = photos.join("renamed.png");
    std::fs::rename(&files[2], &renamed).unwrap();
    std::fs::remove_file(&files[3]).unwrap();
    let s = build(&photos, &index, "vit_tiny.pt");
    assert_eq!(s["total"], 10, "{s}");
    assert_eq!(s["removed"], 2, "deleted + renamed-away: {s}");
    assert_eq!(s["indexed"], 3, "new + modified + renamed-to: {s}");
    assert_eq!(s["unchanged"], 7, "{s}");

    for (query, expect) in [
        (&added, &added),
        (&files[1], &files[1]),
        (&renamed, &renamed),
    ] {
        let hits = search_image(&index, query, 1);
        assert_eq!(
            Path::new(hits[0]["path"].as_str().unwrap()),
            expect.canonicalize().unwrap()
        );
    }
    let all = search_image(&index, &added, 50);
    assert_eq!(all.len(), 10);
    let paths: Vec<&str> = all.iter().map(|h| h["path"].as_str().unwrap()).collect();
    assert!(!paths
        .iter()
        .any(|p| p.ends_with("img0003.png") || p.ends_with("img0002.png")));
    verify_ok(&index);
}

#[test]
fn identical_content_under_two_paths_is_one_vector() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    let files = make_corpus(&photos, 4, 64);
    std::fs::copy(&files[0], photos.join("copy.png")).unwrap();
    let index = tmp.path().join("index");
    build(&photos, &index, "vit_tiny.pt");
    let st = status(&index);
    assert_eq!(
        (st["images"].as_u64(), st["vectors"].as_u64()),
        (Some(5), Some(4))
    );
    let hits = search_image(&index, &files[0], 2);
    assert!((hits[1]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4);
}

#[test]
fn hostile_and_odd_files_are_reported_or_indexed_never_a_crash() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let w = |name: &str, bytes: &[u8]| std::fs::write(photos.join(name), bytes).unwrap();
    // Unusable: each must be skipped with a reason.
    w("zero.jpg", b"");
    let mut png = Vec::new();
    picture(1, 64, 64)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    w("truncated.png", &png[..png.len() / 2]);
    w(
        "random.jpg",
        &(0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<_>>(),
    );
    w("text.jpg", b"hello, I am not a JPEG at all\n");
    w(
        "photo.heic",
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
    );
    // PNG decompression bomb: a valid header declaring 100000 x 100000 pixels, tiny file.
    let mut bomb = b"\x89PNG\r\n\x1a\n".to_vec();
    let ihdr = [
        &b"IHDR"[..],
        &100_000u32.to_be_bytes(),
        &100_000u32.to_be_bytes(),
        &[8, 2, 0, 0, 0],
    ]
    .concat();
    bomb.extend((13u32).to_be_bytes());
    bomb.extend(&ihdr);
    bomb.extend(crc32(&ihdr).to_be_bytes());
    w("bomb.png", &bomb);
    std::fs::create_dir_all(photos.join("x.jpg")).unwrap();
    std::os::unix::fs::symlink(&photos, photos.join("loop")).unwrap();

    // Valid but odd: each must be indexed.
    let odd: Vec<PathBuf> = {
        let mut v = Vec::new();
        let p = photos.join("UPPER.JPG");
        image::DynamicImage::ImageRgb8(picture(2, 50, 40))
            .save(&p)
            .unwrap();
        v.push(p);
        let p = photos.join("deep16.png");
        image::DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(30, 20, |x, y| {
            image::Rgb([x as u16 * 2000, y as u16 * 3000, 40000])
        }))
        .save(&p)
        .unwrap();
        v.push(p);
        let p = photos.join("one.png");
        image::RgbImage::from_pixel(1, 1, image::Rgb([1, 2, 3]))
            .save(&p)
            .unwrap();
        v.push(p);
        let p = photos.join("lossless.webp");
        image::DynamicImage::ImageRgb8(picture(3, 40, 30))
            .save(&p)
            .unwrap();
        v.push(p);
        let p = photos.join("anim.gif");
        {
            let f = std::fs::File::create(&p).unwrap();
            let mut enc = image::codecs::gif::GifEncoder::new(f);
            for s in 0..3 {
                let frame = image::RgbaImage::from_fn(20, 20, |x, y| {
                    image::Rgba([(x * 10 + s * 40) as u8, (y * 10) as u8, 100, 255])
                });
                enc.encode_frame(image::Frame::new(frame)).unwrap();
            }
        }
        v.push(p);
        let p = photos.join(std::ffi::OsStr::from_bytes(b"caf\xe9-\xff.png"));
        picture(4, 32, 32).save(&p).unwrap();
        v.push(p);
        let p = photos.join("cmyk.jpg");
        std::fs::write(&p, cmyk_jpeg()).unwrap();
        v.push(p);
        v
    };

    let index = tmp.path().join("index");
    let s = build(&photos, &index, "vit_tiny.pt");
    let skipped: Vec<(String, String)> = s["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["path"].as_str().unwrap().to_owned(),
                k["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for bad in [
        "zero.jpg",
        "truncated.png",
        "random.jpg",
        "text.jpg",
        "bomb.png",
        "photo.heic",
    ] {
        let hit = skipped.iter().find(|(p, _)| p.ends_with(bad));
        let (_, reason) =
            hit.unwrap_or_else(|| panic!("{bad} not reported as skipped: {skipped:?}"));
        assert!(!reason.is_empty());
    }
    assert_eq!(s["total"].as_u64(), Some(odd.len() as u64), "{s}");
    for p in &odd {
        assert!(
            !skipped
                .iter()
                .any(|(s, _)| s.ends_with(&*p.file_name().unwrap().to_string_lossy())),
            "{} was skipped: {skipped:?}",
            p.display()
        );
    }
    // The non-UTF-8 name is kept exactly: it is found again, itself first.
    let hits = search_image(&index, &odd[5], 1);
    assert!(hits[0]["path"].as_str().unwrap().contains("caf"));
    verify_ok(&index);
}

/// A 16×16 CMYK baseline JPEG (Adobe, inverted), written by Pillow 13:
/// `Image.new("CMYK", (16, 16), (20, 120, 200, 10)).save(f, "JPEG")`.
fn cmyk_jpeg() -> Vec<u8> {
    let hex = include_str!("data/cmyk16.jpg.hex");
    (0..hex.trim().len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex.trim()[i..i + 2], 16).unwrap())
        .collect()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn an_index_is_never_mixed_with_another_models_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    let files = make_corpus(&photos, 3, 64);
    let index = tmp.path().join("index");
    build(&photos, &index, "vit_tiny.pt");
    let other = model("rn_tiny.pt");
    let out = run(
        "cnclip-index",
        &[
            "build",
            photos.to_str().unwrap(),
            "--index",
            index.to_str().unwrap(),
            "--model",
            &other,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vit_tiny.pt") && err.contains("another --index"),
        "{err}"
    );
    let out = run(
        "cnclip-search",
        &[
            "--index",
            index.to_str().unwrap(),
            "--model",
            &other,
            "--image",
            files[0].to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("built with"));
    assert_eq!(status(&index)["images"], 3);
}

#[test]
fn a_query_image_is_decoded_as_the_indexs_photos_were() {
    // A JPEG large enough for the fixture model (64-pixel input) to be decoded at 1/2 scale when
    // indexed by default; searched with itself, it must come back with the same vector, cosine 1,
    // whether the index was built at reduced scale or with --exact-decode. (Decoded exactly against
    // the reduced-scale index, this one scored 0.9999989.)
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let jpeg = photos.join("large.jpg");
    // Fine detail (per-pixel noise on the blocks), where reduced and exact decoding differ most.
    let mut state = 0x2545_F491_u32;
    let mut noisy = picture(7, 512, 384);
    for p in noisy.pixels_mut() {
        for c in &mut p.0 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            *c = c.saturating_add((state % 64) as u8);
        }
    }
    noisy.save(&jpeg).unwrap();
    let m = model("vit_tiny.pt");
    for exact in [false, true] {
        let index = dir.path().join(format!("index-{exact}"));
        let mut args = vec![
            "build",
            photos.to_str().unwrap(),
            "--index",
            index.to_str().unwrap(),
            "--model",
            &m,
            "--json",
        ];
        if exact {
            args.push("--exact-decode");
        }
        assert_eq!(ok(run("cnclip-index", &args))[0]["indexed"], 1);
        let hit = &search_image(&index, &jpeg, 1)[0];
        let score = hit["score"].as_f64().unwrap();
        assert!((score - 1.0).abs() < 3e-7, "exact {exact}: score {score}");
    }
}

#[test]
fn device_is_chosen_for_the_model_and_a_missing_gpu_is_said_before_the_index_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    let corpus = make_corpus(&photos, 3, 48);
    let index = dir.path().join("index");
    let (p, i, m) = (
        photos.to_str().unwrap(),
        index.to_str().unwrap(),
        model("vit_tiny.pt"),
    );
    let summary = ok(run(
        "cnclip-index",
        &[
            "build", p, "--index", i, "--model", &m, "--device", "cpu", "--json",
        ],
    ))
    .remove(0);
    assert_eq!(summary["indexed"], 3);
    let hits = ok(bin("cnclip-search")
        .env("CNCLIP_DEVICE", "CPU")
        .args(["--index", i, "-k", "1", "--json", "--image"])
        .arg(&corpus[1])
        .output()
        .unwrap());
    assert_eq!(
        hits[0]["path"],
        corpus[1].canonicalize().unwrap().to_str().unwrap()
    );
    // Not a device at all: refused by the argument parser.
    let out = run(
        "cnclip-index",
        &["build", p, "--index", i, "--device", "tpu"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected cpu, cuda or cuda:N"));
    // A GPU asked of a build without CUDA: the reason, and no new index.
    #[cfg(not(feature = "cuda"))]
    {
        let fresh = dir.path().join("fresh");
        let f = fresh.to_str().unwrap();
        let out = run(
            "cnclip-index",
            &[
                "build", p, "--index", f, "--model", &m, "--device", "cuda:1",
            ],
        );
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("no CUDA support"), "{stderr}");
        assert!(!fresh.exists());
        let out = run(
            "cnclip-search",
            &["--index", i, "--device", "cuda", "一只小猫"],
        );
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("no CUDA support"));
        assert_eq!(status(&index)["images"], 3);
    }
}

fn spawn_build(photos: &Path, index: &Path, model_name: &str) -> Child {
    bin("cnclip-index")
        .args([
            "build",
            photos.to_str().unwrap(),
            "--index",
            index.to_str().unwrap(),
        ])
        .args(["--model", &model(model_name), "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn kill_9_during_build_loses_nothing_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    let n = 200;
    make_corpus(&photos, n, 160);
    let index = tmp.path().join("index");
    let log_len = || {
        std::fs::metadata(index.join("reader.log"))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let mut last = 0u64;
    let mut kills = 0;
    for round in 0..12u64 {
        // Kill points that do not depend on the machine's speed: in every third round at a
        // fixed early time (while the model loads or the first batch runs), otherwise as soon as
        // this run has committed a batch (the reader log grew), with the next batch in flight.
        let before = log_len();
        let early = Duration::from_millis(10 + round * 15);
        let mut child = spawn_build(&photos, &index, "vit336_tiny.pt");
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            let due = if round % 3 == 0 {
                started.elapsed() >= early
            } else {
                log_len() > before
            };
            if due {
                child.kill().unwrap(); // SIGKILL
                kills += 1;
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(300), "build hangs");
            std::thread::sleep(Duration::from_millis(1));
        }
        child.wait().unwrap();
        if !index.join("db").exists() {
            continue;
        }
        verify_ok(&index);
        let images = status(&index)["images"].as_u64().unwrap();
        assert!(
            images >= last,
            "round {round}: {images} images after a kill, {last} before"
        );
        last = images;
    }
    assert!(kills >= 6, "only {kills} builds were killed mid-run");
    let s = build(&photos, &index, "vit336_tiny.pt");
    assert_eq!(s["total"].as_u64(), Some(n as u64), "{s}");
    let st = status(&index);
    assert_eq!(st["images"].as_u64(), Some(n as u64));
    assert_eq!(st["vectors"].as_u64(), Some(n as u64), "no duplicates");
    verify_ok(&index);
    eprintln!("kill -9 loop: {kills} kills, {last} images committed before the final run, 0 lost");
}

#[test]
fn search_answers_while_a_build_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    let files = make_corpus(&photos, 150, 160);
    let index = tmp.path().join("index");
    let mut child = spawn_build(&photos, &index, "vit336_tiny.pt");
    let started = Instant::now();
    let mut answered_during_build = 0;
    while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(300) {
        if index.join("model.json").exists() {
            let out = run(
                "cnclip-search",
                &[
                    "--index",
                    index.to_str().unwrap(),
                    "-k",
                    "3",
                    "--json",
                    "--image",
                    files[0].to_str().unwrap(),
                ],
            );
            let still_running = child.try_wait().unwrap().is_none();
            assert!(
                out.status.success(),
                "search failed during build: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            if still_running {
                answered_during_build += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(child.wait().unwrap().success());
    assert!(
        answered_during_build >= 1,
        "no search ran while the build was running"
    );
    let hits = search_image(&index, &files[0], 1);
    assert_eq!(
        Path::new(hits[0]["path"].as_str().unwrap()),
        files[0].canonicalize().unwrap()
    );
}

/// A `cnclip-search --serve` child, killed when dropped (also when a test fails).
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(index: &Path) -> Server {
        use std::io::BufRead;
        let mut child = bin("cnclip-search")
            .arg("--index")
            .arg(index)
            .args(["--serve", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Server { child, port }
    }

    /// Sends `head` (request line and headers, without the blank line) and `body`; returns the
    /// status, the answer's head and its body.
    fn bytes(&self, head: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(format!("{head}\r\n\r\n").as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        let end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(answer[..end].to_vec()).unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let length: usize = (head.lines())
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        let body = answer[end + 4..].to_vec();
        assert_eq!(body.len(), length, "{head}");
        (status, head, body)
    }

    /// [`Server::bytes`] for a JSON answer.
    fn raw(&self, head: &str, body: &[u8]) -> (u16, Value) {
        let (status, head, body) = self.bytes(head, body);
        assert!(head.contains("Content-Type: application/json"), "{head}");
        (status, serde_json::from_slice(&body).unwrap())
    }

    fn get(&self, target: &str) -> (u16, Value) {
        self.raw(&format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1"), b"")
    }

    fn post(&self, target: &str, body: &[u8]) -> (u16, Value) {
        let head = format!(
            "POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}",
            body.len()
        );
        self.raw(&head, body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `%XX` for every byte of `s` (what a client's URL encoding gives for non-ASCII text).
fn percent_encoded(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

#[test]
fn serve_answers_as_the_cli_does_and_sees_what_builds_add() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    let files = make_corpus(&photos, 12, 96);
    let index = tmp.path().join("index");
    build(&photos, &index, "vit_tiny.pt");
    // An address in use is said at once.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = bin("cnclip-search")
        .arg("--index")
        .arg(&index)
        .args(["--serve", &taken.local_addr().unwrap().to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("cannot listen on"),
        "{stderr}"
    );
    // Per-search options belong to each request: given to a server, they are refused, not
    // ignored.
    for option in [&["-k", "5"][..], &["--json"], &["--under", "/tmp"]] {
        let out = bin("cnclip-search")
            .arg("--index")
            .arg(&index)
            .args(["--serve", "127.0.0.1:0"])
            .args(option)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("cannot be used with"),
            "{stderr}"
        );
    }
    let server = Server::start(&index);

    let (code, st) = server.get("/status");
    assert_eq!(code, 200, "{st}");
    assert_eq!(
        (st["images"].as_u64(), st["dim"].as_u64()),
        (Some(12), Some(64))
    );
    assert_eq!(st["precision"], "f32+jpeg-scaled");

    // The same hits, scores and order as the one-shot CLI, for text and image queries, also when
    // eight clients ask at once.
    let text = "一只小猫在草地上";
    let cli_text = search_text(&index, text, 5);
    let cli_image: Vec<Vec<Value>> = files[..4]
        .iter()
        .map(|f| search_image(&index, f, 3))
        .collect();
    let target = format!("/search?q={}&k=5", percent_encoded(text));
    std::thread::scope(|s| {
        for t in 0..8 {
            let (server, target, cli_text, cli_image, files) =
                (&server, &target, &cli_text, &cli_image, &files);
            s.spawn(move || {
                for i in 0..3 {
                    let (code, answer) = server.get(target);
                    assert_eq!(code, 200, "{answer}");
                    assert_eq!(answer["hits"].as_array().unwrap(), cli_text);
                    let n = (t + i) % 4;
                    let (code, answer) =
                        server.post("/search?k=3", &std::fs::read(&files[n]).unwrap());
                    assert_eq!(code, 200, "{answer}");
                    assert_eq!(answer["hits"].as_array().unwrap(), &cli_image[n]);
                }
            });
        }
    });
    // The 24 asks of one text ran the model once or a few times (clients racing at the start):
    // the rest came from the query cache, with the same answers.
    let cache = &server.get("/status").1["query_cache"];
    assert!(
        cache["texts"] == 1 && cache["hits"].as_u64().unwrap() >= 16,
        "{cache}"
    );
    // The next page: ranks go on from the first.
    let (code, answer) = server.get(&format!("{target}&offset=2").replace("k=5", "k=3"));
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["hits"].as_array().unwrap(), &cli_text[2..]);
    let (code, answer) = server.get(&format!("{target}&offset=4"));
    assert_eq!((code, answer["hits"][0]["rank"].as_u64()), (200, Some(5)));
    // Photos like an indexed one, from its stored vector: the same answer as querying with the
    // file itself, without running the model.
    for f in &files[..4] {
        let target = format!(
            "/similar?k=3&path={}",
            percent_encoded(f.canonicalize().unwrap().to_str().unwrap())
        );
        let (code, answer) = server.get(&target);
        assert_eq!(code, 200, "{answer}");
        let posted = server.post("/search?k=3", &std::fs::read(f).unwrap()).1;
        // The stored vector was normalized once more when indexed: the last bit may differ.
        for (a, b) in answer["hits"]
            .as_array()
            .unwrap()
            .iter()
            .zip(posted["hits"].as_array().unwrap())
        {
            assert_eq!((&a["rank"], &a["path"]), (&b["rank"], &b["path"]));
            assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-6);
        }
        assert_eq!(answer["hits"].as_array().unwrap().len(), 3);
    }
    // A server on a loopback address answers requests for localhost only: a web page that
    // points a name of its own at 127.0.0.1 cannot read photos through a visitor's browser.
    for (host, code) in [
        ("evil.example", 403),
        ("evil.example:80", 403),
        ("localhost", 200),
        ("[::1]:7860", 200),
    ] {
        let (got, answer) = server.raw(&format!("GET /status HTTP/1.1\r\nHost: {host}"), b"");
        assert_eq!(got, code, "{host}: {answer}");
    }
    // The search page, and the indexed photos it shows (no other file).
    let (code, head, page) = server.bytes("GET / HTTP/1.1", b"");
    let page = String::from_utf8(page).unwrap();
    assert!(
        code == 200 && head.contains("Content-Type: text/html"),
        "{head}"
    );
    assert!(page.contains("<input") && page.contains("'/search?k=60' + under"));
    let shown = files[3].canonicalize().unwrap();
    let target = format!("/file?path={}", percent_encoded(shown.to_str().unwrap()));
    let (code, head, bytes) = server.bytes(&format!("GET {target} HTTP/1.1"), b"");
    assert!(
        code == 200 && head.contains("Content-Type: image/png"),
        "{head}"
    );
    assert_eq!(bytes, std::fs::read(&shown).unwrap());
    let beside = photos.join("not-indexed.png");
    std::fs::copy(&shown, &beside).unwrap();
    for path in [beside.to_str().unwrap(), "/etc/passwd", "../../etc/passwd"] {
        let (code, answer) = server.get(&format!("/file?path={}", percent_encoded(path)));
        assert_eq!(code, 404, "{path}: {answer}");
    }
    std::fs::remove_file(&beside).unwrap();
    // An indexed photo replaced by a symlink to another file: not followed.
    let secret = tmp.path().join("secret.txt");
    std::fs::write(&secret, "not a photo").unwrap();
    let saved = std::fs::read(&shown).unwrap();
    std::fs::remove_file(&shown).unwrap();
    std::os::unix::fs::symlink(&secret, &shown).unwrap();
    assert_eq!(server.get(&target).0, 404);
    std::fs::remove_file(&shown).unwrap();
    std::fs::write(&shown, saved).unwrap();
    assert_eq!(server.bytes(&format!("GET {target} HTTP/1.1"), b"").0, 200);
    assert_eq!(server.get("/file").0, 400);
    assert_eq!(server.raw(&format!("POST {target} HTTP/1.1"), b"").0, 405);

    let (code, answer) = server.get("/similar?path=/nowhere.png");
    assert_eq!(code, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("not in the index"),
        "{answer}"
    );
    assert_eq!(server.get("/similar").0, 400);

    // Embeddings for backends that keep vectors themselves: exactly what `cnclip embed --json`
    // prints for the same text or image, with the server's model named.
    let embed_cli = |input: &[&str]| {
        let m = model("vit_tiny.pt");
        ok(bin("cnclip")
            .args(["embed", "--json", "--model", &m])
            .args(input)
            .output()
            .unwrap())
        .remove(0)
    };
    let (code, answer) = server.get(&format!("/embed?text={}", percent_encoded(text)));
    assert_eq!(code, 200, "{answer}");
    let cli = embed_cli(&["--text", text]);
    assert_eq!(answer["embedding"].as_array().unwrap().len(), 64);
    for field in ["kind", "input", "embedding"] {
        assert_eq!(answer[field], cli[field], "{field}");
    }
    assert_eq!(answer["model"], st["model"]);
    let (code, answer) = server.post("/embed", &std::fs::read(&files[1]).unwrap());
    assert_eq!(code, 200, "{answer}");
    let cli = embed_cli(&["--image", files[1].to_str().unwrap()]);
    assert_eq!(
        (&answer["kind"], &answer["embedding"], &answer["input"]),
        (&cli["kind"], &cli["embedding"], &Value::Null)
    );

    // `+` is a space and raw UTF-8 is accepted; k defaults to 10 (all 12 would be more).
    let (code, answer) = server.get("/search?q=小猫+在草地上");
    assert_eq!((code, answer["hits"].as_array().unwrap().len()), (200, 10));

    // Requests that cannot be answered say why, and the server goes on.
    let error = |(code, answer): (u16, Value)| {
        let e = answer["error"].as_str().unwrap_or_default().to_owned();
        (code, e)
    };
    let (code, e) = error(server.get("/search"));
    assert!(code == 400 && e.contains("missing the query"), "{code} {e}");
    let (code, e) = error(server.get("/search?q=%20%20"));
    assert!(code == 400 && e.contains("empty"), "{code} {e}");
    for k in ["0", "-1", "x", "10001"] {
        let (code, e) = error(server.get(&format!("/search?q=a&k={k}")));
        assert!(code == 400 && e.contains("k must be"), "{k}: {code} {e}");
    }
    for offset in ["-1", "x", "10001"] {
        let (code, e) = error(server.get(&format!("/search?q=a&offset={offset}")));
        assert!(
            code == 400 && e.contains("offset must be"),
            "{offset}: {code} {e}"
        );
    }
    let (code, e) = error(server.get("/similar?path=/x&k=10000&offset=1"));
    assert!(code == 400 && e.contains("offset + k"), "{code} {e}");
    let (code, e) = error(server.get("/search?q=%E4%B8"));
    assert!(code == 400 && e.contains("not UTF-8"), "{code} {e}");
    let (code, e) = error(server.post("/search", b"not an image at all"));
    assert!(
        code == 400 && e.contains("cannot decode image"),
        "{code} {e}"
    );
    let (code, e) = error(server.post("/search", b""));
    assert!(code == 400 && e.contains("no image"), "{code} {e}");
    let (code, e) = error(server.get("/embed?q=a"));
    assert!(code == 400 && e.contains("missing the text"), "{code} {e}");
    let (code, e) = error(server.get("/embed?text=+"));
    assert!(code == 400 && e.contains("empty"), "{code} {e}");
    let (code, e) = error(server.post("/embed", b"GIF89a"));
    assert!(
        code == 400 && e.contains("cannot decode image"),
        "{code} {e}"
    );
    let (code, e) = error(server.post("/embed", b""));
    assert!(code == 400 && e.contains("no image"), "{code} {e}");
    for target in [
        "DELETE /search",
        "PUT /embed",
        "POST /similar",
        "POST /status",
    ] {
        let (code, _) = server.raw(&format!("{target} HTTP/1.1"), b"");
        assert_eq!(code, 405, "{target}");
    }
    let (code, _) = server.get("/index.html");
    assert_eq!(code, 404);
    let big = format!(
        "POST /search HTTP/1.1\r\nContent-Length: {}",
        (64u64 << 20) + 1
    );
    assert_eq!(server.raw(&big, b"").0, 413);
    let chunked = "POST /search HTTP/1.1\r\nTransfer-Encoding: chunked";
    assert_eq!(server.raw(chunked, b"0\r\n\r\n").0, 411);
    let long = format!("GET /search?q={} HTTP/1.1", "a".repeat(20_000));
    assert_eq!(server.raw(&long, b"").0, 431);
    assert_eq!(server.raw("HELLO", b"").0, 400);

    // A build beside the server: its photos are found without a restart.
    let new: Vec<PathBuf> = (100..103)
        .map(|i| {
            let p = photos.join(format!("new{i}.png"));
            picture(i, 96, 72).save(&p).unwrap();
            p
        })
        .collect();
    build(&photos, &index, "vit_tiny.pt");
    let started = Instant::now();
    while server.get("/status").1["images"] != 15 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server never saw the build"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for f in &new {
        let (code, answer) = server.post("/search?k=1", &std::fs::read(f).unwrap());
        assert_eq!(code, 200);
        let hit = &answer["hits"][0];
        assert_eq!(
            Path::new(hit["path"].as_str().unwrap()),
            f.canonicalize().unwrap()
        );
        assert!((hit["score"].as_f64().unwrap() - 1.0).abs() < 1e-4);
    }

    // The index rebuilt from scratch with another model: its vectors and this server's queries
    // are not comparable, so searches are refused (status still answers).
    std::fs::remove_dir_all(&index).unwrap();
    build(&photos, &index, "vit336_tiny.pt");
    let started = Instant::now();
    let (code, e) = loop {
        let (code, e) = error(server.get("/search?q=a"));
        if code != 200 {
            break (code, e);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server never saw the rebuild"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(code == 503 && e.contains("restart it"), "{code} {e}");
    assert_eq!(
        server.post("/search", &std::fs::read(&new[0]).unwrap()).0,
        503
    );
    assert_eq!(server.get("/status").0, 200);
    // Embeddings need no index: still answered, with the server's model, which they name.
    let (code, answer) = server.get("/embed?text=a");
    assert_eq!((code, &answer["model"]), (200, &st["model"]));
}

#[test]
fn searches_confined_to_folders_rank_as_the_whole_index_does() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    let alice = make_corpus(&photos.join("alice"), 6, 96);
    make_corpus(&photos.join("alice2"), 3, 80); // beside alice, not in it
    make_corpus(&photos.join("bob/trip"), 4, 72);
    let index = tmp.path().join("index");
    build(&photos, &index, "vit_tiny.pt");
    let canon_photos = photos.canonicalize().unwrap();
    let in_folder = |hits: &[Value], folder: &str| -> Vec<Value> {
        let root = canon_photos.join(folder);
        let mut kept: Vec<Value> = (hits.iter())
            .filter(|h| Path::new(h["path"].as_str().unwrap()).starts_with(&root))
            .cloned()
            .collect();
        for (i, h) in kept.iter_mut().enumerate() {
            h["rank"] = (i + 1).into();
        }
        kept
    };
    // The CLI, from the photos' parent (a relative folder is taken as the index names it).
    let confined = |query: &[&str], under: &[&str]| -> Vec<Value> {
        let mut c = bin("cnclip-search");
        c.current_dir(tmp.path())
            .arg("--index")
            .arg(&index)
            .args(["-k", "100", "--json"]);
        for u in under {
            c.args(["--under", u]);
        }
        c.args(query);
        ok(c.output().unwrap())
    };
    let text = "一只小猫";
    let image = alice[2].to_str().unwrap();
    for query in [
        &["--", text][..],
        &["--image", image],
        &["--similar", image],
    ] {
        let all = confined(query, &[]);
        assert_eq!(all.len(), 13);
        let alice_only = confined(query, &["photos/alice/"]);
        assert_eq!(alice_only, in_folder(&all, "alice"), "{query:?}");
        assert_eq!(alice_only.len(), 6);
        let trips = confined(query, &["photos/bob/trip", "photos/alice2"]);
        let mut want = in_folder(&all, "bob/trip");
        want.extend(in_folder(&all, "alice2"));
        want.sort_by(|a, b| {
            b["score"]
                .as_f64()
                .partial_cmp(&a["score"].as_f64())
                .unwrap()
        });
        let paths =
            |hits: &[Value]| -> Vec<Value> { hits.iter().map(|h| h["path"].clone()).collect() };
        assert_eq!(paths(&trips), paths(&want), "{query:?}");
        assert!(confined(query, &["photos/nobody"]).is_empty());
    }

    // The server's `under`, the same answers.
    let server = Server::start(&index);
    let alice_dir = percent_encoded(canon_photos.join("alice").to_str().unwrap());
    let (code, answer) = server.get(&format!(
        "/search?k=100&q={}&under={alice_dir}",
        percent_encoded(text)
    ));
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        answer["hits"].as_array().unwrap(),
        &confined(&["--", text], &["photos/alice"])
    );
    let (code, answer) = server.post(
        &format!("/search?k=100&under={alice_dir}"),
        &std::fs::read(image).unwrap(),
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        answer["hits"].as_array().unwrap(),
        &confined(&["--image", image], &["photos/alice"])
    );
    let (code, answer) = server.get(&format!(
        "/similar?k=100&path={}&under={alice_dir}",
        percent_encoded(image)
    ));
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        answer["hits"].as_array().unwrap(),
        &confined(&["--similar", image], &["photos/alice"])
    );
    // Queries that cannot be answered as given are refused, as the server refuses them.
    for (args, said) in [
        (&["--", " "][..], "the query is empty"),
        (&["-k", "0", "猫"], "invalid value '0'"),
    ] {
        let out = bin("cnclip-search")
            .arg("--index")
            .arg(&index)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(said),
            "{args:?}: {stderr}"
        );
    }
    let (code, answer) = server.get("/search?q=a&under=photos/alice");
    assert_eq!(code, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("absolute"),
        "{answer}"
    );
}

#[test]
fn a_forgotten_folder_leaves_the_index_and_its_searches() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    make_corpus(&photos.join("kept"), 5, 96);
    let moved = make_corpus(&photos.join("moved"), 4, 80);
    let index = tmp.path().join("index");
    build(&photos, &index, "vit_tiny.pt");
    let forget = |path: &str| -> Value {
        ok(bin("cnclip-index")
            .current_dir(tmp.path())
            .args(["forget", path, "--json", "--index"])
            .arg(&index)
            .output()
            .unwrap())
        .remove(0)
    };
    // The library moved away: its folder no longer exists, so no build can remove it.
    let moved_to = tmp.path().join("elsewhere");
    std::fs::rename(photos.join("moved"), &moved_to).unwrap();
    let stale = search_image(&index, &moved_to.join("img0001.png"), 1);
    assert!(stale[0]["path"]
        .as_str()
        .unwrap()
        .contains("/photos/moved/"));
    let server = Server::start(&index);
    assert_eq!(server.get("/status").1["images"], 9);
    // Asked first what it would do: nothing changes.
    let out = run(
        "cnclip-index",
        &[
            "forget",
            "/",
            "--dry-run",
            "--index",
            index.to_str().unwrap(),
        ],
    );
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.starts_with("would remove 9 of 9 images"), "{said}");
    assert_eq!(status(&index)["images"], 9);
    // Named relative to the working directory and with a trailing slash, as a person would.
    assert_eq!(
        forget("photos/moved/"),
        serde_json::json!({"removed": 4, "total": 5})
    );
    // A server beside it drops them.
    let started = Instant::now();
    while server.get("/status").1["images"] != 5 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server kept them"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, answer) = server.get("/search?q=a&k=100");
    assert_eq!(answer["hits"].as_array().unwrap().len(), 5);
    assert_eq!(status(&index)["images"], 5);
    verify_ok(&index);
    for f in &moved {
        let moved_file = moved_to.join(f.file_name().unwrap());
        for hit in search_image(&index, &moved_file, 10) {
            assert!(
                hit["path"].as_str().unwrap().contains("/photos/kept/"),
                "{hit}"
            );
        }
    }
    assert_eq!(
        forget("photos/moved"),
        serde_json::json!({"removed": 0, "total": 5})
    );
    // Forgotten vectors are gone: indexing those photos again runs the model.
    let s = build(&moved_to, &index, "vit_tiny.pt");
    assert_eq!(
        (&s["indexed"], &s["embedded"]),
        (&4.into(), &4.into()),
        "{s}"
    );
    // The right order for a move: build the new place first — every photo keeps its vector,
    // found by its content — then forget the old one.
    std::fs::create_dir(photos.join("moved-again")).unwrap();
    for f in std::fs::read_dir(&moved_to).unwrap() {
        let f = f.unwrap().path();
        std::fs::rename(&f, photos.join("moved-again").join(f.file_name().unwrap())).unwrap();
    }
    let s = build(&photos, &index, "vit_tiny.pt");
    assert_eq!(
        (&s["indexed"], &s["embedded"], &s["total"]),
        (&4.into(), &0.into(), &13.into()),
        "{s}"
    );
    assert_eq!(
        forget(moved_to.to_str().unwrap()),
        serde_json::json!({"removed": 4, "total": 9})
    );
    assert_eq!(status(&index)["vectors"], 9);
    verify_ok(&index);
    let out = run(
        "cnclip-index",
        &["forget", "/nowhere", "--index", index.to_str().unwrap()],
    );
    assert!(out.status.success());
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(
        said.starts_with("nothing indexed under /nowhere: 9 images"),
        "{said}"
    );
    // Not an index: said, and nothing is created.
    let out = run(
        "cnclip-index",
        &[
            "forget",
            "/x",
            "--index",
            tmp.path().join("none").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(!tmp.path().join("none").exists());
}

#[test]
fn one_build_indexes_several_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let home = make_corpus(&tmp.path().join("home"), 3, 96);
    let nas = make_corpus(&tmp.path().join("nas/photos"), 4, 80);
    make_corpus(&tmp.path().join("nas/photos/sub"), 2, 72);
    let index = tmp.path().join("index");
    let m = model("vit_tiny.pt");
    let build_dirs = |dirs: &[&str]| -> Output {
        bin("cnclip-index")
            .current_dir(tmp.path())
            .arg("build")
            .args(dirs)
            .args(["--json", "--model", &m, "--index"])
            .arg(&index)
            .output()
            .unwrap()
    };
    let s = ok(build_dirs(&["home", "nas/photos"])).remove(0);
    assert_eq!((&s["indexed"], &s["total"]), (&9.into(), &9.into()), "{s}");
    verify_ok(&index);
    // Folders inside another one given, or given twice, are walked once.
    std::fs::remove_file(&nas[0]).unwrap();
    let s = ok(build_dirs(&[
        "nas/photos/sub",
        "home",
        "nas/photos",
        "home/",
    ]))
    .remove(0);
    assert_eq!(
        (&s["indexed"], &s["unchanged"], &s["removed"], &s["total"]),
        (&0.into(), &8.into(), &1.into(), &8.into()),
        "{s}"
    );
    assert!(search_image(&index, &home[0], 1)[0]["path"]
        .as_str()
        .unwrap()
        .ends_with("home/img0000.png"));
    // A folder that is not one is said before anything is touched.
    let out = build_dirs(&["home", "nowhere"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere: not a directory"));
    assert_eq!(status(&index)["images"], 8);
}

#[test]
fn query_arithmetic_adds_and_subtracts_texts() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    let files = make_corpus(&photos, 8, 96);
    let index = tmp.path().join("index");
    build(&photos, &index, "vit_tiny.pt");
    let m = model("vit_tiny.pt");
    // Every embedding, as `cnclip embed` gives it (L2-normalised).
    let mut embed = bin("cnclip");
    embed.args(["embed", "--json", "--model", &m]);
    for t in ["一只小猫", "夜晚", "室内"] {
        embed.args(["--text", t]);
    }
    for f in &files {
        embed.arg("--image").arg(f);
    }
    let vectors: Vec<Vec<f64>> = ok(embed.output().unwrap())
        .iter()
        .map(|l| {
            let v = l["embedding"].as_array().unwrap();
            v.iter().map(|x| x.as_f64().unwrap()).collect()
        })
        .collect();
    let (cat, night, indoors, images) = (&vectors[0], &vectors[1], &vectors[2], &vectors[3..]);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let unit = |v: Vec<f64>| {
        let n = dot(&v, &v).sqrt();
        v.into_iter().map(|x| x / n).collect::<Vec<f64>>()
    };
    let cli = |args: &[&str]| -> Vec<Value> {
        ok(bin("cnclip-search")
            .arg("--index")
            .arg(&index)
            .args(["-k", "8", "--json"])
            .args(args)
            .output()
            .unwrap())
    };
    let image0 = files[0].canonicalize().unwrap();
    let image0 = image0.to_str().unwrap();
    for (args, parts) in [
        (
            &["--add", "夜晚", "--subtract", "室内", "--", "一只小猫"][..],
            vec![(1.0, cat), (1.0, night), (-1.0, indoors)],
        ),
        (
            &["--image", image0, "--add", "夜晚"],
            vec![(1.0, &images[0]), (1.0, night)],
        ),
        (
            &["--similar", image0, "--subtract", "室内"],
            vec![(1.0, &images[0]), (-1.0, indoors)],
        ),
    ] {
        let mut sum = vec![0.0; 64];
        for (sign, v) in parts {
            for (s, x) in sum.iter_mut().zip(v) {
                *s += sign * x;
            }
        }
        let query = unit(sum);
        let hits = cli(args);
        assert_eq!(hits.len(), 8);
        for (i, hit) in hits.iter().enumerate() {
            let at = files
                .iter()
                .position(|f| f.canonicalize().unwrap() == Path::new(hit["path"].as_str().unwrap()))
                .unwrap();
            let want = dot(&query, &images[at]);
            let got = hit["score"].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-5,
                "{args:?} hit {i}: {got} vs {want}"
            );
            if i > 0 {
                assert!(got <= hits[i - 1]["score"].as_f64().unwrap());
            }
        }
    }

    // The server: the same answers.
    let server = Server::start(&index);
    let target = format!(
        "/search?k=8&q={}&add={}&subtract={}",
        percent_encoded("一只小猫"),
        percent_encoded("夜晚"),
        percent_encoded("室内")
    );
    let (code, answer) = server.get(&target);
    assert_eq!(code, 200, "{answer}");
    let want = cli(&["--add", "夜晚", "--subtract", "室内", "--", "一只小猫"]);
    assert_eq!(answer["hits"].as_array().unwrap(), &want);
    let (code, answer) = server.post(
        &format!("/search?k=8&add={}", percent_encoded("夜晚")),
        &std::fs::read(&files[0]).unwrap(),
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        answer["hits"].as_array().unwrap(),
        &cli(&["--image", image0, "--add", "夜晚"])
    );
    let (code, answer) = server.get(&format!(
        "/similar?k=8&path={}&subtract={}",
        percent_encoded(image0),
        percent_encoded("室内")
    ));
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        answer["hits"].as_array().unwrap(),
        &cli(&["--similar", image0, "--subtract", "室内"])
    );
    // Only hits scoring at least a bar: the full ranking cut there, from the CLI and the server.
    let all = cli(&["--similar", image0]);
    let bar = all[4]["score"].as_f64().unwrap();
    let above: Vec<Value> = (all.iter())
        .filter(|h| h["score"].as_f64().unwrap() >= bar as f32 as f64)
        .cloned()
        .collect();
    let bar_arg = format!("{bar}");
    let cut = cli(&["--similar", image0, "--min-score", &bar_arg]);
    assert!(cut.len() >= 5 && cut.len() < 8, "{cut:?}");
    assert_eq!(cut, above);
    let (code, answer) = server.get(&format!(
        "/similar?k=8&path={}&min_score={bar_arg}",
        percent_encoded(image0)
    ));
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["hits"].as_array().unwrap(), &cut);
    for bad in ["1.5", "-2", "x"] {
        let (code, answer) = server.get(&format!("/search?q=a&min_score={bad}"));
        assert!(
            code == 400 && answer["error"].as_str().unwrap().contains("cosine"),
            "{bad}"
        );
        let out = bin("cnclip-search")
            .arg("--index")
            .arg(&index)
            .args(["--min-score", bad, "a"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("cosine"),
            "{bad}: {stderr}"
        );
    }
    let (code, answer) = server.get("/search?q=a&add=+");
    assert_eq!(code, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("add text is empty"),
        "{answer}"
    );
    // A text minus itself leaves nothing to search with: said, not answered with noise.
    let out = bin("cnclip-search")
        .arg("--index")
        .arg(&index)
        .args(["--subtract", "夜晚", "夜晚"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("zero"), "{stderr}");
}

#[test]
fn the_search_page_shows_thumbnails_upright() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    let small = make_corpus(&photos, 1, 96).remove(0);
    // Stored 96 × 64 with EXIF orientation 6: upright it is 64 × 96.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cnclip-model/tests/fixtures");
    let sideways = photos.join("sideways.jpg");
    std::fs::copy(fixtures.join("preprocess/exif_6.jpg"), &sideways).unwrap();
    // A 3-MP photo: decoded at reduced scale for its thumbnail.
    let big = photos.join("big.jpg");
    picture(7, 2000, 1500).save(&big).unwrap();
    let index = tmp.path().join("index");
    build(&photos, &index, "vit_tiny.pt");
    let server = Server::start(&index);
    let mean = |img: &image::RgbImage| {
        let sum: u64 = img
            .pixels()
            .map(|p| p.0.iter().map(|&c| c as u64).sum::<u64>())
            .sum();
        sum as f64 / (3 * img.width() * img.height()) as f64
    };
    for (photo, size) in [
        (&small, (96, 72)),
        (&sideways, (64, 96)),
        (&big, (360, 270)),
    ] {
        let path = photo.canonicalize().unwrap();
        let target = format!("/thumb?path={}", percent_encoded(path.to_str().unwrap()));
        let (code, head, jpeg) = server.bytes(&format!("GET {target} HTTP/1.1"), b"");
        assert!(
            code == 200 && head.contains("Content-Type: image/jpeg"),
            "{head}"
        );
        assert!(
            head.contains("Cache-Control: private, max-age=600"),
            "{head}"
        );
        let thumb = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg)
            .unwrap()
            .to_rgb8();
        assert_eq!(thumb.dimensions(), size, "{}", photo.display());
        let original = image::open(photo).unwrap().to_rgb8();
        assert!(
            (mean(&thumb) - mean(&original)).abs() < 4.0,
            "{}",
            photo.display()
        );
    }
    // The page asks for thumbnails, and only indexed photos have them; answers that may change
    // are not to be kept.
    let (_, head, page) = server.bytes("GET / HTTP/1.1", b"");
    assert!(!head.contains("Cache-Control"), "{head}");
    let (_, head, _) = server.bytes("GET /status HTTP/1.1", b"");
    assert!(!head.contains("Cache-Control"), "{head}");
    assert!(String::from_utf8(page).unwrap().contains("'/thumb?path='"));
    assert_eq!(server.get("/thumb?path=/etc/hostname").0, 404);
    assert_eq!(server.get("/thumb").0, 400);
}
