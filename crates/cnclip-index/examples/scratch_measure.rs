use std::time::Instant;
use cnclip_index::graph::{FlatVectors, Graph, GraphParams};

struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn f32(&mut self) -> f32 { (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 }
    fn normal(&mut self) -> f32 {
        let u1 = self.f32().max(1e-7); let u2 = self.f32();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
}
fn unit(r: &mut Rng, d: usize) -> Vec<f32> { let mut v: Vec<f32> = (0..d).map(|_| r.normal()).collect(); cnclip_index::normalize(&mut v).unwrap(); v }

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args[1].parse().unwrap();
    let dim: usize = args[2].parse().unwrap();
    let efc: usize = args[3].parse().unwrap();
    let m: usize = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(16);
    let mut r = Rng(42);
    let rank: usize = args.get(5).map(|s| s.parse().unwrap()).unwrap_or(0);
    let basis: Vec<Vec<f32>> = (0..rank).map(|_| unit(&mut r, dim)).collect();
    let mut gen = |r: &mut Rng| -> Vec<f32> {
        if rank == 0 { return unit(r, dim); }
        let mut v = vec![0f32; dim];
        for b in &basis { let z = r.normal(); for (x, y) in v.iter_mut().zip(b) { *x += z * y; } }
        let nf: f32 = args.get(6).map(|s| s.parse().unwrap()).unwrap_or(0.3); let noise = nf / (dim as f32).sqrt() * (rank as f32).sqrt();
        for x in v.iter_mut() { *x += noise * r.normal(); }
        cnclip_index::normalize(&mut v).unwrap(); v
    };
    let data: Vec<Vec<f32>> = (0..n).map(|_| gen(&mut r)).collect();
    let queries: Vec<Vec<f32>> = (0..200).map(|_| gen(&mut r)).collect();
    let mut flat = FlatVectors::new(dim);
    for (i, v) in data.iter().enumerate() { flat.insert(i as u64, v); }
    let t = Instant::now();
    let truth: Vec<Vec<u64>> = queries.iter().map(|q| flat.search(q, 10).into_iter().map(|x| x.0).collect()).collect();
    let exact_ms = t.elapsed().as_secs_f64() * 1000.0 / queries.len() as f64;
    println!("n={n} dim={dim} exact {exact_ms:.3} ms/query");
    let t = Instant::now();
    let mut g = Graph::new(GraphParams { m, ef_construction: efc, ef_search: 64 }, n);
    let items: Vec<(u64, &[f32])> = data.iter().enumerate().map(|(i, v)| (i as u64, v.as_slice())).collect();
    for c in items.chunks(2048) { g.insert(c); }
    let secs = t.elapsed().as_secs_f64();
    println!("build M={m} efc={efc}: {:.1}s, {:.0} inserts/s", secs, n as f64 / secs);
    for ef in [16, 32, 64, 100, 128, 200, 256] {
        g.set_ef_search(ef);
        let t = Instant::now();
        let mut hit = 0;
        for (q, tr) in queries.iter().zip(&truth) {
            let res = g.search(q, 10, &|_| true);
            hit += res.iter().filter(|(id, _)| tr.contains(id)).count();
        }
        let ms = t.elapsed().as_secs_f64() * 1000.0 / queries.len() as f64;
        println!("ef={ef}: recall@10 {:.4}, {ms:.3} ms/query", hit as f64 / (10 * queries.len()) as f64);
    }
}
