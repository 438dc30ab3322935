//! Parity with the official implementation: tiny random-weight checkpoints of every architecture
//! family, embedded by cn_clip 1.6.0 in float64 (`tools/gen_parity.py`), against our float32 model.
//!
//! Random weights make cosine similarity useless as a check (a GELU-for-QuickGELU swap still gives
//! 0.99998), so we compare the max |Δ| of normalised embeddings element by element. The reference's
//! own float32-vs-float64 error on these fixtures is ~1e-7; the bound below leaves room for a
//! different summation order and nothing more: real bugs give 3e-5 and up.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use cnclip_model::model::{l2_normalized, ChineseClip};
use cnclip_model::tokenizer::Tokenizer;
use serde::Deserialize;

/// Max |Δ| allowed between our normalised f32 embeddings and the reference's f64 ones.
const TOLERANCE: f32 = 2e-6;
/// Worst cosine allowed between `--quantize q8` embeddings and f32 ones (issue #5's bar).
const Q8_MIN_COSINE: f32 = 0.995;

#[derive(Deserialize)]
struct Expected {
    checkpoint: String,
    real_vocab: bool,
    context_length: usize,
    image_size: usize,
    n_images: usize,
    texts: Vec<String>,
    token_ids: Vec<Vec<u32>>,
    logit_scale: f64,
    image_features: Vec<Vec<f64>>,
    text_features: Vec<Vec<f64>>,
    reference_f32_vs_f64_max_abs: f64,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected(name: &str) -> Expected {
    expected_in(&fixtures(), name)
}

fn expected_in(dir: &Path, name: &str) -> Expected {
    let path = dir.join("parity").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The same pixels `tools/gen_parity.py::pixels` makes: x_i = ((i·2654435761) mod 2³²)/2³²·4 − 2.
fn pixels(n: usize, size: usize) -> Vec<Vec<f32>> {
    let per = 3 * size * size;
    (0..n)
        .map(|img| {
            (0..per)
                .map(|j| {
                    let i = (img * per + j) as u64;
                    let h = i.wrapping_mul(2_654_435_761) % (1u64 << 32);
                    (h as f64 / 4_294_967_296.0 * 4.0 - 2.0) as f32
                })
                .collect()
        })
        .collect()
}

fn max_abs_diff(ours: &[Vec<f32>], reference: &[Vec<f64>]) -> f32 {
    assert_eq!(ours.len(), reference.len());
    let mut worst = 0f32;
    for (a, b) in ours.iter().zip(reference) {
        let a = l2_normalized(a.clone());
        let b = l2_normalized(b.iter().map(|&x| x as f32).collect());
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

fn to_f64(rows: &[Vec<f32>]) -> Vec<Vec<f64>> {
    rows.iter()
        .map(|r| r.iter().map(|&x| x as f64).collect())
        .collect()
}

/// Smallest cosine between corresponding rows.
fn min_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let (x, y) = (l2_normalized(x.clone()), l2_normalized(y.clone()));
            x.iter().zip(&y).map(|(p, q)| p * q).sum::<f32>()
        })
        .fold(1.0, f32::min)
}

fn load(checkpoint: &str, dtype: DType) -> ChineseClip {
    load_from(&fixtures().join("models").join(checkpoint), dtype)
}

fn load_from(path: &Path, dtype: DType) -> ChineseClip {
    ChineseClip::load(path, &Device::Cpu, dtype)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check_family(name: &str) {
    check(&fixtures(), &fixtures().join("models"), name, true);
}

/// Compares one model against its reference file; `half` also runs the f16/bf16 checks.
fn check(dir: &Path, models: &Path, name: &str, half: bool) {
    let exp = expected_in(dir, name);
    let model = load_from(&models.join(&exp.checkpoint), DType::F32);
    assert_eq!(model.image_size(), exp.image_size);
    assert!((model.logit_scale() as f64 - exp.logit_scale).abs() < 1e-6);
    let texts: Vec<&str> = exp.texts.iter().map(String::as_str).collect();

    let images = model
        .encode_image_data(&pixels(exp.n_images, exp.image_size))
        .unwrap();
    let d_img = max_abs_diff(&images, &exp.image_features);

    // Token ids fully padded to the context, as cn_clip feeds them.
    let padded: Vec<u32> = exp.token_ids.iter().flatten().copied().collect();
    let ids = Tensor::from_vec(
        padded,
        (exp.token_ids.len(), exp.context_length),
        &Device::Cpu,
    )
    .unwrap();
    let full: Vec<Vec<f32>> = model.encode_token_ids(&ids).unwrap().to_vec2().unwrap();
    let d_txt = max_abs_diff(&full, &exp.text_features);
    eprintln!(
        "{name}: max |Δ| image {d_img:.3e}, text {d_txt:.3e} (reference f32 vs f64: {:.3e})",
        exp.reference_f32_vs_f64_max_abs
    );
    assert!(
        d_img <= TOLERANCE,
        "{name}: image embeddings differ by {d_img:.3e}"
    );
    assert!(
        d_txt <= TOLERANCE,
        "{name}: text embeddings differ by {d_txt:.3e}"
    );

    if exp.real_vocab {
        // Same ids as cn_clip.clip.tokenize, and the trimmed batch path gives the same features
        // (not bit for bit: GEMM blocking may change with the length; float noise only).
        let tok = Tokenizer::chinese();
        for (text, ids) in texts.iter().zip(&exp.token_ids) {
            assert_eq!(
                &tok.encode(text, exp.context_length).unwrap(),
                ids,
                "token ids of {text:?}"
            );
        }
        let trimmed = model
            .encode_texts_with_context(&texts, exp.context_length)
            .unwrap();
        let d_trim = max_abs_diff(&trimmed, &exp.text_features);
        assert!(
            d_trim <= TOLERANCE,
            "{name}: trimmed text features differ by {d_trim:.3e}"
        );
        // One text at a time, as a search query is encoded: a handful of tokens runs on the
        // few-row kernel and the spinning team (`model::team`) instead of the batch path.
        for (text, want) in texts.iter().zip(&exp.text_features) {
            let alone = model
                .encode_texts_with_context(&[*text], exp.context_length)
                .unwrap();
            let d_alone = max_abs_diff(&alone, std::slice::from_ref(want));
            assert!(
                d_alone <= TOLERANCE,
                "{name}: {text:?} encoded alone differs by {d_alone:.3e}"
            );
        }
    }

    // 8-bit weights (`--quantize q8`): the bar is a worst-case cosine of 0.995 to the
    // f32 embeddings. Every transformer linear layer of every fixture is quantized.
    let q8 = model.quantize().unwrap();
    assert!(q8.is_quantized());
    let q_img = q8
        .encode_image_data(&pixels(exp.n_images, exp.image_size))
        .unwrap();
    let q_txt: Vec<Vec<f32>> = q8.encode_token_ids(&ids).unwrap().to_vec2().unwrap();
    let worst = min_cosine(&q_img, &images).min(min_cosine(&q_txt, &full));
    let moved = max_abs_diff(&q_img, &to_f64(&images)).max(max_abs_diff(&q_txt, &to_f64(&full)));
    eprintln!("{name}: q8 worst cosine to f32 {worst:.6}, max |Δ| {moved:.2e}");
    assert!(worst >= Q8_MIN_COSINE, "{name}: q8 cosine {worst}");
    // The weights really are 8-bit: outputs move well beyond f32 rounding (~1e-7).
    assert!(
        moved > 1e-5,
        "{name}: q8 output equals f32 ({moved:.2e}): not quantized?"
    );

    if !half {
        return;
    }
    // Half precision never gives NaN and stays close.
    for dtype in [DType::F16, DType::BF16] {
        let half = load_from(&models.join(&exp.checkpoint), dtype);
        let img = half.encode_image_data(&pixels(1, exp.image_size)).unwrap();
        let txt: Vec<Vec<f32>> = half.encode_token_ids(&ids).unwrap().to_vec2().unwrap();
        for row in img.iter().chain(&txt) {
            assert!(
                row.iter().all(|x| x.is_finite()),
                "{name} {dtype:?}: non-finite output"
            );
        }
        let d = max_abs_diff(&txt, &exp.text_features);
        assert!(d < 0.05, "{name} {dtype:?}: text features off by {d}");
    }
}

#[test]
fn vit_matches_cn_clip() {
    check_family("vit_tiny");
}

#[test]
fn vit_336_matches_cn_clip() {
    check_family("vit336_tiny");
}

#[test]
fn resnet_matches_cn_clip() {
    check_family("rn_tiny");
}

#[test]
fn vit_head_width_80_hf_layout_matches_cn_clip() {
    check_family("hf_vit_h80_tiny");
}

#[test]
fn vit_safetensors_micro_matches_cn_clip() {
    check_family("vit_micro");
}

#[test]
fn zero_shot_probabilities_sum_to_one_and_follow_similarity() {
    let exp = expected("vit_tiny");
    let model = load(&exp.checkpoint, DType::F32);
    let labels = ["杰尼龟", "妙蛙种子", "小火龙", "皮卡丘"];
    let images = pixels(2, exp.image_size);
    let probs = model.classify(&images, &labels).unwrap();
    let feats = model.encode_image_data(&images).unwrap();
    let logits = model.similarity(&feats, &model.encode_texts(&labels).unwrap());
    for (p, l) in probs.iter().zip(&logits) {
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
        assert_eq!(argmax(p), argmax(l));
    }
    assert!(model.classify(&images, &[]).is_err());
}

/// Full-size parity for the five official architectures (random weights, official shapes), run
/// locally: see `tools/gen_fullsize.py`. Set `CNCLIP_FULL_PARITY_DIR` to its output directory.
#[test]
#[ignore = "needs multi-GB checkpoints made by tools/gen_fullsize.py"]
fn full_size_models_match_cn_clip() {
    let dir =
        PathBuf::from(std::env::var("CNCLIP_FULL_PARITY_DIR").expect("CNCLIP_FULL_PARITY_DIR"));
    let only = std::env::var("CNCLIP_FULL_PARITY_ONLY").ok();
    let mut names: Vec<String> = std::fs::read_dir(dir.join("parity"))
        .unwrap()
        .filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(str::to_owned))
        .filter(|n| only.as_deref().is_none_or(|o| o == n))
        .collect();
    names.sort();
    assert!(!names.is_empty());
    for name in names {
        check(&dir, &dir, &name, false);
    }
}
