//! A replica of Pillow 13.0's `ImagingResample` (`src/libImaging/Resample.c`) for the BICUBIC filter,
//! and of its NEAREST scaling (`ImagingScaleAffine` in `src/libImaging/Geometry.c`).
//!
//! Every step follows the C code operation for operation, so that the result is bit-identical:
//! coefficients are computed in `f64` in the same order, quantized to 22-bit fixed point with the same
//! rounding, accumulated in `i32` from the same bias, and the image between the two passes is 8-bit
//! (16-bit for `I;16`). The pass order is Pillow 13's rule (vertical first when the height shrinks by
//! more than twice as many pixels as the width); older Pillow versions always ran the horizontal pass
//! first, which changes a few pixels by a level or two on photos.

/// `PRECISION_BITS = 32 - 8 - 2` in Resample.c: 8 bits of result, 2 bits of headroom for the negative
/// lobes of the filter.
const PRECISION_BITS: u32 = 22;
/// The rounding bias every 8-bit accumulator starts from (`1 << (PRECISION_BITS - 1)`).
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Pillow's `bicubic_filter` with `a = -0.5`, written exactly as in Resample.c so that `f64` rounding
/// is the same.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = if x < 0.0 { -x } else { x };
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Filter support of BICUBIC (`{bicubic_filter, 2.0}`).
const BICUBIC_SUPPORT: f64 = 2.0;

/// Resampling coefficients for one axis (`precompute_coeffs`): for output index `i`, input samples
/// `starts[i] .. starts[i] + lens[i]` with weights `weights[i * ksize ..][.. lens[i]]`.
struct Coeffs<W> {
    starts: Vec<usize>,
    lens: Vec<usize>,
    ksize: usize,
    weights: Vec<W>,
}

impl<W: Copy> Coeffs<W> {
    fn taps(&self, i: usize) -> (usize, &[W]) {
        let start = self.ksize * i;
        (self.starts[i], &self.weights[start..start + self.lens[i]])
    }

    /// First and one-past-last input index used by any output sample.
    fn span(&self) -> (usize, usize) {
        let last = self.starts.len() - 1;
        (self.starts[0], self.starts[last] + self.lens[last])
    }
}

/// `precompute_coeffs(inSize, 0, inSize, outSize, &BICUBIC, ...)`: normalized `f64` weights.
fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs<f64> {
    precompute_coeffs_box(in_size, 0.0, in_size as f64, out_size)
}

/// `precompute_coeffs(inSize, in0, in1, outSize, &BICUBIC, ...)`: the input span `in0 .. in1` (Pillow's
/// resize `box`, in input pixels, possibly fractional) resampled to `out_size` samples.
fn precompute_coeffs_box(in_size: usize, in0: f64, in1: f64, out_size: usize) -> Coeffs<f64> {
    // `(double)(in1 - in0) / outSize`; with in0 = 0 and in1 = inSize this is inSize / outSize,
    // exact below 2^24.
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = BICUBIC_SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv_filterscale = 1.0 / filterscale;

    let mut starts = Vec::with_capacity(out_size);
    let mut lens = Vec::with_capacity(out_size);
    let mut weights = vec![0.0f64; out_size * ksize];
    for (xx, k) in weights.chunks_exact_mut(ksize).enumerate() {
        let center = in0 + (xx as f64 + 0.5) * scale;
        // `(int)(...)` truncates toward zero; Rust's `as` does the same (and saturates).
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let len = xmax - xmin;
        let mut ww = 0.0f64;
        for (x, w) in k[..len].iter_mut().enumerate() {
            // `(x + xmin - center + 0.5) * inv_filterscale`: the integer sum first, then doubles.
            *w = bicubic(((x + xmin) as f64 - center + 0.5) * inv_filterscale);
            ww += *w;
        }
        if ww != 0.0 {
            for w in &mut k[..len] {
                *w /= ww;
            }
        }
        starts.push(xmin);
        lens.push(len);
    }
    Coeffs {
        starts,
        lens,
        ksize,
        weights,
    }
}

/// `normalize_coeffs_8bpc`: weights to 22-bit fixed point, rounding half away from zero.
fn fixed_point(c: Coeffs<f64>) -> Coeffs<i32> {
    let scale = (1u32 << PRECISION_BITS) as f64;
    let weights = c
        .weights
        .iter()
        .map(|&w| {
            if w < 0.0 {
                (-0.5 + w * scale) as i32
            } else {
                (0.5 + w * scale) as i32
            }
        })
        .collect();
    Coeffs {
        starts: c.starts,
        lens: c.lens,
        ksize: c.ksize,
        weights,
    }
}

/// `clip8(ss)`: Pillow looks `ss >> PRECISION_BITS` up in a table that clamps to 0..=255.
#[inline(always)]
fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow 13's pass-order rule (`ImagingResampleInner`): run the vertical pass first when the height
/// shrinks, and by more than twice as many pixels as the width does.
fn horizontal_first(in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
    let dy = in_h as i64 - out_h as i64;
    let dx = in_w as i64 - out_w as i64;
    !(dy > 0 && dy > dx * 2)
}

/// Resizes the part `area` of an 8-bit image with `C` interleaved channels to `out_w x out_h` with
/// PIL's BICUBIC: `Image.resize((out_w, out_h), BICUBIC, box=area)`, the box being left, top,
/// right, bottom in input pixels, possibly fractional. With the whole image as the box
/// (`[0, 0, in_w, in_h]`) this is the plain resize cn_clip does, bit for bit.
///
/// `C` is 1 (L), 2 (premultiplied La), 3 (RGB) or 4 (premultiplied RGBa, CMYK); the channels are
/// independent, as in Pillow, so any of them gives the same per-channel result.
pub(crate) fn bicubic_u8<const C: usize>(
    src: &[u8],
    in_w: usize,
    in_h: usize,
    area: [f64; 4],
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    debug_assert_eq!(src.len(), in_w * in_h * C);
    let [x0, y0, x1, y1] = area;
    // `ImagingResampleInner`: a pass is skipped only where the size is kept and the box is whole.
    let need_h = out_w != in_w || x0 != 0.0 || x1 != in_w as f64;
    let need_v = out_h != in_h || y0 != 0.0 || y1 != in_h as f64;
    if !need_h && !need_v {
        return src.to_vec();
    }
    let vert = fixed_point(precompute_coeffs_box(in_h, y0, y1, out_h));
    let horiz = need_h.then(|| fixed_point(precompute_coeffs_box(in_w, x0, x1, out_w)));

    if horizontal_first(in_w, in_h, out_w, out_h) {
        let Some(horiz) = horiz else {
            return vertical_u8::<C>(src, in_w, &vert, 0);
        };
        // Only the rows the vertical pass reads are resampled horizontally.
        let (first, last) = if need_v { vert.span() } else { (0, in_h) };
        let rows = &src[first * in_w * C..last * in_w * C];
        let tmp = horizontal_u8::<C>(rows, in_w, last - first, &horiz);
        if need_v {
            vertical_u8::<C>(&tmp, out_w, &vert, first)
        } else {
            tmp
        }
    } else {
        // Vertical first: only reached when the height shrinks, so the vertical pass is needed.
        let tmp = vertical_u8::<C>(src, in_w, &vert, 0);
        match horiz {
            Some(horiz) => horizontal_u8::<C>(&tmp, in_w, out_h, &horiz),
            None => tmp,
        }
    }
}

/// `ImagingResampleHorizontal_8bpc` over `rows` rows of width `in_w`.
///
/// Each row is first split into one `i32` plane per channel, so that every output sample is a
/// contiguous dot product of a plane stretch with the taps, which vectorizes (integer sums are
/// exact in any order, so the result is Pillow's to the bit). Summing the interleaved samples in
/// place, as Pillow does, left the compiler only scalar code: 44 ms for a 12-MP photo to 224.
fn horizontal_u8<const C: usize>(
    src: &[u8],
    in_w: usize,
    rows: usize,
    coeffs: &Coeffs<i32>,
) -> Vec<u8> {
    let out_w = coeffs.starts.len();
    let mut out = vec![0u8; out_w * rows * C];
    let mut planes = vec![0i32; in_w * C];
    for (line_in, line_out) in src
        .chunks_exact(in_w * C)
        .zip(out.chunks_exact_mut(out_w * C))
    {
        horizontal_row(line_in, C, &mut planes, coeffs, line_out);
    }
    out
}

simd_fn! {
    /// One row of [`horizontal_u8`] with `channels` interleaved channels; `planes` is scratch of
    /// the row's length.
    fn horizontal_row(
        line_in: &[u8],
        channels: usize,
        planes: &mut [i32],
        coeffs: &Coeffs<i32>,
        line_out: &mut [u8]
    ) {
        let in_w = line_in.len() / channels;
        match channels {
            // Fixed strides, so that the compiler turns the interleaved loads into shuffles.
            3 => {
                let (r, gb) = planes.split_at_mut(in_w);
                let (g, b) = gb.split_at_mut(in_w);
                for ((((px, r), g), b), _) in line_in.chunks_exact(3).zip(r).zip(g).zip(b).zip(0..in_w) {
                    (*r, *g, *b) = (i32::from(px[0]), i32::from(px[1]), i32::from(px[2]));
                }
            }
            1 => planes.iter_mut().zip(line_in).for_each(|(p, &v)| *p = i32::from(v)),
            _ => {
                for (x, px) in line_in.chunks_exact(channels).enumerate() {
                    for (c, &v) in px.iter().enumerate() {
                        planes[c * in_w + x] = i32::from(v);
                    }
                }
            }
        }
        for (xx, px_out) in line_out.chunks_exact_mut(channels).enumerate() {
            let (xmin, k) = coeffs.taps(xx);
            for (o, plane) in px_out.iter_mut().zip(planes.chunks_exact(in_w)) {
                let dot: i32 = plane[xmin..xmin + k.len()]
                    .iter()
                    .zip(k)
                    .map(|(&p, &kx)| p * kx)
                    .sum();
                *o = clip8(HALF + dot);
            }
        }
    }
}

/// `ImagingResampleVertical_8bpc`: `src` holds rows `offset ..` of an image of width `width`.
///
/// The sum for each output sample is the same as Pillow's (integer addition is exact, so summing
/// row by row into an accumulator line gives the same result and lets the compiler vectorize).
fn vertical_u8<const C: usize>(
    src: &[u8],
    width: usize,
    coeffs: &Coeffs<i32>,
    offset: usize,
) -> Vec<u8> {
    let stride = width * C;
    let out_h = coeffs.starts.len();
    let mut out = vec![0u8; stride * out_h];
    let mut acc = vec![0i32; stride];
    for (yy, line_out) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, k) = coeffs.taps(yy);
        acc.fill(HALF);
        for (j, &ky) in k.iter().enumerate() {
            let row = ymin + j - offset;
            accumulate_row(&mut acc, &src[row * stride..(row + 1) * stride], ky);
        }
        for (o, &a) in line_out.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

simd_fn! {
    /// `acc += line · ky`, one tap of [`vertical_u8`].
    fn accumulate_row(acc: &mut [i32], line: &[u8], ky: i32) {
        for (a, &p) in acc.iter_mut().zip(line) {
            *a += i32::from(p) * ky;
        }
    }
}

/// `ROUND_UP(f)`: `(int)(f + 0.5)` for non-negative values, `(int)(f - 0.5)` otherwise.
#[inline(always)]
fn round_up(f: f64) -> i32 {
    if f >= 0.0 {
        (f + 0.5) as i32
    } else {
        (f - 0.5) as i32
    }
}

/// Resizes a 16-bit single-channel image (`I;16`) with PIL's BICUBIC: `f64` weights and sums, each pass
/// rounded (`ROUND_UP`) and clamped to 0..=65535 (`ImagingResample*_16bpc`).
pub(crate) fn bicubic_u16(
    src: &[u16],
    in_w: usize,
    in_h: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<u16> {
    debug_assert_eq!(src.len(), in_w * in_h);
    let need_h = out_w != in_w;
    let need_v = out_h != in_h;
    if !need_h && !need_v {
        return src.to_vec();
    }
    let vert = precompute_coeffs(in_h, out_h);
    let horiz = need_h.then(|| precompute_coeffs(in_w, out_w));
    if horizontal_first(in_w, in_h, out_w, out_h) {
        let Some(horiz) = horiz else {
            return vertical_u16(src, in_w, &vert, 0);
        };
        let (first, last) = if need_v { vert.span() } else { (0, in_h) };
        let tmp = horizontal_u16(&src[first * in_w..last * in_w], in_w, &horiz);
        if need_v {
            vertical_u16(&tmp, out_w, &vert, first)
        } else {
            tmp
        }
    } else {
        let tmp = vertical_u16(src, in_w, &vert, 0);
        match horiz {
            Some(horiz) => horizontal_u16(&tmp, in_w, &horiz),
            None => tmp,
        }
    }
}

fn horizontal_u16(src: &[u16], in_w: usize, coeffs: &Coeffs<f64>) -> Vec<u16> {
    let out_w = coeffs.starts.len();
    let rows = src.len() / in_w;
    let mut out = vec![0u16; out_w * rows];
    for (line_in, line_out) in src.chunks_exact(in_w).zip(out.chunks_exact_mut(out_w)) {
        for (xx, o) in line_out.iter_mut().enumerate() {
            let (xmin, k) = coeffs.taps(xx);
            let mut ss = 0.0f64;
            for (&p, &kx) in line_in[xmin..xmin + k.len()].iter().zip(k) {
                ss += f64::from(p) * kx;
            }
            *o = round_up(ss).clamp(0, 65535) as u16;
        }
    }
    out
}

fn vertical_u16(src: &[u16], width: usize, coeffs: &Coeffs<f64>, offset: usize) -> Vec<u16> {
    let out_h = coeffs.starts.len();
    let mut out = vec![0u16; width * out_h];
    for (yy, line_out) in out.chunks_exact_mut(width).enumerate() {
        let (ymin, k) = coeffs.taps(yy);
        for (xx, o) in line_out.iter_mut().enumerate() {
            // Floating-point sums depend on their order: sum the taps one pixel at a time, top to
            // bottom, exactly as Pillow does.
            let mut ss = 0.0f64;
            for (j, &ky) in k.iter().enumerate() {
                ss += f64::from(src[(ymin + j - offset) * width + xx]) * ky;
            }
            *o = round_up(ss).clamp(0, 65535) as u16;
        }
    }
    out
}

/// Source indices of PIL's NEAREST scaling along one axis (`ImagingScaleAffine`): Pillow walks
/// `xo = step / 2; xo += step` in `f64` and truncates, so the accumulated sum (not `i * step`) decides.
/// `None` marks an index outside the source, which Pillow fills with zeros.
fn nearest_indices(in_size: usize, out_size: usize) -> Vec<Option<usize>> {
    // `a[0] = (double)(box[2] - box[0]) / xsize`, box in floats.
    let step = in_size as f64 / out_size as f64;
    let mut pos = 0.0 + step * 0.5;
    let mut out = Vec::with_capacity(out_size);
    for _ in 0..out_size {
        // `COORD(v)`: -1 for negative values, else truncation.
        let i = if pos < 0.0 { -1 } else { pos as i64 };
        out.push((0..in_size as i64).contains(&i).then_some(i as usize));
        pos += step;
    }
    out
}

/// Resizes with PIL's NEAREST (used for `1` and `P` images whatever the filter asked for). Works on any
/// pixel layout of `C` bytes, e.g. a palette image expanded to RGB.
pub(crate) fn nearest_u8<const C: usize>(
    src: &[u8],
    in_w: usize,
    in_h: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    debug_assert_eq!(src.len(), in_w * in_h * C);
    if in_w == out_w && in_h == out_h {
        return src.to_vec();
    }
    let xs = nearest_indices(in_w, out_w);
    let ys = nearest_indices(in_h, out_h);
    let mut out = vec![0u8; out_w * out_h * C];
    for (line_out, y) in out.chunks_exact_mut(out_w * C).zip(ys) {
        let Some(y) = y else { continue };
        let line_in = &src[y * in_w * C..(y + 1) * in_w * C];
        for (px_out, x) in line_out.chunks_exact_mut(C).zip(&xs) {
            if let Some(x) = *x {
                px_out.copy_from_slice(&line_in[x * C..(x + 1) * C]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The box of a whole `width x height` image (Pillow's default `box` of `Image.resize`).
    fn whole(width: usize, height: usize) -> [f64; 4] {
        [0.0, 0.0, width as f64, height as f64]
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(4000, 224), (37, 224), (224, 224), (3, 1), (1, 5)] {
            let c = fixed_point(precompute_coeffs(i, o));
            for xx in 0..o {
                let (_, k) = c.taps(xx);
                let s: i32 = k.iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() < 64,
                    "{i}->{o} at {xx}: {s}"
                );
            }
        }
    }

    #[test]
    fn pass_order_follows_pillow_13() {
        // Resample.c: vertical first iff (in_h - out_h) > 0 && (in_h - out_h) > 2 * (in_w - out_w).
        assert!(!horizontal_first(300, 500, 224, 224));
        assert!(horizontal_first(500, 300, 224, 224));
        assert!(horizontal_first(4000, 3000, 224, 224));
        assert!(horizontal_first(3000, 4000, 224, 224));
        assert!(!horizontal_first(1000, 4000, 224, 224));
        assert!(horizontal_first(37, 23, 224, 224));
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![200u8; 97 * 61 * 3];
        let out = bicubic_u8::<3>(&src, 97, 61, whole(97, 61), 224, 224);
        assert!(out.iter().all(|&v| v == 200));
        let out = bicubic_u8::<3>(&src, 97, 61, whole(97, 61), 13, 7);
        assert!(out.iter().all(|&v| v == 200));
    }

    #[test]
    fn nearest_picks_centres() {
        assert_eq!(
            nearest_indices(4, 2),
            vec![Some(1), Some(3)],
            "centre of each 2-pixel cell, rounded down"
        );
        assert_eq!(
            nearest_indices(2, 4),
            vec![Some(0), Some(0), Some(1), Some(1)]
        );
    }
}
