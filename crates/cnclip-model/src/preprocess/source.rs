//! [`SourceImage`]: decoded pixels in the mode PIL would have opened them in, and EXIF orientation.

/// The mode PIL opens an image in. It decides how `Resize(BICUBIC)` and `convert("RGB")` treat it:
/// `1` and `P` images are resized with NEAREST whatever filter is asked, `LA` and `RGBA` are resized
/// premultiplied, `CMYK` is resized before its conversion to RGB and `I;16` in 16 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PixelMode {
    /// PIL `1`: bilevel, one byte per pixel (0 or 255).
    Bilevel,
    /// PIL `P`: a palette image, stored here with its palette applied (three bytes per pixel, RGB).
    /// Nearest-neighbour resizing commutes with the palette look-up, so this gives PIL's pixels.
    Palette,
    /// PIL `L`: 8-bit grey.
    L,
    /// PIL `LA`: 8-bit grey and alpha.
    La,
    /// PIL `RGB`.
    Rgb,
    /// PIL `RGBA` (straight, not premultiplied, alpha).
    Rgba,
    /// PIL `CMYK` with PIL's polarity (0 = no ink).
    Cmyk,
    /// PIL `I;16`: 16-bit grey (e.g. a 16-bit greyscale PNG), stored as `u16`.
    I16,
}

impl PixelMode {
    /// Samples per pixel in [`SourceImage`]'s buffer.
    pub fn channels(self) -> usize {
        match self {
            PixelMode::Bilevel | PixelMode::L | PixelMode::I16 => 1,
            PixelMode::La => 2,
            PixelMode::Palette | PixelMode::Rgb => 3,
            PixelMode::Rgba | PixelMode::Cmyk => 4,
        }
    }

    /// PIL's name of the mode (`"1"`, `"P"`, `"L"`, `"LA"`, `"RGB"`, `"RGBA"`, `"CMYK"`, `"I;16"`).
    pub fn pil_name(self) -> &'static str {
        match self {
            PixelMode::Bilevel => "1",
            PixelMode::Palette => "P",
            PixelMode::L => "L",
            PixelMode::La => "LA",
            PixelMode::Rgb => "RGB",
            PixelMode::Rgba => "RGBA",
            PixelMode::Cmyk => "CMYK",
            PixelMode::I16 => "I;16",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Pixels {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

/// A decoded image before preprocessing: size, [`PixelMode`] and interleaved samples, row-major.
///
/// A JPEG decoded at reduced scale ([`JpegDecode::Scaled`](super::JpegDecode::Scaled)) also knows
/// the size of the full picture ([`SourceImage::full_size`]), so that resizing it covers exactly the
/// area the full picture would (its last row and column may stand for a partial 8-pixel block).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceImage {
    width: usize,
    height: usize,
    mode: PixelMode,
    pixels: Pixels,
    /// 1, or the denominator (2, 4, 8) of the scale a JPEG was decoded at.
    reduction: usize,
    /// The size of the full-resolution picture (oriented as the pixels are); `(width, height)` when
    /// `reduction` is 1.
    full: (usize, usize),
    /// Where the full picture starts, in full-resolution pixels, inside the `reduction * width` x
    /// `reduction * height` grid the pixels stand for: `(0, 0)` as decoded, where the partial blocks
    /// are the last row and column; an orientation that mirrors an axis moves them to the front.
    origin: (usize, usize),
}

impl SourceImage {
    /// Wraps 8-bit samples (`width * height * mode.channels()` of them). `None` when the length does
    /// not match, a dimension is zero, or `mode` is [`PixelMode::I16`] (use [`SourceImage::from_i16`]).
    pub fn from_u8(width: u32, height: u32, mode: PixelMode, data: Vec<u8>) -> Option<Self> {
        let (width, height) = (width as usize, height as usize);
        let expected = width.checked_mul(height)?.checked_mul(mode.channels())?;
        (mode != PixelMode::I16 && width > 0 && height > 0 && data.len() == expected).then_some(
            SourceImage {
                width,
                height,
                mode,
                pixels: Pixels::U8(data),
                reduction: 1,
                full: (width, height),
                origin: (0, 0),
            },
        )
    }

    /// Wraps 16-bit grey samples as an `I;16` image. `None` when the length does not match or a
    /// dimension is zero.
    pub fn from_i16(width: u32, height: u32, data: Vec<u16>) -> Option<Self> {
        let (width, height) = (width as usize, height as usize);
        let expected = width.checked_mul(height)?;
        (width > 0 && height > 0 && data.len() == expected).then_some(SourceImage {
            width,
            height,
            mode: PixelMode::I16,
            pixels: Pixels::U16(data),
            reduction: 1,
            full: (width, height),
            origin: (0, 0),
        })
    }

    /// Marks an image as a full picture of `full_width x full_height` pixels decoded at
    /// `1 / reduction` of its size, as libjpeg's scaled IDCT does it: `ceil(full / reduction)` pixels
    /// per axis, pixel `i` standing for full-size pixels `reduction * i ..` (the last one possibly
    /// for fewer). `None` when the sizes do not match that or `reduction` is not 2, 4 or 8.
    pub(crate) fn reduced_from(
        self,
        full_width: u32,
        full_height: u32,
        reduction: u32,
    ) -> Option<Self> {
        let (fw, fh, r) = (
            full_width as usize,
            full_height as usize,
            reduction as usize,
        );
        let fits =
            matches!(r, 2 | 4 | 8) && self.width == fw.div_ceil(r) && self.height == fh.div_ceil(r);
        fits.then_some(SourceImage {
            reduction: r,
            full: (fw, fh),
            origin: (0, 0),
            ..self
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width as u32
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height as u32
    }

    /// The mode PIL would have opened the image in.
    pub fn mode(&self) -> PixelMode {
        self.mode
    }

    /// The 8-bit samples (`None` for [`PixelMode::I16`]).
    pub fn as_u8(&self) -> Option<&[u8]> {
        match &self.pixels {
            Pixels::U8(v) => Some(v),
            Pixels::U16(_) => None,
        }
    }

    /// The 16-bit samples of an [`PixelMode::I16`] image.
    pub fn as_u16(&self) -> Option<&[u16]> {
        match &self.pixels {
            Pixels::U16(v) => Some(v),
            Pixels::U8(_) => None,
        }
    }

    /// 1 for an image decoded at full size; 2, 4 or 8 for a JPEG decoded at that fraction of its size
    /// in the DCT domain ([`JpegDecode::Scaled`](super::JpegDecode::Scaled)).
    pub fn reduction(&self) -> u32 {
        self.reduction as u32
    }

    /// Width and height of the full-resolution picture, after EXIF orientation: the same as
    /// [`width`](Self::width) and [`height`](Self::height) unless [`reduction`](Self::reduction) is
    /// above 1.
    pub fn full_size(&self) -> (u32, u32) {
        (self.full.0 as u32, self.full.1 as u32)
    }

    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// The area the full picture covers, in this image's pixels, as Pillow's `box` of
    /// `Image.resize` (left, top, right, bottom): the whole image, except for a reduced JPEG whose
    /// size is not a multiple of the reduction, where the partial blocks of one side cover less than
    /// a pixel (`full / reduction` pixels in all).
    pub(crate) fn area(&self) -> [f64; 4] {
        let r = self.reduction as f64;
        let (x0, y0) = (self.origin.0 as f64 / r, self.origin.1 as f64 / r);
        [
            x0,
            y0,
            x0 + self.full.0 as f64 / r,
            y0 + self.full.1 as f64 / r,
        ]
    }

    pub(crate) fn pixels(&self) -> &Pixels {
        &self.pixels
    }

    /// Applies an EXIF orientation (1–8) the way `PIL.ImageOps.exif_transpose` does, so that the
    /// image is upright as a person sees it. Other values leave the image as it is.
    pub fn apply_exif_orientation(self, orientation: u8) -> SourceImage {
        if !(2..=8).contains(&orientation) {
            return self;
        }
        let (w, h) = (self.width, self.height);
        let (width, height) = if orientation >= 5 { (h, w) } else { (w, h) };
        let c = self.mode.channels();
        let pixels = match self.pixels {
            Pixels::U8(v) => Pixels::U8(match c {
                1 => orient::<u8, 1>(&v, w, h, orientation),
                2 => orient::<u8, 2>(&v, w, h, orientation),
                3 => orient::<u8, 3>(&v, w, h, orientation),
                _ => orient::<u8, 4>(&v, w, h, orientation),
            }),
            Pixels::U16(v) => Pixels::U16(orient::<u16, 1>(&v, w, h, orientation)),
        };
        // The padding of each axis (the part of the pixel grid beyond the picture) goes with the
        // pixels: to the other end where an axis is mirrored, to the other axis where they swap.
        let (ox, oy) = self.origin;
        let pad_x = self.reduction * w - self.full.0 - ox;
        let pad_y = self.reduction * h - self.full.1 - oy;
        let (full, origin) = match orientation {
            2 => (self.full, (pad_x, oy)),
            3 => (self.full, (pad_x, pad_y)),
            4 => (self.full, (ox, pad_y)),
            5 => ((self.full.1, self.full.0), (oy, ox)),
            6 => ((self.full.1, self.full.0), (pad_y, ox)),
            7 => ((self.full.1, self.full.0), (pad_y, pad_x)),
            _ => ((self.full.1, self.full.0), (oy, pad_x)),
        };
        SourceImage {
            width,
            height,
            mode: self.mode,
            pixels,
            reduction: self.reduction,
            full,
            origin,
        }
    }
}

/// For the orientations that swap the axes (5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90 in
/// PIL's `exif_transpose`), output pixel `(x, y)` comes from input pixel index `base + x * dx + y * dy`
/// of the `w x h` input.
fn transpose_walk(o: u8, w: usize, h: usize) -> (usize, isize, isize) {
    let (wi, last_row) = (w as isize, (h - 1) * w);
    match o {
        5 => (0, wi, 1),                  // (y, x)
        6 => (last_row, -wi, 1),          // (y, h-1-x)
        7 => (last_row + w - 1, -wi, -1), // (w-1-y, h-1-x)
        _ => (w - 1, wi, -1),             // 8: (w-1-y, x)
    }
}

fn orient<T: Copy + Default, const C: usize>(src: &[T], w: usize, h: usize, o: u8) -> Vec<T> {
    let (ow, oh) = if o >= 5 { (h, w) } else { (w, h) };
    if o <= 4 {
        // 2 FLIP_LEFT_RIGHT, 3 ROTATE_180, 4 FLIP_TOP_BOTTOM: whole rows, forwards or backwards.
        let mut out = vec![T::default(); src.len()];
        for (y, dst) in out.chunks_exact_mut(w * C).enumerate() {
            let sy = if o == 2 { y } else { h - 1 - y };
            let row = &src[sy * w * C..(sy + 1) * w * C];
            if o == 4 {
                dst.copy_from_slice(row);
            } else {
                for (d, s) in dst.chunks_exact_mut(C).zip(row.chunks_exact(C).rev()) {
                    d.copy_from_slice(s);
                }
            }
        }
        return out;
    }
    let (base, dx, dy) = transpose_walk(o, w, h);
    let mut out = vec![T::default(); src.len()];
    // Reading columns: square tiles keep both the reads and the writes in the cache.
    let tile = 64;
    for ty in (0..oh).step_by(tile) {
        for tx in (0..ow).step_by(tile) {
            let x_end = (tx + tile).min(ow);
            for y in ty..(ty + tile).min(oh) {
                let line = &mut out[(y * ow + tx) * C..(y * ow + x_end) * C];
                let mut i = (base as isize + tx as isize * dx + y as isize * dy) as usize;
                for px in line.chunks_exact_mut(C) {
                    px.copy_from_slice(&src[i * C..i * C + C]);
                    i = i.wrapping_add_signed(dx);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3x2 image whose pixel values are their own coordinates, `10 * y + x`.
    fn labelled() -> SourceImage {
        SourceImage::from_u8(3, 2, PixelMode::L, vec![0, 1, 2, 10, 11, 12]).unwrap()
    }

    #[test]
    fn orientations_match_pil_exif_transpose() {
        // Expected outputs from PIL: `ImageOps.exif_transpose` on the same 3x2 image.
        let cases: [(u8, (u32, u32), [u8; 6]); 8] = [
            (1, (3, 2), [0, 1, 2, 10, 11, 12]),
            (2, (3, 2), [2, 1, 0, 12, 11, 10]),
            (3, (3, 2), [12, 11, 10, 2, 1, 0]),
            (4, (3, 2), [10, 11, 12, 0, 1, 2]),
            (5, (2, 3), [0, 10, 1, 11, 2, 12]),
            (6, (2, 3), [10, 0, 11, 1, 12, 2]),
            (7, (2, 3), [12, 2, 11, 1, 10, 0]),
            (8, (2, 3), [2, 12, 1, 11, 0, 10]),
        ];
        for (o, (w, h), expected) in cases {
            let img = labelled().apply_exif_orientation(o);
            assert_eq!((img.width(), img.height()), (w, h), "orientation {o}");
            assert_eq!(img.as_u8().unwrap(), expected, "orientation {o}");
        }
    }

    #[test]
    fn orientation_moves_the_partial_pixels_with_the_picture() {
        // A 13x6 picture decoded at 1/4 gives 4x2 pixels standing for a 16x8 grid whose last 3
        // columns and 2 rows lie outside the picture. Orient that grid itself, pixel by pixel, and
        // the picture must be where `area` says, for every orientation.
        let (fw, fh, r) = (13u32, 6u32, 4u32);
        let (gw, gh) = (fw.div_ceil(r) * r, fh.div_ceil(r) * r);
        let mask: Vec<u8> = (0..gh)
            .flat_map(|y| (0..gw).map(move |x| u8::from(x < fw && y < fh)))
            .collect();
        let grid = SourceImage::from_u8(gw, gh, PixelMode::L, mask).unwrap();
        let reduced = SourceImage::from_u8(4, 2, PixelMode::L, vec![0; 8])
            .unwrap()
            .reduced_from(fw, fh, r)
            .unwrap();
        assert_eq!(reduced.area(), [0.0, 0.0, 13.0 / 4.0, 6.0 / 4.0]);
        for o in 1..=8 {
            let g = grid.clone().apply_exif_orientation(o);
            let w = g.width() as usize;
            let inside: Vec<(usize, usize)> = (g.as_u8().unwrap().iter().enumerate())
                .filter(|(_, &v)| v == 1)
                .map(|(i, _)| (i % w, i / w))
                .collect();
            let x0 = inside.iter().map(|p| p.0).min().unwrap();
            let y0 = inside.iter().map(|p| p.1).min().unwrap();
            let x1 = inside.iter().map(|p| p.0).max().unwrap() + 1;
            let y1 = inside.iter().map(|p| p.1).max().unwrap() + 1;
            let expected = [x0, y0, x1, y1].map(|v| v as f64 / f64::from(r));
            let img = reduced.clone().apply_exif_orientation(o);
            assert_eq!(img.area(), expected, "orientation {o}");
            assert_eq!(img.full_size(), ((x1 - x0) as u32, (y1 - y0) as u32));
            assert_eq!(img.reduction(), 4);
        }
        // Sizes that libjpeg's rounding cannot give are refused.
        let px =
            |w, h| SourceImage::from_u8(w, h, PixelMode::L, vec![0; (w * h) as usize]).unwrap();
        assert!(px(4, 2).reduced_from(16, 5, 4).is_some());
        assert!(px(4, 2).reduced_from(17, 6, 4).is_none());
        assert!(px(4, 2).reduced_from(13, 6, 3).is_none());
        assert_eq!(px(4, 2).area(), [0.0, 0.0, 4.0, 2.0]);
    }

    #[test]
    fn constructors_check_lengths() {
        assert!(SourceImage::from_u8(2, 2, PixelMode::Rgb, vec![0; 11]).is_none());
        assert!(SourceImage::from_u8(0, 2, PixelMode::L, vec![]).is_none());
        assert!(SourceImage::from_u8(2, 2, PixelMode::I16, vec![0; 4]).is_none());
        assert!(SourceImage::from_i16(2, 2, vec![0; 4]).is_some());
    }
}
