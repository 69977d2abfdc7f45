//! Pixel arithmetic on premultiplied ARGB (`0xAARRGGBB`, like cairo's `ARGB32`): the Porter-Duff
//! channel masks of the Guacamole protocol and its 16 binary transfer functions. Pure functions
//! on single pixels and rows; callers ([`super::surface`]) do the clipping.
//!
//! A Guacamole channel mask is 4 bits saying which parts of the result are kept:
//! `0x8` source where the destination is transparent, `0x4` source where the destination is
//! opaque, `0x2` destination where the source is transparent, `0x1` destination where the
//! source is opaque. So `0xE` is *over*, `0xC` *src*, `0x2` *rout*, `0x9` *ratop*, `0xF` *plus*.

/// Porter-Duff *over* (`0xE`).
pub const MASK_OVER: u8 = 0xE;
/// Porter-Duff *source* (`0xC`): replace.
pub const MASK_SRC: u8 = 0xC;

/// `x / 255` rounded, for `x <= 255 * 255 * 2`.
#[inline]
pub fn div255(x: u32) -> u32 {
    let x = x + 128;
    (x + (x >> 8)) >> 8
}

/// Premultiplies a straight-alpha colour (components clamped to 0..=255).
pub fn premultiply(r: i32, g: i32, b: i32, a: i32) -> u32 {
    let c = |v: i32| v.clamp(0, 255) as u32;
    let a = c(a);
    (a << 24) | (div255(c(r) * a) << 16) | (div255(c(g) * a) << 8) | div255(c(b) * a)
}

/// Multiplies all four channels of `p` by `alpha / 255`.
#[inline]
pub fn scale(p: u32, alpha: u32) -> u32 {
    let rb = (p & 0x00FF_00FF) * alpha + 0x0080_0080;
    let rb = ((rb + ((rb >> 8) & 0x00FF_00FF)) >> 8) & 0x00FF_00FF;
    let ag = ((p >> 8) & 0x00FF_00FF) * alpha + 0x0080_0080;
    let ag = (ag + ((ag >> 8) & 0x00FF_00FF)) & 0xFF00_FF00;
    rb | ag
}

/// `s` over `d`. Both must be valid premultiplied pixels (no colour above alpha), which every
/// producer here guarantees, so the per-channel sum cannot carry.
#[inline]
pub fn over(s: u32, d: u32) -> u32 {
    let sa = s >> 24;
    if sa == 255 {
        return s;
    }
    if s == 0 {
        return d;
    }
    s.wrapping_add(scale(d, 255 - sa))
}

/// The result of channel mask `mask` (0..=15) with source `s` and destination `d`.
#[inline]
pub fn apply_mask(mask: u8, s: u32, d: u32) -> u32 {
    match mask {
        MASK_OVER => over(s, d),
        MASK_SRC => s,
        _ => apply_mask_general(mask, s, d),
    }
}

/// Any of the 16 channel masks, from the four bits.
pub fn apply_mask_general(mask: u8, s: u32, d: u32) -> u32 {
    let sa = s >> 24;
    let da = d >> 24;
    let mut out = 0;
    for shift in [0, 8, 16, 24] {
        let sc = (s >> shift) & 0xFF;
        let dc = (d >> shift) & 0xFF;
        let mut v = 0;
        if mask & 0x8 != 0 {
            v += sc * (255 - da);
        }
        if mask & 0x4 != 0 {
            v += sc * da;
        }
        if mask & 0x2 != 0 {
            v += dc * (255 - sa);
        }
        if mask & 0x1 != 0 {
            v += dc * sa;
        }
        out |= div255(v).min(255) << shift;
    }
    out
}

/// Composites `src` onto `dst` (same length) with `mask`.
pub fn composite_row(mask: u8, src: &[u32], dst: &mut [u32]) {
    assert_eq!(src.len(), dst.len(), "row lengths differ");
    match mask {
        MASK_SRC => dst.copy_from_slice(src),
        MASK_OVER => {
            // Sources are mostly opaque (screen updates) or, in layers, transparent where
            // nothing was drawn: copy runs of opaque pixels wholesale, skip transparent runs.
            const RUN: usize = 64;
            for (d, s) in dst.chunks_mut(RUN).zip(src.chunks(RUN)) {
                let (all, any) = s
                    .iter()
                    .fold((0xFF00_0000u32, 0u32), |(all, any), &p| (all & p, any | p));
                if all >= 0xFF00_0000 {
                    d.copy_from_slice(s);
                } else if any == 0 {
                    // Fully transparent: over leaves the destination as it is.
                } else {
                    for (d, &s) in d.iter_mut().zip(s) {
                        *d = over(s, *d);
                    }
                }
            }
        }
        _ => {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = apply_mask_general(mask, s, *d);
            }
        }
    }
}

/// Composites `src` onto `dst` with *over* after scaling the source by `opacity / 255`.
pub fn over_row_with_opacity(src: &[u32], dst: &mut [u32], opacity: u32) {
    assert_eq!(src.len(), dst.len(), "row lengths differ");
    if opacity >= 255 {
        composite_row(MASK_OVER, src, dst);
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = over(scale(s, opacity), *d);
    }
}

/// Fills `dst` with the colour `c` through `mask`.
pub fn fill_row(mask: u8, c: u32, dst: &mut [u32]) {
    match mask {
        MASK_SRC => dst.fill(c),
        MASK_OVER if c >> 24 == 255 => dst.fill(c),
        MASK_OVER if c == 0 => {}
        _ => {
            for d in dst.iter_mut() {
                *d = apply_mask(mask, c, *d);
            }
        }
    }
}

/// Binary transfer function `function` (0..=15, Guacamole `transfer`) of `s` onto `d`.
///
/// Bit 0 of `function` gives the result for (src bit 1, dst bit 1), bit 1 for (1, 0), bit 2 for
/// (0, 1), bit 3 for (0, 0): `0x3` is SRC, `0x5` DEST, `0x1` AND, `0x7` OR, `0x6` XOR. It
/// applies to the colour bits; the result keeps the destination alpha except for SRC and NSRC,
/// which take the source alpha.
pub fn transfer(function: u8, s: u32, d: u32) -> u32 {
    let mut rgb = 0u32;
    if function & 0x1 != 0 {
        rgb |= s & d;
    }
    if function & 0x2 != 0 {
        rgb |= s & !d;
    }
    if function & 0x4 != 0 {
        rgb |= !s & d;
    }
    if function & 0x8 != 0 {
        rgb |= !s & !d;
    }
    let alpha = if function == 0x3 || function == 0xC {
        s >> 24
    } else {
        d >> 24
    };
    // Keep the result valid premultiplied: no colour channel above alpha.
    let mut out = alpha << 24;
    for shift in [0, 8, 16] {
        out |= ((rgb >> shift) & 0xFF).min(alpha) << shift;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RED: u32 = 0xFFFF_0000;
    const HALF_BLUE: u32 = 0x8000_0080; // 50 % blue, premultiplied
    const CLEAR: u32 = 0;

    #[test]
    fn over_and_src() {
        assert_eq!(apply_mask(MASK_OVER, RED, 0xFF00_FF00), RED);
        assert_eq!(apply_mask(MASK_OVER, HALF_BLUE, 0xFF00_FF00), 0xFF00_7F80);
        assert_eq!(apply_mask(MASK_OVER, CLEAR, 0xFF12_3456), 0xFF12_3456);
        assert_eq!(apply_mask(MASK_SRC, HALF_BLUE, RED), HALF_BLUE);
        assert_eq!(
            apply_mask_general(MASK_OVER, HALF_BLUE, 0xFF00_FF00),
            0xFF00_7F80
        );
    }

    #[test]
    fn every_named_mask() {
        let s = HALF_BLUE;
        let d = RED;
        // rout (0x2): destination where source transparent: d * (1 - sa).
        assert_eq!(apply_mask(0x2, s, d), 0x7F7F_0000);
        // ratop (0x9): d*sa + s*(1-da); da = 1 so only d*sa.
        assert_eq!(apply_mask(0x9, s, d), 0x8080_0000);
        // in (0x4): s*da.
        assert_eq!(apply_mask(0x4, s, d), s);
        // out (0x8): s*(1-da) = 0 on an opaque destination.
        assert_eq!(apply_mask(0x8, s, d), 0);
        // atop (0x6): s*da + d*(1-sa).
        assert_eq!(apply_mask(0x6, s, d), 0xFF7F_0080);
        // xor (0xA): s*(1-da) + d*(1-sa).
        assert_eq!(apply_mask(0xA, s, d), 0x7F7F_0000);
        // rover (0xB): d + s*(1-da).
        assert_eq!(apply_mask(0xB, s, d), d);
        // rin (0x1): d*sa.
        assert_eq!(apply_mask(0x1, s, d), 0x8080_0000);
        // plus (0xF): saturating sum.
        assert_eq!(apply_mask(0xF, s, d), 0xFFFF_0080);
        // on a transparent destination: out gives the source, rover gives the source.
        assert_eq!(apply_mask(0x8, s, CLEAR), s);
        assert_eq!(apply_mask(0xB, s, CLEAR), s);
        assert_eq!(apply_mask(0x0, s, d), 0, "mask 0 clears");
        assert_eq!(apply_mask(0x3, s, d), d, "mask 3 keeps the destination");
    }

    #[test]
    fn transfer_functions() {
        let s = 0xFF0F_F0AA;
        let d = 0xFF33_3355;
        assert_eq!(transfer(0x0, s, d), 0xFF00_0000, "black");
        assert_eq!(transfer(0xF, s, d), 0xFFFF_FFFF, "white");
        assert_eq!(transfer(0x3, s, d), s, "src");
        assert_eq!(transfer(0x5, s, d), d, "dest");
        assert_eq!(transfer(0x1, s, d), 0xFF03_3000, "and");
        assert_eq!(transfer(0x7, s, d), 0xFF3F_F3FF, "or");
        assert_eq!(transfer(0x6, s, d), 0xFF3C_C3FF, "xor");
        assert_eq!(transfer(0xC, s, d), 0xFFF0_0F55, "nsrc");
        assert_eq!(transfer(0xA, s, d), 0xFFCC_CCAA, "ndest");
        assert_eq!(transfer(0x9, s, d), 0xFFC3_3C00, "xnor");
    }

    #[test]
    fn over_row_runs_match_pixel_by_pixel() {
        // Runs of 64: transparent, opaque, mixed, and a short mixed tail.
        let mut src = vec![0u32; 64];
        src.extend((0..64).map(|i| 0xFF00_0000 | i));
        src.extend((0..64).map(|i| if i % 3 == 0 { 0 } else { 0x8040_2010 | i }));
        src.extend([0x0101_0101, 0, 0xFF12_3456]);
        let dst: Vec<u32> = (0..src.len() as u32)
            .map(|i| 0xFF00_0000 | (i * 977))
            .collect();
        let mut got = dst.clone();
        composite_row(MASK_OVER, &src, &mut got);
        let want: Vec<u32> = src.iter().zip(&dst).map(|(&s, &d)| over(s, d)).collect();
        assert_eq!(got, want);
        assert_eq!(
            got[..64],
            dst[..64],
            "transparent run leaves the destination"
        );
    }

    #[test]
    fn premultiply_and_scale() {
        assert_eq!(premultiply(255, 0, 0, 128), 0x8080_0000);
        assert_eq!(premultiply(300, -5, 0, 255), 0xFFFF_0000);
        assert_eq!(scale(0xFFFF_FFFF, 128), 0x8080_8080);
        assert_eq!(scale(0xFF10_2030, 255), 0xFF10_2030);
    }
}
