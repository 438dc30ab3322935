//! Index benchmarks: HNSW query latency against an exact scan as the graph grows to 100 000
//! 512-d vectors (where the two cross is `GRAPH_MIN_VECTORS`), and a scan of the graph's points
//! confined to a tenth of them (a search in some folders), graph insertion throughput at
//! 100 000, and the whole build pipeline (walk, read, hash, decode, commit) with the fake model.
//! Also prints recall at each size, and bytes per image on disk and in RAM.
//!
//! `cargo bench -p cnclip-index --bench index`; `CNCLIP_BENCH_N=20000` for a quicker run.
//! The vectors are embedding-shaped (a random 32-dimensional subspace of R^512 plus isotropic noise
//! of 0.6 times the signal), as in `tests/recall.rs`.

#![allow(missing_docs)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use cnclip_index::graph::{FlatVectors, Graph, GraphParams};
use cnclip_index::{FakeEmbedder, GraphPolicy, ImageEmbedder, Index, Indexer, Silent};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const DIM: usize = 512;
const RANK: usize = 32;

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn normal(&mut self) -> f32 {
        let u = |r: &mut Rng| (r.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        let (u1, u2) = (u(self).max(1e-7), u(self));
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
}

struct Gen {
    rng: Rng,
    basis: Vec<Vec<f32>>,
}

impl Gen {
    fn new(seed: u64) -> Gen {
        let mut rng = Rng(seed);
        let basis = (0..RANK)
            .map(|_| {
                let mut v: Vec<f32> = (0..DIM).map(|_| rng.normal()).collect();
                cnclip_index::normalize(&mut v).unwrap();
                v
            })
            .collect();
        Gen { rng, basis }
    }

    fn vector(&mut self) -> Vec<f32> {
        let noise = 0.6 * (RANK as f32 / DIM as f32).sqrt();
        let mut v = vec![0f32; DIM];
        for b in &self.basis {
            let z = self.rng.normal();
            v.iter_mut().zip(b).for_each(|(x, y)| *x += z * y);
        }
        v.iter_mut().for_each(|x| *x += noise * self.rng.normal());
        cnclip_index::normalize(&mut v).unwrap();
        v
    }
}

fn n_max() -> usize {
    std::env::var("CNCLIP_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// Resident memory of this process, in bytes (Linux).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn queries_and_graph(c: &mut Criterion) {
    let n = n_max();
    let mut gen = Gen::new(1);
    let queries: Vec<Vec<f32>> = (0..200).map(|_| gen.vector()).collect();
    let data: Vec<Vec<f32>> = (0..n).map(|_| gen.vector()).collect();
    let params = GraphParams::default();
    let rss0 = rss();
    let mut g = Graph::new(params, n);
    let mut flat = FlatVectors::new(DIM);
    let mut group = c.benchmark_group("query_512d_k10");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    let mut done = 0;
    for size in [n / 8, n / 4, n / 2, n] {
        let t = Instant::now();
        let items: Vec<(u64, &[f32])> = (done..size)
            .map(|i| (i as u64, data[i].as_slice()))
            .collect();
        for chunk in items.chunks(4096) {
            g.insert(chunk);
        }
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "graph build {done} → {size}: {:.0} inserts/s (M {}, ef_c {})",
            (size - done) as f64 / secs,
            params.m,
            params.ef_construction
        );
        if size == n {
            let bytes = rss().saturating_sub(rss0) as f64 / n as f64;
            eprintln!("graph RAM: {bytes:.0} bytes per vector ({n} × {DIM})");
        }
        for (id, v) in &items {
            flat.insert(*id, v);
        }
        done = size;
        let mut hits = 0;
        for q in &queries {
            let truth: Vec<u64> = flat.search(q, 10).into_iter().map(|x| x.0).collect();
            hits += g
                .search(q, 10, &|_| true)
                .iter()
                .filter(|x| truth.contains(&x.0))
                .count();
        }
        eprintln!(
            "recall@10 at {size}: {:.4} (ef {})",
            hits as f64 / (10 * queries.len()) as f64,
            params.ef_search
        );
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("hnsw", size), &size, |b, _| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                black_box(g.search(&queries[i], 10, &|_| true))
            })
        });
        group.bench_with_input(BenchmarkId::new("exact", size), &size, |b, _| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                black_box(flat.search(&queries[i], 10))
            })
        });
        // A search confined to a tenth of the index (`Scope`) scores the graph's points in scope.
        group.bench_with_input(BenchmarkId::new("graph_scan_tenth", size), &size, |b, _| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                black_box(g.scan(&queries[i], 10, |vid| vid % 10 == 0))
            })
        });
    }
    group.finish();

    let snap = tempfile::tempdir().unwrap();
    let t = Instant::now();
    cnclip_index::graph::save_snapshot(snap.path(), &g, 0, n, "bench", DIM).unwrap();
    let saved = t.elapsed();
    let t = Instant::now();
    let loaded = cnclip_index::graph::load_snapshot(snap.path(), "bench", DIM).unwrap();
    eprintln!(
        "graph snapshot of {n}: saved in {:.2} s, loaded (checksums + hnsw_rs reload) in {:.2} s, \
         {:.0} bytes per vector on disk",
        saved.as_secs_f64(),
        t.elapsed().as_secs_f64(),
        dir_bytes(snap.path()) as f64 / n as f64
    );
    drop(loaded);

    let mut group = c.benchmark_group("graph_build_512d");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Elements(256));
    let mut next = n as u64;
    group.bench_function(BenchmarkId::new("insert_256_into", n), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch: Vec<(u64, Vec<f32>)> = (0..256)
                    .map(|_| {
                        next += 1;
                        (next, gen.vector())
                    })
                    .collect();
                let refs: Vec<(u64, &[f32])> =
                    batch.iter().map(|(id, v)| (*id, v.as_slice())).collect();
                let t = Instant::now();
                g.insert(&refs);
                total += t.elapsed();
            }
            total
        })
    });
    group.finish();
}

fn write_images(dir: &Path, n: usize) {
    let mut rng = Rng(99);
    for i in 0..n {
        let img = image::RgbImage::from_fn(64, 48, |_, _| {
            let v = rng.next_u64();
            image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
        });
        img.save(dir.join(format!("img{i:05}.png"))).unwrap();
    }
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else {
        return std::fs::metadata(p).map_or(0, |m| m.len());
    };
    entries
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

fn pipeline(c: &mut Criterion) {
    const IMAGES: usize = 1000;
    let photos = tempfile::tempdir().unwrap();
    write_images(photos.path(), IMAGES);
    let e = FakeEmbedder::new(DIM).with_batch_size(16);
    let mut group = c.benchmark_group("build_pipeline_fake_model_512d");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Elements(IMAGES as u64));
    group.bench_function(BenchmarkId::new("fresh_index", IMAGES), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let idx = tempfile::tempdir().unwrap();
                let t = Instant::now();
                let mut index = Index::create(idx.path(), &e.identity()).unwrap();
                let s = Indexer::new(&mut index)
                    .build(photos.path(), &e, &Silent)
                    .unwrap();
                total += t.elapsed();
                assert_eq!(s.indexed, IMAGES);
            }
            total
        })
    });
    group.finish();

    // Bytes per image on disk, by component, with a graph snapshot.
    let idx = tempfile::tempdir().unwrap();
    let mut index = Index::create(idx.path(), &e.identity()).unwrap();
    index.set_graph_policy(GraphPolicy {
        min_vectors: 1,
        ..GraphPolicy::default()
    });
    Indexer::new(&mut index)
        .build(photos.path(), &e, &Silent)
        .unwrap();
    drop(index);
    let per = |p: &str| dir_bytes(&idx.path().join(p)) as f64 / IMAGES as f64;
    eprintln!(
        "disk per image ({DIM}-d, {IMAGES} images): sled {:.0} B, reader.log {:.0} B, graph {:.0} B, \
         total {:.0} B",
        per("db"),
        per("reader.log"),
        per("graph"),
        dir_bytes(idx.path()) as f64 / IMAGES as f64
    );
}

criterion_group!(benches, queries_and_graph, pipeline);
criterion_main!(benches);
