//! End-to-end tests of the `cnclip` binary: the real executable, spawned on the tiny
//! random-weight fixtures, checked against the output contracts and against the reference
//! embeddings computed by cn_clip (`tools/gen_parity.py`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;
use common::{cnclip, json_lines};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cnclip-model/tests/fixtures")
}

fn model(name: &str) -> String {
    fixtures().join("models").join(name).display().to_string()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn normalized(v: &[f64]) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn write_png(dir: &Path, name: &str, w: u32, h: u32) -> PathBuf {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 13 % 256) as u8,
            ((x + y) * 3 % 256) as u8,
        ])
    });
    let path = dir.join(name);
    img.save(&path).unwrap();
    path
}

#[test]
fn embed_json_texts_match_cn_clip_and_come_before_images() {
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("parity/vit_tiny.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = write_png(dir.path(), "a.png", 40, 30);
    let texts: Vec<&str> = expected["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let mut args = vec!["embed", "--json"];
    let m = model("vit_tiny.pt");
    args.extend(["--model", m.as_str(), "--image", img.to_str().unwrap()]);
    for t in &texts {
        args.extend(["--text", t]);
    }
    let lines = json_lines(&cnclip(&args));
    assert_eq!(lines.len(), texts.len() + 1);
    for (i, line) in lines.iter().enumerate() {
        let e = floats(&line["embedding"]);
        assert_eq!(e.len(), 64);
        let norm = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "line {i} not normalised: {norm}");
        if i < texts.len() {
            assert_eq!(line["kind"], "text");
            assert_eq!(line["input"], texts[i]);
            let reference = normalized(&floats(&expected["text_features"][i]));
            let worst = e
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(worst < 2e-6, "text {i} differs from cn_clip by {worst}");
        } else {
            assert_eq!(line["kind"], "image");
            assert_eq!(line["input"], img.display().to_string());
        }
    }
}

#[test]
fn classify_json_gives_one_probability_per_label_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let img = write_png(dir.path(), "p.png", 64, 64);
    let labels = ["杰尼龟", "妙蛙种子", "小火龙", "皮卡丘"];
    let m = model("vit_tiny.pt");
    let mut args = vec![
        "classify",
        "--json",
        "--model",
        m.as_str(),
        img.to_str().unwrap(),
    ];
    args.extend(labels);
    let lines = json_lines(&cnclip(&args));
    assert_eq!(lines.len(), 4);
    let mut sum = 0.0;
    for (line, label) in lines.iter().zip(labels) {
        assert_eq!(line["label"], label);
        let p = line["prob"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p));
        sum += p;
    }
    assert!((sum - 1.0).abs() < 1e-5);
}

#[test]
fn tokenize_reads_json_strings_from_stdin() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_cnclip"))
        .args(["tokenize", "--json", "--context-length", "8"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all("\"一只小猫\"\n\"\"\n\"北京天安门广场上的人群\"\n".as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let lines = json_lines(&out);
    let ids: Vec<Vec<u64>> = lines
        .iter()
        .map(|l| {
            l["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect()
        })
        .collect();
    // Ids from cn_clip.clip.tokenize(..., context_length=8).
    assert_eq!(ids[0], [101, 671, 1372, 2207, 4344, 102, 0, 0]);
    assert_eq!(ids[1], [101, 102, 0, 0, 0, 0, 0, 0]);
    assert_eq!(ids[2].len(), 8);
    assert_eq!((ids[2][0], ids[2][7]), (101, 102));
    assert_eq!(lines[2]["text"], "北京天安门广场上的人群");
}

#[test]
fn preprocess_json_has_chw_shape() {
    let dir = tempfile::tempdir().unwrap();
    let img = write_png(dir.path(), "x.png", 50, 20);
    let lines = json_lines(&cnclip(&[
        "preprocess",
        "--size",
        "32",
        "--json",
        img.to_str().unwrap(),
    ]));
    assert_eq!(lines[0]["shape"], serde_json::json!([3, 32, 32]));
    assert_eq!(lines[0]["data"].as_array().unwrap().len(), 3 * 32 * 32);
}

#[test]
fn convert_writes_a_checkpoint_that_embeds_identically() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("converted");
    let m = model("vit_tiny.pt");
    let r = cnclip(&[
        "convert",
        "--model",
        m.as_str(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let a = json_lines(&cnclip(&[
        "embed",
        "--json",
        "--model",
        &m,
        "--text",
        "一只小猫",
    ]));
    let b = json_lines(&cnclip(&[
        "embed",
        "--json",
        "--model",
        out.to_str().unwrap(),
        "--text",
        "一只小猫",
    ]));
    assert_eq!(a[0]["embedding"], b[0]["embedding"]);
}

#[test]
fn bad_inputs_fail_with_a_message_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.jpg");
    std::fs::write(&bad, b"this is not a jpeg").unwrap();
    let m = model("vit_tiny.pt");
    let out = cnclip(&["embed", "--model", &m, "--image", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.jpg"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = cnclip(&["embed", "--model", "ViT-Z-99", "--text", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ViT-B-16"),
        "unknown model error lists the zoo: {err}"
    );

    // A zoo name that is not cached, offline: says what to download and where.
    let out = cnclip(&["embed", "--model", "ViT-B-16", "--text", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("clip_cn_vit-b-16.pt"), "{err}");
}

#[test]
fn models_lists_the_five_official_models() {
    let lines = json_lines(&cnclip(&["models", "--json"]));
    let names: Vec<&str> = lines.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["RN50", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14"]
    );
    assert_eq!(lines[1]["parameters"], 188_262_913);
}
