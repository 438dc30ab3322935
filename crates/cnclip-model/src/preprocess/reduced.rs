//! Baseline JPEGs decoded at 1/4 or 1/2 scale straight from the entropy-coded data, for the common
//! case of [`JpegDecode::Scaled`]: a camera photo far larger than the model's input.
//!
//! At 1/4 (1/2) scale each 8x8 block gives 2x2 (4x4) samples, computed from the same corner of its
//! lowest frequencies (libjpeg's `jpeg_idct_2x2` / `jpeg_idct_4x4` read the same ones;
//! jpeg-decoder's `dequantize_and_idct_block_2x2` / `_4x4`, used by [`super::scaled`] otherwise,
//! compute them as here). Every other coefficient must still be read to find where the next one
//! starts, but it is only skipped: code and value bits at once, up to three symbols per table
//! lookup where their codes fit in [`PAIR_BITS`], with no sign extension, no coefficient buffer
//! and no zeroing. The byte stuffing is removed in one pass first, so the bit reader refills eight
//! bytes at a time without branching. On a 12-MP photo (4:2:0, quality 90) at 1/4 this takes
//! 22 ms where jpeg-decoder takes 43 ms for the same samples on the Zen 4 build machine; 28 ms
//! against 55 ms on the Xeon one, 26.4-26.7 ms since the chroma upsampling and colour conversion
//! are written pair by pair and compiled for AVX-512 / AVX2 (`simd_fn!`; at 1/2: 54-55 -> 50-51
//! ms).
//!
//! The samples equal jpeg-decoder's at the same scale bit for bit before the colour conversion
//! (same reduced IDCT and the same "fancy" triangle-filter chroma upsampling, tested on every
//! sampling layout handled here); the YCbCr to RGB conversion is libjpeg's (`jdcolor.c`), as in
//! PIL, where jpeg-decoder's SIMD conversion differs by up to a level or two.
//!
//! Huffman-coded 8-bit JPEGs are handled, greyscale with 1x1 sampling or three components whose
//! luma is 1x1, 2x1, 1x2 or 2x2 with 1x1 chroma. One interleaved sequential scan (SOF0/SOF1, the
//! camera's JPEG) is decoded here straight to the planes; progressive ones (SOF2) and sequential
//! ones in several scans are [`super::progressive`]'s, which keeps the kept coefficients until
//! the last scan and shares the tables, bit reader, IDCT and upsampling of this module. Anything
//! else, and anything unexpected in the data (a code that is no code, a run past the block's end,
//! a misplaced marker, a missing end-of-image marker after the last scan), gives `None`, and
//! [`super::scaled`] hands the file to jpeg-decoder, then to the exact path, which decide about it
//! as before.
//!
//! [`JpegDecode::Scaled`]: super::JpegDecode::Scaled

use super::jpeg::ycc_to_rgb;
use super::progressive;

/// How the three components of a colour JPEG become pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Colour {
    /// One component, returned as is.
    Grey,
    /// Y, Cb, Cr, converted as libjpeg does.
    YCbCr,
    /// R, G, B stored as they are (Adobe transform 0): the upsampled components interleaved.
    Rgb,
}

/// The kept coefficients of a block, quantised, row-major in its top-left `S`x`S` corner (`S` = 2
/// or 4 samples per block side), then one slot ([`TRASH`]) where the others' values land unread.
pub(super) type Block = [i16; 17];

/// The slot of [`Block`] that no IDCT reads.
pub(super) const TRASH: usize = 16;

/// For an `S`x`S` IDCT: the [`Block`] slot of each zigzag position (ITU T.81 Figure A.6).
pub(super) const fn slots(s: usize) -> [u8; 64] {
    let mut out = [TRASH as u8; 64];
    let mut k = 0;
    while k < 64 {
        let (r, c) = (UNZIGZAG[k] / 8, UNZIGZAG[k] % 8);
        if r < s && c < s {
            out[k] = (r * s + c) as u8;
        }
        k += 1;
    }
    out
}

/// The last zigzag position an `S`x`S` IDCT reads: 4 for 2x2 ((1,1)), 24 for 4x4 ((3,3)).
const fn last_kept(s: usize) -> u32 {
    let slots = slots(s);
    let mut k = 63;
    while slots[k] as usize == TRASH {
        k -= 1;
    }
    k as u32
}

const SLOTS_2: [u8; 64] = slots(2);
const SLOTS_4: [u8; 64] = slots(4);

/// Bits looked up at once when decoding a Huffman code; longer codes take the slow search.
const LUT_BITS: u32 = 9;

/// Bits looked up at once when skipping AC coefficients, up to three symbols at a time (12 bits:
/// 28.9 ms on the 12-MP photo of the module docs, 11: 29.8, 13: 29.4).
const PAIR_BITS: u32 = 12;

/// One Huffman table (ITU T.81 Annex C, F.2.2.3).
pub(super) struct Table {
    /// For the next `LUT_BITS` bits, the code's [`entry`]; 0 when the code is longer.
    lut: [u32; 1 << LUT_BITS],
    /// For the next `PAIR_BITS` bits, AC coefficients to skip ([`Table::pairs`]).
    pairs: Box<[u32; 1 << PAIR_BITS]>,
    /// The largest code of each length (index 1..=16), -1 where there is none.
    maxcode: [i32; 17],
    /// Index into `values` of the code `c` of length `l`: `c + delta[l]`.
    delta: [i32; 17],
    values: Vec<u8>,
}

/// What an AC symbol does when its value is not needed: how far it moves along the block, or
/// `EOB` for the end of the block; 0 for an end-of-band run (`r` > 0, size 0), which needs more
/// bits.
const EOB: u32 = 128;

/// A decoded code, packed for the skipping loop: the code's length plus the symbol's size nibble
/// in bits 0-5 (all the bits of an AC coefficient whose value is not needed, so that the shift
/// takes them straight from the entry's low byte), the symbol in bits 8-15, the code's length in
/// bits 16-20, and the AC advance in bits 24-31: `run + 1` for a coefficient, 16 for a run of 16
/// zeros, [`EOB`] for the end of the block, 0 for an end-of-band run.
#[inline(always)]
fn entry(symbol: u8, len: u32) -> u32 {
    let (run, size) = (u32::from(symbol >> 4), u32::from(symbol & 15));
    let advance = match (run, size) {
        (0, 0) => EOB,
        (15, 0) => 16,
        (_, 0) => 0,
        _ => run + 1,
    };
    (len + size) | u32::from(symbol) << 8 | len << 16 | advance << 24
}

/// The fields of an [`entry`].
#[inline(always)]
fn skip(e: u32) -> u32 {
    e & 63
}
#[inline(always)]
pub(super) fn symbol(e: u32) -> u32 {
    (e >> 8) & 0xFF
}
#[inline(always)]
pub(super) fn code_len(e: u32) -> u32 {
    (e >> 16) & 31
}
#[inline(always)]
fn advance(e: u32) -> u32 {
    e >> 24
}

impl Table {
    /// Builds the canonical codes from the 16 code-length counts of a DHT segment. `None` for a set
    /// of counts no prefix code has (as jpeg-decoder's `derive_huffman_codes` refuses them).
    fn new(counts: &[u8; 16], values: &[u8]) -> Option<Table> {
        let total: usize = counts.iter().map(|&n| usize::from(n)).sum();
        if total != values.len() || total > 256 {
            return None;
        }
        let mut table = Table {
            lut: [0; 1 << LUT_BITS],
            pairs: Box::new([0; 1 << PAIR_BITS]),
            maxcode: [-1; 17],
            delta: [0; 17],
            values: values.to_vec(),
        };
        let mut code = 0u32;
        let mut k = 0usize;
        for len in 1..=16u32 {
            let n = u32::from(counts[len as usize - 1]);
            table.delta[len as usize] = k as i32 - code as i32;
            for _ in 0..n {
                if code >= 1 << len {
                    return None;
                }
                if len <= LUT_BITS {
                    let shift = LUT_BITS - len;
                    let first = (code << shift) as usize;
                    table.lut[first..first + (1 << shift)].fill(entry(values[k], len));
                }
                code += 1;
                k += 1;
            }
            if n > 0 {
                table.maxcode[len as usize] = code as i32 - 1;
            }
            code <<= 1;
        }
        table.pairs = table.pairs();
        Some(table)
    }

    /// For each `PAIR_BITS`-bit window, the AC symbols that can be skipped at once: the first
    /// symbol's code and value bits, the second's too when its code also lies in the window (its
    /// value bits may lie beyond), and a third's when the second ends inside the window and is
    /// not an end of block. Bits 0-5: the bits to skip; bits 8-15: how far that moves along the
    /// block (a sum of [`advance`]s); bits 16-23: the advance of all but the last symbol (the
    /// last belongs to the next block if those reach the end of this one), 0 for one symbol. 0
    /// where the first code is longer than the window or is an end-of-band run.
    fn pairs(&self) -> Box<[u32; 1 << PAIR_BITS]> {
        let mut pairs = Box::new([0; 1 << PAIR_BITS]);
        for (window, pair) in pairs.iter_mut().enumerate() {
            let top = (window as u32) << (16 - PAIR_BITS);
            let Some(first) = self.code_within(top, PAIR_BITS) else {
                continue;
            };
            let (bits, moves) = (skip(first), advance(first));
            if moves == 0 {
                continue;
            }
            *pair = bits | moves << 8;
            if moves == EOB || bits >= PAIR_BITS {
                continue;
            }
            let rest = (top << bits) & 0xFFFF;
            let Some(second) = self.code_within(rest, PAIR_BITS - bits) else {
                continue;
            };
            if advance(second) == 0 {
                continue;
            }
            let (bits2, moves2) = (bits + skip(second), moves + advance(second));
            *pair = bits2 | moves2 << 8 | moves << 16;
            // A third symbol when the second, values included, ends inside the window too.
            if advance(second) == EOB || bits2 >= PAIR_BITS {
                continue;
            }
            let rest = (top << bits2) & 0xFFFF;
            if let Some(third) = self.code_within(rest, PAIR_BITS - bits2) {
                if advance(third) != 0 {
                    *pair = (bits2 + skip(third)) | (moves2 + advance(third)) << 8 | moves2 << 16;
                }
            }
        }
        pairs
    }

    /// The entry of the code at the top of the 16-bit `top` if it is at most `max_len` bits long.
    fn code_within(&self, top: u32, max_len: u32) -> Option<u32> {
        let len =
            (1..=max_len).find(|&len| (top >> (16 - len)) as i32 <= self.maxcode[len as usize])?;
        let index = usize::try_from((top >> (16 - len)) as i32 + self.delta[len as usize]).ok()?;
        Some(entry(*self.values.get(index)?, len))
    }

    /// The entry of the code at the top of `buf` (left-aligned, at least 16 valid bits); `None`
    /// for bits that are no code.
    #[inline(always)]
    pub(super) fn lookup(&self, buf: u64) -> Option<u32> {
        let e = self.lut[(buf >> (64 - LUT_BITS)) as usize];
        if e != 0 {
            return Some(e);
        }
        self.lookup_long(buf)
    }

    /// Codes longer than `LUT_BITS` (F.2.2.3, Figure F.16).
    #[cold]
    #[inline(never)]
    fn lookup_long(&self, buf: u64) -> Option<u32> {
        let bits = (buf >> 48) as i32;
        for len in LUT_BITS + 1..=16 {
            let code = bits >> (16 - len);
            if code <= self.maxcode[len as usize] {
                let index = usize::try_from(code + self.delta[len as usize]).ok()?;
                return Some(entry(*self.values.get(index)?, len));
            }
        }
        None
    }
}

/// The entropy-coded data of the scan with the byte stuffing removed (`FF 00` is a data `FF`),
/// cut at its restart markers.
pub(super) struct Unstuffed {
    /// The data bytes, then `PADDING` zero bytes: reading past the end gives zero bits, as in
    /// libjpeg and jpeg-decoder.
    pub(super) data: Vec<u8>,
    /// For each restart interval, where its data ends in `data`, and the restart marker after it
    /// (`None` after the last).
    intervals: Vec<(usize, Option<u8>)>,
    /// Where the marker that ends the scan begins in the file (its first `FF`).
    pub(super) end: usize,
}

/// Zero bytes after the data: a refill reads 8 bytes from at most 8 bytes past the last data bit.
const PADDING: usize = 16;

/// Removes the stuffing from the data that begins at `start` (F.1.2.3, B.1.1.2: markers may be
/// preceded by fill bytes `FF`). `None` when the data does not end in a marker (truncated) or
/// holds `FF FF 00`, which jpeg-decoder refuses.
pub(super) fn unstuff(bytes: &[u8], start: usize) -> Option<Unstuffed> {
    let mut data = Vec::with_capacity(bytes.len().saturating_sub(start) + PADDING);
    let mut intervals = Vec::new();
    let mut pos = start;
    let end = loop {
        let rest = bytes.get(pos..)?;
        let ff = pos + find_ff(rest)?;
        data.extend_from_slice(&bytes[pos..ff]);
        let mut at = ff + 1;
        while *bytes.get(at)? == 0xFF {
            at += 1;
        }
        match bytes[at] {
            0x00 if at == ff + 1 => data.push(0xFF),
            0x00 => return None,
            rst @ 0xD0..=0xD7 => intervals.push((data.len(), Some(rst))),
            _ => break ff,
        }
        pos = at + 1;
    };
    intervals.push((data.len(), None));
    data.resize(data.len() + PADDING, 0);
    Some(Unstuffed {
        data,
        intervals,
        end,
    })
}

/// The offset of the first `FF` byte, eight bytes at a time.
fn find_ff(bytes: &[u8]) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in chunks.by_ref() {
        let w = !u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        if w.wrapping_sub(0x0101_0101_0101_0101) & !w & 0x8080_8080_8080_8080 != 0 {
            break;
        }
        offset += 8;
    }
    bytes[offset..]
        .iter()
        .position(|&b| b == 0xFF)
        .map(|i| offset + i)
}

/// A bit reader over [`Unstuffed::data`], MSB first.
///
/// The refill is the branch-free one of F. Giesen's "Reading bits in far too many ways" (variant
/// 4): `buf` always holds the stream's next bits, of which the first `n` (56 to 63 after a
/// refill) are counted, so or-ing the next 8 bytes in at `n` rewrites uncounted bits with
/// themselves.
pub(super) struct Reader<'a> {
    data: &'a [u8],
    /// The byte after the last one loaded.
    pos: usize,
    pub(super) buf: u64,
    n: u32,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `data`.
    pub(super) fn new(data: &'a [u8]) -> Reader<'a> {
        Reader {
            data,
            pos: 0,
            buf: 0,
            n: 0,
        }
    }

    /// The stream position, in bits, of the next unread bit.
    fn bit_position(&self) -> usize {
        self.pos * 8 - self.n as usize
    }

    /// Starts reading at byte `pos`.
    fn seek(&mut self, pos: usize) {
        self.pos = pos;
        self.buf = 0;
        self.n = 0;
    }

    /// Ensures at least 56 valid bits: enough for a code (up to 16 bits) and the value bits after
    /// it (up to 15), or for the up to three symbols of one [`Table::pairs`] entry. Always loads
    /// (a test of `n` first was a branch the data decides: 4% slower). `None` past the padding
    /// (only corrupt data gets there).
    #[inline(always)]
    pub(super) fn refill(&mut self) -> Option<()> {
        let word = self.data.get(self.pos..self.pos + 8)?;
        self.buf |= u64::from_be_bytes(word.try_into().expect("8 bytes")) >> self.n;
        self.pos += ((63 - self.n) >> 3) as usize;
        self.n |= 56;
        Some(())
    }

    #[inline(always)]
    pub(super) fn consume(&mut self, count: u32) {
        self.buf <<= count;
        self.n -= count;
    }

    /// The next `count` (1..=32) bits as an unsigned number.
    #[inline(always)]
    pub(super) fn bits(&mut self, count: u32) -> u32 {
        let v = (self.buf >> (64 - count)) as u32;
        self.consume(count);
        v
    }

    /// The value of the code + value bits `e` describes (F.2.2.1 `EXTEND`, in i16 as jpeg-decoder's
    /// `extend`; 0 for a size of 0), and the reader past them. No branch on the data.
    #[inline(always)]
    pub(super) fn value(&mut self, e: u32) -> i16 {
        let size = symbol(e) & 15;
        // The size's bits after the code, as a number (rotating by 0 and masking gives 0).
        let v = ((self.buf << code_len(e)).rotate_left(size) & ((1 << size) - 1)) as i32;
        self.consume(skip(e));
        let negative = v < (1 << size) >> 1;
        (v - i32::from(negative) * ((1 << size) - 1)) as i16
    }
}

/// A frame component, with its place in the reduced image.
pub(super) struct Component {
    pub(super) id: u8,
    pub(super) h: usize,
    pub(super) v: usize,
    quant: usize,
    /// The quantisation factors of the kept coefficients, in the order of [`Block`].
    pub(super) q: [i32; 16],
    dc: usize,
    ac: usize,
    /// Samples per row of the reduced plane: `S` per block of the padded block grid.
    pub(super) stride: usize,
    /// Rows of the plane.
    rows: usize,
    /// The part of the plane that is image (jpeg-decoder's `Component::size` at `dct_scale` `S`).
    width: usize,
    height: usize,
    pub(super) plane: Vec<u8>,
}

/// What the marker segments before the scan set up.
pub(super) struct Setup {
    pub(super) width: usize,
    pub(super) height: usize,
    /// SOF2: the coefficients come in several scans ([`super::progressive`]).
    pub(super) progressive: bool,
    pub(super) components: Vec<Component>,
    quant: [Option<[u16; 64]>; 4],
    pub(super) dc: [Option<Table>; 4],
    pub(super) ac: [Option<Table>; 4],
    pub(super) restart_interval: usize,
    /// The body of the first scan header (SOS), as a range of the file.
    pub(super) sos: std::ops::Range<usize>,
    /// Where the entropy-coded data begins.
    pub(super) scan: usize,
}

/// Decodes a JPEG at `1 / reduction` scale (`reduction` 4 or 2): `(width, height, samples)` with 1
/// (`Grey`) or 3 samples per pixel, `width` and `height` the full size divided by `reduction` and
/// rounded up. `None` for anything not handled here (module documentation) or when the buffers
/// would exceed `max_alloc` bytes.
pub(crate) fn decode(
    bytes: &[u8],
    colour: Colour,
    reduction: usize,
    max_alloc: usize,
) -> Option<(u32, u32, Vec<u8>)> {
    let s = match reduction {
        4 => 2,
        2 => 4,
        _ => return None,
    };
    let mut setup = headers(bytes)?;
    let grey = colour == Colour::Grey;
    if grey != (setup.components.len() == 1) {
        return None;
    }
    let (h_max, v_max) = sampling(&setup.components)?;
    let mcus_x = setup.width.div_ceil(8 * h_max);
    let mcus_y = setup.height.div_ceil(8 * v_max);
    let (out_w, out_h) = (
        setup.width.div_ceil(reduction),
        setup.height.div_ceil(reduction),
    );
    // One interleaved sequential scan goes straight to the planes; anything else keeps the
    // coefficients until the last scan ([`progressive`]).
    let single = !setup.progressive && scan_header(&bytes[setup.sos.clone()], &mut setup).is_some();
    let mut total = out_w
        .checked_mul(out_h)?
        .checked_mul(setup.components.len())?;
    for c in &mut setup.components {
        let quant = setup.quant[c.quant].as_ref()?;
        for (slot, q) in c.q.iter_mut().enumerate().take(s * s) {
            *q = i32::from(quant[slot / s * 8 + slot % s]);
        }
        if single && (setup.dc[c.dc].is_none() || setup.ac[c.ac].is_none()) {
            return None;
        }
        c.stride = mcus_x * c.h * s;
        c.rows = mcus_y * c.v * s;
        c.width = (setup.width * c.h * s).div_ceil(h_max * 8);
        c.height = (setup.height * c.v * s).div_ceil(v_max * 8);
        total = total.checked_add(c.stride.checked_mul(c.rows)?)?;
    }
    if !single {
        total = total.checked_add(progressive::buffer_size(&setup, mcus_x, mcus_y)?)?;
    }
    if total > max_alloc {
        return None;
    }
    for c in &mut setup.components {
        c.plane = vec![0; c.stride * c.rows];
    }
    let end = match (s, single) {
        (2, true) => scan::<2>(bytes, &mut setup, mcus_x, mcus_y)?,
        (_, true) => scan::<4>(bytes, &mut setup, mcus_x, mcus_y)?,
        (2, false) => progressive::decode::<2>(bytes, &mut setup, mcus_x, mcus_y)?,
        (_, false) => progressive::decode::<4>(bytes, &mut setup, mcus_x, mcus_y)?,
    };
    // The end-of-image marker must follow (after optional fill bytes); more scans or anything else
    // are left to jpeg-decoder.
    let fill = bytes[end..].iter().take_while(|&&b| b == 0xFF).count();
    if fill == 0 || bytes.get(end + fill) != Some(&0xD9) {
        return None;
    }
    let pixels = match colour {
        Colour::Grey => {
            let c = &setup.components[0];
            (0..out_h)
                .flat_map(|y| &c.plane[y * c.stride..y * c.stride + out_w])
                .copied()
                .collect()
        }
        _ => interleave(&setup.components, (h_max, v_max), (out_w, out_h), colour),
    };
    Some((
        u32::try_from(out_w).ok()?,
        u32::try_from(out_h).ok()?,
        pixels,
    ))
}

/// The largest sampling factors, when the layout is one handled here.
fn sampling(components: &[Component]) -> Option<(usize, usize)> {
    match components {
        [c] if (c.h, c.v) == (1, 1) => Some((1, 1)),
        [y, cb, cr]
            if matches!((y.h, y.v), (1, 1) | (2, 1) | (1, 2) | (2, 2))
                && (cb.h, cb.v, cr.h, cr.v) == (1, 1, 1, 1) =>
        {
            Some((y.h, y.v))
        }
        _ => None,
    }
}

/// Reads the marker segments up to the first scan (ITU T.81 B.2).
fn headers(bytes: &[u8]) -> Option<Setup> {
    if bytes.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut setup = Setup {
        width: 0,
        height: 0,
        progressive: false,
        components: Vec::new(),
        quant: [None; 4],
        dc: [None, None, None, None],
        ac: [None, None, None, None],
        restart_interval: 0,
        sos: 0..0,
        scan: 0,
    };
    let mut pos = 2;
    loop {
        if *bytes.get(pos)? != 0xFF {
            return None;
        }
        while *bytes.get(pos + 1)? == 0xFF {
            pos += 1;
        }
        let marker = bytes[pos + 1];
        if marker == 0x01 || (0xD0..=0xD8).contains(&marker) || marker == 0xD9 {
            return None; // no parameters expected here
        }
        let len = usize::from(u16::from_be_bytes([
            *bytes.get(pos + 2)?,
            *bytes.get(pos + 3)?,
        ]));
        if len < 2 {
            return None;
        }
        let body = bytes.get(pos + 4..pos + 2 + len)?;
        match marker {
            0xC0 | 0xC1 => frame(body, &mut setup)?,
            0xC2 => {
                frame(body, &mut setup)?;
                setup.progressive = true;
            }
            0xC3..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => return None,
            0xC4 => huffman_tables(body, &mut setup)?,
            0xCC => return None, // arithmetic-coding conditioning
            0xDB => quant_tables(body, &mut setup)?,
            0xDD => setup.restart_interval = restart_interval(body)?,
            0xDA => {
                setup.sos = pos + 4..pos + 2 + len;
                setup.scan = pos + 2 + len;
                return Some(setup);
            }
            _ => {} // APPn, COM and the rest: nothing that changes the samples
        }
        pos += 2 + len;
    }
}

/// DRI (B.2.4.4): MCUs per restart interval, 0 for none.
pub(super) fn restart_interval(body: &[u8]) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes(body.try_into().ok()?)))
}

/// SOF0 / SOF1 / SOF2 (B.2.2).
fn frame(body: &[u8], setup: &mut Setup) -> Option<()> {
    if !setup.components.is_empty() {
        return None; // a second frame header
    }
    let [precision, h0, h1, w0, w1, count, rest @ ..] = body else {
        return None;
    };
    let count = usize::from(*count);
    if *precision != 8 || rest.len() != 3 * count {
        return None;
    }
    setup.height = usize::from(u16::from_be_bytes([*h0, *h1]));
    setup.width = usize::from(u16::from_be_bytes([*w0, *w1]));
    if setup.width == 0 || setup.height == 0 {
        return None; // height 0 means a DNL marker later: not handled
    }
    for c in rest.chunks_exact(3) {
        if c[2] > 3 || setup.components.iter().any(|o| o.id == c[0]) {
            return None;
        }
        setup.components.push(Component {
            id: c[0],
            h: usize::from(c[1] >> 4),
            v: usize::from(c[1] & 15),
            quant: usize::from(c[2]),
            q: [0; 16],
            dc: 0,
            ac: 0,
            stride: 0,
            rows: 0,
            width: 0,
            height: 0,
            plane: Vec::new(),
        });
    }
    Some(())
}

/// DHT (B.2.4.2): one or more tables.
pub(super) fn huffman_tables(mut body: &[u8], setup: &mut Setup) -> Option<()> {
    while !body.is_empty() {
        let class_id = *body.first()?;
        let counts: &[u8; 16] = body.get(1..17)?.try_into().ok()?;
        let n: usize = counts.iter().map(|&c| usize::from(c)).sum();
        let values = body.get(17..17 + n)?;
        let table = Table::new(counts, values)?;
        let id = usize::from(class_id & 15);
        match (class_id >> 4, id) {
            (0, 0..=3) => setup.dc[id] = Some(table),
            (1, 0..=3) => setup.ac[id] = Some(table),
            _ => return None,
        }
        body = &body[17 + n..];
    }
    Some(())
}

/// DQT (B.2.4.1): 8- or 16-bit tables, stored in natural order.
fn quant_tables(mut body: &[u8], setup: &mut Setup) -> Option<()> {
    while !body.is_empty() {
        let pq_tq = *body.first()?;
        let id = usize::from(pq_tq & 15);
        let wide = match pq_tq >> 4 {
            0 => false,
            1 => true,
            _ => return None,
        };
        let size = if wide { 128 } else { 64 };
        let values = body.get(1..1 + size)?;
        let mut table = [0u16; 64];
        for (k, &natural) in UNZIGZAG.iter().enumerate() {
            table[natural] = if wide {
                u16::from_be_bytes([values[2 * k], values[2 * k + 1]])
            } else {
                u16::from(values[k])
            };
        }
        // jpeg-decoder refuses a zero factor.
        if id > 3 || table.contains(&0) {
            return None;
        }
        setup.quant[id] = Some(table);
        body = &body[1 + size..];
    }
    Some(())
}

/// SOS (B.2.3): one scan with every component, in frame order, sequential (Ss 0, Se 63, Ah Al 0).
fn scan_header(body: &[u8], setup: &mut Setup) -> Option<()> {
    let count = usize::from(*body.first()?);
    if count != setup.components.len() || body.len() != 4 + 2 * count {
        return None;
    }
    for (c, sel) in setup.components.iter_mut().zip(body[1..].chunks_exact(2)) {
        if sel[0] != c.id || sel[1] >> 4 > 3 || sel[1] & 15 > 3 {
            return None;
        }
        c.dc = usize::from(sel[1] >> 4);
        c.ac = usize::from(sel[1] & 15);
    }
    (body[1 + 2 * count..] == [0, 63, 0]).then_some(())
}

/// Entropy-decodes the scan into the components' reduced planes; returns where the data ended (the
/// marker after it).
fn scan<const S: usize>(
    bytes: &[u8],
    setup: &mut Setup,
    mcus_x: usize,
    mcus_y: usize,
) -> Option<usize> {
    let Setup {
        components,
        dc,
        ac,
        restart_interval,
        scan,
        ..
    } = setup;
    let tables: Vec<(&Table, &Table)> = components
        .iter()
        .map(|c| Some((dc[c.dc].as_ref()?, ac[c.ac].as_ref()?)))
        .collect::<Option<_>>()?;
    let unstuffed = unstuff(bytes, *scan)?;
    let mut bits = Reader::new(&unstuffed.data);
    let mut restarts = Restarts::new(&unstuffed, *restart_interval)?;
    let mut predictors = [0i16; 3];
    let mut eob_run = 0u16;
    for mcu_y in 0..mcus_y {
        for mcu_x in 0..mcus_x {
            if restarts.before_mcu(&mut bits)? {
                predictors = [0; 3];
                eob_run = 0;
            }
            for ((c, &(dc, ac)), predictor) in components
                .iter_mut()
                .zip(&tables)
                .zip(predictors.iter_mut())
            {
                for v in 0..c.v {
                    for h in 0..c.h {
                        let block = block::<S>(&mut bits, dc, ac, predictor, &mut eob_run)?;
                        let x = (mcu_x * c.h + h) * S;
                        let y = (mcu_y * c.v + v) * S;
                        let out = &mut c.plane[y * c.stride + x..];
                        match S {
                            2 => idct_2x2(&block, &c.q, out, c.stride),
                            _ => idct_4x4(&block, &c.q, out, c.stride),
                        }
                    }
                }
            }
        }
    }
    restarts.finish(&bits)?;
    Some(unstuffed.end)
}

/// A scan's restart intervals (F.1.2.3): the reader moves from one to the next after every
/// `every` MCUs, where a restart marker must be, in sequence.
pub(super) struct Restarts<'u> {
    intervals: std::slice::Iter<'u, (usize, Option<u8>)>,
    /// Where the current interval's data ends, and the marker there.
    current: (usize, Option<u8>),
    every: usize,
    left: usize,
    expected: u8,
}

impl<'u> Restarts<'u> {
    /// `every` MCUs per interval (the DRI value; 0 for no restart markers).
    pub(super) fn new(unstuffed: &'u Unstuffed, every: usize) -> Option<Restarts<'u>> {
        let mut intervals = unstuffed.intervals.iter();
        let current = *intervals.next()?;
        Some(Restarts {
            intervals,
            current,
            every,
            left: every,
            expected: 0,
        })
    }

    /// Called before each MCU: `Some(true)` when an interval ended there (the decoder's predictors
    /// and end-of-band run start over), `None` when its data did not end there or the marker is
    /// not the next in sequence.
    #[inline(always)]
    pub(super) fn before_mcu(&mut self, bits: &mut Reader<'_>) -> Option<bool> {
        if self.every == 0 {
            return Some(false);
        }
        let restarted = self.left == 0;
        if restarted {
            let (end, marker) = self.current;
            if !at_end(bits, end) || marker != Some(0xD0 + self.expected) {
                return None;
            }
            bits.seek(end);
            self.current = *self.intervals.next()?;
            self.expected = (self.expected + 1) % 8;
            self.left = self.every;
        }
        self.left -= 1;
        Some(restarted)
    }

    /// After the last MCU: the data must end here. Restart markers after the last interval are
    /// skipped (as jpeg-decoder does), which leaves empty intervals.
    pub(super) fn finish(mut self, bits: &Reader<'_>) -> Option<()> {
        let end = self.current.0;
        (at_end(bits, end) && self.intervals.all(|&(e, _)| e == end)).then_some(())
    }
}

/// Whether the reader has read all of the data up to byte `end` but the byte-alignment padding
/// of its last byte (and nothing beyond).
fn at_end(bits: &Reader<'_>, end: usize) -> bool {
    matches!((end * 8).checked_sub(bits.bit_position()), Some(0..=7))
}

/// One block (F.2.2.1, F.2.2.2): the DC difference and the AC run/size symbols, keeping the
/// coefficients an `S`x`S` IDCT reads and skipping the others' bits. An end-of-band run (`r` > 0 with size 0, which
/// a baseline encoder never writes) skips the AC data of that many further blocks, as jpeg-decoder
/// reads it.
#[inline(always)]
fn block<const S: usize>(
    bits: &mut Reader<'_>,
    dc: &Table,
    ac: &Table,
    predictor: &mut i16,
    eob_run: &mut u16,
) -> Option<Block> {
    bits.refill()?;
    let e = dc.lookup(bits.buf)?;
    if symbol(e) > 11 {
        return None; // no DC difference is that large (F.1.2.1.1, Table F.1)
    }
    *predictor = predictor.wrapping_add(bits.value(e));
    let mut block = [0; 17];
    block[0] = *predictor;
    if *eob_run > 0 {
        *eob_run -= 1;
        return Some(block);
    }
    // Up to the last position the IDCT reads, every value lands in its slot (or the trash slot)
    // without branching on the data; an end of block or a zero run has the value 0.
    let (slots, last) = match S {
        2 => (&SLOTS_2, const { last_kept(2) }),
        _ => (&SLOTS_4, const { last_kept(4) }),
    };
    let mut k = 1u32;
    while k <= last {
        bits.refill()?;
        let e = ac.lookup(bits.buf)?;
        if advance(e) == 0 {
            return end_of_band_run(bits, e, block, eob_run);
        }
        let at = (k + (symbol(e) >> 4)).min(63);
        block[usize::from(slots[at as usize])] = bits.value(e);
        k += advance(e);
    }
    // The rest is skipped, code and value bits at once, up to three symbols at a time where their
    // codes fit in `PAIR_BITS`. The only branch that depends on the data is the one that leaves the
    // loop, once per block.
    while k < 64 {
        bits.refill()?;
        let pair = ac.pairs[(bits.buf >> (64 - PAIR_BITS)) as usize];
        if pair == 0 || k + (pair >> 16) >= 64 {
            // A long code, an end-of-band run, or symbols before the last that end the block.
            let e = ac.lookup(bits.buf)?;
            if advance(e) == 0 {
                return end_of_band_run(bits, e, block, eob_run);
            }
            bits.consume(skip(e));
            k += advance(e);
            continue;
        }
        bits.consume(pair & 63);
        k += (pair >> 8) & 0xFF;
    }
    // 64: the last coefficient was at position 63; EOB and up: an end of block. Anything between
    // is a coefficient past position 63 or a zero run past the end, which jpeg-decoder reads
    // differently depending on its lookup table: left to it.
    (k == 64 || k >= EOB).then_some(block)
}

/// An end-of-band run (`r` > 0, size 0; G.1.2.2): this block's and the next `2^r - 1 + bits`
/// blocks' AC data end here, as jpeg-decoder reads it in a sequential scan.
#[cold]
#[inline(never)]
fn end_of_band_run(
    bits: &mut Reader<'_>,
    e: u32,
    block: Block,
    eob_run: &mut u16,
) -> Option<Block> {
    let run = symbol(e) >> 4;
    bits.consume(code_len(e));
    *eob_run = (1u16 << run) - 1 + bits.bits(run) as u16;
    Some(block)
}

/// jpeg-decoder's `dequantize_and_idct_block_2x2` (stb_image's arithmetic, wrapping i32): 2x2
/// samples of the block at `out[0]`, rows `stride` apart.
#[inline(always)]
pub(super) fn idct_2x2(block: &Block, q: &[i32; 16], out: &mut [u8], stride: usize) {
    let s00 = i32::from(block[0]).wrapping_mul(q[0]);
    let s01 = i32::from(block[1]).wrapping_mul(q[1]);
    let s10 = i32::from(block[2]).wrapping_mul(q[2]);
    let s11 = i32::from(block[3]).wrapping_mul(q[3]);
    // Rounding (half of 1 << 3) and the level shift (128 << 3).
    let bias = 4 + (128 << 3);
    let x0 = s00.wrapping_add(s10).wrapping_add(bias);
    let x2 = s00.wrapping_sub(s10).wrapping_add(bias);
    let x1 = s01.wrapping_add(s11);
    let x3 = s01.wrapping_sub(s11);
    let clamp = |x: i32| (x >> 3).clamp(0, 255) as u8;
    let (top, bottom) = out.split_at_mut(stride);
    top[..2].copy_from_slice(&[clamp(x0.wrapping_add(x1)), clamp(x0.wrapping_sub(x1))]);
    bottom[..2].copy_from_slice(&[clamp(x2.wrapping_add(x3)), clamp(x2.wrapping_sub(x3))]);
}

/// `stbi_f2f` of jpeg-decoder's IDCT: `(x * 4096 + 0.5) as i32`, rounding toward zero after adding
/// one half whatever the sign (the test checks them).
const F2F_0_541196100: i32 = 2217;
const F2F_M1_847759065: i32 = -7567;
const F2F_0_765366865: i32 = 3135;

/// jpeg-decoder's `dequantize_and_idct_block_4x4` (stb_image's even-part butterfly on the four
/// lowest frequencies, columns then rows, wrapping i32): 4x4 samples of the block at `out[0]`,
/// rows `stride` apart.
#[inline(always)]
pub(super) fn idct_4x4(block: &Block, q: &[i32; 16], out: &mut [u8], stride: usize) {
    const CONST_BITS: u32 = 12;
    const PASS1_BITS: u32 = 2;
    const FINAL_BITS: u32 = CONST_BITS + PASS1_BITS + 3;
    let odd = |s1: i32, s3: i32| {
        let p1 = s1.wrapping_add(s3).wrapping_mul(F2F_0_541196100);
        (
            p1.wrapping_add(s3.wrapping_mul(F2F_M1_847759065)),
            p1.wrapping_add(s1.wrapping_mul(F2F_0_765366865)),
        )
    };
    let mut temp = [0i32; 16];
    for i in 0..4 {
        let s = |r: usize| i32::from(block[r * 4 + i]).wrapping_mul(q[r * 4 + i]);
        let (s0, s1, s2, s3) = (s(0), s(1), s(2), s(3));
        let x0 = s0.wrapping_add(s2) << PASS1_BITS;
        let x2 = s0.wrapping_sub(s2) << PASS1_BITS;
        let (t0, t2) = odd(s1, s3);
        let t0 = t0.wrapping_add(512) >> (CONST_BITS - PASS1_BITS);
        let t2 = t2.wrapping_add(512) >> (CONST_BITS - PASS1_BITS);
        temp[i] = x0.wrapping_add(t2);
        temp[i + 12] = x0.wrapping_sub(t2);
        temp[i + 4] = x2.wrapping_add(t0);
        temp[i + 8] = x2.wrapping_sub(t0);
    }
    let bias = (1 << (FINAL_BITS - 1)) + (128 << FINAL_BITS);
    let clamp = |x: i32| (x >> FINAL_BITS).clamp(0, 255) as u8;
    for (i, row) in temp.chunks_exact(4).enumerate() {
        let x0 = row[0]
            .wrapping_add(row[2])
            .wrapping_shl(CONST_BITS)
            .wrapping_add(bias);
        let x2 = row[0]
            .wrapping_sub(row[2])
            .wrapping_shl(CONST_BITS)
            .wrapping_add(bias);
        let (t0, t2) = odd(row[1], row[3]);
        out[i * stride..][..4].copy_from_slice(&[
            clamp(x0.wrapping_add(t2)),
            clamp(x2.wrapping_add(t0)),
            clamp(x2.wrapping_sub(t0)),
            clamp(x0.wrapping_sub(t2)),
        ]);
    }
}

/// Upsamples the chroma to the luma's grid as jpeg-decoder's `Upsampler` does (the "fancy"
/// triangle filter of libjpeg's `h2v1_fancy_upsample` / `h2v2_fancy_upsample`, in jpeg-decoder's
/// rounding) and interleaves the three components, converted per `colour`.
fn interleave(
    components: &[Component],
    (h_max, v_max): (usize, usize),
    (out_w, out_h): (usize, usize),
    colour: Colour,
) -> Vec<u8> {
    let mut out = vec![0u8; out_w * out_h * 3];
    let line_len = components.iter().map(|c| c.width).max().unwrap_or(0) * h_max;
    let mut lines = [
        vec![0u8; line_len],
        vec![0u8; line_len],
        vec![0u8; line_len],
    ];
    for (row, pixels) in out.chunks_exact_mut(out_w * 3).enumerate() {
        for (c, line) in components.iter().zip(lines.iter_mut()) {
            upsample_row(c, (c.h < h_max, c.v < v_max), row, line);
        }
        let [y, cb, cr] = &lines;
        convert_row(y, cb, cr, pixels, colour == Colour::YCbCr);
    }
    out
}

simd_fn! {
    /// One row of upsampled components to interleaved pixels, converted from YCbCr when `ycc`
    /// (compiled for AVX-512 / AVX2 where the CPU has them: the conversion vectorizes).
    fn convert_row(y: &[u8], cb: &[u8], cr: &[u8], pixels: &mut [u8], ycc: bool) {
        let samples = pixels.chunks_exact_mut(3).zip(y).zip(cb).zip(cr);
        if ycc {
            for (((p, &y), &cb), &cr) in samples {
                p.copy_from_slice(&ycc_to_rgb(y, cb, cr));
            }
        } else {
            for (((p, &y), &cb), &cr) in samples {
                p.copy_from_slice(&[y, cb, cr]);
            }
        }
    }
}

/// One output row of a component, doubled horizontally and/or vertically (jpeg-decoder's
/// `UpsamplerH1V1`, `H2V1`, `H1V2`, `H2V2`).
fn upsample_row(c: &Component, (double_x, double_y): (bool, bool), row: usize, line: &mut [u8]) {
    upsample_row_simd(c, double_x, double_y, row, line);
}

simd_fn! {
    /// [`upsample_row`], compiled for AVX-512 / AVX2 where the CPU has them.
    fn upsample_row_simd(c: &Component, double_x: bool, double_y: bool, row: usize, line: &mut [u8]) {
        upsample_row_portable(c, (double_x, double_y), row, line);
    }
}

/// [`upsample_row`], written so that each output pair depends only on its own inputs.
#[inline(always)]
fn upsample_row_portable(
    c: &Component,
    (double_x, double_y): (bool, bool),
    row: usize,
    line: &mut [u8],
) {
    let (near, far) = if double_y {
        // jpeg-decoder: `row_near = row / 2`, `row_far` the row above for even rows (the first
        // row for row 0) and the row below for odd ones, at most the last.
        let near = row / 2;
        let far = if row.is_multiple_of(2) {
            near.saturating_sub(1)
        } else {
            near + 1
        };
        (near, far.min(c.height - 1))
    } else {
        (row, row)
    };
    let near = &c.plane[near * c.stride..][..c.width];
    let far = &c.plane[far * c.stride..][..c.width];
    let w = c.width;
    let u = |x: u8| u32::from(x);
    match (double_x, double_y) {
        (false, false) => line[..w].copy_from_slice(near),
        (false, true) => {
            for ((o, &n), &f) in line.iter_mut().zip(near).zip(far) {
                *o = ((3 * u(n) + u(f) + 2) >> 2) as u8;
            }
        }
        (true, false) => {
            if w == 1 {
                line[..2].fill(near[0]);
                return;
            }
            line[0] = near[0];
            line[1] = ((u(near[0]) * 3 + u(near[1]) + 2) >> 2) as u8;
            // Output 2i and 2i + 1 for i in 1..w - 1, from samples i - 1, i and i + 1.
            for (pair, s) in line[2..2 * w - 2].chunks_exact_mut(2).zip(near.windows(3)) {
                let sample = 3 * u(s[1]) + 2;
                pair[0] = ((sample + u(s[0])) >> 2) as u8;
                pair[1] = ((sample + u(s[2])) >> 2) as u8;
            }
            line[2 * (w - 1)] = ((u(near[w - 1]) * 3 + u(near[w - 2]) + 2) >> 2) as u8;
            line[2 * (w - 1) + 1] = near[w - 1];
        }
        (true, true) => {
            let column = |i: usize| 3 * u(near[i]) + u(far[i]);
            if w == 1 {
                line[..2].fill(((column(0) + 2) >> 2) as u8);
                return;
            }
            line[0] = ((column(0) + 2) >> 2) as u8;
            // Output 2i - 1 and 2i for i in 1..w, from columns i - 1 and i.
            let pairs = line[1..2 * w - 1].chunks_exact_mut(2);
            for ((pair, n), f) in pairs.zip(near.windows(2)).zip(far.windows(2)) {
                let t0 = 3 * u(n[0]) + u(f[0]);
                let t1 = 3 * u(n[1]) + u(f[1]);
                pair[0] = ((3 * t0 + t1 + 8) >> 4) as u8;
                pair[1] = ((3 * t1 + t0 + 8) >> 4) as u8;
            }
            line[2 * w - 1] = ((column(w - 1) + 2) >> 2) as u8;
        }
    }
}

/// Natural (row-major) position of each zigzag index (ITU T.81 Figure A.6).
const UNZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use jpeg_decoder::ColorTransform;
    use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

    /// A deterministic photo-like picture: gradients, saturated edges and fine noise.
    pub(in crate::preprocess) fn picture(width: usize, height: usize, channels: usize) -> Vec<u8> {
        let mut state = 0x9E37_79B9_u32;
        let mut noise = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 41) as i32 - 20
        };
        let mut out = Vec::with_capacity(width * height * channels);
        for y in 0..height {
            for x in 0..width {
                for c in 0..channels {
                    let base = match c {
                        0 => (x * 255 / width.max(1)) as i32,
                        1 => (y * 255 / height.max(1)) as i32,
                        _ => {
                            if (x / 7 + y / 5) % 2 == 0 {
                                230
                            } else {
                                20
                            }
                        }
                    };
                    out.push((base + noise()).clamp(0, 255) as u8);
                }
            }
        }
        out
    }

    fn encode(
        width: usize,
        height: usize,
        grey: bool,
        sampling: SamplingFactor,
        restart: u16,
        optimized: bool,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = Encoder::new(&mut out, 90);
        encoder.set_sampling_factor(sampling);
        encoder.set_restart_interval(restart);
        encoder.set_optimized_huffman_tables(optimized);
        let (channels, kind) = if grey {
            (1, ColorType::Luma)
        } else {
            (3, ColorType::Rgb)
        };
        encoder
            .encode(
                &picture(width, height, channels),
                width as u16,
                height as u16,
                kind,
            )
            .unwrap();
        out
    }

    /// jpeg-decoder at `1 / reduction` scale (`None` when it picks another scale for this size).
    pub(in crate::preprocess) fn reference(
        bytes: &[u8],
        transform: ColorTransform,
        reduction: u16,
    ) -> Option<(u32, u32, Vec<u8>)> {
        let mut decoder = jpeg_decoder::Decoder::new(bytes);
        decoder.set_color_transform(transform);
        decoder.read_info().unwrap();
        let info = decoder.info().unwrap();
        let want = (
            info.width.div_ceil(reduction),
            info.height.div_ceil(reduction),
        );
        let got = decoder.scale(want.0, want.1).unwrap();
        // jpeg-decoder picks a smaller scale when that already reaches the request in either axis.
        let smaller = (
            info.width.div_ceil(2 * reduction),
            info.height.div_ceil(2 * reduction),
        );
        if got != want || smaller.0 >= want.0 || smaller.1 >= want.1 {
            return None;
        }
        let pixels = decoder.decode().ok()?;
        Some((u32::from(got.0), u32::from(got.1), pixels))
    }

    pub(in crate::preprocess) const SAMPLINGS: [SamplingFactor; 4] = [
        SamplingFactor::F_1_1,
        SamplingFactor::F_2_1,
        SamplingFactor::F_1_2,
        SamplingFactor::F_2_2,
    ];
    pub(in crate::preprocess) const SIZES: [(usize, usize); 5] =
        [(203, 157), (64, 48), (17, 33), (9, 7), (120, 5)];

    #[test]
    fn samples_equal_jpeg_decoders_before_colour_conversion() {
        let mut compared = 0;
        for sampling in SAMPLINGS {
            for (w, h) in SIZES {
                for restart in [0, 1, 3] {
                    let bytes = encode(w, h, false, sampling, restart, false);
                    for reduction in [4, 2] {
                        let ours = decode(&bytes, Colour::Rgb, reduction, usize::MAX);
                        let label = format!("{sampling:?} {w}x{h} restart {restart} 1/{reduction}");
                        let Some(expected) =
                            reference(&bytes, ColorTransform::RGB, reduction as u16)
                        else {
                            continue; // a size where jpeg-decoder picks a smaller scale
                        };
                        assert_eq!(
                            ours.as_ref().map(|o| (o.0, o.1)),
                            Some((expected.0, expected.1)),
                            "{label}"
                        );
                        assert!(ours.unwrap().2 == expected.2, "{label}: samples differ");
                        compared += 1;
                    }
                }
            }
        }
        assert!(compared >= 90, "only {compared} layouts compared");
    }

    #[test]
    fn greyscale_equals_jpeg_decoder() {
        for (w, h) in SIZES {
            for restart in [0, 2] {
                let bytes = encode(w, h, true, SamplingFactor::F_1_1, restart, false);
                for reduction in [4, 2] {
                    let Some(expected) =
                        reference(&bytes, ColorTransform::Grayscale, reduction as u16)
                    else {
                        continue;
                    };
                    assert_eq!(
                        decode(&bytes, Colour::Grey, reduction, usize::MAX),
                        Some(expected),
                        "{w}x{h} 1/{reduction}"
                    );
                    // A colour request for a one-component frame (and the reverse) is not decoded here.
                    assert_eq!(decode(&bytes, Colour::YCbCr, reduction, usize::MAX), None);
                }
            }
        }
        let colour = encode(64, 48, false, SamplingFactor::F_2_2, 0, false);
        assert_eq!(decode(&colour, Colour::Grey, 4, usize::MAX), None);
        // Only 1/2 and 1/4.
        assert_eq!(decode(&colour, Colour::YCbCr, 8, usize::MAX), None);
        assert_eq!(decode(&colour, Colour::YCbCr, 1, usize::MAX), None);
    }

    #[test]
    fn idct_constants_are_jpeg_decoders() {
        let f2f = |x: f32| (x * 4096.0 + 0.5) as i32;
        assert_eq!(F2F_0_541196100, f2f(0.541_196_1));
        assert_eq!(F2F_M1_847759065, f2f(-1.847_759_1));
        assert_eq!(F2F_0_765366865, f2f(0.765_366_85));
        assert_eq!((last_kept(2), last_kept(4)), (4, 24));
        assert_eq!(&SLOTS_2[..5], &[0, 1, 2, TRASH as u8, 3]);
    }

    #[test]
    fn colour_conversion_is_libjpegs_and_close_to_jpeg_decoders() {
        let bytes = encode(203, 157, false, SamplingFactor::F_2_2, 0, false);
        let (_, _, raw) = decode(&bytes, Colour::Rgb, 4, usize::MAX).unwrap();
        let (_, _, rgb) = decode(&bytes, Colour::YCbCr, 4, usize::MAX).unwrap();
        let converted: Vec<u8> = raw
            .chunks_exact(3)
            .flat_map(|p| ycc_to_rgb(p[0], p[1], p[2]))
            .collect();
        assert_eq!(rgb, converted);
        // jpeg-decoder's own conversion (SIMD, 6 fractional bits) rounds differently.
        let (_, _, theirs) = reference(&bytes, ColorTransform::YCbCr, 4).unwrap();
        let max = rgb
            .iter()
            .zip(&theirs)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(max <= 2, "max |Δ| {max} against jpeg-decoder's conversion");
    }

    #[test]
    fn other_kinds_of_jpeg_are_left_to_jpeg_decoder() {
        // 4:1:1 (luma 4x1) is not one of the layouts handled.
        let wide = encode(64, 48, false, SamplingFactor::F_4_1, 0, false);
        assert_eq!(decode(&wide, Colour::YCbCr, 4, usize::MAX), None);
        // The buffers must fit the allocation limit.
        let bytes = encode(64, 48, false, SamplingFactor::F_2_2, 0, false);
        assert!(decode(&bytes, Colour::YCbCr, 4, 500).is_none());
        assert!(decode(&bytes, Colour::YCbCr, 4, 1 << 20).is_some());
        // Not a JPEG, or only its start.
        assert_eq!(decode(b"not a jpeg", Colour::YCbCr, 4, usize::MAX), None);
        assert_eq!(
            decode(&bytes[..bytes.len() / 2], Colour::YCbCr, 4, usize::MAX),
            None
        );
    }

    #[test]
    fn damaged_scans_never_panic_and_misplaced_markers_are_refused() {
        let bytes = encode(96, 64, false, SamplingFactor::F_2_2, 2, false);
        let scan = headers(&bytes).unwrap().scan;
        // A restart marker out of sequence.
        let rst = (scan..bytes.len() - 1)
            .find(|&i| bytes[i] == 0xFF && bytes[i + 1] == 0xD0)
            .unwrap();
        let mut wrong = bytes.clone();
        wrong[rst + 1] = 0xD3;
        assert_eq!(decode(&wrong, Colour::YCbCr, 4, usize::MAX), None);
        // The data cut short (end-of-image marker right after): refused, as data is missing.
        let mut cut = bytes[..scan + (bytes.len() - scan) / 2].to_vec();
        cut.extend([0xFF, 0xD9]);
        assert_eq!(decode(&cut, Colour::YCbCr, 4, usize::MAX), None);
        // Flipped bits anywhere in the file (headers and tables too), and files cut anywhere: any
        // result but a panic (200,000 ran clean on the final code).
        for (_, damaged) in damaged_copies(&bytes, 12345, 1000) {
            let _ = decode(&damaged, Colour::YCbCr, 4, usize::MAX);
        }
    }

    /// `iters` damaged copies of `bytes` with their number (`CNCLIP_FUZZ_ITERS` overrides the
    /// count, to run more locally): every fourth cut short somewhere, the others with one bit
    /// flipped anywhere, headers and tables too. Deterministic for a `seed`.
    pub(in crate::preprocess) fn damaged_copies(
        bytes: &[u8],
        seed: u32,
        iters: usize,
    ) -> impl Iterator<Item = (usize, Vec<u8>)> + '_ {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            state >> 8
        };
        let iters = std::env::var("CNCLIP_FUZZ_ITERS").map_or(iters, |v| v.parse().unwrap());
        (0..iters).map(move |i| {
            let at = next() as usize % bytes.len();
            let mut damaged = bytes.to_vec();
            if i % 4 == 0 {
                damaged.truncate(at);
            } else {
                damaged[at] ^= 1 << (next() % 8);
            }
            (i, damaged)
        })
    }

    #[test]
    fn huffman_tables_that_are_no_prefix_code_are_refused() {
        let mut counts = [0u8; 16];
        counts[0] = 3; // three codes of one bit
        assert!(Table::new(&counts, &[1, 2, 3]).is_none());
        counts[0] = 2;
        assert!(Table::new(&counts, &[1, 2]).is_some());
        assert!(Table::new(&counts, &[1]).is_none());
    }

    #[test]
    #[ignore = "timing on local photos: CNCLIP_REDUCED_PHOTO=/path/to.jpg"]
    fn time_against_jpeg_decoder() {
        let path = std::env::var("CNCLIP_REDUCED_PHOTO").unwrap();
        let bytes = std::fs::read(path).unwrap();
        let time = |f: &dyn Fn()| {
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                f();
                best = best.min(t.elapsed().as_secs_f64() * 1e3);
            }
            best
        };
        for reduction in [4, 2] {
            let ours = time(&|| {
                decode(&bytes, Colour::YCbCr, reduction, usize::MAX).unwrap();
            });
            let theirs = time(&|| {
                reference(&bytes, ColorTransform::YCbCr, reduction as u16).unwrap();
            });
            println!("1/{reduction}: ours {ours:.1} ms, jpeg-decoder {theirs:.1} ms");
        }
    }
}
