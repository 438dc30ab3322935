//! End-to-end tests of `cnclip eval`: small datasets written in the official formats, scored by
//! the real binary and, independently, by this file from `cnclip embed --json` embeddings with
//! the protocol of cn_clip's `eval/` scripts re-implemented here.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Output;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};

mod common;
use common::{cnclip, json_lines};

fn model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cnclip-model/tests/fixtures/models/vit_tiny.pt")
        .display()
        .to_string()
}

fn stderr_of_failure(out: &Output) -> String {
    assert!(!out.status.success(), "cnclip should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A PNG whose content depends on `seed`, in a size that needs resizing.
fn png_bytes(seed: u32) -> Vec<u8> {
    let (w, h) = (40 + seed % 5 * 9, 36 + seed % 3 * 11);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let v = |a: u32, b: u32| ((x * a + y * b + seed * 37) % 256) as u8;
        image::Rgb([v(3 + seed, 7), v(11, 2 + seed * 3), v(seed % 7 + 1, 5)])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// cn_clip's `_preprocess_text`, written independently of the crate's.
fn cn_clip_preprocess_text(t: &str) -> String {
    t.to_lowercase().replace(['“', '”'], "\"")
}

/// Normalised embeddings from `cnclip embed --json`: texts, then images.
fn embed(texts: &[String], images: &[PathBuf]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let m = model();
    let mut args: Vec<String> = vec!["embed".into(), "--json".into(), "--model".into(), m];
    for t in texts {
        args.extend(["--text".into(), t.clone()]);
    }
    for p in images {
        args.extend(["--image".into(), p.display().to_string()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let lines = json_lines(&cnclip(&refs));
    assert_eq!(lines.len(), texts.len() + images.len());
    let vecs: Vec<Vec<f32>> = lines
        .iter()
        .map(|l| {
            l["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let (t, i) = vecs.split_at(texts.len());
    (t.to_vec(), i.to_vec())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Candidate indices by descending score, ties in candidate order (Python's stable sort).
fn ranked(query: &[f32], candidates: &[Vec<f32>]) -> Vec<usize> {
    let scores: Vec<f32> = candidates.iter().map(|c| dot(query, c)).collect();
    let mut idx: Vec<usize> = (0..candidates.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    idx
}

/// `evaluation.py`'s scoring: `[R@1, R@5, R@10]` in percent.
fn official_recall<T: PartialEq>(truth: &[Vec<T>], top10: &[Vec<T>]) -> [f64; 3] {
    let mut out = [0.0; 3];
    for (o, k) in out.iter_mut().zip([1, 5, 10]) {
        let hits = truth
            .iter()
            .zip(top10)
            .filter(|(gt, pred)| gt.iter().any(|g| pred[..k.min(pred.len())].contains(g)))
            .count();
        *o = hits as f64 * 100.0 / truth.len() as f64;
    }
    out
}

fn recall_of(v: &Value) -> [f64; 3] {
    [
        v["R@1"].as_f64().unwrap(),
        v["R@5"].as_f64().unwrap(),
        v["R@10"].as_f64().unwrap(),
    ]
}

fn assert_close(a: [f64; 3], b: [f64; 3], what: &str) {
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-9, "{what}: {a:?} != {b:?}");
    }
}

struct Retrieval {
    dir: tempfile::TempDir,
    image_ids: Vec<i64>,
    image_files: Vec<PathBuf>,
    texts: Vec<(i64, String, Vec<i64>)>,
}

/// 24 images (four listed by no text, so not image→text queries) and 18 texts, some with two
/// ground-truth images and some images described by two texts. The TSV alternates URL-safe unpadded and standard padded
/// base64.
fn retrieval_dataset() -> Retrieval {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let mut tsv = String::new();
    let mut image_ids = Vec::new();
    let mut image_files = Vec::new();
    for i in 0..24u32 {
        let id = 1000 + i64::from(i) * 7;
        let bytes = png_bytes(i);
        let b64 = if i % 2 == 0 {
            URL_SAFE_NO_PAD.encode(&bytes)
        } else {
            STANDARD.encode(&bytes)
        };
        tsv.push_str(&format!("{id}\t{b64}\n"));
        let f = files.join(format!("{id}.png"));
        std::fs::write(&f, &bytes).unwrap();
        image_ids.push(id);
        image_files.push(f);
    }
    let words = [
        "一只小猫在沙发上睡觉",
        "红色的汽车停在路边",
        "海边的日落",
        "两个孩子在公园踢足球",
        "一碗热腾腾的牛肉面",
        "雪山下的湖泊",
        "穿“白色”连衣裙的女孩",
        "Apple手机放在木桌上",
        "夜晚城市的霓虹灯",
        "一只金毛犬叼着飞盘",
        "春天盛开的樱花",
        "老人在河边钓鱼",
        "篮球比赛的精彩瞬间",
        "一杯拿铁咖啡",
        "古老的石桥",
        "草原上奔跑的骏马",
        "下雨天撑伞的行人",
        "桌上的生日蛋糕",
    ];
    let mut texts = Vec::new();
    let mut jsonl = String::new();
    for (t, w) in words.iter().enumerate() {
        let text_id = 500 + t as i64;
        let mut gt = vec![image_ids[t]];
        if t % 3 == 0 {
            gt.push(image_ids[t + 5]); // a second image; image t+5 then has two texts
        }
        if t == 17 {
            gt.push(image_ids[22]);
        }
        jsonl.push_str(&format!(
            "{}\n",
            json!({"text_id": text_id, "text": w, "image_ids": gt})
        ));
        texts.push((text_id, (*w).to_owned(), gt));
    }
    std::fs::write(dir.path().join("valid_imgs.tsv"), tsv).unwrap();
    std::fs::write(dir.path().join("valid_texts.jsonl"), jsonl).unwrap();
    Retrieval {
        dir,
        image_ids,
        image_files,
        texts,
    }
}

fn run_retrieval(data: &Path, extra: &[&str]) -> Output {
    let m = model();
    let d = data.display().to_string();
    let mut args = vec![
        "eval",
        "retrieval",
        "--json",
        "--model",
        &m,
        "--data",
        &d,
        "--split",
        "valid",
        "--batch-size",
        "5",
    ];
    args.extend(extra);
    cnclip(&args)
}

#[test]
fn retrieval_recall_equals_the_official_protocol_on_the_same_embeddings() {
    let ds = retrieval_dataset();
    let pred = ds.dir.path().join("pred.jsonl");
    let pred_tr = ds.dir.path().join("pred.tr.jsonl");
    let out = run_retrieval(
        ds.dir.path(),
        &[
            "--predictions",
            pred.to_str().unwrap(),
            "--predictions-tr",
            pred_tr.to_str().unwrap(),
        ],
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "one JSON line");
    let report = &lines[0];

    // Independent computation: embeddings from `cnclip embed`, protocol from cn_clip's scripts.
    let texts: Vec<String> = ds
        .texts
        .iter()
        .map(|(_, t, _)| cn_clip_preprocess_text(t))
        .collect();
    let (tv, iv) = embed(&texts, &ds.image_files);

    // make_topk_predictions.py + evaluation.py.
    let t2i_top10: Vec<Vec<i64>> = tv
        .iter()
        .map(|q| {
            ranked(q, &iv)[..10]
                .iter()
                .map(|&p| ds.image_ids[p])
                .collect()
        })
        .collect();
    let t2i_truth: Vec<Vec<i64>> = ds.texts.iter().map(|(_, _, g)| g.clone()).collect();
    let t2i = official_recall(&t2i_truth, &t2i_top10);

    // transform_ir_annotation_to_tr.py + make_topk_predictions_tr.py + evaluation_tr.py.
    let mut tr: HashMap<i64, Vec<i64>> = HashMap::new();
    for (tid, _, gt) in &ds.texts {
        for g in gt {
            tr.entry(*g).or_default().push(*tid);
        }
    }
    let mut i2t_truth = Vec::new();
    let mut i2t_top10 = Vec::new();
    for (p, id) in ds.image_ids.iter().enumerate() {
        if let Some(tids) = tr.get(id) {
            i2t_truth.push(tids.clone());
            i2t_top10.push(
                ranked(&iv[p], &tv)[..10]
                    .iter()
                    .map(|&t| ds.texts[t].0)
                    .collect::<Vec<_>>(),
            );
        }
    }
    assert_eq!(
        i2t_truth.len(),
        20,
        "images 18, 19, 21 and 23 are listed by no text"
    );
    let i2t = official_recall(&i2t_truth, &i2t_top10);

    assert_close(recall_of(&report["t2i"]), t2i, "t2i");
    assert_close(recall_of(&report["i2t"]), i2t, "i2t");
    let mr = (t2i.iter().sum::<f64>() + i2t.iter().sum::<f64>()) / 6.0;
    assert!((report["MR"].as_f64().unwrap() - mr).abs() < 1e-9);
    assert_eq!(report["texts"], 18);
    assert_eq!(report["images"], 24);
    assert_eq!(report["backend"], "exact");
    // The tiny random model must not make the comparison vacuous.
    assert!(t2i[0] < 100.0 && t2i[2] > t2i[0], "t2i {t2i:?}");

    // The prediction files are the official format, and scoring them gives the same recall.
    let pred_lines: Vec<Value> = std::fs::read_to_string(&pred)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(pred_lines.len(), 18);
    let mut file_top10 = Vec::new();
    for (line, (tid, _, _)) in pred_lines.iter().zip(&ds.texts) {
        assert_eq!(line.as_object().unwrap().len(), 2);
        assert_eq!(line["text_id"].as_i64(), Some(*tid));
        let ids: Vec<i64> = line["image_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().expect("integer ids, as the scorer demands"))
            .collect();
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 10);
        file_top10.push(ids);
    }
    assert_eq!(file_top10, t2i_top10);
    assert_close(official_recall(&t2i_truth, &file_top10), t2i, "scored file");
    let tr_lines: Vec<Value> = std::fs::read_to_string(&pred_tr)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tr_lines.len(), 20);
    let tr_top10: Vec<Vec<i64>> = tr_lines
        .iter()
        .map(|l| {
            l["text_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(tr_top10, i2t_top10);
}

#[test]
fn hnsw_backend_reports_itself_beside_exact_search() {
    let ds = retrieval_dataset();
    let exact = &json_lines(&run_retrieval(ds.dir.path(), &[]))[0];
    let hnsw = &json_lines(&run_retrieval(ds.dir.path(), &["--index-backend", "hnsw"]))[0];
    assert_eq!(hnsw["backend"], "hnsw");
    for dir in ["t2i", "i2t"] {
        assert_close(
            recall_of(&hnsw["exact"][dir]),
            recall_of(&exact[dir]),
            "exact inside hnsw",
        );
        // 24 points with ef_search 200: the graph search visits everything, so it is exact.
        assert_close(recall_of(&hnsw[dir]), recall_of(&exact[dir]), "hnsw");
    }
    assert!(hnsw["graph_seconds"].as_f64().is_some());
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn malformed_text_line_is_an_error_naming_the_line() {
    let ds = retrieval_dataset();
    let p = ds.dir.path().join("valid_texts.jsonl");
    let text = std::fs::read_to_string(&p).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = "{\"text_id\": \"x\", \"text\": \"坏\"}";
    write(&p, &lines.join("\n"));
    let err = stderr_of_failure(&run_retrieval(ds.dir.path(), &[]));
    assert!(err.contains("valid_texts.jsonl:3"), "{err}");
}

#[test]
fn bad_base64_is_an_error_naming_the_line() {
    let ds = retrieval_dataset();
    let p = ds.dir.path().join("valid_imgs.tsv");
    let text = std::fs::read_to_string(&p).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[1] = "1007\t!!!not*base64!!!".into();
    write(&p, &lines.join("\n"));
    let err = stderr_of_failure(&run_retrieval(ds.dir.path(), &[]));
    assert!(err.contains("valid_imgs.tsv:2"), "{err}");
    assert!(err.contains("base64"), "{err}");
}

#[test]
fn undecodable_image_is_an_error_naming_the_line_and_id() {
    let ds = retrieval_dataset();
    let p = ds.dir.path().join("valid_imgs.tsv");
    let text = std::fs::read_to_string(&p).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[3] = format!("1021\t{}", STANDARD.encode(b"this is not an image at all"));
    write(&p, &lines.join("\n"));
    let err = stderr_of_failure(&run_retrieval(ds.dir.path(), &[]));
    assert!(err.contains("valid_imgs.tsv:4"), "{err}");
    assert!(err.contains("image_id 1021"), "{err}");
}

#[test]
fn ground_truth_missing_from_the_images_file_is_an_error() {
    let ds = retrieval_dataset();
    let p = ds.dir.path().join("valid_texts.jsonl");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str("{\"text_id\": 9999, \"text\": \"不存在\", \"image_ids\": [42]}\n");
    write(&p, &text);
    let err = stderr_of_failure(&run_retrieval(ds.dir.path(), &[]));
    assert!(err.contains("image_id 42"), "{err}");
}

struct Folder {
    dir: tempfile::TempDir,
    labels: PathBuf,
    /// Class index and file of every image.
    samples: Vec<(usize, PathBuf)>,
}

/// Six classes created out of order (sorted folder order is the class index), two or three
/// images each, one in a nested folder, plus a file ImageFolder ignores.
fn image_folder() -> Folder {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("imgs");
    // (folder, label); sorted folder order: 00_cat 01_dog 02_car 03_cake 04_sea 05_tree.
    let classes = [
        ("03_cake", "蛋糕"),
        ("00_cat", "猫"),
        ("05_tree", "树"),
        ("01_dog", "狗"),
        ("04_sea", "大海"),
        ("02_car", "汽车"),
    ];
    let mut sorted = classes.to_vec();
    sorted.sort();
    let mut samples = Vec::new();
    let mut seed = 100;
    for (folder, _) in &classes {
        let idx = sorted.iter().position(|(f, _)| f == folder).unwrap();
        let d = root.join(folder);
        std::fs::create_dir_all(d.join("more")).unwrap();
        for j in 0..2 + idx % 2 {
            let p = if j == 2 {
                d.join("more").join("x.PNG")
            } else {
                d.join(format!("{j}.png"))
            };
            std::fs::write(&p, png_bytes(seed)).unwrap();
            seed += 1;
            samples.push((idx, p));
        }
        write(&d.join("notes.txt"), "not an image");
    }
    let labels = dir.path().join("label_cn.txt");
    let text: Vec<&str> = sorted.iter().map(|(_, l)| *l).collect();
    write(&labels, &(text.join("\n") + "\n"));
    Folder {
        dir,
        labels,
        samples,
    }
}

fn run_zeroshot(f: &Folder, extra: &[&str]) -> Output {
    let m = model();
    let d = f.dir.path().join("imgs").display().to_string();
    let l = f.labels.display().to_string();
    let mut args = vec![
        "eval",
        "zeroshot",
        "--json",
        "--model",
        &m,
        "--data",
        &d,
        "--labels",
        &l,
        "--batch-size",
        "4",
    ];
    args.extend(extra);
    cnclip(&args)
}

#[test]
fn zeroshot_accuracy_equals_the_official_ensembling_on_the_same_embeddings() {
    let f = image_folder();
    let templates = ["一张{}的照片。", "{}的特写。", "A photo of “{}”"];
    let tpath = f.dir.path().join("templates.txt");
    write(&tpath, &format!("# comment\n{}\n", templates.join("\n")));
    let out = run_zeroshot(&f, &["--templates", tpath.to_str().unwrap()]);
    let report = &json_lines(&out)[0];

    let labels: Vec<String> = std::fs::read_to_string(&f.labels)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let prompts: Vec<String> = labels
        .iter()
        .flat_map(|l| {
            templates
                .iter()
                .map(move |t| cn_clip_preprocess_text(&t.replace("{}", l)))
        })
        .collect();
    let files: Vec<PathBuf> = f.samples.iter().map(|(_, p)| p.clone()).collect();
    let (tv, iv) = embed(&prompts, &files);
    // zero_shot_classifier: normalise (done by embed), mean over templates, renormalise.
    let classifier: Vec<Vec<f32>> = tv
        .chunks(templates.len())
        .map(|rows| {
            let mut m = vec![0f32; rows[0].len()];
            for r in rows {
                for (a, b) in m.iter_mut().zip(r) {
                    *a += b;
                }
            }
            m.iter_mut().for_each(|a| *a /= rows.len() as f32);
            let n = dot(&m, &m).sqrt();
            m.into_iter().map(|a| a / n).collect()
        })
        .collect();
    let (mut top1, mut top5) = (0, 0);
    for ((target, _), v) in f.samples.iter().zip(&iv) {
        let r = ranked(v, &classifier);
        top1 += usize::from(r[0] == *target);
        top5 += usize::from(r[..5].contains(target));
    }
    let n = f.samples.len() as f64;
    assert_eq!(report["n"], 15);
    assert_eq!(report["classes"], 6);
    assert_eq!(report["templates"], 3);
    assert!((report["top1"].as_f64().unwrap() - top1 as f64 * 100.0 / n).abs() < 1e-9);
    assert!((report["top5"].as_f64().unwrap() - top5 as f64 * 100.0 / n).abs() < 1e-9);
    assert!(top5 < 15, "top-5 must not be trivially everything here");
}

#[test]
fn zeroshot_runs_with_the_built_in_templates() {
    let f = image_folder();
    let report = &json_lines(&run_zeroshot(&f, &[]))[0];
    assert_eq!(report["n"], 15);
    assert!(report["templates"].as_u64().unwrap() >= 36);
    let top1 = report["top1"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&top1));
}

#[test]
fn zeroshot_label_count_must_match_the_class_folders() {
    let f = image_folder();
    write(&f.labels, "猫\n狗\n");
    let err = stderr_of_failure(&run_zeroshot(&f, &[]));
    assert!(
        err.contains("2 labels") && err.contains("6 class folders"),
        "{err}"
    );
}

#[test]
fn zeroshot_undecodable_image_is_an_error_naming_the_file() {
    let f = image_folder();
    let bad = f.dir.path().join("imgs/02_car/broken.jpg");
    write(&bad, "not a jpeg");
    let err = stderr_of_failure(&run_zeroshot(&f, &[]));
    assert!(err.contains("broken.jpg"), "{err}");
}

#[test]
fn missing_split_file_is_reported_before_the_model_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("test_texts.jsonl"), "");
    let d = dir.path().display().to_string();
    let out = cnclip(&[
        "eval",
        "retrieval",
        "--model",
        "/nonexistent/model.pt",
        "--data",
        &d,
        "--split",
        "test",
    ]);
    let err = stderr_of_failure(&out);
    assert!(err.contains("test_imgs.tsv"), "{err}");
    assert!(!err.contains("model.pt"), "{err}");
}
