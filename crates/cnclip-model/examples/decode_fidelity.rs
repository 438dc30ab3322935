//! Exact vs reduced-scale JPEG decoding ([`JpegDecode`]): time, pixels and embeddings, per photo.
//!
//! ```sh
//! python3 tools/gen_test_photos.py /tmp/photos          # 12-MP photo-like JPEGs
//! cargo run --release -p cnclip-model --example decode_fidelity -- \
//!     /tmp/cnclip-full/clip_cn_vit-b-16.pt /tmp/photos/*.jpg
//! ```
//!
//! For each photo: the reduction the scaled path chose, the time of decode + `image_transform` from
//! bytes in memory (median of `--runs`, default 5) on both paths, the max and mean |Δ| of the resized
//! 8-bit RGB pixels, and the cosine between the two image embeddings. `--no-model` skips the
//! embeddings (the checkpoint argument is then left out); `--size S` overrides the model's input size.
//! Pixel differences do not depend on the weights; cosines do (a random-weight checkpoint is more
//! sensitive to small pixel changes than a trained one, if anything).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use cnclip_model::model::ChineseClip;
use cnclip_model::preprocess::{
    load_image_from_memory, preprocess_bytes, resize_rgb8, JpegDecode, PreprocessOptions,
};

type Error = Box<dyn std::error::Error>;

struct Args {
    model: Option<PathBuf>,
    photos: Vec<PathBuf>,
    size: Option<usize>,
    runs: usize,
}

fn parse_args() -> Result<Args, Error> {
    let mut args = Args {
        model: None,
        photos: Vec::new(),
        size: None,
        runs: 5,
    };
    let mut no_model = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--no-model" => no_model = true,
            "--size" => args.size = Some(it.next().ok_or("--size needs a value")?.parse()?),
            "--runs" => args.runs = it.next().ok_or("--runs needs a value")?.parse()?,
            _ => args.photos.push(a.into()),
        }
    }
    if !no_model {
        if args.photos.is_empty() {
            return Err(
                "usage: decode_fidelity [--no-model] [--size S] [--runs N] CHECKPOINT PHOTO..."
                    .into(),
            );
        }
        args.model = Some(args.photos.remove(0));
    }
    if args.photos.is_empty() {
        return Err("no photos given".into());
    }
    Ok(args)
}

/// Median wall time of `runs` calls of `f`.
fn median_time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    let mut times: Vec<Duration> = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn main() -> Result<(), Error> {
    let args = parse_args()?;
    let model = match &args.model {
        Some(path) => Some(ChineseClip::load(path, &Device::Cpu, DType::F32)?),
        None => None,
    };
    let size = args
        .size
        .or(model.as_ref().map(ChineseClip::image_size))
        .unwrap_or(224);
    let exact = PreprocessOptions {
        size,
        ..PreprocessOptions::default()
    };
    let scaled = PreprocessOptions {
        jpeg_decode: JpegDecode::Scaled,
        ..exact.clone()
    };

    println!(
        "{:<34} {:>11} {:>3} {:>9} {:>9} {:>6} {:>5} {:>7} {:>20} {:>10}",
        "photo",
        "size",
        "1/r",
        "exact ms",
        "scaled ms",
        "ratio",
        "max",
        "mean",
        "bias R/G/B",
        "cosine"
    );
    let (mut t_exact, mut t_scaled) = (Duration::ZERO, Duration::ZERO);
    let (mut worst_cos, mut max_d, mut sum_mean) = (None::<f64>, 0u8, 0.0f64);
    for path in &args.photos {
        let bytes = std::fs::read(path)?;
        let name = path.display().to_string();
        let full = load_image_from_memory(&bytes, &name, &exact)?;
        let reduced = load_image_from_memory(&bytes, &name, &scaled)?;
        let a = resize_rgb8(&full, size);
        let b = resize_rgb8(&reduced, size);
        let diffs: Vec<u8> = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).collect();
        let max = diffs.iter().copied().max().unwrap_or(0);
        let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
        // Mean signed difference (scaled - exact) per channel: a bias shows here, noise does not.
        let bias: Vec<f64> = (0..3)
            .map(|c| {
                let s: i64 = a
                    .iter()
                    .zip(&b)
                    .skip(c)
                    .step_by(3)
                    .map(|(x, y)| i64::from(*y) - i64::from(*x))
                    .sum();
                s as f64 / (a.len() / 3) as f64
            })
            .collect();

        let te = median_time(args.runs, || {
            preprocess_bytes(&bytes, &name, &exact).unwrap()
        });
        let ts = median_time(args.runs, || {
            preprocess_bytes(&bytes, &name, &scaled).unwrap()
        });
        let cos = match &model {
            Some(model) => {
                let chw = [
                    preprocess_bytes(&bytes, &name, &exact)?,
                    preprocess_bytes(&bytes, &name, &scaled)?,
                ];
                let emb = model.encode_image_data(&chw)?;
                Some(cosine(&emb[0], &emb[1]))
            }
            None => None,
        };
        let short = path
            .file_name()
            .map_or(name.clone(), |n| n.to_string_lossy().into_owned());
        println!(
            "{:<34} {:>11} {:>3} {:>9.1} {:>9.1} {:>6.2} {:>5} {:>7.3} {:>20} {:>10}",
            short,
            format!("{}x{}", full.width(), full.height()),
            reduced.reduction(),
            te.as_secs_f64() * 1e3,
            ts.as_secs_f64() * 1e3,
            te.as_secs_f64() / ts.as_secs_f64(),
            max,
            mean,
            format!("{:+.2}/{:+.2}/{:+.2}", bias[0], bias[1], bias[2]),
            cos.map_or("-".to_owned(), |c| format!("{c:.6}"))
        );
        t_exact += te;
        t_scaled += ts;
        if let Some(c) = cos {
            worst_cos = Some(worst_cos.map_or(c, |w| w.min(c)));
        }
        max_d = max_d.max(max);
        sum_mean += mean;
    }
    let n = args.photos.len() as f64;
    println!(
        "mean: exact {:.1} ms, scaled {:.1} ms per photo ({:.2}x); pixels max |Δ| {max_d}, mean |Δ| {:.3}; worst cosine {}",
        t_exact.as_secs_f64() * 1e3 / n,
        t_scaled.as_secs_f64() * 1e3 / n,
        t_exact.as_secs_f64() / t_scaled.as_secs_f64(),
        sum_mean / n,
        worst_cos.map_or("- (no model)".to_owned(), |c| format!("{c:.6}"))
    );
    Ok(())
}
