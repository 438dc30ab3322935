//! JPEGs whose coefficients come in several scans, decoded at 1/4 or 1/2 scale for
//! [`super::reduced`]: progressive ones (SOF2, ITU T.81 Annex G), which browsers, image editors
//! and `jpegtran -progressive` write, and sequential ones with a scan per component (what
//! jpeg-encoder writes with optimised tables).
//!
//! Each scan brings a band of zigzag positions (`Ss..=Se`) of one component, or the DC
//! coefficients of several, and either their first bits (down to bit `Al`) or one more bit of
//! precision (a refinement: `Ah = Al + 1`). Nothing can be decoded before the last scan, so every
//! block keeps, across the scans, only what the reduced IDCT reads (the coefficients of its
//! top-left 2x2 or 4x4 corner, as [`Block`]) and one bit per zigzag position saying whether that
//! coefficient is non-zero so far: that is all a refinement needs of the others (G.1.2.3: each
//! non-zero coefficient in the band gets a correction bit, which changes only its own value; the
//! zero ones count towards the run before a new coefficient). The correction bits of a run of
//! non-zero coefficients are read as one number and only the kept coefficients' bits are looked
//! at. 48 bytes per block instead of jpeg-decoder's 128, and its IDCT, colour conversion and
//! upsampling after the last scan are [`super::reduced`]'s.
//!
//! On the two progressive 12-MP photos of `tools/gen_test_photos.py` (libjpeg's ten-scan script)
//! at 1/4, on the Xeon build machine: 83-91 ms where jpeg-decoder takes 190-204 (the same photos
//! saved baseline: 28 ms). The two refinement scans of the luma take two thirds of it. The
//! position after a run of zeros is the zero positions' mask's `run`-th set bit: one `pdep` where
//! the CPU runs it fast (110 -> 83-91 ms; every BMI2 Intel CPU, AMD from Zen 3), elsewhere the
//! mask's lowest bit cleared a fixed 15 times, keeping only the first `run` results, rather than
//! a loop of `run` steps (119 -> 110 ms: that loop's exit mispredicted). `popcnt`/`tzcnt` where
//! the CPU has them made no measurable difference but cost nothing.
//!
//! The samples equal jpeg-decoder's at the same scale (tests, on files written by libjpeg-turbo
//! through PIL and by jpeg-encoder). What jpeg-decoder would read in a way of its own gives `None`
//! and goes to it, as in [`super::reduced`]: a scan that is not the next step of its band (a
//! second first scan, a refinement of a band not at bit `Ah`, a band left unfinished at the end),
//! a DQT segment between scans, a coefficient past the end of its band, and any damage.

use super::reduced::{
    code_len, huffman_tables, idct_2x2, idct_4x4, restart_interval, slots, symbol, unstuff, Block,
    Reader, Restarts, Setup, Table, TRASH,
};

/// What a block keeps over the scans.
#[derive(Clone, Copy, Default)]
struct Coefficients {
    /// Bit `k`: the coefficient at zigzag position `k` is non-zero so far.
    nonzero: u64,
    /// The kept coefficients, as far as decoded (the others' values land in the trash slot).
    block: Block,
}

/// The zigzag positions an `S`x`S` IDCT reads, as a mask.
const fn kept_mask(s: usize) -> u64 {
    let slots = slots(s);
    let mut mask = 0u64;
    let mut k = 0;
    while k < 64 {
        if slots[k] as usize != TRASH {
            mask |= 1 << k;
        }
        k += 1;
    }
    mask
}

/// Positions `from..=to` (both at most 63) as a mask.
#[inline(always)]
fn band(from: u32, to: u32) -> u64 {
    (u64::MAX >> (63 - to)) & (u64::MAX << from)
}

/// "Not coded yet" in [`Decoder::coded`].
const UNCODED: u8 = u8::MAX;

/// Bytes of coefficient storage [`decode`] needs besides the planes; `None` on overflow.
pub(super) fn buffer_size(setup: &Setup, mcus_x: usize, mcus_y: usize) -> Option<usize> {
    let blocks = setup.components.iter().try_fold(0usize, |sum, c| {
        sum.checked_add(
            mcus_x
                .checked_mul(c.h)?
                .checked_mul(mcus_y.checked_mul(c.v)?)?,
        )
    })?;
    blocks.checked_mul(std::mem::size_of::<Coefficients>())
}

/// One scan's parameters (B.2.3).
struct Scan {
    /// Per component in the scan: its index in the frame and its DC and AC table ids.
    components: Vec<(usize, usize, usize)>,
    ss: u32,
    se: u32,
    ah: u32,
    al: u32,
}

/// Decodes every scan, from the first (whose header [`super::reduced::headers`] found) to the
/// end-of-image marker, and leaves the samples in the components' planes; returns where the
/// end-of-image marker begins (its first `FF`).
pub(super) fn decode<const S: usize>(
    bytes: &[u8],
    setup: &mut Setup,
    mcus_x: usize,
    mcus_y: usize,
) -> Option<usize> {
    // The bit counting of refinement scans is `popcnt` and `tzcnt`, which baseline x86-64 (what
    // the crate builds for) lacks: `count_ones` became a dozen instructions. Where `pdep` is fast
    // too, it finds where a run of zeros ends.
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("popcnt") && std::is_x86_feature_detected!("bmi1") {
        #[target_feature(enable = "popcnt,bmi1")]
        fn with_bit_counting<const S: usize>(
            bytes: &[u8],
            setup: &mut Setup,
            mcus_x: usize,
            mcus_y: usize,
        ) -> Option<usize> {
            decode_scans::<S, false>(bytes, setup, mcus_x, mcus_y)
        }
        #[target_feature(enable = "popcnt,bmi1,bmi2")]
        fn with_pdep<const S: usize>(
            bytes: &[u8],
            setup: &mut Setup,
            mcus_x: usize,
            mcus_y: usize,
        ) -> Option<usize> {
            decode_scans::<S, true>(bytes, setup, mcus_x, mcus_y)
        }
        // SAFETY: the CPU has the features each function is compiled for.
        #[allow(unsafe_code)]
        return unsafe {
            if fast_pdep() && !tests::without_pdep() {
                with_pdep::<S>(bytes, setup, mcus_x, mcus_y)
            } else {
                with_bit_counting::<S>(bytes, setup, mcus_x, mcus_y)
            }
        };
    }
    decode_scans::<S, false>(bytes, setup, mcus_x, mcus_y)
}

#[cfg(all(not(test), target_arch = "x86_64"))]
mod tests {
    /// Only tests turn `pdep` off.
    #[inline(always)]
    pub(super) fn without_pdep() -> bool {
        false
    }
}

/// Whether the CPU has `pdep` (BMI2) and runs it in a few cycles: every Intel CPU that has it,
/// and AMD's from Zen 3 (family 19h) on; Zen 1 and 2 (family 17h) microcode it, at up to hundreds
/// of cycles. Asked once per process (CPUID traps to the hypervisor in a VM).
#[cfg(target_arch = "x86_64")]
fn fast_pdep() -> bool {
    use std::arch::x86_64::__cpuid;
    static FAST: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAST.get_or_init(|| {
        if !std::is_x86_feature_detected!("bmi2") {
            return false;
        }
        // CPUID leaf 0: the vendor string in EBX, EDX, ECX; leaf 1: the family in EAX (the
        // extended family is added when the base one is 0xF).
        let vendor = __cpuid(0);
        let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6E65, 0x444D_4163);
        let eax = __cpuid(1).eax;
        let base = (eax >> 8) & 0xF;
        let family = if base == 0xF {
            base + ((eax >> 20) & 0xFF)
        } else {
            base
        };
        !amd || family >= 0x19
    })
}

/// [`decode`], inlined into each instruction-set variant.
#[inline(always)]
fn decode_scans<const S: usize, const PDEP: bool>(
    bytes: &[u8],
    setup: &mut Setup,
    mcus_x: usize,
    mcus_y: usize,
) -> Option<usize> {
    let mut decoder = Decoder {
        coefficients: setup
            .components
            .iter()
            .map(|c| vec![Coefficients::default(); mcus_x * c.h * mcus_y * c.v])
            .collect(),
        coded: vec![[UNCODED; 64]; setup.components.len()],
        mcus: (mcus_x, mcus_y),
    };
    let mut header = setup.sos.clone();
    let mut data = setup.scan;
    let end = loop {
        let scan = scan_header(&bytes[header], setup)?;
        decoder.check_and_record(&scan)?;
        let after = decoder.scan::<S, PDEP>(bytes, data, setup, &scan)?;
        match between_scans(bytes, after, setup)? {
            Next::Scan { header: h, data: d } => (header, data) = (h, d),
            Next::End(end) => break end,
        }
    };
    // Every coefficient of every component must have come down to bit 0.
    if decoder.coded.iter().flatten().any(|&al| al != 0) {
        return None;
    }
    for (c, coefficients) in setup.components.iter_mut().zip(&decoder.coefficients) {
        let blocks_x = mcus_x * c.h;
        for (i, coefficients) in coefficients.iter().enumerate() {
            let at = (i / blocks_x) * S * c.stride + (i % blocks_x) * S;
            match S {
                2 => idct_2x2(&coefficients.block, &c.q, &mut c.plane[at..], c.stride),
                _ => idct_4x4(&coefficients.block, &c.q, &mut c.plane[at..], c.stride),
            }
        }
    }
    Some(end)
}

/// The state across scans.
struct Decoder {
    /// Per component, its blocks over the padded block grid (`mcus_x * h` by `mcus_y * v`),
    /// row-major.
    coefficients: Vec<Vec<Coefficients>>,
    /// Per component and zigzag position, the bit its coefficient is decoded down to so far
    /// (`Al` of the last scan that brought it), [`UNCODED`] before its first scan.
    coded: Vec<[u8; 64]>,
    /// MCUs per row and per column.
    mcus: (usize, usize),
}

impl Decoder {
    /// A scan must be the next step of every band it brings: a first scan where nothing was
    /// coded, a refinement where the previous scan stopped at bit `Ah`.
    fn check_and_record(&mut self, scan: &Scan) -> Option<()> {
        for &(c, ..) in &scan.components {
            for k in scan.ss..=scan.se {
                let coded = &mut self.coded[c][k as usize];
                let expected = if scan.ah == 0 { UNCODED } else { scan.ah as u8 };
                if *coded != expected {
                    return None;
                }
                *coded = scan.al as u8;
            }
        }
        Some(())
    }

    /// Entropy-decodes one scan whose data begins at `start`; returns where the marker after it
    /// begins.
    #[inline(always)]
    fn scan<'s, const S: usize, const PDEP: bool>(
        &mut self,
        bytes: &[u8],
        start: usize,
        setup: &'s Setup,
        scan: &Scan,
    ) -> Option<usize> {
        let unstuffed = unstuff(bytes, start)?;
        let mut bits = Reader::new(&unstuffed.data);
        let mut restarts = Restarts::new(&unstuffed, setup.restart_interval)?;
        let tables: Vec<(Option<&Table>, Option<&Table>)> = scan
            .components
            .iter()
            .map(|&(_, dc, ac)| {
                let table = |tables: &'s [Option<Table>; 4], id: usize| tables.get(id)?.as_ref();
                (table(&setup.dc, dc), table(&setup.ac, ac))
            })
            .collect();
        let (ss, se, al) = (scan.ss, scan.se, scan.al);
        let mut state = ([0i16; 3], 0u32); // DC predictors, end-of-band run
        match (scan.ah, ss) {
            (0, _) => self.walk(
                setup,
                scan,
                &mut bits,
                &mut restarts,
                &mut state,
                |bits, i, c, (predictors, eob_run)| {
                    first::<S>(
                        bits,
                        tables[i],
                        (ss, se, al),
                        c,
                        &mut predictors[i],
                        eob_run,
                    )
                },
            )?,
            (_, 0) => self.walk(
                setup,
                scan,
                &mut bits,
                &mut restarts,
                &mut state,
                |bits, _, c, _| {
                    bits.refill()?;
                    if bits.bits(1) == 1 {
                        c.block[0] |= 1 << al;
                    }
                    Some(())
                },
            )?,
            _ => self.walk(
                setup,
                scan,
                &mut bits,
                &mut restarts,
                &mut state,
                |bits, i, c, (_, eob_run)| {
                    refine::<S, PDEP>(bits, tables[i].1?, (ss, se, al), c, eob_run)
                },
            )?,
        }
        restarts.finish(&bits)?;
        Some(unstuffed.end)
    }

    /// Visits the scan's blocks in the order their data comes (A.2): MCU by MCU (each component's
    /// `h x v` blocks in turn) when the scan has several components, block by block over the
    /// component's own area otherwise. `block` gets the component's place in the scan and the
    /// DC predictors and end-of-band run, which start over with each restart interval.
    #[inline(always)]
    fn walk(
        &mut self,
        setup: &Setup,
        scan: &Scan,
        bits: &mut Reader<'_>,
        restarts: &mut Restarts<'_>,
        state: &mut ([i16; 3], u32),
        mut block: impl FnMut(
            &mut Reader<'_>,
            usize,
            &mut Coefficients,
            &mut ([i16; 3], u32),
        ) -> Option<()>,
    ) -> Option<()> {
        let (mcus_x, mcus_y) = self.mcus;
        if let [(c, ..)] = scan.components[..] {
            let component = &setup.components[c];
            let (h_max, v_max) = max_sampling(setup);
            // The component's own size in samples, rounded up to whole blocks (A.1.1).
            let blocks_x = (setup.width * component.h).div_ceil(h_max).div_ceil(8);
            let blocks_y = (setup.height * component.v).div_ceil(v_max).div_ceil(8);
            let stride = mcus_x * component.h;
            let coefficients = &mut self.coefficients[c];
            for y in 0..blocks_y {
                for x in 0..blocks_x {
                    if restarts.before_mcu(bits)? {
                        *state = ([0; 3], 0);
                    }
                    block(bits, 0, &mut coefficients[y * stride + x], state)?;
                }
            }
            return Some(());
        }
        for mcu_y in 0..mcus_y {
            for mcu_x in 0..mcus_x {
                if restarts.before_mcu(bits)? {
                    *state = ([0; 3], 0);
                }
                for (i, &(c, ..)) in scan.components.iter().enumerate() {
                    let component = &setup.components[c];
                    let stride = mcus_x * component.h;
                    for v in 0..component.v {
                        for h in 0..component.h {
                            let y = mcu_y * component.v + v;
                            let x = mcu_x * component.h + h;
                            block(bits, i, &mut self.coefficients[c][y * stride + x], state)?;
                        }
                    }
                }
            }
        }
        Some(())
    }
}

/// The largest sampling factors of the frame.
fn max_sampling(setup: &Setup) -> (usize, usize) {
    let h = setup.components.iter().map(|c| c.h).max().unwrap_or(1);
    let v = setup.components.iter().map(|c| c.v).max().unwrap_or(1);
    (h, v)
}

/// A first scan of a block's band (G.1.2.1, G.1.2.2; F.2.2 in a sequential frame, where the band
/// is 0..=63 and `Al` 0): the DC difference when the band starts at 0, then the AC coefficients
/// (shifted up by `Al`) unless an end-of-band run covers this block.
#[inline(always)]
fn first<const S: usize>(
    bits: &mut Reader<'_>,
    (dc, ac): (Option<&Table>, Option<&Table>),
    (ss, se, al): (u32, u32, u32),
    coefficients: &mut Coefficients,
    predictor: &mut i16,
    eob_run: &mut u32,
) -> Option<()> {
    if ss == 0 {
        bits.refill()?;
        let e = dc?.lookup(bits.buf)?;
        if symbol(e) > 11 {
            return None; // no DC difference is that large (F.1.2.1.1, Table F.1)
        }
        *predictor = predictor.wrapping_add(bits.value(e));
        coefficients.block[0] = predictor.wrapping_shl(al);
        if se == 0 {
            return Some(());
        }
    }
    if *eob_run > 0 {
        *eob_run -= 1;
        return Some(());
    }
    let (ac, slots) = (ac?, const { &slots(S) });
    let mut k = ss.max(1);
    while k <= se {
        bits.refill()?;
        let e = ac.lookup(bits.buf)?;
        let (run, size) = (symbol(e) >> 4, symbol(e) & 15);
        if size == 0 {
            bits.consume(code_len(e));
            if run == 15 {
                k += 16; // sixteen zeros
                continue;
            }
            // An end of band for this block and the next `2^run - 1 + bits` (G.1.2.2).
            *eob_run = (1 << run) - 1 + if run > 0 { bits.bits(run) } else { 0 };
            break;
        }
        k += run;
        if k > se {
            return None; // past the band: jpeg-decoder reads it one of two ways
        }
        let value = bits.value(e).wrapping_shl(al);
        coefficients.block[usize::from(slots[k as usize])] = value;
        coefficients.nonzero |= u64::from(value != 0) << k;
        k += 1;
    }
    Some(())
}

/// A refinement scan of a block's AC band (G.1.2.3): new coefficients of magnitude `1 << Al`,
/// each after a run of positions still zero, and a correction bit for every coefficient already
/// non-zero that the runs pass (or, after an end of band, that the rest of the band holds).
/// jpeg-decoder's `decode_block_successive_approximation`, with its `refine_non_zeroes` walk done
/// on the masks.
#[inline(always)]
fn refine<const S: usize, const PDEP: bool>(
    bits: &mut Reader<'_>,
    ac: &Table,
    (ss, se, al): (u32, u32, u32),
    coefficients: &mut Coefficients,
    eob_run: &mut u32,
) -> Option<()> {
    let p1 = 1i16 << al;
    if *eob_run > 0 {
        *eob_run -= 1;
        return correct::<S>(bits, coefficients, ss, se, p1);
    }
    let slots = const { &slots(S) };
    let mut k = ss;
    while k <= se {
        bits.refill()?;
        let e = ac.lookup(bits.buf)?;
        bits.consume(code_len(e));
        let (run, size) = (symbol(e) >> 4, symbol(e) & 15);
        let (zeros_before, value) = match size {
            0 if run == 15 => (15, 0),
            0 => {
                // The end of the band: the rest of it only gets its correction bits.
                *eob_run = (1 << run) - 1 + if run > 0 { bits.bits(run) } else { 0 };
                return correct::<S>(bits, coefficients, k, se, p1);
            }
            1 => (run, if bits.bits(1) == 1 { p1 } else { -p1 }),
            _ => return None,
        };
        // The new coefficient goes to the first position still zero after `zeros_before` others;
        // when the band has no such position, to its last (as jpeg-decoder does).
        let mut zeros = !coefficients.nonzero & band(k, se);
        if PDEP {
            // The position of its `zeros_before`-th set bit (from 0), or none.
            // SAFETY: `PDEP` is true only in the variant compiled for (and run on) BMI2.
            #[cfg(target_arch = "x86_64")]
            #[allow(unsafe_code)]
            {
                zeros = unsafe { std::arch::x86_64::_pdep_u64(1 << zeros_before, zeros) };
            }
        } else {
            // Without a branch on the run: the lowest `zeros_before` (at most 15) bits cleared.
            for i in 0..15 {
                let fewer = zeros & zeros.wrapping_sub(1);
                zeros = if i < zeros_before { fewer } else { zeros };
            }
        }
        let at = if zeros == 0 {
            se
        } else {
            zeros.trailing_zeros()
        };
        correct::<S>(bits, coefficients, k, at, p1)?;
        if value != 0 {
            coefficients.block[usize::from(slots[at as usize])] = value;
            coefficients.nonzero |= 1 << at;
        }
        k = at + 1;
    }
    Some(())
}

/// Reads the correction bits of the non-zero coefficients at positions `from..=to`, one each in
/// order, and applies those of the kept ones: a 1 adds `p1` to the magnitude unless that bit is
/// already set (jpeg-decoder's `refine_non_zeroes`, which fails on an overflow).
#[inline(always)]
fn correct<const S: usize>(
    bits: &mut Reader<'_>,
    coefficients: &mut Coefficients,
    from: u32,
    to: u32,
    p1: i16,
) -> Option<()> {
    let nonzero = coefficients.nonzero & band(from, to);
    let count = nonzero.count_ones();
    if count == 0 {
        return Some(());
    }
    bits.refill()?;
    let kept = nonzero & const { kept_mask(S) };
    if kept == 0 {
        // Nothing kept among them (most runs past the kept corner): only skipped.
        if count > 56 {
            bits.consume(32);
            bits.refill()?;
            bits.consume(count - 32);
        } else {
            bits.consume(count);
        }
        return Some(());
    }
    // The `count` bits, the first one highest.
    let word = if count <= 32 {
        u64::from(bits.bits(count))
    } else {
        let high = u64::from(bits.bits(32));
        bits.refill()?;
        high << (count - 32) | u64::from(bits.bits(count - 32))
    };
    let slots = const { &slots(S) };
    let mut kept = kept;
    while kept != 0 {
        let k = kept.trailing_zeros();
        kept &= kept - 1;
        let before = (nonzero & ((1u64 << k) - 1)).count_ones();
        if (word >> (count - 1 - before)) & 1 == 1 {
            let c = &mut coefficients.block[usize::from(slots[k as usize])];
            if *c & p1 == 0 {
                *c = if *c > 0 {
                    c.checked_add(p1)?
                } else {
                    c.checked_sub(p1)?
                };
            }
        }
    }
    Some(())
}

/// A scan header (B.2.3) of this frame, checked as jpeg-decoder checks it, with components in
/// frame order and the tables it uses defined.
fn scan_header(body: &[u8], setup: &Setup) -> Option<Scan> {
    let count = usize::from(*body.first()?);
    if count == 0 || count > setup.components.len() || body.len() != 4 + 2 * count {
        return None;
    }
    let mut components = Vec::with_capacity(count);
    let mut next = 0;
    for sel in body[1..1 + 2 * count].chunks_exact(2) {
        let c = next
            + setup.components[next..]
                .iter()
                .position(|c| c.id == sel[0])?;
        next = c + 1;
        components.push((c, usize::from(sel[1] >> 4), usize::from(sel[1] & 15)));
    }
    let [ss, se, approximation] = body[1 + 2 * count..] else {
        return None;
    };
    let scan = Scan {
        components,
        ss: u32::from(ss),
        se: u32::from(se),
        ah: u32::from(approximation >> 4),
        al: u32::from(approximation & 15),
    };
    let valid = if setup.progressive {
        // G.1.1.1.1: DC alone or one component's AC band; one bit per refinement.
        scan.ss <= scan.se
            && scan.se <= 63
            && (scan.ss == 0) == (scan.se == 0)
            && (scan.ss == 0 || count == 1)
            && scan.al <= 13
            && (scan.ah == 0 || scan.ah == scan.al + 1)
    } else {
        (scan.ss, scan.se, scan.ah, scan.al) == (0, 63, 0, 0)
    };
    // jpeg-decoder wants DC tables for any scan of DC coefficients, AC tables for any of AC ones.
    let tables = scan.components.iter().all(|&(_, dc, ac)| {
        (scan.ss > 0 || setup.dc.get(dc).is_some_and(Option::is_some))
            && (scan.se == 0 || setup.ac.get(ac).is_some_and(Option::is_some))
    });
    (valid && tables).then_some(scan)
}

/// What follows a scan's data.
enum Next {
    /// Another scan: its header's body and where its data begins.
    Scan {
        header: std::ops::Range<usize>,
        data: usize,
    },
    /// The end-of-image marker, beginning here.
    End(usize),
}

/// Reads the marker segments after a scan up to the next scan or the end of the image: Huffman
/// tables and restart intervals may change there; comments and application segments are
/// skipped; anything else (a DQT segment, a second frame, a DNL marker) is left to jpeg-decoder.
fn between_scans(bytes: &[u8], mut pos: usize, setup: &mut Setup) -> Option<Next> {
    loop {
        if *bytes.get(pos)? != 0xFF {
            return None;
        }
        let start = pos;
        while *bytes.get(pos + 1)? == 0xFF {
            pos += 1; // fill bytes
        }
        let marker = bytes[pos + 1];
        if marker == 0xD9 {
            return Some(Next::End(start));
        }
        let len = usize::from(u16::from_be_bytes([
            *bytes.get(pos + 2)?,
            *bytes.get(pos + 3)?,
        ]));
        if len < 2 {
            return None;
        }
        let body = pos + 4..pos + 2 + len;
        let contents = bytes.get(body.clone())?;
        match marker {
            0xC4 => huffman_tables(contents, setup)?,
            0xDD => setup.restart_interval = restart_interval(contents)?,
            0xDA => {
                return Some(Next::Scan {
                    data: body.end,
                    header: body,
                })
            }
            0xE0..=0xEF | 0xFE => {}
            _ => return None,
        }
        pos = body.end;
    }
}

#[cfg(test)]
mod tests {
    use super::super::reduced::tests::{damaged_copies, picture, reference, SAMPLINGS, SIZES};
    use super::super::reduced::{decode, Colour};
    use jpeg_decoder::ColorTransform;
    use jpeg_encoder::{ColorType, Encoder};
    use std::cell::Cell;

    thread_local! {
        /// Set by a test to run the variant without `pdep` where the CPU would take it.
        static WITHOUT_PDEP: Cell<bool> = const { Cell::new(false) };
    }

    #[allow(dead_code)] // read on x86-64 only
    pub(super) fn without_pdep() -> bool {
        WITHOUT_PDEP.get()
    }

    /// The PIL-written files of `tools/gen_progressive_jpegs.py`.
    fn fixtures() -> Vec<(String, Vec<u8>)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jpeg");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&p).unwrap())
            })
            .collect();
        files.sort();
        assert_eq!(files.len(), 8);
        files
    }

    /// Samples (before colour conversion) equal jpeg-decoder's at every scale it also picks.
    fn assert_equal(bytes: &[u8], grey: bool, label: &str) -> usize {
        let (colour, transform) = if grey {
            (Colour::Grey, ColorTransform::Grayscale)
        } else {
            (Colour::Rgb, ColorTransform::RGB)
        };
        let mut compared = 0;
        for reduction in [4, 2] {
            let Some(expected) = reference(bytes, transform, reduction as u16) else {
                continue;
            };
            // Both ways of finding where a run of zeros ends, where the CPU has `pdep`.
            for without_pdep in [false, true] {
                WITHOUT_PDEP.set(without_pdep);
                let ours = decode(bytes, colour, reduction, usize::MAX);
                WITHOUT_PDEP.set(false);
                assert!(ours.is_some(), "{label} 1/{reduction}: not decoded");
                assert!(
                    ours == Some(expected.clone()),
                    "{label} 1/{reduction} (pdep off: {without_pdep}): samples differ"
                );
            }
            compared += 1;
        }
        compared
    }

    #[test]
    fn libjpeg_progressive_files_equal_jpeg_decoder() {
        let mut compared = 0;
        for (name, bytes) in fixtures() {
            // libjpeg's script: 6 scans for greyscale, 10 for colour, refinements among them.
            let scans = bytes.windows(2).filter(|w| w == &[0xFF, 0xDA]).count();
            assert!(scans >= 6, "{name}: {scans} scans");
            compared += assert_equal(&bytes, name.contains("grey"), &name);
        }
        assert_eq!(compared, 16);
    }

    #[test]
    fn spectral_selection_and_separate_scans_equal_jpeg_decoder() {
        let mut compared = 0;
        for sampling in SAMPLINGS {
            for (w, h) in SIZES {
                for restart in [0, 1, 3] {
                    // jpeg-encoder 0.7.1 panics on optimised tables with restart intervals.
                    for progressive in [true, false].into_iter().filter(|&p| p || restart == 0) {
                        // Not progressive: optimised tables, which jpeg-encoder writes as one
                        // sequential scan per component.
                        let mut bytes = Vec::new();
                        let mut encoder = Encoder::new(&mut bytes, 90);
                        encoder.set_sampling_factor(sampling);
                        encoder.set_restart_interval(restart);
                        encoder.set_progressive(progressive);
                        encoder.set_optimized_huffman_tables(!progressive);
                        encoder
                            .encode(&picture(w, h, 3), w as u16, h as u16, ColorType::Rgb)
                            .unwrap();
                        let label = format!("{sampling:?} {w}x{h} restart {restart} {progressive}");
                        compared += assert_equal(&bytes, false, &label);
                    }
                }
            }
        }
        assert!(compared >= 150, "only {compared} compared");
    }

    /// The file with the scan that starts at the `n`-th SOS marker cut out.
    fn without_scan(bytes: &[u8], n: usize) -> Vec<u8> {
        let markers: Vec<usize> = (0..bytes.len() - 1)
            .filter(|&i| bytes[i] == 0xFF && bytes[i + 1] == 0xDA)
            .collect();
        let end = markers.get(n + 1).copied().unwrap_or(bytes.len() - 2);
        [&bytes[..markers[n]], &bytes[end..]].concat()
    }

    #[test]
    fn incomplete_or_out_of_order_scans_are_left_to_jpeg_decoder() {
        let (_, bytes) = fixtures()
            .into_iter()
            .find(|(name, _)| name == "progressive_420.jpg")
            .unwrap();
        assert!(decode(&bytes, Colour::YCbCr, 4, usize::MAX).is_some());
        let scans = bytes.windows(2).filter(|w| w == &[0xFF, 0xDA]).count();
        for n in 0..scans {
            // Missing any scan: a band never coded, or not down to bit 0, or refined at the wrong bit.
            let cut = without_scan(&bytes, n);
            assert_eq!(decode(&cut, Colour::YCbCr, 4, usize::MAX), None, "scan {n}");
        }
        // A DQT segment between scans.
        let second = (3..bytes.len() - 1)
            .filter(|&i| bytes[i] == 0xFF && bytes[i + 1] == 0xDA)
            .nth(1)
            .unwrap();
        let dqt_at = (0..bytes.len() - 1)
            .find(|&i| bytes[i] == 0xFF && bytes[i + 1] == 0xDB)
            .unwrap();
        let len = usize::from(u16::from_be_bytes([bytes[dqt_at + 2], bytes[dqt_at + 3]]));
        let dqt = &bytes[dqt_at..dqt_at + 2 + len];
        let moved = [&bytes[..second], dqt, &bytes[second..]].concat();
        assert_eq!(decode(&moved, Colour::YCbCr, 4, usize::MAX), None);
        // The coefficient buffers count towards the allocation limit.
        let planes = 51 * 40 * 3 + 2 * 26 * 20 + 52 * 40;
        assert!(decode(&bytes, Colour::YCbCr, 4, planes + 100).is_none());
    }

    #[test]
    fn damaged_progressive_files_never_panic() {
        for (name, bytes) in fixtures() {
            for (i, damaged) in damaged_copies(&bytes, 987_654, 300) {
                let colour = if name.contains("grey") {
                    Colour::Grey
                } else {
                    Colour::YCbCr
                };
                let _ = decode(&damaged, colour, 2 + 2 * (i % 2), usize::MAX);
            }
        }
    }
}
