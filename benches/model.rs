//! The towers at official size: ViT-B-16 image embedding at batch 1 and 8, and the text tower on a
//! short query. Weights are random with the official shapes (built in memory from the expected
//! tensor table, no file needed): speed does not depend on the values. For ratios against cn_clip
//! run `tools/bench_vs_reference.py`, which times both in one run.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
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
    let model = random_model(Preset::VitB16);
    let n = 3 * 224 * 224;
    let mut g = c.benchmark_group("vit-b-16");
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

criterion_group!(benches, towers);
criterion_main!(benches);
