//! Preprocessing speed on a 12-MP photo (4000 x 3000): the PIL-exact bicubic resize alone, JPEG
//! decoding alone, and the whole `image_transform` (decode + resize + normalize) of a JPEG, with
//! full-size decoding (`JpegDecode::Exact`, the default) and reduced-scale decoding
//! (`JpegDecode::Scaled`: 1/4 here). The JPEG is baseline 4:2:0 at quality 90, as most camera JPEGs
//! (`examples/decode_fidelity.rs` measures real-sized photo-like ones, with the embeddings).
//!
//! `cargo bench -p cnclip-model --bench preprocess`. For comparison, PIL on the same machine:
//! `Image.open(f).resize((224, 224), Image.BICUBIC).convert("RGB")` + ToTensor/Normalize.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use cnclip_model::preprocess::{
    load_image_from_memory, preprocess_bytes, resize_rgb8, JpegDecode, PixelMode,
    PreprocessOptions, SourceImage,
};
use criterion::{criterion_group, criterion_main, Criterion};
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

const W: u32 = 4000;
const H: u32 = 3000;

/// A photo-like RGB image: smooth gradients, a few hard edges and light noise.
fn photo() -> Vec<u8> {
    let mut data = Vec::with_capacity((W * H * 3) as usize);
    let mut s = 0x1234_5678u32;
    for y in 0..H {
        for x in 0..W {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let edge = if (x / 571 + y / 600) % 2 == 0 { 40 } else { 0 };
            let noise = s & 7;
            data.push((x * 200 / W + edge + noise) as u8);
            data.push((y * 200 / H + edge + (noise >> 1)) as u8);
            data.push(((x + y) * 100 / (W + H) + 60 + noise) as u8);
        }
    }
    data
}

fn bench(c: &mut Criterion) {
    let pixels = photo();
    let img = SourceImage::from_u8(W, H, PixelMode::Rgb, pixels.clone()).unwrap();
    let mut jpeg = Vec::new();
    let mut encoder = Encoder::new(&mut jpeg, 90);
    encoder.set_sampling_factor(SamplingFactor::R_4_2_0);
    encoder
        .encode(&pixels, W as u16, H as u16, ColorType::Rgb)
        .unwrap();
    let opts = PreprocessOptions::default();
    let scaled = PreprocessOptions {
        jpeg_decode: JpegDecode::Scaled,
        ..PreprocessOptions::default()
    };

    let mut group = c.benchmark_group("preprocess_12mp");
    group.sample_size(10);
    group.bench_function("resize_rgb8_224", |b| {
        b.iter(|| resize_rgb8(black_box(&img), 224))
    });
    group.bench_function("resize_rgb8_336", |b| {
        b.iter(|| resize_rgb8(black_box(&img), 336))
    });
    group.bench_function("decode_jpeg", |b| {
        b.iter(|| load_image_from_memory(black_box(&jpeg), "bench.jpg", &opts).unwrap())
    });
    group.bench_function("jpeg_to_tensor_224", |b| {
        b.iter(|| preprocess_bytes(black_box(&jpeg), "bench.jpg", &opts).unwrap())
    });
    group.bench_function("decode_jpeg_scaled_224", |b| {
        b.iter(|| load_image_from_memory(black_box(&jpeg), "bench.jpg", &scaled).unwrap())
    });
    group.bench_function("jpeg_to_tensor_224_scaled", |b| {
        b.iter(|| preprocess_bytes(black_box(&jpeg), "bench.jpg", &scaled).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
