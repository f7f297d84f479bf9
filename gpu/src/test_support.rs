//! Test helpers: a seeded generator of pictures and scenes, and a
//! per-pixel transcription of `spec` that the optimised compositors are
//! compared with.

use std::sync::Arc;

use crate::spec::{bilinear, blend, effective_alpha, plane_crop, plane_rect, tap, Plane};
use crate::{chroma_size, Layer, Picture, Rect, Scene, Yuv};

/// SplitMix64: small, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    pub fn upto(&mut self, max: u32) -> u32 {
        (self.next() % (u64::from(max) + 1)) as u32
    }

    pub fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    pub fn chance(&mut self, percent: u32) -> bool {
        self.upto(99) < percent
    }

    /// An even rectangle inside `width × height` (rounded down to even),
    /// non-empty when the bounds allow it.
    pub fn even_rect(&mut self, width: u32, height: u32) -> Rect {
        let (ew, eh) = (width & !1, height & !1);
        let x = 2 * self.upto(ew.saturating_sub(2) / 2);
        let y = 2 * self.upto(eh.saturating_sub(2) / 2);
        let w = 2 * (1 + self.upto((ew - x).saturating_sub(2) / 2)).min((ew - x) / 2);
        let h = 2 * (1 + self.upto((eh - y).saturating_sub(2) / 2)).min((eh - y) / 2);
        Rect::new(x, y, w, h)
    }
}

/// A picture with random samples, smooth or noisy, with or without alpha
/// (chroma alpha the rounded mean of each 2×2 luma block, as documented).
pub fn random_picture(rng: &mut Rng, width: u32, height: u32, alpha: bool) -> Picture {
    let (cw, ch) = chroma_size(width, height);
    let mut plane = |w: u32, h: u32| -> Vec<u8> {
        let smooth = rng.chance(50);
        let (a, b, c) = (rng.upto(7), rng.upto(7), rng.byte());
        let mut out = Vec::with_capacity((w * h) as usize);
        for y in 0..h {
            for x in 0..w {
                out.push(if smooth {
                    (x * a + y * b) as u8 ^ c
                } else {
                    rng.byte()
                });
            }
        }
        out
    };
    let y = plane(width, height);
    let u = plane(cw, ch);
    let v = plane(cw, ch);
    let alpha = alpha.then(|| {
        let luma: Vec<u8> = (0..width * height)
            .map(|_| match rng.upto(3) {
                0 => 0,
                1 => 255,
                _ => rng.byte(),
            })
            .collect();
        let chroma = chroma_alpha(&luma, width, height);
        [luma, chroma]
    });
    Picture {
        width,
        height,
        y,
        u,
        v,
        alpha,
    }
}

/// The chroma-resolution alpha of a luma alpha plane: the rounded mean of
/// each (edge-clipped) 2×2 block.
pub fn chroma_alpha(luma: &[u8], width: u32, height: u32) -> Vec<u8> {
    let (cw, ch) = chroma_size(width, height);
    let mut out = Vec::with_capacity((cw * ch) as usize);
    for cy in 0..ch {
        for cx in 0..cw {
            let mut sum = 0u32;
            let mut n = 0u32;
            for y in 2 * cy..(2 * cy + 2).min(height) {
                for x in 2 * cx..(2 * cx + 2).min(width) {
                    sum += u32::from(luma[(y * width + x) as usize]);
                    n += 1;
                }
            }
            out.push(((sum + n / 2) / n) as u8);
        }
    }
    out
}

/// Source sizes for random scenes: odd, tiny, wide, tall, typical.
pub const SOURCE_SIZES: [(u32, u32); 8] = [
    (1, 1),
    (5, 3),
    (37, 23),
    (64, 36),
    (160, 90),
    (2, 80),
    (96, 7),
    (120, 120),
];

pub fn source_pool(rng: &mut Rng) -> Vec<Arc<Picture>> {
    SOURCE_SIZES
        .iter()
        .enumerate()
        .map(|(i, &(w, h))| Arc::new(random_picture(rng, w, h, i % 3 == 1)))
        .collect()
}

/// A random valid scene over `pool`: many layers, scaling both ways, crops,
/// alpha, opacity; sometimes without a full-canvas background.
pub fn random_scene(rng: &mut Rng, width: u32, height: u32, pool: &[Arc<Picture>]) -> Scene {
    let mut layers = Vec::new();
    if rng.chance(70) && width % 2 == 0 && height % 2 == 0 {
        layers.push(Layer::Fill {
            dst: Rect::new(0, 0, width, height),
            color: Yuv::BLACK,
        });
    }
    for _ in 0..1 + rng.upto(12) {
        let dst = rng.even_rect(width, height);
        if rng.chance(15) {
            layers.push(Layer::Fill {
                dst,
                color: Yuv {
                    y: rng.byte(),
                    u: rng.byte(),
                    v: rng.byte(),
                },
            });
            continue;
        }
        let source = Arc::clone(&pool[rng.upto(pool.len() as u32 - 1) as usize]);
        let crop = if rng.chance(30) {
            Rect::new(
                0,
                0,
                source.width.next_multiple_of(2),
                source.height.next_multiple_of(2),
            )
        } else {
            rng.even_rect(
                source.width.next_multiple_of(2),
                source.height.next_multiple_of(2),
            )
        };
        let opacity = if rng.chance(50) { 255 } else { rng.byte() };
        layers.push(Layer::Picture {
            source,
            crop,
            dst,
            opacity,
        });
    }
    if rng.chance(10) {
        // An empty layer, which must paint nothing.
        layers.push(Layer::Fill {
            dst: Rect::new(0, 0, 0, height & !1),
            color: Yuv::BLACK,
        });
    }
    Scene {
        width,
        height,
        layers,
    }
}

/// `spec` transcribed pixel by pixel, without any of the compositors'
/// shortcuts. `output` must already be a canvas of the scene's size.
pub fn reference_compose(scene: &Scene, output: &mut Picture) {
    for layer in scene.layers.iter().filter(|l| !l.is_empty()) {
        for plane in Plane::ALL {
            let (canvas_w, _) = plane.size(scene.width, scene.height);
            let d = plane_rect(layer.dst(), plane);
            for dy in d.y..d.y + d.h {
                for dx in d.x..d.x + d.w {
                    let index = (dy * canvas_w + dx) as usize;
                    let old = output.plane(plane)[index];
                    let new = match layer {
                        Layer::Fill { color, .. } => color.component(plane),
                        Layer::Picture {
                            source,
                            crop,
                            opacity,
                            ..
                        } => {
                            let c = plane_crop(*crop, source.width, source.height, plane);
                            let (stride, _) = plane.size(source.width, source.height);
                            let tx = tap(dx - d.x, d.w, c.x, c.w);
                            let ty = tap(dy - d.y, d.h, c.y, c.h);
                            let at = |p: &[u8]| {
                                let s = |x: u32, y: u32| p[(y * stride + x) as usize];
                                bilinear(
                                    s(tx.i0, ty.i0),
                                    s(tx.i1, ty.i0),
                                    s(tx.i0, ty.i1),
                                    s(tx.i1, ty.i1),
                                    tx.weight,
                                    ty.weight,
                                )
                            };
                            let alpha = source.alpha_plane(plane).map_or(255, at);
                            blend(
                                at(source.plane(plane)),
                                old,
                                effective_alpha(alpha, *opacity),
                            )
                        }
                    };
                    output.plane_mut(plane)[index] = new;
                }
            }
        }
    }
}

/// Where two pictures first differ, for assertion messages.
pub fn first_difference(a: &Picture, b: &Picture) -> Option<String> {
    if (a.width, a.height) != (b.width, b.height) {
        return Some(format!(
            "size {}x{} vs {}x{}",
            a.width, a.height, b.width, b.height
        ));
    }
    for plane in Plane::ALL {
        let (w, _) = plane.size(a.width, a.height);
        if let Some(i) = a
            .plane(plane)
            .iter()
            .zip(b.plane(plane))
            .position(|(x, y)| x != y)
        {
            let (x, y) = (i as u32 % w, i as u32 / w);
            return Some(format!(
                "{plane:?} ({x}, {y}): {} vs {}",
                a.plane(plane)[i],
                b.plane(plane)[i]
            ));
        }
    }
    None
}
