//! The compositing arithmetic, written down once. The CPU compositor and the
//! compute shader (`shaders/composite.wgsl`) both implement exactly these
//! integer formulas, so their outputs are bit-identical (the tests compare
//! them with a tolerance of 0).
//!
//! # Scenes
//!
//! A scene is valid ([`Scene::validate`](crate::Scene::validate)) when:
//! - its canvas is 1 to [`MAX_DIMENSION`] pixels wide and high;
//! - every layer's `dst` has even `x`, `y`, `w`, `h` and lies inside the
//!   canvas;
//! - every picture layer's `crop` has even `x`, `y`, `w`, `h` and lies inside
//!   the source rounded up to even size (so a source of odd width or height
//!   can still be shown whole: in the luma plane such a crop is clipped to
//!   the source, see [`plane_crop`]);
//! - every source is at most [`MAX_DIMENSION`] wide and high and its planes
//!   have the sizes [`Picture`](crate::Picture) documents.
//!
//! Layers with an empty `dst` or `crop` paint nothing.
//!
//! # Planes
//!
//! Each plane is composed on its own: Y with shift 0, U and V with shift 1.
//! A scene rectangle maps to a plane by shifting every field right by the
//! plane's shift ([`plane_rect`]); because scene rectangles are even this is
//! exact. A source plane is `width × height` for Y and
//! `⌈width/2⌉ × ⌈height/2⌉` for U and V.
//!
//! # Fill
//!
//! Every plane pixel inside the plane `dst` becomes the colour's component
//! for that plane. Fills are opaque.
//!
//! # Picture: scaling
//!
//! For a plane pixel `(dx, dy)` inside the plane `dst` rectangle `d`, with the
//! plane crop `c`, the source position is centre-aligned and kept as a fixed
//! point number with an 8-bit fraction, relative to the crop origin
//! ([`tap`]):
//!
//! ```text
//! fx = ((2·(dx − d.x) + 1) · c.w · 128) / d.w − 128     (u32 product, integer division)
//! fx = clamp(fx, 0, (c.w − 1) · 256)
//! x0 = c.x + (fx >> 8),  wx = fx & 255,  x1 = min(x0 + 1, c.x + c.w − 1)
//! ```
//!
//! and the same in `y`. The value is the bilinear mix of the four samples,
//! rounded to nearest once at the end ([`bilinear`]):
//!
//! ```text
//! top    = p(x0, y0) · (256 − wx) + p(x1, y0) · wx
//! bottom = p(x0, y1) · (256 − wx) + p(x1, y1) · wx
//! value  = (top · (256 − wy) + bottom · wy + 32768) >> 16
//! ```
//!
//! The unrounded sum is `Σ p · wx · wy` over the four samples, so mixing
//! vertically first gives the same value (the CPU compositor does that).
//! When `c.w == d.w` the position is exactly `x0 = c.x + (dx − d.x)`, `wx = 0`,
//! so an unscaled layer copies its source unchanged.
//!
//! # Picture: blending
//!
//! The source's alpha (the luma-resolution alpha plane for Y, the
//! chroma-resolution one for U and V) is scaled with the same bilinear
//! formula; a source without alpha has alpha 255 everywhere. With the layer's
//! `opacity`:
//!
//! ```text
//! a      = (alpha · opacity + 127) / 255
//! output = (value · a + old · (255 − a) + 127) / 255
//! ```
//!
//! (both divisions truncate; [`div255`] computes them without dividing),
//! which gives `output = value` exactly when `a = 255` and `output = old`
//! when `a = 0`. Layers are applied back to front, each over the result of
//! the ones before it.
//!
//! # Bounds
//!
//! With canvases and sources at most [`MAX_DIMENSION`] (4096) pixels, the
//! largest product in `tap` is `(2·4096 − 1) · 4096 · 128 = 4,294,443,008`,
//! which fits in a `u32` (the reason for the limit); every intermediate of
//! [`bilinear`] and [`blend`] stays below 2²⁴.

use crate::Rect;

/// Largest canvas and source width or height, in pixels (see the module
/// doc's bounds section).
pub const MAX_DIMENSION: u32 = 4096;

/// One of the three planes of an I420 picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    Y,
    U,
    V,
}

impl Plane {
    pub const ALL: [Plane; 3] = [Plane::Y, Plane::U, Plane::V];

    /// How far luma coordinates shift right to address this plane.
    pub const fn shift(self) -> u32 {
        match self {
            Plane::Y => 0,
            Plane::U | Plane::V => 1,
        }
    }

    /// Size of this plane of a `width × height` picture.
    pub const fn size(self, width: u32, height: u32) -> (u32, u32) {
        match self {
            Plane::Y => (width, height),
            Plane::U | Plane::V => (width.div_ceil(2), height.div_ceil(2)),
        }
    }

    /// The index of the alpha plane at this plane's resolution.
    pub const fn alpha_index(self) -> usize {
        match self {
            Plane::Y => 0,
            Plane::U | Plane::V => 1,
        }
    }
}

/// A luma-pixel scene rectangle in the coordinates of `plane`.
pub const fn plane_rect(rect: Rect, plane: Plane) -> Rect {
    let s = plane.shift();
    Rect::new(rect.x >> s, rect.y >> s, rect.w >> s, rect.h >> s)
}

/// A layer's crop in the coordinates of `plane` of a `source_w × source_h`
/// source: [`plane_rect`], then clipped to the source plane. Only the luma
/// plane of an odd-sized source is ever clipped (by one column or row),
/// because a valid crop ends at most at the source's size rounded up to
/// even, and the chroma planes are exactly that size halved.
pub fn plane_crop(crop: Rect, source_w: u32, source_h: u32, plane: Plane) -> Rect {
    let r = plane_rect(crop, plane);
    let (pw, ph) = plane.size(source_w, source_h);
    Rect::new(
        r.x,
        r.y,
        r.w.min(pw.saturating_sub(r.x)),
        r.h.min(ph.saturating_sub(r.y)),
    )
}

/// Where one output column (or row) samples the source: the two source
/// indices (absolute, in the source plane) and the weight of the second,
/// 0..=255.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tap {
    pub i0: u32,
    pub i1: u32,
    pub weight: u32,
}

/// The source tap for output index `offset` (relative to the plane `dst`
/// start) of a `dst_len`-long destination showing the `crop_len` source
/// samples from `crop_start`. Needs `offset < dst_len`, `crop_len ≥ 1` and
/// both lengths at most [`MAX_DIMENSION`].
pub fn tap(offset: u32, dst_len: u32, crop_start: u32, crop_len: u32) -> Tap {
    let scaled = (2 * offset + 1) * crop_len * 128 / dst_len;
    let max = (crop_len - 1) * 256;
    let fixed = scaled.saturating_sub(128).min(max);
    let i0 = crop_start + (fixed >> 8);
    Tap {
        i0,
        i1: (i0 + 1).min(crop_start + crop_len - 1),
        weight: fixed & 255,
    }
}

/// One half of the bilinear mix: `p0 · (256 − w) + p1 · w`, not rounded
/// (at most 65,280).
#[inline(always)]
pub fn mix_unrounded(p0: u8, p1: u8, weight: u32) -> u32 {
    u32::from(p0) * (256 - weight) + u32::from(p1) * weight
}

/// The other half: mixes two unrounded values and rounds once. Which
/// direction is mixed first does not matter: either way the result is the
/// same four-term sum `Σ p · wx · wy`, rounded once.
#[inline(always)]
pub fn mix_and_round(a: u32, b: u32, weight: u32) -> u8 {
    ((a * (256 - weight) + b * weight + 32768) >> 16) as u8
}

/// The bilinear value of the samples `p00 p01` (row `y0`) and `p10 p11`
/// (row `y1`) with weights `wx`, `wy` (0..=255).
pub fn bilinear(p00: u8, p01: u8, p10: u8, p11: u8, wx: u32, wy: u32) -> u8 {
    mix_and_round(mix_unrounded(p00, p01, wx), mix_unrounded(p10, p11, wx), wy)
}

/// `x / 255` without a division, exact for `x < 65535` (checked for every
/// such `x` by a test); every numerator divided by 255 in this module is
/// at most `255 · 255 + 127`. The shader uses the same identity, because
/// integer division is slow on GPUs and not vectorised by software Vulkan.
#[inline(always)]
pub const fn div255(x: u32) -> u32 {
    (x + (x >> 8) + 1) >> 8
}

/// The coverage a source sample gets: its alpha times the layer opacity,
/// rounded, 0..=255.
#[inline(always)]
pub fn effective_alpha(alpha: u8, opacity: u8) -> u32 {
    div255(u32::from(alpha) * u32::from(opacity) + 127)
}

/// `value` over `old` with coverage `a` (0..=255), rounded to nearest.
#[inline(always)]
pub fn blend(value: u8, old: u8, a: u32) -> u8 {
    div255(u32::from(value) * a + u32::from(old) * (255 - a) + 127) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unscaled_taps_are_exact() {
        for len in [1, 2, 7, 640, MAX_DIMENSION] {
            for offset in [0, len / 2, len - 1] {
                let t = tap(offset, len, 10, len);
                assert_eq!(
                    (t.i0, t.weight),
                    (10 + offset, 0),
                    "len {len} offset {offset}"
                );
            }
        }
    }

    #[test]
    fn taps_stay_inside_the_crop() {
        for (dst, crop) in [
            (1, 1),
            (2, 640),
            (640, 2),
            (1920, 1),
            (4096, 4096),
            (3, 4096),
        ] {
            for offset in 0..dst {
                let t = tap(offset, dst, 6, crop);
                assert!(
                    t.i0 >= 6 && t.i1 < 6 + crop && t.i0 <= t.i1,
                    "{dst} {crop} {offset}"
                );
                assert!(t.weight < 256);
            }
        }
    }

    #[test]
    fn largest_tap_product_fits_in_u32() {
        let worst = (2 * u64::from(MAX_DIMENSION) - 1) * u64::from(MAX_DIMENSION) * 128;
        assert!(worst <= u64::from(u32::MAX));
        let t = tap(MAX_DIMENSION - 1, MAX_DIMENSION, 0, MAX_DIMENSION);
        assert_eq!(t.i0, MAX_DIMENSION - 1);
    }

    #[test]
    fn upscale_by_two_interpolates_quarter_steps() {
        // Output 0 sits at source −0.25 (clamped to 0), output 1 at 0.25,
        // output 2 at 0.75, output 3 at 1.25 → clamped at the last sample.
        let taps: Vec<_> = (0..4).map(|i| tap(i, 4, 0, 2)).collect();
        assert_eq!(
            taps.iter()
                .map(|t| (t.i0, t.i1, t.weight))
                .collect::<Vec<_>>(),
            vec![(0, 1, 0), (0, 1, 64), (0, 1, 192), (1, 1, 0)]
        );
    }

    #[test]
    fn div255_is_exact_where_used() {
        for x in 0..65535 {
            assert_eq!(div255(x), x / 255, "{x}");
        }
    }

    #[test]
    fn blend_ends_are_exact() {
        for v in [0u8, 1, 128, 254, 255] {
            for old in [0u8, 77, 255] {
                assert_eq!(blend(v, old, 255), v);
                assert_eq!(blend(v, old, 0), old);
            }
        }
        assert_eq!(effective_alpha(255, 255), 255);
        assert_eq!(effective_alpha(255, 128), 128);
        assert_eq!(effective_alpha(128, 128), 64);
        assert_eq!(blend(200, 100, 128), 150);
    }

    #[test]
    fn odd_sources_clip_only_the_luma_crop() {
        let crop = Rect::new(0, 2, 6, 4);
        assert_eq!(plane_crop(crop, 5, 5, Plane::Y), Rect::new(0, 2, 5, 3));
        assert_eq!(plane_crop(crop, 5, 5, Plane::U), Rect::new(0, 1, 3, 2));
        assert_eq!(plane_crop(crop, 6, 6, Plane::Y), crop);
    }

    #[test]
    fn mixing_order_does_not_matter() {
        let samples = [
            (0, 255, 17, 200),
            (255, 255, 0, 0),
            (1, 2, 3, 4),
            (90, 10, 250, 128),
        ];
        for (p00, p01, p10, p11) in samples {
            for (wx, wy) in [(0, 0), (1, 255), (128, 64), (255, 1), (77, 191)] {
                let vertical_first =
                    mix_and_round(mix_unrounded(p00, p10, wy), mix_unrounded(p01, p11, wy), wx);
                assert_eq!(vertical_first, bilinear(p00, p01, p10, p11, wx, wy));
            }
        }
    }

    #[test]
    fn bilinear_mixes_and_rounds_once() {
        assert_eq!(bilinear(0, 255, 0, 255, 128, 0), 128);
        assert_eq!(bilinear(10, 10, 10, 10, 37, 201), 10);
        assert_eq!(bilinear(0, 0, 255, 255, 0, 64), 64);
    }
}
