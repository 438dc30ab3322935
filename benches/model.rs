//! The towers at official size — ViT-B-16 image embedding at batch 1 and 8 and the text tower on a
//! short query, in f32 and with 8-bit weights (`q8`) — and the hot paths inside them at ViT-B-16
//! shapes (197 tokens × 768): the linear layer (f32 GEMM with fused bias/GELU, the few-row f32
//! kernel a text query runs on, and the int8 kernel), fused attention, LayerNorm and QuickGELU.
//! Weights are random with the official shapes (built in memory from the expected tensor table,
//! no file needed): speed does not depend on the values. For ratios against cn_clip run
//! `tools/bench_vs_reference.py`, which times both in one run.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::collections::HashMap;

use candle_core::Module;
use candle_core::{DType, Device, Tensor};
use cnclip_model::model::ops::{self, Epilogue, Linear};
use cnclip_model::model::q8::{Kernel, QLinear};
use cnclip_model::model::ChineseClip;
use cnclip_model::weights::{expected_tensors, is_buffer};
use cnclip_model::Preset;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn random_model(preset: Preset) -> ChineseClip {
    let config = preset.config();
    let dev = Device::Cpu;
    let tensors: HashMap<String, Tensor> = expected_tensors(&config)
        .into_iter()
        .map(|(name, shape)| {
            let t = if name.ends_with("running_var") {
                Tensor::ones(shape.as_slice(), DType::F32, &dev).unwrap()
            } else if is_buffer(&name) || shape.is_empty() {
                Tensor::zeros(shape.as_slice(), DType::F32, &dev).unwrap()
            } else {
                Tensor::randn(0f32, 0.02, shape.as_slice(), &dev).unwrap()
            };
            (name, t)
        })
        .collect();
    ChineseClip::from_tensors(config, tensors, &dev, DType::F32).unwrap()
}

fn towers(c: &mut Criterion) {
    let f32_model = random_model(Preset::VitB16);
    let q8_model = f32_model.quantize().unwrap();
    let n = 3 * 224 * 224;
    for (name, model) in [("f32", &f32_model), ("q8", &q8_model)] {
        let mut g = c.benchmark_group(format!("vit-b-16 {name}"));
        g.sample_size(10);
        for batch in [1usize, 8] {
            let images: Vec<Vec<f32>> = (0..batch)
                .map(|b| {
                    (0..n)
                        .map(|i| ((b * n + i) % 251) as f32 / 125.0 - 1.0)
                        .collect()
                })
                .collect();
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_function(format!("image batch {batch}"), |b| {
                b.iter(|| model.encode_image_data(&images).unwrap())
            });
        }
        g.throughput(Throughput::Elements(1));
        g.bench_function("text short query", |b| {
            b.iter(|| {
                model
                    .encode_texts(&["穿红衣服的女孩在公园里放风筝"])
                    .unwrap()
            })
        });
        g.finish();
    }
}

/// `[rows, cols]` of deterministic values in about [-1, 1].
fn matrix(rows: usize, cols: usize, seed: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| ((i * 2654435761 + seed) % 1999) as f32 / 999.5 - 1.0)
        .collect()
}

fn hot_paths(c: &mut Criterion) {
    let dev = Device::Cpu;
    let (tokens, width) = (197, 768);
    let x = Tensor::from_vec(matrix(tokens, width, 1), (1, tokens, width), &dev).unwrap();
    let mut g = c.benchmark_group("hot paths");
    g.sample_size(20);
    for (name, out) in [("qkv 768→2304", 3 * width), ("mlp 768→3072", 4 * width)] {
        let w = Tensor::from_vec(matrix(out, width, 2), (out, width), &dev).unwrap();
        let b = Tensor::from_vec(matrix(1, out, 3), out, &dev).unwrap();
        let layer = Linear::from_weight(&(w * 0.02).unwrap(), Some(b)).unwrap();
        let q8 = layer.quantize().unwrap();
        g.throughput(Throughput::Elements((tokens * width * out) as u64));
        g.bench_function(format!("linear f32 {name}"), |bn| {
            bn.iter(|| layer.forward(&x).unwrap())
        });
        g.bench_function(format!("linear f32 {name} + QuickGELU"), |bn| {
            bn.iter(|| layer.forward_with(&x, Epilogue::QuickGelu).unwrap())
        });
        g.bench_function(format!("linear q8 {name}"), |bn| {
            bn.iter(|| q8.forward(&x).unwrap())
        });
    }
    // A text query's rows (8 tokens): the few-row f32 kernel. The weights (9.4 MB) stay in
    // cache here between iterations; the text tower bench above streams them from memory.
    let (rows, out) = (8, 4 * width);
    let w = Tensor::from_vec(matrix(out, width, 7), (out, width), &dev).unwrap();
    let b = Tensor::from_vec(matrix(1, out, 8), out, &dev).unwrap();
    let layer = Linear::from_weight(&(w * 0.02).unwrap(), Some(b)).unwrap();
    let xq = Tensor::from_vec(matrix(rows, width, 9), (1, rows, width), &dev).unwrap();
    g.throughput(Throughput::Elements((rows * width * out) as u64));
    g.bench_function("linear f32 8 rows 768→3072", |bn| {
        bn.iter(|| layer.forward(&xq).unwrap())
    });
    // The int8 kernel alone, on each kernel this CPU has.
    let (k, n) = (width, 4 * width);
    let q = QLinear::new(&matrix(n, k, 4), n, k);
    let xs = matrix(tokens, k, 5);
    let mut out = vec![0f32; tokens * n];
    g.throughput(Throughput::Elements((tokens * k * n) as u64));
    for kernel in Kernel::ALL.into_iter().filter(|k| k.supported()) {
        g.bench_function(format!("int8 kernel {kernel:?} 197×768→3072"), |bn| {
            bn.iter(|| q.matmul_with(&xs, None, &mut out, kernel))
        });
    }
    let qkv = Tensor::from_vec(matrix(tokens, 3 * width, 6), (1, tokens, 3 * width), &dev).unwrap();
    g.throughput(Throughput::Elements(tokens as u64));
    g.bench_function("fused attention 12 heads", |bn| {
        bn.iter(|| ops::fused_attention(&qkv, 12, None).unwrap())
    });
    let vb = candle_nn::VarBuilder::from_tensors(
        HashMap::from([
            (
                "weight".to_owned(),
                Tensor::ones(width, DType::F32, &dev).unwrap(),
            ),
            (
                "bias".to_owned(),
                Tensor::zeros(width, DType::F32, &dev).unwrap(),
            ),
        ]),
        DType::F32,
        &dev,
    );
    let ln = ops::LayerNorm::new(vb, width, 1e-5).unwrap();
    g.bench_function("layer norm 768", |bn| bn.iter(|| ln.forward(&x).unwrap()));
    g.bench_function("quick gelu", |bn| bn.iter(|| ops::quick_gelu(&x).unwrap()));
    g.finish();
}

criterion_group!(benches, towers, hot_paths);
criterion_main!(benches);
